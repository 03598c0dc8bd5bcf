/*
 * rabbitmq.c - the RabbitMQ sink (SPEC section 7, row rabbitmq): events
 * published to an exchange over AMQP 0-9-1 with publisher confirms
 * (rabbitmq-c).
 *
 * Config (pipeline "sink" object), besides the connection keys of
 * client/rabbitmq.h (url, tls_*, heartbeat_seconds, connect_timeout_ms):
 *   exchange              the exchange (required; "" is the default exchange,
 *                         which routes by queue name)
 *   exchange_type         direct | fanout | topic | headers (topic); what
 *                         declare_exchange declares and checks
 *   declare_exchange      declare the exchange (durable) when connecting
 *                         (false: it must exist, checked with a passive
 *                         declare, so a missing exchange is reported at once)
 *   routing_key_template  routing key per event (the subject template
 *                         variables); default the source's subject template
 *                         (outbox: pgtrickle.{stream_table}.{op})
 *   persistent            delivery_mode 2 (true)
 *   mandatory             publish with the mandatory flag (true): a message
 *                         no queue is bound for is returned, never dropped
 *   format                native | msgpack (native), see encode.h
 *   confirm_timeout_ms    how long a batch may wait for its confirms (30000)
 *   max_in_flight         unconfirmed messages on the wire at most (2048)
 *
 * Publishing.  The channel is in confirm mode (confirm.select), so the
 * broker numbers every publish on it 1, 2, 3... (its delivery tag) and
 * answers each with basic.ack or basic.nack, possibly for many at once
 * ("multiple": every tag up to this one). publish() sends the whole batch
 * (at most max_in_flight unconfirmed at a time), then reads frames until
 * every message has its answer:
 *   basic.ack     MSG_CONFIRMED (a persistent message on a durable queue is
 *                 then on disk), unless the message was returned first
 *   basic.nack    MSG_RETRY (the broker could not take it)
 *   basic.return  (mandatory, no queue bound for the routing key): the
 *                 broker returns the message, with its message_id, before
 *                 its ack; it becomes MSG_RETRY with an error naming the
 *                 exchange and the routing key. A batch that was entirely
 *                 returned fails the publish (pipeline degraded); the worker
 *                 retries with backoff until a queue is bound, and nothing
 *                 is acknowledged to the source meanwhile.
 * A message whose routing key or dedup key exceeds AMQP's 255-byte short
 * string is MSG_REJECTED (dead-lettered) before it is sent.
 *
 * Properties: message_id = dedup key, delivery_mode 2 when persistent,
 * content_type of the format, timestamp (publish time, seconds), type = op,
 * app_id "pgtrickle-relay", and the header pgtrickle-full-refresh = "true"
 * on snapshot events.
 *
 * Connection.  The worker only calls the sink when it has events, so a
 * keeper thread serves the idle connection: twice a second it reads what
 * the broker sent (heartbeats are sent and checked on the way; a
 * connection.close or channel.close is answered and logged with its reply
 * code and text) and, while the connection is down, reconnects with
 * backoff (1 s doubling to 30 s), keeping /health degraded until it is
 * back. The keeper and publish() share the connection under `mu`.
 * A lost connection, a closed channel, a missing confirm after
 * confirm_timeout_ms or the shutdown deadline fail the publish (-1): the
 * unconfirmed messages are republished by the worker with the same
 * message_id, so a consumer may see a message twice (at least once) and
 * should deduplicate on message_id (the RabbitMQ source does).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <amqp.h>

#include "buf.h"
#include "client/rabbitmq.h"
#include "config.h"
#include "encode.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "stats.h"
#include "worker.h"

#define SHORTSTR_MAX 255
#define KEEPER_EVERY_MS 500
#define RECONNECT_MIN_MS 1000
#define RECONNECT_MAX_MS 30000
#define WAIT_SLICE_MS 200

typedef struct rabbitmq_sink {
    relay_sink base;
    relay_rmq_conn c;
    char *exchange;
    char *exchange_type;
    int declare_exchange;
    int persistent;
    int mandatory;
    int64_t confirm_timeout_ms;
    int64_t max_in_flight;

    /* the keeper thread; `mu` guards everything below and `c` */
    pthread_mutex_t mu;
    pthread_cond_t cond;
    pthread_t keeper;
    int keeper_started;
    int keeper_stop;
    int64_t next_reconnect_ms;  /* monotonic; while down */
    int64_t reconnect_delay_ms;
    char blocked[200];          /* connection.blocked reason, "" when not blocked */

    /* the batch being confirmed (publish) */
    relay_msg **pub;            /* published messages, in delivery-tag order */
    uint8_t *done;              /* 1 once pub[i] has its ack or nack */
    size_t npub, cap;
    uint64_t first_tag;         /* delivery tag of pub[0] */
    uint64_t next_tag;          /* delivery tag of the next publish on the channel */
    size_t unresolved;          /* published, no ack/nack yet */
    size_t resolved_prefix;     /* pub[0..resolved_prefix) all have their ack/nack */
    size_t return_cursor;       /* returns arrive in publish order */
    size_t returned_now;        /* messages returned in this publish() */
    char last_unroutable[600];  /* logged once until a batch is routed again */

    /* counters, for describe() */
    uint64_t published, confirmed, nacked, returned;
} rabbitmq_sink;

static const char *pipeline_name(const rabbitmq_sink *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- configuration ----------------------------------------------------- */

static void rs_destroy(relay_sink *base);

static int parse_exchange(const json_t *cfg, const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, "exchange");
    if (!json_is_string(v)) {
        snprintf(err, errlen, "sink.exchange: required (an exchange name, or \"\" for the default "
                 "exchange)");
        return -1;
    }
    if (json_string_length(v) > SHORTSTR_MAX) {
        snprintf(err, errlen, "sink.exchange: longer than %d bytes", SHORTSTR_MAX);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

static relay_sink *rs_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "exchange", "exchange_type", "declare_exchange",
                                       "routing_key_template", "persistent", "mandatory",
                                       "format", "confirm_timeout_ms", "max_in_flight",
                                       RELAY_RMQ_CONN_KEYS, RELAY_FORMAT_KEYS, NULL};
    const char *exchange, *etype, *tmpl;
    int declare, persistent, mandatory;
    int64_t confirm_timeout, max_in_flight;
    relay_format format;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        parse_exchange(cfg, &exchange, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "exchange_type", "topic", &etype, err, errlen) < 0 ||
        cfg_bool(cfg, "sink", "declare_exchange", 0, &declare, err, errlen) < 0 ||
        cfg_bool(cfg, "sink", "persistent", 1, &persistent, err, errlen) < 0 ||
        cfg_bool(cfg, "sink", "mandatory", 1, &mandatory, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "routing_key_template", NULL, &tmpl, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "confirm_timeout_ms", 30000, 100, 3600000, &confirm_timeout, err,
                errlen) < 0 ||
        cfg_int(cfg, "sink", "max_in_flight", 2048, 1, 1000000, &max_in_flight, err, errlen) < 0 ||
        relay_format_from_cfg(cfg, "sink", &format, err, errlen) < 0)
        return NULL;
    if (strcmp(etype, "direct") && strcmp(etype, "fanout") && strcmp(etype, "topic") &&
        strcmp(etype, "headers")) {
        snprintf(err, errlen, "sink.exchange_type: expected direct, fanout, topic or headers");
        return NULL;
    }
    if (declare && !*exchange) {
        snprintf(err, errlen, "sink.declare_exchange: the default exchange (\"\") cannot be "
                 "declared");
        return NULL;
    }
    char why[384];
    if (tmpl && subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.routing_key_template: %s", why);
        return NULL;
    }

    relay_format_opts fopts;
    if (relay_format_opts_from_cfg(cfg, "sink", format, 0, &fopts, err, errlen) < 0)
        return NULL;
    rabbitmq_sink *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->base.encode = 1;
    s->base.format = format;
    s->base.fopts = fopts;
    s->base.subject_template = tmpl ? xstrdup(tmpl) : NULL;
    s->exchange = xstrdup(exchange);
    s->exchange_type = xstrdup(etype);
    s->declare_exchange = declare;
    s->persistent = persistent;
    s->mandatory = mandatory;
    s->confirm_timeout_ms = confirm_timeout;
    s->max_in_flight = max_in_flight;
    pthread_mutex_init(&s->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->cond, &ca);
    pthread_condattr_destroy(&ca);
    if (rmq_conn_parse(&s->c, cfg, "sink", w ? w->cfg.name : NULL, err, errlen) < 0) {
        rs_destroy(&s->base);
        return NULL;
    }
    return &s->base;
}

/* ---- connection (mu held) ------------------------------------------------- */

/* Connect, check or declare the exchange, and put the channel in confirm
 * mode. Returns 0, or -1 with err naming the key at fault when the broker
 * says which (404: exchange missing, 406: declared differently, 403: no
 * permission). */
static int connect_locked(rabbitmq_sink *s, char *err, size_t errlen)
{
    if (s->c.up)
        return 0;
    if (s->base.w && s->base.w->stats)
        s->c.health_flag = &s->base.w->stats->sink_up;
    if (rmq_conn_open(&s->c, err, errlen) < 0)
        return -1;
    char what[400];
    if (*s->exchange) {
        amqp_exchange_declare(s->c.conn, RELAY_RMQ_CHANNEL, amqp_cstring_bytes(s->exchange),
                              amqp_cstring_bytes(s->exchange_type), !s->declare_exchange,
                              1 /* durable */, 0, 0, amqp_empty_table);
        snprintf(what, sizeof what, "%s exchange \"%s\"",
                 s->declare_exchange ? "declaring the" : "checking the", s->exchange);
        int code = rmq_conn_rpc_check(&s->c, what, err, errlen);
        if (code) {
            char why[800];
            snprintf(why, sizeof why, "%s", err);
            if (code == AMQP_NOT_FOUND)
                snprintf(err, errlen, "sink.exchange: %s (create it, or set "
                         "sink.declare_exchange)", why);
            else if (code == AMQP_PRECONDITION_FAILED)
                snprintf(err, errlen, "sink.exchange_type: %s (the exchange exists with "
                         "other settings)", why);
            else if (code == AMQP_ACCESS_REFUSED)
                snprintf(err, errlen, "sink.exchange: %s (the user of sink.url lacks the "
                         "permission)", why);
            return -1;
        }
    }
    amqp_confirm_select(s->c.conn, RELAY_RMQ_CHANNEL);
    if (rmq_conn_rpc_check(&s->c, "confirm.select", err, errlen))
        return -1;
    s->next_tag = 1;
    s->blocked[0] = 0;
    s->reconnect_delay_ms = 0;
    rmq_conn_ready(&s->c);
    return 0;
}

static void note_blocked(rabbitmq_sink *s, const amqp_frame_t *f)
{
    if (f->payload.method.id == AMQP_CONNECTION_BLOCKED_METHOD) {
        amqp_connection_blocked_t *b = f->payload.method.decoded;
        relay_buf t = {0};
        buf_put_log_text(&t, b->reason.bytes ? b->reason.bytes : "", b->reason.len);
        snprintf(s->blocked, sizeof s->blocked, "%s", t.data ? t.data : "");
        buf_free(&t);
        log_warn(pipeline_name(s), "RabbitMQ blocked the connection (%s): publishes wait "
                 "until it unblocks", s->blocked);
    } else if (f->payload.method.id == AMQP_CONNECTION_UNBLOCKED_METHOD) {
        s->blocked[0] = 0;
        log_info(pipeline_name(s), "RabbitMQ unblocked the connection");
    }
}

/* ---- the keeper thread ----------------------------------------------------- */

/* Read whatever the idle connection has: heartbeats are exchanged on the
 * way, a close is answered and logged, the connection taken down on an
 * error. Nothing else arrives between batches (every publish was
 * answered). */
static void keep_alive_locked(rabbitmq_sink *s)
{
    char err[600];
    struct timeval zero = {0, 0};
    for (;;) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(s->c.conn, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            rmq_conn_down(&s->c, amqp_error_string2(rc));
            return;
        }
        if (rmq_conn_take_close(&s->c, &f, err, sizeof err))
            return;
        if (f.frame_type == AMQP_FRAME_METHOD)
            note_blocked(s, &f);
    }
    amqp_maybe_release_buffers(s->c.conn);
}

static void reconnect_locked(rabbitmq_sink *s)
{
    int64_t now = now_mono_ms();
    if (now < s->next_reconnect_ms)
        return;
    char err[1024];
    if (connect_locked(s, err, sizeof err) == 0) {
        log_info(pipeline_name(s), "RabbitMQ sink reconnected to %s", s->c.url.display);
        return;
    }
    s->reconnect_delay_ms = s->reconnect_delay_ms ? s->reconnect_delay_ms * 2 : RECONNECT_MIN_MS;
    if (s->reconnect_delay_ms > RECONNECT_MAX_MS)
        s->reconnect_delay_ms = RECONNECT_MAX_MS;
    s->next_reconnect_ms = now + s->reconnect_delay_ms;
    log_debug(pipeline_name(s), "RabbitMQ sink: reconnect failed (%s); next try in %lld ms", err,
              (long long)s->reconnect_delay_ms);
}

static void *keeper_main(void *arg)
{
    rabbitmq_sink *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->keeper_stop) {
        struct timespec ts = deadline_after_ms(CLOCK_MONOTONIC, KEEPER_EVERY_MS);
        pthread_cond_timedwait(&s->cond, &s->mu, &ts);
        if (s->keeper_stop)
            break;
        if (s->c.up)
            keep_alive_locked(s);
        else if (s->c.connects > 0) /* only reconnect what the worker opened once */
            reconnect_locked(s);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int rs_open(relay_sink *base, char *err, size_t errlen)
{
    rabbitmq_sink *s = (rabbitmq_sink *)base;
    pthread_mutex_lock(&s->mu);
    int rc = connect_locked(s, err, errlen);
    if (rc == 0 && !s->keeper_started) {
        if (pthread_create(&s->keeper, NULL, keeper_main, s) == 0)
            s->keeper_started = 1;
        else
            log_warn(pipeline_name(s), "cannot start the RabbitMQ keeper thread: an idle "
                     "connection's loss is noticed at the next publish");
    }
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- publishing (mu held) --------------------------------------------------- */

static void track(rabbitmq_sink *s, relay_msg *m)
{
    if (s->npub == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->pub = xrealloc(s->pub, s->cap * sizeof *s->pub);
        s->done = xrealloc(s->done, s->cap);
    }
    s->pub[s->npub] = m;
    s->done[s->npub] = 0;
    s->npub++;
    s->unresolved++;
}

/* basic.ack / basic.nack for `tag` (and every earlier one when multiple). */
static void resolve(rabbitmq_sink *s, uint64_t tag, int multiple, int ack)
{
    if (tag < s->first_tag || tag >= s->first_tag + s->npub)
        return; /* not of this batch (cannot happen on a fresh channel) */
    size_t last = (size_t)(tag - s->first_tag);
    size_t from = multiple ? s->resolved_prefix : last;
    for (size_t i = from; i <= last; i++) {
        if (s->done[i])
            continue;
        s->done[i] = 1;
        s->unresolved--;
        relay_msg *m = s->pub[i];
        if (m->state != MSG_PENDING)
            continue; /* returned: stays MSG_RETRY */
        if (ack) {
            m->state = MSG_CONFIRMED;
            s->confirmed++;
        } else {
            m->state = MSG_RETRY;
            m->error = "the broker nacked the message (basic.nack): it could not take it";
            s->nacked++;
        }
    }
    while (s->resolved_prefix < s->npub && s->done[s->resolved_prefix])
        s->resolved_prefix++;
}

/* basic.return: read the returned message (its content follows) and mark
 * the published message with that message_id. */
static int on_return(rabbitmq_sink *s, const amqp_frame_t *f, char *err, size_t errlen)
{
    amqp_basic_return_t r = *(amqp_basic_return_t *)f->payload.method.decoded;
    char code_text[200];
    relay_buf t = {0};
    buf_put_log_text(&t, r.reply_text.bytes ? r.reply_text.bytes : "", r.reply_text.len);
    snprintf(code_text, sizeof code_text, "%u %s", r.reply_code, t.data ? t.data : "");
    buf_free(&t);
    amqp_message_t msg;
    amqp_rpc_reply_t rr = amqp_read_message(s->c.conn, f->channel, &msg, 0);
    if (rr.reply_type != AMQP_RESPONSE_NORMAL) {
        char why[400];
        rmq_reply_text(rr, why, sizeof why);
        snprintf(err, errlen, "reading a returned message: %s", why);
        rmq_conn_down(&s->c, err);
        return -1;
    }
    amqp_bytes_t id = msg.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG
                          ? msg.properties.message_id
                          : amqp_empty_bytes;
    for (size_t i = s->return_cursor; i < s->npub; i++) {
        relay_msg *m = s->pub[i];
        if (m->state != MSG_PENDING || strlen(m->dedup_key) != id.len ||
            memcmp(m->dedup_key, id.bytes, id.len) != 0)
            continue;
        msg_set_error(m, MSG_RETRY, "unroutable: no queue is bound to exchange \"%s\" for "
                      "routing key \"%s\" (%s); retried until one is", s->exchange, m->subject,
                      code_text);
        s->return_cursor = i + 1;
        s->returned++;
        s->returned_now++;
        break;
    }
    amqp_destroy_message(&msg);
    return 0;
}

typedef enum { WAIT_OK = 0, WAIT_FAILED } wait_rc;

/* Read confirms until at most `target` messages are unresolved. */
static wait_rc wait_confirms(rabbitmq_sink *s, size_t target, int64_t deadline, char *err,
                             size_t errlen)
{
    relay_worker *w = s->base.w;
    while (s->unresolved > target) {
        int64_t now = now_mono_ms();
        if (w && worker_stopping(w) && now >= atomic_load(&w->stop_deadline_ms)) {
            snprintf(err, errlen, "shutdown deadline passed while waiting for publisher confirms");
            rmq_conn_down(&s->c, err);
            return WAIT_FAILED;
        }
        if (now >= deadline) {
            snprintf(err, errlen, "no publisher confirm for %zu messages within %lld ms%s%s%s",
                     s->unresolved, (long long)s->confirm_timeout_ms,
                     s->blocked[0] ? " (the broker blocked the connection: " : "", s->blocked,
                     s->blocked[0] ? ")" : "");
            rmq_conn_down(&s->c, err);
            return WAIT_FAILED;
        }
        int64_t left = deadline - now;
        struct timeval tv = {0, (left > WAIT_SLICE_MS ? WAIT_SLICE_MS : left) * 1000};
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(s->c.conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            continue;
        if (rc != AMQP_STATUS_OK) {
            snprintf(err, errlen, "waiting for publisher confirms: %s", amqp_error_string2(rc));
            rmq_conn_down(&s->c, err);
            return WAIT_FAILED;
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            resolve(s, a->delivery_tag, a->multiple, 1);
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            amqp_basic_nack_t *n = f.payload.method.decoded;
            resolve(s, n->delivery_tag, n->multiple, 0);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD:
            if (on_return(s, &f, err, errlen) < 0)
                return WAIT_FAILED;
            break;
        case AMQP_CONNECTION_BLOCKED_METHOD:
        case AMQP_CONNECTION_UNBLOCKED_METHOD:
            note_blocked(s, &f);
            break;
        default: {
            int code = rmq_conn_take_close(&s->c, &f, err, errlen);
            if (code == AMQP_NOT_FOUND) { /* the exchange was deleted: name the key, as open() does */
                char why[512];
                snprintf(why, sizeof why, "%s", err);
                snprintf(err, errlen, "sink.exchange: %s", why);
            }
            if (code)
                return WAIT_FAILED;
            break;
        }
        }
    }
    return WAIT_OK;
}

/* Send one message. Returns 0 when sent (or finally rejected here), -1 when
 * the connection failed (err set). */
static int send_one(rabbitmq_sink *s, relay_msg *m, time_t now, char *err, size_t errlen)
{
    size_t klen = strlen(m->dedup_key), rlen = m->subject ? strlen(m->subject) : 0;
    if (rlen > SHORTSTR_MAX) {
        msg_set_error(m, MSG_REJECTED, "the routing key is %zu bytes; AMQP allows %d (check "
                      "sink.routing_key_template)", rlen, SHORTSTR_MAX);
        return 0;
    }
    if (klen > SHORTSTR_MAX) {
        msg_set_error(m, MSG_REJECTED, "the dedup key is %zu bytes; an AMQP message_id holds "
                      "%d", klen, SHORTSTR_MAX);
        return 0;
    }
    amqp_table_entry_t refresh = {
        .key = amqp_cstring_bytes("pgtrickle-full-refresh"),
        .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes("true")},
    };
    amqp_basic_properties_t p = {0};
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
               AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
               AMQP_BASIC_APP_ID_FLAG;
    p.content_type = amqp_cstring_bytes(relay_format_content_type(s->base.format, &s->base.fopts));
    p.delivery_mode = s->persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
    p.message_id = (amqp_bytes_t){klen, (void *)m->dedup_key};
    p.timestamp = (uint64_t)now;
    p.type = amqp_cstring_bytes(relay_op_name(m->op));
    p.app_id = amqp_cstring_bytes("pgtrickle-relay");
    if (m->is_full_refresh) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers = (amqp_table_t){.num_entries = 1, .entries = &refresh};
    }
    amqp_bytes_t body = {m->body_len, (void *)m->body};
    amqp_bytes_t rk = {rlen, (void *)(m->subject ? m->subject : "")};
    int rc = amqp_basic_publish(s->c.conn, RELAY_RMQ_CHANNEL, amqp_cstring_bytes(s->exchange), rk,
                                s->mandatory, 0, &p, body);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "publishing: %s", amqp_error_string2(rc));
        rmq_conn_down(&s->c, err);
        return -1;
    }
    s->next_tag++;
    s->published++;
    track(s, m);
    return 0;
}

/* A batch that is entirely unroutable: one error naming the exchange and
 * routing key, logged once until a batch is routed again. */
static void report_unroutable(rabbitmq_sink *s, relay_msg **msgs, size_t n, char *err,
                              size_t errlen)
{
    const char *first = NULL;
    for (size_t i = 0; i < n && !first; i++)
        if (msgs[i]->state == MSG_RETRY && msgs[i]->error &&
            strncmp(msgs[i]->error, "unroutable", 10) == 0)
            first = msgs[i]->error;
    snprintf(err, errlen, "%zu of %zu messages %s", s->returned_now, n,
             first ? first : "unroutable");
    if (first && strcmp(first, s->last_unroutable) != 0) {
        snprintf(s->last_unroutable, sizeof s->last_unroutable, "%s", first);
        log_warn(pipeline_name(s), "RabbitMQ: %s; nothing is acknowledged meanwhile", first);
    }
}

static int rs_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    rabbitmq_sink *s = (rabbitmq_sink *)base;
    for (size_t i = 0; i < n; i++)
        msgs[i]->state = MSG_PENDING;
    if (n == 0)
        return 0;
    pthread_mutex_lock(&s->mu);
    int rc = -1;
    if (connect_locked(s, err, errlen) < 0)
        goto out;
    s->npub = 0;
    s->unresolved = 0;
    s->resolved_prefix = 0;
    s->return_cursor = 0;
    s->returned_now = 0;
    s->first_tag = s->next_tag;
    int64_t deadline = now_mono_ms() + s->confirm_timeout_ms;
    time_t now = time(NULL);
    for (size_t i = 0; i < n; i++) {
        if (send_one(s, msgs[i], now, err, errlen) < 0)
            goto out;
        if (s->unresolved >= (size_t)s->max_in_flight &&
            wait_confirms(s, (size_t)s->max_in_flight / 2, deadline, err, errlen) != WAIT_OK)
            goto out;
    }
    if (wait_confirms(s, 0, deadline, err, errlen) != WAIT_OK)
        goto out;
    amqp_maybe_release_buffers(s->c.conn);
    rc = 0;
    size_t sent = s->npub;
    if (s->returned_now > 0 && s->returned_now == sent) {
        report_unroutable(s, msgs, n, err, errlen);
        rc = -1;
    } else if (s->returned_now == 0) {
        s->last_unroutable[0] = 0;
    }
out:
    s->npub = 0;
    s->unresolved = 0;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

/* ---- status ------------------------------------------------------------------ */

static void rs_describe(relay_sink *base, relay_buf *out)
{
    rabbitmq_sink *s = (rabbitmq_sink *)base;
    pthread_mutex_lock(&s->mu);
    buf_putc(out, '{');
    rmq_conn_describe(&s->c, out);
    buf_puts(out, ",\"exchange\":");
    buf_put_json_str(out, s->exchange, strlen(s->exchange));
    buf_puts(out, ",\"exchange_type\":");
    buf_put_json_str(out, s->exchange_type, strlen(s->exchange_type));
    buf_printf(out, ",\"unconfirmed\":%zu,\"max_in_flight\":%" PRId64 ",\"published\":%" PRIu64
               ",\"confirmed\":%" PRIu64 ",\"nacked\":%" PRIu64 ",\"returned\":%" PRIu64
               ",\"blocked\":",
               s->unresolved, s->max_in_flight, s->published, s->confirmed, s->nacked,
               s->returned);
    if (s->blocked[0])
        buf_put_json_str(out, s->blocked, strlen(s->blocked));
    else
        buf_puts(out, "null");
    buf_putc(out, '}');
    pthread_mutex_unlock(&s->mu);
}

static void rs_destroy(relay_sink *base)
{
    if (!base)
        return;
    rabbitmq_sink *s = (rabbitmq_sink *)base;
    if (s->keeper_started) {
        pthread_mutex_lock(&s->mu);
        s->keeper_stop = 1;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->keeper, NULL);
    }
    rmq_conn_free(&s->c);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s->exchange);
    free(s->exchange_type);
    free(s->pub);
    free(s->done);
    free(s->base.subject_template);
    relay_format_opts_free(&s->base.fopts);
    free(s);
}

const relay_sink_ops relay_sink_rabbitmq_ops = {
    .type = "rabbitmq",
    .create = rs_create,
    .open = rs_open,
    .publish = rs_publish,
    .describe = rs_describe,
    .destroy = rs_destroy,
};
