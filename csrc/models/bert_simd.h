/*
 * bert_simd.h — the hot loops of the BERT kernels, included several times by
 * bert_kernels.c, each time under a different `#pragma GCC target` and with
 * SFX(name) giving the functions a per-instruction-set suffix; bert_kernels.c
 * picks one set at run time. Not a public header: only bert_kernels.c
 * includes it, after defining SFX and LANES.
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

/* e^x for x <= 0 (inputs below -87 give ~0 rather than denormals). Range
 * reduction x = n ln2 + r, |r| <= ln2/2, then the degree-7 Taylor polynomial
 * of e^r (truncation error < 6e-9 relative) and 2^n put in the exponent
 * bits. Branch-free so loops calling it vectorise. */
static inline float SFX(exp_nonpos)(float x)
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
static inline float SFX(erf_one)(float z)
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
    float big = 1.0f - t * SFX(exp_nonpos)(p - ac * ac);
    float r = a < 1.0f ? small : big;
    return z < 0.0f ? -r : r;
}

/* GELU(x) = x Phi(x), Phi(x) = erfc(-x / sqrt 2) / 2, with the same erfc
 * formula as erf_one's tail used on both sides of 0 (Phi = 1 - erfc(a)/2
 * for x >= 0, erfc(a)/2 for x < 0, a = |x| / sqrt 2): one branch-free path
 * instead of erf_one's two. Phi's absolute error is < 6e-8 (half of erfc's
 * 1.2e-7 relative error), so GELU's is < 6e-8 |x|. */
static inline float SFX(gelu_one)(float x)
{
    float a = fabsf(x) * 0.707106781186547524f;
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
    float half_erfc = 0.5f * t * SFX(exp_nonpos)(p - ac * ac);
    float phi = x >= 0.0f ? 1.0f - half_erfc : half_erfc;
    return x * phi;
}

static void SFX(erf_loop)(float *out, const float *inp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = SFX(erf_one)(inp[i]);
    }
}

/* GELU of one row with an optional bias added first (the Linear's bias). */
static void SFX(bias_gelu_row)(float *out, const float *inp, const float *bias, int C)
{
    if (bias != NULL) {
        for (int i = 0; i < C; i++) {
            float x = inp[i] + bias[i];
            out[i] = SFX(gelu_one)(x);
        }
    } else {
        for (int i = 0; i < C; i++) {
            float x = inp[i];
            out[i] = SFX(gelu_one)(x);
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
 * Scores for j >= L are set to -inf so they vanish in the softmax. */
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
        /* softmax numerators per row, with fixed-lane max and sum */
        float inv[EG_QB];
        for (int r = 0; r < EG_QB; r++) {
            float *s = S + (size_t)r * Lp;
            for (size_t j = (size_t)L; j < Lp; j++) {
                s[j] = -INFINITY;
            }
            float mx[LANES];
            for (int l = 0; l < LANES; l++) {
                mx[l] = -INFINITY;
            }
            for (size_t j = 0; j < Lp; j += LANES) {
                for (int l = 0; l < LANES; l++) {
                    mx[l] = s[j + l] > mx[l] ? s[j + l] : mx[l];
                }
            }
            float m = -INFINITY;
            for (int l = 0; l < LANES; l++) {
                m = mx[l] > m ? mx[l] : m;
            }
            for (size_t j = 0; j < Lp; j++) {
                s[j] = SFX(exp_nonpos)(s[j] - m);
            }
            for (size_t j = (size_t)L; j < Lp; j++) {
                s[j] = 0.0f; /* exp of -inf - m is ~0 but not exactly: force it */
            }
            float sp[LANES] = {0};
            for (size_t j = 0; j < Lp; j += LANES) {
                for (int l = 0; l < LANES; l++) {
                    sp[l] += s[j + l];
                }
            }
            float sum = 0.0f;
            for (int l = 0; l < LANES; l++) {
                sum += sp[l];
            }
            inv[r] = 1.0f / sum;
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

