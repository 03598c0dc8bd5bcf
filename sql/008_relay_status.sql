-- 008_relay_status.sql - the whole fleet from psql, and clean deletes.
--
-- relay_status (a view): one row per pipeline (and per relay group that
-- reports on it): the relay that owns it (group, host, pid), its state,
-- last error, last progress and lag. The relays write it: each coordinator
-- calls relay_report_status() on every discovery tick (and after changes)
-- with the pipelines it owns and those it rejected; a report older than
-- three of that relay's reporting intervals is shown as 'stale' (the relay
-- died or lost its database connection).
--
--   state      running   owned, healthy
--              degraded  owned, degraded (last_error / reason says why)
--              rejected  a relay could not load its config (last_error)
--              stale     the owning relay stopped reporting
--              unowned   enabled, but no relay reports it
--              disabled  enabled = false
--
-- Clean deletes: deleting a pipeline (delete_relay, or any DELETE on the
-- config tables) removes its offsets, and for a CDC pipeline whose slot the
-- relay created (create_slot not false) queues the slot to be dropped; a
-- relay drops it as soon as no session uses it, and a pipeline that starts
-- with that slot name again drops the old slot first (it never resumes at
-- the deleted pipeline's position). A slot the user named with
-- "create_slot": false is left alone.

-- ── status reports ─────────────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS pgtrickle.relay_status_report (
    relay_group_id   text        NOT NULL,
    relay            text        NOT NULL,  -- "<host>:<pid>"
    host             text        NOT NULL,
    pid              int         NOT NULL,
    direction        text        NOT NULL,  -- forward | reverse
    pipeline         text        NOT NULL,
    state            text        NOT NULL,  -- running | degraded | rejected
    reason           text,
    last_error       text,
    last_progress_at timestamptz,
    lag_seconds      double precision,
    interval_ms      int         NOT NULL,
    reported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay_group_id, relay, direction, pipeline)
);
REVOKE ALL ON pgtrickle.relay_status_report FROM PUBLIC, pgtrickle_relay, pgtrickle_relay_admin;

-- A relay replaces its own rows: p_rows is a JSON array of
-- {"direction","pipeline","state","reason","last_error","last_progress_ms","lag_seconds"};
-- its rows not in the array are deleted (an empty array at shutdown).
CREATE OR REPLACE FUNCTION pgtrickle.relay_report_status(
    p_group       text,
    p_host        text,
    p_pid         int,
    p_interval_ms int,
    p_rows        jsonb
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_relay text := p_host || ':' || p_pid;
BEGIN
    IF p_group IS NULL OR p_host IS NULL OR p_pid IS NULL THEN
        RAISE EXCEPTION 'relay_report_status: p_group, p_host and p_pid must not be NULL';
    END IF;
    DELETE FROM pgtrickle.relay_status_report r
     WHERE r.relay_group_id = p_group AND r.relay = v_relay
       AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(p_rows, '[]')) e
                        WHERE e->>'direction' = r.direction AND e->>'pipeline' = r.pipeline);
    INSERT INTO pgtrickle.relay_status_report AS r
           (relay_group_id, relay, host, pid, direction, pipeline, state, reason, last_error,
            last_progress_at, lag_seconds, interval_ms, reported_at)
    SELECT p_group, v_relay, p_host, p_pid, e->>'direction', e->>'pipeline', e->>'state',
           e->>'reason', e->>'last_error',
           CASE WHEN (e->>'last_progress_ms')::bigint > 0
                THEN to_timestamp((e->>'last_progress_ms')::bigint / 1000.0) END,
           (e->>'lag_seconds')::double precision, GREATEST(p_interval_ms, 100), now()
      FROM jsonb_array_elements(COALESCE(p_rows, '[]')) e
    ON CONFLICT (relay_group_id, relay, direction, pipeline) DO UPDATE
       SET state = EXCLUDED.state, reason = EXCLUDED.reason, last_error = EXCLUDED.last_error,
           last_progress_at = EXCLUDED.last_progress_at, lag_seconds = EXCLUDED.lag_seconds,
           interval_ms = EXCLUDED.interval_ms, reported_at = EXCLUDED.reported_at;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.relay_status_rows()
RETURNS TABLE (pipeline text, direction text, enabled boolean, source_type text, sink_type text,
               relay_group_id text, host text, pid int, state text, reason text,
               last_error text, last_progress_at timestamptz, lag_seconds double precision,
               reported_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
    WITH cfg AS (
        SELECT c.name, 'forward'::text AS direction, c.enabled, c.config FROM pgtrickle.relay_outbox_config c
        UNION ALL
        SELECT c.name, 'reverse', c.enabled, c.config FROM pgtrickle.relay_inbox_config c
    ), rep AS (
        SELECT r.*, now() - r.reported_at > make_interval(secs => 3 * r.interval_ms / 1000.0) AS stale
          FROM pgtrickle.relay_status_report r
    ), owner AS (  -- per pipeline and group: the freshest report of a relay that runs it
        SELECT DISTINCT ON (r.relay_group_id, r.direction, r.pipeline) r.*
          FROM rep r WHERE r.state IN ('running', 'degraded')
         ORDER BY r.relay_group_id, r.direction, r.pipeline, r.stale, r.reported_at DESC
    ), rejected AS (  -- per pipeline and group: the freshest rejection, when nobody runs it
        SELECT DISTINCT ON (r.relay_group_id, r.direction, r.pipeline) r.*
          FROM rep r WHERE r.state = 'rejected' AND NOT r.stale
         ORDER BY r.relay_group_id, r.direction, r.pipeline, r.reported_at DESC
    ), best AS (
        SELECT o.* FROM owner o
        UNION ALL
        SELECT j.* FROM rejected j
         WHERE NOT EXISTS (SELECT 1 FROM owner o WHERE o.relay_group_id = j.relay_group_id
                             AND o.direction = j.direction AND o.pipeline = j.pipeline AND NOT o.stale)
    )
    SELECT c.name, c.direction, c.enabled,
           COALESCE(c.config->>'source_type', c.config->'source'->>'type'),
           COALESCE(c.config->'sink'->>'type', c.config->>'sink_type'),
           b.relay_group_id, b.host, b.pid,
           CASE WHEN NOT c.enabled THEN 'disabled'
                WHEN b.pipeline IS NULL THEN 'unowned'
                WHEN b.stale THEN 'stale'
                ELSE b.state END,
           b.reason, b.last_error, b.last_progress_at, b.lag_seconds, b.reported_at
      FROM cfg c
      LEFT JOIN best b ON b.direction = c.direction AND b.pipeline = c.name
     ORDER BY c.name, c.direction, b.relay_group_id;
$$;

CREATE OR REPLACE VIEW pgtrickle.relay_status AS SELECT * FROM pgtrickle.relay_status_rows();
COMMENT ON VIEW pgtrickle.relay_status IS
    'Every pipeline: its owning relay (group, host, pid), state (running, degraded, rejected, '
    'stale, unowned, disabled), last error, last progress and lag, as the relays report them.';

REVOKE ALL ON FUNCTION pgtrickle.relay_report_status(text, text, int, int, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_status_rows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_report_status(text, text, int, int, jsonb) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_status_rows() TO pgtrickle_relay, pgtrickle_relay_admin;
REVOKE ALL ON pgtrickle.relay_status FROM PUBLIC;
GRANT SELECT ON pgtrickle.relay_status TO pgtrickle_relay, pgtrickle_relay_admin;

-- ── clean deletes ──────────────────────────────────────────────────────────

CREATE TABLE IF NOT EXISTS pgtrickle.relay_slot_drops (
    slot          text        NOT NULL PRIMARY KEY,
    pipeline      text        NOT NULL,
    requested_at  timestamptz NOT NULL DEFAULT now()
);
REVOKE ALL ON pgtrickle.relay_slot_drops FROM PUBLIC, pgtrickle_relay, pgtrickle_relay_admin;

CREATE OR REPLACE FUNCTION pgtrickle.relay_config_cleanup()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    DELETE FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = OLD.name;
    DELETE FROM pgtrickle.relay_status_report
     WHERE pipeline = OLD.name
       AND direction = CASE WHEN TG_TABLE_NAME = 'relay_outbox_config' THEN 'forward' ELSE 'reverse' END;
    IF TG_TABLE_NAME = 'relay_outbox_config'
       AND COALESCE(OLD.config->>'source_type', '') = 'cdc'
       AND COALESCE(OLD.config->'source'->>'create_slot', 'true') <> 'false'
       AND COALESCE(OLD.config->'source'->>'slot', '') <> '' THEN
        INSERT INTO pgtrickle.relay_slot_drops (slot, pipeline)
        VALUES (OLD.config->'source'->>'slot', OLD.name)
        ON CONFLICT (slot) DO UPDATE SET pipeline = EXCLUDED.pipeline, requested_at = now();
    END IF;
    RETURN OLD;
END;
$$;
REVOKE ALL ON FUNCTION pgtrickle.relay_config_cleanup() FROM PUBLIC;

DROP TRIGGER IF EXISTS relay_config_cleanup ON pgtrickle.relay_outbox_config;
CREATE TRIGGER relay_config_cleanup AFTER DELETE ON pgtrickle.relay_outbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_cleanup();
DROP TRIGGER IF EXISTS relay_config_cleanup ON pgtrickle.relay_inbox_config;
CREATE TRIGGER relay_config_cleanup AFTER DELETE ON pgtrickle.relay_inbox_config
    FOR EACH ROW EXECUTE FUNCTION pgtrickle.relay_config_cleanup();

-- The slots waiting to be dropped (what the coordinator polls).
CREATE OR REPLACE FUNCTION pgtrickle.relay_pending_slot_drops()
RETURNS TABLE (slot text, pipeline text, active boolean)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
    SELECT d.slot, d.pipeline, COALESCE(s.active, false)
      FROM pgtrickle.relay_slot_drops d
      LEFT JOIN pg_catalog.pg_replication_slots s ON s.slot_name = d.slot
     ORDER BY d.requested_at;
$$;

-- A relay has dropped the slot (or found it gone): forget the request.
-- Returns true when a request existed.
CREATE OR REPLACE FUNCTION pgtrickle.relay_slot_dropped(p_slot text)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_found boolean;
BEGIN
    DELETE FROM pgtrickle.relay_slot_drops WHERE slot = p_slot;
    v_found := FOUND;
    -- the CDC source's per-slot marker: a new slot of this name starts afresh
    DELETE FROM pgtrickle.relay_consumer_offsets WHERE pipeline_id = 'cdc_slot:' || p_slot;
    RETURN v_found;
END;
$$;

REVOKE ALL ON FUNCTION pgtrickle.relay_pending_slot_drops() FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_slot_dropped(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_pending_slot_drops() TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_slot_dropped(text) TO pgtrickle_relay;

-- ── where a new outbox pipeline starts ───────────────────────────────────

-- The pipeline's stored offset; when it has none yet, store p_start first
-- (outbox "start": "latest" passes the outbox's current last id, so a new
-- pipeline sends only what is written from now on; "earliest" passes 0).
CREATE OR REPLACE FUNCTION pgtrickle.relay_start_offset(
    p_group     text,
    p_pipeline  text,
    p_start     bigint,
    p_worker_id text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v bigint;
BEGIN
    -- read first: an existing offset needs no write (and no lock)
    SELECT last_change_id INTO v FROM pgtrickle.relay_consumer_offsets
     WHERE relay_group_id = p_group AND pipeline_id = p_pipeline;
    IF FOUND THEN
        RETURN v;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.relay_outbox_config WHERE name = p_pipeline)
       AND NOT EXISTS (SELECT 1 FROM pgtrickle.relay_inbox_config WHERE name = p_pipeline) THEN
        RETURN COALESCE(p_start, 0);  -- deleted meanwhile: store nothing
    END IF;
    INSERT INTO pgtrickle.relay_consumer_offsets (relay_group_id, pipeline_id, last_change_id, worker_id, updated_at)
    VALUES (p_group, p_pipeline, COALESCE(p_start, 0), p_worker_id, now())
    ON CONFLICT DO NOTHING;
    SELECT last_change_id INTO v FROM pgtrickle.relay_consumer_offsets
     WHERE relay_group_id = p_group AND pipeline_id = p_pipeline;
    RETURN COALESCE(v, 0);
END;
$$;
REVOKE ALL ON FUNCTION pgtrickle.relay_start_offset(text, text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_start_offset(text, text, bigint, text) TO pgtrickle_relay;

-- Catalog version 3: relay_status, clean deletes, two roles.
INSERT INTO pgtrickle.relay_catalog_meta (key, value) VALUES ('version', '3')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

CREATE OR REPLACE FUNCTION pgtrickle.relay_catalog_version()
RETURNS int
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$ SELECT 3 $$;
