#!/usr/bin/env bash
# Kafka -> inbox against the shared mock cluster: 10 000 records over 4
# partitions land in the inbox once each, with event_id from the
# pgtrickle-dedup-key / Idempotency-Key header or kafka:{topic}:{partition}:{offset},
# the record key in aggregate_id, source kafka:{topic}, event_type from the
# payload or the topic, traceparent in trace_id, non-JSON bodies kept as JSON
# strings; the group's committed offsets reach the end of every partition,
# and /status shows them.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG.orders
G=$KTAG-group
is "$(kcli create "$B" "$T")" 4 "the topic has 4 partitions"
kcli produce "$B" "$T" 10000 --value '{"n":%d}' 2>>"$TEST_TMP/kcli.log"
kcli produce "$B" "$T" 10 --from 10001 --dedup-header pgtrickle-dedup-key \
     --value '{"n":%d,"event_type":"order.created"}' 2>>"$TEST_TMP/kcli.log"
kcli produce "$B" "$T" 10 --from 10011 --dedup-header Idempotency-Key 2>>"$TEST_TMP/kcli.log"
kcli produce "$B" "$T" 5 --from 10021 --value 'plain text %d' --no-key 2>>"$TEST_TMP/kcli.log"
kcli produce "$B" "$T" 1 --from 10026 --header traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01 \
     2>>"$TEST_TMP/kcli.log"
TOTAL=10026

sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
# session.timeout.ms: the mock cluster's group coordinator waits for a departed
# member's session to expire before it completes the next join (a real broker
# handles LeaveGroup at once); 6 s, the broker minimum, keeps the restart short.
sql "SELECT pgtrickle.set_relay_inbox('orders-in', 'orders_inbox',
     '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T\",\"group_id\":\"$G\",
       \"rdkafka\":{\"session.timeout.ms\":6000}}')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox"; }
start_relay r1
wait_until 60 '[ "$(rows)" -ge $TOTAL ]'
is "$(rows)" "$TOTAL" "all $TOTAL records are in the inbox"
is "$(sql "SELECT count(DISTINCT payload) FROM pgtrickle.orders_inbox")" "$TOTAL" "each record once (distinct payloads)"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id ~ '^kafka:$T:[0-3]:[0-9]+\$'")" 10006 \
   "records without a dedup header: event_id kafka:{topic}:{partition}:{offset}"
is "$(sql "SELECT string_agg(event_id, ',' ORDER BY (payload->>'n')::int) FROM pgtrickle.orders_inbox WHERE (payload->>'n')::int BETWEEN 10001 AND 10003")" \
   "d-10001,d-10002,d-10003" "header pgtrickle-dedup-key is the event_id"
is "$(sql "SELECT string_agg(event_id, ',' ORDER BY (payload->>'n')::int) FROM pgtrickle.orders_inbox WHERE (payload->>'n')::int BETWEEN 10011 AND 10012")" \
   "d-10011,d-10012" "header Idempotency-Key (any case) is the event_id"
is "$(sql "SELECT aggregate_id FROM pgtrickle.orders_inbox WHERE payload->>'n' = '42'")" "k42" "the record key goes to aggregate_id"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE source = 'kafka:$T'")" "$TOTAL" "source = kafka:{topic}"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_type = 'order.created'")" 10 "event_type from the payload field"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_type = '$T'")" $((TOTAL - 10)) "otherwise event_type is the topic"
is "$(sql "SELECT string_agg(payload #>> '{}', ',' ORDER BY payload #>> '{}') FROM pgtrickle.orders_inbox WHERE jsonb_typeof(payload) = 'string'")" \
   "plain text 10021,plain text 10022,plain text 10023,plain text 10024,plain text 10025" "non-JSON bodies are stored as JSON strings"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE jsonb_typeof(payload) = 'string' AND aggregate_id IS NULL")" 5 \
   "records without a key: aggregate_id NULL"
is "$(sql "SELECT trace_id FROM pgtrickle.orders_inbox WHERE trace_id IS NOT NULL")" \
   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" "traceparent header -> trace_id"

# Offsets: the committed offset of every partition is its end.
wait_until 10 '[ "$(kcli committed "$B" "$G" "$T" | awk "{print \$2}" | paste -sd+ | bc)" = "$TOTAL" ]'
kcli watermarks "$B" "$T" | awk '{print $1, $3}' >"$TEST_TMP/high"
kcli committed "$B" "$G" "$T" >"$TEST_TMP/committed"
is "$(cat "$TEST_TMP/committed")" "$(cat "$TEST_TMP/high")" "committed offset = high watermark on each of the 4 partitions"
st=$(pipeline_status r1 orders-in)
is "$(echo "$st" | jq -c '[.source.position.partitions[] | [.partition, .committed, .inbox, .lag]] | sort')" \
   "$(awk '{printf "%s[%s,%s,%s,0]", (NR>1?",":""), $1, $2, $2}' "$TEST_TMP/high" | sed 's/^/[/; s/$/]/')" \
   "/status: per partition the committed offset, the inbox position and lag 0"
is "$(echo "$st" | jq -r .source.position.group_id)" "$G" "/status: the consumer group"
is "$(metric r1 'pgtrickle_relay_messages_consumed_total{pipeline="orders-in",source="kafka"}')" "$TOTAL" "consumed counter"
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="orders-in"}')" 0 "no duplicate was written or skipped"

# New records keep flowing; a restart resumes from the committed offsets.
kcli produce "$B" "$T" 500 --from 20001 2>>"$TEST_TMP/kcli.log"
wait_until 20 '[ "$(rows)" -ge $((TOTAL + 500)) ]'
is "$(rows)" $((TOTAL + 500)) "records produced while running arrive"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
kcli produce "$B" "$T" 500 --from 30001 2>>"$TEST_TMP/kcli.log"
start_relay r2
wait_until 30 '[ "$(rows)" -ge $((TOTAL + 1000)) ]'
is "$(rows)" $((TOTAL + 1000)) "after a clean restart the new records arrive"
is "$(metric r2 'pgtrickle_relay_messages_consumed_total{pipeline="orders-in",source="kafka"}')" 500 \
   "the restarted relay resumed at the committed offsets: nothing re-read"
stop_relay r2
done_testing
