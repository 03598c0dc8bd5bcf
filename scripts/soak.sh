#!/usr/bin/env bash
# scripts/soak.sh - `make soak`: one long seeded soak run (tests/soak/soak.sh,
# docs/reliability.md) against servers of its own.
#
#   SOAK_SECONDS (600)  SOAK_SEED (random, printed)  SOAK_FAULT_EVERY (12)
#   SOAK_FAULTS ("kill9 kill9 pause nats pg")  BUILD (build)
# A failing run prints its seed; running again with SOAK_SEED=<seed> replays
# the same schedule of faults.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
export RELAY_BIN=${RELAY_BIN:-$BUILD/pgtrickle-relay}
export NATSCLI=${NATSCLI:-$BUILD/tests/natscli}
export RELAY_SERVICES_DIR=${RELAY_SERVICES_DIR:-/tmp/pgtrickle-relay-soak}
export SOAK_SECONDS=${SOAK_SECONDS:-600}
trap '"$ROOT/tests/services/services.sh" stop >/dev/null 2>&1 || true' EXIT
"$ROOT/tests/services/services.sh" start pg nats >/dev/null
bash "$ROOT/tests/soak/soak.sh"
