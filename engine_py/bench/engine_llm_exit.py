"""`python -m engine_py bench engine-llm-exit`: a live early-exit sweep on one
graph x encoder of the engine-llm study.

The study (bench engine-llm) measures two exit policies live; this sweeps
more (``--policies``) on the same held-out nodes: ENGINE (the study's
settings) is trained on the study's layer cache (reused when the study built
it: same file name) once per seed of ``--seeds``; for each seed,
``--exit-nodes`` test nodes (drawn with that seed) are re-added as new nodes and
predicted with ``predict_new`` at full depth and with each policy — wall clock,
accuracy, relative drop, encoder layer-runs, exit histogram. Each policy runs
``--repeats`` times (best wall clock). With several seeds a summary table gives
each policy's speed-up, relative drop and accuracy as mean ± std over the seeds
(every seed's own table follows). Writes markdown to ``--out`` and JSON next to
it.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import machine_line, start_run, write_json
from .engine_llm import (ENGINE_KW, _build_cache, _cache_path, _encoder_factory, _fit, _held_out, _load_graphs,
                         add_prompt_args)

#: default sweep: (label, patience, threshold)
DEFAULT_POLICIES = "p1,p2,t0.8,t0.9,t0.95,t0.99"


def parse_policies(spec: str):
    """"p1,t0.9,p2+t0.99" -> [(label, patience, threshold), ...]."""
    out = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        pat = thr = None
        for part in item.split("+"):
            if part.startswith("p"):
                pat = int(part[1:])
            elif part.startswith("t"):
                thr = float(part[1:])
            else:
                raise ValueError(f"bad policy {item!r} (pK, tX or pK+tX)")
        label = " or ".join(([f"patience {pat}"] if pat else []) + ([f"threshold {thr:g}"] if thr else []))
        out.append((label, pat, thr))
    return out


def live_sweep(clf, enc, g, cache, policies, exit_nodes=200, seed=0, batch_size=32, repeats=1, log=print):
    """Full depth and every policy on the same held-out nodes (see module doc)."""
    k = min(int(exit_nodes), g.test_idx.size)
    ids, nbrs, g_new, _ = _held_out(g, g.edge_index, k, seed)
    texts = [g.texts[v] for v in ids]
    yk = g.labels[ids]
    clf.predict_new(enc, texts[:2], nbrs[:2], cache, graph=g_new, exit="none")   # warm-up
    rows = {}

    def timed(**kw):
        best, out = float("inf"), None
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            out = clf.predict_new(enc, texts, nbrs, cache, graph=g_new, batch_size=batch_size,
                                  return_exit_layer=True, **kw)
            best = min(best, time.perf_counter() - t0)
        return best, out

    t_full, (p_full, _) = timed(exit="none")
    a_full = float(np.mean(p_full == yk))
    rows["full depth"] = {"seconds": t_full, "acc": a_full, "sequence_layers": clf.last_encoder_layers_,
                          "num_nodes": k}
    log(f"  full depth: {t_full:.2f} s, acc {100 * a_full:.1f}%")
    for label, p, t in policies:
        secs, (pred, at) = timed(exit="dynamic", patience=p, threshold=t)
        a = float(np.mean(pred == yk))
        rows[label] = {"patience": p, "threshold": t, "seconds": secs, "acc": a, "speedup": t_full / secs,
                       "rel_drop": (a_full - a) / a_full if a_full > 0 else 0.0,
                       "sequence_layers": clf.last_encoder_layers_, "mean_exit_layer": float(at.mean()),
                       "histogram": [int((at == l).sum()) for l in clf.layers_], "num_nodes": k}
        log(f"  {label}: {secs:.2f} s ({t_full / secs:.2f}x), acc {100 * a:.1f}%, "
            f"mean exit layer {at.mean():.1f}")
    return rows


def _mean_std(xs):
    xs = np.asarray(xs, dtype=np.float64)
    return float(xs.mean()), float(xs.std(ddof=1)) if xs.size > 1 else 0.0


def summary_rows(runs):
    """Per policy over the seeds' runs: mean ± std (ddof 1) of speed-up,
    relative drop and accuracy, mean exit layer; full depth's accuracy too."""
    out = {}
    for label in runs[0]["live"]:
        rs = [r["live"][label] for r in runs]
        row = {"acc": _mean_std([r["acc"] for r in rs]), "seeds": len(rs)}
        if "speedup" in rs[0]:
            row["speedup"] = _mean_std([r["speedup"] for r in rs])
            row["rel_drop"] = _mean_std([r["rel_drop"] for r in rs])
            row["mean_exit_layer"] = _mean_std([r["mean_exit_layer"] for r in rs])
            row["worst_rel_drop"] = float(max(r["rel_drop"] for r in rs))
        out[label] = row
    return out


def render_seeds(runs, command="", machine=""):
    """Several seeds: the summary table, then each seed's table (render)."""
    res = runs[0]
    L = _header(res, command, machine)
    seeds = [r["seed"] for r in runs]
    L += [f"{res['graph']} × {res['model']} ({res['precision']}, layers {res['layers']}), ENGINE seeds {seeds}: "
          f"one model per seed, each on its own {res['live']['full depth']['num_nodes']} held-out test nodes "
          "(drawn with that seed, re-added as new nodes: own text through the encoder layer by layer; "
          "neighbours from the cache). Mean ± std over the seeds (std with ddof 1); the worst seed's "
          "relative drop beside it.", "",
          "| policy | speed-up | rel. drop % | worst seed's drop % | acc % | mean exit layer |",
          "|---|---|---|---|---|---|"]
    for label, r in summary_rows(runs).items():
        acc = f"{100 * r['acc'][0]:.1f} ± {100 * r['acc'][1]:.1f}"
        if "speedup" not in r:
            L.append(f"| {label} | 1 (baseline) | - | - | {acc} | {res['layers'][-1]} |")
            continue
        L.append(f"| {label} | {r['speedup'][0]:.2f}x ± {r['speedup'][1]:.2f} | "
                 f"{100 * r['rel_drop'][0]:.2f} ± {100 * r['rel_drop'][1]:.2f} | {100 * r['worst_rel_drop']:.2f} | "
                 f"{acc} | {r['mean_exit_layer'][0]:.1f} |")
    for r in runs:
        L += ["", f"## Seed {r['seed']}", ""] + _table(r)
    return "\n".join(L) + "\n"


def _header(res, command="", machine=""):
    """Title, the sampled-graph warning, the command and the machine."""
    L = ["# ENGINE on decoder LLMs: live early-exit sweep", ""]
    if res.get("sampled"):
        full, kept = res["sampled"]
        L += [f"> **Sampled graph**: a breadth-first sample of {kept:,} of {full:,} nodes.", ""]
    if command:
        L += [f"Generated by `{command}` (one run).", ""]
    if machine:
        L += [f"Machine: {machine}", ""]
    return L


def render(res, command="", machine=""):
    """One seed's sweep: header and table."""
    return "\n".join(_header(res, command, machine) + _table(res)) + "\n"


def _table(res):
    """One seed's sentence and table (lines)."""
    L = [f"{res['graph']} × {res['model']} ({res['precision']}, layers {res['layers']}), ENGINE seed "
         f"{res['seed']}: validation {100 * res['val_acc']:.1f}%, {res['epochs']} epochs. Held-out test nodes "
          "re-added as new nodes (own text through the encoder layer by layer; neighbours from the cache); "
          f"best of {res['repeats']} wall-clock run(s) per row.", "",
          "| policy | seconds | speed-up | acc % | rel. drop % | mean exit layer | encoder layer-runs | histogram |",
          "|---|---|---|---|---|---|---|---|"]
    for label, r in res["live"].items():
        hist = " ".join(f"{l}:{c}" for l, c in zip(res["layers"], r.get("histogram", []))) or "-"
        sp = f"{r['speedup']:.2f}x" if "speedup" in r else "1 (baseline)"
        drop = f"{100 * r['rel_drop']:.2f}" if "rel_drop" in r else "-"
        mel = f"{r['mean_exit_layer']:.1f}" if "mean_exit_layer" in r else str(res["layers"][-1])
        L.append(f"| {label} | {r['seconds']:.2f} | {sp} | {100 * r['acc']:.1f} | {drop} | {mel} | "
                 f"{r['sequence_layers']} | {hist} |")
    return L


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_py bench engine-llm-exit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graph", default="pydocs")
    p.add_argument("--model", default="qwen05")
    p.add_argument("--max-nodes", default=None, help="as bench engine-llm (N or name=N)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument("--layers", default="engine")
    add_prompt_args(p)
    p.add_argument("--policies", default=DEFAULT_POLICIES, help="pK, tX or pK+tX, comma-separated")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="one ENGINE model and one draw of held-out nodes per seed (default: --seed)")
    p.add_argument("--seed", type=int, default=0, help="a single seed (the --seeds default)")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=20)
    p.add_argument("--exit-nodes", type=int, default=200)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--out", default=None, help="markdown (JSON next to it)")
    args = p.parse_args(argv)
    import engine_py
    from engine_py import Graph
    from engine_py.cache import parse_layers

    if args.threads:
        engine_py.set_num_threads(args.threads)
    run = start_run()
    log = lambda *a: print(*a, flush=True)   # noqa: E731
    graphs, samples = _load_graphs([args.graph], args.max_nodes, log)
    g = graphs[args.graph]
    enc = _encoder_factory(args.model, args.max_length, args.precision, args.pooling, args.template)()
    sel = parse_layers(args.layers, int(enc.num_layers))
    cache_dir = args.cache_dir or os.path.join(os.environ.get("ENGINE_PY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "engine_py"), "engine-llm")
    os.makedirs(cache_dir, exist_ok=True)
    path = _cache_path(cache_dir, args.graph, g, args.model, enc, sel)
    cache, cinfo = _build_cache(path, enc, g.texts, sel, args.batch_size, False)
    log(f"cache {os.path.basename(path)}: {'reused' if cinfo['reused'] else 'built'}")
    graph = Graph(g.edge_index, g.num_nodes)
    policies = parse_policies(args.policies)
    runs = []
    for seed in (args.seeds if args.seeds else [args.seed]):
        clf, info = _fit(dict(layers=sel, early_exit=True, **ENGINE_KW), cache, graph, g, seed,
                         args.epochs, args.patience)
        log(f"ENGINE seed {seed}: val {100 * info['val_acc']:.1f}% after {info['epochs']} epochs")
        live = live_sweep(clf, enc, g, cache, policies, args.exit_nodes, seed, args.batch_size, args.repeats, log)
        runs.append({"graph": args.graph, "model": args.model, "precision": enc.precision, "layers": sel,
                     "seed": seed, "val_acc": info["val_acc"], "epochs": info["epochs"],
                     "repeats": args.repeats, "cache_reused": cinfo["reused"], "live": live,
                     "sampled": samples.get(args.graph)})
    machine = run.stop(threads=engine_py.get_num_threads())
    cmd = "python -m engine_py bench engine-llm-exit " + " ".join(sys.argv[1:] if argv is None else argv)
    if len(runs) == 1:
        md, res = render(runs[0], cmd.strip(), machine_line(machine)), runs[0]
    else:
        md = render_seeds(runs, cmd.strip(), machine_line(machine))
        res = {"runs": runs, "summary": summary_rows(runs)}
    print(md)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(md)
        write_json(os.path.splitext(args.out)[0] + ".json",
                   {"benchmark": "engine_llm_exit", "command": cmd.strip(), "machine": machine, "results": res})
    cache.close()
    return 0
