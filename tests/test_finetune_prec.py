"""Trainer options for speed and memory: precision="bfloat16" (loss and
LoRA gradients within a stated bound of float32, the same predictions) and
recompute=True (activation recomputation: the very same loss and gradients,
bit for bit, less memory)."""
import numpy as np
import pytest

from llm_fixtures import write_tiny_llm

from engine_py.finetune import Trainer

# long enough prompts that every product has > 64 rows (the bf16 path;
# batches of at most 64 tokens take the float32 direct path either way)
PROMPTS = [("the cat sat on the mat and the dog ran in the park while " * 3) + p
           for p in ("the cat is", "the dog is", "a bird can", "the sun is", "water is", "fire is")]
ANSWERS = [" black", " brown", " fly", " hot", " wet", " hot"]
CHOICES = [" black", " brown", " fly", " hot", " wet"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("prec" + request.param), request.param,
                          gguf_types=("Q8_0",), layers=2)


def _perturbed(tr):
    """B != 0, so that every gradient (A's included) is non-zero."""
    p = tr._core.params
    p[:] += np.random.default_rng(3).normal(0, 0.05, p.shape).astype(np.float32)
    return tr


def test_bf16_close_to_float32(tiny):
    a = _perturbed(Trainer(tiny.gguf["Q8_0"], r=2, alpha=4, seed=1))
    b = _perturbed(Trainer(tiny.gguf["Q8_0"], r=2, alpha=4, seed=1, precision="bfloat16"))
    la, ga = a.loss_and_grads(PROMPTS, ANSWERS)
    lb, gb = b.loss_and_grads(PROMPTS, ANSWERS)
    # documented bound (docs/FINETUNE.md): loss within 1% relative, gradient
    # within 5% relative (L2), cosine >= 0.998; measured on SmolLM2-135M:
    # 0.15% / 1.8% / 0.99983
    assert abs(lb - la) <= 1e-2 * abs(la), (la, lb)
    rel = np.linalg.norm(gb - ga) / np.linalg.norm(ga)
    cos = float(ga @ gb / np.linalg.norm(ga) / np.linalg.norm(gb))
    assert rel <= 5e-2 and cos >= 0.998, (rel, cos)
    assert lb != la and not np.array_equal(ga, gb), "the bf16 path did not run"
    assert np.array_equal(a.predict(PROMPTS, CHOICES), b.predict(PROMPTS, CHOICES))


def test_recompute_same_bits(tiny):
    for prec in ("float32", "bfloat16"):
        a = _perturbed(Trainer(tiny.gguf["Q8_0"], r=3, alpha=6, seed=2, dropout=0.1, precision=prec))
        b = _perturbed(Trainer(tiny.gguf["Q8_0"], r=3, alpha=6, seed=2, dropout=0.1, precision=prec,
                               recompute=True))
        la, ga = a.loss_and_grads(PROMPTS, ANSWERS)
        lb, gb = b.loss_and_grads(PROMPTS, ANSWERS)
        assert la == lb and np.array_equal(ga, gb), prec
        assert np.array_equal(a.choice_logprobs(PROMPTS[:2], CHOICES),
                              b.choice_logprobs(PROMPTS[:2], CHOICES))
        assert np.abs(ga).max() > 0


def test_bad_precision(tiny):
    with pytest.raises(ValueError, match="precision"):
        Trainer(tiny.gguf["Q8_0"], precision="float16")


_ISA_SCRIPT = """
import sys, numpy as np
from engine_py.finetune import Trainer
tr = Trainer(sys.argv[1], seed=1, dropout=0.1)
tr._core.params[:] += np.random.default_rng(0).normal(0, .05, tr._core.params.shape).astype(np.float32)
l, g = tr.loss_and_grads(sys.argv[3:], [" yes"] * (len(sys.argv) - 3))
np.save(sys.argv[2], g)
"""


def test_float32_step_same_bits_on_every_isa_level(tiny, tmp_path):
    """Every core kernel of a float32 training step (attention backward,
    LoRA loops, norms, SwiGLU, the direct products) gives the same bits on
    the generic, AVX2 and AVX-512 copies (ENGINE_PY_ISA)."""
    import os
    import subprocess
    import sys

    import engine_py

    # the engine_py under test (the sanitized build under .ci/asan-pytest)
    here = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))
    env = dict(os.environ, PYTHONPATH=here + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = {}
    for isa in ("generic", "avx2", "auto"):
        f = tmp_path / f"g_{isa}.npy"
        r = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, tiny.gguf["Q8_0"], str(f), *PROMPTS[:3]],
                           env=dict(env, ENGINE_PY_ISA=isa), capture_output=True, text=True)
        assert r.returncode == 0, (isa, r.returncode, r.stderr[-4000:])
        out[isa] = np.load(f)
    assert np.abs(out["auto"]).max() > 0
    assert np.array_equal(out["generic"], out["auto"]) and np.array_equal(out["avx2"], out["auto"])
