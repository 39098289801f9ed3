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

/* 1/sqrt(mean(x^2) + eps) of one row, rounded to float once. */
static float row_rstd(const float *x, int C, float eps)
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
    return (float)(1.0 / sqrt(ss / C + (double)eps));
}

static void rmsnorm_row(float *out, const float *x, const float *w, int C, float eps)
{
    const float rstd = row_rstd(x, C, eps);
    for (int i = 0; i < C; i++) {
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

void eg_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                         const float *w, size_t N, int C, float eps)
{
    /* y = w * x * r, r = (mean(x^2) + eps)^-1/2:
     * dx = r * (w dy) - x * r^3 / C * sum(w dy x) */
    if (dinp != NULL) {
#pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
        for (long i = 0; i < (long)N; i++) {
            const float *x = inp + (size_t)i * C, *dy = dout + (size_t)i * C;
            double ss = 0.0, dot = 0.0;
            for (int j = 0; j < C; j++) {
                ss += (double)x[j] * x[j];
                dot += (double)w[j] * dy[j] * x[j];
            }
            const double r = 1.0 / sqrt(ss / C + (double)eps);
            const double k = r * r * r * dot / C;
            float *dx = dinp + (size_t)i * C;
            for (int j = 0; j < C; j++) {
                dx[j] = (float)(r * ((double)w[j] * dy[j]) - (double)x[j] * k);
            }
        }
    }
    if (dw != NULL) {
        /* column sums in row order (EG_COL_BLOCK in eg_ops.h); each column
         * block recomputes the rows' float rstd as the forward does */
#pragma omp parallel if (EG_OMP_WORTH(N, C))
        {
            int c0, c1;
            eg_thread_columns(C, &c0, &c1);
            for (int b0 = c0; b0 < c1; b0 += EG_COL_BLOCK) {
                int nb = c1 - b0 < EG_COL_BLOCK ? c1 - b0 : EG_COL_BLOCK;
                double sw[EG_COL_BLOCK] = {0};
                for (size_t i = 0; i < N; i++) {
                    const float r = row_rstd(inp + i * C, C, eps);
                    const float *x = inp + i * C + b0, *dy = dout + i * C + b0;
                    for (int j = 0; j < nb; j++) {
                        sw[j] += (double)dy[j] * (double)(x[j] * r);
                    }
                }
                for (int j = 0; j < nb; j++) {
                    dw[b0 + j] += (float)sw[j];
                }
            }
        }
    }
}
