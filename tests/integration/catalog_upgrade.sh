#!/usr/bin/env bash
# Catalog upgrades: `pgtrickle-relay init` upgrades an older catalog in place
# (issue 19). The oldest catalog users may run is version 1, kept verbatim in
# tests/fixtures/catalog-v1/ (sql/001-005 as of commit 9d3948d). This test
# installs it the way the version-1 `init` did, fills it the way a version-1
# deployment would (pipelines of every kind, simple and consumer-group
# offsets, dead letters, inbox rows, all through the version-1 functions and
# the version-1 inbox INSERT), runs the new `init`, and checks that
#   - every pipeline config, offset, dead letter, inbox row and outbox row is
#     preserved exactly, and the catalog reports the new version;
#   - the old runtime role lost the setters, and init said so in a WARNING
#     (sql/007_roles.sql); a second init is quiet;
#   - a relay started on the upgraded catalog, as the old runtime login,
#     resumes where the old one stopped: the outbox pipelines continue after
#     their committed offsets (simple and group mode), the reverse file
#     pipeline after its byte offset, and an old dead letter replays.
#
# EVERY LATER CATALOG CHANGE ADDS ITS STEP HERE: when a sql/ file changes what
# is stored (a new column, a new table, a changed function signature, a new
# grant), fill the new object in the "version 1 deployment" section where a
# version-1 user could have data for it, and assert in "after the upgrade"
# that the data survived and the new object works on an upgraded catalog
# (bump EXPECTED_VERSION with RELAY_CATALOG_VERSION). docs/install.md,
# "Upgrading", says the same.
. "$(dirname "$0")/lib.sh"
FIXTURE=$(cd "$(dirname "$0")/../fixtures/catalog-v1" && pwd)
EXPECTED_VERSION=4            # RELAY_CATALOG_VERSION (src/catalog.h)
OLD=t_catalog_upgrade_v1      # the version-1 deployment's runtime login

"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$TEST_DB\" WITH (FORCE)" \
    -c "CREATE DATABASE \"$TEST_DB\"" >/dev/null
"${PSQL[@]}" -d postgres -c "DROP ROLE IF EXISTS $OLD" >/dev/null 2>&1
"${PSQL[@]}" -d postgres -c "CREATE ROLE $OLD LOGIN" >/dev/null 2>&1 || true
trap '"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$TEST_DB\" WITH (FORCE)" -c "DROP ROLE IF EXISTS $OLD" >/dev/null 2>&1; _cleanup' EXIT

# --- version 1: the catalog, as the version-1 init installed it --------------------
# (every file in name order, in one transaction, notices above warning hidden)
{ echo "SET LOCAL client_min_messages = warning;"; cat "$FIXTURE"/0*.sql; } |
    "${PSQL[@]}" -d "$TEST_DB" --single-transaction >"$TEST_TMP/v1.log" 2>&1
is "$?" 0 "the version-1 catalog installs from tests/fixtures/catalog-v1"
is "$(sql "SELECT pgtrickle.relay_catalog_version()")" 1 "it reports catalog version 1"

# --- a version-1 deployment's data ---------------------------------------------------
sql "GRANT pgtrickle_relay TO $OLD" >/dev/null
# setup steps must not fail silently: a failed one bails out
as_old() { sql_as "$OLD" "$1" >/dev/null || bail "as $OLD: $1"; }
setup() { sql "$1" >/dev/null || bail "$1"; }
A=$TEST_TMP/a.jsonl G=$TEST_TMP/g.jsonl IN=$TEST_TMP/commands.jsonl
setup "CREATE TABLE users (id int PRIMARY KEY, name text)"
setup "SELECT pgtrickle.enable_outbox('orders')"
# In version 1 the runtime role could still configure pipelines: the old
# deployment's login did (this is what the upgrade takes away).
sql_as "$OLD" "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL, '$(file_sink "$A")')" >/dev/null
ok $? "version 1: the runtime login may call set_relay_outbox"
as_old "SELECT pgtrickle.set_relay_outbox('orders-group', 'orders', 'grp', '$(file_sink "$G")')"
setup "SELECT pgtrickle.create_inbox('commands')"
as_old "SELECT pgtrickle.set_relay_inbox('commands-in', 'commands', '{\"type\":\"file\",\"input\":\"$IN\"}')"
as_old "SELECT pgtrickle.set_relay_cdc('users-cdc', '{\"source\":{\"publication\":\"users_pub\",\"slot\":\"users_slot\"},\"sink\":{\"type\":\"stdout\"}}')"
as_old "SELECT pgtrickle.disable_relay('users-cdc')" >/dev/null   # kept, not run here
write_rows orders 1 10
id_of() { sql "SELECT id FROM pgtrickle.outbox_orders WHERE payload->'inserted'->0->>'n' = '$1'"; }
# The old relay delivered rows 1-6 (simple mode) and 1-4 (group mode) ...
as_old "SELECT pgtrickle.relay_commit_offset('default', 'orders-file', $(id_of 6), 'old-host:1')"
as_old "SELECT pgtrickle.create_consumer_group('grp', 'outbox_orders', 'earliest')"
as_old "SELECT count(*) FROM pgtrickle.poll_outbox('grp', 'orders-group', 4, 30)"
as_old "SELECT pgtrickle.commit_offset('grp', 'orders-group', $(id_of 4))"
# ... wrote 3 commands to the inbox with its INSERT and stored the byte
# offset after them ...
for i in 1 2 3 4 5; do printf '{"dedup_key":"cmd-%d","event_type":"ship","payload":{"order":%d}}\n' "$i" "$i"; done >"$IN"
off3=$(head -n 3 "$IN" | wc -c)
for i in 1 2 3; do
    as_old "INSERT INTO pgtrickle.commands (event_id, event_type, source, aggregate_id, trace_id, payload)
            VALUES ('cmd-$i', 'ship', 'file', NULL, NULL, '{\"order\":$i}') ON CONFLICT (event_id) DO NOTHING"
done
as_old "SELECT pgtrickle.relay_commit_offset('default', 'commands-in', $off3, 'old-host:1')"
# ... and dead-lettered two events (both version-1 forms).
as_old "SELECT pgtrickle.relay_dead_letter('orders-file', 'outbox_orders:999:0', 'pgtrickle.orders.insert',
        '{\"n\":999}', 'sink refused it', 'insert')"
as_old "SELECT pgtrickle.relay_dead_letter('orders-file', 'outbox_orders:998:0', NULL, '{\"n\":998}', 'older form')"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq")" 2 "version 1: two dead letters"

snapshot() {   # everything a deployment keeps, as text
    sql "SELECT name, pgtrickle.get_relay_config(name)::text FROM
           (SELECT name FROM pgtrickle.relay_outbox_config UNION SELECT name FROM pgtrickle.relay_inbox_config) n
         ORDER BY name"
    sql "SELECT direction, name, enabled, config::text FROM pgtrickle.list_relay_configs() ORDER BY 1, 2"
    sql "SELECT relay_group_id, pipeline_id, last_change_id, worker_id FROM pgtrickle.relay_consumer_offsets ORDER BY 1, 2"
    sql "SELECT group_name, consumer_id, committed_offset FROM pgtrickle.pgt_consumer_offsets ORDER BY 1, 2"
    sql "SELECT group_name, outbox_name, auto_offset_reset FROM pgtrickle.pgt_consumer_groups ORDER BY 1"
    sql "SELECT id, pipeline, dedup_key, subject, payload::text, error, op, replayed_at IS NULL
           FROM pgtrickle.relay_dlq ORDER BY id"
    sql "SELECT event_id, event_type, source, payload::text FROM pgtrickle.commands ORDER BY event_id"
    sql "SELECT id, payload::text FROM pgtrickle.outbox_orders ORDER BY id"
    sql "SELECT stream_table_name, outbox_table_name, retention_hours FROM pgtrickle.pgt_outbox_config ORDER BY 1"
    sql "SELECT inbox_name, inbox_schema, max_retries, with_dead_letter FROM pgtrickle.pgt_inbox_config ORDER BY 1"
}
snapshot >"$TEST_TMP/before.txt"

# --- the upgrade -------------------------------------------------------------------
err=$("$RELAY_BIN" --postgres-url "$DB_URL" --metrics-addr "127.0.0.1:$(free_port)" 2>&1)
is "$?" 1 "before init, the new relay refuses the version-1 catalog (exit 1)"
like "$err" "catalog is version 1 but this binary needs $EXPECTED_VERSION: run .pgtrickle-relay init." \
    "naming the versions and init"
"$RELAY_BIN" init --postgres-url "$DB_URL" >"$TEST_TMP/init.log" 2>&1
is "$?" 0 "the new init upgrades the version-1 catalog"
is "$(sql "SELECT pgtrickle.relay_catalog_version()")" "$EXPECTED_VERSION" \
    "it reports catalog version $EXPECTED_VERSION"
like "$(cat "$TEST_TMP/init.log")" "WARNING.*pgtrickle_relay may no longer call.*set_relay_outbox" \
    "init warns that the runtime role lost the setters"
snapshot >"$TEST_TMP/after.txt"
if diff -u "$TEST_TMP/before.txt" "$TEST_TMP/after.txt" >"$TEST_TMP/diff.txt"; then
    pass "every config, offset, dead letter, inbox row and outbox row is preserved"
else
    fail "every config, offset, dead letter, inbox row and outbox row is preserved"
    diag "$(cat "$TEST_TMP/diff.txt")"
fi
# 4 configs twice, 2 offsets, 1 group offset, 1 group, 2 dead letters,
# 3 inbox rows, 10 outbox rows, 1 outbox config, 1 inbox config
is "$(wc -l <"$TEST_TMP/before.txt")" 29 "(the snapshot compared holds the 29 rows written above)"

# the old runtime login: no setter any more, the runtime calls still work
err=$(sql_as "$OLD" "SELECT pgtrickle.set_relay_outbox('x', 'orders', NULL, '{\"type\":\"stdout\"}')" 2>&1 >/dev/null)
like "$err" "permission denied for function set_relay_outbox" "the old runtime login may no longer call set_relay_outbox"
err=$(sql_as "$OLD" "SELECT pgtrickle.delete_relay('orders-file')" 2>&1 >/dev/null)
like "$err" "permission denied" "nor delete_relay"
is "$(sql_as "$OLD" "SELECT count(*) FROM pgtrickle.list_relay_configs()")" 4 "it still reads the pipelines"

"$RELAY_BIN" init --postgres-url "$DB_URL" >"$TEST_TMP/init2.log" 2>&1
is "$?:$(grep -c WARNING "$TEST_TMP/init2.log")" "0:0" "a second init succeeds without a warning"
snapshot >"$TEST_TMP/after2.txt"
check "and changes nothing" cmp -s "$TEST_TMP/before.txt" "$TEST_TMP/after2.txt"

# --- the relay resumes where the old one stopped ---------------------------------------
RELAY_URL="postgresql://$OLD@$PGT_PGHOST:$PGT_PGPORT/$TEST_DB" start_relay r1
check "a relay runs on the upgraded catalog as the old runtime login" \
    wait_until 20 "[ \"\$(http_get r1 /health | jq .pipelines_owned)\" = 3 ]"
wait_until 20 "[ \$(wc -l <$A 2>/dev/null || echo 0) -ge 4 ]"
is "$(jq -r .payload.n "$A" 2>/dev/null | tr '\n' ' ')" "7 8 9 10 " \
    "simple mode: the outbox pipeline continues after its offset (rows 7-10, not 1-6)"
wait_until 20 "[ \$(wc -l <$G 2>/dev/null || echo 0) -ge 6 ]"
is "$(jq -r .payload.n "$G" 2>/dev/null | tr '\n' ' ')" "5 6 7 8 9 10 " \
    "group mode: the consumer group continues after its committed offset (rows 5-10)"
write_rows orders 11 12
check "rows written after the upgrade follow" \
    wait_until 20 "[ \"\$(jq -r .payload.n $A | tail -n 1)\" = 12 ]"
check "the reverse pipeline writes the commands the old relay had not read" \
    wait_until 20 "[ \"\$(sql 'SELECT count(*) FROM pgtrickle.commands')\" = 5 ]"
rev=$(http_get r1 /status | jq -c '.pipelines[] | select(.name == "commands-in") | .counters | [.consumed, .dedup_skipped]')
is "$rev" "[2,0]" "it resumed at the stored byte offset: 2 lines read, none again"
is "$(sql "SELECT string_agg(event_id, ' ' ORDER BY event_id) FROM pgtrickle.commands")" \
    "cmd-1 cmd-2 cmd-3 cmd-4 cmd-5" "the inbox holds every command once"

# an old dead letter (no raw columns: written before version 2) replays
is "$(sql "SELECT pgtrickle.relay_dlq_replay('orders-file')")" 2 "a pipeline manager replays the old dead letters"
check "they arrive with their dedup keys and payloads" \
    wait_until 20 "[ \"\$(jq -r 'select(.dedup_key == \"outbox_orders:999:0\" or .dedup_key == \"outbox_orders:998:0\") | .payload.n' $A | sort | tr '\n' ' ')\" = '998 999 ' ]"
# catalog version 4 (sql/009_backfills.sql): backfills work on the upgraded
# catalog, for the pipeline managers only; the old runtime login reads them
setup "CREATE PUBLICATION users_pub FOR TABLE users"
bid=$(sql "SELECT pgtrickle.request_backfill('users-cdc', 'users')")
is "$bid" 1 "version 4: a pipeline manager requests a backfill of an old CDC pipeline"
is "$(sql_as "$OLD" "SELECT pipeline || ' ' || table_name || ' ' || state FROM pgtrickle.relay_backfills")" \
    "users-cdc public.users queued" "the old runtime login reads relay_backfills (queued: the pipeline is disabled)"
err=$(sql_as "$OLD" "SELECT pgtrickle.request_backfill('users-cdc', 'users')" 2>&1 >/dev/null)
like "$err" "permission denied for function request_backfill" "but may not request one"
is "$(sql "SELECT pgtrickle.cancel_backfill($bid)")" t "the manager cancels it"
stop_relay r1
is "$?" 0 "the relay stops cleanly"
is "$(grep -c '"n": *\(1\|2\|3\|4\|5\|6\)[,}]' "$A")" 0 "no row the old relay had delivered was sent again"
done_testing
