#!/usr/bin/env bash
# Debezium deletes and their tombstones when the cluster misbehaves (issue
# 20), on a private mock cluster of this test: with the brokers down nothing
# is acknowledged (the slot does not advance); with Produce requests failing
# (a record-level error) the failed records are republished; in the end
# every delete is on the topic followed by its tombstone, none lost.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
trap '_kafka_cleanup 2>/dev/null; _cdc_cleanup' EXIT
cdc_setup_db
T=$KTAG
start_kmock k
KB=$(kmock_brokers k)
sql "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL);
     INSERT INTO acct SELECT g, 0 FROM generate_series(1, 40) g;
     CREATE PUBLICATION kff_pub FOR TABLE acct;" >/dev/null
cdc_pipeline kff '{"publication":"kff_pub","slot":"kafka_formats_faults"}' \
    "{\"type\":\"kafka\",\"brokers\":\"$KB\",\"topic_template\":\"$T.acct\",\"format\":\"debezium\"}"
start_relay r1 --shutdown-timeout 3s
wait_until 20 'slot_exists kafka_formats_faults' || bail "slot not created: $(relay_log r1 | tail -5)"
pub() { metric r1 'pgtrickle_relay_messages_published_total{pipeline="kff",sink="kafka"}'; }

kmock_cmd k down
before=$(slot_lsn kafka_formats_faults)
sql "DELETE FROM acct WHERE id <= 20" >/dev/null
wait_until 20 '[ "$(health_status r1)" = degraded ]'
is "$(health_status r1)" degraded "brokers down: /health is degraded"
sleep 2
is "$(slot_lsn kafka_formats_faults)" "$before" "nothing acknowledged while the brokers are down (the slot stays)"
kmock_cmd k up
wait_until 40 '[ "$(pub)" = 20 ]'
is "$(pub)" 20 "brokers up: the 20 deletes are confirmed"

# Produce requests fail (INVALID_PRODUCER_EPOCH: the records fail, the
# worker republishes them): deletes and tombstones are sent again.
e1=$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="kff",kind="sink"}')
kmock_cmd k "error 0 47 3"
sql "DELETE FROM acct WHERE id > 20" >/dev/null
wait_until 40 '[ "$(pub)" = 40 ]'
is "$(pub)" 40 "after Produce errors the other 20 deletes are confirmed too"
ok "$([ "$(metric r1 'pgtrickle_relay_publish_errors_total{pipeline="kff",kind="sink"}')" -gt "${e1:-0}" ] && echo 0 || echo 1)" \
   "the failed deliveries were counted (the records were republished)"

kafka_consume "$KB" "$T.acct" 1000000 --timeout 3 >"$TEST_TMP/all.jsonl"
# Per key, in offset order: the delete, then its tombstone last.
check_pairs=$(jq -sr 'group_by(.key) | map(sort_by(.offset) | map(if .value == null then "T" else "D" end) | join(""))
                      | map(select(test("^[DT]*DT$") | not)) | length' "$TEST_TMP/all.jsonl")
is "$check_pairs" 0 "every key's last records are its delete, then its tombstone (a retry may repeat them)"
is "$(jq -r .key "$TEST_TMP/all.jsonl" | sort -u | wc -l | tr -d ' ')" 40 "all 40 deleted rows are on the topic"
is "$(jq -r 'select(.value == null) | .key' "$TEST_TMP/all.jsonl" | sort -u | wc -l | tr -d ' ')" 40 \
   "each of them has its tombstone"
stop_relay r1 >/dev/null
done_testing
