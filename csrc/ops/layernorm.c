/*
 * layernorm.c — LayerNorm over the last dimension (torch.nn.LayerNorm with
 * elementwise affine, eps 1e-5). Statistics in double so the gradient check
 * and the PyTorch parity test are not limited by float cancellation.
 */
#include "eg_ops.h"

#include <math.h>

void eg_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int N, int C)
{
    // inp (N,C), w (C), b (C) -> out (N,C), mean (N), rstd (N)
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        double m = 0.0, v = 0.0;
        for (int j = 0; j < C; j++) {
            m += x[j];
        }
        m /= C;
        for (int j = 0; j < C; j++) {
            double d = x[j] - m;
            v += d * d;
        }
        v /= C;
        float r = (float)(1.0 / sqrt(v + 1e-5));
        float *o = out + (size_t)i * C;
        for (int j = 0; j < C; j++) {
            o[j] = ((x[j] - (float)m) * r) * w[j] + b[j];
        }
        mean[i] = (float)m;
        rstd[i] = r;
    }
}

void eg_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                           const float *inp, const float *w, const float *mean,
                           const float *rstd, int N, int C)
{
    // dout (N,C), inp (N,C) -> dinp (N,C) assigned; dw, db (C) accumulated
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        const float *dy = dout + (size_t)i * C;
        float m = mean[i], r = rstd[i];
        double s1 = 0.0, s2 = 0.0;
        for (int j = 0; j < C; j++) {
            double g = (double)dy[j] * w[j];
            s1 += g;
            s2 += g * (double)((x[j] - m) * r);
        }
        s1 /= C;
        s2 /= C;
        float *dx = dinp + (size_t)i * C;
        for (int j = 0; j < C; j++) {
            double xh = (double)((x[j] - m) * r);
            dx[j] = (float)(r * ((double)dy[j] * w[j] - s1 - xh * s2));
        }
    }
    #pragma omp parallel for schedule(static)
    for (int j = 0; j < C; j++) {
        double sw = 0.0, sb = 0.0;
        for (int i = 0; i < N; i++) {
            float xh = (inp[(size_t)i * C + j] - mean[i]) * rstd[i];
            sw += (double)dout[(size_t)i * C + j] * xh;
            sb += dout[(size_t)i * C + j];
        }
        dw[j] += (float)sw;
        db[j] += (float)sb;
    }
}
