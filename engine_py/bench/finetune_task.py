"""`python -m engine_py bench finetune-task`: LoRA fine-tuning of a decoder
LLM on a real labelled text set, accuracy before (zero-shot) and after.

The tasks (--task): `debian` (default): Debian packages
(engine_py.datasets.debian_packages(), this machine's apt lists: "name:
short description") and their archive section (games, libs, net, ...);
`pylib`: sections of the Python Library Reference
(engine_py.datasets.pylib.python_library_chapters(), the python3.X-doc
package: heading + first paragraphs) and the chapter they belong to
("Networking and Interprocess Communication", ...). Each is asked as a 4-way
multiple-choice question in GMoE's prompt format. Each question's choices
are the true label and three other labels drawn at random (fixed seed); the
prediction is the choice whose tokens are most likely after the prompt
(Trainer.predict). Train questions
come from the dataset's train split, test questions from its test split;
the same questions for every seed. Zero-shot is the base model (LoRA B = 0,
so it does not depend on the seed); each seed then fine-tunes LoRA on every
projection for the given epochs and is scored on the same test questions.
Reported: accuracy mean ± std over seeds, training time, tokens/s.

--side torch (or both) trains the same job with PyTorch + PEFT instead
(bench.finetune's PEFT training step): transformers' float32 model from the
same GGUF, LoRA r/alpha on the seven projections, the same questions,
the same batches in the same order (numpy default_rng(seed).permutation per
epoch, as Trainer.fit), the same lr schedule (Trainer._lr_at), AdamW and
clipping, and the same log-likelihood scoring rule. With --torch-init
engine (default) PEFT starts from the LoRA A matrices engine_py's Trainer
draws for that seed (its save_adapter, B = 0), so the two sides differ only
in their arithmetic; --torch-init peft uses PEFT's own initialisation.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["make_questions", "questions_digest", "main", "TASKS"]

_QUESTION = ("Please choose the correct answer to the question: which section of the Debian "
             "archive does this package belong to?\nPackage: {text}\n{options}\n"
             "Answer format: one of the sections above\nAnswer:")
_QUESTION_PYLIB = ("Please choose the correct answer to the question: which chapter of the Python "
                   "standard library documentation is this section from?\nSection: {text}\n"
                   "{options}\nAnswer format: one of the chapters above\nAnswer:")


def _load_debian():
    from engine_py.datasets import debian_packages

    return debian_packages()


def _load_pylib():
    from engine_py.datasets.pylib import python_library_chapters

    return python_library_chapters()


#: --task name -> (graph loader, question template, what the task asks, for the report)
TASKS = {
    "debian": (_load_debian, _QUESTION, "the Debian archive section of a package from its name and "
               "short description"),
    "pylib": (_load_pylib, _QUESTION_PYLIB, "the Python Library Reference chapter of a documentation "
              "section from its heading and first paragraphs (split by page)"),
}


def make_questions(texts, labels, names, idx, n: int, rng: np.random.Generator,
                   n_choices: int = 4, max_chars: int = 240, template: str = _QUESTION):
    """n questions from the nodes idx (drawn without replacement): (prompts,
    choices per prompt, index of the true choice, answers). A choice is
    " <label>" (with the space the prompt's "Answer:" leaves); template has
    the fields {text} (the node text, first max_chars characters) and
    {options}."""
    idx = np.asarray(idx)
    if n > len(idx):
        raise ValueError(f"asked for {n} questions from {len(idx)} nodes")
    if n_choices > len(names):
        raise ValueError(f"{n_choices} choices but only {len(names)} sections")
    pick = rng.choice(idx, size=n, replace=False)
    prompts, choices, y, answers = [], [], [], []
    for i in pick.tolist():
        true = int(labels[i])
        others = [c for c in range(len(names)) if c != true]
        opts = [true] + rng.choice(others, size=n_choices - 1, replace=False).tolist()
        rng.shuffle(opts)
        ch = [" " + names[c] for c in opts]
        options = " ".join(f"Answer{k + 1}: {names[c]}" for k, c in enumerate(opts))
        prompts.append(template.format(text=texts[i][:max_chars], options=options))
        choices.append(ch)
        y.append(opts.index(true))
        answers.append(ch[y[-1]])
    return prompts, choices, np.asarray(y, np.int64), answers


def questions_digest(tr_p, tr_a, te_p, te_c, te_y) -> str:
    """SHA-256 of the questions (train prompts and answers, test prompts,
    choices and true indices): equal digests = the same questions. The
    Debian data follow the machine's apt lists, so an `apt-get update`
    between two runs changes them."""
    import hashlib
    import json

    blob = json.dumps([tr_p, tr_a, te_p, te_c, [int(v) for v in te_y]], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _acc_rows(label: str, side: dict) -> list:
    acc = np.asarray([x["test_acc"] for x in side["seeds"]]) * 100
    rows = []
    if side.get("zero_shot_acc") is not None:
        rows.append(f"| {label}: zero-shot (base model) | {100 * side['zero_shot_acc']:.1f} | | |")
    for x in side["seeds"]:
        rows.append(f"| {label}: LoRA, seed {x['seed']} | {100 * x['test_acc']:.1f} | "
                    f"{x['train_seconds']:.0f} | {x['tokens_per_s']:.0f} |")
    if len(acc):
        rows.append(f"| **{label}: LoRA, mean ± std over {len(acc)} seed{'s' if len(acc) != 1 else ''}** | "
                    f"**{acc.mean():.1f} ± {acc.std():.1f}** | | |")
    return rows


def render_markdown(res: dict, machine_line: str) -> str:
    """The report: one block of rows per side (engine_py, PyTorch + PEFT)."""
    what = res.get("task_description") or TASKS["debian"][2]
    lines = [f"## LoRA fine-tuning on a real task (`{res['command']}`)", "",
             f"{res['model_name']}, LoRA r={res['r']}, alpha={res['alpha']} on q, k, v, o, gate, up, "
             f"down; {res['epochs']} epoch(s) of {res['train']} questions, batch {res['batch_size']}, "
             f"lr {res['lr']} (warm-up 10%, cosine); "
             f"{res['test']} test questions, {res['n_choices']} choices each "
             f"(chance {100 / res['n_choices']:.0f}%). Task `{res.get('task', 'debian')}`: {what} "
             f"({res['dataset']}).", "",
             "| model | test accuracy % | train time (s) | train tokens/s |",
             "|---|---:|---:|---:|"]
    if res.get("seeds") is not None:
        lines += _acc_rows(f"engine_py {res['precision']}", res)
    if res.get("torch") is not None:
        t = res["torch"]
        lines += _acc_rows(f"PyTorch + PEFT float32 (init: {t['init']})", t)
    lines += ["", f"Machine: {machine_line}", ""]
    return "\n".join(lines)


def _run_torch(path, args, seeds, tr_p, tr_a, te_p, te_c, te_y, threads, log) -> dict:
    """The PyTorch + PEFT side: per seed, the same batches, order, schedule
    and scoring rule as engine_py's Trainer (module docstring)."""
    import tempfile
    import types

    import torch

    from engine_py.bench.finetune import (torch_batch, torch_choice_logprobs, torch_encode,
                                          torch_lora_model, torch_train_step)
    from engine_py.finetune import Trainer

    def acc(model, tok):
        lp = torch_choice_logprobs(model, tok, te_p, te_c, batch_size=args.batch_size)
        return float((np.argmax(lp, axis=1) == te_y).mean())

    sched = types.SimpleNamespace(lr=args.lr, warmup_ratio=0.1, schedule="cosine")
    n = len(tr_p)
    per_epoch = (n + args.batch_size - 1) // args.batch_size
    total = per_epoch * args.epochs
    out = {"init": args.torch_init, "threads": threads, "torch": torch.__version__, "seeds": [],
           "zero_shot_acc": None}
    for s in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            adapter = None
            if args.torch_init == "engine":
                Trainer(path, seed=s, r=args.r, alpha=args.alpha).save_adapter(tmp)
                adapter = tmp
            model, tok = torch_lora_model(path, args.r, args.alpha, threads, seed=s,
                                          adapter_dir=adapter)
        if out["zero_shot_acc"] is None and not args.no_zero_shot:
            t0 = time.perf_counter()
            out["zero_shot_acc"] = acc(model, tok)   # B = 0: the base model
            log(f"PyTorch + PEFT zero-shot: {100 * out['zero_shot_acc']:.1f}% "
                f"({time.perf_counter() - t0:.0f} s)")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
        rng = np.random.default_rng(s)                      # Trainer.fit's batch order
        orders = [rng.permutation(n) for _ in range(args.epochs)]
        losses, ntok = [], 0
        t0 = time.perf_counter()
        for k in range(total):
            epoch, bi = divmod(k, per_epoch)
            idx = orders[epoch][bi * args.batch_size:(bi + 1) * args.batch_size]
            lr = Trainer._lr_at(sched, k, total)              # Trainer.fit's schedule
            for g in opt.param_groups:
                g["lr"] = lr
            b = torch_batch(tok, [tr_p[i] for i in idx], [tr_a[i] for i in idx])
            losses.append(torch_train_step(model, opt, params, b, 1.0))
            ntok += b[3]
            if not args.no_progress and (k + 1) % 10 == 0:
                log(f"  PyTorch + PEFT seed {s}: step {k + 1}/{total}, loss {losses[-1]:.4f}, "
                    f"{time.perf_counter() - t0:.0f} s")
        secs = time.perf_counter() - t0
        a = acc(model, tok)
        out["seeds"].append({"seed": s, "test_acc": a, "train_seconds": secs,
                             "tokens_per_s": ntok / secs, "losses": losses,
                             "first_loss": losses[0], "last_loss": losses[-1]})
        log(f"PyTorch + PEFT seed {s}: {100 * a:.1f}% after {secs:.0f} s of training")
        del model, opt
    out["train_tokens_per_epoch"] = int(sum(len(x) for x in torch_encode(tok, tr_p, tr_a)[0]))
    return out


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench finetune-task", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="debian", choices=sorted(TASKS),
                    help="debian (Debian archive sections, default) or pylib (Python Library "
                         "Reference chapters)")
    ap.add_argument("--model", default="smollm2", help="smollm2, qwen05 or a model path")
    ap.add_argument("--train", type=int, default=800, help="training questions")
    ap.add_argument("--test", type=int, default=400, help="test questions")
    ap.add_argument("--choices", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--r", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=4.0)
    ap.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                    help="the Trainer's product precision (bfloat16 where the Trainer has it)")
    ap.add_argument("--side", default="engine", choices=("engine", "torch", "both"),
                    help="engine_py's Trainer (default), PyTorch + PEFT float32, or both")
    ap.add_argument("--torch-init", default="engine", choices=("engine", "peft"),
                    help="PEFT's LoRA A: the one engine_py draws for the seed (default) or PEFT's own")
    ap.add_argument("--no-zero-shot", action="store_true", help="skip the zero-shot scoring")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--graph", default=None, help="a packed graph prefix "
                    "(engine_py.datasets.io.save_packed) instead of the task's data, for tests")
    from engine_py.bench import add_output_args

    add_output_args(ap, "finetune_task")
    args = ap.parse_args(argv)
    import engine_py
    from engine_py import models
    from engine_py.bench import finish, machine_line, start_run
    from engine_py.finetune import Trainer

    if args.threads is not None:
        engine_py.set_num_threads(args.threads)
    threads = engine_py.get_num_threads()
    path = {"smollm2": models.smollm2_path, "qwen05": models.qwen05_path}.get(args.model)
    path = path() if path is not None else args.model
    name = {"smollm2": "SmolLM2-135M-Instruct (Q4_1 GGUF)",
            "qwen05": "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF)"}.get(args.model, path)
    loader, template, what = TASKS[args.task]
    if args.graph is None or args.graph == "debian":
        g = loader()
    else:
        from engine_py.datasets.io import load_packed

        g = load_packed(args.graph)
    names = list(g.label_names)
    rng = np.random.default_rng(0)
    tr_p, _, _, tr_a = make_questions(g.texts, g.labels, names, g.train_idx, args.train, rng,
                                      args.choices, template=template)
    te_p, te_c, te_y, _ = make_questions(g.texts, g.labels, names, g.test_idx, args.test, rng,
                                         args.choices, template=template)
    kw = dict(r=args.r, alpha=args.alpha, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
              show_progress_bar=not args.no_progress)
    if args.precision != "float32":
        kw["precision"] = args.precision   # a TypeError here: this Trainer has no such option
    log = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, file=sys.stderr, flush=True))
    run = start_run()
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    zero, out, n_tokens = None, None, None
    if args.side in ("engine", "both"):
        out = []
        if not args.no_zero_shot:
            base = Trainer(path, seed=seeds[0], **kw)
            t0 = time.perf_counter()
            zero = base.score(te_p, te_c, te_y)
            log(f"zero-shot: {100 * zero:.1f}% ({time.perf_counter() - t0:.0f} s)")
            del base
        for s in seeds:
            tr = Trainer(path, seed=s, **kw)
            if n_tokens is None:
                n_tokens = int(sum(len(p) + len(a) for p, a in zip(tr._encode(tr_p, True),
                                                                  tr._encode(tr_a, False)))) * args.epochs
            t0 = time.perf_counter()
            tr.fit(tr_p, tr_a)
            secs = time.perf_counter() - t0
            acc = tr.score(te_p, te_c, te_y)
            losses = [float(h[1]) for h in tr.history_]   # (step, loss, lr)
            out.append({"seed": s, "test_acc": acc, "train_seconds": secs, "tokens_per_s": n_tokens / secs,
                        "first_loss": losses[0] if losses else None,
                        "last_loss": losses[-1] if losses else None, "losses": losses})
            log(f"seed {s}: {100 * acc:.1f}% after {secs:.0f} s of training")
            del tr
    torch_res = None
    if args.side in ("torch", "both"):
        torch_res = _run_torch(path, args, seeds, tr_p, tr_a, te_p, te_c, te_y, threads, log)
    machine = run.stop(threads=threads)
    res = {"command": "python -m engine_py bench finetune-task" + (" " + " ".join(argv) if argv else ""),
           "task": args.task, "task_description": what,
           "model": path, "model_name": name, "r": args.r, "alpha": args.alpha, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "precision": args.precision,
           "train": args.train, "test": args.test, "n_choices": args.choices,
           "dataset": (getattr(g, "provenance", None) or g.name).split(";")[0], "zero_shot_acc": zero,
           "dataset_provenance": getattr(g, "provenance", None) or g.name,
           "questions_sha256": questions_digest(tr_p, tr_a, te_p, te_c, te_y),
           "seeds": out, "torch": torch_res,
           "test_answer_positions": np.bincount(np.asarray(te_y), minlength=args.choices).tolist(),
           "train_tokens_per_epoch": n_tokens // args.epochs if n_tokens else None}
    finish(args, "finetune_task", render_markdown(res, machine_line(machine)), machine, res, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
