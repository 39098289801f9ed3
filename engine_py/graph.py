"""Graphs and subgraph samplers (C core: csrc/graph/csr.c, sampler.c).

A :class:`Graph` is built from a PyG-style ``edge_index`` (int64 ``[2, E]``,
row 0 = source, row 1 = target), from a scipy sparse matrix (row = source,
column = target), or from any object with an ``.edge_index`` attribute (a
``torch_geometric.data.Data``; torch tensors are read through ``.numpy()``,
torch is never imported here).

Semantics (documented choices):

* Node ids must be in ``[0, num_nodes)``; anything else raises ``ValueError``.
* Duplicate edges are merged.
* Self-loops are dropped. SAGEConv has its own root weight, GCNConv and GATConv
  add exactly one self-loop per node themselves (PyG removes existing ones
  first), and the samplers do not need them, so dropping them gives the same
  convolutions as PyG on the reference data.
* ``undirected=True`` (default, as the ENGINE reference treats its graphs)
  adds every edge in both directions.

Storage is CSR over in-neighbours: ``indices[indptr[v]:indptr[v+1]]`` are the
sources of the edges into ``v``, ascending.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _core
from ._validate import check_bool, check_float, check_int

__all__ = ["Graph", "Batch"]


@dataclass(frozen=True)
class Batch:
    """Disjoint union of one subgraph per target.

    Subgraph ``g`` owns batch nodes ``graph_ptr[g]:graph_ptr[g+1]``; its first
    node is its root (the target). ``nodes`` are global node ids; ``indptr`` /
    ``indices`` are the batch-local in-neighbour CSR.
    """

    nodes: np.ndarray
    graph_ptr: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray

    @property
    def num_graphs(self) -> int:
        return len(self.graph_ptr) - 1

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    @property
    def num_edges(self) -> int:
        return len(self.indices)

    @property
    def roots(self) -> np.ndarray:
        """Batch-local index of each subgraph's root."""
        return self.graph_ptr[:-1].copy()

    @property
    def edge_index(self) -> np.ndarray:
        """Batch-local edges as a PyG ``[2, E]`` array (source, target)."""
        dst = np.repeat(np.arange(self.num_nodes, dtype=np.int64), np.diff(self.indptr))
        return np.stack([self.indices, dst])


def _to_numpy(x):
    # torch tensors (and similar) without importing torch
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _edges_from(obj, num_nodes):
    """(src, dst, num_nodes) from an edge_index-like object or a scipy matrix."""
    if hasattr(obj, "tocoo") and hasattr(obj, "shape") and not isinstance(obj, np.ndarray):
        coo = obj.tocoo()
        if coo.shape[0] != coo.shape[1]:
            raise ValueError(f"adjacency matrix must be square, got shape {coo.shape}")
        if num_nodes is None:
            num_nodes = coo.shape[0]
        elif num_nodes != coo.shape[0]:
            raise ValueError(f"num_nodes={num_nodes} but the matrix has {coo.shape[0]} rows")
        return coo.row.astype(np.int64), coo.col.astype(np.int64), int(num_nodes)
    if hasattr(obj, "edge_index"):
        if num_nodes is None and getattr(obj, "num_nodes", None) is not None:
            num_nodes = int(obj.num_nodes)
        obj = obj.edge_index
    ei = _to_numpy(obj)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {ei.shape}")
    if ei.size and not np.issubdtype(ei.dtype, np.integer):
        raise ValueError(f"edge_index must hold integers, got dtype {ei.dtype}")
    ei = ei.astype(np.int64, copy=False)
    if num_nodes is None:
        num_nodes = int(ei.max()) + 1 if ei.size else 0
    return np.ascontiguousarray(ei[0]), np.ascontiguousarray(ei[1]), int(num_nodes)


class Graph:
    """A graph in CSR form with ENGINE's subgraph samplers.

    ``Graph(edge_index, num_nodes=None, undirected=True)``; ``edge_index`` may
    also be a scipy sparse matrix or an object with ``.edge_index``.
    """

    def __init__(self, edge_index, num_nodes: int | None = None, undirected: bool = True):
        num_nodes = check_int(num_nodes, "num_nodes", min=0, none=True)
        src, dst, n = _edges_from(edge_index, num_nodes)
        self._g = _core.Graph(src, dst, n, check_bool(undirected, "undirected"))
        self.undirected = bool(undirected)

    @classmethod
    def from_scipy(cls, matrix, undirected: bool = True) -> "Graph":
        return cls(matrix, undirected=undirected)

    @property
    def num_nodes(self) -> int:
        return self._g.num_nodes

    @property
    def num_edges(self) -> int:
        """Stored directed edges (an undirected edge counts twice)."""
        return self._g.num_edges

    @property
    def indptr(self) -> np.ndarray:
        return self._g.indptr()

    @property
    def indices(self) -> np.ndarray:
        return self._g.indices()

    @property
    def edge_index(self) -> np.ndarray:
        """The stored edges as ``[2, E]`` (source, target), sorted by target."""
        indptr = self.indptr
        dst = np.repeat(np.arange(self.num_nodes, dtype=np.int64), np.diff(indptr))
        return np.stack([self.indices, dst])

    def degree(self) -> np.ndarray:
        """In-degree of every node (= degree for an undirected graph)."""
        return np.diff(self.indptr)

    def sample(self, targets, sampler: str = "khop", *, max_neighbors: int | None = None,
               walk_steps: int = 64, restart: float = 0.5, seed: int = 0) -> Batch:
        """One subgraph per target (see :class:`Batch`).

        ``khop``: the 1-hop ego graph with induced edges, at most
        ``max_neighbors`` neighbours (uniform, seeded). ``rw``: random walk with
        restart, ``walk_steps`` steps, restart probability ``restart``; the
        traversed edges (both directions). Deterministic for a seed, for any
        thread count.
        """
        t = _to_numpy(targets)
        if t.ndim != 1:
            raise ValueError(f"targets must be 1-D, got shape {t.shape}")
        if t.size and not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"targets must be integer node ids, got dtype {t.dtype}")
        t = t.astype(np.int64, copy=False)
        seed = check_int(seed, "seed") & 0xFFFFFFFFFFFFFFFF
        if sampler == "khop":
            cap = check_int(max_neighbors, "max_neighbors", min=1, none=True) or 0
            parts = self._g.sample_khop(t, cap, seed)
        elif sampler == "rw":
            parts = self._g.sample_rw(t, check_int(walk_steps, "walk_steps", min=0),
                                      check_float(restart, "restart", min=0.0, max=1.0), seed)
        else:
            raise ValueError(f"sampler must be 'khop' or 'rw', got {sampler!r}")
        return Batch(*parts)

    def __repr__(self) -> str:
        return (f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"undirected={self.undirected})")
