#!/usr/bin/env bash
# stdin -> inbox: 10 000 JSONL lines piped twice give 10 000 rows and
# 10 000 dedup skips on the second pass; lines without dedup_key land; a
# non-JSON line lands as a JSON string; event_type from the payload field,
# else the fallback; column mapping; a missing inbox table is a clear error
# and nothing is acknowledged.
. "$(dirname "$0")/lib.sh"
setup_db
IN=$TEST_TMP/in.jsonl
seq 1 10000 | awk '{ printf "{\"dedup_key\":\"evt-%d\",\"event_type\":\"order.created\",\"n\":%d,\"customer\":\"c%d\",\"trace\":\"t%d\"}\n", $1, $1, $1 % 7, $1 }' > "$IN"
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('stdin-in', 'orders_inbox', '{\"type\":\"stdin\"}')" >/dev/null
sql "UPDATE pgtrickle.relay_inbox_config SET config = jsonb_set(config, '{sink,column_map}', '{\"aggregate_id\":\"customer\",\"trace_id\":\"trace\"}') WHERE name = 'stdin-in'" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox"; }
skipped() { metric "$1" 'pgtrickle_relay_dedup_skipped_total{pipeline="stdin-in"}'; }

RELAY_STDIN=$IN start_relay r1
wait_until 60 '[ "$(rows)" -ge 10000 ]'
is "$(rows)" 10000 "first pass: 10 000 inbox rows"
is "$(skipped r1)" 0 "first pass: no dedup skips"
is "$(sql "SELECT event_id || '|' || event_type || '|' || source || '|' || aggregate_id || '|' || trace_id || '|' || (payload->>'n') FROM pgtrickle.orders_inbox WHERE event_id = 'evt-42'")" \
   "evt-42|order.created|stdin|c0|t42|42" "event_id from dedup_key, event_type from the payload, mapped columns"
stop_relay r1

RELAY_STDIN=$IN start_relay r2
wait_until 60 '[ "$(skipped r2)" = 10000 ]'
is "$(skipped r2)" 10000 "second pass: dedup_skipped_total = 10 000"
is "$(rows)" 10000 "second pass: still 10 000 rows"
stop_relay r2

# Lines without dedup_key, a non-JSON line, a JSON array, blank lines.
printf '{"n":1}\n\nnot json at all\n[1,2]\n{"event_type":"x.y","n":2}\n' > "$TEST_TMP/mixed.jsonl"
RELAY_STDIN=$TEST_TMP/mixed.jsonl start_relay r3
wait_until 20 '[ "$(rows)" -ge 10004 ]'
is "$(rows)" 10004 "four more rows: blank lines are skipped, nothing else is"
is "$(sql "SELECT payload::text FROM pgtrickle.orders_inbox WHERE jsonb_typeof(payload) = 'string'")" '"not json at all"' "a non-JSON line is stored as a JSON string"
is "$(sql "SELECT count(*) FROM pgtrickle.orders_inbox WHERE event_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\$'")" 4 "lines without dedup_key get UUIDs"
is "$(sql "SELECT event_type FROM pgtrickle.orders_inbox WHERE payload->>'n' = '1' AND event_id NOT LIKE 'evt-%'")" "stdin" "no event_type field: the fallback"
is "$(sql "SELECT event_type FROM pgtrickle.orders_inbox WHERE payload->>'n' = '2' AND event_id NOT LIKE 'evt-%'")" "x.y" "event_type field used"
stop_relay r3

# A missing inbox table: clear error, degraded, nothing acknowledged; the
# lines land once the table exists.
sql "SELECT pgtrickle.set_relay_inbox('stdin-in', 'no_such_inbox', '{\"type\":\"stdin\"}')" >/dev/null
printf '{"dedup_key":"late-1"}\n{"dedup_key":"late-2"}\n' > "$TEST_TMP/late.jsonl"
RELAY_STDIN=$TEST_TMP/late.jsonl start_relay r4
wait_until 10 '[ "$(http_code r4 /health)" = 503 ]'
is "$(http_code r4 /health)" 503 "a missing inbox table makes the pipeline degraded"
like "$(relay_log r4)" 'relation "pgtrickle.no_such_inbox" does not exist' "the log names the missing table"
is "$(metric r4 'pgtrickle_relay_batches_total{pipeline="stdin-in"}')" 0 "nothing acknowledged"
sql "SELECT pgtrickle.create_inbox('no_such_inbox')" >/dev/null
wait_until 40 '[ "$(sql "SELECT count(*) FROM pgtrickle.no_such_inbox")" = 2 ]'
is "$(sql "SELECT string_agg(event_id, ',' ORDER BY event_id) FROM pgtrickle.no_such_inbox")" "late-1,late-2" "once the table exists, the held lines land"
stop_relay r4
done_testing
