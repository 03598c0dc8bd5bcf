#!/usr/bin/env bash
# Bad pipeline configs: unknown sink type, malformed config, unresolvable
# ${env:X}, bad keys. Each bad pipeline is not started and a log line names
# it and the key; the good pipeline keeps running; fixing a config starts it.
. "$(dirname "$0")/lib.sh"
setup_db
GOOD=$TEST_TMP/good.jsonl
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('good', 'orders', NULL, '$(file_sink "$GOOD")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('bad-type', 'orders', NULL, '{\"type\":\"carrier-pigeon\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('bad-secret', 'orders', NULL, '{\"type\":\"file\",\"output\":\"\${env:RELAY_TEST_UNSET_VAR}\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('bad-format', 'orders', NULL, '{\"type\":\"file\",\"output\":\"$TEST_TMP/x\",\"format\":\"xml\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('bad-template', 'orders', NULL, '{\"type\":\"file\",\"output\":\"$TEST_TMP/x\",\"subject_template\":\"a.{nope}\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('bad-batch', 'orders', NULL, '{\"type\":\"file\",\"output\":\"$TEST_TMP/x\"}')" >/dev/null
sql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '\"lots\"') WHERE name = 'bad-batch'" >/dev/null
# Malformed: stored by hand, bypassing the setter's checks.
sql "INSERT INTO pgtrickle.relay_outbox_config (name, config) VALUES ('bad-shape', '{\"source\": \"orders\", \"sink\": 42}')" >/dev/null
unset RELAY_TEST_UNSET_VAR
start_relay r1
write_rows orders 1 50
wait_until 10 '[ "$(lines "$GOOD")" -ge 50 ]'
is "$(lines "$GOOD")" 50 "the good pipeline runs next to the bad ones"
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 1 "only the good pipeline is owned"
log=$(relay_log r1)
like "$log" "\[bad-type\] pipeline not started: config.sink.type: unknown sink type \"carrier-pigeon\"" "unknown sink type named"
like "$log" "\[bad-secret\] pipeline not started: config.sink.output: secret not found: env var RELAY_TEST_UNSET_VAR is not set" "unresolvable \${env:X} named"
like "$log" "\[bad-format\] pipeline not started: sink.format" "bad sink key named"
like "$log" "\[bad-template\] pipeline not started: .*\{nope\}" "bad subject template named"
like "$log" "\[bad-batch\] pipeline not started: source.batch_size" "bad source key named"
like "$log" "\[bad-shape\] pipeline not started: config.source: expected an object" "malformed config named"
sleep 2.5  # discovery ticks must not repeat the error lines
is "$(relay_log r1 | grep -c '\[bad-type\] pipeline not started')" 1 "each bad config is reported once, not on every tick"
# Fix one: it starts without restarting the relay.
FIXED=$TEST_TMP/fixed.jsonl
sql "SELECT pgtrickle.set_relay_outbox('bad-type', 'orders', NULL, '$(file_sink "$FIXED")')" >/dev/null
wait_until 10 '[ "$(lines "$FIXED")" -ge 50 ]'
is "$(lines "$FIXED")" 50 "a fixed config starts the pipeline"

# A valid config whose sink cannot be reached: reported while the pipeline
# is idle, retried, and healthy once the sink works.
mkdir -p "$TEST_TMP/later"; rmdir "$TEST_TMP/later"
sql "SELECT pgtrickle.enable_outbox('idle')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('sink-later', 'idle', NULL, '$(file_sink "$TEST_TMP/later/out.jsonl")')" >/dev/null
wait_until 10 '[ "$(http_code r1 /health)" = 503 ]'
body=$(http_get r1 /health)
is "$(echo "$body" | jq -r '.degraded[] | .pipeline + ": " + .reason')" "sink-later: sink unavailable" \
   "an unreachable sink is reported while the pipeline is idle"
like "$(relay_log r1)" "\[sink-later\] sink file unavailable: open $TEST_TMP/later/out.jsonl: No such file or directory" "the log says why"
mkdir -p "$TEST_TMP/later"
wait_until 15 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "healthy once the sink can be opened"
sql "SELECT pgtrickle.outbox_write('idle', '[{\"n\":1}]')" >/dev/null
wait_until 10 '[ "$(lines "$TEST_TMP/later/out.jsonl")" = 1 ]'
is "$(lines "$TEST_TMP/later/out.jsonl")" 1 "and it relays"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
