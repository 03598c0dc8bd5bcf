/*
 * client/rabbitmq.c - the AMQP 0-9-1 connection shared by the RabbitMQ sink
 * and source (rabbitmq-c 0.11), see client/rabbitmq.h.
 *
 * Connecting (rmq_conn_open): a TCP or TLS socket (amqp_tcp_socket_new /
 * amqp_ssl_socket_new with the CA, client certificate and key, peer and
 * host name verification) opened within connect_timeout_ms, then
 * amqp_login_with_properties (SASL PLAIN, the heartbeat interval, a
 * connection_name the broker's management UI shows, and the capabilities
 * the relay relies on: consumer_cancel_notify so that a deleted queue
 * cancels the consumer with a basic.cancel instead of silently, and
 * publisher confirms with basic.nack), then channel.open of channel 1.
 * connect_timeout_ms is also the handshake and RPC timeout.
 *
 * Heartbeats are rabbitmq-c's: every call that waits for a frame sends one
 * when due and fails with AMQP_STATUS_HEARTBEAT_TIMEOUT when the broker has
 * been silent for two intervals. The sink and the source call into the
 * library at least once a second (the sink from a keeper thread while it is
 * idle, the source from poll and the worker's idle hook), so a lost broker
 * is noticed within two heartbeat intervals even on an idle pipeline, and a
 * close sent by the broker at once.
 *
 * A connection is never reused after an error: rmq_conn_down destroys it
 * (the broker requeues whatever the channel had not acknowledged) and the
 * next rmq_conn_open starts afresh.
 */
#include "client/rabbitmq.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <inttypes.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/time.h>

#include "config.h"
#include "log.h"
#include "stats.h"

#define FRAME_MAX 131072

/* ---- URL ------------------------------------------------------------------ */

void rmq_url_free(rmq_url *u)
{
    free(u->host);
    free(u->user);
    free(u->password);
    free(u->vhost);
    free(u->display);
    memset(u, 0, sizeof *u);
}

int rmq_url_parse(const char *url, rmq_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    struct amqp_connection_info ci;
    char *copy = xstrdup(url); /* amqp_parse_url decodes in place */
    if (amqp_parse_url(copy, &ci) != AMQP_STATUS_OK) {
        free(copy);
        snprintf(err, errlen, "not an AMQP URL (expected amqp[s]://user:password@host:port/vhost, "
                 "with reserved characters percent-encoded)");
        return -1;
    }
    if (!ci.host || !*ci.host) {
        free(copy);
        snprintf(err, errlen, "the URL has no host");
        return -1;
    }
    if (ci.port <= 0) {
        free(copy);
        snprintf(err, errlen, "port %d is not a TCP port", ci.port);
        return -1;
    }
    out->host = xstrdup(ci.host);
    out->port = ci.port;
    out->user = xstrdup(ci.user);
    out->password = xstrdup(ci.password);
    /* "amqp://h/" names the vhost "" in the AMQP URI spec; no broker has
     * one, and every client library users compare with reads it as "/". */
    out->vhost = xstrdup(ci.vhost && *ci.vhost ? ci.vhost : "/");
    out->tls = ci.ssl;
    free(copy);

    relay_buf d = {0};
    buf_printf(&d, "%s://", out->tls ? "amqps" : "amqp");
    if (*out->user)
        buf_printf(&d, "%s@", out->user);
    buf_printf(&d, strchr(out->host, ':') ? "[%s]:%d/" : "%s:%d/", out->host, out->port);
    for (const char *p = out->vhost; *p; p++) {
        if (*p == '/' || *p == '%' || *p == '@' || *p == '?' || *p == '#' || (unsigned char)*p <= ' ')
            buf_printf(&d, "%%%02X", (unsigned char)*p);
        else
            buf_putc(&d, *p);
    }
    out->display = buf_steal(&d);
    return 0;
}

/* ---- configuration ----------------------------------------------------- */

static int opt_path(const json_t *cfg, const char *path, const char *key, char **out, char *err,
                    size_t errlen)
{
    const char *v;
    if (cfg_host_path(cfg, path, key, &v, err, errlen) < 0)
        return -1;
    *out = v ? xstrdup(v) : NULL;
    return 0;
}

int rmq_conn_parse(relay_rmq_conn *c, const json_t *cfg, const char *path, const char *pipeline,
                   char *err, size_t errlen)
{
    const char *url;
    int64_t hb, ct;
    c->path = path;
    c->pipeline = xstrdup(pipeline ? pipeline : "");
    if (cfg_str(cfg, path, "url", RELAY_RMQ_DEFAULT_URL, &url, err, errlen) < 0 ||
        cfg_bool(cfg, path, "tls_verify", 1, &c->tls_verify, err, errlen) < 0 ||
        cfg_int(cfg, path, "heartbeat_seconds", 30, 0, 3600, &hb, err, errlen) < 0 ||
        cfg_int(cfg, path, "connect_timeout_ms", 5000, 100, 600000, &ct, err, errlen) < 0)
        return -1;
    char why[256];
    if (rmq_url_parse(url, &c->url, why, sizeof why) < 0) {
        snprintf(err, errlen, "%s.url: %s", path, why);
        return -1;
    }
    c->heartbeat_s = (int)hb;
    c->connect_timeout_ms = ct;
    if (opt_path(cfg, path, "tls_ca_file", &c->tls_ca, err, errlen) < 0 ||
        opt_path(cfg, path, "tls_cert_file", &c->tls_cert, err, errlen) < 0 ||
        opt_path(cfg, path, "tls_key_file", &c->tls_key, err, errlen) < 0)
        return -1;
    if (!c->url.tls && (c->tls_ca || c->tls_cert || c->tls_key)) {
        snprintf(err, errlen, "%s.url: the tls_* keys need an amqps:// URL", path);
        return -1;
    }
    if (!c->tls_cert != !c->tls_key) {
        snprintf(err, errlen, "%s.%s: a client certificate needs both tls_cert_file and "
                 "tls_key_file", path, c->tls_cert ? "tls_key_file" : "tls_cert_file");
        return -1;
    }
    return 0;
}

void rmq_conn_free(relay_rmq_conn *c)
{
    rmq_conn_close(c);
    rmq_url_free(&c->url);
    free(c->pipeline);
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
}

/* ---- replies ------------------------------------------------------------- */

int rmq_reply_code(amqp_rpc_reply_t r)
{
    if (r.reply_type != AMQP_RESPONSE_SERVER_EXCEPTION || !r.reply.decoded)
        return 0;
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD)
        return ((amqp_connection_close_t *)r.reply.decoded)->reply_code;
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD)
        return ((amqp_channel_close_t *)r.reply.decoded)->reply_code;
    return 0;
}

/* "broker closed the channel: 404 NOT_FOUND - no exchange 'x' in vhost '/'",
 * the text made printable (it is the broker's, and goes to the log). */
static void close_text(const char *what, int code, amqp_bytes_t text, char *out, size_t outlen)
{
    relay_buf b = {0};
    buf_put_log_text(&b, text.bytes ? text.bytes : "", text.len);
    snprintf(out, outlen, "broker closed the %s: %d %s", what, code, b.data ? b.data : "");
    buf_free(&b);
}

void rmq_reply_text(amqp_rpc_reply_t r, char *out, size_t outlen)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(out, outlen, "ok");
        return;
    case AMQP_RESPONSE_NONE:
        snprintf(out, outlen, "no reply from the broker");
        return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(out, outlen, "%s", amqp_error_string2(r.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD && r.reply.decoded) {
            amqp_connection_close_t *m = r.reply.decoded;
            close_text("connection", m->reply_code, m->reply_text, out, outlen);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD && r.reply.decoded) {
            amqp_channel_close_t *m = r.reply.decoded;
            close_text("channel", m->reply_code, m->reply_text, out, outlen);
        } else {
            snprintf(out, outlen, "unexpected method 0x%08x from the broker", r.reply.id);
        }
        return;
    }
    snprintf(out, outlen, "unknown reply type %d", (int)r.reply_type);
}

/* ---- connection ------------------------------------------------------------ */

static void set_health(relay_rmq_conn *c, int up)
{
    if (c->health_flag)
        atomic_store(c->health_flag, up);
}

void rmq_conn_down(relay_rmq_conn *c, const char *why)
{
    if (c->conn) {
        amqp_destroy_connection(c->conn); /* closes the socket, no handshake */
        c->conn = NULL;
    }
    snprintf(c->last_error, sizeof c->last_error, "%s", why);
    if (c->up) {
        c->up = 0;
        c->losses++;
        set_health(c, 0);
        log_warn(c->pipeline, "RabbitMQ connection to %s closed: %s", c->url.display, why);
    }
}

void rmq_conn_close(relay_rmq_conn *c)
{
    if (!c->conn)
        return;
    if (c->up) {
        amqp_channel_close(c->conn, RELAY_RMQ_CHANNEL, AMQP_REPLY_SUCCESS);
        amqp_connection_close(c->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(c->conn);
    c->conn = NULL;
    c->up = 0;
}

int rmq_conn_take_close(relay_rmq_conn *c, const amqp_frame_t *f, char *err, size_t errlen)
{
    if (f->frame_type != AMQP_FRAME_METHOD)
        return 0;
    amqp_method_number_t id = f->payload.method.id;
    int code;
    if (id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = f->payload.method.decoded;
        code = m->reply_code;
        close_text("channel", m->reply_code, m->reply_text, err, errlen);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c->conn, f->channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
    } else if (id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = f->payload.method.decoded;
        code = m->reply_code;
        close_text("connection", m->reply_code, m->reply_text, err, errlen);
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(c->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else {
        return 0;
    }
    rmq_conn_down(c, err);
    return code ? code : -1;
}

int rmq_conn_rpc_check(relay_rmq_conn *c, const char *what, char *err, size_t errlen)
{
    amqp_rpc_reply_t r = amqp_get_rpc_reply(c->conn);
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char why[400];
    rmq_reply_text(r, why, sizeof why);
    snprintf(err, errlen, "%s: %s", what, why);
    int code = rmq_reply_code(r);
    rmq_conn_down(c, err);
    return code ? code : -1;
}

static struct timeval tv_ms(int64_t ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* The TLS socket, configured from the tls_* keys. NULL with err. */
static amqp_socket_t *tls_socket(relay_rmq_conn *c, char *err, size_t errlen)
{
    amqp_socket_t *s = amqp_ssl_socket_new(c->conn);
    if (!s) {
        snprintf(err, errlen, "cannot create a TLS socket");
        return NULL;
    }
    amqp_ssl_socket_set_verify_peer(s, c->tls_verify);
    amqp_ssl_socket_set_verify_hostname(s, c->tls_verify);
    int rc = AMQP_STATUS_OK;
    if (c->tls_ca) {
        rc = amqp_ssl_socket_set_cacert(s, c->tls_ca);
        if (rc != AMQP_STATUS_OK) {
            snprintf(err, errlen, "%s.tls_ca_file: cannot load %s: %s", c->path, c->tls_ca,
                     amqp_error_string2(rc));
            return NULL;
        }
    } else if (c->tls_verify) {
        /* rabbitmq-c loads no CA by itself: use the system's store */
        SSL_CTX_set_default_verify_paths(amqp_ssl_socket_get_context(s));
    }
    if (c->tls_cert) {
        rc = amqp_ssl_socket_set_key(s, c->tls_cert, c->tls_key);
        if (rc != AMQP_STATUS_OK) {
            snprintf(err, errlen, "%s.tls_cert_file: cannot load %s with the key %s: %s", c->path,
                     c->tls_cert, c->tls_key, amqp_error_string2(rc));
            return NULL;
        }
    }
    return s;
}

/* What to check, by the broker's reply to the login. */
static const char *login_hint(int code)
{
    switch (code) {
    case AMQP_ACCESS_REFUSED: return " (check the user and password of %s.url)";
    case AMQP_NOT_ALLOWED: return " (check the vhost of %s.url and the user's permissions on it)";
    default: return "";
    }
}

static void remember_server(relay_rmq_conn *c)
{
    amqp_table_t *t = amqp_get_server_properties(c->conn);
    const char *product = "", *version = "";
    int plen = 0, vlen = 0;
    for (int i = 0; t && i < t->num_entries; i++) {
        amqp_table_entry_t *e = &t->entries[i];
        if (e->value.kind != AMQP_FIELD_KIND_UTF8)
            continue;
        if (e->key.len == 7 && memcmp(e->key.bytes, "product", 7) == 0) {
            product = e->value.value.bytes.bytes;
            plen = (int)e->value.value.bytes.len;
        } else if (e->key.len == 7 && memcmp(e->key.bytes, "version", 7) == 0) {
            version = e->value.value.bytes.bytes;
            vlen = (int)e->value.value.bytes.len;
        }
    }
    snprintf(c->server, sizeof c->server, "%.*s %.*s", plen > 40 ? 40 : plen, product,
             vlen > 40 ? 40 : vlen, version);
    utf8_sanitize(c->server);
}

int rmq_conn_open(relay_rmq_conn *c, char *err, size_t errlen)
{
    if (c->conn)
        rmq_conn_close(c);
    char why[400];
    c->conn = amqp_new_connection();
    amqp_socket_t *sock = c->url.tls ? tls_socket(c, why, sizeof why) : amqp_tcp_socket_new(c->conn);
    if (!sock) {
        snprintf(err, errlen, "%s", c->url.tls ? why : "cannot create a socket");
        goto fail;
    }
    struct timeval tv = tv_ms(c->connect_timeout_ms);
    int rc = amqp_socket_open_noblock(sock, c->url.host, c->url.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        snprintf(err, errlen, "cannot connect to RabbitMQ at %s: %s", c->url.display,
                 amqp_error_string2(rc));
        goto fail;
    }
    amqp_set_handshake_timeout(c->conn, &tv);
    amqp_set_rpc_timeout(c->conn, &tv);

    char name[200];
    snprintf(name, sizeof name, "pgtrickle-relay %s (%s)", c->pipeline, c->path);
    amqp_table_entry_t caps[4] = {
        {.key = amqp_cstring_bytes("consumer_cancel_notify"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
        {.key = amqp_cstring_bytes("publisher_confirms"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
        {.key = amqp_cstring_bytes("basic.nack"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
        {.key = amqp_cstring_bytes("connection.blocked"),
         .value = {.kind = AMQP_FIELD_KIND_BOOLEAN, .value.boolean = 1}},
    };
    amqp_table_entry_t props[2] = {
        {.key = amqp_cstring_bytes("connection_name"),
         .value = {.kind = AMQP_FIELD_KIND_UTF8, .value.bytes = amqp_cstring_bytes(name)}},
        {.key = amqp_cstring_bytes("capabilities"),
         .value = {.kind = AMQP_FIELD_KIND_TABLE,
                   .value.table = {.num_entries = 4, .entries = caps}}},
    };
    amqp_table_t props_table = {.num_entries = 2, .entries = props};
    amqp_rpc_reply_t r = amqp_login_with_properties(c->conn, c->url.vhost, 0, FRAME_MAX,
                                                    c->heartbeat_s, &props_table,
                                                    AMQP_SASL_METHOD_PLAIN, c->url.user,
                                                    c->url.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        rmq_reply_text(r, why, sizeof why);
        char hint[120];
        snprintf(hint, sizeof hint, login_hint(rmq_reply_code(r)), c->path);
        snprintf(err, errlen, "cannot log in to RabbitMQ at %s: %s%s", c->url.display, why, hint);
        goto fail;
    }
    remember_server(c);
    amqp_channel_open(c->conn, RELAY_RMQ_CHANNEL);
    r = amqp_get_rpc_reply(c->conn);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        rmq_reply_text(r, why, sizeof why);
        snprintf(err, errlen, "cannot open a channel on %s: %s", c->url.display, why);
        goto fail;
    }
    return 0;
fail:
    if (c->conn) {
        amqp_destroy_connection(c->conn);
        c->conn = NULL;
    }
    snprintf(c->last_error, sizeof c->last_error, "%s", err);
    return -1;
}

void rmq_conn_ready(relay_rmq_conn *c)
{
    c->up = 1;
    c->connects++;
    c->last_error[0] = 0;
    set_health(c, 1);
    log_info(c->pipeline, "connected to %s at %s (%s)", c->server, c->url.display, c->path);
}

void rmq_conn_describe(relay_rmq_conn *c, relay_buf *out)
{
    buf_puts(out, "\"url\":");
    buf_put_json_str(out, c->url.display, strlen(c->url.display));
    buf_printf(out, ",\"connected\":%s,\"server\":", c->up ? "true" : "false");
    buf_put_json_str(out, c->server, strlen(c->server));
    buf_printf(out, ",\"heartbeat_seconds\":%d,\"connects\":%" PRIu64 ",\"losses\":%" PRIu64
               ",\"last_error\":", c->heartbeat_s, c->connects, c->losses);
    if (c->last_error[0])
        buf_put_json_str(out, c->last_error, strlen(c->last_error));
    else
        buf_puts(out, "null");
}

/* ---- received messages ---------------------------------------------------- */

static int key_is(amqp_bytes_t k, const char *name)
{
    size_t n = strlen(name);
    return k.len == n && strncasecmp(k.bytes, name, n) == 0;
}

/* A decimal (value * 10^-decimals) written exactly, e.g. "12.50" or
 * "0.005"; -1 when it would not fit in 48 bytes. */
static int decimal_text(amqp_decimal_t d, char scratch[48])
{
    char digits[16];
    int nd = snprintf(digits, sizeof digits, "%" PRIu32, d.value);
    int dec = d.decimals;
    if (dec == 0)
        return snprintf(scratch, 48, "%s", digits);
    if (dec > 40)
        return -1;
    int n = 0;
    if (dec >= nd) {
        scratch[n++] = '0';
        scratch[n++] = '.';
        for (int i = 0; i < dec - nd; i++)
            scratch[n++] = '0';
        memcpy(scratch + n, digits, (size_t)nd);
        n += nd;
    } else {
        memcpy(scratch, digits, (size_t)(nd - dec));
        n = nd - dec;
        scratch[n++] = '.';
        memcpy(scratch + n, digits + nd - dec, (size_t)dec);
        n += dec;
    }
    scratch[n] = 0;
    return n;
}

/* The value as bytes, or as text in `scratch`. 0 when not a scalar. */
static int value_bytes(const amqp_field_value_t *v, char scratch[48], const char **out,
                       size_t *len)
{
    int n = -1;
    switch (v->kind) {
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        if (v->value.bytes.len == 0 || !v->value.bytes.bytes)
            return 0; /* empty: as if absent */
        *out = v->value.bytes.bytes;
        *len = v->value.bytes.len;
        return 1;
    case AMQP_FIELD_KIND_BOOLEAN: n = snprintf(scratch, 48, "%s", v->value.boolean ? "true" : "false"); break;
    case AMQP_FIELD_KIND_I8: n = snprintf(scratch, 48, "%d", v->value.i8); break;
    case AMQP_FIELD_KIND_U8: n = snprintf(scratch, 48, "%u", v->value.u8); break;
    case AMQP_FIELD_KIND_I16: n = snprintf(scratch, 48, "%d", v->value.i16); break;
    case AMQP_FIELD_KIND_U16: n = snprintf(scratch, 48, "%u", v->value.u16); break;
    case AMQP_FIELD_KIND_I32: n = snprintf(scratch, 48, "%" PRId32, v->value.i32); break;
    case AMQP_FIELD_KIND_U32: n = snprintf(scratch, 48, "%" PRIu32, v->value.u32); break;
    case AMQP_FIELD_KIND_I64: n = snprintf(scratch, 48, "%" PRId64, v->value.i64); break;
    case AMQP_FIELD_KIND_U64:
    case AMQP_FIELD_KIND_TIMESTAMP: n = snprintf(scratch, 48, "%" PRIu64, v->value.u64); break;
    case AMQP_FIELD_KIND_F32: n = snprintf(scratch, 48, "%.9g", (double)v->value.f32); break;
    case AMQP_FIELD_KIND_F64: n = snprintf(scratch, 48, "%.17g", v->value.f64); break;
    case AMQP_FIELD_KIND_DECIMAL:
        n = decimal_text(v->value.decimal, scratch);
        break;
    default:
        return 0; /* table, array, void */
    }
    if (n <= 0)
        return 0;
    *out = scratch;
    *len = (size_t)(n < 48 ? n : 47);
    return 1;
}

void rmq_header_fields_get(const amqp_table_t *headers, rmq_header_fields *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; headers && headers->entries && i < headers->num_entries; i++) {
        const amqp_table_entry_t *e = &headers->entries[i];
        if (!e->key.bytes)
            continue;
        if (!out->dedup_key_len && key_is(e->key, "pgtrickle-dedup-key"))
            value_bytes(&e->value, out->scratch[0], &out->dedup_key, &out->dedup_key_len);
        else if (!out->trace_id_len && key_is(e->key, "traceparent"))
            value_bytes(&e->value, out->scratch[1], &out->trace_id, &out->trace_id_len);
    }
}
