#!/usr/bin/env bash
# How the Redis sink handles failed XADDs:
#  - an event larger than the server's proto-max-bulk-len is dead-lettered
#    with its original bytes (it is never sent: the server would drop the
#    connection), the rest of the batch is delivered and the offset moves on
#  - OOM (maxmemory reached, noeviction): every XADD is refused, so the
#    pipeline is degraded with the server's error and nothing is
#    acknowledged; once there is memory again the batch completes, once
#  - the dedup script flushed from the server (SCRIPT FLUSH, or a restart
#    without persistence): NOSCRIPT, the script is loaded again and nothing
#    is lost or repeated
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
setup_db
P=$REDIS_PREFIX
for ob in big mem flush; do sql "SELECT pgtrickle.enable_outbox('$ob')" >/dev/null; done
off() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = '$1'"; }
start_private_redis SMALL --proto-max-bulk-len 1mb
start_private_redis MEM
SP=$(priv_redis_port SMALL)
MP=$(priv_redis_port MEM)
sql "SELECT pgtrickle.set_relay_outbox('big-redis', 'big', NULL, '$(SINK_URL=redis://127.0.0.1:$SP redis_sink "$P:big")')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('mem-redis', 'mem', NULL, '$(SINK_URL=redis://127.0.0.1:$MP redis_sink "$P:mem" '"dedup_window_seconds":60')')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('flush-redis', 'flush', NULL, '$(redis_sink "$P:flush" '"dedup_window_seconds":60')')" >/dev/null

# one outbox row, so one batch: small, 1.5 MB, small
sql "SELECT pgtrickle.outbox_write('big', jsonb_build_array(jsonb_build_object('n', 1),
     jsonb_build_object('pad', repeat('x', 1500000)), jsonb_build_object('n', 3)))" >/dev/null
write_rows mem 1 5
write_rows flush 1 5
start_relay r1 --shutdown-timeout 2s

# --- too large: dead-lettered, the rest delivered ------------------------------------
dlq() { sql "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = '$1'"; }
wait_until 20 '[ "$(off big-redis)" = 1 ]'
is "$(RCLI_PORT=$SP entries "$P:big" | jq -r '.payload | fromjson | .payload.n' | tr '\n' ' ')" "1 3 " \
   "the two small events are stored, in order"
is "$(dlq big-redis)" 1 "the oversized one is dead-lettered"
like "$(sql "SELECT dedup_key || ' ' || error FROM pgtrickle.relay_dlq WHERE pipeline = 'big-redis'")" \
     "^outbox_big:1:1 a value of [0-9]+ bytes exceeds proto-max-bulk-len \(1048576 bytes\) of redis redis://127.0.0.1:$SP/0" \
     "... with its dedup key and the reason"
is "$(sql "SELECT convert_from(payload_raw, 'UTF8')::jsonb = jsonb_build_object('pad', repeat('x', 1500000)) FROM pgtrickle.relay_dlq WHERE pipeline = 'big-redis'")" t \
   "... and its original payload bytes"
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="big-redis"}')" 1 "dead_lettered counter"

# --- OOM: retried, degraded, nothing acked --------------------------------------------
wait_until 15 '[ "$(off mem-redis)" = 5 ]'
RCLI_PORT=$MP rcli CONFIG SET maxmemory-policy noeviction >/dev/null
RCLI_PORT=$MP rcli CONFIG SET maxmemory 1 >/dev/null
write_rows mem 6 10
wait_until 20 '[ "$(pipeline_healthy r1 mem-redis)" = false ]'
is "$(pipeline_healthy r1 mem-redis)" false "the pipeline is degraded while Redis refuses writes"
like "$(last_error r1 mem-redis)" "OOM command not allowed" "the server's OOM error is shown"
sleep 1
is "$(off mem-redis)" 5 "nothing is acknowledged to the outbox meanwhile"
is "$(RCLI_PORT=$MP xlen "$P:mem")" 5 "and nothing was added"
RCLI_PORT=$MP rcli CONFIG SET maxmemory 0 >/dev/null
wait_until 40 '[ "$(off mem-redis)" = 10 ]'
is "$(off mem-redis)" 10 "once there is memory the batch completes"
is "$(RCLI_PORT=$MP entries "$P:mem" | jq -r '.payload | fromjson | .payload.n' | tr '\n' ' ')" "1 2 3 4 5 6 7 8 9 10 " \
   "each event once, in order"
wait_until 10 '[ "$(pipeline_healthy r1 mem-redis)" = true ]'
is "$(pipeline_healthy r1 mem-redis)" true "healthy again"

# --- NOSCRIPT: the dedup script is loaded again ----------------------------------------
wait_until 15 '[ "$(off flush-redis)" = 5 ]'
rcli SCRIPT FLUSH >/dev/null
write_rows flush 6 10
wait_until 20 '[ "$(off flush-redis)" = 10 ]'
is "$(off flush-redis)" 10 "after SCRIPT FLUSH the next events are delivered"
is "$(entries "$P:flush" | jq -r '.payload | fromjson | .payload.n' | tr '\n' ' ')" "1 2 3 4 5 6 7 8 9 10 " \
   "each event once, in order"
like "$(relay_log r1)" "\[flush-redis\].*NOSCRIPT" "the NOSCRIPT reply is logged"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
