/*
 * test_config.c - command line, environment, durations, pipeline configs,
 * secrets and backoff.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <string.h>
#include <unistd.h>

#include "backoff.h"
#include "config.h"
#include "hostpath.h"
#include "log.h"
#include "secrets.h"

static void clear_env(void)
{
    static const char *const vars[] = {"PGTRICKLE_RELAY_POSTGRES_URL", "PGTRICKLE_RELAY_METRICS_ADDR",
        "PGTRICKLE_RELAY_LOG_FORMAT", "PGTRICKLE_RELAY_LOG_LEVEL", "PGTRICKLE_RELAY_GROUP_ID",
        "PGTRICKLE_RELAY_DISCOVERY_INTERVAL", "PGTRICKLE_RELAY_SHUTDOWN_TIMEOUT",
        "PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT", NULL};
    for (int i = 0; vars[i]; i++)
        unsetenv(vars[i]);
}

static int parse(relay_options *o, relay_command *cmd, char *err, int argc, ...)
{
    char *argv[32];
    va_list ap;
    va_start(ap, argc);
    argv[0] = "pgtrickle-relay";
    for (int i = 1; i < argc; i++)
        argv[i] = va_arg(ap, char *);
    va_end(ap);
    return options_parse(argc, argv, o, cmd, err, 512);
}

static void options_defaults_and_flags(void **state)
{
    (void)state;
    clear_env();
    relay_options o;
    relay_command cmd;
    char err[512];
    assert_int_equal(parse(&o, &cmd, err, 3, "--postgres-url", "postgres://x"), 0);
    assert_int_equal(cmd, CMD_RUN);
    assert_string_equal(o.postgres_url, "postgres://x");
    assert_string_equal(o.metrics_addr, "0.0.0.0:9090");
    assert_string_equal(o.group_id, "default");
    assert_int_equal(o.log_json, 0);
    assert_int_equal(o.log_level, LOG_INFO);
    assert_int_equal(o.discovery_interval_ms, 5000);
    assert_int_equal(o.shutdown_timeout_ms, 30000);
    assert_int_equal(o.metrics_request_timeout_ms, 10000);
    options_free(&o);

    assert_int_equal(parse(&o, &cmd, err, 9, "init", "--postgres-url=u", "--log-format", "json",
                           "--discovery-interval=250ms", "--shutdown-timeout", "2m",
                           "--relay-group-id=dc1"), 0);
    assert_int_equal(cmd, CMD_INIT);
    assert_int_equal(o.log_json, 1);
    assert_int_equal(o.discovery_interval_ms, 250);
    assert_int_equal(o.shutdown_timeout_ms, 120000);
    assert_string_equal(o.group_id, "dc1");
    options_free(&o);

    assert_int_equal(parse(&o, &cmd, err, 5, "--postgres-url", "u", "--metrics-request-timeout",
                           "2500ms"), 0);
    assert_int_equal(o.metrics_request_timeout_ms, 2500);
    options_free(&o);
}

static void options_env_and_precedence(void **state)
{
    (void)state;
    clear_env();
    setenv("PGTRICKLE_RELAY_POSTGRES_URL", "env-url", 1);
    setenv("PGTRICKLE_RELAY_LOG_LEVEL", "debug", 1);
    setenv("PGTRICKLE_RELAY_GROUP_ID", "envgroup", 1);
    relay_options o;
    relay_command cmd;
    char err[512];
    assert_int_equal(parse(&o, &cmd, err, 3, "--relay-group-id", "flaggroup"), 0);
    assert_string_equal(o.postgres_url, "env-url");
    assert_int_equal(o.log_level, LOG_DEBUG);
    assert_string_equal(o.group_id, "flaggroup");
    options_free(&o);
    setenv("PGTRICKLE_RELAY_LOG_LEVEL", "loud", 1);
    assert_int_equal(parse(&o, &cmd, err, 1), -1);
    assert_non_null(strstr(err, "PGTRICKLE_RELAY_LOG_LEVEL"));
    options_free(&o);
    clear_env();
}

static void options_errors_name_the_flag(void **state)
{
    (void)state;
    clear_env();
    relay_options o;
    relay_command cmd;
    char err[512];
    assert_int_equal(parse(&o, &cmd, err, 1), -1);
    assert_non_null(strstr(err, "--postgres-url"));
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 4, "--postgres-url", "u", "--bogus"), -1);
    assert_non_null(strstr(err, "--bogus"));
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 5, "--postgres-url", "u", "--log-format", "xml"), -1);
    assert_non_null(strstr(err, "--log-format"));
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 5, "--postgres-url", "u", "--discovery-interval", "soon"), -1);
    assert_non_null(strstr(err, "--discovery-interval"));
    options_free(&o);
    /* The request deadline: 100 ms to 1 h. */
    assert_int_equal(parse(&o, &cmd, err, 5, "--postgres-url", "u", "--metrics-request-timeout",
                           "50ms"), -1);
    assert_non_null(strstr(err, "--metrics-request-timeout"));
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 4, "--postgres-url", "u", "--metrics-request-timeout=2h"),
                     -1);
    assert_non_null(strstr(err, "--metrics-request-timeout"));
    options_free(&o);
    setenv("PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT", "never", 1);
    assert_int_equal(parse(&o, &cmd, err, 3, "--postgres-url", "u"), -1);
    assert_non_null(strstr(err, "PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT"));
    unsetenv("PGTRICKLE_RELAY_METRICS_REQUEST_TIMEOUT");
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 4, "--postgres-url", "u", "--metrics-addr"), -1);
    assert_non_null(strstr(err, "missing value"));
    options_free(&o);
    assert_int_equal(parse(&o, &cmd, err, 2, "--help"), 0);
    assert_int_equal(cmd, CMD_HELP);
    options_free(&o);
}

static void durations(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(parse_duration_ms("5s", &ms), 0);
    assert_int_equal(ms, 5000);
    assert_int_equal(parse_duration_ms("7", &ms), 0);
    assert_int_equal(ms, 7000);
    assert_int_equal(parse_duration_ms("1.5s", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(parse_duration_ms("100ms", &ms), 0);
    assert_int_equal(ms, 100);
    assert_int_equal(parse_duration_ms("1h", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(parse_duration_ms("-1s", &ms), -1);
    assert_int_equal(parse_duration_ms("5 days", &ms), -1);
    assert_int_equal(parse_duration_ms("", &ms), -1);
    /* strtod reads these as numbers (found by fuzz_config: NaN reached an
     * undefined float-to-integer conversion) */
    assert_int_equal(parse_duration_ms("nan", &ms), -1);
    assert_int_equal(parse_duration_ms("nans", &ms), -1);
    assert_int_equal(parse_duration_ms("-nan", &ms), -1);
    assert_int_equal(parse_duration_ms("inf", &ms), -1);
}

static void pipeline_shapes(void **state)
{
    (void)state;
    relay_pipeline_cfg c;
    char err[512];
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source_type\":\"outbox\",\"source\":{\"outbox\":\"orders\"},\"sink_type\":\"file\","
        "\"sink\":{\"type\":\"file\",\"output\":\"/tmp/x\"}}", err, sizeof err), 0);
    assert_string_equal(c.source_type, "outbox");
    assert_string_equal(c.sink_type, "file");
    assert_string_equal(json_string_value(json_object_get(c.source, "outbox")), "orders");
    pipeline_cfg_free(&c);

    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1, "{\"source\":{},\"sink\":[]}", err, sizeof err), -1);
    assert_non_null(strstr(err, "config.sink"));
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1, "{\"source\":{},\"sink\":{}}", err, sizeof err), -1);
    assert_non_null(strstr(err, "config.sink.type"));
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1, "[1,2]", err, sizeof err), -1);
    assert_non_null(strstr(err, "JSON object"));
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1, "{nope", err, sizeof err), -1);
    assert_non_null(strstr(err, "not valid JSON"));
    assert_int_equal(pipeline_cfg_load(&c, "p", "reverse", 1, "{\"source\":{},\"sink\":{}}", err, sizeof err), -1);
    assert_non_null(strstr(err, "source_type"));
}

/* Issue 10 defect 4: the type strings were read before secrets_resolve()
 * replaced them in place (a heap use-after-free under ASan). */
static void pipeline_types_read_after_secrets(void **state)
{
    (void)state;
    relay_pipeline_cfg c;
    char err[512];
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source\":{\"type\":\"${\"},\"sink\":{}}", err, sizeof err), -1);
    /* An unterminated reference is literal text (the type is refused later,
     * by name, when the worker looks it up). */
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source\":{\"type\":\"${\"},\"sink\":{\"type\":\"${\"}}", err, sizeof err), 0);
    assert_string_equal(c.source_type, "${");
    assert_string_equal(c.sink_type, "${");
    pipeline_cfg_free(&c);
    setenv("RELAY_TEST_TYPE", "file", 1);
    int rc = pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source\":{\"type\":\"${env:RELAY_TEST_TYPE}x\"},\"sink\":{\"type\":\"${env:RELAY_TEST_TYPE}\"}}",
        err, sizeof err);
    assert_int_equal(rc, 0);
    assert_string_equal(c.source_type, "filex");
    assert_string_equal(c.sink_type, "file");
    pipeline_cfg_free(&c);
}

static void pipeline_secrets(void **state)
{
    (void)state;
    relay_pipeline_cfg c;
    char err[512];
    setenv("RELAY_TEST_SECRET", "s3cr3t", 1);
    unsetenv("RELAY_TEST_MISSING");
    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source\":{\"outbox\":\"o\"},\"sink\":{\"type\":\"file\",\"headers\":{\"a\":\"Bearer ${env:RELAY_TEST_SECRET}\"}}}",
        err, sizeof err), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(c.sink, "headers"), "a")), "Bearer s3cr3t");
    /* The stored text keeps the reference, never the secret. */
    assert_null(strstr(c.config_text, "s3cr3t"));
    pipeline_cfg_free(&c);

    assert_int_equal(pipeline_cfg_load(&c, "p", "forward", 1,
        "{\"source\":{\"outbox\":\"o\"},\"sink\":{\"type\":\"file\",\"list\":[\"${env:RELAY_TEST_MISSING}\"]}}",
        err, sizeof err), -1);
    assert_non_null(strstr(err, "RELAY_TEST_MISSING"));
    assert_non_null(strstr(err, "config.sink.list[0]"));
}

static void secret_files_and_literals(void **state)
{
    (void)state;
    char path[] = "/tmp/relay-secret-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "pa$$word\n", 9), 9);
    close(fd);
    char tmpl[256], err[512];
    snprintf(tmpl, sizeof tmpl, "user:${file:%s}@host ${other} $${", path);
    /* ${file:} reads only under --allow-path (issue 11) */
    hostpath_reset();
    assert_null(secrets_expand(tmpl, err, sizeof err));
    assert_non_null(strstr(err, "no --allow-path was given"));
    assert_int_equal(hostpath_allow("/tmp", err, sizeof err), 0);
    char *s = secrets_expand(tmpl, err, sizeof err);
    assert_non_null(s);
    assert_string_equal(s, "user:pa$$word@host ${other} $${");
    free(s);
    unlink(path);
    snprintf(tmpl, sizeof tmpl, "${file:%s}", path);
    assert_null(secrets_expand(tmpl, err, sizeof err));
    assert_non_null(strstr(err, path));
    assert_null(secrets_expand("${env:1BAD}", err, sizeof err));
    assert_non_null(strstr(err, "invalid"));
    hostpath_reset();
}

/* The --allow-path check: resolved paths, symlinks and ".." cannot escape. */
static void host_paths(void **state)
{
    (void)state;
    char err[1024];
    char dir[] = "/tmp/relay-allow-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[256], link[256], p[512];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    assert_int_equal(mkdir(sub, 0700), 0);
    snprintf(link, sizeof link, "%s/etc", dir);
    assert_int_equal(symlink("/etc", link), 0);
    hostpath_reset();
    assert_int_equal(hostpath_check("sink.output", "/tmp/x", err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.output: /tmp/x is not a path this relay may use"));
    assert_int_equal(hostpath_allow(sub, err, sizeof err), 0);
    assert_int_equal(hostpath_allow("relative/path", err, sizeof err), -1);
    assert_int_equal(hostpath_allow("/nonexistent-relay-dir", err, sizeof err), -1);
    snprintf(p, sizeof p, "%s/sub/out.jsonl", dir);
    assert_int_equal(hostpath_check("sink.output", p, err, sizeof err), 0); /* need not exist */
    snprintf(p, sizeof p, "%s/sub/new/deeper/out.jsonl", dir);
    assert_int_equal(hostpath_check("sink.output", p, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/sub/../x", dir);
    assert_int_equal(hostpath_check("sink.output", p, err, sizeof err), -1);
    assert_non_null(strstr(err, "outside the paths"));
    snprintf(p, sizeof p, "%s/sub/new/../../x", dir); /* ".." after a missing part */
    assert_int_equal(hostpath_check("sink.output", p, err, sizeof err), -1);
    snprintf(p, sizeof p, "%s/subx/y", dir); /* a prefix of the name is not "under" */
    assert_int_equal(hostpath_check("sink.output", p, err, sizeof err), -1);
    /* a symlink inside an allowed directory that leads out of it */
    assert_int_equal(hostpath_allow(dir, err, sizeof err), 0);
    snprintf(p, sizeof p, "%s/etc/passwd", dir);
    assert_int_equal(hostpath_check("source.input", p, err, sizeof err), -1);
    assert_non_null(strstr(err, "source.input"));
    assert_int_equal(hostpath_check("k", "relative", err, sizeof err), -1);
    /* a file can be allowed by itself */
    assert_int_equal(hostpath_allow("/dev/full", err, sizeof err), 0);
    assert_int_equal(hostpath_check("sink.output", "/dev/full", err, sizeof err), 0);
    assert_int_equal(hostpath_check("sink.output", "/dev/null", err, sizeof err), -1);
    hostpath_reset();
    unlink(link);
    rmdir(sub);
    rmdir(dir);
}

static void accessors(void **state)
{
    (void)state;
    char err[512];
    json_t *o = json_loads("{\"a\":\"x\",\"n\":5,\"s\":\"12\",\"b\":true,\"bad\":[1]}", 0, NULL);
    const char *str;
    int64_t n;
    int b;
    assert_int_equal(cfg_str(o, "sink", "a", NULL, &str, err, sizeof err), 0);
    assert_string_equal(str, "x");
    assert_int_equal(cfg_str(o, "sink", "missing", "d", &str, err, sizeof err), 0);
    assert_string_equal(str, "d");
    assert_int_equal(cfg_str_required(o, "sink", "missing", &str, err, sizeof err), -1);
    assert_string_equal(err, "sink.missing: required");
    assert_int_equal(cfg_int(o, "sink", "n", 0, 0, 10, &n, err, sizeof err), 0);
    assert_int_equal(n, 5);
    assert_int_equal(cfg_int(o, "sink", "s", 0, 0, 100, &n, err, sizeof err), 0);
    assert_int_equal(n, 12);
    assert_int_equal(cfg_int(o, "sink", "n", 0, 6, 10, &n, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.n"));
    assert_int_equal(cfg_int(o, "sink", "bad", 0, 0, 10, &n, err, sizeof err), -1);
    assert_int_equal(cfg_bool(o, "sink", "b", 0, &b, err, sizeof err), 0);
    assert_int_equal(b, 1);
    assert_int_equal(cfg_bool(o, "sink", "a", 0, &b, err, sizeof err), -1);
    static const char *const keys[] = {"a", "n", "s", "b", NULL};
    assert_int_equal(cfg_known_keys(o, "sink", keys, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.bad: unknown key"));
    json_decref(o);
}

static void backoff_grows_with_jitter_and_caps(void **state)
{
    (void)state;
    relay_backoff b;
    backoff_init(&b);
    int64_t prev_max = 0;
    for (int i = 0; i < 20; i++) {
        int64_t d = backoff_next(&b);
        int64_t full = 100LL << (i < 9 ? i : 9);
        if (full > 30000)
            full = 30000;
        assert_true(d >= full / 2 && d <= full);
        prev_max = full;
    }
    assert_int_equal(prev_max, 30000);
    backoff_reset(&b);
    int64_t d = backoff_next(&b);
    assert_true(d >= 50 && d <= 100);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(options_defaults_and_flags),
        cmocka_unit_test(options_env_and_precedence),
        cmocka_unit_test(options_errors_name_the_flag),
        cmocka_unit_test(durations),
        cmocka_unit_test(pipeline_shapes),
        cmocka_unit_test(pipeline_types_read_after_secrets),
        cmocka_unit_test(pipeline_secrets),
        cmocka_unit_test(secret_files_and_literals),
        cmocka_unit_test(host_paths),
        cmocka_unit_test(accessors),
        cmocka_unit_test(backoff_grows_with_jitter_and_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
