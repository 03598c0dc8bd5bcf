/*
 * kmock.c - a Kafka cluster for the tests: librdkafka's mock cluster
 * (rdkafka_mock.h, a real Kafka-protocol peer with idempotent producer and
 * consumer-group support) in a process of its own.
 *
 *   kmock [-b brokers] [-t topic:partitions]... [-d]
 *
 * It prints the bootstrap servers ("127.0.0.1:port,...") as the first line
 * on stdout, then runs until SIGTERM or SIGINT. The ports are random: the
 * librdkafka 2.0 mock API cannot choose them, so callers read that line.
 * Topics a client auto-creates get 4 partitions; -t creates one with a fixed
 * count up front. -d starts with every broker down (connections are refused
 * until an "up" command). KMOCK_DEBUG=<librdkafka debug contexts> (e.g.
 * "mock,cgrp") traces the cluster's handling of every request on stderr.
 *
 * Fault injection, one command per line on stdin (each acknowledged with a
 * line "ok <command>" or "error <why>" on stdout):
 *   down [broker]                   disconnect and refuse new connections
 *   up [broker]                     accept connections again
 *   error <api_key> <code> [count]  the next `count` (1) requests of that
 *                                   Kafka API fail with error `code`, e.g.
 *                                   "error 0 47" (Produce, INVALID_PRODUCER_EPOCH)
 *                                   or "error 8 15 100" (OffsetCommit,
 *                                   COORDINATOR_NOT_AVAILABLE)
 *   clear <api_key>                 drop queued errors of that API
 *   topic <name> <partitions>       create a topic
 *   topic-error <name> <code>       answer metadata requests for that topic
 *                                   with error `code` (0 clears), e.g. 3
 *                                   (UNKNOWN_TOPIC_OR_PART): the topic
 *                                   looks deleted
 *   rtt <ms> [broker]               delay every response
 * Without a broker id a command applies to all brokers. At end of input
 * (stdin is /dev/null for a long-running shared server) it keeps running.
 */
#define _DEFAULT_SOURCE
#include <dirent.h>
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t running = 1;

static void on_signal(int sig)
{
    (void)sig;
    running = 0;
}

static void reply(const char *fmt, const char *a, const char *b)
{
    printf(fmt, a, b);
    putchar('\n');
    fflush(stdout);
}

static int create_topic(rd_kafka_mock_cluster_t *mc, const char *spec)
{
    char name[256];
    int parts = 1;
    const char *colon = strrchr(spec, ':');
    size_t n = colon ? (size_t)(colon - spec) : strlen(spec);
    if (n == 0 || n >= sizeof name)
        return -1;
    memcpy(name, spec, n);
    name[n] = '\0';
    if (colon)
        parts = atoi(colon + 1);
    if (parts < 1)
        return -1;
    return rd_kafka_mock_topic_create(mc, name, parts, 1) ? -1 : 0;
}

/* Like a real broker (Kafka sets TCP_NODELAY on every connection), answer
 * without Nagle's algorithm: the mock writes a response in several small
 * writes, and with Nagle the last one waits for the client's delayed ACK,
 * adding about 40 ms to a round trip now and then. The mock API does not
 * expose its sockets, so find its listening sockets among this process's
 * descriptors; on Linux accepted connections inherit TCP_NODELAY from the
 * listener. Returns how many listeners were changed. */
static int disable_nagle_on_listeners(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    int changed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        struct stat st;
        int listening = 0, one = 1;
        socklen_t len = sizeof listening;
        if (e->d_name[0] == '.' || fd == dirfd(d) || fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode))
            continue;
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(fd, (struct sockaddr *)&ss, &sl) < 0 || ss.ss_family != AF_INET)
            continue;
        if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0 || !listening)
            continue;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0)
            changed++;
    }
    closedir(d);
    return changed;
}

/* Run one command line; returns NULL on success or a reason. */
static const char *run_command(rd_kafka_mock_cluster_t *mc, char *line)
{
    char *argv[6] = {0};
    int argc = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && argc < 6; tok = strtok(NULL, " \t\r\n"))
        argv[argc++] = tok;
    if (argc == 0)
        return NULL;
    int broker = argc > 1 ? atoi(argv[1]) : -1;
    rd_kafka_resp_err_t err = RD_KAFKA_RESP_ERR_NO_ERROR;
    if (strcmp(argv[0], "down") == 0) {
        err = rd_kafka_mock_broker_set_down(mc, broker);
    } else if (strcmp(argv[0], "up") == 0) {
        err = rd_kafka_mock_broker_set_up(mc, broker);
    } else if (strcmp(argv[0], "error") == 0) {
        if (argc < 3)
            return "usage: error <api_key> <code> [count]";
        size_t cnt = argc > 3 ? (size_t)atoi(argv[3]) : 1;
        if (cnt < 1 || cnt > 100000)
            return "count must be 1..100000";
        rd_kafka_resp_err_t *codes = calloc(cnt, sizeof *codes);
        if (!codes)
            return "out of memory";
        for (size_t i = 0; i < cnt; i++)
            codes[i] = (rd_kafka_resp_err_t)atoi(argv[2]);
        rd_kafka_mock_push_request_errors_array(mc, (int16_t)atoi(argv[1]), cnt, codes);
        free(codes);
    } else if (strcmp(argv[0], "clear") == 0) {
        if (argc < 2)
            return "usage: clear <api_key>";
        rd_kafka_mock_clear_request_errors(mc, (int16_t)atoi(argv[1]));
    } else if (strcmp(argv[0], "topic") == 0) {
        if (argc < 3)
            return "usage: topic <name> <partitions>";
        err = rd_kafka_mock_topic_create(mc, argv[1], atoi(argv[2]), 1);
    } else if (strcmp(argv[0], "topic-error") == 0) {
        if (argc < 3)
            return "usage: topic-error <name> <code>";
        rd_kafka_mock_topic_set_error(mc, argv[1], (rd_kafka_resp_err_t)atoi(argv[2]));
    } else if (strcmp(argv[0], "rtt") == 0) {
        if (argc < 2)
            return "usage: rtt <ms> [broker]";
        err = rd_kafka_mock_broker_set_rtt(mc, argc > 2 ? atoi(argv[2]) : -1, atoi(argv[1]));
    } else {
        return "unknown command (down, up, error, clear, topic, topic-error, rtt)";
    }
    return err ? rd_kafka_err2str(err) : NULL;
}

int main(int argc, char **argv)
{
    int brokers = 1, start_down = 0, opt;
    const char *topics[32];
    int ntopics = 0;
    while ((opt = getopt(argc, argv, "b:t:d")) != -1) {
        if (opt == 'b') {
            brokers = atoi(optarg);
        } else if (opt == 't' && ntopics < 32) {
            topics[ntopics++] = optarg;
        } else if (opt == 'd') {
            start_down = 1;
        } else {
            fprintf(stderr, "usage: kmock [-b brokers] [-t topic:partitions]... [-d]\n");
            return 2;
        }
    }
    if (brokers < 1) {
        fprintf(stderr, "kmock: -b must be at least 1\n");
        return 2;
    }

    /* Threads created from here on (librdkafka's, the mock brokers') inherit
     * a mask that blocks SIGTERM/SIGINT, so the signal always reaches the
     * main thread, which unblocks it below and waits in read() or pause(). */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, NULL);

    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof errstr);
    if (getenv("KMOCK_DEBUG")) { /* e.g. "mock": the cluster's own trace, on stderr */
        rd_kafka_conf_set(conf, "log_level", "7", errstr, sizeof errstr);
        if (rd_kafka_conf_set(conf, "debug", getenv("KMOCK_DEBUG"), errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
            fprintf(stderr, "kmock: KMOCK_DEBUG: %s\n", errstr);
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "kmock: rd_kafka_new: %s\n", errstr);
        return 1;
    }
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, brokers);
    if (!mc) {
        fprintf(stderr, "kmock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }
    for (int i = 0; i < ntopics; i++)
        if (create_topic(mc, topics[i]) < 0)
            fprintf(stderr, "kmock: cannot create topic \"%s\" (expected name:partitions)\n",
                    topics[i]);
    if (disable_nagle_on_listeners() < brokers)
        fprintf(stderr, "kmock: could not set TCP_NODELAY on every broker listener\n");
    if (start_down)
        rd_kafka_mock_broker_set_down(mc, -1);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: a signal interrupts the read below */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_sigmask(SIG_UNBLOCK, &term, NULL);

    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);

    char line[1024];
    int input_open = 1;
    while (running) {
        if (!input_open) {
            pause();
            continue;
        }
        if (!fgets(line, sizeof line, stdin)) {
            if (ferror(stdin) && errno == EINTR) {
                clearerr(stdin);
                continue;
            }
            input_open = 0;
            continue;
        }
        char copy[sizeof line];
        memcpy(copy, line, sizeof line);
        copy[strcspn(copy, "\r\n")] = '\0';
        const char *why = run_command(mc, line);
        if (why)
            reply("error %s: %s", copy, why);
        else
            reply("ok %s%s", copy, "");
    }
    /* No rd_kafka_mock_cluster_destroy(): in librdkafka 2.0.2 it sometimes
     * hangs joining a mock broker thread (seen here about 1 time in 10).
     * Nothing outlives the process, so just leave. */
    fflush(stdout);
    _exit(0);
}
