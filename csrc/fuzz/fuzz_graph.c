/*
 * fuzz_graph.c — libFuzzer harness for the graph builder (eg_graph_build, the
 * edge_index -> CSR path in csrc/graph/csr.c) and the two samplers fed by it.
 *
 * Input: u16 num_nodes (mod 4098, minus 2: -2 .. 4095), u8 flags (bit 0
 * undirected, bits 1..7 max_neighbors), u8 walk_steps, u8 restart (/255),
 * u64 seed, then edges as pairs of signed 16-bit ids (out-of-range and
 * negative ids included). Accepted graphs are checked (indptr monotone from 0
 * to num_edges, each row strictly ascending, ids in range, no self-loops,
 * every input edge present, symmetric when undirected); then k-hop and random
 * walk batches are sampled for up to 8 targets and their invariants checked.
 */
#include "eg.h"
#include "eg_graph.h"
#include "fuzz_common.h"

#include <stdlib.h>

static int has_edge(const eg_graph *g, int64_t u, int64_t v)
{
    /* u -> v is stored in row v */
    for (int64_t e = g->indptr[v]; e < g->indptr[v + 1]; e++) {
        if (g->indices[e] == u) {
            return 1;
        }
    }
    return 0;
}

/* both_ways: the random-walk sampler records traversed edges in both
 * directions, so its batch edges need only exist one way round. */
static void check_batch(const eg_graph *g, const eg_batch *b, const int64_t *targets, int64_t nt,
                        int both_ways)
{
    FUZZ_CHECK(b->num_graphs == nt && b->graph_ptr[0] == 0 && b->graph_ptr[nt] == b->num_nodes,
               "graph_ptr ends");
    FUZZ_CHECK(b->indptr[0] == 0 && b->indptr[b->num_nodes] == b->num_edges, "batch indptr ends");
    for (int64_t t = 0; t < nt; t++) {
        int64_t lo = b->graph_ptr[t], hi = b->graph_ptr[t + 1];
        FUZZ_CHECK(lo < hi, "empty subgraph");
        FUZZ_CHECK(b->nodes[lo] == targets[t], "root is not the target");
        for (int64_t j = lo; j < hi; j++) {
            FUZZ_CHECK(b->nodes[j] >= 0 && b->nodes[j] < g->num_nodes, "node id");
            FUZZ_CHECK(b->indptr[j] <= b->indptr[j + 1], "batch indptr not monotone");
            for (int64_t e = b->indptr[j]; e < b->indptr[j + 1]; e++) {
                int64_t s = b->indices[e];
                FUZZ_CHECK(s >= lo && s < hi, "edge leaves its subgraph");
                FUZZ_CHECK(e == b->indptr[j] || b->indices[e - 1] < s, "batch row not ascending");
                FUZZ_CHECK(has_edge(g, b->nodes[s], b->nodes[j]) ||
                               (both_ways && has_edge(g, b->nodes[j], b->nodes[s])),
                           "batch edge not in the graph");
            }
        }
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    eg_set_num_threads(1);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    int64_t n = (int64_t)(fuzz_u(&in, 2) % 4098) - 2; /* -2 .. 4095 */
    unsigned flags = (unsigned)fuzz_u(&in, 1);
    int64_t walk_steps = (int64_t)fuzz_u(&in, 1);
    float restart = (float)fuzz_u(&in, 1) / 255.0f;
    uint64_t seed = fuzz_u(&in, 8);
    int undirected = flags & 1u;
    int64_t max_nb = (int64_t)(flags >> 1) - 8;
    int64_t E = (int64_t)(in.n / 4);
    int64_t *src = malloc(sizeof(int64_t) * (size_t)(E > 0 ? E : 1));
    int64_t *dst = malloc(sizeof(int64_t) * (size_t)(E > 0 ? E : 1));
    if (src == NULL || dst == NULL) {
        free(src);
        free(dst);
        return 0;
    }
    for (int64_t e = 0; e < E; e++) {
        src[e] = (int16_t)fuzz_u(&in, 2);
        dst[e] = (int16_t)fuzz_u(&in, 2);
    }
    eg_graph *g = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_graph_build(&g, n, src, dst, E, undirected, &err);
    fuzz_check_status(st, &err);
    int valid = n >= 0 && (n > 0 || E == 0);
    for (int64_t e = 0; e < E && valid; e++) {
        valid = src[e] >= 0 && src[e] < n && dst[e] >= 0 && dst[e] < n;
    }
    FUZZ_CHECK((st == EG_OK) == valid, "status %d for %s input: %s", (int)st,
               valid ? "valid" : "invalid", err.msg);
    if (st != EG_OK) {
        FUZZ_CHECK(g == NULL, "graph left on failure");
        goto done;
    }
    /* input edges as sorted keys dst * 65536 + src (ids < 65536 here) */
    int64_t *keys = malloc(sizeof(int64_t) * (size_t)(E > 0 ? E : 1));
    FUZZ_CHECK(keys != NULL, "malloc");
    for (int64_t e = 0; e < E; e++) {
        keys[e] = dst[e] * 65536 + src[e];
    }
    qsort(keys, (size_t)E, sizeof(int64_t), cmp_i64);
    FUZZ_CHECK(g->num_nodes == n && g->indptr[0] == 0 && g->indptr[n] == g->num_edges, "indptr ends");
    for (int64_t v = 0; v < n; v++) {
        FUZZ_CHECK(g->indptr[v] <= g->indptr[v + 1], "indptr not monotone");
        for (int64_t e = g->indptr[v]; e < g->indptr[v + 1]; e++) {
            int64_t u = g->indices[e];
            FUZZ_CHECK(u >= 0 && u < n && u != v, "bad neighbour %lld of %lld", (long long)u, (long long)v);
            FUZZ_CHECK(e == g->indptr[v] || g->indices[e - 1] < u, "row not strictly ascending");
            if (undirected) {
                FUZZ_CHECK(has_edge(g, v, u), "undirected graph not symmetric");
            } else {
                int64_t key = v * 65536 + u;
                FUZZ_CHECK(bsearch(&key, keys, (size_t)E, sizeof(int64_t), cmp_i64) != NULL,
                           "edge not in the input");
            }
        }
    }
    free(keys);
    for (int64_t e = 0; e < E; e++) {
        if (src[e] != dst[e]) {
            FUZZ_CHECK(has_edge(g, src[e], dst[e]), "input edge %lld missing", (long long)e);
        }
    }
    if (n > 0) {
        int64_t targets[8];
        int64_t nt = 0;
        for (; nt < 8 && nt < n; nt++) {
            targets[nt] = (int64_t)((seed >> (8 * nt)) % (uint64_t)n);
        }
        eg_batch b;
        eg_err_clear(&err);
        st = eg_sample_khop(g, targets, nt, max_nb, seed, &b, &err);
        FUZZ_CHECK(st == EG_OK, "khop: %s", err.msg);
        check_batch(g, &b, targets, nt, 0);
        if (max_nb > 0) {
            for (int64_t t = 0; t < nt; t++) {
                FUZZ_CHECK(b.graph_ptr[t + 1] - b.graph_ptr[t] <= max_nb + 1, "khop exceeds max_neighbors");
            }
        }
        eg_batch_free(&b);
        eg_err_clear(&err);
        st = eg_sample_rw(g, targets, nt, walk_steps, restart, seed, &b, &err);
        FUZZ_CHECK(st == EG_OK, "rw: %s", err.msg);
        check_batch(g, &b, targets, nt, 1);
        eg_batch_free(&b);
        /* out-of-range targets are refused */
        int64_t bad = n;
        eg_err_clear(&err);
        FUZZ_CHECK(eg_sample_khop(g, &bad, 1, max_nb, seed, &b, &err) == EG_EINVAL, "bad target accepted");
        eg_batch_free(&b);
    }
done:
    eg_graph_free(g);
    free(src);
    free(dst);
    return 0;
}
