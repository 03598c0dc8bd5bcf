#!/usr/bin/env bash
# Bad Redis source configs. Invalid ones are not started and a log line names
# the key; valid ones that cannot work (unreachable URL, wrong password, a key
# that is not a stream, a missing group with create_group false, a start_id
# the server refuses) run degraded with one clear error, acknowledge nothing,
# and recover once the cause is fixed. A good pipeline next to them is
# unaffected; a group destroyed under a running pipeline is created again.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
P=$REDIS_PREFIX
DEAD=$(free_port)
start_private_redis AUTH --requirepass s3cret
AP=$(priv_redis_port AUTH)
rcli SET "$P:wt" "not a stream" >/dev/null
rcli XADD "$P:nogroup" '*' dedup_key ng-1 payload '{}' >/dev/null
sql "SELECT pgtrickle.create_inbox('bin')" >/dev/null
src() { echo "{\"type\":\"redis\",\"url\":\"${URL:-$REDIS_URL}\",\"stream_key\":\"$1\"${2:+,$2}}"; }
pipe() { sql "SELECT pgtrickle.set_relay_inbox('$1', 'bin', '$2')" >/dev/null; }
pipe good "$(src "$P:good" '"block_ms":200')"
pipe unreachable "$(URL=redis://127.0.0.1:$DEAD src "$P:x" '"connect_timeout_ms":300')"
pipe wrong-password "$(URL=redis://:nope@127.0.0.1:$AP src "$P:x")"
pipe wrongtype "$(src "$P:wt" '"block_ms":200')"
pipe no-group "$(src "$P:nogroup" '"create_group":false,"group_name":"by-hand","block_ms":200')"
pipe bad-start "$(src "$P:badstart" '"start_id":"yesterday"')"
pipe no-stream-key '{"type":"redis","url":"'"$REDIS_URL"'"}'
pipe bad-key "$(src "$P:x" '"count":10')"
pipe bad-batch "$(src "$P:x" '"batch_size":0')"
pipe bad-block "$(src "$P:x" '"block_ms":"soon"')"
pipe bad-claim "$(src "$P:x" '"claim_idle_ms":-1')"
pipe empty-group "$(src "$P:x" '"group_name":""')"
pipe bad-url "$(URL=redis://127.0.0.1:6379/x src "$P:x")"

rcli XADD "$P:good" '*' dedup_key good-1 payload '{}' >/dev/null
start_relay r1 --shutdown-timeout 2s
wait_until 15 '[ "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id = '"'good-1'"'")" = 1 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id = 'good-1'")" 1 "the good pipeline delivers next to the bad ones"
log=$(relay_log r1)
like "$log" "\[no-stream-key\] pipeline not started: source.stream_key" "missing stream_key named"
like "$log" "\[bad-key\] pipeline not started: source.count" "unknown key named"
like "$log" "\[bad-batch\] pipeline not started: source.batch_size" "batch_size 0 named"
like "$log" "\[bad-block\] pipeline not started: source.block_ms" "bad block_ms named"
like "$log" "\[bad-claim\] pipeline not started: source.claim_idle_ms" "negative claim_idle_ms named"
like "$log" "\[empty-group\] pipeline not started: source.group_name: must not be empty" "empty group name named"
like "$log" "\[bad-url\] pipeline not started: source.url: the database" "bad URL named"

wait_until 20 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 5 ]'
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" \
   "bad-start,no-group,unreachable,wrong-password,wrongtype" "/health names exactly the five degraded pipelines"
is "$(pipeline_healthy r1 good)" true "the good pipeline stays healthy"
like "$(last_error r1 unreachable)" "cannot connect to redis redis://127.0.0.1:$DEAD/0" "unreachable URL: clear error"
like "$(last_error r1 wrong-password)" "source.url: AUTH refused by redis redis://127.0.0.1:$AP/0: WRONGPASS" "wrong password: clear error"
like "$(last_error r1 wrongtype)" "source.stream_key: key \"$P:wt\" on redis redis://127.0.0.1:$REDIS_PORT/0 is not a stream \(WRONGTYPE\)" \
   "a key of another type: clear error naming source.stream_key"
like "$(last_error r1 no-group)" "source.group_name: consumer group \"by-hand\" does not exist on stream \"$P:nogroup\".*source.create_group" \
   "a missing group with create_group false: clear error naming source.group_name"
like "$(last_error r1 bad-start)" "source.start_id: redis .* refused \"yesterday\": ERR Invalid stream ID" "a start_id the server refuses: named"
is "$(rcli GET "$P:wt")" "not a stream" "the key of another type was left alone"
is "$(rcli EXISTS "$P:badstart")" 0 "no stream was created for the refused start_id"

# Fix the causes: the pipelines recover without a restart.
rcli XGROUP CREATE "$P:nogroup" by-hand 0 >/dev/null
rcli DEL "$P:wt" >/dev/null
rcli XADD "$P:wt" '*' dedup_key wt-1 payload '{}' >/dev/null
wait_until 40 '[ "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id IN ('"'ng-1'"', '"'wt-1'"')")" = 2 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id IN ('ng-1', 'wt-1')")" 2 "once the group and the stream exist, their entries land"
wait_until 10 '[ "$(pipeline_healthy r1 no-group):$(pipeline_healthy r1 wrongtype)" = "true:true" ]'
is "$(pipeline_healthy r1 no-group):$(pipeline_healthy r1 wrongtype)" "true:true" "and both pipelines are healthy again"

# The group is destroyed under a running pipeline: NOGROUP, then created again.
rcli XGROUP DESTROY "$P:good" pgtrickle-relay >/dev/null
rcli XADD "$P:good" '*' dedup_key good-2 payload '{}' >/dev/null
wait_until 30 '[ "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id = '"'good-2'"'")" = 1 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.bin WHERE event_id LIKE 'good-%'")" 2 "a destroyed group is created again and the new entry lands, once"
like "$(relay_log r1)" "consumer group \"pgtrickle-relay\" or stream \"$P:good\" no longer exists on redis .* \(NOGROUP\)" \
   "the NOGROUP error is logged, naming the group"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
