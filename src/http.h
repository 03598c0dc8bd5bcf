/*
 * http.h - the read-only HTTP endpoints of SPEC section 9:
 *   GET /metrics  Prometheus text exposition (version 0.0.4)
 *   GET /health   200 {"status":"healthy",...} or 503 {"status":"degraded",...}
 *   GET /status   JSON object per owned pipeline
 * Served by libmicrohttpd on its own thread; nothing here changes state.
 */
#ifndef RELAY_HTTP_H
#define RELAY_HTTP_H

#include <stddef.h>
#include <stdint.h>

/* Start serving on `addr` ("host:port", "0.0.0.0:9090", "[::1]:9090"), at
 * most 64 connections; a request (headers, and its response) taking longer
 * than request_timeout_ms in total is cut off (--metrics-request-timeout,
 * see http_guard.h). Returns 0, or -1 with a message in err (bad address,
 * port in use). */
int http_start(const char *addr, int64_t request_timeout_ms, char *err, size_t errlen);
/* Stop the server and wait for in-flight requests. Safe to call when not started. */
void http_stop(void);

/* Render the bodies (exposed for unit tests). Append to `out`. */
struct relay_buf;
void http_render_metrics(struct relay_buf *out);
/* Returns the HTTP status (200 or 503). */
int http_render_health(struct relay_buf *out);
void http_render_status(struct relay_buf *out);

#endif
