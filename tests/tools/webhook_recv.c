/*
 * webhook_recv.c - a recording HTTP endpoint for the webhook sink tests.
 *
 *   webhook_recv --out FILE --port-file FILE [--listen HOST:PORT] [--control FILE]
 *                [--tls-cert PEM --tls-key PEM]
 *
 * Listens on HOST:PORT (default 127.0.0.1:0, i.e. a free port, written to
 * --port-file once the server accepts connections). Every request is
 * answered according to the control file, read afresh for each request:
 * one line "STATUS [DELAY_MS [RETRY_AFTER]]" (missing or empty: 200 at once).
 * RETRY_AFTER, when given, is sent verbatim as the Retry-After header.
 *
 * Each request is recorded as one JSON line in --out, written after its
 * response was queued:
 *   {"ts_ms":..., "method":"POST", "path":"/hook", "headers":{lower-case name: value},
 *    "body":"<text>" (or "body_b64" when the body is not UTF-8), "body_len":N,
 *    "status":S, "delay_ms":D}
 * With --tls-cert/--tls-key it serves HTTPS with that certificate.
 * A real server (libmicrohttpd, one thread per connection so a delayed
 * answer never holds up others), not a mock. SIGTERM/SIGINT stop it.
 */
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

static const char *g_out_path;
static const char *g_control_path;
static FILE *g_out;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

typedef struct request {
    char *body;
    size_t len;
    size_t cap;
} request;

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void read_control(int *status, long *delay_ms, char *retry_after, size_t ralen)
{
    *status = 200;
    *delay_ms = 0;
    retry_after[0] = '\0';
    if (!g_control_path)
        return;
    FILE *f = fopen(g_control_path, "r");
    if (!f)
        return;
    char line[256];
    if (fgets(line, sizeof line, f)) {
        int st = 0;
        long d = 0;
        char ra[128] = "";
        int n = sscanf(line, "%d %ld %127s", &st, &d, ra);
        if (n >= 1 && st >= 100 && st <= 599)
            *status = st;
        if (n >= 2 && d > 0)
            *delay_ms = d;
        if (n >= 3)
            snprintf(retry_after, ralen, "%s", ra);
    }
    fclose(f);
}

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    json_t *headers = cls;
    char name[256];
    size_t i;
    for (i = 0; key[i] && i < sizeof name - 1; i++)
        name[i] = (char)((key[i] >= 'A' && key[i] <= 'Z') ? key[i] + 32 : key[i]);
    name[i] = '\0';
    json_object_set_new(headers, name, json_string(value ? value : ""));
    return MHD_YES;
}

static char *base64(const unsigned char *p, size_t n)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
    if (!out)
        return NULL;
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (unsigned)p[i + 1] << 8 | p[i + 2];
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = tbl[(v >> 6) & 63];
        *o++ = tbl[v & 63];
    }
    if (i < n) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0);
        *o++ = tbl[v >> 18];
        *o++ = tbl[(v >> 12) & 63];
        *o++ = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
        *o++ = '=';
    }
    *o = '\0';
    return out;
}

static void record(struct MHD_Connection *conn, const char *method, const char *url,
                   const request *r, int status, long delay_ms)
{
    json_t *headers = json_object();
    MHD_get_connection_values(conn, MHD_HEADER_KIND, collect_header, headers);
    json_t *rec = json_pack("{s:I, s:s, s:s, s:o, s:I, s:i, s:I}", "ts_ms", (json_int_t)now_ms(),
                            "method", method, "path", url, "headers", headers, "body_len",
                            (json_int_t)r->len, "status", status, "delay_ms",
                            (json_int_t)delay_ms);
    json_t *body = json_stringn(r->body ? r->body : "", r->len);
    if (body) {
        json_object_set_new(rec, "body", body);
    } else {
        char *b64 = base64((const unsigned char *)r->body, r->len);
        json_object_set_new(rec, "body_b64", json_string(b64 ? b64 : ""));
        free(b64);
    }
    char *line = json_dumps(rec, JSON_COMPACT);
    json_decref(rec);
    pthread_mutex_lock(&g_mu);
    if (line) {
        fputs(line, g_out);
        fputc('\n', g_out);
        fflush(g_out);
    }
    pthread_mutex_unlock(&g_mu);
    free(line);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)cls;
    (void)version;
    request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        if (r->len + n + 1 > r->cap) {
            size_t cap = r->cap ? r->cap : 4096;
            while (cap < r->len + n + 1)
                cap *= 2;
            char *p = realloc(r->body, cap);
            if (!p)
                return MHD_NO;
            r->body = p;
            r->cap = cap;
        }
        memcpy(r->body + r->len, upload_data, n);
        r->len += n;
        *upload_data_size = 0;
        return MHD_YES;
    }
    int status;
    long delay_ms;
    char retry_after[128];
    read_control(&status, &delay_ms, retry_after, sizeof retry_after);
    if (delay_ms > 0) {
        struct timespec ts = {delay_ms / 1000, (delay_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
    char text[64];
    int n = snprintf(text, sizeof text, "{\"status\":%d}\n", status);
    struct MHD_Response *resp =
        MHD_create_response_from_buffer((size_t)n, text, MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (retry_after[0])
        MHD_add_response_header(resp, "Retry-After", retry_after);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    record(conn, method, url, r, status, delay_ms);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    request *r = *con_cls;
    if (r) {
        free(r->body);
        free(r);
        *con_cls = NULL;
    }
}

/* The whole file as a NUL-terminated string, or NULL. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0, n;
    char chunk[4096];
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (len + n + 1 > cap) {
            cap = (len + n + 1) * 2;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
        }
        memcpy(buf + len, chunk, n);
        len += n;
    }
    fclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

static int listen_socket(const char *addr, int *port_out)
{
    char host[64] = "127.0.0.1";
    int port = 0;
    if (addr) {
        const char *colon = strrchr(addr, ':');
        if (!colon || (size_t)(colon - addr) >= sizeof host)
            return -1;
        memcpy(host, addr, (size_t)(colon - addr));
        host[colon - addr] = '\0';
        port = atoi(colon + 1);
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 512) < 0)
        return -1;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port_out = ntohs(sa.sin_port);
    return fd;
}

int main(int argc, char **argv)
{
    const char *listen_addr = NULL, *port_file = NULL, *tls_cert = NULL, *tls_key = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--out") == 0)
            g_out_path = argv[i + 1];
        else if (strcmp(argv[i], "--control") == 0)
            g_control_path = argv[i + 1];
        else if (strcmp(argv[i], "--listen") == 0)
            listen_addr = argv[i + 1];
        else if (strcmp(argv[i], "--port-file") == 0)
            port_file = argv[i + 1];
        else if (strcmp(argv[i], "--tls-cert") == 0)
            tls_cert = argv[i + 1];
        else if (strcmp(argv[i], "--tls-key") == 0)
            tls_key = argv[i + 1];
        else {
            fprintf(stderr, "webhook_recv: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (!g_out_path || !port_file) {
        fprintf(stderr, "usage: webhook_recv --out FILE --port-file FILE [--listen HOST:PORT] "
                        "[--control FILE]\n");
        return 2;
    }
    g_out = fopen(g_out_path, "a");
    if (!g_out) {
        fprintf(stderr, "webhook_recv: %s: %s\n", g_out_path, strerror(errno));
        return 1;
    }
    int port = 0;
    int fd = listen_socket(listen_addr, &port);
    if (fd < 0) {
        fprintf(stderr, "webhook_recv: cannot listen on %s: %s\n",
                listen_addr ? listen_addr : "127.0.0.1:0", strerror(errno));
        return 1;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    unsigned flags =
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    char *cert = NULL, *key = NULL;
    if (tls_cert || tls_key) {
        cert = tls_cert ? slurp(tls_cert) : NULL;
        key = tls_key ? slurp(tls_key) : NULL;
        if (!cert || !key) {
            fprintf(stderr, "webhook_recv: --tls-cert and --tls-key need readable PEM files\n");
            return 1;
        }
        flags |= MHD_USE_TLS;
    }
    struct MHD_Daemon *d =
        cert ? MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET,
                                (MHD_socket)fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
                                MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key,
                                MHD_OPTION_END)
             : MHD_start_daemon(flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_LISTEN_SOCKET,
                                (MHD_socket)fd, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                                MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60, MHD_OPTION_END);
    if (!d) {
        fprintf(stderr, "webhook_recv: cannot start the HTTP server\n");
        return 1;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", port_file);
    FILE *pf = fopen(tmp, "w");
    if (!pf || fprintf(pf, "%d\n", port) < 0 || fclose(pf) != 0 || rename(tmp, port_file) < 0) {
        fprintf(stderr, "webhook_recv: cannot write %s\n", port_file);
        return 1;
    }
    int sig = 0;
    sigwait(&set, &sig);
    MHD_stop_daemon(d);
    free(cert);
    free(key);
    fclose(g_out);
    return 0;
}
