"""engine_py.datasets.pydocs: the Python documentation's section-link graph.

The parser and the graph builder run on small hand-written Sphinx-like pages;
the real python3.X-doc package is read only if it is installed (skipped
otherwise: CI does not install it)."""
from __future__ import annotations

import os

import numpy as np
import pytest

from engine_py.datasets import graph_from_doc_pages, parse_doc_page, python_docs
from engine_py.datasets.pydocs import find_python_doc_dir


def page(body: str, title: str = "T") -> str:
    """A page shaped like Sphinx's (sidebar and navigation outside the body)."""
    return (f"<html><head><title>{title}</title></head><body>"
            '<div class="related"><a class="reference internal" href="nav.html">nav</a></div>'
            '<div class="documentwrapper"><div class="bodywrapper">'
            f'<div class="body" role="main">{body}</div></div></div>'
            '<div class="sphinxsidebar"><a class="reference internal" href="side.html#x">s</a></div>'
            "</body></html>")


OS_PAGE = page(
    '<section id="module-os">'
    '<h1>os — Miscellaneous<a class="headerlink" href="#module-os">¶</a></h1>'
    "<p>This module provides a portable   way.</p>"
    '<p>See <a class="reference internal" href="#files">Files</a> and '
    '<a class="reference internal" href="../tutorial/intro.html">the tutorial</a>, '
    '<a class="reference external" href="https://python.org/x.html">ext</a>, '
    '<a class="reference internal" href="../../outside.html">up</a>.</p>'
    "<p>Third paragraph.</p>"
    '<span class="target" id="files-label"></span>'
    '<section id="files"><h2>Files &amp; dirs<a class="headerlink" href="#files">¶</a></h2>'
    '<dl><dt id="os.open">os.open(path)</dt><dd><p>Open a file, see '
    '<a class="reference internal" href="os.path.html#os.path.join">join</a>.</p></dd></dl>'
    "</section>"
    '<section id="empty"><div class="x"></div></section>'
    "</section>")
PATH_PAGE = page(
    '<section id="module-os.path"><h1>os.path</h1><p>Pathname functions.</p>'
    '<dl><dt id="os.path.join">join</dt><dd><p>Join, like '
    '<a class="reference internal" href="os.html#os.open">open</a> and '
    '<a class="reference internal" href="os.html#files-label">files</a> and '
    '<a class="reference internal" href="os.html#no-such-anchor">?</a>.</p></dd></dl></section>')
TUT_PAGE = page(
    '<section id="intro"><h1>An informal introduction</h1><p>Examples, see '
    '<a class="reference internal" href="../library/os.html">os</a>.</p></section>')
WHATS = page('<section id="w"><h1>What is new</h1><p>New things, '
             '<a class="reference internal" href="../library/os.html#module-os">os</a>.</p></section>')


def test_parse_doc_page_sections_text_and_links():
    secs = parse_doc_page(OS_PAGE, "library/os.html")
    assert [s["id"] for s in secs] == ["module-os", "files", "empty"]
    top, files, empty = secs
    assert top["title"] == "os — Miscellaneous"          # headerlink "¶" dropped
    assert top["paragraphs"] == ["This module provides a portable way.",
                                 "See Files and the tutorial, ext, up.", "Third paragraph."]
    # the body's internal links only (not nav or sidebar), resolved; external and
    # out-of-tree links dropped
    assert top["links"] == ["library/os.html#files", "tutorial/intro.html#"]
    assert top["parent"] is None and files["parent"] == 0 and empty["parent"] == 0
    assert files["title"] == "Files & dirs"
    assert files["paragraphs"] == ["Open a file, see join."]   # its own, not the parent's
    assert files["links"] == ["library/os.path.html#os.path.join"]
    # a target span right before a section labels that section; dt ids belong to theirs
    assert "files-label" in files["anchors"] and "os.open" in files["anchors"]
    assert "module-os" in top["anchors"]
    assert empty == {"id": "empty", "title": "", "paragraphs": [], "links": [], "parent": 0,
                     "anchors": ["empty"]}


def test_parse_doc_page_bad_input():
    with pytest.raises(TypeError, match="str"):
        parse_doc_page(b"<html>", "a.html")
    with pytest.raises(ValueError, match="not a Sphinx"):
        parse_doc_page("<html><body><p>no body div</p></body></html>", "a.html")
    for bad in ("a.txt", "/abs/a.html", "../a.html", "x/../../a.html"):
        with pytest.raises(ValueError, match="relative POSIX path"):
            parse_doc_page(page(""), bad)
    # an empty body is a page without sections, not an error
    assert parse_doc_page(page(""), "a.html") == []
    # unclosed tags / truncated HTML do not crash
    assert parse_doc_page(page("<section id='a'><h1>A")[:-40], "a.html")[0]["id"] == "a"


def pages():
    return {"library/os.html": OS_PAGE, "library/os.path.html": PATH_PAGE,
            "tutorial/intro.html": TUT_PAGE, "whatsnew/3.11.html": WHATS,
            "genindex.html": page('<section id="g"><h1>Index</h1><p>x '
                                  '<a class="reference internal" href="library/os.html">os</a></p></section>'),
            "glossary.html": page('<section id="gl"><h1>Glossary</h1><p>Terms.</p></section>')}


def test_graph_from_doc_pages():
    g = graph_from_doc_pages(pages(), min_class_size=1, max_paragraphs=2)
    # sorted paths, document order; genindex skipped; the empty section dropped
    assert g.texts == [
        "Glossary\nTerms.",
        "os — Miscellaneous\nThis module provides a portable way. See Files and the tutorial, ext, up.",
        "Files & dirs\nOpen a file, see join.",
        "os.path\nPathname functions. Join, like open and files and ?.",
        "An informal introduction\nExamples, see os.",
        "What is new\nNew things, os.",
    ]
    assert g.label_names == ["library", "root", "tutorial", "whatsnew"]
    assert g.labels.tolist() == [1, 0, 0, 0, 2, 3]
    edges = set(map(tuple, g.edge_index.T.tolist()))
    assert edges == {
        (1, 2),   # os -> #files
        (1, 4),   # os -> tutorial page (no fragment: its first section)
        (2, 3),   # Files -> os.path.html#os.path.join
        (3, 2),   # os.path -> os.html#os.open and #files-label (same node, deduped)
        (3, 1),   # unknown anchor -> the page's first section
        (4, 1),   # tutorial -> os page
        (5, 1),   # whatsnew -> #module-os
    }
    assert g.edge_index.dtype == np.int64 and list(map(tuple, g.edge_index.T.tolist())) == sorted(edges)
    g.validate()
    # small classes merge into "other"; the paragraph and character limits hold
    h = graph_from_doc_pages(pages(), min_class_size=2, max_paragraphs=1, max_chars=20)
    assert h.label_names == ["library", "other"]
    assert h.texts[1] == "os — Miscellaneous\nThis module"
    assert all(len(t.split("\n", 1)[1]) <= 20 for t in h.texts if "\n" in t)
    # no paragraphs at all: titles only
    z = graph_from_doc_pages(pages(), min_class_size=1, max_paragraphs=0)
    assert z.texts[0] == "Glossary" and z.num_nodes == 6


def test_graph_from_doc_pages_errors():
    with pytest.raises(ValueError, match="no documentation sections"):
        graph_from_doc_pages({"a.html": page("")})
    with pytest.raises(ValueError, match="no documentation sections"):
        graph_from_doc_pages({})
    with pytest.raises(TypeError, match="dict"):
        graph_from_doc_pages([("a.html", page(""))])
    with pytest.raises(ValueError, match="max_chars"):
        graph_from_doc_pages(pages(), max_chars=-1)
    with pytest.raises(ValueError, match="min_class_size"):
        graph_from_doc_pages(pages(), min_class_size=True)
    with pytest.raises(ValueError, match="broken.html: no <div"):
        graph_from_doc_pages({"broken.html": "<p>hi</p>"})


def test_python_docs_from_a_folder(tmp_path):
    """python_docs on a hand-made html folder: reads every page but _static,
    caches the graph, and reloads it from the cache."""
    root = tmp_path / "python3.99" / "html"
    for rel, html in pages().items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(html, encoding="utf-8")
    (root / "_static").mkdir()
    (root / "_static" / "junk.html").write_text("<p>not docs</p>")   # would raise if read
    (root / "library" / "index.html").write_text(page('<section id="i"><h1>Library</h1></section>'))
    assert find_python_doc_dir(str(tmp_path)) == str(root)
    cache = tmp_path / "cache"
    g = python_docs(root, cache_dir=cache, min_class_size=1)
    assert g.num_nodes == 7 and "python3.99-doc" in g.provenance
    assert len(list(cache.glob("pydocs-*.npz"))) == 1
    h = python_docs(root, cache_dir=cache, min_class_size=1)
    assert h.texts == g.texts and np.array_equal(h.edge_index, g.edge_index)
    with pytest.raises(FileNotFoundError, match="apt-get install python3-doc"):
        find_python_doc_dir(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError):
        python_docs(tmp_path / "missing", cache_dir=cache)


def test_python_docs_real(tmp_path):
    try:
        d = find_python_doc_dir()
    except FileNotFoundError:
        pytest.skip("no python3.X-doc package installed (apt-get install python3-doc)")
    g = python_docs(d, cache_dir=tmp_path)
    assert g.num_nodes > 2000 and g.num_edges > g.num_nodes
    counts = g.label_counts()
    for area in ("library", "whatsnew", "c-api", "tutorial", "reference", "howto"):
        assert counts[area] >= 30
    assert os.path.basename(d) == "html" and "-doc" in g.provenance
