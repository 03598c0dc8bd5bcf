#!/usr/bin/env bash
# CDC -> Kafka keyed by row (issue 20), against the shared mock cluster (4
# partitions a topic): 1 000 updates of 10 rows land with each row's changes
# on one partition in commit order (read back with a consumer); the record
# key is the row's replica-identity columns as JSON (Debezium's key); a
# delete is followed by its tombstone (same key, null value); tombstones
# false leaves it out; a native-format pipeline is keyed by row too.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
trap '_kafka_cleanup 2>/dev/null; _cdc_cleanup' EXIT
cdc_setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG

sql "CREATE TABLE acct (id int PRIMARY KEY, n int NOT NULL);
     CREATE PUBLICATION kf_pub FOR TABLE acct;" >/dev/null
cdc_pipeline kf-dbz '{"publication":"kf_pub","slot":"kafka_formats_d"}' \
    "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.dbz.{table}\",\"format\":\"debezium\"}"
cdc_pipeline kf-native '{"publication":"kf_pub","slot":"kafka_formats_n"}' \
    "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.native.{table}\"}"
cdc_pipeline kf-notomb '{"publication":"kf_pub","slot":"kafka_formats_t"}' \
    "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.notomb.{table}\",\"format\":\"debezium\",\"tombstones\":false}"
start_relay r1
wait_until 20 'slot_exists kafka_formats_d && slot_exists kafka_formats_n && slot_exists kafka_formats_t' ||
    bail "slots not created: $(relay_log r1 | tail -5)"

sql "INSERT INTO acct SELECT g, 0 FROM generate_series(1, 10) g" >/dev/null
# 1 000 updates in 20 transactions, rows interleaved: n counts each row's updates.
for t in $(seq 1 20); do
    sql "DO \$\$ BEGIN FOR i IN 1..50 LOOP
           UPDATE acct SET n = n + 1 WHERE id = (i % 10) + 1; END LOOP; END \$\$" >/dev/null
done
sql "DELETE FROM acct WHERE id = 3" >/dev/null
N=$((10 + 1000 + 1))
pub() { metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"$1\",sink=\"kafka\"}"; }
wait_until 60 "[ \"\$(pub kf-dbz)\" = $N ] && [ \"\$(pub kf-native)\" = $N ] && [ \"\$(pub kf-notomb)\" = $N ]" ||
    diag "published: $(pub kf-dbz) $(pub kf-native) $(pub kf-notomb)"

kafka_consume "$B" "$T.dbz.acct" $((N + 1)) --timeout 5 >"$TEST_TMP/dbz.jsonl"
is "$(lines "$TEST_TMP/dbz.jsonl")" $((N + 1)) "debezium: $N change records and one tombstone"
is "$(jq -r .key "$TEST_TMP/dbz.jsonl" | sort -u | tr '\n' ' ')" \
   '{"id":10} {"id":1} {"id":2} {"id":3} {"id":4} {"id":5} {"id":6} {"id":7} {"id":8} {"id":9} ' \
   "the record key is the row's primary key as a JSON object (Debezium's key)"
is "$(jq -r '[.key, .partition] | @tsv' "$TEST_TMP/dbz.jsonl" | sort -u | cut -f1 | uniq -d | wc -l)" 0 \
   "every row's records are on one partition"
is "$(jq -r .partition "$TEST_TMP/dbz.jsonl" | sort -u | wc -l | tr -d ' ')" 4 \
   "the 10 rows spread over the topic's 4 partitions"
# In offset order per partition, each row's n counts 0, 1, ..., 100.
order=$(jq -sr 'map(select(.value != null) | {k: .key, p: .partition, o: .offset, n: (.value | fromjson | .after.n // -1)})
                | group_by(.k) | map(sort_by(.o) | map(.n)) | map(. == ([range(0; 101)] + (if length > 101 then [-1] else [] end)))
                | all' "$TEST_TMP/dbz.jsonl")
is "$order" true "each row's changes are in commit order: n = 0, 1, ..., 100 (then the delete)"
last=$(jq -sc 'map(select(.key == "{\"id\":3}")) | sort_by(.offset) | .[-2:] | map([(.value | if . == null then null else fromjson | .op end), .partition])' "$TEST_TMP/dbz.jsonl")
first_p=$(jq -sr 'map(select(.key == "{\"id\":3}")) | .[0].partition' "$TEST_TMP/dbz.jsonl")
is "$last" "[[\"d\",$first_p],[null,$first_p]]" "the delete is followed by its tombstone (same key and partition, null value)"
is "$(jq -sr '(map(select(.value == null)) | .[0].headers["pgtrickle-dedup-key"]) as $k
              | map(select(.headers["pgtrickle-dedup-key"] == $k)) | length' "$TEST_TMP/dbz.jsonl")" 2 \
   "the tombstone carries the delete's dedup key"

kafka_consume "$B" "$T.notomb.acct" $((N + 1)) --timeout 5 >"$TEST_TMP/notomb.jsonl"
is "$(jq -r 'select(.value == null) | .offset' "$TEST_TMP/notomb.jsonl" | wc -l | tr -d ' ')" 0 \
   "tombstones false: no tombstone"
is "$(lines "$TEST_TMP/notomb.jsonl")" $N "tombstones false: the $N change records"

kafka_consume "$B" "$T.native.acct" $((N + 1)) --timeout 5 >"$TEST_TMP/native.jsonl"
is "$(lines "$TEST_TMP/native.jsonl")" $N "native: $N records (no tombstones outside the debezium format)"
is "$(jq -r 'select(.value | fromjson | .op == "delete") | .key' "$TEST_TMP/native.jsonl")" '{"id":3}' \
   "native: CDC records are keyed by row too (the delete by its old key)"
is "$(jq -r '[.key, .partition] | @tsv' "$TEST_TMP/native.jsonl" | sort -u | cut -f1 | uniq -d | wc -l)" 0 \
   "native: every row's records are on one partition"

stop_relay r1 >/dev/null
done_testing
