#!/usr/bin/env bash
# Outbox -> RabbitMQ against the shared node, read back with python3-pika:
# every event lands once in a durable queue bound to a topic exchange, by the
# routing key its template renders, with message_id = dedup key, persistent
# delivery, content_type, type = op, timestamp, app_id, and the header
# pgtrickle-full-refresh on snapshot rows; the exchange declared by the
# relay (declare_exchange) or made by hand; the default exchange ("") routes
# by queue name; msgpack bodies; /status shows the sink.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
X=x_$RTAG        # declared by the relay
XM=xm_$RTAG      # made by hand (msgpack)
Q=q_$RTAG
QI=qi_$RTAG      # inserts only
QM=qm_$RTAG
QD=qd_$RTAG      # the default exchange routes to it by name
rmq declare-exchange "$X" topic   # the relay declares it again: same settings, no error
rmq declare-queue "$Q" --bind "$X" "$RTAG.#"
rmq declare-queue "$QI" --bind "$X" "$RTAG.orders.insert"
rmq declare-exchange "$XM" direct
rmq declare-queue "$QM" --bind "$XM" "mp"
rmq declare-queue "$QD"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-rmq', 'orders', NULL,
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"exchange\":\"$X\",\"declare_exchange\":true,
       \"routing_key_template\":\"$RTAG.{stream_table}.{op}\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-mp', 'orders', NULL,
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"exchange\":\"$XM\",\"exchange_type\":\"direct\",
       \"routing_key_template\":\"mp\",\"format\":\"msgpack\",\"persistent\":false}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-default', 'orders', NULL,
     '{\"type\":\"rabbitmq\",\"url\":\"$RMQ_URL\",\"exchange\":\"\",\"routing_key_template\":\"$QD\"}')" >/dev/null

write_rows orders 1 2000
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":2001}]', '[{\"n\":7}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"n\":1},{\"n\":2}]')" >/dev/null
TOTAL=2004   # 2001 inserts, 1 delete, 2 snapshot rows

start_relay r1
for p in orders-rmq orders-mp orders-default; do
    wait_until 60 "[ \"\$(metric r1 'pgtrickle_relay_messages_published_total{pipeline=\"$p\",sink=\"rabbitmq\"}')\" = $TOTAL ]"
    is "$(metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"$p\",sink=\"rabbitmq\"}")" "$TOTAL" \
       "$p: the relay confirmed all $TOTAL events"
done

rmq drain "$Q" >"$TEST_TMP/all.jsonl"
is "$(lines "$TEST_TMP/all.jsonl")" "$TOTAL" "the queue bound with $RTAG.# holds exactly $TOTAL messages"
is "$(jq -r .message_id "$TEST_TMP/all.jsonl" | sort -u | wc -l | tr -d ' ')" "$TOTAL" \
   "every message_id appears once: no duplicate, none lost"
is "$(jq -r 'select(.message_id != (.body | fromjson | .dedup_key)) | .message_id' "$TEST_TMP/all.jsonl" | wc -l | tr -d ' ')" 0 \
   "message_id = the envelope's dedup key"
is "$(jq -r '[.delivery_mode, .content_type, .app_id] | @tsv' "$TEST_TMP/all.jsonl" | sort -u)" \
   "2	application/json	pgtrickle-relay" "persistent (delivery_mode 2), application/json, app_id pgtrickle-relay"
is "$(jq -r '[.routing_key, .type] | @tsv' "$TEST_TMP/all.jsonl" | sort | uniq -c | tr -s ' ' | tr '\t' ' ')" \
   " 1 $RTAG.orders.delete delete
 2001 $RTAG.orders.insert insert
 2 $RTAG.orders.snapshot snapshot" "routing key from routing_key_template, type = op"
is "$(jq -r 'select(.type == "snapshot") | .headers["pgtrickle-full-refresh"]' "$TEST_TMP/all.jsonl" | sort | uniq -c | tr -s ' ')" \
   " 2 true" "snapshot rows carry the header pgtrickle-full-refresh: true"
is "$(jq -r 'select(.type != "snapshot") | .headers | length' "$TEST_TMP/all.jsonl" | sort -u)" 0 \
   "other messages carry no header"
now=$(date +%s)
is "$(jq -r --argjson now "$now" 'select(.timestamp < $now - 600 or .timestamp > $now + 5) | .message_id' "$TEST_TMP/all.jsonl" | wc -l | tr -d ' ')" 0 \
   "timestamp = publish time (seconds)"
is "$(jq -r 'select(.type == "insert") | .body | fromjson | .outbox_id' "$TEST_TMP/all.jsonl" | awk 'NR > 1 && $1 < last { bad++ } { last = $1 } END { print bad + 0 }')" 0 \
   "the queue holds the inserts in outbox order"
is "$(jq -c 'select(.message_id == "outbox_orders:5:0") | .body | fromjson | [.dedup_key, .subject, .op, .payload.n, .is_full_refresh]' "$TEST_TMP/all.jsonl")" \
   "[\"outbox_orders:5:0\",\"$RTAG.orders.insert\",\"insert\",5,false]" "the body is the native envelope, subject = routing key"
is "$(rmq_count "$QI")" 2001 "a binding on $RTAG.orders.insert gets only the 2001 inserts"

rmq drain "$QM" >"$TEST_TMP/mp.jsonl"
is "$(lines "$TEST_TMP/mp.jsonl")" "$TOTAL" "direct exchange made by hand: $TOTAL messages"
is "$(jq -r '[.delivery_mode, .content_type] | @tsv' "$TEST_TMP/mp.jsonl" | sort -u)" "1	application/msgpack" \
   "persistent false: delivery_mode 1; format msgpack: application/msgpack"
is "$(jq -r '.body_b64 // .body' "$TEST_TMP/mp.jsonl" | head -1 | base64 -d 2>/dev/null | head -c 1 | od -An -tx1 | tr -d ' ')" "86" \
   "the body is a 6-entry MessagePack map (seed 003 shape)"
is "$(rmq_count "$QD")" "$TOTAL" "the default exchange (\"\") routes by queue name"

st=$(pipeline_status r1 orders-rmq)
is "$(jq -r '.sink.exchange, .sink.exchange_type, .sink.connected, .sink.unconfirmed, .sink.returned' <<<"$st" | tr '\n' ' ')" \
   "$X topic true 0 0 " "/status shows the exchange, the connection, nothing unconfirmed or returned"
like "$(jq -r .sink.url <<<"$st")" "^amqp://guest@127\.0\.0\.1:[0-9]+/%2F$" "/status shows the URL without the password"
is "$(jq -r .sink.confirmed <<<"$st")" "$TOTAL" "/status counts $TOTAL publisher confirms"
is "$(health_status r1)" healthy "/health: healthy"
like "$(relay_log r1)" "connected to RabbitMQ 3\.[0-9.]+ at amqp://guest@127\.0\.0\.1" "the log names the broker and the URL"
stop_relay r1
for q in "$Q" "$QI" "$QM" "$QD"; do rmq delete-queue "$q"; done
for x in "$X" "$XM"; do rmq delete-exchange "$x"; done
done_testing
