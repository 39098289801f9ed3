/*
 * linear.c — fully connected layer, out = inp w^T + b, through the BLAS shim
 * (PyTorch weight layout (out, in), so the product uses transB = 1).
 */
#include "eg_ops.h"

#include <string.h>

void eg_linear_forward(float *out, const float *inp, const float *w, const float *b,
                       int N, int C, int OC)
{
    // inp (N,C), w (OC,C), b (OC) -> out (N,OC)
    if (N <= 0 || OC <= 0) {
        return;
    }
    if (C <= 0) {
        memset(out, 0, (size_t)N * (size_t)OC * sizeof(float));
    } else {
        eg_sgemm(0, 1, N, OC, C, 1.0f, inp, C, w, C, 0.0f, out, OC);
    }
    if (b != NULL) {
        #pragma omp parallel for schedule(static)
        for (int i = 0; i < N; i++) {
            float *o = out + (size_t)i * OC;
            for (int j = 0; j < OC; j++) {
                o[j] += b[j];
            }
        }
    }
}

void eg_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int N, int C, int OC)
{
    // dout (N,OC), inp (N,C), w (OC,C)
    if (N <= 0 || OC <= 0 || C <= 0) {
        if (dinp != NULL && N > 0 && C > 0) {
            memset(dinp, 0, (size_t)N * (size_t)C * sizeof(float));
        }
        return;
    }
    if (dinp != NULL) {
        eg_sgemm(0, 0, N, C, OC, 1.0f, dout, OC, w, C, 0.0f, dinp, C);
    }
    eg_sgemm(1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dw, C);
    if (db != NULL) {
        #pragma omp parallel for schedule(static)
        for (int j = 0; j < OC; j++) {
            double s = 0.0;
            for (int i = 0; i < N; i++) {
                s += dout[(size_t)i * OC + j];
            }
            db[j] += (float)s;
        }
    }
}
