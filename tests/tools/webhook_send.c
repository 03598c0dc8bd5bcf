/*
 * webhook_send.c - send many POSTs at once, for the webhook receiver tests.
 *
 *   webhook_send --url URL --count N [--concurrency C] [--key-prefix P]
 *                [--header "Name: value"]... [--timeout-ms T]
 *
 * Request i (0-based) has the body {"i":i} and, with --key-prefix, the
 * header "Idempotency-Key: P-i". Up to C requests (default N: all of them)
 * are open at the same time on one libcurl multi handle, each on its own
 * connection. Prints one JSON object counting the outcomes by HTTP status,
 * e.g. {"200":1000}, with "error" for transfers that got no response.
 * Exit status 0 when every transfer got a response.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct xfer {
    CURL *easy;
    struct curl_slist *hdrs;
    char body[64];
} xfer;

static size_t discard(char *p, size_t size, size_t nmemb, void *ud)
{
    (void)p;
    (void)ud;
    return size * nmemb;
}

int main(int argc, char **argv)
{
    const char *url = NULL, *prefix = NULL;
    long count = 0, concurrency = 0, timeout_ms = 60000;
    struct curl_slist *extra = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--url") == 0)
            url = argv[i + 1];
        else if (strcmp(argv[i], "--count") == 0)
            count = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--concurrency") == 0)
            concurrency = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--key-prefix") == 0)
            prefix = argv[i + 1];
        else if (strcmp(argv[i], "--header") == 0)
            extra = curl_slist_append(extra, argv[i + 1]);
        else if (strcmp(argv[i], "--timeout-ms") == 0)
            timeout_ms = atol(argv[i + 1]);
        else {
            fprintf(stderr, "webhook_send: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!url || count <= 0) {
        fprintf(stderr, "usage: webhook_send --url URL --count N [--concurrency C] "
                        "[--key-prefix P] [--header 'Name: value']... [--timeout-ms T]\n");
        return 2;
    }
    if (concurrency <= 0 || concurrency > count)
        concurrency = count;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURLM *multi = curl_multi_init();
    curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, concurrency);
    curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, concurrency);
    xfer *x = calloc((size_t)count, sizeof *x);
    json_t *counts = json_object();
    long next = 0, active = 0, errors = 0;
    while (next < count || active > 0) {
        while (active < concurrency && next < count) {
            xfer *t = &x[next];
            snprintf(t->body, sizeof t->body, "{\"i\":%ld}", next);
            t->hdrs = curl_slist_append(NULL, "Content-Type: application/json");
            t->hdrs = curl_slist_append(t->hdrs, "Expect:");
            for (struct curl_slist *h = extra; h; h = h->next)
                t->hdrs = curl_slist_append(t->hdrs, h->data);
            if (prefix) {
                char line[256];
                snprintf(line, sizeof line, "Idempotency-Key: %s-%ld", prefix, next);
                t->hdrs = curl_slist_append(t->hdrs, line);
            }
            t->easy = curl_easy_init();
            curl_easy_setopt(t->easy, CURLOPT_URL, url);
            curl_easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
            curl_easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->hdrs);
            curl_easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, discard);
            curl_easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, timeout_ms);
            curl_easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(t->easy, CURLOPT_FORBID_REUSE, 1L); /* a connection each */
            curl_easy_setopt(t->easy, CURLOPT_PRIVATE, t);
            curl_multi_add_handle(multi, t->easy);
            next++;
            active++;
        }
        int running;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int q;
        while ((m = curl_multi_info_read(multi, &q)) != NULL) {
            if (m->msg != CURLMSG_DONE)
                continue;
            xfer *t = NULL;
            curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
            long status = 0;
            char key[16];
            if (m->data.result == CURLE_OK) {
                curl_easy_getinfo(m->easy_handle, CURLINFO_RESPONSE_CODE, &status);
                snprintf(key, sizeof key, "%ld", status);
            } else {
                snprintf(key, sizeof key, "error");
                errors++;
            }
            json_t *c = json_object_get(counts, key);
            json_object_set_new(counts, key, json_integer(c ? json_integer_value(c) + 1 : 1));
            curl_multi_remove_handle(multi, m->easy_handle);
            curl_easy_cleanup(m->easy_handle);
            curl_slist_free_all(t->hdrs);
            active--;
        }
        if (active > 0)
            curl_multi_poll(multi, NULL, 0, 100, NULL);
    }
    char *out = json_dumps(counts, JSON_COMPACT | JSON_SORT_KEYS);
    puts(out);
    free(out);
    json_decref(counts);
    free(x);
    curl_slist_free_all(extra);
    curl_multi_cleanup(multi);
    curl_global_cleanup();
    return errors ? 1 : 0;
}
