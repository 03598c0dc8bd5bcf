#!/usr/bin/env bash
# NATS JetStream -> inbox through a durable pull consumer:
#  - every message lands once; event_id = Nats-Msg-Id, else nats:{stream}:{seq};
#    event_type from the payload field, else the subject; source nats:{stream};
#    a body that is not JSON is stored as a JSON string; traceparent -> trace_id
#  - a message published twice with the same Nats-Msg-Id (outside the stream's
#    duplicate window, so JetStream stores both) lands once: dedup_skipped
#  - while the inbox write fails nothing is acked; the messages come back after
#    ack_wait (kill -9) or at once when the batch is released (SIGTERM: nak)
#  - the relay killed between the inbox COMMIT and the acks: the redelivered
#    messages are skipped by the inbox
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
S=$(stream_name IN)
SUBJ="t_$NATS_TAG"
natscli stream-add "$S" "$SUBJ.>" --dup-ms 100 >/dev/null
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
src() { echo "{\"type\":\"nats\",\"url\":\"$NATS_URL\",\"stream\":\"$S\",\"durable_name\":\"$1\"${2:+,$2}}"; }
sql "SELECT pgtrickle.set_relay_inbox('nats-in', 'orders_inbox', '$(src relay-in '"subject":"'"$SUBJ"'.orders.>","ack_wait_seconds":5')')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox"; }

natscli pub-many "$SUBJ.orders.created" 100 --id-prefix m- --data '{"event_type":"order.created","n":1}' >/dev/null
natscli pub "$SUBJ.orders.noid" '{"k":"no id"}' >/dev/null
noid_seq=$(natscli stream-info "$S" | jq -r .last_seq)
natscli pub "$SUBJ.orders.text" 'hello, not json' --id txt-1 >/dev/null
natscli pub "$SUBJ.orders.traced" '{"t":1}' --id tr-1 -H "traceparent:00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" >/dev/null
natscli pub "$SUBJ.orders.dup" '{"copy":1}' --id dup-1 >/dev/null
sleep 0.3 # past the 100 ms duplicate window: JetStream stores the repeat
is "$(natscli pub "$SUBJ.orders.dup" '{"copy":2}' --id dup-1 | jq -r .duplicate)" false \
   "the repeat is stored by JetStream (outside its duplicate window)"
natscli pub "$SUBJ.other" '{"x":1}' --id other-1 >/dev/null   # outside the filter subject

start_relay r1
wait_until 20 '[ "$(rows)" -ge 104 ]'
sleep 0.5
is "$(rows)" 104 "100 + 4 distinct messages, the repeat skipped, the other subject filtered out"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'm-%' AND event_type = 'order.created' AND source = 'nats:$S'")" 100 \
   "event_id = Nats-Msg-Id, event_type from the payload, source nats:{stream}"
is "$(sql "SELECT event_type FROM pgtrickle.orders_inbox WHERE event_id = 'nats:$S:$noid_seq'")" "$SUBJ.orders.noid" \
   "no Nats-Msg-Id: event_id nats:{stream}:{seq}, event_type = subject"
is "$(sql "SELECT payload #>> '{}' FROM pgtrickle.orders_inbox WHERE event_id = 'txt-1'")" "hello, not json" \
   "a body that is not JSON is stored as a JSON string"
is "$(sql "SELECT jsonb_typeof(payload) FROM pgtrickle.orders_inbox WHERE event_id = 'txt-1'")" "string" "(of type string)"
is "$(sql "SELECT trace_id FROM pgtrickle.orders_inbox WHERE event_id = 'tr-1'")" \
   "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01" "traceparent header -> trace_id"
is "$(sql "SELECT payload->>'copy' FROM pgtrickle.orders_inbox WHERE event_id = 'dup-1'")" 1 "the first copy of dup-1 is kept"
wait_until 5 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"nats-in\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="nats-in"}')" 1 "the repeat counts as dedup_skipped"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id = 'other-1'")" 0 "the filter subject is honoured"
wait_until 5 '[ "$(consumer_field "$S" relay-in num_ack_pending)" = 0 ]'
is "$(consumer_field "$S" relay-in num_ack_pending)" 0 "every message is acked"
is "$(consumer_field "$S" relay-in ack_wait_ms)" 5000 "the consumer was created with ack_wait_seconds"
is "$(consumer_field "$S" relay-in filter_subject)" "$SUBJ.orders.>" "... and the filter subject"
is "$(metric r1 'pgtrickle_relay_messages_consumed_total{pipeline="nats-in",source="nats"}')" 105 "consumed counter"
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "nats-in") | [.source.type, .source.position.consumer, .healthy] | @csv')" \
   '"nats","relay-in",true' "/status shows the nats source and its consumer"
last=$(natscli stream-info "$S" | jq -r .last_seq)
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "nats-in") | .source.position.last_acked_stream_seq')" "$((last - 1))" \
   "/status position: the last acked stream sequence"

# --- the inbox write fails: nothing acked ----------------------------------------------
sql "CREATE TABLE public.inbox_broken (on_ boolean)" >/dev/null
sql "INSERT INTO public.inbox_broken VALUES (true)" >/dev/null
sql "CREATE FUNCTION public.inbox_fail() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF EXISTS (SELECT 1 FROM public.inbox_broken) THEN RAISE EXCEPTION 'inbox is broken (test)'; END IF;
     RETURN NEW; END \$\$" >/dev/null
sql "CREATE TRIGGER inbox_fail BEFORE INSERT ON pgtrickle.orders_inbox FOR EACH ROW EXECUTE FUNCTION public.inbox_fail()" >/dev/null
natscli pub-many "$SUBJ.orders.f" 5 --id-prefix f- >/dev/null
wait_until 10 '[ "$(consumer_field "$S" relay-in num_ack_pending)" = 5 ]'
delivered_at=$(now_ms)
sleep 1
is "$(consumer_field "$S" relay-in num_ack_pending)" 5 "while the inbox write fails the 5 messages stay unacknowledged"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'f-%'")" 0 "and none is in the inbox"
like "$(last_error r1 nats-in)" "inbox is broken" "/status shows the inbox error"
delivered=$(consumer_field "$S" relay-in delivered_consumer_seq)
kill9_relay r1
sql "DELETE FROM public.inbox_broken" >/dev/null
start_relay r2 --shutdown-timeout 1s
sleep 0.5
early=$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'f-%'")
if [ $(( $(now_ms) - delivered_at )) -lt 4500 ]; then
    is "$early" 0 "after kill -9 they are not redelivered before ack_wait"
else
    pass "after kill -9 they are not redelivered before ack_wait # SKIP machine too slow to check"
fi
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '"'f-%'"'")" = 5 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'f-%'")" 5 "... but after ack_wait, all 5 land"
is "$(( $(consumer_field "$S" relay-in delivered_consumer_seq) - delivered ))" 5 "they were redelivered (5 more deliveries)"

# SIGTERM while failing: the batch is released (nak) and comes back at once.
sql "INSERT INTO public.inbox_broken VALUES (true)" >/dev/null
natscli pub-many "$SUBJ.orders.g" 3 --id-prefix g- >/dev/null
wait_until 10 '[ "$(consumer_field "$S" relay-in num_ack_pending)" = 3 ]'
stop_relay r2   # the failing batch is abandoned after 1 s and released
sql "DELETE FROM public.inbox_broken" >/dev/null
t0=$(now_ms)
start_relay r3
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '"'g-%'"'")" = 3 ]'
elapsed=$(( $(now_ms) - t0 ))
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'g-%'")" 3 "released messages land after the restart"
ok "$([ "$elapsed" -lt 4000 ] && echo 0 || echo 1)" "released (nak) messages come back before ack_wait (${elapsed} ms)"
stop_relay r3
sql "DROP TRIGGER inbox_fail ON pgtrickle.orders_inbox" >/dev/null

# --- killed between COMMIT and ack ----------------------------------------------------
# A deferred trigger holds the inbox COMMIT until the test says go; the relay
# is stopped (SIGSTOP) in that moment, the COMMIT completes, then kill -9: the
# rows are committed but the acks were never sent.
sql "CREATE TABLE public.commit_go (go boolean)" >/dev/null
sql "CREATE FUNCTION public.hold_commit() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF NEW.payload->>'hold' = 'yes' THEN
         WHILE NOT EXISTS (SELECT 1 FROM public.commit_go) LOOP PERFORM pg_sleep(0.05); END LOOP;
     END IF; RETURN NULL; END \$\$" >/dev/null
sql "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON pgtrickle.orders_inbox DEFERRABLE INITIALLY DEFERRED
     FOR EACH ROW EXECUTE FUNCTION public.hold_commit()" >/dev/null
start_relay r4
natscli pub-many "$SUBJ.orders.k" 3 --id-prefix k- --data '{"hold":"yes"}' >/dev/null
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"'pgtrickle-relay nats-in'"' AND wait_event = '"'PgSleep'"'")" -ge 1 ]'
kill -STOP "$(relay_pid r4)"
sql "INSERT INTO public.commit_go VALUES (true)" >/dev/null
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '"'k-%'"'")" = 3 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'k-%'")" 3 "the inbox COMMIT completed"
is "$(consumer_field "$S" relay-in num_ack_pending)" 3 "but the relay (stopped) has not acked them"
kill9_relay r4
start_relay r5
wait_until 15 '[ "$(metric r5 "pgtrickle_relay_dedup_skipped_total{pipeline=\"nats-in\"}")" = 3 ]'
is "$(metric r5 'pgtrickle_relay_dedup_skipped_total{pipeline="nats-in"}')" 3 "after ack_wait the 3 messages come back and the inbox skips them"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'k-%'")" 3 "still exactly one row each"
wait_until 5 '[ "$(consumer_field "$S" relay-in num_ack_pending)" = 0 ]'
is "$(consumer_field "$S" relay-in num_ack_pending)" 0 "and this time they are acked"
stop_relay r5
is "$?" 0 "clean exit"
done_testing
