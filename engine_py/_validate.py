"""Argument checks shared by the public API (one rule set, one message style).

Numbers: a hyper-parameter that is a number accepts what a NumPy user passes
for one -- a Python int/float, a NumPy scalar (``np.int64(3)``,
``np.float32(0.5)``) or a 0-d numeric array -- and refuses what only looks
like one: a bool (``True`` is an int in Python but never meant as a count or
a rate), a string, a float where an integer is required (``epochs=2.5``,
also ``2.0``: scikit-learn's rule), NaN or inf.

The error is :class:`InvalidParameterError`, both a ValueError and a
TypeError (as scikit-learn's), so ``except ValueError`` and
``except TypeError`` both catch it; the message names the parameter, what it
must be and what it got.

JSON: :func:`read_json` names the file and the line/column of a syntax
error (or the byte offset of invalid UTF-8) instead of a bare
JSONDecodeError.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any

import numpy as np

__all__ = ["InvalidParameterError", "check_int", "check_float", "check_bool", "check_choice",
           "check_node_ids", "read_json"]


class InvalidParameterError(ValueError, TypeError):
    """A parameter has the wrong type or a value outside its range."""


def _unwrap(value: Any) -> Any:
    """A 0-d numeric ndarray as its NumPy scalar; anything else unchanged."""
    if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind in "biuf":
        return value[()]
    return value


def _desc(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _bounds(lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi}")
    return " and ".join(parts)


def check_int(value: Any, name: str, *, min: int | None = None, max: int | None = None,
              none: bool = False) -> int | None:
    """``value`` as a Python int (None passes when ``none``). Accepts int, NumPy
    integers and 0-d integer arrays; refuses bool, float (even 2.0), str."""
    if value is None and none:
        return None
    v = _unwrap(value)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        what = "an integer or None" if none else "an integer"
        raise InvalidParameterError(f"{name} must be {what}, got {_desc(value)}")
    v = int(v)
    if (min is not None and v < min) or (max is not None and v > max):
        raise InvalidParameterError(f"{name} must be an integer {_bounds(min, max, False, False)}, "
                                    f"got {v}")
    return v


def check_float(value: Any, name: str, *, min: float | None = None, max: float | None = None,
                min_open: bool = False, max_open: bool = False, none: bool = False) -> float | None:
    """``value`` as a finite Python float in the given range (``min_open`` /
    ``max_open`` exclude the bound). Accepts int, float, NumPy integer and
    floating scalars and 0-d arrays of them; refuses bool, str, NaN, inf."""
    if value is None and none:
        return None
    v = _unwrap(value)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        what = "a number or None" if none else "a number"
        raise InvalidParameterError(f"{name} must be {what}, got {_desc(value)}")
    f = float(v)
    if not math.isfinite(f):
        raise InvalidParameterError(f"{name} must be a finite number, got {f}")
    if ((min is not None and (f < min or (min_open and f == min)))
            or (max is not None and (f > max or (max_open and f == max)))):
        raise InvalidParameterError(f"{name} must be a number {_bounds(min, max, min_open, max_open)}, "
                                    f"got {v!r}")
    return f


def check_bool(value: Any, name: str, *, none: bool = False) -> bool | None:
    """``value`` as a Python bool: True/False or a NumPy bool (None passes
    when ``none``); 0/1 and strings are refused."""
    if value is None and none:
        return None
    v = _unwrap(value)
    if not isinstance(v, (bool, np.bool_)):
        what = "True, False or None" if none else "True or False"
        raise InvalidParameterError(f"{name} must be {what}, got {_desc(value)}")
    return bool(v)


def check_choice(value: Any, name: str, choices) -> Any:
    """``value`` if it is one of ``choices`` (compared as str), else an error
    listing them."""
    if not isinstance(value, str) or value not in choices:
        raise InvalidParameterError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_node_ids(node_ids: Any) -> np.ndarray:
    """``node_ids`` as an integer ndarray (dtype kept). An empty list or array
    of any dtype (``np.asarray([])`` is float64) becomes an empty int64 array,
    so ``gather(layer, [])`` gives (0, dim); float, bool and other non-integer
    ids raise TypeError (1.7 must not become node 1)."""
    ids = np.asarray(node_ids)
    if ids.size == 0 and ids.dtype.kind in "fO":
        ids = ids.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise TypeError(f"node_ids must be an integer array, got dtype {ids.dtype}")
    return ids


def read_json(path: str, what: str = "JSON file", error: type = ValueError) -> Any:
    """Parse a JSON file. A syntax error raises ``error`` (ValueError by
    default) naming the file, the line and column (and the text of that
    line); bytes that are not UTF-8 name the offset."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset "
                    f"{exc.start} ({exc.reason}); is it the right file?") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        lines = text.splitlines()
        line = lines[exc.lineno - 1] if 0 < exc.lineno <= len(lines) else ""
        if len(line) > 80:
            lo = max(0, exc.colno - 40)
            line = ("..." if lo else "") + line[lo:lo + 80] + "..."
        raise error(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                    f"column {exc.colno}" + (f": {line.strip()!r}" if line.strip() else "")) from None
