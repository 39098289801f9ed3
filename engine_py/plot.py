"""Plots (matplotlib is imported lazily, inside each function)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["expert_load", "exit_histogram", "expert_load_over_training", "router_probabilities",
           "lambda_sigma"]


def expert_load(load: Any, ax: Any = None, title: str | None = None,
                labels: Sequence[str] | None = None) -> Any:
    """Bar chart of the per-expert load of one or more MoE layers.

    ``load`` is an ``aux`` dict returned by ``MoELoRAFFN.forward`` (its
    ``counts``), a 1-D array of per-expert counts, or a list of either (one
    group of bars per layer). Each group is normalised to fractions of the
    routed slots; the legend shows each layer's coefficient of variation and
    the dashed line the uniform load 1/N. Returns the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    items = load if isinstance(load, (list, tuple)) else [load]
    rows = []
    for it in items:
        c = it["counts"] if isinstance(it, dict) else it
        c = np.asarray(c, dtype=np.float64).ravel()
        if c.size == 0 or not np.isfinite(c).all() or (c < 0).any() or c.sum() <= 0:
            raise ValueError("expert_load needs non-negative, finite counts with a positive sum")
        rows.append(c / c.sum())
    n = rows[0].size
    if any(r.size != n for r in rows):
        raise ValueError("all layers must have the same number of experts")
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.6 * n + 2), 3.2))
    width = 0.8 / len(rows)
    xs = np.arange(n)
    for i, r in enumerate(rows):
        cv = r.std() / r.mean()
        name = labels[i] if labels is not None else (f"layer {i}" if len(rows) > 1 else "load")
        ax.bar(xs + (i - (len(rows) - 1) / 2) * width, r, width=width, label=f"{name} (CV {cv:.2f})")
    ax.axhline(1.0 / n, color="k", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(xs)
    ax.set_xlabel("expert")
    ax.set_ylabel("fraction of routed slots")
    ax.set_title(title or "Expert load")
    ax.legend(fontsize="small")
    return ax


def exit_histogram(exit_layers: Any, layers: Sequence[int], ax: Any = None, title: str | None = None,
                   label: str | None = None) -> Any:
    """Bar chart of how many nodes exited at each of the model's LLM layers.

    ``exit_layers``: the LLM layer each node exited at (as returned by
    ``predict(..., return_exit_layer=True)``) or a list of such arrays (one
    group of bars each, e.g. patience 1 and 2); ``layers``: the model's layers
    (``clf.layers_``). The legend gives each group's mean exit layer. Returns
    the matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    layers = [int(l) for l in layers]
    if not layers:
        raise ValueError("layers is empty")
    groups = exit_layers if isinstance(exit_layers, (list, tuple)) and len(exit_layers) and \
        np.ndim(exit_layers[0]) == 1 else [exit_layers]
    labels = label if isinstance(label, (list, tuple)) else [label] * len(groups)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(layers) + 2), 3.2))
    xs = np.arange(len(layers))
    width = 0.8 / len(groups)
    for i, e in enumerate(groups):
        e = np.asarray(e, dtype=np.int64).ravel()
        bad = ~np.isin(e, layers)
        if bad.any():
            raise ValueError(f"exit layer {e[bad][0]} is not one of the model's layers {layers}")
        counts = np.array([(e == l).sum() for l in layers])
        name = labels[i] or (f"group {i}" if len(groups) > 1 else "nodes")
        mean = float(e.mean()) if e.size else float("nan")
        ax.bar(xs + (i - (len(groups) - 1) / 2) * width, counts, width=width,
               label=f"{name} (mean layer {mean:.2f})")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(l) for l in layers])
    ax.set_xlabel("LLM layer at exit")
    ax.set_ylabel("nodes")
    ax.set_title(title or "Early-exit layers")
    ax.legend(fontsize="small")
    return ax


def _moe_history(history: Any) -> list:
    """A Trainer's moe_history_ (or a Trainer), as a non-empty list of dicts."""
    h = getattr(history, "moe_history_", history)
    if not isinstance(h, (list, tuple)) or not h or not all(isinstance(x, dict) for x in h):
        raise ValueError("expected a non-empty Trainer.moe_history_ (a list of dicts) or a "
                         "Trainer that has trained with method='gmoe' or 'mixlora'")
    return list(h)


def expert_load_over_training(history: Any, layers: Sequence[int] | None = None,
                              axes: Any = None, floor: bool = True) -> Any:
    """Share of the routed slots per expert over the training steps, one
    panel per layer (one line per expert; the dashed line is the 1/(4N)
    floor below which an expert counts as starved, the dotted one 1/N). history: Trainer.moe_history_
    or a Trainer, or a (steps, L, N) array of loads. Returns the axes."""
    import matplotlib.pyplot as plt

    if isinstance(history, np.ndarray) or (isinstance(history, list) and history
                                            and not isinstance(history[0], dict)):
        load = np.asarray(history, dtype=np.float64)
    else:
        load = np.stack([np.asarray(x["load"], dtype=np.float64) for x in _moe_history(history)])
    if load.ndim != 3 or load.shape[0] == 0:
        raise ValueError(f"loads must be (steps, layers, experts), got shape {load.shape}")
    steps, L, N = load.shape
    layers = list(range(L)) if layers is None else [int(x) for x in layers]
    if any(not 0 <= x < L for x in layers):
        raise ValueError(f"layers must be in [0, {L})")
    if axes is None:
        cols = min(4, len(layers))
        rows = (len(layers) + cols - 1) // cols
        _, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False,
                               sharex=True, sharey=True)
        axes = axes.ravel()
    x = np.arange(1, steps + 1)
    for ax, layer in zip(axes, layers):
        ax.plot(x, load[:, layer, :], lw=0.9)
        ax.axhline(1.0 / N, color="k", ls=":", lw=0.8)
        if floor:
            ax.axhline(1.0 / (4 * N), color="k", ls="--", lw=0.8)
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_ylim(0, max(0.5, float(load[:, layer, :].max()) * 1.05))
    for ax in list(axes)[len(layers):]:
        ax.set_visible(False)
    axes[0].set_ylabel("share of routed slots")
    axes[0].figure.supxlabel("training step")
    return axes


def router_probabilities(probs: Any, ax: Any = None, bins: int = 40,
                         title: str | None = None) -> Any:
    """Histograms of a router's probabilities: the top-1, top-2 and all the
    others (a confident router puts its top-1 near 1; a flat one near 1/N).
    probs: (tokens, N), e.g. Trainer.router_stats()[layer]["probs"]."""
    import matplotlib.pyplot as plt

    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] < 2 or not np.isfinite(p).all():
        raise ValueError(f"probs must be a finite (tokens, N >= 2) array, got shape {p.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    s = -np.sort(-p, axis=1)
    edges = np.linspace(0, 1, bins + 1)
    ax.hist(s[:, 0], bins=edges, alpha=0.6, label="top-1")
    ax.hist(s[:, 1], bins=edges, alpha=0.6, label="top-2")
    ax.hist(s[:, 2:].ravel(), bins=edges, alpha=0.4, label="the others")
    ax.axvline(1.0 / p.shape[1], color="k", ls="--", lw=0.8, label="1/N")
    ax.set_xlabel("router probability")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def lambda_sigma(history: Any, axes: Any = None) -> Any:
    """The GMoE losses' learnt parameters over training, one line per layer:
    the Poisson lambda (clamped to [1, 2]) and the Normal sigma. history:
    Trainer.moe_history_ of a graph-router run, or a Trainer."""
    import matplotlib.pyplot as plt

    h = _moe_history(history)
    if "lambda" not in h[0]:
        raise ValueError("lambda/sigma exist for the graph router only")
    lam = np.stack([np.asarray(x["lambda"]) for x in h])
    sig = np.stack([np.asarray(x["sigma"]) for x in h])
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3))
    x = np.arange(1, len(h) + 1)
    for data, ax, name in ((lam, axes[0], "Poisson lambda"), (sig, axes[1], "Normal sigma")):
        ax.plot(x, data, lw=0.8)
        ax.set_xlabel("training step")
        ax.set_title(name + " (one line per layer)", fontsize=10)
    return axes
