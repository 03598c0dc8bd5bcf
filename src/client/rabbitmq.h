/*
 * client/rabbitmq.h - what the RabbitMQ sink (src/sink/rabbitmq.c) and the
 * RabbitMQ source (src/source/rabbitmq.c) share: the connection keys, one
 * AMQP 0-9-1 connection with one channel (rabbitmq-c), the broker's reply
 * codes and texts, and the headers-table decoder of received messages.
 *
 * Connection keys (in the pipeline's "sink" or "source" object):
 *   url                 amqp://user:password@host:port/vhost (default
 *                       amqp://guest:guest@127.0.0.1:5672/); amqps://
 *                       means TLS (port 5671 by default). Components are
 *                       percent-decoded: the vhost "/" is written %2F
 *                       ("amqp://h/%2F"); an empty vhost ("amqp://h/" or
 *                       "amqp://h") means "/".
 *   tls_ca_file         CA certificates (PEM) to verify the broker with
 *   tls_cert_file, tls_key_file   client certificate and key (PEM, mutual TLS)
 *   tls_verify          verify the broker's certificate and host name (true;
 *                       rabbitmq-c 0.11 matches DNS names only, not IPs)
 *   heartbeat_seconds   AMQP heartbeat interval (30; 0 turns heartbeats off)
 *   connect_timeout_ms  TCP + TLS + AMQP handshake, and each RPC (5000)
 * The tls_* files are host paths (--allow-path). Secrets belong in
 * ${env:NAME} / ${file:/path} references; describe() shows the URL without
 * the password.
 *
 * Errors.  A broker that closes the channel or the connection sends a reply
 * code and text (AMQP 0-9-1 section 1.9, e.g. "404 NOT_FOUND - no exchange
 * 'x' in vhost '/'"); rmq_reply_text() and rmq_conn_take_close() turn them
 * into the messages the relay logs, and rmq_conn_down() records the loss
 * once (one log line per state change) and clears the health flag.
 *
 * Thread use: a relay_rmq_conn is used by one thread at a time (rabbitmq-c
 * connections are not thread-safe); the sink serialises its keeper thread
 * and the worker with a mutex of its own.
 */
#ifndef RELAY_CLIENT_RABBITMQ_H
#define RELAY_CLIENT_RABBITMQ_H

#include <amqp.h>
#include <jansson.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The connection keys, for a backend's cfg_known_keys() list. */
#define RELAY_RMQ_CONN_KEYS                                                                  \
    "url", "tls_ca_file", "tls_cert_file", "tls_key_file", "tls_verify", "heartbeat_seconds", \
        "connect_timeout_ms"

#define RELAY_RMQ_DEFAULT_URL "amqp://guest:guest@127.0.0.1:5672/"
/* The one channel each connection uses. */
#define RELAY_RMQ_CHANNEL 1

/* A parsed AMQP URL (owned strings). */
typedef struct rmq_url {
    char *host;
    int port;
    char *user, *password;
    char *vhost;
    int tls;      /* amqps:// */
    char *display; /* scheme://user@host:port/vhost-as-written: no password */
} rmq_url;

/* Parse an AMQP URL with rabbitmq-c's amqp_parse_url (percent-decoding
 * every component), applying the defaults above. Returns 0, or -1 with a
 * reason in err (not naming a key). Free with rmq_url_free. */
int rmq_url_parse(const char *url, rmq_url *out, char *err, size_t errlen);
void rmq_url_free(rmq_url *u);

typedef struct relay_rmq_conn {
    /* configuration */
    const char *path;          /* "sink" or "source", for messages */
    char *pipeline;            /* for logs */
    rmq_url url;
    char *tls_ca, *tls_cert, *tls_key;
    int tls_verify;
    int heartbeat_s;
    int64_t connect_timeout_ms;

    /* state */
    amqp_connection_state_t conn; /* NULL while closed */
    int up;                    /* ready: rmq_conn_ready() was called on this connection */
    int logged_down;           /* the loss was logged (one line per state change) */
    atomic_int *health_flag;   /* the stats' sink_up / source_up, or NULL */
    uint64_t connects;         /* successful connections */
    uint64_t losses;           /* connections lost after they were up */
    char server[96];           /* "RabbitMQ 3.10.8", from connection.start */
    char last_error[512];
} relay_rmq_conn;

/* Parse the connection keys of `cfg` (path "sink"/"source"). Returns 0, or
 * -1 with err naming the key. `c` must be zeroed; free with rmq_conn_free. */
int rmq_conn_parse(relay_rmq_conn *c, const json_t *cfg, const char *path,
                   const char *pipeline, char *err, size_t errlen);

/* Connect, log in and open the channel. On a failure err names the URL and
 * the cause (the broker's reply code and text, e.g. "403 ACCESS_REFUSED -
 * Login was refused ... (check the user and password of sink.url)"), and -1
 * is returned; nothing is left open. The backend then sets the channel up
 * (exchange, queue, confirm mode...) and calls rmq_conn_ready(), or
 * rmq_conn_down() when that failed. */
int rmq_conn_open(relay_rmq_conn *c, char *err, size_t errlen);

/* The channel is set up: mark the connection up, set the health flag and
 * log the connection (one line per connection made). */
void rmq_conn_ready(relay_rmq_conn *c);

/* The connection failed (`why`): destroy it without a handshake, remember
 * why (last_error); when it was up, clear the health flag and log one line.
 * A connection that never became ready is not logged here: the worker
 * reports a failed open() once per state change. */
void rmq_conn_down(relay_rmq_conn *c, const char *why);

/* Close politely (channel.close, connection.close) and free the state. */
void rmq_conn_close(relay_rmq_conn *c);
void rmq_conn_free(relay_rmq_conn *c);

/* If `f` is a connection.close or channel.close sent by the broker, answer
 * it (close-ok), put "broker closed the channel: <code> <text>" in err, take
 * the connection down and return the reply code (e.g. 404, 320); else
 * return 0. */
int rmq_conn_take_close(relay_rmq_conn *c, const amqp_frame_t *f, char *err, size_t errlen);

/* The text of an RPC reply that is not AMQP_RESPONSE_NORMAL: the library
 * error, or "broker closed the channel|connection: <code> <text>". */
void rmq_reply_text(amqp_rpc_reply_t r, char *out, size_t outlen);

/* The broker's reply code of a server exception (0 for other replies). */
int rmq_reply_code(amqp_rpc_reply_t r);

/* Check the reply of the last RPC on the channel. Returns 0 when normal;
 * else writes "<what>: <reply text>" to err, takes the connection down and
 * returns the broker's reply code (404, 406, ...) or -1 for a library error. */
int rmq_conn_rpc_check(relay_rmq_conn *c, const char *what, char *err, size_t errlen);

/* Append `"url":...,"connected":...,"server":...,"connects":N,"losses":N`
 * (no braces) for /status. */
void rmq_conn_describe(relay_rmq_conn *c, relay_buf *out);

/* ---- received messages ------------------------------------------------ */

/* The fields a reverse source takes from a message's headers table. Values
 * point into the table (bytes, not NUL-terminated; len 0 = absent). A
 * string or byte-array value is taken as is; an integer, decimal, float,
 * boolean or timestamp is written as text into `scratch` (the value then
 * points there). Names are compared case-insensitively; nested tables and
 * arrays are not searched. The first non-empty value of a name wins; a
 * value of another kind (table, array, void), or a decimal too long to
 * write, counts as absent. */
typedef struct rmq_header_fields {
    const char *dedup_key;     /* pgtrickle-dedup-key */
    size_t dedup_key_len;
    const char *trace_id;      /* traceparent */
    size_t trace_id_len;
    char scratch[2][48];       /* text forms of non-string values */
} rmq_header_fields;

/* Fill `out` from `headers` (may be NULL or empty). Never fails: a value of
 * an unexpected kind (table, array, void) is ignored. */
void rmq_header_fields_get(const amqp_table_t *headers, rmq_header_fields *out);

#endif
