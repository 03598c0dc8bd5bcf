#!/usr/bin/env bash
# Bad SQS configs, both directions: each is refused when the pipeline is
# loaded, with one log line naming the pipeline and the key (never a
# secret), and is not started, while a good SQS pipeline runs next to them.
# The relay runs without AWS credentials, region or shared credentials file
# in its environment, so "no credentials anywhere" and "no region" are
# config errors too. A queue that does not exist is only known at run time:
# that pipeline runs degraded with one clear error naming source.queue_url.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/sqs_lib.sh"
setup_db
Q=$(create_queue "$QTAG-good")
[ -n "$Q" ] || bail "cannot create the queue"
EP=$PGT_SQS_ENDPOINT
KEYS='"access_key_id":"AKIDBAD","secret_access_key":"hunter2-secret"'
GOODQ="\"queue_url\":\"$Q\",\"endpoint_url\":\"$EP\",\"region\":\"us-east-1\""
sink() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '{\"type\":\"sqs\",$2}')" >/dev/null; }
src() { sql "SELECT pgtrickle.set_relay_inbox('$1', 'in_box', '{\"type\":\"sqs\",$2}')" >/dev/null; }
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_box')" >/dev/null
printf '[default]\naws_access_key_id = AKIDFILE\naws_secret_access_key = s\n' >"$TEST_TMP/credentials"

sink good "$GOODQ,$KEYS"
sink s-no-queue "\"endpoint_url\":\"$EP\",\"region\":\"us-east-1\",$KEYS"
sink s-bad-queue "\"queue_url\":\"sqs://x/1/q\",\"region\":\"us-east-1\",$KEYS"
sink s-bad-region "$GOODQ,\"region\":\"moon-base-one\",$KEYS"
sink s-no-region "\"queue_url\":\"$Q\",\"endpoint_url\":\"$EP\",$KEYS"
sink s-no-creds "$GOODQ"
sink s-half-creds "$GOODQ,\"access_key_id\":\"AKIDBAD\""
sink s-token-only "$GOODQ,\"session_token\":\"tok\""
sink s-format "$GOODQ,$KEYS,\"format\":\"msgpack\""
sink s-group "$GOODQ,$KEYS,\"message_group_id\":\"by table {table}\""
sink s-group-var "$GOODQ,$KEYS,\"message_group_id\":\"{nope}\""
sink s-in-flight "$GOODQ,$KEYS,\"max_in_flight\":0"
sink s-size "$GOODQ,$KEYS,\"max_message_bytes\":2000000"
sink s-typo "$GOODQ,$KEYS,\"queue\":\"x\""
sink s-endpoint "$GOODQ,$KEYS,\"endpoint_url\":\"localhost:4566\""
sink s-credfile "$GOODQ,\"credentials_file\":\"/etc/shadow\""
sink s-profile "$GOODQ,\"credentials_file\":\"$TEST_TMP/credentials\",\"profile\":\"prod\""
sink s-ca "$GOODQ,$KEYS,\"tls_ca\":\"/etc/ssl/private/ca.pem\""
src k-no-queue "\"endpoint_url\":\"$EP\",\"region\":\"us-east-1\",$KEYS"
src k-max-messages "$GOODQ,$KEYS,\"max_messages\":11"
src k-wait "$GOODQ,$KEYS,\"wait_time_seconds\":21"
src k-visibility "$GOODQ,$KEYS,\"visibility_timeout\":-1"
src k-concurrency "$GOODQ,$KEYS,\"concurrency\":0"
src k-no-creds "$GOODQ"
src k-typo "$GOODQ,$KEYS,\"queue_name\":\"x\""
src k-missing "\"queue_url\":\"$EP/123456789012/$QTAG-nope\",\"endpoint_url\":\"$EP\",\"region\":\"us-east-1\",$KEYS"

unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION AWS_DEFAULT_REGION AWS_SHARED_CREDENTIALS_FILE
HOME=$TEST_TMP start_relay r1
write_rows orders 1 20
wait_until 30 '[ "$(published r1 good)" = 20 ]'
is "$(published r1 good)" 20 "the good SQS pipeline runs next to the bad ones"
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 2 "none of the bad pipelines is started (the good one and the missing queue run)"
log=$(relay_log r1)
nl="pipeline not started:"
like "$log" "\[s-no-queue\] $nl sink.queue_url: required" "sink: missing queue_url"
like "$log" "\[s-bad-queue\] $nl sink.queue_url: \"sqs://x/1/q\" is not an http:// or https:// URL" "sink: queue_url not a URL"
like "$log" "\[s-bad-region\] $nl sink.region: \"moon-base-one\" \(from region\) is not an AWS region" "sink: bad region"
like "$log" "\[s-no-region\] $nl sink.region: not set, and neither AWS_REGION nor AWS_DEFAULT_REGION is set" "sink: no region anywhere"
like "$log" "\[s-no-creds\] $nl sink.access_key_id: no AWS credentials: set sink.access_key_id and sink.secret_access_key, or the AWS_ACCESS_KEY_ID" \
     "sink: no credentials anywhere (keys, environment, shared file)"
like "$log" "\[s-half-creds\] $nl sink.secret_access_key: required together with sink.access_key_id" "sink: half a key pair"
like "$log" "\[s-token-only\] $nl sink.session_token: requires sink.access_key_id and sink.secret_access_key" "sink: a token without keys"
like "$log" "\[s-format\] $nl sink.format: SQS message bodies are text" "sink: msgpack refused"
like "$log" "\[s-group\] $nl sink.message_group_id: \"by table \{table\}\" has characters SQS does not take" "sink: bad MessageGroupId template"
like "$log" "\[s-group-var\] $nl sink.message_group_id: unknown variable \{nope\}" "sink: unknown template variable"
like "$log" "\[s-in-flight\] $nl sink.max_in_flight: " "sink: max_in_flight out of range"
like "$log" "\[s-size\] $nl sink.max_message_bytes: " "sink: max_message_bytes over SQS's maximum"
like "$log" "\[s-typo\] $nl sink.queue: unknown key" "sink: unknown key"
like "$log" "\[s-endpoint\] $nl sink.endpoint_url: \"localhost:4566\" is not an http:// or https:// URL" "sink: bad endpoint_url"
like "$log" "\[s-credfile\] $nl sink.credentials_file: /etc/shadow is outside the paths this relay may use" \
     "sink: a credentials file outside --allow-path is refused"
like "$log" "\[s-profile\] $nl sink.profile: shared credentials file .*: profile \"prod\" not found" "sink: a missing profile"
like "$log" "\[s-ca\] $nl sink.tls_ca: /etc/ssl/private/ca.pem is outside the paths" "sink: a CA file outside --allow-path is refused"
like "$log" "\[k-no-queue\] $nl source.queue_url: required" "source: missing queue_url"
like "$log" "\[k-max-messages\] $nl source.max_messages: " "source: max_messages over 10"
like "$log" "\[k-wait\] $nl source.wait_time_seconds: " "source: wait_time_seconds over 20"
like "$log" "\[k-visibility\] $nl source.visibility_timeout: " "source: negative visibility_timeout"
like "$log" "\[k-concurrency\] $nl source.concurrency: " "source: concurrency 0"
like "$log" "\[k-no-creds\] $nl source.access_key_id: no AWS credentials" "source: no credentials anywhere"
like "$log" "\[k-typo\] $nl source.queue_name: unknown key" "source: unknown key"
is "$(echo "$log" | grep -c 'hunter2-secret')" 0 "a secret never appears in the log"

wait_until 30 "pipeline_status r1 k-missing | grep -q QueueDoesNotExist"
like "$(pipeline_status r1 k-missing)" "\"last_error\":\"source: source.queue_url: ${EP//./\\.}/123456789012/$QTAG-nope: GetQueueAttributes on [^\"]*: QueueDoesNotExist" \
     "a queue that does not exist: one clear error naming source.queue_url"
is "$(health_status r1)" degraded "and that pipeline is degraded"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
