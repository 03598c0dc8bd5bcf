#!/usr/bin/env bash
# scripts/build-deb.sh - build the Debian package (debian/) from this
# checkout without touching it: the files git knows (committed or not,
# ignored ones left out) are copied to a temporary directory, built there
# with `dpkg-buildpackage -b -us -uc`, and the results are moved to OUT.
#
#   scripts/build-deb.sh [OUT]      (default OUT: build/deb)
#
# Environment: DEB_BUILD_OPTIONS (default "parallel=<nproc>"; add nocheck
# to skip the unit tests, noautodbgsym to skip the -dbgsym package).
# Needs the Build-Depends of debian/control (scripts/install-deps.sh
# installs them). Prints the path of the .deb on its last line.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/build/deb}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-parallel=$(nproc)}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pgtrickle-relay-deb.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
    xargs -0 cp --parents -t "$WORK/src")

(cd "$WORK/src" && dpkg-buildpackage -b -us -uc) >"$WORK/build.log" 2>&1 || {
    tail -n 60 "$WORK/build.log" >&2
    echo "build-deb: dpkg-buildpackage failed (last 60 lines above)" >&2
    exit 1
}
version=$(dpkg-parsechangelog -l "$ROOT/debian/changelog" -S Version)
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
for f in "$WORK"/*.deb "$WORK"/*.changes "$WORK"/*.buildinfo; do
    [ -e "$f" ] && mv -f "$f" "$OUT/"
done
cp "$WORK/build.log" "$OUT/pgtrickle-relay_${version}_${arch}.build.log"
echo "$OUT/pgtrickle-relay_${version}_${arch}.deb"
