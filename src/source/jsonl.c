/*
 * jsonl.c - reverse sources reading JSON lines: "stdin" and "file"
 * (SPEC section 8).
 *
 * Config (pipeline "source" object):
 *   type              "stdin" or "file"
 *   input             file path (required for "file")
 *   format            "jsonl" (the only format)
 *   follow            keep reading as the file grows (false: stop at its end)
 *   batch_size        lines per inbox transaction (1000)
 *   poll_interval_ms  how often a followed file is checked for new lines (200)
 *   max_line_bytes    longer lines are dead-lettered (1048576)
 *
 * Each non-blank line is one event: event_id = its "dedup_key" field; lines
 * without one get a key derived from their position, so a line re-read after
 * a failure or a restart gets the same key and the inbox deduplicates it:
 *   file   "file:{path}:{byte offset}"    stable across restarts
 *   stdin  a UUID made from a per-process random seed and the offset
 * A line that is not JSON is stored as a JSON string, never dropped.
 *
 * Positions: lines stay in the read buffer until the worker acks them (after
 * the inbox COMMIT), so a batch that was not committed is delivered again
 * from memory, which also works for stdin. For a file the byte offset of the
 * first unacknowledged line is stored in relay_consumer_offsets at each ack:
 * a restart resumes there, neither losing nor duplicating lines (a crash
 * between COMMIT and the offset write re-reads lines that the inbox then
 * skips by event_id). A followed file must only grow: replacing it with a
 * shorter one is reported, not followed.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "../config.h"
#include "../json_scan.h"
#include "../log.h"
#include "../pg.h"
#include "../worker.h"
#include "source.h"

#define READ_CHUNK 65536

typedef struct jsonl_source {
    relay_source base;
    int is_stdin;
    char *path;
    int follow;
    int64_t batch_size;
    int64_t poll_interval_ms;
    int64_t max_line_bytes;
    int fd;
    int eof;               /* the input ended (stdin closed, or end of a non-followed file) */
    int eof_reported;
    relay_buf pending;     /* bytes read, starting at the first unacked line */
    relay_buf key;         /* scratch: a line's decoded dedup_key */
    int64_t pending_start; /* input offset of pending.data[0] */
    size_t parse_pos;      /* bytes of `pending` already handed out in batches */
    size_t batch_end;      /* parse_pos after the last poll: what ack() releases */
    int skipping;          /* discarding the rest of an over-long line */
    uint64_t seed[2];      /* stdin key seed */
} jsonl_source;

/* ---- config ----------------------------------------------------------------- */

static relay_source *create(const json_t *cfg, relay_worker *w, int is_stdin, char *err,
                            size_t errlen)
{
    static const char *const keys[] = {"type", "input", "path", "format", "follow", "batch_size",
                                       "poll_interval_ms", "max_line_bytes", NULL};
    const char *input = NULL, *path2 = NULL, *format;
    int follow;
    int64_t batch, interval, maxline;
    if (cfg_known_keys(cfg, "source", keys, err, errlen) < 0 ||
        cfg_str(cfg, "source", "input", NULL, &input, err, errlen) < 0 ||
        cfg_str(cfg, "source", "path", NULL, &path2, err, errlen) < 0 ||
        cfg_str(cfg, "source", "format", "jsonl", &format, err, errlen) < 0 ||
        cfg_bool(cfg, "source", "follow", 0, &follow, err, errlen) < 0 ||
        cfg_int(cfg, "source", "batch_size", 1000, 1, 100000, &batch, err, errlen) < 0 ||
        cfg_int(cfg, "source", "poll_interval_ms", 200, 10, 3600000, &interval, err, errlen) < 0 ||
        cfg_int(cfg, "source", "max_line_bytes", 1 << 20, 64, 1 << 30, &maxline, err, errlen) < 0)
        return NULL;
    if (strcmp(format, "jsonl") != 0) {
        snprintf(err, errlen, "source.format: only \"jsonl\" is supported, got \"%s\"", format);
        return NULL;
    }
    if (!input || !*input)
        input = path2;
    if (!is_stdin && (!input || !*input)) {
        snprintf(err, errlen, "source.input: required (the path of the JSONL file)");
        return NULL;
    }
    if (!is_stdin && cfg_host_path(cfg, "source", input == path2 ? "path" : "input", &input, err,
                                   errlen) < 0)
        return NULL;
    jsonl_source *s = xcalloc(1, sizeof *s);
    s->base.w = w;
    s->is_stdin = is_stdin || (input && strcmp(input, "-") == 0);
    s->path = xstrdup(s->is_stdin ? "-" : input);
    s->follow = follow;
    s->batch_size = batch;
    s->poll_interval_ms = interval;
    s->max_line_bytes = maxline;
    s->fd = -1;
    int rfd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (rfd < 0 || read(rfd, s->seed, sizeof s->seed) != (ssize_t)sizeof s->seed) {
        s->seed[0] = (uint64_t)getpid() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)now_mono_us();
        s->seed[1] = (uint64_t)now_wall_ms() * 0xc2b2ae3d27d4eb4fULL;
    }
    if (rfd >= 0)
        close(rfd);
    return &s->base;
}

static relay_source *stdin_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    return create(cfg, w, 1, err, errlen);
}

static relay_source *file_create(const json_t *cfg, relay_worker *w, char *err, size_t errlen)
{
    return create(cfg, w, 0, err, errlen);
}

/* ---- positions ---------------------------------------------------------------- */

static void publish_position(jsonl_source *s)
{
    relay_buf b = {0};
    buf_puts(&b, "{\"input\":");
    buf_put_json_str(&b, s->path, strlen(s->path));
    buf_printf(&b, ",\"offset\":%" PRId64 ",\"eof\":%s}", s->pending_start,
               s->eof ? "true" : "false");
    if (s->base.w->stats)
        stats_set_position(s->base.w->stats, b.data);
    buf_free(&b);
}

static int load_offset(jsonl_source *s, int64_t *out, char *err, size_t errlen)
{
    relay_worker *w = s->base.w;
    const char *p[2] = {w->opts->group_id, w->cfg.name};
    PGresult *r = pg_query(w->pg, "SELECT pgtrickle.relay_get_offset($1, $2)", 2, p, err, errlen);
    if (!r)
        return -1;
    *out = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return 0;
}

static int js_open(relay_source *base, char *err, size_t errlen)
{
    jsonl_source *s = (jsonl_source *)base;
    /* Lines handed out but not acked are delivered again. */
    s->parse_pos = 0;
    s->batch_end = 0;
    if (s->fd >= 0)
        return 0;
    if (s->is_stdin) {
        s->fd = STDIN_FILENO;
        return 0;
    }
    int64_t offset = 0;
    if (load_offset(s, &offset, err, errlen) < 0)
        return -1;
    int fd = open(s->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", s->path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && st.st_size < offset) {
        snprintf(err, errlen, "%s is shorter (%lld bytes) than the committed offset %" PRId64
                 ": the file was replaced or truncated", s->path, (long long)st.st_size, offset);
        close(fd);
        return -1;
    }
    if (lseek(fd, offset, SEEK_SET) < 0) {
        snprintf(err, errlen, "cannot seek %s: %s", s->path, strerror(errno));
        close(fd);
        return -1;
    }
    s->fd = fd;
    buf_clear(&s->pending);
    s->pending_start = offset;
    s->eof = 0;
    s->skipping = 0;
    publish_position(s);
    log_debug(base->w->cfg.name, "reading %s from byte %" PRId64, s->path, offset);
    return 0;
}

/* ---- reading --------------------------------------------------------------- */

/* Read what is available. Returns bytes read, 0 at end of input (or nothing
 * yet), -1 on error. Waits up to `wait_ms` for stdin data. */
static ssize_t fill(jsonl_source *s, int wait_ms, char *err, size_t errlen)
{
    if (s->is_stdin) {
        int rc = worker_wait(s->base.w, s->fd, POLLIN, wait_ms);
        if (rc <= 0)
            return 0;
    }
    buf_reserve(&s->pending, READ_CHUNK);
    ssize_t n;
    do {
        n = read(s->fd, s->pending.data + s->pending.len, READ_CHUNK);
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        snprintf(err, errlen, "read %s: %s", s->path, strerror(errno));
        return -1;
    }
    s->pending.len += (size_t)n;
    s->pending.data[s->pending.len] = '\0';
    if (n == 0 && (s->is_stdin || !s->follow))
        s->eof = 1;
    return n;
}

static void fallback_key(jsonl_source *s, relay_msg *m, relay_batch *b, int64_t offset)
{
    if (!s->is_stdin) {
        m->dedup_key = arena_printf(&b->arena, "file:%s:%" PRId64, s->path, offset);
        return;
    }
    /* splitmix64 of seed ^ offset: unique per process, stable per line. */
    uint64_t v[2];
    for (int i = 0; i < 2; i++) {
        uint64_t z = s->seed[i] ^ ((uint64_t)offset + (uint64_t)i * 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        v[i] = z ^ (z >> 31);
    }
    v[0] = (v[0] & ~0xF000ULL) | 0x4000ULL;                  /* version 4 */
    v[1] = (v[1] & 0x3FFFFFFFFFFFFFFFULL) | 0x8000000000000000ULL; /* RFC variant */
    m->dedup_key = arena_printf(&b->arena, "%08x-%04x-%04x-%04x-%012llx",
                                (unsigned)(v[0] >> 32), (unsigned)((v[0] >> 16) & 0xFFFF),
                                (unsigned)(v[0] & 0xFFFF), (unsigned)(v[1] >> 48),
                                (unsigned long long)(v[1] & 0xFFFFFFFFFFFFULL));
}

/* The top-level "dedup_key" string of a JSON object line, decoded into
 * `out` (it may hold any bytes, "\u0000" included). Returns 1 found and
 * non-empty, 0 otherwise. Scans without building a tree: a line can be
 * tens of megabytes. */
static int line_dedup_key(const char *line, size_t n, relay_buf *out)
{
    size_t i = json_skip_ws(line, n, 0), pos = 0, off, len, klen;
    if (i >= n || line[i] != '{')
        return 0;
    const char *obj = line + i, *k;
    size_t on = json_span(obj, n - i);
    static const char name[] = "dedup_key";
    while (on && json_object_next(obj, on, &pos, &k, &klen, &off, &len) == 1) {
        int match = klen == sizeof name - 1 && memcmp(k, name, klen) == 0;
        if (!match && memchr(k, '\\', klen)) { /* an escaped key: compare it decoded */
            relay_buf dk = {0};
            match = json_string_decode(k - 1, klen + 2, &dk) == 0 && dk.len == sizeof name - 1 &&
                    memcmp(dk.data, name, dk.len) == 0;
            buf_free(&dk);
        }
        if (!match)
            continue;
        buf_clear(out);
        return obj[off] == '"' && json_string_decode(obj + off, len, out) == 0 && out->len > 0;
    }
    return 0;
}

static void add_line(jsonl_source *s, relay_batch *b, const char *line, size_t n, int64_t offset)
{
    relay_msg *m = batch_add(b);
    m->op = OP_EVENT;
    m->subject = s->is_stdin ? "stdin" : "file";
    m->source_name = s->is_stdin ? "stdin" : arena_printf(&b->arena, "file:%s", s->path);
    m->payload = arena_strndup(&b->arena, line, n);
    m->payload_len = n;
    m->payload_is_json = json_valid(line, n);
    if (m->payload_is_json && line_dedup_key(line, n, &s->key)) {
        m->dedup_key = arena_strndup(&b->arena, s->key.data, s->key.len);
        m->dedup_key_len = s->key.len;
    } else {
        fallback_key(s, m, b, offset);
    }
}

static void add_too_long(jsonl_source *s, relay_batch *b, const char *line, int64_t offset)
{
    relay_msg *m = batch_add(b);
    m->op = OP_EVENT;
    m->subject = s->is_stdin ? "stdin" : "file";
    m->payload = arena_strndup(&b->arena, line, 1024);
    m->payload_len = strlen(m->payload);
    m->payload_is_json = 0;
    fallback_key(s, m, b, offset);
    msg_set_error(m, MSG_REJECTED, "line at byte %" PRId64 " is longer than source.max_line_bytes (%" PRId64 ")",
                  offset, s->max_line_bytes);
}

/* Cut complete lines from pending[parse_pos..] into the batch. */
static void cut_lines(jsonl_source *s, relay_batch *b, size_t max)
{
    while (b->n < max && s->parse_pos < s->pending.len) {
        char *start = s->pending.data + s->parse_pos;
        size_t avail = s->pending.len - s->parse_pos;
        char *nl = memchr(start, '\n', avail);
        int64_t offset = s->pending_start + (int64_t)s->parse_pos;
        size_t len;
        if (!nl) {
            if ((int64_t)avail > s->max_line_bytes) {
                /* Hand the head over now and drop the rest as it arrives. */
                add_too_long(s, b, start, offset);
                s->parse_pos = s->pending.len;
                s->skipping = 1;
                continue;
            }
            if (!s->eof || avail == 0)
                break;
            len = avail; /* the input ended without a final newline */
        } else {
            len = (size_t)(nl - start);
        }
        size_t consumed = nl ? len + 1 : len;
        if (s->skipping) {
            s->skipping = 0;
            s->parse_pos += consumed;
            continue;
        }
        size_t text = len;
        if (text && start[text - 1] == '\r')
            text--;
        size_t lead = 0;
        while (lead < text && (start[lead] == ' ' || start[lead] == '\t'))
            lead++;
        if (text > lead) {
            if ((int64_t)text > s->max_line_bytes)
                add_too_long(s, b, start, offset);
            else
                add_line(s, b, start, text, offset);
        }
        s->parse_pos += consumed;
    }
}

static int js_poll(relay_source *base, relay_batch *b, size_t max, char *err, size_t errlen)
{
    jsonl_source *s = (jsonl_source *)base;
    if ((int64_t)max > s->batch_size)
        max = (size_t)s->batch_size;
    for (;;) {
        cut_lines(s, b, max);
        if (b->n >= max)
            break;
        if (s->eof) {
            if (!s->eof_reported && s->parse_pos == s->pending.len) {
                s->eof_reported = 1;
                log_info(base->w->cfg.name, "end of %s reached", s->is_stdin ? "stdin" : s->path);
                publish_position(s);
            }
            break;
        }
        ssize_t n = fill(s, b->n ? 0 : (int)s->poll_interval_ms, err, errlen);
        if (n < 0)
            return -1;
        if (n == 0 && !s->eof)
            break; /* nothing new yet (followed file, or quiet stdin) */
    }
    s->batch_end = s->parse_pos;
    if (b->n == 0) {
        if (s->eof || s->follow)
            worker_wait(base->w, -1, 0, (int)s->poll_interval_ms);
        return 0;
    }
    return (int)b->n;
}

/* ---- ack ---------------------------------------------------------------------- */

static int js_ack(relay_source *base, relay_batch *b, char *err, size_t errlen)
{
    jsonl_source *s = (jsonl_source *)base;
    (void)b;
    int64_t next = s->pending_start + (int64_t)s->batch_end;
    if (!s->is_stdin) {
        relay_worker *w = base->w;
        char off[24];
        snprintf(off, sizeof off, "%" PRId64, next);
        const char *p[4] = {w->opts->group_id, w->cfg.name, off, w->worker_id};
        if (pg_exec(w->pg, "SELECT pgtrickle.relay_commit_offset($1, $2, $3, $4)", 4, p, err,
                    errlen) < 0)
            return -1;
    }
    /* Drop the acknowledged bytes from the buffer. */
    memmove(s->pending.data, s->pending.data + s->batch_end, s->pending.len - s->batch_end);
    s->pending.len -= s->batch_end;
    if (s->pending.data)
        s->pending.data[s->pending.len] = '\0';
    s->pending_start = next;
    s->parse_pos -= s->batch_end;
    s->batch_end = 0;
    publish_position(s);
    return 0;
}

static void js_position(relay_source *base, relay_buf *out)
{
    jsonl_source *s = (jsonl_source *)base;
    buf_printf(out, "{\"offset\":%" PRId64 "}", s->pending_start);
}

static void js_destroy(relay_source *base)
{
    jsonl_source *s = (jsonl_source *)base;
    if (s->fd >= 0 && !s->is_stdin)
        close(s->fd);
    buf_free(&s->pending);
    buf_free(&s->key);
    free(s->path);
    free(s);
}

const relay_source_ops relay_source_stdin_ops = {
    .type = "stdin",
    .create = stdin_create,
    .open = js_open,
    .poll = js_poll,
    .ack = js_ack,
    .position = js_position,
    .destroy = js_destroy,
};

const relay_source_ops relay_source_jsonl_file_ops = {
    .type = "file",
    .create = file_create,
    .open = js_open,
    .poll = js_poll,
    .ack = js_ack,
    .position = js_position,
    .destroy = js_destroy,
};
