#!/usr/bin/env bash
# Bad NATS sink configs. Invalid ones (subject template, keys, auth) are not
# started and a log line names the key; valid ones that cannot work
# (unreachable URL, missing stream with create_stream=false, a subject no
# stream listens on, a server without JetStream, an unreadable creds file)
# run degraded with a clear error in /health and /status,
# acknowledge nothing, and recover once the cause is fixed. A good pipeline
# next to them is unaffected.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
SUBJ="t_$NATS_TAG"
S=$(stream_name GOOD)
SO=$(stream_name OTHER)
SM=$(stream_name MISSING)
natscli stream-add "$S" "$SUBJ.good.>" >/dev/null
natscli stream-add "$SO" "$SUBJ.other.>" >/dev/null
DEAD=$(free_port)
PRIV_NATS_NO_JS=1 start_private_nats NOJS
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
pipe() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
pipe good "$(nats_sink "$S" "$SUBJ.good.{op}")"
pipe unreachable "$(SINK_URL=nats://127.0.0.1:$DEAD nats_sink "$S" "$SUBJ.good.{op}" '"connect_timeout_ms":300')"
pipe no-stream "$(nats_sink "$SM" "$SUBJ.missing.{op}")"
pipe wrong-subject "$(nats_sink "$SO" "$SUBJ.nowhere.{op}")"
pipe no-jetstream "$(SINK_URL=$(priv_nats_url NOJS) nats_sink "$S" "$SUBJ.good.{op}")"
pipe no-creds "$(nats_sink "$S" "$SUBJ.good.{op}" '"creds_file":"'"$TEST_TMP"'/missing.creds"')"
pipe bad-var "$(nats_sink "$S" "$SUBJ.{nope}")"
pipe bad-wildcard "$(nats_sink "$S" "$SUBJ.*.{op}")"
pipe bad-empty-token "$(nats_sink "$S" "$SUBJ..{op}")"
pipe no-stream-key '{"type":"nats","url":"'"$NATS_URL"'"}'
pipe bad-seed "$(nats_sink "$S" "$SUBJ.good.{op}" '"nkey_seed":"SUNOTASEED"')"
pipe bad-auth "$(nats_sink "$S" "$SUBJ.good.{op}" '"password":"p"')"
pipe bad-key "$(nats_sink "$S" "$SUBJ.good.{op}" '"max_inflight":10')"
pipe bad-format "$(nats_sink "$S" "$SUBJ.good.{op}" '"format":"xml"')"

write_rows orders 1 20
start_relay r1 --shutdown-timeout 2s
wait_until 15 '[ "$(stream_count "$S")" -ge 20 ]'
is "$(stream_count "$S")" 20 "the good pipeline delivers next to the bad ones"
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 6 "good + the five that run degraded are owned"
log=$(relay_log r1)
like "$log" "\[bad-var\] pipeline not started: sink.subject_template: unknown variable \{nope\}" "unknown template variable named"
like "$log" "\[bad-wildcard\] pipeline not started: sink.subject_template: .* not a valid NATS subject" "wildcard in a template refused"
like "$log" "\[bad-empty-token\] pipeline not started: sink.subject_template: .*empty token" "empty subject token refused"
like "$log" "\[no-stream-key\] pipeline not started: sink.stream: " "missing stream key named"
like "$log" "\[bad-seed\] pipeline not started: sink.nkey_seed: " "bad nkey seed named"
like "$log" "\[bad-auth\] pipeline not started: sink.password: needs sink.user" "password without user named"
like "$log" "\[bad-key\] pipeline not started: sink.max_inflight" "unknown key named"
like "$log" "\[bad-format\] pipeline not started: sink.format" "bad format named"

wait_until 15 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 5 ]'
is "$(http_code r1 /health)" 503 "/health is 503"
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" \
   "no-creds,no-jetstream,no-stream,unreachable,wrong-subject" "/health names exactly the five degraded pipelines"
is "$(pipeline_healthy r1 good)" true "the good pipeline stays healthy"
like "$(last_error r1 unreachable)" "cannot connect to NATS at nats://127.0.0.1:$DEAD" "unreachable URL: clear error"
like "$(last_error r1 no-stream)" "sink.stream: JetStream stream \"$SM\" does not exist \(create it, or set sink.create_stream to true\)" \
   "missing stream: clear error naming sink.stream"
like "$(last_error r1 wrong-subject)" "no JetStream stream listens on subject \"$SUBJ.nowhere.insert\"" \
   "subject outside every stream: clear error"
like "$(last_error r1 no-jetstream)" "JetStream is not enabled on the NATS server at nats://127.0.0.1:[0-9]+" \
   "a server without JetStream: clear error"
like "$(last_error r1 no-creds)" "sink.creds_file: cannot read $TEST_TMP/missing.creds: No such file or directory" \
   "an unreadable creds file: clear error naming sink.creds_file"
off() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
is "$(off unreachable):$(off no-stream):$(off wrong-subject):$(off no-jetstream):$(off no-creds)" "0:0:0:0:0" \
   "the degraded pipelines acknowledged nothing"
is "$(off good)" 20 "the good one committed its offset"

# Fix the missing stream: the pipeline recovers without a restart.
natscli stream-add "$SM" "$SUBJ.missing.>" >/dev/null
wait_until 40 '[ "$(off no-stream)" = 20 ]'
is "$(stream_count "$SM")" 20 "once the stream exists the events arrive"
is "$(pipeline_healthy r1 no-stream)" true "and the pipeline is healthy again"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
