#!/usr/bin/env bash
# RabbitMQ goes away, on a private node:
#  - broker restarted while an outbox -> RabbitMQ pipeline streams into a
#    durable queue: degraded while down, nothing acknowledged that was not
#    confirmed, every event there afterwards (at least once: distinct
#    message_ids = events)
#  - the same restart under a RabbitMQ -> inbox pipeline (persistent messages
#    on a durable queue) and under an idle sink pipeline: both degraded while
#    down, both back without any new event
#  - connections closed from the broker side (rabbitmqctl
#    close_all_connections): the broker's reply code and text are logged, and
#    the pipelines reconnect
#  - a frozen broker (SIGSTOP): missed heartbeats are noticed within a few
#    heartbeat intervals, even on an idle pipeline
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
start_private_rabbitmq
X=x_$RTAG
Q=q_$RTAG
QI=qi_$RTAG
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "#"
rmq declare-queue "$QI"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('quiet')" >/dev/null
sql "SELECT pgtrickle.create_inbox('rin')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-rmq', 'orders', NULL,
     '$(rmq_sink "$X" "{stream_table}.{op}" '"heartbeat_seconds":2')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('quiet-rmq', 'quiet', NULL,
     '$(rmq_sink "$X" "{stream_table}.{op}" '"heartbeat_seconds":2')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('rin', 'rin',
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"queue\":\"$QI\",\"heartbeat_seconds\":2}')" >/dev/null
inbox_rows() { sql "SELECT count(*) FROM pgtrickle.rin"; }
all_healthy() { [ "$(http_get r1 /health | jq -r .status)" = healthy ]; }

start_relay r1
wait_until 20 all_healthy
is "$(http_get r1 /health | jq -r .status)" healthy "three pipelines on the private node: healthy"

# --- a restart mid-stream ------------------------------------------------------------------
write_rows orders 1 3000 &
writer=$!
rmq publish "" "$QI" 200 --id-prefix before
wait_until 30 '[ "$(offset orders-rmq)" -ge 300 ]'
stop_private_rabbitmq
stopped_at=$(offset orders-rmq)
diag "rabbitmq stopped after offset $stopped_at"
wait_until 15 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 3 ]'
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" "orders-rmq,quiet-rmq,rin" \
   "broker down: all three pipelines degraded, the idle ones too"
wait "$writer"
o1=$(offset orders-rmq)
sleep 2
is "$(offset orders-rmq)" "$o1" "nothing is acknowledged while the broker is down"
restart_private_rabbitmq
rmq publish "" "$QI" 100 --id-prefix after
wait_until 60 '[ "$(offset orders-rmq)" = 3000 ] && [ "$(inbox_rows)" = 300 ]'
is "$(offset orders-rmq)" 3000 "broker back: the sink catches up and commits everything"
rmq drain "$Q" >"$TEST_TMP/q.jsonl"
is "$(jq -r .message_id "$TEST_TMP/q.jsonl" | sort -u | wc -l | tr -d ' ')" 3000 \
   "every event is in the durable queue (distinct message_ids: nothing lost)"
diag "$(lines "$TEST_TMP/q.jsonl") messages for 3000 events (republished after the restart: at least once)"
is "$(inbox_rows)" 300 "the inbox pipeline got the 200 persistent messages from before the restart and the 100 after"
wait_until 20 all_healthy
is "$(http_get r1 /health | jq -r .status)" healthy "healthy again, the idle sink pipeline too, without a new event"

# --- connections closed by the broker ----------------------------------------------------
before=$(grep -c 'connected to RabbitMQ' "$TEST_TMP/r1.log")
rmqctl close_all_connections "test: closed by the operator" >/dev/null
wait_until 20 '[ "$(grep -c "connected to RabbitMQ" "$TEST_TMP/r1.log")" -ge $((before + 3)) ]'
like "$(relay_log r1)" "\[quiet-rmq\] RabbitMQ connection to amqp://guest@127\.0\.0\.1:[0-9]+/%2F closed: broker closed the connection: 320 CONNECTION_FORCED - test: closed by the operator" \
     "the broker's close is logged with its reply code and text"
is "$(( $(grep -c 'connected to RabbitMQ' "$TEST_TMP/r1.log") - before ))" 3 "all three pipelines reconnected"
write_rows orders 3001 3010
rmq publish "" "$QI" 10 --id-prefix closed
wait_until 30 '[ "$(offset orders-rmq)" = 3010 ] && [ "$(inbox_rows)" = 310 ]'
is "$(offset orders-rmq):$(inbox_rows)" "3010:310" "and both directions flow again"

# --- a frozen broker: heartbeats -----------------------------------------------------------
beam=$(cat "$RMQ_DIR/rabbit.pid")
t0=$(now_ms)
kill -STOP "$beam"
wait_until 30 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 3 ]'
elapsed=$(( $(now_ms) - t0 ))
frozen=$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')
kill -CONT "$beam"
is "$frozen" "orders-rmq,quiet-rmq,rin" \
   "a frozen broker is noticed by every pipeline (${elapsed} ms, heartbeat 2 s)"
like "$(relay_log r1)" "\[quiet-rmq\] RabbitMQ connection to .* closed: (heartbeat timeout|.*timed out)" "the log says the heartbeats stopped"
wait_until 40 all_healthy
is "$(http_get r1 /health | jq -r .status)" healthy "the broker thawed: everything reconnects"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
