"""The numerical contract (docs/DESIGN.md §8, engine_py.testing).

- Every SIMD copy of the core's kernels gives the same bits: the encoder,
  a training run and a GMoE layer computed under ENGINE_PY_ISA=generic, avx2
  and avx512 (those the CPU has) are compared bit for bit, each in its own
  process (the level is fixed when the core first dispatches).
- ENGINE_PY_ISA is validated at import.
- The tolerance helper itself can fail: it rejects a difference just above
  the bound and accepts one just below.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import engine_py
from engine_py import _core
from engine_py.testing import STATE_RTOL, assert_states_close, states_close

# the folder the engine_py under test was imported from (the sanitized build
# under .ci/asan-pytest), for the child processes this file starts
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))
LEVELS = ("generic", "avx2", "avx512")

_CHILD = """
import sys
import numpy as np
import engine_py
from engine_py import EngineClassifier, Graph, Encoder
from engine_py.datasets import demo_graph
from engine_py.engine import InMemoryStates
from engine_py.gmoe import MoELoRAFFN
from engine_py.models import minilm_path

engine_py.set_num_threads(2)
out = {"level": np.array(engine_py._core.isa_levels()[0])}
g = demo_graph()
texts = list(g.texts[:48])
enc = Encoder.from_pretrained(minilm_path(), max_length=64)
out["states"] = enc.encode_layers(texts, layers=[0, 3, 6], batch_size=16)
out["emb"] = enc.encode(texts[:8])

rng = np.random.default_rng(0)
states = InMemoryStates(rng.standard_normal((3, g.num_nodes, 48)).astype(np.float32))
graph = Graph(g.edge_index, g.num_nodes)
clf = EngineClassifier(epochs=2, reduced_dim=16, hidden=16, show_progress_bar=False,
                       seed=0).fit(states, graph, g.labels, g.train_idx, g.val_idx)
out["logits"] = clf.predict_logits(g.test_idx[:200])

H, I = 32, 48
bw = {"W1": rng.standard_normal((I, H)).astype(np.float32) * 0.1,
      "W3": rng.standard_normal((I, H)).astype(np.float32) * 0.1,
      "W2": rng.standard_normal((H, I)).astype(np.float32) * 0.1}
for router in ("graph", "linear", "switch"):
    layer = MoELoRAFFN(bw, router=router, num_experts=4, top_k=2, gcn_dim=16, seed=1)
    x = rng.standard_normal((40, H)).astype(np.float32)
    y, aux = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    layer.step(lr=1e-2)
    y2, _ = layer.forward(x)
    out[f"moe_{router}_y"], out[f"moe_{router}_dx"], out[f"moe_{router}_y2"] = y, dx, y2
# the graph router's per-token rows (graph_router_simd.h) on a width that is no
# multiple of their 16 lanes, with 1 and 3 GCN layers and per-expert readouts
for layers, readout in ((2, "per_expert"), (1, "shared"), (3, "shared")):
    layer = MoELoRAFFN(bw, router="graph", num_experts=4, top_k=2, gcn_dim=20,
                       gcn_layers=layers, graph_readout=readout, seed=2)
    x = rng.standard_normal((23, H)).astype(np.float32)
    y, aux = layer.forward(x)
    dx = layer.backward(np.ones_like(y))
    layer.step(lr=1e-2)
    y2, _ = layer.forward(x)
    key = f"moe_graph{layers}_{readout}"
    out[key + "_y"], out[key + "_dx"], out[key + "_y2"] = y, dx, y2

# a tiny Llama-family decoder (qwen2 layout: biases, neox RoPE, GQA) with
# float32 and float16 weights, on packed texts of several lengths
cfg = dict(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
           intermediate_size=40, max_position=64, rms_norm_eps=1e-6, rope_theta=1e4,
           rope_mode="neox", qkv_bias=True)
llm = engine_py._core.LlamaModel(**cfg)
keep = []
for i, (name, shape) in enumerate(llm.weight_specs()):
    w = rng.standard_normal(shape).astype(np.float32) * (0.3 if len(shape) == 2 else 1.0)
    if len(shape) == 2 and i % 2:
        w = w.astype(np.float16)
    keep.append(w)
    llm.set_weight(name, w, 1 if w.dtype == np.float16 else 0, shape)
lens = np.array([1, 9, 33, 20], dtype=np.int64)
off = np.concatenate([[0], np.cumsum(lens)])
ids = rng.integers(0, 97, size=int(off[-1])).astype(np.int32)
out["llama_mean"] = llm.encode_layers(ids, off, np.arange(3, dtype=np.int32))
out["llama_last"] = llm.encode_layers(ids, off, np.arange(3, dtype=np.int32), pooling="last")
np.savez(sys.argv[1], **out)
"""


def _cpu_levels():
    cpu = _core.isa_levels()[1]
    return LEVELS[:LEVELS.index(cpu) + 1]


def _run_child(tmp_path, level):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    out = tmp_path / f"{level}.npz"
    env = dict(os.environ, ENGINE_PY_ISA=level, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return dict(np.load(out))


def test_every_isa_level_gives_the_same_bits(tmp_path):
    pytest.importorskip("engine_py.models").minilm_path()
    levels = _cpu_levels()
    results = {lv: _run_child(tmp_path, lv) for lv in levels}
    base = results[levels[0]]
    assert str(base["level"]) == levels[0]
    for lv in levels[1:]:
        r = results[lv]
        assert str(r["level"]) == lv
        for key in base:
            if key == "level":
                continue
            np.testing.assert_array_equal(r[key], base[key], err_msg=f"{key}: {lv} vs {levels[0]}")
    print("bit-identical across", ", ".join(levels), f"({len(base) - 1} arrays)")


@pytest.mark.parametrize("value, error", [("bogus", "is not one of"), ("avx1024", "is not one of")])
def test_bad_isa_value_is_refused_at_import(value, error):
    env = dict(os.environ, ENGINE_PY_ISA=value, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", "import engine_py"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "ENGINE_PY_ISA" in r.stderr and error in r.stderr, r.stderr


def test_isa_value_above_the_cpu_is_refused_or_accepted():
    cpu = _core.isa_levels()[1]
    env = dict(os.environ, ENGINE_PY_ISA="avx512", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", "import engine_py; print(engine_py._core.isa_levels()[0])"],
                       env=env, capture_output=True, text=True, timeout=120)
    if cpu == "avx512":
        assert r.returncode == 0 and r.stdout.strip() == "avx512", r.stderr
    else:
        assert r.returncode != 0 and "supports at most" in r.stderr, r.stderr


def test_isa_auto_and_case():
    env = dict(os.environ, ENGINE_PY_ISA="Generic", PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", "import engine_py; print(engine_py._core.isa_levels()[0])"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "generic", r.stderr
    env["ENGINE_PY_ISA"] = "auto"
    r = subprocess.run([sys.executable, "-c", "import engine_py; print(engine_py._core.isa_levels())"],
                       env=env, capture_output=True, text=True, timeout=120)
    used, cpu = eval(r.stdout)
    assert used == cpu


# ------------------------------------------------- the tolerance helper

def test_states_close_bound_is_per_row_and_can_fail():
    rng = np.random.default_rng(0)
    b = rng.standard_normal((4, 5, 64)).astype(np.float32)
    scale = np.abs(b).max(axis=-1, keepdims=True)
    inside = b + (0.5 * STATE_RTOL * scale).astype(np.float32)
    outside = b.copy()
    outside[2, 3, 7] += np.float32(3 * STATE_RTOL * scale[2, 3, 0])
    assert_states_close(inside, b)
    assert not states_close(outside, b)
    with pytest.raises(AssertionError, match=r"1 of 1280 elements .* first at \(2, 3, 7\)"):
        assert_states_close(outside, b)
    # a tiny element of a large row may differ by the row's bound (relative
    # error of a single element is not what the contract limits)
    small = b.copy()
    small[0, 0, 0] = 1e-6
    moved = small.copy()
    moved[0, 0, 0] += np.float32(0.5 * STATE_RTOL * np.abs(small[0, 0]).max())
    assert_states_close(moved, small)


def test_states_close_float16_allows_one_ulp_not_two():
    b = np.linspace(-3, 3, 97, dtype=np.float16)[None, :]
    one = np.nextafter(b, np.float16(np.inf))
    assert_states_close(one, b, rtol=0.0)
    two = np.nextafter(one, np.float16(np.inf))
    assert not states_close(two, b, rtol=0.0)


def test_states_close_nan_and_shape():
    a = np.array([[1.0, np.nan]], np.float32)
    assert_states_close(a, a.copy())
    assert not states_close(a, np.array([[1.0, 2.0]], np.float32))
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_states_close(a, a[:, :1])
