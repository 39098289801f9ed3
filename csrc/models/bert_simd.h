/*
 * bert_simd.h — the hot loops of the BERT kernels, included several times by
 * bert_kernels.c, each time under a different `#pragma GCC target` and with
 * SFX(name) giving the functions a per-instruction-set suffix; bert_kernels.c
 * picks one set at run time. Not a public header: only bert_kernels.c
 * includes it, after defining SFX and LANES.
 */

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
            out[i] = 0.5f * x * (1.0f + SFX(erf_one)(x * 0.707106781186547524f));
        }
    } else {
        for (int i = 0; i < C; i++) {
            float x = inp[i];
            out[i] = 0.5f * x * (1.0f + SFX(erf_one)(x * 0.707106781186547524f));
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

/* One (sequence, head): q,k,v rows at stride 3D from `base`, bias added on
 * load. Scores s_j = (q_i . k_j) / sqrt(dh) through a transposed K so the
 * inner loop runs over contiguous j; softmax with fixed-lane max and sum;
 * out_i = sum_j p_j v_j with the inner loop over the head's dh columns. */
static void SFX(attention_head)(float *out, const float *base, const float *bq, const float *bk,
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
            s[j] = SFX(exp_nonpos)(s[j] - m);
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

static void SFX(add_row)(float *acc, const float *x, int C)
{
    for (int i = 0; i < C; i++) {
        acc[i] += x[i];
    }
}

