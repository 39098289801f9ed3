"""Reading and writing TextGraphs on disk (no pickles anywhere).

Formats (documented in docs/DATASETS.md):

* tag dir (load_tag_dir / save_tag_dir): a folder with nodes.jsonl,
  edges.csv or edges.npy, split.json and an optional meta.json.
* packed (load_packed / save_packed): two files, <prefix>.nodes.jsonl.gz
  (texts) and <prefix>.npz (edge_index, labels, splits, and a JSON string
  with name, provenance, label_names). Used for the shipped demo graph and
  for the debian_packages() cache.
* CSV text-attributed graphs as distributed with TAPE / LLaGA style
  releases (load_csv_tag).
* the OGB ogbn-arxiv folder plus the raw titles and abstracts
  (load_ogbn_arxiv).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from .._validate import read_json
from .graph import TextGraph, stratified_split

__all__ = ["load_tag_dir", "save_tag_dir", "load_packed", "save_packed",
           "load_csv_tag", "load_ogbn_arxiv"]

csv.field_size_limit(1 << 30)


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"expected {what} at {path}, but it does not exist")
    return path


def _labels_from_values(values, label_names=None):
    """Map per-node label values (all str or all int) to (int64 labels, names)."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        lab = np.asarray(values, dtype=np.int64)
        if label_names is None:
            k = int(lab.max()) + 1 if lab.size else 0
            label_names = [str(i) for i in range(k)]
        return lab, list(label_names)
    if all(isinstance(v, str) for v in values):
        if label_names is None:
            label_names = sorted(set(values))
        pos = {s: i for i, s in enumerate(label_names)}
        missing = sorted(set(values) - set(pos))
        if missing:
            raise ValueError(f"labels {missing[:5]} are not in label_names")
        return np.asarray([pos[v] for v in values], dtype=np.int64), list(label_names)
    raise ValueError("labels must be all integers or all strings")


# --------------------------------------------------------------------- tag dir
def load_tag_dir(path) -> TextGraph:
    """Load a TextGraph from a tag dir (see docs/DATASETS.md):

    nodes.jsonl   one JSON object per line {"id": int, "text": str, "label": str|int};
                  ids are 0..N-1, each exactly once, in any order.
    edges.csv     two integer columns src,dst (optional header line), or
    edges.npy     an integer array of shape [E, 2] (loaded with allow_pickle=False).
    split.json    {"train": [...], "val": [...], "test": [...]} (node ids).
    meta.json     optional: {"name", "provenance", "label_names"}.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"tag dir {root} does not exist or is not a directory")
    try:
        return _load_tag_dir(root)
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError) as exc:
        # a value of the wrong JSON type somewhere (a list as a label name,
        # a huge integer ...), found by tests/test_robustness.py's property tests
        raise ValueError(f"{root}: malformed tag dir ({type(exc).__name__}: {exc})") from exc


def _load_tag_dir(root: Path) -> TextGraph:
    meta = {}
    if (root / "meta.json").exists():
        meta = read_json(root / "meta.json", "dataset metadata")
        if not isinstance(meta, dict):
            raise ValueError(f"{root / 'meta.json'}: expected a JSON object")
    nodes_path = _need(root / "nodes.jsonl", "the node file nodes.jsonl")
    recs = {}
    with open(nodes_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{nodes_path}:{lineno}: invalid JSON ({e.msg})") from None
            for key in ("id", "text", "label"):
                if not isinstance(obj, dict) or key not in obj:
                    raise ValueError(f"{nodes_path}:{lineno}: missing key {key!r}")
            nid = obj["id"]
            if not isinstance(nid, int) or isinstance(nid, bool):
                raise ValueError(f"{nodes_path}:{lineno}: id must be an integer")
            if nid in recs:
                raise ValueError(f"{nodes_path}:{lineno}: node id {nid} repeated")
            if not isinstance(obj["text"], str):
                raise ValueError(f"{nodes_path}:{lineno}: text must be a string")
            recs[nid] = (obj["text"], obj["label"])
    n = len(recs)
    if set(recs) != set(range(n)):
        bad = sorted(set(recs) - set(range(n)))[:3]
        raise ValueError(f"{nodes_path}: node ids must be 0..{n - 1}; found {bad}")
    texts = [recs[i][0] for i in range(n)]
    labels, names = _labels_from_values([recs[i][1] for i in range(n)],
                                        meta.get("label_names"))
    if (root / "edges.npy").exists():
        e = np.load(root / "edges.npy", allow_pickle=False)
        if e.ndim != 2 or e.shape[1] != 2:
            raise ValueError(f"{root / 'edges.npy'}: expected shape [E, 2], got {list(e.shape)}")
        edge_index = np.ascontiguousarray(e.T)
    elif (root / "edges.csv").exists():
        edge_index = _read_edge_csv(root / "edges.csv")
    else:
        raise FileNotFoundError(f"expected the edge file {root / 'edges.csv'} "
                                f"(or {root / 'edges.npy'}), but neither exists")
    split = read_json(_need(root / "split.json", "the split file split.json"), "split file")
    for key in ("train", "val", "test"):
        if key not in split:
            raise ValueError(f"{root / 'split.json'}: missing key {key!r}")
    g = TextGraph(texts=texts, edge_index=edge_index, labels=labels, label_names=names,
                  train_idx=split["train"], val_idx=split["val"], test_idx=split["test"],
                  name=str(meta.get("name", root.name)),
                  provenance=str(meta.get("provenance", f"loaded from {root}")))
    return g.validate()


def _read_edge_csv(path: Path) -> np.ndarray:
    """Two integer columns per line, comma (or whitespace) separated; a first
    line that is not numeric is a header and is skipped."""
    src, dst = [], []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{lineno}: expected two columns src,dst")
            try:
                a, b = int(parts[0]), int(parts[1])
            except ValueError:
                if lineno == 1:
                    continue  # header
                raise ValueError(f"{path}:{lineno}: non-integer node id in {line!r}") from None
            src.append(a)
            dst.append(b)
    return np.asarray([src, dst], dtype=np.int64).reshape(2, -1)


def save_tag_dir(graph: TextGraph, path, edges: str = "csv") -> Path:
    """Write graph as a tag dir (labels written as their names). edges is
    "csv" or "npy". Returns the folder path."""
    graph.validate()
    if edges not in ("csv", "npy"):
        raise ValueError(f"edges must be 'csv' or 'npy', got {edges!r}")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "nodes.jsonl", "w", encoding="utf-8") as f:
        for i, (t, y) in enumerate(zip(graph.texts, graph.labels.tolist())):
            f.write(json.dumps({"id": i, "text": t, "label": graph.label_names[y]},
                               ensure_ascii=False) + "\n")
    for stale in ("edges.csv", "edges.npy"):
        if (root / stale).exists():
            (root / stale).unlink()
    if edges == "npy":
        np.save(root / "edges.npy", np.ascontiguousarray(graph.edge_index.T), allow_pickle=False)
    else:
        with open(root / "edges.csv", "w", encoding="utf-8") as f:
            f.write("src,dst\n")
            for a, b in graph.edge_index.T.tolist():
                f.write(f"{a},{b}\n")
    (root / "split.json").write_text(json.dumps({
        "train": graph.train_idx.tolist(), "val": graph.val_idx.tolist(),
        "test": graph.test_idx.tolist()}), encoding="utf-8")
    (root / "meta.json").write_text(json.dumps({
        "name": graph.name, "provenance": graph.provenance,
        "label_names": graph.label_names}, ensure_ascii=False, indent=1), encoding="utf-8")
    return root


# ---------------------------------------------------------------------- packed
def save_packed(graph: TextGraph, prefix) -> tuple:
    """Write <prefix>.nodes.jsonl.gz (one JSON string per line: the node's
    text, node order) and <prefix>.npz (edge_index int32 or int64 [2,E],
    labels, train_idx, val_idx, test_idx, and `meta`, a JSON string holding
    name, provenance and label_names). Deterministic bytes (gzip mtime 0).
    Returns the two paths."""
    graph.validate()
    prefix = str(prefix)
    tpath, apath = prefix + ".nodes.jsonl.gz", prefix + ".npz"
    Path(tpath).parent.mkdir(parents=True, exist_ok=True)
    with open(tpath, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0,
                           filename="") as gz:
            w = io.TextIOWrapper(gz, encoding="utf-8", newline="\n")
            for t in graph.texts:
                w.write(json.dumps(t, ensure_ascii=False) + "\n")
            w.flush()
            w.detach()
    n = graph.num_nodes
    idt = np.int32 if n < 2**31 else np.int64
    meta = json.dumps({"name": graph.name, "provenance": graph.provenance,
                       "label_names": graph.label_names, "num_nodes": n},
                      ensure_ascii=False)
    np.savez_compressed(apath, edge_index=graph.edge_index.astype(idt),
                        labels=graph.labels.astype(idt), train_idx=graph.train_idx.astype(idt),
                        val_idx=graph.val_idx.astype(idt), test_idx=graph.test_idx.astype(idt),
                        meta=np.array(meta))
    return tpath, apath


def load_cached_packed(prefix) -> Optional[TextGraph]:
    """The graph save_packed wrote at prefix when both files are there and
    load; None when they are absent or the entry is corrupt (the caller
    rebuilds and overwrites it)."""
    if not (Path(str(prefix) + ".npz").exists() and Path(str(prefix) + ".nodes.jsonl.gz").exists()):
        return None
    try:
        return load_packed(prefix)
    except (ValueError, OSError, KeyError):
        return None


def store_cached_packed(g: TextGraph, prefix) -> None:
    """Write g at prefix for load_cached_packed: both files under temporary
    names in the same folder, then renamed, so readers never see half an
    entry. An unwritable cache is not an error (the graph is rebuilt next
    time)."""
    prefix = Path(prefix)
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        t, a = save_packed(g, prefix.parent / f".tmp-{os.getpid()}-{prefix.name}")
        os.replace(t, str(prefix) + ".nodes.jsonl.gz")
        os.replace(a, str(prefix) + ".npz")
    except OSError:
        pass


def load_packed(prefix) -> TextGraph:
    """Load what save_packed wrote (np.load with allow_pickle=False)."""
    prefix = str(prefix)
    tpath = _need(Path(prefix + ".nodes.jsonl.gz"), "the packed text file")
    apath = _need(Path(prefix + ".npz"), "the packed array file")
    with np.load(apath, allow_pickle=False) as z:
        for key in ("edge_index", "labels", "train_idx", "val_idx", "test_idx", "meta"):
            if key not in z.files:
                raise ValueError(f"{apath}: missing array {key!r}")
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    with gzip.open(tpath, "rt", encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()]
    if len(texts) != int(meta.get("num_nodes", len(texts))):
        raise ValueError(f"{tpath}: {len(texts)} texts but meta says {meta['num_nodes']} nodes")
    g = TextGraph(texts=texts, edge_index=arrays["edge_index"], labels=arrays["labels"],
                  label_names=meta["label_names"], train_idx=arrays["train_idx"],
                  val_idx=arrays["val_idx"], test_idx=arrays["test_idx"],
                  name=meta.get("name", "graph"), provenance=meta.get("provenance", ""))
    return g.validate()


# ------------------------------------------------------------ TAPE-style CSVs
_TEXT_COLUMNS = ("text", "raw_text")
_TITLE_COLUMNS = ("title",)
_ABSTRACT_COLUMNS = ("abstract", "abs")
_LABEL_COLUMNS = ("label", "category", "label_name", "y")
_ID_COLUMNS = ("node_id", "id", "paper_id", "nid")


def _pick(columns, candidates):
    low = {c.strip().lower(): c for c in columns}
    for cand in candidates:
        if cand in low:
            return low[cand]
    return None


def load_csv_tag(path, *, nodes_file: str = "nodes.csv", edges_file=None,
                 split_file: str = "split.json", text_columns=None, label_column=None,
                 id_column=None, name=None, seed: int = 0) -> TextGraph:
    """Load a text-attributed graph from CSV files, the layout of TAPE /
    LLaGA-style releases of Cora, PubMed, arXiv and similar.

    path is a folder holding:
      nodes.csv  a header row, then one row per node. Columns (case-insensitive):
                 - id: first of node_id, id, paper_id, nid; optional, else row order.
                   Ids must be 0..N-1 (each once).
                 - text: `text` or `raw_text`; otherwise `title` and/or `abstract`
                   (or `abs`) joined as "Title: {title}\\nAbstract: {abstract}";
                   or name the columns with text_columns=[...] (joined by "\\n").
                 - label: first of label, category, label_name, y (int or str);
                   or label_column=...
                 - split: optional column `split` with train / val (or valid) / test.
      edges      edges.csv (or edge_list.csv, edges.txt, edge_index.npy): two integer
                 columns src,dst (comma or whitespace separated, optional header);
                 an .npy file holds [E, 2] or [2, E] (E != 2 then; [E, 2] wins if ambiguous).
      split.json optional {"train": [...], "val": [...], "test": [...]}.
    Without a split column or split.json a seeded stratified 60/20/20 split is made.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"CSV graph folder {root} does not exist")
    npath = _need(root / nodes_file, f"the node table {nodes_file}")
    with open(npath, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
        columns = rows[0].keys() if rows else []
    if not rows:
        raise ValueError(f"{npath}: no rows")
    for i, row in enumerate(rows):
        # csv.DictReader puts extra fields under the key None and fills missing ones with None
        if None in row or None in row.values():
            raise ValueError(f"{npath}: data row {i + 1} has {'more' if None in row else 'fewer'} "
                             "fields than the header")
    idc = id_column or _pick(columns, _ID_COLUMNS)
    labc = label_column or _pick(columns, _LABEL_COLUMNS)
    if labc is None or labc not in columns:
        raise ValueError(f"{npath}: no label column (looked for {', '.join(_LABEL_COLUMNS)}; "
                         f"columns are {list(columns)})")
    if text_columns is not None:
        missing = [c for c in text_columns if c not in columns]
        if missing:
            raise ValueError(f"{npath}: text columns {missing} not found (columns are "
                             f"{list(columns)})")

        def text_of(r):
            return "\n".join((r[c] or "").strip() for c in text_columns)
    else:
        tc = _pick(columns, _TEXT_COLUMNS)
        ti = _pick(columns, _TITLE_COLUMNS)
        ab = _pick(columns, _ABSTRACT_COLUMNS)
        if tc is None and ti is None and ab is None:
            raise ValueError(f"{npath}: no text column (looked for text, raw_text, title, "
                             f"abstract; columns are {list(columns)})")

        def text_of(r):
            if tc is not None:
                return (r[tc] or "").strip()
            parts = []
            if ti is not None:
                parts.append("Title: " + (r[ti] or "").strip())
            if ab is not None:
                parts.append("Abstract: " + (r[ab] or "").strip())
            return "\n".join(parts)
    n = len(rows)
    if idc is not None and idc in columns:
        try:
            ids = [int(r[idc]) for r in rows]
        except (TypeError, ValueError):
            raise ValueError(f"{npath}: column {idc!r} must hold integer ids") from None
        if sorted(ids) != list(range(n)):
            raise ValueError(f"{npath}: ids in column {idc!r} must be 0..{n - 1}, each once")
    else:
        ids = list(range(n))
    order = np.argsort(np.asarray(ids))
    rows = [rows[i] for i in order]
    texts = [text_of(r) for r in rows]
    raw = [(r[labc] or "").strip() for r in rows]
    try:
        vals = [int(v) for v in raw]
    except ValueError:
        vals = raw
    labels, names = _labels_from_values(vals)
    # edges
    cands = [edges_file] if edges_file else ["edges.csv", "edge_list.csv", "edges.txt",
                                             "edge_index.npy", "edges.npy"]
    epath = next((root / c for c in cands if (root / c).exists()), None)
    if epath is None:
        raise FileNotFoundError(f"expected an edge file in {root} (one of {', '.join(cands)})")
    if epath.suffix == ".npy":
        e = np.load(epath, allow_pickle=False)
        if e.ndim == 2 and e.shape[1] == 2:
            edge_index = np.ascontiguousarray(e.T)
        elif e.ndim == 2 and e.shape[0] == 2:
            edge_index = e
        else:
            raise ValueError(f"{epath}: expected shape [E, 2] or [2, E], got {list(e.shape)}")
    else:
        edge_index = _read_edge_csv(epath)
    # split
    sc = _pick(columns, ("split",))
    if (root / split_file).exists():
        sp = read_json(root / split_file, "split file")
        tr, va, te = sp["train"], sp.get("val", sp.get("valid")), sp["test"]
        if va is None:
            raise ValueError(f"{root / split_file}: missing key 'val'")
    elif sc is not None:
        s = [(r[sc] or "").strip().lower() for r in rows]
        bad = sorted(set(s) - {"train", "val", "valid", "test"})
        if bad:
            raise ValueError(f"{npath}: split column holds {bad}; expected train/val/test")
        s = np.asarray(s)
        tr = np.flatnonzero(s == "train")
        va = np.flatnonzero((s == "val") | (s == "valid"))
        te = np.flatnonzero(s == "test")
    else:
        tr, va, te = stratified_split(labels, seed=seed)
    g = TextGraph(texts=texts, edge_index=edge_index, labels=labels, label_names=names,
                  train_idx=tr, val_idx=va, test_idx=te, name=name or root.name,
                  provenance=f"loaded from CSV files in {root}")
    return g.validate()


# ------------------------------------------------------------------ ogbn-arxiv
def _gz_or_plain(path: Path):
    for p in (path, path.with_name(path.name + ".gz")):
        if p.exists():
            return p
    return None


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _read_int_column(path: Path, what: str, skip_header: bool = False) -> np.ndarray:
    vals = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                vals.append(int(line.split(",")[0]))
            except ValueError:
                if lineno == 1:
                    continue
                raise ValueError(f"{path}:{lineno}: expected an integer ({what})") from None
    return np.asarray(vals, dtype=np.int64)


def load_ogbn_arxiv(root, titleabs=None, name: str = "ogbn-arxiv") -> TextGraph:
    """Load ogbn-arxiv with raw texts from the OGB folder layout:

      root/raw/edge.csv.gz                      src,dst per line (no header)
      root/raw/node-label.csv.gz                one label id per line
      root/split/time/{train,valid,test}.csv.gz one node index per line
      root/mapping/nodeidx2paperid.csv.gz       header, then "node idx,paper id"
      root/mapping/labelidx2arxivcategeory.csv.gz   optional: header, then
                                                "label idx,arxiv category" (OGB's spelling)
      titleabs.tsv or titleabs.tsv.gz           "paper id<TAB>title<TAB>abstract" per line;
                                                looked for in root, root/raw, root/.. ,
                                                or given as titleabs=path.
    Plain (un-gzipped) variants of every file are accepted too. Node text is
    "Title: {title}\\nAbstract: {abstract}". The edges are kept as given
    (directed citations; OGB's loader does not add reverse edges either).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"ogbn-arxiv folder {root} does not exist")

    def need(rel):
        p = _gz_or_plain(root / rel)
        if p is None:
            raise FileNotFoundError(f"expected {root / (rel + '.gz')} (OGB ogbn-arxiv layout), "
                                    f"but it does not exist")
        return p

    edge_path = need("raw/edge.csv")
    edge_index = _read_edge_csv(edge_path)
    labels = _read_int_column(need("raw/node-label.csv"), "label")
    n = labels.size
    splits = [_read_int_column(need(f"split/time/{s}.csv"), "node index")
              for s in ("train", "valid", "test")]
    map_path = need("mapping/nodeidx2paperid.csv")
    paper_of = np.full(n, -1, dtype=np.int64)
    with _open_text(map_path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(",")
            if len(parts) < 2:
                continue
            try:
                i, pid = int(parts[0]), int(parts[1])
            except ValueError:
                if lineno == 1:
                    continue
                raise ValueError(f"{map_path}:{lineno}: expected 'node idx,paper id'") from None
            if not 0 <= i < n:
                raise ValueError(f"{map_path}:{lineno}: node index {i} outside [0, {n})")
            paper_of[i] = pid
    if np.any(paper_of < 0):
        raise ValueError(f"{map_path}: no paper id for node {int(np.flatnonzero(paper_of < 0)[0])}")
    if titleabs is None:
        for d in (root, root / "raw", root.parent):
            titleabs = _gz_or_plain(d / "titleabs.tsv")
            if titleabs is not None:
                break
        if titleabs is None:
            raise FileNotFoundError(f"expected titleabs.tsv(.gz) (paper id, title, abstract) "
                                    f"in {root}, {root / 'raw'} or {root.parent}; pass "
                                    f"titleabs=path if it is elsewhere")
    titleabs = _need(Path(titleabs), "the titles/abstracts file")
    wanted = {int(p): i for i, p in enumerate(paper_of.tolist())}
    texts = [None] * n
    with _open_text(titleabs) as f:
        for line in f:
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) < 2:
                continue
            try:
                pid = int(parts[0])
            except ValueError:
                continue  # header or blank first line in some copies
            i = wanted.get(pid)
            if i is not None:
                title = parts[1].strip()
                abstract = parts[2].strip() if len(parts) > 2 else ""
                texts[i] = f"Title: {title}\nAbstract: {abstract}"
    missing = [i for i, t in enumerate(texts) if t is None]
    if missing:
        raise ValueError(f"{titleabs}: no title/abstract for {len(missing)} node(s), e.g. node "
                         f"{missing[0]} (paper id {int(paper_of[missing[0]])})")
    k = int(labels.max()) + 1 if n else 0
    names = [str(i) for i in range(k)]
    cat_path = _gz_or_plain(root / "mapping/labelidx2arxivcategeory.csv")
    if cat_path is not None:
        with _open_text(cat_path) as f:
            for row in csv.reader(f):
                if len(row) >= 2 and row[0].strip().isdigit() and int(row[0]) < k:
                    cat = row[1].strip()
                    p = cat.split()
                    if len(p) == 3 and p[0] == "arxiv":  # "arxiv cs ai" -> "cs.AI"
                        cat = f"{p[1]}.{p[2].upper()}"
                    names[int(row[0])] = cat
    g = TextGraph(texts=texts, edge_index=edge_index, labels=labels, label_names=names,
                  train_idx=splits[0], val_idx=splits[1], test_idx=splits[2], name=name,
                  provenance=f"OGB ogbn-arxiv loaded from {root} with texts from {titleabs}")
    return g.validate()
