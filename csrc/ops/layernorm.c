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
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
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
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, C))
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
    /* column sums: see EG_COL_BLOCK in eg_ops.h */
    #pragma omp parallel if (EG_OMP_WORTH(N, C))
    {
        int c0, c1;
        eg_thread_columns(C, &c0, &c1);
        for (int b0 = c0; b0 < c1; b0 += EG_COL_BLOCK) {
            int nb = c1 - b0 < EG_COL_BLOCK ? c1 - b0 : EG_COL_BLOCK;
            double sw[EG_COL_BLOCK] = {0}, sb[EG_COL_BLOCK] = {0};
            for (int i = 0; i < N; i++) {
                const float *x = inp + (size_t)i * C + b0, *dy = dout + (size_t)i * C + b0;
                float m = mean[i], r = rstd[i];
                for (int j = 0; j < nb; j++) {
                    float xh = (x[j] - m) * r;
                    sw[j] += (double)dy[j] * xh;
                    sb[j] += dy[j];
                }
            }
            for (int j = 0; j < nb; j++) {
                dw[b0 + j] += (float)sw[j];
                db[b0 + j] += (float)sb[j];
            }
        }
    }
}
