#!/usr/bin/env bash
# bench/run.sh - run the benchmarks: one command, a table per benchmark on
# stdout and JSON in bench/results/<name>.json.
#
#   bench/run.sh              every bench/bench_*.sh
#   bench/run.sh nats kafka   only bench_nats.sh and bench_kafka.sh
#
# Each benchmark measures the relay and, in the same run, a physical
# reference (a plain client of the same library, pg_recvlogical, ...) and
# reports the ratio: absolute numbers on a shared 2-core machine are noise,
# ratios measured side by side are not. Benchmarks are never part of the
# test suite. They use the same test servers as the tests
# (tests/services/services.sh) and stop what they started.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export RELAY_BIN=${RELAY_BIN:-$ROOT/${BUILD:-build}/pgtrickle-relay}
export RELAY_SERVICES_DIR=${RELAY_SERVICES_DIR:-/tmp/pgtrickle-relay-bench}
export BENCH_RESULTS=$ROOT/bench/results
mkdir -p "$BENCH_RESULTS"
[ -x "$RELAY_BIN" ] || { echo "bench: build first (make)" >&2; exit 2; }

if [ $# -gt 0 ]; then
    scripts=(); for n in "$@"; do scripts+=("bench/bench_$n.sh"); done
else
    scripts=(bench/bench_*.sh)
fi
trap 'tests/services/services.sh stop >/dev/null 2>&1 || true' EXIT
rc=0
for s in "${scripts[@]}"; do
    [ -f "$s" ] || { echo "bench: no such benchmark: $s" >&2; rc=2; continue; }
    echo "=== $(basename "$s" .sh) ($(nproc) CPUs, $(uname -m)) ==="
    bash "$s" || rc=$?
done
exit $rc
