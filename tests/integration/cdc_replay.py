#!/usr/bin/python3
"""cdc_replay.py - the workload generator and the replayer of cdc_replay.sh.

The property: the CDC events a pipeline wrote, applied in order to replica
tables, rebuild the source tables exactly, row by row and column by column,
whatever the workload and however often the relay was killed.

  generate SEED TXNS CHUNKS OUTDIR
      Writes OUTDIR/schema.sql (source tables, publication, one replica
      schema per format), OUTDIR/chunk-N.sql (the random transactions, in
      CHUNKS files run one after another while the relay is killed in
      between) and OUTDIR/expect.json (what the replayer must find besides
      rows: the committed logical messages).

  replay FORMAT EVENTS REPLICA_SCHEMA PSQL...
      Reads the event file (jsonl, or msgpack length-prefixed records),
      applies every event once (by dedup key: a repeated key must carry the
      very same event) to REPLICA_SCHEMA through psql, and compares every
      table with the source. Prints TAP-free diagnostics ("# ...") and one
      final line "RESULT ok" or "RESULT fail <reason>"; exit status 0 or 1.
      A failure names the first differing row and the events that touched
      that key.

Only Debian's python3 and python3-msgpack are used (no pip).

The workload: tables with every common type under REPLICA IDENTITY DEFAULT
(t_def), FULL with a key (t_full) and FULL without one (t_nopk), a
partitioned table written through its root and through its leaves and
published via the root (p_root); single and multi-row INSERTs, COPY, UPDATEs
of some columns (leaving a TOASTed column unchanged), key changes (and
moves between partitions), DELETEs, TRUNCATEs, rolled-back savepoints and
transactions, transactions bigger than a batch, ADD COLUMN in the middle,
transactional and non-transactional logical messages (one right before a
COMMIT: issue 12 #1's collision). The native pipeline's publication
publishes the partitioned table via its root, the msgpack pipeline's via
its partitions.

Values a consumer cannot restore from a format by documented rules are not
generated: a json/jsonb column holding the JSON value null (SQL NULL and it
are both null in every format), json strings with unpaired surrogate escapes (MessagePack refuses
them: dead-lettered), and number-like strings inside json values (msgpack
carries numbers that no 64-bit integer or double holds as strings, so the
msgpack replayer turns such strings back into numbers).
"""
import decimal
import json
import os
import random
import re
import subprocess
import sys

# ---------------------------------------------------------------- schema

COLUMNS = [  # name, SQL type (the wide tables t_def and t_full)
    ("id", "int"), ("i2", "smallint"), ("i8", "bigint"), ("num", "numeric"),
    ("f4", "real"), ("f8", "double precision"), ("b", "boolean"), ("txt", "text"),
    ("vc", "varchar(20)"), ("ch", "char(3)"), ("bt", "bytea"), ("js", "json"),
    ("jb", "jsonb"), ("ts", "timestamptz"), ("tsn", "timestamp"), ("d", "date"),
    ("tm", "time"), ("u", "uuid"), ("arr", "int[]"), ("tarr", "text[]"),
    ("iv", "interval"), ("e", "mood"), ("big", "text"),
]
PART_COLUMNS = [("id", "int"), ("txt", "text"), ("f8", "double precision"), ("jb", "jsonb")]
NOPK_COLUMNS = [("a", "int"), ("b", "text")]
SPLIT = 1000000  # p_root: p_lo holds id < SPLIT, p_hi the rest


def table_ddl(schema, name, cols, pk=True):
    body = ", ".join("%s %s" % c for c in cols)
    if pk:
        body += ", PRIMARY KEY (%s)" % cols[0][0]
    return "CREATE TABLE %s.%s (%s);" % (schema, name, body)


def schema_sql(replicas):
    out = ["CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');"]
    for schema in ["public"] + replicas:
        if schema != "public":
            out.append("CREATE SCHEMA %s;" % schema)
        out.append(table_ddl(schema, "t_def", COLUMNS))
        out.append(table_ddl(schema, "t_full", COLUMNS))
        out.append(table_ddl(schema, "t_nopk", NOPK_COLUMNS, pk=False))
        out.append("CREATE TABLE %s.p_root (%s, PRIMARY KEY (id)) PARTITION BY RANGE (id);"
                   % (schema, ", ".join("%s %s" % c for c in PART_COLUMNS)))
        out.append("CREATE TABLE %s.p_lo PARTITION OF %s.p_root FOR VALUES FROM (MINVALUE) TO (%d);"
                   % (schema, schema, SPLIT))
        out.append("CREATE TABLE %s.p_hi PARTITION OF %s.p_root FOR VALUES FROM (%d) TO (MAXVALUE);"
                   % (schema, schema, SPLIT))
    out.append("ALTER TABLE t_full REPLICA IDENTITY FULL;")
    out.append("ALTER TABLE t_nopk REPLICA IDENTITY FULL;")
    for t in ("t_def", "t_full"):
        out.append("ALTER TABLE %s ALTER COLUMN big SET STORAGE EXTERNAL;" % t)
    # the native pipeline sees the partitioned table under its root's name,
    # the msgpack pipeline under its partitions' names
    out.append("CREATE PUBLICATION cdc_replay_pub FOR TABLE t_def, t_full, t_nopk, p_root "
               "WITH (publish_via_partition_root = true);")
    out.append("CREATE PUBLICATION cdc_replay_leaves_pub FOR TABLE t_def, t_full, t_nopk, p_root;")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- values

def lit(s):
    return "'" + s.replace("'", "''") + "'"


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)
        self.next_id = {"t_def": 1, "t_full": 1, "lo": 1, "hi": SPLIT}
        self.live = {"t_def": set(), "t_full": set(), "p_root": set()}
        self.nopk_next = 1
        self.messages = 0   # committed logical messages expected
        self.added = False  # ADD COLUMN done

    def pick(self, ids):
        """A random member of the set `ids` (deterministic for a seed)."""
        lo, hi = min(ids), max(ids)
        for _ in range(20):
            i = self.r.randint(lo, hi)
            if i in ids:
                return i
        return self.r.choice(sorted(ids))

    def fresh(self, key):
        v = self.next_id[key]
        self.next_id[key] += 1
        return v

    def text(self, n=None):
        r = self.r
        alphabet = "abcXYZ 019'\"\\\t\n,;{}()[]é€😀%_-./:"
        n = r.randint(0, 24) if n is None else n
        return "".join(r.choice(alphabet) for _ in range(n))

    def json_string(self):
        # letters first: never number-like (see the module comment)
        return json.dumps("s" + self.text(8))

    def json_value(self, depth=0, dup=False):
        r = self.r
        k = r.randint(0, 9 if depth < 3 else 5)
        if k == 0:
            # a top-level JSON null and SQL NULL are both null in the
            # events (docs/backends/cdc.md): only nested ones
            return r.choice(["null", "true", "false"] if depth else ["true", "false"])
        if k == 1:
            return str(r.randint(-2**31, 2**31))
        if k == 2:
            return r.choice(["9223372036854775807", "9223372036854775808", "18446744073709551615",
                             "18446744073709551616", "-9223372036854775809",
                             "123456789012345678901234567890", "1e400", "-2.5e-400",
                             "0.1000000000000000000001", "1.10", "-0.0", "0", "3.14159",
                             "1E+2", "0.30000000000000004"])
        if k in (3, 4, 5):
            return self.json_string()
        if k in (6, 7):
            items = [self.json_value(depth + 1) for _ in range(r.randint(0, 3))]
            return "[" + (", " if r.random() < .5 else ",\n ").join(items) + "]"
        keys = ["k%d" % r.randint(0, 5) for _ in range(r.randint(0, 4))]
        if dup and keys:
            keys.append(keys[0])  # json (not jsonb) keeps duplicate keys
        return "{" + ", ".join("%s: %s" % (json.dumps(k), self.json_value(depth + 1)) for k in keys) + "}"

    def value(self, col, typ):
        r = self.r
        if col != "id" and r.random() < 0.08:
            return "NULL"
        if typ == "smallint":
            return str(r.choice([-32768, 32767, 0, r.randint(-32768, 32767)]))
        if typ == "bigint":
            return str(r.choice([-2**63, 2**63 - 1, 0, r.randint(-2**62, 2**62)]))
        if typ == "numeric":
            return lit(r.choice(["NaN", "0", "-0.000", "12.50", "123456789012345678901234567890.123456789",
                                 "%d.%0*d" % (r.randint(-10**6, 10**6), r.randint(0, 8), r.randint(0, 99))]))
        if typ in ("real", "double precision"):
            return lit(r.choice(["0", "-0", "5", "-17", "1.5", "0.1", "1e300" if typ != "real" else "1e30",
                                 "1e-300" if typ != "real" else "1e-30", "NaN", "Infinity", "-Infinity",
                                 repr(r.uniform(-1e10, 1e10)), repr(r.random())]))
        if typ == "boolean":
            return r.choice(["true", "false"])
        if typ == "text":
            if col == "big":
                k = r.random()
                if k < 0.5:
                    # incompressible and > 2 kB: stored out of line (TOAST)
                    return lit("".join(r.choice("0123456789abcdef") for _ in range(r.randint(2100, 4000))))
                return lit(self.text(r.randint(0, 40)))
            return lit(self.text())
        if typ == "varchar(20)":
            return lit(self.text(r.randint(0, 20)))
        if typ == "char(3)":
            return lit(self.text(r.randint(0, 3)).replace("\n", " "))
        if typ == "bytea":
            return lit("\\x" + bytes(r.randrange(256) for _ in range(r.randint(0, 12))).hex())
        if typ == "json":
            return lit(self.json_value(dup=True)) + "::json"
        if typ == "jsonb":
            return lit(self.json_value()) + "::jsonb"
        if typ == "timestamptz":
            return lit(r.choice(["infinity", "-infinity", "2000-01-01 00:00:00+00",
                                 "%04d-%02d-%02d %02d:%02d:%02d.%06d%+03d" % (
                                     r.randint(1, 9999), r.randint(1, 12), r.randint(1, 28),
                                     r.randint(0, 23), r.randint(0, 59), r.randint(0, 59),
                                     r.randint(0, 999999), r.randint(-12, 14))]))
        if typ == "timestamp":
            return lit("%04d-%02d-%02d %02d:%02d:%02d.%03d" % (
                r.randint(1, 9999), r.randint(1, 12), r.randint(1, 28), r.randint(0, 23),
                r.randint(0, 59), r.randint(0, 59), r.randint(0, 999)))
        if typ == "date":
            return lit(r.choice(["infinity", "%04d-%02d-%02d" % (r.randint(1, 9999), r.randint(1, 12),
                                                                 r.randint(1, 28))]))
        if typ == "time":
            return lit("%02d:%02d:%02d.%d" % (r.randint(0, 23), r.randint(0, 59), r.randint(0, 59),
                                              r.randint(0, 999999)))
        if typ == "uuid":
            return lit("%032x" % r.getrandbits(128))
        if typ == "int[]":
            return lit("{" + ",".join(r.choice(["NULL", str(r.randint(-99, 99))])
                                      for _ in range(r.randint(0, 4))) + "}")
        if typ == "text[]":
            items = ['"' + self.text(r.randint(0, 5)).replace("\\", "\\\\").replace('"', '\\"') + '"'
                     for _ in range(r.randint(0, 3))]
            return lit("{" + ",".join(items) + "}")
        if typ == "interval":
            return lit("%d days %02d:%02d:%02d" % (r.randint(-400, 400), r.randint(0, 23),
                                                   r.randint(0, 59), r.randint(0, 59)))
        if typ == "mood":
            return lit(r.choice(["sad", "ok", "happy"]))
        raise ValueError(typ)

    # ------------------------------------------------------------ statements

    def wide_cols(self):
        cols = list(COLUMNS)
        if self.added:
            cols.append(("extra", "text"))
        return cols

    def insert_wide(self, t, rows=1):
        cols = self.wide_cols()
        vals = []
        ids = []
        for _ in range(rows):
            i = self.fresh(t)
            ids.append(i)
            vals.append("(" + ", ".join(str(i) if c == "id" else self.value(c, ty)
                                        for c, ty in cols) + ")")
        return "INSERT INTO %s (%s) VALUES %s;" % (t, ", ".join(c for c, _ in cols),
                                                   ", ".join(vals)), ids

    def copy_wide(self, t, rows):
        ids = []
        lines = []
        for _ in range(rows):
            i = self.fresh(t)
            ids.append(i)
            txt = self.text().replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            i8 = str(self.r.randint(-2**63, 2**63 - 1))
            lines.append("%d\t%s\t%s" % (i, txt, i8))
        return "COPY %s (id, txt, i8) FROM STDIN;\n%s\n\\.\n" % (t, "\n".join(lines)), ids

    def update_wide(self, t, i):
        cols = [c for c in self.wide_cols() if c[0] != "id"]
        pick = self.r.sample(cols, self.r.randint(1, 4))
        if self.r.random() < 0.7:
            pick = [c for c in pick if c[0] != "big"] or [("txt", "text")]
        sets = ", ".join("%s = %s" % (c, self.value(c, ty)) for c, ty in pick)
        return "UPDATE %s SET %s WHERE id = %d;" % (t, sets, i)

    def part_row(self, i):
        return "(%d, %s, %s, %s)" % (i, self.value("txt", "text"), self.value("f8", "double precision"),
                                     self.value("jb", "jsonb"))

    def statement(self, model):
        """One random statement; applies its effect to `model` (a dict of
        sets, the caller's copy: thrown away when rolled back)."""
        r = self.r
        k = r.random()
        wide = r.choice(["t_def", "t_full"])
        live = model[wide]
        if k < 0.22:
            sql, ids = self.insert_wide(wide, r.choice([1, 1, 1, 3]))
            live.update(ids)
            return sql
        if k < 0.27:
            sql, ids = self.copy_wide(wide, r.randint(1, 6))
            live.update(ids)
            return sql
        if k < 0.45 and live:
            return self.update_wide(wide, self.pick(live))
        if k < 0.52 and live:
            old = self.pick(live)
            new = self.fresh(wide)
            live.discard(old)
            live.add(new)
            return "UPDATE %s SET id = %d%s WHERE id = %d;" % (
                wide, new, ", txt = " + self.value("txt", "text") if r.random() < .5 else "", old)
        if k < 0.60 and live:
            i = self.pick(live)
            live.discard(i)
            return "DELETE FROM %s WHERE id = %d;" % (wide, i)
        parts = model["p_root"]
        if k < 0.70:
            hi = r.random() < 0.5
            i = self.fresh("hi" if hi else "lo")
            parts.add(i)
            via = r.choice(["p_root", "p_hi" if hi else "p_lo"])
            return "INSERT INTO %s VALUES %s;" % (via, self.part_row(i))
        if k < 0.76 and parts:
            i = self.pick(parts)
            via = r.choice(["p_root", "p_hi" if i >= SPLIT else "p_lo"])
            return "UPDATE %s SET txt = %s, f8 = %s WHERE id = %d;" % (
                via, self.value("txt", "text"), self.value("f8", "double precision"), i)
        if k < 0.80 and parts:
            old = self.pick(parts)
            new = self.fresh("lo" if old >= SPLIT else "hi")  # moves to the other partition
            parts.discard(old)
            parts.add(new)
            return "UPDATE p_root SET id = %d WHERE id = %d;" % (new, old)
        if k < 0.84 and parts:
            i = self.pick(parts)
            parts.discard(i)
            via = r.choice(["p_root", "p_hi" if i >= SPLIT else "p_lo"])
            return "DELETE FROM %s WHERE id = %d;" % (via, i)
        if k < 0.92:
            op = r.random()
            if op < 0.5:
                rows = ", ".join("(%d, %s)" % (r.randint(1, 5), lit(r.choice(["x", "y", "z"])))
                                 for _ in range(r.randint(1, 3)))
                return "INSERT INTO t_nopk VALUES %s;" % rows
            if op < 0.8:
                return "UPDATE t_nopk SET b = %s WHERE a = %d;" % (lit(self.text(3)), r.randint(1, 5))
            return "DELETE FROM t_nopk WHERE a = %d AND b = %s;" % (r.randint(1, 5), lit(r.choice("xyz")))
        if k < 0.96:
            model["msgs"] += 1
            return "SELECT pg_logical_emit_message(true, 'replay', %s);" % lit(self.text())
        if k < 0.9625:
            # a transaction bigger than a batch (batch_size 200), so a kill
            # can fall between two of its batches
            n = r.randint(200, 600)
            first = self.next_id[wide]
            self.next_id[wide] += n
            live.update(range(first, first + n))
            return ("INSERT INTO %s (id, txt, f8, big) SELECT g, 'bulk' || g, g / 7.0, "
                    "CASE WHEN g %% 50 = 0 THEN repeat(md5(g::text), 80) END "
                    "FROM generate_series(%d, %d) g;" % (wide, first, first + n - 1))
        if k < 0.965:
            t = r.choice(["t_def", "t_full", "p_root", "t_nopk"])
            if t in model:
                model[t].clear()
            return "TRUNCATE %s;" % t
        sql, ids = self.insert_wide(wide)
        live.update(ids)
        return sql

    def transaction(self, n, total, alter_at):
        r = self.r
        out = []
        if n == alter_at:
            self.added = True
            out.append("ALTER TABLE t_def ADD COLUMN extra text DEFAULT 'dflt';")
            for s in REPLICAS:
                out.append("ALTER TABLE %s.t_def ADD COLUMN extra text DEFAULT 'dflt';" % s)
            out.append("ALTER TABLE t_full ADD COLUMN extra text;")
            for s in REPLICAS:
                out.append("ALTER TABLE %s.t_full ADD COLUMN extra text;" % s)
        model = {k: set(v) for k, v in self.live.items()}
        model["msgs"] = 0
        stmts = []
        for _ in range(r.randint(1, 6)):
            if r.random() < 0.1:
                # a rolled-back savepoint: its statements never reach the stream
                saved = {k: (set(v) if isinstance(v, set) else v) for k, v in model.items()}
                stmts.append("SAVEPOINT sp;")
                for _ in range(r.randint(1, 3)):
                    stmts.append(self.statement(model))
                stmts.append("ROLLBACK TO SAVEPOINT sp;")
                model = saved
            else:
                stmts.append(self.statement(model))
        nontx = 0
        if r.random() < 0.08:
            # issue 12 #1: a non-transactional message as the last record before COMMIT
            stmts.append("SELECT pg_logical_emit_message(false, 'replay-nontx', %s);" % lit(self.text()))
            nontx = 1
        rollback = r.random() < 0.05
        out.append("BEGIN;")
        out.extend(stmts)
        out.append("ROLLBACK;" if rollback else "COMMIT;")
        if not rollback:
            for k in self.live:
                self.live[k] = model[k]
            self.messages += model["msgs"]
        self.messages += nontx  # not transactional: sent even when rolled back
        return "\n".join(out)


REPLICAS = ["replica_native", "replica_msgpack"]


def generate(seed, txns, chunks, outdir):
    g = Gen(seed)
    with open(os.path.join(outdir, "schema.sql"), "w") as f:
        f.write(schema_sql(REPLICAS))
    # rows that exist before the pipelines start: the initial snapshot
    pre = ["BEGIN;"]
    for t in ("t_def", "t_full"):
        for _ in range(10):
            sql, ids = g.insert_wide(t, 2)
            pre.append(sql)
            g.live[t].update(ids)
    for _ in range(10):
        i = g.fresh("lo")
        g.live["p_root"].add(i)
        pre.append("INSERT INTO p_root VALUES %s;" % g.part_row(i))
    pre.append("COMMIT;")
    with open(os.path.join(outdir, "initial.sql"), "w") as f:
        f.write("\n".join(pre) + "\n")
    alter_at = txns // 2
    per = max(1, (txns + chunks - 1) // chunks)
    n = 0
    for c in range(chunks):
        with open(os.path.join(outdir, "chunk-%d.sql" % c), "w") as f:
            for _ in range(per):
                if n >= txns:
                    break
                f.write(g.transaction(n, txns, alter_at) + "\n")
                n += 1
    with open(os.path.join(outdir, "expect.json"), "w") as f:
        json.dump({"messages": g.messages, "txns": txns}, f)


# ---------------------------------------------------------------- replay

def read_events(fmt, path):
    """[(index, event dict in a common shape)]. Common shape: op, table,
    key, cols (dict or None), old (dict or None), toast (list), raw (for
    diagnostics)."""
    events = []
    if fmt == "native":
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                e = json.loads(line, parse_float=decimal.Decimal,
                               object_pairs_hook=lambda p: JsonObj(p))
                src = e.get("source") or {}
                payload = e.get("payload")
                op = e["op"]
                events.append({
                    "op": op, "table": src.get("table") or (payload or {}).get("prefix"),
                    "key": e["dedup_key"],
                    "cols": dict(payload) if isinstance(payload, JsonObj) and op != "event" else None,
                    "old": dict(e["old"]) if e.get("old") is not None else None,
                    "toast": list(src.get("unchanged_toast") or []),
                    "snap_lsn": src.get("lsn") if op == "snapshot" else None,
                    "raw": line.decode("utf-8", "replace").strip()})
    else:
        import msgpack
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            if len(data) - pos < 4:
                raise SystemExit("RESULT fail msgpack file ends inside a record length at byte %d" % pos)
            n = int.from_bytes(data[pos:pos + 4], "big")
            body = data[pos + 4:pos + 4 + n]
            if len(body) != n:
                raise SystemExit("RESULT fail msgpack file ends inside a record at byte %d" % pos)
            e = msgpack.unpackb(body, raw=False, strict_map_key=False,
                                object_pairs_hook=lambda p: JsonObj(p))
            pos += 4 + n

            def cols(v):
                return None if v is None else {c["name"]: c["value"] for c in v}
            op = e["operation"].lower()
            events.append({
                "op": op, "table": e["table"], "key": e["dedup_key"],
                "cols": cols(e["columns"]) if op not in ("event", "truncate") else None,
                "old": cols(e.get("old")), "toast": list(e.get("unchanged_toast") or []),
                "snap_lsn": e["lsn"] if op == "snapshot" else None,
                "raw": repr(e)[:2000]})
    return events


class JsonObj(list):
    """A JSON object as its (key, value) pairs: keeps order and duplicates."""

    def __init__(self, pairs):
        super().__init__(pairs)

    def keys(self):
        return [k for k, _ in self]

    def get(self, k, d=None):
        for kk, v in self:
            if kk == k:
                return v
        return d

    def __getitem__(self, k):
        if isinstance(k, str):
            for kk, v in self:
                if kk == k:
                    return v
            raise KeyError(k)
        return list.__getitem__(self, k)


NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?\Z")


def json_text(v, fmt):
    """A JSON value of the event back to JSON text."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, JsonObj):
        return "{" + ", ".join(json.dumps(k) + ": " + json_text(x, fmt) for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(json_text(x, fmt) for x in v) + "]"
    if isinstance(v, str):
        # msgpack: a number no 64-bit integer or double holds is a string
        # of its JSON text (docs/backends/cdc.md)
        if fmt == "msgpack" and NUMBER.match(v):
            return v
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)  # int, Decimal


def sql_value(v, typ, fmt):
    if v is None:
        return "NULL"
    if typ in ("json", "jsonb"):
        return lit(json_text(v, fmt)) + "::" + typ
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, float):
        s = repr(v)
        s = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(s, s)
        return lit(s) + "::" + typ
    if isinstance(v, (int, decimal.Decimal)):
        return lit(str(v)) + "::" + typ
    return lit(v) + "::" + typ


class Catalog:
    def __init__(self, psql):
        q = ("SELECT json_object_agg(c.relname, json_build_object("
             " 'cols', (SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod))"
             "          ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
             "          AND NOT a.attisdropped),"
             " 'pk', (SELECT json_agg(a.attname) FROM pg_index i JOIN pg_attribute a"
             "        ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)"
             "        WHERE i.indrelid = c.oid AND i.indisprimary)))"
             " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
             " AND c.relname IN ('t_def', 't_full', 't_nopk', 'p_root', 'p_lo', 'p_hi')")
        self.t = json.loads(run(psql, q))
        # compared with the source: the leaves are compared through their root
        self.compared = ["p_root", "t_def", "t_full", "t_nopk"]
        for v in self.t.values():
            v["types"] = dict(v["cols"])


def run(psql, sql, input_text=None):
    p = subprocess.run(psql + ["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql] if input_text is None
                       else psql + ["-X", "-At", "-v", "ON_ERROR_STOP=1"],
                       input=input_text, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip())
    return p.stdout


def ident(s):
    return '"' + s.replace('"', '""') + '"'


def match_clause(cat, t, row, fmt):
    """WHERE condition matching `row` (a dict of column -> value)."""
    conds = []
    for c, v in row.items():
        typ = cat.t[t]["types"][c]
        if typ == "json":
            conds.append("%s::jsonb IS NOT DISTINCT FROM %s" % (ident(c), sql_value(v, "jsonb", fmt)))
        else:
            conds.append("%s IS NOT DISTINCT FROM %s" % (ident(c), sql_value(v, typ, fmt)))
    return " AND ".join(conds) or "true"


def event_sql(cat, schema, e, fmt):
    """One statement for one event, or None (logical messages)."""
    t = e["table"]
    op = e["op"]
    if op == "event":
        return None
    q = "%s.%s" % (ident(schema), ident(t))
    info = cat.t[t]
    if op == "truncate":
        return "TRUNCATE %s;" % q
    cols = e["cols"]
    if op in ("insert", "snapshot"):
        names = ", ".join(ident(c) for c in cols)
        vals = ", ".join(sql_value(v, info["types"][c], fmt) for c, v in cols.items())
        s = "INSERT INTO %s (%s) VALUES (%s)" % (q, names, vals)
        if op == "snapshot" and info["pk"]:
            s += " ON CONFLICT (%s) DO UPDATE SET %s" % (
                ", ".join(ident(c) for c in info["pk"]),
                ", ".join("%s = EXCLUDED.%s" % (ident(c), ident(c)) for c in cols))
        return s + ";"
    if op == "update":
        where_row = e["old"] if e["old"] is not None else {c: cols[c] for c in info["pk"]}
        sets = ", ".join("%s = %s" % (ident(c), sql_value(v, info["types"][c], fmt))
                         for c, v in cols.items())
        if info["pk"]:
            return "UPDATE %s SET %s WHERE %s;" % (q, sets, match_clause(cat, t, where_row, fmt))
        return "UPDATE %s SET %s WHERE ctid = (SELECT ctid FROM %s WHERE %s LIMIT 1);" % (
            q, sets, q, match_clause(cat, t, where_row, fmt))
    if op == "delete":
        if info["pk"]:
            return "DELETE FROM %s WHERE %s;" % (q, match_clause(cat, t, e["old"], fmt))
        return "DELETE FROM %s WHERE ctid = (SELECT ctid FROM %s WHERE %s LIMIT 1);" % (
            q, q, match_clause(cat, t, e["old"], fmt))
    raise ValueError(op)


def compare_sql(cat, schema, t):
    names = ", ".join(ident(c) for c, _ in cat.t[t]["cols"])
    return ("SELECT json_agg(x) FROM (SELECT * FROM ("
            "(SELECT 'source only' AS side, to_jsonb(s) AS r FROM (SELECT %s FROM (SELECT %s FROM public.%s"
            " EXCEPT ALL SELECT %s FROM %s.%s) d) s)"
            " UNION ALL "
            "(SELECT 'replica only', to_jsonb(s) FROM (SELECT %s FROM (SELECT %s FROM %s.%s"
            " EXCEPT ALL SELECT %s FROM public.%s) d) s)) u LIMIT 6) x"
            % (names, sel_as(cat, t), ident(t), sel_as(cat, t), ident(schema), ident(t),
               names, sel_as(cat, t), ident(schema), ident(t), sel_as(cat, t), ident(t)))


def sel_as(cat, t):
    out = []
    for c, typ in cat.t[t]["cols"]:
        # text: the exact output (-0 and 0, 12.50 and 12.5 differ); json
        # values as jsonb: equal as JSON (whitespace, and the number forms
        # MessagePack cannot keep: 1.10 and 1.1)
        e = "%s::jsonb" % ident(c) if typ in ("json", "jsonb") else "%s::text" % ident(c)
        out.append("%s AS %s" % (e, ident(c)))
    return ", ".join(out)


def replay(fmt, path, schema, psql):
    def fail(why):
        print("RESULT fail " + why)
        sys.exit(1)

    cat = Catalog(psql)
    events = read_events(fmt, path)
    seen = {}
    applied = []
    dups = 0
    messages = 0
    snap_lsn = {}
    for e in events:
        k = e["key"]
        if k in seen:
            first = seen[k]
            same = (first["op"], first["table"], first["cols"], first["old"]) == \
                   (e["op"], e["table"], e["cols"], e["old"])
            if not same:
                print("# event 1: %s" % first["raw"][:1500])
                print("# event 2: %s" % e["raw"][:1500])
                fail("two different events share the dedup key %s" % k)
            dups += 1
            continue
        seen[k] = e
        if e["op"] == "event":
            messages += 1
            continue
        if e["op"] == "snapshot" and snap_lsn.get(e["table"]) != e["snap_lsn"]:
            # a new snapshot (the first, or one taken again after a crash
            # mid-snapshot) replaces the table's contents
            snap_lsn[e["table"]] = e["snap_lsn"]
            applied.append(({"op": "truncate", "table": e["table"], "key": "(new snapshot)",
                             "raw": "(new snapshot at %s)" % e["snap_lsn"]}, None))
        applied.append((e, None))
    print("# %s: %d events, %d distinct, %d repeats (redelivered after kills), %d logical messages"
          % (fmt, len(events), len(seen), dups, messages))
    script = ["\\set ON_ERROR_STOP 1", "\\set QUIET off", "SET client_min_messages = warning;", "BEGIN;"]
    stmts = []
    for e, _ in applied:
        s = event_sql(cat, schema, e, fmt)
        if s is None:
            continue
        stmts.append(e)
        script.append(s)
    script.append("COMMIT;")
    p = subprocess.run(psql + ["-X", "-v", "ON_ERROR_STOP=1"], input="\n".join(script) + "\n",
                       capture_output=True, text=True)
    tags = [ln for ln in p.stdout.splitlines() if re.match(r"^(INSERT|UPDATE|DELETE|TRUNCATE) ", ln)]
    if p.returncode != 0:
        # statement n failed: tags holds the n-1 that succeeded
        bad = stmts[len(tags)] if len(tags) < len(stmts) else None
        print("# psql: %s" % p.stderr.strip()[:1500])
        if bad:
            print("# event: %s" % bad["raw"][:1500])
        fail("applying event %s failed" % (bad["key"] if bad else "?"))
    for e, tag in zip(stmts, tags):
        n = tag.split()[-1]
        if not tag.startswith("TRUNCATE") and n != "1":
            print("# event: %s" % e["raw"][:1500])
            fail("event %s (%s of %s) changed %s rows of the replica, not 1" % (e["key"], e["op"], e["table"], n))
    expect = json.load(open(os.path.join(os.path.dirname(path), "expect.json")))
    for t in cat.compared:
        diff = json.loads(run(psql, compare_sql(cat, schema, t)).strip() or "null")
        if diff:
            first = diff[0]
            print("# table %s differs; first row (%s): %s" % (t, first["side"], json.dumps(first["r"])[:1500]))
            for d in diff[1:]:
                print("#   also (%s): %s" % (d["side"], json.dumps(d["r"])[:600]))
            pk = cat.t[t]["pk"] or [cat.t[t]["cols"][0][0]]
            keyval = {c: first["r"].get(c) for c in pk}
            culprits = [e for e, _ in applied if e["table"] == t and e.get("cols") is not None and any(
                {c: str(row.get(c)) for c in pk} == {c: str(v) for c, v in keyval.items()}
                for row in (e.get("cols") or {}, e.get("old") or {}))]
            for e in culprits[-3:]:
                print("#   event touching %s: %s" % (json.dumps(keyval), e["raw"][:1500]))
            if not culprits:
                print("#   no event touched %s" % json.dumps(keyval))
            fail("replica %s.%s differs from the source" % (schema, t))
    if messages != expect["messages"]:
        fail("%d logical messages relayed, %d committed" % (messages, expect["messages"]))
    counts = run(psql, "SELECT string_agg(relname || '=' || n, ' ') FROM (SELECT 't_def' relname, count(*) n "
                       "FROM t_def UNION ALL SELECT 't_full', count(*) FROM t_full UNION ALL SELECT 't_nopk',"
                       " count(*) FROM t_nopk UNION ALL SELECT 'p_root', count(*) FROM p_root) c").strip()
    print("# %s: replica identical to the source (%s)" % (fmt, counts))
    print("RESULT ok")


def main():
    if len(sys.argv) >= 6 and sys.argv[1] == "generate":
        generate(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    elif len(sys.argv) >= 6 and sys.argv[1] == "replay":
        try:
            replay(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        except RuntimeError as ex:
            print("RESULT fail %s" % str(ex)[:1500])
            sys.exit(1)
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
