#!/usr/bin/env bash
# CDC -> file end to end: insert/update/delete/truncate on two tables
# (REPLICA IDENTITY DEFAULT and FULL) with their ops, old keys and types; an
# unchanged TOASTed column is not reported as NULL; COPY of 500 rows gives
# 500 distinct dedup keys; the tables filter, {schema} in templates, logical
# messages (the relay's own heartbeat is not published), the idle heartbeat
# advancing the slot, /status and /metrics.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
cdc_setup_db
OUT=$TEST_TMP/events.jsonl
SLOT=cdc_e2e_slot

sql "CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE users (id bigint PRIMARY KEY, name text, score numeric, active bool, tags text[],
                    doc jsonb, seen timestamptz, pic bytea, n int, f float8, m mood);
CREATE TABLE audit (id int PRIMARY KEY, note text, big text);
ALTER TABLE audit REPLICA IDENTITY FULL;
ALTER TABLE audit ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE ignored (id int PRIMARY KEY);
CREATE SCHEMA other;
CREATE TABLE other.users (id int PRIMARY KEY);
CREATE PUBLICATION cdc_e2e_pub FOR TABLE users, audit, ignored, other.users;" >/dev/null

cdc_pipeline users-cdc "{\"publication\":\"cdc_e2e_pub\",\"slot\":\"$SLOT\",\"tables\":[\"users\",\"public.audit\",\"other.users\"],\"heartbeat_interval\":\"1s\"}" \
    "{\"type\":\"file\",\"output\":\"$OUT\",\"subject_template\":\"cdc.{schema}.{table}.{op}\"}"
start_relay r1
wait_until 15 'slot_exists $SLOT'
check "the relay created its slot over the replication protocol" slot_exists $SLOT
wait_until 15 '[ "$(status_field r1 ".pipelines[0].source.position.phase")" = streaming ]'

# --- ops, types, old keys ---------------------------------------------------------
sql "INSERT INTO users VALUES (1, 'Ann', 12.50, true, '{a,b}', '{\"k\": [1, 2]}',
       '2025-03-04 05:06:07.5+00', '\\x0102', NULL, 2.5, 'happy');
     INSERT INTO audit VALUES (1, 'first', repeat('x', 5000));
     INSERT INTO ignored VALUES (1);
     INSERT INTO other.users VALUES (7);
     UPDATE users SET name = 'Anne', score = 13 WHERE id = 1;
     UPDATE users SET id = 2 WHERE id = 1;
     UPDATE audit SET note = 'second' WHERE id = 1;
     DELETE FROM users WHERE id = 2;" >/dev/null
sql "DELETE FROM audit WHERE id = 1" >/dev/null
wait_until 20 '[ "$(count_events "$OUT" "select(.op == \"delete\")")" -ge 2 ]'

ins=$(events "$OUT" 'select(.op == "insert" and .source.table == "users" and .source.schema == "public") | .payload')
is "$ins" '{"id":1,"name":"Ann","score":"12.50","active":true,"tags":"{a,b}","doc":{"k":[1,2]},"seen":"2025-03-04 05:06:07.5+00","pic":"\\x0102","n":null,"f":2.5,"m":"happy"}' \
   "insert: bigint, numeric, bool, array, jsonb, timestamptz, bytea, NULL, float, enum mapped by type"
is "$(events "$OUT" 'select(.op == "insert") | .subject' | sort | tr '\n' ' ')" \
   "cdc.other.users.insert cdc.public.audit.insert cdc.public.users.insert " \
   "one subject per event with {schema} and {table}; the filtered table is absent"
is "$(count_events "$OUT" 'select(.source.table == "ignored")')" 0 "tables filter: \"ignored\" is not relayed"
is "$(events "$OUT" 'select(.op == "update" and .source.table == "users") | [.payload.id, .payload.name, (.old|tostring)] | tostring' | tr '\n' ' ')" \
   '[1,"Anne","null"] [2,"Anne","{\"id\":1}"] ' \
   "DEFAULT identity: update without key change has no old; a key change carries the old key"
is "$(events "$OUT" 'select(.op == "update" and .source.table == "audit") | [.old.note, .payload.note, (.old.big|length), (.payload|has("big"))] | tostring')" \
   '["first","second",5000,false]' "FULL identity: update carries the whole old row"
is "$(events "$OUT" 'select(.op == "delete") | [.source.table, (.old|keys|tostring), (.payload|keys|tostring)] | tostring' | tr '\n' ' ')" \
   '["users","[\"id\"]","[\"id\"]"] ["audit","[\"big\",\"id\",\"note\"]","[\"big\",\"id\",\"note\"]"] ' \
   "delete: the key (DEFAULT; other columns are not sent as NULLs) or the whole old row (FULL)"
src=$(events "$OUT" 'select(.op == "insert" and .source.table == "users" and .source.schema == "public") | .source')
like "$src" '^\{"schema":"public","table":"users","lsn":"[0-9A-F]+/[0-9A-F]+","commit_lsn":"[0-9A-F]+/[0-9A-F]+","xid":[0-9]+,"commit_time":"20[0-9-]+T[0-9:.]+Z","unchanged_toast":\[\]\}$' \
   "source carries schema, table, lsn, commit_lsn, xid, commit_time, unchanged_toast"
first_key=$(events "$OUT" 'select(.op == "insert" and .source.table == "users" and .source.schema == "public") | .dedup_key')
commit=$(jq -r .commit_lsn <<<"$src")
is "$first_key" "$commit:0" "dedup key is {commit_lsn}:{index_in_transaction}"
is "$(events "$OUT" 'select(.source.commit_lsn == "'"$commit"'") | .dedup_key' | awk -F: '{print $2}' | tr '\n' ' ')" \
   "0 1 3 4 5 6 7 " "indexes count every change of the transaction (index 2 is the filtered table)"

# --- unchanged TOAST --------------------------------------------------------------
sql "INSERT INTO audit VALUES (2, 'toast', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 100) g))" >/dev/null
sql "UPDATE audit SET note = 'toast2' WHERE id = 2" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.payload.note == \"toast2\")")" -ge 1 ]'
upd=$(events "$OUT" 'select(.payload.note == "toast2")')
is "$(jq -c '[(.payload|has("big")), .source.unchanged_toast, (.old.big|length)]' <<<"$upd")" '[false,["big"],3200]' \
   "FULL identity: the unchanged TOASTed column is omitted from payload, listed, and whole in old"
sql "ALTER TABLE audit REPLICA IDENTITY DEFAULT" >/dev/null
sql "UPDATE audit SET note = 'toast3' WHERE id = 2" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.payload.note == \"toast3\")")" -ge 1 ]'
upd=$(events "$OUT" 'select(.payload.note == "toast3")')
is "$(jq -c '[(.payload|has("big")), .source.unchanged_toast]' <<<"$upd")" '[false,["big"]]' \
   "an UPDATE leaving a TOASTed column unchanged omits it and lists it in unchanged_toast (never null)"

# --- truncate ---------------------------------------------------------------------
sql "TRUNCATE audit, other.users" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.op == \"truncate\")")" -ge 2 ]'
is "$(events "$OUT" 'select(.op == "truncate") | [.subject, .payload, .source.cascade] | tostring' | tr '\n' ' ')" \
   '["cdc.public.audit.truncate",null,false] ["cdc.other.users.truncate",null,false] ' "TRUNCATE is an event per table"

# --- COPY: many rows share one LSN --------------------------------------------------
before=$(lines "$OUT")
seq 1001 1500 | awk '{ printf "%d\tc%d\n", $1, $1 }' > "$TEST_TMP/copy.tsv"
"${PSQL[@]}" -d "$TEST_DB" -c "\\copy audit (id, note) FROM '$TEST_TMP/copy.tsv'" >/dev/null
wait_until 20 '[ "$(count_events "$OUT" "select(.payload.note // \"\" | startswith(\"c\"))")" -ge 500 ]'
copy_keys=$(events "$OUT" 'select(.op == "insert" and (.payload.note // "" | startswith("c"))) | .dedup_key' | sort -u | wc -l)
is "$copy_keys" 500 "COPY of 500 rows gives 500 distinct dedup keys"
copy_lsns=$(events "$OUT" 'select(.op == "insert" and (.payload.note // "" | startswith("c"))) | .source.lsn' | sort -u | wc -l)
diag "COPY: 500 rows on $copy_lsns distinct change LSNs"
ok "$([ "$copy_lsns" -lt 500 ] && echo 0 || echo 1)" "COPY rows share change LSNs (so the change LSN alone would collide)"

# --- one big transaction: delivered in batches, bounded memory ---------------------
b0=$(status_field r1 '.pipelines[0].counters.batches')
sql "INSERT INTO audit (id, note) SELECT g, 'big' FROM generate_series(100000, 299999) g" >/dev/null
wait_until 60 '[ "$(status_field r1 ".pipelines[0].counters.published")" -ge "$(( $(lines "$OUT") ))" ] && [ "$(grep -c "\"note\":\"big\"" "$OUT")" -ge 200000 ]'
is "$(grep -c '"note":"big"' "$OUT")" 200000 "a 200 000-row transaction is relayed whole"
is "$(grep '"note":"big"' "$OUT" | jq -r .dedup_key | sort -u | wc -l | tr -d ' ')" 200000 "with 200 000 distinct {commit_lsn}:{index} keys"
b1=$(status_field r1 '.pipelines[0].counters.batches')
ok "$([ $((b1 - b0)) -ge 40 ] && echo 0 || echo 1)" "it was delivered in $((b1 - b0)) batches (at most batch_size 5000 events each)"
rss=$(awk '/^VmHWM:/ { print $2 }' /proc/$(relay_pid r1)/status)
diag "relay peak RSS after the big transaction: $rss kB"
if grep -q __asan_init "$RELAY_BIN" 2>/dev/null; then
    ok 0 "peak RSS bound # SKIP AddressSanitizer's quarantine keeps freed memory"
else
    ok "$([ "$rss" -lt 65536 ] && echo 0 || echo 1)" "peak RSS stays bounded (< 64 MB) for a 200 000-row transaction"
fi

# --- logical messages and the heartbeat ------------------------------------------------
sql "SELECT pg_logical_emit_message(true, 'app.audit', 'hello')" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.op == \"event\")")" -ge 1 ]'
is "$(events "$OUT" 'select(.op == "event") | [.subject, .payload.prefix, .payload.content, .payload.transactional] | tostring')" \
   '["cdc._.app%2Eaudit.event","app.audit","hello",true]' \
   "a logical message is an event, {table} = its prefix (escaped), payload prefix/content"
is "$(count_events "$OUT" 'select(.payload.prefix == "pgtrickle_relay_heartbeat")')" 0 "the relay's own heartbeat messages are not published"
# Dedup keys of different event kinds never collide (issue 12 #1): a
# non-transactional message that is the last WAL record before a commit has
# the commit's LSN; it used to get "{lsn}:0", the key of the transaction's
# first change, and deduplicating consumers then dropped the change.
sql "BEGIN; INSERT INTO users (id) VALUES (5000); SELECT pg_logical_emit_message(false, 'p', 'x'); COMMIT" >/dev/null
wait_until 15 '[ "$(count_events "$OUT" "select(.payload.id == 5000 or .payload.prefix == \"p\")")" -ge 2 ]'
ins=$(events "$OUT" 'select(.op == "insert" and .payload.id == 5000) | [.dedup_key, .source.commit_lsn] | join(" ")')
msg=$(events "$OUT" 'select(.op == "event" and .payload.prefix == "p") | [.dedup_key, .source.lsn] | join(" ")')
is "${ins%% *}" "${ins#* }:0" "the change keeps {commit_lsn}:0"
is "${msg%% *}" "message:${msg#* }" "a non-transactional message's key is message:{lsn}"
diag "insert ${ins%% *}, message ${msg%% *} (message LSN ${msg#* }, commit LSN ${ins#* })"
ok "$([ "${msg%% *}" != "${ins%% *}" ] && echo 0 || echo 1)" "the message and the change have different dedup keys"
# Idle publication on a busy server: writes elsewhere, the slot still advances.
lsn0=$(slot_lsn $SLOT)
sql "CREATE TABLE unpublished (x int); INSERT INTO unpublished SELECT generate_series(1, 1000)" >/dev/null
cur=$(sql "SELECT pg_current_wal_lsn()")
wait_until 15 'lsn_ge "$(slot_lsn $SLOT)" "$cur"'
check "idle slot: the transactional heartbeat moves confirmed_flush_lsn past unrelated WAL" lsn_ge "$(slot_lsn $SLOT)" "$cur"
diag "slot $lsn0 -> $(slot_lsn $SLOT) (WAL was at $cur)"

# --- status and metrics -------------------------------------------------------------------
st=$(http_get r1 /status)
is "$(jq -r '.pipelines[0].source.position | [.slot, .publication, .phase] | join(" ")' <<<"$st")" \
   "$SLOT cdc_e2e_pub streaming" "/status shows slot, publication and phase"
like "$(jq -r '.pipelines[0].source.position.confirmed_lsn' <<<"$st")" '^[0-9A-F]+/[0-9A-F]+$' "/status shows the confirmed LSN"
is "$(jq -c '.pipelines[0].source.position.events | [.insert >= 503, .update, .delete, .truncate, .event]' <<<"$st")" \
   '[true,5,2,2,2]' "/status counts events per op"
lag=$(metric r1 'pgtrickle_relay_replication_lag_bytes{pipeline="users-cdc"}')
like "${lag:-none}" '^[0-9]+$' "replication lag bytes metric is exported ($lag)"
total=$(lines "$OUT")
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="users-cdc",sink="file"}')" "$total" "published counter matches the file"
is "$(distinct_keys "$OUT")" "$total" "no duplicate events in a clean run"
like "$(metric r1 'pgtrickle_relay_events_total{pipeline="users-cdc",op="truncate"}')" '^[1-9][0-9]*$' "events per op: truncate counted"
like "$(metric r1 'pgtrickle_relay_events_total{pipeline="users-cdc",op="insert"}')" '^[1-9][0-9]*$' "events per op: insert counted"
confirmed=$(metric r1 'pgtrickle_relay_confirmed_lsn{pipeline="users-cdc"}')
slot_lsn=$(sql "SELECT pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint FROM pg_replication_slots WHERE slot_name = '$SLOT'")
diff=$(( ${confirmed:-0} - ${slot_lsn:-0} )); diff=${diff#-}
ok "$([ "${confirmed:-0}" -gt 0 ] && [ "$diff" -lt 1048576 ] && echo 0 || echo 1)" "confirmed LSN metric ($confirmed) tracks the slot's confirmed_flush_lsn ($slot_lsn)"
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
done_testing
