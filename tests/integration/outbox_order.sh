#!/usr/bin/env bash
# Out-of-order commits: outbox id N+1 committed before id N is still
# delivered, N included, and in id order; a rolled-back id does not stall
# the pipeline.
. "$(dirname "$0")/lib.sh"
setup_db
OUT=$TEST_TMP/events.jsonl
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL, '$(file_sink "$OUT")')" >/dev/null
start_relay r1
write_rows orders 1 3
wait_until 10 '[ "$(lines "$OUT")" -ge 3 ]'
is "$(lines "$OUT")" 3 "warm-up rows delivered"

# Transaction A takes id 4 and stays open; B takes id 5 and commits first.
"${PSQL[@]}" -d "$TEST_DB" -c "BEGIN; SELECT pgtrickle.outbox_write('orders', '[{\"n\":4,\"tx\":\"A\"}]'); SELECT pg_sleep(3); COMMIT;" >/dev/null &
a=$!
seq_last() { sql "SELECT last_value FROM pgtrickle.outbox_orders_id_seq"; }
wait_until 5 '[ "$(seq_last)" -ge 4 ]'   # A has taken its id
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":5,\"tx\":\"B\"}]')" >/dev/null
is "$(sql "SELECT max(id) FROM pgtrickle.outbox_orders")" 5 "id 5 is committed while id 4 is still open"
sleep 1
is "$(lines "$OUT")" 3 "the relay does not move past the open id 4"
wait $a
wait_until 10 '[ "$(lines "$OUT")" -ge 5 ]'
is "$(jq -r .outbox_id "$OUT" | tr '\n' ' ')" "1 2 3 4 5 " "id 4 (committed last) is delivered, before id 5"
is "$(jq -r 'select(.outbox_id == 4) | .payload.tx' "$OUT")" "A" "id 4 carries transaction A's row"

# A rolled-back id leaves a permanent gap: the pipeline must not stall on it.
sql "BEGIN; SELECT pgtrickle.outbox_write('orders', '[{\"n\":6}]'); ROLLBACK;" >/dev/null
t0=$(now_ms)
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":7}]')" >/dev/null
wait_until 10 '[ "$(lines "$OUT")" -ge 6 ]'
elapsed=$(( $(now_ms) - t0 ))
diag "gap of rolled-back id 6 crossed in ${elapsed} ms"
is "$(jq -r .outbox_id "$OUT" | tail -1)" 7 "id 7 delivered after the rolled-back id 6"
ok "$([ "$elapsed" -lt 3000 ] && echo 0 || echo 1)" "a rolled-back id does not hold the pipeline up"
is "$(sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets")" 7 "offset moved to 7"

# Many concurrent writers: every row arrives exactly once.
writers=()
for w in 1 2 3 4; do write_rows orders $((w * 1000)) $((w * 1000 + 499)) & writers+=($!); done
wait "${writers[@]}"
wait_until 30 '[ "$(distinct_keys "$OUT")" -ge 2006 ]'
is "$(distinct_keys "$OUT")" 2006 "2 000 rows from 4 concurrent writers all delivered"
is "$(lines "$OUT")" 2006 "and none twice"
stop_relay r1
done_testing
