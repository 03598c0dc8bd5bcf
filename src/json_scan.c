/*
 * json_scan.c - JSON value boundaries without a tree (see json_scan.h).
 *
 * json_span() walks one value with an explicit depth counter instead of
 * recursion: it tracks whether it is inside a string (where brackets do
 * not count and a backslash skips the next byte) and stops when the
 * bracket that opened the value closes. Scalars end at the first byte that
 * cannot continue them. Nesting is checked with a stack of the
 * opening brackets (json_nest, one bit per level), so "[}" is rejected;
 * depth is not limited: jsonb accepts thousands of levels.
 */
#include "json_scan.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"

/* ---- nesting stack ------------------------------------------------------- */

#define NEST_WORD_BITS 64u

void json_nest_init(json_nest *st)
{
    memset(st, 0, sizeof *st);
    st->cap = sizeof st->inline_bits * 8;
}

static unsigned long long *nest_words(json_nest *st)
{
    return st->heap ? st->heap : st->inline_bits;
}

void json_nest_push(json_nest *st, int object)
{
    if (st->depth == st->cap) {
        size_t words = st->cap / NEST_WORD_BITS;
        unsigned long long *h = xcalloc(2 * words, sizeof *h);
        memcpy(h, nest_words(st), words * sizeof *h);
        free(st->heap);
        st->heap = h;
        st->cap *= 2;
    }
    unsigned long long *w = nest_words(st) + st->depth / NEST_WORD_BITS;
    unsigned long long bit = 1ull << (st->depth % NEST_WORD_BITS);
    if (object)
        *w |= bit;
    else
        *w &= ~bit;
    st->depth++;
}

int json_nest_top(const json_nest *st)
{
    if (st->depth == 0)
        return -1;
    size_t d = st->depth - 1;
    const unsigned long long *w = st->heap ? st->heap : st->inline_bits;
    return (int)((w[d / NEST_WORD_BITS] >> (d % NEST_WORD_BITS)) & 1u);
}

void json_nest_pop(json_nest *st)
{
    if (st->depth)
        st->depth--;
}

void json_nest_free(json_nest *st)
{
    free(st->heap);
    st->heap = NULL;
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

size_t json_skip_ws(const char *s, size_t n, size_t i)
{
    while (i < n && is_ws(s[i]))
        i++;
    return i;
}

/* End of the string starting at s[i] == '"': index after the closing quote, 0 if unterminated. */
static size_t string_end(const char *s, size_t n, size_t i)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == '"')
            return i + 1;
    }
    return 0;
}

static int is_scalar_byte(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == '-' || c == '+' || c == '.' ||
           c == 'E';
}

size_t json_span(const char *s, size_t n)
{
    if (n == 0)
        return 0;
    if (s[0] == '"')
        return string_end(s, n, 0);
    if (s[0] != '[' && s[0] != '{') {
        size_t i = 0;
        while (i < n && is_scalar_byte(s[i]))
            i++;
        return i;
    }
    json_nest st;
    json_nest_init(&st);
    size_t end = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '"') {
            size_t e = string_end(s, n, i);
            if (!e)
                break;
            i = e - 1;
        } else if (c == '[' || c == '{') {
            json_nest_push(&st, c == '{');
        } else if (c == ']' || c == '}') {
            if (json_nest_top(&st) != (c == '}'))
                break;
            json_nest_pop(&st);
            if (st.depth == 0) {
                end = i + 1;
                break;
            }
        }
    }
    json_nest_free(&st);
    return end;
}

static int hex4(const char *s, long *v)
{
    long r = 0;
    for (int i = 0; i < 4; i++) {
        char h = s[i];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        r = r * 16 + d;
    }
    *v = r;
    return 0;
}

static void put_utf8(relay_buf *out, unsigned long cp)
{
    char b[4];
    size_t n;
    if (cp < 0x80) {
        b[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        b[0] = (char)(0xC0 | (cp >> 6));
        b[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        b[0] = (char)(0xE0 | (cp >> 12));
        b[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        b[0] = (char)(0xF0 | (cp >> 18));
        b[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_append(out, b, n);
}

int json_string_decode(const char *s, size_t n, relay_buf *out)
{
    if (n < 2 || s[0] != '"' || s[n - 1] != '"')
        return -1;
    size_t i = 1, end = n - 1, run = 1;
    while (i < end) {
        if (s[i] != '\\') {
            i++;
            continue;
        }
        buf_append(out, s + run, i - run);
        if (i + 1 >= end)
            return -1;
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case '"': buf_putc(out, '"'); break;
        case '\\': buf_putc(out, '\\'); break;
        case '/': buf_putc(out, '/'); break;
        case 'b': buf_putc(out, '\b'); break;
        case 'f': buf_putc(out, '\f'); break;
        case 'n': buf_putc(out, '\n'); break;
        case 'r': buf_putc(out, '\r'); break;
        case 't': buf_putc(out, '\t'); break;
        case 'u': {
            long u, lo;
            if (end - i < 4 || hex4(s + i, &u) < 0)
                return -1;
            i += 4;
            if (u >= 0xD800 && u <= 0xDBFF && end - i >= 6 && s[i] == '\\' && s[i + 1] == 'u' &&
                hex4(s + i + 2, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                i += 6;
                put_utf8(out, 0x10000 + (((unsigned long)u - 0xD800) << 10) +
                                  ((unsigned long)lo - 0xDC00));
            } else {
                put_utf8(out, (unsigned long)u);
            }
            break;
        }
        default:
            return -1;
        }
        run = i;
    }
    buf_append(out, s + run, end - run);
    return 0;
}

int json_array_next(const char *s, size_t n, size_t *pos, size_t *off, size_t *len)
{
    size_t i = *pos;
    if (i > n)
        return 0; /* already closed */
    if (i == 0) {
        if (n == 0 || s[0] != '[')
            return -1;
        i = json_skip_ws(s, n, 1);
        if (i < n && s[i] == ']') {
            *pos = n + 1;
            return 0;
        }
    } else {
        i = json_skip_ws(s, n, i);
        if (i < n && s[i] == ']') {
            *pos = n + 1;
            return 0;
        }
        if (i >= n || s[i] != ',')
            return -1;
        i = json_skip_ws(s, n, i + 1);
    }
    size_t l = i < n ? json_span(s + i, n - i) : 0;
    if (!l)
        return -1;
    *off = i;
    *len = l;
    *pos = i + l;
    return 1;
}

int json_object_next(const char *s, size_t n, size_t *pos, const char **key, size_t *keylen,
                     size_t *off, size_t *len)
{
    size_t i = *pos;
    if (i > n)
        return 0; /* already closed */
    if (i == 0) {
        if (n == 0 || s[0] != '{')
            return -1;
        i = json_skip_ws(s, n, 1);
    } else {
        i = json_skip_ws(s, n, i);
        if (i < n && s[i] == ',')
            i = json_skip_ws(s, n, i + 1);
        else if (!(i < n && s[i] == '}'))
            return -1;
    }
    if (i < n && s[i] == '}') {
        *pos = n + 1;
        return 0;
    }
    if (i >= n || s[i] != '"')
        return -1;
    size_t ke = string_end(s, n, i);
    if (!ke)
        return -1;
    *key = s + i + 1;
    *keylen = ke - i - 2;
    i = json_skip_ws(s, n, ke);
    if (i >= n || s[i] != ':')
        return -1;
    i = json_skip_ws(s, n, i + 1);
    size_t l = i < n ? json_span(s + i, n - i) : 0;
    if (!l)
        return -1;
    *off = i;
    *len = l;
    *pos = i + l;
    return 1;
}

size_t json_compact_into(char *dst, const char *s, size_t n)
{
    size_t w = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"') {
            size_t e = string_end(s, n, i);
            i = (e ? e : n) - 1;
            continue;
        }
        if (is_ws(s[i])) {
            memcpy(dst + w, s + run, i - run);
            w += i - run;
            run = i + 1;
        }
    }
    memcpy(dst + w, s + run, n - run);
    return w + n - run;
}

void json_append_compact(relay_buf *out, const char *s, size_t n)
{
    buf_reserve(out, n);
    out->len += json_compact_into(out->data + out->len, s, n);
    out->data[out->len] = '\0';
}
