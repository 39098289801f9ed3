"""`python -m engine_py bench gmoe-llm`: LoRA vs MixLoRA vs GMoE fine-tuning
of a decoder LLM on real multiple-choice tasks (GMoE's prompt format), at a
comparable trainable-parameter budget, over seeds.

Methods (engine_py.finetune.Trainer):

* ``lora``: LoRA on q, k, v, o, gate, up, down; its rank is chosen so that
  its trainable parameter count is the closest to MixLoRA's (``--lora-r``
  overrides);
* ``mixlora``: LoRA (r) on q, k, v, o and a mixture of ``--experts`` LoRA
  experts (rank r) on the MLP, linear top-k router + load-balance loss;
* ``gmoe``: the same experts with GMoE's graph router + Poisson distinction
  and Normal balance losses (reference coefficients 0.005 and 8.0);
* ``gmoe-no-poisson`` / ``gmoe-no-normal``: GMoE without one of its losses;
* on request (``--methods``): ``gmoe-fix`` (graph_readout="per_expert",
  normal_running_decay=0.5, the options of ALGORITHMS.md §B.5) and
  ``gmoe-mean`` (the router losses averaged over layers, as the official
  code does, instead of summed), ``gmoe-balance`` (the graph router plus
  MixLoRA's load-balance loss at MixLoRA's weight 0.01: Trainer
  graph_balance=True) and ``gmoe-fix-balance`` (both: gmoe-fix's options and
  the load balance).

Every method trains with the same optimiser settings (AdamW, ``--lr``
constant, weight decay 0.01, LoRA dropout 0.0005, batch 16, the same
questions in the same order for a seed), in ``--precision``. Reported per
task and method: test accuracy mean ± std over seeds, trainable parameters,
training tokens/s, and for the MoE methods the expert load per layer after
training (mean over the last steps): its coefficient of variation, the
smallest expert share against the 1/(4N) floor, the router entropy; the
per-step load, lambda and sigma go to the JSON for plots (notebook 07).

Tasks (``--tasks``, comma-separated): bench finetune-task's (``debian``: the
Debian archive section of a package from its name and short description;
``pylib``: the Python Library Reference chapter of a documentation
section). The zero-shot
accuracy of the base model is reported once per task. ``packed:<prefix>``:
a TextGraph saved with engine_py.datasets.io.save_packed (for tests).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["METHODS", "method_kwargs", "main"]

METHODS = ("lora", "mixlora", "gmoe", "gmoe-no-poisson", "gmoe-no-normal")
#: GMoE with engine_py's options (not in the default list): "gmoe-fix" the
#: anti-collapse pair of ALGORITHMS.md §B.5, "gmoe-mean" the router losses
#: averaged over layers as the official code does, "gmoe-balance" the graph
#: router with MixLoRA's load-balance loss added (graph_balance=True)
EXTRA_METHODS = ("gmoe-fix", "gmoe-mean", "gmoe-balance", "gmoe-fix-balance")
_COMMON = dict(schedule="constant", warmup_ratio=0.0, weight_decay=0.01, dropout=0.0005)


def method_kwargs(method: str, r: int, experts: int, top_k: int, lora_r: int,
                  balance_coef: float | None = None) -> dict:
    """Trainer keyword arguments of a study method. balance_coef: the load
    balance's weight in the *-balance variants (default MixLoRA's 0.01)."""
    if method == "lora":
        return dict(method="lora", r=lora_r, alpha=2.0 * lora_r, **_COMMON)
    if method == "mixlora":
        return dict(method="mixlora", router="linear", r=r, alpha=2.0 * r, experts=experts,
                    top_k=top_k, **_COMMON)
    if method in EXTRA_METHODS:
        opts = {"gmoe-fix": {"graph_readout": "per_expert", "normal_running_decay": 0.5},
                "gmoe-mean": {"aux_reduction": "mean"},
                "gmoe-balance": {"graph_balance": True},
                "gmoe-fix-balance": {"graph_readout": "per_expert", "normal_running_decay": 0.5,
                                     "graph_balance": True}}[method]
        if method.endswith("-balance") and balance_coef is not None:
            opts = dict(opts, loss_coefs={"balance": float(balance_coef)})
        return dict(method="gmoe", router="graph", r=r, alpha=2.0 * r, experts=experts,
                    top_k=top_k, **opts, **_COMMON)
    if method in METHODS and method.startswith("gmoe"):
        coefs = {"gmoe": {}, "gmoe-no-poisson": {"poisson": 0.0},
                 "gmoe-no-normal": {"normal": 0.0}}[method]
        return dict(method="gmoe", router="graph", r=r, alpha=2.0 * r, experts=experts,
                    top_k=top_k, loss_coefs=coefs, **_COMMON)
    raise ValueError(f"unknown method {method!r}; known: {METHODS + EXTRA_METHODS}")


def lora_params(hp: dict, r: int) -> int:
    """Trainable parameters of LoRA rank r on all seven projections."""
    D, F, hd = hp["hidden_size"], hp["intermediate_size"], hp["head_dim"]
    QW, KW = hp["num_heads"] * hd, hp["num_kv_heads"] * hd
    per = (D + QW) + 2 * (D + KW) + (QW + D) + 2 * (D + F) + (F + D)
    return hp["num_layers"] * r * per


def _questions(task: str, n_train: int, n_test: int, n_choices: int):
    """bench finetune-task's questions of a task (its TASKS registry: debian,
    pylib), or of a packed TextGraph (``packed:<prefix>``, for tests)."""
    from engine_py.bench.finetune_task import TASKS, make_questions

    if task.startswith("packed:"):
        from engine_py.datasets.io import load_packed

        g = load_packed(task[len("packed:"):])
        template, what = TASKS["debian"][1], "a packed test graph"
    elif task in TASKS:
        loader, template, what = TASKS[task]
        g = loader()
    else:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}, packed:<prefix>")
    names = list(g.label_names)
    rng = np.random.default_rng(0)
    tr_p, _, _, tr_a = make_questions(g.texts, g.labels, names, g.train_idx, n_train, rng,
                                      n_choices, template=template)
    te_p, te_c, te_y, _ = make_questions(g.texts, g.labels, names, g.test_idx, n_test, rng,
                                         n_choices, template=template)
    desc = what[0].upper() + what[1:] + " (" + (getattr(g, "provenance", None)
                                                 or g.name).split(";")[0] + ")"
    return tr_p, tr_a, te_p, te_c, te_y, desc


def _load_summary(tr, last: int = 10) -> dict:
    """Expert-load statistics after training: the mean load over the last
    `last` steps per layer, its CV, smallest share, and the entropy."""
    h = tr.moe_history_[-last:]
    load = np.mean([x["load"] for x in h], axis=0)          # (L, N)
    cv = load.std(axis=1) / load.mean(axis=1)
    ent = np.mean([x["entropy"] for x in h], axis=0)
    return {"load": load.tolist(), "load_cv": cv.tolist(), "min_share": load.min(axis=1).tolist(),
            "entropy": ent.tolist()}


def _history(tr) -> dict:
    out = {"load": np.stack([x["load"] for x in tr.moe_history_]).round(5).tolist()}
    for k in ("lambda", "sigma"):
        if tr.moe_history_ and k in tr.moe_history_[0]:
            out[k] = np.stack([x[k] for x in tr.moe_history_]).round(5).tolist()
    return out


def _ablation_seeds(res: dict) -> str:
    """" (the gmoe-no-* ablations: 0, 1)" when the study has gmoe-no-* rows;
    nothing when it has none (their seeds would name runs that do not exist)."""
    seeds = res.get("ablation_seeds", res["seeds"])
    ran = any(m.get("method", "").startswith("gmoe-no-") for t in res.get("tasks", [])
              for m in t.get("methods", []))
    if not seeds or not ran:
        return ""
    return f" (the gmoe-no-* ablations: {', '.join(str(s) for s in seeds)})"


def render_markdown(res: dict, machine_line: str) -> str:
    lines = [f"## LoRA vs MixLoRA vs GMoE fine-tuning (`{res['command']}`)", "",
             f"{res['model_name']}; {res['epochs']} epoch(s) of {res['train']} questions, batch "
             f"{res['batch_size']}, AdamW lr {res['lr']} constant, weight decay 0.01, LoRA dropout "
             f"0.0005, precision {res['precision']}; {res['test']} test questions with "
             f"{res['n_choices']} choices (chance {100 / res['n_choices']:.0f}%). MoE methods: "
             f"{res['experts']} experts, top-{res['top_k']}, rank {res['r']} (alpha {2 * res['r']}), "
             f"LoRA rank {res['r']} on q, k, v, o; LoRA: rank {res['lora_r']} on all seven "
             f"projections (the rank closest to MixLoRA's parameter count). Seeds: "
             f"{', '.join(str(s) for s in res['seeds'])}{_ablation_seeds(res)}.", ""]
    if res.get("note"):
        lines += [f"**Note.** {res['note']}", ""]
    floor = 1.0 / (4 * res["experts"])
    for task in res["tasks"]:
        lines += [f"### Task: {task['name']}", "", task["description"] + ".", "",
                  f"Zero-shot (base model): {100 * task['zero_shot_acc']:.1f}%.", "",
                  "| method | trainable params | test accuracy % (mean ± std) | per seed | "
                  "train tokens/s | load CV (mean over layers) | smallest expert share "
                  f"(min over layers; floor 1/4N = {floor:.3f}) | layers with an expert below "
                  "the floor (mean over seeds) | experts below the floor per layer | "
                  "router entropy (nats) |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for m in task["methods"]:
            acc = np.array([r["test_acc"] for r in m["runs"]]) * 100
            tps = np.mean([r["tokens_per_s"] for r in m["runs"]])
            if m["runs"][0].get("load_cv") is not None:
                cv = np.mean([np.mean(r["load_cv"]) for r in m["runs"]])
                mn = min(min(r["min_share"]) for r in m["runs"])
                ent = np.mean([np.mean(r["entropy"]) for r in m["runs"]])
                loads = [np.asarray(r["load"]) for r in m["runs"]]
                nl = np.mean([(x.min(axis=1) < floor).sum() for x in loads])
                ne = np.mean([(x < floor).sum(axis=1).mean() for x in loads])
                moe = (f"{cv:.2f} | {mn:.3f}{' (below)' if mn < floor else ''} | "
                       f"{nl:.1f} of {loads[0].shape[0]} | {ne:.1f} of {loads[0].shape[1]} | "
                       f"{ent:.2f}")
            else:
                moe = "— | — | — | — | —"
            mean_std = (f"{acc.mean():.1f} ± {acc.std():.1f}" if len(acc) > 1
                        else f"{acc.mean():.1f} (1 seed)")
            lines.append(f"| {m['method']} | {m['params']:,} | {mean_std} | "
                         f"{' / '.join(f'{a:.1f}' for a in acc)} | {tps:.0f} | {moe} |")
        lines += ["", _verdict(task), ""]
    lines += [f"Machine: {machine_line}", ""]
    return "\n".join(lines)


def _verdict(task: dict) -> str:
    """The paper's claim (GMoE: higher accuracy and lower std than MixLoRA),
    stated from the numbers of this run."""
    by = {m["method"]: np.array([r["test_acc"] for r in m["runs"]]) * 100 for m in task["methods"]}
    if "gmoe" not in by or "mixlora" not in by:
        return "GMoE vs MixLoRA: not both run."
    g, x = by["gmoe"], by["mixlora"]
    d = g.mean() - x.mean()
    if len(g) < 2 or len(x) < 2:
        return (f"**GMoE vs MixLoRA**: GMoE's accuracy is {'higher' if d > 0 else 'lower'} by "
                f"{abs(d):.1f} pt with {min(len(g), len(x))} seed: no spread to compare, so this "
                "run cannot test the paper's claim (higher accuracy, lower std).")
    noise = np.sqrt((g.var(ddof=1) if len(g) > 1 else 0) / len(g)
                    + (x.var(ddof=1) if len(x) > 1 else 0) / len(x))
    acc = ("higher" if d > 0 else "lower") + f" by {abs(d):.1f} pt"
    sig = ("within the seed-to-seed noise (difference < 2 standard errors, "
           f"{2 * noise:.1f} pt)" if abs(d) <= 2 * noise else f"beyond 2 standard errors ({2 * noise:.1f} pt)")
    std = "lower" if g.std() < x.std() else "not lower"
    claim = ("reproduces" if d > 0 and abs(d) >= 2 * noise and g.std() < x.std() else "does not reproduce")
    return (f"**GMoE vs MixLoRA**: GMoE's mean accuracy is {acc}, {sig}; its std over seeds is "
            f"{std} ({g.std():.1f} vs {x.std():.1f}). The paper's claim (higher accuracy, lower std) "
            f"{claim} in this run ({len(g)} seeds).")


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench gmoe-llm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2, qwen05 or a model path")
    ap.add_argument("--tasks", default="debian")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--train", type=int, default=800)
    ap.add_argument("--test", type=int, default=400)
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--ablation-seeds", default=None,
                    help="seeds of the gmoe-no-* ablations (default: --seeds)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--r", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--lora-r", type=int, default=None,
                    help="LoRA's rank (default: the closest to MixLoRA's parameter count)")
    ap.add_argument("--precision", default="bfloat16", choices=("float32", "bfloat16"))
    ap.add_argument("--balance-coef", type=float, default=None,
                    help="load-balance weight of the gmoe-*balance methods (default MixLoRA's 0.01)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON[=LABEL]",
                    help="measure nothing: merge these runs' JSONs (--out of each, or the .partial "
                         "of a run cut short) into one study; --out the merged JSON, --markdown "
                         "the file whose gmoe_llm section gets the table (engine_py/bench/"
                         "gmoe_llm_merge.py)")
    ap.add_argument("--markdown", default=None, help="with --merge: markdown file for the table")
    ap.add_argument("--note", default=None, help="with --merge: a sentence added to the note")
    from engine_py.bench import add_output_args

    add_output_args(ap, "gmoe_llm")
    args = ap.parse_args(argv)
    if args.merge:
        from engine_py.bench.gmoe_llm_merge import main_merge

        return main_merge(args.merge, args.out, args.markdown, args.note, args.section)
    import engine_py
    from engine_py import models
    from engine_py.bench import finish, machine_line, start_run
    from engine_py.finetune import Trainer

    if args.threads is not None:
        engine_py.set_num_threads(args.threads)
    path = {"smollm2": models.smollm2_path, "qwen05": models.qwen05_path}.get(args.model)
    path = path() if path is not None else args.model
    name = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
            "qwen05": "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)"}.get(args.model, path)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        method_kwargs(m, 1, 1, 1, 1)   # unknown names fail before any work
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    log = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, file=sys.stderr, flush=True))
    base_kw = dict(lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                   precision=args.precision, show_progress_bar=not args.no_progress)
    run = start_run()
    # LoRA's rank: the closest to MixLoRA's trainable parameter count
    probe = Trainer(path, **method_kwargs("mixlora", args.r, args.experts, args.top_k, 1),
                    **base_kw)
    hp, moe_params = probe._hp, len(probe._core.params)
    del probe
    lora_r = args.lora_r or int(np.argmin([abs(lora_params(hp, r) - moe_params)
                                           for r in range(1, 257)])) + 1
    abl_seeds = seeds if args.ablation_seeds is None else [
        int(s) for s in args.ablation_seeds.split(",") if s != ""]
    res = {"command": "python -m engine_py bench gmoe-llm" + (" " + " ".join(argv) if argv else ""),
           "model": path, "model_name": name, "epochs": args.epochs, "batch_size": args.batch_size,
           "lr": args.lr, "precision": args.precision, "train": args.train, "test": args.test,
           "n_choices": args.choices, "r": args.r, "experts": args.experts, "top_k": args.top_k,
           "lora_r": lora_r, "seeds": seeds, "ablation_seeds": abl_seeds, "tasks": []}
    partial = None
    if args.out and str(args.out).endswith(".json"):
        partial = str(args.out) + ".partial"   # every finished run, in case the study is cut short
    for task in [t for t in args.tasks.split(",") if t]:
        tr_p, tr_a, te_p, te_c, te_y, desc = _questions(task, args.train, args.test, args.choices)
        zero = Trainer(path, **base_kw).score(te_p, te_c, te_y)
        log(f"{task}: zero-shot {100 * zero:.1f}%")
        # a *-balance method at another weight is another row: "gmoe-balance@1"
        res_m = [{"method": m if args.balance_coef is None or not m.endswith("-balance")
                  else f"{m}@{args.balance_coef:g}", "params": None, "runs": []} for m in methods]
        from engine_py.bench.finetune_task import questions_digest

        # equal digests = the same questions (the debian task follows the apt lists)
        res["tasks"].append({"name": task, "description": desc, "zero_shot_acc": zero,
                             "questions_sha256": questions_digest(tr_p, tr_a, te_p, te_c, te_y),
                             "methods": res_m})
        # seed-major: a study cut short still compares the methods on the same seeds
        for s in sorted(set(seeds) | set(abl_seeds)):
            for m, rm in zip(methods, res_m):
                if s not in (abl_seeds if m.startswith("gmoe-no") else seeds):
                    continue
                runs = rm["runs"]
                tr = Trainer(path, seed=s, **method_kwargs(m, args.r, args.experts, args.top_k,
                                                           lora_r, args.balance_coef), **base_kw)
                n_tok = sum(len(p) + len(a) for p, a in zip(tr._encode(tr_p, True),
                                                            tr._encode(tr_a, False))) * args.epochs
                t0 = time.perf_counter()
                tr.fit(tr_p, tr_a)
                secs = time.perf_counter() - t0
                acc = tr.score(te_p, te_c, te_y)
                r = {"seed": s, "test_acc": acc, "train_seconds": secs, "tokens_per_s": n_tok / secs,
                     "losses": [round(float(h[1]), 5) for h in tr.history_]}
                if tr.method != "lora":
                    r.update(_load_summary(tr))
                    r["history"] = _history(tr)
                runs.append(r)
                rm["params"] = int(len(tr._core.params))
                log(f"{task} {m} seed {s}: {100 * acc:.1f}% ({secs:.0f} s, "
                    f"{n_tok / secs:.0f} tokens/s)")
                if partial is not None:
                    from engine_py.bench import write_json

                    write_json(partial, {"partial": True, "results": res}, indent=None)
    machine = run.stop(threads=engine_py.get_num_threads())
    # one line: the per-step load histories would take ~3 MB indented
    finish(args, "gmoe_llm", render_markdown(res, machine_line(machine)), machine, res, argv,
           json_indent=None)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
