/*
 * kafka.c - the Apache Kafka reverse source (SPEC section 8, row kafka):
 * records of a consumer group -> inbox, through the "pg-inbox" sink.
 *
 * Config (pipeline "source" object), besides the connection keys of
 * client/kafka.h (brokers, client_id, SASL/SSL, rdkafka passthrough):
 *   topic              a topic name, or an array of them (required)
 *   group_id           consumer group ("pgtrickle-relay-<pipeline name>")
 *   auto_offset_reset  earliest | latest | error (earliest): where a
 *                      partition without a committed offset starts
 *   batch_size         records per inbox transaction (1000)
 *   poll_interval_ms   how long a poll waits for the first record (1000)
 *
 * Messages (source.h): event_id = header pgtrickle-dedup-key, else header
 * idempotency-key (names compared case-insensitively), else
 * "kafka:{topic}:{partition}:{offset}", which is stable, so a redelivered
 * record is skipped by the inbox; subject (event_type fallback) = topic;
 * source = "kafka:{topic}"; aggregate_id = the record key; trace_id = header
 * traceparent. Keys and header values that are not NUL-free UTF-8 are
 * written as "0x" + hex. A body that is not JSON is flagged, and the inbox
 * stores it as a JSON string; a record without a body has a NULL payload.
 *
 * Offsets.  The consumer runs with enable.auto.commit=false. Each partition
 * the group assigned to this relay has two positions:
 *   inbox      next offset whose records are all committed in the inbox
 *   committed  next offset committed to the group
 * poll() consumes up to batch_size records (waiting only for the first);
 * ack(), called after the inbox COMMIT, moves "inbox" past the batch and
 * commits (an explicit partition list, awaited for 5 s at most) the next offset of
 * every partition present in the batch, plus any partition whose earlier
 * commit failed. Nothing else ever commits, except the revocation below,
 * and it only commits "inbox" positions: an offset is never committed for
 * a record that is not in the inbox. A crash between the inbox COMMIT and
 * the offset commit redelivers records the inbox then skips (dedup_skipped).
 *
 * Rebalances (eager or cooperative, as the group's assignor decides) are
 * served inside poll(), never while a batch is being written. A revocation
 * commits the "inbox" positions of the revoked partitions (unless the
 * assignment was lost) and drops their records from the batch being
 * assembled, so they are never written by two members; the new owner starts
 * at the committed offset. Commits are refused while a group rebalances, so
 * a revoked partition's inbox position is remembered: if the group gives
 * the partition back, consumption resumes there instead of re-reading
 * records already in the inbox. Only assigned partitions are ever
 * committed (a new owner may be further along).
 * release() (the batch will not be committed: inbox down, shutdown) seeks
 * every partition of the batch back to its first record, so the records
 * are consumed again.
 *
 * Health: open() creates the consumer once (it keeps its group membership
 * across transient failures) and asks for metadata (3 s); while no broker
 * answers it fails, and poll() fails when librdkafka reports all brokers
 * down and no record arrived, so the worker reports the source unavailable
 * (/health degraded) and retries with backoff. /status shows the group and,
 * per assigned partition, the committed offset, the inbox position and the
 * lag behind the high watermark.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>

#include "../config.h"
#include "../json_scan.h"
#include "../client/kafka.h"
#include "../log.h"
#include "../worker.h"
#include "source.h"

#define COMMITTED_TIMEOUT_MS 5000
#define COMMIT_WAIT_MS 5000      /* an offset commit's answer, at most */
#define CLOSE_TIMEOUT_MS 10000

/* A partition this consumer owns, or owned earlier: a revoked partition's
 * inbox position is remembered for as long as the consumer lives, so that
 * if the group gives it back, consumption resumes after the records already
 * in the inbox even when their offset commit failed (commits are refused
 * while the group rebalances). */
typedef struct kpart {
    char *topic;
    int32_t partition;
    int assigned;
    int64_t committed;   /* next offset committed to the group (-1: unknown / none) */
    int64_t inbox;       /* next offset whose records are all in the inbox (-1: unknown) */
    int64_t batch_first; /* first offset in the current batch, -1 when none */
    int64_t batch_next;  /* offset after the last record in the current batch */
} kpart;

/* Per-message ack handle, in the batch arena. */
typedef struct kmsg {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms; /* record timestamp, -1 when none */
} kmsg;

typedef struct kafka_source {
    relay_source base;
    rd_kafka_conf_t *conf;       /* validated template */
    char *brokers;
    char *group_id;
    rd_kafka_topic_partition_list_t *topics; /* the subscription */
    int64_t batch_size;
    int64_t poll_interval_ms;
    rd_kafka_t *rk;              /* NULL until open() */
    kpart *parts;
    size_t nparts, cap;
    int revoked;                 /* partitions were revoked during this poll */
    /* error state, set by callbacks on the worker thread */
    kafka_client_state cs;      /* fatal / brokers down / last error, from on_error */
    char logged_error[512];      /* last consumer error logged (one line per change) */
    uint64_t rebalances;
    relay_buf pos;
    /* offset commits: results arrive on commit_q (served by commit_wait) */
    rd_kafka_queue_t *commit_q;
    int commits_out;             /* commits sent, result not served yet */
    rd_kafka_resp_err_t commit_err; /* first error served since the last commit was sent */
} kafka_source;

static const char *pipeline_name(const kafka_source *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- configuration ----------------------------------------------------- */

static const kafka_reserved consumer_reserved[] = {
    {"enable.auto.commit", NULL},
    {"group.id", "group_id"},
    {"auto.offset.reset", "auto_offset_reset"},
    {NULL, NULL},
};

static rd_kafka_topic_partition_list_t *parse_topics(const json_t *cfg, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, "topic");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    if (json_is_string(v) && json_string_length(v) > 0) {
        rd_kafka_topic_partition_list_add(l, json_string_value(v), RD_KAFKA_PARTITION_UA);
        return l;
    }
    if (json_is_array(v) && json_array_size(v) > 0) {
        size_t i;
        json_t *t;
        json_array_foreach(v, i, t) {
            if (!json_is_string(t) || json_string_length(t) == 0) {
                snprintf(err, errlen, "source.topic[%zu]: expected a non-empty topic name", i);
                rd_kafka_topic_partition_list_destroy(l);
                return NULL;
            }
            rd_kafka_topic_partition_list_add(l, json_string_value(t), RD_KAFKA_PARTITION_UA);
        }
        return l;
    }
    if (!v || json_is_null(v) || json_is_string(v) || json_is_array(v))
        snprintf(err, errlen, "source.topic: required (a topic name or an array of them)");
    else
        snprintf(err, errlen, "source.topic: expected a topic name or an array of them");
    rd_kafka_topic_partition_list_destroy(l);
    return NULL;
}

static void kc_destroy(relay_source *base);

static relay_source *kc_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "topic", "group_id", "auto_offset_reset",
                                       "batch_size", "poll_interval_ms", KAFKA_CONF_KEYS, NULL};
    const char *group, *reset;
    int64_t batch, interval;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str(cfg, "source", "group_id", NULL, &group, err, errlen) < 0 ||
        cfg_str(cfg, "source", "auto_offset_reset", "earliest", &reset, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 1000, 1, 100000, &batch, err, errlen) < 0 ||
        cfg_int(cfg, "source", "poll_interval_ms", 1000, 10, 3600000, &interval, err, errlen) < 0)
        return NULL;
    if (strcmp(reset, "earliest") && strcmp(reset, "latest") && strcmp(reset, "error")) {
        snprintf(err, errlen, "source.auto_offset_reset: expected earliest, latest or error");
        return NULL;
    }
    if (group && !*group) {
        snprintf(err, errlen, "source.group_id: must not be empty");
        return NULL;
    }
    rd_kafka_topic_partition_list_t *topics = parse_topics(cfg, err, errlen);
    if (!topics)
        return NULL;

    kafka_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->topics = topics;
    s->batch_size = batch;
    s->poll_interval_ms = interval;
    if (group) {
        s->group_id = xstrdup(group);
    } else {
        relay_buf g = {0};
        buf_printf(&g, "pgtrickle-relay-%s", w ? w->cfg.name : "pipeline");
        s->group_id = buf_steal(&g);
    }
    const kafka_property defaults[] = {
        /* notice a subscribed topic created after the pipeline within 30 s */
        {"topic.metadata.refresh.interval.ms", "30000"},
        {NULL, NULL},
    };
    const kafka_property fixed[] = {
        {"group.id", s->group_id},
        {"enable.auto.commit", "false"},
        {"auto.offset.reset", reset},
        {NULL, NULL},
    };
    s->conf = kafka_conf_build(cfg, "source", RD_KAFKA_CONSUMER, defaults, fixed,
                               consumer_reserved, &s->brokers, err, errlen);
    if (!s->conf) {
        kc_destroy(&s->base);
        return NULL;
    }
    return &s->base;
}

/* ---- partition table ------------------------------------------------------ */

static kpart *find_part(kafka_source *s, const char *topic, int32_t partition)
{
    for (size_t i = 0; i < s->nparts; i++)
        if (s->parts[i].partition == partition && strcmp(s->parts[i].topic, topic) == 0)
            return &s->parts[i];
    return NULL;
}

/* Mark a partition assigned, with the group's committed offset. Returns
 * it; its inbox position is the later of the committed offset and what this
 * consumer wrote to the inbox while it owned the partition before. */
static kpart *add_part(kafka_source *s, const char *topic, int32_t partition, int64_t committed)
{
    kpart *p = find_part(s, topic, partition);
    if (!p) {
        if (s->nparts == s->cap) {
            s->cap = s->cap ? s->cap * 2 : 8;
            s->parts = xrealloc(s->parts, s->cap * sizeof *s->parts);
        }
        p = &s->parts[s->nparts++];
        p->topic = xstrdup(topic);
        p->partition = partition;
        p->inbox = -1;
    }
    p->assigned = 1;
    p->committed = committed;
    if (committed > p->inbox)
        p->inbox = committed;
    p->batch_first = -1;
    p->batch_next = -1;
    return p;
}

static kpart *find_assigned(kafka_source *s, const char *topic, int32_t partition)
{
    kpart *p = find_part(s, topic, partition);
    return p && p->assigned ? p : NULL;
}

static void clear_parts(kafka_source *s)
{
    for (size_t i = 0; i < s->nparts; i++)
        free(s->parts[i].topic);
    s->nparts = 0;
}

static void publish_position(kafka_source *s)
{
    relay_buf *b = &s->pos;
    buf_clear(b);
    buf_puts(b, "{\"group_id\":");
    buf_put_json_str(b, s->group_id, strlen(s->group_id));
    buf_puts(b, ",\"topics\":[");
    for (int i = 0; i < s->topics->cnt; i++) {
        if (i)
            buf_putc(b, ',');
        buf_put_json_str(b, s->topics->elems[i].topic, strlen(s->topics->elems[i].topic));
    }
    buf_printf(b, "],\"rebalances\":%" PRIu64 ",\"partitions\":[", s->rebalances);
    int first = 1;
    for (size_t i = 0; i < s->nparts; i++) {
        kpart *p = &s->parts[i];
        if (!p->assigned)
            continue;
        int64_t lo = -1, hi = -1;
        if (s->rk)
            rd_kafka_get_watermark_offsets(s->rk, p->topic, p->partition, &lo, &hi);
        if (!first)
            buf_putc(b, ',');
        first = 0;
        buf_puts(b, "{\"topic\":");
        buf_put_json_str(b, p->topic, strlen(p->topic));
        buf_printf(b, ",\"partition\":%d,\"committed\":", (int)p->partition);
        if (p->committed >= 0)
            buf_put_i64(b, p->committed);
        else
            buf_puts(b, "null");
        buf_puts(b, ",\"inbox\":");
        if (p->inbox >= 0)
            buf_put_i64(b, p->inbox);
        else
            buf_puts(b, "null");
        buf_puts(b, ",\"high_watermark\":");
        if (hi >= 0)
            buf_put_i64(b, hi);
        else
            buf_puts(b, "null");
        buf_puts(b, ",\"lag\":");
        if (hi >= 0)
            buf_put_i64(b, hi - (p->committed >= 0 ? p->committed : 0));
        else
            buf_puts(b, "null");
        buf_putc(b, '}');
    }
    buf_puts(b, "]}");
    if (s->base.w && s->base.w->stats)
        stats_set_position(s->base.w->stats, b->data);
}

/* ---- committing ------------------------------------------------------------ */

/* Served by commit_wait() on the worker thread, possibly for a commit an
 * earlier call stopped waiting for: results are kept in the source. */
static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque)
{
    (void)rk;
    kafka_source *s = opaque;
    if (s->commits_out > 0)
        s->commits_out--;
    if (err && !s->commit_err)
        s->commit_err = err;
    for (int i = 0; offsets && i < offsets->cnt; i++) {
        rd_kafka_topic_partition_t *e = &offsets->elems[i];
        if (e->err) {
            if (!s->commit_err)
                s->commit_err = e->err;
            continue;
        }
        kpart *p = find_assigned(s, e->topic, e->partition);
        if (p && e->offset > p->committed)
            p->committed = e->offset;
    }
}

/* Serve commit results until none is outstanding, for at most `ms` (0:
 * only those already there). */
static void commit_wait(kafka_source *s, int64_t ms)
{
    int64_t end = now_mono_ms() + ms;
    while (s->commits_out > 0) {
        int64_t left = end - now_mono_ms();
        rd_kafka_queue_poll_callback(s->commit_q, left <= 0 ? 0 : left > 100 ? 100 : (int)left);
        if (left <= 0)
            break;
    }
}

/* Commit the inbox position of each assigned partition in `only` (all
 * when NULL) that is ahead of the committed one. Partitions no longer
 * assigned are never committed: their new owner may be further along.
 * The commit is sent asynchronously and awaited for COMMIT_WAIT_MS at most:
 * with the group coordinator unreachable librdkafka would hold a
 * synchronous commit until the group session expires (about a minute),
 * and the worker with it. A commit not answered in time is an error here;
 * its late result is served by the next call, and the positions it did not
 * commit are committed by the next ack (records meanwhile redelivered are
 * skipped by the inbox). Returns 0, or -1 with err. */
static int commit_inbox_positions(kafka_source *s, const rd_kafka_topic_partition_list_t *only,
                                  char *err, size_t errlen)
{
    commit_wait(s, 0); /* results of earlier commits that came late */
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->nparts + 1);
    for (size_t i = 0; i < s->nparts; i++) {
        kpart *p = &s->parts[i];
        if (!p->assigned || p->inbox < 0 || p->inbox <= p->committed)
            continue;
        if (only && !rd_kafka_topic_partition_list_find(only, p->topic, p->partition))
            continue;
        rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->inbox;
    }
    int rc = 0;
    if (l->cnt > 0) {
        s->commit_err = RD_KAFKA_RESP_ERR_NO_ERROR;
        rd_kafka_resp_err_t e = rd_kafka_commit_queue(s->rk, l, s->commit_q, on_commit, s);
        if (!e) {
            s->commits_out++;
            commit_wait(s, COMMIT_WAIT_MS);
            e = s->commit_err;
        }
        if (e) {
            snprintf(err, errlen, "offset commit failed: %s", rd_kafka_err2str(e));
            rc = -1;
        } else if (s->commits_out > 0) {
            snprintf(err, errlen, "offset commit not answered within %d ms", COMMIT_WAIT_MS);
            rc = -1;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    return rc;
}

/* ---- callbacks ------------------------------------------------------------------ */

static void partitions_text(const rd_kafka_topic_partition_list_t *l, relay_buf *out)
{
    for (int i = 0; i < l->cnt && i < 32; i++)
        buf_printf(out, "%s%s[%d]", i ? " " : "", l->elems[i].topic, (int)l->elems[i].partition);
    if (l->cnt > 32)
        buf_printf(out, " ... (%d)", l->cnt);
}

static void on_assign(kafka_source *s, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                      int cooperative)
{
    /* Where the group stands, for /status (the consumer itself starts there). */
    rd_kafka_topic_partition_list_t *c = rd_kafka_topic_partition_list_copy(parts);
    if (rd_kafka_committed(rk, c, COMMITTED_TIMEOUT_MS) != RD_KAFKA_RESP_ERR_NO_ERROR)
        for (int i = 0; i < c->cnt; i++)
            c->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
    for (int i = 0; i < c->cnt; i++) {
        int64_t committed = c->elems[i].offset >= 0 ? c->elems[i].offset : -1;
        kpart *p = add_part(s, c->elems[i].topic, c->elems[i].partition, committed);
        if (p->inbox > committed) {
            /* Given back after its last commits were refused: start after
             * the records this consumer already wrote; the next ack
             * commits that position. */
            rd_kafka_topic_partition_t *e =
                rd_kafka_topic_partition_list_find(parts, p->topic, p->partition);
            if (e)
                e->offset = p->inbox;
        }
    }
    rd_kafka_topic_partition_list_destroy(c);

    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (cooperative) {
        rd_kafka_error_t *ce = rd_kafka_incremental_assign(rk, parts);
        if (ce) {
            e = rd_kafka_error_code(ce);
            rd_kafka_error_destroy(ce);
        }
    } else {
        e = rd_kafka_assign(rk, parts);
    }
    relay_buf t = {0};
    partitions_text(parts, &t);
    if (e)
        log_warn(pipeline_name(s), "kafka: assigning %s failed: %s", t.data ? t.data : "",
                 rd_kafka_err2str(e));
    else
        log_info(pipeline_name(s), "kafka: group \"%s\" assigned %s", s->group_id,
                 t.data ? t.data : "no partitions");
    buf_free(&t);
}

static void on_revoke(kafka_source *s, rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts,
                      int cooperative)
{
    char why[256];
    /* Records of revoked partitions that are in the inbox but whose offset
     * commit failed earlier: commit them now, so the next owner does not
     * redeliver them. Nothing beyond the inbox position is ever committed. */
    if (!rd_kafka_assignment_lost(rk) && commit_inbox_positions(s, parts, why, sizeof why) < 0)
        log_debug(pipeline_name(s), "kafka: commit on revocation: %s", why);
    for (int i = 0; i < parts->cnt; i++) {
        kpart *p = find_part(s, parts->elems[i].topic, parts->elems[i].partition);
        if (p)
            p->assigned = 0;
    }
    s->revoked = 1;
    if (cooperative) {
        rd_kafka_error_t *ce = rd_kafka_incremental_unassign(rk, parts);
        if (ce)
            rd_kafka_error_destroy(ce);
    } else {
        rd_kafka_assign(rk, NULL);
    }
    relay_buf t = {0};
    partitions_text(parts, &t);
    log_info(pipeline_name(s), "kafka: %s %s", rd_kafka_assignment_lost(rk) ? "lost" : "revoked",
             t.data ? t.data : "no partitions");
    buf_free(&t);
}

static void handle_rebalance(kafka_source *s, rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *parts)
{
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    s->rebalances++;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        on_assign(s, rk, parts, cooperative);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        on_revoke(s, rk, parts, cooperative);
    } else {
        log_warn(pipeline_name(s), "kafka: rebalance failed: %s", rd_kafka_err2str(err));
        for (size_t i = 0; i < s->nparts; i++)
            s->parts[i].assigned = 0;
        s->revoked = 1;
        rd_kafka_assign(rk, NULL);
    }
    publish_position(s);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    handle_rebalance(opaque, rk, err, parts);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    kafka_source *s = opaque;
    kafka_client_on_error(&s->cs, rk, err, reason, pipeline_name(s), "consumer");
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    kafka_source *s = rd_kafka_opaque(rk);
    kafka_log_line(s ? pipeline_name(s) : NULL, level, fac, buf);
}

/* ---- open / close --------------------------------------------------------------- */

/* Leave the group (revocation commits inbox positions only) within
 * CLOSE_TIMEOUT_MS, then destroy the consumer. */
static void close_consumer(kafka_source *s)
{
    if (!s->rk)
        return;
    rd_kafka_t *rk = s->rk;
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(rk, q);
    if (e) {
        rd_kafka_error_destroy(e);
    } else {
        int64_t end = now_mono_ms() + CLOSE_TIMEOUT_MS;
        while (!rd_kafka_consumer_closed(rk) && now_mono_ms() < end) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
            if (!ev)
                continue;
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE)
                handle_rebalance(s, rk, rd_kafka_event_error(ev),
                                 rd_kafka_event_topic_partition_list(ev));
            rd_kafka_event_destroy(ev);
        }
    }
    rd_kafka_queue_destroy(q);
    commit_wait(s, 0);
    rd_kafka_queue_destroy(s->commit_q);
    s->commit_q = NULL;
    s->commits_out = 0;
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    s->rk = NULL;
    clear_parts(s);
}

static int kc_open(relay_source *base, char *err, size_t errlen)
{
    kafka_source *s = (kafka_source *)base;
    if (s->rk && s->cs.fatal)
        close_consumer(s);
    if (!s->rk) {
        rd_kafka_conf_t *conf = rd_kafka_conf_dup(s->conf);
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
        rd_kafka_conf_set_error_cb(conf, on_error);
        rd_kafka_conf_set_log_cb(conf, on_log);
        s->rk = kafka_client_new(RD_KAFKA_CONSUMER, conf, s, &s->cs, err, errlen);
        if (!s->rk)
            return -1;
        s->commit_q = rd_kafka_queue_new(s->rk);
        rd_kafka_poll_set_consumer(s->rk);
        rd_kafka_resp_err_t e = rd_kafka_subscribe(s->rk, s->topics);
        if (e) {
            snprintf(err, errlen, "subscribe: %s", rd_kafka_err2str(e));
            close_consumer(s);
            return -1;
        }
        log_debug(pipeline_name(s), "kafka consumer created (brokers %s, group \"%s\")",
                  s->brokers, s->group_id);
    }
    if (kafka_probe(s->rk, s->base.w, &s->cs, err, errlen) < 0)
        return -1;
    s->cs.brokers_down = 0;
    publish_position(s);
    return 0;
}

/* ---- polling ----------------------------------------------------------------------- */

/* A header value or record key, copied with its length: its bytes are
 * checked (and kept exactly in the dead-letter table) by the inbox writer. */
static const char *bytes_of(relay_arena *a, const void *v, size_t n, size_t *len)
{
    *len = n;
    return arena_strndup(a, v, n);
}

/* Per-topic strings shared by the records of one batch. */
typedef struct topic_names {
    const rd_kafka_topic_t *rkt;
    const char *topic;
    const char *source_name;
} topic_names;

static void add_record(kafka_source *s, relay_batch *b, const rd_kafka_message_t *m,
                       topic_names *tn)
{
    relay_arena *a = &b->arena;
    if (tn->rkt != m->rkt) {
        const char *t = rd_kafka_topic_name(m->rkt);
        tn->rkt = m->rkt;
        tn->topic = arena_strdup(a, t);
        tn->source_name = arena_printf(a, "kafka:%s", t);
    }
    relay_msg *rm = batch_add(b);
    const char *dedup = NULL, *idem = NULL, *trace = NULL;
    size_t dedup_len = 0, idem_len = 0, trace_len = 0;
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t len;
        for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &val, &len) == 0; i++) {
            if (!val || len == 0)
                continue;
            if (!dedup && strcasecmp(name, "pgtrickle-dedup-key") == 0)
                dedup = bytes_of(a, val, len, &dedup_len);
            else if (!idem && strcasecmp(name, "idempotency-key") == 0)
                idem = bytes_of(a, val, len, &idem_len);
            else if (!trace && strcasecmp(name, "traceparent") == 0)
                trace = bytes_of(a, val, len, &trace_len);
        }
    }
    if (dedup || idem) {
        rm->dedup_key = dedup ? dedup : idem;
        rm->dedup_key_len = dedup ? dedup_len : idem_len;
    } else {
        rm->dedup_key = arena_printf(a, "kafka:%s:%d:%" PRId64, tn->topic, (int)m->partition,
                                     m->offset);
    }
    rm->op = OP_EVENT;
    rm->subject = tn->topic;
    rm->source_name = tn->source_name;
    rm->trace_id = trace;
    rm->trace_id_len = trace_len;
    if (m->key)
        rm->aggregate_id = bytes_of(a, m->key, m->key_len, &rm->aggregate_id_len);
    if (m->payload) {
        rm->payload = arena_strndup(a, m->payload, m->len);
        rm->payload_len = m->len;
        rm->payload_is_json = json_valid(m->payload, m->len);
    } else {
        rm->payload_is_json = 1;
    }
    kmsg *k = arena_alloc(a, sizeof *k);
    k->topic = tn->topic;
    k->partition = m->partition;
    k->offset = m->offset;
    k->timestamp_ms = rd_kafka_message_timestamp(m, NULL);
    rm->ack = k;

    kpart *p = find_assigned(s, k->topic, k->partition);
    if (!p) /* assigned without a callback we saw: track it anyway */
        p = add_part(s, k->topic, k->partition, -1);
    if (p->batch_first < 0)
        p->batch_first = m->offset;
    p->batch_next = m->offset + 1;
}

/* Drop the records of partitions that are no longer ours from the batch
 * being assembled (after a revocation inside poll). */
static void drop_revoked(kafka_source *s, relay_batch *b)
{
    size_t keep = 0;
    for (size_t i = 0; i < b->n; i++) {
        kmsg *k = b->msgs[i].ack;
        if (!find_assigned(s, k->topic, k->partition))
            continue;
        if (keep != i)
            b->msgs[keep] = b->msgs[i];
        keep++;
    }
    if (keep != b->n)
        log_debug(pipeline_name(s), "kafka: %zu records of revoked partitions dropped from the batch",
                  b->n - keep);
    b->n = keep;
    /* Recompute the batch range of the partitions that remain. */
    for (size_t i = 0; i < s->nparts; i++)
        s->parts[i].batch_first = s->parts[i].batch_next = -1;
    for (size_t i = 0; i < b->n; i++) {
        kmsg *k = b->msgs[i].ack;
        kpart *p = find_assigned(s, k->topic, k->partition);
        if (p->batch_first < 0 || k->offset < p->batch_first)
            p->batch_first = k->offset;
        if (k->offset + 1 > p->batch_next)
            p->batch_next = k->offset + 1;
    }
}

/* A record-level consumer error (unknown topic, ...): log it once. */
static void consumer_error(kafka_source *s, const rd_kafka_message_t *m)
{
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF)
        return;
    if (m->err == RD_KAFKA_RESP_ERR__FATAL) {
        s->cs.fatal = 1;
        return;
    }
    char why[512];
    snprintf(why, sizeof why, "%s%s%s", m->rkt ? rd_kafka_topic_name(m->rkt) : "",
             m->rkt ? ": " : "", rd_kafka_message_errstr(m));
    if (kafka_err_unreachable(m->err))
        s->cs.brokers_down = 1;
    snprintf(s->cs.last_error, sizeof s->cs.last_error, "%s", why);
    if (strcmp(why, s->logged_error) != 0) {
        snprintf(s->logged_error, sizeof s->logged_error, "%s", why);
        log_warn(pipeline_name(s), "kafka consumer: %s", why);
        if (s->base.w && s->base.w->stats)
            stats_error(s->base.w->stats, ERR_SOURCE, "kafka: %s", why);
    }
}

static int kc_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    kafka_source *s = (kafka_source *)base;
    if (!s->rk) {
        snprintf(err, errlen, "the Kafka consumer is closed");
        return -1;
    }
    if (max > (size_t)s->batch_size)
        max = (size_t)s->batch_size;
    for (size_t i = 0; i < s->nparts; i++)
        s->parts[i].batch_first = s->parts[i].batch_next = -1;
    s->revoked = 0;
    topic_names tn = {0};
    int64_t deadline = now_mono_ms() + s->poll_interval_ms;
    while (b->n < max) {
        int timeout = 0;
        if (b->n == 0) {
            int64_t left = deadline - now_mono_ms();
            timeout = left > 100 ? 100 : left < 0 ? 0 : (int)left;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(s->rk, timeout);
        if (s->revoked) {
            drop_revoked(s, b);
            s->revoked = 0;
        }
        if (m && m->err) {
            consumer_error(s, m);
            rd_kafka_message_destroy(m);
            m = NULL;
        } else if (m) {
            add_record(s, b, m, &tn);
            s->cs.brokers_down = 0;
            rd_kafka_message_destroy(m);
            continue;
        }
        if (b->n > 0)
            break; /* what was available is the batch */
        if (s->cs.fatal) {
            snprintf(err, errlen, "kafka consumer %s; re-creating the consumer",
                     s->cs.last_error[0] ? s->cs.last_error : "fatal error");
            log_warn(pipeline_name(s), "%s", err);
            close_consumer(s);
            return -1;
        }
        if (worker_stopping(s->base.w))
            break;
        if (now_mono_ms() >= deadline) {
            /* A whole interval without records while librdkafka reports
             * the brokers down (confirmed by a probe: the report may be
             * older than a recovery): the source is unavailable. */
            char why[256];
            if (s->cs.brokers_down && kafka_check_reachable(s->rk, 500, why, sizeof why) < 0) {
                snprintf(err, errlen, "all brokers down (%s)",
                         s->cs.last_error[0] ? s->cs.last_error : s->brokers);
                return -1;
            }
            s->cs.brokers_down = 0;
            break;
        }
    }
    return (int)b->n;
}

/* ---- acknowledgement ---------------------------------------------------------------- */

static int kc_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    kafka_source *s = (kafka_source *)base;
    int64_t newest = -1;
    for (size_t i = 0; i < b->n; i++) {
        kmsg *k = b->msgs[i].ack;
        if (k && k->timestamp_ms > newest)
            newest = k->timestamp_ms;
    }
    /* Every record of the batch is in the inbox (or dead-lettered). */
    for (size_t i = 0; i < s->nparts; i++) {
        kpart *p = &s->parts[i];
        if (p->batch_first >= 0 && p->batch_next > p->inbox)
            p->inbox = p->batch_next;
        p->batch_first = p->batch_next = -1;
    }
    if (newest >= 0 && s->base.w && s->base.w->stats) {
        int64_t lag = now_wall_ms() - newest;
        atomic_store(&s->base.w->stats->lag_ms, lag > 0 ? lag : 0);
    }
    int rc = s->rk ? commit_inbox_positions(s, NULL, err, errlen) : 0;
    publish_position(s);
    return rc;
}

static void kc_release(relay_source *base, relay_batch *b)
{
    (void)b;
    kafka_source *s = (kafka_source *)base;
    if (!s->rk)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)s->nparts + 1);
    for (size_t i = 0; i < s->nparts; i++) {
        kpart *p = &s->parts[i];
        if (p->batch_first >= 0)
            rd_kafka_topic_partition_list_add(l, p->topic, p->partition)->offset = p->batch_first;
        p->batch_first = p->batch_next = -1;
    }
    if (l->cnt > 0) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(s->rk, l, 5000);
        int failed = e != NULL;
        for (int i = 0; i < l->cnt; i++)
            failed |= l->elems[i].err != RD_KAFKA_RESP_ERR_NO_ERROR;
        if (e)
            rd_kafka_error_destroy(e);
        if (failed) {
            /* Cannot rewind: start over from the committed offsets. */
            log_warn(pipeline_name(s), "kafka: cannot seek back to the unwritten records; "
                     "re-creating the consumer to resume from the committed offsets");
            close_consumer(s);
        } else {
            log_debug(pipeline_name(s), "kafka: %d partitions rewound to the first unwritten record",
                      l->cnt);
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void kc_position(relay_source *base, relay_buf *out)
{
    kafka_source *s = (kafka_source *)base;
    publish_position(s);
    buf_append(out, s->pos.data, s->pos.len);
}

static void kc_destroy(relay_source *base)
{
    if (!base)
        return;
    kafka_source *s = (kafka_source *)base;
    close_consumer(s);
    clear_parts(s);
    free(s->parts);
    if (s->conf)
        rd_kafka_conf_destroy(s->conf);
    if (s->topics)
        rd_kafka_topic_partition_list_destroy(s->topics);
    free(s->brokers);
    free(s->group_id);
    buf_free(&s->pos);
    free(s);
}

const relay_source_ops relay_source_kafka_ops = {
    .type = "kafka",
    .create = kc_create,
    .open = kc_open,
    .poll = kc_poll,
    .ack = kc_ack,
    .release = kc_release,
    .position = kc_position,
    .destroy = kc_destroy,
};
