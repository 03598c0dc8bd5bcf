#!/usr/bin/env bash
# bench/bench_sqs.sh - Amazon SQS throughput, both directions, against the
# npm emulator local-aws-sqs (tests/services: one node process on
# 127.0.0.1), 100 000 events each way, standard queues. Numbers measured in
# the same run:
#
#   reference  a plain libcurl client (tests/tools/sqs_send.c), run before
#              and after the relay (the mean counts): forward, 100 000
#              messages with the relay's body size and attributes in
#              SendMessageBatch requests of 10, 16 in flight (the sink's
#              max_in_flight) on one curl multi handle, from memory; reverse,
#              ReceiveMessage of 10 with 4 in flight (the source's
#              concurrency) and a DeleteMessageBatch of what came.
#   relay      forward: 100 000 outbox events (one outbox row each) -> sqs
#              sink, until published_total = 100 000 (timed from process
#              start); reverse: the 100 000 messages -> sqs source -> inbox,
#              deleted after each COMMIT, timed from the first message.
#   baseline   forward only: the same outbox -> file sink (no fsync), so
#              relay/baseline shows what SQS costs the relay besides
#              reading PostgreSQL.
# The emulator is the bound for both the relay and the reference, so
# relay/reference measures the relay's own overhead (target >= 0.8). FIFO
# queues are not measured: one message group (one table) is sent one request
# at a time to keep SQS's order, whatever the client.
#
# Prints a table, writes bench/results/sqs.json. Run: bench/run.sh sqs
# (BENCH_SQS_N=events; BENCH_SQS_OUTBOX_BATCH sets the outbox source's
# batch_size, default its own 500).
. "$(dirname "$0")/lib.sh"
bench_services pg sqs
bench_db bench_sqs
SQS_SEND=${SQS_SEND:-$(dirname "$RELAY_BIN")/tests/sqs_send}
[ -x "$SQS_SEND" ] || { echo "bench_sqs: $SQS_SEND not built (ninja -C <build>)" >&2; exit 2; }
export AWS_ACCESS_KEY_ID=AKIDBENCH AWS_SECRET_ACCESS_KEY=bench AWS_REGION=us-east-1
N=${BENCH_SQS_N:-100000}
OB_BATCH=${BENCH_SQS_OUTBOX_BATCH:-}
EP=$PGT_SQS_ENDPOINT
RUN=bs$$_$RANDOM
RESULTS=()
RELAY_PID=
# (under set -e a failing command would end the trap early: kill only a relay)
trap '[ -z "$RELAY_PID" ] || kill -TERM $RELAY_PID 2>/dev/null || true; rm -rf "$BENCH_TMP"' EXIT
PAD=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx

sqs_call() {  # sqs_call <action> <json>
    curl -sf --aws-sigv4 "aws:amz:us-east-1:sqs" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "Content-Type: application/x-amz-json-1.0" -H "X-Amz-Target: AmazonSQS.$1" -d "$2" "$EP/"
}
create_queue() { sqs_call CreateQueue "{\"QueueName\":\"$1\"}" | jq -r .QueueUrl; }
delete_queue() { sqs_call DeleteQueue "{\"QueueUrl\":\"$1\"}" >/dev/null || true; }
depth() { sqs_call GetQueueAttributes "{\"QueueUrl\":\"$1\",\"AttributeNames\":[\"ApproximateNumberOfMessages\"]}" | jq -r .Attributes.ApproximateNumberOfMessages; }
secs() { awk -v m="$1" 'BEGIN { printf "%.2f", m / 1000 }'; }
eps() { echo $((N * 1000 / $1)); }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b / a }'; }   # ratio <ms a> <ms b>: speed a / speed b
send_ms() { "$SQS_SEND" "$@" 2>&1 >/dev/null | awk '/^(sent|drained)/ { printf "%d", $5 * 1000 }'; }

# The reference runs before and after the relay (each on a fresh queue) and
# counts with their mean: the machine's load drifts during a run.
ref_send() {  # ref_send <queue name> <body format>: ms to send N
    local q ms; q=$(create_queue "$1")
    ms=$(send_ms send "$EP" "$q" "$N" 16 "$2")
    delete_queue "$q"; echo "$ms"
}
ref_drain() {  # ref_drain <queue name> <body format>: ms to receive and delete N
    local q ms; q=$(create_queue "$1")
    "$SQS_SEND" send "$EP" "$q" "$N" 16 "$2" 2>/dev/null
    ms=$(send_ms drain "$EP" "$q" "$N" 4)
    delete_queue "$q"; echo "$ms"
}

metric_wait() {  # metric_wait <port> <metric> <pid>: "<ms first > 0> <ms at N>"
    python3 "$BENCH_ROOT/bench/wait_metric.py" --first "$1" "$2" "$N" 600 "$3" \
        || { cat "$BENCH_TMP/relay.log" >&2; exit 1; }
}

run_relay() {  # run_relay <pipeline> <sink type> <from: start|first>: "<ms> <peak rss kB>"
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

report() {  # report <case> <ref ms> <relay ms> <baseline ms or 0> <rss kB>
    local r_ref r_base="-" base_eps="-"
    r_ref=$(ratio "$3" "$2")
    if [ "$4" -gt 0 ]; then r_base=$(ratio "$3" "$4"); base_eps=$(eps "$4"); fi
    printf '%-8s %7d %9d %10d %9s %9s %14s %7d\n' "$1" "$N" "$(eps "$2")" "$(eps "$3")" "$base_eps" "$r_ref" "$r_base" "$5"
    RESULTS+=("{\"case\":\"$1\",\"events\":$N,\"reference_s\":$(secs "$2"),\"reference_eps\":$(eps "$2"),\"relay_s\":$(secs "$3"),\"relay_eps\":$(eps "$3"),\"baseline_eps\":$( [ "$4" -gt 0 ] && eps "$4" || echo null),\"relay_vs_reference\":$r_ref,\"relay_vs_baseline\":$( [ "$4" -gt 0 ] && echo "$r_base" || echo null),\"relay_peak_rss_kb\":$5}")
}

# --- forward: outbox -> SQS ----------------------------------------------------------------
forward() {
    bsql "SELECT pgtrickle.enable_outbox('bench')" >/dev/null
    bsql "INSERT INTO pgtrickle.outbox_bench (inserted_count, deleted_count, payload)
          SELECT 1, 0, jsonb_build_object('v', 1, 'inserted', jsonb_build_array(
                 jsonb_build_object('id', g, 'customer', 'c-' || (g % 977), 'amount', g % 1000,
                                    'note', '$PAD')), 'deleted', '[]'::jsonb)
          FROM generate_series(1, $N) g" >/dev/null
    local env="{\"dedup_key\":\"outbox_bench:%ld:0\",\"subject\":\"pgtrickle.bench.insert\",\"op\":\"insert\",\"payload\":{\"id\":%ld,\"amount\":1,\"customer\":\"c-1\",\"note\":\"$PAD\"},\"is_full_refresh\":false,\"outbox_id\":%ld,\"refresh_id\":null}"
    local qrel ref1 ref2
    ref1=$(ref_send "$RUN-ref1" "$env")
    qrel=$(create_queue "$RUN-fwd")
    bsql "SELECT pgtrickle.set_relay_outbox('bench-sqs', 'bench', NULL,
          '{\"type\":\"sqs\",\"queue_url\":\"$qrel\",\"endpoint_url\":\"$EP\",\"max_in_flight\":16}')" >/dev/null
    [ -z "$OB_BATCH" ] || bsql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '$OB_BATCH') WHERE name = 'bench-sqs'" >/dev/null
    local relay_ms rss; read -r relay_ms rss < <(run_relay bench-sqs sqs start)
    local n; n=$(depth "$qrel")
    [ "$n" = "$N" ] || echo "  WARNING: the queue holds $n messages, expected $N"
    delete_queue "$qrel"
    ref2=$(ref_send "$RUN-ref2" "$env")
    bsql "SELECT pgtrickle.set_relay_outbox('bench-file', 'bench', NULL,
          '{\"type\":\"file\",\"output\":\"$BENCH_TMP/fwd.jsonl\",\"fsync\":false,\"rotate_bytes\":0}')" >/dev/null
    local base_ms; read -r base_ms _ < <(run_relay bench-file file start)
    report forward "$(( (ref1 + ref2) / 2 ))" "$relay_ms" "$base_ms" "$rss"
}

# --- reverse: SQS -> inbox --------------------------------------------------------------------
reverse() {
    local body="{\"dedup_key\":\"outbox_bench:%ld:0\",\"n\":%ld,\"m\":%ld,\"event_type\":\"order.created\",\"customer\":\"c-1\",\"note\":\"$PAD\"}"
    local qin ref1 ref2
    ref1=$(ref_drain "$RUN-rref1" "$body")
    qin=$(create_queue "$RUN-in")
    "$SQS_SEND" send "$EP" "$qin" "$N" 16 "$body" 2>/dev/null
    bsql "SELECT pgtrickle.create_inbox('bench_inbox')" >/dev/null
    bsql "SELECT pgtrickle.set_relay_inbox('bench-in', 'bench_inbox',
          '{\"type\":\"sqs\",\"queue_url\":\"$qin\",\"endpoint_url\":\"$EP\",\"wait_time_seconds\":1}')" >/dev/null
    local relay_ms rss; read -r relay_ms rss < <(run_relay bench-in pg-inbox first)
    local rows; rows=$(bsql "SELECT count(*) FROM pgtrickle.bench_inbox")
    [ "$rows" = "$N" ] || echo "  WARNING: the inbox holds $rows rows, expected $N"
    delete_queue "$qin"
    ref2=$(ref_drain "$RUN-rref2" "$body")
    report reverse "$(( (ref1 + ref2) / 2 ))" "$relay_ms" 0 "$rss"
}

printf '%-8s %7s %9s %10s %9s %9s %14s %7s\n' case events ref_ev/s relay_ev/s base_ev/s relay/ref relay/baseline rss_kB
for c in ${BENCH_SQS_CASES:-forward reverse}; do "$c"; done
write_json "$BENCH_RESULTS/sqs.json" "{\"benchmark\":\"sqs\",\"machine\":\"$(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')\",\"results\":[$(IFS=,; echo "${RESULTS[*]}")]}"
echo "results: $BENCH_RESULTS/sqs.json"
