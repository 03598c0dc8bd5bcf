/*
 * encode.h - wire formats of a message body, chosen per sink with the
 * "format" key (SPEC section 5):
 *   native   (default) the JSON envelope of msg_encode_native()
 *   msgpack  seed 003's CDC event shape in MessagePack:
 *            {"table","operation","relation_id","lsn","columns":[{"name","value"}],
 *             "dedup_key"}, and for CDC events also "old" (columns shape, or
 *            nil) and "unchanged_toast" (array of column names)
 *   debezium the Debezium PostgreSQL connector's change event value
 *            (format_debezium.c; docs/formats.md)
 *   cloudevents  a CloudEvents 1.0 event (format_cloudevents.c): the whole
 *            event as JSON in structured mode, only its data in binary
 *            mode (the sink then carries the attributes in headers)
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

typedef enum {
    RELAY_FORMAT_NATIVE = 0,
    RELAY_FORMAT_MSGPACK,
    RELAY_FORMAT_DEBEZIUM,
    RELAY_FORMAT_CLOUDEVENTS,
} relay_format;

/* One entry of a sink's subject_overrides map: events whose op name (or
 * payload field "event_type") is `match` get `tmpl` instead of the sink's
 * subject/topic template. */
typedef struct relay_subject_override {
    char *match;
    char *tmpl;
} relay_subject_override;

/* Format settings of a sink besides the format itself (sink keys):
 *   cloudevents_mode     "structured" (default) | "binary"
 *   cloudevents_source   the CloudEvents "source" attribute
 *                        (default "/pgtrickle-relay/<pipeline>")
 *   cloudevents_type     template of the "type" attribute, subject
 *                        template variables (default "io.pgtrickle.{op}")
 *   subject_overrides    {"<op or event_type>": "<template>", ...}
 *   tombstones           Debezium format, Kafka sink: a (key, null) record
 *                        after each delete (default true)
 * Owned strings; relay_format_opts_free. */
typedef struct relay_format_opts {
    int ce_binary;
    char *ce_source;
    char *ce_type;
    relay_subject_override *overrides;
    size_t noverrides;
    int tombstones;
} relay_format_opts;

/* The sink config keys relay_format_opts_from_cfg reads, for a sink's list
 * of known keys. */
#define RELAY_FORMAT_KEYS \
    "cloudevents_mode", "cloudevents_source", "cloudevents_type", "subject_overrides", "tombstones"

/* Read `<path>.format` from a sink config: "native" (default), "msgpack",
 * "debezium" or "cloudevents". Returns 0, or -1 with err naming the key. */
int relay_format_from_cfg(const json_t *cfg, const char *path, relay_format *out, char *err,
                          size_t errlen);

/* Read the format settings above for a sink whose format is `f`; template
 * keys are checked with subject_template_check(). `cloudevents_mode` with
 * another format than cloudevents is an error, and so is "binary" when the
 * sink has no protocol binding for it (`binary_ok` 0: file sink). Returns
 * 0, or -1 with err naming the key; *opts is then freed. */
int relay_format_opts_from_cfg(const json_t *cfg, const char *path, relay_format f, int binary_ok,
                               relay_format_opts *opts, char *err, size_t errlen);
void relay_format_opts_free(relay_format_opts *opts);

/* The subject template for `m`: the override matching the payload's
 * "event_type" field, else the one matching its op, else `dflt`. */
const char *relay_subject_template_for(const relay_format_opts *opts, const relay_msg *m,
                                       const char *dflt);

/* What an encoder knows besides the event. */
typedef struct relay_format_ctx {
    const char *pipeline;   /* Debezium source.name; CloudEvents default source */
    const char *db;         /* Debezium source.db (the relay's database) */
    int64_t now_us;         /* processing time, Unix epoch microseconds */
    const relay_format_opts *opts; /* NULL: the defaults */
} relay_format_ctx;

/* Append the body of `m` in format `f` to `out`. Returns 0, or -1 when the
 * event cannot be represented in that format (err says why; `out` is then
 * restored to its length on entry): the worker dead-letters such an event
 * rather than emit a wrong or empty body. */
int relay_encode(relay_format f, const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                 char *err, size_t errlen);

/* Append the row key of `m` in format `f` (the replica-identity columns as
 * a JSON object, values as the format writes them: Debezium's record key
 * for debezium). Returns 1 when written, 0 when the event has no row key. */
int relay_format_key(relay_format f, const relay_msg *m, relay_buf *out);

/* The format's config name ("native", "msgpack", "debezium", "cloudevents");
 * static storage. */
const char *relay_format_name(relay_format f);

/* MIME type of a body: "application/json", "application/msgpack", or for
 * cloudevents "application/cloudevents+json" in structured mode
 * (CloudEvents HTTP binding 3.2.1) and "application/json" (the data's
 * type) in binary mode. `opts` may be NULL. */
const char *relay_format_content_type(relay_format f, const relay_format_opts *opts);

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
