#!/usr/bin/env bash
# bench/bench_redis.sh - Redis Streams both ways, with a plain hiredis client
# as the reference measured in the same run. Run: bench/run.sh redis
#
#   outbox -> Redis  100 000 outbox events (rows of BENCH_REDIS_ROWS events,
#                    100) relayed into one stream: the relay is running and
#                    connected, the outbox is filled in one transaction, and
#                    the time runs from its COMMIT until
#                    messages_published_total reaches the count (every XADD
#                    reply checked; offsets committed as it goes).
#                    Reference: tests/tools/redis_pipe, a plain hiredis
#                    client pipelining XADDs (redisAppendCommandArgv) with the
#                    relay's fields and its envelope as the body, byte for
#                    byte, every reply checked; measured before and after the
#                    relay, the ratio is against their mean; BENCH_REDIS_REPEAT
#                    (3) relay runs, each between two reference runs, and
#                    the median of their ratios is reported (with min-max).
#   baseline         the same outbox events through the same relay into a
#                    local file (file sink, no fsync): the relay's own cost of
#                    reading the outbox, encoding and committing offsets,
#                    which the plain client does not pay.
#   dedup window     the same with dedup_window_seconds (each XADD in the Lua
#                    script); reference: redis_pipe running the same script.
#   Redis -> inbox   100 000 entries (redis_pipe) drained through a consumer
#                    group into an inbox (batch_size BENCH_REDIS_INBOX_BATCH,
#                    1000); time from enabling the pipeline in a running relay
#                    until the inbox writer confirmed all. References in the
#                    same run: NATS -> inbox (the same bodies through a
#                    JetStream durable pull consumer, same batch size) and
#                    psql \copy of the same rows into an identical table (the
#                    inbox floor of the other reverse benchmarks).
# Reported: seconds, events/s, ratios, the relay's peak RSS (VmHWM).
# JSON: bench/results/redis.json.
. "$(dirname "$0")/lib.sh"
bench_services pg redis nats
bench_db bench_redis
TOOLS=$(dirname "$RELAY_BIN")/tests
PIPE=$TOOLS/redis_pipe
NATSCLI=${NATSCLI:-$TOOLS/natscli}
[ -x "$PIPE" ] && [ -x "$NATSCLI" ] || { echo "bench_redis: build first (redis_pipe, natscli)" >&2; exit 2; }
RPORT=$PGT_REDIS_PORT
RURL="redis://127.0.0.1:$RPORT"
NURL=$PGT_NATS_URL
N=${BENCH_REDIS_EVENTS:-100000}
ROWS=${BENCH_REDIS_ROWS:-100}
IN_BATCH=${BENCH_REDIS_INBOX_BATCH:-1000}
REPEAT=${BENCH_REDIS_REPEAT:-3}
rc_() { redis-cli -h 127.0.0.1 -p "$RPORT" "$@"; }
nc_() { "$NATSCLI" -s "$NURL" "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RELAY_PID=""
start_relay() {   # start_relay <port>
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$1" --log-level warn \
        --allow-path "$BENCH_TMP" --discovery-interval 1s >>"$BENCH_TMP/relay.log" 2>&1 &
    RELAY_PID=$!
    for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$1/metrics" && break; sleep 0.05; done
}
stop_relay() { [ -n "$RELAY_PID" ] || return 0; kill -TERM "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=""; }
drop_keys() { rc_ --scan --pattern 'bench:*' | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p "$RPORT" DEL >/dev/null; }
trap 'stop_relay; drop_keys; rm -rf "$BENCH_TMP"' EXIT
drop_keys

# ---- 1. outbox -> Redis, with and without the dedup window ----------------------------------
PUBM='pgtrickle_relay_messages_published_total{pipeline="bench-out",sink="redis"}'
PUBD='pgtrickle_relay_messages_published_total{pipeline="bench-dedup",sink="redis"}'
bsql "SELECT pgtrickle.enable_outbox('ev')" >/dev/null
bsql "SELECT pgtrickle.enable_outbox('evd')" >/dev/null
bsql "SELECT pgtrickle.enable_outbox('evf')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-file', 'evf', NULL,
      '{\"type\":\"file\",\"output\":\"$BENCH_TMP/fwd.jsonl\",\"fsync\":false,\"rotate_bytes\":0}')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-out', 'ev', NULL,
      '{\"type\":\"redis\",\"url\":\"$RURL\",\"stream_key\":\"bench:out\"}')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-dedup', 'evd', NULL,
      '{\"type\":\"redis\",\"url\":\"$RURL\",\"stream_key\":\"bench:dedup\",\"dedup_window_seconds\":600}')" >/dev/null
PORT=$(free_port)
start_relay "$PORT"
# one event first: the relay is connected, and its envelope is the
# reference's body, byte for byte
bsql "SELECT pgtrickle.outbox_write('ev', '[{\"id\":0,\"k\":0,\"v\":\"payload-0\"}]')" >/dev/null
bsql "SELECT pgtrickle.outbox_write('evd', '[{\"id\":0,\"k\":0,\"v\":\"payload-0\"}]')" >/dev/null
wait_metric "$PORT" "$PUBM" 1 30
wait_metric "$PORT" "$PUBD" 1 30
SAMPLE=$(rc_ --json XRANGE bench:out - + COUNT 1 | jq -r '.[0][1][7]')
SUBJ=$(rc_ --json XRANGE bench:out - + COUNT 1 | jq -r '.[0][1][3]')
BODY_BYTES=${#SAMPLE}
ref_run() {   # ref_run <tag> [--dedup-window S]: the plain client, on a fresh key
    rc_ DEL bench:ref >/dev/null
    "$PIPE" "$RPORT" bench:ref "$N" "$SUBJ" "$SAMPLE" --prefix "ref-$1-" "${@:2}" | jq .seconds
}
fill() {   # fill <outbox>: N events in one transaction, rows of ROWS events
    bsql "SELECT pgtrickle.outbox_write('$1', (SELECT jsonb_agg(jsonb_build_object('id', g, 'k', g % 97, 'v', 'payload-' || g))
                                              FROM generate_series(i * $ROWS + 1, (i + 1) * $ROWS) g))
            FROM generate_series(0, $N / $ROWS - 1) i" >/dev/null
}
# REPEAT relay runs, each between two reference runs (ref, relay, ref, relay,
# ..., ref): on a shared machine one pair can be off by a third, the median
# of the pairs' ratios much less.
REFS=$(ref_run a0) OUTS=""
for i in $(seq 1 "$REPEAT"); do
    fill ev
    t0=$(now_ms)
    wait_metric "$PORT" "$PUBM" $((i * N + 1)) 300
    OUTS+="${OUTS:+,}$(( $SEEN_MS - t0 ))"
    [ "$(rc_ XLEN bench:out)" = $((i * N + 1)) ] || { echo "bench_redis: bench:out holds $(rc_ XLEN bench:out) entries" >&2; exit 1; }
    REFS+=",$(ref_run "a$i")"
done

PUBF='pgtrickle_relay_messages_published_total{pipeline="bench-file",sink="file"}'
fill evf
t0=$(now_ms)
wait_metric "$PORT" "$PUBF" "$N" 300
FILE_MS=$(( $SEEN_MS - t0 ))

DREF1=$(ref_run c --dedup-window 600)
fill evd
t0=$(now_ms)
wait_metric "$PORT" "$PUBD" $((N + 1)) 300
DEDUP_MS=$(( $SEEN_MS - t0 ))
[ "$(rc_ XLEN bench:dedup)" = $((N + 1)) ] || { echo "bench_redis: bench:dedup holds $(rc_ XLEN bench:dedup) entries" >&2; exit 1; }
DREF2=$(ref_run d --dedup-window 600)
OUT_RSS=$(peak_rss_kb "$RELAY_PID")
stop_relay
bsql "SELECT pgtrickle.disable_relay('bench-out')" >/dev/null
bsql "SELECT pgtrickle.disable_relay('bench-dedup')" >/dev/null
drop_keys

# ---- 2. Redis -> inbox, NATS -> inbox --------------------------------------------------------
BODY='{"event_type":"order.created","order_id":12345,"customer":"c-42","amount":"99.95","items":[{"sku":"A-1","qty":2}]}'
"$PIPE" "$RPORT" bench:in "$N" bench.in.orders "$BODY" --prefix evt- >/dev/null
nc_ stream-delete BENCH_REDIS_NATS_IN >/dev/null 2>&1 || true
nc_ stream-add BENCH_REDIS_NATS_IN "bench.rin.>" >/dev/null
nc_ pub-many bench.rin.orders "$N" --id-prefix "evt-" --data "$BODY" >/dev/null
bsql "SELECT pgtrickle.create_inbox('redis_inbox')" >/dev/null
bsql "SELECT pgtrickle.create_inbox('nats_inbox')" >/dev/null
bsql "SELECT pgtrickle.set_relay_inbox('bench-rin', 'redis_inbox',
      '{\"type\":\"redis\",\"url\":\"$RURL\",\"stream_key\":\"bench:in\",\"batch_size\":$IN_BATCH}', p_enabled => false)" >/dev/null
bsql "SELECT pgtrickle.set_relay_inbox('bench-nin', 'nats_inbox',
      '{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"BENCH_REDIS_NATS_IN\",\"durable_name\":\"bench\",\"batch_size\":$IN_BATCH}',
      p_enabled => false)" >/dev/null
inbox_run() {   # inbox_run <pipeline>: ms from enabling it until the inbox confirmed N
    local port; port=$(free_port)
    start_relay "$port"
    local t0; t0=$(now_ms)
    bsql "SELECT pgtrickle.enable_relay('$1')" >/dev/null
    wait_metric "$port" "pgtrickle_relay_messages_published_total{pipeline=\"$1\",sink=\"pg-inbox\"}" "$N" 300
    echo $(( $SEEN_MS - t0 )) "$(peak_rss_kb "$RELAY_PID")"
    stop_relay
    bsql "SELECT pgtrickle.disable_relay('$1')" >/dev/null
}
read -r RIN_MS RIN_RSS < <(inbox_run bench-rin)
read -r NIN_MS NIN_RSS < <(inbox_run bench-nin)
for t in redis_inbox nats_inbox; do
    got=$(bsql "SELECT count(*) FROM pgtrickle.$t")
    [ "$got" = "$N" ] || { echo "bench_redis: $t holds $got rows, expected $N" >&2; exit 1; }
done
[ "$(rc_ XPENDING bench:in pgtrickle-relay | head -1)" = 0 ] || { echo "bench_redis: entries left pending" >&2; exit 1; }
nc_ stream-delete BENCH_REDIS_NATS_IN >/dev/null 2>&1 || true
bsql "CREATE TABLE inbox_ref (LIKE pgtrickle.redis_inbox INCLUDING ALL)" >/dev/null
"${BPSQL[@]}" -d "$BENCH_DB" -c "\\copy (SELECT event_id, event_type, source, aggregate_id, payload, trace_id FROM pgtrickle.redis_inbox) TO '$BENCH_TMP/rows.copy'" >/dev/null
t0=$(now_ms)
"${BPSQL[@]}" -d "$BENCH_DB" -c "\\copy inbox_ref (event_id, event_type, source, aggregate_id, payload, trace_id) FROM '$BENCH_TMP/rows.copy'" >/dev/null
COPY_MS=$(( $(now_ms) - t0 ))

# ---- report -------------------------------------------------------------------------------------
python3 - "$N" "$ROWS" "$BODY_BYTES" "$OUTS" "$REFS" "$DEDUP_MS" "$DREF1" "$DREF2" "$OUT_RSS" \
    "$IN_BATCH" "$RIN_MS" "$RIN_RSS" "$NIN_MS" "$NIN_RSS" "$COPY_MS" "$FILE_MS" "$BENCH_RESULTS/redis.json" <<'PY'
import json, sys
import statistics
(n, rows, body, outs, refs, dd_ms, d1, d2, out_rss, in_batch, rin_ms, rin_rss, nin_ms, nin_rss,
 copy_ms, file_ms, path) = sys.argv[1:]
file_s = int(file_ms) / 1000
n = int(n)
outs = [int(x) / 1000 for x in outs.split(",")]
refs = [float(x) for x in refs.split(",")]
# each relay run against the mean of the reference runs on either side of it
ratios = [(refs[i] + refs[i + 1]) / 2 / outs[i] for i in range(len(outs))]
ratio = statistics.median(ratios)
out_s, ref_s = statistics.median(outs), statistics.median(refs)
dd_s = int(dd_ms) / 1000
dref_s = (float(d1) + float(d2)) / 2
rin_s, nin_s, copy_s = int(rin_ms) / 1000, int(nin_ms) / 1000, int(copy_ms) / 1000
res = {
  "outbox_to_redis": {"events": n, "events_per_outbox_row": int(rows), "body_bytes": int(body),
      "relay_seconds": outs, "relay_events_per_s": round(n / out_s),
      "reference_seconds": refs, "reference_events_per_s": round(n / ref_s),
      "ratios": [round(r, 2) for r in ratios],
      "ratio_relay_reference": round(ratio, 2), "relay_peak_rss_kb": int(out_rss),
      "baseline_outbox_to_file_seconds": file_s, "baseline_events_per_s": round(n / file_s)},
  "outbox_to_redis_dedup_window": {"events": n, "relay_seconds": dd_s,
      "relay_events_per_s": round(n / dd_s), "reference_seconds": [float(d1), float(d2)],
      "reference_events_per_s": round(n / dref_s), "ratio_relay_reference": round(dref_s / dd_s, 2),
      "cost_vs_plain_relay": round(dd_s / out_s, 2)},
  "redis_to_inbox": {"events": n, "batch_size": int(in_batch), "relay_seconds": rin_s,
      "relay_events_per_s": round(n / rin_s), "relay_peak_rss_kb": int(rin_rss),
      "nats_to_inbox_seconds": nin_s, "nats_to_inbox_events_per_s": round(n / nin_s),
      "ratio_redis_nats": round(nin_s / rin_s, 2),
      "copy_reference_seconds": copy_s, "ratio_relay_copy": round(copy_s / rin_s, 2)},
}
json.dump(res, open(path, "w"), indent=2)
o, d, i = res["outbox_to_redis"], res["outbox_to_redis_dedup_window"], res["redis_to_inbox"]
print("| case | events | reference | relay | ratio | relay peak RSS |")
print("|---|---|---|---|---|---|")
print(f"| outbox -> Redis (XADD), median of {len(outs)} | {n} | {ref_s:.2f} s, {o['reference_events_per_s']} ev/s (hiredis "
      f"pipelined XADD) | {out_s:.2f} s, {o['relay_events_per_s']} ev/s | {o['ratio_relay_reference']} "
      f"({min(ratios):.2f}-{max(ratios):.2f}) | {int(out_rss)/1024:.1f} MB |")
print(f"| baseline: outbox -> file, same relay | {n} | - | {file_s:.2f} s, {o['baseline_events_per_s']} ev/s "
      f"| - | - |")
print(f"| outbox -> Redis, dedup_window_seconds | {n} | {dref_s:.2f} s, {d['reference_events_per_s']} ev/s "
      f"(hiredis, same Lua script) | {dd_s:.2f} s, {d['relay_events_per_s']} ev/s | {d['ratio_relay_reference']} "
      f"| (cost: {d['cost_vs_plain_relay']}x the plain relay's time) |")
print(f"| Redis -> inbox | {n} | NATS -> inbox {nin_s:.2f} s, {i['nats_to_inbox_events_per_s']} ev/s; "
      f"psql \\copy {copy_s:.2f} s | {rin_s:.2f} s, {i['relay_events_per_s']} ev/s | "
      f"{i['ratio_redis_nats']} vs NATS, {i['ratio_relay_copy']} vs copy | {int(rin_rss)/1024:.1f} MB |")
PY
