/*
 * vmath_isa_body.h — test_vmath.c's loops over csrc/include/eg_vmath.h,
 * compiled once per instruction set through eg_isa.h (SFX gives each copy
 * its suffix), exactly as the BERT and MoE kernels include the header.
 */
#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

/* out (VM_FUNCS, n): every element-wise function of the header over x. */
static void SFX(vm_rows)(float *out, const float *x, size_t n)
{
    float *o = out;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_exp)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_expm1_nonpos)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_sigmoid)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_erf)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_normal_cdf)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_normal_pdf)(x[i]);
    }
    o += n;
    for (size_t i = 0; i < n; i++) {
        o[i] = SFX(vm_gelu)(x[i]);
    }
}

static float SFX(vm_softmax)(float *s, size_t n, size_t np)
{
    return SFX(vm_softmax_lanes)(s, n, np);
}
