"""precision="bfloat16" on a CPU without the core's bf16 kernel is an exact
emulation that runs no faster than float32: every entry point that takes the
precision says so with a BFloat16EmulationWarning pointing at the user's
line, and stays silent where the kernel exists or for float32."""
import warnings

import numpy as np
import pytest

import engine_py
from engine_py import _core, _isa


class _FakeCore:
    def __init__(self, kernel):
        self.kernel = kernel

    def build_info(self):
        return {"bf16_kernel": self.kernel, "isa": "avx2"}


def test_helper_warns_only_for_bfloat16_without_the_kernel():
    with pytest.warns(engine_py.BFloat16EmulationWarning, match="emulated on this CPU"):
        assert _isa.warn_if_bf16_emulated(_FakeCore(False), "bfloat16", "Thing")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not _isa.warn_if_bf16_emulated(_FakeCore(True), "bfloat16", "Thing")
        assert not _isa.warn_if_bf16_emulated(_FakeCore(False), "float32", "Thing")
        assert not _isa.warn_if_bf16_emulated(_FakeCore(False), None, "Thing")
    assert issubclass(engine_py.BFloat16EmulationWarning, RuntimeWarning)


def _emulated():
    return not _core.build_info()["bf16_kernel"]


def test_moe_layer_warns_at_the_callers_line_exactly_when_emulated():
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        rng = np.random.default_rng(0)
        base = {"W1": rng.normal(0, 0.3, (24, 16)), "W3": rng.normal(0, 0.3, (24, 16)),
                "W2": rng.normal(0, 0.3, (16, 24))}
        engine_py.MoELoRAFFN(base, num_experts=4, top_k=2, precision="bfloat16")
        engine_py.MoELoRAFFN(base, num_experts=4, top_k=2, precision="float32")
    hits = [w for w in rec if issubclass(w.category, engine_py.BFloat16EmulationWarning)]
    assert len(hits) == (1 if _emulated() else 0)
    for w in hits:
        assert w.filename == __file__ and "MoELoRAFFN" in str(w.message)


def test_engine_classifier_warns_at_fit_exactly_when_emulated():
    rng = np.random.default_rng(0)
    n = 60
    states = engine_py.InMemoryStates(rng.standard_normal((2, n, 8)).astype(np.float32))
    src = np.arange(n - 1)
    g = engine_py.Graph(np.stack([src, src + 1]), num_nodes=n)
    y = rng.integers(0, 3, n)
    clf = engine_py.EngineClassifier(reduced_dim=8, hidden=8, epochs=1, batch_size=16,
                                     precision="bfloat16", show_progress_bar=False)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        clf.fit(states, g, y, np.arange(40), np.arange(40, 60))
    hits = [w for w in rec if issubclass(w.category, engine_py.BFloat16EmulationWarning)]
    assert len(hits) == (1 if _emulated() else 0)
    for w in hits:
        assert w.filename == __file__ and "EngineClassifier" in str(w.message)


def test_decoder_encoder_and_trainer_warn_at_the_callers_line_exactly_when_emulated(tmp_path):
    from llm_fixtures import write_tiny_llm

    from engine_py.finetune import Trainer

    tiny = write_tiny_llm(tmp_path, "llama", gguf_types=("F32",))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        engine_py.Encoder.from_pretrained(tiny.gguf["F32"], precision="bfloat16")
        Trainer(tiny.gguf["F32"], r=2, alpha=4, precision="bfloat16")
        engine_py.Encoder.from_pretrained(tiny.gguf["F32"])
        Trainer(tiny.gguf["F32"], r=2, alpha=4)
    hits = [w for w in rec if issubclass(w.category, engine_py.BFloat16EmulationWarning)]
    assert [str(w.message).split(":")[0] for w in hits] == (["Encoder", "Trainer"] if _emulated() else [])
    assert all(w.filename == __file__ for w in hits)
