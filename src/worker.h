/*
 * worker.h - one pipeline's relay loop, on its own thread and its own
 * PostgreSQL connection (SPEC section 4).
 *
 * The worker owns the pipeline only while it holds
 *   pg_try_advisory_lock(hashtext(group_id), hashtext(pipeline_name))
 * on its connection; if that connection drops it stops publishing at once
 * and goes back to acquiring. Its loop is the one place delivery rules live:
 *   poll source -> publish to sink -> wait for confirmation
 *   -> dead-letter permanent failures -> ack the source -> repeat
 * with jittered exponential backoff (100 ms .. 30 s) on transient errors and
 * nothing acknowledged that the sink has not confirmed. With a backlog it
 * reads the next batch while the sink publishes the current one
 * ("read-ahead" in worker.c); acknowledgements stay in order.
 */
#ifndef RELAY_WORKER_H
#define RELAY_WORKER_H

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "sink/sink.h"
#include "source/source.h"
#include "stats.h"

typedef enum {
    WORKER_STARTING = 0, /* connecting / trying the lock */
    WORKER_RUNNING,      /* owns the pipeline */
    WORKER_NOT_OWNER,    /* another relay holds the lock; thread exited */
    WORKER_FAILED,       /* bad config; thread exited (log line names the key) */
    WORKER_EXITED,       /* stopped on request */
} worker_state;

typedef struct relay_worker {
    relay_pipeline_cfg cfg;      /* owned */
    const relay_options *opts;   /* process options (borrowed, outlives the worker) */
    char worker_id[160];         /* "<host>:<pid>" recorded with offsets */

    PGconn *pg;                  /* own connection; holds the advisory lock */
    relay_source *source;
    relay_sink *sink;
    int sink_open;               /* sink->open succeeded and no publish failed since */
    struct worker_publisher *pub; /* read-ahead: the thread that publishes meanwhile (worker.c) */
    relay_stats *stats;          /* referenced */

    pthread_t thread;
    int thread_started;
    atomic_int state;            /* worker_state */
    atomic_int stop;             /* graceful stop requested */
    _Atomic int64_t stop_deadline_ms; /* monotonic ms; in-flight work abandoned after it */
    int wake[2];                 /* pipe: a byte interrupts worker_wait() */
} relay_worker;

/* Validate `cfg` by creating its source and sink (nothing is connected),
 * then start the worker thread. On success the contents of cfg move into
 * the worker. Returns NULL with a message naming the bad key (cfg is then
 * untouched and still owned by the caller). */
relay_worker *worker_start(relay_pipeline_cfg *cfg, const relay_options *opts, char *err,
                           size_t errlen);

/* Ask the worker to stop: it finishes and acks the batch in flight if that
 * completes before `deadline_ms` (monotonic), then releases its lock. */
void worker_request_stop(relay_worker *w, int64_t deadline_ms);

/* Join the thread and free the worker. */
void worker_free(relay_worker *w);

/* For sources and sinks: wait until `fd` is ready for `events` (POLLIN...),
 * `timeout_ms` passes, or a stop is requested. fd may be -1 to just sleep.
 * Returns 1 ready, 0 timeout, -1 stop requested. */
int worker_wait(relay_worker *w, int fd, short events, int timeout_ms);

/* 1 once a stop has been requested. */
int worker_stopping(relay_worker *w);

/* Write a message to pgtrickle.relay_dlq through the worker's connection.
 * Returns 0, or -1 (transient; the caller retries). */
int worker_dead_letter(relay_worker *w, const relay_msg *m, const char *error,
                       char *err, size_t errlen);

#endif
