/*
 * buf.h - growable byte buffers and JSON string escaping.
 *
 * A relay_buf owns a heap block that grows geometrically; the contents are
 * always NUL-terminated so they can be handed to libpq or printf directly.
 * Every encoder in the relay (envelopes, CSV, Prometheus text, SQL literals)
 * writes into one of these, so the hot path does one allocation per buffer
 * lifetime rather than one per event.
 */
#ifndef RELAY_BUF_H
#define RELAY_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef struct relay_buf {
    char *data;   /* owned; NUL-terminated; NULL until the first append */
    size_t len;   /* bytes used, not counting the NUL */
    size_t cap;   /* bytes allocated */
} relay_buf;

/* Ensure room for `extra` more bytes plus the NUL. Aborts on out-of-memory. */
void buf_reserve(relay_buf *b, size_t extra);
/* Append `n` bytes from `p`. */
void buf_append(relay_buf *b, const void *p, size_t n);
/* Append a NUL-terminated string. */
void buf_puts(relay_buf *b, const char *s);
/* Append one byte. */
void buf_putc(relay_buf *b, char c);
/* Append printf-formatted text. */
void buf_printf(relay_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_vprintf(relay_buf *b, const char *fmt, va_list ap);
/* Append a signed decimal integer. */
void buf_put_i64(relay_buf *b, int64_t v);
/* Append `s` (length n) as a quoted JSON string with RFC 8259 escaping.
 * The result is always valid JSON: a byte that does not start a valid UTF-8
 * sequence is written as \ufffd (NUL and control bytes as \u00XX). */
void buf_put_json_str(relay_buf *b, const char *s, size_t n);
/* Append `s` (length n) for a text log line: control characters and bytes
 * that are not UTF-8 become visible escapes (\n, \r, \t, \xNN), so a
 * value can never start a new line or forge another record. */
void buf_put_log_text(relay_buf *b, const char *s, size_t n);
/* Make the NUL-terminated `s` valid UTF-8 in place: every byte that does
 * not belong to a valid sequence (including one cut short at the end)
 * becomes '?'. For texts kept for /status, metrics and reports. */
void utf8_sanitize(char *s);
/* Length of the valid, NUL-free UTF-8 sequence at p (1..4), or 0. */
size_t utf8_seq_len(const void *p, size_t avail);
/* 1 when p[0..n) is valid UTF-8 (RFC 3629: no overlong forms, no
 * surrogates), NUL bytes allowed (a MessagePack or CloudEvents string may
 * hold U+0000); 0 otherwise. utf8_text_valid() (json_scan.h) refuses NUL. */
int utf8_valid(const void *p, size_t n);
/* Reset to empty, keeping the allocation. */
void buf_clear(relay_buf *b);
/* Free the allocation and zero the struct. */
void buf_free(relay_buf *b);
/* Give up ownership: returns data (never NULL; "" when empty), zeroes `b`. Caller frees. */
char *buf_steal(relay_buf *b);

/* Allocation helpers that abort on out-of-memory (the relay cannot make
 * progress without memory, and a half-built batch must never be acked). */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t sz);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

#endif
