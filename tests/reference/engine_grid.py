"""Validation-accuracy grid for EngineClassifier on the demo graph (issue 5 item 5).

    PYTHONPATH=. python tests/reference/engine_grid.py [--epochs 15] [--seeds 2] [--full]

Selection uses validation accuracy only (test is never looked at). Default:
one factor at a time around the estimator defaults (lr 1e-3, dropout 0.5,
layers all, norm id); --full runs the whole 2x2x2x2 grid. Not a test: a
measurement script whose output goes into the report.
"""
import argparse
import itertools
import statistics
import time

import engine_py
from engine_py import EngineClassifier, Encoder, Graph, LayerCache
from engine_py.datasets import demo_graph
from engine_py.demo import _default_cache_dir
from engine_py.models import minilm_path
import os

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=15)
ap.add_argument("--patience", type=int, default=5)
ap.add_argument("--seeds", type=int, default=2)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--full", action="store_true")
a = ap.parse_args()
engine_py.set_num_threads(a.threads)
g = demo_graph()
enc = Encoder.from_pretrained(minilm_path(), max_length=128)
layers = list(range(enc.num_layers + 1))
os.makedirs(_default_cache_dir(), exist_ok=True)
cache = LayerCache.build(os.path.join(_default_cache_dir(), "debian-demo.minilm.cache"), enc, g.texts,
                         layers=layers, dtype="float16", batch_size=64, show_progress_bar=False)
graph = Graph(g.edge_index, g.num_nodes)
base = dict(lr=1e-3, dropout=0.5, layers=None, norm="id")
alts = dict(lr=[5e-3], dropout=[0.2], layers=[[0, 2, 4, 6]], norm=["ln"])
if a.full:
    grid = [dict(zip(base, v)) for v in itertools.product([1e-3, 5e-3], [0.2, 0.5], [None, [0, 2, 4, 6]], ["id", "ln"])]
else:
    grid = [base] + [dict(base, **{k: v}) for k, vs in alts.items() for v in vs]
print(f"demo graph, {a.epochs} epochs max, patience {a.patience}, seeds 0..{a.seeds - 1}, "
      f"{a.threads} thread(s)", flush=True)
for hp in grid:
    vals, t0 = [], time.perf_counter()
    for s in range(a.seeds):
        clf = EngineClassifier(epochs=a.epochs, patience=a.patience, seed=s, show_progress_bar=False, **hp)
        clf.fit(cache, graph, g.labels, g.train_idx, g.val_idx)
        vals.append(clf.best_val_acc_)
    print(f"{hp}: val acc {100 * statistics.mean(vals):.2f} (seeds {[round(100 * v, 2) for v in vals]}), "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
