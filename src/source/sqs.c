/*
 * sqs.c - the Amazon SQS reverse source (SPEC section 8, row sqs): queue
 * messages into the inbox.
 *
 * Config (pipeline "source" object), besides the connection keys of
 * client/sqs.h (queue_url, region, endpoint_url, credentials, ...):
 *   max_messages         messages per ReceiveMessage, 1..10 (10)
 *   wait_time_seconds    long poll, 0..20 (20)
 *   visibility_timeout   seconds a received message stays hidden
 *                        (default: the queue's own setting)
 *   concurrency          ReceiveMessage calls running at once (4)
 *   batch_size           messages per inbox transaction at most (100)
 *
 * Receiving.  `concurrency` long-poll ReceiveMessage calls run all the time
 * on one libcurl multi handle; each one that returns is started again at
 * once, so the queue is read while the worker writes the previous batch.
 * Received messages wait in a small buffer until poll() hands them out
 * (their visibility timeout runs from the receive: keep it well above a
 * batch's time to commit). poll() waits at most a second for the first
 * message, so the worker loop comes round to check for stops and reloads.
 * Each message becomes:
 *   dedup_key     attribute MessageDeduplicationId (FIFO queues), else the
 *                 message attribute dedup_key, else the MessageId
 *   subject       the message attribute event_type, else the queue name:
 *                 the inbox's event_type when the body has no event_type
 *   aggregate_id  MessageGroupId (FIFO queues)
 *   trace_id      the message attribute traceparent
 *   payload       the body (stored as a JSON string when it is not JSON)
 *   source_name   "sqs:<queue name>"
 *   ack           the receipt handle
 *
 * Acknowledgement.  ack() runs after the inbox COMMIT: every receipt handle
 * of the batch (confirmed or dead-lettered) is deleted with
 * DeleteMessageBatch, 10 per request, several requests at once. Entries
 * that fail transiently are retried (3 rounds); an entry that never gets
 * deleted (e.g. its visibility timeout ran out, so its handle is stale) is
 * only logged: SQS delivers it again and the inbox skips it by event_id. A
 * crash between COMMIT and delete has the same outcome. release() (the
 * batch will not be committed, e.g. PostgreSQL is down) makes the batch
 * visible again at once with ChangeMessageVisibilityBatch to 0.
 *
 * Down.  poll() returns -1 when every receive fails (endpoint unreachable,
 * 5xx) or the queue is missing or access refused (one error naming
 * source.queue_url): the pipeline is degraded and the worker backs off.
 * open() checks the queue with GetQueueAttributes, whose approximate depth
 * also goes to /status (refreshed at most every 30 s).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "client/sqs.h"
#include "config.h"
#include "json_scan.h"
#include "log.h"
#include "message.h"
#include "source/source.h"
#include "stats.h"
#include "worker.h"

#define DEFAULT_CONCURRENCY 4
#define DEFAULT_BATCH 100
#define POLL_WAIT_MS 1000
#define DEPTH_REFRESH_MS 30000
#define DELETE_CALLS 8
#define DELETE_ROUNDS 3

/* A ReceiveMessage response not yet handed out. */
typedef struct received {
    json_t *root;
    json_t *msgs;
    size_t next;
} received;

typedef struct sqs_source {
    relay_source base;
    relay_sqs_conf conf;
    int64_t max_messages;
    int64_t wait_s;
    int64_t visibility_timeout; /* -1: the queue's */
    int64_t concurrency;
    char *source_name;
    /* runtime */
    relay_sqs_client client;
    sqs_call *recv;             /* `concurrency` receive calls */
    sqs_call del[DELETE_CALLS]; /* deletes and visibility changes */
    sqs_call meta;              /* GetQueueAttributes */
    received *buf;              /* responses with messages not yet handed out */
    size_t nbuf, cap_buf;
    int64_t depth_at_ms;
    int64_t depth_visible, depth_not_visible, queue_visibility_timeout;
    /* counters for /status */
    uint64_t receives, received, deleted, delete_failed, released;
} sqs_source;

extern const relay_source_ops relay_source_sqs_ops;
static void ss_destroy(relay_source *base);

static const char *pipeline_name(const sqs_source *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- configuration ---------------------------------------------------------- */

static relay_source *ss_create(const json_t *cfg, struct relay_worker *w, char *err,
                               size_t errlen)
{
    static const char *const keys[] = {"type", RELAY_SQS_CONN_KEYS, "max_messages",
                                       "wait_time_seconds", "visibility_timeout", "concurrency",
                                       "batch_size", NULL};
    if (sqs_curl_init(err, errlen) < 0)
        return NULL;
    sqs_source *s = xcalloc(1, sizeof *s);
    s->base.ops = &relay_source_sqs_ops;
    s->base.w = w;
    s->base.default_batch = DEFAULT_BATCH;
    s->depth_visible = s->depth_not_visible = s->queue_visibility_timeout = -1;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        sqs_conf_parse(&s->conf, cfg, "source", w ? w->cfg.name : NULL, err, errlen) < 0 ||
        cfg_int(cfg, "source", "max_messages", 10, 1, 10, &s->max_messages, err, errlen) < 0 ||
        cfg_int(cfg, "source", "wait_time_seconds", 20, 0, 20, &s->wait_s, err, errlen) < 0 ||
        cfg_int(cfg, "source", "visibility_timeout", -1, 0, 43200, &s->visibility_timeout, err,
                errlen) < 0 ||
        cfg_int(cfg, "source", "concurrency", DEFAULT_CONCURRENCY, 1, 64, &s->concurrency, err,
                errlen) < 0) {
        ss_destroy(&s->base);
        return NULL;
    }
    relay_buf name = {0};
    buf_printf(&name, "sqs:%s", s->conf.queue_name);
    s->source_name = buf_steal(&name);
    s->recv = xcalloc((size_t)s->concurrency, sizeof *s->recv);
    return &s->base;
}

/* ---- /status --------------------------------------------------------------------- */

static size_t receives_running(const sqs_source *s)
{
    size_t n = 0;
    for (int64_t i = 0; s->recv && i < s->concurrency; i++)
        n += s->recv[i].busy != 0;
    return n;
}

static size_t buffered(const sqs_source *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nbuf; i++)
        n += json_array_size(s->buf[i].msgs) - s->buf[i].next;
    return n;
}

static void ss_position(relay_source *base, relay_buf *out)
{
    sqs_source *s = (sqs_source *)base;
    buf_putc(out, '{');
    sqs_conf_describe(&s->conf, out);
    buf_printf(out, ",\"receives_in_flight\":%zu,\"buffered\":%zu,\"receives\":%" PRIu64
               ",\"received\":%" PRIu64 ",\"deleted\":%" PRIu64 ",\"delete_failed\":%" PRIu64
               ",\"released\":%" PRIu64 ",\"approximate_depth\":%" PRId64
               ",\"approximate_not_visible\":%" PRId64 ",\"visibility_timeout\":%" PRId64 "}",
               receives_running(s), buffered(s), s->receives, s->received, s->deleted,
               s->delete_failed, s->released, s->depth_visible, s->depth_not_visible,
               s->visibility_timeout >= 0 ? s->visibility_timeout : s->queue_visibility_timeout);
}

static void publish_position(sqs_source *s)
{
    relay_worker *w = s->base.w;
    if (!w || !w->stats)
        return;
    relay_buf b = {0};
    ss_position(&s->base, &b);
    stats_set_position(w->stats, b.data);
    buf_free(&b);
}

/* ---- open --------------------------------------------------------------------------- */

/* GetQueueAttributes: the queue exists and we may read it. */
static int check_queue(sqs_source *s, char *err, size_t errlen)
{
    int64_t vis, notvis, vt;
    char why[400];
    sqs_outcome o = sqs_queue_attributes(&s->client, &s->meta, &vis, &notvis, &vt, why,
                                         sizeof why);
    s->depth_at_ms = now_mono_ms();
    if (o == SQS_OK) {
        s->depth_visible = vis;
        s->depth_not_visible = notvis;
        s->queue_visibility_timeout = vt;
        return 0;
    }
    if (o == SQS_FATAL || o == SQS_INVALID)
        snprintf(err, errlen, "source.queue_url: %s: %s", s->conf.queue_url, why);
    else
        snprintf(err, errlen, "SQS endpoint %s: %s", s->conf.endpoint, why);
    return -1;
}

static int ss_open(relay_source *base, char *err, size_t errlen)
{
    sqs_source *s = (sqs_source *)base;
    long conns = (long)s->concurrency + DELETE_CALLS + 1;
    if (sqs_client_open(&s->client, &s->conf, conns, err, errlen) < 0)
        return -1;
    if (check_queue(s, err, errlen) < 0)
        return -1;
    log_info(pipeline_name(s), "reading SQS queue %s (%" PRId64 " receives of up to %" PRId64
             " messages, %" PRId64 " s long poll, visibility timeout %" PRId64 " s)",
             s->conf.queue_url, s->concurrency, s->max_messages, s->wait_s,
             s->visibility_timeout >= 0 ? s->visibility_timeout : s->queue_visibility_timeout);
    publish_position(s);
    return 0;
}

/* ---- receiving ------------------------------------------------------------------------ */

static int start_receive(sqs_source *s, sqs_call *call, char *err, size_t errlen)
{
    buf_clear(&call->req);
    buf_puts(&call->req, "{\"QueueUrl\":");
    buf_put_json_str(&call->req, s->conf.queue_url, strlen(s->conf.queue_url));
    buf_printf(&call->req, ",\"MaxNumberOfMessages\":%" PRId64 ",\"WaitTimeSeconds\":%" PRId64,
               s->max_messages, s->wait_s);
    if (s->visibility_timeout >= 0)
        buf_printf(&call->req, ",\"VisibilityTimeout\":%" PRId64, s->visibility_timeout);
    buf_puts(&call->req, ",\"MessageAttributeNames\":[\"All\"],"
             "\"MessageSystemAttributeNames\":[\"All\"],\"AttributeNames\":[\"All\"]}");
    if (sqs_call_start(&s->client, call, "ReceiveMessage", s->wait_s * 1000, err, errlen) < 0)
        return -1;
    s->receives++;
    return 0;
}

/* Start every receive call that is idle. */
static int start_receives(sqs_source *s, char *err, size_t errlen)
{
    for (int64_t i = 0; i < s->concurrency; i++)
        if (!s->recv[i].busy && !s->recv[i].done &&
            start_receive(s, &s->recv[i], err, errlen) < 0)
            return -1;
    return 0;
}

/* A receive finished: buffer its messages. Returns 0, or -1 with err. */
static int take_response(sqs_source *s, sqs_call *call, char *err, size_t errlen)
{
    char code[64], msg[256];
    sqs_outcome o = sqs_call_outcome(call, code, sizeof code, msg, sizeof msg);
    if (o != SQS_OK) {
        if (o == SQS_RETRY)
            snprintf(err, errlen, "ReceiveMessage on %s: %s%s%s", s->conf.endpoint, code,
                     msg[0] ? ": " : "", msg);
        else
            snprintf(err, errlen, "source.queue_url: %s: ReceiveMessage: %s%s%s",
                     s->conf.queue_url, code, msg[0] ? ": " : "", msg);
        return -1;
    }
    json_t *root, *msgs;
    char why[300];
    int n = sqs_parse_receive(call->resp.data ? call->resp.data : "", call->resp.len, &root,
                              &msgs, why, sizeof why);
    if (n < 0) {
        snprintf(err, errlen, "%s", why);
        return -1;
    }
    if (n == 0) {
        json_decref(root);
        return 0;
    }
    if (s->nbuf == s->cap_buf) {
        s->cap_buf = s->cap_buf ? 2 * s->cap_buf : 8;
        s->buf = xrealloc(s->buf, s->cap_buf * sizeof *s->buf);
    }
    s->buf[s->nbuf++] = (received){.root = root, .msgs = msgs, .next = 0};
    s->received += (uint64_t)n;
    return 0;
}

static const char *arena_bytes(relay_arena *a, const char *p, size_t n)
{
    return arena_strndup(a, p ? p : "", n);
}

/* One received message into the batch. Returns 1 added, 0 skipped. */
static int fill_msg(sqs_source *s, relay_batch *b, const json_t *jm)
{
    sqs_received r;
    char why[200];
    if (sqs_received_get(jm, &r, why, sizeof why) < 0) {
        log_warn(pipeline_name(s), "skipping a message SQS sent without its ids: %s", why);
        return 0;
    }
    relay_msg *m = batch_add(b);
    relay_arena *a = &b->arena;
    if (r.dedup_id && r.dedup_id_len) {
        m->dedup_key = arena_bytes(a, r.dedup_id, r.dedup_id_len);
        m->dedup_key_len = r.dedup_id_len;
    } else if (r.attr_dedup_key && r.attr_dedup_key_len) {
        m->dedup_key = arena_bytes(a, r.attr_dedup_key, r.attr_dedup_key_len);
        m->dedup_key_len = r.attr_dedup_key_len;
    } else {
        m->dedup_key = arena_strdup(a, r.message_id);
    }
    if (r.attr_event_type && r.attr_event_type_len) {
        m->subject = arena_bytes(a, r.attr_event_type, r.attr_event_type_len);
        m->subject_len = r.attr_event_type_len;
    } else {
        m->subject = s->conf.queue_name;
    }
    if (r.group_id && r.group_id_len) {
        m->aggregate_id = arena_bytes(a, r.group_id, r.group_id_len);
        m->aggregate_id_len = r.group_id_len;
    }
    if (r.attr_traceparent && r.attr_traceparent_len) {
        m->trace_id = arena_bytes(a, r.attr_traceparent, r.attr_traceparent_len);
        m->trace_id_len = r.attr_traceparent_len;
    }
    m->op = OP_EVENT;
    m->payload = arena_bytes(a, r.body, r.body_len);
    m->payload_len = r.body_len;
    m->payload_is_json = json_valid(m->payload, m->payload_len);
    m->source_name = s->source_name;
    m->ack = (void *)arena_strdup(a, r.receipt_handle);
    return 1;
}

/* Hand out buffered messages, up to `max` in the batch. */
static void drain_buffer(sqs_source *s, relay_batch *b, size_t max)
{
    size_t used = 0;
    for (; used < s->nbuf && b->n < max; used++) {
        received *rc = &s->buf[used];
        size_t total = json_array_size(rc->msgs);
        while (rc->next < total && b->n < max)
            fill_msg(s, b, json_array_get(rc->msgs, rc->next++));
        if (rc->next < total)
            break;
        json_decref(rc->root);
    }
    if (used == 0)
        return;
    memmove(s->buf, s->buf + used, (s->nbuf - used) * sizeof *s->buf);
    s->nbuf -= used;
}

/* Drop every call (their answers are lost: those messages come back after
 * their visibility timeout) and the multi handle; the next poll reopens. */
static void close_client(sqs_source *s)
{
    for (int64_t i = 0; i < s->concurrency; i++)
        sqs_call_abandon(&s->client, &s->recv[i]);
    for (int c = 0; c < DELETE_CALLS; c++)
        sqs_call_abandon(&s->client, &s->del[c]);
    sqs_client_close(&s->client);
}

/* Buffer the answers of the receives that finished and start them again;
 * a failed one is not restarted before the next poll (no busy loop on a
 * failing endpoint): counted in *failures, its error in first_error. */
static int take_receives(sqs_source *s, size_t *failures, char *first_error, size_t fel,
                         char *err, size_t errlen)
{
    for (int64_t i = 0; i < s->concurrency; i++) {
        sqs_call *call = &s->recv[i];
        if (!sqs_call_take(call))
            continue;
        char why[512];
        if (take_response(s, call, why, sizeof why) < 0) {
            if ((*failures)++ == 0)
                snprintf(first_error, fel, "%s", why);
            continue;
        }
        if (start_receive(s, call, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static int ss_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    sqs_source *s = (sqs_source *)base;
    if (!s->client.multi && ss_open(base, err, errlen) < 0)
        return -1;
    if (now_mono_ms() - s->depth_at_ms >= DEPTH_REFRESH_MS) {
        char why[400];
        if (check_queue(s, why, sizeof why) < 0)
            log_debug(pipeline_name(s), "SQS queue depth: %s", why);
        publish_position(s);
    }
    int64_t deadline = now_mono_ms() + POLL_WAIT_MS;
    size_t failures = 0;
    char first_error[512] = "";
    /* answers that came in since the last poll (or during an ack) first */
    if (take_receives(s, &failures, first_error, sizeof first_error, err, errlen) < 0)
        return -1;
    failures = 0;
    if (start_receives(s, err, errlen) < 0)
        return -1;
    for (;;) {
        drain_buffer(s, b, max);
        if (b->n >= max || failures >= (size_t)s->concurrency)
            break; /* full, or every receive failed: the endpoint or queue is the problem */
        int64_t left = b->n ? 0 : deadline - now_mono_ms();
        if (left < 0 || worker_stopping(s->base.w))
            left = 0;
        int rc = sqs_client_run(&s->client, (int)left, err, errlen);
        if (rc < 0) {
            close_client(s);
            return -1;
        }
        if (rc == 0)
            break; /* nothing more within the wait */
        if (take_receives(s, &failures, first_error, sizeof first_error, err, errlen) < 0)
            return -1;
    }
    if (b->n == 0 && failures > 0) {
        snprintf(err, errlen, "%s", first_error);
        return -1;
    }
    return (int)b->n;
}

/* ---- acknowledging ---------------------------------------------------------------------- */

static void abandon_actions(sqs_source *s)
{
    for (int c = 0; c < DELETE_CALLS; c++)
        sqs_call_abandon(&s->client, &s->del[c]);
}

/* Apply one finished batch-action request covering b's messages idx[0..n).
 * Returns 0, or -1 with err (the first failure) when the request failed as
 * a whole. */
static int action_result(sqs_source *s, const char *action, sqs_call *done, const size_t *idx,
                         size_t n, unsigned char *unsettled, size_t *refused, char *err,
                         size_t errlen)
{
    char code[64], msg[256], why[300];
    sqs_outcome o = sqs_call_outcome(done, code, sizeof code, msg, sizeof msg);
    sqs_entry_result res[SQS_MAX_BATCH_ENTRIES];
    memset(res, 0, sizeof res);
    if (o != SQS_OK || sqs_parse_batch_result(done->resp.data ? done->resp.data : "",
                                              done->resp.len, res, n, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s on %s: %s%s%s", action, s->conf.endpoint,
                 o != SQS_OK ? code : why, o != SQS_OK && msg[0] ? ": " : "",
                 o != SQS_OK ? msg : "");
        return -1;
    }
    for (size_t j = 0; j < n; j++) {
        if (res[j].state == SQS_ENTRY_OK || res[j].state == SQS_ENTRY_SENDER_FAULT)
            unsettled[idx[j]] = 0;
        if (res[j].state == SQS_ENTRY_SENDER_FAULT) {
            (*refused)++;
            log_debug(pipeline_name(s), "%s: %s: %s", action, res[j].code, res[j].message);
        }
    }
    return 0;
}

/* Run one batch action (DeleteMessageBatch, ChangeMessageVisibilityBatch)
 * over the receipt handles of msgs whose flag is set in unsettled[], 10 per
 * request, DELETE_CALLS at once. Entries done (or refused by SQS) get
 * unsettled[i] = 0; the transiently failed stay 1. Counts the refused in
 * *refused. Returns 0, or -1 with err when a request failed as a whole. */
static int batch_action(sqs_source *s, const char *action, relay_batch *b,
                        unsigned char *unsettled, size_t *refused, char *err, size_t errlen)
{
    size_t idx[DELETE_CALLS][SQS_MAX_BATCH_ENTRIES];
    size_t cnt[DELETE_CALLS];
    size_t next = 0;
    int failed = 0;
    int visibility = strcmp(action, "ChangeMessageVisibilityBatch") == 0;
    for (;;) {
        size_t running = 0;
        for (int c = 0; c < DELETE_CALLS; c++) {
            sqs_call *call = &s->del[c];
            if (call->busy) {
                running++;
                continue;
            }
            cnt[c] = 0;
            while (next < b->n && cnt[c] < SQS_MAX_BATCH_ENTRIES) {
                if (unsettled[next])
                    idx[c][cnt[c]++] = next;
                next++;
            }
            if (cnt[c] == 0)
                continue;
            buf_clear(&call->req);
            buf_puts(&call->req, "{\"QueueUrl\":");
            buf_put_json_str(&call->req, s->conf.queue_url, strlen(s->conf.queue_url));
            buf_puts(&call->req, ",\"Entries\":[");
            for (size_t j = 0; j < cnt[c]; j++) {
                const char *rh = b->msgs[idx[c][j]].ack;
                buf_printf(&call->req, "%s{\"Id\":\"%zu\",\"ReceiptHandle\":", j ? "," : "", j);
                buf_put_json_str(&call->req, rh, strlen(rh));
                if (visibility)
                    buf_puts(&call->req, ",\"VisibilityTimeout\":0");
                buf_putc(&call->req, '}');
            }
            buf_puts(&call->req, "]}");
            if (sqs_call_start(&s->client, call, action, 0, err, errlen) < 0) {
                abandon_actions(s);
                return -1;
            }
            running++;
        }
        if (running == 0)
            break;
        if (sqs_client_run(&s->client, 1000, err, errlen) < 0) {
            abandon_actions(s);
            return -1;
        }
        for (int c = 0; c < DELETE_CALLS; c++) {
            if (sqs_call_take(&s->del[c]) &&
                action_result(s, action, &s->del[c], idx[c], cnt[c], unsettled, refused,
                              failed ? NULL : err, failed ? 0 : errlen) < 0)
                failed = 1;
        }
    }
    return failed ? -1 : 0;
}

static size_t count_unsettled(const unsigned char *unsettled, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += unsettled[i];
    return k;
}

static int ss_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    sqs_source *s = (sqs_source *)base;
    if (b->n == 0)
        return 0;
    if (!s->client.multi && sqs_client_open(&s->client, &s->conf, (long)s->concurrency +
                                            DELETE_CALLS + 1, err, errlen) < 0)
        return -1;
    unsigned char *unsettled = xmalloc(b->n);
    memset(unsettled, 1, b->n);
    size_t refused = 0;
    char last[1024] = "";
    for (int round = 0; round < DELETE_ROUNDS && count_unsettled(unsettled, b->n); round++) {
        if (round > 0 && worker_wait(s->base.w, -1, 0, 200 * round) < 0)
            break;
        if (batch_action(s, "DeleteMessageBatch", b, unsettled, &refused, last, sizeof last) < 0)
            log_debug(pipeline_name(s), "deleting received messages: %s", last);
    }
    size_t left = count_unsettled(unsettled, b->n);
    free(unsettled);
    s->deleted += b->n - left - refused;
    s->delete_failed += left + refused;
    if (refused)
        log_warn(pipeline_name(s), "SQS refused to delete %zu of %zu messages (their receipt "
                 "handles expired: the visibility timeout ran out before the inbox COMMIT); "
                 "they will be delivered again and skipped by the inbox", refused, b->n);
    publish_position(s);
    if (left) {
        snprintf(err, errlen, "%zu of %zu messages not deleted after the inbox COMMIT (they "
                 "will be delivered again and skipped by the inbox): %s", left, b->n, last);
        return -1;
    }
    return 0;
}

static void ss_release(relay_source *base, relay_batch *b)
{
    sqs_source *s = (sqs_source *)base;
    if (b->n == 0 || !s->client.multi)
        return;
    unsigned char *unsettled = xmalloc(b->n);
    memset(unsettled, 1, b->n);
    size_t refused = 0;
    char why[1024] = "";
    if (batch_action(s, "ChangeMessageVisibilityBatch", b, unsettled, &refused, why,
                     sizeof why) < 0)
        log_warn(pipeline_name(s), "releasing %zu messages failed (%s): they come back after "
                 "their visibility timeout", count_unsettled(unsettled, b->n), why);
    s->released += b->n - count_unsettled(unsettled, b->n) - refused;
    free(unsettled);
    publish_position(s);
}

/* ---- teardown ---------------------------------------------------------------------------- */

static void ss_destroy(relay_source *base)
{
    if (!base)
        return;
    sqs_source *s = (sqs_source *)base;
    for (int64_t i = 0; s->recv && i < s->concurrency; i++)
        sqs_call_free(&s->client, &s->recv[i]);
    for (int c = 0; c < DELETE_CALLS; c++)
        sqs_call_free(&s->client, &s->del[c]);
    sqs_call_free(&s->client, &s->meta);
    sqs_client_close(&s->client);
    for (size_t i = 0; i < s->nbuf; i++)
        json_decref(s->buf[i].root);
    free(s->buf);
    free(s->recv);
    free(s->source_name);
    sqs_conf_free(&s->conf);
    free(s);
}

const relay_source_ops relay_source_sqs_ops = {
    .type = "sqs",
    .create = ss_create,
    .open = ss_open,
    .poll = ss_poll,
    .ack = ss_ack,
    .release = ss_release,
    .position = ss_position,
    .destroy = ss_destroy,
};
