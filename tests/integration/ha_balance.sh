#!/usr/bin/env bash
# Sharing pipelines between the relays of a group. With a 30 s discovery
# tick, so every move below is driven by NOTIFY:
#   - a relay running all four pipelines hands two over when a second relay
#     joins, and takes them back at once when that relay shuts down;
#   - with three relays nobody runs more than ceil(4 / 3) = 2;
#   - a pipeline only one relay can run (its secret is in that relay's
#     environment only) is still run, by that relay, whatever its share;
#   - a pipeline no relay can load changes none of that;
#   - through all of it every row arrives exactly once in each file.
. "$(dirname "$0")/lib.sh"
setup_db
file_pipelines 4
# and one no relay can load (its secret is nowhere): it must not hold up the rest
sql "SELECT pgtrickle.set_relay_outbox('broken', 'o1', NULL, '$(file_sink '${env:RELAY_TEST_NOBODY_HAS_THIS}')')" >/dev/null
all_owned_once() {   # all_owned_once <expected names> <relay...>
    local want=$1; shift
    local got=""; for r in "$@"; do got="$got $(owned_by "$r")"; done
    [ "$(echo $got | tr ' ' '\n' | sort | tr '\n' ' ')" = "$want" ]
}

DISCOVERY=30s start_relay r1
wait_until 10 '[ "$(owned_count r1)" = 4 ]'
is "$(owned_count r1)" 4 "a relay alone runs all four pipelines"

# rows keep coming while relays join and leave
( for n in $(seq 1 6); do for i in 1 2 3 4; do write_rows "o$i" $(( (n - 1) * 100 + 1 )) $(( n * 100 )); done; sleep 0.5; done ) &
writer=$!

t0=$(now_ms)
DISCOVERY=30s start_relay r2
wait_until 10 '[ "$(owned_count r1)" = 2 ] && [ "$(owned_count r2)" = 2 ]'
elapsed=$(( $(now_ms) - t0 ))
diag "r2 joined: r1 owns $(owned_by r1)/ r2 owns $(owned_by r2)(after ${elapsed} ms)"
is "$(owned_count r1) $(owned_count r2)" "2 2" "a second relay joins: two pipelines are handed over to it"
ok "$([ "$elapsed" -le 5000 ] && echo 0 || echo 1)" "within 5 s of its start, not on a discovery tick (30 s)"
check "each pipeline runs in exactly one relay" all_owned_once "p1 p2 p3 p4 " r1 r2
like "$(relay_log r1)" "handing it over: 2 relays in group" "the log says why a pipeline moved"
is "$(http_get r2 /status | jq -c .group) $(metric r1 pgtrickle_relay_group_relays) $(metric r1 pgtrickle_relay_fair_share)" \
   '{"relays":2,"fair_share":2} 2 2' "/status and /metrics show the group's relays and the fair share"

t0=$(now_ms)
stop_relay r2
wait_until 10 '[ "$(owned_count r1)" = 4 ]'
elapsed=$(( $(now_ms) - t0 ))
diag "r2 stopped: r1 owns all four ${elapsed} ms after SIGTERM"
is "$(owned_count r1)" 4 "a relay that shuts down leaves its pipelines to the others"
ok "$([ "$elapsed" -le 3000 ] && echo 0 || echo 1)" "at once (within 3 s of SIGTERM), not on a discovery tick"

DISCOVERY=30s start_relay r2
DISCOVERY=30s start_relay r3
wait_until 10 '[ $(( $(owned_count r1) + $(owned_count r2) + $(owned_count r3) )) = 4 ] && [ "$(owned_count r1)" -le 2 ]'
diag "three relays: r1 $(owned_by r1)/ r2 $(owned_by r2)/ r3 $(owned_by r3)"
is "$(( $(owned_count r1) + $(owned_count r2) + $(owned_count r3) ))" 4 "three relays: all four pipelines run"
ok "$([ "$(owned_count r1)" -le 2 ] && [ "$(owned_count r2)" -le 2 ] && [ "$(owned_count r3)" -le 2 ] && echo 0 || echo 1)" \
   "nobody runs more than ceil(4 / 3) = 2"
check "each pipeline runs in exactly one relay" all_owned_once "p1 p2 p3 p4 " r1 r2 r3

wait $writer
for i in 1 2 3 4; do
    wait_until 20 '[ "$(lines "$TEST_TMP/p$i.jsonl")" -ge 600 ]'
    is "$(lines "$TEST_TMP/p$i.jsonl") $(distinct_keys "$TEST_TMP/p$i.jsonl")" "600 600" \
       "pipeline p$i: 600 rows, each once, across the handovers"
done
stop_relay r3
stop_relay r2
stop_relay r1

# A pipeline only one relay can run: its sink path comes from an env var
# only r1 has. r2 cannot start it (logged once); r1 runs it even at its share.
sql "SELECT pgtrickle.delete_relay('p3'), pgtrickle.delete_relay('p4'), pgtrickle.delete_relay('broken')" >/dev/null
sql "SELECT pgtrickle.enable_outbox('o5')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('p5', 'o5', NULL, '$(file_sink '${env:RELAY_TEST_P5_OUT}')')" >/dev/null
write_rows o5 1 50
RELAY_TEST_P5_OUT=$TEST_TMP/p5.jsonl DISCOVERY=1s start_relay r4
DISCOVERY=1s start_relay r5
wait_until 15 '[ "$(lines "$TEST_TMP/p5.jsonl")" -ge 50 ] && [ $(( $(owned_count r4) + $(owned_count r5) )) = 3 ]'
diag "r4 (has the env var) owns $(owned_by r4)/ r5 owns $(owned_by r5)"
is "$(lines "$TEST_TMP/p5.jsonl")" 50 "the pipeline only r4 can run is run (by r4)"
like "$(owned_by r4)" "p5" "r4 runs it"
like "$(relay_log r5)" "\[p5\] pipeline not started: .*RELAY_TEST_P5_OUT" "r5 says why it cannot"
is "$(( $(owned_count r4) + $(owned_count r5) ))" 3 "the other two pipelines run too"
handovers() { cat "$TEST_TMP/r4.log" "$TEST_TMP/r5.log" | grep -c "handing it over"; }
before="$(handovers) $(owned_by r4)"
sleep 3   # three discovery ticks
is "$(handovers) $(owned_by r4)" "$before" "then ownership stays put: no handover in three discovery ticks"
stop_relay r5
stop_relay r4

# A short-lived relay joins and leaves (issue 11 #5): the pipeline handed
# over to it comes back, and the relays left keep exactly their fair share
# within two discovery intervals -- the one that had handed it over must
# not "keep" it as if nobody had taken it.
sql "SELECT pgtrickle.set_relay_outbox('p3', 'o3', NULL, '$(file_sink "$TEST_TMP/p3b.jsonl")'),
            pgtrickle.set_relay_outbox('p4', 'o4', NULL, '$(file_sink "$TEST_TMP/p4b.jsonl")'),
            pgtrickle.set_relay_outbox('p6', 'o1', NULL, '$(file_sink "$TEST_TMP/p6.jsonl")')" >/dev/null
sql "SELECT pgtrickle.delete_relay('p5')" >/dev/null
owned_sum() { local n=0 r; for r in "$@"; do n=$((n + $(owned_count "$r"))); done; echo $n; }
DISCOVERY=1s start_relay r6
wait_until 15 '[ "$(owned_count r6)" = 5 ]'
DISCOVERY=1s start_relay r7
wait_until 15 '[ "$(owned_sum r6 r7)" = 5 ] && [ "$(owned_count r6)" -le 3 ] && [ "$(owned_count r7)" -le 3 ]'
diag "two relays: r6 $(owned_by r6)/ r7 $(owned_by r7)"
DISCOVERY=1s start_relay r8
wait_until 15 '[ "$(owned_count r8)" -ge 1 ] && [ "$(owned_sum r6 r7 r8)" = 5 ]'
diag "three relays: r6 $(owned_by r6)/ r7 $(owned_by r7)/ r8 $(owned_by r8)"
ok "$([ "$(owned_count r8)" -ge 1 ] && echo 0 || echo 1)" "a third relay joins and is handed pipelines"
# the relays that handed pipelines over see them run by r8 on their next
# discovery ticks (1 s); killed before that, r8 would leave them to believe
# that nobody had taken them, which is then true as far as they can see
sleep 3
kill9_relay r8
# its connections die with it; after at most two discovery intervals (plus
# the moves they trigger) the two relays left run ceil(5 / 2) = 3 at most
wait_until 20 '[ "$(owned_sum r6 r7)" = 5 ] && [ "$(owned_count r6)" -le 3 ] && [ "$(owned_count r7)" -le 3 ]'
sleep 3   # and it stays so over three more discovery intervals
diag "r8 gone: r6 $(owned_by r6)/ r7 $(owned_by r7)"
is "$(owned_sum r6 r7)" 5 "the relays left run all five pipelines"
ok "$([ "$(owned_count r6)" -le 3 ] && [ "$(owned_count r7)" -le 3 ] && echo 0 || echo 1)" \
   "  ... neither runs more than its fair share (3)"
is "$(cat "$TEST_TMP/r6.log" "$TEST_TMP/r7.log" | grep -c 'no other relay took the pipeline over')" 0 \
   "  ... and neither claims nobody took the pipeline it handed over"
stop_relay r7
stop_relay r6
done_testing
