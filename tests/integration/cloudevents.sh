#!/usr/bin/env bash
# format "cloudevents" (issue 20), read by the official CloudEvents JavaScript
# SDK (npm "cloudevents" 9.0.0, installed into a cache directory): CDC events sent
# by the webhook sink in structured mode (one event a request, and batched)
# and binary mode (ce- headers), by the Kafka sink in both modes (ce_
# headers), by the NATS sink in binary mode and by the file sink; every
# message is a valid CloudEvent with id = the dedup key, type, source,
# subject, time = the commit time, partitionkey = the row key, data = the
# row. The webhook receiver takes CloudEvents in every mode: the
# specification's own examples (tests/fixtures/cloudevents) and the relay's
# own sink land in the inbox with event_id = id, event_type = type; invalid
# events get 400 with the reason.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/cdc_lib.sh"
. "$(dirname "$0")/webhook_lib.sh"
. "$(dirname "$0")/nats_lib.sh"
. "$(dirname "$0")/kafka_lib.sh"
trap '_nats_cleanup; _kafka_cleanup 2>/dev/null; _cdc_cleanup' EXIT
FIX=$(dirname "$0")/../fixtures/cloudevents
CHECK=$(cd "$(dirname "$0")" && pwd)/ce_check.js

# The SDK, pinned, installed once into a cache directory (CI reaches the npm
# registry; nothing is installed into the source tree).
command -v node >/dev/null && command -v npm >/dev/null || bail "node and npm are needed (scripts/install-deps.sh)"
# 9.0.0: the newest that runs on Debian 12's Node.js 18.
CE_SDK=cloudevents@9.0.0
NPM_DIR=${RELAY_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pgtrickle-relay/npm}/$CE_SDK
if [ ! -f "$NPM_DIR/node_modules/cloudevents/package.json" ]; then
    mkdir -p "$NPM_DIR"
    npm install --no-audit --no-fund --prefix "$NPM_DIR" "$CE_SDK" >"$TEST_TMP/npm.log" 2>&1 ||
        bail "npm install cloudevents failed: $(tail -3 "$TEST_TMP/npm.log")"
fi
export NODE_PATH=$NPM_DIR/node_modules
sdk() { node "$CHECK" "$@"; }

cdc_setup_db
B=$PGT_KAFKA_BROKERS
T=$KTAG
STREAM=$(stream_name CE)
SUBJ=t_${NATS_TAG}
sql "CREATE TABLE items (id int PRIMARY KEY, name text);
     CREATE PUBLICATION ce_pub FOR TABLE items;" >/dev/null
# Receivers, each into an inbox of its own (an inbox keeps each event_id
# once, and the specification's examples share ids).
declare -A RPORT=()
for r in rtb rtn spec batch bin; do
    RPORT[$r]=$(free_port)
    sql "SELECT pgtrickle.create_inbox('ce_$r');
         SELECT pgtrickle.set_relay_inbox('recv-$r', 'ce_$r',
           '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:${RPORT[$r]}\"}')" >/dev/null
done
src() { echo "{\"publication\":\"ce_pub\",\"slot\":\"cloudevents_$1\"}"; }
start_recv each; start_recv batch; start_recv bin
cdc_pipeline ce-each "$(src each)" "{\"type\":\"webhook\",\"url\":\"$(recv_url each)\",\"format\":\"cloudevents\",\"batch_mode\":false}"
cdc_pipeline ce-batch "$(src batch)" "{\"type\":\"webhook\",\"url\":\"$(recv_url batch)\",\"format\":\"cloudevents\"}"
cdc_pipeline ce-bin "$(src bin)" "{\"type\":\"webhook\",\"url\":\"$(recv_url bin)\",\"format\":\"cloudevents\",
    \"cloudevents_mode\":\"binary\",\"cloudevents_source\":\"urn:example:shop\",\"cloudevents_type\":\"com.example.{table}.{op}\"}"
cdc_pipeline ce-ks "$(src ks)" "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.s\",\"format\":\"cloudevents\"}"
cdc_pipeline ce-kb "$(src kb)" "{\"type\":\"kafka\",\"brokers\":\"$B\",\"topic_template\":\"$T.b\",\"format\":\"cloudevents\",\"cloudevents_mode\":\"binary\"}"
natscli stream-add "$STREAM" "$SUBJ.>" >/dev/null || bail "cannot create the stream"
cdc_pipeline ce-nats "$(src nats)" "$(nats_sink "$STREAM" "$SUBJ.{table}.{op}" '"format":"cloudevents","cloudevents_mode":"binary"')"
cdc_pipeline ce-file "$(src file)" "{\"type\":\"file\",\"output\":\"$TEST_TMP/ce.jsonl\",\"format\":\"cloudevents\"}"
# The relay's own receiver, fed by its own sink in both modes.
cdc_pipeline ce-rt-batch "$(src rtb)" "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:${RPORT[rtb]}/inbox\",\"format\":\"cloudevents\"}"
cdc_pipeline ce-rt-bin "$(src rtn)" "{\"type\":\"webhook\",\"url\":\"http://127.0.0.1:${RPORT[rtn]}/inbox\",\"format\":\"cloudevents\",
    \"cloudevents_mode\":\"binary\",\"cloudevents_type\":\"bin.{op}\"}"
start_relay r1
wait_until 30 '( for s in each batch bin ks kb nats file rtb rtn; do slot_exists cloudevents_$s || exit 1; done )' ||
    bail "slots not created: $(relay_log r1 | tail -5)"

sql "INSERT INTO items VALUES (1, 'café \"q\"');
     UPDATE items SET name = 'b' WHERE id = 1;
     DELETE FROM items WHERE id = 1;
     TRUNCATE items;" >/dev/null
pub() { metric r1 "pgtrickle_relay_messages_published_total{pipeline=\"$1\",sink=\"$2\"}"; }
wait_until 40 '[ "$(pub ce-each webhook)" = 4 ] && [ "$(pub ce-batch webhook)" = 4 ] && [ "$(pub ce-bin webhook)" = 4 ] &&
               [ "$(pub ce-ks kafka)" = 4 ] && [ "$(pub ce-kb kafka)" = 4 ] && [ "$(pub ce-nats nats)" = 4 ] &&
               [ "$(pub ce-rt-batch webhook)" = 4 ] && [ "$(pub ce-rt-bin webhook)" = 4 ]' ||
    diag "$(relay_log r1 | grep -E 'WARN|ERROR' | tail -10)"
keys=$(jq -r '.body' "$(recv_log each)" | jq -r '.id' | sort | tr '\n' ' ')
like "$keys" '^([0-9A-F]+/[0-9A-F]+):0 \1:1 \1:2 \1:3 $' \
   "id is the dedup key {commit_lsn}:{index} (the four changes of one transaction)"

# --- webhook sink, structured, one event a request -----------------------------
each=$(sdk http "$(recv_log each)") || fail "webhook structured: the SDK refuses a request"
is "$(wc -l <<<"$each" | tr -d ' ')" 4 "webhook structured: 4 requests, each a valid CloudEvent for the SDK"
is "$(jq -c '[.mode, .specversion, .type, .source, .subject, .datacontenttype, .partitionkey]' <<<"$each" | sort -u | head -1)" \
   '["structured","1.0","io.pgtrickle.delete","/pgtrickle-relay/ce-each","cdc.items.delete","application/json","{\"id\":1}"]' \
   "webhook structured: type io.pgtrickle.{op}, source /pgtrickle-relay/<pipeline>, subject, partitionkey = row key"
is "$(jq -c 'select(.type == "io.pgtrickle.insert") | .data' <<<"$each")" '{"id":1,"name":"café \"q\""}' \
   "webhook structured: data is the row"
is "$(jq -c 'select(.type == "io.pgtrickle.truncate") | [.partitionkey, .data, .datacontenttype]' <<<"$each")" \
   '[null,null,null]' "webhook structured: a truncate has no data and no partitionkey"
like "$(jq -r 'select(.type == "io.pgtrickle.insert") | .time' <<<"$each")" '^20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z$' \
   "webhook structured: time is an RFC 3339 UTC time (the commit time)"
is "$(jq -r '.headers["content-type"]' "$(recv_log each)" | sort -u)" "application/cloudevents+json; charset=utf-8" \
   "webhook structured: Content-Type application/cloudevents+json (HTTP binding 3.2.1)"
is "$(jq -r '.body' "$(recv_log each)" | jq -c 'select(.type == "io.pgtrickle.insert") | .time' )" \
   "$(jq -c 'select(.type == "io.pgtrickle.insert") | .time' "$TEST_TMP/ce.jsonl" 2>/dev/null)" \
   "file sink: the same structured event (same commit time)"

# --- batched ---------------------------------------------------------------------
batch=$(sdk http "$(recv_log batch)") || fail "webhook batch: the SDK refuses a request"
is "$(jq -r '.mode' <<<"$batch" | sort | uniq -c | tr -s ' ')" " 4 structured" \
   "webhook batch mode: the SDK reads the 4 events of application/cloudevents-batch+json (HTTP binding 3.3)"
is "$(jq -r '.headers["content-type"]' "$(recv_log batch)" | sort -u)" "application/cloudevents-batch+json; charset=utf-8" \
   "webhook batch mode: Content-Type application/cloudevents-batch+json"

# --- binary ----------------------------------------------------------------------
bin=$(sdk http "$(recv_log bin)") || fail "webhook binary: the SDK refuses a request"
is "$(jq -c 'select(.type == "com.example.items.insert") | [.mode, .source, .data, .datacontenttype]' <<<"$bin")" \
   '["binary","urn:example:shop",{"id":1,"name":"café \"q\""},"application/json"]' \
   "webhook binary: ce- headers carry the attributes (cloudevents_source, cloudevents_type), the body the data"
ins=$(jq -c 'select(.body | fromjson? | .name == "café \"q\"")' "$(recv_log bin)")
is "$(jq -r '.headers["ce-partitionkey"]' <<<"$ins")" '{%22id%22:1}' \
   "webhook binary: header values percent-encoded (HTTP binding 3.1.3.2: '\"', '%', space, non-ASCII)"
is "$(jq -r '.headers["ce-specversion"] + " " + .headers["content-type"]' <<<"$ins")" "1.0 application/json" \
   "webhook binary: ce-specversion, Content-Type = datacontenttype (no ce-datacontenttype)"
is "$(jq -r '.headers | has("ce-datacontenttype")' <<<"$ins")" false "webhook binary: no ce-datacontenttype header"

# --- Kafka -----------------------------------------------------------------------
kafka_consume "$B" "$T.s" 4 --timeout 5 >"$TEST_TMP/ks.jsonl"
kafka_consume "$B" "$T.b" 4 --timeout 5 >"$TEST_TMP/kb.jsonl"
ks=$(sdk kafka "$TEST_TMP/ks.jsonl") || fail "kafka structured: the SDK refuses a record"
kb=$(sdk kafka "$TEST_TMP/kb.jsonl") || fail "kafka binary: the SDK refuses a record"
is "$(jq -c 'select(.type == "io.pgtrickle.insert") | [.mode, .data, .partitionkey]' <<<"$ks")" \
   '["structured",{"id":1,"name":"café \"q\""},"{\"id\":1}"]' "kafka structured: a valid CloudEvent (content-type application/cloudevents+json)"
is "$(jq -c 'select(.type == "io.pgtrickle.insert") | [.mode, .data, .partitionkey, .source]' <<<"$kb")" \
   '["binary",{"id":1,"name":"café \"q\""},"{\"id\":1}","/pgtrickle-relay/ce-kb"]' \
   "kafka binary: ce_ headers carry the attributes, the record key is the partitionkey (Kafka binding 3.1)"
is "$(jq -r 'select(.headers.ce_type == "io.pgtrickle.insert") | [.key, .headers.ce_id == .headers["pgtrickle-dedup-key"]] | @tsv' "$TEST_TMP/kb.jsonl")" \
   '{"id":1}	true' "kafka binary: record key = row key, ce_id = the dedup key"

# --- NATS ------------------------------------------------------------------------
wait_until 10 "[ \$(stream_count '$STREAM') -ge 4 ]"
natscli dump "$STREAM" >"$TEST_TMP/nats.jsonl"
nb=$(sdk http "$TEST_TMP/nats.jsonl") || fail "nats binary: the SDK refuses a message"
is "$(jq -c 'select(.type == "io.pgtrickle.update") | [.mode, .data, .subject]' <<<"$nb")" \
   "[\"binary\",{\"id\":1,\"name\":\"b\"},\"$SUBJ.items.update\"]" \
   "nats binary: ce- headers (NATS binding 3.1.3) read as a valid CloudEvent"

# --- the receiver ----------------------------------------------------------------
wait_until 20 '[ "$(sql "SELECT count(*) FROM pgtrickle.ce_rtb")" -ge 4 ] && [ "$(sql "SELECT count(*) FROM pgtrickle.ce_rtn")" -ge 4 ]'
rt=$(sql "SELECT event_type || ' ' || event_id FROM pgtrickle.ce_rtb UNION ALL
          SELECT event_type || ' ' || event_id FROM pgtrickle.ce_rtn ORDER BY 1")
is "$(awk '{print $1}' <<<"$rt" | tr '\n' ' ')" \
   "bin.delete bin.insert bin.truncate bin.update io.pgtrickle.delete io.pgtrickle.insert io.pgtrickle.truncate io.pgtrickle.update " \
   "receiver: the relay's own events, batched and binary, land with event_type = type"
is "$(awk '{print $2}' <<<"$rt" | sort | uniq -c | awk '{print $1}' | sort -u | tr '\n' ' ')" "2 " \
   "receiver: event_id = id (the same dedup keys through both modes)"
is "$(sql "SELECT payload::text FROM pgtrickle.ce_rtn WHERE event_type = 'bin.insert'")" '{"id": 1, "name": "café \"q\""}' \
   "receiver: binary mode: the body is the payload"
is "$(sql "SELECT payload::text FROM pgtrickle.ce_rtb WHERE event_type = 'io.pgtrickle.truncate'")" 'null' \
   "receiver: an event without data is stored with a JSON null payload"
post() { curl -s -o "$TEST_TMP/answer" -w '%{http_code}' "http://127.0.0.1:${RPORT[$1]}/inbox" "${@:2}"; }
is "$(post spec -H 'Content-Type: application/cloudevents+json; charset=utf-8' --data-binary @"$FIX/structured-json.json")" 200 \
   "receiver: the spec's structured example with JSON data is accepted"
is "$(post spec -H 'Content-Type: application/cloudevents+json' --data-binary @"$FIX/structured-xml.json")" 200 \
   "receiver: the spec's structured example with XML text data is accepted"
is "$(post batch -H 'Content-Type: application/cloudevents-batch+json' --data-binary @"$FIX/batch.json")" 200 \
   "receiver: the spec's batch example is accepted"
hdrs=(); while IFS= read -r h; do hdrs+=(-H "$h"); done <"$FIX/binary-xml.http"
is "$(post bin "${hdrs[@]}" --data-binary @"$FIX/binary-xml.body")" 200 \
   "receiver: the spec's binary-mode example is accepted"
row() { sql "SELECT event_type || '|' || payload::text FROM pgtrickle.ce_$1 WHERE event_id = '$2'"; }
is "$(row spec C234-1234-1234)" 'com.example.someevent|{"appinfoA": "abc", "appinfoB": 123, "appinfoC": true}' \
   "receiver: structured: event_id = id, event_type = type, payload = the JSON data"
is "$(row spec B234-1234-1234)" 'com.example.someevent|"<much wow=\"xml\"/>"' \
   "receiver: structured: string data (XML) is stored as a JSON string"
is "$(row batch C234-1234-1234) $(row batch B234-1234-1234)" \
   'com.example.someotherevent|{"appinfoA": "abc", "appinfoB": 123, "appinfoC": true} com.example.someevent|"hello, world"' \
   "receiver: batch: each event stored; data_base64 decoded (text, stored as a string)"
is "$(row bin B234-1234-1234)" 'com.example.someevent|"<much wow=\"xml\"/>"' \
   "receiver: binary mode: event_id = ce-id, the XML text body stored as a string"
is "$(post bin -H 'ce-specversion: 1.0' -H 'ce-id: caf%C3%A9%20%22x%22' -H 'ce-type: t%2Ex' -H 'ce-source: /s' -d 'hi')" 200 \
   "receiver: binary mode, percent-encoded header values"
is "$(sql "SELECT event_id || '|' || event_type FROM pgtrickle.ce_bin WHERE payload = '\"hi\"'")" 'café "x"|t.x' \
   "receiver: header values are percent-decoded (HTTP binding 3.1.3.2)"

bad() { # bad <description> <expected reason regex> <curl args...>
    local d=$1 re=$2; shift 2
    is "$(post spec "$@")" 400 "receiver refuses: $d"
    like "$(cat "$TEST_TMP/answer")" "$re" "receiver says why: $d"
}
CT=(-H 'Content-Type: application/cloudevents+json')
bad "no id" 'REQUIRED string attribute \\"id\\"' "${CT[@]}" -d '{"specversion":"1.0","source":"/s","type":"t"}'
bad "an empty type" 'attribute \\"type\\" is empty' "${CT[@]}" -d '{"specversion":"1.0","id":"x","source":"/s","type":""}'
bad "specversion 0.3" 'unsupported CloudEvents specversion' "${CT[@]}" -d '{"specversion":"0.3","id":"x","source":"/s","type":"t"}'
bad "data and data_base64" 'mutually exclusive' "${CT[@]}" -d '{"specversion":"1.0","id":"x","source":"/s","type":"t","data":1,"data_base64":"AA=="}'
bad "bad base64" 'not base64' "${CT[@]}" -d '{"specversion":"1.0","id":"x","source":"/s","type":"t","data_base64":"%%%"}'
bad "not an object" 'one JSON object' "${CT[@]}" -d '[1]'
bad "a batch that is not an array" 'JSON array of events' -H 'Content-Type: application/cloudevents-batch+json' -d '{}'
bad "binary mode without ce-source" 'ce-source is missing' -H 'ce-specversion: 1.0' -H 'ce-id: x' -H 'ce-type: t' -d 'text'
bad "binary mode, overlong UTF-8 in a header" 'ce-type is not a valid percent-encoded' \
    -H 'ce-specversion: 1.0' -H 'ce-id: x' -H 'ce-type: %C0%A0' -H 'ce-source: /s' -d 'text'
bad "binary mode, JSON declared but not sent" 'declared JSON' \
    -H 'ce-specversion: 1.0' -H 'ce-id: x' -H 'ce-type: t' -H 'ce-source: /s' -H 'Content-Type: application/json' -d '{nope'

stop_relay r1 >/dev/null
done_testing
