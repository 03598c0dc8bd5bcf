/*
 * client/nats.c - connection, authentication and helpers shared by the NATS
 * sink (src/sink/nats.c) and the NATS source (src/source/nats.c).
 *
 * One relay_nats_conn wraps one natsConnection. nats.c reconnects a lost
 * connection by itself (we ask it to try forever, every reconnect_wait_ms,
 * pinging every 5 s so a silent server is noticed within ~15 s). Its
 * callbacks run on a nats.c thread and only flip atomics, count and log one
 * line per state change. They also hold a pointer to this struct, so
 * closing waits for the closed callback (the last one nats.c delivers, in
 * order, on its callback thread) before the struct can be freed.
 *
 * Authentication maps to nats.c as follows:
 *   user/password  natsOptions_SetUserInfo
 *   token          natsOptions_SetToken
 *   nkey_seed      natsOptions_SetNKey, signing the server's nonce with
 *                  nats_Sign(seed); the public key is derived from the seed
 *                  (ed25519 through libcrypto), so the seed alone suffices
 *   creds_file     natsOptions_SetUserCredentialsFromFiles
 *   tls_*          natsOptions_SetSecure / LoadCATrustedCertificates /
 *                  LoadCertificatesChain
 *
 * NKey encoding (github.com/nats-io/nkeys): base32 (RFC 4648, no padding) of
 * prefix byte(s) + raw key + CRC-16/XMODEM (little endian). A seed is the
 * two bytes (18<<3 | P>>5, (P&31)<<3) + the 32-byte ed25519 seed, a public
 * key the byte P + the 32-byte public key, P being the key type's prefix
 * (user 20<<3, account 0, operator 14<<3).
 */
#include "client/nats.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "json_scan.h"
#include "log.h"

#define PING_INTERVAL_MS 5000
#define MAX_PINGS_OUT 2
#define CLOSE_WAIT_MS 5000

/* ---- configuration ----------------------------------------------------- */

static int cfg_opt_str(const json_t *cfg, const char *path, const char *key, char **out,
                       char *err, size_t errlen)
{
    const char *v;
    if (cfg_str(cfg, path, key, NULL, &v, err, errlen) < 0)
        return -1;
    *out = v && *v ? xstrdup(v) : NULL;
    return 0;
}

/* A file of the relay's host (--allow-path, hostpath.h), copied. */
static int cfg_opt_path(const json_t *cfg, const char *path, const char *key, char **out,
                        char *err, size_t errlen)
{
    const char *v;
    if (cfg_host_path(cfg, path, key, &v, err, errlen) < 0)
        return -1;
    *out = v ? xstrdup(v) : NULL;
    return 0;
}

/* "nats://user:pass@host:4222" -> "nats://host:4222" */
static void put_redacted_url(relay_buf *out, const char *url)
{
    const char *scheme = strstr(url, "://");
    const char *host = scheme ? scheme + 3 : url;
    const char *at = strchr(host, '@');
    const char *slash = strchr(host, '/');
    if (at && (!slash || at < slash)) {
        buf_append(out, url, (size_t)(host - url));
        buf_puts(out, at + 1);
    } else {
        buf_puts(out, url);
    }
}

static int parse_servers(relay_nats_conn *c, const char *urls, char *err, size_t errlen)
{
    relay_buf disp = {0};
    char *copy = xstrdup(urls);
    char *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (*tok == ' ')
            tok++;
        size_t n = strlen(tok);
        while (n && tok[n - 1] == ' ')
            tok[--n] = '\0';
        if (!n)
            continue;
        if (!strstr(tok, "://") && strchr(tok, '/')) {
            snprintf(err, errlen, "%s.url: \"%s\" is not a NATS URL (nats://host:port)", c->path, tok);
            goto fail;
        }
        if (strncmp(tok, "tls://", 6) == 0)
            c->tls = 1;
        c->servers = xrealloc(c->servers, (size_t)(c->nservers + 1) * sizeof *c->servers);
        c->servers[c->nservers++] = xstrdup(tok);
        if (disp.len)
            buf_putc(&disp, ',');
        put_redacted_url(&disp, tok);
    }
    if (c->nservers == 0) {
        snprintf(err, errlen, "%s.url: no server URL given", c->path);
        goto fail;
    }
    free(copy);
    c->url_display = buf_steal(&disp);
    return 0;
fail:
    free(copy);
    buf_free(&disp);
    return -1;
}

int nats_conn_parse(relay_nats_conn *c, const json_t *cfg, const char *path,
                    const char *pipeline, char *err, size_t errlen)
{
    const char *url;
    int tls_set;
    c->path = path;
    c->pipeline = xstrdup(pipeline ? pipeline : "");
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    if (cfg_str(cfg, path, "url", RELAY_NATS_DEFAULT_URL, &url, err, errlen) < 0 ||
        parse_servers(c, url, err, errlen) < 0 ||
        cfg_opt_str(cfg, path, "user", &c->user, err, errlen) < 0 ||
        cfg_opt_str(cfg, path, "password", &c->password, err, errlen) < 0 ||
        cfg_opt_str(cfg, path, "token", &c->token, err, errlen) < 0 ||
        cfg_opt_str(cfg, path, "nkey_seed", &c->nkey_seed, err, errlen) < 0 ||
        cfg_opt_str(cfg, path, "nkey", &c->nkey_pub, err, errlen) < 0 ||
        cfg_opt_path(cfg, path, "creds_file", &c->creds_file, err, errlen) < 0 ||
        cfg_opt_path(cfg, path, "tls_ca", &c->tls_ca, err, errlen) < 0 ||
        cfg_opt_path(cfg, path, "tls_cert", &c->tls_cert, err, errlen) < 0 ||
        cfg_opt_path(cfg, path, "tls_key", &c->tls_key, err, errlen) < 0 ||
        cfg_int(cfg, path, "connect_timeout_ms", 2000, 100, 600000, &c->connect_timeout_ms, err,
                errlen) < 0 ||
        cfg_int(cfg, path, "reconnect_wait_ms", 1000, 10, 600000, &c->reconnect_wait_ms, err,
                errlen) < 0)
        return -1;
    tls_set = c->tls || c->tls_ca || c->tls_cert || c->tls_key;
    if (cfg_bool(cfg, path, "tls", tls_set, &c->tls, err, errlen) < 0)
        return -1;
    if (c->password && !c->user) {
        snprintf(err, errlen, "%s.password: needs %s.user", path, path);
        return -1;
    }
    if (c->user && !c->password) {
        snprintf(err, errlen, "%s.user: needs %s.password", path, path);
        return -1;
    }
    if (c->token && c->user) {
        snprintf(err, errlen, "%s.token: cannot be combined with %s.user", path, path);
        return -1;
    }
    if (c->nkey_seed && c->creds_file) {
        snprintf(err, errlen, "%s.nkey_seed: cannot be combined with %s.creds_file", path, path);
        return -1;
    }
    if (c->nkey_pub && !c->nkey_seed) {
        snprintf(err, errlen, "%s.nkey: needs %s.nkey_seed (the seed signs the server's nonce)",
                 path, path);
        return -1;
    }
    if ((c->tls_cert != NULL) != (c->tls_key != NULL)) {
        snprintf(err, errlen, "%s.%s: needs %s.%s", path, c->tls_cert ? "tls_cert" : "tls_key",
                 path, c->tls_cert ? "tls_key" : "tls_cert");
        return -1;
    }
    if (!c->tls && (c->tls_ca || c->tls_cert)) {
        snprintf(err, errlen, "%s.tls: false, but %s.%s is set", path, path,
                 c->tls_ca ? "tls_ca" : "tls_cert");
        return -1;
    }
    if (c->nkey_seed) {
        char pub[64], why[200];
        if (strncmp(c->nkey_seed, "SU", 2) != 0) {
            snprintf(err, errlen, "%s.nkey_seed: not a user NKey seed (it must start with \"SU\")",
                     path);
            return -1;
        }
        if (nats_nkey_public_from_seed(c->nkey_seed, pub, sizeof pub, why, sizeof why) < 0) {
            snprintf(err, errlen, "%s.nkey_seed: %s", path, why);
            return -1;
        }
        if (c->nkey_pub && strcmp(c->nkey_pub, pub) != 0) {
            snprintf(err, errlen, "%s.nkey: does not match the public key of %s.nkey_seed (%s)",
                     path, path, pub);
            return -1;
        }
        free(c->nkey_pub);
        c->nkey_pub = xstrdup(pub);
    }
    return 0;
}

/* ---- callbacks (nats.c threads) -------------------------------------------- */

static void set_health(relay_nats_conn *c, int up)
{
    if (c->health_flag)
        atomic_store(c->health_flag, up);
}

static void on_disconnected(natsConnection *nc, void *closure)
{
    (void)nc;
    relay_nats_conn *c = closure;
    if (atomic_load(&c->closing) || !atomic_exchange(&c->connected, 0))
        return;
    atomic_fetch_add(&c->disconnects, 1);
    set_health(c, 0);
    log_warn(c->pipeline, "NATS connection to %s lost; reconnecting every %lld ms",
             c->url_display, (long long)c->reconnect_wait_ms);
}

static void on_reconnected(natsConnection *nc, void *closure)
{
    relay_nats_conn *c = closure;
    char url[256] = "";
    natsConnection_GetConnectedUrl(nc, url, sizeof url);
    atomic_fetch_add(&c->reconnects, 1);
    atomic_store(&c->connected, 1);
    set_health(c, 1);
    relay_buf u = {0};
    put_redacted_url(&u, url);
    log_info(c->pipeline, "NATS connection restored (%s)", u.data ? u.data : "");
    buf_free(&u);
}

static void on_closed(natsConnection *nc, void *closure)
{
    (void)nc;
    relay_nats_conn *c = closure;
    atomic_store(&c->connected, 0);
    if (!atomic_load(&c->closing)) {
        set_health(c, 0);
        log_warn(c->pipeline, "NATS connection to %s closed", c->url_display);
    }
    pthread_mutex_lock(&c->mu);
    c->closed_done = 1;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

static void on_error(natsConnection *nc, natsSubscription *sub, natsStatus s, void *closure)
{
    (void)sub;
    relay_nats_conn *c = closure;
    const char *detail = NULL;
    natsConnection_GetLastError(nc, &detail);
    pthread_mutex_lock(&c->mu);
    int same = strncmp(c->last_error, natsStatus_GetText(s), sizeof c->last_error) == 0;
    snprintf(c->last_error, sizeof c->last_error, "%s", natsStatus_GetText(s));
    pthread_mutex_unlock(&c->mu);
    if (!same)
        log_warn(c->pipeline, "NATS asynchronous error: %s%s%s", natsStatus_GetText(s),
                 detail && *detail ? ": " : "", detail && *detail ? detail : "");
}

static natsStatus sign_nonce(char **custom_err, unsigned char **sig, int *siglen, const char *nonce,
                             void *closure)
{
    relay_nats_conn *c = closure;
    natsStatus s = nats_Sign(c->nkey_seed, nonce, sig, siglen);
    if (s != NATS_OK && custom_err)
        *custom_err = xstrdup("cannot sign the server nonce with the configured nkey_seed");
    return s;
}

/* ---- connecting ------------------------------------------------------------ */

void nats_status_text(natsStatus s, jsErrCode jerr, char *out, size_t outlen)
{
    natsStatus ls;
    const char *detail = nats_GetLastError(&ls);
    const char *base = natsStatus_GetText(s);
    /* nats.c prefixes its detail with "(file.c:123): " */
    if (detail && detail[0] == '(') {
        const char *end = strstr(detail, "): ");
        if (end)
            detail = end + 3;
    }
    if (detail && *detail && ls == s && strcmp(detail, base) != 0)
        snprintf(out, outlen, "%s: %s", base, detail);
    else
        snprintf(out, outlen, "%s", base);
    if (jerr) {
        size_t l = strlen(out);
        snprintf(out + l, outlen - l, " (JetStream error %d)", (int)jerr);
    }
}

static int check_file(relay_nats_conn *c, const char *key, const char *file, char *err,
                      size_t errlen)
{
    if (file && access(file, R_OK) < 0) {
        snprintf(err, errlen, "%s.%s: cannot read %s: %s", c->path, key, file, strerror(errno));
        return -1;
    }
    return 0;
}

static natsStatus build_options(relay_nats_conn *c, natsOptions **out)
{
    natsOptions *o = NULL;
    char name[160];
    snprintf(name, sizeof name, "pgtrickle-relay %s", c->pipeline);
    natsStatus s = natsOptions_Create(&o);
    if (s == NATS_OK)
        s = natsOptions_SetServers(o, (const char **)c->servers, c->nservers);
    if (s == NATS_OK)
        s = natsOptions_SetName(o, name);
    if (s == NATS_OK)
        s = natsOptions_SetNoRandomize(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetTimeout(o, c->connect_timeout_ms);
    if (s == NATS_OK)
        s = natsOptions_SetMaxReconnect(o, -1);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectWait(o, c->reconnect_wait_ms);
    if (s == NATS_OK)
        s = natsOptions_SetPingInterval(o, PING_INTERVAL_MS);
    if (s == NATS_OK)
        s = natsOptions_SetMaxPingsOut(o, MAX_PINGS_OUT);
    if (s == NATS_OK)
        s = natsOptions_SetFailRequestsOnDisconnect(o, true);
    if (s == NATS_OK)
        s = natsOptions_SetDisconnectedCB(o, on_disconnected, c);
    if (s == NATS_OK)
        s = natsOptions_SetReconnectedCB(o, on_reconnected, c);
    if (s == NATS_OK)
        s = natsOptions_SetClosedCB(o, on_closed, c);
    if (s == NATS_OK)
        s = natsOptions_SetErrorHandler(o, on_error, c);
    if (s == NATS_OK && c->user)
        s = natsOptions_SetUserInfo(o, c->user, c->password);
    if (s == NATS_OK && c->token)
        s = natsOptions_SetToken(o, c->token);
    if (s == NATS_OK && c->nkey_seed)
        s = natsOptions_SetNKey(o, c->nkey_pub, sign_nonce, c);
    if (s == NATS_OK && c->creds_file)
        s = natsOptions_SetUserCredentialsFromFiles(o, c->creds_file, NULL);
    if (s == NATS_OK && c->tls)
        s = natsOptions_SetSecure(o, true);
    if (s == NATS_OK && c->tls_ca)
        s = natsOptions_LoadCATrustedCertificates(o, c->tls_ca);
    if (s == NATS_OK && c->tls_cert)
        s = natsOptions_LoadCertificatesChain(o, c->tls_cert, c->tls_key);
    if (s != NATS_OK) {
        natsOptions_Destroy(o);
        return s;
    }
    *out = o;
    return NATS_OK;
}

/* Destroy a connection nats.c has closed (or that we close now), after its
 * last callback ran. */
static void drop_connection(relay_nats_conn *c)
{
    if (!c->nc)
        return;
    atomic_store(&c->closing, 1);
    natsConnection_Close(c->nc);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += CLOSE_WAIT_MS / 1000;
    pthread_mutex_lock(&c->mu);
    while (!c->closed_done)
        if (pthread_cond_timedwait(&c->cond, &c->mu, &until) != 0)
            break;
    int done = c->closed_done;
    pthread_mutex_unlock(&c->mu);
    if (!done)
        log_warn(c->pipeline, "NATS connection close did not complete in %d ms", CLOSE_WAIT_MS);
    natsConnection_Destroy(c->nc);
    c->nc = NULL;
    atomic_store(&c->connected, 0);
}

int nats_conn_up(relay_nats_conn *c)
{
    return c->nc && natsConnection_Status(c->nc) == NATS_CONN_STATUS_CONNECTED;
}

int nats_conn_open(relay_nats_conn *c, char *err, size_t errlen)
{
    if (c->nc) {
        natsConnStatus st = natsConnection_Status(c->nc);
        if (st == NATS_CONN_STATUS_CONNECTED)
            return 0;
        if (st != NATS_CONN_STATUS_CLOSED) {
            snprintf(err, errlen, "NATS connection to %s lost; reconnecting", c->url_display);
            return -1;
        }
        drop_connection(c); /* nats.c gave up: start over */
    }
    if (check_file(c, "creds_file", c->creds_file, err, errlen) < 0 ||
        check_file(c, "tls_ca", c->tls_ca, err, errlen) < 0 ||
        check_file(c, "tls_cert", c->tls_cert, err, errlen) < 0 ||
        check_file(c, "tls_key", c->tls_key, err, errlen) < 0)
        return -1;
    natsOptions *o = NULL;
    char why[512];
    natsStatus s = build_options(c, &o);
    if (s != NATS_OK) {
        nats_status_text(s, 0, why, sizeof why);
        snprintf(err, errlen, "NATS options for %s: %s", c->url_display, why);
        return -1;
    }
    atomic_store(&c->closing, 0);
    c->closed_done = 0;
    s = natsConnection_Connect(&c->nc, o);
    natsOptions_Destroy(o);
    if (s != NATS_OK) {
        nats_status_text(s, 0, why, sizeof why);
        snprintf(err, errlen, "cannot connect to NATS at %s: %s", c->url_display, why);
        c->nc = NULL;
        return -1;
    }
    atomic_store(&c->connected, 1);
    set_health(c, 1);
    char url[256] = "";
    natsConnection_GetConnectedUrl(c->nc, url, sizeof url);
    relay_buf u = {0};
    put_redacted_url(&u, url);
    log_info(c->pipeline, "connected to NATS at %s", u.data ? u.data : c->url_display);
    buf_free(&u);
    return 0;
}

void nats_conn_close(relay_nats_conn *c)
{
    drop_connection(c);
}

void nats_conn_free(relay_nats_conn *c)
{
    drop_connection(c);
    for (int i = 0; i < c->nservers; i++)
        free(c->servers[i]);
    free(c->servers);
    free(c->pipeline);
    free(c->url_display);
    free(c->user);
    free(c->password);
    free(c->token);
    if (c->nkey_seed) {
        memset(c->nkey_seed, 0, strlen(c->nkey_seed));
        free(c->nkey_seed);
    }
    free(c->nkey_pub);
    free(c->creds_file);
    free(c->tls_ca);
    free(c->tls_cert);
    free(c->tls_key);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    memset(c, 0, sizeof *c);
}

void nats_conn_describe(relay_nats_conn *c, relay_buf *out)
{
    buf_puts(out, "\"url\":");
    buf_put_json_str(out, c->url_display, strlen(c->url_display));
    buf_printf(out, ",\"connected\":%s", nats_conn_up(c) ? "true" : "false");
    char url[256] = "";
    if (c->nc && natsConnection_GetConnectedUrl(c->nc, url, sizeof url) == NATS_OK && *url) {
        relay_buf u = {0};
        put_redacted_url(&u, url);
        buf_puts(out, ",\"server\":");
        buf_put_json_str(out, u.data, u.len);
        buf_free(&u);
    }
    buf_printf(out, ",\"disconnects\":%llu,\"reconnects\":%llu",
               (unsigned long long)atomic_load(&c->disconnects),
               (unsigned long long)atomic_load(&c->reconnects));
}

/* ---- NKeys ----------------------------------------------------------------- */

#define NKEY_PREFIX_SEED (18 << 3)

static const char b32_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/* Prefix byte of a key type: 'U'ser, 'A'ccount, 'O'perator, 'N' server, 'C'luster. */
static int nkey_prefix(char type)
{
    switch (type) {
    case 'U': return 20 << 3;
    case 'A': return 0;
    case 'O': return 14 << 3;
    case 'N': return 13 << 3;
    case 'C': return 2 << 3;
    }
    return -1;
}

static char nkey_type(int prefix)
{
    static const char types[] = "UAONC";
    for (const char *t = types; *t; t++)
        if (nkey_prefix(*t) == prefix)
            return *t;
    return 0;
}

static uint16_t crc16_xmodem(const unsigned char *p, size_t n)
{
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

static void b32_encode(const unsigned char *p, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | p[i];
        bits += 8;
        while (bits >= 5 && o + 1 < outlen) {
            out[o++] = b32_alphabet[(acc >> (bits - 5)) & 31];
            bits -= 5;
        }
    }
    if (bits > 0 && o + 1 < outlen)
        out[o++] = b32_alphabet[(acc << (5 - bits)) & 31];
    out[o] = '\0';
}

/* Returns the number of bytes decoded, or -1 on a character outside the alphabet. */
static int b32_decode(const char *s, unsigned char *out, size_t outlen)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (; *s; s++) {
        const char *hit = strchr(b32_alphabet, *s);
        if (!hit)
            return -1;
        acc = (acc << 5) | (uint32_t)(hit - b32_alphabet);
        bits += 5;
        if (bits >= 8) {
            if (o >= outlen)
                return -1;
            out[o++] = (unsigned char)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    return (int)o;
}

static void encode_with_crc(unsigned char *raw, size_t n, char *out, size_t outlen)
{
    uint16_t crc = crc16_xmodem(raw, n);
    raw[n] = (unsigned char)(crc & 0xff);
    raw[n + 1] = (unsigned char)(crc >> 8);
    b32_encode(raw, n + 2, out, outlen);
}

int nats_nkey_encode(char type, const unsigned char key[32], int seed, char *out, size_t outlen)
{
    int prefix = nkey_prefix(type);
    if (prefix < 0)
        return -1;
    unsigned char raw[36];
    size_t n = 0;
    if (seed) {
        raw[n++] = (unsigned char)(NKEY_PREFIX_SEED | (prefix >> 5));
        raw[n++] = (unsigned char)((prefix & 31) << 3);
    } else {
        raw[n++] = (unsigned char)prefix;
    }
    memcpy(raw + n, key, 32);
    encode_with_crc(raw, n + 32, out, outlen);
    memset(raw, 0, sizeof raw);
    return 0;
}

int nats_nkey_public_from_seed(const char *seed, char *out, size_t outlen, char *err,
                               size_t errlen)
{
    unsigned char raw[64];
    int n = b32_decode(seed, raw, sizeof raw);
    int rc = -1;
    char type = 0;
    if (n != 36) {
        snprintf(err, errlen, "not an NKey seed (expected 58 base32 characters starting with \"S\")");
        goto out;
    }
    uint16_t crc = (uint16_t)(raw[34] | (raw[35] << 8));
    if (crc16_xmodem(raw, 34) != crc) {
        snprintf(err, errlen, "not an NKey seed (checksum mismatch)");
        goto out;
    }
    type = nkey_type(((raw[0] & 7) << 5) | ((raw[1] & 0xf8) >> 3));
    if ((raw[0] & 0xf8) != NKEY_PREFIX_SEED || !type) {
        snprintf(err, errlen, "not an NKey seed (unknown prefix)");
        goto out;
    }
    EVP_PKEY *pk = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, raw + 2, 32);
    unsigned char pub[32];
    size_t publen = sizeof pub;
    if (!pk || EVP_PKEY_get_raw_public_key(pk, pub, &publen) != 1 || publen != 32) {
        snprintf(err, errlen, "cannot derive the public key of the seed");
        EVP_PKEY_free(pk);
        goto out;
    }
    EVP_PKEY_free(pk);
    nats_nkey_encode(type, pub, 0, out, outlen);
    rc = 0;
out:
    memset(raw, 0, sizeof raw);
    return rc;
}


/* ---- PubAck ------------------------------------------------------------------ */

/* Copy the raw text of the JSON string v[0..n) (quotes included) to out. */
static int copy_json_str(const char *v, size_t n, char *out, size_t outlen)
{
    if (n < 2 || v[0] != '"')
        return -1;
    size_t k = n - 2 < outlen - 1 ? n - 2 : outlen - 1;
    memcpy(out, v + 1, k);
    out[k] = '\0';
    return 0;
}

/* A JSON integer v[0..n) in [0, max]. */
static int parse_json_uint(const char *v, size_t n, uint64_t max, uint64_t *out)
{
    if (n == 0 || n > 20)
        return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return -1;
        x = x * 10 + d;
    }
    if (x > max)
        return -1;
    *out = x;
    return 0;
}

static int key_is(const char *k, size_t kl, const char *want)
{
    return kl == strlen(want) && memcmp(k, want, kl) == 0;
}

static int parse_puback_error(const char *s, size_t n, relay_puback *out)
{
    size_t pos = 0, off, len, kl;
    const char *k;
    int rc;
    if (n == 0 || s[0] != '{')
        return -1;
    while ((rc = json_object_next(s, n, &pos, &k, &kl, &off, &len)) == 1) {
        uint64_t x;
        if (key_is(k, kl, "code") && parse_json_uint(s + off, len, 999, &x) == 0)
            out->code = (int)x;
        else if (key_is(k, kl, "err_code") && parse_json_uint(s + off, len, INT32_MAX, &x) == 0)
            out->err_code = (int)x;
        else if (key_is(k, kl, "description"))
            copy_json_str(s + off, len, out->description, sizeof out->description);
    }
    return rc;
}

int nats_puback_parse(const char *data, size_t len, relay_puback *out)
{
    memset(out, 0, sizeof *out);
    size_t start = json_skip_ws(data, len, 0);
    if (start >= len || data[start] != '{')
        return -1;
    const char *s = data + start;
    size_t n = json_span(s, len - start);
    if (n == 0 || json_skip_ws(data, len, start + n) != len)
        return -1;
    size_t pos = 0, off, vl, kl;
    const char *k;
    int rc, have_stream = 0, have_seq = 0, have_error = 0;
    while ((rc = json_object_next(s, n, &pos, &k, &kl, &off, &vl)) == 1) {
        const char *v = s + off;
        if (key_is(k, kl, "stream"))
            have_stream = copy_json_str(v, vl, out->stream, sizeof out->stream) == 0;
        else if (key_is(k, kl, "seq"))
            have_seq = parse_json_uint(v, vl, UINT64_MAX, &out->seq) == 0;
        else if (key_is(k, kl, "duplicate"))
            out->duplicate = vl == 4 && memcmp(v, "true", 4) == 0;
        else if (key_is(k, kl, "error"))
            have_error = parse_puback_error(v, vl, out) == 0;
    }
    if (rc < 0)
        return -1;
    if (have_error)
        return 0; /* refused, whatever else it says */
    if (!have_stream || !have_seq)
        return -1;
    out->stored = 1;
    return 0;
}
