#!/usr/bin/env bash
# Outbox -> Kafka when the cluster misbehaves. A private mock cluster (its
# own kmock process, which this test takes down and up with
# rd_kafka_mock_broker_set_down/up: connections are cut and refused, the
# ports and the stored records stay) proves:
#  1. brokers unreachable at start: /health degraded, the outbox offset does
#     not move, and when the brokers come up every event arrives exactly once;
#  2. brokers lost mid-stream: degraded, nothing acknowledged while they are
#     down, recovery without loss (duplicates at most the batches that were
#     in flight, all carrying their dedup keys);
#  3. a record-level broker error (INVALID_PRODUCER_EPOCH on a Produce
#     request) fails those records, and the worker republishes them;
#  4. a fatal idempotent-producer error (OUT_OF_ORDER_SEQUENCE_NUMBER)
#     re-creates the producer and the batch is delivered;
#  5. a bootstrap address where nothing listens: degraded with a clear
#     error, and fixing the config (hot reload) recovers;
#  6. a topic the cluster does not know: degraded, nothing acknowledged,
#     delivered once it exists.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
setup_db
T=$KTAG
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
published() { metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"$1\",sink=\"kafka\"}"; }
keys() { kafka_consume "$1" "$2" "$3" --timeout 3 | jq -r .key | sort -u | wc -l | tr -d ' '; }
records() { kafka_consume "$1" "$2" 1000000 --timeout 2 | wc -l | tr -d ' '; }

# --- 1. unreachable at start ---------------------------------------------------------
start_kmock k -d
KB=$(kmock_brokers k)
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-kafka', 'orders', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$KB\",\"topic_template\":\"$T.orders\"}')" >/dev/null
write_rows orders 1 300
# A short shutdown timeout: a config change stops the old worker, which first
# tries to finish its in-flight batch until this deadline (section 5).
start_relay r1 --shutdown-timeout 3s
wait_until 20 '[ "$(health_status r1)" = degraded ]'
is "$(health_status r1)" degraded "brokers down at start: /health is degraded"
st=$(pipeline_status r1 orders-kafka)
like "$st" '"degraded_reason":"sink unavailable"' "/status names the sink as the reason"
like "$st" '"last_error":"sink: no broker answered' "/status shows why"
is "$(http_code r1 /health)" 503 "/health answers 503"
sleep 1
is "$(offset orders-kafka)" 0 "nothing acknowledged while the brokers are down"
ok "$([ "$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="orders-kafka",kind="sink"}')" -ge 1 ] && echo 0 || echo 1)" \
   "publish errors are counted"
kmock_cmd k up
wait_until 30 '[ "$(offset orders-kafka)" = 300 ]'
is "$(offset orders-kafka)" 300 "brokers up: the outbox offset reaches the last row"
is "$(records "$KB" "$T.orders")" 300 "300 records, no duplicate: nothing had been sent while down"
is "$(keys "$KB" "$T.orders" 300)" 300 "every event once"
wait_until 10 '[ "$(health_status r1)" = healthy ]'
is "$(health_status r1)" healthy "/health healthy again"

# --- 2. lost mid-stream ---------------------------------------------------------------
write_rows orders 301 4000 &
writer=$!
wait_until 30 '[ "$(offset orders-kafka)" -ge 1000 ]'
kmock_cmd k down
wait_until 20 '[ "$(health_status r1)" = degraded ]'
is "$(health_status r1)" degraded "brokers down mid-stream: degraded"
o1=$(offset orders-kafka); p1=$(published orders-kafka)
sleep 2
is "$(offset orders-kafka)" "$o1" "the offset does not move while the brokers are down"
is "$(published orders-kafka)" "$p1" "no confirmation while the brokers are down"
ok "$([ "$o1" -lt 4000 ] && echo 0 || echo 1)" "the outage happened mid-stream (offset $o1 of 4000)"
wait $writer
kmock_cmd k up
wait_until 40 '[ "$(offset orders-kafka)" = 4000 ]'
is "$(offset orders-kafka)" 4000 "recovered: every row acknowledged"
is "$(keys "$KB" "$T.orders" 4000)" 4000 "no loss: all 4000 dedup keys are in the topic"
dups=$(( $(records "$KB" "$T.orders") - 4000 ))
diag "duplicates after the outage: $dups"
ok "$([ "$dups" -le 1000 ] && echo 0 || echo 1)" "duplicates at most the batches in flight (<= 2 x 500)"
wait_until 10 '[ "$(health_status r1)" = healthy ]'
is "$(health_status r1)" healthy "healthy after recovery"

# --- 3. record-level broker error: the failed records are republished ----------------
e1=$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="orders-kafka",kind="sink"}')
kmock_cmd k "error 0 47 2"
write_rows orders 4001 4100
wait_until 20 '[ "$(offset orders-kafka)" = 4100 ]'
is "$(offset orders-kafka)" 4100 "records failed by the broker were retried and acknowledged"
ok "$([ "$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="orders-kafka",kind="sink"}')" -gt "$e1" ] && echo 0 || echo 1)" \
   "the failed delivery is counted as a sink error"
is "$(keys "$KB" "$T.orders" 4100)" 4100 "all 4100 events present"

# --- 4. fatal idempotence error: the producer is re-created ---------------------------
kmock_cmd k "error 0 45 1"
write_rows orders 4101 4200
wait_until 20 '[ "$(offset orders-kafka)" = 4200 ]'
is "$(offset orders-kafka)" 4200 "after a fatal producer error the batch is still delivered"
like "$(relay_log r1)" "fatal error .*OUT_OF_ORDER_SEQUENCE_NUMBER.*re-creating the producer" \
     "the fatal error is logged and the producer re-created"
is "$(keys "$KB" "$T.orders" 4200)" 4200 "all 4200 events present"

# --- 5. nothing listens at the bootstrap address --------------------------------------
NOWHERE=127.0.0.1:$(free_port)
sql "SELECT pgtrickle.enable_outbox('items')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('items-kafka', 'items', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$NOWHERE\",\"topic_template\":\"$T.items\"}')" >/dev/null
write_rows items 1 50
wait_until 20 '[ "$(pipeline_status r1 items-kafka | jq -r .healthy)" = false ]'
st=$(pipeline_status r1 items-kafka)
like "$st" '"degraded_reason":"sink unavailable"' "unreachable bootstrap address: degraded"
like "$(http_get r1 /health)" '"pipeline":"items-kafka"' "/health names the pipeline"
like "$st" "no broker answered" "the error says no broker answered"
sql "SELECT pgtrickle.set_relay_outbox('items-kafka', 'items', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$KB\",\"topic_template\":\"$T.items\"}')" >/dev/null
wait_until 30 '[ "$(offset items-kafka)" = 50 ]'
is "$(offset items-kafka)" 50 "after fixing brokers (hot reload) the events are delivered"
is "$(keys "$KB" "$T.items" 50)" 50 "all 50 events present"
# --- 6. the cluster does not know the topic ------------------------------------------
# Metadata requests for it answer UNKNOWN_TOPIC_OR_PART (as for a deleted
# topic on a cluster without auto-creation): nothing can be stored, so the
# sink is unavailable and nothing is acknowledged until the topic exists.
kmock_cmd k "topic-error $T.gone 3"
sql "SELECT pgtrickle.enable_outbox('gone')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('gone-kafka', 'gone', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$KB\",\"topic_template\":\"$T.gone\",\"message_timeout_ms\":2000,
       \"rdkafka\":{\"topic.metadata.propagation.max.ms\":500}}')" >/dev/null
write_rows gone 1 20
wait_until 20 '[ "$(pipeline_status r1 gone-kafka | jq -r .healthy)" = false ]'
st=$(pipeline_status r1 gone-kafka)
like "$st" '"degraded_reason":"sink unavailable"' "unknown topic: the pipeline is degraded"
like "$st" 'no record delivered: .*[Uu]nknown' "/status says the topic is unknown"
is "$(offset gone-kafka)" 0 "nothing acknowledged"
kmock_cmd k "topic-error $T.gone 0"
wait_until 40 '[ "$(offset gone-kafka)" = 20 ]'
is "$(offset gone-kafka)" 20 "once the topic exists the events are delivered"
is "$(keys "$KB" "$T.gone" 20)" 20 "all 20 in the topic"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
stop_kmock k
done_testing
