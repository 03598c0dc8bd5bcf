# tests/integration/rabbitmq_lib.sh - helpers for the RabbitMQ tests, sourced
# after lib.sh. The shared node is started by tests/services/services.sh
# (PGT_RABBITMQ_URL); every exchange and queue name carries RTAG, unique per
# test run, so tests run in parallel against it. Tests that stop or restart
# the broker start a private node (start_private_rabbitmq, ~6 s). What the
# relay publishes is read back with python3-pika (tests/tools/rmqcli.py).
: "${PGT_RABBITMQ_URL:?rabbitmq not started: run tests/services/services.sh start rabbitmq}"
RMQCLI=${RMQCLI:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools" && pwd)/rmqcli.py}
RTAG=${TEST_NAME}_$$_$RANDOM
RMQ_URL=$PGT_RABBITMQ_URL

# rmq <rmqcli args...>: against $RMQ_URL (a private node sets it)
rmq() { /usr/bin/python3 "$RMQCLI" --url "$RMQ_URL" "$@" 2>>"$TEST_TMP/rmqcli.log"; }
# rmqctl <rabbitmqctl args...>: against the node of $RMQ_DIR (default: shared)
rmqctl() { "$PGT_RABBITMQ_NODE" ctl "${RMQ_DIR:-$PGT_RABBITMQ_DIR}" "$@"; }
# rmq_count <queue>: ready messages, or "" when the queue is missing
rmq_count() { rmq count "$1" 2>/dev/null; }

# start_private_rabbitmq: a node of this test's own (its ports drawn with
# free_port); points RMQ_URL and RMQ_DIR at it. Stopped at exit.
start_private_rabbitmq() {
    local port try
    RMQ_DIR=$TEST_TMP/rabbitmq
    for try in 1 2 3; do
        # the node also takes port+1000 (epmd), +2000 (distribution), +3000 (TLS)
        port=$(free_port_group 0 1000 2000 3000) || bail "private rabbitmq: no free ports"
        "$PGT_RABBITMQ_NODE" start "$RMQ_DIR" "$port" && break
        "$PGT_RABBITMQ_NODE" stop "$RMQ_DIR" >/dev/null 2>&1
        rm -rf "$RMQ_DIR"
        [ "$try" = 3 ] && bail "private rabbitmq did not start"
        diag "private rabbitmq did not start on port $port (try $try), trying another"
    done
    RMQ_URL="amqp://guest:guest@127.0.0.1:$port/"
    RMQ_PRIVATE_PORT=$port
}
stop_private_rabbitmq() { "$PGT_RABBITMQ_NODE" stop "$RMQ_DIR"; }
restart_private_rabbitmq() {
    stop_private_rabbitmq
    "$PGT_RABBITMQ_NODE" start "$RMQ_DIR" "$RMQ_PRIVATE_PORT" || bail "private rabbitmq did not restart"
}
_rabbitmq_cleanup() {
    [ -n "${RMQ_DIR:-}" ] && [ "$RMQ_DIR" != "$PGT_RABBITMQ_DIR" ] && "$PGT_RABBITMQ_NODE" stop "$RMQ_DIR"
    _cleanup
}
trap _rabbitmq_cleanup EXIT

# --- relay side ------------------------------------------------------------------
pipeline_status() { http_get "$1" /status | jq -c ".pipelines[] | select(.name == \"$2\")"; }
health_status() { http_get "$1" /health | jq -r .status; }
pipeline_healthy() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .healthy"; }
last_error() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .last_error // empty"; }
# offset <pipeline>: the outbox offset it committed (0: none)
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
# rmq_sink <exchange> <routing key template> [extra JSON members]: a sink config
rmq_sink() { echo "{\"type\":\"rabbitmq\",\"url\":\"${SINK_URL:-$RMQ_URL}\",\"exchange\":\"$1\",\"routing_key_template\":\"$2\"${3:+,$3}}"; }
# queue_field <queue> <field>: one rabbitmqctl list_queues column (messages_ready,
# messages_unacknowledged, type, consumers, ...) of that queue
queue_field() { rmqctl list_queues name "$2" 2>/dev/null | awk -v q="$1" '$1 == q { print $2 }'; }
# degraded_of <relay> <pipeline>: the pipeline's entry in /health's degraded list
degraded_of() { http_get "$1" /health | jq -c ".degraded[]? | select(.pipeline == \"$2\")"; }
