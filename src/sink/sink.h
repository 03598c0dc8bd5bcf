/*
 * sink.h - the interface every sink implements (SPEC section 10).
 *
 * publish() sends a set of messages and returns only when each one is
 * durably confirmed (PubAck, delivery report, fsync, COMMIT, 2xx) or has
 * failed. It marks every message it was given:
 *   MSG_CONFIRMED  confirmed durably
 *   MSG_RETRY      transient failure (the worker retries it, same dedup key)
 *   MSG_REJECTED   permanent failure (the worker dead-letters it), with error
 * Within one call, publishes are pipelined (bounded in-flight), never one
 * round trip per message. Retry, backoff, dead letters and acknowledgement
 * are the worker loop's job, not the sink's.
 *
 * Embed `relay_sink` as the first member of the backend's struct.
 */
#ifndef RELAY_SINK_H
#define RELAY_SINK_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "encode.h"
#include "message.h"

struct relay_worker;
typedef struct relay_sink relay_sink;

typedef struct relay_sink_ops {
    const char *type; /* config sink "type" value */

    /* Validate `cfg` (the pipeline's "sink" object) and allocate. Nothing is
     * connected yet. Returns NULL with a message naming the key. */
    relay_sink *(*create)(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen);

    /* (Re)connect. Returns 0, or -1 (transient). */
    int (*open)(relay_sink *s, char *err, size_t errlen);

    /* Publish msgs[0..n) and wait for confirmation; set each msg's state.
     * Returns 0 when every message got a state, or -1 when the sink itself
     * is down (all given messages are left MSG_RETRY; err set). */
    int (*publish)(relay_sink *s, relay_msg **msgs, size_t n, char *err, size_t errlen);

    /* Optional: append sink details (e.g. file name, stream) as a JSON object. */
    void (*describe)(relay_sink *s, relay_buf *out);

    void (*destroy)(relay_sink *s);
} relay_sink_ops;

struct relay_sink {
    const relay_sink_ops *ops;
    struct relay_worker *w;
    /* Subject template from the sink config ("subject_template", or
     * "topic_template"/"routing_key_template"/"stream_key" where the backend
     * names it so); NULL means the source's default. Owned. */
    char *subject_template;
    /* Set by publish() when the endpoint asked for a minimum delay before
     * the next attempt (e.g. HTTP Retry-After), in ms; 0 means none. The
     * worker waits at least this long before republishing MSG_RETRY
     * messages, then resets it to 0. */
    int64_t retry_after_ms;
    /* Set by create() for a sink that sends relay_encode()d bodies: the
     * worker encodes every message once, in `format`, into msg->body before
     * its first publish, and dead-letters (never hands to the sink) an event
     * that cannot be encoded. 0: the sink formats messages itself. */
    int encode;
    relay_format format;
    /* Set by create() for a sink that writes through the worker's own
     * PostgreSQL connection (pg-inbox without a url): its publish() must
     * never run while the worker polls on that connection, so the worker
     * does not read ahead for it. */
    int uses_worker_pg;
    /* Format settings and subject_overrides (encode.h), read by create()
     * with relay_format_opts_from_cfg() and freed by destroy(); the worker
     * applies the overrides when it renders subjects. Zero: the defaults. */
    relay_format_opts fopts;
};

#endif
