-- relay:skip-if-pg_trickle
-- 004_inbox.sql - transactional inbox (pg_trickle v0.28.0 layouts).
--
-- pgt_inbox_config (+ ordering/priority config tables), create_inbox,
-- drop_inbox, inbox_status, inbox_health and replay_inbox_messages with
-- pg_trickle's signatures, columns and error texts. Without pg_trickle there
-- are no stream tables, so <name>_pending, <name>_dlq and <name>_stats are
-- plain views over the inbox table (always current, no refresh schedule;
-- the schedule is still recorded). All identifiers are quoted with %I and all
-- values bound as parameters.

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pgtrickle;

CREATE TABLE IF NOT EXISTS pgtrickle.pgt_inbox_config (
    inbox_name             TEXT        NOT NULL PRIMARY KEY,
    inbox_schema           TEXT        NOT NULL DEFAULT 'pgtrickle',
    max_retries            INT         NOT NULL DEFAULT 3,
    schedule               TEXT        NOT NULL DEFAULT '1s',
    with_dead_letter       BOOL        NOT NULL DEFAULT true,
    with_stats             BOOL        NOT NULL DEFAULT true,
    retention_hours        INT         NOT NULL DEFAULT 72,
    id_column              TEXT        NOT NULL DEFAULT 'event_id',
    processed_at_column    TEXT        NOT NULL DEFAULT 'processed_at',
    retry_count_column     TEXT        NOT NULL DEFAULT 'retry_count',
    error_column           TEXT        NOT NULL DEFAULT 'error',
    received_at_column     TEXT        NOT NULL DEFAULT 'received_at',
    event_type_column      TEXT        NOT NULL DEFAULT 'event_type',
    is_managed             BOOL        NOT NULL DEFAULT true,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgtrickle.pgt_inbox_ordering_config (
    inbox_name        TEXT NOT NULL PRIMARY KEY
                      REFERENCES pgtrickle.pgt_inbox_config(inbox_name) ON DELETE CASCADE,
    aggregate_id_col  TEXT NOT NULL,
    sequence_num_col  TEXT NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS pgtrickle.pgt_inbox_priority_config (
    inbox_name    TEXT NOT NULL PRIMARY KEY
                  REFERENCES pgtrickle.pgt_inbox_config(inbox_name) ON DELETE CASCADE,
    priority_col  TEXT NOT NULL,
    tiers         JSONB,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- ── create_inbox ───────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.create_inbox(
    p_name             text,
    p_schema           text    DEFAULT 'pgtrickle',
    p_max_retries      integer DEFAULT 3,
    p_schedule         text    DEFAULT '1s',
    with_dead_letter   boolean DEFAULT true,
    with_stats         boolean DEFAULT true,
    p_retention_hours  integer DEFAULT 72
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_schema  text    := COALESCE(p_schema, 'pgtrickle');
    v_retries integer := COALESCE(p_max_retries, 3);
    v_dlq     boolean := COALESCE(create_inbox.with_dead_letter, true);
    v_stats   boolean := COALESCE(create_inbox.with_stats, true);
BEGIN
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'invalid argument: inbox name must not be empty';
    END IF;
    IF octet_length(p_name) > 55 THEN
        RAISE EXCEPTION 'invalid argument: inbox name too long (at most 55 bytes, so that "<name>_pending" fits in 63): %',
              p_name;
    END IF;
    IF v_retries < 0 THEN
        RAISE EXCEPTION 'invalid argument: max_retries must be >= 0, got: %', v_retries;
    END IF;
    IF to_regnamespace(quote_ident(v_schema)) IS NULL THEN
        RAISE EXCEPTION 'invalid argument: schema does not exist: %', v_schema;
    END IF;

    LOCK TABLE pgtrickle.pgt_inbox_config IN SHARE ROW EXCLUSIVE MODE;
    IF EXISTS (SELECT 1 FROM pgtrickle.pgt_inbox_config c WHERE c.inbox_name = p_name) THEN
        RAISE EXCEPTION 'inbox already exists: %', p_name;
    END IF;

    -- adopts an existing table of that name, like pg_trickle
    EXECUTE format($f$
        CREATE TABLE IF NOT EXISTS %I.%I (
            event_id        TEXT        NOT NULL PRIMARY KEY,
            event_type      TEXT,
            source          TEXT,
            aggregate_id    TEXT,
            payload         JSONB,
            received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
            processed_at    TIMESTAMPTZ,
            error           TEXT,
            retry_count     INT         NOT NULL DEFAULT 0,
            trace_id        TEXT
        )$f$, v_schema, p_name);

    EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I '
                   'WHERE processed_at IS NULL AND retry_count < %s',
                   v_schema, p_name || '_pending', v_schema, p_name, v_retries);
    IF v_dlq THEN
        EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS SELECT * FROM %I.%I '
                       'WHERE processed_at IS NULL AND retry_count >= %s',
                       v_schema, p_name || '_dlq', v_schema, p_name, v_retries);
    END IF;
    IF v_stats THEN
        EXECUTE format('CREATE OR REPLACE VIEW %I.%I AS SELECT event_type, COUNT(*) AS message_count, '
                       'SUM(CASE WHEN processed_at IS NOT NULL THEN 1 ELSE 0 END) AS processed_count, '
                       'SUM(CASE WHEN processed_at IS NULL AND retry_count >= %s THEN 1 ELSE 0 END) AS dlq_count '
                       'FROM %I.%I GROUP BY event_type',
                       v_schema, p_name || '_stats', v_retries, v_schema, p_name);
    END IF;

    -- the relay writes reverse-pipeline messages straight into the table
    EXECUTE format('GRANT SELECT, INSERT ON %I.%I TO pgtrickle_relay', v_schema, p_name);

    INSERT INTO pgtrickle.pgt_inbox_config
        (inbox_name, inbox_schema, max_retries, schedule, with_dead_letter, with_stats, retention_hours)
    VALUES (p_name, v_schema, v_retries, COALESCE(p_schedule, '1s'), v_dlq, v_stats,
            COALESCE(p_retention_hours, 72));
END;
$$;

-- ── drop_inbox ─────────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.drop_inbox(
    p_name      text,
    p_if_exists boolean DEFAULT false,
    p_cascade   boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_cfg  pgtrickle.pgt_inbox_config;
    v_view text;
BEGIN
    LOCK TABLE pgtrickle.pgt_inbox_config IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO v_cfg FROM pgtrickle.pgt_inbox_config c WHERE c.inbox_name = p_name;
    IF NOT FOUND THEN
        IF COALESCE(p_if_exists, false) THEN
            RETURN;
        END IF;
        RAISE EXCEPTION 'inbox not found: %', p_name;
    END IF;

    DELETE FROM pgtrickle.pgt_inbox_ordering_config o WHERE o.inbox_name = p_name;
    DELETE FROM pgtrickle.pgt_inbox_priority_config p WHERE p.inbox_name = p_name;

    -- only views are dropped here: a table that happens to carry such a name is left alone
    FOREACH v_view IN ARRAY ARRAY[p_name || '_pending', p_name || '_dlq', p_name || '_stats', 'next_' || p_name] LOOP
        IF EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = v_cfg.inbox_schema AND c.relname = v_view AND c.relkind = 'v') THEN
            EXECUTE format('DROP VIEW %I.%I', v_cfg.inbox_schema, v_view);
        END IF;
    END LOOP;

    DELETE FROM pgtrickle.pgt_inbox_config c WHERE c.inbox_name = p_name;

    IF COALESCE(p_cascade, false) THEN
        EXECUTE format('DROP TABLE IF EXISTS %I.%I CASCADE', v_cfg.inbox_schema, p_name);
    END IF;
END;
$$;

-- ── inbox_status ───────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.inbox_status(
    p_name text DEFAULT NULL
) RETURNS TABLE (
    inbox_name       text,
    inbox_schema     text,
    max_retries      integer,
    schedule         text,
    with_dead_letter boolean,
    with_stats       boolean,
    created_at       timestamptz
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT c.inbox_name, c.inbox_schema, c.max_retries, c.schedule,
               c.with_dead_letter, c.with_stats, c.created_at
          FROM pgtrickle.pgt_inbox_config c
         WHERE p_name IS NULL OR c.inbox_name = p_name
         ORDER BY c.inbox_name;
END;
$$;

-- ── inbox_health ───────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.inbox_health(
    p_name text
) RETURNS jsonb
LANGUAGE plpgsql
STRICT
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_cfg       pgtrickle.pgt_inbox_config;
    v_total     bigint;
    v_pending   bigint;
    v_dlq       bigint;
    v_processed bigint;
    v_setting   text;
    v_alert     integer := 10;
BEGIN
    SELECT * INTO v_cfg FROM pgtrickle.pgt_inbox_config c WHERE c.inbox_name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inbox not found: %', p_name;
    END IF;

    EXECUTE format(
        'SELECT count(*), '
        '       count(*) FILTER (WHERE %1$I IS NULL AND %2$I < $1), '
        '       count(*) FILTER (WHERE %1$I IS NULL AND %2$I >= $1), '
        '       count(*) FILTER (WHERE %1$I IS NOT NULL) '
        '  FROM %3$I.%4$I',
        v_cfg.processed_at_column, v_cfg.retry_count_column, v_cfg.inbox_schema, v_cfg.inbox_name)
       INTO v_total, v_pending, v_dlq, v_processed
      USING v_cfg.max_retries;

    v_setting := NULLIF(btrim(current_setting('pg_trickle.inbox_dlq_alert_max_per_refresh', true)), '');
    IF v_setting ~ '^[0-9]{1,6}$' THEN
        v_alert := v_setting::integer;
    END IF;

    RETURN jsonb_build_object(
        'inbox_name',         v_cfg.inbox_name,
        'inbox_schema',       v_cfg.inbox_schema,
        'status',             CASE WHEN v_alert > 0 AND v_dlq >= v_alert THEN 'WARNING' ELSE 'OK' END,
        'total_messages',     v_total,
        'pending_messages',   v_pending,
        'dlq_messages',       v_dlq,
        'processed_messages', v_processed,
        'max_retries',        v_cfg.max_retries,
        'retention_hours',    v_cfg.retention_hours);
END;
$$;

-- ── replay_inbox_messages ──────────────────────────────────────────────────
-- Resets processed_at, retry_count and error of the given event ids so they
-- are processed again. Returns how many rows were reset.

CREATE OR REPLACE FUNCTION pgtrickle.replay_inbox_messages(
    p_name      text,
    p_event_ids text[]
) RETURNS bigint
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_cfg pgtrickle.pgt_inbox_config;
    v_n   bigint;
BEGIN
    SELECT * INTO v_cfg FROM pgtrickle.pgt_inbox_config c WHERE c.inbox_name = p_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inbox not found: %', p_name;
    END IF;
    IF cardinality(p_event_ids) = 0 THEN
        RETURN 0;
    END IF;

    EXECUTE format('UPDATE %I.%I SET %I = NULL, %I = 0, %I = NULL WHERE %I = ANY($1)',
                   v_cfg.inbox_schema, v_cfg.inbox_name,
                   v_cfg.processed_at_column, v_cfg.retry_count_column, v_cfg.error_column,
                   v_cfg.id_column)
      USING p_event_ids;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

-- ── privileges ─────────────────────────────────────────────────────────────

REVOKE ALL ON pgtrickle.pgt_inbox_config          FROM PUBLIC;
REVOKE ALL ON pgtrickle.pgt_inbox_ordering_config FROM PUBLIC;
REVOKE ALL ON pgtrickle.pgt_inbox_priority_config FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtrickle.create_inbox(text, text, integer, text, boolean, boolean, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.drop_inbox(text, boolean, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.inbox_status(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.inbox_health(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.replay_inbox_messages(text, text[]) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION pgtrickle.inbox_status(text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.inbox_health(text) TO pgtrickle_relay;
