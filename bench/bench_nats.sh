#!/usr/bin/env bash
# bench/bench_nats.sh - NATS JetStream both ways, with a plain nats.c client
# as the reference measured in the same run. Run: bench/run.sh nats
#
#   outbox -> NATS   100 000 outbox events (rows of BENCH_NATS_ROWS events,
#                    100) relayed into a file-storage stream: the relay is
#                    running and connected, the outbox is filled in one
#                    transaction, and the time runs from its COMMIT until
#                    messages_published_total reaches the count (every event
#                    PubAck'ed; offsets are committed as it goes).
#                    References, two plain nats.c publishers giving the same
#                    guarantee (4096 in flight, Nats-Msg-Id on every message,
#                    every PubAck awaited), sending the same number of relay
#                    envelopes, byte for byte, to the same stream (recreated
#                    empty before each run), each measured before and after
#                    the relay: tests/tools/natscli pub-many (js_PublishAsync)
#                    and pub-many-core (core publishes, a reply subject per
#                    message, one wildcard subscription read on the
#                    publishing thread); the ratio is against the faster
#                    mean. Also reported: CPU seconds of the relay process
#                    (which reads the outbox too) against the publishers'.
#   single-event rows  the same 100 000 events as one outbox row each (one
#                    transaction per event in the application), with the
#                    outbox source's batch_size at 5000 rows; same reference.
#   latency          BENCH_NATS_LAT_EVENTS (10 000) single-event outbox
#                    commits at BENCH_NATS_LAT_RATE (1 000/s) from a
#                    PostgreSQL procedure (COMMIT per event, the commit time
#                    in the payload); an ordered JetStream consumer records
#                    the arrival of each stored message: p50/p99/max of
#                    outbox commit -> stored in the stream.
#   NATS -> inbox    100 000 messages pre-published to a stream, drained by a
#                    durable pull consumer into an inbox (batch_size
#                    BENCH_NATS_INBOX_BATCH, 1000); time from enabling the
#                    pipeline in a running relay until the inbox writer
#                    confirmed all. References: the database floor, the same
#                    rows written into an identical table by a plain libpq
#                    client with the inbox writer's own statement in batches
#                    of the same size (tests/tools/inbox_floor.c, statement
#                    time only), and psql \copy of the rows (COPY's floor).
# Reported: seconds, events/s, ratios, the relay's peak RSS (VmHWM).
# JSON: bench/results/nats.json. BENCH_NATS_KEEP=1 keeps the last relay log
# in bench/results/nats-relay.log.
# BENCH_NATS_EVENTS, BENCH_NATS_ROWS, BENCH_NATS_LAT_EVENTS, BENCH_NATS_LAT_RATE
# and BENCH_NATS_INBOX_BATCH change the sizes above.
. "$(dirname "$0")/lib.sh"
bench_services pg nats
bench_db bench_nats
NATSCLI=${NATSCLI:-$(dirname "$RELAY_BIN")/tests/natscli}
INBOX_FLOOR=${INBOX_FLOOR:-$(dirname "$RELAY_BIN")/tests/inbox_floor}
[ -x "$INBOX_FLOOR" ] || { echo "bench_nats: $INBOX_FLOOR not built" >&2; exit 2; }
[ -x "$NATSCLI" ] || { echo "bench_nats: $NATSCLI not built" >&2; exit 2; }
NURL=$PGT_NATS_URL
N=${BENCH_NATS_EVENTS:-100000}
ROWS=${BENCH_NATS_ROWS:-100}
LAT_N=${BENCH_NATS_LAT_EVENTS:-10000}
LAT_RATE=${BENCH_NATS_LAT_RATE:-1000}
IN_BATCH=${BENCH_NATS_INBOX_BATCH:-1000}
nc_() { "$NATSCLI" -s "$NURL" "$@"; }
metric_of() {  # metric_of <port> <exact metric>
    { curl -s "http://127.0.0.1:$1/metrics" 2>/dev/null || true; } | awk -v k="$2" '$1 == k { print $2 }'
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
RELAY_PID=""
start_relay() {   # start_relay <port>
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$1" --log-level warn --allow-path "$BENCH_TMP" \
        --discovery-interval 1s >>"$BENCH_TMP/relay.log" 2>&1 &
    RELAY_PID=$!
}
stop_relay() { kill -TERM "$RELAY_PID" 2>/dev/null; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID="";
               [ "${BENCH_NATS_KEEP:-0}" = 1 ] && cp "$BENCH_TMP/relay.log" "$BENCH_RESULTS/nats-relay.log"; return 0; }
recreate_stream() { nc_ stream-delete "$1" >/dev/null; nc_ stream-add "$1" "$2" >/dev/null; }
trap 'stop_relay; rm -rf "$BENCH_TMP"' EXIT

# ---- 1. outbox -> NATS -----------------------------------------------------------------
# The relay runs (connected, idle) before the outbox is filled in one
# transaction; the time runs from that COMMIT until the last PubAck, like the
# reference's, which also leaves out connecting.
OUT=BENCH_NATS_OUT
PUBM='pgtrickle_relay_messages_published_total{pipeline="bench-out",sink="nats"}'
PUBM1='pgtrickle_relay_messages_published_total{pipeline="bench-out1",sink="nats"}'
sink_cfg() { echo "{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"$OUT\",\"subject_template\":\"bench.out.{stream_table}.{op}\"}"; }
bsql "SELECT pgtrickle.enable_outbox('ev')" >/dev/null
bsql "SELECT pgtrickle.enable_outbox('ev1')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-out', 'ev', NULL, '$(sink_cfg)')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-out1', 'ev1', NULL, '$(sink_cfg)')" >/dev/null
bsql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '5000')
       WHERE name = 'bench-out1'" >/dev/null
recreate_stream "$OUT" "bench.out.>"
PORT=$(free_port)
start_relay "$PORT"
# one event first: the relay is connected, and its envelope is the
# reference's payload, byte for byte
bsql "SELECT pgtrickle.outbox_write('ev', '[{\"id\":0,\"k\":0,\"v\":\"payload-0\"}]')" >/dev/null
wait_metric "$PORT" "$PUBM" 1 30
SAMPLE=$(nc_ get "$OUT" 1 | jq -r .data)
SAMPLE_SUBJ=$(nc_ get "$OUT" 1 | jq -r .subject)
BODY_BYTES=${#SAMPLE}

# ref_run <mode> <tag>: one reference run, printing its JSON plus its CPU
# time ("cpu_s": user + system of the publisher process)
ref_run() {
    recreate_stream "$OUT" "bench.out.>"
    local TIMEFORMAT='%U %S' out t
    { time nc_ "$1" "$SAMPLE_SUBJ" "$N" --data "$SAMPLE" --id-prefix "ref-$2-" > "$BENCH_TMP/ref.out"; } 2> "$BENCH_TMP/ref.time"
    read -r u s < <(tail -1 "$BENCH_TMP/ref.time")
    jq -c --argjson cpu "$(python3 -c "print($u + $s)")" '. + {cpu_s: $cpu}' "$BENCH_TMP/ref.out"
}
cpu_ms() { awk -v t="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / t) }' "/proc/$1/stat"; }
REF1=$(ref_run pub-many a)
REFC1=$(ref_run pub-many-core a)

recreate_stream "$OUT" "bench.out.>"
base=$(metric_of "$PORT" "$PUBM")
bsql "SELECT pgtrickle.outbox_write('ev', (SELECT jsonb_agg(jsonb_build_object('id', g, 'k', g % 97, 'v', 'payload-' || g))
                                          FROM generate_series(i * $ROWS + 1, (i + 1) * $ROWS) g))
        FROM generate_series(0, $N / $ROWS - 1) i" >/dev/null
t0=$(now_ms)
cpu0=$(cpu_ms "$RELAY_PID")
wait_metric "$PORT" "$PUBM" $((base + N)) 300
t1=$SEEN_MS
OUT_MS=$((t1 - t0))
OUT_CPU_MS=$(( $(cpu_ms "$RELAY_PID") - cpu0 ))
STORED=$(nc_ stream-info "$OUT" | jq -r .messages)
[ "$STORED" = "$N" ] || { echo "bench_nats: the stream holds $STORED messages, expected $N" >&2; exit 1; }
REF2=$(ref_run pub-many b)
REFC2=$(ref_run pub-many-core b)

# ---- 1b. the same events, one outbox row each -----------------------------------------
recreate_stream "$OUT" "bench.out.>"
bsql "SELECT pgtrickle.outbox_write('ev1', jsonb_build_array(jsonb_build_object('id', g, 'k', g % 97, 'v', 'payload-' || g)))
        FROM generate_series(1, $N) g" >/dev/null
t0=$(now_ms)
wait_metric "$PORT" "$PUBM1" "$N" 300
t1=$SEEN_MS
OUT1_MS=$((t1 - t0))
STORED=$(nc_ stream-info "$OUT" | jq -r .messages)
[ "$STORED" = "$N" ] || { echo "bench_nats: the stream holds $STORED messages, expected $N" >&2; exit 1; }
OUT_RSS=$(peak_rss_kb "$RELAY_PID")
OUT1_RSS=$OUT_RSS
stop_relay
bsql "SELECT pgtrickle.disable_relay('bench-out')" >/dev/null
bsql "SELECT pgtrickle.disable_relay('bench-out1')" >/dev/null

# ---- 2. latency at a light, fixed rate ------------------------------------------------
LAT=BENCH_NATS_LAT
recreate_stream "$LAT" "bench.lat.>"
bsql "SELECT pgtrickle.enable_outbox('lat')" >/dev/null
bsql "SELECT pgtrickle.set_relay_outbox('bench-lat', 'lat', NULL,
      '{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"$LAT\",\"subject_template\":\"bench.lat.{op}\"}')" >/dev/null
bsql "CREATE OR REPLACE PROCEDURE bench_lat_writer(n int, rate int) LANGUAGE plpgsql AS \$\$
      DECLARE t0 timestamptz := clock_timestamp();
      BEGIN
        FOR i IN 1..n LOOP
          PERFORM pgtrickle.outbox_write('lat', jsonb_build_array(jsonb_build_object(
                    'i', i, 't_us', (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)));
          COMMIT;
          PERFORM pg_sleep(greatest(0, extract(epoch FROM (t0 + i * interval '1 second' / rate - clock_timestamp()))));
        END LOOP;
      END \$\$" >/dev/null
PORT=$(free_port)
start_relay "$PORT"
sleep 2 # the pipeline is running and connected
nc_ latency "$LAT" "bench.lat.>" "$LAT_N" $(( LAT_N / LAT_RATE + 30 )) > "$BENCH_TMP/lat.out" &
latpid=$!
for _ in $(seq 1 100); do grep -q ready "$BENCH_TMP/lat.out" 2>/dev/null && break; sleep 0.05; done
bsql "CALL bench_lat_writer($LAT_N, $LAT_RATE)" >/dev/null
wait $latpid
LAT_JSON=$(grep '^{' "$BENCH_TMP/lat.out")
LAT_RSS=$(peak_rss_kb "$RELAY_PID")
stop_relay
bsql "SELECT pgtrickle.disable_relay('bench-lat')" >/dev/null

# ---- 3. NATS -> inbox -------------------------------------------------------------------
IN=BENCH_NATS_IN
recreate_stream "$IN" "bench.in.>"
IN_PUB=$(nc_ pub-many bench.in.orders "$N" --id-prefix "evt-" \
    --data '{"event_type":"order.created","order_id":12345,"customer":"c-42","amount":"99.95","items":[{"sku":"A-1","qty":2}]}')
bsql "SELECT pgtrickle.create_inbox('bench_inbox')" >/dev/null
bsql "SELECT pgtrickle.set_relay_inbox('bench-in', 'bench_inbox',
      '{\"type\":\"nats\",\"url\":\"$NURL\",\"stream\":\"$IN\",\"durable_name\":\"bench\",\"batch_size\":$IN_BATCH}',
      p_enabled => false)" >/dev/null
PORT=$(free_port)
start_relay "$PORT"
for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/metrics" && break; sleep 0.05; done
t0=$(now_ms)
bsql "SELECT pgtrickle.enable_relay('bench-in')" >/dev/null   # hot reload: the pipeline starts now
wait_metric "$PORT" 'pgtrickle_relay_messages_published_total{pipeline="bench-in",sink="pg-inbox"}' "$N" 300
t1=$SEEN_MS
IN_MS=$((t1 - t0))
IN_RSS=$(peak_rss_kb "$RELAY_PID")
stop_relay
ROWS_IN=$(bsql "SELECT count(*) FROM pgtrickle.bench_inbox")
[ "$ROWS_IN" = "$N" ] || { echo "bench_nats: the inbox holds $ROWS_IN rows, expected $N" >&2; exit 1; }
# reference: the same rows with \copy into an identical, empty table
bsql "CREATE TABLE bench_inbox_ref (LIKE pgtrickle.bench_inbox INCLUDING ALL)" >/dev/null
"${BPSQL[@]}" -d "$BENCH_DB" -c "\\copy (SELECT event_id, event_type, source, aggregate_id, payload, trace_id FROM pgtrickle.bench_inbox) TO '$BENCH_TMP/rows.copy'" >/dev/null
t0=$(now_ms)
"${BPSQL[@]}" -d "$BENCH_DB" -c "\\copy bench_inbox_ref (event_id, event_type, source, aggregate_id, payload, trace_id) FROM '$BENCH_TMP/rows.copy'" >/dev/null
t1=$(now_ms)
COPY_MS=$((t1 - t0))
# the database floor: the inbox writer's statement from a plain libpq client,
# in batches of the relay's size (tests/tools/inbox_floor.c)
bsql "CREATE TABLE bench_inbox_floor (LIKE pgtrickle.bench_inbox INCLUDING ALL)" >/dev/null
FLOOR=$("$INBOX_FLOOR" "$BENCH_DB_URL" public.bench_inbox_floor "$BENCH_TMP/rows.copy" "$IN_BATCH")

# ---- report -------------------------------------------------------------------------------
python3 - "$N" "$OUT_MS" "$REF1" "$REF2" "$OUT_RSS" "$LAT_JSON" "$LAT_RATE" "$LAT_RSS" "$IN_MS" "$IN_RSS" \
    "$COPY_MS" "$BODY_BYTES" "$ROWS" "$IN_BATCH" "$OUT1_MS" "$OUT1_RSS" "$BENCH_RESULTS/nats.json" \
    "$REFC1" "$REFC2" "$OUT_CPU_MS" "$FLOOR" <<'PY'
import json, sys
(n, out_ms, ref1, ref2, out_rss, lat, lat_rate, lat_rss, in_ms, in_rss, copy_ms, body, rows, in_batch,
 out1_ms, out1_rss, path, refc1, refc2, out_cpu_ms, floor) = sys.argv[1:]
floor = json.loads(floor)
ref1, ref2, refc1, refc2 = (json.loads(x) for x in (ref1, ref2, refc1, refc2))
out1_s = int(out1_ms) / 1000
n = int(n); out_s = int(out_ms) / 1000
# two references with the same guarantee (every message PubAck'ed, Nats-Msg-Id
# set), each the mean of a run before and after the relay: js_PublishAsync,
# and core publishes with a reply subject each (what the sink does); the
# ratio is against the faster one
async_s = (ref1["seconds"] + ref2["seconds"]) / 2
core_s = (refc1["seconds"] + refc2["seconds"]) / 2
ref_s = min(async_s, core_s)
r1, r2 = ref1["seconds"], ref2["seconds"]
async_cpu = (ref1["cpu_s"] + ref2["cpu_s"]) / 2
core_cpu = (refc1["cpu_s"] + refc2["cpu_s"]) / 2
out_cpu = int(out_cpu_ms) / 1000
in_s = int(in_ms) / 1000; copy_s = int(copy_ms) / 1000
lat = json.loads(lat)
res = {
  "outbox_to_nats": {"events": n, "events_per_outbox_row": int(rows), "body_bytes": int(body),
      "relay_seconds": out_s, "relay_events_per_s": round(n / out_s),
      "reference_seconds": [float(r1), float(r2)], "reference_events_per_s": round(n / ref_s),
      "reference_async_seconds": async_s, "reference_core_seconds": core_s,
      "reference_async_cpu_s": async_cpu, "reference_core_cpu_s": core_cpu, "relay_cpu_s": out_cpu,
      "ratio_relay_reference": round((n / out_s) / (n / ref_s), 2), "relay_peak_rss_kb": int(out_rss)},
  "outbox_to_nats_single_event_rows": {"events": n, "source_batch_size": 5000,
      "relay_seconds": out1_s, "relay_events_per_s": round(n / out1_s),
      "ratio_relay_reference": round((n / out1_s) / (n / ref_s), 2), "relay_peak_rss_kb": int(out1_rss)},
  "latency": {"rate_per_s": int(lat_rate), "events": lat["count"], "p50_ms": lat["p50_ms"],
      "p99_ms": lat["p99_ms"], "max_ms": lat["max_ms"], "relay_peak_rss_kb": int(lat_rss)},
  "nats_to_inbox": {"events": n, "batch_size": int(in_batch), "relay_seconds": in_s,
      "relay_events_per_s": round(n / in_s), "copy_reference_seconds": copy_s,
      "copy_reference_events_per_s": round(n / copy_s), "ratio_relay_copy": round(copy_s / in_s, 2),
      "floor_seconds": floor["seconds"], "floor_events_per_s": round(n / floor["seconds"]),
      "ratio_relay_floor": round(floor["seconds"] / in_s, 2),
      "relay_peak_rss_kb": int(in_rss)},
}
json.dump(res, open(path, "w"), indent=2)
o, o1 = res["outbox_to_nats"], res["outbox_to_nats_single_event_rows"]
l, i = res["latency"], res["nats_to_inbox"]
print(f"| case | events | reference | relay | ratio | relay peak RSS |")
print(f"|---|---|---|---|---|---|")
print(f"| outbox -> NATS (file storage) | {n} | {ref_s:.2f} s, {o['reference_events_per_s']} ev/s "
      f"(faster of: nats.c js_PublishAsync {async_s:.2f} s, core publish + reply subjects {core_s:.2f} s) "
      f"| {out_s:.2f} s, {o['relay_events_per_s']} ev/s | {o['ratio_relay_reference']} "
      f"| {int(out_rss)/1024:.1f} MB |")
print(f"| outbox -> NATS, one event per outbox row | {n} | (same) | {out1_s:.2f} s, "
      f"{o1['relay_events_per_s']} ev/s | {o1['ratio_relay_reference']} | {int(out1_rss)/1024:.1f} MB |")
print(f"| latency at {lat_rate}/s, commit -> stored | {l['events']} | - | p50 {l['p50_ms']} ms, "
      f"p99 {l['p99_ms']} ms, max {l['max_ms']} ms | - | {int(lat_rss)/1024:.1f} MB |")
print(f"| outbox -> NATS, CPU seconds | {n} | publisher alone: js_PublishAsync {async_cpu:.2f} s, "
      f"core {core_cpu:.2f} s | relay (reading the outbox too) {out_cpu:.2f} s | "
      f"{round(min(async_cpu, core_cpu) / out_cpu, 2) if out_cpu else '-'} | |")
print(f"| NATS -> inbox | {n} | floor {floor['seconds']:.2f} s, {i['floor_events_per_s']} ev/s (the inbox "
      f"statement, batches of {in_batch}, plain libpq) | {in_s:.2f} s, {i['relay_events_per_s']} ev/s "
      f"| {i['ratio_relay_floor']} | {int(in_rss)/1024:.1f} MB |")
print(f"| NATS -> inbox vs COPY | {n} | {copy_s:.2f} s, {i['copy_reference_events_per_s']} ev/s (psql \\copy) "
      f"| (same) | {i['ratio_relay_copy']} | |")
PY
