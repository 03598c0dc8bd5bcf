/*
 * format_cloudevents.c - CloudEvents 1.0 (format "cloudevents"): the
 * attributes of a relay event, the JSON event format (structured mode),
 * the header value encoding of the protocol bindings (binary mode), and
 * the parser of structured events for the webhook receiver.
 *
 * References (github.com/cloudevents/spec, cloudevents/):
 *   spec.md                 "Context Attributes": REQUIRED id, source,
 *                           specversion, type; OPTIONAL datacontenttype,
 *                           subject, time (RFC 3339); extension names are
 *                           lower-case letters and digits.
 *   extensions/partitioning.md  "partitionkey": the row key of a CDC event.
 *   formats/json-format.md  section 3 "Envelope" (media type
 *                           application/cloudevents+json), 3.1 "Handling of
 *                           data" (JSON data as the "data" member itself,
 *                           binary data as base64 "data_base64", never both).
 *   bindings/http-protocol-binding.md 3.1.3 "Metadata Headers" ("ce-"
 *                           prefix; values percent-encoded as in 3.1.3.2).
 *   bindings/kafka-protocol-binding.md 3.2.3 ("ce_" headers), 3.1 (the
 *                           partitionkey is the record key).
 *   bindings/nats-protocol-binding.md 3.1.3 ("ce-" headers, percent-encoded
 *                           like HTTP).
 *
 * Mapping of a relay event: id = the dedup key (SPEC section 5: stable
 * across replays, so a consumer deduplicates on source+id as the spec
 * asks), type = the cloudevents_type template (default
 * "io.pgtrickle.{op}"), source = cloudevents_source (default
 * "/pgtrickle-relay/<pipeline>"), subject = the rendered subject/topic,
 * time = the transaction's commit time for CDC, else the time the relay
 * encoded the event, data = the payload (the row; a delete's old row or
 * key; absent for a truncate).
 */
#include "formats.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "json_scan.h"

#define CE_DEFAULT_TYPE "io.pgtrickle.{op}"

static void rfc3339_now(int64_t us, char *buf, size_t n)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t k = strftime(buf, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + k, n - k, ".%06uZ", (unsigned)(us % 1000000));
}

/* The "commit_time" string of a CDC event's source JSON, or NULL. */
static const char *commit_time(const relay_msg *m, relay_arena *a)
{
    char t[64];
    return fmt_source_member(m->source_json, "commit_time", t, sizeof t) ? arena_strdup(a, t) : NULL;
}

void fmt_ce_attrs_of(const relay_format_ctx *ctx, const relay_msg *m, relay_arena *a,
                     fmt_ce_attrs *out)
{
    const relay_format_opts *o = ctx->opts;
    memset(out, 0, sizeof *out);
    out->id = m->dedup_key;
    if (o && o->ce_source)
        out->source = o->ce_source;
    else
        out->source = arena_printf(a, "/pgtrickle-relay/%s", ctx->pipeline ? ctx->pipeline : "relay");
    relay_buf t = {0};
    subject_render(o && o->ce_type ? o->ce_type : CE_DEFAULT_TYPE, m, &t);
    out->type = arena_strndup(a, t.data ? t.data : "", t.len);
    buf_free(&t);
    out->subject = m->subject;
    out->time = commit_time(m, a);
    if (!out->time) {
        char now[40];
        rfc3339_now(ctx->now_us, now, sizeof now);
        out->time = arena_strdup(a, now);
    }
    if (m->payload)
        out->datacontenttype = m->payload_is_json ? "application/json" : "text/plain";
    out->partitionkey = m->key;
}

size_t fmt_ce_header_attrs(const fmt_ce_attrs *a, const char *names[8], const char *values[8])
{
    const char *n[] = {"specversion", "id", "source", "type", "subject", "time", "partitionkey"};
    const char *v[] = {"1.0", a->id, a->source, a->type, a->subject, a->time, a->partitionkey};
    size_t k = 0;
    for (size_t i = 0; i < sizeof n / sizeof *n; i++) {
        if (!v[i])
            continue;
        names[k] = n[i];
        values[k++] = v[i];
    }
    return k;
}

relay_format_ctx fmt_ctx_for_sink(const char *pipeline, const relay_format_opts *opts)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    relay_format_ctx c = {.pipeline = pipeline,
                          .now_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000,
                          .opts = opts};
    return c;
}

static void put_attr(relay_buf *out, const char *name, const char *v)
{
    if (!v)
        return;
    buf_printf(out, ",\"%s\":", name);
    buf_put_json_str(out, v, strlen(v));
}

int fmt_cloudevents_encode(const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                           char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    size_t pn = msg_bytes(m->payload, m->payload_len);
    if (ctx->opts && ctx->opts->ce_binary) {
        /* Binary mode: the body is the data; the attributes travel as headers. */
        if (m->payload)
            buf_append(out, m->payload, pn);
        return 0;
    }
    /* The attributes' strings go to the batch's arena (a unit test's event
     * has none: a local one). */
    relay_arena local = {0}, *a = m->arena ? m->arena : &local;
    fmt_ce_attrs at;
    fmt_ce_attrs_of(ctx, m, a, &at);
    buf_puts(out, "{\"specversion\":\"1.0\"");
    put_attr(out, "id", at.id);
    put_attr(out, "source", at.source);
    put_attr(out, "type", at.type);
    put_attr(out, "subject", at.subject);
    put_attr(out, "time", at.time);
    put_attr(out, "datacontenttype", at.datacontenttype);
    put_attr(out, "partitionkey", at.partitionkey);
    if (m->payload) {
        buf_puts(out, ",\"data\":");
        if (m->payload_is_json)
            buf_append(out, m->payload, pn);
        else
            buf_put_json_str(out, m->payload, pn);
    }
    buf_putc(out, '}');
    arena_free(&local);
    return 0;
}

/* ---- header values (HTTP binding 3.1.3.2; Kafka, NATS alike) --------------- */

void fmt_ce_header_encode(const char *v, relay_buf *out)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if (*p > 0x20 && *p < 0x7F && *p != '"' && *p != '%') {
            buf_putc(out, (char)*p);
        } else {
            char e[3] = {'%', hex[*p >> 4], hex[*p & 15]};
            buf_append(out, e, 3);
        }
    }
    buf_putc(out, '\0');
    out->len--;
}

static int hexv(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

int fmt_ce_header_decode(const char *v, size_t n, relay_buf *out)
{
    size_t start = out->len;
    /* RFC 7230 3.2.6: a quoted-string value (older senders) is unquoted
     * first, resolving backslash escapes. */
    relay_buf uq = {0};
    if (n >= 2 && v[0] == '"' && v[n - 1] == '"') {
        for (size_t i = 1; i + 1 < n; i++) {
            if (v[i] == '\\' && i + 2 < n)
                i++;
            buf_putc(&uq, v[i]);
        }
        v = uq.data ? uq.data : "";
        n = uq.len;
    }
    for (size_t i = 0; i < n; i++) {
        int h, l;
        if (v[i] == '%' && i + 2 < n && (h = hexv(v[i + 1])) >= 0 &&
            (l = hexv(v[i + 2])) >= 0) {
            buf_putc(out, (char)(h << 4 | l));
            i += 2;
        } else {
            buf_putc(out, v[i]);
        }
    }
    buf_free(&uq);
    if (out->len == start)
        return 0;
    return utf8_valid((const unsigned char *)out->data + start, out->len - start) ? 0 : -1;
}

/* ---- structured events (JSON event format) -------------------------------- */

static int base64_decode(const char *s, size_t n, relay_buf *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int v;
        if (c >= 'A' && c <= 'Z') v = c - 'A';
        else if (c >= 'a' && c <= 'z') v = c - 'a' + 26;
        else if (c >= '0' && c <= '9') v = c - '0' + 52;
        else if (c == '+') v = 62;
        else if (c == '/') v = 63;
        else if (c == '=') { pad++; continue; }
        else return -1;
        if (pad)
            return -1; /* data after padding */
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf_putc(out, (char)((acc >> bits) & 0xFF));
        }
    }
    return pad > 2 || (n % 4 && pad) ? -1 : 0;
}

typedef struct ce_member {
    const char *name;
    int seen;
    size_t off, len;
} ce_member;

int fmt_ce_parse_structured(const char *body, size_t n, relay_buf *scratch, fmt_ce_event *ev,
                            char *err, size_t errlen)
{
    memset(ev, 0, sizeof *ev);
    size_t i = json_skip_ws(body, n, 0);
    if (i >= n || body[i] != '{' || json_valid(body, n) == 0) {
        snprintf(err, errlen, "a structured CloudEvent is one JSON object (JSON event format, "
                 "section 3)");
        return -1;
    }
    if (json_valid(body, n) < 0) { /* RFC 8259 8.2: strings are Unicode text */
        snprintf(err, errlen, "the CloudEvent holds a \\u0000 or an unpaired surrogate escape");
        return -1;
    }
    enum { M_SPEC, M_ID, M_SOURCE, M_TYPE, M_DATA, M_DATA64, M_N };
    ce_member mem[M_N] = {{"specversion", 0, 0, 0}, {"id", 0, 0, 0}, {"source", 0, 0, 0},
                          {"type", 0, 0, 0}, {"data", 0, 0, 0}, {"data_base64", 0, 0, 0}};
    const char *obj = body + i;
    size_t on = n - i, pos = 0, off, len, kn;
    const char *k;
    int r;
    while ((r = json_object_next(obj, on, &pos, &k, &kn, &off, &len)) == 1) {
        for (int m = 0; m < M_N; m++) {
            if (strlen(mem[m].name) != kn || memcmp(mem[m].name, k, kn) != 0)
                continue;
            if (mem[m].seen) {
                snprintf(err, errlen, "the CloudEvent has \"%s\" twice", mem[m].name);
                return -1;
            }
            mem[m].seen = 1;
            mem[m].off = off;
            mem[m].len = len;
        }
    }
    if (r < 0) {
        snprintf(err, errlen, "a structured CloudEvent is one JSON object");
        return -1;
    }
    /* Decode the REQUIRED string attributes into scratch; record offsets
     * first (scratch may move while it grows). */
    buf_clear(scratch);
    size_t at[4], alen[4];
    for (int m = M_SPEC; m <= M_TYPE; m++) {
        if (!mem[m].seen || obj[mem[m].off] != '"') {
            snprintf(err, errlen, "the CloudEvent lacks the REQUIRED string attribute \"%s\" "
                     "(CloudEvents 1.0, \"REQUIRED Attributes\")", mem[m].name);
            return -1;
        }
        at[m] = scratch->len;
        if (json_string_decode(obj + mem[m].off, mem[m].len, scratch) < 0 ||
            memchr(scratch->data + at[m], '\0', scratch->len - at[m])) {
            snprintf(err, errlen, "the CloudEvent attribute \"%s\" is not a valid string",
                     mem[m].name);
            return -1;
        }
        alen[m] = scratch->len - at[m];
        if (alen[m] == 0) {
            snprintf(err, errlen, "the CloudEvent attribute \"%s\" is empty (it MUST be a "
                     "non-empty string)", mem[m].name);
            return -1;
        }
        buf_putc(scratch, '\0');
    }
    if (alen[M_SPEC] != 3 || memcmp(scratch->data + at[M_SPEC], "1.0", 3) != 0) {
        snprintf(err, errlen, "unsupported CloudEvents specversion \"%.*s\" (this receiver "
                 "reads 1.0)", (int)(alen[M_SPEC] > 16 ? 16 : alen[M_SPEC]),
                 scratch->data + at[M_SPEC]);
        return -1;
    }
    if (mem[M_DATA].seen && mem[M_DATA64].seen) {
        snprintf(err, errlen, "the CloudEvent has both \"data\" and \"data_base64\" (JSON event "
                 "format 3.1.1: mutually exclusive)");
        return -1;
    }
    size_t d64 = 0, d64len = 0;
    if (mem[M_DATA64].seen) {
        if (obj[mem[M_DATA64].off] != '"') {
            snprintf(err, errlen, "the CloudEvent's \"data_base64\" is not a string");
            return -1;
        }
        relay_buf s = {0};
        int bad = json_string_decode(obj + mem[M_DATA64].off, mem[M_DATA64].len, &s) < 0;
        d64 = scratch->len;
        if (!bad)
            bad = base64_decode(s.data ? s.data : "", s.len, scratch) < 0;
        buf_free(&s);
        if (bad) {
            snprintf(err, errlen, "the CloudEvent's \"data_base64\" is not base64");
            return -1;
        }
        d64len = scratch->len - d64;
        buf_putc(scratch, '\0');
    }
    ev->id = scratch->data + at[M_ID];
    ev->id_len = alen[M_ID];
    ev->source = scratch->data + at[M_SOURCE];
    ev->source_len = alen[M_SOURCE];
    ev->type = scratch->data + at[M_TYPE];
    ev->type_len = alen[M_TYPE];
    if (mem[M_DATA].seen) {
        ev->data = obj + mem[M_DATA].off;
        ev->data_len = mem[M_DATA].len;
        ev->data_is_json = 1;
    } else if (mem[M_DATA64].seen) {
        ev->data = scratch->data + d64;
        ev->data_len = d64len;
    }
    return 0;
}
