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

static const eg_moe_act_kernels copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(ACT_SET);

const eg_moe_act_kernels *eg_moe_act_copy(int level)
{
    return level >= 0 && level < EG_ISA_NCOPIES ? &copies[level] : NULL;
}

const eg_moe_act_kernels *eg_moe_act(void)
{
    return &copies[eg_isa_level()];
}
