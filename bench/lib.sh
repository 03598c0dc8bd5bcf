# bench/lib.sh - helpers shared by the benchmarks (sourced).
# Starts nothing by itself: call bench_services pg [nats ...] first.
set -euo pipefail
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bench_services() { "$BENCH_ROOT/tests/services/services.sh" start "$@" >/dev/null; . "$RELAY_SERVICES_DIR/env"; }
BENCH_TMP=$(mktemp -d "${TMPDIR:-/tmp}/relay-bench.XXXXXX"); chmod 755 "$BENCH_TMP"
trap 'rm -rf "$BENCH_TMP"' EXIT
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# peak_rss_kb <pid>: VmHWM of a running process, in KiB
peak_rss_kb() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
# bench_db <name>: a fresh database with the relay catalog; sets BENCH_DB_URL and BPSQL
bench_db() {
    BENCH_DB=$1
    BPSQL=(psql -X -q -At -v ON_ERROR_STOP=1 -h "$PGT_PGHOST" -p "$PGT_PGPORT" -U postgres)
    "${BPSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS \"$BENCH_DB\" WITH (FORCE)" -c "CREATE DATABASE \"$BENCH_DB\"" >/dev/null
    BENCH_DB_URL="postgresql://postgres@$PGT_PGHOST:$PGT_PGPORT/$BENCH_DB"
    "$RELAY_BIN" init --postgres-url "$BENCH_DB_URL" >/dev/null 2>&1
}
bsql() { "${BPSQL[@]}" -d "$BENCH_DB" -c "$1"; }
# write_json <file> <json>: pretty-print a result object
write_json() { echo "$2" | jq . > "$1"; }
# wait_metric <port> <metric> <target> <timeout s>: until the relay
# ($RELAY_PID) reports metric >= target; sets SEEN_MS, the wall-clock ms of
# the scrape that showed it (bench/wait_metric.py: one keep-alive
# connection, not a curl per scrape). On timeout or a dead relay: the
# relay's log ($BENCH_TMP/relay.log) and exit 1.
wait_metric() {
    SEEN_MS=$(python3 "$BENCH_ROOT/bench/wait_metric.py" "$1" "$2" "$3" "$4" "$RELAY_PID") \
        || { tail -20 "$BENCH_TMP/relay.log" 2>/dev/null; exit 1; }
}
