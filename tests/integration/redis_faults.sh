#!/usr/bin/env bash
# redis-server (appendonly yes, fsync always) stopped mid-stream while events
# keep coming: the pipelines report degraded (sink unavailable) with the
# connection error, acknowledge nothing more, and after the restart every
# event arrives. With a dedup window exactly once; without it every event at
# least once (a reply lost in the cut can repeat an entry, with its
# dedup_key). The same after the server was frozen (SIGSTOP) for longer
# than command_timeout_ms.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
start_private_redis AOF --appendonly yes --appendfsync always
RP=$(priv_redis_port AOF)
URL="redis://127.0.0.1:$RP"
P=$REDIS_PREFIX
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('faults-dedup', 'orders', NULL, '$(SINK_URL=$URL redis_sink "$P:dedup" '"dedup_window_seconds":600,"command_timeout_ms":1000')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('faults-plain', 'orders', NULL, '$(SINK_URL=$URL redis_sink "$P:plain" '"command_timeout_ms":1000')')" >/dev/null
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
pxlen() { RCLI_PORT=$RP xlen "$1"; }

write_rows orders 1 500
start_relay r1
wait_until 20 '[ "$(offset faults-dedup)" = 500 ] && [ "$(offset faults-plain)" = 500 ]'
is "$(pxlen "$P:dedup"):$(pxlen "$P:plain")" "500:500" "the first 500 events arrive"

# Stop the server while more events are being written and relayed.
write_rows orders 501 3000 &
writer=$!
wait_until 20 '[ "$(pxlen "$P:plain")" -ge 700 ]'
stop_private_redis AOF
wait "$writer"
wait_until 30 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 2 ]'
is "$(http_get r1 /health | jq -r '[.degraded[] | .pipeline + ": " + .reason] | sort | join(", ")')" \
   "faults-dedup: sink unavailable, faults-plain: sink unavailable" "/health names both pipelines: sink unavailable"
like "$(last_error r1 faults-plain)" "redis redis://127.0.0.1:$RP/0: |cannot connect to redis redis://127.0.0.1:$RP/0" \
   "last_error names the server"
is "$(metric r1 'pgtrickle_relay_pipeline_healthy{pipeline="faults-plain"}')" 0 "pipeline_healthy is 0 in /metrics"
o1=$(offset faults-dedup):$(offset faults-plain)
sleep 2
is "$(offset faults-dedup):$(offset faults-plain)" "$o1" "nothing more is acknowledged while Redis is down ($o1)"
last=$(sql "SELECT max(id) FROM pgtrickle.outbox_orders")
ok "$([ "${o1%%:*}" -lt "$last" ] && [ "${o1##*:}" -lt "$last" ]; echo $?)" "the events written meanwhile wait in the outbox"

# Restart on the same port and directory: the append-only file brings back
# what was stored; the relay reconnects and delivers the rest.
start_private_redis AOF --appendonly yes --appendfsync always
wait_until 60 '[ "$(offset faults-dedup)" = 3000 ] && [ "$(offset faults-plain)" = 3000 ]'
is "$(offset faults-dedup):$(offset faults-plain)" "3000:3000" "after the restart both pipelines catch up"
RCLI_PORT=$RP entries "$P:dedup" > "$TEST_TMP/dedup.jsonl"
RCLI_PORT=$RP entries "$P:plain" > "$TEST_TMP/plain.jsonl"
is "$(jq -r '.payload | fromjson | .payload.n' "$TEST_TMP/dedup.jsonl" | sort -n | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "3000:0" \
   "with a dedup window: events 1..3000, each exactly once"
is "$(jq -r '.payload | fromjson | .payload.n' "$TEST_TMP/plain.jsonl" | sort -nu | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "3000:0" \
   "without: every event 1..3000 arrived"
is "$(jq -r '[.dedup_key, (.payload | fromjson | .payload.n | tostring)] | join(" ")' "$TEST_TMP/plain.jsonl" | sort -u | awk '{print $1}' | uniq -d | wc -l | tr -d ' ')" 0 \
   "... and any repeat carries the same dedup_key and payload as its first copy"
diag "plain stream: $(pxlen "$P:plain") entries for 3000 events"
like "$(relay_log r1)" "\[faults-plain\] sink redis available again" "the recovery is logged"
is "$(pipeline_healthy r1 faults-plain):$(pipeline_healthy r1 faults-dedup)" "true:true" "both pipelines are healthy again"

# A frozen server (SIGSTOP): no reply within command_timeout_ms, the
# connection is dropped and the batch retried; after SIGCONT every event
# arrives (with the dedup window exactly once, although the server still
# executes the commands the dropped connection had sent).
kill -STOP "${PRIV_REDIS_PIDS[AOF]}"
write_rows orders 3001 3200
wait_until 30 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 2 ]'
like "$(last_error r1 faults-dedup)" "no answer within command_timeout_ms \(1000 ms\)" \
   "a frozen server: no answer within command_timeout_ms, the pipeline degraded"
is "$(offset faults-dedup):$(offset faults-plain)" "3000:3000" "nothing is acknowledged meanwhile"
kill -CONT "${PRIV_REDIS_PIDS[AOF]}"
wait_until 60 '[ "$(offset faults-dedup)" = 3200 ] && [ "$(offset faults-plain)" = 3200 ]'
is "$(offset faults-dedup):$(offset faults-plain)" "3200:3200" "after SIGCONT both pipelines catch up"
RCLI_PORT=$RP entries "$P:dedup" > "$TEST_TMP/dedup2.jsonl"
is "$(jq -r '.payload | fromjson | .payload.n' "$TEST_TMP/dedup2.jsonl" | sort -n | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "3200:0" \
   "with a dedup window: events 1..3200, each exactly once"
is "$(RCLI_PORT=$RP entries "$P:plain" | jq -r '.payload | fromjson | .payload.n' | sort -nu | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "3200:0" \
   "without: every event 1..3200 arrived"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
