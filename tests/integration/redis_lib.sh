# tests/integration/redis_lib.sh - helpers for the Redis tests (sourced after
# lib.sh). Talks to the shared redis-server of tests/services/services.sh
# (start it with: services.sh start pg redis) through redis-cli, a client
# this project did not write.
#
# Tests share that server: every test names its keys after itself
# (REDIS_PREFIX), so they never overlap, and deletes them at the end. Tests
# that stop Redis start a private redis-server (start_private_redis).
: "${PGT_REDIS_URL:?services not started: run tests/services/services.sh start pg redis}"
command -v redis-cli >/dev/null || bail "redis-cli not found (apt-get install redis-tools)"
REDIS_URL=$PGT_REDIS_URL
REDIS_PORT=${PGT_REDIS_PORT:-${REDIS_URL##*:}}
# A key prefix unique to this run.
REDIS_PREFIX="t:$(echo "${TEST_NAME}_$$" | tr -c 'a-zA-Z0-9_\n' '_')"

# rcli [redis-cli args...]: the shared server, or $RCLI_PORT
rcli() { redis-cli -h 127.0.0.1 -p "${RCLI_PORT:-$REDIS_PORT}" "$@"; }
# xlen <key>: entries in a stream (0 when missing)
xlen() { local n; n=$(rcli XLEN "$1" 2>/dev/null); echo "${n:-0}"; }
# entries <key>: one JSON object per entry, {"id":..., field: value, ...}
entries() {
    rcli --json XRANGE "$1" - + | jq -c '.[] | {id: .[0]} + (.[1] as $f
        | [range(0; $f | length; 2) as $i | {key: $f[$i], value: $f[$i + 1]}] | from_entries)'
}
# redis_sink <stream_key> [extra json members]: a sink config
redis_sink() {
    echo "{\"type\":\"redis\",\"url\":\"${SINK_URL:-$REDIS_URL}\",\"stream_key\":\"$1\"${2:+,$2}}"
}
pipeline_healthy() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .healthy"; }
last_error() { http_get "$1" /status | jq -r ".pipelines[] | select(.name == \"$2\") | .last_error // empty"; }

# --- a private redis-server (for tests that stop or reconfigure it) ----------
# start_private_redis <id> [redis-server args...]: on a free port, its own
# directory; sets PRIV_REDIS_PORT_<id>. Restarting with the same id keeps the
# port and the directory (so an append-only file survives).
declare -A PRIV_REDIS_PIDS=()
start_private_redis() {
    local id=$1; shift
    local d="$TEST_TMP/redis-$id" try
    mkdir -p "$d"
    for try in 1 2 3; do
        local port; port=$(cat "$d/port" 2>/dev/null || free_port)
        echo "$port" > "$d/port"
        redis-server --bind 127.0.0.1 --port "$port" --dir "$d" --save '' --appendonly no \
            --logfile "$d/redis.log" "$@" </dev/null >/dev/null 2>&1 &
        PRIV_REDIS_PIDS[$id]=$!
        eval "PRIV_REDIS_PORT_$id=$port"
        # ready when it answers PING (NOAUTH: it answers, but wants a password)
        if wait_until 10 "redis-cli -h 127.0.0.1 -p $port ping 2>&1 | grep -q 'PONG\|NOAUTH' || ! kill -0 ${PRIV_REDIS_PIDS[$id]}" \
            && kill -0 "${PRIV_REDIS_PIDS[$id]}" 2>/dev/null; then
            return 0
        fi
        wait "${PRIV_REDIS_PIDS[$id]}" 2>/dev/null
        [ "$try" -lt 3 ] && grep -q "Address already in use" "$d/redis.log" 2>/dev/null || break
        diag "private redis-server $id: port $port in use, trying another"
        rm -f "$d/port"
    done
    tail -5 "$d/redis.log" | sed 's/^/#   /'
    bail "private redis-server $id did not start"
}
priv_redis_port() { eval "echo \$PRIV_REDIS_PORT_$1"; }
stop_private_redis() {   # SIGTERM (clean shutdown: the AOF is flushed) and wait
    local pid=${PRIV_REDIS_PIDS[$1]:-}; [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    unset "PRIV_REDIS_PIDS[$1]"
}

_redis_cleanup() {
    local id
    for id in "${!PRIV_REDIS_PIDS[@]}"; do kill -9 "${PRIV_REDIS_PIDS[$id]}" 2>/dev/null; wait "${PRIV_REDIS_PIDS[$id]}" 2>/dev/null; done
    rcli --scan --pattern "$REDIS_PREFIX*" 2>/dev/null | while IFS= read -r k; do rcli DEL "$k" >/dev/null; done
}
trap '_redis_cleanup; _cleanup' EXIT
