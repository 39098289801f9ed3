"""ENGINE: the G-Ladder side structure trained on cached encoder states.

:class:`EngineClassifier` is a scikit-learn style estimator. ``fit`` drives
the epoch loop from Python one batch at a time (Ctrl-C works, a tqdm bar shows
loss and validation accuracy); each batch is sampled in C, the rows of the
selected layers are gathered from the cache, and the forward, backward and
AdamW step run in C (csrc/engine/ladder.c) with the GIL released.

The cache is anything with ``layers`` (cached layer ids), ``num_nodes``,
``dim`` and ``gather(layer, node_ids) -> float32 (n, dim)``: an
``engine_py.cache.LayerCache`` or :class:`InMemoryStates` for states in memory.

Model (docs/ALGORITHMS.md §A.2) and documented choices:

* heads: with ``early_exit`` every ladder but the last has an exit head
  ``exit_heads.i``; the last ladder's head is ``classifier``; the loss is the
  sum of their cross-entropies. Without it only the classifier is trained.
* each GNN conv is followed by norm -> activation -> dropout, except the last
  conv of the last ladder, which is followed by nothing.
* AdamW decays every parameter (a single torch parameter group).
* ``norm="bn"``: torch BatchNorm1d over the batch's nodes (batch statistics and
  running-estimate updates while training, running estimates when predicting);
  its running_mean / running_var / num_batches_tracked are buffers in the
  state dict, as in PyTorch.
"""
from __future__ import annotations

import inspect
import json
import logging
import math
import numbers
import os
import sys
from collections import OrderedDict

import numpy as np

from . import _core
from ._isa import warn_if_bf16_emulated
from ._guard import exclusive
from ._progress import progress
from ._threads import adapt as _adapt_threads
from ._validate import (InvalidParameterError, check_bool, check_choice, check_float, check_int,
                        check_node_ids, read_json)
from .graph import Batch, Graph

__all__ = ["EngineClassifier", "InMemoryStates", "NotFittedError"]

_GNN = {"sage": 0, "gcn": 1, "gat": 2}
_ACT = {"elu": 0, "relu": 1}
_NORM = {"id": 0, "ln": 1, "bn": 2}
_PRECISION = {"float32": 0, "bfloat16": 1}
_FORMAT = "engine_py.EngineClassifier"
_FORMAT_VERSION = 2   # 2: config.json holds "classes" (1 is still read)
_log = logging.getLogger(__name__)


class NotFittedError(ValueError, AttributeError):
    """The estimator is used before ``fit`` (or ``load``)."""


class InMemoryStates:
    """Per-layer node states held in memory, with the LayerCache interface.

    ``InMemoryStates({0: H0, 3: H3})`` or ``InMemoryStates(array, layers)`` with
    ``array`` of shape (L, N, D) and ``layers`` its L layer ids (default
    ``range(L)``). Arrays are kept as float32.
    """

    def __init__(self, states, layers=None):
        if isinstance(states, dict):
            if layers is not None:
                raise ValueError("give layers only with an (L, N, D) array")
            if not states:
                raise ValueError("states is empty")
            self.layers = [check_int(k, "layer id") for k in states]
            arrs = [np.ascontiguousarray(states[k], dtype=np.float32) for k in states]
        else:
            a = np.asarray(states)
            if a.ndim != 3:
                raise ValueError(f"states must be a dict of (N, D) arrays or an (L, N, D) array, got shape {a.shape}")
            self.layers = (list(range(a.shape[0])) if layers is None
                           else [check_int(x, "layer id") for x in layers])
            if len(self.layers) != a.shape[0]:
                raise ValueError(f"{len(self.layers)} layer ids for {a.shape[0]} layers")
            arrs = [np.ascontiguousarray(a[i], dtype=np.float32) for i in range(a.shape[0])]
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"duplicate layer ids in {self.layers}")
        shapes = {x.shape for x in arrs}
        if len(shapes) != 1 or arrs[0].ndim != 2:
            raise ValueError(f"every layer must be an (N, D) array of one shape, got {sorted(shapes)}")
        self._states = dict(zip(self.layers, arrs))
        self.num_nodes, self.dim = arrs[0].shape

    def gather(self, layer, node_ids) -> np.ndarray:
        """float32 (n, D) states of ``node_ids`` (integers in [0, num_nodes)) at
        ``layer``; an empty id list gives a (0, D) array. Like LayerCache.gather:
        float, bool and multi-dimensional id arrays are refused."""
        if layer not in self._states:
            raise KeyError(f"layer {layer} is not cached (cached: {self.layers})")
        ids = check_node_ids(node_ids)
        if ids.ndim != 1:
            raise ValueError(f"node_ids must be 1-D, got shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.num_nodes):
            bad = ids[(ids < 0) | (ids >= self.num_nodes)][0]
            raise IndexError(f"node id {bad} out of range [0, {self.num_nodes})")
        return self._states[layer][ids]


def _as_ids(x, n, what):
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of node ids, got shape {a.shape}")
    if a.dtype == bool:
        if a.shape[0] != n:
            raise ValueError(f"boolean {what} must have length {n}, got {a.shape[0]}")
        a = np.flatnonzero(a)
    elif a.size and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{what} must hold integer node ids, got dtype {a.dtype}")
    a = a.astype(np.int64, copy=False)
    if a.size and (a.min() < 0 or a.max() >= n):
        bad = a[(a < 0) | (a >= n)][0]
        raise ValueError(f"{what}: node id {bad} is outside [0, {n})")
    return a


def _label_kind(v):
    """'str', 'int', 'bool', 'float' or None for one label value."""
    if isinstance(v, (bool, np.bool_)):
        return "bool"
    if isinstance(v, str):
        return "str"
    if isinstance(v, numbers.Integral):
        return "int"
    if isinstance(v, numbers.Real):
        return "float"
    return None


def _show(v):
    """repr of a label, NumPy scalars shown as the Python value (7, not np.int64(7))."""
    return repr(v.item() if isinstance(v, np.generic) else v)


def _encode_labels(labels, n, train_idx, val_idx):
    """sklearn-style classes from the training labels.

    Returns ``(classes, y)``: ``classes`` the sorted distinct labels of the
    training nodes (np.unique order), ``y`` int64 (n,) with the class index of
    every training/validation node and -1 elsewhere (the labels of other nodes
    are placeholders and never read). Validation labels must be among the
    training classes."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"labels must have one entry per node ({n}), got shape {y.shape}")
    used = train_idx if val_idx is None else np.concatenate([train_idx, val_idx])
    yu = y[used]
    kind = y.dtype.kind
    if kind == "O":
        kinds = [_label_kind(v) for v in yu]
        if None in kinds:
            j = kinds.index(None)
            raise ValueError(f"the label of node {used[j]} is {_show(yu[j])} ({type(yu[j]).__name__}); "
                             "training/validation labels must be str, int or bool")
        if len(set(kinds)) > 1:
            a = kinds.index(kinds[0])
            b = next(j for j, k in enumerate(kinds) if k != kinds[0])
            raise ValueError(f"labels mix types: node {used[a]} has {_show(yu[a])} and node {used[b]} "
                             f"has {_show(yu[b])}; use one type (all str or all int)")
        kind = {"str": "U", "int": "i", "bool": "b", "float": "f"}[kinds[0]] if kinds else "i"
        if kind in "ibf":
            yu = np.asarray(yu.tolist(), dtype={"i": np.int64, "b": bool, "f": np.float64}[kind])
    if kind == "f":
        bad = ~np.isfinite(yu)
        if bad.any():
            j = int(np.argmax(bad))
            raise ValueError(f"the label of node {used[j]} is {yu[j]}; training/validation nodes need "
                             "a class label (NaN may mark only unlabeled nodes outside train_idx/val_idx)")
        frac = yu != np.round(yu)
        if frac.any():
            j = int(np.argmax(frac))
            raise ValueError(f"labels must be integers, strings or bools (class labels), got the "
                             f"non-integer {yu[j]} at node {used[j]}")
        yu = yu.astype(np.int64)
    elif kind == "S":
        raise ValueError("labels are bytes: decode them to str first (e.g. labels.astype(str))")
    elif kind not in "iubUO":
        raise ValueError(f"labels must be integers, strings or bools (class labels), got dtype {y.dtype}")
    yt, yv = yu[:train_idx.size], yu[train_idx.size:]
    try:
        classes = np.unique(yt)
    except TypeError as exc:   # an object array numpy cannot sort
        raise ValueError(f"labels cannot be sorted into classes: {exc}") from None
    if classes.size < 2:
        raise ValueError(f"need at least two classes among the training labels, got {classes.tolist()}")
    enc = np.full(n, -1, np.int64)
    enc[train_idx] = np.searchsorted(classes, yt)
    if yv.size:
        pos = np.searchsorted(classes, yv)
        ok = pos < classes.size
        ok[ok] = classes[pos[ok]] == yv[ok]
        if not ok.all():
            j = int(np.argmin(ok))
            raise ValueError(f"validation node {val_idx[j]} has label {_show(yv[j])}, which no training node "
                             f"has (training classes: {classes.tolist()}); every validation label must "
                             "be a training class")
        enc[val_idx] = pos
    return classes, enc


def _check_cache(cache):
    for attr in ("layers", "num_nodes", "dim", "gather"):
        if not hasattr(cache, attr):
            raise TypeError(f"cache must have .layers, .num_nodes, .dim and .gather(); missing .{attr} "
                            "(use engine_py.engine.InMemoryStates for arrays in memory)")


def _raise_if_nonfinite(Hs, layers, nodes, cache=None):
    """After the core refused a batch: if a state row holds NaN or inf, raise
    ValueError naming the node id and the layer (the core only knows the row
    of the batch); otherwise return, and the caller re-raises the core's
    error. ``Hs[i]`` is the (len(nodes), D) states of layer ``layers[i]``;
    ``nodes[j]`` the node id of row j (ids >= cache.num_nodes are new nodes of
    predict_new)."""
    for H, layer in zip(Hs, layers):
        bad = ~np.isfinite(H).all(axis=1)
        if bad.any():
            node = int(nodes[int(np.argmax(bad))])
            n = int(getattr(cache, "num_nodes", -1)) if cache is not None else -1
            if 0 <= n <= node:
                who = f"new node {node - n} (texts[{node - n}] of predict_new)"
                src = "the encoder"
            else:
                who = f"node {node}"
                src = f"the states source ({type(cache).__name__})" if cache is not None else "the encoder"
            raise ValueError(f"the layer-{layer} states of {who} contain NaN or inf (from {src}); "
                             "rebuild those states, or leave the node out of train_idx/val_idx "
                             "and out of every sampled neighbourhood") from None


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _seed64(*parts):
    # a stable 64-bit seed from small integers (no Python hash randomisation)
    s = 0x9E3779B97F4A7C15
    for p in parts:
        s = (s ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        s ^= s >> 31
    return s


class EngineClassifier:
    """ENGINE node classifier (G-Ladder side structure over cached LLM states).

    Parameters are the ones of the paper's reference configuration; see
    docs/ALGORITHMS.md §A. ``layers=None`` uses every layer in the cache; a
    list picks layer ids; a string selects among the states 0..max(cached)
    like ``engine_py.cache.parse_layers``: ``"engine"`` (about seven evenly
    spaced, the paper's choice), ``"every:K"``, ``"last"``, ``"all"``.
    ``r`` (optional) sets ``reduced_dim = dim // r`` at fit time. ``heads`` is
    the GAT head count (used with ``gnn="gat"``).

    ``precision``: ``"float32"`` (default) or ``"bfloat16"``: the products of
    the projectors and GNNs, forward and backward, with both operands rounded
    to bfloat16 and float32 sums (the AVX512-BF16 kernel where the CPU has
    it; elsewhere an exact emulation, no faster than float32, and a
    ``BFloat16EmulationWarning`` says so); norms, activations, heads, losses and
    AdamW stay float32, as in mixed-precision training. Measured accuracy
    and speed: docs/PERFORMANCE.md. A node sampled into several subgraphs of
    a batch is read and projected once in either precision.

    ``input_rank`` (optional, an integer r; r >= the states' width D trains
    on the full states as without it): train each projector's first linear
    map on the top-r principal directions of its layer's standardised
    states, chosen once per fit from the cache (no labels), then fold it
    back to full width at the end of fit. The fitted model is the same
    architecture with a ``projector.0.weight`` of rank at most r. Training
    does D/r times less work in that product, gathers D/r times fewer bytes
    per batch, and holds the reduced states of every node in memory
    (N * r * 4 bytes per selected layer). It restricts the model, so check
    its accuracy on your task: on the Debian graph with MiniLM states rank
    128 kept the accuracy and rank 64 lost 1.25 points. docs/PERFORMANCE.md
    gives the measured speed and accuracy, engine_py/_state_reduction.py the
    algebra. ``input_basis_`` holds the basis of the last fit.
    """

    def __init__(self, layers=None, reduced_dim=128, hidden=64, gnn="sage", gnn_layers=1,
                 activation="elu", norm="id", dropout=0.5, sampler="khop", max_neighbors=None,
                 walk_steps=64, restart=0.5, T=0.1, lr=1e-3, weight_decay=5e-4, epochs=200,
                 patience=20, batch_size=256, early_exit=True, seed=0, show_progress_bar=None,
                 r=None, heads=4, precision="float32", input_rank=None):
        self.layers = layers
        self.reduced_dim = reduced_dim
        self.hidden = hidden
        self.gnn = gnn
        self.gnn_layers = gnn_layers
        self.activation = activation
        self.norm = norm
        self.dropout = dropout
        self.sampler = sampler
        self.max_neighbors = max_neighbors
        self.walk_steps = walk_steps
        self.restart = restart
        self.T = T
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.early_exit = early_exit
        self.seed = seed
        self.show_progress_bar = show_progress_bar
        self.r = r
        self.heads = heads
        self.precision = precision
        self.input_rank = input_rank

    # ------------------------------------------------------------ params
    @classmethod
    def _param_names(cls):
        sig = inspect.signature(cls.__init__)
        return [p for p in sig.parameters if p != "self"]

    def get_params(self, deep=True):
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise ValueError(f"invalid parameter {k!r} for EngineClassifier; valid: {sorted(valid)}")
            setattr(self, k, v)
        return self

    def __repr__(self):
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()
                    if p.name != "self"}
        def same(v, d):
            # a NumPy array (layers=np.arange(3)) compares element-wise: not a default
            return v is d or (type(v) is type(d) and not isinstance(v, np.ndarray) and v == d)
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not same(v, defaults.get(k))]
        return f"EngineClassifier({', '.join(changed)})"

    # ------------------------------------------------------- validation
    def _validate_hparams(self):
        """Check every hyper-parameter (NumPy scalars are accepted for numbers;
        bools, strings and floats where an integer is needed are refused) and
        return nothing; fit() and load() call it."""
        check_choice(self.gnn, "gnn", _GNN)
        check_choice(self.activation, "activation", _ACT)
        check_choice(self.norm, "norm", _NORM)
        check_choice(self.sampler, "sampler", ("khop", "rw"))
        if isinstance(self.layers, str):
            from .cache import parse_layers
            try:
                parse_layers(self.layers, 64)   # the syntax; resolved against the cache in fit
            except ValueError as exc:
                raise InvalidParameterError(str(exc)) from None
        elif self.layers is not None:
            if isinstance(self.layers, bytes) or not hasattr(self.layers, "__iter__"):
                raise InvalidParameterError(f"layers must be None or a list of layer ids, got {self.layers!r}")
            for i, v in enumerate(self.layers):
                check_int(v, f"layers[{i}]", min=0)
        check_int(self.reduced_dim, "reduced_dim", min=1)
        check_int(self.hidden, "hidden", min=1)
        check_int(self.gnn_layers, "gnn_layers", min=1, max=2)
        check_float(self.dropout, "dropout", min=0.0, max=1.0, max_open=True)
        check_int(self.max_neighbors, "max_neighbors", min=1, none=True)
        check_int(self.walk_steps, "walk_steps", min=0, max=1 << 20)
        check_float(self.restart, "restart", min=0.0, max=1.0)
        check_float(self.T, "T", min=0.0, min_open=True)
        check_float(self.lr, "lr", min=0.0, min_open=True)
        check_float(self.weight_decay, "weight_decay", min=0.0)
        check_int(self.epochs, "epochs", min=1)
        check_int(self.patience, "patience", min=1)
        check_int(self.batch_size, "batch_size", min=1)
        check_bool(self.early_exit, "early_exit")
        check_int(self.seed, "seed")
        check_int(self.r, "r", min=1, none=True)
        check_int(self.heads, "heads", min=1)
        check_choice(self.precision, "precision", _PRECISION)
        check_int(self.input_rank, "input_rank", min=1, none=True)
        warn_if_bf16_emulated(_core, self.precision, "EngineClassifier")

    def _resolve_layers(self, cache):
        cached = [int(x) for x in cache.layers]
        if isinstance(self.layers, str):   # "engine", "every:K", ...: over the cache's states 0..max
            from .cache import parse_layers
            layers = parse_layers(self.layers, max(cached))
        else:
            layers = cached if self.layers is None else [int(x) for x in self.layers]   # checked ints
        if not layers:
            raise ValueError("no layers selected")
        missing = [l for l in layers if l not in cached]
        if missing:
            raise ValueError(f"layers {missing} are not in the cache (cached: {cached})")
        return layers

    def _as_graph(self, graph, num_nodes):
        if not isinstance(graph, Graph):
            graph = Graph(graph, num_nodes=num_nodes)
        if graph.num_nodes != num_nodes:
            raise ValueError(f"the graph has {graph.num_nodes} nodes but the cache has {num_nodes}")
        return graph

    # --------------------------------------------------------- batching
    def _sample(self, graph, targets, seed):
        return graph.sample(targets, self.sampler, max_neighbors=self.max_neighbors,
                           walk_steps=self.walk_steps, restart=self.restart, seed=seed)

    def _gather(self, cache, batch: Batch):
        """One (num_nodes, D) float32 state array per selected layer, a row per
        batch node (repeated nodes repeated): what a per-node model takes."""
        return [np.ascontiguousarray(cache.gather(l, batch.nodes), dtype=np.float32)
                for l in self.layers_]

    def _gather_unique(self, cache, batch: Batch):
        """(keys, rows, states): the batch's distinct node ids, each batch
        node's row among them (keys[rows] == batch.nodes), and one (len(keys),
        D) array per layer. A node sampled into several subgraphs is read
        from the cache and projected once (train_batch/predict_batch rows=)."""
        keys, rows = np.unique(batch.nodes, return_inverse=True)
        states = [np.ascontiguousarray(cache.gather(l, keys), dtype=np.float32) for l in self.layers_]
        return keys, rows.astype(np.int64, copy=False).reshape(-1), states

    def _predict_logits(self, cache, graph, node_ids, all_heads=False):
        out = []
        bs = int(self.batch_size)
        eval_seed = _seed64(self.seed, 0xE7A1)
        for s in range(0, len(node_ids), bs):
            t = node_ids[s:s + bs]
            b = self._sample(graph, t, eval_seed)
            keys, rows, Hs = self._gather_unique(cache, b)
            try:
                z = self.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, Hs, rows=rows)
            except ValueError:
                _raise_if_nonfinite(Hs, self.layers_, keys, cache)
                raise
            out.append(z if all_heads else z[-1])
            _adapt_threads()
        if not out:
            k = len(self.layers_)
            shape = (k, 0, self.num_classes_) if all_heads else (0, self.num_classes_)
            return np.zeros(shape, np.float32)
        return np.concatenate(out, axis=1 if all_heads else 0)

    # --------------------------------------------------------------- fit
    def _build(self, num_layers, dim, num_classes, k=None):
        """A freshly initialised core model for ``dim``-wide states; ``k`` (the
        projector width) defaults to reduced_dim, or dim // r."""
        if k is None:
            k = int(self.reduced_dim) if self.r is None else max(1, dim // int(self.r))
        self.reduced_dim_ = k
        self.model_ = _core.Ladder(num_layers, int(dim), k, int(self.hidden), int(num_classes),
                                   _GNN[self.gnn], int(self.gnn_layers), _ACT[self.activation],
                                   _NORM[self.norm], int(self.heads), bool(self.early_exit),
                                   float(self.dropout), float(self.T), _seed64(self.seed, 1),
                                   precision=_PRECISION[self.precision])
        self._table = self.model_.param_table()
        self._params = self.model_.buffer("param")

    def _setup(self, cache, graph, labels, train_idx, val_idx):
        """fit() up to the training loop: checks, classes_ and a freshly
        initialised model. Returns (train_idx, val_idx, y encoded, graph)."""
        self._validate_hparams()
        _check_cache(cache)
        n = int(cache.num_nodes)
        layers = self._resolve_layers(cache)
        graph = self._as_graph(graph, n)
        train_idx = _as_ids(train_idx, n, "train_idx")
        if train_idx.size == 0:
            raise ValueError("train_idx is empty: nothing to train on")
        val_idx = None if val_idx is None else _as_ids(val_idx, n, "val_idx")
        classes, y = _encode_labels(labels, n, train_idx, val_idx)
        self.layers_ = layers
        self.num_classes_ = int(classes.size)
        self.classes_ = classes
        self.in_dim_ = int(cache.dim)
        self._build(len(layers), self.in_dim_, self.num_classes_)
        return train_idx, val_idx, y, graph

    @exclusive("this EngineClassifier")
    def fit(self, cache, graph, labels, train_idx, val_idx=None, *, show_progress_bar=None):
        """Train on ``train_idx``; early-stop on accuracy over ``val_idx``.

        ``labels`` holds one label per node (length ``cache.num_nodes``), as
        in scikit-learn: any integers (``{3, 7, 42}``, negative ones), strings
        or bools. ``classes_`` is the sorted distinct labels of the training
        nodes (``np.unique``); every validation label must be one of them
        (ValueError otherwise). Labels of nodes outside train_idx/val_idx are
        never read, so they can be placeholders (-1, None, NaN, ""). Labels
        0..C-1 all present in training give ``classes_ = arange(C)``.
        ``predict`` returns labels from ``classes_``, ``predict_proba``'s
        columns follow it. Returns self. The best-validation weights are
        restored at the end. ``show_progress_bar`` overrides the estimator's
        setting for this call (None: use it; see engine_py._progress).
        """
        train_idx, val_idx, y, graph = self._setup(cache, graph, labels, train_idx, val_idx)
        self.cache_, self.graph_ = cache, graph
        self.history_ = []
        # input_rank: train on reduced states, fold back after the loop
        basis, states = self._reduce_inputs(cache, show_progress_bar)
        rng = np.random.default_rng(_seed64(self.seed, 2))
        best_acc, best_epoch, best = -1.0, -1, None
        bs = int(self.batch_size)
        nb = -(-train_idx.size // bs)
        bar = self._progress(int(self.epochs), "epoch", show_progress_bar)
        try:
            with bar:
                for epoch in range(int(self.epochs)):
                    perm = train_idx[rng.permutation(train_idx.size)]
                    total, count = 0.0, 0
                    for bi, s in enumerate(range(0, perm.size, bs)):
                        t = perm[s:s + bs]
                        b = self._sample(graph, t, _seed64(self.seed, 3, epoch))
                        if self.norm == "bn" and b.num_nodes < 2:
                            continue   # BatchNorm cannot train on one node (torch raises); skip it
                        keys, rows, Hs = self._gather_unique(states, b)
                        try:
                            loss = self.model_.train_batch(b.graph_ptr, b.indptr, b.indices, Hs, y[t],
                                                           _seed64(self.seed, 4, epoch, bi),
                                                           float(self.lr), float(self.weight_decay),
                                                           rows=rows)
                        except ValueError:
                            _raise_if_nonfinite(Hs, self.layers_, keys, cache)   # the user's source
                            raise
                        if not math.isfinite(loss):
                            raise FloatingPointError(f"training loss became {loss} at epoch {epoch}; lower lr")
                        total += loss * t.size
                        count += t.size
                        bar.tick(f"batch {bi + 1}/{nb}")
                        _adapt_threads()
                    rec = {"epoch": epoch, "loss": total / max(count, 1)}
                    if val_idx is not None and val_idx.size:
                        acc = float(np.mean(self._predict_logits(states, graph, val_idx).argmax(1) == y[val_idx]))
                        rec["val_acc"] = acc
                        if acc > best_acc:
                            best_acc, best_epoch, best = acc, epoch, self._params.copy()
                    self.history_.append(rec)
                    bar.set_postfix({k: v for k, v in rec.items() if k != "epoch"})
                    bar.update(1)
                    if best is not None and epoch - best_epoch >= int(self.patience):
                        break
            if best is not None:
                self._params[:] = best
        finally:
            # also when interrupted (Ctrl-C, an error): the estimator keeps a
            # full-width model that takes the cache's states
            if basis is not None:
                self._fold_inputs(basis)
        self.best_epoch_ = best_epoch
        self.best_val_acc_ = best_acc if best is not None else None
        self.n_epochs_ = len(self.history_)
        return self

    def _reduce_inputs(self, cache, show_progress_bar):
        """(basis, states) for fit: with input_rank below the states' width,
        the per-layer basis (engine_py._state_reduction), every node's reduced
        states, and a core model rebuilt for them (same projector width);
        otherwise (None, cache)."""
        self.input_basis_ = None
        rank = self.input_rank
        if rank is None or int(rank) >= self.in_dim_:
            return None, cache
        from ._state_reduction import fit_basis, reduce_states

        with self._progress(len(self.layers_), "layer", show_progress_bar, desc="input basis",
                            long=False) as bar:
            basis = fit_basis(cache, self.layers_, int(rank), _seed64(self.seed, 5), bar=bar)
        n = int(cache.num_nodes) * len(self.layers_)
        with self._progress(n, "row", show_progress_bar, desc="reduce states") as bar:
            states = reduce_states(cache, basis, bar=bar)
        self.input_basis_ = basis
        self._build(len(self.layers_), basis.rank, self.num_classes_, k=self.reduced_dim_)
        return basis, states

    def _fold_inputs(self, basis):
        """Replace the reduced-input model by the full-width one computing the
        same function of the full states (fold_first_linear per ladder)."""
        from ._state_reduction import fold_first_linear

        sd = self.state_dict()
        for i in range(len(self.layers_)):
            w, b = f"ladders.{i}.projector.0.weight", f"ladders.{i}.projector.0.bias"
            sd[w], sd[b] = fold_first_linear(sd[w], sd[b], basis.mean[i], basis.scale[i],
                                             basis.components[i])
        self._build(len(self.layers_), self.in_dim_, self.num_classes_, k=self.reduced_dim_)
        self.load_state_dict(sd)

    def _progress(self, total_or_iterable, unit, show=None, desc="ENGINE", long=True):
        """A progress bar / log lines (engine_py._progress) for this estimator's
        long loops: ``show`` (a call's show_progress_bar) else the estimator's."""
        show = self.show_progress_bar if show is None else show
        return progress(total_or_iterable, desc, unit, show, logger=_log, long=long)

    # ----------------------------------------------------------- predict
    def _check_fitted(self):
        if getattr(self, "model_", None) is None:
            raise NotFittedError("this EngineClassifier is not fitted yet; call fit() or load() first")

    def _resolve_data(self, cache, graph):
        cache = cache if cache is not None else getattr(self, "cache_", None)
        if cache is None:
            raise ValueError("no cache: pass cache= (a loaded model does not keep one)")
        _check_cache(cache)
        if int(cache.dim) != self.in_dim_:
            raise ValueError(f"cache dim {cache.dim} != the model's input dim {self.in_dim_}")
        missing = [l for l in self.layers_ if l not in [int(x) for x in cache.layers]]
        if missing:
            raise ValueError(f"layers {missing} are not in the cache")
        if graph is None:
            graph = getattr(self, "graph_", None)
            if graph is None:
                raise ValueError("no graph: pass graph= (a loaded model does not keep one)")
        return cache, self._as_graph(graph, int(cache.num_nodes))

    @exclusive("this EngineClassifier")
    def predict_logits(self, node_ids, cache=None, graph=None, all_heads=False):
        """Logits of the final classifier (n, C); with ``all_heads`` the
        (K, n, C) logits of every ladder's head (zeros where it has none)."""
        self._check_fitted()
        cache, graph = self._resolve_data(cache, graph)
        ids = _as_ids(node_ids, int(cache.num_nodes), "node_ids")
        return self._predict_logits(cache, graph, ids, all_heads=all_heads)

    def predict_proba(self, node_ids, cache=None, graph=None):
        """Class probabilities (n, C); column j is class ``classes_[j]``."""
        return _softmax(self.predict_logits(node_ids, cache, graph).astype(np.float64))

    @exclusive("this EngineClassifier")
    def predict(self, node_ids, cache=None, graph=None, *, exit="none", patience=None, threshold="auto",
                return_exit_layer=False, encoder=None, texts=None):
        """Class of each node (values from ``classes_``, the labels given to fit).

        ``exit="none"``: every ladder for every node. ``exit="dynamic"``: a
        node stops at the first ladder whose top probability reaches
        ``threshold`` or whose head agrees with the previous head
        ``patience`` times in a row, and the ladders are computed only for
        the subgraphs of nodes that have not exited (engine_py.early_exit).
        By default (``patience=None, threshold="auto"``) the rule is the
        threshold 0.99 alone, which kept the relative accuracy drop within 1%
        in docs/RESULTS_DEMO.md; ``patience=1`` alone is the paper's rule
        (``"auto"`` then means no threshold), which cost 2-3% there. With
        ``encoder`` and ``texts`` (one text per graph node) no cache is used:
        the subgraph nodes are encoded on the fly, layer by layer, and the
        encoder stops for nodes no longer needed (the paper's Table 4
        setting). ``return_exit_layer``: also return the LLM layer each node
        exited at.
        """
        if exit == "none" and encoder is None and texts is None and not return_exit_layer:
            idx = self.predict_logits(node_ids, cache, graph).argmax(axis=1)
            return self.classes_[idx]
        probs, ladder = self._predict_exit(node_ids, cache, graph, exit, patience, threshold,
                                           encoder, texts)
        pred = self.classes_[probs.argmax(axis=1)]
        if return_exit_layer:
            return pred, np.asarray(self.layers_, np.int64)[ladder]
        return pred

    # ------------------------------------------------------- early exit
    def _exit_args(self, exit, patience, threshold):
        from .early_exit import _patience, _threshold
        if exit not in ("none", "dynamic"):
            raise ValueError(f"exit must be 'none' or 'dynamic', got {exit!r}")
        if exit == "dynamic" and not self.early_exit and len(self.layers_) > 1:
            raise ValueError("exit='dynamic' needs exit heads: fit with early_exit=True")
        _patience(patience), _threshold(threshold, patience)   # validate early
        return exit == "dynamic", patience, threshold

    def _check_encoder(self, encoder):
        if not hasattr(encoder, "_model") or not hasattr(encoder, "tokenize"):
            raise TypeError("encoder must be an engine_py.Encoder")
        if int(encoder.hidden_size) != self.in_dim_:
            raise ValueError(f"the encoder's hidden size {encoder.hidden_size} != the model's input dim "
                             f"{self.in_dim_}")
        if list(self.layers_) != sorted(set(self.layers_)) or max(self.layers_) > int(encoder.num_layers):
            raise ValueError(f"live mode needs increasing layers within the encoder's 0..{encoder.num_layers}, "
                             f"the model uses {self.layers_}")

    def _predict_exit(self, node_ids, cache, graph, exit, patience, threshold, encoder, texts):
        from .early_exit import ExitPolicy, run_batch
        self._check_fitted()
        dynamic, patience, threshold = self._exit_args(exit, patience, threshold)
        if (encoder is None) != (texts is None):
            raise ValueError("live mode needs both encoder= and texts=")
        if encoder is None:
            cache, graph = self._resolve_data(cache, graph)
            n = int(cache.num_nodes)
        else:
            self._check_encoder(encoder)
            texts = list(texts)
            n = len(texts)
            if graph is None:
                graph = getattr(self, "graph_", None)
                if graph is None:
                    raise ValueError("no graph: pass graph=")
            graph = self._as_graph(graph, n)
            cache = None
        ids = _as_ids(node_ids, n, "node_ids")
        policy = ExitPolicy(len(ids), self.num_classes_, patience, threshold)
        bs = int(self.batch_size)
        eval_seed = _seed64(self.seed, 0xE7A1)
        self.last_encoder_layers_ = 0
        starts = range(0, len(ids), bs)
        for s in self._progress(starts, "batch", desc="ENGINE predict",
                                long=len(starts) >= (8 if encoder is not None else 200)):
            _adapt_threads()
            t = ids[s:s + bs]
            b = self._sample(graph, t, eval_seed)
            kw = {}
            if encoder is not None:
                keys, seq_of = np.unique(b.nodes, return_inverse=True)
                kw = dict(seq_of=seq_of.astype(np.int64), encoder=encoder,
                          token_ids=encoder.tokenize([texts[k] for k in keys]))
            self.last_encoder_layers_ += run_batch(self.model_, self.layers_, b,
                                                   np.arange(s, s + len(t), dtype=np.int64), policy,
                                                   dynamic, cache=cache, **kw)
        return policy.probs, policy.exit_ladder.astype(np.int64)

    @exclusive("this EngineClassifier")
    def predict_new(self, encoder, texts, neighbors, cache, graph=None, *, exit="dynamic", patience=None,
                    threshold="auto", batch_size=64, return_exit_layer=False):
        """Classify new nodes from their texts and their links to known nodes.

        ``neighbors[j]`` holds the existing node ids new node j links to. Each
        new node gets the subgraph the model was trained with, built on the
        known graph plus the new node (``khop``: the node, its neighbours (at
        most ``max_neighbors``, seeded) and the induced edges among them); its
        neighbours' states come from ``cache``, its own from ``encoder``, run
        layer by layer: after each of the model's layers the ladder runs and
        nodes that exited are dropped from the encoder batch. ``exit="none"``
        is the full-depth baseline through the same code; ``patience`` and
        ``threshold`` as in :meth:`predict`. Returns the classes
        (and with ``return_exit_layer`` the LLM layer each node exited at).
        """
        from .early_exit import ExitPolicy, run_batch
        self._check_fitted()
        dynamic, patience, threshold = self._exit_args(exit, patience, threshold)
        self._check_encoder(encoder)
        cache, graph = self._resolve_data(cache, graph)
        if self.sampler != "khop":
            raise ValueError("predict_new supports sampler='khop' only (a random walk through a new node "
                             "could reach other new nodes)")
        fp = getattr(cache, "fingerprint", None)
        if isinstance(fp, str) and fp and fp != encoder.fingerprint()[:len(fp)]:
            raise ValueError("the encoder's fingerprint differs from the cache's: the cached states "
                             "were computed by another encoder (or tokenizer / max_length)")
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings")
        texts = list(texts)
        neighbors = list(neighbors)
        if len(texts) != len(neighbors):
            raise ValueError(f"{len(texts)} texts but {len(neighbors)} neighbour lists")
        bs = check_int(batch_size, "batch_size", min=1)
        n, m = int(cache.num_nodes), len(texts)
        src, dst = [], []
        for j, nb in enumerate(neighbors):
            a = np.unique(_as_ids(np.asarray(nb, dtype=np.int64).reshape(-1), n, f"neighbors[{j}]"))
            src.append(a)
            dst.append(np.full(a.size, n + j, np.int64))
        ei = graph.edge_index
        if m:
            s_new, d_new = np.concatenate(src), np.concatenate(dst)
            ei = np.concatenate([ei, np.stack([s_new, d_new]), np.stack([d_new, s_new])], axis=1)
        aug = Graph(ei, num_nodes=n + m, undirected=False)
        policy = ExitPolicy(m, self.num_classes_, patience, threshold)
        eval_seed = _seed64(self.seed, 0xE7A1)
        self.last_encoder_layers_ = 0
        starts = range(0, m, bs)
        for s in self._progress(starts, "batch", desc="ENGINE predict_new", long=len(starts) >= 8):
            _adapt_threads()
            t = np.arange(s, min(m, s + bs), dtype=np.int64)
            b = self._sample(aug, n + t, eval_seed)
            new = b.nodes >= n
            seq_of = np.full(len(b.nodes), -1, np.int64)
            keys, inv = np.unique(b.nodes[new] - n, return_inverse=True)
            seq_of[new] = inv
            self.last_encoder_layers_ += run_batch(
                self.model_, self.layers_, b, t, policy, dynamic, cache=cache, seq_of=seq_of,
                token_ids=encoder.tokenize([texts[k] for k in keys]), encoder=encoder)
        pred = self.classes_[policy.probs.argmax(axis=1)]
        if return_exit_layer:
            return pred, np.asarray(self.layers_, np.int64)[policy.exit_ladder]
        return pred

    def score(self, node_ids, y, cache=None, graph=None):
        """Accuracy of ``predict(node_ids)`` against ``y`` (labels like those
        given to fit, one per node of node_ids)."""
        y = np.asarray(y)
        p = self.predict(node_ids, cache, graph)
        if y.shape != p.shape:
            raise ValueError(f"y has shape {y.shape}, expected {p.shape}")
        return float(np.mean(p == y))

    # --------------------------------------------------------- weights
    def state_dict(self):
        """Parameters by PyTorch-style name (copies, float32)."""
        self._check_fitted()
        out = OrderedDict()
        for name, off, shape, _decay, _trainable in self._table:
            size = int(np.prod(shape)) if shape else 1
            a = self._params[off:off + size].reshape(shape).copy()
            if name.endswith("num_batches_tracked"):
                a = a.astype(np.int64)   # an int64 buffer in torch
            out[name] = a
        return out

    @exclusive("this EngineClassifier")
    def load_state_dict(self, sd):
        self._check_fitted()
        names = [t[0] for t in self._table]
        missing = [k for k in names if k not in sd]
        extra = [k for k in sd if k not in names]
        if missing or extra:
            raise ValueError(f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
        for name, off, shape, _decay, _trainable in self._table:
            a = np.asarray(sd[name], dtype=np.float32)
            if tuple(a.shape) != tuple(shape):
                raise ValueError(f"{name}: shape {a.shape}, expected {tuple(shape)}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or inf")
            self._params[off:off + a.size] = a.reshape(-1)
        return self

    def _config(self):
        params = self.get_params()
        params["show_progress_bar"] = None
        if params["input_rank"] is None:
            # a default that older engine_py (no such parameter) can still read
            del params["input_rank"]
        classes = self.classes_.tolist()
        # version 1 (readable by older engine_py) when the classes are 0..C-1;
        # 2 when they must be mapped, so an older reader refuses the file
        # instead of predicting class indices
        plain = self.classes_.dtype.kind in "iu" and classes == list(range(self.num_classes_))
        return {"format": _FORMAT, "version": 1 if plain else _FORMAT_VERSION, "params": params,
                "layers": self.layers_, "num_classes": self.num_classes_, "classes": classes,
                "in_dim": self.in_dim_, "reduced_dim": self.reduced_dim_}

    @exclusive("this EngineClassifier")
    def save(self, path):
        """Write ``path/config.json`` and ``path/model.safetensors``.

        Each file goes to a temporary name, is synced and renamed into place
        (the config last), so a failure (a full disk, Ctrl-C) leaves the
        previous files as they were and no partial file."""
        self._check_fitted()
        save_st, _ = _safetensors()
        os.makedirs(path, exist_ok=True)
        tmp = os.path.join(path, "config.json.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(self._config(), f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            save_st(os.path.join(path, "model.safetensors"), dict(self.state_dict()))
            os.replace(tmp, os.path.join(path, "config.json"))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    @classmethod
    def load(cls, path):
        """Rebuild a fitted estimator from :meth:`save` output. Pass ``cache=``
        and ``graph=`` to predict with it."""
        _, load_st = _safetensors()
        cfg = read_json(os.path.join(path, "config.json"), "EngineClassifier config")
        if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved EngineClassifier")
        if cfg.get("version") not in (1, _FORMAT_VERSION):
            raise ValueError(f"unsupported EngineClassifier format version {cfg.get('version')} "
                             f"(this engine_py reads 1 and {_FORMAT_VERSION}; upgrade engine_py)")
        est = cls(**cfg["params"])
        est._validate_hparams()
        est.layers_ = [int(x) for x in cfg["layers"]]
        est.num_classes_ = int(cfg["num_classes"])
        est.classes_ = _classes_from_config(cfg.get("classes"), est.num_classes_, path)
        est.in_dim_ = int(cfg["in_dim"])
        est._build(len(est.layers_), est.in_dim_, est.num_classes_)
        if est.reduced_dim_ != int(cfg["reduced_dim"]):
            raise ValueError("config reduced_dim does not match the parameters")
        est.load_state_dict(load_st(os.path.join(path, "model.safetensors")))
        est.cache_ = est.graph_ = None
        return est


def _classes_from_config(classes, num_classes, path):
    """classes_ from a saved config.json: its "classes" list (str, int or bool
    labels), or 0..C-1 for files that have none (version 1)."""
    if classes is None:
        return np.arange(num_classes)
    kinds = {_label_kind(v) for v in classes} if isinstance(classes, list) else {None}
    if len(kinds) > 1 or None in kinds or "float" in kinds or len(classes) != num_classes:
        raise ValueError(f"{path}/config.json: \"classes\" must be a list of {num_classes} labels of "
                         "one type (str, int or bool)")
    out = np.asarray(classes)
    if out.size != np.unique(out).size or not np.array_equal(np.unique(out), out):
        raise ValueError(f"{path}/config.json: \"classes\" must be sorted and distinct")
    return out


def _safetensors():
    """(save, load) from engine_py.io (imported lazily)."""
    from .io import load_safetensors, save_safetensors
    return save_safetensors, load_safetensors
