/*
 * cdc_ext.h - the cdc source's state, shared by cdc.c and its optional
 * extensions (cdc_nats.c: table schemas in the NATS KV bucket "schemas" and
 * on-demand snapshots over NATS, built only with HAVE_NATS).
 *
 * The extension hooks are called by cdc.c:
 *   cdc_ext_create    config validated, nothing connected (may fail: config)
 *   cdc_ext_open      the source (re)opened: publish every table's schema
 *   cdc_ext_relation  a Relation message announced a new or changed table
 *   cdc_ext_poll      at every poll: serve pending on-demand snapshot work
 *   cdc_ext_destroy   free
 * They are compiled in only when RELAY_CDC_NATS is set (meson.build defines
 * it and builds cdc_nats.c with HAVE_NATS); otherwise, and when the
 * pipeline's sink is not NATS, they do nothing. cdc_nats.c does its work on
 * a thread of its own: the hooks only queue work and never block.
 */
#ifndef RELAY_CDC_EXT_H
#define RELAY_CDC_EXT_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "pgoutput.h"
#include "source.h"

typedef enum { PHASE_STREAM = 0, PHASE_SNAPSHOT } cdc_phase;

/* A table of the publication (from pg_publication_tables). */
typedef struct pub_table {
    uint32_t oid;
    char *schema;
    char *name;
    char relkind;      /* 'r' table, 'p' partitioned */
    char replident;    /* 'd' 'n' 'f' 'i' */
    int has_key;       /* primary key or replica identity index */
    int is_partition;
} pub_table;

/* Progress of one table of the initial snapshot. */
typedef struct snap_table {
    uint32_t oid;
    char *schema, *name;
    int ncols;          /* payload columns (the key columns follow in the result) */
    uint32_t *col_types;
    relay_row_col *row_cols; /* names, types, typmods, replica-identity flags (owned) */
    int npk;            /* 0: read through a cursor */
    char *sql_first, *sql_next;
    char **last_key;    /* keyset position (text), NULL before the first page */
    int cursor_open;
    uint64_t rows;
} snap_table;

#define CDC_OPS 6 /* insert update delete truncate snapshot event */

typedef struct cdc_ext cdc_ext;
typedef struct cdc_backfill cdc_backfill;

typedef struct cdc_source {
    relay_source base;
    /* config */
    char *publication;
    char *slot;
    char **tables;
    size_t ntables;
    int create_slot;
    int snapshot_initial;
    int64_t heartbeat_ms;
    int64_t status_cfg_ms;
    char marker_id[96];      /* relay_consumer_offsets.pipeline_id: "cdc_slot:<slot>" */
    /* publication */
    int via_root;
    pub_table *pub;
    size_t npub;
    /* connections */
    PGconn *repl;
    PGconn *snap;
    cdc_phase phase;
    int streaming;
    /* positions */
    uint64_t confirmed;       /* commit end LSN whose events are all confirmed */
    uint64_t status_sent;
    int64_t status_at_ms;
    int64_t status_ms;        /* effective interval (clamped to wal_sender_timeout / 3) */
    uint64_t received;        /* end LSN of the last Commit received */
    uint64_t server_wal_end;
    uint64_t last_commit_end; /* last Commit read */
    int unacked;              /* polled batches not acked yet (2 while reading ahead) */
    int last_poll_full;       /* the last poll stopped at batch_size: more is waiting */
    uint64_t offset_lsn;
    int64_t offset_at_ms;
    int64_t last_data_ms;
    int64_t heartbeat_at_ms;
    int64_t lag_at_ms;
    /* transaction */
    int in_txn;
    uint64_t txn_lsn;
    char txn_lsn_text[24];
    char txn_time_text[40];
    uint32_t txn_xid;
    uint32_t txn_index;
    char *origin;
    /* decoding */
    pgo_decoder dec;
    pgo_relcache rels;
    relay_buf tmp, tmp2, toast, src;
    /* row types: one arena copy per table and poll (row_type_of) */
    uint64_t poll_seq, rt_poll;
    const void *rt_owner;
    uint32_t rt_gen, rt_oid;
    const relay_row_type *rt;
    /* initial snapshot */
    char *tmp_slot;
    uint64_t snap_lsn;
    snap_table *snaps;
    size_t nsnap, snap_cur;
    uint64_t snap_rows;
    /* counters for /status */
    uint64_t ops[CDC_OPS];
    cdc_ext *ext;
    cdc_backfill *bf;         /* backfills on demand (cdc_backfill.c) */
} cdc_source;

extern const relay_source_ops relay_source_cdc_ops;

/* Does schema.name pass the source's `tables` filter? */
int cdc_table_selected(const cdc_source *s, const char *schema, const char *name);

/* Append `name` (a schema or table name) to a dedup key being built in
 * `out`: unchanged when it is made of [a-z0-9_] only, else in double quotes
 * with '"' doubled, so that no two qualified names give the same key text
 * (docs/backends/cdc.md, "Dedup keys"). */
void cdc_key_ident(relay_buf *out, const char *name);

/* Append row i of a table read as a JSON object {"col": value, ...}: its
 * first ncols columns, named as in the result, valued by type (types[c],
 * pgoutput.h "values to JSON"). */
void cdc_row_json(relay_buf *out, const PGresult *r, int i, int ncols, const uint32_t *types);

/* Backfills (cdc_backfill.c; docs/backends/cdc.md "Backfills"). cdc.c calls:
 *   cdc_bf_create    config (source.backfill_chunk_rows); -1 with err
 *   cdc_bf_open      the source (re)opened: LISTEN, forget the chunk in
 *                    memory (it is read again from the stored progress)
 *   cdc_bf_poll      at the start of every stream poll: put rows of a
 *                    released chunk into the batch, or look for work and
 *                    read the next chunk; -1 (err) on a connection failure
 *   cdc_bf_holding   1 while rows of a released chunk wait for batch space:
 *                    the stream must not be read further
 *   cdc_bf_begin     the stream delivered a transaction (its xid)
 *   cdc_bf_change    an insert, update or delete of the stream
 *   cdc_bf_truncate  a TRUNCATE of the stream (relation oid)
 *   cdc_bf_message   a logical message: 1 when it is a backfill watermark
 *                    (never published), 0 otherwise
 *   cdc_bf_ack       the last polled batch is confirmed: store the progress
 *                    of a chunk it completed; -1 (err) when that failed
 *   cdc_bf_position  append ,"backfill":{...} to the /status position
 *   cdc_bf_destroy   free */
int cdc_bf_create(cdc_source *s, const json_t *cfg, char *err, size_t errlen);
int cdc_bf_open(cdc_source *s, char *err, size_t errlen);
int cdc_bf_poll(cdc_source *s, relay_batch *b, size_t max, char *err, size_t errlen);
int cdc_bf_holding(const cdc_source *s);
/* 1 while a backfill is being worked on (a chunk in memory, or one to
 * read), or when the next poll should look for one (a request was notified,
 * or the periodic recheck is due): the worker must then not read ahead,
 * since a read-ahead poll starts no chunk and acking a batch stores a
 * chunk's progress. Takes pending notifications from the worker's
 * connection. */
int cdc_bf_active(cdc_source *s);
void cdc_bf_begin(cdc_source *s, uint32_t xid);
void cdc_bf_change(cdc_source *s, const pgo_rel *rel, const pgo_msg *m);
void cdc_bf_truncate(cdc_source *s, uint32_t relid);
int cdc_bf_message(cdc_source *s, const pgo_msg *m, uint64_t lsn);
int cdc_bf_ack(cdc_source *s, char *err, size_t errlen);
void cdc_bf_position(cdc_source *s, relay_buf *p);
void cdc_bf_destroy(cdc_source *s);

/* 1 when the snapshot text "xmin:xmax:xip,xip,..." (pg_current_snapshot())
 * lists one of the n xids as running, or is not of that form; 0 otherwise.
 * Snapshot xids are 64-bit (epoch and xid): their low 32 bits are the xid
 * a replication stream's Begin message carries. Pure (unit-tested). */
int cdc_snapshot_running_any(const char *snapshot, const uint32_t *xids, size_t n);

#ifdef RELAY_CDC_NATS
int cdc_ext_create(cdc_source *s, char *err, size_t errlen);
int cdc_ext_open(cdc_source *s, char *err, size_t errlen);
void cdc_ext_relation(cdc_source *s, const pgo_rel *rel);
int cdc_ext_poll(cdc_source *s, char *err, size_t errlen);
void cdc_ext_destroy(cdc_source *s);
#else
static inline int cdc_ext_create(cdc_source *s, char *err, size_t errlen)
{
    (void)s; (void)err; (void)errlen;
    return 0;
}
static inline int cdc_ext_open(cdc_source *s, char *err, size_t errlen)
{
    (void)s; (void)err; (void)errlen;
    return 0;
}
static inline void cdc_ext_relation(cdc_source *s, const pgo_rel *rel)
{
    (void)s; (void)rel;
}
static inline int cdc_ext_poll(cdc_source *s, char *err, size_t errlen)
{
    (void)s; (void)err; (void)errlen;
    return 0;
}
static inline void cdc_ext_destroy(cdc_source *s)
{
    (void)s;
}
#endif


/* The published columns of a table ($1 = relation oid, $2 = publication):
 * the publication's column list (PostgreSQL 15), never dropped or generated
 * columns (pgoutput never sends those), in attribute order, as
 * (quoted name, type oid, name, typmod, member of the replica identity as
 * pgoutput flags it: the primary key / REPLICA IDENTITY index columns, every
 * column with REPLICA IDENTITY FULL). */
#define CDC_PUBLISHED_COLUMNS_SQL                                                                  \
    "SELECT quote_ident(a.attname), a.atttypid, a.attname, a.atttypmod,"                           \
    "       c.relreplident = 'f' OR EXISTS (SELECT 1 FROM pg_catalog.pg_index i"                   \
    "         WHERE i.indrelid = c.oid AND a.attnum = ANY (i.indkey) AND CASE c.relreplident"      \
    "         WHEN 'i' THEN i.indisreplident WHEN 'd' THEN i.indisprimary ELSE false END)"        \
    "  FROM pg_catalog.pg_attribute a"                                                             \
    "  JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"                                           \
    "  JOIN pg_catalog.pg_publication_tables pt ON pt.pubname = $2"                                \
    "   AND pt.schemaname = (SELECT n.nspname FROM pg_catalog.pg_class c"                          \
    "        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"                             \
    "        WHERE c.oid = $1::oid)"                                                               \
    "   AND pt.tablename = (SELECT relname FROM pg_catalog.pg_class WHERE oid = $1::oid)"          \
    " WHERE a.attrelid = $1::oid AND a.attnum > 0 AND NOT a.attisdropped"                          \
    "   AND a.attgenerated = '' AND a.attname = ANY (pt.attnames)"                                 \
    " ORDER BY a.attnum"

#endif
