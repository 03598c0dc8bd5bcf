#!/usr/bin/env bash
# Bad format configs (issue 20): each is refused when the pipeline is loaded,
# with one log line naming the pipeline and the key, while good pipelines run
# next to them. And outbox events in the Debezium and CloudEvents formats:
# they map onto the same envelopes (after = the row, op from the event's op);
# an outbox refresh header without rows, which Debezium has no op for, is
# dead-lettered with the reason and its original event, the pipeline goes on.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
sink() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
F=$TEST_TMP/out
W='"type":"webhook","url":"http://127.0.0.1:9/x"'
N="\"type\":\"nats\",\"url\":\"$NATS_URL\",\"stream\":\"S\""

sink good-dbz "{\"type\":\"file\",\"output\":\"$F.dbz\",\"format\":\"debezium\"}"
sink good-ce "{\"type\":\"file\",\"output\":\"$F.ce\",\"format\":\"cloudevents\",\"cloudevents_type\":\"com.shop.{op}\"}"
sink bad-format "{\"type\":\"file\",\"output\":\"$F.x\",\"format\":\"avro\"}"
sink bad-format-webhook "{$W,\"format\":\"protobuf\"}"
sink bad-mode "{$W,\"format\":\"cloudevents\",\"cloudevents_mode\":\"binary-ish\"}"
sink bad-mode-native "{$W,\"cloudevents_mode\":\"binary\"}"
sink bad-binary-file "{\"type\":\"file\",\"output\":\"$F.y\",\"format\":\"cloudevents\",\"cloudevents_mode\":\"binary\"}"
sink bad-binary-batch "{$W,\"format\":\"cloudevents\",\"cloudevents_mode\":\"binary\",\"batch_mode\":true}"
sink bad-source "{$W,\"format\":\"cloudevents\",\"cloudevents_source\":\"\"}"
sink bad-type "{$W,\"format\":\"cloudevents\",\"cloudevents_type\":\"x.{nope}\"}"
sink bad-tomb "{$W,\"tombstones\":true}"
sink bad-overrides "{$W,\"subject_overrides\":\"delete\"}"
sink bad-override-var "{$W,\"subject_overrides\":{\"delete\":\"d.{nope}\"}}"
sink bad-override-nats "{$N,\"subject_overrides\":{\"delete\":\"a..b\"}}"

start_relay r1
sql "SELECT pgtrickle.outbox_write('orders', '[{\"n\":1,\"event_type\":\"order_placed\"}]', '[{\"n\":2}]')" >/dev/null
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, deleted_count, payload) VALUES (0, 0, NULL)" >/dev/null
wait_until 20 '[ "$(lines "$F.dbz")" -ge 2 ] && [ "$(lines "$F.ce")" -ge 3 ]'
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 2 "only the two good pipelines are started"
log=$(relay_log r1)
nl="pipeline not started:"
like "$log" "\[bad-format\] $nl sink.format: expected one of jsonl, json_pretty, csv, msgpack, debezium, cloudevents" "file: unknown format named"
like "$log" "\[bad-format-webhook\] $nl sink.format: expected \"native\", \"msgpack\", \"debezium\" or \"cloudevents\", got \"protobuf\"" "webhook: unknown format named"
like "$log" "\[bad-mode\] $nl sink.cloudevents_mode: expected \"structured\" or \"binary\", got \"binary-ish\"" "unknown cloudevents_mode"
like "$log" "\[bad-mode-native\] $nl sink.cloudevents_mode: only with \"format\": \"cloudevents\"" "cloudevents_mode without the cloudevents format"
like "$log" "\[bad-binary-file\] $nl sink.cloudevents_mode: \"binary\" needs a protocol binding with headers" "binary mode on the file sink"
like "$log" "\[bad-binary-batch\] $nl sink.batch_mode: CloudEvents binary mode carries one event per request" "binary mode with batch_mode true"
like "$log" "\[bad-source\] $nl sink.cloudevents_source: must not be empty" "empty cloudevents_source"
like "$log" "\[bad-type\] $nl sink.cloudevents_type: unknown variable \{nope\}" "bad cloudevents_type template"
like "$log" "\[bad-tomb\] $nl sink.tombstones: only with \"format\": \"debezium\"" "tombstones without the debezium format"
like "$log" "\[bad-overrides\] $nl sink.subject_overrides: expected an object" "subject_overrides not an object"
like "$log" "\[bad-override-var\] $nl sink.subject_overrides.delete: unknown variable \{nope\}" "bad template in subject_overrides"
like "$log" "\[bad-override-nats\] $nl sink.subject_overrides.delete: \"a..b\" is not a valid NATS subject" "an override that is no NATS subject"

# Outbox events in the formats.
d=$(cat "$F.dbz")
is "$(jq -c '[.op, .before, .after, .source.table, .source.snapshot, .source.lsn]' <<<"$d" | tr -d '\n')" \
   '["c",null,{"n":1,"event_type":"order_placed"},"orders","false",null]["d",{"n":2},null,"orders","false",null]' \
   "debezium: outbox rows map onto the envelope (after = the row; a deleted row is before)"
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = '"'good-dbz'"'")" = 1 ]'
is "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'good-dbz'")" \
   "cannot encode the event as debezium: the Debezium change event has no op for a refresh event" \
   "debezium: a refresh header without rows is dead-lettered with the reason"
is "$(jq -c '[.type, .id, .data]' "$F.ce" | tr -d '\n')" \
   '["com.shop.insert","outbox_orders:1:0",{"n":1,"event_type":"order_placed"}]["com.shop.delete","outbox_orders:1:1",{"n":2}]["com.shop.refresh","outbox_orders:2:0",{"inserted_count":0,"deleted_count":0}]' \
   "cloudevents: outbox events, id = dedup key, type from cloudevents_type; a refresh header's data is its counts"
stop_relay r1 >/dev/null
done_testing
