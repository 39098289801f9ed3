"""bench finetune-task: the question maker, and the whole study on a tiny
random Llama and a small synthetic graph (the real run is SmolLM2 on the
Debian packages: docs/FINETUNE.md)."""
import json

import numpy as np
import pytest

from engine_py.bench import finetune_task as ft

NAMES = ["admin", "games", "libs", "net", "utils", "web"]


def test_make_questions_are_well_formed():
    rng = np.random.default_rng(0)
    texts = [f"pkg{i}: does thing {i}" for i in range(40)]
    labels = np.arange(40) % len(NAMES)
    idx = np.arange(10, 40)
    p, c, y, a = ft.make_questions(texts, labels, NAMES, idx, 20, rng)
    assert len(p) == len(c) == len(y) == len(a) == 20
    used = set()
    for prompt, ch, yi, ans in zip(p, c, y, a):
        assert len(ch) == 4 and len(set(ch)) == 4 and ans == ch[yi]
        node = int(prompt.split("Package: pkg")[1].split(":")[0])
        assert node in idx and node not in used          # from the split, no repeats
        used.add(node)
        assert ch[yi] == " " + NAMES[labels[node]]        # the true section is the marked choice
        for k, name in enumerate(ch):                     # the prompt lists the choices in order
            assert f"Answer{k + 1}: {name.strip()}" in prompt
        assert prompt.endswith("Answer:")
    # the true choice's position varies (not always the first)
    assert len(set(y.tolist())) > 1
    with pytest.raises(ValueError, match="questions"):
        ft.make_questions(texts, labels, NAMES, idx, 31, rng)
    with pytest.raises(ValueError, match="choices"):
        ft.make_questions(texts, labels, NAMES, idx, 5, rng, n_choices=7)


def test_study_runs_end_to_end_on_a_tiny_model(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    import llm_fixtures as F
    from engine_py.datasets.graph import TextGraph
    from engine_py.datasets.io import save_packed

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    n = 60
    g = TextGraph(texts=[f"p{i}: tool number {i}" for i in range(n)], edge_index=np.zeros((2, 0)),
                  labels=np.arange(n) % len(NAMES), label_names=NAMES, train_idx=np.arange(0, 30),
                  val_idx=np.arange(30, 40), test_idx=np.arange(40, 60), name="tiny")
    save_packed(g, tmp_path / "g")
    out = tmp_path / "r.json"
    assert ft.main(["--model", m.gguf["F32"], "--graph", str(tmp_path / "g"), "--train", "12",
                    "--test", "8", "--seeds", "0,1", "--batch-size", "4", "--lr", "1e-2",
                    "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    assert 0.0 <= res["zero_shot_acc"] <= 1.0
    assert [s["seed"] for s in res["seeds"]] == [0, 1]
    for s in res["seeds"]:
        assert 0.0 <= s["test_acc"] <= 1.0 and s["train_seconds"] > 0 and s["tokens_per_s"] > 0
        assert np.isfinite(s["first_loss"]) and np.isfinite(s["last_loss"])
    md = capsys.readouterr().out
    assert "| engine_py float32: zero-shot (base model) |" in md and "mean ± std over 2 seeds" in md


def _tiny_graph(tmp_path):
    from engine_py.datasets.graph import TextGraph
    from engine_py.datasets.io import save_packed

    n = 60
    g = TextGraph(texts=[f"p{i}: tool number {i}" for i in range(n)], edge_index=np.zeros((2, 0)),
                  labels=np.arange(n) % len(NAMES), label_names=NAMES, train_idx=np.arange(0, 30),
                  val_idx=np.arange(30, 40), test_idx=np.arange(40, 60), name="tiny")
    save_packed(g, tmp_path / "g")
    return str(tmp_path / "g")


def test_torch_side_runs_the_same_job(tmp_path, capsys):
    """--side both, float32, PEFT started from engine_py's LoRA A: the same
    questions, batches, order and schedule give the same loss at every step
    (the trajectories differ only by float32 rounding) and the same
    zero-shot choice scores; a PEFT side on another batch order would differ
    from step 1 on."""
    import llm_fixtures as F

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    out = tmp_path / "r.json"
    assert ft.main(["--model", m.gguf["F32"], "--graph", _tiny_graph(tmp_path), "--train", "16",
                    "--test", "8", "--seeds", "3", "--batch-size", "4", "--lr", "2e-2",
                    "--side", "both", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    res = json.loads(out.read_text())["results"]
    eng, tor = res["seeds"][0], res["torch"]["seeds"][0]
    assert res["torch"]["init"] == "engine" and tor["seed"] == 3
    assert len(eng["losses"]) == len(tor["losses"]) == 4          # 16 questions / batch 4
    e, t = np.asarray(eng["losses"]), np.asarray(tor["losses"])
    assert np.ptp(e) > 1e-3                                        # the batches differ
    np.testing.assert_allclose(t, e, rtol=1e-4)
    assert res["torch"]["zero_shot_acc"] == res["zero_shot_acc"]
    assert len(res["questions_sha256"]) == 64 and res["dataset_provenance"]
    assert abs(tor["test_acc"] - eng["test_acc"]) <= 1 / 8 + 1e-9
    md = capsys.readouterr().out
    assert "| PyTorch + PEFT float32 (init: engine): LoRA, seed 3 |" in md
    assert "| engine_py float32: LoRA, seed 3 |" in md


def test_torch_choice_logprobs_matches_the_trainer(tmp_path):
    """The PyTorch scoring rule is Trainer.choice_logprobs' (summed answer-token
    log-likelihood after the prompt with its special tokens)."""
    import llm_fixtures as F
    from engine_py.bench.finetune import torch_choice_logprobs, torch_lora_model
    from engine_py.finetune import Trainer

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    prompts = ["Question: which one?\nAnswer:", "Another, longer question here\nAnswer:"]
    choices = [[" libs", " net", " games"], [" web", " admin utils", " x"]]
    ref = Trainer(m.gguf["F32"]).choice_logprobs(prompts, choices)
    model, tok = torch_lora_model(m.gguf["F32"], 2, 4.0, 1)
    got = torch_choice_logprobs(model, tok, prompts, choices, batch_size=4)
    assert got.shape == (2, 3) and np.ptp(got) > 0
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_tasks_use_their_own_question():
    rng = np.random.default_rng(0)
    texts = [f"sec{i}\nsome text {i}" for i in range(20)]
    labels = np.arange(20) % 5
    names = ["Data Types", "Superseded Modules", "File Formats", "Development Tools", "Internationalization"]
    p, c, y, a = ft.make_questions(texts, labels, names, np.arange(20), 5, rng,
                                   template=ft.TASKS["pylib"][1])
    assert all("chapter of the Python standard library" in q and "\nSection: sec" in q for q in p)
    assert all(ch[yi] == " " + names[labels[int(q.split("Section: sec")[1].split("\n")[0])]]
               for q, ch, yi in zip(p, c, y))
    assert set(ft.TASKS) == {"debian", "pylib"}
    with pytest.raises(SystemExit):
        ft.main(["--task", "nosuch"])


def test_gmoe_study_runs_end_to_end_on_a_tiny_model(tmp_path):
    """bench gmoe-llm on a tiny random Llama: every method runs, LoRA's rank is
    matched to MixLoRA's parameter count, the MoE runs carry load statistics
    and per-step histories, and the verdict line is computed from the runs."""
    import llm_fixtures as F
    from engine_py.bench import gmoe_llm as gl

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    g = _tiny_graph(tmp_path)
    out = tmp_path / "r.json"
    assert gl.main(["--model", m.gguf["F32"], "--tasks", f"packed:{g}", "--train", "8",
                    "--test", "6", "--seeds", "0,1", "--batch-size", "4", "--experts", "4",
                    "--precision", "float32", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    res = doc["results"]
    task = res["tasks"][0]
    assert [x["method"] for x in task["methods"]] == list(gl.METHODS)
    by = {x["method"]: x for x in task["methods"]}
    # LoRA's rank is the one whose parameter count is the closest to MixLoRA's
    from engine_py.finetune import Trainer

    hp = Trainer(m.gguf["F32"], show_progress_bar=False)._hp
    want = by["mixlora"]["params"]
    assert gl.lora_params(hp, res["lora_r"]) == by["lora"]["params"]
    assert all(abs(gl.lora_params(hp, r) - want) >= abs(by["lora"]["params"] - want)
               for r in range(1, 64))
    for x in task["methods"]:
        assert [r["seed"] for r in x["runs"]] == [0, 1]
        for r in x["runs"]:
            assert 0 <= r["test_acc"] <= 1 and len(r["losses"]) == 2
            if x["method"] != "lora":
                assert np.allclose(np.sum(r["load"], axis=1), 1)
                assert len(r["history"]["load"]) == 2
            if x["method"].startswith("gmoe"):
                assert len(r["history"]["lambda"]) == 2
    assert "GMoE vs MixLoRA" in doc["markdown"] and "reproduce" in doc["markdown"]
    with pytest.raises(ValueError, match="unknown method"):
        gl.main(["--model", m.gguf["F32"], "--methods", "lora,moe", "--no-progress"])
    # the on-request GMoE variants: one option each over the reference's settings
    ref = gl.method_kwargs("gmoe", 2, 8, 2, 11)
    for meth, opt in (("gmoe-fix", {"graph_readout": "per_expert", "normal_running_decay": 0.5}),
                      ("gmoe-mean", {"aux_reduction": "mean"}), ("gmoe-balance", {"graph_balance": True}),
                      ("gmoe-fix-balance", {"graph_readout": "per_expert", "normal_running_decay": 0.5,
                                            "graph_balance": True})):
        kw = gl.method_kwargs(meth, 2, 8, 2, 11)
        assert {k: v for k, v in kw.items() if k not in ref} == opt, meth
        assert kw["router"] == "graph" and kw["method"] == "gmoe"
    tr = Trainer(m.gguf["F32"], experts=4, show_progress_bar=False,
                 **{k: v for k, v in gl.method_kwargs("gmoe-balance", 2, 4, 2, 11).items() if k != "experts"})
    assert tr.graph_balance and tr._aux_coefs()[2] == tr.loss_coefs["balance"] == 0.01
    assert gl.method_kwargs("gmoe-fix-balance", 2, 8, 2, 11, 1.5)["loss_coefs"] == {"balance": 1.5}
    assert "loss_coefs" not in gl.method_kwargs("gmoe-fix", 2, 8, 2, 11, 1.5)
    assert Trainer(m.gguf["F32"], method="gmoe", experts=4, show_progress_bar=False)._aux_coefs()[2] == 0
    with pytest.raises(ValueError, match="graph_balance"):
        Trainer(m.gguf["F32"], method="mixlora", graph_balance=True, show_progress_bar=False)


def test_gmoe_study_runs_merge_into_one_table(tmp_path):
    """bench gmoe-llm --merge: two runs of the same settings (different seeds
    and methods) become one study, runs sorted by seed and labelled by source;
    the same seed twice, other settings or other questions are refused."""
    import llm_fixtures as F
    from engine_py.bench import gmoe_llm as gl
    from engine_py.bench import gmoe_llm_merge as gm

    m = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",))
    g = _tiny_graph(tmp_path)
    common = ["--model", m.gguf["F32"], "--tasks", f"packed:{g}", "--train", "6", "--test", "4",
              "--batch-size", "3", "--experts", "4", "--precision", "float32", "--no-progress",
              "--lora-r", "2"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert gl.main(common + ["--methods", "lora,gmoe", "--seeds", "1", "--out", str(a)]) == 0
    assert gl.main(common + ["--methods", "gmoe,gmoe-balance", "--seeds", "0", "--balance-coef", "1",
                             "--out", str(b)]) == 0
    out, md = tmp_path / "m.json", tmp_path / "R.md"
    md.write_text("# Results\n\nkept\n")
    assert gl.main(["--merge", f"{a}=first", f"{b}=second", "--out", str(out), "--markdown", str(md),
                    "--note", "A hand-written sentence."]) == 0
    res = json.loads(out.read_text())["results"]
    (task,) = res["tasks"]
    by = {x["method"]: x for x in task["methods"]}
    # another balance weight is its own row
    assert [x["method"] for x in task["methods"]] == ["lora", "gmoe", "gmoe-balance@1"]
    assert [(r["seed"], r["source"]) for r in by["gmoe"]["runs"]] == [(0, "second"), (1, "first")]
    ra = json.loads(a.read_text())["results"]["tasks"][0]["methods"]
    assert by["lora"]["runs"][0]["test_acc"] == ra[0]["runs"][0]["test_acc"]   # not re-measured
    assert res["seeds"] == [0, 1] and "A hand-written sentence." in res["note"]
    text = md.read_text()
    assert "kept" in text and "| gmoe-balance@1 |" in text and "first: `python -m engine_py" in text
    assert "Seeds: 0, 1." in text and "gmoe-no-* ablations" not in text   # none in this study
    # --section: another table beside it in the same file
    assert gl.main(["--merge", str(b), "--markdown", str(md), "--section", "gmoe_other"]) == 0
    text = md.read_text()
    assert text.count("<!-- bench:gmoe_llm:begin -->") == 1 and "<!-- bench:gmoe_other:begin -->" in text
    # refused: a seed in two sources, other settings, other questions
    with pytest.raises(ValueError, match="seed 1 is in two sources"):
        gm.merge([gm.load_source(str(a)), gm.load_source(str(a))])
    doc = json.loads(b.read_text())
    doc["results"]["lr"] = 0.5
    (tmp_path / "c.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="settings differ.*lr"):
        gm.merge([gm.load_source(str(a)), gm.load_source(str(tmp_path / "c.json"))])
    doc = json.loads(b.read_text())
    doc["results"]["tasks"][0]["questions_sha256"] = "0" * 64
    (tmp_path / "d.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="different questions"):
        gm.merge([gm.load_source(str(a)), gm.load_source(str(tmp_path / "d.json"))])
    with pytest.raises(ValueError, match="no such study result"):
        gm.load_source(str(tmp_path / "none.json"))
