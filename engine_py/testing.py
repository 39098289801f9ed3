"""The numerical contract of engine_py, as assertions (docs/DESIGN.md §8).

What is bit-identical, on every CPU:
- the same call twice (same inputs, batch size and thread count, same BLAS
  kernel): encode, a cache build, a training run with the same seed;
- a layer cache resumed after a crash or Ctrl-C and one built in one go
  (the batches are planned from the node ids, so a resumed build encodes the
  very same batches);
- the core's own kernels under every SIMD level (ENGINE_PY_ISA=generic,
  avx2, avx512 give the same bits).

What agrees within a tolerance: the same text encoded in a different batch
(other texts beside it, another batch size), with another thread count, or
under another OpenBLAS kernel (OPENBLAS_CORETYPE). OpenBLAS's AVX2 (Haswell)
sgemm computes a row differently depending on its position in the
micro-kernel's row tile and on the number of rows of the product, so the
same token row can round differently when the batch around it changes; its
AVX-512 kernels happen not to. Measured on all-MiniLM-L6-v2, 512 Debian
package texts, every layer: max |a - b| / max|row| = 1.05e-6 (Haswell vs
SkylakeX kernel). The contract allows 10x that: for every row (last axis),

    max |a - b| <= STATE_RTOL * max |b|

and, for float16 caches, additionally one float16 ulp per element (a float32
difference of 1e-6 can move a value across a float16 rounding boundary).
"""
from __future__ import annotations

import numpy as np

__all__ = ["STATE_RTOL", "states_close", "assert_states_close"]

# Per-row relative bound for float32 hidden states computed in different
# batches, thread counts or BLAS kernels (see the module docstring).
STATE_RTOL = 1e-5


def _violations(actual: np.ndarray, expected: np.ndarray, rtol: float) -> np.ndarray:
    a = np.asarray(actual)
    b = np.asarray(expected)
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 0 or a.size == 0:
        return np.zeros(a.shape, dtype=bool)
    a32 = a.astype(np.float32)
    b32 = b.astype(np.float32)
    both_nan = np.isnan(a32) & np.isnan(b32)
    diff = np.abs(a32.astype(np.float64) - b32.astype(np.float64))
    absb = np.abs(b32)
    scale = np.max(np.where(np.isnan(absb), 0.0, absb), axis=-1, keepdims=True).astype(np.float64)
    bound = rtol * scale
    if a.dtype == np.float16 or b.dtype == np.float16:
        big = np.maximum(np.abs(a32), np.abs(b32)).astype(np.float16)
        bound = bound + np.spacing(big).astype(np.float64)
    bad = ~(diff <= bound)
    return bad & ~both_nan


def states_close(actual, expected, rtol: float = STATE_RTOL) -> bool:
    """True when `actual` and `expected` agree within the contract."""
    return not _violations(actual, expected, rtol).any()


def assert_states_close(actual, expected, rtol: float = STATE_RTOL, err_msg: str = "") -> None:
    """Assert the numerical contract between two arrays of states (rows on
    the last axis): per row, max |a - b| <= rtol * max |b|, plus one float16
    ulp when either is float16. NaNs must match position for position."""
    bad = _violations(actual, expected, rtol)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        a = np.asarray(actual)[idx]
        b = np.asarray(expected)[idx]
        raise AssertionError(
            f"{int(bad.sum())} of {bad.size} elements outside the numerical contract "
            f"(per-row rtol {rtol:g}); first at {idx}: {a!r} vs {b!r}"
            + (f"\n{err_msg}" if err_msg else ""))
