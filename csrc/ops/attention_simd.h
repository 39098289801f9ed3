/*
 * attention_simd.h — the body of one (sequence, head) of scaled dot-product
 * attention, included by attention.c once per instruction set through
 * eg_isa.h (SFX(name) gives each copy its suffix). Not a public header.
 *
 * Queries are taken QB rows at a time so that every key/value vector loaded
 * is used QB times. Written with GCC's generic 16-float vectors (v16f):
 * each instruction-set copy lowers them to one AVX-512, two AVX or four SSE
 * registers, and computes the same bits (fixed lanes, no FMA contraction).
 * Scratch (floats, all blocks 64-byte multiples, see eg_attention_scratch):
 *   Kt (dh, Lp)   keys transposed, columns j >= L zero
 *   V  (Lp, dp)   values, rows j >= L and columns d >= dh zero
 *   Q  (QB, dp)   the block's queries, pre-scaled by 1/sqrt(dh)
 *   S  (QB, Lp)   scores, then probabilities (unnormalised)
 * Score columns past a row's last visible key are padding that the softmax
 * row zeroes. A causal block of queries i0..i0+nq-1 only reads keys
 * 0..i0+nq-1, and row i sees keys 0..i.
 */

/* The forward's products run on the copy's native vector (ATT_NW floats:
 * one zmm, ymm or xmm register), a 16-lane block as 16 / ATT_NW column
 * chunks: GCC lowers v16f to pairs of ymm on AVX2 through memory. All
 * EG_QB query rows' accumulators stay in registers (named a0..a7; an array
 * of them was left in memory), and each output lane is the same sum in the
 * same order as with v16f: no bit changes between the copies. (GCC defines
 * __AVX512F__ / __AVX2__ inside each copy's `#pragma GCC target`.) */
#undef ATT_NW
#if defined(__AVX512F__)
#define ATT_NW 16
#elif defined(__AVX2__)
#define ATT_NW 8
#else
#define ATT_NW 4
#endif
typedef float SFX(nv) __attribute__((vector_size(ATT_NW * sizeof(float))));
_Static_assert(LANES % ATT_NW == 0 && EG_QB == 8, "a 16-lane block is whole native vectors");

static inline __attribute__((always_inline)) SFX(nv) SFX(ldnv)(const float *p)
{
    SFX(nv) v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ATT_ACC_ADD(x, ld, v): a_r += x[r * ld] * v for the EG_QB (8) rows;
 * ATT_ACC_STORE(p, ld): row r's accumulator to p + r * ld. */
#ifndef ATT_ACC_ADD
#define ATT_ACC_ADD(x, ld, v)                                                             \
    do {                                                                                  \
        a0 += (x)[0] * (v);                                                               \
        a1 += (x)[(size_t)(ld)] * (v);                                                    \
        a2 += (x)[2 * (size_t)(ld)] * (v);                                                \
        a3 += (x)[3 * (size_t)(ld)] * (v);                                                \
        a4 += (x)[4 * (size_t)(ld)] * (v);                                                \
        a5 += (x)[5 * (size_t)(ld)] * (v);                                                \
        a6 += (x)[6 * (size_t)(ld)] * (v);                                                \
        a7 += (x)[7 * (size_t)(ld)] * (v);                                                \
    } while (0)
#define ATT_ACC_STORE(p, ld)                                                              \
    do {                                                                                  \
        memcpy((p), &a0, sizeof a0);                                                      \
        memcpy((p) + (size_t)(ld), &a1, sizeof a1);                                       \
        memcpy((p) + 2 * (size_t)(ld), &a2, sizeof a2);                                   \
        memcpy((p) + 3 * (size_t)(ld), &a3, sizeof a3);                                   \
        memcpy((p) + 4 * (size_t)(ld), &a4, sizeof a4);                                   \
        memcpy((p) + 5 * (size_t)(ld), &a5, sizeof a5);                                   \
        memcpy((p) + 6 * (size_t)(ld), &a6, sizeof a6);                                   \
        memcpy((p) + 7 * (size_t)(ld), &a7, sizeof a7);                                   \
    } while (0)
#endif

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

#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

/* q: the head's first query row (row stride ldq); k, v: its key/value
 * head's first rows (stride ldkv); bq/bk/bv: per-head biases or NULL;
 * out: the head's first output row (stride ldo). */
static void SFX(attention_head)(float *out, size_t ldo, const float *q, size_t ldq,
                                const float *k, const float *v, size_t ldkv, const float *bq,
                                const float *bk, const float *bv, int L, int dh, int causal,
                                float *scratch)
{
    const size_t Lp = ((size_t)L + LANES - 1) / LANES * LANES;
    const size_t dp = ((size_t)dh + LANES - 1) / LANES * LANES;
    float *Kt = scratch;
    float *V = Kt + (size_t)dh * Lp;
    float *Q = V + Lp * dp;
    float *S = Q + (size_t)EG_QB * dp;
    const float scale = 1.0f / sqrtf((float)dh);

    for (size_t j = 0; j < Lp; j++) {
        float *vd = V + j * dp;
        if (j < (size_t)L) {
            const float *kj = k + j * ldkv;
            const float *vj = v + j * ldkv;
            for (int d = 0; d < dh; d++) {
                Kt[(size_t)d * Lp + j] = bk != NULL ? kj[d] + bk[d] : kj[d];
            }
            for (int d = 0; d < dh; d++) {
                vd[d] = bv != NULL ? vj[d] + bv[d] : vj[d];
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
        /* keys this block reads: all of them, or (causal) up to its last row */
        const int Lk = causal ? i0 + nq : L;
        const size_t Lkp = ((size_t)Lk + LANES - 1) / LANES * LANES;
        for (int r = 0; r < EG_QB; r++) {
            float *qr = Q + (size_t)r * dp;
            if (r < nq) {
                const float *qi = q + (size_t)(i0 + r) * ldq;
                for (int d = 0; d < dh; d++) {
                    qr[d] = (bq != NULL ? qi[d] + bq[d] : qi[d]) * scale;
                }
            } else {
                for (int d = 0; d < dh; d++) {
                    qr[d] = 0.0f;
                }
            }
        }
        /* scores: S[r][j] = q_r . k_j, one native vector of keys at a time */
        for (size_t jb = 0; jb < Lkp; jb += ATT_NW) {
            SFX(nv) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int d = 0; d < dh; d++) {
                const SFX(nv) kv = SFX(ldnv)(Kt + (size_t)d * Lp + jb);
                ATT_ACC_ADD(Q + d, dp, kv);
            }
            ATT_ACC_STORE(S + jb, Lp);
        }
        /* softmax numerators per row (eg_vmath.h, fixed-lane max and sum);
         * a causal row i sees i + 1 keys */
        float inv[EG_QB];
        for (int r = 0; r < EG_QB; r++) {
            size_t seen = causal ? (size_t)(r < nq ? i0 + r + 1 : 1) : (size_t)L;
            inv[r] = SFX(vm_softmax_lanes)(S + (size_t)r * Lp, seen, Lkp);
        }
        /* out_r = sum_j p_rj v_j / sum_r */
        for (size_t db = 0; db < (size_t)dh; db += ATT_NW) {   /* padding columns: never read */
            SFX(nv) a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
            for (int j = 0; j < Lk; j++) {
                const SFX(nv) vv = SFX(ldnv)(V + (size_t)j * dp + db);
                ATT_ACC_ADD(S + j, Lp, vv);
            }
            float tmp[EG_QB * ATT_NW];
            ATT_ACC_STORE(tmp, ATT_NW);
            const int nd = dh - (int)db < ATT_NW ? dh - (int)db : ATT_NW;
            for (int r = 0; r < nq; r++) {
                const SFX(nv) o_r = SFX(ldnv)(tmp + (size_t)r * ATT_NW) * inv[r];
                float *o = out + (size_t)(i0 + r) * ldo + db;
                if (nd == ATT_NW) {
                    memcpy(o, &o_r, sizeof o_r);
                } else {
                    float t[ATT_NW];
                    memcpy(t, &o_r, sizeof o_r);
                    for (int d = 0; d < nd; d++) {
                        o[d] = t[d];
                    }
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- backward
 * One (sequence, key/value head) pair p of eg_attention_backward: recompute
 * the probabilities P of each query head of the group (scratch P: L x L,
 * then one row of dP), then dv, dq and dk. Dot products over the head
 * dimension are summed in double in BW_LANES fixed lanes, then the lanes
 * in order, so every instruction-set copy gives the same bits. */
#define BW_LANES 8

/* Lanes 0-3 (lo) and 4-7 (hi) of the double sums: acc_u += a[d+u] b[d+u].
 * Two named halves rather than one 8-double vector: GCC kept the latter in
 * memory across iterations (a store-forwarding chain per step of the dot). */
static inline __attribute__((always_inline)) void SFX(mul_acc_d)(v4d *lo, v4d *hi, const float *a,
                                                               const float *b)
{
    v4f a0, a1, b0, b1;
    memcpy(&a0, a, sizeof a0);
    memcpy(&a1, a + 4, sizeof a1);
    memcpy(&b0, b, sizeof b0);
    memcpy(&b1, b + 4, sizeof b1);
    *lo += __builtin_convertvector(a0, v4d) * __builtin_convertvector(b0, v4d);
    *hi += __builtin_convertvector(a1, v4d) * __builtin_convertvector(b1, v4d);
}

/* The lanes' sums finished: the tail a[d..n) into lanes 0.., then the lanes
 * added in order. */
static inline __attribute__((always_inline)) double SFX(lanes_sum_d)(v4d lo, v4d hi, const float *a,
                                                                   const float *b, int d, int n)
{
    double lane[BW_LANES] = {lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]};
    for (int u = 0; d < n; d++, u++) {
        lane[u] += (double)a[d] * (double)b[d];
    }
    double s = 0.0;
    for (int u = 0; u < BW_LANES; u++) {
        s += lane[u];
    }
    return s;
}

static inline __attribute__((always_inline)) double SFX(dot_d)(const float *a, const float *b,
                                                          int n)
{
    v4d lo = {0}, hi = {0};
    int d = 0;
    for (; d + BW_LANES <= n; d += BW_LANES) {
        SFX(mul_acc_d)(&lo, &hi, a + d, b + d);
    }
    return SFX(lanes_sum_d)(lo, hi, a, b, d, n);
}

/* out[c] = a . b_c for the four rows b_c = b + c * ld, each exactly as
 * SFX(dot_d) computes it (same lanes, same order: the same bits), with four
 * independent chains of additions in flight instead of one. */
static inline __attribute__((always_inline)) void SFX(dot_d4)(double *out, const float *a,
                                                             const float *b, size_t ld, int n)
{
    v4d lo0 = {0}, hi0 = {0}, lo1 = {0}, hi1 = {0}, lo2 = {0}, hi2 = {0}, lo3 = {0}, hi3 = {0};
    const float *b1 = b + ld, *b2 = b + 2 * ld, *b3 = b + 3 * ld;
    int d = 0;
    for (; d + BW_LANES <= n; d += BW_LANES) {
        SFX(mul_acc_d)(&lo0, &hi0, a + d, b + d);
        SFX(mul_acc_d)(&lo1, &hi1, a + d, b1 + d);
        SFX(mul_acc_d)(&lo2, &hi2, a + d, b2 + d);
        SFX(mul_acc_d)(&lo3, &hi3, a + d, b3 + d);
    }
    out[0] = SFX(lanes_sum_d)(lo0, hi0, a, b, d, n);
    out[1] = SFX(lanes_sum_d)(lo1, hi1, a, b1, d, n);
    out[2] = SFX(lanes_sum_d)(lo2, hi2, a, b2, d, n);
    out[3] = SFX(lanes_sum_d)(lo3, hi3, a, b3, d, n);
}

static void SFX(attention_bwd_pair)(float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v,
                                const int64_t *offsets, const eg_attention_shape *sh,
                                float *P, long p, double scale)
{
    const int Hkv = sh->n_kv_heads, dh = sh->head_dim;
    const int group = sh->n_heads / Hkv;
    const size_t qs = sh->q_stride, ks = sh->kv_stride, os = sh->out_stride;
    const int s = (int)(p / Hkv), kvh = (int)(p % Hkv);
    const size_t lo = (size_t)offsets[s];
    const int L = (int)(offsets[s + 1] - offsets[s]);
    float *dP = P + (size_t)L * L;
    const size_t ko = (size_t)kvh * dh;
    for (int i = 0; i < L; i++) {
        memset(dk + (lo + i) * ks + ko, 0, (size_t)dh * sizeof(float));
        memset(dv + (lo + i) * ks + ko, 0, (size_t)dh * sizeof(float));
    }
    for (int h = kvh * group; h < (kvh + 1) * group; h++) {
        const size_t qo = (size_t)h * dh;
        /* P: the forward's probabilities, in double sums */
        for (int i = 0; i < L; i++) {
            const int seen = sh->causal ? i + 1 : L;
            const float *qi = q + (lo + i) * qs + qo;
            double mx = -INFINITY;
            int j = 0;
            for (; j + 4 <= seen; j += 4) {   /* four keys at a time: the same sums */
                double acc4[4];
                SFX(dot_d4)(acc4, qi, k + (lo + j) * ks + ko, ks, dh);
                for (int c = 0; c < 4; c++) {
                    P[(size_t)i * L + j + c] = (float)(acc4[c] * scale);
                    mx = fmax(mx, P[(size_t)i * L + j + c]);
                }
            }
            for (; j < seen; j++) {
                const float *kj = k + (lo + j) * ks + ko;
                double acc = SFX(dot_d)(qi, kj, dh);
                P[(size_t)i * L + j] = (float)(acc * scale);
                mx = fmax(mx, P[(size_t)i * L + j]);
            }
            double sum = 0.0;
            for (int j = 0; j < seen; j++) {
                double e = exp((double)P[(size_t)i * L + j] - mx);
                P[(size_t)i * L + j] = (float)e;
                sum += e;
            }
            for (int j = 0; j < seen; j++) {
                P[(size_t)i * L + j] = (float)(P[(size_t)i * L + j] / sum);
            }
            for (int j = seen; j < L; j++) {
                P[(size_t)i * L + j] = 0.0f;
            }
        }
        for (int i = 0; i < L; i++) {
            const int seen = sh->causal ? i + 1 : L;
            const float *doi = dout + (lo + i) * os + qo;
            /* dP_ij = dO_i . v_j ; dv_j += P_ij dO_i */
            double rowdot = 0.0;
            int j = 0;
            for (; j + 4 <= seen; j += 4) {   /* four values at a time: the same sums, same order */
                double acc4[4];
                SFX(dot_d4)(acc4, doi, v + (lo + j) * ks + ko, ks, dh);
                for (int c = 0; c < 4; c++) {
                    float *dvj = dv + (lo + j + c) * ks + ko;
                    const float pij = P[(size_t)i * L + j + c];
                    #pragma omp simd
                    for (int d = 0; d < dh; d++) {
                        dvj[d] += pij * doi[d];
                    }
                    dP[j + c] = (float)acc4[c];
                    rowdot += acc4[c] * pij;
                }
            }
            for (; j < seen; j++) {
                const float *vj = v + (lo + j) * ks + ko;
                float *dvj = dv + (lo + j) * ks + ko;
                const float pij = P[(size_t)i * L + j];
                const double acc = SFX(dot_d)(doi, vj, dh);
                #pragma omp simd
                for (int d = 0; d < dh; d++) {
                    dvj[d] += pij * doi[d];
                }
                dP[j] = (float)acc;
                rowdot += acc * pij;
            }
            /* dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij); dq_i = scale sum_j dS_ij k_j;
             * dk_j += scale dS_ij q_i */
            float *dqi = dq + (lo + i) * qs + qo;
            const float *qi = q + (lo + i) * qs + qo;
            for (int d = 0; d < dh; d++) {
                dqi[d] = 0.0f;
            }
            for (int j = 0; j < seen; j++) {
                const float ds = (float)(P[(size_t)i * L + j] * (dP[j] - rowdot) * scale);
                const float *kj = k + (lo + j) * ks + ko;
                float *dkj = dk + (lo + j) * ks + ko;
                #pragma omp simd
                for (int d = 0; d < dh; d++) {
                    dqi[d] += ds * kj[d];
                    dkj[d] += ds * qi[d];
                }
            }
        }
    }
}
