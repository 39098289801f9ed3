"""Encoder.from_pretrained(path, adapter=dir): a PEFT LoRA adapter merged
into a decoder's weights gives the layer states of transformers + peft's
merge_and_unload (HF float base; llama GGUF base with permuted q/k rows);
the adapter's content is part of the fingerprint; a pickled encoder
re-opens with its adapter; bad adapters raise clear errors."""
import json
import os
import pickle
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from llm_fixtures import reference_pooled_states, write_tiny_llm  # noqa: E402

from engine_py import Encoder  # noqa: E402

TEXTS = ["the cat sat on the mat", "a bird can fly over the water", "fire is hot"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request, tmp_path_factory):
    """(tiny model, adapter dir, second adapter dir, merged HF dir)"""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("merge" + request.param)
    tiny = write_tiny_llm(root / "m", request.param, gguf_types=("F32",), layers=2)
    ads = []
    for seed in (0, 1):
        base = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32)
        cfg = peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0,
                              target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                              "up_proj", "down_proj"])
        model = peft.get_peft_model(base, cfg)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        d = root / f"ad{seed}"
        model.save_pretrained(str(d))
        if seed == 0:
            merged = model.merge_and_unload()
            mdir = root / "merged"
            merged.save_pretrained(str(mdir), safe_serialization=True)
            for f in os.listdir(tiny.hf_dir):
                if f.startswith("tokenizer") or f == "special_tokens_map.json":
                    shutil.copy(os.path.join(tiny.hf_dir, f), mdir / f)
        ads.append(str(d))
    return tiny, ads[0], ads[1], str(mdir)


def test_merged_states_match_peft(setup):
    tiny, ad, _, mdir = setup
    layers = [0, 1, 2]
    ref = reference_pooled_states(mdir, TEXTS, layers)
    base_ref = reference_pooled_states(tiny.hf_dir, TEXTS, layers)
    assert np.abs(ref[2] - base_ref[2]).max() > 1e-2   # the adapter changes the states
    for path in (tiny.hf_dir, tiny.gguf["F32"]):
        enc = Encoder.from_pretrained(path, adapter=ad)
        got = enc.encode_layers(TEXTS, layers)
        err = np.abs(got - ref).max() / np.abs(ref).max()
        assert err < 1e-4, (path, err)
        plain = Encoder.from_pretrained(path).encode_layers(TEXTS, layers)
        assert np.abs(plain - base_ref).max() / np.abs(base_ref).max() < 1e-4


def test_fingerprint_includes_adapter(setup, tmp_path):
    tiny, ad0, ad1, _ = setup
    plain = Encoder.from_pretrained(tiny.gguf["F32"]).fingerprint()
    f0 = Encoder.from_pretrained(tiny.gguf["F32"], adapter=ad0).fingerprint()
    f1 = Encoder.from_pretrained(tiny.gguf["F32"], adapter=ad1).fingerprint()
    assert len({plain, f0, f1}) == 3
    # the same content elsewhere: same fingerprint; one changed byte: another
    cp = tmp_path / "copy"
    shutil.copytree(ad0, cp)
    assert Encoder.from_pretrained(tiny.gguf["F32"], adapter=cp).fingerprint() == f0
    cfg = json.loads((cp / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 8
    (cp / "adapter_config.json").write_text(json.dumps(cfg))
    assert Encoder.from_pretrained(tiny.gguf["F32"], adapter=cp).fingerprint() != f0


def test_pickled_encoder_keeps_adapter(setup):
    tiny, ad, _, _ = setup
    enc = Encoder.from_pretrained(tiny.hf_dir, adapter=ad)
    enc2 = pickle.loads(pickle.dumps(enc))
    assert enc2.adapter == os.path.abspath(ad)
    assert np.array_equal(enc.encode_layers(TEXTS, [2]), enc2.encode_layers(TEXTS, [2]))


def test_bad_adapters(setup, tmp_path):
    tiny, ad, _, _ = setup
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        Encoder.from_pretrained(tiny.hf_dir, adapter=tmp_path)
    other = write_tiny_llm(tmp_path / "o", "llama", gguf_types=(), layers=2, hidden=32, heads=2,
                           kv_heads=1, intermediate=48)
    with pytest.raises(ValueError, match="shape"):
        Encoder.from_pretrained(other.hf_dir, adapter=ad)


def test_merge_adapter_folder_matches_peft(setup, tmp_path):
    from engine_py.finetune import merge_adapter
    from engine_py.io import load_state

    tiny, ad, _, mdir = setup
    out = merge_adapter(tiny.hf_dir, ad, tmp_path / "mm")
    got, ref = load_state(out), load_state(mdir)
    base = load_state(tiny.hf_dir)
    changed = 0
    for k, v in ref.items():
        if k in got:
            assert np.abs(got[k] - v).max() <= 1e-6 * max(1.0, np.abs(v).max()), k
            changed += not np.array_equal(got[k], base[k])
    assert changed == 2 * 7   # 2 layers x 7 adapted matrices
    # the merged folder loads as a plain model with the merged states
    states = Encoder.from_pretrained(out).encode_layers(TEXTS, [2])
    ref_states = reference_pooled_states(mdir, TEXTS, [2])
    assert np.abs(states - ref_states).max() / np.abs(ref_states).max() < 1e-4
    back = load_state(merge_adapter(out, ad, tmp_path / "back", unmerge=True))
    for k, v in base.items():
        if k in back:
            assert np.abs(back[k] - v).max() <= 1e-6 * max(1.0, np.abs(v).max()), k
    with pytest.raises(ValueError, match="quantized GGUF"):
        merge_adapter(tiny.gguf["F32"], ad, tmp_path / "g")
