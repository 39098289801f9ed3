/*
 * lora_delta.c — the low-rank term of a LoRA linear layer on top of a
 * frozen product computed elsewhere (eg_qmatmul, so the base weight may stay
 * quantized): out += s * B A drop(x), s = alpha / r.
 *
 * Dropout acts on the LoRA input only (the base product sees x); the mask is
 * a pure function of (seed, element index) — splitmix64, eg_gmoe_dropout —
 * so backward regenerates it and nothing but hA = drop(x) A^T is saved, and
 * the result does not depend on the thread count.
 */
#include "eg_ops.h"
#include "eg_gmoe.h"

#include <string.h>

/* xd (N, In) = x * mask (rows of x with stride ldx) */
static void drop_rows(float *xd, const float *x, size_t ldx, size_t N, int In, float p,
                      uint64_t seed)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, In))
    for (long t = 0; t < (long)N; t++) {
        for (int c = 0; c < In; c++) {
            size_t i = (size_t)t * (size_t)In + (size_t)c;
            xd[i] = x[(size_t)t * ldx + c] * eg_gmoe_dropout(seed, i, p);
        }
    }
}

void eg_lora_delta_forward(float *out, size_t ldo, float *hA, const float *x, size_t ldx,
                           const float *A, const float *B, size_t N, int In, int O, int r,
                           float scale, float p, uint64_t seed, float *scratch)
{
    // x (N,In), A (r,In), B (O,r) -> hA (N,r), out (N,O) +=
    if (N == 0) {
        return;
    }
    const float *xd = x;
    size_t ld = ldx;
    if (p > 0.0f) {
        drop_rows(scratch, x, ldx, N, In, p, seed);
        xd = scratch;
        ld = (size_t)In;
    }
    eg_sgemm(0, 1, (int)N, r, In, 1.0f, xd, (int)ld, A, In, 0.0f, hA, r);
    eg_sgemm(0, 1, (int)N, O, r, scale, hA, r, B, r, 1.0f, out, (int)ldo);
}

void eg_lora_delta_backward(float *dx, size_t lddx, float *dA, float *dB, const float *dout,
                            size_t lddo, const float *x, size_t ldx, const float *hA,
                            const float *A, const float *B, size_t N, int In, int O, int r,
                            float scale, float p, uint64_t seed, float *scratch, float *dh)
{
    if (N == 0) {
        return;
    }
    /* dB += s dout^T hA; dh = s dout B; dA += dh^T drop(x); dx += drop'(dh A) */
    eg_sgemm(1, 0, O, r, (int)N, scale, dout, (int)lddo, hA, r, 1.0f, dB, r);
    eg_sgemm(0, 0, (int)N, r, O, scale, dout, (int)lddo, B, r, 0.0f, dh, r);
    if (p > 0.0f) {
        drop_rows(scratch, x, ldx, N, In, p, seed);
        eg_sgemm(1, 0, r, In, (int)N, 1.0f, dh, r, scratch, In, 1.0f, dA, In);
    } else {
        eg_sgemm(1, 0, r, In, (int)N, 1.0f, dh, r, x, (int)ldx, 1.0f, dA, In);
    }
    if (dx == NULL) {
        return;
    }
    if (p > 0.0f) {
        eg_sgemm(0, 0, (int)N, In, r, 1.0f, dh, r, A, In, 0.0f, scratch, In);
        #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, In))
        for (long t = 0; t < (long)N; t++) {
            for (int c = 0; c < In; c++) {
                size_t i = (size_t)t * (size_t)In + (size_t)c;
                dx[(size_t)t * lddx + c] += scratch[i] * eg_gmoe_dropout(seed, i, p);
            }
        }
    } else {
        eg_sgemm(0, 0, (int)N, In, r, 1.0f, dh, r, A, In, 1.0f, dx, (int)lddx);
    }
}
