/*
 * source/webhook.h - the body splitter of the webhook receiver (webhook.c),
 * exposed so that a libFuzzer target (tests/fuzz/fuzz_webhook_body.c) can
 * call it without an HTTP server. The receiver runs the same code on every
 * request body once its headers, authentication and signature checked out.
 */
#ifndef RELAY_SOURCE_WEBHOOK_H
#define RELAY_SOURCE_WEBHOOK_H

#include <stddef.h>

#include "../message.h"

/*
 * Split a request body into events (the rules are in the design comment of
 * webhook.c, "Events:"): a JSON object is one event, a JSON array one event
 * per element (its bytes as sent, never re-serialised), a body that is not
 * JSON and not declared as JSON one event with payload_is_json = 0.
 *   body, len          the raw request body, any bytes
 *   declared_json      1 when the request's Content-Type is application/json
 *                      or ...+json (then a body that is not JSON is a 400)
 *   idempotency_key    the Idempotency-Key header, already checked by the
 *                      receiver (1 to 512 bytes of UTF-8), or NULL
 *   element_key_field  the source's element_key_field, or NULL (off)
 * Returns 0 and appends one message per event to `b` (op OP_EVENT; payload a
 * NUL-terminated copy in b's arena, payload_len bytes, payload_is_json; the
 * dedup key in b's arena: Idempotency-Key, the element's key field,
 * "<Idempotency-Key>:<index>" or a random UUID), or returns the HTTP status
 * the receiver answers (400, 413) with a reason in `why` and appends nothing.
 */
unsigned webhook_body_events(const char *body, size_t len, int declared_json,
                             const char *idempotency_key, const char *element_key_field,
                             relay_batch *b, char *why, size_t whylen);

/* CloudEvents content modes of a request (HTTP protocol binding 1.3). */
typedef enum {
    WEBHOOK_CE_NONE = 0,
    WEBHOOK_CE_STRUCTURED, /* Content-Type application/cloudevents+json (3.2) */
    WEBHOOK_CE_BATCH,      /* Content-Type application/cloudevents-batch+json (3.3) */
    WEBHOOK_CE_BINARY,     /* a ce-specversion header (3.1) */
} webhook_ce_mode;

/*
 * Split a CloudEvents request into events, as the receiver does for a
 * request in one of the modes above (docs/formats.md, "Receiving
 * CloudEvents"): each event's id becomes its dedup key (inbox event_id),
 * its type its subject (the event_type fallback), its data the payload
 * (JSON as sent; data_base64 or a binary-mode body that is text as a
 * string; no data: JSON null). The Idempotency-Key header is not read.
 *   content_type   the Content-Type header, or NULL
 *   ce_headers     ce-specversion, ce-id, ce-type, ce-source as received
 *                  (percent-encoded), each NULL when absent
 * Returns 0 and appends the events to `b` (arena copies), or the HTTP
 * status the receiver answers (400, 413) with the reason in `why`: a
 * missing or empty REQUIRED attribute, specversion other than 1.0, an id
 * longer than 512 bytes, data and data_base64 together, bad base64, data
 * that is neither JSON nor UTF-8 text, a header not percent-decoding to
 * UTF-8, a batch that is not an array of events.
 */
unsigned webhook_cloudevents(const char *body, size_t len, const char *content_type,
                             const char *const ce_headers[4], relay_batch *b, char *why,
                             size_t whylen);

#endif
