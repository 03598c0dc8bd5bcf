#!/usr/bin/env bash
# Outbox -> Kafka against the shared mock cluster: every event lands once on
# the topic its template names, keyed by the dedup key (or key_template),
# with the pgtrickle-dedup-key and pgtrickle-full-refresh headers, spread
# over the topic's 4 partitions; compression, msgpack bodies, the rdkafka
# passthrough map, and a record the cluster refuses (dead-lettered, the
# pipeline goes on).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG   # topic prefix
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-kafka', 'orders', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.{stream_table}.{op}\"}')" >/dev/null
# A second pipeline on the same outbox: keyed by an entity field of the row,
# lz4, msgpack.
sql "SELECT pgtrickle.set_relay_outbox('orders-keyed', 'orders', NULL,
     '{\"type\":\"kafka\",\"brokers\":[\"$B\"],\"topic_template\":\"$T.keyed\",
       \"key_template\":\"{stream_table}/{payload.n}\",\"compression\":\"lz4\",\"linger_ms\":20,
       \"format\":\"msgpack\"}')" >/dev/null

write_rows orders 1 2000
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":2001}]', '[{\"n\":7}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"n\":1},{\"n\":2}]')" >/dev/null
TOTAL=2004   # 2001 inserts, 1 delete, 2 snapshot rows

start_relay r1
wait_until 30 '[ "$(metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"orders-kafka\",sink=\"kafka\"}")" = "$TOTAL" ]'
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="orders-kafka",sink="kafka"}')" "$TOTAL" \
   "the relay confirmed all $TOTAL events"

kafka_consume "$B" "$T.orders.insert,$T.orders.delete,$T.orders.snapshot" "$TOTAL" --timeout 5 >"$TEST_TMP/all.jsonl"
is "$(lines "$TEST_TMP/all.jsonl")" "$TOTAL" "the topics hold exactly $TOTAL records"
is "$(jq -r .key "$TEST_TMP/all.jsonl" | sort -u | wc -l | tr -d ' ')" "$TOTAL" "every dedup key appears once: no duplicate, none lost"
is "$(jq -r 'select(.key != .headers["pgtrickle-dedup-key"]) | .offset' "$TEST_TMP/all.jsonl" | wc -l)" 0 \
   "record key = header pgtrickle-dedup-key = the dedup key"
is "$(jq -r 'select(.topic | endswith(".orders.insert")) | .key' "$TEST_TMP/all.jsonl" | grep -c '^outbox_orders:[0-9]*:0$')" 2001 \
   "2001 inserts on {prefix}.orders.insert, keys {outbox_table}:{outbox_id}:{row_index}"
is "$(jq -r 'select(.topic | endswith(".orders.delete")) | [.key, (.value | fromjson | .payload.n)] | @tsv' "$TEST_TMP/all.jsonl")" \
   "outbox_orders:2001:1	7" "the deleted row goes to {prefix}.orders.delete"
is "$(jq -r 'select(.topic | endswith(".orders.snapshot")) | .headers["pgtrickle-full-refresh"]' "$TEST_TMP/all.jsonl" | sort | uniq -c | tr -s ' ')" \
   " 2 true" "full-refresh rows carry pgtrickle-full-refresh: true"
is "$(jq -r 'select(.topic | endswith(".orders.snapshot") | not) | .headers["pgtrickle-full-refresh"]' "$TEST_TMP/all.jsonl" | sort -u)" \
   "false" "other records carry pgtrickle-full-refresh: false"
is "$(jq -r 'select(.topic | endswith(".orders.insert")) | .partition' "$TEST_TMP/all.jsonl" | sort -u | tr '\n' ' ')" \
   "0 1 2 3 " "keyed by dedup key, the records spread over all 4 partitions"
is "$(jq -c 'select(.key == "outbox_orders:5:0") | .value | fromjson | [.dedup_key, .subject, .op, .payload.n, .is_full_refresh, .outbox_id]' "$TEST_TMP/all.jsonl")" \
   "[\"outbox_orders:5:0\",\"$T.orders.insert\",\"insert\",5,false,5]" "the value is the native envelope, subject = topic"
# Per-partition order follows the outbox order.
is "$(jq -r 'select(.topic | endswith(".orders.insert")) | [.partition, (.value | fromjson | .outbox_id)] | @tsv' "$TEST_TMP/all.jsonl" \
      | awk '{ if ($1 in last && $2 < last[$1]) bad++; last[$1] = $2 } END { print bad + 0 }')" 0 \
   "within each partition the records are in outbox order"

# key_template + compression + msgpack
kafka_consume "$B" "$T.keyed" "$TOTAL" --timeout 5 --hex >"$TEST_TMP/keyed.jsonl"
is "$(lines "$TEST_TMP/keyed.jsonl")" "$TOTAL" "key_template pipeline (lz4, msgpack) delivered $TOTAL records"
is "$(jq -r 'select(.headers["pgtrickle-dedup-key"] == "outbox_orders:42:0") | .key' "$TEST_TMP/keyed.jsonl")" "orders/42" \
   "key_template {stream_table}/{payload.n}: the key is rendered from the row"
is "$(jq -r '[.key, .partition] | @tsv' "$TEST_TMP/keyed.jsonl" | sort -u | cut -f1 | uniq -d | wc -l | tr -d ' ')" 0 \
   "records with the same key share one partition"
is "$(jq -r 'select(.key == "orders/7") | .partition' "$TEST_TMP/keyed.jsonl" | sort -u | wc -l | tr -d ' '),$(jq -r 'select(.key == "orders/7") | .key' "$TEST_TMP/keyed.jsonl" | wc -l | tr -d ' ')" \
   "1,2" "the delete of row n=7 follows its insert on the same partition"
ok "$([ "$(jq -r .partition "$TEST_TMP/keyed.jsonl" | sort -u | wc -l)" -gt 1 ] && echo 0 || echo 1)" \
   "different keys spread over partitions"
is "$(jq -r '.value_hex[0:2]' "$TEST_TMP/keyed.jsonl" | sort -u | tr '\n' ' ')" "86 " "format msgpack: every value is a 6-entry MessagePack map (seed 003 shape)"
is "$(jq -r '.headers["pgtrickle-dedup-key"]' "$TEST_TMP/keyed.jsonl" | sort -u | wc -l | tr -d ' ')" "$TOTAL" \
   "with a key template the dedup key is still in the header"

# --- a record the cluster refuses: dead-lettered, the pipeline goes on --------------
sql "SELECT pgtrickle.set_relay_outbox('big-kafka', 'orders', NULL,
     '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.big\",
       \"rdkafka\":{\"message.max.bytes\":2000,\"socket.keepalive.enable\":true}}')" >/dev/null
big=$(head -c 3000 /dev/zero | tr '\0' x)
sql "SELECT pgtrickle.outbox_write('orders', '[{\"big\":\"$big\"}]')" >/dev/null
write_rows orders 3001 3010
wait_until 30 '[ "$(metric r1 "pgtrickle_relay_dead_lettered_total{pipeline=\"big-kafka\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="big-kafka"}')" 1 "rdkafka message.max.bytes applies: the oversized record is dead-lettered"
like "$(sql "SELECT dedup_key || ' ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'big-kafka'")" \
     "^outbox_orders:2003:0 .*too large" "relay_dlq names the record and the error"
wait_until 20 '[ "$(metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"big-kafka\",sink=\"kafka\"}")" -ge $((TOTAL + 10)) ]'
kafka_consume "$B" "$T.big" $((TOTAL + 10)) --timeout 5 >"$TEST_TMP/big.jsonl"
is "$(lines "$TEST_TMP/big.jsonl")" $((TOTAL + 10)) "every other record of that pipeline was delivered"
is "$(jq -r 'select(.key == "outbox_orders:2003:0") | .offset' "$TEST_TMP/big.jsonl" | wc -l | tr -d ' ')" 0 "the refused record is not in the topic"
like "$(pipeline_status r1 orders-kafka)" '"healthy":true' "/status: pipeline healthy"
is "$(health_status r1)" healthy "/health: healthy"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
done_testing
