"""A real textual graph from the machine's apt package lists.

Node = binary package, text = "{name}: {short description}" plus the long
description when the lists carry it, edges = Depends / Pre-Depends /
Recommends (from the depending package to the dependency), label = Section.
The exact rules (duplicates, alternatives, virtual packages, small sections,
split) are in docs/DATASETS.md and in the docstrings below.

parse_dumpavail() and graph_from_dumpavail() take the text of
`apt-cache dumpavail`, so they are testable without apt; debian_packages()
runs apt-cache and caches the result.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .graph import TextGraph, stratified_split

__all__ = ["parse_dumpavail", "graph_from_dumpavail", "debian_packages", "version_compare",
           "parse_relations", "default_cache_dir"]

# Bump when the graph construction changes, so old cache entries are not reused.
_FORMAT_VERSION = 3
_DEP_FIELDS = ("Pre-Depends", "Depends", "Recommends")


# ------------------------------------------------------------ Debian versions
def _order(c: str) -> int:
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    """dpkg's comparison of an upstream version or revision string."""
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = (a[i] > b[j]) - (a[i] < b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return first_diff
    return 0


def _split_version(v: str):
    v = v.strip()
    epoch = 0
    if ":" in v:
        e, v = v.split(":", 1)
        epoch = int(e) if e.isascii() and e.isdigit() else 0
    if "-" in v:
        up, rev = v.rsplit("-", 1)
    else:
        up, rev = v, ""
    return epoch, up, rev


def version_compare(a: str, b: str) -> int:
    """Compare two Debian version strings like dpkg --compare-versions:
    -1, 0 or 1. (epoch, then upstream, then revision; '~' sorts before
    everything, letters before other symbols, digit runs numerically.)"""
    ea, ua, ra = _split_version(a)
    eb, ub, rb = _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    c = _verrevcmp(ua, ub)
    if c:
        return c
    return _verrevcmp(ra, rb)


# --------------------------------------------------------------------- parser
def parse_dumpavail(text: str) -> list:
    """Parse RFC 822-style package records (the output of apt-cache
    dumpavail, or a Packages file) into a list of dicts {field: value}.

    Records are separated by blank lines. A line starting with a space or tab
    continues the previous field; continuation lines are kept joined by
    "\\n" with their first leading space removed (so the Description value
    is "short\\n long line\\n.\\n ..." in Debian's own encoding; use
    description_text() to turn it into plain text). Field names keep their
    case; a record without a Package field is skipped."""
    records = []
    cur: dict = {}
    last = None
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            if cur:
                if "Package" in cur:
                    records.append(cur)
                cur, last = {}, None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] += "\n" + line[1:]
            continue
        if ":" not in line:
            continue  # malformed line: ignore rather than guess
        k, v = line.split(":", 1)
        last = k.strip()
        cur[last] = v.strip()
    if cur and "Package" in cur:
        records.append(cur)
    return records


def description_text(desc: str) -> tuple:
    """(short, long) from a Description value as parse_dumpavail returns it.
    parse_dumpavail already removed the one leading space of each
    continuation line, so lines are kept as they are (a verbatim line keeps
    its extra indentation), except that a line "." is an empty line
    (paragraph break)."""
    lines = desc.split("\n")
    short = lines[0].strip()
    body = []
    for ln in lines[1:]:
        body.append("" if ln.strip() == "." else ln.rstrip())
    return short, "\n".join(body).strip("\n")


_REL_STRIP = re.compile(r"\([^)]*\)|\[[^\]]*\]|<[^>]*>")


def parse_relations(value: str) -> list:
    """Parse a Depends-style field into a list of OR-groups of package names:
    "a (>= 1.0), b:any | c [amd64], d <!nocheck>" -> [["a"], ["b", "c"], ["d"]].
    Version constraints, architecture lists, build profiles and
    architecture qualifiers (":any", ":amd64", ":native") are dropped."""
    groups = []
    for clause in value.replace("\n", " ").split(","):
        alts = []
        for alt in clause.split("|"):
            alt = _REL_STRIP.sub(" ", alt).strip()
            if not alt:
                continue
            name = alt.split()[0].split(":")[0].strip().lower()
            if name:
                alts.append(name)
        if alts:
            groups.append(alts)
    return groups


def _dedupe(records: list, arch=None, native_arch=None) -> dict:
    """One record per package name.

    If arch is given, records whose Architecture is neither arch nor "all"
    are dropped first. Among the rest the highest Version (dpkg ordering)
    wins; equal versions prefer native_arch (or arch), then "all", then the
    first record in input order."""
    pref = arch or native_arch
    best: dict = {}
    for r in records:
        a = r.get("Architecture", "")
        if arch is not None and a not in (arch, "all"):
            continue
        name = r["Package"].strip().lower()
        old = best.get(name)
        if old is None:
            best[name] = r
            continue
        c = version_compare(r.get("Version", "0"), old.get("Version", "0"))
        if c > 0:
            best[name] = r
        elif c == 0:
            rank = (lambda x: 2 if x == pref else (1 if x == "all" else 0))
            if rank(a) > rank(old.get("Architecture", "")):
                best[name] = r
    return best


def graph_from_dumpavail(text: str, min_section_size: int = 50, seed: int = 0,
                         include_recommends: bool = True, arch=None, native_arch=None,
                         provenance: str = "") -> TextGraph:
    """Build the Debian package graph from the text of apt-cache dumpavail.

    - Nodes: one per package name (duplicates resolved by _dedupe: highest
      version, then native arch, then "all"), sorted by name.
    - Text: "{name}: {short description}" and, when the record has a long
      description, "\\n{long description}".
    - Edges: for each OR-group in Pre-Depends, Depends and (if
      include_recommends) Recommends, one edge package -> dependency to the
      first alternative that resolves to a node: the package of that name, or
      else the only package that Provides it (virtual names with zero or
      several providers do not resolve). Self-loops and duplicates dropped;
      edges sorted by (src, dst). The graph is directed (use
      TextGraph.to_undirected() for message passing both ways).
    - Label: Section with the component prefix stripped ("contrib/net" ->
      "net"); a missing Section is "unknown"; sections with fewer than
      min_section_size packages are merged into "other". Class names sorted.
    - Split: seeded stratified 60/20/20 (stratified_split).
    """
    recs = _dedupe(parse_dumpavail(text), arch=arch, native_arch=native_arch)
    names = sorted(recs)
    if not names:
        raise ValueError("no package records in the input")
    index = {n: i for i, n in enumerate(names)}
    providers: dict = {}
    for n in names:
        for grp in parse_relations(recs[n].get("Provides", "")):
            for p in grp:
                if p not in index:
                    providers.setdefault(p, set()).add(index[n])

    def resolve(name):
        i = index.get(name)
        if i is not None:
            return i
        prov = providers.get(name)
        if prov is not None and len(prov) == 1:
            return next(iter(prov))
        return None

    fields = _DEP_FIELDS if include_recommends else _DEP_FIELDS[:2]
    texts, sections, src, dst = [], [], [], []
    for i, n in enumerate(names):
        r = recs[n]
        short, long = description_text(r.get("Description", ""))
        texts.append(f"{n}: {short}" + (f"\n{long}" if long else ""))
        sec = r.get("Section", "").strip()
        sections.append(sec.split("/")[-1].strip().lower() if sec else "unknown")
        for fld in fields:
            for grp in parse_relations(r.get(fld, "")):
                for alt in grp:
                    j = resolve(alt)
                    if j is not None:
                        if j != i:
                            src.append(i)
                            dst.append(j)
                        break
    if src:
        nn = len(names)
        key = np.unique(np.asarray(src, dtype=np.int64) * nn + np.asarray(dst, dtype=np.int64))
        edge_index = np.stack([key // nn, key % nn]).astype(np.int64)
    else:
        edge_index = np.zeros((2, 0), dtype=np.int64)
    counts: dict = {}
    for s in sections:
        counts[s] = counts.get(s, 0) + 1
    sections = [s if counts[s] >= min_section_size else "other" for s in sections]
    label_names = sorted(set(sections))
    pos = {s: k for k, s in enumerate(label_names)}
    labels = np.asarray([pos[s] for s in sections], dtype=np.int64)
    tr, va, te = stratified_split(labels, seed=seed)
    g = TextGraph(texts=texts, edge_index=edge_index, labels=labels, label_names=label_names,
                  train_idx=tr, val_idx=va, test_idx=te, name="debian-packages",
                  provenance=provenance)
    return g.validate()


# ----------------------------------------------------------------- apt-cache
def default_cache_dir() -> Path:
    """$ENGINE_PY_CACHE if set, else ~/.cache/engine_py."""
    env = os.environ.get("ENGINE_PY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "engine_py"


def _run(cmd) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
        return out.decode("utf-8", errors="replace")
    except (OSError, subprocess.SubprocessError):
        return ""


def _apt_dump() -> bytes:
    if shutil.which("apt-cache") is None:
        raise RuntimeError("debian_packages() needs apt-cache (Debian/Ubuntu) and it is not on "
                           "PATH; use demo_graph() for the shipped sample instead")
    try:
        proc = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"running `apt-cache dumpavail` failed: {e}") from None
    if proc.returncode != 0:
        raise RuntimeError(f"`apt-cache dumpavail` exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace').strip()[:300]}")
    if b"\nPackage:" not in b"\n" + proc.stdout:
        raise RuntimeError("`apt-cache dumpavail` returned no package records: the apt package "
                           "lists are empty; run `apt-get update` as root first")
    return proc.stdout


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "unknown OS"


def apt_version() -> str:
    """First line of `apt-cache --version`, e.g. "apt 2.6.1 (amd64)"."""
    out = _run(["apt-cache", "--version"]).strip()
    return out.splitlines()[0] if out else "apt (unknown version)"


def debian_packages(cache_dir=None, min_section_size: int = 50, seed: int = 0,
                    include_recommends: bool = True, arch=None) -> TextGraph:
    """The Debian package graph of this machine's apt lists (see
    graph_from_dumpavail for the construction rules).

    Runs `apt-cache dumpavail`; the parsed graph is cached in cache_dir
    (default $ENGINE_PY_CACHE or ~/.cache/engine_py) as
    debian-<hash>.nodes.jsonl.gz + debian-<hash>.npz, keyed by a SHA-256
    of the dumpavail output and the arguments, so a second call only re-runs
    apt-cache and loads the cache. arch restricts to packages of that
    architecture plus "all" (default: every architecture in the lists,
    duplicates resolved as documented). Raises RuntimeError if apt-cache is
    missing or the lists are empty."""
    from .io import load_cached_packed, store_cached_packed

    if min_section_size < 0:
        raise ValueError("min_section_size must be >= 0")
    dump = _apt_dump()
    native = _run(["dpkg", "--print-architecture"]).strip() or None
    h = hashlib.sha256(dump)
    h.update(json.dumps([_FORMAT_VERSION, min_section_size, seed, bool(include_recommends),
                         arch, native]).encode())
    key = h.hexdigest()[:16]
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix = cdir / f"debian-{key}"
    cached = load_cached_packed(prefix)   # None: absent or corrupt, rebuild
    if cached is not None:
        return cached
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    prov = (f"Debian package metadata from `apt-cache dumpavail` on {_os_name()} "
            f"({apt_version()}), read {today}; SHA-256 of the dump {h.hexdigest()[:16]}...; "
            f"rules: engine_py.datasets.debian.graph_from_dumpavail "
            f"(min_section_size={min_section_size}, seed={seed}, "
            f"include_recommends={include_recommends}, arch={arch})")
    g = graph_from_dumpavail(dump.decode("utf-8", errors="replace"),
                             min_section_size=min_section_size, seed=seed,
                             include_recommends=include_recommends, arch=arch,
                             native_arch=native, provenance=prov)
    store_cached_packed(g, prefix)
    return g
