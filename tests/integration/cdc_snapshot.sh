#!/usr/bin/env bash
# snapshot "initial" while the tables are being written: the snapshot rows
# (from the slot's exported snapshot) plus the live events rebuild exactly
# the final table; keyset pagination on single and composite primary keys, a
# cursor for a table without one; a crash in the middle of the snapshot
# leaves no slot behind and the next start snapshots again; a restart after
# the snapshot does not redo it.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
cdc_setup_db
OUT=$TEST_TMP/events.jsonl
SLOT=cdc_snapshot_slot

sql "CREATE TABLE acct (id int PRIMARY KEY, bal int NOT NULL, note text);
     INSERT INTO acct SELECT g, g % 100, 'n' || g FROM generate_series(1, 20000) g;
     CREATE TABLE comp (a int, b text, v int, PRIMARY KEY (a, b));
     INSERT INTO comp SELECT g / 3, 'k' || (g % 3), g FROM generate_series(0, 2999) g;
     CREATE TABLE nopk (v int);
     INSERT INTO nopk SELECT generate_series(1, 1000);
     CREATE SCHEMA \"x.y\"; CREATE TABLE \"x.y\".t (id int PRIMARY KEY); INSERT INTO \"x.y\".t VALUES (1);
     CREATE SCHEMA x; CREATE TABLE x.\"y.t\" (id int PRIMARY KEY); INSERT INTO x.\"y.t\" VALUES (1);
     CREATE PUBLICATION cdc_snapshot_pub FOR TABLE acct, comp, nopk, \"x.y\".t, x.\"y.t\" WITH (publish = 'insert, update, delete, truncate');" >/dev/null

writer() {  # writer <from> <to>: concurrent writes to acct, ~10 ms apart
    for i in $(seq "$1" "$2"); do
        echo "UPDATE acct SET bal = bal + 1000, note = 'u$i' WHERE id = $(( (i * 37) % 20000 + 1 ));"
        echo "INSERT INTO acct VALUES ($(( 100000 + i )), $i, 'new$i');"
        echo "DELETE FROM acct WHERE id = $(( (i * 53) % 20000 + 1 ));"
        echo "SELECT pg_sleep(0.01);"
    done | "${PSQL[@]}" -d "$TEST_DB" >/dev/null
}

# --- a crash in the middle of the snapshot ---------------------------------------------
cdc_pipeline snap-cdc "{\"publication\":\"cdc_snapshot_pub\",\"slot\":\"$SLOT\",\"snapshot\":\"initial\",\"batch_size\":100}" \
    "{\"type\":\"file\",\"output\":\"$OUT\"}"
writer 1 300 & w1=$!
start_relay r1
wait_until 20 '[ "$(lines "$OUT")" -ge 500 ]'
phase=$(status_field r1 '.pipelines[0].source.position.phase')
kill9_relay r1
n1=$(lines "$OUT")
is "$phase" snapshot "the relay was killed during the initial snapshot ($n1 rows written)"
check "no permanent slot exists before the snapshot is confirmed" bash -c "[ -z \"\$(${PSQL[*]} -d $TEST_DB -c \"SELECT 1 FROM pg_replication_slots WHERE slot_name = '$SLOT'\")\" ]"
wait_until 10 '[ -z "$(sql "SELECT 1 FROM pg_replication_slots WHERE slot_name = '"'${SLOT}_snap'"'")" ]'
is "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '${SLOT}_snap'")" 0 \
   "the temporary exporting slot disappeared with the killed relay's connection"

# --- the next start snapshots again, still under concurrent writes -------------------------
start_relay r2
wait $w1
writer 301 600 & w2=$!
wait_until 60 'slot_exists $SLOT'
check "the slot exists once the snapshot is confirmed" slot_exists $SLOT
wait $w2
final=$(sql "SELECT count(*) FROM acct")
wait_until 30 '[ "$(tail -n +$((n1 + 1)) "$OUT" | jq -c "select(.source.table == \"acct\" and .payload.note == \"u600\")" | wc -l)" -ge 1 ]'
tail -n +$((n1 + 1)) "$OUT" > "$TEST_TMP/run2.jsonl"
R2=$TEST_TMP/run2.jsonl
like "$(grep -c '"op":"snapshot"' "$R2")" '^[0-9]+$' "second run emitted snapshot events"
is "$(jq -r 'select(.op == "snapshot" and .source.schema == "public") | .source.table' "$R2" | sort | uniq -c | awk '$2 != "acct" { printf "%s=%s ", $2, $1 }')" \
   "comp=3000 nopk=1000 " "composite-key (keyset) and key-less (cursor) tables are read whole"
# Names with dots are quoted in the key (issue 12 #1): "x.y".t and x."y.t"
# would otherwise both give snapshot:{lsn}:x.y.t:0.
is "$(jq -r 'select(.op == "snapshot" and .source.schema != "public") | .dedup_key | sub("^snapshot:[0-9A-F]+/[0-9A-F]+:"; "")' "$R2" | sort | tr '\n' ' ')" \
   '"x.y".t:0 x."y.t":0 ' "snapshot keys quote names that are not plain identifiers, so they never collide"
is "$(jq -c 'select(.op == "snapshot" and .source.schema == "public") | [.is_full_refresh, .source.snapshot, (.dedup_key | test("^snapshot:[0-9A-F]+/[0-9A-F]+:public\\.[a-z]+:[0-9]+$"))] | tostring' "$R2" | sort -u)" \
   '"[true,true,true]"' "snapshot events: is_full_refresh, source.snapshot, dedup key snapshot:{lsn}:{table}:{n}"
is "$(jq -r 'select(.op == "snapshot") | .dedup_key' "$R2" | sort -u | wc -l | tr -d ' ')" "$(grep -c '"op":"snapshot"' "$R2")" "snapshot dedup keys are distinct"
# every snapshot event precedes every live event
last_snap=$(grep -n '"op":"snapshot"' "$R2" | tail -1 | cut -d: -f1)
first_live=$(grep -n -E '"op":"(insert|update|delete)"' "$R2" | head -1 | cut -d: -f1)
ok "$([ -z "$first_live" ] || [ "$first_live" -gt "$last_snap" ] && echo 0 || echo 1)" "the snapshot is delivered before the live stream"

# rebuild acct from snapshot + live events and compare with the table
jq -s -r '
  reduce (.[] | select(.source.table == "acct")) as $e ({};
    if $e.op == "delete" then del(.[$e.payload.id | tostring])
    elif $e.op == "truncate" then {}
    else .[$e.payload.id | tostring] = $e.payload end)
  | to_entries[] | .value | "\(.id)|\(.bal)|\(.note)"' "$R2" | sort > "$TEST_TMP/rebuilt.txt"
sql "SELECT id || '|' || bal || '|' || note FROM acct" | sort > "$TEST_TMP/table.txt"
is "$(wc -l < "$TEST_TMP/rebuilt.txt" | tr -d ' ')" "$final" "rebuilt row count equals the table's ($final)"
check "snapshot rows + live events equal the final table state (nothing missed or doubled)" \
    cmp -s "$TEST_TMP/rebuilt.txt" "$TEST_TMP/table.txt"
diff "$TEST_TMP/rebuilt.txt" "$TEST_TMP/table.txt" | head -5 | sed 's/^/# /'
snap_acct=$(jq -r 'select(.op == "snapshot" and .source.table == "acct") | .payload.id' "$R2" | wc -l | tr -d ' ')
live=$(jq -r 'select(.op != "snapshot" and .source.table == "acct") | .dedup_key' "$R2" | wc -l | tr -d ' ')
diag "acct: $snap_acct snapshot rows + $live live events -> $final rows"
is "$(jq -r 'select(.op != "snapshot") | .dedup_key' "$R2" | sort | uniq -d | wc -l | tr -d ' ')" 0 "no live event twice"

# --- a restart after the snapshot does not redo it -------------------------------------------
stop_relay r2
before=$(grep -c '"op":"snapshot"' "$OUT")
start_relay r3
sql "INSERT INTO acct VALUES (999999, 1, 'after-restart')" >/dev/null
wait_until 15 'grep -q after-restart "$OUT"'
is "$(grep -c '"op":"snapshot"' "$OUT")" "$before" "after a restart no snapshot is taken again"
check "the restarted relay streams from the slot" grep -q after-restart "$OUT"
check "the log says the snapshot was done once" bash -c "[ \$(cat '$TEST_TMP'/r*.log | grep -c 'initial snapshot done') = 1 ]"
stop_relay r3
done_testing
