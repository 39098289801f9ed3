"""`python -m engine_py bench llm`: its pure-Python parts, without the big
models (text generation, fitting texts to a token count, the GGUF metadata
reader, the FLOP formula, the markdown), and one child process."""
import json
import os
import struct

import pytest

from engine_py.bench import llm


def test_make_texts_is_deterministic_and_varied():
    a = llm.make_texts(256, 6, 32, seed=1)
    assert a == llm.make_texts(256, 6, 32, seed=1)
    assert a != llm.make_texts(256, 6, 32, seed=2)
    assert len(a) == 256 and len(set(a)) > 250
    assert all(6 <= len(t.split(" ")) <= 32 for t in a)
    # pinned: the same texts on every machine and Python version
    assert a[0] == llm.make_texts(1, 6, 32, seed=1)[0]
    assert llm.make_texts(2, 5, 5, seed=0) == llm.make_texts(2, 5, 5, seed=0)


def test_fit_texts_to_token_counts():
    count = lambda t: len(t.split(" ")) + t.count(",")   # a stand-in tokenizer  # noqa: E731
    short = llm.fit_texts(llm.make_texts(64, 2, 60, seed=3), count, 10, 40)
    assert all(10 <= count(t) <= 40 for t in short)
    chars = lambda t: len(t)   # exact fitting down to characters  # noqa: E731
    long_ = llm.fit_texts(llm.make_texts(4, 30, 30, seed=4), chars, 100, 100)
    assert [len(t) for t in long_] == [100] * 4


def _write_meta_gguf(path, kv):
    def s(x):
        b = x.encode()
        return struct.pack("<Q", len(b)) + b
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for k, v in kv:
        out += s(k)
        if isinstance(v, str):
            out += struct.pack("<I", 8) + s(v)
        elif isinstance(v, float):
            out += struct.pack("<If", 6, v)
        elif isinstance(v, list):   # array of strings
            out += struct.pack("<IIQ", 9, 8, len(v)) + b"".join(s(x) for x in v)
        else:
            out += struct.pack("<II", 4, v)
    path.write_bytes(out)


SMOL = [("general.architecture", "llama"), ("general.name", "tiny"), ("llama.block_count", 30),
        ("tokenizer.ggml.tokens", ["a", "b"]), ("llama.embedding_length", 576),
        ("llama.feed_forward_length", 1536), ("llama.attention.head_count", 9),
        ("llama.attention.head_count_kv", 3), ("llama.rope.freq_base", 100000.0),
        ("llama.context_length", 8192)]


def test_gguf_meta_and_flops(tmp_path):
    p = tmp_path / "m.gguf"
    _write_meta_gguf(p, SMOL)
    meta = llm.read_gguf_meta(str(p))
    assert "tokenizer.ggml.tokens" not in meta and meta["llama.rope.freq_base"] == 100000.0
    cfg = llm.llm_config(meta)
    assert cfg == {"arch": "llama", "name": "tiny", "hidden": 576, "layers": 30, "heads": 9,
                   "kv_heads": 3, "ffn": 1536, "head_dim": 64, "context": 8192, "file_type": None}
    # SmolLM2-135M: q,o 576x576; k,v 576x192; gate, up, down 576x1536; 30 layers
    per_layer = 2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536
    assert llm.matmul_params(cfg) == 30 * per_layer == 106_168_320
    assert llm.flops_per_text(cfg, 1) == 2 * 30 * per_layer + 4 * 576 * 30
    n = 512
    assert llm.flops_per_text(cfg, n) == 2 * 30 * per_layer * n + 4 * 576 * 30 * n * (n + 1) / 2
    with pytest.raises(ValueError, match="not a GGUF"):
        (tmp_path / "x").write_bytes(b"NOPE" + bytes(20))
        llm.read_gguf_meta(str(tmp_path / "x"))


def _results(engine_ok):
    cfg = llm.llm_config(dict((k, v) for k, v in SMOL if not isinstance(v, list)))
    e = ({"ok": True, "tokens_per_s": 2000.0, "seconds": 3.2, "rss_mb": 250.0, "setting": "batch_size 32"}
         if engine_ok else {"ok": False, "reason": "ValueError: not a model folder", "rss_mb": 60.0})
    case = {"texts": 256, "tokens": 6400, "min": 10, "max": 40, "gflop": 1.4, "sides": {
        "engine_py": e,
        "xllamacpp": {"ok": True, "tokens_per_s": 1000.0, "seconds": 6.4, "rss_mb": 300.0,
                      "setting": "n_parallel 8, n_batch = n_ubatch 512",
                      "tried": {"1/512/2": 800.0, "8/512/2": 1000.0, "16/2048/1": "failed (x)"}},
        "torch": {"ok": True, "tokens_per_s": 500.0, "seconds": 12.8, "rss_mb": 1200.0, "setting": "batch 32"}}}
    return {"threads": 2, "reps": 3, "sgemm_gflops": 100.0, "command": "python -m engine_py bench llm",
            "gomp_spincount": "10000",
            "models": [{"name": "SmolLM2-135M-Instruct Q4_1", "path": "/x/smol.gguf", "file_mb": 94.0,
                        "cfg": cfg, "cases": {"short": case}}],
            "rss_target": {"limit_mb": 294.0, "verdict": "met (250 MB)" if engine_ok else "not measured"}}


def test_render_markdown():
    md = llm.render_markdown(_results(True), "MACHINE")
    assert md.startswith("## Decoder LLMs: pooled hidden states")
    assert "| short: 256 texts, 6,400 tokens (10–40 per text) | engine_py | 2,000 | 0.4 | 0% | 250 |" in md
    assert "**2.00x llama.cpp, 4.00x PyTorch**" in md
    assert "8/512/2 1,000 tok/s" in md and "16/2048/1 failed (x)" in md
    assert "294 MB: met (250 MB)" in md and md.rstrip().endswith("Machine: MACHINE")
    md = llm.render_markdown(_results(False), "MACHINE")
    assert "| engine_py | not available (ValueError: not a model folder) |" in md
    assert "engine_py / other" not in md


def test_render_markdown_bf16_sides():
    res = _results(True)
    sides = res["models"][0]["cases"]["short"]["sides"]
    sides["engine_py_bf16"] = {"ok": True, "tokens_per_s": 4000.0, "seconds": 1.6, "rss_mb": 260.0,
                               "setting": "batch_size 32, AVX512-BF16 kernel"}
    sides["torch_bf16"] = {"ok": True, "tokens_per_s": 1000.0, "seconds": 6.4, "rss_mb": 900.0,
                           "setting": "batch 32"}
    res["bf16_gflops"] = 400.0
    md = llm.render_markdown(res, "M")
    # % of peak: float32 sides of the sgemm peak (100), bf16 sides of the bf16 peak (400)
    assert "| engine_py, precision='bfloat16' | 4,000 | 0.9 | 0% |" in md
    assert "of PyTorch's bfloat16 matmul (same threads, same run): 400.0 GFLOP/s" in md
    assert "**engine_py / other** | **2.00x llama.cpp, 4.00x PyTorch**" in md
    assert "**engine_py bf16 / other** | **4.00x llama.cpp, 8.00x PyTorch, 4.00x PyTorch bf16**" in md


def test_render_markdown_int8_side():
    res = _results(True)
    sides = res["models"][0]["cases"]["short"]["sides"]
    sides["engine_py_bf16"] = {"ok": True, "tokens_per_s": 4000.0, "seconds": 1.6, "rss_mb": 260.0,
                               "setting": "batch_size 32, AVX512-BF16 kernel"}
    sides["engine_py_int8"] = {"ok": True, "tokens_per_s": 5000.0, "seconds": 0.28, "rss_mb": 255.0,
                               "setting": "batch_size 32, int8 kernel avx512vnni"}
    res["int8_gops"] = 1000.0
    res["int8_kernel"] = "avx512vnni"
    md = llm.render_markdown(res, "M")
    # % of peak: the int8 side of the int8 peak (1.4 GFLOP / 0.28 s = 5 GFLOP/s of 1000)
    assert "| engine_py, precision='int8' | 5,000 | 5.0 | 0% | 255 | batch_size 32, int8 kernel avx512vnni |" in md
    assert "of the int8 peak (engine_py's VPDPBUSD loop, avx512vnni" in md and "1000.0 GOP/s" in md
    assert ("**engine_py int8 / other** | **5.00x llama.cpp, 10.00x PyTorch, 2.50x engine_py f32, "
            "1.25x engine_py bf16**") in md
    res["int8_gops"] = 5.0 / 0.5   # 50% of a small peak
    assert "| engine_py, precision='int8' | 5,000 | 5.0 | 50% |" in llm.render_markdown(res, "M")
    assert llm.side_precision("engine_py_int8") == "int8"
    assert llm.side_precision("torch_bf16") == "bfloat16" and llm.side_precision("engine_py") == "float32"


def test_int8_peak_child():
    r = llm._run_child({"side": "int8_peak", "threads": 1}, 300, lambda *a: None)
    from engine_py import _core
    if _core.build_info()["int8_kernel"] in ("avxvnni", "avx512vnni"):
        assert r["ok"] and r["gops"] > 1.0, r
    else:
        assert not r["ok"] and "no VNNI" in r["reason"]


def test_worker_child_reports_result_and_rss():
    # the smallest child: the sgemm peak (NumPy only), through the real child protocol
    r = llm._run_child({"side": "sgemm", "threads": 1}, 300, lambda *a: None)
    assert r["gflops"] > 0 and r["rss_mb"] > 0


def test_cli_knows_llm():
    from engine_py.bench import NAMES
    assert "llm" in NAMES


def test_bench_llm_end_to_end_on_a_tiny_gguf(tmp_path, capsys):
    """The whole harness (children, the three sides, markdown, --out JSON) on a
    tiny random GGUF model instead of the real ones."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import llm_fixtures as F

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    out = tmp_path / "r.json"
    sides = "engine_py,engine_py_bf16,torch,torch_bf16"   # llama.cpp on the fixtures: test_llm_fixtures.py
    rc = llm.main(["--models", m.gguf["F32"], "--sides", sides, "--cases", "long", "--long", "1",
                   "--long-tokens", "24", "--reps", "1", "--xllamacpp-settings", "2/256/1",
                   "--quiet", "--out", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    case = doc["results"]["models"][0]["cases"]["long"]
    assert case["texts"] == 1 and case["min"] == case["max"] == 24
    for side in ("torch", "torch_bf16", "engine_py", "engine_py_bf16"):
        assert case["sides"][side]["ok"] and case["sides"][side]["tokens_per_s"] > 0, side
    assert doc["results"]["bf16_gflops"] > 0
    md = capsys.readouterr().out
    assert "## Decoder LLMs: pooled hidden states" in md and "Machine: " in md
