/*
 * activation.c — ReLU, ELU (alpha 1) and inverted dropout. The dropout mask
 * for element i hashes (seed, i), so it is the same for any thread count.
 */
#include "eg_ops.h"

#include <math.h>

void eg_relu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        out[i] = inp[i] > 0.0f ? inp[i] : 0.0f;
    }
}

void eg_relu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        dinp[i] = inp[i] > 0.0f ? dout[i] : 0.0f;
    }
}

void eg_elu_forward(float *out, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        out[i] = inp[i] > 0.0f ? inp[i] : expm1f(inp[i]);
    }
}

void eg_elu_backward(float *dinp, const float *dout, const float *inp, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        dinp[i] = inp[i] > 0.0f ? dout[i] : dout[i] * expf(inp[i]);
    }
}

void eg_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p,
                        uint64_t seed)
{
    if (!(p > 0.0f)) {
        #pragma omp parallel for schedule(static) if (n > 32768)
        for (size_t i = 0; i < n; i++) {
            mask[i] = 1.0f;
            out[i] = inp[i];
        }
        return;
    }
    const float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        uint64_t r = eg_rng_derive(seed, (uint64_t)i);
        float u = (float)(r >> 40) * 0x1.0p-24f;
        mask[i] = u < p ? 0.0f : scale;
        out[i] = inp[i] * mask[i];
    }
}

void eg_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n)
{
    #pragma omp parallel for schedule(static) if (n > 32768)
    for (size_t i = 0; i < n; i++) {
        dinp[i] = dout[i] * mask[i];
    }
}
