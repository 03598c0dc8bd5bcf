#!/usr/bin/env bash
# How the NATS sink handles failed publishes:
#  - a message larger than the stream's max_msg_size (PubAck error) or the
#    server's max_payload (refused by the client) is dead-lettered, the rest
#    of the batch is delivered and the pipeline moves on
#  - a PubAck error for part of a batch (stream full, discard new): only the
#    unconfirmed messages are retried, with the same ids; nothing is acked
#    meanwhile and the pipeline is degraded; it completes once there is room
#  - no PubAck at all (nats-server frozen with SIGSTOP): timeout after
#    ack_timeout_ms, retried with the same ids; when the server resumes, the
#    stream holds each message once
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
SUBJ="t_$NATS_TAG"
for ob in big huge cap stall; do sql "SELECT pgtrickle.enable_outbox('$ob')" >/dev/null; done
off() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
pad() { head -c "$1" /dev/zero | tr '\0' x; }

# streams and servers
SL=$(stream_name LIMIT)
natscli stream-add "$SL" "$SUBJ.big.>" --max-msg-size 400 >/dev/null
SC=$(stream_name CAP)
natscli stream-add "$SC" "$SUBJ.cap.>" --max-msgs 5 --discard-new >/dev/null
echo "max_payload: 1024" > "$TEST_TMP/small-payload.conf"
start_private_nats P -c "$TEST_TMP/small-payload.conf"
start_private_nats F
SP=$(stream_name PAYLOAD)
SF=$(stream_name FROZEN)
sql "SELECT pgtrickle.set_relay_outbox('big-nats', 'big', NULL, '$(nats_sink "$SL" "$SUBJ.big.{op}")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('huge-nats', 'huge', NULL,
     '$(SINK_URL=$(priv_nats_url P) nats_sink "$SP" "$SUBJ.huge.{op}" '"create_stream":true')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('cap-nats', 'cap', NULL, '$(nats_sink "$SC" "$SUBJ.cap.{op}")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('stall-nats', 'stall', NULL,
     '$(SINK_URL=$(priv_nats_url F) nats_sink "$SF" "$SUBJ.stall.{op}" '"create_stream":true,"ack_timeout_ms":500')')" >/dev/null

# one outbox row each, so each is one batch
sql "SELECT pgtrickle.outbox_write('big', '[{\"n\":1},{\"pad\":\"$(pad 800)\"},{\"n\":3}]')" >/dev/null
sql "SELECT pgtrickle.outbox_write('huge', '[{\"n\":1},{\"pad\":\"$(pad 2000)\"},{\"n\":3}]')" >/dev/null
sql "SELECT pgtrickle.outbox_write('cap', (SELECT jsonb_agg(jsonb_build_object('n', g)) FROM generate_series(1, 10) g))" >/dev/null
write_rows stall 1 5
start_relay r1 --shutdown-timeout 2s

# --- too large: dead-lettered, the rest delivered --------------------------------------
dlq() { sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = '$1'"; }
wait_until 15 '[ "$(off big-nats)" = 1 ] && [ "$(off huge-nats)" = 1 ]'
is "$(stream_count "$SL")" 2 "stream max_msg_size: the two small events are stored"
is "$(dlq big-nats)" 1 "the oversized one is dead-lettered"
like "$(sql "SELECT dedup_key || ' ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'big-nats'")" \
     "^outbox_big:1:1 message on subject \"$SUBJ.big.insert\" exceeds the maximum message size of stream" \
     "... with its dedup key and the reason"
is "$(off big-nats)" 1 "and the offset moved on"
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="big-nats"}')" 1 "dead_lettered counter"
is "$(stream_count "$SP" "$(priv_nats_url P)")" 2 "server max_payload: the two small events are stored"
like "$(sql "SELECT dedup_key || ' ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'huge-nats'")" \
     "^outbox_huge:1:1 .*Maximum Payload" "the one over max_payload is dead-lettered, refused by the client"

# --- stream full: only the unconfirmed half is retried ------------------------------------
wait_until 10 '[ "$(stream_count "$SC")" = 5 ] && [ "$(pipeline_healthy r1 cap-nats)" = false ]'
is "$(stream_count "$SC")" 5 "a full stream (discard new) stores the first 5 of 10"
is "$(pipeline_healthy r1 cap-nats)" false "the pipeline is degraded while its retries fail"
like "$(last_error r1 cap-nats)" "PubAck error: .*maximum messages" "the PubAck error is shown"
sleep 1
is "$(off cap-nats)" 0 "nothing is acknowledged to the outbox meanwhile"
natscli stream-purge "$SC"
wait_until 20 '[ "$(off cap-nats)" = 1 ]'
is "$(off cap-nats)" 1 "once there is room the batch completes"
is "$(natscli dump "$SC" | jq -r '.headers["Nats-Msg-Id"]' | sort -t: -k3 -n | tr '\n' ' ')" \
   "outbox_cap:1:5 outbox_cap:1:6 outbox_cap:1:7 outbox_cap:1:8 outbox_cap:1:9 " \
   "only the 5 unconfirmed messages were published again, with their ids"
wait_until 5 '[ "$(pipeline_healthy r1 cap-nats)" = true ]'
is "$(pipeline_healthy r1 cap-nats)" true "healthy again"

# --- no PubAck: timeout, retry, no duplicates ---------------------------------------------
wait_until 10 '[ "$(off stall-nats)" = 5 ]'
is "$(stream_count "$SF" "$(priv_nats_url F)")" 5 "the first 5 events are stored"
kill -STOP "${PRIV_NATS_PIDS[F]}"
write_rows stall 6 10
wait_until 10 '[ "$(pipeline_healthy r1 stall-nats)" = false ]'
like "$(last_error r1 stall-nats)" "no PubAck within 500 ms" "a frozen server: PubAcks time out after ack_timeout_ms"
is "$(off stall-nats)" 5 "nothing acknowledged while the PubAcks are missing"
sleep 1
kill -CONT "${PRIV_NATS_PIDS[F]}"
wait_until 20 '[ "$(off stall-nats)" = 10 ]'
is "$(off stall-nats)" 10 "after the server resumes the retries are confirmed"
is "$(stream_count "$SF" "$(priv_nats_url F)")" 10 "each event is stored once (the retries were duplicates)"
wait_until 5 '[ "$(pipeline_healthy r1 stall-nats)" = true ]'
is "$(pipeline_healthy r1 stall-nats)" true "healthy again"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
