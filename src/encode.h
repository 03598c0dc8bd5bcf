/*
 * encode.h - wire formats of a message body, chosen per sink with the
 * "format" key (SPEC section 5):
 *   native   (default) the JSON envelope of msg_encode_native()
 *   msgpack  seed 003's CDC event shape in MessagePack:
 *            {"table","operation","relation_id","lsn","columns":[{"name","value"}],
 *             "dedup_key"}, and for CDC events also "old" (columns shape, or
 *            nil) and "unchanged_toast" (array of column names)
 * Sinks never format bodies themselves: a sink that sets relay_sink.encode
 * gets every message's body encoded once by the worker (msg->body), which
 * also dead-letters an event that cannot be encoded.
 */
#ifndef RELAY_ENCODE_H
#define RELAY_ENCODE_H

#include <jansson.h>
#include <stddef.h>

#include "buf.h"
#include "message.h"

typedef enum { RELAY_FORMAT_NATIVE = 0, RELAY_FORMAT_MSGPACK } relay_format;

/* Read `<path>.format` from a sink config: "native" (default) or "msgpack".
 * Returns 0, or -1 with err naming the key. */
int relay_format_from_cfg(const json_t *cfg, const char *path, relay_format *out, char *err,
                          size_t errlen);

/* Append the body of `m` in format `f` to `out`. Returns 0, or -1 when the
 * event cannot be represented in that format (err says why; `out` is then
 * restored to its length on entry): the worker dead-letters such an event
 * rather than emit a wrong or empty body. */
int relay_encode(relay_format f, const relay_msg *m, relay_buf *out, char *err, size_t errlen);

/* The format's config name: "native" or "msgpack"; static storage. */
const char *relay_format_name(relay_format f);

/* MIME type of a format: "application/json" or "application/msgpack". */
const char *relay_format_content_type(relay_format f);

/* Encode `m` in seed 003's MessagePack shape (appended to `out`).
 * operation is the upper-case op ("INSERT", "SNAPSHOT", ...); columns are
 * the payload object's keys in order (a non-object payload becomes one
 * column named "value"); relation_id is 0 and lsn nil outside CDC. A CDC
 * event (m->source_json set) adds "old" and "unchanged_toast".
 * JSON values are transcoded from the text, not through a tree: integers
 * that fit 64 bits (signed, or unsigned) are integers, a number with a
 * fraction or exponent that a double holds to its last digit is a float
 * 64, any other number (2^64, 1e400, 0.1000000000000000000001) the string
 * of its JSON text; object keys keep their order (and a json value's
 * duplicates). Returns 0, or -1 with err (malformed JSON, an unpaired
 * surrogate escape, nesting deeper than 1000 levels): never an empty or
 * partial event. */
int msg_encode_msgpack(const relay_msg *m, relay_buf *out, char *err, size_t errlen);

#endif
