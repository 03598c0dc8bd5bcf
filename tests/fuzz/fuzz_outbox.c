/*
 * fuzz_outbox.c - the outbox payload cutter (outbox_decode_payload,
 * src/source/outbox.h): how one outbox row's payload::text becomes events.
 *
 * Input: the payload text. A first byte 0x01..0x07 is not payload but flags:
 *   1  the row is a claim-check row (is_claim_check)
 *   2  the payload is SQL NULL (the rest of the input is ignored)
 *   4  the row has a refresh_id column value ("r-row")
 * The payload ends at its first NUL byte, as PostgreSQL text never holds one.
 *
 * Checks: the cutter never crashes; a claim-check row emits nothing; a
 * rejected payload is exactly one REJECTED event carrying the payload and a
 * reason; dedup keys are {outbox_table}:{id}:{0,1,2...}; every event of a
 * valid JSON payload is valid JSON; and for a valid payload (nested at most
 * 255 deep, distinct keys without escapes, numbers jansson can hold) the
 * events are exactly those of a reference cutter written with jansson
 * (same order, ops, flags and values).
 */
#include <inttypes.h>

#include "fuzz.h"

#include "json_scan.h"
#include "source/outbox.h"

#define ID 42
#define INS 3
#define DEL 1

/* One expected event of the reference cutter. */
typedef struct want {
    relay_op op;
    int full;
    json_t *value; /* borrowed from the tree; NULL: the counts object */
} want;

static int no_escaped_or_duplicate_keys(const char *p, size_t n, const json_t *obj)
{
    size_t pos = 0, off, len, kl, members = 0;
    const char *k;
    while (json_object_next(p, n, &pos, &k, &kl, &off, &len) == 1) {
        if (memchr(k, '\\', kl))
            return 0;
        members++;
    }
    return members == json_object_size(obj);
}

/* The reference: events expected for the valid payload tree `t` (NULL: SQL
 * NULL). Returns -1 when it must be rejected, 1 when it is a claim-check
 * row, 0 with want[0..*n) otherwise; -2 when the reference does not apply. */
static int reference(const json_t *t, const char *p, size_t n, int claim_check, want **w,
                     size_t *nw)
{
    *w = NULL;
    *nw = 0;
    if (!t) {
        if (claim_check)
            return 1;
        *w = calloc(1, sizeof **w);
        (*w)[0] = (want){OP_REFRESH, 0, NULL};
        *nw = 1;
        return 0;
    }
    if (json_is_array(t)) {
        if (claim_check)
            return 1;
        *nw = json_array_size(t);
        *w = calloc(*nw + 1, sizeof **w);
        for (size_t i = 0; i < *nw; i++)
            (*w)[i] = (want){OP_SNAPSHOT, 1, json_array_get(t, i)};
        return 0;
    }
    if (!json_is_object(t))
        return -1;
    if (!no_escaped_or_duplicate_keys(p, n, t))
        return -2;
    json_t *v = json_object_get(t, "v");
    if (!json_is_integer(v) || json_integer_value(v) != 1)
        return -1;
    int full = json_is_true(json_object_get(t, "full_refresh"));
    if (claim_check || json_is_true(json_object_get(t, "claim_check")))
        return 1;
    json_t *ins = json_object_get(t, "inserted"), *del = json_object_get(t, "deleted");
    if ((ins && !json_is_array(ins)) || (del && !json_is_array(del)))
        return -1;
    size_t ni = json_array_size(ins), nd = json_array_size(del);
    *w = calloc(ni + nd + 1, sizeof **w);
    for (size_t i = 0; i < ni; i++)
        (*w)[(*nw)++] = (want){full ? OP_SNAPSHOT : OP_INSERT, full, json_array_get(ins, i)};
    for (size_t i = 0; i < nd; i++)
        (*w)[(*nw)++] = (want){OP_DELETE, full, json_array_get(del, i)};
    if (*nw == 0)
        (*w)[(*nw)++] = (want){OP_REFRESH, full, NULL};
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int flags = 0;
    if (size && data[0] >= 1 && data[0] <= 7) {
        flags = data[0];
        data++;
        size--;
    }
    int claim_check = flags & 1;
    char *text = fuzz_strndup(data, size);
    const char *payload = (flags & 2) ? NULL : text;
    size_t plen = payload ? strlen(payload) : 0;
    const char *row_refresh_id = (flags & 4) ? "r-row" : NULL;

    relay_batch b = {0};
    int full = -1;
    int rc = outbox_decode_payload(&b, "outbox_fuzz", "fuzz", ID, row_refresh_id, payload, plen,
                                   INS, DEL, claim_check, &full);
    FUZZ_CHECK(rc == 0 || rc == 1, "rc %d", rc);
    FUZZ_CHECK(full == 0 || full == 1, "full_refresh %d", full);
    if (rc == 1)
        FUZZ_CHECK(b.n == 0, "a claim-check row emitted %zu events", b.n);

    int rejected = 0;
    for (size_t i = 0; i < b.n; i++) {
        const relay_msg *m = &b.msgs[i];
        char key[64];
        snprintf(key, sizeof key, "outbox_fuzz:%d:%zu", ID, i);
        FUZZ_CHECK(m->dedup_key && strcmp(m->dedup_key, key) == 0, "dedup key %s, want %s",
                   m->dedup_key ? m->dedup_key : "(null)", key);
        FUZZ_CHECK(m->outbox_id == ID && m->stream_table && strcmp(m->stream_table, "fuzz") == 0,
                   "outbox_id/stream_table");
        if (m->state == MSG_REJECTED) {
            rejected = 1;
            FUZZ_CHECK(b.n == 1, "a rejected row has %zu events", b.n);
            FUZZ_CHECK(m->error && *m->error, "rejected without a reason");
            FUZZ_CHECK(payload && m->payload && strcmp(m->payload, payload) == 0 &&
                       m->payload_len == plen, "the dead letter does not carry the payload");
            continue;
        }
        FUZZ_CHECK(m->state == MSG_PENDING, "state %d", (int)m->state);
        FUZZ_CHECK(m->payload && m->payload_len == strlen(m->payload), "event payload length");
        if (row_refresh_id)
            FUZZ_CHECK(m->refresh_id == row_refresh_id, "the row's refresh_id was replaced");
    }

    int valid = payload && json_valid(payload, plen);
    if (valid && !rejected)
        for (size_t i = 0; i < b.n; i++)
            FUZZ_CHECK(json_valid(b.msgs[i].payload, b.msgs[i].payload_len),
                       "event %zu of a valid payload is not JSON: %.300s", i, b.msgs[i].payload);

    /* Differential check against the jansson reference. */
    json_t *tree = valid ? fuzz_jansson(payload, plen, 0, NULL) : NULL;
    if (!payload || (tree && fuzz_json_depth(payload, plen) < 256)) {
        size_t a = payload ? json_skip_ws(payload, plen, 0) : 0;
        want *w;
        size_t nw;
        int ref = reference(tree, payload ? payload + a : NULL, plen - a, claim_check, &w, &nw);
        if (ref == -1) {
            FUZZ_CHECK(rc == 0 && rejected, "the reference rejects, the cutter did not: %.300s",
                       payload);
        } else if (ref == 1) {
            FUZZ_CHECK(rc == 1, "the reference sees a claim-check row, the cutter does not");
        } else if (ref == 0) {
            FUZZ_CHECK(rc == 0 && !rejected, "the cutter rejected a valid payload (%s): %.300s",
                       b.n ? b.msgs[0].error : "", payload);
            FUZZ_CHECK(b.n == nw, "%zu events, the reference has %zu", b.n, nw);
            for (size_t i = 0; i < nw; i++) {
                const relay_msg *m = &b.msgs[i];
                FUZZ_CHECK(m->op == w[i].op && m->is_full_refresh == w[i].full,
                           "event %zu: op %d full %d, want op %d full %d", i, (int)m->op,
                           m->is_full_refresh, (int)w[i].op, w[i].full);
                if (w[i].value) {
                    json_t *got = fuzz_jansson(m->payload, m->payload_len, 0, NULL);
                    FUZZ_CHECK(got && json_equal(got, w[i].value), "event %zu payload %.300s", i,
                               m->payload);
                    json_decref(got);
                } else {
                    char counts[96];
                    snprintf(counts, sizeof counts, "{\"inserted_count\":%d,\"deleted_count\":%d}",
                             INS, DEL);
                    FUZZ_CHECK(strcmp(m->payload, counts) == 0, "refresh payload %s", m->payload);
                }
            }
        }
        free(w);
    }
    json_decref(tree);
    batch_free(&b);
    free(text);
    return 0;
}
