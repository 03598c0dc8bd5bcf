/*
 * outbox.h - the outbox payload cutter of the outbox source (outbox.c),
 * exposed so that a libFuzzer target (tests/fuzz/fuzz_outbox.c) can call it
 * without a database. The source itself calls the same code for every row.
 */
#ifndef RELAY_SOURCE_OUTBOX_H
#define RELAY_SOURCE_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "../message.h"

/*
 * Cut one inline outbox row into events appended to `b` (SPEC section 6;
 * the shapes are listed at the top of outbox.c):
 *   payload NULL                          one OP_REFRESH event with the counts
 *   [ {...}, ... ]                        one OP_SNAPSHOT event per element,
 *                                         is_full_refresh
 *   {"v":1,"inserted":[..],"deleted":[..],"full_refresh"?,"claim_check"?,
 *    "refresh_id"?}                       inserted rows, then deleted rows
 *                                         (OP_SNAPSHOT when full_refresh), or
 *                                         one OP_REFRESH event when both are empty
 * Anything else becomes one event in state MSG_REJECTED (error says why,
 * payload is a copy of `payload`): the worker dead-letters it.
 *
 *   payload       the row's payload::text, NUL-terminated (PQgetvalue), plen
 *                 bytes; NULL for SQL NULL. Expected to be JSON that
 *                 PostgreSQL produced: other bytes never crash the cutter,
 *                 but are only guaranteed to be rejected when they are not
 *                 even well-nested (json_span).
 *   outbox_table  prefix of the dedup keys "{outbox_table}:{id}:{index}"
 *   stream_table  stream_table / table of the events
 *   id            the row's outbox id; refresh_id may be NULL
 *   ins, del      inserted_count / deleted_count (the NULL payload's counts)
 *   claim_check   is_claim_check of the row
 * Event strings live in b's arena, except stream_table, outbox_table and
 * refresh_id, which are borrowed: they must outlive the batch.
 * Returns 1 when the row is a claim-check row (nothing is appended; the
 * source streams its delta rows instead), else 0. *full_refresh is set to
 * the payload's full_refresh flag.
 */
int outbox_decode_payload(relay_batch *b, const char *outbox_table, const char *stream_table,
                          int64_t id, const char *refresh_id, const char *payload, size_t plen,
                          int64_t ins, int64_t del, int claim_check, int *full_refresh);

#endif
