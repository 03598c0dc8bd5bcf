#!/usr/bin/env bash
# High availability: two relays of one group, four pipelines. Each pipeline
# runs in exactly one process, two in each; kill -9 one relay and the other
# takes its pipelines within two discovery intervals, losing no row.
. "$(dirname "$0")/lib.sh"
setup_db
file_pipelines 4
DISCOVERY=1s start_relay r1
DISCOVERY=1s start_relay r2
wait_until 15 '[ $(( $(owned_count r1) + $(owned_count r2) )) -eq 4 ]'
sleep 2.5   # two more discovery ticks: ownership must stay stable
o1=$(owned_by r1); o2=$(owned_by r2)
diag "r1 owns: $o1 / r2 owns: $o2"
is "$(echo $o1 $o2 | tr ' ' '\n' | sort | tr '\n' ' ')" "p1 p2 p3 p4 " "all four pipelines are owned"
is "$(echo $o1 $o2 | tr ' ' '\n' | sort | uniq -d | wc -l)" 0 "no pipeline runs in both relays"
is "$(sql "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")" 4 \
   "exactly four pipeline locks are held"
is "$(owned_count r1) $(owned_count r2)" "2 2" "two relays share four pipelines two and two"

for i in 1 2 3 4; do write_rows "o$i" 1 200; done
wait_until 20 '[ "$(cat "$TEST_TMP"/p*.jsonl 2>/dev/null | wc -l)" -ge 800 ]'
# Keep writing while one relay dies.
( for i in 1 2 3 4; do write_rows "o$i" 201 700; done ) &
writer=$!
victim=r1; survivor=r2
sleep 0.3
t0=$(now_ms)
kill9_relay $victim
wait_until 10 '[ "$(owned_count $survivor)" -eq 4 ]'
elapsed=$(( $(now_ms) - t0 ))
diag "$survivor owns all four pipelines ${elapsed} ms after $victim was killed"
is "$(owned_count $survivor)" 4 "the survivor takes over every pipeline"
ok "$([ "$elapsed" -le 2500 ] && echo 0 || echo 1)" "within two discovery intervals (2 s, +0.5 s slack)"
wait $writer
for i in 1 2 3 4; do
    wait_until 30 '[ "$(distinct_keys "$TEST_TMP/p$i.jsonl")" -ge 700 ]'
    is "$(distinct_keys "$TEST_TMP/p$i.jsonl")" 700 "pipeline p$i: all 700 rows delivered, none lost"
done
stop_relay $survivor
done_testing
