#!/usr/bin/env bash
# bench/bench_kafka.sh - Kafka throughput, both directions, against the mock
# cluster (kmock from tests/services: librdkafka's mock brokers in a process
# of their own, started here with 16-partition topics, since the mock keeps
# only about 5 MB per partition), 100 000 events each way. Three numbers per
# direction, all measured in the same run:
#
#   reference  a plain librdkafka client (tests/tools/kcli.c), Kafka only:
#              forward: kcli producing 100 000 records of the relay's size,
#              with its key length and two headers, idempotent, acks=all,
#              from memory; reverse: kcli consuming them in its own group.
#   relay      forward: 100 000 outbox events (one outbox row each, as
#              outbox_write stores them) -> kafka sink, until
#              published_total = 100 000 (timed from process start);
#              reverse: the 100 000 records -> kafka source -> inbox (one
#              INSERT ... ON CONFLICT per batch, offsets committed after
#              each COMMIT), timed from the first record (so the mock's ~3 s
#              group join counts neither here nor for the reference).
#   baseline   the same relay pipeline with Kafka swapped for a local file
#              (forward: outbox -> file sink without fsync; reverse: a JSONL
#              file with the same bodies -> file source -> inbox), so
#              relay/baseline is what Kafka itself costs the relay, and
#              baseline/reference shows how much of the gap to the
#              reference is PostgreSQL work (reading the outbox, writing
#              the inbox) rather than Kafka.
#   pg floor   the PostgreSQL work alone, by psql: forward, one SELECT of
#              the N outbox rows to /dev/null; reverse, one INSERT ... SELECT
#              of N rows from a temporary table into an inbox (no client
#              transfer, no parsing). No relay can beat it, so floor/reference
#              is the best relay/reference ratio this machine allows.
#
# Prints a table, writes bench/results/kafka.json. Run: bench/run.sh kafka
# (BENCH_KAFKA_N=events; BENCH_KAFKA_OUTBOX_BATCH / BENCH_KAFKA_INBOX_BATCH
# set source.batch_size, defaults: the sources' own, 500 and 1000).
. "$(dirname "$0")/lib.sh"
bench_services pg kafka
bench_db bench_kafka
KCLI=${KCLI:-$(dirname "$RELAY_BIN")/tests/kcli}
[ -x "$KCLI" ] || { echo "bench_kafka: $KCLI not built (ninja -C <build>)" >&2; exit 2; }
N=${BENCH_KAFKA_N:-100000}
RUN=bk$$_$RANDOM
OB_BATCH=${BENCH_KAFKA_OUTBOX_BATCH:-}
IN_BATCH=${BENCH_KAFKA_INBOX_BATCH:-}
RESULTS=()
RELAY_PID=
"$PGT_KMOCK" -t "$RUN.fwd:16" -t "$RUN.ref:16" -t "$RUN.in:16" </dev/null >"$BENCH_TMP/kmock.out" 2>/dev/null &
KMOCK_PID=$!
trap 'kill -TERM $KMOCK_PID $RELAY_PID 2>/dev/null; rm -rf "$BENCH_TMP"' EXIT
for _ in $(seq 1 100); do [ -s "$BENCH_TMP/kmock.out" ] && break; sleep 0.05; done
B=$(head -1 "$BENCH_TMP/kmock.out")
PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
BODY="{\"n\":%d,\"event_type\":\"order.created\",\"customer\":\"c-1\",\"note\":\"$PAD\"}"

secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }
eps() { echo $((N * 1000 / $1)); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }   # ratio <ms a> <ms b>: speed a / speed b

# metric_wait <port> <metric> <pid>: wait until the metric reaches N; prints
# the wall-clock ms when it first became > 0 and when it reached N.
metric_wait() {  # metric_wait <port> <metric> <pid>: "<ms first > 0> <ms at N>"
    python3 "$BENCH_ROOT/bench/wait_metric.py" --first "$1" "$2" "$N" 600 "$3" \
        || { cat "$BENCH_TMP/relay.log" >&2; exit 1; }
}

# run_relay <pipeline> <sink type> <from: start|first>: runs the relay until
# the pipeline published N events; prints "<ms> <peak rss kB>".
run_relay() {
    local port=$((30000 + RANDOM % 20000)) t0 first last
    t0=$(now_ms)
    "$RELAY_BIN" --postgres-url "$BENCH_DB_URL" --metrics-addr "127.0.0.1:$port" --log-level warn --allow-path "$BENCH_TMP" \
        >"$BENCH_TMP/relay.log" 2>&1 &
    RELAY_PID=$!
    read -r first last < <(metric_wait "$port" "pgtrickle_relay_messages_published_total{pipeline=\"$1\",sink=\"$2\"}" "$RELAY_PID")
    local rss; rss=$(peak_rss_kb "$RELAY_PID")
    kill -TERM "$RELAY_PID"; wait "$RELAY_PID" || true
    RELAY_PID=
    bsql "SELECT pgtrickle.delete_relay('$1')" >/dev/null
    if [ "$3" = start ]; then echo "$((last - t0)) $rss"; else echo "$((last - first)) $rss"; fi
}

# report <case> <ref ms> <relay ms> <baseline ms> <rss kB> <batch size> <pg floor ms>
report() {
    local r_ref r_base r_floor
    r_ref=$(ratio "$3" "$2"); r_base=$(ratio "$3" "$4"); r_floor=$(ratio "$7" "$2")
    printf '%-8s %7d %9d %9d %9d %9d %13s %14s %11s %7d\n' "$1" "$N" "$(eps "$2")" "$(eps "$3")" "$(eps "$4")" \
        "$(eps "$7")" "$r_ref" "$r_base" "$r_floor" "$5"
    RESULTS+=("{\"case\":\"$1\",\"events\":$N,\"batch_size\":$6,\"reference_s\":$(secs "$2"),\"reference_eps\":$(eps "$2"),\"relay_s\":$(secs "$3"),\"relay_eps\":$(eps "$3"),\"baseline_s\":$(secs "$4"),\"baseline_eps\":$(eps "$4"),\"pg_floor_s\":$(secs "$7"),\"pg_floor_eps\":$(eps "$7"),\"relay_vs_reference\":$r_ref,\"relay_vs_baseline\":$r_base,\"pg_floor_vs_reference\":$r_floor,\"relay_peak_rss_kb\":$5}")
}

# timed_ms <command...>: run it, print its wall time in ms
timed_ms() { local t0; t0=$(now_ms); "$@" >/dev/null; echo $(( $(now_ms) - t0 )); }

set_batch() {  # set_batch <relay_*_config table> <pipeline> <size or empty>
    [ -z "$3" ] || bsql "UPDATE pgtrickle.$1 SET config = jsonb_set(config, '{source,batch_size}', '$3') WHERE name = '$2'" >/dev/null
}

# --- forward: outbox -> Kafka ------------------------------------------------------------
forward() {
    bsql "SELECT pgtrickle.enable_outbox('bench')" >/dev/null
    bsql "INSERT INTO pgtrickle.outbox_bench (inserted_count, deleted_count, payload)
          SELECT 1, 0, jsonb_build_object('v', 1, 'inserted', jsonb_build_array(
                 jsonb_build_object('id', g, 'customer', 'c-' || (g % 977), 'amount', g % 1000,
                                    'note', '$PAD')), 'deleted', '[]'::jsonb)
          FROM generate_series(1, $N) g" >/dev/null
    local env; env="{\"dedup_key\":\"outbox_bench:%d:0\",\"subject\":\"$RUN.fwd\",\"op\":\"insert\",\"payload\":{\"id\":%d,\"amount\":1,\"customer\":\"c-1\",\"note\":\"$PAD\"},\"is_full_refresh\":false,\"outbox_id\":%d,\"refresh_id\":null}"
    local ref_ms
    ref_ms=$("$KCLI" produce "$B" "$RUN.ref" "$N" --key outbox_bench: --value "$env" \
             --dedup-header pgtrickle-dedup-key --header pgtrickle-full-refresh=false 2>&1 >/dev/null |
             awk '/^produced/ { printf "%d", $4 * 1000 }')

    bsql "SELECT pgtrickle.set_relay_outbox('bench-kafka', 'bench', NULL,
          '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$RUN.fwd\"}')" >/dev/null
    set_batch relay_outbox_config bench-kafka "$OB_BATCH"
    local relay_ms rss; read -r relay_ms rss < <(run_relay bench-kafka kafka start)
    local n; n=$("$KCLI" consume "$B" "$RUN.fwd" "$N" --quiet --timeout 5 2>&1 | awk '/^consumed/ { print $2 }' || true)
    [ "$n" = "$N" ] || echo "  WARNING: the topic holds $n records, expected $N"

    bsql "SELECT pgtrickle.set_relay_outbox('bench-file', 'bench', NULL,
          '{\"type\":\"file\",\"output\":\"$BENCH_TMP/fwd.jsonl\",\"fsync\":false,\"rotate_bytes\":0}')" >/dev/null
    set_batch relay_outbox_config bench-file "$OB_BATCH"
    local base_ms; read -r base_ms _ < <(run_relay bench-file file start)
    local floor_ms
    floor_ms=$(timed_ms bsql "SELECT id, inserted_count, deleted_count, is_claim_check, payload::text,
                                     refresh_id FROM pgtrickle.outbox_bench ORDER BY id")
    [ "$floor_ms" -gt 0 ] || floor_ms=1
    report forward "$ref_ms" "$relay_ms" "$base_ms" "$rss" "${OB_BATCH:-500}" "$floor_ms"
}

# --- reverse: Kafka -> inbox -------------------------------------------------------------
reverse() {
    "$KCLI" produce "$B" "$RUN.in" "$N" --value "$BODY" 2>/dev/null
    local ref_ms
    ref_ms=$("$KCLI" consume "$B" "$RUN.in" "$N" --group "$RUN-ref" --quiet 2>&1 >/dev/null |
             awk '/^consumed/ { printf "%d", $4 * 1000 }')
    [ "$ref_ms" -gt 0 ] || ref_ms=1

    local src=""; [ -z "$IN_BATCH" ] || src=",\"batch_size\":$IN_BATCH"
    bsql "SELECT pgtrickle.create_inbox('bench_inbox')" >/dev/null
    bsql "SELECT pgtrickle.set_relay_inbox('bench-in', 'bench_inbox',
          '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$RUN.in\",\"group_id\":\"$RUN-relay\"$src}')" >/dev/null
    local relay_ms rss; read -r relay_ms rss < <(run_relay bench-in pg-inbox first)
    local rows; rows=$(bsql "SELECT count(*) FROM pgtrickle.bench_inbox")
    [ "$rows" = "$N" ] || echo "  WARNING: the inbox holds $rows rows, expected $N"

    seq 1 "$N" | awk -v pad="$PAD" '{ printf "{\"dedup_key\":\"f-%d\",\"n\":%d,\"event_type\":\"order.created\",\"customer\":\"c-1\",\"note\":\"%s\"}\n", $1, $1, pad }' \
        >"$BENCH_TMP/in.jsonl"
    bsql "SELECT pgtrickle.create_inbox('bench_inbox_file')" >/dev/null
    bsql "SELECT pgtrickle.set_relay_inbox('bench-in-file', 'bench_inbox_file',
          '{\"type\":\"file\",\"input\":\"$BENCH_TMP/in.jsonl\"$src}')" >/dev/null
    local base_ms; read -r base_ms _ < <(run_relay bench-in-file pg-inbox first)
    bsql "SELECT pgtrickle.create_inbox('bench_inbox_floor')" >/dev/null
    cat >"$BENCH_TMP/floor.sql" <<SQL
CREATE TEMP TABLE src AS SELECT 'f-' || g AS id, 'order.created' AS subj,
    jsonb_build_object('n', g, 'event_type', 'order.created', 'customer', 'c-1', 'note', '$PAD') AS p
    FROM generate_series(1, $N) g;
\\timing on
INSERT INTO pgtrickle.bench_inbox_floor (event_id, event_type, payload)
    SELECT id, COALESCE(p ->> 'event_type', subj), p FROM src ON CONFLICT (event_id) DO NOTHING;
SQL
    local floor_ms
    floor_ms=$("${BPSQL[@]}" -d "$BENCH_DB" -f "$BENCH_TMP/floor.sql" | awk '/^Time:/ { printf "%d", $2 }')
    [ "${floor_ms:-0}" -gt 0 ] || floor_ms=1
    report reverse "$ref_ms" "$relay_ms" "$base_ms" "$rss" "${IN_BATCH:-1000}" "$floor_ms"
}

printf '%-8s %7s %9s %9s %9s %9s %13s %14s %11s %7s\n' case events ref_ev/s relay_ev/s base_ev/s floor_ev/s relay/ref relay/baseline floor/ref rss_kB
for c in ${BENCH_KAFKA_CASES:-forward reverse}; do "$c"; done
write_json "$BENCH_RESULTS/kafka.json" "{\"benchmark\":\"kafka\",\"machine\":\"$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"results\":[$(IFS=,; echo "${RESULTS[*]}")]}"
echo "results: $BENCH_RESULTS/kafka.json"
