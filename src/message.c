/*
 * message.c - events, batches, dedup keys, subject templates and the native
 * JSON envelope.
 *
 * Memory: a batch owns an arena of 64 KiB blocks (bigger for large strings);
 * every string of every message is bump-allocated from it and the whole
 * batch is released by arena_reset(), which keeps the first block so a
 * steady-state worker allocates nothing per batch.
 *
 * Templates: "{name}" is replaced by a variable; "{{" and "}}" are literal
 * braces. Substituted values are escaped to a single NATS token (see
 * subject_render); the template text itself is used verbatim, so its dots
 * are the token separators the operator chose.
 */
#include "message.h"

#include "json_scan.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define ARENA_BLOCK 65536

struct relay_arena_block {
    relay_arena_block *next;
    size_t used;
    size_t cap;
    _Alignas(16) char data[];
};

static relay_arena_block *block_new(size_t cap)
{
    relay_arena_block *blk = xmalloc(sizeof *blk + cap);
    blk->next = NULL;
    blk->used = 0;
    blk->cap = cap;
    return blk;
}

void *arena_alloc(relay_arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    relay_arena_block *h = a->head;
    if (!h || h->cap - h->used < n) {
        size_t cap = n > ARENA_BLOCK / 4 ? n : ARENA_BLOCK;
        relay_arena_block *blk = block_new(cap);
        if (h && cap != ARENA_BLOCK) {
            /* A large one-off block goes behind the current head so the
             * head's remaining space is still used. */
            blk->next = h->next;
            h->next = blk;
            blk->used = n;
            return blk->data;
        }
        blk->next = h;
        a->head = h = blk;
    }
    void *p = h->data + h->used;
    h->used += n;
    return p;
}

char *arena_strndup(relay_arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *arena_strdup(relay_arena *a, const char *s)
{
    return arena_strndup(a, s, strlen(s));
}

char *arena_printf(relay_arena *a, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return arena_strdup(a, "");
    if ((size_t)n < sizeof tmp)
        return arena_strndup(a, tmp, (size_t)n);
    char *p = arena_alloc(a, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

void arena_reset(relay_arena *a)
{
    relay_arena_block *keep = NULL;
    relay_arena_block *b = a->head;
    while (b) {
        relay_arena_block *next = b->next;
        if (!keep && b->cap == ARENA_BLOCK) {
            keep = b;
            keep->used = 0;
        } else {
            free(b);
        }
        b = next;
    }
    if (keep)
        keep->next = NULL;
    a->head = keep;
}

void arena_free(relay_arena *a)
{
    relay_arena_block *b = a->head;
    while (b) {
        relay_arena_block *next = b->next;
        free(b);
        b = next;
    }
    a->head = NULL;
}

relay_msg *batch_add(relay_batch *b)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->msgs = xrealloc(b->msgs, b->cap * sizeof *b->msgs);
    }
    relay_msg *m = &b->msgs[b->n++];
    memset(m, 0, sizeof *m);
    m->outbox_id = -1;
    m->payload_is_json = 1;
    m->arena = &b->arena;
    return m;
}

void msg_set_error(relay_msg *m, relay_msg_state state, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    m->state = state;
    m->error = m->arena ? arena_strdup(m->arena, tmp) : "error text unavailable";
}

void batch_reset(relay_batch *b)
{
    b->n = 0;
    b->ack_pos = b->ack_aux = 0;
    arena_reset(&b->arena);
}

void batch_free(relay_batch *b)
{
    free(b->msgs);
    arena_free(&b->arena);
    memset(b, 0, sizeof *b);
}

const char *relay_op_name(relay_op op)
{
    switch (op) {
    case OP_INSERT: return "insert";
    case OP_UPDATE: return "update";
    case OP_DELETE: return "delete";
    case OP_TRUNCATE: return "truncate";
    case OP_SNAPSHOT: return "snapshot";
    case OP_REFRESH: return "refresh";
    case OP_EVENT: return "event";
    }
    return "event";
}

relay_op relay_op_parse(const char *name)
{
    for (int op = OP_INSERT; name && op <= OP_EVENT; op++)
        if (strcmp(name, relay_op_name((relay_op)op)) == 0)
            return (relay_op)op;
    return OP_EVENT;
}

/* ---- subject templates ------------------------------------------------ */

static const char *const template_vars[] = {
    "stream_table", "op", "outbox_id", "refresh_id", "schema", "table", "key", NULL,
};

static int var_index(const char *name, size_t n)
{
    for (int i = 0; template_vars[i]; i++)
        if (strlen(template_vars[i]) == n && memcmp(template_vars[i], name, n) == 0)
            return i;
    return -1;
}

int subject_template_check(const char *tmpl, char *err, size_t errlen)
{
    if (!*tmpl) {
        snprintf(err, errlen, "template is empty");
        return -1;
    }
    for (const char *p = tmpl; *p; p++) {
        if (p[0] == '{' && p[1] == '{') { p++; continue; }
        if (p[0] == '}' && p[1] == '}') { p++; continue; }
        if (*p == '}') {
            snprintf(err, errlen, "unbalanced '}' at offset %d in template \"%s\"", (int)(p - tmpl), tmpl);
            return -1;
        }
        if (*p != '{')
            continue;
        const char *end = strchr(p, '}');
        if (!end) {
            snprintf(err, errlen, "unterminated '{' at offset %d in template \"%s\"", (int)(p - tmpl), tmpl);
            return -1;
        }
        if (var_index(p + 1, (size_t)(end - p - 1)) < 0) {
            snprintf(err, errlen,
                     "unknown variable {%.*s} in template \"%s\" (known: {stream_table} {op} "
                     "{outbox_id} {refresh_id} {schema} {table} {key})",
                     (int)(end - p - 1), p + 1, tmpl);
            return -1;
        }
        p = end;
    }
    return 0;
}

/* Escape a value to one NATS token: keep [A-Za-z0-9_-], %XX everything else
 * (including '.', '*', '>', whitespace and '%'). An empty value becomes "_"
 * so it never produces an empty token. */
static void put_token(relay_buf *out, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    if (!v || !*v) {
        buf_putc(out, '_');
        return;
    }
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        unsigned char c = *p;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '_' || c == '-') {
            buf_putc(out, (char)c);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            buf_append(out, e, 3);
        }
    }
}

void subject_render(const char *tmpl, const relay_msg *m, relay_buf *out)
{
    char num[24];
    for (const char *p = tmpl; *p; p++) {
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            buf_putc(out, *p);
            p++;
            continue;
        }
        const char *end = *p == '{' ? strchr(p, '}') : NULL;
        int vi = end ? var_index(p + 1, (size_t)(end - p - 1)) : -1;
        if (vi < 0) {
            buf_putc(out, *p);
            continue;
        }
        switch (vi) {
        case 0: put_token(out, m->stream_table ? m->stream_table : m->table); break;
        case 1: put_token(out, relay_op_name(m->op)); break;
        case 2:
            if (m->outbox_id >= 0) {
                snprintf(num, sizeof num, "%lld", (long long)m->outbox_id);
                put_token(out, num);
            } else {
                put_token(out, NULL);
            }
            break;
        case 3: put_token(out, m->refresh_id); break;
        case 4: put_token(out, m->schema); break;
        case 5: put_token(out, m->table ? m->table : m->stream_table); break;
        case 6: put_token(out, m->key); break;
        }
        p = end;
    }
}

/* ---- row keys --------------------------------------------------------- */

/* Is the raw JSON key k[0..kn) (as json_object_next returns it: quotes
 * stripped, escapes not decoded) the column name `name`? Names are written
 * with buf_put_json_str, so compare with that spelling. */
static int key_is(const char *k, size_t kn, const char *name, relay_buf *tmp)
{
    buf_clear(tmp);
    buf_put_json_str(tmp, name, strlen(name));
    return tmp->len == kn + 2 && memcmp(tmp->data + 1, k, kn) == 0;
}

int msg_row_key_native(const relay_msg *m, relay_buf *out)
{
    if (!m->row_type || !m->payload || m->op == OP_TRUNCATE || m->op == OP_EVENT)
        return 0;
    size_t n = m->payload_len ? m->payload_len : strlen(m->payload);
    if (n == 0 || m->payload[0] != '{')
        return 0;
    size_t start = out->len;
    relay_buf tmp = {0};
    int found = 0;
    for (int c = 0; c < m->row_type->ncols; c++) {
        const relay_row_col *col = &m->row_type->cols[c];
        if (!col->key)
            continue;
        size_t pos = 0, off, len, kn;
        const char *k;
        while (json_object_next(m->payload, n, &pos, &k, &kn, &off, &len) == 1) {
            if (!key_is(k, kn, col->name, &tmp))
                continue;
            buf_putc(out, found++ ? ',' : '{');
            buf_put_json_str(out, col->name, strlen(col->name));
            buf_putc(out, ':');
            buf_append(out, m->payload + off, len);
            break;
        }
    }
    buf_free(&tmp);
    if (!found) {
        out->len = start;
        return 0;
    }
    buf_putc(out, '}');
    return 1;
}

/* ---- native envelope -------------------------------------------------- */

static void put_json_or_null(relay_buf *out, const char *json, size_t len)
{
    if (json && len)
        buf_append(out, json, len);
    else
        buf_puts(out, "null");
}

void msg_encode_native(const relay_msg *m, relay_buf *out)
{
    buf_puts(out, "{\"dedup_key\":");
    buf_put_json_str(out, m->dedup_key, strlen(m->dedup_key));
    buf_puts(out, ",\"subject\":");
    if (m->subject)
        buf_put_json_str(out, m->subject, strlen(m->subject));
    else
        buf_puts(out, "null");
    buf_puts(out, ",\"op\":\"");
    buf_puts(out, relay_op_name(m->op));
    buf_puts(out, "\",\"payload\":");
    if (m->payload && !m->payload_is_json)
        buf_put_json_str(out, m->payload, m->payload_len);
    else
        put_json_or_null(out, m->payload, m->payload_len);
    buf_puts(out, m->is_full_refresh ? ",\"is_full_refresh\":true" : ",\"is_full_refresh\":false");
    buf_puts(out, ",\"outbox_id\":");
    if (m->outbox_id >= 0)
        buf_put_i64(out, m->outbox_id);
    else
        buf_puts(out, "null");
    buf_puts(out, ",\"refresh_id\":");
    if (m->refresh_id)
        buf_put_json_str(out, m->refresh_id, strlen(m->refresh_id));
    else
        buf_puts(out, "null");
    if (m->old_json) {
        buf_puts(out, ",\"old\":");
        buf_puts(out, m->old_json);
    }
    if (m->source_json) {
        buf_puts(out, ",\"source\":");
        buf_puts(out, m->source_json);
    }
    buf_putc(out, '}');
}

void relay_uuid_v4(char out[37])
{
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
        static _Atomic uint64_t ctr;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        uint64_t n = atomic_fetch_add(&ctr, 1);
        memcpy(b, &t, 8);
        memcpy(b + 8, &n, 8);
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40); /* version 4 */
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80); /* variant 10 */
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
             b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
             b[13], b[14], b[15]);
}
