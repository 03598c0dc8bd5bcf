/*
 * formats.h - the event formats the ecosystem reads (SPEC section 5,
 * docs/formats.md): the Debezium PostgreSQL connector's change event
 * (format_debezium.c) and CloudEvents 1.0 (format_cloudevents.c).
 *
 * Sinks and the worker reach the encoders through encode.h
 * (relay_encode, relay_format_key); the declarations here are for those
 * two files, the sinks that carry CloudEvents attributes in protocol
 * headers (binary mode), and the webhook receiver that reads them.
 */
#ifndef RELAY_FORMATS_H
#define RELAY_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "encode.h"
#include "message.h"

/* ---- Debezium ------------------------------------------------------------ */

/* The placeholder Debezium writes for an unchanged TOASTed column
 * (connector property unavailable.value.placeholder, its default). */
#define DBZ_UNAVAILABLE "__debezium_unavailable_value"

/* Append the Debezium change event value of `m` (schemas.enable=false):
 * {"before","after","source","op","ts_ms","ts_us","ts_ns","transaction"},
 * or for a CDC logical message {"source","op":"m","ts_*","message"}.
 * Debezium documentation, PostgreSQL connector, "Data change events"
 * (create / update / delete / truncate / message events) and "Data type
 * mappings". Returns 0, or -1 with err for an event Debezium has no
 * representation for (an outbox refresh header without rows, a reverse
 * event) or a malformed payload. */
int fmt_debezium_encode(const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                        char *err, size_t errlen);

/* Append the Debezium record key of `m`: the replica-identity columns as a
 * JSON object, values mapped as in the value. Returns 1, or 0 when the
 * event has no key (a truncate: "The message key is null in this case"). */
int fmt_debezium_key(const relay_msg *m, relay_buf *out);

/* Copy the string (or number) member `name` of a CDC event's source JSON
 * (source.commit_time, .commit_lsn, .xid) into buf, NUL-terminated.
 * Returns 1, or 0 when it is absent, null, escaped or longer than buflen-1.
 * A scan of the text: no parse per event. */
int fmt_source_member(const char *source_json, const char *name, char *buf, size_t buflen);

/* Append the Debezium value of one column: `v[0..n)` is the column's value
 * as the native payload holds it (pgoutput.h, "values to JSON"). Exposed for
 * unit tests. Returns 0, or -1 when the value is malformed JSON. */
int fmt_debezium_value(uint32_t type_oid, int32_t typmod, const char *v, size_t n,
                       relay_buf *out);

/* ---- CloudEvents --------------------------------------------------------- */

/* The context attributes of one event (CloudEvents 1.0, section 3.1 and
 * 3.2), NUL-terminated strings in the given arena or static storage; an
 * optional attribute is NULL when absent. */
typedef struct fmt_ce_attrs {
    const char *id, *source, *type, *subject, *time, *datacontenttype;
    const char *partitionkey; /* Partitioning extension: the row key */
} fmt_ce_attrs;

/* Fill the attributes of `m` (id = the dedup key, source =
 * cloudevents_source or "/pgtrickle-relay/<pipeline>", type = the rendered
 * cloudevents_type template (default "io.pgtrickle.{op}"), subject = the
 * rendered subject, time = the commit time for CDC events else the
 * processing time (RFC 3339), datacontenttype "application/json",
 * partitionkey = m->key). Strings are allocated from `a`. */
void fmt_ce_attrs_of(const relay_format_ctx *ctx, const relay_msg *m, relay_arena *a,
                     fmt_ce_attrs *out);

/* The attributes of `a` that a binary-mode message carries as headers,
 * every one but datacontenttype (which is the protocol's content type):
 * names without a prefix ("specversion", "id", ...), values as is (the
 * HTTP and NATS bindings percent-encode them with fmt_ce_header_encode,
 * Kafka headers carry UTF-8). Returns the count (at most 8). */
size_t fmt_ce_header_attrs(const fmt_ce_attrs *a, const char *names[8], const char *values[8]);

/* The processing-time context of a sink that builds binary-mode headers at
 * publish time: pipeline name, now, the sink's options. */
relay_format_ctx fmt_ctx_for_sink(const char *pipeline, const relay_format_opts *opts);

/* Append the CloudEvent of `m`: in structured mode the JSON event format
 * (CloudEvents JSON Event Format 1.0, section 3), in binary mode only the
 * data (the payload JSON). Returns 0, or -1 with err. */
int fmt_cloudevents_encode(const relay_format_ctx *ctx, const relay_msg *m, relay_buf *out,
                           char *err, size_t errlen);

/* Percent-encode a header value as the CloudEvents HTTP binding requires
 * (section 3.1.3.2: bytes outside printable US-ASCII, space, '"' and '%'
 * as %XX of their UTF-8). Appends to out (NUL-terminated). */
void fmt_ce_header_encode(const char *v, relay_buf *out);

/* Decode a percent-encoded header value (the inverse; a '%' not followed by
 * two hex digits is kept as is). Appends the bytes to out. Returns 0, or
 * -1 when the decoded bytes are not valid UTF-8 (section 3.1.3.2: such a
 * value is malformed). */
int fmt_ce_header_decode(const char *v, size_t n, relay_buf *out);

/* A structured-mode event received by the webhook source. */
typedef struct fmt_ce_event {
    const char *id;    size_t id_len;     /* decoded; point into `scratch` */
    const char *type;  size_t type_len;
    const char *source; size_t source_len;
    const char *data;  size_t data_len;   /* JSON text of "data", or the decoded
                                             bytes of "data_base64" */
    int data_is_json;                     /* 0: data_base64, or no data (NULL) */
} fmt_ce_event;

/* Parse a structured-mode CloudEvent (JSON event format): one JSON object
 * (Unicode text: no \u0000, no unpaired surrogate escape)
 * with the REQUIRED attributes specversion ("1.0"), id, source, type (all
 * non-empty strings), optional data (any JSON) or data_base64 (a base64
 * string), not both. Strings are decoded into `scratch` (the pointers in
 * *ev point into it, or into `body` for data); the caller keeps both
 * alive. Returns 0, or -1 with err saying which rule the event breaks. */
int fmt_ce_parse_structured(const char *body, size_t n, relay_buf *scratch, fmt_ce_event *ev,
                            char *err, size_t errlen);

#endif
