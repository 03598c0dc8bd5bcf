/*
 * format_debezium.c - the Debezium PostgreSQL connector's change event
 * (format "debezium"), as its JSON converter writes it with
 * schemas.enable=false, so that Kafka Connect sinks, Flink CDC, ClickHouse
 * or Debezium's own tooling read the relay's events unchanged.
 *
 * Reference: Debezium documentation, "Debezium connector for PostgreSQL"
 * (documentation/modules/ROOT/pages/connectors/postgresql.adoc):
 *   - "Data change events": the key (the primary key / replica identity
 *     columns), and the value envelope {before, after, source, op, ts_ms,
 *     ts_us, ts_ns, transaction}; sections "create events" (op "c"),
 *     "update events" ("u"), "delete events" ("d"), "Tombstone events",
 *     "truncate events" ("t", no key), "message events" ("m"); snapshot
 *     rows are read events ("r").
 *   - source: {version, connector "postgresql", name, ts_ms, ts_us, ts_ns,
 *     snapshot, db, sequence, schema, table, txId, lsn, xmin}; "sequence"
 *     is the stringified array [last committed LSN, current LSN], either
 *     may be null; LSNs are numbers.
 *   - "Data type mappings" with the defaults decimal.handling.mode=precise,
 *     time.precision.mode=adaptive, binary.handling.mode=bytes,
 *     interval.handling.mode=numeric; the JSON converter writes BYTES as
 *     base64. See fmt_debezium_value() for each mapping and docs/formats.md
 *     for the differences (and why).
 *   - "Toasted values": an unchanged TOASTed column carries
 *     unavailable.value.placeholder, "__debezium_unavailable_value".
 *
 * The event is built from the relay's own event: the payload (the row as
 * pgoutput.c renders it: PostgreSQL's text output, numbers and booleans as
 * JSON), old_json, source_json and, for CDC, row_type (the column types and
 * key flags), which drives the type mapping and where unchanged TOAST
 * columns go. Events without row_type (outbox events) map onto the same
 * envelope with the payload as "after" unchanged.
 */
#include "formats.h"

#include <ctype.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json_scan.h"

/* PostgreSQL type OIDs (pg_type.dat) that the mapping distinguishes. */
enum {
    T_BOOL = 16, T_BYTEA = 17, T_INT8 = 20, T_INT2 = 21, T_INT4 = 23, T_OID = 26,
    T_JSON = 114, T_XML = 142, T_FLOAT4 = 700, T_FLOAT8 = 701, T_MONEY = 790,
    T_DATE = 1082, T_TIME = 1083, T_TIMESTAMP = 1114, T_TIMESTAMPTZ = 1184,
    T_INTERVAL = 1186, T_TIMETZ = 1266, T_BIT = 1560, T_VARBIT = 1562, T_NUMERIC = 1700,
    T_JSONB = 3802,
};

/* Array type OID -> element type OID (one-dimensional arrays of these are
 * Debezium ARRAYs of the element's mapping; other arrays stay strings). */
static uint32_t array_elem(uint32_t oid)
{
    static const uint32_t map[][2] = {
        {1000, T_BOOL}, {1001, T_BYTEA}, {1005, T_INT2}, {1007, T_INT4}, {1016, T_INT8},
        {1028, T_OID}, {1021, T_FLOAT4}, {1022, T_FLOAT8}, {1231, T_NUMERIC},
        {1182, T_DATE}, {1183, T_TIME}, {1115, T_TIMESTAMP}, {1185, T_TIMESTAMPTZ},
        {1187, T_INTERVAL}, {1270, T_TIMETZ}, {199, T_JSON}, {3807, T_JSONB},
        {1009, 25}, {1015, 1043}, {1014, 1042}, {2951, 2950}, {143, T_XML}, {1791, 790},
    };
    for (size_t i = 0; i < sizeof map / sizeof *map; i++)
        if (map[i][0] == oid)
            return map[i][1];
    return 0;
}

/* ---- small helpers --------------------------------------------------------- */

static void put_base64(relay_buf *out, const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    buf_putc(out, '"');
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {tbl[v >> 18], tbl[(v >> 12) & 63], i + 1 < n ? tbl[(v >> 6) & 63] : '=',
                     i + 2 < n ? tbl[v & 63] : '='};
        buf_append(out, q, 4);
    }
    buf_putc(out, '"');
}

/* The text of a native value: a JSON string decoded, anything else as is. */
static int value_text(const char *v, size_t n, relay_buf *tmp)
{
    buf_clear(tmp);
    if (n && v[0] == '"')
        return json_string_decode(v, n, tmp);
    buf_append(tmp, v, n);
    return 0;
}

static int all_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return 0;
    return n > 0;
}

/* Parse `n` digits at s (exactly). */
static int parse_uint(const char *s, size_t n, int64_t *out)
{
    if (!all_digits(s, n) || n > 18)
        return -1;
    int64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v = v * 10 + (s[i] - '0');
    *out = v;
    return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
 * days_from_civil). */
static int64_t days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, int *m, int *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    *d = (int)(doy - (153 * mp + 2) / 5 + 1);
    *m = (int)(mp < 10 ? mp + 3 : mp - 9);
    *y = yoe + era * 400 + (*m <= 2);
}

/* "YYYY-MM-DD" (4 to 7 digit year: PostgreSQL's dates end in 5874897) at s;
 * sets *used. PostgreSQL's ISO DateStyle
 * output; " BC" is handled by the callers. */
static int parse_date(const char *s, size_t n, int64_t *days, size_t *used)
{
    size_t i = 0;
    while (i < n && isdigit((unsigned char)s[i]))
        i++;
    int64_t y, mo, d;
    if (i < 4 || i > 7 || i + 6 > n || s[i] != '-' || s[i + 3] != '-' || parse_uint(s, i, &y) < 0 ||
        parse_uint(s + i + 1, 2, &mo) < 0 || parse_uint(s + i + 4, 2, &d) < 0 || mo < 1 ||
        mo > 12 || d < 1 || d > 31)
        return -1;
    size_t end = i + 6;
    if (n - end >= 3 && memcmp(s + n - 3, " BC", 3) == 0)
        y = 1 - y;
    *days = days_from_civil(y, mo, d);
    *used = end;
    return 0;
}

/* "HH:MM:SS[.ffffff]" at s: microseconds since midnight; sets *used. */
static int parse_time(const char *s, size_t n, int64_t *us, size_t *used)
{
    int64_t h, mi, sec, frac = 0;
    if (n < 8 || s[2] != ':' || s[5] != ':' || parse_uint(s, 2, &h) < 0 ||
        parse_uint(s + 3, 2, &mi) < 0 || parse_uint(s + 6, 2, &sec) < 0)
        return -1;
    size_t i = 8;
    if (i < n && s[i] == '.') {
        size_t j = ++i;
        int digits = 0;
        while (i < n && isdigit((unsigned char)s[i])) {
            if (digits < 6) {
                frac = frac * 10 + (s[i] - '0');
                digits++;
            }
            i++;
        }
        if (i == j)
            return -1;
        while (digits++ < 6)
            frac *= 10;
    }
    *us = ((h * 60 + mi) * 60 + sec) * 1000000 + frac;
    *used = i;
    return 0;
}

/* "+HH[:MM[:SS]]" or "-..." at s: the offset east of UTC in seconds. */
static int parse_offset(const char *s, size_t n, int64_t *secs, size_t *used)
{
    int64_t h, m = 0, sec = 0;
    if (n < 3 || (s[0] != '+' && s[0] != '-') || parse_uint(s + 1, 2, &h) < 0)
        return -1;
    size_t i = 3;
    if (i + 3 <= n && s[i] == ':' && parse_uint(s + i + 1, 2, &m) == 0) {
        i += 3;
        if (i + 3 <= n && s[i] == ':' && parse_uint(s + i + 1, 2, &sec) == 0)
            i += 3;
    }
    *secs = (s[0] == '-' ? -1 : 1) * (h * 3600 + m * 60 + sec);
    *used = i;
    return 0;
}

/* ISO-8601 "THH:MM:SS[.fff]" of us since midnight, fraction without
 * trailing zeros, as java.time's ISO formatters print it. */
static void put_digits(char *p, int64_t v, int n)
{
    while (n-- > 0) {
        p[n] = (char)('0' + v % 10);
        v /= 10;
    }
}

static void put_iso_time(relay_buf *out, int64_t us)
{
    int64_t s = us / 1000000, f = us % 1000000;
    char t[16] = "00:00:00.000000";
    put_digits(t, s / 3600, 2);
    put_digits(t + 3, s / 60 % 60, 2);
    put_digits(t + 6, s % 60, 2);
    put_digits(t + 9, f, 6);
    int k = 15;
    while (f && t[k - 1] == '0')
        k--;
    buf_append(out, t, f ? (size_t)k : 8);
}

/* ---- numbers ------------------------------------------------------------ */

/* The unscaled value of a decimal text ("-123.45", scale 2 -> -12345) as
 * Java's BigInteger.toByteArray() writes it: minimal big-endian two's
 * complement. `scale` < 0 means the text's own scale (stored in *scale_out).
 * Returns -1 when the text is not a plain decimal. */
static int decimal_bytes(const char *s, size_t n, int scale, relay_buf *bytes, int *scale_out)
{
    int neg = 0;
    size_t i = 0;
    if (i < n && (s[i] == '-' || s[i] == '+'))
        neg = s[i++] == '-';
    relay_buf dig = {0};
    int frac = -1;
    for (; i < n; i++) {
        if (s[i] == '.' && frac < 0) {
            frac = 0;
            continue;
        }
        if (!isdigit((unsigned char)s[i])) {
            buf_free(&dig);
            return -1;
        }
        buf_putc(&dig, s[i]);
        if (frac >= 0)
            frac++;
    }
    if (dig.len == 0) {
        buf_free(&dig);
        return -1;
    }
    if (frac < 0)
        frac = 0;
    if (scale < 0)
        scale = frac;
    while (frac < scale) {
        buf_putc(&dig, '0');
        frac++;
    }
    if (frac > scale) /* more digits than the column scale: PostgreSQL never sends that */
        dig.len -= (size_t)(frac - scale);
    *scale_out = scale;
    /* Decimal digits -> base 256, most significant byte first. */
    unsigned char *mag = xmalloc(dig.len + 1);
    size_t ml = 0;
    for (size_t k = 0; k < dig.len; k++) {
        unsigned carry = (unsigned)(dig.data[k] - '0');
        for (size_t j = ml; j-- > 0;) {
            unsigned v = mag[j] * 10u + carry;
            mag[j] = (unsigned char)(v & 0xFF);
            carry = v >> 8;
        }
        while (carry) {
            memmove(mag + 1, mag, ml);
            mag[0] = (unsigned char)(carry & 0xFF);
            carry >>= 8;
            ml++;
        }
    }
    buf_free(&dig);
    buf_clear(bytes);
    int zero = ml == 0;
    if (zero) {
        buf_putc(bytes, 0);
    } else if (!neg) {
        if (mag[0] & 0x80)
            buf_putc(bytes, 0);
        buf_append(bytes, (char *)mag, ml);
    } else {
        /* -M in k bytes, k minimal with M <= 2^(8k-1). */
        int fits = mag[0] < 0x80;
        if (mag[0] == 0x80) {
            fits = 1;
            for (size_t j = 1; j < ml; j++)
                if (mag[j])
                    fits = 0;
        }
        size_t k = fits ? ml : ml + 1, off = k - ml;
        unsigned char *t = xcalloc(k, 1);
        memcpy(t + off, mag, ml);
        unsigned carry = 1;
        for (size_t j = k; j-- > 0;) {
            unsigned v = (unsigned char)~t[j] + carry;
            t[j] = (unsigned char)v;
            carry = v >> 8;
        }
        buf_append(bytes, (char *)t, k);
        free(t);
    }
    free(mag);
    return 0;
}

/* numeric: precise mode. numeric(p,s) -> the base64 unscaled value
 * (org.apache.kafka.connect.data.Decimal, scale in the schema); numeric
 * without a scale -> {"scale":s,"value":base64}
 * (io.debezium.data.VariableScaleDecimal). NaN and infinities have no
 * precise form: their text (decimal.handling.mode=string). */
static void put_numeric(relay_buf *out, const char *t, size_t n, int32_t typmod, int money)
{
    relay_buf b = {0}, clean = {0};
    int scale = money ? 2 : typmod >= 4 ? (int)((typmod - 4) & 0xFFFF) : -1, got;
    if (money) {
        /* lc_monetary text such as "-$1,234.56" or "($1.00)". */
        int neg = 0;
        for (size_t i = 0; i < n; i++) {
            if (t[i] == '-' || t[i] == '(')
                neg = 1;
            else if (isdigit((unsigned char)t[i]) || t[i] == '.')
                buf_putc(&clean, t[i]);
        }
        if (neg) {
            buf_putc(&clean, '-');
            memmove(clean.data + 1, clean.data, clean.len - 1);
            clean.data[0] = '-';
        }
        t = clean.data ? clean.data : "";
        n = clean.len;
    }
    if (decimal_bytes(t, n, scale, &b, &got) < 0) {
        buf_put_json_str(out, t, n);
    } else if (scale < 0) {
        buf_printf(out, "{\"scale\":%d,\"value\":", got);
        put_base64(out, (unsigned char *)b.data, b.len);
        buf_putc(out, '}');
    } else {
        put_base64(out, (unsigned char *)b.data, b.len);
    }
    buf_free(&b);
    buf_free(&clean);
}

/* interval, PostgreSQL's default IntervalStyle ("1 year 2 mons 3 days
 * 04:05:06.78", "-00:00:01"): io.debezium.time.MicroDuration, approximate
 * microseconds with 365.25/12 days per month. */
static int put_interval(relay_buf *out, const char *t, size_t n)
{
    double months = 0, days = 0, us = 0;
    size_t i = 0;
    while (i < n) {
        while (i < n && t[i] == ' ')
            i++;
        if (i >= n)
            break;
        size_t j = i;
        if (t[j] == '-' || t[j] == '+')
            j++;
        size_t d0 = j;
        while (j < n && isdigit((unsigned char)t[j]))
            j++;
        if (j == d0)
            return -1;
        if (j < n && t[j] == ':') {
            int neg = t[i] == '-';
            size_t s = neg || t[i] == '+' ? i + 1 : i, used;
            int64_t tus;
            /* hours may have more than 2 digits: HH...:MM:SS */
            int64_t h;
            if (parse_uint(t + s, j - s, &h) < 0 || j + 6 > n)
                return -1;
            char hhmmss[32];
            size_t rest = n - j - 1 < 20 ? n - j - 1 : 20;
            snprintf(hhmmss, sizeof hhmmss, "00:%.*s", (int)rest, t + j + 1);
            if (parse_time(hhmmss, strlen(hhmmss), &tus, &used) < 0)
                return -1;
            double v = (double)h * 3600e6 + (double)tus;
            us += neg ? -v : v;
            i = j + 1 + (used - 3);
            continue;
        }
        double num = strtod(t + i, NULL);
        while (j < n && t[j] == ' ')
            j++;
        size_t u0 = j;
        while (j < n && isalpha((unsigned char)t[j]))
            j++;
        size_t ul = j - u0;
        const char *u = t + u0;
        if (ul >= 4 && memcmp(u, "year", 4) == 0)
            months += num * 12;
        else if (ul >= 3 && memcmp(u, "mon", 3) == 0)
            months += num;
        else if (ul >= 3 && memcmp(u, "day", 3) == 0)
            days += num;
        else
            return -1;
        i = j;
    }
    double total = (months * (365.25 / 12.0) + days) * 86400e6 + us;
    buf_printf(out, "%" PRId64, (int64_t)llround(total));
    return 0;
}

/* bit(n) / varbit: io.debezium.data.Bits, the bits as a little-endian byte
 * array of ceil(n/8) bytes, base64. */
static int put_bits(relay_buf *out, const char *t, size_t n)
{
    size_t nb = (n + 7) / 8;
    unsigned char *b = xcalloc(nb ? nb : 1, 1);
    for (size_t i = 0; i < n; i++) {
        if (t[i] != '0' && t[i] != '1') {
            free(b);
            return -1;
        }
        size_t bit = n - 1 - i; /* the last character is bit 0 */
        if (t[i] == '1')
            b[bit / 8] |= (unsigned char)(1u << (bit % 8));
    }
    put_base64(out, b, nb);
    free(b);
    return 0;
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* bytea "\x..." (bytea_output hex, which Debezium requires too) -> base64. */
static int put_bytea(relay_buf *out, const char *t, size_t n)
{
    if (n < 2 || t[0] != '\\' || t[1] != 'x' || n % 2)
        return -1;
    size_t nb = (n - 2) / 2;
    unsigned char *b = xmalloc(nb + 1);
    for (size_t i = 0; i < nb; i++) {
        int h = hexval(t[2 + 2 * i]), l = hexval(t[3 + 2 * i]);
        if (h < 0 || l < 0) {
            free(b);
            return -1;
        }
        b[i] = (unsigned char)(h << 4 | l);
    }
    put_base64(out, b, nb);
    free(b);
    return 0;
}

/* Days whose microseconds since 1970 fit an int64 (with a day to spare). */
#define MAX_TS_DAYS INT64_C(106751990)

/* Temporal types, time.precision.mode=adaptive. Returns -1 for text that is
 * not a finite ISO value ("infinity", another DateStyle). */
static int put_temporal(relay_buf *out, uint32_t oid, int32_t typmod, const char *t, size_t n)
{
    int64_t days, us, off;
    size_t used, u2, u3;
    switch (oid) {
    case T_DATE: /* io.debezium.time.Date: days since the epoch */
        if (parse_date(t, n, &days, &used) < 0)
            return -1;
        buf_printf(out, "%" PRId64, days);
        return 0;
    case T_TIME: /* Time (ms) for TIME(1..3), MicroTime (us) otherwise */
        if (parse_time(t, n, &us, &used) < 0 || used != n)
            return -1;
        if (typmod >= 0 && typmod <= 3)
            buf_printf(out, "%" PRId64, us / 1000);
        else
            buf_printf(out, "%" PRId64, us);
        return 0;
    case T_TIMESTAMP: /* Timestamp (ms) for TIMESTAMP(1..3), MicroTimestamp otherwise */
    case T_TIMESTAMPTZ: {
        if (parse_date(t, n, &days, &used) < 0 || used >= n || t[used] != ' ' ||
            parse_time(t + used + 1, n - used - 1, &us, &u2) < 0)
            return -1;
        if (days > MAX_TS_DAYS || days < -MAX_TS_DAYS)
            return -1; /* microseconds since 1970 would overflow: the text */
        size_t end = used + 1 + u2;
        off = 0;
        if (oid == T_TIMESTAMPTZ) {
            if (parse_offset(t + end, n - end, &off, &u3) < 0)
                return -1;
            end += u3;
        }
        if (end != n && !(n - end == 3 && memcmp(t + end, " BC", 3) == 0))
            return -1;
        int64_t total = days * 86400000000LL + us - off * 1000000LL;
        if (oid == T_TIMESTAMP) {
            if (typmod >= 0 && typmod <= 3)
                buf_printf(out, "%" PRId64, total >= 0 ? total / 1000 : -((-total + 999) / 1000));
            else
                buf_printf(out, "%" PRId64, total);
            return 0;
        }
        /* io.debezium.time.ZonedTimestamp: ISO-8601 in UTC ("Z"). */
        int64_t d = total >= 0 ? total / 86400000000LL : -((-total + 86400000000LL - 1) / 86400000000LL);
        int64_t tod = total - d * 86400000000LL, y;
        int mo, dd;
        civil_from_days(d, &y, &mo, &dd);
        if (y < 0 || y > 9999) {
            buf_printf(out, "\"%04" PRId64 "-%02d-%02dT", y, mo, dd);
        } else {
            char d[13] = "\"0000-00-00T";
            put_digits(d + 1, y, 4);
            put_digits(d + 6, mo, 2);
            put_digits(d + 9, dd, 2);
            buf_append(out, d, 12);
        }
        put_iso_time(out, tod);
        buf_puts(out, "Z\"");
        return 0;
    }
    case T_TIMETZ: /* io.debezium.time.ZonedTime: ISO-8601 time in UTC */
        if (parse_time(t, n, &us, &used) < 0 || parse_offset(t + used, n - used, &off, &u2) < 0 ||
            used + u2 != n)
            return -1;
        us -= off * 1000000LL;
        us %= 86400000000LL;
        if (us < 0)
            us += 86400000000LL;
        buf_putc(out, '"');
        put_iso_time(out, us);
        buf_puts(out, "Z\"");
        return 0;
    }
    return -1;
}

static int put_scalar(relay_buf *out, uint32_t oid, int32_t typmod, const char *v, size_t n,
                      relay_buf *tmp);

/* A one-dimensional PostgreSQL array literal ("{1,2,NULL}", elements
 * quoted with backslash escapes when needed) -> a JSON array of the
 * elements' mappings. Returns -1 for anything else (multi-dimensional,
 * explicit bounds). */
static int put_array(relay_buf *out, uint32_t elem, int32_t typmod, const char *t, size_t n)
{
    if (n < 2 || t[0] != '{' || t[n - 1] != '}')
        return -1;
    relay_buf res = {0}, el = {0}, tmp = {0}, ev = {0};
    int rc = 0;
    buf_putc(&res, '[');
    size_t i = 1;
    int count = 0;
    while (i < n - 1 && rc == 0) {
        buf_clear(&el);
        int quoted = 0;
        if (t[i] == '"') {
            quoted = 1;
            i++;
            while (i < n - 1 && t[i] != '"') {
                if (t[i] == '\\' && i + 1 < n - 1)
                    i++;
                buf_putc(&el, t[i++]);
            }
            if (i >= n - 1) {
                rc = -1;
                break;
            }
            i++;
        } else {
            while (i < n - 1 && t[i] != ',') {
                if (t[i] == '{' || t[i] == '"') {
                    rc = -1;
                    break;
                }
                buf_putc(&el, t[i++]);
            }
        }
        if (rc)
            break;
        if (count++)
            buf_putc(&res, ',');
        if (!quoted && el.len == 4 && memcmp(el.data, "NULL", 4) == 0) {
            buf_puts(&res, "null");
        } else {
            /* The element as the native payload would hold it. */
            buf_clear(&ev);
            if (elem == T_JSON || elem == T_JSONB)
                buf_put_json_str(&res, el.data ? el.data : "", el.len);
            else {
                buf_put_json_str(&ev, el.data ? el.data : "", el.len);
                rc = put_scalar(&res, elem, typmod, ev.data, ev.len, &tmp);
            }
        }
        if (i < n - 1) {
            if (t[i] != ',') {
                rc = -1;
                break;
            }
            i++;
        }
    }
    buf_putc(&res, ']');
    if (rc == 0)
        buf_append(out, res.data, res.len);
    buf_free(&res);
    buf_free(&el);
    buf_free(&tmp);
    buf_free(&ev);
    return rc;
}

/* One value: native JSON v[0..n) of a column of type oid. Returns 0 when
 * it wrote the mapped value, -1 when the text did not parse (the caller
 * then writes the value unchanged). */
static int put_scalar(relay_buf *out, uint32_t oid, int32_t typmod, const char *v, size_t n,
                      relay_buf *tmp)
{
    switch (oid) {
    case T_BOOL:
    case T_INT2:
    case T_INT4:
    case T_INT8:
    case T_OID:
    case T_FLOAT4:
    case T_FLOAT8:
        /* native already maps these to JSON numbers / booleans (NaN and
         * infinities stay strings: JSON has no such numbers) */
        if (n && v[0] != '"') {
            buf_append(out, v, n);
            return 0;
        }
        if (value_text(v, n, tmp) < 0)
            return -1;
        if (oid == T_BOOL && tmp->len == 1)
            buf_puts(out, tmp->data[0] == 't' ? "true" : "false");
        else if (oid != T_BOOL && tmp->len && (isdigit((unsigned char)tmp->data[0]) || tmp->data[0] == '-') &&
                 json_valid(tmp->data, tmp->len) == 1)
            buf_append(out, tmp->data, tmp->len); /* an array element: a JSON number */
        else
            buf_put_json_str(out, tmp->data ? tmp->data : "", tmp->len);
        return 0;
    case T_JSON:
    case T_JSONB: /* io.debezium.data.Json: the document as a string */
        buf_put_json_str(out, v, n);
        return 0;
    default:
        break;
    }
    if (n == 0 || v[0] != '"' || value_text(v, n, tmp) < 0)
        return -1;
    const char *t = tmp->data ? tmp->data : "";
    size_t tn = tmp->len;
    uint32_t elem = array_elem(oid);
    if (elem)
        return put_array(out, elem, typmod, t, tn);
    switch (oid) {
    case T_NUMERIC:
        put_numeric(out, t, tn, typmod, 0);
        return 0;
    case T_MONEY:
        put_numeric(out, t, tn, typmod, 1);
        return 0;
    case T_BYTEA:
        return put_bytea(out, t, tn);
    case T_BIT:
        if (typmod == 1 && tn == 1 && (t[0] == '0' || t[0] == '1')) {
            buf_puts(out, t[0] == '1' ? "true" : "false");
            return 0;
        }
        return put_bits(out, t, tn);
    case T_VARBIT:
        return put_bits(out, t, tn);
    case T_INTERVAL:
        return put_interval(out, t, tn);
    case T_DATE:
    case T_TIME:
    case T_TIMESTAMP:
    case T_TIMESTAMPTZ:
    case T_TIMETZ:
        return put_temporal(out, oid, typmod, t, tn);
    default:
        buf_append(out, v, n); /* STRING: text, varchar, uuid, xml, enum, inet, ranges, ... */
        return 0;
    }
}

/* fmt_debezium_value with the caller's scratch buffer (no allocation per value). */
static int put_value(uint32_t type_oid, int32_t typmod, const char *v, size_t n, relay_buf *out,
                     relay_buf *tmp)
{
    if (n == 4 && memcmp(v, "null", 4) == 0) {
        buf_puts(out, "null");
        return 0;
    }
    size_t start = out->len;
    if (put_scalar(out, type_oid, typmod, v, n, tmp) < 0) {
        out->len = start; /* not parseable as the type: the text unchanged */
        buf_append(out, v, n);
    }
    return 0;
}

int fmt_debezium_value(uint32_t type_oid, int32_t typmod, const char *v, size_t n, relay_buf *out)
{
    if (json_span(v, n) != n)
        return -1;
    relay_buf tmp = {0};
    int rc = put_value(type_oid, typmod, v, n, out, &tmp);
    buf_free(&tmp);
    return rc;
}

/* The placeholder of an unchanged TOAST column in the column's literal
 * type: bytes as base64 of the placeholder, a string otherwise. */
static void put_unavailable(relay_buf *out, uint32_t oid)
{
    if (oid == T_BYTEA)
        put_base64(out, (const unsigned char *)DBZ_UNAVAILABLE, strlen(DBZ_UNAVAILABLE));
    else
        buf_put_json_str(out, DBZ_UNAVAILABLE, strlen(DBZ_UNAVAILABLE));
}

/* ---- rows ------------------------------------------------------------------ */

/* Does the raw JSON string k[0..kn) (quotes stripped, escapes not decoded)
 * spell `name`? Names without '"', '\\' or control characters compare as
 * they are; others as buf_put_json_str writes them (the payload's keys are
 * written by it). */
static int key_is(const char *k, size_t kn, const char *name, relay_buf *tmp)
{
    size_t nl = strlen(name);
    int plain = 1;
    for (const unsigned char *p = (const unsigned char *)name; *p && plain; p++)
        plain = *p >= 0x20 && *p != '"' && *p != '\\';
    if (plain)
        return kn == nl && memcmp(k, name, nl) == 0;
    buf_clear(tmp);
    buf_put_json_str(tmp, name, nl);
    return tmp->len == kn + 2 && memcmp(tmp->data + 1, k, kn) == 0;
}

/* Find column `name` in the row object r[0..n), searching from *cursor (the
 * position after the previous match: rows list their columns in table
 * order, so a row is matched in one pass) and then from the start. */
static int find_member(const char *r, size_t n, const char *name, size_t *cursor, size_t *off,
                       size_t *len, relay_buf *tmp)
{
    for (int round = 0; round < 2; round++) {
        size_t pos = round ? 0 : *cursor, kn;
        const char *k;
        if (round && *cursor == 0)
            break;
        while (json_object_next(r, n, &pos, &k, &kn, off, len) == 1) {
            if (key_is(k, kn, name, tmp)) {
                *cursor = pos;
                return 1;
            }
        }
    }
    return 0;
}

/* Is `name` in the JSON array of strings a[0..n) (source.unchanged_toast)? */
static int in_list(const char *a, size_t n, const char *name, relay_buf *tmp)
{
    size_t pos = 0, off, len;
    while (a && json_array_next(a, n, &pos, &off, &len) == 1)
        if (len >= 2 && a[off] == '"' && key_is(a + off + 1, len - 2, name, tmp))
            return 1;
    return 0;
}

/* A row in Debezium's shape: with row_type, every column in table order
 * with its mapped value (key_only: the key columns only), an unchanged
 * TOAST column (listed in the JSON array toast[0..tn)) as the placeholder;
 * without row_type, the row unchanged. */
static int put_row(relay_buf *out, const relay_msg *m, const char *r, size_t n, int key_only,
                   const char *toast, size_t tn)
{
    if (!r || n == 0) {
        buf_puts(out, "null");
        return 0;
    }
    if (!m->row_type) {
        buf_append(out, r, n);
        return 0;
    }
    if (r[0] != '{')
        return -1;
    relay_buf tmp = {0}, scratch = {0};
    int first = 1, rc = 0;
    size_t cursor = 0;
    buf_putc(out, '{');
    for (int c = 0; c < m->row_type->ncols && rc == 0; c++) {
        const relay_row_col *col = &m->row_type->cols[c];
        if (key_only && !col->key)
            continue;
        size_t off, len;
        int have = find_member(r, n, col->name, &cursor, &off, &len, &tmp);
        if (!have && !(toast && in_list(toast, tn, col->name, &tmp)))
            continue; /* not in this tuple (a key-only old row) */
        if (!first)
            buf_putc(out, ',');
        first = 0;
        buf_put_json_str(out, col->name, strlen(col->name));
        buf_putc(out, ':');
        if (have)
            rc = put_value(col->type_oid, col->typmod, r + off, len, out, &scratch);
        else
            put_unavailable(out, col->type_oid);
    }
    buf_putc(out, '}');
    buf_free(&tmp);
    buf_free(&scratch);
    return rc;
}

int fmt_debezium_key(const relay_msg *m, relay_buf *out)
{
    if (!m->row_type || !m->payload || m->op == OP_TRUNCATE || m->op == OP_EVENT)
        return 0;
    size_t n = msg_bytes(m->payload, m->payload_len), start = out->len;
    relay_buf tmp = {0};
    int any = 0;
    size_t cursor = 0;
    for (int c = 0; c < m->row_type->ncols && !any; c++) {
        size_t off, len;
        if (m->row_type->cols[c].key && find_member(m->payload, n, m->row_type->cols[c].name,
                                                    &cursor, &off, &len, &tmp))
            any = 1;
    }
    buf_free(&tmp);
    if (!any || put_row(out, m, m->payload, n, 1, NULL, 0) < 0) {
        out->len = start;
        return 0;
    }
    return 1;
}

/* ---- source ---------------------------------------------------------------- */

/* "X/Y" (hex) -> the 64-bit LSN; -1 when malformed. */
static int64_t lsn_number(const char *lsn)
{
    uint64_t part[2] = {0, 0};
    int k = 0, digits = 0;
    if (!lsn)
        return -1;
    for (const char *p = lsn; *p; p++) {
        int h = hexval(*p);
        if (*p == '/' && k == 0 && digits) {
            k = 1;
            digits = 0;
        } else if (h >= 0 && digits < 8) {
            part[k] = part[k] << 4 | (uint64_t)h;
            digits++;
        } else {
            return -1;
        }
    }
    return k == 1 && digits ? (int64_t)(part[0] << 32 | part[1]) : -1;
}

int fmt_source_member(const char *source_json, const char *name, char *buf, size_t buflen)
{
    if (!source_json)
        return 0;
    size_t n = strlen(source_json), pos = 0, kn, off, len, nl = strlen(name);
    const char *k;
    while (json_object_next(source_json, n, &pos, &k, &kn, &off, &len) == 1) {
        if (kn != nl || memcmp(k, name, nl) != 0)
            continue;
        const char *v = source_json + off;
        if (len >= 2 && v[0] == '"') { /* the relay's own strings: no escapes */
            v++;
            len -= 2;
        } else if (len == 4 && memcmp(v, "null", 4) == 0) {
            return 0;
        }
        if (len >= buflen || memchr(v, '\\', len))
            return 0;
        memcpy(buf, v, len);
        buf[len] = '\0';
        return 1;
    }
    return 0;
}

/* The members of a CDC event's source JSON the envelope needs, as raw
 * JSON slices (NULL when absent), found in one pass over the text. */
typedef struct cdc_src {
    const char *commit_time, *commit_lsn, *xid, *toast;
    size_t commit_time_n, commit_lsn_n, xid_n, toast_n;
} cdc_src;

static void scan_source(const char *source_json, cdc_src *c)
{
    memset(c, 0, sizeof *c);
    size_t n = source_json ? strlen(source_json) : 0, pos = 0, kn, off, len;
    const char *k;
    while (n && json_object_next(source_json, n, &pos, &k, &kn, &off, &len) == 1) {
        const char *v = source_json + off;
        int str = len >= 2 && v[0] == '"';
        if (kn == 11 && memcmp(k, "commit_time", 11) == 0 && str)
            c->commit_time = v + 1, c->commit_time_n = len - 2;
        else if (kn == 10 && memcmp(k, "commit_lsn", 10) == 0 && str)
            c->commit_lsn = v + 1, c->commit_lsn_n = len - 2;
        else if (kn == 3 && memcmp(k, "xid", 3) == 0 && all_digits(v, len))
            c->xid = v, c->xid_n = len;
        else if (kn == 15 && memcmp(k, "unchanged_toast", 15) == 0 && len && v[0] == '[')
            c->toast = v, c->toast_n = len;
    }
}

/* Unix microseconds of an RFC 3339 UTC time "YYYY-MM-DDTHH:MM:SS[.f]Z". */
static int parse_rfc3339(const char *s, int64_t *us_out)
{
    size_t n = strlen(s), used, u2;
    int64_t days, us;
    if (parse_date(s, n, &days, &used) < 0 || used >= n || s[used] != 'T' ||
        parse_time(s + used + 1, n - used - 1, &us, &u2) < 0 || strcmp(s + used + 1 + u2, "Z") != 0)
        return -1;
    *us_out = days * 86400000000LL + us;
    return 0;
}

static void put_ts(relay_buf *out, int64_t us)
{
    buf_puts(out, "\"ts_ms\":");
    buf_put_i64(out, us / 1000);
    buf_puts(out, ",\"ts_us\":");
    buf_put_i64(out, us);
    buf_puts(out, ",\"ts_ns\":");
    buf_put_i64(out, us * 1000);
}

static void put_str_or_null(relay_buf *out, const char *s)
{
    if (s)
        buf_put_json_str(out, s, strlen(s));
    else
        buf_puts(out, "null");
}

/* source: {version, connector, name, ts_*, snapshot, db, sequence, schema,
 * table, txId, lsn, xmin}, from the event and its source JSON (CDC). */
static void put_source(relay_buf *out, const relay_format_ctx *ctx, const relay_msg *m,
                       const cdc_src *src)
{
    const char *schema = m->schema, *table = m->table ? m->table : m->stream_table;
    int64_t ts = ctx->now_us, lsn = lsn_number(m->lsn), commit = -1, t;
    char v[64];
    if (src->commit_time && src->commit_time_n < sizeof v) {
        memcpy(v, src->commit_time, src->commit_time_n);
        v[src->commit_time_n] = '\0';
        if (parse_rfc3339(v, &t) == 0)
            ts = t;
    }
    if (src->commit_lsn && src->commit_lsn_n < sizeof v) {
        memcpy(v, src->commit_lsn, src->commit_lsn_n);
        v[src->commit_lsn_n] = '\0';
        commit = lsn_number(v);
    }
    if (m->op == OP_EVENT) /* message events: schema and table are "" */
        schema = table = "";
    buf_puts(out, "{\"version\":");
    buf_put_json_str(out, RELAY_VERSION, strlen(RELAY_VERSION));
    buf_puts(out, ",\"connector\":\"postgresql\",\"name\":");
    put_str_or_null(out, ctx->pipeline ? ctx->pipeline : "pgtrickle-relay");
    buf_putc(out, ',');
    put_ts(out, ts);
    /* SnapshotRecord: the connector writes the enum's name as a string. */
    buf_puts(out, m->op == OP_SNAPSHOT || m->is_full_refresh ? ",\"snapshot\":\"true\""
                                                             : ",\"snapshot\":\"false\"");
    buf_puts(out, ",\"db\":");
    put_str_or_null(out, ctx->db ? ctx->db : "");
    buf_puts(out, ",\"sequence\":");
    if (lsn >= 0) { /* the JSON string of ["<commit>","<lsn>"] */
        if (commit >= 0) {
            buf_puts(out, "\"[\\\"");
            buf_put_i64(out, commit);
            buf_puts(out, "\\\",\\\"");
        } else {
            buf_puts(out, "\"[null,\\\"");
        }
        buf_put_i64(out, lsn);
        buf_puts(out, "\\\"]\"");
    } else {
        buf_puts(out, "null");
    }
    buf_puts(out, ",\"schema\":");
    put_str_or_null(out, schema ? schema : "");
    buf_puts(out, ",\"table\":");
    put_str_or_null(out, table ? table : "");
    buf_puts(out, ",\"txId\":");
    if (src->xid)
        buf_append(out, src->xid, src->xid_n);
    else
        buf_puts(out, "null");
    buf_puts(out, ",\"lsn\":");
    if (lsn >= 0)
        buf_put_i64(out, lsn);
    else
        buf_puts(out, "null");
    buf_puts(out, ",\"xmin\":null}");
}

/* A logical message's content as Debezium's bytes (base64): the payload
 * holds it as text, or "\x<hex>" when it was not UTF-8 (cdc.c). */
static int put_message(relay_buf *out, const relay_msg *m)
{
    json_t *p = json_loadb(m->payload, msg_bytes(m->payload, m->payload_len), 0, NULL);
    const char *prefix = json_string_value(json_object_get(p, "prefix"));
    json_t *content = json_object_get(p, "content");
    if (!prefix || !json_is_string(content)) {
        json_decref(p);
        return -1;
    }
    const char *c = json_string_value(content);
    size_t cn = json_string_length(content);
    buf_puts(out, ",\"message\":{\"prefix\":");
    buf_put_json_str(out, prefix, strlen(prefix));
    buf_puts(out, ",\"content\":");
    int valid_utf8_text = !(cn >= 2 && c[0] == '\\' && c[1] == 'x');
    if (valid_utf8_text || put_bytea(out, c, cn) < 0)
        put_base64(out, (const unsigned char *)c, cn);
    buf_puts(out, "}");
    json_decref(p);
    return 0;
}

int fmt_debezium_encode(const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                        char *err, size_t errlen)
{
    const char *op;
    switch (m->op) {
    case OP_INSERT: op = "c"; break;
    case OP_UPDATE: op = "u"; break;
    case OP_DELETE: op = "d"; break;
    case OP_TRUNCATE: op = "t"; break;
    case OP_SNAPSHOT: op = "r"; break;
    case OP_EVENT:
        if (m->source_json && m->payload) {
            op = "m";
            break;
        }
        /* fall through */
    default:
        snprintf(err, errlen, "the Debezium change event has no op for a %s event",
                 relay_op_name(m->op));
        return -1;
    }
    cdc_src src;
    scan_source(m->source_json, &src);
    const char *toast = src.toast;
    size_t tn = src.toast_n;
    size_t pn = msg_bytes(m->payload, m->payload_len);
    const char *old = m->old_json;
    int rc = 0;
    buf_putc(out, '{');
    if (m->op != OP_EVENT && m->op != OP_TRUNCATE) {
        /* before: the old row (or its key) when PostgreSQL sent it; a delete's
         * payload is that old row. after: the new row. */
        buf_puts(out, "\"before\":");
        if (m->op == OP_DELETE)
            rc = put_row(out, m, m->payload, pn, 0, NULL, 0);
        else
            rc = put_row(out, m, old, old ? strlen(old) : 0, 0, NULL, 0);
        buf_puts(out, ",\"after\":");
        if (rc == 0 && m->op == OP_DELETE)
            buf_puts(out, "null");
        else if (rc == 0)
            rc = put_row(out, m, m->payload, pn, 0, toast, tn);
        buf_putc(out, ',');
    }
    buf_puts(out, "\"source\":");
    put_source(out, ctx, m, &src);
    buf_printf(out, ",\"op\":\"%s\",", op);
    put_ts(out, ctx->now_us);
    if (m->op == OP_EVENT)
        rc = rc < 0 ? rc : put_message(out, m);
    else if (m->op != OP_TRUNCATE)
        buf_puts(out, ",\"transaction\":null");
    buf_putc(out, '}');
    if (rc < 0)
        snprintf(err, errlen, "the event's row is not a JSON object");
    return rc;
}
