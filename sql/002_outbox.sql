-- relay:skip-if-pg_trickle
-- 002_outbox.sql - outbox compatibility layer (pg_trickle v0.28.0 layouts).
--
-- pgt_outbox_config, enable_outbox, disable_outbox, outbox_status and
-- outbox_rows_consumed with pg_trickle's tables, columns, names and error
-- texts, so the relay works on plain PostgreSQL; plus outbox_write(), the
-- way an application writes an event inside its own transaction.
--
-- On plain PostgreSQL there are no stream tables: a "stream table" name is
-- just the name of the event stream (it may, but need not, be a table).
-- Outbox objects always live in schema pgtrickle and are keyed by the
-- unqualified name.
--
-- Uses pgtrickle.relay_clip_ident() from 005_relay_runtime.sql (same
-- transaction; plpgsql resolves it at call time).

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pgtrickle;

CREATE TABLE IF NOT EXISTS pgtrickle.pgt_outbox_config (
    stream_table_oid   OID         NOT NULL PRIMARY KEY,
    stream_table_name  TEXT        NOT NULL,
    outbox_table_name  TEXT        NOT NULL,
    retention_hours    INT         NOT NULL DEFAULT 24,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_drained_at    TIMESTAMPTZ,
    last_drained_count BIGINT      NOT NULL DEFAULT 0,
    CONSTRAINT uq_outbox_table_name UNIQUE (outbox_table_name)
);
CREATE INDEX IF NOT EXISTS idx_pgt_outbox_config_name
    ON pgtrickle.pgt_outbox_config (stream_table_name);

-- stream_table_oid for names that are not an existing relation. Starts far
-- above any relation OID a database will realistically reach.
CREATE SEQUENCE IF NOT EXISTS pgtrickle.relay_outbox_oid_seq
    AS bigint MINVALUE 4000000000 MAXVALUE 4294967295 START 4000000000 NO CYCLE;

-- ── name resolution ────────────────────────────────────────────────────────
-- 'schema.table' splits on the first dot. An unqualified name takes the
-- schema of an existing relation of that name (public first), else 'public'
-- (the caller's search_path is not visible inside a SECURITY DEFINER function).

CREATE OR REPLACE FUNCTION pgtrickle.relay_split_stream_name(
    p_name            text,
    OUT schema_name   text,
    OUT table_name    text
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'invalid argument: stream table name must not be empty';
    END IF;
    IF strpos(p_name, '.') > 0 THEN
        schema_name := split_part(p_name, '.', 1);
        table_name  := substr(p_name, strpos(p_name, '.') + 1);
    ELSE
        table_name := p_name;
        SELECT n.nspname INTO schema_name
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = p_name
           AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\_toast%'
           AND n.nspname NOT LIKE 'pg\_temp%'
         ORDER BY n.nspname <> 'public', n.nspname
         LIMIT 1;
        schema_name := COALESCE(schema_name, 'public');
    END IF;
    IF schema_name = '' OR table_name = '' THEN
        RAISE EXCEPTION 'invalid argument: invalid stream table name: %', p_name;
    END IF;
END;
$$;

-- ── enable_outbox ──────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.enable_outbox(
    p_name            text,
    p_retention_hours integer DEFAULT 24
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_schema text;
    v_st     text;
    v_outbox text;
    v_delta  text;
    v_view   text;
    v_rel    regclass;
    v_oid    oid;
BEGIN
    SELECT s.schema_name, s.table_name INTO v_schema, v_st
      FROM pgtrickle.relay_split_stream_name(p_name) s;

    -- enable/disable are rare: serialise them so the checks below hold
    LOCK TABLE pgtrickle.pgt_outbox_config IN SHARE ROW EXCLUSIVE MODE;

    IF EXISTS (SELECT 1 FROM pgtrickle.pgt_outbox_config c WHERE c.stream_table_name = v_st) THEN
        RAISE EXCEPTION 'outbox already enabled for stream table: %.%', v_schema, v_st
            USING HINT = 'Outboxes are keyed by the unqualified stream table name.';
    END IF;

    v_outbox := pgtrickle.relay_clip_ident(left('outbox_' || v_st, 63));
    IF EXISTS (SELECT 1 FROM pgtrickle.pgt_outbox_config c WHERE c.outbox_table_name = v_outbox) THEN
        -- two long names sharing their first 56 characters: add a hash suffix
        v_outbox := pgtrickle.relay_clip_ident('outbox_' || left(v_st, 48))
                    || '_' || left(md5(v_schema || '.' || v_st), 7);
    END IF;

    v_delta := pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(v_st, 48));
    v_view  := pgtrickle.relay_clip_ident('pgt_outbox_latest_' || left(v_st, 48));
    IF EXISTS (SELECT 1 FROM pgtrickle.pgt_outbox_config c
                WHERE pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(c.stream_table_name, 48)) = v_delta) THEN
        RAISE EXCEPTION 'invalid argument: claim-check table pgtrickle.% is already used by another outbox '
              '(stream table names sharing their first characters): %.%', v_delta, v_schema, v_st;
    END IF;

    v_rel := to_regclass(format('%I.%I', v_schema, v_st));
    v_oid := v_rel::oid;
    IF v_oid IS NULL OR EXISTS (SELECT 1 FROM pgtrickle.pgt_outbox_config c WHERE c.stream_table_oid = v_oid) THEN
        v_oid := nextval('pgtrickle.relay_outbox_oid_seq')::oid;
    END IF;

    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS pgtrickle.%I (
            id              BIGSERIAL    PRIMARY KEY,
            pgt_id          UUID         NOT NULL DEFAULT gen_random_uuid(),
            refresh_id      UUID,
            created_at      TIMESTAMPTZ  NOT NULL DEFAULT now(),
            inserted_count  BIGINT       NOT NULL DEFAULT 0,
            deleted_count   BIGINT       NOT NULL DEFAULT 0,
            is_claim_check  BOOL         NOT NULL DEFAULT false,
            payload         JSONB
        )$f$, v_outbox);

    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS pgtrickle.%I (
            outbox_id   BIGINT       NOT NULL,
            row_op      TEXT         NOT NULL CHECK (row_op IN ('INSERT','DELETE')),
            row_data    JSONB        NOT NULL,
            row_num     BIGINT       NOT NULL,
            PRIMARY KEY (outbox_id, row_num)
        )$f$, v_delta);

    EXECUTE format('CREATE OR REPLACE VIEW pgtrickle.%I AS SELECT * FROM pgtrickle.%I ORDER BY id DESC LIMIT 1',
                   v_view, v_outbox);

    -- the relay reads outbox and claim-check rows directly
    EXECUTE format('GRANT SELECT ON pgtrickle.%I, pgtrickle.%I, pgtrickle.%I TO pgtrickle_relay',
                   v_outbox, v_delta, v_view);

    INSERT INTO pgtrickle.pgt_outbox_config
        (stream_table_oid, stream_table_name, outbox_table_name, retention_hours)
    VALUES (v_oid, v_st, v_outbox, COALESCE(p_retention_hours, 24))
    ON CONFLICT (stream_table_oid) DO UPDATE
        SET outbox_table_name = EXCLUDED.outbox_table_name,
            retention_hours   = EXCLUDED.retention_hours;
END;
$$;

-- ── disable_outbox ─────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.disable_outbox(
    p_name       text,
    p_if_exists  boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_schema text;
    v_st     text;
    v_outbox text;
    v_oid    oid;
BEGIN
    SELECT s.schema_name, s.table_name INTO v_schema, v_st
      FROM pgtrickle.relay_split_stream_name(p_name) s;

    LOCK TABLE pgtrickle.pgt_outbox_config IN SHARE ROW EXCLUSIVE MODE;

    SELECT c.outbox_table_name, c.stream_table_oid INTO v_outbox, v_oid
      FROM pgtrickle.pgt_outbox_config c
     WHERE c.stream_table_name = v_st
     ORDER BY c.stream_table_oid
     LIMIT 1;
    IF NOT FOUND THEN
        IF COALESCE(p_if_exists, false) THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'outbox not enabled for stream table: %.%', v_schema, v_st;
    END IF;

    EXECUTE format('DROP VIEW IF EXISTS pgtrickle.%I',
                   pgtrickle.relay_clip_ident('pgt_outbox_latest_' || left(v_st, 48)));
    EXECUTE format('DROP TABLE IF EXISTS pgtrickle.%I CASCADE',
                   pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(v_st, 48)));
    EXECUTE format('DROP TABLE IF EXISTS pgtrickle.%I CASCADE', v_outbox);

    DELETE FROM pgtrickle.pgt_outbox_config c WHERE c.stream_table_oid = v_oid;
END;
$$;

-- ── outbox_status ──────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.outbox_status(
    p_name  text
) RETURNS jsonb
LANGUAGE plpgsql
STRICT
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_schema text;
    v_st     text;
    v_cfg    pgtrickle.pgt_outbox_config;
    v_count  bigint;
    v_oldest timestamptz;
    v_newest timestamptz;
BEGIN
    SELECT s.schema_name, s.table_name INTO v_schema, v_st
      FROM pgtrickle.relay_split_stream_name(p_name) s;

    SELECT * INTO v_cfg
      FROM pgtrickle.pgt_outbox_config c
     WHERE c.stream_table_name = v_st
     ORDER BY c.stream_table_oid
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN jsonb_build_object('enabled', false, 'stream_table', v_schema || '.' || v_st);
    END IF;

    IF to_regclass(format('pgtrickle.%I', v_cfg.outbox_table_name)) IS NOT NULL THEN
        EXECUTE format('SELECT count(*), min(created_at), max(created_at) FROM pgtrickle.%I',
                       v_cfg.outbox_table_name)
           INTO v_count, v_oldest, v_newest;
    END IF;

    -- catalog columns first; the summary keys win (no key is in both)
    RETURN to_jsonb(v_cfg) || jsonb_build_object(
        'enabled',      true,
        'stream_table', v_schema || '.' || v_st,
        'outbox_table', 'pgtrickle.' || v_cfg.outbox_table_name,
        'row_count',    COALESCE(v_count, 0),
        'oldest_row',   v_oldest::text,
        'newest_row',   v_newest::text);
END;
$$;

-- ── outbox_rows_consumed ───────────────────────────────────────────────────
-- Deletes claim-check rows of outbox ids <= p_outbox_id; last_drained_count is
-- the number of delta rows deleted (pg_trickle stored a constant 1 there).

CREATE OR REPLACE FUNCTION pgtrickle.outbox_rows_consumed(
    p_stream_table  text,
    p_outbox_id     bigint
) RETURNS void
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_schema  text;
    v_st      text;
    v_oid     oid;
    v_delta   text;
    v_deleted bigint := 0;
BEGIN
    SELECT s.schema_name, s.table_name INTO v_schema, v_st
      FROM pgtrickle.relay_split_stream_name(p_stream_table) s;

    SELECT c.stream_table_oid INTO v_oid
      FROM pgtrickle.pgt_outbox_config c
     WHERE c.stream_table_name = v_st
     ORDER BY c.stream_table_oid
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox not enabled for stream table: %.%', v_schema, v_st;
    END IF;

    v_delta := pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(v_st, 48));
    IF to_regclass(format('pgtrickle.%I', v_delta)) IS NOT NULL THEN
        EXECUTE format('DELETE FROM pgtrickle.%I WHERE outbox_id <= $1', v_delta) USING p_outbox_id;
        GET DIAGNOSTICS v_deleted = ROW_COUNT;
    END IF;

    UPDATE pgtrickle.pgt_outbox_config c
       SET last_drained_at    = now(),
           last_drained_count = v_deleted
     WHERE c.stream_table_oid = v_oid;
END;
$$;

-- ── outbox_write ───────────────────────────────────────────────────────────
-- Writes one outbox row {"v":1,"inserted":[...],"deleted":[...]} in the
-- caller's transaction, or above pg_trickle.outbox_inline_threshold_rows
-- (default 10000) a claim-check header whose rows go to the delta table
-- (INSERT rows first, then DELETE rows, row_num 1..N+M). Notifies
-- pgtrickle_outbox_new with the outbox table name (delivered on COMMIT).
-- Returns the new outbox id; NULL when both arrays are empty and
-- pg_trickle.outbox_skip_empty_delta is on (the default): nothing written.

CREATE OR REPLACE FUNCTION pgtrickle.outbox_write(
    p_name      text,
    p_inserted  jsonb,
    p_deleted   jsonb DEFAULT '[]'
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_st      text;
    v_outbox  text;
    v_ins     jsonb := COALESCE(p_inserted, '[]'::jsonb);
    v_del     jsonb := COALESCE(p_deleted, '[]'::jsonb);
    v_n_ins   bigint;
    v_n_del   bigint;
    v_setting text;
    v_thr     bigint := 10000;
    v_id      bigint;
BEGIN
    IF jsonb_typeof(v_ins) <> 'array' THEN
        RAISE EXCEPTION 'invalid argument: outbox_write p_inserted must be a JSON array of row objects, got a JSON %',
              jsonb_typeof(v_ins);
    END IF;
    IF jsonb_typeof(v_del) <> 'array' THEN
        RAISE EXCEPTION 'invalid argument: outbox_write p_deleted must be a JSON array of row objects, got a JSON %',
              jsonb_typeof(v_del);
    END IF;

    IF p_name IS NULL OR btrim(p_name) = '' THEN
        RAISE EXCEPTION 'invalid argument: stream table name must not be empty';
    END IF;
    v_st := CASE WHEN strpos(p_name, '.') > 0 THEN substr(p_name, strpos(p_name, '.') + 1) ELSE p_name END;

    SELECT c.outbox_table_name INTO v_outbox
      FROM pgtrickle.pgt_outbox_config c
     WHERE c.stream_table_name = v_st
     ORDER BY c.stream_table_oid
     LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'outbox not enabled for stream table: %',
              (SELECT s.schema_name || '.' || s.table_name FROM pgtrickle.relay_split_stream_name(p_name) s)
            USING HINT = 'Call pgtrickle.enable_outbox(''' || p_name || ''') first.';
    END IF;

    v_n_ins := jsonb_array_length(v_ins);
    v_n_del := jsonb_array_length(v_del);
    IF v_n_ins + v_n_del = 0
       AND COALESCE(NULLIF(current_setting('pg_trickle.outbox_skip_empty_delta', true), ''), 'on')::boolean THEN
        RETURN NULL;
    END IF;

    v_setting := NULLIF(btrim(current_setting('pg_trickle.outbox_inline_threshold_rows', true)), '');
    IF v_setting IS NOT NULL THEN
        IF v_setting !~ '^[0-9]{1,18}$' THEN
            RAISE EXCEPTION 'invalid value for pg_trickle.outbox_inline_threshold_rows: "%"', v_setting;
        END IF;
        v_thr := v_setting::bigint;
    END IF;

    IF v_n_ins + v_n_del > v_thr THEN
        EXECUTE format('INSERT INTO pgtrickle.%I (inserted_count, deleted_count, is_claim_check, payload) '
                       'VALUES ($1, $2, true, $3) RETURNING id', v_outbox)
           INTO v_id
          USING v_n_ins, v_n_del,
                jsonb_build_object('v', 1, 'claim_check', true,
                                   'inserted_count', v_n_ins, 'deleted_count', v_n_del);
        EXECUTE format('INSERT INTO pgtrickle.%I (outbox_id, row_op, row_data, row_num) '
                       'SELECT $1, ''INSERT'', e.value, e.ord FROM jsonb_array_elements($2) WITH ORDINALITY AS e(value, ord) '
                       'UNION ALL '
                       'SELECT $1, ''DELETE'', e.value, $3 + e.ord FROM jsonb_array_elements($4) WITH ORDINALITY AS e(value, ord)',
                       pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(v_st, 48)))
          USING v_id, v_ins, v_n_ins, v_del;
    ELSE
        EXECUTE format('INSERT INTO pgtrickle.%I (inserted_count, deleted_count, is_claim_check, payload) '
                       'VALUES ($1, $2, false, $3) RETURNING id', v_outbox)
           INTO v_id
          USING v_n_ins, v_n_del,
                jsonb_build_object('v', 1, 'inserted', v_ins, 'deleted', v_del);
    END IF;

    PERFORM pg_notify('pgtrickle_outbox_new', v_outbox);
    RETURN v_id;
END;
$$;

-- ── privileges ─────────────────────────────────────────────────────────────
-- Nothing for PUBLIC. The relay role gets what the daemon calls at run time;
-- applications are granted outbox_write by the DBA.

REVOKE ALL ON pgtrickle.pgt_outbox_config FROM PUBLIC;
REVOKE ALL ON SEQUENCE pgtrickle.relay_outbox_oid_seq FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtrickle.relay_split_stream_name(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.enable_outbox(text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.disable_outbox(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.outbox_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.outbox_rows_consumed(text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.outbox_write(text, jsonb, jsonb) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION pgtrickle.outbox_status(text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.outbox_rows_consumed(text, bigint) TO pgtrickle_relay;
