"""Build the C core as the extension module engine_py._core.

BLAS: by default OpenBLAS from the PyPI package scipy-openblas32 (no apt
step; its symbols are prefixed `scipy_`, handled by csrc/core/blas.c). Set
ENGINE_PY_BLAS=system to link the system OpenBLAS found by
`pkg-config openblas` instead (e.g. Debian's libopenblas-dev).

ENGINE_PY_SANITIZE=1 builds with -fsanitize=address,undefined (for the
sanitizer CI job; run Python with the ASan runtime preloaded).
"""
import glob
import os
import shlex
import subprocess
import sys

import numpy
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def core_sources():
    # Everything under csrc/ except the C-only tests, plus the Python glue.
    srcs = []
    for path in sorted(glob.glob(os.path.join("csrc", "**", "*.c"), recursive=True)):
        if os.sep + "tests" + os.sep in path or os.sep + "fuzz" + os.sep in path:
            continue
        srcs.append(path)
    srcs += sorted(glob.glob(os.path.join("engine_py", "_core*.c")))
    return srcs


def core_headers():
    # Headers the sources include, kernel bodies compiled once per instruction
    # set among them (csrc/gmoe/graph_router_simd.h ...): an edit to one must
    # rebuild the module, which setuptools does not see from the .c files.
    return sorted(glob.glob(os.path.join("csrc", "**", "*.h"), recursive=True)
                  + glob.glob(os.path.join("engine_py", "*.h")))


def blas_config():
    choice = os.environ.get("ENGINE_PY_BLAS", "scipy-openblas32").strip().lower()
    if choice == "system":
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", "openblas"], text=True)
            libs = subprocess.check_output(["pkg-config", "--libs", "openblas"], text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(
                "ENGINE_PY_BLAS=system needs `pkg-config openblas` to work "
                "(on Debian: apt-get install libopenblas-dev pkg-config): %s" % exc
            )
        inc = [f[2:] for f in shlex.split(cflags) if f.startswith("-I")]
        libdirs = [f[2:] for f in shlex.split(libs) if f.startswith("-L")]
        libnames = [f[2:] for f in shlex.split(libs) if f.startswith("-l")]
        return dict(
            include_dirs=inc, library_dirs=libdirs, libraries=libnames,
            runtime_library_dirs=libdirs,
            macros=[("EG_BLAS_PREFIX", ""), ("EG_BLAS_NAME", '"system openblas (pkg-config)"')],
            extra_link=[],
        )
    if choice not in ("scipy-openblas32", "scipy_openblas32", "default", ""):
        sys.exit("ENGINE_PY_BLAS must be 'system' or 'scipy-openblas32', got %r" % choice)
    import scipy_openblas32 as sob

    return dict(
        include_dirs=[sob.get_include_dir()],
        library_dirs=[sob.get_lib_dir()],
        libraries=[sob.get_library()],
        # The wheel's lib dir sits next to engine_py/ in site-packages; engine_py
        # also imports scipy_openblas32 first, which loads it for editable installs.
        runtime_library_dirs=[],
        macros=[("EG_BLAS_PREFIX", "scipy_"),
                ("EG_BLAS_NAME", '"scipy-openblas32 %s"' % sob.__version__)],
        extra_link=["-Wl,-rpath,$ORIGIN/../scipy_openblas32/lib"],
    )


blas = blas_config()
# -fno-trapping-math: we never read floating-point exception flags, and without
# it gcc will not turn a select such as `x > 0 ? a : b * c` into a vector blend
# (it must not evaluate b * c where C would not).
# -fno-wrapv: Python's own CFLAGS (sysconfig) carry -fwrapv, which CPython's
# code needs but the core does not (it checks its size arithmetic and is built
# without it by csrc/Makefile, which runs the C tests, fuzzers and sanitizers).
# Under -fwrapv gcc may not assume that `c + l` in an int-indexed loop does not
# wrap, so it gives up contiguous vector loads: the graph router's readout
# became 1,900 instructions of permutes and ran 7x slower than the same source
# built by the Makefile.
cflags = ["-O3", "-fno-wrapv", "-fno-trapping-math", "-std=c11", "-fopenmp",
          "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-missing-field-initializers"]
ldflags = ["-fopenmp"]
if os.environ.get("ENGINE_PY_SANITIZE") == "1":
    san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-g"]
    cflags += san
    ldflags += san
# Recorded in the module so `python -m engine_py info` can show it.
macros = blas["macros"] + [("EG_BUILD_FLAGS", '"%s"' % " ".join(cflags))]

ext = Extension(
    "engine_py._core",
    sources=core_sources(),
    depends=core_headers(),
    include_dirs=[os.path.join("csrc", "include"), "engine_py", numpy.get_include()] + blas["include_dirs"],
    library_dirs=blas["library_dirs"],
    libraries=blas["libraries"] + ["m"],
    runtime_library_dirs=blas["runtime_library_dirs"],
    define_macros=macros,
    extra_compile_args=cflags,
    extra_link_args=ldflags + blas["extra_link"],
)

setup(ext_modules=[ext])
