"""Trainer checkpoints: resume is bit-identical to an uninterrupted run;
Ctrl-C (KeyboardInterrupt, during a step or while a checkpoint is written)
leaves the last checkpoint intact and resumable; a non-finite loss stops
with the checkpoint intact; files are safetensors + JSON (no pickle), and a
checkpoint from another job, model or rank is refused."""
import json
import os

import numpy as np
import pytest

from llm_fixtures import write_tiny_llm

from engine_py.finetune import Trainer

PROMPTS = ["the cat is", "the dog is", "a bird can", "the sun is", "water is", "fire is",
           "snow is", "grass is", "the sky is", "coal is"]
ANSWERS = [" black", " brown", " fly", " hot", " wet", " hot", " white", " green", " blue",
           " black"]
KW = dict(r=3, alpha=6, lr=3e-3, epochs=2, batch_size=3, seed=4, dropout=0.1,
          show_progress_bar=False)   # 4 steps an epoch (3+3+3+1), 8 in all


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("ckpt"), "llama", gguf_types=("Q8_0",),
                          layers=2).gguf["Q8_0"]


@pytest.fixture(scope="module")
def straight(model):
    tr = Trainer(model, **KW).fit(PROMPTS, ANSWERS)
    return tr


class _Stop(Exception):
    pass


def _interrupt_after(tr, n_steps, exc=KeyboardInterrupt):
    """Raise exc from the step after n_steps steps (inside _accumulate, i.e.
    in the middle of a training step)."""
    orig = tr._accumulate
    count = [0]

    def acc(*a, **k):
        if count[0] == n_steps:
            raise exc()
        count[0] += 1
        return orig(*a, **k)

    tr._accumulate = acc


def test_resume_is_bit_identical(model, straight, tmp_path):
    d = tmp_path / "ck"
    a = Trainer(model, **KW)
    _interrupt_after(a, 3)
    with pytest.raises(KeyboardInterrupt):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    st = json.loads((d / "trainer_state.json").read_text())
    assert st["step"] == 3 and st["fit_step"] == 3
    files = sorted(os.listdir(d))
    assert files == ["state-00000003.safetensors", "trainer_state.json"], files
    assert all(not f.endswith((".pt", ".pkl", ".bin")) for f in files)
    b = Trainer(model, **KW)
    ran = []
    orig = b._accumulate
    b._accumulate = lambda *x, **k: ran.append(1) or orig(*x, **k)
    b.fit(PROMPTS, ANSWERS, checkpoint_dir=d)   # resumes at step 3
    assert len(ran) == 5, "resume must run only the 5 remaining steps"
    assert b.step_ == 8 and len(b.history_) == 8
    assert np.array_equal(b._core.params, straight._core.params)
    assert np.array_equal(b._m, straight._m) and np.array_equal(b._v, straight._v)
    assert [h[1] for h in b.history_] == [h[1] for h in straight.history_]
    # a finished checkpoint resumes to a no-op
    c = Trainer(model, **KW).fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    assert np.array_equal(c._core.params, straight._core.params) and c.step_ == 8


def test_resume_detects_a_different_run(model, straight, tmp_path):
    d = tmp_path / "ck"
    a = Trainer(model, **KW)
    _interrupt_after(a, 2)
    with pytest.raises(KeyboardInterrupt):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=d, checkpoint_every=2)
    # without the checkpoint the restart would differ: the check that resume matters
    fresh = Trainer(model, **KW)
    fresh.load_checkpoint(d)
    assert fresh.step_ == 2
    assert not np.array_equal(fresh._core.params, Trainer(model, **KW)._core.params)
    with pytest.raises(ValueError, match="another training job"):
        Trainer(model, **KW).fit(PROMPTS[:-1], ANSWERS[:-1], checkpoint_dir=d)
    with pytest.raises(ValueError, match="another training job"):
        Trainer(model, **dict(KW, lr=1e-3)).fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    with pytest.raises(ValueError, match="rank|layout"):
        Trainer(model, **dict(KW, r=2)).load_checkpoint(d)


def test_interrupt_while_saving_keeps_last_checkpoint(model, straight, tmp_path, monkeypatch):
    d = tmp_path / "ck"
    a = Trainer(model, **KW)
    real_replace = os.replace
    calls = [0]

    def replace(src, dst):
        # the JSON of the 4th checkpoint: interrupted just before its rename
        if str(dst).endswith("trainer_state.json"):
            calls[0] += 1
            if calls[0] == 4:
                raise KeyboardInterrupt()
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    monkeypatch.setattr(os, "replace", real_replace)
    st = json.loads((d / "trainer_state.json").read_text())
    assert st["step"] == 3   # the previous checkpoint, whole
    b = Trainer(model, **KW).fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    assert np.array_equal(b._core.params, straight._core.params)


def test_corrupt_tensors_are_refused(model, tmp_path):
    d = tmp_path / "ck"
    a = Trainer(model, **KW)
    _interrupt_after(a, 1, _Stop)
    with pytest.raises(_Stop):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    f = d / "state-00000001.safetensors"
    raw = bytearray(f.read_bytes())
    raw[-3] ^= 0xFF
    f.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        Trainer(model, **KW).load_checkpoint(d)


def test_nan_loss_stops_with_checkpoint_intact(model, tmp_path):
    d = tmp_path / "ck"
    a = Trainer(model, **KW)
    orig = a._accumulate
    count = [0]

    def acc(*args, **kw):
        count[0] += 1
        loss, ntok = orig(*args, **kw)
        if count[0] == 3:
            a._core.grads[0] = np.nan
            return float("nan"), ntok
        return loss, ntok

    a._accumulate = acc
    with pytest.raises(FloatingPointError, match=r"step 2\b.*checkpoint \(step 2\) is intact"):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=d)
    st = json.loads((d / "trainer_state.json").read_text())
    assert st["step"] == 2
    b = Trainer(model, **KW)
    b.load_checkpoint(d)
    assert np.isfinite(b._core.params).all() and np.isfinite(b._m).all()
    assert np.array_equal(b._core.params, a._core.params)   # the adapter was not updated
