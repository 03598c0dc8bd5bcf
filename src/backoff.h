/*
 * backoff.h - jittered exponential backoff (SPEC section 4: 100 ms .. 30 s).
 */
#ifndef RELAY_BACKOFF_H
#define RELAY_BACKOFF_H

#include <stdint.h>

typedef struct relay_backoff {
    int attempt;         /* consecutive failures so far */
    int64_t base_ms;     /* first delay, default 100 */
    int64_t cap_ms;      /* maximum delay, default 30000 */
    uint64_t rng;        /* xorshift state */
} relay_backoff;

/* Initialise with the SPEC defaults (100 ms, 30 s). */
void backoff_init(relay_backoff *b);
/* Next delay in ms: min(cap, base * 2^attempt) scaled by a random factor in
 * [0.5, 1.0] ("equal jitter"), then attempt++. */
int64_t backoff_next(relay_backoff *b);
/* Forget the failures (after a success). */
void backoff_reset(relay_backoff *b);

#endif
