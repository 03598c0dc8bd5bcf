#!/usr/bin/env bash
# scripts/run-tests.sh - run the whole test suite (unit + integration) against
# real servers on loopback, then print "N passed, N failed".
#
#   BUILD=build scripts/run-tests.sh [extra meson test args, e.g. --suite unit]
#
# Environment:
#   BUILD                 meson build dir (default: build), relative to the repo root
#   RELAY_TEST_SERVICES   extra services to start besides pg, e.g. "nats redis"
#   RELAY_SERVICES_DIR    where the services keep their data and env file
#                         (default /tmp/pgtrickle-relay-services)
#   MESON_TEST_ARGS       extra arguments for meson test
#
# Services this script starts are always stopped on exit. If PostgreSQL was
# already running in $RELAY_SERVICES_DIR (a developer's session), it is reused
# and left running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
export RELAY_SERVICES_DIR=${RELAY_SERVICES_DIR:-/tmp/pgtrickle-relay-services}
export RELAY_BIN=${RELAY_BIN:-$BUILD/pgtrickle-relay}
SERVICES=$ROOT/tests/services/services.sh

if [ ! -f "$BUILD/build.ninja" ]; then
    echo "run-tests: $BUILD is not a configured meson build dir (run: make build)" >&2
    exit 2
fi

# LeakSanitizer suppressions for third-party libraries, when a sanitized build
# is tested and the project ships a suppression file.
if [ -f "$ROOT/tests/lsan.supp" ] && [ -z "${LSAN_OPTIONS:-}" ]; then
    export LSAN_OPTIONS="suppressions=$ROOT/tests/lsan.supp:print_suppressions=0"
fi

# --- services -----------------------------------------------------------------
pg_running() {   # is a postmaster alive for $RELAY_SERVICES_DIR/pg/data?
    local pidfile=$RELAY_SERVICES_DIR/pg/data/postmaster.pid pid
    [ -f "$pidfile" ] || return 1
    pid=$(head -1 "$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

stop_services=1
if pg_running; then
    echo "run-tests: reusing the services already running in $RELAY_SERVICES_DIR (left running)"
    stop_services=0
fi

# shellcheck disable=SC2317  # invoked from the EXIT trap
cleanup() {
    local rc=$?
    if [ "$stop_services" = 1 ]; then
        "$SERVICES" stop >/dev/null 2>&1 || echo "run-tests: warning: stopping services failed" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every backend's test server is listed in tests/services/default-services
# (one name per line); RELAY_TEST_SERVICES overrides the list.
if [ -z "${RELAY_TEST_SERVICES+set}" ] && [ -f "$ROOT/tests/services/default-services" ]; then
    RELAY_TEST_SERVICES=$( (grep -v -e '^#' -e '^[[:space:]]*$' "$ROOT/tests/services/default-services" || true) | tr '\n' ' ')
fi
read -r -a extra_services <<<"${RELAY_TEST_SERVICES:-}"
echo "run-tests: starting services: pg${RELAY_TEST_SERVICES:+ $RELAY_TEST_SERVICES}"
if ! "$SERVICES" start pg "${extra_services[@]}"; then
    echo "run-tests: could not start the test services" >&2
    echo "0 passed, 1 failed"
    exit 1
fi

# --- tests --------------------------------------------------------------------
LOG=$BUILD/meson-logs/testlog.json
rm -f "$LOG"
read -r -a meson_extra <<<"${MESON_TEST_ARGS:-}"
rc=0
# Test timeouts are set for a quiet machine; CI machines are shared and
# slower, so they get three times as long (a bound on a hang, not a target).
meson test -C "$BUILD" --print-errorlogs --num-processes "${TEST_PROCESSES:-2}" \
    --timeout-multiplier "${TEST_TIMEOUT_MULTIPLIER:-3}" \
    "${meson_extra[@]}" "$@" || rc=$?

# --- summary ------------------------------------------------------------------
# testlog.json: one JSON object per test with "result" = OK, FAIL, SKIP,
# EXPECTEDFAIL, UNEXPECTEDPASS, TIMEOUT, ERROR, ...
passed=0 failed=0 skipped=0
if [ -f "$LOG" ]; then
    while read -r result; do
        case "$result" in
            OK | EXPECTEDFAIL) passed=$((passed + 1)) ;;
            SKIP) skipped=$((skipped + 1)) ;;
            *) failed=$((failed + 1)) ;;
        esac
    done < <(grep -o '"result": *"[A-Z]*"' "$LOG" | sed 's/.*"\([A-Z]*\)"$/\1/')
fi
if [ "$rc" != 0 ] && [ "$failed" = 0 ]; then
    # meson failed before or outside the tests (build error, no tests, ...)
    failed=1
    echo "run-tests: meson test exited with $rc before any test failed (see above)" >&2
fi
if [ "$failed" != 0 ] && [ -f "$LOG" ]; then
    python3 "$ROOT/scripts/failure-digest.py" "$LOG" || true
fi
echo
if [ "$skipped" != 0 ]; then echo "$skipped skipped"; fi
echo "$passed passed, $failed failed"
exit "$rc"
