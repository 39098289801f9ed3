"""engine_py.datasets.pylib: Python Library Reference sections labelled with
their chapter (the second real task of `bench finetune-task`).

The toctree parser, the chapter mapping and the page split run on small
hand-written Sphinx-like pages; the last test reads the installed
python3.X-doc package (.ci/run installs python3-doc when it is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from engine_py.datasets.pydocs import find_python_doc_dir, page_split
from engine_py.datasets.pylib import (library_chapters, library_chapters_from_pages,
                                      python_library_chapters, toctree_links)


def page(body: str) -> str:
    return ('<html><body><div class="related"><div class="toctree-wrapper"><ul>'
            '<li class="toctree-l1"><a class="reference internal" href="nav.html">nav</a></li>'
            '</ul></div></div><div class="documentwrapper"><div class="body" role="main">'
            f"{body}</div></div></body></html>")


def toc(*entries) -> str:
    """A toctree: entries (href, text, level 1 or 2)."""
    items = "".join(f'<li class="toctree-l{lv}"><a class="reference internal" href="{h}">{t}</a></li>'
                    for h, t, lv in entries)
    return f'<div class="toctree-wrapper compound"><ul>{items}</ul></div>'


def section(sid: str, title: str, paras=(), inner: str = "") -> str:
    ps = "".join(f"<p>{p}</p>" for p in paras)
    return f'<section id="{sid}"><h1>{title}</h1>{ps}{inner}</section>'


def module(name: str, n_sub: int, extra: str = "") -> str:
    subs = "".join(section(f"{name}-s{k}", f"{name} part {k}", [f"About {name} {k}."])
                   for k in range(n_sub))
    return page(section(f"module-{name}", f"{name} — the {name} module", [f"{name} does things."],
                        subs + extra))


def pages() -> dict:
    index = page(section("lib", "The Python Standard Library", ["Intro."], toc(
        ("text.html", "Text Processing Services", 1), ("string.html", "string", 2),
        ("ipc.html", "Networking and Interprocess Communication", 1),
        ("socket.html#module-socket", "socket", 2),
        ("tiny.html", "Tiny Chapter", 1),
        ("missing.html", "Not A Page", 1))))
    return {
        "library/index.html": index,
        "library/text.html": page(section("text", "Text Processing Services", ["Modules for text."],
                                          toc(("string.html", "string", 1), ("re.html", "re", 1),
                                              ("text.html", "self", 1)))),
        "library/ipc.html": page(section("ipc", "Networking and Interprocess Communication", [],
                                         toc(("socket.html", "socket", 1),
                                             ("asyncio.html", "asyncio", 1),
                                             ("../howto/sockets.html", "outside", 1),
                                             ("re.html", "re again", 1)))),
        "library/tiny.html": page(section("tiny", "Tiny Chapter", [], toc(("one.html", "one", 1)))),
        "library/string.html": module("string", 2),
        "library/re.html": module("re", 3),
        "library/socket.html": module("socket", 1),
        # asyncio's sub-page is reached through asyncio's own toctree
        "library/asyncio.html": module("asyncio", 0, toc(("asyncio-task.html", "tasks", 1))),
        "library/asyncio-task.html": module("asyncio-task", 2),
        "library/one.html": module("one", 0),
        "library/orphan.html": module("orphan", 5),
        "howto/sockets.html": module("sockets", 1),
    }


def test_toctree_links_resolve_and_skip_navigation():
    p = pages()
    got = toctree_links(p["library/ipc.html"], "library/ipc.html")
    assert [t for t, _, _ in got] == ["library/socket.html", "library/asyncio.html",
                                      "howto/sockets.html", "library/re.html"]
    idx = toctree_links(p["library/index.html"], "library/index.html")
    assert ("library/socket.html", "socket", 2) in idx           # fragment dropped, level kept
    assert not any(t == "library/nav.html" for t, _, _ in idx)  # the sidebar toctree is not the body's
    assert ("library/text.html", "self", 1) not in toctree_links(p["library/text.html"],
                                                                 "library/text.html")
    with pytest.raises(TypeError):
        toctree_links(b"<html>", "library/x.html")


def test_library_chapters_mapping():
    titles, owner = library_chapters(pages())
    assert titles == ["Text Processing Services", "Networking and Interprocess Communication",
                      "Tiny Chapter"]                              # missing.html is no chapter
    assert owner == {"library/string.html": "Text Processing Services",
                     "library/re.html": "Text Processing Services",      # first chapter wins
                     "library/socket.html": "Networking and Interprocess Communication",
                     "library/asyncio.html": "Networking and Interprocess Communication",
                     "library/asyncio-task.html": "Networking and Interprocess Communication",
                     "howto/sockets.html": "Networking and Interprocess Communication",
                     "library/one.html": "Tiny Chapter"}
    with pytest.raises(ValueError, match="index.html"):
        library_chapters({"library/x.html": page("")})
    with pytest.raises(ValueError, match="no chapters"):
        library_chapters({"library/index.html": page(section("a", "A", ["x"]))})


def test_library_chapters_graph():
    p = {k: v for k, v in pages().items() if k.startswith("library/")}
    g = library_chapters_from_pages(p, min_class_size=4, seed=0, provenance="test pages")
    # Tiny Chapter (1 section, 1 page) is left out; chapter and index pages give no nodes
    assert g.label_names == ["Networking and Interprocess Communication", "Text Processing Services"]
    assert g.name == "python-library-chapters" and g.provenance == "test pages"
    texts = dict(zip(g.texts, g.labels.tolist()))
    net, text = 0, 1
    assert texts["socket — the socket module\nsocket does things."] == net
    assert texts["asyncio-task part 1\nAbout asyncio-task 1."] == net
    assert texts["re part 2\nAbout re 2."] == text
    assert not any(t.startswith(("Text Processing", "Networking", "Tiny", "one", "orphan"))
                   for t in g.texts)
    assert g.num_nodes == 3 + 4 + 2 + 1 + 3                       # string, re, socket, asyncio, -task
    # split by page: a page's sections are all on one side
    page_of = {t: t.split(" ")[0] for t in g.texts}
    side = {}
    for name, idx in (("train", g.train_idx), ("test", g.test_idx)):
        for i in idx.tolist():
            side.setdefault(page_of[g.texts[i]], set()).add(name)
    assert all(len(s) == 1 for s in side.values()) and g.val_idx.size == 0
    for c in (net, text):                                          # each chapter on both sides
        assert c in g.labels[g.train_idx] and c in g.labels[g.test_idx]
    with pytest.raises(ValueError, match="no chapter has"):
        library_chapters_from_pages(p, min_class_size=100)


def test_page_split_keeps_pages_together():
    pages_ = ["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"] * 4 + ["e"] * 1
    labels = [0] * 10 + [1] * 5
    for seed in range(5):
        tr, va, te = page_split(pages_, labels, seed=seed, frac=(0.5, 0.0, 0.5))
        assert va.size == 0 and tr.size + te.size == 15
        assert not set(tr.tolist()) & set(te.tolist())
        for p in "abcde":
            ids = {i for i, q in enumerate(pages_) if q == p}
            assert ids <= set(tr.tolist()) or ids <= set(te.tolist())
        for c in (0, 1):   # two or more pages: both sides get one
            assert c in np.asarray(labels)[tr] and c in np.asarray(labels)[te]
    a = page_split(pages_, labels, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip(a, page_split(pages_, labels, seed=1)))
    with pytest.raises(ValueError, match="length"):
        page_split(pages_[:-1], labels)
    with pytest.raises(ValueError, match="frac"):
        page_split(pages_, labels, frac=(0.5, 0.5, 0.5))


def test_python_library_chapters_cache(tmp_path):
    root = tmp_path / "python3.99" / "html"
    (root / "library").mkdir(parents=True)
    for k, v in pages().items():
        if k.startswith("library/"):
            (root / k).write_text(v, encoding="utf-8")
    cache = tmp_path / "cache"
    g = python_library_chapters(root, cache_dir=cache, min_class_size=4)
    assert g.num_nodes == 13 and "python3.99-doc" in g.provenance
    assert len(list(cache.glob("pylib-*.npz"))) == 1
    h = python_library_chapters(root, cache_dir=cache, min_class_size=4)
    assert h.texts == g.texts and np.array_equal(h.test_idx, g.test_idx)
    with pytest.raises(FileNotFoundError):
        python_library_chapters(tmp_path / "missing", cache_dir=cache)


def test_python_library_chapters_real(tmp_path):
    """The installed python3.X-doc package (CI installs python3-doc)."""
    d = find_python_doc_dir()
    g = python_library_chapters(d, cache_dir=tmp_path)
    names = set(g.label_names)
    assert len(names) >= 15
    assert {"Networking and Interprocess Communication", "Data Types", "Development Tools",
            "Superseded Modules"} <= names
    counts = g.label_counts()
    assert min(counts.values()) >= 30
    # enough for bench finetune-task's 800 training / 400 test questions
    assert g.train_idx.size >= 800 and g.test_idx.size >= 400 and g.val_idx.size == 0
    lab = {t.split("\n")[0]: g.label_names[y] for t, y in zip(g.texts, g.labels)}
    assert lab["socket — Low-level networking interface"] == "Networking and Interprocess Communication"
    assert lab["json — JSON encoder and decoder"] == "Internet Data Handling"
    assert "-doc" in g.provenance
