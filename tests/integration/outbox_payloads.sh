#!/usr/bin/env bash
# The three outbox payload shapes of real pg_trickle releases, inline deleted
# rows, claim-check rows, undecodable payloads (dead-lettered, pipeline goes
# on), subject templates, and a relay login that has only the
# pgtrickle_relay role plus rights on its outbox.
. "$(dirname "$0")/lib.sh"
setup_db
OUT=$TEST_TMP/events.jsonl
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "DROP ROLE IF EXISTS relay_login_op" >/dev/null
sql "CREATE ROLE relay_login_op LOGIN; GRANT pgtrickle_relay TO relay_login_op;
     GRANT SELECT ON pgtrickle.outbox_orders, pgtrickle.outbox_delta_rows_orders TO relay_login_op;
     GRANT EXECUTE ON FUNCTION pgtrickle.outbox_rows_consumed(text, bigint) TO relay_login_op" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL,
     '{\"type\":\"file\",\"output\":\"$OUT\",\"subject_template\":\"shop.{stream_table}.{op}.{outbox_id}\"}')" >/dev/null

# 1: NULL payload (pg_trickle v0.28/0.29 header row)
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, deleted_count, payload) VALUES (5, 2, NULL)" >/dev/null
# 2: bare array (pg_trickle v0.37+: current rows of the stream table)
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"id\":1},{\"id\":2}]')" >/dev/null
# 3: {"v":1} with inserted and deleted rows
sql "SELECT pgtrickle.outbox_write('orders', '[{\"id\":3},{\"id\":4}]', '[{\"id\":1}]')" >/dev/null
# 4: {"v":1,"full_refresh":true}
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (1, '{\"v\":1,\"full_refresh\":true,\"inserted\":[{\"id\":9}],\"deleted\":[]}')" >/dev/null
# 5: undecodable: unknown version
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (1, '{\"v\":7,\"rows\":[]}')" >/dev/null
# 6: claim-check through outbox_write (threshold lowered for this transaction)
sql "SET pg_trickle.outbox_inline_threshold_rows = 2; SELECT pgtrickle.outbox_write('orders', '[{\"id\":10},{\"id\":11},{\"id\":12}]', '[{\"id\":3}]')" >/dev/null
# 7: a plain row after all of that
sql "SELECT pgtrickle.outbox_write('orders', '[{\"id\":20}]')" >/dev/null

RELAY_URL="postgresql://relay_login_op@$PGT_PGHOST:$PGT_PGPORT/$TEST_DB" start_relay r1
wait_until 20 '[ "$(lines "$OUT")" -ge 12 ]'
is "$(lines "$OUT")" 12 "12 events from 7 outbox rows (one dead-lettered row produces none)"
ev() { jq -c "select(.outbox_id == $1) | [.op, .is_full_refresh, .payload, .dedup_key]" "$OUT" | tr '\n' ' '; }
is "$(ev 1)" '["refresh",false,{"inserted_count":5,"deleted_count":2},"outbox_orders:1:0"] ' "NULL payload -> one refresh event with the counts"
is "$(ev 2)" '["snapshot",true,{"id":1},"outbox_orders:2:0"] ["snapshot",true,{"id":2},"outbox_orders:2:1"] ' "array payload -> full-refresh snapshot events"
is "$(ev 3)" '["insert",false,{"id":3},"outbox_orders:3:0"] ["insert",false,{"id":4},"outbox_orders:3:1"] ["delete",false,{"id":1},"outbox_orders:3:2"] ' \
   "v1 payload -> inserted rows first, then deleted rows"
is "$(ev 4)" '["snapshot",true,{"id":9},"outbox_orders:4:0"] ' "v1 full_refresh -> snapshot events flagged is_full_refresh"
is "$(ev 6)" '["insert",false,{"id":10},"outbox_orders:6:0"] ["insert",false,{"id":11},"outbox_orders:6:1"] ["insert",false,{"id":12},"outbox_orders:6:2"] ["delete",false,{"id":3},"outbox_orders:6:3"] ' \
   "claim-check row streamed from the delta table"
is "$(jq -r 'select(.outbox_id == 7) | .subject' "$OUT")" "shop.orders.insert.7" "subject template with {outbox_id}"
is "$(sql "SELECT count(*) FROM pgtrickle.outbox_delta_rows_orders")" 0 "claim-check delta rows consumed (outbox_rows_consumed)"
is "$(sql "SELECT dedup_key || ' | ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'orders-file'")" \
   "outbox_orders:5:0 | undecodable outbox payload: unsupported version (expected \"v\": 1)" \
   "the undecodable payload is in relay_dlq, with its dedup key and reason"
is "$(sql "SELECT payload::text FROM pgtrickle.relay_dlq")" '{"v": 7, "rows": []}' "dead letter keeps the payload"
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="orders-file"}')" 1 "dead_lettered metric"
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets")" 7 "offset passed the dead-lettered row"
like "$(relay_log r1)" "dead-lettered" "a log line reports the dead letter"
stop_relay r1

# batch_size counts rows; events per batch are capped at 10 000 after the row
# that reaches it: 25 rows of 1 000 events with batch_size 500 are 3 batches
# (10 + 10 + 5 rows), not 1 batch of 25 000 events, nor 25 of one row each
BIG=$TEST_TMP/big.jsonl
sql "SELECT pgtrickle.enable_outbox('wide')" >/dev/null
sql "SELECT pgtrickle.outbox_write('wide', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 1000) g))
     FROM generate_series(1, 25)" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('wide-file', 'wide', NULL, '$(file_sink "$BIG")')" >/dev/null
sql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '500') WHERE name = 'wide-file'" >/dev/null
start_relay r2
wait_until 20 '[ "$(lines "$BIG")" -ge 25000 ]'
is "$(lines "$BIG")" 25000 "25 rows x 1 000 events relayed"
is "$(metric r2 'pgtrickle_relay_batches_total{pipeline="wide-file"}')" 3 \
   "in 3 batches of at most 10 000 events plus one row (batch_size 500 rows does not cap events at 500)"
stop_relay r2
done_testing
