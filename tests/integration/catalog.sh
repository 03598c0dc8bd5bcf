#!/usr/bin/env bash
# catalog.sh - the SQL catalog (sql/*.sql) installed by `pgtrickle-relay init`:
# relay config API (pg_trickle v0.29 texts), README/cdc setters, NOTIFY
# trigger, role and privileges, outbox layer, consumer groups, inbox,
# runtime functions (offsets, outbox names, dead letters) and idempotent
# re-init.
. "$(dirname "$0")/lib.sh"

SQL_DIR="$(cd "$(dirname "$0")/../../sql" && pwd)"
RELAY_LOGIN=t_catalog_relay_login     # granted pgtrickle_relay
ADMIN_LOGIN=t_catalog_admin_login     # granted pgtrickle_relay_admin
PLAIN_LOGIN=t_catalog_plain_login     # not granted anything relay-related

q()    { sql "$1" 2>/dev/null; }                                   # rows, errors dropped
err()  { sql_error_text "$1" | sed -n 's/^ERROR:  //p' | head -1; } # first ERROR line
state() {  # SQLSTATE of the error raised by $1
    "${PSQL[@]}" -v VERBOSITY=verbose -d "$TEST_DB" -c "$1" 2>&1 >/dev/null \
        | sed -n 's/^ERROR:  \([0-9A-Z]\{5\}\): .*/\1/p' | head -1
}
as_relay() { sql_as "$RELAY_LOGIN" "$1" 2>&1; }
as_plain() { sql_as "$PLAIN_LOGIN" "$1" 2>&1; }
as_admin() { sql_as "$ADMIN_LOGIN" "$1" 2>&1; }
cfg()  { q "SELECT config FROM pgtrickle.relay_outbox_config WHERE name = '$1'"; }
icfg() { q "SELECT config FROM pgtrickle.relay_inbox_config WHERE name = '$1'"; }
jeq()  { q "SELECT ('$1')::jsonb = ('$2')::jsonb"; }               # JSON equality
declare -A COLS=()
cols() {  # "name type nullable,..." of a table (cached by cache_cols)
    if [ -n "${COLS[$1.$2]:-}" ]; then echo "${COLS[$1.$2]}"; return; fi
    q "SELECT string_agg(column_name || ' ' || data_type || ' ' || is_nullable, ',' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_schema = '$1' AND table_name = '$2'"
}
cache_cols() {  # one query for the columns of every table in schema $1
    local t c
    while IFS='|' read -r t c; do COLS[$1.$t]=$c; done < <(q "SELECT table_name, string_agg(column_name || ' ' || data_type || ' ' || is_nullable, ',' ORDER BY ordinal_position)
         FROM information_schema.columns WHERE table_schema = '$1' GROUP BY table_name")
}
listen() {  # listen <channel> <statement>...: run them in a LISTENing session, print payloads received
    local ch=$1; shift; local a=(); for s in "$@"; do a+=(-c "$s"); done
    "${PSQL[@]}" -d "$TEST_DB" -c "LISTEN $ch" "${a[@]}" -c "SELECT 1" 2>/dev/null \
        | sed -n "s/^Asynchronous notification \"$ch\" with payload \"\(.*\)\" received from server process with PID [0-9]*\.\$/\1/p"
}

# --- the files and the install --------------------------------------------
for f in 001_relay_catalog 002_outbox 003_consumer_groups 004_inbox; do
    is "$(head -1 "$SQL_DIR/$f.sql")" "-- relay:skip-if-pg_trickle" "$f.sql is skipped when pg_trickle is installed"
done
isnt_skip=$(head -1 "$SQL_DIR/005_relay_runtime.sql")
ok "$([ "$isnt_skip" != "-- relay:skip-if-pg_trickle" ] && echo 0 || echo 1)" "005_relay_runtime.sql is always applied"
ok "$(grep -l '^\\' "$SQL_DIR"/*.sql >/dev/null && echo 1 || echo 0)" "no psql meta-commands in sql/"

setup_db
pass "init installed the catalog"
is "$(q "SELECT pgtrickle.relay_catalog_version()")" "4" "relay_catalog_version() = 4"
is "$(q "SELECT value FROM pgtrickle.relay_catalog_meta WHERE key = 'version'")" "4" "relay_catalog_meta version = 4"

# --- exact table layouts ---------------------------------------------------
cache_cols pgtrickle
is "$(cols pgtrickle relay_outbox_config)" "name text NO,enabled boolean NO,config jsonb NO" "relay_outbox_config columns"
is "$(cols pgtrickle relay_inbox_config)" "name text NO,enabled boolean NO,config jsonb NO" "relay_inbox_config columns"
is "$(cols pgtrickle relay_consumer_offsets)" \
   "relay_group_id text NO,pipeline_id text NO,last_change_id bigint NO,worker_id text YES,updated_at timestamp with time zone NO" \
   "relay_consumer_offsets columns"
is "$(q "SELECT string_agg(a.attname, ',' ORDER BY a.attnum) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'pgtrickle.relay_consumer_offsets'::regclass AND i.indisprimary")" \
   "relay_group_id,pipeline_id" "relay_consumer_offsets primary key"
is "$(cols pgtrickle pgt_outbox_config)" \
   "stream_table_oid oid NO,stream_table_name text NO,outbox_table_name text NO,retention_hours integer NO,created_at timestamp with time zone NO,last_drained_at timestamp with time zone YES,last_drained_count bigint NO" \
   "pgt_outbox_config columns"
is "$(cols pgtrickle pgt_consumer_groups)" \
   "group_name text NO,outbox_name text NO,auto_offset_reset text NO,created_at timestamp with time zone NO" "pgt_consumer_groups columns"
is "$(cols pgtrickle pgt_consumer_offsets)" \
   "group_name text NO,consumer_id text NO,committed_offset bigint NO,last_committed_at timestamp with time zone YES,last_heartbeat_at timestamp with time zone NO" \
   "pgt_consumer_offsets columns"
is "$(cols pgtrickle pgt_consumer_leases)" \
   "group_name text NO,consumer_id text NO,batch_start bigint NO,batch_end bigint NO,lease_expires timestamp with time zone NO" \
   "pgt_consumer_leases columns"
is "$(cols pgtrickle pgt_inbox_config)" \
   "inbox_name text NO,inbox_schema text NO,max_retries integer NO,schedule text NO,with_dead_letter boolean NO,with_stats boolean NO,retention_hours integer NO,id_column text NO,processed_at_column text NO,retry_count_column text NO,error_column text NO,received_at_column text NO,event_type_column text NO,is_managed boolean NO,created_at timestamp with time zone NO" \
   "pgt_inbox_config columns"
is "$(cols pgtrickle pgt_inbox_ordering_config)" "inbox_name text NO,aggregate_id_col text NO,sequence_num_col text NO,created_at timestamp with time zone NO" "pgt_inbox_ordering_config columns"
is "$(cols pgtrickle pgt_inbox_priority_config)" "inbox_name text NO,priority_col text NO,tiers jsonb YES,created_at timestamp with time zone NO" "pgt_inbox_priority_config columns"
is "$(cols pgtrickle relay_dlq)" \
   "id bigint NO,pipeline text NO,dedup_key text NO,subject text YES,payload jsonb YES,error text NO,failed_at timestamp with time zone NO,replayed_at timestamp with time zone YES,replay_count integer NO,replay_requested_at timestamp with time zone YES,op text YES,dedup_key_raw bytea YES,subject_raw bytea YES,payload_raw bytea YES,payload_is_json boolean YES" \
   "relay_dlq columns"

# --- security model ----------------------------------------------------------
is "$(q "SELECT count(*) FROM pg_proc WHERE pronamespace = 'pgtrickle'::regnamespace AND NOT prosecdef")" "0" \
   "every function in schema pgtrickle is SECURITY DEFINER"
is "$(q "SELECT coalesce(string_agg(proname, ','), '') FROM pg_proc WHERE pronamespace = 'pgtrickle'::regnamespace AND prosecdef
          AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) c WHERE c LIKE 'search\_path=pg\_catalog, pgtrickle%')")" "" \
   "every SECURITY DEFINER function has SET search_path = pg_catalog, pgtrickle"
is "$(q "SELECT coalesce(string_agg(oid::regprocedure::text, ','), '') FROM pg_proc WHERE pronamespace = 'pgtrickle'::regnamespace
          AND has_function_privilege('public', oid, 'EXECUTE')")" "" "no function in pgtrickle is executable by PUBLIC"
is "$(q "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pgtrickle_relay'")" "f" "role pgtrickle_relay exists, NOLOGIN"
is "$(q "SELECT has_schema_privilege('pgtrickle_relay', 'pgtrickle', 'USAGE')")" "t" "pgtrickle_relay has USAGE on schema pgtrickle"
is "$(q "SELECT string_agg(t || '=' || has_table_privilege('pgtrickle_relay', 'pgtrickle.' || t, 'SELECT,INSERT,UPDATE,DELETE'), ',' ORDER BY t)
          FROM unnest(ARRAY['relay_outbox_config','relay_inbox_config','relay_consumer_offsets','relay_dlq']) t")" \
   "relay_consumer_offsets=false,relay_dlq=false,relay_inbox_config=false,relay_outbox_config=false" \
   "pgtrickle_relay has no table rights on the relay tables"

sql "DO \$\$ BEGIN CREATE ROLE $RELAY_LOGIN LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END \$\$" >/dev/null 2>&1
sql "DO \$\$ BEGIN CREATE ROLE $PLAIN_LOGIN LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END \$\$" >/dev/null 2>&1
sql "GRANT pgtrickle_relay TO $RELAY_LOGIN" >/dev/null 2>&1
sql "DO \$\$ BEGIN CREATE ROLE $ADMIN_LOGIN LOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END \$\$" >/dev/null 2>&1
sql "GRANT pgtrickle_relay_admin TO $ADMIN_LOGIN" >/dev/null 2>&1

# --- two roles (issue 11): the daemon's login cannot reconfigure it ----------
is "$(q "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'pgtrickle_relay_admin'")" "f" "role pgtrickle_relay_admin exists, NOLOGIN"
setters="set_relay_outbox('x', 'orders', NULL, '{\"type\":\"file\",\"output\":\"/tmp/x/pwned.jsonl\"}')
set_relay_outbox('x', '{\"stream_table\":\"orders\",\"sink_type\":\"stdout\"}')
set_relay_inbox('x', 'in', '{\"type\":\"stdin\"}')
set_relay_inbox('x', '{\"source_type\":\"stdin\",\"inbox_table\":\"in\"}')
set_relay_cdc('x', '{\"source\":{\"publication\":\"p\"},\"sink\":{\"type\":\"stdout\"}}')
enable_relay('x')
disable_relay('x')
delete_relay('x')
relay_dlq_replay('x')"
refused=0 total=0
while IFS= read -r call; do
    total=$((total + 1))
    if [[ "$(as_relay "SELECT pgtrickle.$call")" == *"permission denied for function"* ]]; then refused=$((refused + 1))
    else diag "pgtrickle_relay may call $call"; fi
done <<<"$setters"
is "$refused/$total" "9/9" "the runtime role pgtrickle_relay is refused every setter (and relay_dlq_replay)"
is "$(q "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
          WHERE n.nspname = 'pgtrickle' AND p.proname ~ '^(set_relay_|enable_relay|disable_relay|delete_relay|relay_dlq_replay)'
            AND has_function_privilege('pgtrickle_relay', p.oid, 'EXECUTE')")" 0 \
   "  ... checked in the catalog too: no setter is executable by pgtrickle_relay"
is "$(as_admin "SELECT pgtrickle.set_relay_outbox('adm1', 'orders', NULL, '{\"type\":\"stdout\"}'); SELECT pgtrickle.disable_relay('adm1'); SELECT pgtrickle.delete_relay('adm1'); SELECT 'ok'" | tail -1)" ok \
   "the admin role can set, disable and delete pipelines"
like "$(as_admin "SELECT * FROM pgtrickle.relay_outbox_config")" "permission denied for table relay_outbox_config" \
   "  ... but not touch the config tables directly"

# --- set_relay_outbox (6 args) ---------------------------------------------
q "SELECT pgtrickle.set_relay_outbox('fwd1', 'orders', NULL, '{\"type\":\"nats\",\"url\":\"nats://localhost:4222\"}')" >/dev/null
is "$(jeq "$(cfg fwd1)" '{"source_type":"outbox","source":{"outbox":"orders","group":null,"retention_hours":24},"sink_type":"nats","sink":{"type":"nats","url":"nats://localhost:4222"}}')" \
   "t" "set_relay_outbox stores the pg_trickle config shape"
q "SELECT pgtrickle.set_relay_outbox('fwd2', 'orders', 'grp', '{\"type\":\"stdout\"}', 48, false)" >/dev/null
is "$(q "SELECT enabled, config->'source'->>'group', config->'source'->>'retention_hours' FROM pgtrickle.relay_outbox_config WHERE name = 'fwd2'")" \
   "f|grp|48" "set_relay_outbox honours group, retention and enabled"
q "SELECT pgtrickle.set_relay_outbox('fwd2', 'orders2', NULL, '{\"type\":\"stdout\"}')" >/dev/null
is "$(q "SELECT enabled, config->'source'->>'outbox' FROM pgtrickle.relay_outbox_config WHERE name = 'fwd2'")" "t|orders2" "set_relay_outbox upserts"
is "$(err "SELECT pgtrickle.set_relay_outbox('bad', 'orders', NULL, '{\"url\":\"x\"}')")" \
   'relay.invalid_config: sink JSONB must contain a "type" key (e.g. "nats", "kafka", "http", "redis", "sqs", "rabbitmq", "stdout", "pg-inbox"). Got: {"url": "x"}' \
   "set_relay_outbox without sink type: exact error"
is "$(state "SELECT pgtrickle.set_relay_outbox('bad', 'orders', NULL, '{\"url\":\"x\"}')")" "P0001" "  ... ERRCODE raise_exception"
is "$(err "SELECT pgtrickle.set_relay_outbox('bad', '', NULL, '{\"type\":\"nats\"}')")" \
   "relay.invalid_config: outbox name must not be empty" "set_relay_outbox with empty outbox: exact error"

# --- set_relay_inbox (8 args) ----------------------------------------------
q "SELECT pgtrickle.set_relay_inbox('rev1', 'orders_inbox', '{\"type\":\"nats\",\"url\":\"nats://localhost:4222\",\"stream\":\"commands\"}')" >/dev/null
is "$(jeq "$(icfg rev1)" '{"source_type":"nats","source":{"type":"nats","url":"nats://localhost:4222","stream":"commands"},"sink_type":"pg-inbox","sink":{"inbox":"orders_inbox","max_retries":3,"schedule":"1s","with_dead_letter":true,"retention_hours":24}}')" \
   "t" "set_relay_inbox stores the pg_trickle config shape"
q "SELECT pgtrickle.set_relay_inbox('rev2', 'ib', '{\"type\":\"kafka\"}', 5, '2s', false, 12, false)" >/dev/null
is "$(q "SELECT enabled, config->'sink' = '{\"inbox\":\"ib\",\"max_retries\":5,\"schedule\":\"2s\",\"with_dead_letter\":false,\"retention_hours\":12}'::jsonb FROM pgtrickle.relay_inbox_config WHERE name = 'rev2'")" \
   "f|t" "set_relay_inbox honours every argument"
is "$(err "SELECT pgtrickle.set_relay_inbox('bad', 'ib', '{}')")" \
   'relay.invalid_config: source JSONB must contain a "type" key (e.g. "kafka", "nats", "http", "redis", "sqs", "rabbitmq", "stdin"). Got: {}' \
   "set_relay_inbox without source type: exact error"
is "$(err "SELECT pgtrickle.set_relay_inbox('bad', '', '{\"type\":\"nats\"}')")" \
   "relay.invalid_config: inbox name must not be empty" "set_relay_inbox with empty inbox: exact error"

# --- enable / disable / delete / get / list --------------------------------
q "SELECT pgtrickle.disable_relay('fwd1')" >/dev/null
is "$(q "SELECT enabled FROM pgtrickle.relay_outbox_config WHERE name = 'fwd1'")" "f" "disable_relay disables a forward pipeline"
q "SELECT pgtrickle.enable_relay('fwd1')" >/dev/null
is "$(q "SELECT enabled FROM pgtrickle.relay_outbox_config WHERE name = 'fwd1'")" "t" "enable_relay enables it again"
q "SELECT pgtrickle.disable_relay('rev1')" >/dev/null
is "$(q "SELECT enabled FROM pgtrickle.relay_inbox_config WHERE name = 'rev1'")" "f" "disable_relay disables a reverse pipeline"
NF='relay: pipeline "nope" not found in relay_outbox_config or relay_inbox_config'
for f in enable_relay disable_relay delete_relay get_relay_config; do
    is "$(err "SELECT * FROM pgtrickle.$f('nope')")" "$NF" "$f on a missing pipeline: exact error"
    is "$(state "SELECT * FROM pgtrickle.$f('nope')")" "P0002" "  ... ERRCODE no_data_found"
done
is "$(q "SELECT name, direction, enabled, config->>'sink_type' FROM pgtrickle.get_relay_config('fwd1')")" "fwd1|forward|t|nats" "get_relay_config: forward row"
is "$(q "SELECT name, direction, enabled, config->>'sink_type' FROM pgtrickle.get_relay_config('rev1')")" "rev1|reverse|f|pg-inbox" "get_relay_config: reverse row"
is "$(q "SELECT pg_get_function_result('pgtrickle.list_relay_configs()'::regprocedure)")" \
   "TABLE(name text, direction text, enabled boolean, config jsonb)" "list_relay_configs result columns"
is "$(q "SELECT pg_get_function_result('pgtrickle.get_relay_config(text)'::regprocedure)")" \
   "TABLE(name text, direction text, enabled boolean, config jsonb)" "get_relay_config result columns"
is "$(q "SELECT string_agg(name || ':' || direction, ',') FROM pgtrickle.list_relay_configs()")" \
   "fwd1:forward,fwd2:forward,rev1:reverse,rev2:reverse" "list_relay_configs lists both directions ordered by name"
q "SELECT pgtrickle.delete_relay('rev2')" >/dev/null
is "$(q "SELECT count(*) FROM pgtrickle.relay_inbox_config WHERE name = 'rev2'")" "0" "delete_relay deletes"

# --- NOTIFY -------------------------------------------------------------------
is "$(listen pgtrickle_relay_config "SELECT pgtrickle.set_relay_outbox('n1', 'o', NULL, '{\"type\":\"nats\"}')")" \
   '{"direction" : "relay_outbox_config", "event" : "INSERT", "name" : "n1", "enabled" : true}' "NOTIFY on set_relay_outbox (INSERT)"
is "$(listen pgtrickle_relay_config "SELECT pgtrickle.disable_relay('n1')")" \
   '{"direction" : "relay_outbox_config", "event" : "UPDATE", "name" : "n1", "enabled" : false}' "NOTIFY on disable_relay (UPDATE)"
is "$(listen pgtrickle_relay_config "SELECT pgtrickle.delete_relay('n1')")" \
   '{"direction" : "relay_outbox_config", "event" : "DELETE", "name" : "n1", "enabled" : false}' "NOTIFY on delete_relay (DELETE)"
is "$(listen pgtrickle_relay_config "SELECT pgtrickle.enable_relay('rev1')")" \
   '{"direction" : "relay_inbox_config", "event" : "UPDATE", "name" : "rev1", "enabled" : true}' "NOTIFY on the inbox table"

# --- README call form: set_relay_outbox(name, config) -----------------------
q "SELECT pgtrickle.set_relay_outbox('six', 'orders_stream', NULL, '{\"type\":\"nats\",\"url\":\"nats://localhost:4222\",\"stream\":\"pgtrickle\",\"subject_template\":\"pgtrickle.{stream_table}.{op}\"}'); SELECT pgtrickle.set_relay_outbox('flat', config => '{\"stream_table\":\"orders_stream\",\"sink_type\":\"nats\",\"nats_url\":\"nats://localhost:4222\",\"nats_stream\":\"pgtrickle\",\"subject_template\":\"pgtrickle.{stream_table}.{op}\"}'::jsonb)" >/dev/null
is "$(jeq "$(cfg flat)" "$(cfg six)")" "t" "flat README config stores exactly what the 6-argument form stores"
q "SELECT pgtrickle.set_relay_outbox('kflat', '{\"stream_table\":\"s\",\"group\":\"g\",\"batch_size\":10,\"poll_interval_ms\":50,\"retention_hours\":6,\"sink_type\":\"kafka\",\"kafka_brokers\":\"b:9092\",\"kafka_topic\":\"t.{op}\",\"kafka_key_field\":\"customer_id\",\"enabled\":false}')" >/dev/null
is "$(jeq "$(cfg kflat)" '{"source_type":"outbox","source":{"outbox":"s","group":"g","retention_hours":6,"batch_size":10,"poll_interval_ms":50},"sink_type":"kafka","sink":{"type":"kafka","brokers":"b:9092","topic_template":"t.{op}","key_template":"{payload.customer_id}"}}')" \
   "t" "flat kafka/source keys map to source.* and sink.*; kafka_key_field names a payload field (issue 11 #4)"
like "$(err "SELECT pgtrickle.set_relay_outbox('kbad', '{\"stream_table\":\"s\",\"sink_type\":\"kafka\",\"kafka_brokers\":\"b\",\"kafka_key_field\":\"{dedup_key}\"}')")" \
   'kafka_key_field" must be the name of a payload field' "kafka_key_field that is not a field name is refused"
is "$(q "SELECT enabled FROM pgtrickle.relay_outbox_config WHERE name = 'kflat'")" "f" "flat \"enabled\": false is honoured"
q "SELECT pgtrickle.set_relay_outbox('wflat', '{\"stream_table\":\"s\",\"sink_type\":\"webhook\",\"webhook_url\":\"http://h/x\",\"webhook_headers\":{\"A\":\"b\"}}')" >/dev/null
is "$(q "SELECT config->'sink' = '{\"type\":\"webhook\",\"url\":\"http://h/x\",\"headers\":{\"A\":\"b\"}}'::jsonb FROM pgtrickle.relay_outbox_config WHERE name = 'wflat'")" "t" "flat webhook keys"
q "SELECT pgtrickle.set_relay_outbox('rflat', '{\"stream_table\":\"s\",\"sink_type\":\"redis\",\"redis_url\":\"redis://h\",\"redis_stream\":\"k\"}'); SELECT pgtrickle.set_relay_outbox('qflat', '{\"stream_table\":\"s\",\"sink_type\":\"sqs\",\"sqs_queue_url\":\"http://q\",\"sqs_region\":\"eu-west-1\"}')" >/dev/null
is "$(q "SELECT (SELECT config->'sink' FROM pgtrickle.relay_outbox_config WHERE name = 'rflat') = '{\"type\":\"redis\",\"url\":\"redis://h\",\"stream_key\":\"k\"}'::jsonb
            AND (SELECT config->'sink' FROM pgtrickle.relay_outbox_config WHERE name = 'qflat') = '{\"type\":\"sqs\",\"queue_url\":\"http://q\",\"region\":\"eu-west-1\"}'::jsonb")" \
   "t" "flat redis and sqs keys"
q "SELECT pgtrickle.set_relay_outbox('nested', '{\"source\":{\"outbox\":\"a\",\"batch_size\":1},\"sink\":{\"type\":\"stdout\",\"format\":\"jsonl\"},\"stream_table\":\"b\"}')" >/dev/null
is "$(jeq "$(cfg nested)" '{"source_type":"outbox","source":{"outbox":"b","group":null,"retention_hours":24,"batch_size":1},"sink_type":"stdout","sink":{"type":"stdout","format":"jsonl"}}')" \
   "t" "nested source/sink are merged, flat keys win"
like "$(err "SELECT pgtrickle.set_relay_outbox('x', '{\"stream_table\":\"s\",\"sink_type\":\"nats\",\"bogus\":1}')")" \
   '^relay\.invalid_config: unknown key "bogus" ' "unknown flat key: error naming it"
is "$(err "SELECT pgtrickle.set_relay_outbox('x', '{\"sink_type\":\"nats\"}')")" \
   'relay.invalid_config: missing required key "stream_table" (or "source": {"outbox": ...})' "missing stream_table: error naming it"
is "$(err "SELECT pgtrickle.set_relay_outbox('x', '{\"stream_table\":\"s\",\"nats_url\":\"u\"}')")" \
   'relay.invalid_config: missing required key "sink_type" (or "sink": {"type": ...})' "missing sink_type: error naming it"
is "$(err "SELECT pgtrickle.set_relay_outbox('x', '{\"stream_table\":\"s\",\"sink_type\":\"kafka\",\"nats_url\":\"u\"}')")" \
   'relay.invalid_config: key "nats_url" needs sink_type "nats", got "kafka"' "backend key of another sink type: error"
is "$(q "SELECT count(*) FROM pgtrickle.relay_outbox_config WHERE name = 'x'")" "0" "  ... and nothing stored"

# --- README call form: set_relay_inbox(name, config) ------------------------
q "SELECT pgtrickle.set_relay_inbox('rflat8', 'orders_inbox', '{\"type\":\"nats\",\"url\":\"nats://localhost:4222\",\"stream\":\"commands\",\"durable_name\":\"relay-consumer\"}'); SELECT pgtrickle.set_relay_inbox('rflat', config => '{\"source_type\":\"nats\",\"nats_url\":\"nats://localhost:4222\",\"nats_stream\":\"commands\",\"nats_consumer\":\"relay-consumer\",\"inbox_table\":\"orders_inbox\"}'::jsonb)" >/dev/null
is "$(jeq "$(icfg rflat)" "$(icfg rflat8)")" "t" "flat README inbox config stores exactly what the 8-argument form stores"
q "SELECT pgtrickle.set_relay_inbox('kin', '{\"source_type\":\"kafka\",\"kafka_brokers\":\"b\",\"kafka_topic\":\"t\",\"kafka_group_id\":\"g\",\"batch_size\":7,\"inbox_table\":\"ib\",\"inbox_schema\":\"app\"}')" >/dev/null
is "$(jeq "$(icfg kin)" '{"source_type":"kafka","source":{"type":"kafka","brokers":"b","topic":"t","group_id":"g","batch_size":7},"sink_type":"pg-inbox","sink":{"inbox":"ib","schema":"app","max_retries":3,"schedule":"1s","with_dead_letter":true,"retention_hours":24}}')" \
   "t" "flat kafka reverse keys"
q "SELECT pgtrickle.set_relay_inbox('win', '{\"source_type\":\"webhook\",\"webhook_bind\":\"127.0.0.1:9000\",\"webhook_path\":\"/in\",\"nats_subject\":\"x\",\"inbox_table\":\"ib\"}')" >/dev/null
is "$(q "SELECT count(*) FROM pgtrickle.relay_inbox_config WHERE name = 'win'")" "0" "reverse backend key of another source type is rejected"
q "SELECT pgtrickle.set_relay_inbox('win', '{\"source_type\":\"webhook\",\"webhook_bind\":\"127.0.0.1:9000\",\"webhook_path\":\"/in\",\"inbox_table\":\"ib\"}')" >/dev/null
is "$(q "SELECT config->'source' = '{\"type\":\"webhook\",\"listen_addr\":\"127.0.0.1:9000\",\"path\":\"/in\"}'::jsonb FROM pgtrickle.relay_inbox_config WHERE name = 'win'")" "t" "flat webhook reverse keys"
q "SELECT pgtrickle.set_relay_inbox('nin', '{\"source_type\":\"nats\",\"nats_subject\":\"cmd.>\",\"inbox_table\":\"ib\"}')" >/dev/null
is "$(q "SELECT config->'source'->>'subject' FROM pgtrickle.relay_inbox_config WHERE name = 'nin'")" "cmd.>" "nats_subject -> source.subject"
like "$(err "SELECT pgtrickle.set_relay_inbox('x', '{\"source_type\":\"nats\",\"inbox_table\":\"i\",\"stream_table\":\"s\"}')")" \
   '^relay\.invalid_config: unknown key "stream_table" ' "unknown reverse key: error naming it"
is "$(err "SELECT pgtrickle.set_relay_inbox('x', '{\"inbox_table\":\"i\"}')")" \
   'relay.invalid_config: missing required key "source_type" (or "source": {"type": ...})' "missing source_type: error naming it"
is "$(err "SELECT pgtrickle.set_relay_inbox('x', '{\"source_type\":\"nats\"}')")" \
   'relay.invalid_config: missing required key "inbox_table" (or "sink": {"inbox": ...})' "missing inbox_table: error naming it"

# --- set_relay_cdc ---------------------------------------------------------------
q "SELECT pgtrickle.set_relay_cdc('cdc1', '{\"source\":{\"publication\":\"pub1\",\"slot\":\"slot_1\",\"snapshot\":\"initial\"},\"sink\":{\"type\":\"nats\",\"url\":\"nats://h\"}}')" >/dev/null
is "$(jeq "$(cfg cdc1)" '{"source_type":"cdc","source":{"publication":"pub1","slot":"slot_1","snapshot":"initial"},"sink_type":"nats","sink":{"type":"nats","url":"nats://h"}}')" \
   "t" "set_relay_cdc stores source_type cdc"
is "$(q "SELECT direction, enabled FROM pgtrickle.get_relay_config('cdc1')")" "forward|t" "  ... as an enabled forward pipeline"
q "SELECT pgtrickle.set_relay_cdc('cdc1', '{\"source\":{\"publication\":\"pub1\",\"slot\":\"slot_1\"},\"sink\":{\"type\":\"stdout\"},\"enabled\":false}')" >/dev/null
is "$(q "SELECT enabled, config->>'sink_type' FROM pgtrickle.relay_outbox_config WHERE name = 'cdc1'")" "f|stdout" "set_relay_cdc upserts and honours enabled"
is "$(err "SELECT pgtrickle.set_relay_cdc('x', '{\"source\":{\"slot\":\"s\"},\"sink\":{\"type\":\"stdout\"}}')")" \
   'relay.invalid_config: missing required key "source.publication"' "set_relay_cdc without publication: error naming it"
is "$(err "SELECT pgtrickle.set_relay_cdc('x', '{\"source\":{\"publication\":\"p\"},\"sink\":{\"type\":\"stdout\"}}')")" \
   'relay.invalid_config: missing required key "source.slot"' "set_relay_cdc without slot: error naming it"
is "$(err "SELECT pgtrickle.set_relay_cdc('x', '{\"source\":{\"publication\":\"p\",\"slot\":\"s\"},\"sink\":{}}')")" \
   'relay.invalid_config: missing required key "sink.type"' "set_relay_cdc without sink type: error naming it"
like "$(err "SELECT pgtrickle.set_relay_cdc('x', '{\"source\":{\"publication\":\"p\",\"slot\":\"Bad-Slot\"},\"sink\":{\"type\":\"stdout\"}}')")" \
   '^relay\.invalid_config: "source\.slot" must be a replication slot name' "set_relay_cdc rejects an invalid slot name"
like "$(err "SELECT pgtrickle.set_relay_cdc('x', '{\"source\":{\"publication\":\"p\",\"slot\":\"s\"},\"sink\":{\"type\":\"stdout\"},\"tables\":[]}')")" \
   '^relay\.invalid_config: unknown key "tables" ' "set_relay_cdc unknown key: error naming it"

# --- role: what a relay login can and cannot do ------------------------------
like "$(as_relay "SELECT * FROM pgtrickle.relay_outbox_config")" "permission denied for table relay_outbox_config" \
   "relay login cannot SELECT relay_outbox_config"
like "$(as_relay "SELECT * FROM pgtrickle.relay_inbox_config")" "permission denied for table relay_inbox_config" \
   "relay login cannot SELECT relay_inbox_config"
like "$(as_relay "SELECT * FROM pgtrickle.relay_consumer_offsets")" "permission denied for table relay_consumer_offsets" \
   "relay login cannot SELECT relay_consumer_offsets"
like "$(as_relay "SELECT * FROM pgtrickle.relay_dlq")" "permission denied for table relay_dlq" \
   "relay login cannot SELECT relay_dlq"
is "$(as_relay "SELECT count(*) FROM pgtrickle.list_relay_configs()")" "$(q "SELECT count(*) FROM pgtrickle.list_relay_configs()")" "relay login can call list_relay_configs()"
is "$(as_relay "SELECT config->>'sink_type' FROM pgtrickle.get_relay_config('fwd1')")" "nats" "relay login can call get_relay_config()"
is "$(as_relay "SELECT pgtrickle.relay_commit_offset('default', 'fwd1', 10, 'host:1')")" "10" "relay login: relay_commit_offset 10 -> 10"
is "$(as_relay "SELECT pgtrickle.relay_commit_offset('default', 'fwd1', 5, 'host:2')")" "10" "relay login: relay_commit_offset 5 -> stays 10"
is "$(as_relay "SELECT pgtrickle.relay_get_offset('default', 'fwd1')")" "10" "relay login: relay_get_offset = 10 (offsets only move forward)"
is "$(as_relay "SELECT pgtrickle.relay_get_offset('default', 'never')")" "0" "relay_get_offset of an unknown pipeline = 0"
is "$(q "SELECT last_change_id, worker_id FROM pgtrickle.relay_consumer_offsets WHERE relay_group_id = 'default' AND pipeline_id = 'fwd1'")" \
   "10|host:2" "relay_consumer_offsets row: kept offset, latest worker"
is "$(as_relay "SELECT pgtrickle.relay_commit_offset('default', 'fwd1', 12, 'host:2')")" "12" "relay_commit_offset moves forward"
is "$(as_relay "SELECT pgtrickle.relay_catalog_version()")" "4" "relay login can call relay_catalog_version()"
like "$(as_plain "SELECT pgtrickle.set_relay_outbox('zz', 'o', NULL, '{\"type\":\"nats\"}')")" "permission denied" \
   "ordinary login cannot execute set_relay_outbox"
sql "GRANT USAGE ON SCHEMA pgtrickle TO $PLAIN_LOGIN" >/dev/null
like "$(as_plain "SELECT pgtrickle.set_relay_outbox('zz', 'o', NULL, '{\"type\":\"nats\"}')")" "permission denied for function set_relay_outbox" \
   "  ... even with USAGE on the schema (EXECUTE revoked from PUBLIC)"
like "$(as_plain "SELECT pgtrickle.list_relay_configs()")" "permission denied for function list_relay_configs" \
   "ordinary login cannot execute list_relay_configs"
like "$(as_plain "SELECT pgtrickle.relay_get_offset('default', 'fwd1')")" "permission denied for function relay_get_offset" \
   "ordinary login cannot execute relay_get_offset"
sql "REVOKE USAGE ON SCHEMA pgtrickle FROM $PLAIN_LOGIN" >/dev/null

# --- outbox layer ------------------------------------------------------------
q "CREATE TABLE public.orders (id int PRIMARY KEY)" >/dev/null
q "SELECT pgtrickle.enable_outbox('orders')" >/dev/null
is "$(q "SELECT stream_table_name, outbox_table_name, retention_hours, stream_table_oid = 'public.orders'::regclass::oid FROM pgtrickle.pgt_outbox_config")" \
   "orders|outbox_orders|24|t" "enable_outbox registers the outbox (oid of the existing relation)"
is "$(cols pgtrickle outbox_orders)" \
   "id bigint NO,pgt_id uuid NO,refresh_id uuid YES,created_at timestamp with time zone NO,inserted_count bigint NO,deleted_count bigint NO,is_claim_check boolean NO,payload jsonb YES" \
   "outbox table has pg_trickle's columns"
is "$(cols pgtrickle outbox_delta_rows_orders)" "outbox_id bigint NO,row_op text NO,row_data jsonb NO,row_num bigint NO" \
   "claim-check table has pg_trickle's columns"
is "$(q "SELECT to_regclass('pgtrickle.pgt_outbox_latest_orders') IS NOT NULL")" "t" "latest view exists"
is "$(err "SELECT pgtrickle.enable_outbox('public.orders')")" "outbox already enabled for stream table: public.orders" "enable_outbox twice: exact error"
q "SELECT pgtrickle.enable_outbox('app.events', 48)" >/dev/null
is "$(q "SELECT stream_table_name, outbox_table_name, retention_hours, stream_table_oid::bigint >= 4000000000 FROM pgtrickle.pgt_outbox_config WHERE stream_table_name = 'events'")" \
   "events|outbox_events|48|t" "enable_outbox of a name that is not a relation (schema-qualified, stored unqualified)"
LONG=$(printf 'x%.0s' $(seq 1 70))
q "SELECT pgtrickle.enable_outbox('$LONG')" >/dev/null
is "$(q "SELECT outbox_table_name FROM pgtrickle.pgt_outbox_config WHERE stream_table_name = '$LONG'")" "outbox_${LONG:0:56}" \
   "outbox table name truncated to 63 characters"
is "$(q "SELECT to_regclass(format('pgtrickle.%I', 'outbox_delta_rows_' || left('$LONG', 48))) IS NOT NULL")" "t" "claim-check table of a long name exists"
is "$(q "SELECT outbox_table || '|' || delta_table FROM pgtrickle.relay_outbox_source('$LONG')")" \
   "outbox_${LONG:0:56}|outbox_delta_rows_${LONG:0:45}" "relay_outbox_source names the long-name tables as stored"

ID1=$(q "SELECT pgtrickle.outbox_write('orders', '[{\"id\":1},{\"id\":2}]')")
like "$ID1" '^[0-9]+$' "outbox_write returns the new outbox id"
is "$(q "SELECT inserted_count, deleted_count, is_claim_check, payload = '{\"v\":1,\"inserted\":[{\"id\":1},{\"id\":2}],\"deleted\":[]}'::jsonb FROM pgtrickle.outbox_orders WHERE id = $ID1")" \
   "2|0|f|t" "outbox_write inline row: counts and {v:1,inserted,deleted} payload"
is "$(listen pgtrickle_outbox_new "SELECT pgtrickle.outbox_write('public.orders', '[{\"id\":3}]', '[{\"id\":1}]')")" "outbox_orders" \
   "outbox_write notifies pgtrickle_outbox_new with the outbox table name"
ID3=$(q "SET pg_trickle.outbox_inline_threshold_rows = 3; SELECT pgtrickle.outbox_write('orders', '[{\"id\":10},{\"id\":11},{\"id\":12}]', '[{\"id\":1},{\"id\":2}]')")
is "$(q "SELECT inserted_count, deleted_count, is_claim_check, payload = '{\"v\":1,\"claim_check\":true,\"inserted_count\":3,\"deleted_count\":2}'::jsonb FROM pgtrickle.outbox_orders WHERE id = $ID3")" \
   "3|2|t|t" "outbox_write above the threshold: claim-check header"
is "$(q "SELECT string_agg(row_num || ':' || row_op || ':' || (row_data->>'id'), ',' ORDER BY row_num) FROM pgtrickle.outbox_delta_rows_orders WHERE outbox_id = $ID3")" \
   "1:INSERT:10,2:INSERT:11,3:INSERT:12,4:DELETE:1,5:DELETE:2" "claim-check rows: INSERT then DELETE, row_num 1..N+M"
ID4=$(q "SET pg_trickle.outbox_inline_threshold_rows = 3; SELECT pgtrickle.outbox_write('orders', '[{\"id\":20},{\"id\":21},{\"id\":22}]')")
is "$(q "SELECT is_claim_check FROM pgtrickle.outbox_orders WHERE id = $ID4")" "f" "exactly at the threshold stays inline"
is "$(q "SELECT pgtrickle.outbox_write('orders', '[]') IS NULL")" "t" "outbox_write with nothing to write returns NULL"
is "$(err "SELECT pgtrickle.outbox_write('orders', '{\"id\":1}')")" \
   "invalid argument: outbox_write p_inserted must be a JSON array of row objects, got a JSON object" "outbox_write: p_inserted must be an array"
is "$(err "SELECT pgtrickle.outbox_write('orders', '[]', '1')")" \
   "invalid argument: outbox_write p_deleted must be a JSON array of row objects, got a JSON number" "outbox_write: p_deleted must be an array"
is "$(err "SELECT pgtrickle.outbox_write('nope', '[{}]')")" "outbox not enabled for stream table: public.nope" "outbox_write to a missing outbox: exact error"
is "$(q "SELECT (s->>'enabled') || '|' || (s->>'stream_table') || '|' || (s->>'outbox_table') || '|' || (s->>'row_count') || '|' || (s->>'stream_table_name') || '|' || (s->>'last_drained_count') || '|' || (s ? 'oldest_row') || (s ? 'newest_row') || (s ? 'retention_hours') FROM pgtrickle.outbox_status('orders') s")" \
   "true|public.orders|pgtrickle.outbox_orders|4|orders|0|truetruetrue" "outbox_status of an enabled outbox"
is "$(q "SELECT pgtrickle.outbox_status('nope')")" '{"enabled": false, "stream_table": "public.nope"}' "outbox_status of a missing outbox"
q "SELECT pgtrickle.outbox_rows_consumed('orders', $ID3)" >/dev/null
is "$(q "SELECT last_drained_count, last_drained_at IS NOT NULL FROM pgtrickle.pgt_outbox_config WHERE stream_table_name = 'orders'")" "5|t" \
   "outbox_rows_consumed: last_drained_count = delta rows deleted"
is "$(q "SELECT count(*) FROM pgtrickle.outbox_delta_rows_orders")" "0" "  ... claim-check rows deleted"
is "$(q "SELECT count(*) FROM pgtrickle.outbox_orders")" "4" "  ... outbox header rows kept"
is "$(err "SELECT pgtrickle.outbox_rows_consumed('nope', 1)")" "outbox not enabled for stream table: public.nope" "outbox_rows_consumed of a missing outbox: exact error"
is "$(q "SELECT outbox_table || '|' || stream_table || '|' || delta_table FROM pgtrickle.relay_outbox_source('public.orders')")" \
   "outbox_orders|orders|outbox_delta_rows_orders" "relay_outbox_source from pgt_outbox_config"
is "$(q "SELECT outbox_table || '|' || stream_table || '|' || delta_table FROM pgtrickle.relay_outbox_source('s.unknown')")" \
   "outbox_unknown|unknown|outbox_delta_rows_unknown" "relay_outbox_source fallback for an unregistered name"
is "$(as_relay "SELECT count(*) FROM pgtrickle.outbox_orders")" "4" "relay login can read outbox tables"
is "$(as_relay "SELECT pgtrickle.outbox_rows_consumed('orders', 0)")" "" "relay login can call outbox_rows_consumed"
like "$(as_relay "SELECT pgtrickle.outbox_write('orders', '[{}]')")" "permission denied for function outbox_write" "relay login cannot call outbox_write"
like "$(as_relay "SELECT pgtrickle.enable_outbox('x')")" "permission denied for function enable_outbox" "relay login cannot call enable_outbox"
q "SELECT pgtrickle.disable_outbox('app.events')" >/dev/null
is "$(q "SELECT count(*) FROM pgtrickle.pgt_outbox_config WHERE stream_table_name = 'events'")|$(q "SELECT to_regclass('pgtrickle.outbox_events') IS NULL AND to_regclass('pgtrickle.outbox_delta_rows_events') IS NULL AND to_regclass('pgtrickle.pgt_outbox_latest_events') IS NULL")" \
   "0|t" "disable_outbox drops the tables, the view and the catalog row"
is "$(err "SELECT pgtrickle.disable_outbox('app.events')")" "outbox not enabled for stream table: app.events" "disable_outbox twice: exact error"
is "$(q "SELECT pgtrickle.disable_outbox('app.events', true)")" "" "disable_outbox with p_if_exists is silent"

# --- consumer groups -----------------------------------------------------------
q "SELECT pgtrickle.create_consumer_group('g1', 'outbox_orders', 'earliest')" >/dev/null
is "$(q "SELECT group_name, outbox_name, auto_offset_reset FROM pgtrickle.pgt_consumer_groups")" "g1|outbox_orders|earliest" "create_consumer_group"
is "$(err "SELECT pgtrickle.create_consumer_group('g1', 'outbox_orders')")" "consumer group already exists: g1" "create_consumer_group twice: exact error"
is "$(err "SELECT pgtrickle.create_consumer_group('g2', 'outbox_orders', 'middle')")" \
   "invalid argument: auto_offset_reset must be 'earliest' or 'latest', got: middle" "invalid auto_offset_reset: exact error"
is "$(q "SELECT pg_get_function_result('pgtrickle.poll_outbox(text,text,integer,integer)'::regprocedure)")" \
   "TABLE(outbox_id bigint, pgt_id uuid, created_at timestamp with time zone, inserted_count bigint, deleted_count bigint, is_claim_check boolean, payload jsonb)" \
   "poll_outbox result columns"
is "$(q "SELECT string_agg(outbox_id::text, ',') FROM pgtrickle.poll_outbox('g1', 'c1', 2)")" "$ID1,$((ID1 + 1))" "poll_outbox (earliest) returns the first batch"
is "$(q "SELECT string_agg(outbox_id::text, ',') FROM pgtrickle.poll_outbox('g1', 'c1', 2)")" "$ID1,$((ID1 + 1))" "poll again without commit: same batch"
is "$(q "SELECT batch_start, batch_end, lease_expires > now() FROM pgtrickle.pgt_consumer_leases WHERE group_name = 'g1' AND consumer_id = 'c1'")" \
   "0|$((ID1 + 1))|t" "poll_outbox records a lease"
EXP0=$(q "SELECT lease_expires FROM pgtrickle.pgt_consumer_leases WHERE consumer_id = 'c1'")
EXP1=$(q "SELECT pgtrickle.extend_lease('g1', 'c1', 60)")
is "$(q "SELECT '$EXP1'::timestamptz - '$EXP0'::timestamptz = interval '60 seconds' AND '$EXP1'::timestamptz = (SELECT lease_expires FROM pgtrickle.pgt_consumer_leases WHERE consumer_id = 'c1')")" \
   "t" "extend_lease adds the extension to the expiry and returns it"
is "$(q "SELECT pgtrickle.extend_lease('g1', 'nobody') IS NULL")" "t" "extend_lease without a lease returns NULL"
q "SELECT pgtrickle.commit_offset('g1', 'c1', $((ID1 + 1)))" >/dev/null
is "$(q "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'c1'")|$(q "SELECT count(*) FROM pgtrickle.pgt_consumer_leases")" \
   "$((ID1 + 1))|0" "commit_offset stores the offset and releases the lease"
q "SELECT pgtrickle.commit_offset('g1', 'c1', $ID1)" >/dev/null
is "$(q "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'c1'")" "$((ID1 + 1))" "commit_offset with a lower offset: not moved back"
is "$(q "SELECT string_agg(outbox_id::text, ',') FROM pgtrickle.poll_outbox('g1', 'c1', 10)")" "$ID3,$ID4" "next poll continues after the committed offset"
q "SELECT pgtrickle.commit_offset('g1', 'c_new', 3)" >/dev/null
is "$(q "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'c_new'")" "3" "commit_offset creates a missing offset row"
is "$(q "SELECT consumer_id, committed_offset, max_outbox_id, lag, is_alive FROM pgtrickle.consumer_lag('g1') WHERE consumer_id = 'c1'")" \
   "c1|$((ID1 + 1))|$ID4|$((ID4 - ID1 - 1))|t" "consumer_lag"
q "SELECT pgtrickle.seek_offset('g1', 'c1', 0)" >/dev/null
is "$(q "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE consumer_id = 'c1'")" "0" "seek_offset can rewind"
q "UPDATE pgtrickle.pgt_consumer_offsets SET last_heartbeat_at = now() - interval '2 days' WHERE consumer_id = 'c_new'" >/dev/null
is "$(q "SELECT is_alive FROM pgtrickle.consumer_lag('g1') WHERE consumer_id = 'c_new'")" "f" "consumer_lag: stale heartbeat is not alive"
q "SELECT pgtrickle.consumer_heartbeat('g1', 'c_new')" >/dev/null
is "$(q "SELECT is_alive FROM pgtrickle.consumer_lag('g1') WHERE consumer_id = 'c_new'")" "t" "consumer_heartbeat revives it"
q "SELECT pgtrickle.create_consumer_group('g_latest', 'outbox_orders')" >/dev/null
is "$(q "SELECT count(*) FROM pgtrickle.poll_outbox('g_latest', 'c1')")|$(q "SELECT committed_offset FROM pgtrickle.pgt_consumer_offsets WHERE group_name = 'g_latest'")" \
   "0|$ID4" "latest group: a new consumer starts at the current max id"
for f in "poll_outbox('nope', 'c')" "commit_offset('nope', 'c', 1)" "extend_lease('nope', 'c')" "seek_offset('nope', 'c', 1)" \
         "consumer_heartbeat('nope', 'c')" "consumer_lag('nope')" "drop_consumer_group('nope')"; do
    is "$(err "SELECT * FROM pgtrickle.$f")" "consumer group not found: nope" "${f%%(*} of a missing group: exact error"
done
is "$(as_relay "SELECT count(*) FROM pgtrickle.poll_outbox('g1', 'relay-1', 1)")" "1" "relay login can poll_outbox"
is "$(as_relay "SELECT pgtrickle.commit_offset('g1', 'relay-1', $ID1)")" "" "relay login can commit_offset"
q "SELECT pgtrickle.drop_consumer_group('g1')" >/dev/null
is "$(q "SELECT count(*) FROM pgtrickle.pgt_consumer_offsets WHERE group_name = 'g1'")" "0" "drop_consumer_group cascades to offsets"
is "$(q "SELECT pgtrickle.drop_consumer_group('g1', true)")" "" "drop_consumer_group with p_if_exists is silent"

# --- inbox ----------------------------------------------------------------------
q "SELECT pgtrickle.create_inbox('orders_inbox')" >/dev/null
is "$(cols pgtrickle orders_inbox)" \
   "event_id text NO,event_type text YES,source text YES,aggregate_id text YES,payload jsonb YES,received_at timestamp with time zone NO,processed_at timestamp with time zone YES,error text YES,retry_count integer NO,trace_id text YES" \
   "create_inbox creates the pg_trickle inbox table"
is "$(q "SELECT string_agg(c.relname || ':' || c.relkind::text, ',' ORDER BY c.relname) FROM pg_class c WHERE c.relnamespace = 'pgtrickle'::regnamespace AND c.relname LIKE 'orders\_inbox\_%' AND c.relkind <> 'i'")" \
   "orders_inbox_dlq:v,orders_inbox_pending:v,orders_inbox_stats:v" "create_inbox creates _pending, _dlq and _stats views"
is "$(q "SELECT inbox_name, inbox_schema, max_retries, schedule, with_dead_letter, with_stats FROM pgtrickle.inbox_status('orders_inbox')")" \
   "orders_inbox|pgtrickle|3|1s|t|t" "inbox_status"
is "$(err "SELECT pgtrickle.create_inbox('orders_inbox')")" "inbox already exists: orders_inbox" "create_inbox twice: exact error"
q "CREATE SCHEMA app" >/dev/null
q "SELECT pgtrickle.create_inbox('Odd Inbox', 'app', 2, '5s', with_dead_letter => false, with_stats => false)" >/dev/null
is "$(q "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_class c WHERE c.relnamespace = 'app'::regnamespace AND c.relkind IN ('r','v')")" \
   "Odd Inbox,Odd Inbox_pending" "create_inbox quotes identifiers; no _dlq/_stats when disabled"
is "$(q "SELECT count(*) FROM pgtrickle.inbox_status()")" "2" "inbox_status() lists every inbox"
q "INSERT INTO pgtrickle.orders_inbox (event_id, event_type, retry_count, processed_at, error) VALUES
     ('e1', 'a', 0, NULL, NULL), ('e2', 'a', 3, NULL, 'boom'), ('e''3', 'b', 9, NULL, 'bad'), ('e4', 'b', 0, now(), NULL)" >/dev/null
is "$(q "SELECT (SELECT count(*) FROM pgtrickle.orders_inbox_pending) || '|' || (SELECT count(*) FROM pgtrickle.orders_inbox_dlq)")" "1|2" "pending and dlq views"
is "$(q "SELECT string_agg(event_type || ':' || message_count || ':' || processed_count || ':' || dlq_count, ',' ORDER BY event_type) FROM pgtrickle.orders_inbox_stats")" \
   "a:2:0:1,b:2:1:1" "stats view"
is "$(q "SELECT pgtrickle.inbox_health('orders_inbox') = '{\"inbox_name\":\"orders_inbox\",\"inbox_schema\":\"pgtrickle\",\"status\":\"OK\",\"total_messages\":4,\"pending_messages\":1,\"dlq_messages\":2,\"processed_messages\":1,\"max_retries\":3,\"retention_hours\":72}'::jsonb")" \
   "t" "inbox_health"
is "$(q "SET pg_trickle.inbox_dlq_alert_max_per_refresh = 2; SELECT pgtrickle.inbox_health('orders_inbox')->>'status'")" "WARNING" "inbox_health WARNING at the DLQ alert threshold"
is "$(err "SELECT pgtrickle.inbox_health('nope')")" "inbox not found: nope" "inbox_health of a missing inbox: exact error"
is "$(q "SELECT pgtrickle.replay_inbox_messages('orders_inbox', ARRAY['e2', 'e''3', 'x''); DROP TABLE pgtrickle.orders_inbox; --'])")" "2" \
   "replay_inbox_messages resets the given ids (quotes are data)"
is "$(q "SELECT string_agg(event_id || ':' || retry_count || ':' || coalesce(error, '-'), ',' ORDER BY event_id) FROM pgtrickle.orders_inbox")" \
   "e'3:0:-,e1:0:-,e2:0:-,e4:0:-" "  ... retry_count and error cleared, table intact"
is "$(q "SELECT pgtrickle.replay_inbox_messages('orders_inbox', ARRAY[]::text[])")" "0" "replay_inbox_messages with no ids = 0"
is "$(err "SELECT pgtrickle.replay_inbox_messages('nope', ARRAY['a'])")" "inbox not found: nope" "replay_inbox_messages of a missing inbox: exact error"
is "$(as_relay "INSERT INTO pgtrickle.orders_inbox (event_id, payload) VALUES ('r1', '{}') ON CONFLICT (event_id) DO NOTHING RETURNING event_id")" "r1" \
   "relay login can insert into an inbox"
q "SELECT pgtrickle.drop_inbox('Odd Inbox', p_cascade => true)" >/dev/null
is "$(q "SELECT count(*) FROM pg_class WHERE relnamespace = 'app'::regnamespace")|$(q "SELECT count(*) FROM pgtrickle.pgt_inbox_config WHERE inbox_name = 'Odd Inbox'")" \
   "0|0" "drop_inbox with p_cascade drops views, table and config"
is "$(err "SELECT pgtrickle.drop_inbox('Odd Inbox')")" "inbox not found: Odd Inbox" "drop_inbox of a missing inbox: exact error"
is "$(q "SELECT pgtrickle.drop_inbox('Odd Inbox', true)")" "" "drop_inbox with p_if_exists is silent"

# --- dead letters ----------------------------------------------------------------
D1=$(as_relay "SELECT pgtrickle.relay_dead_letter('fwd1', 'outbox_orders:1:0', 'pgtrickle.orders.insert', '{\"id\":1}', '413 payload too large')")
D2=$(as_relay "SELECT pgtrickle.relay_dead_letter('fwd1', 'outbox_orders:1:1', 's', '{\"id\":2}', 'e2')")
D3=$(as_relay "SELECT pgtrickle.relay_dead_letter('other', 'k', NULL, NULL, 'e3')")
like "$D1,$D2,$D3" '^[0-9]+,[0-9]+,[0-9]+$' "relay_dead_letter returns ids"
is "$(as_relay "SELECT pgtrickle.relay_dead_letter('fwd1', 'outbox_orders:1:0', 'pgtrickle.orders.insert', '{\"id\":1}', 'still too large')")" "$D1" \
   "same un-replayed key: same row"
is "$(q "SELECT count(*) || '|' || max(error) FROM pgtrickle.relay_dlq WHERE pipeline = 'fwd1' AND dedup_key = 'outbox_orders:1:0'")" "1|still too large" "  ... updated in place"
is "$(as_relay "SELECT string_agg(id::text, ',') FROM pgtrickle.relay_dlq_list('fwd1')")" "$D1,$D2" "relay_dlq_list: newest failure first (D1 failed again last)"
is "$(as_relay "SELECT count(*) FROM pgtrickle.relay_dlq_list()")" "3" "relay_dlq_list() lists every pipeline"
is "$(as_relay "SELECT count(*) FROM pgtrickle.relay_dlq_list('fwd1', 1)")" "1" "relay_dlq_list honours the limit"
is "$(as_relay "SELECT count(*) FROM pgtrickle.relay_dlq_take_replays('fwd1', 10)")" "0" "nothing to take before a replay request"
is "$(as_admin "SELECT pgtrickle.relay_dlq_replay('fwd1', ARRAY[$D1])")" "1" "relay_dlq_replay of one id"
is "$(q "SELECT replay_count, replayed_at IS NOT NULL, replay_requested_at IS NOT NULL FROM pgtrickle.relay_dlq WHERE id = $D1")" "1|t|t" \
   "  ... replayed_at set, replay_count+1, replay requested"
is "$(as_admin "SELECT pgtrickle.relay_dlq_replay('fwd1')")" "1" "relay_dlq_replay(pipeline) replays the remaining un-replayed rows"
is "$(as_admin "SELECT pgtrickle.relay_dlq_replay('fwd1')")" "0" "  ... and nothing twice"
is "$(as_relay "BEGIN; SELECT string_agg(id::text || ':' || replay_count || ':' || (replay_requested_at IS NULL), ',') FROM pgtrickle.relay_dlq_take_replays('fwd1', 1); ROLLBACK;")" \
   "$D1:1:true" "relay_dlq_take_replays returns requested rows (oldest first), cleared"
is "$(q "SELECT count(*) FROM pgtrickle.relay_dlq WHERE pipeline = 'fwd1' AND replay_requested_at IS NOT NULL")" "2" "  ... a rolled-back take leaves them requested"
is "$(as_relay "SELECT string_agg(id::text, ',') FROM pgtrickle.relay_dlq_take_replays('fwd1', 10)")" "$D1,$D2" "take all requested rows"
is "$(as_relay "SELECT count(*) FROM pgtrickle.relay_dlq_take_replays('fwd1', 10)")" "0" "  ... taken rows are not returned again"
D4=$(as_relay "SELECT pgtrickle.relay_dead_letter('fwd1', 'outbox_orders:1:0', 's', '{}', 'failed again')")
ok "$([ -n "$D4" ] && [ "$D4" != "$D1" ] && echo 0 || echo 1)" "a replayed message that fails again gets a new row"
is "$(as_admin "SELECT pgtrickle.relay_dlq_replay('fwd1', ARRAY[$D1])")" "1" "an already replayed row can be replayed again by id"
is "$(q "SELECT replay_count FROM pgtrickle.relay_dlq WHERE id = $D1")" "2" "  ... replay_count 2"
is "$(as_admin "SELECT pgtrickle.relay_dlq_replay('other', ARRAY[$D1])")" "0" "relay_dlq_replay ignores ids of another pipeline"

# relay_dead_letter_bytes (what the daemon calls): any bytes, kept exactly
long=$(printf 'k%.0s' $(seq 1 600))
B1=$(as_relay "SELECT pgtrickle.relay_dead_letter_bytes('raw', '\\x6261645c7866ff6964'::bytea, '\\x2f696e626f782fff'::bytea,
                 '\\x7b2261223a22005c7530303030227d'::bytea, true, '\\x6572722000ff'::bytea, 'event')")
is "$(q "SELECT dedup_key = 'pgtrickle-key-sha256:' || encode(sha256('\\x6261645c7866ff6964'::bytea), 'hex'),
                encode(dedup_key_raw, 'hex'), subject, encode(subject_raw, 'hex'), payload IS NULL,
                encode(payload_raw, 'hex'), payload_is_json, error, op FROM pgtrickle.relay_dlq WHERE id = $B1")" \
   "t|6261645c7866ff6964|/inbox/\\377|2f696e626f782fff|t|7b2261223a22005c7530303030227d|t|err \\000\\377|event" \
   "relay_dead_letter_bytes: invalid UTF-8 and NUL bytes kept exactly; key mapped to its SHA-256; readable escapes"
B2=$(as_relay "SELECT pgtrickle.relay_dead_letter_bytes('raw', convert_to('$long', 'UTF8'), NULL, convert_to('{\"a\": 1}', 'UTF8'), true, convert_to('e', 'UTF8'), 'event')")
is "$(q "SELECT left(dedup_key, 21), octet_length(dedup_key_raw), payload::text, convert_from(payload_raw, 'UTF8') FROM pgtrickle.relay_dlq WHERE id = $B2")" \
   'pgtrickle-key-sha256:|600|{"a": 1}|{"a": 1}' "a 600-byte key: hashed in dedup_key, whole in dedup_key_raw; JSON in payload and payload_raw"
B3=$(as_relay "SELECT pgtrickle.relay_dead_letter_bytes('raw', convert_to('plain', 'UTF8'), NULL, convert_to('not json', 'UTF8'), false, convert_to('e', 'UTF8'), 'event')")
is "$(q "SELECT dedup_key, payload::text FROM pgtrickle.relay_dlq WHERE id = $B3")" 'plain|"not json"' "a valid key is kept as it is; a text body is a JSON string"
is "$(as_relay "SELECT pgtrickle.relay_dead_letter_bytes('raw', '\\x6261645c7866ff6964'::bytea, NULL, NULL, NULL, convert_to('again', 'UTF8'), 'event')")" "$B1" \
   "the same raw key again updates its row (the mapping is deterministic)"
is "$(q "SELECT pgtrickle.relay_dlq_key(convert_to('pgtrickle-key-sha256:x', 'UTF8')) <> 'pgtrickle-key-sha256:x'")" "t" \
   "a key that looks like a mapped one is mapped too (no collision with a real key)"

# --- init again: a no-op that keeps the data -----------------------------------
before=$(q "SELECT (SELECT count(*) FROM pgtrickle.relay_outbox_config) || '/' || (SELECT count(*) FROM pgtrickle.relay_inbox_config) || '/' ||
                   (SELECT md5(string_agg(name || config::text, ',' ORDER BY name)) FROM pgtrickle.relay_outbox_config) || '/' ||
                   (SELECT count(*) FROM pgtrickle.relay_dlq) || '/' || (SELECT count(*) FROM pgtrickle.outbox_orders) || '/' ||
                   (SELECT count(*) FROM pgtrickle.orders_inbox) || '/' || pgtrickle.relay_get_offset('default', 'fwd1') || '/' ||
                   (SELECT count(*) FROM pgtrickle.pgt_consumer_groups)")
acl_before=$(q "SELECT md5(string_agg(oid::regprocedure::text || coalesce(proacl::text, ''), ',' ORDER BY oid::regprocedure::text)) FROM pg_proc WHERE pronamespace = 'pgtrickle'::regnamespace")
"$RELAY_BIN" init --postgres-url "$DB_URL" >"$TEST_TMP/init2.log" 2>&1
is "$?" "0" "init a second time succeeds"
after=$(q "SELECT (SELECT count(*) FROM pgtrickle.relay_outbox_config) || '/' || (SELECT count(*) FROM pgtrickle.relay_inbox_config) || '/' ||
                  (SELECT md5(string_agg(name || config::text, ',' ORDER BY name)) FROM pgtrickle.relay_outbox_config) || '/' ||
                  (SELECT count(*) FROM pgtrickle.relay_dlq) || '/' || (SELECT count(*) FROM pgtrickle.outbox_orders) || '/' ||
                  (SELECT count(*) FROM pgtrickle.orders_inbox) || '/' || pgtrickle.relay_get_offset('default', 'fwd1') || '/' ||
                  (SELECT count(*) FROM pgtrickle.pgt_consumer_groups)")
is "$after" "$before" "  ... and keeps every row"
is "$(q "SELECT md5(string_agg(oid::regprocedure::text || coalesce(proacl::text, ''), ',' ORDER BY oid::regprocedure::text)) FROM pg_proc WHERE pronamespace = 'pgtrickle'::regnamespace")" \
   "$acl_before" "  ... and leaves the same functions with the same privileges"
is "$(as_relay "SELECT pgtrickle.relay_commit_offset('default', 'fwd1', 1, 'w')")" "12" "  ... offsets still only move forward"
is "$(listen pgtrickle_relay_config "SELECT pgtrickle.enable_relay('fwd2')")" \
   '{"direction" : "relay_outbox_config", "event" : "UPDATE", "name" : "fwd2", "enabled" : true}' "  ... the NOTIFY trigger still fires once"
unlike() { if [[ "$1" =~ $2 ]]; then fail "$3"; diag "got: '$1'"; else pass "$3"; fi; }
unlike "$(cat "$TEST_TMP/init2.log")" "WARNING" "  ... without a warning"

# --- upgrade from the one-role catalog: the runtime role loses the setters -------
q "GRANT EXECUTE ON FUNCTION pgtrickle.set_relay_outbox(text, jsonb), pgtrickle.delete_relay(text) TO pgtrickle_relay" >/dev/null
like "$(as_relay "SELECT pgtrickle.delete_relay('nope')")" "pipeline \"nope\" not found" "(the old catalog let pgtrickle_relay call the setters)"
"$RELAY_BIN" init --postgres-url "$DB_URL" >"$TEST_TMP/init3.log" 2>&1
is "$?" "0" "init upgrades it"
like "$(cat "$TEST_TMP/init3.log")" "WARNING: +pgtrickle-relay: the runtime role pgtrickle_relay may no longer call .*delete_relay.*grant pgtrickle_relay_admin" \
   "  ... with a WARNING naming what was revoked and what to grant"
like "$(as_relay "SELECT pgtrickle.delete_relay('nope')")" "permission denied for function delete_relay" "  ... after which the runtime role is refused"

done_testing
