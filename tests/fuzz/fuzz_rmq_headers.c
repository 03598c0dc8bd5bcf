/*
 * fuzz_rmq_headers.c - the headers-table decoder of the RabbitMQ source
 * (src/client/rabbitmq.c: rmq_header_fields_get), on tables decoded from
 * arbitrary bytes by rabbitmq-c's amqp_decode_table, as a received message's
 * headers property is.
 *
 * Input: the entries of an AMQP 0-9-1 field table (section 4.2.5.5: shortstr
 * name, type octet, value; nested tables and arrays included), without the
 * 4-byte length, which the target prepends.
 *
 * Checks: a field is absent (NULL, length 0) or non-empty; a value taken
 * as is lies inside the input bytes, one written as text lies in the
 * scratch buffer and is NUL-terminated; whenever a top-level entry of that
 * name (any case) holds a non-empty string or byte array, the field is
 * found; and the first such entry's bytes are the value when no entry of
 * another scalar kind precedes it.
 */
#include <amqp.h>
#include <strings.h>

#include "fuzz.h"

#include "client/rabbitmq.h"

static int is_name(amqp_bytes_t k, const char *name)
{
    size_t n = strlen(name);
    return k.len == n && strncasecmp(k.bytes, name, n) == 0;
}

static int is_string(const amqp_field_value_t *v)
{
    return (v->kind == AMQP_FIELD_KIND_UTF8 || v->kind == AMQP_FIELD_KIND_BYTES) &&
           v->value.bytes.len > 0;
}

static int is_other_scalar(const amqp_field_value_t *v)
{
    return !is_string(v) && v->kind != AMQP_FIELD_KIND_TABLE && v->kind != AMQP_FIELD_KIND_ARRAY &&
           v->kind != AMQP_FIELD_KIND_VOID && v->kind != AMQP_FIELD_KIND_UTF8 &&
           v->kind != AMQP_FIELD_KIND_BYTES;
}

static void check_field(const char *name, const amqp_table_t *t, const char *val, size_t len,
                        const char *scratch, const uint8_t *buf, size_t size)
{
    FUZZ_CHECK((val == NULL) == (len == 0), "%s: value %p with length %zu", name, (void *)val, len);
    if (val) {
        int in_buf = (const uint8_t *)val >= buf && (const uint8_t *)val + len <= buf + size;
        int in_scratch = val == scratch && len < 48 && scratch[len] == '\0';
        FUZZ_CHECK(in_buf || in_scratch, "%s: value outside the input and the scratch", name);
    }
    /* the reference: the first top-level string entry of that name */
    const amqp_field_value_t *first = NULL;
    int other_before = 0;
    for (int i = 0; i < t->num_entries && !first; i++) {
        if (!is_name(t->entries[i].key, name))
            continue;
        if (is_string(&t->entries[i].value))
            first = &t->entries[i].value;
        else if (is_other_scalar(&t->entries[i].value))
            other_before = 1;
    }
    if (first) {
        FUZZ_CHECK(len > 0, "%s: a string entry exists but the field is absent", name);
        if (!other_before)
            FUZZ_CHECK(len == first->value.bytes.len && val == first->value.bytes.bytes,
                       "%s: not the first string entry's bytes", name);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 20)
        return 0;
    uint8_t *buf = malloc(size + 4);
    buf[0] = (uint8_t)(size >> 24);
    buf[1] = (uint8_t)(size >> 16);
    buf[2] = (uint8_t)(size >> 8);
    buf[3] = (uint8_t)size;
    if (size)
        memcpy(buf + 4, data, size);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    size_t offset = 0;
    if (amqp_decode_table((amqp_bytes_t){size + 4, buf}, &pool, &t, &offset) == AMQP_STATUS_OK) {
        rmq_header_fields h;
        rmq_header_fields_get(&t, &h);
        check_field("pgtrickle-dedup-key", &t, h.dedup_key, h.dedup_key_len, h.scratch[0], buf,
                    size + 4);
        check_field("traceparent", &t, h.trace_id, h.trace_id_len, h.scratch[1], buf, size + 4);
    }
    empty_amqp_pool(&pool);
    free(buf);
    return 0;
}
