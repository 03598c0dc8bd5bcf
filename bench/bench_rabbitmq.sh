#!/usr/bin/env bash
# bench/bench_rabbitmq.sh - RabbitMQ both ways, with a plain rabbitmq-c client
# as the reference measured in the same run. Run: bench/run.sh rabbitmq
#
#   outbox -> RabbitMQ  BENCH_RMQ_EVENTS (100 000) outbox events in rows of
#                    BENCH_RMQ_ROWS (100) events, relayed to a topic exchange
#                    bound to one durable queue (persistent, mandatory,
#                    publisher confirms). The relay runs with the pipeline
#                    disabled; the time runs from enabling it until
#                    messages_published_total reaches the count (every
#                    message confirmed; offsets committed as it goes).
#                    Reference: tests/tools/rmqbench produce, a plain
#                    rabbitmq-c publisher with confirms (2048 unconfirmed at
#                    most, like the sink's max_in_flight; heartbeats every
#                    30 s, like the relay's connections) sending the same
#                    number of relay envelopes of the same size, with the
#                    same properties, to the same exchange and queue (purged
#                    between runs), measured before and after the relay; the
#                    ratio is against their mean.
#   RabbitMQ -> inbox  the same number of messages pre-published to a durable
#                    queue, consumed into an inbox (batch_size
#                    BENCH_RMQ_INBOX_BATCH, 1000); time from enabling the
#                    pipeline until the inbox writer confirmed all.
#                    References: NATS -> inbox, the relay's NATS source on
#                    the same messages in a JetStream stream, same batch
#                    size (the target: RabbitMQ -> inbox at least as fast);
#                    and rmqbench consume, a plain rabbitmq-c consumer with
#                    the same prefetch (RabbitMQ alone, no PostgreSQL).
# Reported: seconds, events/s, ratios, the relay's peak RSS (VmHWM).
# JSON: bench/results/rabbitmq.json.
. "$(dirname "$0")/lib.sh"
bench_services pg nats rabbitmq
bench_db bench_rabbitmq
RMQBENCH=${RMQBENCH:-$(dirname "$RELAY_BIN")/tests/rmqbench}
NATSCLI=${NATSCLI:-$(dirname "$RELAY_BIN")/tests/natscli}
[ -x "$RMQBENCH" ] || { echo "bench_rabbitmq: $RMQBENCH not built" >&2; exit 2; }
[ -x "$NATSCLI" ] || { echo "bench_rabbitmq: $NATSCLI not built" >&2; exit 2; }
RMQCLI=(/usr/bin/python3 "$BENCH_ROOT/tests/tools/rmqcli.py" --url "$PGT_RABBITMQ_URL")
N=${BENCH_RMQ_EVENTS:-100000}
ROWS=${BENCH_RMQ_ROWS:-100}
IN_BATCH=${BENCH_RMQ_INBOX_BATCH:-1000}
URL=$PGT_RABBITMQ_URL
RUN=brmq$$_$RANDOM
X=$RUN.x
Q=$RUN.q
QIN=$RUN.in
QREF=$RUN.ref

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RELAY_PID=""
start_relay() {   # start_relay <port>
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$1" --log-level warn \
        --discovery-interval 1s >>"$BENCH_TMP/relay.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/metrics" && break; sleep 0.05; done
}
stop_relay() { kill -TERM "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; }
# timed_enable <pipeline> <metric>: start a relay, enable the pipeline, print
# "<ms until metric = N> <peak rss kB>"
timed_enable() {
    local port; port=$(free_port)
    start_relay "$port"
    local t0; t0=$(now_ms)
    bsql "SELECT pgtrickle.enable_relay('$1')" >/dev/null
    wait_metric "$port" "$2" "$N" 600
    local ms=$(( $SEEN_MS - t0 )) rss; rss=$(peak_rss_kb "$RELAY_PID")
    stop_relay
    echo "$ms $rss"
}
# produced_ms <rmqbench produce args...>: its own timing, in ms
produced_ms() { RMQBENCH_HEARTBEAT=30 "$RMQBENCH" produce "$URL" "$@" 2>&1 | awk '/^produced/ { printf "%d", $4 * 1000 }'; }
trap 'stop_relay; "${RMQCLI[@]}" delete-queue "$Q" 2>/dev/null; "${RMQCLI[@]}" delete-queue "$QIN" 2>/dev/null;
      "${RMQCLI[@]}" delete-queue "$QREF" 2>/dev/null; "${RMQCLI[@]}" delete-exchange "$X" 2>/dev/null; rm -rf "$BENCH_TMP"' EXIT

"${RMQCLI[@]}" declare-exchange "$X" topic
"${RMQCLI[@]}" declare-queue "$Q" --bind "$X" "#"

# ---- 1. outbox -> RabbitMQ -------------------------------------------------------------
bsql "SELECT pgtrickle.enable_outbox('bench')" >/dev/null
bsql "INSERT INTO pgtrickle.outbox_bench (inserted_count, deleted_count, payload)
      SELECT $ROWS, 0, jsonb_build_object('v', 1, 'inserted',
             (SELECT jsonb_agg(jsonb_build_object('id', r * $ROWS + i, 'customer', 'c-42', 'amount', 99.95))
              FROM generate_series(1, $ROWS) i), 'deleted', '[]'::jsonb)
      FROM generate_series(0, $N / $ROWS - 1) r" >/dev/null
# the reference sends envelopes of the relay's shape and size
ENV='{"dedup_key":"outbox_bench:%d:0","subject":"pgtrickle.bench.insert","op":"insert","payload":{"id":%d,"amount":99.95,"customer":"c-42"},"is_full_refresh":false,"outbox_id":%d,"refresh_id":null}'
REF1=$(produced_ms "$X" pgtrickle.bench.insert "$N" "$ENV")
"${RMQCLI[@]}" purge "$Q"
bsql "SELECT pgtrickle.set_relay_outbox('bench-rmq', 'bench', NULL,
      '{\"type\":\"rabbitmq\",\"url\":\"$URL\",\"exchange\":\"$X\"}', p_enabled => false)" >/dev/null
read -r OUT_MS OUT_RSS < <(timed_enable bench-rmq 'pgtrickle_relay_messages_published_total{pipeline="bench-rmq",sink="rabbitmq"}')
GOT=$("${RMQCLI[@]}" count "$Q")
[ "$GOT" -ge "$N" ] || { echo "bench_rabbitmq: the queue holds $GOT messages, expected $N" >&2; exit 1; }
"${RMQCLI[@]}" purge "$Q"
REF2=$(produced_ms "$X" pgtrickle.bench.insert "$N" "$ENV")
"${RMQCLI[@]}" purge "$Q"

# ---- 2. RabbitMQ -> inbox, NATS -> inbox, plain consumer -----------------------------------
BODY='{"event_type":"order.created","order_id":%d,"customer":"c-42","amount":"99.95","items":[{"sku":"A-%d","qty":2}],"n":%d}'
"${RMQCLI[@]}" declare-queue "$QIN"
"${RMQCLI[@]}" declare-queue "$QREF"
produced_ms "" "$QIN" "$N" "$BODY" >/dev/null
produced_ms "" "$QREF" "$N" "$BODY" >/dev/null
CONS_MS=$(RMQBENCH_HEARTBEAT=30 "$RMQBENCH" consume "$URL" "$QREF" "$N" "$IN_BATCH" 2>&1 | awk '/^consumed/ { printf "%d", $4 * 1000 }')
bsql "SELECT pgtrickle.create_inbox('bench_inbox')" >/dev/null
bsql "SELECT pgtrickle.set_relay_inbox('bench-in', 'bench_inbox',
      '{\"type\":\"rabbitmq\",\"url\":\"$URL\",\"queue\":\"$QIN\",\"batch_size\":$IN_BATCH}', p_enabled => false)" >/dev/null
read -r IN_MS IN_RSS < <(timed_enable bench-in 'pgtrickle_relay_messages_published_total{pipeline="bench-in",sink="pg-inbox"}')
ROWS_IN=$(bsql "SELECT count(*) FROM pgtrickle.bench_inbox")
[ "$ROWS_IN" = "$N" ] || { echo "bench_rabbitmq: the inbox holds $ROWS_IN rows, expected $N" >&2; exit 1; }

NS=BENCH_RMQ_NATS_$$
"$NATSCLI" -s "$PGT_NATS_URL" stream-delete "$NS" >/dev/null 2>&1 || true
"$NATSCLI" -s "$PGT_NATS_URL" stream-add "$NS" "$RUN.nats.>" >/dev/null
"$NATSCLI" -s "$PGT_NATS_URL" pub-many "$RUN.nats.orders" "$N" --id-prefix "evt-" \
    --data '{"event_type":"order.created","order_id":12345,"customer":"c-42","amount":"99.95","items":[{"sku":"A-1","qty":2}],"n":1}' >/dev/null
bsql "SELECT pgtrickle.create_inbox('bench_inbox_nats')" >/dev/null
bsql "SELECT pgtrickle.set_relay_inbox('bench-in-nats', 'bench_inbox_nats',
      '{\"type\":\"nats\",\"url\":\"$PGT_NATS_URL\",\"stream\":\"$NS\",\"durable_name\":\"bench\",\"batch_size\":$IN_BATCH}',
      p_enabled => false)" >/dev/null
read -r NATS_MS _ < <(timed_enable bench-in-nats 'pgtrickle_relay_messages_published_total{pipeline="bench-in-nats",sink="pg-inbox"}')
"$NATSCLI" -s "$PGT_NATS_URL" stream-delete "$NS" >/dev/null 2>&1 || true

# ---- report -------------------------------------------------------------------------------
python3 - "$N" "$ROWS" "$IN_BATCH" "$REF1" "$REF2" "$OUT_MS" "$OUT_RSS" "$IN_MS" "$IN_RSS" "$NATS_MS" "$CONS_MS" \
    "$BENCH_RESULTS/rabbitmq.json" "$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" <<'PY'
import json, sys
n, rows, batch, r1, r2, out_ms, out_rss, in_ms, in_rss, nats_ms, cons_ms, path, machine = sys.argv[1:]
n = int(n)
eps = lambda ms: round(n * 1000 / max(int(ms), 1))
ref_ms = (int(r1) + int(r2)) / 2
res = {
    "benchmark": "rabbitmq", "machine": machine, "events": n,
    "forward": {"events_per_row": int(rows), "relay_s": int(out_ms) / 1000, "relay_eps": eps(out_ms),
                "reference_s": [int(r1) / 1000, int(r2) / 1000], "reference_eps": eps(ref_ms),
                "relay_vs_reference": round(ref_ms / int(out_ms), 2), "relay_peak_rss_kb": int(out_rss)},
    "reverse": {"batch_size": int(batch), "relay_s": int(in_ms) / 1000, "relay_eps": eps(in_ms),
                "nats_relay_s": int(nats_ms) / 1000, "nats_relay_eps": eps(nats_ms),
                "relay_vs_nats": round(int(nats_ms) / int(in_ms), 2),
                "plain_consumer_s": int(cons_ms) / 1000, "plain_consumer_eps": eps(cons_ms),
                "relay_vs_plain_consumer": round(int(cons_ms) / int(in_ms), 2),
                "relay_peak_rss_kb": int(in_rss)},
}
json.dump(res, open(path, "w"), indent=2)
f, r = res["forward"], res["reverse"]
print("%-22s %9s %9s %s" % ("case", "events/s", "seconds", "ratio"))
print("%-22s %9d %9.2f relay/reference = %.2f (target >= 0.8), peak RSS %d kB" %
      ("outbox -> RabbitMQ", f["relay_eps"], f["relay_s"], f["relay_vs_reference"], f["relay_peak_rss_kb"]))
print("%-22s %9d %9.2f (mean of %.2f s and %.2f s)" % ("  rabbitmq-c reference", f["reference_eps"], ref_ms / 1000, *f["reference_s"]))
print("%-22s %9d %9.2f relay/NATS = %.2f (target >= 1.0), peak RSS %d kB" %
      ("RabbitMQ -> inbox", r["relay_eps"], r["relay_s"], r["relay_vs_nats"], r["relay_peak_rss_kb"]))
print("%-22s %9d %9.2f" % ("  NATS -> inbox", r["nats_relay_eps"], r["nats_relay_s"]))
print("%-22s %9d %9.2f relay/plain = %.2f" % ("  rabbitmq-c consumer", r["plain_consumer_eps"], r["plain_consumer_s"], r["relay_vs_plain_consumer"]))
print("results: " + path)
PY
