#!/usr/bin/env bash
# Least privilege and operability (issue 11), with a relay logged in as a
# login that has only pgtrickle_relay (plus SELECT/INSERT on the tables it
# relays and REPLICATION), pipelines written by a pgtrickle_relay_admin login:
#  - every pipeline kind runs: outbox -> file, NATS, Kafka, webhook;
#    CDC -> file; JSONL file, NATS, Kafka, webhook -> inbox;
#  - the runtime login cannot set a pipeline up;
#  - a file output or a ${file:} secret outside --allow-path is a config
#    error naming the key: nothing is written, nothing is read or sent;
#    like a missing secret, the pipeline shows in /status "rejected", in
#    pgtrickle_relay_pipeline_rejected and in pgtrickle.relay_status;
#  - pgtrickle.relay_status shows every pipeline's owner (host, pid), state,
#    last progress;
#  - delete_relay of a CDC pipeline drops the slot the relay made (a slot
#    the user made, create_slot false, stays) and its offsets; a re-created
#    outbox pipeline with start "latest" sends only new rows.
. "$(dirname "$0")/webhook_lib.sh"
. "$(dirname "$0")/nats_lib.sh"
: "${PGT_KAFKA_BROKERS:?services not started: run tests/services/services.sh start pg nats kafka}"
: "${KCLI:=$(dirname "$RELAY_BIN")/tests/kcli}"
setup_db
RT=lp_relay_$$ ADM=lp_admin_$$
sql "CREATE ROLE $RT LOGIN REPLICATION; GRANT pgtrickle_relay TO $RT;
     CREATE ROLE $ADM LOGIN; GRANT pgtrickle_relay_admin TO $ADM" >/dev/null
trap 'sql "DROP OWNED BY $RT, $ADM; DROP ROLE IF EXISTS $RT; DROP ROLE IF EXISTS $ADM" >/dev/null 2>&1; _nats_cleanup; _cleanup' EXIT
adm() { sql_as "$ADM" "$1" 2>&1; }
rt() { sql_as "$RT" "$1" 2>&1; }

# what the DBA sets up: outboxes, inboxes, a publication, and the grants
for ob in orders o_nats o_kafka o_hook fresh; do
    sql "SELECT pgtrickle.enable_outbox('$ob'); GRANT SELECT ON pgtrickle.outbox_$ob TO $RT" >/dev/null
done
for ib in jin nin kin win; do
    sql "SELECT pgtrickle.create_inbox('$ib'); GRANT INSERT ON pgtrickle.$ib TO $RT" >/dev/null
done
sql "CREATE TABLE public.items (id int PRIMARY KEY, label text); GRANT SELECT ON public.items TO $RT;
     CREATE PUBLICATION lp_pub FOR TABLE public.items" >/dev/null
SLOT=lp_slot_$$
USLOT=lp_user_slot_$$
sql "SELECT pg_create_logical_replication_slot('$USLOT', 'pgoutput')" >/dev/null

S_OUT=$(stream_name OUT) S_IN=$(stream_name IN) SUBJ="t_$NATS_TAG"
natscli stream-add "$S_OUT" "$SUBJ.out.>" >/dev/null
natscli stream-add "$S_IN" "$SUBJ.in.>" >/dev/null
T_OUT="lp_out_$$" T_IN="lp_in_$$"
start_recv hook
HPORT=$(free_port)
IN=$TEST_TMP/in.jsonl
: >"$IN"

# the admin login sets every pipeline up
like "$(adm "SELECT pgtrickle.set_relay_outbox('ob-file', 'orders', NULL, '$(file_sink "$TEST_TMP/ob.jsonl")')")" "^$" "the admin login sets pipelines up"
adm "SELECT pgtrickle.set_relay_outbox('ob-nats', 'o_nats', NULL, '{\"type\":\"nats\",\"url\":\"$NATS_URL\",\"stream\":\"$S_OUT\",\"subject_template\":\"$SUBJ.out.{op}\"}')" >/dev/null
adm "SELECT pgtrickle.set_relay_outbox('ob-kafka', 'o_kafka', NULL, '{\"type\":\"kafka\",\"brokers\":\"$PGT_KAFKA_BROKERS\",\"topic_template\":\"$T_OUT\"}')" >/dev/null
adm "SELECT pgtrickle.set_relay_outbox('ob-hook', 'o_hook', NULL, '{\"type\":\"webhook\",\"url\":\"$(recv_url hook)\",\"batch_mode\":false}')" >/dev/null
adm "SELECT pgtrickle.set_relay_cdc('cdc-file', '{\"source\":{\"publication\":\"lp_pub\",\"slot\":\"$SLOT\"},\"sink\":$(file_sink "$TEST_TMP/cdc.jsonl")}')" >/dev/null
adm "SELECT pgtrickle.set_relay_cdc('cdc-user-slot', '{\"source\":{\"publication\":\"lp_pub\",\"slot\":\"$USLOT\",\"create_slot\":false},\"sink\":$(file_sink "$TEST_TMP/cdc2.jsonl")}')" >/dev/null
adm "SELECT pgtrickle.set_relay_inbox('jsonl-in', 'jin', '{\"type\":\"file\",\"input\":\"$IN\",\"follow\":true}')" >/dev/null
adm "SELECT pgtrickle.set_relay_inbox('nats-in', 'nin', '{\"type\":\"nats\",\"url\":\"$NATS_URL\",\"stream\":\"$S_IN\",\"durable_name\":\"lp\"}')" >/dev/null
adm "SELECT pgtrickle.set_relay_inbox('kafka-in', 'kin', '{\"type\":\"kafka\",\"brokers\":\"$PGT_KAFKA_BROKERS\",\"topic\":\"$T_IN\",\"group_id\":\"$T_IN\",\"rdkafka\":{\"session.timeout.ms\":6000}}')" >/dev/null
adm "SELECT pgtrickle.set_relay_inbox('wh-in', 'win', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$HPORT\",\"auth_token\":\"T\"}')" >/dev/null

# hostile configs: a file outside --allow-path, a secret file outside it sent
# to a listener of the writer's choosing, a missing secret
LISTEN_PORT=$(free_port)
python3 -c '
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8); s.settimeout(60)
try:
    while True:
        c, _ = s.accept(); open(sys.argv[2], "a").write("connection\n"); c.close()
except Exception: pass' "$LISTEN_PORT" "$TEST_TMP/listener.log" &
LISTENER=$!
OUTSIDE=/tmp/lp-outside-$$
adm "SELECT pgtrickle.set_relay_outbox('escape-file', 'orders', NULL, '$(file_sink "$OUTSIDE/pwned.jsonl")')" >/dev/null
adm "SELECT pgtrickle.set_relay_outbox('escape-secret', 'orders', NULL, '{\"type\":\"nats\",\"url\":\"nats://127.0.0.1:$LISTEN_PORT\",\"stream\":\"X\",\"token\":\"\${file:/etc/hostname}\"}')" >/dev/null
adm "SELECT pgtrickle.set_relay_outbox('no-secret', 'orders', NULL, '$(file_sink '${env:LP_NOBODY_HAS_THIS}')')" >/dev/null

# the runtime login cannot do any of that
like "$(rt "SELECT pgtrickle.set_relay_outbox('x', 'orders', NULL, '$(file_sink /tmp/x.jsonl)')")" "permission denied for function set_relay_outbox" \
   "the relay's own login is refused set_relay_outbox"
like "$(rt "SELECT pgtrickle.delete_relay('ob-file')")" "permission denied for function delete_relay" "  ... and delete_relay"

RELAY_URL="postgresql://$RT@$PGT_PGHOST:$PGT_PGPORT/$TEST_DB" start_relay r1
# traffic on every pipeline
write_rows orders 1 10; write_rows o_nats 1 10; write_rows o_kafka 1 10; write_rows o_hook 1 10
sql "INSERT INTO public.items SELECT g, 'i' || g FROM generate_series(1, 5) g" >/dev/null
for i in 1 2 3 4 5; do printf '{"dedup_key":"j%d"}\n' "$i" >>"$IN"; done
natscli pub-many "$SUBJ.in.x" 5 --id-prefix n- --data '{"n":1}' >/dev/null
"$KCLI" produce "$PGT_KAFKA_BROKERS" "$T_IN" 5 2>>"$TEST_TMP/kcli.log"
wait_until 10 '[ "$(curl -s -o /dev/null -w "%{http_code}" -H "Authorization: Bearer T" -d "{\"w\":1}" http://127.0.0.1:$HPORT/inbox)" = 200 ]'
wait_until 60 '[ "$(lines "$TEST_TMP/ob.jsonl")" -ge 10 ] && [ "$(stream_count "$S_OUT")" -ge 10 ] && [ "$(recv_count hook)" -ge 10 ] &&
               [ "$(lines "$TEST_TMP/cdc.jsonl")" -ge 5 ] && [ "$(sql "SELECT count(*) FROM pgtrickle.jin")" -ge 5 ] &&
               [ "$(sql "SELECT count(*) FROM pgtrickle.nin")" -ge 5 ] && [ "$(sql "SELECT count(*) FROM pgtrickle.kin")" -ge 5 ] &&
               [ "$(sql "SELECT count(*) FROM pgtrickle.win")" -ge 1 ]'
is "$(lines "$TEST_TMP/ob.jsonl")" 10 "outbox -> file"
is "$(stream_count "$S_OUT")" 10 "outbox -> NATS"
is "$("$KCLI" consume "$PGT_KAFKA_BROKERS" "$T_OUT" 10 --quiet --timeout 20 2>&1 | grep -o 'consumed [0-9]*')" "consumed 10" "outbox -> Kafka"
is "$(recv_count hook)" 10 "outbox -> webhook"
is "$(lines "$TEST_TMP/cdc.jsonl")" 5 "CDC -> file (slot created by the relay's REPLICATION login)"
is "$(sql "SELECT count(*) FROM pgtrickle.jin")/$(sql "SELECT count(*) FROM pgtrickle.nin")/$(sql "SELECT count(*) FROM pgtrickle.kin")/$(sql "SELECT count(*) FROM pgtrickle.win")" \
   "5/5/5/1" "JSONL, NATS, Kafka, webhook -> inbox"

# the rejected ones: a clear error naming the key; nothing written, read or sent
rejected() { http_get r1 /status | jq -r ".rejected[] | select(.name == \"$1\") | .error"; }
like "$(rejected escape-file)" "^sink.output: $OUTSIDE/pwned.jsonl is outside the paths this relay may use" \
   "a file output outside --allow-path: the pipeline is rejected, naming sink.output"
check "  ... and nothing is written there" test ! -e "$OUTSIDE"
like "$(rejected escape-secret)" 'sink.token: \$\{file:/etc/hostname\}: /etc/hostname is outside the paths' \
   "a \${file:} secret outside --allow-path: rejected, naming the key"
sleep 1
is "$(cat "$TEST_TMP/listener.log" 2>/dev/null | wc -l | tr -d ' ')" 0 "  ... and the writer's listener never saw a connection"
like "$(rejected no-secret)" "LP_NOBODY_HAS_THIS" "a missing secret: rejected, naming the variable"
is "$(metric r1 'pgtrickle_relay_pipeline_rejected{pipeline="escape-file",direction="forward"}')" 1 "  ... counted in pgtrickle_relay_pipeline_rejected"

# relay_status: the whole fleet from psql, for the admin (and the relay's role)
wait_until 15 '[ "$(adm "SELECT count(*) FROM pgtrickle.relay_status WHERE state = '"'running'"'")" = 10 ]'
is "$(adm "SELECT count(*) FROM pgtrickle.relay_status WHERE state = 'running' AND pid = $(relay_pid r1) AND relay_group_id = 'default' AND host <> ''")" 10 \
   "relay_status: the 10 running pipelines with their owner (group, host, pid)"
is "$(adm "SELECT string_agg(pipeline, ',' ORDER BY pipeline) FROM pgtrickle.relay_status WHERE state = 'rejected'")" "escape-file,escape-secret,no-secret" \
   "relay_status: the rejected pipelines"
like "$(adm "SELECT last_error FROM pgtrickle.relay_status WHERE pipeline = 'no-secret'")" "LP_NOBODY_HAS_THIS" "  ... with their error"
is "$(adm "SELECT last_progress_at IS NOT NULL AND lag_seconds IS NOT NULL FROM pgtrickle.relay_status WHERE pipeline = 'ob-file'")" t \
   "relay_status: last progress and lag"
is "$(rt "SELECT count(*) FROM pgtrickle.relay_status")" "$(adm "SELECT count(*) FROM pgtrickle.relay_status")" "the relay's role can read it too"
like "$(rt "SELECT * FROM pgtrickle.relay_status_report")" "permission denied" "  ... but not the table behind it"

# clean deletes
is "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('$SLOT', '$USLOT')")" 2 "(both slots exist)"
adm "SELECT pgtrickle.delete_relay('cdc-file'), pgtrickle.delete_relay('cdc-user-slot')" >/dev/null
wait_until 20 '[ "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '"'$SLOT'"'")" = 0 ]'
is "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$SLOT'")" 0 "delete_relay of a CDC pipeline drops the slot the relay created"
is "$(sql "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '$USLOT'")" 1 "  ... but not a slot the user made (create_slot false)"
like "$(relay_log r1)" "dropped replication slot $SLOT of the deleted pipeline" "  ... and says so"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id IN ('cdc-file', 'ob-file')")" 1 "(ob-file has an offset)"
adm "SELECT pgtrickle.delete_relay('ob-file')" >/dev/null
wait_until 10 '! owned_by r1 | grep -qw ob-file'
is "$(sql "SELECT count(*) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id IN ('cdc-file', 'ob-file')")" 0 "delete_relay removes the offsets"
write_rows orders 11 15
adm "SELECT pgtrickle.set_relay_outbox('ob-file', '{\"source\":{\"outbox\":\"orders\",\"start\":\"latest\"},\"sink\":$(file_sink "$TEST_TMP/ob2.jsonl")}')" >/dev/null
is "$(sql "SELECT config->'source'->>'start' FROM pgtrickle.relay_outbox_config WHERE name = 'ob-file'")" latest "(re-created with start \"latest\")"
wait_until 10 'owned_by r1 | grep -qw ob-file'
sleep 1
write_rows orders 16 18
wait_until 10 '[ "$(lines "$TEST_TMP/ob2.jsonl")" -ge 3 ]'
sleep 0.5
is "$(jq -r .payload.n "$TEST_TMP/ob2.jsonl" | tr '\n' ' ')" "16 17 18 " \
   "a re-created outbox pipeline with start \"latest\" sends only the rows written after it started"

kill "$LISTENER" 2>/dev/null
stop_relay r1
is "$?" 0 "clean exit"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_status_report")" 0 "at shutdown the relay removes its relay_status rows"
done_testing
