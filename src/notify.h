/*
 * notify.h - tell the service manager (systemd, Type=notify) how the relay is
 * doing, per sd_notify(3).
 *
 *   notify_ready()     READY=1, once: the HTTP endpoints listen and the
 *                      coordinator checked the catalog (its first connection
 *                      succeeded). Later calls do nothing.
 *   notify_status()    STATUS=<one line>: the pipelines this relay owns, or
 *                      why it waits (PostgreSQL unreachable). Sent only when
 *                      the line changed since the last one.
 *   notify_stopping()  STOPPING=1 with STATUS=stopping, once, when the relay
 *                      begins its shutdown.
 *
 * Every call is a no-op when NOTIFY_SOCKET is not set (not started by a
 * service manager) or when the relay was built without libsystemd
 * (notify_available() says which). Errors are ignored: a notification is
 * never a reason to stop relaying. All calls are made from the
 * coordinator's thread (the main thread); they are not thread-safe.
 */
#ifndef RELAY_NOTIFY_H
#define RELAY_NOTIFY_H

#include <stddef.h>

void notify_ready(void);
void notify_status(void);
void notify_stopping(void);

/* 1 when the relay was built with libsystemd (sd_notify), 0 otherwise. */
int notify_available(void);

/* The status line notify_status() would send now, written to out (always
 * NUL-terminated, truncated to cap). Exposed for tests. */
void notify_format_status(char *out, size_t cap);

#endif
