#!/usr/bin/env bash
# Outbox consumer-group mode: poll_outbox/commit_offset with a stable
# consumer id per pipeline, group created when missing (or already there),
# restart resumes from the committed offset; also against pg_trickle's own
# semantics (commit_offset that can move backwards, UPDATE-only).
. "$(dirname "$0")/lib.sh"
setup_db
OUT=$TEST_TMP/events.jsonl
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-grp', 'orders', 'shipping', '$(file_sink "$OUT")')" >/dev/null
write_rows orders 1 300
start_relay r1
wait_until 20 '[ "$(lines "$OUT")" -ge 300 ]'
is "$(lines "$OUT")" 300 "group mode relays every row"
is "$(sql "SELECT group_name || ':' || outbox_name FROM pgtrickle.pgt_consumer_groups")" "shipping:outbox_orders" "the group was created for the outbox table"
is "$(sql "SELECT consumer_id || ':' || committed_offset FROM pgtrickle.pgt_consumer_offsets")" "orders-grp:300" \
   "offset committed for the pipeline's consumer id"
is "$(metric r1 'pgtrickle_relay_batches_total{pipeline="orders-grp"}' | awk '$1 > 0 { print "yes" }')" "yes" "batches acknowledged"
stop_relay r1

write_rows orders 301 400
start_relay r2
wait_until 20 '[ "$(lines "$OUT")" -ge 400 ]'
sleep 0.5
is "$(lines "$OUT")" 400 "restart resumes from the committed offset: 100 new rows, no repeats"
is "$(jq -r .payload.n "$OUT" | tail -100 | head -1)" 301 "the first row after the restart is 301"
is "$(sql "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'orders-grp'")" 400 "offset 400"
stop_relay r2

# Another consumer of the same group keeps its own offset (pg_trickle semantics).
sql "SELECT count(*) FROM pgtrickle.poll_outbox('shipping', 'someone-else', 10, 30)" >/dev/null
is "$(sql "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'someone-else'")" 0 \
   "a second consumer starts at its own offset (earliest)"

# pg_trickle's real commit_offset: no monotonicity, UPDATE only.
sql "CREATE OR REPLACE FUNCTION pgtrickle.commit_offset(p_group text, p_consumer text, p_last_offset bigint)
     RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pgtrickle AS \$\$
     BEGIN
       UPDATE pgtrickle.pgt_consumer_offsets SET committed_offset = p_last_offset, last_committed_at = now()
        WHERE group_name = p_group AND consumer_id = p_consumer;
       DELETE FROM pgtrickle.pgt_consumer_leases WHERE group_name = p_group AND consumer_id = p_consumer;
     END \$\$" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-grp2', 'orders', 'billing', '$(file_sink "$TEST_TMP/b.jsonl")')" >/dev/null
sql "SELECT pgtrickle.create_consumer_group('billing', 'outbox_orders', 'earliest')" >/dev/null
start_relay r3
wait_until 20 '[ "$(lines "$TEST_TMP/b.jsonl")" -ge 400 ]'
write_rows orders 401 450
wait_until 20 '[ "$(lines "$TEST_TMP/b.jsonl")" -ge 450 ]'
sleep 0.5
is "$(lines "$TEST_TMP/b.jsonl")" 450 "with pg_trickle's commit_offset and a pre-existing group: all 450 rows once"
is "$(sql "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE group_name = 'billing'")" 450 "billing offset 450"
is "$(lines "$OUT")" 450 "each group reads every row on its own (pg_trickle semantics): shipping got rows 401-450 too"
stop_relay r3
done_testing
