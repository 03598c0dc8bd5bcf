/*
 * fuzz_puback.c - the JetStream PubAck decoder (src/client/nats.c:
 * nats_puback_parse), which decides whether a message the NATS sink
 * published is confirmed.
 *
 * Input: the reply body, as the server would send it.
 *
 * Checks: no crash and no read outside the input (the input is copied to a
 * buffer of its exact size, without a NUL); and wherever jansson accepts the
 * body as an object whose keys have no escapes (the server writes none; the
 * decoder compares keys raw; inputs with a backslash are not compared), the
 * decoder agrees with this reference:
 *   "error" is an object                       -> refused (stored 0)
 *   else "stream" a string, "seq" an integer
 *   in [0, 2^63)                               -> stored, the same seq
 *   else                                       -> not a PubAck (-1)
 * Above 2^63 - 1 jansson refuses the integer, so that range is not compared;
 * nor are bodies with a '-' (the decoder refuses a signed "seq", -0 too:
 * the server never signs it) or a NUL byte (jansson stops reading at one
 * outside a string; the decoder refuses it).
 */
#include "fuzz.h"

#include "client/nats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *body = malloc(size ? size : 1);
    if (!body)
        abort();
    if (size)
        memcpy(body, data, size);
    relay_puback pa;
    int rc = nats_puback_parse(body, size, &pa);
    FUZZ_CHECK(rc == 0 || rc == -1, "rc %d", rc);
    if (rc == 0)
        FUZZ_CHECK(pa.stored == 0 || pa.stored == 1, "stored %d", pa.stored);

    json_error_t jerr;
    json_t *j = json_loadb(body, size, 0, &jerr);
    if (j && json_is_object(j) && !memchr(body, '\\', size) && !memchr(body, '-', size) &&
        !memchr(body, '\0', size)) {
        json_t *e = json_object_get(j, "error");
        json_t *st = json_object_get(j, "stream");
        json_t *seq = json_object_get(j, "seq");
        if (json_is_object(e)) {
            FUZZ_CHECK(rc == 0 && pa.stored == 0, "an error reply: rc %d stored %d", rc,
                       pa.stored);
        } else if (json_is_string(st) && json_is_integer(seq)) {
            FUZZ_CHECK(rc == 0 && pa.stored == 1, "a PubAck: rc %d stored %d", rc, pa.stored);
            FUZZ_CHECK(pa.seq == (uint64_t)json_integer_value(seq), "seq %llu, jansson %lld",
                       (unsigned long long)pa.seq, (long long)json_integer_value(seq));
        } else {
            FUZZ_CHECK(rc == -1, "neither a PubAck nor an error: rc %d", rc);
        }
    }
    json_decref(j);
    free(body);
    return 0;
}
