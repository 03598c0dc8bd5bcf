/*
 * config.h - process options (SPEC section 2) and pipeline configuration
 * (SPEC section 3: the JSONB stored by set_relay_outbox / set_relay_inbox /
 * set_relay_cdc).
 *
 * The stored pipeline shape is always the nested one:
 *   {"source_type": "...", "source": {...}, "sink_type": "...", "sink": {"type": "...", ...}}
 * (the SQL overloads normalise the README's flat keys into it). Secrets
 * (${env:NAME}, ${file:/path}) are resolved once, when a pipeline is loaded;
 * the resolved copy is never logged.
 */
#ifndef RELAY_CONFIG_H
#define RELAY_CONFIG_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef struct relay_options {
    char *postgres_url;          /* required */
    char *metrics_addr;          /* default "0.0.0.0:9090" */
    int64_t metrics_request_timeout_ms; /* default 10000: total time of one request */
    int log_json;                /* 0 text, 1 json */
    int log_level;               /* log_level */
    char *group_id;              /* default "default" */
    int64_t discovery_interval_ms; /* default 5000 */
    int64_t shutdown_timeout_ms;   /* default 30000 */
    int64_t stall_timeout_ms;      /* default 60000: a pipeline whose batch keeps failing (or
                                      whose loop does not come round) this long is degraded */
    int allow_from_flags;          /* --allow-path given (hostpath.h holds the list) */
} relay_options;

typedef enum { CMD_RUN = 0, CMD_INIT, CMD_HELP, CMD_VERSION } relay_command;

/* Parse argv and the PGTRICKLE_RELAY_* environment (flags win over env).
 * Returns 0 on success, or -1 with one line in err (caller exits 2). */
int options_parse(int argc, char **argv, relay_options *o, relay_command *cmd,
                  char *err, size_t errlen);
void options_free(relay_options *o);
/* Usage text for --help. */
const char *options_usage(void);

/* Parse a duration: "250ms", "5s", "2m", "1h", or a bare number of seconds.
 * Returns 0 and the value in milliseconds, or -1. */
int parse_duration_ms(const char *s, int64_t *out_ms);

typedef struct relay_pipeline_cfg {
    char *name;
    int forward;            /* 1: relay_outbox_config row, 0: relay_inbox_config row */
    int enabled;
    char *config_text;      /* the stored JSON text, secrets unresolved (change detection) */
    json_t *config;         /* parsed, secrets resolved; owned */
    const char *source_type;/* borrowed from config */
    const char *sink_type;  /* borrowed from config */
    json_t *source;         /* borrowed: config.source (an object) */
    json_t *sink;           /* borrowed: config.sink (an object) */
} relay_pipeline_cfg;

/* Load one pipeline from a list_relay_configs() row: parses the JSON, checks
 * the shape (source/sink objects, types present), resolves secrets.
 * Returns 0, or -1 with a message that names the offending key (never a
 * secret value). On error `c` holds nothing that needs freeing. */
int pipeline_cfg_load(relay_pipeline_cfg *c, const char *name, const char *direction,
                      int enabled, const char *config_json, char *err, size_t errlen);
void pipeline_cfg_free(relay_pipeline_cfg *c);

/*
 * Typed accessors for backend config objects. `path` names the object in
 * messages ("sink", "source"). Each returns 0 (value or default stored), or
 * -1 with err = "<path>.<key>: expected ...".
 */
int cfg_str(const json_t *obj, const char *path, const char *key, const char *def,
            const char **out, char *err, size_t errlen);
/* Like cfg_str, but a missing or empty value is an error naming the key. */
int cfg_str_required(const json_t *obj, const char *path, const char *key,
                     const char **out, char *err, size_t errlen);
/* An optional path on the relay's host (a file to write or read, a TLS or
 * credentials file): NULL when absent or empty, else it must lie under an
 * --allow-path entry (hostpath.h), or -1 with err naming the key. Every
 * config key that names a host path reads it through this. */
int cfg_host_path(const json_t *obj, const char *path, const char *key, const char **out,
                  char *err, size_t errlen);
int cfg_int(const json_t *obj, const char *path, const char *key, int64_t def,
            int64_t min, int64_t max, int64_t *out, char *err, size_t errlen);
int cfg_bool(const json_t *obj, const char *path, const char *key, int def,
             int *out, char *err, size_t errlen);
/* Check that every key of `obj` is in the NULL-terminated `allowed` list.
 * Returns 0, or -1 with err naming the first unknown key. */
int cfg_known_keys(const json_t *obj, const char *path, const char *const *allowed,
                   char *err, size_t errlen);

#endif
