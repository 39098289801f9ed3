/*
 * moe_act.c — the MoE-LoRA FFN's element-wise activation rows (SwiGLU and
 * exact GELU, forward and backward; moe_act_simd.h) in one copy per
 * instruction set (eg_isa.h), the same scheme as the BERT kernels: the
 * exp/erfc of eg_vmath.h are a few dozen operations per element, which
 * AVX-512 does 16 at a time where the baseline build does 4. Every copy
 * computes the same bits (eg_isa.h).
 */
#include "moe_act.h"

#include "eg_isa.h"

#include <stddef.h>
#include <stdint.h>

#define LANES 16

#define EG_ISA_BODY "../gmoe/moe_act_simd.h"
#include "eg_isa.h"

#define ACT_SET(sfx) {EG_CAT2(act_forward_row, sfx), EG_CAT2(act_backward_row, sfx)}

static const eg_moe_act_kernels k_base = ACT_SET(_base);
#ifdef EG_X86_CLONES
static const eg_moe_act_kernels k_avx2 = ACT_SET(_avx2);
static const eg_moe_act_kernels k_avx512 = ACT_SET(_avx512);
#endif

const eg_moe_act_kernels *eg_moe_act_copy(int level)
{
    switch (level) {
    case 0: return &k_base;
#ifdef EG_X86_CLONES
    case 1: return &k_avx2;
    case 2: return &k_avx512;
#endif
    default: return NULL;
    }
}

const eg_moe_act_kernels *eg_moe_act(void)
{
    return eg_moe_act_copy(eg_isa_level());
}
