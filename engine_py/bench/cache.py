"""Benchmark: gathering rows from the layer cache (the hot path of training).

    python -m engine_py bench cache [--nodes 50000] [--dim 768] [--batch 4096]

Builds float16, bfloat16 and float32 caches of random states in a temporary
directory, then times `LayerCache.gather(layer, ids)` (float32 out, C,
OpenMP) against what a user would otherwise write in NumPy, in the same run:
`np.take` on a float32 array in RAM, `np.take` on a float16 array in RAM
followed by `.astype(np.float32)`, and fancy indexing on the cache's own
memory-mapped float16 view followed by `.astype`. Also reports the build
throughput (writes + fsync + checksums) and a full verify().
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np


class _RandomEncoder:
    """States drawn from a seeded generator, one batch at a time."""

    num_layers = 1

    def __init__(self, dim: int, seed: int = 0):
        self.hidden_size = dim
        self.seed = seed

    def fingerprint(self) -> str:
        return f"bench-random-{self.hidden_size}-{self.seed}"

    def encode_layers(self, texts, layers=None, batch_size=32, show_progress_bar=False):
        first = int(texts[0])
        rng = np.random.default_rng([self.seed, first])
        return rng.standard_normal((len(layers), len(texts), self.hidden_size), dtype=np.float32)


def _time(fn, repeats: int) -> float:
    fn()  # warm-up (first touch of pages and, for the cache, chunk checks)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main(argv=None) -> int:
    import engine_py
    from engine_py._progress import progress
    from engine_py.bench import add_output_args, finish, machine_line, progress_show, start_run
    from engine_py.cache import LayerCache

    ap = argparse.ArgumentParser(prog="python -m engine_py bench cache", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=50000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--batch", type=int, default=4096, help="node ids per gather")
    ap.add_argument("--calls", type=int, default=20, help="gathers per timing")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to put the cache files (default: a temp dir)")
    add_output_args(ap, "cache")
    args = ap.parse_args(argv)
    run = start_run()

    n, d = args.nodes, args.dim
    texts = [str(i) for i in range(n)]
    enc = _RandomEncoder(d)
    rng = np.random.default_rng(1)
    id_batches = [rng.integers(0, n, size=args.batch) for _ in range(args.calls)]
    rows = args.batch * args.calls
    out_bytes = rows * d * 4

    results = []  # (label, seconds)
    build_lines = []
    builds = {}
    threads0 = engine_py.get_num_threads()
    n_steps = 4 + 3 * len({1, threads0}) + 3   # builds, gathers, NumPy references
    bar = progress(n_steps, "bench cache", "step", progress_show(args), logger="engine_py.bench")
    with bar, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        caches = {}
        for dt in ("float16", "bfloat16", "float32"):
            path = os.path.join(tmp, f"bench_{dt}.egc")
            t0 = time.perf_counter()
            caches[dt] = LayerCache.build(path, enc, texts, layers=[0], dtype=dt, batch_size=2048,
                                          show_progress_bar=False)
            tb = time.perf_counter() - t0
            t0 = time.perf_counter()
            caches[dt].verify()
            tv = time.perf_counter() - t0
            size = os.path.getsize(path)
            builds[dt] = {"file_bytes": size, "build_s": tb, "verify_s": tv, "nodes": n}
            bar.update(1)
            build_lines.append(f"| {dt} | {size / 1e6:.0f} MB | {n / tb:,.0f} nodes/s ({size / tb / 1e9:.2f} GB/s) "
                               f"| {size / tv / 1e9:.2f} GB/s |")

        # the cache's own cost per node in a MiniLM-shaped build (all 7 states x 384, float16,
        # default batch of 64): encoder time is zero here, so this is pure overhead
        enc7 = _RandomEncoder(384)
        enc7.num_layers = 6
        n7 = min(n, 20000)
        t0 = time.perf_counter()
        LayerCache.build(os.path.join(tmp, "minilm_shaped.egc"), enc7, texts[:n7], dtype="float16",
                         batch_size=64, show_progress_bar=False).close()
        tb = time.perf_counter() - t0
        gen = time.perf_counter()
        for s0 in range(0, n7, 64):
            enc7.encode_layers(texts[s0:s0 + 64], layers=list(range(7)))
        gen = time.perf_counter() - gen
        builds["float16, 7 layers x 384, batch 64"] = {"nodes": n7, "build_s": tb, "generation_s": gen}
        bar.update(1)
        build_lines.append(f"| float16, 7 layers x 384, batch 64 ({n7} nodes) | "
                           f"{os.path.getsize(os.path.join(tmp, 'minilm_shaped.egc')) / 1e6:.0f} MB | "
                           f"{n7 / max(tb - gen, 1e-9):,.0f} nodes/s of cache overhead "
                           f"(random-state generation subtracted) | - |")

        f32 = caches["float32"].layer(0)
        ram32 = np.array(f32)  # what the reference keeps in memory
        ram16 = ram32.astype(np.float16)
        mm16 = caches["float16"].layer(0)

        for th in sorted({1, threads0}):
            engine_py.set_num_threads(th)
            for dt in ("float16", "bfloat16", "float32"):
                c = caches[dt]
                out = np.empty((args.batch, d), np.float32)
                results.append((f"engine_py gather, {dt} cache (mmap), {th} thread{'s' if th > 1 else ''}",
                                _time(lambda c=c, out=out: [c.gather(0, ids, out=out) for ids in id_batches],
                                      args.repeats)))
                bar.update(1)
        engine_py.set_num_threads(threads0)
        results.append(("np.take, float32 array in RAM",
                        _time(lambda: [np.take(ram32, ids, axis=0) for ids in id_batches], args.repeats)))
        bar.update(1)
        results.append(("np.take + astype, float16 array in RAM",
                        _time(lambda: [np.take(ram16, ids, axis=0).astype(np.float32) for ids in id_batches],
                              args.repeats)))
        bar.update(1)
        results.append(("fancy index + astype, float16 mmap view",
                        _time(lambda: [mm16[ids].astype(np.float32) for ids in id_batches], args.repeats)))
        bar.update(1)
        # check the answers agree before reporting speed
        ids = id_batches[0]
        assert np.array_equal(caches["float32"].gather(0, ids), ram32[ids])
        assert np.array_equal(caches["float16"].gather(0, ids), ram16[ids].astype(np.float32))
        for c in caches.values():
            c.close()
        del f32, mm16

    base = dict(results)["np.take + astype, float16 array in RAM"]
    machine = run.stop(threads=threads0)
    lines = [
        "## Layer cache: gather (training hot path)",
        "",
        f"Machine: {machine_line(machine)}; crc32c: {engine_py._core.crc32c_impl()} "
        "(OpenMP threads suffer when the cores are shared with other jobs)",
        "",
        f"`python -m engine_py bench cache --nodes {n} --dim {d} --batch {args.batch}`: "
        f"{args.calls} gathers of {args.batch} random node ids (float32 out), median of {args.repeats}.",
        "",
        "| method | rows/s | GB/s (float32 out) | speed vs np.take+astype fp16 |",
        "|---|---:|---:|---:|",
    ]
    for label, t in results:
        lines.append(f"| {label} | {rows / t:,.0f} | {out_bytes / t / 1e9:.2f} | {base / t:.2f}x |")
    lines += [
        "",
        "Build (random states; one layer with 2048-row batches, or MiniLM-shaped) and full verify():",
        "",
        "| dtype | file | build | verify |",
        "|---|---:|---:|---:|",
    ] + build_lines
    md = "\n".join(lines)
    res = {"nodes": n, "dim": d, "batch": args.batch, "calls": args.calls, "repeats": args.repeats,
           "crc32c": engine_py._core.crc32c_impl(),
           "gather": {label: {"seconds": t, "rows_per_s": rows / t, "gb_per_s": out_bytes / t / 1e9,
                              "speed_vs_np_take_astype_fp16": base / t} for label, t in results},
           "build": builds}
    finish(args, "cache", md, machine, res, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
