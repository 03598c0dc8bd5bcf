#!/usr/bin/env bash
# tests/soak/soak.sh - one seeded soak run (issue 18, docs/reliability.md):
# steady load on every pipeline kind at once, two relays in one group, and
# faults drawn from the seed; at the end the delivery invariant is checked
# per pipeline and printed as one line each.
#
#   SOAK_SECONDS      length of the loaded part (default 600)
#   SOAK_SEED         the schedule's seed (default: random, printed); the same
#                     seed gives the same schedule of faults
#   SOAK_FAULT_EVERY  seconds between faults (default 12)
#   SOAK_FAULTS       the kinds drawn from, with repeats as weights (default
#                     "kill9 kill9 pause nats pg partition cut cut" and one
#                     broker fault per backend in use)
#   SOAK_BACKENDS     backends besides NATS and file (default: every one this
#                     machine can run of "redis rabbitmq sqs kafka webhook";
#                     one that is named and cannot run fails the test)
#   SOAK_DRAIN_SECONDS  how long the sinks may take to catch up after the load
#                     stopped (default 240)
#
# Every server is private to the run (the faults touch nothing else); two
# relays r1, r2 share all pipelines (--relay-group-id soak):
#   outbox "so" -> o-nats (NATS stream SOAK_OUT), o-file, o-redis (stream
#                  soak:out, dedup window on), o-rmq (exchange soak.x ->
#                  queue soak.out), o-sqs (queue soak-out), o-kafka (topic
#                  soak-out), o-hook (webhook endpoint)
#   CDC of soak_t -> c-file, c-nats (SOAK_CDC), c-kafka (topic soak-cdc)
#   inbox       <- i-nats (SOAK_IN), i-redis (stream soak:in), i-rmq (queue
#                  soak.in), i-sqs (queue soak-in), i-kafka (topic soak-in,
#                  group pgtrickle-relay-i-kafka), i-hook (the relay's own
#                  webhook receiver: the load posts to whichever relay
#                  answers)
# Load: every tick one transaction writes an outbox event, inserts row i into
# soak_t, updates row i-5 and records i in soak_ledger; one loop per reverse
# source writes messages with unique dedup keys into its broker.
# Faults, one every SOAK_FAULT_EVERY seconds, kind drawn from the seed:
#   kill9     kill -9 of one relay (mid-batch under this load), restarted 1-3 s later
#   pause     SIGSTOP of one relay for 3-10 s, then SIGCONT
#   nats      kill -9 of nats-server, restarted on the same store 1-3 s later
#   pg        immediate-mode restart of PostgreSQL
#   redis     kill -9 of redis-server (append-only file, fsync always), restarted
#   rabbitmq  the RabbitMQ node stopped and started again (~10 s)
#   sqs       the SQS emulator frozen (SIGSTOP) for 3-8 s, then SIGCONT: every
#             request times out meanwhile, sends, receives and deletes alike
#   kafka     every broker of the Kafka cluster down for 2-6 s, then up
#   webhook   the endpoint frozen (SIGSTOP) or answering 503 for 3-8 s
#   partition (root, where network namespaces work) relay r2 runs in a
#             network namespace joined to the host by a veth pair; its link
#             goes down for 4-12 s: packets to every peer are dropped, no TCP
#             reset. PostgreSQL drops the silent sessions after ~6 s (server
#             keepalives), so r1 takes r2's pipelines over while r2 still
#             believes it owns them: r2 must not acknowledge anything
#             afterwards (the fencing case). SOAK_PARTITION=0 turns it off.
#   cut       the same for one peer of r2 only (PostgreSQL or one broker,
#             drawn from the seed): in the namespace, the route to that peer's
#             address goes through a gateway that does not exist, so its
#             packets are dropped and the others flow.
# The SQS emulator keeps its queues in memory: it is frozen, partitioned and
# cut, never restarted. Invariant, per pipeline: every event the ground truth holds (the
# ledger, the rows of soak_t, the messages each broker stored or confirmed)
# is in the sink (lost = 0); after the sink's dedup layer no event twice; no
# record without a ground-truth event; the dead-letter table empty.
#
# TAP output; the summary lines start with "# soak:". Exit 1 when an
# invariant does not hold.
. "$(dirname "$0")/../integration/lib.sh"
. "$(dirname "$0")/../integration/nats_lib.sh"
SOAK_DIR=$(cd "$(dirname "$0")" && pwd)
TOOLS=$(cd "$SOAK_DIR/../tools" && pwd)
TBIN=$(dirname "$RELAY_BIN")/tests
KCLI=${KCLI:-$TBIN/kcli}
SQS_SEND=${SQS_SEND:-$TBIN/sqs_send}
WEBHOOK_RECV=${WEBHOOK_RECV:-$TBIN/webhook_recv}
RMQ_NODE=${PGT_RABBITMQ_NODE:-$SOAK_DIR/../services/rabbitmq-node.sh}

SECS=${SOAK_SECONDS:-600}
SEED=${SOAK_SEED:-$(( $(date +%s) % 100000 ))}
EVERY=${SOAK_FAULT_EVERY:-12}
RANDOM=$SEED   # from here on, $RANDOM draws the schedule of this seed
diag "soak: seed $SEED, $SECS s of load, a fault every $EVERY s"

# ---- which backends ------------------------------------------------------------------
can_run() {
    case $1 in
        redis) command -v redis-server && command -v redis-cli ;;
        rabbitmq) [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && /usr/bin/python3 -c 'import pika' ;;
        sqs) [ -x "${PGT_SQS_SERVER:-}" ] && [ -x "$SQS_SEND" ] && command -v aws ;;
        kafka) [ -x "${PGT_KMOCK:-}" ] && [ -x "$KCLI" ] ;;
        webhook) [ -x "$WEBHOOK_RECV" ] ;;
        *) false ;;
    esac >/dev/null 2>&1
}
BACKENDS=()
for b in ${SOAK_BACKENDS-redis rabbitmq sqs kafka webhook}; do
    if can_run "$b"; then BACKENDS+=("$b")
    elif [ -n "${SOAK_BACKENDS+x}" ]; then bail "soak: backend $b was asked for and cannot run here"
    else diag "soak: backend $b cannot run here (not installed or its service not started): left out"; fi
done
use() { [[ " ${BACKENDS[*]} " == *" $1 "* ]]; }
diag "soak: backends nats file ${BACKENDS[*]}"

# ---- a network namespace for r2 (partition and cut faults), where possible -----------
# Host side of the veth: one address per peer, so a cut can drop one of them:
#   .1 PostgreSQL  .3 NATS  .4 Redis  .5 RabbitMQ  .6 SQS  .7 webhook  .8 Kafka
# (.2 is r2's side, .14 a gateway nobody answers for). RabbitMQ, SQS and Kafka
# listen on 127.0.0.1 only: tcp_forward.py passes their ports on.
NETNS=""
declare -A PEER=([pg]=127.0.0.1 [nats]=127.0.0.1 [redis]=127.0.0.1 [rabbitmq]=127.0.0.1
                 [sqs]=127.0.0.1 [webhook]=127.0.0.1 [kafka]=127.0.0.1)
soak_net_cleanup() { [ -n "$NETNS" ] && ip netns del "$NETNS" 2>/dev/null; ip link del "skh$$" 2>/dev/null; return 0; }
soak_cleanup() {
    [ -n "${RMQ_DIR:-}" ] && "$RMQ_NODE" stop "$RMQ_DIR" >/dev/null 2>&1
    [ -n "${REDIS_PID:-}" ] && kill -9 "$REDIS_PID" 2>/dev/null
    [ -n "${KMOCK_PID:-}" ] && kill -TERM "$KMOCK_PID" 2>/dev/null
    [ -n "${SQS_PID:-}" ] && { kill -TERM "$SQS_PID"; kill -CONT "$SQS_PID"; } 2>/dev/null
    [ -n "${HOOK_PID:-}" ] && kill -CONT "$HOOK_PID" 2>/dev/null
    _nats_cleanup; _cleanup; soak_net_cleanup
}
trap soak_cleanup EXIT
if [ "$(id -u)" = 0 ] && [ "${SOAK_PARTITION:-1}" = 1 ]; then
    net=10.213.$(( $$ % 250 + 1 ))
    if ip netns add "soak$$" 2>/dev/null; then
        NETNS=soak$$
        if ! { ip link add "skh$$" type veth peer name "skn$$" && ip link set "skn$$" netns "$NETNS" \
               && ip addr add "$net.1/28" dev "skh$$" && ip link set "skh$$" up \
               && for i in 3 4 5 6 7 8; do ip addr add "$net.$i/28" dev "skh$$" || exit 1; done \
               && ip netns exec "$NETNS" ip addr add "$net.2/28" dev "skn$$" \
               && ip netns exec "$NETNS" ip link set "skn$$" up \
               && ip netns exec "$NETNS" ip link set lo up; } 2>/dev/null; then
            soak_net_cleanup; NETNS=""
        fi
    fi
fi
if [ -n "$NETNS" ]; then
    PEER=([pg]=$net.1 [nats]=$net.3 [redis]=$net.4 [rabbitmq]=$net.5 [sqs]=$net.6 [webhook]=$net.7 [kafka]=$net.8)
    # the server drops a silent session after ~6 s (keepalives, user timeout)
    PRIV_PG_OPTIONS="-c listen_addresses=127.0.0.1,${PEER[pg]} -c tcp_keepalives_idle=2 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 -c tcp_user_timeout=6000"
    PRIV_NATS_ADDR=${PEER[nats]}
    diag "soak: relay r2 runs in network namespace $NETNS ($net.2), partitions and cuts enabled"
else
    diag "soak: no network namespace (not root, or ip netns failed): no partition or cut faults"
fi
HOST_FWD=() NS_FWD=()   # tcp_forward.py mappings on the host and in the namespace
forward() {   # forward <peer> <port>: r2 reaches 127.0.0.1:<port> through PEER[peer]
    [ -n "$NETNS" ] || return 0
    HOST_FWD+=("${PEER[$1]}:$2=127.0.0.1:$2")
    [ "${3:-}" = ns ] && NS_FWD+=("127.0.0.1:$2=${PEER[$1]}:$2")
    return 0
}

# ---- servers -------------------------------------------------------------------------
start_private_pg
if [ -n "$NETNS" ]; then
    echo "host all all $net.0/28 trust" >> "$PRIV_DIR/data/pg_hba.conf"
    "${PSQL[@]}" -d postgres -c "SELECT pg_reload_conf()" >/dev/null
    RELAY_URL="postgresql://postgres@${PEER[pg]}:$PRIV_PORT/$TEST_DB"
fi
setup_db
start_private_nats N
NURL=$(priv_nats_url N)
NATSCLI_URL=$NURL

start_redis() {   # append-only with fsync always: what XADD acknowledged survives kill -9
    local bind=127.0.0.1; [ "${PEER[redis]}" != 127.0.0.1 ] && bind="127.0.0.1 ${PEER[redis]}"
    redis-server --bind "$bind" --port "$REDIS_PORT" --dir "$TEST_TMP/redis" --save '' \
        --protected-mode no --appendonly yes --appendfsync always --logfile "$TEST_TMP/redis/redis.log" </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!
    wait_until 10 "redis-cli -h 127.0.0.1 -p $REDIS_PORT ping 2>/dev/null | grep -q PONG" || bail "redis-server did not start"
}
rcli() { redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"; }
if use redis; then
    mkdir -p "$TEST_TMP/redis"; REDIS_PORT=$(free_port); start_redis
    RURL="redis://${PEER[redis]}:$REDIS_PORT"
fi
rmq() { /usr/bin/python3 "$TOOLS/rmqcli.py" --url "amqp://guest:guest@127.0.0.1:$RMQ_PORT/" "$@" 2>>"$TEST_TMP/rmqcli.log"; }
if use rabbitmq; then
    RMQ_DIR=$TEST_TMP/rabbitmq RMQ_PORT=$(free_port_group 0 1000 2000 3000)
    "$RMQ_NODE" start "$RMQ_DIR" "$RMQ_PORT" >/dev/null || bail "rabbitmq node did not start"
    forward rabbitmq "$RMQ_PORT"
    rmq declare-exchange soak.x topic && rmq declare-queue soak.out --bind soak.x '#' \
        && rmq declare-queue soak.in || bail "rabbitmq: cannot declare the soak's exchange and queues"
fi
export AWS_ACCESS_KEY_ID=AKIDSOAK AWS_SECRET_ACCESS_KEY=soak-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
export AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_CONFIG_FILE=/nonexistent AWS_PAGER=
if use sqs; then
    SQS_PORT=$(free_port)
    "$PGT_SQS_SERVER" "$SQS_PORT" >"$TEST_TMP/sqs.log" 2>&1 & SQS_PID=$!
    wait_until 15 "grep -q READY '$TEST_TMP/sqs.log'" || bail "sqs emulator did not start"
    SQS_EP=http://127.0.0.1:$SQS_PORT
    forward sqs "$SQS_PORT"
    for q in soak-out soak-in; do
        aws --endpoint-url "$SQS_EP" --output json sqs create-queue --queue-name "$q" >/dev/null 2>>"$TEST_TMP/aws.log" \
            || bail "sqs: cannot create queue $q"
    done
    SQS_OUT=$SQS_EP/000000000000/soak-out SQS_IN=$SQS_EP/000000000000/soak-in
fi
kmock() {   # kmock <command>: a fault-injection command, waits for its reply
    local before; before=$(wc -l <"$TEST_TMP/kmock.out")
    echo "$1" >&"$KMOCK_FD"
    wait_until 5 "[ \$(wc -l <'$TEST_TMP/kmock.out') -gt $before ]" && tail -1 "$TEST_TMP/kmock.out" | grep -q '^ok '
}
if use kafka; then
    mkfifo "$TEST_TMP/kmock.ctl"
    # The mock cluster keeps at most 5 MB per partition (rdkafka_mock.c drops
    # the oldest message sets beyond that): enough partitions for the run's
    # events, and the read-back fails the run if anything was trimmed.
    KPARTS=$(( SECS / 20 < 4 ? 4 : SECS / 20 ))
    "$PGT_KMOCK" -b 3 -t "soak-out:$KPARTS" -t "soak-cdc:$KPARTS" -t "soak-in:4" <"$TEST_TMP/kmock.ctl" >"$TEST_TMP/kmock.out" 2>"$TEST_TMP/kmock.log" &
    KMOCK_PID=$!
    exec {KMOCK_FD}>"$TEST_TMP/kmock.ctl"
    wait_until 5 "[ -s '$TEST_TMP/kmock.out' ]" || bail "kmock did not start"
    KBROKERS=$(head -1 "$TEST_TMP/kmock.out")
    for hp in ${KBROKERS//,/ }; do forward kafka "${hp##*:}" ns; done
fi
if use webhook; then
    echo 200 >"$TEST_TMP/hook.ctl"
    "$WEBHOOK_RECV" --listen "${PEER[webhook]}:0" --out "$TEST_TMP/hook.jsonl" --port-file "$TEST_TMP/hook.port" \
        --control "$TEST_TMP/hook.ctl" 2>>"$TEST_TMP/hook.err" &
    HOOK_PID=$!; RELAY_PIDS[hook]=$HOOK_PID   # killed with the relays at exit
    wait_until 10 "[ -s '$TEST_TMP/hook.port' ]" || bail "webhook_recv did not start"
    HOOK_URL="http://${PEER[webhook]}:$(cat "$TEST_TMP/hook.port")/hook"
fi
if [ ${#HOST_FWD[@]} -gt 0 ]; then
    python3 -u "$TOOLS/tcp_forward.py" "${HOST_FWD[@]}" >"$TEST_TMP/fwd-host.log" 2>&1 &
    RELAY_PIDS[fwd_host]=$!
    wait_until 10 "grep -q READY '$TEST_TMP/fwd-host.log'" || bail "tcp_forward.py (host) did not start"
fi
if [ ${#NS_FWD[@]} -gt 0 ]; then
    ip netns exec "$NETNS" python3 -u "$TOOLS/tcp_forward.py" "${NS_FWD[@]}" >"$TEST_TMP/fwd-ns.log" 2>&1 &
    RELAY_PIDS[fwd_ns]=$!
    wait_until 10 "grep -q READY '$TEST_TMP/fwd-ns.log'" || bail "tcp_forward.py (namespace) did not start"
fi

# ---- pipelines -----------------------------------------------------------------------
OUT=$TEST_TMP/o-file.jsonl
CDC=$TEST_TMP/c-file.jsonl
natscli stream-add SOAK_OUT 'soak.out.>' --dup-ms 3600000 >/dev/null
natscli stream-add SOAK_CDC 'soak.cdc.>' --dup-ms 3600000 >/dev/null
natscli stream-add SOAK_IN 'soak.in.>' >/dev/null
sql "SELECT pgtrickle.enable_outbox('so');
     CREATE TABLE soak_t (id bigint PRIMARY KEY, v int NOT NULL);
     CREATE TABLE soak_ledger (i bigint PRIMARY KEY);
     CREATE PUBLICATION soak_pub FOR TABLE soak_t;
     SELECT pgtrickle.create_inbox('soak_inbox');" >/dev/null
nats_cfg() { echo "{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"$1\",\"subject_template\":\"$2\",\"ack_timeout_ms\":2000}"; }
cdc_cfg() { echo "{\"source\":{\"publication\":\"soak_pub\",\"slot\":\"$1\"},\"sink\":$2}"; }
INBOXES="i-nats soak_inbox"   # pipeline and inbox table, pairs
sql "SELECT pgtrickle.set_relay_outbox('o-nats', 'so', NULL, '$(nats_cfg SOAK_OUT 'soak.out.{op}')');
     SELECT pgtrickle.set_relay_outbox('o-file', 'so', NULL, '$(file_sink "$OUT")');
     SELECT pgtrickle.set_relay_cdc('c-file', '$(cdc_cfg soak_file "$(file_sink "$CDC")")');
     SELECT pgtrickle.set_relay_cdc('c-nats', '$(cdc_cfg soak_nats "$(nats_cfg SOAK_CDC 'soak.cdc.{op}')")');
     SELECT pgtrickle.set_relay_inbox('i-nats', 'soak_inbox',
            '{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"SOAK_IN\",\"durable_name\":\"soak\",\"ack_wait_seconds\":5}');" >/dev/null
add_inbox() {   # add_inbox <pipeline> <inbox table> <source config>
    sql "SELECT pgtrickle.create_inbox('$2'); SELECT pgtrickle.set_relay_inbox('$1', '$2', '$3');" >/dev/null
    INBOXES+=" $1 $2"
}
if use redis; then
    sql "SELECT pgtrickle.set_relay_outbox('o-redis', 'so', NULL,
           '{\"type\":\"redis\",\"url\":\"$RURL\",\"stream_key\":\"soak:out\",\"dedup_window_seconds\":3600}');" >/dev/null
    add_inbox i-redis soak_inbox_redis "{\"type\":\"redis\",\"url\":\"$RURL\",\"stream_key\":\"soak:in\",\"claim_idle_ms\":10000}"
fi
if use rabbitmq; then
    RMQ_URL="amqp://guest:guest@${PEER[rabbitmq]}:$RMQ_PORT/"
    sql "SELECT pgtrickle.set_relay_outbox('o-rmq', 'so', NULL,
           '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"exchange\":\"soak.x\",\"routing_key_template\":\"soak.{op}\",\"heartbeat_seconds\":5,\"confirm_timeout_ms\":5000}');" >/dev/null
    add_inbox i-rmq soak_inbox_rmq "{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"soak.in\",\"heartbeat_seconds\":5}"
fi
if use sqs; then
    R2_SQS=http://${PEER[sqs]}:$SQS_PORT
    sql "SELECT pgtrickle.set_relay_outbox('o-sqs', 'so', NULL,
           '{\"type\":\"sqs\",\"queue_url\":\"$SQS_OUT\",\"endpoint_url\":\"$R2_SQS\",\"timeout_ms\":3000}');" >/dev/null
    add_inbox i-sqs soak_inbox_sqs "{\"type\":\"sqs\",\"queue_url\":\"$SQS_IN\",\"endpoint_url\":\"$R2_SQS\",\"wait_time_seconds\":1,\"visibility_timeout\":10,\"timeout_ms\":3000}"
fi
if use kafka; then
    kafka_cfg() { echo "{\"type\":\"kafka\",\"brokers\":\"$KBROKERS\",\"topic_template\":\"$1\",\"message_timeout_ms\":10000}"; }
    sql "SELECT pgtrickle.set_relay_outbox('o-kafka', 'so', NULL, '$(kafka_cfg soak-out)');
         SELECT pgtrickle.set_relay_cdc('c-kafka', '$(cdc_cfg soak_kafka "$(kafka_cfg soak-cdc)")');" >/dev/null
    # session.timeout.ms 6 s (Kafka's smallest allowed): librdkafka 2.0's mock
    # stops reading a connection on which a JoinGroup or SyncGroup waits for
    # the group (rdkafka_mock.c, "blocking"), so a request the member sends
    # behind it times out (socket.timeout.ms, 10 s), the member re-sends the
    # SyncGroup on a new connection and the mock aborts
    # (rdkafka_mock_cgrp.c: "!member->resp"). With 6 s the mock ends every
    # wait (it answers REBALANCE_IN_PROGRESS) before anything times out.
    add_inbox i-kafka soak_inbox_kafka "{\"type\":\"kafka\",\"brokers\":\"$KBROKERS\",\"topic\":\"soak-in\",\"batch_size\":200,\"rdkafka\":{\"session.timeout.ms\":6000}}"
fi
if use webhook; then
    sql "SELECT pgtrickle.set_relay_outbox('o-hook', 'so', NULL, '{\"type\":\"webhook\",\"url\":\"$HOOK_URL\",\"timeout_ms\":3000}');" >/dev/null
    # The receiver listens on the owning relay only. With a namespace, r2
    # must listen on its veth address, so the port is bound on every address
    # (of the host for r1, of the namespace for r2); the load tries r1, then r2.
    HOOK_IN_PORT=$(free_port)
    HOOK_IN_ADDR=127.0.0.1; [ -n "$NETNS" ] && HOOK_IN_ADDR=0.0.0.0
    HOOK_IN_URLS="http://127.0.0.1:$HOOK_IN_PORT/inbox"; [ -n "$NETNS" ] && HOOK_IN_URLS+=" http://$net.2:$HOOK_IN_PORT/inbox"
    add_inbox i-hook soak_inbox_hook "{\"type\":\"webhook\",\"listen_addr\":\"$HOOK_IN_ADDR:$HOOK_IN_PORT\",\"path\":\"/inbox\"}"
fi

relay_up() {   # r2 runs in the namespace when there is one
    if [ "$1" = r2 ] && [ -n "$NETNS" ]; then
        local -a RELAY_WRAP=(ip netns exec "$NETNS")   # seen by start_relay (dynamic scope)
        RELAY_HOST=$net.2 start_relay "$1" --relay-group-id soak --shutdown-timeout 5s
    else
        start_relay "$1" --relay-group-id soak --shutdown-timeout 5s
    fi
}
RELAY_LOG_LEVEL=info
relay_up r1
relay_up r2

# ---- load ------------------------------------------------------------------------
# One psql session per 20 ticks, each tick its own transaction; a tick whose
# transaction fails (PostgreSQL restarting) is simply not in the ledger.
load_pg() {
    local i=0 end=$1
    while [ "$(date +%s)" -lt "$end" ]; do
        local sqlt=""
        for _ in $(seq 1 20); do
            i=$((i + 1))
            sqlt+="BEGIN; SELECT pgtrickle.outbox_write('so', '[{\"i\":$i}]');
                   INSERT INTO soak_t VALUES ($i, 0); UPDATE soak_t SET v = v + 1 WHERE id = $((i - 5));
                   INSERT INTO soak_ledger VALUES ($i); COMMIT;"
        done
        psql -X -q -At -h 127.0.0.1 -p "$PRIV_PORT" -U postgres -d "$TEST_DB" -c "$sqlt" >/dev/null 2>&1
        sleep 0.2
    done
}
# The reverse sources' loads: unique dedup keys; what counts as produced is
# what the broker kept (NATS, Redis, Kafka: read back at the end) or
# confirmed (RabbitMQ, SQS: the messages are consumed, so the publisher's
# confirmations are the record; an unconfirmed one may still arrive).
load_nats() {
    local b=0
    while [ "$(date +%s)" -lt "$1" ]; do
        b=$((b + 1))
        natscli pub-many soak.in.x 20 --id-prefix "in-$b-" --data "{\"b\":$b}" >/dev/null 2>&1
        sleep 0.2
    done
}
load_redis() {
    local b=0 j
    while [ "$(date +%s)" -lt "$1" ]; do
        b=$((b + 1))
        for j in $(seq 1 20); do echo "XADD soak:in * dedup_key r-$b-$j payload '{\"b\":$b,\"j\":$j}'"; done \
            | rcli >/dev/null 2>&1
        sleep 0.3
    done
}
load_rmq() {
    local b=0 j
    while [ "$(date +%s)" -lt "$1" ]; do
        b=$((b + 1))
        for j in $(seq 1 20); do echo "q$b-$j"; done >>"$TEST_TMP/i-rmq.maybe"
        rmq publish "" soak.in 20 --id-prefix "q$b" --print-ids >>"$TEST_TMP/i-rmq.expected"
        sleep 0.5
    done
}
# i-hook: a batch answered 200 is committed (expected); one whose request
# timed out may have been (maybe); one refused everywhere (503: "nothing of
# that request was committed", or no relay listening) must not appear.
load_hook() {
    local b=0 j body u code
    while [ "$(date +%s)" -lt "$1" ]; do
        b=$((b + 1)) body="["
        for j in $(seq 1 20); do body+="{\"dedup_key\":\"h-$b-$j\",\"b\":$b}"; [ "$j" -lt 20 ] && body+=","; done
        body+="]"
        local f=refused
        for u in $HOOK_IN_URLS; do
            code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 4 -H 'Content-Type: application/json' \
                   --data-binary "$body" "$u"); rc=$?
            if [ "$code" = 200 ]; then f=expected; break; fi
            [ "$rc" = 28 ] && f=maybe   # timed out: it may have been committed
        done
        [ "$f" = refused ] || seq 1 20 | sed "s/.*/h-$b-&/" >>"$TEST_TMP/i-hook.$f"
        sleep 0.3
    done
}
# i-kafka: what counts as produced is what the topic holds at the end (an
# idempotent producer; a send cut off by a fault may or may not be stored).
load_kafka() {
    local k=1
    while [ "$(date +%s)" -lt "$1" ]; do
        timeout 15 "$KCLI" produce "$KBROKERS" soak-in 20 --from "$k" --dedup-header pgtrickle-dedup-key \
            --value '{"k":%d}' >/dev/null 2>>"$TEST_TMP/kcli-produce.log"
        k=$((k + 20))
        sleep 0.5
    done
}
load_sqs() {
    local k=1
    while [ "$(date +%s)" -lt "$1" ]; do
        if "$SQS_SEND" send "$SQS_EP" "$SQS_IN" 20 2 '{"s":%ld}' "$k" 2>>"$TEST_TMP/sqs_send.log"; then f=expected; else f=maybe; fi
        seq "$k" $((k + 19)) | sed 's/.*/outbox_bench:&:0/' >>"$TEST_TMP/i-sqs.$f"
        k=$((k + 20))
        sleep 0.5
    done
}
: >"$TEST_TMP/i-rmq.expected"; : >"$TEST_TMP/i-rmq.maybe"; : >"$TEST_TMP/i-sqs.expected"; : >"$TEST_TMP/i-sqs.maybe"
: >"$TEST_TMP/i-hook.expected"; : >"$TEST_TMP/i-hook.maybe"
T_END=$(( $(date +%s) + SECS ))
LOADS=()
load_pg "$T_END" & LOADS+=($!)
load_nats "$T_END" & LOADS+=($!)
use redis && { load_redis "$T_END" & LOADS+=($!); }
use rabbitmq && { load_rmq "$T_END" & LOADS+=($!); }
use sqs && { load_sqs "$T_END" & LOADS+=($!); }
use webhook && { load_hook "$T_END" & LOADS+=($!); }
use kafka && { load_kafka "$T_END" & LOADS+=($!); }

# ---- faults ------------------------------------------------------------------------
KIND_NAMES="kill9 pause nats pg partition cut redis rabbitmq sqs kafka webhook"
declare -A FAULTS=()
for k in $KIND_NAMES; do FAULTS[$k]=0; done
default_kinds="kill9 kill9 pause nats pg partition cut cut"
for b in redis rabbitmq sqs kafka webhook; do use "$b" && default_kinds+=" $b"; done
read -r -a KINDS <<<"${SOAK_FAULTS:-$default_kinds}"
if [ -z "$NETNS" ]; then   # no namespace: draw from the rest
    kinds=(); for k in "${KINDS[@]}"; do [ "$k" = partition ] || [ "$k" = cut ] || kinds+=("$k"); done; KINDS=("${kinds[@]}")
fi
CUT_PEERS=(pg nats); for b in redis rabbitmq sqs kafka webhook; do use "$b" && CUT_PEERS+=("$b"); done
while [ $(( $(date +%s) + EVERY )) -lt "$T_END" ]; do
    sleep "$EVERY"
    k=${KINDS[$((RANDOM % ${#KINDS[@]}))]}
    r=r$(( 1 + RANDOM % 2 ))   # not in a $(...) subshell: bash reseeds RANDOM there
    d=$(( 1 + RANDOM % 3 ))
    p=$(( 4 + RANDOM % 9 ))
    peer=${CUT_PEERS[$((RANDOM % ${#CUT_PEERS[@]}))]}
    who=""
    case $k in
        kill9) kill9_relay "$r"; sleep "$d"; relay_up "$r"; who=" ($r)" ;;
        pause) p=$(( 3 + RANDOM % 8 )); kill -STOP "$(relay_pid "$r")"; sleep "$p"; kill -CONT "$(relay_pid "$r")"; who=" ($r, $p s)" ;;
        nats)  kill -9 "${PRIV_NATS_PIDS[N]}"; wait "${PRIV_NATS_PIDS[N]}" 2>/dev/null; sleep "$d"; start_private_nats N ;;
        pg)    _as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -m immediate -w stop >/dev/null 2>&1; private_pg_start ;;
        redis) kill -9 "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null; sleep "$d"; start_redis ;;
        rabbitmq) "$RMQ_NODE" stop "$RMQ_DIR" >/dev/null 2>&1; sleep "$d"
                  "$RMQ_NODE" start "$RMQ_DIR" "$RMQ_PORT" >/dev/null || bail "rabbitmq node did not restart" ;;
        sqs)   p=$(( 3 + RANDOM % 6 )); kill -STOP "$SQS_PID"; sleep "$p"; kill -CONT "$SQS_PID"; who=" (frozen $p s)" ;;
        kafka) kmock down || bail "kmock down failed"; sleep $(( 2 + RANDOM % 5 )); kmock up || bail "kmock up failed" ;;
        webhook) p=$(( 3 + RANDOM % 6 ))
                 if [ $((RANDOM % 2)) = 0 ]; then kill -STOP "$HOOK_PID"; sleep "$p"; kill -CONT "$HOOK_PID"; who=" (frozen $p s)"
                 else echo 503 >"$TEST_TMP/hook.ctl"; sleep "$p"; echo 200 >"$TEST_TMP/hook.ctl"; who=" (503 for $p s)"; fi ;;
        partition) ip link set "skh$$" down; sleep "$p"; ip link set "skh$$" up; who=" (r2, $p s)" ;;
        cut)   ip netns exec "$NETNS" ip route replace "${PEER[$peer]}/32" via "$net.14" dev "skn$$"; sleep "$p"
               ip netns exec "$NETNS" ip route del "${PEER[$peer]}/32"; who=" (r2 - $peer, $p s)" ;;
    esac
    FAULTS[$k]=$(( FAULTS[$k] + 1 ))
    diag "soak: t+$(( SECS - (T_END - $(date +%s)) )) s fault $k$who"
done
wait "${LOADS[@]}"
for r in r1 r2; do kill -0 "$(relay_pid "$r")" 2>/dev/null || relay_up "$r"; done

# ---- drain and check -----------------------------------------------------------------
LEDGER=$(sql "SELECT count(*) FROM soak_ledger")
CHANGES=$(( LEDGER + $(sql "SELECT count(*) FROM soak_t WHERE v > 0") ))
IN_STORED=$(natscli stream-info SOAK_IN | jq -r .messages)
kafka_high() { timeout 30 "$KCLI" watermarks "$KBROKERS" "$1" 2>/dev/null | awk '{ s += $3 } END { print s + 0 }'; }
kafka_low() { timeout 30 "$KCLI" watermarks "$KBROKERS" "$1" 2>/dev/null | awk '{ s += $2 } END { print s + 0 }'; }
hook_events() { jq -s '[.[] | select(.status == 200) | .body | fromjson | if type == "array" then length else 1 end] | add // 0' "$TEST_TMP/hook.jsonl"; }
sqs_depth() {
    aws --endpoint-url "$SQS_EP" --output json sqs get-queue-attributes --queue-url "$1" \
        --attribute-names ApproximateNumberOfMessages 2>>"$TEST_TMP/aws.log" | jq -r '.Attributes.ApproximateNumberOfMessages // 0'
}
use redis && REDIS_IN=$(rcli XLEN soak:in)
C=$TEST_TMP/check; mkdir -p "$C"
if use kafka; then   # the dedup keys soak-in holds: i-kafka's ground truth
    # all of it or the run fails: a short read would hide lost events
    timeout 180 "$KCLI" consume "$KBROKERS" soak-in "$(kafka_high soak-in)" --timeout 60 \
        >"$TEST_TMP/soak-in.jsonl" 2>>"$TEST_TMP/kcli.log" || bail "soak: could not read topic soak-in back to its high watermark"
    jq -r '.headers["pgtrickle-dedup-key"]' "$TEST_TMP/soak-in.jsonl" | sort -u > "$C/i-kafka.expected"
    KAFKA_IN=$(lines "$C/i-kafka.expected")
fi
inbox_count() { sql "SELECT count(*) FROM pgtrickle.$1"; }
drained() {   # every sink holds at least its ground truth's number of events
    [ "$(lines "$OUT")" -ge "$LEDGER" ] && [ "$(stream_count SOAK_OUT "$NURL")" -ge "$LEDGER" ] \
        && [ "$(lines "$CDC")" -ge "$CHANGES" ] && [ "$(stream_count SOAK_CDC "$NURL")" -ge "$CHANGES" ] \
        && [ "$(inbox_count soak_inbox)" -ge "$IN_STORED" ] || return 1
    if use redis; then [ "$(rcli XLEN soak:out)" -ge "$LEDGER" ] && [ "$(inbox_count soak_inbox_redis)" -ge "$REDIS_IN" ] || return 1; fi
    if use rabbitmq; then [ "$(rmq count soak.out)" -ge "$LEDGER" ] \
        && [ "$(inbox_count soak_inbox_rmq)" -ge "$(lines "$TEST_TMP/i-rmq.expected")" ] || return 1; fi
    if use sqs; then [ "$(sqs_depth "$SQS_OUT")" -ge "$LEDGER" ] \
        && [ "$(inbox_count soak_inbox_sqs)" -ge "$(lines "$TEST_TMP/i-sqs.expected")" ] || return 1; fi
    if use kafka; then [ "$(kafka_high soak-out)" -ge "$LEDGER" ] && [ "$(kafka_high soak-cdc)" -ge "$CHANGES" ] \
        && [ "$(inbox_count soak_inbox_kafka)" -ge "$KAFKA_IN" ] || return 1; fi
    if use webhook; then [ "$(hook_events)" -ge "$LEDGER" ] \
        && [ "$(inbox_count soak_inbox_hook)" -ge "$(lines "$TEST_TMP/i-hook.expected")" ] || return 1; fi
}
DRAIN=${SOAK_DRAIN_SECONDS:-240}
if ! wait_until "$DRAIN" drained; then diag "soak: the sinks did not all catch up within $DRAIN s (the check shows which)"; fi
sleep 3   # late duplicates, if any, land now
for r in r1 r2; do stop_relay "$r"; done

# What each sink holds, as JSON lines {"key": <dedup key as the sink carries
# it>, "env": <the envelope>} (<name>.got), and the ground truth of each
# reverse source (<name>.expected, <name>.maybe, its inbox in <name>.got).
sql "COPY (SELECT i FROM soak_ledger) TO STDOUT" > "$C/ledger.txt"
sql "COPY (SELECT id, v FROM soak_t) TO STDOUT" > "$C/rows.txt"
DLQ=$(sql "SELECT count(*) FROM pgtrickle.relay_dlq")
PIPES=$C/pipelines.tsv; : >"$PIPES"
pipe() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$PIPES"; }   # name label kind stored-dedup
jq -c '{key: .dedup_key, env: .}' "$OUT" > "$C/o-file.got";  pipe o-file "outbox -> file" outbox 0
jq -c '{key: .dedup_key, env: .}' "$CDC" > "$C/c-file.got";  pipe c-file "CDC -> file" cdc 0
natscli dump SOAK_OUT | jq -c '{key: .headers["Nats-Msg-Id"], env: (.data | fromjson)}' > "$C/o-nats.got"
natscli dump SOAK_CDC | jq -c '{key: .headers["Nats-Msg-Id"], env: (.data | fromjson)}' > "$C/c-nats.got"
natscli dump SOAK_IN | jq -r '.headers["Nats-Msg-Id"]' > "$C/i-nats.expected"
pipe o-nats "outbox -> NATS" outbox 1; pipe c-nats "CDC -> NATS" cdc 1
fields() { jq -c '.[] | .[1] | [range(0; length; 2) as $i | {(.[$i]): .[$i + 1]}] | add'; }
if use redis; then
    rcli --json XRANGE soak:out - + | fields | jq -c '{key: .dedup_key, env: (.payload | fromjson)}' > "$C/o-redis.got"
    rcli --json XRANGE soak:in - + | fields | jq -r .dedup_key > "$C/i-redis.expected"
    pipe o-redis "outbox -> Redis" outbox 1
fi
if use rabbitmq; then
    timeout 300 /usr/bin/python3 "$TOOLS/rmqcli.py" --url "amqp://guest:guest@127.0.0.1:$RMQ_PORT/" drain soak.out 2>>"$TEST_TMP/rmqcli.log" | jq -c '{key: .message_id, env: (.body | fromjson)}' > "$C/o-rmq.got"
    cp "$TEST_TMP/i-rmq.expected" "$TEST_TMP/i-rmq.maybe" "$C/"
    pipe o-rmq "outbox -> RabbitMQ" outbox 0
fi
if use sqs; then
    timeout 300 "$SQS_SEND" dump "$SQS_EP" "$SQS_OUT" 2>>"$TEST_TMP/sqs_send.log" | jq -c '{key: .dedup_key, env: (.body | fromjson)}' > "$C/o-sqs.got"
    cp "$TEST_TMP/i-sqs.expected" "$TEST_TMP/i-sqs.maybe" "$C/"
    pipe o-sqs "outbox -> SQS" outbox 0
fi
if use kafka; then
    # read exactly what the topic holds (the sum of its high watermarks): an
    # idle gap while one partition's fetch starts must not end the read early
    kconsume() { timeout 180 "$KCLI" consume "$KBROKERS" "$1" "$(kafka_high "$1")" --timeout 60 2>>"$TEST_TMP/kcli.log"; }
    kconsume soak-out | jq -c '(.value | fromjson) as $e | {key: $e.dedup_key, env: $e}' > "$C/o-kafka.got"
    kconsume soak-cdc | jq -c '(.value | fromjson) as $e | {key: $e.dedup_key, env: $e}' > "$C/c-kafka.got"
    pipe o-kafka "outbox -> Kafka" outbox 0; pipe c-kafka "CDC -> Kafka" cdc 0
    KAFKA_TRIMMED=$(( $(kafka_low soak-out) + $(kafka_low soak-cdc) + $(kafka_low soak-in) ))
fi
if use webhook; then
    jq -c 'select(.status == 200) | .body | fromjson | if type == "array" then .[] else . end | {key: .dedup_key, env: .}' \
        "$TEST_TMP/hook.jsonl" > "$C/o-hook.got"
    pipe o-hook "outbox -> webhook" outbox 0
    cp "$TEST_TMP/i-hook.expected" "$TEST_TMP/i-hook.maybe" "$C/"
fi
set -- $INBOXES
while [ $# -ge 2 ]; do
    sql "COPY (SELECT event_id FROM pgtrickle.$2) TO STDOUT" > "$C/$1.got"
    pipe "$1" "${1#i-} -> inbox" inbox 1
    shift 2
done

faults=""; for k in $KIND_NAMES; do [ "${FAULTS[$k]}" -gt 0 ] && faults+="$k=${FAULTS[$k]} "; done
report=$(python3 "$SOAK_DIR/check.py" "$C" "${faults:-none}" "$SEED") ; rc=$?
while IFS= read -r line; do diag "soak: $line"; done <<<"$report"
ok "$rc" "every produced event is in its sink, once after dedup (seed $SEED)"
is "$DLQ" 0 "the dead-letter table is empty"
if use kafka; then   # records the mock cluster dropped would look lost
    is "${KAFKA_TRIMMED:-0}" 0 "the Kafka mock cluster trimmed nothing (low watermarks all 0)"
fi
done_testing
