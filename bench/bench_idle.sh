#!/usr/bin/env bash
# bench/bench_idle.sh - what an idle relay costs (issue 16: an idle relay
# with 8 pipelines stays under 16 MB of RSS). Run: bench/run.sh idle
#
#   0 pipelines   the relay connected to its database, discovering nothing
#   8 pipelines   outbox -> NATS, outbox -> Kafka, outbox -> Redis,
#                 outbox -> SQS, CDC -> NATS, CDC -> file, NATS -> inbox,
#                 RabbitMQ -> inbox: every pipeline running and connected to
#                 its broker, no traffic
# Each is measured after BENCH_IDLE_SECONDS (10) of idling: RSS (VmRSS),
# peak RSS (VmHWM), threads, and the CPU time the relay used while idle.
# The bound is a number, not a reference run: 16 MB for 8 pipelines.
# BENCH_IDLE_SMAPS=<prefix> keeps /proc/<pid>/smaps of each case as
# <prefix>.<pipelines> (where the RSS is, mapping by mapping).
# JSON: bench/results/idle.json.
. "$(dirname "$0")/lib.sh"
bench_services pg nats kafka redis rabbitmq sqs
bench_db bench_idle
IDLE=${BENCH_IDLE_SECONDS:-10}
NATSCLI=${NATSCLI:-$(dirname "$RELAY_BIN")/tests/natscli}
[ -x "$NATSCLI" ] || { echo "bench_idle: build first (natscli)" >&2; exit 2; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RELAY_PID=""
stop_relay() { [ -n "$RELAY_PID" ] || return 0; kill -TERM "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; }
cleanup() {
    stop_relay
    "$NATSCLI" -s "$PGT_NATS_URL" stream-delete BENCH_IDLE_IN >/dev/null 2>&1 || true
    /usr/bin/python3 "$BENCH_ROOT/tests/tools/rmqcli.py" --url "$PGT_RABBITMQ_URL" delete-queue bench.idle >/dev/null 2>&1 || true
    rm -rf "$BENCH_TMP"
}
trap cleanup EXIT
status_of() { curl -s "http://127.0.0.1:$1/status" 2>/dev/null || true; }
proc_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# measure <label> <expected running pipelines>: start, wait until every
# pipeline is healthy, idle, read /proc; prints a JSON object
measure() {
    local port; port=$(free_port)
    AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 \
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$port" --log-level warn \
        --allow-path "$BENCH_TMP" >>"$BENCH_TMP/relay.log" 2>&1 &
    RELAY_PID=$!
    local end=$(( $(now_ms) + 60000 )) n=-1
    while [ "$(now_ms)" -lt "$end" ]; do
        n=$(status_of "$port" | jq '[.pipelines[]? | select(.healthy == true)] | length' 2>/dev/null || echo -1)
        [ "${n:--1}" -ge "$2" ] && break
        sleep 0.2
    done
    [ "${n:--1}" -ge "$2" ] || { echo "bench_idle: only ${n} of $2 pipelines became healthy"; tail -20 "$BENCH_TMP/relay.log"; exit 1; }
    sleep 2   # settle: first polls, consumer setup
    local t0; t0=$(cpu_ticks "$RELAY_PID")
    sleep "$IDLE"
    local cpu=$(( $(cpu_ticks "$RELAY_PID") - t0 ))
    [ -n "${BENCH_IDLE_SMAPS:-}" ] && cp "/proc/$RELAY_PID/smaps" "$BENCH_IDLE_SMAPS.$2"
    printf '{"label":"%s","pipelines":%d,"rss_kb":%d,"peak_rss_kb":%d,"threads":%d,"idle_cpu_ms_per_s":%s}\n' \
        "$1" "$2" "$(proc_kb "$RELAY_PID" VmRSS)" "$(proc_kb "$RELAY_PID" VmHWM)" \
        "$(proc_kb "$RELAY_PID" Threads)" "$(echo "scale=1; $cpu * 1000 / $(getconf CLK_TCK) / $IDLE" | bc)"
    stop_relay
}

ZERO=$(measure "0 pipelines" 0)

"$NATSCLI" -s "$PGT_NATS_URL" stream-add BENCH_IDLE_IN 'bench.idle.>' >/dev/null
/usr/bin/python3 "$BENCH_ROOT/tests/tools/rmqcli.py" --url "$PGT_RABBITMQ_URL" declare-queue bench.idle >/dev/null
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
QURL=$(aws --endpoint-url "$PGT_SQS_ENDPOINT" --output json sqs create-queue --queue-name bench-idle | jq -r .QueueUrl)
[ -n "$QURL" ] || { echo "bench_idle: cannot create the SQS queue"; exit 1; }
bsql "SELECT pgtrickle.enable_outbox('idle');
      CREATE TABLE idle_t (id bigint PRIMARY KEY, v text);
      CREATE PUBLICATION idle_pub FOR TABLE idle_t;
      SELECT pgtrickle.create_inbox('idle_inbox');
      SELECT pgtrickle.set_relay_outbox('o-nats', 'idle', NULL,
        '{\"type\":\"nats\",\"url\":\"$PGT_NATS_URL\",\"stream\":\"BENCH_IDLE_IN\",\"subject_template\":\"bench.idle.{op}\"}');
      SELECT pgtrickle.set_relay_outbox('o-kafka', 'idle', NULL,
        '{\"type\":\"kafka\",\"brokers\":\"$PGT_KAFKA_BROKERS\",\"topic_template\":\"bench-idle\"}');
      SELECT pgtrickle.set_relay_outbox('o-redis', 'idle', NULL,
        '{\"type\":\"redis\",\"url\":\"$PGT_REDIS_URL\",\"stream_key\":\"bench:idle\"}');
      SELECT pgtrickle.set_relay_outbox('o-sqs', 'idle', NULL,
        '{\"type\":\"sqs\",\"queue_url\":\"$QURL\",\"endpoint_url\":\"$PGT_SQS_ENDPOINT\"}');
      SELECT pgtrickle.set_relay_cdc('c-nats', '{\"source\":{\"publication\":\"idle_pub\",\"slot\":\"idle_nats\"},
        \"sink\":{\"type\":\"nats\",\"url\":\"$PGT_NATS_URL\",\"stream\":\"BENCH_IDLE_IN\",\"subject_template\":\"bench.idle.cdc\"}}');
      SELECT pgtrickle.set_relay_cdc('c-file', '{\"source\":{\"publication\":\"idle_pub\",\"slot\":\"idle_file\"},
        \"sink\":{\"type\":\"file\",\"output\":\"$BENCH_TMP/cdc.jsonl\"}}');
      SELECT pgtrickle.set_relay_inbox('i-nats', 'idle_inbox',
        '{\"type\":\"nats\",\"url\":\"$PGT_NATS_URL\",\"stream\":\"BENCH_IDLE_IN\",\"durable_name\":\"bench_idle\",\"subject\":\"bench.idle.never\"}');
      SELECT pgtrickle.set_relay_inbox('i-rmq', 'idle_inbox',
        '{\"type\":\"rabbitmq\",\"url\":\"$PGT_RABBITMQ_URL\",\"queue\":\"bench.idle\"}');" >/dev/null
EIGHT=$(measure "8 pipelines" 8)
redis-cli -h 127.0.0.1 -p "$PGT_REDIS_PORT" DEL bench:idle >/dev/null 2>&1 || true
bsql "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name LIKE 'idle_%'" >/dev/null 2>&1 || true

python3 - "$ZERO" "$EIGHT" "$BENCH_RESULTS/idle.json" <<'PY'
import json, sys
rows = [json.loads(sys.argv[1]), json.loads(sys.argv[2])]
json.dump({"idle": rows, "bound_rss_kb_8_pipelines": 16384}, open(sys.argv[3], "w"), indent=2)
print("| relay | RSS | peak RSS | threads | CPU while idle | bound |")
print("|---|---|---|---|---|---|")
for r in rows:
    bound = "< 16 MB" if r["pipelines"] == 8 else "-"
    print(f"| {r['label']} | {r['rss_kb'] / 1024:.1f} MB | {r['peak_rss_kb'] / 1024:.1f} MB | {r['threads']} "
          f"| {r['idle_cpu_ms_per_s']} ms/s | {bound} |")
PY
