/*
 * cdc.c - forward source streaming logical replication (pgoutput) of
 * ordinary tables (SPEC sections 5 and 6, "cdc"). docs/backends/cdc.md is
 * the user-facing description; this comment is the design.
 *
 * Connections.  Besides the worker's own connection w->pg (which holds the
 * pipeline's advisory lock and is used here for catalog checks, the
 * heartbeat, the lag query and the slot bookkeeping) the source opens:
 *   repl  a replication connection (replication=database) that creates the
 *         slot over the protocol and streams it with START_REPLICATION;
 *   snap  only during an initial snapshot: a REPEATABLE READ transaction
 *         that imported the slot's exported snapshot.
 *
 * Slot life cycle (open()).
 *   slot exists          -> stream it from its confirmed_flush_lsn
 *                           (START_REPLICATION ... 0/0: never from
 *                           pg_current_wal_lsn(), which skips un-acked
 *                           transactions)
 *   missing, snapshot "never"
 *                        -> CREATE_REPLICATION_SLOT ... LOGICAL pgoutput
 *                           (SNAPSHOT 'nothing'), then stream
 *   missing, snapshot "initial"
 *                        -> CREATE_REPLICATION_SLOT "<slot>_snap" TEMPORARY
 *                           LOGICAL pgoutput (SNAPSHOT 'export'); the snap
 *                           connection imports the snapshot; every published
 *                           table is read (op "snapshot", keyset pagination
 *                           on the primary key, a cursor for tables without
 *                           one) and delivered; only when the last snapshot
 *                           batch is confirmed is the temporary slot copied
 *                           into the real one (pg_copy_logical_replication_
 *                           slot). The copy starts exactly at the snapshot's
 *                           consistent point, so the live stream neither
 *                           misses nor repeats a row, and the slot's mere
 *                           existence is the durable "snapshot done" mark: a
 *                           crash mid-snapshot drops the temporary slot with
 *                           its connection and the next start snapshots again.
 * The relay records each slot's confirmed LSN in relay_consumer_offsets
 * (pipeline_id "cdc_slot:<slot>"). A missing slot with a recorded LSN was
 * dropped behind the relay's back: that is logged as an error naming the
 * LSN after which changes were lost, then the slot is recreated (and, with
 * snapshot "initial", a new snapshot repairs the consumer's state) when
 * create_slot is true; otherwise open() fails with that error.
 *
 * Streaming (poll()).  One PQconsumeInput() when libpq has no complete
 * message buffered, then PQgetCopyData(async) until it has none, poll() on
 * the socket (worker_wait) when the kernel has nothing either. A batch ends
 * when it holds batch_size events or the stream has nothing more right now;
 * a transaction of a million rows is therefore delivered in many batches
 * while it is still being received, in bounded memory. Events are decoded
 * straight from libpq's buffer into the batch arena.
 *
 * Acknowledgement.  Each poll records in its batch (relay_batch.ack_pos)
 * the end LSN of the last Commit read so far. Batches are acked in order,
 * so when ack(k) runs every event of every transaction whose Commit was
 * read by the end of poll k is confirmed (the Commit follows all its
 * events); ack() advances `confirmed` to that batch's ack_pos. That holds
 * also while the worker reads ahead (polls k+1 before it acks k; only when
 * poll k filled its batch, outside snapshots and backfills). A poll that
 * returns no event while no batch is unacked advances `confirmed` at once
 * (the transactions it read had no events for us: filtered tables,
 * heartbeats).
 * Standby status updates carry write = flush = apply = confirmed, never
 * more: after every ack that advanced it, whenever status_interval elapsed
 * (checked in poll() and in idle(), which the worker calls at least once a
 * second while it publishes or retries), and at once when a keepalive asks
 * for a reply. status_interval is clamped to a third of the server's
 * wal_sender_timeout so a slow or dead sink never gets the walsender killed.
 *
 * Heartbeat.  When the stream carried no data for heartbeat_interval, the
 * source runs pg_logical_emit_message(true, 'pgtrickle_relay_heartbeat', <pipeline>)
 * on w->pg. The transactional message comes back as Begin/Message/Commit; the
 * Message is not published, and its Commit advances `confirmed`, so an idle
 * slot on a busy server does not pin WAL.
 *
 * Events.  See docs/backends/cdc.md: payload/old/source, dedup keys (one
 * namespace per event kind, never shared: "Dedup keys" there)
 * {commit_lsn}:{index_of_change_in_transaction} for changes and
 * transactional messages (the index counts every change of the
 * transaction, including those of tables filtered out, so it is stable
 * across restarts), message:{lsn} for non-transactional messages,
 * snapshot:{lsn}:{schema}.{table}:{n} for snapshot rows; unchanged TOAST columns omitted and listed in
 * source.unchanged_toast, TRUNCATE one event per table, logical messages
 * op "event" with {table} = the message prefix. A message that cannot be
 * decoded becomes a REJECTED event (dead-lettered by the worker), never a
 * silent drop.
 *
 * Backfills.  cdc_backfill.c (hooks in cdc_ext.h) re-sends a table's rows
 * on request (pgtrickle.request_backfill) as snapshot events interleaved
 * with this stream by the watermark algorithm: stream_poll() lets it read a
 * chunk before reading the stream, tells it every Begin, change, TRUNCATE
 * and logical message, and stops reading the stream while a chunk whose
 * high watermark was reached waits for room in the batch; cdc_ack() lets it
 * store the progress of a confirmed chunk.
 *
 * NATS extras.  With a NATS sink, cdc_nats.c (hooks in cdc_ext.h) puts the
 * table schemas into the KV bucket "schemas" and serves on-demand snapshots
 * (snapshot.request.{table}) on a thread and connections of its own; it
 * never touches the slot or the acknowledged LSN.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../config.h"
#include "../log.h"
#include "../pg.h"
#include "../worker.h"
#include "cdc_ext.h"
#include "pgoutput.h"
#include "source.h"

#define ERRLEN 512
#define POLL_WAIT_MS 1000
#define LAG_INTERVAL_MS 5000
#define OFFSET_INTERVAL_MS 10000
#define HEARTBEAT_PREFIX "pgtrickle_relay_heartbeat"
#define CDC_DEFAULT_BATCH 5000

/* ---- config ------------------------------------------------------------------- */

static int cfg_duration(const json_t *cfg, const char *key, int64_t def, int64_t min, int64_t max,
                        int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    int64_t ms = -1;
    if (json_is_integer(v))
        ms = (int64_t)json_integer_value(v) * 1000;
    else if (json_is_string(v) && parse_duration_ms(json_string_value(v), &ms) < 0)
        ms = -1;
    if (ms < 0 || (!json_is_integer(v) && !json_is_string(v))) {
        snprintf(err, errlen, "source.%s: expected a duration such as \"10s\", \"500ms\" or a "
                 "number of seconds", key);
        return -1;
    }
    if (ms != 0 && (ms < min || ms > max)) {
        snprintf(err, errlen, "source.%s: must be 0 or between %" PRId64 " ms and %" PRId64 " s",
                 key, min, max / 1000);
        return -1;
    }
    *out = ms;
    return 0;
}

static relay_source *cdc_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "type", "publication", "slot", "tables", "create_slot", "snapshot", "heartbeat_interval",
        "status_interval", "proto_version", "batch_size", "snapshot_chunk_rows", "snapshot_stream",
        "backfill_chunk_rows", NULL};
    const char *pub, *slot, *snapshot;
    int create_slot;
    int64_t proto, hb, st, batch;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "publication", &pub, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "slot", &slot, err, errlen) < 0 ||
        cfg_bool(cfg, "source", "create_slot", 1, &create_slot, err, errlen) < 0 ||
        cfg_str(cfg, "source", "snapshot", "never", &snapshot, err, errlen) < 0 ||
        cfg_int(cfg, "source", "proto_version", 1, 1, 1000, &proto, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", CDC_DEFAULT_BATCH, 1, 100000, &batch, err, errlen) < 0 ||
        cfg_duration(cfg, "heartbeat_interval", 10000, 100, 86400000, &hb, err, errlen) < 0 ||
        cfg_duration(cfg, "status_interval", 10000, 100, 10000, &st, err, errlen) < 0)
        return NULL;
    if (proto != 1) {
        snprintf(err, errlen, "source.proto_version: only protocol version 1 is supported (got "
                 "%" PRId64 "); large transactions are streamed to the sink in batches anyway",
                 proto);
        return NULL;
    }
    if (st == 0) {
        snprintf(err, errlen, "source.status_interval: must be between 100 ms and 10 s");
        return NULL;
    }
    size_t sl = strlen(slot);
    if (sl > 63 || strspn(slot, "abcdefghijklmnopqrstuvwxyz0123456789_") != sl) {
        snprintf(err, errlen, "source.slot: \"%s\" is not a valid replication slot name (1-63 "
                 "lower-case letters, digits or underscores)", slot);
        return NULL;
    }
    int initial;
    if (strcmp(snapshot, "never") == 0) {
        initial = 0;
    } else if (strcmp(snapshot, "initial") == 0) {
        initial = 1;
    } else {
        snprintf(err, errlen, "source.snapshot: expected \"never\" or \"initial\", got \"%s\"",
                 snapshot);
        return NULL;
    }
    json_t *tables = json_object_get(cfg, "tables");
    if (tables && !json_is_null(tables)) {
        if (!json_is_array(tables) || json_array_size(tables) == 0) {
            snprintf(err, errlen, "source.tables: expected a non-empty array of table names "
                     "(\"name\" or \"schema.name\")");
            return NULL;
        }
        size_t i;
        json_t *t;
        json_array_foreach(tables, i, t) {
            if (!json_is_string(t) || json_string_length(t) == 0) {
                snprintf(err, errlen, "source.tables[%zu]: expected a table name (\"name\" or "
                         "\"schema.name\")", i);
                return NULL;
            }
        }
    }
    cdc_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    /* A change stream is fastest in big batches (one sink confirmation and
     * one fsync per batch). */
    s->base.default_batch = CDC_DEFAULT_BATCH;
    s->base.default_subject = RELAY_DEFAULT_CDC_SUBJECT;
    s->publication = xstrdup(pub);
    s->slot = xstrdup(slot);
    s->create_slot = create_slot;
    s->snapshot_initial = initial;
    s->heartbeat_ms = hb;
    s->status_cfg_ms = st;
    s->status_ms = st;
    snprintf(s->marker_id, sizeof s->marker_id, "cdc_slot:%s", slot);
    if (tables && json_is_array(tables)) {
        s->ntables = json_array_size(tables);
        s->tables = xcalloc(s->ntables, sizeof *s->tables);
        for (size_t i = 0; i < s->ntables; i++)
            s->tables[i] = xstrdup(json_string_value(json_array_get(tables, i)));
    }
    if (cdc_bf_create(s, cfg, err, errlen) < 0 || cdc_ext_create(s, err, errlen) < 0) {
        relay_source_cdc_ops.destroy(&s->base);
        return NULL;
    }
    return &s->base;
}

/* ---- small helpers ---------------------------------------------------------- */

static const char *pname(cdc_source *s)
{
    return s->base.w->cfg.name;
}

/* Does `schema`.`name` pass the `tables` filter? */
int cdc_table_selected(const cdc_source *s, const char *schema, const char *name)
{
    if (!s->ntables)
        return 1;
    size_t sl = strlen(schema);
    for (size_t i = 0; i < s->ntables; i++) {
        const char *t = s->tables[i];
        const char *dot = strchr(t, '.');
        if (!dot) {
            if (strcmp(t, name) == 0)
                return 1;
        } else if ((size_t)(dot - t) == sl && memcmp(t, schema, sl) == 0 &&
                   strcmp(dot + 1, name) == 0) {
            return 1;
        }
    }
    return 0;
}

/* Append a table or schema name to a dedup key: as is when it is made of
 * [a-z0-9_] only, else double-quoted with '"' doubled (as quote_ident
 * does), so "a.b".c and a."b.c" stay two keys. */
void cdc_key_ident(relay_buf *out, const char *name)
{
    size_t n = strlen(name);
    if (n && strspn(name, "abcdefghijklmnopqrstuvwxyz0123456789_") == n) {
        buf_append(out, name, n);
        return;
    }
    buf_putc(out, '"');
    for (size_t i = 0; i < n; i++) {
        if (name[i] == '"')
            buf_putc(out, '"');
        buf_putc(out, name[i]);
    }
    buf_putc(out, '"');
}

static void publish_position(cdc_source *s)
{
    if (!s->base.w->stats)
        return;
    char conf[24], recv[24];
    pgo_lsn_format(s->confirmed, conf, sizeof conf);
    pgo_lsn_format(s->server_wal_end > s->received ? s->server_wal_end : s->received, recv,
                   sizeof recv);
    relay_buf p = {0};
    buf_puts(&p, "{\"slot\":");
    buf_put_json_str(&p, s->slot, strlen(s->slot));
    buf_puts(&p, ",\"publication\":");
    buf_put_json_str(&p, s->publication, strlen(s->publication));
    buf_printf(&p, ",\"phase\":\"%s\",\"confirmed_lsn\":\"%s\",\"received_lsn\":\"%s\"",
               s->phase == PHASE_SNAPSHOT ? "snapshot" : "streaming", conf, recv);
    if (s->phase == PHASE_SNAPSHOT) {
        char sl[24];
        pgo_lsn_format(s->snap_lsn, sl, sizeof sl);
        buf_printf(&p, ",\"snapshot\":{\"lsn\":\"%s\",\"tables_done\":%zu,\"tables\":%zu,"
                   "\"rows\":%" PRIu64 "}", sl, s->snap_cur, s->nsnap, s->snap_rows);
    }
    cdc_bf_position(s, &p);
    buf_puts(&p, ",\"events\":{");
    static const char *const names[CDC_OPS] = {"insert", "update", "delete", "truncate",
                                               "snapshot", "event"};
    for (int i = 0; i < CDC_OPS; i++)
        buf_printf(&p, "%s\"%s\":%" PRIu64, i ? "," : "", names[i], s->ops[i]);
    buf_puts(&p, "}}");
    stats_set_position(s->base.w->stats, p.data);
    buf_free(&p);
}

/* ---- connections ---------------------------------------------------------------- */

static PGconn *connect_replication(cdc_source *s, char *err, size_t errlen)
{
    char app[96];
    snprintf(app, sizeof app, "pgtrickle-relay %.50s cdc", pname(s));
    char e[ERRLEN];
    PGconn *c = pg_connect_params(s->base.w->opts->postgres_url, app, "database", e, sizeof e);
    if (!c)
        snprintf(err, errlen, "replication connection: %s", e);
    return c;
}

static void close_snapshot(cdc_source *s)
{
    if (s->snap) {
        PQfinish(s->snap);
        s->snap = NULL;
    }
    for (size_t i = 0; i < s->nsnap; i++) {
        snap_table *t = &s->snaps[i];
        free(t->schema);
        free(t->name);
        free(t->sql_first);
        free(t->sql_next);
        for (int k = 0; k < t->npk; k++)
            free(t->last_key[k]);
        free(t->last_key);
        free(t->col_types);
        for (int k = 0; t->row_cols && k < t->ncols; k++)
            free((char *)t->row_cols[k].name);
        free(t->row_cols);
    }
    free(s->snaps);
    s->snaps = NULL;
    s->nsnap = s->snap_cur = 0;
    free(s->tmp_slot);
    s->tmp_slot = NULL;
}

/* Tell the server what is confirmed. Returns 0, or -1 when the connection
 * is gone (the next poll notices and reports). */
static int send_status(cdc_source *s, int force)
{
    if (!s->repl || !s->streaming)
        return 0;
    int64_t now = now_mono_ms();
    if (!force && s->confirmed == s->status_sent && now - s->status_at_ms < s->status_ms)
        return 0;
    uint8_t msg[34];
    pgo_standby_status(msg, s->confirmed, pgo_now_us(), 0);
    if (PQputCopyData(s->repl, (const char *)msg, sizeof msg) != 1)
        return -1;
    if (PQflush(s->repl) < 0)
        return -1;
    s->status_sent = s->confirmed;
    s->status_at_ms = now;
    if (s->base.w->stats && s->confirmed)
        atomic_store(&s->base.w->stats->confirmed_lsn, (int64_t)s->confirmed);
    return 0;
}

static void close_replication(cdc_source *s)
{
    if (s->repl) {
        if (s->streaming)
            send_status(s, 1);
        PQfinish(s->repl);
        s->repl = NULL;
    }
    s->streaming = 0;
    s->in_txn = 0;
}

/* Record the slot's confirmed LSN (also the "this slot existed" mark). */
static void record_offset(cdc_source *s, uint64_t lsn)
{
    relay_worker *w = s->base.w;
    char v[24], err[ERRLEN];
    snprintf(v, sizeof v, "%" PRId64, (int64_t)lsn);
    const char *p[4] = {w->opts->group_id, s->marker_id, v, w->worker_id};
    if (pg_exec(w->pg, "SELECT pgtrickle.relay_commit_offset($1, $2, $3::bigint, $4)", 4, p, err,
                sizeof err) < 0)
        log_warn(pname(s), "recording the confirmed LSN of slot %s failed: %s", s->slot, err);
    s->offset_at_ms = now_mono_ms();
    s->offset_lsn = lsn;
}

/* ---- catalog checks (open) ------------------------------------------------------ */

static void free_published(cdc_source *s)
{
    for (size_t i = 0; i < s->npub; i++) {
        free(s->pub[i].schema);
        free(s->pub[i].name);
    }
    free(s->pub);
    s->pub = NULL;
    s->npub = 0;
}

/* The publication must exist; load its tables and check the filter. */
static int check_publication(cdc_source *s, char *err, size_t errlen)
{
    PGconn *c = s->base.w->pg;
    const char *p[1] = {s->publication};
    PGresult *r = pg_query(c, "SELECT pubviaroot, current_database() FROM pg_catalog.pg_publication"
                              " WHERE pubname = $1", 1, p, err, errlen);
    if (!r)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        r = pg_query(c, "SELECT current_database()", 0, NULL, err, errlen);
        snprintf(err, errlen, "source.publication: publication \"%s\" does not exist in database "
                 "\"%s\" (create it: CREATE PUBLICATION %s FOR TABLE ...)", s->publication,
                 r ? PQgetvalue(r, 0, 0) : "?", s->publication);
        PQclear(r);
        return -1;
    }
    s->via_root = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);

    free_published(s);
    r = pg_query(c,
                 "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident,"
                 "       EXISTS (SELECT 1 FROM pg_catalog.pg_index i"
                 "                WHERE i.indrelid = c.oid AND (i.indisprimary OR i.indisreplident)),"
                 "       c.relispartition"
                 "  FROM pg_catalog.pg_publication_tables pt"
                 "  JOIN pg_catalog.pg_namespace n ON n.nspname = pt.schemaname"
                 "  JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = pt.tablename"
                 " WHERE pt.pubname = $1 ORDER BY n.nspname, c.relname",
                 1, p, err, errlen);
    if (!r)
        return -1;
    int n = PQntuples(r);
    s->pub = xcalloc((size_t)n + 1, sizeof *s->pub);
    for (int i = 0; i < n; i++) {
        pub_table *t = &s->pub[s->npub++];
        t->oid = (uint32_t)strtoul(PQgetvalue(r, i, 0), NULL, 10);
        t->schema = xstrdup(PQgetvalue(r, i, 1));
        t->name = xstrdup(PQgetvalue(r, i, 2));
        t->relkind = PQgetvalue(r, i, 3)[0];
        t->replident = PQgetvalue(r, i, 4)[0];
        t->has_key = strcmp(PQgetvalue(r, i, 5), "t") == 0;
        t->is_partition = strcmp(PQgetvalue(r, i, 6), "t") == 0;
    }
    PQclear(r);

    for (size_t i = 0; i < s->ntables; i++) {
        const char *want = s->tables[i];
        int found = 0;
        for (size_t k = 0; k < s->npub && !found; k++) {
            const char *dot = strchr(want, '.');
            if (dot ? (strlen(s->pub[k].schema) == (size_t)(dot - want) &&
                       memcmp(s->pub[k].schema, want, (size_t)(dot - want)) == 0 &&
                       strcmp(s->pub[k].name, dot + 1) == 0)
                    : strcmp(s->pub[k].name, want) == 0)
                found = 1;
        }
        if (!found) {
            snprintf(err, errlen, "source.tables: \"%s\" is not a table of publication \"%s\"%s",
                     want, s->publication,
                     s->via_root ? "" : " (a partitioned table is published under its partitions'"
                                        " names unless publish_via_partition_root is set)");
            return -1;
        }
    }
    for (size_t k = 0; k < s->npub; k++) {
        pub_table *t = &s->pub[k];
        if (!cdc_table_selected(s, t->schema, t->name))
            continue;
        if (t->replident == 'n' || (t->replident != 'f' && !t->has_key))
            log_warn(pname(s), "table %s.%s has no primary key or replica identity: PostgreSQL "
                     "rejects its UPDATE and DELETE while publication %s publishes them; its "
                     "INSERTs (and TRUNCATE) are relayed (set REPLICA IDENTITY FULL or add a "
                     "primary key)", t->schema, t->name, s->publication);
    }
    if (s->npub == 0)
        log_warn(pname(s), "publication %s has no tables yet: nothing to relay until tables "
                 "are added", s->publication);
    return 0;
}

/* Look the slot up. Returns 1 exists (s->confirmed set), 0 missing, -1 error. */
static int check_slot(cdc_source *s, char *err, size_t errlen)
{
    const char *p[1] = {s->slot};
    PGresult *r = pg_query(s->base.w->pg,
                           "SELECT slot_type, coalesce(plugin, ''), coalesce(database, ''),"
                           "       current_database(), coalesce(confirmed_flush_lsn::text, ''),"
                           "       temporary"
                           "  FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                           1, p, err, errlen);
    if (!r)
        return -1;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    const char *type = PQgetvalue(r, 0, 0), *plugin = PQgetvalue(r, 0, 1);
    const char *db = PQgetvalue(r, 0, 2), *mydb = PQgetvalue(r, 0, 3);
    int rc = 1;
    if (strcmp(type, "logical") != 0 || strcmp(plugin, "pgoutput") != 0) {
        snprintf(err, errlen, "source.slot: replication slot \"%s\" exists but is a %s slot%s%s, "
                 "not a logical pgoutput slot", s->slot, type, *plugin ? " for plugin " : "",
                 plugin);
        rc = -1;
    } else if (strcmp(db, mydb) != 0) {
        snprintf(err, errlen, "source.slot: replication slot \"%s\" belongs to database \"%s\", "
                 "not \"%s\" (slot names are shared by the whole server: pick another)", s->slot,
                 db, mydb);
        rc = -1;
    } else if (pgo_lsn_parse(PQgetvalue(r, 0, 4), &s->confirmed) < 0) {
        snprintf(err, errlen, "source.slot: replication slot \"%s\" has no confirmed position "
                 "yet (is it still being created?)", s->slot);
        rc = -1;
    }
    PQclear(r);
    return rc;
}

static int64_t stored_offset(cdc_source *s)
{
    relay_worker *w = s->base.w;
    char err[ERRLEN];
    const char *p[2] = {w->opts->group_id, s->marker_id};
    PGresult *r = pg_query(w->pg, "SELECT pgtrickle.relay_get_offset($1, $2)", 2, p, err,
                           sizeof err);
    if (!r)
        return 0;
    int64_t v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

/* CREATE_REPLICATION_SLOT over the protocol. Returns the result (caller
 * clears): slot_name, consistent_point, snapshot_name, output_plugin. */
static PGresult *create_slot(cdc_source *s, const char *name, int temporary, int export,
                             char *err, size_t errlen)
{
    char *q = pg_quote_ident(s->repl, name);
    relay_buf sql = {0};
    buf_printf(&sql, "CREATE_REPLICATION_SLOT %s%s LOGICAL pgoutput (SNAPSHOT '%s')", q,
               temporary ? " TEMPORARY" : "", export ? "export" : "nothing");
    free(q);
    PGresult *r = PQexec(s->repl, sql.data);
    buf_free(&sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1 || PQnfields(r) < 4) {
        char e[ERRLEN];
        pg_error(s->repl, e, sizeof e);
        snprintf(err, errlen, "creating replication slot \"%s\": %s", name, e);
        PQclear(r);
        return NULL;
    }
    return r;
}

/* ---- initial snapshot ------------------------------------------------------------ */

/* Prepare the keyset (or cursor) statements of one table. */
static int snapshot_prepare_table(cdc_source *s, const pub_table *pt, snap_table *t, char *err,
                                  size_t errlen)
{
    PGconn *c = s->snap;
    char oid[16];
    snprintf(oid, sizeof oid, "%" PRIu32, pt->oid);
    const char *p[2] = {oid, s->publication};
    /* Published columns: the publication's column list (PostgreSQL 15), no
     * dropped or generated columns (pgoutput never sends those). */
    PGresult *r = pg_query(c,
                           CDC_PUBLISHED_COLUMNS_SQL,
                           2, p, err, errlen);
    if (!r)
        return -1;
    relay_buf cols = {0};
    t->ncols = PQntuples(r);
    t->col_types = xcalloc((size_t)t->ncols + 1, sizeof *t->col_types);
    t->row_cols = xcalloc((size_t)t->ncols + 1, sizeof *t->row_cols);
    for (int i = 0; i < t->ncols; i++) {
        buf_printf(&cols, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        t->col_types[i] = (uint32_t)strtoul(PQgetvalue(r, i, 1), NULL, 10);
        t->row_cols[i].name = xstrdup(PQgetvalue(r, i, 2));
        t->row_cols[i].type_oid = t->col_types[i];
        t->row_cols[i].typmod = (int32_t)strtol(PQgetvalue(r, i, 3), NULL, 10);
        t->row_cols[i].key = strcmp(PQgetvalue(r, i, 4), "t") == 0;
    }
    PQclear(r);
    if (t->ncols == 0)
        buf_puts(&cols, "NULL");
    r = pg_query(c, "SELECT coalesce(rowfilter, '') FROM pg_catalog.pg_publication_tables"
                    " WHERE pubname = $2 AND schemaname || '.' || tablename ="
                    " (SELECT n.nspname || '.' || c.relname FROM pg_catalog.pg_class c"
                    "   JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::oid)",
                 2, p, err, errlen);
    if (!r) {
        buf_free(&cols);
        return -1;
    }
    char *filter = xstrdup(PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
    PQclear(r);
    /* Primary key (else the replica identity index) for keyset pagination. */
    r = pg_query(c,
                 "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod)"
                 "  FROM pg_catalog.pg_index i"
                 "  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)"
                 "  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum"
                 " WHERE i.indrelid = $1::oid AND i.indisprimary"
                 " ORDER BY k.ord",
                 1, p, err, errlen);
    if (!r) {
        buf_free(&cols);
        free(filter);
        return -1;
    }
    t->npk = PQntuples(r);
    relay_buf keys = {0}, types = {0}, cmp = {0};
    for (int i = 0; i < t->npk; i++) {
        buf_printf(&keys, "%s%s", i ? ", " : "", PQgetvalue(r, i, 0));
        buf_printf(&cmp, "%s$%d::%s", i ? ", " : "", i + 1, PQgetvalue(r, i, 1));
    }
    PQclear(r);
    char *qs = pg_quote_ident(c, pt->schema), *qn = pg_quote_ident(c, pt->name);
    /* ONLY: inheritance children are published (and read) on their own; a
     * partitioned root read with publish_via_partition_root covers its
     * partitions. */
    const char *only = pt->relkind == 'p' ? "" : "ONLY ";
    relay_buf q = {0};
    if (t->npk > 0) {
        buf_printf(&q, "SELECT %s, %s FROM %s%s.%s WHERE %s%s%s ORDER BY %s LIMIT $1",
                   cols.data, keys.data, only, qs, qn, *filter ? "(" : "", filter,
                   *filter ? ")" : "true", keys.data);
        t->sql_first = xstrdup(q.data);
        buf_clear(&q);
        buf_printf(&q, "SELECT %s, %s FROM %s%s.%s WHERE %s%s%s AND (%s) > (%s) ORDER BY %s LIMIT $%d",
                   cols.data, keys.data, only, qs, qn, *filter ? "(" : "", filter,
                   *filter ? ")" : "true", keys.data, cmp.data, keys.data, t->npk + 1);
        t->sql_next = xstrdup(q.data);
    } else {
        buf_printf(&q, "DECLARE relay_snapshot_%zu NO SCROLL CURSOR FOR SELECT %s FROM %s%s.%s%s%s",
                   s->nsnap, cols.data, only, qs, qn, *filter ? " WHERE " : "", filter);
        t->sql_first = xstrdup(q.data);
        buf_clear(&q);
        buf_printf(&q, "FETCH FORWARD %%zu FROM relay_snapshot_%zu", s->nsnap);
        t->sql_next = xstrdup(q.data);
    }
    t->last_key = xcalloc((size_t)t->npk + 1, sizeof *t->last_key);
    t->schema = xstrdup(pt->schema);
    t->name = xstrdup(pt->name);
    t->oid = pt->oid;
    buf_free(&q);
    buf_free(&keys);
    buf_free(&types);
    buf_free(&cmp);
    buf_free(&cols);
    free(filter);
    free(qs);
    free(qn);
    return 0;
}

/* Create the temporary exporting slot, import its snapshot on a new
 * connection and prepare every selected table. */
static int snapshot_begin(cdc_source *s, char *err, size_t errlen)
{
    relay_worker *w = s->base.w;
    char tmp[64];
    snprintf(tmp, sizeof tmp, "%.58s_snap", s->slot);
    PGresult *r = create_slot(s, tmp, 1, 1, err, errlen);
    if (!r)
        return -1;
    s->tmp_slot = xstrdup(tmp);
    if (pgo_lsn_parse(PQgetvalue(r, 0, 1), &s->snap_lsn) < 0) {
        snprintf(err, errlen, "creating replication slot \"%s\": bad consistent point \"%s\"",
                 tmp, PQgetvalue(r, 0, 1));
        PQclear(r);
        return -1;
    }
    char *snapshot_name = xstrdup(PQgetvalue(r, 0, 2));
    PQclear(r);

    char app[96];
    snprintf(app, sizeof app, "pgtrickle-relay %.50s snapshot", pname(s));
    s->snap = pg_connect(w->opts->postgres_url, app, err, errlen);
    if (!s->snap) {
        free(snapshot_name);
        return -1;
    }
    char *lit = PQescapeLiteral(s->snap, snapshot_name, strlen(snapshot_name));
    relay_buf q = {0};
    buf_printf(&q, "SET TRANSACTION SNAPSHOT %s", lit ? lit : "''");
    PQfreemem(lit);
    free(snapshot_name);
    int rc = pg_exec(s->snap, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY", 0, NULL, err,
                     errlen);
    if (rc == 0)
        rc = pg_exec(s->snap, q.data, 0, NULL, err, errlen);
    buf_free(&q);
    if (rc < 0)
        return -1;

    s->snaps = xcalloc(s->npub + 1, sizeof *s->snaps);
    for (size_t i = 0; i < s->npub; i++) {
        if (!cdc_table_selected(s, s->pub[i].schema, s->pub[i].name))
            continue;
        if (snapshot_prepare_table(s, &s->pub[i], &s->snaps[s->nsnap], err, errlen) < 0)
            return -1;
        s->nsnap++;
    }
    s->snap_cur = 0;
    s->snap_rows = 0;
    s->phase = PHASE_SNAPSHOT;
    char l[24];
    pgo_lsn_format(s->snap_lsn, l, sizeof l);
    log_info(pname(s), "initial snapshot of %zu table(s) at LSN %s (exported snapshot of "
             "temporary slot %s)", s->nsnap, l, tmp);
    return 0;
}

/* Every snapshot event is confirmed: make the real slot from the temporary
 * one, which starts exactly at the snapshot's consistent point. */
static int snapshot_finish(cdc_source *s, char *err, size_t errlen)
{
    relay_worker *w = s->base.w;
    if (pg_exec(s->snap, "COMMIT", 0, NULL, err, errlen) < 0)
        return -1;
    const char *p[2] = {s->tmp_slot, s->slot};
    if (pg_exec(w->pg, "SELECT pg_catalog.pg_copy_logical_replication_slot($1, $2, false)", 2, p, err,
                errlen) < 0)
        return -1;
    char l[24];
    pgo_lsn_format(s->snap_lsn, l, sizeof l);
    log_info(pname(s), "initial snapshot done: %" PRIu64 " rows from %zu table(s); replication "
             "slot %s created at %s", s->snap_rows, s->nsnap, s->slot, l);
    close_snapshot(s);
    close_replication(s); /* drops the temporary slot */
    s->confirmed = s->snap_lsn;
    record_offset(s, s->confirmed);
    s->phase = PHASE_STREAM;
    publish_position(s);
    return 0;
}

/* The row type of a table for the events of batch b: one copy in the
 * batch's arena per table and poll (events outlive neither). Columns come
 * from `cols` (snapshot tables) or `rel` (pgoutput relations). */
static const relay_row_type *row_type_of(cdc_source *s, relay_batch *b, const void *owner,
                                         uint32_t oid, uint32_t gen, int ncols,
                                         const relay_row_col *cols, const pgo_rel *rel)
{
    if (s->rt && s->rt_poll == s->poll_seq && s->rt_owner == owner && s->rt_oid == oid &&
        s->rt_gen == gen)
        return s->rt;
    relay_row_type *rt = arena_alloc(&b->arena, sizeof *rt);
    relay_row_col *c = arena_alloc(&b->arena, ((size_t)ncols + 1) * sizeof *c);
    for (int i = 0; i < ncols; i++) {
        if (rel) {
            c[i].name = arena_strdup(&b->arena, rel->cols[i].name);
            c[i].type_oid = rel->cols[i].type_oid;
            c[i].typmod = rel->cols[i].typmod;
            c[i].key = rel->cols[i].key;
        } else {
            c[i] = cols[i];
            c[i].name = arena_strdup(&b->arena, cols[i].name);
        }
    }
    rt->ncols = ncols;
    rt->cols = c;
    s->rt = rt;
    s->rt_poll = s->poll_seq;
    s->rt_owner = owner;
    s->rt_gen = gen;
    s->rt_oid = oid;
    return rt;
}

void cdc_row_json(relay_buf *o, const PGresult *r, int i, int ncols, const uint32_t *types)
{
    buf_putc(o, '{');
    for (int c = 0; c < ncols; c++) {
        if (c)
            buf_putc(o, ',');
        const char *f = PQfname(r, c);
        buf_put_json_str(o, f, strlen(f));
        buf_putc(o, ':');
        if (PQgetisnull(r, i, c))
            buf_puts(o, "null");
        else
            pgo_value_json(types[c], PQgetvalue(r, i, c), (size_t)PQgetlength(r, i, c), o);
    }
    buf_putc(o, '}');
}

/* Encode one snapshot row (first t->ncols columns of row i) as an event. */
static void snapshot_event(cdc_source *s, snap_table *t, PGresult *r, int i, relay_batch *b)
{
    relay_buf *o = &s->tmp;
    buf_clear(o);
    cdc_row_json(o, r, i, t->ncols, t->col_types);
    relay_msg *m = batch_add(b);
    m->op = OP_SNAPSHOT;
    m->is_full_refresh = 1;
    m->payload = arena_strndup(&b->arena, o->data, o->len);
    m->payload_len = o->len;
    m->schema = arena_strdup(&b->arena, t->schema);
    m->table = arena_strdup(&b->arena, t->name);
    m->relation_id = t->oid;
    m->row_type = row_type_of(s, b, t, t->oid, 0, t->ncols, t->row_cols, NULL);
    char l[24];
    pgo_lsn_format(s->snap_lsn, l, sizeof l);
    m->lsn = arena_strdup(&b->arena, l);
    relay_buf *k = &s->tmp2;
    buf_clear(k);
    buf_printf(k, "snapshot:%s:", l);
    cdc_key_ident(k, t->schema);
    buf_putc(k, '.');
    cdc_key_ident(k, t->name);
    buf_printf(k, ":%" PRIu64, t->rows);
    m->dedup_key = arena_strndup(&b->arena, k->data, k->len);
    buf_clear(o);
    buf_puts(o, "{\"schema\":");
    buf_put_json_str(o, t->schema, strlen(t->schema));
    buf_puts(o, ",\"table\":");
    buf_put_json_str(o, t->name, strlen(t->name));
    buf_printf(o, ",\"lsn\":\"%s\",\"commit_lsn\":null,\"xid\":null,\"commit_time\":null,"
               "\"unchanged_toast\":[],\"snapshot\":true}", l);
    m->source_json = arena_strndup(&b->arena, o->data, o->len);
    t->rows++;
    s->snap_rows++;
    s->ops[OP_SNAPSHOT]++;
}

static int snapshot_poll(cdc_source *s, relay_batch *b, size_t max, char *err, size_t errlen)
{
    while (s->snap_cur < s->nsnap && b->n < max) {
        snap_table *t = &s->snaps[s->snap_cur];
        char lim[24];
        snprintf(lim, sizeof lim, "%zu", max - b->n);
        PGresult *r;
        if (t->npk > 0) {
            const char **p = xcalloc((size_t)t->npk + 2, sizeof *p);
            for (int k = 0; k < t->npk; k++)
                p[k] = t->last_key[k];
            p[t->npk] = lim;
            int first = t->last_key[0] == NULL;
            r = first ? pg_query(s->snap, t->sql_first, 1, &p[t->npk], err, errlen)
                      : pg_query(s->snap, t->sql_next, t->npk + 1, p, err, errlen);
            free(p);
        } else {
            if (!t->cursor_open) {
                if (pg_exec(s->snap, t->sql_first, 0, NULL, err, errlen) < 0)
                    return -1;
                t->cursor_open = 1;
            }
            char fetch[96];
            snprintf(fetch, sizeof fetch, t->sql_next, max - b->n);
            r = pg_query(s->snap, fetch, 0, NULL, err, errlen);
        }
        if (!r) {
            char e[ERRLEN];
            snprintf(e, sizeof e, "%s", err);
            snprintf(err, errlen, "snapshot of %s.%s: %s", t->schema, t->name, e);
            return -1;
        }
        int n = PQntuples(r);
        for (int i = 0; i < n; i++)
            snapshot_event(s, t, r, i, b);
        if (n > 0 && t->npk > 0) {
            for (int k = 0; k < t->npk; k++) {
                free(t->last_key[k]);
                t->last_key[k] = xstrdup(PQgetvalue(r, n - 1, t->ncols + k));
            }
        }
        PQclear(r);
        if ((size_t)n < strtoull(lim, NULL, 10)) {
            log_debug(pname(s), "snapshot of %s.%s: %" PRIu64 " rows", t->schema, t->name, t->rows);
            s->snap_cur++;
        }
    }
    publish_position(s);
    return (int)b->n;
}

/* ---- open ------------------------------------------------------------------------ */

static void reset_stream_state(cdc_source *s)
{
    s->in_txn = 0;
    s->last_commit_end = 0;
    s->unacked = 0;
    s->last_poll_full = 0;
    free(s->origin);
    s->origin = NULL;
    pgo_relcache_free(&s->rels);
}

static int cdc_open(relay_source *base, char *err, size_t errlen)
{
    cdc_source *s = (cdc_source *)base;
    close_snapshot(s);
    close_replication(s);
    reset_stream_state(s);
    s->phase = PHASE_STREAM;
    if (check_publication(s, err, errlen) < 0)
        return -1;
    /* A deleted pipeline's slot of this name waits to be dropped
     * (sql/008_relay_status.sql): drop it now, never resume at the deleted
     * pipeline's position. A user-made slot (create_slot false) is never
     * queued. */
    if (s->create_slot && pg_honour_slot_drop(s->base.w->pg, s->slot, err, errlen) < 0)
        return -1;
    int exists = check_slot(s, err, errlen);
    if (exists < 0)
        return -1;
    s->repl = connect_replication(s, err, errlen);
    if (!s->repl)
        return -1;
    if (exists) {
        if (stored_offset(s) == 0)
            record_offset(s, s->confirmed);
        s->offset_lsn = s->confirmed;
    } else {
        int64_t had = stored_offset(s);
        if (had > 0) {
            char l[24];
            pgo_lsn_format((uint64_t)had, l, sizeof l);
            log_error(pname(s), "replication slot %s was dropped while this pipeline used it: "
                      "changes committed after %s that were not relayed by then are lost%s", s->slot,
                      l, !s->create_slot ? "" : s->snapshot_initial
                          ? "; recreating it with a new initial snapshot"
                          : "; recreating it (set source.snapshot to \"initial\" to resend "
                            "every row)");
            stats_error(s->base.w->stats, ERR_SOURCE, "replication slot %s was dropped; changes "
                        "after %s may be lost", s->slot, l);
        }
        if (!s->create_slot) {
            snprintf(err, errlen, "source.slot: replication slot \"%s\" does not exist%s (create "
                     "it, or set source.create_slot to true)", s->slot,
                     had > 0 ? " (it was dropped)" : "");
            return -1;
        }
        if (s->snapshot_initial) {
            if (snapshot_begin(s, err, errlen) < 0) {
                close_snapshot(s);
                return -1;
            }
        } else {
            PGresult *r = create_slot(s, s->slot, 0, 0, err, errlen);
            if (!r)
                return -1;
            if (pgo_lsn_parse(PQgetvalue(r, 0, 1), &s->confirmed) < 0)
                s->confirmed = 0;
            log_info(pname(s), "created replication slot %s at %s", s->slot, PQgetvalue(r, 0, 1));
            PQclear(r);
            record_offset(s, s->confirmed);
        }
    }
    if (cdc_bf_open(s, err, errlen) < 0 || cdc_ext_open(s, err, errlen) < 0)
        return -1;
    publish_position(s);
    return 0;
}

/* ---- streaming ---------------------------------------------------------------------- */

static int start_streaming(cdc_source *s, char *err, size_t errlen)
{
    if (!s->repl && !(s->repl = connect_replication(s, err, errlen)))
        return -1;
    /* Keep status updates well inside the server's wal_sender_timeout. */
    s->status_ms = s->status_cfg_ms;
    PGresult *r = PQexec(s->repl, "SHOW wal_sender_timeout");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        int64_t t;
        if (parse_duration_ms(PQgetvalue(r, 0, 0), &t) == 0 && t > 0 && t / 3 < s->status_ms)
            s->status_ms = t / 3 < 100 ? 100 : t / 3;
    }
    PQclear(r);
    char *qslot = pg_quote_ident(s->repl, s->slot);
    char *qpub = pg_quote_ident(s->repl, s->publication);
    char *lpub = PQescapeLiteral(s->repl, qpub, strlen(qpub));
    relay_buf q = {0};
    buf_printf(&q, "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names %s,"
               " messages 'true')", qslot, lpub ? lpub : "''");
    free(qslot);
    free(qpub);
    PQfreemem(lpub);
    r = PQexec(s->repl, q.data);
    buf_free(&q);
    if (PQresultStatus(r) != PGRES_COPY_BOTH) {
        char e[ERRLEN];
        pg_error(s->repl, e, sizeof e);
        snprintf(err, errlen, "START_REPLICATION on slot %s: %s", s->slot, e);
        PQclear(r);
        return -1;
    }
    PQclear(r);
    if (PQsetnonblocking(s->repl, 1) != 0) {
        snprintf(err, errlen, "replication connection: cannot switch to non-blocking mode");
        return -1;
    }
    s->streaming = 1;
    s->status_at_ms = now_mono_ms();
    s->status_sent = s->confirmed;
    s->last_data_ms = now_mono_ms();
    char l[24];
    pgo_lsn_format(s->confirmed, l, sizeof l);
    log_info(pname(s), "streaming slot %s of publication %s from %s", s->slot, s->publication, l);
    return 0;
}

static void begin_txn(cdc_source *s, const pgo_msg *m)
{
    s->in_txn = 1;
    s->txn_lsn = m->u.begin.final_lsn;
    pgo_lsn_format(s->txn_lsn, s->txn_lsn_text, sizeof s->txn_lsn_text);
    pgo_time_format(m->u.begin.commit_time, s->txn_time_text, sizeof s->txn_time_text);
    s->txn_xid = m->u.begin.xid;
    s->txn_index = 0;
    cdc_bf_begin(s, m->u.begin.xid);
    free(s->origin);
    s->origin = NULL;
}

/* A new event of the current transaction with its common fields set. */
static relay_msg *new_event(cdc_source *s, relay_batch *b, relay_op op, const pgo_rel *rel,
                            uint64_t lsn, uint32_t index)
{
    relay_msg *m = batch_add(b);
    m->op = op;
    char l[24];
    pgo_lsn_format(lsn, l, sizeof l);
    m->lsn = arena_strdup(&b->arena, l);
    /* The dedup key grammar (docs/backends/cdc.md, "Dedup keys"): inside a
     * transaction {commit_lsn}:{index}; outside one (a non-transactional
     * logical message) "message:{lsn}", a namespace of its own: such a
     * message's LSN can equal the next transaction's commit LSN. */
    if (s->in_txn)
        m->dedup_key = arena_printf(&b->arena, "%s:%" PRIu32, s->txn_lsn_text, index);
    else
        m->dedup_key = arena_printf(&b->arena, "message:%s", l);
    if (rel) {
        m->schema = arena_strdup(&b->arena, rel->schema);
        m->table = arena_strdup(&b->arena, rel->name);
        m->relation_id = rel->oid;
    }
    return m;
}

/* source JSON: {"schema","table","lsn","commit_lsn","xid","commit_time",
 * "unchanged_toast"[,"origin"]<extra>} */
static void set_source(cdc_source *s, relay_batch *b, relay_msg *m, const relay_buf *toast,
                       const char *extra)
{
    relay_buf *o = &s->src;
    buf_clear(o);
    buf_puts(o, "{\"schema\":");
    if (m->schema)
        buf_put_json_str(o, m->schema, strlen(m->schema));
    else
        buf_puts(o, "null");
    buf_puts(o, ",\"table\":");
    if (m->schema && m->table)
        buf_put_json_str(o, m->table, strlen(m->table));
    else
        buf_puts(o, "null");
    buf_printf(o, ",\"lsn\":\"%s\"", m->lsn);
    if (s->in_txn)
        buf_printf(o, ",\"commit_lsn\":\"%s\",\"xid\":%" PRIu32 ",\"commit_time\":\"%s\"",
                   s->txn_lsn_text, s->txn_xid, s->txn_time_text);
    else
        buf_puts(o, ",\"commit_lsn\":null,\"xid\":null,\"commit_time\":null");
    buf_puts(o, ",\"unchanged_toast\":[");
    if (toast && toast->len)
        buf_append(o, toast->data, toast->len);
    buf_putc(o, ']');
    if (s->origin) {
        buf_puts(o, ",\"origin\":");
        buf_put_json_str(o, s->origin, strlen(s->origin));
    }
    if (extra)
        buf_puts(o, extra);
    buf_putc(o, '}');
    m->source_json = arena_strndup(&b->arena, o->data, o->len);
}

/* A message that cannot be turned into an event: dead-lettered by the worker. */
static void reject_event(cdc_source *s, relay_batch *b, uint64_t lsn, const char *why)
{
    relay_msg *m = new_event(s, b, OP_EVENT, NULL, lsn, s->txn_index++);
    m->state = MSG_REJECTED;
    m->error = arena_strdup(&b->arena, why);
    m->payload = NULL;
    set_source(s, b, m, NULL, NULL);
    log_error(pname(s), "change %s cannot be relayed: %s (dead-lettered)", m->dedup_key, why);
}

static int emit_change(cdc_source *s, relay_batch *b, const pgo_msg *m, uint64_t lsn)
{
    char err[ERRLEN];
    pgo_rel *rel = pgo_relcache_get(&s->rels, m->u.change.relid);
    if (!rel) {
        snprintf(err, sizeof err, "change for relation OID %" PRIu32 " arrived before its "
                 "Relation message", m->u.change.relid);
        reject_event(s, b, lsn, err);
        return 0;
    }
    uint32_t index = s->txn_index++;
    cdc_bf_change(s, rel, m);
    if (!rel->user_flag)
        return 0;
    relay_op op = m->type == 'I' ? OP_INSERT : m->type == 'U' ? OP_UPDATE : OP_DELETE;
    relay_buf *pay = &s->tmp, *old = &s->tmp2, *toast = &s->toast;
    buf_clear(pay);
    buf_clear(old);
    buf_clear(toast);
    int rc = 0;
    if (m->u.change.old_kind)
        rc = pgo_tuple_json(rel, &m->u.change.old, m->u.change.old_kind == 'K', old, NULL, err,
                            sizeof err);
    if (rc == 0 && op != OP_DELETE)
        rc = pgo_tuple_json(rel, &m->u.change.new_, 0, pay, toast, err, sizeof err);
    if (rc < 0) {
        s->txn_index--;
        reject_event(s, b, lsn, err);
        return 0;
    }
    relay_msg *e = new_event(s, b, op, rel, lsn, index);
    e->row_type = row_type_of(s, b, rel, rel->oid, rel->generation, rel->ncols, NULL, rel);
    s->ops[op]++;
    if (op == OP_DELETE) {
        e->payload = arena_strndup(&b->arena, old->data, old->len);
        e->payload_len = old->len;
        e->old_json = e->payload;
    } else {
        e->payload = arena_strndup(&b->arena, pay->data, pay->len);
        e->payload_len = pay->len;
        if (old->len)
            e->old_json = arena_strndup(&b->arena, old->data, old->len);
    }
    set_source(s, b, e, toast, NULL);
    return 0;
}

static void emit_truncate(cdc_source *s, relay_batch *b, const pgo_msg *m, uint64_t lsn)
{
    char extra[96];
    snprintf(extra, sizeof extra, ",\"cascade\":%s,\"restart_identity\":%s",
             m->u.truncate.options & 1 ? "true" : "false",
             m->u.truncate.options & 2 ? "true" : "false");
    for (uint32_t i = 0; i < m->u.truncate.nrels; i++) {
        pgo_rel *rel = pgo_relcache_get(&s->rels, m->u.truncate.relids[i]);
        if (!rel) {
            char err[128];
            snprintf(err, sizeof err, "TRUNCATE of relation OID %" PRIu32 " arrived before its "
                     "Relation message", m->u.truncate.relids[i]);
            reject_event(s, b, lsn, err);
            continue;
        }
        uint32_t index = s->txn_index++;
        cdc_bf_truncate(s, rel->oid);
        if (!rel->user_flag)
            continue;
        relay_msg *e = new_event(s, b, OP_TRUNCATE, rel, lsn, index);
        s->ops[OP_TRUNCATE]++;
        e->payload = NULL;
        set_source(s, b, e, NULL, extra);
    }
}

/* UTF-8 check for logical message contents (bytea). */
static int valid_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = p[i];
        size_t k = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : 9;
        if (k == 9 || i + k >= n)
            return 0;
        for (size_t j = 1; j <= k; j++)
            if ((p[i + j] & 0xC0) != 0x80)
                return 0;
        i += k + 1;
    }
    return 1;
}

static void emit_message(cdc_source *s, relay_batch *b, const pgo_msg *m, uint64_t lsn)
{
    int transactional = m->u.message.flags & 1;
    uint32_t index = 0;
    if (transactional && s->in_txn)
        index = s->txn_index++;
    if (strcmp(m->u.message.prefix, HEARTBEAT_PREFIX) == 0 || cdc_bf_message(s, m, lsn))
        return;
    int was_in_txn = s->in_txn;
    char saved_lsn[sizeof s->txn_lsn_text];
    memcpy(saved_lsn, s->txn_lsn_text, sizeof saved_lsn);
    if (!transactional) {
        /* Outside any transaction: its own LSN is its identity. */
        pgo_lsn_format(lsn, s->txn_lsn_text, sizeof s->txn_lsn_text);
        s->in_txn = 0;
    }
    relay_msg *e = new_event(s, b, OP_EVENT, NULL, lsn, index);
    s->ops[CDC_OPS - 1]++;
    e->table = arena_strdup(&b->arena, m->u.message.prefix);
    relay_buf *o = &s->tmp;
    buf_clear(o);
    buf_puts(o, "{\"prefix\":");
    buf_put_json_str(o, m->u.message.prefix, strlen(m->u.message.prefix));
    buf_puts(o, ",\"content\":");
    if (valid_utf8((const unsigned char *)m->u.message.content, m->u.message.len)) {
        buf_put_json_str(o, m->u.message.content, m->u.message.len);
    } else {
        static const char hex[] = "0123456789abcdef";
        buf_puts(o, "\"\\\\x");
        for (uint32_t i = 0; i < m->u.message.len; i++) {
            unsigned char c = (unsigned char)m->u.message.content[i];
            buf_putc(o, hex[c >> 4]);
            buf_putc(o, hex[c & 15]);
        }
        buf_putc(o, '"');
    }
    buf_printf(o, ",\"transactional\":%s}", transactional ? "true" : "false");
    e->payload = arena_strndup(&b->arena, o->data, o->len);
    e->payload_len = o->len;
    relay_buf extra = {0};
    buf_puts(&extra, ",\"prefix\":");
    buf_put_json_str(&extra, m->u.message.prefix, strlen(m->u.message.prefix));
    set_source(s, b, e, NULL, extra.data);
    buf_free(&extra);
    if (!transactional) {
        s->in_txn = was_in_txn;
        memcpy(s->txn_lsn_text, saved_lsn, sizeof saved_lsn);
    }
}

/* One pgoutput message. Returns 0, or -1 (stream error, err set). */
static int handle_pgoutput(cdc_source *s, relay_batch *b, uint64_t lsn, const uint8_t *data,
                           size_t len, char *err, size_t errlen)
{
    pgo_msg m;
    if (pgo_decode(&s->dec, data, len, &m, err, errlen) < 0) {
        char l[24];
        pgo_lsn_format(lsn, l, sizeof l);
        /* Inside a transaction a bad change is dead-lettered; a bad Begin or
         * Commit breaks the stream itself. */
        if (s->in_txn && data[0] != 'C' && data[0] != 'B') {
            char why[ERRLEN + 32];
            snprintf(why, sizeof why, "%s (LSN %s)", err, l);
            reject_event(s, b, lsn, why);
            return 0;
        }
        char e[ERRLEN];
        snprintf(e, sizeof e, "%s", err);
        snprintf(err, errlen, "undecodable replication message at LSN %s: %s", l, e);
        return -1;
    }
    switch (m.type) {
    case 'B':
        begin_txn(s, &m);
        break;
    case 'C':
        s->in_txn = 0;
        s->last_commit_end = m.u.commit.end_lsn;
        if (m.u.commit.end_lsn > s->received)
            s->received = m.u.commit.end_lsn;
        break;
    case 'O':
        free(s->origin);
        s->origin = xstrdup(m.u.origin.name);
        break;
    case 'R': {
        int changed = 0;
        pgo_rel *rel = pgo_relcache_put(&s->rels, &m, &changed);
        rel->user_flag = cdc_table_selected(s, rel->schema, rel->name);
        if (changed && rel->user_flag)
            cdc_ext_relation(s, rel);
        break;
    }
    case 'Y':
        break; /* values are always sent as text; the type name is not needed */
    case 'I':
    case 'U':
    case 'D':
        return emit_change(s, b, &m, lsn);
    case 'T':
        emit_truncate(s, b, &m, lsn);
        break;
    case 'M':
        emit_message(s, b, &m, lsn);
        break;
    }
    return 0;
}

static int handle_copydata(cdc_source *s, relay_batch *b, const char *buf, int n, char *err,
                           size_t errlen)
{
    pgo_copydata cd;
    if (pgo_parse_copydata((const uint8_t *)buf, (size_t)n, &cd, err, errlen) < 0)
        return -1;
    if (cd.wal_end > s->server_wal_end)
        s->server_wal_end = cd.wal_end;
    if (cd.kind == 'k') {
        if (cd.reply_requested && send_status(s, 1) < 0) {
            pg_error(s->repl, err, errlen);
            return -1;
        }
        return 0;
    }
    s->last_data_ms = now_mono_ms();
    return handle_pgoutput(s, b, cd.wal_start, cd.data, cd.len, err, errlen);
}

/* The COPY stream ended: report the server's reason. */
static void stream_error(cdc_source *s, char *err, size_t errlen)
{
    char e[ERRLEN] = "";
    PGresult *r;
    while ((r = PQgetResult(s->repl)) != NULL) {
        const char *m = PQresultErrorMessage(r);
        if (m && *m && !*e) {
            const char *p = strstr(m, ":  ");
            p = p ? p + 3 : m;
            snprintf(e, sizeof e, "%.*s", (int)strcspn(p, "\n"), p);
        }
        PQclear(r);
        if (PQstatus(s->repl) != CONNECTION_OK)
            break;
    }
    if (!*e)
        pg_error(s->repl, e, sizeof e);
    snprintf(err, errlen, "replication stream of slot %s ended: %s", s->slot, e);
    close_replication(s);
}

/* Nothing of ours is outstanding: commits read so far are confirmed. */
static void confirm_idle(cdc_source *s)
{
    /* While a batch read earlier is unacked, the Commits read may be its
     * own: only its ack confirms them. */
    if (s->unacked == 0 && s->last_commit_end > s->confirmed)
        s->confirmed = s->last_commit_end;
}

static void update_lag(cdc_source *s)
{
    relay_worker *w = s->base.w;
    char err[ERRLEN];
    const char *p[1] = {s->slot};
    PGresult *r = pg_query(w->pg,
                           "SELECT pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(),"
                           " confirmed_flush_lsn)::bigint FROM pg_catalog.pg_replication_slots"
                           " WHERE slot_name = $1", 1, p, err, sizeof err);
    if (r && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0) && w->stats)
        atomic_store(&w->stats->replication_lag_bytes, strtoll(PQgetvalue(r, 0, 0), NULL, 10));
    PQclear(r);
    s->lag_at_ms = now_mono_ms();
}

/* Status, heartbeat, lag and offset bookkeeping; returns ms until the next
 * thing is due (for the socket wait). */
static int64_t periodic(cdc_source *s)
{
    relay_worker *w = s->base.w;
    int64_t now = now_mono_ms();
    send_status(s, 0);
    if (s->heartbeat_ms > 0 && now - s->last_data_ms >= s->heartbeat_ms &&
        now - s->heartbeat_at_ms >= s->heartbeat_ms) {
        char err[ERRLEN];
        const char *p[1] = {pname(s)};
        if (pg_exec(w->pg, "SELECT pg_catalog.pg_logical_emit_message(true, '" HEARTBEAT_PREFIX
                           "', $1)", 1, p, err, sizeof err) < 0)
            log_warn(pname(s), "heartbeat failed: %s", err);
        s->heartbeat_at_ms = now;
    }
    if (now - s->lag_at_ms >= LAG_INTERVAL_MS) {
        update_lag(s);
        publish_position(s);
    }
    if (s->confirmed > s->offset_lsn && now - s->offset_at_ms >= OFFSET_INTERVAL_MS)
        record_offset(s, s->confirmed);
    int64_t next = s->status_ms - (now - s->status_at_ms);
    if (s->heartbeat_ms > 0) {
        int64_t h = s->heartbeat_ms - (now - (s->last_data_ms > s->heartbeat_at_ms
                                                  ? s->last_data_ms : s->heartbeat_at_ms));
        if (h < next)
            next = h;
    }
    return next < 10 ? 10 : next;
}

static int stream_poll(cdc_source *s, relay_batch *b, size_t max, char *err, size_t errlen)
{
    if (!s->streaming && start_streaming(s, err, errlen) < 0) {
        close_replication(s);
        return -1;
    }
    /* A read-ahead poll (an earlier batch unacked) starts no backfill
     * chunk: the ack of that earlier batch would store its progress. */
    if (s->unacked == 0 && cdc_bf_poll(s, b, max, err, errlen) < 0) {
        char e[ERRLEN];
        snprintf(e, sizeof e, "%s", err);
        snprintf(err, errlen, "backfill: %s", e);
        return -1;
    }
    int64_t deadline = now_mono_ms() + POLL_WAIT_MS;
    int consumed = 0; /* PQconsumeInput done since libpq ran dry */
    for (;;) {
        if (cdc_bf_holding(s)) {
            /* The stream reached a chunk's high watermark: its rows go
             * first, nothing after the watermark is read before them. */
            if (cdc_bf_poll(s, b, max, err, errlen) < 0)
                return -1;
            if (cdc_bf_holding(s))
                break;
        }
        char *buf = NULL;
        int n = b->n < max ? PQgetCopyData(s->repl, &buf, 1) : 0;
        if (n > 0) {
            consumed = 0;
            int rc = handle_copydata(s, b, buf, n, err, errlen);
            PQfreemem(buf);
            if (rc < 0) {
                close_replication(s);
                return -1;
            }
            continue;
        }
        if (n < 0) {
            stream_error(s, err, errlen);
            return -1;
        }
        if (b->n >= max)
            break;
        if (!consumed) {
            /* One read of whatever the kernel has, then drain it. */
            if (!PQconsumeInput(s->repl)) {
                char e[ERRLEN];
                pg_error(s->repl, e, sizeof e);
                snprintf(err, errlen, "replication connection lost: %s", e);
                close_replication(s);
                return -1;
            }
            consumed = 1;
            continue;
        }
        if (b->n > 0)
            break; /* deliver what we have */
        confirm_idle(s);
        int64_t next = periodic(s);
        int64_t left = deadline - now_mono_ms();
        if (left <= 0)
            break;
        int rc = worker_wait(s->base.w, PQsocket(s->repl), POLLIN, (int)(next < left ? next : left));
        if (rc < 0)
            break;
        consumed = 0;
        if (rc == 0 && now_mono_ms() >= deadline)
            break;
    }
    b->ack_pos = (int64_t)s->last_commit_end;
    if (b->n == 0) {
        confirm_idle(s);
        periodic(s);
    } else if (now_mono_ms() - s->lag_at_ms >= LAG_INTERVAL_MS) {
        update_lag(s);
    }
    return (int)b->n;
}

static int cdc_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    cdc_source *s = (cdc_source *)base;
    s->poll_seq++; /* the batch's arena was reset: cached row types are gone */
    if (s->phase == PHASE_SNAPSHOT) {
        if (s->snap_cur >= s->nsnap) {
            /* Everything read was acked before this poll: finish. */
            if (snapshot_finish(s, err, errlen) < 0)
                return -1;
        } else {
            return snapshot_poll(s, b, max, err, errlen);
        }
    }
    if (cdc_ext_poll(s, err, errlen) < 0)
        return -1;
    int n = stream_poll(s, b, max, err, errlen);
    s->last_poll_full = n > 0 && (size_t)n >= max;
    if (n > 0)
        s->unacked++;
    return n;
}

/* Streaming, no backfill at work, and the last poll stopped at batch_size
 * (the stream has more at once): the worker may poll again before it acks.
 * ack() confirms each batch's own last Commit (relay_batch.ack_pos). */
static int cdc_can_read_ahead(relay_source *base)
{
    cdc_source *s = (cdc_source *)base;
    return s->phase == PHASE_STREAM && s->streaming && s->last_poll_full && !cdc_bf_active(s);
}

static int cdc_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    cdc_source *s = (cdc_source *)base;
    if (s->unacked > 0)
        s->unacked--;
    if (s->phase == PHASE_STREAM && (uint64_t)b->ack_pos > s->confirmed) {
        s->confirmed = (uint64_t)b->ack_pos;
        if (send_status(s, 1) < 0)
            log_debug(pname(s), "standby status not sent (connection lost); it is sent again "
                      "after reconnecting");
    }
    publish_position(s);
    if (s->phase == PHASE_STREAM)
        return cdc_bf_ack(s, err, errlen);
    return 0;
}

static void cdc_idle(relay_source *base)
{
    cdc_source *s = (cdc_source *)base;
    send_status(s, 0);
}

static void cdc_position(relay_source *base, relay_buf *out)
{
    cdc_source *s = (cdc_source *)base;
    char conf[24];
    pgo_lsn_format(s->confirmed, conf, sizeof conf);
    buf_puts(out, "{\"slot\":");
    buf_put_json_str(out, s->slot, strlen(s->slot));
    buf_printf(out, ",\"confirmed_lsn\":\"%s\"}", conf);
}

static void cdc_destroy(relay_source *base)
{
    cdc_source *s = (cdc_source *)base;
    if (s->confirmed > s->offset_lsn && s->base.w->pg && !pg_broken(s->base.w->pg))
        record_offset(s, s->confirmed);
    cdc_ext_destroy(s);
    cdc_bf_destroy(s);
    close_snapshot(s);
    close_replication(s);
    reset_stream_state(s);
    free_published(s);
    pgo_decoder_free(&s->dec);
    buf_free(&s->tmp);
    buf_free(&s->tmp2);
    buf_free(&s->toast);
    buf_free(&s->src);
    for (size_t i = 0; i < s->ntables; i++)
        free(s->tables[i]);
    free(s->tables);
    free(s->publication);
    free(s->slot);
    free(s);
}

const relay_source_ops relay_source_cdc_ops = {
    .type = "cdc",
    .create = cdc_create,
    .open = cdc_open,
    .poll = cdc_poll,
    .ack = cdc_ack,
    .can_read_ahead = cdc_can_read_ahead,
    .idle = cdc_idle,
    .position = cdc_position,
    .destroy = cdc_destroy,
};
