/*
 * client/webhook.c - HMAC-SHA256 signatures and constant-time comparisons for
 * the webhook sink and receiver (scheme in client/webhook.h).
 *
 * OpenSSL 3 is used through its non-deprecated interfaces only: EVP_MAC for
 * HMAC (fed in three pieces, so the body is never copied to prepend the
 * timestamp) and EVP_MD for SHA-256. Comparisons of secrets go through
 * CRYPTO_memcmp, whose running time does not depend on the data.
 */
#include "client/webhook.h"

#include <ctype.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "buf.h"

#define SHA256_LEN 32

struct webhook_sha256 {
    EVP_MD_CTX *ctx;
    int failed;
};

static void to_hex(const unsigned char *md, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[md[i] >> 4];
        out[2 * i + 1] = digits[md[i] & 15];
    }
    out[2 * n] = '\0';
}

int webhook_hmac_hex(const char *secret, size_t secret_len, const char *timestamp,
                     const void *body, size_t body_len, char out[WEBHOOK_HEX_LEN])
{
    int rc = -1;
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac ? EVP_MAC_CTX_new(mac) : NULL;
    char digest_name[] = "SHA256";
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest_name, 0),
        OSSL_PARAM_construct_end(),
    };
    unsigned char md[EVP_MAX_MD_SIZE];
    size_t mdlen = 0;
    if (ctx && EVP_MAC_init(ctx, (const unsigned char *)secret, secret_len, params) == 1 &&
        EVP_MAC_update(ctx, (const unsigned char *)timestamp, strlen(timestamp)) == 1 &&
        EVP_MAC_update(ctx, (const unsigned char *)".", 1) == 1 &&
        (body_len == 0 || EVP_MAC_update(ctx, body, body_len) == 1) &&
        EVP_MAC_final(ctx, md, &mdlen, sizeof md) == 1 && mdlen == SHA256_LEN) {
        to_hex(md, mdlen, out);
        rc = 0;
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

webhook_sha256 *webhook_sha256_begin(void)
{
    webhook_sha256 *h = xcalloc(1, sizeof *h);
    h->ctx = EVP_MD_CTX_new();
    if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1)
        h->failed = 1;
    return h;
}

void webhook_sha256_add(webhook_sha256 *h, const void *data, size_t len)
{
    if (!h->failed && len > 0 && EVP_DigestUpdate(h->ctx, data, len) != 1)
        h->failed = 1;
}

int webhook_sha256_end(webhook_sha256 *h, char out[WEBHOOK_HEX_LEN])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int rc = -1;
    if (!h->failed && EVP_DigestFinal_ex(h->ctx, md, &mdlen) == 1 && mdlen == SHA256_LEN) {
        to_hex(md, mdlen, out);
        rc = 0;
    }
    EVP_MD_CTX_free(h->ctx);
    free(h);
    return rc;
}

int webhook_sha256_hex(const void *data, size_t len, char out[WEBHOOK_HEX_LEN])
{
    webhook_sha256 *h = webhook_sha256_begin();
    webhook_sha256_add(h, data, len);
    return webhook_sha256_end(h, out);
}

int webhook_secret_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    char ha[WEBHOOK_HEX_LEN], hb[WEBHOOK_HEX_LEN];
    if (webhook_sha256_hex(a, alen, ha) < 0 || webhook_sha256_hex(b, blen, hb) < 0)
        return 0;
    return CRYPTO_memcmp(ha, hb, WEBHOOK_HEX_LEN - 1) == 0;
}

/* Parse a decimal unix timestamp (digits only, at most 12 of them). */
static int parse_timestamp(const char *s, int64_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 12 || strspn(s, "0123456789") != n)
        return -1;
    *out = strtoll(s, NULL, 10);
    return 0;
}

int webhook_check_signature_headers(const char *timestamp, const char *signature, int64_t now_s,
                                    int64_t tolerance_s, const char **why)
{
    int64_t ts;
    if (!timestamp || !*timestamp) {
        *why = "missing " WEBHOOK_TIMESTAMP_HEADER " header";
        return -1;
    }
    if (!signature || !*signature) {
        *why = "missing " WEBHOOK_SIGNATURE_HEADER " header";
        return -1;
    }
    if (parse_timestamp(timestamp, &ts) < 0) {
        *why = "malformed " WEBHOOK_TIMESTAMP_HEADER " header (expected unix seconds)";
        return -1;
    }
    if (ts < now_s - tolerance_s || ts > now_s + tolerance_s) {
        *why = "stale " WEBHOOK_TIMESTAMP_HEADER " (outside the accepted window)";
        return -1;
    }
    size_t plen = strlen(WEBHOOK_SIGNATURE_PREFIX);
    if (strncasecmp(signature, WEBHOOK_SIGNATURE_PREFIX, plen) != 0 ||
        strlen(signature + plen) != WEBHOOK_HEX_LEN - 1) {
        *why = "malformed " WEBHOOK_SIGNATURE_HEADER " header (expected sha256=<64 hex digits>)";
        return -1;
    }
    return 0;
}

int webhook_verify(const char *secret, size_t secret_len, const char *timestamp,
                   const char *signature, const void *body, size_t body_len, int64_t now_s,
                   int64_t tolerance_s, const char **why)
{
    if (webhook_check_signature_headers(timestamp, signature, now_s, tolerance_s, why) < 0)
        return -1;
    size_t plen = strlen(WEBHOOK_SIGNATURE_PREFIX);
    char given[WEBHOOK_HEX_LEN], expected[WEBHOOK_HEX_LEN];
    for (size_t i = 0; i < WEBHOOK_HEX_LEN - 1; i++)
        given[i] = (char)tolower((unsigned char)signature[plen + i]);
    given[WEBHOOK_HEX_LEN - 1] = '\0';
    if (webhook_hmac_hex(secret, secret_len, timestamp, body, body_len, expected) < 0) {
        *why = "signature check failed (libcrypto error)";
        return -1;
    }
    if (CRYPTO_memcmp(given, expected, WEBHOOK_HEX_LEN - 1) != 0) {
        *why = "signature does not match";
        return -1;
    }
    return 0;
}
