/*
 * sqs.c - the Amazon SQS sink (SPEC sections 5 and 7, row sqs).
 *
 * Config (pipeline "sink" object), besides the connection keys of
 * client/sqs.h (queue_url, region, endpoint_url, credentials, ...):
 *   message_group_id   FIFO queues: MessageGroupId template (default
 *                      {stream_table} for an outbox, {table} for cdc), so
 *                      one table's events keep their order
 *   subject_template   the subject carried in the envelope and the
 *                      "subject" attribute (the source's default)
 *   format             "native" (the only one: an SQS body is text)
 *   max_in_flight      concurrent SendMessageBatch requests (16)
 *   max_message_bytes  SQS's limit per message and per batch (262144)
 *
 * Requests.  publish() packs the messages into SendMessageBatch requests of
 * at most 10 entries and max_message_bytes in total, and keeps up to
 * max_in_flight of them running at once on one libcurl multi handle (which
 * also keeps the connections alive between calls). An entry's Id is its
 * index in the request ("0".."9"), its MessageBody the encoded event, its
 * message attributes
 *   dedup_key, subject, op, and full_refresh ("true", only when it is)
 * and on FIFO queues MessageGroupId (the rendered template) and
 * MessageDeduplicationId = the dedup key, both mapped to SQS's alphabet by
 * sqs_map_id() when they do not fit it (docs/backends/sqs.md).
 *
 * Outcome of each entry (every entry's result is read):
 *   Successful                          MSG_CONFIRMED
 *   Failed, SenderFault true            MSG_REJECTED (dead letter, with the
 *                                       SQS code and message)
 *   Failed otherwise, or not mentioned  MSG_RETRY (only those are republished)
 *   event larger than max_message_bytes MSG_REJECTED before any request
 * and of a whole request:
 *   transport error, 5xx, throttling    MSG_RETRY for its entries
 *   queue missing, auth refused         MSG_RETRY, and publish() returns -1
 *                                       with the error: pipeline degraded
 *   any other 4xx                       several entries: each is sent again
 *                                       alone, within the same call, to find
 *                                       the one SQS refuses (a FIFO queue
 *                                       fails the whole request for one bad
 *                                       entry); a single entry: MSG_REJECTED
 * When not one entry of a call was confirmed or rejected, publish() returns
 * -1 (endpoint down or throttling everything): the worker reports the sink
 * unavailable while it retries. Retried entries keep their dedup key, so a
 * FIFO queue drops a copy stored before an answer was lost.
 *
 * open() asks GetQueueAttributes, so a missing queue or refused credentials
 * are one clear error before anything is read; the queue's approximate
 * depth is refreshed for /status at most every 30 s.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "client/sqs.h"
#include "config.h"
#include "encode.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "stats.h"
#include "worker.h"

#define DEFAULT_MAX_IN_FLIGHT 16
#define DEPTH_REFRESH_MS 30000
#define POLL_SLICE_MS 100

typedef enum { UNIT_PENDING = 0, UNIT_RUNNING, UNIT_DONE } unit_state;

/* Up to 10 messages sent together (positions in the call's msgs), in one
 * request; or, after SQS refused that request as a whole ("solo"), one
 * request per entry, in order. */
typedef struct send_unit {
    size_t idx[SQS_MAX_BATCH_ENTRIES];
    size_t k;
    int solo;
    size_t pos;               /* solo: the next entry to send */
    size_t from, count;       /* the entries of the request in flight */
    unit_state state;
} send_unit;

/* A FIFO message group of the current call. */
typedef struct msg_group {
    char id[SQS_MAX_ID_LEN + 1]; /* MessageGroupId */
    int busy;                    /* entries of it in flight */
    int blocked;                 /* a request of it failed: send no more of it */
    int seen;                    /* held by a waiting unit (scan state) */
} msg_group;

typedef struct sqs_sink {
    relay_sink base;
    relay_sqs_conf conf;
    char *group_template;
    int64_t max_in_flight;
    int64_t max_message_bytes;
    /* runtime */
    relay_sqs_client client;
    sqs_call *calls;          /* max_in_flight of them */
    size_t *call_unit;        /* the unit (index) each busy call carries */
    sqs_call meta;            /* GetQueueAttributes */
    int64_t depth_at_ms;
    int64_t depth_visible, depth_not_visible;
    /* per publish() */
    send_unit *units;
    size_t nunits, cap_units, first_pending;
    const char **dedup_ids;   /* per message: MessageDeduplicationId (FIFO) */
    size_t cap_msgs;
    size_t *gidx;             /* per message: its group (FIFO) */
    size_t cap_gidx;
    msg_group *groups;
    size_t ngroups, cap_groups, last_group;
    size_t in_flight;         /* requests running */
    /* counters for /status */
    uint64_t requests, published, rejected, retried;
} sqs_sink;

typedef struct call_result {
    size_t settled;     /* entries confirmed or rejected */
    size_t transient;   /* entries to retry */
    int fatal;
    char first_error[1024];
    char fatal_error[1024];
} call_result;

extern const relay_sink_ops relay_sink_sqs_ops;
static void sq_destroy(relay_sink *base);

/* ---- configuration ------------------------------------------------------- */

static const char *pipeline_name(const sqs_sink *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* The template's literal text must be in SQS's id alphabet; values are
 * escaped by subject_render() ("%XX"), which stays inside it. */
static int parse_group_template(sqs_sink *s, const json_t *cfg, char *err, size_t errlen)
{
    const char *def = "{stream_table}";
    if (s->base.w && s->base.w->cfg.source_type && strcmp(s->base.w->cfg.source_type, "cdc") == 0)
        def = "{table}";
    const char *v;
    char why[300];
    if (cfg_str(cfg, "sink", "message_group_id", def, &v, err, errlen) < 0)
        return -1;
    if (!*v || subject_template_check(v, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.message_group_id: %s", *v ? why : "must not be empty");
        return -1;
    }
    int in_var = 0;
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p == '{')
            in_var = 1;
        else if (*p == '}')
            in_var = 0;
        else if (!in_var && (*p <= 0x20 || *p >= 0x7f)) {
            snprintf(err, errlen, "sink.message_group_id: \"%s\" has characters SQS does not "
                     "take in a MessageGroupId (only letters, digits and punctuation)", v);
            return -1;
        }
    }
    s->group_template = xstrdup(v);
    return 0;
}

static int parse_format(sqs_sink *s, const json_t *cfg, char *err, size_t errlen)
{
    if (relay_format_from_cfg(cfg, "sink", &s->base.format, err, errlen) < 0)
        return -1;
    if (s->base.format == RELAY_FORMAT_MSGPACK) {
        snprintf(err, errlen, "sink.format: SQS message bodies are text; \"msgpack\" is binary "
                 "(use \"native\", \"debezium\" or \"cloudevents\")");
        return -1;
    }
    return relay_format_opts_from_cfg(cfg, "sink", s->base.format, 0, &s->base.fopts, err,
                                      errlen);
}

static int parse_subject_template(sqs_sink *s, const json_t *cfg, char *err, size_t errlen)
{
    const char *v;
    char why[300];
    if (cfg_str(cfg, "sink", "subject_template", NULL, &v, err, errlen) < 0)
        return -1;
    if (!v || !*v)
        return 0;
    if (subject_template_check(v, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.subject_template: %s", why);
        return -1;
    }
    s->base.subject_template = xstrdup(v);
    return 0;
}

static relay_sink *sq_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", RELAY_SQS_CONN_KEYS, "message_group_id",
                                       "subject_template", "format", "max_in_flight",
                                       "max_message_bytes", RELAY_FORMAT_KEYS, NULL};
    if (sqs_curl_init(err, errlen) < 0)
        return NULL;
    sqs_sink *s = xcalloc(1, sizeof *s);
    s->base.ops = &relay_sink_sqs_ops;
    s->base.w = w;
    s->depth_visible = s->depth_not_visible = -1;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        sqs_conf_parse(&s->conf, cfg, "sink", w ? w->cfg.name : NULL, err, errlen) < 0 ||
        parse_group_template(s, cfg, err, errlen) < 0 || parse_format(s, cfg, err, errlen) < 0 ||
        parse_subject_template(s, cfg, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "max_in_flight", DEFAULT_MAX_IN_FLIGHT, 1, 256, &s->max_in_flight,
                err, errlen) < 0 ||
        cfg_int(cfg, "sink", "max_message_bytes", SQS_DEFAULT_MAX_MESSAGE_BYTES, 1024,
                1048576, &s->max_message_bytes, err, errlen) < 0) {
        sq_destroy(&s->base);
        return NULL;
    }
    s->base.encode = 1;
    s->calls = xcalloc((size_t)s->max_in_flight, sizeof *s->calls);
    s->call_unit = xcalloc((size_t)s->max_in_flight, sizeof *s->call_unit);
    for (int64_t i = 0; i < s->max_in_flight; i++)
        s->calls[i].user = &s->call_unit[i];
    return &s->base;
}

/* ---- open ------------------------------------------------------------------ */

/* Refresh the queue's approximate depth; -1 with err when the queue cannot
 * be asked: missing, refused, or a queue URL SQS does not take (the error
 * names sink.queue_url), or the endpoint is down. */
static int refresh_depth(sqs_sink *s, char *err, size_t errlen)
{
    int64_t vis, notvis, vt;
    char why[400];
    sqs_outcome o = sqs_queue_attributes(&s->client, &s->meta, &vis, &notvis, &vt, why,
                                         sizeof why);
    s->depth_at_ms = now_mono_ms();
    if (o == SQS_OK) {
        s->depth_visible = vis;
        s->depth_not_visible = notvis;
        return 0;
    }
    if (o == SQS_FATAL || o == SQS_INVALID)
        snprintf(err, errlen, "sink.queue_url: %s: %s", s->conf.queue_url, why);
    else
        snprintf(err, errlen, "SQS endpoint %s: %s", s->conf.endpoint, why);
    return -1;
}

static int sq_open(relay_sink *base, char *err, size_t errlen)
{
    sqs_sink *s = (sqs_sink *)base;
    if (sqs_client_open(&s->client, &s->conf, (long)s->max_in_flight + 1, err, errlen) < 0)
        return -1;
    if (refresh_depth(s, err, errlen) < 0)
        return -1;
    log_debug(pipeline_name(s), "SQS queue %s: %" PRId64 " messages visible", s->conf.queue_url,
              s->depth_visible);
    return 0;
}

/* ---- planning ------------------------------------------------------------------ */

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    *cap = c;
    return xrealloc(p, c * elem);
}

/* The group of message i (FIFO): its rendered, mapped MessageGroupId, found
 * or added in s->groups. Returns its index, or -1 when libcrypto fails. */
static long group_of(sqs_sink *s, const relay_msg *m, relay_buf *tmp)
{
    char id[SQS_MAX_ID_LEN + 1];
    buf_clear(tmp);
    subject_render(s->group_template, m, tmp);
    if (sqs_map_id(tmp->data ? tmp->data : "", tmp->len, id) < 0)
        return -1;
    if (s->ngroups && strcmp(s->groups[s->last_group].id, id) == 0)
        return (long)s->last_group;
    for (size_t g = 0; g < s->ngroups; g++)
        if (strcmp(s->groups[g].id, id) == 0)
            return (long)(s->last_group = g);
    s->groups = grow(s->groups, &s->cap_groups, s->ngroups + 1, sizeof *s->groups);
    msg_group *ng = &s->groups[s->ngroups];
    memset(ng, 0, sizeof *ng);
    memcpy(ng->id, id, strlen(id) + 1);
    s->last_group = s->ngroups;
    return (long)s->ngroups++;
}

/* Per-message request data: the MessageDeduplicationId and the group (FIFO).
 * Returns 0, or -1 (the message is rejected) with why set. */
static int prepare_msg(sqs_sink *s, relay_msg **msgs, size_t i, relay_buf *tmp, char *why,
                       size_t whylen)
{
    relay_msg *m = msgs[i];
    s->dedup_ids[i] = m->dedup_key;
    if (!sqs_text_valid(m->body ? m->body : "", m->body_len)) {
        snprintf(why, whylen, "the encoded event is not text SQS takes (invalid UTF-8, or "
                 "characters outside #x9 #xA #xD #x20-#xFFFD #x10000-#x10FFFF)");
        return -1;
    }
    if (!s->conf.fifo)
        return 0;
    char id[SQS_MAX_ID_LEN + 1];
    long g = group_of(s, m, tmp);
    if (g < 0 || sqs_map_id(m->dedup_key, strlen(m->dedup_key), id) < 0) {
        snprintf(why, whylen, "libcrypto: SHA-256 failed");
        return -1;
    }
    s->gidx[i] = (size_t)g;
    if (strcmp(id, m->dedup_key) != 0)
        s->dedup_ids[i] = arena_strdup(m->arena, id);
    return 0;
}

/* SQS's size of a message: body plus each attribute's name, type and value. */
static size_t attr_bytes(const char *name, const char *value, size_t len)
{
    return value && len ? strlen(name) + strlen("String") + len : 0;
}

static size_t message_bytes(const relay_msg *m)
{
    const char *op = relay_op_name(m->op);
    return m->body_len + attr_bytes("dedup_key", m->dedup_key, strlen(m->dedup_key)) +
           attr_bytes("subject", m->subject, m->subject ? strlen(m->subject) : 0) +
           attr_bytes("op", op, strlen(op)) +
           (m->is_full_refresh ? attr_bytes("full_refresh", "true", 4) : 0);
}

static send_unit *new_unit(sqs_sink *s)
{
    s->units = grow(s->units, &s->cap_units, s->nunits + 1, sizeof *s->units);
    send_unit *u = &s->units[s->nunits++];
    memset(u, 0, sizeof *u);
    return u;
}

/* Pack msgs[0..n) in order into units of <= 10 entries and <=
 * max_message_bytes; an event SQS cannot take is rejected here. */
static void plan_units(sqs_sink *s, relay_msg **msgs, size_t n, call_result *cr)
{
    s->nunits = 0;
    s->ngroups = 0;
    s->dedup_ids = grow(s->dedup_ids, &s->cap_msgs, n, sizeof *s->dedup_ids);
    s->gidx = grow(s->gidx, &s->cap_gidx, n, sizeof *s->gidx);
    relay_buf tmp = {0};
    char why[300];
    send_unit *u = NULL;
    size_t bytes = 0;
    for (size_t i = 0; i < n; i++) {
        size_t size = message_bytes(msgs[i]);
        int bad = size > (size_t)s->max_message_bytes;
        if (bad)
            snprintf(why, sizeof why, "the event is %zu bytes (body and attributes), more than "
                     "SQS takes in one message (%" PRId64 " bytes, sink.max_message_bytes)",
                     size, s->max_message_bytes);
        else
            bad = prepare_msg(s, msgs, i, &tmp, why, sizeof why) < 0;
        if (bad) {
            msg_set_error(msgs[i], MSG_REJECTED, "%s", why);
            s->rejected++;
            cr->settled++;
            continue;
        }
        if (!u || u->k == SQS_MAX_BATCH_ENTRIES || bytes + size > (size_t)s->max_message_bytes) {
            u = new_unit(s);
            bytes = 0;
        }
        u->idx[u->k++] = i;
        bytes += size;
    }
    buf_free(&tmp);
}

/* ---- building requests ----------------------------------------------------- */

/* The request bodies are written straight into the request buffer with the
 * relay's JSON string escaper (buf_put_json_str), not built as jansson
 * trees: a tree cost two copies of every body and a dozen allocations per
 * entry. Every value was checked before (prepare_msg: the body is text SQS
 * takes; the ids are ASCII), so the escaper never has to substitute. */

/* One "name":{"DataType":"String","StringValue":...} member of an entry's
 * MessageAttributes; *first says whether a comma is due. */
static void put_attr(relay_buf *b, int *first, const char *name, const char *value, size_t len)
{
    if (!value || len == 0 || !sqs_text_valid(value, len))
        return; /* SQS refuses empty or non-text values; the envelope carries them */
    if (!*first)
        buf_putc(b, ',');
    *first = 0;
    buf_put_json_str(b, name, strlen(name));
    buf_puts(b, ":{\"DataType\":\"String\",\"StringValue\":");
    buf_put_json_str(b, value, len);
    buf_putc(b, '}');
}

/* One entry of SendMessageBatch (SQS API reference,
 * SendMessageBatchRequestEntry) for msgs[i], with Id `id`. */
static void put_entry(sqs_sink *s, relay_buf *b, relay_msg **msgs, size_t i, size_t id)
{
    relay_msg *m = msgs[i];
    buf_printf(b, "{\"Id\":\"%zu\",\"MessageBody\":", id);
    buf_put_json_str(b, m->body ? m->body : "", m->body_len);
    buf_puts(b, ",\"MessageAttributes\":{");
    int first = 1;
    put_attr(b, &first, "dedup_key", m->dedup_key, strlen(m->dedup_key));
    put_attr(b, &first, "subject", m->subject, m->subject ? strlen(m->subject) : 0);
    const char *op = relay_op_name(m->op);
    put_attr(b, &first, "op", op, strlen(op));
    if (m->is_full_refresh)
        put_attr(b, &first, "full_refresh", "true", 4);
    buf_putc(b, '}');
    if (s->conf.fifo) {
        const char *g = s->groups[s->gidx[i]].id;
        buf_puts(b, ",\"MessageGroupId\":");
        buf_put_json_str(b, g, strlen(g));
        buf_puts(b, ",\"MessageDeduplicationId\":");
        buf_put_json_str(b, s->dedup_ids[i], strlen(s->dedup_ids[i]));
    }
    buf_putc(b, '}');
}

/* The SendMessageBatch body for entries idx[from .. from+count) of `u`,
 * Ids "0".."count-1", into call->req. */
static void build_request(sqs_sink *s, sqs_call *call, const send_unit *u, relay_msg **msgs)
{
    relay_buf *b = &call->req;
    buf_clear(b);
    buf_puts(b, "{\"QueueUrl\":");
    buf_put_json_str(b, s->conf.queue_url, strlen(s->conf.queue_url));
    buf_puts(b, ",\"Entries\":[");
    for (size_t j = 0; j < u->count; j++) {
        if (j)
            buf_putc(b, ',');
        put_entry(s, b, msgs, u->idx[u->from + j], j);
    }
    buf_puts(b, "]}");
}

/* ---- FIFO order --------------------------------------------------------------
 * On a FIFO queue, SQS keeps the order of a group's messages only as they
 * arrive: two requests carrying the same group must not run at once, and
 * after a request of a group failed no later message of that group may be
 * sent in this call (it would overtake the one retried). So a unit starts
 * only when none of its groups is busy, blocked, or held by an earlier unit
 * still waiting; the units are scanned in batch order. Standard queues have
 * no such rule. */

static void set_groups(sqs_sink *s, const send_unit *u, int busy_delta, int block, int seen)
{
    for (size_t j = 0; j < u->k; j++) {
        msg_group *g = &s->groups[s->gidx[u->idx[j]]];
        g->busy += busy_delta;
        g->blocked |= block;
        g->seen |= seen;
    }
}

static int groups_free(sqs_sink *s, const send_unit *u, int *blocked)
{
    int free_ = 1;
    *blocked = 0;
    for (size_t j = 0; j < u->k; j++) {
        const msg_group *g = &s->groups[s->gidx[u->idx[j]]];
        *blocked |= g->blocked;
        if (g->busy || g->blocked || g->seen)
            free_ = 0;
    }
    return free_;
}

static void mark_range(sqs_sink *s, const send_unit *u, size_t from, relay_msg **msgs,
                       const char *text)
{
    for (size_t j = from; j < u->k; j++)
        msg_set_error(msgs[u->idx[j]], MSG_RETRY, "%s", text);
    s->retried += u->k - from;
}

/* The next unit that may start now, or NULL. */
static send_unit *next_unit(sqs_sink *s, relay_msg **msgs)
{
    for (size_t g = 0; s->conf.fifo && g < s->ngroups; g++)
        s->groups[g].seen = 0;
    for (size_t i = s->first_pending; i < s->nunits; i++) {
        send_unit *u = &s->units[i];
        if (u->state == UNIT_DONE && i == s->first_pending)
            s->first_pending++;
        if (u->state != UNIT_PENDING)
            continue;
        if (!s->conf.fifo)
            return u;
        int blocked;
        if (groups_free(s, u, &blocked))
            return u;
        if (blocked) {
            mark_range(s, u, u->pos, msgs, "not sent: an earlier message of its FIFO group "
                       "failed, and SQS must receive the group in order (retried)");
            set_groups(s, u, 0, 1, 0);
            u->state = UNIT_DONE;
            continue;
        }
        set_groups(s, u, 0, 0, 1);
    }
    return NULL;
}

/* ---- outcomes ---------------------------------------------------------------- */

static void note_transient(call_result *cr, size_t k, const char *text)
{
    if (cr->transient == 0)
        snprintf(cr->first_error, sizeof cr->first_error, "%s", text);
    cr->transient += k;
}

/* Apply a 200 response to the request's entries. Returns 1 when an entry
 * is to be retried. */
static int apply_entries(sqs_sink *s, sqs_call *call, const send_unit *u, relay_msg **msgs,
                         call_result *cr)
{
    sqs_entry_result res[SQS_MAX_BATCH_ENTRIES];
    char why[300];
    memset(res, 0, sizeof res);
    if (sqs_parse_batch_result(call->resp.data ? call->resp.data : "", call->resp.len, res,
                               u->count, why, sizeof why) < 0) {
        char text[400];
        snprintf(text, sizeof text, "SendMessageBatch: %s", why);
        for (size_t j = 0; j < u->count; j++)
            msg_set_error(msgs[u->idx[u->from + j]], MSG_RETRY, "%s", text);
        s->retried += u->count;
        note_transient(cr, u->count, text);
        return 1;
    }
    int retry = 0;
    for (size_t j = 0; j < u->count; j++) {
        relay_msg *m = msgs[u->idx[u->from + j]];
        switch (res[j].state) {
        case SQS_ENTRY_OK:
            m->state = MSG_CONFIRMED;
            m->error = NULL;
            s->published++;
            cr->settled++;
            continue;
        case SQS_ENTRY_SENDER_FAULT:
            msg_set_error(m, MSG_REJECTED, "SQS refused the message: %s: %s", res[j].code,
                          res[j].message);
            s->rejected++;
            cr->settled++;
            continue;
        case SQS_ENTRY_FAILED:
            msg_set_error(m, MSG_RETRY, "SQS failed to store the message (retried): %s: %s",
                          res[j].code, res[j].message);
            break;
        case SQS_ENTRY_MISSING:
            msg_set_error(m, MSG_RETRY, "SendMessageBatch response has no result for the "
                          "message (retried)");
            break;
        }
        s->retried++;
        note_transient(cr, 1, m->error);
        retry = 1;
    }
    return retry;
}

/* A request of `u` finished: apply its outcome and decide what comes next
 * for the unit (done, or its next entry alone). */
static void finish_call(sqs_sink *s, sqs_call *call, relay_msg **msgs, call_result *cr)
{
    send_unit *u = &s->units[*(size_t *)call->user];
    char code[64], msg[256], text[400];
    s->in_flight--;
    if (s->conf.fifo)
        set_groups(s, u, -1, 0, 0);
    sqs_outcome o = sqs_call_outcome(call, code, sizeof code, msg, sizeof msg);
    snprintf(text, sizeof text, "SendMessageBatch to %s: %s%s%s", s->conf.endpoint, code,
             msg[0] ? ": " : "", msg);
    int failed = 0;
    switch (o) {
    case SQS_OK:
        failed = apply_entries(s, call, u, msgs, cr);
        break;
    case SQS_FATAL:
        if (!cr->fatal)
            snprintf(cr->fatal_error, sizeof cr->fatal_error, "sink.queue_url: %s: %s",
                     s->conf.queue_url, text);
        cr->fatal = 1;
        /* fall through */
    case SQS_RETRY:
        mark_range(s, u, u->from, msgs, text);
        if (o == SQS_RETRY)
            note_transient(cr, u->k - u->from, text);
        if (s->conf.fifo)
            set_groups(s, u, 0, 1, 0);
        u->state = UNIT_DONE;
        return;
    case SQS_INVALID:
        if (u->count > 1) {
            /* Which entry? From now on the unit sends one entry at a time. */
            u->solo = 1;
            u->pos = u->from;
            u->state = UNIT_PENDING;
            return;
        }
        msg_set_error(msgs[u->idx[u->from]], MSG_REJECTED, "SQS refused the message: %s: %s",
                      code, msg);
        s->rejected++;
        cr->settled++;
        break;
    }
    if (failed && s->conf.fifo) {
        set_groups(s, u, 0, 1, 0);
        mark_range(s, u, u->from + u->count, msgs, "not sent: an earlier message of its FIFO "
                   "group failed, and SQS must receive the group in order (retried)");
        u->state = UNIT_DONE;
        return;
    }
    u->pos = u->from + u->count;
    u->state = u->pos < u->k ? UNIT_PENDING : UNIT_DONE;
}

/* ---- publish ----------------------------------------------------------------- */

static int must_abandon(const sqs_sink *s)
{
    relay_worker *w = s->base.w;
    return w && atomic_load(&w->stop) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms);
}

static sqs_call *free_call(sqs_sink *s)
{
    for (int64_t i = 0; i < s->max_in_flight; i++)
        if (!s->calls[i].busy)
            return &s->calls[i];
    return NULL;
}

/* Take every request back without an answer; its messages stay MSG_RETRY. */
static void abandon_all(sqs_sink *s, relay_msg **msgs, const char *why)
{
    for (int64_t i = 0; i < s->max_in_flight; i++) {
        sqs_call *call = &s->calls[i];
        if (!call->busy)
            continue;
        sqs_call_abandon(&s->client, call);
        send_unit *u = &s->units[*(size_t *)call->user];
        mark_range(s, u, u->from, msgs, why);
        u->state = UNIT_DONE;
    }
    s->in_flight = 0;
}

static int start_unit(sqs_sink *s, sqs_call *call, send_unit *u, relay_msg **msgs, char *err,
                      size_t errlen)
{
    u->from = u->solo ? u->pos : 0;
    u->count = u->solo ? 1 : u->k;
    *(size_t *)call->user = (size_t)(u - s->units);
    build_request(s, call, u, msgs);
    if (sqs_call_start(&s->client, call, "SendMessageBatch", 0, err, errlen) < 0)
        return -1;
    u->state = UNIT_RUNNING;
    if (s->conf.fifo)
        set_groups(s, u, 1, 0, 0);
    s->requests++;
    s->in_flight++;
    return 0;
}

static int sq_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    sqs_sink *s = (sqs_sink *)base;
    for (size_t i = 0; i < n; i++) {
        msgs[i]->state = MSG_RETRY;
        msgs[i]->error = NULL;
    }
    if (n == 0)
        return 0;
    if (!s->client.multi && sq_open(base, err, errlen) < 0)
        return -1;
    call_result cr = {0};
    plan_units(s, msgs, n, &cr);
    s->first_pending = 0;
    for (;;) {
        sqs_call *call;
        send_unit *u;
        while (!cr.fatal && (call = free_call(s)) != NULL && (u = next_unit(s, msgs)) != NULL) {
            if (start_unit(s, call, u, msgs, err, errlen) < 0) {
                abandon_all(s, msgs, err);
                return -1;
            }
        }
        if (s->in_flight == 0)
            break; /* nothing runs, and nothing more may start */
        if (sqs_client_run(&s->client, POLL_SLICE_MS, err, errlen) < 0) {
            abandon_all(s, msgs, err);
            sqs_client_close(&s->client);
            return -1;
        }
        for (int64_t i = 0; i < s->max_in_flight; i++)
            if (sqs_call_take(&s->calls[i]))
                finish_call(s, &s->calls[i], msgs, &cr);
        if (must_abandon(s)) {
            abandon_all(s, msgs, "SQS request abandoned at the shutdown deadline");
            snprintf(err, errlen, "shutdown deadline passed with SQS requests in flight");
            return -1;
        }
    }
    if (cr.fatal) {
        snprintf(err, errlen, "%s", cr.fatal_error);
        return -1;
    }
    if (cr.settled == 0 && cr.transient > 0) {
        snprintf(err, errlen, "%s", cr.first_error);
        return -1;
    }
    if (now_mono_ms() - s->depth_at_ms >= DEPTH_REFRESH_MS) {
        char why[400];
        if (refresh_depth(s, why, sizeof why) < 0)
            log_debug(pipeline_name(s), "SQS queue depth: %s", why);
    }
    return 0;
}

/* ---- status and teardown ------------------------------------------------------- */

static void sq_describe(relay_sink *base, relay_buf *out)
{
    sqs_sink *s = (sqs_sink *)base;
    buf_putc(out, '{');
    sqs_conf_describe(&s->conf, out);
    buf_printf(out, ",\"max_in_flight\":%" PRId64 ",\"requests\":%" PRIu64
               ",\"published\":%" PRIu64 ",\"rejected\":%" PRIu64 ",\"retried\":%" PRIu64
               ",\"approximate_depth\":%" PRId64 ",\"approximate_not_visible\":%" PRId64 "}",
               s->max_in_flight, s->requests, s->published, s->rejected,
               s->retried, s->depth_visible, s->depth_not_visible);
}

static void sq_destroy(relay_sink *base)
{
    if (!base)
        return;
    sqs_sink *s = (sqs_sink *)base;
    for (int64_t i = 0; s->calls && i < s->max_in_flight; i++)
        sqs_call_free(&s->client, &s->calls[i]);
    sqs_call_free(&s->client, &s->meta);
    sqs_client_close(&s->client);
    sqs_conf_free(&s->conf);
    free(s->calls);
    free(s->call_unit);
    free(s->units);
    free(s->dedup_ids);
    free(s->gidx);
    free(s->groups);
    free(s->group_template);
    free(s->base.subject_template);
    relay_format_opts_free(&s->base.fopts);
    free(s);
}

const relay_sink_ops relay_sink_sqs_ops = {
    .type = "sqs",
    .create = sq_create,
    .open = sq_open,
    .publish = sq_publish,
    .describe = sq_describe,
    .destroy = sq_destroy,
};
