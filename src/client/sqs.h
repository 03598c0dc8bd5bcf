/*
 * client/sqs.h - what the Amazon SQS sink and source share: the AWS client
 * basics (region, endpoint, credentials), the JSON protocol over libcurl with
 * SigV4 signing, error classification, and the parsers of SQS responses.
 *
 * Protocol.  The SQS JSON protocol (AWS "awsJson1_0"): every call is
 *   POST {endpoint}/   Content-Type: application/x-amz-json-1.0
 *                      X-Amz-Target: AmazonSQS.<Action>
 * with a JSON body that names the queue by "QueueUrl". Requests always go
 * to the endpoint, never to the queue URL's host (a queue URL of an
 * emulator may not even resolve). libcurl signs each request with AWS
 * Signature Version 4 (CURLOPT_AWS_SIGV4 "aws:amz:<region>:sqs" and the key
 * pair as CURLOPT_USERPWD); a session token travels in X-Amz-Security-Token,
 * which SigV4 signs along with the other x-amz-* headers.
 *
 * Connection keys (in the pipeline's "sink" or "source" object):
 *   queue_url          https://sqs.<region>.amazonaws.com/<account>/<name> (required);
 *                      a name ending in ".fifo" is a FIFO queue
 *   region             else $AWS_REGION, else $AWS_DEFAULT_REGION, else the
 *                      region in the queue URL's host (sqs.<region>.amazonaws.com)
 *   endpoint_url       else $AWS_ENDPOINT_URL_SQS, else $AWS_ENDPOINT_URL,
 *                      else https://sqs.<region>.amazonaws.com (.com.cn in China)
 *   access_key_id, secret_access_key, session_token
 *                      the credentials (use ${env:NAME} / ${file:/path}); else
 *                      $AWS_ACCESS_KEY_ID / $AWS_SECRET_ACCESS_KEY /
 *                      $AWS_SESSION_TOKEN; else the shared credentials file
 *   credentials_file   the shared credentials file (a host path: --allow-path);
 *                      else $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials
 *   profile            its profile; else $AWS_PROFILE, else "default"
 *                      (naming credentials_file or profile in the config
 *                      skips the environment's keys, as the AWS SDKs do)
 *   timeout_ms         one request's time limit (10000; long polls add their wait)
 *   tls_ca             CA bundle for https endpoints (a host path)
 * Credentials are resolved once, when the pipeline is loaded; they are never
 * logged, and /status only says where they came from.
 *
 * Errors (AWS JSON protocol: the body's "__type", e.g.
 * "com.amazonaws.sqs#QueueDoesNotExist", and "message"):
 *   SQS_RETRY    transport errors, HTTP 5xx, 429, throttling codes: retried
 *                with backoff
 *   SQS_FATAL    the queue does not exist, access denied, invalid or expired
 *                credentials, bad signature: nothing can succeed until an
 *                operator acts (the pipeline is degraded, retried slowly)
 *   SQS_INVALID  any other 4xx: this request was refused (e.g. one message
 *                the queue does not take)
 */
#ifndef RELAY_CLIENT_SQS_H
#define RELAY_CLIENT_SQS_H

#include <curl/curl.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The connection keys, for a backend's cfg_known_keys() list. */
#define RELAY_SQS_CONN_KEYS                                                                    \
    "queue_url", "region", "endpoint_url", "access_key_id", "secret_access_key",             \
        "session_token", "credentials_file", "profile", "timeout_ms", "tls_ca"

/* SQS limits (AWS SQS Developer Guide, "Quotas"). */
#define SQS_MAX_BATCH_ENTRIES 10
#define SQS_DEFAULT_MAX_MESSAGE_BYTES 262144 /* 256 KiB per message and per batch */
#define SQS_MAX_ID_LEN 128                   /* MessageDeduplicationId, MessageGroupId */

typedef struct relay_sqs_conf {
    const char *path;          /* "sink" or "source", for messages */
    char *pipeline;            /* for logs */
    char *queue_url;
    char *queue_name;          /* the last path segment of queue_url */
    int fifo;                  /* queue_name ends in ".fifo" */
    char *region;
    char *endpoint;            /* no trailing slash */
    char *access_key_id;
    char *secret_access_key;
    char *session_token;       /* NULL when none */
    char *creds_origin;        /* where the credentials came from (no secret) */
    int64_t timeout_ms;
    char *tls_ca;
} relay_sqs_conf;

/* Parse the connection keys of `cfg` (path "sink"/"source") and resolve the
 * region, endpoint and credentials as described above. Returns 0, or -1
 * with err naming the key. `c` must be zeroed; free with sqs_conf_free. */
int sqs_conf_parse(relay_sqs_conf *c, const json_t *cfg, const char *path, const char *pipeline,
                   char *err, size_t errlen);
void sqs_conf_free(relay_sqs_conf *c);

/* ---- pure functions (unit-tested) ---------------------------------------- */

/* 1 when `r` looks like an AWS region ("us-east-1", "eu-central-2",
 * "us-gov-west-1", "cn-north-1"): lower-case words joined by '-', ending in
 * a number. */
int sqs_region_valid(const char *r);

/* The region named by a queue URL's host "sqs.<region>.amazonaws.com[.cn]"
 * or "<region>.queue.amazonaws.com" into out. Returns 0, or -1 when the URL
 * names none (e.g. an emulator on 127.0.0.1). */
int sqs_region_from_url(const char *url, char *out, size_t outlen);

/* The default endpoint of a region: "https://sqs.<region>.amazonaws.com"
 * (".amazonaws.com.cn" for cn-* regions). Returns malloc'd text. */
char *sqs_default_endpoint(const char *region);

/* Find `profile` in the text of a shared credentials file (INI: "[name]"
 * sections, "key = value" lines, '#'/';' comments) and copy its
 * aws_access_key_id, aws_secret_access_key and aws_session_token (malloc'd;
 * the token NULL when absent). Returns 0; -1 with err when the profile is
 * missing, -2 when it lacks a key. */
int sqs_credentials_parse(const char *text, const char *profile, char **key_id, char **secret,
                          char **token, char *err, size_t errlen);

/* CURLOPT_AWS_SIGV4 parameter for a region: "aws:amz:<region>:sqs". */
void sqs_sigv4_param(const char *region, char *out, size_t outlen);

/* The headers of one call: Content-Type, X-Amz-Target: AmazonSQS.<action>,
 * and X-Amz-Security-Token when `session_token` is set; libcurl signs them
 * all. (No "Expect:" override: libcurl would sign it as an empty header
 * that is never sent; it only asks for 100-continue above 1 MiB anyway.)
 * Returns a list to free with curl_slist_free_all,
 * or NULL when out of memory. */
struct curl_slist *sqs_headers(const char *action, const char *session_token);

/* An id for MessageDeduplicationId / MessageGroupId: `in` itself when it is
 * 1..128 bytes of SQS's alphabet (ASCII letters, digits and punctuation),
 * else "sha256-" + the lower-case hex SHA-256 of its bytes (71 characters),
 * so every key maps to one stable, valid id. out needs SQS_MAX_ID_LEN + 1
 * bytes. Returns 0, or -1 when libcrypto fails. */
int sqs_map_id(const char *in, size_t len, char out[SQS_MAX_ID_LEN + 1]);

/* 1 when `p[0..len)` is text SQS takes in a message body or attribute:
 * UTF-8 of the characters #x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
 * #x10000-#x10FFFF (no NUL, no other control characters). */
int sqs_text_valid(const char *p, size_t len);

typedef enum { SQS_OK = 0, SQS_RETRY, SQS_FATAL, SQS_INVALID } sqs_outcome;

/* Classify a completed HTTP exchange: `status` and the response body (may
 * be empty or not JSON). The error code (the part of "__type" after '#', or
 * the HTTP status as text) and message go to code/msg, printable ASCII. */
sqs_outcome sqs_classify(long status, const char *body, size_t len, char *code, size_t codelen,
                         char *msg, size_t msglen);

/* Outcome of one entry of a batch call (SendMessageBatch,
 * DeleteMessageBatch, ChangeMessageVisibilityBatch). */
typedef enum {
    SQS_ENTRY_MISSING = 0, /* the response did not mention it */
    SQS_ENTRY_OK,
    SQS_ENTRY_SENDER_FAULT, /* Failed, "SenderFault": true: this entry is refused */
    SQS_ENTRY_FAILED,       /* Failed, not the sender's fault: retry it */
} sqs_entry_state;

typedef struct sqs_entry_result {
    sqs_entry_state state;
    char code[64];
    char message[256];
} sqs_entry_result;

/* Parse a batch call's 200 response {"Successful":[{"Id"}...],
 * "Failed":[{"Id","Code","Message","SenderFault"}...]} where the entries were
 * sent with the Ids "0".."n-1": res[i] gets entry i's outcome (res must hold
 * n zeroed entries). Unknown ids are ignored. Returns 0, or -1 with err when
 * the body is not such an object. */
int sqs_parse_batch_result(const char *body, size_t len, sqs_entry_result *res, size_t n,
                           char *err, size_t errlen);

/* One message of a ReceiveMessage response; every pointer borrows from the
 * parsed response, NULL (length 0) when absent. Strings may hold NUL bytes
 * (a JSON "\u0000"): use the lengths. */
typedef struct sqs_received {
    const char *message_id;
    const char *receipt_handle;
    const char *body;
    size_t body_len;
    const char *dedup_id;       /* attribute MessageDeduplicationId (FIFO) */
    size_t dedup_id_len;
    const char *group_id;       /* attribute MessageGroupId (FIFO) */
    size_t group_id_len;
    const char *attr_dedup_key; /* message attribute dedup_key */
    size_t attr_dedup_key_len;
    const char *attr_event_type; /* message attribute event_type */
    size_t attr_event_type_len;
    const char *attr_traceparent; /* message attribute traceparent */
    size_t attr_traceparent_len;
} sqs_received;

/* Parse a ReceiveMessage response (an empty body means no message; the
 * emulators send one). On success *root owns the parse (json_decref it),
 * *msgs its "Messages" array (NULL when none). Returns the number of
 * messages, or -1 with err. Parsed with JSON_ALLOW_NUL; a lone UTF-16
 * surrogate escape (which SQS never sends, but emulators pass on) is read
 * as U+FFFD rather than failing the whole response. */
int sqs_parse_receive(const char *body, size_t len, json_t **root, json_t **msgs, char *err,
                      size_t errlen);

/* Extract message `m` (an element of *msgs). Returns 0, or -1 with err when
 * it lacks MessageId, ReceiptHandle or Body. */
int sqs_received_get(const json_t *m, sqs_received *out, char *err, size_t errlen);

/* ---- calls over libcurl multi ----------------------------------------------- */

/* One request: its easy handle (reused), headers, body and response. */
typedef struct sqs_call {
    CURL *easy;
    struct curl_slist *hdrs;
    relay_buf req;             /* the JSON body to send */
    relay_buf resp;            /* the response body (bounded, see sqs.c) */
    char errbuf[CURL_ERROR_SIZE];
    int busy;                  /* added to the multi handle */
    int done;                  /* finished, answer not taken yet */
    CURLcode res;              /* when finished */
    long status;               /* HTTP status when finished, 0 for a transport error */
    void *user;                /* the caller's */
} sqs_call;

typedef struct relay_sqs_client {
    const relay_sqs_conf *conf; /* borrowed */
    CURLM *multi;
    char sigv4[96];
    char *userpwd;
} relay_sqs_client;

/* Global libcurl initialisation (once). Returns 0, or -1 with err. */
int sqs_curl_init(char *err, size_t errlen);

/* Create the multi handle (keeping up to max_conns connections). Returns 0,
 * or -1 with err. */
int sqs_client_open(relay_sqs_client *c, const relay_sqs_conf *conf, long max_conns, char *err,
                    size_t errlen);
/* Remove and free the multi handle (calls must no longer be busy or be
 * abandoned with sqs_call_abandon first). */
void sqs_client_close(relay_sqs_client *c);

/* Start `call` for `action` with the body in call->req. extra_timeout_ms is
 * added to the configured timeout (a long poll's wait). Returns 0, or -1
 * with err. */
int sqs_call_start(relay_sqs_client *c, sqs_call *call, const char *action,
                   int64_t extra_timeout_ms, char *err, size_t errlen);

/* Drive the transfers for up to timeout_ms, returning as soon as a call
 * finished. A finished call gets busy = 0 and done = 1, and keeps its
 * answer until its owner takes it (sqs_call_take) or starts it again: the
 * sink's, the source's receive, delete and metadata calls share one multi
 * handle, and each owner only looks at its own calls. Returns the number of
 * calls that finished (0 when none did in time), or -1 with err when
 * libcurl's multi interface failed. */
int sqs_client_run(relay_sqs_client *c, int timeout_ms, char *err, size_t errlen);

/* 1 when `call` finished and its answer was not taken yet; clears the flag
 * (the answer stays readable until the call is started again). */
int sqs_call_take(sqs_call *call);

/* Classify a finished call (transport errors are SQS_RETRY); code/msg as
 * for sqs_classify, with the curl error for a transport failure. */
sqs_outcome sqs_call_outcome(const sqs_call *call, char *code, size_t codelen, char *msg,
                             size_t msglen);

/* Take a busy call off the multi handle without an answer. */
void sqs_call_abandon(relay_sqs_client *c, sqs_call *call);
/* Free a call's handle and buffers (abandon it first when busy). */
void sqs_call_free(relay_sqs_client *c, sqs_call *call);

/* Run one call to completion (GetQueueAttributes, the batch deletes):
 * start it and drive the multi handle until it finished. Returns its
 * outcome; a failure text goes to err ("<Action>: <code>: <message>"). */
sqs_outcome sqs_call_sync(relay_sqs_client *c, sqs_call *call, const char *action, char *err,
                          size_t errlen);

/* GetQueueAttributes for ApproximateNumberOfMessages, ...NotVisible and
 * VisibilityTimeout. Returns the outcome; on SQS_OK the numbers are set (-1
 * when the answer lacked one). */
sqs_outcome sqs_queue_attributes(relay_sqs_client *c, sqs_call *call, int64_t *visible,
                                 int64_t *not_visible, int64_t *visibility_timeout, char *err,
                                 size_t errlen);

/* Append `"queue_url":...,"region":...,"endpoint":...,"fifo":...,
 * "credentials":...` (no braces) for /status. */
void sqs_conf_describe(const relay_sqs_conf *c, relay_buf *out);

#endif
