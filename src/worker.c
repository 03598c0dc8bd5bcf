/*
 * worker.c - the relay loop of one pipeline. All delivery rules live here.
 *
 * Lifecycle of a worker thread:
 *
 *   connect ─► pg_try_advisory_lock(hashtext(group), hashtext(name))
 *      │           └─ not granted ─► NOT_OWNER (thread ends; the coordinator
 *      │                              tries again on a later discovery tick)
 *      ▼
 *   RUNNING: loop { poll ─► publish ─► confirm ─► dead-letter ─► ack }
 *      │
 *      ├─ PostgreSQL connection lost: the lock is gone with it, so nothing
 *      │  more is published or acked; reconnect with backoff and take the
 *      │  lock again (or end as NOT_OWNER if another relay took it)
 *      └─ stop requested: finish and ack the batch in flight before the
 *         shutdown deadline, disconnect (which releases the lock), EXITED
 *
 * Delivery rules, in one place for every source and sink:
 *  - A batch is acknowledged to its source only when each of its messages
 *    is CONFIRMED by the sink or written to pgtrickle.relay_dlq (DEAD).
 *  - Transient failures (sink down, timeout, 5xx, PostgreSQL down) are
 *    retried with jittered exponential backoff, 100 ms doubling to 30 s,
 *    republishing only the messages not yet confirmed, with the same dedup
 *    keys; the pipeline reports degraded meanwhile.
 *  - Permanent per-message failures (MSG_REJECTED) are dead-lettered and the
 *    pipeline moves on; if the dead-letter insert itself fails, that is a
 *    transient failure and nothing is acked.
 *  - At a stop a batch that cannot be confirmed before the deadline
 *    (--shutdown-timeout at SIGTERM, 500 ms when the pipeline's config
 *    changed, see coordinator.c) is abandoned unacknowledged; the source
 *    delivers it again to the next worker.
 *
 * Before the first publish of a batch the worker prepares its messages once:
 * row keys in the sink's format (relay_format_key: {key}, the Kafka record
 * key), subjects (the sink's template, or its subject_overrides entry for
 * the event's event_type or op), then bodies (relay_encode; an event the
 * format cannot carry is dead-lettered here). Retries reuse all three.
 */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "json_scan.h"
#include "log.h"
#include "pg.h"
#include "registry.h"

#define ERRLEN 1024
/* Dedup keys in log lines are cut to this many bytes (a key can be long). */
#define LOG_KEY_MAX 200

/* ---- waiting ------------------------------------------------------------ */

int worker_stopping(relay_worker *w)
{
    return atomic_load(&w->stop) != 0;
}

int worker_wait(relay_worker *w, int fd, short events, int timeout_ms)
{
    if (worker_stopping(w))
        return -1;
    struct pollfd p[2] = {{.fd = w->wake[0], .events = POLLIN}, {.fd = fd, .events = events}};
    int n = poll(p, fd >= 0 ? 2 : 1, timeout_ms < 0 ? -1 : timeout_ms);
    if (worker_stopping(w))
        return -1;
    if (n > 0 && fd >= 0 && (p[1].revents & (events | POLLERR | POLLHUP)))
        return 1;
    return 0;
}

/* Give the source a chance to keep its connection alive (every 200 ms at
 * most) while the worker is not polling it. Frequent enough that a
 * replication source meets a short wal_sender_timeout even on a loaded
 * machine; the hook itself only acts when something is due. */
#define IDLE_EVERY_MS 200
static void source_idle(relay_worker *w)
{
    static _Thread_local int64_t last;
    if (!w->source || !w->source->ops->idle)
        return;
    int64_t now = now_mono_ms();
    if (now - last < IDLE_EVERY_MS)
        return;
    last = now;
    w->source->ops->idle(w->source);
}

/* Sleep for `ms`; a stop request cuts the sleep short unless `through_stop`
 * (used while finishing the in-flight batch), in which case only the
 * shutdown deadline does. */
static void pause_ms(relay_worker *w, int64_t ms, int through_stop)
{
    int64_t end = now_mono_ms() + ms;
    for (;;) {
        int64_t left = end - now_mono_ms();
        if (worker_stopping(w)) {
            if (!through_stop)
                return;
            int64_t dl = atomic_load(&w->stop_deadline_ms) - now_mono_ms();
            if (dl < left)
                left = dl;
        }
        if (left <= 0)
            return;
        if (worker_stopping(w))
            poll(NULL, 0, (int)(left > 50 ? 50 : left));
        else
            worker_wait(w, -1, 0, (int)(left > IDLE_EVERY_MS ? IDLE_EVERY_MS : left));
        source_idle(w);
    }
}

static int past_deadline(relay_worker *w)
{
    return worker_stopping(w) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms);
}

/* ---- PostgreSQL connection and ownership ------------------------------- */

static void drop_connection(relay_worker *w)
{
    if (w->pg) {
        PQfinish(w->pg);
        w->pg = NULL;
    }
    if (w->stats)
        atomic_store(&w->stats->pg_up, 0);
}

/* Release the pipeline's advisory lock explicitly, then disconnect. Closing
 * the connection releases it too, but only once the server's backend has
 * noticed the disconnect, a moment later: a relay of the group that looks at
 * pg_locks right after our "relay left" or "handover" NOTIFY would still
 * see the pipeline owned and leave it idle until its next discovery tick.
 * pg_advisory_unlock returns after the lock is gone. */
static void release_ownership(relay_worker *w)
{
    if (w->pg && !pg_broken(w->pg)) {
        char err[ERRLEN];
        const char *params[2] = {w->opts->group_id, w->cfg.name};
        PGresult *r = pg_query(w->pg, "SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", 2,
                               params, err, sizeof err);
        if (r)
            PQclear(r);
        else
            log_debug(w->cfg.name, "releasing the advisory lock: %s (the disconnect releases it)",
                      err);
    }
    drop_connection(w);
}

/* Connect and take the pipeline's advisory lock.
 * Returns 1 owned, 0 another relay owns it, -1 transient failure (err). */
static int acquire(relay_worker *w, char *err, size_t errlen)
{
    char app[96];
    snprintf(app, sizeof app, "pgtrickle-relay %.60s", w->cfg.name);
    w->pg = pg_connect(w->opts->postgres_url, app, err, errlen);
    if (!w->pg)
        return -1;
    const char *params[2] = {w->opts->group_id, w->cfg.name};
    PGresult *r = pg_query(w->pg, "SELECT pg_try_advisory_lock(hashtext($1), hashtext($2))", 2,
                           params, err, errlen);
    if (!r) {
        drop_connection(w);
        return -1;
    }
    int got = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    if (!got) {
        drop_connection(w);
        return 0;
    }
    return 1;
}

/* Make sure we hold a live, locked connection. Returns 1 ready, 0 lost
 * ownership to another relay, -1 stop requested. */
static int ensure_owned(relay_worker *w, relay_backoff *bo)
{
    char err[ERRLEN];
    while (!w->pg || pg_broken(w->pg)) {
        if (w->pg) {
            drop_connection(w);
            log_warn(w->cfg.name, "PostgreSQL connection lost: pipeline paused, reconnecting");
        }
        if (worker_stopping(w))
            return -1;
        int rc = acquire(w, err, sizeof err);
        if (rc == 1) {
            backoff_reset(bo);
            return 2; /* reacquired: caller must reopen the source */
        }
        if (rc == 0) {
            log_info(w->cfg.name, "another relay of group \"%s\" took the pipeline over",
                     w->opts->group_id);
            return 0;
        }
        if (w->stats)
            stats_error(w->stats, ERR_POSTGRES, "%s", err);
        int64_t d = backoff_next(bo);
        log_debug(w->cfg.name, "reconnect failed (%s); retrying in %lld ms", err, (long long)d);
        pause_ms(w, d, 0);
    }
    return 1;
}

/* ---- dead letters -------------------------------------------------------- */

int worker_dead_letter(relay_worker *w, const relay_msg *m, const char *error, char *err,
                       size_t errlen)
{
    /* Every field travels as bytes (binary parameters: no escaping, no
     * text conversion that could fail); relay_dead_letter_bytes() stores
     * them exactly and derives the readable columns. */
    const char *key = m->dedup_key ? m->dedup_key : "";
    const char *values[7] = {
        w->cfg.name, key, m->subject, m->payload, m->payload ? (m->payload_is_json ? "t" : "f") : NULL,
        error, relay_op_name(m->op),
    };
    int lengths[7] = {
        0, (int)msg_bytes(key, m->dedup_key_len), (int)msg_bytes(m->subject, m->subject_len),
        (int)m->payload_len, 0, (int)strlen(error), 0,
    };
    static const int formats[7] = {0, 1, 1, 1, 0, 1, 0};
    static const char sql[] = "SELECT pgtrickle.relay_dead_letter_bytes($1, $2::bytea, $3::bytea, "
                              "$4::bytea, $5::boolean, $6::bytea, $7)";
    PGresult *r = pg_exec_params_guarded(w->pg, sql, 7, values, lengths, formats, 0);
    if (r && PQresultStatus(r) == PGRES_TUPLES_OK) {
        PQclear(r);
        return 0;
    }
    const char *msg = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (msg)
        snprintf(err, errlen, "%s", msg);
    else
        pg_error(w->pg, err, errlen);
    PQclear(r);
    return -1;
}

/* ---- one batch ------------------------------------------------------------ */

/* Unix epoch microseconds (the formats' processing time). */
static int64_t wall_clock_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The row key of every event in the sink's format (the {key} variable and
 * the Kafka record key), before subjects are rendered. */
static void set_keys(relay_worker *w, relay_batch *b)
{
    relay_format f = w->sink->encode ? w->sink->format : RELAY_FORMAT_NATIVE;
    relay_buf tmp = {0};
    for (size_t i = 0; i < b->n; i++) {
        relay_msg *m = &b->msgs[i];
        if (m->key || !m->row_type)
            continue;
        buf_clear(&tmp);
        if (relay_format_key(f, m, &tmp))
            m->key = arena_strndup(&b->arena, tmp.data, tmp.len);
    }
    buf_free(&tmp);
}

/* Render subjects for a forward batch from the sink's template, or the
 * subject_overrides entry for the event's event_type or op, or the
 * source's default. Reverse sources set the subject themselves. */
static void render_subjects(relay_worker *w, relay_batch *b)
{
    const char *base = w->sink->subject_template ? w->sink->subject_template
                                                 : w->source->default_subject;
    set_keys(w, b);
    relay_buf tmp = {0};
    for (size_t i = 0; i < b->n; i++) {
        relay_msg *m = &b->msgs[i];
        if (m->subject)
            continue;
        const char *tmpl = relay_subject_template_for(&w->sink->fopts, m, base);
        if (!tmpl)
            continue;
        buf_clear(&tmp);
        subject_render(tmpl, m, &tmp);
        m->subject = arena_strndup(&b->arena, tmp.data, tmp.len);
    }
    buf_free(&tmp);
}

/* Encode every message's body once, in the sink's format, before its first
 * publish (retries and replays reuse it). An event the format cannot
 * represent is REJECTED with the reason, so it is dead-lettered here and
 * never reaches the sink. */
static void encode_bodies(relay_worker *w, relay_batch *b)
{
    if (!w->sink->encode)
        return;
    relay_format_ctx ctx = {
        .pipeline = w->cfg.name,
        .db = w->pg ? PQdb(w->pg) : NULL,
        .now_us = wall_clock_us(),
        .opts = &w->sink->fopts,
    };
    relay_buf tmp = {0};
    char why[512];
    for (size_t i = 0; i < b->n; i++) {
        relay_msg *m = &b->msgs[i];
        if (m->body || m->state != MSG_PENDING)
            continue;
        buf_clear(&tmp);
        if (relay_encode(w->sink->format, &ctx, m, &tmp, why, sizeof why) < 0) {
            msg_set_error(m, MSG_REJECTED, "cannot encode the event as %s: %s",
                          relay_format_name(w->sink->format), why);
            continue;
        }
        m->body = arena_strndup(&b->arena, tmp.data ? tmp.data : "", tmp.len);
        m->body_len = tmp.len;
    }
    buf_free(&tmp);
}

/* ---- read-ahead ---------------------------------------------------------- */

/* With a backlog, reading batch k+1 (a wait on PostgreSQL) and publishing
 * batch k (a wait on the broker) done one after the other make the
 * pipeline as slow as their sum. So when the source says its next poll
 * would return at once (can_read_ahead) and the sink does not write through
 * the worker's PostgreSQL connection, the first publish of batch k runs on a
 * second thread, the publisher, while the worker thread polls batch k+1 and
 * prepares it (subjects, bodies). Everything else stays on the worker
 * thread and in order: the results of batch k, its retries and dead
 * letters, its ack, then batch k+1. The source is only ever called from the
 * worker thread; the sink from one thread at a time, handed over under the
 * publisher's mutex. A batch read ahead is dropped, and the source reopened
 * at its durable position, whenever batch k is not acked. */

typedef struct worker_publisher {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;   /* hand-over, completion and quit (CLOCK_MONOTONIC) */
    int busy;            /* a publish was handed over and has not returned */
    int quit;
    relay_msg **msgs;    /* the hand-over: sink->publish(msgs, n) */
    size_t n;
    int rc;
    char err[ERRLEN];
} worker_publisher;

/* The next batch, polled while the current one is published. */
typedef struct read_ahead {
    relay_batch *b;      /* receives it */
    size_t max;
    int polled;          /* the poll ran; n is its result */
    int n;               /* events, 0 none, -1 failed (err) */
    char err[ERRLEN];
} read_ahead;

static void *publisher_main(void *arg)
{
    relay_worker *w = arg;
    worker_publisher *p = w->pub;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->busy && !p->quit)
            pthread_cond_wait(&p->cv, &p->mu);
        if (!p->busy)
            break;
        pthread_mutex_unlock(&p->mu);
        int rc = w->sink->ops->publish(w->sink, p->msgs, p->n, p->err, sizeof p->err);
        pthread_mutex_lock(&p->mu);
        p->rc = rc;
        p->busy = 0;
        pthread_cond_broadcast(&p->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* The publisher thread, started at the first read-ahead; NULL when no
 * thread can be started (the worker then publishes itself). */
static worker_publisher *publisher(relay_worker *w)
{
    if (w->pub)
        return w->pub;
    worker_publisher *p = xcalloc(1, sizeof *p);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, &ca);
    pthread_condattr_destroy(&ca);
    w->pub = p;
    if (pthread_create(&p->thread, NULL, publisher_main, w) != 0) {
        log_warn(w->cfg.name, "cannot start a publisher thread: reading and publishing "
                 "one after the other");
        pthread_cond_destroy(&p->cv);
        pthread_mutex_destroy(&p->mu);
        free(p);
        w->pub = NULL;
    }
    return w->pub;
}

/* End the publisher thread (it is idle: every hand-over is waited for). */
static void publisher_stop(relay_worker *w)
{
    worker_publisher *p = w->pub;
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
    w->pub = NULL;
}

/* May the worker poll the next batch while this one is published? */
static int may_read_ahead(relay_worker *w)
{
    return w->source->ops->can_read_ahead && !w->sink->uses_worker_pg && !worker_stopping(w) &&
           w->source->ops->can_read_ahead(w->source);
}

/* Subjects and bodies of a polled batch, before its first publish. */
static void prepare_batch(relay_worker *w, relay_batch *b)
{
    if (w->cfg.forward)
        render_subjects(w, b);
    encode_bodies(w, b);
}

/* sink->publish(msgs, n) on the publisher thread while this thread polls
 * the next batch into ra and prepares it, calling the source's idle hook
 * while it waits for the publish. Returns publish()'s result. */
static int publish_reading_ahead(relay_worker *w, relay_msg **msgs, size_t n, char *err,
                                 size_t errlen, read_ahead *ra)
{
    worker_publisher *p = publisher(w);
    if (!p)
        return w->sink->ops->publish(w->sink, msgs, n, err, errlen);
    pthread_mutex_lock(&p->mu);
    p->msgs = msgs;
    p->n = n;
    p->busy = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);

    ra->n = w->source->ops->poll(w->source, ra->b, ra->max, ra->err, sizeof ra->err);
    ra->polled = 1;
    if (ra->n > 0) {
        prepare_batch(w, ra->b);
        atomic_fetch_add(&w->stats->batches_read_ahead, 1);
    }

    pthread_mutex_lock(&p->mu);
    while (p->busy) {
        struct timespec until = deadline_after_ms(CLOCK_MONOTONIC, IDLE_EVERY_MS);
        pthread_cond_timedwait(&p->cv, &p->mu, &until);
        if (p->busy) {
            pthread_mutex_unlock(&p->mu);
            source_idle(w);
            pthread_mutex_lock(&p->mu);
        }
    }
    int rc = p->rc;
    if (rc < 0)
        snprintf(err, errlen, "%s", p->err);
    pthread_mutex_unlock(&p->mu);
    return rc;
}

/* The stop deadline passed with messages unconfirmed: say that they stay
 * unacknowledged (the source delivers them again). */
static void give_up(relay_worker *w, size_t unconfirmed)
{
    log_warn(w->cfg.name, "stop deadline reached with %zu messages unconfirmed: not "
             "acknowledged, they will be delivered again", unconfirmed);
}

#ifdef RELAY_TEST_ACK_FIRST
/* Deliberately wrong, for the soak harness's self-test only (meson option
 * test_ack_first): the batch is acknowledged before it is published, and
 * published once; whatever fails is dropped. This is the data loss of the
 * tools the relay replaces, which tests/soak must detect. */
static void broken_ack_first(relay_worker *w, relay_batch *b)
{
    char err[ERRLEN];
    if (w->source->ops->ack(w->source, b, err, sizeof err) < 0)
        return;
    encode_bodies(w, b);
    relay_msg **all = xmalloc(b->n * sizeof *all);
    for (size_t i = 0; i < b->n; i++) {
        all[i] = &b->msgs[i];
        all[i]->state = MSG_PENDING;
    }
    if (w->sink->ops->publish(w->sink, all, b->n, err, sizeof err) < 0)
        w->sink_open = 0;
    free(all);
}
#endif

/* Publish until every message is CONFIRMED or DEAD; with `ra`, read the
 * next batch during the first publish (read-ahead above).
 * Returns 0 done, -1 abandoned (shutdown deadline or lost PostgreSQL). */
static int deliver(relay_worker *w, relay_batch *b, relay_backoff *bo, read_ahead *ra)
{
    char err[ERRLEN];
    relay_msg **pending = xmalloc(b->n * sizeof *pending);
    int result = -1, told_stopping = 0, told_dlq_failure = 0;
    uint64_t t0 = now_mono_us();
    encode_bodies(w, b);
    for (;;) {
        size_t n = 0, rejected = 0;
        for (size_t i = 0; i < b->n; i++) {
            relay_msg *m = &b->msgs[i];
            if (m->state == MSG_PENDING || m->state == MSG_RETRY)
                pending[n++] = m;
            else if (m->state == MSG_REJECTED)
                rejected++;
        }
        if (n == 0 && rejected == 0) {
            result = 0;
            break;
        }
        int failed = 0;
        if (n > 0) {
            for (size_t i = 0; i < n; i++)
                pending[i]->state = MSG_PENDING;
            int rc = w->sink_open ? 0 : w->sink->ops->open(w->sink, err, sizeof err);
            if (rc == 0) {
                w->sink_open = 1;
                if (ra && !ra->polled)
                    rc = publish_reading_ahead(w, pending, n, err, sizeof err, ra);
                else
                    rc = w->sink->ops->publish(w->sink, pending, n, err, sizeof err);
            }
            source_idle(w);
            if (rc < 0) {
                w->sink_open = 0;
                for (size_t i = 0; i < n; i++)
                    pending[i]->state = MSG_RETRY;
                if (atomic_exchange(&w->stats->sink_up, 0))
                    log_warn(w->cfg.name, "sink %s unavailable: %s", w->cfg.sink_type, err);
                stats_error(w->stats, ERR_SINK, "sink: %s", err);
                failed = 1;
            } else {
                if (!atomic_exchange(&w->stats->sink_up, 1))
                    log_info(w->cfg.name, "sink %s available again", w->cfg.sink_type);
                uint64_t confirmed = 0;
                for (size_t i = 0; i < n; i++) {
                    relay_msg *m = pending[i];
                    if (m->state == MSG_CONFIRMED) {
                        confirmed++;
                        atomic_fetch_add_explicit(&w->stats->published_by_op[m->op], 1,
                                                  memory_order_relaxed);
                    } else if (m->state == MSG_PENDING) {
                        m->state = MSG_RETRY; /* the sink did not say: treat as transient */
                        m->error = "sink gave no confirmation";
                    }
                    if (m->state == MSG_RETRY)
                        failed = 1;
                }
                atomic_fetch_add(&w->stats->published, confirmed);
                if (failed)
                    stats_error(w->stats, ERR_SINK, "sink: %s",
                                pending[0]->error ? pending[0]->error : "publish failed");
            }
        }
        /* Dead-letter permanent failures. */
        for (size_t i = 0; i < b->n; i++) {
            relay_msg *m = &b->msgs[i];
            if (m->state != MSG_REJECTED)
                continue;
            const char *why = m->error ? m->error : "rejected by the sink";
            if (worker_dead_letter(w, m, why, err, sizeof err) < 0) {
                stats_error(w->stats, ERR_POSTGRES, "dead-letter insert failed: %s", err);
                if (!told_dlq_failure && !pg_broken(w->pg)) {
                    told_dlq_failure = 1;
                    log_warn(w->cfg.name, "writing a dead letter failed (%s): nothing of the "
                             "batch is acknowledged, retrying", err);
                }
                failed = 1;
                if (pg_broken(w->pg))
                    goto out;
                break;
            }
            m->state = MSG_DEAD;
            atomic_fetch_add(&w->stats->dead_lettered, 1);
            atomic_fetch_add(&w->stats->errors[ERR_PERMANENT], 1);
            log_warn(w->cfg.name, "message %.*s%s dead-lettered: %s", (int)LOG_KEY_MAX,
                     m->dedup_key, strlen(m->dedup_key) > LOG_KEY_MAX ? "..." : "", why);
        }
        if (!failed)
            continue;
        if (!atomic_load(&w->stats->failing_since_ms))
            atomic_store(&w->stats->failing_since_ms, now_wall_ms());
        if (past_deadline(w)) {
            give_up(w, n);
            goto out;
        }
        if (pg_broken(w->pg))
            goto out;
        if (worker_stopping(w) && !told_stopping) {
            told_stopping = 1;
            log_info(w->cfg.name, "stopping with %zu messages unconfirmed: retrying them for "
                     "up to %lld ms more, then leaving them unacknowledged",
                     n, (long long)(atomic_load(&w->stop_deadline_ms) - now_mono_ms()));
        }
        int64_t d = backoff_next(bo);
        if (w->sink->retry_after_ms > d)
            d = w->sink->retry_after_ms; /* the sink was asked to wait (Retry-After) */
        w->sink->retry_after_ms = 0;
        log_debug(w->cfg.name, "retrying %zu messages in %lld ms", n, (long long)d);
        pause_ms(w, d, 1);
        if (past_deadline(w)) {
            give_up(w, n);
            goto out;
        }
    }
    stats_observe_latency(w->stats, now_mono_us() - t0);
out:
    atomic_store(&w->stats->failing_since_ms, 0);
    free(pending);
    return result;
}

/* The sink's own details for /status (the HTTP thread never calls into a
 * sink): refreshed after every acknowledged batch. */
static void publish_sink_info(relay_worker *w)
{
    if (!w->sink->ops->describe)
        return;
    relay_buf b = {0};
    w->sink->ops->describe(w->sink, &b);
    stats_set_sink_info(w->stats, b.data);
    buf_free(&b);
}

/* ---- dead-letter replay ---------------------------------------------------- */

/* Re-publish the dead letters an operator asked to replay with
 * pgtrickle.relay_dlq_replay(). The rows are claimed in a transaction that
 * commits only after the sink confirmed them (the same rules as any batch:
 * a message rejected again is dead-lettered again), so a crash or a sink
 * failure leaves them requested. Checked at most once a second, between
 * batches. Returns 0, or -1 when the PostgreSQL connection failed. */
static int replay_dead_letters(relay_worker *w, relay_backoff *bo, int64_t *last_check)
{
    char err[ERRLEN];
    int64_t now = now_mono_ms();
    if (now - *last_check < 1000 || PQtransactionStatus(w->pg) != PQTRANS_IDLE)
        return 0;
    *last_check = now;
    if (pg_exec(w->pg, "BEGIN", 0, NULL, err, sizeof err) < 0)
        return -1;
    const char *p[1] = {w->cfg.name};
    /* The original bytes (binary results: bytea as raw bytes), or for rows
     * written before catalog version 2 the text columns. */
    PGresult *r = PQexecParams(w->pg,
                               "SELECT COALESCE(dedup_key_raw, convert_to(dedup_key, 'UTF8')),"
                               " COALESCE(subject_raw, convert_to(subject, 'UTF8')),"
                               " COALESCE(payload_raw, convert_to(payload::text, 'UTF8')),"
                               " op, COALESCE(payload_is_json, true)"
                               " FROM pgtrickle.relay_dlq_take_replays($1, 500)",
                               1, NULL, p, NULL, NULL, 1);
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) == 0) {
        if (r && PQresultStatus(r) != PGRES_TUPLES_OK)
            log_warn(w->cfg.name, "reading dead letters to replay failed: %s",
                     PQresultErrorMessage(r));
        PQclear(r);
        PQclear(PQexec(w->pg, "ROLLBACK"));
        return pg_broken(w->pg) ? -1 : 0;
    }
    relay_batch b = {0};
    for (int i = 0; i < PQntuples(r); i++) {
        relay_msg *m = batch_add(&b);
        m->dedup_key_len = (size_t)PQgetlength(r, i, 0);
        m->dedup_key = arena_strndup(&b.arena, PQgetvalue(r, i, 0), m->dedup_key_len);
        if (!PQgetisnull(r, i, 1)) {
            m->subject_len = (size_t)PQgetlength(r, i, 1);
            m->subject = arena_strndup(&b.arena, PQgetvalue(r, i, 1), m->subject_len);
        }
        if (!PQgetisnull(r, i, 2)) {
            m->payload_len = (size_t)PQgetlength(r, i, 2);
            m->payload = arena_strndup(&b.arena, PQgetvalue(r, i, 2), m->payload_len);
        }
        m->op = relay_op_parse(PQgetisnull(r, i, 3)
                                   ? NULL
                                   : arena_strndup(&b.arena, PQgetvalue(r, i, 3),
                                                   (size_t)PQgetlength(r, i, 3)));
        int was_json = !PQgetisnull(r, i, 4) && PQgetvalue(r, i, 4)[0] != 0;
        m->payload_is_json = m->payload && was_json ? json_valid(m->payload, m->payload_len) : 0;
    }
    PQclear(r);
    log_info(w->cfg.name, "replaying %zu dead letters", b.n);
    int rc = deliver(w, &b, bo, NULL);
    if (rc == 0 && pg_exec(w->pg, "COMMIT", 0, NULL, err, sizeof err) == 0) {
        log_info(w->cfg.name, "%zu dead letters replayed", b.n);
    } else {
        PQclear(PQexec(w->pg, "ROLLBACK"));
        log_warn(w->cfg.name, "dead-letter replay not completed; the rows stay requested");
    }
    batch_free(&b);
    return pg_broken(w->pg) ? -1 : 0;
}

/* ---- the loop ----------------------------------------------------------- */

static void become_owner(relay_worker *w)
{
    if (!w->stats) {
        w->stats = stats_register(w->cfg.name, w->cfg.forward ? "forward" : "reverse",
                                  w->cfg.source_type, w->cfg.sink_type);
        stats_ref(w->stats); /* the worker's own reference, next to the registry's */
        atomic_store(&w->stats->started_ms, now_wall_ms());
        atomic_store(&w->stats->last_progress_ms, now_wall_ms());
    }
    atomic_store(&w->stats->pg_up, 1);
    atomic_store(&w->stats->running, 1);
    /* A loop that has not come round, or a batch that has kept failing, for
     * --stall-timeout (or three poll intervals, if longer) is stuck: /health
     * reports it. */
    int64_t stall = w->opts->stall_timeout_ms > 0 ? w->opts->stall_timeout_ms : 60000;
    json_t *pi = json_object_get(w->cfg.source, "poll_interval_ms");
    if (json_is_integer(pi) && 3 * json_integer_value(pi) > stall)
        stall = 3 * (int64_t)json_integer_value(pi);
    atomic_store(&w->stats->stall_after_ms, stall);
    atomic_store(&w->state, WORKER_RUNNING);
}

static void run(relay_worker *w)
{
    char err[ERRLEN];
    relay_backoff bo;
    backoff_init(&bo);
    relay_batch batch = {0}, ahead = {0};
    read_ahead ra = {.b = &ahead};
    int have_ahead = 0; /* `ahead` holds the result of a read-ahead poll (ra.n) */
    int source_open = 0;
    int64_t last_replay_check = 0;
    int64_t max_batch = 100000; /* sources apply their own batch size below this */

    int own = ensure_owned(w, &bo);
    if (own <= 0) {
        atomic_store(&w->state, own == 0 ? WORKER_NOT_OWNER : WORKER_EXITED);
        return;
    }
    become_owner(w);
#ifdef RELAY_TEST_ACK_FIRST
    log_error(w->cfg.name, "this relay was built with test_ack_first: it acknowledges events "
              "before publishing them and LOSES DATA on purpose (soak harness self-test only)");
#endif
    log_info(w->cfg.name, "pipeline started (%s %s -> %s, group \"%s\")",
             w->cfg.forward ? "forward" : "reverse", w->cfg.source_type, w->cfg.sink_type,
             w->opts->group_id);
    json_t *bs = json_object_get(w->cfg.source, "batch_size");
    if (w->source->max_events)
        max_batch = (int64_t)w->source->max_events;
    else if (json_is_integer(bs) && json_integer_value(bs) > 0)
        max_batch = (int64_t)json_integer_value(bs);
    else if (w->source->default_batch)
        max_batch = (int64_t)w->source->default_batch;

    while (!worker_stopping(w)) {
        own = ensure_owned(w, &bo);
        if (own < 0)
            break;
        if (own == 0) {
            atomic_store(&w->state, WORKER_NOT_OWNER);
            break;
        }
        if (own == 2) {
            log_info(w->cfg.name, "PostgreSQL connection restored; pipeline resumed");
            atomic_store(&w->stats->pg_up, 1);
            source_open = 0;
            have_ahead = 0; /* read on the lost connection: read again after reopening */
            w->sink_open = 0;
        }
        if (replay_dead_letters(w, &bo, &last_replay_check) < 0)
            continue;
        /* Connect the sink before reading anything: an unreachable sink is
         * reported (and retried) even while the pipeline is idle, and no
         * event is read that could not be delivered. */
        if (!w->sink_open) {
            if (w->sink->ops->open(w->sink, err, sizeof err) < 0) {
                stats_error(w->stats, ERR_SINK, "sink: %s", err);
                if (atomic_exchange(&w->stats->sink_up, 0))
                    log_warn(w->cfg.name, "sink %s unavailable: %s", w->cfg.sink_type, err);
                pause_ms(w, backoff_next(&bo), 0);
                continue;
            }
            w->sink_open = 1;
            if (!atomic_exchange(&w->stats->sink_up, 1))
                log_info(w->cfg.name, "sink %s available again", w->cfg.sink_type);
        }
        if (!source_open) {
            if (w->source->ops->open(w->source, err, sizeof err) < 0) {
                stats_error(w->stats, pg_broken(w->pg) ? ERR_POSTGRES : ERR_SOURCE, "source: %s", err);
                if (atomic_exchange(&w->stats->source_up, 0))
                    log_warn(w->cfg.name, "source %s unavailable: %s", w->cfg.source_type, err);
                pause_ms(w, backoff_next(&bo), 0);
                continue;
            }
            source_open = 1;
            if (!atomic_exchange(&w->stats->source_up, 1))
                log_debug(w->cfg.name, "source %s open", w->cfg.source_type);
        }

        int n, prepared = 0;
        if (have_ahead && source_open) {
            relay_batch t = batch;
            batch = ahead;
            ahead = t;
            n = ra.n;
            prepared = 1; /* subjects and bodies done while it was read */
            if (n < 0)
                snprintf(err, sizeof err, "%s", ra.err);
        } else {
            batch_reset(&batch);
            n = w->source->ops->poll(w->source, &batch, (size_t)max_batch, err, sizeof err);
        }
        have_ahead = 0;
        if (n < 0) {
            stats_error(w->stats, pg_broken(w->pg) ? ERR_POSTGRES : ERR_SOURCE, "source: %s", err);
            if (atomic_exchange(&w->stats->source_up, 0))
                log_warn(w->cfg.name, "source %s failed: %s", w->cfg.source_type, err);
            source_open = 0;
            pause_ms(w, backoff_next(&bo), 0);
            continue;
        }
        atomic_store(&w->stats->source_up, 1);
        if (n == 0) {
            atomic_store(&w->stats->last_progress_ms, now_wall_ms());
            continue;
        }
        atomic_fetch_add(&w->stats->consumed, (uint64_t)n);
        if (w->cfg.forward && !prepared)
            render_subjects(w, &batch);
#ifdef RELAY_TEST_ACK_FIRST
        broken_ack_first(w, &batch);
        continue;
#endif

        read_ahead *rap = NULL;
        if (may_read_ahead(w)) {
            batch_reset(&ahead);
            ra.max = (size_t)max_batch;
            ra.polled = 0;
            rap = &ra;
        }
        int delivered = deliver(w, &batch, &bo, rap);
        if (delivered < 0 && rap && ra.polled && ra.n > 0 && w->source->ops->release)
            w->source->ops->release(w->source, &ahead);
        if (delivered < 0) {
            if (w->source->ops->release)
                w->source->ops->release(w->source, &batch);
            source_open = 0; /* re-read from the durable position */
            if (past_deadline(w))
                break;
            continue;
        }
        if (w->source->ops->ack(w->source, &batch, err, sizeof err) < 0) {
            stats_error(w->stats, pg_broken(w->pg) ? ERR_POSTGRES : ERR_SOURCE, "ack: %s", err);
            log_warn(w->cfg.name, "acknowledging the batch failed (%s): it will be redelivered", err);
            source_open = 0;
            pause_ms(w, backoff_next(&bo), 0);
            continue;
        }
        backoff_reset(&bo);
        atomic_fetch_add(&w->stats->batches, 1);
        atomic_store(&w->stats->last_progress_ms, now_wall_ms());
        publish_sink_info(w);
        have_ahead = rap && ra.polled;
    }
    if (have_ahead && ra.n > 0 && w->source->ops->release)
        w->source->ops->release(w->source, &ahead);
    batch_free(&batch);
    batch_free(&ahead);
    if (atomic_load(&w->state) == WORKER_RUNNING)
        atomic_store(&w->state, WORKER_EXITED);
}

static void *worker_main(void *arg)
{
    relay_worker *w = arg;
    run(w);
    publisher_stop(w);
    if (w->source) {
        w->source->ops->destroy(w->source);
        w->source = NULL;
    }
    if (w->sink) {
        w->sink->ops->destroy(w->sink);
        w->sink = NULL;
    }
    release_ownership(w);
    if (w->stats) {
        atomic_store(&w->stats->running, 0);
        if (atomic_load(&w->state) == WORKER_EXITED)
            log_info(w->cfg.name, "pipeline stopped");
    }
    return NULL;
}

/* ---- lifecycle ------------------------------------------------------------ */

relay_worker *worker_start(relay_pipeline_cfg *cfg, const relay_options *opts, char *err,
                           size_t errlen)
{
    const relay_source_ops *so = registry_source(cfg->source_type);
    if (!so) {
        snprintf(err, errlen, "config.source_type: unknown source type \"%s\" (available: %s)",
                 cfg->source_type, registry_source_names());
        return NULL;
    }
    const relay_sink_ops *ko = registry_sink(cfg->sink_type);
    if (!ko) {
        snprintf(err, errlen, "config.sink.type: unknown sink type \"%s\" (available: %s)",
                 cfg->sink_type, registry_sink_names());
        return NULL;
    }
    relay_worker *w = xcalloc(1, sizeof *w);
    w->opts = opts;
    w->wake[0] = w->wake[1] = -1;
    w->cfg = *cfg; /* borrowed until we know creation succeeded */
    char host[64] = "relay";
    gethostname(host, sizeof host - 1);
    snprintf(w->worker_id, sizeof w->worker_id, "%s:%d", host, (int)getpid());

    w->source = so->create(cfg->source, w, err, errlen);
    if (!w->source)
        goto fail;
    w->source->ops = so;
    w->source->w = w;
    w->sink = ko->create(cfg->sink, w, err, errlen);
    if (!w->sink)
        goto fail;
    w->sink->ops = ko;
    w->sink->w = w;
    if (pipe2(w->wake, O_CLOEXEC | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "pipe: %s", strerror(errno));
        goto fail;
    }
    memset(cfg, 0, sizeof *cfg); /* ownership moved */
    atomic_store(&w->state, WORKER_STARTING);
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
        snprintf(err, errlen, "cannot start a thread");
        *cfg = w->cfg;
        memset(&w->cfg, 0, sizeof w->cfg);
        goto fail;
    }
    w->thread_started = 1;
    return w;
fail:
    if (w->source)
        w->source->ops->destroy(w->source);
    if (w->sink)
        w->sink->ops->destroy(w->sink);
    if (w->wake[0] >= 0) {
        close(w->wake[0]);
        close(w->wake[1]);
    }
    free(w);
    return NULL;
}

void worker_request_stop(relay_worker *w, int64_t deadline_ms)
{
    atomic_store(&w->stop_deadline_ms, deadline_ms);
    if (!atomic_exchange(&w->stop, 1)) {
        char c = 1;
        ssize_t rc = write(w->wake[1], &c, 1);
        (void)rc;
    }
}

void worker_free(relay_worker *w)
{
    if (!w)
        return;
    if (w->thread_started)
        pthread_join(w->thread, NULL);
    if (w->stats) {
        stats_unregister(w->stats);
        stats_unref(w->stats);
    }
    close(w->wake[0]);
    close(w->wake[1]);
    pipeline_cfg_free(&w->cfg);
    free(w);
}
