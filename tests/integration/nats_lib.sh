# tests/integration/nats_lib.sh - helpers for the NATS tests (sourced after
# lib.sh). Talks to the shared nats-server of tests/services/services.sh
# (start it with: services.sh start pg nats) through tests/tools/natscli.
#
# Tests share that server: every test names its streams and subjects after
# itself (NATS_TAG), so they never overlap, and deletes them at the end.
# Tests that stop NATS start a private nats-server (start_private_nats).
: "${PGT_NATS_URL:?services not started: run tests/services/services.sh start pg nats}"
: "${NATSCLI:=$(dirname "$RELAY_BIN")/tests/natscli}"
[ -x "$NATSCLI" ] || bail "natscli not found at $NATSCLI (build the tests, or set NATSCLI)"
NATS_URL=$PGT_NATS_URL
# A tag unique to this run: streams "T_<TAG>_..." and subjects "t_<tag>...".
NATS_TAG=$(echo "${TEST_NAME}_$$" | tr -c 'a-zA-Z0-9_\n' '_')

natscli() { "$NATSCLI" -s "${NATSCLI_URL:-$NATS_URL}" "$@"; }
# stream_name <suffix>: a stream name of this run (deleted at the end)
stream_name() { echo "T_${NATS_TAG^^}_$1"; }
# stream_count <stream> [url]: messages stored (0 when the stream is missing)
stream_count() {
    local n; n=$(NATSCLI_URL=${2:-${NATSCLI_URL:-$NATS_URL}} natscli stream-info "$1" 2>/dev/null | jq -r '.messages // 0')
    echo "${n:-0}"
}
# consumer_field <stream> <consumer> <field> [url]
consumer_field() { NATSCLI_URL=${4:-${NATSCLI_URL:-$NATS_URL}} natscli consumer-info "$1" "$2" 2>/dev/null | jq -r ".$3 // empty"; }
# nats_sink <stream> <subject_template> [extra json members]: a sink config
nats_sink() {
    echo "{\"type\":\"nats\",\"url\":\"${SINK_URL:-$NATS_URL}\",\"stream\":\"$1\",\"subject_template\":\"$2\"${3:+,$3}}"
}
# health_of <relay id> <pipeline>: "healthy"/"degraded" from /status
pipeline_healthy() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .healthy"; }
degraded_reason() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .degraded_reason // empty"; }
last_error() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .last_error // empty"; }

# --- a private nats-server (for tests that stop or reconfigure it) ------------
# start_private_nats <id> [nats-server args...]: JetStream on free ports, its
# own store; sets PRIV_NATS_URL_<id>, PRIV_NATS_PID_<id>. Restarting with the
# same id keeps the store (and so the streams and their dedup state).
# PRIV_NATS_NO_JS=1: a server without JetStream. PRIV_NATS_ADDR: the address
# it listens on (127.0.0.1).
declare -A PRIV_NATS_PIDS=()
start_private_nats() {
    local id=$1; shift
    local d="$TEST_TMP/nats-$id" try fresh=1 addr=${PRIV_NATS_ADDR:-127.0.0.1}
    mkdir -p "$d"
    [ -f "$d/port" ] && fresh=0
    local js=(-js -sd "$d/js")
    [ "${PRIV_NATS_NO_JS:-0}" = 1 ] && js=()
    for try in 1 2 3; do
        # a restart keeps its port; a first start that lost its port to
        # another process (seen in the log) tries again on a new one
        local port; port=$(cat "$d/port" 2>/dev/null || free_port)
        echo "$port" > "$d/port"
        nats-server -a "$addr" -p "$port" "${js[@]}" -n "relay-test-$id" -l "$d/nats.log" "$@" \
            </dev/null >/dev/null 2>&1 &
        PRIV_NATS_PIDS[$id]=$!
        eval "PRIV_NATS_URL_$id=nats://$addr:$port"
        if wait_until 10 "(exec 3<>/dev/tcp/$addr/$port) 2>/dev/null || ! kill -0 ${PRIV_NATS_PIDS[$id]}" \
            && kill -0 "${PRIV_NATS_PIDS[$id]}" 2>/dev/null; then
            sleep 0.2   # JetStream needs a moment after the port opens
            return 0
        fi
        kill -9 "${PRIV_NATS_PIDS[$id]}" 2>/dev/null; wait "${PRIV_NATS_PIDS[$id]}" 2>/dev/null
        [ "$fresh" = 1 ] && [ "$try" -lt 3 ] && tail -3 "$d/nats.log" 2>/dev/null | grep -q "address already in use" \
            || break
        diag "private nats-server $id: port $port in use, trying another"
        rm -f "$d/port"
    done
    tail -5 "$d/nats.log" | sed 's/^/#   /'
    bail "private nats-server $id did not start"
}
priv_nats_url() { eval "echo \$PRIV_NATS_URL_$1"; }
stop_private_nats() {   # SIGINT (clean shutdown) and wait
    local pid=${PRIV_NATS_PIDS[$1]:-}; [ -n "$pid" ] || return 0
    kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    unset "PRIV_NATS_PIDS[$1]"
}

_nats_cleanup() {
    local id
    for id in "${!PRIV_NATS_PIDS[@]}"; do kill -9 "${PRIV_NATS_PIDS[$id]}" 2>/dev/null; wait "${PRIV_NATS_PIDS[$id]}" 2>/dev/null; done
    local s
    for s in $(natscli stream-list 2>/dev/null | grep "^T_${NATS_TAG^^}_"); do
        natscli stream-delete "$s" >/dev/null 2>&1
    done
}
trap '_nats_cleanup; _cleanup' EXIT
