/*
 * fuzz_config.c - the pipeline config loader and secrets (src/config.c:
 * pipeline_cfg_load, cfg_str/cfg_str_required/cfg_int/cfg_bool/
 * cfg_known_keys, parse_duration_ms; src/secrets.c: secrets_resolve and
 * secrets_expand through the loader; src/encode.c: relay_format_from_cfg).
 *
 * Input: "<direction>\n<config JSON>", direction "forward" or "reverse" as
 * list_relay_configs() returns it (anything else must be refused). The JSON
 * is a relay_outbox_config / relay_inbox_config row's value, which a row
 * written without the SQL API can make anything.
 *
 * Secrets: ${env:RELAY_FUZZ_SECRET} and the files in /tmp/relay-fuzz-secrets/
 * (made by LLVMFuzzerInitialize) resolve; an input naming a ${file:...}
 * outside that directory is skipped, so the fuzzer never reads /dev/stdin or
 * other files of the machine.
 *
 * Checks: on success, the types are non-empty strings owned by the resolved
 * tree, source and sink are objects of it, config_text is the input; on
 * failure, err is set and never contains a secret's value; every accessor
 * either stores a value in range or names "<path>.<key>" in its error.
 */
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz.h"

#include "config.h"
#include "encode.h"

#define SECRET_DIR "/tmp/relay-fuzz-secrets"
#define SECRET_VALUE "fuzz-secret-value"

static void write_file(const char *name, const char *data, size_t n)
{
    char path[256], tmp[300];
    snprintf(path, sizeof path, SECRET_DIR "/%s", name);
    snprintf(tmp, sizeof tmp, "%s.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "fuzz_config: cannot write %s: %s\n", path, strerror(errno));
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (mkdir(SECRET_DIR, 0700) < 0 && errno != EEXIST) {
        fprintf(stderr, "fuzz_config: mkdir %s: %s\n", SECRET_DIR, strerror(errno));
        abort();
    }
    write_file("token", SECRET_VALUE "\n", strlen(SECRET_VALUE) + 1);
    write_file("crlf", SECRET_VALUE "\r\n", strlen(SECRET_VALUE) + 2);
    write_file("empty", "", 0);
    size_t big = (1 << 20) + 1; /* one byte over the 1 MiB limit */
    char *b = malloc(big);
    memset(b, 'x', big);
    write_file("big", b, big);
    free(b);
    setenv("RELAY_FUZZ_SECRET", SECRET_VALUE, 1);
    setenv("RELAY_FUZZ_EMPTY", "", 1);
    return 0;
}

/* Would secrets_expand() open a file outside SECRET_DIR for string s? (The
 * same scan as secrets_expand: "${file:" up to the next '}'.) */
static int reads_foreign_file(const char *s)
{
    const char *p = s;
    const char *ref;
    while ((ref = strstr(p, "${")) != NULL) {
        const char *end = strchr(ref, '}');
        int is_env = strncmp(ref + 2, "env:", 4) == 0;
        int is_file = strncmp(ref + 2, "file:", 5) == 0;
        if (!end || (!is_env && !is_file)) {
            p = ref + 2;
            continue;
        }
        if (is_file) {
            const char *path = ref + 7;
            size_t n = (size_t)(end - path);
            size_t dl = strlen(SECRET_DIR "/");
            if (n < dl || memcmp(path, SECRET_DIR "/", dl) != 0)
                return 1;
            for (size_t i = dl; i + 1 < n; i++)
                if (path[i] == '.' && path[i + 1] == '.')
                    return 1;
        }
        p = end + 1;
    }
    return 0;
}

static int tree_reads_foreign_file(json_t *v)
{
    const char *k;
    json_t *c;
    size_t i;
    if (json_is_object(v)) {
        json_object_foreach(v, k, c) if (tree_reads_foreign_file(c)) return 1;
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, c) if (tree_reads_foreign_file(c)) return 1;
    } else if (json_is_string(v)) {
        return reads_foreign_file(json_string_value(v));
    }
    return 0;
}

/* The error of an accessor names the key: "<path>.<key>: ...". */
static void check_err(const char *err, const char *path, const char *key)
{
    char want[600];
    snprintf(want, sizeof want, "%s.%s", path, key);
    size_t n = strlen(want), e = strlen(err);
    /* a long key's message may be cut at the size of err */
    FUZZ_CHECK(e > 0 && strncmp(err, want, e < n ? e : n) == 0,
               "error \"%s\" does not start with %s", err, want);
}

static void accessors(json_t *obj, const char *path)
{
    static const char *const known[] = {"type", "outbox", "format", "url", "batch_size", NULL};
    char err[512];
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        const char *s;
        int64_t n;
        int b;
        err[0] = '\0';
        if (cfg_str(obj, path, key, "def", &s, err, sizeof err) == 0)
            FUZZ_CHECK(json_is_null(v) ? strcmp(s, "def") == 0 : s == json_string_value(v),
                       "cfg_str value");
        else
            check_err(err, path, key);
        if (cfg_str_required(obj, path, key, &s, err, sizeof err) == 0)
            FUZZ_CHECK(s && *s, "cfg_str_required gave an empty value");
        else
            check_err(err, path, key);
        if (cfg_int(obj, path, key, 7, -5, 100000, &n, err, sizeof err) == 0)
            FUZZ_CHECK(n >= -5 && n <= 100000, "cfg_int out of range: %lld", (long long)n);
        else
            check_err(err, path, key);
        if (cfg_bool(obj, path, key, 0, &b, err, sizeof err) == 0)
            FUZZ_CHECK(b == 0 || b == 1, "cfg_bool %d", b);
        else
            check_err(err, path, key);
        if (json_is_string(v)) {
            int64_t ms;
            if (parse_duration_ms(json_string_value(v), &ms) == 0)
                FUZZ_CHECK(ms >= 0 && ms <= 1000000000000LL, "duration %lld", (long long)ms);
        }
    }
    if (cfg_known_keys(obj, path, known, err, sizeof err) < 0)
        FUZZ_CHECK(strncmp(err, path, strlen(path)) == 0 &&
                   (strstr(err, "unknown key") || strlen(err) == sizeof err - 1 /* cut */),
                   "cfg_known_keys error \"%s\"", err);
    relay_format f;
    if (relay_format_from_cfg(obj, path, &f, err, sizeof err) == 0)
        FUZZ_CHECK(f == RELAY_FORMAT_NATIVE || f == RELAY_FORMAT_MSGPACK ||
                       f == RELAY_FORMAT_DEBEZIUM || f == RELAY_FORMAT_CLOUDEVENTS,
                   "format %d", (int)f);
    else
        check_err(err, path, "format");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    char *direction = fuzz_field(&p, end, '\n');
    char *text = fuzz_strndup(p, (size_t)(end - p));

    json_t *pre = json_loads(text, 0, NULL);
    int skip = pre && tree_reads_foreign_file(pre);
    json_decref(pre);
    if (skip) {
        free(direction);
        free(text);
        return 0;
    }

    relay_pipeline_cfg c;
    char err[512] = "";
    if (pipeline_cfg_load(&c, "p", direction, 1, text, err, sizeof err) < 0) {
        FUZZ_CHECK(err[0], "pipeline_cfg_load failed without a message");
        FUZZ_CHECK(!strstr(err, SECRET_VALUE) ||
                   memmem(data, size, SECRET_VALUE, strlen(SECRET_VALUE)), /* typed in, not resolved */
                   "a secret's value is in the error: %s", err);
    } else {
        FUZZ_CHECK(strcmp(direction, "forward") == 0 || strcmp(direction, "reverse") == 0,
                   "direction \"%s\" was accepted", direction);
        FUZZ_CHECK(c.forward == (strcmp(direction, "forward") == 0), "forward flag");
        FUZZ_CHECK(strcmp(c.name, "p") == 0 && c.enabled == 1, "name/enabled");
        FUZZ_CHECK(strcmp(c.config_text, text) == 0, "config_text is not the stored text");
        FUZZ_CHECK(json_is_object(c.config) && json_is_object(c.source) && json_is_object(c.sink),
                   "shape");
        FUZZ_CHECK(json_object_get(c.config, "source") == c.source &&
                   json_object_get(c.config, "sink") == c.sink, "source/sink not of the tree");
        /* Reading the types is what ASan checks: they must still be alive. */
        FUZZ_CHECK(c.source_type && c.sink_type && strlen(c.source_type) + strlen(c.sink_type) < size,
                   "source_type/sink_type");
        const char *st = json_string_value(json_object_get(c.config, "source_type"));
        const char *kt = json_string_value(json_object_get(c.sink, "type"));
        FUZZ_CHECK(!st || strcmp(c.source_type, st) == 0, "source_type \"%s\", the tree says \"%s\"",
                   c.source_type, st);
        FUZZ_CHECK(!kt || strcmp(c.sink_type, kt) == 0, "sink_type \"%s\", the tree says \"%s\"",
                   c.sink_type, kt);
        accessors(c.source, "source");
        accessors(c.sink, "sink");
        pipeline_cfg_free(&c);
    }
    free(direction);
    free(text);
    return 0;
}
