"""engine_py — ENGINE and GMoE on a CPU, with a C core.

ENGINE: a frozen language model encodes each node's text once into an
on-disk layer cache; a small side structure (one G-Ladder per selected
layer) learns over the graph, and dynamic early exit stops the encoder for a
node once its prediction settles.

GMoE: LoRA fine-tuning with a mixture of LoRA experts routed by a graph
(a GCN over expert nodes plus the token node).

The public API lives in this package; engine_py._core is the C extension.
"""
from __future__ import annotations

__version__ = "0.1.0"

# The default build links OpenBLAS from the scipy-openblas32 wheel. Importing
# it loads that library into the process (by soname), which is how the
# extension finds it in editable installs, where the relative rpath to
# site-packages does not apply. A build against the system OpenBLAS
# (ENGINE_PY_BLAS=system) does not need it.
try:  # pragma: no cover - trivial
    import scipy_openblas32 as _scipy_openblas32  # noqa: F401
except ImportError:  # pragma: no cover
    _scipy_openblas32 = None

# How long an idle OpenMP thread spins before it sleeps. libgomp's default
# (300,000 spins) is right for a machine of our own; on a shared one a
# spinning thread takes the core from the thread everyone waits for at the
# next barrier. Measured on this 2-core machine with one other busy process,
# one default Debian training step at 2 threads: 4.5 s with the default, 0.43 s
# with 10,000 (1 thread: 0.12 s); idle, 2 threads: 70 ms either way. libgomp
# reads it when it is loaded (with _core below), so it must be set first; a
# value set by the user wins. See docs/DESIGN.md (Threads).
import os as _os  # noqa: E402

_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from . import _core  # noqa: E402
from ._isa import check_isa_env as _check_isa_env  # noqa: E402
from ._isa import BFloat16EmulationWarning  # noqa: E402,F401

_check_isa_env(_core)
from ._threads import get_num_threads, set_num_threads, threads_auto  # noqa: E402,F401
from . import _threads  # noqa: E402

# The CPUs this process may use (affinity, cgroup quota), OMP_NUM_THREADS,
# ENGINE_PY_NUM_THREADS (wins); registers with threadpoolctl when installed.
_threads.init_from_environment()
from . import datasets, io  # noqa: E402,F401
from .tokenizer import BPETokenizer, TokenizerFormatError, WordPieceTokenizer  # noqa: E402,F401
from .graph import Batch, Graph  # noqa: E402,F401
from .engine import EngineClassifier, InMemoryStates, NotFittedError  # noqa: E402,F401
from . import gmoe, models, plot  # noqa: E402,F401
from .encoder import Encoder  # noqa: E402,F401
from .cache import CacheCorruptError, LayerCache, select_layers  # noqa: E402,F401
from . import early_exit  # noqa: E402,F401
from .early_exit import ExitPolicy, exit_decide  # noqa: E402,F401
from .gmoe import MoELoRAFFN  # noqa: E402,F401
from .io import SafetensorsError, load_safetensors, load_state, save_safetensors  # noqa: E402,F401


def info() -> dict:
    """Build and runtime facts: version, BLAS in use (``blas_version``,
    ``blas_corename``: the kernel OpenBLAS picked for this CPU) and its thread
    count, OpenMP threads, ``threads_auto`` (whether the count follows the
    load, ``set_num_threads("auto")``), compiler flags, ``isa``: the SIMD level of the
    core's own kernels (avx512 / avx2 / generic), ``cpu``: the CPU model, and
    ``blas_error``: None, or the message of the first failure to start
    threads for a BLAS call (sticky; the core then ran those products
    serially, so results stayed right)."""
    from ._machine import blas_version, cpu_model

    d = dict(_core.build_info())
    d["version"] = __version__
    d["num_threads"] = get_num_threads()
    d["threads_auto"] = threads_auto()
    d["cpu"] = cpu_model()
    d["blas_version"] = blas_version(d.get("blas_config", ""))
    return d


__all__ = [
    "__version__", "get_num_threads", "set_num_threads", "threads_auto", "info", "BFloat16EmulationWarning",
    "io", "datasets", "SafetensorsError", "load_safetensors", "save_safetensors", "load_state",
    "WordPieceTokenizer", "BPETokenizer", "TokenizerFormatError",
    "Graph", "Batch", "EngineClassifier", "InMemoryStates", "NotFittedError",
    "gmoe", "plot", "MoELoRAFFN", "models", "Encoder",
    "LayerCache", "CacheCorruptError", "select_layers", "early_exit", "ExitPolicy", "exit_decide",
]
