/*
 * moe_act.h — the MoE-LoRA FFN's activation rows (moe_act.c), compiled once
 * per instruction set and picked at run time like the BERT kernels. Private
 * to csrc/gmoe.
 */
#ifndef EG_MOE_ACT_H
#define EG_MOE_ACT_H

typedef struct {
    /* ad (n) = silu(g) * u (SwiGLU, u != NULL) or GELU(g) (u == NULL) */
    void (*forward_row)(float *ad, const float *g, const float *u, int n);
    /* see moe_act_simd.h: writes dg, du (SwiGLU only), ad; returns dat . act(g) */
    float (*backward_row)(float *dg, float *du, float *ad, const float *g, const float *u,
                          const float *dat, const float *back, const float *mk, float wj, int n);
} eg_moe_act_kernels;

/* The copy for this CPU (cheap: ask once per call). */
const eg_moe_act_kernels *eg_moe_act(void);
/* A given copy (0 baseline, 1 AVX2, 2 AVX-512; see eg_isa_level), or NULL
 * if this build has none; for tests (the CPU must support it to run it). */
const eg_moe_act_kernels *eg_moe_act_copy(int level);

#endif
