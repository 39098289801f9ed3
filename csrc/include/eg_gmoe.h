/*
 * eg_gmoe.h — GMoE building blocks (ALGORITHMS.md §B): LoRA linear, the
 * MoE-LoRA FFN (SwiGLU and BERT/GELU kinds), softmax top-k routing, the
 * linear and graph (GCN over experts + token) routers, and the auxiliary
 * losses (balance, z-loss, Poisson distinction, Normal balance).
 *
 * Layout: row-major float32, PyTorch (out, in) weights. Tokens T, hidden H,
 * intermediate I, experts E (= N), top-k K, LoRA rank r, graph width g.
 * A routed "slot" is m = t*K + j (token t, its j-th choice); idx[m] is the
 * expert, w[m] its weight.
 *
 * Kernels return void and trust validated arguments; functions that need
 * scratch memory return eg_status (EG_ENOMEM on allocation failure).
 * Backward functions accumulate (+=) into parameter gradients and assign
 * activation gradients unless the comment says otherwise.
 *
 * LoRA dropout: the keep mask is a pure function of (seed, element index)
 * (splitmix64 hash), so backward regenerates it instead of storing it and the
 * result does not depend on the thread count. p == 0 means no dropout.
 */
#ifndef EG_GMOE_H
#define EG_GMOE_H

#include <stddef.h>
#include <stdint.h>

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Dropout multiplier of element `i` for stream `seed`: 0 with probability p,
 * else 1/(1-p). p in [0, 1). */
static inline float eg_gmoe_dropout(uint64_t seed, uint64_t i, float p)
{
    if (p <= 0.0f) {
        return 1.0f;
    }
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    float u = (float)(z >> 40) * 0x1.0p-24f;
    return u < p ? 0.0f : 1.0f / (1.0f - p);
}

/* ------------------------------------------------------------ LoRA linear */
/* out (T,O) = x W^T + bias + scale * (drop(x) A^T) B^T.
 * x (T,In), W (O,In) frozen (NULL: no frozen term), bias (O) or NULL,
 * A (r,In), B (O,r). Saves hA (T,r) = drop(x) A^T for backward. Dropout
 * element index is t*In + c under `seed`. */
eg_status eg_lora_linear_forward(float *out, float *hA, const float *x, const float *W,
                                 const float *bias, const float *A, const float *B,
                                 int T, int In, int O, int r, float scale, float p,
                                 uint64_t seed, eg_err *err);
/* dx (T,In) assigned (may be NULL), dA (r,In) and dB (O,r) accumulated,
 * dbias not computed (the base layer is frozen). */
eg_status eg_lora_linear_backward(float *dx, float *dA, float *dB, const float *dout,
                                  const float *x, const float *W, const float *A,
                                  const float *B, const float *hA, int T, int In, int O,
                                  int r, float scale, float p, uint64_t seed, eg_err *err);

/* ------------------------------------------------------------ MoE-LoRA FFN */
enum { EG_MOE_SWIGLU = 0, EG_MOE_GELU = 1 };

typedef struct {
    int kind;       /* EG_MOE_SWIGLU or EG_MOE_GELU */
    int T, H, inner, E, K, r; /* inner = FFN intermediate size I (not "I": complex.h) */
    float scale;    /* alpha / r */
    float p;        /* LoRA dropout */
    uint64_t seed;  /* dropout stream of this call */
    int prec;       /* EG_PREC_F32 (0) or EG_PREC_BF16: the frozen W_in/W_up/W_out
                       products of eg_moe_ffn_forward/backward (eg_gemm_prec);
                       the experts' LoRA terms stay float32 */
} eg_moe_ffn_dims;

/* Frozen weights and the experts' LoRA pairs. Projection 0 is the input
 * projection (SwiGLU gate W1 / BERT intermediate Wi: H -> I), projection 1 the
 * SwiGLU up W3 (H -> I; unused for GELU), projection 2 the output projection
 * (SwiGLU down W2 / BERT output Wo: I -> H). A[p] is (E, r, in_p) and B[p]
 * (E, out_p, r), expert-major. */
typedef struct {
    const float *W_in;   /* (I,H) */
    const float *b_in;   /* (I) or NULL */
    const float *W_up;   /* (I,H) SwiGLU only */
    const float *W_out;  /* (H,I) */
    const float *b_out;  /* (H) or NULL */
    const float *A[3];
    const float *B[3];
} eg_moe_ffn_params;

typedef struct {
    float *A[3];
    float *B[3];
} eg_moe_ffn_grads;

/* y (T,H) = sum_j w[t,j] * out_{idx[t,j]}(x_t). Saves G (T*K, I) = gate /
 * intermediate pre-activation per slot, U (T*K, I) = SwiGLU up (NULL for
 * GELU), and Hl (3, T*K, r) = the LoRA down-projections. Uses linearity:
 * sum_j w_j W_out a_j = W_out (sum_j w_j a_j), so the frozen output product
 * is one GEMM over T rows, not T*K. idx must be in [0, E). */
eg_status eg_moe_ffn_forward(float *y, float *G, float *U, float *Hl, const float *x,
                             const int32_t *idx, const float *w,
                             const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                             eg_err *err);
/* dx (T,H) and dw (T,K) assigned; LoRA grads accumulated. */
eg_status eg_moe_ffn_backward(float *dx, float *dw, eg_moe_ffn_grads *grd, const float *dy,
                              const float *x, const int32_t *idx, const float *w,
                              const float *G, const float *U, const float *Hl,
                              const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                              eg_err *err);

/* The experts' part of the FFN, for callers that do the frozen products
 * themselves (a decoder whose W_in/W_up/W_out stay quantized):
 * G0 = x W_in^T and U0 = x W_up^T (T,I; U0 NULL for GELU) come in; out come
 * ylora (T,H) = the experts' LoRA output terms (+ sum_j w_j b_out) and abar
 * (T,I) = sum_j w_j a_j, so y = ylora + abar W_out^T. G, U (T*K,I) may be
 * NULL: not saved (backward recomputes them from G0, U0 and Hl, same bits).
 * prm's frozen matrices are not read (b_in, b_out are). */
eg_status eg_moe_experts_forward(float *ylora, float *abar, float *G, float *U, float *Hl,
                                 const float *x, const float *G0, const float *U0,
                                 const int32_t *idx, const float *w,
                                 const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                                 eg_err *err);
/* Its backward, given dab = dy W_out (T,I): dx (T,H) assigned the LoRA
 * paths' input gradient, dG0, dU0 (T,I) assigned the gradients of G0, U0
 * (the caller adds dG0 W_in + dU0 W_up to dx), dw (T,K) assigned, LoRA
 * grads accumulated. G, U as saved by forward, or NULL with G0, U0 given. */
eg_status eg_moe_experts_backward(float *dx, float *dG0, float *dU0, float *dw,
                                  eg_moe_ffn_grads *grd, const float *dy, const float *dab,
                                  const float *x, const int32_t *idx, const float *w,
                                  const float *G, const float *U, const float *G0,
                                  const float *U0, const float *Hl,
                                  const eg_moe_ffn_params *prm, const eg_moe_ffn_dims *d,
                                  eg_err *err);

/* ---------------------------------------------------------- routing */
/* Softmax of logits (T,N) into probs, log-sum-exp per token into lse (T),
 * top-k experts (descending probability, ties -> lower index) into idx (T,K)
 * and their weights into w (T,K): renormalised to sum 1 when renorm != 0,
 * else the raw probabilities (Switch Transformer). */
void eg_router_topk_forward(float *probs, float *lse, int32_t *idx, float *w,
                            const float *logits, int T, int N, int K, int renorm);
/* dlogits (T,N) assigned from dw (T,K) (through the renormalisation) plus
 * dprobs (T,N, may be NULL: extra gradient on the probabilities, e.g. from
 * the losses), through the softmax. */
void eg_router_topk_backward(float *dlogits, const float *dw, const float *dprobs,
                             const float *probs, const int32_t *idx, const float *w,
                             int T, int N, int K, int renorm);

/* Load-balancing loss N * sum_e f_e P_e (f_e = fraction of routed slots,
 * P_e = mean probability). counts (N) receives the slot counts. */
double eg_balance_loss_forward(int64_t *counts, const float *probs, const int32_t *idx,
                               int T, int N, int K);
/* dprobs (T,N) += coef * dL/dprobs (f is not differentiable). */
void eg_balance_loss_backward(float *dprobs, float coef, const int64_t *counts,
                              int T, int N, int K);
/* Router z-loss mean_t lse_t^2. */
double eg_zloss_forward(const float *lse, int T);
/* dlogits (T,N) += coef * dL/dlogits = coef * 2 lse_t / T * probs. */
void eg_zloss_backward(float *dlogits, float coef, const float *lse, const float *probs,
                       int T, int N);

/* Linear router: logits (T,N) = x Wg^T, Wg (N,H). */
void eg_linear_router_forward(float *logits, const float *x, const float *Wg, int T,
                              int H, int N);
/* dWg += dlogits^T x; dx (T,H) += dlogits Wg (accumulated). */
void eg_linear_router_backward(float *dx, float *dWg, const float *dlogits, const float *x,
                               const float *Wg, int T, int H, int N);

/* ---------------------------------------------------------- graph router */
/* GMoE graph router with the shared-expert algebra (ALGORITHMS.md §B.2).
 * Nodes 0..N-1 are experts, node N the token. Ahat (N+1,N+1) is the fixed
 * symmetric normalised adjacency D^-1/2 (A+I) D^-1/2. act = ReLU.
 *   u = relu(X Ws^T) (N,g), t = relu(x Wt^T) (T,g),
 *   Z1[t] = Ahat [u; t_t] W1^T, H1 = relu(Z1), Z_l[t] = Ahat H_{l-1}[t] W_l^T,
 *   logits[t,e] = relu(Z_L[t,e]) . pvec            (per_expert_proj == 0, pvec (g))
 *   logits[t,e] = relu(Z_L[t,e]) . pvec[e*g..]     (per_expert_proj != 0, pvec (N,g)).
 * The shared readout is the paper's; the per-expert one is engine_py's option
 * against router collapse (docs/ALGORITHMS.md, "GMoE router collapse"): with
 * a shared readout, experts with the same closed neighbourhood get identical
 * token dependence. per_expert_proj and prec are the last members, so an
 * initialiser that lists only {T, H, N, g, L} gets the shared readout in
 * float32.
 * prec: EG_PREC_F32 (0; every product float32) or EG_PREC_BF16 (eg_bf16.h):
 * the backward's products over the tokens (the GCN layers' input and weight
 * gradients, x's and Wt's) take bf16 operands with float32 sums
 * (eg_gemm_prec). The forward stays float32 in both (its logits choose the
 * top-k experts: bf16 rounding flips near-ties, measured on a tiny model as
 * a 0.8% change of the loss), and so do the token-independent expert terms,
 * the adjacency, the ReLUs, the readout and every reduction.
 * Saved: Zt (T,g) = x Wt^T and Z, a buffer of (L, T, N+1, g) floats opaque
 * to the caller: GCN pre-activations, the last layer's at the N expert rows
 * only (no logit reads the token node's); with L == 2 the first slice holds
 * only layer 1's rank-one terms (T,g), from which the backward remakes what
 * it needs (graph_router.c). */
typedef struct {
    int T, H, N, g, L;
    int per_expert_proj;
    int prec;
} eg_graph_router_dims;

eg_status eg_graph_router_forward(float *logits, float *Zt, float *Z, const float *x,
                                  const float *X, const float *Ws, const float *Wt,
                                  const float *Wl, const float *pvec, const float *Ahat,
                                  const eg_graph_router_dims *d, eg_err *err);
/* dx (T,H) accumulated (+=), dWs, dWt, dWl (L,g,g), dpvec ((g) or (N,g))
 * accumulated. */
eg_status eg_graph_router_backward(float *dx, float *dWs, float *dWt, float *dWl,
                                   float *dpvec, const float *dlogits, const float *x,
                                   const float *X, const float *Ws, const float *Wt,
                                   const float *Wl, const float *pvec, const float *Ahat,
                                   const float *Zt, const float *Z,
                                   const eg_graph_router_dims *d, eg_err *err);

/* ---------------------------------------------------------- GMoE losses */
/* Poisson distinction: per token v = sort_desc(probs_t), q_i = Poisson(i;
 * lambda) for i = 1..N normalised, lambda = clamp(lambda_raw, 1, 2);
 * L = mean_t sum_i q_i |log(q_i / (v_i + eps))| (kl != 0: without the
 * absolute value). perm (T,N) receives the sort permutation. */
double eg_poisson_loss_forward(int32_t *perm, const float *probs, float lambda_raw, int T,
                               int N, int kl, float eps);
/* dprobs (T,N) += coef * dL/dprobs; *dlambda += coef * dL/dlambda_raw (zero
 * when lambda_raw is outside [1, 2], as torch.clamp). */
void eg_poisson_loss_backward(float *dprobs, float *dlambda, float coef, const float *probs,
                              const int32_t *perm, float lambda_raw, int T, int N, int kl,
                              float eps);

/* Normal balance: c_e = running_e + k * sum of this batch's top-k weights
 * routed to e (written to c, N); v = sort_desc(c) / sum c; q_i = Normal pdf
 * (i; N/2, sigma) for i = 0..N-1 normalised and sorted descending,
 * sigma = max(sigma_raw, sigma_min); L = sum_i q_i |log(q_i / (v_i + eps))|.
 * perm (N) receives the sort permutation of c. */
double eg_normal_loss_forward(double *c, int32_t *perm, const double *running,
                              const int32_t *idx, const float *w, float sigma_raw,
                              float sigma_min, int T, int N, int K, int kl, float eps);
/* dw (T,K) += coef * dL/dw; *dsigma += coef * dL/dsigma_raw. */
void eg_normal_loss_backward(float *dw, float *dsigma, float coef, const double *c,
                             const int32_t *perm, const int32_t *idx, float sigma_raw,
                             float sigma_min, int T, int N, int K, int kl, float eps);

#ifdef __cplusplus
}
#endif
#endif
