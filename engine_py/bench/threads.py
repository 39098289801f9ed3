"""Benchmark: training at the default thread count vs 1 thread, idle and busy.

    python -m engine_py bench threads [--batches 20] [--busy 1] [--subsample N]
        [--cache-dir DIR] [--quiet]

What a user sees on a shared machine. One ENGINE training step (sample +
gather from the layer cache + forward/backward/AdamW, EngineClassifier
defaults, batch 256) on the shipped demo graph (MiniLM-L6 layers 0..6,
mean-pooled, float16 cache built once into --cache-dir, default
$ENGINE_PY_CACHE or ~/.cache/engine_py, and reused), timed

- at engine_py's default thread count (the CPUs this process may use, see
  engine_py/_threads.py), at 1 thread and under ``set_num_threads("auto")``
  (the count follows the load: engine_py._threads.LoadGovernor), the three
  interleaved batch by batch on the same batches (so their ratios are not
  skewed by drift in the load). The "auto" side keeps its own governor
  across the interleaving, which is what ``adapt()`` does in
  EngineClassifier.fit between two batches; the counts it chose are printed;
- with the machine as it is ("no extra load"; the 1-minute load average is
  printed with each column, since other users' jobs count too) and with
  --busy processes spinning in a Python busy loop beside it (what another
  user's job does to us).

Prints the medians and the ratios; writes no file.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

_BUSY_LOOP = "while True:\n    pass\n"


def _start_busy(n: int) -> list:
    procs = [subprocess.Popen([sys.executable, "-c", _BUSY_LOOP], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    time.sleep(0.5)   # let them start spinning before the clock runs
    return procs


def _stop(procs: list) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait(timeout=10)


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _steps(clf, cache, graph, y, order, n_batches, thread_counts, log, label, chosen):
    """Per thread count (or "auto"): the list of step times over n_batches
    batches, the counts interleaved batch by batch; chosen["auto"] collects
    the counts the governor picked."""
    import engine_py
    from engine_py import _threads
    from engine_py.engine import _seed64

    default = max(t for t in thread_counts if t != "auto")   # the run's default count
    governor = _threads.LoadGovernor(_threads._affinity(), default)
    auto_n = default
    chosen.clear()

    bs = int(clf.batch_size)
    lr, wd = float(clf.lr), float(clf.weight_decay)
    times = {t: [] for t in thread_counts}
    per_epoch = -(-order.size // bs)
    for i in range(n_batches + 2):   # 2 warm-up batches
        s = (i % per_epoch) * bs
        t_ids = order[s:s + bs]
        for th in thread_counts:
            if th == "auto":
                auto_n = governor.observe(auto_n) or auto_n
                engine_py.set_num_threads(auto_n)
                if i >= 2:
                    chosen[auto_n] = chosen.get(auto_n, 0) + 1
            else:
                engine_py.set_num_threads(th)
            t0 = time.perf_counter()
            b = clf._sample(graph, t_ids, _seed64(0, 3, i))
            st = clf._gather(cache, b)
            loss = clf.model_.train_batch(b.graph_ptr, b.indptr, b.indices, st, y[t_ids],
                                          _seed64(0, 4, i), lr, wd)
            dt = time.perf_counter() - t0
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss {loss}")
            if i >= 2:
                times[th].append(dt)
    log(f"  {label}: " + ", ".join(f"{th} thread{'s' if th != 1 else ''} median "
                                   f"{1e3 * statistics.median(v):.0f} ms" for th, v in times.items()))
    return times


def main(argv=None) -> int:
    import engine_py
    from engine_py import EngineClassifier, _threads
    from engine_py.bench import add_output_args, finish, machine_line, start_run
    from engine_py.bench.engine import graph_and_cache

    ap = argparse.ArgumentParser(prog="python -m engine_py bench threads", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=20, help="timed batches per configuration (after 2 warm-up)")
    ap.add_argument("--busy", type=int, default=1, help="busy-loop processes beside the busy runs (0: idle only)")
    ap.add_argument("--subsample", type=int, default=None, help="random induced subgraph of N demo nodes")
    ap.add_argument("--cache-dir", default=None,
                    help="layer cache folder (default $ENGINE_PY_CACHE or ~/.cache/engine_py)")
    ap.add_argument("--quiet", action="store_true")
    add_output_args(ap, "threads")
    args = ap.parse_args(argv)
    if args.batches < 1 or args.busy < 0:
        ap.error("--batches must be >= 1 and --busy >= 0")
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))

    default = engine_py.get_num_threads()
    run = start_run()
    g, _, cache, graph, _ = graph_and_cache("demo", args.subsample, args.cache_dir, log)
    y = g.labels.astype(np.int64)
    clf = EngineClassifier(epochs=1, seed=0, show_progress_bar=False)
    clf.fit(cache, graph, g.labels, g.train_idx[:clf.batch_size])   # builds the model (one step)
    order = g.train_idx[np.random.default_rng(7).permutation(g.train_idx.size)]
    counts = ([default, 1] if default != 1 else [1]) + ["auto"]

    results, loads, chosen = {}, {}, {}
    try:
        loads["idle"] = _load()
        log(f"no extra load (load average {loads['idle']:.1f})")
        chosen["idle"] = {}
        results["idle"] = _steps(clf, cache, graph, y, order, args.batches, counts, log, "no extra load",
                                 chosen["idle"])
        if args.busy:
            procs = _start_busy(args.busy)
            try:
                loads["busy"] = _load()
                chosen["busy"] = {}
                results["busy"] = _steps(clf, cache, graph, y, order, args.batches, counts, log,
                                         f"{args.busy} busy process{'es' if args.busy > 1 else ''}",
                                         chosen["busy"])
            finally:
                _stop(procs)
    finally:
        engine_py.set_num_threads(default)

    med = {k: {t: statistics.median(v) for t, v in r.items()} for k, r in results.items()}
    cols = [("idle", f"no extra load (load avg {loads['idle']:.1f})")]
    if "busy" in med:
        cols.append(("busy", f"{args.busy} busy process{'es' if args.busy > 1 else ''} beside "
                             f"(load avg {loads['busy']:.1f})"))
    lines = [f"## Threads on a shared machine (`python -m engine_py bench threads"
             f"{' ' + ' '.join(argv) if argv else ''}`)", "",
             f"One ENGINE training step (sample + gather + forward/backward/AdamW; EngineClassifier "
             f"defaults, batch 256) on the demo graph ({g.num_nodes:,} nodes), median over "
             f"{args.batches} batches; the thread counts interleaved batch by batch on the same "
             f"batches. Default thread count here: {default} (the CPUs this process may use: "
             f"affinity and cgroup quota, or OMP_NUM_THREADS / ENGINE_PY_NUM_THREADS). "
             f"\"auto\": `set_num_threads(\"auto\")`, the count re-chosen from the CPU time the "
             f"other processes take (at most every {_threads.LoadGovernor.WINDOW} s; in brackets "
             f"the counts it ran the timed batches with).", "",
             "| threads | " + " | ".join(c[1] for c in cols) + " |",
             "|---|" + "---:|" * len(cols)]

    def picked(k):
        return ", ".join(f"{n} thread{'s' if n != 1 else ''} x {c}" for n, c in sorted(chosen[k].items()))

    for t in counts:
        name = f"default ({t})" if t == default else str(t)
        if t == "auto":
            lines.append("| auto | " + " | ".join(f"{1e3 * med[k][t]:.0f} ms ({picked(k)})"
                                                   for k, _ in cols) + " |")
        else:
            lines.append(f"| {name} | " + " | ".join(f"{1e3 * med[k][t]:.0f} ms" for k, _ in cols) + " |")
    if default != 1:
        lines.append("| default / 1 thread | " +
                     " | ".join(f"**{med[k][default] / med[k][1]:.2f}x**" for k, _ in cols) + " |")
    lines.append("| auto / best fixed count | " +
                 " | ".join(f"**{med[k]['auto'] / min(v for t, v in med[k].items() if t != 'auto'):.2f}x**"
                            for k, _ in cols) + " |")
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp default")
    machine = run.stop(threads=default)
    lines += ["", f"GOMP_SPINCOUNT={spin}. Machine: {machine_line(machine)}. A ratio above 1 means "
              "the default is slower than 1 thread: on a machine whose other cores are busy, use "
              "`engine_py.set_num_threads(\"auto\")` (or `ENGINE_PY_NUM_THREADS=auto`), or a "
              "fixed `set_num_threads(1)`."]
    print()
    res = {k: {str(t): v for t, v in r.items()} for k, r in med.items()}
    auto = {k: {str(n): c for n, c in v.items()} for k, v in chosen.items()}
    finish(args, "threads", "\n".join(lines), machine,
           {"median_step_s": res, "load": loads, "auto_counts": auto}, argv)
    return 0
