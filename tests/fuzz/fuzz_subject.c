/*
 * fuzz_subject.c - subject templates (src/message.c: subject_template_check,
 * subject_render).
 *
 * Input: lines (separated by '\n'):
 *   1 the template        2 stream_table   3 schema   4 table
 *   5 refresh_id          6 the op name    7 outbox_id (decimal)
 *   8 the row key ({key})
 * A missing line leaves its field NULL (outbox_id -1).
 *
 * Checks: subject_template_check accepts exactly the templates a small
 * reference parser accepts (known {variables}, "{{" "}}" escapes, no stray
 * braces, not empty), and then names the offending spot in its error; the
 * rendering equals the reference rendering, in which every substituted value
 * is one NATS token of [A-Za-z0-9_-] and %XX escapes ("_" when empty).
 * Rendering an unchecked template must not crash either.
 */
#include "fuzz.h"

#include "message.h"

static const char *const vars[] = {"stream_table", "op", "outbox_id", "refresh_id", "schema",
                                   "table", "key", NULL};

static int var_of(const char *p, size_t n)
{
    for (int i = 0; vars[i]; i++)
        if (strlen(vars[i]) == n && memcmp(vars[i], p, n) == 0)
            return i;
    return -1;
}

/* Reference check: 0 valid, -1 invalid. */
static int ref_check(const char *t)
{
    if (!*t)
        return -1;
    for (size_t i = 0; t[i]; i++) {
        if ((t[i] == '{' && t[i + 1] == '{') || (t[i] == '}' && t[i + 1] == '}')) {
            i++;
            continue;
        }
        if (t[i] == '}')
            return -1;
        if (t[i] == '{') {
            const char *e = strchr(t + i, '}');
            if (!e || var_of(t + i + 1, (size_t)(e - t - i - 1)) < 0)
                return -1;
            i = (size_t)(e - t);
        }
    }
    return 0;
}

static void ref_token(relay_buf *out, const char *v)
{
    if (!v || !*v) {
        buf_putc(out, '_');
        return;
    }
    for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
            *p == '_' || *p == '-')
            buf_putc(out, (char)*p);
        else
            buf_printf(out, "%%%02X", *p);
    }
}

/* Reference rendering of a valid template. */
static void ref_render(const char *t, const relay_msg *m, relay_buf *out)
{
    char num[32];
    for (size_t i = 0; t[i]; i++) {
        if ((t[i] == '{' && t[i + 1] == '{') || (t[i] == '}' && t[i + 1] == '}')) {
            buf_putc(out, t[i]);
            i++;
            continue;
        }
        if (t[i] != '{') {
            buf_putc(out, t[i]);
            continue;
        }
        const char *e = strchr(t + i, '}');
        switch (var_of(t + i + 1, (size_t)(e - t - i - 1))) {
        case 0: ref_token(out, m->stream_table ? m->stream_table : m->table); break;
        case 1: ref_token(out, relay_op_name(m->op)); break;
        case 2:
            if (m->outbox_id >= 0) {
                snprintf(num, sizeof num, "%lld", (long long)m->outbox_id);
                ref_token(out, num);
            } else {
                ref_token(out, NULL);
            }
            break;
        case 3: ref_token(out, m->refresh_id); break;
        case 4: ref_token(out, m->schema); break;
        case 5: ref_token(out, m->table ? m->table : m->stream_table); break;
        case 6: ref_token(out, m->key); break;
        }
        i = (size_t)(e - t);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *p = data, *end = data + size;
    char *f[8] = {0};
    for (int i = 0; i < 8 && (i == 0 || p < end); i++)
        f[i] = fuzz_field(&p, end, '\n');

    relay_msg m = {0};
    m.dedup_key = "k";
    m.stream_table = f[1];
    m.schema = f[2];
    m.table = f[3];
    m.refresh_id = f[4];
    m.op = relay_op_parse(f[5]);
    m.key = f[7];
    m.outbox_id = -1;
    if (f[6]) {
        char *e;
        long long v = strtoll(f[6], &e, 10);
        if (e != f[6] && v >= 0)
            m.outbox_id = v;
    }

    char err[512] = "";
    int rc = subject_template_check(f[0], err, sizeof err);
    int ref = ref_check(f[0]);
    FUZZ_CHECK(rc == ref, "subject_template_check = %d, reference %d, template \"%.200s\"", rc, ref,
               f[0]);
    if (rc < 0)
        FUZZ_CHECK(err[0] && strlen(err) < sizeof err, "no error text");

    relay_buf got = {0};
    subject_render(f[0], &m, &got); /* unchecked templates must not crash either */
    if (rc == 0) {
        relay_buf want = {0};
        ref_render(f[0], &m, &want);
        FUZZ_CHECK(got.len == want.len && memcmp(got.data ? got.data : "", want.data ? want.data : "",
                                                 got.len) == 0,
                   "rendered \"%.200s\", reference \"%.200s\"", got.data ? got.data : "",
                   want.data ? want.data : "");
        buf_free(&want);
    }
    buf_free(&got);
    for (int i = 0; i < 8; i++)
        free(f[i]);
    return 0;
}
