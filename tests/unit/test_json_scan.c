/*
 * test_json_scan.c - value boundaries, array/object iteration, compact
 * copies, and malformed input (never read past the end).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "json_scan.h"

static void spans(void **state)
{
    (void)state;
    assert_int_equal(json_span("1", 1), 1);
    assert_int_equal(json_span("-1.5e3,", 7), 6);
    assert_int_equal(json_span("true]", 5), 4);
    assert_int_equal(json_span("\"a\\\"b\"x", 7), 6);
    assert_int_equal(json_span("{\"a\": [1, {\"b\": \"]}\"}]}", 23), 23);
    assert_int_equal(json_span("[1, 2] tail", 11), 6);
    /* malformed or incomplete */
    assert_int_equal(json_span("[1, 2", 5), 0);
    assert_int_equal(json_span("[}", 2), 0);
    assert_int_equal(json_span("\"abc", 4), 0);
    assert_int_equal(json_span("{\"a\": \"\\", 7), 0);
    assert_int_equal(json_span("", 0), 0);
    /* any depth (issue 10: outbox rows deeper than 256 levels were
     * dead-lettered although jsonb accepts them) */
    size_t d = 100000;
    char *deep = malloc(2 * d + 3);
    memset(deep, '[', d);
    memset(deep + d, ']', d);
    memcpy(deep + 2 * d, ",1", 3);
    assert_int_equal(json_span(deep, 2 * d + 2), 2 * d);
    deep[d] = '}';
    assert_int_equal(json_span(deep, 2 * d + 2), 0);
    free(deep);
}

static void arrays(void **state)
{
    (void)state;
    const char *s = "[{\"id\": 1, \"t\": \"x, y\"}, [2], \"s\", 4 ]";
    size_t n = strlen(s), pos = 0, off, len;
    const char *want[] = {"{\"id\": 1, \"t\": \"x, y\"}", "[2]", "\"s\"", "4"};
    for (int i = 0; i < 4; i++) {
        assert_int_equal(json_array_next(s, n, &pos, &off, &len), 1);
        assert_int_equal(len, strlen(want[i]));
        assert_memory_equal(s + off, want[i], len);
    }
    assert_int_equal(json_array_next(s, n, &pos, &off, &len), 0);
    pos = 0;
    assert_int_equal(json_array_next("[ ]", 3, &pos, &off, &len), 0);
    pos = 0;
    assert_int_equal(json_array_next("[1 2]", 5, &pos, &off, &len), 1);
    assert_int_equal(json_array_next("[1 2]", 5, &pos, &off, &len), -1);
    pos = 0;
    assert_int_equal(json_array_next("{}", 2, &pos, &off, &len), -1);
}

static void objects(void **state)
{
    (void)state;
    const char *s = "{\"v\": 1, \"deleted\": [], \"inserted\": [{\"a\": 1}]}";
    size_t n = strlen(s), pos = 0, kl, off, len;
    const char *k;
    assert_int_equal(json_object_next(s, n, &pos, &k, &kl, &off, &len), 1);
    assert_int_equal(kl, 1);
    assert_memory_equal(k, "v", 1);
    assert_memory_equal(s + off, "1", len);
    assert_int_equal(json_object_next(s, n, &pos, &k, &kl, &off, &len), 1);
    assert_memory_equal(k, "deleted", kl);
    assert_memory_equal(s + off, "[]", len);
    assert_int_equal(json_object_next(s, n, &pos, &k, &kl, &off, &len), 1);
    assert_memory_equal(k, "inserted", kl);
    assert_memory_equal(s + off, "[{\"a\": 1}]", len);
    assert_int_equal(json_object_next(s, n, &pos, &k, &kl, &off, &len), 0);
    pos = 0;
    assert_int_equal(json_object_next("{}", 2, &pos, &k, &kl, &off, &len), 0);
    pos = 0;
    assert_int_equal(json_object_next("{\"a\" 1}", 7, &pos, &k, &kl, &off, &len), -1);
}

static void compact(void **state)
{
    (void)state;
    relay_buf b = {0};
    const char *s = "{\"a\": [1, 2], \"s\": \"keep  this , space\"}";
    json_append_compact(&b, s, strlen(s));
    assert_string_equal(b.data, "{\"a\":[1,2],\"s\":\"keep  this , space\"}");
    buf_free(&b);
}

/* Every prefix of valid input is either a complete value or rejected, and
 * no call reads past its length (checked under valgrind/ASan). */
static void truncations(void **state)
{
    (void)state;
    const char *s = "{\"v\": 1, \"inserted\": [{\"a\": \"x\\\"y\", \"n\": [1, {\"z\": null}]}], \"deleted\": []}";
    size_t n = strlen(s);
    for (size_t l = 0; l < n; l++) {
        char *copy = malloc(l ? l : 1);
        memcpy(copy, s, l);
        assert_int_equal(json_span(copy, l), 0);
        size_t pos = 0, kl, off, len;
        const char *k;
        int r;
        while ((r = json_object_next(copy, l, &pos, &k, &kl, &off, &len)) == 1)
            ;
        assert_true(r == -1 || l == 0);
        free(copy);
    }
    assert_int_equal(json_span(s, n), n);
}

static void expect_decoded(const char *lit, const char *want, size_t wantlen)
{
    relay_buf b = {0};
    assert_int_equal(json_string_decode(lit, strlen(lit), &b), 0);
    assert_int_equal(b.len, wantlen);
    assert_memory_equal(b.data ? b.data : "", want, wantlen);
    buf_free(&b);
}

static void string_decoding(void **state)
{
    (void)state;
    expect_decoded("\"plain\"", "plain", 5);
    expect_decoded("\"\"", "", 0);
    expect_decoded("\"a\\\"b\\\\c\\/d\\n\\t\\b\\f\\r\"", "a\"b\\c/d\n\t\b\f\r", 12);
    expect_decoded("\"nk\\u0000A\"", "nk\0A", 4); /* issue 10: keys differing after \u0000 */
    expect_decoded("\"\\u00e9\\u20ac\"", "\xc3\xa9\xe2\x82\xac", 5);
    expect_decoded("\"\\ud83d\\ude00\"", "\xf0\x9f\x98\x80", 4);
    expect_decoded("\"\\ud800x\"", "\xed\xa0\x80x", 4); /* lone surrogate: kept, not text */
    relay_buf b = {0};
    const char *bad[] = {"\"abc", "abc\"", "\"\\x\"", "\"\\u12\"", "\"\\u12g4\"", "\"\\\"", "\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        buf_clear(&b);
        if (json_string_decode(bad[i], strlen(bad[i]), &b) != -1)
            fail_msg("should be malformed: %s", bad[i]);
    }
    buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(spans),
        cmocka_unit_test(arrays),
        cmocka_unit_test(objects),
        cmocka_unit_test(compact),
        cmocka_unit_test(truncations),
        cmocka_unit_test(string_decoding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
