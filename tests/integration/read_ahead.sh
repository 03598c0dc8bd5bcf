#!/usr/bin/env bash
# Read-ahead (worker.c): with a backlog the worker polls batch k+1 while the
# sink publishes batch k. Publishing faster must not weaken a rule:
#  - outbox -> NATS, a backlog of 40 000 events in batches of 200, relay
#    killed (-9) in the middle: every event of every acknowledged outbox row
#    is in the stream (nothing acked ahead of its PubAck); after a restart
#    the stream holds each event once (Nats-Msg-Id)
#  - the same with nats-server frozen (SIGSTOP) in the middle of the
#    backlog: PubAcks time out, the read-ahead batch is dropped and read
#    again, nothing is acknowledged meanwhile, and each event ends up once
#  - CDC -> file, a backlog of 100 transactions of 1 000 rows in batches of
#    500 events, relay killed (-9) in the middle: every transaction below
#    the slot's confirmed_flush_lsn is in the file whole; after a restart
#    every row is there
#  - read-ahead did happen in each case (batches_read_ahead_total)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
trap '_nats_cleanup; _cdc_cleanup' EXIT
cdc_setup_db
SUBJ="t_$NATS_TAG"
off() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
read_ahead() { metric "$1" "pgtrickle_relay_batches_read_ahead_total{pipeline=\"$2\"}"; }
# backlog <outbox> <rows>: rows of 100 events each, one transaction
backlog() {
    sql "SELECT pgtrickle.outbox_write('$1', (SELECT jsonb_agg(jsonb_build_object('r', r, 'n', g))
         FROM generate_series(1, 100) g)) FROM generate_series(1, $2) r" >/dev/null
}
# ids <stream> [url]: the Nats-Msg-Id of every stored message
ids() { NATSCLI_URL=${2:-$NATS_URL} natscli dump "$1" | jq -r '.headers["Nats-Msg-Id"]'; }

# --- outbox -> NATS, kill -9 in the middle of the backlog ---------------------------
SA=$(stream_name A)
natscli stream-add "$SA" "$SUBJ.a.>" >/dev/null
sql "SELECT pgtrickle.enable_outbox('ra')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('ra-nats', 'ra', NULL, '$(nats_sink "$SA" "$SUBJ.a.{op}")')" >/dev/null
sql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '2')
     WHERE name = 'ra-nats'" >/dev/null
backlog ra 400
start_relay r1
wait_until 30 '[ "$(stream_count "$SA")" -ge 2000 ]'
ra1=$(read_ahead r1 ra-nats)
kill9_relay r1
O=$(off ra-nats)
diag "killed at outbox offset $O with $(stream_count "$SA") messages stored, $ra1 batches read ahead"
ok "$([ "${ra1:-0}" -gt 0 ] && echo 0 || echo 1)" "batches were read ahead while publishing ($ra1)"
ok "$([ "$O" -gt 0 ] && [ "$O" -lt 400 ] && echo 0 || echo 1)" "killed in the middle of the backlog (offset $O of 400)"
acked_stored=$(ids "$SA" | awk -F: -v o="$O" '$2 <= o' | sort -u | wc -l | tr -d ' ')
is "$acked_stored" "$((O * 100))" "every event of the $O acknowledged outbox rows is in the stream"
start_relay r2
wait_until 60 '[ "$(off ra-nats)" = 400 ]'
is "$(off ra-nats)" 400 "after a restart the backlog completes"
is "$(stream_count "$SA")" 40000 "the stream holds 40000 messages"
is "$(ids "$SA" | sort -u | wc -l | tr -d ' ')" 40000 "... each event once"
stop_relay r2

# --- outbox -> NATS, the server frozen in the middle of the backlog ----------------------
start_private_nats F
FURL=$(priv_nats_url F)
SF=$(stream_name FROZEN)
sql "SELECT pgtrickle.enable_outbox('rf')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('rf-nats', 'rf', NULL,
     '$(SINK_URL=$FURL nats_sink "$SF" "$SUBJ.f.{op}" '"create_stream":true,"ack_timeout_ms":500')')" >/dev/null
sql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '2')
     WHERE name = 'rf-nats'" >/dev/null
backlog rf 200
start_relay r3 --shutdown-timeout 2s
wait_until 30 '[ "$(stream_count "$SF" "$FURL")" -ge 1000 ]'
ok "$([ "$(off rf-nats)" -lt 200 ] && echo 0 || echo 1)" "the server is frozen in the middle of the backlog"
kill -STOP "${PRIV_NATS_PIDS[F]}"
wait_until 15 '[ "$(pipeline_healthy r3 rf-nats)" = false ]'
like "$(last_error r3 rf-nats)" "no PubAck within 500 ms" "a frozen server: PubAcks time out"
O1=$(off rf-nats)
sleep 1.5
is "$(off rf-nats)" "$O1" "nothing is acknowledged while the server is frozen (offset $O1)"
kill -CONT "${PRIV_NATS_PIDS[F]}"
acked_stored=$(ids "$SF" "$FURL" | awk -F: -v o="$O1" '$2 <= o' | sort -u | wc -l | tr -d ' ')
is "$acked_stored" "$((O1 * 100))" "every event of the acknowledged rows is stored"
wait_until 60 '[ "$(off rf-nats)" = 200 ]'
is "$(off rf-nats)" 200 "after the server resumes the backlog completes"
is "$(stream_count "$SF" "$FURL")" 20000 "the stream holds 20000 messages"
is "$(ids "$SF" "$FURL" | sort -u | wc -l | tr -d ' ')" 20000 "... each event once"
ok "$([ "$(read_ahead r3 rf-nats)" -gt 0 ] && echo 0 || echo 1)" "batches were read ahead ($(read_ahead r3 rf-nats))"
stop_relay r3
is "$?" 0 "clean exit"

# --- CDC -> file, kill -9 in the middle of a backlog --------------------------------------
SLOT=read_ahead_slot
OUT=$TEST_TMP/cdc.jsonl
sql "CREATE TABLE t (id int PRIMARY KEY, v text);
     CREATE PUBLICATION read_ahead_pub FOR TABLE t;" >/dev/null
cdc_pipeline ra-cdc "{\"publication\":\"read_ahead_pub\",\"slot\":\"$SLOT\",\"batch_size\":500,\"heartbeat_interval\":0}" \
    "$(file_sink "$OUT")"
start_relay r4
wait_until 15 'slot_exists $SLOT'
stop_relay r4
for k in $(seq 0 99); do
    echo "INSERT INTO t SELECT g, 'row ' || g FROM generate_series($((k * 1000 + 1)), $((k * 1000 + 1000))) g;"
done | "${PSQL[@]}" -d "$TEST_DB" >/dev/null
start_relay r5
wait_until 60 '[ "$(lines "$OUT")" -ge 5000 ]'
ra5=$(read_ahead r5 ra-cdc)
kill9_relay r5
cp "$OUT" "$TEST_TMP/at-kill.jsonl"
C=$(slot_lsn $SLOT)
diag "killed with $(lines "$TEST_TMP/at-kill.jsonl") events written, slot confirmed at $C, $ra5 batches read ahead"
ok "$([ "${ra5:-0}" -gt 0 ] && echo 0 || echo 1)" "CDC batches were read ahead ($ra5)"
start_relay r6
wait_until 60 '[ "$(jq -r .payload.id "$OUT" | sort -u | wc -l)" -ge 100000 ]'
is "$(jq -r .payload.id "$OUT" | sort -u | wc -l | tr -d ' ')" 100000 "after a restart every row is in the file"
# The transactions (commit LSNs) below the confirmed LSN, from the final file;
# each must have been whole (1 000 rows) in the file at the kill.
read -r confirmed_txns whole < <(python3 - "$C" "$OUT" "$TEST_TMP/at-kill.jsonl" <<'PY'
import json, sys
def lsn(t):
    hi, lo = t.split('/')
    return (int(hi, 16) << 32) + int(lo, 16)
c = lsn(sys.argv[1])
def rows(path):
    by = {}
    for line in open(path):
        e = json.loads(line)
        by.setdefault(e['source']['commit_lsn'], set()).add(e['payload']['id'])
    return by
final, at_kill = rows(sys.argv[2]), rows(sys.argv[3])
confirmed = [l for l in final if lsn(l) < c]
print(len(confirmed), sum(1 for l in confirmed if len(at_kill.get(l, ())) == 1000))
PY
)
ok "$([ "$confirmed_txns" -gt 0 ] && [ "$confirmed_txns" -lt 100 ] && echo 0 || echo 1)" \
   "the slot was confirmed part of the way ($confirmed_txns of 100 transactions)"
is "$whole" "$confirmed_txns" "every confirmed transaction was whole in the file at the kill"
stop_relay r6
done_testing
