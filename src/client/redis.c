/*
 * client/redis.c - connection and error handling shared by the Redis Streams
 * sink (src/sink/redis.c) and source (src/source/redis.c), on hiredis 0.14.
 *
 * One relay_redis_conn wraps one blocking redisContext. Blocking is what
 * both backends need: the sink appends a whole batch of commands
 * (redisAppendCommandArgv) and then reads every reply (redisGetReply), which
 * hiredis turns into one write of the pipeline and a stream of reads; the
 * source blocks in XREADGROUP ... BLOCK for at most block_ms. The socket
 * timeout (command_timeout_ms, plus block_ms for the source) bounds every
 * call, so a silent server is noticed and the worker's shutdown is never
 * held up for long.
 *
 * hiredis marks a context it can no longer use (I/O error, EOF, protocol
 * error) with ctx->err; such a context is freed at once (redis_conn_fail)
 * and the next open() connects again, with AUTH and SELECT. An error reply
 * (REDIS_REPLY_ERROR) leaves the connection usable; redis_error_classify()
 * maps its code to what the caller should do.
 *
 * URL grammar (the one redis-cli -u and redis-py accept, minus options):
 *   redis://[[user]:password@]host[:port][/db]
 * The user info ends at the LAST '@', so a password holding '@', ':' or '/'
 * needs no encoding; %XX sequences in user and password are decoded.
 */
#include "client/redis.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "config.h"

/* ---- URL ------------------------------------------------------------------ */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Copy s[0..n) decoding %XX; a '%' not followed by two hex digits stays. */
static char *percent_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1), *o = out;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval((unsigned char)s[i + 1]) >= 0 &&
            hexval((unsigned char)s[i + 2]) >= 0) {
            *o++ = (char)(hexval((unsigned char)s[i + 1]) * 16 + hexval((unsigned char)s[i + 2]));
            i += 2;
        } else {
            *o++ = s[i];
        }
    }
    *o = '\0';
    return out;
}

/* A decimal number in s[0..n), within [min, max]. Returns 0 or -1. */
static int parse_decimal(const char *s, size_t n, long min, long max, int *out)
{
    if (n == 0 || n > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < min || v > max)
        return -1;
    *out = (int)v;
    return 0;
}

int redis_url_parse(const char *url, const char *key, relay_redis_url *out, char *err,
                    size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen, "%s: rediss:// (TLS) is not supported: this build's hiredis (0.14) "
                 "has no TLS; use a TLS tunnel (stunnel, spiped) to a local redis:// address",
                 key);
        return -1;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        snprintf(err, errlen, "%s: expected redis://[[user]:password@]host[:port][/db]", key);
        return -1;
    }
    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (colon > p)
                out->user = percent_decode(p, (size_t)(colon - p));
            out->password = percent_decode(colon + 1, (size_t)(at - colon - 1));
        } else if (at > p) {
            /* "redis://secret@host": redis-cli reads a lone user info as the password */
            out->password = percent_decode(p, (size_t)(at - p));
        }
        p = at + 1;
    }
    const char *host_end;
    const char *rest;
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (!host_end) {
            snprintf(err, errlen, "%s: unterminated IPv6 address (missing ']')", key);
            goto fail;
        }
        out->host = xstrndup(p + 1, (size_t)(host_end - p - 1));
        rest = host_end + 1;
    } else {
        host_end = p + strcspn(p, ":/?#");
        out->host = xstrndup(p, (size_t)(host_end - p));
        rest = host_end;
    }
    if (!out->host[0]) {
        snprintf(err, errlen, "%s: no host name", key);
        goto fail;
    }
    if (*rest == ':') {
        const char *pe = rest + 1 + strcspn(rest + 1, "/?#");
        if (parse_decimal(rest + 1, (size_t)(pe - rest - 1), 1, 65535, &out->port) < 0) {
            snprintf(err, errlen, "%s: the port must be a number from 1 to 65535", key);
            goto fail;
        }
        rest = pe;
    }
    if (*rest == '/') {
        rest++;
        size_t n = strcspn(rest, "?#");
        if (n > 0 && parse_decimal(rest, n, 0, 1000000, &out->db) < 0) {
            snprintf(err, errlen, "%s: the database (after the '/') must be a number", key);
            goto fail;
        }
        rest += n;
    }
    if (*rest) {
        snprintf(err, errlen, "%s: unexpected \"%s\" after the address (URL options are not "
                 "supported; use the config keys)", key, rest);
        goto fail;
    }
    return 0;
fail:
    redis_url_free(out);
    return -1;
}

void redis_url_free(relay_redis_url *u)
{
    free(u->host);
    free(u->user);
    if (u->password) {
        memset(u->password, 0, strlen(u->password));
        free(u->password);
    }
    memset(u, 0, sizeof *u);
}

void redis_url_display(const relay_redis_url *u, relay_buf *out)
{
    buf_puts(out, "redis://");
    if (u->user) {
        buf_puts(out, u->user);
        buf_putc(out, '@');
    }
    if (strchr(u->host, ':'))
        buf_printf(out, "[%s]:%d/%d", u->host, u->port, u->db);
    else
        buf_printf(out, "%s:%d/%d", u->host, u->port, u->db);
}

/* ---- error replies ------------------------------------------------------- */

static int has_code(const char *text, size_t len, const char *code)
{
    size_t n = strlen(code);
    return len >= n && memcmp(text, code, n) == 0 && (len == n || text[n] == ' ');
}

redis_err_class redis_error_classify(const char *text, size_t len)
{
    static const char bad_bulk[] = "ERR Protocol error: invalid bulk length";
    if (!text)
        return REDIS_ERR_TRANSIENT;
    if (has_code(text, len, "WRONGTYPE"))
        return REDIS_ERR_WRONGTYPE;
    if (has_code(text, len, "NOSCRIPT"))
        return REDIS_ERR_NOSCRIPT;
    if (has_code(text, len, "NOGROUP"))
        return REDIS_ERR_NOGROUP;
    if (len >= sizeof bad_bulk - 1 && memcmp(text, bad_bulk, sizeof bad_bulk - 1) == 0)
        return REDIS_ERR_MESSAGE;
    return REDIS_ERR_TRANSIENT;
}

/* ---- connection ---------------------------------------------------------- */

int redis_conn_parse(relay_redis_conn *c, const json_t *cfg, const char *path, char *err,
                     size_t errlen)
{
    const char *url;
    char key[32];
    c->path = path;
    snprintf(key, sizeof key, "%s.url", path);
    if (cfg_str(cfg, path, "url", RELAY_REDIS_DEFAULT_URL, &url, err, errlen) < 0 ||
        redis_url_parse(url, key, &c->url, err, errlen) < 0 ||
        cfg_int(cfg, path, "connect_timeout_ms", 2000, 1, 600000, &c->connect_timeout_ms, err,
                errlen) < 0 ||
        cfg_int(cfg, path, "command_timeout_ms", 5000, 1, 600000, &c->command_timeout_ms, err,
                errlen) < 0)
        return -1;
    relay_buf d = {0};
    redis_url_display(&c->url, &d);
    c->url_display = buf_steal(&d);
    return 0;
}

static struct timeval tv_ms(int64_t ms)
{
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

int redis_conn_ok(const relay_redis_conn *c)
{
    return c->ctx && c->ctx->err == 0;
}

void redis_conn_close(relay_redis_conn *c)
{
    if (c->ctx) {
        redisFree(c->ctx);
        c->ctx = NULL;
    }
}

void redis_conn_fail(relay_redis_conn *c, char *err, size_t errlen)
{
    const char *why = c->ctx && c->ctx->err ? c->ctx->errstr : "not connected";
    if (c->ctx && c->ctx->err == REDIS_ERR_EOF)
        why = "connection closed by the server";
    /* a socket timeout (SO_RCVTIMEO/SO_SNDTIMEO) is EAGAIN to hiredis */
    if (c->ctx && c->ctx->err == REDIS_ERR_IO && strstr(c->ctx->errstr, "temporarily unavailable"))
        snprintf(err, errlen, "redis %s: no answer within command_timeout_ms (%" PRId64 " ms)",
                 c->url_display, c->command_timeout_ms);
    else
        snprintf(err, errlen, "redis %s: %s", c->url_display, why);
    redis_conn_close(c);
}

redisReply *redis_conn_command(relay_redis_conn *c, int argc, const char **argv,
                               const size_t *argvlen, char *err, size_t errlen)
{
    if (!redis_conn_ok(c)) {
        redis_conn_fail(c, err, errlen);
        return NULL;
    }
    redisReply *r = redisCommandArgv(c->ctx, argc, argv, argvlen);
    if (!r)
        redis_conn_fail(c, err, errlen);
    return r;
}

int redis_conn_set_timeout(relay_redis_conn *c, int64_t extra_ms, char *err, size_t errlen)
{
    if (!redis_conn_ok(c) ||
        redisSetTimeout(c->ctx, tv_ms(c->command_timeout_ms + extra_ms)) != REDIS_OK) {
        redis_conn_fail(c, err, errlen);
        return -1;
    }
    return 0;
}

/* Run a setup command; an error reply is reported as `what` + its text. */
static int setup_command(relay_redis_conn *c, const char *what, int argc, const char **argv,
                         char *err, size_t errlen)
{
    redisReply *r = redis_conn_command(c, argc, argv, NULL, err, errlen);
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "%s.url: %s refused by redis %s: %.*s", c->path, what,
                 c->url_display, (int)r->len, r->str);
        freeReplyObject(r);
        redis_conn_close(c);
        return -1;
    }
    freeReplyObject(r);
    return 0;
}

int redis_conn_open(relay_redis_conn *c, char *err, size_t errlen)
{
    if (redis_conn_ok(c))
        return 0;
    redis_conn_close(c);
    c->ctx = redisConnectWithTimeout(c->url.host, c->url.port, tv_ms(c->connect_timeout_ms));
    if (!c->ctx || c->ctx->err) {
        snprintf(err, errlen, "cannot connect to redis %s: %s", c->url_display,
                 c->ctx ? c->ctx->errstr : "out of memory");
        redis_conn_close(c);
        return -1;
    }
    if (redisSetTimeout(c->ctx, tv_ms(c->command_timeout_ms)) != REDIS_OK ||
        redisEnableKeepAlive(c->ctx) != REDIS_OK) {
        redis_conn_fail(c, err, errlen);
        return -1;
    }
    if (c->url.password) {
        const char *auth[3] = {"AUTH", c->url.user ? c->url.user : c->url.password,
                               c->url.password};
        if (setup_command(c, "AUTH", c->url.user ? 3 : 2, auth, err, errlen) < 0)
            return -1;
    }
    if (c->url.db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", c->url.db);
        const char *sel[2] = {"SELECT", db};
        if (setup_command(c, "SELECT", 2, sel, err, errlen) < 0)
            return -1;
    }
    const char *ping[1] = {"PING"};
    if (setup_command(c, "PING", 1, ping, err, errlen) < 0)
        return -1;
    c->connects++;
    return 0;
}

void redis_conn_free(relay_redis_conn *c)
{
    redis_conn_close(c);
    redis_url_free(&c->url);
    free(c->url_display);
    c->url_display = NULL;
}

void redis_conn_describe(const relay_redis_conn *c, relay_buf *out)
{
    buf_puts(out, "\"url\":");
    buf_put_json_str(out, c->url_display, strlen(c->url_display));
    buf_printf(out, ",\"connected\":%s,\"connects\":%" PRIu64, redis_conn_ok(c) ? "true" : "false",
               c->connects);
}
