/*
 * fuzz_envelope.c - the body encoders: the native JSON envelope
 * (msg_encode_native, src/message.c) and relay_encode (src/encode.c) in both
 * formats, native and msgpack.
 *
 * Input: one flags byte, then NUL-separated fields, the last one taking the
 * rest (NUL bytes included):
 *   flags  bits 0-2 the op (0 insert .. 6 event), 3 payload_is_json = 0,
 *          4 is_full_refresh, 5 outbox_id set, 6 no payload (NULL),
 *          7 CDC extras (old_json = field 6, source_json = field 7)
 *   fields 1 dedup_key  2 subject  3 refresh_id  4 table  5 lsn
 *          6 old_json   7 source_json  8 payload
 * An empty dedup_key .. lsn field is NULL (dedup_key: "").
 *
 * Checks:
 *   native: whenever the inputs are what the relay feeds it (UTF-8 strings,
 *     a JSON payload when payload_is_json, JSON old/source objects), the
 *     envelope is one JSON object whose fields read back as the inputs:
 *     dedup_key, subject, op, payload (equal as JSON; the exact bytes of a
 *     non-JSON payload), is_full_refresh, outbox_id, refresh_id, old,
 *     source. relay_encode(NATIVE) appends the same bytes.
 *   msgpack: relay_encode returns 0 with exactly one complete MessagePack
 *     map of the 6 keys of seed 003's shape, 8 with CDC extras (dedup_key
 *     and table read back, one column per payload member, one for a
 *     non-JSON payload, "old" nil exactly when there is none), or -1 only
 *     for a payload_is_json payload that is not JSON, a non-JSON payload
 *     that is not UTF-8, a malformed old/source, an unpaired surrogate
 *     escape or too deep a nesting, and then leaves the buffer as it was.
 */
#include <msgpack.h>

#include "fuzz.h"

#include "encode.h"
#include "json_scan.h"
#include "message.h"

static int utf8(const char *s)
{
    return !s || fuzz_utf8_text(s, strlen(s));
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

static int str_is(const msgpack_object *o, const char *s)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static const char *jstr(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static int same_str(json_t *obj, const char *key, const char *want)
{
    json_t *v = json_object_get(obj, key);
    if (!want)
        return json_is_null(v);
    return json_is_string(v) && json_string_length(v) == strlen(want) &&
           memcmp(json_string_value(v), want, strlen(want)) == 0;
}

static void check_native(const relay_msg *m)
{
    relay_buf out = {0};
    msg_encode_native(m, &out);
    relay_buf via = {0};
    buf_puts(&via, "prefix");
    char err[256];
    FUZZ_CHECK(relay_encode(RELAY_FORMAT_NATIVE, NULL, m, &via, err, sizeof err) == 0, "native failed");
    FUZZ_CHECK(via.len == out.len + 6 && memcmp(via.data + 6, out.data, out.len) == 0,
               "relay_encode(native) differs from msg_encode_native");
    buf_free(&via);

    /* Only inputs the relay produces need to give valid JSON. */
    json_t *payload = NULL;
    int plausible = utf8(m->dedup_key) && utf8(m->subject) && utf8(m->refresh_id);
    if (m->payload && m->payload_len && m->payload_is_json) {
        payload = fuzz_jansson(m->payload, m->payload_len, 0, NULL);
        plausible = plausible && payload != NULL;
    } else if (m->payload && !m->payload_is_json) {
        json_t *p = json_stringn(m->payload, m->payload_len);
        plausible = plausible && p != NULL;
        json_decref(p);
    }
    json_t *old = NULL, *src = NULL;
    if (m->old_json) {
        old = fuzz_jansson(m->old_json, strlen(m->old_json), 0, NULL);
        plausible = plausible && json_is_object(old);
    }
    if (m->source_json) {
        src = fuzz_jansson(m->source_json, strlen(m->source_json), 0, NULL);
        plausible = plausible && json_is_object(src);
    }
    if (plausible) {
        json_t *env = fuzz_jansson(out.data, out.len, JSON_ALLOW_NUL, NULL);
        FUZZ_CHECK(json_is_object(env), "envelope is not a JSON object: %.400s", out.data);
        FUZZ_CHECK(same_str(env, "dedup_key", m->dedup_key), "dedup_key");
        FUZZ_CHECK(same_str(env, "subject", m->subject), "subject");
        FUZZ_CHECK(same_str(env, "refresh_id", m->refresh_id), "refresh_id");
        FUZZ_CHECK(jstr(env, "op") && strcmp(jstr(env, "op"), relay_op_name(m->op)) == 0, "op");
        FUZZ_CHECK(json_is_boolean(json_object_get(env, "is_full_refresh")) &&
                   json_is_true(json_object_get(env, "is_full_refresh")) == m->is_full_refresh,
                   "is_full_refresh");
        json_t *id = json_object_get(env, "outbox_id");
        FUZZ_CHECK(m->outbox_id < 0 ? json_is_null(id)
                                    : json_is_integer(id) && json_integer_value(id) == m->outbox_id,
                   "outbox_id");
        json_t *pl = json_object_get(env, "payload");
        if (payload)
            FUZZ_CHECK(json_equal(pl, payload), "payload differs");
        else if (m->payload && !m->payload_is_json)
            FUZZ_CHECK(json_is_string(pl) && json_string_length(pl) == m->payload_len &&
                       memcmp(json_string_value(pl), m->payload, m->payload_len) == 0,
                       "a non-JSON payload does not read back as its bytes");
        else
            FUZZ_CHECK(json_is_null(pl), "no payload must be null");
        if (old)
            FUZZ_CHECK(json_equal(json_object_get(env, "old"), old), "old");
        if (src)
            FUZZ_CHECK(json_equal(json_object_get(env, "source"), src), "source");
        json_decref(env);
    }
    json_decref(payload);
    json_decref(old);
    json_decref(src);
    buf_free(&out);
}

/* The number of columns seed 003's shape gives the JSON text s[0..n):
 * its members when it is an object, else 1. */
static size_t json_columns(const char *s, size_t n)
{
    size_t i = json_skip_ws(s, n, 0);
    if (i >= n || s[i] != '{')
        return 1;
    size_t pos = 0, off, len, keylen, count = 0;
    const char *key;
    while (json_object_next(s + i, n - i, &pos, &key, &keylen, &off, &len) == 1)
        count++;
    return count;
}

static int has_escape_u(const char *s, size_t n)
{
    return s && memmem(s, n, "\\u", 2) != NULL;
}

/* msgpack-c's unpacker reads this many levels of nesting at most
 * (MSGPACK_EMBED_STACK_SIZE in its unpack_define.h, fixed when the library
 * is built; 32 in Debian's libmsgpack-dev). */
#define UNPACK_MAX_DEPTH 32

static void check_msgpack(const relay_msg *m)
{
    relay_buf out = {0};
    buf_puts(&out, "prefix");
    char err[256] = "";
    int rc = relay_encode(RELAY_FORMAT_MSGPACK, NULL, m, &out, err, sizeof err);
    int pjson = m->payload && m->payload_is_json;
    int valid = pjson ? json_valid(m->payload, m->payload_len) : 1;
    int text_ok = 1; /* a non-JSON payload is packed as a string: UTF-8 only */
    if (m->payload && !m->payload_is_json) {
        json_t *t = json_stringn(m->payload, m->payload_len);
        text_ok = t != NULL;
        json_decref(t);
    }
    size_t oldn = m->old_json ? strlen(m->old_json) : 0;
    size_t srcn = m->source_json ? strlen(m->source_json) : 0;
    if (rc < 0) {
        /* Refused only for a reason the relay's own events never have
         * (malformed JSON, non-UTF-8 text, a malformed old/source object),
         * or one MessagePack cannot carry: an unpaired surrogate escape,
         * nesting deeper than the packer goes. */
        int surrogate = strstr(err, "surrogate") &&
                        (has_escape_u(m->payload, m->payload_len) ||
                         has_escape_u(m->old_json, oldn) || has_escape_u(m->source_json, srcn));
        int deep = strstr(err, "deeper") != NULL;
        int bad_extra = (m->old_json && json_valid(m->old_json, oldn) == 0) ||
                        (m->source_json && json_valid(m->source_json, srcn) == 0);
        FUZZ_CHECK(!valid || !text_ok || surrogate || deep || bad_extra,
                   "msgpack refused an encodable event: %s", err);
        FUZZ_CHECK(err[0], "msgpack failed without a reason");
        FUZZ_CHECK(out.len == 6 && strcmp(out.data, "prefix") == 0,
                   "a failed encode left bytes behind");
        buf_free(&out);
        return;
    }
    FUZZ_CHECK(rc == 0, "rc %d", rc);
    FUZZ_CHECK(valid, "msgpack encoded a payload that is not JSON");
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    int ur = msgpack_unpack_next(&u, out.data + 6, out.len - 6, &off);
    if (ur == MSGPACK_UNPACK_NOMEM_ERROR &&
        ((m->payload && fuzz_json_depth(m->payload, m->payload_len) + 3 > UNPACK_MAX_DEPTH) ||
         (m->old_json && fuzz_json_depth(m->old_json, oldn) + 3 > UNPACK_MAX_DEPTH) ||
         (m->source_json && fuzz_json_depth(m->source_json, srcn) + 3 > UNPACK_MAX_DEPTH))) {
        /* msgpack-c's unpacker stops at UNPACK_MAX_DEPTH levels; the
         * relay packs up to 1000 (docs/backends/cdc.md). */
        msgpack_unpacked_destroy(&u);
        buf_free(&out);
        return;
    }
    FUZZ_CHECK(ur == MSGPACK_UNPACK_SUCCESS && off == out.len - 6,
               "not one complete MessagePack object (%d, %zu of %zu bytes)", ur, off, out.len - 6);
    const msgpack_object *o = &u.data;
    uint32_t keys = m->source_json ? 8 : 6;
    FUZZ_CHECK(o->type == MSGPACK_OBJECT_MAP && o->via.map.size == keys, "not a map of %u keys",
               keys);
    FUZZ_CHECK(str_is(map_get(o, "dedup_key"), m->dedup_key), "dedup_key");
    const char *table = m->table ? m->table : m->stream_table ? m->stream_table : "";
    FUZZ_CHECK(str_is(map_get(o, "table"), table), "table");
    const msgpack_object *lsn = map_get(o, "lsn");
    FUZZ_CHECK(m->lsn ? str_is(lsn, m->lsn) : lsn && lsn->type == MSGPACK_OBJECT_NIL, "lsn");
    const msgpack_object *cols = map_get(o, "columns");
    FUZZ_CHECK(cols && cols->type == MSGPACK_OBJECT_ARRAY, "columns");
    size_t want = pjson ? json_columns(m->payload, m->payload_len) : m->payload ? 1 : 0;
    FUZZ_CHECK(cols->via.array.size == want, "%u columns, want %zu", cols->via.array.size, want);
    if (m->source_json) {
        const msgpack_object *old = map_get(o, "old");
        FUZZ_CHECK(old && (m->old_json ? old->type == MSGPACK_OBJECT_ARRAY
                                       : old->type == MSGPACK_OBJECT_NIL), "old");
        const msgpack_object *toast = map_get(o, "unchanged_toast");
        FUZZ_CHECK(toast, "unchanged_toast");
    }
    msgpack_unpacked_destroy(&u);
    buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    const uint8_t *p = data + 1, *end = data + size;
    char *f[7];
    for (int i = 0; i < 7; i++)
        f[i] = fuzz_field(&p, end, 0);
    /* the payload: the rest, NUL bytes and all, in an exact-size copy */
    size_t plen = (size_t)(end - p);
    char *payload = malloc(plen + 1);
    if (plen)
        memcpy(payload, p, plen);
    payload[plen] = '\0';

    relay_msg m = {0};
    m.op = (relay_op)((flags & 7) % RELAY_OP_COUNT);
    m.payload_is_json = !(flags & 8);
    m.is_full_refresh = (flags & 16) != 0;
    m.outbox_id = (flags & 32) ? (int64_t)size * 1000003 : -1;
    m.payload = (flags & 64) ? NULL : payload;
    m.payload_len = (flags & 64) ? 0 : plen;
    m.dedup_key = f[0];
    m.subject = *f[1] ? f[1] : NULL;
    m.refresh_id = *f[2] ? f[2] : NULL;
    m.table = *f[3] ? f[3] : NULL;
    m.stream_table = "fuzz_stream";
    m.lsn = *f[4] ? f[4] : NULL;
    m.relation_id = (uint32_t)size;
    if (flags & 128) {
        m.old_json = f[5];
        m.source_json = f[6];
    }

    check_native(&m);
    check_msgpack(&m);

    for (int i = 0; i < 7; i++)
        free(f[i]);
    free(payload);
    return 0;
}
