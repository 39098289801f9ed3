"""Plots (matplotlib is imported lazily, inside each function)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["expert_load", "exit_histogram"]


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
