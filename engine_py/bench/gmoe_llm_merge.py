"""`python -m engine_py bench gmoe-llm --merge A.json B.json ...`: one study
table from several `bench gmoe-llm` runs.

A study of many seeds and methods does not fit one session on a 2-core
machine, so it is run in pieces (`--seeds`, `--methods`) with the same
settings; this merges their JSONs (`--out x.json` of each run, or the
`x.json.partial` a run cut short leaves: its finished runs) into one result,
per task and method, each method's runs sorted by seed. Nothing is
re-measured and no number is edited: the merged JSON keeps every run with
the label of the file it came from, and the markdown's note lists every
source's command, the seeds per method, the tasks' question digests and
zero-shot accuracies (equal digests = the same questions).

Refused (ValueError): sources whose settings differ (model, epochs, batch,
lr, precision, question counts, r, experts, top-k, LoRA rank), the same task,
method and seed in two sources, a method whose trainable-parameter count
differs between sources, and a task whose question digests differ.
"""
from __future__ import annotations

from . import load_result as load_source   # noqa: F401 (the tests and main_merge use it)

#: the study settings every merged source must share
SETTINGS = ("model", "model_name", "epochs", "batch_size", "lr", "precision", "train", "test",
            "n_choices", "r", "experts", "top_k", "lora_r")


def merge(sources, method_order=None, note: str | None = None) -> dict:
    """The merged `results` dict (render_markdown's input) of sources =
    [(label, document, partial), ...]."""
    from .gmoe_llm import EXTRA_METHODS, METHODS

    if not sources:
        raise ValueError("nothing to merge")
    order = list(method_order or (METHODS + EXTRA_METHODS))
    base = sources[0][1]["results"]
    tasks: dict = {}
    for label, doc, _ in sources:
        res = doc["results"]
        diff = [k for k in SETTINGS if res.get(k) != base.get(k)]
        if diff:
            raise ValueError(f"{label}: settings differ from {sources[0][0]}'s: {diff}")
        for t in res["tasks"]:
            tk = tasks.setdefault(t["name"], {"name": t["name"], "description": t["description"],
                                              "zero_shot_acc": t["zero_shot_acc"], "methods": {},
                                              "zero_shot_by_run": [], "digests": set()})
            tk["zero_shot_by_run"].append([label, t["zero_shot_acc"]])
            if t.get("questions_sha256"):
                tk["digests"].add(t["questions_sha256"])
            for m in t["methods"]:
                if not m["runs"]:
                    continue
                mm = tk["methods"].setdefault(m["method"], {"method": m["method"],
                                                            "params": m["params"], "runs": []})
                if mm["params"] != m["params"]:
                    raise ValueError(f"{label}: {t['name']} {m['method']} has {m['params']} "
                                     f"trainable parameters, another source {mm['params']}")
                have = {r["seed"] for r in mm["runs"]}
                for r in m["runs"]:
                    if r["seed"] in have:
                        raise ValueError(f"{label}: {t['name']} {m['method']} seed {r['seed']} is "
                                         "in two sources")
                    mm["runs"].append(dict(r, source=label))
    out_tasks = []
    for tk in tasks.values():
        if len(tk["digests"]) > 1:
            raise ValueError(f"task {tk['name']}: the sources asked different questions "
                             f"(digests {sorted(d[:12] for d in tk['digests'])})")
        ms = sorted(tk["methods"].values(),
                    key=lambda m: order.index(m["method"]) if m["method"] in order else len(order))
        for m in ms:
            m["runs"].sort(key=lambda r: r["seed"])
        digests = sorted(tk.pop("digests"))
        tk["methods"] = ms
        if digests:
            tk["questions_sha256"] = digests
        out_tasks.append(tk)
    res = {k: base.get(k) for k in SETTINGS}
    res["command"] = (f"several runs merged (listed in the note), {res['epochs']} epoch(s) of "
                      f"{res['train']} questions")
    res["seeds"] = sorted({r["seed"] for t in out_tasks for m in t["methods"] for r in m["runs"]
                           if not m["method"].startswith("gmoe-no")})
    res["ablation_seeds"] = sorted({r["seed"] for t in out_tasks for m in t["methods"]
                                    for r in m["runs"] if m["method"].startswith("gmoe-no")})
    res["tasks"] = out_tasks
    res["sources"] = [{"label": label, "command": doc.get("command") or doc["results"].get("command"),
                       "partial": partial,
                       "runs": {f"{t['name']} {m['method']}": [r["seed"] for r in m["runs"]]
                                for t in doc["results"]["tasks"] for m in t["methods"] if m["runs"]}}
                      for label, doc, partial in sources]
    notes = [f"The table merges {len(sources)} runs with the same settings, each method's seeds "
             "sorted: " + "; ".join(f"{s['label']}: `{s['command']}`" +
                                    (" (cut short: the runs it finished)" if s["partial"] else "")
                                    for s in res["sources"]) + "."]
    notes.append("Seeds per task and method (the 'per seed' column lists them in this order): " +
                 "; ".join(t["name"] + ": " + ", ".join(
                     f"{m['method']} {'/'.join(str(r['seed']) for r in m['runs'])}"
                     for m in t["methods"]) for t in out_tasks) + ".")
    notes.append("Questions: " + "; ".join(
        f"{t['name']} " + (f"SHA-256 {t['questions_sha256'][0][:12]} in the sources that record it"
                           if t.get("questions_sha256") else "no digest recorded") +
        ", zero-shot " + ", ".join(f"{100 * z:.1f}%" for _, z in t["zero_shot_by_run"])
        for t in out_tasks) + " (one zero-shot accuracy per source).")
    if note:
        notes.append(note)
    res["note"] = " ".join(notes)
    return res


def main_merge(specs, out=None, markdown=None, note=None, section: str = "gmoe_llm") -> int:
    """The --merge entry point: JSON to `out` (*.json), the markdown section
    `section` to `markdown` (replaced or added, the rest of the file kept)."""
    from . import machine_info, machine_line, write_json, write_section
    from .gmoe_llm import render_markdown

    sources = [load_source(s) for s in specs]
    res = merge(sources, note=note)
    lines = [f"{label}: {machine_line(doc['machine'])}" for label, doc, _ in sources
             if doc.get("machine")]
    lines.append("merged: " + machine_line(machine_info()))
    md = render_markdown(res, " — ".join(lines))
    print(md)
    if out:
        write_json(out, {"benchmark": "gmoe_llm", "command": res["command"],
                         "machine": [doc.get("machine") for _, doc, _ in sources],
                         "results": res, "markdown": md}, indent=None)
        print(f"\nwrote {out}")
    if markdown:
        write_section(section, md, markdown)
        print(f"wrote {markdown}")
    return 0
