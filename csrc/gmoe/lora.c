/*
 * lora.c — LoRA linear (ALGORITHMS.md §B.1, Eq. 1): h = W x + b + s B A drop(x).
 *
 * The frozen product and the rank-r path are both GEMMs; dropout is applied to
 * the LoRA input only, with a hashed mask regenerated in backward (see
 * eg_gmoe_dropout), so nothing but hA = drop(x) A^T is saved.
 */
#include "eg_gmoe.h"

#include <string.h>

/* xd (T,In) = x * mask. */
static void apply_dropout(float *xd, const float *x, size_t n, float p, uint64_t seed)
{
    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        xd[i] = x[i] * eg_gmoe_dropout(seed, i, p);
    }
}

eg_status eg_lora_linear_forward(float *out, float *hA, const float *x, const float *W,
                                 const float *bias, const float *A, const float *B,
                                 int T, int In, int O, int r, float scale, float p,
                                 uint64_t seed, eg_err *err)
{
    // x (T,In), W (O,In), A (r,In), B (O,r) -> out (T,O), hA (T,r)
    const float *xd = x;
    float *buf = NULL;
    if (p > 0.0f) {
        buf = eg_aligned_alloc((size_t)T * (size_t)In * sizeof(float));
        if (buf == NULL) {
            return eg_seterr(err, EG_ENOMEM, "lora_linear: out of memory (%d x %d)", T, In);
        }
        apply_dropout(buf, x, (size_t)T * (size_t)In, p, seed);
        xd = buf;
    }
    if (W != NULL) {
        eg_sgemm(0, 1, T, O, In, 1.0f, x, In, W, In, 0.0f, out, O);
    } else {
        memset(out, 0, (size_t)T * (size_t)O * sizeof(float));
    }
    if (bias != NULL) {
        for (int t = 0; t < T; t++) {
            for (int o = 0; o < O; o++) {
                out[(size_t)t * O + o] += bias[o];
            }
        }
    }
    eg_sgemm(0, 1, T, r, In, 1.0f, xd, In, A, In, 0.0f, hA, r);
    eg_sgemm(0, 1, T, O, r, scale, hA, r, B, r, 1.0f, out, O);
    eg_aligned_free(buf);
    return EG_OK;
}

eg_status eg_lora_linear_backward(float *dx, float *dA, float *dB, const float *dout,
                                  const float *x, const float *W, const float *A,
                                  const float *B, const float *hA, int T, int In, int O,
                                  int r, float scale, float p, uint64_t seed, eg_err *err)
{
    size_t nx = (size_t)T * (size_t)In;
    float *dh = eg_aligned_alloc((size_t)T * (size_t)r * sizeof(float));
    float *xd = p > 0.0f ? eg_aligned_alloc(nx * sizeof(float)) : NULL;
    if (dh == NULL || (p > 0.0f && xd == NULL)) {
        eg_aligned_free(dh);
        eg_aligned_free(xd);
        return eg_seterr(err, EG_ENOMEM, "lora_linear backward: out of memory");
    }
    if (xd != NULL) {
        apply_dropout(xd, x, nx, p, seed);
    }
    /* dB += s dout^T hA; dh = s dout B; dA += dh^T drop(x) */
    eg_sgemm(1, 0, O, r, T, scale, dout, O, hA, r, 1.0f, dB, r);
    eg_sgemm(0, 0, T, r, O, scale, dout, O, B, r, 0.0f, dh, r);
    eg_sgemm(1, 0, r, In, T, 1.0f, dh, r, xd != NULL ? xd : x, In, 1.0f, dA, In);
    if (dx != NULL) {
        if (W != NULL) {
            eg_sgemm(0, 0, T, In, O, 1.0f, dout, O, W, In, 0.0f, dx, In);
        } else {
            memset(dx, 0, nx * sizeof(float));
        }
        if (xd == NULL) {
            eg_sgemm(0, 0, T, In, r, 1.0f, dh, r, A, In, 1.0f, dx, In);
        } else {
            /* reuse xd as scratch for dh A, then mask it into dx */
            eg_sgemm(0, 0, T, In, r, 1.0f, dh, r, A, In, 0.0f, xd, In);
            #pragma omp parallel for schedule(static) if (nx > 65536)
            for (size_t i = 0; i < nx; i++) {
                dx[i] += xd[i] * eg_gmoe_dropout(seed, i, p);
            }
        }
    }
    eg_aligned_free(dh);
    eg_aligned_free(xd);
    return EG_OK;
}
