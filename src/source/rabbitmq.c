/*
 * rabbitmq.c - the RabbitMQ reverse source (SPEC section 8, row rabbitmq):
 * messages of a queue -> inbox, through the "pg-inbox" sink, over AMQP
 * 0-9-1 (rabbitmq-c).
 *
 * Config (pipeline "source" object), besides the connection keys of
 * client/rabbitmq.h (url, tls_*, heartbeat_seconds, connect_timeout_ms):
 *   queue             the queue to consume (required)
 *   declare_queue     declare the queue (durable) when connecting (false: it
 *                     must exist, checked with a passive declare)
 *   queue_type        classic | quorum (classic), with declare_queue
 *   bindings          [{"exchange": "...", "routing_key": "..."}], bound when
 *                     connecting (queue.bind is idempotent)
 *   batch_size        messages per inbox transaction (500)
 *   prefetch_count    unacknowledged messages the broker sends ahead (twice
 *                     the batch size, at most 65535: the next batch arrives
 *                     while this one is written; with the batch size the
 *                     broker waits for each batch's ack before it sends
 *                     more); a batch never holds more
 *   poll_interval_ms  how long a poll waits for the first message (1000)
 *
 * Consuming.  basic.qos(prefetch_count) then basic.consume with manual
 * acknowledgement; the broker pushes deliveries, each with a delivery tag
 * that grows by one per delivery on the channel. poll() takes up to
 * batch_size of them (waiting for the first on the socket, in slices that
 * let a stop request through, then until the socket has been quiet for
 * FILL_MS); deliveries that arrive while the
 * worker writes a batch are read by idle() and kept for the next poll.
 * Each message becomes (source.h):
 *   dedup_key     message_id, else header pgtrickle-dedup-key, else a random
 *                 UUID (so a redelivered message without either is a new
 *                 row: producers should set message_id)
 *   subject       the type property, else the routing key (the event_type
 *                 fallback when the body has no event_type field)
 *   payload       the body (payload_is_json = 0 unless it is valid JSON; an
 *                 empty body is a NULL payload)
 *   source_name   "rabbitmq:{queue}"
 *   aggregate_id  the routing key; trace_id: header traceparent
 * Header values are decoded by rmq_header_fields_get (client/rabbitmq.c);
 * every value keeps its bytes, so the inbox writer dead-letters what is not
 * valid UTF-8 with the original bytes.
 *
 * Acknowledgement.  ack(), after the inbox COMMIT, sends one basic.ack with
 * multiple=1 for the batch's last delivery tag (the batch holds every
 * delivery up to it, in order). release() (the batch will not be
 * committed: PostgreSQL down, shutdown) sends basic.nack multiple=1
 * requeue=1, so the messages come back at once. A crash or a lost
 * connection between the COMMIT and the ack leaves them unacknowledged:
 * the broker redelivers them (redelivered flag set) and the inbox skips
 * them by event_id. Tags are per channel: a batch read on a connection that
 * has since been replaced is not acked on the new one (the broker already
 * requeued it).
 *
 * Failures.  A connection lost (heartbeats, socket), a channel or
 * connection closed by the broker (logged with its reply code and text), or
 * the consumer cancelled by the broker (basic.cancel: the queue was deleted)
 * fail the poll; the worker reports the source down and calls open() with
 * backoff, which reconnects, checks the queue (a missing queue is an error
 * naming source.queue) and subscribes again.
 */
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>

#include "../client/rabbitmq.h"
#include "../config.h"
#include "../json_scan.h"
#include "../log.h"
#include "../worker.h"
#include "source.h"

#define WAIT_SLICE_MS 200
/* Once a batch has its first message, how long poll() waits for more while
 * the socket is quiet: deliveries arrive in bursts, and a few ms fill the
 * batch instead of writing many small ones. */
#define FILL_MS 5
#define PREFETCH_MAX 65535

typedef struct binding {
    char *exchange;
    char *routing_key;
} binding;

/* Per-message ack handle, in the batch arena. */
typedef struct rmq_ack {
    uint64_t tag;
    uint64_t generation; /* connection it came from */
} rmq_ack;

typedef struct rabbitmq_source {
    relay_source base;
    relay_rmq_conn c;
    char *queue;
    int declare_queue;
    char *queue_type;
    binding *bindings;
    size_t nbindings;
    int64_t batch_size;
    int64_t prefetch;
    int64_t poll_interval_ms;
    char *source_name;          /* "rabbitmq:{queue}" */

    uint64_t generation;        /* connections made; tags are only valid within one */
    int consuming;
    char consumer_tag[256];
    amqp_envelope_t *stash;     /* deliveries read by idle(), oldest first */
    size_t nstash, stash_cap;
    uint64_t held;              /* messages of the batch not yet acked or released */

    uint64_t delivered, acked, requeued, redelivered;
    relay_buf pos;
} rabbitmq_source;

static const char *pipeline_name(const rabbitmq_source *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- configuration ----------------------------------------------------- */

static void rq_destroy(relay_source *base);

static int parse_bindings(rabbitmq_source *s, const json_t *cfg, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, "bindings");
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_array(v)) {
        snprintf(err, errlen, "source.bindings: expected an array of {\"exchange\", "
                 "\"routing_key\"} objects");
        return -1;
    }
    s->bindings = xcalloc(json_array_size(v) + 1, sizeof *s->bindings);
    size_t i;
    json_t *b;
    json_array_foreach(v, i, b) {
        char path[64];
        snprintf(path, sizeof path, "source.bindings[%zu]", i);
        static const char *const keys[] = {"exchange", "routing_key", NULL};
        const char *ex, *rk;
        if (!json_is_object(b)) {
            snprintf(err, errlen, "%s: expected an object {\"exchange\", \"routing_key\"}", path);
            return -1;
        }
        if (cfg_known_keys(b, path, keys, err, errlen) < 0 ||
            cfg_str_required(b, path, "exchange", &ex, err, errlen) < 0 ||
            cfg_str(b, path, "routing_key", "", &rk, err, errlen) < 0)
            return -1;
        if (strlen(ex) > 255 || strlen(rk) > 255) {
            snprintf(err, errlen, "%s: names are at most 255 bytes", path);
            return -1;
        }
        s->bindings[s->nbindings].exchange = xstrdup(ex);
        s->bindings[s->nbindings].routing_key = xstrdup(rk);
        s->nbindings++;
    }
    return 0;
}

static relay_source *rq_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "queue", "declare_queue", "queue_type", "bindings",
                                       "batch_size", "prefetch_count", "poll_interval_ms",
                                       RELAY_RMQ_CONN_KEYS, NULL};
    const char *queue, *qtype;
    int declare;
    int64_t batch, prefetch, interval;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "queue", &queue, err, errlen) < 0 ||
        cfg_bool(cfg, "source", "declare_queue", 0, &declare, err, errlen) < 0 ||
        cfg_str(cfg, "source", "queue_type", NULL, &qtype, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 500, 1, 100000, &batch, err, errlen) < 0 ||
        cfg_int(cfg, "source", "prefetch_count", 2 * batch < PREFETCH_MAX ? 2 * batch : PREFETCH_MAX,
                1, PREFETCH_MAX, &prefetch, err, errlen) < 0 ||
        cfg_int(cfg, "source", "poll_interval_ms", 1000, 10, 3600000, &interval, err, errlen) < 0)
        return NULL;
    if (strlen(queue) > 255) {
        snprintf(err, errlen, "source.queue: longer than 255 bytes");
        return NULL;
    }
    if (qtype && strcmp(qtype, "classic") && strcmp(qtype, "quorum")) {
        snprintf(err, errlen, "source.queue_type: expected classic or quorum");
        return NULL;
    }
    if (qtype && !declare) {
        snprintf(err, errlen, "source.queue_type: only used with source.declare_queue: true");
        return NULL;
    }
    rabbitmq_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->base.default_batch = (size_t)batch;
    s->queue = xstrdup(queue);
    s->declare_queue = declare;
    s->queue_type = xstrdup(qtype ? qtype : "classic");
    s->batch_size = batch;
    s->prefetch = prefetch;
    s->poll_interval_ms = interval;
    relay_buf n = {0};
    buf_printf(&n, "rabbitmq:%s", queue);
    s->source_name = buf_steal(&n);
    if (parse_bindings(s, cfg, err, errlen) < 0 ||
        rmq_conn_parse(&s->c, cfg, "source", w ? w->cfg.name : NULL, err, errlen) < 0) {
        rq_destroy(&s->base);
        return NULL;
    }
    return &s->base;
}

/* ---- status ------------------------------------------------------------------ */

static void publish_position(rabbitmq_source *s)
{
    relay_buf *b = &s->pos;
    buf_clear(b);
    buf_puts(b, "{\"queue\":");
    buf_put_json_str(b, s->queue, strlen(s->queue));
    buf_puts(b, ",\"consumer_tag\":");
    if (s->consuming)
        buf_put_json_str(b, s->consumer_tag, strlen(s->consumer_tag));
    else
        buf_puts(b, "null");
    buf_printf(b, ",\"prefetch_count\":%" PRId64 ",\"unacked\":%" PRIu64 ",\"delivered\":%" PRIu64
               ",\"acked\":%" PRIu64 ",\"requeued\":%" PRIu64 ",\"redelivered\":%" PRIu64 ",",
               s->prefetch, s->held + s->nstash, s->delivered, s->acked, s->requeued,
               s->redelivered);
    rmq_conn_describe(&s->c, b);
    buf_putc(b, '}');
    if (s->base.w && s->base.w->stats)
        stats_set_position(s->base.w->stats, b->data);
}

/* ---- connection ------------------------------------------------------------- */

static void drop_stash(rabbitmq_source *s)
{
    for (size_t i = 0; i < s->nstash; i++)
        amqp_destroy_envelope(&s->stash[i]);
    s->nstash = 0;
}

/* The connection is gone (the broker requeues every unacked delivery). */
static void source_down(rabbitmq_source *s, const char *why)
{
    rmq_conn_down(&s->c, why);
    s->consuming = 0;
    drop_stash(s);
}

/* After a failed queue RPC (`code` the broker's reply code, or -1 for a
 * library error; the connection is already down): name the key at fault. */
static void queue_error(rabbitmq_source *s, int code, const char *key, char *err, size_t errlen)
{
    if (code < 0)
        return;
    char why[800];
    snprintf(why, sizeof why, "%s", err);
    const char *hint = "";
    if (code == AMQP_NOT_FOUND)
        hint = s->declare_queue ? "" : " (declare it, or set source.declare_queue)";
    else if (code == AMQP_PRECONDITION_FAILED)
        hint = " (the queue exists with other settings)";
    else if (code == AMQP_ACCESS_REFUSED)
        hint = " (the user of source.url lacks the permission)";
    snprintf(err, errlen, "%s: %s%s", key, why, hint);
    snprintf(s->c.last_error, sizeof s->c.last_error, "%s", err);
}

static int declare_and_bind(rabbitmq_source *s, char *err, size_t errlen)
{
    char what[400];
    amqp_table_entry_t qt = {
        .key = amqp_cstring_bytes("x-queue-type"),
        .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(s->queue_type)},
    };
    amqp_table_t args = s->declare_queue ? (amqp_table_t){1, &qt} : amqp_empty_table;
    amqp_queue_declare(s->c.conn, RELAY_RMQ_CHANNEL, amqp_cstring_bytes(s->queue),
                       !s->declare_queue, 1 /* durable */, 0, 0, args);
    snprintf(what, sizeof what, "%s queue \"%s\"", s->declare_queue ? "declaring the" : "checking the",
             s->queue);
    int code = rmq_conn_rpc_check(&s->c, what, err, errlen);
    if (code) {
        queue_error(s, code, s->declare_queue && code == AMQP_PRECONDITION_FAILED
                                 ? "source.queue_type" : "source.queue", err, errlen);
        return -1;
    }
    for (size_t i = 0; i < s->nbindings; i++) {
        binding *b = &s->bindings[i];
        amqp_queue_bind(s->c.conn, RELAY_RMQ_CHANNEL, amqp_cstring_bytes(s->queue),
                        amqp_cstring_bytes(b->exchange), amqp_cstring_bytes(b->routing_key),
                        amqp_empty_table);
        snprintf(what, sizeof what, "binding queue \"%s\" to exchange \"%s\" with routing key "
                 "\"%s\"", s->queue, b->exchange, b->routing_key);
        code = rmq_conn_rpc_check(&s->c, what, err, errlen);
        if (code) {
            char key[64];
            snprintf(key, sizeof key, "source.bindings[%zu].exchange", i);
            queue_error(s, code, key, err, errlen);
            return -1;
        }
    }
    return 0;
}

static int subscribe(rabbitmq_source *s, char *err, size_t errlen)
{
    amqp_basic_qos(s->c.conn, RELAY_RMQ_CHANNEL, 0, (uint16_t)s->prefetch, 0);
    if (rmq_conn_rpc_check(&s->c, "basic.qos", err, errlen))
        return -1;
    amqp_basic_consume_ok_t *ok =
        amqp_basic_consume(s->c.conn, RELAY_RMQ_CHANNEL, amqp_cstring_bytes(s->queue),
                           amqp_empty_bytes, 0, 0 /* manual acks */, 0, amqp_empty_table);
    char what[300];
    snprintf(what, sizeof what, "consuming queue \"%s\"", s->queue);
    int code = rmq_conn_rpc_check(&s->c, what, err, errlen);
    if (code) {
        queue_error(s, code, "source.queue", err, errlen);
        return -1;
    }
    snprintf(s->consumer_tag, sizeof s->consumer_tag, "%.*s", (int)ok->consumer_tag.len,
             (char *)ok->consumer_tag.bytes);
    utf8_sanitize(s->consumer_tag);
    s->consuming = 1;
    return 0;
}

static int rq_open(relay_source *base, char *err, size_t errlen)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    if (s->c.up && s->consuming)
        return 0;
    if (s->c.up) /* e.g. the consumer was cancelled: start afresh */
        source_down(s, "re-subscribing");
    if (s->base.w && s->base.w->stats)
        s->c.health_flag = &s->base.w->stats->source_up;
    if (rmq_conn_open(&s->c, err, errlen) < 0)
        return -1;
    s->generation++;
    s->held = 0;
    if (declare_and_bind(s, err, errlen) < 0 || subscribe(s, err, errlen) < 0) {
        source_down(s, err);
        return -1;
    }
    rmq_conn_ready(&s->c);
    log_info(pipeline_name(s), "consuming RabbitMQ queue \"%s\" (prefetch %" PRId64 ")", s->queue,
             s->prefetch);
    publish_position(s);
    return 0;
}

/* ---- receiving ------------------------------------------------------------------ */

/* Add one delivery to the batch (copied into its arena). */
static void add_delivery(rabbitmq_source *s, relay_batch *b, const amqp_envelope_t *env)
{
    relay_arena *a = &b->arena;
    const amqp_basic_properties_t *p = &env->message.properties;
    relay_msg *m = batch_add(b);
    rmq_header_fields h;
    rmq_header_fields_get(p->_flags & AMQP_BASIC_HEADERS_FLAG ? &p->headers : NULL, &h);
    if ((p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) && p->message_id.len > 0) {
        m->dedup_key = arena_strndup(a, p->message_id.bytes, p->message_id.len);
        m->dedup_key_len = p->message_id.len;
    } else if (h.dedup_key_len > 0) {
        m->dedup_key = arena_strndup(a, h.dedup_key, h.dedup_key_len);
        m->dedup_key_len = h.dedup_key_len;
    } else {
        char u[37];
        relay_uuid_v4(u);
        m->dedup_key = arena_strdup(a, u);
    }
    const amqp_bytes_t rk = env->routing_key;
    if ((p->_flags & AMQP_BASIC_TYPE_FLAG) && p->type.len > 0) {
        m->subject = arena_strndup(a, p->type.bytes, p->type.len);
        m->subject_len = p->type.len;
    } else if (rk.len > 0) {
        m->subject = arena_strndup(a, rk.bytes, rk.len);
        m->subject_len = rk.len;
    } else {
        m->subject = s->queue;
    }
    if (rk.len > 0) {
        m->aggregate_id = arena_strndup(a, rk.bytes, rk.len);
        m->aggregate_id_len = rk.len;
    }
    if (h.trace_id_len > 0) {
        m->trace_id = arena_strndup(a, h.trace_id, h.trace_id_len);
        m->trace_id_len = h.trace_id_len;
    }
    m->op = OP_EVENT;
    m->source_name = s->source_name;
    const amqp_bytes_t body = env->message.body;
    if (body.len > 0) {
        m->payload = arena_strndup(a, body.bytes, body.len);
        m->payload_len = body.len;
        m->payload_is_json = json_valid(m->payload, m->payload_len);
    } else {
        m->payload_is_json = 1;
    }
    rmq_ack *k = arena_alloc(a, sizeof *k);
    k->tag = env->delivery_tag;
    k->generation = s->generation;
    m->ack = k;
    s->delivered++;
    if (env->redelivered)
        s->redelivered++;
    if ((p->_flags & AMQP_BASIC_TIMESTAMP_FLAG) && s->base.w && s->base.w->stats && p->timestamp) {
        int64_t lag = now_wall_ms() - (int64_t)p->timestamp * 1000;
        atomic_store(&s->base.w->stats->lag_ms, lag > 0 ? lag : 0);
    }
}

/* A frame that is not a delivery arrived on the consumer: a close or a
 * cancel ends the subscription (err set, -1); anything else is skipped. */
static int other_frame(rabbitmq_source *s, char *err, size_t errlen)
{
    amqp_frame_t f;
    int rc = amqp_simple_wait_frame(s->c.conn, &f);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "%s", amqp_error_string2(rc));
        source_down(s, err);
        return -1;
    }
    if (rmq_conn_take_close(&s->c, &f, err, errlen)) {
        s->consuming = 0;
        drop_stash(s);
        return -1;
    }
    if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
        snprintf(err, errlen, "source.queue: the broker cancelled the consumer of queue \"%s\" "
                 "(was the queue deleted?); subscribing again when it is back", s->queue);
        source_down(s, err);
        return -1;
    }
    return 0;
}

typedef enum { GOT_MESSAGE, GOT_NOTHING, GOT_ERROR } recv_rc;

/* Read one delivery without waiting for the socket (what the library has
 * buffered or the socket holds). Heartbeats are exchanged on the way. */
static recv_rc recv_one(rabbitmq_source *s, amqp_envelope_t *env, char *err, size_t errlen)
{
    struct timeval zero = {0, 0};
    amqp_maybe_release_buffers(s->c.conn);
    amqp_rpc_reply_t r = amqp_consume_message(s->c.conn, env, &zero, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return GOT_MESSAGE;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        return GOT_NOTHING;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE)
        return other_frame(s, err, errlen) < 0 ? GOT_ERROR : GOT_NOTHING;
    rmq_reply_text(r, err, errlen);
    source_down(s, err);
    return GOT_ERROR;
}

/* Something to read without blocking: buffered in the library, or on the
 * socket. */
static int readable(rabbitmq_source *s)
{
    if (amqp_data_in_buffer(s->c.conn) || amqp_frames_enqueued(s->c.conn))
        return 1;
    struct pollfd p = {.fd = amqp_get_sockfd(s->c.conn), .events = POLLIN};
    return poll(&p, 1, 0) > 0;
}

static int rq_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    if (!s->c.up || !s->consuming) {
        snprintf(err, errlen, "%s", s->c.last_error[0] ? s->c.last_error : "not consuming");
        return -1;
    }
    if (max > (size_t)s->batch_size)
        max = (size_t)s->batch_size;
    size_t taken = 0;
    for (; taken < s->nstash && b->n < max; taken++) {
        add_delivery(s, b, &s->stash[taken]);
        amqp_destroy_envelope(&s->stash[taken]);
    }
    if (taken > 0) {
        memmove(s->stash, s->stash + taken, (s->nstash - taken) * sizeof *s->stash);
        s->nstash -= taken;
    }

    int64_t deadline = now_mono_ms() + s->poll_interval_ms;
    int64_t fill_until = 0; /* set at the first message */
    while (b->n < max) {
        if (!readable(s)) {
            int64_t now = now_mono_ms();
            if (b->n > 0 && !fill_until)
                fill_until = now + FILL_MS;
            int64_t left = (b->n > 0 ? fill_until : deadline) - now;
            if (left <= 0)
                break; /* what arrived is the batch */
            int rc = worker_wait(s->base.w, amqp_get_sockfd(s->c.conn), POLLIN,
                                 (int)(left > WAIT_SLICE_MS ? WAIT_SLICE_MS : left));
            if (rc < 0)
                break; /* stop requested */
        }
        amqp_envelope_t env;
        recv_rc rc = recv_one(s, &env, err, errlen);
        if (rc == GOT_ERROR)
            return -1; /* the broker requeues what this connection delivered */
        if (rc == GOT_MESSAGE) {
            add_delivery(s, b, &env);
            amqp_destroy_envelope(&env);
        }
    }
    s->held = b->n;
    return (int)b->n;
}

/* Keep the connection served while the worker writes a batch: deliveries
 * beyond the batch (prefetch > batch) are kept for the next poll. */
static void rq_idle(relay_source *base)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    if (!s->c.up || !s->consuming)
        return;
    char err[600];
    for (;;) {
        if (s->nstash == s->stash_cap) {
            s->stash_cap = s->stash_cap ? s->stash_cap * 2 : 64;
            s->stash = xrealloc(s->stash, s->stash_cap * sizeof *s->stash);
        }
        recv_rc rc = recv_one(s, &s->stash[s->nstash], err, sizeof err);
        if (rc != GOT_MESSAGE)
            return; /* an error took the connection down: the next poll says so */
        s->nstash++;
    }
}

/* ---- acknowledgement ------------------------------------------------------------ */

/* The batch's last delivery tag on the current connection, 0 when none. */
static uint64_t last_tag(rabbitmq_source *s, relay_batch *b)
{
    uint64_t tag = 0;
    for (size_t i = 0; i < b->n; i++) {
        rmq_ack *k = b->msgs[i].ack;
        if (k && k->generation == s->generation && k->tag > tag)
            tag = k->tag;
    }
    return tag;
}

static int rq_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    uint64_t tag = last_tag(s, b);
    s->held = 0;
    if (b->n == 0)
        return 0;
    if (tag == 0 || !s->c.up) {
        snprintf(err, errlen, "the connection the batch came from is gone: the broker "
                 "redelivers it and the inbox skips the messages it already holds");
        publish_position(s);
        return -1;
    }
    int rc = amqp_basic_ack(s->c.conn, RELAY_RMQ_CHANNEL, tag, 1);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "basic.ack: %s", amqp_error_string2(rc));
        source_down(s, err);
        publish_position(s);
        return -1;
    }
    s->acked += b->n;
    publish_position(s);
    return 0;
}

static void rq_release(relay_source *base, relay_batch *b)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    uint64_t tag = last_tag(s, b);
    s->held = 0;
    if (tag && s->c.up) {
        int rc = amqp_basic_nack(s->c.conn, RELAY_RMQ_CHANNEL, tag, 1, 1 /* requeue */);
        if (rc == AMQP_STATUS_OK) {
            s->requeued += b->n;
            log_debug(pipeline_name(s), "RabbitMQ: %zu messages requeued", b->n);
        } else {
            source_down(s, amqp_error_string2(rc));
        }
    }
    publish_position(s);
}

static void rq_position(relay_source *base, relay_buf *out)
{
    rabbitmq_source *s = (rabbitmq_source *)base;
    publish_position(s);
    buf_append(out, s->pos.data, s->pos.len);
}

static void rq_destroy(relay_source *base)
{
    if (!base)
        return;
    rabbitmq_source *s = (rabbitmq_source *)base;
    drop_stash(s);
    free(s->stash);
    rmq_conn_free(&s->c);
    for (size_t i = 0; i < s->nbindings; i++) {
        free(s->bindings[i].exchange);
        free(s->bindings[i].routing_key);
    }
    free(s->bindings);
    free(s->queue);
    free(s->queue_type);
    free(s->source_name);
    buf_free(&s->pos);
    free(s);
}

const relay_source_ops relay_source_rabbitmq_ops = {
    .type = "rabbitmq",
    .create = rq_create,
    .open = rq_open,
    .poll = rq_poll,
    .ack = rq_ack,
    .release = rq_release,
    .idle = rq_idle,
    .position = rq_position,
    .destroy = rq_destroy,
};
