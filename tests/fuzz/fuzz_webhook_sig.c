/*
 * fuzz_webhook_sig.c - webhook request signatures (src/client/webhook.c:
 * webhook_verify, webhook_hmac_hex, webhook_secret_equal; the scheme is in
 * src/client/webhook.h).
 *
 * Input: "<secret>\n<X-Pgtrickle-Timestamp>\n<X-Pgtrickle-Signature>\n<body>"
 * (the body takes the rest, any bytes). A timestamp line "-" means the header
 * is missing, so does a signature line "-"; a signature line "=" stands for
 * the correct signature of this secret, timestamp and body. The clock is
 * fixed at 1700000000 with the default tolerance of 300 s.
 *
 * Checks: webhook_verify accepts exactly what a reference verifier accepts
 * (both headers present, 1..12 decimal digits within the window,
 * "sha256=" in any case followed by the 64 hex digits, in any case, of
 * HMAC-SHA256(secret, timestamp "." body)), always says why it refused, and
 * a signature made by webhook_hmac_hex verifies; webhook_secret_equal is
 * byte equality.
 */
#include <ctype.h>
#include <strings.h>

#include "fuzz.h"

#include "client/webhook.h"

#define NOW 1700000000
#define TOLERANCE 300

static int ref_verify(const char *secret, size_t slen, const char *ts, const char *sig,
                      const char *body, size_t blen)
{
    if (!ts || !*ts || !sig || !*sig)
        return -1;
    size_t n = strlen(ts);
    if (n > 12 || strspn(ts, "0123456789") != n)
        return -1;
    long long t = strtoll(ts, NULL, 10);
    if (t < NOW - TOLERANCE || t > NOW + TOLERANCE)
        return -1;
    if (strlen(sig) != 7 + 64 || strncasecmp(sig, "sha256=", 7) != 0)
        return -1;
    char hex[WEBHOOK_HEX_LEN];
    FUZZ_CHECK(webhook_hmac_hex(secret, slen, ts, body, blen, hex) == 0, "HMAC failed");
    for (int i = 0; i < 64; i++)
        if (tolower((unsigned char)sig[7 + i]) != hex[i])
            return -1;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    /* the secret keeps its NUL bytes: it is used with its length */
    const uint8_t *nl = memchr(p, '\n', size);
    size_t slen = (size_t)((nl ? nl : end) - p);
    char *secret = fuzz_strndup(p, slen);
    p = nl ? nl + 1 : end;
    char *ts = fuzz_field(&p, end, '\n');
    char *sig = fuzz_field(&p, end, '\n');
    size_t blen = (size_t)(end - p);
    char *body = malloc(blen ? blen : 1); /* exact size */
    if (blen)
        memcpy(body, p, blen);

    const char *tsv = strcmp(ts, "-") == 0 ? NULL : ts;
    char made[7 + WEBHOOK_HEX_LEN] = "sha256=";
    const char *sigv = sig;
    if (strcmp(sig, "-") == 0) {
        sigv = NULL;
    } else if (strcmp(sig, "=") == 0) {
        FUZZ_CHECK(webhook_hmac_hex(secret, slen, tsv ? tsv : "", body, blen, made + 7) == 0,
                   "HMAC failed");
        sigv = made;
    }

    const char *why = NULL;
    int rc = webhook_verify(secret, slen, tsv, sigv, body, blen, NOW, TOLERANCE, &why);
    int ref = ref_verify(secret, slen, tsv, sigv, body, blen);
    FUZZ_CHECK(rc == ref, "webhook_verify = %d, reference %d (ts \"%.40s\", sig \"%.80s\")", rc,
               ref, tsv ? tsv : "(missing)", sigv ? sigv : "(missing)");
    if (rc < 0)
        FUZZ_CHECK(why && *why, "refused without a reason");

    /* what the sink signs, the receiver accepts (for a timestamp in the window) */
    if (tsv && *tsv && strlen(tsv) <= 12 && strspn(tsv, "0123456789") == strlen(tsv)) {
        long long t = strtoll(tsv, NULL, 10);
        if (t >= NOW - TOLERANCE && t <= NOW + TOLERANCE) {
            char own[7 + WEBHOOK_HEX_LEN] = "sha256=";
            FUZZ_CHECK(webhook_hmac_hex(secret, slen, tsv, body, blen, own + 7) == 0, "HMAC");
            FUZZ_CHECK(webhook_verify(secret, slen, tsv, own, body, blen, NOW, TOLERANCE, &why) == 0,
                       "a signature made by webhook_hmac_hex does not verify: %s", why);
        }
    }

    size_t siglen = strlen(sig);
    int eq = webhook_secret_equal(secret, slen, sig, siglen);
    FUZZ_CHECK(eq == (slen == siglen && memcmp(secret, sig, slen) == 0), "secret_equal = %d", eq);
    FUZZ_CHECK(webhook_secret_equal(body, blen, body, blen) == 1, "secret_equal(x, x)");

    free(secret);
    free(ts);
    free(sig);
    free(body);
    return 0;
}
