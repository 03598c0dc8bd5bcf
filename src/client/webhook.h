/*
 * client/webhook.h - HMAC-SHA256 request signatures and constant-time secret
 * comparison, shared by the webhook sink (which signs) and the webhook
 * receiver (which verifies). OpenSSL libcrypto does the hashing.
 *
 * Signature scheme (both directions, documented in docs/backends/webhook.md):
 *   X-Pgtrickle-Timestamp: <unix seconds, decimal>
 *   X-Pgtrickle-Signature: sha256=<lower-case hex HMAC-SHA256(secret, "<timestamp>.<body>")>
 * The signed bytes are exactly the timestamp header value, one '.', and the
 * raw request body.
 */
#ifndef RELAY_CLIENT_WEBHOOK_H
#define RELAY_CLIENT_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

#define WEBHOOK_TIMESTAMP_HEADER "X-Pgtrickle-Timestamp"
#define WEBHOOK_SIGNATURE_HEADER "X-Pgtrickle-Signature"
#define WEBHOOK_FULL_REFRESH_HEADER "X-Pgtrickle-Full-Refresh"
#define WEBHOOK_SIGNATURE_PREFIX "sha256="

/* Lower-case hex of a SHA-256 digest: 64 characters plus the NUL. */
#define WEBHOOK_HEX_LEN 65

/* hex(HMAC-SHA256(secret, timestamp "." body)) into out (NUL-terminated).
 * Returns 0, or -1 when libcrypto fails. */
int webhook_hmac_hex(const char *secret, size_t secret_len, const char *timestamp,
                     const void *body, size_t body_len, char out[WEBHOOK_HEX_LEN]);

/* hex(SHA-256(data)) into out. Returns 0, or -1. */
int webhook_sha256_hex(const void *data, size_t len, char out[WEBHOOK_HEX_LEN]);

/* Incremental SHA-256 (for digests over many pieces, e.g. a batch's keys). */
typedef struct webhook_sha256 webhook_sha256;
webhook_sha256 *webhook_sha256_begin(void);
void webhook_sha256_add(webhook_sha256 *h, const void *data, size_t len);
/* Write the hex digest and free `h`. Returns 0, or -1. */
int webhook_sha256_end(webhook_sha256 *h, char out[WEBHOOK_HEX_LEN]);

/* 1 when a (alen bytes) equals b (blen bytes). The time taken does not
 * depend on where they differ nor on the secret's length: both sides are
 * hashed and the digests compared with CRYPTO_memcmp. */
int webhook_secret_equal(const void *a, size_t alen, const void *b, size_t blen);

/*
 * The checks of webhook_verify() that need no body: both headers present, the
 * timestamp well formed and within tolerance_s of now_s, the signature of the
 * form "sha256=<64 hex digits>". A receiver runs them when the headers are
 * complete, so a request that cannot pass is refused before its body is read.
 * Returns 0, or -1 with a short reason in *why (static text).
 */
int webhook_check_signature_headers(const char *timestamp, const char *signature, int64_t now_s,
                                    int64_t tolerance_s, const char **why);

/*
 * Verify a request signature.
 *   timestamp  the X-Pgtrickle-Timestamp value (may be NULL: missing)
 *   signature  the X-Pgtrickle-Signature value (may be NULL: missing)
 *   now_s      current unix time; tolerance_s the accepted clock skew/age
 * Returns 0 when valid, or -1 with a short reason in *why (static text:
 * "missing signature", "stale timestamp", ...).
 */
int webhook_verify(const char *secret, size_t secret_len, const char *timestamp,
                   const char *signature, const void *body, size_t body_len, int64_t now_s,
                   int64_t tolerance_s, const char **why);

#endif
