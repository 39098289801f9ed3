/*
 * moe_act_simd.h — the element-wise activation rows of the MoE-LoRA FFN,
 * included by moe_act.c once per instruction set through eg_isa.h (SFX
 * gives each copy its suffix). The dot product of the backward row runs in
 * LANES fixed partial sums, so every copy adds in the same order and gives
 * the same bits.
 */
#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

/* The exp of eg_vmath.h clamps its argument to [-87, 88], so sigmoid(g) for
 * g < -87 and the normal cdf/pdf for |g| > ~13.2 bottom out near 1e-38
 * instead of going to 0. Harmless alone, but the MoE FFN multiplies by the
 * up projection: silu(-1e20) * 1e20 gave -60 and silu(-1e30) * 1e30 gave
 * -6e21 (exactly: 0). Beyond these bounds |silu(g)| < 1.5e-36, |GELU(g)| <
 * 1e-37 and |g phi(g)| < 1e-36, so 0 (and Phi = 0 or 1) is right to float
 * precision whatever the up projection or the incoming gradient. */
#define MOE_SIGMOID_ZERO_BELOW (-87.0f)
#define MOE_NORMAL_TAIL (13.0f)

/* sigmoid(g), exactly 0 below MOE_SIGMOID_ZERO_BELOW. */
static inline float SFX(moe_sigmoid)(float g)
{
    return SFX(vm_select)(g < MOE_SIGMOID_ZERO_BELOW, 0.0f, SFX(vm_sigmoid)(g));
}

/* GELU(g) = g Phi(g), exactly 0 below -MOE_NORMAL_TAIL. */
static inline float SFX(moe_gelu)(float g)
{
    return SFX(vm_select)(g < -MOE_NORMAL_TAIL, 0.0f, SFX(vm_gelu)(g));
}

/* ad (n) = silu(g) * u (SwiGLU, u != NULL) or GELU(g) (u == NULL). */
static void SFX(act_forward_row)(float *restrict ad, const float *restrict g,
                                 const float *restrict u, int n)
{
    if (u != NULL) {
        for (int i = 0; i < n; i++) {
            float sg = SFX(moe_sigmoid)(g[i]);
            ad[i] = g[i] * sg * u[i];
        }
    } else {
        for (int i = 0; i < n; i++) {
            ad[i] = SFX(moe_gelu)(g[i]);
        }
    }
}

/* One element of the backward row; returns a = act(g) (before the mask). */
static inline __attribute__((always_inline)) float SFX(act_backward_one)(
    float *restrict dg, float *restrict du, float *restrict ad, const float *restrict g,
    const float *restrict u, const float *restrict dat, const float *restrict back,
    const float *restrict mk, float wj, int i)
{
    float gi = g[i];
    float da = wj * dat[i] + back[i] * mk[i];
    float a;
    if (u != NULL) {
        float sg = SFX(moe_sigmoid)(gi);
        float si = gi * sg;
        a = si * u[i];
        dg[i] = da * u[i] * sg * (1.0f + gi * (1.0f - sg));
        du[i] = da * si;
    } else {
        /* GELU' = Phi(g) + g phi(g): 0 below the tail, 1 above it */
        const int tail = fabsf(gi) > MOE_NORMAL_TAIL;
        float cdf = SFX(vm_normal_cdf)(gi);
        cdf = SFX(vm_select)(tail, SFX(vm_select)(gi > 0.0f, 1.0f, 0.0f), cdf);
        float gp = SFX(vm_select)(tail, 0.0f, gi * SFX(vm_normal_pdf)(gi));
        a = gi * cdf;
        dg[i] = da * (cdf + gp);
    }
    ad[i] = a * mk[i];
    return a;
}

/* Backward of one slot's activation over the intermediate dimension:
 * da = wj dat + back * mk; SwiGLU (u != NULL): dg = da u silu'(g),
 * du = da silu(g); GELU: dg = da GELU'(g). ad = act(g) * mk (saved for the
 * A2 reduction). Returns dat . act(g). */
static float SFX(act_backward_row)(float *restrict dg, float *restrict du, float *restrict ad,
                                   const float *restrict g, const float *restrict u,
                                   const float *restrict dat, const float *restrict back,
                                   const float *restrict mk, float wj, int n)
{
    /* In chunks: one contiguous element-wise pass that also keeps act(g),
     * then the dot product in fixed lanes (element j into part[j % LANES],
     * chunks being LANES multiples). One fused loop would make gcc
     * vectorise across lane blocks with scatter stores, which is slower. */
    enum { CHUNK = 16 * LANES };
    float part[LANES] = {0};
    float abuf[CHUNK];
    for (int c0 = 0; c0 < n; c0 += CHUNK) {
        const int m = n - c0 < CHUNK ? n - c0 : CHUNK;
        float *dgc = dg + c0, *adc = ad + c0;
        const float *gc = g + c0, *datc = dat + c0, *backc = back + c0, *mkc = mk + c0;
        if (u != NULL) {
            float *duc = du + c0;
            const float *uc = u + c0;
            for (int i = 0; i < m; i++) {
                abuf[i] = SFX(act_backward_one)(dgc, duc, adc, gc, uc, datc, backc, mkc, wj, i);
            }
        } else {
            for (int i = 0; i < m; i++) {
                abuf[i] = SFX(act_backward_one)(dgc, NULL, adc, gc, NULL, datc, backc, mkc, wj, i);
            }
        }
        int i = 0;
        for (; i + LANES <= m; i += LANES) {
            for (int l = 0; l < LANES; l++) {
                part[l] += datc[i + l] * abuf[i + l];
            }
        }
        for (int l = 0; i + l < m; l++) {
            part[l] += datc[i + l] * abuf[i + l];
        }
    }
    float dot = 0.0f;
    for (int l = 0; l < LANES; l++) {
        dot += part[l];
    }
    return dot;
}
