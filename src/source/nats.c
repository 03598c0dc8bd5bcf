/*
 * nats.c - the NATS JetStream reverse source (SPEC section 8, row nats):
 * a durable pull consumer feeding the inbox writer.
 *
 * Config (pipeline "source" object), besides the connection keys of
 * client/nats.h:
 *   stream            the JetStream stream to read (required)
 *   subject           filter subject (default: every subject of the stream)
 *   durable_name      durable consumer name ("pgtrickle-inbox")
 *   deliver_policy    where a new consumer starts: "all" (default), "new",
 *                     "last", "last_per_subject"
 *   ack_wait_seconds  redelivery delay of an unacknowledged message (30)
 *   max_deliver       deliveries per message at most (-1: unlimited)
 *   batch_size        messages per fetch, i.e. per inbox transaction (500)
 *   fetch_wait_ms     how long an empty fetch waits for messages (500)
 *
 * Consumer.  open() makes sure the stream exists (a clear error naming
 * source.stream otherwise) and that the durable consumer exists as an
 * explicit-ack pull consumer: it is created when missing; when it exists
 * with another filter subject, ack wait or max deliver it is updated, and
 * if the server refuses that, the error names the key. The subscription
 * binds to that consumer, so destroying it never deletes the consumer.
 *
 * Fetching.  A fetch thread calls natsSubscription_Fetch (up to batch_size
 * messages, waiting up to fetch_wait_ms) and keeps at most one batch ready,
 * so NATS delivers the next batch while the worker writes the current one
 * to PostgreSQL (the two would otherwise take turns on a 2-core machine).
 * poll() takes the ready batch and maps each message without copying its
 * body:
 *   dedup_key    header Nats-Msg-Id, else "nats:{stream}:{stream sequence}"
 *   subject      the NATS subject (the event_type fallback)
 *   payload      the body; payload_is_json = 0 unless it is valid JSON
 *   source_name  "nats:{stream}"
 *   trace_id     header traceparent, when present
 *   ack          the natsMsg, kept until ack()/release()
 * ack() runs only after the inbox COMMIT: it acks every message
 * (natsMsg_Ack); nats.c's flusher sends the acks at once, without a round
 * trip per batch (destroy() flushes what is left).
 * A crash between COMMIT and ack leaves the messages unacknowledged: they
 * come back after ack_wait and the inbox skips them by event_id. release()
 * (the batch will not be committed) naks them, and the batch fetched ahead,
 * for prompt redelivery in order; destroy() naks the batch fetched ahead.
 *
 * Down.  poll() returns -1 while the connection is down (and client/nats.c
 * marks the source down the moment it drops), so the pipeline is degraded
 * and nothing is fetched or acknowledged until NATS is back.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "../json_scan.h"
#include "../log.h"
#include "../client/nats.h"
#include "../worker.h"
#include "source.h"

typedef struct nats_source {
    relay_source base;
    relay_nats_conn conn;
    /* config */
    char *stream;
    char *subject;            /* NULL: every subject of the stream */
    char *durable;
    jsDeliverPolicy deliver;
    int64_t ack_wait_s;
    int64_t max_deliver;
    int64_t batch_size;
    int64_t fetch_wait_ms;
    char *source_name;        /* "nats:{stream}" */
    /* connection state */
    jsCtx *js;
    natsConnection *js_nc;
    natsSubscription *sub;    /* used by the fetch thread while it runs */
    natsMsgList held;         /* the batch poll() returned, until ack/release */
    /* the fetch thread: fetches the next batch while the current one is
     * written; mu/cond guard everything below */
    pthread_t fetcher;
    int fetcher_running;      /* started and not yet joined */
    int fetch_size;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;                 /* asks the fetch thread to end */
    int exited;               /* the fetch thread ended (stop or error) */
    natsMsgList ready;        /* a fetched batch waiting for poll() */
    int has_ready;
    char fetch_error[400];    /* why the fetch thread ended, "" on stop */
    /* position */
    uint64_t last_acked_seq;
    uint64_t num_pending;
    uint64_t acked;
    uint64_t released;
} nats_source;

static const char *const deliver_names[] = {"all", "new", "last", "last_per_subject", NULL};
static const jsDeliverPolicy deliver_values[] = {js_DeliverAll, js_DeliverNew, js_DeliverLast,
                                                 js_DeliverLastPerSubject};

/* ---- config ----------------------------------------------------------------- */

static void nsrc_destroy(relay_source *base);

static relay_source *nsrc_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "stream", "subject", "durable_name",
                                       "deliver_policy", "ack_wait_seconds", "max_deliver",
                                       "batch_size", "fetch_wait_ms", RELAY_NATS_CONN_KEYS, NULL};
    const char *stream, *subject, *durable, *deliver;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "stream", &stream, err, errlen) < 0 ||
        cfg_str(cfg, "source", "subject", NULL, &subject, err, errlen) < 0 ||
        cfg_str(cfg, "source", "durable_name", "pgtrickle-inbox", &durable, err, errlen) < 0 ||
        cfg_str(cfg, "source", "deliver_policy", "all", &deliver, err, errlen) < 0)
        return NULL;
    if (strcspn(stream, ". *>\t\r\n") != strlen(stream)) {
        snprintf(err, errlen, "source.stream: \"%s\" is not a valid stream name", stream);
        return NULL;
    }
    if (!*durable || strcspn(durable, ". *>\t\r\n") != strlen(durable)) {
        snprintf(err, errlen, "source.durable_name: \"%s\" is not a valid consumer name (no '.', "
                 "'*', '>' or whitespace)", durable);
        return NULL;
    }
    if (subject && (!*subject || strpbrk(subject, " \t\r\n") || strstr(subject, "..") ||
                    subject[0] == '.' || subject[strlen(subject) - 1] == '.')) {
        snprintf(err, errlen, "source.subject: \"%s\" is not a valid NATS subject", subject);
        return NULL;
    }
    int di = 0;
    while (deliver_names[di] && strcmp(deliver_names[di], deliver) != 0)
        di++;
    if (!deliver_names[di]) {
        snprintf(err, errlen, "source.deliver_policy: expected \"all\", \"new\", \"last\" or "
                 "\"last_per_subject\", got \"%s\"", deliver);
        return NULL;
    }
    nats_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (nats_conn_parse(&s->conn, cfg, "source", w ? w->cfg.name : NULL, err, errlen) < 0 ||
        cfg_int(cfg, "source", "ack_wait_seconds", 30, 1, 86400, &s->ack_wait_s, err, errlen) < 0 ||
        cfg_int(cfg, "source", "max_deliver", -1, -1, INT32_MAX, &s->max_deliver, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 500, 1, 100000, &s->batch_size, err, errlen) < 0 ||
        cfg_int(cfg, "source", "fetch_wait_ms", 500, 10, 60000, &s->fetch_wait_ms, err, errlen) < 0) {
        nsrc_destroy(&s->base);
        return NULL;
    }
    if (s->max_deliver == 0) {
        snprintf(err, errlen, "source.max_deliver: expected -1 (unlimited) or at least 1");
        nsrc_destroy(&s->base);
        return NULL;
    }
    s->stream = xstrdup(stream);
    s->subject = subject ? xstrdup(subject) : NULL;
    s->durable = xstrdup(durable);
    s->deliver = deliver_values[di];
    relay_buf name = {0};
    buf_printf(&name, "nats:%s", stream);
    s->source_name = buf_steal(&name);
    return &s->base;
}

/* ---- open: stream, consumer, subscription ------------------------------------------ */

/* ---- the fetch thread ------------------------------------------------------------- */

static void *fetch_main(void *arg)
{
    nats_source *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (s->has_ready && !s->stop)
            pthread_cond_wait(&s->cond, &s->mu);
        int stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        if (!nats_conn_up(&s->conn)) {
            pthread_mutex_lock(&s->mu);
            snprintf(s->fetch_error, sizeof s->fetch_error, "NATS connection to %s lost; "
                     "reconnecting", s->conn.url_display);
            pthread_mutex_unlock(&s->mu);
            break;
        }
        natsMsgList l = {0};
        jsErrCode jerr = 0;
        natsStatus st = natsSubscription_Fetch(&l, s->sub, s->fetch_size, s->fetch_wait_ms, &jerr);
        if (st == NATS_TIMEOUT)
            continue;
        if (st != NATS_OK) {
            char why[300];
            nats_status_text(st, jerr, why, sizeof why);
            natsMsgList_Destroy(&l);
            pthread_mutex_lock(&s->mu);
            snprintf(s->fetch_error, sizeof s->fetch_error, "fetch from consumer \"%s\" of stream "
                     "\"%s\": %s", s->durable, s->stream, why);
            pthread_mutex_unlock(&s->mu);
            break;
        }
        pthread_mutex_lock(&s->mu);
        s->ready = l;
        s->has_ready = 1;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_lock(&s->mu);
    s->exited = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int start_fetcher(nats_source *s, int size, char *err, size_t errlen)
{
    if (s->fetcher_running)
        return 0;
    s->stop = 0;
    s->exited = 0;
    s->fetch_error[0] = '\0';
    s->fetch_size = size;
    if (pthread_create(&s->fetcher, NULL, fetch_main, s) != 0) {
        snprintf(err, errlen, "cannot start the NATS fetch thread");
        return -1;
    }
    s->fetcher_running = 1;
    return 0;
}

static void nak_list(natsMsgList *l)
{
    for (int i = 0; i < l->Count; i++)
        natsMsg_Nak(l->Msgs[i], NULL);
    natsMsgList_Destroy(l);
    memset(l, 0, sizeof *l);
}

/* Stop and join the fetch thread; a batch fetched ahead is nak'ed. */
static void stop_fetcher(nats_source *s)
{
    if (s->fetcher_running) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_broadcast(&s->cond);
        pthread_mutex_unlock(&s->mu);
        pthread_join(s->fetcher, NULL);
        s->fetcher_running = 0;
    }
    if (s->has_ready) {
        if (nats_conn_up(&s->conn))
            nak_list(&s->ready);
        else
            natsMsgList_Destroy(&s->ready);
        memset(&s->ready, 0, sizeof s->ready);
        s->has_ready = 0;
    }
}

static void drop_held(nats_source *s)
{
    natsMsgList_Destroy(&s->held);
    memset(&s->held, 0, sizeof s->held);
}

static void drop_sub(nats_source *s)
{
    stop_fetcher(s);
    if (s->sub)
        natsSubscription_Destroy(s->sub);
    s->sub = NULL;
}

static void drop_js(nats_source *s)
{
    drop_sub(s);
    if (s->js)
        jsCtx_Destroy(s->js);
    s->js = NULL;
    s->js_nc = NULL;
}

static void status_text(natsStatus st, jsErrCode jerr, char *out, size_t n)
{
    nats_status_text(st, jerr, out, n);
}

static int check_stream(nats_source *s, char *err, size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, s->js, s->stream, NULL, &jerr);
    if (st == NATS_OK) {
        jsStreamInfo_Destroy(si);
        return 0;
    }
    char why[300];
    status_text(st, jerr, why, sizeof why);
    if (st == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr)
        snprintf(err, errlen, "source.stream: JetStream stream \"%s\" does not exist", s->stream);
    else if (st == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr || jerr == JSNotEnabledForAccountErr)
        snprintf(err, errlen, "JetStream is not enabled on the NATS server at %s (%s)",
                 s->conn.url_display, why);
    else
        snprintf(err, errlen, "source.stream: cannot look up stream \"%s\": %s", s->stream, why);
    return -1;
}

static void consumer_config(nats_source *s, jsConsumerConfig *cc)
{
    jsConsumerConfig_Init(cc);
    cc->Durable = s->durable;
    cc->DeliverPolicy = s->deliver;
    cc->AckPolicy = js_AckExplicit;
    cc->AckWait = s->ack_wait_s * 1000000000LL;
    cc->MaxDeliver = s->max_deliver;
    cc->FilterSubject = s->subject;
    /* room for a batch being written plus one being redelivered */
    cc->MaxAckPending = s->batch_size * 4 > 1000 ? s->batch_size * 4 : 1000;
}

static int same_str(const char *a, const char *b)
{
    return strcmp(a ? a : "", b ? b : "") == 0;
}

/* The consumer exists: bring ack wait, max deliver, filter subject and
 * max ack pending in line with the config. */
static int reconcile_consumer(nats_source *s, jsConsumerInfo *ci, char *err, size_t errlen)
{
    jsConsumerConfig *cur = ci->Config;
    if (cur->DeliverSubject && *cur->DeliverSubject) {
        snprintf(err, errlen, "source.durable_name: consumer \"%s\" of stream \"%s\" is a push "
                 "consumer; choose another durable_name", s->durable, s->stream);
        return -1;
    }
    if (cur->AckPolicy != js_AckExplicit) {
        snprintf(err, errlen, "source.durable_name: consumer \"%s\" of stream \"%s\" does not use "
                 "explicit acks; choose another durable_name", s->durable, s->stream);
        return -1;
    }
    int64_t want_pending = s->batch_size * 4 > 1000 ? s->batch_size * 4 : 1000;
    int64_t want_deliver = s->max_deliver;
    int64_t have_deliver = cur->MaxDeliver == 0 ? -1 : cur->MaxDeliver;
    int differs = cur->AckWait != s->ack_wait_s * 1000000000LL || have_deliver != want_deliver ||
                  !same_str(cur->FilterSubject, s->subject) ||
                  (cur->MaxAckPending > 0 && cur->MaxAckPending < s->batch_size);
    if (cur->DeliverPolicy != s->deliver)
        log_warn(s->conn.pipeline, "consumer \"%s\" already exists with another deliver policy; "
                 "source.deliver_policy only applies when the consumer is created", s->durable);
    if (!differs)
        return 0;
    jsConsumerConfig up = *cur;
    up.AckWait = s->ack_wait_s * 1000000000LL;
    up.MaxDeliver = want_deliver;
    up.FilterSubject = s->subject;
    if (up.MaxAckPending > 0 && up.MaxAckPending < s->batch_size)
        up.MaxAckPending = want_pending;
    jsConsumerInfo *ni = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_UpdateConsumer(&ni, s->js, s->stream, &up, NULL, &jerr);
    if (st != NATS_OK) {
        char why[300];
        status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "source.durable_name: consumer \"%s\" exists with another "
                 "configuration (filter subject \"%s\") that cannot be changed: %s; delete it or "
                 "choose another durable_name", s->durable,
                 cur->FilterSubject ? cur->FilterSubject : "", why);
        return -1;
    }
    jsConsumerInfo_Destroy(ni);
    log_info(s->conn.pipeline, "updated consumer \"%s\" of stream \"%s\" to the configuration",
             s->durable, s->stream);
    return 0;
}

static int ensure_consumer(nats_source *s, char *err, size_t errlen)
{
    jsConsumerInfo *ci = NULL;
    jsErrCode jerr = 0;
    char why[300];
    natsStatus st = js_GetConsumerInfo(&ci, s->js, s->stream, s->durable, NULL, &jerr);
    if (st == NATS_OK) {
        int rc = reconcile_consumer(s, ci, err, errlen);
        jsConsumerInfo_Destroy(ci);
        return rc;
    }
    if (st != NATS_NOT_FOUND && jerr != JSConsumerNotFoundErr) {
        status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "source.durable_name: cannot look up consumer \"%s\": %s", s->durable,
                 why);
        return -1;
    }
    jsConsumerConfig cc;
    consumer_config(s, &cc);
    st = js_AddConsumer(&ci, s->js, s->stream, &cc, NULL, &jerr);
    if (st != NATS_OK) {
        status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "source.durable_name: cannot create consumer \"%s\" on stream \"%s\": "
                 "%s", s->durable, s->stream, why);
        return -1;
    }
    jsConsumerInfo_Destroy(ci);
    log_info(s->conn.pipeline, "created durable pull consumer \"%s\" on stream \"%s\" (subject %s, "
             "deliver %s, ack wait %llds)", s->durable, s->stream, s->subject ? s->subject : "all",
             deliver_names[s->deliver == js_DeliverAll ? 0 : s->deliver == js_DeliverNew ? 1
                           : s->deliver == js_DeliverLast ? 2 : 3],
             (long long)s->ack_wait_s);
    return 0;
}

static int subscribe(nats_source *s, char *err, size_t errlen)
{
    jsSubOptions so;
    jsSubOptions_Init(&so);
    so.Stream = s->stream;
    so.Consumer = s->durable;
    jsErrCode jerr = 0;
    natsStatus st = js_PullSubscribe(&s->sub, s->js, s->subject, s->durable, NULL, &so, &jerr);
    if (st != NATS_OK) {
        char why[300];
        status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "pull subscription to consumer \"%s\" of stream \"%s\": %s",
                 s->durable, s->stream, why);
        s->sub = NULL;
        return -1;
    }
    natsSubscription_SetPendingLimits(s->sub, -1, -1);
    return 0;
}

static void publish_position(nats_source *s)
{
    relay_worker *w = s->base.w;
    if (!w || !w->stats)
        return;
    relay_buf b = {0};
    buf_puts(&b, "{\"stream\":");
    buf_put_json_str(&b, s->stream, strlen(s->stream));
    buf_puts(&b, ",\"consumer\":");
    buf_put_json_str(&b, s->durable, strlen(s->durable));
    buf_printf(&b, ",\"last_acked_stream_seq\":%" PRIu64 ",\"num_pending\":%" PRIu64
               ",\"acked\":%" PRIu64 ",\"released\":%" PRIu64 ",",
               s->last_acked_seq, s->num_pending, s->acked, s->released);
    nats_conn_describe(&s->conn, &b);
    buf_putc(&b, '}');
    stats_set_position(w->stats, b.data);
    buf_free(&b);
}

static int nsrc_open(relay_source *base, char *err, size_t errlen)
{
    nats_source *s = (nats_source *)base;
    relay_worker *w = base->w;
    if (w && w->stats)
        s->conn.health_flag = &w->stats->source_up;
    drop_held(s); /* an unacknowledged batch comes back after ack_wait */
    if (!nats_conn_up(&s->conn))
        drop_sub(s); /* stops the fetch thread before the connection may be rebuilt */
    if (nats_conn_open(&s->conn, err, errlen) < 0)
        return -1;
    if (!s->js || s->js_nc != s->conn.nc) {
        drop_js(s);
        natsStatus st = natsConnection_JetStream(&s->js, s->conn.nc, NULL);
        if (st != NATS_OK) {
            char why[300];
            status_text(st, 0, why, sizeof why);
            snprintf(err, errlen, "JetStream context: %s", why);
            s->js = NULL;
            return -1;
        }
        s->js_nc = s->conn.nc;
    }
    if (!s->sub) {
        if (check_stream(s, err, errlen) < 0 || ensure_consumer(s, err, errlen) < 0 ||
            subscribe(s, err, errlen) < 0)
            return -1;
        log_info(s->conn.pipeline, "reading stream \"%s\" through durable consumer \"%s\"",
                 s->stream, s->durable);
    }
    publish_position(s);
    return 0;
}

/* ---- poll -------------------------------------------------------------------- */

static void fill_msg(nats_source *s, relay_batch *b, natsMsg *nm)
{
    relay_msg *m = batch_add(b);
    const char *id = NULL;
    if (natsMsgHeader_Get(nm, "Nats-Msg-Id", &id) == NATS_OK && id && *id) {
        m->dedup_key = id;
    } else {
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, nm) == NATS_OK) {
            m->dedup_key = arena_printf(&b->arena, "nats:%s:%" PRIu64, s->stream,
                                        meta->Sequence.Stream);
            jsMsgMetaData_Destroy(meta);
        } else {
            /* not a JetStream delivery: cannot happen on a pull consumer */
            m->dedup_key = arena_printf(&b->arena, "nats:%s:%s", s->stream,
                                        natsMsg_GetReply(nm) ? natsMsg_GetReply(nm) : "?");
        }
    }
    const char *trace = NULL;
    if (natsMsgHeader_Get(nm, "traceparent", &trace) == NATS_OK && trace && *trace)
        m->trace_id = trace;
    m->op = OP_EVENT;
    m->subject = natsMsg_GetSubject(nm);
    const char *data = natsMsg_GetData(nm);
    int len = natsMsg_GetDataLength(nm);
    m->payload = data ? data : "";
    m->payload_len = len > 0 ? (size_t)len : 0;
    m->payload_is_json = json_valid(m->payload, m->payload_len);
    m->source_name = s->source_name;
    m->ack = nm;
}

static int nsrc_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    nats_source *s = (nats_source *)base;
    drop_held(s);
    if (!s->sub || !nats_conn_up(&s->conn)) {
        snprintf(err, errlen, "NATS connection to %s lost; reconnecting", s->conn.url_display);
        return -1;
    }
    int want = (int)((int64_t)max < s->batch_size ? (int64_t)max : s->batch_size);
    if (start_fetcher(s, want, err, errlen) < 0)
        return -1;
    struct timespec until = deadline_after_ms(CLOCK_REALTIME, s->fetch_wait_ms);
    pthread_mutex_lock(&s->mu);
    while (!s->has_ready && !s->exited)
        if (pthread_cond_timedwait(&s->cond, &s->mu, &until) != 0)
            break;
    if (s->has_ready) {
        s->held = s->ready;
        memset(&s->ready, 0, sizeof s->ready);
        s->has_ready = 0;
        pthread_cond_broadcast(&s->cond); /* room for the next batch */
        pthread_mutex_unlock(&s->mu);
        for (int i = 0; i < s->held.Count; i++)
            fill_msg(s, b, s->held.Msgs[i]);
        return s->held.Count;
    }
    int exited = s->exited;
    if (exited)
        snprintf(err, errlen, "%s", s->fetch_error[0] ? s->fetch_error : "the fetch thread stopped");
    pthread_mutex_unlock(&s->mu);
    if (!exited)
        return 0; /* nothing arrived within fetch_wait_ms */
    drop_sub(s); /* the consumer may be gone: open() checks and recreates */
    return -1;
}

/* ---- ack / release ----------------------------------------------------------------- */

static int nsrc_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    nats_source *s = (nats_source *)base;
    natsStatus first = NATS_OK;
    size_t failed = 0;
    for (size_t i = 0; i < b->n; i++) {
        natsMsg *nm = b->msgs[i].ack;
        if (!nm)
            continue;
        natsStatus st = natsMsg_Ack(nm, NULL);
        if (st != NATS_OK) {
            if (!failed)
                first = st;
            failed++;
        }
    }
    if (b->n > 0 && b->msgs[b->n - 1].ack) {
        jsMsgMetaData *meta = NULL;
        if (natsMsg_GetMetaData(&meta, b->msgs[b->n - 1].ack) == NATS_OK) {
            s->last_acked_seq = meta->Sequence.Stream;
            s->num_pending = meta->NumPending;
            jsMsgMetaData_Destroy(meta);
        }
    }
    drop_held(s);
    if (failed) {
        char why[300];
        status_text(first, 0, why, sizeof why);
        snprintf(err, errlen, "acking %zu messages: %s (they come back after ack_wait; the inbox "
                 "skips them)", failed, why);
        return -1;
    }
    s->acked += b->n;
    publish_position(s);
    return 0;
}

static void nsrc_release(relay_source *base, relay_batch *b)
{
    nats_source *s = (nats_source *)base;
    for (size_t i = 0; i < b->n; i++)
        if (b->msgs[i].ack)
            natsMsg_Nak(b->msgs[i].ack, NULL);
    s->released += b->n;
    drop_held(s);
    stop_fetcher(s); /* the batch fetched ahead goes back too, after this one */
}

static void nsrc_position(relay_source *base, relay_buf *out)
{
    nats_source *s = (nats_source *)base;
    buf_puts(out, "{\"stream\":");
    buf_put_json_str(out, s->stream, strlen(s->stream));
    buf_puts(out, ",\"consumer\":");
    buf_put_json_str(out, s->durable, strlen(s->durable));
    buf_printf(out, ",\"last_acked_stream_seq\":%" PRIu64 ",\"num_pending\":%" PRIu64 "}",
               s->last_acked_seq, s->num_pending);
}

static void nsrc_destroy(relay_source *base)
{
    if (!base)
        return;
    nats_source *s = (nats_source *)base;
    drop_held(s);
    stop_fetcher(s);
    if (s->conn.nc && nats_conn_up(&s->conn))
        natsConnection_FlushTimeout(s->conn.nc, 1000);
    drop_js(s);
    nats_conn_free(&s->conn);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s->stream);
    free(s->subject);
    free(s->durable);
    free(s->source_name);
    free(s);
}

const relay_source_ops relay_source_nats_ops = {
    .type = "nats",
    .create = nsrc_create,
    .open = nsrc_open,
    .poll = nsrc_poll,
    .ack = nsrc_ack,
    .release = nsrc_release,
    .position = nsrc_position,
    .destroy = nsrc_destroy,
};
