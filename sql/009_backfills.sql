-- 009_backfills.sql - backfills on demand for CDC pipelines (issue 17).
--
-- A pipeline manager (pgtrickle_relay_admin) asks a running CDC pipeline to
-- send a table's current rows again while its changes keep streaming:
--
--   SELECT pgtrickle.request_backfill('orders-cdc', 'public.orders');
--   SELECT pgtrickle.request_backfill('orders-cdc', 'public.orders', 'region = ''eu''');
--   SELECT * FROM pgtrickle.relay_backfills;
--   SELECT pgtrickle.cancel_backfill(7);
--
-- request_backfill validates the request (the pipeline is a CDC pipeline,
-- the table is in its publication and its `tables` filter, it has a primary
-- key, p_where parses against it), queues it and NOTIFYs
-- pgtrickle_relay_backfill with the pipeline's name; the relay that runs
-- the pipeline reads the table in primary-key chunks interleaved with the
-- live stream (docs/backends/cdc.md, "Backfills"). A pipeline runs its
-- backfills one at a time, oldest first.
--
-- Progress lives here, not in the relay: after each chunk is confirmed by
-- the sink the relay stores the chunk's last primary key, so a backfill
-- survives a relay restart and a failover to another relay of the group and
-- resumes after its last confirmed chunk.
--
--   state   queued     waiting for the pipeline (or for an older backfill)
--           running    being sent (last_key: where it resumes)
--           done       every row sent and confirmed
--           cancelled  cancel_backfill, or the pipeline was deleted meanwhile
--           failed     the relay could not read the table (error says why);
--                      request it again once fixed

CREATE TABLE IF NOT EXISTS pgtrickle.relay_backfill (
    id            bigserial   PRIMARY KEY,
    pipeline      text        NOT NULL,
    table_oid     oid         NOT NULL,
    table_name    text        NOT NULL,  -- as requested (regclass text), for display
    where_clause  text,
    state         text        NOT NULL DEFAULT 'queued'
                  CHECK (state IN ('queued', 'running', 'done', 'cancelled', 'failed')),
    last_key      text[],                -- primary key of the last confirmed row, text forms
    rows_sent     bigint      NOT NULL DEFAULT 0,
    chunks_sent   bigint      NOT NULL DEFAULT 0,
    error         text,
    requested_by  text        NOT NULL DEFAULT current_user,
    requested_at  timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS relay_backfill_pending
    ON pgtrickle.relay_backfill (pipeline, id) WHERE state IN ('queued', 'running');
REVOKE ALL ON pgtrickle.relay_backfill FROM PUBLIC, pgtrickle_relay, pgtrickle_relay_admin;
REVOKE ALL ON SEQUENCE pgtrickle.relay_backfill_id_seq FROM PUBLIC, pgtrickle_relay, pgtrickle_relay_admin;

-- ── the pipeline managers' API ──────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.request_backfill(
    p_pipeline text,
    p_table    regclass,
    p_where    text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_config  jsonb;
    v_pub     text;
    v_schema  text;
    v_name    text;
    v_kind    "char";
    v_tables  jsonb;
    v_id      bigint;
BEGIN
    IF p_pipeline IS NULL OR p_table IS NULL THEN
        RAISE EXCEPTION 'request_backfill: p_pipeline and p_table must not be NULL';
    END IF;
    SELECT c.config INTO v_config FROM pgtrickle.relay_outbox_config c WHERE c.name = p_pipeline;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'request_backfill: no forward pipeline named "%"', p_pipeline
            USING HINT = 'SELECT name FROM pgtrickle.list_relay_configs() WHERE direction = ''forward''';
    END IF;
    IF COALESCE(v_config->>'source_type', v_config->'source'->>'type', '') <> 'cdc' THEN
        RAISE EXCEPTION 'request_backfill: pipeline "%" is not a CDC pipeline (its source is %)',
            p_pipeline, COALESCE(v_config->>'source_type', v_config->'source'->>'type', 'unknown');
    END IF;
    v_pub := v_config->'source'->>'publication';
    SELECT n.nspname, c.relname, c.relkind INTO v_schema, v_name, v_kind
      FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = p_table;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables pt
                    WHERE pt.pubname = v_pub AND pt.schemaname = v_schema AND pt.tablename = v_name) THEN
        RAISE EXCEPTION 'request_backfill: table % is not in publication "%" of pipeline "%"',
            p_table, v_pub, p_pipeline
            USING HINT = CASE WHEN v_kind = 'p' THEN 'a partitioned table is published under its '
                              'partitions'' names unless the publication sets publish_via_partition_root'
                              ELSE format('ALTER PUBLICATION %I ADD TABLE %s', v_pub, p_table) END;
    END IF;
    v_tables := v_config->'source'->'tables';
    IF jsonb_typeof(v_tables) = 'array' AND NOT EXISTS (
           SELECT 1 FROM jsonb_array_elements_text(v_tables) t
            WHERE t = v_name OR t = v_schema || '.' || v_name) THEN
        RAISE EXCEPTION 'request_backfill: table % is not among the "tables" of pipeline "%" (%)',
            p_table, p_pipeline, v_tables;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = p_table AND i.indisprimary) THEN
        RAISE EXCEPTION 'request_backfill: table % has no primary key; a backfill reads a table in '
                        'primary-key order, in chunks', p_table
            USING HINT = 'add a primary key, or resend the table with a new slot and "snapshot": "initial"';
    END IF;
    IF p_where IS NOT NULL THEN
        -- Parse and analyse the filter the way the relay will use it, without
        -- running it: PREPARE plans nothing and evaluates nothing.
        BEGIN
            EXECUTE format(E'PREPARE pgtrickle_relay_backfill_check AS SELECT 1 FROM (SELECT * FROM %s WHERE %s\n) AS f',
                           p_table, p_where);
            DEALLOCATE pgtrickle_relay_backfill_check;
        EXCEPTION WHEN OTHERS THEN
            RAISE EXCEPTION 'request_backfill: p_where is not a condition on %: %', p_table, SQLERRM;
        END;
    END IF;
    INSERT INTO pgtrickle.relay_backfill (pipeline, table_oid, table_name, where_clause, requested_by)
    VALUES (p_pipeline, p_table, p_table::text, p_where, session_user)
    RETURNING id INTO v_id;
    PERFORM pg_notify('pgtrickle_relay_backfill', p_pipeline);
    RETURN v_id;
END;
$$;
COMMENT ON FUNCTION pgtrickle.request_backfill(text, regclass, text) IS
    'Queue a backfill: the CDC pipeline sends the table''s current rows (those matching p_where) as '
    'snapshot events, in primary-key chunks interleaved with its live stream. Returns the backfill id.';

-- Cancel a queued or running backfill. Returns true when it was cancelled,
-- false when it had already finished (done, cancelled or failed).
CREATE OR REPLACE FUNCTION pgtrickle.cancel_backfill(p_id bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_pipeline text;
BEGIN
    UPDATE pgtrickle.relay_backfill
       SET state = 'cancelled', finished_at = now(), updated_at = now()
     WHERE id = p_id AND state IN ('queued', 'running')
    RETURNING pipeline INTO v_pipeline;
    IF FOUND THEN
        PERFORM pg_notify('pgtrickle_relay_backfill', v_pipeline);
        RETURN true;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.relay_backfill WHERE id = p_id) THEN
        RAISE EXCEPTION 'cancel_backfill: no backfill with id %', p_id
            USING HINT = 'SELECT * FROM pgtrickle.relay_backfills';
    END IF;
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_backfill_rows()
RETURNS TABLE (id bigint, pipeline text, table_name text, where_clause text, state text,
               rows_sent bigint, chunks_sent bigint, last_key text[], error text,
               requested_by text, requested_at timestamptz, started_at timestamptz,
               finished_at timestamptz, updated_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
    SELECT b.id, b.pipeline, COALESCE(b.table_oid::regclass::text, b.table_name), b.where_clause,
           b.state, b.rows_sent, b.chunks_sent, b.last_key, b.error, b.requested_by,
           b.requested_at, b.started_at, b.finished_at, b.updated_at
      FROM pgtrickle.relay_backfill b
     ORDER BY b.id;
$$;

CREATE OR REPLACE VIEW pgtrickle.relay_backfills AS SELECT * FROM pgtrickle.relay_backfill_rows();
COMMENT ON VIEW pgtrickle.relay_backfills IS
    'Every backfill: pipeline, table, filter, state (queued, running, done, cancelled, failed), '
    'rows and chunks sent (confirmed by the sink), where it resumes, and when.';

-- ── the relay's runtime API ─────────────────────────────────────────────────

-- The backfill a pipeline works on: its running one, else its oldest queued
-- one (marked running). No row when none is pending. The table's current
-- name comes from its oid (a renamed table is still found).
CREATE OR REPLACE FUNCTION pgtrickle.relay_backfill_next(p_pipeline text)
RETURNS TABLE (id bigint, table_oid oid, where_clause text, last_key text[],
               rows_sent bigint, chunks_sent bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_id bigint;
BEGIN
    SELECT b.id INTO v_id FROM pgtrickle.relay_backfill b
     WHERE b.pipeline = p_pipeline AND b.state IN ('queued', 'running')
     ORDER BY (b.state = 'running') DESC, b.id
     LIMIT 1
     FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE pgtrickle.relay_backfill b
       SET state = 'running', started_at = COALESCE(b.started_at, now()), updated_at = now()
     WHERE b.id = v_id AND b.state = 'queued';
    RETURN QUERY SELECT b.id, b.table_oid, b.where_clause, b.last_key, b.rows_sent, b.chunks_sent
                   FROM pgtrickle.relay_backfill b WHERE b.id = v_id;
END;
$$;

-- A chunk is confirmed: store where the backfill resumes. p_done marks it
-- done. Returns the backfill's state afterwards ('running', 'done', or
-- 'cancelled' when it was cancelled meanwhile: the progress is then not
-- stored and the relay stops).
CREATE OR REPLACE FUNCTION pgtrickle.relay_backfill_progress(
    p_id       bigint,
    p_last_key text[],
    p_rows     bigint,
    p_chunks   bigint,
    p_done     boolean
) RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_state text;
BEGIN
    UPDATE pgtrickle.relay_backfill b
       SET last_key = COALESCE(p_last_key, b.last_key), rows_sent = p_rows, chunks_sent = p_chunks,
           state = CASE WHEN p_done THEN 'done' ELSE 'running' END,
           finished_at = CASE WHEN p_done THEN now() END, updated_at = now()
     WHERE b.id = p_id AND b.state = 'running'
    RETURNING b.state INTO v_state;
    IF NOT FOUND THEN
        SELECT b.state INTO v_state FROM pgtrickle.relay_backfill b WHERE b.id = p_id;
    END IF;
    RETURN COALESCE(v_state, 'cancelled');  -- deleted with its pipeline
END;
$$;

-- The relay cannot read the table (dropped, no privilege, a bad filter).
CREATE OR REPLACE FUNCTION pgtrickle.relay_backfill_failed(p_id bigint, p_error text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
    UPDATE pgtrickle.relay_backfill
       SET state = 'failed', error = p_error, finished_at = now(), updated_at = now()
     WHERE id = p_id AND state IN ('queued', 'running');
$$;

-- A deleted pipeline's backfills go with it.
CREATE OR REPLACE FUNCTION pgtrickle.relay_backfill_cleanup()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    DELETE FROM pgtrickle.relay_backfill WHERE pipeline = OLD.name;
    RETURN OLD;
END;
$$;
REVOKE ALL ON FUNCTION pgtrickle.relay_backfill_cleanup() FROM PUBLIC;
DROP TRIGGER IF EXISTS relay_backfill_cleanup ON pgtrickle.relay_outbox_config;
CREATE TRIGGER relay_backfill_cleanup AFTER DELETE ON pgtrickle.relay_outbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_backfill_cleanup();

REVOKE ALL ON FUNCTION pgtrickle.request_backfill(text, regclass, text) FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON FUNCTION pgtrickle.cancel_backfill(bigint) FROM PUBLIC, pgtrickle_relay;
REVOKE ALL ON FUNCTION pgtrickle.relay_backfill_rows() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_backfill_next(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_backfill_progress(bigint, text[], bigint, bigint, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_backfill_failed(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.request_backfill(text, regclass, text) TO pgtrickle_relay_admin;
GRANT EXECUTE ON FUNCTION pgtrickle.cancel_backfill(bigint) TO pgtrickle_relay_admin;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_backfill_rows() TO pgtrickle_relay, pgtrickle_relay_admin;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_backfill_next(text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_backfill_progress(bigint, text[], bigint, bigint, boolean) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_backfill_failed(bigint, text) TO pgtrickle_relay;
REVOKE ALL ON pgtrickle.relay_backfills FROM PUBLIC;
GRANT SELECT ON pgtrickle.relay_backfills TO pgtrickle_relay, pgtrickle_relay_admin;

-- Catalog version 4: backfills.
INSERT INTO pgtrickle.relay_catalog_meta (key, value) VALUES ('version', '4')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

CREATE OR REPLACE FUNCTION pgtrickle.relay_catalog_version()
RETURNS int
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$ SELECT 4 $$;
