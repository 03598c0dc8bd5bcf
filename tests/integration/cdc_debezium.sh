#!/usr/bin/env bash
# format "debezium" (issue 20): CDC events compared field by field with the
# change event examples of the Debezium PostgreSQL connector's documentation
# (tests/fixtures/debezium, its sample table "customers"), on the file, the
# webhook and the NATS sink (Kafka: kafka_formats); create, update (REPLICA
# IDENTITY FULL: the whole old row), delete (the old key), truncate, snapshot
# rows (op "r"), an unchanged TOAST column (the placeholder), the value
# mappings of "Data type mappings" for every type the relay maps, the record
# key ({key}) and subject_overrides per op.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/webhook_lib.sh"
. "$(dirname "$0")/nats_lib.sh"
trap '_nats_cleanup; _cdc_cleanup' EXIT
FIX=$(dirname "$0")/../fixtures/debezium
cdc_setup_db
OUT=$TEST_TMP/dbz.jsonl
STREAM=$(stream_name DBZ)
SUBJ=t_${NATS_TAG}

sql "CREATE TABLE customers (id SERIAL, first_name VARCHAR(255) NOT NULL,
       last_name VARCHAR(255) NOT NULL, email VARCHAR(255) NOT NULL, PRIMARY KEY(id));
     CREATE TABLE full_rows (id int PRIMARY KEY, v text);
     ALTER TABLE full_rows REPLICA IDENTITY FULL;
     CREATE TABLE seed (id int PRIMARY KEY, label text);
     INSERT INTO seed VALUES (1, 'snap');
     CREATE TABLE types (k1 int, k2 text, n52 numeric(5,2), nv numeric, nneg numeric(10,0),
       d date, ts timestamp, ts3 timestamp(3), tstz timestamptz, t time, t3 time(3), ttz timetz,
       iv interval, b bytea, j jsonb, ia int[], ta text[], u uuid, b1 bit(1), b4 bit(4),
       m money, ok bool, f float8, big text, PRIMARY KEY (k1, k2));
     ALTER TABLE types ALTER COLUMN big SET STORAGE EXTERNAL;
     CREATE PUBLICATION cdc_dbz_pub FOR TABLE customers, full_rows, seed, types;" >/dev/null
SRC='{"publication":"cdc_dbz_pub","slot":"cdc_debezium_f","snapshot":"initial"}'
# The pipeline is named like the documentation's logical server name.
cdc_pipeline PostgreSQL_server "$SRC" \
    "{\"type\":\"file\",\"output\":\"$OUT\",\"format\":\"debezium\"}"
start_recv hook
cdc_pipeline dbz-webhook '{"publication":"cdc_dbz_pub","slot":"cdc_debezium_w"}' \
    "{\"type\":\"webhook\",\"url\":\"$(recv_url hook)\",\"format\":\"debezium\",\"batch_mode\":false}"
natscli stream-add "$STREAM" "$SUBJ.>" >/dev/null || bail "cannot create the stream"
cdc_pipeline dbz-nats '{"publication":"cdc_dbz_pub","slot":"cdc_debezium_n","snapshot":"initial"}' \
    "$(nats_sink "$STREAM" "$SUBJ.{table}.{key}" "\"format\":\"debezium\",
        \"subject_overrides\":{\"delete\":\"$SUBJ.gone.{table}.{key}\",\"truncate\":\"$SUBJ.wiped.{table}\"}")"
start_relay r1
wait_until 20 'slot_exists cdc_debezium_f && slot_exists cdc_debezium_w && slot_exists cdc_debezium_n' ||
    bail "slots not created: $(relay_log r1 | grep -v "KV bucket" | tail -15)"
wait_until 20 "[ \$(count_events '$OUT' 'select(.op == \"r\")') -ge 1 ]"

sql "INSERT INTO customers (first_name, last_name, email) VALUES ('Anne', 'Kretchmar', 'annek@noanswer.org');
     UPDATE customers SET first_name = 'Anne Marie' WHERE id = 1;
     DELETE FROM customers WHERE id = 1;
     TRUNCATE customers;
     INSERT INTO full_rows VALUES (1, 'a');
     UPDATE full_rows SET v = 'b';
     DELETE FROM full_rows;" >/dev/null
sql "INSERT INTO types VALUES (7, 'a b', 123.45, -0.5, -128, '2024-02-29', '2024-02-29 12:34:56.789012',
       '1969-12-31 23:59:59.5', '2024-02-29 12:34:56.5+02', '12:34:56.000789', '01:02:03.4',
       '23:30:00-01:30', '1 year 2 mons 3 days 04:05:06.5', '\\x00ff10', '{\"a\": [1, 2.50]}',
       '{1,NULL,3}', '{\"x y\",\"q\\\"\"}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', B'1', B'0110',
       '-1234.56', true, 1.5, repeat('x', 3000) || md5('t'));
     UPDATE types SET f = 2.5 WHERE k1 = 7;" >/dev/null
wait_until 30 "[ \$(count_events '$OUT' 'select(.source.table == \"types\")') -ge 2 ] &&
               [ \$(count_events '$OUT' 'select(.op == \"t\")') -ge 1 ]" ||
    diag "$(relay_log r1 | tail -20)"

# same_as <event json> <fixture file> <description>: every path of the
# fixture exists with the same JSON type, values equal but for those that
# depend on the run (checked below on their own).
VARIABLE='[["ts_ms"],["ts_us"],["ts_ns"],["source","ts_ms"],["source","ts_us"],["source","ts_ns"],
           ["source","version"],["source","db"],["source","txId"],["source","lsn"],["source","sequence"]]'
# [name]: the pipeline's name, Debezium's logical server name (default the
# documentation's, which the file pipeline is named after).
same_as() {
    local diff
    diff=$(jq -nc --argjson a "$1" --slurpfile f "$2" --argjson var "$VARIABLE" --arg name "${4:-PostgreSQL_server}" '
        ($f[0] | .source.name = $name) as $f
        | ([$f | paths(type != "object")] | sort) as $fp
        | ([$a | paths(type != "object")] | sort) as $ap
        | if $fp != $ap then {paths_only_in_fixture: ($fp - $ap), paths_only_in_event: ($ap - $fp)}
          else [$fp[] as $p
                | select(($a | getpath($p) | type) != ($f | getpath($p) | type)
                         or (($var | index([$p])) == null and ($a | getpath($p)) != ($f | getpath($p))))
                | {path: $p, event: ($a | getpath($p)), fixture: ($f | getpath($p))}]
          end' 2>&1)
    if [ "$diff" = "[]" ]; then pass "$3"; else fail "$3"; diag "$diff"; fi
}
ev() { events "$OUT" "select(.source.table == \"customers\" and .op == \"$1\")" | head -1; }
same_as "$(ev c)" "$FIX/create.json" "file: the create event matches the documentation's example"
same_as "$(ev u)" "$FIX/update.json" "file: the update event matches the example (before null: DEFAULT identity)"
same_as "$(ev d)" "$FIX/delete.json" "file: the delete event matches the example (before = the old key)"
same_as "$(ev t)" "$FIX/truncate.json" "file: the truncate event matches the example (no before/after)"

c=$(ev c)
is "$(jq -r '.source.db' <<<"$c")" "$TEST_DB" "source.db is the database"
is "$(jq -r '.source.version' <<<"$c")" "$("$RELAY_BIN" --version | head -1 | awk '{print $2}')" \
   "source.version is the relay's version"
xid=$(jq -r '.source.txId' <<<"$c"); lsn=$(jq -r '.source.lsn' <<<"$c")
like "$xid" '^[0-9]+$' "source.txId is the transaction id"
is "$(jq -r '.source.sequence | fromjson | .[1]' <<<"$c")" "$lsn" "sequence[1] is the change's LSN, as a string of its number"
is "$(jq -r '(.source.sequence | fromjson | .[0] | tonumber) >= (.source.lsn)' <<<"$c")" true \
   "sequence[0] is the commit LSN (not before the change)"
is "$(jq -r '(.ts_ms - .source.ts_ms) >= 0 and (.ts_us / 1000 | floor) == .ts_ms and .ts_ns == .ts_us * 1000' <<<"$c")" true \
   "ts_ms (processing) is not before source.ts_ms (commit); ts_us and ts_ns agree with it"
is "$(sql "SELECT pg_lsn('0/0') + $lsn >= '0/1'::pg_lsn")" t "source.lsn is a number PostgreSQL reads as an LSN"

fr=$(events "$OUT" 'select(.source.table == "full_rows" and .op != "c") | [.op, .before, .after]' | tr -d '\n')
is "$fr" '["u",{"id":1,"v":"a"},{"id":1,"v":"b"}]["d",{"id":1,"v":"b"},null]' \
   "REPLICA IDENTITY FULL: before is the whole old row (update and delete)"

# Snapshot rows: op "r", source.snapshot "true", after = the row.
r=$(events "$OUT" 'select(.op == "r")' | head -1)
is "$(jq -c '[.before, .after, .source.snapshot, .source.table, .source.txId]' <<<"$r")" \
   '[null,{"id":1,"label":"snap"},"true","seed",null]' "snapshot row: op r, before null, snapshot \"true\""

# Types (Debezium "Data type mappings", decimal.handling.mode=precise,
# time.precision.mode=adaptive, binary.handling.mode=bytes).
ty=$(events "$OUT" 'select(.source.table == "types" and .op == "c") | .after')
t() { is "$(jq -c ".$1" <<<"$ty")" "$2" "type mapping: $3"; }
t n52 '"MDk="' "numeric(5,2) 123.45 -> Decimal: base64 of the unscaled 12345"
t nv '{"scale":1,"value":"+w=="}' "numeric -0.5 -> VariableScaleDecimal {scale 1, value -5}"
t nneg '"gA=="' "numeric(10,0) -128 -> one byte 0x80 (minimal two's complement)"
t d 19782 "date -> days since the epoch"
t ts 1709210096789012 "timestamp -> MicroTimestamp (microseconds)"
t ts3 -500 "timestamp(3) before the epoch -> Timestamp (milliseconds, floored)"
t tstz '"2024-02-29T10:34:56.5Z"' "timestamptz -> ZonedTimestamp in UTC"
t t 45296000789 "time -> MicroTime"
t t3 3723400 "time(3) -> Time (milliseconds)"
t ttz '"01:00:00Z"' "timetz -> ZonedTime in UTC"
t iv 37091106500000 "interval -> MicroDuration (365.25/12 days a month)"
t b '"AP8Q"' "bytea -> base64"
t j '"{\"a\": [1, 2.50]}"' "jsonb -> io.debezium.data.Json (the document as a string)"
t ia '[1,null,3]' "int[] -> an array of int32"
t ta '["x y","q\""]' "text[] -> an array of strings (quoted elements unescaped)"
t u '"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"' "uuid -> string"
t b1 true "bit(1) -> boolean"
t b4 '"Bg=="' "bit(4) 0110 -> Bits, little-endian bytes"
t m '"/h3A"' "money -1234.56 -> Decimal scale 2 (-123456)"
t ok true "bool -> boolean"
t f 1.5 "float8 -> number"
upd=$(events "$OUT" 'select(.source.table == "types" and .op == "u")')
is "$(jq -r '.after.big' <<<"$upd")" "__debezium_unavailable_value" \
   "an unchanged TOAST column is the placeholder __debezium_unavailable_value"
is "$(jq -c '[.after.f, .before]' <<<"$upd")" '[2.5,null]' \
   "update of a table with a composite key: after has the new value, before null (DEFAULT identity, key unchanged)"

# Webhook: the same event bodies, one per request.
wait_until 20 "[ \$(jq -r 'select(.body | fromjson? | .op == \"t\") | 1' '$(recv_log hook)' | wc -l) -ge 1 ]"
wh=$(jq -r '.body' "$(recv_log hook)" | jq -c 'select(.source.table == "customers" and .op == "c")')
same_as "$wh" "$FIX/create.json" "webhook: the create event matches the documentation's example" dbz-webhook
is "$(jq -r 'select(.body | fromjson? | .op == "c") | .headers["content-type"]' "$(recv_log hook)" | head -1)" \
   "application/json" "webhook: Content-Type application/json"

# NATS: the same, on the rendered subjects.
wait_until 20 "natscli dump '$STREAM' | jq -e 'select(.data | fromjson? | .op == \"t\")' >/dev/null"
nd=$(natscli dump "$STREAM")
same_as "$(jq -r '.data' <<<"$nd" | jq -c 'select(.source.table == "customers" and .op == "d")')" \
    "$FIX/delete.json" "nats: the delete event matches the documentation's example" dbz-nats
# Subjects: {key} is the record key (Debezium's key: the replica-identity
# columns as JSON) escaped to one token; subject_overrides per op.
K1='%7B%22id%22%3A1%7D'
subj() { jq -r "select(.data | fromjson? | .source.table == \"$1\" and .op == \"$2\") | .subject" <<<"$nd" | head -1; }
is "$(subj customers c)" "$SUBJ.customers.$K1" "{key}: the row key {\"id\":1}, escaped to one subject token"
is "$(subj seed r)" "$SUBJ.seed.$K1" "{key} of a snapshot row"
is "$(subj customers d)" "$SUBJ.gone.customers.$K1" "subject_overrides: deletes on their own subject"
is "$(subj customers t)" "$SUBJ.wiped.customers" "subject_overrides: truncates (no row key) on theirs"
is "$(subj types c)" "$SUBJ.types.%7B%22k1%22%3A7%2C%22k2%22%3A%22a%20b%22%7D" "{key} of a composite key, in key order"

stop_relay r1 >/dev/null
done_testing
