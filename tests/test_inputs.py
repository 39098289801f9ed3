"""Bad or unusual inputs get a clear exception or the conversion a user
expects (issue 13, item 6). One section per input:

1. sklearn-style labels (any integers, strings; classes_, save/load);
2. NumPy scalars for every number, bools refused, epochs an integer >= 1;
3. load_safetensors on a PyTorch pickle / text file says what the file is;
4. NaN/inf in the states: the error names the node id, not the batch row;
5. broken JSON in a model folder or saved model names the file and position;
6. MoELoRAFFN never returns NaN/inf silently for a finite input;
7. Encoder.encode / encode_layers / tokenize take any iterable of str;
8. max_length above max_position_embeddings raises;
9. gather of an empty id list gives (0, dim).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zlib

import numpy as np
import pytest

import engine_py
from engine_py import EngineClassifier, ExitPolicy, Graph, InMemoryStates, LayerCache, MoELoRAFFN
from engine_py.gmoe import DEFAULT_LOSS_COEFS
from engine_py.io import SafetensorsError, load_safetensors, read_safetensors_header

# ---------------------------------------------------------------- fixtures

N, D, C = 240, 8, 3


def _sbm(seed=0):
    """A planted 3-class graph with class-dependent states on 2 layers."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % C
    means = rng.normal(size=(C, D)) * 1.5
    states = np.stack([means[y] + rng.normal(size=(N, D)) * s for s in (1.6, 1.2)]).astype(np.float32)
    src = rng.integers(0, N, 1500)
    dst = np.where(rng.random(1500) < 0.85, (src + C * rng.integers(1, N // C, 1500)) % N,
                   rng.integers(0, N, 1500))
    return states, np.stack([src, dst]).astype(np.int64), y


@pytest.fixture(scope="module")
def sbm():
    states, ei, y = _sbm()
    perm = np.random.default_rng(1).permutation(N)
    return InMemoryStates(states), Graph(ei, N), y, perm[:150], perm[150:190], perm[190:]


def _est(**kw):
    p = dict(reduced_dim=8, hidden=8, epochs=4, patience=10, batch_size=64, lr=1e-2, dropout=0.1,
             seed=0, show_progress_bar=False)
    p.update(kw)
    return EngineClassifier(**p)


class FakeEncoder:
    """LayerCache encoder stand-in: states from a CRC of the text; texts
    containing "nan" get NaN states, "inf" inf."""

    num_layers, hidden_size = 2, D

    def fingerprint(self):
        return hashlib.sha256(b"fake-inputs").hexdigest()

    def encode_layers(self, texts, layers=None, batch_size=32, show_progress_bar=False):
        layers = list(range(3)) if layers is None else list(layers)
        crc = np.array([zlib.crc32(t.encode()) % 1000 for t in texts], np.float64)
        out = np.sin(crc[None, :, None] / 97.0 * (np.array(layers)[:, None, None] + 1)
                     + np.arange(D)[None, None, :]).astype(np.float32)
        for j, t in enumerate(texts):
            if "nan" in t:
                out[:, j, 2] = np.nan
            if "inf" in t:
                out[:, j, 5] = np.inf
        return out


def _make_bert(path, max_pos=32, hidden=D * 2):
    """A tiny random BERT folder (transformers save_pretrained)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    os.makedirs(path, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + \
        "the a graph node text model layer cache of and to is".split()
    with open(os.path.join(path, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    transformers.BertTokenizer(os.path.join(path, "vocab.txt")).save_pretrained(path)
    cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32,
                                  max_position_embeddings=max_pos)
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return _make_bert(str(tmp_path_factory.mktemp("bert")))


TEXTS = ["the graph", "a node of the graph", "text", "", "the model and the cache", "layer to layer"]


# ------------------------------------------------------- 1. sklearn labels

@pytest.mark.parametrize("mapping", [
    {0: 3, 1: 7, 2: 42},               # any integers
    {0: -5, 1: 0, 2: 9},               # negative ones
    {0: "apple", 1: "banana", 2: "cherry"},
])
@pytest.mark.parametrize("container", ["array", "object", "list"])
def test_labels_map_through_classes(sbm, mapping, container):
    """Labels in the same order as 0..C-1 train the identical model (same
    class indices): predictions are the user's labels, probabilities equal."""
    cache, g, y, tr, va, te = sbm
    ref = _est().fit(cache, g, y, tr, va)
    np.testing.assert_array_equal(ref.classes_, np.arange(C))   # 0..C-1: unchanged
    assert ref.classes_.dtype.kind == "i"
    vals = [mapping[int(v)] for v in y]
    labels = {"array": np.asarray(vals), "object": np.asarray(vals, dtype=object), "list": vals}[container]
    est = _est().fit(cache, g, labels, tr, va)
    assert list(est.classes_) == sorted(mapping.values())
    want = np.asarray([mapping[int(v)] for v in ref.predict(te)])
    got = est.predict(te)
    assert list(got) == list(want)
    np.testing.assert_array_equal(est.predict_proba(te), ref.predict_proba(te))
    ytrue = np.asarray(vals)[te]
    assert est.score(te, ytrue) == ref.score(te, y[te])
    pred, layer = est.predict(te, exit="dynamic", patience=1, return_exit_layer=True)
    rpred, rlayer = ref.predict(te, exit="dynamic", patience=1, return_exit_layer=True)
    assert list(pred) == [mapping[int(v)] for v in rpred]
    np.testing.assert_array_equal(layer, rlayer)


def test_labels_unordered_strings_and_proba_columns(sbm):
    cache, g, y, tr, va, te = sbm
    names = np.array(["zebra", "ant", "moose"])[y]
    est = _est(epochs=20).fit(cache, g, names, tr, va)
    assert list(est.classes_) == ["ant", "moose", "zebra"]
    proba = est.predict_proba(te)
    assert proba.shape == (te.size, 3)
    np.testing.assert_array_equal(est.classes_[proba.argmax(1)], est.predict(te))
    assert est.score(te, names[te]) > 0.6   # chance 1/3
    assert est.score(te, list(names[te])) == est.score(te, names[te])


def test_labels_placeholders_outside_train_and_val(sbm):
    """classes_ come from the training labels only: -1, None, NaN or "" for
    unlabeled nodes never become a class."""
    cache, g, y, tr, va, te = sbm
    ref = _est().fit(cache, g, y, tr, va)
    yi = y.copy()
    yi[te] = -1
    yo = np.array(["c0", "c1", "c2"], dtype=object)[y]
    yo[te] = None
    yf = y.astype(np.float64)
    yf[te] = np.nan
    ys = np.array(["c0", "c1", "c2"])[y]
    ys[te] = ""
    for labels, classes in ((yi, [0, 1, 2]), (yo, ["c0", "c1", "c2"]), (yf, [0, 1, 2]),
                            (ys, ["c0", "c1", "c2"])):
        est = _est().fit(cache, g, labels, tr, va)
        assert list(est.classes_) == classes
        np.testing.assert_array_equal(est.predict_proba(te), ref.predict_proba(te))


def test_labels_bad_values_raise_clearly(sbm):
    cache, g, y, tr, va, te = sbm
    est = _est(epochs=1)
    yv = y.copy()
    yv[va[3]] = 7      # a validation class no training node has
    with pytest.raises(ValueError, match=f"validation node {va[3]} has label 7.*training classes"):
        est.fit(cache, g, yv, tr, va)
    mixed = y.astype(object)
    mixed[tr[4]] = "x"
    with pytest.raises(ValueError, match="mix types"):
        est.fit(cache, g, mixed, tr)
    none = y.astype(object)
    none[tr[2]] = None
    with pytest.raises(ValueError, match=f"node {tr[2]} is None"):
        est.fit(cache, g, none, tr)
    nan = y.astype(float)
    nan[tr[1]] = np.nan
    with pytest.raises(ValueError, match=f"node {tr[1]} is nan"):
        est.fit(cache, g, nan, tr)
    with pytest.raises(ValueError, match="integers, strings or bools"):
        est.fit(cache, g, y + 0.25, tr)
    with pytest.raises(ValueError, match="two classes"):
        est.fit(cache, g, np.full(N, "only"), tr)
    with pytest.raises(ValueError, match="bytes"):
        est.fit(cache, g, np.array([b"a", b"b", b"c"])[y], tr)


def test_save_load_keeps_classes_without_pickle(sbm, tmp_path):
    cache, g, y, tr, va, te = sbm
    for labels, version in ((np.array(["red", "green", "blue"])[y], 2), (y * 10 - 3, 2), (y, 1)):
        est = _est().fit(cache, g, labels, tr, va)
        path = tmp_path / f"m{version}{labels.dtype.kind}"
        est.save(path)
        assert sorted(os.listdir(path)) == ["config.json", "model.safetensors"]
        with open(path / "config.json") as f:
            cfg = json.load(f)   # strings and ints are JSON, not a pickle
        assert cfg["classes"] == est.classes_.tolist() and cfg["version"] == version
        back = EngineClassifier.load(path)
        np.testing.assert_array_equal(back.classes_, est.classes_)
        assert list(back.predict(te, cache=cache, graph=g)) == list(est.predict(te))
    # a version-1 file (no "classes") still loads as 0..C-1
    del cfg["classes"]
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)
    np.testing.assert_array_equal(EngineClassifier.load(path).classes_, np.arange(C))
    cfg["classes"] = ["b", "a", "c"]
    with open(path / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(ValueError, match="sorted and distinct"):
        EngineClassifier.load(path)


def test_live_and_new_node_predictions_are_labels(bert, sbm):
    enc = engine_py.Encoder.from_pretrained(bert)
    texts = [TEXTS[i % len(TEXTS)] + f" {'graph' if i % 3 else 'node'}" for i in range(60)]
    states = InMemoryStates(enc.encode_layers(texts, layers=[1, 2]), layers=[1, 2])
    rng = np.random.default_rng(0)
    g = Graph(rng.integers(0, 60, size=(2, 200)), 60)
    labels = np.array(["p", "q"])[np.arange(60) % 2]
    est = _est(epochs=2).fit(states, g, labels, np.arange(40))
    pred = est.predict(np.arange(40, 60), exit="dynamic", encoder=enc, texts=texts)
    assert set(pred) <= {"p", "q"} and pred.dtype.kind == "U"
    new = est.predict_new(enc, ["the new graph", "a node"], [[0, 1], [5]], states)
    assert set(new) <= {"p", "q"} and len(new) == 2


# ------------------------------------------------ 2. numbers and NumPy scalars

NUMERIC = dict(reduced_dim=8, hidden=8, gnn_layers=2, dropout=0.1, max_neighbors=5, walk_steps=8,
               restart=0.5, T=0.5, lr=1e-2, weight_decay=1e-4, epochs=3, patience=2, batch_size=64,
               seed=3, r=None, heads=2)


def _numpy_scalars(params):
    out = {}
    for k, v in params.items():
        if isinstance(v, bool) or v is None:
            out[k] = v
        elif isinstance(v, int):
            out[k] = np.int64(v) if len(out) % 2 else np.int32(v)
        else:
            out[k] = np.float32(v) if len(out) % 2 else np.float64(v)
    return out


def test_numpy_scalar_hyperparameters_give_the_same_model(sbm):
    cache, g, y, tr, va, te = sbm
    for extra in ({}, {"sampler": "rw", "gnn": "gat"}):
        ref = EngineClassifier(**NUMERIC, **extra, show_progress_bar=False).fit(cache, g, y, tr, va)
        est = EngineClassifier(**_numpy_scalars(NUMERIC), **extra, show_progress_bar=False)
        est.fit(cache, g, y, tr, va)
        np.testing.assert_array_equal(est.predict_proba(te), ref.predict_proba(te))
    est = EngineClassifier(layers=np.array([1, 0]), r=np.int64(2), epochs=np.int64(1),
                           early_exit=np.bool_(False), show_progress_bar=False)
    assert "layers=array([1, 0])" in repr(est)   # repr compared arrays element-wise and raised
    assert est.fit(cache, g, y, tr).reduced_dim_ == D // 2
    assert est.layers_ == [1, 0]


@pytest.mark.parametrize("name,value,exc,match", [
    ("epochs", 0, ValueError, r"epochs must be an integer >= 1, got 0"),
    ("epochs", 2.5, TypeError, r"epochs must be an integer, got 2\.5"),
    ("epochs", 3.0, TypeError, r"epochs must be an integer"),
    ("epochs", "3", TypeError, r"epochs must be an integer, got '3'"),
    ("epochs", True, TypeError, r"epochs must be an integer, got True"),
    ("batch_size", 32.0, TypeError, "batch_size"),
    ("hidden", True, TypeError, "hidden"),
    ("hidden", np.float64(8.0), TypeError, "hidden"),
    ("dropout", True, TypeError, "dropout must be a number"),
    ("lr", "0.1", TypeError, "lr must be a number"),
    ("lr", np.float32(np.nan), ValueError, "lr must be a finite number"),
    ("T", 0, ValueError, "T must be a number > 0"),
    ("gnn_layers", 3, ValueError, "gnn_layers"),
    ("early_exit", 1, TypeError, "early_exit must be True or False"),
    ("seed", 1.5, TypeError, "seed"),
    ("layers", [0, 1.0], TypeError, r"layers\[1\]"),
    ("restart", 1.5, ValueError, "restart"),
    ("max_neighbors", 0, ValueError, "max_neighbors"),
])
def test_bad_hyperparameters(sbm, name, value, exc, match):
    cache, g, y, tr, va, te = sbm
    with pytest.raises(exc, match=match):
        _est(**{name: value}).fit(cache, g, y, tr)


def _base(kind="swiglu", H=8, I=16, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "swiglu":
        return {"W1": rng.normal(size=(I, H)) * 0.3, "W3": rng.normal(size=(I, H)) * 0.3,
                "W2": rng.normal(size=(H, I)) * 0.3}
    return {"Wi": rng.normal(size=(I, H)) * 0.3, "bi": rng.normal(size=I) * 0.1,
            "Wo": rng.normal(size=(H, I)) * 0.3, "bo": rng.normal(size=H) * 0.1}


def test_numpy_scalars_elsewhere(tmp_path):
    # MoELoRAFFN: every number (np.float32 was refused for lora_alpha, lr ...)
    kw = dict(num_experts=4, top_k=2, r=2, lora_alpha=4.0, lora_dropout=0.1, gcn_layers=2, gcn_dim=8,
              edge_density=0.5, seed=1)
    a, b = MoELoRAFFN(_base(), **kw), MoELoRAFFN(_base(), **_numpy_scalars(kw))
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    for m in (a, b):
        y, _ = m.forward(x, training=np.bool_(True))
        m.backward(np.ones_like(y))
    a.step(lr=1e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8)
    b.step(lr=np.float32(1e-3), weight_decay=np.float64(0.01), betas=np.array([0.9, 0.999]),
           eps=np.float32(1e-8))
    np.testing.assert_array_equal(a.forward(x)[0], b.forward(x)[0])
    # ExitPolicy, Graph.sample, LayerCache.build, tokenizer
    ExitPolicy(np.int64(4), np.int32(3), patience=np.int64(2), threshold=np.float32(0.9))
    gr = Graph(np.array([[0, 1, 2], [1, 2, 3]]), 4)
    b1 = gr.sample([0, 1], "khop", max_neighbors=np.int64(2), seed=np.uint64(5))
    b2 = gr.sample([0, 1], "khop", max_neighbors=2, seed=5)
    np.testing.assert_array_equal(b1.nodes, b2.nodes)
    gr.sample([0], "rw", walk_steps=np.int32(4), restart=np.float32(0.3))
    c = LayerCache.build(tmp_path / "c", FakeEncoder(), ["a", "b", "c"], layers=np.array([0, 2]),
                         batch_size=np.int64(2), capacity=np.int64(5), chunk_rows=np.int32(2))
    assert c.layers == [0, 2] and c.capacity == 5


def test_numpy_scalars_tokenizer_and_encoder(bert):
    enc = engine_py.Encoder.from_pretrained(bert, max_length=np.int64(12))
    assert enc.max_length == 12 and type(enc.max_length) is int
    ids = enc.tokenizer.encode_batch(["the graph of the model"], max_length=np.int64(4))
    assert len(ids[0]) == 4
    # np.int16 batch size: the same call as with the int (batch sizes agree only within
    # the numerical contract, engine_py.testing.assert_states_close)
    np.testing.assert_array_equal(enc.encode(TEXTS, batch_size=np.int16(2)), enc.encode(TEXTS, batch_size=2))


def test_bools_and_strings_refused_where_numbers_are_expected(tmp_path):
    with pytest.raises(TypeError, match="r must be an integer"):
        MoELoRAFFN(_base(), r=True)
    with pytest.raises(TypeError, match="lora_alpha must be a number"):
        MoELoRAFFN(_base(), lora_alpha=True)
    with pytest.raises(TypeError, match="edge_density must be a number"):
        MoELoRAFFN(_base(), edge_density="0.5")
    m = MoELoRAFFN(_base(), router="linear")
    with pytest.raises(TypeError, match="lr must be a number"):
        m.step(lr=True)
    with pytest.raises(TypeError, match="training must be True or False"):
        m.forward(np.zeros((1, 8)), training="no")
    with pytest.raises(TypeError, match="patience"):
        ExitPolicy(3, 2, patience=True)
    with pytest.raises(TypeError, match="threshold must be a number"):
        ExitPolicy(3, 2, threshold=True)   # float(True) == 1.0 was accepted
    gr = Graph(np.array([[0], [1]]), 2)
    with pytest.raises(TypeError, match="max_neighbors"):
        gr.sample([0], "khop", max_neighbors=True)
    with pytest.raises(TypeError, match="walk_steps"):
        gr.sample([0], "rw", walk_steps=2.5)   # int(2.5) == 2 was accepted
    for kw, match in ((dict(batch_size=2.0), "batch_size"), (dict(chunk_rows=True), "chunk_rows"),
                      (dict(capacity=5.5), "capacity")):
        with pytest.raises(TypeError, match=match):
            LayerCache.build(tmp_path / "x", FakeEncoder(), ["a", "b"], **kw)


def test_ids_and_counts_are_integers(tmp_path):
    """Integer arguments that were truncated by int(): now refused."""
    with pytest.raises(TypeError, match="num_nodes"):
        Graph(np.array([[0], [1]]), num_nodes=2.5)
    assert Graph(np.array([[0], [1]]), num_nodes=np.int64(3)).num_nodes == 3
    with pytest.raises(TypeError, match="layer id"):
        InMemoryStates(np.zeros((2, 3, 4)), layers=[0, 1.5])
    with pytest.raises(TypeError, match="layer"):
        InMemoryStates({0.5: np.zeros((3, 4))})
    c = LayerCache.build(tmp_path / "c", FakeEncoder(), ["a", "b"], layers=[0, 2])
    with pytest.raises(TypeError, match="layer"):
        c.gather(2.9, [0])   # was layer 2
    assert c.gather(np.int64(2), [0]).shape == (1, D)
    m = MoELoRAFFN(_base(), router="linear")
    y, _ = m.forward(np.ones((2, 8)))
    with pytest.raises(TypeError, match="loss_coefs"):
        m.backward(np.ones_like(y), loss_coefs={"balance": "0.1"})


# ------------------------------------------------------------ 3. safetensors

def _run_export_command(msg):
    import subprocess
    import sys
    code = re.search(r'python -c "(.*)"', msg).group(1)
    root = os.path.dirname(os.path.dirname(os.path.abspath(engine_py.__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr


def test_load_safetensors_on_a_pytorch_pickle(tmp_path):
    torch = pytest.importorskip("torch")
    sd = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    for name, kw, what in (("model.pt", {}, "torch.save zip"),
                           ("legacy.bin", {"_use_new_zipfile_serialization": False}, "legacy"),
                           ("misnamed.safetensors", {}, "torch.save zip")):
        p = str(tmp_path / name)
        torch.save(sd, p, **kw)
        for fn in (load_safetensors, read_safetensors_header):
            with pytest.raises(SafetensorsError, match="PyTorch") as ei:
                fn(p)
            msg = str(ei.value)
            assert p in msg and what in msg and "never unpickles" in msg and "save_safetensors(" in msg
        _run_export_command(msg)   # the command it shows works
        out = re.search(r"save_safetensors\('([^']*)'", msg).group(1)
        assert out != p
        np.testing.assert_array_equal(load_safetensors(out)["w"], sd["w"].numpy())


def test_load_safetensors_on_text_and_other_formats(tmp_path):
    t = tmp_path / "weights.safetensors"
    t.write_text('{"note": "this is JSON text, not weights"}\n')
    for fn in (load_safetensors, read_safetensors_header):
        with pytest.raises(SafetensorsError, match=r"is a text file, not a safetensors file: it starts "
                                                   r"with '\{\"note\": \"this is JSON"):
            fn(t)
    h = tmp_path / "page.safetensors"
    h.write_text("<!DOCTYPE html><html>Not Found</html>")
    with pytest.raises(SafetensorsError, match="HTML page"):
        load_safetensors(h)
    lfs = tmp_path / "lfs.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(SafetensorsError, match="Git LFS pointer"):
        load_safetensors(lfs)
    z = tmp_path / "arrays.npz"
    np.savez(z, a=np.zeros(3))
    with pytest.raises(SafetensorsError, match="npz"):
        load_safetensors(z)
    # a damaged real safetensors file still gets the rule it breaks
    good = tmp_path / "good.safetensors"
    engine_py.save_safetensors(good, {"a": np.zeros(4, np.float32)})
    data = bytearray(good.read_bytes())
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data[:-4]))
    with pytest.raises(SafetensorsError) as ei:
        load_safetensors(bad)
    assert "text file" not in str(ei.value) and "pickle" not in str(ei.value)


# ------------------------------------------------------ 4. non-finite states

def test_nonfinite_states_name_the_node_id(sbm, tmp_path):
    cache, g, y, tr, va, te = sbm
    states = np.stack([cache.gather(layer, np.arange(N)) for layer in cache.layers])
    node = int(tr[17])
    states[1, node, 3] = np.nan
    bad = InMemoryStates(states)
    with pytest.raises(ValueError, match=rf"layer-1 states of node {node} contain NaN or inf") as ei:
        _est().fit(bad, g, y, tr)
    assert "row" not in str(ei.value)
    est = _est().fit(cache, g, y, tr)
    tnode = int(te[5])
    states[1, node, 3] = 0.0
    states[0, tnode, 0] = np.inf
    bad = InMemoryStates(states)
    for kw in ({}, {"exit": "dynamic"}):
        with pytest.raises(ValueError, match=rf"layer-0 states of node {tnode} contain NaN or inf"):
            est.predict(te, cache=bad, **kw)
    # from a LayerCache: texts with "nan" get NaN states
    texts = [f"text {i}" + (" nan" if i == 33 else "") for i in range(60)]
    lc = LayerCache.build(tmp_path / "nan.cache", FakeEncoder(), texts, layers=[0, 2], dtype="float32")
    gg = Graph(np.stack([np.arange(60), (np.arange(60) + 1) % 60]), 60)
    with pytest.raises(ValueError, match=r"layer-0 states of node 33 contain NaN or inf .*LayerCache"):
        _est().fit(lc, gg, np.arange(60) % 2, np.arange(20, 50))


def test_nonfinite_new_node_of_predict_new_is_named():
    """predict_new batches hold cached nodes (< num_nodes) and new ones (>=):
    a new node is named by its index in texts."""
    from engine_py.engine import _raise_if_nonfinite
    H = np.zeros((3, 4), np.float32)
    H[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"layer-5 states of new node 2 \(texts\[2\] of predict_new\)"):
        _raise_if_nonfinite([H], [5], np.array([3, 10, 12]), InMemoryStates(np.zeros((1, 10, 4))))
    _raise_if_nonfinite([np.zeros((3, 4), np.float32)], [5], np.arange(3))   # finite: returns


# ------------------------------------------------------------------ 5. JSON

def test_broken_json_names_file_and_position(bert, tmp_path, sbm):
    import shutil
    folder = shutil.copytree(bert, tmp_path / "broken")
    cfg_path = folder / "config.json"
    good = cfg_path.read_text()
    cfg_path.write_text(good.replace('"hidden_size"', '"hidden_size" 16,', 1))
    with pytest.raises(ValueError, match=rf"{re.escape(str(cfg_path))} is not valid JSON: .* at line "
                                         rf"\d+, column \d+"):
        engine_py.Encoder.from_pretrained(folder)
    cfg_path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=rf"{re.escape(str(cfg_path))} is not UTF-8 text: byte 0xff at "
                                         r"offset 0"):
        engine_py.Encoder.from_pretrained(folder)
    cfg_path.write_text(good)
    (folder / "sentence_bert_config.json").write_text('["not", "an object"]')
    engine_py.Encoder.from_pretrained(folder)   # ignored, as a missing one (was AttributeError)
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": true,\n  "model_max_length" 8}')
    with pytest.raises(engine_py.TokenizerFormatError,
                       match=r"tokenizer_config.json is not valid JSON: .* at line 2, column 22"):
        engine_py.Encoder.from_pretrained(folder)
    # a sharded checkpoint's index
    index = tmp_path / "model.safetensors.index.json"
    index.write_text('{"weight_map": {\n  "a": "x.safetensors",\n}}')
    with pytest.raises(SafetensorsError, match=rf"{re.escape(str(index))} is not valid JSON: .* at line 3, "
                                               r"column 1"):
        engine_py.load_state(index)
    # a saved EngineClassifier's config.json
    cache, g, y, tr, va, te = sbm
    path = tmp_path / "model"
    _est(epochs=1).fit(cache, g, y, tr).save(path)
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text[:len(text) // 2])
    with pytest.raises(ValueError, match=rf"{re.escape(str(path / 'config.json'))} is not valid JSON: "
                                         r".* at line \d+, column \d+"):
        EngineClassifier.load(path)


# ------------------------------------------------------------------ 6. GMoE

def _ffn_ref(m, x):
    """float64 y of the FFN when the LoRA B's are 0 (at init) and the routing
    weights sum to 1: y = W2 (silu(W1 x) * W3 x) or Wo gelu(Wi x + bi) + bo."""
    from math import erf
    f = {k: v.astype(np.float64) for k, v in m._frozen.items() if v is not None}
    x = x.astype(np.float64)
    h = x @ f["W_in"].T + f.get("b_in", 0.0)
    if m.kind == "swiglu":
        with np.errstate(over="ignore"):
            a = h / (1.0 + np.exp(-h)) * (x @ f["W_up"].T)
    else:
        a = h * 0.5 * (1.0 + np.vectorize(erf)(h / math.sqrt(2.0)))
    return a @ f["W_out"].T + f.get("b_out", 0.0)


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_gmoe_large_finite_inputs(router, scale):
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(6, 8)) * scale).astype(np.float32)
    # SwiGLU: silu(gate) * up is ~scale^2: beyond float32 -> FloatingPointError naming the stage
    m = MoELoRAFFN(_base("swiglu"), num_experts=4, router=router, gcn_dim=8)
    with pytest.raises(FloatingPointError, match=r"MoELoRAFFN\(.*router='%s'\)\.forward: float32 "
                                                 r"overflow in the expert FFN's expert output" % router):
        m.forward(x)
    # GELU: the output is ~scale, representable: computed, finite and right
    m = MoELoRAFFN(_base("gelu"), kind="gelu", num_experts=4, router=router, gcn_dim=8)
    y, aux = m.forward(x)
    assert np.isfinite(y).all()
    assert all(math.isfinite(v) for k, v in aux.items() if np.ndim(v) == 0)
    ref = _ffn_ref(m, x)
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()
    no_z = {k: v for k, v in DEFAULT_LOSS_COEFS.items() if k != "z"}
    dx = m.backward(np.ones_like(y) / scale, loss_coefs=no_z)
    assert np.isfinite(dx).all() and all(np.isfinite(v).all() for v in m.grads().values())
    if router == "switch" and scale == 1e30:
        # the z-loss is mean(logsumexp^2) ~ 1e60: its router gradient is no float32
        m.forward(x)
        with pytest.raises(FloatingPointError, match="gradient of router.weight overflows float32"):
            m.backward(np.ones_like(y) / scale)


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_gmoe_silu_tail_is_exactly_zero(router, scale):
    """A gate far below 0 makes silu(gate) * up exactly 0 (it was g * 6e-39 *
    up: -60 at 1e20, -6e21 at 1e30)."""
    rng = np.random.default_rng(4)
    bw = _base("swiglu")
    bw["W1"] = -np.abs(bw["W1"])          # x > 0: every gate pre-activation ~ -scale
    bw["W3"] = np.abs(bw["W3"])           # every up projection ~ +scale
    x = (np.abs(rng.normal(size=(5, 8))) * scale).astype(np.float32)
    m = MoELoRAFFN(bw, num_experts=4, router=router, gcn_dim=8)
    y, _ = m.forward(x)
    np.testing.assert_array_equal(y, 0.0)
    no_z = {k: v for k, v in DEFAULT_LOSS_COEFS.items() if k != "z"}
    dx = m.backward(np.ones_like(y), loss_coefs=no_z)
    assert np.isfinite(dx).all()


def test_gmoe_gelu_tail_is_exact():
    """GELU of a very negative pre-activation is 0, so y = bo exactly (the
    clamped exp left ~1e-39 * |h|, here ~1e-2)."""
    bw = _base("gelu")
    bw["Wi"] = -np.abs(bw["Wi"])
    x = np.full((3, 8), 1e37, np.float32)
    m = MoELoRAFFN(bw, kind="gelu", num_experts=4, router="linear")
    y, _ = m.forward(x)
    np.testing.assert_array_equal(y, np.broadcast_to(bw["bo"].astype(np.float32), y.shape))


def test_gmoe_graph_losses_stay_finite():
    """Poisson profile with many experts (lambda^i / i! underflows) and Normal
    profile with a small sigma were NaN (0 * log 0); log space keeps them
    finite and their gradients too."""
    x = np.random.default_rng(5).normal(size=(7, 8)).astype(np.float32)
    m = MoELoRAFFN(_base(), num_experts=256, router="graph", gcn_dim=8)
    y, aux = m.forward(x)
    assert math.isfinite(aux["poisson"]) and math.isfinite(aux["normal"])
    m.backward(np.ones_like(y))
    assert all(np.isfinite(v).all() for v in m.grads().values())
    for n in (7, 8):
        m = MoELoRAFFN(_base(), num_experts=n, router="graph", gcn_dim=8)
        sd = m.state_dict()
        sd["normal_sigma"] = np.float32(1e-3)
        m.load_state_dict(sd)
        y, aux = m.forward(x)
        assert math.isfinite(aux["normal"]) and aux["normal"] > 0
        m.backward(np.ones_like(y))
        assert math.isfinite(float(m.grads()["normal_sigma"]))


@pytest.mark.parametrize("router,key", [("linear", "router.weight"), ("graph", "router.W_t.weight")])
def test_gmoe_router_overflow_names_the_router(router, key):
    m = MoELoRAFFN(_base("gelu"), kind="gelu", num_experts=4, router=router, gcn_dim=8)
    sd = m.state_dict()
    sd[key] = np.ones_like(sd[key])   # logits (or the token projection) = 8 * 1e38
    m.load_state_dict(sd)
    with pytest.raises(FloatingPointError, match=rf"overflow in the router logits \({router} router"):
        m.forward(np.full((2, 8), 1e38, np.float32))


# ----------------------------------------------------------------- 7. texts

def test_encode_takes_any_iterable_of_str(bert):
    pd = pytest.importorskip("pandas")
    enc = engine_py.Encoder.from_pretrained(bert)
    ref = enc.encode_layers(TEXTS)
    ref_ids = enc.tokenize(TEXTS)
    for texts in (tuple(TEXTS), (t for t in TEXTS), np.array(TEXTS), np.array(TEXTS, dtype=object),
                  pd.Series(TEXTS, index=range(10, 10 + len(TEXTS))), map(str, TEXTS)):
        if not isinstance(texts, (tuple, np.ndarray, pd.Series)):
            texts = list(texts)   # a generator can be consumed once: one per call below
            gens = [iter(texts) for _ in range(3)]
        else:
            gens = [texts] * 3
        np.testing.assert_array_equal(enc.encode_layers(gens[0]), ref)
        np.testing.assert_array_equal(enc.encode(gens[1]), ref[-1])
        assert [list(a) for a in enc.tokenize(gens[2])] == [list(a) for a in ref_ids]
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, got int"):
        enc.encode(t for t in ["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[1\] must be str, got float"):
        enc.encode_layers(pd.Series(["a", np.nan]))
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, got bytes"):
        enc.tokenize(np.array([b"x"], dtype=object))
    for bad in ("one text", np.str_("one text"), b"bytes"):
        with pytest.raises(TypeError, match="single"):
            enc.encode(bad)
    for bad, match in (({"a", "b"}, "set"), ({"a": 1}, "dict"), (np.array([["a"]]), "shape"),
                       (3, "int")):
        with pytest.raises(TypeError, match=match):
            enc.encode(bad)


# ------------------------------------------------------------- 8. max_length

def test_max_length_above_the_model_limit_raises(bert):
    with pytest.raises(ValueError, match=r"max_length=33 exceeds the model's limit: .*config.json has "
                                         r"max_position_embeddings=32"):
        engine_py.Encoder.from_pretrained(bert, max_length=33)
    assert engine_py.Encoder.from_pretrained(bert, max_length=32).max_length == 32
    assert engine_py.Encoder.from_pretrained(bert).max_length == 32   # the default is capped


# ----------------------------------------------------------------- 9. gather

def test_gather_of_no_ids(tmp_path, sbm):
    for dtype in ("float32", "float16", "bfloat16"):
        c = LayerCache.build(tmp_path / dtype, FakeEncoder(), ["a", "b", "c"], layers=[0, 2],
                             dtype=dtype)
        for ids in ([], (), np.array([]), np.array([], dtype=np.uint32)):
            out = c.gather(2, ids)
            assert out.shape == (0, D) and out.dtype == np.float32
        assert c.gather_layers([]).shape == (2, 0, D)
        with pytest.raises(TypeError, match="integer"):
            c.gather(0, [1.5])
        c.close()
    cache = sbm[0]
    for ids in ([], np.array([])):
        out = cache.gather(0, ids)
        assert out.shape == (0, D) and out.dtype == np.float32
    with pytest.raises(TypeError, match="integer"):
        cache.gather(0, [1.7])    # was truncated to node 1
    with pytest.raises(IndexError, match=f"node id {N} out of range"):
        cache.gather(0, [0, N])
