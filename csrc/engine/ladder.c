/*
 * ladder.c — the ENGINE G-Ladder model: parameter layout and initialisation,
 * the ladder-at-a-time forward, the summed exit-head loss, the backward and
 * the AdamW step. Built only from the ops in eg_ops.h and eg_optim.h.
 *
 * Per ladder i (0-based here; ALGORITHMS.md counts from 1):
 *   p_i = Linear(ReLU(LayerNorm(Linear(H_i))))                  projector
 *   x_0 = p_0;  x_i = a_i p_i + (1 - a_i) z_{i-1},  a_i = sigmoid(alpha_i / T)
 *   z_i = GNN_i(x_i): each conv is followed by norm -> act -> dropout, except
 *         the last conv of the last ladder, which is followed by nothing
 *   o_i = [z_i(root) ; mean_subgraph z_i],  logits_i = head_i(o_i)
 * Heads: exit_heads.i for i < K-1 when early_exit, the classifier for K-1.
 */
#include "eg_bf16.h"
#include "eg_engine.h"
#include "eg_ops.h"
#include "eg_optim.h"

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LADDERS 64

typedef struct {
    int in, out;
    size_t w, b, w2, as, ad;   /* sage: lin_l.weight, lin_l.bias, lin_r.weight; gcn: lin.weight, bias;
                                  gat: lin.weight, bias, -, att_src, att_dst */
    size_t nw, nb;             /* LayerNorm / BatchNorm affine after the conv */
    size_t rm, rv, nbt;        /* BatchNorm running statistics (buffers) */
    int post;                  /* norm -> act -> dropout after the conv */
} layer_off;

typedef struct {
    size_t p0w, p0b, p1w, p1b, p3w, p3b;
    layer_off L[2];
    size_t alpha;
    size_t hw, hb;
    int has_head;
} ladder_off;

typedef struct {
    float *in, *conv, *s1, *s2, *s3, *s4, *nout, *nmean, *nrstd, *aout, *mask, *out;
} layer_act;

typedef struct {
    const float *H;   /* this ladder's states: arena copy, or borrowed for one call */
    const uint16_t *Hp; /* bf16 kernel path: H packed for the dW product (else NULL) */
    float *l1, *mean, *rstd, *r, *p, *x, *z, *o, *logits, *probs;   /* l1 .. p: U rows */
    float a;
    layer_act L[2];
} ladder_act;

struct eg_ladder {
    eg_ladder_config cfg;
    int nparams, cap_params;
    eg_param_desc *desc;
    size_t total;
    float *param, *grad, *m, *v;
    long step;
    ladder_off lo[MAX_LADDERS];
    /* batch state */
    eg_arena arena;
    int begun, next, have_loss, training, compacted;
    int states_kept;   /* every forward of this batch kept (or borrows) its states: backward allowed */
    uint64_t seed;
    int64_t N, G, E;
    int64_t *graph_ptr, *labels;
    /* Shared state rows (eg_ladder_set_rows): the states hold U rows and
     * node n uses row rows[n]; urow_ptr/urow_nodes (U+1, N) list each row's
     * nodes in increasing order. rows == NULL: one row per node (U == N). */
    int64_t U;
    const int64_t *rows;
    int64_t *urow_ptr, *urow_nodes;
    eg_gnn_graph g;
    ladder_act act[MAX_LADDERS];
};

/* ------------------------------------------------------------ parameters */

static size_t add_param(eg_ladder *m, int *ok, int decay, int ndim, int64_t s0, int64_t s1, int64_t s2,
                        const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

static size_t add_param(eg_ladder *m, int *ok, int decay, int ndim, int64_t s0, int64_t s1, int64_t s2,
                        const char *fmt, ...)
{
    if (!*ok) {
        return 0;
    }
    if (m->nparams == m->cap_params) {
        int nc = m->cap_params ? 2 * m->cap_params : 64;
        eg_param_desc *d = realloc(m->desc, (size_t)nc * sizeof *d);
        if (d == NULL) {
            *ok = 0;
            return 0;
        }
        m->desc = d;
        m->cap_params = nc;
    }
    eg_param_desc *d = &m->desc[m->nparams++];
    memset(d, 0, sizeof *d);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->name, sizeof d->name, fmt, ap);
    va_end(ap);
    d->ndim = ndim;
    d->shape[0] = s0;
    d->shape[1] = s1;
    d->shape[2] = s2;
    size_t size = 1;
    for (int i = 0; i < ndim; i++) {
        if (eg_mul_ovf(size, (size_t)d->shape[i], &size)) {
            *ok = 0;
            return 0;
        }
    }
    d->size = size;
    /* keep every tensor 64-byte aligned inside the buffers */
    size_t padded = (size + 15) & ~(size_t)15;
    d->offset = m->total;
    d->decay = decay;
    d->trainable = 1;
    if (eg_add_ovf(m->total, padded, &m->total)) {
        *ok = 0;
    }
    return d->offset;
}

static void init_uniform(float *p, size_t n, float bound, uint64_t seed, uint64_t stream)
{
    uint64_t s = eg_rng_derive(seed, stream);
    for (size_t i = 0; i < n; i++) {
        p[i] = bound * (2.0f * eg_rng_uniform(&s) - 1.0f);
    }
}

static void init_const(float *p, size_t n, float c)
{
    for (size_t i = 0; i < n; i++) {
        p[i] = c;
    }
}

static int layer_in(const eg_ladder_config *c, int j) { return j == 0 ? c->reduced_dim : c->hidden; }
static int layer_out(const eg_ladder_config *c, int j)
{
    return (c->gnn_layers == 2 && j == 0) ? c->hidden : c->reduced_dim;
}

eg_status eg_ladder_create(eg_ladder **out, const eg_ladder_config *cfg, uint64_t seed, eg_err *err)
{
    *out = NULL;
    const eg_ladder_config *c = cfg;
    if (c->num_ladders < 1 || c->num_ladders > MAX_LADDERS) {
        return eg_seterr(err, EG_EINVAL, "ladder: number of ladders must be in [1, %d], got %d",
                         MAX_LADDERS, c->num_ladders);
    }
    if (c->in_dim < 1 || c->reduced_dim < 1 || c->hidden < 1 || c->in_dim > (1 << 20) ||
        c->reduced_dim > (1 << 16) || c->hidden > (1 << 16)) {
        return eg_seterr(err, EG_EINVAL, "ladder: dimensions must be positive (in_dim %d, reduced_dim %d, hidden %d)",
                         c->in_dim, c->reduced_dim, c->hidden);
    }
    if (c->num_classes < 2 || c->num_classes > (1 << 20)) {
        return eg_seterr(err, EG_EINVAL, "ladder: num_classes must be in [2, 2^20], got %d", c->num_classes);
    }
    if (c->gnn < EG_GNN_SAGE || c->gnn > EG_GNN_GAT) {
        return eg_seterr(err, EG_EINVAL, "ladder: unknown gnn kind %d", c->gnn);
    }
    if (c->gnn_layers < 1 || c->gnn_layers > 2) {
        return eg_seterr(err, EG_EINVAL, "ladder: gnn_layers must be 1 or 2, got %d", c->gnn_layers);
    }
    if (c->act != EG_ACT_ELU && c->act != EG_ACT_RELU) {
        return eg_seterr(err, EG_EINVAL, "ladder: unknown activation %d", c->act);
    }
    if (c->norm != EG_NORM_ID && c->norm != EG_NORM_LN && c->norm != EG_NORM_BN) {
        return eg_seterr(err, EG_EINVAL, "ladder: unknown norm %d", c->norm);
    }
    if (!(c->dropout >= 0.0f && c->dropout < 1.0f)) {
        return eg_seterr(err, EG_EINVAL, "ladder: dropout must be in [0, 1), got %g", (double)c->dropout);
    }
    if (!(c->T > 0.0f) || !isfinite(c->T)) {
        return eg_seterr(err, EG_EINVAL, "ladder: T must be a positive number, got %g", (double)c->T);
    }
    if (c->precision != EG_PREC_F32 && c->precision != EG_PREC_BF16) {
        return eg_seterr(err, EG_EINVAL, "ladder: unknown precision %d (0 float32, 1 bfloat16)",
                         c->precision);
    }
    if (c->gnn == EG_GNN_GAT) {
        for (int j = 0; j < c->gnn_layers; j++) {
            if (c->heads < 1 || layer_out(c, j) % c->heads != 0) {
                return eg_seterr(err, EG_EINVAL,
                                 "ladder: GAT layer width %d is not divisible by heads=%d",
                                 layer_out(c, j), c->heads);
            }
        }
    }
    eg_ladder *m = calloc(1, sizeof *m);
    if (m == NULL) {
        return eg_seterr(err, EG_ENOMEM, "ladder: out of memory");
    }
    m->cfg = *c;
    eg_arena_init(&m->arena);
    int ok = 1;
    const int K = c->num_ladders, D = c->in_dim, k = c->reduced_dim, C = c->num_classes;
    for (int i = 0; i < K; i++) {
        ladder_off *lo = &m->lo[i];
        lo->p0w = add_param(m, &ok, 1, 2, k, D, 0, "ladders.%d.projector.0.weight", i);
        lo->p0b = add_param(m, &ok, 1, 1, k, 0, 0, "ladders.%d.projector.0.bias", i);
        lo->p1w = add_param(m, &ok, 1, 1, k, 0, 0, "ladders.%d.projector.1.weight", i);
        lo->p1b = add_param(m, &ok, 1, 1, k, 0, 0, "ladders.%d.projector.1.bias", i);
        lo->p3w = add_param(m, &ok, 1, 2, k, k, 0, "ladders.%d.projector.3.weight", i);
        lo->p3b = add_param(m, &ok, 1, 1, k, 0, 0, "ladders.%d.projector.3.bias", i);
        for (int j = 0; j < c->gnn_layers; j++) {
            layer_off *L = &lo->L[j];
            L->in = layer_in(c, j);
            L->out = layer_out(c, j);
            L->post = !(i == K - 1 && j == c->gnn_layers - 1);
            if (c->gnn == EG_GNN_SAGE) {
                L->w = add_param(m, &ok, 1, 2, L->out, L->in, 0, "ladders.%d.gnn.%d.lin_l.weight", i, j);
                L->b = add_param(m, &ok, 1, 1, L->out, 0, 0, "ladders.%d.gnn.%d.lin_l.bias", i, j);
                L->w2 = add_param(m, &ok, 1, 2, L->out, L->in, 0, "ladders.%d.gnn.%d.lin_r.weight", i, j);
            } else if (c->gnn == EG_GNN_GCN) {
                L->w = add_param(m, &ok, 1, 2, L->out, L->in, 0, "ladders.%d.gnn.%d.lin.weight", i, j);
                L->b = add_param(m, &ok, 1, 1, L->out, 0, 0, "ladders.%d.gnn.%d.bias", i, j);
            } else {
                int F = L->out / c->heads;
                L->w = add_param(m, &ok, 1, 2, L->out, L->in, 0, "ladders.%d.gnn.%d.lin.weight", i, j);
                L->as = add_param(m, &ok, 1, 3, 1, c->heads, F, "ladders.%d.gnn.%d.att_src", i, j);
                L->ad = add_param(m, &ok, 1, 3, 1, c->heads, F, "ladders.%d.gnn.%d.att_dst", i, j);
                L->b = add_param(m, &ok, 1, 1, L->out, 0, 0, "ladders.%d.gnn.%d.bias", i, j);
            }
            if (c->norm != EG_NORM_ID && L->post) {
                L->nw = add_param(m, &ok, 1, 1, L->out, 0, 0, "ladders.%d.norms.%d.weight", i, j);
                L->nb = add_param(m, &ok, 1, 1, L->out, 0, 0, "ladders.%d.norms.%d.bias", i, j);
            }
            if (c->norm == EG_NORM_BN && L->post) {
                L->rm = add_param(m, &ok, 0, 1, L->out, 0, 0, "ladders.%d.norms.%d.running_mean", i, j);
                L->rv = add_param(m, &ok, 0, 1, L->out, 0, 0, "ladders.%d.norms.%d.running_var", i, j);
                L->nbt = add_param(m, &ok, 0, 0, 0, 0, 0, "ladders.%d.norms.%d.num_batches_tracked", i, j);
                if (ok) {
                    m->desc[m->nparams - 1].trainable = 0;
                    m->desc[m->nparams - 2].trainable = 0;
                    m->desc[m->nparams - 3].trainable = 0;
                }
            }
        }
    }
    for (int i = 1; i < K; i++) {
        m->lo[i].alpha = add_param(m, &ok, 1, 0, 0, 0, 0, "gates.%d.alpha", i);
    }
    for (int i = 0; i < K; i++) {
        m->lo[i].has_head = c->early_exit || i == K - 1;
        if (c->early_exit && i < K - 1) {
            m->lo[i].hw = add_param(m, &ok, 1, 2, C, 2 * k, 0, "exit_heads.%d.weight", i);
            m->lo[i].hb = add_param(m, &ok, 1, 1, C, 0, 0, "exit_heads.%d.bias", i);
        }
    }
    m->lo[K - 1].hw = add_param(m, &ok, 1, 2, C, 2 * k, 0, "classifier.weight");
    m->lo[K - 1].hb = add_param(m, &ok, 1, 1, C, 0, 0, "classifier.bias");
    size_t bytes;
    if (ok && !eg_mul_ovf(m->total, sizeof(float), &bytes)) {
        m->param = eg_aligned_alloc(bytes);
        m->grad = eg_aligned_alloc(bytes);
        m->m = eg_aligned_alloc(bytes);
        m->v = eg_aligned_alloc(bytes);
    }
    if (!ok || m->param == NULL || m->grad == NULL || m->m == NULL || m->v == NULL) {
        eg_ladder_free(m);
        return eg_seterr(err, EG_ENOMEM, "ladder: out of memory for parameters");
    }
    memset(m->param, 0, bytes);
    memset(m->grad, 0, bytes);
    memset(m->m, 0, bytes);
    memset(m->v, 0, bytes);
    /* initialisers: torch.nn.Linear / LayerNorm; PyG glorot for GCN and GAT */
    for (int pi = 0; pi < m->nparams; pi++) {
        eg_param_desc *d = &m->desc[pi];
        float *p = m->param + d->offset;
        const char *nm = d->name;
        size_t len = strlen(nm);
        int is_bias = len >= 4 && strcmp(nm + len - 4, "bias") == 0;
        if (!d->trainable) {
            init_const(p, d->size, strstr(nm, "running_var") != NULL ? 1.0f : 0.0f);
        } else if (strstr(nm, "projector.1.") != NULL || strstr(nm, ".norms.") != NULL) {
            init_const(p, d->size, is_bias ? 0.0f : 1.0f);
        } else if (strstr(nm, "gates.") != NULL) {
            init_const(p, d->size, 0.0f);
        } else if (c->gnn != EG_GNN_SAGE && strstr(nm, ".gnn.") != NULL) {
            if (is_bias) {
                init_const(p, d->size, 0.0f);
            } else {
                int64_t a = d->shape[d->ndim - 2], b = d->shape[d->ndim - 1];
                init_uniform(p, d->size, (float)sqrt(6.0 / (double)(a + b)), seed, (uint64_t)pi);
            }
        } else {
            /* Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias */
            int64_t fan_in = is_bias ? m->desc[pi - 1].shape[1] : d->shape[1];
            if (is_bias && strstr(nm, "lin_l.bias") != NULL) {
                fan_in = m->desc[pi - 1].shape[1];
            }
            init_uniform(p, d->size, (float)(1.0 / sqrt((double)fan_in)), seed, (uint64_t)pi);
        }
    }
    *out = m;
    return EG_OK;
}

void eg_ladder_free(eg_ladder *m)
{
    if (m == NULL) {
        return;
    }
    eg_arena_free(&m->arena);
    eg_aligned_free(m->param);
    eg_aligned_free(m->grad);
    eg_aligned_free(m->m);
    eg_aligned_free(m->v);
    free(m->desc);
    free(m);
}

const eg_ladder_config *eg_ladder_get_config(const eg_ladder *m) { return &m->cfg; }
int eg_ladder_num_params(const eg_ladder *m) { return m->nparams; }
const eg_param_desc *eg_ladder_param(const eg_ladder *m, int i)
{
    return (i >= 0 && i < m->nparams) ? &m->desc[i] : NULL;
}
size_t eg_ladder_total_floats(const eg_ladder *m) { return m->total; }
float *eg_ladder_params(eg_ladder *m) { return m->param; }
float *eg_ladder_grads(eg_ladder *m) { return m->grad; }
float *eg_ladder_adam_m(eg_ladder *m) { return m->m; }
float *eg_ladder_adam_v(eg_ladder *m) { return m->v; }
long *eg_ladder_step_count(eg_ladder *m) { return &m->step; }
int eg_ladder_has_head(const eg_ladder *m, int i)
{
    return i >= 0 && i < m->cfg.num_ladders && m->lo[i].has_head;
}

int64_t eg_ladder_state_rows(const eg_ladder *m) { return m->begun ? m->U : 0; }

void eg_ladder_batch_dims(const eg_ladder *m, int64_t *num_nodes, int64_t *num_graphs)
{
    *num_nodes = m->begun ? m->N : 0;
    *num_graphs = m->begun ? m->G : 0;
}

void eg_ladder_zero_grad(eg_ladder *m)
{
    memset(m->grad, 0, m->total * sizeof(float));
}

void eg_ladder_adamw_step(eg_ladder *m, float lr, float weight_decay, float beta1, float beta2,
                          float eps)
{
    m->step++;
    for (int pi = 0; pi < m->nparams; pi++) {
        const eg_param_desc *d = &m->desc[pi];
        if (!d->trainable) {
            continue;
        }
        eg_adamw_config c = {lr, beta1, beta2, eps, d->decay ? weight_decay : 0.0f};
        eg_adamw_step(m->param + d->offset, m->grad + d->offset, m->m + d->offset,
                      m->v + d->offset, NULL, d->size, &c, m->step);
    }
}

/* ---------------------------------------------------------------- batch */

#define ALLOC(ptr, count)                                                             \
    do {                                                                              \
        (ptr) = eg_arena_alloc_n(&m->arena, (size_t)(count) > 0 ? (size_t)(count) : 1, \
                                 sizeof *(ptr));                                      \
        if ((ptr) == NULL) {                                                          \
            return eg_seterr(err, EG_ENOMEM, "ladder: out of memory for activations"); \
        }                                                                             \
    } while (0)

eg_status eg_ladder_begin(eg_ladder *m, int64_t G, const int64_t *graph_ptr, int64_t N,
                          const int64_t *ptr, const int64_t *src, int training, uint64_t seed,
                          eg_err *err)
{
    m->begun = 0;
    m->have_loss = 0;
    eg_arena_reset(&m->arena);
    int widest = m->cfg.in_dim > 2 * m->cfg.reduced_dim ? m->cfg.in_dim : 2 * m->cfg.reduced_dim;
    if (widest < m->cfg.hidden) {
        widest = m->cfg.hidden;
    }
    if (G < 1 || N < G || N > INT_MAX / 4 || (size_t)N > SIZE_MAX / 16 / (size_t)widest) {
        return eg_seterr(err, EG_EINVAL, "ladder batch: need 1 <= subgraphs (%lld) <= nodes (%lld) < 2^29",
                         (long long)G, (long long)N);
    }
    if (graph_ptr[0] != 0 || graph_ptr[G] != N) {
        return eg_seterr(err, EG_EINVAL, "ladder batch: graph_ptr must start at 0 and end at num_nodes");
    }
    for (int64_t g = 0; g < G; g++) {
        if (graph_ptr[g + 1] <= graph_ptr[g]) {
            return eg_seterr(err, EG_EINVAL, "ladder batch: subgraph %lld is empty or graph_ptr decreases",
                             (long long)g);
        }
    }
    int64_t E = ptr[N];
    if (ptr[0] != 0 || E < 0 || E > INT64_MAX / 64) {
        return eg_seterr(err, EG_EINVAL, "ladder batch: bad indptr");
    }
    for (int64_t v = 0; v < N; v++) {
        if (ptr[v + 1] < ptr[v]) {
            return eg_seterr(err, EG_EINVAL, "ladder batch: indptr decreases at node %lld", (long long)v);
        }
        for (int64_t j = ptr[v]; j < ptr[v + 1]; j++) {
            if (src[j] < 0 || src[j] >= N || src[j] == v) {
                return eg_seterr(err, EG_EINVAL,
                                 "ladder batch: edge %lld has source %lld (must be in [0, %lld), no self-loops)",
                                 (long long)j, (long long)src[j], (long long)N);
            }
        }
    }
    m->N = N;
    m->G = G;
    m->E = E;
    m->U = N;
    m->rows = NULL;
    m->urow_ptr = m->urow_nodes = NULL;
    int64_t *gp, *p, *s, *rp, *rd, *re;
    ALLOC(gp, G + 1);
    ALLOC(p, N + 1);
    ALLOC(s, E);
    ALLOC(rp, N + 1);
    ALLOC(rd, E);
    ALLOC(re, E);
    memcpy(gp, graph_ptr, (size_t)(G + 1) * sizeof(int64_t));
    memcpy(p, ptr, (size_t)(N + 1) * sizeof(int64_t));
    if (E > 0) {
        memcpy(s, src, (size_t)E * sizeof(int64_t));
    }
    eg_csr_reverse(rp, rd, re, p, s, N);
    m->graph_ptr = gp;
    m->g = (eg_gnn_graph){N, E, p, s, rp, rd, re};
    m->training = training;
    m->seed = seed;
    m->next = 0;
    m->compacted = 0;
    m->states_kept = 1;
    m->begun = 1;
    memset(m->act, 0, sizeof m->act);
    return EG_OK;
}

eg_status eg_ladder_set_rows(eg_ladder *m, int64_t U, const int64_t *rows, eg_err *err)
{
    if (!m->begun || m->next != 0) {
        return eg_seterr(err, EG_ESTATE, "ladder set_rows: needs a batch begun and no forward step run");
    }
    const int64_t N = m->N;
    if (U < 1 || U > N) {
        return eg_seterr(err, EG_EINVAL, "ladder set_rows: need 1 <= rows (%lld) <= nodes (%lld)",
                         (long long)U, (long long)N);
    }
    int64_t *rp, *rn, *cur, *copy;
    ALLOC(rp, U + 1);
    ALLOC(rn, N);
    ALLOC(cur, U);
    ALLOC(copy, N);
    memset(rp, 0, (size_t)(U + 1) * sizeof *rp);
    for (int64_t n = 0; n < N; n++) {
        if (rows[n] < 0 || rows[n] >= U) {
            return eg_seterr(err, EG_EINVAL, "ladder set_rows: node %lld uses row %lld, outside [0, %lld)",
                             (long long)n, (long long)rows[n], (long long)U);
        }
        rp[rows[n] + 1]++;
    }
    for (int64_t u = 0; u < U; u++) {
        rp[u + 1] += rp[u];
        cur[u] = rp[u];
    }
    for (int64_t n = 0; n < N; n++) {
        rn[cur[rows[n]]++] = n;   /* n increases, so each row's list is in node order */
    }
    memcpy(copy, rows, (size_t)N * sizeof *copy);
    m->U = U;
    m->rows = copy;
    m->urow_ptr = rp;
    m->urow_nodes = rn;
    return EG_OK;
}

static void act_forward(int kind, float *out, const float *in, size_t n)
{
    (kind == EG_ACT_ELU ? eg_elu_forward : eg_relu_forward)(out, in, n);
}

static void act_backward(int kind, float *din, const float *dout, const float *out, size_t n)
{
    (kind == EG_ACT_ELU ? eg_elu_backward : eg_relu_backward)(din, dout, out, n);
}

/* Index of the first row of H (N, D) holding NaN or inf, or -1. The row test
 * has no early exit, so the compiler vectorises it; the search for the row
 * only runs on bad input. */
static int64_t first_nonfinite_row(const float *H, int64_t N, int D)
{
    int bad = 0;
    #pragma omp parallel for schedule(static) reduction(| : bad) if (EG_OMP_WORTH(N, D))
    for (int64_t r = 0; r < N; r++) {
        const float *h = H + (size_t)r * (size_t)D;
        int ok = 1;
        for (int j = 0; j < D; j++) {
            ok &= fabsf(h[j]) <= FLT_MAX;
        }
        bad |= !ok;
    }
    if (!bad) {
        return -1;
    }
    for (int64_t r = 0; r < N; r++) {
        for (int j = 0; j < D; j++) {
            if (!isfinite(H[(size_t)r * D + j])) {
                return r;
            }
        }
    }
    return -1;
}

/* keep_states: copy H into the arena so a later eg_ladder_backward can use it
 * (the public step); otherwise H is only borrowed for this call (the one-call
 * train/predict entry points, which guarantee it outlives the backward) or
 * not needed after it (prediction). */
static eg_status forward_step(eg_ladder *m, int i, const float *H, float *logits, int keep_states,
                              eg_err *err)
{
    const eg_ladder_config *c = &m->cfg;
    if (!m->begun || i != m->next || i >= c->num_ladders) {
        return eg_seterr(err, EG_ESTATE, "ladder: forward_step(%d) out of order (next is %d%s)", i,
                         m->next, m->begun ? "" : ", no batch begun");
    }
    const int N = (int)m->N, D = c->in_dim, k = c->reduced_dim, C = c->num_classes;
    const int prec = c->precision;   /* the heads' tiny products stay float32 */
    /* the projector runs once per state row: U rows, shared by the nodes
     * that use them (eg_ladder_set_rows), or one per node */
    const int U = (int)m->U;
    const int64_t *rows = m->rows;
    const size_t UD = (size_t)U * (size_t)D;
    const ladder_off *lo = &m->lo[i];
    ladder_act *a = &m->act[i];
    const float *P = m->param;
    ALLOC(a->l1, (size_t)U * k);
    /* The bf16 kernel's path packs H once, while it is in cache, in both
     * layouts its products need (rows for l1 = H W0^T now, panels for
     * dW0 = dL1^T H in the backward), checking it for NaN/inf in the same
     * pass; the float H is then not needed again, so it is never copied. */
    const int packed = prec == EG_PREC_BF16 && eg_bf16_kernel_available();
    const int need_grad = keep_states || m->training;   /* a backward may follow */
    int bad = 0;
    a->Hp = NULL;
    if (packed) {
        const size_t kpd = (size_t)((D + 1) / 2) * 2;
        uint16_t *hb, *hp = NULL, *w0;
        ALLOC(hb, (size_t)U * kpd);
        ALLOC(w0, eg_bf16_packed_elems(k, D));
        if (need_grad) {
            ALLOC(hp, eg_bf16_packed_elems(D, U));
            bad = eg_bf16_pack_rows_panels_t(hb, hp, H, (size_t)D, U, D);
        } else {
            bad = first_nonfinite_row(H, U, D) >= 0;
            if (!bad) {
                eg_bf16_pack_rows(hb, H, (size_t)D, (size_t)U, D);
            }
        }
        if (!bad) {
            for (int p0 = 0; p0 < k; p0 += 32) {
                eg_bf16_pack_panel(w0 + (size_t)p0 * kpd, P + lo->p0w + (size_t)p0 * D, (size_t)D,
                                   k - p0 < 32 ? k - p0 : 32, D);
            }
            eg_bf16_gemm_packed(a->l1, (size_t)k, hb, (size_t)U, w0, k, D);
            eg_bias_forward(a->l1, P + lo->p0b, U, k);
            a->Hp = hp;
        }
    } else {
        bad = first_nonfinite_row(H, U, D) >= 0;
    }
    if (bad) {
        return eg_seterr(err, EG_EINVAL,
                         "ladder %d: the layer states contain NaN or inf (state row %lld of the batch)",
                         i, (long long)first_nonfinite_row(H, U, D));
    }
    if (keep_states && !packed) {
        float *copy;
        ALLOC(copy, UD);
        memcpy(copy, H, UD * sizeof(float));
        a->H = copy;
    } else {
        a->H = packed ? NULL : H;
    }
    m->states_kept &= keep_states;
    ALLOC(a->mean, U);
    ALLOC(a->rstd, U);
    ALLOC(a->r, (size_t)U * k);
    ALLOC(a->p, (size_t)U * k);
    if (!packed) {
        eg_linear_forward(a->l1, a->H, P + lo->p0w, P + lo->p0b, U, D, k, prec);
    }
    eg_layernorm_forward(a->r, a->mean, a->rstd, a->l1, P + lo->p1w, P + lo->p1b, U, k);
    eg_relu_forward(a->r, a->r, (size_t)U * k);   /* in place: the backward needs only r */
    eg_linear_forward(a->p, a->r, P + lo->p3w, P + lo->p3b, U, k, k, prec);
    const float *zp = i > 0 ? m->act[i - 1].z : NULL;
    const float gate = i > 0 ? 1.0f / (1.0f + expf(-P[lo->alpha] / c->T)) : 1.0f;
    a->a = gate;
    if (i == 0 && rows == NULL) {
        a->x = a->p;
    } else {
        /* x_n = a p_{row(n)} + (1 - a) z_{i-1, n} */
        ALLOC(a->x, (size_t)N * k);
        #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, k))
        for (int n = 0; n < N; n++) {
            const float *pn = a->p + (size_t)(rows != NULL ? rows[n] : n) * k;
            float *xn = a->x + (size_t)n * k;
            if (zp == NULL) {
                memcpy(xn, pn, (size_t)k * sizeof(float));
            } else {
                const float *zn = zp + (size_t)n * k;
                for (int q = 0; q < k; q++) {
                    xn[q] = gate * pn[q] + (1.0f - gate) * zn[q];
                }
            }
        }
    }
    float *cur = a->x;
    for (int j = 0; j < c->gnn_layers; j++) {
        const layer_off *L = &lo->L[j];
        layer_act *la = &a->L[j];
        size_t no = (size_t)N * L->out;
        la->in = cur;
        ALLOC(la->conv, no);
        if (c->gnn == EG_GNN_SAGE) {
            ALLOC(la->s1, (size_t)N * L->in);
            eg_sage_forward(la->conv, la->s1, cur, P + L->w, P + L->b, P + L->w2, &m->g, L->in, L->out, prec);
        } else if (c->gnn == EG_GNN_GCN) {
            ALLOC(la->s1, no);
            ALLOC(la->s2, N);
            eg_gcn_forward(la->conv, la->s1, la->s2, cur, P + L->w, P + L->b, &m->g, L->in, L->out, prec);
        } else {
            int Hh = c->heads;
            ALLOC(la->s1, no);
            ALLOC(la->s2, (size_t)N * Hh);
            ALLOC(la->s3, (size_t)N * Hh);
            ALLOC(la->s4, (size_t)(m->E + N) * Hh);
            eg_gat_forward(la->conv, la->s1, la->s2, la->s3, la->s4, cur, P + L->w, P + L->as,
                           P + L->ad, P + L->b, &m->g, L->in, Hh, L->out / Hh, prec);
        }
        if (!L->post) {
            cur = la->conv;
            continue;
        }
        if (c->norm == EG_NORM_LN) {
            ALLOC(la->nout, no);
            ALLOC(la->nmean, N);
            ALLOC(la->nrstd, N);
            eg_layernorm_forward(la->nout, la->nmean, la->nrstd, la->conv, P + L->nw, P + L->nb, N, L->out);
        } else if (c->norm == EG_NORM_BN) {
            ALLOC(la->nout, no);
            ALLOC(la->nmean, L->out);
            ALLOC(la->nrstd, L->out);
            if (m->training) {
                if (N < 2) {
                    return eg_seterr(err, EG_EINVAL,
                                     "BatchNorm needs more than one node per training batch (got %d)", N);
                }
                float *var, *Pw = m->param;
                ALLOC(var, L->out);
                eg_batchnorm_forward_train(la->nout, la->nmean, la->nrstd, var, la->conv, P + L->nw,
                                           P + L->nb, N, L->out);
                /* torch: momentum 0.1, unbiased variance in the running estimate */
                for (int q = 0; q < L->out; q++) {
                    Pw[L->rm + q] = 0.9f * Pw[L->rm + q] + 0.1f * la->nmean[q];
                    Pw[L->rv + q] = 0.9f * Pw[L->rv + q] + 0.1f * var[q];
                }
                Pw[L->nbt] += 1.0f;
            } else {
                eg_batchnorm_forward_eval(la->nout, la->nmean, la->nrstd, la->conv, P + L->nw, P + L->nb,
                                          P + L->rm, P + L->rv, N, L->out);
            }
        } else {
            la->nout = la->conv;
        }
        ALLOC(la->aout, no);
        act_forward(c->act, la->aout, la->nout, no);
        if (m->training && c->dropout > 0.0f) {
            ALLOC(la->out, no);
            ALLOC(la->mask, no);
            eg_dropout_forward(la->out, la->mask, la->aout, no, c->dropout,
                               eg_rng_derive(m->seed, (uint64_t)(i * 16 + j)));
        } else {
            la->out = la->aout;
            la->mask = NULL;
        }
        cur = la->out;
    }
    a->z = cur;
    if (lo->has_head) {
        ALLOC(a->o, (size_t)m->G * 2 * k);
        ALLOC(a->logits, (size_t)m->G * C);
        eg_readout_forward(a->o, a->z, m->graph_ptr, m->G, k);
        eg_linear_forward(a->logits, a->o, P + lo->hw, P + lo->hb, (int)m->G, 2 * k, C, EG_PREC_F32);
        if (logits != NULL) {
            memcpy(logits, a->logits, (size_t)m->G * C * sizeof(float));
        }
    }
    m->next = i + 1;
    return EG_OK;
}

eg_status eg_ladder_forward_step(eg_ladder *m, int i, const float *H, float *logits, eg_err *err)
{
    return forward_step(m, i, H, logits, 1, err);
}

eg_status eg_ladder_forward_eval(eg_ladder *m, int i, const float *H, float *logits, eg_err *err)
{
    return forward_step(m, i, H, logits, 0, err);
}

eg_status eg_ladder_loss(eg_ladder *m, const int64_t *labels, float *loss, float *head_losses,
                         eg_err *err)
{
    const eg_ladder_config *c = &m->cfg;
    if (m->compacted) {
        return eg_seterr(err, EG_ESTATE, "ladder: loss is not defined after eg_ladder_keep");
    }
    if (!m->begun || m->next != c->num_ladders) {
        return eg_seterr(err, EG_ESTATE, "ladder: loss needs a full forward (%d of %d ladders run)",
                         m->next, c->num_ladders);
    }
    for (int64_t g = 0; g < m->G; g++) {
        if (labels[g] < 0 || labels[g] >= c->num_classes) {
            return eg_seterr(err, EG_EINVAL, "ladder: label %lld of target %lld is outside [0, %d)",
                             (long long)labels[g], (long long)g, c->num_classes);
        }
    }
    ALLOC(m->labels, m->G);
    memcpy(m->labels, labels, (size_t)m->G * sizeof(int64_t));
    double total = 0.0;
    for (int i = 0; i < c->num_ladders; i++) {
        float li = 0.0f;
        if (m->lo[i].has_head) {
            ALLOC(m->act[i].probs, (size_t)m->G * c->num_classes);
            li = eg_softmax_ce_forward(m->act[i].probs, m->act[i].logits, labels, (int)m->G,
                                       c->num_classes);
            total += li;
        }
        if (head_losses != NULL) {
            head_losses[i] = li;
        }
    }
    *loss = (float)total;
    m->have_loss = 1;
    return EG_OK;
}

eg_status eg_ladder_backward(eg_ladder *m, eg_err *err)
{
    const eg_ladder_config *c = &m->cfg;
    if (!m->have_loss) {
        return eg_seterr(err, EG_ESTATE, "ladder: backward needs eg_ladder_loss first");
    }
    if (!m->states_kept) {
        return eg_seterr(err, EG_ESTATE, "ladder: backward after eg_ladder_forward_eval (states not kept)");
    }
    const int N = (int)m->N, D = c->in_dim, k = c->reduced_dim, C = c->num_classes, K = c->num_ladders;
    const int prec = c->precision;
    const int G = (int)m->G;
    const float *P = m->param;
    float *GR = m->grad;
    const size_t Nk = (size_t)N * k;
    float *dz, *dx_next = NULL, *dlogits, *dout, *t1, *t2, *t3, *scratch;
    int widest = k > c->hidden ? k : c->hidden;
    size_t scr = (size_t)N * widest;
    if (c->gnn == EG_GNN_GAT) {
        size_t g1 = eg_gat_scratch_size(N, m->E, c->heads, widest / c->heads + 1);
        scr = g1 > scr ? g1 : scr;
    }
    ALLOC(dz, (size_t)N * widest);
    ALLOC(dlogits, (size_t)G * C);
    ALLOC(dout, (size_t)G * 2 * k);
    ALLOC(t1, (size_t)N * widest);
    ALLOC(t2, (size_t)N * widest);
    ALLOC(t3, (size_t)N * widest);
    ALLOC(scratch, scr);
    float *dprev;
    ALLOC(dprev, Nk);
    float *dr;
    ALLOC(dr, Nk);
    (void)D;
    for (int i = K - 1; i >= 0; i--) {
        const ladder_off *lo = &m->lo[i];
        ladder_act *a = &m->act[i];
        /* gradient reaching z_i: from ladder i+1's gate and from head i */
        if (i < K - 1) {
            float w = 1.0f - m->act[i + 1].a;
            for (size_t q = 0; q < Nk; q++) {
                dz[q] = w * dx_next[q];
            }
        } else {
            memset(dz, 0, Nk * sizeof(float));
        }
        if (lo->has_head) {
            memset(dlogits, 0, (size_t)G * C * sizeof(float));
            eg_softmax_ce_backward(dlogits, a->probs, m->labels, G, C, 1.0f);
            eg_linear_backward(dout, GR + lo->hw, GR + lo->hb, dlogits, a->o, P + lo->hw, G, 2 * k, C, EG_PREC_F32);
            eg_readout_backward(dz, dout, m->graph_ptr, G, k);
        }
        /* GNN layers, last to first; `cur` holds d(layer output) */
        float *cur = dz;
        for (int j = c->gnn_layers - 1; j >= 0; j--) {
            const layer_off *L = &lo->L[j];
            layer_act *la = &a->L[j];
            size_t no = (size_t)N * L->out;
            float *dconv = cur;
            if (L->post) {
                if (la->mask != NULL) {
                    eg_dropout_backward(t1, cur, la->mask, no);
                } else {
                    memcpy(t1, cur, no * sizeof(float));
                }
                act_backward(c->act, t1, t1, la->aout, no);
                if (c->norm == EG_NORM_LN) {
                    eg_layernorm_backward(t2, GR + L->nw, GR + L->nb, t1, la->conv, P + L->nw,
                                          la->nmean, la->nrstd, N, L->out);
                    dconv = t2;
                } else if (c->norm == EG_NORM_BN) {
                    eg_batchnorm_backward(t2, GR + L->nw, GR + L->nb, t1, la->conv, P + L->nw,
                                          la->nmean, la->nrstd, N, L->out, m->training);
                    dconv = t2;
                } else {
                    dconv = t1;
                }
            }
            /* d input of this conv goes to t3, then becomes `cur` (via dprev for j == 0) */
            float *din = (j == 0) ? dprev : t3;
            if (c->gnn == EG_GNN_SAGE) {
                eg_sage_backward(din, GR + L->w, GR + L->b, GR + L->w2, dconv, la->in, la->s1,
                                 P + L->w, P + L->w2, &m->g, scratch, L->in, L->out, prec);
            } else if (c->gnn == EG_GNN_GCN) {
                eg_gcn_backward(din, GR + L->w, GR + L->b, dconv, la->in, la->s2, P + L->w, &m->g,
                                scratch, L->in, L->out, prec);
            } else {
                int Hh = c->heads;
                eg_gat_backward(din, GR + L->w, GR + L->as, GR + L->ad, GR + L->b, dconv, la->in,
                                la->s1, la->s2, la->s3, la->s4, P + L->w, P + L->as, P + L->ad,
                                &m->g, scratch, L->in, Hh, L->out / Hh, prec);
            }
            if (j > 0) {
                /* move to a buffer not used by the next (earlier) layer's temporaries */
                memcpy(dz, t3, (size_t)N * L->in * sizeof(float));
                cur = dz;
            }
        }
        /* dprev = dL/dx_i.  Gate, then the projector over the U state rows:
         * dp_u = a * (sum of dprev_n over the nodes n using row u) */
        const int64_t *rows = m->rows;
        const int U = (int)m->U;
        const size_t Uk = (size_t)U * k;
        float *dp = dr;
        if (i > 0) {
            const float *zp = m->act[i - 1].z;
            float g = a->a;
            /* one double sum per node row (vectorised), the rows in order */
            double da = 0.0;
            for (int n = 0; n < N; n++) {
                const float *pn = a->p + (size_t)(rows != NULL ? rows[n] : n) * k;
                const float *dn = dprev + (size_t)n * k, *zn = zp + (size_t)n * k;
                double s = 0.0;
                #pragma omp simd reduction(+ : s)
                for (int q = 0; q < k; q++) {
                    s += (double)dn[q] * ((double)pn[q] - (double)zn[q]);
                }
                da += s;
            }
            GR[lo->alpha] += (float)(da * g * (1.0 - g) / c->T);
        }
        if (rows == NULL) {
            for (size_t q = 0; q < Nk; q++) {
                dp[q] = a->a * dprev[q];
            }
        } else {
            const int64_t *rp = m->urow_ptr, *rn = m->urow_nodes;
            const float g = a->a;
            #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, k))
            for (int u = 0; u < U; u++) {
                float *du = dp + (size_t)u * k;
                memset(du, 0, (size_t)k * sizeof(float));
                for (int64_t j = rp[u]; j < rp[u + 1]; j++) {
                    const float *dn = dprev + (size_t)rn[j] * k;
                    for (int q = 0; q < k; q++) {
                        du[q] += dn[q];
                    }
                }
                for (int q = 0; q < k; q++) {
                    du[q] *= g;
                }
            }
        }
        eg_linear_backward(t1, GR + lo->p3w, GR + lo->p3b, dp, a->r, P + lo->p3w, U, k, k, prec);
        eg_relu_backward(t1, t1, a->r, Uk);
        eg_layernorm_backward(t2, GR + lo->p1w, GR + lo->p1b, t1, a->l1, P + lo->p1w, a->mean,
                              a->rstd, U, k);
        if (a->Hp != NULL) {
            /* dW0 += dL1^T H on the panels of H packed by the forward */
            uint16_t *tb;
            ALLOC(tb, (size_t)k * (size_t)((U + 1) / 2) * 2);
            eg_bf16_pack_rows_t(tb, t2, (size_t)k, k, U);
            eg_bf16_gemm_packed_acc(GR + lo->p0w, (size_t)D, tb, (size_t)k, a->Hp, D, U, 1);
            eg_bias_backward(GR + lo->p0b, t2, U, k);
        } else {
            eg_linear_backward(NULL, GR + lo->p0w, GR + lo->p0b, t2, a->H, P + lo->p0w, U, D, k, prec);
        }
        /* keep dL/dx_i for z_{i-1}: swap dprev into dx_next */
        if (i > 0) {
            if (dx_next == NULL) {
                ALLOC(dx_next, Nk);
            }
            memcpy(dx_next, dprev, Nk * sizeof(float));
        }
    }
    return EG_OK;
}

/* ------------------------------------------------------ subset (early exit) */

eg_status eg_ladder_keep(eg_ladder *m, const uint8_t *keep, eg_err *err)
{
    const eg_ladder_config *c = &m->cfg;
    if (!m->begun || m->next < 1 || m->next >= c->num_ladders) {
        return eg_seterr(err, EG_ESTATE, "ladder keep: needs a batch after 1 .. K-1 forward steps (%d run)",
                         m->next);
    }
    if (m->training) {
        return eg_seterr(err, EG_ESTATE, "ladder keep: not allowed on a training batch");
    }
    if (m->rows != NULL) {
        return eg_seterr(err, EG_ESTATE, "ladder keep: not allowed on a batch with shared state rows");
    }
    const int64_t G = m->G, N = m->N;
    int64_t G2 = 0, N2 = 0, E2 = 0;
    for (int64_t g = 0; g < G; g++) {
        if (keep[g]) {
            G2++;
            N2 += m->graph_ptr[g + 1] - m->graph_ptr[g];
            E2 += m->g.ptr[m->graph_ptr[g + 1]] - m->g.ptr[m->graph_ptr[g]];
        }
    }
    if (G2 == 0) {
        return eg_seterr(err, EG_EINVAL, "ladder keep: keeps no subgraph");
    }
    const int k = c->reduced_dim;
    int64_t *gp, *p, *s, *rp, *rd, *re, *newid;
    float *z;
    ALLOC(gp, G2 + 1);
    ALLOC(p, N2 + 1);
    ALLOC(s, E2);
    ALLOC(rp, N2 + 1);
    ALLOC(rd, E2);
    ALLOC(re, E2);
    ALLOC(newid, N);
    ALLOC(z, (size_t)N2 * k);
    const float *zold = m->act[m->next - 1].z;
    int64_t gw = 0, nw = 0, ew = 0;
    gp[0] = 0;
    p[0] = 0;
    for (int64_t g = 0; g < G; g++) {
        if (!keep[g]) {
            continue;
        }
        int64_t a = m->graph_ptr[g], b = m->graph_ptr[g + 1];
        for (int64_t v = a; v < b; v++) {
            newid[v] = nw + (v - a);
        }
        for (int64_t v = a; v < b; v++) {
            memcpy(z + (size_t)nw * k, zold + (size_t)v * k, (size_t)k * sizeof(float));
            for (int64_t j = m->g.ptr[v]; j < m->g.ptr[v + 1]; j++) {
                /* subgraphs are disjoint: a source outside [a, b) is a malformed batch */
                int64_t u = m->g.src[j];
                if (u < a || u >= b) {
                    return eg_seterr(err, EG_EINVAL, "ladder keep: edge %lld crosses subgraphs",
                                     (long long)j);
                }
                s[ew++] = newid[u];
            }
            nw++;
            p[nw] = ew;
        }
        gp[++gw] = nw;
    }
    eg_csr_reverse(rp, rd, re, p, s, N2);
    m->graph_ptr = gp;
    m->g = (eg_gnn_graph){N2, E2, p, s, rp, rd, re};
    m->N = N2;
    m->U = N2;
    m->G = G2;
    m->E = E2;
    m->act[m->next - 1].z = z;
    m->compacted = 1;
    m->have_loss = 0;
    return EG_OK;
}

/* ------------------------------------------------------- one-call training */

eg_status eg_ladder_train_step(eg_ladder *m, int64_t G, const int64_t *graph_ptr, int64_t N,
                               const int64_t *ptr, const int64_t *src, int64_t U,
                               const int64_t *rows, const float *const *H, const int64_t *labels,
                               uint64_t seed, float lr, float weight_decay, float *loss, eg_err *err)
{
    eg_status st = eg_ladder_begin(m, G, graph_ptr, N, ptr, src, 1, seed, err);
    if (st == EG_OK && rows != NULL) {
        st = eg_ladder_set_rows(m, U, rows, err);
    }
    for (int i = 0; st == EG_OK && i < m->cfg.num_ladders; i++) {
        /* H outlives this call, so the backward below may borrow it */
        st = forward_step(m, i, H[i], NULL, 0, err);
    }
    m->states_kept = 1;
    if (st == EG_OK) {
        st = eg_ladder_loss(m, labels, loss, NULL, err);
    }
    if (st == EG_OK) {
        eg_ladder_zero_grad(m);
        st = eg_ladder_backward(m, err);
    }
    if (st == EG_OK) {
        eg_ladder_adamw_step(m, lr, weight_decay, 0.9f, 0.999f, 1e-8f);
    }
    /* the borrowed pointers die with the caller's arrays: forbid a later backward */
    m->states_kept = 0;
    m->have_loss = 0;
    return st;
}
