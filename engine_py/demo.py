"""The main job: `python -m engine_py demo`.

On the Debian-package demo graph shipped with engine_py (4,000 packages, 10
sections, dependency edges) and the packaged all-MiniLM-L6-v2:

1. build (or reuse) the layer cache of every MiniLM layer's mean-pooled state,
2. train ENGINE (one G-Ladder per layer, exit heads on),
3. train two baselines the same way (same estimator, same optimiser, same
   early stopping): an MLP on the last layer (the side structure with the
   graph's edges removed, so each node sees only itself) and SAGE on the last
   layer (a single ladder on the last layer with the graph),
4. print test accuracies, training times and the exit-layer histogram.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np


def _default_cache_dir() -> str:
    return os.environ.get("ENGINE_PY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "engine_py")


def run(cache_dir: str | None = None, epochs: int = 200, threads: int | None = None,
        seed: int = 0, show_progress_bar: bool | None = None) -> dict:
    """Run the demo and return its numbers (also printed)."""
    import engine_py
    from engine_py import EngineClassifier, Encoder, Graph, LayerCache
    from engine_py.datasets import demo_graph
    from engine_py.models import minilm_path

    if threads:
        engine_py.set_num_threads(threads)
    g = demo_graph()
    print(g)
    print()

    enc = Encoder.from_pretrained(minilm_path(), max_length=128)
    layers = list(range(enc.num_layers + 1))
    cache_dir = cache_dir or _default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, "debian-demo.minilm.cache")
    t0 = time.perf_counter()
    cache = LayerCache.build(path, enc, g.texts, layers=layers, dtype="float16",
                             batch_size=64, show_progress_bar=show_progress_bar)
    t_cache = time.perf_counter() - t0
    print(f"layer cache: {path}  ({cache.num_nodes} nodes x {len(cache.layers)} layers x "
          f"{cache.dim} dims, {cache.dtype}; {t_cache:.1f} s)")

    graph = Graph(g.edge_index, g.num_nodes)
    no_edges = Graph(np.zeros((2, 0), dtype=np.int64), g.num_nodes)
    last = layers[-1]
    common = dict(epochs=epochs, seed=seed, show_progress_bar=show_progress_bar)
    runs = [
        ("ENGINE (layers 0-6, SAGE ladders)", EngineClassifier(layers=layers, early_exit=True, **common), graph),
        ("MLP on last layer", EngineClassifier(layers=[last], early_exit=False, **common), no_edges),
        ("SAGE on last layer", EngineClassifier(layers=[last], early_exit=False, **common), graph),
    ]
    results = {}
    print()
    for name, clf, gr in runs:
        t0 = time.perf_counter()
        clf.fit(cache, gr, g.labels, g.train_idx, g.val_idx)
        t_fit = time.perf_counter() - t0
        acc = clf.score(g.test_idx, g.labels[g.test_idx], cache=cache, graph=gr)
        results[name] = dict(test_acc=acc, fit_seconds=t_fit, model=clf)
        print(f"{name:<36} test acc {100 * acc:5.1f}%   trained in {t_fit:5.1f} s")

    engine = results[runs[0][0]]["model"]
    # dynamic early exit (the C rule, engine_py.early_exit): ladders run only
    # for test nodes that have not exited yet
    exit_pred, exit_layer = engine.predict(g.test_idx, cache=cache, graph=graph, exit="dynamic",
                                           patience=1, return_exit_layer=True)
    exit_at = np.searchsorted(layers, exit_layer)
    exit_acc = float(np.mean(exit_pred == g.labels[g.test_idx]))
    counts = np.bincount(exit_at, minlength=len(layers))
    print()
    print("exit-layer histogram (patience 1; test nodes; ladder i reads LLM layer i):")
    width = max(1, counts.max())
    for i, c in enumerate(counts):
        if i == 0:
            continue  # the rule needs two ladders: nobody exits at the first
        bar = "#" * int(round(40 * c / width))
        print(f"  ladder {i} (layer {layers[i]}): {c:5d} {bar}")
    mean_layer = float(np.mean([layers[i] for i in exit_at]))
    print(f"accuracy with early exit {100 * exit_acc:.1f}% (full depth "
          f"{100 * results[runs[0][0]]['test_acc']:.1f}%); mean exit layer {mean_layer:.2f} "
          f"of {last}")
    return dict(results={k: {kk: vv for kk, vv in v.items() if kk != "model"}
                         for k, v in results.items()},
                exit_counts=counts.tolist(), exit_acc=exit_acc, cache_seconds=t_cache)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_py demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache-dir", default=None,
                   help="where the layer cache goes (default $ENGINE_PY_CACHE or ~/.cache/engine_py)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run(cache_dir=args.cache_dir, epochs=args.epochs, threads=args.threads, seed=args.seed)
    return 0
