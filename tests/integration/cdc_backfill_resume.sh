#!/usr/bin/env bash
# Backfills survive the relay (issue 17): the relay that owns a CDC pipeline
# is killed (kill -9) in the middle of a backfill while writers change the
# chunks being read; the standby relay of the group takes the pipeline over
# and resumes after the last confirmed chunk (not from the start), and the
# replay of every event written, both relays' and the repeats included,
# onto an empty copy still yields exactly the final table. A relay stopped
# mid-backfill of a composite text key resumes after that key. The queue:
# backfills run one at a time, oldest first; a queued one and a running one
# are cancelled (the relay stops sending it, the next one starts); a
# finished one cannot be cancelled.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/cdc_backfill_lib.sh"
cdc_setup_db
OUT=$TEST_TMP/events.jsonl
SLOT=cdc_backfill_resume_slot
# (a backfill reads over a hundred chunks a second here: enough of them that
# the kill below lands mid-backfill even when the shell is the slow part)
ROWS=60000
CHUNK=300

bf_setup_table bf $ROWS $CHUNK
sql "CREATE TABLE marker (id int PRIMARY KEY);
     CREATE PUBLICATION cdc_backfill_resume_pub FOR TABLE bf, marker;" >/dev/null || bail "setup failed"
cdc_pipeline bf-cdc "{\"publication\":\"cdc_backfill_resume_pub\",\"slot\":\"$SLOT\",\"batch_size\":100,\"backfill_chunk_rows\":$CHUNK}" \
    "{\"type\":\"file\",\"output\":\"$OUT\"}"
owner() {  # the relay id (r1/r2) whose /status lists the pipeline as running
    local r
    for r in r1 r2; do
        [ -n "${RELAY_PIDS[$r]:-}" ] || continue
        [ "$(http_get "$r" /status | jq -r '[.pipelines[] | select(.name == "bf-cdc")] | length')" = 1 ] && echo "$r"
    done
}
start_relay r1
check "the pipeline streams (slot created)" wait_until 30 "slot_exists $SLOT"
start_relay r2
check "a second relay of the group stands by" wait_until 20 "[ \"\$(http_get r2 /health | jq .pipelines_owned)\" = 0 ]"

# --- kill -9 mid-backfill: the standby resumes after the last confirmed chunk ----------------
STOP=$TEST_TMP/stop-writer
bf_writer bf "$STOP" & wpid=$!
bf_writer bf "$STOP" & wpid2=$!
first=$(owner)   # known before the backfill starts: the kill follows the check at once
[ -n "$first" ] || bail "no relay runs the pipeline"
id=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf')")
check "the backfill runs and confirms chunks" \
    wait_until 120 "[ \"\$(sql \"SELECT chunks_sent FROM pgtrickle.relay_backfills WHERE id = $id\")\" -ge 10 ]"
kill9_relay "$first"
n_kill=$(wc -l <"$OUT")
IFS='|' read -r st chunks_kill last_kill <<<"$(sql "SELECT state, chunks_sent, last_key[1] FROM pgtrickle.relay_backfills WHERE id = $id")"
is "$st" running "killed relay $first mid-backfill: still running in the catalog after $chunks_kill chunks (resumes after key $last_kill)"
ok "$([ "$chunks_kill" -lt $((ROWS / CHUNK)) ] && echo 0 || echo 1)" "(the backfill was not finished: $chunks_kill of about $((ROWS / CHUNK)) chunks)"
other=r2; [ "$first" = r2 ] && other=r1
check "relay $other takes the pipeline over" wait_until 60 "[ \"\$(owner)\" = $other ]"
check "and finishes the backfill" wait_until 300 "[ \"\$(bf_state $id)\" = done ]"
like "$(grep "backfill $id of public.bf" "$TEST_TMP/$other.log")" "resuming after the last confirmed chunk" \
    "relay $other resumed the backfill"
touch "$STOP"
wait $wpid $wpid2
is "$(bf_writer_errors)" "" "the writers ran without errors but deadlocks and key races"
sql "INSERT INTO marker VALUES (1)" >/dev/null
check "the stream caught up with the writers" \
    wait_until 60 "[ \"\$(count_events $OUT 'select(.source.table == \"marker\")')\" = 1 ]"
tail -n +$((n_kill + 1)) "$OUT" >"$TEST_TMP/after.jsonl"
first_after=$(jq -r "select(.op == \"snapshot\" and .source.backfill == $id) | .payload.id" "$TEST_TMP/after.jsonl" | head -1)
ok "$([ -n "$first_after" ] && [ "$first_after" -gt "$last_kill" ] && echo 0 || echo 1)" \
    "after the kill the backfill starts after the last confirmed key ($first_after > $last_kill)"
is "$(jq -r "select(.op == \"snapshot\" and .source.backfill == $id and .payload.id <= $last_kill) | .payload.id" "$TEST_TMP/after.jsonl" | head -3)" "" \
    "no row of a confirmed chunk is sent again"
dups=$(jq -r "select(.op == \"snapshot\" and .source.backfill == $id) | .payload.id" "$OUT" | sort | uniq -d | wc -l)
ok "$([ "$dups" -le $((2 * CHUNK)) ] && echo 0 || echo 1)" "at most the chunks in flight are sent twice ($dups rows, under new keys)"
is "$(bf_replay "$OUT" bf)" "RESULT ok" "replaying every event written onto an empty copy yields exactly the final table"
is "$(sql "SELECT chunks_sent >= $chunks_kill, rows_sent > 0 FROM pgtrickle.relay_backfills WHERE id = $id")" "t|t" \
    "relay_backfills counts the chunks of both relays"

# --- the queue, and cancelling ---------------------------------------------------------------
r=$(owner)
big=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf')")
small=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'id <= 100')")
dropped=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'id <= 50')")
# (one read of all three: the relay may start the oldest at any moment)
like "$(sql "SELECT string_agg(state, ' ' ORDER BY id) FROM pgtrickle.relay_backfills WHERE id >= $big")" \
    '^(running|queued) queued queued$' "three backfills: the oldest runs (or is about to), the others wait"
is "$(sql "SELECT pgtrickle.cancel_backfill($dropped)")" t "a queued backfill is cancelled"
check "the big one runs and confirms chunks" \
    wait_until 60 "[ \"\$(sql \"SELECT chunks_sent FROM pgtrickle.relay_backfills WHERE id = $big\")\" -ge 2 ]"
is "$(sql "SELECT pgtrickle.cancel_backfill($big)")" t "a running backfill is cancelled"
check "the next one in the queue runs to the end" wait_until 60 "[ \"\$(bf_state $small)\" = done ]"
like "$(relay_log "$r")" "backfill $big was cancelled" "the relay noticed the cancel"
is "$(sql "SELECT string_agg(state || ':' || (finished_at IS NOT NULL) || ':' || (started_at IS NOT NULL), ' ' ORDER BY id)
           FROM pgtrickle.relay_backfills WHERE id >= $big")" \
    "cancelled:true:true done:true:true cancelled:true:false" \
    "relay_backfills: cancelled (started), done, cancelled (never started)"
is "$(count_events "$OUT" "select(.source.backfill == $dropped)")" 0 "the cancelled queued backfill sent nothing"
lines_small=$(grep -n "\"backfill\":$small[,}]" "$OUT" | head -1 | cut -d: -f1)
tail -n +"${lines_small:-1}" "$OUT" >"$TEST_TMP/after-small.jsonl"
is "$(count_events "$TEST_TMP/after-small.jsonl" "select(.source.backfill == $big)")" 0 \
    "the cancelled running backfill sent nothing once the next one started"
is "$(events "$OUT" "select(.source.backfill == $small) | .payload.id" | sort -n | uniq | wc -l | tr -d ' ')" \
    "$(sql "SELECT count(*) FROM bf WHERE id <= 100")" "the next one sent its rows"
is "$(sql "SELECT pgtrickle.cancel_backfill($small)")" f "a finished backfill cannot be cancelled (false)"

# --- a restart, on a composite primary key whose text needs quoting ----------------------------
sql "CREATE TABLE \"Odd Keys\" (a int, b text, v int, PRIMARY KEY (a, b));
     INSERT INTO \"Odd Keys\" SELECT g / 6, (ARRAY['a,b', 'x\"y', '{}', 'back\\slash', ' sp', 'NULL'])[g % 6 + 1], g
       FROM generate_series(0, 29999) g;
     CREATE TABLE replica.\"Odd Keys\" (LIKE \"Odd Keys\" INCLUDING ALL);
     ALTER PUBLICATION cdc_backfill_resume_pub ADD TABLE \"Odd Keys\"" >/dev/null || bail "setup of \"Odd Keys\" failed"
r=$(owner)
odd=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', '\"Odd Keys\"')")
check "a backfill of a table with a composite text key runs" \
    wait_until 60 "[ \"\$(sql \"SELECT chunks_sent FROM pgtrickle.relay_backfills WHERE id = $odd\")\" -ge 3 ]"
stop_relay "$r"
is "$?" 0 "its relay stops cleanly mid-backfill"
n_stop=$(wc -l <"$OUT")
IFS='|' read -r st pos <<<"$(sql "SELECT state, to_json(last_key) FROM pgtrickle.relay_backfills WHERE id = $odd")"
is "$st" running "still running in the catalog (resumes after $pos)"
sql "UPDATE \"Odd Keys\" SET v = -v WHERE a % 7 = 0" >/dev/null
start_relay "$r"
check "the restarted relay finishes it" wait_until 120 "[ \"\$(bf_state $odd)\" = done ]"
tail -n +$((n_stop + 1)) "$OUT" | jq -c "select(.source.backfill == $odd) | [.payload.a, .payload.b]" >"$TEST_TMP/odd-after.jsonl"
sql "CREATE TABLE odd_after (k jsonb)" >/dev/null
"${PSQL[@]}" -d "$TEST_DB" -c "\copy odd_after FROM '$TEST_TMP/odd-after.jsonl' WITH (FORMAT csv, QUOTE e'\x01', DELIMITER e'\x02')"
is "$(sql "SELECT count(*) FILTER (WHERE ((k->>0)::int, k->>1) <= (('$pos'::jsonb->>0)::int, '$pos'::jsonb->>1)), count(*) > 0
           FROM odd_after")" "0|t" "it resumed after the stored key: no row at or before it is sent again"
sql "INSERT INTO marker VALUES (2)" >/dev/null
check "the stream caught up" wait_until 60 "[ \"\$(count_events $OUT 'select(.source.table == \"marker\")')\" = 2 ]"
is "$(bf_replay "$OUT" 'bf,Odd Keys')" "RESULT ok" "the replay of everything still yields both tables exactly"

# deleting the pipeline deletes its backfills
sql "SELECT pgtrickle.delete_relay('bf-cdc')" >/dev/null
is "$(sql "SELECT count(*) FROM pgtrickle.relay_backfills")" 0 "deleting the pipeline deletes its backfills"
for x in r1 r2; do [ -n "${RELAY_PIDS[$x]:-}" ] && stop_relay "$x"; done
done_testing
