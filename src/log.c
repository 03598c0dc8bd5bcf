/*
 * log.c - leveled logging to stderr, as text or one JSON object per line.
 *
 * text:  2026-11-21T12:00:00.123Z INFO  [orders-to-nats] pipeline started
 * json:  {"ts":"2026-11-21T12:00:00.123Z","level":"info","pipeline":"orders-to-nats","msg":"pipeline started"}
 *
 * Each line is formatted into a buffer and written with one write(2), so the
 * lines of concurrent workers never interleave without taking a lock. Text
 * that may come from outside (pipeline names, dedup keys, broker errors) is
 * escaped: a text line never contains a control character or a byte that is
 * not UTF-8, a JSON line is always valid JSON, so no value can forge a line.
 */
#include "log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"

static atomic_int g_level = LOG_INFO;
static atomic_int g_json = 0;

static const char *const level_names[] = {"error", "warn", "info", "debug", "trace"};
static const char *const level_text[] = {"ERROR", "WARN ", "INFO ", "DEBUG", "TRACE"};

void log_set_json(int json) { atomic_store(&g_json, json ? 1 : 0); }
void log_set_level(log_level lvl) { atomic_store(&g_level, (int)lvl); }
int log_enabled(log_level lvl) { return (int)lvl <= atomic_load(&g_level); }

int log_parse_level(const char *s)
{
    for (int i = 0; i <= LOG_TRACE; i++)
        if (strcasecmp(s, level_names[i]) == 0)
            return i;
    if (strcasecmp(s, "warning") == 0)
        return LOG_WARN;
    return -1;
}

static void put_timestamp(relay_buf *b)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char tmp[40];
    size_t n = strftime(tmp, sizeof tmp, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(tmp + n, sizeof tmp - n, ".%03ldZ", ts.tv_nsec / 1000000);
    buf_puts(b, tmp);
}

void log_msg(log_level lvl, const char *pipeline, const char *fmt, ...)
{
    if (!log_enabled(lvl))
        return;
    relay_buf msg = {0};
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);

    relay_buf line = {0};
    if (atomic_load(&g_json)) {
        buf_puts(&line, "{\"ts\":\"");
        put_timestamp(&line);
        buf_printf(&line, "\",\"level\":\"%s\"", level_names[lvl]);
        if (pipeline) {
            buf_puts(&line, ",\"pipeline\":");
            buf_put_json_str(&line, pipeline, strlen(pipeline));
        }
        buf_puts(&line, ",\"msg\":");
        buf_put_json_str(&line, msg.data ? msg.data : "", msg.len);
        buf_puts(&line, "}\n");
    } else {
        put_timestamp(&line);
        buf_printf(&line, " %s ", level_text[lvl]);
        if (pipeline) {
            buf_putc(&line, '[');
            buf_put_log_text(&line, pipeline, strlen(pipeline));
            buf_puts(&line, "] ");
        }
        buf_put_log_text(&line, msg.data ? msg.data : "", msg.len);
        buf_putc(&line, '\n');
    }
    size_t off = 0;
    while (off < line.len) {
        ssize_t w = write(STDERR_FILENO, line.data + off, line.len - off);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    buf_free(&msg);
    buf_free(&line);
}
