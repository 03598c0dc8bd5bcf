/*
 * config.c - command line / environment options and pipeline configuration.
 *
 * Options follow SPEC section 2: each flag has a PGTRICKLE_RELAY_* variable;
 * the flag wins. "--flag value" and "--flag=value" are both accepted. Any
 * problem is reported as one line naming the flag or variable, and the
 * caller exits 2.
 *
 * Pipeline configs are the JSONB values of relay_outbox_config /
 * relay_inbox_config rows, read through list_relay_configs(). The loader only
 * checks the common shape; each source/sink validates its own keys in its
 * create() with the cfg_* accessors below, so every message names the key as
 * "sink.format" or "source.batch_size".
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "hostpath.h"
#include "log.h"
#include "secrets.h"

/* ---- options ----------------------------------------------------------- */

const char *options_usage(void)
{
    return "usage: pgtrickle-relay [options]          run the daemon\n"
           "       pgtrickle-relay init [options]     install or upgrade the SQL catalog, then exit\n"
           "       pgtrickle-relay --version | --help\n"
           "\n"
           "options (each also read from the environment variable shown):\n"
           "  --postgres-url URL          PGTRICKLE_RELAY_POSTGRES_URL  (required) libpq URI or conninfo\n"
           "  --metrics-addr HOST:PORT    PGTRICKLE_RELAY_METRICS_ADDR  (0.0.0.0:9090)\n"
           "  --metrics-request-timeout DUR  PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT (10s)\n"
           "  --log-format text|json      PGTRICKLE_RELAY_LOG_FORMAT    (text)\n"
           "  --log-level LEVEL           PGTRICKLE_RELAY_LOG_LEVEL     (info: error warn info debug trace)\n"
           "  --relay-group-id ID         PGTRICKLE_RELAY_GROUP_ID      (default)\n"
           "  --discovery-interval DUR    PGTRICKLE_RELAY_DISCOVERY_INTERVAL (5s)\n"
           "  --shutdown-timeout DUR      PGTRICKLE_RELAY_SHUTDOWN_TIMEOUT   (30s)\n"
           "  --stall-timeout DUR         PGTRICKLE_RELAY_STALL_TIMEOUT      (60s) a pipeline whose\n"
           "                              batch keeps failing this long reports degraded\n"
           "  --allow-path PATH           PGTRICKLE_RELAY_ALLOW_PATH (':'-separated) repeatable: a\n"
           "                              directory (or file) whose files pipeline configs may\n"
           "                              name (file sinks, file sources, ${file:} secrets, TLS\n"
           "                              files); none by default\n"
           "durations: 500ms, 5s, 2m, 1h, or a number of seconds\n";
}

int parse_duration_ms(const char *s, int64_t *out_ms)
{
    if (!s || !*s)
        return -1;
    errno = 0;
    char *end;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) /* !(v >= 0): also NaN ("nan" is a strtod number) */
        return -1;
    double mult;
    if (!*end || strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else if (strcmp(end, "h") == 0)
        mult = 3600000;
    else
        return -1;
    double ms = v * mult;
    if (ms > 1e12)
        return -1;
    *out_ms = (int64_t)(ms + 0.5);
    return 0;
}

enum {
    OPT_URL,
    OPT_METRICS,
    OPT_METRICS_TIMEOUT,
    OPT_LOGFMT,
    OPT_LOGLVL,
    OPT_GROUP,
    OPT_DISCOVERY,
    OPT_SHUTDOWN,
    OPT_STALL,
    OPT_ALLOW,
    OPT_N
};

static const struct {
    const char *flag;
    const char *env;
} opt_names[OPT_N] = {
    {"--postgres-url", "PGTRICKLE_RELAY_POSTGRES_URL"},
    {"--metrics-addr", "PGTRICKLE_RELAY_METRICS_ADDR"},
    {"--metrics-request-timeout", "PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT"},
    {"--log-format", "PGTRICKLE_RELAY_LOG_FORMAT"},
    {"--log-level", "PGTRICKLE_RELAY_LOG_LEVEL"},
    {"--relay-group-id", "PGTRICKLE_RELAY_GROUP_ID"},
    {"--discovery-interval", "PGTRICKLE_RELAY_DISCOVERY_INTERVAL"},
    {"--shutdown-timeout", "PGTRICKLE_RELAY_SHUTDOWN_TIMEOUT"},
    {"--stall-timeout", "PGTRICKLE_RELAY_STALL_TIMEOUT"},
    {"--allow-path", "PGTRICKLE_RELAY_ALLOW_PATH"},
};

/* Apply one value; `origin` is the flag or env name for messages. */
static int apply_option(relay_options *o, int which, const char *v, const char *origin,
                        char *err, size_t errlen)
{
    int64_t ms;
    int lvl;
    switch (which) {
    case OPT_URL:
        if (!*v) {
            snprintf(err, errlen, "%s: must not be empty", origin);
            return -1;
        }
        free(o->postgres_url);
        o->postgres_url = xstrdup(v);
        return 0;
    case OPT_METRICS:
        if (!strchr(v, ':')) {
            snprintf(err, errlen, "%s: expected HOST:PORT, got \"%s\"", origin, v);
            return -1;
        }
        free(o->metrics_addr);
        o->metrics_addr = xstrdup(v);
        return 0;
    case OPT_METRICS_TIMEOUT:
        if (parse_duration_ms(v, &ms) < 0 || ms < 100 || ms > 3600000) {
            snprintf(err, errlen,
                     "%s: expected a duration from 100ms to 1h, like 500ms, 5s or 1m, got \"%s\"",
                     origin, v);
            return -1;
        }
        o->metrics_request_timeout_ms = ms;
        return 0;
    case OPT_LOGFMT:
        if (strcmp(v, "text") == 0)
            o->log_json = 0;
        else if (strcmp(v, "json") == 0)
            o->log_json = 1;
        else {
            snprintf(err, errlen, "%s: expected text or json, got \"%s\"", origin, v);
            return -1;
        }
        return 0;
    case OPT_LOGLVL:
        lvl = log_parse_level(v);
        if (lvl < 0) {
            snprintf(err, errlen, "%s: expected error, warn, info, debug or trace, got \"%s\"", origin, v);
            return -1;
        }
        o->log_level = lvl;
        return 0;
    case OPT_GROUP:
        if (!*v) {
            snprintf(err, errlen, "%s: must not be empty", origin);
            return -1;
        }
        free(o->group_id);
        o->group_id = xstrdup(v);
        return 0;
    case OPT_ALLOW: {
        /* Repeatable; the environment variable holds a ':'-separated list.
         * Given on the command line, the flags replace the variable's list. */
        if (origin[0] == '-' && !o->allow_from_flags) {
            hostpath_reset();
            o->allow_from_flags = 1;
        }
        char *list = xstrdup(v), *save = NULL;
        int rc = 0;
        for (char *p = strtok_r(list, origin[0] == '-' ? "" : ":", &save); p && rc == 0;
             p = strtok_r(NULL, origin[0] == '-' ? "" : ":", &save)) {
            char why[PATH_MAX + 200];
            if (hostpath_allow(p, why, sizeof why) < 0) {
                snprintf(err, errlen, "%s: %s", origin, why + strlen("--allow-path: "));
                rc = -1;
            }
        }
        free(list);
        return rc;
    }
    case OPT_DISCOVERY:
    case OPT_SHUTDOWN:
    case OPT_STALL:
        if (parse_duration_ms(v, &ms) < 0 || (which != OPT_SHUTDOWN && ms < 100)) {
            snprintf(err, errlen, "%s: expected a duration like 500ms, 5s or 1m%s, got \"%s\"", origin,
                     which != OPT_SHUTDOWN ? " (at least 100ms)" : "", v);
            return -1;
        }
        if (which == OPT_DISCOVERY)
            o->discovery_interval_ms = ms;
        else if (which == OPT_SHUTDOWN)
            o->shutdown_timeout_ms = ms;
        else
            o->stall_timeout_ms = ms;
        return 0;
    }
    return -1;
}

int options_parse(int argc, char **argv, relay_options *o, relay_command *cmd, char *err,
                  size_t errlen)
{
    memset(o, 0, sizeof *o);
    o->metrics_addr = xstrdup("0.0.0.0:9090");
    o->metrics_request_timeout_ms = 10000;
    o->group_id = xstrdup("default");
    o->log_level = LOG_INFO;
    o->discovery_interval_ms = 5000;
    o->shutdown_timeout_ms = 30000;
    o->stall_timeout_ms = 60000;
    *cmd = CMD_RUN;

    for (int i = 0; i < OPT_N; i++) {
        const char *v = getenv(opt_names[i].env);
        if (v && apply_option(o, i, v, opt_names[i].env, err, errlen) < 0)
            return -1;
    }

    int seen_cmd = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            *cmd = CMD_HELP;
            return 0;
        }
        if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            *cmd = CMD_VERSION;
            return 0;
        }
        if (a[0] != '-') {
            if (seen_cmd || strcmp(a, "init") != 0) {
                snprintf(err, errlen, "unknown command \"%s\" (expected: init, or options only)", a);
                return -1;
            }
            seen_cmd = 1;
            *cmd = CMD_INIT;
            continue;
        }
        int which = -1;
        const char *val = NULL;
        for (int k = 0; k < OPT_N; k++) {
            size_t fl = strlen(opt_names[k].flag);
            if (strncmp(a, opt_names[k].flag, fl) == 0 && (a[fl] == '\0' || a[fl] == '=')) {
                which = k;
                val = a[fl] == '=' ? a + fl + 1 : NULL;
                break;
            }
        }
        if (which < 0) {
            snprintf(err, errlen, "unknown option \"%s\" (see --help)", a);
            return -1;
        }
        if (!val) {
            if (i + 1 >= argc) {
                snprintf(err, errlen, "%s: missing value", opt_names[which].flag);
                return -1;
            }
            val = argv[++i];
        }
        if (apply_option(o, which, val, opt_names[which].flag, err, errlen) < 0)
            return -1;
    }
    if (!o->postgres_url) {
        snprintf(err, errlen,
                 "--postgres-url is required (or set PGTRICKLE_RELAY_POSTGRES_URL)");
        return -1;
    }
    return 0;
}

void options_free(relay_options *o)
{
    free(o->postgres_url);
    free(o->metrics_addr);
    free(o->group_id);
    memset(o, 0, sizeof *o);
}

/* ---- pipeline configuration --------------------------------------------- */

int pipeline_cfg_load(relay_pipeline_cfg *c, const char *name, const char *direction, int enabled,
                      const char *config_json, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(config_json, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "config is not valid JSON: %s (line %d)", jerr.text, jerr.line);
        return -1;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "config: expected a JSON object");
        goto fail;
    }
    int forward = strcmp(direction, "forward") == 0;
    if (!forward && strcmp(direction, "reverse") != 0) {
        snprintf(err, errlen, "unknown direction \"%s\"", direction);
        goto fail;
    }
    json_t *source = json_object_get(root, "source");
    json_t *sink = json_object_get(root, "sink");
    if (!json_is_object(source)) {
        snprintf(err, errlen, "config.source: expected an object");
        goto fail;
    }
    if (!json_is_object(sink)) {
        snprintf(err, errlen, "config.sink: expected an object");
        goto fail;
    }
    /* Resolve ${env:}/${file:} first: it replaces strings of the tree in
     * place, so every string read below must be read after it. */
    if (secrets_resolve(root, err, errlen) < 0)
        goto fail;
    const char *source_type = json_string_value(json_object_get(root, "source_type"));
    if (!source_type)
        source_type = json_string_value(json_object_get(source, "type"));
    if (!source_type || !*source_type) {
        if (forward)
            source_type = "outbox";
        else {
            snprintf(err, errlen, "config.source_type: missing (expected e.g. \"nats\", \"stdin\")");
            goto fail;
        }
    }
    const char *sink_type = json_string_value(json_object_get(sink, "type"));
    if (!sink_type)
        sink_type = json_string_value(json_object_get(root, "sink_type"));
    if (!sink_type || !*sink_type) {
        if (!forward)
            sink_type = "pg-inbox";
        else {
            snprintf(err, errlen, "config.sink.type: missing (expected e.g. \"file\", \"nats\")");
            goto fail;
        }
    }
    c->name = xstrdup(name);
    c->forward = forward;
    c->enabled = enabled;
    c->config_text = xstrdup(config_json);
    c->config = root;
    c->source = source;
    c->sink = sink;
    /* Borrow type strings from the (resolved) tree so they live with it. */
    json_t *st = json_object_get(root, "source_type");
    c->source_type = json_is_string(st) ? json_string_value(st) : source_type;
    if (!json_is_string(st)) {
        json_object_set_new(root, "source_type", json_string(source_type));
        c->source_type = json_string_value(json_object_get(root, "source_type"));
    }
    json_t *kt = json_object_get(sink, "type");
    if (!json_is_string(kt)) {
        json_object_set_new(sink, "type", json_string(sink_type));
        kt = json_object_get(sink, "type");
    }
    c->sink_type = json_string_value(kt);
    return 0;
fail:
    json_decref(root);
    return -1;
}

void pipeline_cfg_free(relay_pipeline_cfg *c)
{
    free(c->name);
    free(c->config_text);
    json_decref(c->config);
    memset(c, 0, sizeof *c);
}

/* ---- typed accessors ---------------------------------------------------- */

int cfg_str(const json_t *obj, const char *path, const char *key, const char *def,
            const char **out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_string(v)) {
        snprintf(err, errlen, "%s.%s: expected a string", path, key);
        return -1;
    }
    *out = json_string_value(v);
    return 0;
}

int cfg_str_required(const json_t *obj, const char *path, const char *key, const char **out,
                     char *err, size_t errlen)
{
    if (cfg_str(obj, path, key, NULL, out, err, errlen) < 0)
        return -1;
    if (!*out || !**out) {
        snprintf(err, errlen, "%s.%s: required", path, key);
        return -1;
    }
    return 0;
}

int cfg_host_path(const json_t *obj, const char *path, const char *key, const char **out,
                  char *err, size_t errlen)
{
    if (cfg_str(obj, path, key, NULL, out, err, errlen) < 0)
        return -1;
    if (!*out || !**out) {
        *out = NULL;
        return 0;
    }
    char name[200];
    snprintf(name, sizeof name, "%s.%s", path, key);
    return hostpath_check(name, *out, err, errlen);
}

int cfg_int(const json_t *obj, const char *path, const char *key, int64_t def, int64_t min,
            int64_t max, int64_t *out, char *err, size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    int64_t x;
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_string(v)) {
        /* Values that came through ${env:...} are strings. */
        const char *s = json_string_value(v);
        char *end;
        errno = 0;
        long long ll = strtoll(s, &end, 10);
        if (errno || end == s || *end) {
            snprintf(err, errlen, "%s.%s: expected an integer, got \"%s\"", path, key, s);
            return -1;
        }
        x = ll;
    } else {
        snprintf(err, errlen, "%s.%s: expected an integer", path, key);
        return -1;
    }
    if (x < min || x > max) {
        snprintf(err, errlen, "%s.%s: %" PRId64 " is out of range [%" PRId64 ", %" PRId64 "]", path,
                 key, x, min, max);
        return -1;
    }
    *out = x;
    return 0;
}

int cfg_bool(const json_t *obj, const char *path, const char *key, int def, int *out, char *err,
             size_t errlen)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (strcmp(s, "true") == 0 || strcmp(s, "1") == 0) { *out = 1; return 0; }
        if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0) { *out = 0; return 0; }
    }
    snprintf(err, errlen, "%s.%s: expected true or false", path, key);
    return -1;
}

int cfg_known_keys(const json_t *obj, const char *path, const char *const *allowed, char *err,
                   size_t errlen)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, key) == 0) {
                ok = 1;
                break;
            }
        if (!ok) {
            relay_buf b = {0};
            for (const char *const *a = allowed; *a; a++)
                buf_printf(&b, "%s%s", a == allowed ? "" : ", ", *a);
            snprintf(err, errlen, "%s.%s: unknown key (known: %s)", path, key, b.data ? b.data : "");
            buf_free(&b);
            return -1;
        }
    }
    return 0;
}
