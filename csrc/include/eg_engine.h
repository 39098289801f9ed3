/*
 * eg_engine.h — the ENGINE G-Ladder side structure (docs/ALGORITHMS.md §A.2).
 *
 * One ladder per selected encoder layer: projector (Linear D->k, LayerNorm,
 * ReLU, Linear k->k), a 1- or 2-layer GNN (SAGE / GCN / GAT), a gated
 * recurrence x_i = a_i P_i(H_i) + (1 - a_i) z_{i-1} with a_i = sigmoid(alpha_i/T),
 * the readout [z(root) ; mean z] per subgraph and a classifier; optionally an
 * exit head per ladder (ENGINE Early; the last ladder's head is the
 * classifier), trained with the sum of the heads' cross-entropies.
 *
 * Memory (docs/DESIGN.md §3): parameters, gradients and the AdamW moments are
 * four aligned buffers with one layout, described by a table of
 * {name, offset, shape, decay}. Activations live in the model's arena, reset
 * by eg_ladder_begin and kept until the next begin, so a forward can be
 * followed by a backward. The model keeps no pointer to caller memory after a
 * call returns: eg_ladder_forward_step copies the states the backward needs;
 * eg_ladder_forward_eval (prediction) and eg_ladder_train_step (one call for
 * a whole training step) use them in place, which saves a copy of the
 * largest tensor of the batch.
 *
 * Calling sequence for one batch:
 *   eg_ladder_begin(batch) -> eg_ladder_forward_step(0..K-1, H_i) in order
 *   [-> eg_ladder_loss(labels) -> eg_ladder_backward -> eg_ladder_adamw_step]
 * forward_step returns ladder i's exit-head logits when it has a head, so a
 * dynamic early-exit policy can stop after any ladder.
 */
#ifndef EG_ENGINE_H
#define EG_ENGINE_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { EG_GNN_SAGE = 0, EG_GNN_GCN = 1, EG_GNN_GAT = 2 };
enum { EG_ACT_ELU = 0, EG_ACT_RELU = 1 };
enum { EG_NORM_ID = 0, EG_NORM_LN = 1, EG_NORM_BN = 2 };

typedef struct {
    int num_ladders;    /* K >= 1 */
    int in_dim;         /* D: encoder state width */
    int reduced_dim;    /* k */
    int hidden;         /* hidden width of a 2-layer GNN */
    int num_classes;    /* C >= 2 */
    int gnn;            /* EG_GNN_* */
    int gnn_layers;     /* 1 or 2 */
    int act;            /* EG_ACT_* */
    int norm;           /* EG_NORM_* */
    int heads;          /* GAT heads (layer widths must be divisible) */
    int early_exit;     /* exit head per ladder, summed loss */
    float dropout;      /* after each non-final GNN layer, in [0, 1) */
    float T;            /* gate temperature > 0 */
    int precision;      /* EG_PREC_F32 (0) or EG_PREC_BF16 (eg_bf16.h): the
                           products of the side structure (projector, GNN,
                           heads), forward and backward; every other op and
                           the optimizer stay float32 */
} eg_ladder_config;

#define EG_PARAM_NAME_LEN 96

typedef struct {
    char name[EG_PARAM_NAME_LEN]; /* PyTorch-style, e.g. ladders.0.gnn.0.lin_l.weight */
    size_t offset;                /* in floats, into each of param/grad/m/v */
    size_t size;                  /* floats */
    int ndim;                     /* 0 (scalar) .. 3 */
    int64_t shape[3];
    int decay;                    /* AdamW weight decay applies */
    int trainable;                /* 0 for BatchNorm running statistics (buffers) */
} eg_param_desc;

typedef struct eg_ladder eg_ladder;

/* Validate cfg, allocate and initialise (PyTorch/PyG default initialisers
 * drawn from `seed`). *out owned by the caller (eg_ladder_free). */
eg_status eg_ladder_create(eg_ladder **out, const eg_ladder_config *cfg, uint64_t seed, eg_err *err);
void eg_ladder_free(eg_ladder *m);

const eg_ladder_config *eg_ladder_get_config(const eg_ladder *m);
int eg_ladder_num_params(const eg_ladder *m);
const eg_param_desc *eg_ladder_param(const eg_ladder *m, int i);
size_t eg_ladder_total_floats(const eg_ladder *m);
/* The four buffers (each eg_ladder_total_floats long), owned by the model. */
float *eg_ladder_params(eg_ladder *m);
float *eg_ladder_grads(eg_ladder *m);
float *eg_ladder_adam_m(eg_ladder *m);
float *eg_ladder_adam_v(eg_ladder *m);
long *eg_ladder_step_count(eg_ladder *m);
/* Does ladder i have an exit head (early_exit, or i == K-1)? */
int eg_ladder_has_head(const eg_ladder *m, int i);

/* Start a batch of G subgraphs over N nodes: graph_ptr (G+1) as in eg_batch
 * (non-empty subgraphs, root first), in-neighbour CSR ptr (N+1), src (E),
 * batch-local, no self-loops. training: dropout on, drawn from `seed`, and
 * BatchNorm uses (and updates the running estimates from) batch statistics. */
eg_status eg_ladder_begin(eg_ladder *m, int64_t G, const int64_t *graph_ptr, int64_t N,
                          const int64_t *ptr, const int64_t *src, int training, uint64_t seed,
                          eg_err *err);
/* Optional, right after begin: the states passed to the forward steps hold
 * U <= N distinct rows and node n uses row rows[n] (0 <= rows[n] < U), so a
 * node that appears in several subgraphs of the batch is projected once and
 * its projector gradient summed over its copies (the same algebra as one row
 * per node, with fewer products). Not combinable with eg_ladder_keep. */
eg_status eg_ladder_set_rows(eg_ladder *m, int64_t U, const int64_t *rows, eg_err *err);
/* Rows the forward steps' states must have: the batch's nodes, or U after
 * eg_ladder_set_rows (0 before the first begin). */
int64_t eg_ladder_state_rows(const eg_ladder *m);
/* Nodes and subgraphs of the current batch (0, 0 before the first begin). */
void eg_ladder_batch_dims(const eg_ladder *m, int64_t *num_nodes, int64_t *num_graphs);
/* Run ladder i (i must be the next one) on its layer's states H (N, D), or
 * (U, D) after eg_ladder_set_rows, which must be finite. If the ladder has a head and logits != NULL, writes
 * its logits (G, C). */
eg_status eg_ladder_forward_step(eg_ladder *m, int i, const float *H, float *logits, eg_err *err);
/* As eg_ladder_forward_step, but H is not kept: a backward on this batch is
 * refused (EG_ESTATE). For prediction. */
eg_status eg_ladder_forward_eval(eg_ladder *m, int i, const float *H, float *logits, eg_err *err);
/* A whole training step in one call: begin (training), set_rows when rows
 * != NULL, the K forward steps on H[0..K-1] (each (N, D), or (U, D) with
 * rows; used in place), the summed loss (written to *loss), zero_grad,
 * backward, AdamW (betas 0.9/0.999, eps 1e-8). */
eg_status eg_ladder_train_step(eg_ladder *m, int64_t G, const int64_t *graph_ptr, int64_t N,
                               const int64_t *ptr, const int64_t *src, int64_t U,
                               const int64_t *rows, const float *const *H, const int64_t *labels,
                               uint64_t seed, float lr, float weight_decay, float *loss, eg_err *err);
/* After all K steps: sum over heads of the mean cross-entropy; labels (G) in
 * [0, C). head_losses (K, may be NULL) gets each head's loss (0 if none). */
eg_status eg_ladder_loss(eg_ladder *m, const int64_t *labels, float *loss, float *head_losses,
                         eg_err *err);
/* Gradient of the last loss, ACCUMULATED into the gradient buffer. */
eg_status eg_ladder_backward(eg_ladder *m, eg_err *err);
void eg_ladder_zero_grad(eg_ladder *m);
/* One AdamW step (PyTorch semantics) on every trainable parameter; increments the step count. */
void eg_ladder_adamw_step(eg_ladder *m, float lr, float weight_decay, float beta1, float beta2,
                          float eps);

/* Eval only: after forward_step(i) (and before step i+1), keep only the
 * subgraphs g with keep[g] != 0 (G entries, at least one non-zero): the batch
 * graph, the subgraph table and the recurrent state z_i are compacted in
 * order, so the next forward_step takes states (N', D) for the kept nodes
 * only (the nodes of the kept subgraphs, in their batch order). Used by
 * dynamic early exit to stop computing ladders for exited targets. Not
 * allowed on a training batch; after it, loss/backward refuse the batch. */
eg_status eg_ladder_keep(eg_ladder *m, const uint8_t *keep, eg_err *err);

/* ------------------------------------------- dynamic early exit, in exit.c
 * Per-target state of the exit policy (docs/ALGORITHMS.md §A.5). A target
 * exits at the first ladder with a head whose argmax has agreed with the
 * previous head's argmax `patience` times in a row (patience 1 = the paper's
 * rule: two consecutive agreeing heads), or, when threshold > 0, whose
 * largest softmax probability is >= threshold; at the last ladder every
 * remaining target exits. An exited target's output (the softmax of the head
 * it exited at) is frozen: updating it again is an error, never an overwrite
 * (the reference's mask `(cur == last) == not_visited` re-selects exited
 * targets; ours is `(cur == last) & not_visited`).
 * All arrays are owned by the caller and sized for n targets. */
typedef struct {
    int64_t n;          /* targets */
    int C;              /* classes >= 1 */
    int patience;       /* >= 1 */
    float threshold;    /* <= 0: off; else in (0, 1] */
    int64_t *last;      /* (n) argmax of the previous head, -1 before the first */
    int32_t *streak;    /* (n) consecutive agreements so far */
    int32_t *exit_at;   /* (n) ladder index the target exited at, -1 while active */
    float *probs;       /* (n, C) output: frozen once exited */
} eg_exit_state;

/* Validate the scalars and reset the arrays (last = -1, streak = 0,
 * exit_at = -1, probs = 0). */
eg_status eg_exit_reset(eg_exit_state *s, eg_err *err);
/* One head's update for the m still-active targets idx (m distinct ids in
 * [0, n), none exited) with their logits (m, C), finite. `final`: the last
 * ladder, everyone exits. active_out (m, may be NULL): 1 if the target is
 * still active after this ladder. *num_exited (may be NULL): targets that
 * exited at this ladder. Validates everything before changing any state. */
eg_status eg_exit_step(eg_exit_state *s, int ladder, int final, int64_t m, const int64_t *idx,
                       const float *logits, uint8_t *active_out, int64_t *num_exited, eg_err *err);
/* The whole policy from every head's logits (K, n, C) at once (has_head (K),
 * NULL = every ladder has a head; the last must have one): fills s->probs and
 * s->exit_at (s is reset first). Measures where targets exit; it saves no
 * work (the live and cached predictors stop computing instead). */
eg_status eg_exit_decide(eg_exit_state *s, int K, const float *logits, const uint8_t *has_head,
                         eg_err *err);

#ifdef __cplusplus
}
#endif
#endif
