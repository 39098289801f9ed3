"""Encoder.from_pretrained(model, adapter=gmoe_dir): a GMoE / MixLoRA adapter
saved by Trainer(method="gmoe" | "mixlora") feeds ENGINE. The attention LoRA
is merged; every layer's MLP routes each token to its top-k LoRA experts
(csrc/models/llama.c FFN hook -> csrc/models/llama_moe.c). Checked against
the official-style PyTorch model (engine_py/bench/gmoe_torch.py: transformers
decoder, plain-torch LoRA, MixLoRA expert loop, torch_geometric GCN) in
float64, through LayerCache and live early exit, in bfloat16, pickled, and
with broken adapter folders (clear ValueErrors naming file and tensor)."""
from __future__ import annotations

import copy
import json
import os
import pickle
import shutil

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("torch_geometric")

from llm_fixtures import write_tiny_llm  # noqa: E402
from test_early_exit_llm import _graph_data  # noqa: E402

from engine_py import Encoder  # noqa: E402
from engine_py.bench import gmoe_torch  # noqa: E402
from engine_py.finetune import Trainer  # noqa: E402
from engine_py.io import load_state, save_safetensors  # noqa: E402

PROMPTS = ["the cat is", "the dog is", "a bird can", "the sun is", "water is", "fire is"]
ANSWERS = [" black", " brown", " fly", " hot", " wet", " hot"]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "python3 depends on libc6",
         "Graph neural networks pass messages", "a", "Numbers 0 1 2 3 4 5 6 7 8 9 10 42"]
KW = dict(experts=4, top_k=2, r=2, alpha=4, gcn_dim=16, lr=5e-3, batch_size=3, seed=3,
          show_progress_bar=False)
MARGIN = 2e-6   # smallest gap between the k-th and (k+1)-th router probability (float32
#              rounds probabilities at ~1e-7: a smaller gap could flip a choice)
ADAPTER_FILE = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("moeenc"), "llama", gguf_types=("Q8_0",),
                          layers=2)


def _trained(path, method, router, out_dir, seed):
    """A Trainer fitted for 2 steps, then its experts' B matrices and the
    routers randomised (so the experts and the routing change the states
    visibly: 2 steps at a small lr barely move B from zero), saved to out_dir.
    Returns (trainer, state at initialisation incl. buffers)."""
    tr = Trainer(path, method=method, router=router, **KW)
    st0 = {**tr.lora_state(), **tr.moe_buffers_state()}
    tr.fit(PROMPTS, ANSWERS)
    assert tr.step_ == 2
    rng = np.random.default_rng(seed)
    st = tr.lora_state()
    for k, v in st.items():
        if k.endswith("lora_B.weight") or k.endswith("mlp.router.weight"):
            # the experts' and the attention adapters' B, the linear router
            st[k] = (v + rng.standard_normal(v.shape) * 0.3).astype(np.float32)
    tr.set_lora_state(st)
    tr.save_adapter(out_dir)
    return tr, st0


def _reference(path, tr, st0, texts_ids):
    """Per text: float64 hidden states (L+1, T, D) of the PyTorch model with
    the trainer's adapter, and the smallest top-k margin of its routing."""
    import torch

    state = {**tr.lora_state(), **tr.moe_buffers_state()}
    ref = gmoe_torch.build(path, state, tr.method, tr.router, tr.experts, tr.top_k, tr.r,
                           tr.alpha, "float64", graph_state=st0, edge_density=tr.edge_density)
    for m in ref.moes:
        m.train(False)
    out, margin = [], np.inf
    with torch.no_grad():
        for ids in texts_ids:
            o = ref.model(input_ids=torch.as_tensor(ids[None].astype(np.int64)),
                          output_hidden_states=True, use_cache=False)
            out.append(np.stack([h[0].numpy() for h in o.hidden_states]))
            for m in ref.moes:
                p = -np.sort(-m.probs.numpy(), axis=1)
                if ref.top_k < p.shape[1]:
                    margin = min(margin, float((p[:, ref.top_k - 1] - p[:, ref.top_k]).min()))
    return out, margin


def _pooled(states):
    return np.stack([s.mean(axis=1) for s in states], axis=1)   # (L+1, n, D)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def cases(tiny, tmp_path_factory):
    """(method, router, base) -> (adapter dir, trainer, reference pooled states)."""
    out = {}
    root = tmp_path_factory.mktemp("adapters")
    for method, router, base in (("gmoe", "graph", "hf"), ("mixlora", "linear", "gguf"),
                                 ("gmoe", "switch", "hf")):
        path = tiny.hf_dir if base == "hf" else tiny.gguf["Q8_0"]
        enc0 = Encoder.from_pretrained(path)
        ids = enc0.tokenize(TEXTS)
        for seed in range(1, 20):
            d = str(root / f"{method}-{router}-{base}-{seed}")
            tr, st0 = _trained(path, method, router, d, seed)
            ref, margin = _reference(path, tr, st0, ids)
            if margin >= MARGIN:
                break
        else:
            raise AssertionError("no randomisation with a clear top-k in 19 seeds")
        out[(method, router, base)] = (path, d, tr, _pooled(ref))
    return out


@pytest.mark.parametrize("key", [("gmoe", "graph", "hf"), ("mixlora", "linear", "gguf"),
                                 ("gmoe", "switch", "hf")])
def test_states_equal_the_pytorch_model(cases, key):
    path, d, tr, ref = cases[key]
    enc = Encoder.from_pretrained(path, adapter=d)
    got = enc.encode_layers(TEXTS, batch_size=2)
    assert got.shape == ref.shape
    for layer in range(got.shape[0]):
        assert _rel(got[layer], ref[layer]) < 1e-4, layer
    # the adapter changes the states, and the experts do beyond the attention
    # LoRA: every layer after the embedding moves far more than the tolerance
    base = Encoder.from_pretrained(path).encode_layers(TEXTS)
    for layer in range(1, got.shape[0]):
        assert _rel(got[layer], base[layer]) > 1e-2, layer


def test_routing_decides_the_states(cases, tmp_path):
    """Another router (its weights permuted across experts) sends tokens to
    other experts: the states move, and still match the reference model
    loaded from the same (edited) file. Shows the routing is read, not just
    the expert weights."""
    path, d, tr, ref = cases[("mixlora", "linear", "gguf")]
    d2 = str(tmp_path / "perm")
    shutil.copytree(d, d2)
    st = load_state(os.path.join(d2, ADAPTER_FILE))
    for k in list(st):
        if k.endswith("mlp.router.weight"):
            st[k] = np.ascontiguousarray(st[k][::-1])
    save_safetensors(os.path.join(d2, ADAPTER_FILE), st)
    a = Encoder.from_pretrained(path, adapter=d).encode_layers(TEXTS)
    b = Encoder.from_pretrained(path, adapter=d2).encode_layers(TEXTS)
    assert _rel(b[1], a[1]) > 1e-3


@pytest.mark.parametrize("key", [("gmoe", "graph", "hf"), ("mixlora", "linear", "gguf")])
def test_bfloat16(cases, key):
    path, d, tr, ref = cases[key]
    f32 = Encoder.from_pretrained(path, adapter=d).encode_layers(TEXTS)
    bf = Encoder.from_pretrained(path, adapter=d, precision="bfloat16").encode_layers(TEXTS)
    plain = Encoder.from_pretrained(path, precision="bfloat16").encode_layers(TEXTS)
    for layer in range(1, f32.shape[0]):
        a, b = f32[layer], bf[layer]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.999, layer
        # bf16 rounding is far smaller than what the adapter changes
        assert _rel(b, a) * 5 < _rel(plain[layer], a), layer


def test_pickle_fingerprint_and_layer_cache(cases, tmp_path):
    from engine_py import LayerCache

    path, d, tr, ref = cases[("gmoe", "graph", "hf")]
    enc = Encoder.from_pretrained(path, adapter=d)
    want = enc.encode_layers(TEXTS)
    enc2 = pickle.loads(pickle.dumps(enc))
    np.testing.assert_array_equal(enc2.encode_layers(TEXTS), want)
    assert enc2.fingerprint() == enc.fingerprint() != Encoder.from_pretrained(path).fingerprint()
    # the adapter's files are part of the fingerprint: an edited router is another model
    d2 = str(tmp_path / "edited")
    shutil.copytree(d, d2)
    st = load_state(os.path.join(d2, ADAPTER_FILE))
    k = "base_model.model.model.layers.0.mlp.router.W_t.weight"
    st[k] = st[k] * np.float32(1.5)
    save_safetensors(os.path.join(d2, ADAPTER_FILE), st)
    assert Encoder.from_pretrained(path, adapter=d2).fingerprint() != enc.fingerprint()
    cache = LayerCache.build(str(tmp_path / "cache"), enc, TEXTS, layers=[0, 1, 2],
                             dtype="float32", show_progress_bar=False)
    np.testing.assert_array_equal(np.stack([cache.layer(i) for i in (0, 1, 2)]), want)


def test_live_early_exit(cases, monkeypatch):
    """predict_new(exit="dynamic") runs the decoder layer by layer on shrinking
    batches: every pooled state it computes equals the MoE encoder's own
    (and is far from the base model's), and its decisions equal the exit rule
    applied to heads read from the cached states of the same encoder."""
    from engine_py import EngineClassifier, Graph
    from engine_py import early_exit
    from engine_py.early_exit import exit_decide
    from engine_py.engine import InMemoryStates

    rec = []
    init0, states0 = early_exit._LiveEncoder.__init__, early_exit._LiveEncoder.states

    def init(self, encoder, token_ids):
        init0(self, encoder, token_ids)
        self._tokens = list(token_ids)

    def states(self, layer, needed):
        out = states0(self, layer, needed)
        rec.append((layer, [self._tokens[i] for i in self.held], out.copy()))
        return out

    monkeypatch.setattr(early_exit._LiveEncoder, "__init__", init)
    monkeypatch.setattr(early_exit._LiveEncoder, "states", states)

    path, d, tr, ref = cases[("gmoe", "graph", "hf")]
    enc = Encoder.from_pretrained(path, adapter=d)
    n = 60
    texts, y, ei = _graph_data(n=n, seed=0)   # the live-exit tests' toy graph
    layers = [0, 1, 2]
    cache = InMemoryStates(enc.encode_layers(texts, layers=layers), layers)
    clf = EngineClassifier(layers=layers, epochs=10, reduced_dim=16, hidden=16, lr=3e-3,
                           seed=0, show_progress_bar=False)
    clf.fit(cache, Graph(ei, num_nodes=n), y, np.arange(0, 40), np.arange(40, 48))
    ids = np.arange(48, n)
    keep = ~(np.isin(ei[0], ids) | np.isin(ei[1], ids))
    g2 = Graph(ei[:, keep], num_nodes=n)
    nbrs = [np.unique(ei[1][(ei[0] == v) & ~np.isin(ei[1], ids)]) for v in ids]
    both = np.isin(ei[0], ids) & np.isin(ei[1], ids)
    g_ref = Graph(ei[:, ~both], num_nodes=n)
    pred, layer = clf.predict_new(enc, [texts[v] for v in ids], nbrs, cache, graph=g2,
                                  exit="dynamic", patience=1, batch_size=4,
                                  return_exit_layer=True)
    base = Encoder.from_pretrained(path)
    seen = 0
    for at, toks, got in rec:
        for tok, row in zip(toks, got):
            off = np.array([0, len(tok)], np.int64)
            want = enc._model.encode_layers(tok, off, np.array([at], np.int32))[0, 0]
            plain = base._model.encode_layers(tok, off, np.array([at], np.int32))[0, 0]
            assert _rel(row, want) < 1e-5, at
            if at > 0:
                assert _rel(plain, want) > 1e-2, at
                seen += 1
    assert seen > 0   # the live path ran layers (through the experts)
    heads = clf.predict_logits(ids, cache=cache, graph=g_ref, all_heads=True)
    want_p, want_at = exit_decide(heads, patience=1)
    np.testing.assert_array_equal(layer, np.asarray(clf.layers_)[want_at])
    np.testing.assert_array_equal(pred, want_p.argmax(1))


# ------------------------------------------------------------ broken adapters


def _edit(src, dst, tensors=None, config=None):
    shutil.copytree(src, dst)
    if tensors is not None:
        st = load_state(os.path.join(dst, ADAPTER_FILE))
        tensors(st)
        save_safetensors(os.path.join(dst, ADAPTER_FILE), st)
    if config is not None:
        p = os.path.join(dst, "adapter_config.json")
        with open(p) as f:
            cfg = json.load(f)
        config(cfg)
        with open(p, "w") as f:
            json.dump(cfg, f)
    return dst


PRE = "base_model.model.model.layers.0.mlp."


def _drop(key):
    return lambda st: st.pop(key)


def _set(key, fn):
    def go(st):
        st[key] = fn(st[key])
    return go


def _extra_layer(st):
    for k in list(st):
        if k.startswith("base_model.model.model.layers.1.mlp."):
            st[k.replace("layers.1.", "layers.2.")] = st[k]


def _nan(st):
    st[PRE + "router.W_s.weight"] = st[PRE + "router.W_s.weight"].copy()
    st[PRE + "router.W_s.weight"][0, 0] = np.nan


@pytest.mark.parametrize("name,tensors,config,match", [
    ("missing expert", _drop(PRE + "experts.1.w2.lora_A.weight"), None,
     r"adapter_model\.safetensors.*missing .*layers\.0\.mlp\.experts\.1\.w2\.lora_A"),
    ("missing adjacency", _drop(PRE + "router.normalized_adjacency"), None,
     r"adapter_model\.safetensors.*router\.normalized_adjacency.*missing"),
    ("missing features", _drop(PRE + "router.expert_features"), None,
     r"adapter_model\.safetensors.*router\.expert_features.*missing"),
    ("hidden size", _set(PRE + "experts.0.w1.lora_A.weight",
                         lambda a: np.concatenate([a, a[:, :1]], 1)), None,
     r"adapter_model\.safetensors.*experts\.0\.w1\.lora_A.*hidden size 65"),
    ("layer count", _extra_layer, None,
     r"adapter_model\.safetensors.*3 layers; this model has 2"),
    ("rank", None, lambda c: c.update(r=3),
     r"adapter_model\.safetensors.*q_proj\.lora_A\.weight has shape \(2, 64\).*\(3, 64\)"),
    ("experts", None, lambda c: c["engine_py_moe"].update(experts=5),
     r"adapter_model\.safetensors.*4 experts per layer.*experts = 5"),
    ("expert features shape", _set(PRE + "router.expert_features", lambda a: a[:, :-1]), None,
     r"adapter_model\.safetensors.*router\.expert_features.*shape"),
    ("running counts", _set(PRE + "normal_running", lambda a: a[:-1]), None,
     r"adapter_model\.safetensors.*normal_running.*shape"),
    ("non-finite", _nan, None, r"adapter_model\.safetensors.*router\.W_s\.weight.*non-finite"),
    ("unchanged copy (control)", _set(PRE + "router.W_t.weight", lambda a: a), None, None),
    ("settings", None, lambda c: c["engine_py_moe"].pop("gcn_dim"),
     r"adapter_config\.json.*engine_py_moe lacks \['gcn_dim'\]"),
    ("bad router", None, lambda c: c["engine_py_moe"].update(router="magic"),
     r"adapter_config\.json.*router must be one of"),
])
def test_broken_adapters_are_refused(cases, tmp_path, name, tensors, config, match):
    path, d, tr, ref = cases[("gmoe", "graph", "hf")]
    bad = _edit(d, str(tmp_path / "bad"), tensors, config)
    if match is None:   # the control: an unchanged copy loads
        Encoder.from_pretrained(path, adapter=bad)
        return
    with pytest.raises(ValueError, match=match):
        Encoder.from_pretrained(path, adapter=bad)


def test_extra_tensor_and_other_model_refused(cases, tiny, tmp_path):
    path, d, tr, ref = cases[("gmoe", "graph", "hf")]
    bad = _edit(d, str(tmp_path / "extra"),
                lambda st: st.__setitem__(PRE + "router.bogus", np.zeros(3, np.float32)))
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*router\.bogus"):
        Encoder.from_pretrained(path, adapter=bad)
    other = write_tiny_llm(tmp_path / "wide", "llama", gguf_types=(), layers=2, hidden=96,
                           heads=4, kv_heads=2, intermediate=128)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors"):
        Encoder.from_pretrained(other.hf_dir, adapter=d)
