"""Thread count the way the ecosystem does it (issue 13 item 4): the default
follows the CPUs this process may use (affinity, cgroup quota), OMP_NUM_THREADS
and ENGINE_PY_NUM_THREADS are honoured at import, set_num_threads validates,
and threadpoolctl.threadpool_limits reaches engine_py's OpenMP and BLAS pools."""
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest

import engine_py
from engine_py import _core, _threads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))
AVAIL = _threads.available_cpus()
needs_two_cpus = pytest.mark.skipif(AVAIL < 2, reason="needs 2 CPUs in the affinity mask")


@pytest.fixture
def restore_threads():
    old = engine_py.get_num_threads()
    yield
    engine_py.set_num_threads(old)


# ------------------------------------------------------------ set_num_threads

@pytest.mark.parametrize("bad", [0, -1, -3, np.int64(0)])
def test_set_num_threads_rejects_below_one(bad, restore_threads):
    with pytest.raises(ValueError, match="set_num_threads: n must be >= 1"):
        engine_py.set_num_threads(bad)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), 1.0, 2.5, np.float64(1.0), "2", None, [1]])
def test_set_num_threads_rejects_non_integers(bad, restore_threads):
    with pytest.raises(TypeError, match="set_num_threads: n must be an integer"):
        engine_py.set_num_threads(bad)


@pytest.mark.parametrize("n", [1, np.int64(1), np.int32(1), np.uint8(1)])
def test_set_num_threads_accepts_numpy_integers(n, restore_threads):
    engine_py.set_num_threads(n)
    assert engine_py.get_num_threads() == 1 and type(engine_py.get_num_threads()) is int


@pytest.mark.parametrize("big", [AVAIL + 1, 1000, 10**6])
def test_set_num_threads_caps_at_available_cpus(big, restore_threads):
    with pytest.warns(RuntimeWarning, match=f"may use {AVAIL} CPUs"):
        engine_py.set_num_threads(big)
    assert engine_py.get_num_threads() == AVAIL
    assert engine_py.info()["blas_threads"] == AVAIL and engine_py.info()["omp_threads"] == AVAIL


def test_set_num_threads_within_cpus_does_not_warn(restore_threads):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        engine_py.set_num_threads(AVAIL)
    assert engine_py.get_num_threads() == AVAIL


# --------------------------------------------------------- default at import

def _import_in_child(env_changes, code="print(engine_py.get_num_threads())", preexec=None):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ENGINE_PY_NUM_THREADS")}
    env.update(env_changes)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    prog = "import warnings; warnings.simplefilter('always'); import engine_py; " + code
    r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True,
                       timeout=120, preexec_fn=preexec)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


def test_default_follows_affinity():
    cpu = min(os.sched_getaffinity(0))
    out, err = _import_in_child({}, preexec=lambda: os.sched_setaffinity(0, {cpu}))
    assert out == "1" and "Warning" not in err


def test_default_without_environment_is_cpus_and_quota():
    out, err = _import_in_child({})
    assert int(out) == _threads.default_num_threads() and "Warning" not in err


@pytest.mark.parametrize("env,want,warn", [
    ({"ENGINE_PY_NUM_THREADS": "1"}, 1, None),
    ({"OMP_NUM_THREADS": "1"}, 1, None),
    ({"OMP_NUM_THREADS": "1,1"}, 1, None),                    # nested levels: the first one
    ({"OMP_NUM_THREADS": "1", "ENGINE_PY_NUM_THREADS": str(AVAIL)}, AVAIL, None),  # ours wins
    ({"OMP_NUM_THREADS": str(AVAIL), "ENGINE_PY_NUM_THREADS": "1"}, 1, None),
    ({"ENGINE_PY_NUM_THREADS": "abc"}, "default", "ENGINE_PY_NUM_THREADS='abc' is not a positive integer"),
    ({"ENGINE_PY_NUM_THREADS": "0"}, "default", "ENGINE_PY_NUM_THREADS='0' is not a positive integer"),
    ({"OMP_NUM_THREADS": "-2", "ENGINE_PY_NUM_THREADS": " "}, "default", "OMP_NUM_THREADS='-2'"),
    ({"OMP_NUM_THREADS": "1", "ENGINE_PY_NUM_THREADS": "2.5"}, 1, "ENGINE_PY_NUM_THREADS='2.5'"),
    ({"ENGINE_PY_NUM_THREADS": "100000"}, AVAIL, f"ENGINE_PY_NUM_THREADS=100000: this process may use {AVAIL} CPUs"),
])
def test_environment_at_import(env, want, warn):
    out, err = _import_in_child(env)
    want = _threads.default_num_threads() if want == "default" else want
    assert int(out) == want
    if warn is None:
        assert "Warning" not in err, err
    else:
        assert "RuntimeWarning" in err and warn in err, err


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/user.slice/job.scope\n")
    root = tmp_path / "cg"
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) is None       # no cgroup fs
    _write(root / "user.slice" / "job.scope" / "cpu.max", "max 100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) is None       # no quota
    _write(root / "user.slice" / "cpu.max", "250000 100000\n")           # the parent limits: 2.5
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) == 3          # rounded up, like loky
    _write(root / "user.slice" / "job.scope" / "cpu.max", "50000 100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) == 1          # the smallest, at least 1
    _write(root / "user.slice" / "job.scope" / "cpu.max", "garbage\n")
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) == 3


def test_cgroup_v2_in_a_container_namespace(tmp_path):
    # a container with its own cgroup namespace sees itself at the root
    proc = tmp_path / "proc_cgroup"
    _write(proc, "0::/\n")
    _write(tmp_path / "cg" / "cpu.max", "200000 100000\n")
    assert _threads.cgroup_cpu_limit(str(tmp_path / "cg"), str(proc)) == 2


def test_cgroup_v1_quota(tmp_path):
    proc = tmp_path / "proc_cgroup"
    _write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    root = tmp_path / "cg"
    d = root / "cpu,cpuacct" / "docker" / "abc"
    _write(d / "cpu.cfs_quota_us", "-1\n")
    _write(d / "cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) is None
    _write(d / "cpu.cfs_quota_us", "150000\n")
    assert _threads.cgroup_cpu_limit(str(root), str(proc)) == 2


def test_default_is_min_of_affinity_and_quota(monkeypatch):
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: 1)
    assert _threads.default_num_threads() == 1
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: 10**4)
    assert _threads.default_num_threads() == AVAIL
    monkeypatch.setattr(_threads, "cgroup_cpu_limit", lambda: None)
    assert _threads.default_num_threads() == AVAIL


# -------------------------------------------------------------- threadpoolctl

threadpoolctl = pytest.importorskip("threadpoolctl")


@pytest.fixture(scope="module")
def encoder():
    from engine_py.models import minilm_path

    return engine_py.Encoder.from_pretrained(minilm_path(), max_length=128)


TEXTS = [f"package {i}: a library for parsing and rendering documents, with command line tools"
         for i in range(16)]


def _parallel_blas_calls_during(fn):
    before = _core._blas_parallel_calls()
    fn()
    return _core._blas_parallel_calls() - before


def test_threadpool_info_lists_engine_py_libraries():
    import scipy_openblas32

    info = threadpoolctl.threadpool_info()
    ours = [d for d in info if d["internal_api"] == "engine_py"]
    assert len(ours) == 1
    assert os.path.samefile(ours[0]["filepath"], _core.__file__)
    assert ours[0]["user_api"] == "openmp" and ours[0]["num_threads"] == engine_py.get_num_threads()
    assert ours[0]["version"] == engine_py.__version__
    # the OpenBLAS engine_py links (scipy_openblas32, prefixed symbols) and the OpenMP runtime
    blas_dir = os.path.realpath(scipy_openblas32.get_lib_dir())
    assert any(d["internal_api"] == "openblas" and os.path.realpath(d["filepath"]).startswith(blas_dir)
               for d in info), info
    assert any(d["internal_api"] == "openmp" and d["prefix"] == "libgomp" for d in info), info


@needs_two_cpus
def test_threadpool_limits_runs_engine_py_single_threaded(encoder, restore_threads):
    engine_py.set_num_threads(2)
    want = encoder.encode(TEXTS)
    assert _parallel_blas_calls_during(lambda: encoder.encode(TEXTS)) > 0   # GEMMs do split at 2
    with threadpoolctl.threadpool_limits(1):
        assert engine_py.get_num_threads() == 1
        info = engine_py.info()
        assert info["omp_threads"] == 1 and info["blas_threads"] == 1
        got = []
        assert _parallel_blas_calls_during(lambda: got.append(encoder.encode(TEXTS))) == 0
        # a Python thread started inside the block is limited too
        seen = []

        def other():
            seen.append((engine_py.get_num_threads(), _core.build_info()["omp_threads"],
                         _parallel_blas_calls_during(lambda: encoder.encode(TEXTS[:4]))))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert seen == [(1, 1, 0)]
    np.testing.assert_allclose(got[0], want, rtol=1e-5, atol=1e-6)
    # restored on exit
    assert engine_py.get_num_threads() == 2
    assert engine_py.info()["omp_threads"] == 2 and engine_py.info()["blas_threads"] == 2
    assert _parallel_blas_calls_during(lambda: encoder.encode(TEXTS)) > 0


@needs_two_cpus
def test_threadpool_limits_entered_in_a_worker_thread(encoder, restore_threads):
    # a thread that never called engine_py before enters the limit: the
    # core's per-call sync of the OpenMP count must not undo it
    engine_py.set_num_threads(2)
    seen = []

    def worker():
        with threadpoolctl.threadpool_limits(1):
            seen.append((engine_py.get_num_threads(), _core.build_info()["omp_threads"],
                         _parallel_blas_calls_during(lambda: encoder.encode(TEXTS))))
        seen.append((engine_py.get_num_threads(), _core.build_info()["omp_threads"]))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == [(1, 1, 0), (2, 2)]


@needs_two_cpus
def test_threadpool_limits_by_user_api(encoder, restore_threads):
    engine_py.set_num_threads(2)
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):   # engine_py is an OpenMP library
        assert engine_py.get_num_threads() == 1 and engine_py.info()["omp_threads"] == 1
        assert _parallel_blas_calls_during(lambda: encoder.encode(TEXTS)) == 0
    assert engine_py.get_num_threads() == 2
    with threadpoolctl.threadpool_limits(1, user_api="blas"):     # OpenBLAS's own count only
        assert engine_py.info()["blas_threads"] == 1
        assert engine_py.get_num_threads() == 2 and engine_py.info()["omp_threads"] == 2
        assert _parallel_blas_calls_during(lambda: encoder.encode(TEXTS)) == 0
    assert engine_py.info()["blas_threads"] == 2


def test_threadpool_limits_above_cpus_caps_silently(restore_threads):
    old = engine_py.get_num_threads()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with threadpoolctl.threadpool_limits(AVAIL + 5):
            assert engine_py.get_num_threads() == AVAIL
    assert engine_py.get_num_threads() == old


def test_threadpoolctl_registration_is_optional():
    # without threadpoolctl, engine_py imports and counts threads all the same
    prog = textwrap.dedent("""
        import sys
        sys.modules["threadpoolctl"] = None   # import fails
        import engine_py
        assert not engine_py._threads._registered
        engine_py.set_num_threads(1)
        print(engine_py.get_num_threads())
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", prog], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "1", r.stderr
