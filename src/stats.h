/*
 * stats.h - per-pipeline counters and health, read by /metrics, /health and
 * /status.
 *
 * Workers update their own relay_stats with relaxed atomics (no lock on the
 * hot path); the HTTP thread reads them. Text fields (last error, position)
 * are guarded by the entry's mutex. Entries are reference counted: the
 * registry holds one reference while the pipeline is owned by this process,
 * the worker holds one while it runs, and the HTTP thread takes one while it
 * renders a response, so an entry can never be freed under a reader.
 */
#ifndef RELAY_STATS_H
#define RELAY_STATS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>

#include "buf.h"
#include "message.h"

/* Error kinds for pgtrickle_relay_publish_errors_total{kind}. */
typedef enum {
    ERR_SOURCE = 0, /* polling or acking the source failed (transient) */
    ERR_SINK,       /* publishing failed transiently (retried) */
    ERR_PERMANENT,  /* a message was rejected permanently (dead-lettered) */
    ERR_DECODE,     /* a source payload could not be decoded (dead-lettered) */
    ERR_POSTGRES,   /* the worker's PostgreSQL connection failed */
    ERR_KIND_COUNT
} relay_err_kind;

/* Name of an error kind as used in the metric label. Static storage. */
const char *relay_err_kind_name(relay_err_kind k);

/* Publish-latency histogram buckets, in seconds (upper bounds, +Inf implicit). */
#define RELAY_LATENCY_BUCKETS 12
extern const double relay_latency_bounds[RELAY_LATENCY_BUCKETS];

typedef struct relay_stats {
    char *name;            /* pipeline name (owned) */
    char *direction;       /* "forward" | "reverse" (owned) */
    char *source_type;     /* e.g. "outbox" (owned) */
    char *sink_type;       /* e.g. "file" (owned) */

    _Atomic uint64_t published;        /* messages confirmed by the sink */
    _Atomic uint64_t consumed;         /* messages read from the source */
    _Atomic uint64_t errors[ERR_KIND_COUNT];
    _Atomic uint64_t dedup_skipped;    /* inbox rows skipped by ON CONFLICT */
    _Atomic uint64_t dead_lettered;    /* messages written to relay_dlq */
    _Atomic uint64_t batches;          /* batches acknowledged to the source */
    _Atomic uint64_t batches_read_ahead; /* batches polled while the previous one was published */

    _Atomic int running;       /* 1 while a worker owns and runs the pipeline */
    _Atomic int pg_up;         /* worker's PostgreSQL connection is usable */
    _Atomic int source_up;     /* source reachable */
    _Atomic int sink_up;       /* sink reachable */
    _Atomic int64_t started_ms;        /* wall clock ms when the worker took ownership */
    _Atomic int64_t last_progress_ms;  /* wall clock ms of the last ack, or of the last empty poll */
    _Atomic int64_t stall_after_ms;    /* degraded when last_progress_ms is older than this (0: never) */
    _Atomic int64_t failing_since_ms;  /* wall clock ms when the batch in flight first failed; 0: none */
    _Atomic int64_t lag_ms;            /* age of the newest acked event when acked, ms */
    _Atomic int64_t replication_lag_bytes; /* CDC only; -1 when not applicable */
    _Atomic int64_t confirmed_lsn;     /* CDC only: last LSN acknowledged to the server; -1 n/a */
    _Atomic uint64_t published_by_op[RELAY_OP_COUNT]; /* confirmed events per relay_op */
    _Atomic uint64_t backfill_rows;    /* CDC: backfill rows confirmed (whole chunks) */
    _Atomic uint64_t backfill_chunks;  /* CDC: backfill chunks confirmed */
    _Atomic int backfills_running;     /* CDC: 1 while the pipeline works on a backfill */

    /* Publish latency (poll -> sink confirmation), cumulative buckets. */
    _Atomic uint64_t latency_buckets[RELAY_LATENCY_BUCKETS];
    _Atomic uint64_t latency_count;
    _Atomic uint64_t latency_sum_us;

    pthread_mutex_t mu;        /* guards the fields below */
    char last_error[512];      /* last error text, never a secret ("" when none) */
    int64_t last_error_ms;
    relay_buf position;        /* source position as a JSON object, e.g. {"last_outbox_id":12} */
    relay_buf sink_info;       /* the sink's describe() output, a JSON object ("{}" when none) */

    _Atomic int refs;
} relay_stats;

/* Create a stats entry with one reference and add it to the registry. */
relay_stats *stats_register(const char *name, const char *direction,
                            const char *source_type, const char *sink_type);
/* Remove the entry from the registry (drops the registry's reference). */
void stats_unregister(relay_stats *s);
void stats_ref(relay_stats *s);
void stats_unref(relay_stats *s);

/* Record a publish latency sample in microseconds. */
void stats_observe_latency(relay_stats *s, uint64_t usec);
/* Record an error: increments the counter and stores the text (copied). */
void stats_error(relay_stats *s, relay_err_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Replace the position JSON object (copied). */
void stats_set_position(relay_stats *s, const char *json);
/* Replace the sink details JSON object (copied). */
void stats_set_sink_info(relay_stats *s, const char *json);

/* Why a running pipeline is degraded, or NULL when it is healthy. */
const char *stats_degraded_reason(relay_stats *s, int64_t now_ms);

/* Snapshot the registry: returns an array of referenced entries (caller
 * unrefs each and frees the array) and stores the count in *n. */
relay_stats **stats_snapshot(size_t *n);

/* Process start time (wall clock ms), set by stats_init(). */
void stats_init(void);
int64_t stats_uptime_seconds(void);

/* The relay group as the coordinator last saw it (coordinator.c): relays
 * alive in the group and this relay's fair share of the pipelines; both 0
 * until the first reconcile. */
void stats_set_group(int relays, int fair_share);
void stats_get_group(int *relays, int *fair_share);

/* Whether the coordinator reaches the database: up = 1 once it connected
 * and found the catalog, 0 with the error text (copied; libpq's message,
 * never a secret) while it cannot. Before the first attempt the state is
 * "connecting". /health is 503 while the database is not reachable. */
void stats_set_database(int up, const char *error);
/* 1 up, 0 down (error copied into err), -1 not yet connected. */
int stats_get_database(char *err, size_t errlen);

/* Pipelines this relay could not load (a bad key, a missing secret, an
 * unknown type): listed in /status, counted in
 * pgtrickle_relay_pipeline_rejected and reported to relay_status.
 * stats_set_rejected records or replaces the error (copied);
 * stats_clear_rejected forgets it. */
void stats_set_rejected(const char *name, int forward, const char *error);
void stats_clear_rejected(const char *name, int forward);
typedef struct relay_rejected {
    char *name;
    int forward;
    char *error;
} relay_rejected;
/* A copy of the list (caller frees with stats_rejected_free). */
relay_rejected *stats_rejected_list(size_t *n);
void stats_rejected_free(relay_rejected *list, size_t n);

/* Wall-clock and monotonic time in milliseconds. */
int64_t now_wall_ms(void);
int64_t now_mono_ms(void);
uint64_t now_mono_us(void);
/* The absolute time `ms` milliseconds (>= 0) from now on `clock`
 * (CLOCK_MONOTONIC or CLOCK_REALTIME), normalised, for
 * pthread_cond_timedwait: the condition variable must use the same clock
 * (pthread_condattr_setclock; REALTIME is the default). */
struct timespec deadline_after_ms(clockid_t clock, int64_t ms);

#endif
