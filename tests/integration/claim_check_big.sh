#!/usr/bin/env bash
# A claim-check outbox row with 1 000 000 delta rows, relayed to a file in
# bounded memory: the relay's peak RSS grows by less than 64 MiB (measured
# from /proc), every row arrives, and the delta rows are consumed after.
. "$(dirname "$0")/lib.sh"
setup_db
OUT=$TEST_TMP/events.jsonl
N=${CLAIM_CHECK_ROWS:-1000000}
sql "SELECT pgtrickle.enable_outbox('big')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_big (id, inserted_count, is_claim_check, payload)
     VALUES (1, $N, true, '{\"v\":1,\"claim_check\":true,\"inserted_count\":$N,\"deleted_count\":0}');
     INSERT INTO pgtrickle.outbox_delta_rows_big (outbox_id, row_op, row_data, row_num)
     SELECT 1, 'INSERT', jsonb_build_object('n', g, 'pad', 'row-' || g), g FROM generate_series(1, $N) g;
     SELECT setval('pgtrickle.outbox_big_id_seq', 1)" >/dev/null
sql "SELECT pgtrickle.outbox_write('big', '[{\"after\":true}]')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('big-file', 'big', NULL, '{\"type\":\"file\",\"output\":\"$OUT\",\"fsync\":false,\"rotate_bytes\":0}')" >/dev/null
sql "UPDATE pgtrickle.relay_outbox_config SET config = jsonb_set(config, '{source,batch_size}', '5000') WHERE name = 'big-file'" >/dev/null
DISCOVERY=30s start_relay r1
pid=$(relay_pid r1)
base_kb=$(awk '/^VmRSS:/ { print $2 }' /proc/$pid/status)
wait_until 240 '[ "$(lines "$OUT")" -ge $((N + 1)) ]'
peak_kb=$(awk '/^VmHWM:/ { print $2 }' /proc/$pid/status)
growth_mib=$(( (peak_kb - base_kb) / 1024 ))
diag "relay RSS at start ${base_kb} KiB, peak ${peak_kb} KiB: growth ${growth_mib} MiB for $N claim-check rows"
is "$(lines "$OUT")" $((N + 1)) "all $N claim-check rows and the row after them were relayed"
if grep -q __asan_init "$RELAY_BIN" 2>/dev/null; then
    ok 0 "peak RSS growth under 64 MiB # SKIP AddressSanitizer's quarantine keeps freed memory (${growth_mib} MiB)"
else
    ok "$([ "$growth_mib" -lt 64 ] && echo 0 || echo 1)" "peak RSS growth under 64 MiB (${growth_mib} MiB)"
fi
is "$(jq -c 'select(.outbox_id == 1) | .dedup_key' "$OUT" | sort -u | wc -l | tr -d ' ')" "$N" "every claim-check row has its own dedup key"
is "$(tail -1 "$OUT" | jq -r .outbox_id)" 2 "the next outbox row follows the claim-check row"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.outbox_delta_rows_big")" = 0 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.outbox_delta_rows_big")" 0 "delta rows consumed (outbox_rows_consumed)"
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets")" 2 "offset at 2"
stop_relay r1
done_testing
