"""bench engine-llm: the study function end to end on a tiny random Llama GGUF
and a tiny synthetic graph (fast; the real models and graphs are for the bench)."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

import llm_fixtures as F  # noqa: E402

from engine_py import Encoder  # noqa: E402
from engine_py.bench import NAMES  # noqa: E402
from engine_py.bench.engine_llm import POLICIES, render_markdown, run_study, subsample  # noqa: E402
from engine_py.datasets import TextGraph, stratified_split  # noqa: E402

from test_early_exit_llm import _graph_data  # noqa: E402


def _toy_graph():
    texts, y, ei = _graph_data(n=90, seed=1)
    tr, va, te = stratified_split(y, seed=0)
    return TextGraph(texts=texts, edge_index=ei, labels=y, label_names=["a", "b", "c"],
                     train_idx=tr, val_idx=va, test_idx=te, name="toy", provenance="synthetic").validate()


def test_subsample_keeps_edges_and_splits():
    g = _toy_graph()
    s = subsample(g, 40, seed=0)
    assert s.num_nodes == 40 and s.num_edges > 0
    assert s.train_idx.size + s.val_idx.size + s.test_idx.size == 40
    assert subsample(g, 1000) is g


def test_run_study_tiny(tmp_path):
    tiny = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",), layers=4, hidden=64,
                            intermediate=96)
    enc = Encoder.from_pretrained(tiny.gguf["F32"], max_length=32)
    g = _toy_graph()
    logs, seen = [], []
    res = run_study({"toy": g}, {"tiny": enc}, seeds=[0, 1], cache_dir=str(tmp_path / "c"),
                    layers="every:2", epochs=4, patience=2, exit_nodes=8, batch_size=8,
                    timing_nodes=8, reencode_batches=1, reencode_batch_size=8, pyg_epochs=2,
                    show=False, log=logs.append, on_pair=lambda r: seen.append(len(r["pairs"])))
    assert seen == [1] and res["planned_pairs"] == 1
    (p,) = res["pairs"]
    assert p["layers"] == [0, 2, 4] and p["cache"]["layers"] == [0, 2, 4]
    assert not p["cache"]["reused"] and p["cache"]["build_seconds"] > 0 and p["cache"]["bytes"] > 0
    names = list(p["models"])
    assert names[:4] == ["ENGINE", "MLP (last layer)", "SAGE (last layer)", "GCN (last layer)"]
    assert names[4].startswith("SAGE (best single layer") and p["best_single_layer"] in (0, 2, 4)
    assert (p["pooling"], p["template"]) == ("mean", None)
    for r in p["models"].values():
        assert len(r["test_acc"]) == 2 and all(0 <= a <= 1 for a in r["test_acc"])
        assert all(s > 0 for s in r["seconds_per_epoch"]) and all(1 <= e <= 4 for e in r["epochs"])
    assert len(p["models"]["ENGINE"]["gates"][0]) == 2
    # every policy's histogram counts every test node of every seed
    for label, _p, _t in POLICIES:
        r = p["exit_cached"][label]
        assert sum(r["histogram"]) == 2 * g.test_idx.size
        assert all(0 <= m <= 4 for m in r["mean_exit_layer"])
    # the threshold 0.999 never exits later than 0.99 does (mean layer)
    assert np.mean(p["exit_cached"]["threshold 0.999"]["mean_exit_layer"]) >= \
        np.mean(p["exit_cached"]["threshold 0.99 (default)"]["mean_exit_layer"]) - 1e-9
    live = p["exit_live"]
    assert live["full depth"]["num_nodes"] == 8
    assert live["full depth"]["sequence_layers"] == 8 * 4          # every new node to the last layer
    assert live["full depth"]["agrees_with_cached"] == 1.0         # live encoder == cache
    for label in ("threshold 0.99 (default)", "patience 1 (paper)"):
        r = live[label]
        assert sum(r["histogram"]) == 8
        assert r["sequence_layers"] == sum(l * c for l, c in zip(p["layers"], r["histogram"]))
    t = p["time_per_exit_layer"]
    assert t["layers"] == [0, 2, 4] and t["sequence_layers"] == [0, 2, 4]
    # cache vs re-encode: one batch, both sides timed, re-encoding costs more than the cache
    r = p["reencode"]
    assert r["batches"] == 1 and r["batch_size"] == 8 and r["unique_texts"][0] >= 8
    assert r["cached_seconds"] > 0 and r["ratio"] == pytest.approx(r["reencode_seconds"] / r["cached_seconds"])
    # engine_py vs plain PyTorch vs PyG on the same batches: every side timed for every epoch
    q = p["pyg"]
    if q is not None:
        assert q["epochs"] == 2 and len(q["val_acc_pyg"]) == 2
        assert min(q["engine_py_epoch_seconds"], q["torch_epoch_seconds"], q["pyg_epoch_seconds"]) > 0
        # (dropout draws differ between the sides, so accuracies are not compared here;
        # the model parity with PyG is tested in tests/test_engine.py)
        assert all(0 <= a <= 1 for a in q["val_acc_engine_py"] + q["val_acc_torch"] + q["val_acc_pyg"])
    assert p["precision_check"] is None          # a float32 encoder: nothing to compare
    # a bfloat16 decoder: timed against its float32 twin, states nearly parallel
    enc16 = Encoder.from_pretrained(tiny.gguf["F32"], max_length=32, precision="bfloat16")
    from engine_py.bench.engine_llm import run_precision
    pc = run_precision(enc16, g.texts[:6], [0, 2, 4], batch_size=4, log=logs.append)
    assert pc["num_texts"] == 6 and pc["float32_seconds"] > 0 and pc["bfloat16_seconds"] > 0
    assert len(pc["cosine_min"]) == 3 and min(pc["cosine_min"]) > 0.99
    rss = p["rss_peak_bytes"]
    assert rss["cache_build"] > 1e6 and rss["training"] > 1e6
    md = render_markdown(res, command="cmd", machine="m", small=True, samples={"toy": (900, 90)})
    assert "Sampled graph" in md and "## Summary" in md and "## Cache vs re-encode" in md
    assert "## Peak resident memory" in md
    assert "SMALL-SCALE RUN" in md and "| toy | tiny | ENGINE |" in md
    assert "| toy | tiny | float32 | 32 | mean | 0,2,4 |" in md   # the cache row names the pooling
    p2 = dict(p, pooling="last", template="Doc: {text}")
    md2 = render_markdown(dict(res, pairs=[p2]), command="cmd", machine="m", small=True)
    assert "| toy | tiny | float32 | 32 | last, template `Doc: {text}` | 0,2,4 |" in md2
    assert md.count("| toy | tiny |") >= 5 + len(POLICIES) + 3
    json.dumps(res, default=float)   # JSON-ready
    # --render-from: the markdown again from the JSON, no measurement, and it says so
    from engine_py.bench import machine_info, write_json, write_section
    from engine_py.bench.engine_llm import _render_from
    jp = write_json(str(tmp_path / "r.json"), {"command": "cmd", "machine": machine_info(), "results": res,
                                                "sampled_graphs": {"toy": {"full_nodes": 900, "nodes": 90}}})
    # another benchmark's section in the report (bench gmoe-llm writes one) survives the rewrite
    write_section("gmoe_llm", "## GMoE study\n\nkept table", str(tmp_path / "r.md"))
    _render_from(jp, str(tmp_path / "r.md"))
    md2 = (tmp_path / "r.md").read_text()
    assert "Rendered again from" in md2 and "| toy | tiny | ENGINE |" in md2 and "Sampled graph" in md2
    assert md2.count("<!-- bench:gmoe_llm:begin -->") == 1 and "kept table" in md2
    assert md2.index("## Summary") < md2.index("## GMoE study")   # the engine report first
    assert "Largest peak of any phase" in md2
    # a second run reuses the cache (no build time)
    res2 = run_study({"toy": g}, {"tiny": enc}, seeds=[0], cache_dir=str(tmp_path / "c"),
                     layers="every:2", epochs=2, patience=1, exit_nodes=0, timing_nodes=0,
                     show=False, log=logs.append)
    assert res2["pairs"][0]["cache"]["reused"] and res2["pairs"][0]["cache"]["build_seconds"] is None
    assert "engine_llm" in NAMES


def test_engine_llm_exit_sweep(tmp_path):
    from engine_py import Graph
    from engine_py.bench.engine_llm import ENGINE_KW, _build_cache, _fit
    from engine_py.bench.engine_llm_exit import live_sweep, parse_policies, render

    assert parse_policies("p1,t0.9,p2+t0.99") == [("patience 1", 1, None), ("threshold 0.9", None, 0.9),
                                                   ("patience 2 or threshold 0.99", 2, 0.99)]
    with pytest.raises(ValueError):
        parse_policies("x3")
    tiny = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",), layers=4, hidden=64,
                            intermediate=96)
    enc = Encoder.from_pretrained(tiny.gguf["F32"], max_length=32)
    g = _toy_graph()
    cache, _ = _build_cache(str(tmp_path / "c.cache"), enc, g.texts, [0, 2, 4], 8, False)
    clf, info = _fit(dict(layers=[0, 2, 4], early_exit=True, **ENGINE_KW), cache,
                     Graph(g.edge_index, g.num_nodes), g, 0, 3, 2)
    pol = parse_policies("p1,t0.5")
    live = live_sweep(clf, enc, g, cache, pol, exit_nodes=6, log=lambda *a: None)
    assert list(live) == ["full depth", "patience 1", "threshold 0.5"]
    assert live["full depth"]["sequence_layers"] == 6 * 4
    for label, _p, _t in pol:
        r = live[label]
        assert sum(r["histogram"]) == 6 and r["speedup"] > 0
        assert r["sequence_layers"] == sum(l * c for l, c in zip([0, 2, 4], r["histogram"]))
    md = render({"graph": "toy", "model": "tiny", "precision": "float32", "layers": [0, 2, 4], "seed": 0,
                 "val_acc": info["val_acc"], "epochs": info["epochs"], "repeats": 1, "live": live})
    assert "| threshold 0.5 |" in md
    # several seeds: a second model and draw; the summary is the seeds' mean ± std
    from engine_py.bench.engine_llm_exit import render_seeds, summary_rows
    clf1, info1 = _fit(dict(layers=[0, 2, 4], early_exit=True, **ENGINE_KW), cache,
                       Graph(g.edge_index, g.num_nodes), g, 1, 3, 2)
    live1 = live_sweep(clf1, enc, g, cache, pol, exit_nodes=6, seed=1, log=lambda *a: None)
    runs = [{"graph": "toy", "model": "tiny", "precision": "float32", "layers": [0, 2, 4], "seed": s,
             "val_acc": i["val_acc"], "epochs": i["epochs"], "repeats": 1, "live": lv}
            for s, i, lv in ((0, info, live), (1, info1, live1))]
    summ = summary_rows(runs)
    sp = [live["patience 1"]["speedup"], live1["patience 1"]["speedup"]]
    assert summ["patience 1"]["speedup"][0] == pytest.approx(np.mean(sp))
    assert summ["patience 1"]["speedup"][1] == pytest.approx(np.std(sp, ddof=1))
    assert summ["threshold 0.5"]["worst_rel_drop"] == max(live["threshold 0.5"]["rel_drop"],
                                                          live1["threshold 0.5"]["rel_drop"])
    assert "speedup" not in summ["full depth"]
    md2 = render_seeds(runs, "cmd", "machine")
    assert "ENGINE seeds [0, 1]" in md2 and "## Seed 0" in md2 and "## Seed 1" in md2
    assert md2.count("| threshold 0.5 |") == 3   # summary + one table per seed
    cache.close()


def test_prompt_options_reach_the_encoder_cache_name_and_report(tmp_path):
    """--pooling / --template: the decoders get them (MiniLM keeps mean pooling),
    they change the encoder fingerprint and so the cache file, and the cache
    table says which pooling and template a pair used."""
    from engine_py.bench.engine_llm import _cache_path, _encoder_factory, add_prompt_args, render_markdown
    import argparse

    ap = argparse.ArgumentParser()
    add_prompt_args(ap)
    a = ap.parse_args(["--pooling", "last", "--template", "Section: {text}"])
    assert (a.pooling, a.template) == ("last", "Section: {text}")
    with pytest.raises(SystemExit):
        ap.parse_args(["--pooling", "max"])
    tiny = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",), layers=2, hidden=64,
                            intermediate=96)
    plain = Encoder.from_pretrained(tiny.gguf["F32"], max_length=16)
    prompt = Encoder.from_pretrained(tiny.gguf["F32"], max_length=16, pooling=a.pooling, template=a.template)
    g = _toy_graph()
    assert _cache_path("c", "toy", g, "tiny", plain, [0, 2]) != _cache_path("c", "toy", g, "tiny", prompt, [0, 2])
    mini = _encoder_factory("minilm", 16, "bfloat16", "last", "Section: {text}")()
    assert (mini.pooling, mini.template, mini.precision) == ("mean", "Section: {text}", "float32")


def test_merge_puts_pairs_of_runs_with_the_same_settings_into_one_study(tmp_path):
    """bench engine-llm --merge: runs that measured different encoders with the
    same settings become one study; every pair keeps its numbers and names
    the run that measured it; other settings, a changed graph, a pair in two
    sources and another benchmark's JSON are refused."""
    from engine_py.bench import machine_info, write_json
    from engine_py.bench import engine_llm as el
    from engine_py.bench import engine_llm_merge as em

    tiny = F.write_tiny_llm(tmp_path / "m", "llama", gguf_types=("F32",), layers=2, hidden=32,
                            intermediate=48)
    enc = Encoder.from_pretrained(tiny.gguf["F32"], max_length=16)
    g = _toy_graph()
    kw = dict(seeds=[0], cache_dir=str(tmp_path / "c"), layers="every:1", epochs=1, patience=1,
              exit_nodes=0, timing_nodes=0, reencode_batches=0, pyg_epochs=0, precision_texts=0,
              show=False, log=lambda *a: None)
    base = ("python -m engine_py bench engine-llm --graphs toy --seeds 0 --epochs 1 --patience 1 "
            "--layers every:1 --exit-nodes 0")
    docs = {}
    for name, models in (("a", "enc1"), ("b", "enc2,enc3")):
        res = run_study({"toy": g}, {m: enc for m in models.split(",")}, **kw)
        if name == "b":   # cut short: enc3 never ran
            res["pairs"] = res["pairs"][:1]
        cmd = f"{base} --models {models} --out {name}.md"
        docs[name] = write_json(str(tmp_path / f"{name}.json"), {
            "benchmark": "engine_llm", "command": cmd, "small_scale": True, "sampled_graphs": {},
            "complete": len(res["pairs"]) == res["planned_pairs"], "machine": machine_info(), "results": res})
    out = tmp_path / "merged.md"
    assert el.main(["--merge", f"{docs['a']}=first", f"{docs['b']}=second", "--out", str(out)]) == 0
    md = out.read_text()
    doc = json.loads((tmp_path / "merged.json").read_text())
    res = doc["results"]
    assert [(p["model"], p["source"]) for p in res["pairs"]] == [("enc1", "first"), ("enc2", "second")]
    assert res["planned_pairs"] == 3 and doc["merged"] and not doc["complete"]
    a = json.loads(open(docs["a"]).read())["results"]["pairs"][0]
    assert res["pairs"][0]["models"] == a["models"]   # not re-measured, not edited
    assert "PARTIAL" in md and "2 of 3" in md and "Merged by `python -m engine_py bench engine-llm --merge" in md
    assert "| toy | enc1 | ENGINE |" in md and "| toy | enc2 | ENGINE |" in md
    # one section of tables per run: no table mixes the runs' numbers
    first, second = md.split('## Run "first": toy × enc1')[1].split('## Run "second": toy × enc2')
    assert "Measured by `" in first and "(cut short" in second
    assert "| toy | enc1 |" in first and "| toy | enc2 |" not in first
    assert "| toy | enc2 |" in second and "| toy | enc1 |" not in second
    assert first.count("### Test accuracy") == 1 and second.count("### Test accuracy") == 1
    assert "**toy × enc1** (first):" in md and "**toy × enc2** (second):" in md   # the summary
    assert "one run; every number below comes from it" not in md
    assert first.count("(the first pair's are the cleanest)") == 1 == second.count("(the first pair's are the cleanest)")
    # --render-from works on the merged JSON too
    el._render_from(str(tmp_path / "merged.json"), str(tmp_path / "again.md"))
    again = (tmp_path / "again.md").read_text()
    assert "Rendered again from" in again and '## Run "first": toy × enc1' in again
    # refused: other settings, a changed graph, a pair in two sources, another benchmark
    from engine_py.bench import load_result
    A, B = load_result(docs["a"]), load_result(docs["b"])
    other = json.loads(open(docs["b"]).read())
    other["command"] = other["command"].replace("--epochs 1", "--epochs 2")
    with pytest.raises(ValueError, match="settings differ.*epochs"):
        em.merge([A, ("c", other, False)])
    other = json.loads(open(docs["b"]).read())
    other["results"]["graphs"]["toy"]["num_edges"] += 1
    with pytest.raises(ValueError, match="graph toy differs"):
        em.merge([A, ("c", other, False)])
    with pytest.raises(ValueError, match="toy × enc1 is also in a.json"):
        em.merge([A, ("again", A[1], False)])
    with pytest.raises(ValueError, match="not a bench engine-llm result"):
        em.merge([A, ("g", dict(B[1], benchmark="gmoe_llm"), False)])
