/*
 * fuzz_pgoutput.c - the logical replication decoder (src/source/pgoutput.c):
 * CopyData framing, pgoutput messages, the relation cache, tuples to JSON and
 * the LSN/time helpers.
 *
 * Input: a stream of frames, each a 2-byte big-endian length and that many
 * bytes (the last frame takes what is left when its length runs past the
 * end). A frame starting with 'w' or 'k' is a CopyData message (XLogData's
 * payload is then decoded as pgoutput); any other frame is one pgoutput
 * message. A stream lets Relation messages reach the cache before the
 * Insert/Update/Delete messages that use them, as on a real connection.
 * The seeds are the messages captured from PostgreSQL 15 in
 * tests/unit/test_pgoutput.c (tests/fuzz/gen_seeds.py).
 *
 * Checks: every error names the message and an offset; decoded strings and
 * values lie inside the frame; the relation cache returns what was put;
 * tuple JSON is valid JSON (jansson) whenever the values PostgreSQL would
 * send are (UTF-8 text, JSON text in json/jsonb columns); LSNs round-trip
 * through pgo_lsn_format/pgo_lsn_parse.
 */
#include "fuzz.h"

#include "json_scan.h"
#include "source/pgoutput.h"

#define OID_JSON 114
#define OID_JSONB 3802

typedef struct state {
    pgo_decoder dec;
    pgo_relcache rels;
    relay_buf out, toast;
} state;

static int inside(const void *p, const uint8_t *buf, size_t len)
{
    return (const uint8_t *)p >= buf && (const uint8_t *)p <= buf + len;
}

static void check_lsn(uint64_t lsn)
{
    char txt[32];
    uint64_t back = 0;
    pgo_lsn_format(lsn, txt, sizeof txt);
    FUZZ_CHECK(pgo_lsn_parse(txt, &back) == 0 && back == lsn, "LSN %s does not round-trip", txt);
}

static void check_time(int64_t t)
{
    char txt[32];
    pgo_time_format(t, txt, sizeof txt);
    FUZZ_CHECK(strlen(txt) < sizeof txt - 1, "time text filled its buffer");
}

/* Would PostgreSQL send this tuple to a relation like `rel`? Then its JSON
 * must be valid. (Invalid UTF-8 or non-JSON json values are never sent.) */
static int plausible(const pgo_rel *rel, const pgo_tuple *t)
{
    for (uint16_t i = 0; i < rel->ncols; i++) {
        if (!fuzz_utf8_text(rel->cols[i].name, strlen(rel->cols[i].name)))
            return 0;
        const pgo_value *v = &t->cols[i];
        if (v->kind != 't')
            continue;
        if (!fuzz_utf8_text(v->data, v->len))
            return 0;
        uint32_t oid = rel->cols[i].type_oid;
        if ((oid == OID_JSON || oid == OID_JSONB) && (!json_valid(v->data, v->len) ||
                                                      fuzz_json_depth(v->data, v->len) > 500))
            return 0;
    }
    return 1;
}

static void tuple_json(state *st, const pgo_msg *m, const pgo_tuple *t, int key_only,
                       const uint8_t *frame, size_t len)
{
    char err[256];
    pgo_rel *rel = pgo_relcache_get(&st->rels, m->u.change.relid);
    for (uint16_t i = 0; i < t->ncols; i++) {
        const pgo_value *v = &t->cols[i];
        FUZZ_CHECK(v->kind == 'n' || v->kind == 'u' || v->kind == 't' || v->kind == 'b',
                   "column kind 0x%02x", (unsigned)(uint8_t)v->kind);
        if (v->kind == 't' || v->kind == 'b')
            FUZZ_CHECK(inside(v->data, frame, len) && inside(v->data + v->len, frame, len),
                       "value %u outside its message", (unsigned)i);
    }
    if (!rel)
        return;
    buf_clear(&st->out);
    buf_clear(&st->toast);
    err[0] = '\0';
    int rc = pgo_tuple_json(rel, t, key_only, &st->out, &st->toast, err, sizeof err);
    if (rc < 0) {
        FUZZ_CHECK(t->ncols != rel->ncols && err[0], "tuple_json failed: %s", err);
        return;
    }
    FUZZ_CHECK(t->ncols == rel->ncols, "a tuple of the wrong width was encoded");
    if (!plausible(rel, t))
        return;
    json_t *v = fuzz_jansson(st->out.data, st->out.len, JSON_ALLOW_NUL, NULL);
    if (!v) /* numbers jansson cannot hold are fine: check the grammar then */
        FUZZ_CHECK(json_valid(st->out.data, st->out.len), "tuple JSON is not JSON: %.300s",
                   st->out.data);
    FUZZ_CHECK(v == NULL || json_is_object(v), "tuple JSON is not an object");
    json_decref(v);
    if (st->toast.len) {
        relay_buf arr = {0};
        buf_putc(&arr, '[');
        buf_append(&arr, st->toast.data, st->toast.len);
        buf_putc(&arr, ']');
        json_t *a = fuzz_jansson(arr.data, arr.len, JSON_ALLOW_NUL, NULL);
        FUZZ_CHECK(a && json_is_array(a), "unchanged-TOAST list is not a JSON array body: %.300s",
                   st->toast.data);
        json_decref(a);
        buf_free(&arr);
    }
}

static void decode(state *st, const uint8_t *frame, size_t len)
{
    char err[256];
    pgo_msg m;
    err[0] = '\0';
    if (pgo_decode(&st->dec, frame, len, &m, err, sizeof err) < 0) {
        FUZZ_CHECK(err[0] && strstr(err, "offset"), "error without an offset: \"%s\"", err);
        return;
    }
    switch (m.type) {
    case 'B':
        check_lsn(m.u.begin.final_lsn);
        check_time(m.u.begin.commit_time);
        break;
    case 'C':
        check_lsn(m.u.commit.commit_lsn);
        check_lsn(m.u.commit.end_lsn);
        check_time(m.u.commit.commit_time);
        break;
    case 'O':
        FUZZ_CHECK(inside(m.u.origin.name, frame, len), "origin name outside its message");
        break;
    case 'R': {
        FUZZ_CHECK(inside(m.u.relation.nspname, frame, len) &&
                   inside(m.u.relation.relname, frame, len), "relation names outside the message");
        int changed = -1;
        pgo_rel *rel = pgo_relcache_put(&st->rels, &m, &changed);
        FUZZ_CHECK(rel && (changed == 0 || changed == 1), "relcache_put");
        FUZZ_CHECK(pgo_relcache_get(&st->rels, m.u.relation.oid) == rel, "relcache_get");
        FUZZ_CHECK(rel->ncols == m.u.relation.ncols, "relcache column count");
        for (uint16_t i = 0; i < rel->ncols; i++)
            FUZZ_CHECK(strcmp(rel->cols[i].name, m.u.relation.cols[i].name) == 0, "column name");
        int again = -1;
        FUZZ_CHECK(pgo_relcache_put(&st->rels, &m, &again) == rel && again == 0,
                   "the same Relation message changed the cache");
        break;
    }
    case 'I':
    case 'U':
    case 'D':
        if (m.u.change.old_kind)
            tuple_json(st, &m, &m.u.change.old, m.u.change.old_kind == 'K', frame, len);
        if (m.type != 'D')
            tuple_json(st, &m, &m.u.change.new_, 0, frame, len);
        break;
    case 'T':
        FUZZ_CHECK((size_t)m.u.truncate.nrels * 4 <= len, "truncate lists more relations than fit");
        break;
    case 'M':
        FUZZ_CHECK(inside(m.u.message.content, frame, len) &&
                   inside(m.u.message.content + m.u.message.len, frame, len),
                   "logical message content outside its message");
        break;
    case 'Y':
        break;
    default:
        FUZZ_CHECK(0, "decoded an unknown message type 0x%02x", (unsigned)(uint8_t)m.type);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    state st = {0};
    const uint8_t *p = data, *end = data + size;
    while (end - p >= 2) {
        size_t len = ((size_t)p[0] << 8) | p[1];
        p += 2;
        if (len > (size_t)(end - p))
            len = (size_t)(end - p);
        /* An exact-size copy: ASan flags any read past the frame. */
        uint8_t *frame = malloc(len ? len : 1);
        if (len)
            memcpy(frame, p, len);
        p += len;
        if (len && (frame[0] == 'w' || frame[0] == 'k')) {
            pgo_copydata cd;
            char err[256] = "";
            if (pgo_parse_copydata(frame, len, &cd, err, sizeof err) == 0) {
                if (cd.kind == 'w') {
                    FUZZ_CHECK(cd.len > 0 && cd.data + cd.len == frame + len, "XLogData bounds");
                    decode(&st, cd.data, cd.len);
                }
            } else {
                FUZZ_CHECK(strstr(err, "offset"), "CopyData error without an offset: \"%s\"", err);
            }
        } else {
            decode(&st, frame, len);
        }
        free(frame);
    }
    uint8_t status[34];
    pgo_standby_status(status, size, (int64_t)size, 1);
    pgo_decoder_free(&st.dec);
    pgo_relcache_free(&st.rels);
    buf_free(&st.out);
    buf_free(&st.toast);
    return 0;
}
