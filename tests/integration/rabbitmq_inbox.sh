#!/usr/bin/env bash
# RabbitMQ -> inbox against the shared node: messages published with
# python3-pika land in the inbox once each, with event_id = message_id, else
# header pgtrickle-dedup-key, else a UUID; repeats of a message_id are one
# row (dedup_skipped); event_type from the body field, else the type
# property, else the routing key; aggregate_id = routing key; traceparent ->
# trace_id; non-JSON bodies kept as JSON strings; a quorum queue declared by
# the relay with its bindings; the queue is empty at the end and nothing is
# left unacknowledged. The inbox write failing: nothing acked, the batch is
# retried, then lands. The queue deleted under the consumer: basic.cancel,
# degraded with a clear error, consuming again once the queue is back.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
X=x_$RTAG
Q=q_$RTAG
QQ=qq_$RTAG     # quorum, declared by the relay
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "orders.#"
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
sql "SELECT pgtrickle.create_inbox('quorum_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('orders-in', 'orders_inbox',
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"$Q\",\"batch_size\":200}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('quorum-in', 'quorum_inbox',
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"$QQ\",\"declare_queue\":true,
       \"queue_type\":\"quorum\",\"bindings\":[{\"exchange\":\"$X\",\"routing_key\":\"quorum.*\"}]}')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.${1:-orders_inbox}"; }

rmq publish "$X" orders.created 3000 --id-prefix m
rmq publish "$X" orders.created 500 --id-prefix m          # repeats of m-1..m-500
rmq publish "$X" orders.typed 10 --id-prefix t --type order.typed
rmq publish "$X" orders.body 10 --id-prefix b --type ignored --body '{"n":{i},"event_type":"order.body"}'
rmq publish "$X" orders.hdr 10 --no-id --header pgtrickle-dedup-key=h --body '{"h":{i}}'
rmq publish "$X" orders.noid 5 --no-id --body '{"u":{i}}'
rmq publish "$X" orders.text 5 --id-prefix txt --body 'plain text {i}'
rmq publish "$X" orders.trace 1 --id-prefix tr --header traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01
# the 10 messages with header pgtrickle-dedup-key=h share one event_id
TOTAL=$((3000 + 10 + 10 + 1 + 5 + 5 + 1))

start_relay r1
wait_until 60 '[ "$(rows)" -ge $TOTAL ] && [ "$(queue_field "$Q" messages_unacknowledged)" = 0 ] && [ "$(queue_field "$Q" messages_ready)" = 0 ]'
is "$(rows)" "$TOTAL" "every distinct message is in the inbox once ($TOTAL rows)"
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="orders-in"}')" 509 \
   "the 500 repeated message_ids and 9 repeated dedup headers were skipped (dedup_skipped)"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id ~ '^m-[0-9]+\$'")" 3000 "event_id = message_id"
is "$(sql "SELECT event_id FROM pgtrickle.orders_inbox WHERE aggregate_id = 'orders.hdr'")" "h" \
   "no message_id: header pgtrickle-dedup-key is the event_id"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE aggregate_id = 'orders.noid'
           AND event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\$'")" 5 \
   "neither: a random UUID"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_type = 'order.typed' AND event_id LIKE 't-%'")" 10 \
   "event_type from the type property"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_type = 'order.body' AND event_id LIKE 'b-%'")" 10 \
   "event_type from the body field first"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_type = 'orders.created'")" 3000 \
   "otherwise event_type is the routing key"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE aggregate_id = 'orders.created'")" 3000 "aggregate_id = routing key"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE source = 'rabbitmq:$Q'")" "$TOTAL" "source = rabbitmq:{queue}"
is "$(sql "SELECT string_agg(payload #>> '{}', ',' ORDER BY event_id) FROM pgtrickle.orders_inbox WHERE jsonb_typeof(payload) = 'string'")" \
   "plain text 1,plain text 2,plain text 3,plain text 4,plain text 5" "non-JSON bodies are stored as JSON strings"
is "$(sql "SELECT trace_id FROM pgtrickle.orders_inbox WHERE trace_id IS NOT NULL")" \
   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" "traceparent header -> trace_id"
is "$(queue_field "$Q" messages_ready),$(queue_field "$Q" messages_unacknowledged)" "0,0" \
   "the queue is empty and nothing is left unacknowledged"
st=$(pipeline_status r1 orders-in)
is "$(jq -r '.source.position | [.queue, .prefetch_count, .unacked, .connected] | @tsv' <<<"$st")" "$Q	400	0	true" \
   "/status: queue, prefetch (twice the batch size), nothing unacked, connected"
is "$(jq -r '.source.position.acked' <<<"$st")" "$((TOTAL + 509))" "/status counts every delivery acked"

# --- a quorum queue declared by the relay, with its binding -------------------------
rmq publish "$X" quorum.a 300 --id-prefix qa
wait_until 30 '[ "$(rows quorum_inbox)" = 300 ]'
is "$(rows quorum_inbox)" 300 "a quorum queue declared by the relay: 300 messages in the inbox"
is "$(queue_field "$QQ" type)" quorum "the queue is a quorum queue"
wait_until 10 '[ "$(queue_field "$QQ" messages)" = 0 ]'
is "$(queue_field "$QQ" messages)" 0 "and it is empty at the end"

# --- the inbox write fails: nothing acked, retried, then lands ------------------------
sql "CREATE TABLE public.inbox_broken (on_ boolean)" >/dev/null
sql "INSERT INTO public.inbox_broken VALUES (true)" >/dev/null
sql "CREATE FUNCTION public.inbox_fail() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN IF EXISTS (SELECT 1 FROM public.inbox_broken) THEN RAISE EXCEPTION 'inbox is broken (test)'; END IF;
     RETURN NEW; END \$\$" >/dev/null
sql "CREATE TRIGGER inbox_fail BEFORE INSERT ON pgtrickle.orders_inbox FOR EACH ROW EXECUTE FUNCTION public.inbox_fail()" >/dev/null
rmq publish "$X" orders.f 5 --id-prefix f
wait_until 10 '[ "$(queue_field "$Q" messages_unacknowledged)" = 5 ]'
sleep 1
is "$(queue_field "$Q" messages_unacknowledged)" 5 "while the inbox write fails the 5 messages stay unacknowledged"
like "$(last_error r1 orders-in)" "inbox is broken" "/status shows the inbox error"
sql "DELETE FROM public.inbox_broken" >/dev/null
wait_until 30 '[ "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '"'f-%'"'")" = 5 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'f-%'")" 5 "fixed: all 5 land"
wait_until 10 '[ "$(queue_field "$Q" messages_unacknowledged)" = 0 ]'
is "$(queue_field "$Q" messages_unacknowledged)" 0 "and are acknowledged"

# --- the queue deleted under the consumer -----------------------------------------------
rmq delete-queue "$Q"
wait_until 20 '[ "$(pipeline_healthy r1 orders-in)" = false ]'
is "$(pipeline_healthy r1 orders-in)" false "the queue deleted: the pipeline is degraded"
like "$(relay_log r1)" "source\.queue: the broker cancelled the consumer of queue \"$Q\" \(was the queue deleted\?\)" \
     "the log says the broker cancelled the consumer"
wait_until 10 '[ -n "$(last_error r1 orders-in | grep "404 NOT_FOUND")" ]'
like "$(last_error r1 orders-in)" "source\.queue: checking the queue \"$Q\": .*404 NOT_FOUND" \
     "while it is missing: 404 naming source.queue"
rmq declare-queue "$Q" --bind "$X" "orders.#"
rmq publish "$X" orders.back 7 --id-prefix back
wait_until 40 '[ "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE '"'back-%'"'")" = 7 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id LIKE 'back-%'")" 7 \
   "the queue back: the source subscribes again and reads it"
is "$(pipeline_healthy r1 orders-in)" true "healthy again"
stop_relay r1
is "$?" 0 "clean exit"
is "$(queue_field "$Q" messages)" 0 "the queue is empty at the end"
rmq delete-queue "$Q"; rmq delete-queue "$QQ"; rmq delete-exchange "$X"
done_testing
