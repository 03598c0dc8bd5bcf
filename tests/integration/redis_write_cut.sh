#!/usr/bin/env bash
# The connection to Redis reset while the sink is still writing one large
# pipeline (SPEC section 7, row redis; src/sink/redis.c "Pipelining"): a
# batch of 10 000 events of about 1 KB goes through a TCP forwarder that
# resets the first connection after 1 MB of it has passed. The write fails
# half-way through the formatting of the chunk: nothing of the batch is
# acknowledged, the sink reconnects, and with a dedup window every event is
# in the stream exactly once.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/redis_lib.sh"
TOOLS=$(cd "$(dirname "$0")/../tools" && pwd)
setup_db
P=$REDIS_PREFIX
KEY="$P:cut"
offset() { sql "SELECT coalesce(max(last_change_id), 0) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'cut'"; }

FPORT=$(free_port)
python3 -u "$TOOLS/tcp_forward.py" --reset-first-after 1000000 "127.0.0.1:$FPORT=127.0.0.1:$REDIS_PORT" \
    >"$TEST_TMP/fwd.log" 2>&1 &
RELAY_PIDS[fwd]=$!   # stopped with the relays at exit
wait_until 10 "grep -q READY '$TEST_TMP/fwd.log'" || bail "tcp_forward.py did not start"

# 20 outbox rows of 500 events each, written before the relay starts, so
# they are read as one batch of 10 000 and sent as one pipeline of ~11 MB.
sql "SELECT pgtrickle.enable_outbox('cut')" >/dev/null
sql "SELECT pgtrickle.outbox_write('cut', (SELECT jsonb_agg(jsonb_build_object('n', r * 500 + i, 'pad', repeat('x', 1000)))
                                           FROM generate_series(1, 500) i))
     FROM generate_series(0, 19) r" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('cut', 'cut', NULL,
       '$(SINK_URL=redis://127.0.0.1:$FPORT redis_sink "$KEY" '"dedup_window_seconds":600')')" >/dev/null
last=$(sql "SELECT max(id) FROM pgtrickle.outbox_cut")

RELAY_LOG_LEVEL=debug start_relay r1
wait_until 60 "[ \"\$(offset)\" = $last ]"
is "$(offset)" "$last" "every outbox row is acknowledged in the end"
like "$(cat "$TEST_TMP/fwd.log")" "RESET 1000000" "the forwarder reset the connection after 1 MB"
like "$(relay_log r1)" "\[cut\] redis sink: writing to redis redis://127.0.0.1:$FPORT/0 failed after [0-9]+ of 10000 commands were formatted" \
    "the write failed in the middle of the pipeline (the path under test)"
like "$(relay_log r1)" "\[cut\] sink redis unavailable: .*redis://127.0.0.1:$FPORT/0" "the failure is logged, naming the server"
like "$(relay_log r1)" "\[cut\] sink redis available again" "the recovery is logged"
entries "$KEY" > "$TEST_TMP/cut.jsonl"
is "$(jq -r '.payload | fromjson | .payload.n' "$TEST_TMP/cut.jsonl" | sort -n | awk 'NR != $1 { bad++ } END { print NR ":" bad + 0 }')" "10000:0" \
    "events 1..10000 are in the stream, each exactly once (dedup window)"
is "$(jq -r .dedup_key "$TEST_TMP/cut.jsonl" | sort -u | wc -l | tr -d ' ')" 10000 "10000 distinct dedup keys"
is "$(pipeline_healthy r1 cut)" true "the pipeline is healthy"
rcli DEL "$KEY" >/dev/null
rcli --scan --pattern "$KEY:dedup:*" | xargs -r -n 1000 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" DEL >/dev/null
done_testing
