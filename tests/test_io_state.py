"""engine_py.io.load_state: Hugging Face folders (single file and sharded, as
written by transformers' save_pretrained), .npz archives, and the refusal of
PyTorch pickles with a working one-line export command."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import engine_py.io as eio
from engine_py.io import SafetensorsError

import engine_py  # noqa: E402

# the folder the engine_py under test was imported from (the sanitized build
# under .ci/asan-pytest), for the child processes this file starts
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))


def tiny_bert():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=37, max_position_embeddings=64)
    return transformers.BertModel(cfg).eval()


def assert_matches_torch(state, model):
    sd = model.state_dict()
    assert set(state) == set(sd)
    assert len(state) >= 10
    for k, v in sd.items():
        assert state[k].dtype == v.numpy().dtype, k
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)


def test_hf_folder_single_file(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    state = eio.load_state(tmp_path)
    assert_matches_torch(state, model)
    from safetensors.numpy import load_file
    ref = load_file(str(tmp_path / "model.safetensors"))
    assert set(state) == set(ref)
    # the file itself, and a str path, give the same
    assert set(eio.load_state(str(tmp_path / "model.safetensors"))) == set(ref)


def test_hf_folder_sharded(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = tmp_path / "model.safetensors.index.json"
    assert index.exists()
    shards = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(shards) > 1
    state = eio.load_state(tmp_path)
    assert_matches_torch(state, model)
    wmap = json.loads(index.read_text())["weight_map"]
    assert list(state) == list(wmap)
    assert set(eio.load_state(index)) == set(wmap)


def test_sharded_index_errors(tmp_path):
    a = {"x": np.ones(2, np.float32)}
    eio.save_safetensors(tmp_path / "s1.safetensors", a)
    eio.save_safetensors(tmp_path / "s2.safetensors", {"y": np.zeros(3)})
    idx = tmp_path / "model.safetensors.index.json"

    def write(wmap):
        idx.write_text(json.dumps({"metadata": {}, "weight_map": wmap}))

    write({"x": "s1.safetensors", "y": "s2.safetensors"})
    st = eio.load_state(tmp_path)
    assert list(st) == ["x", "y"]
    write({"x": "s1.safetensors", "y": "s2.safetensors", "z": "s2.safetensors"})
    with pytest.raises(SafetensorsError, match="missing"):
        eio.load_state(tmp_path)
    write({"x": "s1.safetensors", "y": "s1.safetensors", "w": "s2.safetensors"})
    with pytest.raises(SafetensorsError, match="index maps it"):
        eio.load_state(tmp_path)
    write({"x": "../s1.safetensors"})
    with pytest.raises(SafetensorsError, match="same folder"):
        eio.load_state(tmp_path)
    idx.write_text("{not json")
    with pytest.raises(SafetensorsError, match="JSON"):
        eio.load_state(tmp_path)
    idx.write_text(json.dumps({"weight_map": {"x": 1}}))
    with pytest.raises(SafetensorsError, match="weight_map"):
        eio.load_state(tmp_path)


def test_npz(tmp_path):
    arrs = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2], np.int64)}
    np.savez(tmp_path / "w.npz", **arrs)
    st = eio.load_state(tmp_path / "w.npz")
    assert set(st) == set(arrs)
    for k in arrs:
        np.testing.assert_array_equal(st[k], arrs[k])
    st2 = eio.load_state(tmp_path)  # a folder with one .npz
    assert set(st2) == set(arrs)
    np.savez(tmp_path / "o.npz", o=np.array([1, None], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        eio.load_state(tmp_path / "o.npz")


def test_pickle_checkpoint_refused_with_working_export_line(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    model = tiny_bert()
    # recent transformers only write safetensors; a .bin folder as older ones wrote it
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert (tmp_path / "pytorch_model.bin").exists()
    assert not (tmp_path / "model.safetensors").exists()
    for target in (tmp_path, tmp_path / "pytorch_model.bin"):
        with pytest.raises(ValueError) as info:
            eio.load_state(target)
        msg = str(info.value)
        assert "pytorch_model.bin" in msg and "safetensors" in msg and "never unpickles" in msg
    cmd = re.search(r'python -c "(.*)"', msg).group(1)
    out = subprocess.run([sys.executable, "-c", cmd], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    state = eio.load_state(tmp_path)  # now finds model.safetensors
    sd = {k: v for k, v in torch.load(tmp_path / "pytorch_model.bin", weights_only=True).items()}
    assert set(state) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(state[k], v.numpy(), err_msg=k)
    with pytest.raises(ValueError, match="never unpickles"):
        eio.load_state(tmp_path / "weights.pt")


def test_unknown_inputs(tmp_path):
    with pytest.raises(FileNotFoundError):
        eio.load_state(tmp_path)  # empty folder
    with pytest.raises(FileNotFoundError):
        eio.load_state(tmp_path / "nothing.bin2")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="unknown weights format"):
        eio.load_state(tmp_path / "x.txt")
    eio.save_safetensors(tmp_path / "a.safetensors", {"a": np.ones(1)})
    eio.save_safetensors(tmp_path / "b.safetensors", {"b": np.ones(1)})
    with pytest.raises(ValueError, match="several"):
        eio.load_state(tmp_path)
    os.remove(tmp_path / "b.safetensors")
    assert set(eio.load_state(tmp_path)) == {"a"}
    with pytest.raises(ValueError, match="bf16"):
        eio.load_state(tmp_path, bf16="half")
