"""Products with quantized weights: engine_py._core.qmatmul (eg_qmatmul).

- Every supported ggml type, both paths (direct: N <= 64; GEMM: larger N):
  the result is X @ dequantize(W).T within float32 rounding (float64
  reference, bound from K), and the weights it uses are exactly the `gguf`
  package's dequantized values (X = identity gives W.T bit for bit).
- The GEMM path is eg_dequantize + eg_sgemm bit for bit (compared with the
  F32 path, which hands the float weights to eg_sgemm directly).
- The direct path: a token's row does not depend on the other tokens of the
  batch or on the thread count.
- ENGINE_PY_ISA=generic / avx2 / avx512 give the same bits (subprocesses).
- Real tensors of SmolLM2-135M (Q4_1, Q8_0) when the file is present.
- Bad inputs raise, never crash.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import engine_py
from engine_py import _core

gguf = pytest.importorskip("gguf")
from engine_py.bench.qmatmul import TYPES, dequantize, random_qweight  # noqa: E402

# the folder the engine_py under test was imported from (the sanitized build
# under .ci/asan-pytest), for the child processes this file starts
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))


def _find_smol():
    if os.environ.get("ENGINE_PY_SMOL_GGUF"):
        return os.environ["ENGINE_PY_SMOL_GGUF"]
    try:
        from engine_py.models import smollm2_path
        return smollm2_path()
    except (ModuleNotFoundError, FileNotFoundError, OSError):
        return "(not installed: bash tests/setup-models.sh)"


SMOL = _find_smol()
BLOCK = {"F16": 1, "BF16": 1, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
         "Q2_K": 256, "Q3_K": 256, "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
ALL = list(BLOCK)
DIRECT_MAX = 64


@pytest.fixture
def path():
    """Run a test under each path: ('direct', N <= 64) or ('gemm', every N)."""
    old = _core._qmatmul_tuning()
    yield
    _core._qmatmul_tuning(*old)


def _set_path(p):
    _core._qmatmul_tuning(DIRECT_MAX if p == "direct" else 0, 0)


def _weights(tn, rows, cols, seed=0):
    raw = random_qweight(tn, rows, cols, np.random.default_rng(seed))
    return raw.reshape(-1), dequantize(raw, tn, rows, cols)


def _check_close(y, x, wd):
    """|y - X W^T| within float32 rounding of a K-term sum (float64 reference)."""
    ref = x.astype(np.float64) @ wd.astype(np.float64).T
    scale = np.abs(x).astype(np.float64) @ np.abs(wd).astype(np.float64).T
    k = x.shape[1]
    bound = 2.0 * (k + 2) * 2.0 ** -24 * scale + 1e-30
    err = np.abs(y.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max err/bound {np.max(err / bound):.3g}"


@pytest.mark.parametrize("tn", ALL)
@pytest.mark.parametrize("p", ["direct", "gemm"])
def test_matches_float64_reference(tn, p, path):
    _set_path(p)
    rows, cols = (37, 512) if BLOCK[tn] > 1 else (37, 100)   # 100: F16/BF16 rows with a tail
    raw, wd = _weights(tn, rows, cols)
    rng = np.random.default_rng(1)
    for n in (1, 3, 5, 17, 64) + ((65, 100) if p == "gemm" else ()):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = _core.qmatmul(x, raw, TYPES[tn], rows, cols)
        assert y.shape == (n, rows) and y.dtype == np.float32
        _check_close(y, x, wd)
        bias = rng.standard_normal(rows).astype(np.float32)
        yb = _core.qmatmul(x, raw, TYPES[tn], rows, cols, bias=bias)
        np.testing.assert_array_equal(yb, y + bias)


@pytest.mark.parametrize("tn", ALL)
@pytest.mark.parametrize("p", ["direct", "gemm"])
def test_weights_are_the_gguf_packages_values(tn, p, path):
    """X = identity rows: Y = W^T exactly, so the dequantized tile (SIMD) is
    bit for bit gguf.quants.dequantize."""
    _set_path(p)
    rows, cols = 40, 256
    raw, wd = _weights(tn, rows, cols, seed=2)
    eye = np.eye(cols, dtype=np.float32)
    step = DIRECT_MAX if p == "direct" else cols
    got = np.concatenate([_core.qmatmul(eye[i:i + step], raw, TYPES[tn], rows, cols)
                          for i in range(0, cols, step)])
    np.testing.assert_array_equal(got, wd.T)


@pytest.mark.parametrize("tn", ALL)
def test_gemm_path_is_dequantize_then_sgemm_bit_for_bit(tn, path):
    _set_path("gemm")
    rows, cols = 96, 512
    raw, wd = _weights(tn, rows, cols, seed=3)
    x = np.random.default_rng(4).standard_normal((70, cols)).astype(np.float32)
    y = _core.qmatmul(x, raw, TYPES[tn], rows, cols)
    y_f32 = _core.qmatmul(x, wd.reshape(-1).view(np.uint8), TYPES["F32"],
                          rows, cols)
    np.testing.assert_array_equal(y, y_f32)


def test_direct_path_rows_do_not_depend_on_the_batch_or_threads(path):
    _set_path("direct")
    rows, cols = 200, 576
    raw, _ = _weights("Q4_1", rows, cols, seed=5)
    x = np.random.default_rng(6).standard_normal((32, cols)).astype(np.float32)
    full = _core.qmatmul(x, raw, TYPES["Q4_1"], rows, cols)
    for i in (0, 5, 31):
        np.testing.assert_array_equal(_core.qmatmul(x[i:i + 1], raw, TYPES["Q4_1"], rows, cols)[0],
                                      full[i])
    np.testing.assert_array_equal(_core.qmatmul(x[3:13], raw, TYPES["Q4_1"], rows, cols), full[3:13])
    nt = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        one = _core.qmatmul(x, raw, TYPES["Q4_1"], rows, cols)
    finally:
        engine_py.set_num_threads(nt)
    np.testing.assert_array_equal(one, full)


def test_same_call_twice_is_bit_identical():
    rows, cols = 300, 576
    raw, _ = _weights("Q8_0", rows, cols, seed=7)
    for n in (10, 200):
        x = np.random.default_rng(n).standard_normal((n, cols)).astype(np.float32)
        a = _core.qmatmul(x, raw, TYPES["Q8_0"], rows, cols)
        b = _core.qmatmul(x, raw, TYPES["Q8_0"], rows, cols)
        np.testing.assert_array_equal(a, b)


def test_non_contiguous_x_and_any_buffer():
    rows, cols = 20, 64
    raw, wd = _weights("Q4_0", rows, cols, seed=8)
    xb = np.random.default_rng(9).standard_normal((6, 2 * cols)).astype(np.float32)
    x = xb[:, ::2]
    y = _core.qmatmul(x, bytes(raw), TYPES["Q4_0"], rows, cols)
    np.testing.assert_array_equal(y, _core.qmatmul(np.ascontiguousarray(x), raw, TYPES["Q4_0"], rows, cols))
    _check_close(y, np.ascontiguousarray(x), wd)
    assert _core.qmatmul(np.zeros((0, cols), np.float32), raw, TYPES["Q4_0"], rows, cols).shape == (0, rows)


_CHILD = r"""
import sys, numpy as np
import engine_py
from engine_py import _core
from engine_py.bench.qmatmul import TYPES, random_qweight
out = {"level": np.array(_core.isa_levels()[0])}
for tn in sys.argv[2].split(","):
    bs = 1 if tn in ("F16", "BF16") else (256 if tn.endswith("_K") else 32)
    rows, cols = 45, (100 if bs == 1 else 512)
    raw = random_qweight(tn, rows, cols, np.random.default_rng(11)).reshape(-1)
    x = np.random.default_rng(12).standard_normal((70, cols)).astype(np.float32)
    for n in (1, 7, 64, 70):   # 70: the GEMM path
        out[f"{tn}_{n}"] = _core.qmatmul(x[:n], raw, TYPES[tn], rows, cols)
np.savez(sys.argv[1], **out)
"""


def test_every_isa_level_gives_the_same_bits(tmp_path):
    levels = ("generic", "avx2", "avx512")
    cpu = _core.isa_levels()[1]
    levels = levels[:levels.index(cpu) + 1]
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    res = {}
    for lv in levels:
        out = tmp_path / f"{lv}.npz"
        env = dict(os.environ, ENGINE_PY_ISA=lv, PYTHONPATH=ROOT)
        r = subprocess.run([sys.executable, str(script), str(out), ",".join(ALL)], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        res[lv] = dict(np.load(out))
        assert str(res[lv]["level"]) == lv
    base = res[levels[0]]
    for lv in levels[1:]:
        for key in base:
            if key != "level":
                np.testing.assert_array_equal(res[lv][key], base[key], err_msg=f"{key}: {lv} vs {levels[0]}")


@pytest.mark.skipif(not os.path.exists(SMOL), reason=f"SmolLM2 GGUF not found at {SMOL} "
                    "(set ENGINE_PY_SMOL_GGUF)")
@pytest.mark.parametrize("name", ["blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_up.weight",
                                  "blk.0.ffn_down.weight", "token_embd.weight"])
@pytest.mark.parametrize("p", ["direct", "gemm"])
def test_smollm2_tensors(name, p, path):
    _set_path(p)
    m = _core.gguf_open(SMOL)
    infos = {t[0]: (i, t) for i, t in enumerate(m.tensor_infos())}
    i, info = infos[name]
    rows, cols = info[1] if len(info[1]) == 2 else (1, info[1][0])
    type_id = info[3]
    raw = m.raw(i)
    if rows > 2048:   # the embedding table: its first 2048 rows
        rows = 2048
        raw = raw[:rows * (raw.size // info[1][0])]
    wd = m.dequantize(i)[:rows]
    x = np.random.default_rng(13).standard_normal((10 if p == "direct" else 150, cols)).astype(np.float32)
    y = _core.qmatmul(x, raw, type_id, rows, cols)
    _check_close(y, x, wd)
    if p == "gemm":
        np.testing.assert_array_equal(y, _core.qmatmul(x, np.ascontiguousarray(wd).reshape(-1).view(np.uint8),
                                                       0, rows, cols))
        yb = _core.qmatmul(x, raw, type_id, rows, cols, precision="bfloat16")
        _check_close(yb, _bf16(x), _bf16(wd))


def test_bad_inputs():
    rows, cols = 8, 64
    raw, _ = _weights("Q8_0", rows, cols, seed=14)
    t = TYPES["Q8_0"]
    x = np.ones((3, cols), np.float32)
    with pytest.raises(TypeError, match="float32"):
        _core.qmatmul(x.astype(np.float64), raw, t, rows, cols)
    with pytest.raises(TypeError, match="float32"):
        _core.qmatmul([[1.0] * cols], raw, t, rows, cols)
    with pytest.raises(ValueError, match="shape"):
        _core.qmatmul(np.ones((3, cols + 1), np.float32), raw, t, rows, cols)
    with pytest.raises(ValueError, match="shape"):
        _core.qmatmul(np.ones(cols, np.float32), raw, t, rows, cols)
    with pytest.raises(ValueError, match="bytes"):
        _core.qmatmul(x, raw[:-1], t, rows, cols)
    with pytest.raises(ValueError, match="bytes"):
        _core.qmatmul(x, raw, t, rows + 1, cols)
    with pytest.raises(ValueError, match="multiple"):
        _core.qmatmul(np.ones((3, 48), np.float32), raw, t, rows, 48)
    for bad_type in (4, 15, 16, 39, 63, 64, 1000):
        with pytest.raises(ValueError, match="not supported"):
            _core.qmatmul(x, raw, bad_type, rows, cols)
    with pytest.raises(ValueError):
        _core.qmatmul(x, raw, -1, rows, cols)
    with pytest.raises(ValueError):
        _core.qmatmul(x, raw, t, 0, cols)
    with pytest.raises(ValueError):
        _core.qmatmul(x, raw, t, rows, 0)
    with pytest.raises(TypeError):
        _core.qmatmul(x, raw, 8.0, rows, cols)
    with pytest.raises(TypeError):
        _core.qmatmul(x, 12345, t, rows, cols)
    with pytest.raises(ValueError, match="bias"):
        _core.qmatmul(x, raw, t, rows, cols, bias=np.ones(rows + 1, np.float32))
    with pytest.raises(ValueError):
        _core.qmatmul(x, raw, t, 2 ** 40, cols)


def test_bench_qmatmul_runs_and_writes_nothing_without_out(tmp_path, monkeypatch, capsys):
    from engine_py.bench import qmatmul as bench

    monkeypatch.chdir(tmp_path)
    assert bench.main(["--model", "qwen05", "--types", "Q4_K,Q8_0", "--n", "2,70", "--repeat", "1",
                       "--seconds", "0.001", "--threads", "1", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "| Q4_K (down only) | 70 |" in out and "| Q8_0 | 2 |" in out
    assert list(tmp_path.iterdir()) == []


# --- precision="bfloat16" ---------------------------------------------------
# Inputs and dequantized weights are rounded to bfloat16 (round to nearest
# even); the products of two bf16 values are exact in float32 and summed in
# float32. The reference is the same rounding in NumPy, then a float64 product.

def _bf16(a):
    """Round float32 to bfloat16 (nearest even), returned as float32."""
    u = np.ascontiguousarray(a, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return u.astype(np.uint32).view(np.float32)


def test_bf16_rounding_helper_matches_definition():
    # 1 + 2^-8 is halfway between two bf16 values: ties go to the even one.
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, -2.5, 1 + 2 ** -9], np.float32)
    np.testing.assert_array_equal(_bf16(x), [1.0, 1.0, 1 + 2 ** -6, -2.5, 1.0])


@pytest.mark.parametrize("tn", ["F32"] + ALL)
def test_bf16_matches_rounded_float64_reference(tn, path):
    _core._qmatmul_tuning(0, 0)        # every N takes the product path (N <= 64 is float32)
    # Row counts with a partial 32-row panel; cols over one 512-wide K block,
    # odd for the float types (the K pair padding).
    rows, cols = (45, 1024) if BLOCK.get(tn, 1) > 1 else (45, 1031)
    if tn == "F32":
        wd = np.random.default_rng(2).standard_normal((rows, cols)).astype(np.float32)
        raw, t = wd.reshape(-1).view(np.uint8), 0
    else:
        raw, wd = _weights(tn, rows, cols, seed=2)
        t = TYPES[tn]
    rng = np.random.default_rng(3)
    for n in (1, 11, 12, 13, 65, 100):   # 12-token register tiles with tails
        x = rng.standard_normal((n, cols)).astype(np.float32)
        y = _core.qmatmul(x, raw, t, rows, cols, precision="bfloat16")
        assert y.shape == (n, rows) and y.dtype == np.float32
        _check_close(y, _bf16(x), _bf16(wd))
        # and it differs from the float32 product by the rounding only
        bias = rng.standard_normal(rows).astype(np.float32)
        yb = _core.qmatmul(x, raw, t, rows, cols, bias=bias, precision="bfloat16")
        np.testing.assert_array_equal(yb, y + bias)


def test_bf16_is_bf16_not_float32(path):
    # Guard against a path that silently ignores the precision: the bf16 result
    # must differ from the float32 one on inputs that are not bf16 values.
    _core._qmatmul_tuning(0, 0)
    raw, wd = _weights("Q8_0", 64, 256, seed=4)
    x = np.random.default_rng(5).standard_normal((80, 256)).astype(np.float32)
    y32 = _core.qmatmul(x, raw, TYPES["Q8_0"], 64, 256)
    y16 = _core.qmatmul(x, raw, TYPES["Q8_0"], 64, 256, precision="bfloat16")
    assert not np.array_equal(y32, y16)
    rel = np.abs(y16 - y32).max() / np.abs(y32).max()
    assert 1e-5 < rel < 2e-2


def test_bf16_small_batches_take_the_float32_path(path):
    raw, _ = _weights("Q4_K", 16, 256, seed=6)
    x = np.random.default_rng(7).standard_normal((DIRECT_MAX, 256)).astype(np.float32)
    np.testing.assert_array_equal(
        _core.qmatmul(x, raw, TYPES["Q4_K"], 16, 256, precision="bfloat16"),
        _core.qmatmul(x, raw, TYPES["Q4_K"], 16, 256))


_CHILD_BF16 = r"""
import sys
import numpy as np
from engine_py import _core
from engine_py.bench.qmatmul import TYPES, random_qweight
_core._qmatmul_tuning(0, 0)
out = {"kernel": np.array(_core.build_info()["bf16_kernel"])}
for tn in ("Q4_1", "Q6_K", "F16"):
    rows, cols = 45, (1024 if tn != "F16" else 1031)
    raw = random_qweight(tn, rows, cols, np.random.default_rng(8)).reshape(-1)
    x = np.random.default_rng(9).standard_normal((77, cols)).astype(np.float32)
    out[tn] = _core.qmatmul(x, raw, TYPES[tn], rows, cols, precision="bfloat16")
np.savez(sys.argv[1], **out)
"""


def test_bf16_kernel_and_emulation_agree(tmp_path):
    """ENGINE_PY_ISA=avx2 turns the AVX512-BF16 kernel off: the emulation
    (rounded copies through the float32 GEMM) must give the same products up
    to float32 summation order."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD_BF16)
    res = {}
    for lv in ("avx2", "native"):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("ENGINE_PY_ISA", None)
        if lv != "native":
            env["ENGINE_PY_ISA"] = lv
        out = tmp_path / f"{lv}.npz"
        r = subprocess.run([sys.executable, str(script), str(out)], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        res[lv] = dict(np.load(out))
    assert not bool(res["avx2"]["kernel"])
    if not bool(res["native"]["kernel"]):
        # no AVX512-BF16 here: both runs took the emulation, whose dequantized
        # values and rounding are the same at every ISA level: the same bits
        for tn in ("Q4_1", "Q6_K", "F16"):
            np.testing.assert_array_equal(res["avx2"][tn], res["native"][tn], err_msg=tn)
        return
    for tn in ("Q4_1", "Q6_K", "F16"):
        a, b = res["avx2"][tn].astype(np.float64), res["native"][tn].astype(np.float64)
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max(), tn


def test_bf16_bad_precision():
    raw, _ = _weights("Q8_0", 8, 64, seed=10)
    x = np.ones((3, 64), np.float32)
    for bad in ("bf16x", "float16", "", "BFLOAT16 "):
        with pytest.raises(ValueError, match="precision"):
            _core.qmatmul(x, raw, TYPES["Q8_0"], 8, 64, precision=bad)
    with pytest.raises(TypeError):
        _core.qmatmul(x, raw, TYPES["Q8_0"], 8, 64, precision=1)


# --- precision="int8" -------------------------------------------------------
# Activations quantized per token and per block of 32 columns (dx = amax/127,
# q = rint(x / dx) in [-127, 127]), multiplied by the weights' integer codes
# with exact integer sums, the float scales applied per block in one fixed
# order (csrc/ops/qmatmul_int8.c). The reference is float64 from the
# quantized activations; every kernel (generic, avx2, avxvnni, avx512vnni)
# must give the same bits.

INT8 = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
INT8_LEVELS = ("generic", "avx2", "avxvnni", "avx512vnni")


def _q8_numpy(x):
    """The activation quantizer's definition in NumPy float32: (codes int8,
    scales float32 per block of 32)."""
    n, k = x.shape
    xb = x.reshape(n, k // 32, 32).astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        amax = np.abs(xb).max(-1)
        d = (amax / np.float32(127)).astype(np.float32)
        inv = (np.float32(1) / d).astype(np.float32)
        q = np.clip(np.rint((xb * inv[..., None]).astype(np.float32)), -127, 127)
    finite = np.isfinite(xb).all(-1)
    small = finite & (amax < np.float32(2.0 ** -120))
    q[~finite | small] = 0
    d = np.where(small, np.float32(0), d)
    d = np.where(~finite, np.float32(np.nan), d).astype(np.float32)
    return q.astype(np.int8).reshape(n, k), d


def _int8_reference(x, wd):
    """(float64 product of the dequantized int8 activations and the weights,
    a bound on float32 rounding of the kernel's per-block sums, the
    quantization bound against x @ wd.T)."""
    q, d = _q8_numpy(x)
    nb = x.shape[1] // 32
    xq = (q.reshape(len(x), nb, 32).astype(np.float64) * d[..., None].astype(np.float64)).reshape(x.shape)
    w = wd.astype(np.float64)
    ref = xq @ w.T
    # per block, the kernel adds d*I and m*sum(q) separately: bound their size
    # with the block's largest |w| (|m| and |d * code| are at most about that)
    wmax = np.repeat(np.abs(w).reshape(len(w), nb, 32).max(-1), 32, axis=1)
    scale = np.abs(xq) @ (np.abs(w) + 2 * wmax).T
    rounding = (nb + 4) * 2.0 ** -23 * scale + 1e-30
    # each activation moves by at most dx / 2 (plus float32 rounding of x / dx)
    qerr = (np.repeat(d.astype(np.float64), 32, axis=1) * (0.5 + 1e-5)) @ np.abs(w).T
    return ref, rounding, qerr


@pytest.fixture
def int8_level():
    """Restores the int8 kernel override after a test."""
    yield
    _core._int8_kernel(-1)


def _levels_here():
    return list(range(_core._int8_kernel()[0] + 1))


def test_q8_quantizer_matches_its_definition():
    rng = np.random.default_rng(20)
    x = (rng.standard_normal((9, 256)) * rng.choice([1e-3, 1.0, 1e4], (9, 1))).astype(np.float32)
    x[0, :32] = 0.0                                   # a zero block
    x[1, :32] = 1e-38                                 # too small: zero codes
    x[1, 32:64] = np.linspace(-2, 2, 32)              # -2 and 2 hit +-127 exactly
    x[2, :32] = np.arange(32) - 15.5 + 0.5            # halves after scaling: ties
    x[3, 5] = np.inf                                  # inf: the block's scale is NaN
    x[4, 40] = np.nan
    x[5, 64:96] = -3.4e38                             # the largest floats
    q, d = _core._q8_quantize(x)
    q0, d0 = _q8_numpy(x)
    assert q.dtype == np.int8 and d.dtype == np.float32 and q.shape == x.shape and d.shape == (9, 8)
    np.testing.assert_array_equal(q, q0)
    np.testing.assert_array_equal(d, d0)   # NaN == NaN in assert_array_equal
    assert np.all(q[0, :32] == 0) and d[0, 0] == 0 and np.all(q[1, :32] == 0) and d[1, 0] == 0
    assert q[1, 32] == -127 and q[1, 63] == 127
    assert np.isnan(d[3, 0]) and np.all(q[3, :32] == 0) and np.isnan(d[4, 1])
    assert np.abs(q).max() == 127 and not np.isnan(d[5, 2])
    with pytest.raises(ValueError, match="multiple of 32"):
        _core._q8_quantize(np.ones((2, 48), np.float32))
    with pytest.raises(TypeError):
        _core._q8_quantize(np.ones((2, 64)))


@pytest.mark.parametrize("tn", INT8)
def test_int8_matches_float64_reference_on_every_kernel(tn, path, int8_level):
    _core._qmatmul_tuning(0, 0)      # every N takes the product path (N <= 64 is float32)
    rows, cols = (45, 512) if BLOCK[tn] > 1 else (45, 96)   # a partial 16-row panel
    raw, wd = _weights(tn, rows, cols, seed=21)
    rng = np.random.default_rng(22)
    x = rng.standard_normal((130, cols)).astype(np.float32)  # 130: past a 128-token chunk
    x[3] *= 1e-3
    x[4, :32] = 0.0
    for lv in _levels_here():
        _core._int8_kernel(lv)
        for n in (1, 7, 8, 9, 130):   # token tiles of 4 and 8 with tails
            y = _core.qmatmul(x[:n], raw, TYPES[tn], rows, cols, precision="int8")
            assert y.shape == (n, rows) and y.dtype == np.float32
            ref, rounding, qerr = _int8_reference(x[:n], wd)
            err = np.abs(y.astype(np.float64) - ref)
            assert np.all(err <= rounding), (INT8_LEVELS[lv], n, float(np.max(err / rounding)))
            # against the float32 product: the activation rounding bound
            y32 = x[:n].astype(np.float64) @ wd.astype(np.float64).T
            assert np.all(np.abs(y - y32) <= qerr + rounding), (INT8_LEVELS[lv], n)
        bias = rng.standard_normal(rows).astype(np.float32)
        yb = _core.qmatmul(x, raw, TYPES[tn], rows, cols, bias=bias, precision="int8")
        np.testing.assert_array_equal(yb, y + bias)


@pytest.mark.parametrize("tn", INT8)
def test_int8_kernels_give_the_same_bits_and_rows_do_not_depend_on_the_batch(tn, path, int8_level):
    _core._qmatmul_tuning(0, 0)
    rows, cols = (37, 768) if BLOCK[tn] > 1 else (37, 160)
    raw, _ = _weights(tn, rows, cols, seed=23)
    x = np.random.default_rng(24).standard_normal((140, cols)).astype(np.float32)
    outs = []
    for lv in _levels_here():
        _core._int8_kernel(lv)
        outs.append(_core.qmatmul(x, raw, TYPES[tn], rows, cols, precision="int8"))
    for lv, o in enumerate(outs[1:], 1):
        np.testing.assert_array_equal(o, outs[0], err_msg=f"{INT8_LEVELS[lv]} vs generic")
    _core._int8_kernel(-1)
    full = outs[-1]
    for i in (0, 9, 129, 139):
        np.testing.assert_array_equal(
            _core.qmatmul(x[i:i + 1], raw, TYPES[tn], rows, cols, precision="int8")[0], full[i])
    nt = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        one = _core.qmatmul(x, raw, TYPES[tn], rows, cols, precision="int8")
    finally:
        engine_py.set_num_threads(nt)
    np.testing.assert_array_equal(one, full)


def test_int8_is_int8_and_other_types_take_the_bf16_path(path):
    _core._qmatmul_tuning(0, 0)
    x = np.random.default_rng(25).standard_normal((80, 256)).astype(np.float32)
    raw, _ = _weights("Q8_0", 64, 256, seed=26)
    y32 = _core.qmatmul(x, raw, TYPES["Q8_0"], 64, 256)
    y16 = _core.qmatmul(x, raw, TYPES["Q8_0"], 64, 256, precision="bfloat16")
    y8 = _core.qmatmul(x, raw, TYPES["Q8_0"], 64, 256, precision="int8")
    assert not np.array_equal(y8, y32) and not np.array_equal(y8, y16)
    rel = np.abs(y8 - y32).max() / np.abs(y32).max()
    assert 1e-4 < rel < 3e-2, rel
    for tn in ("F16", "BF16", "Q2_K", "Q3_K"):
        raw, _ = _weights(tn, 40, 256, seed=27)
        np.testing.assert_array_equal(_core.qmatmul(x, raw, TYPES[tn], 40, 256, precision="int8"),
                                      _core.qmatmul(x, raw, TYPES[tn], 40, 256, precision="bfloat16"),
                                      err_msg=tn)
    wd = np.random.default_rng(28).standard_normal((40, 256)).astype(np.float32)
    np.testing.assert_array_equal(
        _core.qmatmul(x, wd.reshape(-1).view(np.uint8), 0, 40, 256, precision="int8"),
        _core.qmatmul(x, wd.reshape(-1).view(np.uint8), 0, 40, 256, precision="bfloat16"))


def test_int8_small_batches_take_the_float32_path(path):
    raw, _ = _weights("Q4_K", 16, 256, seed=29)
    x = np.random.default_rng(30).standard_normal((DIRECT_MAX, 256)).astype(np.float32)
    np.testing.assert_array_equal(
        _core.qmatmul(x, raw, TYPES["Q4_K"], 16, 256, precision="int8"),
        _core.qmatmul(x, raw, TYPES["Q4_K"], 16, 256))


def test_int8_non_finite_inputs_give_nan_rows(path):
    _core._qmatmul_tuning(0, 0)
    raw, _ = _weights("Q4_1", 20, 64, seed=31)
    x = np.random.default_rng(32).standard_normal((5, 64)).astype(np.float32)
    x[1, 3] = np.inf
    x[2, 40] = np.nan
    y = _core.qmatmul(x, raw, TYPES["Q4_1"], 20, 64, precision="int8")
    assert np.all(np.isnan(y[1])) and np.all(np.isnan(y[2]))
    assert np.all(np.isfinite(y[[0, 3, 4]]))


def test_int8_bad_precision_and_kernel_hook():
    raw, _ = _weights("Q8_0", 8, 64, seed=33)
    x = np.ones((3, 64), np.float32)
    for bad in ("int4", "INT8", "int8 ", "i8"):
        with pytest.raises(ValueError, match="int8"):
            _core.qmatmul(x, raw, TYPES["Q8_0"], 8, 64, precision=bad)
    with pytest.raises(TypeError):
        _core.qmatmul(x, raw, TYPES["Q8_0"], 8, 64, precision=8)
    with pytest.raises(ValueError, match="above"):
        _core._int8_kernel(99)
    assert _core.build_info()["int8_kernel"] in INT8_LEVELS


_CHILD_INT8 = r"""
import sys
import numpy as np
from engine_py import _core
from engine_py.bench.qmatmul import TYPES, random_qweight
_core._qmatmul_tuning(0, 0)
out = {"kernel": np.array(_core.build_info()["int8_kernel"])}
for tn in sys.argv[2].split(","):
    rows, cols = 45, (512 if tn.endswith("_K") else 96)
    raw = random_qweight(tn, rows, cols, np.random.default_rng(34)).reshape(-1)
    x = np.random.default_rng(35).standard_normal((77, cols)).astype(np.float32)
    out[tn] = _core.qmatmul(x, raw, TYPES[tn], rows, cols, precision="int8")
np.savez(sys.argv[1], **out)
"""


def test_int8_every_isa_level_gives_the_same_bits(tmp_path):
    """ENGINE_PY_ISA=generic / avx2 select the generic C and AVX2 kernels (as
    a CPU without AVX-512 or VNNI would): the same bits as this CPU's own."""
    script = tmp_path / "child.py"
    script.write_text(_CHILD_INT8)
    res = {}
    for lv in ("generic", "avx2", "native"):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("ENGINE_PY_ISA", None)
        if lv != "native":
            env["ENGINE_PY_ISA"] = lv
        out = tmp_path / f"{lv}.npz"
        r = subprocess.run([sys.executable, str(script), str(out), ",".join(INT8)], env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
        res[lv] = dict(np.load(out))
    assert str(res["generic"]["kernel"]) == "generic"
    cpu = _core.isa_levels()[1]
    assert str(res["avx2"]["kernel"]) == ("avx2" if cpu != "generic" else "generic")
    for lv in ("avx2", "native"):
        for tn in INT8:
            np.testing.assert_array_equal(res[lv][tn], res["generic"][tn], err_msg=f"{tn} {lv}")
