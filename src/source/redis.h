/*
 * source/redis.h - the reply decoder of the Redis Streams source (redis.c),
 * exposed so that a libFuzzer target (tests/fuzz/fuzz_redis_reply.c) and the
 * unit tests can call it on replies parsed by hiredis's own reader, without
 * a server. The source runs the same code on every XREADGROUP and
 * XAUTOCLAIM reply (RESP2, hiredis 0.14).
 */
#ifndef RELAY_SOURCE_REDIS_H
#define RELAY_SOURCE_REDIS_H

#include <hiredis.h>
#include <stddef.h>

#include "../message.h"

/*
 * The entries of an XREADGROUP reply for one stream: nil (BLOCK timed out:
 * *entries = NULL) or [[key, [entry, ...]]]. XREADGROUP ... STREAMS key 0
 * answers [[key, []]] when nothing is pending. Returns 0, or -1 with `err`
 * when the reply has another shape.
 */
int redis_read_entries(const redisReply *r, const redisReply **entries, char *err,
                       size_t errlen);

/*
 * The parts of an XAUTOCLAIM reply (Redis 7: [next cursor, [entry, ...],
 * [deleted id, ...]]; Redis 6.2 has no third element): the next cursor
 * (an entry id, NUL-terminated into `cursor`, at most cursorlen - 1 bytes) and the
 * entries. Returns 0, or -1 with `err` when the reply has another shape.
 */
int redis_autoclaim_entries(const redisReply *r, char *cursor, size_t cursorlen,
                            const redisReply **entries, char *err, size_t errlen);

/*
 * Map one stream entry, [id, [field, value, ...]], read from stream
 * `stream_key` to a new message appended to `b` (SPEC section 5, reverse):
 *   dedup_key     field dedup_key (non-empty), else "redis:{stream_key}:{id}"
 *   subject       field event_type, else the stream key (the inbox's
 *                 event_type fallback; a body's own event_type comes first)
 *   payload       field payload (payload_is_json from json_valid), else
 *                 every field as one JSON object of strings, in entry
 *                 order ({"f":"v",...}); bytes that are not UTF-8 are kept
 *                 as they are, so such a body is not JSON and the inbox
 *                 dead-letters it with its exact bytes
 *   aggregate_id  field aggregate_id; trace_id field traceparent
 *   source_name   `source_name` (borrowed: it must outlive the batch)
 *   op            OP_EVENT
 *   ack           the entry id (NUL-terminated, in b's arena)
 * Field values are copied with their lengths (they may hold NUL bytes). The
 * first of repeated field names counts.
 * Returns 1 (message added), 0 when the entry was deleted while pending
 * ([id, nil]: nothing added; *id_out is its id, in b's arena), or -1 with
 * `err` when `entry` is not an entry.
 */
int redis_entry_to_msg(const redisReply *entry, const char *stream_key,
                       const char *source_name, relay_batch *b, const char **id_out, char *err,
                       size_t errlen);

#endif
