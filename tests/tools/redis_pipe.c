/*
 * redis_pipe.c - a plain hiredis client for the Redis benchmark's reference
 * numbers (bench/bench_redis.sh). It does what the relay's sink does for
 * one batch, the way a plain client would, and nothing else: it is
 * deliberately independent of the relay.
 *
 *   redis_pipe PORT KEY N SUBJECT BODY [--prefix P] [--chunk C] [--dedup-window S]
 *       N entries XADD KEY * dedup_key <P><i> subject SUBJECT op insert
 *       payload BODY, i = 1..N, pipelined: C commands appended with
 *       redisAppendCommandArgv (default: all N), then C replies read, every
 *       reply checked to be an entry id. With --dedup-window S each XADD
 *       runs in the same Lua script as the relay's dedup window (EVALSHA,
 *       marker KEY:dedup:<P><i> with EX S). Connects to 127.0.0.1:PORT.
 *       Prints {"seconds":..., "events_per_s":...} timed from the first
 *       command to the last reply (connecting and SCRIPT LOAD excluded).
 *       Exits 1 when any reply is not an entry id.
 */
#include <hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char SCRIPT[] =
    "if redis.call('EXISTS', KEYS[2]) == 1 then return false end\n"
    "local id = redis.call('XADD', KEYS[1], unpack(ARGV, 2))\n"
    "redis.call('SET', KEYS[2], id, 'EX', ARGV[1])\n"
    "return id\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: redis_pipe PORT KEY N SUBJECT BODY [--prefix P] [--chunk C] "
                        "[--dedup-window S]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    const char *key = argv[2];
    long n = atol(argv[3]), chunk = n;
    const char *subject = argv[4], *body = argv[5], *prefix = "ref-", *window = NULL;
    for (int i = 6; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--prefix") == 0)
            prefix = argv[i + 1];
        else if (strcmp(argv[i], "--chunk") == 0)
            chunk = atol(argv[i + 1]);
        else if (strcmp(argv[i], "--dedup-window") == 0)
            window = argv[i + 1];
    }
    struct timeval tv = {10, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (!c || c->err) {
        fprintf(stderr, "connect: %s\n", c ? c->errstr : "oom");
        return 1;
    }
    char sha[41] = "";
    if (window) {
        redisReply *r = redisCommand(c, "SCRIPT LOAD %s", SCRIPT);
        if (!r || r->type != REDIS_REPLY_STRING) {
            fprintf(stderr, "SCRIPT LOAD failed\n");
            return 1;
        }
        snprintf(sha, sizeof sha, "%s", r->str);
        freeReplyObject(r);
    }
    char dk[128], marker[512];
    double t0 = now_s();
    for (long done = 0; done < n;) {
        long k = n - done < chunk ? n - done : chunk;
        for (long i = done + 1; i <= done + k; i++) {
            snprintf(dk, sizeof dk, "%s%ld", prefix, i);
            if (window) {
                snprintf(marker, sizeof marker, "%s:dedup:%s", key, dk);
                const char *a[] = {"EVALSHA", sha, "2", key, marker, window, "*", "dedup_key", dk,
                                   "subject", subject, "op", "insert", "payload", body};
                redisAppendCommandArgv(c, 15, a, NULL);
            } else {
                const char *a[] = {"XADD", key, "*", "dedup_key", dk, "subject", subject,
                                   "op", "insert", "payload", body};
                redisAppendCommandArgv(c, 11, a, NULL);
            }
        }
        for (long i = 0; i < k; i++) {
            redisReply *r = NULL;
            if (redisGetReply(c, (void **)&r) != REDIS_OK || !r) {
                fprintf(stderr, "reply: %s\n", c->errstr);
                return 1;
            }
            if (r->type != REDIS_REPLY_STRING) {
                fprintf(stderr, "unexpected reply type %d: %s\n", r->type,
                        r->type == REDIS_REPLY_ERROR ? r->str : "");
                return 1;
            }
            freeReplyObject(r);
        }
        done += k;
    }
    double s = now_s() - t0;
    printf("{\"seconds\":%.3f,\"events_per_s\":%.0f}\n", s, (double)n / s);
    redisFree(c);
    return 0;
}
