#!/usr/bin/env bash
# Backfills on demand (issue 17): pgtrickle.request_backfill() on a running
# CDC pipeline while a writer updates, deletes, re-inserts and re-keys rows of
# the very chunk being read. Ground truth: replaying the pipeline's events in
# file order onto an empty copy (cdc_backfill_replay.py) yields exactly the
# final table, so no snapshot row ever overwrote a newer change and none was
# lost. Also: the relay_backfills view (state, rows and chunks sent), the
# events' shape and dedup keys, the metrics and /status, and the requests
# that are refused (unknown pipeline, not a CDC pipeline, a table outside the
# publication or the "tables" filter, no primary key, a bad filter, the
# runtime role).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/cdc_backfill_lib.sh"
cdc_setup_db
OUT=$TEST_TMP/events.jsonl
SLOT=cdc_backfill_slot
ROWS=50000
CHUNK=2000

bf_setup_table bf $ROWS $CHUNK
sql "CREATE TABLE marker (id int PRIMARY KEY);
     CREATE TABLE nopk (v int);
     CREATE TABLE outside (id int PRIMARY KEY);
     CREATE PUBLICATION cdc_backfill_pub FOR TABLE bf, marker, nopk;" >/dev/null || bail "setup failed"

cdc_pipeline bf-cdc "{\"publication\":\"cdc_backfill_pub\",\"slot\":\"$SLOT\",\"batch_size\":500,\"backfill_chunk_rows\":$CHUNK}" \
    "{\"type\":\"file\",\"output\":\"$OUT\"}"
start_relay r1
check "the pipeline streams (slot created)" wait_until 30 "slot_exists $SLOT"

# --- refused requests --------------------------------------------------------------------
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL, '$(file_sink "$TEST_TMP/orders.jsonl")')" >/dev/null
sql "SELECT pgtrickle.disable_relay('orders-file')" >/dev/null
sql "SELECT pgtrickle.set_relay_cdc('only-marker', '{\"source\":{\"publication\":\"cdc_backfill_pub\",\"slot\":\"cdc_backfill_other\",\"tables\":[\"marker\"]},\"sink\":{\"type\":\"stdout\"}}')" >/dev/null
sql "SELECT pgtrickle.disable_relay('only-marker')" >/dev/null
like "$(sql_error_text "SELECT pgtrickle.request_backfill('nope', 'bf')")" \
    'no forward pipeline named "nope"' "an unknown pipeline is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('orders-file', 'bf')")" \
    'pipeline "orders-file" is not a CDC pipeline \(its source is outbox\)' "an outbox pipeline is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'outside')")" \
    'table public.outside is not in publication "cdc_backfill_pub" of pipeline "bf-cdc".*HINT:.*ALTER PUBLICATION cdc_backfill_pub ADD TABLE public.outside' \
    "a table outside the publication is refused, with the fix"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('only-marker', 'bf')")" \
    'table public.bf is not among the "tables" of pipeline "only-marker"' "a table outside the pipeline's tables filter is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'nopk')")" \
    'table public.nopk has no primary key' "a table without a primary key is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'no_such_table')")" \
    'relation "no_such_table" does not exist' "a table that does not exist is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'no_such_column > 1')")" \
    'p_where is not a condition on public.bf: column "no_such_column" does not exist' "a filter naming an unknown column is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'v > ')")" \
    'p_where is not a condition on public.bf: syntax error' "a filter that does not parse is refused"
like "$(sql_error_text "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'true) AS requested, bf AS x WHERE (true')")" \
    'p_where is not a condition on public.bf' "a filter cannot close the relay's parentheses"
sql "DROP ROLE IF EXISTS t_backfill_rt; CREATE ROLE t_backfill_rt LOGIN IN ROLE pgtrickle_relay" >/dev/null 2>&1
like "$(sql_as t_backfill_rt "SELECT pgtrickle.request_backfill('bf-cdc', 'bf')" 2>&1)" \
    'permission denied for function request_backfill' "the runtime role may not request a backfill"
like "$(sql_as t_backfill_rt "SELECT pgtrickle.cancel_backfill(1)" 2>&1)" \
    'permission denied for function cancel_backfill' "nor cancel one"
is "$(sql_as t_backfill_rt "SELECT count(*) FROM pgtrickle.relay_backfills")" 0 "it may read relay_backfills (empty)"
like "$(sql_error_text "SELECT pgtrickle.cancel_backfill(424242)")" 'no backfill with id 424242' "cancelling an unknown backfill is an error"
sql "DROP ROLE t_backfill_rt" >/dev/null 2>&1

# --- a backfill under concurrent writes to its chunks -------------------------------------
STOP=$TEST_TMP/stop-writer
bf_writer bf "$STOP" & wpid=$!
bf_writer bf "$STOP" & wpid2=$!
sleep 1
id=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf')")
is "$id" 1 "request_backfill returns the backfill's id"
check "the relay takes it up at once (NOTIFY): running" \
    wait_until 20 "[ \"\$(sql \"SELECT state FROM pgtrickle.relay_backfills WHERE id = $id\")\" = running ]"
check "/status shows the backfill in the pipeline's position" \
    wait_until 20 "[ \"\$(status_field r1 '.pipelines[0].source.position.backfill.id')\" = $id ]"
check "the backfill finishes while the writers write" wait_until 300 "[ \"\$(bf_state $id)\" = done ]"
touch "$STOP"
wait $wpid $wpid2
is "$(bf_writer_errors)" "" "the two writers ran without errors but deadlocks and key races"
sql "INSERT INTO marker VALUES (1)" >/dev/null
check "the stream caught up with the writer" \
    wait_until 60 "[ \"\$(count_events $OUT 'select(.source.table == \"marker\")')\" = 1 ]"

row=$(sql "SELECT state, rows_sent > 0, chunks_sent > 0, started_at IS NOT NULL, finished_at >= started_at, error IS NULL
           FROM pgtrickle.relay_backfills WHERE id = $id")
snaps=$(count_events "$OUT" "select(.op == \"snapshot\" and .source.backfill == $id)")
is "$row" "done|t|t|t|t|t" "relay_backfills: done, rows and chunks counted, started and finished"
is "$(sql "SELECT rows_sent FROM pgtrickle.relay_backfills WHERE id = $id")" "$snaps" \
    "rows_sent is the number of snapshot events written ($snaps)"
chunks=$(sql "SELECT chunks_sent FROM pgtrickle.relay_backfills WHERE id = $id")
ok "$([ "$chunks" -ge $((ROWS / CHUNK)) ] && echo 0 || echo 1)" "the table went in chunks of $CHUNK rows ($chunks chunks)"
dropped=$(grep -o 'rows read, [0-9]* changed in its window' "$TEST_TMP/r1.log" | awk '{ s += $3 } END { print s + 0 }')
ok "$([ "$dropped" -gt 0 ] && echo 0 || echo 1)" "the writer hit rows of chunks in their windows ($dropped rows dropped for a newer change)"

# event shape and keys
ev=$(events "$OUT" "select(.op == \"snapshot\") | [.source.backfill, .source.snapshot, .source.schema, .source.table, .source.commit_lsn, .is_full_refresh, (.payload | keys)]" | sort -u)
is "$ev" "[1,true,\"public\",\"bf\",null,false,[\"id\",\"note\",\"v\"]]" \
    "snapshot events carry source.backfill, source.snapshot and the whole row"
bad=$(events "$OUT" "select(.op == \"snapshot\") | select((.dedup_key | test(\"^backfill:$id:[0-9A-F]+/[0-9A-F]+:public[.]bf:[0-9]+\$\")) | not) | .dedup_key" | head -3)
is "$bad" "" "their dedup keys are backfill:{id}:{watermark lsn}:public.bf:{n}"
is "$(events "$OUT" '.dedup_key' | sort | uniq -d | head -3)" "" "every dedup key is unique"
is "$(count_events "$OUT" 'select(.op == "event")')" 0 "the watermarks are not published"

# the ground truth
is "$(bf_replay "$OUT" bf)" "RESULT ok" "replaying the events onto an empty copy yields exactly the final table"

is "$(metric r1 'pgtrickle_relay_backfill_rows_total{pipeline="bf-cdc"}')" "$snaps" "metric backfill_rows_total"
is "$(metric r1 'pgtrickle_relay_backfill_chunks_total{pipeline="bf-cdc"}')" "$chunks" "metric backfill_chunks_total"
is "$(metric r1 'pgtrickle_relay_backfills_running{pipeline="bf-cdc"}')" 0 "metric backfills_running back to 0"

# --- a filter, and the pipeline idle -------------------------------------------------------
id2=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'id <= 100 AND v % 2 = 0')")
check "a filtered backfill finishes" \
    wait_until 60 "[ \"\$(sql \"SELECT state FROM pgtrickle.relay_backfills WHERE id = $id2\")\" = done ]"
want=$(sql "SELECT string_agg(id::text, ' ' ORDER BY id) FROM bf WHERE id <= 100 AND v % 2 = 0")
is "$(events "$OUT" "select(.source.backfill == $id2) | .payload.id" | tr '\n' ' ' | sed 's/ $//')" "$want" \
    "it sends exactly the rows matching p_where, in key order"
is "$(sql "SELECT rows_sent, chunks_sent FROM pgtrickle.relay_backfills WHERE id = $id2")" \
    "$(wc -w <<<"$want")|1" "relay_backfills counts them (one chunk)"

# --- a backfill the relay cannot run fails with the reason; the next one runs ------------------
id3=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'v / (v - v) > 0')")
id4=$(sql "SELECT pgtrickle.request_backfill('bf-cdc', 'bf', 'id <= 10')")
check "a filter that fails when run: the backfill fails" wait_until 60 "[ \"\$(bf_state $id3)\" = failed ]"
like "$(sql "SELECT error FROM pgtrickle.relay_backfills WHERE id = $id3")" '^reading public.bf: division by zero' \
    "relay_backfills says why"
like "$(relay_log r1)" "ERROR.*backfill $id3 of bf failed: reading public.bf: division by zero" "the relay logs it as an error"
check "the next backfill in the queue runs" wait_until 60 "[ \"\$(bf_state $id4)\" = done ]"

# --- bad config ----------------------------------------------------------------------------
cdc_pipeline bad-chunk '{"publication":"cdc_backfill_pub","slot":"cdc_backfill_bad","backfill_chunk_rows":0}' "$(file_sink "$TEST_TMP/bad.jsonl")"
check "backfill_chunk_rows out of range is refused, naming the key" \
    wait_until 20 "relay_log r1 | grep -q 'bad-chunk.*source.backfill_chunk_rows'"
sql "SELECT pgtrickle.delete_relay('bad-chunk')" >/dev/null

stop_relay r1
is "$?" 0 "the relay stops cleanly"
done_testing
