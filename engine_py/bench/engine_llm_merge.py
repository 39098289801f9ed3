"""`python -m engine_py bench engine-llm --merge A.json B.json ...`: one study
from several `bench engine-llm` runs that measured different graph × encoder
pairs with the same settings.

A full-graph pair with a 0.5B decoder takes hours on a 2-core machine (its
cache build alone ~50 min), so the study of three encoders is run in pieces
(`--models qwen05`, then `--models smollm2,minilm`). This puts the pairs of
those runs into one document. Nothing is re-measured and no number is
edited: every pair keeps all of its numbers from the one run that measured
it (each pair records the label of that run; the merged JSON lists every
run's command and machine). The markdown puts each run's pairs in a section
of tables of its own, headed by that run's command and machine, so no table
mixes numbers from two runs.

Refused (ValueError): sources whose measurement settings differ (every
option of the command except --graphs, --models, --out, --json,
--no-progress, --cache-dir), a graph whose node/edge counts, split or
provenance differ between sources, the same graph × encoder pair in two
sources, and a document that is not a `bench engine-llm` result.
"""
from __future__ import annotations

import shlex

#: options that choose what is measured or where it is written, not how
NOT_SETTINGS = ("graphs", "models", "out", "json", "no_progress", "cache_dir", "render_from", "merge")


def _parse(command: str):
    """A `bench engine-llm` command line's options (argparse namespace)."""
    from .engine_llm import build_parser

    words = shlex.split(command)
    try:
        i = words.index("engine-llm")
    except ValueError:
        raise ValueError(f"not a bench engine-llm command: {command!r}") from None
    return build_parser().parse_args(words[i + 1:])


def _settings(command: str) -> dict:
    """The measurement settings of a `bench engine-llm` command line."""
    return {k: v for k, v in vars(_parse(command)).items() if k not in NOT_SETTINGS}


def _planned(command: str, graphs: dict) -> list:
    """The (graph, encoder) pairs a command set out to measure."""
    models = [m.strip() for m in _parse(command).models.split(",") if m.strip()]
    return [(g, m) for m in models for g in graphs]


def merge(sources) -> dict:
    """The merged `results` dict (render_markdown's input) of sources =
    [(label, document, partial), ...], plus "sources" (what each one
    measured)."""
    if not sources:
        raise ValueError("nothing to merge")
    base_label, base_doc, _ = sources[0]
    base = _settings(base_doc["command"])
    graphs: dict = {}
    pairs, planned, seen = [], [], {}
    for label, doc, partial in sources:
        if doc.get("benchmark") != "engine_llm":
            raise ValueError(f"{label}: not a bench engine-llm result (benchmark "
                             f"{doc.get('benchmark')!r})")
        st = _settings(doc["command"])
        diff = sorted(k for k in set(base) | set(st) if base.get(k) != st.get(k))
        if diff:
            raise ValueError(f"{label}: settings differ from {base_label}'s: " +
                             ", ".join(f"{k} ({st.get(k)!r} vs {base.get(k)!r})" for k in diff))
        res = doc["results"]
        for n, g in res["graphs"].items():
            if n in graphs and graphs[n] != g:
                raise ValueError(f"{label}: graph {n} differs from an earlier source's "
                                 f"({g['num_nodes']:,} nodes, {g['num_edges']:,} edges vs "
                                 f"{graphs[n]['num_nodes']:,}, {graphs[n]['num_edges']:,})")
            graphs.setdefault(n, g)
        for key in _planned(doc["command"], res["graphs"]):
            if key not in planned:
                planned.append(key)
        for p in res["pairs"]:
            key = (p["graph"], p["model"])
            if key in seen:
                raise ValueError(f"{label}: pair {key[0]} × {key[1]} is also in {seen[key]}")
            seen[key] = label
            pairs.append(dict(p, source=label))
    out = {"pairs": pairs, "seeds": base_doc["results"]["seeds"], "planned_pairs": len(planned),
           "graphs": graphs}
    out["sources"] = [{"label": label, "command": doc["command"], "partial": bool(partial),
                       "complete": bool(doc.get("complete")),
                       "pairs": [f"{p['graph']} × {p['model']}" for p in doc["results"]["pairs"]]}
                      for label, doc, partial in sources]
    return out


def sections(res: dict, machines: list, command: str):
    """render_markdown's provenance paragraphs and per-run sections of a merged
    study: res from merge(), machines the sources' machine dicts in order."""
    from . import machine_line

    para = (f"Merged by `{command}` from {len(res['sources'])} runs with the same settings (no number "
            "re-measured or edited). Each run's graph × encoder pairs are in a section of their own below, "
            "so every table holds numbers from one run; the summary names the run behind each pair, and "
            "the graph table is the same in every run (checked when merging).")
    runs = []
    for s, m in zip(res["sources"], machines):
        cut = "" if s["complete"] else " (cut short: the pairs it finished)"
        runs.append((f"Run \"{s['label']}\": {', '.join(s['pairs']) or 'no pair'}",
                     f"Measured by `{s['command']}`{cut}. Machine: {machine_line(m) if m else 'not recorded'}",
                     [p for p in res["pairs"] if p.get("source") == s["label"]]))
    return [para], runs


def main_merge(specs, out_md=None, out_json=None) -> int:
    """The --merge entry point: the markdown to out_md (other benchmarks'
    sections in it kept), the merged JSON to out_json (default: out_md with
    .json)."""
    import os

    from . import load_result, with_kept_sections, write_json
    from .engine_llm import render_markdown

    sources = [load_result(s) for s in specs]
    command = "python -m engine_py bench engine-llm --merge " + " ".join(shlex.quote(s) for s in specs)
    res = merge(sources)
    small = any(doc.get("small_scale") for _, doc, _ in sources)
    samples = {}
    for _, doc, _ in sources:
        samples.update({k: (v["full_nodes"], v["nodes"]) for k, v in (doc.get("sampled_graphs") or {}).items()})
    machines = [doc.get("machine") for _, doc, _ in sources]
    prov, runs = sections(res, machines, command)
    md = render_markdown(res, small=small, samples=samples, provenance=prov, runs=runs)
    print(md)
    if out_md:
        text = with_kept_sections(md, out_md)
        with open(out_md, "w", encoding="utf-8") as f:
            f.write(text)
        jp = out_json or os.path.splitext(out_md)[0] + ".json"
        write_json(jp, {"benchmark": "engine_llm", "command": command, "merged": True, "small_scale": small,
                        "sampled_graphs": {k: {"full_nodes": a, "nodes": b} for k, (a, b) in samples.items()},
                        "complete": len(res["pairs"]) == res["planned_pairs"],
                        "machine": machines, "results": res})
        print(f"wrote {out_md} and {jp}")
    return 0
