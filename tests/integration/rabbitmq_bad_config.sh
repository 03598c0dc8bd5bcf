#!/usr/bin/env bash
# Bad RabbitMQ configs, both directions. Invalid ones are not started and a
# log line names the key; valid ones that cannot work (bad credentials:
# ACCESS_REFUSED, an unknown vhost, a missing exchange: 404, a missing
# queue, an unreachable broker, a TLS file outside --allow-path) run
# degraded with one clear error naming the key, acknowledge nothing, and
# recover once the cause is fixed. Good pipelines next to them are
# unaffected.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
setup_db
X=x_$RTAG
XM=xmissing_$RTAG
Q=q_$RTAG
QM=qmissing_$RTAG
QIN=qin_$RTAG
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "#"
rmq declare-queue "$QIN"
HP=${RMQ_URL#amqp://guest:guest@}; HP=${HP%/}
DEAD=$(free_port)
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.create_inbox('rin')" >/dev/null
pipe() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
inbox() { sql "SELECT pgtrickle.set_relay_inbox('$1', 'rin', '$2')" >/dev/null; }
pipe good "$(rmq_sink "$X" "good.{op}")"
pipe bad-password "$(SINK_URL=amqp://guest:wrong@$HP/ rmq_sink "$X" "x.{op}")"
pipe bad-vhost "$(SINK_URL=amqp://guest:guest@$HP/nowhere rmq_sink "$X" "x.{op}")"
pipe no-exchange "$(rmq_sink "$XM" "x.{op}")"
pipe wrong-type "$(rmq_sink "$X" "x.{op}" '"exchange_type":"fanout","declare_exchange":true')"
pipe unreachable "$(SINK_URL=amqp://guest:guest@127.0.0.1:$DEAD/ rmq_sink "$X" "x.{op}" '"connect_timeout_ms":300')"
pipe bad-url "$(SINK_URL=http://$HP/ rmq_sink "$X" "x.{op}")"
pipe no-exchange-key '{"type":"rabbitmq","url":"'"$RMQ_URL"'"}'
pipe bad-exchange-type "$(rmq_sink "$X" "x.{op}" '"exchange_type":"fan"')"
pipe bad-template "$(rmq_sink "$X" "x.{nope}")"
pipe bad-key "$(rmq_sink "$X" "x.{op}" '"confirm":true')"
pipe tls-no-amqps "$(rmq_sink "$X" "x.{op}" '"tls_ca_file":"'"$TEST_TMP"'/ca.pem"')"
pipe tls-outside "$(SINK_URL=amqps://guest:guest@$HP/ rmq_sink "$X" "x.{op}" '"tls_ca_file":"/etc/ssl/certs/ca-certificates.crt"')"
pipe declare-default "$(rmq_sink "" "x.{op}" '"declare_exchange":true')"
inbox in-good '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"'"$QIN"'"}'
inbox in-no-queue '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"'"$QM"'"}'
inbox in-bad-password '{"type":"rabbitmq","url":"amqp://nobody:x@'"$HP"'/","queue":"'"$QIN"'"}'
inbox in-no-queue-key '{"type":"rabbitmq","url":"'"$RMQ_URL"'"}'
inbox in-bad-qtype '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"x","declare_queue":true,"queue_type":"stream"}'
inbox in-qtype-alone '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"x","queue_type":"quorum"}'
inbox in-bad-binding '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"x","bindings":[{"routing_key":"a"}]}'
inbox in-bad-prefetch '{"type":"rabbitmq","url":"'"$RMQ_URL"'","queue":"x","prefetch_count":70000}'

write_rows orders 1 20
rmq publish "" "$QIN" 5 --id-prefix in
start_relay r1 --shutdown-timeout 2s
wait_until 20 '[ "$(rmq_count "$Q")" -ge 20 ] && [ "$(sql "SELECT count(*) FROM pgtrickle.rin")" -ge 5 ]'
is "$(rmq_count "$Q")" 20 "the good sink pipeline delivers next to the bad ones"
is "$(sql "SELECT count(*) FROM pgtrickle.rin")" 5 "the good inbox pipeline too"
log=$(relay_log r1)
like "$log" "\[bad-url\] pipeline not started: sink.url: not an AMQP URL" "a URL that is not amqp:// named"
like "$log" "\[no-exchange-key\] pipeline not started: sink.exchange: required" "missing exchange key named"
like "$log" "\[bad-exchange-type\] pipeline not started: sink.exchange_type: expected direct, fanout, topic or headers" \
     "bad exchange_type named"
like "$log" "\[bad-template\] pipeline not started: sink.routing_key_template: unknown variable \{nope\}" "bad template named"
like "$log" "\[bad-key\] pipeline not started: sink.confirm" "unknown key named"
like "$log" "\[tls-no-amqps\] pipeline not started: sink.url: the tls_\* keys need an amqps:// URL" "TLS files without amqps:// named"
like "$log" "\[tls-outside\] pipeline not started: sink.tls_ca_file: /etc/ssl/certs/ca-certificates.crt is outside" \
     "a TLS file outside --allow-path named"
like "$log" "\[declare-default\] pipeline not started: sink.declare_exchange: the default exchange" \
     "declaring the default exchange refused"
like "$log" "\[in-no-queue-key\] pipeline not started: source.queue" "missing queue key named"
like "$log" "\[in-bad-qtype\] pipeline not started: source.queue_type: expected classic or quorum" "bad queue_type named"
like "$log" "\[in-qtype-alone\] pipeline not started: source.queue_type: only used with source.declare_queue" \
     "queue_type without declare_queue named"
like "$log" "\[in-bad-binding\] pipeline not started: source.bindings\[0\].exchange" "a binding without exchange named"
like "$log" "\[in-bad-prefetch\] pipeline not started: source.prefetch_count" "prefetch_count above 65535 named"

wait_until 20 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 7 ]'
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" \
   "bad-password,bad-vhost,in-bad-password,in-no-queue,no-exchange,unreachable,wrong-type" \
   "/health names exactly the seven degraded pipelines"
like "$(last_error r1 bad-password)" "cannot log in to RabbitMQ at amqp://guest@$HP/%2F: broker closed the connection: 403 ACCESS_REFUSED - .*\(check the user and password of sink\.url\)" \
     "bad password: 403 ACCESS_REFUSED, sink.url named"
like "$(last_error r1 in-bad-password)" "403 ACCESS_REFUSED.*source\.url" "bad user on the source: source.url named"
like "$(last_error r1 bad-vhost)" "530 NOT_ALLOWED - .*vhost.*nowhere.*\(check the vhost of sink\.url" \
     "unknown vhost: 530 NOT_ALLOWED, sink.url named"
like "$(last_error r1 no-exchange)" "sink\.exchange: checking the exchange \"$XM\": broker closed the channel: 404 NOT_FOUND - no exchange '$XM' in vhost '/' \(create it, or set sink\.declare_exchange\)" \
     "missing exchange: 404 and sink.exchange named"
like "$(last_error r1 wrong-type)" "sink\.exchange_type: declaring the exchange \"$X\": broker closed the channel: 406 PRECONDITION_FAILED - inequivalent arg 'type'" \
     "exchange declared with another type: 406 and sink.exchange_type named"
like "$(last_error r1 unreachable)" "cannot connect to RabbitMQ at amqp://guest@127\.0\.0\.1:$DEAD/%2F" "unreachable broker: clear error"
like "$(last_error r1 in-no-queue)" "source\.queue: checking the queue \"$QM\": broker closed the channel: 404 NOT_FOUND - no queue '$QM' in vhost '/' \(declare it, or set source\.declare_queue\)" \
     "missing queue: 404 and source.queue named"
is "$(offset bad-password):$(offset bad-vhost):$(offset no-exchange):$(offset wrong-type):$(offset unreachable)" "0:0:0:0:0" \
   "the degraded sink pipelines acknowledged nothing"
is "$(offset good)" 20 "the good one committed its offset"
is "$(grep -c '\[no-exchange\] sink rabbitmq unavailable' "$TEST_TMP/r1.log")" 1 "one log line for the degraded pipeline, not one per retry"

# Fix the causes: the pipelines recover without a restart.
rmq declare-exchange "$XM" topic
rmq declare-queue "$Q" --bind "$XM" "#"
rmq declare-queue "$QM"
rmq publish "" "$QM" 3 --id-prefix late
wait_until 40 '[ "$(offset no-exchange)" = 20 ]'
is "$(offset no-exchange)" 20 "the exchange created: the pipeline delivers and acknowledges"
wait_until 40 '[ "$(sql "SELECT count(*) FROM pgtrickle.rin WHERE event_id LIKE '"'late-%'"'")" = 3 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.rin WHERE event_id LIKE 'late-%'")" 3 "the queue created: the source subscribes and reads it"
wait_until 10 '[ "$(pipeline_healthy r1 in-no-queue)" = true ]'
is "$(pipeline_healthy r1 no-exchange):$(pipeline_healthy r1 in-no-queue)" "true:true" "both healthy again"
stop_relay r1
is "$?" 0 "clean exit"
for q in "$Q" "$QM" "$QIN"; do rmq delete-queue "$q"; done
for x in "$X" "$XM"; do rmq delete-exchange "$x"; done
done_testing
