/*
 * csr.c — build the in-neighbour CSR of a graph from an edge list.
 *
 * Counting sort by destination, then each row is sorted and deduplicated in
 * place and the rows are compacted. Self-loops are dropped: SAGE has its own
 * root weight, GCN and GAT add exactly one self-loop themselves (as PyG's
 * GCNConv/GATConv do after removing existing ones), and the samplers'
 * subgraphs do not need them. Everything is deterministic: the result is the
 * same sorted set of edges whatever the input order or thread count.
 */
#include "eg_graph.h"

#include <stdlib.h>
#include <string.h>

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

void eg_graph_free(eg_graph *g)
{
    if (g == NULL) {
        return;
    }
    free(g->indptr);
    free(g->indices);
    free(g);
}

eg_status eg_graph_build(eg_graph **out, int64_t num_nodes, const int64_t *src,
                         const int64_t *dst, int64_t num_edges, int undirected,
                         eg_err *err)
{
    *out = NULL;
    if (num_nodes < 0 || num_edges < 0) {
        return eg_seterr(err, EG_EINVAL, "graph: num_nodes (%lld) and num_edges (%lld) must be >= 0",
                         (long long)num_nodes, (long long)num_edges);
    }
    if (num_nodes == 0 && num_edges > 0) {
        return eg_seterr(err, EG_EINVAL, "graph: %lld edges but num_nodes is 0", (long long)num_edges);
    }
    for (int64_t e = 0; e < num_edges; e++) {
        if (src[e] < 0 || src[e] >= num_nodes || dst[e] < 0 || dst[e] >= num_nodes) {
            return eg_seterr(err, EG_EINVAL,
                             "graph: edge %lld (%lld -> %lld) has a node id outside [0, %lld)",
                             (long long)e, (long long)src[e], (long long)dst[e], (long long)num_nodes);
        }
    }
    size_t cap = (size_t)num_edges, tmp;
    if (undirected && eg_mul_ovf(cap, 2, &cap)) {
        return eg_seterr(err, EG_EOVERFLOW, "graph: too many edges");
    }
    size_t ptr_bytes, idx_bytes;
    if (eg_add_ovf((size_t)num_nodes, 1, &tmp) || eg_mul_ovf(tmp, sizeof(int64_t), &ptr_bytes) ||
        eg_mul_ovf(cap > 0 ? cap : 1, sizeof(int64_t), &idx_bytes)) {
        return eg_seterr(err, EG_EOVERFLOW, "graph: size overflow");
    }
    eg_graph *g = calloc(1, sizeof *g);
    int64_t *fill = malloc(ptr_bytes);
    if (g == NULL || fill == NULL) {
        free(g);
        free(fill);
        return eg_seterr(err, EG_ENOMEM, "graph: out of memory");
    }
    g->num_nodes = num_nodes;
    g->indptr = calloc(1, ptr_bytes);
    g->indices = malloc(idx_bytes);
    if (g->indptr == NULL || g->indices == NULL) {
        free(fill);
        eg_graph_free(g);
        return eg_seterr(err, EG_ENOMEM, "graph: out of memory");
    }
    int64_t *ptr = g->indptr, *idx = g->indices;
    /* count in-edges per destination (self-loops dropped) */
    for (int64_t e = 0; e < num_edges; e++) {
        if (src[e] == dst[e]) {
            continue;
        }
        ptr[dst[e] + 1]++;
        if (undirected) {
            ptr[src[e] + 1]++;
        }
    }
    for (int64_t v = 0; v < num_nodes; v++) {
        ptr[v + 1] += ptr[v];
    }
    memcpy(fill, ptr, (size_t)num_nodes * sizeof(int64_t));
    for (int64_t e = 0; e < num_edges; e++) {
        if (src[e] == dst[e]) {
            continue;
        }
        idx[fill[dst[e]]++] = src[e];
        if (undirected) {
            idx[fill[src[e]]++] = dst[e];
        }
    }
    /* sort each row and count its distinct entries */
    #pragma omp parallel for schedule(dynamic, 256)
    for (int64_t v = 0; v < num_nodes; v++) {
        int64_t a = ptr[v], b = ptr[v + 1];
        qsort(idx + a, (size_t)(b - a), sizeof(int64_t), cmp_i64);
        int64_t k = 0;
        for (int64_t j = a; j < b; j++) {
            if (k == 0 || idx[a + k - 1] != idx[j]) {
                idx[a + k++] = idx[j];
            }
        }
        fill[v] = k;
    }
    /* compact rows */
    int64_t w = 0;
    for (int64_t v = 0; v < num_nodes; v++) {
        int64_t a = ptr[v];
        memmove(idx + w, idx + a, (size_t)fill[v] * sizeof(int64_t));
        ptr[v] = w;
        w += fill[v];
    }
    if (num_nodes > 0) {
        ptr[num_nodes] = w;
    }
    g->num_edges = w;
    free(fill);
    *out = g;
    return EG_OK;
}

/* ------------------------------------------------------- reverse CSR */
#include "eg_ops.h"

void eg_csr_reverse(int64_t *rptr, int64_t *rdst, int64_t *reid, const int64_t *ptr,
                    const int64_t *src, int64_t n)
{
    for (int64_t u = 0; u <= n; u++) {
        rptr[u] = 0;
    }
    int64_t E = ptr[n];
    for (int64_t e = 0; e < E; e++) {
        rptr[src[e] + 1]++;
    }
    for (int64_t u = 0; u < n; u++) {
        rptr[u + 1] += rptr[u];
    }
    /* fill in forward order, using rdst slots' count through a cursor pass */
    for (int64_t v = 0; v < n; v++) {
        for (int64_t e = ptr[v]; e < ptr[v + 1]; e++) {
            int64_t u = src[e];
            int64_t slot = rptr[u]++;
            rdst[slot] = v;
            reid[slot] = e;
        }
    }
    for (int64_t u = n; u > 0; u--) {
        rptr[u] = rptr[u - 1];
    }
    rptr[0] = 0;
}
