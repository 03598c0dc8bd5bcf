#!/usr/bin/env bash
# Redis -> inbox when a server goes away (both private, so they can be
# stopped):
#  - redis-server (appendonly yes) stopped: the pipeline reports the source
#    unavailable, naming the server; after the restart the relay reconnects
#    and the entries written before and after land once each
#  - PostgreSQL stopped: nothing is XACKed (the entries stay pending on the
#    relay's consumer); after the restart every entry lands once and is
#    acknowledged
#  - an entry deleted (XDEL) while pending is acknowledged without delivery
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
start_private_pg
setup_db
start_private_redis SRC --appendonly yes --appendfsync always
RP=$(priv_redis_port SRC)
K="$REDIS_PREFIX:in"
G=g1
sql "SELECT pgtrickle.create_inbox('faults_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('redis-faults', 'faults_inbox',
     '{\"type\":\"redis\",\"url\":\"redis://127.0.0.1:$RP\",\"stream_key\":\"$K\",\"group_name\":\"$G\",\"block_ms\":200,\"command_timeout_ms\":1000}')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.faults_inbox"; }
prcli() { RCLI_PORT=$RP rcli "$@"; }
pending() { prcli XPENDING "$K" "$G" | head -1; }
# add <from> <to>: entries with dedup keys e-<from>..e-<to>, one atomic step
add() {
    prcli EVAL "for i = tonumber(ARGV[1]), tonumber(ARGV[2]) do redis.call('XADD', KEYS[1], '*', 'dedup_key', 'e-' .. i, 'payload', '{\"n\":' .. i .. '}') end" \
        1 "$K" "$1" "$2" >/dev/null
}

add 1 100
start_relay r1 --shutdown-timeout 2s
wait_until 20 '[ "$(rows)" = 100 ]'
is "$(rows)" 100 "the first 100 entries land"

# --- Redis down ------------------------------------------------------------------------
add 101 150
stop_private_redis SRC
wait_until 20 '[ "$(pipeline_healthy r1 redis-faults)" = false ]'
is "$(http_get r1 /health | jq -r '[.degraded[] | .pipeline + ": " + .reason] | join(", ")')" \
   "redis-faults: source unavailable" "Redis stopped: /health names the pipeline, source unavailable"
like "$(last_error r1 redis-faults)" "redis redis://127.0.0.1:$RP/0" "last_error names the server"
start_private_redis SRC --appendonly yes --appendfsync always
add 151 200
wait_until 40 '[ "$(rows)" = 200 ]'
is "$(rows)" 200 "after the restart every entry lands (written before the stop, and after)"
is "$(sql "SELECT count(DISTINCT event_id) FROM pgtrickle.faults_inbox")" 200 "once each"
wait_until 10 '[ "$(pending)" = 0 ] && [ "$(pipeline_healthy r1 redis-faults)" = true ]'
is "$(pending):$(pipeline_healthy r1 redis-faults)" "0:true" "all acknowledged, healthy again"

# --- PostgreSQL down -------------------------------------------------------------------
# The relay must have read the entries when PostgreSQL goes away (otherwise
# it notices the outage first and reads nothing, which proves nothing here):
# a lock holds its inbox INSERT until the server stops.
"${PSQL[@]}" -d "$TEST_DB" -c "BEGIN; LOCK TABLE pgtrickle.faults_inbox IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120)" \
    >/dev/null 2>&1 &
locker=$!
wait_until 10 '[ "$(sql "SELECT count(*) FROM pg_locks WHERE relation = '"'pgtrickle.faults_inbox'"'::regclass AND mode = '"'AccessExclusiveLock'"' AND granted")" = 1 ]'
add 201 230
wait_until 20 '[ "$(pending)" -ge 1 ]'
private_pg_stop
wait "$locker" 2>/dev/null
p=$(pending)
ok "$([ "$p" -ge 1 ]; echo $?)" "PostgreSQL down: the entries read stay pending ($p), nothing is XACKed"
wait_until 20 '[ "$(pipeline_healthy r1 redis-faults)" = false ]'
is "$(pipeline_healthy r1 redis-faults)" false "the pipeline is degraded"
# one of the pending entries is deleted meanwhile: nothing can deliver it
victim=$(prcli --json XPENDING "$K" "$G" - + 1 | jq -r '.[0][0]')
prcli XDEL "$K" "$victim" >/dev/null
private_pg_start
wait_until 60 '[ "$(rows)" = 229 ]'
is "$(rows)" 229 "after the restart the 29 remaining entries land"
is "$(sql "SELECT count(DISTINCT event_id) FROM pgtrickle.faults_inbox")" 229 "once each"
wait_until 10 '[ "$(pending)" = 0 ]'
is "$(pending)" 0 "everything is acknowledged, the deleted entry too"
like "$(relay_log r1)" "entry $victim was deleted before it was acknowledged" "the deleted entry is logged"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
