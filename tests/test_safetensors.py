"""safetensors reader and writer (engine_py.io, C core csrc/io/safetensors.c):
round trips, zero-copy views, interoperability with the reference
implementation and torch, and one malformed file per validation rule."""
import gc
import json
import os
import struct
import subprocess
import sys
import threading
import weakref

import numpy as np
import pytest

import engine_py.io as eio
from engine_py import _core
from engine_py.io import SafetensorsError

import engine_py  # noqa: E402

# the folder the engine_py under test was imported from (the sanitized build
# under .ci/asan-pytest), for the child processes this file starts
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))

ALL_DTYPES = [np.bool_, np.uint8, np.int8, np.int16, np.uint16, np.float16, np.int32, np.uint32,
              np.float32, np.float64, np.int64, np.uint64]


def rand_array(rng, dtype, shape):
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) < 0.5)
    if dtype.kind == "f":
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True))


def raw_file(path, header, data=b"", hlen=None):
    """Write a hand-made file: 8-byte length, header (str/bytes/dict), data."""
    if isinstance(header, dict):
        header = json.dumps(header, separators=(",", ":"))
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if hlen is None else hlen
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", n) + header + data)
    return path


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip_every_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    tensors = {
        "matrix": rand_array(rng, dtype, (3, 5)),
        "scalar": rand_array(rng, dtype, ()),
        "empty": rand_array(rng, dtype, (0, 4)),
        "cube": rand_array(rng, dtype, (2, 3, 4)),
    }
    p = tmp_path / "t.safetensors"
    eio.save_safetensors(p, tensors)
    back = eio.load_safetensors(p)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype, k
        assert back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    hdr, meta = eio.read_safetensors_header(p)
    assert meta is None
    assert hdr["scalar"][1] == () and hdr["empty"][1] == (0, 4)


def test_metadata_round_trip(tmp_path):
    p = tmp_path / "m.safetensors"
    md = {"format": "np", "note": "é \"quoted\" \\ \n\t\x01 ☃ 😀", "": ""}
    eio.save_safetensors(p, {"x": np.arange(4, dtype=np.float32)}, metadata=md)
    t, meta = eio.load_safetensors(p, return_metadata=True)
    assert meta == md
    assert eio.read_safetensors_header(p)[1] == md
    eio.save_safetensors(p, {}, metadata={})
    t, meta = eio.load_safetensors(p, return_metadata=True)
    assert t == {} and meta == {}
    eio.save_safetensors(p, {})
    assert eio.load_safetensors(p, return_metadata=True) == ({}, None)
    assert os.path.getsize(p) == 16  # 8 + "{}" padded to 8


def test_metadata_null_means_none(tmp_path):
    # the reference implementation reads "__metadata__": null as no metadata
    p = raw_file(tmp_path / "n.safetensors", '{"__metadata__":null,"a":{"dtype":"U8","shape":[1],'
                 '"data_offsets":[0,1]}}', b"\x05")
    t, meta = eio.load_safetensors(p, return_metadata=True)
    assert meta is None and t["a"][0] == 5


def test_names_needing_escapes(tmp_path):
    p = tmp_path / "n.safetensors"
    names = ["a\"b", "back\\slash", "new\nline", "ctl\x01\x1f", "é☃😀", "", " "]
    t = {n: np.full(2, i, dtype=np.int32) for i, n in enumerate(names)}
    eio.save_safetensors(p, t)
    back = eio.load_safetensors(p)
    assert set(back) == set(names)
    for n in names:
        np.testing.assert_array_equal(back[n], t[n])


def test_bf16_widen_and_raw(tmp_path):
    bits = np.array([0x3F80, 0xC040, 0x7F80, 0x0001, 0x7FC0, 0x8000], dtype=np.uint16)
    p = tmp_path / "b.safetensors"
    eio.save_safetensors(p, {"w": ("BF16", bits.reshape(2, 3))})
    assert eio.read_safetensors_header(p)[0]["w"][0] == "BF16"
    f = eio.load_safetensors(p)["w"]
    assert f.dtype == np.float32 and f.shape == (2, 3)
    expect = (bits.astype(np.uint32) << 16).view(np.float32).reshape(2, 3)
    np.testing.assert_array_equal(f, expect)  # NaN positions compare equal
    raw = eio.load_safetensors(p, bf16="raw")["w"]
    assert raw.dtype == np.uint16
    np.testing.assert_array_equal(raw, bits.reshape(2, 3))
    # a raw load saves back as BF16 when the dtype is given
    eio.save_safetensors(p, {"w": ("BF16", raw)})
    np.testing.assert_array_equal(eio.load_safetensors(p, bf16="raw")["w"], raw)
    with pytest.raises(ValueError, match="bf16"):
        eio.load_safetensors(p, bf16="bfloat16")


def test_input_layouts(tmp_path):
    p = tmp_path / "l.safetensors"
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    t = {
        "fortran": np.asfortranarray(base),
        "strided": base[:, ::2],
        "big_endian": base.astype(">f4"),
        "transposed": base.T,
        "list": [[1, 2], [3, 4]],
    }
    eio.save_safetensors(p, t)
    back = eio.load_safetensors(p)
    for k, v in t.items():
        np.testing.assert_array_equal(back[k], np.asarray(v))
    assert back["big_endian"].dtype == np.dtype("<f4")
    assert eio.read_safetensors_header(p)[0]["big_endian"][0] == "F32"


def test_save_rejects_bad_inputs(tmp_path):
    p = tmp_path / "r.safetensors"
    with pytest.raises(SafetensorsError, match="complex"):
        eio.save_safetensors(p, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(SafetensorsError, match="object"):
        eio.save_safetensors(p, {"o": np.array([1, None], dtype=object)})
    with pytest.raises(SafetensorsError, match="cannot be stored"):
        eio.save_safetensors(p, {"s": np.array(["a", "b"])})
    with pytest.raises(SafetensorsError, match="__metadata__"):
        eio.save_safetensors(p, {"__metadata__": np.zeros(1)})
    with pytest.raises(SafetensorsError, match="unknown safetensors dtype"):
        eio.save_safetensors(p, {"x": ("F8", np.zeros(1, np.uint8))})
    with pytest.raises(SafetensorsError, match="cannot be stored as BF16"):
        eio.save_safetensors(p, {"x": ("BF16", np.zeros(1, np.float32))})
    with pytest.raises(TypeError):
        eio.save_safetensors(p, {1: np.zeros(1)})
    with pytest.raises(TypeError):
        eio.save_safetensors(p, {"x": np.zeros(1)}, metadata={"k": 1})
    with pytest.raises(TypeError):
        eio.save_safetensors(p, [np.zeros(1)])
    with pytest.raises(OSError):
        eio.save_safetensors(tmp_path / "missing" / "x.safetensors", {"x": np.zeros(1)})
    assert not p.exists()
    assert os.listdir(tmp_path) == []  # no temporary files left behind


def test_byte_identical_to_reference_writer(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(1)
    t = {name: rand_array(rng, dt, (k % 3 + 1, 2)) for k, (name, dt) in
         enumerate(zip("qwertyuiopas", ALL_DTYPES))}
    t["odd"] = rand_array(rng, np.float16, (3,))
    t["zero"] = np.zeros((0,), np.float32)
    t["scalar"] = np.array(2.5)
    p = tmp_path / "ours.safetensors"
    eio.save_safetensors(p, t, metadata={"format": "np"})
    assert p.read_bytes() == st_numpy.save(t, metadata={"format": "np"})
    eio.save_safetensors(p, t)
    assert p.read_bytes() == st_numpy.save(t)


# ------------------------------------------------------------ interoperability

def test_interop_safetensors_numpy(tmp_path):
    st_numpy = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(2)
    t = {f"t{i}": rand_array(rng, dt, (2, i + 1)) for i, dt in enumerate(ALL_DTYPES)}
    t["scalar"] = np.array(7, dtype=np.int64)
    t["empty"] = np.zeros((3, 0), np.float16)
    a = tmp_path / "theirs.safetensors"
    st_numpy.save_file(t, str(a), metadata={"who": "them"})
    back, meta = eio.load_safetensors(a, return_metadata=True)
    assert meta == {"who": "them"}
    for k, v in t.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    b = tmp_path / "ours.safetensors"
    eio.save_safetensors(b, t, metadata={"who": "us"})
    theirs = st_numpy.load_file(str(b))
    for k, v in t.items():
        assert theirs[k].dtype == v.dtype and theirs[k].shape == v.shape
        np.testing.assert_array_equal(theirs[k], v)
    from safetensors import safe_open
    with safe_open(str(b), framework="np") as fh:
        assert fh.metadata() == {"who": "us"}


def test_interop_torch(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    t = {
        "f32": torch.randn(3, 4, generator=g),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(2, 3, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "i64": torch.arange(6).reshape(2, 3),
        "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(3, dtype=torch.int16),
        "i8": torch.arange(-3, 3, dtype=torch.int8),
        "u8": torch.arange(3, dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
    }
    a = tmp_path / "torch.safetensors"
    st_torch.save_file(t, str(a))
    back = eio.load_safetensors(a)
    raw = eio.load_safetensors(a, bf16="raw")
    for k, v in t.items():
        if v.dtype == torch.bfloat16:
            np.testing.assert_array_equal(back[k], v.float().numpy())
            np.testing.assert_array_equal(raw[k], v.view(torch.int16).numpy().view(np.uint16))
        else:
            np.testing.assert_array_equal(back[k], v.numpy())
            assert back[k].dtype == v.numpy().dtype
    # torch tensors in, reference reader out (incl. a non-contiguous view)
    t["transposed"] = torch.randn(3, 4, generator=g).t()
    t["needs_grad"] = torch.randn(2, requires_grad=True)
    b = tmp_path / "ours.safetensors"
    eio.save_safetensors(b, t)
    theirs = st_torch.load_file(str(b))
    assert set(theirs) == set(t)
    for k, v in t.items():
        assert theirs[k].dtype == v.dtype, k
        assert torch.equal(theirs[k], v.detach()), k


def test_torch_not_imported(tmp_path):
    code = ("import sys, numpy as np, engine_py.io as e; "
            "e.save_safetensors(sys.argv[1], {'x': np.ones(3)}); e.load_safetensors(sys.argv[1]); "
            "e.read_safetensors_header(sys.argv[1]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.safetensors")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ------------------------------------------------------------ views and mapping

def test_views_are_read_only_and_keep_mapping_alive(tmp_path):
    p = tmp_path / "v.safetensors"
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    eio.save_safetensors(p, {"w": w, "b": np.arange(3, dtype=np.int64)})
    d = eio.load_safetensors(p)
    v = d["w"]
    assert not v.flags.writeable and v.flags.c_contiguous and v.flags.aligned
    assert type(v.base) is _core.SafetensorsMapping
    assert d["b"].base is v.base  # one mapping shared by every view
    with pytest.raises(ValueError):
        v[0, 0] = 1.0
    ref = weakref.ref(v.base)
    del d
    gc.collect()
    assert ref() is not None
    # the file can be replaced or removed: the mapping keeps the old data
    eio.save_safetensors(p, {"w": np.zeros((3, 4), np.float32)})
    os.remove(p)
    gc.collect()
    np.testing.assert_array_equal(v, w)
    del v
    gc.collect()
    assert ref() is None  # unmapped with the last view


def test_misaligned_data_is_copied(tmp_path):
    # U8 [1] at 0, then F32 [2] at offset 1 (misaligned), header padded to 8
    hdr = ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
           '"b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]},'
           '"c":{"dtype":"BF16","shape":[1],"data_offsets":[9,11]}}')
    hdr += " " * (-len(hdr) % 8)
    data = b"\x07" + np.array([1.5, -2.0], "<f4").tobytes() + np.array([0x4040], "<u2").tobytes()
    p = raw_file(tmp_path / "m.safetensors", hdr, data)
    d = eio.load_safetensors(p)
    np.testing.assert_array_equal(d["b"], [1.5, -2.0])
    assert d["b"].base is None or type(d["b"].base) is not _core.SafetensorsMapping
    assert d["c"].dtype == np.float32 and d["c"][0] == 3.0  # misaligned BF16, widened
    assert eio.load_safetensors(p, bf16="raw")["c"][0] == 0x4040
    assert d["a"][0] == 7 and type(d["a"].base) is _core.SafetensorsMapping


def test_concurrent_loads(tmp_path):
    p = tmp_path / "c.safetensors"
    t = {f"x{i}": np.full((64, 64), i, np.float32) for i in range(8)}
    eio.save_safetensors(p, t)
    errors = []

    def work():
        try:
            for _ in range(20):
                d = eio.load_safetensors(p)
                assert all(float(d[k][0, 0]) == float(t[k][0, 0]) for k in t)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        eio.load_safetensors(tmp_path / "nope.safetensors")
    with pytest.raises(OSError, match="not a regular file"):
        eio.load_safetensors(tmp_path)


def test_error_types():
    assert eio.SafetensorsError is _core.SafetensorsError
    assert issubclass(SafetensorsError, ValueError)


# ------------------------------------------------------------- malformed files

def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


MALFORMED = {
    # name: (header, data, hlen override, expected message fragment)
    "empty_file": (None, b"", None, "too small"),
    "five_bytes": (None, b"\x01\x02\x03\x04\x05", None, "too small"),
    "header_too_large": ({"a": entry()}, bytes(8), 100_000_001, "exceeds the limit"),
    "header_len_max_u64": ({"a": entry()}, bytes(8), 2**64 - 1, "exceeds the limit"),
    "header_beyond_file": ({"a": entry()}, bytes(8), 5000, "beyond the end"),
    "bad_json": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}', bytes(8), None, "invalid JSON"),
    "bad_json_trailing_comma": ('{"a":1,}', b"", None, "invalid JSON"),
    "empty_header": ("", b"", None, "invalid JSON"),
    "not_an_object": ("[1,2]", b"", None, "must be a JSON object"),
    "bad_utf8": (b'{"\xff\xfe":{}}', b"", None, "UTF-8"),
    "overlong_utf8": (b'{"\xc0\xaf":{}}', b"", None, "UTF-8"),
    "lone_surrogate_escape": ('{"\\ud800":{}}', b"", None, "surrogate"),
    "entry_not_object": ({"a": 3}, b"", None, "must be an object"),
    "missing_dtype": ({"a": {"shape": [2], "data_offsets": [0, 8]}}, bytes(8), None, 'lacks "dtype"'),
    "missing_shape": ({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8), None, 'lacks "shape"'),
    "missing_offsets": ({"a": {"dtype": "F32", "shape": [2]}}, bytes(8), None, 'lacks "data_offsets"'),
    "unknown_dtype": ({"a": entry(dtype="F12")}, bytes(8), None, "unknown or unsupported dtype"),
    "dtype_not_string": ({"a": entry(dtype=4)}, bytes(8), None, "dtype must be a string"),
    "size_mismatch": ({"a": entry(shape=(3,))}, bytes(8), None, "needs 12"),
    "shape_overflow": ({"a": entry(shape=(2**32, 2**32, 2**10))}, bytes(8), None, "overflows"),
    "shape_beyond_int64": ({"a": entry(shape=(2**64,))}, bytes(8), None, "integers in range"),
    "negative_shape": ({"a": entry(shape=(-2,))}, bytes(8), None, "negative"),
    "float_shape": ('{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', bytes(8), None, "integers"),
    "negative_offsets": ({"a": entry(offsets=(-8, 0))}, bytes(8), None, "negative"),
    "float_offsets": ('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}', bytes(8), None, "integers"),
    "offsets_wrong_arity": ({"a": entry(offsets=(0, 8, 8))}, bytes(8), None, "array of two"),
    "overlapping": ({"a": entry(), "b": entry(offsets=(4, 12))}, bytes(12), None, "overlaps"),
    "same_range_twice": ({"a": entry(), "b": entry()}, bytes(8), None, "overlaps"),
    "holed": ({"a": entry(), "b": entry(shape=(1,), offsets=(12, 16))}, bytes(16), None, "hole"),
    "not_from_zero": ({"a": entry(offsets=(4, 12))}, bytes(12), None, "hole"),
    "end_before_begin": ({"a": entry(), "b": entry(shape=(0,), offsets=(8, 4))}, bytes(8), None,
                         "end before begin"),
    "trailing_bytes": ({"a": entry()}, bytes(9), None, "trailing bytes"),
    "truncated_data": ({"a": entry()}, bytes(7), None, "truncated"),
    "duplicate_tensor": ('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                         '"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', bytes(2), None, "duplicate key"),
    "duplicate_metadata_key": ('{"__metadata__":{"k":"1","k":"2"}}', b"", None, "duplicate key"),
    "metadata_not_object": ({"__metadata__": ["a"]}, b"", None, "__metadata__ must be an object"),
    "metadata_non_string": ({"__metadata__": {"k": 1}}, b"", None, "values must be strings"),
    "metadata_null_value": ({"__metadata__": {"k": None}}, b"", None, "values must be strings"),
    "too_deep": ('{"__metadata__":' + "[" * 50 + "]" * 50 + "}", b"", None, "nesting"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_file_raises(tmp_path, case):
    header, data, hlen, fragment = MALFORMED[case]
    p = tmp_path / (case + ".safetensors")
    if header is None:
        p.write_bytes(data)
    else:
        raw_file(p, header, data, hlen)
    for fn in (eio.load_safetensors, eio.read_safetensors_header):
        with pytest.raises(SafetensorsError) as info:
            fn(p)
        msg = str(info.value)
        assert str(p) in msg, msg
        assert fragment in msg, msg


def test_truncated_at_every_point(tmp_path):
    src = tmp_path / "full.safetensors"
    eio.save_safetensors(src, {"a": np.arange(5, dtype=np.float16), "b": np.arange(3, dtype=np.int64),
                               "c": np.ones((2, 2), np.float32)}, metadata={"m": "x"})
    full = src.read_bytes()
    p = tmp_path / "cut.safetensors"
    for cut in range(len(full)):
        p.write_bytes(full[:cut])
        with pytest.raises(SafetensorsError):
            eio.load_safetensors(p)
    p.write_bytes(full)
    assert set(eio.load_safetensors(p)) == {"a", "b", "c"}


def test_random_corruption_never_crashes(tmp_path):
    src = tmp_path / "full.safetensors"
    eio.save_safetensors(src, {"a": np.arange(5, dtype=np.float16), "b": np.arange(3, dtype=np.int64)},
                         metadata={"m": "x"})
    full = bytearray(src.read_bytes())
    rng = np.random.default_rng(3)
    p = tmp_path / "bad.safetensors"
    outcomes = {"ok": 0, "error": 0}
    for _ in range(300):
        b = bytearray(full)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(b)))
            b[pos] = int(rng.integers(0, 256))
        p.write_bytes(bytes(b))
        try:
            eio.load_safetensors(p)
            outcomes["ok"] += 1
        except SafetensorsError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0  # most header corruptions are caught


def test_shapes_numpy_cannot_hold(tmp_path):
    # valid for the format (zero bytes / too many dims) but not for NumPy:
    # still a clear SafetensorsError naming the file and the tensor
    p = raw_file(tmp_path / "z.safetensors", {"a": entry(shape=(2**62, 0), offsets=(0, 0))})
    with pytest.raises(SafetensorsError, match="NumPy cannot represent"):
        eio.load_safetensors(p)
    assert eio.read_safetensors_header(p)[0]["a"][1] == (2**62, 0)
    p = raw_file(tmp_path / "d.safetensors", {"a": entry(shape=(1,) * 65, offsets=(0, 4))}, bytes(4))
    with pytest.raises(SafetensorsError, match="65 dimensions"):
        eio.load_safetensors(p)


def test_property_matches_reference_writer(tmp_path):
    """Random names (any Unicode text), dtypes and shapes: our bytes equal the
    reference writer's, and both readers give the arrays back."""
    hyp = pytest.importorskip("hypothesis")
    st = pytest.importorskip("hypothesis.strategies")
    st_numpy = pytest.importorskip("safetensors.numpy")
    p = tmp_path / "h.safetensors"

    @hyp.settings(max_examples=60, deadline=None, database=None)
    @hyp.given(st.dictionaries(
        st.text(max_size=6).filter(lambda s: s != "__metadata__"),
        st.tuples(st.sampled_from(ALL_DTYPES), st.lists(st.integers(0, 3), max_size=3), st.integers(0, 2**31)),
        max_size=6))
    def check(spec):
        t = {name: rand_array(np.random.default_rng(seed), dt, tuple(shape))
             for name, (dt, shape, seed) in spec.items()}
        eio.save_safetensors(p, t)
        assert p.read_bytes() == st_numpy.save(t)
        back = eio.load_safetensors(p)
        theirs = st_numpy.load_file(str(p))
        for k, v in t.items():
            np.testing.assert_array_equal(back[k], v)
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            np.testing.assert_array_equal(theirs[k], v)

    check()
