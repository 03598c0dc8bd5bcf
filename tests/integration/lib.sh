# tests/integration/lib.sh - shared helpers for the integration tests.
#
# Each test is a bash script printing TAP. It talks to the real PostgreSQL
# started by tests/services/services.sh (env file sourced below), works in a
# database of its own (so tests can run in parallel), and runs the real
# pgtrickle-relay binary ($RELAY_BIN).
set -uo pipefail

: "${RELAY_SERVICES_DIR:=/tmp/pgtrickle-relay-services}"
if [ -f "$RELAY_SERVICES_DIR/env" ]; then . "$RELAY_SERVICES_DIR/env"; fi
: "${PGT_PGHOST:?services not started: run tests/services/services.sh start pg}"
: "${RELAY_BIN:?RELAY_BIN must point at the pgtrickle-relay binary}"

TEST_NAME=$(basename "$0" .sh)
TEST_TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-$TEST_NAME.XXXXXX")
chmod 755 "$TEST_TMP"
TEST_DB=${TEST_DB:-t_${TEST_NAME//[^a-zA-Z0-9_]/_}}
DB_URL="postgresql://postgres@$PGT_PGHOST:$PGT_PGPORT/$TEST_DB"
PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGT_PGHOST" -p "$PGT_PGPORT" -U postgres)

_tap_n=0
_tap_fail=0
declare -A RELAY_PIDS=()

# --- TAP -------------------------------------------------------------------
ok() {   # ok <0|1 or command result> <description>
    _tap_n=$((_tap_n + 1))
    if [ "$1" = 0 ] || [ "$1" = true ]; then echo "ok $_tap_n - $2"
    else echo "not ok $_tap_n - $2"; _tap_fail=$((_tap_fail + 1)); fi
}
pass() { ok 0 "$1"; }
fail() { ok 1 "$1"; }
check() { # check <description> <command...>: ok when the command succeeds
    # (its stdout goes to stderr: only TAP lines may reach stdout)
    local d=$1; shift
    if "$@" >&2; then ok 0 "$d"; else ok 1 "$d"; fi
}
is() {   # is <got> <expected> <description>
    if [ "$1" == "$2" ]; then ok 0 "$3"
    else ok 1 "$3"; diag "got:      '$1'"; diag "expected: '$2'"; fi
}
like() { # like <got> <extended regex> <description>
    if [[ "$1" =~ $2 ]]; then ok 0 "$3"
    else ok 1 "$3"; diag "got:      '$1'"; diag "expected to match: $2"; fi
}
diag() { printf '%s\n' "$*" | head -c 4000 | sed 's/^/# /'; }
done_testing() {
    # A sanitizer build reports into the relay logs: any report fails the test.
    local reports
    reports=$(grep -l -E "AddressSanitizer|LeakSanitizer|runtime error:" "$TEST_TMP"/*.log 2>/dev/null)
    if [ -n "$reports" ]; then
        fail "no sanitizer reports in the relay logs"
        grep -h -A12 -E "AddressSanitizer|LeakSanitizer|runtime error:" $reports | head -60 | sed 's/^/#   /'
    fi
    echo "1..$_tap_n"
    [ "$_tap_fail" = 0 ]
}
bail() { echo "Bail out! $*"; exit 1; }

# --- PostgreSQL --------------------------------------------------------------
sql() { "${PSQL[@]}" -d "$TEST_DB" -c "$1"; }              # prints rows, fails on error
sql_as() { local u=$1; shift; "${PSQL[@]/postgres/$u}" -d "$TEST_DB" -c "$1"; }
sql_err() { "${PSQL[@]}" -d "$TEST_DB" -c "$1" 2>&1 >/dev/null && return 1; return 0; }  # prints the error
sql_error_text() { "${PSQL[@]}" -d "$TEST_DB" -c "$1" 2>&1 >/dev/null || true; }

setup_db() {   # fresh database + catalog
    "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$TEST_DB\" WITH (FORCE)" >/dev/null
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE \"$TEST_DB\"" >/dev/null
    "$RELAY_BIN" init --postgres-url "$DB_URL" >"$TEST_TMP/init.log" 2>&1 \
        || { cat "$TEST_TMP/init.log"; bail "pgtrickle-relay init failed"; }
}

pg_restart() {  # restart the shared server (fast mode; kills every session)
    runuser -u postgres -- "$PGT_PGBIN/pg_ctl" -D "$PGT_PGDATA" -m fast -w restart >/dev/null 2>&1 \
        || "$PGT_PGBIN/pg_ctl" -D "$PGT_PGDATA" -m fast -w restart >/dev/null
}

# --- the relay ---------------------------------------------------------------
# free_port: a TCP port on 127.0.0.1 that nothing listens on. It is drawn at
# random from 20000-32767, below the kernel's ephemeral range (32768+ here),
# so no outgoing connection of a relay or a server can take it between this
# call and the bind; ports already handed out to this test are never handed
# out again (callers often take two before starting anything).
free_port() {
    local issued="$TEST_TMP/ports" p i
    for i in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 12768))
        grep -qx "$p" "$issued" 2>/dev/null && continue
        python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$p" \
            2>/dev/null || continue
        echo "$p" >>"$issued"
        echo "$p"
        return 0
    done
    bail "free_port: no free port found in 200 tries"
}

# free_port_group <offset>...: a free port p whose p+<offset> ports are free
# too (a RabbitMQ node listens on p, p+1000 epmd, p+2000 distribution,
# p+3000 TLS). p+offset stays below 32768, where the kernel's ephemeral
# ports (outgoing connections) begin; all of them are recorded as issued.
free_port_group() {
    local issued="$TEST_TMP/ports" p o i ok max=0
    for o in "$@"; do [ "$o" -gt "$max" ] && max=$o; done
    for i in $(seq 1 200); do
        p=$(free_port) || return 1   # p itself is free and recorded
        [ $((p + max)) -lt 32768 ] || continue
        ok=1
        for o in "$@"; do
            [ "$o" = 0 ] && continue
            grep -qx "$((p + o))" "$issued" 2>/dev/null && { ok=0; break; }
            python3 -c 'import socket,sys; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$((p + o))" \
                2>/dev/null || { ok=0; break; }
        done
        [ "$ok" = 1 ] || continue
        for o in "$@"; do [ "$o" = 0 ] || echo "$((p + o))" >>"$issued"; done
        echo "$p"
        return 0
    done
    bail "free_port_group: no free group of ports found in 200 tries"
}

# start_relay <id> [extra flags...]: runs the daemon in the background;
# log in $TEST_TMP/<id>.log, metrics port in RELAY_PORT_<id>, stdin from
# $RELAY_STDIN (default /dev/null). Pipeline configs may name files under
# $TEST_TMP (--allow-path; RELAY_ALLOW_PATH overrides; more with extra flags).
# RELAY_WRAP (an array, e.g. (ip netns exec NS)) runs the relay through a
# command that execs it; RELAY_HOST is the metrics address (127.0.0.1).
declare -A RELAY_HOSTS=()
start_relay() {
    local id=$1; shift
    local port try host=${RELAY_HOST:-127.0.0.1}
    RELAY_HOSTS[$id]=$host
    for try in 1 2 3; do
        port=$(free_port)
        eval "RELAY_PORT_$id=$port"
        ${RELAY_WRAP[@]+"${RELAY_WRAP[@]}"} "$RELAY_BIN" --postgres-url "${RELAY_URL:-$DB_URL}" --metrics-addr "$host:$port" \
            --discovery-interval "${DISCOVERY:-1s}" --log-level "${RELAY_LOG_LEVEL:-debug}" \
            --allow-path "${RELAY_ALLOW_PATH:-$TEST_TMP}" "$@" \
            <"${RELAY_STDIN:-/dev/null}" >>"$TEST_TMP/$id.log" 2>&1 &
        RELAY_PIDS[$id]=$!
        wait_until 10 "curl -sf -o /dev/null http://$host:$port/metrics || ! kill -0 ${RELAY_PIDS[$id]}"
        if curl -sf -o /dev/null "http://$host:$port/metrics"; then return 0; fi
        # another process took the port between free_port and the relay's bind
        if [ "$try" -lt 3 ] && ! kill -0 "${RELAY_PIDS[$id]}" 2>/dev/null \
            && tail -3 "$TEST_TMP/$id.log" | grep -q "metrics address $host:$port: Address already in use"; then
            wait "${RELAY_PIDS[$id]}" 2>/dev/null
            continue
        fi
        break
    done
    diag "relay $id did not start:"; tail -20 "$TEST_TMP/$id.log" | sed 's/^/#   /'
}
relay_port() { eval "echo \$RELAY_PORT_$1"; }
relay_pid() { echo "${RELAY_PIDS[$1]}"; }
stop_relay() {  # SIGTERM and wait; returns the exit code
    local pid=${RELAY_PIDS[$1]:-}; [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null; local rc=0; wait "$pid" || rc=$?
    unset "RELAY_PIDS[$1]"; return $rc
}
kill9_relay() {
    local pid=${RELAY_PIDS[$1]:-}; [ -n "$pid" ] || return 0
    kill -9 "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; unset "RELAY_PIDS[$1]"
}
relay_log() { cat "$TEST_TMP/$1.log"; }
relay_host() { echo "${RELAY_HOSTS[$1]:-127.0.0.1}"; }
http_get() { curl -s "http://$(relay_host "$1"):$(relay_port "$1")$2"; }
http_code() { curl -s -o /dev/null -w '%{http_code}' "http://$(relay_host "$1"):$(relay_port "$1")$2"; }
metric() {  # metric <relay id> <metric name with labels, exact>  -> value (or empty)
    http_get "$1" /metrics | awk -v k="$2" '$1 == k { print $2 }'
}

# wait_until <seconds> '<shell condition>': evaluates the condition (a string,
# so $(...) inside single quotes is re-run each time) every 0.1 s; 0 when it
# became true, 1 on timeout.
wait_until() {
    local limit=$1; shift
    local end=$(( $(date +%s%N) / 1000000 + limit * 1000 ))
    while :; do
        eval "$*" >/dev/null 2>&1 && return 0
        [ $(( $(date +%s%N) / 1000000 )) -ge $end ] && return 1
        sleep 0.1
    done
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

_cleanup() {
    _stop_private_pg
    for id in "${!RELAY_PIDS[@]}"; do kill -9 "${RELAY_PIDS[$id]}" 2>/dev/null; done
    wait 2>/dev/null
    if [ "${KEEP_TEST_TMP:-0}" = 0 ] && [ "$_tap_fail" = 0 ]; then rm -rf "$TEST_TMP"
    else echo "# test files kept in $TEST_TMP"; fi
}
trap _cleanup EXIT

# --- a private PostgreSQL, for tests that stop or restart the server -------
# start_private_pg: initdb + start on a free port; points TEST_DB/DB_URL/PSQL at it.
start_private_pg() {
    PRIV_DIR="$TEST_TMP/pg"
    mkdir -p "$PRIV_DIR"
    PRIV_PORT=$(free_port)
    if [ "$(id -u)" = 0 ]; then chown postgres: "$PRIV_DIR"; fi
    _as_pg "$PGT_PGBIN/initdb" -D "$PRIV_DIR/data" -U postgres --auth=trust -E UTF8 \
        --locale=C.UTF-8 -N >"$TEST_TMP/initdb.log" 2>&1 || bail "initdb failed"
    private_pg_start
    PSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PRIV_PORT" -U postgres)
    DB_URL="postgresql://postgres@127.0.0.1:$PRIV_PORT/$TEST_DB"
}
_as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
# PRIV_PG_OPTIONS: more server options (e.g. another listen address).
private_pg_start() {
    _as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -l "$PRIV_DIR/pg.log" -w -t 60 -o \
        "-c listen_addresses=127.0.0.1 -p $PRIV_PORT -k $PRIV_DIR -c wal_level=logical -c fsync=off ${PRIV_PG_OPTIONS:-}" \
        start >/dev/null || bail "private postgres did not start"
}
private_pg_stop() { _as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -m fast -w stop >/dev/null 2>&1; }
_stop_private_pg() { [ -n "${PRIV_DIR:-}" ] && _as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -m immediate -w stop >/dev/null 2>&1; return 0; }

# --- outbox helpers ----------------------------------------------------------
# write_rows <outbox> <from> <to>: one committed outbox_write per row,
# payload [{"n":i}], all through one psql session.
write_rows() {
    local ob=$1 from=$2 to=$3
    seq "$from" "$to" | awk -v ob="$ob" '{ printf "SELECT pgtrickle.outbox_write(%c%s%c, %c[{\"n\":%d}]%c);\n", 39, ob, 39, 39, $1, 39 }' \
        | "${PSQL[@]}" -d "$TEST_DB" >/dev/null
}
# file_sink <path>: a sink config for the file sink
file_sink() { echo "{\"type\":\"file\",\"output\":\"$1\"}"; }
# file_pipelines <n>: outboxes o1..o<n>, each relayed by pipeline p<i> to
# $TEST_TMP/p<i>.jsonl
file_pipelines() {
    local i
    for i in $(seq 1 "$1"); do
        sql "SELECT pgtrickle.enable_outbox('o$i')" >/dev/null
        sql "SELECT pgtrickle.set_relay_outbox('p$i', 'o$i', NULL, '$(file_sink "$TEST_TMP/p$i.jsonl")')" >/dev/null
    done
}
# owned_count <relay>: pipelines it runs; owned_by <relay>: their names, sorted
owned_count() { metric "$1" pgtrickle_relay_pipelines_owned; }
owned_by() { http_get "$1" /status | jq -r '.pipelines[] | select(.running) | .name' | sort | tr '\n' ' '; }
lines() { if [ -f "$1" ]; then wc -l < "$1" | tr -d ' '; else echo 0; fi; }
distinct_keys() { cat "$@" 2>/dev/null | jq -r .dedup_key | sort -u | wc -l | tr -d ' '; }
