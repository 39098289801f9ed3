"""`python -m engine_py bench finetune-task`: LoRA fine-tuning of a decoder
LLM on a real labelled text set, accuracy before (zero-shot) and after.

The task: Debian packages (engine_py.datasets.debian_packages(), this
machine's apt lists: "name: short description") and their archive section
(games, libs, net, ...), asked as a 4-way multiple-choice question in GMoE's
prompt format. Each question's choices are the true section and three other
sections drawn at random (fixed seed); the prediction is the choice whose
tokens are most likely after the prompt (Trainer.predict). Train questions
come from the dataset's train split, test questions from its test split;
the same questions for every seed. Zero-shot is the base model (LoRA B = 0,
so it does not depend on the seed); each seed then fine-tunes LoRA on every
projection for the given epochs and is scored on the same test questions.
Reported: accuracy mean ± std over seeds, training time, tokens/s.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["make_questions", "main"]

_QUESTION = ("Please choose the correct answer to the question: which section of the Debian "
             "archive does this package belong to?\nPackage: {text}\n{options}\n"
             "Answer format: one of the sections above\nAnswer:")


def make_questions(texts, labels, names, idx, n: int, rng: np.random.Generator,
                   n_choices: int = 4, max_chars: int = 240):
    """n questions from the nodes idx (drawn without replacement): (prompts,
    choices per prompt, index of the true choice, answers). A choice is
    " <section>" (with the space the prompt's "Answer:" leaves)."""
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
        prompts.append(_QUESTION.format(text=texts[i][:max_chars], options=options))
        choices.append(ch)
        y.append(opts.index(true))
        answers.append(ch[y[-1]])
    return prompts, choices, np.asarray(y, np.int64), answers


def render_markdown(res: dict, machine_line: str) -> str:
    acc = np.asarray([s["test_acc"] for s in res["seeds"]]) * 100
    lines = [f"## LoRA fine-tuning on a real task (`{res['command']}`)", "",
             f"{res['model_name']}, LoRA r={res['r']}, alpha={res['alpha']} on q, k, v, o, gate, up, "
             f"down; {res['epochs']} epoch(s) of {res['train']} questions, batch {res['batch_size']}, "
             f"lr {res['lr']} (warm-up 10%, cosine), precision {res['precision']}; "
             f"{res['test']} test questions, {res['n_choices']} choices each "
             f"(chance {100 / res['n_choices']:.0f}%). Task: the Debian archive section of a package "
             f"from its name and short description ({res['dataset']}).", "",
             "| model | test accuracy % | train time (s) | train tokens/s |",
             "|---|---:|---:|---:|",
             f"| zero-shot (base model) | {100 * res['zero_shot_acc']:.1f} | | |"]
    for s in res["seeds"]:
        lines.append(f"| LoRA, seed {s['seed']} | {100 * s['test_acc']:.1f} | {s['train_seconds']:.0f} | "
                     f"{s['tokens_per_s']:.0f} |")
    lines += [f"| **LoRA, mean ± std over {len(acc)} seeds** | **{acc.mean():.1f} ± {acc.std():.1f}** "
              f"| | |", "",
              f"Machine: {machine_line}", ""]
    return "\n".join(lines)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench finetune-task", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
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
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--graph", default="debian", help="debian (default) or a packed graph prefix "
                    "(engine_py.datasets.io.save_packed), for tests")
    from engine_py.bench import add_output_args

    add_output_args(ap, "finetune_task")
    args = ap.parse_args(argv)
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
    if args.graph == "debian":
        from engine_py.datasets import debian_packages

        g = debian_packages()
    else:
        from engine_py.datasets.io import load_packed

        g = load_packed(args.graph)
    names = list(g.label_names)
    rng = np.random.default_rng(0)
    tr_p, _, _, tr_a = make_questions(g.texts, g.labels, names, g.train_idx, args.train, rng, args.choices)
    te_p, te_c, te_y, _ = make_questions(g.texts, g.labels, names, g.test_idx, args.test, rng, args.choices)
    kw = dict(r=args.r, alpha=args.alpha, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
              show_progress_bar=not args.no_progress)
    if args.precision != "float32":
        kw["precision"] = args.precision   # a TypeError here: this Trainer has no such option
    log = (lambda *a: None) if args.no_progress else (lambda *a: print(*a, file=sys.stderr, flush=True))
    run = start_run()
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    base = Trainer(path, seed=seeds[0], **kw)
    t0 = time.perf_counter()
    zero = base.score(te_p, te_c, te_y)
    log(f"zero-shot: {100 * zero:.1f}% ({time.perf_counter() - t0:.0f} s)")
    del base
    n_tokens = None
    out = []
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
                    "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None})
        log(f"seed {s}: {100 * acc:.1f}% after {secs:.0f} s of training")
    machine = run.stop(threads=engine_py.get_num_threads())
    res = {"command": "python -m engine_py bench finetune-task" + (" " + " ".join(argv) if argv else ""),
           "model": path, "model_name": name, "r": args.r, "alpha": args.alpha, "epochs": args.epochs,
           "batch_size": args.batch_size, "lr": args.lr, "precision": args.precision,
           "train": args.train, "test": args.test, "n_choices": args.choices,
           "dataset": (getattr(g, "provenance", None) or g.name).split(";")[0], "zero_shot_acc": zero,
           "seeds": out,
           "train_tokens_per_epoch": n_tokens // args.epochs if n_tokens else None}
    finish(args, "finetune_task", render_markdown(res, machine_line(machine)), machine, res, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
