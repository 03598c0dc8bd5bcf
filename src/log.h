/*
 * log.h - leveled logging, text or JSON lines, to stderr.
 *
 * One line per state change, never one per message (SPEC section 9). Every
 * line can carry the pipeline name. Lines are written with a single write(2)
 * so concurrent workers never interleave. Callers must never pass secrets.
 */
#ifndef RELAY_LOG_H
#define RELAY_LOG_H

typedef enum { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG, LOG_TRACE } log_level;

/* Set the output format: 0 = text, 1 = json. */
void log_set_json(int json);
/* Set the most verbose level that is printed. */
void log_set_level(log_level lvl);
/* Parse "error|warn|info|debug|trace"; returns -1 when unknown. */
int log_parse_level(const char *s);
/* Whether `lvl` would be printed (to skip building expensive messages). */
int log_enabled(log_level lvl);

/* Log a line. `pipeline` may be NULL for process-wide messages. */
void log_msg(log_level lvl, const char *pipeline, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define log_error(p, ...) log_msg(LOG_ERROR, p, __VA_ARGS__)
#define log_warn(p, ...) log_msg(LOG_WARN, p, __VA_ARGS__)
#define log_info(p, ...) log_msg(LOG_INFO, p, __VA_ARGS__)
#define log_debug(p, ...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, p, __VA_ARGS__); } while (0)
#define log_trace(p, ...) do { if (log_enabled(LOG_TRACE)) log_msg(LOG_TRACE, p, __VA_ARGS__); } while (0)

#endif
