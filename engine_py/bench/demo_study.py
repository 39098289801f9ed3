"""`python -m engine_py bench demo-study`: why ENGINE scores what it does on the demo graph.

A scripted study behind the demo's defaults (docs/RESULTS_DEMO.md). On the
Debian-package demo graph (4,000 nodes, 2,400 / 800 / 800 split) with the
MiniLM-L6 layer cache of the demo, it trains ENGINE and the two baselines
(SAGE and an MLP on the last layer) under named settings, each one change away
from a base setting, over several seeds, and reports validation and test
accuracy, training time and epochs. For every ENGINE run it keeps the logits
of every exit head on the validation and test nodes, so exit policies
(patience, confidence threshold, which heads may exit) are compared on the
very same models without retraining: ``engine_py.early_exit.exit_decide`` is
the C rule that ``EngineClassifier.predict(exit="dynamic")`` applies.

Runs are stored one by one in ``--results`` (a folder: results.json and one
.npz of head logits per ENGINE run) and skipped when already there, so an
interrupted study resumes and tables can be rebuilt (``--report-only``).
Everything runs on one thread (``--threads``) so that the timings of other
processes on a shared machine disturb it as little as possible; the load
average is recorded with every run.

Settings are selected on validation accuracy; test accuracy is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

# name -> (kind, description, EngineClassifier overrides, extra options)
# kind: "engine" (layers from the options, default every cached layer 0..6,
# exit heads), "sage" (one ladder on the last layer, no exit heads),
# "mlp" (the same on a graph without edges). "gate_init" sets every gate's
# starting value a_i (ALGORITHMS.md A.2: alpha_i = 0, a_i = 0.5).
BASE = dict(epochs=200, patience=20)
SETTINGS = {
    # --- the defaults before this study (engine_py 0.1.0) -----------------
    "default": ("engine", "0.1.0 defaults: layers 0-6, lr 1e-3, wd 5e-4, dropout 0.5, T 0.1, "
                "k 128, khop, patience 20", {}, {}),
    "sage": ("sage", "SAGE on the last layer, 0.1.0 defaults", {}, {}),
    "mlp": ("mlp", "MLP on the last layer, 0.1.0 defaults", {}, {}),
    # --- layer choice -----------------------------------------------------
    "layers 1-6": ("engine", "drop the embedding layer 0", {"layers": [1, 2, 3, 4, 5, 6]}, {}),
    "layers 0,2,4,6": ("engine", "every 2nd layer incl. 0", {"layers": [0, 2, 4, 6]}, {}),
    "layers 0,3,6": ("engine", "every 3rd layer incl. 0", {"layers": [0, 3, 6]}, {}),
    "layers 2,4,6": ("engine", "every 2nd layer, no 0", {"layers": [2, 4, 6]}, {}),
    "layers 4-6": ("engine", "the top three layers", {"layers": [4, 5, 6]}, {}),
    # --- heads, gates -----------------------------------------------------
    "no exit heads": ("engine", "only the final classifier is trained", {"early_exit": False}, {}),
    "T 1": ("engine", "gate temperature 1 (gates move 10x slower)", {"T": 1.0}, {}),
    "gate init 0.9": ("engine", "gates start at a_i = 0.9 (own layer)", {}, {"gate_init": 0.9}),
    "gate init 0.1": ("engine", "gates start at a_i = 0.1 (ladder below)", {}, {"gate_init": 0.1}),
    # --- optimiser --------------------------------------------------------
    "lr 3e-4": ("engine", "learning rate 3e-4", {"lr": 3e-4}, {}),
    "lr 3e-3": ("engine", "learning rate 3e-3", {"lr": 3e-3}, {}),
    "wd 5e-3": ("engine", "weight decay 5e-3", {"weight_decay": 5e-3}, {}),
    "wd 5e-2": ("engine", "weight decay 5e-2", {"weight_decay": 5e-2}, {}),
    "dropout 0.2": ("engine", "dropout 0.2", {"dropout": 0.2}, {}),
    "dropout 0.7": ("engine", "dropout 0.7", {"dropout": 0.7}, {}),
    "k 32": ("engine", "reduced dim 32 (r = 12)", {"reduced_dim": 32}, {}),
    "k 64": ("engine", "reduced dim 64 (r = 6)", {"reduced_dim": 64}, {}),
    "ln": ("engine", "LayerNorm after each GNN", {"norm": "ln"}, {}),
    # --- sampling ---------------------------------------------------------
    "rw": ("engine", "random-walk subgraphs (64 steps, restart 0.5)", {"sampler": "rw"}, {}),
    "max nbrs 5": ("engine", "khop capped at 5 neighbours", {"max_neighbors": 5}, {}),
    # --- stopping ---------------------------------------------------------
    "patience 10": ("engine", "early-stopping patience 10", {"patience": 10}, {}),
    "patience 5": ("engine", "early-stopping patience 5", {"patience": 5}, {}),
}

GROUPS = [
    ("Baselines and the 0.1.0 defaults", ["default", "sage", "mlp"]),
    ("Which layers", ["default", "layers 1-6", "layers 0,2,4,6", "layers 0,3,6", "layers 2,4,6",
                      "layers 4-6"]),
    ("Heads and gates", ["default", "no exit heads", "T 1", "gate init 0.9", "gate init 0.1"]),
    ("Optimiser and regularisation", ["default", "lr 3e-4", "lr 3e-3", "wd 5e-3", "wd 5e-2",
                                      "dropout 0.2", "dropout 0.7", "k 32", "k 64", "ln"]),
    ("Sampling", ["default", "rw", "max nbrs 5"]),
    ("Early stopping", ["default", "patience 10", "patience 5"]),
]


def add_setting(name, kind, desc, params, extra=None, group=None):
    """Register a setting (used by --combo and by later rounds of the study)."""
    SETTINGS[name] = (kind, desc, dict(params), dict(extra or {}))
    if group is not None:
        for gname, names in GROUPS:
            if gname == group:
                names.append(name)
                break
        else:
            GROUPS.append((group, [name]))


# Round 2: round 1 moved test accuracy by less than the noise (see
# docs/RESULTS_DEMO.md); these combine what made training cheaper (fewer
# ladders, a smaller k) with what did not cost accuracy, and give the
# baselines the same k, so the comparison stays fair. (norm does nothing for
# the baselines: a single ladder with one GNN layer is the last ladder's last
# layer, which has no norm and no activation.)
for _n, _k, _d, _p in [
    ("E4 k64", "engine", "layers 0,2,4,6, k 64", dict(layers=[0, 2, 4, 6], reduced_dim=64)),
    ("E4 k64 ln", "engine", "layers 0,2,4,6, k 64, LayerNorm",
     dict(layers=[0, 2, 4, 6], reduced_dim=64, norm="ln")),
    ("E7 k64 ln", "engine", "layers 0-6, k 64, LayerNorm", dict(reduced_dim=64, norm="ln")),
    ("S k64", "sage", "SAGE on the last layer, k 64", dict(reduced_dim=64)),
    ("M k64", "mlp", "MLP on the last layer, k 64", dict(reduced_dim=64)),
]:
    add_setting(_n, _k, _d, _p, group="Round 2: cheaper ENGINE, baselines at the same k")


# The demo's choice against the 0.1.0 defaults and the baselines, 5 seeds.
FINAL = ("Final comparison, 5 seeds (the demo: E4 k64 ln against SAGE and MLP at the defaults)",
         ["E4 k64 ln", "E4 k64", "default", "S k64", "sage", "M k64", "mlp"], [0, 1, 2, 3, 4])


def _kind_model(kind, params, extra, seed, last):
    from engine_py import EngineClassifier

    kw = dict(BASE)
    kw.update(params)
    kw.update(seed=seed, show_progress_bar=False)
    if kind in ("sage", "mlp"):
        kw.update(layers=[last], early_exit=False)
    gate_init = extra.get("gate_init")
    if gate_init is None:
        return EngineClassifier(**kw)

    class GateInit(EngineClassifier):
        def _build(self, *a):
            super()._build(*a)
            alpha = float(self.T) * float(np.log(gate_init / (1 - gate_init)))
            for name, off, _shape, _decay, _tr in self._table:
                if name.startswith("gates.") and name.endswith(".alpha"):
                    self._params[off] = alpha

    return GateInit(**kw)


def _load_results(folder):
    path = os.path.join(folder, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def _save_results(folder, res):
    path = os.path.join(folder, "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _key(name, seed):
    return f"{name}|{seed}"


def _sig(kind, params, extra):
    return json.dumps([kind, params, extra, BASE], sort_keys=True)


def run_one(name, seed, data, folder):
    from engine_py import Graph

    kind, _desc, params, extra = SETTINGS[name]
    g, states, graph = data["g"], data["states"], data["graph"]
    gr = Graph(np.zeros((2, 0), dtype=np.int64), g.num_nodes) if kind == "mlp" else graph
    clf = _kind_model(kind, params, extra, seed, max(states.layers))
    t0 = time.perf_counter()
    clf.fit(states, gr, g.labels, g.train_idx, g.val_idx)
    t_fit = time.perf_counter() - t0
    out = dict(name=name, seed=seed, sig=_sig(kind, params, extra), fit_seconds=t_fit,
               epochs=clf.n_epochs_, best_epoch=clf.best_epoch_, val_acc=clf.best_val_acc_,
               load=os.getloadavg()[0])
    ty = g.labels[g.test_idx]
    if kind == "engine":
        hv = clf.predict_logits(g.val_idx, all_heads=True)
        ht = clf.predict_logits(g.test_idx, all_heads=True)
        out["test_acc"] = float((ht[-1].argmax(1) == ty).mean())
        out["head_test_acc"] = (ht.argmax(2) == ty).mean(1).tolist()
        out["head_val_acc"] = (hv.argmax(2) == g.labels[g.val_idx]).mean(1).tolist()
        out["layers"] = list(clf.layers_)
        sd = clf.state_dict()
        out["gates"] = [float(1 / (1 + np.exp(-sd[f"gates.{i}.alpha"][()] / clf.T)))
                        for i in range(1, len(clf.layers_))]
        os.makedirs(os.path.join(folder, "logits"), exist_ok=True)
        np.savez_compressed(os.path.join(folder, "logits", f"{name.replace(' ', '_').replace(':', '')}"
                                         f"-s{seed}.npz"), val=hv, test=ht)
    else:
        out["test_acc"] = float((clf.predict(g.test_idx, cache=states, graph=gr) == ty).mean())
    return out


def _logits(folder, name, seed):
    p = os.path.join(folder, "logits", f"{name.replace(' ', '_').replace(':', '')}-s{seed}.npz")
    z = np.load(p)
    return z["val"], z["test"]


# ------------------------------------------------------------------ policies
def policies(K):
    """(label, patience, threshold, first ladder allowed to exit) to compare."""
    out = [(f"patience {p}", p, None, 0) for p in (1, 2, 3, 4)]
    out += [(f"threshold {t}", K, t, 0) for t in (0.9, 0.95, 0.99, 0.995, 0.999)]
    out += [(f"patience {p}, heads from ladder {m}", p, None, m) for p in (1, 2) for m in (2, 3)]
    out += [(f"patience {p} or threshold {t}", p, t, 0) for p in (2, 3) for t in (0.99, 0.999)]
    return out


def apply_policy(H, patience, threshold, first):
    from engine_py.early_exit import exit_decide

    K = H.shape[0]
    has = np.array([i >= first or i == K - 1 for i in range(K)], np.uint8)
    probs, ex = exit_decide(H, patience=patience, threshold=threshold, has_head=has)
    return probs.argmax(1), ex


def policy_rows(folder, res, name, seeds, g):
    """Per policy: relative drop on val and test (mean, max over seeds) and
    the mean exit layer on test."""
    yv, yt = g.labels[g.val_idx], g.labels[g.test_idx]
    rows = {}
    for s in seeds:
        r = res.get(_key(name, s))
        if r is None:
            continue
        hv, ht = _logits(folder, name, s)
        layers = np.asarray(r["layers"])
        K = len(layers)
        full_v, full_t = (hv[-1].argmax(1) == yv).mean(), (ht[-1].argmax(1) == yt).mean()
        for label, p, t, m in policies(K):
            pv, _ = apply_policy(hv, p, t, m)
            pt, ext = apply_policy(ht, p, t, m)
            dv = (full_v - (pv == yv).mean()) / full_v
            dt = (full_t - (pt == yt).mean()) / full_t
            rows.setdefault(label, []).append((dv, dt, float(layers[ext].mean())))
    return rows


# ------------------------------------------------------------------ report
def _ms(xs, pct=True, nd=1):
    xs = np.asarray(xs, dtype=float)
    f = 100.0 if pct else 1.0
    if xs.size == 1:
        return f"{f * xs[0]:.{nd}f}"
    return f"{f * xs.mean():.{nd}f} ± {f * xs.std(ddof=1):.{nd}f}"


def report(res, folder, seeds, g, policy_settings, final=True):
    lines = []
    base = [res[_key("default", s)]["test_acc"] for s in seeds if _key("default", s) in res]
    groups = [(gname, names, seeds) for gname, names in GROUPS]
    if final:
        groups.append(FINAL)
    for gname, names, gseeds in groups:
        seeds_all = seeds
        seeds = gseeds
        names = [n for n in names if any(_key(n, s) in res for s in seeds)]
        if not names:
            continue
        lines += [f"### {gname}", "",
                  "| setting | change | seeds | val acc | test acc | Δ test vs default | fit s* "
                  "| epochs (best) | gates a_1..a_K |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|"]
        for n in names:
            rs = [res[_key(n, s)] for s in seeds if _key(n, s) in res]
            kind, desc, _p, _e = SETTINGS[n]
            dt = ""
            if base and n != "default":   # against the default runs of the same seeds
                bs = [res[_key("default", r["seed"])]["test_acc"] for r in rs
                      if _key("default", r["seed"]) in res]
                if len(bs) == len(rs):
                    dt = f"{100 * (np.mean([r['test_acc'] for r in rs]) - np.mean(bs)):+.2f}"
            gates = ""
            if rs[0].get("gates"):
                gates = " ".join(f"{v:.2f}" for v in np.mean([r["gates"] for r in rs], axis=0))
            ep = f"{np.mean([r['epochs'] for r in rs]):.0f} ({np.mean([r['best_epoch'] for r in rs]):.0f})"
            lines.append(f"| {n} | {desc} | {len(rs)} | {_ms([r['val_acc'] for r in rs])} | "
                         f"{_ms([r['test_acc'] for r in rs])} | {dt} | "
                         f"{np.mean([r['fit_seconds'] for r in rs]):.1f} | {ep} | {gates} |")
        lines.append("")
        seeds = seeds_all
    lines += ["\\* wall time of one fit on a shared 2-core machine whose load average varied between 1 "
              "and 10 during the study (recorded per run in results.json): compare epochs, and see "
              "`--timing` for speed.", ""]
    pseeds = sorted(set(seeds) | set(FINAL[2]))   # every stored seed of the setting
    for n in policy_settings:
        rows = policy_rows(folder, res, n, pseeds, g)
        if not rows:
            continue
        rs = [res[_key(n, s)] for s in pseeds if _key(n, s) in res]
        head = np.mean([r["head_test_acc"] for r in rs], axis=0)
        L = max(rs[0]["layers"])
        lines += [f"### Exit policies on the `{n}` models ({len(rs)} seeds)", "",
                  "Per-head test accuracy (ladder 0 .. K-1, mean over seeds): "
                  + ", ".join(f"{100 * a:.1f}%" for a in head) + ".", "",
                  "Relative accuracy drop against the same model at full depth (positive = worse); "
                  f"the encoder-work bound is {L} / (mean exit layer).", "",
                  "| policy | val drop (mean, max) | test drop (mean, max) | mean exit layer (test) "
                  f"| encoder bound |",
                  "|---|---:|---:|---:|---:|"]
        for label, vals in rows.items():
            a = np.asarray(vals)
            ml = a[:, 2].mean()
            lines.append(f"| {label} | {100 * a[:, 0].mean():+.2f}%, {100 * a[:, 0].max():+.2f}% | "
                         f"{100 * a[:, 1].mean():+.2f}%, {100 * a[:, 1].max():+.2f}% | {ml:.2f} | "
                         f"{L / max(ml, 1e-9):.2f}x |")
        lines.append("")
    return "\n".join(lines)


def timing(names, data, epochs, repeats):
    """Seconds per training epoch (validation pass included) of each setting."""
    from engine_py import Graph

    g, states = data["g"], data["states"]
    lines = ["| setting | ladders | k | s / epoch | epochs/s |", "|---|---:|---:|---:|---:|"]
    for n in names:
        kind, _desc, params, extra = SETTINGS[n]
        params = dict(params, epochs=epochs, patience=epochs)
        gr = Graph(np.zeros((2, 0), dtype=np.int64), g.num_nodes) if kind == "mlp" else data["graph"]
        best = float("inf")
        for _ in range(repeats):
            clf = _kind_model(kind, params, extra, 0, max(states.layers))
            t0 = time.perf_counter()
            clf.fit(states, gr, g.labels, g.train_idx, g.val_idx)
            best = min(best, (time.perf_counter() - t0) / clf.n_epochs_)
        lines.append(f"| {n} | {len(clf.layers_)} | {clf.reduced_dim_} | {best:.3f} | {1 / best:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def load_data(cache_dir=None):
    """The demo graph, its MiniLM layer cache (engine_py.demo.demo_cache: built
    if missing, as the demo does) read into memory as float32, and the graph."""
    from engine_py import Graph
    from engine_py.datasets import demo_graph
    from engine_py.demo import demo_cache
    from engine_py.engine import InMemoryStates

    g = demo_graph()
    cache = demo_cache(cache_dir=cache_dir)
    # the float16 rows as float32, in memory: the same numbers gather() returns
    states = InMemoryStates({l: cache.layer(l, dtype=np.float32) for l in cache.layers})
    return dict(g=g, states=states, graph=Graph(g.edge_index, g.num_nodes))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_py bench demo-study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="+", default=None, help="setting names to run (default: all)")
    p.add_argument("--results", default=None,
                   help="folder for results.json and head logits (default: <cache dir>/demo-study)")
    p.add_argument("--cache-dir", default=None, help="the demo's layer cache folder "
                   "(default $ENGINE_PY_CACHE or ~/.cache/engine_py)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--policies", nargs="*", default=None,
                   help="ENGINE settings whose exit policies to tabulate (default: default and the "
                   "round-2 ENGINE settings)")
    p.add_argument("--report-only", action="store_true", help="print the tables of stored runs only")
    p.add_argument("--out", default=None, help="write the tables into this markdown file "
                   "(section demo-study; the rest of the file is kept)")
    p.add_argument("--list", action="store_true", help="list the settings and exit")
    p.add_argument("--timing", nargs="+", default=None, metavar="SETTING",
                   help="instead: time a fixed number of epochs (--timing-epochs) of these settings, "
                   "seed 0, best of --timing-repeats, and print seconds per epoch (run it on a quiet "
                   "machine)")
    p.add_argument("--timing-epochs", type=int, default=10)
    p.add_argument("--timing-repeats", type=int, default=2)
    args = p.parse_args(argv)

    if args.list:
        for n, (kind, desc, params, extra) in SETTINGS.items():
            print(f"{n:<32} {kind:<6} {desc}  {params or ''} {extra or ''}")
        return 0
    import engine_py
    from engine_py.demo import _default_cache_dir

    engine_py.set_num_threads(args.threads)
    folder = args.results or os.path.join(args.cache_dir or _default_cache_dir(), "demo-study")
    os.makedirs(folder, exist_ok=True)
    data = load_data(args.cache_dir)
    if args.timing:
        print(timing(args.timing, data, args.timing_epochs, args.timing_repeats))
        return 0
    res = _load_results(folder)
    names = args.only or list(SETTINGS)
    unknown = [n for n in names if n not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; see --list")
    if not args.report_only:
        for n in names:
            kind, _d, params, extra = SETTINGS[n]
            for s in args.seeds:
                k = _key(n, s)
                if k in res and res[k]["sig"] == _sig(kind, params, extra):
                    continue
                r = run_one(n, s, data, folder)
                res[k] = r
                _save_results(folder, res)
                print(f"{n:<32} seed {s}: val {r['val_acc']:.4f} test {r['test_acc']:.4f} "
                      f"{r['fit_seconds']:6.1f} s {r['epochs']:3d} epochs (best {r['best_epoch']}) "
                      f"load {r['load']:.2f}", flush=True)
    pol = args.policies
    if pol is None:
        pol = ["E4 k64 ln", "default", "layers 0,2,4,6", "E4 k64", "E7 k64 ln", "ln"]
    md = report(res, folder, args.seeds, data["g"], pol)
    print(md)
    if args.out:
        from engine_py.bench import write_section
        write_section("demo-study", md, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
