-- 007_roles.sql - two roles: the daemon's, which cannot reconfigure it, and
-- the pipeline managers'.
--
--   pgtrickle_relay        the daemon's login is granted this role. It may
--                          EXECUTE what the daemon needs at run time (read
--                          configs, offsets, dead letters, report status) and
--                          no setter: a stolen or shared runtime login cannot
--                          point a pipeline at a file or a URL of its choice.
--   pgtrickle_relay_admin  whoever manages pipelines: set_relay_outbox,
--                          set_relay_inbox, set_relay_cdc, enable_relay,
--                          disable_relay, delete_relay, relay_dlq_replay, and
--                          the reads (get_relay_config, list_relay_configs,
--                          relay_dlq_list, the relay_status view).
-- Neither role can read or write the config tables directly.
--
-- Upgrading from catalog version 2 or older, where pgtrickle_relay could
-- also call the setters: init revokes that and says so with a WARNING;
-- grant pgtrickle_relay_admin to the logins that manage pipelines
-- (docs/sql-api.md, "Roles"). Runs whether or not pg_trickle is installed
-- (its functions, same names, are granted the same way when they exist).

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgtrickle_relay') THEN
        CREATE ROLE pgtrickle_relay NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'pgtrickle_relay_admin') THEN
        CREATE ROLE pgtrickle_relay_admin NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;  -- created concurrently elsewhere
END;
$$;

GRANT USAGE ON SCHEMA pgtrickle TO pgtrickle_relay, pgtrickle_relay_admin;

DO $$
DECLARE
    f       text;
    fn      regprocedure;
    revoked text[] := '{}';
BEGIN
    -- Setters: the admin role only.
    FOREACH f IN ARRAY ARRAY[
        'pgtrickle.set_relay_outbox(text,text,text,jsonb,integer,boolean)',
        'pgtrickle.set_relay_outbox(text,jsonb)',
        'pgtrickle.set_relay_inbox(text,text,jsonb,integer,text,boolean,integer,boolean)',
        'pgtrickle.set_relay_inbox(text,jsonb)',
        'pgtrickle.set_relay_cdc(text,jsonb)',
        'pgtrickle.enable_relay(text)',
        'pgtrickle.disable_relay(text)',
        'pgtrickle.delete_relay(text)',
        'pgtrickle.relay_dlq_replay(text,bigint[])'
    ] LOOP
        fn := to_regprocedure(f);
        CONTINUE WHEN fn IS NULL;
        IF has_function_privilege('pgtrickle_relay', fn, 'EXECUTE') THEN
            revoked := revoked || fn::text;
        END IF;
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC, pgtrickle_relay', fn);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgtrickle_relay_admin', fn);
    END LOOP;
    -- Reads: both roles.
    FOREACH f IN ARRAY ARRAY[
        'pgtrickle.get_relay_config(text)',
        'pgtrickle.list_relay_configs()',
        'pgtrickle.relay_dlq_list(text,integer)',
        'pgtrickle.relay_catalog_version()'
    ] LOOP
        fn := to_regprocedure(f);
        CONTINUE WHEN fn IS NULL;
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgtrickle_relay, pgtrickle_relay_admin', fn);
    END LOOP;
    IF cardinality(revoked) > 0 THEN
        RAISE WARNING 'pgtrickle-relay: the runtime role pgtrickle_relay may no longer call %; '
                      'grant pgtrickle_relay_admin to the logins that manage pipelines '
                      '(GRANT pgtrickle_relay_admin TO <login>)', array_to_string(revoked, ', ');
    END IF;
END;
$$;
