#!/usr/bin/env bash
# RabbitMQ -> inbox when the relay or PostgreSQL fails (shared broker, a
# private PostgreSQL):
#  - the relay killed after the inbox COMMIT but before its basic.ack: the
#    broker redelivers the batch (redelivered flag) and the inbox skips it,
#    one row per message
#  - PostgreSQL stopped in the middle of an inbox write: the batch is
#    released (basic.nack requeue), nothing is lost, and everything lands
#    once PostgreSQL is back; the queue is empty at the end
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
start_private_pg
setup_db
Q=q_$RTAG
rmq declare-queue "$Q"
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('orders-in', 'orders_inbox',
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"$Q\"}')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '$1%'"; }
# A deferred trigger holds the inbox COMMIT of messages {"hold":"yes"} until
# public.commit_go has a row.
sql "CREATE TABLE public.commit_go (go boolean)" >/dev/null
sql "CREATE FUNCTION public.hold_commit() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF NEW.payload->>'hold' = 'yes' THEN
         WHILE NOT EXISTS (SELECT 1 FROM public.commit_go) LOOP PERFORM pg_sleep(0.05); END LOOP;
     END IF; RETURN NULL; END \$\$" >/dev/null
sql "CREATE CONSTRAINT TRIGGER hold_commit AFTER INSERT ON pgtrickle.orders_inbox DEFERRABLE INITIALLY DEFERRED
     FOR EACH ROW EXECUTE FUNCTION public.hold_commit()" >/dev/null
holding() { sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgtrickle-relay orders-in' AND wait_event = 'PgSleep'"; }

start_relay r1
rmq publish "" "$Q" 100 --id-prefix a
wait_until 20 '[ "$(rows a-)" = 100 ]'
is "$(rows a-)" 100 "100 messages in the inbox"

# --- killed between COMMIT and ack ---------------------------------------------------
# published while no relay runs, so that one batch takes all three
stop_relay r1
rmq publish "" "$Q" 3 --id-prefix k --body '{"n":{i},"hold":"yes"}'
start_relay r1
wait_until 10 '[ "$(holding)" -ge 1 ]'
kill -STOP "$(relay_pid r1)"
sql "INSERT INTO public.commit_go VALUES (true)" >/dev/null
wait_until 10 '[ "$(rows k-)" = 3 ]'
is "$(rows k-)" 3 "the inbox COMMIT completed"
is "$(queue_field "$Q" messages_unacknowledged)" 3 "but the relay (stopped) has not acked them"
kill9_relay r1
wait_until 10 '[ "$(queue_field "$Q" messages_ready)" = 3 ]'
is "$(queue_field "$Q" messages_ready)" 3 "the relay killed: the broker requeues the 3 messages"
start_relay r2
wait_until 15 '[ "$(metric r2 "pgtrickle_relay_dedup_skipped_total{pipeline=\"orders-in\"}")" = 3 ]'
is "$(metric r2 'pgtrickle_relay_dedup_skipped_total{pipeline="orders-in"}')" 3 "redelivered, and the inbox skips all 3"
is "$(rows k-)" 3 "still exactly one row each"
is "$(pipeline_status r2 orders-in | jq -r .source.position.redelivered)" 3 "/status: 3 redeliveries"
wait_until 5 '[ "$(queue_field "$Q" messages)" = 0 ]'
is "$(queue_field "$Q" messages)" 0 "and this time they are acked"
sql "DELETE FROM public.commit_go" >/dev/null

# --- PostgreSQL stopped in the middle of an inbox write -----------------------------------
rmq publish "" "$Q" 50 --id-prefix p --body '{"n":{i},"hold":"yes"}'
wait_until 10 '[ "$(holding)" -ge 1 ]'
private_pg_stop
wait_until 10 'relay_log r2 | grep -q "messages requeued"'
like "$(relay_log r2)" "RabbitMQ: [0-9]+ messages requeued" "PostgreSQL down: the batch is released (basic.nack requeue)"
rmq publish "" "$Q" 20 --id-prefix d
wait_until 10 '[ "$(degraded_of r2 orders-in)" != "" ]'
private_pg_start
sql "INSERT INTO public.commit_go VALUES (true)" >/dev/null
wait_until 60 '[ "$(rows p-)" = 50 ] && [ "$(rows d-)" = 20 ] && [ "$(queue_field "$Q" messages)" = 0 ]'
is "$(rows p-),$(rows d-)" "50,20" "PostgreSQL back: the 50 released and the 20 new messages land, none lost"
is "$(sql "SELECT count(*) - count(DISTINCT event_id) FROM pgtrickle.orders_inbox")" 0 "none twice"
is "$(queue_field "$Q" messages)" 0 "the queue is empty at the end"
stop_relay r2
is "$?" 0 "clean exit"
rmq delete-queue "$Q"
done_testing
