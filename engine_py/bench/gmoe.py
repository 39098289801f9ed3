"""Benchmark: GMoE MoE-LoRA FFN forward + backward, engine_py vs PyTorch.

    python -m engine_py bench gmoe [--tokens 2048] [--repeats 5] [--kinds swiglu,gelu]
                                   [--routers graph,linear] [--threads 1,2] [--out PATH]

8 experts, top-2, r 2, alpha 4, hidden/intermediate 384/1536 and 576/1536,
2,048 tokens on the CPU; engine_py in float32 and with precision="bfloat16"
(the frozen FFN products), PyTorch in float32. The PyTorch side is an efficient autograd
implementation a user would write (it is not the dense test reference):
frozen input products once per token, each expert computed only on its
routed tokens (index_select / index_add_, as HF Mixtral), the graph router
as a batched dense GCN over every token's (N+1)-node graph, the same
auxiliary losses, torch.set_num_threads equal to engine_py's. Both sides
compute the same function (checked on the first batch) and the same
gradients (LoRA, router, dx). Tokens/s counts tokens through forward +
backward; the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

E, K, R, ALPHA, G = 8, 2, 2, 4.0, 128
SIZES = ((384, 1536), (576, 1536))


def _torch_layer(torch, layer, kind):
    """An efficient PyTorch autograd module with the layer's weights."""
    F = torch.nn.functional
    sd = layer.state_dict()
    f = layer._frozen
    t = lambda a: None if a is None else torch.tensor(np.asarray(a))  # noqa: E731
    W_in, b_in, W_up, W_out, b_out = (t(f[k]) for k in ("W_in", "b_in", "W_up", "W_out", "b_out"))
    projs = ["w1", "w3", "w2"] if kind == "swiglu" else ["wi", "wo"]
    P = {}
    for p in projs:
        P[p + ".A"] = torch.nn.Parameter(torch.stack(
            [torch.tensor(sd[f"experts.{e}.{p}.lora_A.weight"]) for e in range(E)]))
        P[p + ".B"] = torch.nn.Parameter(torch.stack(
            [torch.tensor(sd[f"experts.{e}.{p}.lora_B.weight"]) for e in range(E)]))
    graph = layer.router == "graph"
    if graph:
        for k in ("router.W_s.weight", "router.W_t.weight", "router.proj.weight",
                  "poisson_lambda", "normal_sigma"):
            P[k] = torch.nn.Parameter(torch.tensor(sd[k]))
        for li in range(layer.gcn_layers):
            P[f"gcn{li}"] = torch.nn.Parameter(torch.tensor(sd[f"router.gcn.{li}.weight"]))
        X = torch.tensor(sd["router.expert_features"])
        Ahat = torch.tensor(sd["router.normalized_adjacency"])
        running = torch.zeros(E, dtype=torch.float64)
    else:
        P["router.weight"] = torch.nn.Parameter(torch.tensor(sd["router.weight"]))
    s = layer.scale

    def lora(e, p, v):
        return s * (v @ P[p + ".A"][e].T) @ P[p + ".B"][e].T

    def forward(x):
        T = x.shape[0]
        if graph:
            u = torch.relu(X @ P["router.W_s.weight"].T)
            tok = torch.relu(x @ P["router.W_t.weight"].T)
            h = torch.cat([u.expand(T, E, -1), tok[:, None, :]], dim=1)
            for li in range(layer.gcn_layers):
                h = torch.relu(Ahat @ (h @ P[f"gcn{li}"].T))
            logits = h[:, :E, :] @ P["router.proj.weight"].reshape(-1)
        else:
            logits = x @ P["router.weight"].T
        probs = torch.softmax(logits, dim=-1)
        # ties (experts with the same closed neighbourhood in the graph) go to
        # the lower index, as in engine_py
        sv, si = torch.sort(probs, dim=-1, descending=True, stable=True)
        topv, topi = sv[:, :K], si[:, :K]
        w = topv / topv.sum(dim=-1, keepdim=True)
        g0 = x @ W_in.T if b_in is None else x @ W_in.T + b_in
        u0 = x @ W_up.T if W_up is not None else None
        y = torch.zeros_like(x)
        flat_e = topi.reshape(-1)
        flat_t = torch.arange(T).repeat_interleave(K)
        flat_w = w.reshape(-1)
        order = torch.argsort(flat_e, stable=True)
        counts = torch.bincount(flat_e, minlength=E).tolist()
        start = 0
        for e in range(E):
            sel = order[start:start + counts[e]]
            start += counts[e]
            if sel.numel() == 0:
                continue
            tk = flat_t[sel]
            xe = x.index_select(0, tk)
            if kind == "swiglu":
                g = g0.index_select(0, tk) + lora(e, "w1", xe)
                uu = u0.index_select(0, tk) + lora(e, "w3", xe)
                a = F.silu(g) * uu
                out = a @ W_out.T + lora(e, "w2", a)
            else:
                g = g0.index_select(0, tk) + lora(e, "wi", xe)
                a = F.gelu(g)
                out = a @ W_out.T + b_out + lora(e, "wo", a)
            y = y.index_add(0, tk, out * flat_w[sel, None])
        if graph:
            lam = torch.clamp(P["poisson_lambda"], 1.0, 2.0)
            i = torch.arange(1, E + 1, dtype=x.dtype)
            q = torch.softmax(i * torch.log(lam) - torch.lgamma(i + 1), dim=0)
            v, _ = torch.sort(probs, dim=-1, descending=True)
            lp = (q * (torch.log(q) - torch.log(v + 1e-8)).abs()).sum(-1).mean()
            c = running + K * torch.zeros(E, dtype=torch.float64).index_add(
                0, flat_e, flat_w.double())
            va, _ = torch.sort(c, descending=True)
            va = va / c.sum()
            sig = torch.clamp(P["normal_sigma"], min=1e-3).double()
            dist = torch.distributions.Normal(torch.tensor(E / 2.0, dtype=torch.float64), sig)
            qn, _ = torch.sort(torch.softmax(dist.log_prob(torch.arange(E, dtype=torch.float64)),
                                             0), descending=True)
            ln = (qn * (torch.log(qn) - torch.log(va + 1e-8)).abs()).sum()
            aux = 0.005 * lp + 8.0 * ln.float()
        else:
            f = torch.bincount(flat_e, minlength=E).to(x.dtype) / (T * K)
            aux = 0.01 * E * (f * probs.mean(0)).sum()
        return y, aux

    return forward, list(P.values())


#: top-k margins below this (probability units) count as ties: a few float32 ulps
NEAR_TIE = 1e-6


def _near_ties(probs, k):
    """Tokens whose k-th and (k+1)-th largest router probabilities are within
    NEAR_TIE: their expert choice is decided by rounding."""
    if probs.shape[1] <= k:
        return np.zeros(probs.shape[0], bool)
    p = -np.sort(-probs, axis=1)
    return (p[:, k - 1] - p[:, k]) < NEAR_TIE


def _rel_diff(y, y_ref, skip):
    """max |y - y_ref| / max |y_ref| over the tokens not in skip."""
    keep = ~skip
    if not keep.any():
        return float("nan")
    return float(np.abs(y[keep] - y_ref[keep]).max() / max(np.abs(y_ref).max(), 1e-12))


def _time_interleaved(fns, repeats, clock=time.perf_counter):
    """Median seconds of each function, runs interleaved (a, b, c, a, b, c,
    ...) so that load changes on a shared machine hit every side alike."""
    for f in fns:
        f()   # warm-up
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for f, t in zip(fns, ts):
            t0 = clock()
            f()
            t.append(clock() - t0)
    return [statistics.median(t) for t in ts]


def _bench_size(torch, MoELoRAFFN, args, kind, nthreads, H, I, routers):
    rng = np.random.default_rng(0)
    if kind == "swiglu":
        bw = {"W1": rng.normal(0, 0.02, (I, H)), "W3": rng.normal(0, 0.02, (I, H)),
              "W2": rng.normal(0, 0.02, (H, I))}
    else:
        bw = {"Wi": rng.normal(0, 0.02, (I, H)), "bi": rng.normal(0, 0.02, I),
              "Wo": rng.normal(0, 0.02, (H, I)), "bo": rng.normal(0, 0.02, H)}
    x = rng.normal(0, 1, (args.tokens, H)).astype(np.float32)
    dy = rng.normal(0, 1, (args.tokens, H)).astype(np.float32)
    rows = []
    for router in routers:
        layer = MoELoRAFFN(bw, kind=kind, num_experts=E, top_k=K, r=R, lora_alpha=ALPHA,
                           router=router, gcn_dim=G, seed=0)
        sd = layer.state_dict()
        for k in sd:  # non-zero B so every LoRA path does real work
            if k.endswith("lora_B.weight"):
                sd[k] = rng.normal(0, 0.02, sd[k].shape).astype(np.float32)
        layer.load_state_dict(sd)
        fast = MoELoRAFFN(bw, kind=kind, num_experts=E, top_k=K, r=R, lora_alpha=ALPHA,
                          router=router, gcn_dim=G, seed=0, precision="bfloat16")
        fast.load_state_dict(sd)
        fwd, params = _torch_layer(torch, layer, kind)
        xt = torch.tensor(x, requires_grad=True)
        dyt = torch.tensor(dy)

        # same function: compare outputs once, over the tokens whose top-k choice
        # is not a near-tie (a collapsed graph router gives experts equal
        # probabilities to the last bit; rounding then decides the choice on
        # either side, and one flipped expert moves that token's y by a lot)
        y_e, _ = layer.forward(x, training=False)
        ties = _near_ties(layer._ctx["probs"], K)
        with torch.no_grad():
            y_t, _ = fwd(torch.tensor(x))
        err = _rel_diff(y_e, y_t.numpy(), ties)

        y_f, _ = fast.forward(x, training=False)
        ties_f = _near_ties(fast._ctx["probs"], K)
        err_fast = _rel_diff(y_f, y_t.numpy(), ties | ties_f)

        def run_engine(layer=layer):
            layer.zero_grad()
            layer.forward(x, training=True)
            layer.backward(dy)

        def run_torch():
            for p in params:
                p.grad = None
            xt.grad = None
            y, aux = fwd(xt)
            ((y * dyt).sum() + aux).backward()

        clock = time.thread_time if args.clock == "cpu" else time.perf_counter
        te, tf, tt = _time_interleaved([run_engine, lambda: run_engine(fast), run_torch], args.repeats,
                                       clock)
        rows.append((nthreads, kind, f"{H}/{I}", router, args.tokens / te, args.tokens / tf,
                     args.tokens / tt, tt / te, tt / tf, err, err_fast, int(ties.sum())))
        print(f"threads {nthreads} {kind:6s} H/I {H}/{I} router {router:6s}: engine_py "
              f"{args.tokens / te:8.0f} tok/s (bf16 {args.tokens / tf:8.0f}), torch {args.tokens / tt:8.0f} "
              f"tok/s, ratio {tt / te:5.2f}x (bf16 {tt / tf:5.2f}x; max rel diff of y {err:.1e}, "
              f"bf16 {err_fast:.1e})", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench gmoe", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--kinds", default="swiglu,gelu",
                    help="FFN kinds, comma-separated (swiglu: Llama/SmolLM; gelu: BERT/MiniLM)")
    ap.add_argument("--routers", default="graph,linear")
    ap.add_argument("--sizes", default=",".join(f"{h}/{i}" for h, i in SIZES),
                    help="comma-separated H/I pairs")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts, each used by both sides "
                         "(default: engine_py's current setting)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: the calling thread's CPU time (needs --threads 1), which a loaded "
                         "machine disturbs far less")
    from engine_py.bench import add_output_args

    add_output_args(ap, "gmoe")
    args = ap.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("the gmoe benchmark compares against PyTorch: pip install torch==2.13.0")
        return 2
    import engine_py
    from engine_py._progress import progress
    from engine_py.bench import finish, machine_line, progress_show, start_run
    from engine_py.gmoe import MoELoRAFFN

    thread_list = ([int(v) for v in args.threads.split(",") if v] if args.threads
                   else [engine_py.get_num_threads()])
    if args.clock == "cpu" and thread_list != [1]:
        ap.error("--clock cpu needs --threads 1")
    routers = [r for r in args.routers.split(",") if r]
    kinds = [k for k in args.kinds.split(",") if k]
    if any(k not in ("swiglu", "gelu") for k in kinds):
        ap.error("--kinds takes swiglu and/or gelu")
    run = start_run()
    sizes = [tuple(int(v) for v in s.split("/")) for s in args.sizes.split(",") if s]
    rows = []
    old_threads = engine_py.get_num_threads()
    with progress(len(thread_list) * len(kinds) * len(sizes) * len(routers), "bench gmoe", "config",
                  progress_show(args), logger="engine_py.bench") as bar:
        for nthreads in thread_list:
            engine_py.set_num_threads(nthreads)
            torch.set_num_threads(nthreads)
            for kind in kinds:
                for H, I in sizes:
                    rows += _bench_size(torch, MoELoRAFFN, args, kind, nthreads, H, I, routers)
                    bar.update(len(routers))
    engine_py.set_num_threads(old_threads)
    machine = run.stop(threads=max(thread_list))
    md = ["## GMoE layer (MoE-LoRA FFN) forward + backward",
          "",
          f"`python -m engine_py bench gmoe` — {E} experts, top-{K}, r {R}, alpha {ALPHA:g}, "
          f"GCN dim {G}, {args.tokens} tokens, median of {args.repeats} interleaved runs of three "
          "sides: engine_py float32, engine_py with `precision=\"bfloat16\"` (the frozen FFN "
          "products in bf16 with float32 sums; LoRA, router and losses float32) and PyTorch "
          "float32 (autograd, frozen products once, each expert on its routed tokens "
          "only (index_select/index_add), batched dense GCN); every side uses the thread count "
          "of the row. Max rel diff: max |y - y_torch| / max |y_torch| over the tokens whose "
          f"top-{K} choice is not a near-tie (k-th and (k+1)-th router probability within "
          f"{NEAR_TIE:g}, where float32 rounding on either side decides the expert); the near-tie "
          "tokens are counted in their own column."
          + (" Times are the calling thread's CPU time (--clock cpu)." if args.clock == "cpu" else ""),
          "",
          "| threads | FFN | H/I | router | engine_py f32 tokens/s | engine_py bf16 tokens/s | PyTorch "
          "tokens/s | speed-up f32 | speed-up bf16 | max rel diff y f32 | bf16 | near-tie tokens |",
          "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, kd, h, r, e, f, t, ratio, rf, err, errf, nt in rows:
        md.append(f"| {n} | {kd} | {h} | {r} | {e:,.0f} | {f:,.0f} | {t:,.0f} | {ratio:.2f}x | "
                  f"**{rf:.2f}x** | {err:.1e} | {errf:.1e} | {nt} of {args.tokens} |")
    md += ["", f"Machine: {machine_line(machine)}; thread counts per row in the table (other jobs "
           "may share the CPUs: rows with more threads than idle cores are noisy).", ""]
    text = "\n".join(md)
    results = {"experts": E, "top_k": K, "r": R, "alpha": ALPHA, "gcn_dim": G, "tokens": args.tokens,
               "repeats": args.repeats, "torch_version": torch.__version__,
               "rows": [{"threads": n, "ffn": kd, "H/I": h, "router": r, "engine_py_tokens_per_s": e,
                         "engine_py_bf16_tokens_per_s": f, "torch_tokens_per_s": t, "speedup": ratio,
                         "speedup_bf16": rf, "max_rel_diff_y": err, "max_rel_diff_y_bf16": errf,
                         "near_tie_tokens": nt}
                        for n, kd, h, r, e, f, t, ratio, rf, err, errf, nt in rows]}
    finish(args, "gmoe", text, machine, results, argv)
    return 0
