/*
 * pgoutput.c - decoder of the logical replication stream (see pgoutput.h).
 *
 * Every read goes through a cursor (`rd`) that knows the message type and
 * where the message started, and checks the remaining length before it
 * touches a byte, so truncated or corrupt input ends in an error such as
 *   "pgoutput Insert: truncated at offset 9 (need 4 bytes, 2 left)"
 * and never in an out-of-bounds read. Integers are big-endian (network
 * order) as the protocol defines them.
 */
#include "pgoutput.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- a bounds-checked reader ------------------------------------------------ */

typedef struct rd {
    const uint8_t *p;
    size_t len;
    size_t off;
    const char *what;   /* message name for errors */
    char *err;
    size_t errlen;
    int failed;
} rd;

static int rd_need(rd *r, size_t n)
{
    if (r->failed)
        return -1;
    if (r->len - r->off < n) {
        snprintf(r->err, r->errlen, "%s: truncated at offset %zu (need %zu bytes, %zu left)",
                 r->what, r->off, n, r->len - r->off);
        r->failed = 1;
        return -1;
    }
    return 0;
}

static uint8_t rd_u8(rd *r)
{
    if (rd_need(r, 1) < 0)
        return 0;
    return r->p[r->off++];
}

static uint16_t rd_u16(rd *r)
{
    if (rd_need(r, 2) < 0)
        return 0;
    uint16_t v = (uint16_t)((r->p[r->off] << 8) | r->p[r->off + 1]);
    r->off += 2;
    return v;
}

static uint32_t rd_u32(rd *r)
{
    if (rd_need(r, 4) < 0)
        return 0;
    const uint8_t *p = r->p + r->off;
    r->off += 4;
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t rd_u64(rd *r)
{
    uint64_t hi = rd_u32(r);
    uint64_t lo = rd_u32(r);
    return (hi << 32) | lo;
}

/* A NUL-terminated string inside the buffer. */
static const char *rd_str(rd *r)
{
    if (r->failed)
        return "";
    const uint8_t *start = r->p + r->off;
    const uint8_t *nul = memchr(start, 0, r->len - r->off);
    if (!nul) {
        snprintf(r->err, r->errlen, "%s: unterminated string at offset %zu", r->what, r->off);
        r->failed = 1;
        return "";
    }
    r->off += (size_t)(nul - start) + 1;
    return (const char *)start;
}

static const uint8_t *rd_bytes(rd *r, size_t n)
{
    if (rd_need(r, n) < 0)
        return NULL;
    const uint8_t *p = r->p + r->off;
    r->off += n;
    return p;
}

static int rd_fail(rd *r, const char *fmt_detail, size_t at)
{
    if (!r->failed) {
        snprintf(r->err, r->errlen, "%s: %s at offset %zu", r->what, fmt_detail, at);
        r->failed = 1;
    }
    return -1;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

/* ---- CopyData framing ----------------------------------------------------------- */

int pgo_parse_copydata(const uint8_t *buf, size_t len, pgo_copydata *out, char *err,
                       size_t errlen)
{
    rd r = {.p = buf, .len = len, .what = "replication CopyData", .err = err, .errlen = errlen};
    memset(out, 0, sizeof *out);
    out->kind = (char)rd_u8(&r);
    switch (out->kind) {
    case 'w':
        r.what = "XLogData";
        out->wal_start = rd_u64(&r);
        out->wal_end = rd_u64(&r);
        out->send_time = (int64_t)rd_u64(&r);
        if (r.failed)
            return -1;
        out->data = buf + r.off;
        out->len = len - r.off;
        if (out->len == 0)
            return rd_fail(&r, "empty message", r.off);
        return 0;
    case 'k':
        r.what = "primary keepalive";
        out->wal_end = rd_u64(&r);
        out->send_time = (int64_t)rd_u64(&r);
        out->reply_requested = rd_u8(&r) != 0;
        return r.failed ? -1 : 0;
    default:
        if (r.failed)
            return -1;
        snprintf(err, errlen, "replication CopyData: unknown message type 0x%02x at offset 0",
                 (unsigned)(uint8_t)out->kind);
        return -1;
    }
}

void pgo_standby_status(uint8_t out[34], uint64_t lsn, int64_t now_pg_us, int reply_requested)
{
    out[0] = 'r';
    put_be64(out + 1, lsn);
    put_be64(out + 9, lsn);
    put_be64(out + 17, lsn);
    put_be64(out + 25, (uint64_t)now_pg_us);
    out[33] = reply_requested ? 1 : 0;
}

/* ---- pgoutput messages --------------------------------------------------------- */

static void *grow(void *p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap : 16;
    while (c < need)
        c *= 2;
    *cap = c;
    return xrealloc(p, c * elem);
}

/* TupleData, values appended to the decoder's value scratch from `base`. */
static int rd_tuple(rd *r, pgo_decoder *d, size_t base, pgo_tuple *t)
{
    uint16_t n = rd_u16(r);
    if (r->failed)
        return -1;
    d->vals = grow(d->vals, &d->vals_cap, base + n + 1, sizeof *d->vals);
    t->ncols = n;
    t->cols = NULL; /* fixed up by the caller once scratch stops moving */
    for (uint16_t i = 0; i < n; i++) {
        pgo_value *v = &d->vals[base + i];
        size_t at = r->off;
        v->kind = (char)rd_u8(r);
        v->data = NULL;
        v->len = 0;
        if (r->failed)
            return -1;
        switch (v->kind) {
        case 'n':
        case 'u':
            break;
        case 't':
        case 'b': {
            uint32_t l = rd_u32(r);
            const uint8_t *p = rd_bytes(r, l);
            if (!p)
                return -1;
            v->data = (const char *)p;
            v->len = l;
            break;
        }
        default: {
            char what[64];
            snprintf(what, sizeof what, "unknown column kind 0x%02x", (unsigned)(uint8_t)v->kind);
            return rd_fail(r, what, at);
        }
        }
    }
    return 0;
}

static const char *msg_name(char t)
{
    switch (t) {
    case 'B': return "pgoutput Begin";
    case 'C': return "pgoutput Commit";
    case 'O': return "pgoutput Origin";
    case 'R': return "pgoutput Relation";
    case 'Y': return "pgoutput Type";
    case 'I': return "pgoutput Insert";
    case 'U': return "pgoutput Update";
    case 'D': return "pgoutput Delete";
    case 'T': return "pgoutput Truncate";
    case 'M': return "pgoutput Message";
    }
    return "pgoutput";
}

static int decode_change(rd *r, pgo_decoder *d, pgo_msg *m)
{
    m->u.change.relid = rd_u32(r);
    m->u.change.old_kind = 0;
    memset(&m->u.change.old, 0, sizeof m->u.change.old);
    memset(&m->u.change.new_, 0, sizeof m->u.change.new_);
    size_t at = r->off;
    uint8_t tag = rd_u8(r);
    if (r->failed)
        return -1;
    size_t old_n = 0;
    if (m->type == 'I') {
        if (tag != 'N')
            return rd_fail(r, "expected 'N' (new tuple)", at);
    } else if (tag == 'K' || tag == 'O') {
        m->u.change.old_kind = (char)tag;
        if (rd_tuple(r, d, 0, &m->u.change.old) < 0)
            return -1;
        old_n = m->u.change.old.ncols;
        if (m->type == 'U') {
            at = r->off;
            tag = rd_u8(r);
            if (r->failed)
                return -1;
            if (tag != 'N')
                return rd_fail(r, "expected 'N' (new tuple)", at);
        }
    } else if (m->type == 'D') {
        return rd_fail(r, "expected 'K' or 'O' (old tuple)", at);
    } else if (tag != 'N') {
        return rd_fail(r, "expected 'K', 'O' or 'N'", at);
    }
    if (m->type != 'D' && rd_tuple(r, d, old_n, &m->u.change.new_) < 0)
        return -1;
    /* Scratch may have moved while growing: point the tuples now. */
    if (m->u.change.old_kind)
        m->u.change.old.cols = d->vals;
    if (m->type != 'D')
        m->u.change.new_.cols = d->vals + old_n;
    return 0;
}

int pgo_decode(pgo_decoder *d, const uint8_t *buf, size_t len, pgo_msg *m, char *err,
               size_t errlen)
{
    rd r = {.p = buf, .len = len, .what = "pgoutput", .err = err, .errlen = errlen};
    memset(m, 0, sizeof *m);
    m->type = (char)rd_u8(&r);
    if (r.failed)
        return -1;
    r.what = msg_name(m->type);
    switch (m->type) {
    case 'B':
        m->u.begin.final_lsn = rd_u64(&r);
        m->u.begin.commit_time = (int64_t)rd_u64(&r);
        m->u.begin.xid = rd_u32(&r);
        break;
    case 'C':
        m->u.commit.flags = rd_u8(&r);
        m->u.commit.commit_lsn = rd_u64(&r);
        m->u.commit.end_lsn = rd_u64(&r);
        m->u.commit.commit_time = (int64_t)rd_u64(&r);
        break;
    case 'O':
        m->u.origin.lsn = rd_u64(&r);
        m->u.origin.name = rd_str(&r);
        break;
    case 'R': {
        m->u.relation.oid = rd_u32(&r);
        m->u.relation.nspname = rd_str(&r);
        m->u.relation.relname = rd_str(&r);
        m->u.relation.replident = (char)rd_u8(&r);
        uint16_t n = rd_u16(&r);
        if (r.failed)
            return -1;
        d->cols = grow(d->cols, &d->cols_cap, (size_t)n + 1, sizeof *d->cols);
        for (uint16_t i = 0; i < n && !r.failed; i++) {
            d->cols[i].flags = rd_u8(&r);
            d->cols[i].name = rd_str(&r);
            d->cols[i].type_oid = rd_u32(&r);
            d->cols[i].typmod = (int32_t)rd_u32(&r);
        }
        m->u.relation.ncols = n;
        m->u.relation.cols = d->cols;
        break;
    }
    case 'Y':
        m->u.type.oid = rd_u32(&r);
        m->u.type.nspname = rd_str(&r);
        m->u.type.name = rd_str(&r);
        break;
    case 'I':
    case 'U':
    case 'D':
        if (decode_change(&r, d, m) < 0)
            return -1;
        break;
    case 'T': {
        uint32_t n = rd_u32(&r);
        m->u.truncate.options = rd_u8(&r);
        if (r.failed)
            return -1;
        /* Check the length before allocating for a corrupt count. */
        if ((len - r.off) / 4 < n) {
            snprintf(err, errlen, "%s: truncated at offset %zu (%" PRIu32 " relation ids announced, "
                     "room for %zu)", r.what, r.off, n, (len - r.off) / 4);
            return -1;
        }
        d->relids = grow(d->relids, &d->relids_cap, (size_t)n + 1, sizeof *d->relids);
        for (uint32_t i = 0; i < n; i++)
            d->relids[i] = rd_u32(&r);
        m->u.truncate.nrels = n;
        m->u.truncate.relids = d->relids;
        break;
    }
    case 'M': {
        m->u.message.flags = rd_u8(&r);
        m->u.message.lsn = rd_u64(&r);
        m->u.message.prefix = rd_str(&r);
        uint32_t l = rd_u32(&r);
        const uint8_t *p = rd_bytes(&r, l);
        m->u.message.content = (const char *)p;
        m->u.message.len = l;
        break;
    }
    default:
        snprintf(err, errlen, "pgoutput: unknown message type 0x%02x at offset 0",
                 (unsigned)(uint8_t)m->type);
        return -1;
    }
    if (r.failed)
        return -1;
    if (r.off != len) {
        snprintf(err, errlen, "%s: %zu unexpected trailing bytes at offset %zu", r.what,
                 len - r.off, r.off);
        return -1;
    }
    return 0;
}

void pgo_decoder_free(pgo_decoder *d)
{
    free(d->vals);
    free(d->cols);
    free(d->relids);
    memset(d, 0, sizeof *d);
}

/* ---- relation cache ------------------------------------------------------------- */

static void rel_free(pgo_rel *rel)
{
    if (!rel)
        return;
    for (uint16_t i = 0; i < rel->ncols; i++) {
        free(rel->cols[i].name);
        free(rel->cols[i].json_key);
    }
    free(rel->cols);
    free(rel->schema);
    free(rel->name);
    free(rel);
}

static int rel_same(const pgo_rel *rel, const pgo_msg *m, const char *schema)
{
    if (strcmp(rel->schema, schema) != 0 || strcmp(rel->name, m->u.relation.relname) != 0 ||
        rel->replident != m->u.relation.replident || rel->ncols != m->u.relation.ncols)
        return 0;
    for (uint16_t i = 0; i < rel->ncols; i++) {
        const pgo_column *c = &m->u.relation.cols[i];
        if (strcmp(rel->cols[i].name, c->name) != 0 || rel->cols[i].type_oid != c->type_oid ||
            rel->cols[i].typmod != c->typmod || rel->cols[i].key != (c->flags & 1))
            return 0;
    }
    return 1;
}

pgo_rel *pgo_relcache_get(pgo_relcache *c, uint32_t oid)
{
    if (c->last && c->last->oid == oid)
        return c->last;
    for (size_t i = 0; i < c->n; i++)
        if (c->rels[i]->oid == oid)
            return c->last = c->rels[i];
    return NULL;
}

pgo_rel *pgo_relcache_put(pgo_relcache *c, const pgo_msg *m, int *changed)
{
    const char *schema = *m->u.relation.nspname ? m->u.relation.nspname : "pg_catalog";
    pgo_rel *old = pgo_relcache_get(c, m->u.relation.oid);
    if (old && rel_same(old, m, schema)) {
        *changed = 0;
        return old;
    }
    *changed = 1;
    pgo_rel *rel = xcalloc(1, sizeof *rel);
    rel->oid = m->u.relation.oid;
    rel->schema = xstrdup(schema);
    rel->name = xstrdup(m->u.relation.relname);
    rel->replident = m->u.relation.replident;
    rel->ncols = m->u.relation.ncols;
    rel->cols = xcalloc((size_t)rel->ncols + 1, sizeof *rel->cols);
    relay_buf k = {0};
    for (uint16_t i = 0; i < rel->ncols; i++) {
        const pgo_column *src = &m->u.relation.cols[i];
        pgo_rel_col *col = &rel->cols[i];
        col->name = xstrdup(src->name);
        col->type_oid = src->type_oid;
        col->typmod = src->typmod;
        col->key = src->flags & 1;
        buf_clear(&k);
        buf_put_json_str(&k, src->name, strlen(src->name));
        buf_putc(&k, ':');
        col->json_key = xstrndup(k.data, k.len);
        col->json_key_len = k.len;
    }
    buf_free(&k);
    if (old) {
        rel->generation = old->generation + 1;
        rel->user_flag = old->user_flag;
        rel->user = old->user;
        for (size_t i = 0; i < c->n; i++)
            if (c->rels[i] == old)
                c->rels[i] = rel;
        rel_free(old);
    } else {
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 16;
            c->rels = xrealloc(c->rels, c->cap * sizeof *c->rels);
        }
        c->rels[c->n++] = rel;
    }
    c->last = rel;
    return rel;
}

void pgo_relcache_free(pgo_relcache *c)
{
    for (size_t i = 0; i < c->n; i++)
        rel_free(c->rels[i]);
    free(c->rels);
    memset(c, 0, sizeof *c);
}

/* ---- values to JSON ---------------------------------------------------------- */

enum {
    OID_BOOL = 16, OID_INT8 = 20, OID_INT2 = 21, OID_INT4 = 23, OID_OID = 26,
    OID_JSON = 114, OID_FLOAT4 = 700, OID_FLOAT8 = 701, OID_JSONB = 3802,
};

/* A JSON number, strictly: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int is_json_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return 0;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return 0;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return 0;
    }
    return i == n;
}

void pgo_value_json(uint32_t type_oid, const char *data, size_t len, relay_buf *out)
{
    switch (type_oid) {
    case OID_INT2:
    case OID_INT4:
    case OID_INT8:
    case OID_OID:
        if (is_json_number(data, len)) {
            buf_append(out, data, len);
            return;
        }
        break;
    case OID_FLOAT4:
    case OID_FLOAT8:
        /* NaN, Infinity and -Infinity are not JSON numbers: strings. A
         * float PostgreSQL prints without a point or exponent ("5", "-0")
         * gets ".0", so that it stays a float in every JSON reader (and in
         * MessagePack) and -0 keeps its sign (issue 12 #5). */
        if (is_json_number(data, len)) {
            buf_append(out, data, len);
            if (!memchr(data, '.', len) && !memchr(data, 'e', len) && !memchr(data, 'E', len))
                buf_puts(out, ".0");
            return;
        }
        break;
    case OID_BOOL:
        if (len == 1 && (data[0] == 't' || data[0] == 'f')) {
            buf_puts(out, data[0] == 't' ? "true" : "false");
            return;
        }
        break;
    case OID_JSON:
    case OID_JSONB:
        /* PostgreSQL validated it on input; its text output is JSON. */
        if (len > 0) {
            buf_append(out, data, len);
            return;
        }
        break;
    default:
        break;
    }
    buf_put_json_str(out, data, len);
}

static void put_hex_string(relay_buf *out, const char *data, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    buf_reserve(out, 2 * len + 4);
    buf_puts(out, "\"\\\\x");
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)data[i];
        char h[2] = {hex[c >> 4], hex[c & 15]};
        buf_append(out, h, 2);
    }
    buf_putc(out, '"');
}

int pgo_tuple_json(const pgo_rel *rel, const pgo_tuple *t, int key_only, relay_buf *out,
                   relay_buf *toast, char *err, size_t errlen)
{
    if (t->ncols != rel->ncols) {
        snprintf(err, errlen, "tuple of %s.%s has %u columns, its Relation message announced %u",
                 rel->schema, rel->name, (unsigned)t->ncols, (unsigned)rel->ncols);
        return -1;
    }
    buf_putc(out, '{');
    int first = 1;
    for (uint16_t i = 0; i < t->ncols; i++) {
        const pgo_rel_col *col = &rel->cols[i];
        const pgo_value *v = &t->cols[i];
        if (key_only && !col->key)
            continue;
        if (v->kind == 'u') {
            if (toast) {
                if (toast->len)
                    buf_putc(toast, ',');
                buf_put_json_str(toast, col->name, strlen(col->name));
            }
            continue;
        }
        if (!first)
            buf_putc(out, ',');
        first = 0;
        buf_append(out, col->json_key, col->json_key_len);
        if (v->kind == 'n')
            buf_puts(out, "null");
        else if (v->kind == 'b')
            put_hex_string(out, v->data, v->len);
        else
            pgo_value_json(col->type_oid, v->data, v->len, out);
    }
    buf_putc(out, '}');
    return 0;
}

/* ---- helpers ----------------------------------------------------------------------- */

void pgo_lsn_format(uint64_t lsn, char *buf, size_t buflen)
{
    snprintf(buf, buflen, "%" PRIX32 "/%" PRIX32, (uint32_t)(lsn >> 32), (uint32_t)lsn);
}

int pgo_lsn_parse(const char *s, uint64_t *out)
{
    unsigned int hi, lo;
    int n = 0;
    if (!s || sscanf(s, "%X/%X%n", &hi, &lo, &n) != 2 || s[n] != '\0')
        return -1;
    *out = ((uint64_t)hi << 32) | lo;
    return 0;
}

/* Seconds between 1970-01-01 and 2000-01-01. */
#define PG_EPOCH_OFFSET INT64_C(946684800)

void pgo_time_format(int64_t pg_us, char *buf, size_t buflen)
{
    int64_t us = pg_us % 1000000;
    int64_t secs = pg_us / 1000000;
    if (us < 0) {
        us += 1000000;
        secs -= 1;
    }
    time_t t = (time_t)(secs + PG_EPOCH_OFFSET);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, buflen, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
}

int64_t pgo_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((int64_t)ts.tv_sec - PG_EPOCH_OFFSET) * 1000000 + ts.tv_nsec / 1000;
}
