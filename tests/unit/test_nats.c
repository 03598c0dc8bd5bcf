/*
 * test_nats.c - the NATS backend's pure parts: the JSON syntax check used
 * for message bodies, NKey seeds and public keys (checked against nats.c's
 * own signing), connection option parsing, and the config validation of
 * the sink and the source (no server needed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <string.h>

#include "hostpath.h"
#include "json_scan.h"
#include "client/nats.h"
#include "hostpath.h"
#include "sink/sink.h"
#include "source/source.h"

extern const relay_sink_ops relay_sink_nats_ops;
extern const relay_source_ops relay_source_nats_ops;

static int valid(const char *s)
{
    return json_valid(s, strlen(s));
}

static void json_check_accepts_json(void **state)
{
    (void)state;
    const char *good[] = {
        "{}", "[]", "0", "-0.5e+10", "\"x\"", "true", "null", " {\"a\" : [1, 2.5, \"\\u00e9\"]} ",
        "{\"nested\":{\"deep\":[{},[],\"\\\"quoted\\\"\"]}}", "\"\\ud83d\\ude00\"", "\"caf\xc3\xa9\"",
        "123456789012345678901234567890", "1E400",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        if (valid(good[i]) != 1)
            fail_msg("should be valid JSON: %s", good[i]);
    }
}

static void json_check_rejects_the_rest(void **state)
{
    (void)state;
    const char *bad[] = {
        "", " ", "hello", "{", "[1,]", "{\"a\":}", "{a:1}", "01", "1.", ".5", "-", "+1", "1e",
        "\"unterminated", "\"tab\there\"", "tru", "nul", "{} {}", "[1] x", "\"\\x\"",
        "\"\\u00g0\"", "\"\\ud800\\u12\"",
        "\"\xff\"",            /* invalid UTF-8 */
        "\"\xc0\xaf\"",        /* overlong */
        "\"\xed\xa0\x80\"",    /* UTF-8 surrogate */
        "NaN", "Infinity",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        if (valid(bad[i]) != 0)
            fail_msg("should be rejected: %s", bad[i]);
    }
    /* JSON that jsonb refuses: -1, so it is neither stored as a string nor
     * sent to the INSERT as JSON without the writer knowing (issue 10 #3) */
    const char *unstorable[] = {
        "\"\\u0000\"", "{\"k\":\"nk\\u0000A\"}", "\"\\ud800\"", "\"\\udc00x\"",
        "[\"\\ud800\\u0041\"]",
    };
    for (size_t i = 0; i < sizeof unstorable / sizeof unstorable[0]; i++) {
        if (valid(unstorable[i]) != -1)
            fail_msg("should be JSON that jsonb refuses: %s", unstorable[i]);
    }
    /* a NUL byte inside the text */
    assert_false(json_valid("{\"a\":1}\0", 8));
    /* any depth is followed without recursion (jsonb itself accepts
     * thousands of levels; issue 10: 256 was too few) */
    size_t d = 200000;
    char *deep = malloc(2 * d + 1);
    memset(deep, '[', d);
    memset(deep + d, ']', d);
    deep[2 * d] = '\0';
    assert_int_equal(valid(deep), 1);
    deep[2 * d - 1] = '}'; /* mismatched at the outermost level */
    assert_false(valid(deep));
    deep[2 * d - 1] = ']';
    deep[d] = '{'; /* an object where an array closes */
    assert_false(valid(deep));
    for (size_t i = 0; i < d; i += 2)
        memcpy(deep + i, "{\"", 2); /* {"{"{"... : keys without colons */
    assert_false(valid(deep));
    free(deep);
    assert_int_equal(valid("[{\"a\":[{\"b\":{}},[]]},{\"c\":[[[1]]]}]"), 1);
    assert_false(valid("[{\"a\":[{\"b\":{}},[]]},{\"c\":[[[1]]]}"));
    assert_false(valid("{\"a\":1,}"));
    assert_false(valid("{\"a\" 1}"));
}

static void nkey_public_key_matches_nats_signatures(void **state)
{
    (void)state;
    unsigned char raw[32];
    for (int i = 0; i < 32; i++)
        raw[i] = (unsigned char)(i * 7 + 3);
    char seed[64], pub[64], err[200];
    assert_int_equal(nats_nkey_encode('U', raw, 1, seed, sizeof seed), 0);
    assert_int_equal(strlen(seed), 58);
    assert_memory_equal(seed, "SU", 2);
    assert_int_equal(nats_nkey_public_from_seed(seed, pub, sizeof pub, err, sizeof err), 0);
    assert_int_equal(strlen(pub), 56);
    assert_int_equal(pub[0], 'U');

    /* nats.c signs with the seed; the signature must verify with the key we derived */
    assert_int_equal(nats_Open(-1), NATS_OK);
    unsigned char *sig = NULL;
    int siglen = 0;
    assert_int_equal(nats_Sign(seed, "nonce-123", &sig, &siglen), NATS_OK);
    assert_int_equal(siglen, 64);
    EVP_PKEY *priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw, 32);
    unsigned char pubraw[32];
    size_t publen = sizeof pubraw;
    assert_int_equal(EVP_PKEY_get_raw_public_key(priv, pubraw, &publen), 1);
    char expect[64];
    nats_nkey_encode('U', pubraw, 0, expect, sizeof expect);
    assert_string_equal(pub, expect);
    EVP_PKEY *pk = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, pubraw, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    assert_int_equal(EVP_DigestVerifyInit(md, NULL, NULL, NULL, pk), 1);
    assert_int_equal(EVP_DigestVerify(md, sig, (size_t)siglen, (const unsigned char *)"nonce-123", 9), 1);
    EVP_MD_CTX_free(md);
    EVP_PKEY_free(pk);
    EVP_PKEY_free(priv);
    free(sig);

    /* a damaged seed is refused */
    seed[10] = seed[10] == 'A' ? 'B' : 'A';
    assert_int_equal(nats_nkey_public_from_seed(seed, pub, sizeof pub, err, sizeof err), -1);
    assert_non_null(strstr(err, "checksum"));
    assert_int_equal(nats_nkey_public_from_seed("not a seed", pub, sizeof pub, err, sizeof err), -1);
}

/* Parse a JSON config with the connection keys; returns 0/-1 and err. */
static int conn_parse(const char *json, char *err, size_t errlen, relay_buf *describe)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_nats_conn c;
    memset(&c, 0, sizeof c);
    int rc = nats_conn_parse(&c, cfg, "sink", "p", err, errlen);
    if (rc == 0 && describe)
        nats_conn_describe(&c, describe);
    nats_conn_free(&c);
    json_decref(cfg);
    return rc;
}

static void connection_keys_are_checked(void **state)
{
    (void)state;
    char err[512];
    relay_buf d = {0};
    assert_int_equal(conn_parse("{\"url\":\"nats://relay:s3cret@h1:4222, nats://h2:4222\"}", err,
                                sizeof err, &d), 0);
    assert_null(strstr(d.data, "s3cret"));
    assert_non_null(strstr(d.data, "\"url\":\"nats://h1:4222,nats://h2:4222\""));
    buf_free(&d);
    assert_int_equal(conn_parse("{}", err, sizeof err, &d), 0); /* default URL */
    assert_non_null(strstr(d.data, RELAY_NATS_DEFAULT_URL));
    buf_free(&d);

    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"url\":\" , \"}", "sink.url: no server URL"},
        {"{\"password\":\"x\"}", "sink.password: needs sink.user"},
        {"{\"user\":\"x\"}", "sink.user: needs sink.password"},
        {"{\"user\":\"u\",\"password\":\"p\",\"token\":\"t\"}", "sink.token: cannot be combined"},
        {"{\"nkey_seed\":\"SUXX\"}", "sink.nkey_seed: not an NKey seed"},
        {"{\"nkey_seed\":\"SAAGNJOZTRPYYXG2NJX3ZNGXYUSDYX2BWO447W3SHG6XQ7U66RWHQ3JUXM\"}",
         "sink.nkey_seed: not a user NKey seed"},
        {"{\"nkey\":\"UABC\"}", "sink.nkey: needs sink.nkey_seed"},
        {"{\"tls_cert\":\"/c.pem\"}", "sink.tls_cert: needs sink.tls_key"},
        {"{\"tls\":false,\"tls_ca\":\"/ca.pem\"}", "sink.tls: false, but sink.tls_ca is set"},
        {"{\"connect_timeout_ms\":5}", "sink.connect_timeout_ms"},
        {"{\"url\":42}", "sink.url"},
    };
    /* The checks below are about the keys; host paths are allowed (the
     * --allow-path check itself is the last case). */
    char why[512];
    hostpath_reset();
    assert_int_equal(hostpath_allow("/", why, sizeof why), 0);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (conn_parse(cases[i].cfg, err, sizeof err, NULL) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
    hostpath_reset();
    assert_int_equal(conn_parse("{\"tls_ca\":\"/etc/ssl/ca.pem\"}", err, sizeof err, NULL), -1);
    assert_non_null(strstr(err, "sink.tls_ca: /etc/ssl/ca.pem is not a path this relay may use"));
}

static int sink_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_sink *s = relay_sink_nats_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_sink_nats_ops.destroy(s);
    return 0;
}

static void sink_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(sink_create("{\"type\":\"nats\",\"stream\":\"ORDERS\",\"subject_template\":"
                                 "\"app.{stream_table}.{op}-x.{{lit}}\",\"format\":\"msgpack\","
                                 "\"create_stream\":true,\"subjects\":[\"app.>\"],"
                                 "\"storage\":\"memory\",\"max_in_flight\":10}",
                                 err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"nats\"}", "sink.stream"},
        {"{\"type\":\"nats\",\"stream\":\"A.B\"}", "sink.stream: \"A.B\" is not a valid stream name"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"a.{nope}\"}", "unknown variable {nope}"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"a.*.{op}\"}", "not a valid NATS subject"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"a.>\"}", "not a valid NATS subject"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"a b.{op}\"}", "not a valid NATS subject"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"a..{op}\"}", "empty token"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\".{op}\"}", "empty token"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject_template\":\"{op}.\"}", "empty token"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"max_in_flight\":0}", "sink.max_in_flight: 0 is out of range"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"storage\":\"disk\"}", "sink.storage"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subjects\":[]}", "sink.subjects"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subjects\":[1]}", "sink.subjects[0]"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"format\":\"xml\"}", "sink.format"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"streem\":\"x\"}", "sink.streem"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"user\":\"u\"}", "sink.user: needs sink.password"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (sink_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

static int source_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_source *s = relay_source_nats_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_source_nats_ops.destroy(s);
    return 0;
}

static void source_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(source_create("{\"type\":\"nats\",\"stream\":\"CMDS\",\"subject\":\"cmd.>\","
                                   "\"durable_name\":\"relay\",\"deliver_policy\":\"last_per_subject\","
                                   "\"ack_wait_seconds\":5,\"max_deliver\":3,\"batch_size\":100}",
                                   err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"nats\"}", "source.stream"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"durable_name\":\"a.b\"}", "source.durable_name"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"subject\":\"a..b\"}", "source.subject"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"deliver_policy\":\"first\"}", "source.deliver_policy"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"ack_wait_seconds\":0}", "source.ack_wait_seconds"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"max_deliver\":0}", "source.max_deliver"},
        {"{\"type\":\"nats\",\"stream\":\"S\",\"consumer\":\"x\"}", "source.consumer"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (source_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

/* PubAcks as nats-server 2.9 writes them (JetStream wire API). */
static void puback_is_decoded(void **state)
{
    (void)state;
    relay_puback pa;
    const char *ok = "{\"stream\":\"ORDERS\",\"seq\":42}";
    assert_int_equal(nats_puback_parse(ok, strlen(ok), &pa), 0);
    assert_int_equal(pa.stored, 1);
    assert_string_equal(pa.stream, "ORDERS");
    assert_true(pa.seq == 42);
    assert_int_equal(pa.duplicate, 0);

    const char *dup = "{\"stream\":\"ORDERS\",\"seq\":18446744073709551615,\"duplicate\":true}";
    assert_int_equal(nats_puback_parse(dup, strlen(dup), &pa), 0);
    assert_int_equal(pa.stored, 1);
    assert_true(pa.seq == UINT64_MAX);
    assert_int_equal(pa.duplicate, 1);

    const char *full = "{\"error\":{\"code\":503,\"err_code\":10077,\"description\":"
                       "\"maximum messages exceeded\"},\"stream\":\"CAP\",\"seq\":0}";
    assert_int_equal(nats_puback_parse(full, strlen(full), &pa), 0);
    assert_int_equal(pa.stored, 0); /* an error wins over stream and seq */
    assert_int_equal(pa.code, 503);
    assert_int_equal(pa.err_code, 10077);
    assert_string_equal(pa.description, "maximum messages exceeded");

    /* not NUL-terminated: only len bytes are read */
    char cut[] = {'{', '"', 's', 't', 'r', 'e', 'a', 'm', '"', ':', '"', 'S', '"', ',', '"', 's',
                  'e', 'q', '"', ':', '7', '}', 'X'};
    assert_int_equal(nats_puback_parse(cut, sizeof cut - 1, &pa), 0);
    assert_true(pa.seq == 7);
}

static void non_pubacks_are_refused(void **state)
{
    (void)state;
    const char *bad[] = {
        "", "[]", "{}", "{\"stream\":\"S\"}", "{\"seq\":1}", "{\"stream\":1,\"seq\":1}",
        "{\"stream\":\"S\",\"seq\":-1}", "{\"stream\":\"S\",\"seq\":1.5}",
        "{\"stream\":\"S\",\"seq\":18446744073709551616}", "{\"stream\":\"S\",\"seq\":1}x",
        "{\"stream\":\"S\",\"seq\":1", "{\"error\":\"text\"}", "+OK",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        relay_puback pa;
        if (nats_puback_parse(bad[i], strlen(bad[i]), &pa) != -1)
            fail_msg("accepted as a PubAck: %s", bad[i]);
    }
}

int main(void)
{
    /* The paths these tests name are checked for their keys, not for
     * --allow-path (the integration tests cover that): allow every path. */
    char allow_err[256];
    if (hostpath_allow("/", allow_err, sizeof allow_err) < 0) {
        fprintf(stderr, "%s\n", allow_err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_check_accepts_json),
        cmocka_unit_test(json_check_rejects_the_rest),
        cmocka_unit_test(nkey_public_key_matches_nats_signatures),
        cmocka_unit_test(connection_keys_are_checked),
        cmocka_unit_test(sink_config_is_checked),
        cmocka_unit_test(source_config_is_checked),
        cmocka_unit_test(puback_is_decoded),
        cmocka_unit_test(non_pubacks_are_refused),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    nats_Close();
    return rc;
}
