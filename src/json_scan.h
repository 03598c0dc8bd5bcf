/*
 * json_scan.h - find the boundaries of JSON values in text without building
 * a tree.
 *
 * The outbox source receives payloads as jsonb::text (valid JSON that
 * PostgreSQL produced) and only needs to cut them into rows: slicing the
 * text is several times cheaper than parsing each row into a tree and
 * serialising it again, and it never alters a value (a tree round trip
 * turns 1.10 into 1.1000000000000001). Every function is bounds-checked and
 * rejects malformed input instead of reading past the end.
 */
#ifndef RELAY_JSON_SCAN_H
#define RELAY_JSON_SCAN_H

#include <stddef.h>

#include "buf.h"

/* Length of the JSON value starting at s[0] (after no whitespace), or 0
 * when s[0..n) does not start with a complete, well-nested value. Strings
 * are scanned for their end only (escapes are skipped, not decoded). Any
 * nesting depth (the values come from jsonb, which has its own limit). */
size_t json_span(const char *s, size_t n);

/* Index of the first non-whitespace byte at or after i (n if none). */
size_t json_skip_ws(const char *s, size_t n, size_t i);

/* Iterate the elements of the array s[0..n) (s[0] must be '['): on each
 * call stores the next element's offset and length and returns 1; returns
 * 0 after the closing bracket, -1 on malformed or unterminated input.
 * *pos starts at 0. */
int json_array_next(const char *s, size_t n, size_t *pos, size_t *off, size_t *len);

/* Iterate the members of the object s[0..n) (s[0] must be '{'): stores the
 * key (raw, without quotes, escapes not decoded) and the value's offset and
 * length. Returns 1, 0 at the end, -1 on malformed input. */
int json_object_next(const char *s, size_t n, size_t *pos, const char **key, size_t *keylen,
                     size_t *off, size_t *len);

/* Copy s[0..n) to dst without the whitespace outside strings (a compact
 * copy of a value json_span accepted). dst needs n bytes; returns the
 * number written (no NUL is added). */
size_t json_compact_into(char *dst, const char *s, size_t n);

/* The same, appended to a buffer. */
void json_append_compact(relay_buf *out, const char *s, size_t n);

/* Is s[0..n) one JSON value (RFC 8259, surrounding whitespace allowed)?
 * 1: yes, and PostgreSQL's jsonb accepts it; -1: yes, but jsonb refuses it
 * (a \u0000 escape or an unpaired surrogate escape); 0: not JSON (bad
 * grammar, invalid UTF-8, a NUL byte, trailing text). Nesting depth is not limited
 * here (jsonb's limit depends on the server's max_stack_depth: a value too
 * deep for it is refused by the INSERT and dead-lettered). Iterative;
 * allocates only past 512 levels of nesting. */
int json_valid(const char *s, size_t n);

/* A stack of bits for nesting (1 = object, 0 = array) without recursion:
 * the first 512 levels live inline, deeper ones on the heap. */
typedef struct json_nest {
    unsigned long long inline_bits[8];
    unsigned long long *heap;
    size_t cap;   /* bits available */
    size_t depth; /* levels pushed */
} json_nest;

void json_nest_init(json_nest *st);
void json_nest_push(json_nest *st, int object);
/* The innermost level: 1 object, 0 array; -1 when empty. */
int json_nest_top(const json_nest *st);
/* Remove the innermost level (no-op when empty). */
void json_nest_pop(json_nest *st);
void json_nest_free(json_nest *st);

/* Decode the JSON string literal s[0..n) (s[0] and s[n-1] are the quotes)
 * and append its bytes to `out`: escapes resolved, \uXXXX (and surrogate
 * pairs) as UTF-8, "\u0000" as a NUL byte (so the caller must use the
 * length). A lone surrogate escape is appended as its 3-byte encoding
 * (which utf8_text_valid() refuses). Returns 0, or -1 when malformed
 * (out is then left with a partial result). */
int json_string_decode(const char *s, size_t n, relay_buf *out);

/* 1 when p[0..n) is NUL-free valid UTF-8 (storable in a text column). */
int utf8_text_valid(const void *p, size_t n);

#endif
