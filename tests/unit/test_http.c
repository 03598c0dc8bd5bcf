/*
 * test_http.c - the stats registry and the /metrics, /health and /status
 * renderers, then the real libmicrohttpd server on a loopback port.
 *
 * Renderers are checked line by line against the exact exposition text;
 * JSON bodies are parsed back with jansson. The server tests talk HTTP/1.0
 * over a plain socket, so the test needs nothing beyond the relay itself;
 * they include clients that never finish their headers (the request deadline
 * and the shedding of src/http_guard.c).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "http.h"
#include "stats.h"

#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown"
#endif

/* ---- helpers ----------------------------------------------------------- */

static char *render_metrics(void)
{
    relay_buf b = {0};
    http_render_metrics(&b);
    return buf_steal(&b);
}

/* Assert that `text` contains `line` as a whole line. */
static void assert_has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return;
    }
    fail_msg("missing line: %s\n--- in ---\n%s", line, text);
}

static void assert_no_substring(const char *text, const char *needle)
{
    if (strstr(text, needle))
        fail_msg("unexpected text: %s\n--- in ---\n%s", needle, text);
}

static json_t *parse_json(const char *text)
{
    json_error_t e;
    json_t *doc = json_loads(text, 0, &e);
    if (!doc)
        fail_msg("invalid JSON (%s): %s", e.text, text);
    return doc;
}

static relay_stats *running_entry(const char *name)
{
    relay_stats *s = stats_register(name, "forward", "outbox", "file");
    atomic_store(&s->running, 1);
    return s;
}

static size_t registry_size(void)
{
    size_t n;
    relay_stats **all = stats_snapshot(&n);
    for (size_t i = 0; i < n; i++)
        stats_unref(all[i]);
    free(all);
    return n;
}

static int setup(void **state)
{
    (void)state;
    stats_init();
    stats_set_database(1, NULL); /* the coordinator reached it */
    return 0;
}

/* Every test must leave the registry empty. */
static int teardown(void **state)
{
    (void)state;
    assert_int_equal(registry_size(), 0);
    return 0;
}

/* ---- stats ------------------------------------------------------------- */

static void test_stats_defaults(void **state)
{
    (void)state;
    relay_stats *s = stats_register("p", "reverse", "nats", "inbox");
    assert_string_equal(s->name, "p");
    assert_string_equal(s->direction, "reverse");
    assert_string_equal(s->position.data, "{}");
    assert_int_equal(atomic_load(&s->replication_lag_bytes), -1);
    assert_int_equal(atomic_load(&s->running), 0);
    assert_null(stats_degraded_reason(s, now_wall_ms()));
    assert_string_equal(relay_err_kind_name(ERR_SOURCE), "source");
    assert_string_equal(relay_err_kind_name(ERR_SINK), "sink");
    assert_string_equal(relay_err_kind_name(ERR_PERMANENT), "permanent");
    assert_string_equal(relay_err_kind_name(ERR_DECODE), "decode");
    assert_string_equal(relay_err_kind_name(ERR_POSTGRES), "postgres");
    stats_unregister(s);
}

static void test_stats_degraded_reasons(void **state)
{
    (void)state;
    relay_stats *s = running_entry("p");
    int64_t now = now_wall_ms();
    assert_null(stats_degraded_reason(s, now));
    atomic_store(&s->sink_up, 0);
    assert_string_equal(stats_degraded_reason(s, now), "sink unavailable");
    atomic_store(&s->source_up, 0);
    assert_string_equal(stats_degraded_reason(s, now), "source unavailable");
    atomic_store(&s->pg_up, 0);
    assert_string_equal(stats_degraded_reason(s, now), "postgres connection lost");
    atomic_store(&s->running, 0); /* not owned: never degraded */
    assert_null(stats_degraded_reason(s, now));
    stats_unregister(s);

    /* A loop that has not come round within stall_after_ms is stuck. */
    s = running_entry("q");
    atomic_store(&s->stall_after_ms, 60000);
    atomic_store(&s->last_progress_ms, now - 59000);
    assert_null(stats_degraded_reason(s, now));
    atomic_store(&s->last_progress_ms, now - 61000);
    assert_non_null(strstr(stats_degraded_reason(s, now), "no progress"));
    atomic_store(&s->stall_after_ms, 0); /* 0: never */
    assert_null(stats_degraded_reason(s, now));
    stats_unregister(s);
}

static void test_stats_refcount_outlives_registry(void **state)
{
    (void)state;
    relay_stats *s = running_entry("p");
    size_t n;
    relay_stats **snap = stats_snapshot(&n);
    assert_int_equal(n, 1);
    stats_unregister(s);
    stats_unregister(s); /* a second unregister is a no-op */
    assert_int_equal(registry_size(), 0);
    /* The snapshot's reference keeps the entry alive. */
    stats_error(snap[0], ERR_SINK, "still %s", "alive");
    assert_string_equal(snap[0]->last_error, "still alive");
    assert_int_equal(atomic_load(&snap[0]->errors[ERR_SINK]), 1);
    stats_unref(snap[0]);
    free(snap);
}

static void test_stats_time(void **state)
{
    (void)state;
    int64_t wall = now_wall_ms();
    assert_true(wall > (int64_t)1600000000000);
    uint64_t a = now_mono_us();
    uint64_t b = now_mono_us();
    assert_true(b >= a);
    assert_true(now_mono_ms() >= 0);
    assert_true(stats_uptime_seconds() >= 0);
}

/* ---- /metrics ---------------------------------------------------------- */

static void test_metrics_counters(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    atomic_store(&a->published, 3);
    atomic_store(&a->consumed, 4);
    atomic_store(&a->dedup_skipped, 5);
    atomic_store(&a->dead_lettered, 6);
    atomic_store(&a->batches, 7);
    atomic_store(&a->published_by_op[OP_INSERT], 2);
    atomic_store(&a->published_by_op[OP_TRUNCATE], 1);
    atomic_store(&a->confirmed_lsn, 23456);
    stats_error(a, ERR_DECODE, "bad payload");
    stats_error(a, ERR_DECODE, "bad payload");

    char *m = render_metrics();
    assert_has_line(m, "pgtrickle_relay_events_total{pipeline=\"a\",op=\"insert\"} 2");
    assert_has_line(m, "pgtrickle_relay_events_total{pipeline=\"a\",op=\"truncate\"} 1");
    assert_has_line(m, "pgtrickle_relay_confirmed_lsn{pipeline=\"a\"} 23456");
    assert_has_line(m, "# HELP pgtrickle_relay_messages_published_total Messages confirmed durably by the sink.");
    assert_has_line(m, "# TYPE pgtrickle_relay_messages_published_total counter");
    assert_has_line(m, "pgtrickle_relay_messages_published_total{pipeline=\"a\",sink=\"file\"} 3");
    assert_has_line(m, "pgtrickle_relay_messages_consumed_total{pipeline=\"a\",source=\"outbox\"} 4");
    assert_has_line(m, "pgtrickle_relay_dedup_skipped_total{pipeline=\"a\"} 5");
    assert_has_line(m, "pgtrickle_relay_dead_lettered_total{pipeline=\"a\"} 6");
    assert_has_line(m, "pgtrickle_relay_batches_total{pipeline=\"a\"} 7");
    assert_has_line(m, "# TYPE pgtrickle_relay_publish_errors_total counter");
    assert_has_line(m, "pgtrickle_relay_publish_errors_total{pipeline=\"a\",kind=\"source\"} 0");
    assert_has_line(m, "pgtrickle_relay_publish_errors_total{pipeline=\"a\",kind=\"sink\"} 0");
    assert_has_line(m, "pgtrickle_relay_publish_errors_total{pipeline=\"a\",kind=\"permanent\"} 0");
    assert_has_line(m, "pgtrickle_relay_publish_errors_total{pipeline=\"a\",kind=\"decode\"} 2");
    assert_has_line(m, "pgtrickle_relay_publish_errors_total{pipeline=\"a\",kind=\"postgres\"} 0");
    assert_has_line(m, "# TYPE pgtrickle_relay_uptime_seconds gauge");
    assert_has_line(m, "pgtrickle_relay_info{version=\"" RELAY_VERSION "\"} 1");
    assert_int_equal(m[strlen(m) - 1], '\n');
    free(m);
    stats_unregister(a);
}

static void test_metrics_gauges(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    relay_stats *b = running_entry("b");
    relay_stats *c = stats_register("c", "forward", "cdc", "nats"); /* not owned */
    atomic_store(&b->sink_up, 0);
    atomic_store(&c->sink_up, 0);
    atomic_store(&a->lag_ms, 1500);
    atomic_store(&b->lag_ms, 7);
    atomic_store(&c->replication_lag_bytes, 4096);

    char *m = render_metrics();
    assert_has_line(m, "# TYPE pgtrickle_relay_pipelines_owned gauge");
    assert_has_line(m, "pgtrickle_relay_pipelines_owned 2");
    assert_has_line(m, "pgtrickle_relay_pipeline_healthy{pipeline=\"a\"} 1");
    assert_has_line(m, "pgtrickle_relay_pipeline_healthy{pipeline=\"b\"} 0");
    assert_has_line(m, "pgtrickle_relay_pipeline_healthy{pipeline=\"c\"} 1");
    assert_has_line(m, "pgtrickle_relay_lag_seconds{pipeline=\"a\"} 1.500");
    assert_has_line(m, "pgtrickle_relay_lag_seconds{pipeline=\"b\"} 0.007");
    assert_has_line(m, "pgtrickle_relay_replication_lag_bytes{pipeline=\"c\"} 4096");
    assert_no_substring(m, "pgtrickle_relay_replication_lag_bytes{pipeline=\"a\"}");
    /* Counters are printed for every registered entry, owned or not. */
    assert_has_line(m, "pgtrickle_relay_messages_published_total{pipeline=\"c\",sink=\"nats\"} 0");
    free(m);
    stats_unregister(a);
    stats_unregister(b);
    stats_unregister(c);
}

static void test_metrics_histogram(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    stats_observe_latency(a, 500);      /* <= 0.001 */
    stats_observe_latency(a, 1000);     /* exactly on a bound: <= 0.001 */
    stats_observe_latency(a, 3000);     /* <= 0.005 */
    stats_observe_latency(a, 2000000);  /* <= 2.5 */
    stats_observe_latency(a, 10000000); /* +Inf only */

    char *m = render_metrics();
    static const char *const expect[] = {
        "# TYPE pgtrickle_relay_publish_latency_seconds histogram",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.001\"} 2",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.0025\"} 2",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.005\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.01\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.025\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.05\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.1\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.25\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"0.5\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"1\"} 3",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"2.5\"} 4",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"5\"} 4",
        "pgtrickle_relay_publish_latency_seconds_bucket{pipeline=\"a\",le=\"+Inf\"} 5",
        "pgtrickle_relay_publish_latency_seconds_sum{pipeline=\"a\"} 12.004500",
        "pgtrickle_relay_publish_latency_seconds_count{pipeline=\"a\"} 5",
    };
    for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++)
        assert_has_line(m, expect[i]);
    /* Buckets are printed in increasing order. */
    assert_true(strstr(m, "le=\"0.001\"") < strstr(m, "le=\"0.0025\""));
    assert_true(strstr(m, "le=\"5\"") < strstr(m, "le=\"+Inf\""));
    free(m);
    stats_unregister(a);
}

static void test_metrics_label_escaping(void **state)
{
    (void)state;
    relay_stats *a = stats_register("we\"ird\\name\nx", "forward", "outbox", "fi\"le");
    atomic_store(&a->published, 1);
    char *m = render_metrics();
    assert_has_line(m, "pgtrickle_relay_messages_published_total{pipeline=\"we\\\"ird\\\\name\\nx\","
                       "sink=\"fi\\\"le\"} 1");
    assert_has_line(m, "pgtrickle_relay_dead_lettered_total{pipeline=\"we\\\"ird\\\\name\\nx\"} 0");
    free(m);
    stats_unregister(a);
}

static void test_metrics_empty_registry(void **state)
{
    (void)state;
    char *m = render_metrics();
    assert_has_line(m, "pgtrickle_relay_pipelines_owned 0");
    assert_has_line(m, "# TYPE pgtrickle_relay_publish_latency_seconds histogram");
    assert_no_substring(m, "pipeline=");
    free(m);
}

/* ---- /health ----------------------------------------------------------- */

static void test_health_healthy(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    relay_stats *idle = stats_register("idle", "forward", "outbox", "file");
    atomic_store(&idle->sink_up, 0); /* not owned: does not count */
    relay_buf b = {0};
    assert_int_equal(http_render_health(&b), 200);
    char expect[128];
    snprintf(expect, sizeof expect,
             "{\"status\":\"healthy\",\"pipelines_owned\":1,\"uptime_seconds\":%lld}",
             (long long)stats_uptime_seconds());
    assert_string_equal(b.data, expect);
    buf_free(&b);
    stats_unregister(a);
    stats_unregister(idle);
}

static void test_health_degraded(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    relay_stats *b = running_entry("b");
    relay_stats *c = running_entry("c");
    atomic_store(&b->source_up, 0);
    atomic_store(&c->pg_up, 0);
    relay_buf body = {0};
    assert_int_equal(http_render_health(&body), 503);
    json_t *doc = parse_json(body.data);
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "degraded");
    assert_int_equal(json_integer_value(json_object_get(doc, "pipelines_owned")), 3);
    assert_true(json_is_integer(json_object_get(doc, "uptime_seconds")));
    json_t *deg = json_object_get(doc, "degraded");
    assert_int_equal(json_array_size(deg), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(deg, 0), "pipeline")), "b");
    assert_string_equal(json_string_value(json_object_get(json_array_get(deg, 0), "reason")),
                        "source unavailable");
    assert_string_equal(json_string_value(json_object_get(json_array_get(deg, 1), "pipeline")), "c");
    assert_string_equal(json_string_value(json_object_get(json_array_get(deg, 1), "reason")),
                        "postgres connection lost");
    json_decref(doc);
    buf_free(&body);
    stats_unregister(a);
    stats_unregister(b);
    stats_unregister(c);
}

/* Issue 11: /health is 503 while the database cannot be reached, naming
 * the cause; a pipeline that could not be loaded is in /status and the
 * metrics, with its error. */
static void test_database_down_and_rejected(void **state)
{
    (void)state;
    relay_buf b = {0};
    stats_set_database(0, "FATAL:  password authentication failed for user \"relay\"\n");
    assert_int_equal(http_render_health(&b), 503);
    json_t *doc = parse_json(b.data);
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "degraded");
    assert_string_equal(json_string_value(json_object_get(doc, "reason")),
                        "cannot reach PostgreSQL: FATAL:  password authentication failed for user "
                        "\"relay\"");
    json_decref(doc);
    buf_clear(&b);
    http_render_metrics(&b);
    assert_non_null(strstr(b.data, "\npgtrickle_relay_database_up 0\n"));
    stats_set_database(1, NULL);
    buf_clear(&b);
    assert_int_equal(http_render_health(&b), 200);

    stats_set_rejected("bad", 1, "config.sink.type: unknown sink type \"nope\"");
    stats_set_rejected("bad", 1, "sink.output: /x is outside the paths this relay may use");
    stats_set_rejected("bad2", 0, "secret not found: env var X is not set");
    buf_clear(&b);
    http_render_metrics(&b);
    assert_non_null(strstr(b.data, "\npgtrickle_relay_database_up 1\n"));
    assert_non_null(strstr(b.data, "pgtrickle_relay_pipeline_rejected{pipeline=\"bad\",direction=\"forward\"} 1\n"));
    assert_non_null(strstr(b.data, "pgtrickle_relay_pipeline_rejected{pipeline=\"bad2\",direction=\"reverse\"} 1\n"));
    buf_clear(&b);
    http_render_status(&b);
    doc = parse_json(b.data);
    json_t *rej = json_object_get(doc, "rejected");
    assert_int_equal(json_array_size(rej), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(rej, 0), "error")),
                        "sink.output: /x is outside the paths this relay may use");
    assert_true(json_is_true(json_object_get(json_object_get(doc, "database"), "reachable")));
    json_decref(doc);
    stats_clear_rejected("bad", 1);
    stats_clear_rejected("bad2", 0);
    buf_clear(&b);
    http_render_metrics(&b);
    assert_null(strstr(b.data, "pgtrickle_relay_pipeline_rejected{"));
    buf_free(&b);
}

/* ---- /status ----------------------------------------------------------- */

static json_t *render_status_doc(void)
{
    relay_buf b = {0};
    http_render_status(&b);
    json_t *doc = parse_json(b.data);
    buf_free(&b);
    return doc;
}

static void test_status(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    relay_stats *b = stats_register("b", "reverse", "nats", "inbox");
    stats_set_position(a, "{\"last_outbox_id\":12}");
    stats_set_position(b, "not json");
    atomic_store(&a->published, 9);
    atomic_store(&a->lag_ms, 250);
    atomic_store(&b->replication_lag_bytes, 77);
    atomic_store(&a->sink_up, 0);
    stats_error(a, ERR_SINK, "connection refused");

    json_t *doc = render_status_doc();
    assert_string_equal(json_string_value(json_object_get(doc, "version")), RELAY_VERSION);
    assert_true(json_is_integer(json_object_get(doc, "uptime_seconds")));
    json_t *ps = json_object_get(doc, "pipelines");
    assert_int_equal(json_array_size(ps), 2);

    json_t *pa = json_array_get(ps, 0);
    assert_string_equal(json_string_value(json_object_get(pa, "name")), "a");
    assert_string_equal(json_string_value(json_object_get(pa, "direction")), "forward");
    json_t *src = json_object_get(pa, "source");
    assert_string_equal(json_string_value(json_object_get(src, "type")), "outbox");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(src, "position"),
                                                        "last_outbox_id")), 12);
    assert_string_equal(json_string_value(json_object_get(json_object_get(pa, "sink"), "type")),
                        "file");
    assert_true(json_is_true(json_object_get(pa, "running")));
    assert_true(json_is_false(json_object_get(pa, "healthy")));
    assert_string_equal(json_string_value(json_object_get(pa, "degraded_reason")), "sink unavailable");
    json_t *counters = json_object_get(pa, "counters");
    assert_int_equal(json_integer_value(json_object_get(counters, "published")), 9);
    assert_int_equal(json_integer_value(json_object_get(counters, "consumed")), 0);
    assert_int_equal(json_integer_value(json_object_get(counters, "batches")), 0);
    json_t *errors = json_object_get(counters, "errors");
    assert_int_equal(json_object_size(errors), ERR_KIND_COUNT);
    assert_int_equal(json_integer_value(json_object_get(errors, "sink")), 1);
    assert_true(json_real_value(json_object_get(pa, "lag_seconds")) == 0.25);
    assert_true(json_is_null(json_object_get(pa, "replication_lag_bytes")));
    assert_string_equal(json_string_value(json_object_get(pa, "last_error")), "connection refused");
    const char *at = json_string_value(json_object_get(pa, "last_error_at"));
    assert_non_null(at);
    assert_int_equal(strlen(at), strlen("2026-01-01T00:00:00.000Z"));
    assert_int_equal(at[10], 'T');
    assert_int_equal(at[strlen(at) - 1], 'Z');

    json_t *pb = json_array_get(ps, 1);
    assert_true(json_is_false(json_object_get(pb, "running")));
    assert_true(json_is_true(json_object_get(pb, "healthy")));
    assert_true(json_is_null(json_object_get(pb, "degraded_reason")));
    assert_int_equal(json_object_size(json_object_get(json_object_get(pb, "source"), "position")), 0);
    assert_int_equal(json_integer_value(json_object_get(pb, "replication_lag_bytes")), 77);
    assert_true(json_is_null(json_object_get(pb, "last_error")));
    assert_true(json_is_null(json_object_get(pb, "last_error_at")));
    json_decref(doc);
    stats_unregister(a);
    stats_unregister(b);
}

/* An error text cut inside a UTF-8 sequence must not break the document. */
static void test_status_invalid_utf8_error(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    stats_error(a, ERR_SOURCE, "bad byte \xc3");
    json_t *doc = render_status_doc();
    json_t *pa = json_array_get(json_object_get(doc, "pipelines"), 0);
    assert_string_equal(json_string_value(json_object_get(pa, "last_error")), "bad byte ?");
    json_decref(doc);
    stats_unregister(a);
}

/* ---- the real server --------------------------------------------------- */

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

/* Send one HTTP/1.0 request and return the whole response (caller frees). */
static char *http_request(int family, int port, const char *method, const char *path)
{
    int fd = socket(family, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    int rc;
    if (family == AF_INET6) {
        struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
                                  .sin6_addr = IN6ADDR_LOOPBACK_INIT};
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    assert_int_equal(rc, 0);
    char req[256];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n", method, path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    relay_buf resp = {0};
    char chunk[4096];
    ssize_t got;
    while ((got = read(fd, chunk, sizeof chunk)) > 0)
        buf_append(&resp, chunk, (size_t)got);
    close(fd);
    return buf_steal(&resp);
}

static const char *body_of(const char *resp)
{
    const char *p = strstr(resp, "\r\n\r\n");
    assert_non_null(p);
    return p + 4;
}

static void assert_status_line(const char *resp, int status)
{
    char expect[32];
    snprintf(expect, sizeof expect, "HTTP/1.0 %d ", status);
    char alt[32];
    snprintf(alt, sizeof alt, "HTTP/1.1 %d ", status);
    if (strncmp(resp, expect, strlen(expect)) != 0 && strncmp(resp, alt, strlen(alt)) != 0)
        fail_msg("expected status %d, got: %.60s", status, resp);
}

static void test_server_endpoints(void **state)
{
    (void)state;
    relay_stats *a = running_entry("a");
    atomic_store(&a->published, 3);
    int port = free_port();
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(http_start(addr, 10000, err, sizeof err), 0);
    assert_int_equal(http_start(addr, 10000, err, sizeof err), -1); /* already running */

    char *r = http_request(AF_INET, port, "GET", "/metrics");
    assert_status_line(r, 200);
    assert_non_null(strstr(r, "text/plain; version=0.0.4"));
    assert_has_line(body_of(r), "pgtrickle_relay_messages_published_total{pipeline=\"a\",sink=\"file\"} 3");
    free(r);

    r = http_request(AF_INET, port, "GET", "/health");
    assert_status_line(r, 200);
    assert_non_null(strstr(r, "application/json"));
    json_t *doc = parse_json(body_of(r));
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "healthy");
    json_decref(doc);
    free(r);

    atomic_store(&a->sink_up, 0);
    r = http_request(AF_INET, port, "GET", "/health");
    assert_status_line(r, 503);
    doc = parse_json(body_of(r));
    assert_string_equal(json_string_value(json_object_get(doc, "status")), "degraded");
    json_decref(doc);
    free(r);

    r = http_request(AF_INET, port, "GET", "/status");
    assert_status_line(r, 200);
    doc = parse_json(body_of(r));
    assert_int_equal(json_array_size(json_object_get(doc, "pipelines")), 1);
    json_decref(doc);
    free(r);

    r = http_request(AF_INET, port, "HEAD", "/metrics");
    assert_status_line(r, 200);
    assert_string_equal(body_of(r), "");
    free(r);

    r = http_request(AF_INET, port, "POST", "/metrics");
    assert_status_line(r, 405);
    assert_non_null(strstr(r, "Allow: GET, HEAD"));
    free(r);

    r = http_request(AF_INET, port, "DELETE", "/health");
    assert_status_line(r, 405);
    free(r);

    r = http_request(AF_INET, port, "GET", "/nope");
    assert_status_line(r, 404);
    free(r);

    /* Nothing above changed state. */
    assert_int_equal(atomic_load(&a->published), 3);
    http_stop();
    http_stop(); /* idempotent */
    stats_unregister(a);
}

/* A connected socket that has sent a request line and one header, and never
 * finishes the headers. */
static int slow_client(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    static const char head[] = "GET /health HTTP/1.1\r\nHost: localhost\r\n";
    assert_int_equal(write(fd, head, sizeof head - 1), (ssize_t)(sizeof head - 1));
    return fd;
}

/* 1 once the server has closed fd (EOF or reset), 0 while it is open. */
static int closed_by_server(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
    return n <= 0;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void test_server_request_deadline(void **state)
{
    (void)state;
    int port = free_port();
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(http_start(addr, 400, err, sizeof err), 0);
    /* A header line every 100 ms: never idle, never done. */
    int fd = slow_client(port);
    int64_t t0 = mono_ms(), closed_at = -1;
    for (int i = 0; i < 30 && closed_at < 0; i++) {
        poll(NULL, 0, 100);
        if (closed_by_server(fd)) {
            closed_at = mono_ms() - t0;
            break;
        }
        char line[32];
        int n = snprintf(line, sizeof line, "X-Slow-%d: %d\r\n", i, i);
        (void)send(fd, line, (size_t)n, MSG_NOSIGNAL);
    }
    close(fd);
    if (closed_at < 350 || closed_at > 1500)
        fail_msg("a slow client was closed after %lld ms (deadline 400 ms)", (long long)closed_at);
    char *m = render_metrics();
    assert_has_line(m, "pgtrickle_relay_http_requests_timed_out_total{server=\"metrics\"} 1");
    free(m);
    http_stop();
}

static void test_server_sheds_slow_clients(void **state)
{
    (void)state;
    int port = free_port();
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    assert_int_equal(http_start(addr, 10000, err, sizeof err), 0);
    /* 70 clients that never finish (the limit is 64): /health still answers. */
    int fds[70];
    for (int i = 0; i < 70; i++)
        fds[i] = slow_client(port);
    char *r = http_request(AF_INET, port, "GET", "/health");
    assert_status_line(r, 200);
    free(r);
    /* The oldest went first: the first clients are closed, the last are not. */
    poll(NULL, 0, 200);
    assert_true(closed_by_server(fds[0]));
    assert_false(closed_by_server(fds[69]));
    char *m = render_metrics();
    const char *line = strstr(m, "pgtrickle_relay_http_connections_shed_total{server=\"metrics\"} ");
    assert_non_null(line);
    long shed = strtol(line + strlen("pgtrickle_relay_http_connections_shed_total{server=\"metrics\"} "),
                       NULL, 10);
    if (shed < 14)
        fail_msg("expected at least 14 shed connections, got %ld", shed);
    assert_non_null(strstr(m, "pgtrickle_relay_http_connections{server=\"metrics\"} "));
    free(m);
    for (int i = 0; i < 70; i++)
        close(fds[i]);
    http_stop();
    /* The listener is gone from /metrics with its server. */
    m = render_metrics();
    assert_null(strstr(m, "{server=\"metrics\"}"));
    free(m);
}

static void test_server_ipv6(void **state)
{
    (void)state;
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    int have_v6 = probe >= 0 && bind(probe, (struct sockaddr *)&sa, sizeof sa) == 0;
    socklen_t len = sizeof sa;
    if (have_v6)
        getsockname(probe, (struct sockaddr *)&sa, &len);
    if (probe >= 0)
        close(probe);
    if (!have_v6)
        skip();
    int port = ntohs(sa.sin6_port);
    char addr[64], err[256];
    snprintf(addr, sizeof addr, "[::1]:%d", port);
    assert_int_equal(http_start(addr, 10000, err, sizeof err), 0);
    char *r = http_request(AF_INET6, port, "GET", "/health");
    assert_status_line(r, 200);
    free(r);
    http_stop();
}

static void test_server_bad_addresses(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(http_start("nonsense", 10000, err, sizeof err), -1);
    assert_non_null(strstr(err, "nonsense"));
    assert_int_equal(http_start("127.0.0.1:", 10000, err, sizeof err), -1);
    assert_int_equal(http_start("127.0.0.1:http", 10000, err, sizeof err), -1);
    assert_int_equal(http_start("::1:9090", 10000, err, sizeof err), -1);
    assert_int_equal(http_start("[::1:9090", 10000, err, sizeof err), -1);
    assert_int_equal(http_start("no.such.host.invalid:9090", 10000, err, sizeof err), -1);

    /* A port in use is reported with the system's reason. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof sa;
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(fd, 1), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", ntohs(sa.sin_port));
    assert_int_equal(http_start(addr, 10000, err, sizeof err), -1);
    assert_non_null(strstr(err, "Address already in use"));
    close(fd);
    http_stop(); /* safe when never started */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_stats_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_database_down_and_rejected, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_degraded_reasons, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_refcount_outlives_registry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_counters, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_gauges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_histogram, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_label_escaping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_metrics_empty_registry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_healthy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_health_degraded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status, setup, teardown),
        cmocka_unit_test_setup_teardown(test_status_invalid_utf8_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_endpoints, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_request_deadline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_sheds_slow_clients, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_ipv6, setup, teardown),
        cmocka_unit_test_setup_teardown(test_server_bad_addresses, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
