/*
 * rmqbench.c - a plain rabbitmq-c client, the reference the RabbitMQ
 * benchmark (bench/bench_rabbitmq.sh) measures the relay against, and a
 * fast way to fill a queue.
 *
 *   rmqbench produce URL EXCHANGE ROUTING_KEY N BODY [WINDOW]
 *       N persistent, mandatory messages (BODY: a printf format taking the
 *       message number three times, as the relay's envelope does; message_id
 *       "bench:<n>", content_type, type, timestamp, app_id as the relay sets
 *       them) on a channel in confirm mode, at most WINDOW (2048)
 *       unconfirmed, then waits for every confirm. Prints
 *       "produced N in S s (R msg/s)" on stderr; exit 1 on any nack,
 *       return or error.
 *   rmqbench consume URL QUEUE N [PREFETCH]
 *       consumes N messages with manual acks (basic.qos PREFETCH, 500),
 *       one basic.ack multiple per PREFETCH/2 messages. Prints
 *       "consumed N in S s (R msg/s)", timed from the first message.
 * RMQBENCH_HEARTBEAT=<seconds> sets the AMQP heartbeat (default 0, off).
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die_reply(amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return;
    fprintf(stderr, "rmqbench: %s failed (reply type %d, %s)\n", what, (int)r.reply_type,
            r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION ? amqp_error_string2(r.library_error)
                                                             : "server exception");
    exit(1);
}

static amqp_connection_state_t connect_url(const char *url)
{
    struct amqp_connection_info ci;
    char *u = strdup(url);
    if (amqp_parse_url(u, &ci) != AMQP_STATUS_OK) {
        fprintf(stderr, "rmqbench: bad URL %s\n", url);
        exit(2);
    }
    amqp_connection_state_t c = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(c);
    if (amqp_socket_open(s, ci.host, ci.port) != AMQP_STATUS_OK) {
        fprintf(stderr, "rmqbench: cannot connect to %s:%d\n", ci.host, ci.port);
        exit(1);
    }
    const char *hb = getenv("RMQBENCH_HEARTBEAT");
    die_reply(amqp_login(c, *ci.vhost ? ci.vhost : "/", 0, 131072, hb ? atoi(hb) : 0,
                         AMQP_SASL_METHOD_PLAIN, ci.user, ci.password),
              "login");
    amqp_channel_open(c, 1);
    die_reply(amqp_get_rpc_reply(c), "channel.open");
    free(u);
    return c;
}

/* Read frames until at most `target` messages are unconfirmed. */
static void wait_confirms(amqp_connection_state_t c, uint64_t *confirmed, uint64_t sent,
                          uint64_t target)
{
    while (sent - *confirmed > target) {
        amqp_frame_t f;
        struct timeval tv = {30, 0};
        int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "rmqbench: waiting for confirms: %s\n", amqp_error_string2(rc));
            exit(1);
        }
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue;
        if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
            amqp_basic_ack_t *a = f.payload.method.decoded;
            *confirmed = a->delivery_tag; /* acks arrive in order */
        } else {
            fprintf(stderr, "rmqbench: unexpected method 0x%08x (nack or return)\n",
                    f.payload.method.id);
            exit(1);
        }
    }
    amqp_maybe_release_buffers(c);
}

static int produce(const char *url, const char *exchange, const char *rk, uint64_t n,
                   const char *fmt, uint64_t window)
{
    amqp_connection_state_t c = connect_url(url);
    amqp_confirm_select(c, 1);
    die_reply(amqp_get_rpc_reply(c), "confirm.select");
    char body[8192], id[64];
    uint64_t confirmed = 0;
    double t0 = now_s();
    for (uint64_t i = 1; i <= n; i++) {
        int len = snprintf(body, sizeof body, fmt, (int)i, (int)i, (int)i);
        snprintf(id, sizeof id, "bench:%llu", (unsigned long long)i);
        amqp_basic_properties_t p = {0};
        p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                   AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_TYPE_FLAG |
                   AMQP_BASIC_APP_ID_FLAG;
        p.content_type = amqp_cstring_bytes("application/json");
        p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
        p.message_id = amqp_cstring_bytes(id);
        p.timestamp = (uint64_t)time(NULL);
        p.type = amqp_cstring_bytes("insert");
        p.app_id = amqp_cstring_bytes("rmqbench");
        if (amqp_basic_publish(c, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(rk), 1, 0, &p,
                               (amqp_bytes_t){(size_t)len, body}) != AMQP_STATUS_OK) {
            fprintf(stderr, "rmqbench: publish failed\n");
            return 1;
        }
        if (i - confirmed >= window)
            wait_confirms(c, &confirmed, i, window / 2);
    }
    wait_confirms(c, &confirmed, n, 0);
    double dt = now_s() - t0;
    fprintf(stderr, "produced %llu in %.3f s (%.0f msg/s)\n", (unsigned long long)n, dt, n / dt);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

static int consume(const char *url, const char *queue, uint64_t n, int prefetch)
{
    amqp_connection_state_t c = connect_url(url);
    amqp_basic_qos(c, 1, 0, (uint16_t)prefetch, 0);
    die_reply(amqp_get_rpc_reply(c), "basic.qos");
    amqp_basic_consume(c, 1, amqp_cstring_bytes(queue), amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    die_reply(amqp_get_rpc_reply(c), "basic.consume");
    double t0 = 0;
    uint64_t got = 0, unacked = 0, last_tag = 0;
    while (got < n) {
        amqp_envelope_t env;
        struct timeval tv = {30, 0};
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        die_reply(r, "consume");
        if (!got)
            t0 = now_s();
        got++;
        unacked++;
        last_tag = env.delivery_tag;
        amqp_destroy_envelope(&env);
        if (unacked >= (uint64_t)(prefetch / 2 > 0 ? prefetch / 2 : 1) || got == n) {
            amqp_basic_ack(c, 1, last_tag, 1);
            unacked = 0;
        }
    }
    double dt = now_s() - t0;
    fprintf(stderr, "consumed %llu in %.3f s (%.0f msg/s)\n", (unsigned long long)n, dt, n / dt);
    amqp_channel_close(c, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 7 && strcmp(argv[1], "produce") == 0)
        return produce(argv[2], argv[3], argv[4], strtoull(argv[5], NULL, 10), argv[6],
                       argc > 7 ? strtoull(argv[7], NULL, 10) : 2048);
    if (argc >= 5 && strcmp(argv[1], "consume") == 0)
        return consume(argv[2], argv[3], strtoull(argv[4], NULL, 10), argc > 5 ? atoi(argv[5]) : 500);
    fprintf(stderr, "usage: rmqbench produce URL EXCHANGE ROUTING_KEY N BODY [WINDOW]\n"
                    "       rmqbench consume URL QUEUE N [PREFETCH]\n");
    return 2;
}
