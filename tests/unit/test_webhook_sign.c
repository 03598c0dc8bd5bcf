/*
 * test_client/webhook.c - webhook request signatures (HMAC-SHA256 of
 * "<timestamp>.<body>"), their verification and constant-time secret
 * comparison. Expected digests were computed with Python's hmac/hashlib.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "client/webhook.h"

#define SECRET "whsec-test"
#define BODY "{\"a\":1}"
#define SIG_HEX "fed7a1a6c799a6367d73724d76bc70c16678908a32a879cd1ded6565ac05cece"
#define NOW 1700000000

static void hmac_of_timestamp_dot_body(void **state)
{
    (void)state;
    char hex[WEBHOOK_HEX_LEN];
    assert_int_equal(webhook_hmac_hex(SECRET, strlen(SECRET), "1700000000", BODY, strlen(BODY), hex),
                     0);
    assert_string_equal(hex, SIG_HEX);
    assert_int_equal(webhook_hmac_hex(SECRET, strlen(SECRET), "1700000000", "", 0, hex), 0);
    assert_string_equal(hex, "70b977d08298e622e7e76b0fe7fced4909b9d0a83ac8d75d8be1a428baa02352");
}

static void sha256_known_vector(void **state)
{
    (void)state;
    char hex[WEBHOOK_HEX_LEN];
    assert_int_equal(webhook_sha256_hex("abc", 3, hex), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    webhook_sha256 *h = webhook_sha256_begin();
    webhook_sha256_add(h, "a", 1);
    webhook_sha256_add(h, "bc", 2);
    assert_int_equal(webhook_sha256_end(h, hex), 0);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

static int verify(const char *ts, const char *sig, const char *body, int64_t now, const char **why)
{
    return webhook_verify(SECRET, strlen(SECRET), ts, sig, body, strlen(body), now, 300, why);
}

static void verify_accepts_valid_signatures(void **state)
{
    (void)state;
    const char *why = NULL;
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, BODY, NOW, &why), 0);
    /* prefix and hex digits are case-insensitive */
    char upper[80] = "SHA256=";
    for (size_t i = 0; i < strlen(SIG_HEX); i++)
        upper[7 + i] = (char)(SIG_HEX[i] >= 'a' ? SIG_HEX[i] - 32 : SIG_HEX[i]);
    upper[7 + strlen(SIG_HEX)] = '\0';
    assert_int_equal(verify("1700000000", upper, BODY, NOW, &why), 0);
    /* at both edges of the tolerance window */
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, BODY, NOW + 300, &why), 0);
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, BODY, NOW - 300, &why), 0);
}

static void verify_rejects(void **state)
{
    (void)state;
    const char *why = NULL;
    assert_int_equal(verify(NULL, "sha256=" SIG_HEX, BODY, NOW, &why), -1);
    assert_non_null(strstr(why, "missing X-Pgtrickle-Timestamp"));
    assert_int_equal(verify("1700000000", NULL, BODY, NOW, &why), -1);
    assert_non_null(strstr(why, "missing X-Pgtrickle-Signature"));
    assert_int_equal(verify("17e8", "sha256=" SIG_HEX, BODY, NOW, &why), -1);
    assert_non_null(strstr(why, "malformed X-Pgtrickle-Timestamp"));
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, BODY, NOW + 301, &why), -1);
    assert_non_null(strstr(why, "stale"));
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, BODY, NOW - 301, &why), -1);
    assert_non_null(strstr(why, "stale"));
    assert_int_equal(verify("1700000000", SIG_HEX, BODY, NOW, &why), -1);
    assert_non_null(strstr(why, "malformed X-Pgtrickle-Signature"));
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX "00", BODY, NOW, &why), -1);
    assert_non_null(strstr(why, "malformed X-Pgtrickle-Signature"));
    assert_int_equal(verify("1700000000", "sha256=" SIG_HEX, "{\"a\":2}", NOW, &why), -1);
    assert_string_equal(why, "signature does not match");
    /* the same body signed with another timestamp */
    assert_int_equal(verify("1700000001", "sha256=" SIG_HEX, BODY, NOW, &why), -1);
    assert_string_equal(why, "signature does not match");
}

/* The header-only checks a receiver runs before reading the body: they refuse
 * what webhook_verify() would refuse for any body, and pass a well-formed,
 * fresh pair whatever its digest. */
static void signature_headers(void **state)
{
    (void)state;
    const char *why = NULL;
    assert_int_equal(webhook_check_signature_headers("1700000000", "sha256=" SIG_HEX, NOW, 300, &why), 0);
    char other[80] = "sha256=";
    memset(other + 7, 'f', 64);
    other[71] = '\0';
    assert_int_equal(webhook_check_signature_headers("1700000000", other, NOW, 300, &why), 0);
    assert_int_equal(webhook_check_signature_headers(NULL, "sha256=" SIG_HEX, NOW, 300, &why), -1);
    assert_non_null(strstr(why, "missing X-Pgtrickle-Timestamp"));
    assert_int_equal(webhook_check_signature_headers("1700000000", "", NOW, 300, &why), -1);
    assert_non_null(strstr(why, "missing X-Pgtrickle-Signature"));
    assert_int_equal(webhook_check_signature_headers("now", "sha256=" SIG_HEX, NOW, 300, &why), -1);
    assert_non_null(strstr(why, "malformed X-Pgtrickle-Timestamp"));
    assert_int_equal(webhook_check_signature_headers("1700000000", "sha256=" SIG_HEX, NOW + 301, 300,
                                                     &why), -1);
    assert_non_null(strstr(why, "stale"));
    assert_int_equal(webhook_check_signature_headers("1700000000", "md5=abc", NOW, 300, &why), -1);
    assert_non_null(strstr(why, "malformed X-Pgtrickle-Signature"));
}

static void secret_equal(void **state)
{
    (void)state;
    assert_true(webhook_secret_equal("token", 5, "token", 5));
    assert_false(webhook_secret_equal("token", 5, "tokeN", 5));
    assert_false(webhook_secret_equal("token", 5, "token2", 6));
    assert_false(webhook_secret_equal("", 0, "x", 1));
    assert_true(webhook_secret_equal("", 0, "", 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(hmac_of_timestamp_dot_body),
        cmocka_unit_test(sha256_known_vector),
        cmocka_unit_test(verify_accepts_valid_signatures),
        cmocka_unit_test(verify_rejects),
        cmocka_unit_test(signature_headers),
        cmocka_unit_test(secret_equal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
