#!/usr/bin/env bash
# Outbox -> webhook sink against a real recording HTTP endpoint
# (tests/tools/webhook_recv): per-event mode (each event once, headers,
# secrets from ${env:}, HMAC signatures verified independently, concurrent
# requests bounded by max_in_flight), batch mode (JSON array, deterministic
# batch key), full-refresh header, 503 then 200 (retried, Retry-After
# honoured, nothing acked before), 400/422 (dead-lettered per event, the
# pipeline goes on), a too-slow endpoint (timeout, retried), an endpoint that
# is down (sink unavailable, delivered once it is up), msgpack bodies, PUT,
# custom retry_on_status, redirects (not followed, retried), other 5xx,
# https with tls_ca (and without: certificate refused), and config errors
# that name the key.
. "$(dirname "$0")/webhook_lib.sh"
setup_db
export WH_TOKEN="tok-$RANDOM$RANDOM"
SECRET="whsec-$RANDOM-secret"
for ob in orders batched flaky bad slow down secure insecure; do
    sql "SELECT pgtrickle.enable_outbox('$ob')" >/dev/null
done
for r in ev batch flaky bad slow ctl; do start_recv "$r"; done
# an outbox whose name holds a newline: its dedup keys cannot be header values
sql "SELECT pgtrickle.enable_outbox(E'ctl\\nx')" >/dev/null
start_recv_tls tls
DOWN_PORT=$(free_port)

wh() { # wh <pipeline> <outbox> <sink json>
    sql "SELECT pgtrickle.set_relay_outbox('$1', '$2', NULL, '$3')" >/dev/null
}
wh ev orders "{\"type\":\"webhook\",\"url\":\"$(recv_url ev /events)\",\"batch_mode\":false,
  \"max_in_flight\":8,\"signing_secret\":\"$SECRET\",
  \"headers\":{\"Authorization\":\"Bearer \${env:WH_TOKEN}\",\"X-Team\":\"relay\"}}"
wh batch batched "{\"type\":\"webhook\",\"url\":\"$(recv_url batch)\",\"signing_secret\":\"$SECRET\"}"
wh flaky flaky "{\"type\":\"webhook\",\"url\":\"$(recv_url flaky)\",\"batch_mode\":false,\"method\":\"PUT\",
  \"headers\":{\"Content-Type\":\"application/vnd.test+json\"}}"
wh bad bad "{\"type\":\"webhook\",\"url\":\"$(recv_url bad)\",\"batch_mode\":false,\"retry_on_status\":[409,503]}"
wh tls-ok secure "{\"type\":\"webhook\",\"url\":\"$(recv_url tls /secure https)\",\"tls_ca\":\"$TEST_TMP/tls-cert.pem\"}"
sql "SELECT pgtrickle.set_relay_outbox('ctl-each', E'ctl\\nx', NULL, '{\"type\":\"webhook\",\"url\":\"$(recv_url ctl /each)\",\"batch_mode\":false}')" >/dev/null
sql "SELECT pgtrickle.set_relay_outbox('ctl-batch', E'ctl\\nx', NULL, '{\"type\":\"webhook\",\"url\":\"$(recv_url ctl /batch)\"}')" >/dev/null
wh tls-bad insecure "{\"type\":\"webhook\",\"url\":\"$(recv_url tls /insecure https)\"}"
wh slow slow "{\"type\":\"http\",\"url\":\"$(recv_url slow)\",\"batch_mode\":false,\"timeout_ms\":400}"
# config errors: each names its key
wh cfg-no-url orders '{"type":"webhook"}'
wh cfg-scheme orders '{"type":"webhook","url":"ftp://127.0.0.1/x"}'
wh cfg-method orders '{"type":"webhook","url":"http://127.0.0.1:1/","method":"GET"}'
wh cfg-retry orders '{"type":"webhook","url":"http://127.0.0.1:1/","retry_on_status":[200]}'
wh cfg-header orders '{"type":"webhook","url":"http://127.0.0.1:1/","headers":{"Idempotency-Key":"x"}}'
wh cfg-secret orders '{"type":"webhook","url":"http://127.0.0.1:1/","signing_secret":""}'
wh cfg-timeout orders '{"type":"webhook","url":"http://127.0.0.1:1/","timeout_ms":0}'
wh cfg-ca orders '{"type":"webhook","url":"https://127.0.0.1:1/","tls_ca":"'"$TEST_TMP"'/nonexistent/ca.pem"}'
wh cfg-format orders '{"type":"webhook","url":"http://127.0.0.1:1/","format":"xml"}'

# 80 events for the per-event pipeline, each answered after 150 ms: serially
# that is 12 s; with 8 requests in flight about 1.5 s.
recv_ctl ev "200 150"
write_rows orders 1 80
# 30 events for the batch pipeline, committed together.
seq 1 30 | awk '{ printf "SELECT pgtrickle.outbox_write(%cbatched%c, %c[{\"n\":%d}]%c);\n", 39, 39, 39, $1, 39 }' \
    | { echo "BEGIN;"; cat; echo "COMMIT;"; } | "${PSQL[@]}" -d "$TEST_DB" >/dev/null

t0=$(now_ms)
start_relay r1 --shutdown-timeout 3s
wait_until 20 '[ "$(recv_count ev)" -ge 80 ]'
elapsed=$(( $(jq -s 'map(.ts_ms) | max' "$(recv_log ev)") - t0 ))
diag "80 events, 150 ms each, max_in_flight 8: last answered ${elapsed} ms after the relay started"

# --- per-event mode ------------------------------------------------------------
EV=$(recv_log ev)
is "$(recv_count ev)" 80 "per-event mode: 80 events give 80 requests"
is "$(jq -r '.headers["idempotency-key"]' "$EV" | sort -u | wc -l | tr -d ' ')" 80 "every event arrives exactly once (80 distinct Idempotency-Keys)"
is "$(jq -r 'select(.headers["idempotency-key"] != (.body | fromjson | .dedup_key)) | 1' "$EV" | wc -l | tr -d ' ')" 0 \
   "Idempotency-Key equals the event's dedup key"
is "$(jq -r '.headers["idempotency-key"]' "$EV" | sort -t: -k2 -n | head -1)" "outbox_orders:1:0" "dedup key format {outbox_table}:{outbox_id}:{row_index}"
is "$(jq -r 'select(.headers.authorization != "Bearer '"$WH_TOKEN"'" or .headers["x-team"] != "relay") | 1' "$EV" | wc -l | tr -d ' ')" 0 \
   "configured headers sent on every request, \${env:WH_TOKEN} resolved"
is "$(jq -r 'select(.method != "POST" or .path != "/events" or .headers["content-type"] != "application/json") | 1' "$EV" | wc -l | tr -d ' ')" 0 \
   "POST to the configured path with Content-Type application/json"
like "$(jq -r '.headers["user-agent"]' "$EV" | head -1)" '^pgtrickle-relay/' "User-Agent names the relay"
is "$(jq -r 'select(.body | fromjson | (.payload.n | type) != "number" or .op != "insert") | 1' "$EV" | wc -l | tr -d ' ')" 0 "bodies are native envelopes"
is "$(jq -r 'has("headers") and (.headers | has("x-pgtrickle-full-refresh"))' "$EV" | sort -u)" false "no full-refresh header on ordinary events"
# Signatures, checked with Python's hmac (independent of the relay's code).
verify_sigs() { # verify_sigs <jsonl> -> "ok N" or the first failure
    python3 - "$1" "$SECRET" <<'PY'
import hashlib, hmac, json, sys, time
n = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    h = r["headers"]
    ts, sig = h.get("x-pgtrickle-timestamp"), h.get("x-pgtrickle-signature", "")
    want = "sha256=" + hmac.new(sys.argv[2].encode(), (ts + "." + r["body"]).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(sig, want) or abs(time.time() - int(ts)) > 120:
        print("bad signature:", ts, sig, want); sys.exit(0)
    n += 1
print("ok", n)
PY
}
is "$(verify_sigs "$EV")" "ok 80" "X-Pgtrickle-Signature = sha256=HMAC(secret, timestamp.body) on every request, fresh timestamp"
maxpar=$(jq -r '"\(.ts_ms - .delay_ms) 1\n\(.ts_ms) -1"' "$EV" | sort -k1,1n -k2,2n | awk '{ c += $2; if (c > m) m = c } END { print m }')
diag "per-event mode: at most $maxpar requests were in flight at once"
ok "$([ "$maxpar" -ge 4 ] && [ "$maxpar" -le 8 ] && echo 0 || echo 1)" "requests run concurrently, bounded by max_in_flight (8)"
ok "$([ "$elapsed" -lt 8000 ] && echo 0 || echo 1)" "80 slow requests took far less than 80 round trips (${elapsed} ms < 8000 ms; serial: 12000)"
is "$(metric r1 'pgtrickle_relay_messages_published_total{pipeline="ev",sink="webhook"}')" 80 "published counter"
wait_until 5 '[ "$(offset_of ev)" = 80 ]'
is "$(offset_of ev)" 80 "offset committed after every event was confirmed"

# full-refresh events (array payload) carry X-Pgtrickle-Full-Refresh: true
recv_ctl ev 200
sql "INSERT INTO pgtrickle.outbox_orders (inserted_count, payload) VALUES (2, '[{\"id\":1},{\"id\":2}]')" >/dev/null
wait_until 10 '[ "$(recv_count ev)" -ge 82 ]'
is "$(jq -r 'select((.body | fromjson | .is_full_refresh) == true) | .headers["x-pgtrickle-full-refresh"]' "$EV" | tr '\n' ' ')" "true true " \
   "full-refresh events carry X-Pgtrickle-Full-Refresh: true"

# --- batch mode ----------------------------------------------------------------
BA=$(recv_log batch)
wait_until 10 '[ "$(jq -s "map(.body | fromjson | length) | add" "'"$BA"'")" = 30 ]'
is "$(jq -r '.body | fromjson | type' "$BA" | sort -u)" "array" "batch mode: bodies are JSON arrays"
is "$(jq -r '.body | fromjson | .[].dedup_key' "$BA" | sort -u | wc -l | tr -d ' ')" 30 "30 events, each element carrying its own dedup key"
is "$(jq -r '.body | fromjson | .[].dedup_key' "$BA" | wc -l | tr -d ' ')" 30 "no event sent twice"
batch_key_ok=$(jq -c '[.headers["idempotency-key"], (.body | fromjson | map(.dedup_key) | join("\n"))]' "$BA" | while read -r pair; do
    key=$(jq -r '.[0]' <<<"$pair"); want="batch-$(jq -j '.[1]' <<<"$pair" | sha256sum | cut -d' ' -f1)"
    [ "$key" = "$want" ] && echo ok || echo "bad: $key != $want"
done | sort -u)
is "$batch_key_ok" "ok" "batch Idempotency-Key = batch-<sha256 of the dedup keys joined by newlines>"
is "$(verify_sigs "$BA" | cut -d' ' -f1)" "ok" "batch requests are signed too"
sql "INSERT INTO pgtrickle.outbox_batched (inserted_count, payload) VALUES (2, '[{\"id\":1},{\"id\":2}]')" >/dev/null
wait_until 10 '[ "$(jq -r "select(.headers[\"x-pgtrickle-full-refresh\"] == \"true\") | 1" "'"$BA"'" | wc -l)" -ge 1 ]'
is "$(jq -r 'select(.headers["x-pgtrickle-full-refresh"] == "true") | .body | fromjson | map(.is_full_refresh) | all' "$BA")" "true" \
   "a batch of full-refresh events carries X-Pgtrickle-Full-Refresh: true"
# a permanent error in batch mode dead-letters each event of the batch
recv_ctl batch 422
seq 1 3 | awk '{ printf "SELECT pgtrickle.outbox_write(%cbatched%c, %c[{\"bad\":%d}]%c);\n", 39, 39, 39, $1, 39 }' \
    | { echo "BEGIN;"; cat; echo "COMMIT;"; } | "${PSQL[@]}" -d "$TEST_DB" >/dev/null
wait_until 10 '[ "$(dlq_count batch)" -ge 3 ]'
is "$(dlq_count batch)" 3 "422 for a batch: each of its 3 events is dead-lettered on its own"
is "$(sql "SELECT count(DISTINCT dedup_key) FROM pgtrickle.relay_dlq WHERE pipeline = 'batch' AND error LIKE 'HTTP 422%' AND payload ? 'bad'")" 3 \
   "dead letters keep each event's dedup key, payload and the HTTP status"
recv_ctl batch 200
sql "SELECT pgtrickle.outbox_write('batched', '[{\"after\":1}]')" >/dev/null
wait_until 10 '[ "$(jq -r "select(.status == 200) | .body" "'"$BA"'" | grep -c after)" -ge 1 ]'
is "$(jq -r 'select(.status == 200) | .body' "$BA" | grep -c after)" 1 "the batch pipeline goes on after the dead letters"

# --- 503 then 200: retried (Retry-After honoured), nothing acked before ------------
FL=$(recv_log flaky)
recv_ctl flaky "503 0 1"
sql "SELECT pgtrickle.outbox_write('flaky', '[{\"f\":1},{\"f\":2},{\"f\":3}]')" >/dev/null
wait_until 15 '[ "$(recv_status_count flaky 503)" -ge 6 ]'
is "$(offset_of flaky)" 0 "while the endpoint answers 503 nothing is acknowledged"
gap=$(jq -s -r 'map(select(.headers["idempotency-key"] == "outbox_flaky:1:0")) | sort_by(.ts_ms) | .[1].ts_ms - .[0].ts_ms' "$FL")
diag "retry of a 503 with Retry-After: 1 came after $gap ms"
ok "$([ "$gap" -ge 950 ] && echo 0 || echo 1)" "Retry-After: 1 is honoured (next attempt >= 1 s later; backoff alone would be ~100 ms)"
like "$(http_get r1 /health)" '"degraded".*"pipeline":"flaky"' "/health reports the pipeline degraded while it retries"
recv_ctl flaky 200
wait_until 15 '[ "$(offset_of flaky)" = 1 ]'
is "$(offset_of flaky)" 1 "after the endpoint recovers the row is acknowledged"
is "$(jq -r 'select(.status == 200) | .headers["idempotency-key"]' "$FL" | sort | tr '\n' ' ')" \
   "outbox_flaky:1:0 outbox_flaky:1:1 outbox_flaky:1:2 " "each event delivered once with 200, same dedup keys as the failed attempts"
is "$(jq -r '.method' "$FL" | sort -u)" "PUT" "method PUT"
is "$(jq -r '.headers["content-type"]' "$FL" | sort -u)" "application/vnd.test+json" "a configured Content-Type replaces the default"
is "$(dlq_count flaky)" 0 "retried events are not dead-lettered"

# --- 400: dead letter, the pipeline continues ------------------------------------
recv_ctl bad 400
sql "SELECT pgtrickle.outbox_write('bad', '[{\"b\":1},{\"b\":2}]')" >/dev/null
wait_until 10 '[ "$(dlq_count bad)" -ge 2 ]'
is "$(dlq_count bad)" 2 "400 -> each event dead-lettered"
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'bad' LIMIT 1")" '^HTTP 400 from the webhook endpoint' "the dead letter names the status"
is "$(recv_status_count bad 400)" 2 "a permanent error is not retried"
recv_ctl bad 200
sql "SELECT pgtrickle.outbox_write('bad', '[{\"b\":3}]')" >/dev/null
wait_until 10 '[ "$(offset_of bad)" = 2 ]'
is "$(offset_of bad)" 2 "the pipeline moves on past the dead letters"
is "$(jq -r 'select(.status == 200) | .body | fromjson | .payload.b' "$(recv_log bad)")" 3 "the next event is delivered"
is "$(metric r1 'pgtrickle_relay_dead_lettered_total{pipeline="bad"}')" 2 "dead-lettered counter"
# retry_on_status [409,503]: 409 is retried; a redirect is retried, never
# followed; a 5xx outside the list is still transient.
BD=$(recv_log bad)
attempts() { jq -r "select(.status == $1 and .headers[\"idempotency-key\"] == \"outbox_bad:3:0\") | 1" "$BD" | wc -l | tr -d ' '; }
recv_ctl bad 409
sql "SELECT pgtrickle.outbox_write('bad', '[{\"b\":4}]')" >/dev/null
wait_until 10 '[ "$(attempts 409)" -ge 2 ]'
ok "$([ "$(attempts 409)" -ge 2 ] && echo 0 || echo 1)" "409 listed in retry_on_status: retried"
recv_ctl bad 307
wait_until 10 '[ "$(attempts 307)" -ge 1 ]'
last_error() { http_get r1 /status | jq -r ".pipelines[] | select(.name == \"$1\") | .last_error"; }
wait_until 5 'last_error bad | grep -q "HTTP 307"'
like "$(last_error bad)" "HTTP 307 from the webhook endpoint: redirects are not followed" "a redirect is reported (/status last_error), not followed"
recv_ctl bad 501
wait_until 10 '[ "$(attempts 501)" -ge 1 ]'
is "$(dlq_count bad)" 2 "neither 409, a 307 redirect nor a 501 is dead-lettered"
is "$(offset_of bad)" 2 "... nor acknowledged"
recv_ctl bad 200
wait_until 10 '[ "$(offset_of bad)" = 3 ]'
is "$(offset_of bad)" 3 "delivered once the endpoint answers 200"

# --- too slow: timeout, retried -------------------------------------------------------
recv_ctl slow "200 1500"
sql "SELECT pgtrickle.outbox_write('slow', '[{\"s\":1}]')" >/dev/null
wait_until 15 '[ "$(recv_count slow)" -ge 2 ]'
is "$(offset_of slow)" 0 "a request that times out is not acknowledged"
like "$(relay_log r1 | grep -i '\[slow\]' | grep -i 'timed out\|timeout' | head -1)" "." "the timeout is logged"
recv_ctl slow 200
wait_until 15 '[ "$(offset_of slow)" = 1 ]'
is "$(offset_of slow)" 1 "after the endpoint is fast again the event is delivered and acknowledged"
is "$(jq -r '.headers["idempotency-key"]' "$(recv_log slow)" | sort -u)" "outbox_slow:1:0" "every attempt carried the same Idempotency-Key"

# --- endpoint down: sink unavailable, delivered when it is up; msgpack ---------------
wh down down "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:$DOWN_PORT/mp\",\"format\":\"msgpack\"}"
sql "SELECT pgtrickle.outbox_write('down', '[{\"d\":1}]')" >/dev/null
wait_until 10 '[ "$(http_code r1 /health)" = 503 ] && http_get r1 /health | grep -q "\"pipeline\":\"down\",\"reason\":\"sink unavailable\""'
like "$(http_get r1 /health)" '"pipeline":"down","reason":"sink unavailable"' "an unreachable endpoint makes the sink unavailable in /health"
like "$(relay_log r1 | grep '\[down\]' | grep -i 'sink webhook unavailable' | head -1)" "127.0.0.1 port $DOWN_PORT" "the log names the endpoint that cannot be reached"
is "$(offset_of down)" 0 "nothing acknowledged while the endpoint is down"
start_recv down "127.0.0.1:$DOWN_PORT"
wait_until 15 '[ "$(offset_of down)" = 1 ]'
is "$(offset_of down)" 1 "delivered once the endpoint is up"
is "$(jq -r '.headers["content-type"]' "$(recv_log down)")" "application/msgpack" "format msgpack: Content-Type application/msgpack"
is "$(jq -r '.body_b64' "$(recv_log down)" | base64 -d | head -c1 | od -An -tx1 | tr -d ' ')" "91" "batch body is a MessagePack array of one element"
is "$(jq -r '.body_b64' "$(recv_log down)" | base64 -d | tail -c 15)" "outbox_down:1:0" "the whole binary body arrives (NUL bytes included), ending with the dedup key"
wait_until 10 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "healthy again"

# --- https ---------------------------------------------------------------------------------
sql "SELECT pgtrickle.outbox_write('secure', '[{\"t\":1}]'); SELECT pgtrickle.outbox_write('insecure', '[{\"t\":2}]')" >/dev/null
wait_until 10 '[ "$(offset_of tls-ok)" = 1 ]'
is "$(offset_of tls-ok)" 1 "https endpoint with tls_ca: delivered"
is "$(jq -r 'select(.path == "/secure") | .body | fromjson | .[0].payload.t' "$(recv_log tls)")" 1 "... over TLS to the receiver"
wait_until 10 'relay_log r1 | grep "\[tls-bad\]" | grep -qi "certificate"'
like "$(relay_log r1 | grep '\[tls-bad\]' | grep -m1 -i 'certificate')" "sink webhook unavailable" "without tls_ca the self-signed certificate is refused"
is "$(offset_of tls-bad)" 0 "... and nothing is acknowledged"
is "$(jq -r 'select(.path == "/insecure") | 1' "$(recv_log tls)" | wc -l | tr -d ' ')" 0 "... and nothing reached the endpoint"

# --- a dedup key that cannot be a header value ---------------------------------------------
sql "SELECT pgtrickle.outbox_write(E'ctl\\nx', '[{\"k\":1}]')" >/dev/null
wait_until 10 '[ "$(dlq_count ctl-each)" = 1 ] && [ "$(offset_of ctl-batch)" = 1 ]'
like "$(sql "SELECT error FROM pgtrickle.relay_dlq WHERE pipeline = 'ctl-each'")" "control characters" \
   "per-event mode: a dedup key with a newline is dead-lettered, never sent unkeyed"
is "$(offset_of ctl-each)" 1 "... and the pipeline moves on"
is "$(jq -r 'select(.path == "/batch") | .body | fromjson | .[0].dedup_key' "$(recv_log ctl)")" "$(printf 'outbox_ctl\nx:1:0')" \
   "batch mode: the same key travels JSON-escaped in the body"
is "$(jq -r 'select(.path == "/each") | 1' "$(recv_log ctl)" | wc -l | tr -d ' ')" 0 "no per-event request was sent"

# --- config errors ---------------------------------------------------------------------
log=$(relay_log r1)
like "$log" '\[cfg-no-url\] pipeline not started: sink.url' "missing url names sink.url"
like "$log" '\[cfg-scheme\] pipeline not started: sink.url: expected an http' "non-http url names sink.url"
like "$log" '\[cfg-method\] pipeline not started: sink.method' "bad method names sink.method"
like "$log" '\[cfg-retry\] pipeline not started: sink.retry_on_status\[0\]' "bad retry_on_status names the element"
like "$log" '\[cfg-header\] pipeline not started: sink.headers.Idempotency-Key' "reserved header names sink.headers.<name>"
like "$log" '\[cfg-secret\] pipeline not started: sink.signing_secret' "empty signing_secret named"
like "$log" '\[cfg-timeout\] pipeline not started: sink.timeout_ms' "bad timeout_ms named"
like "$log" "\[cfg-ca\] pipeline not started: sink.tls_ca: cannot read $TEST_TMP/nonexistent/ca.pem" "unreadable tls_ca named"
like "$log" '\[cfg-format\] pipeline not started: sink.format' "unknown format named"
is "$(relay_log r1 | grep -c "$WH_TOKEN")" 0 "the header secret never appears in the log"
is "$(http_get r1 /status | grep -c "$WH_TOKEN\|$SECRET")" 0 "no secret in /status"

# tls-bad still holds a batch it cannot deliver: shutdown abandons it at the
# deadline, unacknowledged.
t0=$(now_ms)
stop_relay r1
is "$?" 0 "SIGTERM exits 0"
ok "$([ $(( $(now_ms) - t0 )) -lt 8000 ] && echo 0 || echo 1)" "an undeliverable batch is abandoned at the shutdown deadline (3 s)"
is "$(offset_of tls-bad)" 0 "... and stays unacknowledged"
done_testing
