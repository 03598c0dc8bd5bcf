#!/usr/bin/env bash
# Outbox -> NATS JetStream end to end against a real nats-server: every event
# arrives exactly once, in outbox order, with the rendered subject (values
# escaped to one token), Nats-Msg-Id = dedup key, Pgtrickle-Full-Refresh on
# full-refresh events only, and the native envelope (or MessagePack) as body.
# The stream is created by the sink (create_stream), the offset is committed,
# and the pipeline shows in /metrics, /health and /status.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
S=$(stream_name E2E)
SUBJ="t_$NATS_TAG"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('public.odd name.>*')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-nats', 'orders', NULL,
     '$(nats_sink "$S" "$SUBJ.{stream_table}.{op}" '"create_stream":true,"duplicate_window_seconds":300')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('odd-nats', 'public.odd name.>*', NULL,
     '$(nats_sink "$S" "$SUBJ.{stream_table}.{op}" '"create_stream":true,"duplicate_window_seconds":300')')" >/dev/null
# MessagePack bodies, to a stream made by hand
SM=$(stream_name MP)
natscli stream-add "$SM" "${SUBJ}_mp.>" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-mp', 'orders', NULL,
     '$(nats_sink "$SM" "${SUBJ}_mp.{op}" '"format":"msgpack"')')" >/dev/null

write_rows orders 1 1000
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"id\":1},{\"id\":2}]')" >/dev/null
sql "SELECT pgtrickle.outbox_write('orders', '[{\"id\":7}]', '[{\"id\":8}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, deleted_count, payload) VALUES (5, 2, NULL)" >/dev/null
sql "SELECT pgtrickle.outbox_write('public.odd name.>*', '[{\"z\":1}]')" >/dev/null
TOTAL=1006

start_relay r1
wait_until 30 '[ "$(stream_count "$S")" -ge $TOTAL ]'
sleep 0.5 # anything extra would show up now
is "$(stream_count "$S")" $TOTAL "every outbox event is in the stream, once"
natscli dump "$S" > "$TEST_TMP/dump.jsonl"
D=$TEST_TMP/dump.jsonl
is "$(jq -r '.headers["Nats-Msg-Id"]' "$D" | sort -u | wc -l | tr -d ' ')" $TOTAL "every Nats-Msg-Id is distinct"
is "$(jq -r 'select(.headers["Nats-Msg-Id"] != (.data | fromjson | .dedup_key)) | .seq' "$D" | wc -l | tr -d ' ')" 0 \
   "Nats-Msg-Id equals the envelope's dedup_key"
is "$(jq -r 'select(.subject != (.data | fromjson | .subject)) | .seq' "$D" | wc -l | tr -d ' ')" 0 \
   "the NATS subject equals the envelope's subject"
is "$(jq -r 'select(.subject == "'"$SUBJ"'.orders.insert") | .data | fromjson | .payload.n' "$D" | grep -v null \
      | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "1000:0" \
   "1000 inserts on <prefix>.orders.insert, in outbox order"
is "$(jq -r 'select(.headers["Nats-Msg-Id"] == "outbox_orders:1:0") | .data | fromjson | [.op, .outbox_id, .is_full_refresh, .payload.n] | @csv' "$D")" \
   '"insert",1,false,1' "native envelope: op, outbox_id, is_full_refresh, payload"
is "$(jq -r 'select(.headers["Pgtrickle-Full-Refresh"] == "true") | [.subject, (.data | fromjson | .op), (.data | fromjson | .is_full_refresh)] | @csv' "$D" | sort | tr '\n' ' ')" \
   "\"$SUBJ.orders.snapshot\",\"snapshot\",true \"$SUBJ.orders.snapshot\",\"snapshot\",true " \
   "Pgtrickle-Full-Refresh: true on exactly the two full-refresh events"
is "$(jq -r 'select(.headers | has("Pgtrickle-Full-Refresh") | not) | select(.data | fromjson | .is_full_refresh) | .seq' "$D" | wc -l | tr -d ' ')" 0 \
   "no full-refresh event lacks the header"
is "$(jq -r 'select(.data | fromjson | .payload.id == 8) | .subject' "$D")" "$SUBJ.orders.delete" "deleted rows go to {op} = delete"
is "$(jq -r 'select(.data | fromjson | .op == "refresh") | .subject' "$D")" "$SUBJ.orders.refresh" "a header-only outbox row is one refresh event"
is "$(jq -r 'select(.data | fromjson | .payload.z == 1) | .subject' "$D")" "$SUBJ.odd%20name%2E%3E%2A.insert" \
   "a stream table name with ' ', '.', '>' and '*' is escaped to one token"
is "$(natscli stream-info "$S" | jq -r .duplicate_window_ms)" 300000 "create_stream made the stream with the configured duplicate window"

wait_until 10 '[ "$(stream_count "$SM")" -ge 1005 ]'
is "$(stream_count "$SM")" 1005 "the msgpack pipeline delivered the same events"
natscli dump "$SM" > "$TEST_TMP/mp.jsonl"
is "$(jq -r '.data_hex[0:2]' "$TEST_TMP/mp.jsonl" | sort -u)" "86" "msgpack bodies: a 6-entry map (seed 003 shape)"
like "$(jq -r 'select(.seq == 1) | .data_hex' "$TEST_TMP/mp.jsonl")" "$(printf 'INSERT' | od -An -tx1 | tr -d ' \n')" \
   "msgpack body carries the upper-case operation"

last=$(sql "SELECT max(id) FROM pgtrickle.outbox_orders")
wait_until 10 '[ "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '"'orders-nats'"'")" = "$last" ]'
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'orders-nats'")" "$last" \
   "the outbox offset is committed after the PubAcks"
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="orders-nats",sink="nats"}')" 1005 "published counter"
is "$(metric r1 'pgtrickle_relay_pipeline_healthy{pipeline="orders-nats"}')" 1 "pipeline healthy in /metrics"
is "$(http_code r1 /health)" 200 "/health is 200"
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "orders-nats") | [.sink.type, .healthy, .counters.published] | @csv')" \
   '"nats",true,1005' "/status shows the nats sink, healthy, with its counter"
like "$(relay_log r1)" "created JetStream stream \"$S\"" "the stream creation is logged"

# More events later: still once each, woken by NOTIFY.
write_rows orders 1001 1100
wait_until 10 '[ "$(stream_count "$S")" -ge $((TOTAL + 100)) ]'
sleep 0.3
is "$(stream_count "$S")" $((TOTAL + 100)) "events written while running arrive once"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
done_testing
