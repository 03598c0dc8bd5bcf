-- 006_dead_letters.sql - dead letters keep every message's original bytes.
--
-- The rule (docs/operations.md): every message ends either confirmed by its
-- sink or in pgtrickle.relay_dlq with its original bytes, whatever those
-- bytes are. The text and jsonb columns of relay_dlq are for reading; the
-- bytea columns hold the message exactly, and a replay sends those:
--
--   dedup_key_raw    the dedup key's bytes      dedup_key  its text form (below)
--   subject_raw      the subject's bytes        subject    readable form
--   payload_raw      the body's bytes           payload    jsonb when the body is
--   payload_is_json  the body was JSON                     JSON jsonb accepts, a JSON
--                                                          string for UTF-8 text,
--                                                          else NULL
--
-- The text form of a dedup key (the dedup_key column, unique per pipeline
-- among rows not yet replayed) is the key itself when it is valid UTF-8
-- without NUL bytes, at most 512 bytes long and does not begin with
-- 'pgtrickle-key-sha256:'; otherwise it is 'pgtrickle-key-sha256:' followed
-- by the hex SHA-256 of the key's bytes. The mapping is deterministic, so a
-- message that fails again updates its row instead of adding one, and it
-- never makes two different keys equal (short of a SHA-256 collision).
-- Readable forms of other text (subject, error) are the text itself when it
-- is valid UTF-8 without NUL bytes, else PostgreSQL's escape form of the
-- bytes (encode(bytes, 'escape'): octal escapes for the others).

ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS dedup_key_raw   bytea;
ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS subject_raw     bytea;
ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS payload_raw     bytea;
ALTER TABLE pgtrickle.relay_dlq ADD COLUMN IF NOT EXISTS payload_is_json boolean;

COMMENT ON COLUMN pgtrickle.relay_dlq.dedup_key_raw IS
    'The dedup key''s original bytes (dedup_key is its text form, see 006_dead_letters.sql).';
COMMENT ON COLUMN pgtrickle.relay_dlq.payload_raw IS
    'The message body''s original bytes; a replay sends these.';

-- The bytes as text when they are valid UTF-8 without NUL bytes, else NULL.
CREATE OR REPLACE FUNCTION pgtrickle.relay_bytes_text(p bytea)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
BEGIN
    IF position('\x00'::bytea IN p) > 0 THEN
        RETURN NULL;
    END IF;
    RETURN convert_from(p, 'UTF8');
EXCEPTION WHEN character_not_in_repertoire OR untranslatable_character THEN
    RETURN NULL;
END;
$$;

-- Readable text of any bytes (see the header).
CREATE OR REPLACE FUNCTION pgtrickle.relay_bytes_display(p bytea)
RETURNS text
LANGUAGE sql
IMMUTABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$ SELECT COALESCE(pgtrickle.relay_bytes_text(p), encode(p, 'escape')) $$;

-- The text form of a dedup key (see the header).
CREATE OR REPLACE FUNCTION pgtrickle.relay_dlq_key(p bytea)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE STRICT
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v text := CASE WHEN octet_length(p) BETWEEN 1 AND 512 THEN pgtrickle.relay_bytes_text(p) END;
BEGIN
    IF v IS NOT NULL AND left(v, 21) <> 'pgtrickle-key-sha256:' THEN
        RETURN v;
    END IF;
    RETURN 'pgtrickle-key-sha256:' || encode(sha256(p), 'hex');
END;
$$;

-- What the daemon calls: everything as bytes, converted here, so a message
-- whose bytes PostgreSQL cannot hold as text is still recorded exactly.
CREATE OR REPLACE FUNCTION pgtrickle.relay_dead_letter_bytes(
    p_pipeline        text,
    p_dedup_key       bytea,
    p_subject         bytea,
    p_payload         bytea,
    p_payload_is_json boolean,
    p_error           bytea,
    p_op              text
) RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$
DECLARE
    v_id      bigint;
    v_key     text;
    v_payload jsonb;
BEGIN
    IF p_pipeline IS NULL OR p_dedup_key IS NULL THEN
        RAISE EXCEPTION 'relay_dead_letter_bytes: p_pipeline and p_dedup_key must not be NULL';
    END IF;
    v_key := pgtrickle.relay_dlq_key(p_dedup_key);
    IF p_payload IS NOT NULL THEN
        BEGIN
            IF p_payload_is_json THEN
                v_payload := convert_from(p_payload, 'UTF8')::jsonb;
            ELSE
                v_payload := to_jsonb(convert_from(p_payload, 'UTF8'));
            END IF;
        EXCEPTION WHEN OTHERS THEN
            v_payload := NULL; -- not representable: payload_raw has it
        END;
    END IF;

    INSERT INTO pgtrickle.relay_dlq AS d
           (pipeline, dedup_key, subject, payload, error, failed_at, op,
            dedup_key_raw, subject_raw, payload_raw, payload_is_json)
    VALUES (p_pipeline, v_key, pgtrickle.relay_bytes_display(p_subject), v_payload,
            COALESCE(pgtrickle.relay_bytes_display(p_error), 'unknown error'), now(), p_op,
            p_dedup_key, p_subject, p_payload, p_payload_is_json)
    ON CONFLICT (pipeline, dedup_key) WHERE replayed_at IS NULL DO UPDATE
        SET subject         = EXCLUDED.subject,
            payload         = EXCLUDED.payload,
            error           = EXCLUDED.error,
            failed_at       = now(),
            op              = EXCLUDED.op,
            dedup_key_raw   = EXCLUDED.dedup_key_raw,
            subject_raw     = EXCLUDED.subject_raw,
            payload_raw     = EXCLUDED.payload_raw,
            payload_is_json = EXCLUDED.payload_is_json
    RETURNING d.id INTO v_id;
    RETURN v_id;
END;
$$;

REVOKE ALL ON FUNCTION pgtrickle.relay_bytes_text(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_bytes_display(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_dlq_key(bytea) FROM PUBLIC;
REVOKE ALL ON FUNCTION pgtrickle.relay_dead_letter_bytes(text, bytea, bytea, bytea, boolean, bytea, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dlq_key(bytea) TO pgtrickle_relay;
GRANT EXECUTE ON FUNCTION pgtrickle.relay_dead_letter_bytes(text, bytea, bytea, bytea, boolean, bytea, text)
    TO pgtrickle_relay;

-- Catalog version 2: the daemon calls relay_dead_letter_bytes().
INSERT INTO pgtrickle.relay_catalog_meta (key, value) VALUES ('version', '2')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

CREATE OR REPLACE FUNCTION pgtrickle.relay_catalog_version()
RETURNS int
LANGUAGE sql
IMMUTABLE
SECURITY DEFINER
SET search_path = pg_catalog, pgtrickle, pg_temp
AS $$ SELECT 2 $$;
