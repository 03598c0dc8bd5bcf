#!/usr/bin/env bash
# scripts/build-image.sh - build the container image (Containerfile) with
# podman, from this checkout, on Debian 12.
#
#   scripts/build-image.sh [TAG]        (default TAG: localhost/pgtrickle-relay:<version>,
#                                        also tagged :latest)
#
# 1. builds the relay in build-image/ (release, prefix /usr, without
#    libsystemd: a container has no service manager to notify);
# 2. stages a root file system: the stripped binary, every shared library
#    `ldd` lists (copied from this Debian system, under the same paths) and
#    the dynamic loader, Debian's CA certificates, /etc/passwd and /etc/group
#    with the user pgtrickle-relay (10001), nsswitch.conf, /tmp and the state
#    directory /var/lib/pgtrickle-relay owned by that user;
# 3. podman build -f Containerfile, and prints the image's size.
# Needs podman (apt-get install podman); the image is FROM scratch, so no
# registry is contacted.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=$(meson introspect --projectinfo meson.build 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
TAG=${1:-localhost/pgtrickle-relay:$VERSION}
BUILD=${IMAGE_BUILD:-build-image}
PODMAN=${PODMAN:-podman}

command -v "$PODMAN" >/dev/null || { echo "build-image: $PODMAN not found (apt-get install podman)" >&2; exit 1; }

if [ ! -f "$BUILD/build.ninja" ]; then
    meson setup "$BUILD" --prefix=/usr --buildtype=release -Dsystemd=disabled \
        -Dnats=enabled -Dkafka=enabled -Dwebhook=enabled >/dev/null
fi
ninja -C "$BUILD" pgtrickle-relay >/dev/null

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/pgtrickle-relay-image.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
R=$STAGE/rootfs
install -d "$R/usr/bin" "$R/etc/ssl/certs" "$R/usr/share/doc/pgtrickle-relay"
install -m 0755 "$BUILD/pgtrickle-relay" "$R/usr/bin/pgtrickle-relay"
strip --strip-unneeded "$R/usr/bin/pgtrickle-relay"

# Every library the binary loads, and the loader, at the paths ldd shows
# (the real file, not the symlink, under the SONAME path).
ldd "$BUILD/pgtrickle-relay" | awk '/=> \// { print $3 } /^\t\/.*ld-linux/ { print $1 }' | sort -u |
    while read -r lib; do
        install -D -m 0644 "$(readlink -f "$lib")" "$R$lib"
        strip --strip-unneeded "$R$lib" 2>/dev/null || true
    done
# Debian's /lib and /lib64 are symlinks into /usr (merged /usr): keep them so.
for d in lib lib64; do
    if [ -L "/$d" ] && [ -d "$R/$d" ]; then
        cp -a "$R/$d/." "$R/usr/$d/" && rm -rf "${R:?}/$d"
    fi
    [ -L "/$d" ] && ln -sfn "usr/$d" "$R/$d"
done
chmod 0755 "$R"/usr/lib*/*/ld-linux* "$R"/usr/lib*/ld-linux* 2>/dev/null || true

cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\npgtrickle-relay:x:10001:10001:pgtrickle-relay:/var/lib/pgtrickle-relay:/usr/sbin/nologin\n' >"$R/etc/passwd"
printf 'root:x:0:\npgtrickle-relay:x:10001:\n' >"$R/etc/group"
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$R/etc/nsswitch.conf"
cp debian/copyright "$R/usr/share/doc/pgtrickle-relay/copyright"
install -d -m 1777 "$R/tmp"
install -d -m 0750 "$R/var/lib/pgtrickle-relay"
cp Containerfile "$STAGE/"

# The state directory belongs to the relay's user (COPY keeps numeric owners).
chown -R 0:0 "$R"
chown 10001:10001 "$R/var/lib/pgtrickle-relay"

"$PODMAN" build --quiet -f "$STAGE/Containerfile" -t "$TAG" -t "${TAG%:*}:latest" "$STAGE" >/dev/null
size=$("$PODMAN" image inspect --format '{{.Size}}' "$TAG")
echo "build-image: $TAG, $((size / 1024 / 1024)) MiB ($size bytes)"
