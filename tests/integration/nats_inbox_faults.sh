#!/usr/bin/env bash
# NATS -> inbox when things go wrong, on a private nats-server:
#  - NATS stopped: the reverse pipeline is degraded (source unavailable) at
#    once, recovers when NATS is back, and the durable consumer resumes where
#    it was (nothing lost, nothing twice)
#  - a missing stream is a clear error naming source.stream; creating it heals
#  - invalid source configs are not started and the key is named; a push
#    consumer of the same name is refused; a deleted consumer is recreated
#  - consumer settings: deliver_policy "new", max_deliver, and a changed
#    filter subject updates the existing consumer (hot reload)
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
start_private_nats A
URL=$(priv_nats_url A)
export NATSCLI_URL=$URL
S=$(stream_name FIN)
SM=$(stream_name LATE)
SUBJ="t_$NATS_TAG"
natscli stream-add "$S" "$SUBJ.>" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_a')" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_b')" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_c')" >/dev/null
src() { echo "{\"type\":\"nats\",\"url\":\"$URL\",\"reconnect_wait_ms\":200,\"stream\":\"$1\"${2:+,$2}}"; }
sql "SELECT pgtrickle.set_relay_inbox('in-a', 'in_a', '$(src "$S" '"durable_name":"a","subject":"'"$SUBJ"'.a.>"')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('in-late', 'in_c', '$(src "$SM" '"durable_name":"late"')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('bad-policy', 'in_c', '$(src "$S" '"deliver_policy":"sometimes"')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('bad-key', 'in_c', '$(src "$S" '"durable":"x"')')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('no-stream-key', 'in_c', '{\"type\":\"nats\",\"url\":\"$URL\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('bad-deliver', 'in_c', '$(src "$S" '"max_deliver":0')')" >/dev/null
natscli consumer-add-push "$S" pushy "deliver_$NATS_TAG" >/dev/null
sql "SELECT pgtrickle.create_inbox('in_d')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('in-push', 'in_d', '$(src "$S" '"durable_name":"pushy"')')" >/dev/null
rows() { sql "SELECT count(*) FROM pgtrickle.$1"; }

natscli pub-many "$SUBJ.a.x" 200 --id-prefix a1- >/dev/null
natscli pub-many "$SUBJ.b.x" 5 --id-prefix old- >/dev/null   # before in-new exists
start_relay r1 --shutdown-timeout 2s
wait_until 15 '[ "$(rows in_a)" -ge 200 ]'
is "$(rows in_a)" 200 "200 messages in the inbox"
log=$(relay_log r1)
like "$log" "\[bad-policy\] pipeline not started: source.deliver_policy" "bad deliver_policy named"
like "$log" "\[bad-key\] pipeline not started: source.durable" "unknown key named"
like "$log" "\[no-stream-key\] pipeline not started: source.stream" "missing stream key named"
like "$log" "\[bad-deliver\] pipeline not started: source.max_deliver" "max_deliver 0 refused"
wait_until 10 '[ -n "$(last_error r1 in-late)" ]'
like "$(last_error r1 in-late)" "source.stream: JetStream stream \"$SM\" does not exist" "missing stream: clear error naming source.stream"
is "$(pipeline_healthy r1 in-late)" false "... and that pipeline is degraded"
is "$(pipeline_healthy r1 in-a)" true "the other one is healthy"
wait_until 10 '[ -n "$(last_error r1 in-push)" ]'
like "$(last_error r1 in-push)" "source.durable_name: consumer \"pushy\" of stream \"$S\" is a push consumer" \
   "an existing push consumer of that name: clear error naming source.durable_name"
sql "SELECT pgtrickle.delete_relay('in-push')" >/dev/null

# NATS goes away
stop_private_nats A
wait_until 5 '[ "$(degraded_reason r1 in-a)" = "source unavailable" ]'
is "$(degraded_reason r1 in-a)" "source unavailable" "NATS stopped: the reverse pipeline is degraded at once"
is "$(http_code r1 /health)" 503 "/health is 503"
start_private_nats A
wait_until 15 '[ "$(pipeline_healthy r1 in-a)" = true ]'
is "$(pipeline_healthy r1 in-a)" true "NATS back: healthy again"
natscli pub-many "$SUBJ.a.x" 100 --id-prefix a2- >/dev/null
wait_until 15 '[ "$(rows in_a)" -ge 300 ]'
sleep 0.5
is "$(rows in_a)" 300 "the durable consumer resumed: 300 rows, none twice"
is "$(consumer_field "$S" a num_ack_pending)" 0 "all acked"

# The consumer is deleted under the running relay: it is created again and
# reading goes on (from the stream's start: the inbox skips what it has).
natscli consumer-delete "$S" a
natscli pub-many "$SUBJ.a.x" 10 --id-prefix a3- >/dev/null
wait_until 20 '[ "$(rows in_a)" -ge 310 ]'
is "$(rows in_a)" 310 "a deleted consumer is recreated and the new messages arrive"
wait_until 10 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"in-a\"}")" = 300 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="in-a"}')" 300 "the 300 redelivered ones are skipped by the inbox"

# The missing stream appears: the pipeline heals.
natscli stream-add "$SM" "${SUBJ}_late.>" >/dev/null
natscli pub-many "${SUBJ}_late.x" 7 --id-prefix l- >/dev/null
wait_until 20 '[ "$(rows in_c)" -ge 7 ]'
is "$(rows in_c)" 7 "once the stream exists its messages arrive"
wait_until 5 '[ "$(pipeline_healthy r1 in-late)" = true ]'
is "$(pipeline_healthy r1 in-late)" true "and the pipeline is healthy"

# deliver_policy new + max_deliver, added while running (hot reload)
sql "SELECT pgtrickle.set_relay_inbox('in-new', 'in_b', '$(src "$S" '"durable_name":"newonly","subject":"'"$SUBJ"'.b.>","deliver_policy":"new","max_deliver":5')')" >/dev/null
wait_until 10 '[ "$(consumer_field "$S" newonly max_deliver)" = 5 ]'
is "$(consumer_field "$S" newonly max_deliver)" 5 "max_deliver is set on the consumer"
natscli pub-many "$SUBJ.b.x" 4 --id-prefix new- >/dev/null
wait_until 10 '[ "$(rows in_b)" -ge 4 ]'
sleep 0.5
is "$(sql "SELECT string_agg(event_id, ',' ORDER BY event_id) FROM pgtrickle.in_b")" "new-0,new-1,new-2,new-3" \
   "deliver_policy new: only messages published after the consumer was created"

# Changing the filter subject of an existing consumer updates it.
sql "SELECT pgtrickle.set_relay_inbox('in-a', 'in_a', '$(src "$S" '"durable_name":"a","subject":"'"$SUBJ"'.c.>"')')" >/dev/null
wait_until 10 '[ "$(consumer_field "$S" a filter_subject)" = "$SUBJ.c.>" ]'
is "$(consumer_field "$S" a filter_subject)" "$SUBJ.c.>" "a changed source.subject updates the existing consumer"
natscli pub "$SUBJ.c.x" '{"c":1}' --id c-1 >/dev/null
wait_until 10 '[ "$(sql "SELECT count(*) FROM pgtrickle.in_a WHERE event_id = '"'c-1'"'")" = 1 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.in_a WHERE event_id = 'c-1'")" 1 "and it reads the new subject"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
