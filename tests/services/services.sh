#!/usr/bin/env bash
# tests/services/services.sh - start and stop the real servers the tests use,
# all on 127.0.0.1, all data under $RELAY_SERVICES_DIR (default
# /tmp/pgtrickle-relay-services). Later backends add a start_X/stop_X pair.
#
#   services.sh start pg [nats ...]   start, wait until ready, write $DIR/env
#   services.sh stop                  stop everything this script started
#   services.sh env                   print the env file (source it)
#
# The env file exports PGT_PG_URL, PGT_PGHOST, PGT_PGPORT, PGT_PGDATA,
# PGT_PGBIN and one variable set per other service.
#
# Adding a service X: write start_X (start it on 127.0.0.1, wait until it is
# ready, add_env its address) and stop_X (idempotent: a no-op when X is not
# running), then list X in tests/services/default-services.
set -euo pipefail

DIR=${RELAY_SERVICES_DIR:-/tmp/pgtrickle-relay-services}
ENVF=$DIR/env
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
PGPORT=${PGT_PGPORT:-54329}

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

add_env() { mkdir -p "$DIR"; grep -v "^export $1=" "$ENVF" 2>/dev/null > "$ENVF.tmp" || true; echo "export $1='$2'" >> "$ENVF.tmp"; mv "$ENVF.tmp" "$ENVF"; }

start_pg() {
    local d=$DIR/pg
    mkdir -p "$d"
    [ "$(id -u)" = 0 ] && chown postgres: "$DIR" "$d"
    if [ ! -f "$d/data/PG_VERSION" ]; then
        as_pg "$PGBIN/initdb" -D "$d/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 -N >"$d/initdb.log" 2>&1
    fi
    if ! as_pg "$PGBIN/pg_ctl" -D "$d/data" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$d/data" -l "$d/pg.log" -w -t 60 -o \
            "-c listen_addresses=127.0.0.1 -p $PGPORT -k $d -c wal_level=logical \
             -c synchronous_commit=on -c fsync=off -c max_connections=300 \
             -c max_replication_slots=20 -c max_wal_senders=20 -c shared_buffers=256MB \
             -c max_locks_per_transaction=256" start >/dev/null
    fi
    "$PGBIN/pg_isready" -h 127.0.0.1 -p "$PGPORT" -t 30 >/dev/null
    add_env PGT_PGBIN "$PGBIN"
    add_env PGT_PGDATA "$d/data"
    add_env PGT_PGHOST 127.0.0.1
    add_env PGT_PGPORT "$PGPORT"
    add_env PGT_PG_URL "postgresql://postgres@127.0.0.1:$PGPORT/postgres"
    echo "postgres ready on 127.0.0.1:$PGPORT"
}

stop_pg() {
    local d=$DIR/pg
    [ -f "$d/data/PG_VERSION" ] || return 0
    as_pg "$PGBIN/pg_ctl" -D "$d/data" -m immediate -w stop >/dev/null 2>&1 || true
}

# NATS with JetStream (research/test-services.md section 2). Shared by the
# tests: each test uses streams of its own; tests that stop the server start
# a private one. A server that is already running (and healthy) is reused.
NATS_PORT=${PGT_NATS_PORT:-14222}
NATS_MON_PORT=${PGT_NATS_MON_PORT:-18222}
start_nats() {
    local d=$DIR/nats
    mkdir -p "$d"
    local mon="http://127.0.0.1:$NATS_MON_PORT"
    if ! { [ -f "$d/nats.pid" ] && kill -0 "$(cat "$d/nats.pid")" 2>/dev/null \
           && curl -sf "$mon/healthz?js-enabled-only=true" >/dev/null 2>&1; }; then
        # setsid: the server must outlive the shell that started it
        setsid nats-server -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MON_PORT" -js -sd "$d/js" \
            -n pgtrickle-relay-tests -l "$d/nats.log" -P "$d/nats.pid" </dev/null >/dev/null 2>&1 &
        local i
        for i in $(seq 1 100); do
            curl -sf "$mon/healthz?js-enabled-only=true" >/dev/null 2>&1 && break
            sleep 0.1
        done
        curl -sf "$mon/healthz?js-enabled-only=true" >/dev/null \
            || { echo "nats-server did not start (log: $d/nats.log)" >&2; return 1; }
    fi
    add_env PGT_NATS_URL "nats://127.0.0.1:$NATS_PORT"
    add_env PGT_NATS_MONITOR "$mon"
    echo "nats ready on 127.0.0.1:$NATS_PORT (monitoring $mon)"
}

stop_nats() {
    local f=$DIR/nats/nats.pid
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    kill -INT "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# Kafka: librdkafka's mock cluster (research/test-services.md section 5) in a
# process of its own, tests/services/kmock.c, compiled here on first use. Its
# ports are random, so the bootstrap list is read from its first stdout line.
# Shared by the tests (each uses topics and groups of its own); tests that
# take brokers down start a private kmock ($PGT_KMOCK). Reused while it answers;
# restarted when kmock.c changed.
kafka_answers() {  # kafka_answers host:port[,...]: the first broker accepts connections
    local hp=${1%%,*}
    [ -n "$hp" ] && (exec 3<>"/dev/tcp/${hp%:*}/${hp##*:}") 2>/dev/null
}
start_kafka() {
    local d=$DIR/kafka src; src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/kmock.c
    mkdir -p "$d"
    if [ ! -x "$d/kmock" ] || [ "$src" -nt "$d/kmock" ]; then
        # shellcheck disable=SC2046  # pkg-config output is a list of flags
        cc -std=c11 -O2 -Wall -Wextra -o "$d/kmock.tmp" "$src" $(pkg-config --cflags --libs rdkafka) \
            || { echo "kmock: build failed (librdkafka-dev installed?)" >&2; return 1; }
        mv "$d/kmock.tmp" "$d/kmock"
    fi
    if ! { [ -f "$d/kmock.pid" ] && kill -0 "$(cat "$d/kmock.pid")" 2>/dev/null \
           && [ "$d/kmock.out" -nt "$d/kmock" ] && kafka_answers "$(head -1 "$d/kmock.out")"; }; then
        stop_kafka
        rm -f "$d/kmock.out"
        # setsid: the cluster must outlive the shell that started it
        setsid "$d/kmock" </dev/null >"$d/kmock.out" 2>"$d/kmock.log" &
        echo $! > "$d/kmock.pid"
        local i
        for i in $(seq 1 100); do [ -s "$d/kmock.out" ] && break; sleep 0.05; done
        [ -s "$d/kmock.out" ] || { echo "kmock did not start (log: $d/kmock.log)" >&2; return 1; }
    fi
    add_env PGT_KAFKA_BROKERS "$(head -1 "$d/kmock.out")"
    add_env PGT_KMOCK "$d/kmock"
    echo "kafka (mock cluster) ready on $(head -1 "$d/kmock.out")"
}

stop_kafka() {
    local f=$DIR/kafka/kmock.pid
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    rm -f "$f"
    kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# Redis 7 (research/test-services.md section 3): redis-server, no persistence.
# Shared by the tests: each test uses keys of its own (a prefix with its
# name); tests that stop the server start a private one. A server that is
# already running and answers PING is reused.
REDIS_PORT=${PGT_REDIS_PORT:-16379}
start_redis() {
    local d=$DIR/redis
    mkdir -p "$d"
    if ! { [ -f "$d/redis.pid" ] && kill -0 "$(cat "$d/redis.pid")" 2>/dev/null \
           && redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; }; then
        redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$d" --save '' --appendonly no \
            --daemonize yes --pidfile "$d/redis.pid" --logfile "$d/redis.log" >/dev/null \
            || { echo "redis-server did not start (log: $d/redis.log)" >&2; return 1; }
        local i
        for i in $(seq 1 100); do
            redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break
            sleep 0.05
        done
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG \
            || { echo "redis-server did not answer (log: $d/redis.log)" >&2; return 1; }
    fi
    add_env PGT_REDIS_URL "redis://127.0.0.1:$REDIS_PORT"
    add_env PGT_REDIS_PORT "$REDIS_PORT"
    echo "redis ready on 127.0.0.1:$REDIS_PORT"
}

stop_redis() {
    local f=$DIR/redis/redis.pid
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# sqs: the npm emulator local-aws-sqs (research/test-services.md section 6),
# installed with npm on first use into a cache that survives "stop"
# ($PGT_NPM_CACHE, default ~/.cache/pgtrickle-relay/npm), run by node on
# 127.0.0.1:$PGT_SQS_PORT. It keeps its queues in memory and accepts any
# SigV4 signature. Shared by the tests (each creates queues of its own);
# tests that stop it start a private one with $PGT_SQS_SERVER <port>.
SQS_PORT=${PGT_SQS_PORT:-14566}
NPM_CACHE=${PGT_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgtrickle-relay/npm}
SQS_PKG=local-aws-sqs@2.0.2
sqs_answers() {  # sqs_answers port: the emulator answers ListQueues
    curl -sf -o /dev/null -X POST -H 'Content-Type: application/x-amz-json-1.0' \
        -H 'X-Amz-Target: AmazonSQS.ListQueues' -d '{}' "http://127.0.0.1:$1/" 2>/dev/null
}
start_sqs() {
    local d=$DIR/sqs
    mkdir -p "$d" "$NPM_CACHE"
    if [ ! -f "$NPM_CACHE/node_modules/local-aws-sqs/package.json" ]; then
        command -v npm >/dev/null || { echo "sqs: npm not found (install nodejs and npm)" >&2; return 1; }
        npm install --prefix "$NPM_CACHE" --no-audit --no-fund --silent "$SQS_PKG" >"$d/npm.log" 2>&1 \
            || { echo "sqs: npm install $SQS_PKG failed (log: $d/npm.log)" >&2; return 1; }
    fi
    # The server script: node sqs-server.cjs <port>; prints READY when listening.
    cat >"$d/sqs-server.cjs" <<'JS'
const { createSqsServer } = require("local-aws-sqs");
const port = parseInt(process.argv[2], 10);
createSqsServer({ port, hostname: "127.0.0.1", emulateQueueCreationLifecycle: false }).then((srv) => {
  console.log(`READY http://127.0.0.1:${port}`);
  for (const s of ["SIGTERM", "SIGINT"]) process.on(s, () => srv.close(() => process.exit(0)));
});
JS
    printf '#!/bin/sh\nNODE_PATH=%s exec node %s "$@"\n' "$NPM_CACHE/node_modules" "$d/sqs-server.cjs" >"$d/sqs-server"
    chmod +x "$d/sqs-server"
    if ! { [ -f "$d/sqs.pid" ] && kill -0 "$(cat "$d/sqs.pid")" 2>/dev/null && sqs_answers "$SQS_PORT"; }; then
        # setsid: the server must outlive the shell that started it
        setsid "$d/sqs-server" "$SQS_PORT" </dev/null >"$d/sqs.log" 2>&1 &
        echo $! > "$d/sqs.pid"
        local i
        for i in $(seq 1 100); do sqs_answers "$SQS_PORT" && break; sleep 0.1; done
        sqs_answers "$SQS_PORT" || { echo "sqs emulator did not start (log: $d/sqs.log)" >&2; return 1; }
    fi
    add_env PGT_SQS_ENDPOINT "http://127.0.0.1:$SQS_PORT"
    add_env PGT_SQS_SERVER "$d/sqs-server"
    echo "sqs (local-aws-sqs) ready on 127.0.0.1:$SQS_PORT"
}

stop_sqs() {
    local f=$DIR/sqs/sqs.pid
    [ -f "$f" ] || return 0
    local pid; pid=$(cat "$f")
    rm -f "$f"
    kill -TERM "$pid" 2>/dev/null || return 0
    local i
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
}

# RabbitMQ: a node of its own under $DIR/rabbitmq (tests/services/rabbitmq-node.sh:
# the real server script as root, own node name, epmd and distribution
# ports derived from PGT_RABBITMQ_PORT; AMQP over TLS on PGT_RABBITMQ_PORT+3000,
# certificates in $DIR/rabbitmq/tls). About 6 s to start, so it is
# started once per suite run and shared (each test uses exchanges and queues
# of its own); tests that stop the broker start a private node. Reused while
# it answers.
RABBITMQ_PORT=${PGT_RABBITMQ_PORT:-15670}
start_rabbitmq() {
    local node; node=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rabbitmq-node.sh
    "$node" start "$DIR/rabbitmq" "$RABBITMQ_PORT"
    add_env PGT_RABBITMQ_URL "amqp://guest:guest@127.0.0.1:$RABBITMQ_PORT/"
    add_env PGT_RABBITMQ_TLS_URL "amqps://guest:guest@localhost:$((RABBITMQ_PORT + 3000))/"
    add_env PGT_RABBITMQ_PORT "$RABBITMQ_PORT"
    add_env PGT_RABBITMQ_DIR "$DIR/rabbitmq"
    add_env PGT_RABBITMQ_NODE "$node"
    echo "rabbitmq ready on 127.0.0.1:$RABBITMQ_PORT"
}

stop_rabbitmq() {
    "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rabbitmq-node.sh" stop "$DIR/rabbitmq"
}

cmd=${1:-}; shift || true
case "$cmd" in
    start)
        [ $# -gt 0 ] || set -- pg
        for s in "$@"; do "start_$s"; done ;;
    stop)
        # every stop_<service> defined above, whether it was started or not
        for f in $(declare -F | awk '{print $3}' | grep '^stop_'); do "$f" || true; done
        rm -rf "$DIR" ;;
    env) cat "$ENVF" ;;
    *) echo "usage: $0 start [pg ...] | stop | env" >&2; exit 2 ;;
esac
