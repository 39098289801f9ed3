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

/* ad (n) = silu(g) * u (SwiGLU, u != NULL) or GELU(g) (u == NULL). */
static void SFX(act_forward_row)(float *restrict ad, const float *restrict g,
                                 const float *restrict u, int n)
{
    if (u != NULL) {
        for (int i = 0; i < n; i++) {
            float sg = SFX(vm_sigmoid)(g[i]);
            ad[i] = g[i] * sg * u[i];
        }
    } else {
        for (int i = 0; i < n; i++) {
            ad[i] = SFX(vm_gelu)(g[i]);
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
        float sg = SFX(vm_sigmoid)(gi);
        float si = gi * sg;
        a = si * u[i];
        dg[i] = da * u[i] * sg * (1.0f + gi * (1.0f - sg));
        du[i] = da * si;
    } else {
        float cdf = SFX(vm_normal_cdf)(gi);
        a = gi * cdf;
        dg[i] = da * (cdf + gi * SFX(vm_normal_pdf)(gi));
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
