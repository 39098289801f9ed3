/*
 * bert_simd.h — the hot loops of the BERT kernels, included by
 * bert_kernels.c once per instruction set through eg_isa.h (each time under
 * a different `#pragma GCC target`, with SFX(name) giving the functions a
 * per-instruction-set suffix); bert_kernels.c picks one set at run time.
 * Not a public header: only bert_kernels.c includes it, after defining
 * LANES.
 */

/* 16-float vector loads/stores without alignment assumptions. */
static inline __attribute__((always_inline)) v16f SFX(ld16)(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void SFX(st16)(float *p, v16f v)
{
    memcpy(p, &v, sizeof v);
}

/* exp, erf and GELU: one copy of csrc/include/eg_vmath.h per instruction
 * set, named SFX(vm_<name>). */
#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

static void SFX(erf_loop)(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = SFX(vm_erf)(inp[i]);
    }
}

/* GELU of one row with an optional bias added first (the Linear's bias). */
static void SFX(bias_gelu_row)(float *out, const float *inp, const float *bias, int C)
{
    if (bias != NULL) {
        for (int i = 0; i < C; i++) {
            float x = inp[i] + bias[i];
            out[i] = SFX(vm_gelu)(x);
        }
    } else {
        for (int i = 0; i < C; i++) {
            float x = inp[i];
            out[i] = SFX(vm_gelu)(x);
        }
    }
}

/* Normalise one row x (C) into out. Sums run in LANES fixed partial sums
 * (so they vectorise and stay deterministic) and are combined in double. */
static void SFX(layernorm_row)(float *out, const float *x, const float *w, const float *b, int C,
                          float eps)
{
    float part[LANES] = {0};
    int i = 0;
    for (; i + LANES <= C; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            part[l] += x[i + l];
        }
    }
    double sum = 0.0;
    for (int l = 0; l < LANES; l++) {
        sum += part[l];
    }
    for (; i < C; i++) {
        sum += x[i];
    }
    float mean = (float)(sum / C);
    float pv[LANES] = {0};
    i = 0;
    for (; i + LANES <= C; i += LANES) {
        for (int l = 0; l < LANES; l++) {
            float d = x[i + l] - mean;
            pv[l] += d * d;
        }
    }
    double var = 0.0;
    for (int l = 0; l < LANES; l++) {
        var += pv[l];
    }
    for (; i < C; i++) {
        double d = (double)x[i] - mean;
        var += d * d;
    }
    float rstd = (float)(1.0 / sqrt(var / C + (double)eps));
    for (i = 0; i < C; i++) {
        out[i] = (x[i] - mean) * rstd * w[i] + b[i];
    }
}

static void SFX(add3_row)(float *dst, const float *x, const float *xb, const float *res, int C)
{
    for (int i = 0; i < C; i++) {
        dst[i] = (x[i] + xb[i]) + res[i];
    }
}

/* One (sequence, head) of attention, in blocks of QB query rows so that
 * every key/value vector loaded is used QB times. Written with GCC's
 * generic 16-float vectors (v16f): each instruction-set copy lowers them to
 * one AVX-512, two AVX or four SSE registers. Scratch (floats, all blocks
 * 64-byte multiples, see eg_bert_attention_scratch):
 *   Kt (dh, Lp)   keys transposed, columns j >= L zero
 *   V  (Lp, dp)   values, rows j >= L and columns d >= dh zero
 *   Q  (QB, dp)   the block's queries, pre-scaled by 1/sqrt(dh)
 *   S  (QB, Lp)   scores, then probabilities (unnormalised)
 * Score columns j >= L are padding that the softmax row zeroes. */
static void SFX(attention_head)(float *out, const float *base, const float *bq, const float *bk,
                                const float *bv, int L, int D, int dh, float *scratch)
{
    const size_t Lp = ((size_t)L + LANES - 1) / LANES * LANES;
    const size_t dp = ((size_t)dh + LANES - 1) / LANES * LANES;
    float *Kt = scratch;
    float *V = Kt + (size_t)dh * Lp;
    float *Q = V + Lp * dp;
    float *S = Q + (size_t)EG_QB * dp;
    const size_t row = (size_t)3 * D;
    const float scale = 1.0f / sqrtf((float)dh);

    for (size_t j = 0; j < Lp; j++) {
        float *vd = V + j * dp;
        if (j < (size_t)L) {
            const float *k = base + j * row + D;
            const float *v = base + j * row + 2 * (size_t)D;
            for (int d = 0; d < dh; d++) {
                Kt[(size_t)d * Lp + j] = bk != NULL ? k[d] + bk[d] : k[d];
            }
            for (int d = 0; d < dh; d++) {
                vd[d] = bv != NULL ? v[d] + bv[d] : v[d];
            }
            for (size_t d = (size_t)dh; d < dp; d++) {
                vd[d] = 0.0f;
            }
        } else {
            for (int d = 0; d < dh; d++) {
                Kt[(size_t)d * Lp + j] = 0.0f;
            }
            for (size_t d = 0; d < dp; d++) {
                vd[d] = 0.0f;
            }
        }
    }
    for (int i0 = 0; i0 < L; i0 += EG_QB) {
        const int nq = L - i0 < EG_QB ? L - i0 : EG_QB;
        for (int r = 0; r < EG_QB; r++) {
            float *qr = Q + (size_t)r * dp;
            if (r < nq) {
                const float *qi = base + (size_t)(i0 + r) * row;
                for (int d = 0; d < dh; d++) {
                    qr[d] = (bq != NULL ? qi[d] + bq[d] : qi[d]) * scale;
                }
            } else {
                for (int d = 0; d < dh; d++) {
                    qr[d] = 0.0f;
                }
            }
        }
        /* scores: S[r][j] = q_r . k_j */
        for (size_t jb = 0; jb < Lp; jb += LANES) {
            v16f acc[EG_QB];
            for (int r = 0; r < EG_QB; r++) {
                acc[r] = (v16f){0};
            }
            for (int d = 0; d < dh; d++) {
                v16f k = SFX(ld16)(Kt + (size_t)d * Lp + jb);
                for (int r = 0; r < EG_QB; r++) {
                    acc[r] += Q[(size_t)r * dp + d] * k;
                }
            }
            for (int r = 0; r < EG_QB; r++) {
                SFX(st16)(S + (size_t)r * Lp + jb, acc[r]);
            }
        }
        /* softmax numerators per row (eg_vmath.h, fixed-lane max and sum) */
        float inv[EG_QB];
        for (int r = 0; r < EG_QB; r++) {
            inv[r] = SFX(vm_softmax_lanes)(S + (size_t)r * Lp, (size_t)L, Lp);
        }
        /* out_r = sum_j p_rj v_j / sum_r */
        for (size_t db = 0; db < dp; db += LANES) {
            v16f acc[EG_QB];
            for (int r = 0; r < EG_QB; r++) {
                acc[r] = (v16f){0};
            }
            for (int j = 0; j < L; j++) {
                v16f v = SFX(ld16)(V + (size_t)j * dp + db);
                for (int r = 0; r < EG_QB; r++) {
                    acc[r] += S[(size_t)r * Lp + j] * v;
                }
            }
            const int nd = dh - (int)db < LANES ? dh - (int)db : LANES;
            for (int r = 0; r < nq; r++) {
                float tmp[LANES];
                SFX(st16)(tmp, acc[r] * inv[r]);
                float *o = out + (size_t)(i0 + r) * D + db;
                for (int d = 0; d < nd; d++) {
                    o[d] = tmp[d];
                }
            }
        }
    }
}

static void SFX(add_row)(float *acc, const float *x, int C)
{
    for (int i = 0; i < C; i++) {
        acc[i] += x[i];
    }
}

