#!/usr/bin/env bash
# Redis Streams -> inbox through a consumer group (entries written with
# redis-cli):
#  - every entry lands once; event_id = field dedup_key, else
#    redis:{stream}:{entry id}; the body = field payload (a body that is not
#    JSON is stored as a JSON string), else every field as one JSON object;
#    event_type from the body, else field event_type, else the stream key;
#    aggregate_id and traceparent fields; source redis:{stream}
#  - two entries with the same dedup_key land once (dedup_skipped)
#  - while the inbox write fails nothing is XACKed (the entries stay pending);
#    the relay killed then re-reads its own pending entries at once on restart
#  - the relay killed between the inbox COMMIT and the XACK: the entries are
#    re-read on restart and the inbox skips them
#  - entries pending on a consumer that died are claimed after claim_idle_ms
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
K="$REDIS_PREFIX:in"
G=relay-group
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
src() { echo "{\"type\":\"redis\",\"url\":\"$REDIS_URL\",\"stream_key\":\"$K\",\"group_name\":\"$G\"${1:+,$1}}"; }
sql "SELECT pgtrickle.set_relay_inbox('redis-in', 'orders_inbox', '$(src '"claim_idle_ms":1500,"block_ms":200')')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '$1'"; }
pending() { rcli XPENDING "$K" "$G" | head -1; }
# xadd_many <n> <dedup prefix> <payload>: n entries in one atomic step (so
# the relay reads them as one batch)
xadd_many() {
    rcli EVAL "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'dedup_key', ARGV[2] .. i, 'payload', ARGV[3]) end" \
        1 "$K" "$1" "$2" "$3" >/dev/null
}

rcli EVAL "for i = 1, 100 do redis.call('XADD', KEYS[1], '*', 'dedup_key', 'm-' .. i,
     'payload', '{\"event_type\":\"order.created\",\"n\":' .. i .. '}') end" 1 "$K" >/dev/null
noid=$(rcli XADD "$K" '*' payload '{"k":"no id"}')
rcli XADD "$K" '*' dedup_key txt-1 payload 'hello, not json' >/dev/null
rcli XADD "$K" '*' dedup_key f-1 event_type order.paid amount 12 aggregate_id order-7 \
     traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 >/dev/null
rcli XADD "$K" '*' dedup_key t-1 event_type order.typed payload '{"x":1}' >/dev/null
rcli XADD "$K" '*' dedup_key dup-1 payload '{"copy":1}' >/dev/null
rcli XADD "$K" '*' dedup_key dup-1 payload '{"copy":2}' >/dev/null

start_relay r1
wait_until 20 '[ "$(rows %)" -ge 104 ]'
sleep 0.5
is "$(rows %)" 105 "100 + 5 distinct entries, the repeated dedup_key once"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'm-%' AND event_type = 'order.created' AND source = 'redis:$K'")" 100 \
   "event_id = field dedup_key, event_type from the payload, source redis:{stream}"
is "$(sql "SELECT event_type || ' ' || (payload->>'k') FROM pgtrickle.orders_inbox WHERE event_id = 'redis:$K:$noid'")" "$K no id" \
   "no dedup_key: event_id redis:{stream}:{entry id}, event_type = the stream key"
is "$(sql "SELECT jsonb_typeof(payload) || ' ' || (payload #>> '{}') FROM pgtrickle.orders_inbox WHERE event_id = 'txt-1'")" "string hello, not json" \
   "a payload that is not JSON is stored as a JSON string"
is "$(sql "SELECT payload::text FROM pgtrickle.orders_inbox WHERE event_id = 'f-1'")" \
   '{"amount": "12", "dedup_key": "f-1", "event_type": "order.paid", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "aggregate_id": "order-7"}' \
   "no payload field: every field as one JSON object"
is "$(sql "SELECT event_type || ' ' || aggregate_id || ' ' || trace_id FROM pgtrickle.orders_inbox WHERE event_id = 'f-1'")" \
   "order.paid order-7 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" "event_type, aggregate_id and traceparent fields"
is "$(sql "SELECT event_type FROM pgtrickle.orders_inbox WHERE event_id = 't-1'")" "order.typed" \
   "a payload without event_type: the event_type field"
is "$(sql "SELECT payload->>'copy' FROM pgtrickle.orders_inbox WHERE event_id = 'dup-1'")" 1 "the first copy of dup-1 is kept"
wait_until 5 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"redis-in\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="redis-in"}')" 1 "the repeat counts as dedup_skipped"
wait_until 5 '[ "$(pending)" = 0 ]'
is "$(pending)" 0 "every entry is acknowledged (XPENDING 0)"
is "$(rcli --json XINFO CONSUMERS "$K" "$G" | jq -r '.[0].name')" "redis-in" "the consumer is named after the pipeline"
is "$(metric r1 'pgtrickle_relay_messages_consumed_total{pipeline="redis-in",source="redis"}')" 106 "consumed counter"
last=$(rcli --json XREVRANGE "$K" + - COUNT 1 | jq -r '.[0][0]')
wait_until 5 '[ "$(http_get r1 /status | jq -r ".pipelines[] | select(.name == \"redis-in\") | .source.position.lag")" = 0 ]'
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "redis-in") | .source.position | [.stream, .group, .consumer, .last_acked_id, .pending, .lag] | @csv')" \
   "\"$K\",\"$G\",\"redis-in\",\"$last\",0,0" "/status: stream, group, consumer, last acked id, pending and lag"
is "$(pipeline_healthy r1 redis-in)" true "healthy"

# --- the inbox write fails: nothing acked -------------------------------------------------
sql "CREATE TABLE public.inbox_broken (on_ boolean)" >/dev/null
sql "INSERT INTO public.inbox_broken VALUES (true)" >/dev/null
sql "CREATE FUNCTION public.inbox_fail() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF EXISTS (SELECT 1 FROM public.inbox_broken) THEN RAISE EXCEPTION 'inbox is broken (test)'; END IF;
     RETURN NEW; END \$\$" >/dev/null
sql "CREATE TRIGGER inbox_fail BEFORE INSERT ON pgtrickle.orders_inbox FOR EACH ROW EXECUTE FUNCTION public.inbox_fail()" >/dev/null
xadd_many 5 g- '{}'
wait_until 10 '[ "$(pending)" = 5 ]'
sleep 1
is "$(pending)" 5 "while the inbox write fails the 5 entries stay pending"
is "$(rows 'g-_')" 0 "and none is in the inbox"
like "$(last_error r1 redis-in)" "inbox is broken" "/status shows the inbox error"
kill9_relay r1
sql "DELETE FROM public.inbox_broken" >/dev/null
start_relay r2
wait_until 10 '[ "$(rows 'g-_')" = 5 ]'
is "$(rows 'g-_')" 5 "after a restart the relay re-reads its own pending entries: all 5 land"
like "$(relay_log r2)" "re-reading 5 entries left pending on consumer \"redis-in\"" "the re-read is logged"
wait_until 5 '[ "$(pending)" = 0 ]'
is "$(pending)" 0 "and they are acknowledged"
stop_relay r2
sql "DROP TRIGGER inbox_fail ON pgtrickle.orders_inbox" >/dev/null

# --- killed between COMMIT and XACK ---------------------------------------------------
# A deferred trigger holds the inbox COMMIT until the test says go; the relay
# is stopped (SIGSTOP) in that moment, the COMMIT completes, then kill -9: the
# rows are committed but the XACK was never sent.
sql "CREATE TABLE public.commit_go (go boolean)" >/dev/null
sql "CREATE FUNCTION public.hold_commit() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF NEW.payload->>'hold' = 'yes' THEN
         WHILE NOT EXISTS (SELECT 1 FROM public.commit_go) LOOP PERFORM pg_sleep(0.05); END LOOP;
     END IF; RETURN NULL; END \$\$" >/dev/null
sql "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON pgtrickle.orders_inbox DEFERRABLE INITIALLY DEFERRED
     FOR EACH ROW EXECUTE FUNCTION public.hold_commit()" >/dev/null
start_relay r3
xadd_many 3 k- '{"hold":"yes"}'
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"'pgtrickle-relay redis-in'"' AND wait_event = '"'PgSleep'"'")" -ge 1 ]'
kill -STOP "$(relay_pid r3)"
sql "INSERT INTO public.commit_go VALUES (true)" >/dev/null
wait_until 10 '[ "$(rows 'k-%')" = 3 ]'
is "$(rows 'k-%')" 3 "the inbox COMMIT completed"
is "$(pending)" 3 "but the relay (stopped) has not acknowledged them"
kill9_relay r3
start_relay r4
wait_until 15 '[ "$(metric r4 "pgtrickle_relay_dedup_skipped_total{pipeline=\"redis-in\"}")" = 3 ]'
is "$(metric r4 'pgtrickle_relay_dedup_skipped_total{pipeline="redis-in"}')" 3 "on restart the 3 entries are re-read and the inbox skips them"
is "$(rows 'k-%')" 3 "still exactly one row each"
wait_until 5 '[ "$(pending)" = 0 ]'
is "$(pending)" 0 "and this time they are acknowledged"
stop_relay r4

# --- a consumer that died with pending entries ------------------------------------------
xadd_many 3 c- '{"claimed":true}'
rcli XREADGROUP GROUP "$G" dead-consumer COUNT 10 STREAMS "$K" '>' >/dev/null
is "$(rcli --json XPENDING "$K" "$G" - + 10 dead-consumer | jq length)" 3 "3 entries are pending on a consumer that died"
start_relay r5
wait_until 20 '[ "$(rows 'c-%')" = 3 ]'
is "$(rows 'c-%')" 3 "after claim_idle_ms the relay claims them (XAUTOCLAIM): all 3 land"
wait_until 5 '[ "$(pending)" = 0 ]'
is "$(pending)" 0 "and acknowledges them"
like "$(relay_log r5)" "claimed 3 entries idle for more than 1500 ms" "the claim is logged"
is "$(http_get r5 /status | jq -r '.pipelines[] | select(.name == "redis-in") | .source.position.claimed')" 3 "/status counts them"
stop_relay r5
is "$?" 0 "clean exit"
done_testing
