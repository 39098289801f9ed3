/*
 * eg_llama.h — decoder-only transformers of the Llama family (arch `llama`:
 * Llama 2/3, SmolLM2; arch `qwen2`: Qwen2/2.5) used as encoders: the
 * hidden states of every layer for a batch of texts, fp32 activations, with
 * the weight matrices kept in their file's format (GGUF quantized blocks,
 * or f32/f16/bf16 from safetensors) and read in place (eg_qmatmul).
 *
 * One layer (pre-norm), on a packed state of n tokens:
 *     x   = RMSNorm(h) * attn_norm
 *     q,k,v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv    (biases: qwen2)
 *     q,k = RoPE(q, k) at each token's position in its own text
 *     h  += causal_attention(q, k, v) Wo^T             (grouped-query)
 *     x   = RMSNorm(h) * ffn_norm
 *     h  += (silu(x Wg^T) * (x Wu^T)) Wd^T             (SwiGLU)
 * Hidden state 0 is the token embeddings; state l the residual stream
 * after layer l; the last state (num_layers) is the final RMSNorm of the
 * last layer's output, as transformers' output_hidden_states reports it.
 *
 * Texts are packed with no padding (eg_bert_state, shared with the BERT
 * encoder: packed rows plus offsets); attention runs per (text, head) at
 * the text's own length, so texts never see each other. The state can be
 * stepped and compacted exactly like a BERT state (early exit), with
 * eg_bert_pool / eg_bert_compact.
 *
 * Weights are addressed by their GGUF names ("token_embd.weight",
 * "blk.3.attn_q.weight", ...); engine_py maps Hugging Face names onto them.
 * Matrices are borrowed: the model keeps a pointer to the caller's bytes
 * (an mmap'd file), which must outlive it. Vectors (norms, biases) are
 * copied as float32.
 */
#ifndef EG_LLAMA_H
#define EG_LLAMA_H

#include "eg.h"
#include "eg_bert.h"
#include "eg_quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int vocab_size;
    int hidden_size;          /* D */
    int num_layers;
    int num_heads;            /* query heads */
    int num_kv_heads;         /* key/value heads; divides num_heads */
    int head_dim;             /* even */
    int intermediate_size;    /* F */
    int max_position;         /* context length: longest text accepted */
    float rms_norm_eps;
    double rope_theta;
    int rope_mode;            /* EG_ROPE_NORM (GGUF llama) or EG_ROPE_NEOX */
    int qkv_bias;             /* 1: q/k/v projections have biases (qwen2) */
    int precision;            /* EG_PREC_F32 (0, exact weights), EG_PREC_BF16 or EG_PREC_INT8
                                 (eg_bf16.h): the products' precision */
} eg_llama_config;

typedef struct eg_llama eg_llama;

/* Validate cfg and allocate a model with no weights set. */
eg_status eg_llama_create(eg_llama **out, const eg_llama_config *cfg, eg_err *err);
void eg_llama_free(eg_llama *m);
const eg_llama_config *eg_llama_get_config(const eg_llama *m);

/* The weights the model needs, in a fixed order, with their shapes in
 * PyTorch order ((out, in) for matrices; ndim 1 for vectors). */
size_t eg_llama_num_weights(const eg_llama *m);
void eg_llama_weight_info(const eg_llama *m, size_t i, const char **name, int *ndim,
                          int64_t shape[2]);

/* Give weight `name` its data: `type` an eg_ggml_type, shape as in
 * eg_llama_weight_info (EINVAL naming the tensor on a mismatch, an unknown
 * name, or a type the product cannot read). Matrices keep `data` by
 * reference; vectors must be F32, F16 or BF16 and are copied. */
eg_status eg_llama_set_weight(eg_llama *m, const char *name, int type, int ndim,
                              const int64_t *shape, const void *data, eg_err *err);
/* EG_OK when every weight was set; EINVAL naming the first missing one. */
eg_status eg_llama_check_complete(const eg_llama *m, eg_err *err);

/* As eg_bert_embed: fill s with hidden state 0 (token embeddings). Texts
 * longer than max_position are EINVAL. */
eg_status eg_llama_embed(const eg_llama *m, eg_bert_state *s, const int32_t *ids,
                         const int64_t *offsets, int n_seq, eg_err *err);
/* As eg_bert_run_layers: advance s to hidden state `last`. */
eg_status eg_llama_run_layers(const eg_llama *m, eg_bert_state *s, int last, eg_err *err);

/* An FFN hook for the layer-by-layer forward (inference): a fine-tuned
 * FFN whose output is, per token, abar W2^T + ylora over the model's frozen
 * down matrix W2, given x = ffn_norm(h), G0 = x W1^T and U0 = x W3^T (the
 * frozen gate and up products, which eg_llama_run_layers computes in the
 * model's precision). GMoE / MixLoRA experts (eg_llama_attach_moe in
 * eg_llama_train.h) are the one user: routing and expert terms stay in the
 * MoE code, the frozen products in llama.c.
 *   prepare: called once per eg_llama_run_layers call, before any layer,
 *     to take the scratch for up to `rows` tokens from `a` (reset by the
 *     caller between calls); *scratch is handed to every forward of that call.
 *   forward: layer `layer`, n <= rows tokens: abar (n, F) and ylora (n, D)
 *     ASSIGNED; G0, U0 (n, F) row stride F. Must not keep pointers.
 *   free: releases ctx (eg_llama_free, or when the hook is replaced). */
typedef struct {
    void *ctx;
    eg_status (*prepare)(void *ctx, eg_arena *a, size_t rows, void **scratch, eg_err *err);
    eg_status (*forward)(void *ctx, void *scratch, int layer, float *abar, float *ylora,
                         const float *x, const float *G0, const float *U0, size_t n,
                         eg_err *err);
    void (*free)(void *ctx);
} eg_llama_ffn_hook;
/* Install h (copied; the model owns h->ctx from now on, also on failure).
 * ESTATE when the model already has a hook: one fine-tuned FFN per model. */
eg_status eg_llama_set_ffn_hook(eg_llama *m, const eg_llama_ffn_hook *h, eg_err *err);
/* Nonzero when a hook is installed. */
int eg_llama_has_ffn_hook(const eg_llama *m);

/* Last-token pooling: out (n_seq, D) row i = the last row of sequence i. */
void eg_state_pool_last(const eg_bert_state *s, float *out);

/* Read-only views of a complete model's weights, for the fine-tuning
 * passes (eg_llama_train.h); bq/bk/bv are NULL without qkv biases. */
typedef struct {
    const float *attn_norm, *ffn_norm, *bq, *bk, *bv;
    const eg_qmat *q, *k, *v, *o, *gate, *up, *down;
} eg_llama_layer_weights;
void eg_llama_get_layer(const eg_llama *m, int layer, eg_llama_layer_weights *out);
const eg_qmat *eg_llama_embedding(const eg_llama *m);
const float *eg_llama_output_norm(const eg_llama *m);

/* FLOPs of running every layer on texts of these lengths (products of the
 * projections and the attention; multiply-adds count 2). */
double eg_llama_flops(const eg_llama_config *cfg, const int64_t *lengths, int n_seq);

#ifdef __cplusplus
}
#endif
#endif /* EG_LLAMA_H */
