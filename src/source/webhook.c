/*
 * webhook.c - the HTTP webhook receiver: a reverse source (SPEC section 8,
 * row webhook). Senders POST events; they are written to the inbox and the
 * sender gets 200 only after that transaction committed.
 *
 * Config (pipeline "source" object):
 *   listen_addr         "host:port" or "[v6]:port" ("127.0.0.1:8080")
 *   path                accepted path ("/inbox"); sub-paths "/inbox/..." too
 *   auth_token          require "Authorization: Bearer <token>"
 *   auth_header, auth_value
 *                       require header <auth_header> to equal <auth_value>
 *   signing_secret      require a valid X-Pgtrickle-Signature (client/webhook.h)
 *   signature_tolerance_s  accepted age / clock skew of X-Pgtrickle-Timestamp (300)
 *   max_body_bytes      larger bodies get 413 (10 MiB)
 *   batch_size          events per inbox transaction (500)
 *   element_key_field   array elements (and objects without Idempotency-Key)
 *                       that carry this string field use it as their dedup
 *                       key ("dedup_key"; "" turns that off)
 *   busy_timeout_ms     answer 503 when the pipeline has not taken requests
 *                       for this long (5000)
 *   max_pending_bytes   body bytes held in memory at once, uploading, queued
 *                       or in the batch; beyond it 503 (64 MiB)
 *   max_unverified_bytes  with signing_secret as the only check: body bytes
 *                       of requests whose signature is not checked yet
 *                       (max_pending_bytes / 4)
 *   max_connections     simultaneous connections (1024)
 *   request_timeout_ms  total time for a request's headers and body, and
 *                       again for its answer to be taken (30000)
 *   type                "webhook" (or "http")
 *
 * Threads.  libmicrohttpd runs the server on its own thread (epoll). A
 * request is read into memory, checked, split into events and queued; its
 * connection is then suspended (MHD_suspend_connection), so it holds no
 * thread while it waits. The worker thread's poll() takes whole requests off
 * the queue (up to batch_size events, or one larger request) into a batch;
 * after the inbox COMMIT the worker calls ack(), which sets 200 on each
 * request of the batch and resumes its connection; release() (the batch will
 * not be committed) sets 503. A resumed connection re-enters the access
 * handler, which queues the prepared response. One mutex guards the queue
 * and the request states; it is never held while calling libmicrohttpd
 * (answered connections are collected, then resumed after unlocking). An
 * eventfd wakes poll().
 *
 * A request is owned by two parties, each holding a reference: libmicrohttpd
 * (until its completion callback) and the queue/batch (until it is
 * answered). Event payloads point into the request's body, which therefore
 * lives until the batch is acked or released.
 *
 * Answers:
 *   200  the events are committed in the inbox (or dead-lettered there);
 *        body {"status":"accepted","events":N,"event_ids":[...],"dead_lettered":K}
 *   400  empty body, invalid JSON sent as JSON, empty array, bad Idempotency-Key,
 *        a body that is neither JSON nor UTF-8 text
 *   401  missing or wrong token / auth header, missing, stale or bad signature
 *   404  another path; 405 another method (Allow: POST)
 *   413  body larger than max_body_bytes (from Content-Length when sent,
 *        before the body is read), or an array of more than 100 000 elements
 *   503  (with Retry-After) PostgreSQL is unavailable, the pipeline has not
 *        taken requests for busy_timeout_ms, the queue is full, the batch
 *        could not be committed, or the relay is shutting down
 *
 * Events: a JSON object is one event; a JSON array one event per element; a
 * body that is not JSON (and not declared as JSON) is one event stored as a
 * JSON string. Each event: op "event", subject = the request path (the
 * event_type fallback), source_name "webhook", trace_id = traceparent.
 * Dedup key (inbox event_id): for an object, Idempotency-Key, else its
 * element_key_field, else a UUID; for element i of an array, its
 * element_key_field, else "<Idempotency-Key>:<i>", else a UUID. Payload bytes
 * are stored as sent: never re-serialised, so numbers keep their spelling.
 *
 * CloudEvents (HTTP protocol binding 1.0; formats.h parses them): a request
 * with Content-Type application/cloudevents+json is one structured event,
 * application/cloudevents-batch+json a JSON array of them, and a request
 * with a ce-specversion header one binary-mode event (ce-id, ce-type,
 * ce-source percent-decoded, the body its data). Each event's id is its
 * dedup key (Idempotency-Key is not read), its type its subject (so the
 * inbox's event_type), its data the payload (JSON as sent, text as a JSON
 * string, JSON null without data). A request that breaks the specification
 * (a REQUIRED attribute missing or empty, specversion other than 1.0, ...)
 * gets 400 naming the rule.
 *
 * Hostile clients.  Nothing is read that must be refused: the path, the
 * method, the bearer token / auth header, the presence and age of the
 * signature headers and a Content-Length over max_body_bytes are checked
 * when the headers are complete (the access handler's first call), and a
 * refusal queued then makes libmicrohttpd answer without reading the body
 * (connection.c: MHD_queue_response in HEADERS_PROCESSED sets
 * discard_request; with "Expect: 100-continue" the client never sends it).
 * Memory: every body byte the receiver holds (uploading, queued, in the
 * worker's batch) is reserved against max_pending_bytes before it is stored:
 * Content-Length up front (the buffer is allocated at exactly that size), a
 * chunked body as its buffer grows; the reservation is the buffer's capacity
 * and is returned when the request is freed. One request is always admitted
 * when no other holds bytes, so a body up to max_body_bytes passes even with
 * a smaller max_pending_bytes. When only signing_secret authenticates, the
 * HMAC covers the body, so anybody can make the receiver store a body before
 * it can be refused; such bodies are also counted against
 * max_unverified_bytes until their signature checks out, which bounds what an
 * unauthenticated flood can hold (verified requests keep the rest).
 * A refusal that arises while a body is still arriving (a chunked body
 * growing past max_body_bytes or past a budget) cannot be queued through
 * libmicrohttpd, whose MHD_queue_response accepts only the states
 * HEADERS_PROCESSED and FULL_REQ_RECEIVED; refuse_mid_body() writes the
 * complete answer on the socket itself (nothing else is being written then:
 * any "100 Continue" is fully sent before the body is read) with
 * "Connection: close", and returns MHD_NO so libmicrohttpd closes the
 * connection without reading more. Time: src/http_guard.c gives each request
 * request_timeout_ms for its headers and body (and again for its answer),
 * not counting the time it waits, suspended, for the inbox; near
 * max_connections it sheds the connection that has been receiving the
 * longest, so a flood of slow clients cannot keep normal senders out.
 *
 * PostgreSQL unavailable.  The worker stops polling while its connection is
 * down, so the receiver answers new requests with 503 whenever the worker's
 * stats say PostgreSQL is down or poll() has not run for busy_timeout_ms;
 * queued requests get 503 from idle() then. While it waits in poll() the
 * source also watches the worker's connection, so a server shutdown is seen
 * at once rather than at the next INSERT.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "../buf.h"
#include "../config.h"
#include "../http_guard.h"
#include "../log.h"
#include "../net.h"
#include "../stats.h"
#include "../client/webhook.h"
#include "../formats.h"
#include "../json_scan.h"
#include "../worker.h"
#include "source.h"
#include "webhook.h"

#define DEFAULT_LISTEN "127.0.0.1:8080"
#define DEFAULT_PATH "/inbox"
#define DEFAULT_MAX_BODY ((int64_t)10 * 1024 * 1024)
#define DEFAULT_MAX_PENDING ((int64_t)64 * 1024 * 1024)
#define POLL_INTERVAL_MS 1000
#define MAX_KEY_LEN RELAY_MAX_KEY_BYTES
#define MAX_EVENTS_PER_REQUEST 100000
#define STOP_DRAIN_MS 2000
#define DEFAULT_REQUEST_TIMEOUT_MS 30000
#define CHUNKED_FIRST_CAP 4096
/* Under AddressSanitizer every body comes from malloc, so that its bounds are
 * checked (a mapping of ours would not be). */
#if defined(__SANITIZE_ADDRESS__)
#define BODY_MMAP_MIN SIZE_MAX
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BODY_MMAP_MIN SIZE_MAX
#endif
#endif
#ifndef BODY_MMAP_MIN
#define BODY_MMAP_MIN ((size_t)128 * 1024)
#endif

typedef enum {
    REQ_READING = 0, /* headers/body being received */
    REQ_QUEUED,      /* waiting for poll() */
    REQ_IN_BATCH,    /* handed to the worker */
    REQ_ANSWERED,    /* status set, connection resumed */
} req_state;

typedef struct wh_event {
    const char *payload; /* NUL-terminated, inside body (or `owned`) */
    size_t len;
    int is_json;
    char *key;           /* dedup key (owned) */
    char *type;          /* CloudEvents type: the event's subject (owned); NULL: the path */
    char *owned;         /* decoded data_base64 (owned), when payload points here */
} wh_event;

typedef struct wh_req {
    struct wh_req *next;
    struct MHD_Connection *conn;
    int refs;                 /* guarded by the source mutex */
    req_state state;
    int suspended;
    int resumed;              /* answered after a suspension (counted in answering) */
    relay_buf body;
    int64_t reserved;         /* bytes reserved for body (its capacity), guarded by mu */
    int unverified;           /* reserved also counts against max_unverified_bytes */
    char *path;               /* the subject of its events: the decoded path */
    size_t path_len;          /* its bytes (it may hold "%00") */
    char *trace_id;
    wh_event *events;
    size_t nevents;
    size_t dead;              /* events dead-lettered (set by ack) */
    unsigned status;          /* the answer, once ANSWERED */
    char *answer;             /* JSON body of the answer */
} wh_req;

/* Requests answered, by status, for /status. */
enum { CNT_200, CNT_400, CNT_401, CNT_404, CNT_405, CNT_413, CNT_503, CNT_N };
static const char *const count_names[CNT_N] = {"200", "400", "401", "404", "405", "413", "503"};

typedef struct webhook_source {
    relay_source base;
    /* config */
    char *listen_addr;
    char *path;
    char *auth_token;
    char *auth_header;
    char *auth_value;
    char *secret;
    int64_t tolerance_s;
    int64_t max_body;
    int64_t batch_size;
    char *element_key_field;  /* NULL: off */
    int64_t busy_timeout_ms;
    int64_t max_pending_bytes;
    int64_t max_unverified_bytes;
    int64_t max_connections;
    int64_t request_timeout_ms;
    /* server */
    struct MHD_Daemon *mhd;
    http_guard *guard;
    int evfd;
    /* shared state, guarded by mu */
    pthread_mutex_t mu;
    wh_req *q_head, *q_tail;  /* queued requests */
    wh_req *b_head;           /* requests of the batch the worker holds */
    size_t queued_requests;
    int64_t held_bytes;       /* body bytes reserved by all live requests */
    int64_t unverified_bytes; /* of which by requests whose signature is unchecked */
    size_t answering;         /* answered, resumed, response not yet sent */
    struct MHD_Connection **to_resume; /* answered, to resume outside the lock */
    size_t n_resume, cap_resume;
    int closing;
    int pg_lost;              /* poll() saw the worker's connection drop */
    /* liveness, written by the worker thread, read by the server thread */
    atomic_int in_poll;
    _Atomic int64_t last_poll_ms;
    _Atomic uint64_t counts[CNT_N];
} webhook_source;

extern const relay_source_ops relay_source_webhook_ops;
extern const relay_source_ops relay_source_http_ops;

/* ---- configuration ----------------------------------------------------- */

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static int parse_secret_key(const json_t *cfg, const char *key, char **out, char *err,
                            size_t errlen)
{
    const char *v;
    if (cfg_str(cfg, "source", key, NULL, &v, err, errlen) < 0)
        return -1;
    if (v && !*v) {
        snprintf(err, errlen, "source.%s: must not be empty (remove the key to turn it off)", key);
        return -1;
    }
    *out = dup_or_null(v);
    return 0;
}

static int parse_path(webhook_source *s, const json_t *cfg, char *err, size_t errlen)
{
    const char *p;
    if (cfg_str(cfg, "source", "path", DEFAULT_PATH, &p, err, errlen) < 0)
        return -1;
    size_t n = strlen(p);
    if (n == 0 || p[0] != '/' || strpbrk(p, "?# \t\r\n")) {
        snprintf(err, errlen, "source.path: expected an absolute path such as \"/inbox\"");
        return -1;
    }
    while (n > 1 && p[n - 1] == '/')
        n--; /* "/inbox/" matches like "/inbox" */
    s->path = xstrndup(p, n);
    return 0;
}

static int parse_auth(webhook_source *s, const json_t *cfg, char *err, size_t errlen)
{
    const char *hdr;
    if (parse_secret_key(cfg, "auth_token", &s->auth_token, err, errlen) < 0 ||
        parse_secret_key(cfg, "signing_secret", &s->secret, err, errlen) < 0 ||
        parse_secret_key(cfg, "auth_value", &s->auth_value, err, errlen) < 0 ||
        cfg_str(cfg, "source", "auth_header", NULL, &hdr, err, errlen) < 0)
        return -1;
    if (hdr && !*hdr)
        hdr = NULL;
    if ((hdr != NULL) != (s->auth_value != NULL)) {
        snprintf(err, errlen, "source.%s: auth_header and auth_value go together",
                 hdr ? "auth_value" : "auth_header");
        return -1;
    }
    s->auth_header = dup_or_null(hdr);
    return 0;
}

static int parse_element_key(webhook_source *s, const json_t *cfg, char *err, size_t errlen)
{
    const char *f;
    if (cfg_str(cfg, "source", "element_key_field", "dedup_key", &f, err, errlen) < 0)
        return -1;
    s->element_key_field = f && *f ? xstrdup(f) : NULL;
    return 0;
}


static void wh_destroy(relay_source *base);

static relay_source *create_source(const json_t *cfg, relay_worker *w, const relay_source_ops *ops,
                                   char *err, size_t errlen)
{
    static const char *const keys[] = {
        "type", "listen_addr", "path", "auth_token", "auth_header", "auth_value",
        "signing_secret", "signature_tolerance_s", "max_body_bytes", "batch_size",
        "element_key_field", "busy_timeout_ms", "max_pending_bytes", "max_unverified_bytes",
        "max_connections", "request_timeout_ms", NULL};
    const char *listen;
    char host[256], port[16];
    webhook_source *s = xcalloc(1, sizeof *s);
    s->base.ops = ops;
    s->base.w = w;
    s->evfd = -1;
    pthread_mutex_init(&s->mu, NULL);
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str(cfg, "source", "listen_addr", DEFAULT_LISTEN, &listen, err, errlen) < 0)
        goto fail;
    if (net_split_addr(listen, host, sizeof host, port, sizeof port) < 0) {
        snprintf(err, errlen, "source.listen_addr: expected host:port or [ipv6]:port");
        goto fail;
    }
    s->listen_addr = xstrdup(listen);
    if (parse_path(s, cfg, err, errlen) < 0 || parse_auth(s, cfg, err, errlen) < 0 ||
        parse_element_key(s, cfg, err, errlen) < 0 ||
        cfg_int(cfg, "source", "signature_tolerance_s", 300, 1, 86400, &s->tolerance_s, err,
                errlen) < 0 ||
        cfg_int(cfg, "source", "max_body_bytes", DEFAULT_MAX_BODY, 1, (int64_t)1 << 30,
                &s->max_body, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 500, 1, 100000, &s->batch_size, err, errlen) < 0 ||
        cfg_int(cfg, "source", "busy_timeout_ms", 5000, 100, 3600000, &s->busy_timeout_ms, err,
                errlen) < 0 ||
        cfg_int(cfg, "source", "max_pending_bytes", DEFAULT_MAX_PENDING, 1024, (int64_t)1 << 40,
                &s->max_pending_bytes, err, errlen) < 0 ||
        cfg_int(cfg, "source", "max_unverified_bytes", s->max_pending_bytes / 4, 1024,
                (int64_t)1 << 40, &s->max_unverified_bytes, err, errlen) < 0 ||
        cfg_int(cfg, "source", "max_connections", 1024, 1, 65536, &s->max_connections, err,
                errlen) < 0 ||
        cfg_int(cfg, "source", "request_timeout_ms", DEFAULT_REQUEST_TIMEOUT_MS, 100, 3600000,
                &s->request_timeout_ms, err, errlen) < 0)
        goto fail;
    return &s->base;
fail:
    wh_destroy(&s->base);
    return NULL;
}

static relay_source *wh_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    return create_source(cfg, w, &relay_source_webhook_ops, err, errlen);
}

static relay_source *http_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    return create_source(cfg, w, &relay_source_http_ops, err, errlen);
}

/* ---- requests ----------------------------------------------------------- */

/*
 * Body buffers.  A body of BODY_MMAP_MIN bytes or more is mapped directly
 * (mmap, grown with mremap, munmap when freed) instead of coming from malloc,
 * so what a body costs is what it reserved: malloc's dynamic mmap threshold
 * would keep large freed bodies in its heap (resident), and realloc would hold
 * two copies while growing a chunked body. Untouched pages of a mapping are
 * not resident either, so a client that declares a large Content-Length and
 * sends little costs little. Returns 0, or -1 when the memory is not there.
 */
static int body_set_cap(relay_buf *b, size_t cap)
{
    void *p;
    if (cap < BODY_MMAP_MIN) {
        p = realloc(b->data, cap);
        if (!p)
            return -1;
    } else if (b->cap >= BODY_MMAP_MIN) {
        p = mremap(b->data, b->cap, cap, MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return -1;
    } else {
        p = mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return -1;
        if (b->data)
            memcpy(p, b->data, b->len + 1);
        free(b->data);
    }
    if (!b->data)
        ((char *)p)[0] = '\0';
    b->data = p;
    b->cap = cap;
    return 0;
}

static void body_free(relay_buf *b)
{
    if (b->cap >= BODY_MMAP_MIN)
        munmap(b->data, b->cap);
    else
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* Return r's body reservation. Caller holds s->mu. */
static void release_locked(webhook_source *s, wh_req *r)
{
    s->held_bytes -= r->reserved;
    if (r->unverified)
        s->unverified_bytes -= r->reserved;
    r->reserved = 0;
    r->unverified = 0;
}

/* Reserve n more body bytes for r, or say why not: another request holds
 * bytes and the total would pass max_pending_bytes (or, for an unverified
 * body, max_unverified_bytes). Caller holds s->mu. */
static const char *reserve_locked(webhook_source *s, wh_req *r, int64_t n)
{
    if (s->held_bytes > r->reserved && s->held_bytes + n > s->max_pending_bytes)
        return "too many requests are waiting";
    if (r->unverified && s->unverified_bytes > r->reserved &&
        s->unverified_bytes + n > s->max_unverified_bytes)
        return "too many unsigned bodies are being received";
    s->held_bytes += n;
    if (r->unverified)
        s->unverified_bytes += n;
    r->reserved += n;
    return NULL;
}

static const char *reserve(webhook_source *s, wh_req *r, int64_t n)
{
    pthread_mutex_lock(&s->mu);
    const char *why = reserve_locked(s, r, n);
    pthread_mutex_unlock(&s->mu);
    return why;
}

/* Free r's body now (it is refused) and return its reservation. */
static void drop_body(webhook_source *s, wh_req *r)
{
    pthread_mutex_lock(&s->mu);
    release_locked(s, r);
    pthread_mutex_unlock(&s->mu);
    body_free(&r->body);
}

/* Caller holds s->mu. */
static void req_free(webhook_source *s, wh_req *r)
{
    release_locked(s, r);
    for (size_t i = 0; i < r->nevents; i++) {
        free(r->events[i].key);
        free(r->events[i].type);
        free(r->events[i].owned);
    }
    free(r->events);
    body_free(&r->body);
    free(r->path);
    free(r->trace_id);
    free(r->answer);
    free(r);
}

/* Drop one reference; the caller holds s->mu. */
static void req_unref_locked(webhook_source *s, wh_req *r)
{
    if (--r->refs == 0)
        req_free(s, r);
}

static void count(webhook_source *s, unsigned status)
{
    int k;
    switch (status) {
    case 200: k = CNT_200; break;
    case 400: k = CNT_400; break;
    case 401: k = CNT_401; break;
    case 404: k = CNT_404; break;
    case 405: k = CNT_405; break;
    case 413: k = CNT_413; break;
    default: k = CNT_503; break;
    }
    atomic_fetch_add(&s->counts[k], 1);
}

/* A JSON error body {"error": "..."}; bytes outside printable ASCII (a
 * parser message may quote the client's bytes) become '?'. */
static char *error_body(const char *why)
{
    char *text = xstrdup(why);
    for (char *c = text; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
            *c = '?';
    relay_buf b = {0};
    buf_puts(&b, "{\"error\":");
    buf_put_json_str(&b, text, strlen(text));
    buf_puts(&b, "}\n");
    free(text);
    return buf_steal(&b);
}

/* Queue a response now (from the access handler). `body` is taken over. */
static enum MHD_Result respond(webhook_source *s, struct MHD_Connection *conn, unsigned status,
                               char *body)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    else if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "POST");
    else if (status == MHD_HTTP_UNAUTHORIZED && s->auth_token)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    count(s, status);
    http_guard_responding(conn);
    return ret;
}

static enum MHD_Result reject(webhook_source *s, struct MHD_Connection *conn, unsigned status,
                              const char *why)
{
    log_trace(s->base.w ? s->base.w->cfg.name : NULL, "webhook receiver: %u %s", status, why);
    return respond(s, conn, status, error_body(why));
}

/* Why the pipeline is not taking requests now (shutting down, PostgreSQL
 * down, not polled for busy_timeout_ms), or NULL. Caller holds s->mu. */
static const char *not_taking_locked(webhook_source *s)
{
    relay_worker *w = s->base.w;
    if (s->closing)
        return "the relay is shutting down";
    if (s->pg_lost || (w && w->stats && !atomic_load(&w->stats->pg_up)))
        return "PostgreSQL is unavailable";
    if (!atomic_load(&s->in_poll) &&
        now_mono_ms() - atomic_load(&s->last_poll_ms) > s->busy_timeout_ms)
        return "the inbox is not accepting events right now";
    return NULL;
}

static const char *not_taking(webhook_source *s)
{
    pthread_mutex_lock(&s->mu);
    const char *why = not_taking_locked(s);
    pthread_mutex_unlock(&s->mu);
    return why;
}

/* libmicrohttpd's URL unescaping turns "%00" into a NUL that cuts the path
 * short, and the path handler sees a C string. Keep the request target as
 * sent (MHD_OPTION_UNESCAPE_CALLBACK) and decode it here, with its length:
 * the path becomes the events' subject byte for byte, and the inbox writer
 * decides whether those bytes can be stored (else: dead letter). */
static size_t keep_escapes(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* Percent-decode a request path (RFC 3986 section 2.1) into `out`; a '%' not
 * followed by two hex digits is kept as it is. */
static void decode_path(const char *url, relay_buf *out)
{
    buf_clear(out);
    for (size_t i = 0; url[i]; i++) {
        int hi, lo;
        if (url[i] == '%' && (hi = hexval(url[i + 1])) >= 0 && (lo = hexval(url[i + 2])) >= 0) {
            char c = (char)(hi * 16 + lo);
            buf_append(out, &c, 1);
            i += 2;
        } else {
            buf_append(out, url + i, 1);
        }
    }
}

/* "/inbox" matches "/inbox", "/inbox/" and "/inbox/anything" (decoded). */
static int path_matches(const webhook_source *s, const char *url)
{
    if (strcmp(s->path, "/") == 0)
        return url[0] == '/';
    relay_buf d = {0};
    decode_path(url, &d);
    size_t n = strlen(s->path);
    int ok = d.len >= n && memcmp(d.data, s->path, n) == 0 && (d.len == n || d.data[n] == '/');
    buf_free(&d);
    return ok;
}

static int check_auth(webhook_source *s, struct MHD_Connection *conn, const char **why)
{
    if (s->auth_token) {
        const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                    MHD_HTTP_HEADER_AUTHORIZATION);
        if (!h || strncasecmp(h, "Bearer ", 7) != 0) {
            *why = "missing bearer token";
            return -1;
        }
        h += 7;
        while (*h == ' ')
            h++;
        if (!webhook_secret_equal(h, strlen(h), s->auth_token, strlen(s->auth_token))) {
            *why = "wrong bearer token";
            return -1;
        }
    }
    if (s->auth_header) {
        const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, s->auth_header);
        if (!h || !webhook_secret_equal(h, strlen(h), s->auth_value, strlen(s->auth_value))) {
            *why = "missing or wrong authentication header";
            return -1;
        }
    }
    return 0;
}

/* Checks that need only the request line and headers. Returns 0, or the
 * status to answer with (and *why). */
static unsigned check_headers(webhook_source *s, struct MHD_Connection *conn, const char *url,
                              const char *method, const char **why)
{
    if (!path_matches(s, url)) {
        *why = "not found";
        return MHD_HTTP_NOT_FOUND;
    }
    if (strcmp(method, MHD_HTTP_METHOD_POST) != 0) {
        *why = "method not allowed: use POST";
        return MHD_HTTP_METHOD_NOT_ALLOWED;
    }
    if (check_auth(s, conn, why) < 0)
        return MHD_HTTP_UNAUTHORIZED;
    if (s->secret &&
        webhook_check_signature_headers(
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, WEBHOOK_TIMESTAMP_HEADER),
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, WEBHOOK_SIGNATURE_HEADER),
            (int64_t)time(NULL), s->tolerance_s, why) < 0)
        return MHD_HTTP_UNAUTHORIZED;
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strspn(cl, "0123456789") == strlen(cl) &&
        (strlen(cl) > 15 || strtoll(cl, NULL, 10) > s->max_body)) {
        *why = "request body too large";
        return MHD_HTTP_CONTENT_TOO_LARGE;
    }
    if ((*why = not_taking(s)) != NULL)
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    return 0;
}

/* The declared Content-Length (at most max_body_bytes: check_headers ran),
 * or -1 when the body is chunked or has no length. */
static int64_t content_length(struct MHD_Connection *conn)
{
    const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                 MHD_HTTP_HEADER_TRANSFER_ENCODING);
    if (!cl || te || !*cl || strspn(cl, "0123456789") != strlen(cl) || strlen(cl) > 15)
        return -1;
    return strtoll(cl, NULL, 10);
}

/* ---- bodies -------------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF, no NUL). */
static int valid_utf8(const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t extra;
        unsigned min;
        if (c == 0)
            return 0;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            extra = 1, min = 0x80, c &= 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            extra = 2, min = 0x800, c &= 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            extra = 3, min = 0x10000, c &= 0x07;
        } else {
            return 0;
        }
        if (i + extra >= n)
            return 0;
        for (size_t k = 1; k <= extra; k++) {
            if ((p[i + k] & 0xc0) != 0x80)
                return 0;
            c = (c << 6) | (p[i + k] & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return 0;
        i += extra + 1;
    }
    return 1;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Index just past the JSON value starting at s[i] (already validated). */
static size_t skip_value(const char *s, size_t n, size_t i)
{
    int depth = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
            i++;
            if (depth == 0)
                return i;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (--depth == 0)
                return i + 1;
            if (depth < 0)
                return i; /* end of the enclosing array */
        } else if (depth == 0 && (c == ',' || is_space(c))) {
            return i; /* end of a scalar */
        }
        i++;
    }
    return i;
}

/* Top-level elements of the array text s[0..n) (s[0] == '['), counted
 * before the parser builds a tree for them; an upper bound is enough. */
static size_t count_elements(const char *s, size_t n)
{
    size_t count = 0;
    int depth = 0, seen_value = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++)
                if (s[i] == '\\')
                    i++;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            depth--;
        } else if (c == ',' && depth == 1) {
            count++;
        }
        if (depth >= 1 && !is_space(c) && !(depth == 1 && (c == '[' || c == ',')))
            seen_value = 1;
    }
    return count + (size_t)seen_value;
}

/* The element's own key field, when it has a usable one. */
static const char *element_key(const webhook_source *s, json_t *el)
{
    if (!s->element_key_field || !json_is_object(el))
        return NULL;
    json_t *k = json_object_get(el, s->element_key_field);
    const char *v = json_string_value(k);
    if (!v || !*v || json_string_length(k) > MAX_KEY_LEN)
        return NULL;
    return v;
}

static char *event_key(const webhook_source *s, json_t *el, const char *idem, ssize_t index)
{
    const char *own = element_key(s, el);
    if (index < 0 && idem)
        return xstrdup(idem);
    if (own)
        return xstrdup(own);
    if (idem) {
        relay_buf b = {0};
        buf_printf(&b, "%s:%zd", idem, index);
        return buf_steal(&b);
    }
    char u[37];
    relay_uuid_v4(u);
    return xstrdup(u);
}

static int media_type_is_json(const char *ct)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, ";");
    while (n > 0 && is_space(ct[n - 1]))
        n--;
    return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
           (n > 5 && strncasecmp(ct + n - 5, "+json", 5) == 0);
}

static int content_type_is_json(struct MHD_Connection *conn)
{
    return media_type_is_json(MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                          MHD_HTTP_HEADER_CONTENT_TYPE));
}

/* Split the body into events. Returns 0, or the status to answer (and *why). */
static unsigned parse_body(webhook_source *s, int declared_json, wh_req *r, const char *idem,
                           char *why, size_t whylen)
{
    char *p = r->body.data;
    size_t n = r->body.len;
    while (n > 0 && is_space(p[n - 1]))
        n--;
    size_t start = 0;
    while (start < n && is_space(p[start]))
        start++;
    if (start == n) {
        snprintf(why, whylen, "empty body");
        return MHD_HTTP_BAD_REQUEST;
    }
    if (p[start] == '[' && count_elements(p + start, n - start) > MAX_EVENTS_PER_REQUEST) {
        snprintf(why, whylen, "more than %d events in one request", MAX_EVENTS_PER_REQUEST);
        return MHD_HTTP_CONTENT_TOO_LARGE;
    }
    json_error_t jerr;
    json_t *root = NULL;
    /* No JSON text holds a raw NUL byte (RFC 8259), but jansson 2.14 loads
     * one that follows a number ({"a":1<NUL>}); such a body is not JSON. */
    const char *nul = memchr(p + start, '\0', n - start);
    if ((p[start] == '{' || p[start] == '[') && !nul)
        root = json_loadb(p + start, n - start, JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root) {
        if (declared_json) {
            if ((p[start] == '{' || p[start] == '[') && nul)
                snprintf(why, whylen, "invalid JSON: a NUL byte at offset %zu", (size_t)(nul - p));
            else if (p[start] == '{' || p[start] == '[')
                snprintf(why, whylen, "invalid JSON: %s (line %d, column %d)", jerr.text,
                         jerr.line, jerr.column);
            else
                snprintf(why, whylen, "expected a JSON object or array");
            return MHD_HTTP_BAD_REQUEST;
        }
        if (!valid_utf8((const unsigned char *)p, r->body.len)) {
            snprintf(why, whylen, "body is neither JSON nor UTF-8 text");
            return MHD_HTTP_BAD_REQUEST;
        }
        r->events = xcalloc(1, sizeof *r->events);
        r->nevents = 1;
        r->events[0] = (wh_event){.payload = p, .len = r->body.len, .is_json = 0,
                                  .key = event_key(s, NULL, idem, -1)};
        return 0;
    }
    if (json_is_object(root)) {
        p[n] = '\0';
        r->events = xcalloc(1, sizeof *r->events);
        r->nevents = 1;
        r->events[0] = (wh_event){.payload = p + start, .len = n - start, .is_json = 1,
                                  .key = event_key(s, root, idem, -1)};
        json_decref(root);
        return 0;
    }
    size_t count = json_array_size(root);
    if (count == 0) {
        json_decref(root);
        snprintf(why, whylen, "empty JSON array");
        return MHD_HTTP_BAD_REQUEST;
    }
    r->events = xcalloc(count, sizeof *r->events);
    size_t i = start + 1;
    for (size_t k = 0; k < count; k++) {
        while (i < n && (is_space(p[i]) || p[i] == ','))
            i++;
        size_t end = skip_value(p, n, i);
        r->events[k] = (wh_event){.payload = p + i, .len = end - i, .is_json = 1,
                                  .key = event_key(s, json_array_get(root, k), idem, (ssize_t)k)};
        r->nevents++;
        i = end;
    }
    /* NUL-terminate each element in place (the byte after it is a
     * separator, whitespace or the closing bracket). */
    for (size_t k = 0; k < count; k++)
        ((char *)r->events[k].payload)[r->events[k].len] = '\0';
    json_decref(root);
    return 0;
}

/* ---- CloudEvents (formats.h; docs/formats.md "Receiving CloudEvents") ------ */

/* The media type of Content-Type without parameters, compared case-insensitively. */
static int media_type_is(const char *ct, const char *want)
{
    if (!ct)
        return 0;
    size_t n = strcspn(ct, ";");
    while (n > 0 && is_space(ct[n - 1]))
        n--;
    return n == strlen(want) && strncasecmp(ct, want, n) == 0;
}

/* The request's CloudEvents content mode: structured (HTTP binding 3.2.1:
 * Content-Type application/cloudevents+json), batched (3.3.1:
 * application/cloudevents-batch+json), binary (3.1: a ce-specversion
 * header), or none. */
static webhook_ce_mode ce_mode_of(const char *content_type, const char *ce_specversion)
{
    if (media_type_is(content_type, "application/cloudevents+json"))
        return WEBHOOK_CE_STRUCTURED;
    if (media_type_is(content_type, "application/cloudevents-batch+json"))
        return WEBHOOK_CE_BATCH;
    if (ce_specversion)
        return WEBHOOK_CE_BINARY;
    return WEBHOOK_CE_NONE;
}

/* One structured event at body[off, off+n) into *ev. Returns 0 or 400 (why). */
static unsigned ce_structured_event(char *body, size_t off, size_t n, wh_event *ev, char *why,
                                    size_t whylen)
{
    relay_buf scratch = {0};
    fmt_ce_event ce;
    char reason[300];
    if (fmt_ce_parse_structured(body + off, n, &scratch, &ce, reason, sizeof reason) < 0) {
        snprintf(why, whylen, "not a valid CloudEvent: %s", reason);
        buf_free(&scratch);
        return MHD_HTTP_BAD_REQUEST;
    }
    unsigned st = 0;
    if (ce.id_len > MAX_KEY_LEN) {
        snprintf(why, whylen, "the CloudEvent id must be 1 to %d bytes (it is the inbox event_id)",
                 MAX_KEY_LEN);
        st = MHD_HTTP_BAD_REQUEST;
    } else if (ce.data && !ce.data_is_json &&
               !valid_utf8((const unsigned char *)ce.data, ce.data_len)) {
        snprintf(why, whylen, "the CloudEvent's data_base64 is not UTF-8 text (the inbox stores "
                 "JSON or text)");
        st = MHD_HTTP_BAD_REQUEST;
    } else {
        ev->key = xstrndup(ce.id, ce.id_len);
        ev->type = xstrndup(ce.type, ce.type_len);
        if (!ce.data) {
            ev->payload = "null";
            ev->len = 4;
            ev->is_json = 1;
        } else if (ce.data_is_json) {
            ev->payload = ce.data; /* inside body: NUL-terminated by the caller */
            ev->len = ce.data_len;
            ev->is_json = 1;
        } else {
            ev->owned = xstrndup(ce.data, ce.data_len);
            ev->payload = ev->owned;
            ev->len = ce.data_len;
        }
    }
    buf_free(&scratch);
    return st;
}

/* Split a CloudEvents request into events: one structured event, a batch
 * (a JSON array of structured events), or a binary-mode event whose
 * attributes are the ce- headers (hdr: specversion, id, type, source, as
 * received) and whose data is the body. */
static unsigned parse_cloudevents(webhook_ce_mode mode, const char *const hdr[4], int declared_json,
                                  wh_req *r, char *why, size_t whylen)
{
    char *p = r->body.data;
    size_t n = r->body.len;
    if (mode == WEBHOOK_CE_BINARY) {
        static const char *const names[4] = {"ce-specversion", "ce-id", "ce-type", "ce-source"};
        relay_buf v[4] = {{0}};
        unsigned st = 0;
        for (int i = 0; i < 4 && st == 0; i++) {
            if (!hdr[i] || fmt_ce_header_decode(hdr[i], strlen(hdr[i]), &v[i]) < 0 ||
                v[i].len == 0 || memchr(v[i].data, '\0', v[i].len)) {
                snprintf(why, whylen, "binary-mode CloudEvent: the REQUIRED header %s is %s",
                         names[i], hdr[i] ? "not a valid percent-encoded UTF-8 string" : "missing");
                st = MHD_HTTP_BAD_REQUEST;
            }
        }
        if (st == 0 && (v[0].len != 3 || memcmp(v[0].data, "1.0", 3) != 0)) {
            snprintf(why, whylen, "unsupported CloudEvents specversion (this receiver reads 1.0)");
            st = MHD_HTTP_BAD_REQUEST;
        }
        if (st == 0 && v[1].len > MAX_KEY_LEN) {
            snprintf(why, whylen, "ce-id must be 1 to %d bytes (it is the inbox event_id)",
                     MAX_KEY_LEN);
            st = MHD_HTTP_BAD_REQUEST;
        }
        wh_event ev = {0};
        if (st == 0) {
            /* The data: JSON when Content-Type says so (3.1.1), else text. */
            size_t start = 0;
            while (start < n && is_space(p[start]))
                start++;
            size_t end = n;
            while (end > start && is_space(p[end - 1]))
                end--;
            if (start == end) {
                ev.payload = "null";
                ev.len = 4;
                ev.is_json = 1;
            } else if (declared_json) {
                if (json_valid(p + start, end - start) != 1) {
                    snprintf(why, whylen, "binary-mode CloudEvent: the body is declared JSON but "
                             "is not");
                    st = MHD_HTTP_BAD_REQUEST;
                }
                p[end] = '\0';
                ev.payload = p + start;
                ev.len = end - start;
                ev.is_json = 1;
            } else if (!valid_utf8((const unsigned char *)p, n)) {
                snprintf(why, whylen, "binary-mode CloudEvent: the body is neither JSON nor UTF-8 text");
                st = MHD_HTTP_BAD_REQUEST;
            } else {
                ev.payload = p;
                ev.len = n;
            }
        }
        if (st == 0) {
            ev.key = xstrndup(v[1].data, v[1].len);
            ev.type = xstrndup(v[2].data, v[2].len);
            r->events = xcalloc(1, sizeof *r->events);
            r->events[0] = ev;
            r->nevents = 1;
        }
        for (int i = 0; i < 4; i++)
            buf_free(&v[i]);
        return st;
    }
    size_t start = json_skip_ws(p, n, 0);
    if (mode == WEBHOOK_CE_STRUCTURED) {
        r->events = xcalloc(1, sizeof *r->events);
        unsigned st = ce_structured_event(p, start, n - start, &r->events[0], why, whylen);
        if (st)
            return st;
        r->nevents = 1;
        wh_event *e = &r->events[0];
        if (!e->owned && e->payload >= p && e->payload < p + n)
            ((char *)e->payload)[e->len] = '\0';
        return 0;
    }
    /* Batch: a JSON array of structured events (JSON event format 4). */
    if (start >= n || p[start] != '[' || json_valid(p + start, n - start) != 1) {
        snprintf(why, whylen, "a CloudEvents batch is a JSON array of events (JSON event "
                 "format, section 4)");
        return MHD_HTTP_BAD_REQUEST;
    }
    size_t count = count_elements(p + start, n - start);
    if (count > MAX_EVENTS_PER_REQUEST) {
        snprintf(why, whylen, "more than %d events in one request", MAX_EVENTS_PER_REQUEST);
        return MHD_HTTP_CONTENT_TOO_LARGE;
    }
    if (count == 0) {
        snprintf(why, whylen, "empty CloudEvents batch");
        return MHD_HTTP_BAD_REQUEST;
    }
    r->events = xcalloc(count, sizeof *r->events);
    size_t pos = 0, off, len;
    int rc;
    while ((rc = json_array_next(p + start, n - start, &pos, &off, &len)) == 1) {
        unsigned st = ce_structured_event(p, start + off, len, &r->events[r->nevents], why, whylen);
        if (st)
            return st;
        r->nevents++;
    }
    /* NUL-terminate data in place only now: the bytes after each value are
     * separators that the parse above has read. */
    for (size_t k = 0; k < r->nevents; k++) {
        wh_event *e = &r->events[k];
        if (!e->owned && e->payload >= p && e->payload < p + n)
            ((char *)e->payload)[e->len] = '\0';
    }
    return rc < 0 ? MHD_HTTP_BAD_REQUEST : 0;
}

static unsigned check_idempotency_key(struct MHD_Connection *conn, const char **key,
                                      char *why, size_t whylen)
{
    const char *k = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Idempotency-Key");
    *key = NULL;
    if (!k)
        return 0;
    size_t n = strlen(k);
    if (n == 0 || n > MAX_KEY_LEN) {
        snprintf(why, whylen, "Idempotency-Key must be 1 to %d bytes", MAX_KEY_LEN);
        return MHD_HTTP_BAD_REQUEST;
    }
    if (!valid_utf8((const unsigned char *)k, n)) {
        snprintf(why, whylen, "Idempotency-Key is not valid UTF-8");
        return MHD_HTTP_BAD_REQUEST;
    }
    *key = k;
    return 0;
}

static char *trace_header(struct MHD_Connection *conn)
{
    const char *t = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "traceparent");
    if (!t || !*t || strlen(t) > 256 || !valid_utf8((const unsigned char *)t, strlen(t)))
        return NULL;
    return xstrdup(t);
}

/* ---- the access handler -------------------------------------------------- */

static void answer_locked(webhook_source *s, wh_req *r, unsigned status, char *body);
static void resume_answered(webhook_source *s);
static void publish_position(webhook_source *s);

static void wake_poll(webhook_source *s)
{
    uint64_t one = 1;
    ssize_t rc = write(s->evfd, &one, sizeof one);
    (void)rc;
}

/* The whole request is in: check it, split it, queue it and suspend. */
static enum MHD_Result request_complete(webhook_source *s, struct MHD_Connection *conn,
                                        wh_req *r, const char *url)
{
    char why[512];
    const char *idem, *reason;
    if (s->secret) {
        const char *ts = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     WEBHOOK_TIMESTAMP_HEADER);
        const char *sig = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                      WEBHOOK_SIGNATURE_HEADER);
        if (webhook_verify(s->secret, strlen(s->secret), ts, sig, r->body.data, r->body.len,
                           (int64_t)time(NULL), s->tolerance_s, &reason) < 0) {
            drop_body(s, r);
            return reject(s, conn, MHD_HTTP_UNAUTHORIZED, reason);
        }
        pthread_mutex_lock(&s->mu); /* signed: no longer counted as unverified */
        if (r->unverified)
            s->unverified_bytes -= r->reserved;
        r->unverified = 0;
        pthread_mutex_unlock(&s->mu);
    }
    const char *hdr[4] = {
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "ce-specversion"),
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "ce-id"),
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "ce-type"),
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "ce-source"),
    };
    webhook_ce_mode mode = ce_mode_of(
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE), hdr[0]);
    unsigned st;
    if (mode != WEBHOOK_CE_NONE)
        st = parse_cloudevents(mode, hdr, content_type_is_json(conn), r, why, sizeof why);
    else if ((st = check_idempotency_key(conn, &idem, why, sizeof why)) == 0)
        st = parse_body(s, content_type_is_json(conn), r, idem, why, sizeof why);
    if (st != 0) {
        drop_body(s, r);
        return reject(s, conn, st, why);
    }
    relay_buf path = {0};
    decode_path(url, &path);
    r->path_len = path.len;
    r->path = path.len ? buf_steal(&path) : xstrdup("");
    buf_free(&path);
    r->trace_id = trace_header(conn);

    reason = not_taking(s);
    if (reason) {
        drop_body(s, r);
        return reject(s, conn, MHD_HTTP_SERVICE_UNAVAILABLE, reason);
    }
    /* Suspend before the worker can see it, so a resume always follows it;
     * never call into libmicrohttpd with s->mu held. While suspended the
     * request is not timed (http_guard.h). */
    http_guard_waiting(conn);
    MHD_suspend_connection(conn);
    pthread_mutex_lock(&s->mu);
    r->suspended = 1;
    r->state = REQ_QUEUED;
    r->refs++; /* the queue's reference */
    if (s->closing) { /* stop_server() already emptied the queue */
        answer_locked(s, r, MHD_HTTP_SERVICE_UNAVAILABLE, error_body("the relay is shutting down"));
        pthread_mutex_unlock(&s->mu);
        resume_answered(s);
        return MHD_YES;
    }
    if (s->q_tail)
        s->q_tail->next = r;
    else
        s->q_head = r;
    s->q_tail = r;
    s->queued_requests++;
    pthread_mutex_unlock(&s->mu);
    wake_poll(s);
    publish_position(s);
    return MHD_YES;
}

static enum MHD_Result send_answer(webhook_source *s, struct MHD_Connection *conn, wh_req *r)
{
    pthread_mutex_lock(&s->mu);
    unsigned status = r->status;
    char *body = r->answer;
    r->answer = NULL;
    pthread_mutex_unlock(&s->mu);
    return respond(s, conn, status, body ? body : error_body("no answer"));
}

/*
 * Answer `status` now, while the body is still arriving, and have the
 * connection closed without reading more (see "Hostile clients" above for why
 * the answer is written here and not queued through libmicrohttpd). Frees the
 * body. Returns MHD_NO, which the access handler returns.
 */
static enum MHD_Result refuse_mid_body(webhook_source *s, struct MHD_Connection *conn, wh_req *r,
                                       unsigned status, const char *why)
{
    drop_body(s, r);
    log_trace(s->base.w ? s->base.w->cfg.name : NULL, "webhook receiver: %u %s (mid-body)", status,
              why);
    char *body = error_body(why);
    relay_buf msg = {0};
    buf_printf(&msg, "HTTP/1.1 %u %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
               "Content-Length: %zu\r\n%s\r\n%s",
               status, MHD_get_reason_phrase_for(status), strlen(body),
               status == MHD_HTTP_SERVICE_UNAVAILABLE ? "Retry-After: 1\r\n" : "", body);
    free(body);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci) {
        /* Non-blocking; the socket's send buffer is empty in this state, so
         * the few hundred bytes go out at once. A short write only truncates
         * an answer the client will not get anyway. */
        ssize_t n = send(ci->connect_fd, msg.data, msg.len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        (void)shutdown(ci->connect_fd, SHUT_WR);
    }
    buf_free(&msg);
    count(s, status);
    return MHD_NO;
}

/* Store one piece of the body, reserving memory first (see "Hostile
 * clients"). Returns MHD_YES, or the result of a refusal. */
static enum MHD_Result take_upload(webhook_source *s, struct MHD_Connection *conn, wh_req *r,
                                   const char *data, size_t n)
{
    if ((int64_t)(r->body.len + n) > s->max_body)
        return refuse_mid_body(s, conn, r, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large");
    size_t need = r->body.len + n + 1;
    if (need > r->body.cap) {
        /* A chunked body (a Content-Length body was allocated whole): double,
         * but never past max_body_bytes + 1. */
        size_t cap = r->body.cap ? 2 * r->body.cap : CHUNKED_FIRST_CAP;
        if (cap > (size_t)s->max_body + 1)
            cap = (size_t)s->max_body + 1;
        if (cap < need)
            cap = need;
        const char *why = reserve(s, r, (int64_t)(cap - r->body.cap));
        if (why)
            return refuse_mid_body(s, conn, r, MHD_HTTP_SERVICE_UNAVAILABLE, why);
        if (body_set_cap(&r->body, cap) < 0) /* the reservation is returned with the body */
            return refuse_mid_body(s, conn, r, MHD_HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    memcpy(r->body.data + r->body.len, data, n);
    r->body.len += n;
    r->body.data[r->body.len] = '\0';
    return MHD_YES;
}

/* First call, headers complete: refuse what can be refused before any body
 * byte is read, reserve a declared Content-Length. Returns the new request,
 * or NULL with the refusal queued in *ret. */
static wh_req *request_start(webhook_source *s, struct MHD_Connection *conn, const char *url,
                             const char *method, enum MHD_Result *ret)
{
    const char *why = NULL;
    unsigned st = check_headers(s, conn, url, method, &why);
    if (st != 0) {
        *ret = reject(s, conn, st, why); /* the body, if any, is never read */
        return NULL;
    }
    wh_req *r = xcalloc(1, sizeof *r);
    r->conn = conn;
    r->refs = 1; /* libmicrohttpd's reference, dropped in on_completed */
    /* The HMAC covers the body: with no other check the sender is unknown
     * until the whole body is in. */
    r->unverified = s->secret && !s->auth_token && !s->auth_header;
    int64_t cl = content_length(conn);
    if (cl >= 0) {
        why = reserve(s, r, cl + 1);
        if (!why && body_set_cap(&r->body, (size_t)cl + 1) < 0)
            why = "out of memory";
        if (why) {
            pthread_mutex_lock(&s->mu);
            release_locked(s, r);
            pthread_mutex_unlock(&s->mu);
            free(r);
            *ret = reject(s, conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
            return NULL;
        }
    }
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    webhook_source *s = cls;
    wh_req *r = *con_cls;
    if (!r) {
        enum MHD_Result ret = MHD_YES;
        r = request_start(s, conn, url, method, &ret);
        *con_cls = r;
        return ret;
    }
    if (r->state == REQ_ANSWERED)
        return send_answer(s, conn, r);
    if (r->state != REQ_READING)
        return MHD_YES; /* queued: nothing to do until it is answered */
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return take_upload(s, conn, r, upload_data, n);
    }
    return request_complete(s, conn, r, url);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    webhook_source *s = cls;
    wh_req *r = *con_cls;
    http_guard_request_done(conn);
    if (!r)
        return;
    *con_cls = NULL;
    pthread_mutex_lock(&s->mu);
    if (r->state == REQ_ANSWERED && r->resumed)
        s->answering--;
    r->conn = NULL;
    req_unref_locked(s, r);
    pthread_mutex_unlock(&s->mu);
}

/* ---- answering ------------------------------------------------------------- */

/* Set the answer of a queued or batched request and note its connection
 * for resume_answered(). Drops the queue's reference (libmicrohttpd's keeps
 * it alive: a suspended connection never completes). Caller holds s->mu. */
static void answer_locked(webhook_source *s, wh_req *r, unsigned status, char *body)
{
    free(r->answer);
    r->answer = body;
    r->status = status;
    r->state = REQ_ANSWERED;
    if (r->suspended && r->conn) {
        r->suspended = 0;
        r->resumed = 1;
        s->answering++;
        if (s->n_resume == s->cap_resume) {
            s->cap_resume = s->cap_resume ? 2 * s->cap_resume : 64;
            s->to_resume = xrealloc(s->to_resume, s->cap_resume * sizeof *s->to_resume);
        }
        s->to_resume[s->n_resume++] = r->conn;
    }
    req_unref_locked(s, r);
}

/* Resume the connections answered so far, without holding s->mu: the
 * access handler then sends each prepared answer. */
static void resume_answered(webhook_source *s)
{
    pthread_mutex_lock(&s->mu);
    struct MHD_Connection **list = s->to_resume;
    size_t n = s->n_resume;
    s->to_resume = NULL;
    s->n_resume = s->cap_resume = 0;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++)
        MHD_resume_connection(list[i]);
    free(list);
}

static char *accepted_body(const wh_req *r)
{
    relay_buf b = {0};
    buf_printf(&b, "{\"status\":\"accepted\",\"events\":%zu,\"dead_lettered\":%zu,\"event_ids\":[",
               r->nevents, r->dead);
    for (size_t i = 0; i < r->nevents; i++) {
        if (i)
            buf_putc(&b, ',');
        buf_put_json_str(&b, r->events[i].key, strlen(r->events[i].key));
    }
    buf_puts(&b, "]}\n");
    return buf_steal(&b);
}

/* Answer every queued request with 503. Caller holds s->mu. */
static void fail_queue_locked(webhook_source *s, const char *why)
{
    wh_req *r = s->q_head;
    s->q_head = s->q_tail = NULL;
    s->queued_requests = 0;
    while (r) {
        wh_req *next = r->next;
        r->next = NULL;
        answer_locked(s, r, MHD_HTTP_SERVICE_UNAVAILABLE, error_body(why));
        r = next;
    }
}

static void fail_batch_locked(webhook_source *s, const char *why)
{
    wh_req *r = s->b_head;
    s->b_head = NULL;
    while (r) {
        wh_req *next = r->next;
        r->next = NULL;
        answer_locked(s, r, MHD_HTTP_SERVICE_UNAVAILABLE, error_body(why));
        r = next;
    }
}

/* ---- listening socket ---------------------------------------------------- */

/* ---- source operations ---------------------------------------------------- */

static void publish_position(webhook_source *s)
{
    relay_worker *w = s->base.w;
    if (!w || !w->stats)
        return;
    relay_buf b = {0};
    buf_puts(&b, "{\"listen_addr\":");
    buf_put_json_str(&b, s->listen_addr, strlen(s->listen_addr));
    buf_puts(&b, ",\"path\":");
    buf_put_json_str(&b, s->path, strlen(s->path));
    pthread_mutex_lock(&s->mu);
    size_t queued = s->queued_requests, in_batch = 0;
    for (wh_req *r = s->b_head; r; r = r->next)
        in_batch++;
    int64_t held = s->held_bytes, unverified = s->unverified_bytes;
    pthread_mutex_unlock(&s->mu);
    buf_printf(&b,
               ",\"queued_requests\":%zu,\"batch_requests\":%zu,\"body_bytes\":%" PRId64
               ",\"unverified_body_bytes\":%" PRId64 ",\"responses\":{",
               queued, in_batch, held, unverified);
    for (int k = 0; k < CNT_N; k++)
        buf_printf(&b, "%s\"%s\":%" PRIu64, k ? "," : "", count_names[k],
                   atomic_load(&s->counts[k]));
    buf_puts(&b, "}}");
    stats_set_position(w->stats, b.data);
    buf_free(&b);
}

static int wh_open(relay_source *base, char *err, size_t errlen)
{
    webhook_source *s = (webhook_source *)base;
    atomic_store(&s->last_poll_ms, now_mono_ms());
    pthread_mutex_lock(&s->mu);
    s->pg_lost = 0;
    pthread_mutex_unlock(&s->mu);
    if (s->mhd)
        return 0;
    if (s->evfd < 0) {
        s->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->evfd < 0) {
            snprintf(err, errlen, "eventfd: %s", strerror(errno));
            return -1;
        }
    }
    int family = AF_INET;
    int fd = net_listen(s->listen_addr, 1024, &family, "source.listen_addr", err, errlen);
    if (fd < 0)
        return -1;
    http_guard_cfg gc = {.server = "webhook",
                         .pipeline = base->w ? base->w->cfg.name : NULL,
                         .max_connections = (unsigned)s->max_connections,
                         .request_timeout_ms = s->request_timeout_ms};
    s->guard = http_guard_create(&gc);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    s->mhd = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s,
                              MHD_OPTION_EXTERNAL_LOGGER, http_guard_mhd_log, s->guard,
                              MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                              MHD_OPTION_UNESCAPE_CALLBACK, keep_escapes, NULL,
                              MHD_OPTION_NOTIFY_CONNECTION, http_guard_on_connection, s->guard,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30,
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)s->max_connections,
                              MHD_OPTION_END);
    if (!s->mhd) {
        close(fd);
        http_guard_destroy(s->guard);
        s->guard = NULL;
        snprintf(err, errlen, "source.listen_addr %s: cannot start the HTTP server",
                 s->listen_addr);
        return -1;
    }
    if (http_guard_start(s->guard, err, errlen) < 0) {
        MHD_stop_daemon(s->mhd); /* nothing was accepted yet that needs an answer */
        s->mhd = NULL;
        http_guard_destroy(s->guard);
        s->guard = NULL;
        return -1;
    }
    log_info(base->w ? base->w->cfg.name : NULL, "webhook receiver listening on %s, path %s",
             s->listen_addr, s->path);
    publish_position(s);
    return 0;
}

/* Move whole requests from the queue into the batch. Caller holds s->mu. */
static void take_requests_locked(webhook_source *s, size_t max, wh_req **taken)
{
    size_t events = 0;
    wh_req **tail = taken;
    while (s->q_head && (events == 0 || events + s->q_head->nevents <= max)) {
        wh_req *r = s->q_head;
        s->q_head = r->next;
        if (!s->q_head)
            s->q_tail = NULL;
        s->queued_requests--;
        r->next = NULL;
        r->state = REQ_IN_BATCH;
        events += r->nevents;
        *tail = r;
        tail = &r->next;
    }
}

static void fill_batch(wh_req *list, relay_batch *b)
{
    for (wh_req *r = list; r; r = r->next) {
        for (size_t i = 0; i < r->nevents; i++) {
            relay_msg *m = batch_add(b);
            m->dedup_key = r->events[i].key;
            if (r->events[i].type) {
                m->subject = r->events[i].type;
            } else {
                m->subject = r->path;
                m->subject_len = r->path_len;
            }
            m->op = OP_EVENT;
            m->payload = r->events[i].payload;
            m->payload_len = r->events[i].len;
            m->payload_is_json = r->events[i].is_json;
            m->source_name = "webhook";
            m->trace_id = r->trace_id;
            m->ack = r;
        }
    }
}

/* Notice at once when the worker's PostgreSQL connection is closed by the
 * server. Returns -1 (err set) when it is gone. */
static int check_pg(relay_worker *w, char *err, size_t errlen)
{
    if (!w->pg)
        return 0;
    if (!PQconsumeInput(w->pg) || PQstatus(w->pg) != CONNECTION_OK) {
        const char *m = PQerrorMessage(w->pg);
        snprintf(err, errlen, "PostgreSQL connection lost: %.*s", (int)strcspn(m, "\n"), m);
        return -1;
    }
    PGnotify *n;
    while ((n = PQnotifies(w->pg)) != NULL)
        PQfreemem(n);
    return 0;
}

static int wh_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    webhook_source *s = (webhook_source *)base;
    relay_worker *w = base->w;
    if ((int64_t)max > s->batch_size)
        max = (size_t)s->batch_size;
    atomic_store(&s->in_poll, 1);
    int64_t deadline = now_mono_ms() + POLL_INTERVAL_MS;
    int rc = 0;
    for (;;) {
        wh_req *taken = NULL;
        pthread_mutex_lock(&s->mu);
        take_requests_locked(s, max, &taken);
        if (taken)
            s->b_head = taken;
        pthread_mutex_unlock(&s->mu);
        if (taken) {
            fill_batch(taken, b);
            rc = (int)b->n;
            break;
        }
        int64_t left = deadline - now_mono_ms();
        if (left <= 0 || worker_stopping(w))
            break;
        struct pollfd p[3] = {{.fd = w->wake[0], .events = POLLIN},
                              {.fd = s->evfd, .events = POLLIN},
                              {.fd = w->pg ? PQsocket(w->pg) : -1, .events = POLLIN}};
        int n = poll(p, 3, (int)left);
        if (n > 0 && (p[1].revents & POLLIN)) {
            uint64_t v;
            ssize_t r = read(s->evfd, &v, sizeof v);
            (void)r;
        }
        if (n > 0 && p[2].revents && check_pg(w, err, errlen) < 0) {
            pthread_mutex_lock(&s->mu);
            s->pg_lost = 1; /* until open() runs on the new connection */
            pthread_mutex_unlock(&s->mu);
            rc = -1;
            break;
        }
    }
    atomic_store(&s->last_poll_ms, now_mono_ms());
    atomic_store(&s->in_poll, 0);
    publish_position(s);
    return rc;
}

static int wh_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    webhook_source *s = (webhook_source *)base;
    for (size_t i = 0; i < b->n; i++)
        if (b->msgs[i].state == MSG_DEAD)
            ((wh_req *)b->msgs[i].ack)->dead++;
    pthread_mutex_lock(&s->mu);
    wh_req *r = s->b_head;
    s->b_head = NULL;
    while (r) {
        wh_req *next = r->next;
        r->next = NULL;
        answer_locked(s, r, MHD_HTTP_OK, accepted_body(r));
        r = next;
    }
    pthread_mutex_unlock(&s->mu);
    resume_answered(s);
    publish_position(s);
    return 0;
}

static void wh_release(relay_source *base, relay_batch *b)
{
    (void)b;
    webhook_source *s = (webhook_source *)base;
    pthread_mutex_lock(&s->mu);
    fail_batch_locked(s, "the events could not be written to the inbox; retry later");
    /* The worker will not poll again soon: do not keep the others waiting. */
    fail_queue_locked(s, "the inbox is not accepting events right now");
    pthread_mutex_unlock(&s->mu);
    resume_answered(s);
    publish_position(s);
}

/* Called about once a second while the worker is not polling. */
static void wh_idle(relay_source *base)
{
    webhook_source *s = (webhook_source *)base;
    pthread_mutex_lock(&s->mu);
    const char *why = s->q_head ? not_taking_locked(s) : NULL;
    if (why)
        fail_queue_locked(s, why);
    pthread_mutex_unlock(&s->mu);
    if (why)
        resume_answered(s);
}

static void wh_position(relay_source *base, relay_buf *out)
{
    webhook_source *s = (webhook_source *)base;
    buf_puts(out, "{\"listen_addr\":");
    buf_put_json_str(out, s->listen_addr, strlen(s->listen_addr));
    buf_puts(out, ",\"path\":");
    buf_put_json_str(out, s->path, strlen(s->path));
    buf_putc(out, '}');
}

/* Answer everything still waiting with 503, let libmicrohttpd send those
 * answers (bounded), then stop the server. */
static void stop_server(webhook_source *s)
{
    if (!s->mhd)
        return;
    pthread_mutex_lock(&s->mu);
    s->closing = 1;
    fail_batch_locked(s, "the relay is shutting down");
    fail_queue_locked(s, "the relay is shutting down");
    pthread_mutex_unlock(&s->mu);
    resume_answered(s);
    int64_t end = now_mono_ms() + STOP_DRAIN_MS;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        size_t pending = s->answering;
        pthread_mutex_unlock(&s->mu);
        if (pending == 0 || now_mono_ms() >= end)
            break;
        poll(NULL, 0, 20);
    }
    MHD_stop_daemon(s->mhd);
    s->mhd = NULL;
    http_guard_destroy(s->guard); /* after the daemon: it reported every connection closed */
    s->guard = NULL;
}

static void wh_destroy(relay_source *base)
{
    if (!base)
        return;
    webhook_source *s = (webhook_source *)base;
    stop_server(s);
    if (s->evfd >= 0)
        close(s->evfd);
    pthread_mutex_destroy(&s->mu);
    free(s->listen_addr);
    free(s->path);
    free(s->auth_token);
    free(s->auth_header);
    free(s->auth_value);
    free(s->secret);
    free(s->element_key_field);
    free(s->to_resume);
    free(s);
}

const relay_source_ops relay_source_webhook_ops = {
    .type = "webhook",
    .create = wh_create,
    .open = wh_open,
    .poll = wh_poll,
    .ack = wh_ack,
    .release = wh_release,
    .idle = wh_idle,
    .position = wh_position,
    .destroy = wh_destroy,
};

/* "http" is the name pg_trickle's SQL API uses in its examples. */
const relay_source_ops relay_source_http_ops = {
    .type = "http",
    .create = http_create,
    .open = wh_open,
    .poll = wh_poll,
    .ack = wh_ack,
    .release = wh_release,
    .idle = wh_idle,
    .position = wh_position,
    .destroy = wh_destroy,
};

unsigned webhook_cloudevents(const char *body, size_t len, const char *content_type,
                             const char *const ce_headers[4], relay_batch *b, char *why,
                             size_t whylen)
{
    webhook_ce_mode mode = ce_mode_of(content_type, ce_headers[0]);
    if (mode == WEBHOOK_CE_NONE) {
        snprintf(why, whylen, "not a CloudEvents request");
        return MHD_HTTP_BAD_REQUEST;
    }
    webhook_source s = {0};
    wh_req *r = xcalloc(1, sizeof *r);
    if (body_set_cap(&r->body, len + 1) < 0) {
        free(r);
        snprintf(why, whylen, "out of memory");
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    memcpy(r->body.data, body, len);
    r->body.len = len;
    r->body.data[len] = '\0';
    unsigned st = parse_cloudevents(mode, ce_headers, media_type_is_json(content_type), r, why,
                                    whylen);
    for (size_t i = 0; st == 0 && i < r->nevents; i++) {
        relay_msg *m = batch_add(b);
        m->op = OP_EVENT;
        m->payload = arena_strndup(&b->arena, r->events[i].payload, r->events[i].len);
        m->payload_len = r->events[i].len;
        m->payload_is_json = r->events[i].is_json;
        m->dedup_key = arena_strdup(&b->arena, r->events[i].key);
        m->subject = arena_strdup(&b->arena, r->events[i].type);
    }
    req_free(&s, r);
    return st;
}

unsigned webhook_body_events(const char *body, size_t len, int declared_json,
                             const char *idempotency_key, const char *element_key_field,
                             relay_batch *b, char *why, size_t whylen)
{
    /* parse_body only reads element_key_field of its source. */
    webhook_source s = {.element_key_field = (char *)element_key_field};
    wh_req *r = xcalloc(1, sizeof *r);
    if (body_set_cap(&r->body, len + 1) < 0) {
        free(r);
        snprintf(why, whylen, "out of memory");
        return MHD_HTTP_SERVICE_UNAVAILABLE;
    }
    memcpy(r->body.data, body, len);
    r->body.len = len;
    r->body.data[len] = '\0';
    unsigned st = parse_body(&s, declared_json, r, idempotency_key, why, whylen);
    for (size_t i = 0; st == 0 && i < r->nevents; i++) {
        relay_msg *m = batch_add(b);
        m->op = OP_EVENT;
        m->payload = arena_strndup(&b->arena, r->events[i].payload, r->events[i].len);
        m->payload_len = r->events[i].len;
        m->payload_is_json = r->events[i].is_json;
        m->dedup_key = arena_strdup(&b->arena, r->events[i].key);
    }
    req_free(&s, r); /* no reservation to return: reserved is 0 */
    return st;
}
