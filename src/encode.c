/*
 * encode.c - message body formats: the native JSON envelope and seed 003's
 * MessagePack CDC shape.
 *
 * The MessagePack encoder walks the payload's JSON text with json_scan.h
 * and packs it with msgpack-c, preserving JSON types: integers stay
 * integers, reals are doubles, objects become maps and arrays arrays. No
 * tree: jansson refuses integers beyond 64 bits and rounds every number to
 * a double, so a row holding a json value with 2^63 in it could not be
 * encoded at all (issue 12). A number neither 64-bit integers nor doubles
 * hold exactly travels as the string of its JSON text. msgpack-c writes
 * through a callback straight into our relay_buf, so there is no
 * intermediate copy.
 *
 * The Debezium and CloudEvents encoders live in format_debezium.c and
 * format_cloudevents.c (formats.h); this file dispatches and reads the
 * format keys of a sink config.
 */
#include "encode.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "formats.h"
#include "json_scan.h"

static const char *const format_names[] = {"native", "msgpack", "debezium", "cloudevents"};

int relay_format_from_cfg(const json_t *cfg, const char *path, relay_format *out, char *err,
                          size_t errlen)
{
    const char *f;
    if (cfg_str(cfg, path, "format", "native", &f, err, errlen) < 0)
        return -1;
    if (strcmp(f, "json") == 0) {
        *out = RELAY_FORMAT_NATIVE;
        return 0;
    }
    for (size_t i = 0; i < sizeof format_names / sizeof *format_names; i++) {
        if (strcmp(f, format_names[i]) == 0) {
            *out = (relay_format)i;
            return 0;
        }
    }
    snprintf(err, errlen, "%s.format: expected \"native\", \"msgpack\", \"debezium\" or "
             "\"cloudevents\", got \"%s\"", path, f);
    return -1;
}

void relay_format_opts_free(relay_format_opts *opts)
{
    free(opts->ce_source);
    free(opts->ce_type);
    for (size_t i = 0; i < opts->noverrides; i++) {
        free(opts->overrides[i].match);
        free(opts->overrides[i].tmpl);
    }
    free(opts->overrides);
    memset(opts, 0, sizeof *opts);
}

static int check_template(const char *path, const char *key, const char *tmpl, char *err,
                          size_t errlen)
{
    char why[256];
    if (subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s.%s: %s", path, key, why);
        return -1;
    }
    return 0;
}

static int parse_overrides(const json_t *cfg, const char *path, relay_format_opts *opts,
                           char *err, size_t errlen)
{
    json_t *map = json_object_get(cfg, "subject_overrides");
    if (!map)
        return 0;
    if (!json_is_object(map)) {
        snprintf(err, errlen, "%s.subject_overrides: expected an object mapping an op or "
                 "event_type to a template", path);
        return -1;
    }
    const char *k;
    json_t *v;
    json_object_foreach(map, k, v) {
        char key[300];
        snprintf(key, sizeof key, "subject_overrides.%s", k);
        if (!json_is_string(v)) {
            snprintf(err, errlen, "%s.%s: expected a template string", path, key);
            return -1;
        }
        if (!*k) {
            snprintf(err, errlen, "%s.subject_overrides: an empty op or event_type", path);
            return -1;
        }
        if (check_template(path, key, json_string_value(v), err, errlen) < 0)
            return -1;
        opts->overrides = xrealloc(opts->overrides, (opts->noverrides + 1) * sizeof *opts->overrides);
        opts->overrides[opts->noverrides].match = xstrdup(k);
        opts->overrides[opts->noverrides].tmpl = xstrdup(json_string_value(v));
        opts->noverrides++;
    }
    return 0;
}

int relay_format_opts_from_cfg(const json_t *cfg, const char *path, relay_format f, int binary_ok,
                               relay_format_opts *opts, char *err, size_t errlen)
{
    memset(opts, 0, sizeof *opts);
    const char *mode, *src, *type;
    if (cfg_str(cfg, path, "cloudevents_mode", NULL, &mode, err, errlen) < 0 ||
        cfg_str(cfg, path, "cloudevents_source", NULL, &src, err, errlen) < 0 ||
        cfg_str(cfg, path, "cloudevents_type", NULL, &type, err, errlen) < 0 ||
        cfg_bool(cfg, path, "tombstones", 1, &opts->tombstones, err, errlen) < 0)
        return -1;
    if ((mode || src || type) && f != RELAY_FORMAT_CLOUDEVENTS) {
        snprintf(err, errlen, "%s.%s: only with \"format\": \"cloudevents\"", path,
                 mode ? "cloudevents_mode" : src ? "cloudevents_source" : "cloudevents_type");
        return -1;
    }
    if (json_object_get(cfg, "tombstones") && f != RELAY_FORMAT_DEBEZIUM) {
        snprintf(err, errlen, "%s.tombstones: only with \"format\": \"debezium\"", path);
        return -1;
    }
    if (mode && strcmp(mode, "binary") == 0) {
        if (!binary_ok) {
            snprintf(err, errlen, "%s.cloudevents_mode: \"binary\" needs a protocol binding with "
                     "headers (webhook, kafka, nats); this sink writes structured events only", path);
            return -1;
        }
        opts->ce_binary = 1;
    } else if (mode && strcmp(mode, "structured") != 0) {
        snprintf(err, errlen, "%s.cloudevents_mode: expected \"structured\" or \"binary\", got \"%s\"",
                 path, mode);
        return -1;
    }
    if (src && !*src) {
        snprintf(err, errlen, "%s.cloudevents_source: must not be empty (CloudEvents 1.0, "
                 "section 3.1.1: a non-empty URI-reference)", path);
        return -1;
    }
    if (type && check_template(path, "cloudevents_type", type, err, errlen) < 0)
        return -1;
    opts->ce_source = src ? xstrdup(src) : NULL;
    opts->ce_type = type ? xstrdup(type) : NULL;
    if (parse_overrides(cfg, path, opts, err, errlen) < 0) {
        relay_format_opts_free(opts);
        return -1;
    }
    return 0;
}

/* The payload's top-level "event_type" string, compared with `want`. */
static int payload_event_type_is(const relay_msg *m, const char *want)
{
    if (!m->payload || !m->payload_is_json)
        return 0;
    size_t n = msg_bytes(m->payload, m->payload_len), pos = 0, off, len, kn;
    const char *k;
    if (n == 0 || m->payload[0] != '{')
        return 0;
    while (json_object_next(m->payload, n, &pos, &k, &kn, &off, &len) == 1) {
        if (kn != 10 || memcmp(k, "event_type", 10) != 0)
            continue;
        size_t wn = strlen(want);
        return len == wn + 2 && m->payload[off] == '"' && memcmp(m->payload + off + 1, want, wn) == 0;
    }
    return 0;
}

const char *relay_subject_template_for(const relay_format_opts *opts, const relay_msg *m,
                                       const char *dflt)
{
    if (!opts || !opts->noverrides)
        return dflt;
    const char *by_op = NULL;
    for (size_t i = 0; i < opts->noverrides; i++) {
        const relay_subject_override *o = &opts->overrides[i];
        if (payload_event_type_is(m, o->match))
            return o->tmpl;
        if (!by_op && strcmp(o->match, relay_op_name(m->op)) == 0)
            by_op = o->tmpl;
    }
    return by_op ? by_op : dflt;
}

const char *relay_format_name(relay_format f)
{
    return (size_t)f < sizeof format_names / sizeof *format_names ? format_names[f] : "native";
}

const char *relay_format_content_type(relay_format f, const relay_format_opts *opts)
{
    if (f == RELAY_FORMAT_MSGPACK)
        return "application/msgpack";
    if (f == RELAY_FORMAT_CLOUDEVENTS && !(opts && opts->ce_binary))
        return "application/cloudevents+json";
    return "application/json";
}

int relay_format_key(relay_format f, const relay_msg *m, relay_buf *out)
{
    if (f == RELAY_FORMAT_DEBEZIUM)
        return fmt_debezium_key(m, out);
    return msg_row_key_native(m, out);
}

int relay_encode(relay_format f, const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                 char *err, size_t errlen)
{
    static const relay_format_ctx none = {0};
    if (!ctx)
        ctx = &none;
    size_t start = out->len;
    int rc = 0;
    switch (f) {
    case RELAY_FORMAT_MSGPACK: rc = msg_encode_msgpack(m, out, err, errlen); break;
    case RELAY_FORMAT_DEBEZIUM: rc = fmt_debezium_encode(ctx, m, out, err, errlen); break;
    case RELAY_FORMAT_CLOUDEVENTS: rc = fmt_cloudevents_encode(ctx, m, out, err, errlen); break;
    case RELAY_FORMAT_NATIVE: msg_encode_native(m, out); break;
    }
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

/* ---- MessagePack -------------------------------------------------------- */

/* Deepest JSON nesting packed (msgpack-c has no limit of its own; the
 * packer recurses once per level). Deeper values are refused. */
#define PACK_MAX_DEPTH 1000

typedef struct packer {
    msgpack_packer pk;
    relay_buf str;  /* scratch: one decoded string */
    char *err;
    size_t errlen;
} packer;

static int buf_write_cb(void *data, const char *p, size_t n)
{
    buf_append((relay_buf *)data, p, n);
    return 0;
}

static void pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    pack_strn(pk, s, strlen(s));
}

/* Split the JSON number s[0..n) (NUL-terminated at n) into its
 * significant digits (no leading or trailing zeros, at most `cap`) and the
 * decimal exponent of the first one. Returns the number of significant
 * digits (0 for zero), or -1 when there are more than `cap` or the
 * exponent is absurd. */
static int number_digits(const char *s, size_t n, char *digits, int cap, long *exp10)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    int nd = 0, seen = 0;
    long pos = 0;      /* digits before the point, counting from the first significant one */
    long point = 0, first = 0;
    int in_frac = 0;
    for (; i < n && s[i] != 'e' && s[i] != 'E'; i++) {
        if (s[i] == '.') {
            in_frac = 1;
            continue;
        }
        if (!seen && s[i] == '0') {
            if (in_frac)
                point--;
            continue;
        }
        if (!seen) {
            seen = 1;
            first = in_frac ? point - 1 : 0;
        }
        if (!in_frac)
            pos++;
        if (nd == cap) {
            if (s[i] != '0')
                return -1;
            continue; /* a zero past the cap: trailing, or the next digit fails */
        }
        digits[nd++] = s[i];
    }
    long e = 0;
    if (i < n) {
        errno = 0;
        e = strtol(s + i + 1, NULL, 10);
        if (errno || e > 100000 || e < -100000)
            return -1; /* far beyond a double either way */
    }
    while (nd > 0 && digits[nd - 1] == '0')
        nd--;
    *exp10 = (pos > 0 ? pos - 1 : first) + e;
    return nd;
}

/* Does the double `d` hold the decimal number s[0..n) exactly to its last
 * written digit (1.10 and 0.30000000000000004 do; 0.1000000000000000000001
 * and 1e400 do not)? */
static int double_holds(double d, const char *s, size_t n)
{
    char want[24], got[40];
    long we, ge;
    int nd = number_digits(s, n, want, 17, &we);
    if (nd < 0 || !isfinite(d))
        return 0;
    if (nd == 0)
        return d == 0;
    if (d == 0)
        return 0;
    char text[48];
    snprintf(text, sizeof text, "%.*e", nd - 1, d);
    int gd = number_digits(text, strlen(text), got, 24, &ge);
    return gd == nd && ge == we && memcmp(want, got, (size_t)nd) == 0;
}

/* A JSON number: an integer that fits 64 bits (signed, or unsigned when
 * positive) is a MessagePack integer; a number with a fraction or an
 * exponent that a double holds exactly is a float 64; any other (2^64,
 * 1e400, 30 significant digits) is a string of its JSON text, never
 * rounded or dropped. */
static void pack_number(msgpack_packer *pk, const char *s, size_t n)
{
    char tmp[512];
    int integral = !memchr(s, '.', n) && !memchr(s, 'e', n) && !memchr(s, 'E', n);
    if (n < sizeof tmp) {
        memcpy(tmp, s, n);
        tmp[n] = '\0';
        char *end;
        errno = 0;
        if (integral && s[0] == '-') {
            long long v = strtoll(tmp, &end, 10);
            if (!errno && *end == '\0') {
                msgpack_pack_int64(pk, v);
                return;
            }
        } else if (integral) {
            unsigned long long v = strtoull(tmp, &end, 10);
            if (!errno && *end == '\0') {
                msgpack_pack_uint64(pk, v);
                return;
            }
        } else {
            double d = strtod(tmp, &end);
            if (*end == '\0' && double_holds(d, tmp, n)) {
                msgpack_pack_double(pk, d);
                return;
            }
        }
    }
    pack_strn(pk, s, n);
}

/* Decode the JSON string literal s[0..n) (quotes included) and pack it. */
static int pack_json_string(packer *p, const char *s, size_t n)
{
    buf_clear(&p->str);
    if (json_string_decode(s, n, &p->str) < 0 ||
        !utf8_valid((const unsigned char *)p->str.data, p->str.len)) {
        snprintf(p->err, p->errlen, "a JSON string holds an unpaired surrogate escape "
                 "(\\uD800-\\uDFFF), which a MessagePack string cannot carry");
        return -1;
    }
    pack_strn(&p->pk, p->str.data ? p->str.data : "", p->str.len);
    return 0;
}

/* Pack the JSON value s[0..n) (json_valid() accepted the text it is part
 * of) without building a tree: jansson refuses integers beyond 64 bits and
 * rounds every number to a double. */
static int pack_json_text(packer *p, const char *s, size_t n, int depth)
{
    size_t i = json_skip_ws(s, n, 0);
    s += i;
    n -= i;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\n' || s[n - 1] == '\r'))
        n--;
    if (n == 0) {
        snprintf(p->err, p->errlen, "the payload holds an empty JSON value");
        return -1;
    }
    if ((s[0] == '{' || s[0] == '[') && depth >= PACK_MAX_DEPTH) {
        snprintf(p->err, p->errlen, "the payload nests JSON deeper than %d levels",
                 PACK_MAX_DEPTH);
        return -1;
    }
    size_t pos = 0, off, len, keylen;
    const char *key;
    int rc;
    switch (s[0]) {
    case '{': {
        size_t count = 0;
        while ((rc = json_object_next(s, n, &pos, &key, &keylen, &off, &len)) == 1)
            count++;
        if (rc < 0)
            goto bad;
        msgpack_pack_map(&p->pk, count);
        pos = 0;
        while (json_object_next(s, n, &pos, &key, &keylen, &off, &len) == 1) {
            if (pack_json_string(p, key - 1, keylen + 2) < 0 ||
                pack_json_text(p, s + off, len, depth + 1) < 0)
                return -1;
        }
        return 0;
    }
    case '[': {
        size_t count = 0;
        while ((rc = json_array_next(s, n, &pos, &off, &len)) == 1)
            count++;
        if (rc < 0)
            goto bad;
        msgpack_pack_array(&p->pk, count);
        pos = 0;
        while (json_array_next(s, n, &pos, &off, &len) == 1)
            if (pack_json_text(p, s + off, len, depth + 1) < 0)
                return -1;
        return 0;
    }
    case '"':
        return pack_json_string(p, s, n);
    case 't':
        msgpack_pack_true(&p->pk);
        return 0;
    case 'f':
        msgpack_pack_false(&p->pk);
        return 0;
    case 'n':
        msgpack_pack_nil(&p->pk);
        return 0;
    default:
        pack_number(&p->pk, s, n);
        return 0;
    }
bad:
    snprintf(p->err, p->errlen, "the payload is not well-formed JSON");
    return -1;
}

/* A row object as seed 003's columns: [{"name": k, "value": v}, ...] in
 * the object's order; a value that is not an object is one column named
 * "value". */
static int pack_columns(packer *p, const char *s, size_t n)
{
    size_t i = json_skip_ws(s, n, 0);
    if (i >= n || s[i] != '{') {
        msgpack_pack_array(&p->pk, 1);
        msgpack_pack_map(&p->pk, 2);
        pack_str(&p->pk, "name");
        pack_str(&p->pk, "value");
        pack_str(&p->pk, "value");
        return pack_json_text(p, s, n, 1);
    }
    s += i;
    n -= i;
    size_t pos = 0, off, len, keylen, count = 0;
    const char *key;
    int rc;
    while ((rc = json_object_next(s, n, &pos, &key, &keylen, &off, &len)) == 1)
        count++;
    if (rc < 0) {
        snprintf(p->err, p->errlen, "the payload is not well-formed JSON");
        return -1;
    }
    msgpack_pack_array(&p->pk, count);
    pos = 0;
    while (json_object_next(s, n, &pos, &key, &keylen, &off, &len) == 1) {
        msgpack_pack_map(&p->pk, 2);
        pack_str(&p->pk, "name");
        if (pack_json_string(p, key - 1, keylen + 2) < 0)
            return -1;
        pack_str(&p->pk, "value");
        if (pack_json_text(p, s + off, len, 1) < 0)
            return -1;
    }
    return 0;
}

/* The "unchanged_toast" array of a CDC source object, packed (an empty
 * array when absent). */
static int pack_unchanged_toast(packer *p, const char *src)
{
    size_t n = strlen(src), pos = 0, off, len, keylen;
    const char *key;
    while (json_object_next(src, n, &pos, &key, &keylen, &off, &len) == 1)
        if (keylen == 15 && memcmp(key, "unchanged_toast", 15) == 0)
            return pack_json_text(p, src + off, len, 1);
    msgpack_pack_array(&p->pk, 0);
    return 0;
}

static int encode_msgpack(packer *p, const relay_msg *m)
{
    msgpack_packer *pk = &p->pk;
    if (m->payload && m->payload_is_json) {
        int v = json_valid(m->payload, m->payload_len);
        if (v == 0) {
            snprintf(p->err, p->errlen, "the payload cannot be read as JSON");
            return -1;
        }
    } else if (m->payload && !utf8_valid((const unsigned char *)m->payload, m->payload_len)) {
        /* A body that is not JSON travels as one string column; one that is
         * not even UTF-8 has no faithful MessagePack string: refuse it (the
         * worker dead-letters the event) rather than drop the payload. */
        snprintf(p->err, p->errlen, "the payload is neither JSON nor UTF-8 text");
        return -1;
    }
    int cdc = m->source_json != NULL;
    msgpack_pack_map(pk, cdc ? 8 : 6);
    pack_str(pk, "table");
    pack_str(pk, m->table ? m->table : m->stream_table ? m->stream_table : "");
    pack_str(pk, "operation");
    char op[16];
    snprintf(op, sizeof op, "%s", relay_op_name(m->op));
    for (char *c = op; *c; c++)
        *c = (char)toupper((unsigned char)*c);
    pack_str(pk, op);
    pack_str(pk, "relation_id");
    msgpack_pack_uint32(pk, m->relation_id);
    pack_str(pk, "lsn");
    if (m->lsn)
        pack_str(pk, m->lsn);
    else
        msgpack_pack_nil(pk);
    pack_str(pk, "columns");
    if (m->payload && m->payload_is_json) {
        if (pack_columns(p, m->payload, m->payload_len) < 0)
            return -1;
    } else if (m->payload) {
        msgpack_pack_array(pk, 1);
        msgpack_pack_map(pk, 2);
        pack_str(pk, "name");
        pack_str(pk, "value");
        pack_str(pk, "value");
        pack_strn(pk, m->payload, m->payload_len);
    } else {
        msgpack_pack_array(pk, 0);
    }
    if (cdc) {
        pack_str(pk, "old");
        if (m->old_json) {
            if (pack_columns(p, m->old_json, strlen(m->old_json)) < 0)
                return -1;
        } else {
            msgpack_pack_nil(pk);
        }
        pack_str(pk, "unchanged_toast");
        if (pack_unchanged_toast(p, m->source_json) < 0)
            return -1;
    }
    pack_str(pk, "dedup_key");
    pack_strn(pk, m->dedup_key, msg_bytes(m->dedup_key, m->dedup_key_len));
    return 0;
}

int msg_encode_msgpack(const relay_msg *m, relay_buf *out, char *err, size_t errlen)
{
    packer p = {.err = err, .errlen = errlen};
    msgpack_packer_init(&p.pk, out, buf_write_cb);
    int rc = encode_msgpack(&p, m);
    buf_free(&p.str);
    return rc;
}
