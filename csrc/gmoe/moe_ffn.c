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
#include "eg_ops.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define MAX_R 64
#define COL_BLOCK 128

/* The activations (SwiGLU, exact GELU) and their backward run per slot row
 * in moe_act.c, compiled once per instruction set and picked at run time. */
#include "moe_act.h"

/* Backward of one slot's input projection (W_in or W_up plus its LoRA pair)
 * given dgm (I), the gradient of its pre-activation: dh (r) = s BT dgm is
 * stored for the B reduction, dg0 (I) += dgm feeds the frozen product's
 * GEMM, and dxt (H) += (A^T dh) * mk is the LoRA path's input gradient. */
static void lora_input_backward(float *restrict dh, float *restrict dg0, float *restrict dxt,
                                const float *restrict dgm, const float *restrict BT,
                                const float *restrict A, const float *restrict mk, float s,
                                int I, int H, int r)
{
    for (int k = 0; k < r; k++) {
        const float *bk = BT + (size_t)k * I;
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int i = 0; i < I; i++) {
            acc += bk[i] * dgm[i];
        }
        dh[k] = s * acc;
    }
    #pragma omp simd
    for (int i = 0; i < I; i++) {
        dg0[i] += dgm[i];
    }
    for (int k = 0; k < r; k++) {
        const float *ak = A + (size_t)k * H;
        const float c = dh[k];
        #pragma omp simd
        for (int hh = 0; hh < H; hh++) {
            dxt[hh] += c * ak[hh] * mk[hh];
        }
    }
}

/* Mask stream index of (token t, expert e, projection proj, column c). */
static inline uint64_t mask_index(int t, int e, int E, int proj, int dim, int c)
{
    return (((uint64_t)t * (uint64_t)E + (uint64_t)e) * 3u + (uint64_t)proj) * (uint64_t)dim +
           (uint64_t)c;
}

/* h (r) = A (r,n) (v * mk) (n); mk is a dropout row (all ones without dropout). */
static void lora_down(float *h, const float *A, const float *v, const float *mk, int n, int r)
{
    for (int k = 0; k < r; k++) {
        const float *a = A + (size_t)k * n;
        float acc = 0.0f;
        #pragma omp simd reduction(+:acc)
        for (int c = 0; c < n; c++) {
            acc += a[c] * v[c] * mk[c];
        }
        h[k] = acc;
    }
}

/* Dropout row of (t, e, proj) into buf (n), or the shared all-ones row. */
static const float *mask_row(float *buf, const float *ones, int t, int e, int E, int proj, int n,
                             float p, uint64_t seed)
{
    if (p <= 0.0f) {
        return ones;
    }
    uint64_t mb = mask_index(t, e, E, proj, n, 0);
    for (int c = 0; c < n; c++) {
        buf[c] = eg_gmoe_dropout(seed, mb + (uint64_t)c, p);
    }
    return buf;
}

/* BT (E, r, out) = B (E, out, r) transposed per expert, so the rank-r paths
 * read contiguous rows. NULL on ENOMEM. */
static float *transpose_B(const float *B, int E, int out, int r)
{
    float *BT = eg_aligned_alloc((size_t)E * out * r * sizeof(float));
    if (BT == NULL) {
        return NULL;
    }
    for (int e = 0; e < E; e++) {
        for (int o = 0; o < out; o++) {
            for (int k = 0; k < r; k++) {
                BT[((size_t)e * r + k) * out + o] = B[((size_t)e * out + o) * r + k];
            }
        }
    }
    return BT;
}

/* Scratch shared by forward and backward: transposed B's, a ones row and
 * per-thread rows (activation, three mask rows, and g / u of the slot when
 * they are not saved). */
#define NROWS 6
typedef struct {
    float *BT[3];
    float *ones;
    float *rows;  /* nthr * NROWS * W */
    size_t W;
} ffn_scratch;

static void scratch_free(ffn_scratch *sc)
{
    for (int q = 0; q < 3; q++) {
        eg_aligned_free(sc->BT[q]);
    }
    eg_aligned_free(sc->ones);
    eg_aligned_free(sc->rows);
}

static int scratch_init(ffn_scratch *sc, const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d)
{
    const int swi = d->kind == EG_MOE_SWIGLU;
    const int out[3] = {d->inner, d->inner, d->H};
    memset(sc, 0, sizeof *sc);
    sc->W = (size_t)(d->inner > d->H ? d->inner : d->H);
    int ok = 1;
    for (int q = 0; q < 3; q++) {
        if (q == 1 && !swi) {
            continue;
        }
        sc->BT[q] = transpose_B(prm->B[q], d->E, out[q], d->r);
        ok = ok && sc->BT[q] != NULL;
    }
    sc->ones = eg_aligned_alloc(sc->W * sizeof(float));
    sc->rows = eg_aligned_alloc((size_t)omp_get_max_threads() * NROWS * sc->W * sizeof(float));
    if (!ok || sc->ones == NULL || sc->rows == NULL) {
        scratch_free(sc);
        return -1;
    }
    for (size_t c = 0; c < sc->W; c++) {
        sc->ones[c] = 1.0f;
    }
    return 0;
}

static int check_r(const eg_moe_ffn_dims *d, eg_err *err)
{
    if (d->r < 1 || d->r > MAX_R) {
        eg_seterr(err, EG_EINVAL, "moe_ffn: LoRA rank r must be in [1, %d], got %d", MAX_R, d->r);
        return -1;
    }
    return 0;
}

/* g (I) = g0 (+ b) + s * sum_k h[k] BT[k]: a slot's gate/up pre-activation
 * from the shared frozen product g0 and the expert's LoRA down-projection
 * h. Forward and backward's recomputation both use it: the same bits. */
static void slot_preact(float *restrict g, const float *restrict g0, const float *restrict b,
                        const float *restrict BT, const float *restrict h, float s, int r, int I)
{
    if (b != NULL) {
        #pragma omp simd
        for (int i = 0; i < I; i++) {
            g[i] = g0[i] + b[i];
        }
    } else {
        memcpy(g, g0, (size_t)I * sizeof(float));
    }
    for (int k = 0; k < r; k++) {
        const float *bk = BT + (size_t)k * I;
        const float c = s * h[k];
        #pragma omp simd
        for (int i = 0; i < I; i++) {
            g[i] += c * bk[i];
        }
    }
}

eg_status eg_moe_experts_forward(float *ylora, float *abar, float *G, float *U, float *Hl,
                                 const float *x, const float *G0, const float *U0,
                                 const int32_t *idx, const float *w,
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
    const size_t M = (size_t)T * (size_t)K;
    const eg_moe_act_kernels *act = eg_moe_act();
    ffn_scratch sc;
    if (scratch_init(&sc, prm, d) < 0) {
        return eg_seterr(err, EG_ENOMEM, "moe experts forward: out of memory (T=%d, I=%d)", T, I);
    }
    float *H0 = Hl, *H1 = Hl + M * (size_t)r, *H2 = Hl + 2 * M * (size_t)r;

    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *rows = sc.rows + (size_t)omp_get_thread_num() * NROWS * sc.W;
        float *ad = rows, *mb0 = rows + sc.W, *mb1 = rows + 2 * sc.W, *mb2 = rows + 3 * sc.W;
        float *grow = rows + 4 * sc.W, *urow = rows + 5 * sc.W;
        const float *xt = x + (size_t)t * H;
        const float *g0 = G0 + (size_t)t * I;
        const float *u0 = swi ? U0 + (size_t)t * I : NULL;
        float *ab = abar + (size_t)t * I;
        float *yt = ylora + (size_t)t * H;
        float wsum = 0.0f;
        memset(ab, 0, (size_t)I * sizeof(float));
        memset(yt, 0, (size_t)H * sizeof(float));
        for (int j = 0; j < K; j++) {
            size_t m = (size_t)t * K + (size_t)j;
            int e = idx[m];
            float wj = w[m];
            wsum += wj;
            float *h0 = H0 + m * r, *h1 = H1 + m * r, *h2 = H2 + m * r;
            const float *A0 = prm->A[0] + (size_t)e * r * H, *A2 = prm->A[2] + (size_t)e * r * I;
            const float *BT0 = sc.BT[0] + (size_t)e * r * I, *BT2 = sc.BT[2] + (size_t)e * r * H;
            const float *mk0 = mask_row(mb0, sc.ones, t, e, E, 0, H, p, seed);
            const float *mk2 = mask_row(mb2, sc.ones, t, e, E, 2, I, p, seed);
            lora_down(h0, A0, xt, mk0, H, r);
            float *g = G != NULL ? G + m * I : grow;
            slot_preact(g, g0, prm->b_in, BT0, h0, s, r, I);
            if (swi) {
                const float *A1 = prm->A[1] + (size_t)e * r * H;
                const float *BT1 = sc.BT[1] + (size_t)e * r * I;
                const float *mk1 = mask_row(mb1, sc.ones, t, e, E, 1, H, p, seed);
                lora_down(h1, A1, xt, mk1, H, r);
                float *u = U != NULL ? U + m * I : urow;
                slot_preact(u, u0, NULL, BT1, h1, s, r, I);
                act->forward_row(ad, g, u, I);
            } else {
                act->forward_row(ad, g, NULL, I);
            }
            #pragma omp simd
            for (int i = 0; i < I; i++) {
                ab[i] += wj * ad[i];
            }
            lora_down(h2, A2, ad, mk2, I, r);
            for (int k = 0; k < r; k++) {
                const float *bk = BT2 + (size_t)k * H;
                const float c = wj * s * h2[k];
                #pragma omp simd
                for (int hh = 0; hh < H; hh++) {
                    yt[hh] += c * bk[hh];
                }
            }
        }
        if (prm->b_out != NULL) {
            for (int hh = 0; hh < H; hh++) {
                yt[hh] += wsum * prm->b_out[hh];
            }
        }
    }
    scratch_free(&sc);
    return EG_OK;
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
    const int T = d->T, H = d->H, I = d->inner;
    const int swi = d->kind == EG_MOE_SWIGLU;
    const size_t TI = (size_t)T * (size_t)I;
    float *G0 = eg_aligned_alloc(TI * sizeof(float));
    float *U0 = swi ? eg_aligned_alloc(TI * sizeof(float)) : NULL;
    float *abar = eg_aligned_alloc(TI * sizeof(float));
    eg_status st = EG_OK;
    if (G0 == NULL || abar == NULL || (swi && U0 == NULL)) {
        st = eg_seterr(err, EG_ENOMEM, "moe_ffn forward: out of memory (T=%d, I=%d)", T, I);
        goto done;
    }
    eg_gemm_prec(d->prec, 0, 1, T, I, H, 1.0f, x, H, prm->W_in, H, 0.0f, G0, I);
    if (swi) {
        eg_gemm_prec(d->prec, 0, 1, T, I, H, 1.0f, x, H, prm->W_up, H, 0.0f, U0, I);
    }
    st = eg_moe_experts_forward(y, abar, G, U, Hl, x, G0, U0, idx, w, prm, d, err);
    if (st == EG_OK) {
        eg_gemm_prec(d->prec, 0, 1, T, H, I, 1.0f, abar, I, prm->W_out, I, 1.0f, y, H);
    }
done:
    eg_aligned_free(G0);
    eg_aligned_free(U0);
    eg_aligned_free(abar);
    return st;
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

eg_status eg_moe_experts_backward(float *dx, float *dG0, float *dU0, float *dw,
                                  eg_moe_ffn_grads *grd, const float *dy, const float *dab,
                                  const float *x, const int32_t *idx, const float *w,
                                  const float *G, const float *U, const float *G0,
                                  const float *U0, const float *Hl,
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
    const size_t M = (size_t)T * (size_t)K, MI = M * (size_t)I;
    const eg_moe_act_kernels *act = eg_moe_act();
    float *dG = eg_aligned_alloc(MI * sizeof(float));
    float *dU = swi ? eg_aligned_alloc(MI * sizeof(float)) : NULL;
    float *Ad = eg_aligned_alloc(MI * sizeof(float));
    float *dHl = eg_aligned_alloc(3 * M * (size_t)r * sizeof(float));
    int32_t *order = malloc((M > 0 ? M : 1) * sizeof(int32_t));
    size_t *off = calloc((size_t)E + 2, sizeof(size_t));
    size_t *cur = calloc((size_t)E + 1, sizeof(size_t));
    eg_status st = EG_OK;
    ffn_scratch sc;
    memset(&sc, 0, sizeof sc);
    if (dG == NULL || Ad == NULL || dHl == NULL || order == NULL || off == NULL || cur == NULL ||
        (swi && dU == NULL) || scratch_init(&sc, prm, d) < 0) {
        st = eg_seterr(err, EG_ENOMEM, "moe experts backward: out of memory (T=%d, I=%d)", T, I);
        goto done;
    }
    memset(dHl, 0, 3 * M * (size_t)r * sizeof(float));
    const float *H0 = Hl, *H1 = Hl + M * r, *H2 = Hl + 2 * M * r;
    float *dH0 = dHl, *dH1 = dHl + M * r, *dH2 = dHl + 2 * M * r;

    #pragma omp parallel for schedule(static)
    for (int t = 0; t < T; t++) {
        float *rows = sc.rows + (size_t)omp_get_thread_num() * NROWS * sc.W;
        float *back = rows, *mb0 = rows + sc.W, *mb1 = rows + 2 * sc.W, *mb2 = rows + 3 * sc.W;
        float *grow = rows + 4 * sc.W, *urow = rows + 5 * sc.W;
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
        memset(dg0, 0, (size_t)I * sizeof(float));
        if (swi) {
            memset(du0, 0, (size_t)I * sizeof(float));
        }
        for (int j = 0; j < K; j++) {
            size_t m = (size_t)t * K + (size_t)j;
            int e = idx[m];
            float wj = w[m];
            float *adm = Ad + m * I;
            float *dgm = dG + m * I;
            float *dum = swi ? dU + m * I : NULL;
            const float *A0 = prm->A[0] + (size_t)e * r * H, *A2 = prm->A[2] + (size_t)e * r * I;
            const float *BT0 = sc.BT[0] + (size_t)e * r * I, *BT2 = sc.BT[2] + (size_t)e * r * H;
            const float *mk0 = mask_row(mb0, sc.ones, t, e, E, 0, H, p, seed);
            const float *mk2 = mask_row(mb2, sc.ones, t, e, E, 2, I, p, seed);
            /* the slot's pre-activations: saved, or recomputed as forward did */
            const float *g = G != NULL ? G + m * I : grow;
            const float *u = !swi ? NULL : U != NULL ? U + m * I : urow;
            if (G == NULL) {
                slot_preact(grow, G0 + (size_t)t * I, prm->b_in, BT0, H0 + m * r, s, r, I);
                if (swi) {
                    slot_preact(urow, U0 + (size_t)t * I, NULL, sc.BT[1] + (size_t)e * r * I,
                                H1 + m * r, s, r, I);
                }
            }
            /* dh2 needs only dy, so one fused pass over I can then compute the
             * activation (one exp per element), dw's dot product and dg/du. */
            float dh2[MAX_R];
            float lor = 0.0f;
            for (int k = 0; k < r; k++) {
                const float *bk = BT2 + (size_t)k * H;
                float acc = 0.0f;
                #pragma omp simd reduction(+:acc)
                for (int hh = 0; hh < H; hh++) {
                    acc += bk[hh] * dyt[hh];
                }
                lor += acc * H2[m * r + k];
                dh2[k] = s * wj * acc;
                dH2[m * r + k] = dh2[k];
            }
            /* back = A2^T dh2, by rows of A2 so the loops below vectorise */
            memset(back, 0, (size_t)I * sizeof(float));
            for (int k = 0; k < r; k++) {
                const float *ak = A2 + (size_t)k * I;
                const float c = dh2[k];
                #pragma omp simd
                for (int i = 0; i < I; i++) {
                    back[i] += c * ak[i];
                }
            }
            const float dot = act->backward_row(dgm, dum, adm, g, u, dat, back, mk2, wj, I);
            dw[m] = dot + s * lor + dyb;
            lora_input_backward(dH0 + m * r, dg0, dxt, dgm, BT0, A0, mk0, s, I, H, r);
            if (swi) {
                const float *A1 = prm->A[1] + (size_t)e * r * H;
                const float *BT1 = sc.BT[1] + (size_t)e * r * I;
                const float *mk1 = mask_row(mb1, sc.ones, t, e, E, 1, H, p, seed);
                lora_input_backward(dH1 + m * r, du0, dxt, dum, BT1, A1, mk1, s, I, H, r);
            }
        }
    }

    /* group slots by expert (stable counting sort) for the LoRA reductions */
    for (size_t m = 0; m < M; m++) {
        off[idx[m] + 1]++;
    }
    for (int e = 0; e < E; e++) {
        off[e + 1] += off[e];
    }
    for (size_t m = 0; m < M; m++) {
        int e = idx[m];
        order[off[e] + cur[e]++] = (int32_t)m;
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
    scratch_free(&sc);
    eg_aligned_free(dG);
    eg_aligned_free(dU);
    eg_aligned_free(Ad);
    eg_aligned_free(dHl);
    free(order);
    free(off);
    free(cur);
    return st;
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
    const int T = d->T, H = d->H, I = d->inner;
    const int swi = d->kind == EG_MOE_SWIGLU;
    const size_t TI = (size_t)T * (size_t)I;
    float *dab = eg_aligned_alloc(TI * sizeof(float));
    float *dG0 = eg_aligned_alloc(TI * sizeof(float));
    float *dU0 = swi ? eg_aligned_alloc(TI * sizeof(float)) : NULL;
    eg_status st = EG_OK;
    if (dab == NULL || dG0 == NULL || (swi && dU0 == NULL)) {
        st = eg_seterr(err, EG_ENOMEM, "moe_ffn backward: out of memory (T=%d, I=%d)", T, I);
        goto done;
    }
    /* dabar = dy W_out: the frozen output product's gradient, once per token */
    eg_gemm_prec(d->prec, 0, 0, T, I, H, 1.0f, dy, H, prm->W_out, I, 0.0f, dab, I);
    st = eg_moe_experts_backward(dx, dG0, dU0, dw, grd, dy, dab, x, idx, w, G, U, NULL, NULL,
                                 Hl, prm, d, err);
    if (st != EG_OK) {
        goto done;
    }
    /* frozen input products: dx += dG0 W_in (+ dU0 W_up), once per token */
    eg_gemm_prec(d->prec, 0, 0, T, H, I, 1.0f, dG0, I, prm->W_in, H, 1.0f, dx, H);
    if (swi) {
        eg_gemm_prec(d->prec, 0, 0, T, H, I, 1.0f, dU0, I, prm->W_up, H, 1.0f, dx, H);
    }
done:
    eg_aligned_free(dab);
    eg_aligned_free(dG0);
    eg_aligned_free(dU0);
    return st;
}
