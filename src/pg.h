/*
 * pg.h - small helpers over libpq shared by the coordinator, the workers and
 * the sources/sinks that talk to PostgreSQL.
 */
#ifndef RELAY_PG_H
#define RELAY_PG_H

#include <libpq-fe.h>
#include <stddef.h>

/* Connect (blocking, connect_timeout 10 s) with application_name set and
 * TCP keepalives (idle 10 s, interval 5 s, 3 probes) plus tcp_user_timeout
 * 30 s, so a peer lost without a reset is noticed in about 30 s; the URL
 * may override each of those. `url` is a libpq URI or conninfo string.
 * Returns the connection (caller PQfinish()es it), or NULL with err set
 * (the libpq message, which never contains the password). */
PGconn *pg_connect(const char *url, const char *application_name, char *err, size_t errlen);

/* pg_connect with the libpq "replication" parameter (e.g. "database" for
 * a logical replication connection; NULL: a normal one). */
PGconn *pg_connect_params(const char *url, const char *application_name, const char *replication,
                          char *err, size_t errlen);

/* Run a statement with text parameters. Returns the result (caller clears)
 * when its status is COMMAND_OK or TUPLES_OK; otherwise clears it, copies
 * the server's error into err and returns NULL. */
PGresult *pg_query(PGconn *c, const char *sql, int nparams, const char *const *params,
                   char *err, size_t errlen);

/* pg_query for statements without a result set: 0 or -1. */
int pg_exec(PGconn *c, const char *sql, int nparams, const char *const *params,
            char *err, size_t errlen);

/* PQexecParams (same arguments, same result) that cannot abort the caller's
 * transaction: when `c` is inside a transaction block, the statement runs
 * in a savepoint, released on success and rolled back to on failure (with
 * whatever the statement wrote), so the transaction goes on. Outside a
 * transaction it is plain PQexecParams. Used where one statement may fail
 * for its data (an inbox INSERT, a dead-letter insert) inside a transaction
 * the worker still commits, e.g. a dead-letter replay. */
PGresult *pg_exec_params_guarded(PGconn *c, const char *sql, int nparams, const char *const *values,
                                 const int *lengths, const int *formats, int result_format);

/* 1 when the connection is unusable (dropped, or in a failed state). */
int pg_broken(PGconn *c);

/* Quote an identifier ("schema"."name" style) into a malloc'd string. */
char *pg_quote_ident(PGconn *c, const char *ident);

/* The slot-drop requests of deleted CDC pipelines (sql/008_relay_status.sql):
 * when a drop of `slot` was requested, drop the slot (unless a session uses
 * it) and forget the request. Returns 1 when the request was honoured (the
 * slot dropped, or already gone), 0 when there was no request, -1 when the
 * slot is still in use or a query failed (err; the request stays). Needs
 * the REPLICATION attribute (pg_drop_replication_slot). */
int pg_honour_slot_drop(PGconn *c, const char *slot, char *err, size_t errlen);

/* Copy the first line of the connection's error message into err. */
void pg_error(PGconn *c, char *err, size_t errlen);

#endif
