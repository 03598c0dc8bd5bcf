# tests/integration/webhook_lib.sh - helpers for the webhook tests (sourced,
# not a test itself): the recording endpoint tests/tools/webhook_recv and the
# concurrent sender tests/tools/webhook_send, both real HTTP on loopback.
. "$(dirname "$0")/lib.sh"

WEBHOOK_RECV=${WEBHOOK_RECV:-$(dirname "$RELAY_BIN")/tests/webhook_recv}
WEBHOOK_SEND=${WEBHOOK_SEND:-$(dirname "$RELAY_BIN")/tests/webhook_send}
[ -x "$WEBHOOK_RECV" ] || bail "webhook_recv not built: $WEBHOOK_RECV"
[ -x "$WEBHOOK_SEND" ] || bail "webhook_send not built: $WEBHOOK_SEND"

# start_recv <id> [host:port [extra webhook_recv flags...]]: a recording
# endpoint. Requests are appended to $TEST_TMP/<id>.jsonl; answers follow
# recv_ctl (default 200). The process is killed by lib.sh's cleanup with the
# relays.
start_recv() {
    local id=$1 addr=${2:-127.0.0.1:0}
    shift; shift || true
    : >"$TEST_TMP/$id.jsonl"
    echo 200 >"$TEST_TMP/$id.ctl"
    rm -f "$TEST_TMP/$id.port"
    "$WEBHOOK_RECV" --listen "$addr" --out "$TEST_TMP/$id.jsonl" --port-file "$TEST_TMP/$id.port" \
        --control "$TEST_TMP/$id.ctl" "$@" 2>>"$TEST_TMP/$id.err" &
    RELAY_PIDS[recv_$id]=$!
    wait_until 10 "[ -s '$TEST_TMP/$id.port' ]" || bail "webhook_recv $id did not start"
}
# start_recv_tls <id>: the same over HTTPS, with a fresh self-signed
# certificate for 127.0.0.1 in $TEST_TMP/tls-cert.pem (the CA to trust).
start_recv_tls() {
    if [ ! -f "$TEST_TMP/tls-cert.pem" ]; then
        openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 \
            -addext subjectAltName=IP:127.0.0.1 -keyout "$TEST_TMP/tls-key.pem" \
            -out "$TEST_TMP/tls-cert.pem" >/dev/null 2>&1 || bail "openssl cannot make a certificate"
    fi
    start_recv "$1" 127.0.0.1:0 --tls-cert "$TEST_TMP/tls-cert.pem" --tls-key "$TEST_TMP/tls-key.pem"
}
stop_recv() { stop_relay "recv_$1"; }
recv_url() { echo "${3:-http}://127.0.0.1:$(cat "$TEST_TMP/$1.port")${2:-/hook}"; }
# recv_ctl <id> "STATUS [DELAY_MS [RETRY_AFTER]]": how the next requests are answered
recv_ctl() { echo "$2" >"$TEST_TMP/$1.ctl.tmp" && mv "$TEST_TMP/$1.ctl.tmp" "$TEST_TMP/$1.ctl"; }
recv_log() { echo "$TEST_TMP/$1.jsonl"; }
recv_count() { lines "$TEST_TMP/$1.jsonl"; }
# recv_status_count <id> <status>: requests answered with that status
recv_status_count() { jq -r "select(.status == $2) | .status" "$TEST_TMP/$1.jsonl" | wc -l | tr -d ' '; }

# The committed offset of a forward pipeline (0 when none yet).
offset_of() {
    local v
    v=$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'")
    echo "${v:-0}"
}
dlq_count() { sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = '$1'"; }
