#!/usr/bin/env bash
# A crash between the XADD replies and the outbox offset commit: the relay is
# killed while its offset commit is blocked, so the next relay publishes the
# same batch again with the same dedup keys. With dedup_window_seconds the
# Lua script skips every repeat: the stream holds one entry per event. Without
# it the repeats are new entries that carry the same dedup_key, so a consumer
# can drop them. The dedup markers expire after the window.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
P=$REDIS_PREFIX
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('dedup-redis', 'orders', NULL, '$(redis_sink "$P:dedup" '"dedup_window_seconds":600,"maxlen":100000')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('plain-redis', 'orders', NULL, '$(redis_sink "$P:plain")')" >/dev/null
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }

write_rows orders 1 500
start_relay r1
wait_until 20 '[ "$(offset dedup-redis)" = 500 ] && [ "$(offset plain-redis)" = 500 ]'
is "$(xlen "$P:dedup"):$(xlen "$P:plain")" "500:500" "first 500 events added by both pipelines"
stop_relay r1
write_rows orders 501 800

# Block the offset commits: hold an EXCLUSIVE lock on relay_consumer_offsets
# (reads still work) from a session of our own.
PGAPPNAME=relay-test-locker "${PSQL[@]}" -d "$TEST_DB" \
    -c "BEGIN" -c "LOCK TABLE pgtrickle.relay_consumer_offsets IN EXCLUSIVE MODE" -c "SELECT pg_sleep(60)" \
    >/dev/null 2>&1 &
locker=$!
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = '"'relay-test-locker'"' AND l.mode = '"'ExclusiveLock'"' AND l.granted")" = 1 ]'
start_relay r1
wait_until 20 '[ "$(xlen "$P:dedup")" -ge 800 ] && [ "$(xlen "$P:plain")" -ge 800 ]'
is "$(xlen "$P:dedup"):$(xlen "$P:plain")" "800:800" "the next 300 events are in both streams (XADD replies received)"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '"'pgtrickle-relay %-redis'"' AND wait_event_type = '"'Lock'"'")" = 2 ]'
is "$(offset dedup-redis):$(offset plain-redis)" "500:500" "their offset commits are blocked: the outbox still says 500"

# Crash now: the relay dies, and so do its blocked commits.
kill9_relay r1
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'pgtrickle-relay %-redis'" >/dev/null
wait_until 5 '[ "$(sql "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '"'pgtrickle-relay %-redis'"'")" = 0 ]'
kill "$locker" 2>/dev/null
sql "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-test-locker'" >/dev/null
wait "$locker" 2>/dev/null
is "$(offset dedup-redis):$(offset plain-redis)" "500:500" "after the crash the committed offsets are still 500"
last_before=$(rcli --json XREVRANGE "$P:dedup" + - COUNT 1 | jq -r '.[0][0]')

# The next relay publishes 501..800 again with the same dedup keys.
start_relay r2
wait_until 20 '[ "$(offset dedup-redis)" = 800 ] && [ "$(offset plain-redis)" = 800 ]'
is "$(offset dedup-redis):$(offset plain-redis)" "800:800" "the restarted relay re-sent the batch and committed"
is "$(metric r2 'pgtrickle_relay_messages_published_total{pipeline="dedup-redis",sink="redis"}')" 300 \
   "the 300 events were published a second time (and confirmed)"
is "$(xlen "$P:dedup")" 800 "with dedup_window_seconds the stream still holds 800 entries: one per event"
is "$(rcli --json XREVRANGE "$P:dedup" + - COUNT 1 | jq -r '.[0][0]')" "$last_before" "no entry was added by the replay"
is "$(http_get r2 /status | jq -r '.pipelines[] | select(.name == "dedup-redis") | [.sink.added, .sink.duplicates] | @csv')" \
   "0,300" "/status counts the 300 repeats as duplicates"
entries "$P:dedup" > "$TEST_TMP/dedup.jsonl"
is "$(jq -r '.payload | fromjson | .payload.n' "$TEST_TMP/dedup.jsonl" | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "800:0" \
   "payloads 1..800 in order, none lost or repeated"
k=$(rcli --scan --pattern "$P:dedup:dedup:*" | head -1)
like "$(rcli TTL "$k")" '^[0-9]+$' "a dedup marker ($k) expires"
ok "$([ "$(rcli TTL "$k")" -le 600 ] && [ "$(rcli TTL "$k")" -gt 500 ]; echo $?)" "its time to live is the window (600 s)"
is "$(rcli GET "$P:dedup:dedup:outbox_orders:800:0")" "$(jq -r 'select(.dedup_key == "outbox_orders:800:0") | .id' "$TEST_TMP/dedup.jsonl")" \
   "the marker holds the entry id of the event"

is "$(xlen "$P:plain")" 1100 "without a dedup window the replay added the 300 events again"
entries "$P:plain" > "$TEST_TMP/plain.jsonl"
is "$(jq -r .dedup_key "$TEST_TMP/plain.jsonl" | sort -u | wc -l | tr -d ' ')" 800 \
   "... as repeats that carry the same dedup_key (800 distinct keys)"
is "$(jq -r 'select(.dedup_key == "outbox_orders:650:0") | .payload | fromjson | .payload.n' "$TEST_TMP/plain.jsonl" | tr '\n' ' ')" \
   "650 650 " "a repeated event is identical to its first copy"
stop_relay r2
done_testing
