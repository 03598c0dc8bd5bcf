#!/usr/bin/env bash
# scripts/fuzz.sh - build the fuzz targets of tests/fuzz with clang and
# libFuzzer (ASan+UBSan) and fuzz each one for a bounded time; any finding
# (crash, sanitizer report, failed property check, leak, timeout, OOM) fails
# the run and its reproducer is printed. See docs/fuzzing.md.
#
#   scripts/fuzz.sh [--ci] [target ...]        (default: every target)
#
# Environment:
#   FUZZ_SECONDS  fuzzing time per target, seconds (30; with --ci 8)
#   FUZZ_JOBS     targets fuzzed at the same time (1; with --ci: the number of
#                 CPUs, at most 2)
#   FUZZ_BUILD    the clang build directory (build-fuzz), relative to the repo
#   FUZZ_ARGS     extra libFuzzer flags, e.g. "-max_len=65536 -dict=..."
#   CC            the compiler (clang)
# --ci: exit 77 (meson's "skipped") instead of failing when clang or libFuzzer
# is missing (scripts/install-deps.sh installs both: clang, libclang-rt-14-dev).
#
# Each target runs on a scratch copy of its corpus in
# $FUZZ_BUILD/fuzz-runs/<target>/corpus (seeded from tests/fuzz/corpus/<target>,
# which is read, never written), its log is fuzz-runs/<target>/log and a
# reproducer lands in fuzz-runs/<target>/artifacts/. Reproduce a finding with
#   $FUZZ_BUILD/tests/fuzz/fuzz_<target> <reproducer file>
# and keep it as a regression seed: tests/fuzz/corpus/<target>/regress-<what>.
#
# Exit: 0 no finding, 1 a finding, 2 usage or build error, 77 skipped (--ci).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ci=0
targets=()
for a in "$@"; do
    case "$a" in
        --ci) ci=1 ;;
        -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        -*) echo "fuzz.sh: unknown option $a" >&2; exit 2 ;;
        *) targets+=("$a") ;;
    esac
done

if [ "$ci" = 1 ]; then
    SECONDS_PER=${FUZZ_SECONDS:-8}
    ncpu=$(nproc 2>/dev/null || echo 1)
    JOBS=${FUZZ_JOBS:-$((ncpu < 2 ? ncpu : 2))}
else
    SECONDS_PER=${FUZZ_SECONDS:-30}
    JOBS=${FUZZ_JOBS:-1}
fi
BUILD=${FUZZ_BUILD:-build-fuzz}
case "$BUILD" in /*) ;; *) BUILD=$ROOT/$BUILD ;; esac
CC=${CC:-clang}
case "$(basename "$CC")" in clang*) ;; *) CC=clang ;; esac # a CC=gcc from the environment: libFuzzer needs clang

skip_or_fail() {
    echo "fuzz.sh: $1" >&2
    if [ "$ci" = 1 ]; then
        echo "fuzz.sh: skipped (install clang and libclang-rt-14-dev: scripts/install-deps.sh)" >&2
        exit 77
    fi
    exit 2
}

# ---- toolchain ------------------------------------------------------------------
command -v "$CC" >/dev/null || skip_or_fail "$CC not found"
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
    >"$probe/t.c"
if ! "$CC" -fsanitize=fuzzer,address,undefined "$probe/t.c" -o "$probe/t" 2>"$probe/err"; then
    sed 's/^/  /' "$probe/err" >&2
    skip_or_fail "$CC cannot link libFuzzer (-fsanitize=fuzzer): libclang-rt-14-dev missing?"
fi

# ---- build ----------------------------------------------------------------------
if [ ! -f "$BUILD/build.ninja" ]; then
    echo "fuzz.sh: meson setup $BUILD (CC=$CC, -Dfuzz=true)"
    if ! CC=$CC meson setup "$BUILD" -Dfuzz=true --buildtype=debugoptimized >"$probe/setup.log" 2>&1; then
        cat "$probe/setup.log" >&2
        echo "fuzz.sh: meson setup failed" >&2
        exit 2
    fi
fi
# A fuzz build configured before targets were added: let meson regenerate
# build.ninja first (ninja -t targets alone would list the old ones).
ninja -C "$BUILD" build.ninja >"$probe/regen.log" 2>&1 || { cat "$probe/regen.log" >&2; exit 2; }
mapfile -t built < <(ninja -C "$BUILD" -t targets all 2>/dev/null |
    sed -n 's|^tests/fuzz/fuzz_\([a-z_0-9]*\): .*|\1|p' | sort -u)
if [ ${#built[@]} -eq 0 ]; then
    echo "fuzz.sh: $BUILD has no fuzz targets (configured without -Dfuzz=true?)" >&2
    exit 2
fi
if [ ${#targets[@]} -eq 0 ]; then
    targets=("${built[@]}")
fi
for t in "${targets[@]}"; do
    # grep without -q: -q exits at the first match, printf gets SIGPIPE and,
    # under pipefail, a target that is not last in the list looked unknown
    if ! printf '%s\n' "${built[@]}" | grep -x "$t" >/dev/null; then
        echo "fuzz.sh: unknown target $t (known: ${built[*]})" >&2
        exit 2
    fi
done
echo "fuzz.sh: building ${#targets[@]} targets in $BUILD"
if ! ninja -C "$BUILD" "${targets[@]/#/tests/fuzz/fuzz_}" >"$probe/build.log" 2>&1; then
    tail -50 "$probe/build.log" >&2
    echo "fuzz.sh: build failed" >&2
    exit 2
fi

# ---- run ------------------------------------------------------------------------
# Sanitizers: abort on the first error (libFuzzer then saves the input), with
# symbolized stacks; leaks are findings too.
export ASAN_OPTIONS=${FUZZ_ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${FUZZ_UBSAN_OPTIONS:-halt_on_error=1:abort_on_error=1:print_stacktrace=1:symbolize=1}
read -r -a extra <<<"${FUZZ_ARGS:-}"

run_target() { # target; libFuzzer's output in fuzz-runs/<t>/log, its exit code in .../rc
    local t=$1 dir=$BUILD/fuzz-runs/$1 rc=0
    rm -rf "$dir/artifacts" "$dir/rc"
    mkdir -p "$dir/corpus" "$dir/artifacts"
    # -timeout: one input may take 10 s at most; -rss_limit_mb: 2 GB.
    "$BUILD/tests/fuzz/fuzz_$t" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$dir/artifacts/" "${extra[@]}" \
        "$dir/corpus" "$ROOT/tests/fuzz/corpus/$t" >"$dir/log" 2>&1 || rc=$?
    echo "$rc" >"$dir/rc"
}

report() { # target rc
    local t=$1 rc=$2 dir=$BUILD/fuzz-runs/$1 stats
    stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$dir/log" | tail -1 |
        sed -E 's/^#([0-9]+)[[:space:]]+DONE +cov: ([0-9]+) ft: ([0-9]+) corp: ([0-9]+).*/\1 runs, coverage \2 edges, \3 features, corpus \4/' || true)
    if [ "$rc" = 0 ]; then
        printf 'fuzz.sh: %-13s ok   %s\n' "$t" "${stats:-(no stats)}"
        return 0
    fi
    printf 'fuzz.sh: %-13s FINDING (libFuzzer exit %s)\n' "$t" "$rc"
    local f found=0
    for f in "$dir"/artifacts/*; do
        [ -f "$f" ] || continue
        if [ "$found" = 0 ]; then
            # Run the reproducer once more with full allocation stacks (too
            # slow while fuzzing) for the report.
            (ASAN_OPTIONS="$ASAN_OPTIONS:fast_unwind_on_malloc=0" "$BUILD/tests/fuzz/fuzz_$t" \
                -timeout=10 -rss_limit_mb=2048 "$f" >"$dir/repro.log" 2>&1; true) 2>/dev/null
            echo "---- $t: the report (reproducer run again: $dir/repro.log) ----"
            # From the first sanitizer/check line on, bounded.
            awk '/^==[0-9]+==|fuzz check failed|runtime error:|ERROR: libFuzzer|^SUMMARY/ {on=1}
                 /^Shadow bytes/ {on=0} on' \
                "$dir/repro.log" | grep -v '^    #[0-9]* 0x[0-9a-f]* in fuzzer::' | head -60
        fi
        found=1
        echo "---- $t: reproducer $f ($(wc -c <"$f") bytes) ----"
        echo "reproduce: $BUILD/tests/fuzz/fuzz_$t $f"
        if [ "$(wc -c <"$f")" -le 4096 ]; then
            echo "base64: $(base64 -w0 "$f")"
        fi
    done
    if [ "$found" = 0 ]; then
        echo "---- $t: no reproducer was written; the end of $dir/log: ----"
        tail -40 "$dir/log"
    fi
    return 1
}

echo "fuzz.sh: fuzzing ${#targets[@]} targets, ${SECONDS_PER}s each, $JOBS at a time"
for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do
        sleep 0.2
    done
    run_target "$t" 2>/dev/null & # (bash's "Aborted" notice; libFuzzer writes to the log)
done
wait
failed=()
for t in "${targets[@]}"; do
    rc=$(cat "$BUILD/fuzz-runs/$t/rc" 2>/dev/null || echo 99)
    report "$t" "$rc" || failed+=("$t")
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz.sh: FINDINGS in: ${failed[*]}"
    exit 1
fi
echo "fuzz.sh: no findings"
