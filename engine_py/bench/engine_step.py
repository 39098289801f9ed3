"""Benchmark: the levers of the ENGINE training step, alone and together.

    python -m engine_py bench engine-step [--cache PATH] [--batches 12] [--reps 3]
        [--threads T] [--input-rank R] [--out PATH [--section NAME]]

One run, the same sampled batches of the Debian package graph (EngineClassifier
defaults: 7 SAGE ladders, k 128, exit heads, batch 256 targets, khop), the same
initial weights, every configuration interleaved batch by batch:

- before: float32 products, one state row per subgraph node (the step as it
  was before issue 18);
- shared rows: a node sampled into several subgraphs of the batch is read
  and projected once (`train_batch(..., rows=)`; exact algebra);
- bf16: `EngineClassifier(precision="bfloat16")`, bf16 products with float32
  sums for the projectors and GNNs, forward and backward;
- bf16 + shared rows: the fast path `EngineClassifier.fit` takes;
- with --input-rank R: `EngineClassifier(input_rank=R)` with shared rows, in
  float32 and in bf16 (the projector's first linear on each layer's top-R
  principal directions; the basis and the reduced states are made once, timed
  and reported apart), and the PyTorch reference on the same reduced states;
- and, with torch installed and from a source checkout, the plain-PyTorch
  reference model (tests/reference/engine_ref.py, float32, torch.optim.AdamW,
  the same initial weights and batches, one row per subgraph node) timed in
  the same loop: the "vs PyTorch" column.

For each: the median training-step time (forward + backward + AdamW), the
GEMM FLOPs of the step (counted from the batch's shapes) and the rate they
run at, next to this machine's measured peaks (engine_py's float32 product
-- OpenBLAS sgemm -- and its bf16 kernel, on a 2048 x 2048 x 2048 product),
and a phase breakdown of the fastest and the slowest configuration
(forward / loss / backward / AdamW, through the stepwise API; forward keeps
a copy of the states, which the one-call step does not make).

--cache PATH takes any layer cache of the same graph (e.g. a decoder LLM's,
built with LayerCache.build); the default is bench engine's MiniLM cache.
--random-states LxD replaces the cache by L layers of random float16 states of
width D for every node (e.g. 7x576: the "engine" selection of SmolLM2-135M,
7x896: Qwen2.5-0.5B): the step's time depends on the shapes only, so this
measures a decoder-sized step without building a decoder cache of the whole
graph (its accuracy means nothing and is not reported).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

# (name, precision, shared rows, reduced input)
CONFIGS = (("before", "float32", False, False), ("shared rows", "float32", True, False),
           ("bf16", "bfloat16", False, False), ("bf16 + shared rows", "bfloat16", True, False))
# with --input-rank R: the classifier's input_rank=R (engine_py/_state_reduction.py)
REDUCED_CONFIGS = (("shared rows + input rank", "float32", True, True),
                   ("bf16 + shared rows + input rank", "bfloat16", True, True))


class RandomStates:
    """L layers of random float16 states (num_nodes, dim), gathered as float32
    like a LayerCache: the shapes of a decoder cache, for timing only."""

    def __init__(self, num_nodes: int, layers: int, dim: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.num_nodes, self.dim, self.layers = int(num_nodes), int(dim), list(range(layers))
        self._h = [rng.standard_normal((num_nodes, dim), dtype=np.float32).astype(np.float16)
                   for _ in range(layers)]

    def gather(self, layer, node_ids, out=None):
        return self._h[int(layer)][np.asarray(node_ids)].astype(np.float32)


def step_flops(N: int, U: int, G: int, D: int, k: int, C: int, K: int, heads: int) -> float:
    """GEMM FLOPs of one default training step (SAGE, one GNN layer k -> k):
    per ladder the projector's two products on U state rows (forward, dW, and
    dX for the second), SAGE's lin_l and lin_r on N nodes (forward, dW, dX)
    and, for ladders with a head, the head on G subgraphs."""
    proj = 2 * U * D * k * 2 + 2 * U * k * k * 3
    sage = 2 * (2 * N * k * k) * 3
    head = 2 * G * 2 * k * C * 3
    return float(K * (proj + sage) + heads * head)


def _peaks(threads: int) -> dict:
    """Measured float32 and bf16 product rates (GFLOP/s) of engine_py's own
    products on a square 2048 problem (qmatmul with float32 weights: the
    float32 path is one sgemm, the bf16 path the packed kernel)."""
    from engine_py import _core

    n = 2048
    rng = np.random.default_rng(0)
    w = rng.standard_normal((n, n), dtype=np.float32)
    x = rng.standard_normal((n, n), dtype=np.float32)
    out = {}
    for prec in ("float32", "bfloat16"):
        _core.qmatmul(x, w.tobytes(), 0, n, n, precision=prec)
        best = float("inf")
        raw = w.tobytes()
        for _ in range(3):
            t0 = _clock()
            _core.qmatmul(x, raw, 0, n, n, precision=prec)
            best = min(best, _clock() - t0)
        out[prec] = 2.0 * n ** 3 / best / 1e9
    return out


def _phases(model, b, rows, states, y, seed, lr, wd) -> dict:
    """One step through the stepwise API, timed per phase (seconds)."""
    t = {}
    t0 = _clock()
    model.begin(b.graph_ptr, b.indptr, b.indices, True, seed)
    if rows is not None:
        model.set_rows(rows)
    for i, h in enumerate(states):
        model.forward_step(i, h)
    t1 = _clock()
    model.loss(y)
    t2 = _clock()
    model.zero_grad()
    model.backward()
    t3 = _clock()
    model.adamw_step(lr, wd)
    t4 = _clock()
    t.update(forward=t1 - t0, loss=t2 - t1, backward=t3 - t2, adamw=t4 - t3)
    return t


_clock = time.perf_counter


def _torch_reference(clf, init, in_dim=None):
    """A step function of the plain-PyTorch reference model
    (tests/reference/engine_ref.py, float32, torch.optim.AdamW) started from
    the same weights, timing one training step on per-node states; None
    without torch or outside a source checkout. ``in_dim``: the width of the
    states it takes (default the classifier's; with reduced states its first
    linear keeps its own initial weights)."""
    try:
        import torch

        from engine_py.bench.engine import _engine_ref, _to_torch
        EngineRef = _engine_ref()
    except (ImportError, RuntimeError):
        return None
    torch.set_num_threads(__import__("engine_py").get_num_threads())
    c = clf
    model = EngineRef(len(c.layers_), c.in_dim_ if in_dim is None else in_dim, c.reduced_dim_, c.hidden,
                      c.num_classes_, c.gnn, c.gnn_layers, c.activation, c.norm, float(c.dropout),
                      float(c.T), bool(c.early_exit), c.heads)
    own = model.state_dict()
    model.load_state_dict({k: (torch.from_numpy(np.array(v)) if tuple(v.shape) == tuple(own[k].shape)
                               else own[k]) for k, v in init.items()}, strict=True)
    opt = torch.optim.AdamW(model.parameters(), lr=float(c.lr), betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=float(c.weight_decay))
    model.train()

    def step(b, states, y):
        args = _to_torch(torch, b, states)
        yt = torch.from_numpy(y)
        t0 = _clock()
        opt.zero_grad(set_to_none=True)
        EngineRef.loss(model(*args), yt).backward()
        opt.step()
        return _clock() - t0
    return step


def run(cache, graph, g, n_batches: int, reps: int, log=print, input_rank=None) -> dict:
    from engine_py import EngineClassifier
    from engine_py.bench.engine import load_all_but_first_linear

    y = g.labels.astype(np.int64)
    configs = CONFIGS + (REDUCED_CONFIGS if input_rank else ())
    models = {}
    for name, prec, _, reduced in configs:
        clf = EngineClassifier(seed=0, show_progress_bar=False, precision=prec,
                               input_rank=input_rank if reduced else None)
        clf._setup(cache, graph, g.labels, g.train_idx, None)
        models[name] = clf
    init = models["before"].state_dict()
    for name, _, _, reduced in configs:
        if not reduced:
            models[name].load_state_dict(init)
    c0 = models["before"]
    reduced_states, t_reduce, basis = None, None, None
    for name, _, _, reduced in configs:
        if reduced:
            # what fit(input_rank=R) does once before its first epoch; timed
            # for the first model (the second gets the same basis and states)
            t0 = time.perf_counter()
            basis, reduced_states = models[name]._reduce_inputs(cache, False)
            if basis is None:
                raise SystemExit(f"--input-rank {input_rank}: must be below the states' width {cache.dim}")
            t_reduce = t_reduce if t_reduce is not None else time.perf_counter() - t0
            load_all_but_first_linear(models[name], init)
    lr, wd, bs = float(c0.lr), float(c0.weight_decay), int(c0.batch_size)
    perm = g.train_idx[np.random.default_rng(11).permutation(g.train_idx.size)]
    batches = []
    for bi in range(n_batches):
        t = perm[bi * bs:(bi + 1) * bs]
        b = c0._sample(graph, t, 5)
        keys, rows, hu = c0._gather_unique(cache, b)
        hr = ([reduced_states.gather(l, keys) for l in c0.layers_] if reduced_states is not None
              else None)
        batches.append((t, b, rows, hu, [h[rows] for h in hu], hr))
    times = {name: [] for name, _, _, _ in configs}
    refs = {}
    ref = _torch_reference(c0, init)
    if ref is not None:
        refs["PyTorch reference"] = ref
        if reduced_states is not None:
            refs["PyTorch reference, reduced input"] = _torch_reference(c0, init, basis.rank)
    for name in refs:
        times[name] = []
    for rep in range(reps):
        for bi, (t, b, rows, hu, hn, hr) in enumerate(batches):
            for name, _, shared, reduced in configs:
                m = models[name].model_
                t0 = _clock()
                if shared:
                    m.train_batch(b.graph_ptr, b.indptr, b.indices, hr if reduced else hu, y[t], bi, lr,
                                  wd, rows=rows)
                else:
                    m.train_batch(b.graph_ptr, b.indptr, b.indices, hn, y[t], bi, lr, wd)
                times[name].append(_clock() - t0)
            for name, step in refs.items():
                states = [h[rows] for h in hr] if name.endswith("reduced input") else hn
                times[name].append(step(b, states, y[t]))
        log(f"  rep {rep}: " + ", ".join(f"{n} {1e3 * statistics.median(v):.1f} ms" for n, v in times.items()))
    K = len(c0.layers_)
    heads = sum(bool(c0.model_.has_head(i)) for i in range(K))
    shapes = [(b.num_nodes, hu[0].shape[0], t.size) for t, b, rows, hu, hn, hr in batches]
    res = {"configs": {}, "batches": n_batches, "reps": reps, "dim": int(cache.dim), "ladders": K,
           "reduced_dim": int(c0.reduced_dim_), "classes": int(c0.num_classes_),
           "nodes_median": float(np.median([s[0] for s in shapes])),
           "unique_median": float(np.median([s[1] for s in shapes]))}
    if basis is not None:
        res["input_rank"] = basis.rank
        res["reduce_s"] = t_reduce
        res["explained"] = basis.explained
    for name, prec, shared, reduced in configs:
        D = basis.rank if reduced else int(cache.dim)
        fl = [step_flops(n, u if shared else n, gg, D, int(c0.reduced_dim_),
                         int(c0.num_classes_), K, heads) for n, u, gg in shapes]
        med = statistics.median(times[name])
        res["configs"][name] = {"precision": prec, "shared_rows": shared, "input_rank": reduced,
                                "step_s_median": med,
                                "gflop_per_step": statistics.median(fl) / 1e9,
                                "states_mb_per_step": statistics.median(
                                    [K * (u if shared else n) * D * 4 / 2 ** 20
                                     for n, u, gg in shapes])}
    if "PyTorch reference" in times:
        res["torch_step_s_median"] = statistics.median(times["PyTorch reference"])
    if "PyTorch reference, reduced input" in times:
        res["torch_reduced_step_s_median"] = statistics.median(times["PyTorch reference, reduced input"])
        res["torch_reduced_gflop"] = statistics.median(
            [step_flops(n, n, gg, basis.rank, int(c0.reduced_dim_), int(c0.num_classes_), K, heads)
             for n, u, gg in shapes]) / 1e9
    # phase breakdown of the slowest and the fastest configuration
    res["phases"] = {}
    for name in ("before", "bf16 + shared rows"):
        shared = name.endswith("rows")
        ph = []
        for bi, (t, b, rows, hu, hn, hr) in enumerate(batches):
            ph.append(_phases(models[name].model_, b, rows if shared else None, hu if shared else hn,
                              y[t], bi, lr, wd))
        res["phases"][name] = {k: statistics.median([p[k] for p in ph]) for k in ph[0]}
    return res


def render(res: dict, peaks: dict, what: str, argv) -> str:
    base = res["configs"]["before"]["step_s_median"]
    md = [f"## ENGINE training step: the levers (`python -m engine_py bench engine-step {' '.join(argv or [])}`)".replace(" `)", "`)"),
          "", f"{what}. EngineClassifier defaults ({res['ladders']} SAGE ladders, k {res['reduced_dim']}, "
          f"exit heads, batch 256 targets, khop); {res['batches']} batches x {res['reps']} repetitions, every "
          f"configuration on the same batches from the same initial weights, interleaved batch by batch. "
          f"A batch has a median of {res['nodes_median']:.0f} subgraph nodes and {res['unique_median']:.0f} "
          "distinct nodes. GEMM FLOPs are counted from each batch's shapes.",
          "", "| configuration | step, median | speed-up | vs PyTorch | GEMM GFLOP / step | GFLOP/s | states read / step |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    tref = res.get("torch_step_s_median")
    for name, c in res["configs"].items():
        rate = c["gflop_per_step"] / c["step_s_median"]
        vs = f"{tref / c['step_s_median']:.2f}x" if tref else "—"
        md.append(f"| {name} | {1e3 * c['step_s_median']:.1f} ms | {base / c['step_s_median']:.2f}x | {vs} | "
                  f"{c['gflop_per_step']:.2f} | {rate:.0f} | {c['states_mb_per_step']:.1f} MB |")
    if tref:
        md.append(f"| PyTorch {__import__('torch').__version__} reference (float32, per-node rows) | "
                  f"{1e3 * tref:.1f} ms | | 1.00x | {res['configs']['before']['gflop_per_step']:.2f} | "
                  f"{res['configs']['before']['gflop_per_step'] / tref:.0f} | |")
    trr = res.get("torch_reduced_step_s_median")
    if trr:
        md.append(f"| PyTorch reference on the same reduced states (input rank {res['input_rank']}) | "
                  f"{1e3 * trr:.1f} ms | | {tref / trr:.2f}x | {res['torch_reduced_gflop']:.2f} | "
                  f"{res['torch_reduced_gflop'] / trr:.0f} | |")
    if "input_rank" in res:
        ex = res["explained"]
        md += ["", f"Input rank {res['input_rank']} (`EngineClassifier(input_rank={res['input_rank']})`): "
               f"the rows with it train the projector's first linear on each layer's top-{res['input_rank']} "
               f"principal directions of the standardised states ({100 * min(ex):.1f}-{100 * max(ex):.1f}% "
               f"of their variance), computed once per fit: {res['reduce_s']:.1f} s in this run (basis and "
               "every node's reduced states, wall clock), not counted in the step times. That model is "
               "restricted, so its accuracy is measured separately (`bench engine --input-rank`). The "
               "last row gives the PyTorch reference the same reduced states: its ratio to the first "
               "PyTorch row is what the reduction alone buys a PyTorch user."]
    md += ["", f"Peaks measured in this run (engine_py's products, 2048 x 2048 x 2048): float32 (OpenBLAS "
           f"sgemm) {peaks['float32']:.0f} GFLOP/s, bf16 kernel {peaks['bfloat16']:.0f} GFLOP/s"
           + ("" if peaks.get("bf16_kernel") else " (emulated: this CPU has no AVX512-BF16)") + ".",
           "", "Phases (median per step, stepwise API):", "",
           "| configuration | forward | loss | backward | AdamW |", "|---|---:|---:|---:|---:|"]
    for name, p in res["phases"].items():
        md.append(f"| {name} | {1e3 * p['forward']:.1f} ms | {1e3 * p['loss']:.2f} ms | "
                  f"{1e3 * p['backward']:.1f} ms | {1e3 * p['adamw']:.2f} ms |")
    return "\n".join(md)


def main(argv=None) -> int:
    import engine_py
    from engine_py import Graph, LayerCache
    from engine_py.bench import add_output_args, finish, machine_line, start_run
    from engine_py.bench.engine import graph_and_cache, load_graph

    ap = argparse.ArgumentParser(prog="python -m engine_py bench engine-step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=None, help="a layer cache of the Debian graph (default: "
                    "bench engine's MiniLM cache, built on first use)")
    ap.add_argument("--dataset", choices=("debian", "demo"), default="debian",
                    help="without --cache: the graph whose MiniLM cache is used (demo: the shipped "
                         "4,000-node graph)")
    ap.add_argument("--subsample", type=int, default=None, help="without --cache: a random induced "
                    "subgraph of N nodes (own cache)")
    ap.add_argument("--cache-dir", default=None, help="where bench engine's caches live")
    ap.add_argument("--random-states", default=None, metavar="LxD",
                    help="time on L layers of random states of width D (e.g. 7x576) instead of a cache")
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: elapsed time (default); cpu: the calling thread's CPU time, which a "
                         "loaded machine disturbs far less (needs --threads 1: with more threads the "
                         "workers' time would be missed)")
    ap.add_argument("--input-rank", type=int, default=None, metavar="R",
                    help="also time EngineClassifier(input_rank=R) (float32 and bf16, shared rows) and the "
                         "PyTorch reference on the same reduced states")
    ap.add_argument("--quiet", action="store_true")
    add_output_args(ap, "engine_step")
    args = ap.parse_args(argv)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    if args.threads:
        engine_py.set_num_threads(args.threads)
    threads = engine_py.get_num_threads()
    global _clock
    if args.clock == "cpu":
        if threads != 1:
            ap.error("--clock cpu needs --threads 1")
        _clock = time.thread_time
    else:
        _clock = time.perf_counter
    run_ = start_run()
    if args.random_states:
        L, D = (int(v) for v in args.random_states.lower().split("x"))
        g = load_graph(args.dataset, args.subsample)
        cache = RandomStates(g.num_nodes, L, D)
        graph = Graph(g.edge_index, g.num_nodes)
        what = (f"{g.num_nodes:,}-node {args.dataset} graph{' (subsample)' if args.subsample else ''}; "
                f"random float16 states, {L} layers of width {D} (a decoder cache's shape; timing only)")
    elif args.cache:
        g = load_graph("debian", None)
        cache = LayerCache.open(args.cache)
        if cache.num_nodes != g.num_nodes:
            raise SystemExit(f"{args.cache} has {cache.num_nodes} nodes; this machine's Debian graph has "
                             f"{g.num_nodes}")
        graph = Graph(g.edge_index, g.num_nodes)
        what = (f"Full Debian package graph ({g.num_nodes:,} nodes); layer cache "
                f"{os.path.basename(args.cache)} (states {cache.layers}, dim {cache.dim})")
    else:
        g, enc, cache, graph, _ = graph_and_cache(args.dataset, args.subsample, args.cache_dir, log)
        full = args.dataset == "debian" and not args.subsample
        what = (f"{'Full Debian package graph' if full else args.dataset + ' graph'} ({g.num_nodes:,} nodes); "
                f"all-MiniLM-L6-v2 cache, states 0-6, dim {cache.dim}")
    res = run(cache, graph, g, args.batches, args.reps, log, input_rank=args.input_rank)
    peaks = _peaks(threads)
    peaks["bf16_kernel"] = bool(engine_py.info().get("bf16_kernel"))
    res["peaks_gflops"] = peaks
    machine = run_.stop(threads=threads)
    res["clock"] = args.clock
    text = render(res, peaks, what, argv) + (
        "\n\nTimes are the calling thread's CPU time (--clock cpu, 1 thread): time slices lost to "
        "other processes are not counted, cache and memory-bandwidth sharing still is."
        if args.clock == "cpu" else "") + f"\n\nMachine: {machine_line(machine)}."
    finish(args, "engine_step", text, machine, res, argv)
    return 0
