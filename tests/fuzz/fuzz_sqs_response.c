/*
 * fuzz_sqs_response.c - the SQS client's response parsers (src/client/sqs.c):
 * ReceiveMessage answers, batch results and error bodies, i.e. everything
 * the relay reads from an SQS endpoint.
 *
 * Input: one selector byte, then the response body.
 *   selector % 3 == 0  sqs_parse_receive + sqs_received_get on every message
 *   selector % 3 == 1  sqs_parse_batch_result for (selector / 3) % 11 entries
 *   selector % 3 == 2  sqs_classify with HTTP status statuses[(selector / 3) % 8]
 *
 * Checks, with jansson (JSON_ALLOW_NUL) as the oracle:
 *   - receive: a body jansson reads as an object whose "Messages" is an array
 *     of N gives N; a body it refuses, or whose Messages is not an array,
 *     gives -1 (unless it only holds a lone surrogate escape, which is read
 *     as U+FFFD); every message extracted has its MessageId, ReceiptHandle
 *     and Body, with lengths jansson agrees on;
 *   - batch: -1 exactly when jansson does not read an object; every state is
 *     one of the four; code and message are printable ASCII;
 *   - classify: 2xx is SQS_OK, anything else has a non-empty printable code.
 */
#include "fuzz.h"

#include "client/sqs.h"

static const long statuses[] = {200, 400, 403, 429, 500, 502, 503, 301};

static int printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

static void check_receive(const char *body, size_t len)
{
    json_t *root = NULL, *msgs = NULL;
    char err[300];
    int n = sqs_parse_receive(body, len, &root, &msgs, err, sizeof err);
    json_t *oracle = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    size_t ws = 0;
    while (ws < len && strchr(" \t\r\n", body[ws]) && body[ws])
        ws++;
    if (ws == len) {
        FUZZ_CHECK(n == 0 && !root, "an empty body is no message, got %d", n);
    } else if (json_is_object(oracle)) {
        json_t *m = json_object_get(oracle, "Messages");
        if (m && !json_is_array(m))
            FUZZ_CHECK(n == -1, "Messages not an array, got %d", n);
        else
            FUZZ_CHECK(n == (int)json_array_size(m), "got %d messages, jansson %zu", n,
                       json_array_size(m));
    } else if (oracle) {
        FUZZ_CHECK(n == -1, "a JSON %d that is not an object gave %d", json_typeof(oracle), n);
    } else if (!memmem(body, len, "\\u", 2)) {
        FUZZ_CHECK(n == -1, "a body jansson refuses gave %d", n);
    }
    FUZZ_CHECK((n > 0) == (msgs != NULL), "messages array vs count %d", n);
    for (int i = 0; i < n; i++) {
        json_t *jm = json_array_get(msgs, (size_t)i);
        sqs_received r;
        if (sqs_received_get(jm, &r, err, sizeof err) < 0)
            continue;
        FUZZ_CHECK(r.message_id && r.receipt_handle && r.body, "a message without its ids");
        FUZZ_CHECK(strlen(r.message_id) > 0 && strlen(r.receipt_handle) > 0, "empty ids");
        FUZZ_CHECK(r.body_len == json_string_length(json_object_get(jm, "Body")),
                   "body length %zu", r.body_len);
        FUZZ_CHECK(!r.attr_dedup_key || r.attr_dedup_key_len > 0 ||
                       json_string_length(json_object_get(json_object_get(
                           json_object_get(jm, "MessageAttributes"), "dedup_key"),
                           "StringValue")) == 0,
                   "dedup_key length");
    }
    json_decref(root);
    json_decref(oracle);
}

static void check_batch(const char *body, size_t len, size_t n)
{
    sqs_entry_result res[SQS_MAX_BATCH_ENTRIES];
    memset(res, 0, sizeof res);
    char err[300];
    int rc = sqs_parse_batch_result(body, len, res, n, err, sizeof err);
    json_t *oracle = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    if (!json_is_object(oracle))
        FUZZ_CHECK(rc == -1, "not an object, parsed anyway");
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(res[i].state >= SQS_ENTRY_MISSING && res[i].state <= SQS_ENTRY_FAILED,
                   "state %d", (int)res[i].state);
        FUZZ_CHECK(printable(res[i].code) && printable(res[i].message), "unprintable text");
    }
    json_decref(oracle);
}

static void check_classify(long status, const char *body, size_t len)
{
    char code[64], msg[256];
    sqs_outcome o = sqs_classify(status, body, len, code, sizeof code, msg, sizeof msg);
    if (status >= 200 && status <= 299) {
        FUZZ_CHECK(o == SQS_OK, "2xx not OK");
        return;
    }
    FUZZ_CHECK(o == SQS_RETRY || o == SQS_FATAL || o == SQS_INVALID, "outcome %d", (int)o);
    FUZZ_CHECK(code[0] && printable(code) && printable(msg), "code \"%s\"", code);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned sel = data[0];
    char *body = fuzz_strndup(data + 1, size - 1);
    size_t len = size - 1;
    switch (sel % 3) {
    case 0:
        check_receive(body, len);
        break;
    case 1:
        check_batch(body, len, (sel / 3) % (SQS_MAX_BATCH_ENTRIES + 1));
        break;
    default:
        check_classify(statuses[(sel / 3) % 8], body, len);
        break;
    }
    free(body);
    return 0;
}
