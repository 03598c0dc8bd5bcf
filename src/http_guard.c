/*
 * http_guard.c - request deadlines and connection shedding for the relay's
 * libmicrohttpd listeners (see http_guard.h for the rules and the use).
 *
 * Why not libmicrohttpd alone.  libmicrohttpd 0.9.75 offers an idle timeout
 * (MHD_OPTION_CONNECTION_TIMEOUT, per connection MHD_CONNECTION_OPTION_TIMEOUT),
 * a connection limit and a per-IP limit, but no bound on a request's total
 * time: a client that sends one header line every few seconds is never idle
 * long enough, and the access handler is not called before the headers are
 * complete, so the application cannot see it either. At the connection limit
 * libmicrohttpd stops accepting (daemon.c: at_limit), so 64 such clients
 * locked /health out. The per-IP limit does not help against many addresses
 * (nor on loopback, where the tests run).
 *
 * Tracking.  MHD_OPTION_NOTIFY_CONNECTION reports every connection STARTED
 * (right after accept, before any byte is read) and CLOSED; the guard keeps
 * an entry per connection (socket fd, phase, since when) in a list and in the
 * connection's socket_context. The access handler moves the entry between
 * phases: RECEIVING (a request is being read, or the connection is idle
 * between requests), RESPONDING (a response is queued) and WAITING (the
 * connection is suspended until the application answers; not timed). The
 * completion callback (MHD_OPTION_NOTIFY_COMPLETED) starts the next request's
 * clock.
 *
 * Enforcement is shutdown(fd, SHUT_RDWR), never close(): the socket stays
 * libmicrohttpd's. Its epoll set (edge-triggered) then reports the hang-up,
 * libmicrohttpd reads end-of-file or gets EPIPE, closes the connection
 * through its normal path (completion callback with an error code if a
 * request had started, then NOTIFY_CLOSED, then close()), and frees it. A
 * suspended connection is not polled by libmicrohttpd, so WAITING connections
 * are never shut down (they could not be reaped before their resume anyway).
 *
 * Why the fd is never one libmicrohttpd has closed or reused.  In 0.9.75
 * (daemon.c: new_connection_process_, MHD_cleanup_connections) NOTIFY_CLOSED
 * is called for every connection that got NOTIFY_STARTED — also on the
 * failure path right after STARTED and for each connection MHD_stop_daemon
 * closes — and always BEFORE the socket is closed (MHD_socket_close_chk_
 * follows the callback in both places). The CLOSED callback removes the entry
 * under the guard's mutex; the watchdog thread calls shutdown() only while
 * holding that mutex and only on entries still in the list. So any fd the
 * watchdog touches is still open and still this connection's: its close (and
 * any reuse of the number by a later accept) can only happen after the
 * CLOSED callback has waited for the mutex. Shedding runs inside the
 * STARTED callback, i.e. on libmicrohttpd's own (single, internal polling)
 * thread, under the same mutex, with the same guarantee.
 *
 * Shedding.  Above max_connections - R open connections (R =
 * max_connections / 8, clamped to 1..16; not counting connections already
 * shut down and about to be reaped), a new connection shuts down the
 * connection that has been RECEIVING the longest (never the new one itself).
 * Slow clients are therefore the ones that go; a request that completes in
 * milliseconds (a probe, a normal POST) is never the oldest. libmicrohttpd's
 * hard limit is not reached by a flood of incomplete requests, so it keeps
 * accepting. R is small so that a legitimate burst (1 000 concurrent POSTs
 * on a receiver allowing 1 024) sheds nothing: only the last R slots are
 * kept free.
 *
 * The watchdog wakes every 100 ms (or a tenth of the deadline, whichever is
 * shorter) and scans the list: at most max_connections entries. A request
 * may thus run up to one tick past its deadline.
 */
#include "http_guard.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "buf.h"
#include "log.h"
#include "stats.h"

#define TICK_MAX_MS 100
#define SUMMARY_EVERY_MS 60000
#define SHED_RESERVE_MAX 16

typedef enum { PH_RECEIVING = 0, PH_RESPONDING, PH_WAITING } guard_phase;

typedef struct guard_conn {
    struct guard_conn *prev, *next;
    struct http_guard *g;
    MHD_socket fd;
    guard_phase phase;
    int64_t since_ms;   /* monotonic: start of the current phase */
    int cut;            /* shut down, waiting for libmicrohttpd to reap it */
} guard_conn;

struct http_guard {
    struct http_guard *reg_next;
    char *server;
    char *pipeline;
    unsigned max_connections;
    unsigned shed_above;          /* 0: never shed */
    int64_t timeout_ms;
    pthread_mutex_t mu;           /* guards the list, the counts and stop */
    pthread_cond_t cv;
    guard_conn *head, *tail;      /* in accept order */
    unsigned open;                /* entries in the list */
    unsigned cutting;             /* entries with cut set */
    int stop;
    int thread_started;
    pthread_t thread;
    _Atomic uint64_t shed;
    _Atomic uint64_t timed_out;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static http_guard *reg_head;

/* ---- creation ------------------------------------------------------------ */

http_guard *http_guard_create(const http_guard_cfg *cfg)
{
    http_guard *g = xcalloc(1, sizeof *g);
    g->server = xstrdup(cfg->server);
    g->pipeline = cfg->pipeline ? xstrdup(cfg->pipeline) : NULL;
    g->max_connections = cfg->max_connections;
    unsigned reserve = cfg->max_connections / 8;
    if (reserve < 1)
        reserve = 1;
    if (reserve > SHED_RESERVE_MAX)
        reserve = SHED_RESERVE_MAX;
    g->shed_above = cfg->max_connections > reserve ? cfg->max_connections - reserve : 0;
    g->timeout_ms = cfg->request_timeout_ms > 0 ? cfg->request_timeout_ms : 1;
    pthread_mutex_init(&g->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&reg_mu);
    http_guard **tail = &reg_head;
    while (*tail)
        tail = &(*tail)->reg_next;
    *tail = g;
    pthread_mutex_unlock(&reg_mu);
    return g;
}

static const char *guard_pipeline(const http_guard *g)
{
    return g->pipeline;
}

/* ---- the list ------------------------------------------------------------- */

static void list_add(http_guard *g, guard_conn *e)
{
    e->prev = g->tail;
    e->next = NULL;
    if (g->tail)
        g->tail->next = e;
    else
        g->head = e;
    g->tail = e;
    g->open++;
}

static void list_remove(http_guard *g, guard_conn *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        g->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        g->tail = e->prev;
    g->open--;
    if (e->cut)
        g->cutting--;
}

/* Shut the connection's socket down (see the design comment for why the fd
 * is still this connection's). Caller holds g->mu. */
static void cut_locked(http_guard *g, guard_conn *e)
{
    if (e->cut)
        return;
    e->cut = 1;
    g->cutting++;
    (void)shutdown(e->fd, SHUT_RDWR);
}

/* The connection that has been receiving the longest, other than `except`. */
static guard_conn *oldest_receiving_locked(http_guard *g, const guard_conn *except)
{
    guard_conn *best = NULL;
    for (guard_conn *e = g->head; e; e = e->next)
        if (e != except && !e->cut && e->phase == PH_RECEIVING &&
            (!best || e->since_ms < best->since_ms))
            best = e;
    return best;
}

/* ---- libmicrohttpd callbacks ----------------------------------------------- */

void http_guard_on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode code)
{
    http_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        guard_conn *e = xcalloc(1, sizeof *e);
        e->g = g;
        e->fd = ci ? ci->connect_fd : MHD_INVALID_SOCKET;
        e->phase = PH_RECEIVING;
        e->since_ms = now_mono_ms();
        e->cut = e->fd == MHD_INVALID_SOCKET; /* nothing to shut down: never chosen */
        *socket_context = e;
        pthread_mutex_lock(&g->mu);
        list_add(g, e);
        if (e->cut)
            g->cutting++;
        if (g->shed_above && g->open - g->cutting > g->shed_above) {
            guard_conn *victim = oldest_receiving_locked(g, e);
            if (victim) {
                cut_locked(g, victim);
                atomic_fetch_add(&g->shed, 1);
            }
        }
        pthread_mutex_unlock(&g->mu);
        return;
    }
    guard_conn *e = *socket_context;
    if (code != MHD_CONNECTION_NOTIFY_CLOSED || !e)
        return;
    *socket_context = NULL;
    pthread_mutex_lock(&g->mu);
    list_remove(g, e);
    pthread_mutex_unlock(&g->mu);
    free(e);
}

static guard_conn *entry_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? (guard_conn *)ci->socket_context : NULL;
}

static void set_phase(struct MHD_Connection *conn, guard_phase ph)
{
    guard_conn *e = entry_of(conn);
    if (!e)
        return;
    pthread_mutex_lock(&e->g->mu);
    e->phase = ph;
    e->since_ms = now_mono_ms();
    pthread_mutex_unlock(&e->g->mu);
}

void http_guard_responding(struct MHD_Connection *conn)
{
    set_phase(conn, PH_RESPONDING);
}

void http_guard_waiting(struct MHD_Connection *conn)
{
    set_phase(conn, PH_WAITING);
}

void http_guard_request_done(struct MHD_Connection *conn)
{
    set_phase(conn, PH_RECEIVING);
}

void http_guard_cut(struct MHD_Connection *conn)
{
    guard_conn *e = entry_of(conn);
    if (!e)
        return;
    pthread_mutex_lock(&e->g->mu);
    cut_locked(e->g, e);
    pthread_mutex_unlock(&e->g->mu);
}

/* libmicrohttpd's messages about a single client connection. */
static int per_connection_message(const char *m)
{
    static const char *const prefixes[] = {
        "Socket has been disconnected",
        "Connection was closed by remote side",
        "Connection socket is closed",
        "Application reported internal error",
        "Server reached connection limit",
        "Failed to send data",
        "Failed to receive data",
        "Error processing request",
        "Closing connection",
        "Connection reset",
        NULL,
    };
    for (int i = 0; prefixes[i]; i++)
        if (strncmp(m, prefixes[i], strlen(prefixes[i])) == 0)
            return 1;
    return 0;
}

void http_guard_mhd_log(void *cls, const char *fmt, va_list ap)
{
    http_guard *g = cls;
    relay_buf line = {0};
    buf_vprintf(&line, fmt, ap);
    /* libmicrohttpd terminates its messages with a newline; log.c adds its own. */
    while (line.len && (line.data[line.len - 1] == '\n' || line.data[line.len - 1] == '\r'))
        line.data[--line.len] = '\0';
    const char *text = line.data ? line.data : "";
    if (per_connection_message(text))
        log_debug(guard_pipeline(g), "http %s: %s", g->server, text);
    else
        log_warn(guard_pipeline(g), "http %s: %s", g->server, text);
    buf_free(&line);
}

/* ---- the watchdog ------------------------------------------------------------ */

static void expire_locked(http_guard *g, int64_t now)
{
    for (guard_conn *e = g->head; e; e = e->next) {
        if (e->cut || e->phase == PH_WAITING || now - e->since_ms < g->timeout_ms)
            continue;
        cut_locked(g, e);
        atomic_fetch_add(&g->timed_out, 1);
    }
}

static void *watchdog_main(void *arg)
{
    http_guard *g = arg;
    int64_t tick = g->timeout_ms / 10;
    if (tick > TICK_MAX_MS)
        tick = TICK_MAX_MS;
    if (tick < 10)
        tick = 10;
    int64_t next_summary = now_mono_ms() + SUMMARY_EVERY_MS;
    uint64_t shed_seen = 0, timed_out_seen = 0;
    pthread_mutex_lock(&g->mu);
    while (!g->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += (long)(tick % 1000) * 1000000L;
        ts.tv_sec += (time_t)(tick / 1000) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&g->cv, &g->mu, &ts);
        if (g->stop)
            break;
        int64_t now = now_mono_ms();
        expire_locked(g, now);
        if (now >= next_summary) {
            next_summary = now + SUMMARY_EVERY_MS;
            uint64_t shed = atomic_load(&g->shed), to = atomic_load(&g->timed_out);
            if (shed != shed_seen || to != timed_out_seen)
                log_warn(guard_pipeline(g),
                         "http %s: closed %" PRIu64 " connections to keep room (limit %u) and %"
                         PRIu64 " past the %" PRId64 " ms request deadline in the last minute",
                         g->server, shed - shed_seen, g->max_connections, to - timed_out_seen,
                         g->timeout_ms);
            shed_seen = shed;
            timed_out_seen = to;
        }
    }
    pthread_mutex_unlock(&g->mu);
    return NULL;
}

int http_guard_start(http_guard *g, char *err, size_t errlen)
{
    if (g->thread_started)
        return 0;
    int rc = pthread_create(&g->thread, NULL, watchdog_main, g);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the request watchdog: %s", strerror(rc));
        return -1;
    }
    g->thread_started = 1;
    return 0;
}

void http_guard_destroy(http_guard *g)
{
    if (!g)
        return;
    if (g->thread_started) {
        pthread_mutex_lock(&g->mu);
        g->stop = 1;
        pthread_cond_signal(&g->cv);
        pthread_mutex_unlock(&g->mu);
        pthread_join(g->thread, NULL);
    }
    pthread_mutex_lock(&reg_mu);
    for (http_guard **p = &reg_head; *p; p = &(*p)->reg_next)
        if (*p == g) {
            *p = g->reg_next;
            break;
        }
    pthread_mutex_unlock(&reg_mu);
    /* MHD_stop_daemon() reported every connection closed; anything left
     * would be a libmicrohttpd that skipped NOTIFY_CLOSED. Free it anyway. */
    while (g->head) {
        guard_conn *e = g->head;
        list_remove(g, e);
        free(e);
    }
    pthread_cond_destroy(&g->cv);
    pthread_mutex_destroy(&g->mu);
    free(g->server);
    free(g->pipeline);
    free(g);
}

/* ---- metrics ------------------------------------------------------------------ */

void http_guard_foreach(void (*fn)(const http_guard_counts *c, void *arg), void *arg)
{
    pthread_mutex_lock(&reg_mu);
    for (http_guard *g = reg_head; g; g = g->reg_next) {
        http_guard_counts c;
        c.server = g->server;
        c.pipeline = g->pipeline;
        pthread_mutex_lock(&g->mu);
        c.open = g->open;
        pthread_mutex_unlock(&g->mu);
        c.shed = atomic_load(&g->shed);
        c.timed_out = atomic_load(&g->timed_out);
        fn(&c, arg);
    }
    pthread_mutex_unlock(&reg_mu);
}
