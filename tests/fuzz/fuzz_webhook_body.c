/*
 * fuzz_webhook_body.c - the webhook receiver's body splitter
 * (webhook_body_events, src/source/webhook.h): a request body to events.
 *
 * Input: the request body. A first byte 0x01..0x07 is not body but flags:
 *   1  Content-Type is NOT JSON (default: application/json)
 *   2  element_key_field off (default: "dedup_key")
 *   4  an Idempotency-Key: the first line of the rest ("idem-<line>")
 *
 * Checks, with jansson (as the receiver calls it: JSON_DECODE_INT_AS_REAL)
 * as the oracle:
 *   - a body jansson reads as an object is one event with the trimmed body;
 *   - one jansson reads as an array of N > 0 is N events, event k holding
 *     exactly the bytes of element k (equal to jansson's element k);
 *   - an empty array, an empty body, or a body that is not JSON while
 *     declared JSON is refused (400); any other body is one event with
 *     payload_is_json = 0 and all its bytes, or 400 when it is not UTF-8;
 *   - dedup keys: the Idempotency-Key for an object, "<key>:<k>" for array
 *     element k, unless the element carries its own element_key_field
 *     string (1..512 bytes); otherwise a UUID.
 */
#include "fuzz.h"

#include "source/webhook.h"

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_uuid(const char *k)
{
    if (strlen(k) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? k[i] != '-' : !strchr("0123456789abcdef", k[i]))
            return 0;
    }
    return 1;
}

/* The key expected for element el (index -1: the body is one object). */
static void check_key(const char *key, json_t *el, const char *field, const char *idem,
                      long index)
{
    FUZZ_CHECK(key && *key, "an event without a dedup key");
    const char *own = NULL;
    if (field && json_is_object(el)) {
        json_t *k = json_object_get(el, field);
        if (json_is_string(k) && json_string_length(k) > 0 && json_string_length(k) <= 512)
            own = json_string_value(k);
    }
    if (index < 0 && idem) {
        FUZZ_CHECK(strcmp(key, idem) == 0, "object key \"%s\", want the Idempotency-Key", key);
    } else if (own) {
        FUZZ_CHECK(strcmp(key, own) == 0, "key \"%s\", want the element's own \"%s\"", key, own);
    } else if (idem) {
        char want[700];
        snprintf(want, sizeof want, "%s:%ld", idem, index);
        FUZZ_CHECK(strcmp(key, want) == 0, "key \"%s\", want \"%s\"", key, want);
    } else {
        FUZZ_CHECK(is_uuid(key), "key \"%s\" is not a UUID", key);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int flags = 0;
    if (size && data[0] >= 1 && data[0] <= 7) {
        flags = data[0];
        data++;
        size--;
    }
    int declared_json = !(flags & 1);
    const char *field = (flags & 2) ? NULL : "dedup_key";
    char *idem = NULL;
    if (flags & 4) {
        const uint8_t *p = data, *end = data + size;
        char *line = fuzz_field(&p, end, '\n');
        size_t n = strlen(line);
        idem = malloc(n + 6);
        memcpy(idem, "idem-", 5);
        memcpy(idem + 5, line, n + 1);
        free(line);
        size -= (size_t)(p - data);
        data = p;
        /* the receiver only passes keys of 1..512 bytes of UTF-8 */
        if (strlen(idem) > 512 || !fuzz_utf8_text(idem, strlen(idem))) {
            free(idem);
            return 0;
        }
    }
    char *body = malloc(size ? size : 1); /* exact size: ASan sees any overread */
    if (size)
        memcpy(body, data, size);

    relay_batch b = {0};
    char why[512] = "";
    unsigned st = webhook_body_events(body, size, declared_json, idem, field, &b, why, sizeof why);

    size_t a = 0, e = size;
    while (a < e && is_ws(body[a]))
        a++;
    while (e > a && is_ws(body[e - 1]))
        e--;
    json_t *root = NULL;
    if (a < e && (body[a] == '{' || body[a] == '['))
        root = fuzz_jansson(body + a, e - a, JSON_DECODE_INT_AS_REAL, NULL);

    if (st != 0) {
        FUZZ_CHECK(st == 400 || st == 413, "status %u", st);
        FUZZ_CHECK(why[0], "refused without a reason");
        FUZZ_CHECK(b.n == 0, "a refused body left %zu events", b.n);
        if (st == 413)
            FUZZ_CHECK(body[a] == '[', "413 for a body that is not an array");
        else
            FUZZ_CHECK(a == e || (json_is_array(root) && json_array_size(root) == 0) ||
                       (!root && (declared_json || !fuzz_utf8_text(body, size))),
                       "refused a valid body: %s", why);
    } else if (json_is_object(root)) {
        FUZZ_CHECK(b.n == 1, "an object gave %zu events", b.n);
        FUZZ_CHECK(b.msgs[0].payload_is_json && b.msgs[0].payload_len == e - a &&
                   memcmp(b.msgs[0].payload, body + a, e - a) == 0, "object payload");
        check_key(b.msgs[0].dedup_key, root, field, idem, -1);
    } else if (json_is_array(root)) {
        FUZZ_CHECK(b.n == json_array_size(root), "%zu events for an array of %zu", b.n,
                   json_array_size(root));
        for (size_t k = 0; k < b.n; k++) {
            const relay_msg *m = &b.msgs[k];
            FUZZ_CHECK(m->payload_is_json, "array element %zu not JSON", k);
            FUZZ_CHECK(m->payload && m->payload_len > 0, "empty element %zu", k);
            json_t *el = fuzz_jansson(m->payload, m->payload_len, JSON_DECODE_INT_AS_REAL, NULL);
            FUZZ_CHECK(el && json_equal(el, json_array_get(root, k)),
                       "element %zu is \"%.200s\", not jansson's element", k, m->payload);
            json_decref(el);
            check_key(m->dedup_key, json_array_get(root, k), field, idem, (long)k);
        }
    } else {
        FUZZ_CHECK(!declared_json && fuzz_utf8_text(body, size),
                   "accepted a body that is neither JSON nor UTF-8 text");
        FUZZ_CHECK(b.n == 1 && !b.msgs[0].payload_is_json && b.msgs[0].payload_len == size &&
                   memcmp(b.msgs[0].payload, body, size) == 0, "text body event");
        check_key(b.msgs[0].dedup_key, NULL, field, idem, -1);
    }
    for (size_t k = 0; k < b.n; k++)
        FUZZ_CHECK(b.msgs[k].op == OP_EVENT && b.msgs[k].payload[b.msgs[k].payload_len] == '\0',
                   "event %zu", k);
    json_decref(root);
    batch_free(&b);
    free(body);
    free(idem);
    return 0;
}
