"""engine_py.Graph: construction from edge_index / scipy / objects, validation,
and the samplers (determinism, thread independence, subgraph properties)."""
import numpy as np
import pytest

import engine_py
from engine_py.graph import Graph

scipy_sparse = pytest.importorskip("scipy.sparse")


def edge_set(g):
    ei = g.edge_index
    return set(zip(ei[0].tolist(), ei[1].tolist()))


def test_build_dedup_symmetrise_selfloops():
    ei = np.array([[0, 0, 1, 2, 3], [1, 1, 0, 2, 1]])
    g = Graph(ei, num_nodes=5)
    assert g.num_nodes == 5
    assert edge_set(g) == {(0, 1), (1, 0), (3, 1), (1, 3)}
    assert g.degree().tolist() == [1, 2, 0, 1, 0]
    gd = Graph(ei, num_nodes=5, undirected=False)
    assert edge_set(gd) == {(0, 1), (1, 0), (3, 1)}


def test_inputs_scipy_and_object_and_inferred_n():
    ei = np.array([[0, 1, 2], [1, 2, 3]])
    m = scipy_sparse.coo_matrix((np.ones(3), (ei[0], ei[1])), shape=(6, 6)).tocsr()
    g1 = Graph(m)
    assert g1.num_nodes == 6 and edge_set(g1) == edge_set(Graph(ei, 6))

    class Data:  # a PyG-like object holding a tensor-like edge_index
        class T:
            def __init__(self, a):
                self.a = a

            def detach(self):
                return self

            def cpu(self):
                return self

            def numpy(self):
                return self.a
        edge_index = T(ei)
        num_nodes = 7

    g2 = Graph(Data())
    assert g2.num_nodes == 7 and edge_set(g2) == edge_set(g1)
    assert Graph(ei).num_nodes == 4


@pytest.mark.parametrize("ei,n,msg", [
    (np.array([[0, 5], [1, 0]]), 5, "outside"),
    (np.array([[-1], [0]]), 5, "outside"),
    (np.array([0, 1, 2]), 5, "shape"),
    (np.array([[0.5], [1.0]]), 5, "integers"),
])
def test_bad_edges(ei, n, msg):
    with pytest.raises(ValueError, match=msg):
        Graph(ei, n)


def test_bad_scipy_shape():
    with pytest.raises(ValueError, match="square"):
        Graph(scipy_sparse.csr_matrix((3, 4)))


def random_graph(n=400, m=1200, seed=0):
    rng = np.random.default_rng(seed)
    return Graph(rng.integers(0, n, size=(2, m)), n)


def test_khop_properties_and_cap():
    g = random_graph()
    indptr, indices = g.indptr, g.indices
    targets = np.arange(0, 400, 7)
    for cap in (None, 3):
        b = g.sample(targets, "khop", max_neighbors=cap, seed=1)
        assert b.num_graphs == len(targets)
        for i, t in enumerate(targets):
            a, z = b.graph_ptr[i], b.graph_ptr[i + 1]
            nodes = b.nodes[a:z]
            nb = set(indices[indptr[t]:indptr[t + 1]].tolist())
            assert nodes[0] == t
            assert set(nodes[1:].tolist()) <= nb
            assert len(nodes) - 1 == (len(nb) if cap is None else min(cap, len(nb)))
            # induced edges: exactly the graph edges among the nodes
            sub = set(nodes.tolist())
            want = {(u, v) for v in sub for u in indices[indptr[v]:indptr[v + 1]].tolist() if u in sub}
            ei = b.edge_index
            got = {(b.nodes[u], b.nodes[v]) for u, v in zip(ei[0], ei[1]) if a <= v < z}
            assert got == want


def test_rw_edges_are_traversed_graph_edges():
    g = random_graph(seed=2)
    es = edge_set(g)
    b = g.sample(np.arange(50), "rw", walk_steps=32, restart=0.3, seed=5)
    ei = b.edge_index
    for u, v in zip(ei[0], ei[1]):
        assert (b.nodes[u], b.nodes[v]) in es
        assert np.searchsorted(b.graph_ptr, u, side="right") == np.searchsorted(b.graph_ptr, v, side="right")
    assert np.all(b.nodes[b.roots] == np.arange(50))
    assert np.all(np.diff(b.graph_ptr) <= 33)


@pytest.mark.parametrize("sampler", ["khop", "rw"])
def test_sampler_deterministic_across_threads(sampler):
    g = random_graph(seed=3)
    t = np.arange(0, 400, 3)
    old = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        b1 = g.sample(t, sampler, max_neighbors=4, seed=9)
        engine_py.set_num_threads(2)
        b2 = g.sample(t, sampler, max_neighbors=4, seed=9)
    finally:
        engine_py.set_num_threads(old)
    for x, y in zip((b1.nodes, b1.graph_ptr, b1.indptr, b1.indices), (b2.nodes, b2.graph_ptr, b2.indptr, b2.indices)):
        np.testing.assert_array_equal(x, y)


def test_sampler_bad_inputs():
    g = random_graph()
    with pytest.raises(ValueError, match="outside"):
        g.sample([0, 400])
    with pytest.raises(ValueError, match="sampler"):
        g.sample([0], "bfs")
    with pytest.raises(ValueError, match="restart"):
        g.sample([0], "rw", restart=2.0)
    with pytest.raises(ValueError, match="walk_steps"):
        g.sample([0], "rw", walk_steps=(1 << 20) + 1)
    with pytest.raises(ValueError, match="max_neighbors"):
        g.sample([0], "khop", max_neighbors=0)
    b = g.sample(np.array([], dtype=np.int64))
    assert b.num_graphs == 0 and b.num_nodes == 0
