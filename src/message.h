/*
 * message.h - the relay's unit of work: one event, and a batch of them.
 *
 * A relay_msg is what every source produces and every sink consumes, in both
 * directions. Its strings live in the batch's arena, so a batch of thousands
 * of events costs a handful of allocations and is released in one call.
 *
 * Dedup keys and subjects are computed here, once, never in a backend
 * (SPEC section 5):
 *   outbox   {outbox_table}:{outbox_id}:{row_index}  (inserted rows first, then deleted)
 *   cdc      {commit_lsn}:{index_of_change_in_transaction}
 *   reverse  source-specific (Nats-Msg-Id, Idempotency-Key, ...)
 * Subject templates take {stream_table} {op} {outbox_id} {refresh_id} {schema}
 * {table} {key}; substituted values are escaped so they can never split a NATS
 * subject into extra tokens or add wildcards.
 */
#ifndef RELAY_MESSAGE_H
#define RELAY_MESSAGE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef enum {
    OP_INSERT = 0,
    OP_UPDATE,
    OP_DELETE,
    OP_TRUNCATE,
    OP_SNAPSHOT, /* a row of a full refresh / initial snapshot */
    OP_REFRESH,  /* an outbox header without rows (payload IS NULL): carries the counts */
    OP_EVENT,    /* reverse direction: a message received from a broker */
} relay_op;
#define RELAY_OP_COUNT (OP_EVENT + 1)

/* Lower-case name of an op ("insert", ...); static storage. */
const char *relay_op_name(relay_op op);
/* Parse a lower-case op name; unknown or NULL names give OP_EVENT. */
relay_op relay_op_parse(const char *name);

/* The longest dedup key an inbox's event_id takes, in bytes (a btree entry
 * must fit in a third of a page; longer keys would fail the INSERT with
 * SQLSTATE 54000). The webhook receiver refuses longer Idempotency-Keys
 * with 400; other sources' messages with longer keys are dead-lettered. */
#define RELAY_MAX_KEY_BYTES 512

/* The length of a field with an optional explicit length (see relay_msg):
 * `len` when non-zero, else strlen(s), 0 for NULL. */
static inline size_t msg_bytes(const char *s, size_t len)
{
    return len ? len : s ? __builtin_strlen(s) : 0;
}

/* Delivery state of one message inside the worker loop. */
typedef enum {
    MSG_PENDING = 0, /* not yet confirmed by the sink */
    MSG_CONFIRMED,   /* the sink confirmed it durably */
    MSG_RETRY,       /* transient failure: publish again with the same dedup key */
    MSG_REJECTED,    /* permanent failure: goes to the dead-letter table */
    MSG_DEAD,        /* written to the dead-letter table */
} relay_msg_state;

/* The columns of a CDC row (pgoutput Relation message, or the catalog for
 * snapshot rows), in table order. Formats that map PostgreSQL types (the
 * Debezium format) and the row key ({key}, the Kafka record key) read it. */
typedef struct relay_row_col {
    const char *name;
    uint32_t type_oid;
    int32_t typmod;       /* -1 when none */
    int key;              /* part of the replica identity */
} relay_row_col;

typedef struct relay_row_type {
    int ncols;
    const relay_row_col *cols;
} relay_row_type;

typedef struct relay_msg {
    const char *dedup_key;   /* never NULL once the source returned the batch */
    const char *subject;     /* rendered subject/topic (forward) or event type (reverse) */
    relay_op op;
    const char *payload;     /* JSON text (row, or reverse message body); may be NULL */
    size_t payload_len;
    int payload_is_json;     /* reverse: 0 when the body was not JSON */
    int is_full_refresh;
    int64_t outbox_id;       /* -1 when not from an outbox */
    const char *refresh_id;  /* NULL when none */
    /* Template variables. */
    const char *stream_table;
    const char *schema;
    const char *table;
    /* CDC extras: pre-rendered JSON objects, NULL when absent. */
    const char *old_json;
    const char *source_json;
    uint32_t relation_id;    /* CDC: pgoutput relation OID, 0 otherwise */
    const char *lsn;         /* CDC: the change's LSN as text ("0/16B3748"), NULL otherwise */
    /* CDC: the row's columns; arena storage shared by the batch's events of
     * one table, NULL outside CDC (and for logical messages). */
    const relay_row_type *row_type;
    /* The row's replica-identity columns as a JSON object in the sink's
     * format (relay_format_key()), set by the worker before subjects are
     * rendered: the {key} template variable and the default Kafka record
     * key. NULL when the event has no row key (outbox, truncate, a table
     * without replica identity). Arena storage. */
    const char *key;
    /* The body in the sink's wire format (relay_encode()), encoded once by
     * the worker before the first publish when the sink asks for it
     * (relay_sink.encode); arena storage. NULL otherwise. */
    const char *body;
    size_t body_len;
    /* Reverse extras (inbox column mapping). */
    const char *source_name;
    const char *aggregate_id;
    const char *trace_id;
    /* Byte lengths of fields that a reverse source took from the wire and
     * that may hold NUL bytes (a JSON "\u0000" key, a "%00" path, a binary
     * Kafka header); 0 means strlen(). msg_bytes() reads them. The inbox
     * writer checks these bytes and the dead-letter table keeps them
     * exactly (docs/operations.md, "every message ends confirmed or in the
     * dead-letter table"). */
    size_t dedup_key_len;
    size_t subject_len;
    size_t aggregate_id_len;
    size_t trace_id_len;
    /* Worker state. */
    relay_msg_state state;
    const char *error;       /* set with MSG_RETRY / MSG_REJECTED; arena or static storage */
    void *ack;               /* source-private per-message ack handle */
    struct relay_arena *arena; /* the batch's arena (set by batch_add) */
} relay_msg;

/* A simple bump allocator: blocks are freed together by arena_reset(). */
typedef struct relay_arena_block relay_arena_block;
struct relay_arena;
typedef struct relay_arena {
    relay_arena_block *head;
} relay_arena;

/* Allocate `n` bytes (8-byte aligned) from the arena; never NULL. */
void *arena_alloc(relay_arena *a, size_t n);
/* Copy `n` bytes of `s` into the arena and NUL-terminate. */
char *arena_strndup(relay_arena *a, const char *s, size_t n);
char *arena_strdup(relay_arena *a, const char *s);
char *arena_printf(relay_arena *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Free every block but the first, which is kept for reuse. */
void arena_reset(relay_arena *a);
void arena_free(relay_arena *a);

typedef struct relay_batch {
    relay_msg *msgs;
    size_t n;
    size_t cap;
    relay_arena arena;
    /* Source-private position of this batch, set by poll() and read by
     * ack() (outbox: the last outbox id read; cdc: the end LSN of the last
     * Commit read), so that a batch read ahead (relay_source_ops.
     * can_read_ahead) never changes what acking this one confirms.
     * batch_reset() zeroes both. */
    int64_t ack_pos;
    int64_t ack_aux;
} relay_batch;

/* Set m->state = `state` and m->error to a printf-formatted text copied
 * into the batch's arena (sinks use this for MSG_RETRY / MSG_REJECTED). */
void msg_set_error(relay_msg *m, relay_msg_state state, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Append a zeroed message (outbox_id = -1, state PENDING) and return it. */
relay_msg *batch_add(relay_batch *b);

/* A random (version 4, RFC 4122 section 4.4) UUID in its 36-character text
 * form plus NUL: the dedup key of a reverse message that carries none
 * (webhook receiver, RabbitMQ source). From getrandom(); should that ever
 * fail, from the clock and a counter, never aborting. */
void relay_uuid_v4(char out[37]);
/* Empty the batch and its arena (keeps allocations for reuse). */
void batch_reset(relay_batch *b);
void batch_free(relay_batch *b);

/* Default subject templates (SPEC section 5). */
#define RELAY_DEFAULT_OUTBOX_SUBJECT "pgtrickle.{stream_table}.{op}"
#define RELAY_DEFAULT_CDC_SUBJECT "cdc.{table}.{op}"

/* Check a template: only known {variables}, balanced braces.
 * Returns 0, or -1 with a message in err naming the offending variable. */
int subject_template_check(const char *tmpl, char *err, size_t errlen);

/* Render `tmpl` for `m` into `out` (appended). Substituted values have every
 * byte that is not [A-Za-z0-9_-] escaped as "%XX" (e.g. "." -> "%2E", " " ->
 * "%20"), so a value is always exactly one NATS token. {key} is m->key (the
 * row's replica-identity columns as JSON), "_" when the event has none. */
void subject_render(const char *tmpl, const relay_msg *m, relay_buf *out);

/* Append the row key of a CDC event: a JSON object of the replica-identity
 * columns (row_type key flags) taken from the row (payload), in column
 * order, values as they are in the payload. Returns 1 when written, 0 when
 * the event has no row key (no row_type, no key column present, a
 * truncate, a non-object payload): nothing is appended then. */
int msg_row_key_native(const relay_msg *m, relay_buf *out);

/* Encode the native JSON envelope of SPEC section 5 (one object, no newline):
 * {"dedup_key","subject","op","payload","is_full_refresh","outbox_id","refresh_id"}
 * plus "old" and "source" for CDC events. Appends to `out`. */
void msg_encode_native(const relay_msg *m, relay_buf *out);

#endif
