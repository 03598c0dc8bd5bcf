#!/usr/bin/env bash
# bench/bench_cdc.sh - CDC throughput: the relay (pgoutput -> decode -> JSON
# envelope -> file sink, fsync per batch; and -> NATS JetStream, every PubAck
# awaited) against pg_recvlogical draining the same WAL from its own slot to
# /dev/null, in the same run.
#
# Workloads (table ev(id bigserial pk, k int, v text, ts timestamptz)):
#   batch1000   1 000 transactions x 1 000 rows  (1 000 000 events)
#   single      100 000 single-row transactions  (100 000 events)
#   bigtxn      one transaction of 1 000 000 rows (peak RSS must stay bounded)
# Both slots are created before the load, so both drain the same WAL from
# the server's cache (catch-up). Reported: seconds, events/s, relay/reference
# ratio, the relay's peak RSS (VmHWM). Run: bench/run.sh cdc
# (BENCH_CDC_CASES="batch1000 single" to pick cases, BENCH_CDC_BATCH=N to set
# source.batch_size; default 5000, the cdc source's default;
# BENCH_CDC_SINKS="file nats" to pick sinks; BENCH_CDC_FORMAT=debezium or
# cloudevents for the sinks' format, docs/formats.md). Each sink drains its own slot
# (created with the reference's, before the load); the NATS case publishes
# to a file-storage stream BENCH_CDC (subjects cdc.>) on the services'
# nats-server, recreated per case, and checks it holds every event; a second
# reference for it, in the same run: natscli pub-many (a plain nats.c
# asynchronous JetStream publisher) of up to 200 000 bodies of the same size.
. "$(dirname "$0")/lib.sh"
SINKS=${BENCH_CDC_SINKS:-file nats}
if [[ " $SINKS " == *" nats "* ]]; then
    bench_services pg nats
    NATSCLI=${NATSCLI:-$(dirname "$RELAY_BIN")/tests/natscli}
    [ -x "$NATSCLI" ] || { echo "bench_cdc: $NATSCLI not built (needed for the nats case)" >&2; exit 2; }
    nc_() { "$NATSCLI" -s "$PGT_NATS_URL" "$@"; }
    # the cdc source's NATS extras create the KV bucket "schemas" (stream
    # KV_schemas) and the stream INIT; remove them afterwards unless they
    # existed before
    CREATED_HERE=()
    for s in KV_schemas INIT; do nc_ stream-info "$s" >/dev/null 2>&1 || CREATED_HERE+=("$s"); done
    trap 'for s in "${CREATED_HERE[@]}"; do nc_ stream-delete "$s" >/dev/null 2>&1; done; rm -rf "$BENCH_TMP"' EXIT
else
    bench_services pg
fi
bench_db bench_cdc
CASES=${BENCH_CDC_CASES:-batch1000 single bigtxn}
BATCH=${BENCH_CDC_BATCH:-5000}
FORMAT=${BENCH_CDC_FORMAT:-}
FMT_KEY=${FORMAT:+,\"format\":\"$FORMAT\"}
PUB=bench_cdc_pub
RESULTS=()

bsql "CREATE TABLE ev (id bigserial PRIMARY KEY, k int NOT NULL, v text NOT NULL, ts timestamptz NOT NULL DEFAULT now());
      CREATE PUBLICATION $PUB FOR TABLE ev;" >/dev/null

drop_slots() { bsql "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN ('bench_cdc_relay', 'bench_cdc_nats', 'bench_cdc_ref') AND NOT active" >/dev/null; }

load() {
    case $1 in
    batch1000)
        echo "INSERT INTO ev(k, v) SELECT g, 'payload-' || g FROM generate_series(1, 1000) g;" > "$BENCH_TMP/b.sql"
        "$PGT_PGBIN/pgbench" -h "$PGT_PGHOST" -p "$PGT_PGPORT" -U postgres -n -f "$BENCH_TMP/b.sql" -c 2 -j 2 -t 500 "$BENCH_DB" >/dev/null
        echo 1000000 ;;
    single)
        echo "INSERT INTO ev(k, v) VALUES (1, 'payload-x');" > "$BENCH_TMP/s.sql"
        "$PGT_PGBIN/pgbench" -h "$PGT_PGHOST" -p "$PGT_PGPORT" -U postgres -n -f "$BENCH_TMP/s.sql" -c 4 -j 2 -t 25000 "$BENCH_DB" >/dev/null
        echo 100000 ;;
    bigtxn)
        bsql "INSERT INTO ev(k, v) SELECT g, 'payload-' || g FROM generate_series(1, 1000000) g" >/dev/null
        echo 1000000 ;;
    esac
}

# run_relay <sink> <slot> <events>: the relay drains <slot> into <sink>;
# sets relay_ms, rss, stored (events that reached the sink)
run_relay() {
    local sink=$1 slot=$2 n=$3 out=$BENCH_TMP/out.jsonl sink_cfg port
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if [ "$sink" = nats ]; then
        nc_ stream-delete BENCH_CDC >/dev/null
        nc_ stream-add BENCH_CDC 'cdc.>' >/dev/null
        sink_cfg="{\"type\":\"nats\",\"url\":\"$PGT_NATS_URL\",\"stream\":\"BENCH_CDC\"$FMT_KEY}"
    else
        rm -f "$out"
        sink_cfg="{\"type\":\"file\",\"output\":\"$out\",\"rotate_bytes\":0$FMT_KEY}"
    fi
    bsql "SELECT pgtrickle.set_relay_cdc('bench-cdc', '{\"source\":{\"publication\":\"$PUB\",\"slot\":\"$slot\",\"batch_size\":$BATCH,\"create_slot\":false},\"sink\":$sink_cfg}')" >/dev/null
    local t0 t1
    t0=$(now_ms)
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$port" --log-level warn --allow-path "$BENCH_TMP" \
        >"$BENCH_TMP/relay.log" 2>&1 &
    local pid=$!
    t1=$(python3 "$BENCH_ROOT/bench/wait_metric.py" "$port" \
        "pgtrickle_relay_messages_published_total{pipeline=\"bench-cdc\",sink=\"$sink\"}" "$n" 3600 "$pid") \
        || { echo "relay died or timed out:"; cat "$BENCH_TMP/relay.log"; exit 1; }
    relay_ms=$((t1 - t0)); rss=$(peak_rss_kb "$pid")
    kill -TERM "$pid"; wait "$pid" || true
    if [ "$sink" = nats ]; then
        stored=$(nc_ stream-info BENCH_CDC | jq -r .messages)
        body_len=$(nc_ get BENCH_CDC 1 | jq -r '.data | length')
        nc_ stream-delete BENCH_CDC >/dev/null
        # second reference: a plain nats.c asynchronous JetStream publisher
        # (natscli pub-many, ids on every message) of bodies of the same size
        local m=$(( n < 200000 ? n : 200000 ))
        nc_ stream-add BENCH_CDC_REF 'benchcdcref.>' >/dev/null
        nats_ref_eps=$(nc_ pub-many benchcdcref.x "$m" --data "$(head -c "$body_len" /dev/zero | tr '\0' x)" --id-prefix r | jq -r '.rate | floor')
        nc_ stream-delete BENCH_CDC_REF >/dev/null
    else
        stored=$(wc -l < "$out" | tr -d ' ')
        rm -f "$out"
    fi
    bsql "SELECT pgtrickle.delete_relay('bench-cdc')" >/dev/null
}

run_case() {
    local name=$1
    drop_slots
    bsql "TRUNCATE ev" >/dev/null
    bsql "SELECT pg_create_logical_replication_slot('bench_cdc_ref', 'pgoutput')" >/dev/null
    local sink
    for sink in $SINKS; do
        bsql "SELECT pg_create_logical_replication_slot('bench_cdc_$([ "$sink" = file ] && echo relay || echo nats)', 'pgoutput')" >/dev/null
    done
    local n; n=$(load "$name")
    local end; end=$(bsql "SELECT pg_current_wal_lsn()")

    # reference: pg_recvlogical to /dev/null
    local t0 t1 ref_ms
    t0=$(now_ms)
    "$PGT_PGBIN/pg_recvlogical" -h "$PGT_PGHOST" -p "$PGT_PGPORT" -U postgres -d "$BENCH_DB" \
        --slot bench_cdc_ref --start --endpos "$end" --no-loop -s 1 -f /dev/null \
        -o proto_version=1 -o publication_names=$PUB -o messages=true
    t1=$(now_ms); ref_ms=$((t1 - t0))
    local ref_eps=$((n * 1000 / ref_ms))

    for sink in $SINKS; do
        run_relay "$sink" "bench_cdc_$([ "$sink" = file ] && echo relay || echo nats)" "$n"
        local relay_eps=$((n * 1000 / relay_ms))
        local ratio; ratio=$(awk -v a="$relay_eps" -v b="$ref_eps" 'BEGIN { printf "%.2f", a / b }')
        printf '%-10s %-5s %9d %10.2f %12d %10.2f %12d %6s %9d\n' "$name" "$sink" "$n" "$(awk -v m=$ref_ms 'BEGIN{print m/1000}')" \
            "$ref_eps" "$(awk -v m=$relay_ms 'BEGIN{print m/1000}')" "$relay_eps" "$ratio" "$rss"
        [ "$stored" = "$n" ] || echo "  WARNING: the $sink sink holds $stored events, expected $n"
        local extra=""
        if [ "$sink" = nats ]; then
            printf '%-10s %-5s   plain nats.c publisher, %d-byte bodies: %d ev/s; relay/that = %s\n' "$name" nats \
                "$body_len" "$nats_ref_eps" "$(awk -v a="$relay_eps" -v b="$nats_ref_eps" 'BEGIN { printf "%.2f", a / b }')"
            extra=",\"nats_publisher_eps\":$nats_ref_eps,\"body_bytes\":$body_len"
        fi
        RESULTS+=("{\"case\":\"$name\",\"sink\":\"$sink\",\"events\":$n,\"reference_s\":$(awk -v m=$ref_ms 'BEGIN{print m/1000}'),\"reference_eps\":$ref_eps,\"relay_s\":$(awk -v m=$relay_ms 'BEGIN{print m/1000}'),\"relay_eps\":$relay_eps,\"ratio\":$ratio,\"relay_peak_rss_kb\":$rss,\"batch_size\":$BATCH,\"format\":\"${FORMAT:-native}\"$extra}")
    done
    drop_slots
}

printf '%-10s %-5s %9s %10s %12s %10s %12s %6s %9s\n' case sink events ref_s ref_ev/s relay_s relay_ev/s ratio rss_kb
for c in $CASES; do run_case "$c"; done
write_json "$BENCH_RESULTS/cdc${FORMAT:+-$FORMAT}.json" "{\"benchmark\":\"cdc\",\"machine\":\"$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"results\":[$(IFS=,; echo "${RESULTS[*]}")]}"
echo "results: $BENCH_RESULTS/cdc${FORMAT:+-$FORMAT}.json"
