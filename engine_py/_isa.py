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
