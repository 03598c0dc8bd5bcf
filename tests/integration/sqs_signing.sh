#!/usr/bin/env bash
# What the SQS client signs, checked on the wire. The emulator accepts any
# signature, so three pipelines publish to a stand-in endpoint
# (tests/tools/sqs_sigv4_listener.py) that recomputes every request's AWS
# Signature Version 4 with the secret of its key id:
#   keys      access_key_id/secret_access_key/session_token from the config,
#             region from sink.region
#   env       AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY of the relay's
#             environment, region from the queue URL's host
#   file      a shared credentials file (sink.credentials_file, profile ci)
# and a fourth, signing with a wrong secret, is the control that the check
# fails. Each request carries Authorization: AWS4-HMAC-SHA256
# Credential=<key>/<date>/<region>/sqs/aws4_request, the JSON protocol's
# headers, X-Amz-Security-Token exactly when a session token is set, goes to
# the endpoint (path /) with the queue URL in the body, and its signature
# verifies.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
LISTENER=$(cd "$(dirname "$0")/../tools" && pwd)/sqs_sigv4_listener.py
setup_db
PORT=$(free_port)
LOG=$TEST_TMP/requests.jsonl
python3 "$LISTENER" "$PORT" "$LOG" "AKIDKEYS=keys-secret,AKIDRELAYTEST=relay-test-secret,AKIDFILE=file/secret+x" \
    >"$TEST_TMP/listener.out" 2>"$TEST_TMP/listener.log" &
LPID=$!
wait_until 10 "grep -q READY '$TEST_TMP/listener.out'" || bail "the SigV4 listener did not start"
EP=http://127.0.0.1:$PORT
printf '[default]\naws_access_key_id = AKIDNOPE\naws_secret_access_key = nope\n\n[ci]\naws_access_key_id = AKIDFILE\naws_secret_access_key = file/secret+x\n' \
    >"$TEST_TMP/credentials"
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('keys', 'orders', NULL,
     '{\"type\":\"sqs\",\"queue_url\":\"https://sqs.eu-west-3.amazonaws.com/123456789012/keys.fifo\",
       \"endpoint_url\":\"$EP\",\"region\":\"eu-west-3\",\"access_key_id\":\"AKIDKEYS\",
       \"secret_access_key\":\"\${env:SIGN_TEST_SECRET}\",\"session_token\":\"FwoGZXIvYXdzEXAMPLETOKEN\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('env', 'orders', NULL,
     '{\"type\":\"sqs\",\"queue_url\":\"https://sqs.ap-northeast-1.amazonaws.com/123456789012/env\",
       \"endpoint_url\":\"$EP\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('file', 'orders', NULL,
     '{\"type\":\"sqs\",\"queue_url\":\"https://sqs.us-east-2.amazonaws.com/123456789012/file\",
       \"endpoint_url\":\"$EP\",\"credentials_file\":\"$TEST_TMP/credentials\",\"profile\":\"ci\"}')" >/dev/null
# the control: a wrong secret must fail the listener's check
sql "SELECT pgtrickle.set_relay_outbox('wrong', 'orders', NULL,
     '{\"type\":\"sqs\",\"queue_url\":\"https://sqs.eu-west-3.amazonaws.com/123456789012/wrong\",
       \"endpoint_url\":\"$EP\",\"access_key_id\":\"AKIDKEYS\",\"secret_access_key\":\"not-the-secret\"}')" >/dev/null
write_rows orders 1 25
unset AWS_REGION AWS_DEFAULT_REGION
SIGN_TEST_SECRET=keys-secret start_relay r1
wait_until 30 '[ "$(published r1 keys)" = 25 ] && [ "$(published r1 env)" = 25 ] && [ "$(published r1 file)" = 25 ] && [ "$(published r1 wrong)" = 25 ]'
is "$(published r1 keys),$(published r1 env),$(published r1 file),$(published r1 wrong)" "25,25,25,25" "each pipeline published its 25 events"
stop_relay r1
kill "$LPID" 2>/dev/null; wait "$LPID" 2>/dev/null

today=$(date -u +%Y%m%d)
req() { jq -c "select(.queue_url | test(\"/$1(\\\\.fifo)?\$\"))" "$LOG"; }
for p in keys env file wrong; do req "$p" >"$TEST_TMP/$p.jsonl"; done
# the distinct Authorization headers of a pipeline, signatures replaced by a placeholder
auth_shapes() { jq -r .authorization "$1" | sed -E 's/Signature=[0-9a-f]{64}$/Signature=<64 hex>/' | sort -u; }
is "$(jq -r .target "$TEST_TMP/keys.jsonl" | sort | uniq -c | awk '{print $2}' | tr '\n' ' ')" \
   "AmazonSQS.GetQueueAttributes AmazonSQS.SendMessageBatch " "JSON protocol: X-Amz-Target AmazonSQS.<Action>"
is "$(jq -r '[.path, .content_type] | @tsv' "$LOG" | sort -u)" "/	application/x-amz-json-1.0" \
   "every request goes to the endpoint's / as application/x-amz-json-1.0, the queue URL in the body"
is "$(jq -r 'select(.signature_valid | not) | .queue_url' "$LOG" | sort -u)" "https://sqs.eu-west-3.amazonaws.com/123456789012/wrong" \
   "every request's SigV4 signature verifies with its key's secret, but those signed with a wrong secret"
is "$(jq -r .why "$TEST_TMP/wrong.jsonl" | sort -u)" "signature mismatch" "(the check does fail on a wrong secret)"
ok "$([ "$(lines "$LOG")" -ge 9 ] && echo 0 || echo 1)" "the listener saw the requests of all three pipelines"

like "$(auth_shapes "$TEST_TMP/keys.jsonl")" \
     "^AWS4-HMAC-SHA256 Credential=AKIDKEYS/$today/eu-west-3/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token;x-amz-target, Signature=<64 hex>$" \
     "config keys: Credential=AKIDKEYS/<date>/eu-west-3/sqs/aws4_request, the token is signed"
is "$(jq -r .security_token "$TEST_TMP/keys.jsonl" | sort -u)" "FwoGZXIvYXdzEXAMPLETOKEN" \
   "config keys: X-Amz-Security-Token carries sink.session_token"
like "$(auth_shapes "$TEST_TMP/env.jsonl")" \
     "^AWS4-HMAC-SHA256 Credential=AKIDRELAYTEST/$today/ap-northeast-1/sqs/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, Signature=<64 hex>$" \
     "environment: AWS_ACCESS_KEY_ID, region from the queue URL, no token header"
is "$(jq -r .security_token "$TEST_TMP/env.jsonl" | sort -u)" "null" "environment without AWS_SESSION_TOKEN: no X-Amz-Security-Token"
like "$(auth_shapes "$TEST_TMP/file.jsonl")" \
     "^AWS4-HMAC-SHA256 Credential=AKIDFILE/$today/us-east-2/sqs/aws4_request, " \
     "shared credentials file, profile ci (the environment's keys are not used when the file is named)"
done_testing
