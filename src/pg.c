/*
 * pg.c - libpq helpers.
 *
 * Connections are opened with expand_dbname so the --postgres-url can be a
 * URI or a conninfo string, plus our own application_name and a connect
 * timeout. Errors are reduced to their first line: libpq messages never
 * contain the password, and one line fits the one-line-per-state-change
 * logging rule.
 */
#include "pg.h"

#include <stdio.h>
#include <string.h>

#include "buf.h"

void pg_error(PGconn *c, char *err, size_t errlen)
{
    const char *m = c ? PQerrorMessage(c) : "no connection";
    size_t n = strcspn(m, "\n");
    snprintf(err, errlen, "%.*s", (int)n, m);
}

static void result_error(PGresult *r, PGconn *c, char *err, size_t errlen)
{
    const char *m = r ? PQresultErrorMessage(r) : NULL;
    if (!m || !*m) {
        pg_error(c, err, errlen);
        return;
    }
    /* "ERROR:  text\nDETAIL..." -> "text" */
    const char *p = strstr(m, ":  ");
    p = p ? p + 3 : m;
    size_t n = strcspn(p, "\n");
    snprintf(err, errlen, "%.*s", (int)n, p);
}

PGconn *pg_connect_params(const char *url, const char *application_name, const char *replication,
                          char *err, size_t errlen)
{
    /* Before "dbname": the URL can override them. TCP keepalives and
     * tcp_user_timeout make a connection whose peer vanished without a
     * reset (network partition, host power loss) fail in ~30 s instead of
     * the kernel's ~15 min of retransmissions: the worker stops publishing
     * (its advisory lock is as good as gone) and reconnects. */
    const char *keys[] = {"keepalives", "keepalives_idle", "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", "connect_timeout",
                          "dbname", "application_name", "replication", NULL};
    const char *vals[] = {"1", "10", "5", "3", "30000", "10", url, application_name, replication,
                          NULL};
    if (!replication)
        keys[8] = NULL;
    PGconn *c = PQconnectdbParams(keys, vals, 1);
    if (!c) {
        snprintf(err, errlen, "out of memory connecting to PostgreSQL");
        return NULL;
    }
    if (PQstatus(c) != CONNECTION_OK) {
        pg_error(c, err, errlen);
        PQfinish(c);
        return NULL;
    }
    return c;
}

PGconn *pg_connect(const char *url, const char *application_name, char *err, size_t errlen)
{
    return pg_connect_params(url, application_name, NULL, err, errlen);
}

PGresult *pg_query(PGconn *c, const char *sql, int nparams, const char *const *params, char *err,
                   size_t errlen)
{
    PGresult *r = nparams ? PQexecParams(c, sql, nparams, NULL, params, NULL, NULL, 0)
                          : PQexec(c, sql);
    ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return r;
    result_error(r, c, err, errlen);
    PQclear(r);
    return NULL;
}

int pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params, char *err,
            size_t errlen)
{
    PGresult *r = pg_query(c, sql, nparams, params, err, errlen);
    if (!r)
        return -1;
    PQclear(r);
    return 0;
}

PGresult *pg_exec_params_guarded(PGconn *c, const char *sql, int nparams, const char *const *values,
                                 const int *lengths, const int *formats, int result_format)
{
    int in_txn = PQtransactionStatus(c) == PQTRANS_INTRANS;
    if (in_txn)
        PQclear(PQexec(c, "SAVEPOINT pgtrickle_relay_statement"));
    PGresult *r = PQexecParams(c, sql, nparams, NULL, values, lengths, formats, result_format);
    if (in_txn) {
        ExecStatusType st = r ? PQresultStatus(r) : PGRES_FATAL_ERROR;
        int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
        PQclear(PQexec(c, ok ? "RELEASE SAVEPOINT pgtrickle_relay_statement"
                             : "ROLLBACK TO SAVEPOINT pgtrickle_relay_statement"));
    }
    return r;
}

int pg_broken(PGconn *c)
{
    if (!c || PQstatus(c) != CONNECTION_OK)
        return 1;
    return 0;
}

char *pg_quote_ident(PGconn *c, const char *ident)
{
    char *q = PQescapeIdentifier(c, ident, strlen(ident));
    if (!q)
        return NULL;
    char *r = xstrdup(q);
    PQfreemem(q);
    return r;
}

int pg_honour_slot_drop(PGconn *c, const char *slot, char *err, size_t errlen)
{
    const char *p[1] = {slot};
    PGresult *r = pg_query(c,
                           "SELECT (SELECT s.active FROM pg_catalog.pg_replication_slots s"
                           "         WHERE s.slot_name = d.slot)"
                           " FROM pgtrickle.relay_pending_slot_drops() d WHERE d.slot = $1",
                           1, p, err, errlen);
    if (!r)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    int exists = !PQgetisnull(r, 0, 0);
    int active = exists && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (active) {
        snprintf(err, errlen, "replication slot %s of a deleted pipeline is still in use", slot);
        return -1;
    }
    if (exists && pg_exec(c, "SELECT pg_catalog.pg_drop_replication_slot($1)", 1, p, err,
                          errlen) < 0)
        return -1;
    return pg_exec(c, "SELECT pgtrickle.relay_slot_dropped($1)", 1, p, err, errlen) < 0 ? -1 : 1;
}
