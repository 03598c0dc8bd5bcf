#!/usr/bin/env bash
# A crash between the PubAcks and the outbox offset commit: the relay is
# killed while its offset commit is blocked, so the next relay publishes the
# same batch again, with the same Nats-Msg-Id values. JetStream drops the
# repeats: the stream holds one copy of each event, and the repeats were
# answered as duplicates (no new stream sequence).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
S=$(stream_name DEDUP)
SUBJ="t_$NATS_TAG"
natscli stream-add "$S" "$SUBJ.>" >/dev/null
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('dedup-nats', 'orders', NULL, '$(nats_sink "$S" "$SUBJ.{stream_table}.{op}")')" >/dev/null

write_rows orders 1 500
start_relay r1
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'dedup-nats'"; }
wait_until 20 '[ "$(offset)" = 500 ]'
is "$(stream_count "$S")" 500 "first 500 events published"
stop_relay r1
# 300 more events, read as one batch by the next relay
write_rows orders 501 800

# Block the offset commit: hold an EXCLUSIVE lock on relay_consumer_offsets
# (reads still work) from a session of our own.
PGAPPNAME=relay-test-locker "${PSQL[@]}" -d "$TEST_DB" \
    -c "BEGIN" -c "LOCK TABLE pgtrickle.relay_consumer_offsets IN EXCLUSIVE MODE" -c "SELECT pg_sleep(60)" \
    >/dev/null 2>&1 &
locker=$!
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '"'relay-test-locker'"' AND l.mode = '"'ExclusiveLock'"' AND l.granted")" = 1 ]'
start_relay r1
wait_until 20 '[ "$(stream_count "$S")" -ge 800 ]'
is "$(stream_count "$S")" 800 "the next 300 events are in the stream (PubAcks received)"
wait_until 5 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"'pgtrickle-relay dedup-nats'"' AND wait_event_type = '"'Lock'"'")" = 1 ]'
is "$(offset)" 500 "their offset commit is blocked: the outbox still says 500"

# Crash now: the relay dies, and so does its blocked commit (its backend is
# terminated before the lock is released, as a dead client's would be).
kill9_relay r1
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgtrickle-relay dedup-nats'" >/dev/null
wait_until 5 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name = '"'pgtrickle-relay dedup-nats'"'")" = 0 ]'
kill "$locker" 2>/dev/null
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-test-locker'" >/dev/null
wait "$locker" 2>/dev/null
is "$(offset)" 500 "after the crash the committed offset is still 500"
seq_before=$(natscli stream-info "$S" | jq -r .last_seq)

# The next relay publishes 501..800 again with the same ids.
start_relay r2
wait_until 20 '[ "$(offset)" = 800 ]'
is "$(offset)" 800 "the restarted relay re-sent the batch and committed"
is "$(metric r2 'pgtrickle_relay_messages_published_total{pipeline="dedup-nats",sink="nats"}')" 300 \
   "the 300 events were published a second time (and confirmed)"
is "$(stream_count "$S")" 800 "the stream still holds 800 messages: one copy of each"
is "$(natscli stream-info "$S" | jq -r .last_seq)" "$seq_before" "no new stream sequence was used: JetStream answered duplicates"
natscli dump "$S" > "$TEST_TMP/dump.jsonl"
is "$(jq -r '.headers["Nats-Msg-Id"]' "$TEST_TMP/dump.jsonl" | sort -u | wc -l | tr -d ' ')" 800 "800 distinct Nats-Msg-Id values"
is "$(jq -r '.data | fromjson | .payload.n' "$TEST_TMP/dump.jsonl" | awk 'NR != $1 { bad++ } END { print bad + 0 }')" 0 \
   "payloads 1..800 in order, none lost or repeated"
write_rows orders 801 810
wait_until 10 '[ "$(stream_count "$S")" -ge 810 ]'
is "$(stream_count "$S")" 810 "new events after the replay are published normally"
stop_relay r2
is "$?" 0 "clean exit"
done_testing
