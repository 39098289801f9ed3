"""ENGINE_PY_ISA: which SIMD copy of the C core's kernels runs.

The core compiles its hot kernels once per x86 instruction set (baseline,
AVX2 + FMA, AVX-512) and picks one at run time (csrc/include/eg_isa.h). Every
copy computes the same operations in the same order, so they give the same
bits; ``ENGINE_PY_ISA=generic`` or ``avx2`` forces a lower copy, so that one
machine can run the suite on each (CI does). ``auto`` or unset: the CPU's best.

The C side reads the variable once and never fails on it; this module, run at
``import engine_py``, turns a wrong value into a clear error instead of a
silently ignored setting.
"""
from __future__ import annotations

import os

LEVELS = ("generic", "avx2", "avx512")


def check_isa_env(core) -> str:
    """The level in use; raises ValueError for an unknown ENGINE_PY_ISA and
    RuntimeError when it asks for more than the CPU has."""
    want = os.environ.get("ENGINE_PY_ISA", "").lower()
    used, cpu = core.isa_levels()
    if want in ("", "auto"):
        return used
    if want not in LEVELS:
        raise ValueError(f"ENGINE_PY_ISA={os.environ['ENGINE_PY_ISA']!r} is not one of "
                         f"{', '.join(LEVELS)} or auto")
    if LEVELS.index(want) > LEVELS.index(cpu):
        raise RuntimeError(f"ENGINE_PY_ISA={want} but this CPU supports at most {cpu}; "
                           "the variable can only lower the level")
    return used


class BFloat16EmulationWarning(RuntimeWarning):
    """``precision="bfloat16"`` on a CPU without the core's bf16 kernel
    (AVX512-BF16): the products are emulated exactly (operands rounded to
    bfloat16, float32 GEMMs), so the results are the same as on a BF16 CPU but
    nothing runs faster than float32 (measured on an AVX2-only CPU: ENGINE
    training ~14% slower, fine-tuning and decoders 0-14%). Silence it with
    ``warnings.simplefilter("ignore", engine_py.BFloat16EmulationWarning)``."""


def _user_stacklevel() -> int:
    """warnings.warn's stacklevel (called from this module) of the first frame
    outside the engine_py package: the user's line, however many of the
    package's own frames (decorators, helpers) lie between."""
    import sys

    pkg = os.path.dirname(os.path.abspath(__file__)) + os.sep
    f, level = sys._getframe(1), 1   # level 1: the function that calls warnings.warn
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(pkg):
        f, level = f.f_back, level + 1
    return level


def warn_if_bf16_emulated(core, precision, what: str) -> bool:
    """Warn (BFloat16EmulationWarning, at the user's line) when precision is
    "bfloat16" and the core has no bf16 kernel on this CPU (or ENGINE_PY_ISA
    lowered it away). True when it warned."""
    import warnings

    if precision != "bfloat16":
        return False
    info = core.build_info()
    if info["bf16_kernel"]:
        return False
    warnings.warn(f"{what}: precision='bfloat16' is emulated on this CPU (no AVX512-BF16 kernel, "
                  "core ISA " + str(info.get("isa", "?")) + "): the same results as on "
                  "a BF16 CPU, but no faster than float32 (often slower); use precision='float32' "
                  "for speed here", BFloat16EmulationWarning, stacklevel=_user_stacklevel())
    return True
