/*
 * llama.c — Llama-family decoders as encoders (see eg_llama.h): weights,
 * embedding and the layer-by-layer forward pass on packed texts.
 *
 * Every product goes through eg_qmatmul, which reads the weights in their
 * stored format. Scratch comes from the state's arena (reset per call). To
 * bound memory on long batches, the feed-forward block (the widest
 * activations: 2F floats per token) runs over the tokens in chunks of
 * FFN_CHUNK rows; attention needs all of a text's keys, so q/k/v are
 * computed for the whole batch.
 *
 * A model may carry an FFN hook (eg_llama_set_ffn_hook: GMoE / MixLoRA
 * experts of a fine-tuned adapter). The frozen gate/up/down products stay
 * here, in the model's precision; the hook adds what the experts change.
 * Every path that runs layers (encode_layers, layer caches, live early
 * exit, which runs one layer at a time on shrinking batches) goes through
 * eg_llama_run_layers, so all of them see the hook.
 */
#include "eg_bf16.h"
#include "eg_llama.h"
#include "eg_ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_LEN 64
#define MAX_DIM (1 << 16)
#define MAX_VOCAB (1 << 24)
#define MAX_LAYERS 1024
#define MAX_POSITION (1 << 22)
#define FFN_CHUNK 2048

typedef struct {
    char name[NAME_LEN];
    int ndim;
    int64_t shape[2];
    int set;
    eg_qmat mat;   /* ndim 2: borrowed */
    float *vec;    /* ndim 1: owned copy */
} weight;

/* indices into the weight table */
typedef struct {
    int attn_norm, q, k, v, bq, bk, bv, o, ffn_norm, gate, up, down;
} layer_idx;

struct eg_llama {
    eg_llama_config cfg;
    weight *w;
    size_t n_w;
    int embd, out_norm;
    layer_idx *layers;
    eg_llama_ffn_hook hook;   /* hook.forward == NULL: the frozen FFN */
};

static int add_weight(eg_llama *m, const char *name, int ndim, int64_t d0, int64_t d1)
{
    weight *w = &m->w[m->n_w];
    snprintf(w->name, sizeof w->name, "%s", name);
    w->ndim = ndim;
    w->shape[0] = d0;
    w->shape[1] = ndim == 2 ? d1 : 0;
    return (int)m->n_w++;
}

static eg_status check_cfg(const eg_llama_config *c, eg_err *err)
{
#define RANGE(field, lo, hi)                                                                    \
    if (c->field < (lo) || c->field > (hi)) {                                                   \
        return eg_seterr(err, EG_EINVAL, "llama config: " #field " must be in [%d, %d], got %d", \
                         (int)(lo), (int)(hi), (int)c->field);                                  \
    }
    RANGE(vocab_size, 1, MAX_VOCAB)
    RANGE(hidden_size, 1, MAX_DIM)
    RANGE(num_layers, 1, MAX_LAYERS)
    RANGE(num_heads, 1, 4096)
    RANGE(num_kv_heads, 1, 4096)
    RANGE(head_dim, 2, 4096)
    RANGE(intermediate_size, 1, 1 << 20)
    RANGE(max_position, 1, MAX_POSITION)
#undef RANGE
    if (c->num_heads % c->num_kv_heads != 0) {
        return eg_seterr(err, EG_EINVAL,
                         "llama config: num_kv_heads %d does not divide num_heads %d",
                         c->num_kv_heads, c->num_heads);
    }
    if (c->head_dim % 2 != 0) {
        return eg_seterr(err, EG_EINVAL, "llama config: head_dim must be even for RoPE, got %d",
                         c->head_dim);
    }
    if ((int64_t)c->num_heads * c->head_dim > MAX_DIM) {
        return eg_seterr(err, EG_EINVAL, "llama config: num_heads * head_dim = %lld is too large",
                         (long long)c->num_heads * c->head_dim);
    }
    if (!(c->rms_norm_eps > 0.0f) || !isfinite(c->rms_norm_eps)) {
        return eg_seterr(err, EG_EINVAL, "llama config: rms_norm_eps must be positive, got %g",
                         (double)c->rms_norm_eps);
    }
    if (!(c->rope_theta > 0.0) || !isfinite(c->rope_theta)) {
        return eg_seterr(err, EG_EINVAL, "llama config: rope_theta must be positive, got %g",
                         c->rope_theta);
    }
    if (c->precision != EG_PREC_F32 && c->precision != EG_PREC_BF16
        && c->precision != EG_PREC_INT8) {
        return eg_seterr(err, EG_EINVAL, "llama config: unknown precision %d", c->precision);
    }
    if (c->rope_mode != EG_ROPE_NORM && c->rope_mode != EG_ROPE_NEOX) {
        return eg_seterr(err, EG_EINVAL, "llama config: unknown rope_mode %d", c->rope_mode);
    }
    return EG_OK;
}

eg_status eg_llama_create(eg_llama **out, const eg_llama_config *cfg, eg_err *err)
{
    *out = NULL;
    eg_status st = check_cfg(cfg, err);
    if (st != EG_OK) {
        return st;
    }
    eg_llama *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for a llama model");
    }
    m->cfg = *cfg;
    const int L = cfg->num_layers;
    m->w = calloc((size_t)L * 12 + 2, sizeof *m->w);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    if (m->w == NULL || m->layers == NULL) {
        eg_llama_free(m);
        return eg_seterr(err, EG_ENOMEM, "out of memory for a llama model");
    }
    const int64_t D = cfg->hidden_size, F = cfg->intermediate_size;
    const int64_t QW = (int64_t)cfg->num_heads * cfg->head_dim;
    const int64_t KW = (int64_t)cfg->num_kv_heads * cfg->head_dim;
    m->embd = add_weight(m, "token_embd.weight", 2, cfg->vocab_size, D);
    char nm[NAME_LEN];
    for (int l = 0; l < L; l++) {
        layer_idx *li = &m->layers[l];
#define W(field, suffix, nd, a, b)                                  \
        snprintf(nm, sizeof nm, "blk.%d." suffix, l);               \
        li->field = add_weight(m, nm, nd, a, b);
        W(attn_norm, "attn_norm.weight", 1, D, 0)
        W(q, "attn_q.weight", 2, QW, D)
        W(k, "attn_k.weight", 2, KW, D)
        W(v, "attn_v.weight", 2, KW, D)
        if (cfg->qkv_bias) {
            W(bq, "attn_q.bias", 1, QW, 0)
            W(bk, "attn_k.bias", 1, KW, 0)
            W(bv, "attn_v.bias", 1, KW, 0)
        } else {
            li->bq = li->bk = li->bv = -1;
        }
        W(o, "attn_output.weight", 2, D, QW)
        W(ffn_norm, "ffn_norm.weight", 1, D, 0)
        W(gate, "ffn_gate.weight", 2, F, D)
        W(up, "ffn_up.weight", 2, F, D)
        W(down, "ffn_down.weight", 2, D, F)
#undef W
    }
    m->out_norm = add_weight(m, "output_norm.weight", 1, D, 0);
    *out = m;
    return EG_OK;
}

void eg_llama_free(eg_llama *m)
{
    if (m == NULL) {
        return;
    }
    for (size_t i = 0; m->w != NULL && i < m->n_w; i++) {
        free(m->w[i].vec);
    }
    free(m->w);
    free(m->layers);
    if (m->hook.free != NULL) {
        m->hook.free(m->hook.ctx);
    }
    free(m);
}

eg_status eg_llama_set_ffn_hook(eg_llama *m, const eg_llama_ffn_hook *h, eg_err *err)
{
    if (m->hook.forward != NULL) {
        if (h->free != NULL) {
            h->free(h->ctx);
        }
        return eg_seterr(err, EG_ESTATE, "this llama model already has an FFN hook (one "
                         "fine-tuned FFN per model)");
    }
    if (h->forward == NULL || h->prepare == NULL) {
        if (h->free != NULL) {
            h->free(h->ctx);
        }
        return eg_seterr(err, EG_EINVAL, "an FFN hook needs prepare and forward");
    }
    m->hook = *h;
    return EG_OK;
}

int eg_llama_has_ffn_hook(const eg_llama *m)
{
    return m->hook.forward != NULL;
}

const eg_llama_config *eg_llama_get_config(const eg_llama *m)
{
    return &m->cfg;
}

size_t eg_llama_num_weights(const eg_llama *m)
{
    return m->n_w;
}

void eg_llama_weight_info(const eg_llama *m, size_t i, const char **name, int *ndim,
                          int64_t shape[2])
{
    const weight *w = &m->w[i];
    *name = w->name;
    *ndim = w->ndim;
    shape[0] = w->shape[0];
    shape[1] = w->shape[1];
}

eg_status eg_llama_set_weight(eg_llama *m, const char *name, int type, int ndim,
                              const int64_t *shape, const void *data, eg_err *err)
{
    weight *w = NULL;
    for (size_t i = 0; i < m->n_w; i++) {
        if (strcmp(m->w[i].name, name) == 0) {
            w = &m->w[i];
            break;
        }
    }
    if (w == NULL) {
        return eg_seterr(err, EG_EINVAL, "unknown llama weight %s", name);
    }
    if (ndim != w->ndim || shape[0] != w->shape[0] || (ndim == 2 && shape[1] != w->shape[1])) {
        if (w->ndim == 1) {
            return eg_seterr(err, EG_EINVAL, "%s: expected shape (%lld,), got %d dims (%lld, %lld)",
                             name, (long long)w->shape[0], ndim, (long long)shape[0],
                             ndim > 1 ? (long long)shape[1] : 0LL);
        }
        return eg_seterr(err, EG_EINVAL, "%s: expected shape (%lld, %lld), got %d dims (%lld, %lld)",
                         name, (long long)w->shape[0], (long long)w->shape[1], ndim,
                         (long long)shape[0], ndim > 1 ? (long long)shape[1] : 0LL);
    }
    if (w->ndim == 2) {
        eg_qmat q;
        eg_status st = eg_qmat_init(&q, type, w->shape[0], w->shape[1], data, name, err);
        if (st != EG_OK) {
            return st;
        }
        w->mat = q;
    } else {
        if (type != EG_GGML_F32 && type != EG_GGML_F16 && type != EG_GGML_BF16) {
            return eg_seterr(err, EG_EINVAL, "%s: a vector must be F32, F16 or BF16, got %s", name,
                             eg_ggml_type_name(type));
        }
        float *v = w->vec != NULL ? w->vec : malloc((size_t)w->shape[0] * sizeof(float));
        if (v == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for %s", name);
        }
        eg_dequantize(type, data, v, (size_t)w->shape[0]);
        w->vec = v;
    }
    w->set = 1;
    return EG_OK;
}

eg_status eg_llama_check_complete(const eg_llama *m, eg_err *err)
{
    for (size_t i = 0; i < m->n_w; i++) {
        if (!m->w[i].set) {
            return eg_seterr(err, EG_EINVAL, "llama weight %s was never set", m->w[i].name);
        }
    }
    return EG_OK;
}

/* ---------------------------------------------------------------- forward */

eg_status eg_llama_embed(const eg_llama *m, eg_bert_state *s, const int32_t *ids,
                         const int64_t *offsets, int n_seq, eg_err *err)
{
    const eg_llama_config *c = &m->cfg;
    const int D = c->hidden_size;
    eg_status st = eg_llama_check_complete(m, err);
    if (st != EG_OK) {
        return st;
    }
    /* the widest row of any product: q/k/v together, gate/up together, or D */
    size_t widest = (size_t)(2 * c->intermediate_size);
    size_t qkv = (size_t)(c->num_heads + 2 * c->num_kv_heads) * (size_t)c->head_dim;
    widest = qkv > widest ? qkv : widest;
    widest = (size_t)D > widest ? (size_t)D : widest;
    const eg_state_limits lim = {c->vocab_size, c->max_position, "the context length", widest};
    st = eg_state_start(s, ids, offsets, n_seq, D, &lim, err);
    if (st != EG_OK) {
        return st;
    }
    const size_t n_tok = s->n_tok;
    const eg_qmat *E = &m->w[m->embd].mat;
#pragma omp parallel for schedule(static) if ((double)n_tok * D >= (double)(1 << 18))
    for (long t = 0; t < (long)n_tok; t++) {
        eg_qmat_row(E, ids[t], s->h + (size_t)t * D);
    }
    s->layer = 0;
    return EG_OK;
}

/* h (n, D) += x (n, D) */
static void add_inplace(float *h, const float *x, size_t n)
{
#pragma omp parallel for schedule(static) if (n >= ((size_t)1 << 18))
    for (long i = 0; i < (long)n; i++) {
        h[i] += x[i];
    }
}

eg_status eg_llama_run_layers(const eg_llama *m, eg_bert_state *s, int last, eg_err *err)
{
    const eg_llama_config *c = &m->cfg;
    const int D = c->hidden_size, F = c->intermediate_size, dh = c->head_dim;
    const int QW = c->num_heads * dh, KW = c->num_kv_heads * dh, W3 = QW + 2 * KW;
    if (s->layer < 0) {
        return eg_seterr(err, EG_ESTATE, "llama state is empty: call embed first");
    }
    if (s->hidden != D) {
        return eg_seterr(err, EG_ESTATE, "llama state holds width %d, the model has %d",
                         s->hidden, D);
    }
    if (last < s->layer || last > c->num_layers) {
        return eg_seterr(err, EG_EINVAL,
                         "cannot run to layer %d from layer %d (the model has %d layers)", last,
                         s->layer, c->num_layers);
    }
    if (last == s->layer || s->n_tok == 0) {
        s->layer = last;
        return EG_OK;
    }
    const size_t n = s->n_tok;
    int max_len = 0;
    for (int i = 0; i < s->n_seq; i++) {
        int len = (int)(s->offsets[i + 1] - s->offsets[i]);
        max_len = len > max_len ? len : max_len;
    }
    const size_t chunk = n < FFN_CHUNK ? n : FFN_CHUNK;
    int nth = eg_omp_max_threads();
    eg_arena_reset(&s->arena);
    float *x = eg_arena_alloc_n(&s->arena, n, (size_t)D * sizeof(float));
    float *qkv = eg_arena_alloc_n(&s->arena, n, (size_t)W3 * sizeof(float));
    float *ctx = eg_arena_alloc_n(&s->arena, n, (size_t)QW * sizeof(float));
    float *gu = eg_arena_alloc_n(&s->arena, chunk, (size_t)2 * F * sizeof(float));
    int32_t *pos = eg_arena_alloc_n(&s->arena, n, sizeof(int32_t));
    float *cos_t = eg_arena_alloc_n(&s->arena, (size_t)max_len, (size_t)(dh / 2) * sizeof(float));
    float *sin_t = eg_arena_alloc_n(&s->arena, (size_t)max_len, (size_t)(dh / 2) * sizeof(float));
    float *att = eg_arena_alloc_n(&s->arena, (size_t)(nth > 0 ? nth : 1),
                                  eg_attention_scratch(max_len, dh) * sizeof(float));
    if (x == NULL || qkv == NULL || ctx == NULL || gu == NULL || pos == NULL || cos_t == NULL
        || sin_t == NULL || att == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for llama activations of %zu tokens", n);
    }
    /* with a hook: the mixture's SwiGLU input abar (chunk, F), its extra
     * output terms ylora (chunk, D) and the hook's own scratch, taken once
     * for every layer of this call (the arena is not reset per layer) */
    const eg_llama_ffn_hook *hook = m->hook.forward != NULL ? &m->hook : NULL;
    float *abar = NULL, *ylora = NULL;
    void *hook_scratch = NULL;
    if (hook != NULL) {
        abar = eg_arena_alloc_n(&s->arena, chunk, (size_t)F * sizeof(float));
        ylora = eg_arena_alloc_n(&s->arena, chunk, (size_t)D * sizeof(float));
        if (abar == NULL || ylora == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for the FFN hook's activations of "
                             "%zu tokens", chunk);
        }
        eg_status hst = hook->prepare(hook->ctx, &s->arena, chunk, &hook_scratch, err);
        if (hst != EG_OK) {
            return hst;
        }
    }
    for (int i = 0; i < s->n_seq; i++) {
        for (int64_t t = s->offsets[i]; t < s->offsets[i + 1]; t++) {
            pos[t] = (int32_t)(t - s->offsets[i]);
        }
    }
    eg_rope_table(cos_t, sin_t, max_len, dh, c->rope_theta);
    const eg_attention_shape ash = {c->num_heads, c->num_kv_heads, dh, 1, (size_t)W3,
                                    (size_t)W3, (size_t)QW};
    eg_status st = EG_OK;
    /* the state at num_layers is the final norm of the last layer's output */
    const int run_to = last;
    const int prec = c->precision;   /* of the weight products (eg_bf16.h) */
    for (int l = s->layer; l < run_to && l < c->num_layers; l++) {
        const layer_idx *li = &m->layers[l];
        const weight *w = m->w;
        eg_rmsnorm_forward(x, s->h, w[li->attn_norm].vec, n, D, c->rms_norm_eps);
        st = eg_qmatmul_prec(qkv, W3, x, D, n, &w[li->q].mat,
                             li->bq >= 0 ? w[li->bq].vec : NULL, prec, err);
        if (st == EG_OK) {
            st = eg_qmatmul_prec(qkv + QW, W3, x, D, n, &w[li->k].mat,
                                 li->bk >= 0 ? w[li->bk].vec : NULL, prec, err);
        }
        if (st == EG_OK) {
            st = eg_qmatmul_prec(qkv + QW + KW, W3, x, D, n, &w[li->v].mat,
                                 li->bv >= 0 ? w[li->bv].vec : NULL, prec, err);
        }
        if (st != EG_OK) {
            return st;
        }
        eg_rope_forward(qkv, W3, n, pos, c->num_heads, dh, cos_t, sin_t, c->rope_mode);
        eg_rope_forward(qkv + QW, W3, n, pos, c->num_kv_heads, dh, cos_t, sin_t, c->rope_mode);
        eg_attention_forward(ctx, qkv, qkv + QW, qkv + QW + KW, NULL, NULL, NULL, s->offsets,
                             s->n_seq, &ash, att);
        /* the output projection writes into x (free until the next norm) */
        st = eg_qmatmul_prec(x, D, ctx, QW, n, &w[li->o].mat, NULL, prec, err);
        if (st != EG_OK) {
            return st;
        }
        add_inplace(s->h, x, n * (size_t)D);
        eg_rmsnorm_forward(x, s->h, w[li->ffn_norm].vec, n, D, c->rms_norm_eps);
        for (size_t r0 = 0; r0 < n; r0 += chunk) {
            const size_t nr = n - r0 < chunk ? n - r0 : chunk;
            const float *xr = x + r0 * D;
            if (hook != NULL) {
                /* G0, U0 as two (nr, F) blocks, the layout the MoE code reads */
                float *G0 = gu, *U0 = gu + nr * (size_t)F;
                st = eg_qmatmul_prec(G0, F, xr, D, nr, &w[li->gate].mat, NULL, prec, err);
                if (st == EG_OK) {
                    st = eg_qmatmul_prec(U0, F, xr, D, nr, &w[li->up].mat, NULL, prec, err);
                }
                if (st == EG_OK) {
                    st = hook->forward(hook->ctx, hook_scratch, l, abar, ylora, xr, G0, U0, nr,
                                       err);
                }
                /* out = abar W2^T + ylora, summed in this order as the
                 * trainer's forward does (llama_train.c fwd_layer) */
                if (st == EG_OK) {
                    st = eg_qmatmul_prec(x + r0 * D, D, abar, F, nr, &w[li->down].mat, NULL, prec,
                                         err);
                }
                if (st != EG_OK) {
                    return st;
                }
                add_inplace(x + r0 * D, ylora, nr * (size_t)D);
                continue;
            }
            st = eg_qmatmul_prec(gu, 2 * (size_t)F, xr, D, nr, &w[li->gate].mat, NULL, prec, err);
            if (st == EG_OK) {
                st = eg_qmatmul_prec(gu + F, 2 * (size_t)F, xr, D, nr, &w[li->up].mat, NULL, prec,
                                     err);
            }
            if (st != EG_OK) {
                return st;
            }
            eg_swiglu_forward(gu, 2 * (size_t)F, gu, gu + F, 2 * (size_t)F, nr, F);
            /* x's rows r0.. are consumed: the down projection reuses them */
            st = eg_qmatmul_prec(x + r0 * D, D, gu, 2 * (size_t)F, nr, &w[li->down].mat, NULL,
                                 prec, err);
            if (st != EG_OK) {
                return st;
            }
        }
        add_inplace(s->h, x, n * (size_t)D);
        s->layer = l + 1;
    }
    if (last == c->num_layers) {
        eg_rmsnorm_forward(s->h, s->h, m->w[m->out_norm].vec, n, D, c->rms_norm_eps);
    }
    s->layer = last;
    return EG_OK;
}

void eg_state_pool_last(const eg_bert_state *s, float *out)
{
    const size_t D = (size_t)s->hidden;
    for (int i = 0; i < s->n_seq; i++) {
        if (s->offsets[i + 1] > s->offsets[i]) {
            memcpy(out + (size_t)i * D, s->h + (size_t)(s->offsets[i + 1] - 1) * D,
                   D * sizeof(float));
        } else {
            memset(out + (size_t)i * D, 0, D * sizeof(float));
        }
    }
}

double eg_llama_flops(const eg_llama_config *c, const int64_t *lengths, int n_seq)
{
    const double D = c->hidden_size, F = c->intermediate_size;
    const double QW = (double)c->num_heads * c->head_dim;
    const double KW = (double)c->num_kv_heads * c->head_dim;
    double tok = 0.0, sq = 0.0;
    for (int i = 0; i < n_seq; i++) {
        tok += (double)lengths[i];
        sq += (double)lengths[i] * (double)(lengths[i] + 1) / 2.0;
    }
    /* per token: q, k, v, o projections and the three FFN matrices;
     * per text: causal scores and weighted sums over L(L+1)/2 pairs */
    double per_layer = tok * 2.0 * (D * (QW + 2.0 * KW) + QW * D + 3.0 * D * F)
                       + 2.0 * 2.0 * sq * QW;
    return per_layer * c->num_layers;
}

void eg_llama_get_layer(const eg_llama *m, int layer, eg_llama_layer_weights *out)
{
    const layer_idx *li = &m->layers[layer];
    const weight *w = m->w;
    out->attn_norm = w[li->attn_norm].vec;
    out->ffn_norm = w[li->ffn_norm].vec;
    out->bq = li->bq >= 0 ? w[li->bq].vec : NULL;
    out->bk = li->bk >= 0 ? w[li->bk].vec : NULL;
    out->bv = li->bv >= 0 ? w[li->bv].vec : NULL;
    out->q = &w[li->q].mat;
    out->k = &w[li->k].mat;
    out->v = &w[li->v].mat;
    out->o = &w[li->o].mat;
    out->gate = &w[li->gate].mat;
    out->up = &w[li->up].mat;
    out->down = &w[li->down].mat;
}

const eg_qmat *eg_llama_embedding(const eg_llama *m)
{
    return &m->w[m->embd].mat;
}

const float *eg_llama_output_norm(const eg_llama *m)
{
    return m->w[m->out_norm].vec;
}
