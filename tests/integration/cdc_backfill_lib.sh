# tests/integration/cdc_backfill_lib.sh - what the cdc_backfill*.sh tests
# share (sourced after lib.sh and cdc_lib.sh): a table of ROWS rows, a
# function near() that picks a key at or just after the running backfill's
# confirmed position (so writes land in the chunk being read), and writers.

# bf_setup_table <table> <rows> <chunk rows>: the table and near(); the
# replica copy in schema replica.
bf_setup_table() {
    local t=$1 rows=$2 chunk=$3
    sql "CREATE TABLE $t (id int PRIMARY KEY, v int NOT NULL, note text);
         INSERT INTO $t SELECT g, g, 'n' || g FROM generate_series(1, $rows) g;
         CREATE SEQUENCE IF NOT EXISTS moves;
         CREATE SCHEMA IF NOT EXISTS replica;
         CREATE TABLE replica.$t (LIKE $t INCLUDING ALL);
         CREATE OR REPLACE FUNCTION near() RETURNS int LANGUAGE sql VOLATILE AS \$\$
             SELECT COALESCE((SELECT last_key[1]::int FROM pgtrickle.relay_backfill
                               WHERE state = 'running' ORDER BY id DESC LIMIT 1), 0)
                    + 1 + floor(random() * $((chunk * 2)))::int \$\$;" >/dev/null \
        || bail "setting up table $t failed"
}

# bf_writer <table> <stop file>: until the stop file exists, one psql session
# of updates, deletes, upserts and key moves aimed by near(); errors (the
# deadlocks two writers may run into) go to $TEST_TMP/writer.err.
bf_writer() {
    local t=$1 stop=$2 i=0
    while [ ! -f "$stop" ]; do
        i=$((i + 1))
        echo "UPDATE $t SET v = v + 1, note = 'u$i' WHERE id = (SELECT near());"
        echo "BEGIN; DELETE FROM $t WHERE id = (SELECT near()); UPDATE $t SET v = -v WHERE id = (SELECT near()); COMMIT;"
        echo "INSERT INTO $t SELECT (SELECT near()), $i, 'ins$i' ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v, note = EXCLUDED.note;"
        [ $((i % 5)) = 0 ] && echo "UPDATE $t SET id = 1000000 + nextval('moves') WHERE id = (SELECT near());"
        [ $((i % 50)) = 0 ] && echo "SELECT pg_sleep(0.01);"
    done | "${PSQL[@]/ON_ERROR_STOP=1/ON_ERROR_STOP=0}" -d "$TEST_DB" >/dev/null 2>>"$TEST_TMP/writer.err"
}
# writer errors other than deadlocks (empty when none)
# Deadlocks and unique violations between the concurrent writers (a re-key
# racing another writer's insert of that id) roll their transaction back:
# part of the workload, not a failure (the replay compares with what committed).
bf_writer_errors() { grep '^ERROR' "$TEST_TMP/writer.err" 2>/dev/null | grep -v -e 'deadlock detected' -e 'duplicate key value violates unique constraint' | head -3; }

bf_state() { sql "SELECT state FROM pgtrickle.relay_backfills WHERE id = $1"; }
# bf_replay <events file> <tables>: the replay's last line (RESULT ...), its
# diagnostics as TAP comments
bf_replay() {
    local res
    res=$(python3 "$(dirname "$0")/cdc_backfill_replay.py" "$1" replica "$2" "${PSQL[@]}" -d "$TEST_DB" 2>&1)
    diag "$(grep '^#' <<<"$res" | sed 's/^# //')" >&2
    tail -n 1 <<<"$res"
}
