#!/usr/bin/env python3
"""tests/soak/check.py - the delivery invariant of one soak run (soak.sh).

    check.py DIR "FAULTS" SEED

DIR holds what soak.sh collected after the load stopped and the pipelines
drained: the ground truth (ledger.txt: the ticks whose transaction committed;
rows.txt: soak_t as "id<TAB>v"; in.dump: the messages SOAK_IN stored) and
what each sink holds (o-file.jsonl, c-file.jsonl, out.dump, cdc.dump,
inbox.txt). Prints one line per pipeline and one summary line; exits 1 when
an event is lost, is there twice after the sink's dedup layer, or appears
without a ground-truth event behind it.
"""
import json
import sys


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def jsonl(path):
    try:
        return [json.loads(line) for line in read_lines(path)]
    except FileNotFoundError:
        return []


def dump_events(path):
    """natscli dump: each stored message's envelope and Nats-Msg-Id."""
    out = []
    for m in jsonl(path):
        out.append((m.get("headers", {}).get("Nats-Msg-Id"), json.loads(m["data"])))
    return out


def outbox_id(env):
    return env["payload"]["i"]


def cdc_change(env):
    return (env["op"], env["payload"]["id"])


class Pipeline:
    def __init__(self, name, expected, got_keys, delivered, stored_twice):
        """expected: set of ground-truth events; delivered: list of events
        found in the sink (one entry per record); got_keys: the dedup key of
        each record; stored_twice: records left twice after the sink's own
        dedup layer."""
        self.name = name
        self.events = len(expected)
        got = set(delivered)
        self.lost = len(expected - got)
        self.phantom = len(got - expected)
        self.dup_before = len(got_keys) - len(set(got_keys))
        self.dup_after = stored_twice
        self.example_lost = sorted(expected - got)[:5]

    def ok(self):
        return self.lost == 0 and self.dup_after == 0 and self.phantom == 0

    def line(self):
        s = (f"{self.name}: events {self.events}, lost {self.lost}, duplicates before dedup "
             f"{self.dup_before}, after dedup {self.dup_after}, phantom {self.phantom}")
        if self.example_lost:
            s += f" (lost e.g. {self.example_lost})"
        return s


def main():
    d, faults, seed = sys.argv[1], sys.argv[2].strip(), sys.argv[3]
    ledger = {int(x) for x in read_lines(f"{d}/ledger.txt")}
    rows = [line.split("\t") for line in read_lines(f"{d}/rows.txt")]
    changes = {("insert", int(i)) for i, _ in rows} | {("update", int(i)) for i, v in rows if int(v) > 0}
    in_stored = {k for k, _ in dump_events(f"{d}/in.dump")}
    inbox = read_lines(f"{d}/inbox.txt")

    o_file = jsonl(f"{d}/o-file.jsonl")
    o_nats = dump_events(f"{d}/out.dump")
    c_file = jsonl(f"{d}/c-file.jsonl")
    c_nats = dump_events(f"{d}/cdc.dump")
    pipes = [
        # the file sink has no dedup layer of its own: its consumer dedups by key
        Pipeline("o-file (outbox -> file)", ledger, [e["dedup_key"] for e in o_file],
                 [outbox_id(e) for e in o_file], 0),
        Pipeline("o-nats (outbox -> NATS)", ledger, [k for k, _ in o_nats],
                 [outbox_id(e) for _, e in o_nats], len(o_nats) - len({k for k, _ in o_nats})),
        Pipeline("c-file (CDC -> file)", changes, [e["dedup_key"] for e in c_file],
                 [cdc_change(e) for e in c_file], 0),
        Pipeline("c-nats (CDC -> NATS)", changes, [k for k, _ in c_nats],
                 [cdc_change(e) for _, e in c_nats], len(c_nats) - len({k for k, _ in c_nats})),
        Pipeline("i-nats (NATS -> inbox)", in_stored, inbox, inbox, len(inbox) - len(set(inbox))),
    ]
    for p in pipes:
        print(p.line())
    total = sum(p.events for p in pipes)
    print(f"seed {seed}: {total} events, faults {faults}, lost {sum(p.lost for p in pipes)}, "
          f"duplicates before dedup {sum(p.dup_before for p in pipes)}, "
          f"after dedup {sum(p.dup_after for p in pipes)}, phantom {sum(p.phantom for p in pipes)}")
    return 0 if all(p.ok() for p in pipes) else 1


if __name__ == "__main__":
    sys.exit(main())
