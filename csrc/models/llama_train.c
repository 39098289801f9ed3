/*
 * llama_train.c — LoRA fine-tuning passes of the Llama-family decoders
 * (eg_llama_train.h): forward with adapters, saving per layer what the
 * backward needs, the LM-head cross-entropy over the target positions only
 * (eg_lmhead_ce, chunked), and the backward to the adapters.
 *
 * Saved per layer (n tokens): the residual input h (D), q|k|v after RoPE
 * (W3), the attention context (QW), the residual after attention (D), the
 * FFN's gate|up pre-activations (2F) and each adapter's hA (r). The norms'
 * outputs and the SwiGLU activation are recomputed in backward. Frozen
 * products in backward go through eg_qmatmul_t (stored blocks, tile by
 * tile). The embedding is frozen, so layer 0's input gradient is skipped.
 *
 * The model's precision (EG_PREC_BF16) makes every frozen product bf16 (forward
 * eg_qmatmul_prec, backward eg_qmatmul_t_prec). With recomputation
 * (eg_llama_lora_set_recompute) only each layer's input h is kept and
 * fwd_layer runs again in backward into one shared set of tensors; forward-only
 * passes always use that shared set. fwd_layer is deterministic (dropout masks
 * are hashed from the seed), so the recomputed tensors are the same bits.
 */
#include "eg_ops.h"
#include "llama_train_internal.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Wall time per phase of eg_llama_lora_step (eg_llama_lora_profile). */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}


static void mod_dims(const eg_llama_config *c, int mod, int *in, int *out)
{
    const int D = c->hidden_size, F = c->intermediate_size;
    const int QW = c->num_heads * c->head_dim, KW = c->num_kv_heads * c->head_dim;
    switch (mod) {
    case EG_LORA_Q: *in = D; *out = QW; break;
    case EG_LORA_K: *in = D; *out = KW; break;
    case EG_LORA_V: *in = D; *out = KW; break;
    case EG_LORA_O: *in = QW; *out = D; break;
    case EG_LORA_GATE: *in = D; *out = F; break;
    case EG_LORA_UP: *in = D; *out = F; break;
    default: *in = F; *out = D; break;
    }
}

eg_status eg_llama_lora_create(eg_llama_lora **out, const eg_llama *m, const eg_lora_config *cfg,
                               uint64_t seed, eg_err *err)
{
    *out = NULL;
    eg_status st = eg_llama_check_complete(m, err);
    if (st != EG_OK) {
        return st;
    }
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f)) {
        return eg_seterr(err, EG_EINVAL, "lora dropout must be in [0, 1), got %g",
                         (double)cfg->dropout);
    }
    for (int k = 0; k < EG_LORA_NMOD; k++) {
        if (cfg->rank[k] < 0 || cfg->rank[k] > 4096) {
            return eg_seterr(err, EG_EINVAL, "lora rank must be in [0, 4096], got %d",
                             cfg->rank[k]);
        }
        if (cfg->rank[k] > 0 && !isfinite(cfg->alpha[k])) {
            return eg_seterr(err, EG_EINVAL, "lora alpha must be finite");
        }
    }
    eg_llama_lora *t = calloc(1, sizeof *t);
    if (t == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for lora adapters");
    }
    t->m = m;
    t->c = *eg_llama_get_config(m);
    t->lc = *cfg;
    eg_bert_state_init(&t->s);
    eg_arena_init(&t->arena);
    const int L = t->c.num_layers;
    t->off = malloc((size_t)L * EG_LORA_NMOD * sizeof *t->off);
    if (t->off == NULL) {
        eg_llama_lora_free(t);
        return eg_seterr(err, EG_ENOMEM, "out of memory for lora adapters");
    }
    size_t total = 0;
    for (int l = 0; l < L; l++) {
        for (int k = 0; k < EG_LORA_NMOD; k++) {
            int in, o;
            mod_dims(&t->c, k, &in, &o);
            t->off[l * EG_LORA_NMOD + k] = total;
            size_t add;
            if (eg_mul_ovf((size_t)cfg->rank[k], (size_t)in + (size_t)o, &add)
                || eg_add_ovf(total, add, &total)) {
                eg_llama_lora_free(t);
                return eg_seterr(err, EG_EOVERFLOW, "lora parameter count overflows");
            }
        }
    }
    t->n_params = total;
    t->params = eg_aligned_alloc((total > 0 ? total : 1) * sizeof(float));
    t->grads = eg_aligned_alloc((total > 0 ? total : 1) * sizeof(float));
    if (t->params == NULL || t->grads == NULL) {
        eg_llama_lora_free(t);
        return eg_seterr(err, EG_ENOMEM, "out of memory for %zu lora parameters", total);
    }
    memset(t->params, 0, total * sizeof(float));
    memset(t->grads, 0, total * sizeof(float));
    uint64_t rng = seed;
    for (int l = 0; l < L; l++) {
        for (int k = 0; k < EG_LORA_NMOD; k++) {
            int in, o;
            mod_dims(&t->c, k, &in, &o);
            float *A = t->params + t->off[l * EG_LORA_NMOD + k];
            const float bound = 1.0f / sqrtf((float)in);
            for (size_t i = 0; i < (size_t)cfg->rank[k] * (size_t)in; i++) {
                A[i] = (2.0f * eg_rng_uniform(&rng) - 1.0f) * bound;
            }
        }
    }
    *out = t;
    return EG_OK;
}

void eg_llama_lora_free(eg_llama_lora *t)
{
    if (t == NULL) {
        return;
    }
    eg_aligned_free(t->params);
    eg_aligned_free(t->grads);
    free(t->off);
    eg_bert_state_free(&t->s);
    eg_arena_free(&t->arena);
    eg_llama_moe_free(t->moe);
    free(t);
}

eg_status eg_llama_lora_set_head(eg_llama_lora *t, int type, int64_t rows, int64_t cols,
                                 const void *data, eg_err *err)
{
    if (rows != t->c.vocab_size || cols != t->c.hidden_size) {
        return eg_seterr(err, EG_EINVAL, "lm head: expected shape (%d, %d), got (%lld, %lld)",
                         t->c.vocab_size, t->c.hidden_size, (long long)rows, (long long)cols);
    }
    eg_qmat q;
    eg_status st = eg_qmat_init(&q, type, rows, cols, data, "lm head", err);
    if (st != EG_OK) {
        return st;
    }
    t->head = q;
    t->head_set = 1;
    return EG_OK;
}

size_t eg_llama_lora_num_params(const eg_llama_lora *t)
{
    return t->n_params;
}

float *eg_llama_lora_params(eg_llama_lora *t)
{
    return t->params;
}

float *eg_llama_lora_grads(eg_llama_lora *t)
{
    return t->grads;
}

void eg_llama_lora_slot(const eg_llama_lora *t, int layer, int module, size_t *offA, size_t *offB,
                        int *in, int *out, int *rank)
{
    mod_dims(&t->c, module, in, out);
    *rank = t->lc.rank[module];
    *offA = t->off[layer * EG_LORA_NMOD + module];
    *offB = *offA + (size_t)*rank * (size_t)*in;
}

void eg_llama_lora_profile(eg_llama_lora *t, double out[EG_LORA_PROF_N], int reset)
{
    memcpy(out, t->prof, sizeof t->prof);
    if (reset) {
        memset(t->prof, 0, sizeof t->prof);
    }
}

void eg_llama_lora_set_poll(eg_llama_lora *t, int (*poll)(void *ctx), void *ctx)
{
    t->poll = poll;
    t->poll_ctx = ctx;
}

void eg_llama_lora_set_recompute(eg_llama_lora *t, int on)
{
    t->recompute = on != 0;
}

/* charge the time since the last mark to phase k */
#define PH(k)                                  \
    do {                                       \
        double now_ = now_s();                 \
        t->prof[(k)] += now_ - t->prof_t0;     \
        t->prof_t0 = now_;                     \
    } while (0)

/* ------------------------------------------------------------- the passes */

typedef struct {
    float *h, *qkv, *ctx, *hmid, *gu;
    float *hA[EG_LORA_NMOD];
} saved_layer;

static void add_to(float *h, const float *x, size_t n)
{
    #pragma omp parallel for schedule(static) if (n >= EG_OMP_MIN_WORK)
    for (long i = 0; i < (long)n; i++) {
        h[i] += x[i];
    }
}

typedef struct {
    const eg_llama_lora *t;
    int l;
    size_t n;
    float p;
    uint64_t seed;
    float *drop;  /* n * max in */
    float *dh;    /* n * max rank */
} lora_ctx;

static void lora_fwd(const lora_ctx *k, int mod, float *out, size_t ldo, float *hA, const float *x,
                     size_t ldx)
{
    int in, o, r;
    size_t oa, ob;
    eg_llama_lora_slot(k->t, k->l, mod, &oa, &ob, &in, &o, &r);
    if (r == 0) {
        return;
    }
    const float scale = k->t->lc.alpha[mod] / (float)r;
    eg_lora_delta_forward(out, ldo, hA, x, ldx, k->t->params + oa, k->t->params + ob, k->n, in, o,
                          r, scale, k->p, eg_rng_derive(k->seed, (uint64_t)(k->l * EG_LORA_NMOD + mod)),
                          k->drop);
}

static void lora_bwd(const lora_ctx *k, int mod, float *dx, size_t lddx, const float *dout,
                     size_t lddo, const float *x, size_t ldx, const float *hA)
{
    int in, o, r;
    size_t oa, ob;
    eg_llama_lora_slot(k->t, k->l, mod, &oa, &ob, &in, &o, &r);
    if (r == 0) {
        return;
    }
    const float scale = k->t->lc.alpha[mod] / (float)r;
    eg_lora_delta_backward(dx, lddx, k->t->grads + oa, k->t->grads + ob, dout, lddo, x, ldx, hA,
                           k->t->params + oa, k->t->params + ob, k->n, in, o, r, scale, k->p,
                           eg_rng_derive(k->seed, (uint64_t)(k->l * EG_LORA_NMOD + mod)),
                           k->drop, k->dh);
}

#define TRY(expr)              \
    do {                       \
        st = (expr);           \
        if (st != EG_OK) {     \
            return st;         \
        }                      \
    } while (0)

/* Everything one layer's forward needs besides its saved tensors. */
typedef struct {
    int prec;
    size_t n;
    const int64_t *offsets;
    int n_seq;
    const int32_t *pos;
    const float *cos_t, *sin_t;
    const eg_attention_shape *ash;
    float *att, *x, *tmp, *act;
    float *ylora, *logits;  /* MoE: (n, D), (n, N) */
    int training;           /* a training step (the MoE running counts advance) */
} fwd_ctx;

/* The dropout stream of layer l's experts (after the plain adapters'). */
static uint64_t moe_seed(const eg_llama_lora *t, uint64_t seed, int l)
{
    return eg_rng_derive(seed, (uint64_t)t->c.num_layers * EG_LORA_NMOD + (uint64_t)l);
}

/* Layer l forward from S->h: fills S's qkv, ctx, hmid, gu, hA (and the MoE
 * routing in ms) and writes the layer output to hout. Deterministic, so
 * backward can run it again (recomputation, recomputing != 0: the MoE aux
 * losses and statistics are not computed again) and get the same tensors.
 * With MoE, gu holds the gate and up products as two (n, F) blocks. */
static eg_status fwd_layer(eg_llama_lora *t, int l, saved_layer *S, eg_moe_saved *ms, float *hout,
                           const fwd_ctx *f, lora_ctx k, int recomputing, eg_err *err)
{
    const eg_llama_config *c = &t->c;
    const int D = c->hidden_size, F = c->intermediate_size, hd = c->head_dim;
    const int QW = c->num_heads * hd, KW = c->num_kv_heads * hd, W3 = QW + 2 * KW;
    const size_t n = f->n;
    const int prec = f->prec;
    const float eps = c->rms_norm_eps;
    float *x = f->x, *tmp = f->tmp, *act = f->act;
    const int32_t *pos = f->pos;
    const float *cos_t = f->cos_t, *sin_t = f->sin_t;
    const int64_t *offsets = f->offsets;
    const int n_seq = f->n_seq;
    eg_status st;
    eg_llama_layer_weights w;
    eg_llama_get_layer(t->m, l, &w);
    eg_rmsnorm_forward(x, S->h, w.attn_norm, n, D, eps);
    PH(EG_LORA_PROF_FWD_OTHER);
    TRY(eg_qmatmul_prec(S->qkv, W3, x, D, n, w.q, w.bq, prec, err));
    TRY(eg_qmatmul_prec(S->qkv + QW, W3, x, D, n, w.k, w.bk, prec, err));
    TRY(eg_qmatmul_prec(S->qkv + QW + KW, W3, x, D, n, w.v, w.bv, prec, err));
    PH(EG_LORA_PROF_FWD_BASE);
    lora_fwd(&k, EG_LORA_Q, S->qkv, W3, S->hA[EG_LORA_Q], x, D);
    lora_fwd(&k, EG_LORA_K, S->qkv + QW, W3, S->hA[EG_LORA_K], x, D);
    lora_fwd(&k, EG_LORA_V, S->qkv + QW + KW, W3, S->hA[EG_LORA_V], x, D);
    PH(EG_LORA_PROF_FWD_LORA);
    eg_rope_forward(S->qkv, W3, n, pos, c->num_heads, hd, cos_t, sin_t, c->rope_mode);
    eg_rope_forward(S->qkv + QW, W3, n, pos, c->num_kv_heads, hd, cos_t, sin_t, c->rope_mode);
    PH(EG_LORA_PROF_FWD_OTHER);
    eg_attention_forward(S->ctx, S->qkv, S->qkv + QW, S->qkv + QW + KW, NULL, NULL, NULL,
                         offsets, n_seq, f->ash, f->att);
    PH(EG_LORA_PROF_FWD_ATTN);
    TRY(eg_qmatmul_prec(tmp, D, S->ctx, QW, n, w.o, NULL, prec, err));
    PH(EG_LORA_PROF_FWD_BASE);
    lora_fwd(&k, EG_LORA_O, tmp, D, S->hA[EG_LORA_O], S->ctx, QW);
    PH(EG_LORA_PROF_FWD_LORA);
    memcpy(S->hmid, S->h, n * (size_t)D * sizeof(float));
    add_to(S->hmid, tmp, n * (size_t)D);
    eg_rmsnorm_forward(x, S->hmid, w.ffn_norm, n, D, eps);
    PH(EG_LORA_PROF_FWD_OTHER);
    if (t->moe != NULL) {
        /* MoE-LoRA FFN: the frozen gate and up products once per token */
        float *G0 = S->gu, *U0 = S->gu + n * (size_t)F;
        TRY(eg_qmatmul_prec(G0, F, x, D, n, w.gate, NULL, prec, err));
        TRY(eg_qmatmul_prec(U0, F, x, D, n, w.up, NULL, prec, err));
        PH(EG_LORA_PROF_FWD_BASE);
        TRY(eg_moe_layer_forward(t, l, ms, act, f->ylora, f->logits, x, G0, U0, n, k.p,
                                 moe_seed(t, k.seed, l), !recomputing, f->training, err));
        PH(EG_LORA_PROF_FWD_LORA);
        TRY(eg_qmatmul_prec(tmp, D, act, F, n, w.down, NULL, prec, err));
        PH(EG_LORA_PROF_FWD_BASE);
        add_to(tmp, f->ylora, n * (size_t)D);
        memcpy(hout, S->hmid, n * (size_t)D * sizeof(float));
        add_to(hout, tmp, n * (size_t)D);
        PH(EG_LORA_PROF_FWD_OTHER);
        return EG_OK;
    }
    TRY(eg_qmatmul_prec(S->gu, 2 * (size_t)F, x, D, n, w.gate, NULL, prec, err));
    TRY(eg_qmatmul_prec(S->gu + F, 2 * (size_t)F, x, D, n, w.up, NULL, prec, err));
    PH(EG_LORA_PROF_FWD_BASE);
    lora_fwd(&k, EG_LORA_GATE, S->gu, 2 * (size_t)F, S->hA[EG_LORA_GATE], x, D);
    lora_fwd(&k, EG_LORA_UP, S->gu + F, 2 * (size_t)F, S->hA[EG_LORA_UP], x, D);
    PH(EG_LORA_PROF_FWD_LORA);
    eg_swiglu_forward(act, F, S->gu, S->gu + F, 2 * (size_t)F, n, F);
    PH(EG_LORA_PROF_FWD_OTHER);
    TRY(eg_qmatmul_prec(tmp, D, act, F, n, w.down, NULL, prec, err));
    PH(EG_LORA_PROF_FWD_BASE);
    lora_fwd(&k, EG_LORA_DOWN, tmp, D, S->hA[EG_LORA_DOWN], act, F);
    PH(EG_LORA_PROF_FWD_LORA);
    memcpy(hout, S->hmid, n * (size_t)D * sizeof(float));
    add_to(hout, tmp, n * (size_t)D);
    PH(EG_LORA_PROF_FWD_OTHER);
    return EG_OK;
}

/* between layers: stop when the caller's poll asks to (eg_llama_lora_set_poll) */
#define POLL()                                                                  \
    do {                                                                        \
        if (t->poll != NULL && t->poll(t->poll_ctx)) {                          \
            return eg_seterr(err, EG_EINTR, "training step interrupted");       \
        }                                                                       \
    } while (0)

static eg_status step_impl(eg_llama_lora *t, const int32_t *ids, const int64_t *offsets,
                           int n_seq, const int32_t *targets, float scale, int backward,
                           uint64_t seed, double *nll_sum, float *token_nll, eg_err *err)
{
    const eg_llama_config *c = &t->c;
    const int D = c->hidden_size, F = c->intermediate_size, hd = c->head_dim, V = c->vocab_size;
    const int QW = c->num_heads * hd, KW = c->num_kv_heads * hd, W3 = QW + 2 * KW;
    const int L = c->num_layers;
    *nll_sum = 0.0;
    if (!isfinite(scale)) {
        return eg_seterr(err, EG_EINVAL, "loss scale must be finite");
    }
    eg_status st = eg_llama_embed(t->m, &t->s, ids, offsets, n_seq, err);
    if (st != EG_OK) {
        return st;
    }
    const size_t n = t->s.n_tok;
    if (token_nll != NULL) {
        memset(token_nll, 0, n * sizeof(float));
    }
    size_t nt = 0;
    for (size_t i = 0; i < n; i++) {
        if (targets[i] >= V) {
            return eg_seterr(err, EG_EINVAL, "target %d at position %zu is outside the vocabulary "
                             "(%d tokens)", (int)targets[i], i, V);
        }
        nt += targets[i] >= 0;
    }
    if (n == 0) {
        return EG_OK;
    }
    int max_len = 0;
    for (int i = 0; i < n_seq; i++) {
        int len = (int)(offsets[i + 1] - offsets[i]);
        max_len = len > max_len ? len : max_len;
    }
    int rmax = 1;
    for (int k = 0; k < EG_LORA_NMOD; k++) {
        rmax = t->lc.rank[k] > rmax ? t->lc.rank[k] : rmax;
    }
    const int widest_in = F > QW ? (F > D ? F : D) : (QW > D ? QW : D);
    const int nth = eg_omp_max_threads() > 0 ? eg_omp_max_threads() : 1;
    eg_arena *a = &t->arena;
    eg_arena_reset(a);
    saved_layer *sv = eg_arena_alloc_n(a, (size_t)L + 1, sizeof *sv);
    if (sv == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for llama training activations");
    }
    int fail = 0;
#define ALLOC(ptr, cols) do { (ptr) = eg_arena_alloc_n(a, n, (size_t)(cols) * sizeof(float)); fail |= (ptr) == NULL; } while (0)
    /* share: one set of per-layer tensors, reused by every layer — a
     * forward-only pass needs no saved tensors, and with recomputation
     * backward runs each layer's forward again from its saved input h.
     * Forward-only passes also keep just two h buffers (ping-pong). */
    const int share = !backward || t->recompute;
    for (int l = 0; l <= L; l++) {
        if (!backward && l >= 2) {
            sv[l].h = sv[l & 1].h;
        } else {
            ALLOC(sv[l].h, D);
        }
        if (l == L || (share && l > 0)) {
            continue;
        }
        ALLOC(sv[l].qkv, W3);
        ALLOC(sv[l].ctx, QW);
        ALLOC(sv[l].hmid, D);
        ALLOC(sv[l].gu, 2 * F);
        for (int k = 0; k < EG_LORA_NMOD; k++) {
            sv[l].hA[k] = NULL;
            if (t->lc.rank[k] > 0) {
                ALLOC(sv[l].hA[k], t->lc.rank[k]);
            }
        }
    }
    float *x, *tmp, *act, *drop, *dhl;
    ALLOC(x, D);
    ALLOC(tmp, D);
    ALLOC(act, F);
    ALLOC(drop, widest_in);
    ALLOC(dhl, rmax);
    int32_t *pos = eg_arena_alloc_n(a, n, sizeof(int32_t));
    float *cos_t = eg_arena_alloc_n(a, (size_t)max_len, (size_t)(hd / 2) * sizeof(float));
    float *sin_t = eg_arena_alloc_n(a, (size_t)max_len, (size_t)(hd / 2) * sizeof(float));
    size_t att_f = eg_attention_scratch(max_len, hd), att_b = eg_attention_backward_scratch(max_len);
    float *att = eg_arena_alloc_n(a, (size_t)nth, (att_f > att_b ? att_f : att_b) * sizeof(float));
    fail |= pos == NULL || cos_t == NULL || sin_t == NULL || att == NULL;
    if (fail) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for llama training activations of %zu "
                         "tokens", n);
    }
    /* MoE: per-layer routing (the experts' and graph router's tensors are
     * shared by the layers when share is on), and scratch */
    eg_moe_saved *ms = NULL;
    float *ylora = NULL, *logits = NULL;
    if (t->moe != NULL) {
        const size_t N = (size_t)t->moe->c.experts;
        ms = eg_arena_alloc_n(a, (size_t)L, sizeof *ms);
        ALLOC(ylora, D);
        logits = eg_arena_alloc_n(a, n, N * sizeof(float));
        if (ms == NULL || logits == NULL || fail) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for the moe activations of %zu "
                             "tokens", n);
        }
        for (int l = 0; l < L; l++) {
            TRY(eg_moe_saved_alloc(t, a, &ms[l], share && l > 0 ? &ms[0] : NULL, n, err));
        }
        for (int l = 0; l < L; l++) {
            t->moe->last_probs[l] = NULL;
            t->moe->last_idx[l] = NULL;
        }
    }
    memcpy(sv[0].h, t->s.h, n * (size_t)D * sizeof(float));
    for (int i = 0; i < n_seq; i++) {
        for (int64_t p = offsets[i]; p < offsets[i + 1]; p++) {
            pos[p] = (int32_t)(p - offsets[i]);
        }
    }
    eg_rope_table(cos_t, sin_t, max_len, hd, c->rope_theta);
    const eg_attention_shape ash = {c->num_heads, c->num_kv_heads, hd, 1, (size_t)W3,
                                    (size_t)W3, (size_t)QW};
    const float p = backward ? t->lc.dropout : 0.0f;
    const float eps = c->rms_norm_eps;

    /* ---- forward */
    const int prec = c->precision;
    const fwd_ctx fc = {prec, n, offsets, n_seq, pos, cos_t, sin_t, &ash, att, x, tmp, act,
                        ylora, logits, backward};
    t->prof_t0 = now_s();
    for (int l = 0; l < L; l++) {
        POLL();
        lora_ctx k = {t, l, n, p, seed, drop, dhl};
        saved_layer work = sv[share ? 0 : l];
        work.h = sv[l].h;
        TRY(fwd_layer(t, l, &work, ms != NULL ? &ms[l] : NULL, sv[l + 1].h, &fc, k, 0, err));
    }

    /* ---- loss over the target rows */
    const float *onorm = eg_llama_output_norm(t->m);
    const eg_qmat *head = t->head_set ? &t->head : eg_llama_embedding(t->m);
    float *dh_all = NULL;
    POLL();
    if (nt > 0) {
        float *hs = eg_arena_alloc_n(a, nt, (size_t)D * sizeof(float));
        float *xs = eg_arena_alloc_n(a, nt, (size_t)D * sizeof(float));
        float *dxs = backward ? eg_arena_alloc_n(a, nt, (size_t)D * sizeof(float)) : NULL;
        float *nll = eg_arena_alloc_n(a, nt, sizeof(float));
        int32_t *tg = eg_arena_alloc_n(a, nt, sizeof(int32_t));
        if (hs == NULL || xs == NULL || (backward && dxs == NULL) || nll == NULL || tg == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for the loss of %zu targets", nt);
        }
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
            if (targets[i] >= 0) {
                memcpy(hs + j * D, sv[L].h + i * D, (size_t)D * sizeof(float));
                tg[j++] = targets[i];
            }
        }
        eg_rmsnorm_forward(xs, hs, onorm, nt, D, eps);
        PH(EG_LORA_PROF_FWD_OTHER);
        TRY(eg_lmhead_ce(nll_sum, nll, dxs, xs, tg, nt, head, scale, err));
        PH(EG_LORA_PROF_HEAD);
        if (token_nll != NULL) {
            j = 0;
            for (size_t i = 0; i < n; i++) {
                if (targets[i] >= 0) {
                    token_nll[i] = nll[j++];
                }
            }
        }
        if (backward) {
            /* dL/dh at the last layer's output: the final norm's backward on
             * the target rows, zero elsewhere (xs is free: reuse it) */
            eg_rmsnorm_backward(xs, NULL, dxs, hs, onorm, nt, D, eps);
            dh_all = eg_arena_alloc_n(a, n, (size_t)D * sizeof(float));
            if (dh_all == NULL) {
                return eg_seterr(err, EG_ENOMEM, "out of memory for llama gradients");
            }
            memset(dh_all, 0, n * (size_t)D * sizeof(float));
            j = 0;
            for (size_t i = 0; i < n; i++) {
                if (targets[i] >= 0) {
                    memcpy(dh_all + i * D, xs + j * D, (size_t)D * sizeof(float));
                    j++;
                }
            }
        }
    }
    if (!backward || nt == 0) {
        return EG_OK;
    }

    /* ---- backward */
    float *dx = eg_arena_alloc_n(a, n, (size_t)D * sizeof(float));
    float *dqkv = eg_arena_alloc_n(a, n, (size_t)W3 * sizeof(float));
    float *dctx = eg_arena_alloc_n(a, n, (size_t)QW * sizeof(float));
    float *dgu = eg_arena_alloc_n(a, n, (size_t)2 * F * sizeof(float));
    float *dact = eg_arena_alloc_n(a, n, (size_t)F * sizeof(float));
    if (dx == NULL || dqkv == NULL || dctx == NULL || dgu == NULL || dact == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for llama gradients of %zu tokens", n);
    }
    float *dxl = NULL, *dwk = NULL, *dprobs = NULL, *dlogits = NULL;
    if (t->moe != NULL) {
        const size_t N = (size_t)t->moe->c.experts, K = (size_t)t->moe->c.top_k;
        dxl = eg_arena_alloc_n(a, n, (size_t)D * sizeof(float));
        dwk = eg_arena_alloc_n(a, n, K * sizeof(float));
        dprobs = eg_arena_alloc_n(a, n, N * sizeof(float));
        dlogits = eg_arena_alloc_n(a, n, N * sizeof(float));
        if (dxl == NULL || dwk == NULL || dprobs == NULL || dlogits == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for the moe gradients of %zu tokens",
                             n);
        }
    }
    float *dh = dh_all;
    PH(EG_LORA_PROF_BWD_OTHER);
    for (int l = L - 1; l >= 0; l--) {
        POLL();
        eg_llama_layer_weights w;
        eg_llama_get_layer(t->m, l, &w);
        saved_layer *S = &sv[l], work;
        lora_ctx k = {t, l, n, p, seed, drop, dhl};
        if (share) {
            /* recomputation: this layer's tensors again, from its input
             * (its output, not needed, goes to dgu: free until below) */
            work = sv[0];
            work.h = sv[l].h;
            S = &work;
            TRY(fwd_layer(t, l, S, ms != NULL ? &ms[l] : NULL, dgu, &fc, k, 1, err));
            PH(EG_LORA_PROF_BWD_OTHER);
        }
        /* feed-forward block: dh is dL/d(layer output) = dL/d(down out) */
        eg_rmsnorm_forward(x, S->hmid, w.ffn_norm, n, D, eps);
        if (t->moe != NULL) {
            /* dab = dh W2 once per token; the experts and the router; then
             * the frozen gate/up products' input gradient once per token */
            const size_t nF = n * (size_t)F;
            PH(EG_LORA_PROF_BWD_OTHER);
            TRY(eg_qmatmul_t_prec(dact, F, dh, D, n, w.down, 0, prec, err));
            PH(EG_LORA_PROF_BWD_BASE);
            TRY(eg_moe_layer_backward(t, l, &ms[l], dxl, dgu, dgu + nF, dwk, dprobs, dlogits, dh,
                                      dact, x, S->gu, S->gu + nF, n, p, moe_seed(t, seed, l),
                                      err));
            PH(EG_LORA_PROF_BWD_LORA);
            TRY(eg_qmatmul_t_prec(dx, D, dgu, F, n, w.gate, 0, prec, err));
            TRY(eg_qmatmul_t_prec(dx, D, dgu + nF, F, n, w.up, 1, prec, err));
            PH(EG_LORA_PROF_BWD_BASE);
            add_to(dx, dxl, n * (size_t)D);
        } else {
            eg_swiglu_forward(act, F, S->gu, S->gu + F, 2 * (size_t)F, n, F);
            PH(EG_LORA_PROF_BWD_OTHER);
            TRY(eg_qmatmul_t_prec(dact, F, dh, D, n, w.down, 0, prec, err));
            PH(EG_LORA_PROF_BWD_BASE);
            lora_bwd(&k, EG_LORA_DOWN, dact, F, dh, D, act, F, S->hA[EG_LORA_DOWN]);
            PH(EG_LORA_PROF_BWD_LORA);
            eg_swiglu_backward(dgu, dgu + F, 2 * (size_t)F, dact, F, S->gu, S->gu + F,
                               2 * (size_t)F, n, F);
            PH(EG_LORA_PROF_BWD_OTHER);
            TRY(eg_qmatmul_t_prec(dx, D, dgu, 2 * (size_t)F, n, w.gate, 0, prec, err));
            TRY(eg_qmatmul_t_prec(dx, D, dgu + F, 2 * (size_t)F, n, w.up, 1, prec, err));
            PH(EG_LORA_PROF_BWD_BASE);
            lora_bwd(&k, EG_LORA_GATE, dx, D, dgu, 2 * (size_t)F, x, D, S->hA[EG_LORA_GATE]);
            lora_bwd(&k, EG_LORA_UP, dx, D, dgu + F, 2 * (size_t)F, x, D, S->hA[EG_LORA_UP]);
            PH(EG_LORA_PROF_BWD_LORA);
        }
        eg_rmsnorm_backward(tmp, NULL, dx, S->hmid, w.ffn_norm, n, D, eps);
        add_to(dh, tmp, n * (size_t)D);  /* dh = dL/d hmid */
        PH(EG_LORA_PROF_BWD_OTHER);
        /* attention block */
        TRY(eg_qmatmul_t_prec(dctx, QW, dh, D, n, w.o, 0, prec, err));
        PH(EG_LORA_PROF_BWD_BASE);
        lora_bwd(&k, EG_LORA_O, dctx, QW, dh, D, S->ctx, QW, S->hA[EG_LORA_O]);
        PH(EG_LORA_PROF_BWD_LORA);
        eg_attention_backward(dqkv, dqkv + QW, dqkv + QW + KW, dctx, S->qkv, S->qkv + QW,
                              S->qkv + QW + KW, offsets, n_seq, &ash, att);
        PH(EG_LORA_PROF_BWD_ATTN);
        eg_rope_backward(dqkv, W3, n, pos, c->num_heads, hd, cos_t, sin_t, c->rope_mode);
        eg_rope_backward(dqkv + QW, W3, n, pos, c->num_kv_heads, hd, cos_t, sin_t, c->rope_mode);
        eg_rmsnorm_forward(x, S->h, w.attn_norm, n, D, eps);
        PH(EG_LORA_PROF_BWD_OTHER);
        const int need_dx = l > 0;  /* the embedding is frozen */
        if (need_dx) {
            TRY(eg_qmatmul_t_prec(dx, D, dqkv, W3, n, w.q, 0, prec, err));
            TRY(eg_qmatmul_t_prec(dx, D, dqkv + QW, W3, n, w.k, 1, prec, err));
            TRY(eg_qmatmul_t_prec(dx, D, dqkv + QW + KW, W3, n, w.v, 1, prec, err));
        }
        PH(EG_LORA_PROF_BWD_BASE);
        float *dxp = need_dx ? dx : NULL;
        lora_bwd(&k, EG_LORA_Q, dxp, D, dqkv, W3, x, D, S->hA[EG_LORA_Q]);
        lora_bwd(&k, EG_LORA_K, dxp, D, dqkv + QW, W3, x, D, S->hA[EG_LORA_K]);
        lora_bwd(&k, EG_LORA_V, dxp, D, dqkv + QW + KW, W3, x, D, S->hA[EG_LORA_V]);
        PH(EG_LORA_PROF_BWD_LORA);
        if (need_dx) {
            eg_rmsnorm_backward(tmp, NULL, dx, S->h, w.attn_norm, n, D, eps);
            add_to(dh, tmp, n * (size_t)D);  /* dh = dL/d(layer input) */
        }
        PH(EG_LORA_PROF_BWD_OTHER);
    }
    return EG_OK;
}

eg_status eg_llama_lora_step(eg_llama_lora *t, const int32_t *ids, const int64_t *offsets,
                             int n_seq, const int32_t *targets, float scale, int backward,
                             uint64_t seed, double *nll_sum, float *token_nll, eg_err *err)
{
    /* a training step moves the Normal loss's running counts layer by layer
     * in its forward: keep them, so that a step that stops half way
     * (interrupted, out of memory) leaves the trainer's state as it was */
    double *keep = NULL;
    size_t nrun = 0;
    if (t->moe != NULL && backward) {
        nrun = (size_t)t->c.num_layers * (size_t)t->moe->c.experts;
        keep = malloc(nrun * sizeof *keep);
        if (keep == NULL) {
            *nll_sum = 0.0;
            return eg_seterr(err, EG_ENOMEM, "out of memory for the moe running counts");
        }
        memcpy(keep, t->moe->running, nrun * sizeof *keep);
    }
    eg_status st = step_impl(t, ids, offsets, n_seq, targets, scale, backward, seed, nll_sum,
                             token_nll, err);
    if (st != EG_OK && keep != NULL) {
        memcpy(t->moe->running, keep, nrun * sizeof *keep);
    }
    free(keep);
    return st;
}
