/*
 * linear.c — fully connected layer, out = inp w^T + b, through the BLAS shim
 * (PyTorch weight layout (out, in), so the product uses transB = 1).
 */
#include "eg_ops.h"

#include <string.h>

void eg_linear_forward(float *out, const float *inp, const float *w, const float *b,
                       int N, int C, int OC, int prec)
{
    // inp (N,C), w (OC,C), b (OC) -> out (N,OC)
    if (N <= 0 || OC <= 0) {
        return;
    }
    if (C <= 0) {
        memset(out, 0, (size_t)N * (size_t)OC * sizeof(float));
    } else {
        eg_gemm_prec(prec, 0, 1, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC);
    }
    if (b != NULL) {
        eg_bias_forward(out, b, N, OC);
    }
}

void eg_bias_forward(float *out, const float *b, int N, int OC)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, OC))
    for (int i = 0; i < N; i++) {
        float *o = out + (size_t)i * OC;
        for (int j = 0; j < OC; j++) {
            o[j] += b[j];
        }
    }
}

void eg_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int N, int C, int OC, int prec)
{
    // dout (N,OC), inp (N,C), w (OC,C)
    if (N <= 0 || OC <= 0 || C <= 0) {
        if (dinp != NULL && N > 0 && C > 0) {
            memset(dinp, 0, (size_t)N * (size_t)C * sizeof(float));
        }
        return;
    }
    if (dinp != NULL) {
        eg_gemm_prec(prec, 0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, C);
    }
    eg_gemm_prec(prec, 1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (db != NULL) {
        eg_bias_backward(db, dout, N, OC);
    }
}

void eg_bias_backward(float *db, const float *dout, int N, int OC)
{
    /* column sums: see EG_COL_BLOCK in eg_ops.h */
    #pragma omp parallel if (EG_OMP_WORTH(N, OC))
    {
        int c0, c1;
        eg_thread_columns(OC, &c0, &c1);
        for (int b0 = c0; b0 < c1; b0 += EG_COL_BLOCK) {
            int nb = c1 - b0 < EG_COL_BLOCK ? c1 - b0 : EG_COL_BLOCK;
            double s[EG_COL_BLOCK] = {0};
            for (int i = 0; i < N; i++) {
                const float *d = dout + (size_t)i * OC + b0;
                for (int j = 0; j < nb; j++) {
                    s[j] += d[j];
                }
            }
            for (int j = 0; j < nb; j++) {
                db[b0 + j] += (float)s[j];
            }
        }
    }
}
