/*
 * version.c - the `--version` report.
 *
 *   pgtrickle-relay 0.1.0 (catalog version 3)
 *   built: gcc 12.2.0, debugoptimized, sd_notify yes
 *   sources: outbox, cdc, stdin, file, nats, kafka, redis, webhook, http
 *   sinks: pg-inbox, file, stdout, nats, kafka, redis, webhook, http
 *   libraries:
 *     libpq 15.13
 *     ...
 *   system: Linux 6.1.0 x86_64, glibc 2.36
 *
 * The source and sink lists come from the registry (what this binary can
 * run). Each library line asks the loaded library for its version where it
 * has a function for that (PQlibVersion, nats_GetVersion, ...), so a binary
 * running against a newer shared library reports the one it really uses;
 * libsystemd and hiredis have no such function and report their build-time
 * version.
 *
 * Adding a backend: add its library's line under its HAVE_X define below.
 */
#include "version.h"

#include <gnu/libc-version.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <msgpack.h>
#include <sys/utsname.h>

#include "catalog.h"
#include "notify.h"
#include "registry.h"
#include "relay_features.h"

#if HAVE_NATS
#include <nats/nats.h>
#endif
#if HAVE_KAFKA
#include <librdkafka/rdkafka.h>
#endif
#if HAVE_REDIS
#include <hiredis.h>
#endif
#if HAVE_WEBHOOK || HAVE_SQS
#include <curl/curl.h>
#endif
#if HAVE_RABBITMQ
#include <amqp.h>
#endif
#if HAVE_LIBCRYPTO
#include <openssl/crypto.h>
#endif

static void print_libraries(FILE *out)
{
    int pq = PQlibVersion(); /* 150013 for 15.13; 90624 for 9.6.24 */
    if (pq >= 100000)
        fprintf(out, "  libpq %d.%d\n", pq / 10000, pq % 10000);
    else
        fprintf(out, "  libpq %d.%d.%d\n", pq / 10000, pq / 100 % 100, pq % 100);
    fprintf(out, "  jansson %s\n", jansson_version_str());
    fprintf(out, "  libmicrohttpd %s\n", MHD_get_version());
    fprintf(out, "  msgpack-c %s\n", msgpack_version());
#if HAVE_LIBCRYPTO
    fprintf(out, "  %s\n", OpenSSL_version(OPENSSL_VERSION));
#endif
#if HAVE_NATS
    fprintf(out, "  nats.c %s\n", nats_GetVersion());
#endif
#if HAVE_KAFKA
    fprintf(out, "  librdkafka %s\n", rd_kafka_version_str());
#endif
#if HAVE_REDIS
    /* hiredis has no version function: the headers' version */
    fprintf(out, "  hiredis %d.%d.%d (build time)\n", HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
#endif
#if HAVE_WEBHOOK || HAVE_SQS
    /* webhook and sqs */
    const curl_version_info_data *cv = curl_version_info(CURLVERSION_NOW);
    fprintf(out, "  libcurl %s (%s)\n", cv->version, cv->ssl_version ? cv->ssl_version : "no TLS");
#endif
#if HAVE_RABBITMQ
    fprintf(out, "  rabbitmq-c %s\n", amqp_version());
#endif
#if HAVE_LIBSYSTEMD
    fprintf(out, "  libsystemd %s (build time)\n", RELAY_LIBSYSTEMD_VERSION);
#endif
}

void version_print(FILE *out)
{
    fprintf(out, "pgtrickle-relay %s (catalog version %d)\n", RELAY_VERSION, RELAY_CATALOG_VERSION);
    fprintf(out, "built: %s, %s, sd_notify %s\n", RELAY_BUILD_COMPILER, RELAY_BUILD_TYPE,
            notify_available() ? "yes" : "no");
#ifdef RELAY_TEST_ACK_FIRST
    fputs("BROKEN ON PURPOSE: built with test_ack_first (acknowledges before publishing; the "
          "soak harness's self-test only)\n", out);
#endif
    fprintf(out, "sources: %s\n", registry_source_names());
    fprintf(out, "sinks: %s\n", registry_sink_names());
    fputs("libraries:\n", out);
    print_libraries(out);
    struct utsname u;
    if (uname(&u) == 0)
        fprintf(out, "system: %s %s %s, glibc %s\n", u.sysname, u.release, u.machine,
                gnu_get_libc_version());
}
