#!/usr/bin/env bash
# The HTTP listeners under hostile clients (issue 10, defects 5 and 6), with
# real sockets against the real relay (tests/tools/slow_http.py: clients that
# trickle header lines or hold uploads; curl for the normal requests):
#  - a request's total time is bounded: clients sending a header line every
#    second (never idle long enough for the idle timeout) are disconnected at
#    the request deadline, on the metrics server and on the receiver;
#  - 100 slow clients against the metrics server and 100 against a receiver
#    limited to 64 connections, for longer than the old 10 s idle timeout:
#    /health and a normal POST answer within 1 s every time;
#  - refusals come before the body: wrong token -> 401, missing signature
#    -> 401, Content-Length over max_body_bytes -> 413, all without sending a
#    body byte;
#  - 100 held uploads (chunked, and with Content-Length) against an 8 MiB
#    max_pending_bytes: those beyond it get 503, the relay's RSS grows by less
#    than the limit plus the documented margin; with signing_secret only,
#    unsigned bodies hold at most max_unverified_bytes;
#  - normal requests work afterwards; the shed/timed-out counters count;
#    bad values of the new settings are named.
. "$(dirname "$0")/lib.sh"
# python3 on PATH may be a wrapper that takes seconds to start (a pyenv shim
# on a loaded machine): resolve the interpreter once, for the tool and for
# lib.sh's free_port.
mkdir -p "$TEST_TMP/bin"
ln -sf "$(python3 -c 'import sys; print(sys.executable)')" "$TEST_TMP/bin/python3"
PATH="$TEST_TMP/bin:$PATH"
SLOW=(python3 "$(cd "$(dirname "$0")/../tools" && pwd)/slow_http.py")
setup_db
export FLOOD_TOKEN="flood-$RANDOM$RANDOM"
SECRET="flood-secret-$RANDOM"
CROWD_PORT=$(free_port)
HOOKS_PORT=$(free_port)
SIGNED_PORT=$(free_port)
AUTH=(-H "Authorization: Bearer $FLOOD_TOKEN")
MIB=1048576
for t in crowd hooks signed; do sql "SELECT pgtrickle.create_inbox('$t')" >/dev/null; done
# crowd: 64 connections at most, for the slow-header flood
sql "SELECT pgtrickle.set_relay_inbox('wh-crowd', 'crowd', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$CROWD_PORT\",
     \"auth_token\":\"\${env:FLOOD_TOKEN}\",\"max_connections\":64,\"request_timeout_ms\":3000}')" >/dev/null
# hooks: 8 MiB of bodies at most, for the held uploads
sql "SELECT pgtrickle.set_relay_inbox('wh-hooks', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$HOOKS_PORT\",
     \"auth_token\":\"\${env:FLOOD_TOKEN}\",\"max_pending_bytes\":$((8 * MIB)),\"max_body_bytes\":$((2 * MIB)),
     \"max_connections\":256,\"request_timeout_ms\":5000}')" >/dev/null
# signed: the signature is the only check; unsigned bodies may hold 2 MiB
sql "SELECT pgtrickle.set_relay_inbox('wh-signed', 'signed', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$SIGNED_PORT\",
     \"signing_secret\":\"$SECRET\",\"max_pending_bytes\":$((8 * MIB)),\"max_unverified_bytes\":$((2 * MIB)),
     \"max_body_bytes\":$((2 * MIB)),\"max_connections\":256,\"request_timeout_ms\":5000}')" >/dev/null
# bad values, each named by its key
sql "SELECT pgtrickle.set_relay_inbox('cfg-timeout', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:1\",\"request_timeout_ms\":50}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('cfg-unverified', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:1\",\"max_unverified_bytes\":\"lots\"}')" >/dev/null

out=$("$RELAY_BIN" --postgres-url "$DB_URL" --metrics-request-timeout 50ms 2>&1); rc=$?
is "$rc" 2 "--metrics-request-timeout 50ms -> exit 2"
like "$out" '--metrics-request-timeout: expected a duration from 100ms to 1h' "... naming the flag"
out=$(PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT=soon "$RELAY_BIN" --postgres-url "$DB_URL" 2>&1); rc=$?
like "$rc $out" '^2 .*PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT: expected a duration' "a bad PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT is named"

RELAY_LOG_LEVEL=info start_relay r1 --metrics-request-timeout 3s
MPORT=$(relay_port r1)
PID=$(relay_pid r1)
for p in $CROWD_PORT $HOOKS_PORT $SIGNED_PORT; do
    wait_until 10 "[ \"\$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$p/inbox)\" = 405 ]" \
        || bail "receiver on $p did not start"
done
log=$(relay_log r1)
like "$log" '\[cfg-timeout\] pipeline not started: source.request_timeout_ms' "request_timeout_ms below 100 is named"
like "$log" '\[cfg-unverified\] pipeline not started: source.max_unverified_bytes' "a max_unverified_bytes that is not a number is named"

rows() { sql "SELECT count(*) FROM pgtrickle.$1"; }
position() { http_get r1 /status | jq -r ".pipelines[] | select(.name == \"$1\") | .source.position.$2"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$PID/status"; }
sign() { printf '%s.%s' "$1" "$2" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.*= //'; }

# --- the request deadline -------------------------------------------------------------
# 5 clients per listener, one header line a second: never idle, never done.
"${SLOW[@]}" headers --port "$MPORT" --clients 5 --interval 1 --duration 5 >"$TEST_TMP/dl-metrics.json" &
dl1=$!
"${SLOW[@]}" headers --port "$CROWD_PORT" --path /inbox --clients 5 --interval 1 --duration 5 >"$TEST_TMP/dl-crowd.json" &
dl2=$!
wait $dl1 $dl2
for l in metrics crowd; do
    is "$(jq -c '[.closed, .answered, .open_at_end]' "$TEST_TMP/dl-$l.json")" '[5,0,0]' \
       "$l: 5 slow clients sending a header line every second are all disconnected, unanswered"
    like "$(jq -c '[.lifetimes_ms[] | select(. >= 2900 and . <= 4500)] | length' "$TEST_TMP/dl-$l.json")" '^5$' \
         "$l: ... 3 s after connecting (the request deadline), not at the idle timeout: $(jq -c .lifetimes_ms "$TEST_TMP/dl-$l.json")"
done
like "$(metric r1 'pgtrickle_relay_http_requests_timed_out_total{server="metrics"}')" '^[1-9][0-9]*$' \
     "pgtrickle_relay_http_requests_timed_out_total counts the metrics server's"
like "$(metric r1 'pgtrickle_relay_http_requests_timed_out_total{server="webhook",pipeline="wh-crowd"}')" '^[1-9][0-9]*$' \
     "... and the receiver's, labelled with its pipeline"

# --- 100 slow clients against each listener, for 12 s ----------------------------------
"${SLOW[@]}" headers --port "$MPORT" --clients 100 --interval 2 --duration 13 --reconnect-delay 0.5 \
    >"$TEST_TMP/flood-metrics.json" &
f1=$!
"${SLOW[@]}" headers --port "$CROWD_PORT" --path /inbox --clients 100 --interval 2 --duration 13 \
    --reconnect-delay 0.5 >"$TEST_TMP/flood-crowd.json" &
f2=$!
sleep 0.5
end=$(( $(now_ms) + 12000 ))
n=0; health_bad=(); post_bad=()
while [ "$(now_ms)" -lt "$end" ]; do
    n=$((n + 1))
    h=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 1 "http://127.0.0.1:$MPORT/health")
    [[ "$h" =~ ^200\ 0\. ]] || health_bad+=("$h")
    p=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' --max-time 1 "${AUTH[@]}" \
        -H "Idempotency-Key: flood-$n" -d "{\"n\":$n}" "http://127.0.0.1:$CROWD_PORT/inbox")
    [[ "$p" =~ ^200\ 0\. ]] || post_bad+=("$p")
    sleep 0.2
done
wait $f1 $f2
is "${#health_bad[@]}" 0 "/health answered 200 within 1 s to all $n probes during 12 s of 100 slow clients (${health_bad[*]:-})"
is "${#post_bad[@]}" 0 "a normal POST to the receiver got 200 within 1 s, $n times, under 100 slow clients (${post_bad[*]:-})"
is "$(rows crowd)" "$n" "... and each is in the inbox"
for l in metrics crowd; do
    like "$(jq -c '[.answered, (.opened > 100)]' "$TEST_TMP/flood-$l.json")" '^\[0,true\]$' \
         "$l: the slow clients were never answered and had to reconnect ($(jq -c '{opened, closed}' "$TEST_TMP/flood-$l.json"))"
done
like "$(metric r1 'pgtrickle_relay_http_connections_shed_total{server="metrics"}')" '^[1-9][0-9]*$' \
     "pgtrickle_relay_http_connections_shed_total counts the metrics server's shed connections"
like "$(metric r1 'pgtrickle_relay_http_connections_shed_total{server="webhook",pipeline="wh-crowd"}')" '^[1-9][0-9]*$' \
     "... and the receiver's"

# --- refused before any body byte is sent ------------------------------------------------
# Headers only, a large Content-Length, no body: the answer must come anyway.
before() { # before <name> <slow_http.py upload arguments...>, in the background
    local name=$1; shift
    "${SLOW[@]}" upload --clients 1 --hold 2 --send 0 "$@" >"$TEST_TMP/before-$name.json" &
    BEFORE_PIDS+=($!)
}
BEFORE_PIDS=()
answered_at_once() { jq -c '[.statuses, (.answer_ms | max // 9999) < 1000]' "$TEST_TMP/before-$1.json"; }
old=$(( $(date +%s) - 3600 ))
before token --port "$HOOKS_PORT" -H 'Authorization: Bearer wrong' --content-length $MIB
before size --port "$HOOKS_PORT" "${AUTH[@]}" --content-length $((3 * MIB))
before nosig --port "$SIGNED_PORT" --content-length $MIB
before stale --port "$SIGNED_PORT" -H "X-Pgtrickle-Timestamp: $old" \
    -H "X-Pgtrickle-Signature: sha256=$(sign "$old" x)" --content-length $MIB
wait "${BEFORE_PIDS[@]}"
is "$(answered_at_once token)" '[{"401":1},true]' "wrong bearer token -> 401 before the body is sent"
is "$(answered_at_once size)" '[{"413":1},true]' "Content-Length over max_body_bytes -> 413 before the body is sent"
is "$(answered_at_once nosig)" '[{"401":1},true]' \
   "signing_secret only, no signature headers -> 401 before the body is sent"
is "$(answered_at_once stale)" '[{"401":1},true]' "... a stale timestamp -> 401 before the body is sent"

# --- held uploads against max_pending_bytes ------------------------------------------------
# Warm up (the first authenticated POST loads code), then measure.
is "$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" -d '{"warm":1}' "http://127.0.0.1:$HOOKS_PORT/inbox")" 200 "a normal POST -> 200"
base=$(rss_kb)
: >"$TEST_TMP/rss"
( while [ ! -f "$TEST_TMP/rss.stop" ]; do rss_kb >>"$TEST_TMP/rss"; position wh-hooks body_bytes >>"$TEST_TMP/held"; sleep 0.05; done ) &
sampler=$!
# 100 chunked uploads of 512 KiB, then silence (each holds a 1 MiB buffer when admitted)
"${SLOW[@]}" upload --port "$HOOKS_PORT" --clients 100 "${AUTH[@]}" --send $((MIB / 2)) --chunked --hold 7 \
    >"$TEST_TMP/up-chunked.json"
# 100 uploads declaring 1 MiB, sending 256 KiB: reserved whole when the headers arrive
"${SLOW[@]}" upload --port "$HOOKS_PORT" --clients 100 "${AUTH[@]}" --send $((MIB / 4)) --content-length $MIB --hold 7 \
    >"$TEST_TMP/up-length.json"
touch "$TEST_TMP/rss.stop"; wait $sampler
chunked_503=$(jq '.statuses["503"] // 0' "$TEST_TMP/up-chunked.json")
length_503=$(jq '.statuses["503"] // 0' "$TEST_TMP/up-length.json")
ok "$([ "$chunked_503" -ge 85 ] && echo 0 || echo 1)" \
   "chunked uploads beyond max_pending_bytes get 503 ($(jq -c .statuses "$TEST_TMP/up-chunked.json"); 8 fit)"
ok "$([ "$length_503" -ge 90 ] && echo 0 || echo 1)" \
   "uploads whose Content-Length does not fit get 503 ($(jq -c .statuses "$TEST_TMP/up-length.json"); 8 fit)"
is "$(jq '[.answer_ms[] | select(. > 1000)] | length' "$TEST_TMP/up-length.json")" 0 "... at once, from the headers"
like "$(jq -c '[.closed_ms[] | select(. < 4900 or . > 6500)]' "$TEST_TMP/up-length.json")" '^\[\]$' \
     "the admitted uploads that never finish are cut at the 5 s deadline"
max_rss=$(sort -n "$TEST_TMP/rss" | tail -1)
max_held=$(grep -E '^[0-9]+$' "$TEST_TMP/held" | sort -n | tail -1)
# The documented margin: 64 KiB per connection (libmicrohttpd's buffer and
# ours) for 64 of them, plus 4 MiB of allocator slack.
limit_kb=$(( (8 * MIB + 64 * 65536 + 4 * MIB) / 1024 ))
if [ "$(ldd "$RELAY_BIN" 2>/dev/null | grep -c libasan)" != 0 ]; then
    # AddressSanitizer keeps freed memory in quarantine and pads allocations.
    pass "RSS grew by $((max_rss - base)) kB (not checked under AddressSanitizer) # SKIP"
else
    ok "$([ $((max_rss - base)) -le $limit_kb ] && echo 0 || echo 1)" \
       "RSS grew by $((max_rss - base)) kB at most, under max_pending_bytes + margin ($limit_kb kB)"
fi
ok "$([ "${max_held:-0}" -le $((8 * MIB)) ] && echo 0 || echo 1)" "body_bytes in /status never passed max_pending_bytes (max $max_held)"
wait_until 5 '[ "$(position wh-hooks body_bytes)" = 0 ]'
is "$(position wh-hooks body_bytes)" 0 "every reservation is returned once the uploads are gone"
is "$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" -H 'Idempotency-Key: after' -d '{"after":1}' \
      "http://127.0.0.1:$HOOKS_PORT/inbox")" 200 "a normal POST afterwards -> 200"
is "$(sql "SELECT count(*) FROM pgtrickle.hooks WHERE event_id = 'after'")" 1 "... stored"

# --- signing_secret only: unsigned bodies share max_unverified_bytes ---------------------------
ts=$(date +%s)
: >"$TEST_TMP/unv"
( while [ ! -f "$TEST_TMP/unv.stop" ]; do position wh-signed unverified_body_bytes >>"$TEST_TMP/unv"; sleep 0.1; done ) &
sampler=$!
"${SLOW[@]}" upload --port "$SIGNED_PORT" --clients 100 -H "X-Pgtrickle-Timestamp: $ts" \
    -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" forged)" --send $((MIB / 4)) --chunked --hold 7 >"$TEST_TMP/up-signed.json"
touch "$TEST_TMP/unv.stop"; wait $sampler
signed_503=$(jq '.statuses["503"] // 0' "$TEST_TMP/up-signed.json")
ok "$([ "$signed_503" -ge 90 ] && echo 0 || echo 1)" \
   "unsigned uploads beyond max_unverified_bytes (2 MiB) get 503 ($(jq -c .statuses "$TEST_TMP/up-signed.json"))"
max_unv=$(grep -E '^[0-9]+$' "$TEST_TMP/unv" | sort -n | tail -1)
ok "$([ "${max_unv:-0}" -gt 0 ] && [ "${max_unv:-0}" -le $((2 * MIB)) ] && echo 0 || echo 1)" \
   "unverified_body_bytes in /status stayed within max_unverified_bytes (max $max_unv)"
body='{"event_type":"signed.ok","n":1}'
ts=$(date +%s)
is "$(curl -s -o /dev/null -w '%{http_code}' -H "X-Pgtrickle-Timestamp: $ts" -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" "$body")" \
      -H 'Idempotency-Key: signed-after' --data-binary "$body" "http://127.0.0.1:$SIGNED_PORT/inbox")" 200 \
   "a correctly signed POST afterwards -> 200"
is "$(rows signed)" 1 "... and only it is in the inbox"
is "$(http_code r1 /metrics)" 200 "/metrics answers afterwards"

stop_relay r1
done_testing
