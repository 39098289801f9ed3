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


# ------------------------------------------------- "auto": the count follows the load

STAT = """cpu  900 10 300 5000 20 5 5 40 0 0
cpu0 400 5 100 2500 10 2 3 20 0 0
cpu1 500 5 200 2500 10 3 2 20 0 0
intr 12345
"""


def test_busy_ticks_counts_busy_states_of_the_chosen_cpus():
    # user + nice + system + irq + softirq + steal; idle and iowait are not busy
    assert _threads.busy_ticks(STAT, [0]) == 400 + 5 + 100 + 2 + 3 + 20
    assert _threads.busy_ticks(STAT, [1]) == 500 + 5 + 200 + 3 + 2 + 20
    assert _threads.busy_ticks(STAT, [0, 1]) == 530 + 730
    # old kernels print no steal column
    assert _threads.busy_ticks("cpu0 1 2 3 4 5 6 7\n", [0]) == 1 + 2 + 3 + 6 + 7


@pytest.mark.parametrize("text,cpus", [
    (STAT, [0, 2]),                                  # a CPU without a line
    ("cpu0 1 2 3\n", [0]),                           # too few fields
    ("cpu0 1 2 x 4 5 6 7 8\n", [0]),                 # not a number
    ("", [0]),
])
def test_busy_ticks_unreadable_is_none(text, cpus):
    assert _threads.busy_ticks(text, cpus) is None


@pytest.mark.parametrize("free,ceiling,want", [
    (2.0, 2, 2), (1.7, 2, 2), (1.6, 2, 1), (1.0, 2, 1), (0.0, 2, 1), (-0.5, 2, 1),
    (8.0, 4, 4), (3.2, 8, 3), (2.5, 1, 1),
])
def test_threads_for_free_cpus(free, ceiling, want):
    assert _threads.threads_for_free_cpus(free, ceiling) == want


class FakeMachine:
    """/proc/stat, the wall clock and this process's CPU clock, driven by the test:
    run(seconds, own=CPUs this process keeps busy, others=CPUs other processes keep busy)."""

    def __init__(self, cpus=2, hz=100):
        self.cpus, self.hz = cpus, hz
        self.wall, self.own, self.ticks = 1000.0, 5.0, 0.0
        self.readable = True

    def run(self, seconds, own, others):
        self.wall += seconds
        self.own += own * seconds
        self.ticks += min(self.cpus, own + others) * seconds * self.hz

    def stat(self):
        if not self.readable:
            return None
        t = int(self.ticks)   # all on cpu0: the sum over the CPUs is what counts
        return f"cpu  {t} 0 0 0 0 0 0 0 0 0\ncpu0 {t} 0 0 0 0 0 0 0 0 0\n" + \
            "".join(f"cpu{c} 0 0 0 0 0 0 0 0 0 0\n" for c in range(1, self.cpus))

    def governor(self, ceiling):
        return _threads.LoadGovernor(range(self.cpus), ceiling, read_stat=self.stat,
                                     clock=lambda: self.wall, cpu_clock=lambda: self.own,
                                     ticks_per_second=self.hz)


def test_governor_drops_at_once_and_rises_after_two_windows():
    m = FakeMachine(cpus=2)
    g = m.governor(ceiling=2)
    n = 2
    assert g.observe(n) is None                      # the first sample has nothing to compare
    m.run(0.5, own=1.0, others=1.0)                  # another process keeps one CPU busy
    n = g.observe(n) or n
    assert n == 1 and g.others == pytest.approx(1.0)
    m.run(0.5, own=1.0, others=1.0)
    assert g.observe(n) is None                      # still busy: stays at 1
    m.run(0.5, own=1.0, others=0.0)                  # the other process ended
    assert g.observe(n) is None                      # one window is not enough to rise
    m.run(0.5, own=1.0, others=0.0)
    assert g.observe(n) == 2
    m.run(0.5, own=2.0, others=0.0)
    assert g.observe(2) is None                      # alone on the machine: keeps 2
    m.run(0.5, own=1.5, others=0.5)                  # half a CPU taken: not worth a second thread
    assert g.observe(2) == 1


def test_governor_a_lull_does_not_raise_the_count():
    m = FakeMachine(cpus=2)
    g = m.governor(ceiling=2)
    g.observe(1)
    for others in (0.0, 1.0, 0.0, 1.0, 0.0, 1.0):    # idle windows never two in a row
        m.run(0.5, own=1.0, others=others)
        assert g.observe(1) is None


def test_governor_samples_at_most_every_window():
    m = FakeMachine(cpus=2)
    g = m.governor(ceiling=2)
    g.observe(2)
    m.run(g.WINDOW / 3, own=1.0, others=1.0)
    assert g.observe(2) is None and g.others is None   # too soon: no sample taken
    m.run(g.WINDOW, own=1.0, others=1.0)
    assert g.observe(2) == 1


def test_governor_respects_the_ceiling_and_many_cpus():
    m = FakeMachine(cpus=8)
    g = m.governor(ceiling=4)
    g.observe(4)
    m.run(1.0, own=4.0, others=0.0)
    assert g.observe(4) is None                      # 8 free CPUs, ceiling 4
    m.run(1.0, own=3.0, others=5.0)                  # 3 CPUs left free
    assert g.observe(4) == 3


def test_governor_without_proc_stat_keeps_the_count():
    m = FakeMachine(cpus=2)
    m.readable = False
    g = m.governor(ceiling=2)
    for _ in range(3):
        m.run(1.0, own=1.0, others=1.0)
        assert g.observe(2) is None
    assert not g.working


def test_set_num_threads_auto_and_back(restore_threads):
    engine_py.set_num_threads("auto")
    assert engine_py.threads_auto() and engine_py.info()["threads_auto"] is True
    assert engine_py.get_num_threads() == _threads.default_num_threads()
    engine_py.set_num_threads(1)                     # a fixed count ends "auto"
    assert not engine_py.threads_auto() and engine_py.get_num_threads() == 1


@pytest.mark.parametrize("bad", ["Auto", "2", "max", ""])
def test_set_num_threads_other_strings_are_refused(bad, restore_threads):
    with pytest.raises(TypeError, match="an integer or 'auto'"):
        engine_py.set_num_threads(bad)
    assert not engine_py.threads_auto()


def test_environment_auto_at_import():
    out, err = _import_in_child({"ENGINE_PY_NUM_THREADS": "auto"},
                                code="print(engine_py.threads_auto(), engine_py.get_num_threads())")
    assert out == f"True {_threads.default_num_threads()}" and "Warning" not in err


def test_threadpool_limits_under_auto_cap_and_restore(restore_threads):
    engine_py.set_num_threads("auto")
    ceiling = _threads._governor.ceiling
    with threadpoolctl.threadpool_limits(1):
        assert engine_py.get_num_threads() == 1 and _threads._governor.ceiling == 1
    assert engine_py.threads_auto() and _threads._governor.ceiling == ceiling


def _busy_procs(n):
    return [subprocess.Popen([sys.executable, "-c", "while True:\n    pass\n"]) for _ in range(n)]


@needs_two_cpus
@pytest.mark.skipif(AVAIL > 8 or not os.path.exists("/proc/stat"), reason="Linux, 2-8 CPUs")
def test_auto_follows_a_real_busy_process(restore_threads):
    # AVAIL - 1 busy loops leave one CPU free: the count drops to 1; once they
    # end it comes back to the ceiling. adapt() is what the package's loops call.
    import time

    engine_py.set_num_threads("auto")
    ceiling = engine_py.get_num_threads()
    procs = _busy_procs(AVAIL - 1)
    try:
        deadline = time.monotonic() + 10
        while engine_py.get_num_threads() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
            _threads.adapt()
        assert engine_py.get_num_threads() == 1, _threads._governor.others
    finally:
        for p in procs:
            p.kill()
            p.wait()
    deadline = time.monotonic() + 10
    while engine_py.get_num_threads() != ceiling and time.monotonic() < deadline:
        time.sleep(0.05)
        _threads.adapt()
    # back at the ceiling, unless some other job on this machine really keeps
    # its CPUs busy (then the governor must have measured it)
    others = _threads._governor.others
    assert engine_py.get_num_threads() == ceiling or others > AVAIL - ceiling + 0.3, others


def test_fit_lets_the_governor_choose_between_batches(monkeypatch):
    from engine_py import EngineClassifier, Graph
    import engine_py.engine as eng

    calls = []
    monkeypatch.setattr(eng, "_adapt_threads", lambda: calls.append(1))
    rng = np.random.default_rng(0)
    n = 300
    states = engine_py.InMemoryStates(rng.standard_normal((2, n, 16)).astype(np.float32))
    edges = rng.integers(0, n, size=(2, 900))
    labels = rng.integers(0, 3, size=n)
    clf = EngineClassifier(epochs=2, batch_size=64, reduced_dim=8, hidden=8, show_progress_bar=False)
    clf.fit(states, Graph(edges, n), labels, np.arange(200), np.arange(200, 250))
    # one call per training batch (4 per epoch) and per prediction batch (1 per epoch)
    assert len(calls) == 2 * (4 + 1)
