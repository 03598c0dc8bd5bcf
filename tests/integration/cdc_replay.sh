#!/usr/bin/env bash
# CDC against ground truth (issue 12): a seeded random workload (every common
# type, REPLICA IDENTITY DEFAULT and FULL with and without a key, key changes,
# COPY, TRUNCATE, a partitioned table written via its root and its leaves,
# rolled-back savepoints and transactions, transactions bigger than a batch,
# ADD COLUMN midway, logical messages, an initial snapshot) runs while the relay is killed with SIGKILL
# between and during its chunks. Two pipelines stream it to files, one in the
# native JSON format (the partitioned table published via its root) and one
# in MessagePack (via its partitions; length-prefixed records, decoded by
# Debian's python3-msgpack); cdc_replay.py applies each file's events once
# per dedup key to a replica schema and compares every table with the source,
# row by row. A failure prints the first differing row and the events that
# touched it.
#
#   CDC_REPLAY_SEED   workload seed (default 12; the test prints it)
#   CDC_REPLAY_TXNS   transactions (default 2000: about 25 s here, well under 90 s)
#   CDC_REPLAY_KILLS  SIGKILLs of the relay (default 6)
# Soak: CDC_REPLAY_TXNS=5000 CDC_REPLAY_KILLS=15 CDC_REPLAY_SEED=$RANDOM.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
PY=/usr/bin/python3
REPLAY="$(dirname "$0")/cdc_replay.py"
SEED=${CDC_REPLAY_SEED:-12}
TXNS=${CDC_REPLAY_TXNS:-2000}
KILLS=${CDC_REPLAY_KILLS:-6}
"$PY" -c 'import msgpack' 2>/dev/null || bail "Debian's python3-msgpack is missing (scripts/install-deps.sh)"
cdc_setup_db
diag "seed $SEED, $TXNS transactions, $KILLS kills (CDC_REPLAY_SEED / CDC_REPLAY_TXNS / CDC_REPLAY_KILLS)"

"$PY" "$REPLAY" generate "$SEED" "$TXNS" "$((KILLS + 1))" "$TEST_TMP" || bail "generator failed"
"${PSQL[@]}" -d "$TEST_DB" -f "$TEST_TMP/schema.sql" >/dev/null || bail "schema"
"${PSQL[@]}" -d "$TEST_DB" -f "$TEST_TMP/initial.sql" >/dev/null || bail "initial rows"

NATIVE=$TEST_TMP/native.jsonl
MSGPACK=$TEST_TMP/msgpack.bin
cdc_pipeline replay-native '{"publication":"cdc_replay_pub","slot":"cdc_replay_native","snapshot":"initial","heartbeat_interval":"1s","batch_size":200}' \
    "{\"type\":\"file\",\"output\":\"$NATIVE\"}"
cdc_pipeline replay-msgpack '{"publication":"cdc_replay_leaves_pub","slot":"cdc_replay_msgpack","snapshot":"initial","heartbeat_interval":"1s","batch_size":200}' \
    "{\"type\":\"file\",\"output\":\"$MSGPACK\",\"format\":\"msgpack\"}"
start_relay r1
wait_until 30 'slot_exists cdc_replay_native && slot_exists cdc_replay_msgpack'
ok "$(slot_exists cdc_replay_native && slot_exists cdc_replay_msgpack && echo 0 || echo 1)" \
   "both pipelines finished their initial snapshot (their slots exist)"

# The workload, chunk by chunk; the relay is killed in the middle of each
# chunk but the last and started again at once.
chunks_ok=0
t0=$(date +%s)
for c in $(seq 0 "$KILLS"); do
    "${PSQL[@]}" -d "$TEST_DB" -f "$TEST_TMP/chunk-$c.sql" >"$TEST_TMP/chunk-$c.log" 2>&1 & wl=$!
    if [ "$c" -lt "$KILLS" ]; then
        sleep "0.$(( (SEED + c * 37) % 9 + 1 ))"
        kill9_relay r1
        start_relay r1
    fi
    if wait "$wl"; then chunks_ok=$((chunks_ok + 1)); else diag "chunk $c: $(tail -3 "$TEST_TMP/chunk-$c.log")"; fi
done
diag "workload: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
is "$chunks_ok" "$((KILLS + 1))" "the workload ran ($TXNS transactions in $((KILLS + 1)) chunks, $KILLS relay kills)"

# Everything committed so far is relayed once both slots confirm past it
# (the 1 s heartbeat commits after it).
wal_end=$(sql "SELECT pg_current_wal_lsn()")
wait_until 90 'lsn_ge "$(slot_lsn cdc_replay_native)" "$wal_end" && lsn_ge "$(slot_lsn cdc_replay_msgpack)" "$wal_end"'
ok "$(lsn_ge "$(slot_lsn cdc_replay_native)" "$wal_end" && lsn_ge "$(slot_lsn cdc_replay_msgpack)" "$wal_end" && echo 0 || echo 1)" \
   "both slots confirmed the whole workload (WAL end $wal_end; slots $(slot_lsn cdc_replay_native), $(slot_lsn cdc_replay_msgpack))"
diag "catching up: $(( $(date +%s) - t0 )) s"; t0=$(date +%s)
stop_relay r1
is "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq")" 0 "no event was dead-lettered"

for fmt in native msgpack; do
    file=$NATIVE; [ "$fmt" = msgpack ] && file=$MSGPACK
    out=$("$PY" "$REPLAY" replay "$fmt" "$file" "replica_$fmt" "${PSQL[@]}" -d "$TEST_DB" 2>&1)
    grep -v '^RESULT' <<<"$out" | sed 's/^\([^#]\)/# \1/'
    is "$(grep '^RESULT' <<<"$out")" "RESULT ok" "$fmt events replayed onto a replica rebuild every source table exactly (seed $SEED)"
done
diag "replay: $(( $(date +%s) - t0 )) s"
done_testing
