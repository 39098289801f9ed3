/*
 * eg_ops.h — neural-network ops as forward/backward pairs, and the graph
 * convolutions (SAGE, GCN, GAT) with PyG semantics.
 *
 * Conventions (docs/DESIGN.md §3): argument order outputs, inputs, saved,
 * dims (llm.c). Kernels return void and trust their arguments. Backward
 * ACCUMULATES (+=) into parameter gradients and ASSIGNS activation gradients,
 * unless the comment says otherwise. Activation-gradient pointers documented
 * as "may be NULL" are skipped (e.g. a frozen input). All tensors are
 * row-major float32; weights have PyTorch layout (out, in). Threads: OpenMP
 * by output row, no atomics; BLAS is never called inside a parallel region.
 */
#ifndef EG_OPS_H
#define EG_OPS_H

#include "eg.h"
#include "eg_bf16.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Loops doing fewer than EG_OMP_MIN_WORK element updates run on the calling
 * thread. A fork/join costs a few microseconds on an idle machine, but when
 * the other core is busy the barrier waits for a descheduled thread (a
 * scheduler time slice), which made 2-thread ladder training many times
 * slower than 1 thread on a loaded machine. Loops below this size take tens
 * of microseconds alone, so they gain little from a second thread anyway. */
#define EG_OMP_MIN_WORK ((size_t)1 << 17)
#define EG_OMP_WORTH(rows, cols) ((size_t)(rows) * (size_t)(cols) >= EG_OMP_MIN_WORK)

/* Column sums of row-major matrices (bias and norm gradients) are done by
 * giving each thread of a parallel region a contiguous block of columns and
 * walking the rows in order, EG_COL_BLOCK columns at a time in double
 * accumulators: memory is read row by row (no stride-C access), and every
 * column is summed in row order by one thread, so the result does not depend
 * on the thread count. eg_thread_columns gives the calling thread its block. */
#define EG_COL_BLOCK 256
static inline void eg_thread_columns(int C, int *c0, int *c1)
{
#ifdef _OPENMP
    int t = omp_get_thread_num(), nt = omp_get_num_threads();
#else
    int t = 0, nt = 1;
#endif
    *c0 = (int)((int64_t)C * t / nt);
    *c1 = (int)((int64_t)C * (t + 1) / nt);
}

/* ------------------------------------------------------ decoder blocks
 * The pieces of Llama-family layers (and BERT's attention), as
 * forward/backward pairs. */

/* RMSNorm (Llama): out (N,C) = w * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps)
 * per row, as Hugging Face's LlamaRMSNorm computes it in float32 (the sum of
 * squares in fixed lanes combined in double). out may equal inp. */
void eg_rmsnorm_forward(float *out, const float *inp, const float *w, size_t N, int C, float eps);
/* dinp (N,C) assigned (may be NULL); dw (C) += sum over rows of
 * dout * inp * rstd (may be NULL; column sums in row order, double). rstd is
 * recomputed from inp as the forward computes it. */
void eg_rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp,
                         const float *w, size_t N, int C, float eps);

/* Rotary position embedding, in place, on `n_heads` heads of `head_dim`
 * values at the start of each of N rows (row stride ld). Row t has position
 * pos[t]. cos/sin tables: (max_pos, head_dim / 2), entry [p][i] for angle
 * p * theta_i (eg_rope_table). Two layouts rotate different pairs:
 *   EG_ROPE_NORM: (x[2i], x[2i+1]) -- llama.cpp's mode for arch llama, whose
 *                 GGUF files store Q/K rows permuted to match;
 *   EG_ROPE_NEOX: (x[i], x[i + head_dim/2]) -- Hugging Face's rotate_half
 *                 (every safetensors model, and GGUF qwen2). */
enum { EG_ROPE_NORM = 0, EG_ROPE_NEOX = 2 };
void eg_rope_forward(float *x, size_t ld, size_t N, const int32_t *pos, int n_heads,
                     int head_dim, const float *cos_t, const float *sin_t, int mode);
/* Fill cos_t/sin_t (n_pos, head_dim/2) for positions 0..n_pos-1 as
 * Hugging Face does: inv_freq_i = 1 / base^(2i/head_dim) in float32, the
 * angle p * inv_freq_i rounded to float32, then its cosine and sine. */
void eg_rope_table(float *cos_t, float *sin_t, int n_pos, int head_dim, double base);
/* The gradient through eg_rope_forward, in place on dx (same layout): the
 * rotation is orthogonal, so this is the rotation by minus the angle. */
void eg_rope_backward(float *dx, size_t ld, size_t N, const int32_t *pos, int n_heads,
                      int head_dim, const float *cos_t, const float *sin_t, int mode);

/* SwiGLU: out (N,F) = silu(gate) * up, rows of gate/up with stride ld, of
 * out with stride ldo (out may equal gate). */
void eg_swiglu_forward(float *out, size_t ldo, const float *gate, const float *up, size_t ld,
                       size_t N, int F);
/* dgate, dup (N,F) assigned, rows with stride ldd (they may be the two
 * halves of one buffer); dout rows with stride ldo; gate/up as forward. */
void eg_swiglu_backward(float *dgate, float *dup, size_t ldd, const float *dout, size_t ldo,
                        const float *gate, const float *up, size_t ld, size_t N, int F);

/* Scaled dot-product self-attention of packed sequences (sequence i is rows
 * offsets[i] .. offsets[i+1]-1; no padding, so no mask). Query head h reads
 * key/value head h / (n_heads / n_kv_heads) (grouped-query attention;
 * n_kv_heads divides n_heads). causal: row i attends to rows 0..i of its
 * sequence. q/out rows hold n_heads * head_dim values, k/v rows
 * n_kv_heads * head_dim, at the given strides (q, k, v may be column ranges
 * of one fused QKV matrix). Biases (per query/kv width) are added to q, k, v
 * first, or NULL. scratch: eg_attention_scratch(max_len, head_dim) floats
 * per OpenMP thread. Scores are scaled by 1/sqrt(head_dim). */
typedef struct {
    int n_heads, n_kv_heads, head_dim;
    int causal;
    size_t q_stride, kv_stride, out_stride;
} eg_attention_shape;
size_t eg_attention_scratch(int max_len, int head_dim);
void eg_attention_forward(float *out, const float *q, const float *k, const float *v,
                          const float *bq, const float *bk, const float *bv,
                          const int64_t *offsets, int n_seq, const eg_attention_shape *shape,
                          float *scratch);
/* The gradients of eg_attention_forward (no biases) with respect to q, k
 * and v, ASSIGNED (dq with q's stride, dk/dv with k's; dout with out's).
 * The probabilities are recomputed. One thread handles a (sequence,
 * key/value head) pair and every query head sharing it, so dk/dv are summed
 * over the group in a fixed order (deterministic). scratch:
 * eg_attention_backward_scratch(max_len) floats per OpenMP thread. */
size_t eg_attention_backward_scratch(int max_len);
void eg_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const int64_t *offsets, int n_seq,
                           const eg_attention_shape *shape, float *scratch);

/* LoRA's low-rank term over a frozen product computed elsewhere:
 * out (N,O) += scale * drop(x) A^T B^T; saves hA (N,r) = drop(x) A^T.
 * x (N,In) rows with stride ldx, out rows with stride ldo; A (r,In),
 * B (O,r). Dropout (p in [0,1), 0 = none) on the LoRA input only, mask
 * element i = t*In + c is eg_gmoe_dropout(seed, i, p), regenerated by the
 * backward. scratch: N*In floats when p > 0 (else unused, may be NULL). */
void eg_lora_delta_forward(float *out, size_t ldo, float *hA, const float *x, size_t ldx,
                           const float *A, const float *B, size_t N, int In, int O, int r,
                           float scale, float p, uint64_t seed, float *scratch);
/* dA (r,In), dB (O,r) ACCUMULATE (+=); dx (N,In, stride lddx) ACCUMULATES
 * the LoRA path's input gradient (the frozen product's dX = dout W is added
 * by the caller), may be NULL. dout rows with stride lddo. scratch as the
 * forward (N*In when p > 0), dh N*r floats. */
void eg_lora_delta_backward(float *dx, size_t lddx, float *dA, float *dB, const float *dout,
                            size_t lddo, const float *x, size_t ldx, const float *hA,
                            const float *A, const float *B, size_t N, int In, int O, int r,
                            float scale, float p, uint64_t seed, float *scratch, float *dh);

/* ---------------------------------------------------------------- dense */

/* eg_sgemm's contract (C = alpha op(A) op(B) + beta C) at a precision:
 * EG_PREC_F32 is eg_sgemm; EG_PREC_BF16 rounds A and B to bfloat16 and sums
 * in float32 (the AVX512-BF16 kernel, or its emulation; ops/gemm_prec.c).
 * The ops below that take `prec` pass it here for every product. */
void eg_gemm_prec(int prec, int transA, int transB, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* inp (N,C), w (OC,C), b (OC) or NULL -> out (N,OC) = inp w^T + b */
void eg_linear_forward(float *out, const float *inp, const float *w, const float *b,
                       int N, int C, int OC, int prec);
/* dinp (N,C) assigned (may be NULL); dw (OC,C) += dout^T inp; db (OC) += colsum
 * (may be NULL). */
void eg_linear_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                        const float *w, int N, int C, int OC, int prec);

/* out (N, OC) += b (OC) on every row. */
void eg_bias_forward(float *out, const float *b, int N, int OC);
/* db (OC) += the column sums of dout (N, OC): a bias's gradient. */
void eg_bias_backward(float *db, const float *dout, int N, int OC);

/* LayerNorm over the last dim, eps = 1e-5 (torch default), affine.
 * inp (N,C), w/b (C) -> out (N,C); saves mean, rstd (N). */
void eg_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *w, const float *b, int N, int C);
void eg_layernorm_backward(float *dinp, float *dw, float *db, const float *dout,
                           const float *inp, const float *w, const float *mean,
                           const float *rstd, int N, int C);

/* BatchNorm1d over the rows (torch semantics, eps = 1e-5).
 * Training: per-column batch mean and biased variance -> out; saves mean,
 * rstd (C); var_unbiased (C, may be NULL) receives the unbiased variance for
 * the caller's running-statistics update. N >= 2. */
void eg_batchnorm_forward_train(float *out, float *mean, float *rstd, float *var_unbiased,
                                const float *inp, const float *w, const float *b, int N, int C);
/* Evaluation with running statistics; writes mean = running_mean and
 * rstd = 1/sqrt(running_var + eps) (C) so the backward below can be used. */
void eg_batchnorm_forward_eval(float *out, float *mean, float *rstd, const float *inp,
                               const float *w, const float *b, const float *running_mean,
                               const float *running_var, int N, int C);
/* train = 1: gradient through the batch statistics; train = 0: through the
 * fixed affine map of eval mode. dinp assigned; dw, db accumulated. */
void eg_batchnorm_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                           const float *w, const float *mean, const float *rstd, int N, int C,
                           int train);

/* Elementwise activations over n values. The backward takes the forward's
 * OUTPUT (ReLU: out > 0 exactly when inp > 0; ELU: exp(inp) = out + 1), so a
 * caller keeps one tensor and the ELU backward needs no exponential. Both
 * work in place (out == inp, dinp == dout). */
void eg_relu_forward(float *out, const float *inp, size_t n);
void eg_relu_backward(float *dinp, const float *dout, const float *out, size_t n);
/* ELU with alpha = 1 (torch default). */
void eg_elu_forward(float *out, const float *inp, size_t n);
void eg_elu_backward(float *dinp, const float *dout, const float *out, size_t n);

/* Inverted dropout: mask[i] = 0 with probability p (to 1/65536), else
 * 1/(1-p); out = inp * mask. The draw for element i is a hash of (seed, i / 4),
 * so the mask does not depend on the thread count. p in [0, 1); p == 0 gives
 * mask = 1. */
void eg_dropout_forward(float *out, float *mask, const float *inp, size_t n, float p,
                        uint64_t seed);
void eg_dropout_backward(float *dinp, const float *dout, const float *mask, size_t n);

/* -------------------------------------------------------------- losses */

/* Softmax cross-entropy, mean over N rows. logits (N,C), labels (N) in
 * [0, C) -> probs (N,C) saved; returns the mean loss (double accumulation). */
float eg_softmax_ce_forward(float *probs, const float *logits, const int64_t *labels, int N, int C);
/* dlogits (N,C) += scale * (probs - onehot) / N   (accumulates, so several
 * heads can share one buffer; zero it first otherwise). */
void eg_softmax_ce_backward(float *dlogits, const float *probs, const int64_t *labels, int N,
                            int C, float scale);

/* ------------------------------------------------------------- graphs */

/* A batch graph for message passing: in-edges of v are
 * src[ptr[v] .. ptr[v+1]-1]; the reverse CSR lists out-edges of u as
 * rdst[rptr[u] .. rptr[u+1]-1] with reid[] the matching forward edge ids.
 * No self-loops (GCN and GAT add their own). */
typedef struct {
    int64_t n;
    int64_t num_edges;
    const int64_t *ptr;
    const int64_t *src;
    const int64_t *rptr;
    const int64_t *rdst;
    const int64_t *reid;
} eg_gnn_graph;

/* Fill the reverse CSR (rptr (n+1), rdst (E), reid (E)) of (ptr, src).
 * Deterministic: out-edges of u are in forward edge order. */
void eg_csr_reverse(int64_t *rptr, int64_t *rdst, int64_t *reid, const int64_t *ptr,
                    const int64_t *src, int64_t n);

/* PyG SAGEConv, mean aggregation, root weight:
 * out = lin_l(mean_{u->v} inp[u]) + lin_r(inp[v]); lin_l has the bias, lin_r
 * none. Nodes without in-edges aggregate zeros. inp (N,C), wl/wr (OC,C),
 * bl (OC) -> out (N,OC); saves agg (N,C). */
void eg_sage_forward(float *out, float *agg, const float *inp, const float *wl, const float *bl,
                     const float *wr, const eg_gnn_graph *g, int C, int OC, int prec);
/* dinp (N,C) assigned (may be NULL); scratch (N,C). */
void eg_sage_backward(float *dinp, float *dwl, float *dbl, float *dwr, const float *dout,
                      const float *inp, const float *agg, const float *wl, const float *wr,
                      const eg_gnn_graph *g, float *scratch, int C, int OC, int prec);

/* PyG GCNConv: h = inp w^T; out[v] = sum_{u in N(v) + v} dinv[u] dinv[v] h[u] + b
 * with dinv = (in-degree + 1)^-1/2. b may be NULL. Saves h (N,OC), dinv (N). */
void eg_gcn_forward(float *out, float *h, float *dinv, const float *inp, const float *w,
                    const float *b, const eg_gnn_graph *g, int C, int OC, int prec);
/* dinp assigned (may be NULL); db may be NULL; scratch (N,OC). */
void eg_gcn_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *dinv, const float *w, const eg_gnn_graph *g, float *scratch,
                     int C, int OC, int prec);

/* PyG GATConv (concat=True, negative_slope=0.2, add_self_loops=True, no
 * attention dropout): h = inp w^T viewed (N,H,F); a_s[n,h] = <h[n,h], att_src[h]>,
 * a_d likewise; e(u->v) = LeakyReLU(a_s[u] + a_d[v]); softmax over the
 * in-edges of v plus its self-loop; out[v,h] = sum att * h[u,h]; + b.
 * w (H*F, C), att_src/att_dst (H*F), b (H*F) or NULL.
 * Saves h (N,H*F), a_s (N,H), a_d (N,H), att (E+N, H): rows 0..E-1 are the
 * graph's edges in forward order, row E+v the self-loop of v. */
void eg_gat_forward(float *out, float *h, float *as, float *ad, float *att, const float *inp,
                    const float *w, const float *att_src, const float *att_dst, const float *b,
                    const eg_gnn_graph *g, int C, int H, int F, int prec);
/* dinp assigned (may be NULL); db may be NULL; scratch floats:
 * eg_gat_scratch_size(N, E, H, F). */
size_t eg_gat_scratch_size(int64_t N, int64_t E, int H, int F);
void eg_gat_backward(float *dinp, float *dw, float *datt_src, float *datt_dst, float *db,
                     const float *dout, const float *inp, const float *h, const float *as,
                     const float *ad, const float *att, const float *w, const float *att_src,
                     const float *att_dst, const eg_gnn_graph *g, float *scratch, int C, int H,
                     int F, int prec);

/* Subgraph readout: for subgraph g with nodes graph_ptr[g] .. graph_ptr[g+1]-1
 * (root first, non-empty), out[g] = [z[root] ; mean z] (G, 2C). */
void eg_readout_forward(float *out, const float *z, const int64_t *graph_ptr, int64_t G, int C);
/* dz (N,C) ACCUMULATES (+=): z usually feeds more than one consumer. */
void eg_readout_backward(float *dz, const float *dout, const int64_t *graph_ptr, int64_t G, int C);

/* Per-subgraph mean pooling: out[g] = mean of z over subgraph g (G, C). */
void eg_meanpool_forward(float *out, const float *z, const int64_t *graph_ptr, int64_t G, int C);
/* dz ACCUMULATES (+=). */
void eg_meanpool_backward(float *dz, const float *dout, const int64_t *graph_ptr, int64_t G, int C);

#ifdef __cplusplus
}
#endif
#endif
