/*
 * rng.c — explicit-state random numbers.
 *
 * splitmix64: one 64-bit word of state, passes BigCrush, and jumping to an
 * independent stream is a hash of (seed, stream). The caller owns the state,
 * so a sampler that derives one stream per target node gives the same result
 * for any thread count.
 */
#include "eg.h"

/* eg_rng_next and eg_rng_derive are static inline in eg.h. */

#include <math.h>

float eg_rng_uniform(uint64_t *state)
{
    return (float)(eg_rng_next(state) >> 40) * 0x1.0p-24f;
}

uint64_t eg_rng_below(uint64_t *state, uint64_t n)
{
    if (n <= 1) {
        return 0;
    }
    /* Rejection sampling: reject the top partial copy of [0, n). */
    uint64_t limit = UINT64_MAX - (UINT64_MAX % n);
    uint64_t x;
    do {
        x = eg_rng_next(state);
    } while (x >= limit);
    return x % n;
}

float eg_rng_normal(uint64_t *state)
{
    /* u1 in (0, 1] so log never sees 0. */
    double u1 = ((double)(eg_rng_next(state) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = (double)(eg_rng_next(state) >> 11) * 0x1.0p-53;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
