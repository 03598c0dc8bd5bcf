#!/usr/bin/env bash
# PostgreSQL restarted under the relay: /health goes 503 naming the pipeline
# while the connection is lost, the relay reconnects and continues, nothing
# is lost, /health returns to 200. The relay's connections run TCP
# keepalives. Uses a private server so other tests are not disturbed.
. "$(dirname "$0")/lib.sh"
start_private_pg
setup_db
OUT=$TEST_TMP/events.jsonl
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('orders-file', 'orders', NULL, '$(file_sink "$OUT")')" >/dev/null
start_relay r1
write_rows orders 1 100
wait_until 10 '[ "$(lines "$OUT")" -ge 100 ]'
is "$(http_code r1 /health)" 200 "healthy while connected"
is "$(http_get r1 /health | jq -r .status)" "healthy" "health body says healthy"
# A server lost without a TCP reset (partition, power loss) must be noticed:
# every PostgreSQL connection of the relay probes after 10 s idle (libpq's
# own default leaves the kernel's 2 hours: "timer:(keepalive,119min,0)").
conns=$(ss -tnpo state established "dport = :$PRIV_PORT" 2>/dev/null | grep "pid=$(relay_pid r1),")
to_pg=$(grep -c . <<<"$conns")
fast_ka=$(grep -cE 'timer:\(keepalive,[0-9.]+(ms|sec|s),' <<<"$conns")
diag "relay connections to PostgreSQL: $to_pg, probing within seconds: $fast_ka"
ok "$([ "$to_pg" -ge 2 ] && [ "$fast_ka" = "$to_pg" ] && echo 0 || echo 1)" \
   "every connection to PostgreSQL (coordinator, worker) runs TCP keepalives after 10 s idle"

private_pg_stop
wait_until 10 '[ "$(http_code r1 /health)" = 503 ]'
is "$(http_code r1 /health)" 503 "503 while PostgreSQL is down"
body=$(http_get r1 /health)
is "$(echo "$body" | jq -r .status)" "degraded" "health body says degraded"
like "$body" "orders-file" "and names the pipeline"
is "$(metric r1 'pgtrickle_relay_pipeline_healthy{pipeline="orders-file"}')" 0 "pipeline_healthy metric is 0"
sleep 1
private_pg_start
write_rows orders 101 200
wait_until 30 '[ "$(lines "$OUT")" -ge 200 ]'
is "$(distinct_keys "$OUT")" 200 "after the restart the relay continues: all 200 rows"
wait_until 10 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "healthy again"

# A quick restart (fast shutdown + start) while rows are being written.
write_rows orders 201 2000 &
w=$!
sleep 0.3
_as_pg "$PGT_PGBIN/pg_ctl" -D "$PRIV_DIR/data" -m fast -w restart >/dev/null 2>&1
wait $w || write_rows orders "$(( $(sql "SELECT coalesce(max((payload->'inserted'->0->>'n')::int), 200) FROM pgtrickle.outbox_orders") + 1 ))" 2000
wait_until 30 '[ "$(distinct_keys "$OUT")" -ge 2000 ]'
is "$(distinct_keys "$OUT")" 2000 "no row lost across a restart under load"
like "$(relay_log r1)" "reconnected|connection restored" "the relay logged its reconnection"
stop_relay r1
done_testing
