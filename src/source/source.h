/*
 * source.h - the interface every source implements (SPEC section 10).
 *
 * A source produces batches of relay_msg and is told when a batch is durably
 * confirmed by the sink. It never decides delivery policy: the worker loop
 * (worker.c) calls poll -> sink publish -> ack, retries, dead-letters and
 * backs off. A source only has to make `ack` durable and idempotent, and to
 * re-deliver the same messages with the same dedup keys after a crash.
 *
 * Forward sources (outbox, cdc) read PostgreSQL through the worker's own
 * connection (w->pg), which holds the pipeline's advisory lock. Reverse
 * sources (nats, kafka, webhook, ...) read a broker.
 *
 * Embed `relay_source` as the first member of the backend's struct.
 *
 * Reverse sources (broker -> inbox) fill each message as follows; the inbox
 * writer (sink "pg-inbox", src/sink/pg_inbox.c) turns it into one row:
 *   dedup_key     -> event_id (SPEC section 5: Nats-Msg-Id, Kafka header,
 *                    Idempotency-Key, ... else the source's fallback)
 *   op            OP_EVENT
 *   subject       subject / topic / queue / stream key: the event_type
 *                 fallback when the payload has no event_type field
 *   payload, payload_len, payload_is_json
 *                 the message body; set payload_is_json = 0 when the body is
 *                 not valid JSON (it is stored as a JSON string, not dropped)
 *   source_name   -> source column (e.g. "nats:ORDERS", "kafka:orders")
 *   aggregate_id  -> aggregate_id (Kafka record key, AMQP routing key, ...)
 *   trace_id      -> trace_id (e.g. a traceparent header), or NULL
 *   ack           the source's own handle, used by its ack()
 * ack() is only called after the inbox transaction committed; release()
 * when the batch will not be committed (nack / requeue where possible).
 */
#ifndef RELAY_SOURCE_H
#define RELAY_SOURCE_H

#include <jansson.h>
#include <stddef.h>

#include "buf.h"
#include "message.h"

struct relay_worker;
typedef struct relay_source relay_source;

typedef struct relay_source_ops {
    const char *type; /* config "source_type" value */

    /* Validate `cfg` (the pipeline's "source" object) and allocate the source.
     * Nothing is connected yet. Returns NULL with a message naming the key. */
    relay_source *(*create)(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen);

    /* (Re)connect / prepare. Called before the first poll and after any
     * failure. Returns 0, or -1 (transient: the worker backs off, retries). */
    int (*open)(relay_source *s, char *err, size_t errlen);

    /* Fill `b` with up to `max` messages. May wait (through worker_wait) up
     * to its poll interval when nothing is available. Returns the number of
     * messages (0 when none), or -1 on a transient error (err set). The batch
     * stays owned by the worker until ack. */
    int (*poll)(relay_source *s, relay_batch *b, size_t max, char *err, size_t errlen);

    /* Every message of the last polled batch is either CONFIRMED by the sink
     * or DEAD (in the dead-letter table): make that durable (commit the
     * offset, ack the broker, send the LSN). Returns 0, or -1 (transient; the
     * messages will be redelivered after a restart, which is allowed). */
    int (*ack)(relay_source *s, relay_batch *b, char *err, size_t errlen);

    /* Optional: 1 when poll() may be called again now, before the batch
     * last polled is acked, and would return without waiting (a backlog is
     * there). The worker then reads the next batch on its own thread while
     * the sink publishes the current one on another (worker.c, "read-ahead");
     * acks stay in order. A source that says 1 keeps what ack() confirms in
     * relay_batch.ack_pos/ack_aux of each batch, never in its own state, and
     * must not start anything in the read-ahead poll that the ack of the
     * earlier batch would finish (a transaction, a backfill chunk). If the
     * earlier batch fails, the worker discards the read-ahead batch and
     * reopens the source (open() rewinds to the durable position). */
    int (*can_read_ahead)(relay_source *s);

    /* Optional: the batch will not be acked (shutdown timeout, lost lock).
     * Release it for prompt redelivery where the broker supports that. */
    void (*release)(relay_source *s, relay_batch *b);

    /* Optional: called by the worker at least once a second while it is
     * not in poll() (publishing, retrying, backing off), so a source can keep
     * its connection alive, e.g. send replication standby status. Must not
     * block for long and must not acknowledge anything unconfirmed. */
    void (*idle)(relay_source *s);

    /* Append the current position as a JSON object for /status. */
    void (*position)(relay_source *s, relay_buf *out);

    /* Close connections and free. */
    void (*destroy)(relay_source *s);
} relay_source_ops;

struct relay_source {
    const relay_source_ops *ops;
    struct relay_worker *w;
    /* Default subject template for events of this source (outbox or cdc). */
    const char *default_subject;
    /* Events per batch when the config has no source.batch_size; 0 lets the
     * source decide within its own limits (the worker passes 100000). */
    size_t default_batch;
    /* Set by a source whose source.batch_size counts something else than
     * events (the outbox: rows, each holding up to thousands of events):
     * the events per batch, whatever source.batch_size says. 0: unused. */
    size_t max_events;
};

#endif
