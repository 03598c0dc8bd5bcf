#!/usr/bin/env bash
# Outbox -> Redis Streams end to end against a real redis-server, read back
# with redis-cli: every event is one entry, once, in outbox order, on the
# rendered stream key, with the fields dedup_key, subject, op, payload (the
# native envelope) and full_refresh on full-refresh events only; maxlen trims
# the stream (MAXLEN ~); msgpack bodies; the offset is committed; metrics,
# /health and /status show the sink; the flat config form works.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
P=$REDIS_PREFIX
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('public.odd name.>*')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-redis', 'orders', NULL, '$(redis_sink "$P:{stream_table}")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('odd-redis', 'public.odd name.>*', NULL, '$(redis_sink "$P:{stream_table}")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-trim', 'orders', NULL, '$(redis_sink "$P:trim" '"maxlen":100')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-mp', 'orders', NULL, '$(redis_sink "$P:mp" '"format":"msgpack"')')" >/dev/null
# the README's flat form: redis_url, redis_stream
sql "SELECT pgtrickle.set_relay_outbox('orders-flat', config => '{\"stream_table\":\"orders\",\"sink_type\":\"redis\",
     \"redis_url\":\"$REDIS_URL\",\"redis_stream\":\"$P:flat:{stream_table}\"}')" >/dev/null

write_rows orders 1 1000
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"id\":1},{\"id\":2}]')" >/dev/null
sql "SELECT pgtrickle.outbox_write('orders', '[{\"id\":7}]', '[{\"id\":8}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, deleted_count, payload) VALUES (5, 2, NULL)" >/dev/null
sql "SELECT pgtrickle.outbox_write('public.odd name.>*', '[{\"z\":1}]')" >/dev/null
TOTAL=1005

start_relay r1
K="$P:orders"
wait_until 30 '[ "$(xlen "$K")" -ge $TOTAL ]'
sleep 0.5 # anything extra would show up now
is "$(xlen "$K")" $TOTAL "every outbox event is one entry of $K, once"
entries "$K" > "$TEST_TMP/e.jsonl"
E=$TEST_TMP/e.jsonl
is "$(jq -r .dedup_key "$E" | sort -u | wc -l | tr -d ' ')" $TOTAL "every dedup_key is distinct"
is "$(jq -r 'select(.dedup_key != (.payload | fromjson | .dedup_key)) | .id' "$E" | wc -l | tr -d ' ')" 0 \
   "the dedup_key field equals the envelope's dedup_key"
is "$(jq -r 'select(.subject != (.payload | fromjson | .subject)) | .id' "$E" | wc -l | tr -d ' ')" 0 \
   "the subject field equals the envelope's subject"
is "$(jq -r 'select(.op != (.payload | fromjson | .op)) | .id' "$E" | wc -l | tr -d ' ')" 0 \
   "the op field equals the envelope's op"
is "$(jq -c 'keys' "$E" | sort -u | tr '\n' ' ')" '["dedup_key","full_refresh","id","op","payload","subject"] ["dedup_key","id","op","payload","subject"] ' \
   "entries carry exactly dedup_key, subject, op, payload (+ full_refresh)"
is "$(jq -r 'select(.subject == "pgtrickle.orders.insert") | .payload | fromjson | .payload.n' "$E" | grep -v null \
      | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "1000:0" \
   "1000 inserts with the default subject pgtrickle.orders.insert, in outbox order"
is "$(jq -r 'select(.dedup_key == "outbox_orders:1:0") | [.op, (.payload | fromjson | .outbox_id, .is_full_refresh, .payload.n)] | @csv' "$E")" \
   '"insert",1,false,1' "native envelope: op, outbox_id, is_full_refresh, payload"
is "$(jq -r 'select(.full_refresh == "true") | [.op, (.payload | fromjson | .is_full_refresh)] | @csv' "$E" | tr '\n' ' ')" \
   '"snapshot",true "snapshot",true ' "full_refresh = true on exactly the two full-refresh events"
is "$(jq -r 'select(.payload | fromjson | .payload.id == 8) | .op' "$E")" "delete" "deleted rows are op delete"
is "$(jq -r 'select(.op == "refresh") | .subject' "$E")" "pgtrickle.orders.refresh" "a header-only outbox row is one refresh event"
is "$(jq -r '.id' "$E" | sort -t- -k1,1n -k2,2n -c && echo sorted)" sorted "entry ids increase"

wait_until 10 '[ "$(xlen "$P:odd%20name%2E%3E%2A")" -ge 1 ]'
is "$(xlen "$P:odd%20name%2E%3E%2A")" 1 "a stream table name with ' ', '.', '>' and '*' is escaped in the key"

wait_until 20 '[ "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '"'orders-trim'"'")" = "$(sql "SELECT max(id) FROM pgtrickle.outbox_orders")" ]'
n=$(xlen "$P:trim")
ok "$([ "$n" -ge 100 ] && [ "$n" -lt 1005 ]; echo $?)" "maxlen 100 trims the stream (MAXLEN ~): $n entries left of 1005"
is "$(rcli --json XREVRANGE "$P:trim" + - COUNT 1 | jq -r '.[0][1] as $f | [range(0; $f | length; 2) as $i | {key: $f[$i], value: $f[$i + 1]}] | from_entries | .op')" \
   refresh "the newest entry is kept"

wait_until 20 '[ "$(xlen "$P:mp")" -ge $TOTAL ] && [ "$(xlen "$P:flat:orders")" -ge $TOTAL ]'
is "$(xlen "$P:flat:orders")" $TOTAL "the flat form (redis_url, redis_stream) relays the same events"
is "$(xlen "$P:mp")" $TOTAL "the msgpack pipeline delivered the same events"
is "$(rcli --raw XRANGE "$P:mp" - + COUNT 1 | sed -n 9p | head -c 1 | od -An -tx1 | tr -d ' ')" 86 \
   "msgpack payload: a 6-entry map (seed 003 shape)"

last=$(sql "SELECT max(id) FROM pgtrickle.outbox_orders")
wait_until 10 '[ "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '"'orders-redis'"'")" = "$last" ]'
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'orders-redis'")" "$last" \
   "the outbox offset is committed after every XADD reply"
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="orders-redis",sink="redis"}')" $TOTAL "published counter"
is "$(metric r1 'pgtrickle_relay_pipeline_healthy{pipeline="orders-redis"}')" 1 "pipeline healthy in /metrics"
is "$(http_code r1 /health)" 200 "/health is 200"
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "orders-redis") | [.sink.type, .healthy, .counters.published, .sink.added, .sink.connected, .sink.url] | @csv')" \
   "\"redis\",true,$TOTAL,$TOTAL,true,\"redis://127.0.0.1:$REDIS_PORT/0\"" "/status shows the redis sink, healthy, with its counters"
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "orders-redis") | .sink.last_entry_id')" \
   "$(jq -r .id "$E" | tail -1)" "/status shows the last entry id"

# More events later: still once each, woken by NOTIFY.
write_rows orders 1001 1100
wait_until 10 '[ "$(xlen "$K")" -ge $((TOTAL + 100)) ]'
sleep 0.3
is "$(xlen "$K")" $((TOTAL + 100)) "events written while running arrive once"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
done_testing
