"""How many threads engine_py uses, the way the ecosystem decides it.

One count drives the core's OpenMP regions and its BLAS calls (OpenBLAS's
jobs run on the same OpenMP threads, csrc/core/blas.c). It is:

- at import: the CPUs this process may use, the smaller of its affinity
  mask (``os.sched_getaffinity``, what taskset/numactl/container cpusets
  restrict) and its cgroup CPU quota (``docker --cpus``, Kubernetes limits,
  systemd CPUQuota; cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``),
  rounded up as loky/joblib do; then ``OMP_NUM_THREADS`` when set, then
  ``ENGINE_PY_NUM_THREADS`` when set (it wins). A value that is not a
  positive integer warns and is ignored: importing never fails over it.
- ``set_num_threads(n)``: n must be an integer >= 1 (NumPy integers too;
  bools are refused); above the CPUs of the affinity mask it warns
  (RuntimeWarning) and uses that many, since more threads than CPUs only
  make every OpenMP barrier wait for a descheduled thread.
- ``threadpoolctl.threadpool_limits(n)``: engine_py registers a controller
  with threadpoolctl (when it is installed), so a limit applies to
  engine_py like to any OpenMP library, from every Python thread, for the
  duration of the ``with`` block (docs/DESIGN.md, Threads).
"""
from __future__ import annotations

import math
import operator
import os
import warnings

import numpy as np

from . import _core

__all__ = ["set_num_threads", "get_num_threads", "available_cpus", "default_num_threads"]

ENV_VAR = "ENGINE_PY_NUM_THREADS"


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; os.cpu_count() where
    the platform has no affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: str, period: str) -> int | None:
    """CPUs a cgroup quota allows (rounded up), from the two numbers as the
    files hold them; None for no limit or text that is not a number."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def _cgroup_dirs(root: str, rel: str) -> list[str]:
    """root/rel and its ancestors up to root (a quota on a parent limits too)."""
    out = []
    rel = rel.strip("/")
    while True:
        out.append(os.path.join(root, rel) if rel else root)
        if not rel:
            return out
        rel = os.path.dirname(rel)


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """The CPU quota of this process's cgroup in whole CPUs (rounded up), or
    None when there is none (or it cannot be read). cgroup v2: ``cpu.max``
    ("max 100000" or "<quota> <period>") of the process's cgroup and its
    ancestors, the smallest; v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``
    of the cpu controller (quota -1: none)."""
    own = {}   # controller list -> path, from /proc/self/cgroup
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    # v2 (unified): "0::/path"
    limits = []
    for d in _cgroup_dirs(root, own.get("", "")):
        text = _read(os.path.join(d, "cpu.max"))
        if text is None:
            continue
        fields = text.split()
        if len(fields) >= 2 and fields[0] != "max":
            n = _quota_cpus(fields[0], fields[1])
            if n is not None:
                limits.append(n)
    if limits:
        return min(limits)
    # v1: the cpu controller's own hierarchy
    rel = next((p for c, p in own.items() if "cpu" in c.split(",")), "")
    for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = os.path.join(root, mount)
        for d in _cgroup_dirs(base, rel):
            q, p = _read(os.path.join(d, "cpu.cfs_quota_us")), _read(os.path.join(d, "cpu.cfs_period_us"))
            if q is None or p is None:
                continue
            n = _quota_cpus(q, p)
            if n is not None:
                limits.append(n)
        if limits:
            return min(limits)
    return None


def default_num_threads() -> int:
    """The thread count engine_py starts with when no environment variable
    says otherwise: min(affinity CPUs, cgroup quota)."""
    n = available_cpus()
    quota = cgroup_cpu_limit()
    return min(n, quota) if quota is not None else n


def _as_count(n, what: str) -> int:
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"{what}: n must be an integer, got {type(n).__name__}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{what}: n must be an integer, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"{what}: n must be >= 1, got {n}")
    return n


def set_num_threads(n: int) -> None:
    """Use n threads for the core's OpenMP regions and its BLAS calls, in
    every Python thread. n: an integer >= 1 (TypeError / ValueError
    otherwise). Above the CPUs this process may use (os.sched_getaffinity)
    it warns (RuntimeWarning) and uses that many. On a machine whose other
    cores are busy, 1 is often the fastest (docs/DESIGN.md, Threads)."""
    n = _as_count(n, "set_num_threads")
    avail = available_cpus()
    if n > avail:
        warnings.warn(f"set_num_threads({n}): this process may use {avail} CPUs "
                      f"(os.sched_getaffinity); using {avail} threads", RuntimeWarning, stacklevel=2)
        n = avail
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The thread count the core uses (inside a threadpoolctl limit: the limit)."""
    return _core.get_num_threads()


def _env_count(name: str, allow_list: bool) -> int | None:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return None
    value = raw.split(",")[0] if allow_list else raw   # OMP_NUM_THREADS may list nested levels
    try:
        n = int(value.strip())
    except ValueError:
        n = 0
    if n < 1:
        warnings.warn(f"{name}={raw!r} is not a positive integer; engine_py ignores it",
                      RuntimeWarning, stacklevel=3)
        return None
    return n


def init_from_environment() -> None:
    """At import: default, then OMP_NUM_THREADS, then ENGINE_PY_NUM_THREADS,
    capped at the affinity CPUs (with a warning). Never raises."""
    try:
        n, source = default_num_threads(), None
        omp = _env_count("OMP_NUM_THREADS", allow_list=True)
        if omp is not None:
            n, source = omp, "OMP_NUM_THREADS"
        own = _env_count(ENV_VAR, allow_list=False)
        if own is not None:
            n, source = own, ENV_VAR
        avail = available_cpus()
        if n > avail:
            warnings.warn(f"{source}={n}: this process may use {avail} CPUs "
                          f"(os.sched_getaffinity); engine_py uses {avail} threads",
                          RuntimeWarning, stacklevel=3)
            n = avail
        _core.set_num_threads(max(1, min(n, 4096)))
    except Exception as exc:  # pragma: no cover - a broken /proc must not break import
        warnings.warn(f"engine_py could not choose its thread count ({exc!r}); "
                      "keeping OpenMP's default", RuntimeWarning, stacklevel=3)
    try:
        _register_threadpoolctl()
    except Exception as exc:  # pragma: no cover - a broken threadpoolctl must not break import
        warnings.warn(f"engine_py could not register with threadpoolctl ({exc!r}); "
                      "threadpool_limits will not reach engine_py", RuntimeWarning, stacklevel=3)


# ----------------------------------------------------------- threadpoolctl

_registered = False


def _register_threadpoolctl() -> None:
    """Make threadpoolctl.threadpool_limits reach engine_py.

    threadpoolctl finds the OpenBLAS (scipy_openblas32, prefixed symbols) and
    the libgomp engine_py loads, but setting libgomp's count reaches only the
    calling thread, and engine_py applies its own process-wide count at each
    call (see eg_py_sync_threads in _core.c). So engine_py registers itself as
    an OpenMP library (user_api "openmp", internal_api "engine_py"): a limit
    on all libraries or on "openmp" calls set_num_threads and the restore at
    the end of the block sets the count back. A "blas"-only limit sets
    OpenBLAS's own count, which engine_py leaves alone. Optional: nothing
    happens without threadpoolctl (or with one too old to register)."""
    global _registered
    if _registered:
        return
    try:
        import threadpoolctl
    except ImportError:
        return
    base = getattr(threadpoolctl, "LibController", None)
    register = getattr(threadpoolctl, "register", None)
    if base is None or register is None:
        return

    class EnginePyController(base):
        user_api = "openmp"
        internal_api = "engine_py"
        filename_prefixes = ("_core.",)
        check_symbols = ("engine_py_get_num_threads",)

        def get_num_threads(self):
            return _core.get_num_threads()

        def set_num_threads(self, num_threads):
            # a limit: above the CPUs there is nothing to limit (no warning)
            n = max(1, min(int(num_threads), available_cpus()))
            _core.set_num_threads(n)

        def get_version(self):
            from . import __version__

            return __version__

    EnginePyController.__module__ = __name__
    register(EnginePyController)
    _registered = True
