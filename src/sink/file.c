/*
 * file.c - the stdout and file sinks (SPEC section 7, row stdout/file).
 *
 * Both types share one implementation; "stdout" always writes to fd 1, and
 * "file" writes to `output` ("-" also meaning stdout).
 *
 * Formats:
 *   jsonl        one native envelope per line
 *   json_pretty  each envelope indented by two spaces, then a newline
 *   csv          dedup_key,subject,op,is_full_refresh,outbox_id,refresh_id,payload
 *                with RFC 4180 quoting; the header starts every new or empty
 *                file (and is printed once per process on stdout)
 *   msgpack      length-prefixed records: a 4-byte big-endian length, then
 *                that many bytes of the event in the msgpack format
 *                (encode.h; the worker encodes each body once and
 *                dead-letters an event it cannot encode). MessagePack is
 *                self-delimiting, but the prefix lets a reader (and open()
 *                below) find a torn last record without a MessagePack
 *                decoder, and skip records it does not want.
 *
 * One publish() call is one batch: every message is encoded into a single
 * buffer, written with one write loop (partial writes, EINTR and
 * non-blocking descriptors handled), then fsync'ed once. Only then are the
 * messages marked MSG_CONFIRMED, so "confirmed" means "on disk" for files and
 * "handed to the kernel" for stdout.
 *
 * Failure never leaves a half batch behind in a file: the size before the
 * batch is remembered, and on a write or fsync error the file is truncated
 * back to it and closed; the next open() (or publish()) reopens it. The
 * worker then retries the same batch with the same dedup keys.
 *
 * A crash (kill -9, power loss) in the middle of a write can leave part of a
 * record at the end of the file. Every text record ends with a newline, so
 * open() cuts the file back to its last newline; a msgpack file is walked
 * from its start, record length by record length, and cut after the last
 * whole record. The cut batch was never acknowledged and is delivered
 * again, whole.
 *
 * Rotation happens before a batch, never inside one: when the file is
 * non-empty and the batch would push it past rotate_bytes, the file is
 * renamed to "<output>.N" (N = 1 + the highest existing suffix, so ".1" is
 * the oldest), the directory is fsync'ed, and a fresh file is opened. A batch
 * bigger than rotate_bytes is written whole into a file of its own.
 *
 * json_pretty re-indents the envelope text itself instead of going through
 * a JSON tree: a round trip through a parser would rewrite numbers (1.10
 * becomes 1.1000000000000001) and reject integers beyond 64 bits, and a
 * relay must never alter a payload. The layout is the one jansson's
 * JSON_INDENT(2) produces.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "log.h"
#include "message.h"
#include "sink/sink.h"
#include "stats.h"
#include "worker.h"

#define DEFAULT_ROTATE_BYTES ((int64_t)100 * 1024 * 1024)

#define CSV_HEADER "dedup_key,subject,op,is_full_refresh,outbox_id,refresh_id,payload\n"

typedef enum {
    FMT_JSONL = 0, FMT_JSON_PRETTY, FMT_CSV, FMT_MSGPACK, FMT_DEBEZIUM, FMT_CLOUDEVENTS, FMT_COUNT
} file_format;

static const char *const format_names[FMT_COUNT] = {"jsonl", "json_pretty", "csv", "msgpack",
                                                    "debezium", "cloudevents"};

/* msgpack records: a big-endian uint32 length before each body. */
#define FRAME_HEADER 4

typedef struct file_sink {
    relay_sink base;
    char *output;          /* path; NULL writes to stdout */
    file_format format;
    int64_t rotate_bytes;  /* 0 = never rotate */
    int do_fsync;
    int fd;                /* -1 while closed */
    int is_regular;        /* fd is a regular file: size, truncate and rotation apply */
    int header_done;       /* csv on stdout: header already printed */
    uint64_t bytes_written;
    uint64_t rotations;
    relay_buf out;         /* the batch being written (reused) */
} file_sink;

extern const relay_sink_ops relay_sink_file_ops;
extern const relay_sink_ops relay_sink_stdout_ops;

static const char *pipeline_name(const file_sink *fs)
{
    return fs->base.w ? fs->base.w->cfg.name : NULL;
}

static const char *output_name(const file_sink *fs)
{
    return fs->output ? fs->output : "stdout";
}

/* ---- configuration ----------------------------------------------------- */

static int parse_format(const json_t *cfg, file_format *out, char *err, size_t errlen)
{
    const char *name;
    if (cfg_str(cfg, "sink", "format", "jsonl", &name, err, errlen) < 0)
        return -1;
    for (int f = 0; f < FMT_COUNT; f++) {
        if (strcmp(name, format_names[f]) == 0) {
            *out = (file_format)f;
            return 0;
        }
    }
    snprintf(err, errlen, "sink.format: expected one of jsonl, json_pretty, csv, msgpack, "
             "debezium, cloudevents");
    return -1;
}

/* Resolve `output`: NULL means stdout. "stdout" ignores the key; "file" requires it. */
static int parse_output(const json_t *cfg, int stdout_type, const char **out, char *err,
                        size_t errlen)
{
    const char *path = NULL;
    if (stdout_type) {
        if (cfg_str(cfg, "sink", "output", NULL, &path, err, errlen) < 0)
            return -1;
        *out = NULL;
        return 0;
    }
    if (cfg_str_required(cfg, "sink", "output", &path, err, errlen) < 0)
        return -1;
    if (strcmp(path, "-") == 0) {
        *out = NULL;
        return 0;
    }
    return cfg_host_path(cfg, "sink", "output", out, err, errlen);
}

static int parse_subject_template(const json_t *cfg, char **out, char *err, size_t errlen)
{
    const char *tmpl;
    char why[256];
    if (cfg_str(cfg, "sink", "subject_template", NULL, &tmpl, err, errlen) < 0)
        return -1;
    if (!tmpl) {
        *out = NULL;
        return 0;
    }
    if (subject_template_check(tmpl, why, sizeof why) < 0) {
        snprintf(err, errlen, "sink.subject_template: %s", why);
        return -1;
    }
    *out = xstrdup(tmpl);
    return 0;
}

static relay_sink *create_sink(const json_t *cfg, struct relay_worker *w, int stdout_type,
                               char *err, size_t errlen)
{
    static const char *const keys[] = {"type", "format", "output", "rotate_bytes", "fsync",
                                       "subject_template", RELAY_FORMAT_KEYS, NULL};
    file_format format;
    const char *output;
    int64_t rotate;
    int do_fsync;
    char *tmpl;
    if (cfg_known_keys(cfg, "sink", keys, err, errlen) < 0 ||
        parse_format(cfg, &format, err, errlen) < 0 ||
        parse_output(cfg, stdout_type, &output, err, errlen) < 0 ||
        cfg_int(cfg, "sink", "rotate_bytes", output ? DEFAULT_ROTATE_BYTES : 0, 0, INT64_MAX,
                &rotate, err, errlen) < 0 ||
        cfg_bool(cfg, "sink", "fsync", output != NULL, &do_fsync, err, errlen) < 0)
        return NULL;
    if (!output && rotate > 0) {
        snprintf(err, errlen, "sink.rotate_bytes: rotation needs an output file, not stdout");
        return NULL;
    }
    relay_format enc = format == FMT_MSGPACK     ? RELAY_FORMAT_MSGPACK
                     : format == FMT_DEBEZIUM    ? RELAY_FORMAT_DEBEZIUM
                     : format == FMT_CLOUDEVENTS ? RELAY_FORMAT_CLOUDEVENTS
                                                 : RELAY_FORMAT_NATIVE;
    relay_format_opts fopts;
    if (relay_format_opts_from_cfg(cfg, "sink", enc, 0, &fopts, err, errlen) < 0)
        return NULL;
    if (parse_subject_template(cfg, &tmpl, err, errlen) < 0) {
        relay_format_opts_free(&fopts);
        return NULL;
    }

    file_sink *fs = xcalloc(1, sizeof *fs);
    fs->base.ops = stdout_type ? &relay_sink_stdout_ops : &relay_sink_file_ops;
    fs->base.w = w;
    fs->base.subject_template = tmpl;
    fs->output = output ? xstrdup(output) : NULL;
    fs->format = format;
    fs->base.fopts = fopts;
    if (enc != RELAY_FORMAT_NATIVE) {
        fs->base.encode = 1;
        fs->base.format = enc;
    }
    fs->rotate_bytes = rotate;
    fs->do_fsync = do_fsync;
    fs->fd = -1;
    return &fs->base;
}

static relay_sink *file_create(const json_t *cfg, struct relay_worker *w, char *err, size_t errlen)
{
    return create_sink(cfg, w, 0, err, errlen);
}

static relay_sink *stdout_create(const json_t *cfg, struct relay_worker *w, char *err,
                                 size_t errlen)
{
    return create_sink(cfg, w, 1, err, errlen);
}

/* ---- encoding ---------------------------------------------------------- */

/* JSON forbids raw CR/LF inside strings, so any in an envelope is
 * insignificant whitespace (from a payload's text) and can become a space,
 * keeping one envelope per line. */
static void flatten_newlines(char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == '\n' || p[i] == '\r')
            p[i] = ' ';
}

static void put_indent(relay_buf *out, int depth)
{
    buf_putc(out, '\n');
    for (int i = 0; i < depth; i++)
        buf_append(out, "  ", 2);
}

static int is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Index just past the string literal starting at s[i] (a '"'). */
static size_t skip_string(const char *s, size_t n, size_t i)
{
    for (i++; i < n && s[i] != '"'; i++)
        if (s[i] == '\\')
            i++;
    return i < n ? i + 1 : n;
}

/* Index of the next non-space byte at or after i. */
static size_t skip_space(const char *s, size_t n, size_t i)
{
    while (i < n && is_json_space(s[i]))
        i++;
    return i;
}

/* Re-indent JSON text with two spaces per level, keeping every token verbatim. */
static void put_pretty(relay_buf *out, const char *s, size_t n)
{
    int depth = 0;
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '"') {
            size_t end = skip_string(s, n, i);
            buf_append(out, s + i, end - i);
            i = end;
            continue;
        }
        i++;
        if (is_json_space(c))
            continue;
        if (c == '{' || c == '[') {
            size_t next = skip_space(s, n, i);
            if (next < n && s[next] == (c == '{' ? '}' : ']')) {
                buf_putc(out, c);
                buf_putc(out, s[next]);
                i = next + 1;
                continue;
            }
            buf_putc(out, c);
            put_indent(out, ++depth);
        } else if (c == '}' || c == ']') {
            put_indent(out, --depth);
            buf_putc(out, c);
        } else if (c == ',') {
            buf_putc(out, ',');
            put_indent(out, depth);
        } else if (c == ':') {
            buf_append(out, ": ", 2);
        } else {
            buf_putc(out, c);
        }
    }
}

/* One CSV field, quoted only when it contains a comma, quote, CR or LF. */
static void put_csv_field(relay_buf *out, const char *s, size_t n)
{
    int quote = 0;
    for (size_t i = 0; i < n && !quote; i++)
        quote = s[i] == ',' || s[i] == '"' || s[i] == '\n' || s[i] == '\r';
    if (!quote) {
        buf_append(out, s, n);
        return;
    }
    buf_putc(out, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '"')
            continue;
        buf_append(out, s + run, i + 1 - run); /* up to and including the quote */
        buf_putc(out, '"');                   /* doubled */
        run = i + 1;
    }
    buf_append(out, s + run, n - run);
    buf_putc(out, '"');
}

static void put_csv_str(relay_buf *out, const char *s)
{
    if (s)
        put_csv_field(out, s, strlen(s));
}

static void put_csv_row(relay_buf *out, const relay_msg *m)
{
    put_csv_str(out, m->dedup_key);
    buf_putc(out, ',');
    put_csv_str(out, m->subject);
    buf_putc(out, ',');
    buf_puts(out, relay_op_name(m->op));
    buf_puts(out, m->is_full_refresh ? ",true," : ",false,");
    if (m->outbox_id >= 0)
        buf_put_i64(out, m->outbox_id);
    buf_putc(out, ',');
    put_csv_str(out, m->refresh_id);
    buf_putc(out, ',');
    if (m->payload && m->payload_len)
        put_csv_field(out, m->payload, m->payload_len);
    buf_putc(out, '\n');
}

static void put_record(file_sink *fs, const relay_msg *m, relay_buf *scratch)
{
    size_t start = fs->out.len;
    switch (fs->format) {
    case FMT_JSONL:
        msg_encode_native(m, &fs->out);
        flatten_newlines(fs->out.data + start, fs->out.len - start);
        buf_putc(&fs->out, '\n');
        break;
    case FMT_JSON_PRETTY:
        buf_clear(scratch);
        msg_encode_native(m, scratch);
        put_pretty(&fs->out, scratch->data, scratch->len);
        buf_putc(&fs->out, '\n');
        break;
    case FMT_MSGPACK: {
        /* The worker encoded the body (encode.h); bodies stay far below
         * 4 GiB (the sources' payload limits). */
        uint32_t n = (uint32_t)m->body_len;
        unsigned char h[FRAME_HEADER] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16),
                                         (unsigned char)(n >> 8), (unsigned char)n};
        buf_append(&fs->out, (const char *)h, sizeof h);
        buf_append(&fs->out, m->body, m->body_len);
        break;
    }
    case FMT_DEBEZIUM:
    case FMT_CLOUDEVENTS:
        /* One event per line (the worker encoded it; a structured
         * CloudEvent for cloudevents). */
        buf_append(&fs->out, m->body, m->body_len);
        flatten_newlines(fs->out.data + start, fs->out.len - start);
        buf_putc(&fs->out, '\n');
        break;
    case FMT_CSV:
    case FMT_COUNT:
        put_csv_row(&fs->out, m);
        break;
    }
}

/* Encode the batch into fs->out, preceded by the CSV header when the format
 * has one. Returns the header's length (0 when none), so the caller can skip it. */
static size_t encode_batch(file_sink *fs, relay_msg **msgs, size_t n)
{
    relay_buf scratch = {0};
    buf_clear(&fs->out);
    size_t header_len = 0;
    if (fs->format == FMT_CSV) {
        buf_puts(&fs->out, CSV_HEADER);
        header_len = fs->out.len;
    }
    for (size_t i = 0; i < n; i++)
        put_record(fs, msgs[i], &scratch);
    buf_free(&scratch);
    return header_len;
}

/* ---- file handling ----------------------------------------------------- */

/* fsync the directory holding `path`, making a create or rename durable.
 * Filesystems that cannot sync directories (EINVAL) are accepted. */
static int sync_parent_dir(const char *path, char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    int rc = 0;
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) < 0 && errno != EINVAL)) {
        snprintf(err, errlen, "fsync directory %s: %s", dir, strerror(errno));
        rc = -1;
    }
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

/* Cut the file at `end`, dropping the partial record after it. */
static int cut_partial(file_sink *fs, int fd, off_t end, off_t size, char *err, size_t errlen)
{
    if (ftruncate(fd, end) < 0) {
        snprintf(err, errlen, "truncate %s: %s", fs->output, strerror(errno));
        return -1;
    }
    log_warn(pipeline_name(fs), "%s ended with a partial record (%lld bytes, from an interrupted "
             "write): removed; that batch is delivered again", fs->output,
             (long long)(size - end));
    return 0;
}

/* Cut a partial last record (left by a crash mid-write) back to the last
 * newline. Returns 0, or -1 with err. */
static int drop_partial_record(file_sink *fs, int fd, off_t size, char *err, size_t errlen)
{
    char tail[4096];
    off_t end = size;
    while (end > 0) {
        off_t start = end > (off_t)sizeof tail ? end - (off_t)sizeof tail : 0;
        ssize_t n = pread(fd, tail, (size_t)(end - start), start);
        if (n <= 0) {
            snprintf(err, errlen, "read %s: %s", fs->output, n < 0 ? strerror(errno) : "short read");
            return -1;
        }
        if (end == size && tail[n - 1] == '\n')
            return 0; /* complete: the common case */
        for (ssize_t i = n - 1; i >= 0; i--) {
            if (tail[i] == '\n') {
                end = start + i + 1;
                goto cut;
            }
        }
        end = start;
    }
cut:
    return cut_partial(fs, fd, end, size, err, errlen);
}

/* The msgpack form of drop_partial_record: walk the records from the start
 * of the file and cut it after the last whole one. */
static int drop_partial_frame(file_sink *fs, int fd, off_t size, char *err, size_t errlen)
{
    off_t end = 0;
    while (size - end >= FRAME_HEADER) {
        unsigned char h[FRAME_HEADER];
        ssize_t n = pread(fd, h, sizeof h, end);
        if (n != (ssize_t)sizeof h) {
            snprintf(err, errlen, "read %s: %s", fs->output, n < 0 ? strerror(errno) : "short read");
            return -1;
        }
        off_t len = (off_t)(((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) |
                            ((uint32_t)h[2] << 8) | h[3]);
        if (size - end - FRAME_HEADER < len)
            break;
        end += FRAME_HEADER + len;
    }
    if (end == size)
        return 0;
    return cut_partial(fs, fd, end, size, err, errlen);
}

static int open_output(file_sink *fs, char *err, size_t errlen)
{
    if (!fs->output) {
        fs->fd = STDOUT_FILENO;
        fs->is_regular = 0;
        return 0;
    }
    int fd = open(fs->output, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "open %s: %s", fs->output, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        snprintf(err, errlen, "stat %s: %s", fs->output, strerror(errno));
        close(fd);
        return -1;
    }
    if (S_ISREG(st.st_mode) && st.st_size > 0 &&
        (fs->format == FMT_MSGPACK ? drop_partial_frame(fs, fd, st.st_size, err, errlen)
                                   : drop_partial_record(fs, fd, st.st_size, err, errlen)) < 0) {
        close(fd);
        return -1;
    }
    if (fs->do_fsync && sync_parent_dir(fs->output, err, errlen) < 0) {
        close(fd);
        return -1;
    }
    fs->fd = fd;
    fs->is_regular = S_ISREG(st.st_mode);
    return 0;
}

static void close_output(file_sink *fs)
{
    if (fs->fd >= 0 && fs->output)
        close(fs->fd);
    fs->fd = -1;
}

static int current_size(file_sink *fs, off_t *size, char *err, size_t errlen)
{
    struct stat st;
    *size = 0;
    if (!fs->is_regular)
        return 0;
    if (fstat(fs->fd, &st) < 0) {
        snprintf(err, errlen, "stat %s: %s", output_name(fs), strerror(errno));
        return -1;
    }
    *size = st.st_size;
    return 0;
}

/* Highest N among "<base>.N" entries next to `path` (0 when none). */
static int highest_suffix(const char *path, uint64_t *out, char *err, size_t errlen)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t base_len = strlen(base);
    char *dir = slash ? xstrndup(path, slash == path ? 1 : (size_t)(slash - path)) : xstrdup(".");
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "rotate %s: opendir %s: %s", path, dir, strerror(errno));
        free(dir);
        return -1;
    }
    uint64_t max = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        if (strncmp(name, base, base_len) != 0 || name[base_len] != '.')
            continue;
        const char *digits = name + base_len + 1;
        size_t nd = strlen(digits);
        if (nd == 0 || nd > 18 || strspn(digits, "0123456789") != nd)
            continue;
        uint64_t v = strtoull(digits, NULL, 10);
        if (v > max)
            max = v;
    }
    closedir(d);
    free(dir);
    *out = max;
    return 0;
}

static int rotate(file_sink *fs, char *err, size_t errlen)
{
    uint64_t n;
    close_output(fs);
    if (highest_suffix(fs->output, &n, err, errlen) < 0)
        return -1;
    relay_buf target = {0};
    buf_printf(&target, "%s.%" PRIu64, fs->output, n + 1);
    if (rename(fs->output, target.data) < 0) {
        snprintf(err, errlen, "rotate %s to %s: %s", fs->output, target.data, strerror(errno));
        buf_free(&target);
        return -1;
    }
    /* open_output fsyncs the directory: that covers the rename and the new file. */
    int rc = open_output(fs, err, errlen);
    if (rc == 0) {
        fs->rotations++;
        log_info(pipeline_name(fs), "file sink: rotated %s to %s", fs->output, target.data);
    }
    buf_free(&target);
    return rc;
}

static int needs_rotation(const file_sink *fs, off_t size, size_t batch_bytes)
{
    return fs->is_regular && fs->rotate_bytes > 0 && size > 0 &&
           (uint64_t)size + batch_bytes > (uint64_t)fs->rotate_bytes;
}

/* Wait until a non-blocking fd accepts more bytes. Gives up only when the
 * worker is stopping and its shutdown deadline has passed. */
static int wait_writable(file_sink *fs)
{
    struct pollfd p = {.fd = fs->fd, .events = POLLOUT};
    for (;;) {
        if (poll(&p, 1, 200) > 0)
            return 0; /* writable, or an error the next write() reports */
        relay_worker *w = fs->base.w;
        if (w && atomic_load(&w->stop) && now_mono_ms() >= atomic_load(&w->stop_deadline_ms))
            return -1;
    }
}

static int write_all(file_sink *fs, const char *p, size_t len, char *err, size_t errlen)
{
    while (len > 0) {
        ssize_t n = write(fs->fd, p, len);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (wait_writable(fs) == 0)
                continue;
            snprintf(err, errlen, "write %s: shutdown deadline passed", output_name(fs));
            return -1;
        }
        snprintf(err, errlen, "write %s: %s", output_name(fs), n < 0 ? strerror(errno) : "no progress");
        return -1;
    }
    return 0;
}

/* fsync when configured. Pipes and terminals cannot be synced: that is not an error. */
static int sync_output(file_sink *fs, char *err, size_t errlen)
{
    if (!fs->do_fsync)
        return 0;
    int rc;
    do
        rc = fsync(fs->fd);
    while (rc < 0 && errno == EINTR);
    if (rc == 0 || (!fs->is_regular && (errno == EINVAL || errno == EROFS || errno == ENOTSUP)))
        return 0;
    snprintf(err, errlen, "fsync %s: %s", output_name(fs), strerror(errno));
    return -1;
}

/* Remove whatever part of a failed batch reached the file, then close it. */
static void undo_batch(file_sink *fs, off_t size_before)
{
    if (fs->is_regular && ftruncate(fs->fd, size_before) < 0)
        log_error(pipeline_name(fs),
                  "file sink: cannot truncate %s back to %lld bytes after a failed write: %s",
                  output_name(fs), (long long)size_before, strerror(errno));
    close_output(fs);
}

/* ---- operations -------------------------------------------------------- */

static int file_open(relay_sink *s, char *err, size_t errlen)
{
    file_sink *fs = (file_sink *)s;
    if (fs->fd >= 0)
        return 0;
    return open_output(fs, err, errlen);
}

static void set_states(relay_msg **msgs, size_t n, relay_msg_state state)
{
    for (size_t i = 0; i < n; i++)
        msgs[i]->state = state;
}

static int file_publish(relay_sink *s, relay_msg **msgs, size_t n, char *err, size_t errlen)
{
    file_sink *fs = (file_sink *)s;
    set_states(msgs, n, MSG_RETRY);
    if (n == 0)
        return 0;
    if (file_open(s, err, errlen) < 0)
        return -1;

    size_t header_len = encode_batch(fs, msgs, n);
    off_t size;
    if (current_size(fs, &size, err, errlen) < 0) {
        close_output(fs);
        return -1;
    }
    if (needs_rotation(fs, size, fs->out.len - header_len)) {
        if (rotate(fs, err, errlen) < 0)
            return -1;
        size = 0;
    }
    int with_header = header_len && (fs->is_regular ? size == 0 : !fs->header_done);
    size_t start = with_header ? 0 : header_len;
    size_t len = fs->out.len - start;
    if (write_all(fs, fs->out.data + start, len, err, errlen) < 0 ||
        sync_output(fs, err, errlen) < 0) {
        undo_batch(fs, size);
        return -1;
    }
    if (with_header)
        fs->header_done = 1;
    fs->bytes_written += len;
    set_states(msgs, n, MSG_CONFIRMED);
    return 0;
}

static void file_describe(relay_sink *s, relay_buf *out)
{
    file_sink *fs = (file_sink *)s;
    const char *output = fs->output ? fs->output : "-";
    buf_puts(out, "{\"output\":");
    buf_put_json_str(out, output, strlen(output));
    buf_printf(out, ",\"format\":\"%s\",\"bytes_written\":%" PRIu64 ",\"rotations\":%" PRIu64 "}",
               format_names[fs->format], fs->bytes_written, fs->rotations);
}

static void file_destroy(relay_sink *s)
{
    if (!s)
        return;
    file_sink *fs = (file_sink *)s;
    close_output(fs);
    buf_free(&fs->out);
    free(fs->output);
    free(fs->base.subject_template);
    relay_format_opts_free(&fs->base.fopts);
    free(fs);
}

const relay_sink_ops relay_sink_file_ops = {
    .type = "file",
    .create = file_create,
    .open = file_open,
    .publish = file_publish,
    .describe = file_describe,
    .destroy = file_destroy,
};

const relay_sink_ops relay_sink_stdout_ops = {
    .type = "stdout",
    .create = stdout_create,
    .open = file_open,
    .publish = file_publish,
    .describe = file_describe,
    .destroy = file_destroy,
};
