#!/usr/bin/env bash
# Round trip: relay A's webhook sink (batch mode and per-event mode, signed,
# bearer token) posts to relay B's webhook receiver; every event lands in B's
# inbox exactly once, with A's dedup key as its event_id. Then B goes away
# (A retries, nothing lost), and A re-sends everything from offset 0: B's
# inbox stays exactly-once (the duplicates are skipped).
. "$(dirname "$0")/webhook_lib.sh"
setup_db
DB_A=$TEST_DB
DB_B=${TEST_DB}_b
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$DB_B\" WITH (FORCE)" >/dev/null
"${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$DB_B\"" >/dev/null
URL_B="postgresql://postgres@$PGT_PGHOST:$PGT_PGPORT/$DB_B"
"$RELAY_BIN" init --postgres-url "$URL_B" >>"$TEST_TMP/init.log" 2>&1 || bail "init of database B failed"
sql_b() { "${PSQL[@]}" -d "$DB_B" -c "$1"; }
export RT_TOKEN="rt-$RANDOM$RANDOM"
export RT_SECRET="rt-secret-$RANDOM"
PORT=$(free_port)

sql_b "SELECT pgtrickle.create_inbox('from_a')" >/dev/null
sql_b "SELECT pgtrickle.set_relay_inbox('recv', 'from_a', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$PORT\",
       \"auth_token\":\"\${env:RT_TOKEN}\",\"signing_secret\":\"\${env:RT_SECRET}\"}')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('orders'); SELECT pgtrickle.enable_outbox('items')" >/dev/null
sink() { # sink <path> <batch_mode>
    echo "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$PORT/inbox/$1\",\"batch_mode\":$2,
      \"signing_secret\":\"\${env:RT_SECRET}\",\"headers\":{\"Authorization\":\"Bearer \${env:RT_TOKEN}\"}}"
}
sql "SELECT pgtrickle.set_relay_outbox('to-b-batch', 'orders', NULL, '$(sink orders true)')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('to-b-each', 'items', NULL, '$(sink items false)')" >/dev/null

inbox_count() { sql_b "SELECT count(*) FROM pgtrickle.from_a"; }
RELAY_URL=$URL_B start_relay rb
wait_until 10 "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$PORT/inbox)\" = 405 ]"
write_rows orders 1 2000
write_rows items 1 300
start_relay ra
wait_until 40 '[ "$(inbox_count)" -ge 2300 ]'
is "$(inbox_count)" 2300 "2 300 events from A arrive in B's inbox"
want=$( { seq 1 2000 | sed 's/^/outbox_orders:/; s/$/:0/'; seq 1 300 | sed 's/^/outbox_items:/; s/$/:0/'; } | sort | md5sum)
is "$(sql_b "SELECT event_id FROM pgtrickle.from_a" | sort | md5sum)" "$want" "event_id = A's dedup key, each exactly once (batch and per-event mode)"
is "$(sql_b "SELECT count(*) FROM pgtrickle.from_a WHERE (payload->'payload'->>'n')::int = split_part(event_id, ':', 2)::int")" 2300 \
   "each row holds A's envelope for that event"
is "$(sql_b "SELECT string_agg(DISTINCT event_type, ' ' ORDER BY event_type) FROM pgtrickle.from_a")" "/inbox/items /inbox/orders" \
   "event_type falls back to the request path"
is "$(metric ra 'pgtrickle_relay_messages_published_total{pipeline="to-b-batch",sink="webhook"}')" 2000 "A: published counter (batch mode)"
is "$(metric ra 'pgtrickle_relay_messages_published_total{pipeline="to-b-each",sink="webhook"}')" 300 "A: published counter (per-event mode)"

# B goes away: A retries (connection refused), nothing is acknowledged, nothing lost.
stop_relay rb
write_rows orders 2001 2100
wait_until 10 'relay_log ra | grep -q "\[to-b-batch\] sink webhook unavailable"'
like "$(relay_log ra | grep -m1 '\[to-b-batch\] sink webhook unavailable')" "127.0.0.1 port $PORT" "A reports the endpoint unavailable while B is down"
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'to-b-batch'")" 2000 "A acknowledges nothing while B is down"
RELAY_URL=$URL_B start_relay rb2
wait_until 30 '[ "$(inbox_count)" -ge 2400 ]'
is "$(inbox_count)" 2400 "after B returns the 100 new events arrive"

# A forgets its offsets and re-sends everything: B stays exactly-once.
stop_relay ra
sql "UPDATE pgtrickle.relay_consumer_offsets SET last_change_id = 0" >/dev/null
start_relay ra2
wait_until 40 '[ "$(sql "SELECT min(last_change_id) FROM pgtrickle.relay_consumer_offsets")" = 300 ] && [ "$(sql "SELECT max(last_change_id) FROM pgtrickle.relay_consumer_offsets")" = 2100 ]'
is "$(metric ra2 'pgtrickle_relay_messages_published_total{pipeline="to-b-batch",sink="webhook"}')" 2100 "A re-sent all 2 100 batch-mode events"
wait_until 10 '[ "$(metric rb2 "pgtrickle_relay_dedup_skipped_total{pipeline=\"recv\"}")" = 2400 ]'
is "$(metric rb2 'pgtrickle_relay_dedup_skipped_total{pipeline="recv"}')" 2400 "B skipped all 2 400 re-sent events as duplicates"
is "$(inbox_count)" 2400 "B's inbox still holds each event exactly once"
is "$(sql_b "SELECT count(DISTINCT event_id) FROM pgtrickle.from_a")" 2400 "no duplicate event ids"

stop_relay ra2
is "$?" 0 "A exits 0 on SIGTERM"
stop_relay rb2
is "$?" 0 "B exits 0 on SIGTERM"
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$DB_B\" WITH (FORCE)" >/dev/null
done_testing
