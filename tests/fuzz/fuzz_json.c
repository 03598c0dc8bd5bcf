/*
 * fuzz_json.c - the JSON scanner (src/json_scan.c: json_span,
 * json_array_next, json_object_next, json_compact_into) and validator
 * (src/json_valid.c: json_valid, utf8_text_valid).
 *
 * Input: any bytes, used as the text to scan.
 * Checks, with jansson as the independent oracle:
 *   - json_valid agrees with jansson (JSON_DECODE_ANY, no NUL in strings):
 *     1 (JSON jsonb stores) only where jansson parses it, except numbers that
 *     overflow jansson's int64/double and nesting deeper than jansson's
 *     limit (json_valid has none); -1 (JSON jsonb refuses: \u0000, lone
 *     surrogates) only where jansson refuses too; 0 never where jansson
 *     parses;
 *   - utf8_text_valid agrees with jansson's UTF-8 decoder;
 *   - json_span never claims more than the input and, on valid JSON, spans
 *     exactly the value;
 *   - on a valid array/object: json_array_next / json_object_next find
 *     every element/member, each a valid value (jansson equal to the tree's),
 *     and the walk ends exactly at the closing bracket;
 *   - json_compact_into of a valid value is valid, equal to it, no longer,
 *     and without whitespace outside strings;
 *   - on any input, the iterators terminate and stay inside the input.
 */
#include "fuzz.h"

#include "json_scan.h"

#define JANSSON_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Walk any input with the iterators: bounded, in bounds, terminating. */
static void walk_anything(const char *s, size_t n)
{
    size_t pos = 0, off, len, kl;
    const char *k;
    int r, steps = 0;
    while ((r = json_array_next(s, n, &pos, &off, &len)) == 1) {
        FUZZ_CHECK(off < n && len > 0 && len <= n - off, "array element %zu+%zu of %zu", off, len, n);
        FUZZ_CHECK(++steps <= (int)n, "json_array_next does not advance");
    }
    pos = 0;
    steps = 0;
    while ((r = json_object_next(s, n, &pos, &k, &kl, &off, &len)) == 1) {
        FUZZ_CHECK(k > s && (size_t)(k - s) + kl < n, "object key outside the input");
        FUZZ_CHECK(off < n && len > 0 && len <= n - off, "member value %zu+%zu of %zu", off, len, n);
        FUZZ_CHECK(++steps <= (int)n, "json_object_next does not advance");
    }
    size_t span = json_span(s, n);
    FUZZ_CHECK(span <= n, "json_span %zu > %zu", span, n);
    if (span) {
        /* compact copies are only defined on spans json_span accepted */
        char *dst = malloc(span);
        size_t w = json_compact_into(dst, s, span);
        FUZZ_CHECK(w <= span, "compact copy longer than its input");
        free(dst);
    }
}

/* A compact copy of the valid value v: valid, equal, no whitespace outside strings. */
static void check_compact(const char *v, size_t n, const json_t *tree)
{
    relay_buf b = {0};
    json_append_compact(&b, v, n);
    FUZZ_CHECK(b.len <= n, "compact copy is longer (%zu > %zu)", b.len, n);
    FUZZ_CHECK(json_valid(b.data, b.len) == 1, "compact copy of valid JSON is not valid: %.200s", b.data);
    if (tree) {
        json_t *c = fuzz_jansson(b.data, b.len, 0, NULL);
        FUZZ_CHECK(c && json_equal(c, tree), "compact copy differs from the value: %.200s", b.data);
        json_decref(c);
    }
    int in_str = 0;
    for (size_t i = 0; i < b.len; i++) {
        if (in_str) {
            if (b.data[i] == '\\')
                i++;
            else if (b.data[i] == '"')
                in_str = 0;
        } else if (b.data[i] == '"') {
            in_str = 1;
        } else {
            FUZZ_CHECK(!is_ws(b.data[i]), "whitespace left at %zu of %.200s", i, b.data);
        }
    }
    buf_free(&b);
}

/* v[0..n) is a valid value (trimmed), any depth. */
static void check_valid_value(const char *v, size_t n, const json_t *tree)
{
    FUZZ_CHECK(json_span(v, n) == n, "json_span %zu of a valid %zu-byte value", json_span(v, n), n);
    check_compact(v, n, tree);
    size_t pos = 0, off, len, kl, count = 0;
    const char *k;
    int r;
    if (v[0] == '[') {
        while ((r = json_array_next(v, n, &pos, &off, &len)) == 1) {
            FUZZ_CHECK(json_valid(v + off, len) == 1, "array element %zu is not valid: %.*s", count,
                       (int)(len < 200 ? len : 200), v + off);
            if (tree) {
                json_t *el = fuzz_jansson(v + off, len, 0, NULL);
                FUZZ_CHECK(el && json_equal(el, json_array_get(tree, count)),
                           "array element %zu differs from jansson's", count);
                json_decref(el);
            }
            count++;
        }
        FUZZ_CHECK(r == 0, "json_array_next failed on a valid array at %zu", pos);
        if (tree)
            FUZZ_CHECK(count == json_array_size(tree), "%zu elements, jansson has %zu", count,
                       json_array_size(tree));
    } else if (v[0] == '{') {
        while ((r = json_object_next(v, n, &pos, &k, &kl, &off, &len)) == 1) {
            FUZZ_CHECK(json_valid(v + off, len) == 1, "member %zu is not valid", count);
            FUZZ_CHECK(k > v && k[-1] == '"' && k[kl] == '"', "key %zu is not the string's body", count);
            count++;
        }
        FUZZ_CHECK(r == 0, "json_object_next failed on a valid object at %zu", pos);
        /* jansson keeps one member per key (the last): never more than we see */
        if (tree)
            FUZZ_CHECK(count >= json_object_size(tree), "%zu members, jansson has %zu", count,
                       json_object_size(tree));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* An exact-size copy: ASan flags any read past the end. */
    char *s = malloc(size ? size : 1);
    if (size)
        memcpy(s, data, size);

    walk_anything(s, size);

    /* utf8_text_valid against jansson's UTF-8 decoder */
    FUZZ_CHECK(utf8_text_valid(s, size) == fuzz_utf8_text(s, size), "utf8_text_valid = %d",
               utf8_text_valid(s, size));

    int valid = json_valid(s, size);
    if (memchr(s, 0, size)) {
        /* jansson stops at a NUL byte; JSON has no place for a raw one */
        FUZZ_CHECK(!valid, "json_valid accepts a raw NUL byte");
        free(s);
        return 0;
    }
    int overflow = 0;
    json_t *tree = fuzz_jansson(s, size, 0, &overflow);
    int depth = fuzz_json_depth(s, size);
    if (valid == 1 && !tree)
        FUZZ_CHECK(overflow || depth > JANSSON_MAX_DEPTH, "json_valid accepts what jansson refuses");
    if (valid == -1)
        FUZZ_CHECK(!tree, "json_valid says jsonb refuses what jansson accepts");
    if (valid == 0)
        FUZZ_CHECK(!tree, "json_valid refuses what jansson accepts (depth %d)", depth);

    if (valid == 1) {
        size_t a = json_skip_ws(s, size, 0), e = size;
        while (e > a && is_ws(s[e - 1]))
            e--;
        check_valid_value(s + a, e - a, tree);
    }
    json_decref(tree);
    free(s);
    return 0;
}
