#!/usr/bin/env bash
# NATS authentication, each against a private nats-server that requires it:
# user/password, token, NKey seed, .creds file (operator/account/user JWTs),
# and mutual TLS (CA + client certificate), for the sink and, over TLS, the
# source. Secrets come through ${env:...} / ${file:...}; wrong or missing
# credentials give a degraded pipeline with a clear error; no secret ever
# appears in the log or in /status.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
setup_db
SUBJ="t_$NATS_TAG"
S=$(stream_name AUTH)
A=$TEST_TMP/auth
mkdir -p "$A"

# --- servers ------------------------------------------------------------------
declare -A MON=()
start_auth_nats() {   # start_auth_nats <id> [args...]: with a monitoring port
    local id=$1; shift
    MON[$id]=$(free_port)
    start_private_nats "$id" -m "${MON[$id]}" "$@"
}
# messages in stream $S of server <id>, from its monitoring endpoint
msgs() { curl -s "http://127.0.0.1:${MON[$1]}/jsz?accounts=true&streams=true" \
           | jq "[.account_details[]?.stream_detail[]? | select(.name == \"$S\") | .state.messages] | add // 0"; }

PASS="pa55-$RANDOM-word"
TOKEN="tok-$RANDOM-$RANDOM"
start_auth_nats up --user relay --pass "$PASS"
start_auth_nats tok --auth "$TOKEN"
read -r NKSEED NKPUB < <(natscli nkey-gen U)
printf 'authorization { users = [ { nkey: %s } ] }\n' "$NKPUB" > "$A/nkey.conf"
start_auth_nats nkey -c "$A/nkey.conf"
natscli jwt-setup "$A" || bail "jwt-setup failed"
start_auth_nats creds -c "$A/server.conf"
# TLS: a CA, a server certificate for 127.0.0.1, a client certificate
ossl() { openssl "$@" >/dev/null 2>&1 || bail "openssl $1 failed"; }
ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=relay-test-ca \
    -keyout "$A/ca.key" -out "$A/ca.pem"
for who in server client; do
    ossl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=relay-test-$who" \
        -keyout "$A/$who.key" -out "$A/$who.csr"
    if [ $who = server ]; then echo "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$A/$who.ext"
    else echo "extendedKeyUsage=clientAuth" > "$A/$who.ext"; fi
    ossl x509 -req -in "$A/$who.csr" -CA "$A/ca.pem" -CAkey "$A/ca.key" -CAcreateserial -days 2 \
        -extfile "$A/$who.ext" -out "$A/$who.pem"
done
start_auth_nats tls --tlsverify --tlscert "$A/server.pem" --tlskey "$A/server.key" --tlscacert "$A/ca.pem"

# --- pipelines ----------------------------------------------------------------------
printf '%s' "$TOKEN" > "$A/token"
printf '%s\n' "$NKSEED" > "$A/seed"
export RELAY_TEST_NATS_PASS=$PASS
sql "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
pipe() {   # pipe <name> <server id> <extra json>
    sql "SELECT pgtrickle.set_relay_outbox('$1', 'orders', NULL,
         '$(SINK_URL=$(priv_nats_url "$2") nats_sink "$S" "$SUBJ.{op}" '"create_stream":true,"connect_timeout_ms":1000'"${3:+,$3}")')" >/dev/null
}
pipe user-pass up '"user":"relay","password":"${env:RELAY_TEST_NATS_PASS}"'
pipe wrong-pass up '"user":"relay","password":"not-the-password"'
pipe token tok '"token":"${file:'"$A"'/token}"'
pipe nkey nkey '"nkey_seed":"${file:'"$A"'/seed}"'
pipe creds creds '"creds_file":"'"$A"'/user.creds"'
pipe mtls tls '"tls_ca":"'"$A"'/ca.pem","tls_cert":"'"$A"'/client.pem","tls_key":"'"$A"'/client.key"'
pipe tls-no-cert tls '"tls_ca":"'"$A"'/ca.pem"'
pipe no-token tok ''
# reverse, over mutual TLS: the stream the mtls pipeline fills -> an inbox
sql "SELECT pgtrickle.create_inbox('tls_inbox')" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('tls-in', 'tls_inbox', '{\"type\":\"nats\",\"url\":\"$(priv_nats_url tls)\",
     \"stream\":\"$S\",\"tls_ca\":\"$A/ca.pem\",\"tls_cert\":\"$A/client.pem\",\"tls_key\":\"$A/client.key\"}')" >/dev/null

write_rows orders 1 25
start_relay r1 --shutdown-timeout 2s
for id in up tok nkey creds tls; do
    wait_until 15 '[ "$(msgs '$id')" -ge 25 ]'
done
is "$(msgs up)" 25 "user/password (password from \${env:...}): 25 events"
is "$(msgs tok)" 25 "token (from \${file:...}): 25 events"
is "$(msgs nkey)" 25 "NKey seed (public key derived from the seed): 25 events"
is "$(msgs creds)" 25 "creds file (operator/account/user JWTs): 25 events"
is "$(msgs tls)" 25 "mutual TLS (CA + client certificate): 25 events"
wait_until 15 '[ "$(sql "SELECT count(*) FROM pgtrickle.tls_inbox")" -ge 25 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.tls_inbox")" 25 "the source reads over mutual TLS too: 25 inbox rows"

wait_until 15 '[ "$(http_get r1 /health | jq -r ".degraded | length")" = 3 ]'
is "$(http_get r1 /health | jq -r '[.degraded[].pipeline] | sort | join(",")')" "no-token,tls-no-cert,wrong-pass" \
   "wrong password, missing token and missing client certificate: degraded"
like "$(last_error r1 wrong-pass)" "cannot connect to NATS at nats://127.0.0.1:[0-9]+: .*[Aa]uthorization" "wrong password: authorization error"
like "$(last_error r1 no-token)" "cannot connect to NATS at nats://127.0.0.1:[0-9]+: .*[Aa]uthorization" "missing token: authorization error"
like "$(last_error r1 tls-no-cert)" "cannot connect to NATS" "missing client certificate: connection refused by the server"
is "$(sql "SELECT count(*) FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id IN ('wrong-pass','no-token','tls-no-cert') AND last_change_id > 0")" 0 \
   "the failing pipelines acknowledged nothing"

everything="$(relay_log r1) $(http_get r1 /status) $(http_get r1 /metrics)"
leak=0
for secret in "$PASS" "$TOKEN" "$NKSEED" "not-the-password"; do
    case "$everything" in *"$secret"*) leak=1; diag "secret leaked: $secret";; esac
done
is "$leak" 0 "no password, token or seed in the log, /status or /metrics"
stop_relay r1
is "$?" 0 "clean exit"
done_testing
