/*
 * activation.c — ReLU, ELU (alpha 1) and inverted dropout. The dropout mask
 * for element i hashes (seed, i / 4), so it is the same for any thread count.
 *
 * Every select reads both of its operands unconditionally (`float d =
 * dout[i]` before the comparison): C lets `c ? dout[i] : 0` skip the load,
 * which stops gcc from turning the branch into a vector blend, and a branch on
 * the sign of a random activation mispredicts half the time.
 */
#include "eg_ops.h"
#include "eg_vmath.h"

#include <math.h>

void eg_relu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
    }
}

void eg_relu_backward(float *dinp, const float *dout, const float *out, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float d = dout[i];
        dinp[i] = out[i] > 0.0f ? d : 0.0f;
    }
}

void eg_elu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        /* x <= 0 is false for NaN, so NaN passes through as in torch */
        out[i] = eg_vm_select(x <= 0.0f, eg_vm_expm1_nonpos(x), x);
    }
}

void eg_elu_backward(float *dinp, const float *dout, const float *out, size_t n)
{
    /* d/dx expm1(x) = exp(x) = out + 1: no exponential in the backward */
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float d = dout[i], o = out[i];
        float neg = d * (o + 1.0f);   /* computed for every element, so no branch (see top) */
        dinp[i] = o > 0.0f ? d : neg;
    }
}

void eg_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p,
                        uint64_t seed)
{
    if (!(p > 0.0f)) {
        #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
        for (size_t i = 0; i < n; i++) {
            mask[i] = 1.0f;
            out[i] = inp[i];
        }
        return;
    }
    const float scale = 1.0f / (1.0f - p);
    /* One hash of (seed, i / 4) gives the four 16-bit uniforms of elements
     * 4q .. 4q+3: the mask of element i depends only on (seed, i), and the
     * drop rate is p to 1/65536. */
    const uint16_t threshold = (uint16_t)lrintf(p * 65536.0f < 65535.0f ? p * 65536.0f : 65535.0f);
    enum { BLOCK = 256 };   /* elements per block: 64 hashes, then a vector loop */
    const size_t blocks = n / BLOCK + (n % BLOCK != 0);
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t blk = 0; blk < blocks; blk++) {
        uint16_t u[BLOCK];
        for (int q = 0; q < BLOCK / 4; q++) {
            uint64_t r = eg_rng_derive(seed, (uint64_t)(blk * (BLOCK / 4) + (size_t)q));
            for (int j = 0; j < 4; j++, r >>= 16) {
                u[4 * q + j] = (uint16_t)r;
            }
        }
        size_t i0 = blk * BLOCK;
        int len = n - i0 < BLOCK ? (int)(n - i0) : BLOCK;
        for (int j = 0; j < len; j++) {
            float keep = u[j] < threshold ? 0.0f : scale;
            mask[i0 + j] = keep;
            out[i0 + j] = inp[i0 + j] * keep;
        }
    }
}

void eg_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        dinp[i] = dout[i] * mask[i];
    }
}
