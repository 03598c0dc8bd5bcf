/*
 * kafka.c - the Apache Kafka sink (SPEC section 7, row kafka), librdkafka.
 *
 * Config (pipeline "sink" object), besides the connection keys of
 * client/kafka.h (brokers, client_id, SASL/SSL, rdkafka passthrough):
 *   topic_template      topic per event ({stream_table} {op} {outbox_id}
 *                       {refresh_id} {schema} {table}); the source's default
 *                       (outbox: pgtrickle.{stream_table}.{op})
 *   key_template        record key; default the row key for CDC events (the
 *                       replica-identity columns as JSON, {key}: one row's
 *                       changes stay on one partition, in order, and log
 *                       compaction keeps its last state), else the event's
 *                       dedup key. Variables: those of topic_template
 *                       ({key} included), {dedup_key}, and
 *                       {payload.FIELD} (a top-level field of the event's
 *                       row: a string verbatim, a number or boolean as JSON,
 *                       null or missing as nothing), e.g.
 *                       "{payload.customer_id}" keeps each customer's events
 *                       on one partition, in order. Values are not escaped
 *                       (a key is opaque bytes); an empty key is sent as no
 *                       key.
 *   acks                "all" (the only value: the producer is idempotent)
 *   compression         none | gzip | snappy | lz4 | zstd (none)
 *   linger_ms           5
 *   message_timeout_ms  30000: how long librdkafka may retry one message
 *   format              native | msgpack | debezium | cloudevents (native),
 *                       see encode.h; cloudevents_mode etc. there too
 *   tombstones          format debezium: a record (key, null value) after
 *                       every delete, as Debezium writes for log compaction
 *                       (true)
 *
 * Formats.  CloudEvents follow the Kafka protocol binding: structured mode
 * sets the header content-type application/cloudevents+json (3.3.1);
 * binary mode carries every attribute as a ce_<name> header with its
 * string value and the data's content-type (3.2.1, 3.2.3). The record key
 * is the partitionkey extension (3.1): the row key. A Debezium delete is
 * followed by its tombstone (Debezium PostgreSQL connector, "Tombstone
 * events"): both records carry the relay_msg as opaque, and the message is
 * confirmed only when both are (a failure report always wins).
 *
 * Producer.  One idempotent producer (enable.idempotence=true, acks=all)
 * per pipeline, created on open(). Every record carries the headers
 * pgtrickle-dedup-key (the dedup key) and pgtrickle-full-refresh
 * ("true"/"false"). publish() produces the whole batch asynchronously (each
 * record's opaque is its relay_msg), then serves delivery reports with
 * rd_kafka_flush() until every record has one: success -> MSG_CONFIRMED
 * (persisted on all in-sync replicas); a record-level permanent error
 * (record too large, invalid topic, policy violation) -> MSG_REJECTED, which
 * the worker dead-letters; anything else -> MSG_RETRY, which the worker
 * republishes with the same dedup key after its backoff. librdkafka retries
 * inside message_timeout_ms on its own, and the idempotent producer makes
 * those retries duplicate-free.
 *
 * Invariant: publish() never returns while a record it produced still waits
 * for its delivery report (the report writes into the batch). When it has
 * to give up early it purges the producer's queues, serves the purge
 * reports, and destroys the producer if any report is still missing.
 *
 * Failures.
 *  - Cluster unreachable: open() asks for metadata (3 s) and fails while no
 *    broker answers, so the worker reports the sink down (/health degraded)
 *    and retries with backoff. Mid-batch, when librdkafka reports all
 *    brokers down and no report arrived for 3 s (and a metadata probe
 *    fails), publish() purges the batch, destroys the producer and returns
 *    -1; records purged while in flight may already be stored, so the
 *    retry can duplicate them: consumers deduplicate on
 *    pgtrickle-dedup-key (the Kafka source does).
 *  - Fatal error (the idempotent producer lost its guarantees, e.g. a
 *    sequence desynchronisation): every outstanding record fails, the
 *    producer is destroyed and the next publish() creates a new one (new
 *    producer id); the failed records are republished by the worker.
 *  - Shutdown deadline while waiting: purge, report -1; nothing is acked.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "buf.h"
#include "config.h"
#include "encode.h"
#include "formats.h"
#include "client/kafka.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "stats.h"
#include "worker.h"

#define STALL_MS 3000           /* brokers down and no delivery report for this long */
#define DRAIN_TIMEOUT_MS 5000   /* after a purge, wait this long for the reports */
#define MAX_TOPIC_LEN 249

typedef struct kafka_sink {
    relay_sink base;
    rd_kafka_conf_t *conf;      /* validated template; each producer gets a copy */
    char *brokers;
    struct key_part *key_parts; /* parsed key_template; NULL: the dedup key */
    size_t nkey_parts;
    int key_uses_payload;
    rd_kafka_t *rk;             /* NULL while closed */
    size_t outstanding;         /* produced records still waiting for a report */
    /* set by the callbacks, which run on the worker thread (poll/flush) */
    kafka_client_state cs;      /* fatal / brokers down / last error, from on_error */
    /* for describe() */
    uint64_t delivered, failed, producers_created;
    relay_buf key;
} kafka_sink;

static const char *pipeline_name(const kafka_sink *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- record keys ---------------------------------------------------------- */

typedef enum { KEY_TEXT, KEY_VAR, KEY_PAYLOAD } key_part_kind;
typedef enum { KV_STREAM_TABLE, KV_OP, KV_OUTBOX_ID, KV_REFRESH_ID, KV_SCHEMA, KV_TABLE,
               KV_DEDUP_KEY, KV_KEY, KV_COUNT } key_var;
static const char *const key_var_names[KV_COUNT] = {"stream_table", "op", "outbox_id",
                                                    "refresh_id", "schema", "table", "dedup_key",
                                                    "key"};

typedef struct key_part {
    key_part_kind kind;
    key_var var;
    char *text; /* KEY_TEXT: the literal; KEY_PAYLOAD: the field name */
} key_part;

static void free_key_parts(kafka_sink *s)
{
    for (size_t i = 0; i < s->nkey_parts; i++)
        free(s->key_parts[i].text);
    free(s->key_parts);
    s->key_parts = NULL;
    s->nkey_parts = 0;
}

static key_part *add_key_part(kafka_sink *s, key_part_kind kind)
{
    s->key_parts = xrealloc(s->key_parts, (s->nkey_parts + 1) * sizeof *s->key_parts);
    key_part *k = &s->key_parts[s->nkey_parts++];
    memset(k, 0, sizeof *k);
    k->kind = kind;
    return k;
}

/* Parse key_template into literal and variable parts ("{{" and "}}" are
 * literal braces, as in subject templates). */
static int parse_key_template(kafka_sink *s, const char *t, char *err, size_t errlen)
{
    relay_buf lit = {0};
    const char *p = t;
    int rc = -1;
    if (!*t) {
        snprintf(err, errlen, "sink.key_template: template is empty (leave it out for the dedup key)");
        return -1;
    }
    while (*p) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            buf_putc(&lit, p[0]);
            p += 2;
            continue;
        }
        if (*p == '}') {
            snprintf(err, errlen, "sink.key_template: unbalanced '}' in \"%s\"", t);
            goto out;
        }
        if (*p != '{') {
            buf_putc(&lit, *p++);
            continue;
        }
        const char *end = strchr(p, '}');
        if (!end) {
            snprintf(err, errlen, "sink.key_template: unterminated '{' in \"%s\"", t);
            goto out;
        }
        if (lit.len) {
            add_key_part(s, KEY_TEXT)->text = xstrndup(lit.data, lit.len);
            buf_clear(&lit);
        }
        size_t n = (size_t)(end - p - 1);
        const char *name = p + 1;
        if (n > 8 && strncmp(name, "payload.", 8) == 0) {
            add_key_part(s, KEY_PAYLOAD)->text = xstrndup(name + 8, n - 8);
            s->key_uses_payload = 1;
        } else {
            key_var v = KV_COUNT;
            for (int i = 0; i < KV_COUNT; i++)
                if (strlen(key_var_names[i]) == n && strncmp(name, key_var_names[i], n) == 0)
                    v = (key_var)i;
            if (v == KV_COUNT) {
                snprintf(err, errlen, "sink.key_template: unknown variable {%.*s} in \"%s\" (known: "
                         "{stream_table} {op} {outbox_id} {refresh_id} {schema} {table} {key} "
                         "{dedup_key} {payload.FIELD})", (int)n, name, t);
                goto out;
            }
            add_key_part(s, KEY_VAR)->var = v;
        }
        p = end + 1;
    }
    if (lit.len)
        add_key_part(s, KEY_TEXT)->text = xstrndup(lit.data, lit.len);
    rc = 0;
out:
    buf_free(&lit);
    if (rc < 0)
        free_key_parts(s);
    return rc;
}

static void put_str(relay_buf *out, const char *v)
{
    if (v)
        buf_puts(out, v);
}

/* A top-level payload field as key text. */
static void put_payload_field(relay_buf *out, const json_t *row, const char *field)
{
    json_t *v = json_is_object(row) ? json_object_get(row, field) : NULL;
    if (!v || json_is_null(v))
        return;
    if (json_is_string(v)) {
        buf_append(out, json_string_value(v), json_string_length(v));
        return;
    }
    char *txt = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (txt) {
        buf_puts(out, txt);
        free(txt);
    }
}

static void render_key(kafka_sink *s, const relay_msg *m, relay_buf *out)
{
    json_t *row = NULL;
    if (s->key_uses_payload && m->payload && m->payload_is_json)
        row = json_loadb(m->payload, m->payload_len, JSON_DECODE_ANY, NULL);
    for (size_t i = 0; i < s->nkey_parts; i++) {
        const key_part *k = &s->key_parts[i];
        if (k->kind == KEY_TEXT) {
            buf_puts(out, k->text);
        } else if (k->kind == KEY_PAYLOAD) {
            put_payload_field(out, row, k->text);
        } else {
            switch (k->var) {
            case KV_STREAM_TABLE: put_str(out, m->stream_table); break;
            case KV_OP: buf_puts(out, relay_op_name(m->op)); break;
            case KV_OUTBOX_ID: if (m->outbox_id >= 0) buf_put_i64(out, m->outbox_id); break;
            case KV_REFRESH_ID: put_str(out, m->refresh_id); break;
            case KV_SCHEMA: put_str(out, m->schema); break;
            case KV_TABLE: put_str(out, m->table); break;
            case KV_DEDUP_KEY: put_str(out, m->dedup_key); break;
            case KV_KEY: put_str(out, m->key); break;
            case KV_COUNT: break;
            }
        }
    }
    json_decref(row);
}

/* ---- configuration ----------------------------------------------------- */

static const kafka_reserved producer_reserved[] = {
    {"enable.idempotence", NULL},
    {"transactional.id", NULL},
    {"acks", "acks"},
    {"request.required.acks", "acks"},
    {"linger.ms", "linger_ms"},
    {"queue.buffering.max.ms", "linger_ms"},
    {"compression.codec", "compression"},
    {"compression.type", "compression"},
    {"message.timeout.ms", "message_timeout_ms"},
    {"delivery.timeout.ms", "message_timeout_ms"},
    {NULL, NULL},
};

static int parse_acks(const json_t *cfg, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, "acks");
    if (!v || json_is_null(v) || (json_is_integer(v) && json_integer_value(v) == -1) ||
        (json_is_string(v) && (strcmp(json_string_value(v), "all") == 0 ||
                               strcmp(json_string_value(v), "-1") == 0)))
        return 0;
    snprintf(err, errlen, "sink.acks: must be \"all\": the relay's idempotent producer needs "
             "every in-sync replica to acknowledge a record before it counts as delivered");
    return -1;
}

static int parse_template(const json_t *cfg, const char *key, char **out, char *err,
                          size_t errlen)
{
    const char *tmpl;
    char why[384];
    *out = NULL;
    if (cfg_str(cfg, "sink", key, NULL, &tmpl, err, errlen) < 0)
        return -1;
    if (!tmpl)
        return 0;
    if (subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.%s: %s", key, why);
        return -1;
    }
    *out = xstrdup(tmpl);
    return 0;
}

static void ks_destroy(relay_sink *base);

static relay_sink *ks_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "topic_template", "key_template", "acks",
                                       "compression", "linger_ms", "message_timeout_ms",
                                       "format", RELAY_FORMAT_KEYS, KAFKA_CONF_KEYS, NULL};
    const char *compression;
    int64_t linger, timeout;
    relay_format format;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 || parse_acks(cfg, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "compression", "none", &compression, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "linger_ms", 5, 0, 900000, &linger, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "message_timeout_ms", 30000, 1000, INT32_MAX, &timeout, err,
                errlen) < 0 ||
        relay_format_from_cfg(cfg, "sink", &format, err, errlen) < 0)
        return NULL;

    kafka_sink *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->base.encode = 1;
    s->base.format = format;
    const char *key_tmpl;
    if (relay_format_opts_from_cfg(cfg, "sink", format, 1, &s->base.fopts, err, errlen) < 0 ||
        parse_template(cfg, "topic_template", &s->base.subject_template, err, errlen) < 0 ||
        cfg_str(cfg, "sink", "key_template", NULL, &key_tmpl, err, errlen) < 0 ||
        (key_tmpl && parse_key_template(s, key_tmpl, err, errlen) < 0))
        goto fail;

    char linger_s[32], timeout_s[32];
    snprintf(linger_s, sizeof linger_s, "%" PRId64, linger);
    snprintf(timeout_s, sizeof timeout_s, "%" PRId64, timeout);
    const kafka_property fixed[] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", linger_s},
        {"message.timeout.ms", timeout_s},
        {NULL, NULL},
    };
    s->conf = kafka_conf_build(cfg, "sink", RD_KAFKA_PRODUCER, NULL, fixed, producer_reserved,
                               &s->brokers, err, errlen);
    if (!s->conf ||
        kafka_conf_set(s->conf, "sink.compression", "compression.codec", compression, err,
                       errlen) < 0)
        goto fail;
    return &s->base;
fail:
    ks_destroy(&s->base);
    return NULL;
}

/* ---- callbacks (served on the worker thread by poll/flush) ------------- */

/* Record-level errors that retrying cannot fix: the worker dead-letters. */
static int permanent_error(rd_kafka_resp_err_t e)
{
    switch (e) {
    case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
    case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
    case RD_KAFKA_RESP_ERR_INVALID_RECORD:
    case RD_KAFKA_RESP_ERR_POLICY_VIOLATION:
    case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
        return 1;
    default:
        return 0;
    }
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
    (void)rk;
    kafka_sink *s = opaque;
    relay_msg *m = rkm->_private;
    s->outstanding--;
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        /* A delete and its tombstone share m: a failure of either sticks. */
        if (m->state == MSG_PENDING)
            m->state = MSG_CONFIRMED;
        s->delivered++;
        s->cs.brokers_down = 0;
        return;
    }
    s->failed++;
    m->state = permanent_error(rkm->err) ? MSG_REJECTED : MSG_RETRY;
    m->error = rd_kafka_err2str(rkm->err); /* static storage */
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_sink *s = opaque;
    kafka_client_on_error(&s->cs, rk, err, reason, pipeline_name(s), "producer");
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_sink *s = rd_kafka_opaque(rk);
    kafka_log_line(s ? pipeline_name(s) : NULL, level, fac, buf);
}

/* ---- producer lifecycle ------------------------------------------------- */

static void close_producer(kafka_sink *s)
{
    if (!s->rk)
        return;
    rd_kafka_destroy(s->rk);
    s->rk = NULL;
    s->outstanding = 0;
}

static int ks_open(relay_sink *base, char *err, size_t errlen)
{
    kafka_sink *s = (kafka_sink *)base;
    if (!s->rk) {
        rd_kafka_conf_t *conf = rd_kafka_conf_dup(s->conf);
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
        rd_kafka_conf_set_error_cb(conf, on_error);
        rd_kafka_conf_set_log_cb(conf, on_log);
        s->rk = kafka_client_new(RD_KAFKA_PRODUCER, conf, s, &s->cs, err, errlen);
        if (!s->rk)
            return -1;
        s->producers_created++;
        log_debug(pipeline_name(s), "kafka producer created (brokers %s)", s->brokers);
    }
    if (kafka_probe(s->rk, s->base.w, &s->cs, err, errlen) < 0)
        return -1;
    s->cs.brokers_down = 0;
    return 0;
}

/* ---- publishing ------------------------------------------------------------ */

/* Kafka topic names: 1..249 bytes of [A-Za-z0-9._-], not "." or "..". */
static int valid_topic(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n == 0 || n > MAX_TOPIC_LEN || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)t[i]) && t[i] != '.' && t[i] != '_' && t[i] != '-')
            return 0;
    return 1;
}

static int past_deadline(const kafka_sink *s)
{
    relay_worker *w = s->base.w;
    return w && worker_stopping(w) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms);
}

/* The headers of a record: pgtrickle-dedup-key, pgtrickle-full-refresh,
 * and for CloudEvents the content-type and, in binary mode, the ce_*
 * attributes (Kafka protocol binding 3.2.3). */
static rd_kafka_headers_t *record_headers(kafka_sink *s, const relay_msg *m)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(10);
    rd_kafka_header_add(h, "pgtrickle-dedup-key", -1, m->dedup_key, -1);
    rd_kafka_header_add(h, "pgtrickle-full-refresh", -1, m->is_full_refresh ? "true" : "false", -1);
    if (s->base.format != RELAY_FORMAT_CLOUDEVENTS)
        return h;
    if (!s->base.fopts.ce_binary) {
        rd_kafka_header_add(h, "content-type", -1, "application/cloudevents+json; charset=utf-8", -1);
        return h;
    }
    relay_arena local = {0}, *a = m->arena ? m->arena : &local; /* the batch's arena */
    relay_format_ctx ctx = fmt_ctx_for_sink(pipeline_name(s), &s->base.fopts);
    fmt_ce_attrs at;
    fmt_ce_attrs_of(&ctx, m, a, &at);
    const char *names[8], *values[8];
    size_t k = fmt_ce_header_attrs(&at, names, values);
    char name[40];
    for (size_t i = 0; i < k; i++) {
        snprintf(name, sizeof name, "ce_%s", names[i]);
        rd_kafka_header_add(h, name, -1, values[i], -1);
    }
    if (at.datacontenttype)
        rd_kafka_header_add(h, "content-type", -1, at.datacontenttype, -1);
    arena_free(&local);
    return h;
}

/* The tombstone after a Debezium delete: same topic and key, null value. */
static rd_kafka_resp_err_t produce_tombstone(kafka_sink *s, relay_msg *m, const char *key,
                                             size_t key_len)
{
    rd_kafka_headers_t *h = rd_kafka_headers_new(1);
    rd_kafka_header_add(h, "pgtrickle-dedup-key", -1, m->dedup_key, -1);
    rd_kafka_resp_err_t e;
    /* The queue may be full: serve reports until it takes the record. */
    while ((e = rd_kafka_producev(s->rk, RD_KAFKA_V_TOPIC(m->subject), RD_KAFKA_V_KEY(key, key_len),
                                  RD_KAFKA_V_VALUE(NULL, 0), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                  RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END)) ==
               RD_KAFKA_RESP_ERR__QUEUE_FULL &&
           !past_deadline(s))
        rd_kafka_poll(s->rk, 10);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
        s->outstanding++;
    else
        rd_kafka_headers_destroy(h);
    return e;
}

/* Produce one record. Returns 0 when librdkafka took it (or the message got
 * a final state here), 1 when its queue is full (try again after serving
 * reports), -1 on a fatal error. */
static int produce_one(kafka_sink *s, relay_msg *m)
{
    if (!valid_topic(m->subject)) {
        m->state = MSG_REJECTED;
        m->error = "not a valid Kafka topic name (1-249 characters of [A-Za-z0-9._-]); "
                   "check sink.topic_template";
        return 0;
    }
    const char *key = m->key ? m->key : m->dedup_key;
    size_t key_len = strlen(key);
    if (s->key_parts) {
        buf_clear(&s->key);
        render_key(s, m, &s->key);
        key = s->key.len ? s->key.data : NULL;
        key_len = s->key.len;
    }
    int tombstone = s->base.format == RELAY_FORMAT_DEBEZIUM && s->base.fopts.tombstones &&
                    m->op == OP_DELETE && key;
    rd_kafka_headers_t *h = record_headers(s, m);
    rd_kafka_resp_err_t e = rd_kafka_producev(
        s->rk, RD_KAFKA_V_TOPIC(m->subject), RD_KAFKA_V_KEY(key, key_len),
        RD_KAFKA_V_VALUE((void *)m->body, m->body_len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(m), RD_KAFKA_V_END);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        s->outstanding++;
        if (tombstone)
            e = produce_tombstone(s, m, key, key_len);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR)
            return 0;
        /* The delete is queued, its tombstone is not: the delete's report
         * still comes (it writes m); fail m so the worker republishes both. */
    } else {
        rd_kafka_headers_destroy(h); /* still ours when producev fails */
    }
    if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && !tombstone)
        return 1;
    if (e == RD_KAFKA_RESP_ERR__FATAL) {
        s->cs.fatal = 1;
        return -1;
    }
    m->state = permanent_error(e) || e == RD_KAFKA_RESP_ERR__INVALID_ARG ? MSG_REJECTED : MSG_RETRY;
    m->error = rd_kafka_err2str(e);
    return 0;
}

/* Purge whatever is still queued or in flight and serve the purge reports.
 * If some never come, the producer is destroyed so that none can arrive
 * after publish() returned. The producer is closed in every case: it is
 * recreated fresh (new producer id) by the next open(). */
static void abandon(kafka_sink *s)
{
    rd_kafka_purge(s->rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    int64_t end = now_mono_ms() + DRAIN_TIMEOUT_MS;
    while (s->outstanding > 0 && now_mono_ms() < end)
        rd_kafka_poll(s->rk, 50);
    if (s->outstanding > 0)
        log_warn(pipeline_name(s), "kafka producer: %zu delivery reports missing after a purge; "
                 "destroying the producer", s->outstanding);
    close_producer(s);
}

typedef enum { WAIT_DONE = 0, WAIT_FATAL, WAIT_UNREACHABLE, WAIT_DEADLINE } wait_result;

/* All brokers down and no progress: probe once more before giving up. */
static int still_unreachable(kafka_sink *s)
{
    char why[256];
    if (kafka_check_reachable(s->rk, 500, why, sizeof why) == 0) {
        s->cs.brokers_down = 0;
        return 0;
    }
    return 1;
}

/* Serve delivery reports until every produced record has one. */
static wait_result wait_reports(kafka_sink *s)
{
    size_t last = s->outstanding;
    int64_t progress = now_mono_ms();
    while (s->outstanding > 0) {
        rd_kafka_flush(s->rk, 100); /* sends at once (ignores linger.ms), serves callbacks */
        int64_t now = now_mono_ms();
        if (s->outstanding != last) {
            last = s->outstanding;
            progress = now;
        }
        if (s->cs.fatal)
            return WAIT_FATAL;
        if (past_deadline(s))
            return WAIT_DEADLINE;
        if (s->cs.brokers_down && now - progress >= STALL_MS && still_unreachable(s))
            return WAIT_UNREACHABLE;
    }
    return s->cs.fatal ? WAIT_FATAL : WAIT_DONE;
}

static int ks_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    kafka_sink *s = (kafka_sink *)base;
    for (size_t i = 0; i < n; i++)
        msgs[i]->state = MSG_PENDING;
    if (n == 0)
        return 0;
    if (!s->rk && ks_open(base, err, errlen) < 0)
        return -1;

    wait_result wr = WAIT_DONE;
    for (size_t i = 0; i < n && !s->cs.fatal; i++) {
        int rc;
        while ((rc = produce_one(s, msgs[i])) == 1) {
            rd_kafka_poll(s->rk, 10); /* queue full: serve reports to make room */
            if (past_deadline(s)) {
                wr = WAIT_DEADLINE;
                break;
            }
        }
        if (wr != WAIT_DONE || rc < 0)
            break;
    }
    if (wr == WAIT_DONE)
        wr = wait_reports(s);

    switch (wr) {
    case WAIT_DONE:
        break;
    case WAIT_FATAL:
        log_warn(pipeline_name(s), "kafka producer %s; re-creating the producer, the "
                 "batch's unconfirmed records will be republished", s->cs.last_error);
        abandon(s);
        for (size_t i = 0; i < n; i++) {
            if (msgs[i]->state == MSG_PENDING || msgs[i]->state == MSG_RETRY) {
                msgs[i]->state = MSG_RETRY;
                msgs[i]->error = "the idempotent producer hit a fatal error and was re-created";
            }
        }
        return 0;
    case WAIT_DEADLINE:
        abandon(s);
        snprintf(err, errlen, "shutdown deadline passed while waiting for delivery reports");
        return -1;
    case WAIT_UNREACHABLE:
        abandon(s);
        snprintf(err, errlen, "all brokers down (%s): no delivery report for %d ms",
                 s->cs.last_error[0] ? s->cs.last_error : s->brokers, STALL_MS);
        return -1;
    }

    /* Nothing of the batch could be stored (unknown topic, too few in-sync
     * replicas, timeouts, ...): the sink is unavailable, not just these
     * records, so say so (the worker reports the pipeline degraded). */
    size_t confirmed = 0, retry = 0;
    const char *why = NULL;
    for (size_t i = 0; i < n; i++) {
        if (msgs[i]->state == MSG_CONFIRMED) {
            confirmed++;
        } else if (msgs[i]->state == MSG_RETRY) {
            retry++;
            if (!why)
                why = msgs[i]->error;
        }
    }
    if (confirmed == 0 && retry > 0) {
        snprintf(err, errlen, "no record delivered: %s (%s)", why ? why : "delivery failed",
                 s->cs.last_error[0] ? s->cs.last_error : s->brokers);
        return -1;
    }
    return 0;
}

/* ---- status ------------------------------------------------------------------ */

static void ks_describe(relay_sink *base, relay_buf *out)
{
    kafka_sink *s = (kafka_sink *)base;
    buf_puts(out, "{\"brokers\":");
    buf_put_json_str(out, s->brokers, strlen(s->brokers));
    buf_printf(out, ",\"producer\":\"%s\",\"delivered\":%" PRIu64 ",\"failed\":%" PRIu64
               ",\"producers_created\":%" PRIu64 "}",
               s->rk ? "open" : "closed", s->delivered, s->failed, s->producers_created);
}

static void ks_destroy(relay_sink *base)
{
    if (!base)
        return;
    kafka_sink *s = (kafka_sink *)base;
    close_producer(s);
    if (s->conf)
        rd_kafka_conf_destroy(s->conf);
    free(s->brokers);
    free_key_parts(s);
    free(s->base.subject_template);
    relay_format_opts_free(&s->base.fopts);
    buf_free(&s->key);
    free(s);
}

const relay_sink_ops relay_sink_kafka_ops = {
    .type = "kafka",
    .create = ks_create,
    .open = ks_open,
    .publish = ks_publish,
    .describe = ks_describe,
    .destroy = ks_destroy,
};
