"""pytest executes the notebooks (nbmake) with ENGINE_PY_NOTEBOOK_QUICK=1.

The notebooks read it and use smaller data — a 1,000-node piece of the demo
graph (engine_py.demo.demo_subgraph), fewer texts — so that the README test
command stays short. Opened in Jupyter (or run by
`python notebooks/make_notebooks.py --execute`) they use the whole demo graph;
the committed outputs come from such a run. In quick mode the notebooks keep
the layer cache of that piece (about 5 MB) in ~/.cache/engine_py (or
$ENGINE_PY_CACHE), as the demo keeps its own, so notebooks 03 and 04 reuse
notebook 02's. The kernel inherits this
process's environment, so setting it here reaches every notebook; a value
set by the caller wins (ENGINE_PY_NOTEBOOK_QUICK=0 runs them full size).
"""
import os

os.environ.setdefault("ENGINE_PY_NOTEBOOK_QUICK", "1")
