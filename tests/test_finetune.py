"""engine_py.finetune.Trainer: training lowers the loss on the answer
tokens, predict/score pick choices by summed log-likelihood (checked
against transformers), adapters round-trip in PEFT's file format,
determinism given a seed, and bad inputs raise clear exceptions."""
import json
import os

import numpy as np
import pytest

from llm_fixtures import write_tiny_llm

from engine_py.finetune import Trainer

PROMPTS = ["the cat is", "the dog is", "a bird can", "the sun is", "water is", "fire is"] * 2
ANSWERS = [" black", " brown", " fly", " hot", " wet", " hot"] * 2
CHOICES = [" black", " brown", " fly", " hot", " wet"]
Y = [0, 1, 2, 3, 4, 3] * 2


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("ft" + request.param), request.param,
                          gguf_types=("Q8_0",), layers=2)


def test_fit_lowers_loss_and_learns_choices(tiny):
    tr = Trainer(tiny.gguf["Q8_0"], r=4, alpha=8, lr=5e-3, epochs=15, batch_size=4, seed=0,
                 show_progress_bar=False)
    before, _ = tr.loss_and_grads(PROMPTS, ANSWERS)
    acc0 = tr.score(PROMPTS, CHOICES, Y)
    assert tr.fit(PROMPTS, ANSWERS) is tr
    after, _ = tr.loss_and_grads(PROMPTS, ANSWERS)
    assert after < 0.5 * before, (before, after)
    assert len(tr.history_) == 15 * 3
    acc1 = tr.score(PROMPTS, CHOICES, Y)
    assert acc1 >= 0.8 and acc1 > acc0, (acc0, acc1)


def test_fit_is_deterministic(tiny):
    a = Trainer(tiny.hf_dir, lr=1e-3, batch_size=4, seed=5, dropout=0.1, show_progress_bar=False)
    b = Trainer(tiny.hf_dir, lr=1e-3, batch_size=4, seed=5, dropout=0.1, show_progress_bar=False)
    a.fit(PROMPTS, ANSWERS)
    b.fit(PROMPTS, ANSWERS)
    assert np.allclose(a._core.params, b._core.params, rtol=1e-4, atol=1e-6)
    c = Trainer(tiny.hf_dir, lr=1e-3, batch_size=4, seed=6, show_progress_bar=False)
    assert not np.allclose(a._core.params, c._core.params, rtol=1e-2, atol=1e-4)


def test_predict_matches_transformers_loglik(tiny):
    torch = pytest.importorskip("torch")
    from llm_fixtures import _load

    tr = Trainer(tiny.hf_dir, seed=1)  # B = 0: the base model
    lp = tr.choice_logprobs(PROMPTS[:3], CHOICES)
    model, _ = _load(tiny.hf_dir)
    ref = np.zeros_like(lp)
    for i, p in enumerate(PROMPTS[:3]):
        for j, c in enumerate(CHOICES):
            seqs, starts = tr._pairs([p], [c])
            ids = torch.tensor(seqs[0][None])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
            ref[i, j] = sum(float(logp[t - 1, seqs[0][t]]) for t in range(starts[0], len(seqs[0])))
    assert np.allclose(lp, ref, rtol=1e-4, atol=1e-4), (lp, ref)
    assert np.array_equal(tr.predict(PROMPTS[:3], CHOICES), ref.argmax(1))
    # per-prompt choice lists
    per = [CHOICES[:2], CHOICES[1:3], CHOICES[2:4]]
    assert tr.predict(PROMPTS[:3], per).shape == (3,)


def test_adapter_round_trip_peft_format(tiny, tmp_path):
    tr = Trainer(tiny.gguf["Q8_0"], r=2, alpha=4, targets=("q", "k", "v", "down"), lr=1e-2,
                 batch_size=4, seed=2, show_progress_bar=False).fit(PROMPTS, ANSWERS)
    tr.save_adapter(tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 2 and cfg["lora_alpha"] == 4
    assert sorted(cfg["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]
    from engine_py.io import load_state

    st = load_state(str(tmp_path / "ad" / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in st
    assert st["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].shape == (
        tiny.config["hidden_size"], 2)
    assert len(st) == 2 * 2 * 4
    tr2 = Trainer.load(tiny.gguf["Q8_0"], tmp_path / "ad")
    assert np.array_equal(tr2._core.params, tr._core.params)
    # equal up to float32 rounding (a BLAS product may take another path,
    # e.g. serial when the loaded machine gives OpenBLAS no threads)
    assert np.allclose(tr2.choice_logprobs(PROMPTS[:4], CHOICES),
                       tr.choice_logprobs(PROMPTS[:4], CHOICES), rtol=1e-5, atol=1e-6)


def test_gguf_adapter_is_in_hf_row_order(tiny, tmp_path):
    """An adapter trained on the GGUF (Q/K rows permuted for llama) applies
    unchanged to the Hugging Face folder of the same weights."""
    torch = pytest.importorskip("torch")  # noqa: F841
    gg = Trainer(tiny.gguf["Q8_0"], r=2, alpha=4, lr=1e-2, batch_size=4, seed=3,
                 show_progress_bar=False).fit(PROMPTS, ANSWERS)
    gg.save_adapter(tmp_path / "ad")
    hf = Trainer.load(tiny.hf_dir, tmp_path / "ad")
    a = gg.choice_logprobs(PROMPTS[:3], CHOICES)
    b = hf.choice_logprobs(PROMPTS[:3], CHOICES)
    # Q8_0 vs float32 base weights: close, not equal
    assert np.abs(a - b).max() < 0.05 * np.abs(b).max()
    base = Trainer(tiny.hf_dir).choice_logprobs(PROMPTS[:3], CHOICES)
    assert np.abs(b - base).max() > 5 * np.abs(a - b).max()


def test_bad_inputs(tiny, tmp_path):
    path = tiny.hf_dir
    with pytest.raises(ValueError, match="method"):
        Trainer(path, method="moe")
    with pytest.raises(ValueError, match="targets"):
        Trainer(path, targets=("q", "nope"))
    with pytest.raises(ValueError, match="r must"):
        Trainer(path, r=0)
    with pytest.raises(ValueError, match="lr"):
        Trainer(path, lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(path, batch_size=0)
    with pytest.raises((ValueError, OSError)):
        Trainer(str(tmp_path / "missing"))
    tr = Trainer(path, show_progress_bar=False)
    with pytest.raises(TypeError, match="list of str"):
        tr.fit("a prompt", ["x"])
    with pytest.raises(ValueError, match="same length"):
        tr.fit(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="empty"):
        tr.fit([], [])
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        tr.fit(["a prompt"], [""])
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        tr.fit([""], ["x"])
    with pytest.raises(ValueError, match="max_length"):
        Trainer(path, max_length=8).fit(["a long prompt that has many tokens in it"], [" x"])
    with pytest.raises(ValueError, match="choices"):
        tr.predict(["a", "b"], [["x"], ["y"], ["z"]])
    with pytest.raises(ValueError, match="one label per prompt"):
        tr.score(["a", "b"], [" x", " y"], [0])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tr._core.step(np.array([1, 2], np.int32), np.array([0, 2]), np.array([5, 10 ** 6]))
    # adapters for another rank or model
    tr.save_adapter(tmp_path / "r2")
    cfgp = tmp_path / "r2" / "adapter_config.json"
    cfg = json.loads(cfgp.read_text())
    cfg["r"] = 3
    cfgp.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape"):
        Trainer.load(path, tmp_path / "r2")
    with pytest.raises(FileNotFoundError):
        Trainer.load(path, tmp_path / "nothing")
    other = write_tiny_llm(tmp_path / "other", tiny.arch, gguf_types=(), layers=2, hidden=32,
                           intermediate=64)
    tr.save_adapter(tmp_path / "r2b")
    with pytest.raises(ValueError, match="shape"):
        Trainer.load(other.hf_dir, tmp_path / "r2b")


def test_gradient_accumulation_equals_one_batch(tiny):
    whole = Trainer(tiny.hf_dir, seed=4)
    acc = Trainer(tiny.hf_dir, seed=4, micro_batch_size=2)
    rng = np.random.default_rng(0)
    st = {k: (rng.standard_normal(v.shape) * 0.2).astype(np.float32)
          for k, v in whole.lora_state().items()}
    whole.set_lora_state(st)
    acc.set_lora_state(st)
    l1, g1 = whole.loss_and_grads(PROMPTS[:5], ANSWERS[:5])
    l2, g2 = acc.loss_and_grads(PROMPTS[:5], ANSWERS[:5])
    assert abs(l1 - l2) <= 1e-6 * abs(l1)
    assert np.abs(g1 - g2).max() <= 1e-5 * np.abs(g1).max()
    with pytest.raises(ValueError, match="micro_batch_size"):
        Trainer(tiny.hf_dir, micro_batch_size=0)


def test_non_finite_loss_stops_naming_the_step(tiny):
    tr = Trainer(tiny.hf_dir, batch_size=4, show_progress_bar=False)
    st = tr.lora_state()
    k = next(k for k in st if "lora_B" in k)
    st[k][:] = np.inf
    tr.set_lora_state(st)
    before = tr._core.params.copy()
    with pytest.raises(FloatingPointError, match="step 0"):
        tr.fit(PROMPTS, ANSWERS)
    assert np.array_equal(tr._core.params, before, equal_nan=True)


def test_gradient_clipping_scales_the_step_gradient_to_max_grad_norm(tiny):
    """max_grad_norm: the gradient of a step whose norm exceeds it is scaled
    to that norm (torch.nn.utils.clip_grad_norm_ with eps 1e-6) before
    AdamW; None leaves it alone. The norm is summed in float64 in chunks."""
    from engine_py.finetune import _norm_f64

    rng = np.random.default_rng(0)
    for n in (1, 5, (1 << 16) - 1, 1 << 16, (1 << 16) * 3 + 7):
        x = rng.standard_normal(n).astype(np.float32)
        assert _norm_f64(x) == pytest.approx(np.linalg.norm(x.astype(np.float64)), rel=1e-12)
    assert _norm_f64(np.zeros(0, np.float32)) == 0.0

    def step_grad_norm(max_norm):
        tr = Trainer(tiny.gguf["Q8_0"], r=2, alpha=4, lr=1e-3, epochs=1, batch_size=len(PROMPTS),
                     seed=4, max_grad_norm=max_norm, show_progress_bar=False).fit(PROMPTS, ANSWERS)
        g = np.concatenate([np.ravel(v) for v in tr.lora_state(grads=True).values()])
        return float(np.linalg.norm(g.astype(np.float64)))

    free = step_grad_norm(None)
    assert free > 1e-2
    cap = free / 10
    assert step_grad_norm(cap) == pytest.approx(cap * free / (free + 1e-6), rel=1e-5)
    assert step_grad_norm(free * 10) == pytest.approx(free, rel=1e-6)   # below the cap: untouched
