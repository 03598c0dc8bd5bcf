#!/usr/bin/python3
"""cdc_backfill_replay.py - the ground truth of the cdc_backfill tests.

  cdc_backfill_replay.py EVENTS REPLICA_SCHEMA TABLE[,TABLE...] PSQL...

Applies the events of a CDC pipeline's file sink (jsonl, in file order) to
empty copies of the tables in REPLICA_SCHEMA the way a consumer of a
backfill does, then compares each copy with its source table (public.TABLE)
row by row and column by column. Prints "# ..." diagnostics and one final
line "RESULT ok" or "RESULT fail <reason>"; exit status 0 or 1.

A consumer that starts empty and is backfilled while changes stream sees
changes of rows it does not hold yet, so it upserts:
  snapshot, insert   INSERT ... ON CONFLICT (pk) DO UPDATE (a plain insert
                     would fail on a row a backfill already sent: that is
                     legal, the backfill read it after the insert)
  update             the old key (when the key changed) is deleted, the new
                     row upserted
  delete             DELETE by key (the row may not be there yet)
  truncate           TRUNCATE
Events are applied once per dedup key, and a repeated key must carry the
very same event (cdc_replay.py's rule). A snapshot row applied after a newer
change of its key would leave the copy different from the source: that is
what the comparison catches. The parsing, SQL quoting and the psql runner
come from cdc_replay.py.
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdc_replay import ident, read_events, run, sql_value  # noqa: E402


def catalog(psql, tables):
    q = ("SELECT json_object_agg(c.relname, json_build_object("
         " 'cols', (SELECT json_agg(json_build_array(a.attname, format_type(a.atttypid, a.atttypmod))"
         "          ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0"
         "          AND NOT a.attisdropped),"
         " 'pk', (SELECT json_agg(a.attname ORDER BY k.ord) FROM pg_index i"
         "        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
         "        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
         "        WHERE i.indrelid = c.oid AND i.indisprimary)))"
         " FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY (%s)"
         % ("ARRAY[" + ", ".join("'%s'" % t for t in tables) + "]"))
    cat = json.loads(run(psql, q))
    for v in cat.values():
        v["types"] = dict(v["cols"])
    return cat


def key_cond(info, row):
    return " AND ".join("%s = %s" % (ident(c), sql_value(row[c], info["types"][c], "native"))
                        for c in info["pk"])


def upsert(q, info, cols):
    names = ", ".join(ident(c) for c in cols)
    vals = ", ".join(sql_value(v, info["types"][c], "native") for c, v in cols.items())
    sets = ", ".join("%s = EXCLUDED.%s" % (ident(c), ident(c)) for c in cols)
    return "INSERT INTO %s (%s) VALUES (%s) ON CONFLICT (%s) DO UPDATE SET %s;" % (
        q, names, vals, ", ".join(ident(c) for c in info["pk"]), sets)


def event_sql(cat, schema, e):
    t, op = e["table"], e["op"]
    if op == "event" or t not in cat:
        return None
    info = cat[t]
    q = "%s.%s" % (ident(schema), ident(t))
    if op == "truncate":
        return "TRUNCATE %s;" % q
    if op in ("snapshot", "insert"):
        return upsert(q, info, e["cols"])
    if op == "update":
        if e["toast"]:
            raise RuntimeError("update %s leaves TOAST columns out: not replayable onto an empty copy"
                               % e["key"])
        out = ""
        old = e["old"]
        if old is not None and any(old.get(c) != e["cols"].get(c) for c in info["pk"]):
            out = "DELETE FROM %s WHERE %s; " % (q, key_cond(info, old))
        return out + upsert(q, info, e["cols"])
    if op == "delete":
        return "DELETE FROM %s WHERE %s;" % (q, key_cond(info, e["old"]))
    raise RuntimeError("unexpected op %s" % op)


def compare(psql, cat, schema, t):
    sel = ", ".join("%s::text AS %s" % (ident(c), ident(c)) for c, _ in cat[t]["cols"])
    q = ("SELECT json_agg(x) FROM (SELECT * FROM ("
         "(SELECT 'source only' AS side, to_jsonb(s) AS r FROM (SELECT %s FROM public.%s"
         "  EXCEPT ALL SELECT %s FROM %s.%s) s)"
         " UNION ALL "
         "(SELECT 'replica only', to_jsonb(s) FROM (SELECT %s FROM %s.%s"
         "  EXCEPT ALL SELECT %s FROM public.%s) s)) u LIMIT 6) x"
         % (sel, ident(t), sel, ident(schema), ident(t), sel, ident(schema), ident(t), sel, ident(t)))
    return json.loads(run(psql, q).strip() or "null")


def main():
    if len(sys.argv) < 5:
        sys.stderr.write(__doc__)
        sys.exit(2)
    path, schema, tables, psql = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]

    def fail(why):
        print("RESULT fail " + why)
        sys.exit(1)

    try:
        cat = catalog(psql, tables)
        events = read_events("native", path)
        seen = {}
        script = ["\\set ON_ERROR_STOP 1", "SET client_min_messages = warning;", "BEGIN;"]
        counts = {}
        for e in events:
            k = e["key"]
            if k in seen:
                a = seen[k]
                if (a["op"], a["table"], a["cols"], a["old"]) != (e["op"], e["table"], e["cols"], e["old"]):
                    print("# event 1: %s" % a["raw"][:1500])
                    print("# event 2: %s" % e["raw"][:1500])
                    fail("two different events share the dedup key %s" % k)
                continue
            seen[k] = e
            s = event_sql(cat, schema, e)
            if s:
                script.append(s)
                counts[e["op"]] = counts.get(e["op"], 0) + 1
        script.append("COMMIT;")
        p = subprocess.run(psql + ["-X", "-q", "-v", "ON_ERROR_STOP=1"], input="\n".join(script) + "\n",
                           capture_output=True, text=True)
        if p.returncode != 0:
            fail("applying the events failed: %s" % p.stderr.strip()[:1500])
        print("# %d events, %d distinct; applied %s" % (
            len(events), len(seen), " ".join("%s=%d" % kv for kv in sorted(counts.items()))))
        for t in tables:
            diff = compare(psql, cat, schema, t)
            if diff:
                for d in diff:
                    print("# %s: %s" % (d["side"], json.dumps(d["r"])[:600]))
                    pk = {c: d["r"].get(c) for c in cat[t]["pk"]}
                    for e in events:
                        if e["table"] == t and any(
                                row and all(str(row.get(c)) == str(v) for c, v in pk.items())
                                for row in (e["cols"], e["old"])):
                            print("#   event: %s" % e["raw"][:400])
                fail("replica %s.%s differs from the source" % (schema, t))
            n = run(psql, "SELECT count(*) FROM public.%s" % ident(t)).strip()
            print("# %s: replica identical to the source (%s rows)" % (t, n))
    except RuntimeError as ex:
        fail(str(ex)[:1500])
    print("RESULT ok")


if __name__ == "__main__":
    main()
