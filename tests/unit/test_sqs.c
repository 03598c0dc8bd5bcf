/*
 * test_sqs.c - the pure parts of the SQS client (src/client/sqs.c): region
 * and endpoint resolution, the credentials chain (config keys, environment,
 * shared credentials file), the SigV4 inputs handed to libcurl, id mapping,
 * error classification and the response parsers. The emulator the
 * integration tests use accepts any signature, so what is signed is checked
 * here (and on the wire by tests/integration/sqs_signing.sh).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client/sqs.h"
#include "hostpath.h"

static void clear_aws_env(void)
{
    static const char *const vars[] = {
        "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS",
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE", NULL,
    };
    for (size_t i = 0; vars[i]; i++)
        unsetenv(vars[i]);
    setenv("HOME", "/nonexistent-home", 1);
}

static void regions(void **state)
{
    (void)state;
    assert_true(sqs_region_valid("us-east-1"));
    assert_true(sqs_region_valid("eu-central-2"));
    assert_true(sqs_region_valid("us-gov-west-1"));
    assert_true(sqs_region_valid("cn-north-1"));
    assert_false(sqs_region_valid("us-east"));
    assert_false(sqs_region_valid("US-EAST-1"));
    assert_false(sqs_region_valid("us-east-1a"));
    assert_false(sqs_region_valid("narnia"));
    assert_false(sqs_region_valid(""));
    assert_false(sqs_region_valid("1-us"));
    assert_false(sqs_region_valid("us--east-1"));

    char r[64];
    assert_int_equal(sqs_region_from_url("https://sqs.eu-west-1.amazonaws.com/123456789012/q", r,
                                         sizeof r), 0);
    assert_string_equal(r, "eu-west-1");
    assert_int_equal(sqs_region_from_url("https://sqs.cn-north-1.amazonaws.com.cn/1/q", r,
                                         sizeof r), 0);
    assert_string_equal(r, "cn-north-1");
    assert_int_equal(sqs_region_from_url("https://ap-south-1.queue.amazonaws.com/1/q", r,
                                         sizeof r), 0);
    assert_string_equal(r, "ap-south-1");
    assert_int_equal(sqs_region_from_url("https://user@SQS.US-EAST-2.amazonaws.com:443/1/q", r,
                                         sizeof r), 0);
    assert_string_equal(r, "us-east-2");
    assert_int_equal(sqs_region_from_url("http://127.0.0.1:4566/000000000000/q", r, sizeof r),
                     -1);
    assert_int_equal(sqs_region_from_url("https://sqs.us-east-1.example.com/1/q", r, sizeof r),
                     -1);
    assert_int_equal(sqs_region_from_url("no url", r, sizeof r), -1);

    char *e = sqs_default_endpoint("us-east-1");
    assert_string_equal(e, "https://sqs.us-east-1.amazonaws.com");
    free(e);
    e = sqs_default_endpoint("cn-northwest-1");
    assert_string_equal(e, "https://sqs.cn-northwest-1.amazonaws.com.cn");
    free(e);
}

static void credentials_file(void **state)
{
    (void)state;
    const char *text = "# comment\n"
                       "[default]\n"
                       "aws_access_key_id = AKIDDEFAULT\n"
                       "aws_secret_access_key=secretdefault\r\n"
                       "\n"
                       "[ work ]\n"
                       "; another comment\n"
                       "aws_access_key_id\t=\tAKIDWORK  \n"
                       "aws_secret_access_key = s3cr3t/with+chars=\n"
                       "aws_session_token = TOKEN123\n"
                       "region = eu-west-1\n"
                       "[broken]\n"
                       "aws_access_key_id = AKIDONLY\n";
    char *id, *secret, *token, err[200];
    assert_int_equal(sqs_credentials_parse(text, "default", &id, &secret, &token, err,
                                           sizeof err), 0);
    assert_string_equal(id, "AKIDDEFAULT");
    assert_string_equal(secret, "secretdefault");
    assert_null(token);
    free(id);
    free(secret);
    assert_int_equal(sqs_credentials_parse(text, "work", &id, &secret, &token, err, sizeof err),
                     0);
    assert_string_equal(id, "AKIDWORK");
    assert_string_equal(secret, "s3cr3t/with+chars=");
    assert_string_equal(token, "TOKEN123");
    free(id);
    free(secret);
    free(token);
    assert_int_equal(sqs_credentials_parse(text, "nope", &id, &secret, &token, err, sizeof err),
                     -1);
    assert_string_equal(err, "profile \"nope\" not found");
    assert_null(id);
    assert_int_equal(sqs_credentials_parse(text, "broken", &id, &secret, &token, err,
                                           sizeof err), -2);
    assert_string_equal(err, "profile \"broken\" has no aws_secret_access_key");
}

static void signing_inputs(void **state)
{
    (void)state;
    char p[96];
    sqs_sigv4_param("eu-west-3", p, sizeof p);
    assert_string_equal(p, "aws:amz:eu-west-3:sqs");

    struct curl_slist *h = sqs_headers("SendMessageBatch", NULL);
    assert_non_null(h);
    assert_string_equal(h->data, "Content-Type: application/x-amz-json-1.0");
    assert_string_equal(h->next->data, "X-Amz-Target: AmazonSQS.SendMessageBatch");
    assert_null(h->next->next);
    curl_slist_free_all(h);

    h = sqs_headers("ReceiveMessage", "FwoGZXIvYXdzEXAMPLE");
    assert_string_equal(h->next->data, "X-Amz-Target: AmazonSQS.ReceiveMessage");
    assert_string_equal(h->next->next->data, "X-Amz-Security-Token: FwoGZXIvYXdzEXAMPLE");
    assert_null(h->next->next->next);
    curl_slist_free_all(h);
}

static void id_mapping(void **state)
{
    (void)state;
    char out[SQS_MAX_ID_LEN + 1];
    assert_int_equal(sqs_map_id("outbox_orders:5:0", 17, out), 0);
    assert_string_equal(out, "outbox_orders:5:0");
    assert_int_equal(sqs_map_id("0/16B3748:3", 11, out), 0);
    assert_string_equal(out, "0/16B3748:3");
    /* a space, a non-ASCII letter, an empty key, a key over 128 bytes: hashed */
    assert_int_equal(sqs_map_id("abc", 3, out), 0);
    assert_string_equal(out, "abc");
    assert_int_equal(sqs_map_id("a b", 3, out), 0);
    assert_string_equal(out, "sha256-c8687a08aa5d6ed2044328fa6a697ab8e96dc34291e8c2034ae8c38e6fcc6d65");
    char again[SQS_MAX_ID_LEN + 1];
    assert_int_equal(sqs_map_id("a b", 3, again), 0);
    assert_string_equal(out, again); /* stable */
    assert_int_equal(sqs_map_id("", 0, out), 0);
    /* SHA-256("") */
    assert_string_equal(out,
        "sha256-e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    assert_int_equal(sqs_map_id("abc\0def", 7, out), 0);
    assert_memory_equal(out, "sha256-", 7);
    char long_key[200];
    memset(long_key, 'k', sizeof long_key);
    assert_int_equal(sqs_map_id(long_key, 128, out), 0);
    assert_int_equal(strlen(out), 128);
    assert_int_equal(sqs_map_id(long_key, 129, out), 0);
    assert_int_equal(strlen(out), 71);
    assert_int_equal(sqs_map_id("caf\xc3\xa9", 5, out), 0);
    assert_memory_equal(out, "sha256-", 7);
    /* distinct keys, distinct ids */
    assert_int_equal(sqs_map_id("ab c", 4, out), 0);
    assert_int_equal(sqs_map_id("abc ", 4, again), 0);
    assert_string_not_equal(out, again);
}

static void text_validity(void **state)
{
    (void)state;
    assert_true(sqs_text_valid("{\"a\":1}\n\t\r", 10));
    assert_true(sqs_text_valid("caf\xc3\xa9 \xf0\x9f\x98\x80", 10));
    assert_true(sqs_text_valid("", 0));
    assert_false(sqs_text_valid("a\0b", 3));
    assert_false(sqs_text_valid("a\x01", 2));
    assert_false(sqs_text_valid("\xff", 1));
    assert_false(sqs_text_valid("\xc3", 1));
    assert_false(sqs_text_valid("\xef\xbf\xbf", 3)); /* U+FFFF */
    assert_false(sqs_text_valid("\xed\xa0\x80", 3)); /* a surrogate */
    assert_true(sqs_text_valid("\xef\xbf\xbd", 3));  /* U+FFFD */
}

static sqs_outcome classify(long status, const char *body, char *code, char *msg)
{
    return sqs_classify(status, body, strlen(body), code, 64, msg, 256);
}

static void error_classes(void **state)
{
    (void)state;
    char code[64], msg[256];
    assert_int_equal(classify(200, "{}", code, msg), SQS_OK);
    assert_int_equal(classify(400, "{\"__type\":\"com.amazonaws.sqs#QueueDoesNotExist\","
                              "\"message\":\"The specified queue does not exist.\"}", code, msg),
                     SQS_FATAL);
    assert_string_equal(code, "QueueDoesNotExist");
    assert_string_equal(msg, "The specified queue does not exist.");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazon.coral.service#"
                              "UnrecognizedClientException\",\"message\":\"The security token "
                              "included in the request is invalid.\"}", code, msg), SQS_FATAL);
    assert_int_equal(classify(403, "{\"__type\":\"com.amazon.coral.service#"
                              "AccessDeniedException\",\"Message\":\"denied\"}", code, msg),
                     SQS_FATAL);
    assert_string_equal(msg, "denied");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazon.coral.service#"
                              "InvalidSignatureException\"}", code, msg), SQS_FATAL);
    assert_int_equal(classify(400, "{\"__type\":\"com.amazon.coral.service#"
                              "ExpiredTokenException\"}", code, msg), SQS_FATAL);
    assert_int_equal(classify(403, "<html>forbidden</html>", code, msg), SQS_FATAL);
    assert_string_equal(code, "HTTP 403");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazon.coral.availability#"
                              "ThrottlingException\",\"message\":\"Rate exceeded\"}", code, msg),
                     SQS_RETRY);
    assert_string_equal(code, "ThrottlingException");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazonaws.sqs#RequestThrottled\"}", code,
                              msg), SQS_RETRY);
    assert_int_equal(classify(500, "{\"__type\":\"com.amazon.coral.service#InternalFailure\"}",
                              code, msg), SQS_RETRY);
    assert_int_equal(classify(503, "", code, msg), SQS_RETRY);
    assert_string_equal(code, "HTTP 503");
    assert_int_equal(classify(429, "too many", code, msg), SQS_RETRY);
    assert_string_equal(msg, "too many");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazon.coral.service#"
                              "InvalidParameterValueException\",\"message\":\"Message must be "
                              "shorter than 1024 bytes.\"}", code, msg), SQS_INVALID);
    assert_string_equal(code, "InvalidParameterValueException");
    assert_int_equal(classify(400, "{\"__type\":\"com.amazonaws.sqs#"
                              "TooManyEntriesInBatchRequest\"}", code, msg), SQS_INVALID);
    assert_int_equal(classify(301, "", code, msg), SQS_RETRY);
    /* hostile bytes never reach the texts */
    assert_int_equal(classify(400, "{\"__type\":\"x#a\\u0000b\\n\",\"message\":\"\\u001b[31m\"}",
                              code, msg), SQS_INVALID);
    assert_string_equal(code, "a?b?");
    assert_string_equal(msg, "?[31m");
}

static void batch_results(void **state)
{
    (void)state;
    char err[200];
    sqs_entry_result res[4];
    memset(res, 0, sizeof res);
    const char *body =
        "{\"Successful\":[{\"Id\":\"0\",\"MessageId\":\"m0\"},{\"Id\":\"2\"}],"
        "\"Failed\":[{\"Code\":\"InvalidParameterValue\",\"Id\":\"1\",\"Message\":\"too big\","
        "\"SenderFault\":true},{\"Code\":\"InternalError\",\"Id\":\"3\",\"SenderFault\":false},"
        "{\"Id\":\"9\",\"SenderFault\":true},{\"Id\":\"01\",\"SenderFault\":true},"
        "{\"Id\":\"0\",\"SenderFault\":true}]}";
    assert_int_equal(sqs_parse_batch_result(body, strlen(body), res, 4, err, sizeof err), 0);
    assert_int_equal(res[0].state, SQS_ENTRY_OK); /* a contradicting Failed is ignored */
    assert_int_equal(res[1].state, SQS_ENTRY_SENDER_FAULT);
    assert_string_equal(res[1].code, "InvalidParameterValue");
    assert_string_equal(res[1].message, "too big");
    assert_int_equal(res[2].state, SQS_ENTRY_OK);
    assert_int_equal(res[3].state, SQS_ENTRY_FAILED);
    assert_string_equal(res[3].code, "InternalError");

    memset(res, 0, sizeof res);
    const char *one = "{\"Successful\":[{\"Id\":\"1\"}]}";
    assert_int_equal(sqs_parse_batch_result(one, strlen(one), res, 2, err, sizeof err), 0);
    assert_int_equal(res[0].state, SQS_ENTRY_MISSING);
    assert_int_equal(res[1].state, SQS_ENTRY_OK);
    assert_int_equal(sqs_parse_batch_result("", 0, res, 2, err, sizeof err), -1);
    assert_int_equal(sqs_parse_batch_result("[1]", 3, res, 2, err, sizeof err), -1);
    assert_int_equal(sqs_parse_batch_result("{\"Failed\":{}}", 13, res, 2, err, sizeof err), -1);
}

static void receive_parse(void **state)
{
    (void)state;
    char err[200];
    json_t *root, *msgs;
    assert_int_equal(sqs_parse_receive("", 0, &root, &msgs, err, sizeof err), 0);
    assert_null(root);
    assert_int_equal(sqs_parse_receive(" \n", 2, &root, &msgs, err, sizeof err), 0);
    assert_int_equal(sqs_parse_receive("{}", 2, &root, &msgs, err, sizeof err), 0);
    json_decref(root);
    assert_int_equal(sqs_parse_receive("{\"Messages\":[]}", 15, &root, &msgs, err, sizeof err),
                     0);
    json_decref(root);
    assert_int_equal(sqs_parse_receive("nope", 4, &root, &msgs, err, sizeof err), -1);
    assert_int_equal(sqs_parse_receive("{\"Messages\":1}", 14, &root, &msgs, err, sizeof err),
                     -1);

    const char *body =
        "{\"Messages\":[{\"MessageId\":\"id-1\",\"ReceiptHandle\":\"rh-1\","
        "\"Body\":\"{\\\"event_type\\\":\\\"x\\\"}\",\"Attributes\":{\"MessageGroupId\":\"g1\","
        "\"MessageDeduplicationId\":\"d1\"},\"MessageAttributes\":{\"dedup_key\":{\"DataType\":"
        "\"String\",\"StringValue\":\"k\\u0000ey\"},\"event_type\":{\"DataType\":\"String\","
        "\"StringValue\":\"order.created\"},\"traceparent\":{\"DataType\":\"String\","
        "\"StringValue\":\"00-abc-def-01\"}}},"
        "{\"MessageId\":\"id-2\",\"ReceiptHandle\":\"rh-2\",\"Body\":\"a\\u0000b\"},"
        "{\"MessageId\":\"id-3\",\"Body\":\"x\"}]}";
    assert_int_equal(sqs_parse_receive(body, strlen(body), &root, &msgs, err, sizeof err), 3);
    sqs_received r;
    assert_int_equal(sqs_received_get(json_array_get(msgs, 0), &r, err, sizeof err), 0);
    assert_string_equal(r.message_id, "id-1");
    assert_string_equal(r.receipt_handle, "rh-1");
    assert_int_equal(r.body_len, 18);
    assert_memory_equal(r.dedup_id, "d1", 2);
    assert_memory_equal(r.group_id, "g1", 2);
    assert_int_equal(r.attr_dedup_key_len, 4);
    assert_memory_equal(r.attr_dedup_key, "k\0ey", 4);
    assert_int_equal(r.attr_event_type_len, 13);
    assert_int_equal(r.attr_traceparent_len, 13);
    assert_int_equal(sqs_received_get(json_array_get(msgs, 1), &r, err, sizeof err), 0);
    assert_int_equal(r.body_len, 3);
    assert_memory_equal(r.body, "a\0b", 3);
    assert_null(r.dedup_id);
    assert_null(r.attr_dedup_key);
    assert_int_equal(sqs_received_get(json_array_get(msgs, 2), &r, err, sizeof err), -1);
    assert_int_equal(sqs_received_get(NULL, &r, err, sizeof err), -1);
    json_decref(root);

    /* lone surrogates become U+FFFD; pairs and escaped backslashes stay */
    const char *sur = "{\"Messages\":[{\"MessageId\":\"i\",\"ReceiptHandle\":\"r\","
                      "\"Body\":\"x\\ud800y\\udc00z\\ud83d\\ude00\\\\ud800\\ud800\"}]}";
    assert_int_equal(sqs_parse_receive(sur, strlen(sur), &root, &msgs, err, sizeof err), 1);
    assert_int_equal(sqs_received_get(json_array_get(msgs, 0), &r, err, sizeof err), 0);
    assert_string_equal(r.body, "x\xef\xbf\xbdy\xef\xbf\xbdz\xf0\x9f\x98\x80\\ud800\xef\xbf\xbd");
    json_decref(root);
    const char *cut = "{\"Messages\":[\"\\ud800";
    assert_int_equal(sqs_parse_receive(cut, strlen(cut), &root, &msgs, err, sizeof err), -1);
}

/* sqs_conf_parse: keys, then environment, then the shared file. */
static int parse(const char *json, relay_sqs_conf *c, char *err, size_t errlen)
{
    json_t *cfg = json_loads(json, 0, NULL);
    assert_non_null(cfg);
    memset(c, 0, sizeof *c);
    int rc = sqs_conf_parse(c, cfg, "sink", "p", err, errlen);
    json_decref(cfg);
    return rc;
}

#define QURL "\"queue_url\":\"https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo\""

static void conf_chain(void **state)
{
    (void)state;
    char err[600];
    relay_sqs_conf c;
    clear_aws_env();

    /* keys win; region from the queue URL; default endpoint */
    assert_int_equal(parse("{" QURL ",\"access_key_id\":\"AKID\",\"secret_access_key\":\"S\","
                           "\"session_token\":\"T\"}", &c, err, sizeof err), 0);
    assert_string_equal(c.region, "eu-west-1");
    assert_string_equal(c.endpoint, "https://sqs.eu-west-1.amazonaws.com");
    assert_string_equal(c.queue_name, "orders.fifo");
    assert_true(c.fifo);
    assert_string_equal(c.access_key_id, "AKID");
    assert_string_equal(c.session_token, "T");
    assert_string_equal(c.creds_origin, "config keys");
    sqs_conf_free(&c);

    /* no credentials anywhere */
    assert_int_equal(parse("{" QURL "}", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.access_key_id: no AWS credentials"));
    sqs_conf_free(&c);

    /* the environment: region env beats the URL; endpoint env; key env */
    setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "SENV", 1);
    setenv("AWS_SESSION_TOKEN", "TENV", 1);
    setenv("AWS_DEFAULT_REGION", "us-west-2", 1);
    setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4566/", 1);
    assert_int_equal(parse("{" QURL "}", &c, err, sizeof err), 0);
    assert_string_equal(c.region, "us-west-2");
    assert_string_equal(c.endpoint, "http://127.0.0.1:4566");
    assert_string_equal(c.access_key_id, "AKIDENV");
    assert_string_equal(c.session_token, "TENV");
    sqs_conf_free(&c);
    setenv("AWS_REGION", "ap-southeast-2", 1);
    setenv("AWS_ENDPOINT_URL_SQS", "https://sqs.local:1", 1);
    assert_int_equal(parse("{" QURL ",\"region\":\"eu-north-1\"}", &c, err, sizeof err), 0);
    assert_string_equal(c.region, "eu-north-1");
    assert_string_equal(c.endpoint, "https://sqs.local:1");
    sqs_conf_free(&c);
    assert_int_equal(parse("{" QURL ",\"access_key_id\":\"K\"}", &c, err, sizeof err), -1);
    assert_string_equal(err, "sink.secret_access_key: required together with "
                             "sink.access_key_id");
    sqs_conf_free(&c);
    clear_aws_env();

    /* the shared credentials file, through AWS_SHARED_CREDENTIALS_FILE */
    char path[] = "/tmp/test_sqs_credsXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text = "[default]\naws_access_key_id=AKIDFILE\naws_secret_access_key=SFILE\n"
                       "[ci]\naws_access_key_id=AKIDCI\naws_secret_access_key=SCI\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
    assert_int_equal(parse("{" QURL "}", &c, err, sizeof err), 0);
    assert_string_equal(c.access_key_id, "AKIDFILE");
    assert_null(c.session_token);
    assert_non_null(strstr(c.creds_origin, "profile default"));
    sqs_conf_free(&c);
    setenv("AWS_PROFILE", "ci", 1);
    assert_int_equal(parse("{" QURL "}", &c, err, sizeof err), 0);
    assert_string_equal(c.access_key_id, "AKIDCI");
    sqs_conf_free(&c);
    assert_int_equal(parse("{" QURL ",\"profile\":\"prod\"}", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.profile: shared credentials file"));
    assert_non_null(strstr(err, "profile \"prod\" not found"));
    sqs_conf_free(&c);
    /* credentials_file is a host path: refused unless allowed */
    unsetenv("AWS_PROFILE");
    hostpath_reset();
    char cfgtext[300];
    snprintf(cfgtext, sizeof cfgtext, "{" QURL ",\"credentials_file\":\"%s\"}", path);
    assert_int_equal(parse(cfgtext, &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.credentials_file"));
    sqs_conf_free(&c);
    assert_int_equal(hostpath_allow("/tmp", err, sizeof err), 0);
    unsetenv("AWS_SHARED_CREDENTIALS_FILE");
    assert_int_equal(parse(cfgtext, &c, err, sizeof err), 0);
    assert_string_equal(c.secret_access_key, "SFILE");
    sqs_conf_free(&c);
    hostpath_reset();
    unlink(path);

    /* bad values, each naming its key */
    setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "SENV", 1);
    assert_int_equal(parse("{" QURL ",\"region\":\"mars-1\"}", &c, err, sizeof err), -1);
    assert_string_equal(err, "sink.region: \"mars-1\" (from region) is not an AWS region (e.g. "
                             "\"us-east-1\")");
    sqs_conf_free(&c);
    assert_int_equal(parse("{\"queue_url\":\"http://127.0.0.1:1/0/q\"}", &c, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "sink.region: not set"));
    sqs_conf_free(&c);
    assert_int_equal(parse("{}", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.queue_url"));
    sqs_conf_free(&c);
    assert_int_equal(parse("{\"queue_url\":\"ftp://x/1/q\"}", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.queue_url"));
    sqs_conf_free(&c);
    assert_int_equal(parse("{\"queue_url\":\"https://sqs.us-east-1.amazonaws.com/\"}", &c, err,
                           sizeof err), -1);
    assert_non_null(strstr(err, "does not end in a queue name"));
    sqs_conf_free(&c);
    assert_int_equal(parse("{" QURL ",\"endpoint_url\":\"localhost\"}", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.endpoint_url"));
    sqs_conf_free(&c);
    assert_int_equal(parse("{" QURL ",\"access_key_id\":\"A:B\",\"secret_access_key\":\"S\"}",
                           &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "sink.access_key_id"));
    sqs_conf_free(&c);
    clear_aws_env();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(regions),
        cmocka_unit_test(credentials_file),
        cmocka_unit_test(signing_inputs),
        cmocka_unit_test(id_mapping),
        cmocka_unit_test(text_validity),
        cmocka_unit_test(error_classes),
        cmocka_unit_test(batch_results),
        cmocka_unit_test(receive_parse),
        cmocka_unit_test(conf_chain),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
