/*
 * notify.c - sd_notify(3) messages for a systemd Type=notify service.
 *
 * libsystemd's sd_notify() does the work (it reads NOTIFY_SOCKET, returns 0
 * without it, and sends one datagram per call); this file only decides what
 * to say and when:
 *
 *   READY=1      once, from the coordinator after its first connection
 *                checked the catalog (the HTTP server was started before);
 *   STATUS=...   "owns 2 pipelines: forward/orders, reverse/payments;
 *                1 rejected" or "waiting for PostgreSQL: <libpq error>",
 *                sent when it changes (systemctl status shows it);
 *   STOPPING=1   once, when the shutdown begins.
 *
 * The notification protocol separates assignments by newlines, so every
 * control character of a pipeline name or an error text is replaced by '?'
 * before it goes into STATUS= (a pipeline named "x\nREADY=1" must not make
 * up a notification of its own).
 *
 * Built without libsystemd (meson -Dsystemd=disabled, or no libsystemd-dev),
 * every call is a no-op and the installed unit uses Type=exec instead.
 */
#include "notify.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "relay_features.h"
#include "stats.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* The longest STATUS= line sent; longer ones end in "...". */
#define STATUS_MAX 400

static struct {
    int ready;
    int stopping;
    char last[STATUS_MAX + 1];
} nt;

int notify_available(void)
{
    return HAVE_LIBSYSTEMD;
}

static void send_notification(const char *text)
{
#if HAVE_LIBSYSTEMD
    (void)sd_notify(0, text);
#else
    (void)text;
#endif
}

/* Append s to out[*off..cap), control characters as '?'; stops at cap. */
static void put_clean(char *out, size_t cap, size_t *off, const char *s)
{
    for (; *s && *off + 1 < cap; s++)
        out[(*off)++] = ((unsigned char)*s < 0x20 || *s == 0x7f) ? '?' : *s;
    out[*off] = '\0';
}

void notify_format_status(char *out, size_t cap)
{
    size_t off = 0;
    if (cap == 0)
        return;
    out[0] = '\0';
    char dberr[300];
    int db = stats_get_database(dberr, sizeof dberr);
    if (db == 0) {
        put_clean(out, cap, &off, "waiting for PostgreSQL: ");
        put_clean(out, cap, &off, dberr);
        return;
    }
    if (db < 0) {
        put_clean(out, cap, &off, "connecting to PostgreSQL");
        return;
    }
    size_t n, owned = 0;
    relay_stats **snap = stats_snapshot(&n);
    for (size_t i = 0; i < n; i++)
        owned += atomic_load(&snap[i]->running) != 0;
    char head[64];
    snprintf(head, sizeof head, "owns %zu pipeline%s", owned, owned == 1 ? "" : "s");
    put_clean(out, cap, &off, head);
    const char *sep = ": ";
    for (size_t i = 0; i < n; i++) {
        if (atomic_load(&snap[i]->running)) {
            put_clean(out, cap, &off, sep);
            put_clean(out, cap, &off, snap[i]->direction);
            put_clean(out, cap, &off, "/");
            put_clean(out, cap, &off, snap[i]->name);
            sep = ", ";
        }
        stats_unref(snap[i]);
    }
    free(snap);
    size_t nrej;
    relay_rejected *rej = stats_rejected_list(&nrej);
    stats_rejected_free(rej, nrej);
    if (nrej) {
        snprintf(head, sizeof head, "; %zu rejected", nrej);
        put_clean(out, cap, &off, head);
    }
    if (off + 1 >= cap && cap > 4)
        memcpy(out + cap - 4, "...", 4);
}

void notify_status(void)
{
    if (nt.stopping)
        return;
    char line[STATUS_MAX + 1];
    notify_format_status(line, sizeof line);
    if (strcmp(line, nt.last) == 0)
        return;
    memcpy(nt.last, line, sizeof line);
    char msg[sizeof line + 8];
    snprintf(msg, sizeof msg, "STATUS=%s", line);
    send_notification(msg);
}

void notify_ready(void)
{
    if (nt.ready || nt.stopping)
        return;
    nt.ready = 1;
    char line[STATUS_MAX + 1];
    notify_format_status(line, sizeof line);
    memcpy(nt.last, line, sizeof line);
    char msg[sizeof line + 16];
    snprintf(msg, sizeof msg, "READY=1\nSTATUS=%s", line);
    send_notification(msg);
}

void notify_stopping(void)
{
    if (nt.stopping)
        return;
    nt.stopping = 1;
    send_notification("STOPPING=1\nSTATUS=stopping: finishing the batches in flight");
}
