#!/usr/bin/env bash
# CDC documented behaviour and clear errors: a missing publication, a
# missing slot with create_slot false, a slot dropped behind the relay's
# back, a table without a primary key, a partitioned table published via its
# root, a tables filter naming a table the publication lacks, bad config.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
cdc_setup_db
OUT=$TEST_TMP/events.jsonl
last_error() { status_field r1 ".pipelines[] | select(.name == \"$1\") | .last_error"; }

sql "CREATE TABLE plain (v int);
     CREATE TABLE parts (id int, region text, v int, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
     CREATE TABLE parts_eu PARTITION OF parts FOR VALUES IN ('eu');
     CREATE TABLE parts_us PARTITION OF parts FOR VALUES IN ('us');
     CREATE PUBLICATION cdc_errors_pub FOR TABLE plain, parts WITH (publish_via_partition_root = true);" >/dev/null

# --- bad config is refused with the key named ---------------------------------------------------
cdc_pipeline bad-snap '{"publication":"cdc_errors_pub","slot":"cdc_errors_bad","snapshot":"sometimes"}' "$(file_sink "$OUT")"
cdc_pipeline bad-proto '{"publication":"cdc_errors_pub","slot":"cdc_errors_bad2","proto_version":2}' "$(file_sink "$OUT")"
cdc_pipeline bad-key '{"publication":"cdc_errors_pub","slot":"cdc_errors_bad3","tabels":["x"]}' "$(file_sink "$OUT")"
# --- runtime errors -----------------------------------------------------------------------------
cdc_pipeline no-pub '{"publication":"cdc_errors_nopub","slot":"cdc_errors_s1"}' "$(file_sink "$TEST_TMP/nopub.jsonl")"
cdc_pipeline no-slot '{"publication":"cdc_errors_pub","slot":"cdc_errors_s2","create_slot":false}' "$(file_sink "$TEST_TMP/noslot.jsonl")"
cdc_pipeline bad-filter '{"publication":"cdc_errors_pub","slot":"cdc_errors_s3","tables":["parts_eu"]}' "$(file_sink "$TEST_TMP/filter.jsonl")"
cdc_pipeline main '{"publication":"cdc_errors_pub","slot":"cdc_errors_main","heartbeat_interval":0}' "$(file_sink "$OUT")"
start_relay r1
wait_until 15 'slot_exists cdc_errors_main'
wait_until 15 '[ -n "$(last_error no-pub)" ] && [ "$(last_error no-pub)" != null ]'
log=$(relay_log r1)
like "$log" 'bad-snap.*source\.snapshot: expected "never" or "initial", got "sometimes"' "bad snapshot value names source.snapshot"
like "$log" 'bad-proto.*source\.proto_version: only protocol version 1 is supported' "proto_version other than 1 is refused, naming the key"
like "$log" 'bad-key.*source.*tabels' "an unknown key is named"
like "$(last_error no-pub)" 'source\.publication: publication "cdc_errors_nopub" does not exist in database "t_cdc_errors"' \
     "missing publication: a clear error in /status"
wait_until 10 '[ "$(last_error no-slot)" != null ]'
like "$(last_error no-slot)" 'source\.slot: replication slot "cdc_errors_s2" does not exist.*create_slot' \
     "missing slot with create_slot false: a clear error, no slot created"
check "no slot was created for it" bash -c "! slot_exists cdc_errors_s2 2>/dev/null"
wait_until 10 '[ "$(last_error bad-filter)" != null ]'
like "$(last_error bad-filter)" 'source\.tables: "parts_eu" is not a table of publication "cdc_errors_pub"' \
     "tables filter naming a table outside the publication: a clear error"
is "$(status_field r1 '.pipelines[] | select(.name == "no-pub") | .healthy')" false "/health reports the failing pipeline degraded"

# --- no primary key: inserts flow, PostgreSQL itself refuses UPDATE/DELETE ------------------------
like "$log" 'table public.plain has no primary key or replica identity' "a table without a key is named in a warning at start"
sql "INSERT INTO plain VALUES (1), (2)" >/dev/null
err=$(sql_error_text "UPDATE plain SET v = 3 WHERE v = 1")
like "$err" 'cannot update table "plain" because it does not have a replica identity' "PostgreSQL refuses the UPDATE (documented)"
wait_until 15 '[ "$(count_events "$OUT" "select(.source.table == \"plain\")")" -ge 2 ]'
is "$(events "$OUT" 'select(.source.table == "plain") | [.op, .payload.v, .old] | tostring' | tr '\n' ' ')" \
   '["insert",1,null] ["insert",2,null] ' "inserts of a key-less table are relayed"
sql "ALTER TABLE plain REPLICA IDENTITY FULL; UPDATE plain SET v = 3 WHERE v = 1" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.source.table == \"plain\" and .op == \"update\")")" -ge 1 ]'
is "$(events "$OUT" 'select(.source.table == "plain" and .op == "update") | [.old.v, .payload.v] | tostring')" '[1,3]' \
   "with REPLICA IDENTITY FULL its updates carry the old row"

# --- partitioned table via its root -----------------------------------------------------------
sql "INSERT INTO parts VALUES (1, 'eu', 10), (2, 'us', 20); UPDATE parts SET v = 11 WHERE id = 1" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.source.table == \"parts\")")" -ge 3 ]'
is "$(events "$OUT" 'select(.source.table | startswith("parts")) | [.subject, .payload.region] | tostring' | tr '\n' ' ')" \
   '["cdc.parts.insert","eu"] ["cdc.parts.insert","us"] ["cdc.parts.update","eu"] ' \
   "publish_via_partition_root: partition rows arrive under the root table's name"

# --- the slot is dropped behind the relay's back -----------------------------------------------
stop_relay r1
lsn_before=$(slot_lsn cdc_errors_main)
sql "SELECT pg_drop_replication_slot('cdc_errors_main')" >/dev/null
sql "INSERT INTO parts VALUES (3, 'eu', 30)" >/dev/null   # lost: committed while there is no slot
sql "SELECT pgtrickle.disable_relay(n) FROM unnest(ARRAY['bad-snap','bad-proto','bad-key','no-pub','no-slot','bad-filter']) n" >/dev/null
start_relay r2
wait_until 15 'slot_exists cdc_errors_main'
like "$(relay_log r2)" "ERROR.*replication slot cdc_errors_main was dropped while this pipeline used it: changes committed after $lsn_before that were not relayed by then are lost; recreating it" \
     "a dropped slot is reported as an error naming the LSN after which changes are lost, then recreated"
sql "INSERT INTO parts VALUES (4, 'us', 40)" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.payload.id == 4)")" -ge 1 ]'
is "$(count_events "$OUT" 'select(.payload.id == 4)')" 1 "streaming resumes on the recreated slot"
like "$(status_field r2 '.pipelines[] | select(.name == "main") | .last_error')" 'replication slot cdc_errors_main was dropped' \
     "the dropped slot is visible in /status"
stop_relay r2
# create_slot false after a drop: refuse, naming both facts
sql "SELECT pg_drop_replication_slot('cdc_errors_main')" >/dev/null
cdc_pipeline main '{"publication":"cdc_errors_pub","slot":"cdc_errors_main","create_slot":false}' "$(file_sink "$OUT")"
start_relay r3
wait_until 10 'grep -q "does not exist (it was dropped)" "$TEST_TMP/r3.log"'
like "$(relay_log r3)" 'source\.slot: replication slot "cdc_errors_main" does not exist \(it was dropped\)' \
     "with create_slot false a dropped slot stops the pipeline with a clear error"
stop_relay r3
done_testing
