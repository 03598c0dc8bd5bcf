/*
 * outbox.c - forward source reading a pg_trickle outbox table (SPEC section 6).
 *
 * Config (pipeline "source" object):
 *   outbox            stream table name, e.g. "orders" (required)
 *   batch_size        outbox rows per poll (500); a batch also ends after
 *                     the row that brings it to 10 000 events (or
 *                     batch_size, if larger)
 *   poll_interval_ms  fallback poll when no NOTIFY arrives (1000)
 *   group             consumer group name (null: simple mode)
 *   consumer_id       group mode: this pipeline's consumer id (the pipeline
 *                     name; every relay running the pipeline uses the same id)
 *   visibility_seconds group mode: lease length of a polled batch (30)
 *   auto_offset_reset group mode: where a new group starts, "earliest" (default)
 *                     or "latest"
 *   start             simple mode: where a pipeline without a stored offset
 *                     starts, "earliest" (default: every row in the outbox)
 *                     or "latest" (only rows written from its first start on)
 *   retention_hours   stored by set_relay_outbox; not used by the relay
 *
 * Reading.  The outbox table is pgt_outbox_config.outbox_table_name, else
 * outbox_<outbox> (pgtrickle.relay_outbox_source() decides). Rows are read in
 * id order after the durable offset (relay_consumer_offsets.last_change_id,
 * read and written through SECURITY DEFINER functions). The worker's
 * connection LISTENs on pgtrickle_outbox_new, so a commit wakes the poll at
 * once; poll_interval_ms is only the fallback.
 *
 * Payload shapes, all seen in real pg_trickle releases:
 *   NULL                      header only -> one "refresh" event with the counts
 *   [ {...}, ... ]            current rows (v0.37+) -> "snapshot" events, is_full_refresh
 *   {"v":1,"inserted":[..],"deleted":[..],"full_refresh"?,"claim_check"?}
 *                             -> insert events then delete events ("snapshot"
 *                                when full_refresh)
 * Anything else cannot be decoded: it becomes one REJECTED message, which the
 * worker dead-letters, and the pipeline moves on.
 * Dedup key: {outbox_table}:{outbox_id}:{row_index}, inserted rows first.
 *
 * Claim-check rows (is_claim_check, or "claim_check":true) keep their rows in
 * pgtrickle."outbox_delta_rows_<st48>" (row_op, row_data). They are streamed
 * with a server-side cursor inside one transaction, batch_size rows per poll,
 * so memory stays bounded whatever the delta size; after the last chunk is
 * confirmed, outbox_rows_consumed() and the offset commit run in that same
 * transaction and it commits. A crash mid-way re-sends the row's events with
 * the same dedup keys.
 *
 * Group mode reads through pg_trickle's consumer-group API instead: the
 * group is created when missing (an "already exists" answer is fine),
 * poll_outbox(group, consumer, batch_size, visibility_seconds) returns the
 * rows after the consumer's committed offset, commit_offset() records
 * progress after the sink confirmed it (only ever increasing, since
 * pg_trickle's commit_offset would move backwards too), extend_lease() runs
 * while a batch is being published (from the worker's idle hook) and
 * consumer_heartbeat() while idle. pg_trickle keeps one offset per consumer,
 * so one consumer id per pipeline is what makes a takeover by another relay
 * resume where the previous owner stopped.
 *
 * Out-of-order commits.  BIGSERIAL ids are taken when a transaction inserts,
 * not when it commits, so id N+1 can be visible while N is still in flight.
 * Reading "id > offset" and advancing past N+1 would skip N forever. The
 * source therefore only advances through contiguous ids. At a gap (first
 * missing id G, with a higher id visible) it records which transactions hold
 * a write lock on the outbox table or its id sequence (pg_locks; nextval()
 * keeps a RowExclusiveLock on the sequence until its transaction ends). The
 * gap is skipped only once all of those transactions have ended *and* a
 * fresh read still does not show G; otherwise G's transaction committed and
 * G is delivered. Gaps from rolled-back transactions therefore cost one extra
 * poll, and an unrelated long transaction never holds the pipeline up.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../config.h"
#include "../json_scan.h"
#include "../log.h"
#include "../pg.h"
#include "../worker.h"
#include "outbox.h"
#include "source.h"

#define ERRLEN 512
#define OUTBOX_BATCH_EVENTS 10000 /* events per batch at most, beyond one row (see batch_size) */

typedef struct outbox_source {
    relay_source base;
    /* config */
    char *outbox;
    int64_t batch_size;
    int64_t poll_interval_ms;
    char *group;          /* NULL: simple mode */
    char *consumer_id;
    int64_t visibility_seconds;
    char *auto_offset_reset;
    int start_latest;     /* simple mode, "start": "latest" */
    int64_t last_heartbeat_ms;
    int64_t last_lease_ms;
    /* resolved by open() */
    char *outbox_table;   /* unquoted, e.g. outbox_orders */
    char *stream_table;   /* unqualified stream table name */
    char *delta_table;
    char *rel_oids;       /* "{table_oid,seq_oid}" for the holder query */
    char *select_sql;
    char *cursor_sql;
    int64_t offset;       /* durable: every id <= offset has been delivered */
    int64_t read_pos;     /* every id <= read_pos is in a polled batch (>= offset) */
    int unacked;          /* polled batches not acked yet (2 while reading ahead) */
    /* gap tracking */
    int64_t gap_id;       /* first missing id, 0 when none */
    char *gap_holders;    /* text[] of vxids that held write locks when the gap was seen */
    int gap_waits;
    /* claim-check streaming */
    int cc_active;
    int64_t cc_id;
    int64_t cc_next_index;
    int cc_full_refresh;
    int cc_done;          /* the cursor is exhausted: ack finishes the row */
    /* wake-up */
    int full_last_poll;   /* last poll was limited by batch_size: poll again at once */
} outbox_source;

/* ---- config ----------------------------------------------------------------- */

static void ob_destroy(relay_source *base);

static relay_source *ob_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "outbox", "group", "batch_size", "poll_interval_ms",
                                       "retention_hours", "consumer_id", "visibility_seconds",
                                       "auto_offset_reset", "start", NULL};
    const char *outbox, *group, *consumer, *reset, *start;
    int64_t batch, interval, visibility;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "outbox", &outbox, err, errlen) < 0 ||
        cfg_str(cfg, "source", "group", NULL, &group, err, errlen) < 0 ||
        cfg_str(cfg, "source", "consumer_id", NULL, &consumer, err, errlen) < 0 ||
        cfg_str(cfg, "source", "auto_offset_reset", "earliest", &reset, err, errlen) < 0 ||
        cfg_str(cfg, "source", "start", "earliest", &start, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 500, 1, 100000, &batch, err, errlen) < 0 ||
        cfg_int(cfg, "source", "poll_interval_ms", 1000, 10, 3600000, &interval, err, errlen) < 0 ||
        cfg_int(cfg, "source", "visibility_seconds", 30, 2, 86400, &visibility, err, errlen) < 0)
        return NULL;
    if (strcmp(reset, "earliest") != 0 && strcmp(reset, "latest") != 0) {
        snprintf(err, errlen, "source.auto_offset_reset: expected \"earliest\" or \"latest\", got \"%s\"", reset);
        return NULL;
    }
    if (strcmp(start, "earliest") != 0 && strcmp(start, "latest") != 0) {
        snprintf(err, errlen, "source.start: expected \"earliest\" or \"latest\", got \"%s\"", start);
        return NULL;
    }
    if (group && *group && json_object_get(cfg, "start")) {
        snprintf(err, errlen, "source.start: simple mode only (with source.group, use "
                 "source.auto_offset_reset)");
        return NULL;
    }
    outbox_source *s = xcalloc(1, sizeof *s);
    s->start_latest = strcmp(start, "latest") == 0;
    if (group && *group) {
        s->group = xstrdup(group);
        s->consumer_id = xstrdup(consumer && *consumer ? consumer : w->cfg.name);
        s->visibility_seconds = visibility;
        s->auto_offset_reset = xstrdup(reset);
    }
    s->base.w = w;
    s->base.default_subject = RELAY_DEFAULT_OUTBOX_SUBJECT;
    s->outbox = xstrdup(outbox);
    s->batch_size = batch;
    /* batch_size counts rows; a row holds up to outbox_inline_threshold_rows
     * (10 000) events: a batch ends after the row that reaches this many */
    s->base.max_events = batch > OUTBOX_BATCH_EVENTS ? (size_t)batch : OUTBOX_BATCH_EVENTS;
    s->poll_interval_ms = interval;
    return &s->base;
}

/* ---- open ------------------------------------------------------------------------ */

static void reset_position(outbox_source *s)
{
    free(s->gap_holders);
    s->gap_holders = NULL;
    s->gap_id = 0;
    s->gap_waits = 0;
    s->cc_active = 0;
    s->unacked = 0;
    s->full_last_poll = 1;
}

static void publish_position(outbox_source *s)
{
    char pos[512];
    if (s->group)
        snprintf(pos, sizeof pos, "{\"outbox_table\":\"%s\",\"last_outbox_id\":%" PRId64
                 ",\"group\":\"%s\",\"consumer_id\":\"%s\"}",
                 s->outbox_table ? s->outbox_table : "", s->offset, s->group, s->consumer_id);
    else
        snprintf(pos, sizeof pos, "{\"outbox_table\":\"%s\",\"last_outbox_id\":%" PRId64 "}",
                 s->outbox_table ? s->outbox_table : "", s->offset);
    if (s->base.w->stats)
        stats_set_position(s->base.w->stats, pos);
}

/* Group mode: make sure the group exists, register the consumer and read
 * its committed offset (consumer_lag is readable by the relay role). */
static int group_open(outbox_source *s, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    char inner[512];
    const char *pc[3] = {s->group, s->outbox_table, s->auto_offset_reset};
    if (pg_exec(c, "SELECT pgtrickle.create_consumer_group($1, $2, $3)", 3, pc, inner,
                sizeof inner) < 0) {
        if (pg_broken(c) || !strstr(inner, "already exists")) {
            snprintf(err, errlen, "create_consumer_group(%s): %s", s->group, inner);
            return -1;
        }
    }
    /* A zero-row poll registers the consumer at the group's reset position. */
    const char *pr[2] = {s->group, s->consumer_id};
    if (pg_exec(c, "SELECT count(*) FROM pgtrickle.poll_outbox($1, $2, 0, 1)", 2, pr, err,
                errlen) < 0)
        return -1;
    PGresult *r = pg_query(c, "SELECT committed_offset FROM pgtrickle.consumer_lag($1)"
                              " WHERE consumer_id = $2", 2, pr, err, errlen);
    if (!r)
        return -1;
    s->offset = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    return 0;
}

static int ob_open(relay_source *base, char *err, size_t errlen)
{
    outbox_source *s = (outbox_source *)base;
    relay_worker *w = base->w;
    PGconn *c = w->pg;
    reset_position(s);
    /* A failed claim-check stream may have left a transaction open. */
    if (PQtransactionStatus(c) != PQTRANS_IDLE)
        PQclear(PQexec(c, "ROLLBACK"));

    const char *p1[1] = {s->outbox};
    PGresult *r = pg_query(c, "SELECT outbox_table, stream_table, delta_table"
                              " FROM pgtrickle.relay_outbox_source($1)", 1, p1, err, errlen);
    if (!r)
        return -1;
    free(s->outbox_table);
    free(s->stream_table);
    free(s->delta_table);
    s->outbox_table = xstrdup(PQgetvalue(r, 0, 0));
    s->stream_table = xstrdup(PQgetvalue(r, 0, 1));
    s->delta_table = xstrdup(PQgetvalue(r, 0, 2));
    PQclear(r);

    char *qt = pg_quote_ident(c, s->outbox_table);
    char *qd = pg_quote_ident(c, s->delta_table);
    relay_buf q = {0};
    buf_printf(&q, "pgtrickle.%s", qt);
    const char *p2[1] = {q.data};
    r = pg_query(c, "SELECT format('{%s,%s}', c.oid, coalesce(pg_get_serial_sequence($1, 'id')::regclass::oid, 0))"
                    " FROM pg_catalog.pg_class c WHERE c.oid = to_regclass($1)",
                 1, p2, err, errlen);
    if (r && PQntuples(r) == 0) {
        snprintf(err, errlen, "outbox table pgtrickle.%s does not exist (source.outbox = \"%s\"; "
                 "create it with pgtrickle.enable_outbox('%s'))", s->outbox_table, s->outbox, s->outbox);
        PQclear(r);
        r = NULL;
    }
    if (!r) {
        free(qt);
        free(qd);
        buf_free(&q);
        return -1;
    }
    free(s->rel_oids);
    s->rel_oids = xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);

    free(s->select_sql);
    free(s->cursor_sql);
    buf_clear(&q);
    buf_printf(&q,
               "SELECT id, inserted_count, deleted_count, is_claim_check, payload::text,"
               " refresh_id::text, (extract(epoch from created_at) * 1000)::bigint"
               " FROM pgtrickle.%s WHERE id > $1 ORDER BY id LIMIT $2", qt);
    s->select_sql = xstrdup(q.data);
    buf_clear(&q);
    buf_printf(&q,
               "DECLARE relay_claim_check NO SCROLL CURSOR FOR"
               " SELECT row_op, row_data::text FROM pgtrickle.%s"
               " WHERE outbox_id = $1 ORDER BY row_num", qd);
    s->cursor_sql = xstrdup(q.data);
    buf_free(&q);
    free(qd);

    if (s->group) {
        free(qt);
        if (group_open(s, err, errlen) < 0)
            return -1;
    } else {
        /* The stored offset; a pipeline without one stores where it starts
         * first (0, or with "start": "latest" the outbox's last id), so a
         * restart never jumps past rows written meanwhile. */
        relay_buf sq = {0};
        if (s->start_latest)
            buf_printf(&sq, "SELECT pgtrickle.relay_start_offset($1, $2,"
                            " (SELECT COALESCE(max(id), 0) FROM pgtrickle.%s), $3)", qt);
        else
            buf_puts(&sq, "SELECT pgtrickle.relay_start_offset($1, $2, 0, $3)");
        const char *p3[3] = {w->opts->group_id, w->cfg.name, w->worker_id};
        r = pg_query(c, sq.data, 3, p3, err, errlen);
        buf_free(&sq);
        free(qt);
        if (!r)
            return -1;
        s->offset = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        PQclear(r);
    }
    if (pg_exec(c, "LISTEN pgtrickle_outbox_new", 0, NULL, err, errlen) < 0)
        return -1;
    s->read_pos = s->offset;
    publish_position(s);
    log_debug(w->cfg.name, "reading pgtrickle.%s after id %" PRId64, s->outbox_table, s->offset);
    return 0;
}

/* ---- waiting for work ------------------------------------------------------ */

/* Drain NOTIFYs already received. Returns 1 if any, 0 none, -1 connection lost. */
static int drain_notifies(PGconn *c)
{
    int got = 0;
    if (!PQconsumeInput(c))
        return -1;
    PGnotify *n;
    while ((n = PQnotifies(c)) != NULL) {
        got = 1;
        PQfreemem(n);
    }
    return got;
}

/* Wait up to timeout_ms for a NOTIFY. Returns 0 (woken or timed out), -1
 * when the connection broke. */
static int wait_for_work(outbox_source *s, int timeout_ms, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    int got = drain_notifies(c);
    if (got != 0)
        goto out;
    int rc = worker_wait(s->base.w, PQsocket(c), POLLIN, timeout_ms);
    if (rc > 0)
        got = drain_notifies(c);
out:
    if (got < 0) {
        pg_error(c, err, errlen);
        return -1;
    }
    return 0;
}

/* ---- gaps ---------------------------------------------------------------------- */

/* vxids currently holding a write lock on the outbox table or its sequence,
 * as a text[] literal. NULL on error. */
static char *write_lock_holders(outbox_source *s, char *err, size_t errlen)
{
    const char *p[1] = {s->rel_oids};
    PGresult *r = pg_query(s->base.w->pg,
                           "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}')::text"
                           " FROM pg_catalog.pg_locks"
                           " WHERE locktype = 'relation' AND granted AND pid <> pg_backend_pid()"
                           "   AND relation = ANY($1::oid[])"
                           "   AND mode NOT IN ('AccessShareLock', 'RowShareLock')",
                           1, p, err, errlen);
    if (!r)
        return NULL;
    char *v = xstrdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Have all transactions recorded at the gap ended? 1 yes, 0 no, -1 error. */
static int gap_holders_gone(outbox_source *s, char *err, size_t errlen)
{
    if (!s->gap_holders)
        return 0;
    if (strcmp(s->gap_holders, "{}") == 0)
        return 1;
    const char *p[1] = {s->gap_holders};
    PGresult *r = pg_query(s->base.w->pg,
                           "SELECT count(*) FROM pg_catalog.pg_locks"
                           " WHERE virtualtransaction = ANY($1::text[])",
                           1, p, err, errlen);
    if (!r)
        return -1;
    int gone = strcmp(PQgetvalue(r, 0, 0), "0") == 0;
    PQclear(r);
    return gone;
}

/* ---- decoding -------------------------------------------------------------------- */

typedef struct row_ctx {
    outbox_source *s;
    relay_batch *b;
    int64_t id;
    const char *refresh_id;
    int64_t index;
} row_ctx;

static relay_msg *new_event(row_ctx *rc, relay_op op, int full_refresh)
{
    relay_msg *m = batch_add(rc->b);
    m->dedup_key = arena_printf(&rc->b->arena, "%s:%" PRId64 ":%" PRId64, rc->s->outbox_table,
                                rc->id, rc->index++);
    m->op = op;
    m->is_full_refresh = full_refresh;
    m->outbox_id = rc->id;
    m->refresh_id = rc->refresh_id;
    m->stream_table = rc->s->stream_table;
    m->schema = "pgtrickle";
    m->table = rc->s->stream_table;
    return m;
}

/* The JSON value s[0..n) as the message's payload: a compact copy in the
 * batch arena (payloads arrive as jsonb::text, already valid JSON). */
static void set_payload_slice(relay_batch *b, relay_msg *m, const char *s, size_t n)
{
    char *dst = arena_alloc(&b->arena, n + 1);
    size_t len = json_compact_into(dst, s, n);
    dst[len] = '\0';
    m->payload = dst;
    m->payload_len = len;
}

static void reject(row_ctx *rc, const char *raw, const char *why)
{
    relay_msg *m = new_event(rc, OP_EVENT, 0);
    if (raw) {
        m->payload = arena_strdup(&rc->b->arena, raw);
        m->payload_len = strlen(raw);
    }
    m->state = MSG_REJECTED;
    m->error = arena_strdup(&rc->b->arena, why);
}

/* One event per element of the array s[0..n). -1 when it is malformed. */
static int emit_rows(row_ctx *rc, const char *s, size_t n, relay_op op, int full_refresh)
{
    size_t pos = 0, off, len;
    int rc2;
    while ((rc2 = json_array_next(s, n, &pos, &off, &len)) == 1) {
        relay_msg *m = new_event(rc, op, full_refresh);
        set_payload_slice(rc->b, m, s + off, len);
    }
    return rc2;
}

static void refresh_event(row_ctx *rc, int full, int64_t ins, int64_t del)
{
    relay_msg *m = new_event(rc, OP_REFRESH, full);
    m->payload = arena_printf(&rc->b->arena,
                              "{\"inserted_count\":%" PRId64 ",\"deleted_count\":%" PRId64 "}",
                              ins, del);
    m->payload_len = strlen(m->payload);
}

static int key_is(const char *k, size_t kl, const char *name)
{
    return kl == strlen(name) && memcmp(k, name, kl) == 0;
}

/* Decode one inline outbox row (payload = jsonb::text) into events.
 * Returns 1 when the row is a claim-check row (nothing emitted), 0 otherwise.
 * An undecodable payload becomes one REJECTED event (dead-lettered). */
static int decode_row(row_ctx *rc, const char *payload, size_t plen, int64_t ins, int64_t del,
                      int claim_check, int *full_refresh_out)
{
    *full_refresh_out = 0;
    if (!payload) {
        if (claim_check)
            return 1;
        refresh_event(rc, 0, ins, del);
        return 0;
    }
    size_t start = json_skip_ws(payload, plen, 0);
    const char *p = payload + start;
    size_t n = plen - start;
    while (n && (p[n - 1] == ' ' || p[n - 1] == '\n' || p[n - 1] == '\t' || p[n - 1] == '\r'))
        n--;
    size_t before = rc->b->n;
    int64_t index_before = rc->index; /* a rejected row is one event, index 0 */
    if (n && p[0] == '[') {
        if (claim_check)
            return 1;
        if (json_span(p, n) != n || emit_rows(rc, p, n, OP_SNAPSHOT, 1) < 0) {
            rc->b->n = before;
            rc->index = index_before;
            reject(rc, payload, "undecodable outbox payload: malformed JSON array");
        }
        return 0;
    }
    if (!n || p[0] != '{' || json_span(p, n) != n) {
        reject(rc, payload, "undecodable outbox payload: expected an array or an object");
        return 0;
    }
    /* {"v":1,"inserted":[..],"deleted":[..],"full_refresh"?,"claim_check"?,"refresh_id"?} */
    const char *k;
    size_t kl, off, len, pos = 0;
    size_t ins_off = 0, ins_len = 0, del_off = 0, del_len = 0;
    int version_ok = 0, full = 0, cc = claim_check, r;
    while ((r = json_object_next(p, n, &pos, &k, &kl, &off, &len)) == 1) {
        const char *v = p + off;
        if (key_is(k, kl, "v"))
            version_ok = len == 1 && v[0] == '1';
        else if (key_is(k, kl, "inserted"))
            ins_off = off, ins_len = len;
        else if (key_is(k, kl, "deleted"))
            del_off = off, del_len = len;
        else if (key_is(k, kl, "full_refresh"))
            full = len == 4 && memcmp(v, "true", 4) == 0;
        else if (key_is(k, kl, "claim_check"))
            cc |= len == 4 && memcmp(v, "true", 4) == 0;
        else if (key_is(k, kl, "refresh_id") && !rc->refresh_id && v[0] == '"' && len >= 2)
            rc->refresh_id = arena_strndup(&rc->b->arena, v + 1, len - 2);
    }
    if (r < 0) {
        reject(rc, payload, "undecodable outbox payload: malformed JSON object");
        return 0;
    }
    if (!version_ok) {
        reject(rc, payload, "undecodable outbox payload: unsupported version (expected \"v\": 1)");
        return 0;
    }
    *full_refresh_out = full;
    if (cc)
        return 1;
    if ((ins_len && p[ins_off] != '[') || (del_len && p[del_off] != '[')) {
        reject(rc, payload, "undecodable outbox payload: \"inserted\"/\"deleted\" must be arrays");
        return 0;
    }
    if ((ins_len && emit_rows(rc, p + ins_off, ins_len, full ? OP_SNAPSHOT : OP_INSERT, full) < 0) ||
        (del_len && emit_rows(rc, p + del_off, del_len, OP_DELETE, full) < 0)) {
        rc->b->n = before;
        rc->index = index_before;
        reject(rc, payload, "undecodable outbox payload: malformed row array");
        return 0;
    }
    if (rc->b->n == before)
        refresh_event(rc, full, ins, del); /* an empty delta still reaches the sink */
    return 0;
}

int outbox_decode_payload(relay_batch *b, const char *outbox_table, const char *stream_table,
                          int64_t id, const char *refresh_id, const char *payload, size_t plen,
                          int64_t ins, int64_t del, int claim_check, int *full_refresh)
{
    /* decode_row only reads these two names of its source. */
    outbox_source s = {.outbox_table = (char *)outbox_table, .stream_table = (char *)stream_table};
    row_ctx rc = {.s = &s, .b = b, .id = id, .refresh_id = refresh_id};
    return decode_row(&rc, payload, plen, ins, del, claim_check, full_refresh);
}

/* ---- claim-check streaming ----------------------------------------------------- */

static int cc_begin(outbox_source *s, int64_t id, int full, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%" PRId64, id);
    const char *p[1] = {idtxt};
    if (pg_exec(c, "BEGIN", 0, NULL, err, errlen) < 0)
        return -1;
    if (pg_exec(c, s->cursor_sql, 1, p, err, errlen) < 0) {
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    s->cc_active = 1;
    s->cc_id = id;
    s->cc_next_index = 0;
    s->cc_full_refresh = full;
    s->cc_done = 0;
    log_debug(s->base.w->cfg.name, "streaming claim-check rows of outbox id %" PRId64, id);
    return 0;
}

static int commit_offset(outbox_source *s, int64_t id, char *err, size_t errlen);

/* Every row of the claim-check stream is confirmed: consume the delta rows,
 * commit the offset and end the transaction, all at once. */
static int cc_finish(outbox_source *s, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%" PRId64, s->cc_id);
    const char *p[2] = {s->stream_table, idtxt};
    s->cc_active = 0;
    if (pg_exec(c, "CLOSE relay_claim_check", 0, NULL, err, errlen) < 0 ||
        pg_exec(c, "SELECT pgtrickle.outbox_rows_consumed($1, $2)", 2, p, err, errlen) < 0 ||
        commit_offset(s, s->cc_id, err, errlen) < 0 ||
        pg_exec(c, "COMMIT", 0, NULL, err, errlen) < 0) {
        PQclear(PQexec(c, "ROLLBACK"));
        return -1;
    }
    s->offset = s->read_pos = s->cc_id;
    s->full_last_poll = 1;
    publish_position(s);
    log_debug(s->base.w->cfg.name, "claim-check rows of outbox id %" PRId64 " relayed and consumed",
              s->cc_id);
    return 0;
}

static int cc_fetch(outbox_source *s, relay_batch *b, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    char sql[64];
    snprintf(sql, sizeof sql, "FETCH %" PRId64 " FROM relay_claim_check", s->batch_size);
    PGresult *r = pg_query(c, sql, 0, NULL, err, errlen);
    if (!r) {
        PQclear(PQexec(c, "ROLLBACK"));
        s->cc_active = 0;
        return -1;
    }
    int n = PQntuples(r);
    row_ctx rc = {.s = s, .b = b, .id = s->cc_id, .index = s->cc_next_index};
    for (int i = 0; i < n; i++) {
        int is_delete = strcmp(PQgetvalue(r, i, 0), "DELETE") == 0;
        relay_op op = is_delete ? OP_DELETE : (s->cc_full_refresh ? OP_SNAPSHOT : OP_INSERT);
        relay_msg *m = new_event(&rc, op, s->cc_full_refresh);
        set_payload_slice(b, m, PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1));
    }
    PQclear(r);
    s->cc_next_index = rc.index;
    if (n < s->batch_size)
        s->cc_done = 1;
    if (n == 0 && s->cc_next_index == 0) {
        /* A claim-check row without delta rows: still one event. */
        relay_msg *m = new_event(&rc, OP_REFRESH, s->cc_full_refresh);
        m->payload = "{\"inserted_count\":0,\"deleted_count\":0,\"claim_check\":true}";
        m->payload_len = strlen(m->payload);
        s->cc_next_index = rc.index;
    }
    b->ack_pos = s->cc_done ? s->cc_id : 0;
    s->full_last_poll = 1;
    if (b->n == 0 && s->cc_done) {
        /* The previous chunk held the last rows and was confirmed: nothing
         * is left to publish, so the row is finished here. */
        if (cc_finish(s, err, errlen) < 0)
            return -1;
        return 0;
    }
    return (int)b->n;
}

/* Read the next rows after the offset, as (id, inserted_count,
 * deleted_count, is_claim_check, payload, refresh_id, created_at ms). */
static PGresult *fetch_rows(outbox_source *s, char *err, size_t errlen)
{
    char off[24], lim[24], vis[24];
    snprintf(off, sizeof off, "%" PRId64, s->read_pos);
    snprintf(lim, sizeof lim, "%" PRId64, s->batch_size);
    if (!s->group) {
        const char *p[2] = {off, lim};
        return pg_query(s->base.w->pg, s->select_sql, 2, p, err, errlen);
    }
    snprintf(vis, sizeof vis, "%" PRId64, s->visibility_seconds);
    const char *p[4] = {s->group, s->consumer_id, lim, vis};
    s->last_lease_ms = now_mono_ms();
    return pg_query(s->base.w->pg,
                    "SELECT outbox_id, inserted_count, deleted_count, is_claim_check, payload::text,"
                    " NULL::text, (extract(epoch from created_at) * 1000)::bigint"
                    " FROM pgtrickle.poll_outbox($1, $2, $3::int, $4::int)",
                    4, p, err, errlen);
}

/* Group mode, idle: tell pg_trickle the consumer is alive. */
static void group_heartbeat(outbox_source *s)
{
    char err[256];
    int64_t now = now_mono_ms();
    if (!s->group || now - s->last_heartbeat_ms < 10000)
        return;
    s->last_heartbeat_ms = now;
    const char *p[2] = {s->group, s->consumer_id};
    if (pg_exec(s->base.w->pg, "SELECT pgtrickle.consumer_heartbeat($1, $2)", 2, p, err,
                sizeof err) < 0)
        log_debug(s->base.w->cfg.name, "consumer_heartbeat failed: %s", err);
}

/* Group mode, publishing: keep the polled batch's lease from expiring. */
static void ob_idle(relay_source *base)
{
    outbox_source *s = (outbox_source *)base;
    char err[256];
    int64_t now = now_mono_ms();
    if (!s->group || pg_broken(base->w->pg) || now - s->last_lease_ms < s->visibility_seconds * 500)
        return;
    s->last_lease_ms = now;
    char ext[24];
    snprintf(ext, sizeof ext, "%" PRId64, s->visibility_seconds);
    const char *p[3] = {s->group, s->consumer_id, ext};
    if (pg_exec(base->w->pg, "SELECT pgtrickle.extend_lease($1, $2, $3::int)", 3, p, err,
                sizeof err) < 0)
        log_debug(base->w->cfg.name, "extend_lease failed: %s", err);
}

/* ---- poll ------------------------------------------------------------------------- */

static int ob_poll_rows(outbox_source *s, relay_batch *b, size_t max, char *err, size_t errlen);

static int ob_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    outbox_source *s = (outbox_source *)base;
    int n = ob_poll_rows(s, b, max, err, errlen);
    if (n > 0)
        s->unacked++;
    return n;
}

/* Simple mode, no claim-check row being streamed, a full batch last time
 * (more rows are waiting) and no gap: the next poll reads on from read_pos
 * at once, and ack() of the batch before it commits that batch's own last
 * id. Group mode never reads ahead: poll_outbox() leases from the committed
 * offset. */
static int ob_can_read_ahead(relay_source *base)
{
    outbox_source *s = (outbox_source *)base;
    return !s->group && !s->cc_active && s->full_last_poll && !s->gap_id;
}

static int ob_poll_rows(outbox_source *s, relay_batch *b, size_t max, char *err, size_t errlen)
{
    relay_source *base = &s->base;
    if (s->cc_active)
        return cc_fetch(s, b, err, errlen);

    if (!s->full_last_poll) {
        int wait_ms = (int)s->poll_interval_ms;
        if (s->gap_id) {
            /* A gap's holders are still running: look again soon. */
            int gap_wait = 10 << (s->gap_waits < 6 ? s->gap_waits : 6);
            if (gap_wait < wait_ms)
                wait_ms = gap_wait;
            s->gap_waits++;
        }
        if (wait_for_work(s, wait_ms, err, errlen) < 0)
            return -1;
        if (worker_stopping(base->w))
            return 0;
    }

    /* Check the pending gap before reading, so a holder that committed is
     * visible to the read that follows. */
    int gap_skippable = 0;
    if (s->gap_id) {
        gap_skippable = gap_holders_gone(s, err, errlen);
        if (gap_skippable < 0)
            return -1;
    }
    PGresult *r = fetch_rows(s, err, errlen);
    if (!r)
        return -1;
    int rows = PQntuples(r);
    s->full_last_poll = rows >= s->batch_size;
    int64_t expected = s->read_pos + 1;
    int64_t last = 0, last_created = 0;
    int stopped_at_gap = 0, stopped_at_cc = 0;
    for (int i = 0; i < rows && b->n < max; i++) {
        int64_t id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (id != expected) {
            if (s->gap_id == expected && gap_skippable) {
                log_debug(base->w->cfg.name, "outbox ids %" PRId64 "..%" PRId64 " will never "
                          "commit (rolled back): skipping the gap", expected, id - 1);
            } else {
                if (s->gap_id != expected) {
                    free(s->gap_holders);
                    s->gap_holders = write_lock_holders(s, err, errlen);
                    if (!s->gap_holders) {
                        PQclear(r);
                        return -1;
                    }
                    s->gap_id = expected;
                    s->gap_waits = 0;
                    log_debug(base->w->cfg.name, "outbox id %" PRId64 " not committed yet "
                              "(id %" PRId64 " is): waiting for %s", expected, id,
                              s->gap_holders);
                }
                stopped_at_gap = 1;
                break;
            }
        }
        if (s->gap_id && id >= s->gap_id) {
            free(s->gap_holders);
            s->gap_holders = NULL;
            s->gap_id = 0;
            s->gap_waits = 0;
        }
        int claim = strcmp(PQgetvalue(r, i, 3), "t") == 0;
        const char *payload = PQgetisnull(r, i, 4) ? NULL : PQgetvalue(r, i, 4);
        row_ctx rc = {.s = s, .b = b, .id = id,
                      .refresh_id = PQgetisnull(r, i, 5) ? NULL
                                                         : arena_strdup(&b->arena, PQgetvalue(r, i, 5))};
        size_t before = b->n;
        int full = 0;
        int is_cc = decode_row(&rc, payload, payload ? (size_t)PQgetlength(r, i, 4) : 0,
                               strtoll(PQgetvalue(r, i, 1), NULL, 10),
                               strtoll(PQgetvalue(r, i, 2), NULL, 10), claim, &full);
        if (is_cc) {
            b->n = before;
            if (before > 0 || s->unacked) {
                /* Deliver what we have; stream this row next, once every
                 * earlier batch is acked (its transaction commits the
                 * offset, so none may be pending when it begins). */
                stopped_at_cc = 1;
                break;
            }
            PQclear(r);
            if (cc_begin(s, id, full, err, errlen) < 0)
                return -1;
            return cc_fetch(s, b, err, errlen);
        }
        last = id;
        last_created = strtoll(PQgetvalue(r, i, 6), NULL, 10);
        expected = id + 1;
    }
    PQclear(r);
    if (rows == 0)
        group_heartbeat(s);
    if (stopped_at_gap)
        s->full_last_poll = 0;
    else if (b->n >= max || stopped_at_cc)
        s->full_last_poll = 1;
    if (last)
        s->read_pos = last;
    b->ack_pos = last;
    b->ack_aux = last_created ? now_wall_ms() - last_created : 0; /* lag, ms */
    return (int)b->n;
}

/* ---- ack ------------------------------------------------------------------------------ */

static int commit_offset(outbox_source *s, int64_t id, char *err, size_t errlen)
{
    relay_worker *w = s->base.w;
    char idtxt[24];
    snprintf(idtxt, sizeof idtxt, "%" PRId64, id);
    if (s->group) {
        const char *g[3] = {s->group, s->consumer_id, idtxt};
        return pg_exec(w->pg, "SELECT pgtrickle.commit_offset($1, $2, $3)", 3, g, err, errlen);
    }
    const char *p[4] = {w->opts->group_id, w->cfg.name, idtxt, w->worker_id};
    return pg_exec(w->pg, "SELECT pgtrickle.relay_commit_offset($1, $2, $3, $4)", 4, p, err, errlen);
}

static int ob_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    outbox_source *s = (outbox_source *)base;
    if (s->unacked > 0)
        s->unacked--;
    if (s->cc_active) {
        if (!s->cc_done)
            return 0; /* more chunks of this row follow; the row is acked as a whole */
        return cc_finish(s, err, errlen);
    }
    if (b->ack_pos <= s->offset)
        return 0;
    if (commit_offset(s, b->ack_pos, err, errlen) < 0)
        return -1;
    s->offset = b->ack_pos;
    if (base->w->stats)
        atomic_store(&base->w->stats->lag_ms, b->ack_aux);
    publish_position(s);
    return 0;
}

static void ob_release(relay_source *base, relay_batch *b)
{
    outbox_source *s = (outbox_source *)base;
    (void)b;
    if (s->cc_active && !pg_broken(base->w->pg))
        PQclear(PQexec(base->w->pg, "ROLLBACK"));
    s->cc_active = 0;
}

static void ob_position(relay_source *base, relay_buf *out)
{
    outbox_source *s = (outbox_source *)base;
    buf_printf(out, "{\"last_outbox_id\":%" PRId64 "}", s->offset);
}

static void ob_destroy(relay_source *base)
{
    outbox_source *s = (outbox_source *)base;
    free(s->outbox);
    free(s->outbox_table);
    free(s->stream_table);
    free(s->delta_table);
    free(s->rel_oids);
    free(s->select_sql);
    free(s->cursor_sql);
    free(s->gap_holders);
    free(s->group);
    free(s->consumer_id);
    free(s->auto_offset_reset);
    free(s);
}

const relay_source_ops relay_source_outbox_ops = {
    .type = "outbox",
    .create = ob_create,
    .open = ob_open,
    .poll = ob_poll,
    .ack = ob_ack,
    .can_read_ahead = ob_can_read_ahead,
    .release = ob_release,
    .idle = ob_idle,
    .position = ob_position,
    .destroy = ob_destroy,
};
