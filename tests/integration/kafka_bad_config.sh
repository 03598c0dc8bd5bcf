#!/usr/bin/env bash
# Bad Kafka configs, both directions: each is refused when the pipeline is
# loaded, with one log line naming the pipeline and the key, and the
# pipeline is not started (not owned, no worker, no client created), while a
# good Kafka pipeline runs next to them. librdkafka itself checks every
# property (unknown names, bad values, and what only client creation
# detects, like an unreadable CA file).
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG
sink() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
src() { sql "SELECT pgtrickle.set_relay_inbox('$1', 'in_box', '$2')" >/dev/null; }
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_box')" >/dev/null

sink good "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.good\"}"
sink s-unknown-prop "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"no.such.property\":\"1\"}}"
sink s-bad-value "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"socket.timeout.ms\":\"soon\"}}"
sink s-empty-topic "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"\"}"
sink s-bad-template "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"t.{nope}\"}"
sink s-bad-key "{\"type\":\"kafka\",\"brokers\":\"$B\",\"key_template\":\"{payload.id}-{nope}\"}"
sink s-no-brokers "{\"type\":\"kafka\",\"topic_template\":\"$T.x\"}"
sink s-acks "{\"type\":\"kafka\",\"brokers\":\"$B\",\"acks\":\"1\"}"
sink s-compression "{\"type\":\"kafka\",\"brokers\":\"$B\",\"compression\":\"brotli\"}"
sink s-idempotence "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"enable.idempotence\":false}}"
sink s-linger "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"linger.ms\":50}}"
sink s-typo "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.x\"}"
sink s-ca "{\"type\":\"kafka\",\"brokers\":\"$B\",\"security_protocol\":\"ssl\",\"ssl_ca_location\":\"$TEST_TMP/nonexistent/ca.pem\"}"
sink s-secret "{\"type\":\"kafka\",\"brokers\":\"$B\",\"security_protocol\":\"sasl_plaintext\",\"sasl_mechanism\":\"NOPE\",\"sasl_password\":\"hunter2-secret\"}"
src k-empty-topic "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"\"}"
src k-no-topic "{\"type\":\"kafka\",\"brokers\":\"$B\"}"
src k-unknown-prop "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.in\",\"rdkafka\":{\"no.such.property\":1}}"
src k-auto-commit "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.in\",\"rdkafka\":{\"enable.auto.commit\":true}}"
src k-reset "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.in\",\"auto_offset_reset\":\"middle\"}"
src k-group "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.in\",\"group_id\":\"\"}"
src k-topic-list "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":[\"$T.in\", 7]}"
# what would reach the relay's host (issue 11): code, commands, files outside --allow-path
sink s-plugin "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"plugin.library.paths\":\"/tmp/evil.so\"}}"
sink s-kinit "{\"type\":\"kafka\",\"brokers\":\"$B\",\"rdkafka\":{\"sasl.kerberos.kinit.cmd\":\"touch /tmp/pwned\"}}"
sink s-keyfile "{\"type\":\"kafka\",\"brokers\":\"$B\",\"security_protocol\":\"ssl\",\"ssl_key_location\":\"/etc/ssl/private/x.key\"}"
src k-crl "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic\":\"$T.in\",\"rdkafka\":{\"ssl.crl.location\":\"/etc/shadow\"}}"

start_relay r1
write_rows orders 1 20
wait_until 20 '[ "$(metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"good\",sink=\"kafka\"}")" = 20 ]'
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="good",sink="kafka"}')" 20 \
   "the good Kafka pipeline runs next to the bad ones"
is "$(metric r1 pgtrickle_relay_pipelines_owned)" 1 "none of the bad pipelines is started"
log=$(relay_log r1)
nl="pipeline not started:"
like "$log" "\[s-unknown-prop\] $nl sink.rdkafka.no.such.property: No such configuration property" "sink: unknown rdkafka property named"
like "$log" "\[s-bad-value\] $nl sink.rdkafka.socket.timeout.ms: Invalid value" "sink: bad rdkafka value named"
like "$log" "\[s-empty-topic\] $nl sink.topic_template: template is empty" "sink: empty topic_template"
like "$log" "\[s-bad-template\] $nl sink.topic_template: unknown variable \{nope\}" "sink: unknown template variable"
like "$log" "\[s-bad-key\] $nl sink.key_template: unknown variable \{nope\}" "sink: unknown key_template variable"
like "$log" "\[s-no-brokers\] $nl sink.brokers: required" "sink: missing brokers"
like "$log" "\[s-acks\] $nl sink.acks: must be \"all\"" "sink: acks other than all"
like "$log" "\[s-compression\] $nl sink.compression: Invalid value \"brotli\"" "sink: unknown compression"
like "$log" "\[s-idempotence\] $nl sink.rdkafka.enable.idempotence: fixed by the relay" "sink: the idempotent producer cannot be turned off"
like "$log" "\[s-linger\] $nl sink.rdkafka.linger.ms: set it with sink.linger_ms" "sink: a property with its own key"
like "$log" "\[s-typo\] $nl sink.topic: unknown key" "sink: unknown key"
like "$log" "\[s-ca\] $nl sink.ssl_ca_location: invalid Kafka client configuration: ssl.ca.location failed" \
     "sink: unreadable CA file (found by a dry-run client creation)"
like "$log" "\[s-plugin\] $nl sink.rdkafka.plugin.library.paths: not allowed in a pipeline config \(it would load code" \
     "sink: plugin.library.paths is refused"
like "$log" "\[s-kinit\] $nl sink.rdkafka.sasl.kerberos.kinit.cmd: not allowed in a pipeline config" "sink: a kinit command is refused"
like "$log" "\[s-keyfile\] $nl sink.ssl_key_location: /etc/ssl/private/x.key is outside the paths this relay may use" \
     "sink: a key file outside --allow-path is refused"
like "$log" "\[k-crl\] $nl source.rdkafka.ssl.crl.location: /etc/shadow is outside the paths" \
     "source: a *.location property outside --allow-path is refused"
like "$log" "\[s-secret\] $nl sink.sasl_mechanism: invalid Kafka client configuration: Unsupported SASL mechanism: NOPE" \
     "sink: bad SASL mechanism named"
is "$(echo "$log" | grep -c 'hunter2-secret')" 0 "a secret never appears in the log"
like "$log" "\[k-empty-topic\] $nl source.topic: required" "source: empty topic"
like "$log" "\[k-no-topic\] $nl source.topic: required" "source: missing topic"
like "$log" "\[k-unknown-prop\] $nl source.rdkafka.no.such.property: No such configuration property" "source: unknown rdkafka property"
like "$log" "\[k-auto-commit\] $nl source.rdkafka.enable.auto.commit: fixed by the relay" "source: auto commit cannot be turned on"
like "$log" "\[k-reset\] $nl source.auto_offset_reset: expected earliest, latest or error" "source: bad auto_offset_reset"
like "$log" "\[k-group\] $nl source.group_id: must not be empty" "source: empty group_id"
like "$log" "\[k-topic-list\] $nl source.topic\[1\]: expected a non-empty topic name" "source: bad topic list entry"
is "$(echo "$log" | grep -c 'kafka consumer created\|kafka producer created')" 1 "only the good pipeline created a Kafka client"
is "$(http_code r1 /health)" 200 "refused configs do not make /health degraded"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
