#!/usr/bin/env bash
# tests/soak/selftest.sh - the soak harness must be able to fail (issue 18):
# build the relay with -Dtest_ack_first=true (it acknowledges each batch
# before publishing it and drops what fails, like the tools it replaces) in
# a build directory of its own, run a short soak with broker restarts, and
# check that the harness reports lost events and fails.
#
#   tests/soak/selftest.sh [BUILD_DIR]   (default build-soak-broken)
# TAP output.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-$ROOT/build-soak-broken}
echo "1..3"
if [ ! -f "$B/build.ninja" ]; then
    meson setup "$B" "$ROOT" -Dtest_ack_first=true -Dfuzz=false >"$ROOT/soak-selftest-setup.log" 2>&1 \
        || { echo "not ok 1 - configure the broken build"; exit 1; }
    rm -f "$ROOT/soak-selftest-setup.log"
fi
if ninja -C "$B" pgtrickle-relay tests/natscli >/dev/null 2>&1 \
    && "$B/pgtrickle-relay" --version | grep -q "BROKEN ON PURPOSE"; then
    echo "ok 1 - the broken build says so in --version"
else
    echo "not ok 1 - build the broken relay"; exit 1
fi
# a NATS restart every few seconds: the broken relay drops the batches it
# acknowledged and then failed to publish
out=$(RELAY_BIN=$B/pgtrickle-relay SOAK_SECONDS=${SOAK_SECONDS:-40} SOAK_FAULT_EVERY=4 \
      SOAK_SEED=${SOAK_SEED:-7} SOAK_FAULTS="nats" SOAK_BACKENDS="" SOAK_DRAIN_SECONDS=30 bash "$ROOT/tests/soak/soak.sh" 2>&1)
echo "$out" | grep '^# soak:' | sed 's/^# soak:/# broken relay:/'
if echo "$out" | grep -q '^not ok .*every produced event is in its sink'; then
    echo "ok 2 - the harness fails the broken relay"
else
    echo "not ok 2 - the harness fails the broken relay"
fi
lost=$(echo "$out" | sed -n 's/^# soak: seed .* lost \([0-9]*\),.*/\1/p')
if [ "${lost:-0}" -gt 0 ]; then echo "ok 3 - and reports lost events ($lost)"; else echo "not ok 3 - and reports lost events (${lost:-none})"; fi
