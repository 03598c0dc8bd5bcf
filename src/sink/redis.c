/*
 * redis.c - the Redis Streams sink (SPEC sections 5 and 7, row redis), on
 * hiredis.
 *
 * Config (pipeline "sink" object), besides the connection keys of
 * client/redis.h (url, connect_timeout_ms, command_timeout_ms):
 *   stream_key            stream key template (SPEC section 5 variables);
 *                         default pgtrickle:{stream_table} for an outbox,
 *                         cdc:{schema}.{table} for cdc
 *   subject_template      the value of the `subject` field (the source's
 *                         default: pgtrickle.{stream_table}.{op} / cdc.{table}.{op})
 *   maxlen                trim each stream to about this many entries
 *                         (XADD MAXLEN ~ N); 0 = never trim (default)
 *   dedup_window_seconds  0 = off (default); see "Dedup window" below
 *   format                body format: native (default) | msgpack
 *
 * Entries.  Each event is one XADD <key> [MAXLEN ~ N] * with the fields
 *   dedup_key     the event's dedup key (SPEC section 5)
 *   subject       the rendered subject
 *   op            insert | update | delete | truncate | snapshot | refresh
 *   payload       the encoded body (relay_encode(), done by the worker)
 *   full_refresh  "true", only on full-refresh / snapshot events
 *
 * Pipelining.  publish() appends the XADDs of up to PIPELINE_CHUNK messages
 * to hiredis's output buffer (redisAppendCommandArgv: hiredis formats the
 * protocol), writes what the buffer holds every FLUSH_EVERY commands
 * (redisBufferWrite), so the server executes the first XADDs while the rest
 * are formatted, and then reads one reply per command (redisGetReply, whose
 * first call writes the remainder): a chunk costs one round trip. Every
 * reply is checked:
 *   an entry id (bulk string)          MSG_CONFIRMED
 *   nil (dedup script: a repeat)       MSG_CONFIRMED, counted as a duplicate
 *   WRONGTYPE                          MSG_RETRY; the error names the key
 *                                      and its type
 *   "Protocol error: invalid bulk length" (a value over proto-max-bulk-len)
 *                                      MSG_REJECTED (dead-lettered)
 *   NOSCRIPT                           MSG_RETRY; the script is loaded again
 *   any other error (OOM, READONLY, NOAUTH, BUSY, ...)
 *                                      MSG_RETRY with the server's text
 *   connection lost / timed out        the rest of the call MSG_RETRY, the
 *                                      connection is closed
 * A message with a value (payload, dedup key, subject, stream or marker key)
 * larger than the server's proto-max-bulk-len (read with CONFIG GET once
 * per connection) is not sent at all but MSG_REJECTED at once: the server
 * would answer it with a protocol error and drop the connection, taking the
 * rest of the pipeline with it.
 * publish() returns -1 (the worker marks the pipeline's sink down, so
 * /health is degraded) when not a single message of the call was confirmed
 * or rejected: the server is down, refuses writes, or every key is of the
 * wrong type, and each retry would fail alike. Otherwise it returns 0 with
 * the failed messages MSG_RETRY, and the worker republishes only those,
 * with the same dedup keys, after its backoff; such a retried message then
 * lands after the entries that followed it in the failed call.
 *
 * Dedup window.  With dedup_window_seconds > 0 each XADD runs inside a Lua
 * script (EVALSHA, pipelined the same way; SCRIPT LOAD once per
 * connection) that appends only when the marker key
 * "<stream key>:dedup:<dedup key>" does not exist, and then sets the marker
 * to the new entry id with EX window. A batch replayed after a crash
 * between XADD and the outbox offset commit therefore adds no duplicate
 * entry. The check, the append and the marker run atomically on the server
 * (a script is not interleaved with other commands); an XADD error aborts
 * the script before the marker is written, so a failed append is never
 * remembered as done. Cost: one string key per event, kept for the window.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/redis.h"
#include "config.h"
#include "encode.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "worker.h"

/* Commands appended before their replies are read: bounds the memory of one
 * round trip (hiredis's output buffer) for very large batches. */
#define PIPELINE_CHUNK 10000
#define MAX_ARGS 20
/* Commands formatted between two writes to the server within a chunk. */
#define FLUSH_EVERY 256
/* Redis's default proto-max-bulk-len, when the server does not tell. */
#define DEFAULT_MAX_BULK (512LL * 1024 * 1024)

#define OUTBOX_STREAM_KEY "pgtrickle:{stream_table}"
#define CDC_STREAM_KEY "cdc:{schema}.{table}"

/* KEYS[1] stream, KEYS[2] dedup marker; ARGV[1] window in seconds,
 * ARGV[2..] the XADD arguments after the key. Returns the entry id, or
 * false (nil) when the marker exists. */
static const char DEDUP_SCRIPT[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return false end\n"
    "local id = redis.call('XADD', KEYS[1], unpack(ARGV, 2))\n"
    "redis.call('SET', KEYS[2], id, 'EX', ARGV[1])\n"
    "return id\n";

typedef struct redis_sink {
    relay_sink base;
    relay_redis_conn conn;
    /* config */
    char *stream_key;        /* template */
    int64_t maxlen;          /* 0: no trimming */
    char maxlen_s[24];
    int64_t dedup_window_s;  /* 0: plain XADD */
    char window_s[24];
    /* state */
    char script_sha[41];     /* the dedup script's SHA1 ... */
    uint64_t script_conn;    /* ... loaded on connection number script_conn */
    int64_t max_bulk;        /* the server's proto-max-bulk-len ... */
    uint64_t max_bulk_conn;  /* ... as read on connection number max_bulk_conn */
    relay_buf key;           /* scratch: a rendered stream key */
    relay_buf marker;        /* scratch: a dedup marker key */
    char last_id[64];        /* last entry id added */
    uint64_t added, duplicates, failed;
} redis_sink;

static const char *pipeline_name(const redis_sink *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- configuration ----------------------------------------------------- */

static void rs_destroy(relay_sink *base);

static int parse_template(const json_t *cfg, const char *key, const char *def, char **out,
                          char *err, size_t errlen)
{
    const char *tmpl;
    char why[384];
    *out = NULL;
    if (cfg_str(cfg, "sink", key, def, &tmpl, err, errlen) < 0)
        return -1;
    if (!tmpl)
        return 0;
    if (!*tmpl) {
        snprintf(err, errlen, "sink.%s: must not be empty", key);
        return -1;
    }
    if (subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.%s: %s", key, why);
        return -1;
    }
    *out = xstrdup(tmpl);
    return 0;
}

static relay_sink *rs_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "stream_key", "subject_template", "maxlen",
                                       "dedup_window_seconds", "format", RELAY_REDIS_CONN_KEYS,
                                       RELAY_FORMAT_KEYS, NULL};
    relay_format format;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        relay_format_from_cfg(cfg, "sink", &format, err, errlen) < 0)
        return NULL;
    redis_sink *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->base.encode = 1;
    s->base.format = format;
    int cdc = w && w->cfg.source_type && strcmp(w->cfg.source_type, "cdc") == 0;
    if (redis_conn_parse(&s->conn, cfg, "sink", err, errlen) < 0 ||
        parse_template(cfg, "stream_key", cdc ? CDC_STREAM_KEY : OUTBOX_STREAM_KEY,
                       &s->stream_key, err, errlen) < 0 ||
        parse_template(cfg, "subject_template", NULL, &s->base.subject_template, err,
                       errlen) < 0 ||
        cfg_int(cfg, "sink", "maxlen", 0, 0, INT64_MAX, &s->maxlen, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "dedup_window_seconds", 0, 0, 100L * 365 * 86400,
                &s->dedup_window_s, err, errlen) < 0 ||
        relay_format_opts_from_cfg(cfg, "sink", format, 0, &s->base.fopts, err, errlen) < 0)
        goto fail;
    snprintf(s->maxlen_s, sizeof s->maxlen_s, "%" PRId64, s->maxlen);
    snprintf(s->window_s, sizeof s->window_s, "%" PRId64, s->dedup_window_s);
    return &s->base;
fail:
    rs_destroy(&s->base);
    return NULL;
}

/* ---- connection ---------------------------------------------------------- */

/* Load the dedup script once per connection (its SHA1 never changes, but
 * a restarted or flushed server forgets it). */
static int load_script(redis_sink *s, char *err, size_t errlen)
{
    if (!s->dedup_window_s || (s->script_sha[0] && s->script_conn == s->conn.connects))
        return 0;
    const char *argv[3] = {"SCRIPT", "LOAD", DEDUP_SCRIPT};
    redisReply *r = redis_conn_command(&s->conn, 3, argv, NULL, err, errlen);
    if (!r)
        return -1;
    int rc = -1;
    if (r->type == REDIS_REPLY_STRING && r->len == 40) {
        memcpy(s->script_sha, r->str, 40);
        s->script_sha[40] = '\0';
        s->script_conn = s->conn.connects;
        rc = 0;
    } else {
        snprintf(err, errlen, "sink.dedup_window_seconds: redis %s refused SCRIPT LOAD: %.*s",
                 s->conn.url_display, r->type == REDIS_REPLY_ERROR ? (int)r->len : 0,
                 r->type == REDIS_REPLY_ERROR ? r->str : "");
    }
    freeReplyObject(r);
    return rc;
}

/* Read the server's proto-max-bulk-len once per connection: a value larger
 * than that makes the server close the connection mid-pipeline, so such a
 * message is rejected before it is sent. CONFIG may be refused (ACL,
 * renamed command): then Redis's default, 512 MB, is assumed. */
static int read_max_bulk(redis_sink *s, char *err, size_t errlen)
{
    if (s->max_bulk_conn == s->conn.connects)
        return 0;
    const char *argv[3] = {"CONFIG", "GET", "proto-max-bulk-len"};
    redisReply *r = redis_conn_command(&s->conn, 3, argv, NULL, err, errlen);
    if (!r)
        return -1;
    s->max_bulk = DEFAULT_MAX_BULK;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 &&
        r->element[1]->type == REDIS_REPLY_STRING) {
        long long v = strtoll(r->element[1]->str, NULL, 10);
        if (v > 0)
            s->max_bulk = v;
    }
    freeReplyObject(r);
    s->max_bulk_conn = s->conn.connects;
    return 0;
}

static int rs_open(relay_sink *base, char *err, size_t errlen)
{
    redis_sink *s = (redis_sink *)base;
    if (redis_conn_open(&s->conn, err, errlen) < 0 || read_max_bulk(s, err, errlen) < 0)
        return -1;
    return load_script(s, err, errlen);
}

/* ---- publishing ------------------------------------------------------------ */

/* Append the command for `m` (XADD, or EVALSHA of the dedup script) to
 * hiredis's output buffer; s->key holds m's rendered stream key
 * (largest_value() rendered it). */
static int append_command(redis_sink *s, const relay_msg *m)
{
    const char *argv[MAX_ARGS];
    size_t len[MAX_ARGS];
    int n = 0;
#define ARG(p, l) (argv[n] = (p), len[n] = (l), n++)
#define ARGS(p) ARG((p), strlen(p))
    if (s->dedup_window_s) {
        buf_clear(&s->marker);
        buf_append(&s->marker, s->key.data, s->key.len);
        buf_puts(&s->marker, ":dedup:");
        buf_append(&s->marker, m->dedup_key, msg_bytes(m->dedup_key, m->dedup_key_len));
        ARGS("EVALSHA");
        ARGS(s->script_sha);
        ARGS("2");
        ARG(s->key.data, s->key.len);
        ARG(s->marker.data, s->marker.len);
        ARGS(s->window_s);
    } else {
        ARGS("XADD");
        ARG(s->key.data, s->key.len);
    }
    if (s->maxlen) {
        ARGS("MAXLEN");
        ARGS("~");
        ARGS(s->maxlen_s);
    }
    ARGS("*");
    ARGS("dedup_key");
    ARG(m->dedup_key, msg_bytes(m->dedup_key, m->dedup_key_len));
    ARGS("subject");
    ARG(m->subject ? m->subject : "", msg_bytes(m->subject, m->subject_len));
    ARGS("op");
    ARGS(relay_op_name(m->op));
    ARGS("payload");
    ARG(m->body ? m->body : "", m->body_len);
    if (m->is_full_refresh) {
        ARGS("full_refresh");
        ARGS("true");
    }
#undef ARG
#undef ARGS
    return redisAppendCommandArgv(s->conn.ctx, n, argv, len) == REDIS_OK ? 0 : -1;
}

/* The type of `key` ("a hash", ...), for a WRONGTYPE message. */
static void key_type(redis_sink *s, const char *key, size_t keylen, char *out, size_t outlen)
{
    char err[256];
    const char *argv[2] = {"TYPE", key};
    size_t len[2] = {4, keylen};
    snprintf(out, outlen, "another type");
    redisReply *r = redis_conn_command(&s->conn, 2, argv, len, err, sizeof err);
    if (r && r->type == REDIS_REPLY_STATUS)
        snprintf(out, outlen, "a %.*s", (int)r->len, r->str);
    if (r)
        freeReplyObject(r);
}

/* Set the state of `m` from its reply. Returns 1 when the message is
 * settled (confirmed or rejected), 0 when it is to be retried. */
static int take_reply(redis_sink *s, relay_msg *m, const redisReply *r, int *wrongtype)
{
    if (r->type == REDIS_REPLY_STRING) {
        m->state = MSG_CONFIRMED;
        s->added++;
        size_t n = r->len < sizeof s->last_id - 1 ? r->len : sizeof s->last_id - 1;
        memcpy(s->last_id, r->str, n);
        s->last_id[n] = '\0';
        return 1;
    }
    if (r->type == REDIS_REPLY_NIL && s->dedup_window_s) {
        m->state = MSG_CONFIRMED;
        s->duplicates++;
        return 1;
    }
    s->failed++;
    if (r->type != REDIS_REPLY_ERROR) {
        msg_set_error(m, MSG_RETRY, "redis %s: unexpected reply type %d to XADD",
                      s->conn.url_display, r->type);
        return 0;
    }
    switch (redis_error_classify(r->str, r->len)) {
    case REDIS_ERR_MESSAGE:
        msg_set_error(m, MSG_REJECTED, "redis %s refused the entry: %.*s", s->conn.url_display,
                      (int)r->len, r->str);
        return 1;
    case REDIS_ERR_WRONGTYPE:
        *wrongtype = 1; /* its text is completed once every reply was read */
        msg_set_error(m, MSG_RETRY, "%.*s", (int)r->len, r->str);
        return 0;
    case REDIS_ERR_NOSCRIPT:
        s->script_sha[0] = '\0'; /* load it again before the retry */
        break;
    default:
        break;
    }
    msg_set_error(m, MSG_RETRY, "redis %s: %.*s", s->conn.url_display, (int)r->len, r->str);
    return 0;
}

/* Replace the raw WRONGTYPE text of each such message by one naming the
 * key, its type (one TYPE per distinct key) and the config key. */
static void explain_wrongtype(redis_sink *s, relay_msg **msgs, size_t n)
{
    char type[64] = "";
    relay_buf prev = {0};
    for (size_t i = 0; i < n; i++) {
        relay_msg *m = msgs[i];
        if (m->state != MSG_RETRY || !m->error || strncmp(m->error, "WRONGTYPE", 9) != 0)
            continue;
        buf_clear(&s->key);
        subject_render(s->stream_key, m, &s->key);
        if (!type[0] || prev.len != s->key.len || memcmp(prev.data, s->key.data, prev.len) != 0) {
            buf_clear(&prev);
            buf_append(&prev, s->key.data, s->key.len);
            key_type(s, prev.data, prev.len, type, sizeof type);
        }
        msg_set_error(m, MSG_RETRY, "sink.stream_key: key \"%.*s\" on redis %s holds %s, not a "
                      "stream (WRONGTYPE): delete or rename it, or change stream_key",
                      (int)prev.len, prev.data, s->conn.url_display, type);
    }
    buf_free(&prev);
}

/* The longest argument the command for `m` would have, in bytes; renders
 * m's stream key into s->key. */
static size_t largest_value(redis_sink *s, const relay_msg *m)
{
    size_t dk = msg_bytes(m->dedup_key, m->dedup_key_len);
    size_t biggest = m->body_len > dk ? m->body_len : dk;
    if (msg_bytes(m->subject, m->subject_len) > biggest)
        biggest = msg_bytes(m->subject, m->subject_len);
    buf_clear(&s->key);
    subject_render(s->stream_key, m, &s->key);
    size_t key = s->key.len + (s->dedup_window_s ? sizeof ":dedup:" - 1 + dk : 0);
    return key > biggest ? key : biggest;
}

/* Send msgs[0..n) (n <= PIPELINE_CHUNK) and read every reply. Returns the
 * number settled (confirmed or rejected); on a connection failure the rest
 * stay MSG_RETRY and *down is set. */
static size_t publish_chunk(redis_sink *s, relay_msg **msgs, size_t n, int *wrongtype,
                            int *down, char *err, size_t errlen)
{
    size_t settled = 0, appended = 0;
    for (; appended < n; appended++) {
        relay_msg *m = msgs[appended];
        size_t biggest = largest_value(s, m);
        if ((int64_t)biggest > s->max_bulk) {
            msg_set_error(m, MSG_REJECTED, "a value of %zu bytes exceeds proto-max-bulk-len "
                          "(%" PRId64 " bytes) of redis %s", biggest, s->max_bulk,
                          s->conn.url_display);
            s->failed++;
            continue;
        }
        if (append_command(s, m) < 0)
            break;
        /* Hand what is formatted so far to the server now and then: it
         * executes these XADDs while the rest of the chunk is formatted,
         * instead of after. (One write() of what the buffer holds; its
         * replies are read below, in order, like the others'.) */
        int flushed;
        if ((appended + 1) % FLUSH_EVERY == 0 && redisBufferWrite(s->conn.ctx, &flushed) != REDIS_OK) {
            appended++; /* m is in the buffer; whether it reached the server is unknown */
            log_debug(pipeline_name(s), "redis sink: writing to redis %s failed after %zu of %zu "
                      "commands were formatted: %s", s->conn.url_display, appended, n,
                      s->conn.ctx->errstr);
            break;
        }
    }
    for (size_t i = 0; i < appended; i++) {
        if (msgs[i]->state == MSG_REJECTED) {
            settled++;
            continue;
        }
        void *reply = NULL;
        if (redisGetReply(s->conn.ctx, &reply) != REDIS_OK || !reply) {
            redis_conn_fail(&s->conn, err, errlen);
            *down = 1;
            break;
        }
        settled += (size_t)take_reply(s, msgs[i], reply, wrongtype);
        freeReplyObject(reply);
    }
    if (!*down && appended < n) { /* out of memory in hiredis, or a write failed: a lost connection */
        redis_conn_fail(&s->conn, err, errlen);
        *down = 1;
    }
    return settled;
}

static int rs_publish(relay_sink *base, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    redis_sink *s = (redis_sink *)base;
    if (n == 0)
        return 0;
    if (rs_open(base, err, errlen) < 0)
        return -1;
    size_t settled = 0;
    int wrongtype = 0, down = 0;
    for (size_t off = 0; off < n && !down; off += PIPELINE_CHUNK) {
        size_t k = n - off < PIPELINE_CHUNK ? n - off : PIPELINE_CHUNK;
        settled += publish_chunk(s, msgs + off, k, &wrongtype, &down, err, errlen);
    }
    for (size_t i = 0; i < n; i++)
        if (msgs[i]->state == MSG_PENDING)
            msg_set_error(msgs[i], MSG_RETRY, "%s", err);
    if (wrongtype)
        explain_wrongtype(s, msgs, n);
    if (settled > 0)
        return 0;
    /* Nothing got through: the sink is down for this batch. */
    for (size_t i = 0; i < n; i++)
        if (msgs[i]->state == MSG_RETRY && msgs[i]->error) {
            snprintf(err, errlen, "%s", msgs[i]->error);
            break;
        }
    log_debug(pipeline_name(s), "redis sink: no entry of %zu added: %s", n, err);
    return -1;
}

/* ---- status ------------------------------------------------------------------ */

static void rs_describe(relay_sink *base, relay_buf *out)
{
    redis_sink *s = (redis_sink *)base;
    buf_putc(out, '{');
    redis_conn_describe(&s->conn, out);
    buf_puts(out, ",\"stream_key\":");
    buf_put_json_str(out, s->stream_key, strlen(s->stream_key));
    buf_printf(out, ",\"maxlen\":%" PRId64 ",\"dedup_window_seconds\":%" PRId64, s->maxlen,
               s->dedup_window_s);
    buf_puts(out, ",\"last_entry_id\":");
    buf_put_json_str(out, s->last_id, strlen(s->last_id));
    buf_printf(out, ",\"added\":%" PRIu64 ",\"duplicates\":%" PRIu64 ",\"failed\":%" PRIu64 "}",
               s->added, s->duplicates, s->failed);
}

static void rs_destroy(relay_sink *base)
{
    if (!base)
        return;
    redis_sink *s = (redis_sink *)base;
    redis_conn_free(&s->conn);
    free(s->stream_key);
    free(s->base.subject_template);
    relay_format_opts_free(&s->base.fopts);
    buf_free(&s->key);
    buf_free(&s->marker);
    free(s);
}

const relay_sink_ops relay_sink_redis_ops = {
    .type = "redis",
    .create = rs_create,
    .open = rs_open,
    .publish = rs_publish,
    .describe = rs_describe,
    .destroy = rs_destroy,
};
