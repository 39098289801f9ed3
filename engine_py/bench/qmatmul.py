"""Benchmark: products with GGUF-quantized weights (eg_qmatmul) vs NumPy.

    python -m engine_py bench qmatmul [--model smollm2|qwen05|all] [--types Q4_1,Q8_0,...]
        [--n 10,100,...] [--repeat 3] [--seconds 0.2] [--threads T] [--per-product] [--quiet]
        [--out PATH]

Y = X @ W^T for the weight shapes of one transformer layer of SmolLM2-135M
(d 576, kv 192, FFN 1536) and Qwen2.5-0.5B (d 896, kv 128, FFN 4864), for
batches of N tokens, with random weights quantized to each ggml type
(gguf.quants.quantize where the `gguf` package can, random blocks with sane
scales otherwise; speed does not depend on the values). engine_py reads the
quantized bytes directly (`_core.qmatmul`); the comparison is NumPy's float32
matmul on weights dequantized beforehand (what a user with the float weights
in memory would run), in the same run, same thread count. GFLOP/s counts
2 * N * rows * cols per layer, summed over the layer's seven products (q, k,
v, o, gate, up, down), best of --repeat timings of at least --seconds each.
int8: precision='int8' (activations quantized to int8 per block of 32,
times the weights' integer codes; VPDPBUSD where the CPU has VNNI), with its
fraction of the int8 peak: engine_py's loop of independent VPDPBUSD on every
thread (`_core._int8_peak`, 2 ops per multiply-add), measured at the start
and the end of the run (the better kept). Batches of N <= 64 take the
float32 path in bf16 and int8 alike.
Writes a file only with --out.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

# ggml type ids (eg_quant.h)
TYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11,
         "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "BF16": 30}
# bytes per block, elements per block, offsets of the fp16 scale fields
_LAYOUT = {"Q4_0": (18, 32, (0,)), "Q4_1": (20, 32, (0, 2)), "Q5_0": (22, 32, (0,)),
           "Q5_1": (24, 32, (0, 2)), "Q8_0": (34, 32, (0,)), "Q2_K": (84, 256, (80, 82)),
           "Q3_K": (110, 256, (108,)), "Q4_K": (144, 256, (0, 2)), "Q5_K": (176, 256, (0, 2)),
           "Q6_K": (210, 256, (208,)), "F16": (2, 1, ()), "BF16": (2, 1, ())}

MODELS = {
    # name: (label, [(product, rows, cols)], default types)
    "smollm2": ("SmolLM2-135M", [("q", 576, 576), ("k", 192, 576), ("v", 192, 576), ("o", 576, 576),
                                 ("gate", 1536, 576), ("up", 1536, 576), ("down", 576, 1536)],
                ["Q4_1", "Q8_0"]),
    "qwen05": ("Qwen2.5-0.5B", [("q", 896, 896), ("k", 128, 896), ("v", 128, 896), ("o", 896, 896),
                                ("gate", 4864, 896), ("up", 4864, 896), ("down", 896, 4864)],
               ["Q4_K", "Q5_0", "Q6_K", "Q8_0"]),
}


def random_qweight(type_name: str, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """Random (rows, cols) weights of a ggml type as raw bytes, shape
    (rows, row_bytes) uint8: quantized by the gguf package where it can,
    else random blocks whose fp16 scales are random values of size ~0.01."""
    bsz, bs, scales = _LAYOUT[type_name]
    if type_name in ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        import gguf

        w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
        q = gguf.quants.quantize(w, gguf.GGMLQuantizationType[type_name])
        return np.ascontiguousarray(q).view(np.uint8).reshape(rows, -1)
    nb = cols // bs
    raw = rng.integers(0, 256, size=(rows, nb, bsz), dtype=np.uint8)
    for off in scales:
        h = (rng.uniform(0.002, 0.02, size=(rows, nb)) * rng.choice([-1, 1], size=(rows, nb)))
        raw[:, :, off:off + 2] = h.astype(np.float16).view(np.uint8).reshape(rows, nb, 2)
    return raw.reshape(rows, nb * bsz)


def dequantize(raw: np.ndarray, type_name: str, rows: int, cols: int) -> np.ndarray:
    """The gguf package's float32 dequantization of random_qweight's bytes."""
    import gguf

    if type_name == "F16":
        return raw.view(np.float16).reshape(rows, cols).astype(np.float32)
    return np.asarray(gguf.quants.dequantize(raw.reshape(rows, -1), gguf.GGMLQuantizationType[type_name]),
                      dtype=np.float32).reshape(rows, cols)


def _best(fn, repeat: int, seconds: float) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        k, t0 = 0, time.perf_counter()
        while True:
            fn()
            k += 1
            t = time.perf_counter() - t0
            if t >= seconds:
                break
        best = min(best, t / k)
    return best


def _int8_peak(seconds: float = 0.3, repeat: int = 4):
    """engine_py's int8 peak in GOP/s (a loop of independent VPDPBUSD on
    every thread; 2 ops per multiply-add), best of `repeat` timings of about
    `seconds`; None when the CPU has no VNNI."""
    from engine_py import _core

    if _core._int8_peak(1000) == 0.0:
        return None
    iters = 1_000_000
    while True:
        t0 = time.perf_counter()
        ops = _core._int8_peak(iters)
        dt = time.perf_counter() - t0
        if dt >= seconds or iters >= 1 << 34:
            break
        iters *= 2
    best = ops / dt / 1e9
    for _ in range(repeat):
        t0 = time.perf_counter()
        ops = _core._int8_peak(iters)
        best = max(best, ops / (time.perf_counter() - t0) / 1e9)
    return best


def _fill_int8_peak(line: str, peak) -> str:
    """Put the int8 peak and the % of it into a table line (known only at
    the end of the run)."""
    import re

    line = line.replace("PEAK_PLACEHOLDER", f"{peak:.1f} GOP/s" if peak else "none (no VNNI)")
    return re.sub(r"PCT8\[([0-9.e+-]+)\]",
                  lambda mm: f"{100.0 * float(mm.group(1)) / peak:.0f}%" if peak else "—", line)


def main(argv=None) -> int:
    import engine_py
    from engine_py import _core
    from engine_py.bench import add_output_args, finish, machine_line, start_run

    ap = argparse.ArgumentParser(prog="python -m engine_py bench qmatmul", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all", choices=["all", *MODELS])
    ap.add_argument("--types", default=None, help="comma-separated ggml types (default: the model's own)")
    ap.add_argument("--n", default="10,32,100,400,1600,6400,8192", help="batch sizes (tokens)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None,
                    help="thread count of engine_py and of NumPy's BLAS (threadpoolctl; default: their defaults)")
    ap.add_argument("--per-product", action="store_true", help="also print each product's GFLOP/s")
    ap.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                    help="also time precision='bfloat16' (bf16 inputs, float32 sums; default: on)")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="also time precision='int8' and the int8 peak (default: on)")
    ap.add_argument("--quiet", action="store_true")
    add_output_args(ap, "qmatmul")
    args = ap.parse_args(argv)
    ns = [int(v) for v in args.n.split(",") if v]
    if not ns or min(ns) < 1 or args.repeat < 1 or args.seconds <= 0:
        ap.error("--n needs positive sizes; --repeat >= 1, --seconds > 0")
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    models = list(MODELS) if args.model == "all" else [args.model]
    limiter = None
    if args.threads is not None:
        if args.threads < 1:
            ap.error("--threads must be >= 1")
        engine_py.set_num_threads(args.threads)
        try:   # NumPy's own BLAS at the same count, when threadpoolctl is there
            from threadpoolctl import threadpool_limits

            limiter = threadpool_limits(limits=args.threads, user_api="blas")
        except ImportError:
            log("threadpoolctl not installed: NumPy's BLAS keeps its default thread count")
    rng = np.random.default_rng(0)
    run = start_run()
    results = {}
    int8_peak = _int8_peak() if args.int8 else None
    if args.int8:
        log(f"int8 peak (VPDPBUSD loop): {int8_peak or 0:.1f} GOP/s")
    lines = [f"## Quantized matmul (`python -m engine_py bench qmatmul"
             f"{' ' + ' '.join(argv) if argv else ''}`)", "",
             "GFLOP/s of one layer's seven products Y = X @ W^T (q, k, v, o, gate, up, down; 2*N*rows*cols "
             "each) with W kept in its ggml type (engine_py `_core.qmatmul`) vs NumPy float32 matmul on the "
             "weights dequantized beforehand, same run, best of "
             f"{args.repeat} x >= {args.seconds} s."
             + (" bf16: precision='bfloat16' (inputs and weights rounded to bfloat16, float32 sums; "
                f"batches of N <= 64 take the float32 path; AVX512-BF16 kernel on this CPU: "
                f"{'yes' if _core.build_info().get('bf16_kernel') else 'no, emulated'})." if args.bf16 else ""),
             ""]
    if args.int8:
        lines.insert(-1, f"int8: precision='int8' (int8 activations per 32-column block times the weights' "
                         f"integer codes; kernel {_core.build_info().get('int8_kernel')}); % of the int8 peak "
                         f"(engine_py's VPDPBUSD loop, same threads, 2 ops per multiply-add, the better of the "
                         f"start and the end of the run): PEAK_PLACEHOLDER.")
    for m in models:
        label, prods, default_types = MODELS[m]
        types = args.types.split(",") if args.types else default_types
        head = "| type | N | engine_py GFLOP/s | NumPy f32 GFLOP/s | ratio |"
        if args.bf16:
            head += " engine_py bf16 GFLOP/s | bf16 / NumPy f32 |"
        if args.int8:
            head += " engine_py int8 GFLOP/s | int8 / NumPy f32 |" + (" int8 / bf16 |" if args.bf16 else "") \
                + " % of int8 peak |"
        lines += [f"### {label}", "", head, "|---|" + "---:|" * (head.count("|") - 2)]
        for tn in types:
            bs = _LAYOUT[tn][1]
            ws = []
            for name, rows, cols in prods:
                if cols % bs:
                    continue   # as llama.cpp: a K-quant needs rows of whole 256-blocks
                raw = random_qweight(tn, rows, cols, rng)
                ws.append((name, rows, cols, raw.reshape(-1), dequantize(raw, tn, rows, cols)))
            which = "" if len(ws) == len(prods) else f" ({', '.join(w[0] for w in ws)} only)"
            for n in ns:
                x = rng.standard_normal((n, max(c for _, _, c in prods))).astype(np.float32)
                xs = {c: np.ascontiguousarray(x[:, :c]) for _, _, c in prods}
                flops = [2.0 * n * rows * cols for _, rows, cols, _, _ in ws]
                # all of engine_py's products, then all of NumPy's: NumPy's own
                # OpenBLAS threads spin for a while after each call
                te = [_best(lambda: _core.qmatmul(xs[c], raw, TYPES[tn], r, c), args.repeat, args.seconds)
                      for _, r, c, raw, _ in ws]
                tb = [_best(lambda: _core.qmatmul(xs[c], raw, TYPES[tn], r, c, precision="bfloat16"),
                            args.repeat, args.seconds) for _, r, c, raw, _ in ws] if args.bf16 else None
                t8 = [_best(lambda: _core.qmatmul(xs[c], raw, TYPES[tn], r, c, precision="int8"),
                            args.repeat, args.seconds) for _, r, c, raw, _ in ws] if args.int8 else None
                tnp = [_best(lambda: xs[c] @ wd.T, args.repeat, args.seconds) for _, r, c, _, wd in ws]
                time.sleep(0.2)
                ge, gn = sum(flops) / sum(te) / 1e9, sum(flops) / sum(tnp) / 1e9
                results.setdefault(m, {}).setdefault(tn, {})[n] = {"engine_py": ge, "numpy": gn}
                row = f"| {tn}{which} | {n} | {ge:.1f} | {gn:.1f} | {ge / gn:.2f}x |"
                if tb is not None:
                    gb = sum(flops) / sum(tb) / 1e9
                    results[m][tn][n]["engine_py_bf16"] = gb
                    row += f" {gb:.1f} | {gb / gn:.2f}x |"
                if t8 is not None:
                    g8 = sum(flops) / sum(t8) / 1e9
                    results[m][tn][n]["engine_py_int8"] = g8
                    row += f" {g8:.1f} | {g8 / gn:.2f}x |"
                    if tb is not None:
                        row += f" {g8 / gb:.2f}x |"
                    row += f" PCT8[{g8!r}] |"
                lines.append(row)
                per = [f"{w[0]} {f / a / 1e9:.0f}/{f / b / 1e9:.0f}" for w, f, a, b in zip(ws, flops, te, tnp)]
                log(f"{label} {tn}{which} N={n}: engine_py {ge:.1f} GFLOP/s, numpy {gn:.1f} ({ge / gn:.2f}x)"
                    + (f"   [{', '.join(per)}]" if args.per_product else ""))
        lines.append("")
    if limiter is not None:
        limiter.restore_original_limits()
    if args.int8:
        # the machine may be shared: the better of the start and the end
        end = _int8_peak()
        if int8_peak is not None and end is not None:
            int8_peak = max(int8_peak, end)
        results["int8_peak_gops"] = int8_peak
        lines = [_fill_int8_peak(line, int8_peak) for line in lines]
    machine = run.stop(threads=engine_py.get_num_threads())
    lines.append(f"Machine: {machine_line(machine)}.")
    print()
    finish(args, "qmatmul", "\n".join(lines), machine, results, argv)
    return 0
