/*
 * eg_graph.h — graphs (CSR), subgraph samplers and batched subgraphs.
 *
 * A graph is stored as CSR over *in*-neighbours: row v lists the sources u of
 * the edges u -> v, sorted ascending, without duplicates and without
 * self-loops. This is the PyG `source_to_target` flow: message passing
 * aggregates row v. An undirected graph holds both directions of every edge.
 *
 * A batch (eg_batch) is the disjoint union of one subgraph per target node.
 * Subgraph g owns the batch nodes graph_ptr[g] .. graph_ptr[g+1]-1 and its
 * first node is its root (the target). Edges are batch-local CSR over
 * in-neighbours: node j's sources are indices[indptr[j] .. indptr[j+1]-1],
 * ascending. Samplers are deterministic for (graph, targets, parameters,
 * seed) and give the same batch for any thread count: each target draws from
 * its own stream eg_rng_derive(seed, target).
 */
#ifndef EG_GRAPH_H
#define EG_GRAPH_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t num_nodes;
    int64_t num_edges;     /* stored (directed) entries */
    int64_t *indptr;       /* (num_nodes + 1) */
    int64_t *indices;      /* (num_edges) */
} eg_graph;

/* Build a graph from E edges src[e] -> dst[e] (the two rows of a PyG
 * edge_index). Ids must be in [0, num_nodes) (EG_EINVAL names the first bad
 * edge otherwise). Self-loops are dropped, duplicate edges are merged; with
 * `undirected` every edge is also added reversed. On success *out is a new
 * graph owned by the caller (eg_graph_free). num_nodes may be 0 only if E is. */
eg_status eg_graph_build(eg_graph **out, int64_t num_nodes, const int64_t *src,
                         const int64_t *dst, int64_t num_edges, int undirected,
                         eg_err *err);
void eg_graph_free(eg_graph *g);

typedef struct {
    int64_t num_graphs;    /* = number of targets */
    int64_t num_nodes;
    int64_t num_edges;
    int64_t *nodes;        /* (num_nodes) global node id of each batch node */
    int64_t *graph_ptr;    /* (num_graphs + 1) */
    int64_t *indptr;       /* (num_nodes + 1) batch-local in-neighbour CSR */
    int64_t *indices;      /* (num_edges) */
} eg_batch;

/* 1-hop ego graphs: target, then its neighbours in ascending id (at most
 * max_neighbors of them, chosen uniformly without replacement when the degree
 * is larger; max_neighbors <= 0 means no cap), with every graph edge between
 * two of these nodes (induced subgraph). Targets must be valid node ids.
 * Fills *out (freed with eg_batch_free; zeroed on failure). */
eg_status eg_sample_khop(const eg_graph *g, const int64_t *targets, int64_t num_targets,
                         int64_t max_neighbors, uint64_t seed, eg_batch *out, eg_err *err);

/* Random walk with restart: walk_steps steps from the target; before each
 * step, with probability `restart` (or when the current node has no
 * neighbours) the walk jumps back to the target without an edge; otherwise it
 * moves to a uniform random neighbour and the traversed edge is recorded.
 * Subgraph: visited nodes in first-visit order (root first) and the traversed
 * edges in both directions, deduplicated. walk_steps in [0, 1<<20]
 * (per-thread scratch is ~56 bytes per step),
 * restart in [0, 1]. */
eg_status eg_sample_rw(const eg_graph *g, const int64_t *targets, int64_t num_targets,
                       int64_t walk_steps, float restart, uint64_t seed, eg_batch *out,
                       eg_err *err);

void eg_batch_free(eg_batch *b);

#ifdef __cplusplus
}
#endif
#endif
