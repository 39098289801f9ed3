/*
 * vmath_isa_body.h — test_vmath.c's loops over csrc/include/eg_vmath.h,
 * compiled once per instruction set through eg_isa.h (SFX gives each copy
 * its suffix), exactly as the BERT and MoE kernels include the header.
 */
#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

/* out (VM_FUNCS, n): every element-wise function of the header over x, in
 * one loop that gcc vectorises like the kernels' loops. */
static void SFX(vm_rows)(float *restrict out, const float *restrict x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        out[i] = SFX(vm_exp)(x[i]);
        out[n + i] = SFX(vm_expm1_nonpos)(x[i]);
        out[2 * n + i] = SFX(vm_sigmoid)(x[i]);
        out[3 * n + i] = SFX(vm_erf)(x[i]);
        out[4 * n + i] = SFX(vm_normal_cdf)(x[i]);
        out[5 * n + i] = SFX(vm_normal_pdf)(x[i]);
        out[6 * n + i] = SFX(vm_gelu)(x[i]);
    }
}

static float SFX(vm_softmax)(float *s, size_t n, size_t np)
{
    return SFX(vm_softmax_lanes)(s, n, np);
}
