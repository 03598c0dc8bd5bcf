#!/usr/bin/env bash
# Command line: --version/--help, bad flags exit 2 with one line naming the
# flag, a database without the catalog exits 1 naming `init`, init is
# idempotent, SIGTERM exits 0, JSON logs are one object per line.
. "$(dirname "$0")/lib.sh"
out=$("$RELAY_BIN" --version); rc=$?
is "$rc" 0 "--version exits 0"
like "$(head -n 1 <<<"$out")" "^pgtrickle-relay [0-9]+\.[0-9]+\.[0-9]+ \(catalog version [0-9]+\)$" \
    "--version prints the version and the catalog version"
like "$out" $'\nsources: [^\n]*outbox[^\n]*\nsinks: [^\n]*file' "--version lists the sources and sinks compiled in"
like "$out" $'\nlibraries:\n  libpq [0-9]+\.[0-9]+\n  jansson [0-9.]+\n' "--version lists the library versions"
like "$out" "sd_notify (yes|no)" "--version says whether sd_notify is built in"
like "$("$RELAY_BIN" --help)" "--postgres-url.*PGTRICKLE_RELAY_POSTGRES_URL" "--help lists flags and env vars"

err=$("$RELAY_BIN" --postgres-url x --bogus 2>&1 >/dev/null); rc=$?
is "$rc" 2 "unknown flag exits 2"
is "$(echo "$err" | wc -l)" 1 "with one line"
like "$err" "--bogus" "naming the flag"
err=$(env -u PGTRICKLE_RELAY_POSTGRES_URL "$RELAY_BIN" 2>&1); rc=$?
is "$rc" 2 "missing --postgres-url exits 2"
like "$err" "postgres-url is required" "and says so"
err=$(PGTRICKLE_RELAY_DISCOVERY_INTERVAL=soon "$RELAY_BIN" --postgres-url x 2>&1); rc=$?
is "$rc" 2 "bad env value exits 2"
like "$err" "PGTRICKLE_RELAY_DISCOVERY_INTERVAL" "naming the variable"

# No catalog yet.
"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$TEST_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$TEST_DB\"" >/dev/null
err=$("$RELAY_BIN" --postgres-url "$DB_URL" --metrics-addr 127.0.0.1:$(free_port) 2>&1); rc=$?
is "$rc" 1 "missing catalog exits 1"
like "$err" "pgtrickle-relay init" "and names pgtrickle-relay init"

"$RELAY_BIN" init --postgres-url "$DB_URL" >/dev/null 2>&1; rc1=$?
sql "SELECT pgtrickle.set_relay_outbox('keep-me', 'orders', NULL, '{\"type\":\"stdout\"}')" >/dev/null
"$RELAY_BIN" init --postgres-url "$DB_URL" >/dev/null 2>&1; rc2=$?
is "$rc1$rc2" "00" "init twice succeeds"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_outbox_config")" 1 "re-running init keeps the data"
err=$("$RELAY_BIN" init --postgres-url "postgresql://postgres@127.0.0.1:1/x" 2>&1); rc=$?
is "$rc" 1 "init against an unreachable server exits 1"

sql "SELECT pgtrickle.delete_relay('keep-me')" >/dev/null
start_relay r1 --log-format json
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
is "$(relay_log r1 | jq -c . 2>/dev/null | wc -l)" "$(relay_log r1 | wc -l)" "json logs: every line is a JSON object"
like "$(relay_log r1 | head -1)" '"level":"info"' "json log lines carry the level"
port=$(free_port)
"$RELAY_BIN" --postgres-url "$DB_URL" --metrics-addr 127.0.0.1:$port >"$TEST_TMP/a.log" 2>&1 &
a=$!
wait_until 10 curl -sf -o /dev/null "http://127.0.0.1:$port/metrics"
err=$("$RELAY_BIN" --postgres-url "$DB_URL" --metrics-addr 127.0.0.1:$port 2>&1); rc=$?
is "$rc" 1 "metrics address in use exits 1"
like "$err" "127.0.0.1:$port" "naming the address"
kill -INT $a; wait $a
is "$?" 0 "SIGINT exits 0"
done_testing
