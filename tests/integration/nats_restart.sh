#!/usr/bin/env bash
# nats-server stopped mid-stream and restarted (a private server, with its
# own store): the relay retries, acknowledges nothing to PostgreSQL while
# NATS is down, loses nothing and stores nothing twice once it is back. The
# pipeline is degraded meanwhile, also when it is idle (a lost connection is
# noticed without traffic).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
start_private_nats A
URL=$(priv_nats_url A)
S=$(stream_name RESTART)
SUBJ="t_$NATS_TAG"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('restart-nats', 'orders', NULL,
     '$(SINK_URL=$URL nats_sink "$S" "$SUBJ.{op}" '"create_stream":true,"reconnect_wait_ms":200')')" >/dev/null
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'restart-nats'"; }
count() { stream_count "$S" "$URL"; }

start_relay r1
write_rows orders 1 3000 &
writer=$!
wait_until 30 '[ "$(count)" -ge 300 ]'
stop_private_nats A
stopped_at=$(offset)
diag "nats-server stopped after offset $stopped_at"
wait $writer
ok "$([ "$stopped_at" -lt 3000 ] && echo 0 || echo 1)" "NATS was stopped mid-stream"
wait_until 10 '[ "$(http_code r1 /health)" = 503 ]'
is "$(http_code r1 /health)" 503 "/health is 503 while NATS is down"
is "$(degraded_reason r1 restart-nats)" "sink unavailable" "the pipeline is degraded: sink unavailable"
o1=$(offset)
sleep 2
is "$(offset)" "$o1" "nothing is acknowledged to PostgreSQL while NATS is down"
like "$(last_error r1 restart-nats)" "NATS|PubAck|connect" "/status names the NATS failure"

start_private_nats A
wait_until 40 '[ "$(offset)" = 3000 ]'
is "$(offset)" 3000 "after the restart the relay catches up and commits everything"
is "$(count)" 3000 "the stream holds 3000 messages: nothing lost, nothing twice"
NATSCLI_URL=$URL natscli dump "$S" > "$TEST_TMP/dump.jsonl"
is "$(jq -r '.data | fromjson | .payload.n' "$TEST_TMP/dump.jsonl" | sort -n -u | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "3000:0" \
   "every payload 1..3000 is present exactly once"
wait_until 10 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "healthy again"
log=$(relay_log r1)
like "$log" "NATS connection to nats://127.0.0.1:[0-9]+ lost" "the lost connection is logged"
like "$log" "NATS connection restored" "the restored connection is logged"
retries=$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="restart-nats",kind="sink"}')
ok "$([ "${retries:-0}" -ge 1 ] && echo 0 || echo 1)" "the failed publishes are counted as sink errors ($retries)"

# Idle: nothing to publish, yet losing NATS shows at once, and recovering too.
stop_private_nats A
wait_until 5 '[ "$(http_code r1 /health)" = 503 ]'
is "$(http_code r1 /health)" 503 "an idle pipeline turns degraded when NATS goes away"
start_private_nats A
wait_until 10 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "and healthy again when it is back"
write_rows orders 3001 3010
wait_until 10 '[ "$(count)" -ge 3010 ]'
is "$(count)" 3010 "publishing resumes"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
