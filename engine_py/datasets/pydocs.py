"""A second real textual graph: the Python documentation's section-link graph.

Source: Debian's ``python3.X-doc`` package (the HTML build of the CPython
documentation, installed under /usr/share/doc/python3.X/html). The pages alone
are too few for a node-classification study (about 490 content pages), so the
nodes are the pages' *sections* (every ``<section id=...>`` of Sphinx's HTML,
nested ones included: about 4,500 in Python 3.11's docs):

- Node = one section; text = its heading, then its own first paragraphs (the
  ``<p>`` elements of that section, not of its sub-sections), at most
  ``max_paragraphs`` of them and ``max_chars`` characters. The page title is
  *not* prepended (for "What's New In Python 3.11 > ..." it would give the
  label away).
- Edge = an internal link (``<a href>`` to another page of the build, or to an
  anchor of the same page) inside a section's own content, from that section
  to the section holding the link's target: the innermost section that
  contains the element with the target id (a target ``<span>`` just before a
  ``<section>`` labels that section), or the page's first section when the
  link has no fragment or the fragment is unknown. Links to pages outside the
  graph, external links, self-loops and duplicates are dropped.
- Label = the page's top-level folder (library, whatsnew, howto, c-api, faq,
  reference, tutorial, using, distutils, extending, ...; pages at the root such
  as glossary.html are "root"); areas with fewer than ``min_class_size``
  sections become "other".

parse_doc_page() and graph_from_doc_pages() take HTML text, so they are tested
on small synthetic pages without the Debian package; python_docs() reads the
installed package and caches the result (see docs/DATASETS.md).
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from .graph import TextGraph, stratified_split

__all__ = ["parse_doc_page", "graph_from_doc_pages", "python_docs", "find_python_doc_dir",
           "page_split", "SKIP_PAGES"]

_FORMAT_VERSION = 1

#: Generated pages that are not documentation text (indices, search, the full
#: table of contents): never nodes, links to them are dropped.
SKIP_PAGES = re.compile(r"^(genindex.*|search|py-modindex|contents|download)\.html$")

_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_WS = re.compile(r"\s+")


def _clean(s: str) -> str:
    return _WS.sub(" ", s).strip()


class _PageParser(HTMLParser):
    """Collects the sections of the main body of one Sphinx HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.sections = []          # dicts, in document order
        self.ids = {}               # element id -> section index
        self.body_depth = None      # div depth of the main-body div while inside it
        self.found_body = False
        self.div_depth = 0
        self.stack = []             # open section indices
        self.pending = []           # ids of empty targets seen right before a section
        self.in_heading = None      # section index whose heading is being read
        self.heading_parts = []
        self.in_p = None            # section index whose paragraph is being read
        self.p_parts = []
        self.skip = 0               # inside a headerlink anchor

    # -------------------------------------------------------------- helpers
    def _cur(self):
        return self.stack[-1] if self.stack else None

    def _in_body(self):
        return self.body_depth is not None

    # --------------------------------------------------------------- events
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div":
            self.div_depth += 1
            cls = (a.get("class") or "").split()
            if self.body_depth is None and not self.found_body and "body" in cls:
                self.body_depth = self.div_depth
                self.found_body = True
            return
        if not self._in_body():
            return
        if tag == "section":
            idx = len(self.sections)
            sid = a.get("id") or ""
            self.sections.append({"id": sid, "title": "", "paragraphs": [], "links": [],
                                  "parent": self._cur()})
            if sid:
                self.ids.setdefault(sid, idx)
            for pid in self.pending:
                self.ids[pid] = idx   # a target just before a section labels that section
            self.pending = []
            self.stack.append(idx)
            return
        cur = self._cur()
        eid = a.get("id")
        if eid:
            if cur is not None:
                self.ids.setdefault(eid, cur)
            cls = (a.get("class") or "").split()
            if tag == "span" and "target" in cls:
                self.pending.append(eid)
            else:
                self.pending = []
        elif tag not in ("span",):
            self.pending = []
        if cur is None:
            return
        if tag in _HEADINGS and self.in_heading is None and not self.sections[cur]["title"]:
            self.in_heading = cur
            self.heading_parts = []
        elif tag == "p" and self.in_p is None:
            self.in_p = cur
            self.p_parts = []
        elif tag == "a":
            cls = (a.get("class") or "").split()
            if "headerlink" in cls:
                self.skip += 1
                return
            href = a.get("href")
            if href and "reference" in cls and "internal" in cls:
                self.sections[cur]["links"].append(href)

    def handle_endtag(self, tag):
        if tag == "div":
            if self.body_depth is not None and self.div_depth == self.body_depth:
                self.body_depth = None
            self.div_depth = max(0, self.div_depth - 1)
            return
        if not self._in_body():
            return
        if tag == "section":
            if self.stack:
                self.stack.pop()
            self.pending = []
        elif tag in _HEADINGS and self.in_heading is not None:
            self.sections[self.in_heading]["title"] = _clean("".join(self.heading_parts))
            self.in_heading = None
        elif tag == "p" and self.in_p is not None:
            t = _clean("".join(self.p_parts))
            if t:
                self.sections[self.in_p]["paragraphs"].append(t)
            self.in_p = None
        elif tag == "a" and self.skip:
            self.skip -= 1

    def handle_data(self, data):
        if not self._in_body() or self.skip:
            return
        if data.strip():
            self.pending = []
        if self.in_heading is not None:
            self.heading_parts.append(data)
        if self.in_p is not None:
            self.p_parts.append(data)


def parse_doc_page(html: str, path: str = "page.html") -> list:
    """Parse one Sphinx HTML page into its sections.

    Returns a list of dicts in document order, one per ``<section>`` of the
    main body (the first ``<div class="body">``): ``{"id", "title",
    "paragraphs" (the section's own <p> texts, whitespace collapsed),
    "links" (resolved internal link targets "dir/page.html#fragment", the
    fragment "" when there is none), "parent" (index of the enclosing
    section or None), "anchors" (every id that resolves to this section)}``.
    ``path`` is the page's path relative to the documentation root (POSIX,
    e.g. "library/os.html"); relative hrefs are resolved against it.

    Raises TypeError if html is not a str, ValueError if path does not name
    an .html file or the page has no main body div (not a Sphinx page)."""
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    if not isinstance(path, str) or not path.endswith(".html") or path.startswith("/") \
            or ".." in path.split("/"):
        raise ValueError(f"path must be a relative POSIX path of an .html page, got {path!r}")
    p = _PageParser()
    p.feed(html)
    p.close()
    if not p.found_body:
        raise ValueError(f"{path}: no <div class=\"body\"> found: not a Sphinx HTML page")
    base = posixpath.dirname(path)
    anchors = [[] for _ in p.sections]
    for eid, idx in p.ids.items():
        anchors[idx].append(eid)
    out = []
    for i, s in enumerate(p.sections):
        links = []
        for href in s["links"]:
            t = _resolve_href(href, path, base)
            if t is not None:
                links.append(t)
        out.append({"id": s["id"], "title": s["title"], "paragraphs": s["paragraphs"],
                    "links": links, "parent": s["parent"], "anchors": sorted(anchors[i])})
    return out


def _resolve_href(href: str, path: str, base: str):
    """"dir/page.html#frag" for a link inside the build, None otherwise."""
    href = href.strip()
    if not href or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href) or href.startswith("//"):
        return None   # external (http:, mailto:, ...)
    page, _, frag = href.partition("#")
    page = page.split("?", 1)[0]
    if not page:
        target = path
    else:
        target = posixpath.normpath(posixpath.join(base, page))
        if target.startswith("../") or target == ".." or target.startswith("/"):
            return None
    if not target.endswith(".html"):
        return None
    return f"{target}#{frag}"


def _label_of(path: str) -> str:
    return path.split("/", 1)[0] if "/" in path else "root"


def graph_from_doc_pages(pages: dict, min_class_size: int = 30, max_paragraphs: int = 2,
                         max_chars: int = 1000, seed: int = 0, provenance: str = "",
                         name: str = "python-docs", label_of=None, split_by_page: bool = False,
                         frac=(0.6, 0.2, 0.2)) -> TextGraph:
    """Build the section-link graph from ``{relative path: html text}``.

    Pages matching SKIP_PAGES are ignored. Nodes are numbered page by page in
    sorted path order, sections in document order; sections without a title
    and without text are dropped (links to their anchors go to the nearest
    kept enclosing section). Text, edges and labels as in the module
    docstring; split: stratified ``frac`` (60/20/20) with ``seed``.
    ``label_of(path) -> str`` replaces the default label (the page's top-level
    folder); ``split_by_page=True`` keeps every page's sections in one split
    (page_split). Raises ValueError if no page yields a section, or on bad
    arguments."""
    if not isinstance(pages, dict):
        raise TypeError("pages must be a dict {relative path: html}")
    for k, v in (("min_class_size", min_class_size), ("max_paragraphs", max_paragraphs),
                 ("max_chars", max_chars)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a non-negative int, got {v!r}")
    parsed = {}
    for path in sorted(pages):
        if SKIP_PAGES.match(posixpath.basename(path)):
            continue
        parsed[path] = parse_doc_page(pages[path], path)
    node_of = {}          # (path, section index) -> node id
    page_first = {}       # path -> node id of its first kept section
    anchor = {}           # (path, id) -> node id
    texts, labels, srcs = [], [], []
    for path, secs in parsed.items():
        kept = [None] * len(secs)
        for i, s in enumerate(secs):
            body = " ".join(s["paragraphs"][:max_paragraphs]) if max_paragraphs else ""
            if len(body) > max_chars:
                body = body[:max_chars].rsplit(" ", 1)[0]
            if not s["title"] and not body:
                kept[i] = kept[s["parent"]] if s["parent"] is not None else None
                continue
            nid = len(texts)
            kept[i] = nid
            texts.append(s["title"] + ("\n" + body if body else ""))
            labels.append((label_of or _label_of)(path))
            srcs.append((path, i))
            page_first.setdefault(path, nid)
        for i, s in enumerate(secs):
            if kept[i] is None:
                continue
            node_of[(path, i)] = kept[i]
            for a in s["anchors"]:
                anchor[(path, a)] = kept[i]
    if not texts:
        raise ValueError("no documentation sections found in the pages")
    src, dst = [], []
    for (path, i) in srcs:
        u = node_of[(path, i)]
        for link in parsed[path][i]["links"]:
            page, _, frag = link.partition("#")
            v = anchor.get((page, frag)) if frag else None
            if v is None:
                v = page_first.get(page)
            if v is None or v == u:
                continue
            src.append(u)
            dst.append(v)
    n = len(texts)
    if src:
        key = np.unique(np.asarray(src, np.int64) * n + np.asarray(dst, np.int64))
        edge_index = np.stack([key // n, key % n]).astype(np.int64)
    else:
        edge_index = np.zeros((2, 0), np.int64)
    counts: dict = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    labels = [lab if counts[lab] >= min_class_size else "other" for lab in labels]
    names = sorted(set(labels))
    pos = {s: k for k, s in enumerate(names)}
    y = np.asarray([pos[s] for s in labels], np.int64)
    if split_by_page:
        tr, va, te = page_split([p for p, _ in srcs], y, seed=seed, frac=frac)
    else:
        tr, va, te = stratified_split(y, seed=seed, frac=frac)
    return TextGraph(texts=texts, edge_index=edge_index, labels=y, label_names=names,
                     train_idx=tr, val_idx=va, test_idx=te, name=name,
                     provenance=provenance).validate()


def page_split(node_pages, labels, seed: int = 0, frac=(0.6, 0.2, 0.2)):
    """A split that keeps all the nodes of a page together (no section of a
    test page is seen in training). Within each class (label order; a page's
    class is its first node's), the class's pages in sorted order are
    permuted by one numpy.random.default_rng(seed); pages go to train until
    train holds >= round(frac[0] * n) of the class's n nodes, then to val
    until train + val hold >= round((frac[0] + frac[1]) * n), then to test.
    A class with two or more pages keeps at least one page in test when
    frac[2] > 0. Returns (train_idx, val_idx, test_idx), sorted int64."""
    labels = np.asarray(labels, np.int64)
    node_pages = list(node_pages)
    if len(node_pages) != len(labels):
        raise ValueError(f"node_pages ({len(node_pages)}) and labels ({len(labels)}) differ in length")
    if len(frac) != 3 or any(f < 0 for f in frac) or abs(sum(frac) - 1.0) > 1e-9:
        raise ValueError(f"frac must be three non-negative fractions summing to 1, got {frac}")
    nodes_of: dict = {}
    for i, p in enumerate(node_pages):
        nodes_of.setdefault(p, []).append(i)
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        pages = sorted(p for p, ids in nodes_of.items() if labels[ids[0]] == c)
        pages = [pages[k] for k in rng.permutation(len(pages))]
        n = sum(len(nodes_of[p]) for p in pages)
        goal_tr, goal_va = round(frac[0] * n), round((frac[0] + frac[1]) * n)
        last_test = len(pages) >= 2 and frac[2] > 0
        done = 0
        for j, p in enumerate(pages):
            if done < goal_tr and not (last_test and j == len(pages) - 1):
                k = 0
            elif done < goal_va and not (last_test and j == len(pages) - 1):
                k = 1
            else:
                k = 2
            parts[k].extend(nodes_of[p])
            done += len(nodes_of[p])
    return tuple(np.asarray(sorted(x), np.int64) for x in parts)


# ------------------------------------------------------------- the package
def find_python_doc_dir(root: str = "/usr/share/doc") -> str:
    """The html folder of the newest installed python3.X-doc package
    (``/usr/share/doc/python3.X/html``). Raises FileNotFoundError saying the
    apt command when none is installed."""
    cands = []
    for d in glob.glob(os.path.join(root, "python3.*", "html")):
        m = re.search(r"python3\.(\d+)", d)
        if m and os.path.isfile(os.path.join(d, "library", "index.html")):
            cands.append((int(m.group(1)), d))
    if not cands:
        raise FileNotFoundError(
            f"no Python HTML documentation under {root}/python3.*/html; install it with "
            "`apt-get install python3-doc` (Debian 12: python3.11-doc), or pass doc_dir=")
    return max(cands)[1]


def _read_pages(doc_dir: str) -> dict:
    pages = {}
    for p in sorted(Path(doc_dir).rglob("*.html")):
        rel = p.relative_to(doc_dir).as_posix()
        if rel.split("/", 1)[0].startswith("_"):
            continue   # _static, _sources, _images
        pages[rel] = p.read_text(encoding="utf-8", errors="replace")
    return pages


def _package_version(doc_dir: str) -> str:
    m = re.search(r"(python3\.\d+)", doc_dir)
    if not m:
        return "unknown package"
    pkg = m.group(1) + "-doc"
    try:
        import subprocess
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", pkg], capture_output=True,
                             text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return f"Debian package {pkg} {out.stdout.strip()}"
    except (OSError, ValueError):
        pass
    return f"Debian package {pkg} (version unknown)"


def python_docs(doc_dir=None, cache_dir=None, min_class_size: int = 30, max_paragraphs: int = 2,
                max_chars: int = 1000, seed: int = 0) -> TextGraph:
    """The Python documentation's section-link graph (graph_from_doc_pages) of
    the installed python3.X-doc package (doc_dir: its html folder, default
    find_python_doc_dir()). The graph is cached in cache_dir (default
    $ENGINE_PY_CACHE or ~/.cache/engine_py) as pydocs-<hash> (packed format),
    keyed by a SHA-256 of every page and the arguments."""
    from .debian import default_cache_dir
    from .io import load_cached_packed, store_cached_packed

    doc_dir = os.fspath(doc_dir) if doc_dir is not None else find_python_doc_dir()
    if not os.path.isdir(doc_dir):
        raise FileNotFoundError(f"no documentation folder at {doc_dir}")
    pages = _read_pages(doc_dir)
    if not pages:
        raise FileNotFoundError(f"no .html pages under {doc_dir}")
    h = hashlib.sha256()
    for k in sorted(pages):
        h.update(k.encode())
        h.update(b"\0")
        h.update(pages[k].encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(json.dumps([_FORMAT_VERSION, min_class_size, max_paragraphs, max_chars, seed]).encode())
    key = h.hexdigest()[:16]
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix = cdir / f"pydocs-{key}"
    cached = load_cached_packed(prefix)   # None: absent or corrupt, rebuild
    if cached is not None:
        return cached
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    prov = (f"Python HTML documentation from {_package_version(doc_dir)} ({doc_dir}, "
            f"{len(pages)} .html files), read {today}; SHA-256 of the pages {h.hexdigest()[:16]}...; "
            f"rules: engine_py.datasets.pydocs.graph_from_doc_pages (min_class_size="
            f"{min_class_size}, max_paragraphs={max_paragraphs}, max_chars={max_chars}, seed={seed})")
    g = graph_from_doc_pages(pages, min_class_size=min_class_size, max_paragraphs=max_paragraphs,
                             max_chars=max_chars, seed=seed, provenance=prov)
    store_cached_packed(g, prefix)
    return g
