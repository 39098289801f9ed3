"""Dynamic early exit for ENGINE (docs/ALGORITHMS.md §A.5) that skips work.

The rule itself is C (csrc/engine/exit.c): a target exits at the first ladder
whose head's argmax has agreed with the previous head's argmax ``patience``
times in a row (patience 1 is the paper's rule; ``None``: no agreement rule),
or whose largest probability is >= ``threshold``; its output is then frozen.
The default (``patience=None, threshold="auto"``) is the threshold 0.99 alone:
on the demo graph the paper's rule exited 98% of nodes at the second ladder
for a 2-3% relative accuracy drop (neighbouring heads share their input
through the gates, so they agree even when wrong), while the threshold kept
the drop within 1% over seeds and settings at a mean exit layer of about 2 of
6 (docs/RESULTS_DEMO.md). ``threshold="auto"`` means 0.99 when no patience is
given and no threshold when one is, so ``patience=1`` alone is the paper's
rule; give both to exit on whichever comes first.

This module drives the G-Ladder one ladder at a time and, after each ladder,
drops the exited targets' subgraphs from the ladder batch (``Ladder.keep``)
and, in live mode, the sequences no longer needed from the encoder batch
(``BertState.compact``) before the encoder is advanced to the next selected
layer. Three state sources share one loop:

* cached: every node's states come from the layer cache;
* live, new nodes: the new node's own states come from the encoder, run layer by
  layer; its neighbours' states come from the cache;
* live, transductive (no cache): every subgraph node is encoded on the fly.
"""
from __future__ import annotations

import numpy as np

from . import _core
from ._validate import check_float, check_int

__all__ = ["ExitPolicy", "exit_decide", "time_per_exit_layer"]


#: the threshold used when neither rule is given (threshold="auto", patience=None)
DEFAULT_THRESHOLD = 0.99


def _threshold(threshold, patience=None):
    if isinstance(threshold, str):
        if threshold != "auto":
            raise ValueError(f"threshold must be a number in (0, 1], None or 'auto', got {threshold!r}")
        threshold = DEFAULT_THRESHOLD if patience is None else None
    if threshold is None:
        return -1.0
    t = check_float(threshold, "threshold", min=0.0, max=1.0, min_open=True)
    return t


# patience=None turns the agreement rule off (only the threshold and the last
# ladder end a target): a streak can never reach this many agreements.
_NO_PATIENCE = 2**31 - 1


def _patience(patience):
    if patience is None:
        return _NO_PATIENCE
    return check_int(patience, "patience", min=1)


class ExitPolicy:
    """Per-target exit state over ``n`` targets and ``C`` classes (C core).

    ``patience`` / ``threshold``: see the module docstring (default: exit at
    the first head at least 99% sure). ``step(ladder, final, idx, logits)`` updates the still-active targets
    ``idx`` with that ladder's head logits and returns their still-active
    mask; updating an exited target raises (its output is frozen).
    ``probs`` (n, C) and ``exit_ladder`` (n; -1 while active) are the results.
    """

    def __init__(self, n, num_classes, patience=None, threshold="auto"):
        self.patience = _patience(patience)
        self.threshold = _threshold(threshold, patience)
        n = check_int(n, "n", min=0)
        num_classes = check_int(num_classes, "num_classes", min=1)
        self.last = np.empty(n, np.int64)
        self.streak = np.empty(n, np.int32)
        self.exit_ladder = np.empty(n, np.int32)
        self.probs = np.empty((n, num_classes), np.float32)
        _core.exit_reset(self.last, self.streak, self.exit_ladder, self.probs, self.patience,
                         self.threshold)

    def step(self, ladder, final, idx, logits):
        return _core.exit_step(self.last, self.streak, self.exit_ladder, self.probs, self.patience,
                               self.threshold, int(ladder), bool(final),
                               np.ascontiguousarray(idx, np.int64), np.ascontiguousarray(logits, np.float32))


def exit_decide(head_logits, patience=None, threshold="auto", has_head=None):
    """The exit rule applied to every head's logits (K, n, C) at once.

    Returns ``(probs (n, C), exit_ladder (n,))``: the frozen output and the
    ladder index each target exits at. This measures where targets would stop;
    it saves no work (``EngineClassifier.predict(exit="dynamic")`` does).
    """
    z = np.ascontiguousarray(head_logits, dtype=np.float32)
    if z.ndim != 3:
        raise ValueError(f"head_logits must have shape (K, n, C), got {z.shape}")
    hh = None if has_head is None else np.asarray(has_head, dtype=np.uint8)
    return _core.exit_decide(z, _patience(patience), _threshold(threshold, patience), hh)


def _nodes_of(graph_ptr, graphs):
    """Batch-node indices of the given subgraphs, in order."""
    if len(graphs) == 0:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(graph_ptr[g], graph_ptr[g + 1]) for g in graphs]).astype(np.int64)


class _LiveEncoder:
    """The encoder batch of one ladder batch: one sequence per distinct encoded
    node, advanced layer by layer, compacted to the sequences still needed."""

    def __init__(self, encoder, token_ids):
        self.state = _core.BertState(encoder._model, getattr(encoder, "pooling", "mean"))
        self.held = np.arange(len(token_ids), dtype=np.int64)   # sequence ids held, in state order
        lengths = np.fromiter((len(t) for t in token_ids), np.int64, count=len(token_ids))
        offsets = np.zeros(len(token_ids) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        self.state.embed(np.concatenate(token_ids).astype(np.int32), offsets)
        self.layers_run = 0   # sequence-layers actually computed (for reports)

    def states(self, layer, needed):
        """Pooled states of hidden state ``layer`` for the sorted sequence ids
        ``needed`` (a subset of those held); drops every other sequence."""
        if len(needed) < len(self.held):
            pos = np.searchsorted(self.held, needed)
            self.state.compact(pos.astype(np.int32))
            self.held = needed
        cur = self.state.layer
        if layer < cur:
            raise ValueError("live mode needs the model's layers in increasing order")
        self.layers_run += (layer - cur) * len(self.held)
        self.state.run_layers(int(layer))
        return self.state.pool()


def run_batch(model, layers, batch, targets, policy, dynamic, cache=None, seq_of=None,
              token_ids=None, encoder=None):
    """Run one ladder batch with early exit.

    ``batch``: a graph.Batch (one subgraph per target; ``targets`` are the
    policy indices of its subgraphs). A batch node j takes its states from the
    encoder when ``seq_of[j] >= 0`` (sequence ``seq_of[j]`` of ``token_ids``),
    else from ``cache.gather(layer, batch.nodes[j])``. Returns the number of
    sequence-layers the encoder computed.
    """
    K = len(layers)
    gp = batch.graph_ptr
    G = len(gp) - 1
    live = None
    if seq_of is not None and len(token_ids):
        live = _LiveEncoder(encoder, token_ids)
    model.begin(gp, batch.indptr, batch.indices, False, 0)
    active = np.arange(G, dtype=np.int64)
    sel = np.arange(len(batch.nodes), dtype=np.int64)
    for i in range(K):
        D = None
        from_cache = sel if seq_of is None else sel[seq_of[sel] < 0]
        enc_rows = None if seq_of is None else sel[seq_of[sel] >= 0]
        if cache is not None and len(from_cache):
            hc = np.asarray(cache.gather(layers[i], batch.nodes[from_cache]), dtype=np.float32)
            D = hc.shape[1]
        if live is not None and len(enc_rows):
            needed = np.unique(seq_of[enc_rows])
            pooled = live.states(layers[i], needed)
            D = pooled.shape[1]
        H = np.empty((len(sel), D), np.float32)
        if seq_of is None:
            H[:] = hc
        else:
            mask = seq_of[sel] >= 0
            if (~mask).any():
                H[~mask] = hc
            if mask.any():
                H[mask] = pooled[np.searchsorted(needed, seq_of[enc_rows])]
        try:
            logits = model.forward_step(i, H, False)   # prediction: no copy kept for a backward
        except ValueError:
            from .engine import _raise_if_nonfinite
            _raise_if_nonfinite([H], [layers[i]], batch.nodes[sel], cache)
            raise
        if logits is None or (not dynamic and i < K - 1):
            continue
        still = policy.step(i, i == K - 1, targets[active], logits)
        if i == K - 1 or not still.any():
            break
        if not still.all():
            model.keep(still)
            active = active[still]
            sel = _nodes_of(gp, active)   # original batch rows of the kept subgraphs, in order
    return 0 if live is None else live.layers_run


def time_per_exit_layer(encoder, texts, layers, batch_size: int = 64, repeats: int = 1):
    """Measure what a node costs the live encoder as a function of the layer
    it exits at: for each ``l`` in ``layers`` (increasing), the texts are
    encoded the way run_batch does it (``BertState``: embed, then layer by
    layer to every selected layer up to ``l``, pooling at each, in batches of
    ``batch_size``) and stopped at ``l``. Best of ``repeats`` wall-clock runs.

    Returns a dict: ``layers``, ``seconds_per_node`` (one per layer),
    ``sequence_layers`` (what the state reports it computed, per node), the
    least-squares line ``seconds_per_node ~ intercept + slope * layer`` and
    its ``r2`` (1 = exactly linear), ``num_nodes``, ``tokens`` (total).
    """
    import time

    layers = [check_int(l, "layer") for l in layers]
    if not layers or layers != sorted(set(layers)) or layers[0] < 0 or \
            layers[-1] > int(encoder.num_layers):
        raise ValueError(f"layers must be increasing ids within 0..{encoder.num_layers}, got {layers}")
    batch_size = check_int(batch_size, "batch_size", min=1)
    repeats = check_int(repeats, "repeats", min=1)
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty")
    toks = encoder.tokenize(texts)
    secs, work = [], []
    for stop in layers:
        upto = [l for l in layers if l <= stop]
        best = float("inf")
        for _ in range(repeats):
            done = 0
            t0 = time.perf_counter()
            for s in range(0, len(toks), batch_size):
                live = _LiveEncoder(encoder, toks[s:s + batch_size])
                ids = live.held
                for l in upto:
                    live.states(l, ids)
                done += live.layers_run
            best = min(best, time.perf_counter() - t0)
        secs.append(best / len(texts))
        work.append(done / len(texts))
    x, y = np.asarray(layers, float), np.asarray(secs, float)
    if len(x) >= 2:
        slope, icpt = np.polyfit(x, y, 1)
        ss = float(((y - y.mean()) ** 2).sum())
        r2 = 1.0 - float(((y - (icpt + slope * x)) ** 2).sum()) / ss if ss > 0 else 1.0
    else:
        slope, icpt, r2 = 0.0, float(y[0]), 1.0
    return {"layers": layers, "seconds_per_node": secs, "sequence_layers": work,
            "slope": float(slope), "intercept": float(icpt), "r2": float(r2),
            "num_nodes": len(texts), "tokens": int(sum(len(t) for t in toks))}
