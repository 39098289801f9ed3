/*
 * rmsnorm.c — RMSNorm (eg_ops.h), the normalisation of Llama-family blocks.
 *
 * Hugging Face's LlamaRMSNorm: x * rsqrt(mean(x^2) + eps), then times the
 * weight, all in float32. The sum of squares runs in fixed lanes (so it
 * vectorises and gives the same bits on every machine) and is combined in
 * double; rstd is rounded to float once.
 */
#include "eg.h"
#include "eg_ops.h"

#include <math.h>

#define LANES 16

static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps)
{
    float part[LANES] = {0};
    int i = 0;
    for (; i + LANES <= C; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            part[l] += x[i + l] * x[i + l];
        }
    }
    double ss = 0.0;
    for (int l = 0; l < LANES; l++) {
        ss += part[l];
    }
    for (; i < C; i++) {
        ss += (double)x[i] * x[i];
    }
    const float rstd = (float)(1.0 / sqrt(ss / C + (double)eps));
    for (i = 0; i < C; i++) {
        out[i] = w[i] * (x[i] * rstd);
    }
}

void eg_rmsnorm_forward(float *out, const float *inp, const float *w, size_t N, int C, float eps)
{
#pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
    for (long r = 0; r < (long)N; r++) {
        rmsnorm_row(out + (size_t)r * C, inp + (size_t)r * C, w, C, eps);
    }
}
