/*
 * fuzz_cloudevents.c - the webhook receiver's CloudEvents decoder
 * (webhook_cloudevents, src/source/webhook.h; fmt_ce_parse_structured and
 * fmt_ce_header_decode, src/formats.h).
 *
 * Input: a first byte selects the content mode, the rest is the request:
 *   0  structured: the body (Content-Type application/cloudevents+json)
 *   1  batch: the body (application/cloudevents-batch+json)
 *   2  binary, data declared JSON; 3 binary, data as text: four lines
 *      (ce-specversion, ce-id, ce-type, ce-source; a line "-" is an absent
 *      header), then the body
 *   other: header values: decode, and encode(decoded) must decode back
 *
 * Checks, with jansson as the oracle for the structured event (bodies
 * without duplicate member names): a body that
 * jansson reads as an object with specversion "1.0" and non-empty string id
 * (at most 512 bytes), source and type, and not both data and data_base64,
 * is accepted exactly when data_base64 (if any) is base64 of UTF-8 text;
 * an accepted event has dedup key = id, subject = type and a payload equal
 * to jansson's data (JSON null without data). A batch gives one event per
 * element or is refused as a whole. A refusal is 400 or 413 with a reason
 * and no event.
 */
#include "fuzz.h"

#include "formats.h"
#include "source/webhook.h"

/* Does jansson's view of the object say the event is acceptable? -1: it
 * depends on data_base64 (checked by the caller). */
static int ce_acceptable(json_t *o)
{
    if (!json_is_object(o))
        return 0;
    json_t *sv = json_object_get(o, "specversion");
    if (!json_is_string(sv) || strcmp(json_string_value(sv), "1.0") != 0 || json_string_length(sv) != 3)
        return 0;
    const char *req[] = {"id", "source", "type"};
    for (int i = 0; i < 3; i++) {
        json_t *v = json_object_get(o, req[i]);
        if (!json_is_string(v) || json_string_length(v) == 0 ||
            memchr(json_string_value(v), 0, json_string_length(v)))
            return 0;
    }
    if (json_string_length(json_object_get(o, "id")) > 512)
        return 0;
    json_t *d = json_object_get(o, "data"), *d64 = json_object_get(o, "data_base64");
    if (d && d64)
        return 0;
    if (d64)
        return json_is_string(d64) ? -1 : 0;
    return 1;
}

static void check_event(const relay_msg *m, json_t *o)
{
    json_t *id = json_object_get(o, "id"), *type = json_object_get(o, "type");
    FUZZ_CHECK(strlen(m->dedup_key) == json_string_length(id) &&
               memcmp(m->dedup_key, json_string_value(id), json_string_length(id)) == 0,
               "dedup key \"%s\" is not the id", m->dedup_key);
    FUZZ_CHECK(m->subject && strcmp(m->subject, json_string_value(type)) == 0,
               "subject \"%s\" is not the type", m->subject);
    json_t *d = json_object_get(o, "data");
    if (json_object_get(o, "data_base64")) {
        FUZZ_CHECK(!m->payload_is_json, "decoded data_base64 stored as JSON");
        return;
    }
    json_t *got = fuzz_jansson(m->payload, m->payload_len, 0, NULL);
    FUZZ_CHECK(got, "payload \"%.200s\" is not JSON", m->payload);
    FUZZ_CHECK(json_equal(got, d ? d : json_null()), "payload \"%.200s\" is not the data",
               m->payload);
    json_decref(got);
}

static void headers(const uint8_t *data, size_t size)
{
    relay_buf dec = {0}, enc = {0}, back = {0};
    if (fmt_ce_header_decode((const char *)data, size, &dec) == 0 &&
        !memchr(dec.data ? dec.data : "", 0, dec.len)) {
        char *s = fuzz_strndup((const uint8_t *)(dec.data ? dec.data : ""), dec.len);
        fmt_ce_header_encode(s, &enc);
        for (size_t i = 0; i < enc.len; i++)
            FUZZ_CHECK(enc.data[i] > 0x20 && enc.data[i] < 0x7F && enc.data[i] != '"',
                       "encoded byte 0x%02x", (unsigned char)enc.data[i]);
        FUZZ_CHECK(fmt_ce_header_decode(enc.data ? enc.data : "", enc.len, &back) == 0 &&
                   back.len == dec.len && memcmp(back.data ? back.data : "", s, dec.len) == 0,
                   "decode(encode(x)) != x");
        free(s);
    }
    buf_free(&dec);
    buf_free(&enc);
    buf_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int mode = data[0];
    data++;
    size--;
    if (mode > 3) {
        headers(data, size);
        return 0;
    }
    char *hdr[4] = {NULL, NULL, NULL, NULL};
    const char *ct = mode == 0 ? "application/cloudevents+json"
                   : mode == 1 ? "application/cloudevents-batch+json"
                   : mode == 2 ? "application/json" : "text/plain";
    if (mode >= 2) {
        const uint8_t *p = data, *end = data + size;
        for (int i = 0; i < 4; i++) {
            hdr[i] = fuzz_field(&p, end, '\n');
            if (strcmp(hdr[i], "-") == 0) {
                free(hdr[i]);
                hdr[i] = NULL;
            }
        }
        size -= (size_t)(p - data);
        data = p;
    }
    char *body = malloc(size ? size : 1); /* exact size: ASan sees any overread */
    if (size)
        memcpy(body, data, size);
    relay_batch b = {0};
    char why[512] = "";
    const char *h[4] = {hdr[0], hdr[1], hdr[2], hdr[3]};
    unsigned st = webhook_cloudevents(body, size, ct, h, &b, why, sizeof why);
    if (st) {
        FUZZ_CHECK(st == 400 || st == 413, "status %u", st);
        FUZZ_CHECK(why[0], "refused without a reason");
        FUZZ_CHECK(b.n == 0, "a refused request left %zu events", b.n);
    }
    /* Duplicate member names: the decoder refuses duplicated attributes and
     * keeps the first of other members, jansson keeps the last; such input
     * is only checked for the generic properties above. */
    json_t *root = mode <= 1 ? fuzz_jansson(body, size, JSON_REJECT_DUPLICATES, NULL) : NULL;
    if (mode <= 1 && st == 0) {
        int overflow = 0;
        json_t *loose = fuzz_jansson(body, size, 0, &overflow);
        FUZZ_CHECK(loose || overflow, "accepted a body that is not JSON");
        json_decref(loose);
    }
    if (mode == 0 && root) {
        int ok = ce_acceptable(root);
        if (ok == 1)
            FUZZ_CHECK(st == 0, "refused an acceptable event: %s", why);
        if (ok == 0)
            FUZZ_CHECK(st != 0, "accepted an event that breaks the specification");
        if (st == 0) {
            FUZZ_CHECK(b.n == 1, "%zu events for one structured event", b.n);
            check_event(&b.msgs[0], root);
        }
    } else if (mode == 1 && st == 0 && root) {
        FUZZ_CHECK(json_is_array(root) && json_array_size(root) == b.n && b.n > 0,
                   "a batch of %zu accepted as %zu events", json_array_size(root), b.n);
        for (size_t i = 0; i < b.n; i++) {
            FUZZ_CHECK(ce_acceptable(json_array_get(root, i)) != 0, "element %zu accepted", i);
            check_event(&b.msgs[i], json_array_get(root, i));
        }
    } else if (mode >= 2 && st == 0) {
        FUZZ_CHECK(b.n == 1 && hdr[0] && hdr[1] && hdr[2] && hdr[3], "binary event without headers");
    }
    json_decref(root);
    batch_free(&b);
    free(body);
    for (int i = 0; i < 4; i++)
        free(hdr[i]);
    return 0;
}
