# tests/integration/sqs_lib.sh - helpers for the SQS tests, sourced after
# lib.sh. The shared emulator is local-aws-sqs started by
# tests/services/services.sh (PGT_SQS_ENDPOINT); tests that stop the endpoint
# start a private one (start_private_sqs). Queue names carry QTAG, unique per
# test run, so tests can run in parallel against the shared emulator. What
# the relay sent is read back with awscli, a client this project did not
# write; the emulator accepts any credentials.
: "${PGT_SQS_ENDPOINT:?sqs not started: run tests/services/services.sh start sqs}"
command -v aws >/dev/null || bail "awscli not installed (scripts/install-deps.sh)"
QTAG=${TEST_NAME}_$$_$RANDOM
export AWS_ACCESS_KEY_ID=AKIDRELAYTEST AWS_SECRET_ACCESS_KEY=relay-test-secret
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
unset AWS_SESSION_TOKEN AWS_PROFILE AWS_ENDPOINT_URL AWS_ENDPOINT_URL_SQS
export AWS_SHARED_CREDENTIALS_FILE=/nonexistent AWS_CONFIG_FILE=/nonexistent AWS_PAGER=

# sqs_cli <endpoint> <aws sqs args...>: awscli against an endpoint, JSON output
sqs_cli() { local ep=$1; shift; aws --endpoint-url "$ep" --output json sqs "$@" 2>>"$TEST_TMP/aws.log"; }
awsq() { sqs_cli "$PGT_SQS_ENDPOINT" "$@"; }

# create_queue <name> [Key=Value,...]: prints the queue URL (FIFO when the
# name ends in .fifo)
create_queue() {
    local name=$1 attrs=${2:-}
    case "$name" in *.fifo) attrs=${attrs:+$attrs,}FifoQueue=true ;; esac
    sqs_cli "${SQS_EP:-$PGT_SQS_ENDPOINT}" create-queue --queue-name "$name" ${attrs:+--attributes "$attrs"} | jq -r .QueueUrl
}

# queue_depth <url> [endpoint]: the messages in the queue, visible or not.
# (local-aws-sqs counts received, not yet deleted messages in both
# ApproximateNumberOfMessages and ...NotVisible, so the first is the total.)
queue_depth() {
    sqs_cli "${2:-$PGT_SQS_ENDPOINT}" get-queue-attributes --queue-url "$1" \
        --attribute-names ApproximateNumberOfMessages | jq -r .Attributes.ApproximateNumberOfMessages
}

# drain_queue <url> <expected> [endpoint]: receive (and delete) messages until
# <expected> arrived or two receives in a row came back empty; prints each
# message as one JSON line (Body, MessageAttributes, Attributes).
drain_queue() {
    local url=$1 want=$2 ep=${3:-$PGT_SQS_ENDPOINT} got=0 empty=0 out
    while [ "$got" -lt "$want" ] && [ "$empty" -lt 2 ]; do
        out=$(sqs_cli "$ep" receive-message --queue-url "$url" --max-number-of-messages 10 \
              --attribute-names All --message-attribute-names All --wait-time-seconds 1)
        local n; n=$(jq '.Messages // [] | length' <<<"${out:-{\}}")
        if [ "${n:-0}" = 0 ]; then empty=$((empty + 1)); continue; fi
        empty=0
        got=$((got + n))
        jq -c '.Messages[]' <<<"$out"
        jq -c '[.Messages | to_entries[] | {Id: (.key | tostring), ReceiptHandle: .value.ReceiptHandle}]' <<<"$out" \
            >"$TEST_TMP/del.json"
        sqs_cli "$ep" delete-message-batch --queue-url "$url" --entries "file://$TEST_TMP/del.json" >/dev/null
    done
}

# send_message <url> <body> [aws sqs send-message args...]
send_message() { local url=$1 body=$2; shift 2; awsq send-message --queue-url "$url" --message-body "$body" "$@" >/dev/null; }

# sqs_sink <url> [extra json members]: a sink config for the SQS sink
sqs_sink() { echo "{\"type\":\"sqs\",\"queue_url\":\"$1\",\"endpoint_url\":\"${SQS_EP:-$PGT_SQS_ENDPOINT}\"${2:+,$2}}"; }

# --- private emulators, for tests that stop the endpoint --------------------------
declare -A SQS_PIDS=()
# start_private_sqs <id> <port>: (re)start an emulator on 127.0.0.1:<port>
start_private_sqs() {
    local id=$1 port=$2
    "${PGT_SQS_SERVER:?sqs not started}" "$port" >>"$TEST_TMP/sqs_$id.log" 2>&1 &
    SQS_PIDS[$id]=$!
    wait_until 15 "grep -q READY '$TEST_TMP/sqs_$id.log' && [ \$(grep -c READY '$TEST_TMP/sqs_$id.log') -ge \${SQS_STARTS_$id:-1} ]" \
        || bail "private sqs emulator $id did not start"
    eval "SQS_STARTS_$id=\$(( \${SQS_STARTS_$id:-1} + 1 ))"
}
stop_private_sqs() {
    local id=$1 pid=${SQS_PIDS[$1]:-}
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    unset "SQS_PIDS[$id]"
}
_sqs_cleanup() {
    for id in "${!SQS_PIDS[@]}"; do kill -TERM "${SQS_PIDS[$id]}" 2>/dev/null; done
    _cleanup
}
trap _sqs_cleanup EXIT

# --- relay side ---------------------------------------------------------------------
pipeline_status() { http_get "$1" /status | jq -c ".pipelines[] | select(.name == \"$2\")"; }
health_status() { http_get "$1" /health | jq -r .status; }
published() { metric "$1" "pgtrickle_relay_messages_published_total{pipeline=\"$2\",sink=\"sqs\"}"; }
dead() { metric "$1" "pgtrickle_relay_dead_lettered_total{pipeline=\"$2\"}"; }
