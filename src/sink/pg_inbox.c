/*
 * pg_inbox.c - the inbox writer: sink "pg-inbox" (SPEC sections 7 and 8).
 *
 * It is the sink of every reverse pipeline (broker -> local inbox, through
 * the worker's own PostgreSQL connection) and, with "url", a forward sink
 * into an inbox table of a remote PostgreSQL.
 *
 * Config (pipeline "sink" object):
 *   inbox / inbox_table  inbox table name (required)
 *   schema               its schema (default: pgt_inbox_config.inbox_schema
 *                        when the inbox was made by create_inbox(), else
 *                        "pgtrickle")
 *   event_type_field     payload field that holds the event type
 *                        ("event_type"); the subject/topic/queue otherwise
 *   column_map           {"source"|"aggregate_id"|"trace_id": "<payload field>"}:
 *                        fill those columns from payload fields; by default
 *                        they come from the source (e.g. Kafka record key ->
 *                        aggregate_id)
 *   url                  remote PostgreSQL (forward use); local when absent
 *   max_retries, schedule, with_dead_letter, retention_hours
 *                        stored by set_relay_inbox; used by create_inbox, not here
 *
 * One batch is one statement, hence one transaction:
 *
 *   INSERT INTO "schema"."inbox" (event_id, event_type, source, aggregate_id,
 *                                 trace_id, payload)
 *   SELECT u.id, COALESCE(u.p ->> $7, u.subject), ...
 *     FROM unnest($1::text[], ..., $6::jsonb[]) AS u(id, subject, ..., p)
 *   ON CONFLICT (event_id) DO NOTHING
 *
 * Six array parameters carry the whole batch, so thousands of events cost one
 * round trip, and the event type and mapped columns are extracted by the
 * server (->> on a non-object is NULL), with no JSON parsing here. A body
 * that is not JSON is stored as a JSON string. Rows the conflict skipped are
 * counted as dedup_skipped. When the INSERT returns, it has committed; only
 * then are the messages CONFIRMED and the worker acks the source.
 *
 * Errors: a missing table or column, lost connection or any other failure
 * of the whole statement is transient (the worker backs off and retries,
 * nothing is acked, the error is logged once per state change). A data
 * error (SQLSTATE classes 22 and 23: invalid text, a CHECK constraint, ...)
 * belongs to some message: the batch is retried row by row to find them;
 * those are REJECTED (dead-lettered), the rest are written.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "../json_scan.h"
#include "../log.h"
#include "../pg.h"
#include "../worker.h"
#include "pg_inbox.h"
#include "sink.h"

#define ERRLEN 512

typedef struct inbox_sink {
    relay_sink base;
    char *table;            /* as configured */
    char *schema;           /* as configured, NULL: look it up */
    char *event_type_field;
    char *map_source, *map_aggregate, *map_trace; /* payload fields, NULL: from the source */
    char *url;              /* remote database, NULL: the worker's connection */
    PGconn *remote;
    char *insert_sql;       /* prepared per connection in open() */
    relay_buf arr[6];       /* array literals, reused between batches */
    relay_buf one;          /* scratch for one value */
    relay_msg **ok;         /* scratch: the messages of a batch the inbox can store */
    size_t ok_cap;
} inbox_sink;

static void ib_destroy(relay_sink *base);

static relay_sink *ib_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "inbox", "inbox_table", "schema", "event_type_field",
                                       "column_map", "url", "max_retries", "schedule",
                                       "with_dead_letter", "retention_hours", "subject_template",
                                       NULL};
    static const char *const map_keys[] = {"source", "aggregate_id", "trace_id", NULL};
    const char *table, *table2, *schema, *etf, *url, *tmpl;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "inbox", NULL, &table, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "inbox_table", NULL, &table2, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "schema", NULL, &schema, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "event_type_field", "event_type", &etf, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "url", NULL, &url, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "subject_template", NULL, &tmpl, err, errlen) < 0)
        return NULL;
    if (!table || !*table)
        table = table2;
    if (!table || !*table) {
        snprintf(err, errlen, "sink.inbox: required (the inbox table name)");
        return NULL;
    }
    const json_t *map = json_object_get(cfg, "column_map");
    if (map && !json_is_null(map)) {
        if (!json_is_object(map)) {
            snprintf(err, errlen, "sink.column_map: expected an object");
            return NULL;
        }
        if (cfg_known_keys(map, "sink.column_map", map_keys, err, errlen) < 0)
            return NULL;
    }
    const char *ms = NULL, *ma = NULL, *mt = NULL;
    if (map && json_is_object(map) &&
        (cfg_str(map, "sink.column_map", "source", NULL, &ms, err, errlen) < 0 ||
         cfg_str(map, "sink.column_map", "aggregate_id", NULL, &ma, err, errlen) < 0 ||
         cfg_str(map, "sink.column_map", "trace_id", NULL, &mt, err, errlen) < 0))
        return NULL;
    if (tmpl && subject_template_check(tmpl, err, errlen) < 0) {
        char inner[256];
        snprintf(inner, sizeof inner, "%s", err);
        snprintf(err, errlen, "sink.subject_template: %s", inner);
        return NULL;
    }
    inbox_sink *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->table = xstrdup(table);
    s->schema = schema && *schema ? xstrdup(schema) : NULL;
    s->event_type_field = xstrdup(etf);
    s->map_source = ms ? xstrdup(ms) : NULL;
    s->map_aggregate = ma ? xstrdup(ma) : NULL;
    s->map_trace = mt ? xstrdup(mt) : NULL;
    s->url = url && *url ? xstrdup(url) : NULL;
    s->base.subject_template = tmpl ? xstrdup(tmpl) : NULL;
    s->base.uses_worker_pg = !s->url;
    return &s->base;
}

static PGconn *conn(inbox_sink *s)
{
    return s->url ? s->remote : s->base.w->pg;
}

char *inbox_insert_sql(const char *qschema, const char *qtable)
{
    relay_buf q = {0};
    buf_printf(&q,
               "INSERT INTO %s.%s (event_id, event_type, source, aggregate_id, trace_id, payload)"
               " SELECT u.id, COALESCE(u.p ->> $7, u.subject),"
               " COALESCE(u.p ->> $8, u.src), COALESCE(u.p ->> $9, u.agg),"
               " COALESCE(u.p ->> $10, u.trace), u.p"
               " FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[])"
               " AS u(id, subject, src, agg, trace, p)"
               " ON CONFLICT (event_id) DO NOTHING",
               qschema, qtable);
    return buf_steal(&q);
}

/* Build the INSERT for the resolved schema. */
static int build_sql(inbox_sink *s, char *err, size_t errlen)
{
    PGconn *c = conn(s);
    char *schema = s->schema ? xstrdup(s->schema) : NULL;
    if (!schema) {
        /* An inbox made by create_inbox() records its schema. */
        const char *p[1] = {s->table};
        PGresult *r = pg_query(c,
                               "SELECT CASE WHEN to_regclass('pgtrickle.pgt_inbox_config') IS NULL"
                               " THEN NULL ELSE (SELECT inbox_schema FROM pgtrickle.pgt_inbox_config"
                               " WHERE inbox_name = $1) END",
                               1, p, err, errlen);
        if (!r) {
            PQclear(r);
            /* The relay role may not read pgt_inbox_config: use the default. */
            schema = xstrdup("pgtrickle");
        } else {
            schema = xstrdup(PQgetisnull(r, 0, 0) ? "pgtrickle" : PQgetvalue(r, 0, 0));
            PQclear(r);
        }
    }
    char *qs = pg_quote_ident(c, schema);
    char *qt = pg_quote_ident(c, s->table);
    free(schema);
    free(s->insert_sql);
    s->insert_sql = inbox_insert_sql(qs, qt);
    free(qs);
    free(qt);
    return 0;
}

static int ib_open(relay_sink *base, char *err, size_t errlen)
{
    inbox_sink *s = (inbox_sink *)base;
    if (s->url && (!s->remote || pg_broken(s->remote))) {
        if (s->remote)
            PQfinish(s->remote);
        char app[96];
        snprintf(app, sizeof app, "pgtrickle-relay %.60s (inbox)", base->w->cfg.name);
        s->remote = pg_connect(s->url, app, err, errlen);
        if (!s->remote)
            return -1;
    }
    if (!conn(s) || pg_broken(conn(s))) {
        snprintf(err, errlen, "no PostgreSQL connection");
        return -1;
    }
    return build_sql(s, err, errlen);
}

/* ---- array literals ------------------------------------------------------ */

static void arr_begin(relay_buf *a)
{
    buf_clear(a);
    buf_putc(a, '{');
}

/* Append one element (NULL -> SQL NULL) to a PostgreSQL array literal. */
static void arr_add(relay_buf *a, const char *v, size_t n)
{
    if (a->len > 1)
        buf_putc(a, ',');
    if (!v) {
        buf_puts(a, "NULL");
        return;
    }
    buf_reserve(a, n + 2);
    buf_putc(a, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] != '"' && v[i] != '\\')
            continue;
        buf_append(a, v + run, i - run);
        buf_putc(a, '\\');
        run = i;
    }
    buf_append(a, v + run, n - run);
    buf_putc(a, '"');
}

static void arr_add_str(relay_buf *a, const char *v)
{
    arr_add(a, v, v ? strlen(v) : 0);
}

/* The payload as JSON text: the body itself, or a JSON string for non-JSON. */
static void arr_add_payload(inbox_sink *s, relay_buf *a, const relay_msg *m)
{
    if (!m->payload) {
        arr_add(a, NULL, 0);
        return;
    }
    if (m->payload_is_json) {
        arr_add(a, m->payload, m->payload_len);
        return;
    }
    buf_clear(&s->one);
    buf_put_json_str(&s->one, m->payload, m->payload_len);
    arr_add(a, s->one.data, s->one.len);
}

/* The aggregate id: verbatim when it is text; otherwise (a binary Kafka
 * record key, say) PostgreSQL's bytea hex form "\x0a1b..." of its bytes. */
static void arr_add_aggregate(inbox_sink *s, relay_buf *a, const relay_msg *m)
{
    size_t n = msg_bytes(m->aggregate_id, m->aggregate_id_len);
    if (!m->aggregate_id || utf8_text_valid(m->aggregate_id, n)) {
        arr_add(a, m->aggregate_id, n);
        return;
    }
    static const char hex[] = "0123456789abcdef";
    buf_clear(&s->one);
    buf_puts(&s->one, "\\x");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)m->aggregate_id[i];
        char h[2] = {hex[c >> 4], hex[c & 15]};
        buf_append(&s->one, h, 2);
    }
    arr_add(a, s->one.data, s->one.len);
}

/* ---- what the inbox can store ---------------------------------------------- */

/* Why the inbox cannot store `m` exactly, or NULL when it can. The rule
 * (docs/operations.md): the event id, the event type's fallback (subject),
 * the trace id and the body are stored exactly or not at all -- a message
 * that does not fit is REJECTED, so the worker dead-letters its original
 * bytes and the batch moves on. Checked before the INSERT so that one
 * message never fails the statement of the whole batch. */
static const char *unstorable(const relay_msg *m, char *why, size_t whylen)
{
    size_t k = msg_bytes(m->dedup_key, m->dedup_key_len);
    if (k == 0)
        return "the dedup key (event_id) is empty";
    if (!utf8_text_valid(m->dedup_key, k))
        return "the dedup key is not valid UTF-8 or holds a NUL byte: event_id (text) cannot "
               "store it";
    if (k > RELAY_MAX_KEY_BYTES) {
        snprintf(why, whylen, "the dedup key is %zu bytes long: event_id keys are limited to %d "
                 "bytes", k, RELAY_MAX_KEY_BYTES);
        return why;
    }
    if (m->subject && !utf8_text_valid(m->subject, msg_bytes(m->subject, m->subject_len)))
        return "the subject (the event_type fallback) is not valid UTF-8 or holds a NUL byte";
    if (m->trace_id && !utf8_text_valid(m->trace_id, msg_bytes(m->trace_id, m->trace_id_len)))
        return "the trace id is not valid UTF-8 or holds a NUL byte";
    if (m->payload && m->payload_is_json < 0)
        return "the body is JSON that jsonb cannot store (a \\u0000 escape or an unpaired "
               "surrogate)";
    if (m->payload && !m->payload_is_json && !utf8_text_valid(m->payload, m->payload_len))
        return "the body is neither JSON nor UTF-8 text without NUL bytes: it cannot be stored "
               "as a JSON string";
    return NULL;
}

/* ---- publish ------------------------------------------------------------- */

/* Insert msgs[0..n). Returns rows inserted, or -1 with *sqlstate set. */
static long insert_rows(inbox_sink *s, relay_msg **msgs, size_t n, char *sqlstate,
                        char *err, size_t errlen)
{
    for (int i = 0; i < 6; i++)
        arr_begin(&s->arr[i]);
    for (size_t i = 0; i < n; i++) {
        const relay_msg *m = msgs[i];
        arr_add(&s->arr[0], m->dedup_key, msg_bytes(m->dedup_key, m->dedup_key_len));
        arr_add(&s->arr[1], m->subject, msg_bytes(m->subject, m->subject_len));
        arr_add_str(&s->arr[2], m->source_name);
        arr_add_aggregate(s, &s->arr[3], m);
        arr_add(&s->arr[4], m->trace_id, msg_bytes(m->trace_id, m->trace_id_len));
        arr_add_payload(s, &s->arr[5], m);
    }
    for (int i = 0; i < 6; i++)
        buf_putc(&s->arr[i], '}');
    const char *params[10] = {s->arr[0].data, s->arr[1].data, s->arr[2].data, s->arr[3].data,
                              s->arr[4].data, s->arr[5].data, s->event_type_field,
                              s->map_source, s->map_aggregate, s->map_trace};
    PGconn *c = conn(s);
    PGresult *r = pg_exec_params_guarded(c, s->insert_sql, 10, params, NULL, NULL, 0);
    if (r && PQresultStatus(r) == PGRES_COMMAND_OK) {
        long inserted = strtol(PQcmdTuples(r), NULL, 10);
        PQclear(r);
        return inserted;
    }
    const char *st = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    snprintf(sqlstate, 6, "%s", st ? st : "");
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (msg)
        snprintf(err, errlen, "%s", msg);
    else
        pg_error(c, err, errlen);
    PQclear(r);
    return -1;
}

/* An error that belongs to some row, not to the statement: data exceptions
 * (class 22: invalid text, out of range ...), integrity constraints (23: a
 * CHECK, a foreign key ...) and program limits (54: an index row too large,
 * a value nested too deep for jsonb). */
static int is_data_error(const char *sqlstate)
{
    return strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0 ||
           strncmp(sqlstate, "54", 2) == 0;
}

static int ib_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    inbox_sink *s = (inbox_sink *)base;
    relay_stats *st = base->w->stats;
    char sqlstate[6] = "";
    if (!conn(s) || pg_broken(conn(s))) {
        snprintf(err, errlen, "PostgreSQL connection lost");
        return -1;
    }
    /* Messages the inbox cannot store exactly are rejected up front; the
     * rest are written. */
    if (n > s->ok_cap) {
        s->ok_cap = n;
        s->ok = xrealloc(s->ok, n * sizeof *s->ok);
    }
    size_t keep = 0;
    for (size_t i = 0; i < n; i++) {
        char why[160];
        const char *bad = unstorable(msgs[i], why, sizeof why);
        if (bad)
            msg_set_error(msgs[i], MSG_REJECTED, "inbox cannot store the message: %s", bad);
        else
            s->ok[keep++] = msgs[i];
    }
    msgs = s->ok;
    n = keep;
    if (n == 0)
        return 0;
    long inserted = insert_rows(s, msgs, n, sqlstate, err, errlen);
    if (inserted >= 0) {
        for (size_t i = 0; i < n; i++)
            msgs[i]->state = MSG_CONFIRMED;
        if (st)
            atomic_fetch_add(&st->dedup_skipped, (uint64_t)(n - (size_t)inserted));
        return 0;
    }
    if (!is_data_error(sqlstate) || pg_broken(conn(s)))
        return -1; /* whole-statement failure: transient */

    /* Some message's data is unacceptable: find it row by row. */
    log_debug(base->w->cfg.name, "inbox rejected the batch (%s: %s); writing row by row",
              sqlstate, err);
    for (size_t i = 0; i < n; i++) {
        char one_err[ERRLEN];
        long k = insert_rows(s, &msgs[i], 1, sqlstate, one_err, sizeof one_err);
        if (k >= 0) {
            msgs[i]->state = MSG_CONFIRMED;
            if (st && k == 0)
                atomic_fetch_add(&st->dedup_skipped, 1);
        } else if (is_data_error(sqlstate) && !pg_broken(conn(s))) {
            msg_set_error(msgs[i], MSG_REJECTED, "inbox rejected the message: %s", one_err);
        } else {
            snprintf(err, errlen, "%s", one_err);
            for (size_t j = i; j < n; j++)
                if (msgs[j]->state == MSG_PENDING)
                    msgs[j]->state = MSG_RETRY;
            return pg_broken(conn(s)) ? -1 : 0;
        }
    }
    return 0;
}

static void ib_describe(relay_sink *base, relay_buf *out)
{
    inbox_sink *s = (inbox_sink *)base;
    buf_puts(out, "{\"inbox\":");
    buf_put_json_str(out, s->table, strlen(s->table));
    buf_printf(out, ",\"remote\":%s}", s->url ? "true" : "false");
}

static void ib_destroy(relay_sink *base)
{
    inbox_sink *s = (inbox_sink *)base;
    if (s->remote)
        PQfinish(s->remote);
    free(s->table);
    free(s->schema);
    free(s->event_type_field);
    free(s->map_source);
    free(s->map_aggregate);
    free(s->map_trace);
    free(s->url);
    free(s->insert_sql);
    for (int i = 0; i < 6; i++)
        buf_free(&s->arr[i]);
    buf_free(&s->one);
    free(s->ok);
    free(s->base.subject_template);
    free(s);
}

const relay_sink_ops relay_sink_pg_inbox_ops = {
    .type = "pg-inbox",
    .create = ib_create,
    .open = ib_open,
    .publish = ib_publish,
    .describe = ib_describe,
    .destroy = ib_destroy,
};
