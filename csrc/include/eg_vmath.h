/*
 * eg_vmath.h — the core's element-wise math, written so that loops calling
 * it vectorise: exp, erf, erfc, GELU, the standard normal cdf/pdf and the
 * sigmoid without a libm call (glibc's expf/erff are scalar and branchy),
 * plus the one softmax row used by the routers and the cross-entropy.
 * Not part of the public API (eg.h): only kernels include it.
 *
 * Every function is static inline. Kernels that compile their hot loops
 * once per instruction set (eg_isa.h: bert_simd.h for the BERT kernels,
 * csrc/gmoe/moe_act_simd.h for the MoE FFN's activations) include this
 * header once per copy with EG_VMATH_NAME(name) defined to give that copy's
 * functions a suffix; without EG_VMATH_NAME the functions are named
 * eg_vm_<name>. The header has no include guard for that reason; only the
 * double softmax section (libm; one copy is enough) has one.
 *
 * Two softmax rows, for two jobs: softmax_lanes (float, vectorised, fixed
 * reduction lanes; the attention of the BERT kernels and, next, of the
 * decoder blocks) and eg_softmax_row (double sums; short rows of router
 * logits and class scores).
 *
 * Selects are bit operations (select below): gcc does not if-convert a
 * float `c ? a : b` without -fno-trapping-math or -ffinite-math-only, and a
 * branch stops a loop from vectorising. Both arms are always computed. No
 * -ffast-math and no FMA contraction: every copy computes the same bits.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#ifndef EG_VMATH_NAME
#define EG_VMATH_NAME(name) eg_vm_##name
#define EG_VMATH_DEFAULT_NAME_
#endif

/* c ? a : b without a branch. */
static inline float EG_VMATH_NAME(select)(int c, float a, float b)
{
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    const int32_t m = -(int32_t)(c != 0);
    const int32_t r = (ia & m) | (ib & ~m);
    float f;
    memcpy(&f, &r, sizeof f);
    return f;
}

/* q(r) = 1 + r/2 + r^2/6 + ... + r^6/7!, so that e^r ~ 1 + r q(r) (degree 7)
 * and e^r - 1 ~ r q(r) without cancellation. */
static inline float EG_VMATH_NAME(taylor_exp_q)(float r)
{
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    return p * r + 1.0f;
}

/* e^x for x already in [-87, 88] (normal, finite results). Range reduction
 * x = n ln2 + r, |r| <= ln2/2 (ln2 split in two for exactness), the
 * degree-7 Taylor polynomial of e^r (truncation error < 6e-9 relative) and
 * 2^n put in the exponent bits: about 1 float ulp in all. */
static inline float EG_VMATH_NAME(exp_reduced)(float x)
{
    const float shifter = 12582912.0f; /* 1.5 * 2^23: adding it rounds to integer */
    float n = (x * 1.44269504088896341f + shifter) - shifter;
    float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
    float p = EG_VMATH_NAME(taylor_exp_q)(r) * r + 1.0f;
    uint32_t e = (uint32_t)((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &e, sizeof scale);
    return p * scale;
}

/* e^x, inputs clamped to [-87, 88]. The comparisons are written so that
 * NaN also lands inside the range: the integer conversion in exp_reduced
 * must never see NaN or a huge value (NaN gives e^-87 ~ 0, not NaN; callers
 * either refuse NaN inputs or multiply the result by x again). */
static inline float EG_VMATH_NAME(exp)(float x)
{
    x = EG_VMATH_NAME(select)(x >= -87.0f, x, -87.0f);
    x = EG_VMATH_NAME(select)(x <= 88.0f, x, 88.0f);
    return EG_VMATH_NAME(exp_reduced)(x);
}

/* e^x for x <= 0 (inputs below -87 give ~0 rather than denormals, positive
 * ones and NaN are clamped like in exp). */
static inline float EG_VMATH_NAME(exp_nonpos)(float x)
{
    x = EG_VMATH_NAME(select)(x >= -87.0f, x, -87.0f);
    x = EG_VMATH_NAME(select)(x <= 0.0f, x, 0.0f);
    return EG_VMATH_NAME(exp_reduced)(x);
}

/* e^x - 1 for x <= 0 (positive inputs and NaN are treated as 0), without the
 * cancellation of exp(x) - 1 near 0: x q(x), the degree-7 Taylor polynomial,
 * for x > -0.3 (truncation < 0.3^7/8! ~ 5e-8 relative), exp(x) - 1 below
 * (there 1 - e^x >= 0.26, so exp's ~1 ulp stays ~2 ulp). Both are computed. */
static inline float EG_VMATH_NAME(expm1_nonpos)(float x)
{
    x = EG_VMATH_NAME(select)(x <= 0.0f, x, 0.0f);
    float far = EG_VMATH_NAME(exp_nonpos)(x) - 1.0f;
    return EG_VMATH_NAME(select)(x > -0.3f, EG_VMATH_NAME(taylor_exp_q)(x) * x, far);
}

/* 1 / (1 + e^-x). */
static inline float EG_VMATH_NAME(sigmoid)(float x)
{
    return 1.0f / (1.0f + EG_VMATH_NAME(exp)(-x));
}

/* erfc(a) for a >= 0 with the Chebyshev-fitted formula of Numerical Recipes:
 * erfc(a) = t exp(-a^2 + P(t)), t = 1 / (1 + a/2); fractional error
 * < 1.2e-7 everywhere. a is clamped at 10 (erfc(10) ~ 2e-45 is 0 in float
 * anyway). */
static inline float EG_VMATH_NAME(erfc_nonneg)(float a)
{
    float ac = EG_VMATH_NAME(select)(a > 10.0f, 10.0f, a);
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
    return t * EG_VMATH_NAME(exp_nonpos)(p - ac * ac);
}

/* erf(z). |z| < 1: the Maclaurin series (terms through z^23, truncation
 * < 2e-9). |z| >= 1: erf = 1 - erfc (erfc < 0.16 there, so its 1.2e-7
 * relative error is < 2e-8 absolute). Both branches are computed and one
 * selected, so there is no branch in a loop. */
static inline float EG_VMATH_NAME(erf)(float z)
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
    float big = 1.0f - EG_VMATH_NAME(erfc_nonneg)(a);
    float r = EG_VMATH_NAME(select)(a < 1.0f, small, big);
    return EG_VMATH_NAME(select)(z < 0.0f, -r, r);
}

/* Phi(x), the standard normal cdf, as erfc(|x| / sqrt 2) / 2 on both sides
 * of 0 (1 - that for x >= 0): one branch-free path. Absolute error < 6e-8
 * (half of erfc's 1.2e-7 relative error). */
static inline float EG_VMATH_NAME(normal_cdf)(float x)
{
    float half_erfc = 0.5f * EG_VMATH_NAME(erfc_nonneg)(fabsf(x) * 0.707106781186547524f);
    return EG_VMATH_NAME(select)(x >= 0.0f, 1.0f - half_erfc, half_erfc);
}

/* phi(x), the standard normal pdf. */
static inline float EG_VMATH_NAME(normal_pdf)(float x)
{
    return 0.39894228040143268f * EG_VMATH_NAME(exp_nonpos)(-0.5f * x * x);
}

/* The exact (erf) GELU, x Phi(x); absolute error < 6e-8 |x|. */
static inline float EG_VMATH_NAME(gelu)(float x)
{
    return x * EG_VMATH_NAME(normal_cdf)(x);
}

#ifndef EG_VM_LANES
#define EG_VM_LANES 16 /* partial results of the reductions below */
#endif

/* Softmax numerators of one row of attention scores: s (np) holds n >= 1
 * scores, then padding up to np, a multiple of EG_VM_LANES. Afterwards
 * s[j] = e^(s[j] - max) for j < n and 0 for the padding; returns 1 / sum,
 * by which the caller scales (after the probabilities times V, say). The
 * maximum and the sum run in EG_VM_LANES fixed lanes combined in lane order,
 * so they vectorise and every instruction-set copy gives the same bits; the
 * exponentials are exp_nonpos (about 1 ulp). A causal row is the same call
 * with n = its position + 1. */
static inline float EG_VMATH_NAME(softmax_lanes)(float *s, size_t n, size_t np)
{
    for (size_t j = n; j < np; j++) {
        s[j] = -INFINITY;
    }
    float mx[EG_VM_LANES];
    for (int l = 0; l < EG_VM_LANES; l++) {
        mx[l] = -INFINITY;
    }
    for (size_t j = 0; j < np; j += EG_VM_LANES) {
        for (int l = 0; l < EG_VM_LANES; l++) {
            mx[l] = s[j + l] > mx[l] ? s[j + l] : mx[l];
        }
    }
    float m = -INFINITY;
    for (int l = 0; l < EG_VM_LANES; l++) {
        m = mx[l] > m ? mx[l] : m;
    }
    for (size_t j = 0; j < np; j++) {
        s[j] = EG_VMATH_NAME(exp_nonpos)(s[j] - m);
    }
    for (size_t j = n; j < np; j++) {
        s[j] = 0.0f; /* exp of -inf - m is ~0 but not exactly: force it */
    }
    float sp[EG_VM_LANES] = {0};
    for (size_t j = 0; j < np; j += EG_VM_LANES) {
        for (int l = 0; l < EG_VM_LANES; l++) {
            sp[l] += s[j + l];
        }
    }
    float sum = 0.0f;
    for (int l = 0; l < EG_VM_LANES; l++) {
        sum += sp[l];
    }
    return 1.0f / sum;
}

#ifdef EG_VMATH_DEFAULT_NAME_
#undef EG_VMATH_NAME
#undef EG_VMATH_DEFAULT_NAME_
#endif

#ifndef EG_VMATH_SOFTMAX_
#define EG_VMATH_SOFTMAX_
/* p (n) = softmax(x (n)), n >= 1; returns logsumexp(x) = max + log(sum).
 * The exponentials and the sum are in double (rows are short: router
 * logits, class scores), so p is within one float rounding of the exact
 * value; used by the routers (csrc/gmoe/router.c) and the cross-entropy
 * (csrc/ops/loss.c). */
static inline double eg_softmax_row(float *p, const float *x, int n)
{
    float mx = x[0];
    for (int j = 1; j < n; j++) {
        mx = x[j] > mx ? x[j] : mx;
    }
    double sum = 0.0;
    for (int j = 0; j < n; j++) {
        sum += exp((double)x[j] - (double)mx);
    }
    for (int j = 0; j < n; j++) {
        p[j] = (float)(exp((double)x[j] - (double)mx) / sum);
    }
    return (double)mx + log(sum);
}
#endif
