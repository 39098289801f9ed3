"""Plots (matplotlib is imported lazily, inside each function)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["expert_load"]


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
