"""TextGraph: a textual graph for node classification.

One text per node, a directed edge list in the PyG convention (``edge_index``
of shape [2, E], row 0 the source, row 1 the target), one integer label per
node with its class names, and a train/val/test split given as node indices.
Everything is plain Python lists and NumPy int64 arrays, so a graph can be
saved without pickles (see engine_py.datasets.io).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

__all__ = ["TextGraph", "stratified_split"]


def _as_index(a: Any, what: str) -> np.ndarray:
    """Convert to a 1-D int64 array, refusing floats with fractions and bools."""
    arr = np.asarray(a)
    if arr.dtype == np.bool_:
        raise ValueError(f"{what}: expected integer indices, got a boolean array")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64).reshape(arr.shape if arr.ndim > 1 else (0,))
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) \
                and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"{what}: expected integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


@dataclasses.dataclass(repr=False, eq=False)
class TextGraph:
    """A text-attributed graph for node classification.

    Fields:
        texts: one string per node.
        edge_index: int64 array [2, E]; edge e goes from edge_index[0, e] to
            edge_index[1, e] (PyG convention). May be empty ([2, 0]).
        labels: int64 array [N], values in [0, num_classes).
        label_names: class names; label k is label_names[k].
        train_idx, val_idx, test_idx: int64 node indices, pairwise disjoint.
        name: short name of the dataset.
        provenance: where the data came from (source, date, tool versions).
    """

    texts: list
    edge_index: np.ndarray
    labels: np.ndarray
    label_names: list
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    name: str = "graph"
    provenance: str = ""

    def __post_init__(self) -> None:
        self.texts = list(self.texts)
        ei = np.asarray(self.edge_index)
        if ei.size == 0:
            ei = np.zeros((2, 0), dtype=np.int64)
        self.edge_index = _as_index(ei, "edge_index")
        self.labels = _as_index(self.labels, "labels")
        self.label_names = [str(s) for s in self.label_names]
        self.train_idx = _as_index(self.train_idx, "train_idx")
        self.val_idx = _as_index(self.val_idx, "val_idx")
        self.test_idx = _as_index(self.test_idx, "test_idx")

    # ------------------------------------------------------------------ sizes
    @property
    def num_nodes(self) -> int:
        return len(self.texts)

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1]) if self.edge_index.ndim == 2 else 0

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    # ------------------------------------------------------------- validation
    def validate(self) -> "TextGraph":
        """Check shapes, dtypes, ranges and split disjointness.

        Raises ValueError naming the first problem found; returns self.
        """
        n = self.num_nodes
        for i, t in enumerate(self.texts):
            if not isinstance(t, str):
                raise ValueError(f"texts[{i}] is {type(t).__name__}, expected str")
        ei = self.edge_index
        if ei.ndim != 2 or ei.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(ei.shape)}")
        if ei.size:
            lo, hi = int(ei.min()), int(ei.max())
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise ValueError(f"edge_index contains node {bad}, outside [0, {n}) "
                                 f"(num_nodes={n})")
        if self.labels.ndim != 1 or self.labels.shape[0] != n:
            raise ValueError(f"labels must have shape [{n}] (one per node), got "
                             f"{list(self.labels.shape)}")
        c = self.num_classes
        if c == 0 and n > 0:
            raise ValueError("label_names is empty")
        if len(set(self.label_names)) != c:
            raise ValueError("label_names contains duplicates")
        if self.labels.size:
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= c:
                bad = lo if lo < 0 else hi
                raise ValueError(f"labels contains {bad}, outside [0, {c}) "
                                 f"(num_classes={c})")
        seen = np.zeros(n, dtype=np.int8)
        for split in ("train_idx", "val_idx", "test_idx"):
            idx = getattr(self, split)
            if idx.ndim != 1:
                raise ValueError(f"{split} must be 1-D, got shape {list(idx.shape)}")
            if idx.size:
                lo, hi = int(idx.min()), int(idx.max())
                if lo < 0 or hi >= n:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"{split} contains node {bad}, outside [0, {n})")
            if np.unique(idx).size != idx.size:
                raise ValueError(f"{split} contains repeated node indices")
            if idx.size and np.any(seen[idx]):
                dup = int(idx[np.flatnonzero(seen[idx])[0]])
                raise ValueError(f"node {dup} is in {split} and in an earlier split "
                                 f"(splits must be disjoint)")
            seen[idx] = 1
        return self

    # ---------------------------------------------------------------- helpers
    def degrees(self, undirected: bool = True) -> np.ndarray:
        """Number of neighbours of each node (distinct, self-loops ignored).

        undirected=True counts in- and out-neighbours together; False gives
        out-degrees."""
        src, dst = self.edge_index
        keep = src != dst
        src, dst = src[keep], dst[keep]
        if undirected:
            a = np.concatenate([src, dst])
            b = np.concatenate([dst, src])
        else:
            a, b = src, dst
        n = self.num_nodes
        if a.size == 0:
            return np.zeros(n, dtype=np.int64)
        key = np.unique(a * n + b)
        return np.bincount(key // n, minlength=n).astype(np.int64)

    def to_undirected(self) -> "TextGraph":
        """A copy whose edge list holds both directions of every edge, once
        each, sorted, without self-loops."""
        src, dst = self.edge_index
        keep = src != dst
        src, dst = src[keep], dst[keep]
        a = np.concatenate([src, dst])
        b = np.concatenate([dst, src])
        n = max(self.num_nodes, 1)
        key = np.unique(a * n + b)
        ei = np.stack([key // n, key % n]).astype(np.int64)
        return dataclasses.replace(self, edge_index=ei, texts=list(self.texts))

    def subgraph(self, node_ids) -> "TextGraph":
        """Induced subgraph on node_ids, relabelled 0..k-1 in the given order.

        Keeps only edges with both ends selected; each split is restricted to
        the selected nodes (split membership is preserved). Label ids and
        names are kept as they are (a class may end up empty)."""
        ids = _as_index(node_ids, "node_ids").ravel()
        n = self.num_nodes
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise ValueError(f"node_ids must be in [0, {n})")
        if np.unique(ids).size != ids.size:
            raise ValueError("node_ids contains repeated nodes")
        new_of = np.full(n, -1, dtype=np.int64)
        new_of[ids] = np.arange(ids.size, dtype=np.int64)
        src, dst = self.edge_index
        keep = (new_of[src] >= 0) & (new_of[dst] >= 0) if src.size else np.zeros(0, bool)
        ei = np.stack([new_of[src[keep]], new_of[dst[keep]]]).astype(np.int64)

        def restrict(idx):
            m = new_of[idx]
            return np.sort(m[m >= 0])

        return TextGraph(
            texts=[self.texts[i] for i in ids.tolist()],
            edge_index=ei,
            labels=self.labels[ids].copy(),
            label_names=list(self.label_names),
            train_idx=restrict(self.train_idx),
            val_idx=restrict(self.val_idx),
            test_idx=restrict(self.test_idx),
            name=self.name,
            provenance=self.provenance,
        )

    def label_counts(self) -> dict:
        """{label name: number of nodes}."""
        cnt = np.bincount(self.labels, minlength=self.num_classes) if self.labels.size \
            else np.zeros(self.num_classes, dtype=np.int64)
        return {name: int(c) for name, c in zip(self.label_names, cnt)}

    def summary(self) -> dict:
        """Summary statistics (plain Python types, JSON-serialisable)."""
        n = self.num_nodes
        deg = self.degrees(undirected=True)
        lens = np.array([len(t) for t in self.texts]) if n else np.zeros(1)
        return {
            "name": self.name,
            "num_nodes": n,
            "num_edges": self.num_edges,
            "num_classes": self.num_classes,
            "mean_degree": float(deg.mean()) if n else 0.0,
            "isolated_fraction": float((deg == 0).mean()) if n else 0.0,
            "mean_text_chars": float(lens.mean()),
            "train": int(self.train_idx.size),
            "val": int(self.val_idx.size),
            "test": int(self.test_idx.size),
            "label_counts": self.label_counts(),
        }

    def to_dict(self) -> dict:
        """Everything as plain Python types (lists of ints), e.g. for JSON."""
        return {
            "name": self.name,
            "provenance": self.provenance,
            "texts": list(self.texts),
            "edge_index": self.edge_index.tolist(),
            "labels": self.labels.tolist(),
            "label_names": list(self.label_names),
            "train_idx": self.train_idx.tolist(),
            "val_idx": self.val_idx.tolist(),
            "test_idx": self.test_idx.tolist(),
        }

    # ------------------------------------------------------------------- repr
    def __repr__(self) -> str:
        s = self.summary()
        counts = sorted(s["label_counts"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k}: {v}" for k, v in counts[:6])
        if len(counts) > 6:
            shown += f", ... (+{len(counts) - 6} more)"
        lines = [
            f"TextGraph({self.name!r}: {s['num_nodes']} nodes, {s['num_edges']} edges, "
            f"{s['num_classes']} classes)",
            f"  split: train {s['train']} / val {s['val']} / test {s['test']}",
            f"  mean degree {s['mean_degree']:.2f} (undirected), isolated "
            f"{100 * s['isolated_fraction']:.1f}%, mean text {s['mean_text_chars']:.0f} chars",
            f"  labels: {shown}",
        ]
        if self.texts:
            t = self.texts[0].replace("\n", " ")
            lines.append(f"  texts[0]: {t[:70]!r}{'...' if len(t) > 70 else ''}")
        if self.provenance:
            p = self.provenance.replace("\n", " ")
            lines.append(f"  provenance: {p[:150]}{'...' if len(p) > 150 else ''}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(repr(self))


def stratified_split(labels, seed: int = 0, frac=(0.6, 0.2, 0.2)):
    """Seeded stratified split: within each class, a permutation drawn from
    numpy.random.default_rng(seed) (one generator, classes in label order)
    gives round(f_train*n) train, round(f_val*n) val and the rest test.

    Returns (train_idx, val_idx, test_idx), each sorted int64."""
    labels = _as_index(labels, "labels")
    if len(frac) != 3 or any(f < 0 for f in frac) or abs(sum(frac) - 1.0) > 1e-9:
        raise ValueError(f"frac must be three non-negative fractions summing to 1, got {frac}")
    rng = np.random.default_rng(seed)
    tr, va, te = [], [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n_tr = int(round(frac[0] * idx.size))
        n_va = int(round(frac[1] * idx.size))
        if idx.size >= 1 and n_tr == 0 and frac[0] > 0:
            n_tr = 1
        n_va = min(n_va, idx.size - n_tr)
        tr.append(idx[:n_tr])
        va.append(idx[n_tr:n_tr + n_va])
        te.append(idx[n_tr + n_va:])
    cat = (lambda xs: np.sort(np.concatenate(xs)).astype(np.int64) if xs
           else np.zeros(0, dtype=np.int64))
    return cat(tr), cat(va), cat(te)
