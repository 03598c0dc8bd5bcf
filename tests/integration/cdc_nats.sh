#!/usr/bin/env bash
# CDC -> NATS (JetStream) end to end, against a PRIVATE nats-server of this
# test (its own port and store; the shared server is never stopped):
# insert/update/delete on cdc.{table}.{op} with Nats-Msg-Id = {commit_lsn}:{index};
# COPY of 500 rows = 500 distinct dedup keys and 500 stored messages; the
# table schemas in the KV bucket "schemas" (at start, and updated after
# ALTER TABLE ADD COLUMN); an on-demand snapshot of a 25 000-row table
# (chunks + metadata consistent); nats-server down -> the slot's
# confirmed_flush_lsn does not advance, after the restart everything arrives.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/nats_lib.sh"
trap '_nats_cleanup; _cdc_cleanup' EXIT
cdc_setup_db
SLOT=cdc_nats_slot_$$
STREAM=CDC_NATS_EVENTS

start_private_nats n
URL=$(priv_nats_url n)
export NATSCLI_URL=$URL

sql "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL DEFAULT 'x', price numeric);
CREATE TABLE bulk (id int PRIMARY KEY, v text);
CREATE TABLE big (id int PRIMARY KEY, label text, n bigint);
INSERT INTO big SELECT g, 'row-' || g, g * 10 FROM generate_series(1, 25000) g;
CREATE PUBLICATION cdc_nats_pub FOR TABLE items, bulk, big;" >/dev/null

cdc_pipeline items-cdc "{\"publication\":\"cdc_nats_pub\",\"slot\":\"$SLOT\",\"heartbeat_interval\":\"1s\"}" \
    "{\"type\":\"nats\",\"url\":\"$URL\",\"stream\":\"$STREAM\",\"create_stream\":true,\"subject_template\":\"cdc.{table}.{op}\",\"reconnect_wait_ms\":200}"
# bad config of the NATS extras: refused, the key named
cdc_pipeline bad-chunk "{\"publication\":\"cdc_nats_pub\",\"slot\":\"${SLOT}_b1\",\"snapshot_chunk_rows\":0}" \
    "{\"type\":\"nats\",\"url\":\"$URL\",\"stream\":\"$STREAM\"}"
cdc_pipeline bad-stream "{\"publication\":\"cdc_nats_pub\",\"slot\":\"${SLOT}_b2\",\"snapshot_stream\":\"a.b\"}" \
    "{\"type\":\"nats\",\"url\":\"$URL\",\"stream\":\"$STREAM\"}"
start_relay r1
wait_until 15 'slot_exists $SLOT'
like "$(relay_log r1)" 'bad-chunk.*source\.snapshot_chunk_rows' "a bad snapshot_chunk_rows is refused, naming the key"
like "$(relay_log r1)" 'bad-stream.*source\.snapshot_stream: "a\.b" is not a valid' "a bad snapshot_stream is refused, naming the key"
no_bad_slots() { ! slot_exists "${SLOT}_b1" && ! slot_exists "${SLOT}_b2"; }
check "no slot was created for the refused pipelines" no_bad_slots
check "the relay created its slot" slot_exists $SLOT
wait_until 15 '[ "$(status_field r1 ".pipelines[0].source.position.phase")" = streaming ]'

# --- schemas KV at start --------------------------------------------------------------
wait_until 15 'natscli kv-get schemas items >/dev/null 2>&1'
sch=$(natscli kv-get schemas items 2>/dev/null)
is "$(jq -c '[.table, .schema, [.columns[] | [.name, .position, .data_type, .is_nullable]], .primary_key]' <<<"$sch")" \
   '["items","public.items",[["id",1,"integer",false],["name",2,"text",false],["price",3,"numeric",true]],["id"]]' \
   "KV schemas/items holds the table's schema at start (seed 003 shape)"
is "$(jq -r '.columns[1].column_default' <<<"$sch")" "'x'::text" "column_default is reported"
kv_has() { natscli kv-get schemas "$1" >/dev/null 2>&1; }
check "KV schemas has every published table" kv_has big

# --- insert/update/delete -------------------------------------------------------------
sql "INSERT INTO items VALUES (1, 'a', 1.50), (2, 'b', 2);
     UPDATE items SET name = 'A' WHERE id = 1;
     DELETE FROM items WHERE id = 2;" >/dev/null
wait_until 20 '[ "$(stream_count $STREAM)" -ge 4 ]'
dump=$(natscli dump $STREAM)
is "$(jq -r .subject <<<"$dump" | tr '\n' ' ')" "cdc.items.insert cdc.items.insert cdc.items.update cdc.items.delete " \
   "insert/update/delete arrive on cdc.{table}.{op}"
is "$(jq -c '.data | fromjson | [.op, .payload.id]' <<<"$dump" | tr '\n' ' ')" '["insert",1] ["insert",2] ["update",1] ["delete",2] ' \
   "events carry op and payload"
ids_ok=$(jq -r '(.data | fromjson) as $e | (.headers["Nats-Msg-Id"] == ($e.source.commit_lsn + ":" + ($e.dedup_key | split(":")[1]))) and ($e.dedup_key == .headers["Nats-Msg-Id"])' <<<"$dump" | sort -u | tr '\n' ' ')
is "$ids_ok" "true " "Nats-Msg-Id = {commit_lsn}:{index} for every event"
is "$(jq -r '.headers["Nats-Msg-Id"] | split(":")[1]' <<<"$dump" | tr '\n' ' ')" "0 1 2 3 " "indexes count the changes of the transaction"

# --- COPY of 500 rows -----------------------------------------------------------------
seq 1 500 | awk '{print $1 "\tv" $1}' | "${PSQL[@]}" -d "$TEST_DB" -c "COPY bulk FROM STDIN" >/dev/null
wait_until 20 '[ "$(stream_count $STREAM)" -ge 504 ]'
dump=$(natscli dump $STREAM | jq -c 'select(.subject == "cdc.bulk.insert")')
is "$(wc -l <<<"$dump" | tr -d ' ')" 500 "COPY of 500 rows: 500 messages in the NATS stream"
is "$(jq -r '.headers["Nats-Msg-Id"]' <<<"$dump" | sort -u | wc -l | tr -d ' ')" 500 "COPY of 500 rows: 500 distinct dedup keys"

# --- ALTER TABLE -> KV entry updated --------------------------------------------------
sql "ALTER TABLE items ADD COLUMN color text" >/dev/null
sql "INSERT INTO items VALUES (3, 'c', 3, 'red')" >/dev/null
wait_until 20 'natscli kv-get schemas items 2>/dev/null | jq -e ".columns | length == 4" >/dev/null'
is "$(natscli kv-get schemas items | jq -c '[.columns[] | .name]')" '["id","name","price","color"]' \
   "ALTER TABLE ADD COLUMN + insert: the KV entry is updated"

# --- on-demand snapshot of 25 000 rows ------------------------------------------------
ack=$(natscli request snapshot.request.big '' 5000)
is "$(jq -r .status <<<"$ack")" accepted "snapshot.request.big is acknowledged"
sid=$(jq -r .snapshot_id <<<"$ack")
like "$sid" '^snap-[0-9]+-[0-9a-f]{8}-[0-9]+$' "the acknowledgement names the snapshot id"
is "$(natscli request snapshot.request.nosuch '' 5000 | jq -r .status)" error "a request for an unknown table is refused"
wait_until 40 'natscli dump INIT 2>/dev/null | jq -e "select(.subject == \"init.meta.big\")" >/dev/null'
init=$(natscli dump INIT)
meta=$(jq -c 'select(.subject == "init.meta.big") | .data | fromjson' <<<"$init")
chunks=$(jq -c "select(.subject | startswith(\"init.snap.big.$sid.\"))" <<<"$init")
nchunks=$(wc -l <<<"$chunks" | tr -d ' ')
is "$(jq -c '[.snapshot_id, .row_count, .table]' <<<"$meta")" "[\"$sid\",25000,\"big\"]" "metadata: snapshot id, row_count 25000, table"
is "$(jq -r .batch_count <<<"$meta")" "$nchunks" "metadata: batch_count = number of chunks ($nchunks)"
is "$nchunks" 3 "25 000 rows in chunks of 10 000 (default snapshot_chunk_rows)"
is "$(jq -r '.data | fromjson | .data | length' <<<"$chunks" | awk '{s += $1} END {print s}')" 25000 "sum of chunk rows = 25 000"
is "$(jq -r '.data | fromjson | .data[].id' <<<"$chunks" | sort -un | wc -l | tr -d ' ')" 25000 "every id present once"
is "$(jq -r '.data | fromjson | .data[].id' <<<"$chunks" | wc -l | tr -d ' ')" 25000 "no id repeated"
is "$(jq -c '.data | fromjson | [.chunk, .operation, .lsn == "'"$(jq -r .lsn <<<"$meta")"'"]' <<<"$chunks" | tr '\n' ' ')" \
   '[0,"snapshot",true] [1,"snapshot",true] [2,"snapshot",true] ' "chunks numbered from 0, all at the metadata's LSN"
is "$(jq -c '.data | fromjson | .data[0]' <<<"$chunks" | head -1)" '{"id":1,"label":"row-1","n":10}' "rows are typed like CDC payloads"

# --- nats-server down: the slot does not advance --------------------------------------
wait_until 15 '[ "$(stream_count $STREAM)" -ge 505 ]'
sleep 2
stop_private_nats n
# The slot may still confirm what was relayed before, and even a heartbeat
# transaction whose commit lies among the INSERT's records (decoding
# re-reads a transaction that commits later): the invariant is that the
# INSERT's rows are not confirmed, so the slot stays before its end (mark),
# and the rows arrive once NATS is back (below: the real check).
sql "INSERT INTO items SELECT g, 'down' FROM generate_series(100, 149) g" >/dev/null
mark=$(sql "SELECT pg_current_wal_insert_lsn()")
sleep 5
after=$(slot_lsn $SLOT)
before=$after
check "nats-server down: confirmed_flush_lsn ($after) stays before the end of the rows written meanwhile ($mark)" \
      [ "$(sql "SELECT '$after'::pg_lsn < '$mark'::pg_lsn")" = t ]
start_private_nats n
wait_until 30 '[ "$(natscli dump $STREAM 2>/dev/null | jq -c "select(.subject == \"cdc.items.insert\") | .data | fromjson | select(.payload.name == \"down\")" | wc -l)" -ge 50 ]'
is "$(natscli dump $STREAM | jq -c 'select(.subject == "cdc.items.insert") | .data | fromjson | select(.payload.name == "down") | .payload.id' | sort -un | wc -l | tr -d ' ')" 50 \
   "after the restart the 50 rows written meanwhile arrive"
wait_until 20 '[ "$(sql "SELECT confirmed_flush_lsn > '"'$mark'"' FROM pg_replication_slots WHERE slot_name = '"'$SLOT'"'")" = t ]'
check "and the slot advances again" lsn_ge "$(slot_lsn $SLOT)" "$before"
check "... beyond the rows written while NATS was down" [ "$(sql "SELECT confirmed_flush_lsn > '$mark' FROM pg_replication_slots WHERE slot_name = '$SLOT'")" = t ]

stop_relay r1
done_testing
