"""The core base from Python: threads, build info, fp16/bf16 conversion."""
import os
import subprocess
import sys

import numpy as np
import pytest

import engine_py
from engine_py import _core


def test_threads_set_and_get():
    old = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        assert engine_py.get_num_threads() == 1
        assert engine_py.info()["blas_threads"] == 1
        assert engine_py.info()["omp_threads"] == 1
        engine_py.set_num_threads(2)
        assert engine_py.get_num_threads() == 2
        assert engine_py.info()["blas_threads"] == 2
    finally:
        engine_py.set_num_threads(old)


@pytest.mark.parametrize("bad", [0, -3])
def test_threads_reject_out_of_range(bad):
    with pytest.raises(ValueError, match="set_num_threads"):
        engine_py.set_num_threads(bad)


def test_threads_above_the_cpus_warn_and_cap():
    # more threads than CPUs warns and uses the CPUs (tests/test_threads.py has the rest)
    old = engine_py.get_num_threads()
    try:
        with pytest.warns(RuntimeWarning, match="set_num_threads"):
            engine_py.set_num_threads(10**6)
        assert engine_py.get_num_threads() == len(os.sched_getaffinity(0))
    finally:
        engine_py.set_num_threads(old)


def test_threads_reject_non_int():
    with pytest.raises(TypeError):
        engine_py.set_num_threads("2")


def test_info_fields():
    d = engine_py.info()
    assert d["version"] == engine_py.__version__
    assert "openblas" in d["blas"].lower()
    assert "OpenBLAS" in d["blas_config"]
    assert "-O3" in d["build_flags"] and "-fopenmp" in d["build_flags"]
    assert "fast-math" not in d["build_flags"]
    assert d["blas_error"] is None  # sticky; set only if BLAS threads could not start


def test_cli_info_runs():
    out = subprocess.run([sys.executable, "-m", "engine_py", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert "blas" in out and "omp_threads" in out


def test_f16_matches_numpy_on_all_values():
    bits = np.arange(65536, dtype=np.uint16)
    ours = _core.f16_to_f32(bits)
    ref = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(ours), nan)
    np.testing.assert_array_equal(ours[~nan], ref[~nan])


def test_f32_to_f16_matches_numpy_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        (rng.standard_normal(200_000) * 10.0 ** rng.integers(-9, 6, 200_000)).astype(np.float32),
        np.array([0.0, -0.0, 65504, 65519.99, 65520, 1e9, -1e9, np.inf, -np.inf, 6e-8, 3e-8, 2.98e-8],
                 dtype=np.float32),
        rng.integers(0, 2**32, 100_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
    ])
    ours = _core.f32_to_f16(x)
    with np.errstate(over="ignore"):  # overflow to inf is the expected result
        ref = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], ref[~nan])
    assert np.all(np.isnan(ours[nan].view(np.float16)))


def test_bf16_round_trip_and_rounding():
    x = np.array([1.0, -2.5, np.pi, 1e-40, np.inf, -np.inf, 3.0e38], dtype=np.float32)
    b = _core.f32_to_bf16(x)
    back = _core.bf16_to_f32(b)
    # reference: round-to-nearest-even on the top 16 bits, computed in integers
    u = x.view(np.uint32).astype(np.uint64)
    ref = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    np.testing.assert_array_equal(b, ref)
    assert back[0] == 1.0 and back[1] == -2.5 and np.isinf(back[4])
    assert np.isnan(_core.bf16_to_f32(_core.f32_to_bf16(np.array([np.nan], np.float32))))[0]


def test_conversion_keeps_shape():
    x = np.zeros((3, 4, 5), np.float32)
    assert _core.f32_to_f16(x).shape == (3, 4, 5)
    assert _core.f16_to_f32(np.zeros((0, 7), np.uint16)).shape == (0, 7)


def test_conversion_refuses_unsafe_casts():
    with pytest.raises(TypeError):
        _core.f32_to_f16(np.zeros(3, np.float64))


def test_gomp_spincount_default_and_user_value():
    """engine_py shortens libgomp's idle spin before loading the core (a busy
    second core made 2-thread training ~10x slower with the default), and a
    value the user set is kept."""
    code = "import os, engine_py; print(os.environ['GOMP_SPINCOUNT'])"
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["10000"]
    env["GOMP_SPINCOUNT"] = "12345"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["12345"]
