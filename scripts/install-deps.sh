#!/usr/bin/env bash
# scripts/install-deps.sh - install what building and testing pgtrickle-relay
# needs on Debian 12 (bookworm). Idempotent and fast (< 1 s) when everything
# is already there; only then-missing packages are installed.
#
#   scripts/install-deps.sh [extra-package ...]
#
# Extra packages also come from $EXTRA_PACKAGES, and from the services named
# in $RELAY_TEST_SERVICES (redis -> redis-server, rabbitmq -> rabbitmq-server).
#
# As root it runs apt-get (non-interactive, --no-install-recommends) without
# starting any service and without creating PostgreSQL's default "main"
# cluster. As another user it only reports what is missing (exit 1).
set -euo pipefail

PACKAGES=(
    build-essential pkg-config meson ninja-build
    libpq-dev postgresql-15 postgresql-contrib
    libjansson-dev libmicrohttpd-dev libcmocka-dev libcurl4-openssl-dev libmsgpack-dev
    libnats-dev nats-server librdkafka-dev libhiredis-dev librabbitmq-dev
    # RabbitMQ: the test broker (a default service, tests/services/default-services)
    # and python3-pika, which reads back what the relay sent (a client it did not write)
    rabbitmq-server python3-pika
    jq curl valgrind python3 iproute2
    # tests/integration/cdc_replay: decodes the msgpack files independently
    python3-msgpack
    redis-server redis-tools
    libssl-dev openssl
    # scripts/fuzz.sh: clang, libFuzzer's runtime, llvm-symbolizer for the stacks
    clang libclang-rt-14-dev llvm
    libsystemd-dev systemd man-db groff-base
    debhelper dpkg-dev lintian
)
# The SQS tests (a default service): node and npm run the npm emulator
# local-aws-sqs, awscli reads back what the relay sent; tests/integration/
# cloudevents checks the relay's CloudEvents with the npm SDK. A node, npm or aws
# already on PATH (e.g. NodeSource's nodejs, which ships npm and conflicts
# with Debian's npm package) is used as it is.
command -v node >/dev/null || PACKAGES+=(nodejs)
command -v npm >/dev/null || PACKAGES+=(npm)
command -v aws >/dev/null || PACKAGES+=(awscli)
PACKAGES+=("$@")
if [ -n "${EXTRA_PACKAGES:-}" ]; then
    read -r -a extra <<<"$EXTRA_PACKAGES"
    PACKAGES+=("${extra[@]}")
fi
for svc in ${RELAY_TEST_SERVICES:-}; do
    case "$svc" in
        redis) PACKAGES+=(redis-server) ;;
        rabbitmq) PACKAGES+=(rabbitmq-server) ;;
    esac
done

# One dpkg-query for all of them; unknown packages print nothing on stdout.
installed=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' "${PACKAGES[@]}" 2>/dev/null || true)
missing=()
for p in "${PACKAGES[@]}"; do
    if ! grep -qx "$p ii *" <<<"$installed"; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#PACKAGES[@]} Debian packages already installed, nothing to do"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages: ${missing[*]}" >&2
    echo "install-deps: run this script as root, or: apt-get install --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "install-deps: installing ${#missing[@]} missing Debian packages with apt-get: ${missing[*]}"

# Keep apt from starting any service it installs (nats-server, postgresql ...).
# The file is removed again afterwards if this script created it.
created_policy=0
cleanup() {
    if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
}
trap cleanup EXIT
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# created by pgtrickle-relay scripts/install-deps.sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    created_policy=1
fi

# Installing postgresql-15 would otherwise create (not start) a "main" cluster
# in /var/lib/postgresql/15/main; the tests and the demo use their own.
if printf '%s\n' "${missing[@]}" | grep -qx 'postgresql-15'; then
    conf=/etc/postgresql-common/createcluster.conf
    if [ ! -e "$conf" ]; then
        mkdir -p "$(dirname "$conf")"
        printf '# written by pgtrickle-relay scripts/install-deps.sh\ncreate_main_cluster = false\n' >"$conf"
    elif ! grep -Eq '^[[:space:]]*create_main_cluster' "$conf"; then
        printf 'create_main_cluster = false\n' >>"$conf"
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# Keep our createcluster.conf if postgresql-common's ucf would replace it.
export UCF_FORCE_CONFFOLD=1
apt_opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
apt-get "${apt_opts[@]}" update </dev/null
apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" </dev/null
echo "install-deps: done"
