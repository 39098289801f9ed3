/*
 * sampler.c — per-target subgraph samplers (1-hop ego graph, random walk with
 * restart) and the assembly of their disjoint union into one batch.
 *
 * Each target draws from its own RNG stream eg_rng_derive(seed, target), so a
 * subgraph depends only on (graph, target, parameters, seed). The batch is
 * assembled in two passes over the targets (OpenMP, any schedule): pass 1
 * samples and counts nodes and edges, a prefix sum places every subgraph,
 * pass 2 samples again (same stream, same result) and writes in place. The
 * result is therefore identical for any thread count, and no subgraph is
 * ever held twice in memory.
 */
#include "eg_graph.h"

#include <stdlib.h>
#include <string.h>

void eg_batch_free(eg_batch *b)
{
    if (b == NULL) {
        return;
    }
    free(b->nodes);
    free(b->graph_ptr);
    free(b->indptr);
    free(b->indices);
    memset(b, 0, sizeof *b);
}

/* Is x in the ascending array a[0..n)? Returns its position or -1. */
static int64_t find_sorted(const int64_t *a, int64_t n, int64_t x)
{
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (lo < n && a[lo] == x) ? lo : -1;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Where pass 2 writes one subgraph; all NULL in pass 1 (count only). */
typedef struct {
    int64_t *nodes;     /* batch nodes of this subgraph */
    int64_t *indptr;    /* row starts of this subgraph's nodes */
    int64_t *indices;   /* this subgraph's edge slots */
    int64_t node_base;  /* batch index of the root */
    int64_t edge_base;  /* batch offset of the first edge */
} sink;

typedef struct {
    int64_t *a;         /* khop: selected neighbours; rw: visit sequence */
    int64_t *b;         /* rw: edge keys */
    int64_t *c;         /* rw: first-visit order of unique nodes */
    int64_t *d;
} scratch;

/* ------------------------------------------------------------------ khop */

static void khop_one(const eg_graph *g, int64_t t, int64_t cap, uint64_t seed, scratch *s,
                     const sink *out, int64_t *nn_out, int64_t *ne_out)
{
    const int64_t *ptr = g->indptr, *idx = g->indices;
    int64_t deg = ptr[t + 1] - ptr[t];
    const int64_t *nb = idx + ptr[t];
    int64_t ns = deg;
    if (cap > 0 && deg > cap) {
        /* Knuth's selection sampling: uniform `cap`-subset, kept in order. */
        uint64_t rng = eg_rng_derive(seed, (uint64_t)t);
        int64_t need = cap;
        int64_t k = 0;
        for (int64_t j = 0; j < deg && need > 0; j++) {
            if ((int64_t)eg_rng_below(&rng, (uint64_t)(deg - j)) < need) {
                s->a[k++] = nb[j];
                need--;
            }
        }
        nb = s->a;
        ns = cap;
    }
    if (out != NULL) {
        out->nodes[0] = t;
        memcpy(out->nodes + 1, nb, (size_t)ns * sizeof(int64_t));
    }
    int64_t ne = 0;
    for (int64_t j = 0; j <= ns; j++) {
        int64_t v = j == 0 ? t : nb[j - 1];
        const int64_t *vn = idx + ptr[v];
        int64_t dv = ptr[v + 1] - ptr[v];
        if (out != NULL) {
            out->indptr[j] = out->edge_base + ne;
        }
        if (dv <= ns + 1) {
            /* walk v's neighbours, keep those in the subgraph (root first) */
            if (j != 0 && find_sorted(vn, dv, t) >= 0) {
                if (out != NULL) {
                    out->indices[ne] = out->node_base;
                }
                ne++;
            }
            for (int64_t q = 0; q < dv; q++) {
                if (vn[q] == t) {
                    continue;
                }
                int64_t pos = find_sorted(nb, ns, vn[q]);
                if (pos >= 0) {
                    if (out != NULL) {
                        out->indices[ne] = out->node_base + 1 + pos;
                    }
                    ne++;
                }
            }
        } else {
            /* few subgraph nodes, many neighbours: look each node up in v's row */
            for (int64_t l = 0; l <= ns; l++) {
                if (l == j) {
                    continue;
                }
                int64_t w = l == 0 ? t : nb[l - 1];
                if (find_sorted(vn, dv, w) >= 0) {
                    if (out != NULL) {
                        out->indices[ne] = out->node_base + l;
                    }
                    ne++;
                }
            }
        }
    }
    *nn_out = ns + 1;
    *ne_out = ne;
}

/* -------------------------------------------------------------------- rw */

typedef struct {
    int64_t steps;
    float restart;
} rw_params;

static int cmp_pair(const void *a, const void *b)
{
    const int64_t *x = a, *y = b;
    if (x[0] != y[0]) {
        return (x[0] > y[0]) - (x[0] < y[0]);
    }
    return (x[1] > y[1]) - (x[1] < y[1]);
}

/* Scratch: a (2*(steps+1)) visit pairs, b (2*steps) edge keys,
 * c (steps+1) sorted first-visit orders, d (2*steps) traversed endpoints. */
static void rw_one(const eg_graph *g, int64_t t, const rw_params *p, uint64_t seed, scratch *s,
                   const sink *out, int64_t *nn_out, int64_t *ne_out)
{
    const int64_t *ptr = g->indptr, *idx = g->indices;
    uint64_t rng = eg_rng_derive(seed, (uint64_t)t);
    int64_t *vis = s->a;        /* (id, order) pairs */
    int64_t *trav = s->d;       /* traversed (u, v) */
    int64_t nv = 0, nt = 0, cur = t;
    vis[0] = t;
    vis[1] = 0;
    nv = 1;
    for (int64_t step = 0; step < p->steps; step++) {
        if (p->restart > 0.0f && eg_rng_uniform(&rng) < p->restart) {
            cur = t;
            continue;
        }
        int64_t d = ptr[cur + 1] - ptr[cur];
        if (d == 0) {
            cur = t;
            continue;
        }
        int64_t nxt = idx[ptr[cur] + (int64_t)eg_rng_below(&rng, (uint64_t)d)];
        trav[2 * nt] = cur;
        trav[2 * nt + 1] = nxt;
        nt++;
        vis[2 * nv] = nxt;
        vis[2 * nv + 1] = nv;
        nv++;
        cur = nxt;
    }
    /* unique nodes by id, keeping the first visit */
    qsort(vis, (size_t)nv, 2 * sizeof(int64_t), cmp_pair);
    int64_t nu = 0;
    for (int64_t i = 0; i < nv; i++) {
        if (nu == 0 || vis[2 * (nu - 1)] != vis[2 * i]) {
            vis[2 * nu] = vis[2 * i];
            vis[2 * nu + 1] = vis[2 * i + 1];
            nu++;
        }
    }
    /* local id = rank of the first-visit order */
    int64_t *ord = s->c;
    for (int64_t i = 0; i < nu; i++) {
        ord[i] = vis[2 * i + 1];
    }
    qsort(ord, (size_t)nu, sizeof(int64_t), cmp_i64);
    if (out != NULL) {
        for (int64_t i = 0; i < nu; i++) {
            out->nodes[find_sorted(ord, nu, vis[2 * i + 1])] = vis[2 * i];
        }
    }
    /* edges in both directions, key = dst_local * nu + src_local */
    int64_t *keys = s->b;
    int64_t nk = 0;
    for (int64_t e = 0; e < nt; e++) {
        int64_t lu = -1, lv = -1;
        int64_t lo = 0, hi = nu;
        for (int side = 0; side < 2; side++) {
            int64_t x = trav[2 * e + side];
            lo = 0;
            hi = nu;
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (vis[2 * mid] < x) {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            int64_t l = find_sorted(ord, nu, vis[2 * lo + 1]);
            if (side == 0) {
                lu = l;
            } else {
                lv = l;
            }
        }
        keys[nk++] = lv * nu + lu;
        keys[nk++] = lu * nu + lv;
    }
    qsort(keys, (size_t)nk, sizeof(int64_t), cmp_i64);
    int64_t ne = 0;
    for (int64_t i = 0; i < nk; i++) {
        if (ne == 0 || keys[ne - 1] != keys[i]) {
            keys[ne++] = keys[i];
        }
    }
    if (out != NULL) {
        int64_t e = 0;
        for (int64_t j = 0; j < nu; j++) {
            out->indptr[j] = out->edge_base + e;
            while (e < ne && keys[e] / nu == j) {
                out->indices[e] = out->node_base + keys[e] % nu;
                e++;
            }
        }
    }
    *nn_out = nu;
    *ne_out = ne;
}

/* -------------------------------------------------------------- assembly */

typedef enum { KHOP, RW } sampler_kind;

static eg_status assemble(const eg_graph *g, const int64_t *targets, int64_t nt, sampler_kind kind,
                          int64_t cap, const rw_params *rp, uint64_t seed, eg_batch *b, eg_err *err)
{
    memset(b, 0, sizeof *b);
    if (nt < 0) {
        return eg_seterr(err, EG_EINVAL, "sampler: negative number of targets");
    }
    for (int64_t i = 0; i < nt; i++) {
        if (targets[i] < 0 || targets[i] >= g->num_nodes) {
            return eg_seterr(err, EG_EINVAL, "sampler: target %lld is outside [0, %lld)",
                             (long long)targets[i], (long long)g->num_nodes);
        }
    }
    /* scratch sizes per thread */
    size_t sa = 1, sb = 1, sc = 1, sd = 1;
    if (kind == KHOP) {
        int64_t maxdeg = 1;
        for (int64_t i = 0; i < nt; i++) {
            int64_t d = g->indptr[targets[i] + 1] - g->indptr[targets[i]];
            maxdeg = d > maxdeg ? d : maxdeg;
        }
        sa = (size_t)(cap > 0 && cap < maxdeg ? cap : maxdeg);
    } else {
        size_t st = (size_t)rp->steps;
        sa = 2 * (st + 1);
        sb = 2 * st + 1;
        sc = st + 1;
        sd = 2 * st + 1;
    }
    size_t cnt_bytes;
    if (eg_mul_ovf((size_t)nt + 1, 2 * sizeof(int64_t), &cnt_bytes)) {
        return eg_seterr(err, EG_EOVERFLOW, "sampler: too many targets");
    }
    int64_t *cnt = calloc((size_t)nt + 1, 2 * sizeof(int64_t)); /* nn, ne per target */
    if (cnt == NULL) {
        return eg_seterr(err, EG_ENOMEM, "sampler: out of memory");
    }
    int failed = 0;
    for (int pass = 0; pass < 2; pass++) {
        #pragma omp parallel
        {
            scratch s;
            s.a = malloc(sa * sizeof(int64_t));
            s.b = malloc(sb * sizeof(int64_t));
            s.c = malloc(sc * sizeof(int64_t));
            s.d = malloc(sd * sizeof(int64_t));
            int ok = s.a && s.b && s.c && s.d;
            if (!ok) {
                #pragma omp atomic write
                failed = 1;
            }
            #pragma omp for schedule(dynamic, 8)
            for (int64_t i = 0; i < nt; i++) {
                if (!ok) {
                    continue;
                }
                int64_t nn, ne;
                sink sk, *skp = NULL;
                if (pass == 1) {
                    sk.node_base = b->graph_ptr[i];
                    sk.edge_base = cnt[2 * i + 1];
                    sk.nodes = b->nodes + sk.node_base;
                    sk.indptr = b->indptr + sk.node_base;
                    sk.indices = b->indices + sk.edge_base;
                    skp = &sk;
                }
                if (kind == KHOP) {
                    khop_one(g, targets[i], cap, seed, &s, skp, &nn, &ne);
                } else {
                    rw_one(g, targets[i], rp, seed, &s, skp, &nn, &ne);
                }
                if (pass == 0) {
                    cnt[2 * i] = nn;
                    cnt[2 * i + 1] = ne;
                }
            }
            free(s.a);
            free(s.b);
            free(s.c);
            free(s.d);
        }
        if (failed) {
            free(cnt);
            eg_batch_free(b);
            return eg_seterr(err, EG_ENOMEM, "sampler: out of memory");
        }
        if (pass == 0) {
            b->graph_ptr = malloc(((size_t)nt + 1) * sizeof(int64_t));
            if (b->graph_ptr == NULL) {
                free(cnt);
                return eg_seterr(err, EG_ENOMEM, "sampler: out of memory");
            }
            size_t nsum = 0, esum = 0;
            for (int64_t i = 0; i < nt; i++) {
                b->graph_ptr[i] = (int64_t)nsum;
                size_t e0 = esum;
                if (eg_add_ovf(nsum, (size_t)cnt[2 * i], &nsum) ||
                    eg_add_ovf(esum, (size_t)cnt[2 * i + 1], &esum) || nsum > (size_t)INT64_MAX / 16 ||
                    esum > (size_t)INT64_MAX / 16) {
                    free(cnt);
                    eg_batch_free(b);
                    return eg_seterr(err, EG_EOVERFLOW, "sampler: batch too large");
                }
                cnt[2 * i + 1] = (int64_t)e0;  /* now the edge offset */
            }
            b->graph_ptr[nt] = (int64_t)nsum;
            b->num_graphs = nt;
            b->num_nodes = (int64_t)nsum;
            b->num_edges = (int64_t)esum;
            b->nodes = malloc((nsum > 0 ? nsum : 1) * sizeof(int64_t));
            b->indptr = malloc((nsum + 1) * sizeof(int64_t));
            b->indices = malloc((esum > 0 ? esum : 1) * sizeof(int64_t));
            if (b->nodes == NULL || b->indptr == NULL || b->indices == NULL) {
                free(cnt);
                eg_batch_free(b);
                return eg_seterr(err, EG_ENOMEM, "sampler: out of memory (%zu nodes, %zu edges)",
                                 nsum, esum);
            }
            b->indptr[nsum] = (int64_t)esum;
        }
    }
    free(cnt);
    return EG_OK;
}

eg_status eg_sample_khop(const eg_graph *g, const int64_t *targets, int64_t num_targets,
                         int64_t max_neighbors, uint64_t seed, eg_batch *out, eg_err *err)
{
    return assemble(g, targets, num_targets, KHOP, max_neighbors > 0 ? max_neighbors : 0, NULL,
                    seed, out, err);
}

eg_status eg_sample_rw(const eg_graph *g, const int64_t *targets, int64_t num_targets,
                       int64_t walk_steps, float restart, uint64_t seed, eg_batch *out,
                       eg_err *err)
{
    memset(out, 0, sizeof *out);
    if (walk_steps < 0 || walk_steps > ((int64_t)1 << 20)) {
        return eg_seterr(err, EG_EINVAL, "rw sampler: walk_steps must be in [0, 2^20], got %lld",
                         (long long)walk_steps);
    }
    if (!(restart >= 0.0f && restart <= 1.0f)) {
        return eg_seterr(err, EG_EINVAL, "rw sampler: restart must be in [0, 1], got %g",
                         (double)restart);
    }
    rw_params p = {walk_steps, restart};
    return assemble(g, targets, num_targets, RW, 0, &p, seed, out, err);
}
