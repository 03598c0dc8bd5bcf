/*
 * http.c - the read-only observability endpoints (SPEC section 9), served by
 * libmicrohttpd on one internal thread.
 *
 *   GET /metrics   Prometheus text exposition format 0.0.4
 *   GET /health    200 healthy / 503 degraded, JSON
 *   GET /status    one JSON object per registered pipeline
 *
 * Every response is rendered from scratch from stats_snapshot(): the
 * snapshot holds a reference on each entry, so rendering takes no lock
 * beyond the per-entry mutex that guards the two text fields, and workers
 * never wait for a scrape. Nothing here writes to a stats entry.
 *
 * Any other path is 404, any method other than GET/HEAD is 405 (HEAD gets
 * the GET headers with no body; libmicrohttpd drops the body itself).
 *
 * Slow clients: the listener allows 64 connections; src/http_guard.c bounds
 * each request's total time (--metrics-request-timeout, 10 s by default) and,
 * near the limit, closes the connection that has been receiving its request
 * the longest, so /health and /metrics keep answering under a flood of
 * clients that trickle their headers (http_guard.c explains how).
 *
 * Binding: we create the listening socket ourselves (getaddrinfo on the
 * "host:port" / "[v6]:port" string, SO_REUSEADDR, bind, listen) and hand it
 * to libmicrohttpd with MHD_OPTION_LISTEN_SOCKET. That way a bad address or
 * a port in use is reported with the real errno text at startup, and the
 * daemon never guesses at address families.
 *
 * Nothing rendered here may contain a secret: the stats entries only hold
 * names, types, counters, positions and error texts that callers promise
 * are secret-free.
 */
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "http_guard.h"
#include "log.h"
#include "net.h"
#include "stats.h"

#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown"
#endif

#define CONTENT_TYPE_METRICS "text/plain; version=0.0.4; charset=utf-8"
#define CONTENT_TYPE_JSON "application/json"
#define CONTENT_TYPE_TEXT "text/plain; charset=utf-8"

#define METRICS_MAX_CONNECTIONS 64

static struct MHD_Daemon *g_daemon;
static http_guard *g_guard;

/* ---- snapshots --------------------------------------------------------- */

typedef struct {
    relay_stats **e;
    size_t n;
} snapshot;

static snapshot snapshot_take(void)
{
    snapshot s;
    s.e = stats_snapshot(&s.n);
    return s;
}

static void snapshot_release(snapshot *s)
{
    for (size_t i = 0; i < s->n; i++)
        stats_unref(s->e[i]);
    free(s->e);
    s->e = NULL;
    s->n = 0;
}

static uint64_t load_u64(_Atomic uint64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int64_t load_i64(_Atomic int64_t *v)
{
    return atomic_load_explicit(v, memory_order_relaxed);
}

static int is_running(relay_stats *s)
{
    return atomic_load_explicit(&s->running, memory_order_relaxed) != 0;
}

static int64_t owned_count(const snapshot *snap)
{
    int64_t n = 0;
    for (size_t i = 0; i < snap->n; i++)
        n += is_running(snap->e[i]);
    return n;
}

/* ---- Prometheus text --------------------------------------------------- */

/* A label value, quoted, with \ " and newline escaped per the format. */
static void put_label_value(relay_buf *out, const char *v)
{
    buf_putc(out, '"');
    for (const char *p = v; *p; p++) {
        switch (*p) {
        case '\\': buf_puts(out, "\\\\"); break;
        case '"': buf_puts(out, "\\\""); break;
        case '\n': buf_puts(out, "\\n"); break;
        default: buf_putc(out, *p);
        }
    }
    buf_putc(out, '"');
}

static void put_family(relay_buf *out, const char *name, const char *type, const char *help)
{
    buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* `name_suffix{pipeline="..."` — the caller adds more labels and the closing brace. */
static void put_series_start(relay_buf *out, const char *name, const char *suffix,
                             const relay_stats *s)
{
    buf_puts(out, name);
    buf_puts(out, suffix);
    buf_puts(out, "{pipeline=");
    put_label_value(out, s->name);
}

static void put_sample_start(relay_buf *out, const char *name, const relay_stats *s)
{
    put_series_start(out, name, "", s);
}

static void put_u64_line(relay_buf *out, uint64_t v)
{
    buf_printf(out, " %" PRIu64 "\n", v);
}

/* An exact decimal from an integer count of 10^-digits units: 1500 ms -> "1.500". */
static void put_fixed(relay_buf *out, int64_t v, int digits, int64_t scale)
{
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    buf_printf(out, "%s%" PRIu64 ".%0*" PRIu64, v < 0 ? "-" : "", u / (uint64_t)scale, digits,
               u % (uint64_t)scale);
}

/* One counter per pipeline, with an optional second label. */
static void put_counter_family(relay_buf *out, const snapshot *snap, const char *name,
                               const char *help, const char *label,
                               const char *(*label_value)(const relay_stats *),
                               uint64_t (*value)(relay_stats *))
{
    put_family(out, name, "counter", help);
    for (size_t i = 0; i < snap->n; i++) {
        relay_stats *s = snap->e[i];
        put_sample_start(out, name, s);
        if (label) {
            buf_printf(out, ",%s=", label);
            put_label_value(out, label_value(s));
        }
        buf_putc(out, '}');
        put_u64_line(out, value(s));
    }
}

static const char *sink_label(const relay_stats *s) { return s->sink_type; }
static const char *source_label(const relay_stats *s) { return s->source_type; }
static uint64_t published_of(relay_stats *s) { return load_u64(&s->published); }
static uint64_t consumed_of(relay_stats *s) { return load_u64(&s->consumed); }
static uint64_t dedup_of(relay_stats *s) { return load_u64(&s->dedup_skipped); }
static uint64_t dead_of(relay_stats *s) { return load_u64(&s->dead_lettered); }
static uint64_t batches_of(relay_stats *s) { return load_u64(&s->batches); }
static uint64_t read_ahead_of(relay_stats *s) { return load_u64(&s->batches_read_ahead); }

static void put_error_family(relay_buf *out, const snapshot *snap)
{
    const char *name = "pgtrickle_relay_publish_errors_total";
    put_family(out, name, "counter", "Errors by kind (source, sink, permanent, decode, postgres).");
    for (size_t i = 0; i < snap->n; i++) {
        relay_stats *s = snap->e[i];
        for (int k = 0; k < ERR_KIND_COUNT; k++) {
            put_sample_start(out, name, s);
            buf_printf(out, ",kind=\"%s\"}", relay_err_kind_name((relay_err_kind)k));
            put_u64_line(out, load_u64(&s->errors[k]));
        }
    }
}

static void put_health_family(relay_buf *out, const snapshot *snap, int64_t now_ms)
{
    const char *name = "pgtrickle_relay_pipeline_healthy";
    put_family(out, name, "gauge", "1 when the pipeline is healthy, 0 when it is degraded.");
    for (size_t i = 0; i < snap->n; i++) {
        put_sample_start(out, name, snap->e[i]);
        buf_puts(out, stats_degraded_reason(snap->e[i], now_ms) ? "} 0\n" : "} 1\n");
    }
}

static void put_op_family(relay_buf *out, const snapshot *snap)
{
    const char *name = "pgtrickle_relay_events_total";
    put_family(out, name, "counter", "Events confirmed by the sink, by operation.");
    for (size_t i = 0; i < snap->n; i++) {
        for (int op = 0; op < RELAY_OP_COUNT; op++) {
            uint64_t v = load_u64(&snap->e[i]->published_by_op[op]);
            if (!v)
                continue;
            put_sample_start(out, name, snap->e[i]);
            buf_printf(out, ",op=\"%s\"}", relay_op_name((relay_op)op));
            put_u64_line(out, v);
        }
    }
}

static void put_lag_families(relay_buf *out, const snapshot *snap)
{
    const char *name = "pgtrickle_relay_lag_seconds";
    put_family(out, name, "gauge", "Age of the newest acknowledged event when it was acknowledged.");
    for (size_t i = 0; i < snap->n; i++) {
        put_sample_start(out, name, snap->e[i]);
        buf_puts(out, "} ");
        put_fixed(out, load_i64(&snap->e[i]->lag_ms), 3, 1000);
        buf_putc(out, '\n');
    }

    name = "pgtrickle_relay_confirmed_lsn";
    put_family(out, name, "gauge", "CDC: the last LSN acknowledged to the server (as a number).");
    for (size_t i = 0; i < snap->n; i++) {
        int64_t lsn = load_i64(&snap->e[i]->confirmed_lsn);
        if (lsn < 0)
            continue;
        put_sample_start(out, name, snap->e[i]);
        buf_printf(out, "} %" PRId64 "\n", lsn);
    }

    name = "pgtrickle_relay_backfill_rows_total";
    put_family(out, name, "counter", "CDC backfills: rows confirmed by the sink (whole chunks).");
    for (size_t i = 0; i < snap->n; i++) {
        if (strcmp(snap->e[i]->source_type, "cdc") != 0)
            continue;
        put_sample_start(out, name, snap->e[i]);
        buf_putc(out, '}');
        put_u64_line(out, load_u64(&snap->e[i]->backfill_rows));
    }
    name = "pgtrickle_relay_backfill_chunks_total";
    put_family(out, name, "counter", "CDC backfills: chunks confirmed by the sink.");
    for (size_t i = 0; i < snap->n; i++) {
        if (strcmp(snap->e[i]->source_type, "cdc") != 0)
            continue;
        put_sample_start(out, name, snap->e[i]);
        buf_putc(out, '}');
        put_u64_line(out, load_u64(&snap->e[i]->backfill_chunks));
    }
    name = "pgtrickle_relay_backfills_running";
    put_family(out, name, "gauge", "CDC backfills: 1 while the pipeline sends a backfill.");
    for (size_t i = 0; i < snap->n; i++) {
        if (strcmp(snap->e[i]->source_type, "cdc") != 0)
            continue;
        put_sample_start(out, name, snap->e[i]);
        buf_printf(out, "} %d\n", atomic_load(&snap->e[i]->backfills_running));
    }

    name = "pgtrickle_relay_replication_lag_bytes";
    put_family(out, name, "gauge", "Bytes of WAL between the server's current position and the slot.");
    for (size_t i = 0; i < snap->n; i++) {
        int64_t lag = load_i64(&snap->e[i]->replication_lag_bytes);
        if (lag < 0)
            continue;
        put_sample_start(out, name, snap->e[i]);
        buf_printf(out, "} %" PRId64 "\n", lag);
    }
}

static void put_latency_histogram(relay_buf *out, relay_stats *s)
{
    const char *name = "pgtrickle_relay_publish_latency_seconds";
    /* Clamp to non-decreasing: a writer may be mid-update (see stats.c). */
    uint64_t cum = 0;
    for (int b = 0; b < RELAY_LATENCY_BUCKETS; b++) {
        uint64_t v = load_u64(&s->latency_buckets[b]);
        if (v > cum)
            cum = v;
        put_series_start(out, name, "_bucket", s);
        buf_printf(out, ",le=\"%g\"}", relay_latency_bounds[b]);
        put_u64_line(out, cum);
    }
    uint64_t count = load_u64(&s->latency_count);
    if (count < cum)
        count = cum;
    put_series_start(out, name, "_bucket", s);
    buf_puts(out, ",le=\"+Inf\"}");
    put_u64_line(out, count);
    put_series_start(out, name, "_sum", s);
    buf_puts(out, "} ");
    put_fixed(out, (int64_t)load_u64(&s->latency_sum_us), 6, 1000000);
    buf_putc(out, '\n');
    put_series_start(out, name, "_count", s);
    buf_putc(out, '}');
    put_u64_line(out, count);
}

static void put_latency_family(relay_buf *out, const snapshot *snap)
{
    put_family(out, "pgtrickle_relay_publish_latency_seconds", "histogram",
               "Time from reading a batch to the sink's durable confirmation.");
    for (size_t i = 0; i < snap->n; i++)
        put_latency_histogram(out, snap->e[i]);
}

static void put_process_families(relay_buf *out, const snapshot *snap)
{
    put_family(out, "pgtrickle_relay_pipelines_owned", "gauge",
               "Pipelines this process currently owns and runs.");
    buf_printf(out, "pgtrickle_relay_pipelines_owned %" PRId64 "\n", owned_count(snap));
    int relays, share;
    stats_get_group(&relays, &share);
    put_family(out, "pgtrickle_relay_group_relays", "gauge",
               "Relays alive in this relay's group (holders of the group's membership lock).");
    buf_printf(out, "pgtrickle_relay_group_relays %d\n", relays);
    put_family(out, "pgtrickle_relay_fair_share", "gauge",
               "Pipelines this relay runs at most while every pipeline has an owner.");
    buf_printf(out, "pgtrickle_relay_fair_share %d\n", share);
    char dberr[512];
    int db = stats_get_database(dberr, sizeof dberr);
    put_family(out, "pgtrickle_relay_database_up", "gauge",
               "1 while the relay reaches its PostgreSQL database (the coordinator is connected).");
    buf_printf(out, "pgtrickle_relay_database_up %d\n", db == 1);
    size_t nrej;
    relay_rejected *rej = stats_rejected_list(&nrej);
    put_family(out, "pgtrickle_relay_pipeline_rejected", "gauge",
               "1 for each pipeline this relay could not load (its error is in /status).");
    for (size_t i = 0; i < nrej; i++) {
        buf_puts(out, "pgtrickle_relay_pipeline_rejected{pipeline=");
        put_label_value(out, rej[i].name);
        buf_printf(out, ",direction=\"%s\"} 1\n", rej[i].forward ? "forward" : "reverse");
    }
    stats_rejected_free(rej, nrej);
    put_family(out, "pgtrickle_relay_uptime_seconds", "gauge", "Seconds since the process started.");
    buf_printf(out, "pgtrickle_relay_uptime_seconds %" PRId64 "\n", stats_uptime_seconds());
    put_family(out, "pgtrickle_relay_info", "gauge", "Build information.");
    buf_puts(out, "pgtrickle_relay_info{version=");
    put_label_value(out, RELAY_VERSION);
    buf_puts(out, "} 1\n");
}

/* The listeners' own counters (http_guard.h): the metrics server and each
 * webhook receiver. */
static void put_listener_labels(relay_buf *out, const char *name, const http_guard_counts *c)
{
    buf_printf(out, "%s{server=", name);
    put_label_value(out, c->server);
    if (c->pipeline) {
        buf_puts(out, ",pipeline=");
        put_label_value(out, c->pipeline);
    }
    buf_putc(out, '}');
}

static void put_open_line(const http_guard_counts *c, void *arg)
{
    put_listener_labels(arg, "pgtrickle_relay_http_connections", c);
    buf_printf(arg, " %u\n", c->open);
}

static void put_shed_line(const http_guard_counts *c, void *arg)
{
    put_listener_labels(arg, "pgtrickle_relay_http_connections_shed_total", c);
    put_u64_line(arg, c->shed);
}

static void put_timed_out_line(const http_guard_counts *c, void *arg)
{
    put_listener_labels(arg, "pgtrickle_relay_http_requests_timed_out_total", c);
    put_u64_line(arg, c->timed_out);
}

static void put_listener_families(relay_buf *out)
{
    put_family(out, "pgtrickle_relay_http_connections", "gauge",
               "Open client connections of an HTTP listener.");
    http_guard_foreach(put_open_line, out);
    put_family(out, "pgtrickle_relay_http_connections_shed_total", "counter",
               "Connections closed while still receiving their request, to keep room near "
               "the listener's connection limit.");
    http_guard_foreach(put_shed_line, out);
    put_family(out, "pgtrickle_relay_http_requests_timed_out_total", "counter",
               "Connections closed because a request (or its response) took longer than the "
               "request deadline.");
    http_guard_foreach(put_timed_out_line, out);
}

void http_render_metrics(relay_buf *out)
{
    snapshot snap = snapshot_take();
    int64_t now = now_wall_ms();
    put_counter_family(out, &snap, "pgtrickle_relay_messages_published_total",
                       "Messages confirmed durably by the sink.", "sink", sink_label, published_of);
    put_counter_family(out, &snap, "pgtrickle_relay_messages_consumed_total",
                       "Messages read from the source.", "source", source_label, consumed_of);
    put_error_family(out, &snap);
    put_counter_family(out, &snap, "pgtrickle_relay_dedup_skipped_total",
                       "Inbox rows skipped as duplicates.", NULL, NULL, dedup_of);
    put_counter_family(out, &snap, "pgtrickle_relay_dead_lettered_total",
                       "Messages written to the dead-letter table.", NULL, NULL, dead_of);
    put_counter_family(out, &snap, "pgtrickle_relay_batches_total",
                       "Batches acknowledged to the source.", NULL, NULL, batches_of);
    put_counter_family(out, &snap, "pgtrickle_relay_batches_read_ahead_total",
                       "Batches read while the previous batch was being published.", NULL, NULL,
                       read_ahead_of);
    put_op_family(out, &snap);
    put_health_family(out, &snap, now);
    put_lag_families(out, &snap);
    put_latency_family(out, &snap);
    put_process_families(out, &snap);
    put_listener_families(out);
    snapshot_release(&snap);
}

/* ---- JSON bodies ------------------------------------------------------- */

static void dump_json(relay_buf *out, json_t *doc)
{
    char *text = doc ? json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    if (text) {
        buf_puts(out, text);
        free(text);
    } else {
        buf_puts(out, "{}");
    }
    json_decref(doc);
}

/*
 * A JSON string that can always be built: jansson refuses invalid UTF-8,
 * which an error text truncated mid-character (or a broker's message) may
 * contain, so such a text is kept with its non-ASCII bytes replaced by '?'.
 */
static json_t *json_text(const char *s)
{
    json_t *v = json_string(s);
    if (v)
        return v;
    char *copy = xstrdup(s);
    for (char *p = copy; *p; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    v = json_string(copy);
    free(copy);
    return v;
}

static json_t *json_text_or_null(const char *s)
{
    return s && *s ? json_text(s) : json_null();
}

int http_render_health(relay_buf *out)
{
    snapshot snap = snapshot_take();
    int64_t now = now_wall_ms();
    json_t *degraded = json_array();
    for (size_t i = 0; i < snap.n; i++) {
        const char *why = stats_degraded_reason(snap.e[i], now);
        if (why)
            json_array_append_new(degraded, json_pack("{s:o, s:s}", "pipeline",
                                                      json_text(snap.e[i]->name), "reason", why));
    }
    char dberr[512];
    int db = stats_get_database(dberr, sizeof dberr);
    int healthy = json_array_size(degraded) == 0 && db == 1;
    json_t *doc = json_pack("{s:s, s:I, s:I}", "status", healthy ? "healthy" : "degraded",
                            "pipelines_owned", (json_int_t)owned_count(&snap), "uptime_seconds",
                            (json_int_t)stats_uptime_seconds());
    if (db != 1) {
        char why[700];
        if (db < 0)
            snprintf(why, sizeof why, "connecting to PostgreSQL");
        else
            snprintf(why, sizeof why, "cannot reach PostgreSQL: %s", dberr);
        json_object_set_new(doc, "reason", json_text(why));
    }
    if (healthy)
        json_decref(degraded);
    else
        json_object_set_new(doc, "degraded", degraded);
    snapshot_release(&snap);
    dump_json(out, doc);
    return healthy ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
}

/* ISO-8601 UTC with milliseconds, or JSON null for 0 (never happened). */
static json_t *json_time(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    time_t sec = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    char text[64];
    size_t n = strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(text + n, sizeof text - n, ".%03dZ", (int)(ms % 1000));
    return json_string(text);
}

/* The source position and the sink details are stored as JSON object
 * text; embed them as JSON. */
static json_t *parse_position(const char *text)
{
    json_t *pos = json_loads(text, 0, NULL);
    if (!json_is_object(pos)) {
        json_decref(pos);
        pos = json_object();
    }
    return pos;
}

static json_t *status_counters(relay_stats *s)
{
    json_t *errors = json_object();
    for (int k = 0; k < ERR_KIND_COUNT; k++)
        json_object_set_new(errors, relay_err_kind_name((relay_err_kind)k),
                            json_integer((json_int_t)load_u64(&s->errors[k])));
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:o}",
                     "published", (json_int_t)load_u64(&s->published),
                     "consumed", (json_int_t)load_u64(&s->consumed),
                     "dead_lettered", (json_int_t)load_u64(&s->dead_lettered),
                     "dedup_skipped", (json_int_t)load_u64(&s->dedup_skipped),
                     "batches", (json_int_t)load_u64(&s->batches),
                     "batches_read_ahead", (json_int_t)load_u64(&s->batches_read_ahead),
                     "errors", errors);
}

static json_t *status_pipeline(relay_stats *s, int64_t now_ms)
{
    char last_error[sizeof s->last_error];
    int64_t last_error_ms;
    pthread_mutex_lock(&s->mu);
    memcpy(last_error, s->last_error, sizeof last_error);
    last_error_ms = s->last_error_ms;
    json_t *position = parse_position(s->position.data ? s->position.data : "{}");
    json_t *sink = parse_position(s->sink_info.data ? s->sink_info.data : "{}");
    pthread_mutex_unlock(&s->mu);
    json_object_set_new(sink, "type", json_text(s->sink_type));
    last_error[sizeof last_error - 1] = '\0';

    const char *why = stats_degraded_reason(s, now_ms);
    int64_t repl = load_i64(&s->replication_lag_bytes);
    return json_pack("{s:o, s:o, s:{s:o, s:o}, s:o, s:b, s:b, s:o, s:o, s:f, s:o, s:o, s:o,"
                     " s:o, s:o}",
                     "name", json_text(s->name),
                     "direction", json_text(s->direction),
                     "source", "type", json_text(s->source_type), "position", position,
                     "sink", sink,
                     "running", is_running(s),
                     "healthy", why == NULL,
                     "degraded_reason", json_text_or_null(why),
                     "counters", status_counters(s),
                     "lag_seconds", (double)load_i64(&s->lag_ms) / 1000.0,
                     "replication_lag_bytes", repl >= 0 ? json_integer(repl) : json_null(),
                     "started_at", json_time(load_i64(&s->started_ms)),
                     "last_progress_at", json_time(load_i64(&s->last_progress_ms)),
                     "last_error", json_text_or_null(last_error),
                     "last_error_at", last_error[0] ? json_time(last_error_ms) : json_null());
}

void http_render_status(relay_buf *out)
{
    snapshot snap = snapshot_take();
    int64_t now = now_wall_ms();
    json_t *pipelines = json_array();
    for (size_t i = 0; i < snap.n; i++)
        json_array_append_new(pipelines, status_pipeline(snap.e[i], now));
    json_int_t owned = (json_int_t)owned_count(&snap);
    snapshot_release(&snap);
    int relays, share;
    stats_get_group(&relays, &share);
    size_t nrej;
    relay_rejected *rej = stats_rejected_list(&nrej);
    json_t *rejected = json_array();
    for (size_t i = 0; i < nrej; i++)
        json_array_append_new(rejected, json_pack("{s:o, s:s, s:o}", "name", json_text(rej[i].name),
                                                  "direction",
                                                  rej[i].forward ? "forward" : "reverse", "error",
                                                  json_text(rej[i].error)));
    stats_rejected_free(rej, nrej);
    char dberr[512];
    int db = stats_get_database(dberr, sizeof dberr);
    dump_json(out, json_pack("{s:I, s:s, s:I, s:{s:b, s:o}, s:{s:i, s:i}, s:o, s:o}",
                             "uptime_seconds", (json_int_t)stats_uptime_seconds(), "version",
                             RELAY_VERSION, "pipelines_owned", owned, "database", "reachable",
                             db == 1, "error", db == 0 ? json_text(dberr) : json_null(), "group",
                             "relays", relays, "fair_share", share, "pipelines", pipelines,
                             "rejected", rejected));
}

/* ---- request handling -------------------------------------------------- */

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, relay_buf *body,
                               const char *content_type)
{
    size_t len = body->len;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, buf_steal(body), MHD_RESPMEM_MUST_FREE);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    http_guard_responding(conn);
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)cls;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    relay_buf body = {0};
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
        buf_puts(&body, "method not allowed\n");
        return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, &body, CONTENT_TYPE_TEXT);
    }
    if (strcmp(url, "/metrics") == 0) {
        http_render_metrics(&body);
        return respond(conn, MHD_HTTP_OK, &body, CONTENT_TYPE_METRICS);
    }
    if (strcmp(url, "/health") == 0) {
        unsigned status = (unsigned)http_render_health(&body);
        return respond(conn, status, &body, CONTENT_TYPE_JSON);
    }
    if (strcmp(url, "/status") == 0) {
        http_render_status(&body);
        return respond(conn, MHD_HTTP_OK, &body, CONTENT_TYPE_JSON);
    }
    buf_puts(&body, "not found\n");
    return respond(conn, MHD_HTTP_NOT_FOUND, &body, CONTENT_TYPE_TEXT);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)con_cls;
    (void)toe;
    http_guard_request_done(conn);
}

/* ---- listening socket -------------------------------------------------- */

int http_start(const char *addr, int64_t request_timeout_ms, char *err, size_t errlen)
{
    if (g_daemon) {
        snprintf(err, errlen, "metrics server already running");
        return -1;
    }
    int family = AF_INET;
    int fd = net_listen(addr, METRICS_MAX_CONNECTIONS, &family, "metrics address", err, errlen);
    if (fd < 0)
        return -1;
    http_guard_cfg gc = {.server = "metrics", .pipeline = NULL,
                         .max_connections = METRICS_MAX_CONNECTIONS,
                         .request_timeout_ms = request_timeout_ms};
    g_guard = http_guard_create(&gc);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_AUTO | MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* The port argument is ignored when a listening socket is supplied. */
    g_daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL,
                                MHD_OPTION_EXTERNAL_LOGGER, http_guard_mhd_log, g_guard,
                                MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
                                MHD_OPTION_CONNECTION_LIMIT, (unsigned)METRICS_MAX_CONNECTIONS,
                                MHD_OPTION_NOTIFY_CONNECTION, http_guard_on_connection, g_guard,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                MHD_OPTION_END);
    if (!g_daemon) {
        close(fd);
        http_guard_destroy(g_guard);
        g_guard = NULL;
        snprintf(err, errlen, "metrics address %s: cannot start the HTTP server", addr);
        return -1;
    }
    if (http_guard_start(g_guard, err, errlen) < 0) {
        http_stop();
        return -1;
    }
    log_info(NULL, "serving /metrics, /health and /status on %s", addr);
    return 0;
}

void http_stop(void)
{
    if (!g_daemon)
        return;
    MHD_stop_daemon(g_daemon);
    g_daemon = NULL;
    http_guard_destroy(g_guard); /* after the daemon: it reported every connection closed */
    g_guard = NULL;
}
