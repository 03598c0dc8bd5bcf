/*
 * client/kafka.h - librdkafka configuration shared by the Kafka sink
 * (src/sink/kafka.c) and the Kafka source (src/source/kafka.c).
 *
 * Both directions take the same connection keys (SPEC sections 7 and 8):
 *   brokers                   "host:port,host:port" or an array (required)
 *   client_id                 client.id ("pgtrickle-relay")
 *   security_protocol         security.protocol (plaintext, ssl, sasl_plaintext, sasl_ssl)
 *   sasl_mechanism            sasl.mechanisms (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, ...)
 *   sasl_username, sasl_password
 *   ssl_ca_location, ssl_certificate_location, ssl_key_location, ssl_key_password
 *   rdkafka                   {"librdkafka.property": value, ...} passthrough
 * kafka_conf_build() turns them into an rd_kafka_conf_t and has librdkafka
 * check every property at once, including a dry-run rd_kafka_new() without
 * brokers, so a bad property stops the pipeline at load time with the key
 * named ("sink.rdkafka.foo: No such configuration property ..."), instead of
 * failing on every reconnect.
 */
#ifndef RELAY_CLIENT_KAFKA_H
#define RELAY_CLIENT_KAFKA_H

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stddef.h>

/* The connection keys above, for cfg_known_keys() lists. */
#define KAFKA_CONF_KEYS                                                                      \
    "brokers", "client_id", "security_protocol", "sasl_mechanism", "sasl_username",          \
        "sasl_password", "ssl_ca_location", "ssl_certificate_location", "ssl_key_location",  \
        "ssl_key_password", "rdkafka"

/* A librdkafka property the backend sets itself. */
typedef struct kafka_property {
    const char *name;
    const char *value;
} kafka_property;

/* A librdkafka property the rdkafka passthrough map may not set: either the
 * relay fixes it (use_key NULL) or a dedicated config key sets it. */
typedef struct kafka_reserved {
    const char *name;
    const char *use_key;
} kafka_reserved;

/* Build and validate the configuration of a client of `type` from the
 * backend config object `cfg` (called `path`, "sink" or "source", in
 * messages): the connection keys, then `defaults` (which the passthrough
 * map may override), then the passthrough map, then `fixed`. Property lists
 * end with a {NULL, NULL} entry and may be NULL. Passthrough names listed in
 * `reserved` (same termination) are refused. Stores the bootstrap list in
 * *brokers_out (malloc'ed). Returns the conf (caller owns it), or NULL with
 * err naming the key. No callback is set and nothing is connected. */
rd_kafka_conf_t *kafka_conf_build(const json_t *cfg, const char *path, rd_kafka_type_t type,
                                  const kafka_property *defaults, const kafka_property *fixed,
                                  const kafka_reserved *reserved, char **brokers_out, char *err,
                                  size_t errlen);

/* Set one property on a conf built above (a value the backend computed);
 * returns 0, or -1 with err naming `key` (the relay config key it came from). */
int kafka_conf_set(rd_kafka_conf_t *conf, const char *key, const char *name, const char *value,
                   char *err, size_t errlen);

/* Route a librdkafka log line (syslog level) to the relay log at debug
 * level: librdkafka logs every reconnect attempt, and the relay itself logs
 * one line per state change. */
void kafka_log_line(const char *pipeline, int level, const char *fac, const char *buf);

/* 1 when `err` means the cluster cannot be reached (transport, resolution,
 * authentication, all brokers down, timeouts), as opposed to a message- or
 * topic-level error. */
int kafka_err_unreachable(rd_kafka_resp_err_t err);

/* Ask the cluster for its broker list, waiting at most timeout_ms.
 * Returns 0 when a broker answered, or -1 with err. */
int kafka_check_reachable(rd_kafka_t *rk, int timeout_ms, char *err, size_t errlen);

/* What a client's error callback learnt, read by its owner's thread. */
typedef struct kafka_client_state {
    int fatal;            /* a fatal error (idempotence lost): the client must be re-created */
    int brokers_down;     /* "all brokers down" seen, no success since */
    char last_error[512]; /* last error text, for messages */
} kafka_client_state;

/* The body of an rd_kafka error callback (rd_kafka_conf_set_error_cb),
 * shared by the producer and the consumer: records a fatal error with its
 * cause (rd_kafka_fatal_error), "all brokers down", and the last error text;
 * `role` ("producer"/"consumer") only labels the debug log line. */
void kafka_client_on_error(kafka_client_state *cs, rd_kafka_t *rk, int err, const char *reason,
                           const char *pipeline, const char *role);

/* Create a producer or consumer from `conf` (a copy of the validated
 * template, with the caller's own callbacks set; taken over whatever the
 * outcome), with `opaque` as the callbacks' opaque, and reset *cs for it.
 * Returns the client (the caller destroys it), or NULL with err naming the
 * role ("cannot create the Kafka producer: ..."). */
rd_kafka_t *kafka_client_new(rd_kafka_type_t type, rd_kafka_conf_t *conf, void *opaque,
                             kafka_client_state *cs, char *err, size_t errlen);

struct relay_worker;

/* How long open() waits for a broker to answer, in ms. */
#define KAFKA_REACH_TIMEOUT_MS 3000

/* Ask for metadata for up to KAFKA_REACH_TIMEOUT_MS, in slices so that a
 * stop request of worker `w` (may be NULL) is not held up. Returns 0 when a
 * broker answered, or -1 with err ("no broker answered within ... ms",
 * followed by the client's last error from *cs when there is one). */
int kafka_probe(rd_kafka_t *rk, struct relay_worker *w, const kafka_client_state *cs,
                char *err, size_t errlen);

#endif
