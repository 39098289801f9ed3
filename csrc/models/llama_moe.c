/*
 * llama_moe.c — the MoE-LoRA FFN of a fine-tuned decoder (GMoE / MixLoRA;
 * eg_llama_train.h, ALGORITHMS.md §B): configuration, the parameter layout,
 * and one layer's forward and backward, composed from the GMoE building
 * blocks of csrc/gmoe (routers, top-k, the experts' LoRA terms, the losses).
 *
 * The frozen gate/up/down products are the caller's (llama_train.c runs
 * them on the stored, possibly quantized, matrices); this file does what
 * the experts and the router add. Per layer and step it saves the routing
 * (probabilities, top-k, weights) and the loss permutations, which are
 * small, and the experts' rank-r down-projections and the graph router's
 * pre-activations, which recomputation may share between layers.
 */
#include "llama_train_internal.h"
#include "eg_gmoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* engine_py.gmoe's constants: the losses' epsilon and sigma's floor */
#define MOE_EPS 1e-8f
#define MOE_SIGMA_MIN 1e-3f

void eg_llama_moe_free(eg_llama_moe *mo)
{
    if (mo == NULL) {
        return;
    }
    free(mo->off);
    free(mo->size);
    eg_aligned_free(mo->features);
    eg_aligned_free(mo->adjacency);
    free(mo->running);
    free(mo->counts);
    free(mo->aux);
    free(mo->entropy);
    free(mo->last_probs);
    free(mo->last_idx);
    free(mo);
}

static eg_status check_config(const eg_llama_lora *t, const eg_llama_moe_config *mc, eg_err *err)
{
    if (mc->experts < 1 || mc->experts > 1024) {
        return eg_seterr(err, EG_EINVAL, "moe: experts must be in [1, 1024], got %d", mc->experts);
    }
    if (mc->top_k < 1 || mc->top_k > mc->experts) {
        return eg_seterr(err, EG_EINVAL, "moe: top_k must be in [1, experts=%d], got %d",
                         mc->experts, mc->top_k);
    }
    if (mc->rank < 1 || mc->rank > 64) {
        return eg_seterr(err, EG_EINVAL, "moe: expert rank must be in [1, 64], got %d", mc->rank);
    }
    if (!isfinite(mc->alpha)) {
        return eg_seterr(err, EG_EINVAL, "moe: alpha must be finite");
    }
    if (mc->router != EG_ROUTER_GRAPH && mc->router != EG_ROUTER_LINEAR &&
        mc->router != EG_ROUTER_SWITCH) {
        return eg_seterr(err, EG_EINVAL, "moe: unknown router %d", mc->router);
    }
    if (mc->router == EG_ROUTER_SWITCH && mc->top_k != 1) {
        return eg_seterr(err, EG_EINVAL, "moe: the switch router routes to 1 expert (top_k %d)",
                         mc->top_k);
    }
    if (mc->router == EG_ROUTER_GRAPH && (mc->gcn_dim < 1 || mc->gcn_dim > 4096 ||
                                          mc->gcn_layers < 1 || mc->gcn_layers > 16)) {
        return eg_seterr(err, EG_EINVAL, "moe: gcn_dim must be in [1, 4096] and gcn_layers in "
                         "[1, 16], got %d and %d", mc->gcn_dim, mc->gcn_layers);
    }
    for (int k = 0; k < EG_AUX_N; k++) {
        if (!(mc->coef[k] >= 0.0f) || !isfinite(mc->coef[k])) {
            return eg_seterr(err, EG_EINVAL, "moe: loss coefficients must be finite and >= 0");
        }
    }
    if (!(mc->running_decay >= 0.0 && mc->running_decay <= 1.0)) {
        return eg_seterr(err, EG_EINVAL, "moe: running_decay must be in [0, 1], got %g",
                         mc->running_decay);
    }
    if (t->lc.rank[EG_LORA_GATE] || t->lc.rank[EG_LORA_UP] || t->lc.rank[EG_LORA_DOWN]) {
        return eg_seterr(err, EG_EINVAL, "moe: the FFN modules (gate, up, down) must not also "
                         "have plain LoRA adapters");
    }
    if (t->moe != NULL) {
        return eg_seterr(err, EG_ESTATE, "moe: already set");
    }
    return EG_OK;
}

eg_status eg_llama_lora_set_moe(eg_llama_lora *t, const eg_llama_moe_config *mc, eg_err *err)
{
    eg_status st = check_config(t, mc, err);
    if (st != EG_OK) {
        return st;
    }
    const size_t L = (size_t)t->c.num_layers, D = (size_t)t->c.hidden_size;
    const size_t F = (size_t)t->c.intermediate_size, N = (size_t)mc->experts;
    const size_t r = (size_t)mc->rank, g = (size_t)mc->gcn_dim, GL = (size_t)mc->gcn_layers;
    const int graph = mc->router == EG_ROUTER_GRAPH;
    /* every product below is of values bounded by 1024 * 64 * the model's
     * own (validated) sizes, but the sums are checked all the same */
    size_t sz[EG_MOE_NPART] = {0};
    sz[EG_MOE_A0] = N * r * D;
    sz[EG_MOE_A1] = N * r * D;
    sz[EG_MOE_A2] = N * r * F;
    sz[EG_MOE_B0] = N * F * r;
    sz[EG_MOE_B1] = N * F * r;
    sz[EG_MOE_B2] = N * D * r;
    if (graph) {
        sz[EG_MOE_WS] = g * D;
        sz[EG_MOE_WT] = g * D;
        sz[EG_MOE_WL] = GL * g * g;
        sz[EG_MOE_PVEC] = mc->per_expert_readout ? N * g : g;
        sz[EG_MOE_LAMBDA] = 1;
        sz[EG_MOE_SIGMA] = 1;
    } else {
        sz[EG_MOE_WG] = N * D;
    }
    eg_llama_moe *mo = calloc(1, sizeof *mo);
    if (mo == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for the moe adapters");
    }
    mo->c = *mc;
    mo->aux_scale = 1.0f;
    mo->off = malloc(L * EG_MOE_NPART * sizeof *mo->off);
    mo->size = malloc(EG_MOE_NPART * sizeof *mo->size);
    mo->last_probs = calloc(L, sizeof *mo->last_probs);
    mo->last_idx = calloc(L, sizeof *mo->last_idx);
    mo->running = calloc(L * N, sizeof *mo->running);
    mo->counts = calloc(L * N, sizeof *mo->counts);
    mo->aux = calloc(L * EG_AUX_N, sizeof *mo->aux);
    mo->entropy = calloc(L, sizeof *mo->entropy);
    size_t nfeat = 0, nadj = 0;
    int ovf = eg_mul_ovf(L * N, D, &nfeat) || eg_mul_ovf(L * (N + 1), N + 1, &nadj);
    mo->features = ovf ? NULL : eg_aligned_alloc(nfeat * sizeof(float));
    mo->adjacency = ovf ? NULL : eg_aligned_alloc(nadj * sizeof(float));
    if (mo->off == NULL || mo->size == NULL || mo->last_probs == NULL || mo->last_idx == NULL ||
        mo->running == NULL || mo->counts == NULL || mo->aux == NULL || mo->entropy == NULL ||
        mo->features == NULL || mo->adjacency == NULL) {
        eg_llama_moe_free(mo);
        return eg_seterr(err, EG_ENOMEM, "out of memory for the moe adapters");
    }
    memset(mo->features, 0, nfeat * sizeof(float));
    memset(mo->adjacency, 0, nadj * sizeof(float));
    memcpy(mo->size, sz, sizeof sz);
    size_t total = t->n_params;
    for (size_t l = 0; l < L; l++) {
        for (int k = 0; k < EG_MOE_NPART; k++) {
            mo->off[l * EG_MOE_NPART + k] = total;
            if (eg_add_ovf(total, sz[k], &total)) {
                eg_llama_moe_free(mo);
                return eg_seterr(err, EG_EOVERFLOW, "moe parameter count overflows");
            }
        }
    }
    float *p = eg_aligned_alloc(total * sizeof(float));
    float *gr = eg_aligned_alloc(total * sizeof(float));
    if (p == NULL || gr == NULL) {
        eg_aligned_free(p);
        eg_aligned_free(gr);
        eg_llama_moe_free(mo);
        return eg_seterr(err, EG_ENOMEM, "out of memory for %zu adapter parameters", total);
    }
    memset(p, 0, total * sizeof(float));
    memset(gr, 0, total * sizeof(float));
    memcpy(p, t->params, t->n_params * sizeof(float));
    memcpy(gr, t->grads, t->n_params * sizeof(float));
    eg_aligned_free(t->params);
    eg_aligned_free(t->grads);
    t->params = p;
    t->grads = gr;
    t->n_params = total;
    t->moe = mo;
    return EG_OK;
}

const eg_llama_moe_config *eg_llama_lora_moe(const eg_llama_lora *t)
{
    return t->moe != NULL ? &t->moe->c : NULL;
}

void eg_llama_moe_slot(const eg_llama_lora *t, int layer, int part, size_t *off, size_t *size)
{
    *off = t->moe->off[(size_t)layer * EG_MOE_NPART + (size_t)part];
    *size = t->moe->size[part];
}

void eg_llama_moe_buffers(eg_llama_lora *t, float **features, float **adjacency, double **running)
{
    *features = t->moe->features;
    *adjacency = t->moe->adjacency;
    *running = t->moe->running;
}

void eg_llama_moe_set_aux_scale(eg_llama_lora *t, float s)
{
    t->moe->aux_scale = s;
}

void eg_llama_moe_stats(const eg_llama_lora *t, int64_t *counts, double *aux, double *entropy)
{
    const eg_llama_moe *mo = t->moe;
    const size_t L = (size_t)t->c.num_layers, N = (size_t)mo->c.experts;
    if (counts != NULL) {
        memcpy(counts, mo->counts, L * N * sizeof *counts);
    }
    if (aux != NULL) {
        memcpy(aux, mo->aux, L * EG_AUX_N * sizeof *aux);
    }
    if (entropy != NULL) {
        memcpy(entropy, mo->entropy, L * sizeof *entropy);
    }
}

void eg_llama_moe_routes(const eg_llama_lora *t, int layer, const float **probs,
                         const int32_t **idx, size_t *n_tok)
{
    *probs = t->moe->last_probs[layer];
    *idx = t->moe->last_idx[layer];
    *n_tok = t->moe->last_probs[layer] != NULL ? t->moe->last_n : 0;
}

/* ------------------------------------------------------------ one layer */

eg_status eg_moe_saved_alloc(const eg_llama_lora *t, eg_arena *a, eg_moe_saved *ms,
                             const eg_moe_saved *share, size_t n, eg_err *err)
{
    const eg_llama_moe_config *mc = &t->moe->c;
    const size_t N = (size_t)mc->experts, K = (size_t)mc->top_k, r = (size_t)mc->rank;
    const size_t g = (size_t)mc->gcn_dim, GL = (size_t)mc->gcn_layers;
    const int graph = mc->router == EG_ROUTER_GRAPH;
    memset(ms, 0, sizeof *ms);
    ms->probs = eg_arena_alloc_n(a, n, N * sizeof(float));
    ms->lse = eg_arena_alloc_n(a, n, sizeof(float));
    ms->w = eg_arena_alloc_n(a, n, K * sizeof(float));
    ms->idx = eg_arena_alloc_n(a, n, K * sizeof(int32_t));
    ms->perm_p = graph ? eg_arena_alloc_n(a, n, N * sizeof(int32_t)) : NULL;
    ms->perm_n = eg_arena_alloc_n(a, N, sizeof(int32_t));
    ms->c = eg_arena_alloc_n(a, N, sizeof(double));
    ms->counts = eg_arena_alloc_n(a, N, sizeof(int64_t));
    int fail = ms->probs == NULL || ms->lse == NULL || ms->w == NULL || ms->idx == NULL ||
               (graph && ms->perm_p == NULL) || ms->perm_n == NULL || ms->c == NULL ||
               ms->counts == NULL;
    if (share != NULL) {
        ms->Hl = share->Hl;
        ms->Zt = share->Zt;
        ms->Z = share->Z;
    } else {
        ms->Hl = eg_arena_alloc_n(a, 3 * n * K, r * sizeof(float));
        fail |= ms->Hl == NULL;
        if (graph) {
            ms->Zt = eg_arena_alloc_n(a, n, g * sizeof(float));
            ms->Z = eg_arena_alloc_n(a, GL * n * (N + 1), g * sizeof(float));
            fail |= ms->Zt == NULL || ms->Z == NULL;
        }
    }
    if (fail) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for the moe activations of %zu tokens", n);
    }
    return EG_OK;
}

/* The experts' parameter views of layer l (params or grads). */
static void expert_params(const eg_llama_lora *t, int l, const float *base, eg_moe_ffn_params *prm)
{
    const size_t *off = t->moe->off + (size_t)l * EG_MOE_NPART;
    memset(prm, 0, sizeof *prm);
    for (int q = 0; q < 3; q++) {
        prm->A[q] = base + off[EG_MOE_A0 + q];
        prm->B[q] = base + off[EG_MOE_B0 + q];
    }
}

static eg_moe_ffn_dims expert_dims(const eg_llama_lora *t, size_t n, float p, uint64_t seed)
{
    const eg_llama_moe_config *mc = &t->moe->c;
    eg_moe_ffn_dims d = {EG_MOE_SWIGLU, (int)n, t->c.hidden_size, t->c.intermediate_size,
                         mc->experts, mc->top_k, mc->rank, mc->alpha / (float)mc->rank, p, seed};
    return d;
}

/* The router's backward products follow the model's precision (its forward
 * stays float32: eg_graph_router_dims). */
static eg_graph_router_dims graph_dims(const eg_llama_lora *t, size_t n)
{
    const eg_llama_moe_config *mc = &t->moe->c;
    eg_graph_router_dims d = {(int)n, t->c.hidden_size, mc->experts, mc->gcn_dim, mc->gcn_layers,
                              mc->per_expert_readout != 0, t->c.precision};
    return d;
}

#define P(part) (t->params + off[(part)])
#define G(part) (t->grads + off[(part)])

eg_status eg_moe_layer_forward(eg_llama_lora *t, int l, eg_moe_saved *ms, float *abar,
                               float *ylora, float *logits, const float *x, const float *G0,
                               const float *U0, size_t n, float p, uint64_t seed, int losses,
                               int training, eg_err *err)
{
    eg_llama_moe *mo = t->moe;
    const eg_llama_moe_config *mc = &mo->c;
    const int D = t->c.hidden_size, N = mc->experts, K = mc->top_k;
    const size_t *off = mo->off + (size_t)l * EG_MOE_NPART;
    const int graph = mc->router == EG_ROUTER_GRAPH;
    eg_status st;
    if (graph) {
        const eg_graph_router_dims gd = graph_dims(t, n);
        const size_t NN = (size_t)(N + 1) * (size_t)(N + 1);
        st = eg_graph_router_forward(logits, ms->Zt, ms->Z, x,
                                     mo->features + (size_t)l * (size_t)N * (size_t)D,
                                     P(EG_MOE_WS), P(EG_MOE_WT), P(EG_MOE_WL), P(EG_MOE_PVEC),
                                     mo->adjacency + (size_t)l * NN, &gd, err);
        if (st != EG_OK) {
            return st;
        }
    } else {
        eg_linear_router_forward(logits, x, P(EG_MOE_WG), (int)n, D, N);
    }
    eg_router_topk_forward(ms->probs, ms->lse, ms->idx, ms->w, logits, (int)n, N, K,
                           mc->router != EG_ROUTER_SWITCH);
    eg_moe_ffn_params prm;
    expert_params(t, l, t->params, &prm);
    const eg_moe_ffn_dims d = expert_dims(t, n, p, seed);
    st = eg_moe_experts_forward(ylora, abar, NULL, NULL, ms->Hl, x, G0, U0, ms->idx, ms->w, &prm,
                                &d, err);
    if (st != EG_OK || !losses) {
        return st;
    }
    /* the aux losses (saving what their backward needs) and the statistics */
    double *aux = mo->aux + (size_t)l * EG_AUX_N;
    double *running = mo->running + (size_t)l * (size_t)N;
    memset(aux, 0, EG_AUX_N * sizeof *aux);
    if (graph) {
        const int kl = mc->loss_kl;
        aux[EG_AUX_POISSON] = eg_poisson_loss_forward(ms->perm_p, ms->probs, *P(EG_MOE_LAMBDA),
                                                      (int)n, N, kl, MOE_EPS);
        /* c = decay * running + k * (this batch's count per expert): the top-k
         * probabilities before renormalisation (official code) or the weights */
        const float *wn = ms->w;
        if (!mc->normal_weights) {
            float *tp = logits;   /* free after the top-k: (n, K) <= (n, N) */
            for (size_t i = 0; i < n * (size_t)K; i++) {
                tp[i] = ms->probs[(i / (size_t)K) * (size_t)N + (size_t)ms->idx[i]];
            }
            wn = tp;
        }
        double dec[1024];
        for (int e = 0; e < N; e++) {
            dec[e] = mc->running_decay * running[e];
        }
        aux[EG_AUX_NORMAL] = eg_normal_loss_forward(ms->c, ms->perm_n, dec, ms->idx, wn,
                                                    *P(EG_MOE_SIGMA), MOE_SIGMA_MIN, (int)n, N, K,
                                                    kl, MOE_EPS);
        if (training) {
            memcpy(running, ms->c, (size_t)N * sizeof *running);
        }
    }
    /* MixLoRA's load balance: the linear and switch routers' loss; on the
     * graph router only when its coefficient is set (engine_py's option
     * against router collapse, ALGORITHMS.md §B.5; the reference passes 0) */
    if (!graph || mc->coef[EG_AUX_BALANCE] != 0.0f) {
        aux[EG_AUX_BALANCE] = eg_balance_loss_forward(ms->counts, ms->probs, ms->idx, (int)n, N, K);
    }
    if (mc->router == EG_ROUTER_SWITCH) {
        aux[EG_AUX_Z] = eg_zloss_forward(ms->lse, (int)n);
    }
    int64_t *counts = mo->counts + (size_t)l * (size_t)N;
    memset(counts, 0, (size_t)N * sizeof *counts);
    double ent = 0.0;
    for (size_t i = 0; i < n; i++) {
        for (int j = 0; j < K; j++) {
            counts[ms->idx[i * (size_t)K + (size_t)j]]++;
        }
        const float *pr = ms->probs + i * (size_t)N;
        for (int e = 0; e < N; e++) {
            ent -= pr[e] > 0.0f ? (double)pr[e] * log((double)pr[e]) : 0.0;
        }
    }
    mo->entropy[l] = n > 0 ? ent / (double)n : 0.0;
    mo->last_probs[l] = ms->probs;
    mo->last_idx[l] = ms->idx;
    mo->last_n = n;
    return EG_OK;
}

eg_status eg_moe_layer_backward(eg_llama_lora *t, int l, const eg_moe_saved *ms, float *dx,
                                float *dG0, float *dU0, float *dw, float *dprobs, float *dlogits,
                                const float *dy, const float *dab, const float *x,
                                const float *G0, const float *U0, size_t n, float p,
                                uint64_t seed, eg_err *err)
{
    eg_llama_moe *mo = t->moe;
    const eg_llama_moe_config *mc = &mo->c;
    const int D = t->c.hidden_size, N = mc->experts, K = mc->top_k;
    const size_t *off = mo->off + (size_t)l * EG_MOE_NPART;
    const int graph = mc->router == EG_ROUTER_GRAPH;
    eg_moe_ffn_params prm;
    expert_params(t, l, t->params, &prm);
    eg_moe_ffn_params gp;
    expert_params(t, l, t->grads, &gp);
    eg_moe_ffn_grads grd;
    for (int q = 0; q < 3; q++) {
        grd.A[q] = (float *)gp.A[q];
        grd.B[q] = (float *)gp.B[q];
    }
    const eg_moe_ffn_dims d = expert_dims(t, n, p, seed);
    eg_status st = eg_moe_experts_backward(dx, dG0, dU0, dw, &grd, dy, dab, x, ms->idx, ms->w,
                                           NULL, NULL, G0, U0, ms->Hl, &prm, &d, err);
    if (st != EG_OK) {
        return st;
    }
    memset(dprobs, 0, n * (size_t)N * sizeof(float));
    const float s = mo->aux_scale;
    const float cp = s * mc->coef[EG_AUX_POISSON], cn = s * mc->coef[EG_AUX_NORMAL];
    const float cb = s * mc->coef[EG_AUX_BALANCE], cz = s * mc->coef[EG_AUX_Z];
    if (graph) {
        if (cp != 0.0f) {
            eg_poisson_loss_backward(dprobs, G(EG_MOE_LAMBDA), cp, ms->probs, ms->perm_p,
                                     *P(EG_MOE_LAMBDA), (int)n, N, mc->loss_kl, MOE_EPS);
        }
        if (cn != 0.0f && mc->normal_weights) {
            eg_normal_loss_backward(dw, G(EG_MOE_SIGMA), cn, ms->c, ms->perm_n, ms->idx,
                                    *P(EG_MOE_SIGMA), MOE_SIGMA_MIN, (int)n, N, K, mc->loss_kl,
                                    MOE_EPS);
        } else if (cn != 0.0f) {
            /* the count was the top-k probabilities: the gradient lands on
             * probs at the chosen experts (dn: dlogits as scratch, n K <= n N) */
            float *dn = dlogits;
            memset(dn, 0, n * (size_t)K * sizeof(float));
            eg_normal_loss_backward(dn, G(EG_MOE_SIGMA), cn, ms->c, ms->perm_n, ms->idx,
                                    *P(EG_MOE_SIGMA), MOE_SIGMA_MIN, (int)n, N, K, mc->loss_kl,
                                    MOE_EPS);
            for (size_t i = 0; i < n * (size_t)K; i++) {
                dprobs[(i / (size_t)K) * (size_t)N + (size_t)ms->idx[i]] += dn[i];
            }
        }
    }
    if (cb != 0.0f) {   /* the forward computed it: every router but a graph one at coef 0 */
        eg_balance_loss_backward(dprobs, cb, ms->counts, (int)n, N, K);
    }
    eg_router_topk_backward(dlogits, dw, dprobs, ms->probs, ms->idx, ms->w, (int)n, N, K,
                            mc->router != EG_ROUTER_SWITCH);
    if (mc->router == EG_ROUTER_SWITCH && cz != 0.0f) {
        eg_zloss_backward(dlogits, cz, ms->lse, ms->probs, (int)n, N);
    }
    if (graph) {
        const eg_graph_router_dims gd = graph_dims(t, n);
        const size_t NN = (size_t)(N + 1) * (size_t)(N + 1);
        return eg_graph_router_backward(dx, G(EG_MOE_WS), G(EG_MOE_WT), G(EG_MOE_WL),
                                        G(EG_MOE_PVEC), dlogits, x,
                                        mo->features + (size_t)l * (size_t)N * (size_t)D,
                                        P(EG_MOE_WS), P(EG_MOE_WT), P(EG_MOE_WL), P(EG_MOE_PVEC),
                                        mo->adjacency + (size_t)l * NN, ms->Zt, ms->Z, &gd, err);
    }
    eg_linear_router_backward(dx, G(EG_MOE_WG), dlogits, x, P(EG_MOE_WG), (int)n, D, N);
    return EG_OK;
}

/* ------------------------------------------- inference in the encoder's forward
 *
 * eg_llama_attach_moe copies a trainer's experts, routers and router buffers
 * into a trainer of its own (no attention adapters: those are merged into the
 * weights by the caller) that the model owns through its FFN hook. The hook
 * runs eg_moe_layer_forward exactly as the trainer's forward-only passes
 * (predict / score) do: no dropout, no aux losses, the running counts not
 * moved. Its scratch comes from the caller's arena, so the owned trainer is
 * only read and one model can serve several states. */

typedef struct {
    eg_moe_saved ms;
    float *logits;   /* (rows, N) */
} moe_hook_scratch;

static eg_status moe_hook_prepare(void *ctx, eg_arena *a, size_t rows, void **scratch,
                                  eg_err *err)
{
    const eg_llama_lora *t = ctx;
    moe_hook_scratch *sc = eg_arena_alloc(a, sizeof *sc);
    if (sc == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for the moe activations");
    }
    eg_status st = eg_moe_saved_alloc(t, a, &sc->ms, NULL, rows, err);
    if (st != EG_OK) {
        return st;
    }
    sc->logits = eg_arena_alloc_n(a, rows, (size_t)t->moe->c.experts * sizeof(float));
    if (sc->logits == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for the moe activations of %zu tokens",
                         rows);
    }
    *scratch = sc;
    return EG_OK;
}

static eg_status moe_hook_forward(void *ctx, void *scratch, int layer, float *abar,
                                  float *ylora, const float *x, const float *G0,
                                  const float *U0, size_t n, eg_err *err)
{
    moe_hook_scratch *sc = scratch;
    /* losses = training = 0: the trainer is not written (see above) */
    return eg_moe_layer_forward(ctx, layer, &sc->ms, abar, ylora, sc->logits, x, G0, U0, n, 0.0f,
                                0, 0, 0, err);
}

static void moe_hook_free(void *ctx)
{
    eg_llama_lora_free(ctx);
}

/* the first non-finite value of n floats, or -1 */
static long first_nonfinite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            return (long)i;
        }
    }
    return -1;
}

eg_status eg_llama_attach_moe(eg_llama *m, const eg_llama_lora *src, eg_err *err)
{
    if (src->moe == NULL) {
        return eg_seterr(err, EG_EINVAL, "attach_moe: the trainer has no experts (set_moe)");
    }
    if (src->m != m) {
        return eg_seterr(err, EG_EINVAL, "attach_moe: the trainer was made for another model");
    }
    if (eg_llama_has_ffn_hook(m)) {
        return eg_seterr(err, EG_ESTATE, "attach_moe: the model already has an FFN hook");
    }
    const eg_llama_moe *smo = src->moe;
    const size_t L = (size_t)src->c.num_layers, D = (size_t)src->c.hidden_size;
    const size_t N = (size_t)smo->c.experts;
    /* the router's values decide which experts run: refuse NaN/inf here,
     * whatever the caller checked (top-k of NaN probabilities is meaningless) */
    for (size_t l = 0; l < L; l++) {
        for (int k = 0; k < EG_MOE_NPART; k++) {
            const size_t off = smo->off[l * EG_MOE_NPART + (size_t)k];
            long bad = first_nonfinite(src->params + off, smo->size[k]);
            if (bad >= 0) {
                return eg_seterr(err, EG_EINVAL, "attach_moe: layer %zu, part %d holds a "
                                 "non-finite value at %ld", l, k, bad);
            }
        }
    }
    const int graph = smo->c.router == EG_ROUTER_GRAPH;
    if (graph && (first_nonfinite(smo->features, L * N * D) >= 0 ||
                  first_nonfinite(smo->adjacency, L * (N + 1) * (N + 1)) >= 0)) {
        return eg_seterr(err, EG_EINVAL, "attach_moe: non-finite expert features or adjacency");
    }
    eg_lora_config lc;
    memset(&lc, 0, sizeof lc);
    eg_llama_lora *t = NULL;
    eg_status st = eg_llama_lora_create(&t, m, &lc, 0, err);
    if (st == EG_OK) {
        st = eg_llama_lora_set_moe(t, &smo->c, err);
    }
    if (st != EG_OK) {
        eg_llama_lora_free(t);
        return st;
    }
    for (size_t l = 0; l < L; l++) {
        for (int k = 0; k < EG_MOE_NPART; k++) {
            const size_t i = l * EG_MOE_NPART + (size_t)k;
            memcpy(t->params + t->moe->off[i], src->params + smo->off[i],
                   smo->size[k] * sizeof(float));
        }
    }
    memcpy(t->moe->features, smo->features, L * N * D * sizeof(float));
    memcpy(t->moe->adjacency, smo->adjacency, L * (N + 1) * (N + 1) * sizeof(float));
    memcpy(t->moe->running, smo->running, L * N * sizeof(double));
    const eg_llama_ffn_hook h = {t, moe_hook_prepare, moe_hook_forward, moe_hook_free};
    return eg_llama_set_ffn_hook(m, &h, err);
}
