#!/usr/bin/env bash
# sd_notify (src/notify.c) against a stand-in for systemd's notification
# socket (tests/tools/notify_listen.py): READY=1 comes once, after the HTTP
# endpoints listen and the catalog was found; STATUS= names the pipelines
# owned and follows changes, with a hostile pipeline name unable to forge a
# notification; STOPPING=1 at SIGTERM. No READY=1 while PostgreSQL is
# unreachable (STATUS says why) or when the catalog is missing; a
# NOTIFY_SOCKET nobody listens on changes nothing.
. "$(dirname "$0")/lib.sh"
LISTEN=$(dirname "$0")/../tools/notify_listen.py

if ! "$RELAY_BIN" --version | grep -q "sd_notify yes"; then
    echo "1..0 # SKIP built without libsystemd (meson -Dsystemd)"; exit 0
fi

LISTENER=''
start_listener() {   # start_listener <name> [url]: socket $TEST_TMP/<name>.sock, log <name>.jsonl
    python3 "$LISTEN" "$TEST_TMP/$1.sock" "$TEST_TMP/$1.jsonl" ${2:+"$2"} &
    LISTENER=$!
    wait_until 10 "grep -q LISTENING $TEST_TMP/$1.jsonl" || bail "notify listener did not start"
}
stop_listener() { kill "$LISTENER" 2>/dev/null; wait "$LISTENER" 2>/dev/null; LISTENER=''; }
trap 'stop_listener; _cleanup' EXIT
lines() { jq -r '.lines[]' "$TEST_TMP/$1.jsonl"; }            # every line received
last_status() { lines "$1" | grep '^STATUS=' | tail -n 1; }

setup_db
sql "CREATE TABLE orders (id int PRIMARY KEY)" >/dev/null
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL, '$(file_sink "$TEST_TMP/a.jsonl")')" >/dev/null
# a name with a newline: it must not become a READY=1 or MAINPID= of its own
sql "SELECT pgtrickle.set_relay_outbox(E'evil\\nREADY=1\\nMAINPID=1', 'orders', NULL, '$(file_sink "$TEST_TMP/b.jsonl")')" >/dev/null

# --- the normal life: READY, STATUS, STOPPING --------------------------------------
port=$(free_port)
start_listener n1 "http://127.0.0.1:$port/metrics"
# without NOTIFY_SOCKET (the relay cannot know the socket): nothing arrives
unset NOTIFY_SOCKET
start_relay r1
wait_until 10 "[ \"\$(http_get r1 /health | jq .pipelines_owned)\" = 2 ]"
is "$(http_get r1 /health | jq .pipelines_owned)" 2 "a relay started without NOTIFY_SOCKET runs both pipelines"
is "$(lines n1 | grep -vc LISTENING)" 0 "and sends no notification"
stop_relay r1

NOTIFY_SOCKET=$TEST_TMP/n1.sock "$RELAY_BIN" --postgres-url "$DB_URL" --metrics-addr "127.0.0.1:$port" \
    --discovery-interval 1s --allow-path "$TEST_TMP" >"$TEST_TMP/r2.log" 2>&1 &
RELAY_PIDS[r2]=$!
check "READY=1 arrives" wait_until 10 "lines n1 | grep -qx READY=1"
is "$(jq -r 'select(.lines | index("READY=1")) | .http' "$TEST_TMP/n1.jsonl")" 200 \
    "when READY=1 arrived, /metrics already answered"
check "STATUS= then names both pipelines owned" \
    wait_until 10 "last_status n1 | grep -q '^STATUS=owns 2 pipelines: '"
st=$(last_status n1)
like "$st" "forward/orders-file" "the status names forward/orders-file"
like "$st" "forward/evil\?READY=1\?MAINPID=1" "a newline in a pipeline name is sent as '?'"
is "$(lines n1 | grep -cx READY=1)" 1 "READY=1 was sent once, and the name forged no line"
is "$(lines n1 | grep -c '^MAINPID=')" 0 "no MAINPID= line was forged"

sql "SELECT pgtrickle.disable_relay('orders-file')" >/dev/null
check "STATUS= follows a disabled pipeline" \
    wait_until 10 "last_status n1 | grep -q '^STATUS=owns 1 pipeline: forward/evil'"
kill -TERM "${RELAY_PIDS[r2]}"
wait "${RELAY_PIDS[r2]}"; rc=$?
unset "RELAY_PIDS[r2]"
is "$rc" 0 "SIGTERM exits 0"
check "STOPPING=1 was sent at shutdown" bash -c "jq -r '.lines[]' '$TEST_TMP/n1.jsonl' | grep -qx STOPPING=1"
stop_listener

# --- PostgreSQL unreachable: no READY, STATUS says why --------------------------------
dead=$(free_port)
start_listener n2
NOTIFY_SOCKET=$TEST_TMP/n2.sock "$RELAY_BIN" --postgres-url "postgresql://postgres@127.0.0.1:$dead/x" \
    --metrics-addr "127.0.0.1:$(free_port)" >"$TEST_TMP/r3.log" 2>&1 &
RELAY_PIDS[r3]=$!
check "unreachable database: STATUS=waiting for PostgreSQL" \
    wait_until 10 "lines n2 | grep -q '^STATUS=waiting for PostgreSQL: '"
sleep 1
is "$(lines n2 | grep -cx READY=1)" 0 "and no READY=1"
stop_relay r3
stop_listener

# --- catalog missing: exit 1 without READY -------------------------------------------
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"${TEST_DB}_empty\" WITH (FORCE)" \
    -c "CREATE DATABASE \"${TEST_DB}_empty\"" >/dev/null
start_listener n3
NOTIFY_SOCKET=$TEST_TMP/n3.sock "$RELAY_BIN" --postgres-url "${DB_URL}_empty" \
    --metrics-addr "127.0.0.1:$(free_port)" >"$TEST_TMP/r4.log" 2>&1
is "$?" 1 "a database without the catalog: exit 1"
is "$(lines n3 | grep -cx READY=1)" 0 "without READY=1"
stop_listener
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"${TEST_DB}_empty\" WITH (FORCE)" >/dev/null

# --- nobody listening on NOTIFY_SOCKET ---------------------------------------------
NOTIFY_SOCKET=$TEST_TMP/nobody.sock start_relay r5
is "$(http_code r5 /health)" 200 "a NOTIFY_SOCKET nobody listens on changes nothing"
stop_relay r5
is "$?" 0 "and the relay still exits 0"
done_testing
