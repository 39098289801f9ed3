/*
 * lora_delta.c — the low-rank term of a LoRA linear layer on top of a
 * frozen product computed elsewhere (eg_qmatmul, so the base weight may stay
 * quantized): out += s * B A drop(x), s = alpha / r.
 *
 * Dropout acts on the LoRA input only (the base product sees x); the mask is
 * a pure function of (seed, element index) — splitmix64, eg_gmoe_dropout —
 * so backward regenerates it and nothing but hA = drop(x) A^T is saved, and
 * the result does not depend on the thread count.
 *
 * Small ranks (r <= LORA_DIRECT_MAX_R, the usual 1..16) skip the BLAS: every
 * product here is thin (one side r wide), so a GEMM call costs more in
 * packing and thread start-up than in arithmetic, and a step makes ~1,000 of
 * them. The direct loops below read each activation row once, split the
 * work by token row (hA, dh, dx) or by output column (dA, dB: each thread
 * owns whole columns and sums over the tokens in order), so no atomics and
 * results independent of the thread count. (If the r x O copy of B^T
 * cannot be allocated, the BLAS path runs instead.)
 */
#include "eg_ops.h"
#include "eg_gmoe.h"

#include <stdlib.h>
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

#define LORA_DIRECT_MAX_R 16
/* columns per task of the column-split reductions (dA, dB) */
#define LORA_COLS 64

/* Bt (r, O) = B^T: the rank-sized loops then run along contiguous rows */
static float *transpose_b(const float *B, int O, int r)
{
    float *bt = malloc((size_t)O * (size_t)r * sizeof *bt);
    if (bt != NULL) {
        for (int k = 0; k < O; k++) {
            for (int j = 0; j < r; j++) {
                bt[(size_t)j * O + k] = B[(size_t)k * r + j];
            }
        }
    }
    return bt;
}

static void fwd_direct(float *out, size_t ldo, float *hA, const float *x, size_t ldx,
                       const float *A, const float *Bt, size_t N, int In, int O, int r,
                       float scale, float p, uint64_t seed)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, In + O))
    for (long t = 0; t < (long)N; t++) {
        const float *xr = x + (size_t)t * ldx;
        for (int j = 0; j < r; j++) {
            const float *a = A + (size_t)j * In;
            float acc = 0.0f;
            if (p > 0.0f) {
                for (int c = 0; c < In; c++) {
                    acc += xr[c] * eg_gmoe_dropout(seed, (size_t)t * (size_t)In + (size_t)c, p) * a[c];
                }
            } else {
                #pragma omp simd reduction(+:acc)
                for (int c = 0; c < In; c++) {
                    acc += xr[c] * a[c];
                }
            }
            hA[(size_t)t * r + j] = acc;
        }
        float *o = out + (size_t)t * ldo;
        for (int j = 0; j < r; j++) {
            const float h = scale * hA[(size_t)t * r + j];
            const float *b = Bt + (size_t)j * O;
            #pragma omp simd
            for (int k = 0; k < O; k++) {
                o[k] += h * b[k];
            }
        }
    }
}

static void bwd_direct(float *dx, size_t lddx, float *dA, float *dB, const float *dout,
                       size_t lddo, const float *x, size_t ldx, const float *hA, const float *A,
                       const float *Bt, size_t N, int In, int O, int r, float scale, float p,
                       uint64_t seed, float *dh)
{
    const int big = EG_OMP_WORTH(N, In + O);
    #pragma omp parallel if (big)
    {
        /* dh = s dout B (N, r) */
        #pragma omp for schedule(static)
        for (long t = 0; t < (long)N; t++) {
            const float *d = dout + (size_t)t * lddo;
            for (int j = 0; j < r; j++) {
                const float *b = Bt + (size_t)j * O;
                float acc = 0.0f;
                #pragma omp simd reduction(+:acc)
                for (int k = 0; k < O; k++) {
                    acc += d[k] * b[k];
                }
                dh[(size_t)t * r + j] = scale * acc;
            }
        }
        /* dB += s dout^T hA (O, r): each task owns LORA_COLS output columns */
        #pragma omp for schedule(dynamic, 1) nowait
        for (int k0 = 0; k0 < O; k0 += LORA_COLS) {
            const int k1 = k0 + LORA_COLS < O ? k0 + LORA_COLS : O, nk = k1 - k0;
            float acc[LORA_DIRECT_MAX_R * LORA_COLS] = {0};
            for (size_t t = 0; t < N; t++) {
                const float *d = dout + t * lddo + k0;
                for (int j = 0; j < r; j++) {
                    const float h = hA[t * (size_t)r + j];
                    float *aj = acc + j * LORA_COLS;
                    #pragma omp simd
                    for (int k = 0; k < nk; k++) {
                        aj[k] += d[k] * h;
                    }
                }
            }
            for (int k = 0; k < nk; k++) {
                for (int j = 0; j < r; j++) {
                    dB[(size_t)(k0 + k) * r + j] += scale * acc[j * LORA_COLS + k];
                }
            }
        }
        /* (dh complete: the barrier of the first loop) dA += dh^T drop(x) */
        #pragma omp for schedule(dynamic, 1)
        for (int c0 = 0; c0 < In; c0 += LORA_COLS) {
            const int c1 = c0 + LORA_COLS < In ? c0 + LORA_COLS : In, nc = c1 - c0;
            float acc[LORA_DIRECT_MAX_R * LORA_COLS] = {0};
            float xv[LORA_COLS];
            for (size_t t = 0; t < N; t++) {
                const float *xr = x + t * ldx + c0;
                if (p > 0.0f) {
                    for (int c = 0; c < nc; c++) {
                        xv[c] = xr[c] * eg_gmoe_dropout(seed, t * (size_t)In + (size_t)(c0 + c), p);
                    }
                    xr = xv;
                }
                for (int j = 0; j < r; j++) {
                    const float h = dh[t * (size_t)r + j];
                    float *aj = acc + j * LORA_COLS;
                    #pragma omp simd
                    for (int c = 0; c < nc; c++) {
                        aj[c] += h * xr[c];
                    }
                }
            }
            for (int j = 0; j < r; j++) {
                for (int c = 0; c < nc; c++) {
                    dA[(size_t)j * In + c0 + c] += acc[j * LORA_COLS + c];
                }
            }
        }
        /* dx += drop'(dh A) */
        if (dx != NULL) {
            #pragma omp for schedule(static)
            for (long t = 0; t < (long)N; t++) {
                const float *h = dh + (size_t)t * r;
                float *d = dx + (size_t)t * lddx;
                if (p > 0.0f) {
                    for (int c = 0; c < In; c++) {
                        float acc = 0.0f;
                        for (int j = 0; j < r; j++) {
                            acc += h[j] * A[(size_t)j * In + c];
                        }
                        d[c] += acc * eg_gmoe_dropout(seed, (size_t)t * (size_t)In + (size_t)c, p);
                    }
                } else {
                    for (int j = 0; j < r; j++) {
                        const float hj = h[j];
                        const float *a = A + (size_t)j * In;
                        #pragma omp simd
                        for (int c = 0; c < In; c++) {
                            d[c] += hj * a[c];
                        }
                    }
                }
            }
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
    float *bt = r <= LORA_DIRECT_MAX_R ? transpose_b(B, O, r) : NULL;
    if (bt != NULL) {
        fwd_direct(out, ldo, hA, x, ldx, A, bt, N, In, O, r, scale, p, seed);
        free(bt);
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
    float *bt = r <= LORA_DIRECT_MAX_R ? transpose_b(B, O, r) : NULL;
    if (bt != NULL) {
        bwd_direct(dx, lddx, dA, dB, dout, lddo, x, ldx, hA, A, bt, N, In, O, r, scale, p, seed,
                   dh);
        free(bt);
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
