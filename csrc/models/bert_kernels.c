/*
 * bert_kernels.c — the element-wise and attention kernels of the BERT
 * encoder: LayerNorm (plain and fused with bias + residual), exact GELU with
 * a vectorisable erf, and per-(sequence, head) self-attention on packed
 * sequences.
 *
 * Speed without -ffast-math: glibc's erff and expf are scalar and branchy
 * (erff costs ~15 ns here, which would make GELU as slow as the FFN GEMMs),
 * so erf and exp are written branch-free below and the hot loops are
 * compiled for several instruction sets (target_clones: the loader picks
 * AVX-512, AVX2 or baseline at run time; no -march flag needed). Without
 * fast-math the compiler never reassociates, so every clone computes the
 * same sums in the same order; the reductions that would otherwise stay
 * scalar use fixed lanes of partial sums (deterministic too).
 *
 * Threads: OpenMP over rows, or over (sequence, head) pairs for attention;
 * every output element is written by exactly one thread, so results do not
 * depend on the thread count or schedule. No BLAS is called here.
 */
#include "eg_bert.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) && \
    !defined(EG_NO_CLONES)
#define EG_HOT __attribute__((target_clones("default", "arch=haswell", "arch=skylake-avx512")))
#else
#define EG_HOT
#endif

#define LANES 16

/* ------------------------------------------------------------ exp and erf */

/* e^x for x <= 0 (inputs below -87 give ~0 rather than denormals). Range
 * reduction x = n ln2 + r, |r| <= ln2/2, then the degree-7 Taylor polynomial
 * of e^r (truncation error < 6e-9 relative) and 2^n put in the exponent
 * bits. Branch-free so loops calling it vectorise. */
static inline float exp_nonpos(float x)
{
    /* written so that NaN also lands in [-87, 0]: the integer conversion
     * below must never see NaN or a huge value */
    x = x >= -87.0f ? x : -87.0f;
    x = x <= 0.0f ? x : 0.0f;
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to integer */
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t e = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* erf(z). |z| < 1: the Maclaurin series (terms through z^23, truncation
 * < 2e-9). |z| >= 1: erf = 1 - erfc with the Chebyshev-fitted erfc of
 * Numerical Recipes (fractional error < 1.2e-7 of erfc, itself < 0.16
 * there, so < 2e-8 absolute). Both branches are computed and one selected,
 * so there is no branch in a loop. */
static inline float erf_one(float z)
{
    float a = fabsf(z);
    /* series: (2/sqrt(pi)) * a * sum_n (-1)^n a^(2n) / (n! (2n+1)) */
    float x2 = a * a;
    float s = (float)(-1.0 / (39916800.0 * 23.0));
    s = s * x2 + (float)(1.0 / (3628800.0 * 21.0));
    s = s * x2 + (float)(-1.0 / (362880.0 * 19.0));
    s = s * x2 + (float)(1.0 / (40320.0 * 17.0));
    s = s * x2 + (float)(-1.0 / (5040.0 * 15.0));
    s = s * x2 + (float)(1.0 / (720.0 * 13.0));
    s = s * x2 + (float)(-1.0 / (120.0 * 11.0));
    s = s * x2 + (float)(1.0 / (24.0 * 9.0));
    s = s * x2 + (float)(-1.0 / (6.0 * 7.0));
    s = s * x2 + (float)(1.0 / (2.0 * 5.0));
    s = s * x2 + (float)(-1.0 / 3.0);
    s = s * x2 + 1.0f;
    float small = 1.12837916709551257f * a * s;
    /* tail: erfc(a) = t exp(-a^2 + P(t)), t = 1 / (1 + a/2) */
    float ac = a > 10.0f ? 10.0f : a;
    float t = 1.0f / (1.0f + 0.5f * ac);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float big = 1.0f - t * exp_nonpos(p - ac * ac);
    float r = a < 1.0f ? small : big;
    return z < 0.0f ? -r : r;
}

EG_HOT
void eg_bert_erf(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = erf_one(inp[i]);
    }
}

/* GELU of one row with an optional bias added first (the Linear's bias). */
EG_HOT
static void bias_gelu_row(float *out, const float *inp, const float *bias, int C)
{
    if (bias != NULL) {
        for (int i = 0; i < C; i++) {
            float x = inp[i] + bias[i];
            out[i] = 0.5f * x * (1.0f + erf_one(x * 0.707106781186547524f));
        }
    } else {
        for (int i = 0; i < C; i++) {
            float x = inp[i];
            out[i] = 0.5f * x * (1.0f + erf_one(x * 0.707106781186547524f));
        }
    }
}

void eg_bert_gelu_forward(float *out, const float *inp, size_t n)
{
    // out (n), inp (n): done in chunks so the threads share the work
    const size_t chunk = 4096;
    long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk;
        size_t len = n - lo < chunk ? n - lo : chunk;
        bias_gelu_row(out + lo, inp + lo, NULL, (int)len);
    }
}

/* out (N,C) = gelu(inp + bias), row-wise; out may equal inp. */
void eg_bert_bias_gelu_forward(float *out, const float *inp, const float *bias, size_t N, int C)
{
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)N; r++) {
        bias_gelu_row(out + (size_t)r * C, inp + (size_t)r * C, bias, C);
    }
}

/* ---------------------------------------------------------------- LayerNorm */

/* Normalise one row x (C) into out. Sums run in LANES fixed partial sums
 * (so they vectorise and stay deterministic) and are combined in double. */
EG_HOT
static void layernorm_row(float *out, const float *x, const float *w, const float *b, int C,
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

void eg_bert_layernorm_forward(float *out, const float *inp, const float *weight,
                               const float *bias, size_t N, int C, float eps)
{
    // out (N,C), inp (N,C), weight (C), bias (C)
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)N; r++) {
        layernorm_row(out + (size_t)r * C, inp + (size_t)r * C, weight, bias, C, eps);
    }
}

EG_HOT
static void add3_row(float *dst, const float *x, const float *xb, const float *res, int C)
{
    for (int i = 0; i < C; i++) {
        dst[i] = (x[i] + xb[i]) + res[i];
    }
}

/* out (N,C) = LayerNorm((x + xbias) + res): the end of a BERT sub-layer
 * (dense output, its bias, the residual). out may equal res or x. */
void eg_bert_residual_layernorm_forward(float *out, const float *x, const float *xbias,
                                        const float *res, const float *weight,
                                        const float *bias, size_t N, int C, float eps)
{
    // out (N,C), x (N,C), xbias (C), res (N,C), weight (C), bias (C).
    // The sum is written into out first (element by element, so aliasing
    // out with x or res is safe) and normalised in place.
#pragma omp parallel for schedule(static)
    for (long r = 0; r < (long)N; r++) {
        size_t o = (size_t)r * C;
        add3_row(out + o, x + o, xbias, res + o, C);
        layernorm_row(out + o, out + o, weight, bias, C, eps);
    }
}

/* ----------------------------------------------------------------- attention */

size_t eg_bert_attention_scratch(int max_len, int dh)
{
    /* Kt (dh, L) + V (L, dh) + scores (L) + q (dh), each padded to LANES */
    size_t L = (size_t)(max_len > 0 ? max_len : 1);
    size_t Lp = (L + LANES - 1) / LANES * LANES;
    size_t dp = ((size_t)dh + LANES - 1) / LANES * LANES;
    return (size_t)dh * Lp + L * dp + Lp + dp + 4 * LANES;
}

/* One (sequence, head): q,k,v rows at stride 3D from `base`, bias added on
 * load. Scores s_j = (q_i . k_j) / sqrt(dh) through a transposed K so the
 * inner loop runs over contiguous j; softmax with fixed-lane max and sum;
 * out_i = sum_j p_j v_j with the inner loop over the head's dh columns. */
EG_HOT
static void attention_head(float *out, const float *base, const float *bq, const float *bk,
                           const float *bv, int L, int D, int dh, float *scratch)
{
    size_t Lp = ((size_t)L + LANES - 1) / LANES * LANES;
    size_t dp = ((size_t)dh + LANES - 1) / LANES * LANES;
    float *Kt = scratch;                 /* (dh, Lp) */
    float *V = Kt + (size_t)dh * Lp;     /* (L, dp)  */
    float *s = V + (size_t)L * dp;       /* (Lp)     */
    float *q = s + Lp;                   /* (dp)     */
    const size_t row = (size_t)3 * D;
    const float scale = 1.0f / sqrtf((float)dh);

    for (int j = 0; j < L; j++) {
        const float *k = base + (size_t)j * row + D;
        const float *v = base + (size_t)j * row + 2 * D;
        for (int d = 0; d < dh; d++) {
            Kt[(size_t)d * Lp + j] = bk != NULL ? k[d] + bk[d] : k[d];
        }
        float *vd = V + (size_t)j * dp;
        for (int d = 0; d < dh; d++) {
            vd[d] = bv != NULL ? v[d] + bv[d] : v[d];
        }
    }
    for (int i = 0; i < L; i++) {
        const float *qi = base + (size_t)i * row;
        for (int d = 0; d < dh; d++) {
            q[d] = (bq != NULL ? qi[d] + bq[d] : qi[d]) * scale;
        }
        for (int j = 0; j < L; j++) {
            s[j] = 0.0f;
        }
        for (int d = 0; d < dh; d++) {
            const float qd = q[d];
            const float *kt = Kt + (size_t)d * Lp;
            for (int j = 0; j < L; j++) {
                s[j] += qd * kt[j];
            }
        }
        /* max over j in fixed lanes */
        float mx[LANES];
        for (int l = 0; l < LANES; l++) {
            mx[l] = -INFINITY;
        }
        int j = 0;
        for (; j + LANES <= L; j += LANES) {
            for (int l = 0; l < LANES; l++) {
                mx[l] = s[j + l] > mx[l] ? s[j + l] : mx[l];
            }
        }
        float m = -INFINITY;
        for (int l = 0; l < LANES; l++) {
            m = mx[l] > m ? mx[l] : m;
        }
        for (; j < L; j++) {
            m = s[j] > m ? s[j] : m;
        }
        float sp[LANES] = {0};
        for (j = 0; j < L; j++) {
            s[j] = exp_nonpos(s[j] - m);
        }
        j = 0;
        for (; j + LANES <= L; j += LANES) {
            for (int l = 0; l < LANES; l++) {
                sp[l] += s[j + l];
            }
        }
        float sum = 0.0f;
        for (int l = 0; l < LANES; l++) {
            sum += sp[l];
        }
        for (; j < L; j++) {
            sum += s[j];
        }
        const float inv = 1.0f / sum;
        float acc[256];
        float *o = out + (size_t)i * D;
        if (dh <= 256) {
            for (int d = 0; d < dh; d++) {
                acc[d] = 0.0f;
            }
            for (j = 0; j < L; j++) {
                const float p = s[j];
                const float *vj = V + (size_t)j * dp;
                for (int d = 0; d < dh; d++) {
                    acc[d] += p * vj[d];
                }
            }
            for (int d = 0; d < dh; d++) {
                o[d] = acc[d] * inv;
            }
        } else {
            for (int d = 0; d < dh; d++) {
                o[d] = 0.0f;
            }
            for (j = 0; j < L; j++) {
                const float p = s[j];
                const float *vj = V + (size_t)j * dp;
                for (int d = 0; d < dh; d++) {
                    o[d] += p * vj[d];
                }
            }
            for (int d = 0; d < dh; d++) {
                o[d] *= inv;
            }
        }
    }
}

void eg_bert_attention_forward_bias(float *out, const float *qkv, const float *bqkv,
                                    const int64_t *offsets, int n_seq, int D, int n_heads,
                                    float *scratch)
{
    // out (n_tok, D), qkv (n_tok, 3D), bqkv (3D) or NULL, offsets (n_seq + 1)
    const int dh = D / n_heads;
    int64_t max_len = 0;
    for (int i = 0; i < n_seq; i++) {
        int64_t len = offsets[i + 1] - offsets[i];
        max_len = len > max_len ? len : max_len;
    }
    const size_t per_thread = eg_bert_attention_scratch((int)max_len, dh);
    const long pairs = (long)n_seq * n_heads;
    /* Longest sequences first would balance better, but the pairs are many
     * and small; dynamic scheduling in chunks of one is enough. */
#pragma omp parallel for schedule(dynamic, 1)
    for (long p = 0; p < pairs; p++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int sq = (int)(p / n_heads);
        const int h = (int)(p % n_heads);
        const int64_t lo = offsets[sq];
        const int L = (int)(offsets[sq + 1] - lo);
        const float *base = qkv + (size_t)lo * 3 * D + (size_t)h * dh;
        const float *bq = bqkv != NULL ? bqkv + (size_t)h * dh : NULL;
        const float *bk = bqkv != NULL ? bqkv + D + (size_t)h * dh : NULL;
        const float *bv = bqkv != NULL ? bqkv + 2 * (size_t)D + (size_t)h * dh : NULL;
        attention_head(out + (size_t)lo * D + (size_t)h * dh, base, bq, bk, bv, L, D, dh,
                       scratch + (size_t)tid * per_thread);
    }
}

void eg_bert_attention_forward(float *out, const float *qkv, const int64_t *offsets,
                               int n_seq, int D, int n_heads, float *scratch)
{
    eg_bert_attention_forward_bias(out, qkv, NULL, offsets, n_seq, D, n_heads, scratch);
}

/* ---------------------------------------------------------------- pooling */

EG_HOT
static void add_row(float *acc, const float *x, int C)
{
    for (int i = 0; i < C; i++) {
        acc[i] += x[i];
    }
}

void eg_bert_pool(const eg_bert_state *s, float *out)
{
    // out (n_seq, D): float sums divided by the count, as torch's
    // sum(h * mask) / sum(mask) does in sentence-transformers.
    const int D = s->hidden;
#pragma omp parallel for schedule(static)
    for (long i = 0; i < (long)s->n_seq; i++) {
        float *o = out + (size_t)i * D;
        for (int c = 0; c < D; c++) {
            o[c] = 0.0f;
        }
        const int64_t lo = s->offsets[i], hi = s->offsets[i + 1];
        for (int64_t t = lo; t < hi; t++) {
            add_row(o, s->h + (size_t)t * D, D);
        }
        const float cnt = (float)(hi - lo);
        for (int c = 0; c < D; c++) {
            o[c] = hi > lo ? o[c] / cnt : 0.0f;
        }
    }
}
