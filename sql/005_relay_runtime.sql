-- 005_relay_runtime.sql - what the pgtrickle-relay daemon itself calls.
--
-- Always applied, also next to a pg_trickle-installed catalog. Everything
-- here is SECURITY DEFINER with a fixed search_path and EXECUTE-able only by
-- the role pgtrickle_relay (and the owner), so a login that only has that
-- role can run the relay without any direct table access:
--   relay_catalog_version, relay_get_offset, relay_commit_offset,
--   relay_outbox_source, relay_dead_letter, relay_dlq_list,
--   relay_dlq_replay, relay_dlq_take_replays.

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pgtrickle;

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

-- pg_trickle v0.29-v0.45 create this table; other versions do not.
CREATE TABLE IF NOT EXISTS pgtrickle.relay_consumer_offsets (
    relay_group_id  TEXT        NOT NULL,
    pipeline_id     TEXT        NOT NULL,
    last_change_id  BIGINT      NOT NULL DEFAULT 0,
    worker_id       TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, pipeline_id)
);

-- ── catalog version ────────────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS pgtrickle.relay_catalog_meta (
    key    text NOT NULL PRIMARY KEY,
    value  text
);
INSERT INTO pgtrickle.relay_catalog_meta (key, value) VALUES ('version', '1')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

CREATE OR REPLACE FUNCTION pgtrickle.relay_catalog_version()
RETURNS int
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$ SELECT 1 $$;

-- ── identifier helper ──────────────────────────────────────────────────────
-- The name PostgreSQL actually gives an identifier: at most 63 bytes, cut on a
-- character boundary. Also used by 002_outbox.sql.

CREATE OR REPLACE FUNCTION pgtrickle.relay_clip_ident(p_ident text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v text := p_ident;
BEGIN
    WHILE octet_length(v) > 63 LOOP
        v := left(v, -1);
    END LOOP;
    RETURN v;
END;
$$;

-- ── simple-mode offsets ────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.relay_get_offset(
    p_group    text,
    p_pipeline text
) RETURNS bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
    SELECT COALESCE((SELECT o.last_change_id
                       FROM pgtrickle.relay_consumer_offsets o
                      WHERE o.relay_group_id = p_group AND o.pipeline_id = p_pipeline), 0)
$$;

-- Upsert keeping GREATEST(stored, new): offsets only move forward.
-- Returns the stored value (which is > p_last_change_id if that was a regression).
CREATE OR REPLACE FUNCTION pgtrickle.relay_commit_offset(
    p_group          text,
    p_pipeline       text,
    p_last_change_id bigint,
    p_worker_id      text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_stored bigint;
BEGIN
    IF p_group IS NULL OR p_pipeline IS NULL OR p_last_change_id IS NULL THEN
        RAISE EXCEPTION 'relay_commit_offset: p_group, p_pipeline and p_last_change_id must not be NULL';
    END IF;
    -- A pipeline deleted while its worker finished a batch keeps no offset
    -- (a new pipeline of the same name must not resume there).
    -- (CDC keeps a marker per slot, 'cdc_slot:<slot>': removed when the
    -- slot of a deleted pipeline is dropped, relay_slot_dropped().)
    IF p_pipeline NOT LIKE 'cdc\_slot:%'
       AND NOT EXISTS (SELECT 1 FROM pgtrickle.relay_outbox_config WHERE name = p_pipeline)
       AND NOT EXISTS (SELECT 1 FROM pgtrickle.relay_inbox_config WHERE name = p_pipeline) THEN
        RETURN p_last_change_id;
    END IF;

    INSERT INTO pgtrickle.relay_consumer_offsets AS o
        (relay_group_id, pipeline_id, last_change_id, worker_id, updated_at)
    VALUES (p_group, p_pipeline, p_last_change_id, p_worker_id, now())
    ON CONFLICT (relay_group_id, pipeline_id) DO UPDATE
        SET last_change_id = GREATEST(o.last_change_id, EXCLUDED.last_change_id),
            worker_id      = EXCLUDED.worker_id,
            updated_at     = now()
    RETURNING o.last_change_id INTO v_stored;

    RETURN v_stored;
END;
$$;

-- ── outbox table names ─────────────────────────────────────────────────────
-- p_outbox: the stream table name, maybe schema-qualified. outbox_table comes
-- from pgt_outbox_config when that table exists and has the name, else
-- 'outbox_<name>'; delta_table is 'outbox_delta_rows_<first 48 chars>'.
-- Both are the names as stored by PostgreSQL (<= 63 bytes), in schema pgtrickle.
-- Always returns exactly one row.

CREATE OR REPLACE FUNCTION pgtrickle.relay_outbox_source(
    p_outbox text
) RETURNS TABLE (
    outbox_table text,
    stream_table text,
    delta_table  text
)
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_name   text;
    v_outbox text;
BEGIN
    IF p_outbox IS NULL OR btrim(p_outbox) = '' THEN
        RAISE EXCEPTION 'relay_outbox_source: outbox (stream table) name must not be empty';
    END IF;
    v_name := CASE WHEN strpos(p_outbox, '.') > 0
                   THEN substr(p_outbox, strpos(p_outbox, '.') + 1) ELSE p_outbox END;

    IF to_regclass('pgtrickle.pgt_outbox_config') IS NOT NULL THEN
        EXECUTE 'SELECT c.outbox_table_name FROM pgtrickle.pgt_outbox_config c '
                'WHERE c.stream_table_name = $1 ORDER BY c.stream_table_oid LIMIT 1'
           INTO v_outbox
          USING v_name;
    END IF;

    outbox_table := COALESCE(v_outbox, pgtrickle.relay_clip_ident(left('outbox_' || v_name, 63)));
    stream_table := v_name;
    delta_table  := pgtrickle.relay_clip_ident('outbox_delta_rows_' || left(v_name, 48));
    RETURN NEXT;
END;
$$;

-- ── dead letters ───────────────────────────────────────────────────────────
--
-- One row per failure episode of one message (pipeline, dedup_key).
--   relay_dead_letter()      the daemon records a permanent failure; while the
--                            row is not yet sent for replay (replayed_at IS NULL)
--                            a new failure of the same key updates it in place.
--   relay_dlq_replay()       an operator sends rows back: replayed_at = now(),
--                            replay_count + 1, replay_requested_at = now().
--   relay_dlq_take_replays() the daemon claims requested rows (FOR UPDATE SKIP
--                            LOCKED) and clears replay_requested_at. Call it in
--                            a transaction committed only after the sink has
--                            confirmed the republished messages; a rollback
--                            leaves them requested.
-- A replayed message that fails again gets a new row (the old one keeps its
-- history), because the unique index only covers rows not sent for replay.

CREATE TABLE IF NOT EXISTS pgtrickle.relay_dlq (
    id            bigserial   PRIMARY KEY,
    pipeline      text        NOT NULL,
    dedup_key     text        NOT NULL,
    subject       text,
    payload       jsonb,
    error         text        NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    replay_count  int         NOT NULL DEFAULT 0
);
ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS replay_requested_at timestamptz;

CREATE INDEX IF NOT EXISTS relay_dlq_pipeline_failed_at
    ON pgtrickle.relay_dlq (pipeline, failed_at);
CREATE UNIQUE INDEX IF NOT EXISTS relay_dlq_open_key
    ON pgtrickle.relay_dlq (pipeline, dedup_key) WHERE replayed_at IS NULL;
CREATE INDEX IF NOT EXISTS relay_dlq_replay_requested
    ON pgtrickle.relay_dlq (pipeline, id) WHERE replay_requested_at IS NOT NULL;

COMMENT ON TABLE pgtrickle.relay_dlq IS
    'Messages the relay could not deliver for a permanent reason. Read with relay_dlq_list(), '
    'send back with relay_dlq_replay(); the daemon picks them up with relay_dlq_take_replays().';

CREATE OR REPLACE FUNCTION pgtrickle.relay_dead_letter(
    p_pipeline  text,
    p_dedup_key text,
    p_subject   text,
    p_payload   jsonb,
    p_error     text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    IF p_pipeline IS NULL OR p_dedup_key IS NULL THEN
        RAISE EXCEPTION 'relay_dead_letter: p_pipeline and p_dedup_key must not be NULL';
    END IF;

    INSERT INTO pgtrickle.relay_dlq AS d (pipeline, dedup_key, subject, payload, error, failed_at)
    VALUES (p_pipeline, p_dedup_key, p_subject, p_payload, COALESCE(p_error, 'unknown error'), now())
    ON CONFLICT (pipeline, dedup_key) WHERE replayed_at IS NULL DO UPDATE
        SET subject   = EXCLUDED.subject,
            payload   = EXCLUDED.payload,
            error     = EXCLUDED.error,
            failed_at = now()
    RETURNING d.id INTO v_id;

    RETURN v_id;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_dlq_list(
    p_pipeline text DEFAULT NULL,
    p_limit    int  DEFAULT 100
) RETURNS SETOF pgtrickle.relay_dlq
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    RETURN QUERY
        SELECT d.*
          FROM pgtrickle.relay_dlq d
         WHERE p_pipeline IS NULL OR d.pipeline = p_pipeline
         ORDER BY d.failed_at DESC, d.id DESC
         LIMIT COALESCE(p_limit, 100);
END;
$$;

-- p_ids NULL: every row of the pipeline not yet sent for replay.
-- p_ids given: those rows of the pipeline, whatever their state (replay again).
CREATE OR REPLACE FUNCTION pgtrickle.relay_dlq_replay(
    p_pipeline text,
    p_ids      bigint[] DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
    IF p_pipeline IS NULL THEN
        RAISE EXCEPTION 'relay_dlq_replay: p_pipeline must not be NULL';
    END IF;

    UPDATE pgtrickle.relay_dlq d
       SET replayed_at         = now(),
           replay_count        = d.replay_count + 1,
           replay_requested_at = now()
     WHERE d.pipeline = p_pipeline
       AND CASE WHEN p_ids IS NULL THEN d.replayed_at IS NULL
                ELSE d.id = ANY (p_ids) END;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_dlq_take_replays(
    p_pipeline text,
    p_limit    int
) RETURNS SETOF pgtrickle.relay_dlq
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF p_pipeline IS NULL THEN
        RAISE EXCEPTION 'relay_dlq_take_replays: p_pipeline must not be NULL';
    END IF;

    RETURN QUERY
        WITH picked AS (
            SELECT d.id
              FROM pgtrickle.relay_dlq d
             WHERE d.pipeline = p_pipeline
               AND d.replay_requested_at IS NOT NULL
             ORDER BY d.id
             LIMIT COALESCE(p_limit, 100)
               FOR UPDATE SKIP LOCKED
        ), taken AS (
            UPDATE pgtrickle.relay_dlq d
               SET replay_requested_at = NULL
              FROM picked
             WHERE d.id = picked.id
            RETURNING d.*
        )
        SELECT * FROM taken ORDER BY taken.id;
END;
$$;

-- ── privileges ─────────────────────────────────────────────────────────────

REVOKE ALL ON pgtrickle.relay_consumer_offsets FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON pgtrickle.relay_catalog_meta     FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON pgtrickle.relay_dlq              FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON SEQUENCE pgtrickle.relay_dlq_id_seq FROM PUBLIC, pgtrickle_relay;

REVOKE ALL ON FUNCTION pgtrickle.relay_catalog_version() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_clip_ident(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_get_offset(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_commit_offset(text, text, bigint, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_outbox_source(text) FROM PUBLIC;
-- The event's op ("insert", "event", ...), so a replayed dead letter is
-- re-published as what it was. The 6-argument form is what the daemon calls.
ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS op text;

CREATE OR REPLACE FUNCTION pgtrickle.relay_dead_letter(
    p_pipeline  text,
    p_dedup_key text,
    p_subject   text,
    p_payload   jsonb,
    p_error     text,
    p_op        text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    v_id := pgtrickle.relay_dead_letter(p_pipeline, p_dedup_key, p_subject, p_payload, p_error);
    UPDATE pgtrickle.relay_dlq SET op = p_op WHERE id = v_id;
    RETURN v_id;
END;
$$;
REVOKE ALL ON FUNCTION pgtrickle.relay_dead_letter(text, text, text, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dead_letter(text, text, text, jsonb, text, text) TO pgtrickle_relay;

REVOKE ALL ON FUNCTION pgtrickle.relay_dead_letter(text, text, text, jsonb, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_dlq_list(text, int) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_dlq_replay(text, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_dlq_take_replays(text, int) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION pgtrickle.relay_catalog_version() TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_get_offset(text, text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_commit_offset(text, text, bigint, text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_outbox_source(text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dead_letter(text, text, text, jsonb, text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dlq_list(text, int) TO pgtrickle_relay;
-- relay_dlq_replay: an operator's call, granted to pgtrickle_relay_admin (007_roles.sql).
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dlq_take_replays(text, int) TO pgtrickle_relay;

-- With a pg_trickle-installed catalog, let the relay role call the pg_trickle
-- functions the daemon uses (whichever exist in that version).
DO $$
DECLARE
    f text;
BEGIN
    FOREACH f IN ARRAY ARRAY[
        'pgtrickle.list_relay_configs()',
        'pgtrickle.get_relay_config(text)',
        'pgtrickle.outbox_rows_consumed(text,bigint)',
        'pgtrickle.poll_outbox(text,text,integer,integer)',
        'pgtrickle.commit_offset(text,text,bigint)',
        'pgtrickle.consumer_heartbeat(text,text)',
        'pgtrickle.extend_lease(text,text,integer)'
    ] LOOP
        IF to_regprocedure(f) IS NOT NULL THEN
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgtrickle_relay', to_regprocedure(f));
        END IF;
    END LOOP;
END;
$$;
