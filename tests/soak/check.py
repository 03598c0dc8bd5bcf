#!/usr/bin/env python3
"""tests/soak/check.py - the delivery invariant of one soak run (soak.sh).

    check.py DIR "FAULTS" SEED

DIR holds what soak.sh collected after the load stopped and the pipelines
drained:
  pipelines.tsv   one line per pipeline: name, label, kind (outbox, cdc,
                  inbox), stored-dedup (1: the sink drops a repeated dedup
                  key itself, so a key stored twice is a duplicate after
                  dedup; 0: the sink's consumer dedups by key)
  ledger.txt      the ticks whose transaction committed (outbox ground truth)
  rows.txt        soak_t as "id<TAB>v" (CDC ground truth: an insert of every
                  row, an update of every row with v > 0)
  <name>.got      outbox/cdc: one JSON line per record the sink holds,
                  {"key": dedup key as the sink carries it, "env": envelope};
                  inbox: one event_id per line
  <name>.expected inbox: the dedup keys the broker stored or confirmed
  <name>.maybe    inbox: keys the publisher sent without a confirmation
                  (may arrive, need not)
Prints one line per pipeline and one summary line; exits 1 when an event is
lost, is there twice after the sink's dedup layer, appears without a
ground-truth event behind it (phantom), or a record's key is not its
envelope's dedup key or names two different events (mismatch), and when a
pipeline's ground truth is empty (a run that carried nothing proves nothing).
"""
import json
import os
import sys


def read_lines(path):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def event_of(kind, env):
    if kind == "outbox":
        return env["payload"]["i"]
    return (env["op"], env["payload"]["id"])


class Pipeline:
    def __init__(self, name, label, expected, keys, events, stored_dedup, maybe=(), mismatch=0):
        """expected: ground-truth events; keys: the dedup key of each record
        the sink holds; events: the event of each record; maybe: events that
        may be there without being expected."""
        self.name = f"{name} ({label})"
        self.events = len(expected)
        got = set(events)
        self.lost = len(expected - got)
        self.phantom = len(got - expected - set(maybe))
        self.dup_before = len(keys) - len(set(keys))
        self.dup_after = self.dup_before if stored_dedup else 0
        self.mismatch = mismatch
        self.example_lost = sorted(expected - got, key=str)[:5]

    def ok(self):
        # a pipeline that carried nothing proves nothing
        return self.events > 0 and self.lost == 0 and self.dup_after == 0 and self.phantom == 0 and self.mismatch == 0

    def line(self):
        s = (f"{self.name}: events {self.events}, lost {self.lost}, duplicates before dedup "
             f"{self.dup_before}, after dedup {self.dup_after}, phantom {self.phantom}")
        if self.events == 0:
            s += " - NOTHING WAS PRODUCED FOR IT"
        if self.mismatch:
            s += f", key mismatches {self.mismatch}"
        if self.example_lost:
            s += f" (lost e.g. {self.example_lost})"
        return s


def forward(d, name, label, kind, stored_dedup, truth):
    keys, events, mismatch, seen = [], [], 0, {}
    for line in read_lines(f"{d}/{name}.got"):
        rec = json.loads(line)
        env = rec["env"]
        ev = event_of(kind, env)
        key = rec["key"]
        if key != env.get("dedup_key") or seen.setdefault(key, ev) != ev:
            mismatch += 1
        keys.append(key)
        events.append(ev)
    return Pipeline(name, label, truth[kind], keys, events, stored_dedup, mismatch=mismatch)


def inbox(d, name, label):
    got = read_lines(f"{d}/{name}.got")
    expected = set(read_lines(f"{d}/{name}.expected"))
    maybe = set(read_lines(f"{d}/{name}.maybe"))
    return Pipeline(name, label, expected, got, got, True, maybe=maybe)


def main():
    d, faults, seed = sys.argv[1], sys.argv[2].strip(), sys.argv[3]
    ledger = {int(x) for x in read_lines(f"{d}/ledger.txt")}
    rows = [line.split("\t") for line in read_lines(f"{d}/rows.txt")]
    changes = {("insert", int(i)) for i, _ in rows} | {("update", int(i)) for i, v in rows if int(v) > 0}
    truth = {"outbox": ledger, "cdc": changes}
    pipes = []
    for line in read_lines(os.path.join(d, "pipelines.tsv")):
        name, label, kind, stored = line.split("\t")
        if kind == "inbox":
            pipes.append(inbox(d, name, label))
        else:
            pipes.append(forward(d, name, label, kind, stored == "1", truth))
    for p in pipes:
        print(p.line())
    total = sum(p.events for p in pipes)
    print(f"seed {seed}: {len(pipes)} pipelines, {total} events, faults {faults}, "
          f"lost {sum(p.lost for p in pipes)}, "
          f"duplicates before dedup {sum(p.dup_before for p in pipes)}, "
          f"after dedup {sum(p.dup_after for p in pipes)}, phantom {sum(p.phantom for p in pipes)}, "
          f"mismatches {sum(p.mismatch for p in pipes)}")
    return 0 if pipes and all(p.ok() for p in pipes) else 1


if __name__ == "__main__":
    sys.exit(main())
