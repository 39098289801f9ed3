/*
 * eg_bert.h — BERT-family encoder (BERT, MiniLM and other models of the same
 * shape): post-LayerNorm transformer layers, absolute position embeddings,
 * exact-erf GELU, fp32 inference.
 *
 * No padding anywhere. The tokens of all sequences in a batch are packed into
 * one (total_tokens, hidden) matrix: every GEMM (fused QKV, attention output,
 * FFN in and out) runs on exactly the real tokens, and attention runs per
 * (sequence, head) at that sequence's own length. Because nothing is padded,
 * no attention mask is needed: a token only ever sees the tokens of its own
 * sequence. Token-type ids are all 0 (single-segment input).
 *
 * The forward pass is split so that a caller can step it (early exit):
 *
 *     eg_bert_state s;  eg_bert_state_init(&s);
 *     eg_bert_embed(model, &s, ids, offsets, n_seq, &err);   // s.layer == 0
 *     eg_bert_pool(&s, pooled0);                             // mean of h^0
 *     eg_bert_run_layers(model, &s, 2, &err);                // s.layer == 2
 *     eg_bert_compact(&s, keep, n_keep, &err);               // drop sequences
 *     eg_bert_run_layers(model, &s, L, &err);                // s.layer == L
 *     eg_bert_state_free(&s);
 *
 * A model is read-only once loaded, so any number of states (one per thread)
 * may use it at once. A state is used by one thread at a time.
 *
 * Weights keep the PyTorch (out, in) layout and are addressed by their Hugging
 * Face names without the optional "bert." prefix; query/key/value are stored
 * contiguously as one (3*hidden, hidden) matrix (the fused QKV GEMM), which
 * is nothing more than writing the three tensors one after the other.
 */
#ifndef EG_BERT_H
#define EG_BERT_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hyper-parameters from config.json. */
typedef struct {
    int vocab_size;          /* vocab_size */
    int hidden_size;         /* hidden_size, divisible by num_heads */
    int num_layers;          /* num_hidden_layers */
    int num_heads;           /* num_attention_heads */
    int intermediate_size;   /* intermediate_size */
    int max_position;        /* max_position_embeddings */
    int type_vocab_size;     /* type_vocab_size (only row 0 is used) */
    float layer_norm_eps;    /* layer_norm_eps */
} eg_bert_config;

typedef struct eg_bert eg_bert;

/* Validate `cfg` (every size positive, hidden divisible by heads, the
 * parameter count fits in memory arithmetic) and allocate a model with all
 * parameters unset. On success *out owns the model (free with eg_bert_free). */
eg_status eg_bert_create(eg_bert **out, const eg_bert_config *cfg, eg_err *err);
void eg_bert_free(eg_bert *m);
const eg_bert_config *eg_bert_get_config(const eg_bert *m);

/* Parameters, in a fixed order: embeddings first, then layer by layer. The
 * name is the Hugging Face name without a "bert." prefix and is owned by the
 * model. `shape` receives ndim (1 or 2) extents. */
size_t eg_bert_num_params(const eg_bert *m);
void eg_bert_param_info(const eg_bert *m, size_t i, const char **name, int *ndim,
                        int64_t shape[2]);
/* Total number of float parameters the model holds. */
size_t eg_bert_num_floats(const eg_bert *m);

/* Copy `data` (float32, C order, `ndim` extents in `shape`) into the
 * parameter called `name` ("bert." prefix accepted). EINVAL names the tensor
 * and the expected and given shapes when they differ, or says the name is
 * unknown. The caller keeps ownership of `data`. */
eg_status eg_bert_set_param(eg_bert *m, const char *name, const float *data, int ndim,
                            const int64_t *shape, eg_err *err);
/* Pointer to a parameter's data inside the model (read-only), NULL if the
 * name is unknown; *count receives its number of floats. */
const float *eg_bert_get_param(const eg_bert *m, const char *name, size_t *count);
/* EG_OK when every parameter was set; EINVAL naming the first missing one. */
eg_status eg_bert_check_complete(const eg_bert *m, eg_err *err);

/* Packed hidden states of a set of sequences at one layer. Fields are
 * read-only for callers; use the functions below to change them. */
typedef struct {
    int n_seq;            /* sequences held */
    int layer;            /* hidden-state index held: 0 = embedding output,
                             num_layers = last layer; -1 = empty */
    int hidden;           /* D of the model that filled the state */
    size_t n_tok;         /* total tokens (rows of h) */
    int64_t *offsets;     /* n_seq + 1 row offsets: sequence i is rows
                             offsets[i] .. offsets[i+1]-1 of h */
    float *h;             /* (n_tok, hidden) */
    /* private: capacities (grown on demand, never shrunk) and scratch */
    size_t seq_cap;
    size_t tok_cap;
    eg_arena arena;
} eg_bert_state;

void eg_bert_state_init(eg_bert_state *s);
/* Make room for n_seq sequences and n_tok tokens of width D (h's contents
 * are not kept: the caller fills it); grows by 1.5x so that a slowly growing
 * workload reallocates rarely. For the models that fill states. */
eg_status eg_state_reserve(eg_bert_state *s, int n_seq, size_t n_tok, int D, eg_err *err);

/* What a model accepts in a batch (for eg_state_start). */
typedef struct {
    int vocab_size;          /* ids in [0, vocab_size) */
    int max_len;             /* tokens per sequence */
    const char *max_len_name; /* how messages name that limit */
    size_t widest_row;       /* widest product row: n_tok * widest_row must fit in int */
} eg_state_limits;

/* Validate a packed batch against lim (offsets from 0, every sequence 1 ..
 * max_len tokens, ids in range, the batch small enough), make room for it
 * and set s's offsets, n_seq and n_tok; the caller fills h. The first step
 * of every model's embed. */
eg_status eg_state_start(eg_bert_state *s, const int32_t *ids, const int64_t *offsets, int n_seq,
                         int D, const eg_state_limits *lim, eg_err *err);
void eg_bert_state_free(eg_bert_state *s);

/* Fill `s` with the embedding output (hidden state 0) of n_seq sequences.
 * ids holds the token ids of all sequences back to back (special tokens
 * included); sequence i is ids[offsets[i] .. offsets[i+1]). Validates every
 * id against the vocabulary, every length (1 .. max_position) and that
 * offsets start at 0 and increase. n_seq may be 0. Requires a complete model
 * (EINVAL naming a missing tensor otherwise). */
eg_status eg_bert_embed(const eg_bert *m, eg_bert_state *s, const int32_t *ids,
                        const int64_t *offsets, int n_seq, eg_err *err);

/* Advance `s` from hidden state s->layer to hidden state `last`
 * (s->layer <= last <= num_layers) by running layers s->layer+1 .. last.
 * ESTATE if the state is empty or was filled by a model of another width. */
eg_status eg_bert_run_layers(const eg_bert *m, eg_bert_state *s, int last, eg_err *err);

/* Masked mean pooling of the current hidden state: out (n_seq, hidden),
 * row i = mean of sequence i's rows (all its tokens, [CLS] and [SEP]
 * included, as sentence-transformers' mean pooling with an attention mask). */
void eg_bert_pool(const eg_bert_state *s, float *out);

/* Keep only sequences keep[0..n_keep) (indices into the current state, each
 * < n_seq, strictly increasing) and pack their rows to the front; the state
 * keeps its layer. EINVAL on a bad index list. */
eg_status eg_bert_compact(eg_bert_state *s, const int *keep, int n_keep, eg_err *err);

/* FLOPs (multiply-adds counted as 2) of running layers 1..num_layers on
 * sequences of the given lengths: the four GEMM groups plus attention's two
 * batched products. Used by the benchmark to report GFLOP/s. */
double eg_bert_flops(const eg_bert_config *cfg, const int64_t *lengths, int n_seq);

/* Stage timing (debug): when the environment variable EG_BERT_PROFILE is set
 * to 1 at the time of a call, eg_bert_run_layers adds the wall time of each
 * stage into these totals (seconds); eg_bert_profile_reset zeroes them. */
typedef struct {
    double embed, qkv_gemm, attention, out_gemm, layernorm, ffn_in_gemm, gelu, ffn_out_gemm;
} eg_bert_profile;
void eg_bert_profile_get(eg_bert_profile *out);
void eg_bert_profile_reset(void);

/* ---------------------------------------------------------------- kernels
 * The layer's building blocks, exported for the C tests. They trust their
 * arguments and cannot fail. */

/* out (N,C) = LayerNorm over C of inp (N,C) with weight/bias (C); out may
 * equal inp. Mean and variance in double for rows of any scale. */
void eg_bert_layernorm_forward(float *out, const float *inp, const float *weight,
                               const float *bias, size_t N, int C, float eps);
/* out (N,C) = LayerNorm((x + xbias) + res) row-wise: the end of a BERT
 * sub-layer (dense output, its bias, the residual). out may equal x or res. */
void eg_bert_residual_layernorm_forward(float *out, const float *x, const float *xbias,
                                        const float *res, const float *weight,
                                        const float *bias, size_t N, int C, float eps);
/* out (N,C) = gelu(inp + bias) row-wise (bias may be NULL); out may equal inp. */
void eg_bert_bias_gelu_forward(float *out, const float *inp, const float *bias, size_t N, int C);
/* out (n) = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)) — the exact (erf) GELU,
 * not the tanh approximation; Phi is evaluated through erfc to an absolute
 * error below 6e-8 (|GELU error| < 6e-8 |x|, checked in the tests); out may
 * equal inp. */
void eg_bert_gelu_forward(float *out, const float *inp, size_t n);
/* erf for float arguments, branch-free so it vectorises; absolute error
 * below 2e-7 everywhere (checked against erff in the tests). */
void eg_bert_erf(float *out, const float *inp, size_t n);
/* Self-attention of packed sequences, no mask (nothing is padded).
 * qkv (n_tok, 3*D): row t holds q | k | v of token t, head h in columns
 * h*dh .. (h+1)*dh-1 of each block; out (n_tok, D): softmax(q k^T / sqrt(dh))
 * v per (sequence, head). offsets (n_seq + 1). `scratch` must hold
 * eg_bert_attention_scratch(max_len, dh) floats per OpenMP thread
 * (nthreads = eg_omp_max_threads()). OpenMP over (sequence, head). */
void eg_bert_attention_forward(float *out, const float *qkv, const int64_t *offsets,
                               int n_seq, int D, int n_heads, float *scratch);
size_t eg_bert_attention_scratch(int max_len, int dh);
/* Which compiled copy of the kernels this CPU runs: "avx512", "avx2" or
 * "generic" (static string). */
const char *eg_bert_kernel_isa(void);
/* The same with the QKV bias bqkv (3*D) added as q, k, v are read (NULL: none). */
void eg_bert_attention_forward_bias(float *out, const float *qkv, const float *bqkv,
                                    const int64_t *offsets, int n_seq, int D, int n_heads,
                                    float *scratch);

#ifdef __cplusplus
}
#endif
#endif /* EG_BERT_H */
