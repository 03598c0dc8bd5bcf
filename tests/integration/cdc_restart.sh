#!/usr/bin/env bash
# CDC restarts and a dead sink:
#  - the sink is down: the slot's confirmed_flush_lsn never advances, and the
#    walsender is not killed by wal_sender_timeout (2 s here) while the relay
#    waits, because standby status goes out from the idle hook;
#  - the relay is killed (-9) after PostgreSQL committed rows it had received
#    but not confirmed: after a restart those rows are delivered (the seed
#    bridge restarted at pg_current_wal_lsn() and skipped them);
#  - kill -9 in the middle of a stream of 200 transactions (one of 5 000 rows
#    among them): nothing lost, duplicates only re-deliveries of the same
#    events with the same dedup keys.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
cdc_setup_db
DIR=$TEST_TMP/out
OUT=$DIR/events.jsonl
SLOT=cdc_restart_slot
# Every relay connection (the replication one too) runs with a 2 s walsender timeout.
export RELAY_URL="$DB_URL?options=-c%20wal_sender_timeout%3D2s"

sql "CREATE TABLE t (id int PRIMARY KEY, v text);
     CREATE PUBLICATION cdc_restart_pub FOR TABLE t;" >/dev/null
cdc_pipeline restart-cdc "{\"publication\":\"cdc_restart_pub\",\"slot\":\"$SLOT\",\"heartbeat_interval\":0}" \
    "{\"type\":\"file\",\"output\":\"$OUT\",\"rotate_bytes\":1}"
# rotate_bytes 1: every batch starts a new file, which needs the directory, so
# removing the directory takes the sink down (an open file would not notice).
all() { cat "$DIR"/events.jsonl* 2>/dev/null; }
nall() { all | wc -l | tr -d ' '; }
mkdir -p "$DIR"
start_relay r1
wait_until 15 'slot_exists $SLOT'
sql "INSERT INTO t VALUES (0, 'warm-up')" >/dev/null
wait_until 15 '[ "$(nall)" -ge 1 ]'
is "$(nall)" 1 "warm-up row relayed"
wait_until 10 '[ "$(slot_lsn $SLOT)" = "$(sql "SELECT pg_current_wal_lsn()")" ] || lsn_ge "$(slot_lsn $SLOT)" "$(sql "SELECT pg_current_wal_lsn()")"'
L0=$(slot_lsn $SLOT)

# --- the sink goes down -------------------------------------------------------------
rm -rf "$DIR"
pid0=$(sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$SLOT'")
for i in $(seq 1 50); do echo "INSERT INTO t VALUES ($i, 'unacked-$i');"; done | "${PSQL[@]}" -d "$TEST_DB" >/dev/null
wait_until 10 'relay_log r1 | grep -q "sink file unavailable"'
like "$(relay_log r1)" "sink file unavailable" "the relay saw the sink go down"
max_seen=$L0
for _ in $(seq 1 24); do   # 6 s, three times wal_sender_timeout
    l=$(slot_lsn $SLOT)
    lsn_ge "$l" "$max_seen" && max_seen=$l
    sleep 0.25
done
is "$max_seen" "$L0" "while the sink is down confirmed_flush_lsn never moves (stays at $L0)"
is "$(sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$SLOT'")" "$pid0" \
   "the same walsender is still streaming after 3 x wal_sender_timeout (status sent from idle)"
check "no 'replication stream ended' while waiting" bash -c "! grep -q 'stream of slot' '$TEST_TMP/r1.log'"

# --- killed with committed, unconfirmed rows; restarted ----------------------------
kill9_relay r1
mkdir -p "$DIR"
wait_until 10 '[ -z "$(sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '"'$SLOT'"'")" ]'
is "$(slot_lsn $SLOT)" "$L0" "after kill -9 the slot is still at the last confirmed commit"
start_relay r2
wait_until 20 '[ "$(nall)" -ge 50 ]'
is "$(all | jq -r .payload.id | sort -n | tr '\n' ' ')" "$(seq 1 50 | tr '\n' ' ')" \
   "after the restart the 50 rows committed while unconfirmed are delivered, in order, once"
C50=$(all | jq -r 'select(.payload.id == 50) | .source.commit_lsn')
wait_until 10 '[ "$(sql "SELECT '"'"'$(slot_lsn $SLOT)'"'"'::pg_lsn > '"'"'$C50'"'"'::pg_lsn")" = t ]'
is "$(sql "SELECT '$(slot_lsn $SLOT)'::pg_lsn > '$C50'::pg_lsn")" t "the slot advances past their commits once they are confirmed"

# --- kill -9 mid-stream -----------------------------------------------------------------
rm -f "$DIR"/events.jsonl*
( for b in $(seq 0 199); do
      if [ "$b" = 100 ]; then
          echo "INSERT INTO t SELECT g, 'big-' || g FROM generate_series(100000, 104999) g;"
      else
          echo "INSERT INTO t SELECT g, 'r' FROM generate_series(1000 + $b * 100, 1099 + $b * 100) g;"
      fi
      echo "SELECT pg_sleep(0.02);"
  done | "${PSQL[@]}" -d "$TEST_DB" >/dev/null ) &
writer=$!
wait_until 30 '[ "$(nall)" -ge 3000 ]'
kill9_relay r2
before=$(nall)
diag "relay killed after $before events"
wait $writer
TOTAL=$((199 * 100 + 5000))
wait_until 10 '[ -z "$(sql "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '"'$SLOT'"'")" ]'
start_relay r3
wait_until 60 '[ "$(all | jq -r .dedup_key | sort -u | wc -l)" -ge '$TOTAL' ]'
is "$(all | jq -r .dedup_key | sort -u | wc -l | tr -d ' ')" "$TOTAL" "every one of the $TOTAL events is present after the restart"
is "$(all | jq -r .payload.id | sort -n -u | wc -l | tr -d ' ')" "$TOTAL" "no row lost"
is "$(all | sort -u | wc -l | tr -d ' ')" "$TOTAL" "re-delivered events are byte-identical (same dedup key, same content)"
dups=$(( $(nall) - TOTAL ))
diag "duplicates after the crash: $dups"
# At most: the batch in flight (<= batch_size 5000) plus the already written
# part of the transaction it ends in (<= the 5 000-row transaction).
ok "$([ "$dups" -le 10000 ] && echo 0 || echo 1)" "duplicates are bounded by the unconfirmed transaction and batch in flight"
stop_relay r3
is "$?" 0 "SIGTERM exits 0"
final=$(slot_lsn $SLOT)
is "$(sql "SELECT '$final'::pg_lsn > max(l::pg_lsn) FROM unnest(string_to_array('$(all | jq -r .source.commit_lsn | sort -u | tr '\n' ' ' | sed 's/ $//')', ' ')) l")" t \
   "after a clean stop the slot is past every relayed commit"
done_testing
