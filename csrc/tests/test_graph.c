/*
 * test_graph.c — CSR construction (duplicates, self-loops, symmetrisation,
 * validation) and the samplers (determinism across thread counts, ego-graph
 * and random-walk subgraph properties checked against the graph).
 */
#include "eg_graph.h"
#include "eg_test.h"

#include <stdlib.h>
#include <string.h>

static int has_edge(const eg_graph *g, int64_t u, int64_t v) /* u -> v */
{
    for (int64_t j = g->indptr[v]; j < g->indptr[v + 1]; j++) {
        if (g->indices[j] == u) {
            return 1;
        }
    }
    return 0;
}

static void test_build(void)
{
    eg_err err;
    /* 0->1 twice, 1->0, 2->2 (self-loop), 3->1 */
    int64_t src[] = {0, 0, 1, 2, 3};
    int64_t dst[] = {1, 1, 0, 2, 1};
    eg_graph *g = NULL;
    CHECK(eg_graph_build(&g, 5, src, dst, 5, 1, &err) == EG_OK, "build: %s", err.msg);
    CHECK(g->num_edges == 4, "undirected dedup: 0-1, 1-3 both ways, got %lld", (long long)g->num_edges);
    CHECK(has_edge(g, 0, 1) && has_edge(g, 1, 0) && has_edge(g, 3, 1) && has_edge(g, 1, 3), "edges");
    CHECK(!has_edge(g, 2, 2), "self-loop dropped");
    CHECK(g->indptr[5] == 4 && g->indptr[4] - g->indptr[3] == 1, "indptr");
    /* row 1 = {0, 3} sorted */
    CHECK(g->indices[g->indptr[1]] == 0 && g->indices[g->indptr[1] + 1] == 3, "row sorted");
    eg_graph_free(g);

    CHECK(eg_graph_build(&g, 5, src, dst, 5, 0, &err) == EG_OK, "directed build");
    CHECK(g->num_edges == 3, "directed: 0->1, 1->0, 3->1, got %lld", (long long)g->num_edges);
    CHECK(has_edge(g, 3, 1) && !has_edge(g, 1, 3), "direction kept");
    eg_graph_free(g);

    int64_t bad_src[] = {0, 5};
    int64_t bad_dst[] = {1, 0};
    CHECK(eg_graph_build(&g, 5, bad_src, bad_dst, 2, 1, &err) == EG_EINVAL && g == NULL, "id >= n");
    CHECK(strstr(err.msg, "edge 1") != NULL, "message names the edge: %s", err.msg);
    int64_t neg_src[] = {-1};
    int64_t neg_dst[] = {0};
    CHECK(eg_graph_build(&g, 5, neg_src, neg_dst, 1, 1, &err) == EG_EINVAL, "negative id");
    CHECK(eg_graph_build(&g, -1, NULL, NULL, 0, 1, &err) == EG_EINVAL, "negative n");
    CHECK(eg_graph_build(&g, 3, NULL, NULL, 0, 1, &err) == EG_OK && g->num_edges == 0, "empty graph");
    eg_graph_free(g);
}

static eg_graph *random_graph(int64_t n, int64_t m, uint64_t seed, int with_hub)
{
    int64_t *src = malloc((size_t)(m + n) * sizeof(int64_t));
    int64_t *dst = malloc((size_t)(m + n) * sizeof(int64_t));
    uint64_t s = seed;
    int64_t e = 0;
    for (int64_t i = 0; i < m; i++) {
        src[e] = (int64_t)eg_rng_below(&s, (uint64_t)n);
        dst[e] = (int64_t)eg_rng_below(&s, (uint64_t)n);
        e++;
    }
    if (with_hub) { /* node 0 connected to everything */
        for (int64_t v = 1; v < n; v++) {
            src[e] = 0;
            dst[e] = v;
            e++;
        }
    }
    eg_graph *g = NULL;
    eg_err err;
    eg_graph_build(&g, n, src, dst, e, 1, &err);
    free(src);
    free(dst);
    return g;
}

static int batch_equal(const eg_batch *a, const eg_batch *b)
{
    if (a->num_nodes != b->num_nodes || a->num_edges != b->num_edges || a->num_graphs != b->num_graphs) {
        return 0;
    }
    return memcmp(a->nodes, b->nodes, (size_t)a->num_nodes * 8) == 0 &&
           memcmp(a->graph_ptr, b->graph_ptr, (size_t)(a->num_graphs + 1) * 8) == 0 &&
           memcmp(a->indptr, b->indptr, (size_t)(a->num_nodes + 1) * 8) == 0 &&
           memcmp(a->indices, b->indices, (size_t)a->num_edges * 8) == 0;
}

/* structural checks shared by both samplers */
static void check_batch_common(const eg_graph *g, const eg_batch *b, const int64_t *targets, const char *what)
{
    for (int64_t i = 0; i < b->num_graphs; i++) {
        int64_t a = b->graph_ptr[i], z = b->graph_ptr[i + 1];
        CHECK(z > a && b->nodes[a] == targets[i], "%s: root first in subgraph %lld", what, (long long)i);
        for (int64_t x = a; x < z; x++) {
            for (int64_t y = x + 1; y < z; y++) {
                CHECK(b->nodes[x] != b->nodes[y], "%s: duplicate node", what);
            }
            for (int64_t j = b->indptr[x]; j < b->indptr[x + 1]; j++) {
                int64_t u = b->indices[j];
                CHECK(u >= a && u < z, "%s: edge leaves its subgraph", what);
                CHECK(has_edge(g, b->nodes[u], b->nodes[x]), "%s: batch edge is a graph edge", what);
                CHECK(j == b->indptr[x] || b->indices[j - 1] < u, "%s: rows ascending, no dups", what);
            }
        }
    }
}

static void test_khop(void)
{
    eg_err err;
    eg_graph *g = random_graph(300, 900, 11, 1);
    CHECK(g != NULL, "graph");
    int64_t targets[40];
    for (int i = 0; i < 40; i++) {
        targets[i] = (i * 37) % 300;
    }
    targets[39] = 0; /* the hub */
    for (int capi = 0; capi < 2; capi++) {
        int64_t cap = capi == 0 ? 0 : 5;
        eg_batch b1, b2, b3;
        eg_set_num_threads(1);
        CHECK(eg_sample_khop(g, targets, 40, cap, 7, &b1, &err) == EG_OK, "khop: %s", err.msg);
        eg_set_num_threads(2);
        CHECK(eg_sample_khop(g, targets, 40, cap, 7, &b2, &err) == EG_OK, "khop 2 threads");
        CHECK(batch_equal(&b1, &b2), "khop identical for 1 and 2 threads (cap %lld)", (long long)cap);
        check_batch_common(g, &b1, targets, "khop");
        for (int64_t i = 0; i < 40; i++) {
            int64_t t = targets[i], a = b1.graph_ptr[i], z = b1.graph_ptr[i + 1];
            int64_t deg = g->indptr[t + 1] - g->indptr[t];
            int64_t expect = cap > 0 && deg > cap ? cap : deg;
            CHECK(z - a == expect + 1, "khop size: %lld vs %lld", (long long)(z - a), (long long)expect + 1);
            for (int64_t x = a + 1; x < z; x++) {
                CHECK(has_edge(g, b1.nodes[x], t), "khop node is a neighbour");
            }
            /* induced: every graph edge between subgraph nodes is present */
            int64_t want = 0;
            for (int64_t x = a; x < z; x++) {
                for (int64_t y = a; y < z; y++) {
                    want += has_edge(g, b1.nodes[y], b1.nodes[x]);
                }
            }
            CHECK(b1.indptr[z] - b1.indptr[a] == want, "khop induced edge count %lld vs %lld",
                  (long long)(b1.indptr[z] - b1.indptr[a]), (long long)want);
        }
        if (cap > 0) {
            CHECK(eg_sample_khop(g, targets, 40, cap, 8, &b3, &err) == EG_OK, "khop seed 8");
            CHECK(!batch_equal(&b1, &b3), "another seed samples other neighbours of the hub");
            eg_batch_free(&b3);
        }
        eg_batch_free(&b1);
        eg_batch_free(&b2);
    }
    int64_t bad[] = {3, 300};
    eg_batch b;
    CHECK(eg_sample_khop(g, bad, 2, 0, 1, &b, &err) == EG_EINVAL, "target out of range");
    CHECK(eg_sample_khop(g, targets, 0, 0, 1, &b, &err) == EG_OK && b.num_nodes == 0, "no targets");
    eg_batch_free(&b);
    eg_graph_free(g);
}

static void test_rw(void)
{
    eg_err err;
    eg_graph *g = random_graph(300, 700, 5, 0);
    int64_t targets[50];
    for (int i = 0; i < 50; i++) {
        targets[i] = (i * 13 + 1) % 300;
    }
    eg_batch b1, b2;
    eg_set_num_threads(1);
    CHECK(eg_sample_rw(g, targets, 50, 64, 0.5f, 3, &b1, &err) == EG_OK, "rw: %s", err.msg);
    eg_set_num_threads(2);
    CHECK(eg_sample_rw(g, targets, 50, 64, 0.5f, 3, &b2, &err) == EG_OK, "rw 2 threads");
    CHECK(batch_equal(&b1, &b2), "rw identical for 1 and 2 threads");
    check_batch_common(g, &b1, targets, "rw");
    /* symmetric, and every node reached by a traversed edge (connected to root) */
    for (int64_t i = 0; i < 50; i++) {
        int64_t a = b1.graph_ptr[i], z = b1.graph_ptr[i + 1];
        CHECK(z - a <= 65, "rw at most steps+1 nodes");
        for (int64_t x = a + 1; x < z; x++) {
            CHECK(b1.indptr[x + 1] > b1.indptr[x], "rw: visited node has a traversed edge");
        }
        for (int64_t x = a; x < z; x++) {
            for (int64_t j = b1.indptr[x]; j < b1.indptr[x + 1]; j++) {
                int64_t u = b1.indices[j], found = 0;
                for (int64_t q = b1.indptr[u]; q < b1.indptr[u + 1]; q++) {
                    found |= b1.indices[q] == x;
                }
                CHECK(found, "rw edges symmetric");
            }
        }
    }
    eg_batch_free(&b2);
    eg_batch b3;
    CHECK(eg_sample_rw(g, targets, 50, 64, 0.5f, 4, &b3, &err) == EG_OK, "rw seed 4");
    CHECK(!batch_equal(&b1, &b3), "rw differs for another seed");
    eg_batch_free(&b3);
    eg_batch_free(&b1);

    /* path 0-1-2-...-9, restart 0, start at 0: no restart jumps, so every
     * edge is a path edge and the nodes form a prefix of the path */
    int64_t ps[9], pd[9];
    for (int i = 0; i < 9; i++) {
        ps[i] = i;
        pd[i] = i + 1;
    }
    eg_graph *path = NULL;
    CHECK(eg_graph_build(&path, 10, ps, pd, 9, 1, &err) == EG_OK, "path");
    int64_t t0 = 0;
    CHECK(eg_sample_rw(path, &t0, 1, 30, 0.0f, 9, &b1, &err) == EG_OK, "rw path");
    check_batch_common(path, &b1, &t0, "rw path");
    int64_t maxid = 0;
    for (int64_t x = 0; x < b1.num_nodes; x++) {
        maxid = b1.nodes[x] > maxid ? b1.nodes[x] : maxid;
    }
    CHECK(maxid == b1.num_nodes - 1, "path walk visits a prefix");
    CHECK(b1.num_edges == 2 * (b1.num_nodes - 1), "path walk edges = tree edges both ways");
    eg_batch_free(&b1);
    /* restart 1: never moves */
    CHECK(eg_sample_rw(path, &t0, 1, 30, 1.0f, 9, &b1, &err) == EG_OK && b1.num_nodes == 1 &&
              b1.num_edges == 0, "restart 1 stays at the root");
    eg_batch_free(&b1);
    CHECK(eg_sample_rw(path, &t0, 1, 30, 1.5f, 9, &b1, &err) == EG_EINVAL, "restart > 1 rejected");
    CHECK(eg_sample_rw(path, &t0, 1, -1, 0.5f, 9, &b1, &err) == EG_EINVAL, "negative steps rejected");
    eg_graph_free(path);
    eg_graph_free(g);
}

int main(void)
{
    test_build();
    test_khop();
    test_rw();
    return eg_test_report("test_graph");
}
