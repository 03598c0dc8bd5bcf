#!/usr/bin/env bash
# CDC -> Redis Streams against a private redis-server (so the default stream
# keys, which carry no test prefix, cannot meet another test's): with no
# stream_key the entries land on cdc:{schema}.{table}, subject
# cdc.{table}.{op}, dedup_key {commit_lsn}:{index}; a COPY of 300 rows is
# 300 entries with 300 distinct dedup keys; the slot's confirmed_flush_lsn
# advances once the XADDs are confirmed.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/redis_lib.sh"
trap '_redis_cleanup; _cdc_cleanup' EXIT
cdc_setup_db
SLOT=cdc_redis_slot_$$
start_private_redis CDC
export RCLI_PORT=$(priv_redis_port CDC)
sql "CREATE TABLE items (id int PRIMARY KEY, name text);
CREATE TABLE bulk (id int PRIMARY KEY, v text);
CREATE PUBLICATION cdc_redis_pub FOR TABLE items, bulk;" >/dev/null
cdc_pipeline items-redis "{\"publication\":\"cdc_redis_pub\",\"slot\":\"$SLOT\"}" \
    "{\"type\":\"redis\",\"url\":\"redis://127.0.0.1:$RCLI_PORT\"}"
start_relay r1
wait_until 15 'slot_exists $SLOT'
wait_until 15 '[ "$(status_field r1 ".pipelines[0].source.position.phase")" = streaming ]'

sql "INSERT INTO items VALUES (1, 'a'), (2, 'b'); UPDATE items SET name = 'c' WHERE id = 1; DELETE FROM items WHERE id = 2;" >/dev/null
sql "COPY bulk FROM PROGRAM 'seq 1 300 | sed \"s/\$/\t v/\"'" >/dev/null
wait_until 20 '[ "$(xlen cdc:public.items)" -ge 4 ] && [ "$(xlen cdc:public.bulk)" -ge 300 ]'
is "$(xlen cdc:public.items):$(xlen cdc:public.bulk)" "4:300" "default stream keys cdc:{schema}.{table}: 4 and 300 entries"
entries cdc:public.items > "$TEST_TMP/items.jsonl"
is "$(jq -r '[.op, .subject] | join(" ")' "$TEST_TMP/items.jsonl" | tr '\n' ',')" \
   "insert cdc.items.insert,insert cdc.items.insert,update cdc.items.update,delete cdc.items.delete," \
   "ops and default subjects cdc.{table}.{op}, in commit order"
like "$(jq -r .dedup_key "$TEST_TMP/items.jsonl" | head -1)" '^[0-9A-F]+/[0-9A-F]+:0$' "dedup_key {commit_lsn}:{index}"
is "$(jq -r 'select(.dedup_key != (.payload | fromjson | .dedup_key)) | .id' "$TEST_TMP/items.jsonl" | wc -l | tr -d ' ')" 0 \
   "the dedup_key field equals the envelope's"
is "$(entries cdc:public.bulk | jq -r .dedup_key | sort -u | wc -l | tr -d ' ')" 300 "COPY of 300 rows: 300 distinct dedup keys"
lsn=$(sql "SELECT pg_current_wal_lsn()")
wait_until 20 'lsn_ge "$(slot_lsn $SLOT)" "$lsn"'
check "the slot's confirmed_flush_lsn advances past the changes once they are confirmed" lsn_ge "$(slot_lsn $SLOT)" "$lsn"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
