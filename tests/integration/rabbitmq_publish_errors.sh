#!/usr/bin/env bash
# RabbitMQ sink failures that are not the broker's fault: an unroutable
# message (mandatory, no queue bound) is returned, never dropped: the
# pipeline runs degraded with one error naming the exchange and routing
# key, acknowledges nothing, and delivers everything once a queue is bound;
# a routing key longer than AMQP's 255 bytes is dead-lettered and the
# pipeline goes on; an exchange deleted under a running pipeline closes the
# channel (404, the error names sink.exchange) and the pipeline recovers
# when it is back.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
X=x_$RTAG
Q=q_$RTAG
rmq declare-exchange "$X" topic
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('unroutable', 'orders', NULL, '$(rmq_sink "$X" "$RTAG.{op}")')" >/dev/null
write_rows orders 1 50
start_relay r1

# --- unroutable: returned, degraded, nothing acked --------------------------------
wait_until 30 '[ "$(pipeline_healthy r1 unroutable)" = false ]'
is "$(pipeline_healthy r1 unroutable)" false "an unroutable batch degrades the pipeline"
like "$(last_error r1 unroutable)" "unroutable: no queue is bound to exchange \"$X\" for routing key \"$RTAG\.insert\" \(312 NO_ROUTE\)" \
     "the error names the exchange and the routing key"
sleep 3
is "$(offset unroutable)" 0 "nothing is acknowledged while the messages are returned"
is "$(grep -c "RabbitMQ: unroutable: no queue is bound to exchange" "$TEST_TMP/r1.log")" 1 \
   "the warning is logged once, not per retry"
is "$(http_code r1 /health)" 503 "/health: 503 while unroutable"

rmq declare-queue "$Q" --bind "$X" "$RTAG.#"
wait_until 60 '[ "$(offset unroutable)" = 50 ]'
is "$(offset unroutable)" 50 "once a queue is bound the batch is confirmed and acknowledged"
rmq drain "$Q" >"$TEST_TMP/q.jsonl"
is "$(jq -r .message_id "$TEST_TMP/q.jsonl" | sort -u | wc -l | tr -d ' '),$(lines "$TEST_TMP/q.jsonl")" "50,50" \
   "every message arrives once (returned messages were not confirmed)"
wait_until 10 '[ "$(pipeline_healthy r1 unroutable)" = true ]'
is "$(pipeline_healthy r1 unroutable)" true "healthy again"
returned=$(pipeline_status r1 unroutable | jq -r .sink.returned)
ok "$([ "${returned:-0}" -ge 50 ] 2>/dev/null && echo 0 || echo 1)" "/status counts the returned messages ($returned)"

# --- a routing key too long for AMQP: dead-lettered ---------------------------------
sql "SELECT pgtrickle.enable_outbox('$(printf 'o%.0s' $(seq 1 60))')" >/dev/null
long=$(printf 'o%.0s' $(seq 1 60))
sql "SELECT pgtrickle.set_relay_outbox('long-key', '$long', NULL,
     '$(rmq_sink "$X" "$RTAG.{stream_table}.{stream_table}.{stream_table}.{stream_table}.{stream_table}")')" >/dev/null
sql "SELECT pgtrickle.outbox_write('$long', '[{\"n\":1}]')" >/dev/null
wait_until 30 '[ "$(metric r1 "pgtrickle_relay_dead_lettered_total{pipeline=\"long-key\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="long-key"}')" 1 "a routing key over 255 bytes is dead-lettered"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'long-key'")" \
     "the routing key is [0-9]+ bytes; AMQP allows 255" "relay_dlq says why"
wait_until 10 '[ "$(offset long-key)" = 1 ]'
is "$(offset long-key)" 1 "and the pipeline moved on"

# --- the exchange deleted under a running pipeline -------------------------------------
rmq delete-exchange "$X"
write_rows orders 51 60
wait_until 30 '[ "$(pipeline_healthy r1 unroutable)" = false ]'
like "$(last_error r1 unroutable)" "sink\.exchange.*404 NOT_FOUND - no exchange '$X'" \
     "a deleted exchange: the broker's 404 and sink.exchange in the error"
is "$(offset unroutable)" 50 "nothing more is acknowledged"
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "$RTAG.#"
wait_until 60 '[ "$(offset unroutable)" = 60 ]'
is "$(offset unroutable)" 60 "the exchange back: the pipeline recovers by itself"
is "$(rmq_count "$Q")" 10 "and delivers the 10 new events"
stop_relay r1
is "$?" 0 "clean exit"
rmq delete-queue "$Q"; rmq delete-exchange "$X"
done_testing
