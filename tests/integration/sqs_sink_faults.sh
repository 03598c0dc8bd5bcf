#!/usr/bin/env bash
# Outbox -> SQS when the endpoint fails, against a private emulator (its own
# local-aws-sqs process, which this test stops and starts):
#  1. endpoint down mid-stream: /health degraded, nothing acknowledged (the
#     outbox offset stays), publish errors counted;
#  2. endpoint back but the queue missing (the emulator keeps queues in
#     memory): one clear error naming sink.queue_url and QueueDoesNotExist,
#     still degraded, nothing acknowledged;
#  3. the queue created: every event that waited is delivered once, the
#     offset reaches the last row, /health healthy again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
setup_db
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
PORT=$(free_port)
SQS_EP=http://127.0.0.1:$PORT
start_private_sqs p "$PORT"
Q=$(create_queue "$QTAG.fifo")
[ -n "$Q" ] || bail "cannot create the queue on the private emulator"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-sqs', 'orders', NULL, '$(sqs_sink "$Q" '"timeout_ms":2000')')" >/dev/null
write_rows orders 1 40
start_relay r1 --shutdown-timeout 3s
wait_until 30 '[ "$(offset orders-sqs)" = 40 ]'
is "$(offset orders-sqs)" 40 "endpoint up: the first 40 rows are acknowledged"
is "$(queue_depth "$Q" "$SQS_EP")" 40 "and the queue holds them"

# --- 1. endpoint down ---------------------------------------------------------------
stop_private_sqs p
write_rows orders 41 100
wait_until 30 '[ "$(health_status r1)" = degraded ]'
is "$(health_status r1)" degraded "endpoint down: /health is degraded"
is "$(http_code r1 /health)" 503 "/health answers 503"
st=$(pipeline_status r1 orders-sqs)
like "$st" '"degraded_reason":"sink unavailable"' "/status names the sink as the reason"
like "$st" "\"last_error\":\"sink: [^\"]*127.0.0.1:$PORT" "/status shows the endpoint that failed"
ok "$([ "$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="orders-sqs",kind="sink"}')" -ge 1 ] && echo 0 || echo 1)" \
   "publish errors are counted"
sleep 2
is "$(offset orders-sqs)" 40 "nothing acknowledged while the endpoint is down"

# --- 2. back, but the queue is missing ------------------------------------------------
start_private_sqs p "$PORT"
wait_until 30 "pipeline_status r1 orders-sqs | grep -q QueueDoesNotExist"
like "$(pipeline_status r1 orders-sqs)" "\"last_error\":\"sink: sink.queue_url: ${Q//./\\.}: [^\"]*QueueDoesNotExist" \
     "a missing queue is one clear error naming sink.queue_url"
is "$(health_status r1)" degraded "still degraded"
is "$(offset orders-sqs)" 40 "still nothing acknowledged"

# --- 3. the queue exists again: everything is delivered ----------------------------------
Q2=$(create_queue "$QTAG.fifo")
is "$Q2" "$Q" "queue re-created under the same URL"
wait_until 60 '[ "$(offset orders-sqs)" = 100 ]'
is "$(offset orders-sqs)" 100 "the offset reaches the last row"
drain_queue "$Q" 60 "$SQS_EP" >"$TEST_TMP/after.jsonl"
is "$(jq -r '.MessageAttributes.dedup_key.StringValue' "$TEST_TMP/after.jsonl" | sort -u | wc -l | tr -d ' ')" 60 \
   "the 60 events that waited arrive, each once"
is "$(jq -r '.Body | fromjson | .payload.n' "$TEST_TMP/after.jsonl" | tr '\n' ' ' | awk '{print $1, $NF}')" "41 100" \
   "in outbox order"
wait_until 20 '[ "$(health_status r1)" = healthy ]'
is "$(health_status r1)" healthy "/health healthy again"
stop_relay r1
done_testing
