"""Experiment: why the GMoE graph router collapses onto two experts, and what prevents it.

    python -m engine_py bench gmoe-collapse [--seeds 0,1,2,3] [--epochs 15] [--lr 1e-3]
                                            [--data demo|synthetic] [--variants "NAME;..."]
                                            [--out PATH]

Notebook 04's setting (docs/ALGORITHMS.md, "GMoE router collapse: cause and fix"): one
MoELoRAFFN (graph router, 8 experts, top-2, r 2, alpha 4, GCN dim 128, edge density 0.25)
over MiniLM's last-layer FFN, inputs the mean-pooled layer-5 states of the demo graph's
1,000-node piece (about 600 training texts), residual + softmax head, AdamW (lr 1e-3 for
the layer, 1e-2 for the head, weight decay 0.01), batches of 32, Poisson 0.005 + Normal
8.0. ``--data synthetic`` replaces the texts and the FFN with seeded random ones of the
same shapes (no model files needed; the numbers differ).

Every variant trains once per seed and reports, on the held-out texts after training:
the smallest expert share of routed slots (the criterion is >= 1/(4N) = 0.031), how many
experts receive any slot, how many distinct top-2 sets occur, the share of the variance of
the (token-centred) router logits in their first singular direction ("rank-1"; 1.000 means
the logits depend on the token through one number), and accuracy; over training: the
Normal loss and the norm of its gradient w.r.t. the router logits (first and last tenth
of the steps), and sigma at the end. Variants change one thing at a time (constructor
options of MoELoRAFFN, or: the router losses off, sigma frozen, W_t rescaled to Glorot
gain 1, the task gradient off).
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from . import add_output_args, finish, machine_line, start_run

N_EXPERTS, TOP_K = 8, 2

# name -> (MoELoRAFFN options, harness knobs)
VARIANTS = {
    "reference": ({}, {}),
    "count=weights": ({"normal_count": "weights"}, {}),
    "count=weights, no router losses": ({"normal_count": "weights"}, {"coefs": {}}),
    "count=weights, sigma frozen": ({"normal_count": "weights"}, {"sigma_frozen": True}),
    "count=weights, decay 0.9": ({"normal_count": "weights", "normal_running_decay": 0.9}, {}),
    "count=weights, W_t gain 1": ({"normal_count": "weights"}, {"wt_gain": 1.0}),
    "reference, router losses only": ({}, {"task": False}),
    "reference, W_t gain 1": ({}, {"wt_gain": 1.0}),
    "reference, sigma frozen": ({}, {"sigma_frozen": True}),
    "decay 0.9": ({"normal_running_decay": 0.9}, {}),
    "per-expert readout": ({"graph_readout": "per_expert"}, {}),
    "per-expert readout, no router losses": ({"graph_readout": "per_expert"}, {"coefs": {}}),
    "decay 0.5": ({"normal_running_decay": 0.5}, {}),
    "per-expert readout, decay 0.9": (
        {"graph_readout": "per_expert", "normal_running_decay": 0.9}, {}),
    "per-expert readout, count=weights, decay 0.5": (
        {"graph_readout": "per_expert", "normal_count": "weights",
         "normal_running_decay": 0.5}, {}),
    "per-expert readout, decay 0.5, no router losses": (
        {"graph_readout": "per_expert", "normal_running_decay": 0.5}, {"coefs": {}}),
    "per-expert readout, decay 0.5": (
        {"graph_readout": "per_expert", "normal_running_decay": 0.5}, {}),
}


# ---------------------------------------------------------------- data
def demo_data():
    """Notebook 04's quick data: (base FFN weights, Xtr, ytr, Xte, yte, classes)."""
    import engine_py
    from engine_py.demo import demo_cache, demo_subgraph
    from engine_py.models import minilm_path

    g = demo_subgraph(1000)
    rng = np.random.default_rng(0)
    tr = np.sort(rng.choice(g.train_idx, min(2000, len(g.train_idx)), replace=False))
    va, te = g.val_idx[:400], g.test_idx
    cache = demo_cache(graph=g, show_progress_bar=False)
    X = cache.gather(5, np.concatenate([tr, va, te])).astype(np.float32)
    sd = engine_py.load_state(minilm_path())
    p = "encoder.layer.5."
    base = {"Wi": sd[p + "intermediate.dense.weight"], "bi": sd[p + "intermediate.dense.bias"],
            "Wo": sd[p + "output.dense.weight"], "bo": sd[p + "output.dense.bias"]}
    n1, n2 = len(tr), len(tr) + len(va)
    return base, X[:n1], g.labels[tr], X[n2:], g.labels[te], int(g.num_classes)


def synthetic_data(n_train=600, n_test=200, H=384, I=1536, classes=10, seed=0):
    """Seeded stand-in of the same shapes: texts around one common direction
    (pooled sentence states are alike: mean pairwise cosine ~0.6) plus a class
    offset, and a random FFN."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 1, H)
    centres = rng.normal(0, 0.6, (classes, H))
    y = rng.integers(0, classes, n_train + n_test)
    X = (common + centres[y] + rng.normal(0, 0.6, (len(y), H))).astype(np.float32) * 0.3
    base = {"Wi": rng.normal(0, 0.05, (I, H)), "bi": rng.normal(0, 0.05, I),
            "Wo": rng.normal(0, 0.05, (H, I)), "bo": rng.normal(0, 0.05, H)}
    return base, X[:n_train], y[:n_train], X[n_train:], y[n_train:], classes


# ---------------------------------------------------------------- training
class _Head:
    """logits = h W^T + b with torch.optim.AdamW semantics (notebook 04's head)."""

    def __init__(self, dim, classes, seed):
        b = 1.0 / math.sqrt(dim)
        r = np.random.default_rng(seed)
        self.p = {"W": r.uniform(-b, b, (classes, dim)).astype(np.float32),
                  "b": r.uniform(-b, b, classes).astype(np.float32)}
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.t = 0

    def __call__(self, h):
        return h @ self.p["W"].T + self.p["b"]

    def backward(self, h, dz):
        self.g = {"W": dz.T @ h, "b": dz.sum(0)}
        return dz @ self.p["W"]

    def step(self, lr, wd, b1=0.9, b2=0.999, eps=1e-8):
        self.t += 1
        for k, w in self.p.items():
            w *= 1 - lr * wd
            self.m[k] = b1 * self.m[k] + (1 - b1) * self.g[k]
            self.v[k] = b2 * self.v[k] + (1 - b2) * self.g[k] ** 2
            mhat = self.m[k] / (1 - b1 ** self.t)
            w -= lr * mhat / (np.sqrt(self.v[k] / (1 - b2 ** self.t)) + eps)


def _cross_entropy(z, y):
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    dz = np.exp(logp)
    dz[np.arange(len(y)), y] -= 1
    return float(-logp[np.arange(len(y)), y].mean()), (dz / len(y)).astype(np.float32)


def router_logits(layer, x):
    """The graph router's logits (T, N) for x, without touching the layer's state."""
    from engine_py import _core

    P, B = layer._params, layer._buffers
    return _core._gmoe_graph_forward(
        np.ascontiguousarray(x, dtype=np.float32), B["router.expert_features"],
        P["router.W_s.weight"], P["router.W_t.weight"], P["router.gcn"],
        P["router.proj.weight"], B["router.normalized_adjacency"])[0]


def rank1_share(logits):
    """Share of the token-centred logits' variance in the first singular direction."""
    L = np.asarray(logits, np.float64)
    L = L - L.mean(axis=0)
    s = np.linalg.svd(L, compute_uv=False)
    tot = float((s ** 2).sum())
    return float(s[0] ** 2 / tot) if tot > 0 else 1.0


def normal_logit_grad(layer, coef):
    """Norm of d(coef * L_N)/d(router logits) for the last forward (before backward)."""
    from engine_py import _core
    from engine_py.gmoe import _EPS, _SIGMA_MIN

    ctx = layer._ctx
    probs, idx, w = ctx["probs"], ctx["idx"], ctx["w"]
    dn = np.zeros_like(w)
    _core._gmoe_normal_backward(dn, coef, ctx["c"], ctx["perm_n"], idx,
                                float(layer._params["normal_sigma"]), _SIGMA_MIN, layer._kl, _EPS)
    dprobs = np.zeros_like(probs)
    if layer.normal_count == "topk_probs":
        dprobs[np.arange(idx.shape[0])[:, None], idx] += dn
        dn = np.zeros_like(w)
    dl = _core._gmoe_topk_backward(dn, dprobs, probs, idx, w, True)
    return float(np.linalg.norm(dl))


def graph_slopes(layer):
    """b_e = (Ahat Ahat[:, token])_e: to first order, when the token node dominates,
    expert e's logit is m_e + b_e s(x) (one token signal s(x) for all experts)."""
    A = layer.normalized_adjacency.astype(np.float64)
    n = layer.num_experts
    return (A @ A[:, n])[:n]


def structure(layer, x):
    """(experts whose slope is the largest, those whose slope is the smallest,
    mean |token node| / mean |expert node| at the layer's W_t)."""
    b = np.round(graph_slopes(layer), 6)
    P, B = layer._params, layer._buffers
    t = np.maximum(np.asarray(x, np.float64) @ P["router.W_t.weight"].T, 0.0)
    u = np.maximum(B["router.expert_features"].astype(np.float64) @ P["router.W_s.weight"].T, 0.0)
    ratio = float(np.linalg.norm(t, axis=1).mean() / np.linalg.norm(u, axis=1).mean())
    return (np.flatnonzero(b == b.max()).tolist(), np.flatnonzero(b == b.min()).tolist(), ratio)


def train(data, seed=0, options=None, coefs=None, sigma_frozen=False, wt_gain=None, task=True,
          epochs=15, batch_size=32, lr=1e-3, lr_head=1e-2, weight_decay=0.01):
    """One run of notebook 04's training with a variant; a dict of measurements."""
    from engine_py.gmoe import DEFAULT_LOSS_COEFS, MoELoRAFFN

    base, Xtr, ytr, Xte, yte, classes = data
    layer = MoELoRAFFN(base, kind="gelu", router="graph", num_experts=N_EXPERTS, top_k=TOP_K,
                       r=2, lora_alpha=4, lora_dropout=0.0005, gcn_layers=2, gcn_dim=128,
                       edge_density=0.25, seed=seed, **(options or {}))
    if wt_gain is not None:  # the reference draws W_t with Glorot gain 100
        layer._params["router.W_t.weight"] *= np.float32(wt_gain / 100.0)
    co = dict(DEFAULT_LOSS_COEFS) if coefs is None else {
        k: float(coefs.get(k, 0.0)) for k in DEFAULT_LOSS_COEFS}
    head = _Head(Xtr.shape[1], classes, seed)
    order = np.random.default_rng(seed + 1000)
    L0 = router_logits(layer, Xte)
    smax, smin, ratio = structure(layer, Xte)
    load0 = np.bincount(np.argsort(-L0, axis=1, kind="stable")[:, :TOP_K].ravel(),
                        minlength=N_EXPERTS) / (TOP_K * len(Xte))
    out = {"rank1_init": rank1_share(L0), "slope_max": smax, "slope_min": smin,
           "top2_init": sorted(np.argsort(-load0, kind="stable")[:2].tolist()),
           "token_expert_ratio": ratio, "normal": [], "grad_normal": [], "load": []}
    for _ in range(epochs):
        perm = order.permutation(len(Xtr))
        for i in range(0, len(perm), batch_size):
            b = perm[i:i + batch_size]
            y, aux = layer.forward(Xtr[b], training=True)
            out["grad_normal"].append(normal_logit_grad(layer, DEFAULT_LOSS_COEFS["normal"]))
            out["normal"].append(float(aux["normal"]))
            out["load"].append(aux["load"])
            h = Xtr[b] + y
            _, dz = _cross_entropy(head(h), ytr[b])
            dh = head.backward(h, dz)
            if not task:
                dh = np.zeros_like(dh)
            layer.zero_grad()
            layer.backward(dh, co)
            sigma = layer._params["normal_sigma"].copy()
            layer.step(lr, weight_decay)
            if sigma_frozen:
                layer._params["normal_sigma"][...] = sigma
            head.step(lr_head, weight_decay)
    L1 = router_logits(layer, Xte)
    y, aux = layer.forward(Xte, training=False)
    top2 = {tuple(sorted(r)) for r in layer._ctx["idx"].tolist()}
    out.update(rank1_final=rank1_share(L1), load_final=aux["load"],
               min_share=float(aux["load"].min()), used=int((aux["counts"] > 0).sum()),
               top2_sets=len(top2), accuracy=float((head(Xte + y).argmax(1) == yte).mean()),
               sigma=float(layer._params["normal_sigma"]),
               lam=float(layer._params["poisson_lambda"]))
    return out


def _tenth(v, last):
    w = max(1, len(v) // 10)
    return float(np.mean(v[-w:] if last else v[:w]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench gmoe-collapse",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--lr", type=float, default=1e-3,
                    help="the layer's AdamW lr (notebook 04: 1e-3)")
    ap.add_argument("--data", choices=("demo", "synthetic"), default="demo")
    ap.add_argument("--variants", default="all",
                    help="variant names separated by ';' (default: all): " + "; ".join(VARIANTS))
    add_output_args(ap, "gmoe-collapse")
    args = ap.parse_args(argv)
    import engine_py

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = (list(VARIANTS) if args.variants == "all"
             else [v.strip() for v in args.variants.split(";") if v.strip()])
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {list(VARIANTS)}")
    old = engine_py.get_num_threads()
    engine_py.set_num_threads(1)
    run = start_run()
    try:
        data = demo_data() if args.data == "demo" else synthetic_data()
        results = {}
        t0 = time.perf_counter()
        for name in names:
            options, knobs = VARIANTS[name]
            rs = [train(data, seed=s, options=options, epochs=args.epochs, lr=args.lr, **knobs)
                  for s in seeds]
            results[name] = {
                "options": options, "knobs": knobs,
                "min_share": [r["min_share"] for r in rs], "used": [r["used"] for r in rs],
                "top2_sets": [r["top2_sets"] for r in rs],
                "rank1_init": [r["rank1_init"] for r in rs],
                "slope_max": [r["slope_max"] for r in rs],
                "slope_min": [r["slope_min"] for r in rs],
                "top2_init": [r["top2_init"] for r in rs],
                "token_expert_ratio": [r["token_expert_ratio"] for r in rs],
                "rank1_final": [r["rank1_final"] for r in rs],
                "normal_first": float(np.mean([_tenth(r["normal"], False) for r in rs])),
                "normal_last": float(np.mean([_tenth(r["normal"], True) for r in rs])),
                "grad_first": float(np.mean([_tenth(r["grad_normal"], False) for r in rs])),
                "grad_last": float(np.mean([_tenth(r["grad_normal"], True) for r in rs])),
                "sigma": [r["sigma"] for r in rs], "lambda": [r["lam"] for r in rs],
                "accuracy": float(np.mean([r["accuracy"] for r in rs])),
                "load_final": [np.round(r["load_final"], 4).tolist() for r in rs],
            }
            if not args.no_progress:
                print(f"  {name}: min share {np.round(results[name]['min_share'], 3).tolist()} "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
        machine = run.stop(threads=1)
    finally:
        engine_py.set_num_threads(old)
    crit = 1.0 / (4 * N_EXPERTS)
    fmt = lambda v, d=3: "/".join(f"{x:.{d}f}" for x in v)  # noqa: E731
    lines = [
        f"GMoE router collapse, notebook 04's layer ({args.data} data), seeds {args.seeds}, "
        f"{args.epochs} epochs, layer lr {args.lr:g}. Per seed (a/b/c/d): the smallest expert "
        f"share of routed slots on the held-out texts (criterion >= 1/(4N) = {crit:.3f}), "
        "experts used, distinct top-2 sets, rank-1 share of the token-centred logits at init "
        "and after training; means over seeds: L_N and |d(8 L_N)/d logits| in the first and "
        "last tenth of the steps, accuracy.", "",
        "| variant | min share | used | top-2 sets | rank-1 init -> final | L_N first -> last "
        "| grad first -> last | sigma | acc | all >= 1/(4N) |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        ok = all(m >= crit for m in r["min_share"])
        lines.append(
            f"| {name} | {fmt(r['min_share'])} | {'/'.join(map(str, r['used']))} | "
            f"{'/'.join(map(str, r['top2_sets']))} | {fmt(r['rank1_init'])} -> "
            f"{fmt(r['rank1_final'])} | {r['normal_first']:.2f} -> {r['normal_last']:.2f} | "
            f"{r['grad_first']:.1e} -> {r['grad_last']:.1e} | {fmt(r['sigma'], 2)} | "
            f"{r['accuracy']:.3f} | {'yes' if ok else 'no'} |")
    if "reference" in results:
        r = results["reference"]
        grp = lambda v: "/".join(",".join(map(str, g)) for g in v)  # noqa: E731
        lines += ["", "Reference init, per seed: the two most loaded experts on the held-out "
                  f"texts {grp(r['top2_init'])}; experts with the largest graph slope "
                  f"b_e = (Ahat Ahat[:, token])_e {grp(r['slope_max'])}, with the smallest "
                  f"{grp(r['slope_min'])}; mean |token node| / |expert node| "
                  f"{fmt(r['token_expert_ratio'], 0)} (W_t Glorot gain 100)."]
    md = "\n".join(lines) + "\n\n" + machine_line(machine) + "\n"
    finish(args, "gmoe_collapse", md, machine, results, argv)
    return 0
