"""Reduced-input training for EngineClassifier (``input_rank=r``).

The first linear map of every ladder's projector, ``W0 h + b0`` with ``W0``
of shape (k, D), is the largest product of an ENGINE step on wide states: its
forward and weight gradient are 2 * 2*U*D*k FLOPs per ladder, 2.9 of 8.0
GFLOP per step with MiniLM's 384-wide states and about 6.7 of 11.5 with a
896-wide decoder's. With ``input_rank=r`` the classifier trains ``W0`` inside
a fixed r-dimensional subspace of each layer's states instead:

1. Once per fit, for each selected layer: the per-dimension mean ``mu`` and
   standard deviation ``s`` of the cached states, and the top-r eigenvectors
   ``P`` (D, r) of the covariance of the standardised states (a PCA of the
   correlation matrix; without the standardisation a few outlier dimensions
   of decoder states would take the whole basis, docs/PERFORMANCE.md §4).
   The statistics come from a seeded sample of at most ``sample_rows`` nodes
   and use no label.
2. Every node's states are reduced once, ``x = ((h - mu) / s) P``, and kept
   in memory (N * r * 4 bytes per layer); training and validation gather the
   r-wide rows, and the projector's first linear is ``W0' x + b0'``, (k, r).
3. At the end of fit the first linear is folded back into the full width:
   ``W0 = W0' P^T diag(1/s)`` and ``b0 = b0' - W0 mu`` give the same function
   of ``h``. The fitted estimator is then the paper's model (same parameter
   names and shapes; ``projector.0.weight`` has rank at most r), so predict,
   live early exit, save/load and the PyTorch export work on the full states
   as before.

This changes the model that is trained (W0 is restricted to a subspace), not
only its speed: the accuracy it reaches is measured, not assumed
(docs/PERFORMANCE.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["StateBasis", "fit_basis", "reduce_states", "fold_first_linear"]

# rows whose states are reduced at a time (bounds the float copies to a few MB)
_CHUNK = 8192


@dataclass
class StateBasis:
    """Per selected layer: ``mean`` (D,), ``scale`` (D,), ``components`` (D, r)
    and ``explained`` (the share of the standardised variance the r
    directions keep), all float64 except as noted. ``layers[i]`` is the layer
    id of entry i."""
    layers: list
    mean: list
    scale: list
    components: list
    explained: list

    @property
    def rank(self) -> int:
        return int(self.components[0].shape[1])


def fit_basis(cache, layers, rank, seed, sample_rows=20000, bar=None) -> StateBasis:
    """Mean, scale and the top-``rank`` principal directions of the
    standardised states of each layer in ``layers``, from a sample of at most
    ``sample_rows`` nodes drawn with ``seed`` (rows holding NaN or inf are
    left out of the statistics). ``bar.update(1)`` after each layer."""
    n, d = int(cache.num_nodes), int(cache.dim)
    if not 1 <= rank < d:
        raise ValueError(f"input_rank must be in [1, {d}) for {d}-wide states, got {rank}")
    rng = np.random.default_rng(seed)
    ids = np.sort(rng.choice(n, size=min(n, int(sample_rows)), replace=False)).astype(np.int64)
    means, scales, comps, explained = [], [], [], []
    for layer in layers:
        H = np.asarray(cache.gather(layer, ids), dtype=np.float64)
        H = H[np.isfinite(H).all(axis=1)]
        if H.shape[0] < 2:
            raise ValueError(f"layer {layer}: fewer than 2 finite state rows in the sample; "
                             "cannot choose an input basis")
        mu = H.mean(axis=0)
        s = H.std(axis=0)
        # a constant dimension carries nothing: scale 1 keeps it at 0 without
        # dividing by ~0
        s = np.where(s > 1e-12 * max(float(s.max()), 1e-300), s, 1.0)
        X = (H - mu) / s
        w, V = np.linalg.eigh(X.T @ X / X.shape[0])
        order = np.argsort(w)[::-1][:rank]
        P = V[:, order]
        # eigenvectors are defined up to sign: make each one's largest entry
        # positive, so the basis does not depend on LAPACK's choice
        flip = np.sign(P[np.argmax(np.abs(P), axis=0), np.arange(rank)])
        P = P * np.where(flip == 0, 1.0, flip)
        means.append(mu)
        scales.append(s)
        comps.append(P)
        total = float(np.clip(w, 0, None).sum())
        explained.append(float(np.clip(w[order], 0, None).sum() / total) if total > 0 else 1.0)
        if bar is not None:
            bar.update(1)
    return StateBasis(list(layers), means, scales, comps, explained)


def reduce_states(cache, basis: StateBasis, bar=None):
    """Every node's reduced states ``((h - mean) / scale) @ components`` per
    layer of ``basis``, as an InMemoryStates of width ``basis.rank``. A row
    holding NaN or inf stays non-finite, so training names that node as it
    would on the full states. ``bar.update(rows)`` as rows are done."""
    from .engine import InMemoryStates

    n = int(cache.num_nodes)
    out = {}
    for li, layer in enumerate(basis.layers):
        mu = basis.mean[li].astype(np.float32)
        inv = (1.0 / basis.scale[li]).astype(np.float32)
        P = np.ascontiguousarray(basis.components[li], dtype=np.float32)
        R = np.empty((n, P.shape[1]), np.float32)
        for s in range(0, n, _CHUNK):
            ids = np.arange(s, min(n, s + _CHUNK), dtype=np.int64)
            H = np.asarray(cache.gather(layer, ids), dtype=np.float32)
            np.matmul((H - mu) * inv, P, out=R[s:s + ids.size])
            if bar is not None:
                bar.update(ids.size)
        out[layer] = R
    return InMemoryStates(out)


def fold_first_linear(W, b, mean, scale, components):
    """The full-width (k, D) weight and (k,) bias equal to the reduced first
    linear ``W x + b`` (W: (k, r)) applied to ``x = ((h - mean) / scale) @
    components``: ``W_full = W components^T diag(1/scale)``, ``b_full = b -
    W_full mean``. Computed in float64, returned as float32."""
    W = np.asarray(W, dtype=np.float64)
    Wf = (W @ np.asarray(components, dtype=np.float64).T) / np.asarray(scale, dtype=np.float64)[None, :]
    bf = np.asarray(b, dtype=np.float64) - Wf @ np.asarray(mean, dtype=np.float64)
    return Wf.astype(np.float32), bf.astype(np.float32)
