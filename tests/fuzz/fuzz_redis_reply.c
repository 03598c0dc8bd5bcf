/*
 * fuzz_redis_reply.c - the Redis Streams source's reply decoder
 * (src/source/redis.h): RESP2 bytes, parsed by hiredis's own reader, to
 * inbox messages.
 *
 * Input: RESP2 bytes (one or more replies; see huge_array() for the inputs
 * skipped). Each complete reply is decoded
 * the three ways the source does: as an XREADGROUP reply, as an XAUTOCLAIM
 * reply, and as one entry; every entry list found is mapped entry by entry.
 *
 * Checks:
 *   - a reply of another shape is refused with an error text, never a crash;
 *   - every message has a non-empty dedup key: the entry's dedup_key field
 *     when it is non-empty (same bytes, same length), else exactly
 *     "redis:<stream>:<entry id>";
 *   - the ack handle is the entry id, and so is *id_out;
 *   - the body is the payload field's bytes when the entry has one, else a
 *     '{'...'}' object; payload_is_json agrees with json_valid();
 *   - the subject is the event_type field's bytes, else the stream key;
 *   - a deleted entry ([id, nil]) adds no message and reports its id.
 */
#include "fuzz.h"

#include <hiredis.h>

#include "json_scan.h"
#include "source/redis.h"

#define STREAM "fuzz:stream"

static const redisReply *field(const redisReply *fv, const char *name)
{
    for (size_t i = 0; i + 1 < fv->elements; i += 2)
        if (fv->element[i]->len == strlen(name) && memcmp(fv->element[i]->str, name, strlen(name)) == 0)
            return fv->element[i + 1];
    return NULL;
}

static void check_entry(const redisReply *e)
{
    relay_batch b = {0};
    const char *id = NULL;
    char err[256] = "";
    int rc = redis_entry_to_msg(e, STREAM, "redis:" STREAM, &b, &id, err, sizeof err);
    if (rc < 0) {
        FUZZ_CHECK(err[0] != '\0', "an entry refused without a reason");
        FUZZ_CHECK(b.n == 0, "a refused entry added a message");
        batch_free(&b);
        return;
    }
    FUZZ_CHECK(id && strlen(id) == e->element[0]->len && memcmp(id, e->element[0]->str, strlen(id)) == 0,
               "id_out is not the entry id");
    if (rc == 0) {
        FUZZ_CHECK(b.n == 0, "a deleted entry added a message");
        FUZZ_CHECK(e->element[1]->type == REDIS_REPLY_NIL, "an entry with fields taken as deleted");
        batch_free(&b);
        return;
    }
    FUZZ_CHECK(rc == 1 && b.n == 1, "one entry, one message");
    const relay_msg *m = &b.msgs[0];
    const redisReply *fv = e->element[1];
    const redisReply *dk = field(fv, "dedup_key"), *pl = field(fv, "payload"),
                     *et = field(fv, "event_type");
    size_t klen = msg_bytes(m->dedup_key, m->dedup_key_len);
    FUZZ_CHECK(m->dedup_key && klen > 0, "an empty dedup key");
    if (dk && dk->len > 0) {
        FUZZ_CHECK(klen == dk->len && memcmp(m->dedup_key, dk->str, klen) == 0,
                   "the dedup key is not the dedup_key field");
    } else {
        char want[128];
        snprintf(want, sizeof want, "redis:%s:%s", STREAM, id);
        FUZZ_CHECK(strcmp(m->dedup_key, want) == 0, "fallback key %s, expected %s", m->dedup_key, want);
    }
    FUZZ_CHECK(m->ack && strcmp(m->ack, id) == 0, "the ack handle is not the entry id");
    FUZZ_CHECK(m->payload, "no body");
    if (pl)
        FUZZ_CHECK(m->payload_len == pl->len && memcmp(m->payload, pl->str, pl->len) == 0,
                   "the body is not the payload field");
    else
        FUZZ_CHECK(m->payload_len >= 2 && m->payload[0] == '{' && m->payload[m->payload_len - 1] == '}',
                   "an all-fields body that is not an object");
    FUZZ_CHECK(m->payload_is_json == json_valid(m->payload, m->payload_len), "payload_is_json disagrees");
    if (et)
        FUZZ_CHECK(msg_bytes(m->subject, m->subject_len) == et->len &&
                       memcmp(m->subject, et->str, et->len) == 0,
                   "the subject is not the event_type field");
    else
        FUZZ_CHECK(strcmp(m->subject, STREAM) == 0, "the subject is not the stream key");
    FUZZ_CHECK(m->op == OP_EVENT, "op is not event");
    batch_free(&b);
}

static void check_entries(const redisReply *entries)
{
    for (size_t i = 0; i < entries->elements; i++)
        check_entry(entries->element[i]);
}

static void check_reply(const redisReply *r)
{
    const redisReply *entries;
    char err[256] = "", cursor[64];
    if (redis_read_entries(r, &entries, err, sizeof err) == 0) {
        if (entries)
            check_entries(entries);
        else
            FUZZ_CHECK(r->type == REDIS_REPLY_NIL, "no entries from a non-nil reply");
    } else {
        FUZZ_CHECK(err[0], "an XREADGROUP reply refused without a reason");
    }
    err[0] = '\0';
    if (redis_autoclaim_entries(r, cursor, sizeof cursor, &entries, err, sizeof err) == 0) {
        FUZZ_CHECK(entries && strlen(cursor) == r->element[0]->len, "XAUTOCLAIM cursor");
        check_entries(entries);
    } else {
        FUZZ_CHECK(err[0], "an XAUTOCLAIM reply refused without a reason");
    }
    check_entry(r);
}

/* hiredis 0.14's reader allocates an array of the declared element count
 * before reading any element (1.x caps it with maxelements), so "*2000000000"
 * is an out-of-memory in the library, not in the decoder: inputs declaring
 * an array of more than 6 digits are skipped. */
static int huge_array(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i < size; i++) {
        if (data[i] != '*')
            continue;
        size_t d = i + 1;
        while (d < size && data[d] >= '0' && data[d] <= '9')
            d++;
        if (d - i - 1 > 6)
            return 1;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (huge_array(data, size))
        return 0;
    redisReader *rd = redisReaderCreate();
    if (redisReaderFeed(rd, (const char *)data, size) == REDIS_OK) {
        for (int i = 0; i < 16; i++) {
            void *reply = NULL;
            if (redisReaderGetReply(rd, &reply) != REDIS_OK || !reply)
                break;
            check_reply(reply);
            freeReplyObject(reply);
        }
    }
    redisReaderFree(rd);
    return 0;
}
