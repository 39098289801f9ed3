"""EngineClassifier: parity with the PyTorch reference (tests/reference/
engine_ref.py), learning on a planted-partition graph, determinism, the
estimator API, save/load, and bad inputs."""
import os
import sys

import numpy as np
import pytest

import engine_py
from engine_py.engine import EngineClassifier, InMemoryStates, NotFittedError
from engine_py.graph import Graph

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # tiny tensors; keep torch's thread pool from competing with ours
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "reference"))
from engine_ref import EngineRef  # noqa: E402

K, D, C, k, HID = 3, 12, 4, 8, 6


def _model(gnn, layers, early, norm, T=0.5):
    est = EngineClassifier(reduced_dim=k, hidden=HID, gnn=gnn, gnn_layers=layers, norm=norm,
                           early_exit=early, dropout=0.0, heads=2, T=T)
    est.layers_, est.num_classes_, est.in_dim_ = list(range(K)), C, D
    est._build(K, D, C)
    ref = EngineRef(K, D, k, HID, C, gnn, layers, "elu", norm, 0.0, T, early, 2)
    return est, ref


def _sync(est, ref, rng):
    sd = est.state_dict()
    for name in sd:
        if name.startswith("gates."):
            sd[name] = np.asarray(rng.normal(scale=0.3), dtype=np.float32).reshape(())
    est.load_state_dict(sd)
    ref.load_state_dict({n: torch.tensor(v) for n, v in sd.items()}, strict=True)


def _batch(seed, n_targets=20):
    rng = np.random.default_rng(seed)
    g = Graph(rng.integers(0, 80, size=(2, 220)), 80)
    b = g.sample(rng.choice(80, n_targets, replace=False), "khop", max_neighbors=6, seed=seed)
    Hs = [rng.normal(size=(b.num_nodes, D)).astype(np.float32) for _ in range(K)]
    y = rng.integers(0, C, size=n_targets)
    return b, Hs, y


def _ref_forward(ref, b, Hs):
    return ref([torch.tensor(h) for h in Hs], torch.tensor(b.edge_index), torch.tensor(b.graph_ptr))


CONFIGS = [(g, l, e, n) for g in ("sage", "gcn", "gat") for l in (1, 2) for e in (True, False)
           for n in ("id", "ln")]


@pytest.mark.parametrize("gnn,layers,early,norm", CONFIGS)
def test_parity_logits_and_grads(gnn, layers, early, norm):
    rng = np.random.default_rng(1)
    est, ref = _model(gnn, layers, early, norm)
    _sync(est, ref, rng)
    b, Hs, y = _batch(2)
    m = est.model_
    m.begin(b.graph_ptr, b.indptr, b.indices, False, 0)
    outs = [m.forward_step(i, Hs[i]) for i in range(K)]
    loss, _ = m.loss(y)
    m.zero_grad()
    m.backward()
    tl = _ref_forward(ref, b, Hs)
    tloss = EngineRef.loss(tl, torch.tensor(y))
    tloss.backward()
    for i, (o, t) in enumerate(zip(outs, tl)):
        assert (o is None) == (t is None), f"ladder {i} head presence"
        if o is not None:
            np.testing.assert_allclose(o, t.detach().numpy(), rtol=0, atol=1e-5)
    assert abs(loss - tloss.item()) < 1e-5
    grads = m.buffer("grad")
    tparams = dict(ref.named_parameters())
    gmax = max(float(p.grad.abs().max()) for p in tparams.values())
    for name, off, shape, _, trainable in est._table:
        if not trainable:
            continue
        size = int(np.prod(shape)) if shape else 1
        ours = grads[off:off + size].reshape(shape)
        theirs = tparams[name].grad.numpy()
        tol = 1e-4 * float(np.abs(theirs).max()) + 1e-6 * gmax
        assert np.abs(ours - theirs).max() <= tol, name


@pytest.mark.parametrize("gnn", ["sage", "gcn", "gat"])
def test_parity_with_real_pyg_layers(gnn):
    """The transcribed convs in tests/reference are checked against torch_geometric itself:
    the same engine_py weights loaded (strict names) into a model built from PyG's SAGEConv,
    GCNConv and GATConv give engine_py's logits and gradients."""
    pytest.importorskip("torch_geometric")
    rng = np.random.default_rng(3)
    est, _ = _model(gnn, 2, True, "ln")
    pyg_ref = EngineRef(K, D, k, HID, C, gnn, 2, "elu", "ln", 0.0, 0.5, True, 2, pyg=True)
    assert type(pyg_ref.ladders[0].gnn[0]).__module__.startswith("torch_geometric.")
    _sync(est, pyg_ref, rng)
    b, Hs, y = _batch(4)
    m = est.model_
    m.begin(b.graph_ptr, b.indptr, b.indices, False, 0)
    outs = [m.forward_step(i, Hs[i]) for i in range(K)]
    m.loss(y)
    m.zero_grad()
    m.backward()
    tl = _ref_forward(pyg_ref, b, Hs)
    EngineRef.loss(tl, torch.tensor(y)).backward()
    for o, t in zip(outs, tl):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=0, atol=1e-5)
    grads = m.buffer("grad")
    tparams = dict(pyg_ref.named_parameters())
    for name, off, shape, _, trainable in est._table:
        if trainable:
            theirs = tparams[name].grad.numpy()
            ours = grads[off:off + int(np.prod(shape) if shape else 1)].reshape(theirs.shape)
            assert np.abs(ours - theirs).max() <= 1e-4 * float(np.abs(theirs).max()) + 1e-7, name


@pytest.mark.parametrize("gnn,layers", [("sage", 2), ("gcn", 1), ("gat", 2)])
def test_parity_batchnorm_train_and_eval(gnn, layers):
    rng = np.random.default_rng(4)
    est, ref = _model(gnn, layers, True, "bn")
    _sync(est, ref, rng)
    b, Hs, y = _batch(5)
    m = est.model_
    # training mode (dropout is 0): batch statistics, running-estimate updates
    m.begin(b.graph_ptr, b.indptr, b.indices, True, 0)
    outs = [m.forward_step(i, Hs[i]) for i in range(K)]
    loss, _ = m.loss(y)
    m.zero_grad()
    m.backward()
    ref.train()
    tl = _ref_forward(ref, b, Hs)
    tloss = EngineRef.loss(tl, torch.tensor(y))
    tloss.backward()
    for o, t in zip(outs, tl):
        np.testing.assert_allclose(o, t.detach().numpy(), rtol=0, atol=1e-5)
    tparams = dict(ref.named_parameters())
    grads = m.buffer("grad")
    gmax = max(float(p.grad.abs().max()) for p in tparams.values())
    for name, off, shape, _, trainable in est._table:
        if trainable:
            size = int(np.prod(shape)) if shape else 1
            theirs = tparams[name].grad.numpy()
            assert np.abs(grads[off:off + size].reshape(shape) - theirs).max() <= \
                1e-4 * float(np.abs(theirs).max()) + 1e-6 * gmax, name
    sd, tsd = est.state_dict(), ref.state_dict()
    assert set(sd) == set(tsd)
    for n in sd:
        if "running" in n or "num_batches" in n:
            np.testing.assert_allclose(sd[n], tsd[n].numpy(), rtol=1e-5, atol=1e-6, err_msg=n)
    assert sd["ladders.0.norms.0.num_batches_tracked"].dtype == np.int64
    # evaluation mode: running estimates
    ref.eval()
    b2, Hs2, _ = _batch(6)
    m.begin(b2.graph_ptr, b2.indptr, b2.indices, False, 0)
    outs = [m.forward_step(i, Hs2[i]) for i in range(K)]
    with torch.no_grad():
        tl = _ref_forward(ref, b2, Hs2)
    for o, t in zip(outs, tl):
        np.testing.assert_allclose(o, t.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("gnn,layers,early,norm", [("sage", 2, True, "ln"), ("gcn", 1, False, "id"),
                                                   ("gat", 1, True, "id")])
def test_parity_ten_adamw_steps(gnn, layers, early, norm):
    rng = np.random.default_rng(3)
    est, ref = _model(gnn, layers, early, norm)
    _sync(est, ref, rng)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=5e-2)
    batches = [_batch(10 + s) for s in range(3)]
    m = est.model_
    for step in range(10):
        b, Hs, y = batches[step % 3]
        m.begin(b.graph_ptr, b.indptr, b.indices, False, 0)
        for i in range(K):
            m.forward_step(i, Hs[i])
        loss, _ = m.loss(y)
        m.zero_grad()
        m.backward()
        m.adamw_step(1e-2, 5e-2)
        opt.zero_grad()
        tloss = EngineRef.loss(_ref_forward(ref, b, Hs), torch.tensor(y))
        tloss.backward()
        opt.step()
        assert abs(loss - tloss.item()) <= 1e-4 * max(1.0, abs(tloss.item())), step
    sd = est.state_dict()
    for n, p in ref.named_parameters():
        np.testing.assert_allclose(sd[n], p.detach().numpy(), rtol=1e-3, atol=1e-4, err_msg=n)


# ------------------------------------------------------------- learning

def sbm(n=600, classes=3, p_in=0.04, p_out=0.002, noise=4.5, layers=3, dim=16, seed=0):
    """Planted partition: neighbours share labels; node states are noisy class
    means (different noise per layer), so a node alone is hard to classify."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    same = y[:, None] == y[None, :]
    p = np.where(same, p_in, p_out)
    a = np.triu(rng.random((n, n)) < p, 1)
    src, dst = np.nonzero(a)
    means = rng.normal(size=(classes, dim))
    states = np.stack([means[y] + noise * rng.normal(size=(n, dim)) for _ in range(layers)])
    return InMemoryStates(states.astype(np.float32)), np.stack([src, dst]), y


@pytest.fixture(scope="module")
def data():
    cache, ei, y = sbm()
    idx = np.random.default_rng(1).permutation(len(y))
    return cache, ei, y, idx[:300], idx[300:400], idx[400:]


def _fit(data, **kw):
    cache, ei, y, tr, va, te = data
    params = dict(reduced_dim=16, hidden=16, epochs=40, patience=10, batch_size=64, lr=1e-2,
                  dropout=0.2, seed=0, show_progress_bar=False)
    params.update(kw)
    graph = kw.pop("graph", None)
    params.pop("graph", None)
    est = EngineClassifier(**params)
    est.fit(cache, Graph(ei, cache.num_nodes) if graph is None else graph, y, tr, va)
    return est


def test_learns_and_graph_helps(data):
    cache, ei, y, tr, va, te = data
    est = _fit(data)
    acc = est.score(te, y[te])
    empty = Graph(np.zeros((2, 0), np.int64), cache.num_nodes)   # ego graph = the node: an MLP
    mlp = _fit(data, graph=empty)
    acc_mlp = mlp.score(te, y[te], graph=empty)
    assert acc > 0.85, acc                   # chance is 1/3
    assert acc > acc_mlp + 0.1, (acc, acc_mlp)
    assert est.history_ and "val_acc" in est.history_[0]
    assert est.best_val_acc_ == max(h["val_acc"] for h in est.history_)
    # best weights restored: validation accuracy now equals the best seen
    assert abs(est.score(va, y[va]) - est.best_val_acc_) < 1e-12
    p = est.predict_proba(te)
    assert p.shape == (len(te), 3) and np.allclose(p.sum(1), 1)
    assert np.array_equal(p.argmax(1), est.predict(te))


@pytest.mark.parametrize("kw", [dict(sampler="rw", gnn="gcn", gnn_layers=2, walk_steps=16),
                                dict(gnn="gat", norm="ln", early_exit=False, heads=2),
                                dict(norm="bn", gnn_layers=2)])
def test_other_configs_learn(data, kw):
    cache, ei, y, tr, va, te = data
    est = _fit(data, epochs=15, **kw)
    assert est.score(te, y[te]) > 0.6


def test_deterministic(data):
    a = _fit(data, epochs=3, sampler="rw", walk_steps=8)
    b = _fit(data, epochs=3, sampler="rw", walk_steps=8)
    c = _fit(data, epochs=3, sampler="rw", walk_steps=8, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(np.array_equal(sa[n], sb[n]) for n in sa)
    assert not all(np.array_equal(sa[n], sc[n]) for n in sa)
    assert [h["loss"] for h in a.history_] == [h["loss"] for h in b.history_]


def test_state_dict_names(data):
    est = _fit(data, epochs=1, gnn_layers=2)
    names = list(est.state_dict())
    for n in ["ladders.0.projector.0.weight", "ladders.0.projector.1.bias", "ladders.2.projector.3.weight",
              "ladders.0.gnn.0.lin_l.weight", "ladders.0.gnn.1.lin_r.weight", "gates.1.alpha",
              "classifier.weight", "exit_heads.0.weight", "exit_heads.1.bias"]:
        assert n in names, n
    assert "gates.0.alpha" not in names and "exit_heads.2.weight" not in names
    assert est.state_dict()["gates.1.alpha"].shape == ()
    ref = EngineRef(3, 16, 16, 16, 3, "sage", 2, "elu", "id", 0.0, 0.1, True, 4)
    ref.load_state_dict({n: torch.tensor(v) for n, v in est.state_dict().items()}, strict=True)


def test_params_api():
    est = EngineClassifier(hidden=32)
    p = est.get_params()
    assert p["hidden"] == 32 and p["gnn"] == "sage" and "layers" in p
    assert est.set_params(lr=0.5, gnn="gcn") is est and est.lr == 0.5
    with pytest.raises(ValueError, match="invalid parameter"):
        est.set_params(nope=1)
    assert "hidden=32" in repr(est)


def test_save_load_roundtrip(data, tmp_path):
    cache, ei, y, tr, va, te = data
    est = _fit(data, epochs=2, norm="ln")
    path = str(tmp_path / "model")
    est.save(path)
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    est2 = EngineClassifier.load(path)
    g = Graph(ei, cache.num_nodes)
    np.testing.assert_array_equal(est.predict_proba(te), est2.predict_proba(te, cache=cache, graph=g))
    assert est2.get_params()["norm"] == "ln"
    st = pytest.importorskip("safetensors.torch")
    ref = EngineRef(3, 16, 16, 16, 3, "sage", 1, "elu", "ln", 0.0, 0.1, True, 4)
    ref.load_state_dict(st.load_file(os.path.join(path, "model.safetensors")), strict=True)
    with pytest.raises(NotFittedError):
        EngineClassifier().save(path)


# ------------------------------------------------------------ bad input

def test_bad_inputs(data):
    cache, ei, y, tr, va, te = data
    g = Graph(ei, cache.num_nodes)
    est = EngineClassifier(epochs=1, show_progress_bar=False)
    with pytest.raises(NotFittedError):
        est.predict(te)
    with pytest.raises(ValueError, match="one entry per node"):
        est.fit(cache, g, y[:-1], tr)
    # labels -3 and 10**9 are classes like any other (sklearn style; see
    # tests/test_inputs.py); a label None of a training node is not
    bad = y.astype(object)
    bad[tr[0]] = None
    with pytest.raises(ValueError, match=f"node {tr[0]} is None"):
        est.fit(cache, g, bad, tr)
    with pytest.raises(ValueError, match="integers"):
        est.fit(cache, g, y + 0.5, tr)
    with pytest.raises(ValueError, match="outside"):
        est.fit(cache, g, y, np.array([0, 600]))
    with pytest.raises(ValueError, match="empty"):
        est.fit(cache, g, y, np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="nodes"):
        est.fit(cache, Graph(ei, 601), y, tr)
    with pytest.raises(ValueError, match="not in the cache"):
        EngineClassifier(layers=[0, 7]).fit(cache, g, y, tr)
    with pytest.raises(ValueError, match="norm"):
        EngineClassifier(norm="batch").fit(cache, g, y, tr)
    with pytest.raises(ValueError, match="gnn"):
        EngineClassifier(gnn="gin").fit(cache, g, y, tr)
    with pytest.raises(TypeError, match="gather"):
        est.fit(np.zeros((600, 16)), g, y, tr)
    states = np.stack([cache.gather(l, np.arange(600)) for l in cache.layers])
    states[1, tr[5], 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        est.fit(InMemoryStates(states), g, y, tr)
    states[1, tr[5], 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        est.fit(InMemoryStates(states), g, y, tr)
    est = _fit(data, epochs=1)
    with pytest.raises(ValueError, match="outside"):
        est.predict(np.array([5, -1]))
    with pytest.raises(ValueError, match="shape"):
        est.score(te, y[te][:-1])
    with pytest.raises(ValueError, match="GAT"):
        EngineClassifier(gnn="gat", heads=5, reduced_dim=16, epochs=1).fit(cache, g, y, tr)


def test_ladder_object_guards():
    m = engine_py._core.Ladder(2, 4, 4, 4, 2, 0, 1, 0, 0, 1, True, 0.0, 0.1, 0)
    with pytest.raises(RuntimeError, match="begin"):
        m.forward_step(0, np.zeros((3, 4), np.float32))
    m.begin(np.array([0, 2]), np.array([0, 1, 2]), np.array([1, 0]), False, 0)
    with pytest.raises(ValueError, match="shape"):
        m.forward_step(0, np.zeros((3, 4), np.float32))
    with pytest.raises(RuntimeError, match="out of order"):
        m.forward_step(1, np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match="labels"):
        m.loss(np.array([0, 1]))
    with pytest.raises(ValueError):
        m.begin(np.array([0, 2]), np.array([0, 1, 2]), np.array([1, 5]), False, 0)


def test_batchnorm_skips_single_node_batch():
    # 3 nodes, no edges, batch_size 2 -> the last batch is one isolated node
    cache = InMemoryStates(np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32))
    g = Graph(np.zeros((2, 0), np.int64), 3)
    est = EngineClassifier(norm="bn", reduced_dim=4, hidden=4, epochs=2, batch_size=2,
                           show_progress_bar=False).fit(cache, g, np.array([0, 1, 0]), [0, 1, 2])
    assert est.predict([0, 1, 2]).shape == (3,)
    m = est.model_
    m.begin(np.array([0, 1]), np.array([0, 0]), np.array([], np.int64), True, 0)
    with pytest.raises(ValueError, match="BatchNorm"):
        m.forward_step(0, np.zeros((1, 4), np.float32))


def test_ladder_used_from_two_threads_raises():
    import threading
    import time
    rng = np.random.default_rng(0)
    g = Graph(rng.integers(0, 3000, size=(2, 15000)), 3000)
    b = g.sample(np.arange(256), "khop")
    m = engine_py._core.Ladder(4, 256, 128, 64, 5, 0, 1, 0, 0, 1, True, 0.0, 0.1, 0)
    Hs = [rng.standard_normal((b.num_nodes, 256), dtype=np.float32) for _ in range(4)]
    y = rng.integers(0, 5, 256)
    errors, seen = [], []

    stop = threading.Event()

    def work():   # trains until the other thread has been refused (an event, not a time)
        try:
            while not stop.is_set():
                m.train_batch(b.graph_ptr, b.indptr, b.indices, Hs, y, 0, 1e-3, 0.0)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    old = engine_py.get_num_threads()
    engine_py.set_num_threads(1)   # the worker's C call must not compete with this loop
    t = threading.Thread(target=work)
    t.start()
    deadline = time.monotonic() + 300   # hang guard only
    try:
        while not seen and t.is_alive() and time.monotonic() < deadline:
            try:
                m.zero_grad()
            except RuntimeError as e:
                seen.append(str(e))
            time.sleep(0.002)   # do not starve the worker of the CPU
    finally:
        stop.set()
        t.join()
    engine_py.set_num_threads(old)
    assert not errors
    assert seen and "another thread" in seen[0]


# ------------------------------------------- shared rows and bf16 products

def _dup_batch(data, seed=3):
    """A batch whose subgraphs share nodes, its distinct ids and each node's row."""
    cache, ei, y, tr, va, te = data
    g = Graph(ei, cache.num_nodes)
    b = g.sample(tr[:64], "khop", seed=seed)
    keys, rows = np.unique(b.nodes, return_inverse=True)
    assert keys.size < b.num_nodes, "the test batch must repeat nodes"
    return g, b, keys, rows.astype(np.int64)


@pytest.mark.parametrize("gnn", ["sage", "gcn", "gat"])
def test_shared_rows_equal_per_node_rows(data, gnn):
    """train_batch/predict_batch with rows= (each distinct node projected
    once) give the per-node results up to float32 summation order."""
    cache, ei, y, tr, va, te = data
    g, b, keys, rows = _dup_batch(data)
    a = _fit(data, epochs=1, gnn=gnn, heads=2)
    c = _fit(data, epochs=1, gnn=gnn, heads=2)
    Hu = [cache.gather(l, keys) for l in a.layers_]
    Hn = [H[rows] for H in Hu]
    za = a.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, Hu, rows=rows)
    zc = c.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, Hn)
    np.testing.assert_allclose(za, zc, rtol=1e-5, atol=1e-5)
    yb = y[b.nodes[b.graph_ptr[:-1]]]
    la = a.model_.train_batch(b.graph_ptr, b.indptr, b.indices, Hu, yb, 5, 1e-2, 0.0, rows=rows)
    lc = c.model_.train_batch(b.graph_ptr, b.indptr, b.indices, Hn, yb, 5, 1e-2, 0.0)
    assert abs(la - lc) <= 1e-5 * abs(lc)
    for n, v in a.state_dict().items():
        np.testing.assert_allclose(v, c.state_dict()[n], rtol=1e-4, atol=1e-6, err_msg=n)


def test_shared_rows_bad_input(data):
    cache, ei, y, tr, va, te = data
    g, b, keys, rows = _dup_batch(data)
    est = _fit(data, epochs=1)
    Hu = [cache.gather(l, keys) for l in est.layers_]
    with pytest.raises(ValueError, match="one state row per node"):
        est.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, Hu, rows=rows[:-1])
    bad = rows.copy()
    bad[3] = -1
    with pytest.raises(ValueError, match="outside"):
        est.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, Hu, rows=bad)
    with pytest.raises(ValueError, match="must have shape"):   # states sized for per-node rows
        est.model_.predict_batch(b.graph_ptr, b.indptr, b.indices, [H[rows] for H in Hu], rows=rows)


def test_bfloat16_learns_like_float32(data):
    """precision="bfloat16": same API, probabilities close to float32's at the
    same weights, and training reaches float32's accuracy on the planted
    partition; the option is validated and saved."""
    cache, ei, y, tr, va, te = data
    f = _fit(data)
    h = _fit(data, precision="bfloat16")
    assert h.get_params()["precision"] == "bfloat16"
    assert abs(h.score(te, y[te]) - f.score(te, y[te])) <= 0.03, (h.score(te, y[te]), f.score(te, y[te]))
    # the same weights in both precisions: close probabilities, not identical ones
    h2 = _fit(data, epochs=1, precision="bfloat16")
    h2.load_state_dict(f.state_dict())
    pf, ph = f.predict_proba(te), h2.predict_proba(te)
    assert not np.array_equal(pf, ph)
    assert np.abs(pf - ph).max() < 0.05
    assert np.mean(pf.argmax(1) == ph.argmax(1)) > 0.97


def test_bfloat16_save_load(data, tmp_path):
    cache, ei, y, tr, va, te = data
    h = _fit(data, epochs=2, precision="bfloat16")
    h.save(str(tmp_path / "m"))
    h2 = EngineClassifier.load(str(tmp_path / "m"))
    assert h2.precision == "bfloat16"
    g = Graph(ei, cache.num_nodes)
    np.testing.assert_array_equal(h.predict_proba(te), h2.predict_proba(te, cache=cache, graph=g))
    with pytest.raises(Exception, match="precision"):
        _fit(data, epochs=1, precision="float16")


def test_bfloat16_odd_state_width():
    """An odd state width pads the packed bf16 rows and panels: one training
    run and the probabilities stay close to float32's at the same weights."""
    cache, ei, y = sbm(n=300, dim=15, seed=3)
    idx = np.random.default_rng(2).permutation(len(y))
    data = (cache, ei, y, idx[:150], idx[150:200], idx[200:])
    f = _fit(data, epochs=3)
    h = _fit(data, epochs=1, precision="bfloat16")
    h.load_state_dict(f.state_dict())
    pf, ph = f.predict_proba(idx[200:]), h.predict_proba(idx[200:])
    assert 0 < np.abs(pf - ph).max() < 0.05
    h2 = _fit(data, epochs=3, precision="bfloat16")
    assert np.isfinite(h2.predict_proba(idx[200:])).all()


# ------------------------------------------------------ input_rank (reduced-input training)

def test_fold_first_linear_is_the_same_function():
    from engine_py._state_reduction import fold_first_linear

    rng = np.random.default_rng(3)
    Dd, r, kk = 20, 6, 5
    W, b = rng.normal(size=(kk, r)), rng.normal(size=kk)
    mu, s = rng.normal(size=Dd) * 3, rng.uniform(0.5, 4, size=Dd)
    P = np.linalg.qr(rng.normal(size=(Dd, r)))[0]
    h = rng.normal(size=(30, Dd)) * s + mu
    want = (((h - mu) / s) @ P) @ W.T + b
    Wf, bf = fold_first_linear(W, b, mu, s, P)
    assert Wf.shape == (kk, Dd) and bf.shape == (kk,) and Wf.dtype == np.float32
    np.testing.assert_allclose(h @ Wf.T.astype(np.float64) + bf, want, rtol=1e-5, atol=1e-5)


def test_state_basis_is_the_standardised_pca():
    from engine_py._state_reduction import fit_basis, reduce_states

    rng = np.random.default_rng(4)
    # 3 strong directions in 10 dims, one dimension 1000x wider than the others
    Z = rng.normal(size=(500, 3)) @ rng.normal(size=(3, 10)) + 0.01 * rng.normal(size=(500, 10))
    Z[:, 7] *= 1000.0
    Z[5, 2] = np.nan   # a bad row stays out of the statistics
    st = InMemoryStates({0: Z.astype(np.float32), 4: (2 * Z + 1).astype(np.float32)})
    b1 = fit_basis(st, [0, 4], 3, seed=1)
    b2 = fit_basis(st, [0, 4], 3, seed=1)
    assert b1.rank == 3 and b1.layers == [0, 4]
    for i in range(2):
        np.testing.assert_array_equal(b1.components[i], b2.components[i])   # deterministic
        assert np.all(np.isfinite(b1.components[i])) and np.all(np.isfinite(b1.mean[i]))
        np.testing.assert_allclose(b1.components[i].T @ b1.components[i], np.eye(3), atol=1e-10)
        assert b1.explained[i] > 0.999    # rank 3 data: 3 standardised directions hold it all
    # the standardisation: the wide dimension does not take a direction of its own
    good = np.isfinite(Z).all(1)
    X = (Z[good] - Z[good].mean(0)) / Z[good].std(0)
    w = np.linalg.eigvalsh(X.T @ X / len(X))[::-1]
    assert b1.explained[0] == pytest.approx(w[:3].sum() / w.sum(), rel=1e-9)
    R = reduce_states(st, b1)
    assert R.dim == 3 and R.num_nodes == 500 and sorted(R.layers) == [0, 4]
    want = ((Z[:8] - b1.mean[0]) / b1.scale[0]) @ b1.components[0]
    np.testing.assert_allclose(R.gather(0, np.arange(8))[good[:8]], want[good[:8]], rtol=1e-4, atol=1e-4)
    assert not np.isfinite(R.gather(0, [5])).all()   # the NaN row stays non-finite
    with pytest.raises(ValueError, match="input_rank must be in"):
        fit_basis(st, [0], 10, seed=0)


def test_input_rank_fold_keeps_the_trained_function(data):
    """fit's last step: the reduced model on reduced states and the folded
    full-width model on the full states give the same logits."""
    cache, ei, y, tr, va, te = data
    g = Graph(ei, cache.num_nodes)
    est = EngineClassifier(reduced_dim=16, hidden=16, input_rank=5, dropout=0.0, batch_size=64,
                           show_progress_bar=False)
    est._setup(cache, g, y, tr, va)
    basis, states = est._reduce_inputs(cache, False)
    assert states.dim == 5 and est.state_dict()["ladders.0.projector.0.weight"].shape == (16, 5)
    for s in range(3):   # a few steps so the weights are not the initial ones
        b = est._sample(g, tr[64 * s:64 * (s + 1)], s)
        keys, rows, Hs = est._gather_unique(states, b)
        est.model_.train_batch(b.graph_ptr, b.indptr, b.indices, Hs, y[tr[64 * s:64 * (s + 1)]], s, 1e-2,
                               5e-4, rows=rows)
    before = est._predict_logits(states, g, te, all_heads=True)
    est._fold_inputs(basis)
    w = est.state_dict()["ladders.0.projector.0.weight"]
    assert w.shape == (16, cache.dim) and np.linalg.matrix_rank(w.astype(np.float64), tol=1e-5) <= 5
    after = est._predict_logits(cache, g, te, all_heads=True)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())


def test_input_rank_fit_predict_save_load(data, tmp_path):
    cache, ei, y, tr, va, te = data
    g = Graph(ei, cache.num_nodes)
    est = _fit(data, epochs=15, input_rank=4)
    assert est.input_basis_ is not None and est.input_basis_.rank == 4
    assert est.in_dim_ == cache.dim and est.model_.param_table()   # the full-width model
    # the folded model scores the validation nodes as the reduced one did
    assert abs(est.score(va, y[va]) - est.best_val_acc_) <= 1.0 / len(va) + 1e-12
    assert est.score(te, y[te]) > 0.8
    assert "input_rank=4" in repr(est)
    path = str(tmp_path / "m")
    est.save(path)
    est2 = EngineClassifier.load(path)
    assert est2.input_rank == 4
    np.testing.assert_array_equal(est.predict_proba(te), est2.predict_proba(te, cache=cache, graph=g))
    # without input_rank the saved config does not name it (older engine_py reads it)
    plain = _fit(data, epochs=1)
    plain.save(str(tmp_path / "p"))
    assert "input_rank" not in open(os.path.join(tmp_path, "p", "config.json")).read()


def test_input_rank_at_or_above_the_width_changes_nothing(data):
    a = _fit(data, epochs=2)
    b = _fit(data, epochs=2, input_rank=16)   # the states are 16 wide
    assert b.input_basis_ is None
    sa, sb = a.state_dict(), b.state_dict()
    assert all(np.array_equal(sa[n], sb[n]) for n in sa)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "8", True])
def test_input_rank_bad_values(data, bad):
    from engine_py._validate import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="input_rank"):
        _fit(data, epochs=1, input_rank=bad)


def test_input_rank_interrupted_fit_leaves_a_full_width_model(data, monkeypatch):
    cache, ei, y, tr, va, te = data
    g = Graph(ei, cache.num_nodes)
    est = EngineClassifier(reduced_dim=16, hidden=16, input_rank=4, epochs=3, batch_size=64,
                           show_progress_bar=False)

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(EngineClassifier, "_predict_logits", stop)   # Ctrl-C after epoch 0's steps
    with pytest.raises(KeyboardInterrupt):
        est.fit(cache, g, y, tr, va)
    monkeypatch.undo()
    assert est.state_dict()["ladders.0.projector.0.weight"].shape == (16, cache.dim)
    assert est.predict_proba(te, cache=cache, graph=g).shape == (len(te), 3)


def test_input_rank_names_a_nan_node_of_the_given_cache(data):
    cache, ei, y, tr, va, te = data
    bad_node = int(tr[0])
    st = {l: cache.gather(l, np.arange(cache.num_nodes)).copy() for l in cache.layers}
    st[1][bad_node, 3] = np.nan
    est = EngineClassifier(reduced_dim=16, hidden=16, input_rank=4, epochs=1, batch_size=64,
                           show_progress_bar=False)
    with pytest.raises(ValueError, match=rf"layer-1 states of node {bad_node} contain NaN.*InMemoryStates"):
        est.fit(InMemoryStates(st), Graph(ei, cache.num_nodes), y, tr, va)
