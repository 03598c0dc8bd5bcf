#!/usr/bin/env bash
# scripts/demo.sh - pgtrickle-relay in one minute (run it with `make demo`).
#
# Starts a throwaway PostgreSQL on loopback, installs the relay's SQL catalog,
# creates an outbox and a pipeline that relays it to a JSONL file, starts the
# relay, writes a few orders the way an application would, and shows the
# events that arrive, the relay's /health and /metrics. Everything it starts
# is stopped and removed at the end, also on failure or Ctrl-C.
#
# Environment: RELAY_BIN (default build/pgtrickle-relay), PGBIN (newest
# /usr/lib/postgresql/*/bin), DEMO_KEEP=1 keeps the temporary directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

RELAY_BIN=${RELAY_BIN:-$ROOT/build/pgtrickle-relay}
if [ -z "${PGBIN:-}" ]; then
    PGBIN=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi
EXPECTED_EVENTS=5          # 1 + 1 + (2 inserted + 1 deleted), see step 5
WAIT_SECONDS=10

if [ -t 1 ]; then B=$'\033[1m' G=$'\033[32m' R=$'\033[31m' N=$'\033[0m'; else B='' G='' R='' N=''; fi
section() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
say() { printf '   %s\n' "$*"; }
die() { printf '\n%sdemo FAILED: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
indent() { sed 's/^/   | /'; }

[ -x "$RELAY_BIN" ] || die "$RELAY_BIN not found (build it first: make demo, or make build)"
[ -x "$PGBIN/initdb" ] || die "PostgreSQL server binaries not found (scripts/install-deps.sh installs postgresql-15)"
command -v curl >/dev/null || die "curl not found (scripts/install-deps.sh installs it)"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

port_free() {   # nothing bound to 127.0.0.1:$1
    if command -v python3 >/dev/null; then
        python3 -c 'import socket, sys; socket.socket().bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
    else
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 1; fi
    fi
}
pick_port() {   # first free port from $1 on
    local p=$1
    while ! port_free "$p"; do
        p=$((p + 1))
        [ "$p" -lt $(($1 + 200)) ] || die "no free port in $1..$p"
    done
    echo "$p"
}

# --- cleanup, always -----------------------------------------------------------
WORK='' PGDATA_DIR='' PG_STARTED=0 RELAY_PID=''
# shellcheck disable=SC2317  # invoked from the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$RELAY_PID" 2>/dev/null || true
        wait "$RELAY_PID" 2>/dev/null || true
    fi
    if [ "$rc" != 0 ] && [ -n "$WORK" ]; then
        if [ -s "$WORK/relay.log" ]; then
            section "relay log (last 30 lines)"; tail -n 30 "$WORK/relay.log" | indent
        fi
        if [ -s "$WORK/postgres.log" ]; then
            section "postgres log (last 10 lines)"; tail -n 10 "$WORK/postgres.log" | indent
        fi
    fi
    if [ "$PG_STARTED" = 1 ]; then
        as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    if [ -n "$WORK" ]; then
        if [ "${DEMO_KEEP:-0}" = 1 ]; then echo "demo: kept $WORK"; else rm -rf "$WORK"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- 1. PostgreSQL ------------------------------------------------------------
section "1. Starting a throwaway PostgreSQL (loopback only, wal_level=logical)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgtrickle-relay-demo.XXXXXX")
chmod 755 "$WORK"
if [ "$(id -u)" = 0 ]; then chown postgres: "$WORK"; fi
PGDATA_DIR=$WORK/pgdata
PGPORT=$(pick_port 55432)
as_pg "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 -N \
    >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
as_pg "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$WORK/postgres.log" -w -t 30 -o \
    "-c listen_addresses=127.0.0.1 -p $PGPORT -k $WORK -c wal_level=logical -c fsync=off" \
    start >/dev/null || die "PostgreSQL did not start"
PG_STARTED=1
PG_URL="postgresql://postgres@127.0.0.1:$PGPORT/postgres"
PSQL=("$PGBIN/psql" -X -q -At -v ON_ERROR_STOP=1 -d "$PG_URL")
say "$("${PSQL[@]}" -c 'SELECT version()' | cut -d, -f1) on 127.0.0.1:$PGPORT"
say "data directory $PGDATA_DIR (removed at the end)"

sql() {   # show the SQL, then run it (its result rows are not shown)
    printf '%s\n' "$1" | sed 's/^/   sql> /'
    "${PSQL[@]}" -c "$1" >/dev/null || die "this SQL statement failed"
}

# --- 2. catalog ---------------------------------------------------------------
section "2. Installing the relay's SQL catalog (schema pgtrickle)"
say "\$ pgtrickle-relay init --postgres-url $PG_URL"
"$RELAY_BIN" init --postgres-url "$PG_URL" 2>&1 | indent
[ "${PIPESTATUS[0]}" = 0 ] || die "pgtrickle-relay init failed"

# --- 3. outbox + pipeline -----------------------------------------------------
section "3. Creating an outbox and a pipeline: configuration is plain SQL"
EVENTS=$WORK/events.jsonl
sql "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL, qty int NOT NULL);"
sql "SELECT pgtrickle.enable_outbox('orders');"
sql "SELECT pgtrickle.set_relay_outbox('orders-to-file', 'orders', NULL,
       '{\"type\":\"file\",\"output\":\"$EVENTS\"}');"
say "the pipeline as stored:"
"${PSQL[@]}" -c "SELECT name || '  enabled=' || enabled || '  ' || config::text FROM pgtrickle.relay_outbox_config" \
    2>/dev/null | indent || true

# --- 4. relay -----------------------------------------------------------------
section "4. Starting the relay in the background"
MPORT=$(pick_port 19090)
# --allow-path: the only directory whose files pipeline configs may name (the
# file sink's output above); without it the relay refuses the pipeline.
RELAY_ARGS=(--postgres-url "$PG_URL" --metrics-addr "127.0.0.1:$MPORT" --discovery-interval 1s --log-level info
            --allow-path "$WORK")
say "\$ pgtrickle-relay ${RELAY_ARGS[*]} &"
"$RELAY_BIN" "${RELAY_ARGS[@]}" >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
owned=0
for _ in $(seq $((WAIT_SECONDS * 10))); do
    kill -0 "$RELAY_PID" 2>/dev/null || die "the relay exited right after starting"
    health=$(curl -s --max-time 1 "http://127.0.0.1:$MPORT/health" || true)
    if [[ "$health" =~ \"pipelines_owned\":\ *[1-9] ]]; then owned=1; break; fi
    sleep 0.1
done
if [ "$owned" = 1 ]; then
    say "relay pid $RELAY_PID owns the pipeline; metrics on http://127.0.0.1:$MPORT"
else
    say "relay pid $RELAY_PID has not reported the pipeline as owned yet (/health: ${health:-no answer}); going on"
fi

# --- 5. writes ----------------------------------------------------------------
section "5. The application writes orders: table row + outbox row in ONE transaction"
sql "BEGIN;
INSERT INTO orders VALUES (1, 'book', 2);
SELECT pgtrickle.outbox_write('orders', '[{\"id\":1,\"item\":\"book\",\"qty\":2}]');
COMMIT;"
echo
sql "BEGIN;
INSERT INTO orders VALUES (2, 'pen', 10);
SELECT pgtrickle.outbox_write('orders', '[{\"id\":2,\"item\":\"pen\",\"qty\":10}]');
COMMIT;"
echo
sql "BEGIN;
INSERT INTO orders VALUES (3, 'lamp', 1), (4, 'mug', 4);
DELETE FROM orders WHERE id = 1;
SELECT pgtrickle.outbox_write('orders',
       '[{\"id\":3,\"item\":\"lamp\",\"qty\":1},{\"id\":4,\"item\":\"mug\",\"qty\":4}]',
       '[{\"id\":1,\"item\":\"book\",\"qty\":2}]');
COMMIT;"
say "3 transactions committed: $EXPECTED_EVENTS row changes (4 inserted, 1 deleted)"

# --- 6. events ----------------------------------------------------------------
section "6. Events the relay wrote to $EVENTS"
count_events() { if [ -f "$EVENTS" ]; then wc -l <"$EVENTS"; else echo 0; fi; }
start=$(date +%s%N)
for _ in $(seq $((WAIT_SECONDS * 20))); do
    [ "$(count_events)" -ge "$EXPECTED_EVENTS" ] && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.05
done
got=$(count_events)
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
if [ ! -f "$EVENTS" ]; then
    say "(the file does not exist)"
else
    if command -v jq >/dev/null; then jq -c . "$EVENTS" | indent; else indent <"$EVENTS"; fi
fi
if [ "$got" -lt "$EXPECTED_EVENTS" ]; then
    die "only $got of $EXPECTED_EVENTS events arrived within ${WAIT_SECONDS}s"
fi
say "${G}$got events arrived${N}; the last one ${elapsed_ms} ms after the last commit."
say "dedup_key = {outbox table}:{outbox id}:{row index}: a consumer that sees an event twice"
say "(at-least-once delivery) can drop the repeat by this key."

# --- 7. endpoints -------------------------------------------------------------
section "7. The relay's read-only HTTP endpoints"
say "\$ curl http://127.0.0.1:$MPORT/health"
curl -s --max-time 2 "http://127.0.0.1:$MPORT/health" | indent || true
echo
say "\$ curl http://127.0.0.1:$MPORT/metrics | grep ..."
curl -s --max-time 2 "http://127.0.0.1:$MPORT/metrics" |
    grep -E '^pgtrickle_relay_(messages_published_total|messages_consumed_total|pipelines_owned|pipeline_healthy)' |
    head -n 8 | indent || true

# --- 8. shutdown --------------------------------------------------------------
section "8. Stopping the relay with SIGTERM (finishes the batch in flight, then exits)"
kill -TERM "$RELAY_PID"
relay_rc=0
wait "$RELAY_PID" || relay_rc=$?
RELAY_PID=''
say "relay exited with code $relay_rc"
section "relay log"
indent <"$WORK/relay.log"
[ "$relay_rc" = 0 ] || die "the relay did not exit cleanly on SIGTERM (exit code $relay_rc)"

section "Done"
say "PostgreSQL stopped and $WORK removed on exit."
say "Next: README.md (pipelines, sinks, sources), make test (the full test suite)."
