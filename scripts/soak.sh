#!/usr/bin/env bash
# scripts/soak.sh - `make soak`: one long seeded soak run (tests/soak/soak.sh,
# docs/reliability.md) against servers of its own.
#
#   SOAK_SECONDS (600)  SOAK_SEED (random, printed)  SOAK_FAULT_EVERY (12)
#   SOAK_FAULTS (every kind)  SOAK_BACKENDS (every one that can run)  BUILD (build)
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
# the soak runs servers of its own; the services provide what they need
# (the SQS emulator's npm package, the Kafka mock cluster's binary)
"$ROOT/tests/services/services.sh" start pg nats kafka sqs >/dev/null
bash "$ROOT/tests/soak/soak.sh"
