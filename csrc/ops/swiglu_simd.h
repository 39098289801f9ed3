/*
 * swiglu_simd.h — the body of the SwiGLU kernels, included by swiglu.c once
 * per instruction set through eg_isa.h. Not a public header.
 */
#define EG_VMATH_NAME(name) SFX(vm_##name)
#include "eg_vmath.h"
#undef EG_VMATH_NAME

/* out (n) = silu(gate) * up = gate * sigmoid(gate) * up (SwiGLU). */
static void SFX(swiglu_row)(float *out, const float *gate, const float *up, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float g = gate[i];
        out[i] = (g * SFX(vm_sigmoid)(g)) * up[i];
    }
}
