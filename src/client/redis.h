/*
 * client/redis.h - what the Redis Streams sink (src/sink/redis.c) and source
 * (src/source/redis.c) share: the connection URL, AUTH and SELECT, connect
 * and command timeouts, one blocking hiredis connection, and the
 * classification of Redis error replies.
 *
 * Connection keys (in the pipeline's "sink" or "source" object):
 *   url                 redis://[[user]:password@]host[:port][/db]
 *                       (default redis://127.0.0.1:6379/0). user and password
 *                       may be %XX-encoded; put secrets in ${env:NAME} /
 *                       ${file:/path} references. rediss:// (TLS) is refused:
 *                       hiredis 0.14 (Debian 12) has no TLS support.
 *   connect_timeout_ms  TCP connect timeout (2000)
 *   command_timeout_ms  how long one read or write on the socket may block
 *                       (5000); a server that stops answering for longer
 *                       counts as down
 * The password is never logged; describe() shows the URL without it.
 */
#ifndef RELAY_CLIENT_REDIS_H
#define RELAY_CLIENT_REDIS_H

#include <hiredis.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The connection keys, for a backend's cfg_known_keys() list. */
#define RELAY_REDIS_CONN_KEYS "url", "connect_timeout_ms", "command_timeout_ms"

#define RELAY_REDIS_DEFAULT_URL "redis://127.0.0.1:6379/0"

/* A parsed redis:// URL. Strings are malloc'd (redis_url_free). */
typedef struct relay_redis_url {
    char *host;     /* without brackets for IPv6 */
    int port;       /* 6379 when absent */
    char *user;     /* NULL: no user (AUTH password, or the "default" user) */
    char *password; /* NULL: no AUTH */
    int db;         /* SELECT index, 0 when absent */
} relay_redis_url;

/* Parse `url` (redis://[[user]:password@]host[:port][/db]). `key` names the
 * config key in messages ("sink.url"). Returns 0, or -1 with err naming the
 * key and the problem (never the password). `out` must be zeroed. */
int redis_url_parse(const char *url, const char *key, relay_redis_url *out, char *err,
                    size_t errlen);
void redis_url_free(relay_redis_url *u);
/* Append "redis://[user@]host:port/db" (no password) to `out`. */
void redis_url_display(const relay_redis_url *u, relay_buf *out);

/* How a Redis error reply is handled, by its error code (the first word).
 * Every other error (OOM, LOADING, BUSY, NOAUTH, WRONGPASS, NOPERM,
 * READONLY, MISCONF, MOVED, ...) is REDIS_ERR_TRANSIENT: the server's state
 * or our rights, which an operator can change; the command is retried. */
typedef enum {
    REDIS_ERR_TRANSIENT = 0, /* retry the command */
    REDIS_ERR_WRONGTYPE,     /* the key holds another type than a stream */
    REDIS_ERR_NOSCRIPT,      /* EVALSHA of a script the server does not have */
    REDIS_ERR_NOGROUP,       /* the consumer group (or its stream) does not exist */
    REDIS_ERR_MESSAGE,       /* this command can never succeed: a value larger than
                                proto-max-bulk-len ("Protocol error: invalid bulk
                                length"; the server then closes the connection) */
} redis_err_class;

/* Classify an error reply text (e.g. "WRONGTYPE Operation against a key
 * holding the wrong kind of value"). Pure; `len` bytes of `text`. */
redis_err_class redis_error_classify(const char *text, size_t len);

typedef struct relay_redis_conn {
    /* configuration */
    const char *path;       /* "sink" or "source", for messages */
    relay_redis_url url;
    char *url_display;      /* the URL without password */
    int64_t connect_timeout_ms;
    int64_t command_timeout_ms;
    /* state */
    redisContext *ctx;      /* NULL while disconnected */
    uint64_t connects;      /* successful connections so far */
} relay_redis_conn;

/* Parse the connection keys of `cfg` (path "sink"/"source"). Returns 0, or
 * -1 with err naming the key. `c` must be zeroed; free with redis_conn_free. */
int redis_conn_parse(relay_redis_conn *c, const json_t *cfg, const char *path, char *err,
                     size_t errlen);

/* Connect when not connected: TCP connect (connect_timeout_ms), socket
 * timeouts (command_timeout_ms), keepalive, AUTH, SELECT, PING. Returns 0
 * when the connection is ready, or -1 with err (unreachable, refused
 * password, ...); the connection is then closed. */
int redis_conn_open(relay_redis_conn *c, char *err, size_t errlen);

/* 1 when the connection exists and hiredis saw no I/O or protocol error. */
int redis_conn_ok(const relay_redis_conn *c);

/* After a failed call on the connection: err = "redis <url>: <hiredis error>"
 * and the connection is closed (the next open() reconnects). */
void redis_conn_fail(relay_redis_conn *c, char *err, size_t errlen);

/* Run one command (argv, binary safe) and return its reply (freeReplyObject),
 * or NULL after an I/O error (err set, connection closed). An error reply is
 * returned as a reply of type REDIS_REPLY_ERROR. */
redisReply *redis_conn_command(relay_redis_conn *c, int argc, const char **argv,
                               const size_t *argvlen, char *err, size_t errlen);

/* Let the next calls block up to command_timeout_ms + extra_ms (e.g. the
 * BLOCK time of an XREADGROUP); extra_ms = 0 restores the normal timeout.
 * Returns 0, or -1 (connection closed, err set). */
int redis_conn_set_timeout(relay_redis_conn *c, int64_t extra_ms, char *err, size_t errlen);

void redis_conn_close(relay_redis_conn *c);
void redis_conn_free(relay_redis_conn *c);

/* Append `"url":...,"connected":true|false,"connects":N` (no braces) for
 * /status. */
void redis_conn_describe(const relay_redis_conn *c, relay_buf *out);

#endif
