/*
 * client/kafka.c - librdkafka configuration shared by the Kafka sink and
 * source (see client/kafka.h for the keys).
 *
 * Validation happens in three steps, all at pipeline load:
 *   1. each relay key is mapped to its librdkafka property and set with
 *      rd_kafka_conf_set(), which rejects unknown names and bad values;
 *   2. the passthrough map is applied the same way, after refusing the
 *      properties the relay owns (the idempotent producer, manual offset
 *      commits, the bootstrap list) or that have a dedicated key;
 *   3. a dry-run rd_kafka_new() on a copy without bootstrap servers (so it
 *      connects nowhere) catches what only client creation checks:
 *      conflicting properties, unreadable certificate files, unsupported
 *      SASL mechanisms.
 * Messages name the relay key ("sink.sasl_mechanism: ...") and never repeat
 * a secret value.
 */
#include "client/kafka.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "config.h"
#include "hostpath.h"
#include "log.h"
#include "stats.h"
#include "worker.h"

/* Relay key -> librdkafka property. */
static const struct {
    const char *key;
    const char *name;
} key_map[] = {
    {"client_id", "client.id"},
    {"security_protocol", "security.protocol"},
    {"sasl_mechanism", "sasl.mechanisms"},
    {"sasl_username", "sasl.username"},
    {"sasl_password", "sasl.password"},
    {"ssl_ca_location", "ssl.ca.location"},
    {"ssl_certificate_location", "ssl.certificate.location"},
    {"ssl_key_location", "ssl.key.location"},
    {"ssl_key_password", "ssl.key.password"},
};

/* Properties no passthrough map may set, whatever the client type. */
static const kafka_reserved common_reserved[] = {
    {"bootstrap.servers", "brokers"},
    {"metadata.broker.list", "brokers"},
    {"client.id", "client_id"},
    {"security.protocol", "security_protocol"},
    {"sasl.mechanisms", "sasl_mechanism"},
    {"sasl.mechanism", "sasl_mechanism"},
    {"sasl.username", "sasl_username"},
    {"sasl.password", "sasl_password"},
    {NULL, NULL},
};

/* librdkafka properties that would let a pipeline config run code on the
 * relay's host (load a library, run a command): never settable from a
 * config. Properties naming a file of the host (*.location, the Kerberos
 * keytab) must lie under an --allow-path entry (hostpath.h). */
static const char *const host_code_properties[] = {
    "plugin.library.paths", "ssl.engine.location", "sasl.kerberos.kinit.cmd", NULL,
};

static int names_host_file(const char *name)
{
    size_t n = strlen(name);
    return (n > 9 && strcmp(name + n - 9, ".location") == 0) ||
           strcmp(name, "sasl.kerberos.keytab") == 0;
}

/* Refuse or check a passthrough property that reaches the host. */
static int check_host_property(const char *key, const char *name, const char *value, char *err,
                               size_t errlen)
{
    for (size_t i = 0; host_code_properties[i]; i++) {
        if (strcmp(name, host_code_properties[i]) == 0) {
            snprintf(err, errlen, "%s: not allowed in a pipeline config (it would load code or run "
                     "a command on the relay's host)", key);
            return -1;
        }
    }
    if (names_host_file(name) && strcmp(value, "probe") != 0)
        return hostpath_check(key, value, err, errlen);
    return 0;
}

static int is_secret_key(const char *key)
{
    return strstr(key, "password") != NULL;
}

int kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *name, const char *value,
                   char *err, size_t errlen)
{
    char why[512];
    if (rd_kafka_conf_set(conf, name, value, why, sizeof why) == RD_KAFKA_CONF_OK)
        return 0;
    if (is_secret_key(key) || is_secret_key(name))
        snprintf(err, errlen, "%s: rejected by librdkafka (property %s)", key, name);
    else
        snprintf(err, errlen, "%s: %s", key, why);
    return -1;
}

/* "brokers": a non-empty string, or an array of non-empty strings. */
static char *parse_brokers(const json_t *cfg, const char *path, char *err, size_t errlen)
{
    json_t *v = json_object_get(cfg, "brokers");
    if (json_is_string(v) && json_string_length(v) > 0)
        return xstrdup(json_string_value(v));
    if (json_is_array(v) && json_array_size(v) > 0) {
        relay_buf b = {0};
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (!json_is_string(e) || json_string_length(e) == 0) {
                buf_free(&b);
                snprintf(err, errlen, "%s.brokers[%zu]: expected a non-empty \"host:port\" string",
                         path, i);
                return NULL;
            }
            if (i)
                buf_putc(&b, ',');
            buf_puts(&b, json_string_value(e));
        }
        return buf_steal(&b);
    }
    if (!v || json_is_null(v) || (json_is_string(v) && json_string_length(v) == 0))
        snprintf(err, errlen, "%s.brokers: required (\"host:port,host:port\")", path);
    else
        snprintf(err, errlen, "%s.brokers: expected a \"host:port,...\" string or an array of them",
                 path);
    return NULL;
}

static const char *reserved_use(const kafka_reserved *list, const char *name, int *found)
{
    for (size_t i = 0; list && list[i].name; i++) {
        if (strcmp(list[i].name, name) == 0) {
            *found = 1;
            return list[i].use_key;
        }
    }
    return NULL;
}

/* Apply the "rdkafka" passthrough object. */
static int apply_passthrough(rd_kafka_conf_t *conf, const json_t *cfg, const char *path,
                             const kafka_reserved *reserved, char *err, size_t errlen)
{
    json_t *map = json_object_get(cfg, "rdkafka");
    if (!map || json_is_null(map))
        return 0;
    if (!json_is_object(map)) {
        snprintf(err, errlen, "%s.rdkafka: expected an object of librdkafka properties", path);
        return -1;
    }
    const char *name;
    json_t *v;
    char key[320], num[64];
    json_object_foreach(map, name, v) {
        snprintf(key, sizeof key, "%s.rdkafka.%s", path, name);
        int found = 0;
        const char *use = reserved_use(common_reserved, name, &found);
        if (!found)
            use = reserved_use(reserved, name, &found);
        if (found) {
            if (use)
                snprintf(err, errlen, "%s: set it with %s.%s", key, path, use);
            else
                snprintf(err, errlen, "%s: fixed by the relay, cannot be overridden", key);
            return -1;
        }
        const char *value;
        if (json_is_string(v)) {
            value = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
            value = num;
        } else if (json_is_real(v)) {
            snprintf(num, sizeof num, "%g", json_real_value(v));
            value = num;
        } else if (json_is_boolean(v)) {
            value = json_is_true(v) ? "true" : "false";
        } else {
            snprintf(err, errlen, "%s: expected a string, number or boolean", key);
            return -1;
        }
        if (check_host_property(key, name, value, err, errlen) < 0 ||
            kafka_conf_set(conf, key, name, value, err, errlen) < 0)
            return -1;
    }
    return 0;
}

static void silent_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    (void)rk;
    (void)level;
    (void)fac;
    (void)buf;
}

/* The config key behind a client-creation error: the relay key whose
 * property the message names, else the passthrough property it names, else
 * NULL. */
static void culprit(const json_t *cfg, const char *path, const char *why, char *key,
                    size_t keylen)
{
    static const struct {
        const char *phrase;
        const char *key;
    } phrases[] = {{"SASL mechanism", "sasl_mechanism"}, {"security.protocol", "security_protocol"}};
    key[0] = '\0';
    for (size_t i = 0; i < sizeof key_map / sizeof key_map[0]; i++)
        if (strstr(why, key_map[i].name) && json_object_get(cfg, key_map[i].key)) {
            snprintf(key, keylen, "%s.%s", path, key_map[i].key);
            return;
        }
    for (size_t i = 0; i < sizeof phrases / sizeof phrases[0]; i++)
        if (strstr(why, phrases[i].phrase) && json_object_get(cfg, phrases[i].key)) {
            snprintf(key, keylen, "%s.%s", path, phrases[i].key);
            return;
        }
    json_t *map = json_object_get(cfg, "rdkafka");
    const char *name;
    json_t *v;
    if (json_is_object(map))
        json_object_foreach(map, name, v) {
            (void)v;
            if (strstr(why, name)) {
                snprintf(key, keylen, "%s.rdkafka.%s", path, name);
                return;
            }
        }
}

/* Create (and destroy) a client from a copy of `conf` that has no brokers:
 * librdkafka then checks the whole configuration without connecting. */
static int dry_run(const rd_kafka_conf_t *conf, const json_t *cfg, const char *path,
                   rd_kafka_type_t type, char *err, size_t errlen)
{
    char why[512];
    rd_kafka_conf_t *copy = rd_kafka_conf_dup(conf);
    rd_kafka_conf_set_log_cb(copy, silent_log);
    rd_kafka_conf_set(copy, "bootstrap.servers", "", why, sizeof why);
    rd_kafka_t *rk = rd_kafka_new(type, copy, why, sizeof why);
    if (!rk) {
        rd_kafka_conf_destroy(copy);
        char key[320];
        culprit(cfg, path, why, key, sizeof key);
        snprintf(err, errlen, "%s: invalid Kafka client configuration: %s", key[0] ? key : path,
                 why);
        return -1;
    }
    rd_kafka_destroy(rk);
    return 0;
}

rd_kafka_conf_t *kafka_conf_build(const json_t *cfg, const char *path, rd_kafka_type_t type,
                                  const kafka_property *defaults, const kafka_property *fixed,
                                  const kafka_reserved *reserved, char **brokers_out, char *err,
                                  size_t errlen)
{
    char *brokers = parse_brokers(cfg, path, err, errlen);
    if (!brokers)
        return NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char key[128];
    snprintf(key, sizeof key, "%s.brokers", path);
    if (kafka_conf_set(conf, key, "bootstrap.servers", brokers, err, errlen) < 0 ||
        kafka_conf_set(conf, key, "client.id", "pgtrickle-relay", err, errlen) < 0 ||
        kafka_conf_set(conf, key, "log.connection.close", "false", err, errlen) < 0 ||
        /* A broker that stops answering fails a request after 10 s, not
         * librdkafka's 60 s: a blocked offset commit or flush must not hold
         * a pipeline (and its health) that long. The rdkafka map may
         * override it. */
        kafka_conf_set(conf, key, "socket.timeout.ms", "10000", err, errlen) < 0)
        goto fail;
    for (size_t i = 0; i < sizeof key_map / sizeof key_map[0]; i++) {
        const char *v;
        if (cfg_str(cfg, path, key_map[i].key, NULL, &v, err, errlen) < 0)
            goto fail;
        if (!v)
            continue;
        snprintf(key, sizeof key, "%s.%s", path, key_map[i].key);
        if (!*v) {
            snprintf(err, errlen, "%s: must not be empty", key);
            goto fail;
        }
        if (check_host_property(key, key_map[i].name, v, err, errlen) < 0 ||
            kafka_conf_set(conf, key, key_map[i].name, v, err, errlen) < 0)
            goto fail;
    }
    for (size_t i = 0; defaults && defaults[i].name; i++)
        if (kafka_conf_set(conf, path, defaults[i].name, defaults[i].value, err, errlen) < 0)
            goto fail;
    if (apply_passthrough(conf, cfg, path, reserved, err, errlen) < 0)
        goto fail;
    for (size_t i = 0; fixed && fixed[i].name; i++)
        if (kafka_conf_set(conf, path, fixed[i].name, fixed[i].value, err, errlen) < 0)
            goto fail;
    if (dry_run(conf, cfg, path, type, err, errlen) < 0)
        goto fail;
    *brokers_out = brokers;
    return conf;
fail:
    rd_kafka_conf_destroy(conf);
    free(brokers);
    return NULL;
}

void kafka_log_line(const char *pipeline, int level, const char *fac, const char *buf)
{
    log_debug(pipeline, "librdkafka %d %s: %s", level, fac, buf);
}

int kafka_err_unreachable(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__RESOLVE:
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
        return 1;
    default:
        return 0;
    }
}

int kafka_check_reachable(rd_kafka_t *rk, int timeout_ms, char *err, size_t errlen)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, NULL, &md, timeout_ms);
    if (e == RD_KAFKA_RESP_ERR_NO_ERROR) {
        int brokers = md->broker_cnt;
        rd_kafka_metadata_destroy(md);
        if (brokers > 0)
            return 0;
        snprintf(err, errlen, "the cluster reported no brokers");
        return -1;
    }
    snprintf(err, errlen, "no broker answered within %d ms: %s", timeout_ms, rd_kafka_err2str(e));
    return -1;
}

void kafka_client_on_error(kafka_client_state *cs, rd_kafka_t *rk, int err, const char *reason,
                           const char *pipeline, const char *role)
{
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char why[400];
        rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof why);
        cs->fatal = 1;
        snprintf(cs->last_error, sizeof cs->last_error, "fatal error %s: %s",
                 rd_kafka_err2name(orig), why);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        cs->brokers_down = 1;
    snprintf(cs->last_error, sizeof cs->last_error, "%s", reason);
    log_debug(pipeline, "kafka %s: %s: %s", role, rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

rd_kafka_t *kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, void *opaque,
                             kafka_client_state *cs, char *err, size_t errlen)
{
    char why[512];
    rd_kafka_conf_set_opaque(conf, opaque);
    rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof why);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, errlen, "cannot create the Kafka %s: %s",
                 type == RD_KAFKA_PRODUCER ? "producer" : "consumer", why);
        return NULL;
    }
    cs->fatal = 0;
    cs->brokers_down = 0;
    cs->last_error[0] = '\0';
    return rk;
}

int kafka_probe(rd_kafka_t *rk, struct relay_worker *w, const kafka_client_state *cs,
                char *err, size_t errlen)
{
    int64_t end = now_mono_ms() + KAFKA_REACH_TIMEOUT_MS;
    for (;;) {
        int64_t left = end - now_mono_ms();
        int slice = left > 500 ? 500 : left < 1 ? 1 : (int)left;
        if (kafka_check_reachable(rk, slice, err, errlen) == 0)
            return 0;
        if (now_mono_ms() >= end || (w && worker_stopping(w))) {
            snprintf(err, errlen, "no broker answered within %d ms%s%s%s", KAFKA_REACH_TIMEOUT_MS,
                     cs->last_error[0] ? " (" : "", cs->last_error, cs->last_error[0] ? ")" : "");
            return -1;
        }
    }
}
