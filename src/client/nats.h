/*
 * client/nats.h - what the NATS sink and the NATS source share: connection
 * and authentication options, one connection with state tracking, JetStream
 * error texts, and a JSON syntax check for message bodies.
 *
 * Connection keys (in the pipeline's "sink" or "source" object):
 *   url                 nats://host:port, comma-separated for a cluster
 *                       (default nats://127.0.0.1:4222); tls:// implies TLS
 *   user, password      user/password authentication
 *   token               token authentication
 *   nkey_seed           an NKey user seed ("SU..."); the public key is derived
 *   nkey                optional: the public key, checked against the seed
 *   creds_file          a .creds file (user JWT + seed, decentralised auth)
 *   tls                 require TLS (default: true when a tls_* key is set)
 *   tls_ca              CA certificates file to verify the server
 *   tls_cert, tls_key   client certificate and key (mutual TLS)
 *   connect_timeout_ms  TCP + handshake timeout (2000)
 *   reconnect_wait_ms   pause between reconnect attempts (1000)
 * Secrets belong in ${env:NAME} / ${file:/path} references; they are never
 * logged, and describe() only shows the URL with any user:password removed.
 *
 * State.  The connection reconnects by itself (forever) after a loss. Its
 * state changes are logged once each, counted, and reflected at once in the
 * pipeline's health through `health_flag` (the stats' sink_up or source_up),
 * because an idle pipeline would otherwise not notice a lost server until
 * its next publish or poll. A connection that nats.c gave up on (CLOSED,
 * e.g. after an authorization error) is rebuilt by nats_conn_open().
 */
#ifndef RELAY_CLIENT_NATS_H
#define RELAY_CLIENT_NATS_H

#include <jansson.h>
#include <nats/nats.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The connection keys, for a backend's cfg_known_keys() list. */
#define RELAY_NATS_CONN_KEYS                                                                   \
    "url", "user", "password", "token", "nkey_seed", "nkey", "creds_file", "tls", "tls_ca",  \
        "tls_cert", "tls_key", "connect_timeout_ms", "reconnect_wait_ms"

#define RELAY_NATS_DEFAULT_URL "nats://127.0.0.1:4222"

typedef struct relay_nats_conn {
    /* configuration (owned copies) */
    const char *path;          /* "sink" or "source", for messages */
    char *pipeline;            /* pipeline name, for logs */
    char **servers;            /* the URLs, as configured */
    int nservers;
    char *url_display;         /* the URLs with credentials removed */
    char *user, *password, *token;
    char *nkey_seed, *nkey_pub;
    char *creds_file;
    int tls;
    char *tls_ca, *tls_cert, *tls_key;
    int64_t connect_timeout_ms;
    int64_t reconnect_wait_ms;

    /* state */
    natsConnection *nc;
    atomic_int connected;      /* 1 while the connection is up */
    atomic_int closing;        /* our own close: callbacks stay quiet */
    _Atomic uint64_t disconnects;
    _Atomic uint64_t reconnects;
    atomic_int *health_flag;   /* the stats' sink_up / source_up, or NULL */

    pthread_mutex_t mu;        /* guards closed_done and last_error */
    pthread_cond_t cond;
    int closed_done;           /* the closed callback ran */
    char last_error[256];      /* last asynchronous error reported by nats.c */
} relay_nats_conn;

/* Parse the connection keys of `cfg` (path "sink"/"source"). Returns 0, or
 * -1 with err naming the key. `c` must be zeroed; free with nats_conn_free. */
int nats_conn_parse(relay_nats_conn *c, const json_t *cfg, const char *path,
                    const char *pipeline, char *err, size_t errlen);

/* Connect when not connected. Returns 0 when the connection is up, or -1
 * (transient: unreachable, reconnecting, authorization refused) with err. */
int nats_conn_open(relay_nats_conn *c, char *err, size_t errlen);

/* 1 while connected. */
int nats_conn_up(relay_nats_conn *c);

/* Close the connection and wait until nats.c no longer calls back. */
void nats_conn_close(relay_nats_conn *c);
void nats_conn_free(relay_nats_conn *c);

/* Append `"url":...,"connected":...,"server":...,"reconnects":N` (no
 * braces) for /status. */
void nats_conn_describe(relay_nats_conn *c, relay_buf *out);

/* Text for a failed nats.c call: the status text plus the library's last
 * error detail for this thread, and the JetStream error code when set. */
void nats_status_text(natsStatus s, jsErrCode jerr, char *out, size_t outlen);


/* A JetStream PubAck: the server's reply to a message published with a
 * reply subject to a subject a stream captures (JetStream wire API,
 * "Publish acknowledgement" / io.nats.jetstream.api.v1.pub_ack_response):
 *   {"stream":"S","seq":N[,"duplicate":true][,"domain":"D"]}   stored
 *   {"error":{"code":C,"err_code":E,"description":"..."}[,...]} refused
 * Strings are kept raw (escapes not decoded) and cut to the buffer size. */
typedef struct relay_puback {
    int stored;            /* 1: stored, or a duplicate of a stored message */
    char stream[256];      /* stream that stored it (raw JSON string text) */
    uint64_t seq;
    int duplicate;
    int code;              /* refused: HTTP-like status (400, 503, ...) */
    int err_code;          /* refused: JetStream error code (10054: too large) */
    char description[256]; /* refused: the server's text (raw) */
} relay_puback;

/* Parse the body of a PubAck (data[0..len), not NUL-terminated). Returns 0
 * with *out filled, or -1 when the body is neither form above (malformed
 * JSON, no "stream"/"seq" and no "error" object). No allocation. */
int nats_puback_parse(const char *data, size_t len, relay_puback *out);

/* NKeys (also used by the test tools). Derive the public key ("U...",
 * "A...", "O...") of a seed ("SU...", "SA...", "SO..."). Returns 0, or -1
 * with err. `out` needs 57 bytes. */
int nats_nkey_public_from_seed(const char *seed, char *out, size_t outlen, char *err,
                               size_t errlen);
/* Encode a 32-byte ed25519 key of `type` ('U', 'A', 'O', 'N', 'C') as a seed
 * (seed != 0, 59 bytes with the NUL) or a public key (57 bytes). Returns 0,
 * or -1 for an unknown type. */
int nats_nkey_encode(char type, const unsigned char key[32], int seed, char *out, size_t outlen);

#endif
