#!/usr/bin/env bash
# Two relay processes (in different relay groups, so both run the inbox
# pipeline) share one Kafka consumer group: the partitions are split between
# them, and although the 10 000 records are produced while the second relay
# joins and the group rebalances, together they write each record exactly
# once: the inbox holds every record once, and the only records consumed
# twice are those whose offset commit the group refused during the
# rebalance (REBALANCE_IN_PROGRESS) - every one of them is skipped by the
# inbox (consumed - dedup_skipped = records). When one relay stops, the
# other takes its partitions over from the committed offsets with no
# redelivery at all.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG.orders
G=$KTAG-group
is "$(kcli create "$B" "$T")" 4 "topic with 4 partitions"
rows() { sql "SELECT count(*) FROM pgtrickle.orders_inbox"; }
committed() { kcli committed "$B" "$G" "$T" | awk '$2 > 0 { s += $2 } END { print s + 0 }'; }
parts() { pipeline_status "$1" orders-in | jq -r '[.source.position.partitions[].partition] | sort | join(" ")'; }
consumed() { metric "$1" 'pgtrickle_relay_messages_consumed_total{pipeline="orders-in",source="kafka"}'; }
skipped() { metric "$1" 'pgtrickle_relay_dedup_skipped_total{pipeline="orders-in"}'; }
sql "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
# session.timeout.ms 6000: see kafka_inbox.sh (the mock completes a rebalance
# only when departed members' sessions expired).
sql "SELECT pgtrickle.set_relay_inbox('orders-in', 'orders_inbox',
     '{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T\",\"group_id\":\"$G\",\"batch_size\":100,
       \"rdkafka\":{\"session.timeout.ms\":6000,\"heartbeat.interval.ms\":500}}')" >/dev/null

start_relay a --relay-group-id ra
wait_until 20 '[ "$(parts a)" = "0 1 2 3" ]'
is "$(parts a)" "0 1 2 3" "relay a alone owns the 4 partitions"
# Records keep arriving while relay b joins and the group rebalances.
kcli produce "$B" "$T" 10000 --rate 1500 2>>"$TEST_TMP/kcli.log" &
producer=$!
start_relay b --relay-group-id rb
wait_until 30 '[ -n "$(parts b)" ] && [ "$(echo $(parts a) $(parts b) | tr " " "\n" | sort | paste -sd" ")" = "0 1 2 3" ]'
pa=$(parts a); pb=$(parts b)
diag "relay a: partitions $pa; relay b: partitions $pb"
ok "$([ -n "$pa" ] && [ -n "$pb" ] && echo 0 || echo 1)" "after the rebalance both relays own partitions"
is "$(echo $pa $pb | tr ' ' '\n' | sort | paste -sd' ')" "0 1 2 3" "disjoint, and together all 4"

wait $producer
is "$?" 0 "10 000 records produced during the rebalance"
wait_until 40 '[ "$(rows)" = 10000 ] && [ "$(committed)" = 10000 ]'
is "$(rows)" 10000 "10 000 records in the inbox"
is "$(committed)" 10000 "offsets committed to the end of every partition"
ca=$(consumed a); cb=$(consumed b)
diag "relay a wrote $ca records, relay b $cb"
sa=$(skipped a); sb=$(skipped b)
diag "redelivered across the rebalance and skipped by the inbox: $((sa + sb))"
ok "$([ "$ca" -gt 0 ] && [ "$cb" -gt 0 ] && echo 0 || echo 1)" "both relays wrote records"
is "$((ca + cb - sa - sb))" 10000 "together they wrote each record exactly once (consumed - dedup_skipped)"
ok "$([ $((sa + sb)) -le 2000 ] && echo 0 || echo 1)" "redeliveries stay within the records of the rebalance window"
is "$(sql "SELECT count(DISTINCT source) || ' ' || count(DISTINCT payload->>'n') FROM pgtrickle.orders_inbox")" \
   "1 10000" "every record once"

# b leaves: a takes over its partitions from the committed offsets.
stop_relay b
is "$?" 0 "relay b stops cleanly"
wait_until 30 '[ "$(parts a)" = "0 1 2 3" ]'
is "$(parts a)" "0 1 2 3" "relay a owns all partitions again"
kcli produce "$B" "$T" 2000 --from 10001 2>>"$TEST_TMP/kcli.log"
wait_until 30 '[ "$(rows)" = 12000 ] && [ "$(committed)" = 12000 ]'
is "$(rows)" 12000 "the next 2000 records arrive through relay a"
is "$(( $(consumed a) - ca ))" 2000 "relay a consumed exactly those 2000: nothing before the committed offsets re-read"
is "$(skipped a)" "$sa" "no redelivery after the hand-over"
stop_relay a
done_testing
