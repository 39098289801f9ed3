/*
 * moe_ffn.c — the MoE-LoRA FFN (ALGORITHMS.md §B.1, MixLoRA style).
 *
 * Experts share the frozen FFN and own rank-r LoRA pairs on its projections.
 * Three facts keep it cheap:
 *   - the frozen input products x W_in^T (and x W_up^T) are computed once
 *     per token and shared by the token's K experts;
 *   - the frozen output product is linear, so sum_j w_j W_out a_j =
 *     W_out (sum_j w_j a_j): one GEMM over T rows instead of T*K (and in
 *     backward, dy W_out once per token serves every routed expert);
 *   - the rank-r LoRA paths are small per-slot loops (no GEMM of width r).
 * Parameter gradients of the LoRA pairs are per-expert reductions over the
 * expert's slots, parallel over (expert, column block): no atomics, the result
 * does not depend on the thread count.
 */
#include "eg_gmoe.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MAX_R 64
#define COL_BLOCK 128

static inline float silu_f(float g, float *sg_out)
{
    float sg = 1.0f / (1.0f + expf(-g));
    *sg_out = sg;
    return g * sg;
}

static inline float gelu_f(float g)
{
    return 0.5f * g * (1.0f + erff(g * 0.70710678118654752f));
}

/* Mask stream index of (token t, expert e, projection proj, column c). */
static inline uint64_t mask_index(int t, int e, int E, int proj, int dim, int c)
{
    return (((uint64_t)t * (uint64_t)E + (uint64_t)e) * 3u + (uint64_t)proj) * (uint64_t)dim +
           (uint64_t)c;
}

/* h (r) = A (r,n) drop(v) (n). */
static void lora_down(float *h, const float *A, const float *v, int n, int r, float p,
                      uint64_t seed, uint64_t mbase)
{
    for (int k = 0; k < r; k++) {
        const float *a = A + (size_t)k * n;
        float acc = 0.0f;
        if (p > 0.0f) {
            for (int c = 0; c < n; c++) {
                acc += a[c] * v[c] * eg_gmoe_dropout(seed, mbase + (uint64_t)c, p);
            }
        } else {
            for (int c = 0; c < n; c++) {
                acc += a[c] * v[c];
            }
        }
        h[k] = acc;
    }
}

static int check_r(const eg_moe_ffn_dims *d, eg_err *err)
{
    if (d->r < 1 || d->r > MAX_R) {
        eg_seterr(err, EG_EINVAL, "moe_ffn: LoRA rank r must be in [1, %d], got %d", MAX_R, d->r);
        return -1;
    }
    return 0;
}

eg_status eg_moe_ffn_forward(float *y, float *G, float *U, float *Hl, const float *x,
                             const int32_t *idx, const float *w,
                             const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                             eg_err *err)
{
    // x (T,H), idx/w (T,K) -> y (T,H); saved G,U (T*K,I), Hl (3,T*K,r)
    if (check_r(d, err) < 0) {
        return EG_EINVAL;
    }
    const int T = d->T, H = d->H, I = d->inner, E = d->E, K = d->K, r = d->r;
    const int swi = d->kind == EG_MOE_SWIGLU;
    const float s = d->scale, p = d->p;
    const uint64_t seed = d->seed;
    const size_t M = (size_t)T * (size_t)K, TI = (size_t)T * (size_t)I;
    const int nthr = omp_get_max_threads();
    float *G0 = eg_aligned_alloc(TI * sizeof(float));
    float *U0 = swi ? eg_aligned_alloc(TI * sizeof(float)) : NULL;
    float *abar = eg_aligned_alloc(TI * sizeof(float));
    float *tmp = eg_aligned_alloc((size_t)nthr * (size_t)I * sizeof(float));
    if (G0 == NULL || abar == NULL || tmp == NULL || (swi && U0 == NULL)) {
        eg_aligned_free(G0);
        eg_aligned_free(U0);
        eg_aligned_free(abar);
        eg_aligned_free(tmp);
        return eg_seterr(err, EG_ENOMEM, "moe_ffn forward: out of memory (T=%d, I=%d)", T, I);
    }
    eg_sgemm(0, 1, T, I, H, 1.0f, x, H, prm->W_in, H, 0.0f, G0, I);
    if (swi) {
        eg_sgemm(0, 1, T, I, H, 1.0f, x, H, prm->W_up, H, 0.0f, U0, I);
    }
    float *H0 = Hl, *H1 = Hl + M * (size_t)r, *H2 = Hl + 2 * M * (size_t)r;

    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *ad = tmp + (size_t)omp_get_thread_num() * (size_t)I;
        const float *xt = x + (size_t)t * H;
        const float *g0 = G0 + (size_t)t * I;
        const float *u0 = swi ? U0 + (size_t)t * I : NULL;
        float *ab = abar + (size_t)t * I;
        float *yt = y + (size_t)t * H;
        float wsum = 0.0f;
        for (int j = 0; j < K; j++) {
            size_t m = (size_t)t * K + (size_t)j;
            int e = idx[m];
            float wj = w[m];
            wsum += wj;
            float *h0 = H0 + m * r, *h1 = H1 + m * r, *h2 = H2 + m * r;
            const float *A0 = prm->A[0] + (size_t)e * r * H, *B0 = prm->B[0] + (size_t)e * I * r;
            const float *A2 = prm->A[2] + (size_t)e * r * I, *B2 = prm->B[2] + (size_t)e * H * r;
            lora_down(h0, A0, xt, H, r, p, seed, mask_index(t, e, E, 0, H, 0));
            float *g = G + m * I;
            for (int i = 0; i < I; i++) {
                float acc = 0.0f;
                for (int k = 0; k < r; k++) {
                    acc += B0[(size_t)i * r + k] * h0[k];
                }
                g[i] = g0[i] + (prm->b_in != NULL ? prm->b_in[i] : 0.0f) + s * acc;
            }
            if (swi) {
                const float *A1 = prm->A[1] + (size_t)e * r * H;
                const float *B1 = prm->B[1] + (size_t)e * I * r;
                lora_down(h1, A1, xt, H, r, p, seed, mask_index(t, e, E, 1, H, 0));
                float *u = U + m * I;
                for (int i = 0; i < I; i++) {
                    float acc = 0.0f;
                    for (int k = 0; k < r; k++) {
                        acc += B1[(size_t)i * r + k] * h1[k];
                    }
                    u[i] = u0[i] + s * acc;
                }
                for (int i = 0; i < I; i++) {
                    float sg;
                    ad[i] = silu_f(g[i], &sg) * u[i];
                }
            } else {
                for (int i = 0; i < I; i++) {
                    ad[i] = gelu_f(g[i]);
                }
            }
            for (int i = 0; i < I; i++) {
                ab[i] = (j == 0 ? 0.0f : ab[i]) + wj * ad[i];
            }
            lora_down(h2, A2, ad, I, r, p, seed, mask_index(t, e, E, 2, I, 0));
            for (int hh = 0; hh < H; hh++) {
                float acc = 0.0f;
                for (int k = 0; k < r; k++) {
                    acc += B2[(size_t)hh * r + k] * h2[k];
                }
                yt[hh] = (j == 0 ? 0.0f : yt[hh]) + wj * s * acc;
            }
        }
        if (prm->b_out != NULL) {
            for (int hh = 0; hh < H; hh++) {
                yt[hh] += wsum * prm->b_out[hh];
            }
        }
    }
    eg_sgemm(0, 1, T, H, I, 1.0f, abar, I, prm->W_out, I, 1.0f, y, H);
    eg_aligned_free(G0);
    eg_aligned_free(U0);
    eg_aligned_free(abar);
    eg_aligned_free(tmp);
    return EG_OK;
}

/* Source rows of a per-expert reduction: row(m) = scale_m * base[row_id(m)]
 * (* dropout mask of projection proj when p > 0), row_id = token or slot. */
typedef struct {
    const float *base;
    int by_token;           /* row index is t = m / K, else m */
    const float *rowscale;  /* per-slot factor (M) or NULL */
    float p;                /* mask on the row (0: none) */
    int proj;
} row_src;

/* For each expert e: acc[k][c] = sum_{m in slots(e)} coef[m*r+k] * row(m)[c]
 * over c < ncol; then transA=1 writes dst_e (r,ncol) += acc, transA=0 writes
 * dst_e (ncol,r) += alpha * acc^T. slots are grouped by expert in `order`. */
static void expert_reduce(float *dst, int dst_rows_r, float alpha, const float *coef,
                          const row_src *src, int ncol, const int32_t *order,
                          const size_t *off, const eg_moe_ffn_dims *d)
{
    const int E = d->E, K = d->K, r = d->r;
    const int nb = (ncol + COL_BLOCK - 1) / COL_BLOCK;
    const int ntask = E * nb;
    #pragma omp parallel for schedule(dynamic)
    for (int task = 0; task < ntask; task++) {
        int e = task / nb, c0 = (task % nb) * COL_BLOCK;
        int c1 = c0 + COL_BLOCK < ncol ? c0 + COL_BLOCK : ncol;
        int nc = c1 - c0;
        float acc[MAX_R * COL_BLOCK];
        memset(acc, 0, sizeof(float) * (size_t)r * COL_BLOCK);
        for (size_t q = off[e]; q < off[e + 1]; q++) {
            size_t m = (size_t)order[q];
            int t = (int)(m / (size_t)K);
            const float *row = src->base + (src->by_token ? (size_t)t : m) * (size_t)ncol + c0;
            float sc = src->rowscale != NULL ? src->rowscale[m] : 1.0f;
            const float *cf = coef + m * (size_t)r;
            if (src->p > 0.0f) {
                uint64_t mb = mask_index(t, e, E, src->proj, ncol, c0);
                for (int k = 0; k < r; k++) {
                    float ck = cf[k] * sc;
                    float *a = acc + (size_t)k * COL_BLOCK;
                    for (int c = 0; c < nc; c++) {
                        a[c] += ck * row[c] * eg_gmoe_dropout(d->seed, mb + (uint64_t)c, src->p);
                    }
                }
            } else {
                for (int k = 0; k < r; k++) {
                    float ck = cf[k] * sc;
                    float *a = acc + (size_t)k * COL_BLOCK;
                    for (int c = 0; c < nc; c++) {
                        a[c] += ck * row[c];
                    }
                }
            }
        }
        if (dst_rows_r) {
            float *de = dst + (size_t)e * r * ncol;
            for (int k = 0; k < r; k++) {
                for (int c = 0; c < nc; c++) {
                    de[(size_t)k * ncol + c0 + c] += alpha * acc[(size_t)k * COL_BLOCK + c];
                }
            }
        } else {
            float *de = dst + (size_t)e * ncol * r;
            for (int c = 0; c < nc; c++) {
                for (int k = 0; k < r; k++) {
                    de[(size_t)(c0 + c) * r + k] += alpha * acc[(size_t)k * COL_BLOCK + c];
                }
            }
        }
    }
}

eg_status eg_moe_ffn_backward(float *dx, float *dw, eg_moe_ffn_grads *grd, const float *dy,
                              const float *x, const int32_t *idx, const float *w,
                              const float *G, const float *U, const float *Hl,
                              const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                              eg_err *err)
{
    if (check_r(d, err) < 0) {
        return EG_EINVAL;
    }
    const int T = d->T, H = d->H, I = d->inner, E = d->E, K = d->K, r = d->r;
    const int swi = d->kind == EG_MOE_SWIGLU;
    const float s = d->scale, p = d->p;
    const uint64_t seed = d->seed;
    const size_t M = (size_t)T * (size_t)K, TI = (size_t)T * (size_t)I, MI = M * (size_t)I;
    float *dab = eg_aligned_alloc(TI * sizeof(float));
    float *dG = eg_aligned_alloc(MI * sizeof(float));
    float *dU = swi ? eg_aligned_alloc(MI * sizeof(float)) : NULL;
    float *Ad = eg_aligned_alloc(MI * sizeof(float));
    float *dG0 = eg_aligned_alloc(TI * sizeof(float));
    float *dU0 = swi ? eg_aligned_alloc(TI * sizeof(float)) : NULL;
    float *dHl = eg_aligned_alloc(3 * M * (size_t)r * sizeof(float));
    int32_t *order = malloc((M > 0 ? M : 1) * sizeof(int32_t));
    size_t *off = calloc((size_t)E + 2, sizeof(size_t));
    eg_status st = EG_OK;
    if (dab == NULL || dG == NULL || Ad == NULL || dG0 == NULL || dHl == NULL ||
        order == NULL || off == NULL || (swi && (dU == NULL || dU0 == NULL))) {
        st = eg_seterr(err, EG_ENOMEM, "moe_ffn backward: out of memory (T=%d, I=%d)", T, I);
        goto done;
    }
    memset(dHl, 0, 3 * M * (size_t)r * sizeof(float));
    const float *H0 = Hl, *H1 = Hl + M * r, *H2 = Hl + 2 * M * r;
    float *dH0 = dHl, *dH1 = dHl + M * r, *dH2 = dHl + 2 * M * r;

    /* dabar = dy W_out: the frozen output product's gradient, once per token */
    eg_sgemm(0, 0, T, I, H, 1.0f, dy, H, prm->W_out, I, 0.0f, dab, I);

    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        const float *dyt = dy + (size_t)t * H;
        const float *dat = dab + (size_t)t * I;
        float *dxt = dx + (size_t)t * H;
        float *dg0 = dG0 + (size_t)t * I;
        float *du0 = swi ? dU0 + (size_t)t * I : NULL;
        float dyb = 0.0f;
        if (prm->b_out != NULL) {
            for (int hh = 0; hh < H; hh++) {
                dyb += dyt[hh] * prm->b_out[hh];
            }
        }
        memset(dxt, 0, (size_t)H * sizeof(float));
        for (int j = 0; j < K; j++) {
            size_t m = (size_t)t * K + (size_t)j;
            int e = idx[m];
            float wj = w[m];
            const float *g = G + m * I;
            const float *u = swi ? U + m * I : NULL;
            float *adm = Ad + m * I;
            float *dgm = dG + m * I;
            float *dum = swi ? dU + m * I : NULL;
            const float *A0 = prm->A[0] + (size_t)e * r * H, *B0 = prm->B[0] + (size_t)e * I * r;
            const float *A2 = prm->A[2] + (size_t)e * r * I, *B2 = prm->B[2] + (size_t)e * H * r;
            uint64_t mb2 = mask_index(t, e, E, 2, I, 0);
            /* dh2 needs only dy, so one fused pass over I can then compute the
             * activation (one exp per element), dw's dot product and dg/du. */
            float dh2[MAX_R], dh0[MAX_R], dh1[MAX_R];
            float lor = 0.0f;
            for (int k = 0; k < r; k++) {
                float acc = 0.0f;
                for (int hh = 0; hh < H; hh++) {
                    acc += B2[(size_t)hh * r + k] * dyt[hh];
                }
                lor += acc * H2[m * r + k];
                dh2[k] = s * wj * acc;
                dH2[m * r + k] = dh2[k];
            }
            float dot = 0.0f;
            for (int i = 0; i < I; i++) {
                float mk = p > 0.0f ? eg_gmoe_dropout(seed, mb2 + (uint64_t)i, p) : 1.0f;
                float back = 0.0f;
                for (int k = 0; k < r; k++) {
                    back += A2[(size_t)k * I + i] * dh2[k];
                }
                float gi = g[i], a, dact;
                float da_pre = wj * dat[i] + back * mk;
                if (swi) {
                    float sg = 1.0f / (1.0f + expf(-gi));
                    float si = gi * sg;
                    a = si * u[i];
                    dgm[i] = da_pre * u[i] * sg * (1.0f + gi * (1.0f - sg));
                    dum[i] = da_pre * si;
                } else {
                    float cdf = 0.5f * (1.0f + erff(gi * 0.70710678118654752f));
                    a = gi * cdf;
                    dact = cdf + gi * expf(-0.5f * gi * gi) * 0.39894228040143268f;
                    dgm[i] = da_pre * dact;
                }
                dot += dat[i] * a;
                adm[i] = a * mk;
            }
            dw[m] = dot + s * lor + dyb;
            for (int k = 0; k < r; k++) {
                dh0[k] = 0.0f;
                dh1[k] = 0.0f;
            }
            for (int i = 0; i < I; i++) {
                for (int k = 0; k < r; k++) {
                    dh0[k] += B0[(size_t)i * r + k] * dgm[i];
                }
            }
            for (int k = 0; k < r; k++) {
                dh0[k] *= s;
                dH0[m * r + k] = dh0[k];
            }
            for (int i = 0; i < I; i++) {
                dg0[i] = (j == 0 ? 0.0f : dg0[i]) + dgm[i];
            }
            uint64_t mb0 = mask_index(t, e, E, 0, H, 0);
            for (int hh = 0; hh < H; hh++) {
                float acc = 0.0f;
                for (int k = 0; k < r; k++) {
                    acc += A0[(size_t)k * H + hh] * dh0[k];
                }
                dxt[hh] += acc * eg_gmoe_dropout(seed, mb0 + (uint64_t)hh, p);
            }
            if (swi) {
                const float *A1 = prm->A[1] + (size_t)e * r * H;
                const float *B1 = prm->B[1] + (size_t)e * I * r;
                for (int i = 0; i < I; i++) {
                    for (int k = 0; k < r; k++) {
                        dh1[k] += B1[(size_t)i * r + k] * dum[i];
                    }
                }
                for (int k = 0; k < r; k++) {
                    dh1[k] *= s;
                    dH1[m * r + k] = dh1[k];
                }
                for (int i = 0; i < I; i++) {
                    du0[i] = (j == 0 ? 0.0f : du0[i]) + dum[i];
                }
                uint64_t mb1 = mask_index(t, e, E, 1, H, 0);
                for (int hh = 0; hh < H; hh++) {
                    float acc = 0.0f;
                    for (int k = 0; k < r; k++) {
                        acc += A1[(size_t)k * H + hh] * dh1[k];
                    }
                    dxt[hh] += acc * eg_gmoe_dropout(seed, mb1 + (uint64_t)hh, p);
                }
            }
        }
    }
    /* frozen input products: dx += dG0 W_in (+ dU0 W_up), once per token */
    eg_sgemm(0, 0, T, H, I, 1.0f, dG0, I, prm->W_in, H, 1.0f, dx, H);
    if (swi) {
        eg_sgemm(0, 0, T, H, I, 1.0f, dU0, I, prm->W_up, H, 1.0f, dx, H);
    }

    /* group slots by expert (stable counting sort) for the LoRA reductions */
    for (size_t m = 0; m < M; m++) {
        off[idx[m] + 1]++;
    }
    for (int e = 0; e < E; e++) {
        off[e + 1] += off[e];
    }
    {
        size_t *pos = off + 0; /* reuse a running cursor per expert */
        size_t *cur = calloc((size_t)E, sizeof(size_t));
        if (cur == NULL) {
            st = eg_seterr(err, EG_ENOMEM, "moe_ffn backward: out of memory");
            goto done;
        }
        for (size_t m = 0; m < M; m++) {
            int e = idx[m];
            order[pos[e] + cur[e]++] = (int32_t)m;
        }
        free(cur);
    }
    {
        row_src xs0 = {x, 1, NULL, p, 0};
        row_src xs1 = {x, 1, NULL, p, 1};
        row_src gs = {dG, 0, NULL, 0.0f, 0};
        row_src us = {dU, 0, NULL, 0.0f, 0};
        row_src as = {Ad, 0, NULL, 0.0f, 0};
        row_src ys = {dy, 1, w, 0.0f, 0};
        expert_reduce(grd->A[0], 1, 1.0f, dH0, &xs0, H, order, off, d);
        expert_reduce(grd->B[0], 0, s, H0, &gs, I, order, off, d);
        if (swi) {
            expert_reduce(grd->A[1], 1, 1.0f, dH1, &xs1, H, order, off, d);
            expert_reduce(grd->B[1], 0, s, H1, &us, I, order, off, d);
        }
        expert_reduce(grd->A[2], 1, 1.0f, dH2, &as, I, order, off, d);
        expert_reduce(grd->B[2], 0, s, H2, &ys, H, order, off, d);
    }
done:
    eg_aligned_free(dab);
    eg_aligned_free(dG);
    eg_aligned_free(dU);
    eg_aligned_free(Ad);
    eg_aligned_free(dG0);
    eg_aligned_free(dU0);
    eg_aligned_free(dHl);
    free(order);
    free(off);
    return st;
}
