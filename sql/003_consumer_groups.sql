-- relay:skip-if-pg_trickle
-- 003_consumer_groups.sql - outbox consumer groups (pg_trickle v0.28.0).
--
-- Same tables, signatures, result columns and error texts as pg_trickle, and
-- the same semantics (one offset per (group, consumer); every consumer reads
-- every row past its own offset; leases are recorded, not enforced) with one
-- deliberate difference: commit_offset never moves an offset backwards and
-- creates the offset row when it is missing. seek_offset is the way to move
-- an offset back on purpose.

SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS pgtrickle;

CREATE TABLE IF NOT EXISTS pgtrickle.pgt_consumer_groups (
    group_name         TEXT        NOT NULL PRIMARY KEY,
    outbox_name        TEXT        NOT NULL,
    auto_offset_reset  TEXT        NOT NULL DEFAULT 'latest',
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT chk_consumer_group_auto_offset_reset
        CHECK (auto_offset_reset IN ('earliest', 'latest'))
);
CREATE INDEX IF NOT EXISTS idx_pgt_consumer_groups_outbox
    ON pgtrickle.pgt_consumer_groups (outbox_name);

CREATE TABLE IF NOT EXISTS pgtrickle.pgt_consumer_offsets (
    group_name        TEXT        NOT NULL
                      REFERENCES pgtrickle.pgt_consumer_groups(group_name) ON DELETE CASCADE,
    consumer_id       TEXT        NOT NULL,
    committed_offset  BIGINT      NOT NULL DEFAULT 0,
    last_committed_at TIMESTAMPTZ,
    last_heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (group_name, consumer_id)
);

CREATE TABLE IF NOT EXISTS pgtrickle.pgt_consumer_leases (
    group_name     TEXT        NOT NULL,
    consumer_id    TEXT        NOT NULL,
    batch_start    BIGINT      NOT NULL,
    batch_end      BIGINT      NOT NULL,
    lease_expires  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (group_name, consumer_id),
    FOREIGN KEY (group_name, consumer_id)
        REFERENCES pgtrickle.pgt_consumer_offsets(group_name, consumer_id) ON DELETE CASCADE
);

-- ── create / drop ──────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.create_consumer_group(
    p_name              text,
    p_outbox            text,
    p_auto_offset_reset text DEFAULT 'latest'
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF p_auto_offset_reset IS NULL OR p_auto_offset_reset NOT IN ('earliest', 'latest') THEN
        RAISE EXCEPTION 'invalid argument: auto_offset_reset must be ''earliest'' or ''latest'', got: %',
              COALESCE(p_auto_offset_reset, 'NULL');
    END IF;
    IF p_name IS NULL OR p_name = '' THEN
        RAISE EXCEPTION 'invalid argument: consumer group name must not be empty';
    END IF;
    IF p_outbox IS NULL OR p_outbox = '' THEN
        RAISE EXCEPTION 'invalid argument: outbox name must not be empty';
    END IF;
    IF EXISTS (SELECT 1 FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_name) THEN
        RAISE EXCEPTION 'consumer group already exists: %', p_name;
    END IF;
    BEGIN
        INSERT INTO pgtrickle.pgt_consumer_groups (group_name, outbox_name, auto_offset_reset)
        VALUES (p_name, p_outbox, p_auto_offset_reset);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'consumer group already exists: %', p_name;
    END;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.drop_consumer_group(
    p_name      text,
    p_if_exists boolean DEFAULT false
) RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_n bigint;
BEGIN
    DELETE FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_name;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n = 0 AND NOT COALESCE(p_if_exists, false) THEN
        RAISE EXCEPTION 'consumer group not found: %', p_name;
    END IF;
END;
$$;

-- ── poll ───────────────────────────────────────────────────────────────────

CREATE OR REPLACE FUNCTION pgtrickle.poll_outbox(
    p_group              text,
    p_consumer           text,
    p_batch_size         integer DEFAULT 100,
    p_visibility_seconds integer DEFAULT 30
) RETURNS TABLE (
    outbox_id       bigint,
    pgt_id          uuid,
    created_at      timestamptz,
    inserted_count  bigint,
    deleted_count   bigint,
    is_claim_check  boolean,
    payload         jsonb
)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_outbox text;
    v_reset  text;
    v_offset bigint;
    v_last   bigint;
    r        record;
BEGIN
    SELECT g.outbox_name, g.auto_offset_reset INTO v_outbox, v_reset
      FROM pgtrickle.pgt_consumer_groups g
     WHERE g.group_name = p_group;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;
    IF p_consumer IS NULL OR p_consumer = '' THEN
        RAISE EXCEPTION 'invalid argument: consumer id must not be empty';
    END IF;

    SELECT o.committed_offset INTO v_offset
      FROM pgtrickle.pgt_consumer_offsets o
     WHERE o.group_name = p_group AND o.consumer_id = p_consumer;
    IF NOT FOUND THEN
        -- first poll of this consumer: start per auto_offset_reset
        IF v_reset = 'earliest' THEN
            v_offset := 0;
        ELSE
            EXECUTE format('SELECT COALESCE(max(id), 0) FROM pgtrickle.%I', v_outbox) INTO v_offset;
        END IF;
        INSERT INTO pgtrickle.pgt_consumer_offsets AS o
            (group_name, consumer_id, committed_offset, last_heartbeat_at)
        VALUES (p_group, p_consumer, v_offset, now())
        ON CONFLICT (group_name, consumer_id) DO NOTHING;
        SELECT o.committed_offset INTO v_offset
          FROM pgtrickle.pgt_consumer_offsets o
         WHERE o.group_name = p_group AND o.consumer_id = p_consumer;
    END IF;

    FOR r IN EXECUTE format(
            'SELECT id, pgt_id, created_at, inserted_count, deleted_count, is_claim_check, payload '
            'FROM pgtrickle.%I WHERE id > $1 ORDER BY id LIMIT $2', v_outbox)
        USING v_offset, COALESCE(p_batch_size, 100)
    LOOP
        outbox_id      := r.id;
        pgt_id         := r.pgt_id;
        created_at     := r.created_at;
        inserted_count := r.inserted_count;
        deleted_count  := r.deleted_count;
        is_claim_check := r.is_claim_check;
        payload        := r.payload;
        v_last         := r.id;
        RETURN NEXT;
    END LOOP;

    IF v_last IS NOT NULL THEN
        UPDATE pgtrickle.pgt_consumer_offsets o
           SET last_heartbeat_at = now()
         WHERE o.group_name = p_group AND o.consumer_id = p_consumer;

        INSERT INTO pgtrickle.pgt_consumer_leases AS l
            (group_name, consumer_id, batch_start, batch_end, lease_expires)
        VALUES (p_group, p_consumer, v_offset, v_last,
                now() + make_interval(secs => COALESCE(p_visibility_seconds, 30)))
        ON CONFLICT (group_name, consumer_id) DO UPDATE
            SET batch_start   = EXCLUDED.batch_start,
                batch_end     = EXCLUDED.batch_end,
                lease_expires = EXCLUDED.lease_expires;
    END IF;
    RETURN;
END;
$$;

-- ── offsets, leases, heartbeats ────────────────────────────────────────────

-- Monotonic: the stored offset becomes GREATEST(stored, p_last_offset).
CREATE OR REPLACE FUNCTION pgtrickle.commit_offset(
    p_group       text,
    p_consumer    text,
    p_last_offset bigint
) RETURNS void
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_stored bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_group) THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;

    INSERT INTO pgtrickle.pgt_consumer_offsets AS o
        (group_name, consumer_id, committed_offset, last_committed_at, last_heartbeat_at)
    VALUES (p_group, p_consumer, p_last_offset, now(), now())
    ON CONFLICT (group_name, consumer_id) DO UPDATE
        SET committed_offset  = GREATEST(o.committed_offset, EXCLUDED.committed_offset),
            last_committed_at = now(),
            last_heartbeat_at = now()
    RETURNING o.committed_offset INTO v_stored;

    IF v_stored > p_last_offset THEN
        RAISE WARNING 'commit_offset: kept offset % of consumer "%" in group "%" (offsets never move back; % ignored; use seek_offset to rewind)',
              v_stored, p_consumer, p_group, p_last_offset;
    END IF;

    DELETE FROM pgtrickle.pgt_consumer_leases l
     WHERE l.group_name = p_group AND l.consumer_id = p_consumer;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.extend_lease(
    p_group             text,
    p_consumer          text,
    p_extension_seconds integer DEFAULT 30
) RETURNS timestamptz
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_expires timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_group) THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;

    UPDATE pgtrickle.pgt_consumer_leases l
       SET lease_expires = l.lease_expires + make_interval(secs => COALESCE(p_extension_seconds, 30))
     WHERE l.group_name = p_group AND l.consumer_id = p_consumer
    RETURNING l.lease_expires INTO v_expires;

    RETURN v_expires;   -- NULL when the consumer holds no lease
END;
$$;

-- Sets the offset to exactly p_new_offset (may move it back), creating the row.
CREATE OR REPLACE FUNCTION pgtrickle.seek_offset(
    p_group      text,
    p_consumer   text,
    p_new_offset bigint
) RETURNS void
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_group) THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;

    INSERT INTO pgtrickle.pgt_consumer_offsets AS o
        (group_name, consumer_id, committed_offset, last_heartbeat_at)
    VALUES (p_group, p_consumer, p_new_offset, now())
    ON CONFLICT (group_name, consumer_id) DO UPDATE
        SET committed_offset  = EXCLUDED.committed_offset,
            last_heartbeat_at = now();
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.consumer_heartbeat(
    p_group    text,
    p_consumer text
) RETURNS void
LANGUAGE plpgsql
STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pgtrickle.pgt_consumer_groups g WHERE g.group_name = p_group) THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;

    UPDATE pgtrickle.pgt_consumer_offsets o
       SET last_heartbeat_at = now()
     WHERE o.group_name = p_group AND o.consumer_id = p_consumer;
END;
$$;

CREATE OR REPLACE FUNCTION pgtrickle.consumer_lag(
    p_group text
) RETURNS TABLE (
    consumer_id       text,
    committed_offset  bigint,
    max_outbox_id     bigint,
    lag               bigint,
    last_heartbeat_at timestamptz,
    is_alive          boolean
)
LANGUAGE plpgsql
STRICT
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
#variable_conflict use_column
DECLARE
    v_outbox  text;
    v_max     bigint := 0;
    v_setting text;
    v_hours   integer := 24;
BEGIN
    SELECT g.outbox_name INTO v_outbox
      FROM pgtrickle.pgt_consumer_groups g
     WHERE g.group_name = p_group;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'consumer group not found: %', p_group;
    END IF;

    IF to_regclass(format('pgtrickle.%I', v_outbox)) IS NOT NULL THEN
        EXECUTE format('SELECT COALESCE(max(id), 0) FROM pgtrickle.%I', v_outbox) INTO v_max;
    END IF;

    v_setting := NULLIF(btrim(current_setting('pg_trickle.consumer_dead_threshold_hours', true)), '');
    IF v_setting ~ '^[0-9]{1,6}$' THEN
        v_hours := v_setting::integer;
    END IF;

    RETURN QUERY
        SELECT o.consumer_id,
               o.committed_offset,
               v_max,
               GREATEST(v_max - o.committed_offset, 0),
               o.last_heartbeat_at,
               (now() - o.last_heartbeat_at) < make_interval(hours => v_hours)
          FROM pgtrickle.pgt_consumer_offsets o
         WHERE o.group_name = p_group
         ORDER BY o.consumer_id;
END;
$$;

-- ── privileges ─────────────────────────────────────────────────────────────

REVOKE ALL ON pgtrickle.pgt_consumer_groups  FROM PUBLIC;
REVOKE ALL ON pgtrickle.pgt_consumer_offsets FROM PUBLIC;
REVOKE ALL ON pgtrickle.pgt_consumer_leases  FROM PUBLIC;

REVOKE ALL ON FUNCTION pgtrickle.create_consumer_group(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.drop_consumer_group(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.poll_outbox(text, text, integer, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.commit_offset(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.extend_lease(text, text, integer) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.seek_offset(text, text, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.consumer_heartbeat(text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.consumer_lag(text) FROM PUBLIC;

-- what the relay calls in group mode (and may need to create its group)
GRANT EXECUTE ON FUNCTION pgtrickle.create_consumer_group(text, text, text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.poll_outbox(text, text, integer, integer) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.commit_offset(text, text, bigint) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.extend_lease(text, text, integer) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.consumer_heartbeat(text, text) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.consumer_lag(text) TO pgtrickle_relay;
