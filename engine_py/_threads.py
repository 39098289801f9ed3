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
- ``set_num_threads("auto")`` (or ``ENGINE_PY_NUM_THREADS=auto``): the count
  follows the machine's load, between 1 and the default count. Every long
  loop of the package (training batches, encoding batches, fine-tuning
  steps) calls :func:`adapt`, which at most every
  ``LoadGovernor.WINDOW`` seconds reads how much CPU time the *other*
  processes took on this process's CPUs (``/proc/stat`` minus this
  process's own CPU time) and uses the CPUs they left free. Why: with one
  busy process beside it, a 2-thread step on a 2-CPU machine waits at every
  OpenMP barrier for a descheduled thread and is about 2x slower than 1
  thread (``python -m engine_py bench threads``). Not the default, because
  the thread count changes the last bits of BLAS products (OpenBLAS splits
  its work by thread), so under "auto" a seeded run is reproducible only up
  to float32 rounding; a fixed count keeps it bit-identical.
"""
from __future__ import annotations

import math
import operator
import os
import threading
import time
import warnings

import numpy as np

from . import _core

__all__ = ["set_num_threads", "get_num_threads", "available_cpus", "default_num_threads",
           "threads_auto", "adapt", "LoadGovernor"]

ENV_VAR = "ENGINE_PY_NUM_THREADS"
AUTO = "auto"


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


def _as_count(n, what: str, auto_ok: bool = False) -> int:
    kinds = "an integer or 'auto'" if auto_ok else "an integer"
    if isinstance(n, (bool, np.bool_)):
        raise TypeError(f"{what}: n must be {kinds}, got {type(n).__name__}")
    try:
        n = operator.index(n)
    except TypeError:
        got = repr(n) if isinstance(n, str) else type(n).__name__
        raise TypeError(f"{what}: n must be {kinds}, got {got}") from None
    if n < 1:
        raise ValueError(f"{what}: n must be >= 1, got {n}")
    return n


def set_num_threads(n) -> None:
    """Use n threads for the core's OpenMP regions and its BLAS calls, in
    every Python thread. n: an integer >= 1 (TypeError / ValueError
    otherwise), a fixed count. Above the CPUs this process may use
    (os.sched_getaffinity) it warns (RuntimeWarning) and uses that many.

    ``"auto"``: a count that follows the machine's load, at most the default
    count (the CPUs this process may use): engine_py's long loops check at
    most every LoadGovernor.WINDOW seconds how much CPU the other processes
    use and run on the CPUs they leave free (Linux; elsewhere "auto" keeps the
    default count). On a machine whose other cores are busy this avoids
    OpenMP threads waiting for each other; results then match a fixed-count
    run up to float32 rounding, not bit for bit (docs/DESIGN.md, Threads)."""
    global _governor
    if isinstance(n, str) and n == AUTO:
        ceiling = default_num_threads()
        with _gov_lock:
            _governor = LoadGovernor(_affinity(), ceiling)
            _core.set_num_threads(ceiling)
        return
    n = _as_count(n, "set_num_threads", auto_ok=True)
    avail = available_cpus()
    if n > avail:
        warnings.warn(f"set_num_threads({n}): this process may use {avail} CPUs "
                      f"(os.sched_getaffinity); using {avail} threads", RuntimeWarning, stacklevel=2)
        n = avail
    with _gov_lock:
        _governor = None
        _core.set_num_threads(n)


def get_num_threads() -> int:
    """The thread count the core uses now (inside a threadpoolctl limit: the
    limit; under "auto": the count chosen last)."""
    return _core.get_num_threads()


def threads_auto() -> bool:
    """True when the thread count follows the load (``set_num_threads("auto")``)."""
    return _governor is not None


# ------------------------------------------------------- "auto": follow the load

def _affinity() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def busy_ticks(stat_text: str, cpus) -> int | None:
    """Clock ticks the CPUs ``cpus`` spent busy (user, nice, system, irq,
    softirq, steal) since boot, from the text of /proc/stat; None when a
    CPU's line is missing or malformed. Idle and iowait are not busy; guest
    time is already inside user time; steal (another virtual machine ran on
    the CPU) counts as busy, since this process could not run then either."""
    want = {f"cpu{c}" for c in cpus}
    total, seen = 0, 0
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if name not in want:
            continue
        f = rest.split()
        if len(f) < 7:
            return None
        try:
            user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f[:7])
            steal = int(f[7]) if len(f) > 7 else 0
        except ValueError:
            return None
        total += user + nice + system + irq + softirq + steal
        seen += 1
    return total if seen == len(want) else None


def threads_for_free_cpus(free: float, ceiling: int) -> int:
    """Threads to run on ``free`` CPUs' worth of idle time: one per free CPU,
    where a CPU counts as free from 0.65 of it idle (a thread that gets less
    of its CPU makes every barrier wait for it), at least 1, at most ceiling."""
    return max(1, min(int(ceiling), int(math.floor(free + 0.35))))


class LoadGovernor:
    """Chooses the thread count from the CPU time the other processes leave.

    observe(current) takes a sample at most every WINDOW seconds: the busy
    ticks of this process's CPUs (/proc/stat) and this process's own CPU time
    (all its threads). What the other processes used in the window is the
    difference, in CPUs; the CPUs left free decide the count
    (threads_for_free_cpus). A lower count applies at once (waiting threads
    are what makes a busy machine slow); a higher one after two windows in a
    row ask for it, so that a short lull does not bring the waits back.
    The readers are parameters so that tests can drive them."""

    WINDOW = 0.3   # seconds between two samples

    def __init__(self, cpus, ceiling: int, *, read_stat=None, clock=time.monotonic,
                 cpu_clock=time.process_time, ticks_per_second=None):
        self.cpus = list(cpus)
        self.ceiling = max(1, int(ceiling))
        self._read_stat = read_stat or (lambda: _read("/proc/stat"))
        self._clock, self._cpu_clock = clock, cpu_clock
        if ticks_per_second is None:
            try:
                ticks_per_second = os.sysconf("SC_CLK_TCK")
            except (AttributeError, ValueError, OSError):  # pragma: no cover - not POSIX
                ticks_per_second = 100
        self._hz = float(ticks_per_second)
        self._last = None          # (wall, own cpu seconds, busy ticks)
        self._want_more = 0        # windows in a row that asked for more threads
        self.others = None         # CPUs the other processes used in the last window
        self.working = True        # False once /proc/stat could not be read

    def _sample(self):
        text = self._read_stat()
        ticks = busy_ticks(text, self.cpus) if text is not None else None
        if ticks is None:
            self.working = False
            return None
        return self._clock(), self._cpu_clock(), ticks

    def observe(self, current: int) -> int | None:
        """The count to switch to, or None to keep ``current``."""
        if not self.working:
            return None
        if self._last is not None and self._clock() - self._last[0] < self.WINDOW:
            return None
        now = self._sample()
        if now is None:
            return None
        last, self._last = self._last, now
        if last is None:
            return None
        wall = now[0] - last[0]
        if wall <= 0:
            return None
        busy = (now[2] - last[2]) / self._hz
        own = now[1] - last[1]
        self.others = max(0.0, busy - own) / wall
        target = threads_for_free_cpus(len(self.cpus) - self.others, self.ceiling)
        if target < current:
            self._want_more = 0
            return target
        if target > current:
            self._want_more += 1
            if self._want_more >= 2:
                self._want_more = 0
                return target
            return None
        self._want_more = 0
        return None


_governor: LoadGovernor | None = None
_gov_lock = threading.Lock()


def adapt() -> None:
    """Under "auto", let the governor re-choose the thread count (cheap: a
    clock read, and /proc/stat at most every LoadGovernor.WINDOW seconds).
    The package's long loops call it once per batch or step; call it in
    your own loops around engine_py calls to the same effect."""
    if _governor is None or not _gov_lock.acquire(blocking=False):
        return
    try:
        g = _governor
        if g is not None:
            n = g.observe(_core.get_num_threads())
            if n is not None:
                _core.set_num_threads(n)
    finally:
        _gov_lock.release()


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
    """At import: default, then OMP_NUM_THREADS, then ENGINE_PY_NUM_THREADS
    (a count, or "auto": set_num_threads("auto")), capped at the affinity
    CPUs (with a warning). Never raises."""
    try:
        if os.environ.get(ENV_VAR, "").strip().lower() == AUTO:
            set_num_threads(AUTO)
        else:
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
            # under "auto" the ceiling: what a limit's restore must put back
            g = _governor
            return g.ceiling if g is not None else _core.get_num_threads()

        def set_num_threads(self, num_threads):
            # a limit: above the CPUs there is nothing to limit (no warning);
            # under "auto" it is the governor's ceiling for the block
            n = max(1, min(int(num_threads), available_cpus()))
            with _gov_lock:
                if _governor is not None:
                    _governor.ceiling = n
                _core.set_num_threads(n)

        def get_version(self):
            from . import __version__

            return __version__

    EnginePyController.__module__ = __name__
    register(EnginePyController)
    _registered = True
