/*
 * eg_llama_train.h — fine-tuning a Llama-family decoder (eg_llama.h) with
 * LoRA adapters over its frozen base weights, which stay in their stored
 * format (GGUF quantized blocks or f32/f16/bf16): the forward pass with
 * LoRA, the causal-LM cross-entropy over selected target positions, and the
 * backward pass to every LoRA parameter (QLoRA-style: the products with the
 * transposed frozen matrices read the stored blocks, eg_qmatmul_t).
 *
 * LoRA on module m of layer l (m in q, k, v, o, gate, up, down):
 *     y = x W^T (+ b) + (alpha_m / r_m) * drop(x) A^T B^T
 * A (r_m, in) Kaiming-uniform (a = sqrt 5: U(-1/sqrt(in), 1/sqrt(in))),
 * B (out, r_m) zero, as PEFT initialises them; rank 0 = no adapter. q and k
 * adapters act before RoPE (they are part of the projection).
 *
 * Parameters live in one float buffer (with a gradient buffer of the same
 * layout): layer by layer, module by module in the order above, A then B.
 * eg_llama_lora_slot gives each adapter's offsets. The caller runs the
 * optimiser over the buffers (eg_adamw_step).
 */
#ifndef EG_LLAMA_TRAIN_H
#define EG_LLAMA_TRAIN_H

#include "eg.h"
#include "eg_llama.h"
#include "eg_quant.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EG_LORA_Q = 0, EG_LORA_K, EG_LORA_V, EG_LORA_O, EG_LORA_GATE, EG_LORA_UP, EG_LORA_DOWN,
    EG_LORA_NMOD
};

typedef struct {
    int rank[EG_LORA_NMOD];     /* 0: no adapter on that module; else 1 .. 4096 */
    float alpha[EG_LORA_NMOD];  /* scale = alpha / rank */
    float dropout;              /* on the LoRA input, [0, 1); training steps only */
} eg_lora_config;

typedef struct eg_llama_lora eg_llama_lora;

/* LoRA adapters for the complete model m (borrowed: it must outlive the
 * adapters and not change). A is drawn from a splitmix64 stream seeded by
 * `seed`; B is zero. */
eg_status eg_llama_lora_create(eg_llama_lora **out, const eg_llama *m, const eg_lora_config *cfg,
                               uint64_t seed, eg_err *err);
void eg_llama_lora_free(eg_llama_lora *t);

/* An untied LM head (vocab, hidden) in ggml type `type`, borrowed like the
 * model's matrices. Without one the head is the token embedding (tied). */
eg_status eg_llama_lora_set_head(eg_llama_lora *t, int type, int64_t rows, int64_t cols,
                                 const void *data, eg_err *err);

size_t eg_llama_lora_num_params(const eg_llama_lora *t);
float *eg_llama_lora_params(eg_llama_lora *t);
float *eg_llama_lora_grads(eg_llama_lora *t);
/* Where the adapter of (layer, module) lives: offA, offB: float offsets
 * into the buffers; in, out: its input and output widths; rank (0: none,
 * offsets unset). */
void eg_llama_lora_slot(const eg_llama_lora *t, int layer, int module, size_t *offA, size_t *offB,
                        int *in, int *out, int *rank);

/* One pass over a packed batch (ids/offsets as eg_llama_embed). targets
 * (n_tok): the token each position must predict, or a negative value (-100)
 * for positions outside the loss (the caller shifts labels, within each
 * sequence). *nll_sum = sum over target positions of -log p(target);
 * token_nll (n_tok, may be NULL) receives each position's -log p (0 where
 * no target). backward != 0: dropout is applied and the gradients of
 * scale * nll_sum ACCUMULATE into the gradient buffer; dropout masks come
 * from `seed` (one stream per layer and module). EINVAL for a bad batch or
 * a target outside the vocabulary; ENOMEM for activations. */
eg_status eg_llama_lora_step(eg_llama_lora *t, const int32_t *ids, const int64_t *offsets,
                             int n_seq, const int32_t *targets, float scale, int backward,
                             uint64_t seed, double *nll_sum, float *token_nll, eg_err *err);

/* Interruption (Ctrl-C) inside a step: when poll is set, eg_llama_lora_step
 * calls poll(ctx) from its own thread, outside any parallel region, before
 * every layer of the forward and of the backward pass and before the loss
 * (so at most one layer's work after a request). A nonzero return abandons
 * the step: EG_EINTR, the gradient buffer holds partial sums (the caller
 * discards it), the parameters are untouched (eg_llama_lora_step never
 * writes them) and the MoE Normal running counts are put back to their
 * values before the step — as after any failed step. poll = NULL: off. */
void eg_llama_lora_set_poll(eg_llama_lora *t, int (*poll)(void *ctx), void *ctx);

/* Activation recomputation (on != 0): a training step saves only each
 * layer's input and runs the layer's forward again in backward (one more
 * forward pass of compute; activation memory ~ (hidden size) floats per
 * token and layer instead of ~ (4 hidden + 2 FFN + q|k|v) floats). The
 * gradients are the same bits: the recomputed forward is the same
 * arithmetic. Off by default. */
void eg_llama_lora_set_recompute(eg_llama_lora *t, int on);

/* Wall-clock seconds spent in each phase of eg_llama_lora_step, summed
 * over the calls since the last reset (reset != 0 zeroes them after the
 * copy): frozen products forward / backward (eg_qmatmul_prec, eg_qmatmul_t),
 * LoRA terms forward / backward, attention forward / backward, LM-head
 * cross-entropy (forward and backward), everything else (norms, RoPE,
 * SwiGLU, residuals, copies). */
enum {
    EG_LORA_PROF_FWD_BASE = 0, EG_LORA_PROF_FWD_LORA, EG_LORA_PROF_FWD_ATTN,
    EG_LORA_PROF_FWD_OTHER, EG_LORA_PROF_HEAD, EG_LORA_PROF_BWD_BASE, EG_LORA_PROF_BWD_LORA,
    EG_LORA_PROF_BWD_ATTN, EG_LORA_PROF_BWD_OTHER, EG_LORA_PROF_N
};
void eg_llama_lora_profile(eg_llama_lora *t, double out[EG_LORA_PROF_N], int reset);

/* ------------------------------------------------ MoE-LoRA FFN (GMoE, MixLoRA)
 *
 * eg_llama_lora_set_moe replaces the FFN's LoRA by a mixture of LoRA experts
 * in every layer (ALGORITHMS.md §B, MixLoRA style): the frozen gate/up/down
 * products are computed once per token (quantized, eg_qmatmul_prec); expert
 * e owns rank-r pairs on the three projections; a router on the FFN input
 * x = ffn_norm(h) picks the top-k experts; the layer's FFN output is
 * sum_j w_j (W2 a_j + s B2 A2 a_j), a_j = silu(W1 x + s B1 A1 x) * (W3 x +
 * s B3 A3 x), computed as W2 (sum_j w_j a_j) + LoRA terms (eg_moe_experts_*).
 * Routers: graph (GMoE: GCN over N expert nodes and the token node; Poisson
 * distinction + Normal balance losses), linear (MixLoRA: softmax top-k,
 * renormalised; load-balance loss) and switch (top-1, raw probability;
 * balance + z-loss). Semantics = engine_py.gmoe.MoELoRAFFN, per layer.
 *
 * The expert and router parameters follow the attention adapters in the
 * parameter buffer, layer by layer, part by part (eg_llama_moe_slot). The
 * graph router's expert features, normalised adjacency and the Normal loss's
 * running counts are buffers the caller fills (eg_llama_moe_buffers). The
 * step's loss gains aux_scale * sum over layers of coef * aux loss. */
enum { EG_ROUTER_GRAPH = 0, EG_ROUTER_LINEAR = 1, EG_ROUTER_SWITCH = 2 };

enum {
    EG_MOE_A0 = 0, EG_MOE_A1, EG_MOE_A2,  /* (E, r, in): gate, up, down */
    EG_MOE_B0, EG_MOE_B1, EG_MOE_B2,      /* (E, out, r) */
    EG_MOE_WG,                            /* linear/switch router (N, D) */
    EG_MOE_WS, EG_MOE_WT,                 /* graph: (g, D) each */
    EG_MOE_WL,                            /* graph: GCN weights (gcn_layers, g, g) */
    EG_MOE_PVEC,                          /* graph: expert projection (g), per expert (N, g) */
    EG_MOE_LAMBDA, EG_MOE_SIGMA,          /* graph: Poisson lambda, Normal sigma (1 each) */
    EG_MOE_NPART
};

/* The auxiliary losses reported per layer (eg_llama_moe_stats). */
enum { EG_AUX_POISSON = 0, EG_AUX_NORMAL, EG_AUX_BALANCE, EG_AUX_Z, EG_AUX_N };

typedef struct {
    int experts;      /* N, 1 .. 1024 */
    int top_k;        /* K, 1 .. N (switch: must be 1) */
    int rank;         /* r of every expert pair, 1 .. 64 */
    float alpha;      /* scale alpha / r */
    int router;       /* EG_ROUTER_* */
    int gcn_dim;      /* graph: g, 1 .. 4096 */
    int gcn_layers;   /* graph: 1 .. 16 */
    int loss_kl;      /* 0: the reference |log| form, 1: true KL terms */
    float coef[EG_AUX_N];  /* loss weights; finite, >= 0. The graph router adds Poisson and
                            * Normal, and the load balance only when its weight is nonzero
                            * (engine_py's option; the GMoE reference has none); linear and
                            * switch add the balance, switch also z */
    double running_decay;  /* Normal loss: c = decay * running + batch; running <- c (1: reference) */
    int normal_weights;    /* Normal count per routed slot: 0 the top-k softmax probabilities
                            * (official GMoE code), 1 the renormalised top-k weights */
    int per_expert_readout;/* graph: 0 one g -> 1 projection (paper), 1 one per expert (N, g) */
} eg_llama_moe_config;

/* Switch t to MoE mode. The FFN modules (gate, up, down) must have no plain
 * LoRA (rank 0). Existing attention-adapter values are kept; the new
 * parameters are zero (the caller initialises them, e.g. from Python). */
eg_status eg_llama_lora_set_moe(eg_llama_lora *t, const eg_llama_moe_config *mc, eg_err *err);
/* NULL unless set. */
const eg_llama_moe_config *eg_llama_lora_moe(const eg_llama_lora *t);
/* Offset (floats into the parameter/gradient buffers) and size of part
 * `part` of layer `layer`; size 0 for parts the router does not have. */
void eg_llama_moe_slot(const eg_llama_lora *t, int layer, int part, size_t *off, size_t *size);
/* The caller-filled buffers, layer-major: features (L, N, D) float,
 * adjacency (L, N+1, N+1) float (D^-1/2 (A+I) D^-1/2), running (L, N) double.
 * features/adjacency are used by the graph router only. */
void eg_llama_moe_buffers(eg_llama_lora *t, float **features, float **adjacency, double **running);
/* Weight of the auxiliary losses in the next steps (gradient accumulation:
 * 1 / the number of micro-batches). Default 1. */
void eg_llama_moe_set_aux_scale(eg_llama_lora *t, float s);
/* Statistics of the last step, layer-major: counts (L, N) routed slots per
 * expert, aux (L, EG_AUX_N) unweighted aux losses (0 where the router has
 * none), entropy (L) mean router entropy in nats. Any may be NULL. */
void eg_llama_moe_stats(const eg_llama_lora *t, int64_t *counts, double *aux, double *entropy);
/* The last step's routing of layer l: probs (n_tok, N) and idx (n_tok, K),
 * borrowed, valid until the next step; *n_tok = 0 before any step. */
void eg_llama_moe_routes(const eg_llama_lora *t, int layer, const float **probs,
                         const int32_t **idx, size_t *n_tok);

/* Route t's model's layer-by-layer forward (eg_llama_run_layers: the
 * encoder, layer caches, live early exit) through t's experts: a copy of
 * t's expert and router parameters and router buffers (t's attention
 * adapters are not used: merge them into the weights first) becomes m's
 * FFN hook (eg_llama_set_ffn_hook), owned by m. Per token the router picks
 * the top-k experts as the trainer's forward-only passes do (no dropout, no
 * dense fallback, the running counts not moved). t must be a MoE trainer
 * of m; non-finite parameters or buffers are EINVAL; ESTATE when m already
 * has a hook. t may be freed afterwards. */
eg_status eg_llama_attach_moe(eg_llama *m, const eg_llama_lora *t, eg_err *err);

/* Cross-entropy of an LM head over n rows, in chunks (the full n x vocab
 * logits never exist): x (n, D), W (V, D), target (n) in [0, V). *nll_sum
 * (double); nll (n) per row, may be NULL; dx (n, D) ASSIGNED the gradient of
 * scale * sum nll, may be NULL (forward only). EG_OK or EG_ENOMEM. */
eg_status eg_lmhead_ce(double *nll_sum, float *nll, float *dx, const float *x,
                       const int32_t *target, size_t n, const eg_qmat *W, float scale,
                       eg_err *err);

#ifdef __cplusplus
}
#endif
#endif /* EG_LLAMA_TRAIN_H */
