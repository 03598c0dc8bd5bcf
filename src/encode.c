/*
 * encode.c - message body formats: the native JSON envelope and seed 003's
 * MessagePack CDC shape.
 *
 * The MessagePack encoder parses the payload with jansson and packs it with
 * msgpack-c, preserving JSON types: integers stay integers, reals are
 * doubles, objects become maps and arrays arrays. msgpack-c writes through a
 * callback straight into our relay_buf, so there is no intermediate copy.
 */
#include "encode.h"

#include <ctype.h>
#include <msgpack.h>
#include <stdio.h>
#include <string.h>

#include "config.h"

int relay_format_from_cfg(const json_t *cfg, const char *path, relay_format *out, char *err,
                          size_t errlen)
{
    const char *f;
    if (cfg_str(cfg, path, "format", "native", &f, err, errlen) < 0)
        return -1;
    if (strcmp(f, "native") == 0 || strcmp(f, "json") == 0) {
        *out = RELAY_FORMAT_NATIVE;
        return 0;
    }
    if (strcmp(f, "msgpack") == 0) {
        *out = RELAY_FORMAT_MSGPACK;
        return 0;
    }
    snprintf(err, errlen, "%s.format: expected \"native\" or \"msgpack\", got \"%s\"", path, f);
    return -1;
}

const char *relay_format_name(relay_format f)
{
    return f == RELAY_FORMAT_MSGPACK ? "msgpack" : "native";
}

const char *relay_format_content_type(relay_format f)
{
    return f == RELAY_FORMAT_MSGPACK ? "application/msgpack" : "application/json";
}

int relay_encode(relay_format f, const relay_msg *m, relay_buf *out, char *err, size_t errlen)
{
    size_t start = out->len;
    int rc = 0;
    if (f == RELAY_FORMAT_MSGPACK)
        rc = msg_encode_msgpack(m, out, err, errlen);
    else
        msg_encode_native(m, out);
    if (rc < 0) {
        out->len = start;
        if (out->data)
            out->data[start] = '\0';
    }
    return rc;
}

/* ---- MessagePack -------------------------------------------------------- */

static int buf_write_cb(void *data, const char *p, size_t n)
{
    buf_append((relay_buf *)data, p, n);
    return 0;
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static void pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        msgpack_pack_map(pk, json_object_size(v));
        const char *k;
        json_t *child;
        json_object_foreach((json_t *)v, k, child) {
            pack_str(pk, k);
            pack_json(pk, child);
        }
        break;
    }
    case JSON_ARRAY: {
        msgpack_pack_array(pk, json_array_size(v));
        size_t i;
        json_t *child;
        json_array_foreach(v, i, child) pack_json(pk, child);
        break;
    }
    case JSON_STRING:
        msgpack_pack_str(pk, json_string_length(v));
        msgpack_pack_str_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER: msgpack_pack_int64(pk, (int64_t)json_integer_value(v)); break;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); break;
    case JSON_TRUE: msgpack_pack_true(pk); break;
    case JSON_FALSE: msgpack_pack_false(pk); break;
    case JSON_NULL: msgpack_pack_nil(pk); break;
    }
}

int msg_encode_msgpack(const relay_msg *m, relay_buf *out, char *err, size_t errlen)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, buf_write_cb);

    json_t *payload = NULL;
    if (m->payload && m->payload_is_json) {
        json_error_t je;
        payload = json_loadb(m->payload, m->payload_len, JSON_DECODE_ANY, &je);
        if (!payload) {
            snprintf(err, errlen, "the payload cannot be read as JSON (%s at byte %d)", je.text,
                     je.position);
            return -1;
        }
    } else if (m->payload) {
        /* A body that is not JSON travels as one string column; one that is
         * not even UTF-8 has no faithful MessagePack string: refuse it (the
         * worker dead-letters the event) rather than drop the payload. */
        payload = json_stringn(m->payload, m->payload_len);
        if (!payload) {
            snprintf(err, errlen, "the payload is neither JSON nor UTF-8 text");
            return -1;
        }
    }

    msgpack_pack_map(&pk, 6);
    pack_str(&pk, "table");
    pack_str(&pk, m->table ? m->table : m->stream_table ? m->stream_table : "");
    pack_str(&pk, "operation");
    char op[16];
    snprintf(op, sizeof op, "%s", relay_op_name(m->op));
    for (char *p = op; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    pack_str(&pk, op);
    pack_str(&pk, "relation_id");
    msgpack_pack_uint32(&pk, m->relation_id);
    pack_str(&pk, "lsn");
    if (m->lsn)
        pack_str(&pk, m->lsn);
    else
        msgpack_pack_nil(&pk);
    pack_str(&pk, "columns");
    if (json_is_object(payload)) {
        msgpack_pack_array(&pk, json_object_size(payload));
        const char *k;
        json_t *child;
        json_object_foreach(payload, k, child) {
            msgpack_pack_map(&pk, 2);
            pack_str(&pk, "name");
            pack_str(&pk, k);
            pack_str(&pk, "value");
            pack_json(&pk, child);
        }
    } else if (payload) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 2);
        pack_str(&pk, "name");
        pack_str(&pk, "value");
        pack_str(&pk, "value");
        pack_json(&pk, payload);
    } else {
        msgpack_pack_array(&pk, 0);
    }
    pack_str(&pk, "dedup_key");
    pack_str(&pk, m->dedup_key);
    json_decref(payload);
    return 0;
}
