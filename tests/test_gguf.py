"""engine_py.io.GGUFFile: the C GGUF reader and dequantization.

Fixtures are written into tmp_path with the `gguf` package (its writer) or,
for broken files, by the small struct-level builder below. The reference for
every value is the `gguf` package: its reader for bytes and metadata, and
gguf.quants.dequantize for tensors, compared bit for bit.
"""
import os
import struct

import numpy as np
import pytest

from engine_py.io import GGUFError, GGUFFile, GGUFTensorInfo

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf import GGUFValueType as VT  # noqa: E402

# Byte offsets of the fp16 scale fields in each block type (ggml-common.h).
SCALES = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}
QUANTIZABLE = [QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0]
ALL_TYPES = [QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0,
             QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K]


def random_blocks(rng, qtype, rows, cols):
    """Random valid blocks of qtype for a (rows, cols) tensor: random bytes
    with finite fp16 scales, as a (rows, bytes per row) uint8 array."""
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    nb = rows * cols // bs
    raw = rng.integers(0, 256, size=(nb, ts), dtype=np.uint8)
    for off in SCALES[qtype]:
        h = rng.uniform(-2, 2, size=nb).astype(np.float16)
        raw[:, off:off + 2] = h.view(np.uint8).reshape(nb, 2)
    return raw.reshape(rows, cols // bs * ts)


def tensor_data(rng, qtype, rows, cols, quantize):
    """(array to write, raw_dtype) for a tensor of qtype."""
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if qtype == QT.F32:
        return x, None
    if qtype == QT.F16:
        return x.astype(np.float16), None
    if quantize:
        return gguf.quants.quantize(x, qtype), qtype
    if qtype == QT.BF16:
        return gguf.quants.quantize(x, qtype), qtype
    return random_blocks(rng, qtype, rows, cols), qtype


def write_gguf(path, tensors=(), kv=(), alignment=None, version=3):
    """Write with gguf's writer; tensors: (name, array, raw_dtype); kv:
    (key, value, vtype, sub_type)."""
    w = gguf.GGUFWriter(str(path), arch="llama")
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, val, vt, sub in kv:
        w.add_key_value(key, val, vt, sub_type=sub)
    for name, arr, raw_dtype in tensors:
        w.add_tensor(name, arr, raw_dtype=raw_dtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:  # v2 and v3 share the little-endian layout
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version))
    return path


def assert_bits_equal(got, ref):
    assert got.dtype == np.float32 and ref.dtype == np.float32
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


def check_parity(path):
    """Every tensor of path: tensor() bit-identical to gguf's dequantize,
    raw() equal to gguf's bytes, shape = reversed GGUF dims."""
    reader = gguf.GGUFReader(str(path))
    with GGUFFile(path) as f:
        assert list(f.tensors) == [t.name for t in reader.tensors]
        for t in reader.tensors:
            info = f.tensors[t.name]
            assert info.shape == tuple(int(d) for d in reversed(t.shape))
            assert info.type == t.tensor_type.name and info.type_id == int(t.tensor_type)
            assert info.offset == t.data_offset  # gguf reports it absolute
            assert info.nbytes == t.n_bytes
            ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(info.shape)
            assert_bits_equal(f.tensor(t.name), ref)
            raw = f.raw(t.name)
            assert raw.dtype == np.uint8 and raw.ndim == 1 and not raw.flags.writeable
            np.testing.assert_array_equal(raw, np.asarray(t.data).view(np.uint8).reshape(-1))
        return f


# ------------------------------------------------------------ valid files

@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("version", [2, 3])
def test_dequantize_every_type_bit_identical(tmp_path, qtype, version):
    rng = np.random.default_rng(int(qtype) * 10 + version)
    bs = gguf.GGML_QUANT_SIZES[qtype][0]
    tensors = [("a.weight", *tensor_data(rng, qtype, 3, 2 * max(bs, 32), quantize=False)),
               ("b.weight", *tensor_data(rng, qtype, 1, max(bs, 32), quantize=False))]
    if qtype in QUANTIZABLE:
        tensors.append(("c.weight", *tensor_data(rng, qtype, 5, 4 * bs, quantize=True)))
    path = write_gguf(tmp_path / "t.gguf", tensors, version=version)
    f = check_parity(path)
    assert f.version == version


def test_many_blocks_threaded_path(tmp_path):
    """Large enough for the threaded dequantization (many chunks)."""
    rng = np.random.default_rng(7)
    tensors = [("q4k", random_blocks(rng, QT.Q4_K, 256, 2048), QT.Q4_K),
               ("q8", random_blocks(rng, QT.Q8_0, 512, 1024), QT.Q8_0)]
    check_parity(write_gguf(tmp_path / "big.gguf", tensors))


def test_q8_k_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    nb = 6
    d = rng.uniform(-1, 1, nb).astype(np.float32)
    qs = rng.integers(-128, 128, (nb, 256)).astype(np.int8)
    bsums = qs.reshape(nb, 16, 16).astype(np.int16).sum(-1).astype(np.int16)
    blocks = np.concatenate([d.view(np.uint8).reshape(nb, 4), qs.view(np.uint8),
                             bsums.view(np.uint8).reshape(nb, 32)], axis=1)
    path = write_gguf(tmp_path / "q8k.gguf", [("x", blocks.reshape(2, -1), QT.Q8_K)])
    with GGUFFile(path) as f:
        assert f.tensors["x"].shape == (2, 768) and f.tensors["x"].type == "Q8_K"
        ref = (qs.astype(np.float32) * d[:, None]).reshape(2, 768)
        assert_bits_equal(f.tensor("x"), ref)


@pytest.mark.parametrize("alignment", [32, 64])
def test_alignment(tmp_path, alignment):
    rng = np.random.default_rng(1)
    tensors = [("a", rng.standard_normal((3, 5)).astype(np.float32), None),
               ("b", random_blocks(rng, QT.Q4_0, 2, 32), QT.Q4_0),
               ("c", rng.standard_normal(7).astype(np.float16), None)]
    path = write_gguf(tmp_path / "a.gguf", tensors, alignment=None if alignment == 32 else alignment)
    f = check_parity(path)
    assert f.alignment == alignment
    assert f.data_offset % alignment == 0
    for t in f.tensors.values():
        assert (t.offset - f.data_offset) % alignment == 0


def test_metadata_every_type(tmp_path):
    kv = [
        ("k.u8", 200, VT.UINT8, None), ("k.i8", -100, VT.INT8, None),
        ("k.u16", 60000, VT.UINT16, None), ("k.i16", -30000, VT.INT16, None),
        ("k.u32", 4000000000, VT.UINT32, None), ("k.i32", -2000000000, VT.INT32, None),
        ("k.u64", 2**64 - 1, VT.UINT64, None), ("k.i64", -2**63, VT.INT64, None),
        ("k.f32", 0.1, VT.FLOAT32, None), ("k.f64", 0.1, VT.FLOAT64, None),
        ("k.true", True, VT.BOOL, None), ("k.false", False, VT.BOOL, None),
        ("k.str", "h\u00e9llo \u4e2d \U0001F600", VT.STRING, None), ("k.empty", "", VT.STRING, None),
        ("k.arr_i32", [1, -2, 3], VT.ARRAY, VT.INT32),
        ("k.arr_u8", [0, 255], VT.ARRAY, VT.UINT8),
        ("k.arr_f32", [0.5, -1.25], VT.ARRAY, VT.FLOAT32),
        ("k.arr_f64", [1e300], VT.ARRAY, VT.FLOAT64),
        ("k.arr_u64", [2**64 - 1, 0], VT.ARRAY, VT.UINT64),
        ("k.arr_bool", [True, False, True], VT.ARRAY, VT.BOOL),
        ("k.arr_str", ["a", "", "\u00e9\u00e9"], VT.ARRAY, VT.STRING),
    ]
    path = write_gguf(tmp_path / "m.gguf", [("t", np.ones(4, np.float32), None)], kv)
    with GGUFFile(path) as f:
        md = f.metadata
    assert md["general.architecture"] == "llama"
    for key, val, vt, sub in kv:
        got = md[key]
        if vt == VT.FLOAT32:
            assert got == float(np.float32(val)) and isinstance(got, float)
        elif vt == VT.BOOL:
            assert got is val
        elif vt == VT.ARRAY and sub == VT.STRING:
            assert got == val
        elif vt == VT.ARRAY:
            dt = {VT.INT32: np.int32, VT.UINT8: np.uint8, VT.FLOAT32: np.float32, VT.FLOAT64: np.float64,
                  VT.UINT64: np.uint64, VT.BOOL: np.bool_}[sub]
            assert isinstance(got, np.ndarray) and got.dtype == dt
            np.testing.assert_array_equal(got, np.array(val, dtype=dt))
        else:
            assert got == val and type(got) is type(val), key
    # same values as gguf's reader
    reader = gguf.GGUFReader(str(path))
    for field in reader.fields.values():
        if field.types and field.types[0] != VT.ARRAY and not field.name.startswith("GGUF."):
            ref = field.contents()
            assert md[field.name] == ref or (isinstance(ref, float) and np.float32(ref) == np.float32(md[field.name]))


def test_invalid_utf8_string_value_is_kept(tmp_path):
    path = tmp_path / "u.gguf"
    write_gguf(path, [], [("k.s", b"ab\xffcd", VT.STRING, None)])
    with GGUFFile(path) as f:
        s = f.metadata["k.s"]
    assert s.encode("utf-8", "surrogateescape") == b"ab\xffcd"


def test_no_tensors_and_close(tmp_path):
    path = write_gguf(tmp_path / "e.gguf", [], [("k", 1, VT.UINT32, None)])
    f = GGUFFile(path)
    assert f.tensors == {} and f.metadata["k"] == 1
    f.close()
    f.close()
    assert f.closed


def test_raw_view_outlives_close(tmp_path):
    rng = np.random.default_rng(2)
    blocks = random_blocks(rng, QT.Q6_K, 2, 256)
    path = write_gguf(tmp_path / "r.gguf", [("w", blocks, QT.Q6_K)])
    with GGUFFile(path) as f:
        raw = f.raw("w")
        info = f.tensors["w"]
    assert isinstance(info, GGUFTensorInfo) and info.shape == (2, 256)
    with pytest.raises(ValueError, match="closed"):
        f.tensor("w")
    del f
    np.testing.assert_array_equal(raw, blocks.reshape(-1))  # the mapping is alive through raw.base
    with open(path, "rb") as fh:
        data = fh.read()
    assert raw.tobytes() == data[info.offset:info.offset + info.nbytes]
    with pytest.raises(ValueError):
        raw[0] = 1


def test_unknown_tensor_name(tmp_path):
    path = write_gguf(tmp_path / "n.gguf", [("a", np.zeros(2, np.float32), None)])
    with GGUFFile(path) as f, pytest.raises(KeyError, match="'b'"):
        f.tensor("b")


def test_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(IsADirectoryError):
        GGUFFile(tmp_path)


# ------------------------------------------------------------ broken files

def _s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack("<Q", len(b)) + b


def kv_u32(key, v):
    return _s(key) + struct.pack("<II", 4, v)


def build(kvs=(), infos=(), data=b"", version=3, alignment=32, magic=b"GGUF", n_tensors=None, n_kv=None):
    """A GGUF file from raw parts: kvs are encoded entries, infos (name,
    dims, type, offset) tuples; data is placed at the aligned data start."""
    out = magic + struct.pack("<IQQ", version, len(infos) if n_tensors is None else n_tensors,
                              len(kvs) if n_kv is None else n_kv)
    out += b"".join(kvs)
    for name, dims, typ, off in infos:
        out += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", typ, off)
    out += b"\0" * (-len(out) % alignment)
    return out + data


def good_file():
    """Two F32 tensors and a few metadata entries."""
    kvs = [_s("general.architecture") + struct.pack("<I", 8) + _s("llama"),
           kv_u32("llama.block_count", 2),
           _s("tok") + struct.pack("<IIQ", 9, 8, 2) + _s("a") + _s("bc")]
    infos = [("w", (4, 2), 0, 0), ("b", (4,), 0, 32)]
    data = np.arange(8, dtype=np.float32).tobytes() + np.ones(4, np.float32).tobytes() + b"\0" * 16
    return build(kvs, infos, data)


def open_bytes(tmp_path, data, name="x.gguf"):
    p = tmp_path / name
    p.write_bytes(data)
    return GGUFFile(p)


def raises(tmp_path, data, match):
    with pytest.raises(GGUFError, match=match) as ei:
        open_bytes(tmp_path, data)
    assert str(tmp_path / "x.gguf") in str(ei.value)
    return str(ei.value)


def test_hand_built_file_is_valid(tmp_path):
    with open_bytes(tmp_path, good_file()) as f:
        assert f.metadata == {"general.architecture": "llama", "llama.block_count": 2, "tok": ["a", "bc"]}
        assert f.tensors["w"].shape == (2, 4)
        np.testing.assert_array_equal(f.tensor("w"), np.arange(8, dtype=np.float32).reshape(2, 4))
        np.testing.assert_array_equal(f.tensor("b"), np.ones(4, np.float32))


def test_truncated_at_every_offset(tmp_path):
    data = good_file()
    end_of_data = len(data) - 16  # the trailing padding is not needed
    for n in range(len(data)):
        p = tmp_path / "x.gguf"
        p.write_bytes(data[:n])
        if n >= end_of_data:
            GGUFFile(p).close()
            continue
        with pytest.raises(GGUFError):
            GGUFFile(p)


def test_truncated_real_writer_file(tmp_path):
    rng = np.random.default_rng(5)
    path = write_gguf(tmp_path / "w.gguf", [("q", random_blocks(rng, QT.Q4_K, 1, 256), QT.Q4_K)],
                      [("s", ["x", "yy"], VT.ARRAY, VT.STRING)])
    data = path.read_bytes()
    with GGUFFile(path) as f:
        end = f.tensors["q"].offset + f.tensors["q"].nbytes
    for n in range(0, end, 3):
        with pytest.raises(GGUFError):
            open_bytes(tmp_path, data[:n], "t.gguf")


def test_bad_magic(tmp_path):
    raises(tmp_path, b"GGML" + good_file()[4:], "not a GGUF file")
    raises(tmp_path, b"GG", "too small")


def test_version_1_refused(tmp_path):
    raises(tmp_path, build(version=1), "version 1 is not supported")


def test_other_versions_refused(tmp_path):
    raises(tmp_path, build(version=4), "unknown GGUF version 4")
    raises(tmp_path, build(version=3 << 24), "big-endian")


def test_huge_counts(tmp_path):
    raises(tmp_path, build(n_tensors=2**63), "tensor count .* cannot fit")
    raises(tmp_path, build(n_kv=2**64 - 1), "metadata count .* cannot fit")


def test_string_length_past_eof(tmp_path):
    kv = struct.pack("<Q", 10**12) + b"key"
    msg = raises(tmp_path, build([kv]) + b"\0" * 64, "key length 1000000000000 at offset 24 reaches past")
    assert "metadata entry 0" in msg
    kv = _s("k") + struct.pack("<IQ", 8, 2**40) + b"abc"
    raises(tmp_path, build([kv]) + b"\0" * 64, 'metadata key "k".*string length')


def test_array_length_past_eof(tmp_path):
    kv = _s("arr") + struct.pack("<IIQ", 9, 6, 2**62)
    raises(tmp_path, build([kv]), 'metadata key "arr".*array length .* cannot fit')


def test_unknown_value_type(tmp_path):
    raises(tmp_path, build([_s("k") + struct.pack("<I", 13) + b"\0" * 8]), 'metadata key "k".*unknown value type 13')
    raises(tmp_path, build([_s("k") + struct.pack("<IIQ", 9, 77, 1) + b"\0" * 8]),
           "unknown array element type 77")


def test_nested_array_refused(tmp_path):
    kv = _s("k") + struct.pack("<IIQ", 9, 9, 1) + struct.pack("<IQ", 4, 1) + b"\0" * 4
    raises(tmp_path, build([kv]), "nested arrays")


def test_bool_not_0_or_1(tmp_path):
    raises(tmp_path, build([_s("k") + struct.pack("<IB", 7, 2) + b"\0" * 16]), "bool at offset .* holds 2")


def test_duplicate_key(tmp_path):
    raises(tmp_path, build([kv_u32("a", 1), kv_u32("a", 2)]), 'duplicate metadata key "a"')


def test_key_not_utf8(tmp_path):
    raises(tmp_path, build([_s(b"\xff\xfe") + struct.pack("<II", 4, 1)]), "metadata key at offset 24 is not valid UTF-8")


@pytest.mark.parametrize("value", [0, 3, 48])
def test_bad_alignment(tmp_path, value):
    raises(tmp_path, build([kv_u32("general.alignment", value)]), "general.alignment.*power of two")


def test_alignment_wrong_type(tmp_path):
    kv = _s("general.alignment") + struct.pack("<I", 8) + _s("32")
    raises(tmp_path, build([kv]), "general.alignment.*must be an integer")


def test_unknown_tensor_type(tmp_path):
    raises(tmp_path, build([], [("w", (256,), 16, 0)], b"\0" * 1024), r'tensor "w".*ggml type 16 \(IQ2_XXS\).*not supported')
    raises(tmp_path, build([], [("w", (32,), 1000, 0)], b"\0" * 1024), "ggml type 1000")


def test_row_not_multiple_of_block(tmp_path):
    raises(tmp_path, build([], [("w", (31, 2), 2, 0)], b"\0" * 64), "row length 31 is not a multiple of Q4_0")


def test_misaligned_offset(tmp_path):
    raises(tmp_path, build([], [("w", (4,), 0, 16)], b"\0" * 64), 'tensor "w".*data offset 16 is not a multiple of the alignment 32')


def test_offset_past_end(tmp_path):
    raises(tmp_path, build([], [("w", (4,), 0, 64)], b"\0" * 64), "reach past the end")
    raises(tmp_path, build([], [("w", (4,), 0, 2**64 - 32)], b"\0" * 64), "reach past the end")


def test_overlapping_tensors(tmp_path):
    infos = [("a", (16,), 0, 0), ("b", (4,), 0, 32)]
    raises(tmp_path, build([], infos, b"\0" * 128), 'tensors "a" .* and "b" .* overlap')


def test_duplicate_tensor_names(tmp_path):
    infos = [("a", (4,), 0, 0), ("a", (4,), 0, 32)]
    raises(tmp_path, build([], infos, b"\0" * 64), 'duplicate tensor name "a"')


def test_dims_overflow(tmp_path):
    raises(tmp_path, build([], [("w", (2**32, 2**32), 0, 0)], b"\0" * 64), "element count overflow")
    raises(tmp_path, build([], [("w", (2**62, 4), 0, 0)], b"\0" * 64), "element count overflow")


def test_bad_dims(tmp_path):
    raises(tmp_path, build([], [("w", (), 0, 0)], b"\0" * 64), "n_dims 0")
    raises(tmp_path, build([], [("w", (1, 1, 1, 1, 1), 0, 0)], b"\0" * 64), "n_dims 5")
    raises(tmp_path, build([], [("w", (4, 0), 0, 0)], b"\0" * 64), "dimension 1 at offset .* is 0")
