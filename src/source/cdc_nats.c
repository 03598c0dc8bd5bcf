/*
 * cdc_nats.c - the NATS-specific parts of the cdc source (seed 003's
 * capabilities), active only when the pipeline's sink is NATS:
 *
 *   schemas    every published (and selected) table's schema is put into
 *              the JetStream KV bucket "schemas" (created when missing,
 *              history 10), key = the table name ("schema.name" outside
 *              "public"), at start and whenever a Relation message shows a
 *              new or changed table. Identical schemas are not put twice.
 *   snapshots  a NATS request (or plain publish) on snapshot.request.{table}
 *              is answered at once with an acknowledgement; the table is
 *              then read in a REPEATABLE READ, READ ONLY transaction with
 *              keyset pagination on its primary key (never OFFSET) and
 *              published to JetStream as chunks on
 *              init.snap.{table}.{snapshot_id}.{chunk} followed by metadata
 *              on init.meta.{table}, every message awaited for its PubAck.
 *              snapshot_id = snap-{unix seconds}-{nonce}-{n}: the nonce is
 *              random per source instance, so a relay restarted (or a
 *              pipeline reloaded) within the same second never reuses an
 *              id, whose chunks' Nats-Msg-Id JetStream would then drop as
 *              duplicates of the earlier snapshot's.
 *              Requests are served one at a time in arrival order; a request
 *              for a table whose snapshot is queued but not started gets
 *              that snapshot's id (so a burst of requests costs one read).
 *
 * Threads.  All of it runs on a thread of its own with its own PostgreSQL
 * connection and its own NATS connection (the connection keys of the
 * pipeline's sink object, parsed by client/nats.c). The replication thread
 * only queues work (cdc_ext_open: "all schemas"; cdc_ext_relation: one
 * table) under a mutex and signals; it never waits for PostgreSQL or NATS
 * here, and nothing in this file touches the slot or acknowledges an LSN.
 * nats.c's subscription callback validates the table against the list of
 * published tables the thread last read, replies, and queues the request.
 *
 * Failures are retried every second (NATS or PostgreSQL unreachable: the
 * pending schema puts stay queued); a snapshot that fails midway is logged
 * and abandoned without metadata, so a consumer that waits for
 * init.meta.{table} never sees a partial snapshot as complete.
 *
 * Streams.  Chunks and metadata go to the stream source.snapshot_stream
 * (default "INIT", subjects "init.>", file storage, 7 days), created when
 * missing; when another stream already covers init.> that one is used.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <nats/nats.h>

#include "../config.h"
#include "../log.h"
#include "../client/nats.h"
#include "../pg.h"
#include "../stats.h"
#include "../worker.h"
#include "cdc_ext.h"
#include "pgoutput.h"

#define EXT_ERRLEN 512
#define SCHEMA_BUCKET "schemas"
#define REQUEST_PREFIX "snapshot.request."
#define DEFAULT_CHUNK_ROWS 10000
#define DEFAULT_STREAM "INIT"
#define RETRY_MS 1000
#define PUBACK_WAIT_MS 10000

typedef struct snap_req {
    char *schema, *name, *ident;
    char snapshot_id[64];
} snap_req;

typedef struct sent_schema {
    char *key;
    char *body; /* the schema without its timestamp */
} sent_schema;

struct cdc_ext {
    cdc_source *s;
    char *pipeline;
    relay_nats_conn conn;
    int64_t chunk_rows;
    char *stream;
    char *pg_url;

    /* owned by the thread */
    PGconn *pg;
    jsCtx *js;
    kvStore *kv;
    natsConnection *js_nc; /* the connection js, kv and sub were made on */
    int stream_ready;
    natsSubscription *sub;
    sent_schema *sent;
    size_t nsent;
    int warned;

    pthread_t thread;
    int started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;
    int all_dirty;
    char **dirty; /* tables whose schema is to be put, as "schema.name" */
    size_t ndirty;
    snap_req *reqs;
    size_t nreqs;
    char **known; /* published tables as schema.name, from the last listing */
    size_t nknown;
    uint64_t seq;
    uint32_t nonce; /* random, part of every snapshot_id */
};

/* ---- hooks called by cdc.c ---------------------------------------------------- */

int cdc_ext_create(cdc_source *s, char *err, size_t errlen)
{
    const json_t *cfg = NULL, *sink = NULL;
    relay_worker *w = s->base.w;
    if (w) {
        cfg = w->cfg.source;
        sink = w->cfg.sink;
    }
    int64_t chunk = DEFAULT_CHUNK_ROWS;
    const char *stream = DEFAULT_STREAM;
    if (cfg && (cfg_int(cfg, "source", "snapshot_chunk_rows", DEFAULT_CHUNK_ROWS, 1, 1000000, &chunk,
                        err, errlen) < 0 ||
                cfg_str(cfg, "source", "snapshot_stream", DEFAULT_STREAM, &stream, err, errlen) < 0))
        return -1;
    if (!*stream || strpbrk(stream, " .*>\t\r\n")) {
        snprintf(err, errlen, "source.snapshot_stream: \"%s\" is not a valid JetStream stream name",
                 stream);
        return -1;
    }
    const json_t *type = sink ? json_object_get(sink, "type") : NULL;
    if (!type || !json_is_string(type) || strcmp(json_string_value(type), "nats") != 0)
        return 0; /* not a NATS sink: schemas and on-demand snapshots are off */
    cdc_ext *x = xcalloc(1, sizeof *x);
    if (nats_conn_parse(&x->conn, sink, "sink", w->cfg.name, err, errlen) < 0) {
        nats_conn_free(&x->conn);
        free(x);
        return -1;
    }
    x->s = s;
    if (getrandom(&x->nonce, sizeof x->nonce, 0) != (ssize_t)sizeof x->nonce)
        x->nonce = (uint32_t)now_wall_ms() ^ (uint32_t)getpid();
    x->pipeline = xstrdup(w->cfg.name ? w->cfg.name : "");
    x->chunk_rows = chunk;
    x->stream = xstrdup(stream);
    pthread_mutex_init(&x->mu, NULL);
    pthread_cond_init(&x->cond, NULL);
    s->ext = x;
    return 0;
}

static void *ext_thread(void *arg);

int cdc_ext_open(cdc_source *s, char *err, size_t errlen)
{
    cdc_ext *x = s->ext;
    if (!x)
        return 0;
    pthread_mutex_lock(&x->mu);
    x->all_dirty = 1;
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->mu);
    if (x->started)
        return 0;
    x->pg_url = xstrdup(s->base.w->opts->postgres_url);
    if (pthread_create(&x->thread, NULL, ext_thread, x) != 0) {
        snprintf(err, errlen, "cannot start the cdc schema/snapshot thread");
        return -1;
    }
    x->started = 1;
    return 0;
}

void cdc_ext_relation(cdc_source *s, const pgo_rel *rel)
{
    cdc_ext *x = s->ext;
    if (!x)
        return;
    size_t l = strlen(rel->schema) + strlen(rel->name) + 2;
    char *q = malloc(l);
    if (!q)
        return;
    snprintf(q, l, "%s.%s", rel->schema, rel->name);
    pthread_mutex_lock(&x->mu);
    for (size_t i = 0; i < x->ndirty; i++) {
        if (strcmp(x->dirty[i], q) == 0) {
            pthread_mutex_unlock(&x->mu);
            free(q);
            return;
        }
    }
    char **d = realloc(x->dirty, (x->ndirty + 1) * sizeof *d);
    if (!d) {
        pthread_mutex_unlock(&x->mu);
        free(q);
        return;
    }
    x->dirty = d;
    x->dirty[x->ndirty++] = q;
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->mu);
}

int cdc_ext_poll(cdc_source *s, char *err, size_t errlen)
{
    /* The work runs on the extension's own thread; nothing to do here. */
    (void)s;
    (void)err;
    (void)errlen;
    return 0;
}

static void free_req(snap_req *r)
{
    free(r->schema);
    free(r->name);
    free(r->ident);
}

void cdc_ext_destroy(cdc_source *s)
{
    cdc_ext *x = s->ext;
    if (!x)
        return;
    if (x->started) {
        pthread_mutex_lock(&x->mu);
        x->stop = 1;
        pthread_cond_signal(&x->cond);
        pthread_mutex_unlock(&x->mu);
        pthread_join(x->thread, NULL);
    }
    if (x->sub)
        natsSubscription_Unsubscribe(x->sub);
    if (x->kv)
        kvStore_Destroy(x->kv);
    if (x->js)
        jsCtx_Destroy(x->js);
    nats_conn_close(&x->conn);
    if (x->sub)
        natsSubscription_Destroy(x->sub);
    nats_conn_free(&x->conn);
    if (x->pg)
        PQfinish(x->pg);
    for (size_t i = 0; i < x->nsent; i++) {
        free(x->sent[i].key);
        free(x->sent[i].body);
    }
    free(x->sent);
    for (size_t i = 0; i < x->ndirty; i++)
        free(x->dirty[i]);
    free(x->dirty);
    for (size_t i = 0; i < x->nreqs; i++)
        free_req(&x->reqs[i]);
    free(x->reqs);
    for (size_t i = 0; i < x->nknown; i++)
        free(x->known[i]);
    free(x->known);
    pthread_mutex_destroy(&x->mu);
    pthread_cond_destroy(&x->cond);
    free(x->pipeline);
    free(x->stream);
    free(x->pg_url);
    free(x);
    s->ext = NULL;
}

/* ---- helpers -------------------------------------------------------------------- */

/* The table's name for consumers: "name" in schema public, else "schema.name". */
static char *table_ident(const char *schema, const char *name)
{
    if (strcmp(schema, "public") == 0)
        return xstrdup(name);
    size_t l = strlen(schema) + strlen(name) + 2;
    char *p = xcalloc(1, l);
    snprintf(p, l, "%s.%s", schema, name);
    return p;
}

/* One NATS token: bytes other than [A-Za-z0-9_-] as %XX (as subject_render). */
static void put_token(relay_buf *b, const char *v)
{
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '_' || *p == '-')
            buf_putc(b, (char)*p);
        else
            buf_printf(b, "%%%02X", *p);
    }
}

static void wait_ms(cdc_ext *x, int64_t ms)
{
    struct timespec ts = deadline_after_ms(CLOCK_REALTIME, ms);
    pthread_mutex_lock(&x->mu);
    if (!x->stop && !x->all_dirty && !x->ndirty && !x->nreqs)
        pthread_cond_timedwait(&x->cond, &x->mu, &ts);
    pthread_mutex_unlock(&x->mu);
}

static int stopping(cdc_ext *x)
{
    pthread_mutex_lock(&x->mu);
    int st = x->stop;
    pthread_mutex_unlock(&x->mu);
    return st;
}

/* Reply to a snapshot request. */
static void reply(cdc_ext *x, natsMsg *m, const char *status, const char *ident,
                  const char *snapshot_id, const char *error)
{
    const char *to = natsMsg_GetReply(m);
    if (!to || !*to)
        return;
    relay_buf b = {0};
    buf_printf(&b, "{\"status\":\"%s\",\"table\":", status);
    buf_put_json_str(&b, ident, strlen(ident));
    if (snapshot_id)
        buf_printf(&b, ",\"snapshot_id\":\"%s\",\"chunk_rows\":%" PRId64, snapshot_id, x->chunk_rows);
    if (error) {
        buf_puts(&b, ",\"error\":");
        buf_put_json_str(&b, error, strlen(error));
    }
    buf_putc(&b, '}');
    natsConnection_Publish(x->conn.nc, to, b.data, (int)b.len);
    buf_free(&b);
}

/* nats.c's thread: snapshot.request.{table} ({table} = "name" or "schema.name"). */
static void on_request(natsConnection *nc, natsSubscription *sub, natsMsg *m, void *closure)
{
    (void)nc;
    (void)sub;
    cdc_ext *x = closure;
    const char *subj = natsMsg_GetSubject(m);
    const char *ident = subj + strlen(REQUEST_PREFIX);
    char *schema = NULL, *name = NULL;
    pthread_mutex_lock(&x->mu);
    /* "schema.name" exactly; "name": public.name, else a unique name in
     * another schema. */
    const char *found = NULL;
    int others = 0;
    for (size_t i = 0; i < x->nknown; i++) {
        const char *k = x->known[i];
        const char *dot = strchr(k, '.');
        if (strchr(ident, '.')) {
            if (strcmp(k, ident) == 0)
                found = k;
        } else if (strcmp(dot + 1, ident) == 0) {
            if (strncmp(k, "public.", 7) == 0)
                found = k;
            else if (!others++ && !found)
                found = k;
        }
    }
    if (found && !strchr(ident, '.') && strncmp(found, "public.", 7) != 0 && others > 1)
        found = NULL; /* ambiguous */
    if (found) {
        const char *dot = strchr(found, '.');
        schema = xcalloc(1, (size_t)(dot - found) + 1);
        memcpy(schema, found, (size_t)(dot - found));
        name = xstrdup(dot + 1);
    }
    if (!schema) {
        pthread_mutex_unlock(&x->mu);
        log_warn(x->pipeline, "snapshot request for \"%s\": not a table of publication %s",
                 ident, x->s->publication);
        reply(x, m, "error", ident, NULL, "not a published table of this pipeline");
        natsMsg_Destroy(m);
        return;
    }
    /* A snapshot of this table that has not started yet serves this request too. */
    for (size_t i = 0; i < x->nreqs; i++) {
        if (strcmp(x->reqs[i].schema, schema) == 0 && strcmp(x->reqs[i].name, name) == 0) {
            char id[64], ri[256];
            snprintf(id, sizeof id, "%s", x->reqs[i].snapshot_id);
            snprintf(ri, sizeof ri, "%s", x->reqs[i].ident);
            pthread_mutex_unlock(&x->mu);
            free(schema);
            free(name);
            reply(x, m, "accepted", ri, id, NULL);
            natsMsg_Destroy(m);
            return;
        }
    }
    snap_req *r = realloc(x->reqs, (x->nreqs + 1) * sizeof *r);
    if (!r) {
        pthread_mutex_unlock(&x->mu);
        free(schema);
        free(name);
        reply(x, m, "error", ident, NULL, "out of memory");
        natsMsg_Destroy(m);
        return;
    }
    x->reqs = r;
    r = &x->reqs[x->nreqs++];
    r->schema = schema;
    r->name = name;
    r->ident = table_ident(schema, name);
    snprintf(r->snapshot_id, sizeof r->snapshot_id, "snap-%" PRId64 "-%08" PRIx32 "-%" PRIu64,
             now_wall_ms() / 1000, x->nonce, ++x->seq);
    char id[64], ri[256];
    snprintf(id, sizeof id, "%s", r->snapshot_id);
    snprintf(ri, sizeof ri, "%s", r->ident);
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->mu);
    log_info(x->pipeline, "snapshot %s of %s requested", id, ri);
    reply(x, m, "accepted", ri, id, NULL);
    natsMsg_Destroy(m);
}

/* ---- connections ------------------------------------------------------------------ */

static int ensure_pg(cdc_ext *x, char *err, size_t errlen)
{
    if (x->pg && !pg_broken(x->pg))
        return 0;
    if (x->pg)
        PQfinish(x->pg);
    x->pg = pg_connect(x->pg_url, "pgtrickle-relay cdc schemas/snapshots", err, errlen);
    return x->pg ? 0 : -1;
}

static int ensure_stream(cdc_ext *x, char *err, size_t errlen)
{
    if (x->stream_ready)
        return 0;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, x->js, x->stream, NULL, &jerr);
    if (st == NATS_OK) {
        jsStreamInfo_Destroy(si);
        x->stream_ready = 1;
        return 0;
    }
    if (st != NATS_NOT_FOUND) {
        char why[300];
        nats_status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "source.snapshot_stream: stream \"%s\": %s", x->stream, why);
        return -1;
    }
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    const char *subjects[1] = {"init.>"};
    sc.Name = x->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.MaxAge = 7LL * 24 * 3600 * 1000000000LL;
    jerr = 0;
    st = js_AddStream(&si, x->js, &sc, NULL, &jerr);
    if (st == NATS_OK) {
        jsStreamInfo_Destroy(si);
        log_info(x->pipeline, "created JetStream stream %s (subjects init.>) for snapshots",
                 x->stream);
    } else if (jerr == JSStreamSubjectOverlapErr || jerr == JSStreamNameExistErr) {
        log_info(x->pipeline, "snapshots go to the existing stream covering init.> (not %s)",
                 x->stream);
    } else {
        char why[300];
        nats_status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "source.snapshot_stream: cannot create stream \"%s\" (subjects "
                 "init.>): %s", x->stream, why);
        return -1;
    }
    x->stream_ready = 1;
    return 0;
}

static int ensure_nats(cdc_ext *x, char *err, size_t errlen)
{
    if (nats_conn_open(&x->conn, err, errlen) < 0)
        return -1;
    natsStatus st;
    if (x->js_nc && x->js_nc != x->conn.nc) {
        /* nats_conn_open rebuilt a closed connection: start over on it */
        if (x->sub)
            natsSubscription_Destroy(x->sub);
        if (x->kv)
            kvStore_Destroy(x->kv);
        if (x->js)
            jsCtx_Destroy(x->js);
        x->sub = NULL;
        x->kv = NULL;
        x->js = NULL;
        x->stream_ready = 0;
    }
    x->js_nc = x->conn.nc;
    if (!x->js) {
        jsOptions o;
        jsOptions_Init(&o);
        o.Wait = PUBACK_WAIT_MS;
        if ((st = natsConnection_JetStream(&x->js, x->conn.nc, &o)) != NATS_OK) {
            nats_status_text(st, 0, err, errlen);
            return -1;
        }
    }
    if (!x->kv) {
        jsErrCode jerr = 0;
        st = js_KeyValue(&x->kv, x->js, SCHEMA_BUCKET);
        if (st == NATS_NOT_FOUND) {
            kvConfig kc;
            kvConfig_Init(&kc);
            kc.Bucket = SCHEMA_BUCKET;
            kc.History = 10;
            st = js_CreateKeyValue(&x->kv, x->js, &kc);
            if (st == NATS_OK)
                log_info(x->pipeline, "created the KV bucket %s", SCHEMA_BUCKET);
        }
        if (st != NATS_OK) {
            char why[300];
            nats_status_text(st, jerr, why, sizeof why);
            snprintf(err, errlen, "KV bucket %s: %s", SCHEMA_BUCKET, why);
            x->kv = NULL;
            return -1;
        }
    }
    if (ensure_stream(x, err, errlen) < 0)
        return -1;
    if (!x->sub) {
        st = natsConnection_Subscribe(&x->sub, x->conn.nc, REQUEST_PREFIX ">", on_request, x);
        if (st != NATS_OK) {
            x->sub = NULL;
            nats_status_text(st, 0, err, errlen);
            return -1;
        }
        natsConnection_Flush(x->conn.nc);
    }
    return 0;
}

/* ---- schemas ------------------------------------------------------------------------- */

/* Refresh the list of published, selected tables (for request validation).
 * Returns the result (schema, name, oid), or NULL with err. */
static PGresult *list_tables(cdc_ext *x, char *err, size_t errlen)
{
    const char *p[1] = {x->s->publication};
    PGresult *r = pg_query(x->pg,
                           "SELECT pt.schemaname, pt.tablename, c.oid"
                           "  FROM pg_catalog.pg_publication_tables pt"
                           "  JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname"
                           "  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid"
                           "   AND c.relname = pt.tablename"
                           " WHERE pt.pubname = $1 ORDER BY 1, 2",
                           1, p, err, errlen);
    if (!r)
        return NULL;
    size_t n = 0;
    char **known = xcalloc((size_t)PQntuples(r) + 1, sizeof *known);
    for (int i = 0; i < PQntuples(r); i++) {
        if (!cdc_table_selected(x->s, PQgetvalue(r, i, 0), PQgetvalue(r, i, 1)))
            continue;
        size_t l = strlen(PQgetvalue(r, i, 0)) + strlen(PQgetvalue(r, i, 1)) + 2;
        known[n] = xcalloc(1, l);
        snprintf(known[n], l, "%s.%s", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
        n++;
    }
    pthread_mutex_lock(&x->mu);
    for (size_t i = 0; i < x->nknown; i++)
        free(x->known[i]);
    free(x->known);
    x->known = known;
    x->nknown = n;
    pthread_mutex_unlock(&x->mu);
    return r;
}

/* Put the schema of table `oid` (schema.name) into the KV bucket unless the
 * same schema was put last time. Returns 0, or -1 with err. */
static int put_schema(cdc_ext *x, const char *oid, const char *schema, const char *name,
                      char *err, size_t errlen)
{
    const char *p[1] = {oid};
    PGresult *r = pg_query(x->pg,
                           "SELECT a.attname, a.attnum, format_type(a.atttypid, a.atttypmod),"
                           "       NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid),"
                           "       coalesce(a.attnum = ANY (i.indkey), false)"
                           "  FROM pg_catalog.pg_attribute a"
                           "  LEFT JOIN pg_catalog.pg_attrdef d"
                           "         ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                           "  LEFT JOIN pg_catalog.pg_index i"
                           "         ON i.indrelid = a.attrelid AND i.indisprimary"
                           " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped"
                           " ORDER BY a.attnum",
                           1, p, err, errlen);
    if (!r)
        return -1;
    relay_buf body = {0}, pk = {0};
    buf_puts(&body, "\"columns\":[");
    for (int i = 0; i < PQntuples(r); i++) {
        const char *nm = PQgetvalue(r, i, 0);
        buf_puts(&body, i ? ",{\"name\":" : "{\"name\":");
        buf_put_json_str(&body, nm, strlen(nm));
        buf_printf(&body, ",\"position\":%s,\"data_type\":", PQgetvalue(r, i, 1));
        buf_put_json_str(&body, PQgetvalue(r, i, 2), strlen(PQgetvalue(r, i, 2)));
        buf_printf(&body, ",\"is_nullable\":%s,\"column_default\":",
                   strcmp(PQgetvalue(r, i, 3), "t") == 0 ? "true" : "false");
        if (PQgetisnull(r, i, 4))
            buf_puts(&body, "null");
        else
            buf_put_json_str(&body, PQgetvalue(r, i, 4), strlen(PQgetvalue(r, i, 4)));
        buf_putc(&body, '}');
        if (strcmp(PQgetvalue(r, i, 5), "t") == 0) {
            if (pk.len)
                buf_putc(&pk, ',');
            buf_put_json_str(&pk, nm, strlen(nm));
        }
    }
    PQclear(r);
    buf_printf(&body, "],\"primary_key\":[%s]", pk.data ? pk.data : "");
    buf_free(&pk);
    char *key = table_ident(schema, name);
    sent_schema *prev = NULL;
    for (size_t i = 0; i < x->nsent; i++)
        if (strcmp(x->sent[i].key, key) == 0)
            prev = &x->sent[i];
    if (prev && strcmp(prev->body, body.data) == 0) {
        free(key);
        buf_free(&body);
        return 0;
    }
    relay_buf v = {0};
    buf_puts(&v, "{\"table\":");
    buf_put_json_str(&v, name, strlen(name));
    buf_puts(&v, ",\"schema\":");
    char full[256];
    snprintf(full, sizeof full, "%s.%s", schema, name);
    buf_put_json_str(&v, full, strlen(full));
    buf_printf(&v, ",\"timestamp\":%" PRId64 ",%s}", now_wall_ms() / 1000, body.data);
    uint64_t rev = 0;
    natsStatus st = kvStore_Put(&rev, x->kv, key, v.data, (int)v.len);
    buf_free(&v);
    if (st != NATS_OK) {
        char why[300];
        nats_status_text(st, 0, why, sizeof why);
        snprintf(err, errlen, "KV %s put %s: %s", SCHEMA_BUCKET, key, why);
        free(key);
        buf_free(&body);
        return -1;
    }
    log_info(x->pipeline, "schema of %s put into KV bucket %s (revision %" PRIu64 ")", full,
             SCHEMA_BUCKET, rev);
    if (!prev) {
        sent_schema *n = realloc(x->sent, (x->nsent + 1) * sizeof *n);
        if (!n) {
            free(key);
            buf_free(&body);
            return 0;
        }
        x->sent = n;
        prev = &x->sent[x->nsent++];
        prev->key = key;
        prev->body = NULL;
    } else {
        free(key);
    }
    free(prev->body);
    prev->body = body.data; /* ownership moves */
    return 0;
}

/* Put every dirty schema. Returns 0, or -1 with err (the work stays queued). */
static int do_schemas(cdc_ext *x, char *err, size_t errlen)
{
    pthread_mutex_lock(&x->mu);
    int all = x->all_dirty;
    char **dirty = x->dirty;
    size_t ndirty = x->ndirty;
    x->all_dirty = 0;
    x->dirty = NULL;
    x->ndirty = 0;
    pthread_mutex_unlock(&x->mu);
    int rc = 0;
    PGresult *r = NULL;
    if (all || ndirty || !x->nknown)
        r = list_tables(x, err, errlen);
    if (!r && (all || ndirty))
        rc = -1;
    for (int i = 0; r && rc == 0 && i < PQntuples(r); i++) {
        const char *sc = PQgetvalue(r, i, 0), *nm = PQgetvalue(r, i, 1);
        if (!cdc_table_selected(x->s, sc, nm))
            continue;
        int want = all;
        for (size_t d = 0; !want && d < ndirty; d++) {
            size_t sl = strlen(sc);
            want = strncmp(dirty[d], sc, sl) == 0 && dirty[d][sl] == '.' &&
                   strcmp(dirty[d] + sl + 1, nm) == 0;
        }
        if (want && put_schema(x, PQgetvalue(r, i, 2), sc, nm, err, errlen) < 0)
            rc = -1;
    }
    PQclear(r);
    if (rc < 0) {
        /* put the work back */
        pthread_mutex_lock(&x->mu);
        x->all_dirty |= all;
        for (size_t d = 0; d < ndirty; d++) {
            char **nd = realloc(x->dirty, (x->ndirty + 1) * sizeof *nd);
            if (!nd) {
                free(dirty[d]);
                continue;
            }
            x->dirty = nd;
            x->dirty[x->ndirty++] = dirty[d];
        }
        pthread_mutex_unlock(&x->mu);
        free(dirty);
        return -1;
    }
    for (size_t d = 0; d < ndirty; d++)
        free(dirty[d]);
    free(dirty);
    return 0;
}

/* ---- on-demand snapshots ------------------------------------------------------------------ */

static int publish_js(cdc_ext *x, const char *subject, const char *msg_id, const char *data,
                      size_t len, char *err, size_t errlen)
{
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MsgId = msg_id;
    po.MaxWait = PUBACK_WAIT_MS;
    jsPubAck *pa = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_Publish(&pa, x->js, subject, data, (int)len, &po, &jerr);
    if (pa)
        jsPubAck_Destroy(pa);
    if (st != NATS_OK) {
        char why[300];
        nats_status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "publish %s: %s", subject, why);
        return -1;
    }
    return 0;
}

typedef struct chunker {
    cdc_ext *x;
    const snap_req *q;
    relay_buf subj_prefix; /* "init.snap.{table}.{snapshot_id}." */
    relay_buf head;        /* chunk JSON up to the chunk number */
    relay_buf rows;
    char lsn[24];
    int nrows;
    uint64_t chunk;
    uint64_t total;
    size_t max_bytes;
} chunker;

static int flush_chunk(chunker *c, char *err, size_t errlen)
{
    if (c->nrows == 0)
        return 0;
    relay_buf m = {0}, subj = {0};
    char id[96];
    buf_append(&m, c->head.data, c->head.len);
    buf_printf(&m, ",\"chunk\":%" PRIu64 ",\"lsn\":\"%s\",\"rows\":%d,\"data\":[", c->chunk,
               c->lsn, c->nrows);
    buf_append(&m, c->rows.data, c->rows.len);
    buf_puts(&m, "]}");
    buf_append(&subj, c->subj_prefix.data, c->subj_prefix.len);
    buf_printf(&subj, "%" PRIu64, c->chunk);
    snprintf(id, sizeof id, "%s:%" PRIu64, c->q->snapshot_id, c->chunk);
    int rc = publish_js(c->x, subj.data, id, m.data, m.len, err, errlen);
    buf_free(&m);
    buf_free(&subj);
    if (rc < 0)
        return -1;
    c->chunk++;
    c->total += (uint64_t)c->nrows;
    c->nrows = 0;
    buf_clear(&c->rows);
    return 0;
}

/* Read and publish one requested table. Returns 0, or -1 with err. */
static int run_snapshot(cdc_ext *x, const snap_req *q, char *err, size_t errlen)
{
    PGconn *pg = x->pg;
    const char *p[3] = {q->schema, q->name, x->s->publication};
    if (pg_exec(pg, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL, err, errlen) < 0)
        return -1;
    /* The first statement takes the snapshot; the LSN is read after it, so
     * every transaction the snapshot sees committed before `lsn`. */
    PGresult *r = pg_query(pg,
                           "SELECT pg_catalog.pg_current_wal_lsn()::text, c.oid, c.relkind,"
                           "       coalesce(pt.rowfilter, '')"
                           "  FROM pg_catalog.pg_class c"
                           "  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                           "  JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = $3"
                           "   AND pt.schemaname = n.nspname AND pt.tablename = c.relname"
                           " WHERE n.nspname = $1 AND c.relname = $2",
                           3, p, err, errlen);
    if (!r)
        goto fail;
    if (PQntuples(r) != 1) {
        PQclear(r);
        snprintf(err, errlen, "%s.%s is no longer a table of publication %s", q->schema, q->name,
                 x->s->publication);
        goto fail;
    }
    chunker c = {.x = x, .q = q};
    snprintf(c.lsn, sizeof c.lsn, "%s", PQgetvalue(r, 0, 0));
    char oid[16];
    snprintf(oid, sizeof oid, "%s", PQgetvalue(r, 0, 1));
    int partitioned = PQgetvalue(r, 0, 2)[0] == 'p';
    char *filter = xstrdup(PQgetvalue(r, 0, 3));
    PQclear(r);
    const char *po[2] = {oid, x->s->publication};
    /* Published columns (column lists), never generated or dropped ones. */
    r = pg_query(pg,
                 CDC_PUBLISHED_COLUMNS_SQL,
                 2, po, err, errlen);
    if (!r) {
        free(filter);
        goto fail;
    }
    int ncols = PQntuples(r);
    uint32_t *types = xcalloc((size_t)ncols + 1, sizeof *types);
    relay_buf cols = {0}, keys = {0}, cmp = {0}, sql1 = {0}, sql2 = {0};
    relay_buf *jkeys = xcalloc((size_t)ncols + 1, sizeof *jkeys);
    for (int i = 0; i < ncols; i++) {
        buf_printf(&cols, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        types[i] = (uint32_t)strtoul(PQgetvalue(r, i, 1), NULL, 10);
        buf_put_json_str(&jkeys[i], PQgetvalue(r, i, 2), strlen(PQgetvalue(r, i, 2)));
        buf_putc(&jkeys[i], ':');
    }
    PQclear(r);
    r = pg_query(pg,
                 "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod)"
                 "  FROM pg_catalog.pg_index i"
                 "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
                 "  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                 " WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
                 1, po, err, errlen);
    int npk = r ? PQntuples(r) : 0;
    for (int i = 0; i < npk; i++) {
        buf_printf(&keys, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        buf_printf(&cmp, "%s$%d::%s", i ? ", " : "", i + 2, PQgetvalue(r, i, 1));
    }
    PQclear(r);
    int rc = -1;
    char **last = xcalloc((size_t)npk + 1, sizeof *last);
    const char **params = xcalloc((size_t)npk + 2, sizeof *params);
    char limit[24];
    snprintf(limit, sizeof limit, "%" PRId64, x->chunk_rows);
    if (npk == 0) {
        if (!*err)
            snprintf(err, errlen, "%s.%s has no primary key (on-demand snapshots page on it)",
                     q->schema, q->name);
        goto out;
    }
    char *qs = pg_quote_ident(pg, q->schema), *qn = pg_quote_ident(pg, q->name);
    const char *only = partitioned ? "" : "ONLY ";
    buf_printf(&sql1, "SELECT %s%s%s FROM %s%s.%s WHERE %s%s%s ORDER BY %s LIMIT $1", cols.data ? cols.data : "",
               ncols ? ", " : "", keys.data, only, qs, qn, *filter ? "(" : "", filter,
               *filter ? ")" : "true", keys.data);
    buf_printf(&sql2, "SELECT %s%s%s FROM %s%s.%s WHERE %s%s%s AND (%s) > (%s) ORDER BY %s LIMIT $1",
               cols.data ? cols.data : "", ncols ? ", " : "", keys.data, only, qs, qn,
               *filter ? "(" : "", filter, *filter ? ")" : "true", keys.data, cmp.data, keys.data);
    free(qs);
    free(qn);
    /* chunk envelope */
    buf_puts(&c.head, "{\"table\":");
    buf_put_json_str(&c.head, q->ident, strlen(q->ident));
    buf_printf(&c.head, ",\"operation\":\"snapshot\",\"snapshot_id\":\"%s\"", q->snapshot_id);
    buf_puts(&c.subj_prefix, "init.snap.");
    put_token(&c.subj_prefix, q->ident);
    buf_printf(&c.subj_prefix, ".%s.", q->snapshot_id);
    int64_t maxp = natsConnection_GetMaxPayload(x->conn.nc);
    c.max_bytes = maxp > 4096 ? (size_t)maxp - 1024 : 3072;
    relay_buf row = {0};
    int first = 1;
    for (;;) {
        params[0] = limit;
        for (int k = 0; k < npk; k++)
            params[k + 1] = last[k];
        r = pg_query(pg, first ? sql1.data : sql2.data, first ? 1 : npk + 1, params, err, errlen);
        first = 0;
        if (!r)
            goto out;
        int n = PQntuples(r);
        for (int i = 0; i < n; i++) {
            buf_clear(&row);
            buf_putc(&row, '{');
            for (int k = 0; k < ncols; k++) {
                if (k)
                    buf_putc(&row, ',');
                buf_append(&row, jkeys[k].data, jkeys[k].len);
                if (PQgetisnull(r, i, k))
                    buf_puts(&row, "null");
                else
                    pgo_value_json(types[k], PQgetvalue(r, i, k), (size_t)PQgetlength(r, i, k),
                                   &row);
            }
            buf_putc(&row, '}');
            if (c.nrows && c.rows.len + row.len + 1 > c.max_bytes && flush_chunk(&c, err, errlen) < 0) {
                PQclear(r);
                goto out;
            }
            if (c.nrows)
                buf_putc(&c.rows, ',');
            buf_append(&c.rows, row.data, row.len);
            c.nrows++;
        }
        if (n > 0) {
            for (int k = 0; k < npk; k++) {
                free(last[k]);
                last[k] = xstrdup(PQgetvalue(r, n - 1, ncols + k));
            }
        }
        PQclear(r);
        if (flush_chunk(&c, err, errlen) < 0)
            goto out;
        if (n < x->chunk_rows)
            break;
        if (stopping(x)) {
            snprintf(err, errlen, "the relay is stopping");
            goto out;
        }
    }
    relay_buf meta = {0}, subj = {0};
    buf_printf(&meta, "{\"snapshot_id\":\"%s\",\"lsn\":\"%s\",\"timestamp\":%" PRId64
               ",\"batch_count\":%" PRIu64 ",\"row_count\":%" PRIu64 ",\"table\":",
               q->snapshot_id, c.lsn, now_wall_ms() / 1000, c.chunk, c.total);
    buf_put_json_str(&meta, q->ident, strlen(q->ident));
    buf_putc(&meta, '}');
    buf_puts(&subj, "init.meta.");
    put_token(&subj, q->ident);
    char id[96];
    snprintf(id, sizeof id, "%s:meta", q->snapshot_id);
    rc = publish_js(x, subj.data, id, meta.data, meta.len, err, errlen);
    if (rc == 0)
        log_info(x->pipeline, "snapshot %s of %s.%s: %" PRIu64 " rows in %" PRIu64 " chunks at %s",
                 q->snapshot_id, q->schema, q->name, c.total, c.chunk, c.lsn);
    buf_free(&meta);
    buf_free(&subj);
out:
    buf_free(&row);
    for (int k = 0; k < npk; k++)
        free(last[k]);
    free(last);
    free(params);
    for (int i = 0; i < ncols; i++)
        buf_free(&jkeys[i]);
    free(jkeys);
    free(types);
    free(filter);
    buf_free(&cols);
    buf_free(&keys);
    buf_free(&cmp);
    buf_free(&sql1);
    buf_free(&sql2);
    buf_free(&c.head);
    buf_free(&c.rows);
    buf_free(&c.subj_prefix);
    {
        char e2[64];
        pg_exec(pg, "ROLLBACK", 0, NULL, e2, sizeof e2);
    }
    return rc;
fail:
    {
        char e2[64];
        pg_exec(pg, "ROLLBACK", 0, NULL, e2, sizeof e2);
    }
    return -1;
}

/* ---- the thread ---------------------------------------------------------------------- */

static void *ext_thread(void *arg)
{
    cdc_ext *x = arg;
    char err[EXT_ERRLEN];
    while (!stopping(x)) {
        err[0] = '\0';
        if (ensure_nats(x, err, sizeof err) < 0 || ensure_pg(x, err, sizeof err) < 0) {
            if (!x->warned)
                log_warn(x->pipeline, "cdc schemas/snapshots: %s (retrying every second)", err);
            x->warned = 1;
            wait_ms(x, RETRY_MS);
            continue;
        }
        if (x->warned)
            log_info(x->pipeline, "cdc schemas/snapshots: connected");
        x->warned = 0;
        if (do_schemas(x, err, sizeof err) < 0) {
            log_warn(x->pipeline, "cdc schemas: %s (retrying)", err);
            wait_ms(x, RETRY_MS);
            continue;
        }
        snap_req q = {0};
        int have = 0;
        pthread_mutex_lock(&x->mu);
        if (x->nreqs) {
            q = x->reqs[0];
            memmove(x->reqs, x->reqs + 1, (x->nreqs - 1) * sizeof *x->reqs);
            x->nreqs--;
            have = 1;
        }
        pthread_mutex_unlock(&x->mu);
        if (have) {
            err[0] = '\0';
            if (run_snapshot(x, &q, err, sizeof err) < 0) {
                log_error(x->pipeline, "snapshot %s of %s.%s failed (no metadata published; "
                          "request it again): %s", q.snapshot_id, q.schema, q.name, err);
                if (x->s->base.w->stats)
                    stats_error(x->s->base.w->stats, ERR_SOURCE, "snapshot %s failed: %s",
                                q.snapshot_id, err);
            }
            free_req(&q);
            continue;
        }
        wait_ms(x, RETRY_MS);
    }
    return NULL;
}
