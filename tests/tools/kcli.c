/*
 * kcli.c - a small, plain librdkafka client for the Kafka tests and the
 * benchmark's reference numbers. It is deliberately independent of the
 * relay: it checks what the relay wrote and writes what the relay reads.
 *
 *   kcli produce   BROKERS TOPIC N [--from I] [--key PREFIX | --no-key]
 *                  [--value FMT] [--header NAME=VALUE]... [--dedup-header NAME]
 *                  [--partition P] [--rate R]
 *       N records, i = I..I+N-1 (I defaults to 1): key PREFIX<i> (default
 *       "k<i>"), value FMT with every "%d" replaced by i (default {"n":%d}),
 *       fixed headers, and a header NAME = "d-<i>" with --dedup-header.
 *       Idempotent producer, acks=all; exits 0 only when every delivery
 *       report succeeded; --rate paces them at R records per second.
 *       Prints "produced N in S s (R/s)" on stderr.
 *   kcli consume   BROKERS TOPIC[,TOPIC...] N [--group G] [--timeout S]
 *                  [--quiet] [--hex] [--set PROPERTY=VALUE]...
 *       Reads until N records arrived or nothing came for S seconds (10).
 *       Without --group every partition is assigned from the beginning (no
 *       group join); with it the consumer subscribes in group G and commits
 *       nothing. Prints one JSON object per record (topic, partition,
 *       offset, key, value or value_hex, headers) unless --quiet; on stderr
 *       "consumed N in S s (R/s)", timed from the first record.
 *   kcli committed BROKERS GROUP TOPIC
 *       "partition offset" per partition: the group's committed offsets
 *       (-1001 when none).
 *   kcli watermarks BROKERS TOPIC
 *       "partition low high" per partition.
 *   kcli create    BROKERS TOPIC
 *       Make sure the topic exists (auto-created by a metadata request).
 */
#define _POSIX_C_SOURCE 200809L
#include <librdkafka/rdkafka.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void die(const char *what, const char *why)
{
    fprintf(stderr, "kcli: %s: %s\n", what, why);
    exit(1);
}

static void set(rd_kafka_conf_t *c, const char *k, const char *v)
{
    char errstr[512];
    if (rd_kafka_conf_set(c, k, v, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        die(k, errstr);
}

static rd_kafka_t *client(rd_kafka_type_t type, rd_kafka_conf_t *c, const char *brokers)
{
    char errstr[512];
    set(c, "bootstrap.servers", brokers);
    set(c, "log_level", "3");
    rd_kafka_t *rk = rd_kafka_new(type, c, errstr, sizeof errstr);
    if (!rk)
        die("rd_kafka_new", errstr);
    return rk;
}

/* ---- produce ------------------------------------------------------------ */

static long delivered, failed;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (m->err) {
        if (failed++ < 5)
            fprintf(stderr, "kcli: delivery failed: %s\n", rd_kafka_err2str(m->err));
    } else {
        delivered++;
    }
}

/* Replace every "%d" of fmt by i. */
static size_t render(char *out, size_t cap, const char *fmt, long i)
{
    size_t o = 0;
    for (const char *p = fmt; *p && o + 24 < cap; p++) {
        if (p[0] == '%' && p[1] == 'd') {
            o += (size_t)snprintf(out + o, cap - o, "%ld", i);
            p++;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
    return o;
}

static int cmd_produce(int argc, char **argv)
{
    if (argc < 3)
        die("usage", "kcli produce BROKERS TOPIC N [options]");
    const char *brokers = argv[0], *topic = argv[1];
    long n = atol(argv[2]), from = 1;
    const char *key_prefix = "k", *fmt = "{\"n\":%d}", *dedup = NULL;
    const char *hdr_name[16], *hdr_value[16];
    int nhdr = 0, partition = RD_KAFKA_PARTITION_UA;
    double rate = 0;
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-key") == 0) {
            key_prefix = NULL;
            continue;
        }
        if (!v)
            die(a, "missing value");
        i++;
        if (strcmp(a, "--from") == 0) {
            from = atol(v);
        } else if (strcmp(a, "--key") == 0) {
            key_prefix = v;
        } else if (strcmp(a, "--value") == 0) {
            fmt = v;
        } else if (strcmp(a, "--dedup-header") == 0) {
            dedup = v;
        } else if (strcmp(a, "--partition") == 0) {
            partition = atoi(v);
        } else if (strcmp(a, "--rate") == 0) {
            rate = atof(v);
        } else if (strcmp(a, "--header") == 0 && nhdr < 16) {
            const char *eq = strchr(v, '=');
            if (!eq)
                die(a, "expected NAME=VALUE");
            hdr_name[nhdr] = strndup(v, (size_t)(eq - v));
            hdr_value[nhdr++] = eq + 1;
        } else {
            die(a, "unknown option");
        }
    }
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "enable.idempotence", "true");
    set(c, "acks", "all");
    set(c, "linger.ms", "5");
    rd_kafka_conf_set_dr_msg_cb(c, on_delivery);
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, c, brokers);

    size_t cap = strlen(fmt) * 4 + 64;
    char *value = malloc(cap);
    char key[256], dkey[64];
    double t0 = now_s();
    for (long i = from; i < from + n; i++) {
        size_t vlen = render(value, cap, fmt, i);
        rd_kafka_headers_t *h = rd_kafka_headers_new(nhdr + 1);
        for (int j = 0; j < nhdr; j++)
            rd_kafka_header_add(h, hdr_name[j], -1, hdr_value[j], -1);
        if (dedup) {
            snprintf(dkey, sizeof dkey, "d-%ld", i);
            rd_kafka_header_add(h, dedup, -1, dkey, -1);
        }
        size_t klen = key_prefix ? (size_t)snprintf(key, sizeof key, "%s%ld", key_prefix, i) : 0;
        for (;;) {
            rd_kafka_resp_err_t err = rd_kafka_producev(
                rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(partition),
                RD_KAFKA_V_KEY(key_prefix ? key : NULL, klen), RD_KAFKA_V_VALUE(value, vlen),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
            if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
                rd_kafka_poll(rk, 10);
                continue;
            }
            if (err)
                die("produce", rd_kafka_err2str(err));
            break;
        }
        rd_kafka_poll(rk, 0);
        if (rate > 0) { /* pace: record i - from + 1 is due at t0 + (i - from + 1) / rate */
            double due = t0 + (double)(i - from + 1) / rate, now = now_s();
            if (due > now) {
                struct timespec ts = {(time_t)(due - now), (long)((due - now - (double)(time_t)(due - now)) * 1e9)};
                nanosleep(&ts, NULL);
            }
        }
    }
    rd_kafka_flush(rk, 60000);
    double secs = now_s() - t0;
    char errstr[256];
    if (rd_kafka_fatal_error(rk, errstr, sizeof errstr))
        die("fatal error", errstr);
    fprintf(stderr, "produced %ld in %.3f s (%.0f/s)\n", delivered, secs,
            secs > 0 ? (double)delivered / secs : 0.0);
    rd_kafka_destroy(rk);
    free(value);
    for (int j = 0; j < nhdr; j++)
        free((void *)hdr_name[j]);
    return delivered == n && failed == 0 ? 0 : 1;
}

/* ---- consume ------------------------------------------------------------ */

static void put_json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void put_hex(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;
    fputc('"', f);
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%02x", b[i]);
    fputc('"', f);
}

static void print_record(const rd_kafka_message_t *m, int hex)
{
    printf("{\"topic\":");
    const char *t = rd_kafka_topic_name(m->rkt);
    put_json_str(stdout, t, strlen(t));
    printf(",\"partition\":%d,\"offset\":%lld,\"key\":", (int)m->partition, (long long)m->offset);
    if (m->key)
        put_json_str(stdout, m->key, m->key_len);
    else
        printf("null");
    printf(hex ? ",\"value_hex\":" : ",\"value\":");
    if (!m->payload)
        printf("null");
    else if (hex)
        put_hex(stdout, m->payload, m->len);
    else
        put_json_str(stdout, m->payload, m->len);
    printf(",\"headers\":{");
    rd_kafka_headers_t *h = NULL;
    if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t len;
        for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &val, &len) == 0; i++) {
            if (i)
                putchar(',');
            put_json_str(stdout, name, strlen(name));
            putchar(':');
            if (val)
                put_json_str(stdout, val, len);
            else
                printf("null");
        }
    }
    printf("}}\n");
}

/* Partition count of `topic` (0 when it does not exist). */
static int partition_count(rd_kafka_t *rk, const char *topic)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const struct rd_kafka_metadata *md = NULL;
    int n = 0;
    for (int attempt = 0; attempt < 50 && n == 0; attempt++) {
        if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            if (md->topic_cnt == 1 && !md->topics[0].err)
                n = md->topics[0].partition_cnt;
            rd_kafka_metadata_destroy(md);
        }
        if (n == 0) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    rd_kafka_topic_destroy(rkt);
    return n;
}

static rd_kafka_topic_partition_list_t *topic_list(const char *topics)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    char *copy = strdup(topics), *save = NULL;
    for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save))
        rd_kafka_topic_partition_list_add(l, t, RD_KAFKA_PARTITION_UA);
    free(copy);
    return l;
}

static int cmd_consume(int argc, char **argv)
{
    if (argc < 3)
        die("usage", "kcli consume BROKERS TOPIC[,TOPIC] N [options]");
    const char *brokers = argv[0], *topics = argv[1], *group = NULL;
    long n = atol(argv[2]);
    double idle = 10;
    int quiet = 0, hex = 0;
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            char *kv = strdup(argv[++i]), *eq = strchr(kv, '=');
            if (!eq)
                die("--set", "expected NAME=VALUE");
            *eq = '\0';
            set(c, kv, eq + 1);
            free(kv);
        } else if (strcmp(argv[i], "--quiet") == 0)
            quiet = 1;
        else if (strcmp(argv[i], "--hex") == 0)
            hex = 1;
        else if (strcmp(argv[i], "--group") == 0 && i + 1 < argc)
            group = argv[++i];
        else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc)
            idle = atof(argv[++i]);
        else
            die(argv[i], "unknown option");
    }
    set(c, "group.id", group ? group : "kcli-assign");
    set(c, "enable.auto.commit", "false");
    set(c, "auto.offset.reset", "earliest");
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, c, brokers);
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *tl = topic_list(topics);
    if (group) {
        rd_kafka_resp_err_t err = rd_kafka_subscribe(rk, tl);
        if (err)
            die("subscribe", rd_kafka_err2str(err));
    } else {
        rd_kafka_topic_partition_list_t *a = rd_kafka_topic_partition_list_new(16);
        for (int i = 0; i < tl->cnt; i++) {
            int parts = partition_count(rk, tl->elems[i].topic);
            if (parts == 0)
                die(tl->elems[i].topic, "topic does not exist");
            for (int p = 0; p < parts; p++)
                rd_kafka_topic_partition_list_add(a, tl->elems[i].topic, p)->offset =
                    RD_KAFKA_OFFSET_BEGINNING;
        }
        rd_kafka_resp_err_t err = rd_kafka_assign(rk, a);
        if (err)
            die("assign", rd_kafka_err2str(err));
        rd_kafka_topic_partition_list_destroy(a);
    }
    rd_kafka_topic_partition_list_destroy(tl);

    long got = 0;
    double first = 0, last = now_s();
    while (got < n && now_s() - last < idle) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (m->err) {
            if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                fprintf(stderr, "kcli: consume: %s\n", rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        if (got++ == 0)
            first = now_s();
        last = now_s();
        if (!quiet)
            print_record(m, hex);
        rd_kafka_message_destroy(m);
    }
    double secs = got ? last - first : 0;
    fprintf(stderr, "consumed %ld in %.3f s (%.0f/s)\n", got, secs,
            secs > 0 ? (double)got / secs : 0.0);
    fflush(stdout);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return got >= n ? 0 : 1;
}

/* ---- offsets -------------------------------------------------------------- */

static int cmd_committed(int argc, char **argv)
{
    if (argc < 3)
        die("usage", "kcli committed BROKERS GROUP TOPIC");
    rd_kafka_conf_t *c = rd_kafka_conf_new();
    set(c, "group.id", argv[1]);
    rd_kafka_t *rk = client(RD_KAFKA_CONSUMER, c, argv[0]);
    int parts = partition_count(rk, argv[2]);
    if (parts == 0)
        die(argv[2], "topic does not exist");
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(parts);
    for (int p = 0; p < parts; p++)
        rd_kafka_topic_partition_list_add(l, argv[2], p);
    rd_kafka_resp_err_t err = rd_kafka_committed(rk, l, 10000);
    if (err)
        die("committed", rd_kafka_err2str(err));
    for (int i = 0; i < l->cnt; i++)
        printf("%d %lld\n", (int)l->elems[i].partition, (long long)l->elems[i].offset);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
    return 0;
}

static int cmd_watermarks(int argc, char **argv)
{
    if (argc < 2)
        die("usage", "kcli watermarks BROKERS TOPIC");
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, rd_kafka_conf_new(), argv[0]);
    int parts = partition_count(rk, argv[1]);
    if (parts == 0)
        die(argv[1], "topic does not exist");
    for (int p = 0; p < parts; p++) {
        int64_t lo, hi;
        rd_kafka_resp_err_t err = rd_kafka_query_watermark_offsets(rk, argv[1], p, &lo, &hi, 10000);
        if (err)
            die("watermarks", rd_kafka_err2str(err));
        printf("%d %lld %lld\n", p, (long long)lo, (long long)hi);
    }
    rd_kafka_destroy(rk);
    return 0;
}

static int cmd_create(int argc, char **argv)
{
    if (argc < 2)
        die("usage", "kcli create BROKERS TOPIC");
    rd_kafka_t *rk = client(RD_KAFKA_PRODUCER, rd_kafka_conf_new(), argv[0]);
    int parts = partition_count(rk, argv[1]);
    rd_kafka_destroy(rk);
    if (parts == 0)
        die(argv[1], "topic was not created");
    printf("%d\n", parts);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: kcli produce|consume|committed|watermarks|create ...\n");
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "produce") == 0)
        return cmd_produce(argc - 2, argv + 2);
    if (strcmp(cmd, "consume") == 0)
        return cmd_consume(argc - 2, argv + 2);
    if (strcmp(cmd, "committed") == 0)
        return cmd_committed(argc - 2, argv + 2);
    if (strcmp(cmd, "watermarks") == 0)
        return cmd_watermarks(argc - 2, argv + 2);
    if (strcmp(cmd, "create") == 0)
        return cmd_create(argc - 2, argv + 2);
    fprintf(stderr, "kcli: unknown command %s\n", cmd);
    return 2;
}
