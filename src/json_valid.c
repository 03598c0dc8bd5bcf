/*
 * json_valid.c - is a message body JSON that PostgreSQL's jsonb accepts?
 *
 * Reverse sources use it to decide whether a broker message is stored in
 * the inbox as JSON or as a JSON string: a body jsonb would refuse must not
 * reach the INSERT (the whole batch would fail over one message).
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "json_scan.h"

/* ---- JSON check ------------------------------------------------------------
 * Is a record body JSON that PostgreSQL's jsonb accepts? A syntax check
 * (RFC 8259) that allocates nothing: a parser that builds a tree costs more
 * than everything else this source does per record. Beyond the grammar it
 * refuses what jsonb refuses: invalid UTF-8, \u0000, unpaired surrogate
 * escapes. Nesting is followed iteratively to any depth; a body deeper than
 * the server's own limit is refused by the INSERT and dead-lettered, never
 * silently turned into a string. */

typedef struct jcur {
    const unsigned char *p, *end;
} jcur;

static void j_ws(jcur *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

static int j_lit(jcur *c, const char *lit, size_t n)
{
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return 0;
    c->p += n;
    return 1;
}

static int j_digits(jcur *c)
{
    const unsigned char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9')
        c->p++;
    return c->p > start;
}

static int j_number(jcur *c)
{
    if (c->p < c->end && *c->p == '-')
        c->p++;
    if (c->p < c->end && *c->p == '0')
        c->p++;
    else if (!j_digits(c))
        return 0;
    if (c->p < c->end && *c->p == '.') {
        c->p++;
        if (!j_digits(c))
            return 0;
    }
    if (c->p < c->end && (*c->p == 'e' || *c->p == 'E')) {
        c->p++;
        if (c->p < c->end && (*c->p == '+' || *c->p == '-'))
            c->p++;
        if (!j_digits(c))
            return 0;
    }
    return 1;
}

/* Four hex digits after "\u"; -1 when malformed. */
static long j_hex4(jcur *c)
{
    if (c->end - c->p < 4)
        return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char h = c->p[i];
        int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
              : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + d;
    }
    c->p += 4;
    return v;
}

/* Length of the UTF-8 sequence at p (valid, NUL-free), or 0. */
static size_t utf8_seq(const unsigned char *p, size_t avail)
{
    unsigned char c = p[0];
    size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
               : (c & 0xF8) == 0xF0 ? 4 : 0;
    if (c == 0 || len == 0 || len > avail || (len == 2 && c < 0xC2) || (len == 4 && c > 0xF4))
        return 0;
    for (size_t k = 1; k < len; k++)
        if ((p[k] & 0xC0) != 0x80)
            return 0;
    if (len == 3 && ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0)))
        return 0; /* overlong, or a UTF-16 surrogate */
    if (len == 4 && ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90)))
        return 0;
    return len;
}

static int utf8_text_valid_bytes(const unsigned char *p, size_t n)
{
    for (size_t i = 0, len; i < n; i += len)
        if ((len = utf8_seq(p + i, n - i)) == 0)
            return 0;
    return 1;
}

static int j_string(jcur *c)
{
    c->p++; /* the opening quote */
    while (c->p < c->end) {
        unsigned char ch = *c->p;
        if (ch == '"') {
            c->p++;
            return 1;
        }
        if (ch < 0x20)
            return 0;
        if (ch == '\\') {
            c->p++;
            if (c->p >= c->end)
                return 0;
            unsigned char e = *c->p++;
            if (e == 'u') {
                long u = j_hex4(c);
                if (u <= 0 || (u >= 0xDC00 && u <= 0xDFFF))
                    return 0; /* malformed, \u0000, or a lone low surrogate */
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (!j_lit(c, "\\u", 2))
                        return 0;
                    long lo = j_hex4(c);
                    if (lo < 0xDC00 || lo > 0xDFFF)
                        return 0;
                }
            } else if (!strchr("\"\\/bfnrt", e) || e == 0) {
                return 0;
            }
            continue;
        }
        size_t len = utf8_seq(c->p, (size_t)(c->end - c->p));
        if (len == 0)
            return 0;
        c->p += len;
    }
    return 0;
}

/* A scalar at c->p: string, literal or number. */
static int j_scalar(jcur *c)
{
    if (c->p >= c->end)
        return 0;
    switch (*c->p) {
    case '"':
        return j_string(c);
    case 't':
        return j_lit(c, "true", 4);
    case 'f':
        return j_lit(c, "false", 5);
    case 'n':
        return j_lit(c, "null", 4);
    default:
        return j_number(c);
    }
}

/* An object member's key and colon; c->p at the key's opening quote. */
static int j_key(jcur *c)
{
    if (c->p >= c->end || *c->p != '"' || !j_string(c))
        return 0;
    j_ws(c);
    if (c->p >= c->end || *c->p != ':')
        return 0;
    c->p++;
    j_ws(c);
    return 1;
}

/* One value with any nesting, iteratively: a value is a scalar or an opening
 * bracket; after each value comes a comma (then the next member), the
 * closing bracket of the innermost container, or the end. */
static int j_value(jcur *c, json_nest *st)
{
    for (;;) {
        /* a value */
        if (c->p < c->end && (*c->p == '{' || *c->p == '[')) {
            int object = *c->p == '{';
            c->p++;
            j_ws(c);
            if (c->p < c->end && *c->p == (object ? '}' : ']')) {
                c->p++; /* empty container: a complete value */
            } else {
                json_nest_push(st, object);
                if (object && !j_key(c))
                    return 0;
                continue;
            }
        } else if (!j_scalar(c)) {
            return 0;
        }
        /* after a value: close containers, or go on with the next member */
        for (;;) {
            int top = json_nest_top(st);
            if (top < 0)
                return 1;
            j_ws(c);
            if (c->p >= c->end)
                return 0;
            if (*c->p == ',') {
                c->p++;
                j_ws(c);
                if (top == 1 && !j_key(c))
                    return 0;
                break;
            }
            if (*c->p != (top == 1 ? '}' : ']'))
                return 0;
            c->p++;
            json_nest_pop(st);
        }
    }
}

int json_valid(const char *p, size_t n)
{
    jcur c = {(const unsigned char *)p, (const unsigned char *)p + n};
    json_nest st;
    json_nest_init(&st);
    j_ws(&c);
    int ok = j_value(&c, &st);
    json_nest_free(&st);
    if (!ok)
        return 0;
    j_ws(&c);
    return c.p == c.end;
}

int utf8_text_valid(const void *text, size_t n)
{
    const unsigned char *p = text;
    return utf8_text_valid_bytes(p, n);
}
