/*
 * redis.c - the Redis Streams reverse source (SPEC section 8, row redis):
 * the entries of a stream, read through a consumer group, into the inbox
 * (sink "pg-inbox").
 *
 * Config (pipeline "source" object), besides the connection keys of
 * client/redis.h (url, connect_timeout_ms, command_timeout_ms):
 *   stream_key     the stream to read (required)
 *   group_name     consumer group ("pgtrickle-relay")
 *   consumer_name  this relay's consumer in the group (default: the
 *                  pipeline name, stable across restarts, so a restarted
 *                  relay reads its own pending entries again)
 *   create_group   true (default): XGROUP CREATE <key> <group> <start_id>
 *                  MKSTREAM when the group does not exist; false: a missing
 *                  group is an error naming source.group_name
 *   start_id       where a group created by the relay starts ("0": the
 *                  whole stream; "$": only new entries)
 *   batch_size     entries per read, i.e. per inbox transaction (100)
 *   block_ms       how long a read waits for new entries (1000)
 *   claim_idle_ms  entries pending on another consumer for longer than
 *                  this are claimed (XAUTOCLAIM); 0 = never (60000)
 *
 * Reading.  open() creates the group if needed and then poll() reads, in
 * this order:
 *  1. this consumer's own pending entries (XREADGROUP ... STREAMS key <id>,
 *     from "0"): those of a relay that stopped or crashed after reading
 *     and before XACK, and those of a batch the inbox could not commit
 *     (the worker re-opens the source, which starts this phase again);
 *  2. every claim_idle_ms / 2 (at least 100 ms, at most 30 s), one pass of
 *     XAUTOCLAIM over the group's pending entries: those idle for longer
 *     than claim_idle_ms (a consumer that died) become ours;
 *  3. new entries: XREADGROUP ... COUNT batch_size BLOCK block_ms STREAMS
 *     key >.
 * Each entry becomes one message (redis_entry_to_msg, source/redis.h): the
 * dedup key is its dedup_key field, else "redis:{stream_key}:{entry id}",
 * stable across redeliveries, so the inbox skips an entry it already holds.
 * An entry deleted (XDEL, MAXLEN) while pending has no fields left: it is
 * acknowledged at once, with a warning, since nothing can deliver it.
 *
 * Acknowledgement.  ack(), called only after the inbox COMMIT, sends one
 * XACK with every entry id of the batch. A crash between COMMIT and XACK
 * leaves the entries pending on this consumer: the next start reads them
 * again (phase 1) and the inbox skips them by event_id. Nothing is ever
 * acknowledged before its COMMIT, so a PostgreSQL outage loses nothing.
 *
 * Down.  A lost or silent server fails poll() (the blocking read's socket
 * timeout is block_ms + command_timeout_ms), so the pipeline is degraded
 * (source unavailable) and retried with backoff; open() connects again. A
 * group or stream deleted under us (NOGROUP) fails the read with an error
 * naming the group; with create_group the next open() creates it again.
 *
 * /status: stream, group, consumer, the last acknowledged entry id, and the
 * group's pending count and lag as XINFO GROUPS reports them (refreshed at
 * most once a second).
 */
#include "source/redis.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/redis.h"
#include "config.h"
#include "json_scan.h"
#include "log.h"
#include "source/source.h"
#include "stats.h"
#include "worker.h"

#define ID_MAX 64                 /* "<ms>-<seq>": 41 bytes at most */
#define STATUS_EVERY_MS 1000

typedef struct redis_source {
    relay_source base;
    relay_redis_conn conn;
    /* config */
    char *stream_key;
    char *group;
    char *consumer;
    char *start_id;
    char *source_name;           /* "redis:{stream_key}" */
    int create_group;
    int64_t batch_size;
    int64_t block_ms;
    int64_t claim_idle_ms;
    /* state */
    int own_pending;             /* phase 1: re-reading our own pending entries */
    char pending_cursor[ID_MAX]; /* the last pending id read in phase 1 */
    char claim_cursor[ID_MAX];   /* XAUTOCLAIM cursor; "0-0" starts a pass */
    int64_t next_claim_ms;       /* monotonic time of the next XAUTOCLAIM pass */
    int logged_open;
    /* counters and /status */
    char last_acked[ID_MAX];
    uint64_t acked, claimed, redelivered, deleted;
    long long group_pending, group_lag; /* -1: unknown */
    int64_t status_at_ms;
} redis_source;

static const char *pipeline_name(const redis_source *s)
{
    return s->base.w ? s->base.w->cfg.name : NULL;
}

/* ---- reply decoding (source/redis.h) ---------------------------------------- */

static int is_string(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* A stream entry id: "<ms>-<seq>", both decimal. */
static int valid_entry_id(const char *s, size_t n)
{
    size_t i = 0, digits = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (digits == 0 || i == n || s[i++] != '-')
        return 0;
    for (digits = 0; i < n && s[i] >= '0' && s[i] <= '9'; i++)
        digits++;
    return digits > 0 && i == n;
}

int redis_read_entries(const redisReply *r, const redisReply **entries, char *err,
                       size_t errlen)
{
    *entries = NULL;
    if (r->type == REDIS_REPLY_NIL)
        return 0;
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 ||
        r->element[0]->type != REDIS_REPLY_ARRAY || r->element[0]->elements != 2 ||
        !is_string(r->element[0]->element[0]) ||
        r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "unexpected XREADGROUP reply (type %d)", r->type);
        return -1;
    }
    *entries = r->element[0]->element[1];
    return 0;
}

int redis_autoclaim_entries(const redisReply *r, char *cursor, size_t cursorlen,
                            const redisReply **entries, char *err, size_t errlen)
{
    *entries = NULL;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 || !is_string(r->element[0]) ||
        r->element[0]->len >= cursorlen ||
        !valid_entry_id(r->element[0]->str, r->element[0]->len) ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
        snprintf(err, errlen, "unexpected XAUTOCLAIM reply (type %d)", r->type);
        return -1;
    }
    memcpy(cursor, r->element[0]->str, r->element[0]->len);
    cursor[r->element[0]->len] = '\0';
    *entries = r->element[1];
    return 0;
}

/* Append s[0..n) as a JSON string: '"', '\\' and control bytes escaped,
 * every other byte as it is (so bytes that are not UTF-8 stay exact, and
 * the text is then not JSON). */
static void put_raw_json_str(relay_buf *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    buf_putc(out, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        buf_append(out, s + run, i - run);
        run = i + 1;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_append(out, e, 2);
        } else {
            char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            buf_append(out, u, 6);
        }
    }
    buf_append(out, s + run, n - run);
    buf_putc(out, '"');
}

static int field_is(const redisReply *f, const char *name)
{
    size_t n = strlen(name);
    return f->len == n && memcmp(f->str, name, n) == 0;
}

int redis_entry_to_msg(const redisReply *entry, const char *stream_key,
                       const char *source_name, relay_batch *b, const char **id_out, char *err,
                       size_t errlen)
{
    *id_out = NULL;
    if (entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        !is_string(entry->element[0]) || entry->element[0]->len >= ID_MAX ||
        !valid_entry_id(entry->element[0]->str, entry->element[0]->len)) {
        snprintf(err, errlen, "unexpected stream entry in a reply (type %d)", entry->type);
        return -1;
    }
    const redisReply *fv = entry->element[1];
    const char *id = arena_strndup(&b->arena, entry->element[0]->str, entry->element[0]->len);
    *id_out = id;
    if (fv->type == REDIS_REPLY_NIL)
        return 0;
    if (fv->type != REDIS_REPLY_ARRAY || fv->elements % 2 != 0) {
        snprintf(err, errlen, "stream entry %s: unexpected field list", id);
        return -1;
    }
    for (size_t i = 0; i < fv->elements; i++)
        if (!is_string(fv->element[i])) {
            snprintf(err, errlen, "stream entry %s: a field is not a string", id);
            return -1;
        }
    const redisReply *dedup = NULL, *payload = NULL, *etype = NULL, *agg = NULL, *trace = NULL;
    for (size_t i = 0; i < fv->elements; i += 2) {
        const redisReply *f = fv->element[i], *v = fv->element[i + 1];
        if (!dedup && field_is(f, "dedup_key"))
            dedup = v;
        else if (!payload && field_is(f, "payload"))
            payload = v;
        else if (!etype && field_is(f, "event_type"))
            etype = v;
        else if (!agg && field_is(f, "aggregate_id"))
            agg = v;
        else if (!trace && field_is(f, "traceparent"))
            trace = v;
    }
    relay_arena *a = &b->arena;
    relay_msg *m = batch_add(b);
    m->op = OP_EVENT;
    m->ack = (void *)id;
    m->source_name = source_name;
    if (dedup && dedup->len > 0) {
        m->dedup_key = arena_strndup(a, dedup->str, dedup->len);
        m->dedup_key_len = dedup->len;
    } else {
        m->dedup_key = arena_printf(a, "redis:%s:%s", stream_key, id);
    }
    if (etype) {
        m->subject = arena_strndup(a, etype->str, etype->len);
        m->subject_len = etype->len;
    } else {
        m->subject = stream_key;
    }
    if (agg) {
        m->aggregate_id = arena_strndup(a, agg->str, agg->len);
        m->aggregate_id_len = agg->len;
    }
    if (trace) {
        m->trace_id = arena_strndup(a, trace->str, trace->len);
        m->trace_id_len = trace->len;
    }
    if (payload) {
        m->payload = arena_strndup(a, payload->str, payload->len);
        m->payload_len = payload->len;
    } else {
        relay_buf o = {0};
        buf_putc(&o, '{');
        for (size_t i = 0; i < fv->elements; i += 2) {
            if (i)
                buf_putc(&o, ',');
            put_raw_json_str(&o, fv->element[i]->str, fv->element[i]->len);
            buf_putc(&o, ':');
            put_raw_json_str(&o, fv->element[i + 1]->str, fv->element[i + 1]->len);
        }
        buf_putc(&o, '}');
        m->payload = arena_strndup(a, o.data, o.len);
        m->payload_len = o.len;
        buf_free(&o);
    }
    m->payload_is_json = json_valid(m->payload, m->payload_len);
    return 1;
}

/* ---- configuration ---------------------------------------------------------- */

static void rsrc_destroy(relay_source *base);

static int opt_str(const json_t *cfg, const char *key, const char *def, char **out, char *err,
                   size_t errlen)
{
    const char *v;
    if (cfg_str(cfg, "source", key, def, &v, err, errlen) < 0)
        return -1;
    if (!v || !*v) {
        snprintf(err, errlen, "source.%s: must not be empty", key);
        return -1;
    }
    *out = xstrdup(v);
    return 0;
}

static relay_source *rsrc_create(const json_t *cfg, struct relay_worker *w, char *err,
                                 size_t errlen)
{
    static const char *const keys[] = {"type", "stream_key", "group_name", "consumer_name",
                                       "create_group", "start_id", "batch_size", "block_ms",
                                       "claim_idle_ms", RELAY_REDIS_CONN_KEYS, NULL};
    const char *stream_key;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str_required(cfg, "source", "stream_key", &stream_key, err, errlen) < 0)
        return NULL;
    redis_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->stream_key = xstrdup(stream_key);
    s->group_pending = s->group_lag = -1;
    const char *pipeline = w && w->cfg.name ? w->cfg.name : "pgtrickle-relay";
    if (redis_conn_parse(&s->conn, cfg, "source", err, errlen) < 0 ||
        opt_str(cfg, "group_name", "pgtrickle-relay", &s->group, err, errlen) < 0 ||
        opt_str(cfg, "consumer_name", pipeline, &s->consumer, err, errlen) < 0 ||
        opt_str(cfg, "start_id", "0", &s->start_id, err, errlen) < 0 ||
        cfg_bool(cfg, "source", "create_group", 1, &s->create_group, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 100, 1, 100000, &s->batch_size, err, errlen) < 0 ||
        cfg_int(cfg, "source", "block_ms", 1000, 1, 60000, &s->block_ms, err, errlen) < 0 ||
        cfg_int(cfg, "source", "claim_idle_ms", 60000, 0, INT32_MAX, &s->claim_idle_ms, err,
                errlen) < 0)
        goto fail;
    s->base.default_batch = (size_t)s->batch_size;
    relay_buf sn = {0};
    buf_printf(&sn, "redis:%s", s->stream_key);
    s->source_name = buf_steal(&sn);
    return &s->base;
fail:
    rsrc_destroy(&s->base);
    return NULL;
}

/* ---- /status ------------------------------------------------------------------ */

/* Refresh the group's pending count and lag (XINFO GROUPS), at most once a
 * second; a failure only leaves them unknown. */
static void refresh_group_info(redis_source *s)
{
    int64_t now = now_mono_ms();
    if (now - s->status_at_ms < STATUS_EVERY_MS || !redis_conn_ok(&s->conn))
        return;
    s->status_at_ms = now;
    char err[256];
    const char *argv[3] = {"XINFO", "GROUPS", s->stream_key};
    redisReply *r = redis_conn_command(&s->conn, 3, argv, NULL, err, sizeof err);
    if (!r)
        return;
    s->group_pending = s->group_lag = -1;
    for (size_t g = 0; r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *info = r->element[g];
        if (info->type != REDIS_REPLY_ARRAY)
            continue;
        int ours = 0;
        long long pending = -1, lag = -1;
        for (size_t i = 0; i + 1 < info->elements; i += 2) {
            const redisReply *k = info->element[i], *v = info->element[i + 1];
            if (!is_string(k))
                continue;
            if (field_is(k, "name") && is_string(v) && strlen(s->group) == v->len &&
                memcmp(v->str, s->group, v->len) == 0)
                ours = 1;
            else if (field_is(k, "pending") && v->type == REDIS_REPLY_INTEGER)
                pending = v->integer;
            else if (field_is(k, "lag") && v->type == REDIS_REPLY_INTEGER)
                lag = v->integer;
        }
        if (ours) {
            s->group_pending = pending;
            s->group_lag = lag;
        }
    }
    freeReplyObject(r);
}

static void rsrc_position(relay_source *base, relay_buf *out)
{
    redis_source *s = (redis_source *)base;
    buf_puts(out, "{\"stream\":");
    buf_put_json_str(out, s->stream_key, strlen(s->stream_key));
    buf_puts(out, ",\"group\":");
    buf_put_json_str(out, s->group, strlen(s->group));
    buf_puts(out, ",\"consumer\":");
    buf_put_json_str(out, s->consumer, strlen(s->consumer));
    buf_puts(out, ",\"last_acked_id\":");
    buf_put_json_str(out, s->last_acked, strlen(s->last_acked));
    buf_puts(out, ",\"pending\":");
    if (s->group_pending >= 0)
        buf_printf(out, "%lld", s->group_pending);
    else
        buf_puts(out, "null");
    buf_puts(out, ",\"lag\":");
    if (s->group_lag >= 0)
        buf_printf(out, "%lld", s->group_lag);
    else
        buf_puts(out, "null");
    buf_printf(out, ",\"acked\":%" PRIu64 ",\"redelivered\":%" PRIu64 ",\"claimed\":%" PRIu64
               ",\"deleted\":%" PRIu64 ",",
               s->acked, s->redelivered, s->claimed, s->deleted);
    redis_conn_describe(&s->conn, out);
    buf_putc(out, '}');
}

static void publish_position(redis_source *s)
{
    relay_worker *w = s->base.w;
    if (!w || !w->stats)
        return;
    refresh_group_info(s);
    relay_buf b = {0};
    rsrc_position(&s->base, &b);
    stats_set_position(w->stats, b.data);
    buf_free(&b);
}

/* ---- open --------------------------------------------------------------------- */

/* Text of an error reply, for messages. */
#define REPLY_TEXT(r) (int)(r)->len, (r)->str

/* An error reply to a command on the stream key: WRONGTYPE names the key. */
static void stream_error(redis_source *s, const char *what, const redisReply *r, char *err,
                         size_t errlen)
{
    if (redis_error_classify(r->str, r->len) == REDIS_ERR_WRONGTYPE)
        snprintf(err, errlen, "source.stream_key: key \"%s\" on redis %s is not a stream "
                 "(WRONGTYPE)", s->stream_key, s->conn.url_display);
    else
        snprintf(err, errlen, "%s on stream \"%s\" of redis %s: %.*s", what, s->stream_key,
                 s->conn.url_display, REPLY_TEXT(r));
}

/* Does the group exist? 1 yes, 0 no, -1 error (err). */
static int group_exists(redis_source *s, char *err, size_t errlen)
{
    const char *argv[3] = {"XINFO", "GROUPS", s->stream_key};
    redisReply *r = redis_conn_command(&s->conn, 3, argv, NULL, err, errlen);
    if (!r)
        return -1;
    int found = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        if (redis_error_classify(r->str, r->len) == REDIS_ERR_WRONGTYPE) {
            stream_error(s, "XINFO GROUPS", r, err, errlen);
            found = -1;
        } /* "ERR no such key": no stream, so no group */
    }
    for (size_t g = 0; r->type == REDIS_REPLY_ARRAY && g < r->elements; g++) {
        const redisReply *info = r->element[g];
        for (size_t i = 0; info->type == REDIS_REPLY_ARRAY && i + 1 < info->elements; i += 2)
            if (is_string(info->element[i]) && field_is(info->element[i], "name") &&
                is_string(info->element[i + 1]) &&
                info->element[i + 1]->len == strlen(s->group) &&
                memcmp(info->element[i + 1]->str, s->group, strlen(s->group)) == 0)
                found = 1;
    }
    freeReplyObject(r);
    return found;
}

static int ensure_group(redis_source *s, char *err, size_t errlen)
{
    int exists = group_exists(s, err, errlen);
    if (exists < 0)
        return -1;
    if (exists)
        return 0;
    if (!s->create_group) {
        snprintf(err, errlen, "source.group_name: consumer group \"%s\" does not exist on stream "
                 "\"%s\" of redis %s (create it with XGROUP CREATE, or set source.create_group "
                 "to true)", s->group, s->stream_key, s->conn.url_display);
        return -1;
    }
    const char *argv[6] = {"XGROUP", "CREATE", s->stream_key, s->group, s->start_id, "MKSTREAM"};
    redisReply *r = redis_conn_command(&s->conn, 6, argv, NULL, err, errlen);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "BUSYGROUP", 9) != 0) {
        if (strstr(r->str, "Invalid stream ID"))
            snprintf(err, errlen, "source.start_id: redis %s refused \"%s\": %.*s",
                     s->conn.url_display, s->start_id, REPLY_TEXT(r));
        else
            stream_error(s, "XGROUP CREATE", r, err, errlen);
        rc = -1;
    } else if (r->type != REDIS_REPLY_ERROR) {
        log_info(pipeline_name(s), "created consumer group \"%s\" on stream \"%s\" from id %s",
                 s->group, s->stream_key, s->start_id);
    }
    freeReplyObject(r);
    return rc;
}

static int rsrc_open(relay_source *base, char *err, size_t errlen)
{
    redis_source *s = (redis_source *)base;
    if (redis_conn_open(&s->conn, err, errlen) < 0 || ensure_group(s, err, errlen) < 0)
        return -1;
    /* Start again with our own pending entries: after a crash, a restart or
     * a batch that was not committed, they are what has to come first. */
    s->own_pending = 1;
    snprintf(s->pending_cursor, sizeof s->pending_cursor, "0");
    snprintf(s->claim_cursor, sizeof s->claim_cursor, "0-0");
    s->next_claim_ms = now_mono_ms();
    if (!s->logged_open) {
        s->logged_open = 1;
        log_info(pipeline_name(s), "reading stream \"%s\" of redis %s as consumer \"%s\" of group "
                 "\"%s\"", s->stream_key, s->conn.url_display, s->consumer, s->group);
    }
    publish_position(s);
    return 0;
}

/* ---- poll --------------------------------------------------------------------- */

/* XACK `ids` (n of them). Returns 0, or -1 with err. */
static int xack(redis_source *s, const char **ids, size_t n, char *err, size_t errlen)
{
    if (n == 0)
        return 0;
    const char **argv = xmalloc((n + 3) * sizeof *argv);
    argv[0] = "XACK";
    argv[1] = s->stream_key;
    argv[2] = s->group;
    memcpy(argv + 3, ids, n * sizeof *ids);
    redisReply *r = redis_conn_command(&s->conn, (int)(n + 3), argv, NULL, err, errlen);
    free(argv);
    if (!r)
        return -1;
    int rc = 0;
    if (r->type == REDIS_REPLY_ERROR) {
        stream_error(s, "XACK", r, err, errlen);
        rc = -1;
    }
    freeReplyObject(r);
    return rc;
}

/* Add the entries of a reply to `b`. Entries deleted while pending are
 * acknowledged at once. Returns the number of messages added, or -1. */
static int take_entries(redis_source *s, const redisReply *entries, relay_batch *b,
                        const char **last_id, char *err, size_t errlen)
{
    int added = 0;
    const char **gone = NULL;
    size_t ngone = 0;
    for (size_t i = 0; i < entries->elements; i++) {
        const char *id;
        int rc = redis_entry_to_msg(entries->element[i], s->stream_key, s->source_name, b, &id,
                                    err, errlen);
        if (rc < 0) {
            free(gone);
            return -1;
        }
        *last_id = id;
        if (rc == 1) {
            added++;
            continue;
        }
        log_warn(pipeline_name(s), "stream \"%s\": entry %s was deleted before it was "
                 "acknowledged; acknowledging it without delivery", s->stream_key, id);
        gone = xrealloc(gone, (ngone + 1) * sizeof *gone);
        gone[ngone++] = id;
    }
    int rc = xack(s, gone, ngone, err, errlen);
    s->deleted += ngone;
    free(gone);
    return rc < 0 ? -1 : added;
}

/* Run a read command; NOGROUP and other error replies become err. */
static redisReply *read_command(redis_source *s, const char *what, int argc, const char **argv,
                                char *err, size_t errlen)
{
    redisReply *r = redis_conn_command(&s->conn, argc, argv, NULL, err, errlen);
    if (!r || r->type != REDIS_REPLY_ERROR)
        return r;
    if (redis_error_classify(r->str, r->len) == REDIS_ERR_NOGROUP)
        snprintf(err, errlen, "source.group_name: consumer group \"%s\" or stream \"%s\" no longer "
                 "exists on redis %s (NOGROUP)", s->group, s->stream_key, s->conn.url_display);
    else
        stream_error(s, what, r, err, errlen);
    freeReplyObject(r);
    return NULL;
}

/* Turn the entries of an XREADGROUP reply into messages, then free the
 * reply. Returns messages added, or -1; *last is the last entry's id. */
static int take_reply(redis_source *s, redisReply *r, relay_batch *b, const char **last,
                      char *err, size_t errlen)
{
    const redisReply *entries;
    int n = redis_read_entries(r, &entries, err, errlen);
    if (n == 0 && entries)
        n = take_entries(s, entries, b, last, err, errlen);
    freeReplyObject(r);
    return n;
}

/* Phase 1: our own pending entries after pending_cursor. Returns messages
 * added (0 when there are no more: the phase ends), or -1. */
static int read_own_pending(redis_source *s, relay_batch *b, size_t count, char *err,
                            size_t errlen)
{
    char cnt[24];
    snprintf(cnt, sizeof cnt, "%zu", count);
    for (;;) {
        const char *argv[] = {"XREADGROUP", "GROUP", s->group, s->consumer, "COUNT", cnt,
                              "STREAMS", s->stream_key, s->pending_cursor};
        redisReply *r = read_command(s, "XREADGROUP", 9, argv, err, errlen);
        if (!r)
            return -1;
        const char *last = NULL;
        int n = take_reply(s, r, b, &last, err, errlen);
        if (n < 0)
            return -1;
        if (!last) {
            s->own_pending = 0;
            return 0;
        }
        snprintf(s->pending_cursor, sizeof s->pending_cursor, "%s", last);
        if (n > 0) {
            s->redelivered += (uint64_t)n;
            log_info(pipeline_name(s), "re-reading %d entries left pending on consumer \"%s\"", n,
                     s->consumer);
            return n;
        }
    }
}

/* Phase 2: one XAUTOCLAIM step when a pass is due. Returns messages added,
 * or -1. */
static int claim_idle(redis_source *s, relay_batch *b, size_t count, char *err, size_t errlen)
{
    if (s->claim_idle_ms == 0 || now_mono_ms() < s->next_claim_ms)
        return 0;
    char idle[24], cnt[24];
    snprintf(idle, sizeof idle, "%" PRId64, s->claim_idle_ms);
    snprintf(cnt, sizeof cnt, "%zu", count);
    const char *argv[] = {"XAUTOCLAIM", s->stream_key, s->group, s->consumer, idle,
                          s->claim_cursor, "COUNT", cnt};
    redisReply *r = read_command(s, "XAUTOCLAIM", 8, argv, err, errlen);
    if (!r)
        return -1;
    const redisReply *entries;
    const char *last = NULL;
    int n = redis_autoclaim_entries(r, s->claim_cursor, sizeof s->claim_cursor, &entries, err,
                                    errlen);
    if (n == 0)
        n = take_entries(s, entries, b, &last, err, errlen);
    freeReplyObject(r);
    if (n < 0)
        return -1;
    if (strcmp(s->claim_cursor, "0-0") == 0) { /* the pass is complete */
        int64_t every = s->claim_idle_ms / 2;
        every = every < 100 ? 100 : every > 30000 ? 30000 : every;
        s->next_claim_ms = now_mono_ms() + every;
    }
    if (n > 0) {
        s->claimed += (uint64_t)n;
        log_info(pipeline_name(s), "claimed %d entries idle for more than %" PRId64 " ms from "
                 "other consumers of group \"%s\"", n, s->claim_idle_ms, s->group);
    }
    return n;
}

/* Phase 3: new entries, waiting up to block_ms. Returns messages added, or -1. */
static int read_new(redis_source *s, relay_batch *b, size_t count, char *err, size_t errlen)
{
    char cnt[24], block[24];
    snprintf(cnt, sizeof cnt, "%zu", count);
    snprintf(block, sizeof block, "%" PRId64, s->block_ms);
    const char *argv[] = {"XREADGROUP", "GROUP", s->group, s->consumer, "COUNT", cnt, "BLOCK",
                          block, "STREAMS", s->stream_key, ">"};
    if (redis_conn_set_timeout(&s->conn, s->block_ms, err, errlen) < 0)
        return -1;
    redisReply *r = read_command(s, "XREADGROUP", 11, argv, err, errlen);
    if (!r || redis_conn_set_timeout(&s->conn, 0, err, errlen) < 0) {
        if (r)
            freeReplyObject(r);
        return -1;
    }
    const char *last = NULL;
    return take_reply(s, r, b, &last, err, errlen);
}

static int rsrc_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    redis_source *s = (redis_source *)base;
    if (!redis_conn_ok(&s->conn)) {
        redis_conn_fail(&s->conn, err, errlen);
        return -1;
    }
    size_t count = max < (size_t)s->batch_size ? max : (size_t)s->batch_size;
    int n = 0;
    if (s->own_pending)
        n = read_own_pending(s, b, count, err, errlen);
    if (n == 0)
        n = claim_idle(s, b, count, err, errlen);
    if (n == 0)
        n = read_new(s, b, count, err, errlen);
    if (n == 0)
        publish_position(s); /* idle: keep pending and lag current */
    return n;
}

/* ---- ack -------------------------------------------------------------------- */

static int rsrc_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    redis_source *s = (redis_source *)base;
    if (b->n == 0)
        return 0;
    const char **ids = xmalloc(b->n * sizeof *ids);
    size_t n = 0;
    for (size_t i = 0; i < b->n; i++)
        if (b->msgs[i].ack)
            ids[n++] = b->msgs[i].ack;
    int rc = xack(s, ids, n, err, errlen);
    if (rc == 0 && n > 0) {
        s->acked += n;
        snprintf(s->last_acked, sizeof s->last_acked, "%s", ids[n - 1]);
        publish_position(s);
    }
    free(ids);
    return rc;
}

static void rsrc_destroy(relay_source *base)
{
    if (!base)
        return;
    redis_source *s = (redis_source *)base;
    redis_conn_free(&s->conn);
    free(s->stream_key);
    free(s->group);
    free(s->consumer);
    free(s->start_id);
    free(s->source_name);
    free(s);
}

const relay_source_ops relay_source_redis_ops = {
    .type = "redis",
    .create = rsrc_create,
    .open = rsrc_open,
    .poll = rsrc_poll,
    .ack = rsrc_ack,
    .position = rsrc_position,
    .destroy = rsrc_destroy,
};
