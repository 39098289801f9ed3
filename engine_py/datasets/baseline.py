"""Sanity baselines for a TextGraph (NumPy only): is the task learnable, and
does the graph help?

    python -m engine_py.datasets.baseline        # on demo_graph(), ~1 minute

Features: TF-IDF over lowercase word tokens of each text (vocabulary = tokens
in >= 2 training texts, log(1+tf) * smoothed idf from the training nodes,
rows L2-normalised). "+1hop" concatenates the mean feature vector of the
node's undirected neighbours (zeros for isolated nodes). Classifiers: nearest
class centroid (cosine) and softmax regression (full-batch gradient descent
with momentum, 300 steps, weight decay picked on the validation split from
1e-5, 1e-4, 1e-3). Reports test accuracy.
"""
from __future__ import annotations

import json
import re
import sys

import numpy as np

from .graph import TextGraph

_TOKEN = re.compile(r"[a-z][a-z0-9+]*|[0-9]+")


def tfidf(g: TextGraph, min_df: int = 2) -> np.ndarray:
    toks = [_TOKEN.findall(t.lower()) for t in g.texts]
    df: dict = {}
    for i in g.train_idx.tolist():
        for w in set(toks[i]):
            df[w] = df.get(w, 0) + 1
    words = sorted(w for w, c in df.items() if c >= min_df)
    vocab = {w: k for k, w in enumerate(words)}
    X = np.zeros((g.num_nodes, len(words)), np.float32)
    for i, ts in enumerate(toks):
        for w in ts:
            k = vocab.get(w)
            if k is not None:
                X[i, k] += 1
    idf = np.log((1 + g.train_idx.size) / (1 + np.array([df[w] for w in words]))) + 1
    X = np.log1p(X) * idf.astype(np.float32)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-9)
    return X


def with_neighbour_mean(g: TextGraph, X: np.ndarray) -> np.ndarray:
    src, dst = g.to_undirected().edge_index
    order = np.argsort(src, kind="stable")
    src, dst = src[order], dst[order]
    M = np.zeros_like(X)
    deg = np.bincount(src, minlength=g.num_nodes)
    starts = np.concatenate([[0], np.cumsum(deg)])
    for i in np.flatnonzero(deg):
        M[i] = X[dst[starts[i]:starts[i + 1]]].mean(0)
    return np.concatenate([X, M], axis=1)


def nearest_centroid(g: TextGraph, X: np.ndarray) -> float:
    tr = g.train_idx
    C = np.stack([X[tr][g.labels[tr] == c].mean(0) for c in range(g.num_classes)])
    C /= np.maximum(np.linalg.norm(C, axis=1, keepdims=True), 1e-9)
    pred = (X[g.test_idx] @ C.T).argmax(1)
    return float((pred == g.labels[g.test_idx]).mean())


def softmax_regression(g: TextGraph, X: np.ndarray, steps: int = 300, lr: float = 5.0):
    """Returns (val accuracy, test accuracy, weight decay) for the best weight decay on val."""
    tr = g.train_idx
    Xt = X[tr]
    Y = np.eye(g.num_classes, dtype=np.float32)[g.labels[tr]]
    best = None
    for wd in (1e-5, 1e-4, 1e-3):
        W = np.zeros((X.shape[1], g.num_classes), np.float32)
        b = np.zeros(g.num_classes, np.float32)
        mW, mb = np.zeros_like(W), np.zeros_like(b)
        for _ in range(steps):
            Z = Xt @ W + b
            Z -= Z.max(1, keepdims=True)
            P = np.exp(Z)
            P /= P.sum(1, keepdims=True)
            G = (P - Y) / len(tr)
            mW = 0.9 * mW + Xt.T @ G + wd * W
            mb = 0.9 * mb + G.sum(0)
            W -= lr * mW
            b -= lr * mb
        acc = [float(((X[idx] @ W + b).argmax(1) == g.labels[idx]).mean())
               for idx in (g.val_idx, g.test_idx)]
        if best is None or acc[0] > best[0]:
            best = (acc[0], acc[1], wd)
    return best


def report(g: TextGraph) -> dict:
    X = tfidf(g)
    XN = with_neighbour_mean(g, X)
    majority = np.bincount(g.labels[g.train_idx]).argmax()
    return {
        "majority": float((g.labels[g.test_idx] == majority).mean()),
        "centroid_text": nearest_centroid(g, X),
        "centroid_text+1hop": nearest_centroid(g, XN),
        "softmax_text (val, test, wd)": softmax_regression(g, X),
        "softmax_text+1hop (val, test, wd)": softmax_regression(g, XN),
    }


def main(argv=None) -> int:
    from .demo import demo_graph

    print(json.dumps(report(demo_graph()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
