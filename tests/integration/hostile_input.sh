#!/usr/bin/env bash
# Hostile input (issue 10): no message can wedge a reverse pipeline, and every
# message ends either in its inbox or in pgtrickle.relay_dlq with its original
# bytes -- through the real server paths:
#  - NATS: invalid UTF-8 in Nats-Msg-Id, in traceparent and in the subject
#    (published byte for byte by tests/tools/nats_rawpub.py), 20 valid
#    messages behind them;
#  - webhook: request paths "/inbox/%ff" and "/inbox/a%00b";
#  - JSONL: a 10 000-character dedup_key, keys that differ only after a
#    \u0000, a line of bytes that are not UTF-8, JSON nested deeper than jsonb
#    accepts, JSON nested 600 deep (which jsonb accepts);
#  - Kafka: a binary dedup header (dead-lettered) and a binary record key
#    (stored as \x hex in aggregate_id);
# each time the next messages flow, the broker messages are acknowledged, and
# relay_dlq_replay() sends the exact bytes again (a message the inbox still
# refuses comes back as a new dead letter with the same bytes; one the
# operator made acceptable lands). Last, a batch that keeps failing for
# longer than --stall-timeout makes /health report "stalled" with the reason.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/nats_lib.sh"
: "${PGT_KAFKA_BROKERS:?services not started: run tests/services/services.sh start pg nats kafka}"
: "${KCLI:=$(dirname "$RELAY_BIN")/tests/kcli}"
RAWPUB="$(dirname "$0")/../tools/nats_rawpub.py"
setup_db
hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
hexf() { printf "$1" | od -An -v -tx1 | tr -d ' \n'; }   # printf escapes (\xff) interpreted
dlq() { sql "SELECT $2 FROM pgtrickle.relay_dlq WHERE pipeline = '$1' ${3:-}"; }
file_offset() { sql "SELECT last_change_id FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'file-in'"; }

sql "SELECT pgtrickle.create_inbox('nin')" >/dev/null
sql "SELECT pgtrickle.create_inbox('win')" >/dev/null
sql "SELECT pgtrickle.create_inbox('jin')" >/dev/null
sql "SELECT pgtrickle.create_inbox('kin')" >/dev/null
S=$(stream_name HOSTILE)
SUBJ="t_$NATS_TAG"
natscli stream-add "$S" "$SUBJ.>" >/dev/null
sql "SELECT pgtrickle.set_relay_inbox('nats-in', 'nin', '{\"type\":\"nats\",\"url\":\"$NATS_URL\",\"stream\":\"$S\",\"durable_name\":\"hostile\",\"ack_wait_seconds\":60}')" >/dev/null
WPORT=$(free_port)
sql "SELECT pgtrickle.set_relay_inbox('wh-in', 'win', '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:$WPORT\",\"auth_token\":\"T\"}')" >/dev/null
IN=$TEST_TMP/in.jsonl
: >"$IN"
sql "SELECT pgtrickle.set_relay_inbox('file-in', 'jin', '{\"type\":\"file\",\"input\":\"$IN\",\"follow\":true}')" >/dev/null
T="${TEST_NAME}_$$"
sql "SELECT pgtrickle.set_relay_inbox('kafka-in', 'kin', '{\"type\":\"kafka\",\"brokers\":\"$PGT_KAFKA_BROKERS\",\"topic\":\"$T\",\"group_id\":\"$T\",\"rdkafka\":{\"session.timeout.ms\":6000}}')" >/dev/null
start_relay r1 --stall-timeout 2s

# --- NATS ------------------------------------------------------------------------
pub() { python3 "$RAWPUB" "$NATS_URL" "$@" >>"$TEST_TMP/rawpub.log" 2>&1; }
BADID=$(hexf 'bad\xffid')
pub "$(hex "$SUBJ.a")" "$(hexf 'Nats-Msg-Id: bad\xffid\r\n')" "$(hex '{"p":1}')"
ok $? "nats-server stores a message whose Nats-Msg-Id is not UTF-8"
pub "$(hex "$SUBJ.b")" "$(hexf 'Nats-Msg-Id: tp-1\r\ntraceparent: 00-\xc3(\r\n')" "$(hex '{"p":2}')"
ok $? "... one whose traceparent is not UTF-8"
BADSUBJ=$(hexf "$SUBJ.c\xfe")
pub "$BADSUBJ" "$(hexf 'Nats-Msg-Id: subj-1\r\n')" "$(hex '{"p":3}')"
ok $? "... one whose subject is not UTF-8"
natscli pub-many "$SUBJ.ok" 20 --id-prefix ok- --data '{"p":"ok"}' >/dev/null
wait_until 30 '[ "$(sql "SELECT count(*) FROM pgtrickle.nin")" = 20 ] && [ "$(dlq nats-in "count(*)")" = 3 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.nin")" 20 "NATS: the 20 valid messages behind them arrive"
is "$(dlq nats-in "count(*)")" 3 "NATS: the 3 poison messages are in relay_dlq"
is "$(dlq nats-in "encode(payload_raw, 'hex')" "AND dedup_key_raw = '\\x$BADID'")" "$(hex '{"p":1}')" \
   "NATS: the bad Nats-Msg-Id's exact bytes and its body are kept"
like "$(dlq nats-in "error" "AND dedup_key = 'tp-1'")" "trace id is not valid UTF-8" "NATS: the bad traceparent's message says why"
is "$(dlq nats-in "encode(subject_raw, 'hex')" "AND dedup_key = 'subj-1'")" "$BADSUBJ" "NATS: the bad subject's exact bytes are kept"
wait_until 10 '[ "$(consumer_field "$S" hostile num_ack_pending)" = 0 ]'
is "$(consumer_field "$S" hostile num_ack_pending)/$(consumer_field "$S" hostile num_pending)" "0/0" \
   "NATS: every message is acknowledged (none waits behind the poison ones)"
like "$(relay_log r1)" "message bad\\\\xffid dead-lettered" "the log names the key, escaped"

# replay: the same bytes again; still not storable -> a new dead letter, same bytes
before=$(dlq nats-in "count(*)")
is "$(sql "SELECT pgtrickle.relay_dlq_replay('nats-in')")" 3 "relay_dlq_replay requests the 3 dead letters"
wait_until 15 '[ "$(dlq nats-in "count(*)")" = 6 ]'
is "$(dlq nats-in "count(DISTINCT encode(dedup_key_raw, 'hex') || encode(subject_raw, 'hex') || encode(payload_raw, 'hex'))")" 3 \
   "replay sent the exact bytes: the 3 new dead letters repeat them byte for byte"

# --- webhook ---------------------------------------------------------------------
wh() { curl -s -o "$TEST_TMP/wh.out" -w '%{http_code}' -H 'Authorization: Bearer T' -H 'Content-Type: application/json' \
        -d "$2" "http://127.0.0.1:$WPORT$1"; }
is "$(wh '/inbox/%ff' '{"p":1}')" 200 "webhook: POST /inbox/%ff is answered (after its dead letter is written)"
is "$(jq -r .dead_lettered "$TEST_TMP/wh.out")" 1 "  ... and the answer says it was dead-lettered"
is "$(wh '/inbox/a%00b' '{"p":2}')" 200 "webhook: POST /inbox/a%00b is answered"
is "$(wh '/inbox/ok' '{"p":3}')" 200 "webhook: the next request is answered"
is "$(sql "SELECT event_type FROM pgtrickle.win")" "/inbox/ok" "  ... and lands in the inbox"
is "$(dlq wh-in "string_agg(encode(subject_raw, 'hex'), ',' ORDER BY id)")" "$(hexf '/inbox/\xff'),$(hexf '/inbox/a\x00b')" \
   "webhook: the decoded paths' exact bytes (%ff, %00) are in relay_dlq"

# --- JSONL -------------------------------------------------------------------------
LONG=$(head -c 20000 /dev/urandom | base64 -w0 | tr -d '+/=' | head -c 10000)
{
    printf '{"dedup_key":"%s","p":1}\n' "$LONG"
    printf '{"dedup_key":"nk\\u0000A","p":2}\n{"dedup_key":"nk\\u0000B","p":3}\n'
    printf '\xff\xfe not text\n'
    python3 -c 'print("{\"dedup_key\":\"deep-30000\",\"v\":" + "[" * 30000 + "]" * 30000 + "}")'
    python3 -c 'print("{\"dedup_key\":\"deep-600\",\"v\":" + "[" * 600 + "]" * 600 + "}")'
    for i in $(seq 1 10); do printf '{"dedup_key":"ok-%d","p":%d}\n' "$i" "$i"; done
} >>"$IN"
wait_until 30 '[ "$(sql "SELECT count(*) FROM pgtrickle.jin")" = 11 ] && [ "$(dlq file-in "count(*)")" = 5 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.jin")" 11 "JSONL: the valid lines (and the 600-deep one) are in the inbox"
is "$(dlq file-in "count(*)")" 5 "JSONL: 5 dead letters"
is "$(dlq file-in "octet_length(dedup_key_raw) || ' ' || (convert_from(dedup_key_raw, 'UTF8') = '$LONG')" "AND error LIKE '%10000 bytes%'")" "10000 true" \
   "JSONL: the 10 000-character key, whole (it no longer wedges the pipeline)"
is "$(dlq file-in "string_agg(encode(dedup_key_raw, 'hex'), ',' ORDER BY id)" "AND dedup_key_raw IN ('\\x6e6b0041', '\\x6e6b0042')")" "6e6b0041,6e6b0042" \
   "JSONL: keys that differ only after a \\u0000 stay two dead letters, NUL byte included"
is "$(dlq file-in "encode(payload_raw, 'hex')" "AND dedup_key_raw = '\\x6e6b0041'")" "$(hex '{"dedup_key":"nk\u0000A","p":2}')" \
   "JSONL: the \\u0000 body is kept byte for byte"
is "$(dlq file-in "encode(payload_raw, 'hex'), payload IS NULL" "AND substring(payload_raw from 1 for 2) = '\\xfffe'")" "$(hexf '\xff\xfe not text')|t" \
   "JSONL: a line that is not UTF-8 is kept byte for byte"
like "$(dlq file-in "error" "AND dedup_key = 'deep-30000'")" "stack depth" "JSONL: JSON deeper than jsonb accepts is dead-lettered with the server's reason"
is "$(sql "SELECT jsonb_typeof(payload->'v') FROM pgtrickle.jin WHERE event_id = 'deep-600'")" array "JSONL: JSON 600 levels deep is stored as JSON"

# replay of a message the operator made acceptable: it lands with its exact body
sql "ALTER TABLE pgtrickle.jin ADD CONSTRAINT small CHECK (octet_length(payload::text) < 50) NOT VALID" >/dev/null
printf '{"dedup_key":"big","pad":"%s"}\n' "$(printf 'x%.0s' $(seq 1 80))" >>"$IN"
wait_until 20 '[ -n "$(dlq file-in "id" "AND dedup_key = '"'big'"'")" ]'
like "$(dlq file-in "error" "AND dedup_key = 'big'")" "check constraint" "JSONL: a CHECK violation is dead-lettered"
sql "ALTER TABLE pgtrickle.jin DROP CONSTRAINT small" >/dev/null
sql "SELECT pgtrickle.relay_dlq_replay('file-in', ARRAY[(SELECT id FROM pgtrickle.relay_dlq WHERE pipeline = 'file-in' AND dedup_key = 'big')])" >/dev/null
wait_until 15 '[ "$(sql "SELECT count(*) FROM pgtrickle.jin WHERE event_id = '"'big'"'")" = 1 ]'
is "$(sql "SELECT length(payload->>'pad') FROM pgtrickle.jin WHERE event_id = 'big'")" 80 "JSONL: after the fix, its replay lands in the inbox"

# --- Kafka -------------------------------------------------------------------------
"$KCLI" produce "$PGT_KAFKA_BROKERS" "$T" 1 --header $'pgtrickle-dedup-key=bad\xffkey' --value '{"k":1}' 2>>"$TEST_TMP/kcli.log"
"$KCLI" produce "$PGT_KAFKA_BROKERS" "$T" 1 --from 2 --key $'\xfe' --value '{"k":2}' 2>>"$TEST_TMP/kcli.log"
"$KCLI" produce "$PGT_KAFKA_BROKERS" "$T" 5 --from 3 --value '{"k":%d}' 2>>"$TEST_TMP/kcli.log"
wait_until 40 '[ "$(sql "SELECT count(*) FROM pgtrickle.kin")" = 6 ] && [ "$(dlq kafka-in "count(*)")" = 1 ]'
is "$(sql "SELECT count(*) FROM pgtrickle.kin")" 6 "Kafka: the other records arrive"
is "$(dlq kafka-in "encode(dedup_key_raw, 'hex')")" "$(hexf 'bad\xffkey')" "Kafka: a binary dedup header is dead-lettered with its bytes"
is "$(sql "SELECT aggregate_id FROM pgtrickle.kin WHERE payload->>'k' = '2'")" '\xfe32' "Kafka: a binary record key is stored as \\x hex in aggregate_id"

# --- a batch that keeps failing: degraded after --stall-timeout ---------------------
# A row the inbox refuses whose dead letter cannot be written either (a
# trigger on relay_dlq): nothing is acknowledged, the batch is retried, and
# after --stall-timeout (2 s here) /health says so.
is "$(http_code r1 /health)" 200 "healthy before"
sql "ALTER TABLE pgtrickle.jin ADD CONSTRAINT no_poison CHECK (NOT payload ? 'poison') NOT VALID" >/dev/null
sql "CREATE FUNCTION public.no_dlq() RETURNS trigger LANGUAGE plpgsql AS \$\$
     BEGIN RAISE EXCEPTION 'dead letters refused'; END \$\$" >/dev/null
sql "CREATE TRIGGER no_dlq BEFORE INSERT ON pgtrickle.relay_dlq FOR EACH ROW EXECUTE FUNCTION public.no_dlq()" >/dev/null
off=$(file_offset)
printf '{"dedup_key":"poison-1","poison":1}\n{"dedup_key":"after-poison","p":1}\n' >>"$IN"
wait_until 15 '[ "$(http_code r1 /health)" = 503 ]'
is "$(http_code r1 /health)" 503 "a batch that keeps failing: /health 503 after --stall-timeout"
like "$(http_get r1 /health | jq -c '.degraded[] | select(.pipeline == "file-in")')" "stalled" "  ... naming the pipeline and saying it is stalled"
like "$(last_error r1 file-in)" "dead letters refused" "  ... /status has the error"
like "$(relay_log r1)" "writing a dead letter failed" "  ... and the log says so once"
is "$(file_offset)" "$off" "  ... the batch is not acknowledged meanwhile (the file offset stays)"
sql "DROP TRIGGER no_dlq ON pgtrickle.relay_dlq" >/dev/null
wait_until 20 '[ "$(http_code r1 /health)" = 200 ]'
is "$(http_code r1 /health)" 200 "healthy again once the dead letter can be written"
is "$(dlq file-in "count(*)" "AND dedup_key = 'poison-1'")/$(sql "SELECT count(*) FROM pgtrickle.jin WHERE event_id = 'after-poison'")" "1/1" \
   "  ... the poison row is a dead letter, the next one is in the inbox"

stop_relay r1
is "$?" 0 "clean exit"
done_testing
