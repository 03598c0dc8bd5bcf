#!/usr/bin/env bash
# CDC in MessagePack, read by an independent decoder (Debian's
# python3-msgpack) from the file sink's length-prefixed records (issue 12):
# numbers beyond 64 bits or a double survive (as strings of their JSON
# text), a float without a point stays a float and -0 keeps its sign, "old"
# and "unchanged_toast" are carried, and an event MessagePack cannot carry (a
# json string with an unpaired surrogate escape, JSON nested deeper than
# 1000 levels) is dead-lettered with the reason while the native pipeline
# relays it and the stream goes on.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
PY=/usr/bin/python3
"$PY" -c 'import msgpack' 2>/dev/null || bail "Debian's python3-msgpack is missing (scripts/install-deps.sh)"
cdc_setup_db
MP=$TEST_TMP/events.bin
NATIVE=$TEST_TMP/events.jsonl

sql "CREATE TABLE docs (id int PRIMARY KEY, js json, f8 float8, big text);
     ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;
     CREATE PUBLICATION cdc_msgpack_pub FOR TABLE docs;" >/dev/null
cdc_pipeline mp '{"publication":"cdc_msgpack_pub","slot":"cdc_msgpack_mp"}' \
    "{\"type\":\"file\",\"output\":\"$MP\",\"format\":\"msgpack\"}"
cdc_pipeline native '{"publication":"cdc_msgpack_pub","slot":"cdc_msgpack_native"}' "$(file_sink "$NATIVE")"
start_relay r1
wait_until 15 'slot_exists cdc_msgpack_mp && slot_exists cdc_msgpack_native'

deep=$(printf '[%.0s' $(seq 1200))1$(printf ']%.0s' $(seq 1200))
sql "INSERT INTO docs VALUES (1, '{\"u64\": 18446744073709551615, \"over\": 18446744073709551616,
       \"i\": 9223372036854775808, \"huge\": 1e400, \"long\": 0.1000000000000000000001, \"r\": 1.5}', 5, NULL);
     INSERT INTO docs VALUES (2, '[\"\\ud800\"]', '-0', NULL);
     INSERT INTO docs VALUES (3, '$deep', 0, NULL);
     INSERT INTO docs VALUES (4, '{\"a\": 1}', 2.5, repeat('x', 3000) || md5('y'));
     UPDATE docs SET id = 5, f8 = 1 WHERE id = 4;" >/dev/null
# (jq cannot parse 1200 levels: the native file is read with grep)
wait_until 20 '[ "$(grep -c "\"op\":\"update\"" "$NATIVE" 2>/dev/null)" -ge 1 ] && [ -s "$MP" ] && [ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = '"'mp'"'")" -ge 2 ]'

# Every record of the file, decoded by python3-msgpack, as one JSON line
# (numbers that were strings stay strings; floats and big integers are
# tagged so that jq, which reads numbers as doubles, shows them exactly).
decode() {
    "$PY" - "$MP" <<'EOF'
import json, math, sys, msgpack
data = open(sys.argv[1], "rb").read()
pos = 0
def fix(v):
    if isinstance(v, float):
        return {"float": "-0.0" if v == 0 and math.copysign(1, v) < 0 else repr(v)}
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**53:
        return {"int": str(v)}  # beyond jq's doubles
    if isinstance(v, dict):
        return {k: fix(x) for k, x in v.items()}
    if isinstance(v, list):
        return [fix(x) for x in v]
    return v
while pos < len(data):
    n = int.from_bytes(data[pos:pos + 4], "big")
    e = msgpack.unpackb(data[pos + 4:pos + 4 + n], raw=False)
    pos += 4 + n
    print(json.dumps(fix(e), sort_keys=True))
EOF
}
recs=$(decode)
diag "$(wc -l <<<"$recs") msgpack records"
row() { jq -c "select(.operation == \"$1\") | .columns | map({(.name): .value}) | add | select(.id == $2)" <<<"$recs"; }
r1=$(row INSERT 1)
is "$(jq -c '.js' <<<"$r1")" \
   '{"huge":"1e400","i":{"int":"9223372036854775808"},"long":"0.1000000000000000000001","over":"18446744073709551616","r":{"float":"1.5"},"u64":{"int":"18446744073709551615"}}' \
   "json numbers: 64-bit (unsigned) integers stay integers, the others are strings of their text; the row is whole"
is "$(jq -c '.f8' <<<"$r1")" '{"float":"5.0"}' "float8 5 is a MessagePack float"
like "$(grep '"id":1,' "$NATIVE")" '"f8":5\.0[,}]' "native: float8 5 keeps its point in the JSON text"
like "$(grep '"id":2,' "$NATIVE")" '"f8":-0\.0[,}]' "native: float8 -0 keeps its sign"

upd=$(jq -c 'select(.operation == "UPDATE")' <<<"$recs")
is "$(jq -c '[.old, .unchanged_toast, (.columns | map(.name))]' <<<"$upd")" \
   '[[{"name":"id","value":4}],["big"],["id","js","f8"]]' \
   "update: old carries the old key, unchanged_toast names the TOASTed column left out of columns"
is "$(jq -c 'select(.operation == "INSERT" and (.columns[0].value == 4)) | [.old, .unchanged_toast]' <<<"$recs")" \
   '[null,[]]' "insert: old is nil, unchanged_toast empty"

is "$(jq -c 'select(.operation == "INSERT") | .columns[0].value' <<<"$recs" | tr '\n' ' ')" "1 4 " \
   "rows 2 and 3 are not in the msgpack file (not sent empty)"
is "$(grep -c '"op":"insert"' "$NATIVE")" 4 "the native pipeline relays all four rows"
dlq=$(sql "SELECT dedup_key || ' ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'mp' ORDER BY failed_at, dedup_key")
diag "$dlq"
like "$(sed -n 1p <<<"$dlq")" 'cannot encode the event as msgpack: a JSON string holds an unpaired surrogate escape' \
   "the unpaired surrogate row is dead-lettered with the reason"
like "$(sed -n 2p <<<"$dlq")" 'cannot encode the event as msgpack: the payload nests JSON deeper than 1000 levels' \
   "the 1200-level row is dead-lettered with the reason"
keys=$(grep -E '"payload":\{"id":(2|3),' "$NATIVE" | grep -o '^{"dedup_key":"[^"]*"' | cut -d'"' -f4 | tr '\n' ' ')
is "$(sql "SELECT string_agg(dedup_key, ' ' ORDER BY failed_at, dedup_key) FROM pgtrickle.relay_dlq WHERE pipeline = 'mp'") " \
   "$keys" "under the dedup keys the native pipeline gave those rows"
stop_relay r1
done_testing
