#!/usr/bin/env bash
# file -> inbox: kill -9 the relay while it writes a 50 000-line file,
# restart: exactly 50 000 rows (lines carry no dedup_key: the committed file
# offset and position-derived keys do the work). follow mode picks up
# appended lines.
. "$(dirname "$0")/lib.sh"
setup_db
IN=$TEST_TMP/big.jsonl
seq 1 50000 | awk '{ printf "{\"n\":%d,\"pad\":\"%s\"}\n", $1, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }' > "$IN"
sql "SELECT pgtrickle.create_inbox('big_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('file-in', 'big_inbox', '{\"type\":\"file\",\"input\":\"$IN\",\"follow\":true,\"batch_size\":200}')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.big_inbox"; }
start_relay r1
wait_until 60 '[ "$(rows)" -ge 5000 ]'
kill9_relay r1
at=$(rows)
diag "killed at $at rows"
ok "$([ "$at" -lt 50000 ] && echo 0 || echo 1)" "killed mid-file"
start_relay r2
wait_until 90 '[ "$(rows)" -ge 50000 ]'
sleep 1
is "$(rows)" 50000 "exactly 50 000 rows after the restart"
is "$(sql "SELECT count(DISTINCT payload->>'n') FROM pgtrickle.big_inbox")" 50000 "every line once"
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'file-in'")" "$(stat -c %s "$IN")" \
   "the committed offset is the file size"
like "$(sql "SELECT event_id FROM pgtrickle.big_inbox WHERE payload->>'n' = '1'")" "^file:$IN:0\$" "keys derive from the file position"

seq 50001 50010 | awk '{ printf "{\"n\":%d}\n", $1 }' >> "$IN"
wait_until 10 '[ "$(rows)" -ge 50010 ]'
is "$(rows)" 50010 "follow mode: appended lines land"
stop_relay r2

# A missing input file: clear error naming it.
sql "SELECT pgtrickle.set_relay_inbox('file-missing', 'big_inbox', '{\"type\":\"file\",\"input\":\"$TEST_TMP/nope.jsonl\"}')" >/dev/null
start_relay r3
wait_until 10 'relay_log r3 | grep -q "cannot open"'
like "$(relay_log r3)" "cannot open $TEST_TMP/nope.jsonl: No such file or directory" "a missing input file is named"
stop_relay r3
done_testing
