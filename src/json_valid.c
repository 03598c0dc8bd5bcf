/*
 * json_valid.c - is a message body JSON that PostgreSQL's jsonb accepts?
 *
 * Reverse sources use it to decide whether a broker message is stored in
 * the inbox as JSON or as a JSON string. JSON that jsonb refuses (a
 * "\u0000" escape, a lone surrogate) is reported as such (-1): it is JSON,
 * so it must not be turned into a string, and it cannot be stored, so the
 * inbox writer isolates it and the worker dead-letters its original bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "buf.h"
#include "json_scan.h"

/* ---- JSON check ------------------------------------------------------------
 * Is a record body JSON that PostgreSQL's jsonb accepts? A syntax check
 * (RFC 8259) that allocates nothing: a parser that builds a tree costs more
 * than everything else this source does per record. Invalid UTF-8 is not
 * JSON (RFC 8259 section 8.1); \u0000 and unpaired surrogate escapes are
 * JSON that jsonb refuses. Nesting is followed iteratively to any depth; a body deeper than
 * the server's own limit is refused by the INSERT and dead-lettered, never
 * silently turned into a string. */

typedef struct jcur {
    const unsigned char *p, *end;
    int unstorable; /* RFC 8259 allows it, jsonb does not (\u0000, lone surrogates) */
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

static int utf8_text_valid_bytes(const unsigned char *p, size_t n)
{
    for (size_t i = 0, len; i < n; i += len)
        if ((len = utf8_seq_len(p + i, n - i)) == 0)
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
                if (u < 0)
                    return 0;
                if (u == 0 || (u >= 0xDC00 && u <= 0xDFFF)) {
                    c->unstorable = 1; /* \u0000, or a lone low surrogate */
                } else if (u >= 0xD800 && u <= 0xDBFF) {
                    if (c->end - c->p >= 6 && c->p[0] == '\\' && c->p[1] == 'u') {
                        c->p += 2;
                        long lo = j_hex4(c);
                        if (lo < 0)
                            return 0;
                        if (lo < 0xDC00 || lo > 0xDFFF)
                            c->unstorable = 1; /* a high surrogate without its pair */
                    } else {
                        c->unstorable = 1;
                    }
                }
            } else if (!strchr("\"\\/bfnrt", e) || e == 0) {
                return 0;
            }
            continue;
        }
        size_t len = utf8_seq_len(c->p, (size_t)(c->end - c->p));
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
    jcur c = {(const unsigned char *)p, (const unsigned char *)p + n, 0};
    json_nest st;
    json_nest_init(&st);
    j_ws(&c);
    int ok = j_value(&c, &st);
    json_nest_free(&st);
    if (!ok)
        return 0;
    j_ws(&c);
    if (c.p != c.end)
        return 0;
    return c.unstorable ? -1 : 1;
}

int utf8_text_valid(const void *text, size_t n)
{
    const unsigned char *p = text;
    return utf8_text_valid_bytes(p, n);
}
