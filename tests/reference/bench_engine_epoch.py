"""Rough epoch timing of EngineClassifier on a synthetic graph (not a test).

    PYTHONPATH=. python tests/reference/bench_engine_epoch.py [threads]

20k nodes, ~10 neighbours per node, D=384, 7 cached layers (random states),
10k training targets, batch 256, one epoch per sampler. Moves to
engine_py/bench once that module takes benchmark plug-ins.
"""
import sys
import time

import numpy as np

import engine_py
from engine_py.engine import EngineClassifier, InMemoryStates
from engine_py.graph import Graph

N, D, L = 20000, 384, 7
engine_py.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
rng = np.random.default_rng(0)
y = rng.integers(0, 10, N)
g = Graph(np.stack([rng.integers(0, N, 5 * N), rng.integers(0, N, 5 * N)]), N)
cache = InMemoryStates(rng.standard_normal((L, N, D), dtype=np.float32))
tr = rng.permutation(N)[:10000]
print("threads", engine_py.get_num_threads(), "stored edges", g.num_edges, flush=True)
for kw in [dict(sampler="khop"), dict(sampler="rw")]:
    est = EngineClassifier(epochs=1, batch_size=256, show_progress_bar=False, **kw)
    t = time.time()
    est.fit(cache, g, y, tr)
    dt = time.time() - t
    b = g.sample(tr[:256], kw["sampler"])
    print(kw, "epoch (10k targets) %.2f s, %.0f targets/s, avg subgraph %.1f nodes"
          % (dt, 10000 / dt, b.num_nodes / 256), flush=True)
