/*
 * bert.c — the BERT-family encoder: parameters, packed states and the
 * layer-by-layer forward pass (see eg_bert.h for the contract).
 *
 * Parameters live in one 64-byte aligned buffer described by a table
 * {Hugging Face name, offset, shape, set?}. Each layer's query, key and value
 * weights (and biases) sit back to back, so the three (D, D) tensors form the
 * (3D, D) matrix of one fused QKV GEMM without any repacking.
 *
 * One layer on a packed state of n tokens (post-LN BERT):
 *     qkv  = h Wqkv^T                       GEMM (n, 3D)
 *     ctx  = attention(qkv + bqkv)          per (sequence, head), OpenMP
 *     h    = LN((ctx Wo^T + bo) + h)        GEMM (n, D) + fused add/LN
 *     f    = gelu(h Wi^T + bi)              GEMM (n, I) + fused bias/GELU
 *     h    = LN((f Wo2^T + bo2) + h)        GEMM (n, D) + fused add/LN
 * Scratch (qkv, ctx, f, attention rows) comes from the state's arena, reset
 * on every call, so a steady workload allocates once; h is grown on demand.
 */
#include "eg_bert.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NAME_LEN 96
/* Generous bounds that keep every product below well inside size_t/int. */
#define MAX_DIM (1 << 16)
#define MAX_VOCAB (1 << 24)
#define MAX_LAYERS 4096

typedef struct {
    char name[NAME_LEN];
    size_t offset; /* in floats from the start of the buffer */
    int ndim;
    int64_t shape[2];
    int set;
} param_desc;

/* Offsets (in floats) of one layer's tensors. */
typedef struct {
    size_t wqkv, bqkv, wo, bo, ln1_w, ln1_b, wi, bi, wo2, bo2, ln2_w, ln2_b;
} layer_offsets;

struct eg_bert {
    eg_bert_config cfg;
    float *buf;
    size_t n_floats;
    param_desc *params;
    size_t n_params;
    size_t word, pos, type, eln_w, eln_b;
    layer_offsets *layers;
};

/* ------------------------------------------------------------- profiling */

static eg_bert_profile g_prof;

void eg_bert_profile_get(eg_bert_profile *out)
{
    *out = g_prof;
}

void eg_bert_profile_reset(void)
{
    memset(&g_prof, 0, sizeof g_prof);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int profiling(void)
{
    const char *e = getenv("EG_BERT_PROFILE");
    return e != NULL && e[0] == '1';
}

/* ---------------------------------------------------------------- model */

/* Append a parameter to the table, its offset rounded up to 16 floats
 * unless `packed` (q, k, v must follow one another exactly). */
static eg_status add_param(eg_bert *m, size_t *cursor, int packed, const char *name, int ndim,
                           int64_t d0, int64_t d1, size_t *offset_out, eg_err *err)
{
    size_t off = *cursor;
    if (!packed) {
        size_t r;
        if (eg_add_ovf(off, 15, &r)) {
            return eg_seterr(err, EG_EOVERFLOW, "BERT parameter buffer size overflows");
        }
        off = r & ~(size_t)15;
    }
    size_t count = (size_t)d0;
    if (ndim == 2 && eg_mul_ovf(count, (size_t)d1, &count)) {
        return eg_seterr(err, EG_EOVERFLOW, "BERT parameter %s size overflows", name);
    }
    size_t end;
    if (eg_add_ovf(off, count, &end)) {
        return eg_seterr(err, EG_EOVERFLOW, "BERT parameter buffer size overflows");
    }
    param_desc *p = &m->params[m->n_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->offset = off;
    p->ndim = ndim;
    p->shape[0] = d0;
    p->shape[1] = ndim == 2 ? d1 : 0;
    p->set = 0;
    *offset_out = off;
    *cursor = end;
    return EG_OK;
}

static eg_status check_cfg(const eg_bert_config *c, eg_err *err)
{
    struct { const char *name; int v; int max; } f[] = {
        {"vocab_size", c->vocab_size, MAX_VOCAB},
        {"hidden_size", c->hidden_size, MAX_DIM},
        {"num_hidden_layers", c->num_layers, MAX_LAYERS},
        {"num_attention_heads", c->num_heads, MAX_DIM},
        {"intermediate_size", c->intermediate_size, 4 * MAX_DIM},
        {"max_position_embeddings", c->max_position, MAX_DIM},
        {"type_vocab_size", c->type_vocab_size, MAX_DIM},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        if (f[i].v < 1 || f[i].v > f[i].max) {
            return eg_seterr(err, EG_EINVAL, "BERT config: %s must be in [1, %d], got %d",
                             f[i].name, f[i].max, f[i].v);
        }
    }
    if (c->hidden_size % c->num_heads != 0) {
        return eg_seterr(err, EG_EINVAL,
                         "BERT config: hidden_size %d is not divisible by num_attention_heads %d",
                         c->hidden_size, c->num_heads);
    }
    if (!(c->layer_norm_eps >= 0.0f) || c->layer_norm_eps > 1.0f) {
        return eg_seterr(err, EG_EINVAL, "BERT config: layer_norm_eps must be in [0, 1], got %g",
                         (double)c->layer_norm_eps);
    }
    return EG_OK;
}

eg_status eg_bert_create(eg_bert **out, const eg_bert_config *cfg, eg_err *err)
{
    *out = NULL;
    eg_status st = check_cfg(cfg, err);
    if (st != EG_OK) {
        return st;
    }
    eg_bert *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory creating the BERT model");
    }
    m->cfg = *cfg;
    const int L = cfg->num_layers;
    const int64_t D = cfg->hidden_size, I = cfg->intermediate_size;
    size_t n_params_max = 5 + 16 * (size_t)L;
    m->params = calloc(n_params_max, sizeof *m->params);
    m->layers = calloc((size_t)L, sizeof *m->layers);
    if (m->params == NULL || m->layers == NULL) {
        eg_bert_free(m);
        return eg_seterr(err, EG_ENOMEM, "out of memory creating the BERT model");
    }
    size_t cur = 0, dummy;
    char nm[NAME_LEN];
#define ADD(packed, name, nd, a, b, off)                                             \
    do {                                                                             \
        st = add_param(m, &cur, (packed), (name), (nd), (a), (b), (off), err);       \
        if (st != EG_OK) {                                                           \
            eg_bert_free(m);                                                         \
            return st;                                                               \
        }                                                                            \
    } while (0)
    ADD(0, "embeddings.word_embeddings.weight", 2, cfg->vocab_size, D, &m->word);
    ADD(0, "embeddings.position_embeddings.weight", 2, cfg->max_position, D, &m->pos);
    ADD(0, "embeddings.token_type_embeddings.weight", 2, cfg->type_vocab_size, D, &m->type);
    ADD(0, "embeddings.LayerNorm.weight", 1, D, 0, &m->eln_w);
    ADD(0, "embeddings.LayerNorm.bias", 1, D, 0, &m->eln_b);
    for (int l = 0; l < L; l++) {
        layer_offsets *lo = &m->layers[l];
        static const char *qkv[3] = {"query", "key", "value"};
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.%s.weight", l, qkv[k]);
            ADD(k > 0, nm, 2, D, D, k == 0 ? &lo->wqkv : &dummy);
        }
        for (int k = 0; k < 3; k++) {
            snprintf(nm, sizeof nm, "encoder.layer.%d.attention.self.%s.bias", l, qkv[k]);
            ADD(k > 0, nm, 1, D, 0, k == 0 ? &lo->bqkv : &dummy);
        }
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.dense.weight", l);
        ADD(0, nm, 2, D, D, &lo->wo);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.dense.bias", l);
        ADD(0, nm, 1, D, 0, &lo->bo);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        ADD(0, nm, 1, D, 0, &lo->ln1_w);
        snprintf(nm, sizeof nm, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        ADD(0, nm, 1, D, 0, &lo->ln1_b);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.weight", l);
        ADD(0, nm, 2, I, D, &lo->wi);
        snprintf(nm, sizeof nm, "encoder.layer.%d.intermediate.dense.bias", l);
        ADD(0, nm, 1, I, 0, &lo->bi);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.weight", l);
        ADD(0, nm, 2, D, I, &lo->wo2);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.dense.bias", l);
        ADD(0, nm, 1, D, 0, &lo->bo2);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.weight", l);
        ADD(0, nm, 1, D, 0, &lo->ln2_w);
        snprintf(nm, sizeof nm, "encoder.layer.%d.output.LayerNorm.bias", l);
        ADD(0, nm, 1, D, 0, &lo->ln2_b);
    }
#undef ADD
    size_t bytes;
    if (eg_mul_ovf(cur, sizeof(float), &bytes)) {
        eg_bert_free(m);
        return eg_seterr(err, EG_EOVERFLOW, "BERT parameter buffer size overflows");
    }
    m->buf = eg_aligned_alloc(bytes);
    if (m->buf == NULL) {
        eg_bert_free(m);
        return eg_seterr(err, EG_ENOMEM, "out of memory allocating %zu bytes of BERT weights",
                         bytes);
    }
    memset(m->buf, 0, bytes);
    m->n_floats = cur;
    *out = m;
    return EG_OK;
}

void eg_bert_free(eg_bert *m)
{
    if (m == NULL) {
        return;
    }
    eg_aligned_free(m->buf);
    free(m->params);
    free(m->layers);
    free(m);
}

const eg_bert_config *eg_bert_get_config(const eg_bert *m)
{
    return &m->cfg;
}

size_t eg_bert_num_params(const eg_bert *m)
{
    return m->n_params;
}

size_t eg_bert_num_floats(const eg_bert *m)
{
    return m->n_floats;
}

void eg_bert_param_info(const eg_bert *m, size_t i, const char **name, int *ndim,
                        int64_t shape[2])
{
    const param_desc *p = &m->params[i];
    *name = p->name;
    *ndim = p->ndim;
    shape[0] = p->shape[0];
    shape[1] = p->shape[1];
}

static param_desc *find_param(const eg_bert *m, const char *name)
{
    if (strncmp(name, "bert.", 5) == 0) {
        name += 5;
    }
    for (size_t i = 0; i < m->n_params; i++) {
        if (strcmp(m->params[i].name, name) == 0) {
            return &m->params[i];
        }
    }
    return NULL;
}

static void shape_str(char *buf, size_t n, int ndim, const int64_t *shape)
{
    if (ndim == 1) {
        snprintf(buf, n, "(%lld,)", (long long)shape[0]);
    } else if (ndim == 2) {
        snprintf(buf, n, "(%lld, %lld)", (long long)shape[0], (long long)shape[1]);
    } else {
        snprintf(buf, n, "a %d-d array", ndim);
    }
}

eg_status eg_bert_set_param(eg_bert *m, const char *name, const float *data, int ndim,
                            const int64_t *shape, eg_err *err)
{
    param_desc *p = find_param(m, name);
    if (p == NULL) {
        return eg_seterr(err, EG_EINVAL, "unknown BERT tensor %.200s", name);
    }
    int ok = ndim == p->ndim && shape[0] == p->shape[0] && (ndim == 1 || shape[1] == p->shape[1]);
    if (!ok) {
        char want[64], got[64];
        shape_str(want, sizeof want, p->ndim, p->shape);
        shape_str(got, sizeof got, ndim, shape);
        return eg_seterr(err, EG_EINVAL, "tensor %s has shape %s, expected %s", p->name, got,
                         want);
    }
    size_t count = (size_t)p->shape[0] * (size_t)(p->ndim == 2 ? p->shape[1] : 1);
    memcpy(m->buf + p->offset, data, count * sizeof(float));
    p->set = 1;
    return EG_OK;
}

const float *eg_bert_get_param(const eg_bert *m, const char *name, size_t *count)
{
    const param_desc *p = find_param(m, name);
    if (p == NULL) {
        return NULL;
    }
    *count = (size_t)p->shape[0] * (size_t)(p->ndim == 2 ? p->shape[1] : 1);
    return m->buf + p->offset;
}

eg_status eg_bert_check_complete(const eg_bert *m, eg_err *err)
{
    for (size_t i = 0; i < m->n_params; i++) {
        if (!m->params[i].set) {
            return eg_seterr(err, EG_EINVAL, "BERT weights incomplete: tensor %s is missing",
                             m->params[i].name);
        }
    }
    return EG_OK;
}

/* ---------------------------------------------------------------- state */

void eg_bert_state_init(eg_bert_state *s)
{
    memset(s, 0, sizeof *s);
    s->layer = -1;
    eg_arena_init(&s->arena);
}

void eg_bert_state_free(eg_bert_state *s)
{
    free(s->offsets);
    eg_aligned_free(s->h);
    eg_arena_free(&s->arena);
    eg_bert_state_init(s);
}

eg_status eg_state_reserve(eg_bert_state *s, int n_seq, size_t n_tok, int D, eg_err *err)
{
    if ((size_t)n_seq + 1 > s->seq_cap) {
        int64_t *o = realloc(s->offsets, ((size_t)n_seq + 1) * sizeof *o);
        if (o == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for %d sequence offsets", n_seq);
        }
        s->offsets = o;
        s->seq_cap = (size_t)n_seq + 1;
    }
    size_t need, bytes;
    if (eg_mul_ovf(n_tok, (size_t)D, &need) || eg_mul_ovf(need, sizeof(float), &bytes)) {
        return eg_seterr(err, EG_EOVERFLOW, "hidden states of %zu tokens overflow", n_tok);
    }
    if (n_tok > s->tok_cap || D != s->hidden) {
        /* grow by 1.5x so a slowly growing workload reallocates rarely */
        size_t cap = n_tok;
        if (D == s->hidden && s->tok_cap <= SIZE_MAX / 3 && s->tok_cap + s->tok_cap / 2 > cap) {
            cap = s->tok_cap + s->tok_cap / 2;
        }
        if (eg_mul_ovf(cap, (size_t)D, &need) || eg_mul_ovf(need, sizeof(float), &bytes)) {
            return eg_seterr(err, EG_EOVERFLOW, "hidden states of %zu tokens overflow", cap);
        }
        float *h = eg_aligned_alloc(bytes);
        if (h == NULL) {
            return eg_seterr(err, EG_ENOMEM, "out of memory for hidden states (%zu bytes)", bytes);
        }
        eg_aligned_free(s->h);
        s->h = h;
        s->tok_cap = cap;
        s->hidden = D;
    }
    return EG_OK;
}

eg_status eg_state_start(eg_bert_state *s, const int32_t *ids, const int64_t *offsets, int n_seq,
                         int D, const eg_state_limits *lim, eg_err *err)
{
    if (n_seq < 0) {
        return eg_seterr(err, EG_EINVAL, "number of sequences must be >= 0, got %d", n_seq);
    }
    if (n_seq > 0 && offsets[0] != 0) {
        return eg_seterr(err, EG_EINVAL, "offsets must start at 0, got %lld",
                         (long long)offsets[0]);
    }
    for (int i = 0; i < n_seq; i++) {
        int64_t len = offsets[i + 1] - offsets[i];
        if (len < 1) {
            return eg_seterr(err, EG_EINVAL,
                             "sequence %d is empty (every sequence needs at least one token)", i);
        }
        if (len > lim->max_len) {
            return eg_seterr(err, EG_EINVAL, "sequence %d has %lld tokens, more than %s %d", i,
                             (long long)len, lim->max_len_name, lim->max_len);
        }
    }
    size_t n_tok = n_seq > 0 ? (size_t)offsets[n_seq] : 0;
    /* every product dimension must fit in int: n_tok times the widest row */
    if (n_tok > (size_t)INT_MAX / lim->widest_row) {
        return eg_seterr(err, EG_EINVAL, "batch of %zu tokens is too large; use smaller batches",
                         n_tok);
    }
    for (size_t t = 0; t < n_tok; t++) {
        if (ids[t] < 0 || ids[t] >= lim->vocab_size) {
            return eg_seterr(err, EG_EINVAL,
                             "token id %d at position %zu is outside the vocabulary [0, %d)",
                             (int)ids[t], t, lim->vocab_size);
        }
    }
    eg_status st = eg_state_reserve(s, n_seq, n_tok, D, err);
    if (st != EG_OK) {
        return st;
    }
    if (n_seq > 0) {
        memcpy(s->offsets, offsets, ((size_t)n_seq + 1) * sizeof(int64_t));
    } else {
        s->offsets[0] = 0;
    }
    s->n_seq = n_seq;
    s->n_tok = n_tok;
    return EG_OK;
}

eg_status eg_bert_embed(const eg_bert *m, eg_bert_state *s, const int32_t *ids,
                        const int64_t *offsets, int n_seq, eg_err *err)
{
    const eg_bert_config *c = &m->cfg;
    const int D = c->hidden_size;
    eg_status st = eg_bert_check_complete(m, err);
    if (st != EG_OK) {
        return st;
    }
    /* every GEMM dimension must fit in int: n_tok * 3D and n_tok * I */
    const eg_state_limits lim = {c->vocab_size, c->max_position, "max_position_embeddings",
                                 (size_t)(c->intermediate_size > 3 * D ? c->intermediate_size
                                                                       : 3 * D)};
    st = eg_state_start(s, ids, offsets, n_seq, D, &lim, err);
    if (st != EG_OK) {
        return st;
    }
    const size_t n_tok = s->n_tok;
    double t0 = now_s();
    const float *word = m->buf + m->word, *pos = m->buf + m->pos, *type = m->buf + m->type;
#pragma omp parallel for schedule(static) if ((double)n_tok * D >= (double)(1 << 20))
    for (long i = 0; i < (long)n_seq; i++) {
        for (int64_t t = offsets[i]; t < offsets[i + 1]; t++) {
            const float *w = word + (size_t)ids[t] * D;
            const float *p = pos + (size_t)(t - offsets[i]) * D;
            float *h = s->h + (size_t)t * D;
            /* the order of Hugging Face's BertEmbeddings: (word + type) + position */
            for (int k = 0; k < D; k++) {
                h[k] = (w[k] + type[k]) + p[k];
            }
        }
    }
    eg_bert_layernorm_forward(s->h, s->h, m->buf + m->eln_w, m->buf + m->eln_b, n_tok, D,
                              c->layer_norm_eps);
    s->layer = 0;
    if (profiling()) {
        g_prof.embed += now_s() - t0;
    }
    return EG_OK;
}

eg_status eg_bert_run_layers(const eg_bert *m, eg_bert_state *s, int last, eg_err *err)
{
    const eg_bert_config *c = &m->cfg;
    const int D = c->hidden_size, I = c->intermediate_size, H = c->num_heads;
    if (s->layer < 0) {
        return eg_seterr(err, EG_ESTATE, "BERT state is empty: call embed first");
    }
    if (s->hidden != D) {
        return eg_seterr(err, EG_ESTATE, "BERT state holds width %d, the model has %d",
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
    int64_t max_len = 0;
    for (int i = 0; i < s->n_seq; i++) {
        int64_t len = s->offsets[i + 1] - s->offsets[i];
        max_len = len > max_len ? len : max_len;
    }
    int nth = eg_omp_max_threads();
    eg_arena_reset(&s->arena);
    float *qkv = eg_arena_alloc_n(&s->arena, n, (size_t)3 * D * sizeof(float));
    float *ctx = eg_arena_alloc_n(&s->arena, n, (size_t)D * sizeof(float));
    float *ffn = eg_arena_alloc_n(&s->arena, n, (size_t)I * sizeof(float));
    float *att = eg_arena_alloc_n(&s->arena, (size_t)(nth > 0 ? nth : 1),
                                  eg_bert_attention_scratch((int)max_len, D / H) * sizeof(float));
    if (qkv == NULL || ctx == NULL || ffn == NULL || att == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for BERT activations of %zu tokens", n);
    }
    const int prof = profiling();
    const float *W = m->buf;
    const int N = (int)n;
    for (int l = s->layer; l < last; l++) {
        const layer_offsets *o = &m->layers[l];
        double t0 = prof ? now_s() : 0.0, t1;
        eg_sgemm(0, 1, N, 3 * D, D, 1.0f, s->h, D, W + o->wqkv, D, 0.0f, qkv, 3 * D);
        if (prof) { t1 = now_s(); g_prof.qkv_gemm += t1 - t0; t0 = t1; }
        eg_bert_attention_forward_bias(ctx, qkv, W + o->bqkv, s->offsets, s->n_seq, D, H, att);
        if (prof) { t1 = now_s(); g_prof.attention += t1 - t0; t0 = t1; }
        /* the attention output projection reuses qkv's first n*D floats */
        float *tmp = qkv;
        eg_sgemm(0, 1, N, D, D, 1.0f, ctx, D, W + o->wo, D, 0.0f, tmp, D);
        if (prof) { t1 = now_s(); g_prof.out_gemm += t1 - t0; t0 = t1; }
        eg_bert_residual_layernorm_forward(s->h, tmp, W + o->bo, s->h, W + o->ln1_w, W + o->ln1_b,
                                           n, D, c->layer_norm_eps);
        if (prof) { t1 = now_s(); g_prof.layernorm += t1 - t0; t0 = t1; }
        eg_sgemm(0, 1, N, I, D, 1.0f, s->h, D, W + o->wi, D, 0.0f, ffn, I);
        if (prof) { t1 = now_s(); g_prof.ffn_in_gemm += t1 - t0; t0 = t1; }
        eg_bert_bias_gelu_forward(ffn, ffn, W + o->bi, n, I);
        if (prof) { t1 = now_s(); g_prof.gelu += t1 - t0; t0 = t1; }
        eg_sgemm(0, 1, N, D, I, 1.0f, ffn, I, W + o->wo2, I, 0.0f, tmp, D);
        if (prof) { t1 = now_s(); g_prof.ffn_out_gemm += t1 - t0; t0 = t1; }
        eg_bert_residual_layernorm_forward(s->h, tmp, W + o->bo2, s->h, W + o->ln2_w,
                                           W + o->ln2_b, n, D, c->layer_norm_eps);
        if (prof) { t1 = now_s(); g_prof.layernorm += t1 - t0; }
        s->layer = l + 1;
    }
    return EG_OK;
}

eg_status eg_bert_compact(eg_bert_state *s, const int *keep, int n_keep, eg_err *err)
{
    if (s->layer < 0) {
        return eg_seterr(err, EG_ESTATE, "BERT state is empty: nothing to compact");
    }
    if (n_keep < 0 || n_keep > s->n_seq) {
        return eg_seterr(err, EG_EINVAL, "cannot keep %d of %d sequences", n_keep, s->n_seq);
    }
    for (int i = 0; i < n_keep; i++) {
        if (keep[i] < 0 || keep[i] >= s->n_seq || (i > 0 && keep[i] <= keep[i - 1])) {
            return eg_seterr(err, EG_EINVAL,
                             "keep must be strictly increasing indices in [0, %d); entry %d is %d",
                             s->n_seq, i, keep[i]);
        }
    }
    const size_t D = (size_t)s->hidden;
    int64_t dst = 0;
    /* keep[] increases, so every destination is at or before its source and
     * memmove in this order never overwrites rows still to be moved */
    for (int i = 0; i < n_keep; i++) {
        int64_t lo = s->offsets[keep[i]], hi = s->offsets[keep[i] + 1];
        if (lo != dst) {
            memmove(s->h + (size_t)dst * D, s->h + (size_t)lo * D,
                    (size_t)(hi - lo) * D * sizeof(float));
        }
        s->offsets[i] = dst;
        dst += hi - lo;
    }
    s->offsets[n_keep] = dst;
    s->n_seq = n_keep;
    s->n_tok = (size_t)dst;
    return EG_OK;
}

double eg_bert_flops(const eg_bert_config *c, const int64_t *lengths, int n_seq)
{
    const double D = c->hidden_size, I = c->intermediate_size;
    double tok = 0.0, sq = 0.0;
    for (int i = 0; i < n_seq; i++) {
        tok += (double)lengths[i];
        sq += (double)lengths[i] * (double)lengths[i];
    }
    /* per token: QKV 2*3D*D, attention output 2*D*D, FFN 2*2*D*I;
     * per sequence: scores and weighted sum 2 * 2 * L^2 * D */
    double per_layer = tok * (2.0 * 3.0 * D * D + 2.0 * D * D + 4.0 * D * I) + 4.0 * sq * D;
    return per_layer * c->num_layers;
}
