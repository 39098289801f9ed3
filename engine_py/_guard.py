"""One object, one thread at a time.

The C objects behind engine_py's classes have a busy flag per call
(engine_py/_core.h: eg_py_enter). Methods that drive many C calls from a
Python loop (Encoder.encode, EngineClassifier.fit, LayerCache.append ...)
also take a per-object guard for the whole call, so a second thread using
the same object at the same time gets RuntimeError at once, instead of the
two loops interleaving (and either one failing half-way, or a model
replaced under the other thread's feet). The guard is re-entrant in the
thread that holds it (predict calls predict_logits). Copies and pickles get
a fresh guard.
"""
from __future__ import annotations

import threading

__all__ = ["in_use_guard", "exclusive"]


class _Guard:
    __slots__ = ("what", "_lock", "_owner", "_depth")

    def __init__(self, what: str) -> None:
        self.what = what
        self._lock = threading.Lock()
        self._owner = None
        self._depth = 0

    def __enter__(self) -> "_Guard":
        me = threading.get_ident()
        if self._owner == me:
            self._depth += 1
            return self
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(f"{self.what} is already in use by another thread; "
                               "use one object per thread")
        self._owner = me
        self._depth = 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self._owner = None
            self._lock.release()

    def __reduce__(self):
        return (_Guard, (self.what,))

    def __deepcopy__(self, memo) -> "_Guard":
        return _Guard(self.what)


def in_use_guard(obj, what: str) -> _Guard:
    """The guard of `obj` (made on first use), a context manager."""
    g = obj.__dict__.get("_in_use_guard")
    if g is None:
        g = obj.__dict__.setdefault("_in_use_guard", _Guard(what))
    return g


def exclusive(what: str):
    """Method decorator: run the method under the object's guard."""
    import functools

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self, *args, **kwargs):
            with in_use_guard(self, what):
                return fn(self, *args, **kwargs)
        return wrapper
    return deco
