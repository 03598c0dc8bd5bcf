#!/usr/bin/env bash
# Dead letters: a message the sink rejects permanently (an inbox CHECK
# constraint) lands in relay_dlq, the pipeline continues; after the cause is
# fixed, relay_dlq_replay() from SQL re-delivers it.
. "$(dirname "$0")/lib.sh"
setup_db
sql "SELECT pgtrickle.create_inbox('payments')" >/dev/null
sql "ALTER TABLE pgtrickle.payments ADD CONSTRAINT amount_positive CHECK ((payload->>'amount')::numeric > 0)" >/dev/null
printf '%s\n' '{"dedup_key":"p1","amount":10}' '{"dedup_key":"p2","amount":-5}' '{"dedup_key":"p3","amount":7}' > "$TEST_TMP/in.jsonl"
sql "SELECT pgtrickle.set_relay_inbox('pay-in', 'payments', '{\"type\":\"file\",\"input\":\"$TEST_TMP/in.jsonl\",\"follow\":true}')" >/dev/null
start_relay r1
wait_until 15 '[ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq")" = 1 ]'
is "$(sql "SELECT string_agg(event_id, ',' ORDER BY event_id) FROM pgtrickle.payments")" "p1,p3" "the good messages land"
is "$(sql "SELECT pipeline || '|' || dedup_key || '|' || op FROM pgtrickle.relay_dlq")" "pay-in|p2|event" "the rejected one is in relay_dlq"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq")" "amount_positive" "with the reason"
is "$(sql "SELECT payload->>'amount' FROM pgtrickle.relay_dlq_list('pay-in')")" "-5" "relay_dlq_list shows it with its payload"
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="pay-in"}')" 1 "dead_lettered metric"
echo '{"dedup_key":"p4","amount":1}' >> "$TEST_TMP/in.jsonl"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.payments")" = 3 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.payments")" 3 "the pipeline continues after the dead letter"

sql "ALTER TABLE pgtrickle.payments DROP CONSTRAINT amount_positive" >/dev/null
is "$(sql "SELECT pgtrickle.relay_dlq_replay('pay-in')")" 1 "relay_dlq_replay requests one replay"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.payments WHERE event_id = '"'p2'"'")" = 1 ]'
is "$(sql "SELECT payload->>'amount' FROM pgtrickle.payments WHERE event_id = 'p2'")" "-5" "the replayed message is delivered"
wait_until 5 '[ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE replay_requested_at IS NULL")" = 1 ]'
is "$(sql "SELECT (replayed_at IS NOT NULL)::text || ',' || replay_count || ',' || (replay_requested_at IS NULL)::text FROM pgtrickle.relay_dlq")" "true,1,true" \
   "the dead letter is marked replayed and no longer requested"
like "$(relay_log r1)" "1 dead letters replayed" "the log reports the replay"

# A replay the inbox refuses again (the cause is back) must not wedge the
# pipeline: the replay runs in a transaction, and the failed INSERT used to
# abort it, so every later statement failed and the replay was retried
# forever. Now the message is dead-lettered again, the replay completes and
# the pipeline goes on.
sql "ALTER TABLE pgtrickle.payments ADD CONSTRAINT amount_positive CHECK ((payload->>'amount')::numeric > 0) NOT VALID" >/dev/null
echo '{"dedup_key":"p5","amount":-1}' >> "$TEST_TMP/in.jsonl"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE dedup_key = '"'p5'"'")" = 1 ]'
is "$(sql "SELECT pgtrickle.relay_dlq_replay('pay-in', ARRAY(SELECT id FROM pgtrickle.relay_dlq WHERE dedup_key = 'p5'))")" 1 \
   "a replay of a message the inbox still refuses is requested"
wait_until 15 '[ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE dedup_key = '"'p5'"' AND replay_requested_at IS NULL")" = 2 ]'
is "$(sql "SELECT string_agg((replayed_at IS NOT NULL)::text || ',' || replay_count || ',' || (replay_requested_at IS NULL)::text, ' ' ORDER BY id)
            FROM pgtrickle.relay_dlq WHERE dedup_key = 'p5'")" "true,1,true false,0,true" \
   "the replay completes: the replayed row is done, the refused message is an open dead letter again"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE dedup_key = 'p5' AND replayed_at IS NULL")" "amount_positive" "with the reason"
echo '{"dedup_key":"p6","amount":2}' >> "$TEST_TMP/in.jsonl"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.payments WHERE event_id = '"'p6'"'")" = 1 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.payments WHERE event_id = 'p6'")" 1 "and the pipeline goes on"
unlike_log=$(relay_log r1 | grep -c "current transaction is aborted")
is "$unlike_log" 0 "no statement ran in an aborted transaction"
stop_relay r1
done_testing
