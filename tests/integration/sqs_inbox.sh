#!/usr/bin/env bash
# SQS -> inbox on the shared emulator, messages sent with awscli:
#  - standard queue: event_id from the message attribute dedup_key, else the
#    MessageId; a repeated dedup_key lands once (dedup_skipped); event_type
#    from the body's field, else the attribute event_type, else the queue
#    name; trace_id from the attribute traceparent; a body that is not JSON
#    is stored as a JSON string; source "sqs:<queue>";
#  - FIFO queue: event_id = MessageDeduplicationId, aggregate_id =
#    MessageGroupId; the same MessageDeduplicationId sent again after the
#    first was consumed lands once;
#  - every message is deleted after the COMMIT: both queues end empty.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
setup_db
inbox() { sql "SELECT $2 FROM pgtrickle.$1 ${3:-}"; }
STD=$(create_queue "$QTAG-in")
FIFO=$(create_queue "$QTAG-in.fifo")
[ -n "$STD" ] && [ -n "$FIFO" ] || bail "cannot create the queues"
sql "SELECT pgtrickle.create_inbox('std_inbox')" >/dev/null
sql "SELECT pgtrickle.create_inbox('fifo_inbox')" >/dev/null
src() { echo "{\"type\":\"sqs\",\"queue_url\":\"$1\",\"endpoint_url\":\"$PGT_SQS_ENDPOINT\",\"wait_time_seconds\":1${2:+,$2}}"; }
sql "SELECT pgtrickle.set_relay_inbox('std-in', 'std_inbox', '$(src "$STD" '"concurrency":2')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('fifo-in', 'fifo_inbox', '$(src "$FIFO")')" >/dev/null

attr() { printf '{"DataType":"String","StringValue":"%s"}' "$1"; }
cat >"$TEST_TMP/std1.json" <<JSON
[{"Id":"a","MessageBody":"{\"event_type\":\"order.created\",\"id\":1}","MessageAttributes":{"dedup_key":$(attr k1),"event_type":$(attr ignored.because.body.has.one)}},
 {"Id":"b","MessageBody":"{\"id\":2}","MessageAttributes":{"dedup_key":$(attr k1)}},
 {"Id":"c","MessageBody":"{\"id\":3}","MessageAttributes":{"event_type":$(attr order.paid),"traceparent":$(attr 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)}},
 {"Id":"d","MessageBody":"plain text, not JSON"}]
JSON
awsq send-message-batch --queue-url "$STD" --entries "file://$TEST_TMP/std1.json" >"$TEST_TMP/sent1.json"
is "$(jq '.Successful | length' "$TEST_TMP/sent1.json")" 4 "awscli sent 4 messages to the standard queue"
for b in 1 2; do
    seq $((b * 10 - 9)) $((b * 10)) | jq -sc --argjson a '{}' \
        'map({Id: ("m" + tostring), MessageBody: ({n: .} | tojson), MessageAttributes: {dedup_key: {DataType: "String", StringValue: ("n" + tostring)}}})' \
        >"$TEST_TMP/bulk$b.json"
    awsq send-message-batch --queue-url "$STD" --entries "file://$TEST_TMP/bulk$b.json" >/dev/null
done
seq 1 10 | jq -sc 'map({Id: ("f" + tostring), MessageBody: ({n: .} | tojson), MessageGroupId: (if . % 2 == 0 then "g-even" else "g-odd" end), MessageDeduplicationId: ("f" + tostring)})' \
    >"$TEST_TMP/fifo.json"
awsq send-message-batch --queue-url "$FIFO" --entries "file://$TEST_TMP/fifo.json" >/dev/null

start_relay r1
wait_until 60 '[ "$(inbox std_inbox "count(*)")" = 23 ] && [ "$(inbox fifo_inbox "count(*)")" = 10 ]'
is "$(inbox std_inbox "count(*)")" 23 "standard queue: 24 messages, 23 rows (k1 twice)"
wait_until 10 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"std-in\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="std-in"}')" 1 "the repeated dedup_key counts as dedup_skipped"
is "$(inbox std_inbox "event_type || ' ' || source" "WHERE event_id = 'k1'")" "order.created sqs:$QTAG-in" \
   "attribute dedup_key -> event_id; the body's event_type wins; source sqs:<queue>"
mid_c=$(jq -r '.Successful[] | select(.Id == "c") | .MessageId' "$TEST_TMP/sent1.json")
is "$(inbox std_inbox "event_type || ' ' || trace_id || ' ' || (payload->>'id')" "WHERE event_id = '$mid_c'")" \
   "order.paid 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 3" \
   "no dedup_key: event_id = MessageId; attribute event_type; traceparent -> trace_id"
mid_d=$(jq -r '.Successful[] | select(.Id == "d") | .MessageId' "$TEST_TMP/sent1.json")
is "$(inbox std_inbox "event_type || ' ' || jsonb_typeof(payload) || ' ' || (payload #>> '{}')" "WHERE event_id = '$mid_d'")" \
   "$QTAG-in string plain text, not JSON" "a body that is not JSON is stored as a JSON string; event_type falls back to the queue name"
is "$(inbox std_inbox "count(*)" "WHERE event_id LIKE 'n%' AND payload->>'n' = substr(event_id, 2)")" 20 "the 20 bulk messages, each once"
is "$(inbox fifo_inbox "string_agg(event_id || '/' || aggregate_id, ' ' ORDER BY (payload->>'n')::int)")" \
   "f1/g-odd f2/g-even f3/g-odd f4/g-even f5/g-odd f6/g-even f7/g-odd f8/g-even f9/g-odd f10/g-even" \
   "FIFO: event_id = MessageDeduplicationId, aggregate_id = MessageGroupId"
wait_until 20 '[ "$(queue_depth "$STD")" = 0 ] && [ "$(queue_depth "$FIFO")" = 0 ]'
is "$(queue_depth "$STD"),$(queue_depth "$FIFO")" "0,0" "every message was deleted after the COMMIT: both queues are empty"

# the same MessageDeduplicationId again (the emulator forgets deleted ids; SQS
# would drop it within 5 minutes, an inbox always does)
awsq send-message --queue-url "$FIFO" --message-body '{"n":3,"again":true}' --message-group-id g-odd \
    --message-deduplication-id f3 >/dev/null
wait_until 30 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"fifo-in\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="fifo-in"}')" 1 "a repeated MessageDeduplicationId counts as dedup_skipped"
is "$(inbox fifo_inbox "count(*) || ' ' || bool_or(payload ? 'again')")" "10 false" "and lands once: the first copy stays"
wait_until 20 '[ "$(queue_depth "$FIFO")" = 0 ]'
is "$(queue_depth "$FIFO")" 0 "the repeat was deleted too"

st=$(http_get r1 /status | jq -c '.pipelines[] | select(.name == "std-in") | .source.position')
like "$st" "\"queue_url\":\"${STD//./\\.}\"" "/status: the queue"
like "$st" '"received":24,"deleted":24,"delete_failed":0' "/status: 24 messages received and deleted"
like "$st" '"approximate_depth":[0-9]+,' "/status: the queue's approximate depth"
stop_relay r1
done_testing
