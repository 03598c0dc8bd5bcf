-- relay:skip-if-pg_trickle
-- 001_relay_catalog.sql - the relay catalog (pg_trickle v0.29.0 compatible).
--
-- Tables, NOTIFY trigger and the 7 functions of pg_trickle's
-- sql/pg_trickle--0.28.0--0.29.0.sql, with the same names, signatures,
-- stored JSON shape, error texts and ERRCODEs, plus:
--   * every function SECURITY DEFINER with a fixed search_path;
--   * the README call form set_relay_outbox(name, config) /
--     set_relay_inbox(name, config) taking flat keys;
--   * set_relay_cdc(name, config) for logical-replication pipelines;
--   * a role pgtrickle_relay that can only EXECUTE the runtime API (the
--     setters belong to pgtrickle_relay_admin, see 007_roles.sql).
--
-- Applied by `pgtrickle-relay init` inside one transaction; idempotent.
-- Skipped when the pg_trickle extension is installed (its own objects win).
-- Plain SQL only (sent with PQexec): no psql meta-commands.

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pgtrickle;

-- ── Tables (verbatim DDL) ──────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS pgtrickle.relay_outbox_config (
    name     TEXT        NOT NULL PRIMARY KEY,
    enabled  BOOLEAN     NOT NULL DEFAULT true,
    config   JSONB       NOT NULL
);

COMMENT ON TABLE pgtrickle.relay_outbox_config IS
    'Forward relay pipeline definitions (outbox or cdc -> external sink). '
    'Managed via pgtrickle.set_relay_outbox(), set_relay_cdc() and related API functions. '
    'The relay binary watches this table via LISTEN pgtrickle_relay_config.';

COMMENT ON COLUMN pgtrickle.relay_outbox_config.config IS
    'JSONB pipeline config. Required keys: source_type ("outbox" or "cdc"), source (object; '
    'outbox: outbox and optional group; cdc: publication and slot), sink_type, sink '
    '(backend-specific object with required "type" key).';

CREATE TABLE IF NOT EXISTS pgtrickle.relay_inbox_config (
    name     TEXT        NOT NULL PRIMARY KEY,
    enabled  BOOLEAN     NOT NULL DEFAULT true,
    config   JSONB       NOT NULL
);

COMMENT ON TABLE pgtrickle.relay_inbox_config IS
    'Reverse relay pipeline definitions (external source -> inbox). '
    'Managed via pgtrickle.set_relay_inbox() and related API functions.';

COMMENT ON COLUMN pgtrickle.relay_inbox_config.config IS
    'JSONB pipeline config. Required keys: source_type, source (backend-specific, '
    'required "type" key), sink_type ("pg-inbox"), sink (object with inbox).';

CREATE TABLE IF NOT EXISTS pgtrickle.relay_consumer_offsets (
    relay_group_id  TEXT        NOT NULL,
    pipeline_id     TEXT        NOT NULL,
    last_change_id  BIGINT      NOT NULL DEFAULT 0,
    worker_id       TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, pipeline_id)
);

COMMENT ON TABLE pgtrickle.relay_consumer_offsets IS
    'Durable per-pipeline offset tracking for the relay binary (simple mode). '
    'Written only through pgtrickle.relay_commit_offset(), which never moves an offset backwards.';

-- ── NOTIFY trigger ─────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.relay_config_notify()
RETURNS TRIGGER
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    PERFORM pg_notify(
        'pgtrickle_relay_config',
        json_build_object(
            'direction', TG_TABLE_NAME,
            'event',     TG_OP,
            'name',      COALESCE(NEW.name, OLD.name),
            'enabled',   COALESCE(NEW.enabled, OLD.enabled)
        )::text
    );
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION pgtrickle.relay_config_notify() IS
    'Sends NOTIFY pgtrickle_relay_config {direction, event, name, enabled} whenever '
    'relay_outbox_config or relay_inbox_config is modified (hot reload).';

CREATE OR REPLACE TRIGGER relay_outbox_config_notify
    AFTER INSERT OR UPDATE OR DELETE ON pgtrickle.relay_outbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_notify();

CREATE OR REPLACE TRIGGER relay_inbox_config_notify
    AFTER INSERT OR UPDATE OR DELETE ON pgtrickle.relay_inbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_notify();

-- ── The 7 pg_trickle functions ─────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_outbox(
    p_name            TEXT,
    p_outbox          TEXT,
    p_group           TEXT,
    p_sink            JSONB,
    p_retention_hours INT  DEFAULT 24,
    p_enabled         BOOLEAN DEFAULT true
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_sink_type TEXT;
    v_config    JSONB;
BEGIN
    -- Validate required sink key
    v_sink_type := p_sink ->> 'type';
    IF v_sink_type IS NULL OR v_sink_type = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: sink JSONB must contain a "type" key '
              '(e.g. "nats", "kafka", "http", "redis", "sqs", "rabbitmq", "stdout", "pg-inbox"). '
              'Got: %', p_sink
            USING ERRCODE = 'raise_exception';
    END IF;

    -- Validate source type
    IF p_outbox IS NULL OR p_outbox = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: outbox name must not be empty'
            USING ERRCODE = 'raise_exception';
    END IF;

    v_config := jsonb_build_object(
        'source_type', 'outbox',
        'source',      jsonb_build_object(
                           'outbox',          p_outbox,
                           'group',           p_group,
                           'retention_hours', p_retention_hours
                       ),
        'sink_type',   v_sink_type,
        'sink',        p_sink
    );

    INSERT INTO pgtrickle.relay_outbox_config (name, enabled, config)
    VALUES (p_name, p_enabled, v_config)
    ON CONFLICT (name) DO UPDATE
        SET enabled = EXCLUDED.enabled,
            config  = EXCLUDED.config;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_inbox(
    p_name              TEXT,
    p_inbox             TEXT,
    p_source            JSONB,
    p_max_retries       INT       DEFAULT 3,
    p_schedule          TEXT      DEFAULT '1s',
    p_with_dead_letter  BOOLEAN   DEFAULT true,
    p_retention_hours   INT       DEFAULT 24,
    p_enabled           BOOLEAN   DEFAULT true
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_source_type TEXT;
    v_config      JSONB;
BEGIN
    -- Validate required source key
    v_source_type := p_source ->> 'type';
    IF v_source_type IS NULL OR v_source_type = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: source JSONB must contain a "type" key '
              '(e.g. "kafka", "nats", "http", "redis", "sqs", "rabbitmq", "stdin"). '
              'Got: %', p_source
            USING ERRCODE = 'raise_exception';
    END IF;

    -- Validate sink type
    IF p_inbox IS NULL OR p_inbox = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: inbox name must not be empty'
            USING ERRCODE = 'raise_exception';
    END IF;

    v_config := jsonb_build_object(
        'source_type',  v_source_type,
        'source',       p_source,
        'sink_type',    'pg-inbox',
        'sink',         jsonb_build_object(
                            'inbox',              p_inbox,
                            'max_retries',        p_max_retries,
                            'schedule',           p_schedule,
                            'with_dead_letter',   p_with_dead_letter,
                            'retention_hours',    p_retention_hours
                        )
    );

    INSERT INTO pgtrickle.relay_inbox_config (name, enabled, config)
    VALUES (p_name, p_enabled, v_config)
    ON CONFLICT (name) DO UPDATE
        SET enabled = EXCLUDED.enabled,
            config  = EXCLUDED.config;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.enable_relay(
    p_name TEXT
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_found_outbox BIGINT;
    v_found_inbox  BIGINT;
BEGIN
    UPDATE pgtrickle.relay_outbox_config
       SET enabled = true
     WHERE name = p_name;
    GET DIAGNOSTICS v_found_outbox = ROW_COUNT;

    UPDATE pgtrickle.relay_inbox_config
       SET enabled = true
     WHERE name = p_name;
    GET DIAGNOSTICS v_found_inbox = ROW_COUNT;

    IF v_found_outbox + v_found_inbox = 0 THEN
        RAISE EXCEPTION 'relay: pipeline "%" not found in relay_outbox_config or relay_inbox_config',
              p_name
            USING ERRCODE = 'no_data_found';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.disable_relay(
    p_name TEXT
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_found_outbox BIGINT;
    v_found_inbox  BIGINT;
BEGIN
    UPDATE pgtrickle.relay_outbox_config
       SET enabled = false
     WHERE name = p_name;
    GET DIAGNOSTICS v_found_outbox = ROW_COUNT;

    UPDATE pgtrickle.relay_inbox_config
       SET enabled = false
     WHERE name = p_name;
    GET DIAGNOSTICS v_found_inbox = ROW_COUNT;

    IF v_found_outbox + v_found_inbox = 0 THEN
        RAISE EXCEPTION 'relay: pipeline "%" not found in relay_outbox_config or relay_inbox_config',
              p_name
            USING ERRCODE = 'no_data_found';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.delete_relay(
    p_name TEXT
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_deleted_outbox BIGINT;
    v_deleted_inbox  BIGINT;
BEGIN
    DELETE FROM pgtrickle.relay_outbox_config WHERE name = p_name;
    GET DIAGNOSTICS v_deleted_outbox = ROW_COUNT;

    DELETE FROM pgtrickle.relay_inbox_config WHERE name = p_name;
    GET DIAGNOSTICS v_deleted_inbox = ROW_COUNT;

    IF v_deleted_outbox + v_deleted_inbox = 0 THEN
        RAISE EXCEPTION 'relay: pipeline "%" not found in relay_outbox_config or relay_inbox_config',
              p_name
            USING ERRCODE = 'no_data_found';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.get_relay_config(
    p_name TEXT
) RETURNS TABLE (
    name       TEXT,
    direction  TEXT,
    enabled    BOOLEAN,
    config     JSONB
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT r.name, 'forward'::TEXT, r.enabled, r.config
          FROM pgtrickle.relay_outbox_config r
         WHERE r.name = p_name
         UNION ALL
        SELECT r.name, 'reverse'::TEXT, r.enabled, r.config
          FROM pgtrickle.relay_inbox_config r
         WHERE r.name = p_name;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'relay: pipeline "%" not found in relay_outbox_config or relay_inbox_config',
              p_name
            USING ERRCODE = 'no_data_found';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.list_relay_configs()
RETURNS TABLE (
    name       TEXT,
    direction  TEXT,
    enabled    BOOLEAN,
    config     JSONB
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT r.name, 'forward'::TEXT, r.enabled, r.config
          FROM pgtrickle.relay_outbox_config r
         UNION ALL
        SELECT r.name, 'reverse'::TEXT, r.enabled, r.config
          FROM pgtrickle.relay_inbox_config r
         ORDER BY 1, 2;
END;
$$;

-- ── helpers of the README call forms (private: no EXECUTE for anyone) ──────
--
-- relay_flat_config splits a flat README-style config into the nested
-- source/sink objects: nested "source"/"sink" objects first, then each flat
-- key moved to the target c_map names ("source.<k>" or "sink.<k>"; flat keys
-- win). p_fixed_key may only hold p_fixed_val (e.g. source_type "outbox").

CREATE OR REPLACE FUNCTION pgtrickle.relay_flat_config(
    p_fn          text,
    p_in          jsonb,
    p_map         jsonb,
    p_fixed_key   text,
    p_fixed_val   jsonb,
    p_fixed_error text,
    OUT o_source  jsonb,
    OUT o_sink    jsonb,
    OUT o_enabled boolean
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_fsource jsonb := '{}';
    v_fsink   jsonb := '{}';
    v_key     text;
    v_val     jsonb;
    v_target  text;
BEGIN
    IF p_in IS NULL OR jsonb_typeof(p_in) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must be a JSON object. Got: %', p_in;
    END IF;
    o_enabled := true;
    o_source := COALESCE(p_in -> 'source', '{}');
    o_sink   := COALESCE(p_in -> 'sink', '{}');
    IF jsonb_typeof(o_source) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: "source" must be a JSON object. Got: %', o_source;
    END IF;
    IF jsonb_typeof(o_sink) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: "sink" must be a JSON object. Got: %', o_sink;
    END IF;

    FOR v_key, v_val IN SELECT e.key, e.value FROM jsonb_each(p_in) AS e ORDER BY e.key LOOP
        IF v_key IN ('source', 'sink') THEN
            CONTINUE;
        ELSIF v_key = 'enabled' THEN
            IF jsonb_typeof(v_val) <> 'boolean' THEN
                RAISE EXCEPTION 'relay.invalid_config: "enabled" must be true or false. Got: %', v_val;
            END IF;
            o_enabled := (v_val)::text::boolean;
        ELSIF v_key = p_fixed_key THEN
            IF v_val IS DISTINCT FROM p_fixed_val THEN
                RAISE EXCEPTION 'relay.invalid_config: % Got: %', p_fixed_error, v_val;
            END IF;
        ELSE
            v_target := p_map ->> v_key;
            IF v_target IS NULL THEN
                RAISE EXCEPTION 'relay.invalid_config: unknown key "%" in % config '
                      '(accepted: enabled, source, sink, %, %)',
                      v_key, p_fn, p_fixed_key,
                      (SELECT string_agg(k, ', ' ORDER BY k) FROM jsonb_object_keys(p_map) AS k);
            END IF;
            IF v_target LIKE 'source.%' THEN
                v_fsource := v_fsource || jsonb_build_object(substr(v_target, 8), v_val);
            ELSE
                v_fsink := v_fsink || jsonb_build_object(substr(v_target, 6), v_val);
            END IF;
        END IF;
    END LOOP;
    o_source := o_source || v_fsource;
    o_sink   := o_sink || v_fsink;
END;
$$;

-- relay_require_text: p_obj.p_key must be a non-empty string; the errors
-- name the flat key and its nested spelling.
CREATE OR REPLACE FUNCTION pgtrickle.relay_require_text(
    p_obj jsonb, p_key text, p_flat text, p_side text
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF NOT (p_obj ? p_key) OR jsonb_typeof(p_obj -> p_key) = 'null' THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "%" (or "%": {"%": ...})',
              p_flat, p_side, p_key;
    END IF;
    IF jsonb_typeof(p_obj -> p_key) <> 'string' OR p_obj ->> p_key = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: "%" must be a non-empty string. Got: %', p_flat, p_obj -> p_key;
    END IF;
END;
$$;

-- relay_check_prefixes: backend-prefixed flat keys (nats_url, kafka_topic,
-- ...) must belong to the pipeline's backend type (webhook also as "http").
CREATE OR REPLACE FUNCTION pgtrickle.relay_check_prefixes(
    p_in jsonb, p_pattern text, p_type text, p_type_key text
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_key    text;
    v_prefix text;
BEGIN
    FOR v_key IN SELECT k FROM jsonb_object_keys(p_in) AS k WHERE k ~ p_pattern ORDER BY k LOOP
        v_prefix := split_part(v_key, '_', 1);
        IF NOT (p_type = v_prefix OR (v_prefix = 'webhook' AND p_type = 'http')) THEN
            RAISE EXCEPTION 'relay.invalid_config: key "%" needs % "%", got "%"',
                  v_key, p_type_key, v_prefix, p_type;
        END IF;
    END LOOP;
END;
$$;

REVOKE ALL ON FUNCTION pgtrickle.relay_flat_config(text, jsonb, jsonb, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_require_text(jsonb, text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_check_prefixes(jsonb, text, text, text) FROM PUBLIC;

-- ── README call form: set_relay_outbox(name, config) ───────────────────────
--
-- Flat keys are normalised to exactly the shape the 6-argument form stores:
--   {"source_type":"outbox",
--    "source":{"outbox":..,"group":..|null,"retention_hours":24, ..extra},
--    "sink_type":<sink.type>, "sink":{"type":.., ..}}

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_outbox(
    p_name TEXT,
    config JSONB
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    -- flat key -> target ("source.<k>" or "sink.<k>")
    c_map CONSTANT jsonb := '{
        "stream_table":     "source.outbox",
        "group":            "source.group",
        "batch_size":       "source.batch_size",
        "poll_interval_ms": "source.poll_interval_ms",
        "retention_hours":  "source.retention_hours",
        "sink_type":        "sink.type",
        "subject_template": "sink.subject_template",
        "nats_url":         "sink.url",
        "nats_stream":      "sink.stream",
        "kafka_brokers":    "sink.brokers",
        "kafka_topic":      "sink.topic_template",
        "kafka_key_field":  "sink.key_template",
        "webhook_url":      "sink.url",
        "webhook_headers":  "sink.headers",
        "redis_url":        "sink.url",
        "redis_stream":     "sink.stream_key",
        "sqs_queue_url":    "sink.queue_url",
        "sqs_region":       "sink.region"
    }';
    v_in        jsonb := $2;
    v_source    jsonb;
    v_sink      jsonb;
    v_enabled   boolean;
    v_type      text;
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    SELECT c.o_source, c.o_sink, c.o_enabled INTO v_source, v_sink, v_enabled
      FROM pgtrickle.relay_flat_config('set_relay_outbox', v_in, c_map, 'source_type', '"outbox"',
           'set_relay_outbox only creates outbox pipelines (source_type "outbox"); '
           'use pgtrickle.set_relay_cdc() for cdc.') AS c;
    PERFORM pgtrickle.relay_require_text(v_source, 'outbox', 'stream_table', 'source');
    PERFORM pgtrickle.relay_require_text(v_sink, 'type', 'sink_type', 'sink');
    IF v_source ? 'group' AND jsonb_typeof(v_source -> 'group') NOT IN ('string', 'null') THEN
        RAISE EXCEPTION 'relay.invalid_config: "group" must be a string or null. Got: %', v_source -> 'group';
    END IF;
    v_type := v_sink ->> 'type';

    -- backend-prefixed flat keys must match the sink type
    PERFORM pgtrickle.relay_check_prefixes(v_in, '^(nats|kafka|webhook|redis|sqs)_', v_type, 'sink_type');

    -- kafka_key_field names a payload field: the record key is its value
    IF v_in ? 'kafka_key_field' THEN
        IF jsonb_typeof(v_in -> 'kafka_key_field') <> 'string' OR v_in ->> 'kafka_key_field' = ''
           OR v_in ->> 'kafka_key_field' ~ '[{}]' THEN
            RAISE EXCEPTION 'relay.invalid_config: "kafka_key_field" must be the name of a payload field. Got: %',
                v_in -> 'kafka_key_field';
        END IF;
        v_sink := v_sink || jsonb_build_object('key_template', '{payload.' || (v_in ->> 'kafka_key_field') || '}');
    END IF;

    -- same shape as the 6-argument form: group (null when absent) and retention_hours always set
    v_source := jsonb_build_object('group', NULL, 'retention_hours', 24) || v_source;

    INSERT INTO pgtrickle.relay_outbox_config AS r (name, enabled, config)
    VALUES (p_name, v_enabled,
            jsonb_build_object('source_type', 'outbox',
                               'source',      v_source,
                               'sink_type',   v_type,
                               'sink',        v_sink))
    ON CONFLICT (name) DO UPDATE
        SET enabled = EXCLUDED.enabled,
            config  = EXCLUDED.config;
END;
$$;

-- ── README call form: set_relay_inbox(name, config) ────────────────────────
--
-- Normalised to the shape the 8-argument form stores:
--   {"source_type":<source.type>, "source":{"type":.., ..},
--    "sink_type":"pg-inbox",
--    "sink":{"inbox":..,"max_retries":3,"schedule":"1s","with_dead_letter":true,
--            "retention_hours":24, ..extra}}

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_inbox(
    p_name TEXT,
    config JSONB
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    c_map CONSTANT jsonb := '{
        "source_type":      "source.type",
        "nats_url":         "source.url",
        "nats_stream":      "source.stream",
        "nats_consumer":    "source.durable_name",
        "nats_subject":     "source.subject",
        "kafka_brokers":    "source.brokers",
        "kafka_topic":      "source.topic",
        "kafka_group_id":   "source.group_id",
        "webhook_bind":     "source.listen_addr",
        "webhook_path":     "source.path",
        "batch_size":       "source.batch_size",
        "inbox_table":      "sink.inbox",
        "inbox_schema":     "sink.schema",
        "max_retries":      "sink.max_retries",
        "schedule":         "sink.schedule",
        "with_dead_letter": "sink.with_dead_letter",
        "retention_hours":  "sink.retention_hours"
    }';
    v_in        jsonb := $2;
    v_source    jsonb;
    v_sink      jsonb;
    v_enabled   boolean;
    v_type      text;
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    SELECT c.o_source, c.o_sink, c.o_enabled INTO v_source, v_sink, v_enabled
      FROM pgtrickle.relay_flat_config('set_relay_inbox', v_in, c_map, 'sink_type', '"pg-inbox"',
           'a reverse pipeline always writes to an inbox (sink_type "pg-inbox").') AS c;
    PERFORM pgtrickle.relay_require_text(v_source, 'type', 'source_type', 'source');
    PERFORM pgtrickle.relay_require_text(v_sink, 'inbox', 'inbox_table', 'sink');
    v_type := v_source ->> 'type';

    PERFORM pgtrickle.relay_check_prefixes(v_in, '^(nats|kafka|webhook)_', v_type, 'source_type');

    v_sink := jsonb_build_object('max_retries', 3, 'schedule', '1s',
                                 'with_dead_letter', true, 'retention_hours', 24) || v_sink;

    INSERT INTO pgtrickle.relay_inbox_config AS r (name, enabled, config)
    VALUES (p_name, v_enabled,
            jsonb_build_object('source_type', v_type,
                               'source',      v_source,
                               'sink_type',   'pg-inbox',
                               'sink',        v_sink))
    ON CONFLICT (name) DO UPDATE
        SET enabled = EXCLUDED.enabled,
            config  = EXCLUDED.config;
END;
$$;

-- ── set_relay_cdc(name, config) ────────────────────────────────────────────
--
-- A forward pipeline fed by logical replication. Stored in relay_outbox_config:
--   {"source_type":"cdc","source":{"publication":..,"slot":.., ..},
--    "sink_type":<sink.type>,"sink":{"type":.., ..}}

CREATE OR REPLACE FUNCTION pgtrickle.set_relay_cdc(
    p_name TEXT,
    config JSONB
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_in      jsonb := $2;
    v_source  jsonb;
    v_sink    jsonb;
    v_enabled boolean := true;
    v_key     text;
    v_val     jsonb;
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: pipeline name must not be empty';
    END IF;
    IF v_in IS NULL OR jsonb_typeof(v_in) <> 'object' THEN
        RAISE EXCEPTION 'relay.invalid_config: config must be a JSON object. Got: %', v_in;
    END IF;

    FOR v_key, v_val IN SELECT e.key, e.value FROM jsonb_each(v_in) AS e ORDER BY e.key LOOP
        IF v_key IN ('source', 'sink') THEN
            IF jsonb_typeof(v_val) <> 'object' THEN
                RAISE EXCEPTION 'relay.invalid_config: "%" must be a JSON object. Got: %', v_key, v_val;
            END IF;
        ELSIF v_key = 'enabled' THEN
            IF jsonb_typeof(v_val) <> 'boolean' THEN
                RAISE EXCEPTION 'relay.invalid_config: "enabled" must be true or false. Got: %', v_val;
            END IF;
            v_enabled := (v_val)::text::boolean;
        ELSIF v_key = 'source_type' THEN
            IF v_val IS DISTINCT FROM '"cdc"'::jsonb THEN
                RAISE EXCEPTION 'relay.invalid_config: set_relay_cdc only creates cdc pipelines '
                      '(source_type "cdc"). Got: %', v_val;
            END IF;
        ELSE
            RAISE EXCEPTION 'relay.invalid_config: unknown key "%" in set_relay_cdc config '
                  '(accepted: source, sink, enabled, source_type)', v_key;
        END IF;
    END LOOP;

    v_source := v_in -> 'source';
    v_sink   := v_in -> 'sink';
    IF v_source IS NULL THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "source" (an object with "publication" and "slot")';
    END IF;
    IF NOT (v_source ? 'publication') OR jsonb_typeof(v_source -> 'publication') = 'null' THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "source.publication"';
    END IF;
    IF jsonb_typeof(v_source -> 'publication') <> 'string' OR v_source ->> 'publication' = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: "source.publication" must be a non-empty string. Got: %',
              v_source -> 'publication';
    END IF;
    IF NOT (v_source ? 'slot') OR jsonb_typeof(v_source -> 'slot') = 'null' THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "source.slot"';
    END IF;
    IF jsonb_typeof(v_source -> 'slot') <> 'string'
       OR (v_source ->> 'slot') !~ '^[a-z0-9_]{1,63}$' THEN
        RAISE EXCEPTION 'relay.invalid_config: "source.slot" must be a replication slot name '
              '(1-63 lower-case letters, digits or underscores). Got: %', v_source -> 'slot';
    END IF;
    IF v_sink IS NULL THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "sink" (an object with "type")';
    END IF;
    IF NOT (v_sink ? 'type') OR jsonb_typeof(v_sink -> 'type') = 'null' THEN
        RAISE EXCEPTION 'relay.invalid_config: missing required key "sink.type"';
    END IF;
    IF jsonb_typeof(v_sink -> 'type') <> 'string' OR v_sink ->> 'type' = '' THEN
        RAISE EXCEPTION 'relay.invalid_config: "sink.type" must be a non-empty string. Got: %', v_sink -> 'type';
    END IF;

    INSERT INTO pgtrickle.relay_outbox_config AS r (name, enabled, config)
    VALUES (p_name, v_enabled,
            jsonb_build_object('source_type', 'cdc',
                               'source',      v_source,
                               'sink_type',   v_sink ->> 'type',
                               'sink',        v_sink))
    ON CONFLICT (name) DO UPDATE
        SET enabled = EXCLUDED.enabled,
            config  = EXCLUDED.config;
END;
$$;

COMMENT ON FUNCTION pgtrickle.set_relay_outbox(TEXT, TEXT, TEXT, JSONB, INT, BOOLEAN) IS
    'Upsert a forward relay pipeline (outbox -> external sink). Triggers hot reload via NOTIFY.';
COMMENT ON FUNCTION pgtrickle.set_relay_outbox(TEXT, JSONB) IS
    'Upsert a forward relay pipeline from a flat (README) or nested config object.';
COMMENT ON FUNCTION pgtrickle.set_relay_inbox(TEXT, TEXT, JSONB, INT, TEXT, BOOLEAN, INT, BOOLEAN) IS
    'Upsert a reverse relay pipeline (external source -> inbox). Triggers hot reload via NOTIFY.';
COMMENT ON FUNCTION pgtrickle.set_relay_inbox(TEXT, JSONB) IS
    'Upsert a reverse relay pipeline from a flat (README) or nested config object.';
COMMENT ON FUNCTION pgtrickle.set_relay_cdc(TEXT, JSONB) IS
    'Upsert a forward relay pipeline fed by logical replication (source_type "cdc").';

-- ── Role and grants ────────────────────────────────────────────────────────

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgtrickle_relay') THEN
        CREATE ROLE pgtrickle_relay NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently elsewhere
END;
$$;

GRANT USAGE ON SCHEMA pgtrickle TO pgtrickle_relay;

REVOKE ALL ON pgtrickle.relay_outbox_config    FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON pgtrickle.relay_inbox_config     FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON pgtrickle.relay_consumer_offsets FROM PUBLIC, pgtrickle_relay;

REVOKE ALL ON FUNCTION pgtrickle.relay_config_notify() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.set_relay_outbox(TEXT, TEXT, TEXT, JSONB, INT, BOOLEAN) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.set_relay_outbox(TEXT, JSONB) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.set_relay_inbox(TEXT, TEXT, JSONB, INT, TEXT, BOOLEAN, INT, BOOLEAN) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.set_relay_inbox(TEXT, JSONB) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.set_relay_cdc(TEXT, JSONB) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.enable_relay(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.disable_relay(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.delete_relay(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.get_relay_config(TEXT) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.list_relay_configs() FROM PUBLIC;

-- The setters are granted to pgtrickle_relay_admin, never to the daemon's
-- role: 007_roles.sql (which also runs with pg_trickle installed).
GRANT EXECUTE ON FUNCTION pgtrickle.get_relay_config(TEXT) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.list_relay_configs() TO pgtrickle_relay;
