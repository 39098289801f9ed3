"""Benchmark: LoRA fine-tuning, engine_py vs PyTorch + PEFT (float32).

    python -m engine_py bench finetune [--model smollm2|PATH.gguf] [--steps 3] [--warmup 1]
        [--batch-size 16] [--prompt-words 12] [--r 2] [--alpha 4] [--threads 2]
        [--precisions float32,bfloat16,bfloat16+recompute] [--no-torch] [--timeout 1800] [--out PATH]

The same training job on both sides: LoRA rank r on all seven projections
(q, k, v, o, gate, up, down), AdamW at a constant lr 2e-4, gradient clipping
at 1.0, batches of --batch-size multiple-choice prompts (GMoE's format,
"Please choose the correct answer ... Answer:") with a one-word answer; the
loss covers the answer tokens only. Every side runs in a child process of
its own (so that its peak RSS is its own): engine_py's `finetune.Trainer`
(the base model stays in its GGUF format; once per --precisions value:
float32, bfloat16, optionally with activation recomputation) and
PyTorch + PEFT on the same GGUF dequantized to float32 by transformers
(what a user without engine_py would run), padded batches (right padding,
attention mask, labels -100 outside the answer), the same thread count
(torch.set_num_threads). Each side runs --warmup steps, then --steps timed
steps of the same batches. Reported: seconds per step (mean of the timed
steps), training tokens/s (real tokens, padding not counted: prompt +
answer tokens of the batch / step time), CPU seconds per step and tokens
per CPU second (user + system time of the side's threads: robust on a
shared machine), peak RSS of the child (VmHWM), the
first step's loss (the adapters start with B = 0, so every side computes the
base model's loss on the same batch there: a check that both run the same
job), and the ratios against PyTorch. Writes a file only with --out.

``--method gmoe,mixlora`` (any comma-separated methods) trains them in one
engine_py process per precision, interleaved step by step on the same
batches (ABBA order), and adds a table of each method's step time against
the last method's (wall and CPU ratios, per-step ratios): the graph router's
overhead over the linear router, both sides from the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

__all__ = ["make_examples", "render_markdown", "main", "torch_lora_model", "torch_batch",
           "torch_train_step", "torch_choice_logprobs", "torch_encode"]

_CHOICES = ("alpha", "bravo", "charlie", "delta")


def make_examples(n: int, words: int, seed: int = 0) -> tuple:
    """n deterministic multiple-choice prompts of about `words` words of text
    each, and their one-word answers (" alpha" ...)."""
    from engine_py.bench.llm import make_texts

    texts = make_texts(n, max(1, words - 4), words + 4, seed=seed)
    prompts, answers = [], []
    for i, t in enumerate(texts):
        prompts.append("Please choose the correct answer to the question: which word describes "
                       f"this text? {t}\nAnswer1: {_CHOICES[0]} Answer2: {_CHOICES[1]} "
                       f"Answer3: {_CHOICES[2]} Answer4: {_CHOICES[3]}\nAnswer format: "
                       "answer1/answer2/answer3/answer4\nAnswer:")
        answers.append(" " + _CHOICES[(i * 7 + len(t)) % 4])
    return prompts, answers


# --- the children ------------------------------------------------------------

def _rss_mb() -> float:
    from engine_py.bench.llm import _rss_mb as rss

    return rss()


def _cpu_s() -> float:
    """CPU seconds (user + system, every thread) this process has used: on a
    shared machine the wall time also counts waiting for a core."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _engine_trainer(job: dict, method: str, router):
    from engine_py.finetune import Trainer

    moe = {} if method == "lora" else dict(router=router, experts=job["experts"],
                                           top_k=job["top_k"], dropout=0.0)
    return Trainer(job["path"], method=method, r=job["r"], alpha=job["alpha"], lr=2e-4,
                   batch_size=job["batch_size"], warmup_ratio=0.0, schedule="constant",
                   max_grad_norm=1.0, precision=job["precision"],
                   recompute=job.get("recompute", False), show_progress_bar=False, **moe)


def _worker_engine(job: dict) -> dict:
    """One Trainer per method of job["methods"] (default: job["method"]) in
    this process, trained step by step on the same batches. With several
    methods the steps are interleaved (step s runs every method on batch s,
    the order alternating between steps: ABBA...), so a slow spell of a shared
    machine hits all of them alike. Result: times/losses/tokens/cpu of the
    first method, and per method under "methods"."""
    import engine_py

    engine_py.set_num_threads(job["threads"])
    methods = job.get("methods") or [job.get("method", "lora")]
    routers = job.get("routers") or [job.get("router")] * len(methods)
    trs = [_engine_trainer(job, m, r) for m, r in zip(methods, routers)]
    prompts, answers, bs = job["prompts"], job["answers"], job["batch_size"]
    per = {m: {"times": [], "losses": [], "tokens": [], "cpu": []} for m in methods}
    for s in range(job["warmup"] + job["steps"]):
        p, a = prompts[s * bs:(s + 1) * bs], answers[s * bs:(s + 1) * bs]
        order = list(range(len(methods)))
        if s % 2 == 1:
            order.reverse()
        for i in order:
            tr, rec = trs[i], per[methods[i]]
            seqs, _ = tr._pairs(p, a)
            c0, t0 = _cpu_s(), time.perf_counter()
            tr.fit(p, a)
            rec["times"].append(time.perf_counter() - t0)
            rec["cpu"].append(_cpu_s() - c0)
            rec["losses"].append(tr.history_[-1][1])
            rec["tokens"].append(int(sum(len(q) for q in seqs)))
    return dict(per[methods[0]], ok=True, precision=job["precision"], methods=per)


# --- PyTorch + PEFT (also used by bench finetune-task) -------------------------

TORCH_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def torch_lora_model(path: str, r: int, alpha: float, threads: int, seed: int = 0,
                     adapter_dir=None):
    """(PEFT model in train mode, tokenizer): the GGUF at `path` dequantized to
    float32 by transformers, LoRA r/alpha on the seven projections, dropout
    0. The LoRA A matrices come from PEFT's initialisation after
    torch.manual_seed(seed), or from `adapter_dir` (a PEFT adapter folder,
    e.g. an engine_py Trainer's save_adapter) loaded trainable."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    d, f = os.path.split(path)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if adapter_dir is not None:
        model = peft.PeftModel.from_pretrained(model, os.fspath(adapter_dir), is_trainable=True)
    else:
        cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                              target_modules=list(TORCH_TARGETS))
        model = peft.get_peft_model(model, cfg)
    model.train()
    return model, tok


def torch_encode(tok, prompts, answers) -> tuple:
    """(token lists prompt + answer, index where each answer starts): the prompt
    with the tokenizer's special tokens, the answer without (as engine_py)."""
    seqs, starts = [], []
    for q, ans in zip(prompts, answers):
        pi = tok(q, add_special_tokens=True)["input_ids"]
        ai = tok(ans, add_special_tokens=False)["input_ids"]
        seqs.append(pi + ai)
        starts.append(len(pi))
    return seqs, starts


def torch_batch(tok, prompts, answers) -> tuple:
    """(ids, labels, attention mask, real tokens): right-padded, labels -100
    outside the answer tokens."""
    import torch

    seqs, starts = torch_encode(tok, prompts, answers)
    pad = tok.pad_token_id
    n = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (n - len(s)) for s in seqs])
    lab = torch.tensor([[-100] * a + s[a:] + [-100] * (n - len(s)) for s, a in zip(seqs, starts)])
    mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs])
    return ids, lab, mask, sum(len(s) for s in seqs)


def torch_train_step(model, opt, params, batch, max_grad_norm=1.0) -> float:
    """One AdamW step on the mean answer-token loss of a torch_batch (global
    gradient norm clipped at max_grad_norm unless None); returns the loss."""
    import torch

    ids, lab, mask, _ = batch
    out = model(input_ids=ids, attention_mask=mask, labels=lab, use_cache=False)
    out.loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def torch_choice_logprobs(model, tok, prompts, choices, batch_size: int = 16):
    """(n_prompts, n_choices) summed log-likelihood of each choice's tokens
    after its prompt (engine_py's Trainer.choice_logprobs rule), float64."""
    import numpy as np
    import torch

    k = len(choices[0])
    flat_p = [p for p in prompts for _ in range(k)]
    flat_c = [c for cs in choices for c in cs]
    seqs, starts = torch_encode(tok, flat_p, flat_c)
    out = np.zeros(len(seqs))
    was = model.training
    model.eval()
    with torch.inference_mode():
        for b0 in range(0, len(seqs), batch_size):
            ss, st = seqs[b0:b0 + batch_size], starts[b0:b0 + batch_size]
            n = max(len(s) for s in ss)
            ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in ss])
            mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in ss])
            logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask,
                                           use_cache=False).logits.double(), dim=-1)
            for i, (s, a) in enumerate(zip(ss, st)):
                pos = torch.arange(a - 1, len(s) - 1)
                out[b0 + i] = float(logp[i, pos, torch.tensor(s[a:])].sum())
    model.train(was)
    return out.reshape(len(prompts), k)


def _worker_torch(job: dict) -> dict:
    try:
        import peft
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        return {"ok": False, "reason": f"{exc}"}
    model, tok = torch_lora_model(job["path"], job["r"], job["alpha"], job["threads"], seed=0)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    prompts, answers, bs = job["prompts"], job["answers"], job["batch_size"]
    times, losses, tokens, cpu = [], [], [], []
    for s in range(job["warmup"] + job["steps"]):
        p, a = prompts[s * bs:(s + 1) * bs], answers[s * bs:(s + 1) * bs]
        c0, t0 = _cpu_s(), time.perf_counter()
        b = torch_batch(tok, p, a)
        loss = torch_train_step(model, opt, params, b, 1.0)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
        losses.append(loss)
        tokens.append(int(b[3]))
    return {"ok": True, "times": times, "losses": losses, "tokens": tokens, "cpu": cpu,
            "torch": torch.__version__,
            "peft": peft.__version__}


def _worker_torch_moe(job: dict) -> dict:
    """The official-style PyTorch GMoE / MixLoRA model (engine_py.bench.gmoe_torch:
    transformers decoder, plain-torch LoRA on q, k, v, o, a MixLoRA MoE in every
    MLP with the torch_geometric GCN router or the linear router), float32,
    AdamW lr 2e-4 and weight decay 0.01 (the GMoE reference), same batches."""
    try:
        import torch
        import torch_geometric  # noqa: F401
        from transformers import AutoTokenizer
    except ImportError as exc:
        return {"ok": False, "reason": f"{exc}"}
    from engine_py.bench import gmoe_torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    d, f = os.path.split(job["path"])
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    obj = gmoe_torch.build(job["path"], None, job["method"], job["router"], job["experts"],
                           job["top_k"], job["r"], job["alpha"], "float32", seed=0)
    opt = gmoe_torch.make_optimizer(obj, lr=2e-4, weight_decay=0.01)
    prompts, answers, bs = job["prompts"], job["answers"], job["batch_size"]
    times, losses, tokens, cpu = [], [], [], []
    for s in range(job["warmup"] + job["steps"]):
        p, a = prompts[s * bs:(s + 1) * bs], answers[s * bs:(s + 1) * bs]
        c0, t0 = _cpu_s(), time.perf_counter()
        seqs, starts = [], []
        for q, ans in zip(p, a):
            pi = tok(q, add_special_tokens=True)["input_ids"]
            ai = tok(ans, add_special_tokens=False)["input_ids"]
            seqs.append(pi + ai)
            starts.append(len(pi))
        loss = gmoe_torch.train_step(obj, opt, seqs, starts)
        times.append(time.perf_counter() - t0)
        cpu.append(_cpu_s() - c0)
        losses.append(float(loss))
        tokens.append(int(sum(len(q) for q in seqs)))
    return {"ok": True, "times": times, "losses": losses, "tokens": tokens, "cpu": cpu,
            "torch": torch.__version__}


_WORKERS = {"engine_py": _worker_engine, "torch": _worker_torch, "torch_moe": _worker_torch_moe}


def _run_child(job: dict, timeout: float, log) -> dict:
    """One side in a child process (this file run as a script, finding this
    engine_py through PYTHONPATH): its result dict plus rss_mb."""
    from engine_py.bench import run_worker_script

    return run_worker_script(os.path.abspath(__file__), job, timeout, log)


def _worker_main() -> int:
    # the child side of run_worker_script, kept in this file: a child must not import
    # the engine_py package unless its side uses it (its libraries would count in its RSS)
    job = json.loads(sys.stdin.read())
    try:
        res = _WORKERS[job["side"]](job)
    except Exception as exc:
        res = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    res["rss_mb"] = _rss_mb()
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


# --- summary -------------------------------------------------------------------

def summarize(res: dict, warmup: int) -> dict:
    """Seconds per timed step, tokens/s, first-step loss from a child's result."""
    t = res["times"][warmup:]
    tok = res["tokens"][warmup:]
    cpu = res.get("cpu", [])[warmup:]
    return {"s_per_step": sum(t) / len(t), "tokens_per_s": sum(tok) / sum(t),
            "tokens_per_step": sum(tok) / len(tok), "first_loss": res["losses"][0],
            "rss_mb": res.get("rss_mb"),
            "cpu_s_per_step": sum(cpu) / len(cpu) if cpu else None,
            "tokens_per_cpu_s": sum(tok) / sum(cpu) if cpu and sum(cpu) > 0 else None}


def overhead_row(per: dict, methods: list, warmup: int) -> dict:
    """Step time of every method against the last one's, from one interleaved
    child (per: method -> (summary, raw)): the ratio of mean wall times, of
    CPU times, and the per-step wall ratios (same batch, adjacent in time)."""
    base_s, base_raw = per[methods[-1]]
    out = {"base": methods[-1], "methods": {}}
    for m in methods[:-1]:
        s, raw = per[m]
        steps = [a / b for a, b in zip(raw["times"][warmup:], base_raw["times"][warmup:])]
        steps_sorted = sorted(steps)
        cpu = (s["cpu_s_per_step"] / base_s["cpu_s_per_step"]
               if s.get("cpu_s_per_step") and base_s.get("cpu_s_per_step") else None)
        out["methods"][m] = {"s_per_step": s["s_per_step"], "base_s_per_step": base_s["s_per_step"],
                             "wall_ratio": s["s_per_step"] / base_s["s_per_step"],
                             "cpu_ratio": cpu, "step_ratios": steps,
                             "median_step_ratio": steps_sorted[len(steps_sorted) // 2]}
    return out


def _render_overhead(overhead: list, info: dict) -> list:
    if not overhead:
        return []
    base = overhead[0][1]["base"]
    lines = ["", f"**Step time against {base}, same process, interleaved** (step s trains every "
             f"method on batch s, alternating which goes first; {info['steps']} timed step(s) "
             f"after {info['warmup']} warm-up): wall = mean s / step ratio, CPU = CPU s / step "
             "ratio, per step = the ratios of the individual steps (min / median / max).", "",
             f"| precision | method | s / step | {base} s / step | wall ratio | CPU ratio "
             "| per step (min / median / max) |",
             "|---|---|---:|---:|---:|---:|---|"]
    for prec, ov in overhead:
        for m, r in ov["methods"].items():
            st = r["step_ratios"]
            cpu = f"{r['cpu_ratio']:.3f}" if r["cpu_ratio"] else "—"
            lines.append(f"| {prec} | {m} | {r['s_per_step']:.2f} | {r['base_s_per_step']:.2f} | "
                         f"{r['wall_ratio']:.3f} | {cpu} | {min(st):.3f} / "
                         f"{r['median_step_ratio']:.3f} / {max(st):.3f} |")
    return lines


def render_markdown(rows: list, info: dict, machine_line: str = "", overhead=None) -> str:
    """rows: [(label, summary or None, reason)], the PyTorch row labelled
    'PyTorch + PEFT' (several methods: 'engine_py <method> <precision>' and
    'PyTorch <method> ...', each compared with its own method's PyTorch row);
    overhead: [(precision, overhead_row)] for several methods."""
    methods = info.get("methods") or [info.get("method", "lora")]
    if len(methods) > 1:
        return _render_multi(rows, info, machine_line, overhead or [])
    ref = next((s for lab, s, _ in rows if lab.startswith("PyTorch") and s), None)
    method = info.get("method", "lora")
    if method == "lora":
        title, what = "LoRA fine-tuning", (f"LoRA r={info['r']} alpha={info['alpha']} on q, k, v, o, "
                                           "gate, up, down")
    else:
        title = f"{'GMoE' if method == 'gmoe' else 'MixLoRA'} fine-tuning"
        what = (f"LoRA r={info['r']} alpha={info['alpha']} on q, k, v, o and {info['experts']} LoRA "
                f"experts (top-{info['top_k']}, {info['router']} router, the method's aux losses) "
                "in every MLP; the PyTorch side is the official-style model of "
                "engine_py.bench.gmoe_torch (torch_geometric GCNConv router on the per-token "
                "batch graph, MixLoRA expert loop), weight decay 0.01")
    lines = [f"## {title} (`python -m engine_py bench finetune{info.get('argv', '')}`)", "",
             f"{info['model']}, {what}; "
             f"batches of {info['batch_size']} multiple-choice prompts (~{info['tokens_per_step']:.0f} "
             f"tokens a batch, loss on the answer tokens), AdamW constant lr 2e-4, clipping 1.0; "
             f"{info['warmup']} warm-up step(s) then {info['steps']} timed step(s) of the same batches "
             f"on every side; {info['threads']} thread(s); each side in its own process "
             "(peak RSS = its VmHWM). CPU s / step: user + system time of all the side's threads "
             "(on a shared machine wall time also counts waiting for a core; tokens per CPU second "
             "compares the work). First-step loss: the base model's loss on batch 1 (B = 0), "
             "the same job on every side.", ""] + _TABLE_HEAD
    lines += [_row_line(lab, s, reason, ref) for lab, s, reason in rows]
    if machine_line:
        lines += ["", f"Machine: {machine_line}."]
    return "\n".join(lines)


_TABLE_HEAD = ["| side | s / step | tokens/s | vs PyTorch | CPU s / step | tokens per CPU s | vs PyTorch "
               "| peak RSS MB | vs PyTorch | first-step loss |",
               "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]


def _row_line(lab: str, s, reason: str, ref) -> str:
    """One side's table row, its ratios against `ref` (a PyTorch summary or None)."""
    if s is None:
        return f"| {lab} | — | — | — | — | — | — | — | — | not run: {reason} |"
    sp = f"{s['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "—"
    mem = f"{s['rss_mb'] / ref['rss_mb']:.2f}x" if ref and s.get("rss_mb") else "—"
    tc = s.get("tokens_per_cpu_s")
    cpu_ratio = (f"{tc / ref['tokens_per_cpu_s']:.2f}x"
                 if tc and ref and ref.get("tokens_per_cpu_s") else "—")
    cps = f"{s['cpu_s_per_step']:.2f}" if s.get("cpu_s_per_step") is not None else "—"
    return (f"| {lab} | {s['s_per_step']:.2f} | {s['tokens_per_s']:.0f} | {sp} | {cps} | "
            f"{tc:.0f} | {cpu_ratio} | {s['rss_mb']:.0f} | {mem} | {s['first_loss']:.5f} |"
            if tc else
            f"| {lab} | {s['s_per_step']:.2f} | {s['tokens_per_s']:.0f} | {sp} | {cps} | — | "
            f"— | {s['rss_mb']:.0f} | {mem} | {s['first_loss']:.5f} |")


def _render_multi(rows: list, info: dict, machine_line: str, overhead: list) -> str:
    methods = info["methods"]
    names = {"lora": "LoRA", "mixlora": "MixLoRA", "gmoe": "GMoE"}
    title = " vs ".join(names[m] for m in methods) + " fine-tuning"
    moe = [m for m in methods if m != "lora"]
    what = (f"LoRA r={info['r']} alpha={info['alpha']}"
            + (f"; {', '.join(names[m] for m in moe)}: LoRA on q, k, v, o and {info['experts']} LoRA "
               f"experts (top-{info['top_k']}) in every MLP, routers "
               + ", ".join(f"{names[m]} {rt}" for m, rt in zip(methods, info["routers"]) if m != "lora")
               + " with the method's aux losses; their PyTorch side is the official-style model "
               "of engine_py.bench.gmoe_torch, weight decay 0.01" if moe else ""))
    lines = [f"## {title} (`python -m engine_py bench finetune{info.get('argv', '')}`)", "",
             f"{info['model']}, {what}; batches of {info['batch_size']} multiple-choice prompts "
             f"(~{info['tokens_per_step']:.0f} tokens a batch, loss on the answer tokens), AdamW "
             f"constant lr 2e-4, clipping 1.0; {info['warmup']} warm-up step(s) then "
             f"{info['steps']} timed step(s) of the same batches on every side; "
             f"{info['threads']} thread(s). Every engine_py precision trains all methods in ONE "
             "process, interleaved step by step (so its peak RSS counts all of them); every "
             "PyTorch side runs in its own process, and each engine_py row is compared with its "
             "own method's PyTorch row. CPU s / step: user + system time of the process's threads.",
             ""] + _TABLE_HEAD
    refs = {m: next((s for lab, s, _ in rows if lab.startswith(f"PyTorch {m} ") and s), None)
            for m in methods}
    for lab, s, reason in rows:
        m = next((m for m in methods if lab.startswith((f"engine_py {m} ", f"PyTorch {m} "))), None)
        lines.append(_row_line(lab, s, reason, refs.get(m)))
    lines += _render_overhead(overhead, info)
    if machine_line:
        lines += ["", f"Machine: {machine_line}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from engine_py.bench import add_output_args, finish, machine_line, start_run

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m engine_py bench finetune", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (the packaged SmolLM2-135M GGUF) or a "
                                                       "GGUF path (arch llama/qwen2)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--prompt-words", type=int, default=12,
                    help="words of text per prompt (SmolLM2: ~70 tokens with the template at 12, "
                         "~95 at 30)")
    ap.add_argument("--method", default="lora",
                    help="lora (PyTorch side: PEFT) or a mixture of LoRA experts, mixlora / gmoe "
                         "(PyTorch side: the official-style model of engine_py.bench.gmoe_torch); "
                         "several, comma-separated (e.g. gmoe,mixlora): every engine_py precision "
                         "trains all of them in one process, interleaved step by step on the same "
                         "batches, and the report adds each method's step time against the last "
                         "one's (gmoe,mixlora: the graph router's overhead over the linear router)")
    ap.add_argument("--router", default=None, help="gmoe/mixlora router (default: graph / linear)")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--r", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--precisions", default="float32,bfloat16,bfloat16+recompute",
                    help="engine_py variants: float32, bfloat16, each optionally +recompute "
                         "(activation recomputation)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch + PEFT side")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per side")
    ap.add_argument("--quiet", action="store_true")
    add_output_args(ap, "finetune")
    args = ap.parse_args(argv)
    methods = [m for m in args.method.split(",") if m]
    if not methods or any(m not in ("lora", "mixlora", "gmoe") for m in methods) or \
            len(set(methods)) != len(methods):
        ap.error(f"--method: lora, mixlora or gmoe, or several of them without repeats "
                 f"(got {args.method!r})")
    if len(methods) > 1 and args.router is not None:
        ap.error("--router applies to one --method (several methods use their default routers)")
    if methods != ["lora"] and args.section == "finetune":
        args.section = "finetune_" + "_".join(methods)
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1 or args.threads < 1:
        ap.error("--steps >= 1, --warmup >= 0, --batch-size >= 1, --threads >= 1")
    precs = [p for p in args.precisions.split(",") if p]
    if any(p.split("+")[0] not in ("float32", "bfloat16") or p.split("+")[1:] not in ([], ["recompute"])
           for p in precs):
        ap.error("--precisions: float32 / bfloat16, each optionally +recompute")
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    if args.model == "smollm2":
        from engine_py import models

        path, label = models.smollm2_path(), "SmolLM2-135M-Instruct (GGUF Q4_1)"
    else:
        path, label = os.path.abspath(args.model), os.path.basename(args.model)
    n = (args.warmup + args.steps) * args.batch_size
    prompts, answers = make_examples(n, args.prompt_words)
    default_router = {"gmoe": "graph", "mixlora": "linear"}
    router = args.router or default_router.get(methods[0])
    routers = [router] if len(methods) == 1 else [default_router.get(m) for m in methods]
    job = {"path": path, "prompts": prompts, "answers": answers, "batch_size": args.batch_size,
           "steps": args.steps, "warmup": args.warmup, "r": args.r, "alpha": args.alpha,
           "threads": args.threads, "method": methods[0], "router": router,
           "methods": methods, "routers": routers,
           "experts": args.experts, "top_k": args.top_k}
    multi = len(methods) > 1
    run = start_run()
    rows, results, overhead = [], {}, []
    sides = [("engine_py " + p.replace("+", " + "),
              dict(job, side="engine_py", precision=p.split("+")[0], recompute="+recompute" in p))
             for p in precs]
    if not args.no_torch:
        for m, rt in zip(methods, routers):
            name = "PyTorch + PEFT float32" if m == "lora" else "PyTorch official-style float32"
            sides.append(((name.replace("PyTorch", f"PyTorch {m}") if multi else name),
                          dict(job, side="torch" if m == "lora" else "torch_moe", method=m,
                               router=rt, methods=[m], routers=[rt])))
    for lab, j in sides:
        log(f"{lab}: {args.warmup} + {args.steps} steps ...")
        res = _run_child(j, args.timeout, log)
        if not res.get("ok"):
            labs = ([lab.replace("engine_py", f"engine_py {m}") for m in methods]
                    if multi and j["side"] == "engine_py" else [lab])
            for lb in labs:
                rows.append((lb, None, res.get("reason", "?")))
                results[lb] = {"ok": False, "reason": res.get("reason")}
            log(f"    not run: {res.get('reason')}")
            continue
        if multi and j["side"] == "engine_py":
            per = {}
            for m in methods:
                sub = dict(res["methods"][m], rss_mb=res.get("rss_mb"))
                s = summarize(sub, args.warmup)
                lb = lab.replace("engine_py", f"engine_py {m}")
                results[lb] = dict(s, raw=sub)
                rows.append((lb, s, ""))
                per[m] = (s, sub)
                log(f"    {m}: {s['s_per_step']:.2f} s/step, {s['tokens_per_s']:.0f} tokens/s")
            overhead.append((lab[len("engine_py "):], overhead_row(per, methods, args.warmup)))
            results[lab + " overhead"] = overhead[-1][1]
            continue
        s = summarize(res, args.warmup)
        results[lab] = dict(s, raw=res)
        rows.append((lab, s, ""))
        log(f"    {s['s_per_step']:.2f} s/step, {s['tokens_per_s']:.0f} tokens/s, "
            f"peak RSS {s['rss_mb']:.0f} MB, first-step loss {s['first_loss']:.5f}")
    machine = run.stop(threads=args.threads)
    tps = [s["tokens_per_step"] for _, s, _ in rows if s]
    info = {"model": label, "r": args.r, "alpha": args.alpha, "batch_size": args.batch_size,
            "method": methods[0], "methods": methods, "router": router, "routers": routers,
            "experts": args.experts, "top_k": args.top_k,
            "tokens_per_step": sum(tps) / len(tps) if tps else 0.0, "warmup": args.warmup,
            "steps": args.steps, "threads": args.threads,
            "argv": (" " + " ".join(argv)) if argv else ""}
    md = render_markdown(rows, info, machine_line(machine), overhead)
    print()
    finish(args, "finetune", md, machine, results, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
        sys.exit(_worker_main())
    sys.exit(main())
