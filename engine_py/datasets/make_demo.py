"""Regenerate the shipped demo graph from this machine's apt lists.

    python -m engine_py.datasets.make_demo [--per-section 400] [--out DIR]

Builds debian_packages(), keeps the packages of a fixed set of sections
(DEFAULT_SECTIONS: ten application-level sections whose package names do
not give the section away, unlike python3-*, librust-*, golang-*, *-doc,
lib*-dev), and extracts a dense induced subgraph with at most --per-section
packages per section by deterministic peeling: while a section has too many
packages, drop its lowest-degree packages (undirected degree in the current
induced graph, ties by package name order), at most a tenth of the section
per round, and recompute degrees. Labels are renumbered over the kept
sections (sorted names), a seeded stratified 60/20/20 split is drawn
(seed 0), and the result is written as DIR/debian_demo.nodes.jsonl.gz +
DIR/debian_demo.npz (engine_py.datasets.save_packed) with DIR/README.md
holding the provenance and statistics. Same apt lists + same code give the
same bytes (except the date in the provenance).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np

from .debian import _os_name, apt_version, debian_packages
from .graph import TextGraph, stratified_split
from .io import save_packed

DEFAULT_SECTIONS = ("admin", "devel", "games", "graphics", "net", "science", "sound", "text",
                    "utils", "x11")


def extract_demo(full: TextGraph, sections=DEFAULT_SECTIONS, per_section: int = 400,
                 seed: int = 0) -> TextGraph:
    """The peeled subgraph described in the module docstring."""
    pos = {s: i for i, s in enumerate(full.label_names)}
    missing = [s for s in sections if s not in pos]
    if missing:
        raise ValueError(f"sections {missing} are not classes of the full graph")
    wanted = [pos[s] for s in sections]
    cand = np.flatnonzero(np.isin(full.labels, wanted))
    sub = full.subgraph(cand)
    alive = np.arange(sub.num_nodes)
    while True:
        cur = sub.subgraph(alive)
        deg = cur.degrees(undirected=True)
        drop = []
        for c in wanted:
            idx = np.flatnonzero(cur.labels == c)
            excess = idx.size - per_section
            if excess <= 0:
                continue
            k = max(1, min(excess, idx.size // 10))
            order = np.lexsort((idx, deg[idx]))  # lowest degree first, then node order
            drop.append(idx[order[:k]])
        if not drop:
            break
        keep = np.ones(cur.num_nodes, dtype=bool)
        keep[np.concatenate(drop)] = False
        alive = alive[keep]
    demo = sub.subgraph(alive)
    names = sorted(sections)
    remap = np.full(full.num_classes, -1, dtype=np.int64)
    for i, s in enumerate(names):
        remap[pos[s]] = i
    labels = remap[demo.labels]
    tr, va, te = stratified_split(labels, seed=seed)
    return TextGraph(texts=demo.texts, edge_index=demo.edge_index, labels=labels,
                     label_names=names, train_idx=tr, val_idx=va, test_idx=te,
                     name="debian-demo", provenance="").validate()


def main(argv=None) -> int:
    here = Path(__file__).resolve().parent / "data"
    ap = argparse.ArgumentParser(prog="python -m engine_py.datasets.make_demo",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(here), help="output folder (default: the package's "
                    "data folder)")
    ap.add_argument("--per-section", type=int, default=400)
    ap.add_argument("--sections", default=",".join(DEFAULT_SECTIONS))
    ap.add_argument("--cache-dir", default=None)
    args = ap.parse_args(argv)
    full = debian_packages(cache_dir=args.cache_dir)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    g = extract_demo(full, sections, args.per_section)
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    g.provenance = (
        f"Generated from {_os_name()} apt package lists (`apt-cache dumpavail`, "
        f"{apt_version()}) on {today} by engine_py/datasets/make_demo.py: the full "
        f"debian_packages() graph ({full.num_nodes} packages, {full.num_edges} edges, "
        f"{full.num_classes} sections) restricted to sections {', '.join(sorted(sections))}, "
        f"peeled to at most {args.per_section} packages per section by lowest degree; "
        f"stratified 60/20/20 split, seed 0. Package metadata (c) the Debian project and "
        f"the package maintainers.")
    out = Path(args.out)
    t, a = save_packed(g, out / "debian_demo")
    s = g.summary()
    size = os.path.getsize(t) + os.path.getsize(a)
    deg = g.degrees()
    print(repr(g))
    print(json.dumps({k: v for k, v in s.items()}, indent=1))
    print(f"files: {t} ({os.path.getsize(t)} B), {a} ({os.path.getsize(a)} B); total {size} B")
    counts = "\n".join(f"| {k} | {v} |" for k, v in s["label_counts"].items())
    (out / "README.md").write_text(f"""# Shipped demo graph: `debian_demo`

Loaded by `engine_py.datasets.demo_graph()`. Files: `debian_demo.nodes.jsonl.gz` (one JSON
string per line: the node's text, in node order) and `debian_demo.npz` (`edge_index`,
`labels`, `train_idx`, `val_idx`, `test_idx` as int32, and `meta`, a JSON string with name,
provenance and label names); the format is described in docs/DATASETS.md ("packed").

## Provenance

{g.provenance}

Regenerate with `python -m engine_py.datasets.make_demo` (on a Debian/Ubuntu machine after
`apt-get update`; other apt lists give a different graph).

## Statistics

- {s['num_nodes']} nodes (packages), {s['num_edges']} directed edges (package -> a package it
  Depends / Pre-Depends / Recommends on), {s['num_classes']} classes (Debian sections)
- mean undirected degree {s['mean_degree']:.2f}, median {int(np.median(deg))}, isolated nodes
  {100 * s['isolated_fraction']:.1f}%
- node text: "name: short description" (the bookworm lists carry no long descriptions: those
  live in Translation files that are not downloaded here); mean {s['mean_text_chars']:.0f} chars
- split: train {s['train']} / val {s['val']} / test {s['test']} (stratified, seed 0)
- compressed size on disk: {size / 1e6:.2f} MB

| section | packages |
|---|---|
{counts}
""", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
