"""`python -m engine_py bench finetune` on a tiny GGUF model: every side runs
in its own child, the table has numbers, --out writes the section, and the
first step's loss (base model, B = 0) is the same on the engine_py float32
side and the PyTorch + PEFT side (the two run the same job)."""
import json
import re

import pytest

from engine_py.bench import finetune
from llm_fixtures import write_tiny_llm


def test_make_examples_deterministic():
    p, a = finetune.make_examples(8, 10, seed=3)
    assert (p, a) == finetune.make_examples(8, 10, seed=3)
    assert len(p) == len(a) == 8 and all(x.endswith("Answer:") for x in p)
    assert set(a) <= {" alpha", " bravo", " charlie", " delta"} and len(set(a)) > 1


def _rows(md):
    out = {}
    for line in md.splitlines():
        m = re.match(r"\| (engine_py \w+(?: \+ recompute)?|PyTorch \+ PEFT float32) \| (.*) \|$", line)
        if m:
            out[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return out


def test_bench_finetune_tiny(tmp_path):
    pytest.importorskip("gguf")
    have_torch = True
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        have_torch = False
    tiny = write_tiny_llm(tmp_path / "m", "llama", gguf_types=("Q8_0",))
    out = tmp_path / "B.md"
    (tmp_path / "B.md").write_text("# engine_py benchmarks\n\n## other\n\nkept\n")
    argv = ["--model", tiny.gguf["Q8_0"], "--steps", "1", "--warmup", "1", "--batch-size", "3",
            "--prompt-words", "8", "--threads", "1", "--quiet", "--out", str(out)]
    if not have_torch:
        argv.append("--no-torch")
    assert finetune.main(argv) == 0
    md = out.read_text()
    assert "## other" in md and "kept" in md and "<!-- bench:finetune:begin -->" in md
    rows = _rows(md)
    assert set(rows) >= {"engine_py float32", "engine_py bfloat16", "engine_py bfloat16 + recompute"}
    for lab, cells in rows.items():
        assert "not run" not in cells[-1], (lab, cells)
        # tokens/s, CPU s / step, tokens per CPU s, peak RSS
        assert float(cells[1]) > 0 and float(cells[3]) > 0 and float(cells[4]) > 0
        assert float(cells[6]) > 0
    if have_torch:
        f32 = float(rows["engine_py float32"][-1])
        ref = float(rows["PyTorch + PEFT float32"][-1])
        bf = float(rows["engine_py bfloat16"][-1])
        assert abs(f32 - ref) <= 1e-4 * abs(ref), (f32, ref)
        assert abs(bf - ref) <= 2e-2 * abs(ref), (bf, ref)
        assert rows["engine_py float32"][2].endswith("x")   # ratio against PyTorch
        assert rows["engine_py bfloat16 + recompute"][-1] == rows["engine_py bfloat16"][-1]


def test_bench_finetune_json(tmp_path):
    tiny = write_tiny_llm(tmp_path / "m", "qwen2", gguf_types=("F32",))
    out = tmp_path / "r.json"
    assert finetune.main(["--model", tiny.gguf["F32"], "--steps", "2", "--warmup", "0",
                          "--batch-size", "2", "--prompt-words", "4", "--threads", "1",
                          "--precisions", "float32", "--no-torch", "--quiet",
                          "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    r = d["results"]["engine_py float32"]
    assert len(r["raw"]["times"]) == 2 and r["tokens_per_s"] > 0 and r["rss_mb"] > 0
    assert len(r["raw"]["cpu"]) == 2 and r["tokens_per_cpu_s"] > 0
    # the adapter trained: the second step's loss differs from the first
    assert r["raw"]["losses"][0] != r["raw"]["losses"][1]


def test_registered_with_the_cli(capsys):
    from engine_py.bench import NAMES
    from engine_py.cli import main

    assert "finetune" in NAMES
    with pytest.raises(SystemExit) as e:
        main(["bench", "finetune", "--help"])
    assert e.value.code == 0
    assert "PyTorch + PEFT" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["gmoe", "mixlora"])
def test_bench_finetune_moe_tiny(tmp_path, method):
    """--method gmoe / mixlora: the engine side trains the mixture of experts
    and the PyTorch side is the official-style model, on the same batches
    (their routers start from different draws, so their first losses differ
    by the aux terms; the parity of the two is test_finetune_gmoe_grad's)."""
    tiny = write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    out = tmp_path / "r.json"
    assert finetune.main(["--model", tiny.gguf["F32"], "--method", method, "--experts", "4",
                          "--steps", "1", "--warmup", "1", "--batch-size", "3",
                          "--prompt-words", "6", "--threads", "1", "--precisions", "float32",
                          "--quiet", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    eng = d["results"]["engine_py float32"]
    ref = d["results"]["PyTorch official-style float32"]
    assert ref.get("tokens_per_s", 0) > 0, ref
    assert eng["tokens_per_s"] > 0 and eng["rss_mb"] > 0 and ref["rss_mb"] > 0
    assert eng["tokens_per_step"] == ref["tokens_per_step"]
    assert ("GMoE fine-tuning" if method == "gmoe" else "MixLoRA fine-tuning") in d["markdown"]


def test_bench_finetune_methods_interleaved(tmp_path):
    """--method gmoe,mixlora: one engine_py process trains both on the same
    batches, interleaved; rows per method, each against its own PyTorch row,
    and the step-time ratio of gmoe to mixlora from that one process."""
    tiny = write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    out = tmp_path / "r.json"
    assert finetune.main(["--model", tiny.gguf["F32"], "--method", "gmoe,mixlora", "--experts", "4",
                          "--steps", "2", "--warmup", "1", "--batch-size", "2",
                          "--prompt-words", "5", "--threads", "1", "--precisions", "float32",
                          "--quiet", "--out", str(out)]) == 0
    d = json.loads(out.read_text())
    res = d["results"]
    g, m = res["engine_py gmoe float32"], res["engine_py mixlora float32"]
    assert len(g["raw"]["times"]) == len(m["raw"]["times"]) == 3
    assert g["raw"]["tokens"] == m["raw"]["tokens"]   # the same batches
    assert g["first_loss"] != m["first_loss"]          # different aux losses: two trainers
    ov = res["engine_py float32 overhead"]["methods"]["gmoe"]
    assert ov["wall_ratio"] == pytest.approx(g["s_per_step"] / m["s_per_step"])
    assert len(ov["step_ratios"]) == 2 and ov["cpu_ratio"] > 0
    md = d["markdown"]
    assert "GMoE vs MixLoRA fine-tuning" in md and "Step time against mixlora" in md
    assert re.search(r"\| float32 \| gmoe \| [0-9.]+ \| [0-9.]+ \| [0-9.]+ \|", md)
    if "PyTorch gmoe official-style float32" in res:
        for meth in ("gmoe", "mixlora"):
            ref = res[f"PyTorch {meth} official-style float32"]
            assert ref.get("tokens_per_s", 0) > 0, ref
            row = next(line for line in md.splitlines()
                       if line.startswith(f"| engine_py {meth} float32 |"))
            assert row.split("|")[4].strip().endswith("x")   # vs its own PyTorch row


def test_bench_finetune_methods_bad(capsys):
    for bad in (["--method", "gmoe,gmoe"], ["--method", "gmoe,foo"],
                ["--method", "gmoe,mixlora", "--router", "switch"]):
        with pytest.raises(SystemExit) as e:
            finetune.main(bad + ["--quiet"])
        assert e.value.code == 2
    assert "--method" in capsys.readouterr().err
