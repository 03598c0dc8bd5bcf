#!/usr/bin/env bash
# Hostile AMQP messages -> inbox (shared node, published byte for byte with
# python3-pika): a message_id, a pgtrickle-dedup-key header (byte array), a
# type property, a traceparent header or a body that is not valid UTF-8, and
# a 10 KB dedup header, are dead-lettered with their original bytes and
# acked; an integer dedup header is read as its decimal text and a
# binary routing key is kept as the aggregate id's bytea hex form; the valid messages around them
# land; nothing crashes, wedges or is silently dropped, and the queue ends
# empty. The dead letters replay (relay_dlq_replay) to the same outcome.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
dlq() { sql "SELECT $1 FROM pgtrickle.relay_dlq WHERE pipeline = 'rin' ${2:-}"; }
X=x_$RTAG
Q=q_$RTAG
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "#"
sql "SELECT pgtrickle.create_inbox('rin')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('rin', 'rin', '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"$Q\"}')" >/dev/null
RK=$(hex ok.rk)
BODY=$(hex '{"p":1}')
BADID=ff6964fe          # message_id: \xff i d \xfe
BADHDR=6869ff00         # header bytes with \xff and a NUL
BIGKEY=$(head -c 10240 /dev/zero | tr '\0' k)
pub() { rmq publish-one "$X" "$@" || fail "publishing a hostile message: $(tail -1 "$TEST_TMP/rmqcli.log")"; }
pub "$RK" --message-id-hex "$BADID" --body-hex "$BODY"
pub "$RK" --header-hex "pgtrickle-dedup-key=$BADHDR" --body-hex "$BODY"
pub "$RK" --header "pgtrickle-dedup-key=$BIGKEY" --body-hex "$BODY"
pub "$RK" --message-id-hex "$(hex tp-1)" --header-hex "traceparent=$BADHDR" --body-hex "$BODY"
pub "$RK" --message-id-hex "$(hex ty-1)" --type-hex "74ff79" --body-hex "$BODY"
pub "$RK" --message-id-hex "$(hex body-1)" --body-hex "7b22ff"
pub "$RK" --message-id-hex "$(hex nul-1)" --body-hex "$(hex '{"a":"\u0000"}')"
# odd but harmless: an integer dedup header; a binary routing key (with a
# type property, so it is only the aggregate id)
pub "$RK" --header-int "pgtrickle-dedup-key=12345" --body-hex "$BODY"
pub "$(hex bin.)ff" --message-id-hex "$(hex binrk-1)" --type-hex "$(hex bin)" --body-hex "$BODY"
rmq publish "$X" ok.after 20 --id-prefix ok
POISON=7

start_relay r1
wait_until 30 '[ "$(sql "SELECT count(*) FROM pgtrickle.rin")" = 22 ] && [ "$(dlq "count(*)")" = $POISON ]'
is "$(sql "SELECT count(*) FROM pgtrickle.rin WHERE event_id LIKE 'ok-%'")" 20 "the 20 valid messages after the poison land"
is "$(dlq "count(*)")" "$POISON" "the $POISON undecodable messages are in relay_dlq"
is "$(dlq "encode(payload_raw, 'hex')" "AND dedup_key_raw = '\\x$BADID'")" "$BODY" \
   "a message_id that is not UTF-8: kept byte for byte, with its body"
like "$(dlq error "AND dedup_key_raw = '\\x$BADID'")" "dedup key is not valid UTF-8" "... and the reason"
is "$(dlq "count(*)" "AND dedup_key_raw = '\\x$BADHDR'")" 1 "a pgtrickle-dedup-key byte array with \\xff and NUL: kept exactly"
like "$(dlq error "AND length(dedup_key_raw) = 10240")" "dedup key is 10240 bytes long" "a 10 KB dedup header: dead-lettered, says why"
like "$(dlq error "AND dedup_key = 'tp-1'")" "trace id is not valid UTF-8" "a traceparent that is not UTF-8"
like "$(dlq error "AND dedup_key = 'ty-1'")" "subject .* not valid UTF-8" "a type property that is not UTF-8"
is "$(dlq "encode(subject_raw, 'hex')" "AND dedup_key = 'ty-1'")" "74ff79" "... its exact bytes are kept"
is "$(dlq "encode(payload_raw, 'hex')" "AND dedup_key = 'body-1'")" "7b22ff" "a body that is neither JSON nor UTF-8: kept exactly"
like "$(dlq error "AND dedup_key = 'nul-1'")" "jsonb cannot store" "a JSON body with \\u0000: dead-lettered"
is "$(sql "SELECT count(*) FROM pgtrickle.rin WHERE event_id = '12345'")" 1 "an integer pgtrickle-dedup-key header is read as its decimal text"
is "$(sql "SELECT aggregate_id FROM pgtrickle.rin WHERE event_id = 'binrk-1'")" "\\x62696e2eff" \
   "a routing key that is not UTF-8: aggregate_id in bytea hex form"
wait_until 10 '[ "$(queue_field "$Q" messages)" = 0 ]'
is "$(queue_field "$Q" messages)" 0 "every message, poison included, is acked: the queue is empty"
is "$(http_get r1 /health | jq -r .status)" healthy "the pipeline stays healthy"

# replay: dead-lettered again, identically
is "$(sql "SELECT pgtrickle.relay_dlq_replay('rin')")" "$POISON" "relay_dlq_replay requests the dead letters"
wait_until 20 '[ "$(dlq "count(*)")" = $((POISON * 2)) ]'
is "$(dlq "count(DISTINCT encode(dedup_key_raw, 'hex') || coalesce(encode(subject_raw, 'hex'), '') || encode(payload_raw, 'hex'))")" "$POISON" \
   "replayed, they are dead-lettered again with the same bytes"
stop_relay r1
is "$?" 0 "clean exit"
rmq delete-queue "$Q"; rmq delete-exchange "$X"
done_testing
