/*
 * client/sqs.c - the Amazon SQS client shared by the SQS sink and source
 * (see client/sqs.h for the protocol, the keys and the error classes).
 *
 * Layers, top down:
 *   sqs_conf_parse      the connection keys; region, endpoint and the
 *                       credentials chain resolved once, at config time,
 *                       so a pipeline without usable credentials is one
 *                       clear config error naming the key
 *   sqs_call_*          one JSON-protocol request on a reusable easy handle;
 *                       the caller's multi handle runs many at once
 *   sqs_classify,       pure functions over response bytes, unit-tested and
 *   sqs_parse_*         fuzzed (tests/unit/test_sqs.c, tests/fuzz/)
 * libcurl does HTTP, TLS and the SigV4 signature; jansson parses responses.
 */
#include "client/sqs.h"

#include <ctype.h>
#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config.h"
#include "log.h"

#ifndef RELAY_VERSION
#define RELAY_VERSION "unknown"
#endif

#define DEFAULT_TIMEOUT_MS 10000
#define MAX_CREDENTIALS_FILE (1024 * 1024)
#define MAX_RESPONSE_BYTES (64 * 1024 * 1024) /* 10 messages of up to 1 MiB, escaped */

/* ---- pure functions ----------------------------------------------------- */

int sqs_region_valid(const char *r)
{
    /* word(-word)*-digits, words of lower-case letters */
    if (!r || !islower((unsigned char)*r))
        return 0;
    int words = 0;
    const char *p = r;
    for (;;) {
        const char *start = p;
        while (islower((unsigned char)*p))
            p++;
        if (p == start)
            break;
        words++;
        if (*p != '-')
            return 0;
        p++;
    }
    if (words < 2 || !isdigit((unsigned char)*p))
        return 0;
    while (isdigit((unsigned char)*p))
        p++;
    return *p == '\0' && p - r < 64;
}

/* The host part of an http(s) URL into out. Returns 0, or -1. */
static int url_host(const char *url, char *out, size_t outlen)
{
    const char *p = strstr(url, "://");
    if (!p)
        return -1;
    p += 3;
    const char *at = NULL;
    for (const char *q = p; *q && *q != '/'; q++)
        if (*q == '@')
            at = q;
    if (at)
        p = at + 1;
    size_t n = strcspn(p, ":/?#");
    if (n == 0 || n >= outlen)
        return -1;
    memcpy(out, p, n);
    out[n] = '\0';
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)out[i]);
    return 0;
}

int sqs_region_from_url(const char *url, char *out, size_t outlen)
{
    char host[256];
    if (!url || url_host(url, host, sizeof host) < 0)
        return -1;
    const char *region = NULL;
    size_t len = 0;
    if (strncmp(host, "sqs.", 4) == 0) {
        region = host + 4;
        len = strcspn(region, ".");
        if (strncmp(region + len, ".amazonaws.com", 14) != 0)
            return -1;
    } else {
        /* legacy: <region>.queue.amazonaws.com */
        len = strcspn(host, ".");
        if (strncmp(host + len, ".queue.amazonaws.com", 20) != 0)
            return -1;
        region = host;
    }
    if (len == 0 || len >= outlen)
        return -1;
    memcpy(out, region, len);
    out[len] = '\0';
    return sqs_region_valid(out) ? 0 : -1;
}

char *sqs_default_endpoint(const char *region)
{
    relay_buf b = {0};
    buf_printf(&b, "https://sqs.%s.amazonaws.com%s", region,
               strncmp(region, "cn-", 3) == 0 ? ".cn" : "");
    return buf_steal(&b);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

int sqs_credentials_parse(const char *text, const char *profile, char **key_id, char **secret,
                          char **token, char *err, size_t errlen)
{
    *key_id = *secret = *token = NULL;
    char *copy = xstrdup(text);
    int in_profile = 0, found = 0;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *l = trim(line);
        if (*l == '\0' || *l == '#' || *l == ';')
            continue;
        if (*l == '[') {
            char *end = strchr(l, ']');
            if (!end)
                continue;
            *end = '\0';
            in_profile = strcmp(trim(l + 1), profile) == 0;
            found |= in_profile;
            continue;
        }
        char *eq = strchr(l, '=');
        if (!in_profile || !eq)
            continue;
        *eq = '\0';
        char *k = trim(l), *v = trim(eq + 1);
        char **dst = strcmp(k, "aws_access_key_id") == 0       ? key_id
                     : strcmp(k, "aws_secret_access_key") == 0 ? secret
                     : strcmp(k, "aws_session_token") == 0     ? token
                                                               : NULL;
        if (dst && *v) {
            free(*dst);
            *dst = xstrdup(v);
        }
    }
    free(copy);
    if (found && *key_id && *secret)
        return 0;
    if (!found)
        snprintf(err, errlen, "profile \"%s\" not found", profile);
    else
        snprintf(err, errlen, "profile \"%s\" has no %s", profile,
                 *key_id ? "aws_secret_access_key" : "aws_access_key_id");
    free(*key_id);
    free(*secret);
    free(*token);
    *key_id = *secret = *token = NULL;
    return found ? -2 : -1;
}

void sqs_sigv4_param(const char *region, char *out, size_t outlen)
{
    snprintf(out, outlen, "aws:amz:%s:sqs", region);
}

struct curl_slist *sqs_headers(const char *action, const char *session_token)
{
    relay_buf line = {0};
    struct curl_slist *list = NULL, *next;
    int ok = 1;
#define ADD(s)                                                                                 \
    do {                                                                                       \
        next = ok ? curl_slist_append(list, (s)) : NULL;                                       \
        if (next)                                                                              \
            list = next;                                                                       \
        else                                                                                   \
            ok = 0;                                                                            \
    } while (0)
    ADD("Content-Type: application/x-amz-json-1.0");
    buf_printf(&line, "X-Amz-Target: AmazonSQS.%s", action);
    ADD(line.data);
    if (session_token) {
        buf_clear(&line);
        buf_printf(&line, "X-Amz-Security-Token: %s", session_token);
        ADD(line.data);
    }
#undef ADD
    buf_free(&line);
    if (!ok) {
        curl_slist_free_all(list);
        return NULL;
    }
    return list;
}

static int sqs_id_char(unsigned char c)
{
    return c > 0x20 && c < 0x7f; /* letters, digits, punctuation */
}

int sqs_map_id(const char *in, size_t len, char out[SQS_MAX_ID_LEN + 1])
{
    int plain = len >= 1 && len <= SQS_MAX_ID_LEN;
    for (size_t i = 0; plain && i < len; i++)
        plain = sqs_id_char((unsigned char)in[i]);
    if (plain) {
        memcpy(out, in, len);
        out[len] = '\0';
        return 0;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(in, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != 32)
        return -1;
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "sha256-", 7);
    for (unsigned int i = 0; i < mdlen; i++) {
        out[7 + 2 * i] = hex[md[i] >> 4];
        out[8 + 2 * i] = hex[md[i] & 15];
    }
    out[7 + 2 * mdlen] = '\0';
    return 0;
}

int sqs_text_valid(const char *p, size_t len)
{
    const unsigned char *s = (const unsigned char *)p;
    for (size_t i = 0; i < len;) {
        if (s[i] < 0x80) {
            if (s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r')
                return 0;
            i++;
            continue;
        }
        size_t l = utf8_seq_len(s + i, len - i);
        if (l == 0)
            return 0;
        /* U+FFFE and U+FFFF (EF BF BE / EF BF BF) are not XML characters */
        if (l == 3 && s[i] == 0xEF && s[i + 1] == 0xBF && s[i + 2] >= 0xBE)
            return 0;
        i += l;
    }
    return 1;
}

/* Copy a JSON string value as printable ASCII (other bytes become '?'). */
static void copy_printable(char *out, size_t outlen, const char *s, size_t n)
{
    if (outlen == 0)
        return;
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < outlen; i++) {
        unsigned char c = (unsigned char)s[i];
        out[k++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[k] = '\0';
}

static void copy_json_str(char *out, size_t outlen, const json_t *v)
{
    if (json_is_string(v))
        copy_printable(out, outlen, json_string_value(v), json_string_length(v));
    else if (outlen)
        out[0] = '\0';
}

/* Error codes after which nothing can succeed until an operator acts. */
static int fatal_code(const char *code)
{
    static const char *const fatal[] = {
        "QueueDoesNotExist", "NonExistentQueue", "AWS.SimpleQueueService.NonExistentQueue",
        "AccessDenied", "AccessDeniedException", "InvalidClientTokenId",
        "UnrecognizedClientException", "SignatureDoesNotMatch", "InvalidSignatureException",
        "IncompleteSignature", "IncompleteSignatureException", "MissingAuthenticationToken",
        "MissingAuthenticationTokenException", "ExpiredToken", "ExpiredTokenException",
        "InvalidSecurity", "OptInRequired", "RequestExpired", "KmsAccessDenied", "KmsDisabled",
        "KmsNotFound", "KmsInvalidState", "KmsInvalidKeyUsage", "InvalidAddress",
        NULL,
    };
    for (size_t i = 0; fatal[i]; i++)
        if (strcmp(code, fatal[i]) == 0)
            return 1;
    return 0;
}

static int throttle_code(const char *code)
{
    static const char *const retry[] = {
        "ThrottlingException", "Throttling", "RequestThrottled", "KmsThrottled",
        "ServiceUnavailable", "InternalFailure", "InternalError", "RequestTimeout",
        "OverLimit", "SlowDown", NULL,
    };
    for (size_t i = 0; retry[i]; i++)
        if (strcmp(code, retry[i]) == 0)
            return 1;
    return 0;
}

sqs_outcome sqs_classify(long status, const char *body, size_t len, char *code, size_t codelen,
                         char *msg, size_t msglen)
{
    if (codelen)
        code[0] = '\0';
    if (msglen)
        msg[0] = '\0';
    if (status >= 200 && status <= 299)
        return SQS_OK;
    json_t *root = len ? json_loadb(body, len, JSON_ALLOW_NUL, NULL) : NULL;
    if (json_is_object(root)) {
        const json_t *t = json_object_get(root, "__type");
        if (!json_is_string(t))
            t = json_object_get(root, "code");
        if (json_is_string(t)) {
            const char *s = json_string_value(t);
            size_t n = json_string_length(t), from = 0;
            for (size_t i = 0; i < n; i++)
                if (s[i] == '#')
                    from = i + 1;
            copy_printable(code, codelen, s + from, n - from);
        }
        const json_t *m = json_object_get(root, "message");
        if (!m)
            m = json_object_get(root, "Message");
        copy_json_str(msg, msglen, m);
    } else if (len && msglen) {
        copy_printable(msg, msglen, body, len < 200 ? len : 200);
    }
    json_decref(root);
    if (codelen && code[0] == '\0')
        snprintf(code, codelen, "HTTP %ld", status);
    if (codelen && fatal_code(code))
        return SQS_FATAL;
    if (status == 401 || status == 403)
        return SQS_FATAL;
    if (status >= 500 || status == 429 || status < 200 || (codelen && throttle_code(code)))
        return SQS_RETRY;
    if (status >= 400)
        return SQS_INVALID;
    return SQS_RETRY; /* 3xx: redirects are not followed */
}

/* The entry index of an Id "0".."n-1", or -1. */
static long entry_index(const json_t *id, size_t n)
{
    if (!json_is_string(id))
        return -1;
    const char *s = json_string_value(id);
    if (json_string_length(id) == 0 || json_string_length(id) > 4)
        return -1;
    long v = 0;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p))
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (json_string_length(id) > 1 && s[0] == '0')
        return -1;
    return (size_t)v < n ? v : -1;
}

int sqs_parse_batch_result(const char *body, size_t len, sqs_entry_result *res, size_t n,
                           char *err, size_t errlen)
{
    json_error_t je;
    json_t *root = json_loadb(body, len, JSON_ALLOW_NUL, &je);
    if (!json_is_object(root)) {
        snprintf(err, errlen, "batch response is not a JSON object%s%s", root ? "" : ": ",
                 root ? "" : je.text);
        json_decref(root);
        return -1;
    }
    const json_t *ok = json_object_get(root, "Successful");
    const json_t *failed = json_object_get(root, "Failed");
    if ((ok && !json_is_array(ok)) || (failed && !json_is_array(failed))) {
        snprintf(err, errlen, "batch response: Successful/Failed are not arrays");
        json_decref(root);
        return -1;
    }
    size_t i;
    const json_t *e;
    json_array_foreach(ok, i, e) {
        long k = entry_index(json_object_get(e, "Id"), n);
        if (k >= 0)
            res[k].state = SQS_ENTRY_OK;
    }
    json_array_foreach(failed, i, e) {
        long k = entry_index(json_object_get(e, "Id"), n);
        if (k < 0 || res[k].state == SQS_ENTRY_OK)
            continue;
        res[k].state = json_is_true(json_object_get(e, "SenderFault")) ? SQS_ENTRY_SENDER_FAULT
                                                                        : SQS_ENTRY_FAILED;
        copy_json_str(res[k].code, sizeof res[k].code, json_object_get(e, "Code"));
        copy_json_str(res[k].message, sizeof res[k].message, json_object_get(e, "Message"));
    }
    json_decref(root);
    return 0;
}

static int hex4(const char *p, unsigned *out)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v * 16 + (unsigned)d;
    }
    *out = v;
    return 0;
}

/* Offset of the first lone UTF-16 surrogate escape ("\ud800" without its
 * pair) in JSON text, or -1. Backslashes only occur inside strings. */
static long lone_surrogate(const char *p, size_t len, size_t from)
{
    for (size_t i = from; i + 1 < len; i++) {
        if (p[i] != '\\')
            continue;
        unsigned u, lo;
        if (p[i + 1] != 'u' || i + 6 > len || hex4(p + i + 2, &u) < 0) {
            i++; /* another escape: skip its character */
            continue;
        }
        if (u >= 0xD800 && u <= 0xDBFF && i + 12 <= len && p[i + 6] == '\\' &&
            p[i + 7] == 'u' && hex4(p + i + 8, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
            i += 11; /* a pair */
            continue;
        }
        if (u >= 0xD800 && u <= 0xDFFF)
            return (long)i;
        i += 5;
    }
    return -1;
}

int sqs_parse_receive(const char *body, size_t len, json_t **root, json_t **msgs, char *err,
                      size_t errlen)
{
    /* A lone surrogate is not a character: SQS refuses it in a message, but
     * an emulator passes it on, and jansson (rightly) refuses the whole
     * response, which would keep every message of it in the queue for good.
     * Each becomes "\ufffd" (U+FFFD, the replacement character). */
    long at = lone_surrogate(body, len, 0);
    if (at >= 0) {
        char *fixed = xmalloc(len ? len : 1);
        memcpy(fixed, body, len);
        for (; at >= 0; at = lone_surrogate(fixed, len, (size_t)at + 6))
            memcpy(fixed + at, "\\ufffd", 6);
        int n = sqs_parse_receive(fixed, len, root, msgs, err, errlen);
        free(fixed);
        return n;
    }
    *root = NULL;
    *msgs = NULL;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\n' || body[i] == '\r' || body[i] == '\t'))
        i++;
    if (i == len)
        return 0; /* local-aws-sqs: an empty receive has an empty body */
    json_error_t je;
    json_t *r = json_loadb(body, len, JSON_ALLOW_NUL, &je);
    if (!json_is_object(r)) {
        snprintf(err, errlen, "ReceiveMessage response is not a JSON object%s%s",
                 r ? "" : ": ", r ? "" : je.text);
        json_decref(r);
        return -1;
    }
    json_t *m = json_object_get(r, "Messages");
    if (m && !json_is_array(m)) {
        snprintf(err, errlen, "ReceiveMessage response: Messages is not an array");
        json_decref(r);
        return -1;
    }
    *root = r;
    *msgs = m && json_array_size(m) ? m : NULL;
    return *msgs ? (int)json_array_size(m) : 0;
}

static void get_str(const json_t *obj, const char *key, const char **s, size_t *len)
{
    const json_t *v = json_object_get(obj, key);
    *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (len)
        *len = *s ? json_string_length(v) : 0;
}

static void get_attr(const json_t *attrs, const char *key, const char **s, size_t *len)
{
    const json_t *a = json_object_get(attrs, key);
    get_str(a, "StringValue", s, len);
}

int sqs_received_get(const json_t *m, sqs_received *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!json_is_object(m)) {
        snprintf(err, errlen, "ReceiveMessage: a message is not an object");
        return -1;
    }
    size_t idlen = 0, rhlen = 0;
    get_str(m, "MessageId", &out->message_id, &idlen);
    get_str(m, "ReceiptHandle", &out->receipt_handle, &rhlen);
    get_str(m, "Body", &out->body, &out->body_len);
    if (!out->message_id || !out->receipt_handle || !out->body || idlen == 0 || rhlen == 0 ||
        strlen(out->message_id) != idlen || strlen(out->receipt_handle) != rhlen) {
        snprintf(err, errlen, "ReceiveMessage: a message lacks MessageId, ReceiptHandle or Body");
        return -1;
    }
    const json_t *sys = json_object_get(m, "Attributes");
    get_str(sys, "MessageDeduplicationId", &out->dedup_id, &out->dedup_id_len);
    get_str(sys, "MessageGroupId", &out->group_id, &out->group_id_len);
    const json_t *attrs = json_object_get(m, "MessageAttributes");
    get_attr(attrs, "dedup_key", &out->attr_dedup_key, &out->attr_dedup_key_len);
    get_attr(attrs, "event_type", &out->attr_event_type, &out->attr_event_type_len);
    get_attr(attrs, "traceparent", &out->attr_traceparent, &out->attr_traceparent_len);
    return 0;
}

/* ---- configuration ------------------------------------------------------- */

static char *env_nonempty(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? xstrdup(v) : NULL;
}

/* Read a whole (small) file. Returns malloc'd text, or NULL with err. */
static char *read_small_file(const char *file, char *err, size_t errlen)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", file, strerror(errno));
        return NULL;
    }
    relay_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        buf_append(&b, chunk, n);
        if (b.len > MAX_CREDENTIALS_FILE) {
            snprintf(err, errlen, "%s is larger than %d bytes", file, MAX_CREDENTIALS_FILE);
            fclose(f);
            buf_free(&b);
            return NULL;
        }
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "cannot read %s", file);
        buf_free(&b);
        return NULL;
    }
    buf_putc(&b, '\0');
    return buf_steal(&b);
}

static int parse_region(relay_sqs_conf *c, const json_t *cfg, char *err, size_t errlen)
{
    const char *v;
    if (cfg_str(cfg, c->path, "region", NULL, &v, err, errlen) < 0)
        return -1;
    const char *origin = "";
    char from_url[64];
    if (v && *v) {
        c->region = xstrdup(v);
        origin = "region";
    } else if ((c->region = env_nonempty("AWS_REGION")) != NULL) {
        origin = "AWS_REGION";
    } else if ((c->region = env_nonempty("AWS_DEFAULT_REGION")) != NULL) {
        origin = "AWS_DEFAULT_REGION";
    } else if (sqs_region_from_url(c->queue_url, from_url, sizeof from_url) == 0) {
        c->region = xstrdup(from_url);
        origin = "queue_url";
    } else {
        snprintf(err, errlen, "%s.region: not set, and neither AWS_REGION nor AWS_DEFAULT_REGION "
                 "is set, nor does %s.queue_url name a region (sqs.<region>.amazonaws.com)",
                 c->path, c->path);
        return -1;
    }
    if (!sqs_region_valid(c->region)) {
        snprintf(err, errlen, "%s.region: \"%.64s\" (from %s) is not an AWS region (e.g. "
                 "\"us-east-1\")", c->path, c->region, origin);
        return -1;
    }
    return 0;
}

static int check_http_url(const char *url, const char *what, char *err, size_t errlen)
{
    CURLU *u = curl_url();
    char *scheme = NULL;
    int ok = u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
             curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
             (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0);
    curl_free(scheme);
    curl_url_cleanup(u);
    if (!ok)
        snprintf(err, errlen, "%s: \"%.200s\" is not an http:// or https:// URL", what, url);
    return ok ? 0 : -1;
}

static int parse_queue_url(relay_sqs_conf *c, const json_t *cfg, char *err, size_t errlen)
{
    const char *v;
    char what[64];
    snprintf(what, sizeof what, "%s.queue_url", c->path);
    if (cfg_str_required(cfg, c->path, "queue_url", &v, err, errlen) < 0 ||
        check_http_url(v, what, err, errlen) < 0)
        return -1;
    const char *p = strstr(v, "://") + 3;
    p += strcspn(p, "/");
    const char *name = strrchr(p, '/');
    size_t len = name ? strcspn(name + 1, "?#") : 0;
    if (!name || len == 0 || len > 80 || name[1 + len] != '\0') {
        snprintf(err, errlen, "%s: \"%.200s\" does not end in a queue name "
                 "(https://sqs.<region>.amazonaws.com/<account>/<queue>)", what, v);
        return -1;
    }
    c->queue_url = xstrdup(v);
    c->queue_name = xstrndup(name + 1, len);
    c->fifo = len > 5 && strcmp(c->queue_name + len - 5, ".fifo") == 0;
    return 0;
}

static int parse_endpoint(relay_sqs_conf *c, const json_t *cfg, char *err, size_t errlen)
{
    const char *v;
    char what[64];
    if (cfg_str(cfg, c->path, "endpoint_url", NULL, &v, err, errlen) < 0)
        return -1;
    if (v && *v) {
        c->endpoint = xstrdup(v);
        snprintf(what, sizeof what, "%s.endpoint_url", c->path);
    } else if ((c->endpoint = env_nonempty("AWS_ENDPOINT_URL_SQS")) != NULL) {
        snprintf(what, sizeof what, "AWS_ENDPOINT_URL_SQS");
    } else if ((c->endpoint = env_nonempty("AWS_ENDPOINT_URL")) != NULL) {
        snprintf(what, sizeof what, "AWS_ENDPOINT_URL");
    } else {
        c->endpoint = sqs_default_endpoint(c->region);
        return 0;
    }
    size_t n = strlen(c->endpoint);
    while (n > 0 && c->endpoint[n - 1] == '/')
        c->endpoint[--n] = '\0';
    return check_http_url(c->endpoint, what, err, errlen);
}

/* A credential key of the config; 1 when set, 0 when not, -1 on error. */
static int cfg_secret(const json_t *cfg, const char *path, const char *key, char **out,
                      char *err, size_t errlen)
{
    const char *v;
    if (cfg_str(cfg, path, key, NULL, &v, err, errlen) < 0)
        return -1;
    if (!v || !*v)
        return 0;
    *out = xstrdup(v);
    return 1;
}

/* The shared credentials file: sink.credentials_file, else
 * $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials; the profile
 * sink.profile, else $AWS_PROFILE, else "default". A file that is not
 * there is only an error when the config names it. */
static int creds_from_file(relay_sqs_conf *c, const json_t *cfg, char *err, size_t errlen)
{
    const char *file = NULL, *prof = NULL;
    if (cfg_host_path(cfg, c->path, "credentials_file", &file, err, errlen) < 0 ||
        cfg_str(cfg, c->path, "profile", NULL, &prof, err, errlen) < 0)
        return -1;
    char *path = file ? xstrdup(file) : env_nonempty("AWS_SHARED_CREDENTIALS_FILE");
    if (!path) {
        const char *home = getenv("HOME");
        relay_buf b = {0};
        buf_printf(&b, "%s/.aws/credentials", home && *home ? home : "");
        path = buf_steal(&b);
    }
    char *profile = prof && *prof ? xstrdup(prof) : env_nonempty("AWS_PROFILE");
    if (!profile)
        profile = xstrdup("default");
    /* the key an error names: what the user set, else where credentials go */
    const char *key = file ? "credentials_file" : prof && *prof ? "profile" : "access_key_id";
    char why[300];
    char *text = NULL;
    int rc = -1, prc;
    if (!file && access(path, F_OK) != 0) {
        snprintf(err, errlen, "%s.access_key_id: no AWS credentials: set %s.access_key_id and "
                 "%s.secret_access_key, or the AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                 "environment variables, or a shared credentials file (%s.credentials_file, "
                 "AWS_SHARED_CREDENTIALS_FILE; %s does not exist)", c->path, c->path, c->path,
                 c->path, path);
    } else if ((text = read_small_file(path, why, sizeof why)) == NULL) {
        snprintf(err, errlen, "%s.%s: %s", c->path, key, why);
    } else if ((prc = sqs_credentials_parse(text, profile, &c->access_key_id,
                                            &c->secret_access_key, &c->session_token, why,
                                            sizeof why)) < 0) {
        /* a profile the config names that is not there: the profile key */
        if (prc == -1 && prof && *prof)
            key = "profile";
        snprintf(err, errlen, "%s.%s: shared credentials file %s: %s", c->path, key, path, why);
    } else {
        relay_buf o = {0};
        buf_printf(&o, "shared credentials file %s, profile %s", path, profile);
        c->creds_origin = buf_steal(&o);
        rc = 0;
    }
    if (text) {
        memset(text, 0, strlen(text));
        free(text);
    }
    free(path);
    free(profile);
    return rc;
}

static int parse_credentials(relay_sqs_conf *c, const json_t *cfg, char *err, size_t errlen)
{
    int has_id = cfg_secret(cfg, c->path, "access_key_id", &c->access_key_id, err, errlen);
    int has_secret = has_id < 0 ? -1 : cfg_secret(cfg, c->path, "secret_access_key",
                                                  &c->secret_access_key, err, errlen);
    int has_token = has_secret < 0 ? -1 : cfg_secret(cfg, c->path, "session_token",
                                                     &c->session_token, err, errlen);
    if (has_token < 0)
        return -1;
    if (has_id || has_secret) {
        if (!has_id || !has_secret) {
            snprintf(err, errlen, "%s.%s: required together with %s.%s", c->path,
                     has_id ? "secret_access_key" : "access_key_id", c->path,
                     has_id ? "access_key_id" : "secret_access_key");
            return -1;
        }
        c->creds_origin = xstrdup("config keys");
        return 0;
    }
    if (has_token) {
        snprintf(err, errlen, "%s.session_token: requires %s.access_key_id and "
                 "%s.secret_access_key", c->path, c->path, c->path);
        return -1;
    }
    /* A profile or file named in the config is what the user asked for: the
     * environment's keys do not override it (as in the AWS SDKs). */
    const json_t *named_file = json_object_get(cfg, "credentials_file");
    const json_t *named_profile = json_object_get(cfg, "profile");
    if ((json_is_string(named_file) && *json_string_value(named_file)) ||
        (json_is_string(named_profile) && *json_string_value(named_profile)))
        return creds_from_file(c, cfg, err, errlen);
    c->access_key_id = env_nonempty("AWS_ACCESS_KEY_ID");
    c->secret_access_key = env_nonempty("AWS_SECRET_ACCESS_KEY");
    if (c->access_key_id && c->secret_access_key) {
        c->session_token = env_nonempty("AWS_SESSION_TOKEN");
        c->creds_origin = xstrdup("environment (AWS_ACCESS_KEY_ID)");
        return 0;
    }
    free(c->access_key_id);
    free(c->secret_access_key);
    c->access_key_id = c->secret_access_key = NULL;
    return creds_from_file(c, cfg, err, errlen);
}

static int valid_credential(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x21 || (unsigned char)*s > 0x7e)
            return 0;
    return 1;
}

int sqs_conf_parse(relay_sqs_conf *c, const json_t *cfg, const char *path, const char *pipeline,
                   char *err, size_t errlen)
{
    const char *ca;
    c->path = path;
    c->pipeline = pipeline ? xstrdup(pipeline) : NULL;
    if (parse_queue_url(c, cfg, err, errlen) < 0 || parse_region(c, cfg, err, errlen) < 0 ||
        parse_endpoint(c, cfg, err, errlen) < 0 || parse_credentials(c, cfg, err, errlen) < 0 ||
        cfg_int(cfg, path, "timeout_ms", DEFAULT_TIMEOUT_MS, 100, 600000, &c->timeout_ms, err,
                errlen) < 0 ||
        cfg_host_path(cfg, path, "tls_ca", &ca, err, errlen) < 0)
        return -1;
    /* A ':' in the key id would split CURLOPT_USERPWD; newlines would split headers. */
    if (strchr(c->access_key_id, ':') || !valid_credential(c->access_key_id) ||
        !valid_credential(c->secret_access_key) ||
        (c->session_token && !valid_credential(c->session_token))) {
        snprintf(err, errlen, "%s.access_key_id: the credentials from %s contain characters "
                 "AWS credentials never have (spaces, control characters, ':' in the key id)",
                 path, c->creds_origin);
        return -1;
    }
    c->tls_ca = ca ? xstrdup(ca) : NULL;
    return 0;
}

static void free_secret(char *s)
{
    if (s) {
        memset(s, 0, strlen(s));
        free(s);
    }
}

void sqs_conf_free(relay_sqs_conf *c)
{
    free(c->pipeline);
    free(c->queue_url);
    free(c->queue_name);
    free(c->region);
    free(c->endpoint);
    free_secret(c->access_key_id);
    free_secret(c->secret_access_key);
    free_secret(c->session_token);
    free(c->creds_origin);
    free(c->tls_ca);
    memset(c, 0, sizeof *c);
}

void sqs_conf_describe(const relay_sqs_conf *c, relay_buf *out)
{
    buf_puts(out, "\"queue_url\":");
    buf_put_json_str(out, c->queue_url, strlen(c->queue_url));
    buf_puts(out, ",\"region\":");
    buf_put_json_str(out, c->region, strlen(c->region));
    buf_puts(out, ",\"endpoint\":");
    buf_put_json_str(out, c->endpoint, strlen(c->endpoint));
    buf_printf(out, ",\"fifo\":%s,\"credentials\":", c->fifo ? "true" : "false");
    buf_put_json_str(out, c->creds_origin, strlen(c->creds_origin));
}

/* ---- calls ---------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_OK;

static void curl_global_setup(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int sqs_curl_init(char *err, size_t errlen)
{
    pthread_once(&curl_once, curl_global_setup);
    if (curl_init_rc != CURLE_OK) {
        snprintf(err, errlen, "libcurl initialisation failed: %s",
                 curl_easy_strerror(curl_init_rc));
        return -1;
    }
    return 0;
}

int sqs_client_open(relay_sqs_client *c, const relay_sqs_conf *conf, long max_conns, char *err,
                    size_t errlen)
{
    if (c->multi)
        return 0;
    c->conf = conf;
    c->multi = curl_multi_init();
    if (!c->multi) {
        snprintf(err, errlen, "libcurl: cannot create a multi handle");
        return -1;
    }
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, max_conns);
    curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, max_conns);
    sqs_sigv4_param(conf->region, c->sigv4, sizeof c->sigv4);
    if (!c->userpwd) {
        relay_buf b = {0};
        buf_printf(&b, "%s:%s", conf->access_key_id, conf->secret_access_key);
        c->userpwd = buf_steal(&b);
    }
    return 0;
}

void sqs_client_close(relay_sqs_client *c)
{
    if (c->multi)
        curl_multi_cleanup(c->multi);
    c->multi = NULL;
    free_secret(c->userpwd);
    c->userpwd = NULL;
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *userdata)
{
    sqs_call *call = userdata;
    size_t n = size * nmemb;
    if (call->resp.len + n > MAX_RESPONSE_BYTES)
        return 0; /* abort the transfer: no SQS answer is this large */
    buf_append(&call->resp, p, n);
    return n;
}

static int call_setup(relay_sqs_client *c, sqs_call *call, char *err, size_t errlen)
{
    if (call->easy)
        return 0;
    call->easy = curl_easy_init();
    if (!call->easy) {
        snprintf(err, errlen, "libcurl: cannot create an easy handle");
        return -1;
    }
    CURL *e = call->easy;
    const relay_sqs_conf *conf = c->conf;
    curl_easy_setopt(e, CURLOPT_URL, conf->endpoint);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "pgtrickle-relay/" RELAY_VERSION);
    curl_easy_setopt(e, CURLOPT_AWS_SIGV4, c->sigv4);
    curl_easy_setopt(e, CURLOPT_USERPWD, c->userpwd);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, call);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->errbuf);
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(conf->timeout_ms < 5000
                                                            ? conf->timeout_ms : 5000));
    if (conf->tls_ca)
        curl_easy_setopt(e, CURLOPT_CAINFO, conf->tls_ca);
    return 0;
}

int sqs_call_start(relay_sqs_client *c, sqs_call *call, const char *action,
                   int64_t extra_timeout_ms, char *err, size_t errlen)
{
    if (call_setup(c, call, err, errlen) < 0)
        return -1;
    curl_slist_free_all(call->hdrs);
    call->hdrs = sqs_headers(action, c->conf->session_token);
    if (!call->hdrs) {
        snprintf(err, errlen, "libcurl: out of memory for headers");
        return -1;
    }
    call->errbuf[0] = '\0';
    call->status = 0;
    call->res = CURLE_OK;
    call->done = 0;
    buf_clear(&call->resp);
    CURL *e = call->easy;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->hdrs);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)call->req.len);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, call->req.data ? call->req.data : "");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(c->conf->timeout_ms + extra_timeout_ms));
    CURLMcode mc = curl_multi_add_handle(c->multi, e);
    if (mc != CURLM_OK) {
        snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(mc));
        return -1;
    }
    call->busy = 1;
    return 0;
}

/* Mark every transfer libcurl reports complete. Returns how many. */
static int collect_finished(relay_sqs_client *c)
{
    CURLMsg *cm;
    int queued, n = 0;
    while ((cm = curl_multi_info_read(c->multi, &queued)) != NULL) {
        if (cm->msg != CURLMSG_DONE)
            continue;
        sqs_call *call = NULL;
        curl_easy_getinfo(cm->easy_handle, CURLINFO_PRIVATE, (char **)&call);
        if (!call || !call->busy)
            continue;
        call->res = cm->data.result;
        curl_multi_remove_handle(c->multi, call->easy);
        call->busy = 0;
        call->done = 1;
        if (call->res == CURLE_OK)
            curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &call->status);
        n++;
    }
    return n;
}

int sqs_client_run(relay_sqs_client *c, int timeout_ms, char *err, size_t errlen)
{
    int64_t waited = 0;
    for (;;) {
        int running = 0;
        CURLMcode mc = curl_multi_perform(c->multi, &running);
        if (mc != CURLM_OK) {
            snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(mc));
            return -1;
        }
        int n = collect_finished(c);
        if (n > 0 || running == 0 || waited >= timeout_ms)
            return n;
        int slice = timeout_ms - waited < 100 ? (int)(timeout_ms - waited) : 100;
        mc = curl_multi_poll(c->multi, NULL, 0, slice, NULL);
        if (mc != CURLM_OK) {
            snprintf(err, errlen, "libcurl: %s", curl_multi_strerror(mc));
            return -1;
        }
        waited += slice;
    }
}

int sqs_call_take(sqs_call *call)
{
    int d = call->done;
    call->done = 0;
    return d;
}

sqs_outcome sqs_call_outcome(const sqs_call *call, char *code, size_t codelen, char *msg,
                             size_t msglen)
{
    if (call->res != CURLE_OK) {
        snprintf(code, codelen, "transport");
        snprintf(msg, msglen, "%s", call->errbuf[0] ? call->errbuf : curl_easy_strerror(call->res));
        return SQS_RETRY;
    }
    return sqs_classify(call->status, call->resp.data, call->resp.len, code, codelen, msg, msglen);
}

void sqs_call_abandon(relay_sqs_client *c, sqs_call *call)
{
    if (call->busy && c->multi)
        curl_multi_remove_handle(c->multi, call->easy);
    call->busy = 0;
    call->done = 0;
}

void sqs_call_free(relay_sqs_client *c, sqs_call *call)
{
    sqs_call_abandon(c, call);
    if (call->easy)
        curl_easy_cleanup(call->easy);
    curl_slist_free_all(call->hdrs);
    buf_free(&call->req);
    buf_free(&call->resp);
    memset(call, 0, sizeof *call);
}

sqs_outcome sqs_call_sync(relay_sqs_client *c, sqs_call *call, const char *action, char *err,
                          size_t errlen)
{
    char why[300];
    if (sqs_call_start(c, call, action, 0, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s: %s", action, why);
        return SQS_RETRY;
    }
    while (!sqs_call_take(call)) {
        if (sqs_client_run(c, 1000, why, sizeof why) < 0) {
            sqs_call_abandon(c, call);
            snprintf(err, errlen, "%s: %s", action, why);
            return SQS_RETRY;
        }
    }
    char code[64], msg[256];
    sqs_outcome o = sqs_call_outcome(call, code, sizeof code, msg, sizeof msg);
    if (o != SQS_OK)
        snprintf(err, errlen, "%s on %s: %s%s%s", action, c->conf->endpoint, code,
                 msg[0] ? ": " : "", msg);
    return o;
}

static int64_t attr_int(const json_t *attrs, const char *key)
{
    const json_t *v = json_object_get(attrs, key);
    if (!json_is_string(v))
        return -1;
    char *end;
    long long x = strtoll(json_string_value(v), &end, 10);
    return *end == '\0' && x >= 0 ? (int64_t)x : -1;
}

sqs_outcome sqs_queue_attributes(relay_sqs_client *c, sqs_call *call, int64_t *visible,
                                 int64_t *not_visible, int64_t *visibility_timeout, char *err,
                                 size_t errlen)
{
    buf_clear(&call->req);
    buf_puts(&call->req, "{\"QueueUrl\":");
    buf_put_json_str(&call->req, c->conf->queue_url, strlen(c->conf->queue_url));
    buf_puts(&call->req, ",\"AttributeNames\":[\"ApproximateNumberOfMessages\","
             "\"ApproximateNumberOfMessagesNotVisible\",\"VisibilityTimeout\"]}");
    sqs_outcome o = sqs_call_sync(c, call, "GetQueueAttributes", err, errlen);
    if (o != SQS_OK)
        return o;
    json_t *root = json_loadb(call->resp.data ? call->resp.data : "", call->resp.len, 0, NULL);
    const json_t *attrs = json_object_get(root, "Attributes");
    *visible = attr_int(attrs, "ApproximateNumberOfMessages");
    *not_visible = attr_int(attrs, "ApproximateNumberOfMessagesNotVisible");
    *visibility_timeout = attr_int(attrs, "VisibilityTimeout");
    json_decref(root);
    return SQS_OK;
}
