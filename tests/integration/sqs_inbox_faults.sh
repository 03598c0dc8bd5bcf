#!/usr/bin/env bash
# SQS -> inbox when things fail, on a private PostgreSQL, the shared emulator
# and a fault-injecting proxy in front of it (tests/tools/sqs_fault_proxy.py):
#  1. deletes fail after the inbox COMMIT and the relay is killed (kill -9):
#     the messages stay in the queue, come back after their visibility
#     timeout (2 s), and the restarted relay skips them by event_id
#     (dedup_skipped) and deletes them: one row each, the queue empty;
#  2. PostgreSQL goes down while a batch is being written: the batch is
#     released at once
#     (ChangeMessageVisibilityBatch to 0; the queue's visibility timeout is
#     60 s, longer than this test waits), and after the restart every message
#     lands once, none lost, the queue empty;
#  3. endpoint unreachable: /health degraded naming the source; back: the
#     messages sent meanwhile are delivered.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
PROXY_PY=$(cd "$(dirname "$0")/../tools" && pwd)/sqs_fault_proxy.py
start_private_pg
setup_db
inbox() { sql "SELECT $2 FROM pgtrickle.$1 ${3:-}"; }
skipped() { metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"$1\"}"; }
CTL=$TEST_TMP/fail
PPORT=$(free_port)
PROXY=http://127.0.0.1:$PPORT
start_proxy() {
    python3 "$PROXY_PY" "$PPORT" "$PGT_SQS_ENDPOINT" "$CTL" >"$TEST_TMP/proxy.out" 2>>"$TEST_TMP/proxy.log" &
    PROXY_PID=$!
    wait_until 10 "grep -q READY '$TEST_TMP/proxy.out'" || bail "the fault proxy did not start"
}
start_proxy
Q1=$(create_queue "$QTAG-a")
Q2=$(create_queue "$QTAG-b" VisibilityTimeout=60)
[ -n "$Q1" ] && [ -n "$Q2" ] || bail "cannot create the queues"
sql "SELECT pgtrickle.create_inbox('a_inbox')" >/dev/null
sql "SELECT pgtrickle.create_inbox('b_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('a-in', 'a_inbox', '{\"type\":\"sqs\",\"queue_url\":\"$Q1\",\"endpoint_url\":\"$PROXY\",\"wait_time_seconds\":1,\"visibility_timeout\":2,\"timeout_ms\":2000}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('b-in', 'b_inbox', '{\"type\":\"sqs\",\"queue_url\":\"$Q2\",\"endpoint_url\":\"$PGT_SQS_ENDPOINT\",\"wait_time_seconds\":1}')" >/dev/null
send_batch() {  # send_batch <url> <prefix> <from> <to>: messages {"n":i}, attribute dedup_key <prefix><i>
    seq "$3" "$4" | jq -sc --arg p "$2" 'map({Id: ("m" + tostring), MessageBody: ({n: .} | tojson), MessageAttributes: {dedup_key: {DataType: "String", StringValue: ($p + tostring)}}})' \
        >"$TEST_TMP/batch.json"
    awsq send-message-batch --queue-url "$1" --entries "file://$TEST_TMP/batch.json" >/dev/null
}

# --- 1. COMMIT, then no delete, then kill -9 ---------------------------------------------
echo DeleteMessageBatch >"$CTL"
send_batch "$Q1" a 1 10
start_relay r1
wait_until 30 "[ \"\$(inbox a_inbox 'count(*)')\" = 10 ] && [ -s '$CTL.hits' ]"
is "$(inbox a_inbox "count(*)")" 10 "the 10 messages are committed to the inbox"
ok "$([ -s "$CTL.hits" ] && echo 0 || echo 1)" "their DeleteMessageBatch failed (injected)"
kill9_relay r1
rm -f "$CTL"
is "$(queue_depth "$Q1")" 10 "killed before any delete: all 10 are still in the queue"
start_relay r1
# (>= 10: on a slow machine a delete can outlast the 2 s visibility timeout,
# and a message that comes back once more is skipped once more)
wait_until 30 '[ "$(skipped a-in)" -ge 10 ] && [ "$(queue_depth "$Q1")" = 0 ]'
ok "$([ "$(skipped a-in)" -ge 10 ] && echo 0 || echo 1)" \
   "after their visibility timeout they come back and the inbox skips all 10 (dedup_skipped: $(skipped a-in))"
is "$(queue_depth "$Q1")" 0 "then they are deleted: the queue is empty"
is "$(inbox a_inbox "count(*)")" 10 "still one row each"

# --- 2. PostgreSQL down --------------------------------------------------------------------
send_batch "$Q2" b 1 5
wait_until 30 "[ \"\$(inbox b_inbox 'count(*)')\" = 5 ]"
is "$(inbox b_inbox "count(*)")" 5 "queue b works"
# Hold the inbox table locked so the relay's INSERT of the next batch waits,
# then stop PostgreSQL under it: the batch fails with the connection.
"${PSQL[@]}" -d "$TEST_DB" -c "BEGIN; LOCK TABLE pgtrickle.b_inbox; SELECT pg_sleep(600)" >/dev/null 2>&1 &
LOCKER=$!
wait_until 10 "[ \"\$(sql \"SELECT count(*) FROM pg_locks WHERE relation = 'pgtrickle.b_inbox'::regclass AND granted AND mode = 'AccessExclusiveLock'\")\" = 1 ]"
send_batch "$Q2" b 6 10
send_batch "$Q2" b 11 20
wait_until 30 "[ \"\$(sql \"SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%b_inbox%'\")\" -ge 1 ]"
is "$(sql "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO%b_inbox%'")" 1 \
   "the relay's inbox INSERT of the next batch waits on the lock"
private_pg_stop
wait "$LOCKER" 2>/dev/null
wait_until 30 '[ "$(http_get r1 /status | jq -r ".pipelines[] | select(.name == \"b-in\") | .source.position.released")" -ge 1 ]'
ok "$([ "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "b-in") | .source.position.released')" -ge 1 ] && echo 0 || echo 1)" \
   "PostgreSQL down: the received batch is released (ChangeMessageVisibilityBatch to 0)"
is "$(health_status r1)" degraded "/health is degraded"
private_pg_start
wait_until 40 "[ \"\$(inbox b_inbox 'count(*)')\" = 20 ] && [ \"\$(queue_depth '$Q2')\" = 0 ]"
is "$(inbox b_inbox "count(*)")" 20 "PostgreSQL back: all 20 messages landed (the released ones before their 60 s visibility timeout)"
is "$(inbox b_inbox "count(DISTINCT payload->>'n')")" 20 "none lost, none twice"
is "$(queue_depth "$Q2")" 0 "the queue is empty"

# --- 3. endpoint unreachable ----------------------------------------------------------------
# Both pipelines lost PostgreSQL in step 2 and reconnect on their own backoff:
# wait until the idle one is back too, or its "postgres connection lost" would
# be the reason /health reports below.
wait_until 60 '[ "$(health_status r1)" = healthy ]'
is "$(health_status r1)" healthy "both pipelines have reconnected to PostgreSQL"
kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null
wait_until 30 '[[ "$(pipeline_status r1 a-in)" == *"\"degraded_reason\":\"source unavailable\""* ]]'
is "$(health_status r1)" degraded "endpoint unreachable: /health is degraded"
like "$(pipeline_status r1 a-in)" '"degraded_reason":"source unavailable"' "/status names the source"
like "$(pipeline_status r1 a-in)" "\"last_error\":\"source: [^\"]*127.0.0.1:$PPORT" "and the endpoint"
send_batch "$Q1" c 1 7
start_proxy
wait_until 40 "[ \"\$(inbox a_inbox 'count(*)')\" = 17 ] && [ \"\$(queue_depth '$Q1')\" = 0 ]"
is "$(inbox a_inbox "count(*) FILTER (WHERE event_id LIKE 'c%')")" 7 "endpoint back: the 7 messages sent meanwhile land"
wait_until 20 '[ "$(health_status r1)" = healthy ]'
is "$(health_status r1)" healthy "/health healthy again"
stop_relay r1
kill "$PROXY_PID" 2>/dev/null; wait "$PROXY_PID" 2>/dev/null
done_testing
