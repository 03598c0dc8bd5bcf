#!/usr/bin/env bash
# Commit order is not visibility order (issue 17, docs/backends/cdc.md
# "Backfills"): under synchronous replication a transaction's commit record
# is written, decoded and streamed while the committing session still waits
# for the standby, and meanwhile no other snapshot sees the transaction. A
# backfill chunk read in that gap would hold the row as it was before a
# change the stream has already delivered, and sending it at the high
# watermark would undo that change for every consumer. This test makes the
# gap last as long as it likes (a standby that never answers, on a private
# server), checks that the relay does not send such a chunk, and that once
# the transaction is visible the chunk is sent with the new row: the replay
# onto an empty copy still yields the table.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
start_private_pg
setup_db
OUT=$TEST_TMP/events.jsonl
# a synchronous standby that never connects; only sessions that ask for it
# (synchronous_commit = on) wait for it
sql "ALTER SYSTEM SET synchronous_standby_names = 'ghost'" >/dev/null || bail "ALTER SYSTEM failed"
sql "ALTER SYSTEM SET synchronous_commit = 'local'" >/dev/null || bail "ALTER SYSTEM failed"
sql "SELECT pg_reload_conf()" >/dev/null
sql "CREATE TABLE t (id int PRIMARY KEY, v int NOT NULL);
     INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;
     CREATE SCHEMA replica; CREATE TABLE replica.t (LIKE t INCLUDING ALL);
     CREATE PUBLICATION cdc_vis_pub FOR TABLE t" >/dev/null || bail "setup failed"
cdc_pipeline vis-cdc '{"publication":"cdc_vis_pub","slot":"cdc_vis_slot","backfill_chunk_rows":100}' \
    "{\"type\":\"file\",\"output\":\"$OUT\"}"
start_relay r1
check "the pipeline streams" wait_until 30 "slot_exists cdc_vis_slot"

# The update commits locally and waits for the standby: the stream delivers it ...
"${PSQL[@]}" -d "$TEST_DB" -c "SET synchronous_commit = on; UPDATE t SET v = -5 WHERE id = 5" \
    >"$TEST_TMP/writer.log" 2>&1 & wpid=$!
check "the stream delivers an update whose session still waits for the standby" \
    wait_until 30 "[ \"\$(count_events $OUT 'select(.op == \"update\" and .payload.id == 5)')\" = 1 ]"
is "$(sql "SELECT wait_event FROM pg_stat_activity WHERE query LIKE 'SET synchronous_commit%'")" SyncRep \
    "(its session waits in SyncRep)"
# ... while no snapshot sees it yet
is "$(sql "SELECT v FROM t WHERE id = 5")" 5 "a new snapshot does not see the update yet"

id=$(sql "SELECT pgtrickle.request_backfill('vis-cdc', 't')")
check "the relay reads the first chunk and finds that its snapshot misses a delivered transaction" \
    wait_until 30 "relay_log r1 | grep -q \"backfill $id: the chunk's snapshot does not see a transaction the stream already delivered\""
check "and reads it again, poll after poll" \
    wait_until 60 "[ \"\$(relay_log r1 | grep -c \"backfill $id: the chunk's snapshot does not see\")\" -ge 3 ]"
is "$(sql "SELECT state, chunks_sent FROM pgtrickle.relay_backfills WHERE id = $id" | tr '|' ' ')" "running 0" \
    "the chunk is not sent while the gap lasts"
is "$(count_events "$OUT" 'select(.op == "snapshot")')" 0 "no snapshot row was written"

# the standby wait ends (cancelled): the transaction becomes visible
sql "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE wait_event = 'SyncRep'" >/dev/null
wait $wpid
like "$(cat "$TEST_TMP/writer.log")" "already committed locally" "(the writer's transaction stays committed)"
check "the backfill then completes" wait_until 60 "[ \"\$(sql \"SELECT state FROM pgtrickle.relay_backfills WHERE id = $id\")\" = done ]"
is "$(events "$OUT" 'select(.payload.id == 5) | [.op, .payload.v]' | tr '\n' ' ')" '["update",-5] ["snapshot",-5] ' \
    "row 5: the update, then the snapshot row with the updated value"
res=$(python3 "$(dirname "$0")/cdc_backfill_replay.py" "$OUT" replica t "${PSQL[@]}" -d "$TEST_DB" 2>&1)
is "$(tail -n 1 <<<"$res")" "RESULT ok" "the replay onto an empty copy yields the table"
stop_relay r1
is "$?" 0 "the relay stops cleanly"
done_testing
