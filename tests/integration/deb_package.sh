#!/usr/bin/env bash
# The Debian package end to end on this machine (issue 19, docs/install.md):
# build it with dpkg-buildpackage (scripts/build-deb.sh), lintian shows no
# error or warning, install it with apt, check what the install created
# (system user, 0600 environment file, units that systemd-analyze verify
# accepts, the man page) and that the service was neither enabled nor
# started, run the demo against the installed /usr/bin/pgtrickle-relay, then
# purge it and check that everything it created is gone.
#
# Root only (apt); skipped otherwise. The package is purged again on every
# exit, also on failure, and one run at a time holds a lock, so concurrent
# suites on one machine cannot interleave their installs. Each phase prints
# its wall-clock time (docs/install.md quotes them).
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PKG=pgtrickle-relay
n=0 failed=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; failed=$((failed + 1)); fi; }
check() { local d=$1; shift; if "$@" >&2; then ok 0 "$d"; else ok 1 "$d"; fi; }  # stdout is TAP only
is() { if [ "$1" == "$2" ]; then ok 0 "$3"; else ok 1 "$3"; diag "got: '$1'" "expected: '$2'"; fi; }
diag() { printf '%s\n' "$@" | sed 's/^/# /'; }
bail() { echo "Bail out! $*"; exit 1; }
t0=$(date +%s%N)
lap() { local t; t=$(date +%s%N); diag "$1: $(((t - t0) / 1000000)) ms"; t0=$t; }

if [ "$(id -u)" != 0 ]; then echo "1..0 # SKIP installing a package needs root"; exit 0; fi
for tool in dpkg-buildpackage dh lintian apt-get systemd-analyze man; do
    command -v "$tool" >/dev/null || bail "$tool not found (scripts/install-deps.sh installs it)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/relay-deb_package.XXXXXX")
installed_here=0
# shellcheck disable=SC2317  # runs from the EXIT trap
cleanup() {
    if [ "$installed_here" = 1 ] && dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null | grep -q '^.[^n]'; then
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q "$PKG" >/dev/null 2>&1 ||
            dpkg --purge "$PKG" >/dev/null 2>&1 || echo "# WARNING: could not purge $PKG"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# One package test per machine at a time (suites of several checkouts may run at once).
exec 9>/run/lock/pgtrickle-relay-deb_package.lock || bail "cannot open the lock file"
flock -w 900 9 || bail "another deb_package test held the lock for 15 minutes"
lap "waiting for the lock"

if dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null | grep -q '^.[^n]'; then
    diag "note: $PKG $(dpkg-query -W -f='${Version}' "$PKG") was installed before this test; it is replaced and purged"
fi

# --- build -----------------------------------------------------------------
# nocheck: the suite runs the unit tests already; noautodbgsym: not needed here.
deb=$(DEB_BUILD_OPTIONS="nocheck noautodbgsym parallel=$(nproc)" "$ROOT/scripts/build-deb.sh" "$WORK/out" | tail -n 1)
ok $? "dpkg-buildpackage -b -us -uc builds the package"
[ -f "$deb" ] || bail "no .deb was built"
like_name=$(basename "$deb")
check "named ${PKG}_<version>_<arch>.deb ($like_name)" \
    grep -qE "^${PKG}_[0-9][^_]*_$(dpkg-architecture -qDEB_HOST_ARCH)\.deb$" <<<"$like_name"
lap "dpkg-buildpackage"

lintian --fail-on error,warning --tag-display-limit 0 "$WORK"/out/*.changes >"$WORK/lintian.log" 2>&1
rc=$?
ok $rc "lintian: no errors or warnings"
[ "$rc" = 0 ] || diag "$(cat "$WORK/lintian.log")"
lap "lintian"

# --- install -------------------------------------------------------------------
installed_here=1
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    -o DPkg::Lock::Timeout=300 "$deb" >"$WORK/install.log" 2>&1
rc=$?
ok $rc "apt-get install ./$(basename "$deb")"
[ "$rc" = 0 ] || { diag "$(tail -n 30 "$WORK/install.log")"; bail "install failed"; }
lap "apt-get install"

is "$(command -v pgtrickle-relay)" /usr/bin/pgtrickle-relay "the binary is /usr/bin/pgtrickle-relay"
pw=$(getent passwd pgtrickle-relay)
ok $? "the system user pgtrickle-relay exists"
uid=$(cut -d: -f3 <<<"$pw")
check "it is a system user (uid $uid < 1000) without a login shell" \
    test "$uid" -lt 1000 -a "$(cut -d: -f7 <<<"$pw")" = /usr/sbin/nologin
check "with its own group" getent group pgtrickle-relay
is "$(stat -c '%a %U' /etc/default/pgtrickle-relay)" "600 root" "/etc/default/pgtrickle-relay is root's, mode 0600"
check "and configures no database yet" bash -c '! grep -q "^PGTRICKLE_RELAY_POSTGRES_URL" /etc/default/pgtrickle-relay'
is "$(systemctl --root=/ is-enabled pgtrickle-relay.service 2>&1)" disabled "the service is installed but not enabled"
running=0
for exe in /proc/[0-9]*/exe; do
    [ "$(readlink "$exe" 2>/dev/null)" = /usr/bin/pgtrickle-relay ] && running=1
done
is "$running" 0 "and no /usr/bin/pgtrickle-relay process was started"
out=$(systemd-analyze verify /lib/systemd/system/pgtrickle-relay.service \
    /lib/systemd/system/pgtrickle-relay@.service 2>&1)
rc=$?
is "$rc:$out" "0:" "systemd-analyze verify accepts both installed units (man page found)"
check "man pgtrickle-relay finds the installed page" test "$(man -w pgtrickle-relay)" = /usr/share/man/man1/pgtrickle-relay.1.gz
ver=$(/usr/bin/pgtrickle-relay --version)
check "--version: built with sd_notify" grep -q "sd_notify yes" <<<"$ver"
sinks=$(sed -n 's/^sinks: //p' <<<"$ver" | tr -d ' ' | tr ',' '\n' | sort | tr '\n' ' ')
is "$sinks" "file http kafka nats pg-inbox rabbitmq redis sqs stdout webhook " "--version: every sink built in"
lap "checks"

# --- the demo against the installed binary -----------------------------------------
RELAY_BIN=/usr/bin/pgtrickle-relay "$ROOT/scripts/demo.sh" >"$WORK/demo.log" 2>&1
rc=$?
ok $rc "the demo runs against /usr/bin/pgtrickle-relay"
[ "$rc" = 0 ] || diag "$(tail -n 40 "$WORK/demo.log")"
check "and shows the 5 events" grep -q "5 events arrived" "$WORK/demo.log"
lap "demo"

# --- purge ---------------------------------------------------------------------
# What the service would have left behind: its state directory (StateDirectory=).
install -d -o pgtrickle-relay -g pgtrickle-relay -m 0750 /var/lib/pgtrickle-relay
echo '{}' >/var/lib/pgtrickle-relay/orders.jsonl
DEBIAN_FRONTEND=noninteractive apt-get purge -y -q -o DPkg::Lock::Timeout=300 "$PKG" >"$WORK/purge.log" 2>&1
rc=$?
ok $rc "apt-get purge $PKG"
[ "$rc" = 0 ] || diag "$(tail -n 30 "$WORK/purge.log")"
installed_here=0
is "$(dpkg-query -W -f='${db:Status-Abbrev}' "$PKG" 2>/dev/null | tr -d ' ')" "" "dpkg knows nothing of it any more"
check "the user is gone" bash -c '! getent passwd pgtrickle-relay'
check "the group is gone" bash -c '! getent group pgtrickle-relay'
leftover=$(ls -d /usr/bin/pgtrickle-relay /etc/default/pgtrickle-relay /var/lib/pgtrickle-relay \
    /lib/systemd/system/pgtrickle-relay*.service /usr/share/doc/pgtrickle-relay \
    /usr/share/man/man1/pgtrickle-relay.1.gz /usr/lib/sysusers.d/pgtrickle-relay.conf \
    /var/lib/systemd/deb-systemd-helper-enabled/*pgtrickle* 2>/dev/null)
is "$leftover" "" "no file it installed or created is left"
lap "purge"

echo "1..$n"
[ "$failed" = 0 ]
