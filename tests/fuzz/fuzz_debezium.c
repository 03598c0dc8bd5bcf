/*
 * fuzz_debezium.c - the Debezium value mapping (fmt_debezium_value,
 * src/formats.h), which parses PostgreSQL's text output of numerics,
 * temporal types, bytea, bits, intervals and arrays.
 *
 * Input: a first byte picks the column type (and a typmod) from the table
 * below; the rest is the column's text, given as the JSON string the
 * native payload holds (or, for the JSON types and numbers, the text as is).
 * Checks: the mapping returns 0 and appends exactly one valid JSON value
 * (json_valid), never a partial one.
 */
#include "fuzz.h"

#include "formats.h"
#include "json_scan.h"

static const struct { uint32_t oid; int32_t typmod; int raw; } types[] = {
    {1700, -1, 0},   /* numeric */
    {1700, 0x50006, 0}, /* numeric(5,2): (5 << 16 | 2) + 4 */
    {790, -1, 0},    /* money */
    {1082, -1, 0},   /* date */
    {1083, -1, 0},   /* time */
    {1083, 3, 0},    /* time(3) */
    {1114, -1, 0},   /* timestamp */
    {1114, 2, 0},    /* timestamp(2) */
    {1184, -1, 0},   /* timestamptz */
    {1266, -1, 0},   /* timetz */
    {1186, -1, 0},   /* interval */
    {17, -1, 0},     /* bytea */
    {1560, 1, 0},    /* bit(1) */
    {1560, 8, 0},    /* bit(8) */
    {1562, -1, 0},   /* varbit */
    {1007, -1, 0},   /* int4[] */
    {1009, -1, 0},   /* text[] */
    {1231, -1, 0},   /* numeric[] */
    {1185, -1, 0},   /* timestamptz[] */
    {1000, -1, 0},   /* bool[] */
    {3807, -1, 0},   /* jsonb[] */
    {3802, -1, 1},   /* jsonb (raw JSON) */
    {23, -1, 1},     /* int4 (raw number) */
    {701, -1, 0},    /* float8 as a string ("NaN") */
    {16, -1, 0},     /* bool as a string */
    {25, -1, 0},     /* text */
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    size_t t = data[0] % (sizeof types / sizeof *types);
    data++;
    size--;
    relay_buf v = {0}, out = {0};
    if (types[t].raw) {
        if (json_valid((const char *)data, size) != 1 || json_span((const char *)data, size) != size) {
            buf_free(&v);
            return 0;
        }
        buf_append(&v, (const char *)data, size);
    } else {
        buf_put_json_str(&v, (const char *)data, size);
    }
    buf_puts(&out, "x");
    int rc = fmt_debezium_value(types[t].oid, types[t].typmod, v.data, v.len, &out);
    FUZZ_CHECK(rc == 0, "the mapping failed on a valid value");
    FUZZ_CHECK(out.len > 1 && json_valid(out.data + 1, out.len - 1) != 0,
               "type %u: \"%.300s\" is not one JSON value", types[t].oid, out.data + 1);
    buf_free(&v);
    buf_free(&out);
    return 0;
}
