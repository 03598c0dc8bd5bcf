/*
 * catalog.c - install and check the SQL catalog (SPEC section 3).
 *
 * `pgtrickle-relay init` runs every embedded the sql/ files file in name order
 * inside one transaction, serialised against concurrent inits by a
 * transaction-level advisory lock. The files are idempotent (IF NOT EXISTS,
 * CREATE OR REPLACE), so re-running is a no-op and a newer binary upgrades
 * in place. A file whose first line is "-- relay:skip-if-pg_trickle" belongs
 * to the pg_trickle-compatible layer and is skipped when the pg_trickle
 * extension is installed: its own objects are left alone.
 */
#include "catalog.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg.h"

#define SKIP_MARK "-- relay:skip-if-pg_trickle"

static int has_pg_trickle(PGconn *c, int *out, char *err, size_t errlen)
{
    PGresult *r = pg_query(c, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_trickle'", 0,
                           NULL, err, errlen);
    if (!r)
        return -1;
    *out = strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    return 0;
}

int catalog_install(PGconn *c, char *err, size_t errlen)
{
    char inner[1024];
    if (pg_exec(c, "BEGIN", 0, NULL, err, errlen) < 0)
        return -1;
    if (pg_exec(c,
                "SET LOCAL client_min_messages = warning;"
                "SELECT pg_advisory_xact_lock(hashtext('pgtrickle-relay'), hashtext('init'))",
                0, NULL, err, errlen) < 0)
        goto fail;
    int trickle = 0;
    if (has_pg_trickle(c, &trickle, err, errlen) < 0)
        goto fail;
    if (trickle)
        log_info(NULL, "pg_trickle extension found: leaving its relay and outbox objects alone");
    for (size_t i = 0; i < catalog_file_count; i++) {
        const struct catalog_file *f = &catalog_files[i];
        if (trickle && strncmp(f->sql, SKIP_MARK, strlen(SKIP_MARK)) == 0) {
            log_debug(NULL, "skipping %s (pg_trickle provides it)", f->name);
            continue;
        }
        if (pg_exec(c, f->sql, 0, NULL, inner, sizeof inner) < 0) {
            snprintf(err, errlen, "%s: %s", f->name, inner);
            goto fail;
        }
        log_debug(NULL, "applied %s", f->name);
    }
    if (pg_exec(c, "COMMIT", 0, NULL, err, errlen) < 0)
        return -1;
    return 0;
fail:
    PQclear(PQexec(c, "ROLLBACK"));
    return -1;
}

int catalog_check(PGconn *c, char *err, size_t errlen)
{
    char inner[512];
    PGresult *r = pg_query(c,
                           "SELECT to_regprocedure('pgtrickle.relay_catalog_version()') IS NOT NULL"
                           " AND to_regprocedure('pgtrickle.list_relay_configs()') IS NOT NULL",
                           0, NULL, inner, sizeof inner);
    if (!r) {
        snprintf(err, errlen, "cannot inspect the catalog: %s", inner);
        return -1;
    }
    int present = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!present) {
        snprintf(err, errlen,
                 "the pgtrickle relay catalog is not installed in this database: "
                 "run `pgtrickle-relay init --postgres-url ...` first");
        return -1;
    }
    r = pg_query(c, "SELECT pgtrickle.relay_catalog_version()", 0, NULL, inner, sizeof inner);
    if (!r) {
        snprintf(err, errlen, "cannot use the relay catalog: %s "
                 "(grant the pgtrickle_relay role to this login)", inner);
        return -1;
    }
    int version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (version < RELAY_CATALOG_VERSION) {
        snprintf(err, errlen,
                 "the relay catalog is version %d but this binary needs %d: "
                 "run `pgtrickle-relay init` to upgrade it", version, RELAY_CATALOG_VERSION);
        return -1;
    }
    return 0;
}
