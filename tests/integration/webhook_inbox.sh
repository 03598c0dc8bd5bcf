#!/usr/bin/env bash
# Webhook receiver -> inbox, driven by real HTTP clients (curl and
# tests/tools/webhook_send) against the relay's own receiver, on a private
# PostgreSQL that the test stops and starts: Idempotency-Key dedup, bearer
# token and HMAC signature checks, 413/400/404/405, JSON object / array /
# text bodies, 200 only after the inbox COMMIT, 503 while PostgreSQL is
# down and 200 again after it returns, 1 000 concurrent POSTs -> 1 000 rows,
# a stalled inbox (the request in the batch waits for the COMMIT, queued and
# new requests get 503, a full queue gets 503), /status and metrics, config
# errors.
. "$(dirname "$0")/webhook_lib.sh"
start_private_pg
setup_db
export WH_IN_TOKEN="in-tok-$RANDOM$RANDOM"
SECRET="in-secret-$RANDOM"
PORT=$(free_port)
SPORT=$(free_port)
BUSY_PORT=$(free_port)
STALL_PORT=$(free_port)
STALL_URL="http://127.0.0.1:$STALL_PORT/inbox"
URL="http://127.0.0.1:$PORT/inbox"
SURL="http://127.0.0.1:$SPORT/signed"
AUTH=(-H "Authorization: Bearer $WH_IN_TOKEN")
sql "SELECT pgtrickle.create_inbox('hooks')" >/dev/null
sql "SELECT pgtrickle.create_inbox('signed')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('wh-in', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$PORT\",
     \"auth_token\":\"\${env:WH_IN_TOKEN}\",\"batch_size\":200}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('wh-signed', 'signed', '{\"type\":\"http\",\"listen_addr\":\"127.0.0.1:$SPORT\",
     \"path\":\"/signed\",\"signing_secret\":\"$SECRET\",\"auth_header\":\"X-Api-Key\",\"auth_value\":\"key-$SECRET\",
     \"element_key_field\":\"id\"}')" >/dev/null
sql "SELECT pgtrickle.create_inbox('stall')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('wh-stall', 'stall', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$STALL_PORT\",
     \"busy_timeout_ms\":2000,\"max_pending_bytes\":1024}')" >/dev/null
# config errors, each named by key
sql "SELECT pgtrickle.set_relay_inbox('cfg-addr', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"nope\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('cfg-key', 'hooks', '{\"type\":\"webhook\",\"listen_adr\":\"127.0.0.1:1\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('cfg-pair', 'hooks', '{\"type\":\"webhook\",\"auth_header\":\"X-Key\"}')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('cfg-path', 'hooks', '{\"type\":\"webhook\",\"path\":\"inbox\"}')" >/dev/null
# a port somebody else holds: the source is unavailable, the others run
python3 -c "import socket,time; s=socket.socket(); s.bind(('127.0.0.1',$BUSY_PORT)); s.listen(); time.sleep(120)" &
RELAY_PIDS[busy]=$!
sql "SELECT pgtrickle.create_inbox('busy')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('wh-busy', 'busy', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$BUSY_PORT\"}')" >/dev/null

start_relay r1
wait_until 10 "[ \"\$(curl -s -o /dev/null -w '%{http_code}' $URL)\" = 405 ]"
rows() { sql "SELECT count(*) FROM pgtrickle.${2:-hooks} ${1:+WHERE $1}"; }
post() { curl -s -o "$TEST_TMP/resp" -w '%{http_code}' --max-time 20 -X POST "$@"; }

# --- Idempotency-Key: the same POST twice -> one row ----------------------------------
body='{"event_type":"order.created","order_id":7,"amount":12.50}'
c1=$(post "${AUTH[@]}" -H 'Content-Type: application/json' -H 'Idempotency-Key: order-7' \
     -H 'traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' -d "$body" "$URL")
is "$c1" 200 "POST with Idempotency-Key -> 200"
is "$(jq -c '[.status, .events, .event_ids]' "$TEST_TMP/resp")" '["accepted",1,["order-7"]]' "the answer names the event id"
c2=$(post "${AUTH[@]}" -H 'Content-Type: application/json' -H 'Idempotency-Key: order-7' -d "$body" "$URL")
is "$c2" 200 "the same POST again -> 200 (already stored)"
is "$(rows "event_id = 'order-7'")" 1 "one row for the two POSTs"
is "$(sql "SELECT event_type || '|' || source || '|' || trace_id || '|' || (payload->>'amount') FROM pgtrickle.hooks WHERE event_id = 'order-7'")" \
   "order.created|webhook|00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01|12.50" \
   "event_type from the payload, source webhook, trace_id from traceparent, number kept as sent"
wait_until 5 '[ "$(metric r1 "pgtrickle_relay_dedup_skipped_total{pipeline=\"wh-in\"}")" = 1 ]'
is "$(metric r1 'pgtrickle_relay_dedup_skipped_total{pipeline="wh-in"}')" 1 "the duplicate is counted as dedup_skipped"

# --- auth ------------------------------------------------------------------------------
is "$(post -H 'Authorization: Bearer wrong' -H 'Idempotency-Key: bad-auth' -d '{"x":1}' "$URL")" 401 "wrong token -> 401"
is "$(post -H 'Idempotency-Key: bad-auth' -d '{"x":1}' "$URL")" 401 "missing token -> 401"
like "$(curl -s -D - -o /dev/null -X POST -d '{}' "$URL")" 'WWW-Authenticate: Bearer' "401 carries WWW-Authenticate: Bearer"
is "$(rows "event_id = 'bad-auth'")" 0 "no row for unauthorised requests"

# --- sizes, methods, paths, bodies ---------------------------------------------------------
head -c $((11 * 1024 * 1024)) /dev/zero | tr '\0' 'a' | sed 's/^/{"big":"/; s/$/"}/' >"$TEST_TMP/big.json"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: big' --data-binary @"$TEST_TMP/big.json" "$URL")" 413 "11 MiB body -> 413"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: big' -H 'Transfer-Encoding: chunked' --data-binary @"$TEST_TMP/big.json" "$URL")" 413 \
   "11 MiB chunked body (no Content-Length) -> 413"
python3 -c "print('[' + ','.join(['{}'] * 100001) + ']')" >"$TEST_TMP/many.json"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: many' --data-binary @"$TEST_TMP/many.json" "$URL")" 413 "an array of 100 001 elements -> 413"
is "$(rows "event_id = 'big' OR event_id LIKE 'many%'")" 0 "no row for too-large bodies"
is "$(curl -s -o /dev/null -w '%{http_code}' "${AUTH[@]}" "$URL")" 405 "GET -> 405"
like "$(curl -s -D - -o /dev/null -X PUT "${AUTH[@]}" -d '{}' "$URL")" 'Allow: POST' "405 carries Allow: POST"
is "$(post "${AUTH[@]}" -d '{}' "http://127.0.0.1:$PORT/elsewhere")" 404 "another path -> 404"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/json' -H 'Idempotency-Key: broken' -d '{"a":' "$URL")" 400 "invalid JSON -> 400"
like "$(cat "$TEST_TMP/resp")" '"error":"invalid JSON' "the 400 says why"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/json' -d '' "$URL")" 400 "empty body -> 400"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/json' -d '[]' "$URL")" 400 "empty array -> 400"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/json' -d '42' "$URL")" 400 "a JSON scalar declared as JSON -> 400"
printf '\xff\xfe binary' >"$TEST_TMP/bin"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/octet-stream' --data-binary @"$TEST_TMP/bin" "$URL")" 400 "a body that is neither JSON nor UTF-8 -> 400"
# A raw NUL byte is in no JSON text (jansson would load {"a":1<NUL>,...} all
# the same) and in no inbox row (jsonb has no U+0000): refused up front.
printf '{"a":1\0,"b":2}' >"$TEST_TMP/nul.json"
is "$(post "${AUTH[@]}" -H 'Content-Type: application/json' -H 'Idempotency-Key: nul-json' --data-binary @"$TEST_TMP/nul.json" "$URL")" 400 \
   "a JSON body with a raw NUL byte after a number -> 400"
like "$(cat "$TEST_TMP/resp")" '"error":"invalid JSON' "the 400 says it is not JSON"
printf '{"a":1\0}' >"$TEST_TMP/nul2.json"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: nul-undeclared' --data-binary @"$TEST_TMP/nul2.json" "$URL")" 400 \
   "the same without a JSON content type -> 400 (not stored as text either)"
printf 'text\0with a NUL' >"$TEST_TMP/nul.txt"
is "$(post "${AUTH[@]}" -H 'Content-Type: text/plain' -H 'Idempotency-Key: nul-text' --data-binary @"$TEST_TMP/nul.txt" "$URL")" 400 \
   "a text body with a NUL byte -> 400"
is "$(rows "event_id LIKE 'nul-%'")" 0 "no row for them"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: after-nul' -d '{"still":"working"}' "$URL")" 200 "the receiver takes the next request"
is "$(rows "event_id = 'after-nul'")" 1 "and stores it"
is "$(rows "event_id = 'broken'")" 0 "no row for rejected bodies"

is "$(post "${AUTH[@]}" -H 'Idempotency-Key: arr' -d '[{"n":1},{"n":2},{"n":3,"x":[1,{"y":"]"}]}]' "$URL/orders")" 200 "a JSON array -> 200"
is "$(sql "SELECT string_agg(event_id || '=' || (payload->>'n') || '@' || event_type, ' ' ORDER BY event_id) FROM pgtrickle.hooks WHERE event_id LIKE 'arr:%'")" \
   "arr:0=1@/inbox/orders arr:1=2@/inbox/orders arr:2=3@/inbox/orders" \
   "one event per element, dedup key <Idempotency-Key>:<i>, event_type falls back to the request path"
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: ignored-batch-key' -d '[{"dedup_key":"own-1","v":1},{"dedup_key":"own-2","v":2}]' "$URL")" 200 \
   "array whose elements carry dedup_key -> 200"
is "$(sql "SELECT string_agg(event_id, ' ' ORDER BY event_id) FROM pgtrickle.hooks WHERE event_id LIKE 'own-%'")" "own-1 own-2" \
   "elements carrying dedup_key keep it as their event id"
is "$(post "${AUTH[@]}" -H 'Content-Type: text/plain' -H 'Idempotency-Key: txt' -d 'plain text, not JSON' "$URL")" 200 "a text body -> 200"
is "$(sql "SELECT payload::text FROM pgtrickle.hooks WHERE event_id = 'txt'")" '"plain text, not JSON"' "stored as a JSON string, not dropped"
post "${AUTH[@]}" -d '{"k":"no key"}' "$URL" >/dev/null
like "$(jq -r '.event_ids[0]' "$TEST_TMP/resp")" '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$' "without Idempotency-Key the event id is a UUID v4"
is "$(rows "event_id = '$(jq -r '.event_ids[0]' "$TEST_TMP/resp")'")" 1 "... and that is the row's event_id"

# --- 200 only after the inbox COMMIT ----------------------------------------------------------
"${PSQL[@]}" -d "$TEST_DB" -c "BEGIN; LOCK TABLE pgtrickle.hooks IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(2.5); COMMIT;" >/dev/null &
locker=$!
sleep 0.5
t0=$(now_ms)
code=$(post "${AUTH[@]}" -H 'Idempotency-Key: after-commit' -d '{"c":1}' "$URL")
t1=$(now_ms)
seen=$(rows "event_id = 'after-commit'")
wait $locker
is "$code" 200 "POST while the inbox table is locked -> 200 eventually"
ok "$([ $((t1 - t0)) -ge 1500 ] && echo 0 || echo 1)" "... but only after the lock was released ($((t1 - t0)) ms)"
is "$seen" 1 "the row is committed when the 200 arrives"

# --- signatures ----------------------------------------------------------------------------------
sign() { printf '%s.%s' "$1" "$2" | openssl dgst -sha256 -hmac "$SECRET" | sed 's/^.*= //'; }
KEY=(-H "X-Api-Key: key-$SECRET")
sbody='{"event_type":"signed.event","v":1}'
ts=$(date +%s)
is "$(post "${KEY[@]}" -H "X-Pgtrickle-Timestamp: $ts" -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" "$sbody")" -H 'Idempotency-Key: s1' -d "$sbody" "$SURL")" 200 \
   "valid signature (openssl-computed) -> 200"
is "$(post "${KEY[@]}" -H "X-Pgtrickle-Timestamp: $ts" -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" "${sbody}x")" -H 'Idempotency-Key: s2' -d "$sbody" "$SURL")" 401 "signature of another body -> 401"
old=$((ts - 1000))
is "$(post "${KEY[@]}" -H "X-Pgtrickle-Timestamp: $old" -H "X-Pgtrickle-Signature: sha256=$(sign "$old" "$sbody")" -H 'Idempotency-Key: s3' -d "$sbody" "$SURL")" 401 "stale timestamp -> 401"
like "$(cat "$TEST_TMP/resp")" 'stale' "the 401 says the timestamp is stale"
is "$(post "${KEY[@]}" -H 'Idempotency-Key: s4' -d "$sbody" "$SURL")" 401 "unsigned -> 401"
is "$(post -H "X-Pgtrickle-Timestamp: $ts" -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" "$sbody")" -H 'Idempotency-Key: s5' -d "$sbody" "$SURL")" 401 \
   "auth_header/auth_value: a signed request without X-Api-Key -> 401"
abody='[{"id":"custom-1"},{"dedup_key":"not-used","x":2}]'
is "$(post "${KEY[@]}" -H "X-Pgtrickle-Timestamp: $ts" -H "X-Pgtrickle-Signature: sha256=$(sign "$ts" "$abody")" -H 'Idempotency-Key: sa' -d "$abody" "$SURL")" 200 \
   "a signed array -> 200"
is "$(sql "SELECT string_agg(event_id, ' ' ORDER BY event_id) FROM pgtrickle.signed")" "custom-1 s1 sa:1" \
   "element_key_field \"id\": elements with an id keep it, the others get <Idempotency-Key>:<i>; only signed events stored"

# --- 1 000 concurrent POSTs -> 1 000 rows -------------------------------------------------------------
t0=$(now_ms)
res=$("$WEBHOOK_SEND" --url "$URL" --count 1000 --concurrency 1000 --key-prefix conc --header "Authorization: Bearer $WH_IN_TOKEN")
t1=$(now_ms)
diag "1000 concurrent POSTs: $res in $((t1 - t0)) ms"
is "$res" '{"200":1000}' "1 000 concurrent POSTs all answered 200"
is "$(rows "event_id LIKE 'conc-%'")" 1000 "1 000 rows"
is "$(sql "SELECT count(DISTINCT (payload->>'i')::int) FROM pgtrickle.hooks WHERE event_id LIKE 'conc-%' AND event_id = 'conc-' || (payload->>'i')")" 1000 \
   "each row holds its own request's body"

# --- a stalled inbox ---------------------------------------------------------------------------------------
# The inbox table disappears: the batch in hand cannot commit, so its request
# waits; a new request is queued, another finds the queue full (503); once
# the pipeline has not taken requests for busy_timeout_ms the queued one and
# new ones get 503. The table comes back: the waiting request gets its 200.
stall_status() { http_get r1 /status | jq -r ".pipelines[] | select(.name == \"wh-stall\") | .source.position.$1"; }
pad=$(head -c 800 /dev/zero | tr '\0' 'p')
sql "ALTER TABLE pgtrickle.stall RENAME TO stall_away" >/dev/null
(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'Idempotency-Key: stall-a' -d '{"a":1}' "$STALL_URL" >"$TEST_TMP/stall-a") &
stall_a=$!
wait_until 10 '[ "$(stall_status batch_requests)" = 1 ]'
(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H 'Idempotency-Key: stall-b' -d "{\"b\":\"$pad\"}" "$STALL_URL" >"$TEST_TMP/stall-b") &
stall_b=$!
wait_until 10 '[ "$(stall_status queued_requests)" = 1 ]'
t0=$(now_ms)
is "$(post -H 'Idempotency-Key: stall-c' -d "{\"c\":\"$pad\"}" "$STALL_URL")" 503 "queue full (max_pending_bytes) -> 503"
like "$(cat "$TEST_TMP/resp")" 'too many requests are waiting' "... at once, saying why ($(( $(now_ms) - t0 )) ms)"
wait $stall_b
is "$(cat "$TEST_TMP/stall-b")" 503 "a queued request gets 503 once the pipeline has not taken requests for busy_timeout_ms"
t0=$(now_ms)
is "$(post -H 'Idempotency-Key: stall-d' -d '{"d":1}' "$STALL_URL")" 503 "a new request meanwhile -> 503"
ok "$([ $(( $(now_ms) - t0 )) -lt 800 ] && echo 0 || echo 1)" "... answered at once"
like "$(http_get r1 /health)" '"pipeline":"wh-stall","reason":"sink unavailable"' "/health: the stalled pipeline is degraded"
ok "$(kill -0 $stall_a 2>/dev/null && echo 0 || echo 1)" "the request in the uncommitted batch is still waiting"
sql "ALTER TABLE pgtrickle.stall_away RENAME TO stall" >/dev/null
wait $stall_a
is "$(cat "$TEST_TMP/stall-a")" 200 "once the inbox is back the waiting request gets 200"
is "$(sql "SELECT string_agg(event_id, ' ') FROM pgtrickle.stall")" "stall-a" "only that request's event is stored"
is "$(post -H 'Idempotency-Key: stall-e' -d '{"e":1}' "$STALL_URL")" 200 "new requests are accepted again"

# --- /status and metrics ---------------------------------------------------------------------------------
wh_status() { http_get r1 /status | jq -c '.pipelines[] | select(.name == "wh-in")'; }
# the position is refreshed by the worker at least once a second
wait_until 5 '[ "$(wh_status | jq -r ".source.position.responses[\"200\"]")" -ge 1000 ]'
st=$(wh_status)
is "$(jq -r '.direction + " " + .source.type + " " + .sink.type' <<<"$st")" "reverse webhook pg-inbox" "/status lists the reverse pipeline"
is "$(jq -r '.source.position.listen_addr' <<<"$st")" "127.0.0.1:$PORT" "/status shows the listen address"
ok "$([ "$(jq -r '.source.position.responses["200"]' <<<"$st")" -ge 1000 ] && [ "$(jq -r '.source.position.responses["401"]' <<<"$st")" -ge 3 ] && echo 0 || echo 1)" \
   "/status counts answers by status"
ok "$([ "$(metric r1 'pgtrickle_relay_messages_consumed_total{pipeline="wh-in",source="webhook"}')" -ge 1010 ] && echo 0 || echo 1)" "consumed counter"
is "$(http_get r1 /status | grep -c "$WH_IN_TOKEN\|$SECRET")" 0 "no secret in /status"

# --- config errors and a busy port ---------------------------------------------------------------------------
log=$(relay_log r1)
like "$log" '\[cfg-addr\] pipeline not started: source.listen_addr' "bad listen_addr named"
like "$log" '\[cfg-key\] pipeline not started: source: unknown key "listen_adr"|\[cfg-key\] pipeline not started: .*listen_adr' "unknown key named"
like "$log" '\[cfg-pair\] pipeline not started: source.auth_value' "auth_header without auth_value named"
like "$log" '\[cfg-path\] pipeline not started: source.path' "relative path named"
wait_until 10 'relay_log r1 | grep -q "\[wh-busy\].*Address already in use"'
like "$(relay_log r1 | grep '\[wh-busy\]' | grep -m1 'in use')" "source.listen_addr 127.0.0.1:$BUSY_PORT: Address already in use" "a port in use is reported with the key"
like "$(http_get r1 /health)" '"pipeline":"wh-busy","reason":"source unavailable"' "... and the pipeline is degraded"
kill9_relay busy

# --- hot reload: a changed config restarts the receiver on the same port ----------------------------------------
sql "SELECT pgtrickle.set_relay_inbox('wh-in', 'hooks', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$PORT\",
     \"auth_token\":\"\${env:WH_IN_TOKEN}\",\"batch_size\":100}')" >/dev/null
wait_until 15 '[ "$(relay_log r1 | grep -c "\[wh-in\] webhook receiver listening")" -ge 2 ] && [ "$(post "${AUTH[@]}" -H "Idempotency-Key: after-reload" -d "{\"r\":1}" "$URL")" = 200 ]'
is "$(relay_log r1 | grep -c '\[wh-in\] webhook receiver listening')" 2 "a config change restarts the receiver"
is "$(rows "event_id = 'after-reload'")" 1 "... which accepts events on the same port"

# --- PostgreSQL stopped -> 503, then 200 after it returns -------------------------------------------------------
private_pg_stop
code=$(post "${AUTH[@]}" -H 'Idempotency-Key: during-outage' -d '{"o":1}' "$URL")
is "$code" 503 "PostgreSQL stopped -> 503"
like "$(curl -s -D - -o /dev/null --max-time 10 -X POST "${AUTH[@]}" -d '{"o":2}' "$URL")" 'Retry-After: 1' "503 carries Retry-After"
wait_until 10 '[ "$(http_code r1 /health)" = 503 ]'
like "$(http_get r1 /health)" '"pipeline":"wh-in","reason":"postgres connection lost"' "/health: degraded while PostgreSQL is down"
private_pg_start
wait_until 30 '[ "$(post "${AUTH[@]}" -H "Idempotency-Key: during-outage" -d "{\"o\":1}" "$URL")" = 200 ]'
is "$(post "${AUTH[@]}" -H 'Idempotency-Key: during-outage' -d '{"o":1}' "$URL")" 200 "after PostgreSQL returns the same POST -> 200"
is "$(rows "event_id = 'during-outage'")" 1 "stored exactly once"

stop_relay r1
is "$?" 0 "SIGTERM exits 0"
is "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL")" 000 "the listener is closed after shutdown"
done_testing
