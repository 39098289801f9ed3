"""A labelled text set from the Python documentation: which chapter of the
standard-library reference a section comes from.

Source: the same Debian ``python3.X-doc`` HTML build as pydocs.py
(/usr/share/doc/python3.X/html). The Library Reference's table of contents
(``library/index.html``) groups the modules into chapters ("Text Processing
Services", "Networking and Interprocess Communication", "Superseded
Modules", ...). Every chapter page (``library/text.html``, ...) lists its
module pages in a Sphinx toctree, and some module pages list sub-pages
(``asyncio.html`` -> ``asyncio-task.html``, ...):

- A library page belongs to the first chapter (in the index's order) whose
  toctree reaches it, directly or through its sub-pages' toctrees. The
  index and the chapter pages themselves are not used (their headings are
  the chapter titles), nor are pages no chapter reaches.
- Node = a section of such a page, text = its heading and first paragraphs
  (pydocs.graph_from_doc_pages: no page title prepended), label = the
  page's chapter title; edges = the section links among these pages.
- Chapters with fewer than ``min_class_size`` sections or fewer than two
  pages are left out (their pages too); the rest keep their titles as class
  names.
- Split: by page (pydocs.page_split, default 50/0/50): a test section's
  page is never seen in training, so a model cannot learn a module's name
  from its other sections.

library_chapters_from_pages() takes ``{relative path: html}`` and is tested
on small synthetic pages; python_library_chapters() reads the installed
package and caches the graph (docs/DATASETS.md).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import posixpath
from html.parser import HTMLParser
from pathlib import Path

from .graph import TextGraph
from .pydocs import _package_version, _read_pages, find_python_doc_dir, graph_from_doc_pages

__all__ = ["toctree_links", "library_chapters", "library_chapters_from_pages",
           "python_library_chapters"]

_FORMAT_VERSION = 1


class _TocParser(HTMLParser):
    """(href, link text, level) of the links inside the toctree-wrapper divs
    of the main body (the first <div class="body">, as pydocs' parser)."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.depth = 0          # div depth
        self.body_depth = None  # div depth of the main-body div while inside it
        self.found_body = False
        self.toc_depth = None   # div depth of the open toctree-wrapper
        self.li_level = []      # toctree-lN levels of the open <li>s
        self.links = []         # (href, text, level)
        self.cur = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "div":
            self.depth += 1
            if self.body_depth is None and not self.found_body and "body" in cls:
                self.body_depth, self.found_body = self.depth, True
            elif self.body_depth is not None and self.toc_depth is None \
                    and "toctree-wrapper" in cls:
                self.toc_depth = self.depth
            return
        if self.toc_depth is None:
            return
        if tag == "li":
            lv = [int(c[len("toctree-l"):]) for c in cls
                  if c.startswith("toctree-l") and c[len("toctree-l"):].isdigit()]
            self.li_level.append(lv[0] if lv else 0)
        elif tag == "a" and "reference" in cls and "internal" in cls and a.get("href"):
            self.cur = [a["href"], [], self.li_level[-1] if self.li_level else 0]

    def handle_endtag(self, tag):
        if tag == "div":
            if self.toc_depth is not None and self.depth == self.toc_depth:
                self.toc_depth = None
            if self.body_depth is not None and self.depth == self.body_depth:
                self.body_depth = None
            self.depth = max(0, self.depth - 1)
        elif tag == "li" and self.toc_depth is not None and self.li_level:
            self.li_level.pop()
        elif tag == "a" and self.cur is not None:
            href, parts, lv = self.cur
            self.links.append((href, " ".join("".join(parts).split()), lv))
            self.cur = None

    def handle_data(self, data):
        if self.cur is not None:
            self.cur[1].append(data)


def toctree_links(html: str, path: str) -> list:
    """[(target page path, link text, toctree level)] of the links inside the
    toctree-wrapper divs of a Sphinx page's main body, in document order: targets resolved
    against ``path`` (relative POSIX path of the page), fragments dropped,
    links to the page itself and outside the build dropped."""
    if not isinstance(html, str):
        raise TypeError(f"html must be a str, got {type(html).__name__}")
    p = _TocParser()
    p.feed(html)
    p.close()
    base = posixpath.dirname(path)
    out = []
    for href, text, lv in p.links:
        page = href.split("#", 1)[0].split("?", 1)[0].strip()
        if not page or ":" in page or page.startswith("/"):
            continue
        t = posixpath.normpath(posixpath.join(base, page))
        if t.startswith("..") or not t.endswith(".html") or t == path:
            continue
        out.append((t, text, lv))
    return out


def library_chapters(pages: dict, index: str = "library/index.html") -> tuple:
    """(chapter titles in index order, {page path: chapter title}) from the
    toctrees of ``pages`` ({relative path: html}). Chapters are the level-1
    toctree entries of ``index``; a page belongs to the first chapter whose
    toctree reaches it (breadth first through the pages' own toctrees).
    Chapter pages and the index are not in the mapping. Raises ValueError if
    the index is missing or lists no chapter."""
    if index not in pages:
        raise ValueError(f"{index} is not among the pages: not the Python documentation's html "
                         "folder?")
    chapters = []
    for t, text, lv in toctree_links(pages[index], index):
        if lv == 1 and t in pages and text and t not in [c for c, _ in chapters]:
            chapters.append((t, text))
    if not chapters:
        raise ValueError(f"{index} lists no chapters (no level-1 toctree entries)")
    chapter_pages = {c for c, _ in chapters} | {index}
    kids: dict = {}
    owner: dict = {}
    for cpage, title in chapters:
        queue = [cpage]
        while queue:
            x = queue.pop(0)
            if x not in kids:
                kids[x] = list(dict.fromkeys(t for t, _, _ in toctree_links(pages[x], x)
                                             if t in pages))
            for t in kids[x]:
                if t not in owner and t not in chapter_pages:
                    owner[t] = title
                    queue.append(t)
    return [title for _, title in chapters], owner


def library_chapters_from_pages(pages: dict, min_class_size: int = 30, max_paragraphs: int = 2,
                                max_chars: int = 1000, seed: int = 0, frac=(0.5, 0.0, 0.5),
                                provenance: str = "") -> TextGraph:
    """The library-chapter graph (module docstring) from ``{relative path:
    html}``. Raises ValueError when no chapter keeps enough sections."""
    if isinstance(min_class_size, bool) or not isinstance(min_class_size, int) or min_class_size < 0:
        raise ValueError(f"min_class_size must be a non-negative int, got {min_class_size!r}")
    _, owner = library_chapters(pages)
    sub = {p: pages[p] for p in sorted(owner)}
    if not sub:
        raise ValueError("no library page belongs to a chapter")
    kw = dict(min_class_size=0, max_paragraphs=max_paragraphs, max_chars=max_chars, seed=seed,
              label_of=owner.__getitem__)
    g = graph_from_doc_pages(sub, **kw)
    counts = g.label_counts()
    n_pages: dict = {}
    for p in sub:
        n_pages[owner[p]] = n_pages.get(owner[p], 0) + 1
    keep = {c for c, n in counts.items() if n >= min_class_size and n_pages[c] >= 2}
    if not keep:
        raise ValueError(f"no chapter has >= {min_class_size} sections on >= 2 pages")
    sub = {p: h for p, h in sub.items() if owner[p] in keep}
    return graph_from_doc_pages(sub, **kw, split_by_page=True, frac=frac, provenance=provenance,
                                name="python-library-chapters")


def python_library_chapters(doc_dir=None, cache_dir=None, min_class_size: int = 30,
                            max_paragraphs: int = 2, max_chars: int = 1000, seed: int = 0,
                            frac=(0.5, 0.0, 0.5)) -> TextGraph:
    """library_chapters_from_pages of the installed python3.X-doc package
    (doc_dir: its html folder, default pydocs.find_python_doc_dir()), cached
    in cache_dir (default $ENGINE_PY_CACHE or ~/.cache/engine_py) as
    pylib-<hash> (packed format), keyed by a SHA-256 of the pages and the
    arguments."""
    from .debian import default_cache_dir
    from .io import load_cached_packed, store_cached_packed

    doc_dir = os.fspath(doc_dir) if doc_dir is not None else find_python_doc_dir()
    if not os.path.isdir(doc_dir):
        raise FileNotFoundError(f"no documentation folder at {doc_dir}")
    pages = {k: v for k, v in _read_pages(doc_dir).items() if k.startswith("library/")}
    if not pages:
        raise FileNotFoundError(f"no library/*.html pages under {doc_dir}")
    h = hashlib.sha256()
    for k in sorted(pages):
        h.update(k.encode())
        h.update(b"\0")
        h.update(pages[k].encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    h.update(json.dumps([_FORMAT_VERSION, min_class_size, max_paragraphs, max_chars, seed,
                         list(frac)]).encode())
    key = h.hexdigest()[:16]
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    prefix = cdir / f"pylib-{key}"
    cached = load_cached_packed(prefix)
    if cached is not None:
        return cached
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    prov = (f"Python Library Reference chapters from {_package_version(doc_dir)} ({doc_dir}/library, "
            f"{len(pages)} .html files), read {today}; SHA-256 of the pages {h.hexdigest()[:16]}...; "
            f"rules: engine_py.datasets.pylib.library_chapters_from_pages (min_class_size="
            f"{min_class_size}, max_paragraphs={max_paragraphs}, max_chars={max_chars}, seed={seed}, "
            f"frac={tuple(frac)})")
    g = library_chapters_from_pages(pages, min_class_size=min_class_size,
                                    max_paragraphs=max_paragraphs, max_chars=max_chars, seed=seed,
                                    frac=frac, provenance=prov)
    store_cached_packed(g, prefix)
    return g
