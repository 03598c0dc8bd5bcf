/*
 * fuzz.h - what every fuzz target of tests/fuzz shares (docs/fuzzing.md).
 *
 * A target is one LLVMFuzzerTestOneInput(). It is linked two ways:
 *   - with libFuzzer (meson -Dfuzz=true, clang, ASan+UBSan; scripts/fuzz.sh)
 *     to search for new inputs;
 *   - with replay.c (every build) into fuzz_<target>_replay, which runs the
 *     seed corpus tests/fuzz/corpus/<target>/ once as a unit test, so a
 *     regression seed fails `meson test` (and `make sanitize`, `make
 *     valgrind`) without clang too.
 * Besides "no crash, no sanitizer report", each target checks properties of
 * the output (FUZZ_CHECK): a failed check aborts, which libFuzzer reports as
 * a crash with its input saved as the reproducer.
 */
#ifndef RELAY_FUZZ_H
#define RELAY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional, once before the first input (libFuzzer and replay.c call it). */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* A property of the code under test does not hold: report and abort. */
#define FUZZ_CHECK(cond, ...)                                                              \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "fuzz check failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* A NUL-terminated heap copy of data[0..n) (fuzz inputs are not terminated). */
static inline char *fuzz_strndup(const uint8_t *data, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    if (n)
        memcpy(s, data, n);
    s[n] = '\0';
    return s;
}

/* Split the next field off *p..end at the first `sep` (or the end): returns
 * a NUL-terminated heap copy and advances *p past the separator. */
static inline char *fuzz_field(const uint8_t **p, const uint8_t *end, int sep)
{
    const uint8_t *s = *p;
    const uint8_t *e = memchr(s, sep, (size_t)(end - s));
    char *f = fuzz_strndup(s, (size_t)((e ? e : end) - s));
    *p = e ? e + 1 : end;
    return f;
}

/* jansson as the independent JSON oracle: parse s[0..n) as any JSON value;
 * NULL when jansson refuses it (*numeric_overflow set when that is only
 * because a number does not fit a double or an int64, which jsonb and the
 * relay's scanners accept). */
static inline json_t *fuzz_jansson(const char *s, size_t n, size_t flags, int *numeric_overflow)
{
    json_error_t e;
    /* JSON has no raw NUL byte (RFC 8259: a string escapes U+0000, nothing
     * else may hold it), but jansson 2.14 accepts one right after a number
     * ("[1\0]" loads as [1]): that is not an oracle's answer. */
    if (memchr(s, 0, n)) {
        if (numeric_overflow)
            *numeric_overflow = 0;
        return NULL;
    }
    json_t *v = json_loadb(s, n, JSON_DECODE_ANY | flags, &e);
    if (numeric_overflow)
        *numeric_overflow = !v && json_error_code(&e) == json_error_numeric_overflow;
    return v;
}

/* Deepest nesting of brackets outside strings in s[0..n) (for valid JSON). */
static inline int fuzz_json_depth(const char *s, size_t n)
{
    int depth = 0, max = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
        } else if (c == '"') {
            in_str = 1;
        } else if (c == '[' || c == '{') {
            if (++depth > max)
                max = depth;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return max;
}

/* 1 when p[0..n) is valid UTF-8 without NUL bytes (by jansson's decoder). */
static inline int fuzz_utf8_text(const char *p, size_t n)
{
    if (memchr(p, 0, n))
        return 0;
    json_t *s = json_stringn(p, n);
    json_decref(s);
    return s != NULL;
}

#endif
