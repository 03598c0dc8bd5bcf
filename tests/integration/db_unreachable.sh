#!/usr/bin/env bash
# /health when the relay cannot reach its database (issue 11): with a wrong
# password (a private PostgreSQL with scram-sha-256 for TCP logins) the
# relay keeps retrying and /health is 503 naming the cause, /status says the
# database is unreachable and pgtrickle_relay_database_up is 0; once the
# password matches, it connects and turns healthy, and a database that goes
# away later is reported the same way.
. "$(dirname "$0")/lib.sh"
PRIV_DIR="$TEST_TMP/pg"
mkdir -p "$PRIV_DIR"
PRIV_PORT=$(free_port)
if [ "$(id -u)" = 0 ]; then chown postgres: "$PRIV_DIR"; fi
_as_pg "$PGT_PGBIN/initdb" -D "$PRIV_DIR/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
    -E UTF8 --locale=C.UTF-8 -N >"$TEST_TMP/initdb.log" 2>&1 || bail "initdb failed"
private_pg_start
LOCAL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$PRIV_DIR" -p "$PRIV_PORT" -U postgres)   # trusted socket
"${LOCAL[@]}" -d postgres -c "CREATE DATABASE app" -c "CREATE ROLE relay LOGIN PASSWORD 'right' SUPERUSER" >/dev/null
"$RELAY_BIN" init --postgres-url "postgresql://relay:right@127.0.0.1:$PRIV_PORT/app" >"$TEST_TMP/init.log" 2>&1 \
    || { cat "$TEST_TMP/init.log"; bail "init failed"; }

RELAY_URL="postgresql://relay:wrong@127.0.0.1:$PRIV_PORT/app" start_relay r1
wait_until 10 'http_get r1 /health | jq -e ".reason | test(\"password\")"'
is "$(http_code r1 /health)" 503 "wrong password: /health is 503"
like "$(http_get r1 /health | jq -r .reason)" '^cannot reach PostgreSQL: .*password authentication failed for user "relay"' \
   "  ... naming the cause"
is "$(http_get r1 /status | jq -c '.database.reachable')" false "/status: database.reachable false"
is "$(metric r1 pgtrickle_relay_database_up)" 0 "pgtrickle_relay_database_up 0"
unlike_secret=$(http_get r1 /health; http_get r1 /status; relay_log r1)
ok "$([[ "$unlike_secret" == *wrong* ]] && echo 1 || echo 0)" "the password appears in no endpoint and no log line"

"${LOCAL[@]}" -d postgres -c "ALTER ROLE relay PASSWORD 'wrong'" >/dev/null
wait_until 40 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "once the password matches, the relay connects and is healthy"
is "$(metric r1 pgtrickle_relay_database_up)" 1 "  ... pgtrickle_relay_database_up 1"

private_pg_stop
wait_until 40 '[ "$(http_code r1 /health)" = 503 ]'
is "$(http_code r1 /health)" 503 "the database goes away: /health 503 again"
like "$(http_get r1 /health | jq -r .reason)" "^cannot reach PostgreSQL" "  ... saying so"
private_pg_start
wait_until 40 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "and healthy once it is back"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
