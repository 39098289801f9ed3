"""`python -m engine_py bench engine-llm`: ENGINE on decoder LLMs, a results study.

For each graph (the Debian package graph, debian_packages(); the Python
documentation's section-link graph, python_docs()) and each encoder (MiniLM-L6,
SmolLM2-135M, Qwen2.5-0.5B), it

1. builds the layer cache of ENGINE's selected states (``--layers``, default
   "engine": select_layers, about seven evenly spaced states incl. 0 and L) or
   reuses it (build time and file size reported; a reused cache has no build time);
2. trains over ``--seeds``: ENGINE (a SAGE ladder per selected state, exit
   heads), an MLP on the last state (the side structure without edges), SAGE
   and GCN on the last state, and SAGE on the best single state (chosen on
   validation accuracy with the first seed among the cached states, then
   trained with every seed) — test accuracy mean ± std and training time per
   epoch, plus ENGINE's gate values;
3. applies dynamic early exit to the ENGINE models on the test nodes (cached
   heads; patience / threshold settings): accuracy, relative drop, mean exit
   layer and the layer speed-up (last layer / mean exit layer), with exit-layer
   histograms;
4. measures early exit live on held-out nodes (``--exit-nodes`` test nodes
   re-added as *new* nodes: their own text through the encoder, layer by layer,
   their links to known nodes from the cache): wall-clock time of
   ``predict_new`` at full depth vs with dynamic exit, accuracy, histogram; and
   the encoder's time per node vs the layer it stops at (time_per_exit_layer).

5. for a bfloat16 decoder, times the same test texts in bfloat16 and float32
   and compares the pooled states (cosine per layer);
6. times a training step of the ENGINE model with states from the cache vs
   re-encoding the batch's subgraph texts (``--reencode-batches``);
7. trains the ENGINE model for ``--pyg-epochs`` epochs three ways on the same
   cache, batches and initial weights: engine_py, plain PyTorch
   (tests/reference/engine_ref.py) and a PyTorch Geometric pipeline;
8. records the peak RSS of every phase (VmHWM, reset at the phase's start).

Results go to ``--out`` (markdown, default docs/RESULTS.md) and ``--json``
(raw numbers), rewritten after every pair (PARTIAL until the last);
``--render-from JSON`` renders the markdown again without measuring;
``--merge A.json B.json`` makes one study of runs with the same settings that
measured different graph × encoder pairs (engine_llm_merge.py).
``--max-nodes debian=5000`` samples one graph only; the markdown says so. A run with ``--max-nodes`` or fewer than 3 seeds is labelled a
SMALL-SCALE RUN at the top of the markdown: it proves the pipeline, it is not
the study.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

from . import machine_line, start_run, with_kept_sections, write_json

__all__ = ["run_study", "render_markdown", "subsample", "POLICIES", "main"]

#: exit policies compared on the cached heads: (label, patience, threshold)
POLICIES = [("patience 1 (paper)", 1, None), ("patience 2", 2, None), ("patience 3", 3, None),
            ("threshold 0.9", None, 0.9), ("threshold 0.95", None, 0.95),
            ("threshold 0.99 (default)", None, 0.99), ("threshold 0.999", None, 0.999),
            ("patience 2 or threshold 0.99", 2, 0.99)]
#: the policy measured live (predict_new), besides full depth
LIVE_POLICIES = [("threshold 0.99 (default)", None, 0.99), ("patience 1 (paper)", 1, None)]
#: ENGINE's settings besides the layers (the demo's, docs/RESULTS_DEMO.md)
ENGINE_KW = dict(reduced_dim=64, norm="ln")


def _rss_reset() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0:
    /proc/self/clear_refs, "5"), so _rss_peak() reports the peak of the next
    phase only. False where that is not possible (then the peak is the
    process's since its start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_peak() -> float:
    """Peak resident set size in bytes since the last _rss_reset (VmHWM), or
    since the process started (getrusage) where /proc is unavailable."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) * 1024.0
    except OSError:
        pass
    import resource

    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024.0


def _ms(xs, pct=True):
    xs = np.asarray(xs, dtype=float)
    f = 100.0 if pct else 1.0
    if xs.size == 0:
        return "-"
    if xs.size == 1:
        return f"{f * xs[0]:.1f}"
    return f"{f * xs.mean():.1f} ± {f * xs.std(ddof=1):.1f}"


def subsample(g, max_nodes: int, seed: int = 0):
    """At most max_nodes nodes of g taken breadth-first (undirected) from random
    start nodes, so most kept nodes keep their edges; the induced subgraph with
    its split restricted to them. g itself when it is small enough."""
    from engine_py import Graph
    from engine_py.demo import bfs_nodes

    if max_nodes is None or g.num_nodes <= max_nodes:
        return g
    csr = Graph(g.edge_index, g.num_nodes)
    rng = np.random.default_rng(seed)
    s = g.subgraph(bfs_nodes(csr, g.num_nodes, int(max_nodes), rng.permutation(g.num_nodes).tolist()))
    # the full graph's split restricted to the sample can leave a class with
    # validation nodes but no training node: re-split the sample (stratified,
    # every class keeps a training node) over the classes present
    from engine_py.datasets import TextGraph, stratified_split

    present, y = np.unique(s.labels, return_inverse=True)
    tr, va, te = stratified_split(y, seed=seed)
    return TextGraph(texts=s.texts, edge_index=s.edge_index, labels=y,
                     label_names=[s.label_names[k] for k in present], train_idx=tr, val_idx=va,
                     test_idx=te, name=s.name, provenance=s.provenance +
                     f" | BFS subsample of {s.num_nodes} nodes (seed {seed}), re-split 60/20/20").validate()


def _cache_path(cache_dir, gname, g, mname, enc, layers):
    h = hashlib.sha256("\0".join(g.texts).encode("utf-8")).hexdigest()[:10]
    fp = hashlib.sha256(enc.fingerprint().encode("utf-8")).hexdigest()[:8]
    lay = "-".join(map(str, layers))
    return os.path.join(cache_dir, f"{gname}-{g.num_nodes}-{h}.{mname}-{fp}.L{lay}.cache")


def _build_cache(path, enc, texts, layers, batch_size, show):
    from engine_py import LayerCache

    t0 = time.perf_counter()
    existed = os.path.exists(path)
    done_before = 0
    if existed:
        try:
            c = LayerCache.open(path)
            done_before = c.rows_done
            c.close()
        except Exception:   # damaged: build() decides
            done_before = 0
    cache = LayerCache.build(path, enc, texts, layers=layers, dtype="float16", batch_size=batch_size,
                             show_progress_bar=show)
    secs = time.perf_counter() - t0
    reused = existed and done_before == cache.num_nodes
    return cache, {"path": path, "build_seconds": None if reused else secs,
                   "rows_built": cache.num_nodes - done_before, "reused": reused,
                   "bytes": os.path.getsize(path), "layers": list(cache.layers),
                   "num_nodes": cache.num_nodes, "dim": cache.dim, "dtype": cache.dtype}


def _fit(kw, cache, graph, g, seed, epochs, patience):
    from engine_py import EngineClassifier

    clf = EngineClassifier(epochs=epochs, patience=patience, seed=seed, show_progress_bar=False, **kw)
    t0 = time.perf_counter()
    clf.fit(cache, graph, g.labels, g.train_idx, g.val_idx)
    secs = time.perf_counter() - t0
    return clf, {"fit_seconds": secs, "epochs": clf.n_epochs_,
                 "seconds_per_epoch": secs / max(1, clf.n_epochs_), "val_acc": clf.best_val_acc_}


def _gates(clf):
    sd = clf.state_dict()
    return [float(1 / (1 + np.exp(-float(sd[f"gates.{i}.alpha"]) / clf.T)))
            for i in range(1, len(clf.layers_)) if f"gates.{i}.alpha" in sd]


def _held_out(g, graph_ei, k, seed):
    """k test nodes to re-add as new nodes: the nodes, their neighbour lists
    among the other nodes, the graph without their edges and the reference
    graph (without the edges among them)."""
    from engine_py import Graph

    rng = np.random.default_rng(seed + 991)
    ids = np.sort(rng.permutation(g.test_idx)[:k]).astype(np.int64)
    ei = graph_ei
    touch = np.isin(ei[0], ids) | np.isin(ei[1], ids)
    both = np.isin(ei[0], ids) & np.isin(ei[1], ids)
    und = np.concatenate([ei, ei[::-1]], axis=1)
    nbrs = [np.unique(und[1][(und[0] == v) & ~np.isin(und[1], ids)]) for v in ids]
    return ids, nbrs, Graph(ei[:, ~touch], g.num_nodes), Graph(ei[:, ~both], g.num_nodes)


def run_reencode(cache, graph, g, enc, hp, batches=1, batch_size=64, log=print):
    """Cache vs re-encode on this encoder (bench engine's run_live): a
    training step of the study's ENGINE model whose states come from the cache
    (sample + gather + step) vs the same step re-encoding the texts of the
    batch's subgraph nodes with ``enc`` (sample + encode + step), on
    ``batches`` batches of ``batch_size`` targets. Returns seconds per batch
    (means), the ratio and the subgraph sizes."""
    from .engine import run_live

    hp = dict(hp, batch_size=int(batch_size))
    r = run_live(cache, graph, g, enc, hp, int(batches), None, log=lambda *a: None)
    c, l = float(np.mean(r["rows"]["cached"])), float(np.mean(r["rows"]["live"]))
    out = {"batches": len(r["rows"]["cached"]), "batch_size": int(batch_size),
           "cached_seconds": c, "reencode_seconds": l, "ratio": l / c,
           "subgraph_nodes": [int(a) for a, _ in r["sizes"]], "unique_texts": [int(b) for _, b in r["sizes"]],
           "batches_per_epoch": -(-g.train_idx.size // int(batch_size))}
    log(f"  cache vs re-encode ({out['batches']} batch of {batch_size} targets, "
        f"{np.mean(out['unique_texts']):.0f} unique texts): {c:.3f} s vs {l:.2f} s = {l / c:.0f}x")
    return out


def run_pyg(cache, graph, g, hp, epochs=3, seed=0, log=print):
    """The cached training step three ways, in one run, on the same cache,
    the same batches and the same initial weights (bench engine's run_pair):
    engine_py's C step, the same model in plain PyTorch
    (tests/reference/engine_ref.py; scatter ops), and a PyTorch Geometric
    pipeline (PyG SAGEConv, Batch.from_data_list, states indexed from float32
    tensors in RAM). ``epochs`` epochs, every one timed. None without torch or
    torch_geometric."""
    try:
        import torch  # noqa: F401
        import torch_geometric  # noqa: F401
    except ImportError:
        return None
    from .engine import _engine_ref, run_pair as _engine_pair

    EngineRef = _engine_ref()
    o = _engine_pair(cache, graph, g, seed, dict(hp), epochs, epochs, EngineRef, log=lambda *a: None,
                     pyg_epochs=epochs)
    n = min(len(o["eng"]), len(o["fast"]), len(o["ref"]), len(o["pyg"]))
    eng, fast, ref, pyg = (float(np.median(o[k][:n])) for k in ("eng", "fast", "ref", "pyg"))
    out = {"epochs": n, "seed": seed, "engine_py_epoch_seconds": eng, "engine_py_bf16_epoch_seconds": fast,
           "torch_epoch_seconds": ref, "torch_over_engine_bf16": ref / fast,
           "pyg_epoch_seconds": pyg, "sample_gather_epoch_seconds": float(np.median(o["prep"][:n])),
           "pyg_setup_seconds": o["pyg_setup"], "torch_over_engine": ref / eng, "pyg_over_engine": pyg / eng,
           "val_acc_engine_py": [float(v["eng"]) for v in o["val"][:n]],
           "val_acc_engine_py_bf16": [float(v["fast"]) for v in o["val"][:n]],
           "val_acc_torch": [float(v["ref"]) for v in o["val"][:n]], "val_acc_pyg": o["pyg_val"][:n],
           "torch_version": torch.__version__, "pyg_version": torch_geometric.__version__}
    log(f"  training epoch (median of {n}): engine_py {eng:.3f} s (bf16 {fast:.3f} s), plain PyTorch "
        f"{ref:.3f} s ({ref / eng:.2f}x; {ref / fast:.2f}x bf16), PyG pipeline {pyg:.3f} s ({pyg / eng:.2f}x)")
    return out


def run_precision(enc, texts, layers, batch_size=32, log=print):
    """bfloat16 vs float32 on this decoder: the same texts encoded (the
    selected layers, mean-pooled) by ``enc`` (bfloat16) and by a float32 twin
    loaded from the same file; wall clock of each, and the cosine of the
    pooled states per layer (min and mean over texts). None when ``enc`` is
    float32."""
    from engine_py import Encoder

    if getattr(enc, "precision", "float32") != "bfloat16":
        return None
    ref = Encoder.from_pretrained(enc.path, max_length=int(enc.max_length), precision="float32",
                                  pooling=enc.pooling, template=enc.template)
    texts = list(texts)
    enc.encode_layers(texts[:2], layers=layers, batch_size=batch_size)   # warm-up
    out = {}
    for name, e in (("bfloat16", enc), ("float32", ref)):
        t0 = time.perf_counter()
        out[name] = np.asarray(e.encode_layers(texts, layers=layers, batch_size=batch_size), np.float64)
        out[name + "_seconds"] = time.perf_counter() - t0
    a, b = out["bfloat16"], out["float32"]
    cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-30)
    r = {"num_texts": len(texts), "bfloat16_seconds": out["bfloat16_seconds"],
         "float32_seconds": out["float32_seconds"],
         "speedup": out["float32_seconds"] / out["bfloat16_seconds"], "layers": list(layers),
         "cosine_min": [float(x) for x in cos.min(-1)], "cosine_mean": [float(x) for x in cos.mean(-1)]}
    log(f"  bfloat16 vs float32 on {len(texts)} texts: {r['float32_seconds']:.1f} s -> "
        f"{r['bfloat16_seconds']:.1f} s ({r['speedup']:.2f}x), min cosine {min(r['cosine_min']):.6f}")
    del ref
    return r


def run_pair(gname, g, mname, enc, seeds, cache_dir, layers="engine", epochs=200, patience=20,
             exit_nodes=200, batch_size=32, timing_nodes=64, show=False, log=print,
             reencode_batches=1, reencode_batch_size=64, pyg_epochs=3, precision_texts=32):
    """One graph x one encoder: every number of the study for that pair (a
    JSON-ready dict)."""
    from engine_py import Graph
    from engine_py.cache import parse_layers
    from engine_py.early_exit import exit_decide, time_per_exit_layer

    sel = parse_layers(layers, int(enc.num_layers))
    last = sel[-1]
    path = _cache_path(cache_dir, gname, g, mname, enc, sel)
    log(f"[{gname} x {mname}] cache {os.path.basename(path)} (layers {sel})")
    t_pair = time.perf_counter()
    rss_ok = _rss_reset()
    cache, cinfo = _build_cache(path, enc, g.texts, sel, batch_size, show)
    rss = {"per_phase": rss_ok, "cache_build": _rss_peak()}
    _rss_reset()
    how = "reused" if cinfo["reused"] else f"built in {cinfo['build_seconds']:.1f} s"
    log(f"  cache: {how}, {cinfo['bytes'] / 1e6:.1f} MB")
    graph = Graph(g.edge_index, g.num_nodes)
    no_edges = Graph(np.zeros((2, 0), np.int64), g.num_nodes)
    ty = g.labels[g.test_idx]
    res = {"graph": gname, "model": mname, "num_nodes": g.num_nodes, "num_edges": g.num_edges,
           "num_classes": g.num_classes, "encoder_layers": int(enc.num_layers), "layers": sel,
           "precision": getattr(enc, "precision", "float32"), "max_length": int(enc.max_length),
           "pooling": enc.pooling, "template": enc.template, "cache": cinfo, "models": {}, "exit_cached": {}, "exit_live": {}, "rss_peak_bytes": rss}
    specs = [("ENGINE", dict(layers=sel, early_exit=True, **ENGINE_KW), graph),
             ("MLP (last layer)", dict(layers=[last], early_exit=False), no_edges),
             ("SAGE (last layer)", dict(layers=[last], early_exit=False), graph),
             ("GCN (last layer)", dict(layers=[last], early_exit=False, gnn="gcn"), graph)]
    # best single state: SAGE on each cached state, chosen on validation with the first seed
    scan = {}
    for l in sel:
        _clf, info = _fit(dict(layers=[l], early_exit=False), cache, graph, g, seeds[0], epochs, patience)
        scan[l] = info["val_acc"]
    best_l = max(sel, key=lambda l: (scan[l], l))
    res["single_layer_val"] = {str(l): v for l, v in scan.items()}
    res["best_single_layer"] = best_l
    specs.append((f"SAGE (best single layer {best_l})", dict(layers=[best_l], early_exit=False), graph))
    engines = []
    for name, kw, gr in specs:
        rec = {"test_acc": [], "seconds_per_epoch": [], "epochs": [], "val_acc": []}
        for seed in seeds:
            clf, info = _fit(kw, cache, gr, g, seed, epochs, patience)
            acc = float(np.mean(clf.predict(g.test_idx, cache=cache, graph=gr) == ty))
            rec["test_acc"].append(acc)
            for k in ("seconds_per_epoch", "epochs", "val_acc"):
                rec[k].append(info[k])
            if name == "ENGINE":
                rec.setdefault("gates", []).append(_gates(clf))
                engines.append(clf)
        res["models"][name] = rec
        log(f"  {name:<34} test {_ms(rec['test_acc'])}%  {np.mean(rec['seconds_per_epoch']):.3f} s/epoch")
    rss["training"] = _rss_peak()
    _rss_reset()
    # early exit on cached heads (the rule run by predict(exit="dynamic"))
    lay = np.asarray(sel)
    for label, p, t in POLICIES:
        accs, drops, mean_layer, hist = [], [], [], np.zeros(len(sel), np.int64)
        for clf in engines:
            H = clf.predict_logits(g.test_idx, cache=cache, graph=graph, all_heads=True)
            full = float(np.mean(H[-1].argmax(1) == ty))
            probs, ex = exit_decide(H, patience=p, threshold=t)
            a = float(np.mean(clf.classes_[probs.argmax(1)] == ty))
            accs.append(a)
            drops.append((full - a) / full if full > 0 else 0.0)
            mean_layer.append(float(lay[ex].mean()))
            hist += np.bincount(ex, minlength=len(sel))
        res["exit_cached"][label] = {"patience": p, "threshold": t, "acc": accs, "rel_drop": drops,
                                     "mean_exit_layer": mean_layer,
                                     "layer_speedup": [last / max(m, 1e-9) for m in mean_layer],
                                     "histogram": hist.tolist()}
    # early exit live on held-out nodes, seed-0 model
    k = min(int(exit_nodes), g.test_idx.size)
    if k > 0 and engines:
        clf = engines[0]
        ids, nbrs, g_new, g_ref = _held_out(g, g.edge_index, k, seeds[0])
        texts = [g.texts[v] for v in ids]
        yk = g.labels[ids]
        clf.predict_new(enc, texts[:2], nbrs[:2], cache, graph=g_new, exit="none")   # warm-up
        t0 = time.perf_counter()
        p_full = clf.predict_new(enc, texts, nbrs, cache, graph=g_new, exit="none", batch_size=batch_size)
        t_full = time.perf_counter() - t0
        work_full = clf.last_encoder_layers_
        res["exit_live"]["full depth"] = {"seconds": t_full, "acc": float(np.mean(p_full == yk)),
                                          "sequence_layers": work_full, "num_nodes": k}
        for label, p, t in LIVE_POLICIES:
            t0 = time.perf_counter()
            pred, at = clf.predict_new(enc, texts, nbrs, cache, graph=g_new, exit="dynamic", patience=p,
                                       threshold=t, batch_size=batch_size, return_exit_layer=True)
            secs = time.perf_counter() - t0
            res["exit_live"][label] = {
                "seconds": secs, "acc": float(np.mean(pred == yk)), "speedup": t_full / secs,
                "sequence_layers": clf.last_encoder_layers_,
                "work_ratio": work_full / max(1, clf.last_encoder_layers_),
                "mean_exit_layer": float(at.mean()),
                "histogram": [int((at == l).sum()) for l in sel], "num_nodes": k}
            log(f"  live exit ({label}) on {k} new nodes: {t_full:.2f} s -> {secs:.2f} s "
                f"({t_full / secs:.1f}x), acc {100 * np.mean(p_full == yk):.1f}% -> "
                f"{100 * np.mean(pred == yk):.1f}%")
        # cached reference for the same nodes: checks that live == cached at full depth
        ref = clf.predict(ids, cache=cache, graph=g_ref)
        res["exit_live"]["full depth"]["agrees_with_cached"] = float(np.mean(ref == p_full))
    rss["early_exit"] = _rss_peak()
    if timing_nodes:
        tn = [g.texts[v] for v in g.test_idx[:int(timing_nodes)]]
        res["time_per_exit_layer"] = time_per_exit_layer(enc, tn, sel, batch_size=batch_size)
    hp = dict(layers=sel, early_exit=True, **ENGINE_KW)
    if precision_texts:
        res["precision_check"] = run_precision(enc, [g.texts[v] for v in g.test_idx[:int(precision_texts)]],
                                               sel, batch_size, log)
    if reencode_batches:
        _rss_reset()
        res["reencode"] = run_reencode(cache, graph, g, enc, hp, reencode_batches, reencode_batch_size, log)
        rss["reencode"] = _rss_peak()
    if pyg_epochs:
        _rss_reset()
        res["pyg"] = run_pyg(cache, graph, g, hp, pyg_epochs, seeds[0], log)
        rss["pyg"] = _rss_peak()
    cache.close()
    res["seconds"] = time.perf_counter() - t_pair
    log(f"  pair done in {res['seconds']:.0f} s; peak RSS cache build {rss['cache_build'] / 1e6:.0f} MB, "
        f"training {rss['training'] / 1e6:.0f} MB")
    return res


def run_study(graphs: dict, encoders: dict, seeds=(0, 1, 2), cache_dir=None, on_pair=None, **kw) -> dict:
    """Every pair of ``graphs`` ({name: TextGraph}) and ``encoders`` ({name:
    Encoder, or a zero-argument callable returning one}); keywords go to
    run_pair. ``on_pair(result_so_far)`` is called after every pair (the
    command writes its files there, so a run cut short keeps what it
    measured). Returns {"pairs": [...], "graphs": {...}}."""
    cache_dir = cache_dir or os.path.join(os.environ.get("ENGINE_PY_CACHE") or
                                          os.path.join(os.path.expanduser("~"), ".cache", "engine_py"),
                                          "engine-llm")
    os.makedirs(cache_dir, exist_ok=True)
    seeds = list(seeds)
    out = {"pairs": [], "seeds": seeds, "planned_pairs": len(graphs) * len(encoders),
           "graphs": {n: {"num_nodes": g.num_nodes, "num_edges": g.num_edges,
                          "num_classes": g.num_classes, "provenance": g.provenance,
                          "split": [int(g.train_idx.size), int(g.val_idx.size), int(g.test_idx.size)]}
                      for n, g in graphs.items()}}
    for mname, enc in encoders.items():
        if callable(enc) and not hasattr(enc, "encode_layers"):
            enc = enc()
        for gname, g in graphs.items():
            out["pairs"].append(run_pair(gname, g, mname, enc, seeds, cache_dir, **kw))
            if on_pair is not None:
                on_pair(out)
    return out


def _best_exit(p, max_drop=0.01):
    """The cached-heads policy with the largest layer speed-up whose mean
    relative accuracy drop is at most max_drop: (label, speed-up, drop) or None."""
    ok = [(np.mean(r["layer_speedup"]), lab, np.mean(r["rel_drop"])) for lab, r in p["exit_cached"].items()
          if np.mean(r["rel_drop"]) <= max_drop]
    if not ok:
        return None
    sp, lab, d = max(ok)
    return lab, float(sp), float(d)


def summary_lines(res: dict) -> list:
    """Findings computed from the numbers (no hand-written claims): who wins
    per pair, by how much, where the best single layer is, the best early-exit
    point within a 1% relative drop, the cache / PyG ratios."""
    L = []
    for p in res["pairs"]:
        m = p["models"]
        mean = {k: float(np.mean(r["test_acc"])) for k, r in m.items()}
        sd = {k: float(np.std(r["test_acc"], ddof=1)) if len(r["test_acc"]) > 1 else 0.0 for k, r in m.items()}
        best = max(mean, key=mean.get)
        eng = mean["ENGINE"]
        others = {k: v for k, v in mean.items() if k != "ENGINE"}
        rival = max(others, key=others.get)
        diff = 100 * (eng - others[rival])
        verdict = ("ENGINE is best" if best == "ENGINE" else f"ENGINE does not win: {best} is best")
        noise = max(sd["ENGINE"], sd[rival]) * 100
        run = f" ({p['source']})" if p.get("source") else ""   # a merged study: the run that measured it
        L.append(f"- **{p['graph']} × {p['model']}**{run}: {verdict} (ENGINE {100 * eng:.1f}% vs {rival} "
                 f"{100 * others[rival]:.1f}%, {diff:+.1f} points; larger seed std {noise:.1f}); "
                 f"best single state on validation: layer {p['best_single_layer']} of {p['encoder_layers']}.")
        b = _best_exit(p)
        if b:
            L.append(f"  Early exit (cached heads, test nodes): best layer speed-up within 1% relative drop: "
                     f"{b[1]:.2f}x ({b[0]}, drop {100 * b[2]:.2f}%).")
        else:
            L.append("  Early exit (cached heads): no policy stays within 1% relative drop.")
        live = {k: v for k, v in p["exit_live"].items() if "speedup" in v}
        if live:
            full = p["exit_live"]["full depth"]["acc"]
            L.append("  Live on held-out nodes: " + "; ".join(
                f"{k} {v['speedup']:.2f}x wall clock, accuracy {100 * full:.1f} → {100 * v['acc']:.1f}%"
                for k, v in live.items()) + ".")
        if p.get("reencode"):
            L.append(f"  Cache vs re-encode: a cached training step is {p['reencode']['ratio']:.0f}x faster.")
        if p.get("pyg"):
            q = p["pyg"]
            L.append(f"  Cached training epoch: engine_py {q['torch_over_engine']:.2f}x faster than plain "
                     f"PyTorch, {q['pyg_over_engine']:.2f}x faster than the PyG pipeline.")
    return L


def render_markdown(res: dict, command: str = "", machine: str = "", small: bool = False,
                    samples: dict | None = None, provenance: list | None = None,
                    runs: list | None = None) -> str:
    """The study's markdown. provenance and runs (bench engine-llm --merge):
    paragraphs that say where the numbers come from, in place of the one-run
    sentence, and [(heading, paragraph, pairs), ...], one section of tables
    per run, so that no table mixes numbers from two runs."""
    L = ["# ENGINE on decoder LLMs: results", ""]
    done, planned = len(res["pairs"]), res.get("planned_pairs", len(res["pairs"]))
    if done < planned:
        L += [f"> **PARTIAL**: {done} of {planned} graph × encoder pairs finished when this file was "
              "written (the file is rewritten after every pair).", ""]
    if small:
        L += ["> **SMALL-SCALE RUN** (subsampled graphs and/or fewer than 3 seeds): it shows that the",
              "> pipeline runs end to end; its numbers are not the study's.", ""]
    for n, (full, kept) in (samples or {}).items():
        L += [f"> **Sampled graph**: `{n}` is a breadth-first sample of {kept:,} of its {full:,} nodes "
              "(re-split 60/20/20 stratified), not the full graph.", ""]
    if provenance:
        for para in provenance:
            L += [para, ""]
    elif command:
        L += [f"Generated by `{command}` (one run; every number below comes from it).", ""]
    if machine:
        L += [f"Machine: {machine}", ""]
    if res["pairs"]:
        L += ["## Summary (computed from the tables below)", ""] + summary_lines(res) + [""]
    L += ["## Graphs", "", "| graph | nodes | edges | classes | train / val / test |", "|---|---|---|---|---|"]
    for n, g in res["graphs"].items():
        L.append(f"| {n} | {g['num_nodes']:,} | {g['num_edges']:,} | {g['num_classes']} | "
                 f"{' / '.join(map(str, g['split']))} |")
    if runs:
        for heading, para, pairs in runs:
            L += ["", f"## {heading}", "", para] + _pair_tables(pairs, res["seeds"], "###")
    else:
        L += _pair_tables(res["pairs"], res["seeds"], "##")
    return "\n".join(L) + "\n"


def _pair_tables(pairs: list, seeds, h: str) -> list:
    """The markdown lines of the per-pair tables (caches, accuracy, gates,
    early exit, time per exit layer, precision, re-encode, PyG, memory) of
    pairs, with section headings of level h ("##" or "###")."""
    L = ["", f"{h} Layer caches", "",
          "| graph | encoder | precision | max tokens | pooling | layers cached | size | build time | ms / node |",
          "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        c = p["cache"]
        bt = "reused (built earlier)" if c["build_seconds"] is None else f"{c['build_seconds']:.1f} s"
        if c["build_seconds"] is not None and c["rows_built"] < c["num_nodes"]:
            bt += f" for {c['rows_built']:,} rows (resumed a partial cache)"
        per = "-" if c["build_seconds"] is None else f"{1e3 * c['build_seconds'] / max(1, c['rows_built']):.1f}"
        pool = p.get("pooling", "mean") + (f", template `{p['template']}`" if p.get("template") else "")
        L.append(f"| {p['graph']} | {p['model']} | {p.get('precision', 'float32')} | {p.get('max_length', '-')} | "
                 f"{pool} | {','.join(map(str, c['layers']))} | {c['bytes'] / 1e6:.1f} MB | {bt} | {per} |")
    L += ["", f"{h} Test accuracy (mean ± std over seeds {seeds}) and training time per epoch", "",
          "| graph | encoder | model | test acc % | s / epoch | epochs |", "|---|---|---|---|---|---|"]
    for p in pairs:
        for name, r in p["models"].items():
            L.append(f"| {p['graph']} | {p['model']} | {name} | {_ms(r['test_acc'])} | "
                     f"{np.mean(r['seconds_per_epoch']):.3f} | {np.mean(r['epochs']):.0f} |")
    L += ["", "ENGINE's gates a_i = σ(α_i/T) (weight of the ladder's own layer vs the ladder below), "
          "mean over seeds, and the single-layer scan (SAGE, validation accuracy, first seed):", ""]
    for p in pairs:
        gates = np.mean(np.asarray(p["models"]["ENGINE"].get("gates", [[]]), float), axis=0)
        scan = ", ".join(f"{l}: {100 * v:.1f}" for l, v in p["single_layer_val"].items())
        L.append(f"- {p['graph']} × {p['model']}: gates {np.round(gates, 2).tolist()}; val acc by layer {scan}")
    L += ["", f"{h} Early exit on the test nodes (cached heads, every seed)", "",
          "| graph | encoder | policy | acc % | rel. drop % | mean exit layer | layer speed-up | exit-layer histogram |",
          "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        for label, r in p["exit_cached"].items():
            hist = " ".join(f"{l}:{c}" for l, c in zip(p["layers"], r["histogram"]))
            L.append(f"| {p['graph']} | {p['model']} | {label} | {_ms(r['acc'])} | {_ms(r['rel_drop'])} | "
                     f"{np.mean(r['mean_exit_layer']):.1f} of {p['layers'][-1]} | "
                     f"{np.mean(r['layer_speedup']):.2f}x | {hist} |")
    L += ["", f"{h} Early exit live on held-out nodes (predict_new: own text through the encoder, "
          "layer by layer; seed-0 model; wall clock)", "",
          "| graph | encoder | policy | nodes | seconds | speed-up | acc % | encoder layer-runs | histogram |",
          "|---|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        for label, r in p["exit_live"].items():
            hist = " ".join(f"{l}:{c}" for l, c in zip(p["layers"], r.get("histogram", []))) or "-"
            sp = f"{r['speedup']:.2f}x" if "speedup" in r else "1 (baseline)"
            L.append(f"| {p['graph']} | {p['model']} | {label} | {r['num_nodes']} | {r['seconds']:.2f} | {sp} | "
                     f"{100 * r['acc']:.1f} | {r['sequence_layers']} | {hist} |")
    L += ["", f"{h} Encoder time per node vs the layer it stops at (time_per_exit_layer)", "",
          "| graph | encoder | layer: ms / node | slope ms / layer | R² |", "|---|---|---|---|---|"]
    for p in pairs:
        t = p.get("time_per_exit_layer")
        if t:
            pts = ", ".join(f"{l}: {1e3 * s:.2f}" for l, s in zip(t["layers"], t["seconds_per_node"]))
            L.append(f"| {p['graph']} | {p['model']} | {pts} | {1e3 * t['slope']:.3f} | {t['r2']:.3f} |")
    rows = [p for p in pairs if p.get("precision_check")]
    if rows:
        L += ["", f"{h} bfloat16 vs float32 (decoders; the study's caches and live runs use bfloat16)", "",
              "The same test texts encoded by the bfloat16 encoder and by a float32 twin loaded from the "
              "same file (the cached layers, mean-pooled; batch as in the study).", "",
              "| graph | encoder | texts | float32 s | bfloat16 s | speed-up | min cosine (worst layer) | "
              "mean cosine |", "|---|---|---|---|---|---|---|---|"]
        for p in rows:
            r = p["precision_check"]
            L.append(f"| {p['graph']} | {p['model']} | {r['num_texts']} | {r['float32_seconds']:.2f} | "
                     f"{r['bfloat16_seconds']:.2f} | **{r['speedup']:.2f}x** | {min(r['cosine_min']):.6f} | "
                     f"{np.mean(r['cosine_mean']):.6f} |")
    rows = [p for p in pairs if p.get("reencode")]
    if rows:
        L += ["", f"{h} Cache vs re-encode (a training step of the ENGINE model: states from the cache vs "
              "the batch's subgraph texts re-encoded by the same encoder; sample + states + step)", "",
              "| graph | encoder | targets / batch | unique texts | cached s / batch | re-encode s / batch | ratio |",
              "|---|---|---|---|---|---|---|"]
        for p in rows:
            r = p["reencode"]
            L.append(f"| {p['graph']} | {p['model']} | {r['batch_size']} | {np.mean(r['unique_texts']):.0f} | "
                     f"{r['cached_seconds']:.3f} | {r['reencode_seconds']:.2f} | **{r['ratio']:.0f}x** |")
        L += ["", "Measured on the number of batches in the JSON (`reencode.batches`); an epoch has "
              "`batches_per_epoch` of them, so the per-epoch ratio is the same."]
    rows = [p for p in pairs if p.get("pyg")]
    if rows:
        q0 = rows[0]["pyg"]
        L += ["", f"{h} Cached training epoch: engine_py vs plain PyTorch vs a PyTorch Geometric pipeline", "",
              f"Same cache, same batches (sampled once by engine_py, seed {q0['seed']}), same initial weights; "
              f"torch {q0['torch_version']}, torch_geometric {q0['pyg_version']}; the PyG side assembles each "
              "batch with `Batch.from_data_list` from precomputed ego graphs and indexes float32 states in RAM "
              "(as the reference code does); sampling + gathering for the first two sides is timed apart "
              "and not included. Median epoch over the epochs run.", "",
              "| graph | encoder | epochs | engine_py s | plain PyTorch s | PyG pipeline s | PyTorch / engine_py | "
              "PyG / engine_py | sample+gather s | PyG / (engine_py + sample+gather) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for p in rows:
            q = p["pyg"]
            L.append(f"| {p['graph']} | {p['model']} | {q['epochs']} | {q['engine_py_epoch_seconds']:.3f} | "
                     f"{q['torch_epoch_seconds']:.3f} | {q['pyg_epoch_seconds']:.3f} | "
                     f"**{q['torch_over_engine']:.2f}x** | **{q['pyg_over_engine']:.2f}x** | "
                     f"{q['sample_gather_epoch_seconds']:.3f} | "
                     f"{q['pyg_epoch_seconds'] / (q['engine_py_epoch_seconds'] + q['sample_gather_epoch_seconds']):.2f}x |")
        L += ["", "The PyG pipeline's time includes its batch assembly and state indexing; the last column "
              "counts engine_py's sampling and gathering too (end to end)."]
    L += ["", f"{h} Peak resident memory (VmHWM of the process, reset before each phase; includes the loaded "
          "encoder, the graph texts and the mapped cache pages touched)", "",
          "| graph | encoder | cache build | training (all models, seeds) | early exit | re-encode | PyG |",
          "|---|---|---|---|---|---|---|"]
    for p in pairs:
        r = p.get("rss_peak_bytes") or {}
        f = lambda k: f"{r[k] / 1e6:.0f} MB" if r.get(k) else "-"   # noqa: E731
        L.append(f"| {p['graph']} | {p['model']} | {f('cache_build')} | {f('training')} | {f('early_exit')} | "
                 f"{f('reencode')} | {f('pyg')} |")
    peaks = [(v, p["graph"], p["model"], k) for p in pairs
             for k, v in (p.get("rss_peak_bytes") or {}).items() if isinstance(v, float)]
    if peaks:
        v, gr, mo, ph = max(peaks)
        L += ["", f"Largest peak of any phase: {v / 1e6:.0f} MB ({gr} × {mo}, {ph}). Memory kept from "
              f"earlier pairs of the run counts in later pairs' peaks (the first pair's are the cleanest). "
              "(Resetting the mark also resets getrusage's maxrss on Linux, so there is no separate "
              "whole-process figure.)"]
    return L


def _parse_max_nodes(spec):
    """--max-nodes: "N" (every graph) or "name=N,name=N" (those graphs only)."""
    if spec is None or str(spec).strip() == "":
        return {}
    spec = str(spec).strip()
    if "=" not in spec:
        return {"*": int(spec)}
    out = {}
    for item in spec.split(","):
        k, _, v = item.partition("=")
        out[k.strip()] = int(v)
    return out


def _load_graphs(names, max_nodes, log):
    """{name: TextGraph} and {name: (full nodes, kept nodes)} for the sampled ones."""
    from engine_py.datasets import debian_packages, python_docs

    limits = _parse_max_nodes(max_nodes) if not isinstance(max_nodes, dict) else max_nodes
    out, samples = {}, {}
    for n in names:
        t0 = time.perf_counter()
        if n == "debian":
            g = debian_packages()
        elif n == "pydocs":
            g = python_docs()
        else:
            raise SystemExit(f"unknown graph {n!r} (debian, pydocs)")
        full = g.num_nodes
        g = subsample(g, limits.get(n, limits.get("*")))
        if g.num_nodes < full:
            samples[n] = (full, g.num_nodes)
        log(f"graph {n}: {g.num_nodes} nodes{f' (sample of {full})' if g.num_nodes < full else ''}, "
            f"{g.num_edges} edges, {g.num_classes} classes ({time.perf_counter() - t0:.1f} s)")
        out[n] = g
    return out, samples


def add_prompt_args(p):
    """--pooling and --template (bench engine-llm and engine-llm-exit)."""
    p.add_argument("--pooling", default="mean", choices=["mean", "last"],
                   help="decoders' pooled state: mean over the tokens (default) or the last token "
                        "(MiniLM: always mean)")
    p.add_argument("--template", default=None,
                   help='a prompt every node text is put into, one {text} field (e.g. "Python '
                        'documentation section: {text}"); recorded in the cache fingerprint')


def _encoder_factory(name, max_length, precision="float32", pooling="mean", template=None):
    """A loader of one of the study's encoders. precision and pooling apply to
    the decoders (MiniLM stays float32 and mean-pooled, as it was trained);
    template (one {text} field) to every encoder."""
    from engine_py import Encoder, models

    paths = {"minilm": models.minilm_path, "smollm2": models.smollm2_path, "qwen05": models.qwen05_path}
    if name not in paths:
        raise SystemExit(f"unknown model {name!r} (minilm, smollm2, qwen05)")
    decoder = name != "minilm"
    prec, pool = (precision, pooling) if decoder else ("float32", "mean")
    return lambda: Encoder.from_pretrained(paths[name](), max_length=max_length, precision=prec,
                                           pooling=pool, template=template)


def _render_from(json_path, out):
    """Re-render the markdown of an earlier run from its JSON (same numbers;
    a note says so)."""
    with open(json_path, encoding="utf-8") as f:
        doc = json.load(f)
    samples = {k: (v["full_nodes"], v["nodes"]) for k, v in (doc.get("sampled_graphs") or {}).items()}
    again = (f"Rendered again from `{json_path}` by `python -m engine_py bench engine-llm --render-from "
             f"{json_path}` (no new measurement).")
    if doc.get("merged"):   # bench engine-llm --merge: one section of tables per source run
        from .engine_llm_merge import sections

        prov, runs = sections(doc["results"], doc["machine"], doc["command"])
        md = render_markdown(doc["results"], small=doc.get("small_scale", False), samples=samples,
                             provenance=prov + [again], runs=runs)
    else:
        md = render_markdown(doc["results"], command=doc["command"], machine=machine_line(doc["machine"]),
                             small=doc.get("small_scale", False), samples=samples)
        md = md.replace("\n\nMachine:", "\n\n" + again + "\n\nMachine:", 1)
    print(md)
    if out:
        text = with_kept_sections(md, out)   # other benchmarks' sections (bench gmoe-llm)
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command's options (main; --merge parses its sources' commands with it)."""
    p = argparse.ArgumentParser(prog="python -m engine_py bench engine-llm", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", default="debian,pydocs", help="comma list of debian, pydocs")
    p.add_argument("--models", default="minilm,smollm2,qwen05", help="comma list of minilm, smollm2, qwen05")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-nodes", default=None,
                   help="subsample (BFS) to this many nodes: N for every graph, or name=N,... "
                        "for some (e.g. debian=5000)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per node text (default 128)")
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"],
                   help="decoder products (default bfloat16: ~2x faster on AVX512-BF16 CPUs, layer states "
                        "within cosine 0.99999 of float32); MiniLM is always float32")
    p.add_argument("--layers", default="engine", help="cached/selected states: engine, every:K, all (default engine)")
    add_prompt_args(p)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--exit-nodes", type=int, default=200, help="held-out test nodes for live early exit")
    p.add_argument("--timing-nodes", type=int, default=64, help="texts for time per node vs exit layer")
    p.add_argument("--reencode-batches", type=int, default=1,
                   help="training batches timed cached vs re-encoded (0: skip)")
    p.add_argument("--reencode-batch-size", type=int, default=32, help="targets per re-encode batch")
    p.add_argument("--pyg-epochs", type=int, default=3,
                   help="epochs of engine_py vs PyTorch vs PyG on the same batches (0: skip; needs torch, "
                        "torch_geometric)")
    p.add_argument("--precision-texts", type=int, default=32,
                   help="test texts encoded in bfloat16 and float32 to compare time and states (0: skip)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default="docs/RESULTS.md", help="markdown report (default docs/RESULTS.md)")
    p.add_argument("--json", default=None, help="raw numbers (default: --out with .json)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render-from", default=None, metavar="JSON",
                   help="measure nothing: render the markdown (--out) again from a JSON this command wrote")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON[=LABEL]",
                   help="measure nothing: one study (--out, --json) from runs with the same settings "
                        "that measured different graph x encoder pairs (engine_py/bench/engine_llm_merge.py)")
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    import engine_py

    if args.render_from:
        return _render_from(args.render_from, args.out)
    if args.merge:
        from .engine_llm_merge import main_merge

        return main_merge(args.merge, args.out, args.json)
    if args.threads:
        engine_py.set_num_threads(args.threads)
    run = start_run()
    log = lambda *a: print(*a, flush=True)   # noqa: E731
    graphs, samples = _load_graphs([s.strip() for s in args.graphs.split(",") if s.strip()],
                                   args.max_nodes, log)
    encoders = {m.strip(): _encoder_factory(m.strip(), args.max_length, args.precision, args.pooling,
                                            args.template)
                for m in args.models.split(",") if m.strip()}
    cmd = "python -m engine_py bench engine-llm " + " ".join(sys.argv[1:] if argv is None else argv)
    small = len(args.seeds) < 3 or (bool(samples) and len(samples) == len(graphs))
    jp = args.json or (os.path.splitext(args.out)[0] + ".json" if args.out else None)

    def write(res, machine):
        md = render_markdown(res, command=cmd.strip(), machine=machine_line(machine), small=small,
                             samples=samples)
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            tmp = args.out + ".tmp"
            text = with_kept_sections(md, args.out)   # other benchmarks' sections
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, args.out)
            write_json(jp, {"benchmark": "engine_llm", "command": cmd.strip(), "small_scale": small,
                            "sampled_graphs": {k: {"full_nodes": a, "nodes": b} for k, (a, b) in samples.items()},
                            "complete": len(res["pairs"]) == res["planned_pairs"],
                            "machine": machine, "results": res})
        return md

    def on_pair(res):   # partial files after every pair (machine facts up to now)
        from . import machine_info

        write(res, machine_info(threads=engine_py.get_num_threads()))
        log(f"  wrote {args.out} ({len(res['pairs'])} of {res['planned_pairs']} pairs)")

    res = run_study(graphs, encoders, seeds=args.seeds, cache_dir=args.cache_dir, layers=args.layers,
                    epochs=args.epochs, patience=args.patience, exit_nodes=args.exit_nodes,
                    batch_size=args.batch_size, timing_nodes=args.timing_nodes,
                    reencode_batches=args.reencode_batches, reencode_batch_size=args.reencode_batch_size,
                    pyg_epochs=args.pyg_epochs, precision_texts=args.precision_texts, show=False if args.no_progress else None, log=log,
                    on_pair=on_pair if args.out else None)
    machine = run.stop(threads=engine_py.get_num_threads())
    md = write(res, machine)
    print(md)
    if args.out:
        print(f"wrote {args.out} and {jp}")
    return 0
