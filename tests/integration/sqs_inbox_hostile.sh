#!/usr/bin/env bash
# Hostile SQS messages (sent raw with curl's SigV4 to the emulator, which
# takes what real SQS would refuse) cannot wedge the SQS source: each ends in
# the inbox or in pgtrickle.relay_dlq with its bytes, the valid messages
# behind them land, and the queue ends empty:
#  - a dedup_key attribute of 10 000 characters (longer than an event_id may
#    be) and one holding a \u0000: dead-lettered, keys byte for byte;
#  - a body holding a \u0000: dead-lettered, body byte for byte;
#  - a body with a lone UTF-16 surrogate (\ud800, which jansson refuses):
#    the response still parses, the body lands with U+FFFD in its place;
#  - JSON nested deeper than jsonb accepts: dead-lettered with the reason;
#  - an event_type attribute holding a \u0000: dead-lettered;
#  - a Binary event_type attribute: ignored (the queue name is the type).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
setup_db
dlq() { sql "SELECT $1 FROM pgtrickle.relay_dlq WHERE pipeline = 'sqs-in' ${2:-}"; }
Q=$(create_queue "$QTAG-h")
[ -n "$Q" ] || bail "cannot create the queue"
raw_send() {  # raw_send <json body of SendMessage without QueueUrl>
    curl -sf -o /dev/null --aws-sigv4 "aws:amz:us-east-1:sqs" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
        -H "Content-Type: application/x-amz-json-1.0" -H "X-Amz-Target: AmazonSQS.SendMessage" \
        --data-binary @- "$PGT_SQS_ENDPOINT/" <<<"{\"QueueUrl\":\"$Q\",$1}"
}
key() { printf '"MessageAttributes":{"dedup_key":{"DataType":"String","StringValue":"%s"}}' "$1"; }
LONG=$(head -c 10000 /dev/zero | tr '\0' L)
DEEP=$(python3 -c 'print("[" * 100000 + "]" * 100000)' | jq -Rs .)
raw_send "\"MessageBody\":\"{}\",$(key "$LONG")" || bail "send failed"
raw_send "\"MessageBody\":\"{}\",$(key 'k\u0000y')"
raw_send "\"MessageBody\":\"a\\u0000b\",$(key nul-body)"
raw_send "\"MessageBody\":\"x\\ud800y\",$(key surrogate)"
raw_send "\"MessageBody\":$DEEP,$(key deep)"
raw_send "\"MessageBody\":\"{}\",\"MessageAttributes\":{\"dedup_key\":{\"DataType\":\"String\",\"StringValue\":\"nul-type\"},\"event_type\":{\"DataType\":\"String\",\"StringValue\":\"t\\u0000\"}}"
raw_send "\"MessageBody\":\"{}\",\"MessageAttributes\":{\"dedup_key\":{\"DataType\":\"String\",\"StringValue\":\"binary-type\"},\"event_type\":{\"DataType\":\"Binary\",\"BinaryValue\":\"AAEC\"}}"
for i in $(seq 1 10); do raw_send "\"MessageBody\":\"{\\\"p\\\":$i}\",$(key "ok-$i")"; done
sql "SELECT pgtrickle.create_inbox('hin')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('sqs-in', 'hin', '{\"type\":\"sqs\",\"queue_url\":\"$Q\",\"endpoint_url\":\"$PGT_SQS_ENDPOINT\",\"wait_time_seconds\":1,\"visibility_timeout\":5}')" >/dev/null
start_relay r1
wait_until 60 '[ "$(sql "SELECT count(*) FROM pgtrickle.hin")" = 12 ] && [ "$(dlq "count(*)")" = 5 ] && [ "$(queue_depth "$Q")" = 0 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.hin")" 12 "the 10 valid messages, the surrogate one and the Binary-typed one are in the inbox"
is "$(dlq "count(*)")" 5 "5 dead letters"
is "$(queue_depth "$Q")" 0 "every message was deleted: the queue is empty, nothing wedged"
is "$(dlq "octet_length(dedup_key_raw) || ' ' || (convert_from(dedup_key_raw, 'UTF8') = '$LONG')" "AND error LIKE '%10000 bytes%'")" "10000 true" \
   "the 10 000-character dedup_key, whole"
is "$(dlq "encode(dedup_key_raw, 'hex')" "AND dedup_key_raw = '\\x6b0079'")" "6b0079" "the dedup_key with a NUL byte, byte for byte"
is "$(dlq "encode(payload_raw, 'hex')" "AND dedup_key = 'nul-body'")" "610062" "the body with a NUL byte, byte for byte"
like "$(dlq "error" "AND dedup_key = 'deep'")" "stack depth" "JSON deeper than jsonb accepts: dead-lettered with the server's reason"
is "$(dlq "count(*)" "AND dedup_key = 'nul-type'")" 1 "an event_type holding a NUL byte: dead-lettered"
is "$(sql "SELECT payload #>> '{}' FROM pgtrickle.hin WHERE event_id = 'surrogate'")" "x�y" "a lone surrogate lands as U+FFFD"
is "$(sql "SELECT event_type FROM pgtrickle.hin WHERE event_id = 'binary-type'")" "$QTAG-h" "a Binary event_type attribute is ignored"
is "$(sql "SELECT string_agg(event_id, ' ' ORDER BY (payload->>'p')::int) FROM pgtrickle.hin WHERE event_id LIKE 'ok-%'")" \
   "ok-1 ok-2 ok-3 ok-4 ok-5 ok-6 ok-7 ok-8 ok-9 ok-10" "the valid messages behind them all landed"
stop_relay r1
done_testing
