#!/usr/bin/env bash
# Bad Redis sink configs. Invalid ones (URL, template, keys, numbers) are not
# started and a log line names the key; valid ones that cannot work
# (unreachable URL, wrong password, missing password, a database index the
# server lacks, a stream key that holds another type) run degraded with one
# clear error in /health and /status, acknowledge nothing, and recover once
# the cause is fixed. Good pipelines next to them (one authenticating with a
# password from ${env:}, one with an ACL user) are unaffected.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
P=$REDIS_PREFIX
DEAD=$(free_port)
start_private_redis AUTH --requirepass s3cret@:/x
AP=$(priv_redis_port AUTH)
RCLI_PORT=$AP rcli -a 's3cret@:/x' --no-auth-warning ACL SETUSER relayuser on '>pw%41' '~*' '+@all' >/dev/null
rcli SET "$P:wt" "not a stream" >/dev/null
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
pipe() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
pipe good "$(redis_sink "$P:good")"
pipe good-env-password "$(SINK_URL='redis://:${env:PGT_TEST_REDIS_PW}@127.0.0.1:'$AP redis_sink "$P:envpw")"
pipe good-acl-user "$(SINK_URL="redis://relayuser:pw%2541@127.0.0.1:$AP/3" redis_sink "$P:acl")"
pipe unreachable "$(SINK_URL=redis://127.0.0.1:$DEAD redis_sink "$P:x" '"connect_timeout_ms":300')"
pipe wrong-password "$(SINK_URL="redis://:nope@127.0.0.1:$AP" redis_sink "$P:x")"
pipe no-password "$(SINK_URL="redis://127.0.0.1:$AP" redis_sink "$P:x")"
pipe bad-db "$(SINK_URL="$REDIS_URL/99" redis_sink "$P:x")"
pipe wrongtype "$(redis_sink "$P:wt")"
pipe bad-var "$(redis_sink "$P:{nope}")"
pipe bad-brace "$(redis_sink "$P:{op")"
pipe empty-key "$(redis_sink "")"
pipe tls "$(SINK_URL=rediss://127.0.0.1:6380 redis_sink "$P:x")"
pipe bad-scheme "$(SINK_URL=http://127.0.0.1:6379 redis_sink "$P:x")"
pipe bad-port "$(SINK_URL=redis://127.0.0.1:70000 redis_sink "$P:x")"
pipe bad-dbname "$(SINK_URL=redis://127.0.0.1:6379/zero redis_sink "$P:x")"
pipe bad-url-option "$(SINK_URL='redis://127.0.0.1:6379/0?timeout=1' redis_sink "$P:x")"
pipe bad-key "$(redis_sink "$P:x" '"max_len":10')"
pipe bad-maxlen "$(redis_sink "$P:x" '"maxlen":-1')"
pipe bad-window "$(redis_sink "$P:x" '"dedup_window_seconds":"ten"')"
pipe bad-format "$(redis_sink "$P:x" '"format":"xml"')"

write_rows orders 1 20
PGT_TEST_REDIS_PW='s3cret@:/x' start_relay r1 --shutdown-timeout 2s
wait_until 15 '[ "$(xlen "$P:good")" -ge 20 ]'
is "$(xlen "$P:good")" 20 "the good pipeline delivers next to the bad ones"
# acl_xlen <db> <key>: XLEN on the password-protected server
acl_xlen() { RCLI_PORT=$AP rcli --user relayuser --pass 'pw%41' --no-auth-warning -n "$1" XLEN "$2"; }
wait_until 15 '[ "$(acl_xlen 0 "$P:envpw")" -ge 20 ]'
is "$(acl_xlen 0 "$P:envpw")" 20 \
   "a password from \${env:} holding '@', ':' and '/' authenticates (AUTH password)"
wait_until 15 '[ "$(acl_xlen 3 "$P:acl")" -ge 20 ]'
is "$(acl_xlen 3 "$P:acl")" 20 \
   "an ACL user with a %-encoded password (AUTH user password), database 3 (SELECT)"
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 8 "the three good + the five that run degraded are owned"
log=$(relay_log r1)
like "$log" "\[bad-var\] pipeline not started: sink.stream_key: unknown variable \{nope\}" "unknown template variable named"
like "$log" "\[bad-brace\] pipeline not started: sink.stream_key: " "unbalanced brace named"
like "$log" "\[empty-key\] pipeline not started: sink.stream_key: must not be empty" "empty stream key named"
like "$log" "\[tls\] pipeline not started: sink.url: rediss:// \(TLS\) is not supported" "rediss:// refused, saying why"
like "$log" "\[bad-scheme\] pipeline not started: sink.url: expected redis://" "another scheme refused"
like "$log" "\[bad-port\] pipeline not started: sink.url: the port must be a number from 1 to 65535" "bad port named"
like "$log" "\[bad-dbname\] pipeline not started: sink.url: the database .* must be a number" "bad database named"
like "$log" "\[bad-url-option\] pipeline not started: sink.url: unexpected \"\?timeout=1\"" "URL options refused"
like "$log" "\[bad-key\] pipeline not started: sink.max_len" "unknown key named"
like "$log" "\[bad-maxlen\] pipeline not started: sink.maxlen" "negative maxlen named"
like "$log" "\[bad-window\] pipeline not started: sink.dedup_window_seconds" "non-numeric window named"
like "$log" "\[bad-format\] pipeline not started: sink.format" "bad format named"
is "$(relay_log r1 | grep -c 's3cret\|:nope@\|pw%' || true)" 0 "no password appears in the log"

wait_until 20 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 5 ]'
is "$(http_code r1 /health)" 503 "/health is 503"
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" \
   "bad-db,no-password,unreachable,wrong-password,wrongtype" "/health names exactly the five degraded pipelines"
is "$(pipeline_healthy r1 good)" true "the good pipeline stays healthy"
like "$(last_error r1 unreachable)" "cannot connect to redis redis://127.0.0.1:$DEAD/0: " "unreachable URL: clear error"
like "$(last_error r1 wrong-password)" "sink.url: AUTH refused by redis redis://127.0.0.1:$AP/0: WRONGPASS" \
   "wrong password: clear error naming sink.url"
like "$(last_error r1 no-password)" "sink.url: PING refused by redis redis://127.0.0.1:$AP/0: NOAUTH" \
   "missing password: clear error naming sink.url"
like "$(last_error r1 bad-db)" "sink.url: SELECT refused by redis redis://127.0.0.1:$REDIS_PORT/99: ERR DB index is out of range" \
   "a database index the server lacks: clear error"
like "$(last_error r1 wrongtype)" "sink.stream_key: key \"$P:wt\" on redis redis://127.0.0.1:$REDIS_PORT/0 holds a string, not a stream \(WRONGTYPE\)" \
   "a key of another type: one clear error naming the key, its type and sink.stream_key"
is "$(http_get r1 /status | jq -r '.pipelines[] | select(.name == "wrong-password") | .last_error' | grep -c 'nope')" 0 \
   "the refused password is not shown in /status"
off() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
is "$(off unreachable):$(off wrong-password):$(off no-password):$(off bad-db):$(off wrongtype)" "0:0:0:0:0" \
   "the degraded pipelines acknowledged nothing"
is "$(off good)" 20 "the good one committed its offset"
is "$(rcli GET "$P:wt")" "not a stream" "the key of another type was left alone"

# Fix the key: the pipeline recovers without a restart.
rcli DEL "$P:wt" >/dev/null
wait_until 40 '[ "$(off wrongtype)" = 20 ]'
is "$(xlen "$P:wt")" 20 "once the key is free the events arrive"
is "$(pipeline_healthy r1 wrongtype)" true "and the pipeline is healthy again"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
