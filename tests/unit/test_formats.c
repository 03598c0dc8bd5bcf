/*
 * test_formats.c - unit tests of the event formats (src/formats.h,
 * src/encode.h): Debezium value mappings and envelopes, CloudEvents
 * attributes and header encoding, the format keys of a sink config, row
 * keys and subject_overrides.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "encode.h"
#include "formats.h"

static char *value(uint32_t oid, int32_t typmod, const char *native)
{
    static relay_buf out;
    buf_clear(&out);
    assert_int_equal(fmt_debezium_value(oid, typmod, native, strlen(native), &out), 0);
    buf_putc(&out, '\0');
    return out.data;
}

/* Decimal: precise mode, BigInteger.toByteArray() of the unscaled value. */
static void test_decimal_bytes(void **state)
{
    (void)state;
    int32_t s0 = (10 << 16 | 0) + 4, s2 = (5 << 16 | 2) + 4;
    assert_string_equal(value(1700, s0, "\"0\""), "\"AA==\"");
    assert_string_equal(value(1700, s0, "\"127\""), "\"fw==\"");
    assert_string_equal(value(1700, s0, "\"128\""), "\"AIA=\"");
    assert_string_equal(value(1700, s0, "\"-1\""), "\"/w==\"");
    assert_string_equal(value(1700, s0, "\"-128\""), "\"gA==\"");
    assert_string_equal(value(1700, s0, "\"-129\""), "\"/38=\"");
    assert_string_equal(value(1700, s0, "\"-32768\""), "\"gAA=\"");
    assert_string_equal(value(1700, s2, "\"123.45\""), "\"MDk=\"");
    assert_string_equal(value(1700, s2, "\"1.5\""), "\"AJY=\""); /* rescaled to 150 */
    assert_string_equal(value(1700, -1, "\"-0.5\""), "{\"scale\":1,\"value\":\"+w==\"}");
    assert_string_equal(value(1700, -1, "\"NaN\""), "\"NaN\"");
    assert_string_equal(value(1700, -1, "null"), "null");
    /* 2^64: beyond any C integer */
    assert_string_equal(value(1700, -1, "\"18446744073709551616\""),
                        "{\"scale\":0,\"value\":\"AQAAAAAAAAAA\"}");
    assert_string_equal(value(790, -1, "\"($1,234.56)\""), "\"/h3A\"");
}

static void test_temporal(void **state)
{
    (void)state;
    assert_string_equal(value(1082, -1, "\"1970-01-01\""), "0");
    assert_string_equal(value(1082, -1, "\"1969-12-31\""), "-1");
    assert_string_equal(value(1082, -1, "\"0001-01-01 BC\""), "-719528");
    assert_string_equal(value(1082, -1, "\"infinity\""), "\"infinity\""); /* unmapped: the text */
    assert_string_equal(value(1114, -1, "\"1970-01-01 00:00:01.000001\""), "1000001");
    assert_string_equal(value(1114, 3, "\"1970-01-01 00:00:01.999\""), "1999");
    assert_string_equal(value(1184, -1, "\"2018-04-05 19:31:00.5+02\""), "\"2018-04-05T17:31:00.5Z\"");
    assert_string_equal(value(1184, -1, "\"2018-04-05 00:00:00+05:30\""), "\"2018-04-04T18:30:00Z\"");
    assert_string_equal(value(1083, -1, "\"24:00:00\""), "86400000000");
    assert_string_equal(value(1083, 2, "\"00:00:01.25\""), "1250");
    assert_string_equal(value(1266, -1, "\"00:30:00+01\""), "\"23:30:00Z\"");
    assert_string_equal(value(1186, -1, "\"1 mon\""), "2629800000000");
    assert_string_equal(value(1186, -1, "\"-00:00:01\""), "-1000000");
    assert_string_equal(value(1186, -1, "\"1 day -01:00:00\""), "82800000000");
}

static void test_other_types(void **state)
{
    (void)state;
    assert_string_equal(value(17, -1, "\"\\\\x\""), "\"\"");
    assert_string_equal(value(17, -1, "\"\\\\xdeadbeef\""), "\"3q2+7w==\"");
    assert_string_equal(value(3802, -1, "{\"a\": 1}"), "\"{\\\"a\\\": 1}\"");
    assert_string_equal(value(114, -1, "\"s\""), "\"\\\"s\\\"\"");
    assert_string_equal(value(1560, 1, "\"0\""), "false");
    assert_string_equal(value(1560, 10, "\"1000000001\""), "\"AQI=\"");
    assert_string_equal(value(1007, -1, "\"{}\""), "[]");
    assert_string_equal(value(1007, -1, "\"{1,NULL,-3}\""), "[1,null,-3]");
    assert_string_equal(value(1000, -1, "\"{t,f}\""), "[true,false]");
    assert_string_equal(value(1009, -1, "\"{\\\"a,b\\\",\\\"NULL\\\",NULL}\""), "[\"a,b\",\"NULL\",null]");
    assert_string_equal(value(1007, -1, "\"{{1,2},{3,4}}\""), "\"{{1,2},{3,4}}\""); /* 2-D: the text */
    assert_string_equal(value(1182, -1, "\"{1970-01-02}\""), "[1]");
    assert_string_equal(value(2950, -1, "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""),
                        "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
    assert_string_equal(value(23, -1, "7"), "7");
    assert_string_equal(value(701, -1, "\"Infinity\""), "\"Infinity\"");
}

static relay_msg outbox_msg(relay_op op, const char *payload)
{
    relay_msg m = {0};
    m.dedup_key = "outbox_orders:5:0";
    m.subject = "pgtrickle.orders.insert";
    m.op = op;
    m.payload = payload;
    m.payload_len = payload ? strlen(payload) : 0;
    m.payload_is_json = 1;
    m.outbox_id = 5;
    m.stream_table = "orders";
    return m;
}

static void test_debezium_outbox(void **state)
{
    (void)state;
    relay_format_ctx ctx = {.pipeline = "p", .db = "d", .now_us = 1559033904863123};
    relay_msg m = outbox_msg(OP_INSERT, "{\"n\":1}");
    relay_buf out = {0};
    char err[256];
    assert_int_equal(relay_encode(RELAY_FORMAT_DEBEZIUM, &ctx, &m, &out, err, sizeof err), 0);
    buf_putc(&out, '\0');
    assert_string_equal(out.data,
        "{\"before\":null,\"after\":{\"n\":1},\"source\":{\"version\":\"" RELAY_VERSION "\","
        "\"connector\":\"postgresql\",\"name\":\"p\",\"ts_ms\":1559033904863,"
        "\"ts_us\":1559033904863123,\"ts_ns\":1559033904863123000,\"snapshot\":\"false\","
        "\"db\":\"d\",\"sequence\":null,\"schema\":\"\",\"table\":\"orders\",\"txId\":null,"
        "\"lsn\":null,\"xmin\":null},\"op\":\"c\",\"ts_ms\":1559033904863,"
        "\"ts_us\":1559033904863123,\"ts_ns\":1559033904863123000,\"transaction\":null}");
    buf_clear(&out);
    m = outbox_msg(OP_DELETE, "{\"n\":1}");
    assert_int_equal(relay_encode(RELAY_FORMAT_DEBEZIUM, &ctx, &m, &out, err, sizeof err), 0);
    buf_putc(&out, '\0');
    assert_non_null(strstr(out.data, "{\"before\":{\"n\":1},\"after\":null,"));
    assert_non_null(strstr(out.data, "\"op\":\"d\""));
    /* A refresh header without rows has no Debezium op: refused, out untouched. */
    buf_clear(&out);
    buf_puts(&out, "x");
    m = outbox_msg(OP_REFRESH, NULL);
    assert_int_equal(relay_encode(RELAY_FORMAT_DEBEZIUM, &ctx, &m, &out, err, sizeof err), -1);
    assert_int_equal(out.len, 1);
    assert_non_null(strstr(err, "no op for a refresh event"));
    buf_free(&out);
}

static const relay_row_col cols[] = {
    {"id", 23, -1, 1}, {"name", 25, -1, 0}, {"doc", 25, -1, 0}, {"at", 1114, -1, 0},
};
static const relay_row_type rt = {4, cols};

static void test_debezium_cdc_row(void **state)
{
    (void)state;
    relay_format_ctx ctx = {.pipeline = "srv", .db = "db", .now_us = 2000000};
    relay_msg m = outbox_msg(OP_UPDATE, "{\"id\":7,\"name\":\"n\",\"at\":\"1970-01-01 00:00:01\"}");
    m.outbox_id = -1;
    m.row_type = &rt;
    m.schema = "public";
    m.table = "t";
    m.lsn = "0/10";
    m.old_json = "{\"id\":6}";
    m.source_json = "{\"schema\":\"public\",\"table\":\"t\",\"lsn\":\"0/10\",\"commit_lsn\":\"0/20\","
                    "\"xid\":9,\"commit_time\":\"1970-01-01T00:00:01.5Z\",\"unchanged_toast\":[\"doc\"]}";
    relay_buf out = {0};
    char err[256];
    assert_int_equal(relay_encode(RELAY_FORMAT_DEBEZIUM, &ctx, &m, &out, err, sizeof err), 0);
    buf_putc(&out, '\0');
    assert_non_null(strstr(out.data, "{\"before\":{\"id\":6},\"after\":{\"id\":7,\"name\":\"n\","
                                     "\"doc\":\"__debezium_unavailable_value\",\"at\":1000000},"));
    assert_non_null(strstr(out.data, "\"ts_ms\":1500,\"ts_us\":1500000,"));
    assert_non_null(strstr(out.data, "\"sequence\":\"[\\\"32\\\",\\\"16\\\"]\",\"schema\":\"public\","
                                     "\"table\":\"t\",\"txId\":9,\"lsn\":16,"));
    buf_clear(&out);
    assert_int_equal(relay_format_key(RELAY_FORMAT_DEBEZIUM, &m, &out), 1);
    buf_putc(&out, '\0');
    assert_string_equal(out.data, "{\"id\":7}");
    buf_clear(&out);
    m.op = OP_TRUNCATE;
    assert_int_equal(relay_format_key(RELAY_FORMAT_DEBEZIUM, &m, &out), 0);
    assert_int_equal(relay_format_key(RELAY_FORMAT_NATIVE, &m, &out), 0);
    m.op = OP_INSERT;
    m.row_type = NULL;
    assert_int_equal(relay_format_key(RELAY_FORMAT_NATIVE, &m, &out), 0);
    assert_int_equal(out.len, 0);
    buf_free(&out);
}

static void test_cloudevents_structured(void **state)
{
    (void)state;
    relay_format_opts opts = {0};
    relay_format_ctx ctx = {.pipeline = "p", .now_us = 1522949460000000, .opts = &opts};
    relay_msg m = outbox_msg(OP_INSERT, "{\"n\":1}");
    m.key = "{\"n\":1}";
    relay_buf out = {0};
    char err[256];
    assert_int_equal(relay_encode(RELAY_FORMAT_CLOUDEVENTS, &ctx, &m, &out, err, sizeof err), 0);
    buf_putc(&out, '\0');
    assert_string_equal(out.data,
        "{\"specversion\":\"1.0\",\"id\":\"outbox_orders:5:0\",\"source\":\"/pgtrickle-relay/p\","
        "\"type\":\"io.pgtrickle.insert\",\"subject\":\"pgtrickle.orders.insert\","
        "\"time\":\"2018-04-05T17:31:00.000000Z\",\"datacontenttype\":\"application/json\","
        "\"partitionkey\":\"{\\\"n\\\":1}\",\"data\":{\"n\":1}}");
    opts.ce_binary = 1;
    buf_clear(&out);
    assert_int_equal(relay_encode(RELAY_FORMAT_CLOUDEVENTS, &ctx, &m, &out, err, sizeof err), 0);
    buf_putc(&out, '\0');
    assert_string_equal(out.data, "{\"n\":1}");
    assert_string_equal(relay_format_content_type(RELAY_FORMAT_CLOUDEVENTS, &opts), "application/json");
    opts.ce_binary = 0;
    assert_string_equal(relay_format_content_type(RELAY_FORMAT_CLOUDEVENTS, &opts),
                        "application/cloudevents+json");
    buf_free(&out);
}

/* HTTP protocol binding 3.1.3.2, its own example. */
static void test_ce_header_values(void **state)
{
    (void)state;
    relay_buf b = {0};
    fmt_ce_header_encode("Euro \xE2\x82\xAC \xF0\x9F\x98\x80", &b);
    assert_string_equal(b.data, "Euro%20%E2%82%AC%20%F0%9F%98%80");
    buf_clear(&b);
    fmt_ce_header_encode("a\"b%c", &b);
    assert_string_equal(b.data, "a%22b%25c");
    buf_clear(&b);
    assert_int_equal(fmt_ce_header_decode("Euro%20%e2%82%ac", 16, &b), 0);
    buf_putc(&b, '\0');
    assert_string_equal(b.data, "Euro \xE2\x82\xAC");
    buf_clear(&b);
    assert_int_equal(fmt_ce_header_decode("%C0%A0", 6, &b), -1); /* overlong U+0020 */
    buf_clear(&b);
    assert_int_equal(fmt_ce_header_decode("\"a \\\"b\\\"\"", 9, &b), 0);
    buf_putc(&b, '\0');
    assert_string_equal(b.data, "a \"b\"");
    buf_clear(&b);
    assert_int_equal(fmt_ce_header_decode("100%", 4, &b), 0); /* a lone '%' is kept */
    buf_putc(&b, '\0');
    assert_string_equal(b.data, "100%");
    buf_free(&b);
}

static void test_opts_from_cfg(void **state)
{
    (void)state;
    static const struct { const char *cfg; relay_format f; int binary_ok; const char *err; } bad[] = {
        {"{\"cloudevents_mode\":\"binary\"}", RELAY_FORMAT_NATIVE, 1,
         "sink.cloudevents_mode: only with \"format\": \"cloudevents\""},
        {"{\"cloudevents_mode\":\"nope\"}", RELAY_FORMAT_CLOUDEVENTS, 1,
         "sink.cloudevents_mode: expected \"structured\" or \"binary\", got \"nope\""},
        {"{\"cloudevents_mode\":\"binary\"}", RELAY_FORMAT_CLOUDEVENTS, 0,
         "sink.cloudevents_mode: \"binary\" needs a protocol binding"},
        {"{\"cloudevents_source\":\"\"}", RELAY_FORMAT_CLOUDEVENTS, 1, "sink.cloudevents_source: must not be empty"},
        {"{\"cloudevents_type\":\"x.{nope}\"}", RELAY_FORMAT_CLOUDEVENTS, 1,
         "sink.cloudevents_type: unknown variable {nope}"},
        {"{\"tombstones\":false}", RELAY_FORMAT_NATIVE, 1, "sink.tombstones: only with \"format\": \"debezium\""},
        {"{\"tombstones\":1}", RELAY_FORMAT_DEBEZIUM, 1, "sink.tombstones"},
        {"{\"subject_overrides\":[]}", RELAY_FORMAT_NATIVE, 1, "sink.subject_overrides: expected an object"},
        {"{\"subject_overrides\":{\"delete\":1}}", RELAY_FORMAT_NATIVE, 1,
         "sink.subject_overrides.delete: expected a template string"},
        {"{\"subject_overrides\":{\"delete\":\"a.{x}\"}}", RELAY_FORMAT_NATIVE, 1,
         "sink.subject_overrides.delete: unknown variable {x}"},
        {"{\"subject_overrides\":{\"\":\"a\"}}", RELAY_FORMAT_NATIVE, 1,
         "sink.subject_overrides: an empty op or event_type"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        json_t *cfg = json_loads(bad[i].cfg, 0, NULL);
        relay_format_opts o;
        char err[512] = "";
        assert_int_equal(relay_format_opts_from_cfg(cfg, "sink", bad[i].f, bad[i].binary_ok, &o, err,
                                                    sizeof err), -1);
        if (!strstr(err, bad[i].err))
            fail_msg("%s: got \"%s\", want \"%s\"", bad[i].cfg, err, bad[i].err);
        json_decref(cfg);
    }
    json_t *cfg = json_loads("{\"format\":\"cloudevents\",\"cloudevents_mode\":\"binary\","
                             "\"cloudevents_source\":\"urn:x\",\"subject_overrides\":{\"delete\":\"d.{table}\","
                             "\"order_cancelled\":\"c.{key}\"}}", 0, NULL);
    relay_format f;
    relay_format_opts o;
    char err[512];
    assert_int_equal(relay_format_from_cfg(cfg, "sink", &f, err, sizeof err), 0);
    assert_int_equal(f, RELAY_FORMAT_CLOUDEVENTS);
    assert_int_equal(relay_format_opts_from_cfg(cfg, "sink", f, 1, &o, err, sizeof err), 0);
    assert_int_equal(o.ce_binary, 1);
    assert_string_equal(o.ce_source, "urn:x");
    assert_int_equal(o.tombstones, 1);
    relay_msg m = outbox_msg(OP_DELETE, "{\"event_type\":\"order_cancelled\"}");
    assert_string_equal(relay_subject_template_for(&o, &m, "dflt"), "c.{key}"); /* event_type wins */
    m = outbox_msg(OP_DELETE, "{\"event_type\":\"other\"}");
    assert_string_equal(relay_subject_template_for(&o, &m, "dflt"), "d.{table}");
    m = outbox_msg(OP_INSERT, "{\"event_type\":\"order_cancelledX\"}");
    assert_string_equal(relay_subject_template_for(&o, &m, "dflt"), "dflt");
    relay_format_opts_free(&o);
    json_decref(cfg);
    cfg = json_loads("{\"format\":\"avro\"}", 0, NULL);
    assert_int_equal(relay_format_from_cfg(cfg, "sink", &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.format: expected \"native\", \"msgpack\", \"debezium\" or \"cloudevents\", got \"avro\""));
    json_decref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decimal_bytes),
        cmocka_unit_test(test_temporal),
        cmocka_unit_test(test_other_types),
        cmocka_unit_test(test_debezium_outbox),
        cmocka_unit_test(test_debezium_cdc_row),
        cmocka_unit_test(test_cloudevents_structured),
        cmocka_unit_test(test_ce_header_values),
        cmocka_unit_test(test_opts_from_cfg),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
