/*
 * webhook.c - the HTTP webhook sink (SPEC section 7, row webhook).
 *
 * Config (pipeline "sink" object):
 *   url               http:// or https:// endpoint (required)
 *   method            "POST" (default) or "PUT"
 *   headers           {"Name": "value", ...} sent with every request; values
 *                     may hold ${env:NAME} / ${file:/path} secrets
 *   timeout_ms        whole-request timeout (10000)
 *   batch_mode        true (default): one request per publish() whose body is
 *                     an array of the events; false: one request per event
 *   retry_on_status   statuses retried with backoff ([429,500,502,503,504])
 *   signing_secret    when set, every request is signed (client/webhook.h)
 *   max_in_flight     concurrent requests in per-event mode (64)
 *   format            "native" JSON envelope (default), "msgpack", "debezium"
 *                     or "cloudevents" (encode.h; cloudevents_mode "binary"
 *                     sends one event per request with ce- headers)
 *   tls_ca            CA bundle file for https endpoints
 *   subject_template  subject rendered into the envelope
 *
 * Requests.  Every request carries Content-Type (the format's MIME type
 * unless "headers" sets one), Idempotency-Key, and, for full-refresh events,
 * X-Pgtrickle-Full-Refresh: true. Per-event mode: the body is the event and
 * Idempotency-Key its dedup key. Batch mode: the body is a JSON array (or a
 * MessagePack array) of the events, each element carrying its own dedup_key,
 * and Idempotency-Key is "batch-" + hex SHA-256 of the dedup keys joined by
 * '\n', so a retried batch carries the same key; the full-refresh header is
 * set when any element is a full-refresh event.
 *
 * In per-event mode a dedup key with control characters cannot be a header
 * value: that event is rejected (dead-lettered) rather than sent unkeyed.
 *
 * A batch request covers exactly the messages of one publish() call and all
 * of them get the request's outcome, so the worker's retry (the messages not
 * yet confirmed) is always the identical set: the same body and the same
 * key. Its size is bounded by the source's batch size.
 *
 * Outcome of a request, per message it carries:
 *   2xx                          MSG_CONFIRMED
 *   status in retry_on_status    MSG_RETRY; Retry-After (seconds or an HTTP
 *                                date) becomes relay_sink.retry_after_ms
 *                                (capped at 5 minutes), which the worker waits
 *   any other 4xx                MSG_REJECTED (the worker dead-letters it)
 *   1xx/3xx/other 5xx            MSG_RETRY (redirects are never followed)
 *   transport error / timeout    MSG_RETRY
 * When not one request of a call was confirmed or rejected (all unreachable,
 * timed out or answered with a retryable status), publish() returns -1 with
 * the first failure: the endpoint is down, and the worker reports the sink
 * unavailable (degraded in /health) while it retries.
 *
 * Concurrency.  One libcurl multi handle per sink keeps the connection cache
 * (keep-alive, HTTP/2 multiplexing on https) across calls. In per-event mode
 * up to max_in_flight requests run at once on as many easy handles ("slots"),
 * which are reused; throughput is therefore not one round trip per event.
 * The call returns when every request finished, or when the worker's
 * shutdown deadline passed (requests still in flight stay MSG_RETRY).
 *
 * Nothing secret is ever logged or put in an error: the URL is shown without
 * user info or query string, header values and the signing secret never.
 */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "encode.h"
#include "formats.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "stats.h"
#include "client/webhook.h"
#include "worker.h"

#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown"
#endif

#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_IN_FLIGHT 64
#define MAX_RETRY_AFTER_MS ((int64_t)300000)
#define RESPONSE_SNIPPET 200
#define POLL_SLICE_MS 100

static const int default_retry_status[] = {429, 500, 502, 503, 504};

/* Header names the sink sets itself; "headers" may not override them. */
static const char *const reserved_headers[] = {
    "Idempotency-Key", WEBHOOK_TIMESTAMP_HEADER, WEBHOOK_SIGNATURE_HEADER,
    WEBHOOK_FULL_REFRESH_HEADER, "Content-Length", "Transfer-Encoding", "Host", "Expect", NULL,
};

typedef struct wh_slot {
    CURL *easy;
    struct curl_slist *hdrs;   /* this request's header list */
    relay_buf body;
    relay_buf resp;            /* first RESPONSE_SNIPPET bytes of the response body */
    relay_msg **msgs;          /* the messages this request carries */
    size_t n;
    int busy;
    char errbuf[CURL_ERROR_SIZE];
} wh_slot;

typedef struct webhook_sink {
    relay_sink base;
    /* config */
    char *url;
    char *url_safe;            /* scheme://host[:port]/path, for logs and /status */
    int method_put;
    struct curl_slist *cfg_headers; /* "Name: value" lines from "headers" */
    int has_content_type;
    int64_t timeout_ms;
    int batch_mode;
    unsigned char retry_status[600];
    char *secret;
    size_t secret_len;
    size_t max_in_flight;
    char *tls_ca;
    /* runtime */
    CURLM *multi;
    wh_slot *slots;
    size_t nslots;
    uint64_t requests;
    uint64_t responses_2xx;
    uint64_t responses_retried;
    uint64_t responses_rejected;
    uint64_t transport_errors;
} webhook_sink;

extern const relay_sink_ops relay_sink_webhook_ops;
extern const relay_sink_ops relay_sink_http_ops;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_global_setup(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static const char *pipeline_name(const webhook_sink *ws)
{
    return ws->base.w ? ws->base.w->cfg.name : NULL;
}

/* ---- configuration ----------------------------------------------------- */

/* Validate the URL and build its redacted form (no user info, no query). */
static int parse_url(const char *url, char **safe, char *err, size_t errlen)
{
    CURLU *u = curl_url();
    char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
    int rc = -1;
    if (!u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK) {
        snprintf(err, errlen, "sink.url: not a valid URL");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
        (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0)) {
        snprintf(err, errlen, "sink.url: expected an http:// or https:// URL");
        goto out;
    }
    if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK || !*host) {
        snprintf(err, errlen, "sink.url: the URL has no host");
        goto out;
    }
    curl_url_get(u, CURLUPART_PORT, &port, 0);
    curl_url_get(u, CURLUPART_PATH, &path, 0);
    relay_buf b = {0};
    buf_printf(&b, "%s://%s", scheme, host);
    if (port)
        buf_printf(&b, ":%s", port);
    buf_puts(&b, path ? path : "/");
    *safe = buf_steal(&b);
    rc = 0;
out:
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_url_cleanup(u);
    return rc;
}

static int is_tchar(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int valid_header_name(const char *s)
{
    if (!*s)
        return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (!is_tchar(*p))
            return 0;
    return 1;
}

static int valid_header_value(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return 0;
    return 1;
}

static int parse_headers(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    json_t *h = json_object_get(cfg, "headers");
    if (!h || json_is_null(h))
        return 0;
    if (!json_is_object(h)) {
        snprintf(err, errlen, "sink.headers: expected an object of header names to string values");
        return -1;
    }
    const char *name;
    json_t *v;
    json_object_foreach(h, name, v) {
        if (!valid_header_name(name)) {
            snprintf(err, errlen, "sink.headers: \"%.100s\" is not a valid header name", name);
            return -1;
        }
        for (size_t i = 0; reserved_headers[i]; i++) {
            if (strcasecmp(name, reserved_headers[i]) == 0) {
                snprintf(err, errlen, "sink.headers.%s: this header is set by the relay itself",
                         name);
                return -1;
            }
        }
        if (!json_is_string(v) || !valid_header_value(json_string_value(v))) {
            /* never echo the value: it may be a secret */
            snprintf(err, errlen, "sink.headers.%.100s: expected a string without control "
                     "characters", name);
            return -1;
        }
        if (strcasecmp(name, "Content-Type") == 0)
            ws->has_content_type = 1;
        relay_buf line = {0};
        buf_printf(&line, "%s: %s", name, json_string_value(v));
        struct curl_slist *l = curl_slist_append(ws->cfg_headers, line.data);
        buf_free(&line);
        if (!l) {
            snprintf(err, errlen, "sink.headers: out of memory");
            return -1;
        }
        ws->cfg_headers = l;
    }
    return 0;
}

static int parse_retry_status(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    json_t *a = json_object_get(cfg, "retry_on_status");
    if (!a || json_is_null(a)) {
        for (size_t i = 0; i < sizeof default_retry_status / sizeof *default_retry_status; i++)
            ws->retry_status[default_retry_status[i]] = 1;
        return 0;
    }
    if (!json_is_array(a)) {
        snprintf(err, errlen, "sink.retry_on_status: expected an array of HTTP status codes");
        return -1;
    }
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        json_int_t code = json_is_integer(v) ? json_integer_value(v) : -1;
        if (code < 100 || code > 599) {
            snprintf(err, errlen, "sink.retry_on_status[%zu]: expected an HTTP status code "
                     "(100-599)", i);
            return -1;
        }
        if (code >= 200 && code <= 299) {
            snprintf(err, errlen, "sink.retry_on_status[%zu]: %d is a success status", i,
                     (int)code);
            return -1;
        }
        ws->retry_status[code] = 1;
    }
    return 0;
}

static int parse_method(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    const char *m;
    if (cfg_str(cfg, "sink", "method", "POST", &m, err, errlen) < 0)
        return -1;
    if (strcasecmp(m, "POST") == 0) {
        ws->method_put = 0;
    } else if (strcasecmp(m, "PUT") == 0) {
        ws->method_put = 1;
    } else {
        snprintf(err, errlen, "sink.method: expected \"POST\" or \"PUT\"");
        return -1;
    }
    return 0;
}

static int parse_secret(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    const char *secret;
    if (cfg_str(cfg, "sink", "signing_secret", NULL, &secret, err, errlen) < 0)
        return -1;
    if (!secret)
        return 0;
    if (!*secret) {
        snprintf(err, errlen, "sink.signing_secret: must not be empty (remove the key to send "
                 "unsigned requests)");
        return -1;
    }
    ws->secret = xstrdup(secret);
    ws->secret_len = strlen(secret);
    return 0;
}

static int parse_tls_ca(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    const char *ca;
    if (cfg_host_path(cfg, "sink", "tls_ca", &ca, err, errlen) < 0)
        return -1;
    if (!ca)
        return 0;
    if (access(ca, R_OK) < 0) {
        snprintf(err, errlen, "sink.tls_ca: cannot read %.200s: %s", ca, strerror(errno));
        return -1;
    }
    ws->tls_ca = xstrdup(ca);
    return 0;
}

static int parse_subject_template(webhook_sink *ws, const json_t *cfg, char *err, size_t errlen)
{
    const char *tmpl;
    char why[256];
    if (cfg_str(cfg, "sink", "subject_template", NULL, &tmpl, err, errlen) < 0)
        return -1;
    if (!tmpl)
        return 0;
    if (subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.subject_template: %s", why);
        return -1;
    }
    ws->base.subject_template = xstrdup(tmpl);
    return 0;
}

static void wh_destroy(relay_sink *s);

static relay_sink *create_sink(const json_t *cfg, struct relay_worker *w,
                               const relay_sink_ops *ops, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "url", "method", "headers", "timeout_ms",
                                       "batch_mode", "retry_on_status", "signing_secret",
                                       "max_in_flight", "format", "tls_ca", "subject_template",
                                       RELAY_FORMAT_KEYS, NULL};
    pthread_once(&curl_once, curl_global_setup);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "sink: libcurl initialisation failed: %s",
                 curl_easy_strerror(curl_init_rc));
        return NULL;
    }
    const char *url;
    int64_t max_in_flight;
    webhook_sink *ws = xcalloc(1, sizeof *ws);
    ws->base.ops = ops;
    ws->base.w = w;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "sink", "url", &url, err, errlen) < 0 ||
        parse_url(url, &ws->url_safe, err, errlen) < 0 ||
        parse_method(ws, cfg, err, errlen) < 0 ||
        parse_headers(ws, cfg, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "timeout_ms", DEFAULT_TIMEOUT_MS, 1, 3600000, &ws->timeout_ms, err,
                errlen) < 0 ||
        cfg_bool(cfg, "sink", "batch_mode", 1, &ws->batch_mode, err, errlen) < 0 ||
        parse_retry_status(ws, cfg, err, errlen) < 0 ||
        parse_secret(ws, cfg, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "max_in_flight", DEFAULT_MAX_IN_FLIGHT, 1, 1024, &max_in_flight,
                err, errlen) < 0 ||
        relay_format_from_cfg(cfg, "sink", &ws->base.format, err, errlen) < 0 ||
        parse_tls_ca(ws, cfg, err, errlen) < 0 ||
        parse_subject_template(ws, cfg, err, errlen) < 0 ||
        relay_format_opts_from_cfg(cfg, "sink", ws->base.format, 1, &ws->base.fopts, err,
                                   errlen) < 0) {
        wh_destroy(&ws->base);
        return NULL;
    }
    if (ws->base.fopts.ce_binary) {
        /* HTTP binding 3.1: one event per message in binary mode. */
        if (json_is_true(json_object_get(cfg, "batch_mode"))) {
            snprintf(err, errlen, "sink.batch_mode: CloudEvents binary mode carries one event "
                     "per request (its attributes are the request's ce- headers); leave "
                     "batch_mode out or set it false");
            wh_destroy(&ws->base);
            return NULL;
        }
        ws->batch_mode = 0;
    }
    ws->base.encode = 1;
    ws->url = xstrdup(url);
    ws->max_in_flight = (size_t)max_in_flight;
    return &ws->base;
}

static relay_sink *wh_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    return create_sink(cfg, w, &relay_sink_webhook_ops, err, errlen);
}

static relay_sink *http_create(const json_t *cfg, struct relay_worker *w, char *err,
                               size_t errlen)
{
    return create_sink(cfg, w, &relay_sink_http_ops, err, errlen);
}

/* ---- connection state -------------------------------------------------- */

static size_t on_response_body(char *p, size_t size, size_t nmemb, void *userdata)
{
    wh_slot *slot = userdata;
    size_t n = size * nmemb;
    if (slot->resp.len < RESPONSE_SNIPPET) {
        size_t keep = RESPONSE_SNIPPET - slot->resp.len;
        buf_append(&slot->resp, p, n < keep ? n : keep);
    }
    return n; /* read the rest too, so the connection can be reused */
}

static void close_multi(webhook_sink *ws);

static int wh_open(relay_sink *s, char *err, size_t errlen)
{
    webhook_sink *ws = (webhook_sink *)s;
    if (ws->multi)
        return 0;
    ws->multi = curl_multi_init();
    if (!ws->multi) {
        snprintf(err, errlen, "libcurl: cannot create a multi handle");
        return -1;
    }
    ws->nslots = ws->batch_mode ? 1 : ws->max_in_flight;
    curl_multi_setopt(ws->multi, CURLMOPT_MAXCONNECTS, (long)ws->nslots);
    curl_multi_setopt(ws->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)ws->nslots);
    ws->slots = xcalloc(ws->nslots, sizeof *ws->slots);
    for (size_t i = 0; i < ws->nslots; i++) {
        wh_slot *slot = &ws->slots[i];
        slot->easy = curl_easy_init();
        if (!slot->easy) {
            snprintf(err, errlen, "libcurl: cannot create an easy handle");
            close_multi(ws);
            return -1;
        }
        CURL *e = slot->easy;
        curl_easy_setopt(e, CURLOPT_URL, ws->url);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)ws->timeout_ms);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "pgtrickle-relay/" RELAY_VERSION);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_response_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, slot);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, slot->errbuf);
        curl_easy_setopt(e, CURLOPT_PRIVATE, slot);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        if (ws->method_put)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
        if (ws->tls_ca)
            curl_easy_setopt(e, CURLOPT_CAINFO, ws->tls_ca);
    }
    return 0;
}

static void close_multi(webhook_sink *ws)
{
    for (size_t i = 0; i < ws->nslots; i++) {
        wh_slot *slot = &ws->slots[i];
        if (slot->busy && ws->multi)
            curl_multi_remove_handle(ws->multi, slot->easy);
        if (slot->easy)
            curl_easy_cleanup(slot->easy);
        curl_slist_free_all(slot->hdrs);
        buf_free(&slot->body);
        buf_free(&slot->resp);
    }
    free(ws->slots);
    ws->slots = NULL;
    ws->nslots = 0;
    if (ws->multi)
        curl_multi_cleanup(ws->multi);
    ws->multi = NULL;
}

/* ---- building a request ------------------------------------------------ */

static void put_msgpack_array_header(relay_buf *b, size_t n)
{
    unsigned char h[5];
    if (n < 16) {
        h[0] = (unsigned char)(0x90 | n);
        buf_append(b, h, 1);
    } else if (n <= 0xffff) {
        h[0] = 0xdc;
        h[1] = (unsigned char)(n >> 8);
        h[2] = (unsigned char)n;
        buf_append(b, h, 3);
    } else {
        h[0] = 0xdd;
        h[1] = (unsigned char)(n >> 24);
        h[2] = (unsigned char)(n >> 16);
        h[3] = (unsigned char)(n >> 8);
        h[4] = (unsigned char)n;
        buf_append(b, h, 5);
    }
}

static void encode_body(const webhook_sink *ws, relay_msg **msgs, size_t n, relay_buf *body)
{
    buf_clear(body);
    if (!ws->batch_mode) {
        buf_append(body, msgs[0]->body, msgs[0]->body_len);
        return;
    }
    if (ws->base.format == RELAY_FORMAT_MSGPACK)
        put_msgpack_array_header(body, n);
    else
        buf_putc(body, '[');
    for (size_t i = 0; i < n; i++) {
        if (i && ws->base.format != RELAY_FORMAT_MSGPACK)
            buf_putc(body, ',');
        buf_append(body, msgs[i]->body, msgs[i]->body_len);
    }
    if (ws->base.format != RELAY_FORMAT_MSGPACK)
        buf_putc(body, ']');
}

/* Idempotency-Key: the dedup key, or for a batch "batch-<sha256 of the keys>". */
static int idempotency_key(const webhook_sink *ws, relay_msg **msgs, size_t n, relay_buf *out)
{
    if (!ws->batch_mode) {
        buf_puts(out, msgs[0]->dedup_key);
        return 0;
    }
    char hex[WEBHOOK_HEX_LEN];
    webhook_sha256 *h = webhook_sha256_begin();
    for (size_t i = 0; i < n; i++) {
        if (i)
            webhook_sha256_add(h, "\n", 1);
        webhook_sha256_add(h, msgs[i]->dedup_key, strlen(msgs[i]->dedup_key));
    }
    if (webhook_sha256_end(h, hex) < 0)
        return -1;
    buf_printf(out, "batch-%s", hex);
    return 0;
}

static int append_header(struct curl_slist **list, const char *line)
{
    struct curl_slist *l = curl_slist_append(*list, line);
    if (!l)
        return -1;
    *list = l;
    return 0;
}

/* CloudEvents binary mode (HTTP binding 3.1.3): every attribute but
 * datacontenttype (the Content-Type) as a "ce-" header, percent-encoded
 * (3.1.3.2). Returns 0, or -1 when out of memory. */
static int add_ce_headers(webhook_sink *ws, const relay_msg *m, struct curl_slist **list)
{
    relay_arena local = {0}, *a = m->arena ? m->arena : &local; /* the batch's arena */
    relay_format_ctx ctx = fmt_ctx_for_sink(ws->base.w ? ws->base.w->cfg.name : NULL,
                                            &ws->base.fopts);
    fmt_ce_attrs at;
    fmt_ce_attrs_of(&ctx, m, a, &at);
    const char *names[8], *values[8];
    size_t k = fmt_ce_header_attrs(&at, names, values);
    relay_buf line = {0};
    int rc = 0;
    for (size_t i = 0; i < k && rc == 0; i++) {
        buf_clear(&line);
        buf_printf(&line, "ce-%s: ", names[i]);
        fmt_ce_header_encode(values[i], &line);
        rc = append_header(list, line.data);
    }
    buf_free(&line);
    arena_free(&local);
    return rc;
}

/* The request's header list: configured headers, then the relay's own. */
static int build_headers(webhook_sink *ws, wh_slot *slot, char *err, size_t errlen)
{
    relay_buf line = {0};
    struct curl_slist *list = NULL;
    int rc = -1;
    for (struct curl_slist *h = ws->cfg_headers; h; h = h->next)
        if (append_header(&list, h->data) < 0)
            goto oom;
    if (!ws->has_content_type) {
        if (ws->base.format == RELAY_FORMAT_CLOUDEVENTS && ws->batch_mode)
            buf_puts(&line, "Content-Type: application/cloudevents-batch+json; charset=utf-8");
        else if (ws->base.format == RELAY_FORMAT_CLOUDEVENTS && !ws->base.fopts.ce_binary)
            buf_puts(&line, "Content-Type: application/cloudevents+json; charset=utf-8");
        else
            buf_printf(&line, "Content-Type: %s",
                       relay_format_content_type(ws->base.format, &ws->base.fopts));
        if (append_header(&list, line.data) < 0)
            goto oom;
    }
    if (ws->base.format == RELAY_FORMAT_CLOUDEVENTS && ws->base.fopts.ce_binary &&
        add_ce_headers(ws, slot->msgs[0], &list) < 0)
        goto oom;
    /* No "Expect: 100-continue" round trip before large bodies. */
    if (append_header(&list, "Expect:") < 0)
        goto oom;
    buf_clear(&line);
    buf_puts(&line, "Idempotency-Key: ");
    if (idempotency_key(ws, slot->msgs, slot->n, &line) < 0) {
        snprintf(err, errlen, "libcrypto: SHA-256 failed");
        goto out;
    }
    if (append_header(&list, line.data) < 0)
        goto oom;
    int full_refresh = 0;
    for (size_t i = 0; i < slot->n; i++)
        full_refresh |= slot->msgs[i]->is_full_refresh;
    if (full_refresh && append_header(&list, WEBHOOK_FULL_REFRESH_HEADER ": true") < 0)
        goto oom;
    if (ws->secret) {
        char ts[32], hex[WEBHOOK_HEX_LEN];
        snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
        if (webhook_hmac_hex(ws->secret, ws->secret_len, ts, slot->body.data, slot->body.len,
                             hex) < 0) {
            snprintf(err, errlen, "libcrypto: HMAC-SHA256 failed");
            goto out;
        }
        buf_clear(&line);
        buf_printf(&line, WEBHOOK_TIMESTAMP_HEADER ": %s", ts);
        if (append_header(&list, line.data) < 0)
            goto oom;
        buf_clear(&line);
        buf_printf(&line, WEBHOOK_SIGNATURE_HEADER ": " WEBHOOK_SIGNATURE_PREFIX "%s", hex);
        if (append_header(&list, line.data) < 0)
            goto oom;
    }
    slot->hdrs = list;
    list = NULL;
    rc = 0;
    goto out;
oom:
    snprintf(err, errlen, "libcurl: out of memory building headers");
out:
    curl_slist_free_all(list);
    buf_free(&line);
    return rc;
}

/* A dedup key is sent as a header value: it must not contain control characters. */
static int key_is_sendable(const relay_msg *m)
{
    return valid_header_value(m->dedup_key);
}

/* Prepare `slot` for msgs[0..n) and add it to the multi handle. */
static int start_request(webhook_sink *ws, wh_slot *slot, relay_msg **msgs, size_t n, char *err,
                         size_t errlen)
{
    slot->msgs = msgs;
    slot->n = n;
    slot->errbuf[0] = '\0';
    buf_clear(&slot->resp);
    curl_slist_free_all(slot->hdrs);
    slot->hdrs = NULL;
    encode_body(ws, msgs, n, &slot->body);
    if (build_headers(ws, slot, err, errlen) < 0)
        return -1;
    CURL *e = slot->easy;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, slot->hdrs);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)slot->body.len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, slot->body.data ? slot->body.data : "");
    CURLMcode mc = curl_multi_add_handle(ws->multi, e);
    if (mc != CURLM_OK) {
        snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(mc));
        return -1;
    }
    slot->busy = 1;
    ws->requests++;
    return 0;
}

/* ---- outcomes ------------------------------------------------------------ */

/* The response snippet as printable ASCII (it goes into logs and the
 * dead-letter table, whose text column needs valid UTF-8). */
static void sanitize(relay_buf *b)
{
    for (size_t i = 0; i < b->len; i++) {
        unsigned char c = (unsigned char)b->data[i];
        if (c < 0x20 || c >= 0x7f)
            b->data[i] = c == '\n' || c == '\r' || c == '\t' ? ' ' : '?';
    }
    while (b->len && b->data[b->len - 1] == ' ')
        b->data[--b->len] = '\0';
}

/* Give every message of the request the same outcome (`why` is copied). */
static void mark_all(wh_slot *slot, relay_msg_state state, const char *why)
{
    for (size_t i = 0; i < slot->n; i++) {
        if (state == MSG_CONFIRMED) {
            slot->msgs[i]->state = MSG_CONFIRMED;
            slot->msgs[i]->error = NULL;
        } else {
            msg_set_error(slot->msgs[i], state, "%s", why);
        }
    }
}

/* Outcomes of the requests of one publish() call. */
typedef struct call_result {
    size_t settled;          /* requests confirmed (2xx) or rejected (4xx) */
    size_t transient;        /* requests to retry: transport error or retryable status */
    char first_error[400];   /* the first transient failure */
} call_result;

static void note_transient(call_result *cr, const char *text)
{
    if (cr->transient++ == 0)
        snprintf(cr->first_error, sizeof cr->first_error, "%s", text);
}

static void finish_request(webhook_sink *ws, wh_slot *slot, CURLcode res, call_result *cr)
{
    char text[400];
    curl_multi_remove_handle(ws->multi, slot->easy);
    slot->busy = 0;
    if (res != CURLE_OK) {
        const char *why = slot->errbuf[0] ? slot->errbuf : curl_easy_strerror(res);
        ws->transport_errors++;
        snprintf(text, sizeof text, "%s %.100s: %.250s", ws->method_put ? "PUT" : "POST",
                 ws->url_safe, why);
        note_transient(cr, text);
        mark_all(slot, MSG_RETRY, text);
        return;
    }
    long status = 0;
    curl_easy_getinfo(slot->easy, CURLINFO_RESPONSE_CODE, &status);
    sanitize(&slot->resp);
    const char *snippet = slot->resp.data ? slot->resp.data : "";
    if (status >= 200 && status <= 299) {
        ws->responses_2xx++;
        cr->settled++;
        mark_all(slot, MSG_CONFIRMED, NULL);
        return;
    } else if (status >= 100 && status <= 599 && ws->retry_status[status]) {
        ws->responses_retried++;
        curl_off_t after = 0;
        if (curl_easy_getinfo(slot->easy, CURLINFO_RETRY_AFTER, &after) == CURLE_OK && after > 0) {
            int64_t ms = (int64_t)after * 1000;
            if (ms > MAX_RETRY_AFTER_MS)
                ms = MAX_RETRY_AFTER_MS;
            if (ms > ws->base.retry_after_ms)
                ws->base.retry_after_ms = ms;
        }
        snprintf(text, sizeof text, "HTTP %ld from the webhook endpoint (retried): %s", status,
                 snippet);
    } else if (status >= 400 && status <= 499) {
        ws->responses_rejected++;
        cr->settled++;
        snprintf(text, sizeof text, "HTTP %ld from the webhook endpoint: %s", status, snippet);
        mark_all(slot, MSG_REJECTED, text);
        return;
    } else if (status >= 300 && status <= 399) {
        ws->responses_retried++;
        snprintf(text, sizeof text, "HTTP %ld from the webhook endpoint: redirects are not "
                 "followed, fix sink.url", status);
    } else {
        ws->responses_retried++;
        snprintf(text, sizeof text, "HTTP %ld from the webhook endpoint (retried): %s", status,
                 snippet);
    }
    note_transient(cr, text);
    mark_all(slot, MSG_RETRY, text);
}

/* The worker is stopping and its shutdown deadline has passed. */
static int must_abandon(const webhook_sink *ws)
{
    relay_worker *w = ws->base.w;
    return w && atomic_load(&w->stop) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms);
}

static void drain_finished(webhook_sink *ws, size_t *active, call_result *cr)
{
    CURLMsg *cm;
    int queued;
    while ((cm = curl_multi_info_read(ws->multi, &queued)) != NULL) {
        if (cm->msg != CURLMSG_DONE)
            continue;
        wh_slot *slot = NULL;
        curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&slot);
        if (!slot || !slot->busy)
            continue;
        finish_request(ws, slot, cm->data.result, cr);
        (*active)--;
    }
}

static wh_slot *free_slot(webhook_sink *ws)
{
    for (size_t i = 0; i < ws->nslots; i++)
        if (!ws->slots[i].busy)
            return &ws->slots[i];
    return NULL;
}

static void abandon_in_flight(webhook_sink *ws)
{
    for (size_t i = 0; i < ws->nslots; i++) {
        wh_slot *slot = &ws->slots[i];
        if (!slot->busy)
            continue;
        curl_multi_remove_handle(ws->multi, slot->easy);
        slot->busy = 0;
        mark_all(slot, MSG_RETRY, "webhook request abandoned at the shutdown deadline");
    }
}

static int wh_publish(relay_sink *s, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    webhook_sink *ws = (webhook_sink *)s;
    for (size_t i = 0; i < n; i++) {
        msgs[i]->state = MSG_RETRY;
        msgs[i]->error = NULL;
    }
    if (n == 0)
        return 0;
    if (wh_open(s, err, errlen) < 0)
        return -1;
    /* Requests: msgs[0..n) as one batch (keys travel in the body and the
     * hash), or one per message (its key is a header value). */
    size_t units = ws->batch_mode ? 1 : n;
    call_result cr = {0};
    size_t next = 0, active = 0;
    int rc = 0;
    for (;;) {
        while (active < ws->nslots && next < units) {
            relay_msg **part = ws->batch_mode ? msgs : &msgs[next];
            size_t count = ws->batch_mode ? n : 1;
            next++;
            if (!ws->batch_mode && !key_is_sendable(part[0])) {
                msg_set_error(part[0], MSG_REJECTED, "dedup key contains control characters "
                              "and cannot be sent as Idempotency-Key");
                continue;
            }
            if (start_request(ws, free_slot(ws), part, count, err, errlen) < 0) {
                abandon_in_flight(ws);
                return -1;
            }
            active++;
        }
        int running = 0;
        CURLMcode mc = curl_multi_perform(ws->multi, &running);
        if (mc != CURLM_OK) {
            snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(mc));
            abandon_in_flight(ws);
            close_multi(ws);
            return -1;
        }
        drain_finished(ws, &active, &cr);
        if (active == 0 && next == units)
            break;
        if (must_abandon(ws)) {
            abandon_in_flight(ws);
            snprintf(err, errlen, "shutdown deadline passed with webhook requests in flight");
            rc = -1;
            break;
        }
        if (active > 0)
            curl_multi_poll(ws->multi, NULL, 0, POLL_SLICE_MS, NULL);
    }
    if (rc == 0 && cr.settled == 0 && cr.transient > 0) {
        /* Not one request got through (unreachable, timed out, 503, ...):
         * the endpoint is down, which the worker reports as such. */
        snprintf(err, errlen, "%s", cr.first_error);
        rc = -1;
    }
    return rc;
}

/* ---- status and cleanup ------------------------------------------------- */

static void wh_describe(relay_sink *s, relay_buf *out)
{
    webhook_sink *ws = (webhook_sink *)s;
    buf_puts(out, "{\"url\":");
    buf_put_json_str(out, ws->url_safe, strlen(ws->url_safe));
    buf_printf(out, ",\"method\":\"%s\",\"batch_mode\":%s,\"signed\":%s,\"requests\":%" PRIu64
               ",\"responses_2xx\":%" PRIu64 ",\"responses_retried\":%" PRIu64
               ",\"responses_rejected\":%" PRIu64 ",\"transport_errors\":%" PRIu64 "}",
               ws->method_put ? "PUT" : "POST", ws->batch_mode ? "true" : "false",
               ws->secret ? "true" : "false", ws->requests, ws->responses_2xx,
               ws->responses_retried, ws->responses_rejected, ws->transport_errors);
}

static void wh_destroy(relay_sink *s)
{
    if (!s)
        return;
    webhook_sink *ws = (webhook_sink *)s;
    close_multi(ws);
    curl_slist_free_all(ws->cfg_headers);
    if (ws->secret) {
        memset(ws->secret, 0, ws->secret_len);
        free(ws->secret);
    }
    if (ws->requests)
        log_debug(pipeline_name(ws), "webhook sink %s: %" PRIu64 " requests, %" PRIu64 " 2xx",
                  ws->url_safe, ws->requests, ws->responses_2xx);
    free(ws->url);
    free(ws->url_safe);
    relay_format_opts_free(&ws->base.fopts);
    free(ws->tls_ca);
    free(ws->base.subject_template);
    free(ws);
}

const relay_sink_ops relay_sink_webhook_ops = {
    .type = "webhook",
    .create = wh_create,
    .open = wh_open,
    .publish = wh_publish,
    .describe = wh_describe,
    .destroy = wh_destroy,
};

/* "http" is the name pg_trickle's SQL API uses in its examples. */
const relay_sink_ops relay_sink_http_ops = {
    .type = "http",
    .create = http_create,
    .open = wh_open,
    .publish = wh_publish,
    .describe = wh_describe,
    .destroy = wh_destroy,
};
