/*
 * registry.c - compiled-in sources and sinks by config type name.
 *
 * Adding a backend: implement the ops in src/sink/X.c or src/source/X.c,
 * add a meson feature option, list it here under its HAVE_X define, and
 * print its library's version in src/version.c (--version).
 */
#include "registry.h"

#include <string.h>

#include "relay_features.h"

extern const relay_source_ops relay_source_outbox_ops;
extern const relay_source_ops relay_source_cdc_ops;
extern const relay_source_ops relay_source_stdin_ops;
extern const relay_source_ops relay_source_jsonl_file_ops;
extern const relay_sink_ops relay_sink_pg_inbox_ops;
#if HAVE_SINK_FILE
extern const relay_sink_ops relay_sink_file_ops;
extern const relay_sink_ops relay_sink_stdout_ops;
#endif
#if HAVE_NATS
extern const relay_sink_ops relay_sink_nats_ops;
extern const relay_source_ops relay_source_nats_ops;
#endif
#if HAVE_KAFKA
extern const relay_sink_ops relay_sink_kafka_ops;
extern const relay_source_ops relay_source_kafka_ops;
#endif
#if HAVE_REDIS
extern const relay_sink_ops relay_sink_redis_ops;
extern const relay_source_ops relay_source_redis_ops;
#endif
#if HAVE_RABBITMQ
extern const relay_sink_ops relay_sink_rabbitmq_ops;
extern const relay_source_ops relay_source_rabbitmq_ops;
#endif
#if HAVE_WEBHOOK
extern const relay_source_ops relay_source_webhook_ops;
extern const relay_source_ops relay_source_http_ops;
extern const relay_sink_ops relay_sink_webhook_ops;
extern const relay_sink_ops relay_sink_http_ops;
#endif
#if HAVE_SQS
extern const relay_sink_ops relay_sink_sqs_ops;
extern const relay_source_ops relay_source_sqs_ops;
#endif

static const relay_source_ops *const sources[] = {
    &relay_source_outbox_ops,
    &relay_source_cdc_ops,
    &relay_source_stdin_ops,
    &relay_source_jsonl_file_ops,
#if HAVE_NATS
    &relay_source_nats_ops,
#endif
#if HAVE_KAFKA
    &relay_source_kafka_ops,
#endif
#if HAVE_REDIS
    &relay_source_redis_ops,
#endif
#if HAVE_RABBITMQ
    &relay_source_rabbitmq_ops,
#endif
#if HAVE_WEBHOOK
    &relay_source_webhook_ops,
    &relay_source_http_ops,
#endif
#if HAVE_SQS
    &relay_source_sqs_ops,
#endif
    NULL,
};

static const relay_sink_ops *const sinks[] = {
    &relay_sink_pg_inbox_ops,
#if HAVE_SINK_FILE
    &relay_sink_file_ops,
    &relay_sink_stdout_ops,
#endif
#if HAVE_NATS
    &relay_sink_nats_ops,
#endif
#if HAVE_KAFKA
    &relay_sink_kafka_ops,
#endif
#if HAVE_REDIS
    &relay_sink_redis_ops,
#endif
#if HAVE_RABBITMQ
    &relay_sink_rabbitmq_ops,
#endif
#if HAVE_WEBHOOK
    &relay_sink_webhook_ops,
    &relay_sink_http_ops,
#endif
#if HAVE_SQS
    &relay_sink_sqs_ops,
#endif
    NULL,
};

const relay_source_ops *registry_source(const char *type)
{
    for (size_t i = 0; sources[i]; i++)
        if (strcmp(sources[i]->type, type) == 0)
            return sources[i];
    return NULL;
}

const relay_sink_ops *registry_sink(const char *type)
{
    for (size_t i = 0; sinks[i]; i++)
        if (strcmp(sinks[i]->type, type) == 0)
            return sinks[i];
    return NULL;
}

static void join_names(char *out, size_t cap, const char *const *names, size_t n)
{
    size_t off = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && off < cap; i++) {
        size_t l = strlen(names[i]);
        if (off + l + 3 >= cap)
            break;
        if (i) {
            memcpy(out + off, ", ", 2);
            off += 2;
        }
        memcpy(out + off, names[i], l);
        off += l;
        out[off] = '\0';
    }
}

const char *registry_source_names(void)
{
    static char names[256];
    const char *list[16];
    size_t n = 0;
    for (size_t i = 0; sources[i] && n < 16; i++)
        list[n++] = sources[i]->type;
    join_names(names, sizeof names, list, n);
    return names;
}

const char *registry_sink_names(void)
{
    static char names[256];
    const char *list[16];
    size_t n = 0;
    for (size_t i = 0; sinks[i] && n < 16; i++)
        list[n++] = sinks[i]->type;
    join_names(names, sizeof names, list, n);
    return names;
}
