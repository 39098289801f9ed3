/*
 * llama_train_internal.h — what llama_train.c (the LoRA passes) and
 * llama_moe.c (the MoE-LoRA FFN of GMoE / MixLoRA) share: the trainer
 * struct and the MoE layer's forward/backward. Private to csrc/models.
 */
#ifndef EG_LLAMA_TRAIN_INTERNAL_H
#define EG_LLAMA_TRAIN_INTERNAL_H

#include "eg_bert.h"
#include "eg_llama_train.h"

/* MoE state of a trainer (eg_llama_lora_set_moe). */
typedef struct {
    eg_llama_moe_config c;
    size_t *off;        /* (L * EG_MOE_NPART) parameter offsets */
    size_t *size;       /* (EG_MOE_NPART) part sizes (the same in every layer) */
    float *features;    /* (L, N, D) */
    float *adjacency;   /* (L, N+1, N+1) */
    double *running;    /* (L, N) */
    int64_t *counts;    /* (L, N) last step */
    double *aux;        /* (L, EG_AUX_N) last step */
    double *entropy;    /* (L) last step */
    float aux_scale;
    /* the last step's routing per layer (arena memory) */
    const float **last_probs;
    const int32_t **last_idx;
    size_t last_n;
} eg_llama_moe;

struct eg_llama_lora {
    const eg_llama *m;
    eg_llama_config c;
    eg_lora_config lc;
    eg_qmat head;
    int head_set;
    size_t n_params;
    float *params, *grads;
    size_t *off;       /* (L * NMOD) offsets of A; B follows at + rank * in */
    eg_bert_state s;   /* validation, offsets, embeddings */
    eg_arena arena;
    double prof[EG_LORA_PROF_N];
    double prof_t0;
    int recompute;
    eg_llama_moe *moe; /* NULL: plain LoRA on the FFN */
    int (*poll)(void *ctx);   /* eg_llama_lora_set_poll; NULL: never interrupted */
    void *poll_ctx;
};

/* What one layer's MoE FFN saves for backward. probs..c are per layer;
 * Hl, Zt, Z may be shared by all layers (recomputation). */
typedef struct {
    float *probs, *lse, *w;   /* (n, N), (n), (n, K) */
    int32_t *idx;             /* (n, K) */
    int32_t *perm_p;          /* (n, N) Poisson sort permutation */
    int32_t *perm_n;          /* (N) Normal sort permutation */
    double *c;                /* (N) Normal counts */
    int64_t *counts;          /* (N) balance-loss counts */
    float *Hl;                /* (3, n K, r) */
    float *Zt, *Z;            /* graph router: (n, g), (gcn_layers, n, N+1, g) */
} eg_moe_saved;

/* Allocate layer l's saved tensors for n tokens from arena a (the
 * trainer's, or the encoder state's for eg_llama_attach_moe's hook);
 * shared: Hl, Zt, Z come from `share` instead, when not NULL. */
eg_status eg_moe_saved_alloc(const eg_llama_lora *t, eg_arena *a, eg_moe_saved *ms,
                             const eg_moe_saved *share, size_t n, eg_err *err);

/* Layer l's MoE FFN forward on x (n, D) = ffn_norm(h), given G0 = x W1^T
 * and U0 = x W3^T (n, F each, row stride F): routing into ms, abar (n, F)
 * = sum_j w_j a_j and ylora (n, D) = the experts' LoRA output terms, so the
 * FFN output is abar W2^T + ylora. logits: (n, N) scratch. losses != 0: the
 * aux losses and statistics are computed (not in a recomputation), and
 * training != 0 also updates the Normal running counts. */
eg_status eg_moe_layer_forward(eg_llama_lora *t, int l, eg_moe_saved *ms, float *abar,
                               float *ylora, float *logits, const float *x, const float *G0,
                               const float *U0, size_t n, float p, uint64_t seed, int losses,
                               int training, eg_err *err);
/* Its backward: dy (n, D) = dL/d(FFN output), dab = dy W2 (n, F). dx (n, D)
 * ASSIGNED the gradient through the experts' LoRA paths and the router;
 * dG0, dU0 (n, F) assigned (the caller adds dG0 W1 + dU0 W3 to dx). dw (n K),
 * dprobs and dlogits (n N) are scratch. Parameter gradients accumulate. */
eg_status eg_moe_layer_backward(eg_llama_lora *t, int l, const eg_moe_saved *ms, float *dx,
                                float *dG0, float *dU0, float *dw, float *dprobs, float *dlogits,
                                const float *dy, const float *dab, const float *x,
                                const float *G0, const float *U0, size_t n, float p,
                                uint64_t seed, eg_err *err);

void eg_llama_moe_free(eg_llama_moe *mo);

#endif
