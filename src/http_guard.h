/*
 * http_guard.h - keeps a libmicrohttpd listener answering under a flood of
 * slow or idle clients (the metrics server, src/http.c, and the webhook
 * receiver, src/source/webhook.c). See http_guard.c for the design and for
 * why it is safe against libmicrohttpd closing and reusing sockets.
 *
 * Two rules, per listener:
 *   - a request deadline: a connection gets request_timeout_ms to deliver a
 *     complete request (request line, headers and body), counted from its
 *     accept or from the end of its previous request, and again
 *     request_timeout_ms to take its response once one is queued. Past it the
 *     socket is shut down. libmicrohttpd's own MHD_OPTION_CONNECTION_TIMEOUT
 *     only bounds idle time: a client sending a byte every few seconds would
 *     hold its connection for ever. The time a request waits, suspended, for
 *     the application (a webhook request waiting for the inbox COMMIT) is not
 *     counted.
 *   - shedding: when more than max_connections - R connections are open,
 *     R = max_connections / 8 clamped to 1..16, each new connection closes
 *     the oldest connection that is still receiving its request, so a fresh
 *     request (a /health probe, a normal webhook POST) always finds a free
 *     slot. Connections waiting for the application, or being answered, are
 *     never shed.
 *
 * Use:
 *   g = http_guard_create(&cfg);
 *   MHD_start_daemon(..., MHD_OPTION_CONNECTION_LIMIT, cfg.max_connections,
 *                    MHD_OPTION_NOTIFY_CONNECTION, http_guard_on_connection, g,
 *                    MHD_OPTION_NOTIFY_COMPLETED, <yours, calling http_guard_request_done>,
 *                    MHD_OPTION_EXTERNAL_LOGGER, http_guard_mhd_log, g, ...);
 *   http_guard_start(g, ...);
 *   ... in the access handler: http_guard_responding() right after queueing
 *       a response, http_guard_waiting() right before suspending ...
 *   MHD_stop_daemon(d); http_guard_destroy(g);   (in this order)
 */
#ifndef RELAY_HTTP_GUARD_H
#define RELAY_HTTP_GUARD_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

typedef struct http_guard http_guard;

typedef struct {
    const char *server;          /* "metrics" or "webhook": the metric label (copied) */
    const char *pipeline;        /* the pipeline of a webhook receiver, else NULL (copied) */
    unsigned max_connections;    /* the value given to MHD_OPTION_CONNECTION_LIMIT */
    int64_t request_timeout_ms;  /* > 0 */
} http_guard_cfg;

/* A guard for one listener, registered for /metrics. Not yet enforcing
 * deadlines: call http_guard_start() once the daemon runs. Never fails
 * (aborts on out of memory like xmalloc). */
http_guard *http_guard_create(const http_guard_cfg *cfg);

/* Start the watchdog thread that enforces the request deadline. Returns 0,
 * or -1 with err set (thread creation failed). */
int http_guard_start(http_guard *g, char *err, size_t errlen);

/* Stop the watchdog, unregister and free. Call only after MHD_stop_daemon()
 * returned (every connection has been reported closed by then). NULL is a
 * no-op. */
void http_guard_destroy(http_guard *g);

/* MHD_NotifyConnectionCallback, registered with MHD_OPTION_NOTIFY_CONNECTION
 * and the guard as its closure. Tracks the connection; on STARTED, sheds the
 * oldest connection still receiving a request when the listener is near its
 * limit. Uses *socket_context (the application must not). */
void http_guard_on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                              enum MHD_ConnectionNotificationCode code);

/* The request on `conn` is complete and a response has been queued: from now
 * the connection has request_timeout_ms to take it. Call from the access
 * handler (libmicrohttpd's thread). */
void http_guard_responding(struct MHD_Connection *conn);

/* The request on `conn` is complete and the connection is about to be
 * suspended until the application answers: no deadline until
 * http_guard_responding(). Call from the access handler. */
void http_guard_waiting(struct MHD_Connection *conn);

/* The request on `conn` ended (MHD_OPTION_NOTIFY_COMPLETED): a next request
 * on the same connection gets a fresh request_timeout_ms. */
void http_guard_request_done(struct MHD_Connection *conn);

/* Close `conn` at its next chance, i.e. shut its socket down now (it stays
 * tracked until libmicrohttpd reports it closed). For the access handler
 * after it wrote an answer itself. */
void http_guard_cut(struct MHD_Connection *conn);

/* MHD_LogCallback (MHD_OPTION_EXTERNAL_LOGGER) with the guard as closure:
 * libmicrohttpd's messages about one client's connection (reset, closed
 * mid-request, ...), which a flood produces by the thousand, are logged at
 * debug; others at warn. The guard itself logs one warn line a minute while
 * it sheds or times out connections. */
void http_guard_mhd_log(void *cls, const char *fmt, va_list ap);

/* Counters of one live listener, for /metrics. */
typedef struct {
    const char *server;
    const char *pipeline;        /* NULL for the metrics server */
    unsigned open;               /* connections open now */
    uint64_t shed;               /* connections closed to keep room */
    uint64_t timed_out;          /* connections closed past the request deadline */
} http_guard_counts;

/* Call fn for each live guard, in creation order, under the registry lock
 * (fn must not create or destroy guards). The strings live during the call. */
void http_guard_foreach(void (*fn)(const http_guard_counts *c, void *arg), void *arg);

#endif
