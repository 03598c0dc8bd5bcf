#!/usr/bin/env python3
"""scripts/failure-digest.py <testlog.json> - a short digest of the failed
tests, printed by scripts/run-tests.sh after meson's own summary so that the
last lines of a CI log say *what* failed, not only which test: per failed
test its name and result, then each failed TAP assertion ("not ok", its
"# got/expected" lines) or "Bail out!", at most MAX_LINES lines per test."""
import json
import sys

MAX_LINES = 8


def digest(test):
    lines = []
    out = (test.get("stdout") or "").splitlines()
    for i, line in enumerate(out):
        if line.startswith("not ok") or line.startswith("Bail out!"):
            lines.append(line)
            for follow in out[i + 1:i + 4]:
                if not follow.startswith("#"):
                    break
                lines.append(follow)
    if not lines:  # a crash, a timeout or a non-TAP failure: its last lines
        lines = [l for l in out if l.strip()][-3:]
    return lines[:MAX_LINES]


def main(path):
    failed = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            try:
                t = json.loads(raw)
            except ValueError:
                continue
            if t.get("result") not in ("OK", "EXPECTEDFAIL", "SKIP"):
                failed.append(t)
    if not failed:
        return
    print("\n== what failed ==")
    for t in failed:
        print("%s (%s, %.0f s)" % (t.get("name", "?"), t.get("result", "?"), t.get("duration", 0)))
        for line in digest(t):
            print("  " + line[:300])


if __name__ == "__main__":
    main(sys.argv[1])
