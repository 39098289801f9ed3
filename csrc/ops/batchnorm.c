/*
 * batchnorm.c — BatchNorm1d over the rows of an (N, C) matrix, torch
 * semantics: training normalises with the batch mean and biased variance and
 * reports the unbiased variance for the running estimate; evaluation uses the
 * running statistics. Column statistics are accumulated in double, one
 * thread per column (no atomics).
 */
#include "eg_ops.h"

#include <math.h>

void eg_batchnorm_forward_train(float *out, float *mean, float *rstd, float *var_unbiased,
                                const float *inp, const float *w, const float *b, int N, int C)
{
    // inp (N,C) -> out (N,C); mean, rstd, var_unbiased (C)
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
    for (int c = 0; c < C; c++) {
        double m = 0.0, v = 0.0;
        for (int i = 0; i < N; i++) {
            m += inp[(size_t)i * C + c];
        }
        m /= N;
        for (int i = 0; i < N; i++) {
            double d = inp[(size_t)i * C + c] - m;
            v += d * d;
        }
        float r = (float)(1.0 / sqrt(v / N + 1e-5));
        mean[c] = (float)m;
        rstd[c] = r;
        if (var_unbiased != NULL) {
            var_unbiased[c] = N > 1 ? (float)(v / (N - 1)) : 0.0f;
        }
        for (int i = 0; i < N; i++) {
            size_t q = (size_t)i * C + c;
            out[q] = (inp[q] - (float)m) * r * w[c] + b[c];
        }
    }
}

void eg_batchnorm_forward_eval(float *out, float *mean, float *rstd, const float *inp,
                               const float *w, const float *b, const float *running_mean,
                               const float *running_var, int N, int C)
{
    for (int c = 0; c < C; c++) {
        mean[c] = running_mean[c];
        rstd[c] = (float)(1.0 / sqrt((double)running_var[c] + 1e-5));
    }
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) {
            size_t q = (size_t)i * C + c;
            out[q] = (inp[q] - mean[c]) * rstd[c] * w[c] + b[c];
        }
    }
}

void eg_batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const float *mean, const float *rstd, int N, int C,
                           int train)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
    for (int c = 0; c < C; c++) {
        double sdy = 0.0, sdyx = 0.0;
        for (int i = 0; i < N; i++) {
            size_t q = (size_t)i * C + c;
            float xh = (inp[q] - mean[c]) * rstd[c];
            sdy += dout[q];
            sdyx += (double)dout[q] * xh;
        }
        dw[c] += (float)sdyx;
        db[c] += (float)sdy;
        float r = rstd[c], wc = w[c];
        float m1 = train ? (float)(sdy / N) : 0.0f, m2 = train ? (float)(sdyx / N) : 0.0f;
        for (int i = 0; i < N; i++) {
            size_t q = (size_t)i * C + c;
            float xh = (inp[q] - mean[c]) * r;
            dinp[q] = wc * r * (dout[q] - m1 - xh * m2);
        }
    }
}
