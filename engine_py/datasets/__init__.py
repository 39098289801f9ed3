"""Real textual graphs for node classification.

TextGraph is the container (texts, edge_index, labels, splits). Loaders:
load_tag_dir / save_tag_dir (the documented folder format), load_packed /
save_packed (two compressed files), load_csv_tag (TAPE / LLaGA-style CSVs),
load_ogbn_arxiv (OGB folder + titleabs.tsv), debian_packages() (the
machine's apt package lists), python_docs() (the Python documentation's
section-link graph from Debian's python3.X-doc), python_library_chapters()
(its library sections labelled with their Library Reference chapter) and
demo_graph() (a small Debian package graph shipped with engine_py). See
docs/DATASETS.md.
"""
from __future__ import annotations

from .debian import debian_packages, graph_from_dumpavail, parse_dumpavail
from .demo import demo_graph
from .graph import TextGraph, stratified_split
from .pydocs import find_python_doc_dir, graph_from_doc_pages, parse_doc_page, python_docs
from .pylib import python_library_chapters
from .io import (load_csv_tag, load_ogbn_arxiv, load_packed, load_tag_dir, save_packed,
                 save_tag_dir)

__all__ = ["TextGraph", "load_tag_dir", "save_tag_dir", "load_packed", "save_packed",
           "load_csv_tag", "load_ogbn_arxiv", "debian_packages", "graph_from_dumpavail",
           "parse_dumpavail", "demo_graph", "stratified_split", "python_docs",
           "graph_from_doc_pages", "parse_doc_page", "find_python_doc_dir",
           "python_library_chapters"]
