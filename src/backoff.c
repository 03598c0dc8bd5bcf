/*
 * backoff.c - jittered exponential backoff.
 *
 * Equal jitter: half of the exponential delay is fixed, half is random, so
 * relays that failed together do not retry in lock step, yet a delay never
 * collapses towards zero.
 */
#include "backoff.h"

#include <time.h>
#include <unistd.h>

void backoff_init(relay_backoff *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    b->attempt = 0;
    b->base_ms = 100;
    b->cap_ms = 30000;
    b->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)b;
    if (!b->rng)
        b->rng = 0x9e3779b97f4a7c15ULL;
}

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

int64_t backoff_next(relay_backoff *b)
{
    int64_t d = b->base_ms;
    for (int i = 0; i < b->attempt && d < b->cap_ms; i++)
        d *= 2;
    if (d > b->cap_ms)
        d = b->cap_ms;
    if (b->attempt < 64)
        b->attempt++;
    int64_t half = d / 2;
    return half + (int64_t)(xorshift(&b->rng) % (uint64_t)(half + 1));
}

void backoff_reset(relay_backoff *b)
{
    b->attempt = 0;
}
