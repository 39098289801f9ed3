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
 * work by token row (hA, out; in backward dh, dx and per-block partial sums
 * of dA and dB over fixed row blocks, added in block order), so no atomics
 * and results independent of the thread count. (If the r x O copy of B^T or
 * the partial sums cannot be allocated, the BLAS path runs instead.)
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

/* Rows per block of bwd_direct: at least 64, and at most LORA_MAX_BLOCKS
 * blocks, so the per-block partial sums stay small. Depends on N only. */
#define LORA_MAX_BLOCKS 32

/* One pass over the token rows in fixed blocks (in parallel): per row, dh
 * from the dout row, the dx row, and the block's partial sums of dB and dA
 * (each activation row is read once, contiguously); then the partials are
 * added block by block, in block order, so the result does not depend on
 * the thread count. part: nb * r * (O + In) floats. */
static void bwd_direct(float *dx, size_t lddx, float *dA, float *dB, const float *dout,
                       size_t lddo, const float *x, size_t ldx, const float *hA, const float *A,
                       const float *Bt, size_t N, int In, int O, int r, float scale, float p,
                       uint64_t seed, float *dh, float *part, size_t rb, int nb)
{
    const int big = EG_OMP_WORTH(N, In + O);
    const size_t per = (size_t)r * (size_t)(O + In);
    #pragma omp parallel if (big)
    {
        #pragma omp for schedule(dynamic, 1)
        for (int blk = 0; blk < nb; blk++) {
            float *pB = part + (size_t)blk * per;   /* (r, O) */
            float *pA = pB + (size_t)r * O;         /* (r, In) */
            memset(pB, 0, per * sizeof(float));
            const size_t t0 = (size_t)blk * rb, t1 = t0 + rb < N ? t0 + rb : N;
            for (size_t t = t0; t < t1; t++) {
                const float *d = dout + t * lddo;
                const float *h = hA + t * (size_t)r;
                float g[LORA_DIRECT_MAX_R];
                for (int j = 0; j < r; j++) {
                    const float *b = Bt + (size_t)j * O;
                    float acc = 0.0f;
                    float *pBj = pB + (size_t)j * O;
                    const float hj = h[j];
                    #pragma omp simd reduction(+:acc)
                    for (int k = 0; k < O; k++) {
                        acc += d[k] * b[k];
                        pBj[k] += d[k] * hj;
                    }
                    g[j] = scale * acc;
                    dh[t * (size_t)r + j] = g[j];
                }
                const float *xr = x + t * ldx;
                float *dxr = dx != NULL ? dx + t * lddx : NULL;
                if (p > 0.0f) {
                    for (int c = 0; c < In; c++) {
                        const float m = eg_gmoe_dropout(seed, t * (size_t)In + (size_t)c, p);
                        const float xv = xr[c] * m;
                        float acc = 0.0f;
                        for (int j = 0; j < r; j++) {
                            pA[(size_t)j * In + c] += g[j] * xv;
                            acc += g[j] * A[(size_t)j * In + c];
                        }
                        if (dxr != NULL) {
                            dxr[c] += acc * m;
                        }
                    }
                } else {
                    for (int j = 0; j < r; j++) {
                        const float gj = g[j];
                        float *pAj = pA + (size_t)j * In;
                        #pragma omp simd
                        for (int c = 0; c < In; c++) {
                            pAj[c] += gj * xr[c];
                        }
                    }
                    if (dxr != NULL) {
                        for (int j = 0; j < r; j++) {
                            const float gj = g[j];
                            const float *a = A + (size_t)j * In;
                            #pragma omp simd
                            for (int c = 0; c < In; c++) {
                                dxr[c] += gj * a[c];
                            }
                        }
                    }
                }
            }
        }
        /* the partials, block by block in order (the barrier above) */
        #pragma omp for schedule(static)
        for (long i = 0; i < (long)per; i++) {
            float acc = 0.0f;
            for (int blk = 0; blk < nb; blk++) {
                acc += part[(size_t)blk * per + (size_t)i];
            }
            if (i < (long)r * O) {
                const int j = (int)(i / O), k = (int)(i % O);
                dB[(size_t)k * r + j] += scale * acc;
            } else {
                dA[i - (long)r * O] += acc;
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
    size_t rb = (N + LORA_MAX_BLOCKS - 1) / LORA_MAX_BLOCKS;
    rb = rb < 64 ? 64 : rb;
    const int nb = (int)((N + rb - 1) / rb);
    float *bt = r <= LORA_DIRECT_MAX_R ? transpose_b(B, O, r) : NULL;
    float *part = bt != NULL ? malloc((size_t)nb * (size_t)r * (size_t)(O + In) * sizeof(float))
                             : NULL;
    if (part != NULL) {
        bwd_direct(dx, lddx, dA, dB, dout, lddo, x, ldx, hA, A, bt, N, In, O, r, scale, p, seed,
                   dh, part, rb, nb);
        free(part);
        free(bt);
        return;
    }
    free(bt);
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
