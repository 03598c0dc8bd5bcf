/*
 * test_message.c - envelopes, subject templates, arena and batches.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <string.h>

#include "encode.h"
#include "message.h"
#include <math.h>
#include <msgpack.h>

static relay_msg *outbox_msg(relay_batch *b)
{
    relay_msg *m = batch_add(b);
    m->dedup_key = "outbox_orders:5:0";
    m->subject = "pgtrickle.orders.insert";
    m->op = OP_INSERT;
    m->payload = "{\"id\":1}";
    m->payload_len = strlen(m->payload);
    m->outbox_id = 5;
    m->stream_table = "orders";
    return m;
}

static void native_envelope_matches_spec(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = outbox_msg(&b);
    relay_buf out = {0};
    msg_encode_native(m, &out);
    assert_string_equal(out.data,
                        "{\"dedup_key\":\"outbox_orders:5:0\",\"subject\":\"pgtrickle.orders.insert\","
                        "\"op\":\"insert\",\"payload\":{\"id\":1},\"is_full_refresh\":false,"
                        "\"outbox_id\":5,\"refresh_id\":null}");
    buf_free(&out);
    batch_free(&b);
}

static void envelope_escapes_and_cdc_fields(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = batch_add(&b);
    m->dedup_key = "0/16B3748:2";
    m->subject = "cdc.t.\"x\"";
    m->op = OP_UPDATE;
    m->payload = "not json\n\x01";
    m->payload_len = strlen(m->payload);
    m->payload_is_json = 0;
    m->old_json = "{\"id\":1}";
    m->source_json = "{\"table\":\"t\"}";
    m->refresh_id = "r-1";
    m->is_full_refresh = 1;
    relay_buf out = {0};
    msg_encode_native(m, &out);
    json_error_t e;
    json_t *v = json_loads(out.data, 0, &e);
    assert_non_null(v);
    assert_string_equal(json_string_value(json_object_get(v, "payload")), "not json\n\x01");
    assert_string_equal(json_string_value(json_object_get(v, "subject")), "cdc.t.\"x\"");
    assert_true(json_is_true(json_object_get(v, "is_full_refresh")));
    assert_true(json_is_null(json_object_get(v, "outbox_id")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(v, "old"), "id")), 1);
    assert_string_equal(json_string_value(json_object_get(json_object_get(v, "source"), "table")), "t");
    json_decref(v);
    buf_free(&out);
    batch_free(&b);
}

static void render(const char *tmpl, const relay_msg *m, const char *want)
{
    relay_buf out = {0};
    subject_render(tmpl, m, &out);
    assert_string_equal(out.data, want);
    buf_free(&out);
}

static void templates_render_variables(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = outbox_msg(&b);
    render(RELAY_DEFAULT_OUTBOX_SUBJECT, m, "pgtrickle.orders.insert");
    render("x.{outbox_id}.{refresh_id}.{op}", m, "x.5._.insert");
    render("{{literal}}.{stream_table}", m, "{literal}.orders");
    m->schema = "public";
    m->table = "users";
    m->stream_table = NULL;
    m->op = OP_DELETE;
    render(RELAY_DEFAULT_CDC_SUBJECT, m, "cdc.users.delete");
    render("{schema}.{table}", m, "public.users");
    batch_free(&b);
}

static void template_values_cannot_split_subjects(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = outbox_msg(&b);
    m->stream_table = "a.b *>c%";
    render("p.{stream_table}.{op}", m, "p.a%2Eb%20%2A%3Ec%25.insert");
    m->stream_table = "";
    render("p.{stream_table}", m, "p._");
    batch_free(&b);
}

static void template_check_reports_errors(void **state)
{
    (void)state;
    char err[256];
    assert_int_equal(subject_template_check("pgtrickle.{stream_table}.{op}", err, sizeof err), 0);
    assert_int_equal(subject_template_check("a.{{x}}", err, sizeof err), 0);
    assert_int_equal(subject_template_check("a.{nope}", err, sizeof err), -1);
    assert_non_null(strstr(err, "{nope}"));
    assert_int_equal(subject_template_check("a.{op", err, sizeof err), -1);
    assert_non_null(strstr(err, "unterminated"));
    assert_int_equal(subject_template_check("a}", err, sizeof err), -1);
    assert_int_equal(subject_template_check("", err, sizeof err), -1);
}

static void arena_handles_large_and_many(void **state)
{
    (void)state;
    relay_batch b = {0};
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 20000; i++) {
            relay_msg *m = batch_add(&b);
            m->dedup_key = arena_printf(&b.arena, "k:%d:%d", round, i);
        }
        char *big = arena_alloc(&b.arena, 1 << 20);
        memset(big, 'x', 1 << 20);
        assert_int_equal((int)b.n, 20000);
        assert_string_equal(b.msgs[19999].dedup_key, round == 0 ? "k:0:19999" : round == 1 ? "k:1:19999" : "k:2:19999");
        assert_string_equal(b.msgs[0].dedup_key, round == 0 ? "k:0:0" : round == 1 ? "k:1:0" : "k:2:0");
        batch_reset(&b);
        assert_int_equal((int)b.n, 0);
    }
    batch_free(&b);
}

static void op_names(void **state)
{
    (void)state;
    assert_string_equal(relay_op_name(OP_INSERT), "insert");
    assert_string_equal(relay_op_name(OP_SNAPSHOT), "snapshot");
    assert_string_equal(relay_op_name(OP_REFRESH), "refresh");
    assert_string_equal(relay_op_name(OP_TRUNCATE), "truncate");
    assert_string_equal(relay_op_name(OP_EVENT), "event");
}

static void json_string_escaping(void **state)
{
    (void)state;
    relay_buf b = {0};
    const char s[] = "a\"b\\c\n\t\x1f\xc3\xa9";
    buf_put_json_str(&b, s, sizeof s - 1);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\t\\u001f\xc3\xa9\"");
    buf_clear(&b);
    buf_put_i64(&b, INT64_MIN);
    assert_string_equal(b.data, "-9223372036854775808");
    /* bytes that are not UTF-8 never make invalid JSON (issue 10: /status
     * and logs carried broker bytes) */
    buf_clear(&b);
    const char bad[] = "a\xff\xc3(\xed\xa0\x80\xf0\x9f\x98\x80\x00z";
    buf_put_json_str(&b, bad, sizeof bad - 1);
    assert_string_equal(b.data, "\"a\\ufffd\\ufffd(\\ufffd\\ufffd\\ufffd\xf0\x9f\x98\x80\\u0000z\"");
    /* text log lines: no control character or stray byte gets through */
    buf_clear(&b);
    const char forged[] = "p\n2026-01-01T00:00:00Z ERROR  [x] forged\r\t\x7f\xff\xc3\xa9";
    buf_put_log_text(&b, forged, sizeof forged - 1);
    assert_string_equal(b.data, "p\\n2026-01-01T00:00:00Z ERROR  [x] forged\\r\\t\\x7f\\xff\xc3\xa9");
    assert_null(memchr(b.data, '\n', b.len));
    buf_free(&b);
}

static const msgpack_object *map_get(const msgpack_object *o, const char *key)
{
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object_kv *kv = &o->via.map.ptr[i];
        if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == strlen(key) &&
            memcmp(kv->key.via.str.ptr, key, kv->key.via.str.size) == 0)
            return &kv->val;
    }
    return NULL;
}

static void msgpack_matches_seed_shape(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = batch_add(&b);
    m->dedup_key = "0/25CB3C8:0";
    m->table = "users";
    m->op = OP_INSERT;
    m->relation_id = 16384;
    m->lsn = "0/25CB3C8";
    m->payload = "{\"id\":1,\"name\":\"Alice\",\"score\":1.5,\"ok\":true,\"tags\":[\"a\"],\"n\":null}";
    m->payload_len = strlen(m->payload);
    relay_buf out = {0};
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, NULL, 0), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, out.len);
    const msgpack_object *o = &u.data;
    assert_int_equal(o->type, MSGPACK_OBJECT_MAP);
    const msgpack_object *op = map_get(o, "operation");
    assert_non_null(op);
    assert_memory_equal(op->via.str.ptr, "INSERT", 6);
    assert_int_equal(map_get(o, "relation_id")->via.u64, 16384);
    assert_memory_equal(map_get(o, "lsn")->via.str.ptr, "0/25CB3C8", 9);
    assert_memory_equal(map_get(o, "table")->via.str.ptr, "users", 5);
    const msgpack_object *cols = map_get(o, "columns");
    assert_int_equal(cols->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(cols->via.array.size, 6);
    const msgpack_object *c0 = &cols->via.array.ptr[0];
    assert_memory_equal(map_get(c0, "name")->via.str.ptr, "id", 2);
    assert_int_equal(map_get(c0, "value")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_int_equal(map_get(&cols->via.array.ptr[2], "value")->type, MSGPACK_OBJECT_FLOAT64);
    assert_int_equal(map_get(&cols->via.array.ptr[3], "value")->type, MSGPACK_OBJECT_BOOLEAN);
    assert_int_equal(map_get(&cols->via.array.ptr[4], "value")->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(map_get(&cols->via.array.ptr[5], "value")->type, MSGPACK_OBJECT_NIL);
    msgpack_unpacked_destroy(&u);
    buf_free(&out);
    batch_free(&b);
}

/* A body that is neither JSON nor UTF-8 has no MessagePack string: the event
 * is refused (the worker dead-letters it) instead of losing its payload
 * (found by fuzz_envelope: it was encoded with no column at all). */
static void msgpack_refuses_non_utf8_text(void **state)
{
    (void)state;
    relay_batch b = {0};
    relay_msg *m = batch_add(&b);
    m->dedup_key = "k";
    m->op = OP_EVENT;
    m->payload = "bad \xff\xfe";
    m->payload_len = strlen(m->payload);
    m->payload_is_json = 0;
    relay_buf out = {0};
    buf_puts(&out, "keep");
    char err[256];
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "UTF-8"));
    assert_string_equal(out.data, "keep");
    /* valid UTF-8 text (NUL bytes included) is one string column */
    m->payload = "text\0more";
    m->payload_len = 9;
    buf_clear(&out);
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(&u, out.data, out.len, &off), MSGPACK_UNPACK_SUCCESS);
    const msgpack_object *cols = map_get(&u.data, "columns");
    assert_int_equal(cols->via.array.size, 1);
    const msgpack_object *v = map_get(&cols->via.array.ptr[0], "value");
    assert_int_equal(v->type, MSGPACK_OBJECT_STR);
    assert_int_equal(v->via.str.size, 9);
    assert_memory_equal(v->via.str.ptr, "text\0more", 9);
    msgpack_unpacked_destroy(&u);
    buf_free(&out);
    batch_free(&b);
}

/* Encode `payload` (a CDC row) as MessagePack and unpack it into *u;
 * returns the "columns" array. */
static const msgpack_object *pack_row(msgpack_unpacked *u, relay_buf *out, const char *payload,
                                      const char *old, const char *source)
{
    relay_batch b = {0};
    relay_msg *m = batch_add(&b);
    m->dedup_key = "0/1:0";
    m->table = "t";
    m->op = OP_UPDATE;
    m->payload = payload;
    m->payload_len = strlen(payload);
    m->old_json = old;
    m->source_json = source;
    char err[256] = "";
    buf_clear(out);
    int rc = relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, out, err, sizeof err);
    batch_free(&b);
    if (rc < 0) {
        print_error("encode failed: %s\n", err);
        return NULL;
    }
    msgpack_unpacked_init(u);
    size_t off = 0;
    assert_int_equal(msgpack_unpack_next(u, out->data, out->len, &off), MSGPACK_UNPACK_SUCCESS);
    assert_int_equal(off, out->len);
    return map_get(&u->data, "columns");
}

static const msgpack_object *col_value(const msgpack_object *cols, uint32_t i)
{
    assert_true(i < cols->via.array.size);
    return map_get(&cols->via.array.ptr[i], "value");
}

static void assert_str_obj(const msgpack_object *o, const char *want)
{
    assert_int_equal(o->type, MSGPACK_OBJECT_STR);
    assert_int_equal(o->via.str.size, strlen(want));
    assert_memory_equal(o->via.str.ptr, want, strlen(want));
}

/* Issue 12 #2: a row whose json value held an integer >= 2^63 was lost
 * whole (jansson refuses such integers). Every number survives: as an
 * integer when 64 bits hold it, a double when a double holds it exactly,
 * else as the string of its JSON text. */
static void msgpack_keeps_every_number(void **state)
{
    (void)state;
    msgpack_unpacked u;
    relay_buf out = {0};
    const msgpack_object *cols = pack_row(&u, &out,
        "{\"id\":7,\"j\":{\"big\":9223372036854775808,\"max\":18446744073709551615,"
        "\"over\":18446744073709551616,\"neg\":-9223372036854775808,\"under\":-9223372036854775809,"
        "\"huge\":1e400,\"tiny\":1e-400,\"precise\":0.1000000000000000000001,\"pi\":3.14,"
        "\"third\":0.30000000000000004,\"mz\":-0.0,\"e22\":1.0000000000000000000000e22,"
        "\"arr\":[1,18446744073709551616],\"exp\":1e99999999999999999999}}", NULL, NULL);
    assert_non_null(cols);
    assert_int_equal(cols->via.array.size, 2);
    assert_int_equal(col_value(cols, 0)->via.u64, 7);
    const msgpack_object *j = col_value(cols, 1);
    assert_int_equal(j->type, MSGPACK_OBJECT_MAP);
    assert_int_equal(j->via.map.size, 14);
    assert_int_equal(map_get(j, "big")->type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(map_get(j, "big")->via.u64 == UINT64_C(9223372036854775808));
    assert_true(map_get(j, "max")->via.u64 == UINT64_MAX);
    assert_str_obj(map_get(j, "over"), "18446744073709551616");
    assert_int_equal(map_get(j, "neg")->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    assert_true(map_get(j, "neg")->via.i64 == INT64_MIN);
    assert_str_obj(map_get(j, "under"), "-9223372036854775809");
    assert_str_obj(map_get(j, "huge"), "1e400");
    assert_str_obj(map_get(j, "tiny"), "1e-400");
    assert_str_obj(map_get(j, "precise"), "0.1000000000000000000001");
    assert_int_equal(map_get(j, "pi")->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(map_get(j, "pi")->via.f64 == 3.14);
    assert_true(map_get(j, "third")->via.f64 == 0.1 + 0.2);
    assert_int_equal(map_get(j, "mz")->type, MSGPACK_OBJECT_FLOAT64);
    assert_true(signbit(map_get(j, "mz")->via.f64));
    assert_true(map_get(j, "e22")->via.f64 == 1e22);
    assert_str_obj(map_get(j, "exp"), "1e99999999999999999999");
    const msgpack_object *arr = map_get(j, "arr");
    assert_int_equal(arr->via.array.size, 2);
    assert_str_obj(&arr->via.array.ptr[1], "18446744073709551616");
    msgpack_unpacked_destroy(&u);
    buf_free(&out);
}

/* Strings keep escapes, NUL and non-ASCII; keys keep their order and
 * duplicates of a json (not jsonb) value; an unpaired surrogate escape
 * (valid json, no UTF-8 form) and absurd nesting are refused with a reason,
 * never packed empty. */
static void msgpack_strings_and_refusals(void **state)
{
    (void)state;
    msgpack_unpacked u;
    relay_buf out = {0};
    const msgpack_object *cols = pack_row(&u, &out,
        "{\"s\":\"a\\\"b\\n\\u00e9\\u0000\\ud83d\\ude00\",\"j\":{\"b\":1,\"a\":2,\"b\":3}}", NULL, NULL);
    assert_non_null(cols);
    const msgpack_object *sv = col_value(cols, 0);
    assert_int_equal(sv->via.str.size, 11);
    assert_memory_equal(sv->via.str.ptr, "a\"b\n\xc3\xa9\0\xf0\x9f\x98\x80", 11);
    const msgpack_object *j = col_value(cols, 1);
    assert_int_equal(j->via.map.size, 3);
    assert_memory_equal(j->via.map.ptr[0].key.via.str.ptr, "b", 1);
    assert_memory_equal(j->via.map.ptr[1].key.via.str.ptr, "a", 1);
    msgpack_unpacked_destroy(&u);

    relay_batch b = {0};
    relay_msg *m = batch_add(&b);
    m->dedup_key = "k";
    m->op = OP_INSERT;
    m->payload = "{\"s\":\"\\ud800x\"}";
    m->payload_len = strlen(m->payload);
    char err[256];
    buf_clear(&out);
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "surrogate"));
    assert_int_equal(out.len, 0);
    relay_buf deep = {0};
    buf_puts(&deep, "{\"d\":");
    for (int i = 0; i < 1200; i++)
        buf_putc(&deep, '[');
    for (int i = 0; i < 1200; i++)
        buf_putc(&deep, ']');
    buf_putc(&deep, '}');
    m->payload = deep.data;
    m->payload_len = deep.len;
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "deeper"));
    m->payload = "{\"a\":1,}";
    m->payload_len = strlen(m->payload);
    assert_int_equal(relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err), -1);
    assert_non_null(strstr(err, "JSON"));
    buf_free(&deep);
    buf_free(&out);
    batch_free(&b);
}

/* Issue 12 #3: CDC events carry "old" (same shape as columns, nil when
 * PostgreSQL sent no old row) and "unchanged_toast". */
static void msgpack_cdc_old_and_unchanged_toast(void **state)
{
    (void)state;
    msgpack_unpacked u;
    relay_buf out = {0};
    const char *src = "{\"schema\":\"public\",\"table\":\"t\",\"lsn\":\"0/1\",\"commit_lsn\":\"0/2\","
                      "\"xid\":5,\"commit_time\":\"x\",\"unchanged_toast\":[\"big\",\"doc\"]}";
    const msgpack_object *cols = pack_row(&u, &out, "{\"id\":2,\"note\":\"n\"}", "{\"id\":1}", src);
    assert_non_null(cols);
    assert_int_equal(u.data.via.map.size, 8);
    const msgpack_object *old = map_get(&u.data, "old");
    assert_int_equal(old->type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(old->via.array.size, 1);
    assert_str_obj(map_get(&old->via.array.ptr[0], "name"), "id");
    assert_int_equal(map_get(&old->via.array.ptr[0], "value")->via.u64, 1);
    const msgpack_object *toast = map_get(&u.data, "unchanged_toast");
    assert_int_equal(toast->via.array.size, 2);
    assert_str_obj(&toast->via.array.ptr[1], "doc");
    assert_str_obj(map_get(&u.data, "dedup_key"), "0/1:0");
    msgpack_unpacked_destroy(&u);
    cols = pack_row(&u, &out, "{\"id\":2}", NULL, "{\"unchanged_toast\":[]}");
    assert_non_null(cols);
    assert_int_equal(map_get(&u.data, "old")->type, MSGPACK_OBJECT_NIL);
    assert_int_equal(map_get(&u.data, "unchanged_toast")->via.array.size, 0);
    msgpack_unpacked_destroy(&u);
    buf_free(&out);
}

static void format_config(void **state)
{
    (void)state;
    char err[256];
    relay_format f;
    json_t *c = json_loads("{\"format\":\"msgpack\"}", 0, NULL);
    assert_int_equal(relay_format_from_cfg(c, "sink", &f, err, sizeof err), 0);
    assert_int_equal(f, RELAY_FORMAT_MSGPACK);
    json_object_set_new(c, "format", json_string("avro"));
    assert_int_equal(relay_format_from_cfg(c, "sink", &f, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.format"));
    json_object_del(c, "format");
    assert_int_equal(relay_format_from_cfg(c, "sink", &f, err, sizeof err), 0);
    assert_int_equal(f, RELAY_FORMAT_NATIVE);
    assert_string_equal(relay_format_content_type(f, NULL), "application/json");
    json_decref(c);
}

static void uuids_are_version_4(void **state)
{
    (void)state;
    char a[37], b[37];
    relay_uuid_v4(a);
    relay_uuid_v4(b);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4');
    assert_non_null(strchr("89ab", a[19]));
    for (int i = 0; i < 36; i++)
        assert_true(i == 8 || i == 13 || i == 18 || i == 23 ? a[i] == '-'
                                                               : strchr("0123456789abcdef", a[i]) != NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(uuids_are_version_4),
        cmocka_unit_test(native_envelope_matches_spec),
        cmocka_unit_test(envelope_escapes_and_cdc_fields),
        cmocka_unit_test(templates_render_variables),
        cmocka_unit_test(template_values_cannot_split_subjects),
        cmocka_unit_test(template_check_reports_errors),
        cmocka_unit_test(arena_handles_large_and_many),
        cmocka_unit_test(op_names),
        cmocka_unit_test(json_string_escaping),
        cmocka_unit_test(msgpack_matches_seed_shape),
        cmocka_unit_test(msgpack_refuses_non_utf8_text),
        cmocka_unit_test(msgpack_keeps_every_number),
        cmocka_unit_test(msgpack_strings_and_refusals),
        cmocka_unit_test(msgpack_cdc_old_and_unchanged_toast),
        cmocka_unit_test(format_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
