#!/usr/bin/env bash
# Outbox -> SQS on the shared emulator, read back with awscli: a FIFO queue
# gets every event once, in outbox order within its MessageGroupId
# ({stream_table}), with MessageDeduplicationId = the dedup key and the
# attributes dedup_key, subject, op, full_refresh; a replay after an offset
# reset adds nothing (MessageDeduplicationId); a standard queue gets every
# event; an event SQS refuses (the queue's MaximumMessageSize) and one over
# sink.max_message_bytes are dead-lettered with the reason while the rest of
# their batch is confirmed; a FIFO queue that refuses a whole request is
# handled entry by entry.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
setup_db
FIFO=$(create_queue "$QTAG-orders.fifo")
STD=$(create_queue "$QTAG-std")
[ -n "$FIFO" ] && [ -n "$STD" ] || bail "cannot create the queues (see $TEST_TMP/aws.log)"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('items')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-fifo', 'orders', NULL, '$(sqs_sink "$FIFO" '"max_in_flight":4')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('items-fifo', 'items', NULL, '$(sqs_sink "$FIFO")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-std', 'orders', NULL, '$(sqs_sink "$STD" '"subject_template":"app.{stream_table}.{op}"')')" >/dev/null

write_rows orders 1 120
write_rows items 1 30
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":121}]', '[{\"n\":7}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"n\":1},{\"n\":2}]')" >/dev/null
TOTAL=124   # 121 inserts, 1 delete, 2 snapshot rows

start_relay r1
wait_until 60 '[ "$(published r1 orders-fifo)" = "$TOTAL" ] && [ "$(published r1 items-fifo)" = 30 ] && [ "$(published r1 orders-std)" = "$TOTAL" ]'
is "$(published r1 orders-fifo),$(published r1 items-fifo),$(published r1 orders-std)" "$TOTAL,30,$TOTAL" \
   "the relay confirmed every event of the three pipelines"

# --- replay: an offset reset re-sends everything; the FIFO queue drops it all ------
# (before the queue is read: the emulator, unlike SQS, forgets the dedup ids of
# deleted messages)
is "$(queue_depth "$FIFO")" $((TOTAL + 30)) "the FIFO queue holds $((TOTAL + 30)) messages"
stop_relay r1
sql "UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = 0 WHERE pipeline_id = 'orders-fifo'" >/dev/null
start_relay r1
wait_until 60 '[ "$(published r1 orders-fifo)" = "$TOTAL" ]'
is "$(published r1 orders-fifo)" "$TOTAL" "after an offset reset the relay re-sent all $TOTAL events"
is "$(queue_depth "$FIFO")" $((TOTAL + 30)) "the FIFO queue took none of them again (MessageDeduplicationId)"

drain_queue "$FIFO" $((TOTAL + 30)) >"$TEST_TMP/fifo.jsonl"
is "$(lines "$TEST_TMP/fifo.jsonl")" $((TOTAL + 30)) "the FIFO queue holds exactly $((TOTAL + 30)) messages"
is "$(jq -r '.MessageAttributes.dedup_key.StringValue' "$TEST_TMP/fifo.jsonl" | sort -u | wc -l | tr -d ' ')" $((TOTAL + 30)) \
   "every dedup key appears once: no duplicate, none lost"
is "$(jq -r 'select(.Attributes.MessageDeduplicationId != .MessageAttributes.dedup_key.StringValue) | .MessageId' "$TEST_TMP/fifo.jsonl" | wc -l | tr -d ' ')" 0 \
   "MessageDeduplicationId = attribute dedup_key = the dedup key"
is "$(jq -r '.Attributes.MessageGroupId' "$TEST_TMP/fifo.jsonl" | sort | uniq -c | tr -s ' ' | tr '\n' ';')" \
   " 30 items; $TOTAL orders;" "MessageGroupId is the stream table (default {stream_table})"
is "$(jq -r 'select(.Attributes.MessageGroupId == "orders") | .Body | fromjson | .outbox_id' "$TEST_TMP/fifo.jsonl" \
      | awk 'NR > 1 && $1 < last { bad++ } { last = $1 } END { print bad + 0 }')" 0 \
   "within the group the messages arrive in outbox order (4 requests in flight)"
is "$(jq -c 'select(.MessageAttributes.dedup_key.StringValue == "outbox_orders:5:0") | [(.Body | fromjson | .dedup_key, .subject, .op, .payload.n), .MessageAttributes.subject.StringValue, .MessageAttributes.op.StringValue, .MessageAttributes.full_refresh]' "$TEST_TMP/fifo.jsonl")" \
   '["outbox_orders:5:0","pgtrickle.orders.insert","insert",5,"pgtrickle.orders.insert","insert",null]' \
   "the body is the native envelope; attributes subject and op; no full_refresh on a normal event"
is "$(jq -r 'select(.MessageAttributes.op.StringValue == "snapshot") | .MessageAttributes.full_refresh.StringValue' "$TEST_TMP/fifo.jsonl" | sort | uniq -c | tr -s ' ')" \
   " 2 true" "full-refresh rows carry the attribute full_refresh = true"
is "$(jq -r 'select(.MessageAttributes.op.StringValue == "delete") | [.MessageAttributes.dedup_key.StringValue, (.Body | fromjson | .payload.n)] | @tsv' "$TEST_TMP/fifo.jsonl")" \
   "outbox_orders:121:1	7" "the deleted row is an event with op delete"


drain_queue "$STD" "$TOTAL" >"$TEST_TMP/std.jsonl"
is "$(jq -r '.MessageAttributes.dedup_key.StringValue' "$TEST_TMP/std.jsonl" | sort -u | wc -l | tr -d ' ')" "$TOTAL" \
   "the standard queue received every event"
is "$(jq -r 'select(.Attributes.MessageGroupId != null) | .MessageId' "$TEST_TMP/std.jsonl" | wc -l | tr -d ' ')" 0 \
   "standard queue: no MessageGroupId"
is "$(jq -r 'select(.MessageAttributes.dedup_key.StringValue == "outbox_orders:9:0") | .MessageAttributes.subject.StringValue' "$TEST_TMP/std.jsonl")" \
   "app.orders.insert" "sink.subject_template sets the subject attribute"

# --- refused entries: dead-lettered, the rest of the batch confirmed --------------
SMALL=$(create_queue "$QTAG-small" MaximumMessageSize=1024)
SMALLF=$(create_queue "$QTAG-small.fifo" MaximumMessageSize=1024)
sql "SELECT pgtrickle.enable_outbox('big')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('big-std', 'big', NULL, '$(sqs_sink "$SMALL" '"max_message_bytes":4096')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('big-fifo', 'big', NULL, '$(sqs_sink "$SMALLF" '"max_message_bytes":4096')')" >/dev/null
mid=$(head -c 2000 /dev/zero | tr '\0' m)
huge=$(head -c 5000 /dev/zero | tr '\0' h)
sql "SELECT pgtrickle.outbox_write('big', '[{\"n\":1},{\"n\":2},{\"mid\":\"$mid\"},{\"n\":4},{\"huge\":\"$huge\"},{\"n\":6}]')" >/dev/null
wait_until 60 '[ "$(dead r1 big-std)" = 2 ] && [ "$(published r1 big-std)" = 4 ] && [ "$(dead r1 big-fifo)" = 2 ] && [ "$(published r1 big-fifo)" = 4 ]'
is "$(published r1 big-std)/$(dead r1 big-std)" "4/2" "standard queue: 4 events confirmed, 2 dead-lettered"
is "$(published r1 big-fifo)/$(dead r1 big-fifo)" "4/2" "FIFO queue (refuses the whole request): 4 confirmed, 2 dead-lettered"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'big-std' AND dedup_key = 'outbox_big:1:2'")" \
     "^SQS refused the message: InvalidParameterValue: .*1024 bytes" "the entry SQS refused is dead-lettered with the SQS code and message"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'big-fifo' AND dedup_key = 'outbox_big:1:4'")" \
     "more than SQS takes in one message \(4096 bytes, sink.max_message_bytes\)" "an event over max_message_bytes is dead-lettered with a clear reason"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = 'big-std' AND payload::text LIKE '%$mid%'")" 1 \
   "the dead letter keeps the event"
drain_queue "$SMALLF" 4 >"$TEST_TMP/smallf.jsonl"
is "$(jq -r '.Body | fromjson | .payload.n' "$TEST_TMP/smallf.jsonl" | tr '\n' ' ')" "1 2 4 6 " \
   "the FIFO queue got the other four, in order"
is "$(queue_depth "$SMALL")" 4 "the standard queue holds the other four"

# --- the request JSON: what a body needs escaped arrives byte for byte -------------
# (quotes, backslashes, control characters, U+2028, a character outside the
# BMP; read back by awscli, the body's envelope parsed by jq)
TXT=$(create_queue "$QTAG-text")
sql "SELECT pgtrickle.enable_outbox('txt')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('txt-std', 'txt', NULL, '$(sqs_sink "$TXT")')" >/dev/null
P='[{"s":"é \"q\" \\ a\tb\nc\r \u2028 😀 </ \u0001 end"}]'
sql "SELECT pgtrickle.outbox_write('txt', \$j\$$P\$j\$)" >/dev/null
wait_until 30 '[ "$(published r1 txt-std)" = 1 ]'
drain_queue "$TXT" 1 >"$TEST_TMP/txt.jsonl"
is "$(jq -cS '.Body | fromjson | .payload' "$TEST_TMP/txt.jsonl")" "$(jq -cS '.[0]' <<<"$P")" \
   "a payload with quotes, backslashes, control characters and non-BMP text arrives unchanged"

stop_relay r1
done_testing
