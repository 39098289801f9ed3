"""Facts about the machine, for engine_py.info() and the benchmarks' machine line."""
from __future__ import annotations

import os
import platform
import re

__all__ = ["cpu_model", "usable_cpus", "blas_version"]


def cpu_model() -> str:
    """The CPU's model name: /proc/cpuinfo's 'model name' (Linux), else
    platform.processor(), else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip().lower() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def blas_version(config: str) -> str:
    """OpenBLAS's version from openblas_get_config() ("OpenBLAS 0.3.28 ..."),
    or '' when the string does not name one."""
    m = re.search(r"OpenBLAS\s+(\d[^\s]*)", config or "")
    return m.group(1) if m else ""
