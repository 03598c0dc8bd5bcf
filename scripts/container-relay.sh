#!/usr/bin/env bash
# scripts/container-relay.sh - run the container image like the binary:
#
#   scripts/container-relay.sh init --postgres-url ...
#   RELAY_BIN=scripts/container-relay.sh scripts/demo.sh    (make image-demo)
#
# The container shares the host's network (the relay reaches 127.0.0.1),
# sees ${TMPDIR:-/tmp} at the same path (files that pipelines read or write,
# e.g. the demo's), runs as the calling user (so those files are yours), and
# gets every PGTRICKLE_RELAY_* variable of the caller. SIGTERM and SIGINT
# reach the relay (podman's signal proxy); the exit code is the relay's.
#
# Environment: RELAY_IMAGE (localhost/pgtrickle-relay:latest), PODMAN
# (podman), PODMAN_RUN_ARGS (extra `podman run` options).
# Where the default runtime cannot start containers (root without
# CAP_SYS_RESOURCE and hybrid cgroups, as on this project's VMs: crun fails
# with "setrlimit RLIMIT_NOFILE: Operation not permitted"), it falls back to
# runc with explicit limits; see docs/install.md.
set -euo pipefail

IMAGE=${RELAY_IMAGE:-localhost/pgtrickle-relay:latest}
PODMAN=${PODMAN:-podman}
TMP=${TMPDIR:-/tmp}
read -r -a extra <<<"${PODMAN_RUN_ARGS:-}"

global=() compat=()
if ! "$PODMAN" run --rm --network host "$IMAGE" --version >/dev/null 2>&1; then
    global=(--runtime runc)
    # the caller's open-file limit; 16384 processes (podman's own limit
    # there is 32768, and runc may not raise a limit above its own)
    compat=(--ulimit "nofile=$(ulimit -Sn):$(ulimit -Hn)" --ulimit "nproc=16384:16384")
fi
exec "$PODMAN" "${global[@]}" run --rm --network host --user "$(id -u):$(id -g)" \
    -v "$TMP:$TMP" --env 'PGTRICKLE_RELAY_*' "${compat[@]}" "${extra[@]}" "$IMAGE" "$@"
