/*
 * nats.c - the NATS JetStream sink (SPEC sections 5 and 7, row nats).
 *
 * Config (pipeline "sink" object), besides the connection keys of
 * client/nats.h:
 *   stream                    JetStream stream the events must land in (required)
 *   subject_template          SPEC section 5 template (the source's default:
 *                             pgtrickle.{stream_table}.{op} / cdc.{table}.{op})
 *   format                    body: "native" JSON envelope (default) or "msgpack"
 *   max_in_flight             PubAcks outstanding at most (4096)
 *   ack_timeout_ms            how long one PubAck may take (5000)
 *   create_stream             create `stream` when it does not exist (false)
 *   subjects                  its subjects (default: the template with every
 *                             token holding a variable replaced by "*")
 *   duplicate_window_seconds  its dedup window (120)
 *   storage                   "file" (default) or "memory"
 *   replicas                  1
 *   max_age_seconds           0 = keep forever
 *
 * Publishing.  Each message is one core NATS publish of the encoded body to
 * the rendered subject, with the headers
 *   Nats-Msg-Id              the dedup key (JetStream drops a repeat within
 *                            the stream's duplicate window)
 *   Pgtrickle-Full-Refresh   "true" on full-refresh / snapshot events
 * and a reply subject of its own, <inbox>.<call>.<index>, which makes the
 * stream answer with a PubAck (what js_PublishMsgAsync does underneath,
 * without its per-message pending map, timers and thread hand-offs: that
 * bookkeeping was half of the relay's CPU, see docs/benchmarks.md). One
 * synchronous subscription on <inbox>.> collects the PubAcks on the worker
 * thread; the index in the reply subject says which message an answer is
 * for, so nothing is looked up by key. At most max_in_flight PubAcks are
 * outstanding: the publisher reads answers before it sends more.
 *
 * Confirmation.  A message is CONFIRMED only by its own PubAck naming
 * sink.stream (stored, or a duplicate of a stored message). Otherwise:
 *   PubAck error "message too large" (10054)    MSG_REJECTED (dead-lettered)
 *   any other PubAck error, no responders,
 *   a PubAck from another stream, a reply that
 *   is no PubAck                                MSG_RETRY (same ids next time)
 *   no PubAck for ack_timeout_ms                MSG_RETRY for those still
 *                                               waiting; the call ends and
 *                                               the answered ones stand
 * A reply that arrives after its call ended (the call number in its subject
 * is an old one) is dropped: its message was retried already, with the same
 * Nats-Msg-Id, so a PubAck lost after the server stored the message costs
 * nothing but a duplicate the server drops.
 *
 * Subjects.  open() reads the stream's subjects; a rendered subject that
 * none of them matches is not published at all (it would land in another
 * stream, or nowhere) but marked MSG_RETRY with an error naming the
 * subject and the stream, so a misconfiguration is one clear error.
 *
 * Down.  publish() returns -1 (the worker marks the batch for retry and the
 * pipeline degraded) when the connection is down or drops while PubAcks are
 * outstanding, or when not a single message of the call was stored nor
 * rejected (no stream for the subject, a full stream, no PubAck in time):
 * each retry would fail the same way until NATS or an operator acts. A lost
 * connection also marks the sink down at once through client/nats.c, so an
 * idle pipeline reports it too.
 *
 * open() connects and checks that `stream` exists (creating it with
 * create_stream), so a missing stream is one clear error, not a stream of
 * "no responders".
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config.h"
#include "../encode.h"
#include "../formats.h"
#include "../log.h"
#include "../client/nats.h"
#include "../worker.h"
#include "sink.h"

#define WAIT_SLICE_MS 100

/* Why a message was not confirmed. */
typedef enum {
    FAIL_NONE = 0,
    FAIL_TIMEOUT,
    FAIL_NO_RESPONDERS,
    FAIL_TOO_LARGE,
    FAIL_OTHER,
    FAIL_PENDING,       /* taken back without an answer */
    FAIL_NOT_CAPTURED,  /* the stream does not listen on the subject: not sent */
} fail_kind;

typedef struct nats_sink {
    relay_sink base;
    relay_nats_conn conn;
    /* config */
    char *stream;
    int64_t max_in_flight;
    int64_t ack_timeout_ms;
    int create_stream;
    char **subjects;          /* configured stream subjects, NULL: derived */
    int nsubjects;
    int64_t dup_window_s;
    jsStorageType storage;
    int64_t replicas;
    int64_t max_age_s;
    /* connection state */
    jsCtx *js;
    natsConnection *js_nc;    /* the connection js belongs to */
    int stream_ok;            /* stream verified on this connection */
    int stream_logged;        /* its settings were logged once */
    char **filters;           /* the stream's subjects, as read at open() */
    int nfilters;
    char *stream_subjects;    /* the same, comma-separated, for messages */
    char *last_subject;       /* cache of the last subject checked ... */
    int last_captured;        /* ... and whether the stream listens on it */
    natsSubscription *acks;   /* "<reply_prefix>>": the PubAcks, read on the worker thread */
    natsConnection *acks_nc;  /* the connection acks belongs to */
    char *reply_prefix;       /* "_INBOX.<nuid>." */
    uint64_t call;            /* publish() calls: the reply subject's first token */
    unsigned char *fail;      /* fail_kind per message of the call */
    relay_arena errs;         /* error texts of the last call */
    uint64_t published;
    uint64_t failed;
} nats_sink;

/* ---- configuration ----------------------------------------------------- */

static void ns_destroy(relay_sink *base);

/* A template must render to a valid publish subject: no empty token, no
 * wildcard, no whitespace in its literal text. Variables are escaped to
 * single tokens by subject_render, so only the literal text matters. */
static int check_subject_template(const char *t, char *err, size_t errlen)
{
    char why[300];
    if (subject_template_check(t, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.subject_template: %s", why);
        return -1;
    }
    size_t toklen = 0;
    int token_has_var = 0;
    for (const char *p = t;; p++) {
        if (*p == '\0' || *p == '.') {
            if (toklen == 0 && !token_has_var) {
                snprintf(err, errlen, "sink.subject_template: \"%s\" is not a valid NATS subject "
                         "(empty token)", t);
                return -1;
            }
            if (*p == '\0')
                return 0;
            toklen = 0;
            token_has_var = 0;
            continue;
        }
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            p++;
            toklen++;
            continue;
        }
        if (*p == '{') {
            p = strchr(p, '}');
            token_has_var = 1;
            continue;
        }
        if (*p == '*' || *p == '>' || *p == ' ' || *p == '\t' || *p == '\r' || *p == '\n') {
            snprintf(err, errlen, "sink.subject_template: \"%s\" is not a valid NATS subject "
                     "(wildcards and whitespace cannot be published to)", t);
            return -1;
        }
        toklen++;
    }
}

/* The stream subject covering a template: tokens with a variable become "*". */
static char *template_subject_filter(const char *t)
{
    relay_buf out = {0};
    relay_buf tok = {0};
    int has_var = 0;
    for (const char *p = t;; p++) {
        if (*p == '\0' || *p == '.') {
            if (has_var)
                buf_putc(&out, '*');
            else
                buf_append(&out, tok.data ? tok.data : "", tok.len);
            if (*p == '\0')
                break;
            buf_putc(&out, '.');
            buf_clear(&tok);
            has_var = 0;
            continue;
        }
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            buf_putc(&tok, *p);
            p++;
        } else if (*p == '{') {
            p = strchr(p, '}');
            has_var = 1;
        } else {
            buf_putc(&tok, *p);
        }
    }
    buf_free(&tok);
    return buf_steal(&out);
}

static int parse_subjects(nats_sink *s, const json_t *cfg, char *err, size_t errlen)
{
    const json_t *v = json_object_get(cfg, "subjects");
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v)) {
        s->subjects = xcalloc(1, sizeof *s->subjects);
        s->subjects[s->nsubjects++] = xstrdup(json_string_value(v));
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) == 0) {
        snprintf(err, errlen, "sink.subjects: expected a subject or a non-empty array of subjects");
        return -1;
    }
    s->subjects = xcalloc(json_array_size(v), sizeof *s->subjects);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_string(e) || !*json_string_value(e)) {
            snprintf(err, errlen, "sink.subjects[%zu]: expected a non-empty string", i);
            return -1;
        }
        s->subjects[s->nsubjects++] = xstrdup(json_string_value(e));
    }
    return 0;
}

static relay_sink *ns_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {
        "type", "stream", "subject_template", "format", "max_in_flight", "ack_timeout_ms",
        "create_stream", "subjects", "duplicate_window_seconds", "storage", "replicas",
        "max_age_seconds", RELAY_FORMAT_KEYS, RELAY_NATS_CONN_KEYS, NULL};
    const char *stream, *tmpl, *storage;
    relay_format format;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "sink", "stream", &stream, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "subject_template", NULL, &tmpl, err, errlen) < 0 ||
        relay_format_from_cfg(cfg, "sink", &format, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "storage", "file", &storage, err, errlen) < 0)
        return NULL;
    if (strcspn(stream, ". *>\t\r\n") != strlen(stream)) {
        snprintf(err, errlen, "sink.stream: \"%s\" is not a valid stream name (no '.', '*', '>' "
                 "or whitespace)", stream);
        return NULL;
    }
    if (tmpl && check_subject_template(tmpl, err, errlen) < 0)
        return NULL;
    relay_format_opts fopts;
    if (relay_format_opts_from_cfg(cfg, "sink", format, 1, &fopts, err, errlen) < 0)
        return NULL;
    for (size_t i = 0; i < fopts.noverrides; i++) {
        char why[512];
        if (check_subject_template(fopts.overrides[i].tmpl, why, sizeof why) < 0) {
            snprintf(err, errlen, "sink.subject_overrides.%s: %s", fopts.overrides[i].match,
                     why + strlen("sink.subject_template: "));
            relay_format_opts_free(&fopts);
            return NULL;
        }
    }
    if (strcmp(storage, "file") != 0 && strcmp(storage, "memory") != 0) {
        snprintf(err, errlen, "sink.storage: expected \"file\" or \"memory\", got \"%s\"", storage);
        relay_format_opts_free(&fopts);
        return NULL;
    }
    nats_sink *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->base.fopts = fopts;
    if (nats_conn_parse(&s->conn, cfg, "sink", w ? w->cfg.name : NULL, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "max_in_flight", 4096, 1, 65536, &s->max_in_flight, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "ack_timeout_ms", 5000, 100, 600000, &s->ack_timeout_ms, err, errlen) < 0 ||
        cfg_bool(cfg, "sink", "create_stream", 0, &s->create_stream, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "duplicate_window_seconds", 120, 1, 7 * 86400, &s->dup_window_s, err,
                errlen) < 0 ||
        cfg_int(cfg, "sink", "replicas", 1, 1, 5, &s->replicas, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "max_age_seconds", 0, 0, INT64_MAX / 1000000000, &s->max_age_s, err,
                errlen) < 0 ||
        parse_subjects(s, cfg, err, errlen) < 0) {
        ns_destroy(&s->base);
        return NULL;
    }
    s->stream = xstrdup(stream);
    s->base.encode = 1;
    s->base.format = format;
    s->storage = strcmp(storage, "memory") == 0 ? js_MemoryStorage : js_FileStorage;
    s->base.subject_template = tmpl ? xstrdup(tmpl) : NULL;
    return &s->base;
}

/* ---- subjects ---------------------------------------------------------------- */

/* NATS subject matching: '*' is one token, '>' one or more trailing tokens. */
static int subject_matches(const char *filter, const char *subj)
{
    for (;;) {
        const char *fe = strchr(filter, '.');
        const char *se = strchr(subj, '.');
        size_t fl = fe ? (size_t)(fe - filter) : strlen(filter);
        size_t sl = se ? (size_t)(se - subj) : strlen(subj);
        if (fl == 1 && filter[0] == '>')
            return 1;
        if (!(fl == 1 && filter[0] == '*') && (fl != sl || memcmp(filter, subj, fl) != 0))
            return 0;
        if (!fe || !se)
            return !fe && !se;
        filter = fe + 1;
        subj = se + 1;
    }
}

static int stream_captures(nats_sink *s, const char *subject)
{
    if (s->last_subject && strcmp(s->last_subject, subject) == 0)
        return s->last_captured;
    int hit = 0;
    for (int i = 0; i < s->nfilters && !hit; i++)
        hit = subject_matches(s->filters[i], subject);
    free(s->last_subject);
    s->last_subject = xstrdup(subject);
    s->last_captured = hit;
    return hit;
}

/* ---- open ------------------------------------------------------------------- */

static const char *effective_template(nats_sink *s)
{
    if (s->base.subject_template)
        return s->base.subject_template;
    relay_worker *w = s->base.w;
    if (w && w->source && w->source->default_subject)
        return w->source->default_subject;
    return RELAY_DEFAULT_OUTBOX_SUBJECT;
}

static void drop_js(nats_sink *s)
{
    if (s->js)
        jsCtx_Destroy(s->js);
    s->js = NULL;
    s->js_nc = NULL;
    s->stream_ok = 0;
}

static int make_js(nats_sink *s, char *err, size_t errlen)
{
    if (s->js && s->js_nc == s->conn.nc)
        return 0;
    drop_js(s);
    jsOptions o;
    jsOptions_Init(&o);
    o.Wait = s->ack_timeout_ms; /* stream lookups and creation only */
    natsStatus st = natsConnection_JetStream(&s->js, s->conn.nc, &o);
    if (st != NATS_OK) {
        char why[300];
        nats_status_text(st, 0, why, sizeof why);
        snprintf(err, errlen, "JetStream context: %s", why);
        s->js = NULL;
        return -1;
    }
    s->js_nc = s->conn.nc;
    return 0;
}

static void forget_subjects(nats_sink *s)
{
    for (int i = 0; i < s->nfilters; i++)
        free(s->filters[i]);
    free(s->filters);
    s->filters = NULL;
    s->nfilters = 0;
    free(s->last_subject);
    s->last_subject = NULL;
}

static void remember_subjects(nats_sink *s, const jsStreamConfig *c)
{
    relay_buf b = {0};
    forget_subjects(s);
    int n = c ? c->SubjectsLen : 0;
    s->filters = xcalloc((size_t)(n ? n : 1), sizeof *s->filters);
    for (int i = 0; i < n; i++) {
        if (i)
            buf_putc(&b, ',');
        buf_puts(&b, c->Subjects[i]);
        s->filters[s->nfilters++] = xstrdup(c->Subjects[i]);
    }
    free(s->stream_subjects);
    s->stream_subjects = b.data ? buf_steal(&b) : xstrdup("(none)");
}

static int create_stream(nats_sink *s, char *err, size_t errlen)
{
    char *derived = NULL;
    const char *one[1];
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = s->stream;
    if (s->nsubjects) {
        sc.Subjects = (const char **)s->subjects;
        sc.SubjectsLen = s->nsubjects;
    } else {
        derived = template_subject_filter(effective_template(s));
        one[0] = derived;
        sc.Subjects = one;
        sc.SubjectsLen = 1;
    }
    sc.Storage = s->storage;
    sc.Replicas = s->replicas;
    sc.Duplicates = s->dup_window_s * 1000000000LL;
    sc.MaxAge = s->max_age_s * 1000000000LL;
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_AddStream(&si, s->js, &sc, NULL, &jerr);
    if (st != NATS_OK && jerr == JSStreamNameExistErr) {
        /* created meanwhile (e.g. by another pipeline), with other settings: use it */
        jsStreamInfo *cur = NULL;
        st = js_GetStreamInfo(&cur, s->js, s->stream, NULL, &jerr);
        if (st == NATS_OK) {
            remember_subjects(s, cur->Config);
            jsStreamInfo_Destroy(cur);
            free(derived);
            return 0;
        }
    }
    if (st != NATS_OK) {
        char why[300];
        nats_status_text(st, jerr, why, sizeof why);
        snprintf(err, errlen, "sink.create_stream: cannot create stream \"%s\" (subjects %s): %s",
                 s->stream, sc.Subjects[0], why);
        free(derived);
        return -1;
    }
    remember_subjects(s, si->Config);
    s->stream_logged = 1;
    log_info(s->conn.pipeline, "created JetStream stream \"%s\" (subjects %s, %s storage, "
             "duplicate window %llds)", s->stream, s->stream_subjects,
             s->storage == js_MemoryStorage ? "memory" : "file", (long long)s->dup_window_s);
    jsStreamInfo_Destroy(si);
    free(derived);
    return 0;
}

static int check_stream(nats_sink *s, char *err, size_t errlen)
{
    jsStreamInfo *si = NULL;
    jsErrCode jerr = 0;
    natsStatus st = js_GetStreamInfo(&si, s->js, s->stream, NULL, &jerr);
    if (st == NATS_OK) {
        remember_subjects(s, si->Config);
        if (!s->stream_logged)
            log_info(s->conn.pipeline, "publishing to JetStream stream \"%s\" (subjects %s, "
                     "duplicate window %llds)", s->stream, s->stream_subjects,
                     (long long)(si->Config->Duplicates / 1000000000LL));
        s->stream_logged = 1;
        jsStreamInfo_Destroy(si);
        return 0;
    }
    if (st == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
        if (s->create_stream)
            return create_stream(s, err, errlen);
        snprintf(err, errlen, "sink.stream: JetStream stream \"%s\" does not exist (create it, or "
                 "set sink.create_stream to true)", s->stream);
        return -1;
    }
    char why[300];
    nats_status_text(st, jerr, why, sizeof why);
    if (st == NATS_NO_RESPONDERS || jerr == JSNotEnabledErr || jerr == JSNotEnabledForAccountErr)
        snprintf(err, errlen, "JetStream is not enabled on the NATS server at %s (%s)",
                 s->conn.url_display, why);
    else
        snprintf(err, errlen, "sink.stream: cannot look up stream \"%s\": %s", s->stream, why);
    return -1;
}

static int ns_open(relay_sink *base, char *err, size_t errlen)
{
    nats_sink *s = (nats_sink *)base;
    relay_worker *w = base->w;
    if (w && w->stats)
        s->conn.health_flag = &w->stats->sink_up;
    if (nats_conn_open(&s->conn, err, errlen) < 0)
        return -1;
    if (make_js(s, err, errlen) < 0)
        return -1;
    if (!s->stream_ok) {
        if (check_stream(s, err, errlen) < 0)
            return -1;
        s->stream_ok = 1;
    }
    return 0;
}

/* ---- publish ------------------------------------------------------------ */

static int stop_deadline_passed(nats_sink *s)
{
    relay_worker *w = s->base.w;
    return w && atomic_load(&w->stop) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms);
}

static void drop_acks(nats_sink *s)
{
    if (s->acks)
        natsSubscription_Destroy(s->acks);
    s->acks = NULL;
    s->acks_nc = NULL;
    free(s->reply_prefix);
    s->reply_prefix = NULL;
}

/* The PubAck subscription of this connection: "<inbox>.>" read on the
 * worker thread. Its pending limits are lifted: what it can hold is bounded
 * by max_in_flight (and late replies of an earlier call, dropped on read). */
static int make_acks(nats_sink *s, char *err, size_t errlen)
{
    if (s->acks && s->acks_nc == s->conn.nc)
        return 0;
    drop_acks(s);
    natsInbox *inbox = NULL;
    natsStatus st = natsInbox_Create(&inbox);
    if (st == NATS_OK) {
        relay_buf b = {0};
        buf_printf(&b, "%s.", (const char *)inbox);
        s->reply_prefix = buf_steal(&b);
        char *wild = xmalloc(strlen(s->reply_prefix) + 2);
        sprintf(wild, "%s>", s->reply_prefix);
        st = natsConnection_SubscribeSync(&s->acks, s->conn.nc, wild);
        free(wild);
    }
    natsInbox_Destroy(inbox);
    if (st == NATS_OK)
        st = natsSubscription_SetPendingLimits(s->acks, -1, -1);
    if (st != NATS_OK) {
        char why[300];
        nats_status_text(st, 0, why, sizeof why);
        snprintf(err, errlen, "subscribing to PubAcks on %s: %s", s->conn.url_display, why);
        drop_acks(s);
        return -1;
    }
    s->acks_nc = s->conn.nc;
    return 0;
}

/* CloudEvents NATS protocol binding: structured mode is marked by
 * Content-Type application/cloudevents+json (section 3); binary mode maps
 * every attribute to a "ce-" header, percent-encoded as in the HTTP binding
 * (3.1.3), and datacontenttype to Content-Type. */
static natsStatus set_ce_headers(nats_sink *s, natsMsg *nm, const relay_msg *m)
{
    if (!s->base.fopts.ce_binary)
        return natsMsgHeader_Set(nm, "Content-Type", "application/cloudevents+json; charset=utf-8");
    relay_arena local = {0}, *a = m->arena ? m->arena : &local; /* the batch's arena */
    relay_format_ctx ctx = fmt_ctx_for_sink(s->base.w ? s->base.w->cfg.name : NULL, &s->base.fopts);
    fmt_ce_attrs at;
    fmt_ce_attrs_of(&ctx, m, a, &at);
    const char *names[8], *values[8];
    size_t k = fmt_ce_header_attrs(&at, names, values);
    natsStatus st = NATS_OK;
    relay_buf v = {0};
    char name[40];
    for (size_t i = 0; i < k && st == NATS_OK; i++) {
        snprintf(name, sizeof name, "ce-%s", names[i]);
        buf_clear(&v);
        fmt_ce_header_encode(values[i], &v);
        st = natsMsgHeader_Set(nm, name, v.data ? v.data : "");
    }
    if (st == NATS_OK && at.datacontenttype)
        st = natsMsgHeader_Set(nm, "Content-Type", at.datacontenttype);
    buf_free(&v);
    arena_free(&local);
    return st;
}

/* Publish msgs[i] with the reply subject <prefix><call>.<i>. Returns 1 sent,
 * 0 not sent but marked (the batch goes on), or -1 when the rest of the
 * batch cannot be sent either (err set). */
static int send_one(nats_sink *s, relay_msg **msgs, size_t i, char *err, size_t errlen)
{
    relay_msg *m = msgs[i];
    if (!stream_captures(s, m->subject)) {
        m->state = MSG_RETRY;
        s->fail[i] = FAIL_NOT_CAPTURED;
        return 0;
    }
    char reply[160];
    snprintf(reply, sizeof reply, "%s%" PRIu64 ".%zu", s->reply_prefix, s->call, i);
    natsMsg *nm = NULL;
    natsStatus st = natsMsg_Create(&nm, m->subject, reply, m->body, (int)m->body_len);
    if (st == NATS_OK)
        st = natsMsgHeader_Set(nm, "Nats-Msg-Id", m->dedup_key);
    if (st == NATS_OK && (m->is_full_refresh || m->op == OP_SNAPSHOT))
        st = natsMsgHeader_Set(nm, "Pgtrickle-Full-Refresh", "true");
    if (st == NATS_OK && s->base.format == RELAY_FORMAT_CLOUDEVENTS)
        st = set_ce_headers(s, nm, m);
    if (st != NATS_OK) {
        natsMsg_Destroy(nm);
        m->state = MSG_REJECTED;
        m->error = arena_printf(&s->errs, "cannot build a NATS message on subject \"%s\": %s",
                                m->subject, natsStatus_GetText(st));
        return 0;
    }
    st = natsConnection_PublishMsg(s->conn.nc, nm);
    natsMsg_Destroy(nm);
    if (st == NATS_OK) {
        m->state = MSG_PENDING;
        return 1;
    }
    char why[300];
    nats_status_text(st, 0, why, sizeof why);
    if (st == NATS_MAX_PAYLOAD || st == NATS_INVALID_SUBJECT) {
        m->state = MSG_REJECTED;
        m->error = arena_printf(&s->errs, "%s (subject \"%s\", %zu bytes)", why, m->subject,
                                m->body_len);
        return 0;
    }
    m->state = MSG_RETRY;
    m->error = arena_printf(&s->errs, "publish failed: %s", why);
    snprintf(err, errlen, "publish to %s failed: %s", s->conn.url_display, why);
    return -1;
}

/* The message a reply is for: its index when the reply subject is
 * <prefix><call>.<i> of this call and message i awaits its PubAck, else -1
 * (a late reply to an earlier call, which was retried already). */
static long reply_index(nats_sink *s, const char *subject, relay_msg **msgs, size_t n)
{
    size_t pl = strlen(s->reply_prefix);
    if (!subject || strncmp(subject, s->reply_prefix, pl) != 0)
        return -1;
    char *end;
    errno = 0;
    unsigned long long call = strtoull(subject + pl, &end, 10);
    if (errno || *end != '.' || call != s->call)
        return -1;
    unsigned long long i = strtoull(end + 1, &end, 10);
    if (errno || *end || i >= n || msgs[i]->state != MSG_PENDING)
        return -1;
    return (long)i;
}

/* Apply one PubAck to the message it answers. */
static void apply_reply(nats_sink *s, natsMsg *r, relay_msg *m, unsigned char *fail)
{
    relay_puback pa;
    const char *data = natsMsg_GetData(r);
    int len = natsMsg_GetDataLength(r);
    if (nats_puback_parse(data ? data : "", data ? (size_t)len : 0, &pa) < 0) {
        m->state = MSG_RETRY;
        m->error = "the server's reply is not a PubAck";
        *fail = FAIL_OTHER;
    } else if (!pa.stored) {
        m->state = pa.err_code == JSStreamMessageExceedsMaximumErr ? MSG_REJECTED : MSG_RETRY;
        *fail = pa.err_code == JSStreamMessageExceedsMaximumErr ? FAIL_TOO_LARGE : FAIL_OTHER;
        if (*fail == FAIL_OTHER)
            m->error = arena_printf(&s->errs, "PubAck error: %s (code %d, err_code %d)",
                                    pa.description, pa.code, pa.err_code);
    } else if (strcmp(pa.stream, s->stream) != 0) {
        /* stored, but in a stream whose subjects overlap ours: not where the
         * pipeline promises it (a misconfiguration an operator must fix) */
        m->state = MSG_RETRY;
        *fail = FAIL_OTHER;
        m->error = arena_printf(&s->errs, "stored in stream \"%s\", not in sink.stream \"%s\" "
                                "(their subjects overlap)", pa.stream, s->stream);
    } else {
        m->state = MSG_CONFIRMED;
    }
}

/* Drop the replies queued from earlier calls (their messages were retried). */
static void drop_stale_replies(nats_sink *s)
{
    uint64_t queued = 0;
    if (natsSubscription_QueuedMsgs(s->acks, &queued) != NATS_OK)
        return;
    while (queued-- > 0) {
        natsMsg *r = NULL;
        if (natsSubscription_NextMsg(&r, s->acks, 1) == NATS_OK)
            natsMsg_Destroy(r);
    }
}

/* Take one reply (waiting up to timeout_ms). Returns 1 when it answered a
 * message of this call, 0 when it did not (a late reply, or none), or the
 * natsStatus of the failed wait as a negative number. */
static int take_reply(nats_sink *s, relay_msg **msgs, size_t n, int64_t timeout_ms,
                      natsStatus *st)
{
    natsMsg *r = NULL;
    *st = natsSubscription_NextMsg(&r, s->acks, timeout_ms);
    if (*st != NATS_OK)
        return 0;
    long i = reply_index(s, natsMsg_GetSubject(r), msgs, n);
    if (i >= 0)
        apply_reply(s, r, msgs[i], &s->fail[i]);
    natsMsg_Destroy(r);
    return i >= 0;
}

/* Read the PubAcks of this call: first every reply already queued, without
 * waiting; when none of them answered a message, wait up to one slice for
 * the next. Waking up once per burst of replies, not once per reply, keeps
 * the thread hand-offs with nats.c's reader few. Returns the number of
 * messages answered (0: nothing yet), -2 when the call ends with its
 * remaining messages unanswered (no PubAck for ack_timeout_ms, or a "no
 * responders" status: nats.c reports that one without the message, so whose
 * it was is unknown), -1 when the sink is down (connection lost, shutdown
 * deadline; err). */
static int read_replies(nats_sink *s, relay_msg **msgs, size_t n, int64_t *last_answer,
                        int *no_responders, char *err, size_t errlen)
{
    natsStatus st = NATS_OK;
    uint64_t queued = 0;
    int answered = 0;
    if (natsSubscription_QueuedMsgs(s->acks, &queued) == NATS_OK)
        while (queued-- > 0 && st == NATS_OK)
            answered += take_reply(s, msgs, n, 1, &st);
    if (answered == 0 && st == NATS_OK)
        answered = take_reply(s, msgs, n, WAIT_SLICE_MS, &st);
    if (answered > 0) {
        *last_answer = now_mono_ms();
        return answered;
    }
    if (st == NATS_OK)
        return 0; /* a late reply of an earlier call */
    if (st == NATS_NO_RESPONDERS) {
        snprintf(err, errlen, "no JetStream stream answered on %s (sink.stream \"%s\", subjects "
                 "%s)", s->conn.url_display, s->stream,
                 s->stream_subjects ? s->stream_subjects : "?");
        *no_responders = 1;
        return -2;
    }
    if (st != NATS_TIMEOUT && st != NATS_SLOW_CONSUMER) {
        char why[300];
        nats_status_text(st, 0, why, sizeof why);
        snprintf(err, errlen, "waiting for PubAcks from %s: %s", s->conn.url_display, why);
        return -1;
    }
    if (!nats_conn_up(&s->conn)) {
        snprintf(err, errlen, "NATS connection to %s lost while waiting for PubAcks",
                 s->conn.url_display);
        return -1;
    }
    if (now_mono_ms() - *last_answer >= s->ack_timeout_ms) {
        snprintf(err, errlen, "no PubAck within %lld ms", (long long)s->ack_timeout_ms);
        return -2;
    }
    if (stop_deadline_passed(s)) {
        snprintf(err, errlen, "shutdown deadline passed while waiting for PubAcks");
        return -1;
    }
    return 0;
}

static const char *fail_text(nats_sink *s, const relay_msg *m, fail_kind k)
{
    switch (k) {
    case FAIL_TIMEOUT:
        return arena_printf(&s->errs, "no PubAck within %lld ms", (long long)s->ack_timeout_ms);
    case FAIL_NO_RESPONDERS:
        return arena_printf(&s->errs, "no JetStream stream listens on subject \"%s\" (sink.stream "
                            "\"%s\" has subjects %s)", m->subject, s->stream,
                            s->stream_subjects ? s->stream_subjects : "?");
    case FAIL_NOT_CAPTURED:
        return arena_printf(&s->errs, "no JetStream stream listens on subject \"%s\": sink.stream "
                            "\"%s\" has subjects %s", m->subject, s->stream,
                            s->stream_subjects ? s->stream_subjects : "?");
    case FAIL_TOO_LARGE:
        return arena_printf(&s->errs, "message on subject \"%s\" exceeds the maximum message size "
                            "of stream \"%s\"", m->subject, s->stream);
    case FAIL_PENDING:
        return "no PubAck (connection lost or timed out)";
    case FAIL_OTHER:
    case FAIL_NONE:
        break;
    }
    return m->error ? m->error : "not confirmed";
}

static int ns_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    nats_sink *s = (nats_sink *)base;
    for (size_t i = 0; i < n; i++) {
        msgs[i]->state = MSG_RETRY;
        msgs[i]->error = NULL;
    }
    if (n == 0)
        return 0;
    arena_reset(&s->errs);
    if (!nats_conn_up(&s->conn) || !s->stream_ok || s->js_nc != s->conn.nc) {
        if (ns_open(base, err, errlen) < 0)
            return -1;
    }
    if (make_acks(s, err, errlen) < 0)
        return -1;
    s->fail = xrealloc(s->fail, n);
    memset(s->fail, FAIL_NONE, n);
    s->call++;

    /* Publish while fewer than max_in_flight PubAcks are outstanding; read
     * PubAcks in between. A call ends when every message sent was answered,
     * or when no PubAck came for ack_timeout_ms, the connection dropped or
     * the shutdown deadline passed: the messages still waiting stay
     * MSG_RETRY (a late PubAck of theirs is ignored: its call is over). */
    drop_stale_replies(s);
    int down = 0, timed_out = 0, no_responders = 0;
    size_t next = 0, outstanding = 0;
    int64_t last_answer = now_mono_ms();
    while (!down && !timed_out && (next < n || outstanding > 0)) {
        while (!down && next < n && outstanding < (size_t)s->max_in_flight) {
            int rc = send_one(s, msgs, next++, err, errlen);
            down = rc < 0;
            outstanding += rc > 0;
            if (rc > 0 && outstanding == 1)
                last_answer = now_mono_ms(); /* the PubAck clock starts at the first send */
        }
        if (down || outstanding == 0)
            continue;
        int rc = read_replies(s, msgs, n, &last_answer, &no_responders, err, errlen);
        down = rc == -1;
        timed_out = rc == -2;
        if (rc > 0)
            outstanding -= (size_t)rc;
    }
    for (size_t i = 0; i < n; i++) {
        if (msgs[i]->state == MSG_PENDING) {
            msgs[i]->state = MSG_RETRY;
            s->fail[i] = no_responders ? FAIL_NO_RESPONDERS
                         : timed_out   ? FAIL_TIMEOUT
                                       : FAIL_PENDING;
        }
    }

    size_t confirmed = 0, rejected = 0;
    const char *first = NULL;
    for (size_t i = 0; i < n; i++) {
        relay_msg *m = msgs[i];
        if (m->state == MSG_CONFIRMED) {
            confirmed++;
            continue;
        }
        if (s->fail[i] != FAIL_NONE)
            m->error = fail_text(s, m, (fail_kind)s->fail[i]);
        if (m->state == MSG_REJECTED)
            rejected++;
        if (!first && m->error)
            first = m->error;
    }
    s->published += confirmed;
    s->failed += n - confirmed;
    if (down)
        return -1; /* err says why; the worker retries the whole call */
    if (confirmed == 0 && rejected == 0) {
        /* Every message failed for now (no stream for the subject, a full
         * stream, no PubAck in time): the sink is not working. */
        snprintf(err, errlen, "%s", first ? first : "no message confirmed");
        s->stream_ok = 0; /* look the stream up again: it may have changed */
        return -1;
    }
    return 0;
}


/* ---- status and teardown ------------------------------------------------- */

static void ns_describe(relay_sink *base, relay_buf *out)
{
    nats_sink *s = (nats_sink *)base;
    buf_putc(out, '{');
    nats_conn_describe(&s->conn, out);
    buf_puts(out, ",\"stream\":");
    buf_put_json_str(out, s->stream, strlen(s->stream));
    buf_printf(out, ",\"format\":\"%s\",\"max_in_flight\":%lld,\"published\":%" PRIu64
               ",\"failed\":%" PRIu64 "}",
               relay_format_name(s->base.format),
               (long long)s->max_in_flight, s->published, s->failed);
}

static void ns_destroy(relay_sink *base)
{
    if (!base)
        return;
    nats_sink *s = (nats_sink *)base;
    drop_acks(s);
    drop_js(s);
    nats_conn_free(&s->conn);
    for (int i = 0; i < s->nsubjects; i++)
        free(s->subjects[i]);
    free(s->subjects);
    free(s->stream);
    free(s->stream_subjects);
    forget_subjects(s);
    free(s->fail);
    arena_free(&s->errs);
    free(s->base.subject_template);
    relay_format_opts_free(&s->base.fopts);
    free(s);
}

const relay_sink_ops relay_sink_nats_ops = {
    .type = "nats",
    .create = ns_create,
    .open = ns_open,
    .publish = ns_publish,
    .describe = ns_describe,
    .destroy = ns_destroy,
};
