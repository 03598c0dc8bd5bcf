#!/usr/bin/env bash
# make install (meson install) into a DESTDIR: the binary, the man page, the
# docs, the units and the sysusers.d entry land under the prefix; the man
# page renders without a warning and documents every option and variable of
# --help; systemd-analyze verify accepts both units and `security` rates
# them at most 2.0 ("OK"); the units start the relay with the right type.
. "$(dirname "$0")/lib.sh"
BUILD_DIR=$(cd "$(dirname "$RELAY_BIN")" && pwd)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$TEST_TMP/dest
prefix=$(meson introspect --buildoptions "$BUILD_DIR" | jq -r '.[] | select(.name == "prefix") | .value')

out=$(meson install -C "$BUILD_DIR" --no-rebuild --quiet --destdir "$DEST" 2>&1)
is "$?" 0 "meson install --destdir (make install DESTDIR=...)"
[ -n "$out" ] && diag "$out"
for f in bin/pgtrickle-relay share/man/man1/pgtrickle-relay.1 share/doc/pgtrickle-relay/README.md \
    share/doc/pgtrickle-relay/install.md share/doc/pgtrickle-relay/configuration.md \
    share/doc/pgtrickle-relay/backends/nats.md share/doc/pgtrickle-relay/examples/pgtrickle-relay.default \
    lib/sysusers.d/pgtrickle-relay.conf; do
    check "installs $prefix/$f" test -s "$DEST$prefix/$f"
done
unitdir=$(find "$DEST" -name pgtrickle-relay.service -printf '%h\n' | head -n 1)
check "installs pgtrickle-relay.service and pgtrickle-relay@.service" \
    test -s "$unitdir/pgtrickle-relay.service" -a -s "$unitdir/pgtrickle-relay@.service"
is "$(grep '^ExecStart=' "$unitdir/pgtrickle-relay.service")" "ExecStart=$prefix/bin/pgtrickle-relay" \
    "the unit runs the installed binary"
if "$RELAY_BIN" --version | grep -q "sd_notify yes"; then want=notify; else want=exec; fi
is "$(grep -h '^Type=' "$unitdir"/pgtrickle-relay*.service | sort -u)" "Type=$want" \
    "both units are Type=$want (sd_notify built in: $want = notify)"
check "the binary is the one built" cmp -s "$DEST$prefix/bin/pgtrickle-relay" "$RELAY_BIN"

# --- the man page ---------------------------------------------------------------
page=$SRC/docs/pgtrickle-relay.1
warn=$(LC_ALL=C.UTF-8 MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
is "$warn" "" "man --warnings -l renders the page without a warning"
text=$(LC_ALL=C.UTF-8 MANWIDTH=200 man -l "$page" 2>/dev/null)
for s in NAME SYNOPSIS OPTIONS ENVIRONMENT "EXIT STATUS" SIGNALS FILES EXAMPLES; do
    check "the page has the section $s" grep -q "^$s" <<<"$text"
done
missing=''
for w in $("$RELAY_BIN" --help | grep -oE -- '--[a-z-]+|PGTRICKLE_RELAY_[A-Z_]+' | sort -u); do
    grep -qF -- "$w" <<<"$text" || missing="$missing $w"
done
is "$missing" "" "the page documents every flag and variable of --help"

# --- the units ---------------------------------------------------------------------
# systemd-analyze verify checks that ExecStart= exists: verify copies whose
# ExecStart= is the binary under test (the installed units are verified as
# they are by the deb_package test).
mkdir -p "$TEST_TMP/units"
for u in pgtrickle-relay.service pgtrickle-relay@.service; do
    sed "s|^ExecStart=.*|ExecStart=$RELAY_BIN|" "$unitdir/$u" >"$TEST_TMP/units/$u"
done
out=$(systemd-analyze verify --man=no "$TEST_TMP/units/pgtrickle-relay.service" \
    "$TEST_TMP/units/pgtrickle-relay@.service" 2>&1)
is "$?:$out" "0:" "systemd-analyze verify accepts both units"
for u in pgtrickle-relay.service pgtrickle-relay@.service; do
    score=$(systemd-analyze security --offline=true --no-pager "$TEST_TMP/units/$u" 2>&1 |
        sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    check "systemd-analyze security rates $u ${score:-?} (at most 2.0)" \
        awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'
done
grep -q '^RestartPreventExitStatus=2$' "$unitdir/pgtrickle-relay.service"
ok $? "a bad option (exit 2) is not restarted"
check "the state directory is the default --allow-path" \
    grep -qx 'Environment=PGTRICKLE_RELAY_ALLOW_PATH=%S/pgtrickle-relay' "$unitdir/pgtrickle-relay.service"
done_testing
