/*
 * stats.c - per-pipeline counters, the process-wide registry of them, and
 * the clocks everything else uses.
 *
 * Concurrency model:
 *
 *   - Counters, gauges and the latency histogram are C11 atomics. Workers
 *     update them with relaxed operations (they are statistics: no other
 *     memory is published through them), readers load them the same way.
 *   - The two text fields (last error, position) are guarded by the entry's
 *     own mutex, held only for a copy.
 *   - The registry is a dynamic array of entry pointers behind one mutex.
 *     Each slot holds a reference; stats_snapshot() copies the array under
 *     the lock and takes a reference on every entry, so the HTTP thread can
 *     render without any lock while workers come and go.
 *
 * Reference counting: stats_register() returns an entry whose single
 * reference belongs to the registry and is dropped by stats_unregister().
 * Anyone else who keeps the pointer beyond that (the worker, a renderer)
 * takes its own reference with stats_ref() and drops it with stats_unref().
 * The last unref frees the entry.
 *
 * The latency histogram is stored cumulatively, as Prometheus exposes it:
 * a sample increments every bucket whose upper bound is >= the sample.
 * A reader racing a writer may see buckets mid-update; the renderer clamps
 * them to be non-decreasing, so an exposition is always well formed.
 */
#include "stats.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const double relay_latency_bounds[RELAY_LATENCY_BUCKETS] = {
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
};

/* The same bounds in microseconds, so the hot path compares integers. */
static const uint64_t latency_bounds_us[RELAY_LATENCY_BUCKETS] = {
    1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000, 5000000,
};

static const char *const err_kind_names[ERR_KIND_COUNT] = {
    [ERR_SOURCE] = "source",
    [ERR_SINK] = "sink",
    [ERR_PERMANENT] = "permanent",
    [ERR_DECODE] = "decode",
    [ERR_POSTGRES] = "postgres",
};

const char *relay_err_kind_name(relay_err_kind k)
{
    if ((int)k < 0 || k >= ERR_KIND_COUNT)
        return "unknown";
    return err_kind_names[k];
}

/* ---- clocks ------------------------------------------------------------ */

static int64_t clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t now_wall_ms(void) { return clock_ms(CLOCK_REALTIME); }
int64_t now_mono_ms(void) { return clock_ms(CLOCK_MONOTONIC); }

struct timespec deadline_after_ms(clockid_t clock, int64_t ms)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

uint64_t now_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Process start, on the monotonic clock so uptime survives clock changes. */
static _Atomic int64_t g_start_mono_ms;

void stats_init(void)
{
    atomic_store(&g_start_mono_ms, now_mono_ms());
}

int64_t stats_uptime_seconds(void)
{
    int64_t start = atomic_load(&g_start_mono_ms);
    if (start == 0)
        return 0;
    return (now_mono_ms() - start) / 1000;
}

static _Atomic int g_group_relays, g_fair_share;

void stats_set_group(int relays, int fair_share)
{
    atomic_store(&g_group_relays, relays);
    atomic_store(&g_fair_share, fair_share);
}

void stats_get_group(int *relays, int *fair_share)
{
    *relays = atomic_load(&g_group_relays);
    *fair_share = atomic_load(&g_fair_share);
}

/* ---- the database, as the coordinator sees it ---------------------------- */

static pthread_mutex_t g_db_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_db_state = -1;
static char g_db_error[512];

void stats_set_database(int up, const char *error)
{
    pthread_mutex_lock(&g_db_mu);
    g_db_state = up ? 1 : 0;
    snprintf(g_db_error, sizeof g_db_error, "%s", up || !error ? "" : error);
    /* libpq's messages end with a newline and may span lines */
    for (char *p = g_db_error; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    utf8_sanitize(g_db_error);
    size_t n = strlen(g_db_error);
    while (n && g_db_error[n - 1] == ' ')
        g_db_error[--n] = '\0';
    pthread_mutex_unlock(&g_db_mu);
}

int stats_get_database(char *err, size_t errlen)
{
    pthread_mutex_lock(&g_db_mu);
    int st = g_db_state;
    snprintf(err, errlen, "%s", g_db_error);
    pthread_mutex_unlock(&g_db_mu);
    return st;
}

/* ---- pipelines rejected at load ------------------------------------------- */

static pthread_mutex_t g_rej_mu = PTHREAD_MUTEX_INITIALIZER;
static relay_rejected *g_rej;
static size_t g_rej_n;

void stats_set_rejected(const char *name, int forward, const char *error)
{
    pthread_mutex_lock(&g_rej_mu);
    size_t i = 0;
    while (i < g_rej_n && !(g_rej[i].forward == forward && strcmp(g_rej[i].name, name) == 0))
        i++;
    if (i == g_rej_n) {
        g_rej = xrealloc(g_rej, (g_rej_n + 1) * sizeof *g_rej);
        g_rej[g_rej_n++] = (relay_rejected){xstrdup(name), forward, NULL};
    }
    free(g_rej[i].error);
    g_rej[i].error = xstrdup(error);
    utf8_sanitize(g_rej[i].error);
    pthread_mutex_unlock(&g_rej_mu);
}

void stats_clear_rejected(const char *name, int forward)
{
    pthread_mutex_lock(&g_rej_mu);
    for (size_t i = 0; i < g_rej_n; i++) {
        if (g_rej[i].forward == forward && strcmp(g_rej[i].name, name) == 0) {
            free(g_rej[i].name);
            free(g_rej[i].error);
            g_rej[i] = g_rej[--g_rej_n];
            break;
        }
    }
    pthread_mutex_unlock(&g_rej_mu);
}

relay_rejected *stats_rejected_list(size_t *n)
{
    pthread_mutex_lock(&g_rej_mu);
    relay_rejected *copy = xcalloc(g_rej_n + 1, sizeof *copy);
    for (size_t i = 0; i < g_rej_n; i++)
        copy[i] = (relay_rejected){xstrdup(g_rej[i].name), g_rej[i].forward,
                                   xstrdup(g_rej[i].error)};
    *n = g_rej_n;
    pthread_mutex_unlock(&g_rej_mu);
    return copy;
}

void stats_rejected_free(relay_rejected *list, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(list[i].name);
        free(list[i].error);
    }
    free(list);
}

/* ---- registry ---------------------------------------------------------- */

static pthread_mutex_t g_reg_mu = PTHREAD_MUTEX_INITIALIZER;
static relay_stats **g_reg;
static size_t g_reg_n, g_reg_cap;

static void registry_add(relay_stats *s)
{
    pthread_mutex_lock(&g_reg_mu);
    if (g_reg_n == g_reg_cap) {
        g_reg_cap = g_reg_cap ? g_reg_cap * 2 : 16;
        g_reg = xrealloc(g_reg, g_reg_cap * sizeof *g_reg);
    }
    g_reg[g_reg_n++] = s;
    pthread_mutex_unlock(&g_reg_mu);
}

/* Remove `s`, keeping registration order. Returns 1 when it was present. */
static int registry_remove(relay_stats *s)
{
    int found = 0;
    pthread_mutex_lock(&g_reg_mu);
    for (size_t i = 0; i < g_reg_n; i++) {
        if (g_reg[i] != s)
            continue;
        memmove(&g_reg[i], &g_reg[i + 1], (g_reg_n - i - 1) * sizeof *g_reg);
        g_reg_n--;
        found = 1;
        break;
    }
    if (g_reg_n == 0) {
        /* Release the array so an idle process (and valgrind) holds nothing. */
        free(g_reg);
        g_reg = NULL;
        g_reg_cap = 0;
    }
    pthread_mutex_unlock(&g_reg_mu);
    return found;
}

relay_stats **stats_snapshot(size_t *n)
{
    pthread_mutex_lock(&g_reg_mu);
    relay_stats **out = xmalloc((g_reg_n ? g_reg_n : 1) * sizeof *out);
    for (size_t i = 0; i < g_reg_n; i++) {
        out[i] = g_reg[i];
        stats_ref(out[i]);
    }
    *n = g_reg_n;
    pthread_mutex_unlock(&g_reg_mu);
    return out;
}

/* ---- entries ----------------------------------------------------------- */

static char *dup_or_empty(const char *s)
{
    return xstrdup(s ? s : "");
}

relay_stats *stats_register(const char *name, const char *direction, const char *source_type,
                            const char *sink_type)
{
    relay_stats *s = xcalloc(1, sizeof *s);
    s->name = dup_or_empty(name);
    s->direction = dup_or_empty(direction);
    s->source_type = dup_or_empty(source_type);
    s->sink_type = dup_or_empty(sink_type);
    /* Nothing is known to be down until the worker says so. */
    atomic_init(&s->pg_up, 1);
    atomic_init(&s->source_up, 1);
    atomic_init(&s->sink_up, 1);
    atomic_init(&s->replication_lag_bytes, -1);
    atomic_init(&s->confirmed_lsn, -1);
    atomic_init(&s->refs, 1);
    pthread_mutex_init(&s->mu, NULL);
    buf_puts(&s->position, "{}");
    buf_puts(&s->sink_info, "{}");
    registry_add(s);
    return s;
}

void stats_unregister(relay_stats *s)
{
    if (s && registry_remove(s))
        stats_unref(s);
}

void stats_ref(relay_stats *s)
{
    atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
}

void stats_unref(relay_stats *s)
{
    if (!s)
        return;
    /* acq_rel: every write made through other references happens-before the free. */
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
        return;
    pthread_mutex_destroy(&s->mu);
    buf_free(&s->position);
    buf_free(&s->sink_info);
    free(s->name);
    free(s->direction);
    free(s->source_type);
    free(s->sink_type);
    free(s);
}

void stats_observe_latency(relay_stats *s, uint64_t usec)
{
    for (int i = RELAY_LATENCY_BUCKETS - 1; i >= 0 && usec <= latency_bounds_us[i]; i--)
        atomic_fetch_add_explicit(&s->latency_buckets[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_sum_us, usec, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->latency_count, 1, memory_order_relaxed);
}

void stats_error(relay_stats *s, relay_err_kind kind, const char *fmt, ...)
{
    if ((int)kind >= 0 && kind < ERR_KIND_COUNT)
        atomic_fetch_add_explicit(&s->errors[kind], 1, memory_order_relaxed);
    char text[sizeof s->last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    utf8_sanitize(text); /* a broker's bytes, or a cut in mid-character */
    int64_t now = now_wall_ms();
    pthread_mutex_lock(&s->mu);
    memcpy(s->last_error, text, sizeof text);
    s->last_error_ms = now;
    pthread_mutex_unlock(&s->mu);
}

void stats_set_sink_info(relay_stats *s, const char *json)
{
    pthread_mutex_lock(&s->mu);
    buf_clear(&s->sink_info);
    buf_puts(&s->sink_info, json && *json ? json : "{}");
    pthread_mutex_unlock(&s->mu);
}

void stats_set_position(relay_stats *s, const char *json)
{
    pthread_mutex_lock(&s->mu);
    buf_clear(&s->position);
    buf_puts(&s->position, json && *json ? json : "{}");
    pthread_mutex_unlock(&s->mu);
}

/* ---- health ------------------------------------------------------------ */

/*
 * Health checks, in the order they are reported: the first failing one is
 * the reason. A check returns its reason or NULL. The worker stamps
 * last_progress_ms on every acknowledged batch and every empty poll, and
 * sets stall_after_ms from the source's poll interval: a pipeline whose
 * loop has not come round for longer than that is stuck (e.g. a sink call
 * that hangs) even though nothing reported an error.
 */
typedef const char *(*health_check)(relay_stats *s, int64_t now_ms);

static const char *check_postgres(relay_stats *s, int64_t now_ms)
{
    (void)now_ms;
    return atomic_load_explicit(&s->pg_up, memory_order_relaxed) ? NULL : "postgres connection lost";
}

static const char *check_source(relay_stats *s, int64_t now_ms)
{
    (void)now_ms;
    return atomic_load_explicit(&s->source_up, memory_order_relaxed) ? NULL : "source unavailable";
}

static const char *check_sink(relay_stats *s, int64_t now_ms)
{
    (void)now_ms;
    return atomic_load_explicit(&s->sink_up, memory_order_relaxed) ? NULL : "sink unavailable";
}

static const char *check_progress(relay_stats *s, int64_t now_ms)
{
    int64_t stall = atomic_load_explicit(&s->stall_after_ms, memory_order_relaxed);
    int64_t failing = atomic_load_explicit(&s->failing_since_ms, memory_order_relaxed);
    if (stall > 0 && failing > 0 && now_ms - failing > stall)
        return "stalled: the batch in flight has kept failing for longer than --stall-timeout "
               "(last_error says why)";
    int64_t last = atomic_load_explicit(&s->last_progress_ms, memory_order_relaxed);
    if (stall <= 0 || last <= 0 || now_ms - last <= stall)
        return NULL;
    return "no progress: the relay loop has not completed a poll or a batch in time";
}

static const health_check health_checks[] = {check_postgres, check_source, check_sink,
                                             check_progress};

const char *stats_degraded_reason(relay_stats *s, int64_t now_ms)
{
    if (!atomic_load_explicit(&s->running, memory_order_relaxed))
        return NULL;
    for (size_t i = 0; i < sizeof health_checks / sizeof health_checks[0]; i++) {
        const char *why = health_checks[i](s, now_ms);
        if (why)
            return why;
    }
    return NULL;
}
