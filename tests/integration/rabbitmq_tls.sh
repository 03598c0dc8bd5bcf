#!/usr/bin/env bash
# AMQP over TLS (amqps://) against the shared node's TLS listener: the broker
# verified with tls_ca_file (certificate and host name), a client
# certificate (tls_cert_file, tls_key_file) presented, both directions
# working; tls_verify false connects without a CA; verification failures
# (no CA: the system store does not know the test CA; an IP address, which
# rabbitmq-c 0.11 does not match against the certificate's names) are clear
# errors and the pipeline stays degraded. Every TLS file must lie under
# --allow-path.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/rabbitmq_lib.sh"
: "${PGT_RABBITMQ_TLS_URL:?rabbitmq TLS listener not started}"
setup_db
cp "$PGT_RABBITMQ_DIR/tls/ca.pem" "$PGT_RABBITMQ_DIR/tls/client.pem" "$PGT_RABBITMQ_DIR/tls/client.key" "$TEST_TMP/"
TLS=$PGT_RABBITMQ_TLS_URL                         # amqps://guest:guest@localhost:<port>/
TLS_IP=${TLS/@localhost:/@127.0.0.1:}
X=x_$RTAG
Q=q_$RTAG
QIN=qin_$RTAG
rmq declare-exchange "$X" topic
rmq declare-queue "$Q" --bind "$X" "#"
rmq declare-queue "$QIN"
CA="\"tls_ca_file\":\"$TEST_TMP/ca.pem\""
CERT="\"tls_cert_file\":\"$TEST_TMP/client.pem\",\"tls_key_file\":\"$TEST_TMP/client.key\""
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.create_inbox('rin')" >/dev/null
pipe() { sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL, '$2')" >/dev/null; }
pipe tls-ca "$(SINK_URL=$TLS rmq_sink "$X" "ca.{op}" "$CA")"
pipe tls-cert "$(SINK_URL=$TLS rmq_sink "$X" "cert.{op}" "$CA,$CERT")"
pipe tls-noverify "$(SINK_URL=$TLS rmq_sink "$X" "nv.{op}" '"tls_verify":false')"
pipe tls-no-ca "$(SINK_URL=$TLS rmq_sink "$X" "x.{op}")"
pipe tls-by-ip "$(SINK_URL=$TLS_IP rmq_sink "$X" "x.{op}" "$CA")"
sql "SELECT pgtrickle.set_relay_inbox('tls-in', 'rin',
     '{\"type\":\"rabbitmq\",\"url\":\"$TLS\",\"queue\":\"$QIN\",$CA,$CERT}')" >/dev/null
write_rows orders 1 30
rmq publish "" "$QIN" 30 --id-prefix in

start_relay r1
wait_until 30 '[ "$(offset tls-ca)" = 30 ] && [ "$(offset tls-cert)" = 30 ] && [ "$(offset tls-noverify)" = 30 ] && [ "$(sql "SELECT count(*) FROM pgtrickle.rin")" = 30 ]'
rmq drain "$Q" >"$TEST_TMP/q.jsonl"
is "$(jq -r .routing_key "$TEST_TMP/q.jsonl" | cut -d. -f1 | sort | uniq -c | awk '{print $2 ":" $1}' | paste -sd' ')" "ca:30 cert:30 nv:30" \
   "over TLS: verified with tls_ca_file, with a client certificate, and with tls_verify false"
is "$(sql "SELECT count(*) FROM pgtrickle.rin")" 30 "the source reads over TLS with a client certificate"
like "$(relay_log r1)" "\[tls-ca\] connected to RabbitMQ 3\.[0-9.]+ at amqps://guest@localhost:[0-9]+/%2F" "the log shows amqps://"
wait_until 10 '[ -n "$(last_error r1 tls-no-ca)" ] && [ -n "$(last_error r1 tls-by-ip)" ]'
like "$(last_error r1 tls-no-ca)" "cannot connect to RabbitMQ at amqps://guest@localhost:[0-9]+/%2F: SSL peer cert verification failed" \
     "without tls_ca_file the test CA is unknown: a clear TLS error"
like "$(last_error r1 tls-by-ip)" "cannot connect to RabbitMQ at amqps://guest@127\.0\.0\.1:[0-9]+/%2F: SSL hostname verification failed" \
     "connecting by IP address: host name verification refuses it"
is "$(offset tls-no-ca):$(offset tls-by-ip)" "0:0" "they acknowledge nothing"
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" "tls-by-ip,tls-no-ca" \
   "exactly those two are degraded"
stop_relay r1
is "$?" 0 "clean exit"

# a TLS file outside --allow-path
sql "SELECT pgtrickle.set_relay_outbox('tls-outside', 'orders', NULL,
     '$(SINK_URL=$TLS rmq_sink "$X" "x.{op}" "\"tls_ca_file\":\"$PGT_RABBITMQ_DIR/tls/ca.pem\"")')" >/dev/null
start_relay r2
wait_until 10 'relay_log r2 | grep -q "tls-outside\] pipeline not started"'
like "$(relay_log r2)" "\[tls-outside\] pipeline not started: sink\.tls_ca_file: .*ca\.pem is outside the paths this relay may use" \
     "a CA file outside --allow-path: not started, the key named"
stop_relay r2
for q in "$Q" "$QIN"; do rmq delete-queue "$q"; done
rmq delete-exchange "$X"
done_testing
