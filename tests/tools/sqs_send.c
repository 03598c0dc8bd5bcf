/*
 * sqs_send.c - a plain libcurl SQS client, the reference of bench/bench_sqs.sh:
 * what the relay's SQS sink and source do, without the relay (no PostgreSQL,
 * no batching logic beyond 10 entries per request).
 *
 *   sqs_send send  <endpoint> <queue_url> <n> <concurrency> <body format>
 *       n messages in SendMessageBatch requests of 10, <concurrency> requests
 *       in flight on one curl multi handle; message k (1..n) has the body
 *       printf(<body format>, k, k, k) (k a long: use %ld) and the string
 *       attributes dedup_key ("outbox_bench:<k>:0"), subject and op, as the
 *       relay sends them. An optional 7th argument is the first k (1), so
 *       repeated calls send distinct dedup keys.
 *   sqs_send drain <endpoint> <queue_url> <n> <concurrency>
 *       ReceiveMessage (10, 1 s long poll, all attributes, as the relay asks)
 *       and DeleteMessageBatch of what came, <concurrency> receives in
 *       flight, until n messages are deleted.
 *   sqs_send dump  <endpoint> <queue_url>
 *       Receive and delete until two receives in a row come back empty;
 *       prints each message as one JSON line {"body": ..., "dedup_key": ...}
 *       (the dedup_key message attribute, null without one).
 *
 * Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, region
 * AWS_REGION (us-east-1), SigV4 by libcurl. Prints "sent|drained N messages
 * in S s" on stderr; exits 1 on any failed request.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct call {
    CURL *easy;
    struct curl_slist *hdrs;
    char *body;
    char *resp;
    size_t resp_len;
    int busy;
    int receive; /* drain: a receive (else a delete) */
} call;

static const char *endpoint, *queue_url;
static char sigv4[128], userpwd[512];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    call *c = ud;
    size_t n = size * nmemb;
    c->resp = realloc(c->resp, c->resp_len + n + 1);
    memcpy(c->resp + c->resp_len, p, n);
    c->resp_len += n;
    c->resp[c->resp_len] = '\0';
    return n;
}

static void start(CURLM *m, call *c, const char *action, json_t *body)
{
    free(c->body);
    c->body = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    curl_slist_free_all(c->hdrs);
    char target[80];
    snprintf(target, sizeof target, "X-Amz-Target: AmazonSQS.%s", action);
    c->hdrs = curl_slist_append(NULL, "Content-Type: application/x-amz-json-1.0");
    c->hdrs = curl_slist_append(c->hdrs, target);
    if (!c->easy) {
        c->easy = curl_easy_init();
        curl_easy_setopt(c->easy, CURLOPT_URL, endpoint);
        curl_easy_setopt(c->easy, CURLOPT_AWS_SIGV4, sigv4);
        curl_easy_setopt(c->easy, CURLOPT_USERPWD, userpwd);
        curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
        curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, 30000L);
    }
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->hdrs);
    curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
    c->resp_len = 0;
    c->receive = strcmp(action, "ReceiveMessage") == 0;
    curl_multi_add_handle(m, c->easy);
    c->busy = 1;
}

static json_t *attr(const char *v)
{
    return json_pack("{s:s, s:s}", "DataType", "String", "StringValue", v);
}

static json_t *send_body(long from, long count, const char *fmt)
{
    json_t *entries = json_array();
    char text[4096], key[64], id[24];
    for (long j = 0; j < count; j++) {
        long k = from + j;
        snprintf(text, sizeof text, fmt, k, k, k);
        snprintf(key, sizeof key, "outbox_bench:%ld:0", k);
        snprintf(id, sizeof id, "%ld", j);
        json_array_append_new(entries, json_pack("{s:s, s:s, s:{s:o, s:o, s:o}}", "Id", id,
                                                 "MessageBody", text, "MessageAttributes",
                                                 "dedup_key", attr(key), "subject",
                                                 attr("pgtrickle.bench.insert"), "op",
                                                 attr("insert")));
    }
    return json_pack("{s:s, s:o}", "QueueUrl", queue_url, "Entries", entries);
}

/* Wait for the next finished call; exits on a failed request. */
static call *next_done(CURLM *m)
{
    for (;;) {
        int running, q;
        curl_multi_perform(m, &running);
        CURLMsg *cm;
        while ((cm = curl_multi_info_read(m, &q)) != NULL) {
            if (cm->msg != CURLMSG_DONE)
                continue;
            call *c;
            long status = 0;
            curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&c);
            curl_easy_getinfo(cm->easy_handle, CURLINFO_RESPONSE_CODE, &status);
            curl_multi_remove_handle(m, c->easy);
            c->busy = 0;
            if (cm->data.result != CURLE_OK || status != 200) {
                fprintf(stderr, "sqs_send: request failed: %s, HTTP %ld: %.300s\n",
                        curl_easy_strerror(cm->data.result), status, c->resp ? c->resp : "");
                exit(1);
            }
            return c;
        }
        curl_multi_poll(m, NULL, 0, 100, NULL);
    }
}

static void check_batch(call *c, long expect)
{
    json_t *r = json_loads(c->resp ? c->resp : "", 0, NULL);
    json_t *ok = json_object_get(r, "Successful");
    if ((long)json_array_size(ok) != expect) {
        fprintf(stderr, "sqs_send: %zu of %ld entries succeeded: %.300s\n", json_array_size(ok),
                expect, c->resp);
        exit(1);
    }
    json_decref(r);
}

static int cmd_send(CURLM *m, call *calls, int conc, long n, const char *fmt, long first)
{
    long next = first, done = 0;
    n += first - 1; /* send k = first..n */
    long total = n - first + 1;
    long *count = calloc((size_t)conc, sizeof *count);
    double t0 = now_s();
    while (done < total) {
        for (int i = 0; i < conc && next <= n; i++) {
            if (calls[i].busy)
                continue;
            count[i] = n - next + 1 < 10 ? n - next + 1 : 10;
            start(m, &calls[i], "SendMessageBatch", send_body(next, count[i], fmt));
            next += count[i];
        }
        call *c = next_done(m);
        check_batch(c, count[c - calls]);
        done += count[c - calls];
    }
    fprintf(stderr, "sent %ld messages in %.3f s\n", total, now_s() - t0);
    free(count);
    return 0;
}

static json_t *receive_body(void)
{
    /* the attributes the relay's source asks for (it maps them to inbox columns) */
    return json_pack("{s:s, s:i, s:i, s:[s], s:[s], s:[s]}", "QueueUrl", queue_url,
                     "MaxNumberOfMessages", 10, "WaitTimeSeconds", 1, "MessageAttributeNames",
                     "All", "MessageSystemAttributeNames", "All", "AttributeNames", "All");
}

static int cmd_drain(CURLM *m, call *calls, int conc, long n)
{
    /* calls[0..conc): receives; calls[conc..2conc): deletes */
    long deleted = 0;
    long *count = calloc((size_t)(2 * conc), sizeof *count);
    double t0 = now_s();
    for (int i = 0; i < conc; i++)
        start(m, &calls[i], "ReceiveMessage", receive_body());
    while (deleted < n) {
        call *c = next_done(m);
        long i = c - calls;
        if (!c->receive) {
            check_batch(c, count[i]);
            deleted += count[i];
            continue;
        }
        json_t *r = json_loads(c->resp && c->resp_len ? c->resp : "{}", 0, NULL);
        json_t *msgs = json_object_get(r, "Messages");
        if (json_array_size(msgs) > 0) {
            call *d = NULL;
            while (!d) {
                for (int k = conc; k < 2 * conc && !d; k++)
                    if (!calls[k].busy)
                        d = &calls[k];
                if (!d) {
                    call *f = next_done(m);
                    long fi = f - calls;
                    if (f->receive) {
                        fprintf(stderr, "sqs_send: unexpected receive\n");
                        exit(1);
                    }
                    check_batch(f, count[fi]);
                    deleted += count[fi];
                }
            }
            json_t *entries = json_array();
            size_t j;
            json_t *msg;
            json_array_foreach(msgs, j, msg) {
                char id[24];
                snprintf(id, sizeof id, "%zu", j);
                json_array_append_new(entries, json_pack("{s:s, s:O}", "Id", id, "ReceiptHandle",
                                                         json_object_get(msg, "ReceiptHandle")));
            }
            count[d - calls] = (long)json_array_size(msgs);
            start(m, d, "DeleteMessageBatch",
                  json_pack("{s:s, s:o}", "QueueUrl", queue_url, "Entries", entries));
        }
        json_decref(r);
        start(m, c, "ReceiveMessage", receive_body());
    }
    fprintf(stderr, "drained %ld messages in %.3f s\n", n, now_s() - t0);
    free(count);
    return 0;
}

/* Receive (one call at a time) and delete until two receives in a row are
 * empty, printing each message's body and dedup_key attribute. */
static int cmd_dump(CURLM *m, call *calls)
{
    long dumped = 0;
    for (int empty = 0; empty < 2;) {
        start(m, &calls[0], "ReceiveMessage", receive_body());
        call *c = next_done(m);
        json_t *r = json_loads(c->resp && c->resp_len ? c->resp : "{}", 0, NULL);
        json_t *msgs = json_object_get(r, "Messages"), *msg;
        size_t j;
        if (json_array_size(msgs) == 0) {
            empty++;
            json_decref(r);
            continue;
        }
        empty = 0;
        json_t *entries = json_array();
        json_array_foreach(msgs, j, msg) {
            json_t *key = json_object_get(json_object_get(json_object_get(msg, "MessageAttributes"),
                                                          "dedup_key"),
                                          "StringValue");
            json_t *line = json_pack("{s:O, s:O}", "body", json_object_get(msg, "Body"), "dedup_key",
                                     key ? key : json_null());
            char *text = json_dumps(line, JSON_COMPACT);
            printf("%s\n", text);
            free(text);
            json_decref(line);
            char id[24];
            snprintf(id, sizeof id, "%zu", j);
            json_array_append_new(entries, json_pack("{s:s, s:O}", "Id", id, "ReceiptHandle",
                                                     json_object_get(msg, "ReceiptHandle")));
        }
        long count = (long)json_array_size(msgs);
        json_decref(r);
        start(m, &calls[1], "DeleteMessageBatch",
              json_pack("{s:s, s:o}", "QueueUrl", queue_url, "Entries", entries));
        check_batch(next_done(m), count);
        dumped += count;
    }
    fflush(stdout);
    fprintf(stderr, "dumped %ld messages\n", dumped);
    return 0;
}

int main(int argc, char **argv)
{
    int dump = argc >= 4 && strcmp(argv[1], "dump") == 0;
    if (!dump && (argc < 6 || (strcmp(argv[1], "send") == 0 && argc < 7))) {
        fprintf(stderr, "usage: sqs_send send <endpoint> <queue_url> <n> <concurrency> <body format> [first]\n"
                        "       sqs_send drain <endpoint> <queue_url> <n> <concurrency>\n"
                        "       sqs_send dump <endpoint> <queue_url>\n");
        return 2;
    }
    endpoint = argv[2];
    queue_url = argv[3];
    long n = dump ? 0 : atol(argv[4]);
    int conc = dump ? 1 : atoi(argv[5]);
    const char *region = getenv("AWS_REGION") ? getenv("AWS_REGION") : "us-east-1";
    snprintf(sigv4, sizeof sigv4, "aws:amz:%s:sqs", region);
    snprintf(userpwd, sizeof userpwd, "%s:%s",
             getenv("AWS_ACCESS_KEY_ID") ? getenv("AWS_ACCESS_KEY_ID") : "x",
             getenv("AWS_SECRET_ACCESS_KEY") ? getenv("AWS_SECRET_ACCESS_KEY") : "x");
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *m = curl_multi_init();
    call *calls = calloc((size_t)(2 * conc), sizeof *calls);
    int rc = dump                           ? cmd_dump(m, calls)
             : strcmp(argv[1], "send") == 0 ? cmd_send(m, calls, conc, n, argv[6],
                                                       argc > 7 ? atol(argv[7]) : 1)
                                            : cmd_drain(m, calls, conc, n);
    for (int i = 0; i < 2 * conc; i++) {
        if (calls[i].easy) {
            if (calls[i].busy)
                curl_multi_remove_handle(m, calls[i].easy);
            curl_easy_cleanup(calls[i].easy);
        }
        curl_slist_free_all(calls[i].hdrs);
        free(calls[i].body);
        free(calls[i].resp);
    }
    free(calls);
    curl_multi_cleanup(m);
    curl_global_cleanup();
    return rc;
}
