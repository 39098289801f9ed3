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

static void SFX(add_row)(float *acc, const float *x, int C)
{
    for (int i = 0; i < C; i++) {
        acc[i] += x[i];
    }
}

