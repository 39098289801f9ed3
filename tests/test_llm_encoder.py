"""Encoder.from_pretrained on decoder LLMs, end to end (texts in, pooled
states out), against PyTorch + transformers: tiny random GGUF files of every
weight type and Hugging Face folders written by tests/llm_fixtures.py; the
real SmolLM2 and Qwen2.5-0.5B files where they are installed."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

import llm_fixtures as F  # noqa: E402

import engine_py  # noqa: E402
from engine_py import Encoder  # noqa: E402
from engine_py.llm import UnsupportedModelError  # noqa: E402

PARITY_RTOL = 1e-4   # docs/LLM.md: max|ours - ref| / max|ref| per pooled state

TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.",
         "  leading spaces, digits 12345 and punctuation!?", "x",
         "naïve café — 東京 🙂 tabs\tand\nnewlines", "a " * 40]


def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _check(ours, ref, what):
    assert ours.shape == ref.shape, what
    for layer in range(ref.shape[0]):
        for t in range(ref.shape[1]):
            err = _rel(ours[layer, t], ref[layer, t])
            assert err <= PARITY_RTOL, f"{what}: layer {layer}, text {t}: {err:.2e}"


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return F.write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param,
                            gguf_types=("F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"))


@pytest.mark.parametrize("wtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_gguf_texts_match_transformers_every_layer(tiny, wtype):
    path = tiny.gguf[wtype]
    enc = Encoder.from_pretrained(path)
    L = enc.num_layers
    assert enc.kind == tiny.arch and enc.hidden_size == tiny.config["hidden_size"]
    layers = list(range(L + 1))
    # the same token ids as transformers' tokenizer for the GGUF
    _, tok = F._load(path)
    for mine, text in zip(enc.tokenize(TEXTS), TEXTS):
        assert list(mine) == tok(text, add_special_tokens=True)["input_ids"], text
    for pooling in ("mean", "last"):
        e = enc if pooling == "mean" else Encoder.from_pretrained(path, pooling="last")
        ours = e.encode_layers(TEXTS, layers, batch_size=4)
        ref = F.reference_pooled_states(path, TEXTS, layers, pooling=pooling)
        _check(ours, ref, f"{tiny.arch} {wtype} {pooling}")


def test_hf_folder_texts_match_transformers(tiny):
    from tokenizers import Tokenizer
    enc = Encoder.from_pretrained(tiny.hf_dir)
    # ids: those of the folder's tokenizer.json through HF `tokenizers`
    # (transformers' Qwen2Tokenizer would swap in Qwen2's own pre-tokenizer
    # regex instead of the file's, so it is not the reference for the file)
    ref_tok = Tokenizer.from_file(os.path.join(tiny.hf_dir, "tokenizer.json"))
    ids = [list(map(int, t)) for t in enc.tokenize(TEXTS)]
    assert ids == [ref_tok.encode(t).ids for t in TEXTS]
    layers = list(range(enc.num_layers + 1))
    _check(enc.encode_layers(TEXTS, layers), F.reference_pooled_states(tiny.hf_dir, ids, layers),
           f"{tiny.arch} hf folder")
    # the folder and its F32 GGUF are the same model
    g = Encoder.from_pretrained(tiny.gguf["F32"])
    np.testing.assert_allclose(g.encode(TEXTS), enc.encode(TEXTS), rtol=0,
                               atol=1e-5 * np.abs(enc.encode(TEXTS)).max())


def test_decoder_encoder_api(tiny, tmp_path):
    path = tiny.gguf["Q8_0"]
    enc = Encoder.from_pretrained(path, max_length=8)
    assert all(len(t) <= 8 for t in enc.tokenize(TEXTS))          # truncation
    with pytest.raises(ValueError, match="context length"):
        Encoder.from_pretrained(path, max_length=10 ** 6)
    with pytest.raises(ValueError, match="pooling"):
        Encoder.from_pretrained(path, pooling="cls")
    # fingerprint: covers the file, the pooling and the template
    a = Encoder.from_pretrained(path)
    assert a.fingerprint() == Encoder.from_pretrained(path).fingerprint()
    assert a.fingerprint() != Encoder.from_pretrained(path, pooling="last").fingerprint()
    assert a.fingerprint() != Encoder.from_pretrained(path, template="Q: {text}").fingerprint()
    assert a.fingerprint() != Encoder.from_pretrained(tiny.gguf["Q4_0"]).fingerprint()
    # pickles as what it was loaded from
    b = pickle.loads(pickle.dumps(Encoder.from_pretrained(path, pooling="last")))
    assert b.pooling == "last" and b.kind == tiny.arch
    np.testing.assert_array_equal(b.encode(TEXTS[:2]),
                                  Encoder.from_pretrained(path, pooling="last").encode(TEXTS[:2]))
    # the same call twice gives the same bits; batch sizes agree within the contract
    from engine_py.testing import assert_states_close
    s1 = a.encode_layers(TEXTS, [0, 1, a.num_layers], batch_size=2)
    np.testing.assert_array_equal(s1, a.encode_layers(TEXTS, [0, 1, a.num_layers], batch_size=2))
    assert_states_close(a.encode_layers(TEXTS, [0, 1, a.num_layers], batch_size=6), s1)
    assert "kind='%s'" % tiny.arch in repr(a)


def test_layer_cache_from_a_decoder(tiny, tmp_path):
    enc = Encoder.from_pretrained(tiny.gguf["Q4_1"])
    texts = [f"package {i}: {TEXTS[i % len(TEXTS)]}" for i in range(20)]
    cache = engine_py.LayerCache.build(str(tmp_path / "c"), enc, texts, layers=[0, 2, 3],
                                       dtype="float32", batch_size=8, show_progress_bar=False)
    np.testing.assert_allclose(cache.layer(2)[:], enc.encode_layers(texts, [2])[0], rtol=0,
                               atol=1e-5 * float(np.abs(cache.layer(2)[:]).max()))


def test_bad_gguf_files_are_clear_errors(tmp_path, tiny):
    data = open(tiny.gguf["F32"], "rb").read()
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.gguf"):
        Encoder.from_pretrained(str(trunc))
    notgguf = tmp_path / "x.gguf"
    notgguf.write_bytes(b"not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF"):
        Encoder.from_pretrained(str(notgguf))


def test_unsupported_architecture_names_what_is_supported(tmp_path):
    import gguf
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "gemma")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(UnsupportedModelError, match="llama, qwen2"):
        Encoder.from_pretrained(str(tmp_path / "g.gguf"))


# ------------------------------------------------------ real models

def _real(fn_name):
    from engine_py import models
    try:
        return getattr(models, fn_name)()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        pytest.skip(str(exc))


TEXTS_REAL = ["Debian package libc6: GNU C Library, shared libraries.",
              "A graph neural network learns over the links between documents.",
              "print('hello, world')  # 42", "Ünïcödé ünd 数字 123456"]


@pytest.mark.parametrize("fn_name", ["smollm2_path", "qwen05_path"])
def test_real_model_texts_match_transformers(fn_name):
    if os.environ.get("ENGINE_PY_ASAN") == "1":
        pytest.skip("real models run in the plain suite; under ASan they take minutes and the "
                    "tiny fixtures exercise the same C code")
    path = _real(fn_name)
    enc = Encoder.from_pretrained(path)
    layers = sorted({0, 1, enc.num_layers // 2, enc.num_layers - 1, enc.num_layers})
    ours = enc.encode_layers(TEXTS_REAL, layers)
    # token ids: the tokenizer's own suite (tests/test_bpe.py) covers the
    # reference differences of transformers' GGUF conversion; here the model
    # is compared on engine_py's ids
    ids = [list(map(int, t)) for t in enc.tokenize(TEXTS_REAL)]
    _check(ours, F.reference_pooled_states(path, ids, layers), fn_name)


# ------------------------------------------------------ precision="bfloat16"

BF16_MIN_COSINE = 0.999   # docs/LLM.md: per text, per layer, bf16 vs float32


def _min_cosine(a, b):
    num = np.sum(a.astype(np.float64) * b, axis=-1)
    den = np.linalg.norm(a.astype(np.float64), axis=-1) * np.linalg.norm(b.astype(np.float64), axis=-1)
    return float(np.min(num / den))


@pytest.mark.parametrize("which", ["Q4_1", "F16", "hf"])
def test_bfloat16_states_are_close_to_float32(tiny, which):
    path = tiny.hf_dir if which == "hf" else tiny.gguf[which]
    e32 = Encoder.from_pretrained(path)
    e16 = Encoder.from_pretrained(path, precision="bfloat16")
    assert e16.precision == "bfloat16" and e32.precision == "float32"
    layers = list(range(e32.num_layers + 1))
    texts = TEXTS * 4   # > 64 tokens per batch: the products take the bf16 path
    a = e32.encode_layers(texts, layers, batch_size=len(texts))
    b = e16.encode_layers(texts, layers, batch_size=len(texts))
    assert not np.array_equal(a[1:], b[1:]), "precision='bfloat16' changed nothing"
    np.testing.assert_array_equal(a[0], b[0])   # the embeddings are a lookup: no products
    assert _min_cosine(a, b) >= BF16_MIN_COSINE


def test_bfloat16_api_fingerprint_and_pickling(tiny):
    path = tiny.gguf["Q8_0"]
    a = Encoder.from_pretrained(path)
    b = Encoder.from_pretrained(path, precision="bfloat16")
    assert Encoder.from_pretrained(path, precision="float32").fingerprint() == a.fingerprint()
    assert b.fingerprint() != a.fingerprint()
    assert "precision='bfloat16'" in repr(b) and "precision" not in repr(a)
    c = pickle.loads(pickle.dumps(b))
    assert c.precision == "bfloat16" and c.fingerprint() == b.fingerprint()
    texts = TEXTS * 4
    np.testing.assert_array_equal(c.encode(texts, batch_size=len(texts)),
                                  b.encode(texts, batch_size=len(texts)))
    for bad in ("bf16", "float16", 16):
        with pytest.raises(ValueError, match="precision"):
            Encoder.from_pretrained(path, precision=bad)


def test_bfloat16_is_refused_for_bert(tmp_path):
    from engine_py.models import minilm_path
    try:
        p = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        pytest.skip(str(exc))
    with pytest.raises(ValueError, match="decoder"):
        Encoder.from_pretrained(p, precision="bfloat16")


@pytest.mark.parametrize("fn_name", ["smollm2_path", "qwen05_path"])
def test_real_model_bfloat16_close_to_float32(fn_name):
    if os.environ.get("ENGINE_PY_ASAN") == "1":
        pytest.skip("real models run in the plain suite")
    path = _real(fn_name)
    e32 = Encoder.from_pretrained(path)
    e16 = Encoder.from_pretrained(path, precision="bfloat16")
    layers = sorted({1, e32.num_layers // 2, e32.num_layers})
    texts = TEXTS_REAL * 4
    a = e32.encode_layers(texts, layers, batch_size=len(texts))
    b = e16.encode_layers(texts, layers, batch_size=len(texts))
    assert not np.array_equal(a, b)
    assert _min_cosine(a, b) >= BF16_MIN_COSINE, _min_cosine(a, b)


# ---------------------------------------------------------- precision="int8"
# Activations quantized to int8 per block of 32 values, times the weights'
# integer codes (csrc/ops/qmatmul_int8.c). The bound is the bf16 one: per
# text, per layer, cosine >= 0.999 against the float32 states.

INT8_MIN_COSINE = 0.999


def _min_cosine_per_layer(a, b):
    return [_min_cosine(a[i], b[i]) for i in range(a.shape[0])]


@pytest.mark.parametrize("which", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16"])
def test_int8_states_are_close_to_float32(tiny, which):
    path = tiny.gguf[which]
    e32 = Encoder.from_pretrained(path)
    e8 = Encoder.from_pretrained(path, precision="int8")
    assert e8.precision == "int8"
    layers = list(range(e32.num_layers + 1))
    texts = TEXTS * 4   # > 64 tokens per batch: the products take the int8 path
    a = e32.encode_layers(texts, layers, batch_size=len(texts))
    b = e8.encode_layers(texts, layers, batch_size=len(texts))
    assert not np.array_equal(a[1:], b[1:]), "precision='int8' changed nothing"
    np.testing.assert_array_equal(a[0], b[0])   # the embeddings are a lookup: no products
    assert _min_cosine(a, b) >= INT8_MIN_COSINE, _min_cosine_per_layer(a, b)
    if which == "F16":
        # no integer codes: the bf16 path (docs/LLM.md)
        c = Encoder.from_pretrained(path, precision="bfloat16").encode_layers(
            texts, layers, batch_size=len(texts))
        np.testing.assert_array_equal(b, c)
    else:
        c = Encoder.from_pretrained(path, precision="bfloat16").encode_layers(
            texts, layers, batch_size=len(texts))
        assert not np.array_equal(b[1:], c[1:]), "precision='int8' ran the bf16 path"


def test_int8_api_fingerprint_and_pickling(tiny):
    path = tiny.gguf["Q4_1"]
    a = Encoder.from_pretrained(path)
    b = Encoder.from_pretrained(path, precision="int8")
    c16 = Encoder.from_pretrained(path, precision="bfloat16")
    assert len({a.fingerprint(), b.fingerprint(), c16.fingerprint()}) == 3
    assert "precision='int8'" in repr(b)
    c = pickle.loads(pickle.dumps(b))
    assert c.precision == "int8" and c.fingerprint() == b.fingerprint()
    texts = TEXTS * 4
    np.testing.assert_array_equal(c.encode(texts, batch_size=len(texts)),
                                  b.encode(texts, batch_size=len(texts)))
    assert b._model.config["precision"] == "int8"   # LlamaModel(precision="int8")
    for bad in ("int4", "INT8", "i8", 8):
        with pytest.raises(ValueError, match="precision"):
            Encoder.from_pretrained(path, precision=bad)


def test_int8_is_refused_for_bert():
    from engine_py.models import minilm_path
    try:
        p = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError, OSError) as exc:
        pytest.skip(str(exc))
    with pytest.raises(ValueError, match="decoder"):
        Encoder.from_pretrained(p, precision="int8")


@pytest.mark.parametrize("fn_name", ["smollm2_path", "qwen05_path"])
def test_real_model_int8_close_to_float32(fn_name):
    if os.environ.get("ENGINE_PY_ASAN") == "1":
        pytest.skip("real models run in the plain suite")
    path = _real(fn_name)
    e32 = Encoder.from_pretrained(path)
    e8 = Encoder.from_pretrained(path, precision="int8")
    layers = list(range(e32.num_layers + 1))
    texts = TEXTS_REAL * 4
    a = e32.encode_layers(texts, layers, batch_size=len(texts))
    b = e8.encode_layers(texts, layers, batch_size=len(texts))
    assert not np.array_equal(a[1:], b[1:])
    per_layer = _min_cosine_per_layer(a, b)
    assert min(per_layer) >= INT8_MIN_COSINE, per_layer
