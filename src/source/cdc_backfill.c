/*
 * cdc_backfill.c - backfills on demand for a running CDC pipeline (issue 17;
 * user side: docs/backends/cdc.md "Backfills", catalog: sql/009_backfills.sql).
 *
 * A backfill sends a table's current rows again as "snapshot" events while
 * the pipeline keeps streaming its changes, without a snapshot row ever
 * overwriting a newer change. The algorithm is DBLog's watermark algorithm
 * (Debezium's incremental snapshots), on the worker's own thread:
 *
 *   1. read a chunk: the next backfill_chunk_rows rows in primary-key order
 *      after the last confirmed key, in a REPEATABLE READ transaction on the
 *      worker's connection, with that transaction's snapshot
 *      (pg_current_snapshot());
 *   2. write the high watermark: a transactional logical message
 *      (pg_logical_emit_message(true, 'pgtrickle_relay_backfill', <token>)),
 *      committed after the read;
 *   3. keep streaming; every change (insert, update incl. its old key,
 *      delete) of the table that the stream delivers from now until the
 *      high watermark removes its key from the chunk, a TRUNCATE empties it;
 *   4. when the stream reaches the high watermark, emit what is left of the
 *      chunk, before anything that follows the watermark.
 * Every change the chunk's snapshot did not see commits after the read
 * started, so it is delivered either in the window (its key is dropped, the
 * change itself carries the row) or after the high watermark (after the
 * chunk's row). The low watermark of DBLog is the stream position at which
 * the chunk is read: the relay reads the table and the stream on the same
 * thread, so it knows that position exactly and needs no WAL record for it
 * (a low-watermark message would open the window later, never earlier).
 *
 * Commit order is not visibility order.  A transaction's commit record can
 * reach the stream before the transaction is visible to new snapshots (the
 * gap is widest under synchronous replication, whose wait sits between the
 * two). Such a transaction, already delivered before the read, would be
 * invisible to the chunk, and the chunk's older row would follow it. So the
 * source remembers the xids of the last XID_RING transactions the stream
 * delivered (cdc_bf_begin), and a chunk whose snapshot lists one of them as
 * still running is thrown away and read again at the next poll.
 *
 * Progress.  When the sink has confirmed every row of a chunk (the ack of
 * the batch that holds its last row; at once for a chunk left empty), the
 * chunk's last key, rows and chunks are stored with
 * pgtrickle.relay_backfill_progress(). A relay that dies, or a pipeline that
 * moves to another relay, resumes after the last stored chunk: the chunk in
 * flight is read again, at a new high watermark, hence under new dedup keys
 * "backfill:{id}:{watermark lsn}:{schema}.{table}:{n}" (docs/backends/cdc.md,
 * "Dedup keys"). A key never names two different events.
 *
 * Requests.  The source LISTENs on pgtrickle_relay_backfill (payload: the
 * pipeline's name) on the worker's connection and looks for work when
 * notified, at open and every RECHECK_MS; a cancelled backfill is noticed
 * the same way, or when storing its progress returns 'cancelled'. A
 * backfill whose table cannot be read (dropped, no privilege, a filter that
 * fails) is marked failed with the error, and the next one starts.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../log.h"
#include "../pg.h"
#include "../stats.h"
#include "../worker.h"
#include "cdc_ext.h"

#define ERRLEN 512
#define WATERMARK_PREFIX "pgtrickle_relay_backfill"
#define RECHECK_MS 10000
#define XID_RING 8192

typedef enum {
    BF_IDLE = 0, /* no chunk in memory */
    BF_WINDOW,   /* chunk read, waiting for its high watermark in the stream */
    BF_RELEASE,  /* watermark reached: rows go into batches, the stream waits */
    BF_SENT,     /* every row is in a batch: stored when that batch is acked */
} bf_phase;

typedef struct bf_row {
    size_t payload, payload_len; /* in rows_buf */
    size_t key, key_len;         /* canonical key text in rows_buf */
    int dropped;
} bf_row;

struct cdc_backfill {
    int64_t chunk_rows;
    int listening;
    int recheck;              /* a notification arrived: look at the catalog */
    int64_t checked_at_ms;
    /* the backfill worked on (id 0: none) */
    int64_t id;
    uint32_t oid;
    char *schema, *name, *where;
    int ncols, npk;
    uint32_t *col_types;
    char **pk_names;          /* unquoted, to find them in Relation messages */
    char *sql_first, *sql_next;
    char **last_key;          /* confirmed keyset position (NULL: from the start) */
    uint64_t rows_sent, chunks_sent;
    /* the chunk in memory */
    bf_phase phase;
    char token[160];          /* the high watermark's content */
    char hw_lsn[24];
    bf_row *rows;
    size_t nrows, next_emit, emitted;
    relay_buf rows_buf;
    size_t *slots;            /* hash of row keys: index + 1, 0 empty */
    size_t nslots;
    char **chunk_last;        /* keyset position after this chunk */
    int chunk_final;          /* fewer rows than chunk_rows: the table is done */
    int chunk_void;           /* a change whose key is unknown: read the chunk again */
    uint64_t reads;
    /* key columns of the stream's relation (by Relation generation) */
    uint32_t rel_generation;
    uint32_t rel_oid;
    int *rel_pk;              /* npk column indexes in the relation */
    /* xids the stream delivered recently */
    uint32_t xids[XID_RING];
    size_t nxids, xid_pos;
    relay_buf tmp;
};

static const char *pname(cdc_source *s)
{
    return s->base.w->cfg.name;
}

static void free_keys(char **k, int n)
{
    if (!k)
        return;
    for (int i = 0; i < n; i++)
        free(k[i]);
    free(k);
}

static void drop_chunk(cdc_backfill *bf)
{
    free(bf->rows);
    bf->rows = NULL;
    bf->nrows = bf->next_emit = bf->emitted = 0;
    buf_clear(&bf->rows_buf);
    free(bf->slots);
    bf->slots = NULL;
    bf->nslots = 0;
    free_keys(bf->chunk_last, bf->npk);
    bf->chunk_last = NULL;
    bf->chunk_final = bf->chunk_void = 0;
    bf->phase = BF_IDLE;
    bf->token[0] = '\0';
}

/* Forget what prepare_table() loaded (not npk: last_key depends on it). */
static void free_table(cdc_backfill *bf)
{
    free_keys(bf->pk_names, bf->npk);
    bf->pk_names = NULL;
    free(bf->schema);
    free(bf->name);
    free(bf->col_types);
    free(bf->sql_first);
    free(bf->sql_next);
    free(bf->rel_pk);
    bf->schema = bf->name = bf->sql_first = bf->sql_next = NULL;
    bf->col_types = NULL;
    bf->rel_pk = NULL;
    bf->rel_oid = 0;
    bf->ncols = 0;
}

/* Forget the backfill worked on (not its catalog row). */
static void drop_backfill(cdc_source *s)
{
    cdc_backfill *bf = s->bf;
    drop_chunk(bf);
    free_keys(bf->last_key, bf->npk);
    bf->last_key = NULL;
    free_table(bf);
    free(bf->where);
    bf->where = NULL;
    bf->id = 0;
    bf->npk = 0;
    if (s->base.w->stats)
        atomic_store(&s->base.w->stats->backfills_running, 0);
}

/* ---- config and life cycle ----------------------------------------------------- */

int cdc_bf_create(cdc_source *s, const json_t *cfg, char *err, size_t errlen)
{
    int64_t rows;
    if (cfg_int(cfg, "source", "backfill_chunk_rows", 10000, 1, 1000000, &rows, err, errlen) < 0)
        return -1;
    s->bf = xcalloc(1, sizeof *s->bf);
    s->bf->chunk_rows = rows;
    return 0;
}

void cdc_bf_destroy(cdc_source *s)
{
    if (!s->bf)
        return;
    drop_backfill(s);
    buf_free(&s->bf->rows_buf);
    buf_free(&s->bf->tmp);
    free(s->bf);
    s->bf = NULL;
}

int cdc_bf_open(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    /* Whatever was in memory is re-read from the stored progress. */
    drop_backfill(s);
    bf->nxids = bf->xid_pos = 0;
    bf->recheck = 1;
    bf->listening = 0;
    if (pg_exec(s->base.w->pg, "LISTEN pgtrickle_relay_backfill", 0, NULL, err, errlen) < 0)
        return -1;
    bf->listening = 1;
    return 0;
}

/* ---- the stream's side ---------------------------------------------------------- */

void cdc_bf_begin(cdc_source *s, uint32_t xid)
{
    cdc_backfill *bf = s->bf;
    bf->xids[bf->xid_pos] = xid;
    bf->xid_pos = (bf->xid_pos + 1) % XID_RING;
    if (bf->nxids < XID_RING)
        bf->nxids++;
}

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* The chunk row with this canonical key, or NULL. */
static bf_row *find_row(cdc_backfill *bf, const char *key, size_t len)
{
    if (!bf->nslots)
        return NULL;
    size_t mask = bf->nslots - 1;
    for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
        size_t v = bf->slots[i];
        if (!v)
            return NULL;
        bf_row *r = &bf->rows[v - 1];
        if (r->key_len == len && memcmp(bf->rows_buf.data + r->key, key, len) == 0)
            return r;
    }
}

/* Canonical key text: for each key column "<length>:<text>". */
static void key_append(relay_buf *k, const char *v, size_t n)
{
    buf_printf(k, "%zu:", n);
    buf_append(k, v, n);
}

/* Map the relation's columns to the chunk's key columns (again when the
 * Relation message changed). 0, or -1 when a key column is missing. */
static int map_relation(cdc_backfill *bf, const pgo_rel *rel)
{
    if (bf->rel_pk && bf->rel_oid == rel->oid && bf->rel_generation == rel->generation)
        return 0;
    free(bf->rel_pk);
    bf->rel_pk = xcalloc((size_t)bf->npk + 1, sizeof *bf->rel_pk);
    bf->rel_oid = rel->oid;
    bf->rel_generation = rel->generation;
    for (int k = 0; k < bf->npk; k++) {
        bf->rel_pk[k] = -1;
        for (int c = 0; c < rel->ncols; c++)
            if (strcmp(rel->cols[c].name, bf->pk_names[k]) == 0)
                bf->rel_pk[k] = c;
        if (bf->rel_pk[k] < 0)
            return -1;
    }
    return 0;
}

/* Drop the row whose key the tuple carries; a tuple without the whole key
 * (a NULL or unchanged-TOAST key column, or a replica identity that is not
 * the primary key) voids the chunk: it is read again. */
static void drop_tuple_key(cdc_backfill *bf, const pgo_tuple *t)
{
    relay_buf *k = &bf->tmp;
    buf_clear(k);
    for (int i = 0; i < bf->npk; i++) {
        int c = bf->rel_pk[i];
        if (c >= t->ncols || t->cols[c].kind != 't') {
            bf->chunk_void = 1;
            return;
        }
        key_append(k, t->cols[c].data, t->cols[c].len);
    }
    bf_row *r = find_row(bf, k->data, k->len);
    if (r)
        r->dropped = 1;
}

void cdc_bf_change(cdc_source *s, const pgo_rel *rel, const pgo_msg *m)
{
    cdc_backfill *bf = s->bf;
    if (bf->phase != BF_WINDOW || rel->oid != bf->oid || bf->chunk_void)
        return;
    if (map_relation(bf, rel) < 0) {
        bf->chunk_void = 1;
        return;
    }
    if (m->u.change.old_kind)
        drop_tuple_key(bf, &m->u.change.old);
    if (m->type != 'D')
        drop_tuple_key(bf, &m->u.change.new_);
}

void cdc_bf_truncate(cdc_source *s, uint32_t relid)
{
    cdc_backfill *bf = s->bf;
    if (bf->phase != BF_WINDOW || relid != bf->oid)
        return;
    for (size_t i = 0; i < bf->nrows; i++)
        bf->rows[i].dropped = 1;
}

int cdc_bf_message(cdc_source *s, const pgo_msg *m, uint64_t lsn)
{
    cdc_backfill *bf = s->bf;
    if (strcmp(m->u.message.prefix, WATERMARK_PREFIX) != 0)
        return 0;
    /* Ours and current (not one of an earlier run or another pipeline):
     * release the chunk here. */
    size_t tl = strlen(bf->token);
    if (bf->phase == BF_WINDOW && tl && m->u.message.len == tl &&
        memcmp(m->u.message.content, bf->token, tl) == 0) {
        pgo_lsn_format(lsn, bf->hw_lsn, sizeof bf->hw_lsn);
        bf->phase = BF_RELEASE;
        bf->next_emit = 0;
        size_t dropped = 0;
        for (size_t i = 0; i < bf->nrows; i++)
            dropped += bf->rows[i].dropped;
        log_debug(pname(s), "backfill %" PRId64 " chunk %" PRIu64 " at %s: %zu rows read, %zu "
                  "changed in its window%s", bf->id, bf->chunks_sent + 1, bf->hw_lsn, bf->nrows,
                  dropped, bf->chunk_void ? " (a change without its whole key: read again)" : "");
    }
    return 1;
}

int cdc_bf_holding(const cdc_source *s)
{
    return s->bf->phase == BF_RELEASE;
}

/* Take the notifications that arrived on the worker's connection; one
 * naming this pipeline means: look at the catalog. 0, or -1 (err) when the
 * connection failed. */
static int take_notifies(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    PGconn *c = s->base.w->pg;
    if (!bf->listening)
        return 0;
    if (!PQconsumeInput(c)) {
        pg_error(c, err, errlen);
        return -1;
    }
    PGnotify *n;
    while ((n = PQnotifies(c)) != NULL) {
        if (strcmp(n->relname, "pgtrickle_relay_backfill") == 0 && strcmp(n->extra, pname(s)) == 0)
            bf->recheck = 1;
        PQfreemem(n);
    }
    return 0;
}

int cdc_bf_active(cdc_source *s)
{
    cdc_backfill *bf = s->bf;
    if (bf->id != 0 || bf->phase != BF_IDLE || bf->recheck ||
        now_mono_ms() - bf->checked_at_ms >= RECHECK_MS)
        return 1;
    char err[ERRLEN];
    if (take_notifies(s, err, sizeof err) < 0)
        return 1; /* the next poll reports the failure */
    return bf->recheck;
}

/* ---- reading a chunk -------------------------------------------------------------- */

/* Load the table of the backfill (names, published columns, primary key,
 * publication row filter) and build its chunk statements; again before
 * every chunk, so a renamed table or an added or dropped column is
 * followed. 0, -1 (err). */
static int prepare_table(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    PGconn *c = s->base.w->pg;
    int npk = bf->npk; /* 0 the first time */
    free_table(bf);
    char oid[16];
    snprintf(oid, sizeof oid, "%" PRIu32, bf->oid);
    const char *p[2] = {oid, s->publication};
    PGresult *r = pg_query(c, "SELECT n.nspname, c.relname, c.relkind,"
                              "       (SELECT coalesce(pt.rowfilter, '') FROM pg_catalog.pg_publication_tables pt"
                              "         WHERE pt.pubname = $2 AND pt.schemaname = n.nspname"
                              "           AND pt.tablename = c.relname)"
                              "  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n"
                              "    ON n.oid = c.relnamespace WHERE c.oid = $1::oid",
                           2, p, err, errlen);
    if (!r)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        snprintf(err, errlen, "the table (oid %s) no longer exists", oid);
        return -1;
    }
    bf->schema = xstrdup(PQgetvalue(r, 0, 0));
    bf->name = xstrdup(PQgetvalue(r, 0, 1));
    char relkind = PQgetvalue(r, 0, 2)[0];
    int published = !PQgetisnull(r, 0, 3);
    char *rowfilter = xstrdup(PQgetvalue(r, 0, 3));
    PQclear(r);
    if (!published) {
        snprintf(err, errlen, "table %s.%s is no longer in publication %s", bf->schema, bf->name,
                 s->publication);
        free(rowfilter);
        return -1;
    }
    r = pg_query(c, CDC_PUBLISHED_COLUMNS_SQL, 2, p, err, errlen);
    if (!r) {
        free(rowfilter);
        return -1;
    }
    relay_buf cols = {0}, keys = {0}, cmp = {0}, q = {0};
    bf->ncols = PQntuples(r);
    bf->col_types = xcalloc((size_t)bf->ncols + 1, sizeof *bf->col_types);
    for (int i = 0; i < bf->ncols; i++) {
        buf_printf(&cols, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        bf->col_types[i] = (uint32_t)strtoul(PQgetvalue(r, i, 1), NULL, 10);
    }
    PQclear(r);
    if (bf->ncols == 0)
        buf_puts(&cols, "NULL");
    r = pg_query(c,
                 "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod), a.attname"
                 "  FROM pg_catalog.pg_index i"
                 "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
                 "  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                 " WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
                 1, p, err, errlen);
    int rc = -1;
    if (!r)
        goto out;
    if (PQntuples(r) == 0 || (npk && PQntuples(r) != npk)) {
        snprintf(err, errlen, "table %s.%s %s", bf->schema, bf->name, PQntuples(r) == 0
                 ? "has no primary key any more" : "has another primary key than when the backfill "
                 "started");
        PQclear(r);
        goto out;
    }
    bf->npk = PQntuples(r);
    bf->pk_names = xcalloc((size_t)bf->npk, sizeof *bf->pk_names);
    for (int i = 0; i < bf->npk; i++) {
        buf_printf(&keys, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        buf_printf(&cmp, "%s$%d::%s", i ? ", " : "", i + 2, PQgetvalue(r, i, 1));
        bf->pk_names[i] = xstrdup(PQgetvalue(r, i, 2));
    }
    PQclear(r);
    char *qs = pg_quote_ident(c, bf->schema), *qn = pg_quote_ident(c, bf->name);
    /* The requested filter sits alone in a subquery of its own (its
     * parentheses cannot reach the key condition or the row filter); the
     * publication's row filter applies on top, the keyset condition last.
     * ONLY: inheritance children are published on their own; a partitioned
     * root (published via the root) covers its partitions. */
    buf_printf(&q, "SELECT %s, %s FROM (SELECT * FROM (SELECT * FROM %s%s.%s", cols.data, keys.data,
               relkind == 'p' ? "" : "ONLY ", qs, qn);
    if (bf->where)
        buf_printf(&q, " WHERE %s\n", bf->where);
    buf_printf(&q, ") AS requested WHERE %s%s%s) AS f", *rowfilter ? "(" : "", rowfilter,
               *rowfilter ? ")" : "true");
    size_t base = q.len;
    buf_printf(&q, " ORDER BY %s LIMIT $1", keys.data);
    bf->sql_first = xstrdup(q.data);
    q.len = base;
    q.data[base] = '\0';
    buf_printf(&q, " WHERE (%s) > (%s) ORDER BY %s LIMIT $1", keys.data, cmp.data, keys.data);
    bf->sql_next = xstrdup(q.data);
    free(qs);
    free(qn);
    rc = 0;
out:
    buf_free(&cols);
    buf_free(&keys);
    buf_free(&cmp);
    buf_free(&q);
    free(rowfilter);
    return rc;
}

/* The stored position, a JSON array of npk strings (the key columns' text
 * forms), into *out. 0, or -1 when it is not that. */
static int parse_position(const char *text, int npk, char ***out)
{
    json_t *a = json_loads(text, 0, NULL);
    if (!json_is_array(a) || json_array_size(a) != (size_t)npk) {
        json_decref(a);
        return -1;
    }
    char **v = xcalloc((size_t)npk + 1, sizeof *v);
    for (int k = 0; k < npk; k++) {
        json_t *e = json_array_get(a, (size_t)k);
        if (!json_is_string(e)) {
            free_keys(v, npk);
            json_decref(a);
            return -1;
        }
        v[k] = xstrndup(json_string_value(e), json_string_length(e));
    }
    json_decref(a);
    *out = v;
    return 0;
}

static int mark_failed(cdc_source *s, const char *why, char *err, size_t errlen)
{
    char id[24];
    snprintf(id, sizeof id, "%" PRId64, s->bf->id);
    const char *p[2] = {id, why};
    log_error(pname(s), "backfill %s of %s failed: %s", id,
              s->bf->name ? s->bf->name : "its table", why);
    int rc = pg_exec(s->base.w->pg, "SELECT pgtrickle.relay_backfill_failed($1::bigint, $2)", 2, p,
                     err, errlen);
    drop_backfill(s);
    s->bf->recheck = 1;
    return rc;
}

/* Take up the pipeline's current backfill (the running one, else the
 * oldest queued). Returns 1 one is loaded, 0 none, -1 error (err). */
static int load_next(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    const char *p[1] = {pname(s)};
    PGresult *r = pg_query(s->base.w->pg,
                           "SELECT id, table_oid, where_clause, to_json(last_key), rows_sent, chunks_sent"
                           "  FROM pgtrickle.relay_backfill_next($1)", 1, p, err, errlen);
    if (!r)
        return -1;
    bf->checked_at_ms = now_mono_ms();
    if (PQntuples(r) == 0) {
        PQclear(r);
        if (bf->id)
            log_info(pname(s), "backfill %" PRId64 " was cancelled", bf->id);
        drop_backfill(s);
        return 0;
    }
    int64_t id = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    if (id == bf->id) {
        PQclear(r);
        return 1;
    }
    if (bf->id)
        log_info(pname(s), "backfill %" PRId64 " was cancelled", bf->id);
    drop_backfill(s);
    bf->id = id;
    bf->oid = (uint32_t)strtoul(PQgetvalue(r, 0, 1), NULL, 10);
    bf->where = PQgetisnull(r, 0, 2) ? NULL : xstrdup(PQgetvalue(r, 0, 2));
    char *last = PQgetisnull(r, 0, 3) ? NULL : xstrdup(PQgetvalue(r, 0, 3));
    bf->rows_sent = strtoull(PQgetvalue(r, 0, 4), NULL, 10);
    bf->chunks_sent = strtoull(PQgetvalue(r, 0, 5), NULL, 10);
    PQclear(r);
    char e[ERRLEN];
    if (prepare_table(s, e, sizeof e) < 0) {
        free(last);
        if (pg_broken(s->base.w->pg)) {
            snprintf(err, errlen, "%s", e);
            return -1;
        }
        return mark_failed(s, e, err, errlen) < 0 ? -1 : 0;
    }
    if (last && parse_position(last, bf->npk, &bf->last_key) < 0) {
        snprintf(e, sizeof e, "stored position %s does not match the primary key of %s.%s "
                 "(%d columns): was the key changed?", last, bf->schema, bf->name, bf->npk);
        free(last);
        return mark_failed(s, e, err, errlen) < 0 ? -1 : 0;
    }
    log_info(pname(s), "backfill %" PRId64 " of %s.%s%s%s: %s", id, bf->schema, bf->name,
             bf->where ? " where " : "", bf->where ? bf->where : "",
             last ? "resuming after the last confirmed chunk" : "starting");
    free(last);
    if (s->base.w->stats)
        atomic_store(&s->base.w->stats->backfills_running, 1);
    return 1;
}

int cdc_snapshot_running_any(const char *snapshot, const uint32_t *xids, size_t n)
{
    const char *p = snapshot;
    for (int field = 0; field < 2; field++) { /* xmin:, xmax: */
        size_t d = strspn(p, "0123456789");
        if (d == 0 || p[d] != ':')
            return 1;
        p += d + 1;
    }
    while (*p) {
        size_t d = strspn(p, "0123456789");
        if (d == 0 || (p[d] != ',' && p[d] != '\0'))
            return 1;
        uint32_t x = (uint32_t)strtoull(p, NULL, 10);
        for (size_t i = 0; i < n; i++)
            if (xids[i] == x)
                return 1;
        if (p[d] == ',' && p[d + 1] == '\0')
            return 1;
        p += d + (p[d] == ',');
    }
    return 0;
}

/* Store the chunk's rows and build the key hash. */
static void keep_rows(cdc_source *s, PGresult *r)
{
    cdc_backfill *bf = s->bf;
    int n = PQntuples(r);
    bf->nrows = (size_t)n;
    bf->rows = xcalloc((size_t)n + 1, sizeof *bf->rows);
    bf->nslots = 16;
    while (bf->nslots < 2 * (size_t)n)
        bf->nslots <<= 1;
    bf->slots = xcalloc(bf->nslots, sizeof *bf->slots);
    buf_clear(&bf->rows_buf);
    for (int i = 0; i < n; i++) {
        bf_row *row = &bf->rows[i];
        row->payload = bf->rows_buf.len;
        cdc_row_json(&bf->rows_buf, r, i, bf->ncols, bf->col_types);
        row->payload_len = bf->rows_buf.len - row->payload;
        row->key = bf->rows_buf.len;
        for (int k = 0; k < bf->npk; k++)
            key_append(&bf->rows_buf, PQgetvalue(r, i, bf->ncols + k),
                       (size_t)PQgetlength(r, i, bf->ncols + k));
        row->key_len = bf->rows_buf.len - row->key;
    }
    size_t mask = bf->nslots - 1;
    for (int i = 0; i < n; i++) {
        bf_row *row = &bf->rows[i];
        size_t j = hash_bytes(bf->rows_buf.data + row->key, row->key_len) & mask;
        while (bf->slots[j])
            j = (j + 1) & mask;
        bf->slots[j] = (size_t)i + 1;
    }
    bf->chunk_last = xcalloc((size_t)bf->npk + 1, sizeof *bf->chunk_last);
    for (int k = 0; k < bf->npk; k++)
        bf->chunk_last[k] = n > 0 ? xstrdup(PQgetvalue(r, n - 1, bf->ncols + k))
                                  : bf->last_key ? xstrdup(bf->last_key[k]) : NULL;
    bf->chunk_final = n < bf->chunk_rows;
}

/* Store the progress of the chunk just confirmed (or of an empty one).
 * Returns 0, or -1 (err; the chunk is read again after reopening). */
static int store_progress(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    char id[24], rows[24], chunks[24];
    uint64_t nrows = bf->rows_sent + bf->emitted, nchunks = bf->chunks_sent + 1;
    snprintf(id, sizeof id, "%" PRId64, bf->id);
    snprintf(rows, sizeof rows, "%" PRIu64, nrows);
    snprintf(chunks, sizeof chunks, "%" PRIu64, nchunks);
    relay_buf pos = {0}; /* the chunk's last key as a JSON array of its text forms */
    if (bf->chunk_last && bf->chunk_last[0]) {
        buf_putc(&pos, '[');
        for (int k = 0; k < bf->npk; k++) {
            if (k)
                buf_putc(&pos, ',');
            buf_put_json_str(&pos, bf->chunk_last[k], strlen(bf->chunk_last[k]));
        }
        buf_putc(&pos, ']');
    }
    const char *p[5] = {id, pos.len ? pos.data : NULL, rows, chunks,
                        bf->chunk_final ? "true" : "false"};
    PGresult *r = pg_query(s->base.w->pg,
                           "SELECT pgtrickle.relay_backfill_progress($1::bigint,"
                           " CASE WHEN $2::jsonb IS NOT NULL THEN"
                           "  ARRAY(SELECT e FROM jsonb_array_elements_text($2::jsonb)"
                           "         WITH ORDINALITY AS k(e, n) ORDER BY n) END,"
                           " $3::bigint, $4::bigint, $5::boolean)", 5, p, err, errlen);
    buf_free(&pos);
    if (!r)
        return -1;
    const char *state = PQgetvalue(r, 0, 0);
    relay_stats *st = s->base.w->stats;
    if (st) {
        atomic_fetch_add(&st->backfill_rows, bf->emitted);
        atomic_fetch_add(&st->backfill_chunks, 1);
    }
    if (strcmp(state, "running") == 0) {
        bf->rows_sent = nrows;
        bf->chunks_sent = nchunks;
        free_keys(bf->last_key, bf->npk);
        bf->last_key = bf->chunk_last;
        bf->chunk_last = NULL;
        drop_chunk(bf);
    } else {
        if (strcmp(state, "done") == 0)
            log_info(pname(s), "backfill %" PRId64 " of %s.%s done: %" PRIu64 " rows in %" PRIu64
                     " chunks", bf->id, bf->schema, bf->name, nrows, nchunks);
        else
            log_info(pname(s), "backfill %" PRId64 " was %s", bf->id, state);
        drop_backfill(s);
        bf->recheck = 1; /* the next one, if any */
    }
    PQclear(r);
    return 0;
}

/* Read the next chunk and write its high watermark. Returns 0 (a chunk is
 * in its window, or was thrown away to be read again), -1 (err). */
static int read_chunk(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    PGconn *c = s->base.w->pg;
    char e[ERRLEN];
    if (prepare_table(s, e, sizeof e) < 0) {
        if (pg_broken(c)) {
            snprintf(err, errlen, "%s", e);
            return -1;
        }
        return mark_failed(s, e, err, errlen);
    }
    char lim[24];
    snprintf(lim, sizeof lim, "%" PRId64, bf->chunk_rows);
    const char **p = xcalloc((size_t)bf->npk + 2, sizeof *p);
    p[0] = lim;
    for (int k = 0; bf->last_key && k < bf->npk; k++)
        p[k + 1] = bf->last_key[k];
    PGresult *snap = NULL, *r = NULL;
    int rc = pg_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL, err, errlen);
    if (rc == 0 && !(snap = pg_query(c, "SELECT pg_catalog.pg_current_snapshot()::text", 0, NULL,
                                     err, errlen)))
        rc = -1;
    if (rc == 0) {
        r = bf->last_key ? pg_query(c, bf->sql_next, bf->npk + 1, p, e, sizeof e)
                         : pg_query(c, bf->sql_first, 1, p, e, sizeof e);
        if (!r) {
            PQclear(PQexec(c, "ROLLBACK"));
            free(p);
            PQclear(snap);
            if (pg_broken(c)) {
                snprintf(err, errlen, "%s", e);
                return -1;
            }
            char why[ERRLEN + 64];
            snprintf(why, sizeof why, "reading %s.%s: %s", bf->schema, bf->name, e);
            return mark_failed(s, why, err, errlen);
        }
    }
    free(p);
    if (rc == 0)
        rc = pg_exec(c, "COMMIT", 0, NULL, err, errlen);
    else
        PQclear(PQexec(c, "ROLLBACK"));
    if (rc < 0) {
        PQclear(snap);
        PQclear(r);
        return -1;
    }
    bf->reads++;
    if (cdc_snapshot_running_any(PQgetvalue(snap, 0, 0), bf->xids, bf->nxids)) {
        log_debug(pname(s), "backfill %" PRId64 ": the chunk's snapshot does not see a "
                  "transaction the stream already delivered; reading it again", bf->id);
        PQclear(snap);
        PQclear(r);
        return 0;
    }
    PQclear(snap);
    keep_rows(s, r);
    PQclear(r);
    if (bf->nrows == 0) {
        /* Nothing left: done, nothing to confirm. */
        return store_progress(s, err, errlen);
    }
    snprintf(bf->token, sizeof bf->token, "%.60s %" PRId64 " %" PRIu64 " %" PRId64 "-%" PRIx64,
             pname(s), bf->id, bf->chunks_sent + 1, now_wall_ms(),
             (uint64_t)bf->reads ^ ((uint64_t)(uintptr_t)bf << 16));
    const char *mp[1] = {bf->token};
    if (pg_exec(c, "SELECT pg_catalog.pg_logical_emit_message(true, '" WATERMARK_PREFIX "', $1)",
                1, mp, err, errlen) < 0) {
        drop_chunk(bf);
        return -1;
    }
    bf->phase = BF_WINDOW;
    return 0;
}

/* Put rows of the released chunk into the batch; SENT when all are in. */
static void release_rows(cdc_source *s, relay_batch *b, size_t max)
{
    cdc_backfill *bf = s->bf;
    relay_buf *o = &bf->tmp;
    while (bf->next_emit < bf->nrows && b->n < max) {
        size_t i = bf->next_emit++;
        bf_row *row = &bf->rows[i];
        if (row->dropped || bf->chunk_void)
            continue;
        relay_msg *m = batch_add(b);
        m->op = OP_SNAPSHOT;
        m->payload = arena_strndup(&b->arena, bf->rows_buf.data + row->payload, row->payload_len);
        m->payload_len = row->payload_len;
        m->schema = arena_strdup(&b->arena, bf->schema);
        m->table = arena_strdup(&b->arena, bf->name);
        m->relation_id = bf->oid;
        m->lsn = arena_strdup(&b->arena, bf->hw_lsn);
        buf_clear(o);
        buf_printf(o, "backfill:%" PRId64 ":%s:", bf->id, bf->hw_lsn);
        cdc_key_ident(o, bf->schema);
        buf_putc(o, '.');
        cdc_key_ident(o, bf->name);
        buf_printf(o, ":%zu", i);
        m->dedup_key = arena_strndup(&b->arena, o->data, o->len);
        buf_clear(o);
        buf_puts(o, "{\"schema\":");
        buf_put_json_str(o, bf->schema, strlen(bf->schema));
        buf_puts(o, ",\"table\":");
        buf_put_json_str(o, bf->name, strlen(bf->name));
        buf_printf(o, ",\"lsn\":\"%s\",\"commit_lsn\":null,\"xid\":null,\"commit_time\":null,"
                   "\"unchanged_toast\":[],\"snapshot\":true,\"backfill\":%" PRId64 "}",
                   bf->hw_lsn, bf->id);
        m->source_json = arena_strndup(&b->arena, o->data, o->len);
        s->ops[OP_SNAPSHOT]++;
        bf->emitted++;
    }
    if (bf->next_emit >= bf->nrows)
        bf->phase = BF_SENT;
}

int cdc_bf_poll(cdc_source *s, relay_batch *b, size_t max, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    if (bf->phase == BF_RELEASE) {
        release_rows(s, b, max);
        /* A chunk left empty (every key changed in its window, or voided)
         * has nothing to confirm. */
        if (bf->phase == BF_SENT && bf->emitted == 0) {
            if (bf->chunk_void) {
                log_debug(pname(s), "backfill %" PRId64 ": a change without its whole key "
                          "arrived in the window; reading the chunk again", bf->id);
                drop_chunk(bf);
                return 0;
            }
            return store_progress(s, err, errlen);
        }
        return 0;
    }
    if (bf->phase != BF_IDLE)
        return 0;
    if (take_notifies(s, err, errlen) < 0)
        return -1;
    if (bf->recheck || now_mono_ms() - bf->checked_at_ms >= RECHECK_MS) {
        int rc;
        do { /* a backfill marked failed sets recheck: take up the next */
            bf->recheck = 0;
            rc = load_next(s, err, errlen);
        } while (rc == 0 && bf->recheck);
        if (rc < 0)
            return -1;
    }
    if (!bf->id)
        return 0;
    return read_chunk(s, err, errlen);
}

int cdc_bf_ack(cdc_source *s, char *err, size_t errlen)
{
    cdc_backfill *bf = s->bf;
    if (bf->phase != BF_SENT)
        return 0;
    char e[ERRLEN];
    if (store_progress(s, e, sizeof e) < 0) {
        /* The rows are confirmed, the position is not stored: the source
         * reopens and sends the chunk again, under new keys. */
        snprintf(err, errlen, "storing the progress of backfill %" PRId64 ": %s", bf->id, e);
        drop_chunk(bf);
        return -1;
    }
    return 0;
}

void cdc_bf_position(cdc_source *s, relay_buf *p)
{
    cdc_backfill *bf = s->bf;
    if (!bf->id)
        return;
    static const char *const phases[] = {"reading", "window", "sending", "confirming"};
    buf_printf(p, ",\"backfill\":{\"id\":%" PRId64 ",\"table\":", bf->id);
    relay_buf n = {0};
    buf_printf(&n, "%s.%s", bf->schema, bf->name);
    buf_put_json_str(p, n.data, n.len);
    buf_free(&n);
    buf_printf(p, ",\"phase\":\"%s\",\"rows_sent\":%" PRIu64 ",\"chunks_sent\":%" PRIu64
               ",\"chunk_rows\":%zu}", phases[bf->phase], bf->rows_sent, bf->chunks_sent,
               bf->nrows);
}
