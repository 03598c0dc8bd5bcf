/*
 * test_rabbitmq.c - the RabbitMQ backend's pure parts: AMQP URL parsing
 * (rabbitmq-c's amqp_parse_url plus the relay's defaults and display form),
 * the headers-table decoder of received messages, the broker reply texts,
 * UUIDs, and the config validation of the sink and the source (no broker
 * needed).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>

#include "client/rabbitmq.h"
#include "hostpath.h"
#include "sink/sink.h"
#include "source/source.h"

extern const relay_sink_ops relay_sink_rabbitmq_ops;
extern const relay_source_ops relay_source_rabbitmq_ops;

/* ---- URLs ------------------------------------------------------------------ */

static void url_components_and_defaults(void **state)
{
    (void)state;
    struct {
        const char *url, *host, *user, *password, *vhost, *display;
        int port, tls;
    } cases[] = {
        {"amqp://", "localhost", "guest", "guest", "/", "amqp://guest@localhost:5672/%2F", 5672, 0},
        {"amqp://h", "h", "guest", "guest", "/", "amqp://guest@h:5672/%2F", 5672, 0},
        {"amqp://u:p@/", "localhost", "u", "p", "/", "amqp://u@localhost:5672/%2F", 5672, 0},
        {"amqp://h/", "h", "guest", "guest", "/", "amqp://guest@h:5672/%2F", 5672, 0},
        {"amqp://h/%2F", "h", "guest", "guest", "/", "amqp://guest@h:5672/%2F", 5672, 0},
        {"amqp://u:p@h:5673/prod", "h", "u", "p", "prod", "amqp://u@h:5673/prod", 5673, 0},
        {"amqp://u:p%40ss%3Aw@h/team%2Fa", "h", "u", "p@ss:w", "team/a",
         "amqp://u@h:5672/team%2Fa", 5672, 0},
        {"amqp://us%20er:x@h/v%25h", "h", "us er", "x", "v%h", "amqp://us er@h:5672/v%25h", 5672, 0},
        {"amqps://u:p@broker.example", "broker.example", "u", "p", "/",
         "amqps://u@broker.example:5671/%2F", 5671, 1},
        {"amqps://u:p@broker.example:5999/x", "broker.example", "u", "p", "x",
         "amqps://u@broker.example:5999/x", 5999, 1},
        {"amqp://u:p@[::1]:5673/x", "::1", "u", "p", "x", "amqp://u@[::1]:5673/x", 5673, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rmq_url u;
        char err[256] = "";
        if (rmq_url_parse(cases[i].url, &u, err, sizeof err) != 0)
            fail_msg("%s: %s", cases[i].url, err);
        assert_string_equal(u.host, cases[i].host);
        assert_string_equal(u.user, cases[i].user);
        assert_string_equal(u.password, cases[i].password);
        assert_string_equal(u.vhost, cases[i].vhost);
        assert_string_equal(u.display, cases[i].display);
        assert_int_equal(u.port, cases[i].port);
        assert_int_equal(u.tls, cases[i].tls);
        assert_null(strstr(u.display, ":p@"));
        rmq_url_free(&u);
    }
}

static void url_errors(void **state)
{
    (void)state;
    const char *bad[] = {
        "http://h/", "amqp:/h", "h:5672", "amqp://h:port/", "amqp://h:70000/", "amqp://h/a/b",
        "amqp://h/?heartbeat=5", "amqp://[]:5672/", "amqp://h:0/", "", "amqp://[::1/",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rmq_url u;
        char err[256] = "";
        if (rmq_url_parse(bad[i], &u, err, sizeof err) != -1 || !err[0])
            fail_msg("should be refused with a reason: \"%s\"", bad[i]);
    }
}

/* ---- headers ---------------------------------------------------------------- */

static amqp_table_entry_t str_entry(const char *k, const char *v)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes(k)};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

static void headers_strings_and_bytes(void **state)
{
    (void)state;
    amqp_table_entry_t e[5] = {
        str_entry("other", "x"),
        str_entry("PgTrickle-Dedup-Key", ""), /* empty: as if absent */
        str_entry("pgtrickle-dedup-key", "k-1"),
        str_entry("pgtrickle-dedup-key", "k-2"), /* the first non-empty one wins */
        {.key = amqp_cstring_bytes("TRACEPARENT")},
    };
    static const char raw[] = {'0', 0, (char)0xff};
    e[4].value.kind = AMQP_FIELD_KIND_BYTES;
    e[4].value.value.bytes = (amqp_bytes_t){3, (void *)raw};
    amqp_table_t t = {5, e};
    rmq_header_fields h;
    rmq_header_fields_get(&t, &h);
    assert_int_equal(h.dedup_key_len, 3);
    assert_memory_equal(h.dedup_key, "k-1", 3);
    assert_int_equal(h.trace_id_len, 3);
    assert_ptr_equal(h.trace_id, raw); /* bytes kept exactly, NUL included */

    rmq_header_fields_get(NULL, &h);
    assert_int_equal(h.dedup_key_len, 0);
    assert_null(h.dedup_key);
    amqp_table_t empty = {0, NULL};
    rmq_header_fields_get(&empty, &h);
    assert_int_equal(h.trace_id_len, 0);
}

static void header_value_text(amqp_field_value_t v, const char *expect)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("pgtrickle-dedup-key"), .value = v};
    amqp_table_t t = {1, &e};
    rmq_header_fields h;
    rmq_header_fields_get(&t, &h);
    if (!expect) {
        assert_int_equal(h.dedup_key_len, 0);
        return;
    }
    if (h.dedup_key_len != strlen(expect) || memcmp(h.dedup_key, expect, h.dedup_key_len) != 0)
        fail_msg("kind '%c': expected \"%s\", got \"%.*s\"", v.kind, expect, (int)h.dedup_key_len,
                 h.dedup_key ? h.dedup_key : "");
}

static void headers_other_kinds_as_text(void **state)
{
    (void)state;
    amqp_field_value_t v;
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I8, .value.i8 = -5};
    header_value_text(v, "-5");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U16, .value.u16 = 65535};
    header_value_text(v, "65535");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I32, .value.i32 = -2147483647 - 1};
    header_value_text(v, "-2147483648");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_I64, .value.i64 = 1234567890123LL};
    header_value_text(v, "1234567890123");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_U64, .value.u64 = UINT64_MAX};
    header_value_text(v, "18446744073709551615");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TIMESTAMP, .value.u64 = 1700000000};
    header_value_text(v, "1700000000");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1};
    header_value_text(v, "true");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_F64, .value.f64 = 0.5};
    header_value_text(v, "0.5");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {2, 1234}};
    header_value_text(v, "12.34");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {3, 5}};
    header_value_text(v, "0.005");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {1, 5}};
    header_value_text(v, "0.5");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {0, 42}};
    header_value_text(v, "42");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {40, 4294967295u}};
    header_value_text(v, "0.0000000000000000000000000000004294967295");
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_DECIMAL, .value.decimal = {200, 1}};
    header_value_text(v, NULL); /* too long to write: ignored */
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_TABLE, .value.table = {0, NULL}};
    header_value_text(v, NULL);
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_ARRAY, .value.array = {0, NULL}};
    header_value_text(v, NULL);
    v = (amqp_field_value_t){.kind = AMQP_FIELD_KIND_VOID};
    header_value_text(v, NULL);
}

/* ---- replies, UUIDs ------------------------------------------------------------ */

static void reply_texts(void **state)
{
    (void)state;
    char out[256];
    amqp_channel_close_t cc = {.reply_code = 404,
                               .reply_text = amqp_cstring_bytes("NOT_FOUND - no exchange 'x'")};
    amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_SERVER_EXCEPTION,
                          .reply = {.id = AMQP_CHANNEL_CLOSE_METHOD, .decoded = &cc}};
    rmq_reply_text(r, out, sizeof out);
    assert_string_equal(out, "broker closed the channel: 404 NOT_FOUND - no exchange 'x'");
    assert_int_equal(rmq_reply_code(r), 404);

    amqp_connection_close_t kc = {.reply_code = 403,
                                  .reply_text = amqp_cstring_bytes("ACCESS_REFUSED - a\nb")};
    r.reply = (amqp_method_t){.id = AMQP_CONNECTION_CLOSE_METHOD, .decoded = &kc};
    rmq_reply_text(r, out, sizeof out);
    assert_string_equal(out, "broker closed the connection: 403 ACCESS_REFUSED - a\\nb");
    assert_int_equal(rmq_reply_code(r), 403);

    r = (amqp_rpc_reply_t){.reply_type = AMQP_RESPONSE_LIBRARY_EXCEPTION,
                           .library_error = AMQP_STATUS_HEARTBEAT_TIMEOUT};
    rmq_reply_text(r, out, sizeof out);
    assert_string_equal(out, amqp_error_string2(AMQP_STATUS_HEARTBEAT_TIMEOUT));
    assert_int_equal(rmq_reply_code(r), 0);
}

/* ---- config ----------------------------------------------------------------- */

static int sink_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_sink *s = relay_sink_rabbitmq_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_sink_rabbitmq_ops.destroy(s);
    return 0;
}

static void sink_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(sink_create("{\"type\":\"rabbitmq\",\"exchange\":\"\"}", err, sizeof err), 0);
    assert_int_equal(sink_create("{\"type\":\"rabbitmq\",\"url\":\"amqps://u:p@h/v\",\"exchange\":\"x\","
                                 "\"exchange_type\":\"headers\",\"declare_exchange\":true,"
                                 "\"routing_key_template\":\"a.{op}\",\"persistent\":false,"
                                 "\"mandatory\":false,\"format\":\"msgpack\",\"tls_ca_file\":\"/etc/hosts\","
                                 "\"tls_verify\":false,\"heartbeat_seconds\":0,"
                                 "\"connect_timeout_ms\":1000,\"confirm_timeout_ms\":5000,"
                                 "\"max_in_flight\":10}",
                                 err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"rabbitmq\"}", "sink.exchange: required"},
        {"{\"type\":\"rabbitmq\",\"exchange\":1}", "sink.exchange: required"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"exchange_type\":\"fan\"}", "sink.exchange_type"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"\",\"declare_exchange\":true}", "sink.declare_exchange"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"routing_key_template\":\"{x}\"}",
         "sink.routing_key_template: unknown variable"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"url\":\"nats://h\"}", "sink.url: not an AMQP URL"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"tls_ca_file\":\"/etc/hosts\"}",
         "sink.url: the tls_* keys need an amqps:// URL"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"url\":\"amqps://h\",\"tls_cert_file\":\"/etc/hosts\"}",
         "sink.tls_key_file"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"heartbeat_seconds\":-1}", "sink.heartbeat_seconds"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"max_in_flight\":0}", "sink.max_in_flight"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"persistent\":\"yes\"}", "sink.persistent"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"format\":\"xml\"}", "sink.format"},
        {"{\"type\":\"rabbitmq\",\"exchange\":\"x\",\"routing_key\":\"a\"}", "sink.routing_key"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (sink_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

static int source_create(const char *json, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    relay_source *s = relay_source_rabbitmq_ops.create(cfg, NULL, err, errlen);
    json_decref(cfg);
    if (!s)
        return -1;
    relay_source_rabbitmq_ops.destroy(s);
    return 0;
}

static void source_config_is_checked(void **state)
{
    (void)state;
    char err[512];
    assert_int_equal(source_create("{\"type\":\"rabbitmq\",\"queue\":\"q\",\"declare_queue\":true,"
                                   "\"queue_type\":\"quorum\",\"bindings\":[{\"exchange\":\"x\","
                                   "\"routing_key\":\"a.#\"},{\"exchange\":\"y\"}],"
                                   "\"batch_size\":100000,\"poll_interval_ms\":50}",
                                   err, sizeof err), 0);
    struct {
        const char *cfg, *expect;
    } cases[] = {
        {"{\"type\":\"rabbitmq\"}", "source.queue"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"\"}", "source.queue"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"queue_type\":\"quorum\"}",
         "source.queue_type: only used with source.declare_queue"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"declare_queue\":true,\"queue_type\":\"stream\"}",
         "source.queue_type: expected classic or quorum"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"bindings\":{}}", "source.bindings: expected an array"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"bindings\":[1]}", "source.bindings[0]: expected an object"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"bindings\":[{\"exchange\":\"x\"},{\"routing_key\":\"a\"}]}",
         "source.bindings[1].exchange"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"bindings\":[{\"exchange\":\"x\",\"key\":\"a\"}]}",
         "source.bindings[0].key"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"prefetch_count\":0}", "source.prefetch_count"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"prefetch_count\":65536}", "source.prefetch_count"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"batch_size\":0}", "source.batch_size"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"url\":\"amqp://h:0x/\"}", "source.url"},
        {"{\"type\":\"rabbitmq\",\"queue\":\"q\",\"exchange\":\"x\"}", "source.exchange"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        if (source_create(cases[i].cfg, err, sizeof err) != -1 || !strstr(err, cases[i].expect))
            fail_msg("%s: expected error containing \"%s\", got \"%s\"", cases[i].cfg,
                     cases[i].expect, err);
    }
}

int main(void)
{
    /* The paths these tests name are checked for their keys, not for
     * --allow-path (the integration tests cover that): allow every path. */
    char allow_err[256];
    if (hostpath_allow("/", allow_err, sizeof allow_err) < 0) {
        fprintf(stderr, "%s\n", allow_err);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(url_components_and_defaults),
        cmocka_unit_test(url_errors),
        cmocka_unit_test(headers_strings_and_bytes),
        cmocka_unit_test(headers_other_kinds_as_text),
        cmocka_unit_test(reply_texts),
        cmocka_unit_test(sink_config_is_checked),
        cmocka_unit_test(source_config_is_checked),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
