"""Dynamic early exit: the C exit rule (with the reference's defect as a
counter-example), cached mode, live mode for new nodes and transductive live
mode on a tiny random BERT, and bad input."""
import numpy as np
import pytest

import engine_py

from engine_py import EngineClassifier, Encoder, Graph
from engine_py.early_exit import ExitPolicy, exit_decide
from engine_py.engine import InMemoryStates

from test_encoder import _texts, make_tiny


def defective_rule(head_logits):
    """The reference implementation's rule, transcribed with its defect:
    mask = (cur == last) == not_visited."""
    k, n, _ = head_logits.shape
    probs = np.exp(head_logits - head_logits.max(2, keepdims=True))
    probs /= probs.sum(2, keepdims=True)
    out = np.zeros_like(probs[0])
    not_visited = np.ones(n, bool)
    last = None
    for i in range(k):
        cur = probs[i].argmax(1)
        if last is not None:
            mask = (cur == last) == not_visited
            out[mask] = probs[i][mask]
            not_visited[mask] = False
        last = cur
    out[not_visited] = probs[-1][not_visited]
    return out


def _logits_from(seq, C=3):
    seq = np.asarray(seq)            # (n, K) argmax classes
    n, k = seq.shape
    z = np.zeros((k, n, C), np.float32)
    for t in range(n):
        for i in range(k):
            z[i, t, seq[t, i]] = 1.0 + 0.3 * i
    return z


def test_exit_rule_and_reference_defect():
    seq = [[0, 0, 1, 1], [0, 1, 1, 1], [2, 0, 1, 2], [1, 1, 1, 0], [2, 2, 2, 2]]
    z = _logits_from(seq)
    probs, at = exit_decide(z, patience=1)
    assert at.tolist() == [1, 2, 3, 1, 1]
    # output is the head it exited at, frozen afterwards
    np.testing.assert_array_equal(probs.argmax(1), [0, 1, 2, 1, 2])
    ref = defective_rule(z)
    # the defect re-selects targets 0 and 3 when their later heads disagree
    assert ref.argmax(1).tolist() == [1, 1, 2, 0, 2]
    assert (ref.argmax(1) != probs.argmax(1)).sum() == 2
    _, at2 = exit_decide(z, patience=2)
    assert at2.tolist() == [3, 3, 3, 2, 2]
    # threshold: the confident first head of target 4 exits at once
    z2 = z.copy()
    z2[0, 4] = [0, 0, 9]
    _, at3 = exit_decide(z2, patience=3, threshold=0.99)
    assert at3[4] == 0 and at3[0] == 3


def test_random_agreement_with_a_numpy_rule():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(5, 300, 3)).astype(np.float32)
    for p in (1, 2, 3):
        _, at = exit_decide(z, patience=p)
        pred = z.argmax(2)
        want = np.full(300, 4)
        for t in range(300):
            streak = 0
            for i in range(1, 5):
                streak = streak + 1 if pred[i, t] == pred[i - 1, t] else 0
                if streak >= p:
                    want[t] = i
                    break
        np.testing.assert_array_equal(at, want)


def test_policy_refuses_exited_targets():
    pol = ExitPolicy(2, 3, patience=1)
    z = _logits_from([[0, 0, 1], [0, 1, 1]])
    assert pol.step(0, False, [0, 1], z[0]).tolist() == [True, True]
    assert pol.step(1, False, [0, 1], z[1]).tolist() == [False, True]
    frozen = pol.probs[0].copy()
    with pytest.raises(RuntimeError, match="frozen"):
        pol.step(2, True, [0, 1], z[2])
    np.testing.assert_array_equal(pol.probs[0], frozen)
    with pytest.raises(ValueError):
        ExitPolicy(2, 3, patience=0)
    with pytest.raises(ValueError):
        ExitPolicy(2, 3, threshold=1.5)


# ----------------------------------------------------------- model tests

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    # tiny problems: one thread (OpenMP on a loaded 2-core machine costs ~1000x here)
    saved = engine_py.get_num_threads()
    engine_py.set_num_threads(1)
    path = tmp_path_factory.mktemp("tiny_exit")
    make_tiny(str(path), layers=4, seed=3)
    enc = Encoder.from_pretrained(str(path))
    n = 120
    texts = _texts(5, n, False)
    rng = np.random.default_rng(1)
    src = rng.integers(0, n, 300)
    dst = rng.integers(0, n, 300)
    keep = src != dst
    ei = np.stack([src[keep], dst[keep]])
    graph = Graph(ei, num_nodes=n)
    states = enc.encode_layers(texts, layers=[0, 2, 3, 4])
    cache = InMemoryStates(states, layers=[0, 2, 3, 4])
    # labels from the text so that they are learnable
    labels = (states[-1][:, 0] > np.median(states[-1][:, 0])).astype(np.int64)
    clf = EngineClassifier(reduced_dim=8, hidden=8, epochs=15, batch_size=32, lr=1e-2, seed=0,
                           show_progress_bar=False)
    clf.fit(cache, graph, labels, np.arange(80), np.arange(80, 100))
    yield dict(enc=enc, texts=texts, graph=graph, cache=cache, clf=clf, n=n, ei=ei, labels=labels)
    engine_py.set_num_threads(saved)


def test_cached_dynamic_matches_rule_on_all_heads(setup):
    clf, cache, graph = setup["clf"], setup["cache"], setup["graph"]
    ids = np.arange(100, 120)
    heads = clf.predict_logits(ids, cache=cache, graph=graph, all_heads=True)
    for p, thr in ((1, None), (2, None), (1, 0.8)):
        want_p, want_at = exit_decide(heads, patience=p, threshold=thr)
        pred, layer = clf.predict(ids, cache=cache, graph=graph, exit="dynamic", patience=p,
                                  threshold=thr, return_exit_layer=True)
        np.testing.assert_array_equal(layer, np.asarray(clf.layers_)[want_at])
        np.testing.assert_array_equal(pred, want_p.argmax(1))
    full = clf.predict(ids, cache=cache, graph=graph)
    pred, layer = clf.predict(ids, cache=cache, graph=graph, exit="none", return_exit_layer=True)
    np.testing.assert_array_equal(pred, full)
    assert (layer == clf.layers_[-1]).all()


def test_live_new_nodes_agree_with_cached(setup):
    """Hold out nodes whose only links are to known nodes: predicting them as
    new nodes (texts encoded live, neighbours from the cache) with exit='none'
    equals the cached prediction, and dynamic agrees with the cached dynamic."""
    clf, cache, graph, texts, enc, n = (setup[k] for k in ("clf", "cache", "graph", "texts", "enc", "n"))
    ids = np.arange(100, 120)
    indptr, indices = graph.indptr, graph.indices
    nbrs = [indices[indptr[v]:indptr[v + 1]] for v in ids]
    # the held-out nodes keep their edges to each other in the cached graph;
    # use only targets none of whose neighbours is another held-out node
    ok = np.array([not np.isin(nb, ids).any() for nb in nbrs])
    ids = ids[ok]
    nbrs = [nb for nb, o in zip(nbrs, ok) if o]
    assert len(ids) >= 5
    # the graph the new nodes join: the held-out nodes' edges removed
    ei = setup["ei"]
    keep = ~(np.isin(ei[0], ids) | np.isin(ei[1], ids))
    g2 = Graph(ei[:, keep], num_nodes=n)
    heads = clf.predict_logits(ids, cache=cache, graph=graph, all_heads=True)
    ref = heads[-1].argmax(1)
    new_texts = [texts[v] for v in ids]
    for bs in (1, 4, 64):
        pred, layer = clf.predict_new(enc, new_texts, nbrs, cache, graph=g2, exit="none",
                                      batch_size=bs, return_exit_layer=True)
        np.testing.assert_array_equal(pred, ref)
        assert (layer == clf.layers_[-1]).all()
    for p in (1, 2):
        want_p, want_at = exit_decide(heads, patience=p)
        pred, layer = clf.predict_new(enc, new_texts, nbrs, cache, graph=g2, exit="dynamic",
                                      patience=p, batch_size=4, return_exit_layer=True)
        np.testing.assert_array_equal(layer, np.asarray(clf.layers_)[want_at])
        np.testing.assert_array_equal(pred, want_p.argmax(1))
    # the encoder really stops: fewer sequence-layers than full depth
    clf.predict_new(enc, new_texts, nbrs, cache, graph=g2, exit="none")
    full_layers = clf.last_encoder_layers_
    assert full_layers == len(ids) * clf.layers_[-1]
    clf.predict_new(enc, new_texts, nbrs, cache, graph=g2, exit="dynamic", patience=1)
    want = sum(int(l) for l in np.asarray(clf.layers_)[exit_decide(heads, patience=1)[1]])
    assert clf.last_encoder_layers_ == want


def test_transductive_live_agrees_with_cached(setup):
    clf, cache, graph, texts, enc = (setup[k] for k in ("clf", "cache", "graph", "texts", "enc"))
    ids = np.arange(90, 120)
    full = clf.predict(ids, cache=cache, graph=graph)
    live = clf.predict(ids, graph=graph, encoder=enc, texts=texts, exit="none")
    np.testing.assert_array_equal(live, full)
    for p in (1, 2):
        a, la = clf.predict(ids, cache=cache, graph=graph, exit="dynamic", patience=p, return_exit_layer=True)
        b, lb = clf.predict(ids, graph=graph, encoder=enc, texts=texts, exit="dynamic", patience=p,
                            return_exit_layer=True)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(la, lb)


def test_bad_input(setup, tmp_path):
    clf, cache, graph, texts, enc, n = (setup[k] for k in ("clf", "cache", "graph", "texts", "enc", "n"))
    with pytest.raises(ValueError, match="outside"):
        clf.predict_new(enc, ["a b"], [[0, n + 5]], cache, graph=graph)
    with pytest.raises(ValueError, match="neighbour lists"):
        clf.predict_new(enc, ["a b", "c"], [[0]], cache, graph=graph)
    with pytest.raises(ValueError, match="exit"):
        clf.predict([0], cache=cache, graph=graph, exit="sometimes")
    with pytest.raises(ValueError, match="patience"):
        clf.predict([0], cache=cache, graph=graph, exit="dynamic", patience=0)
    with pytest.raises(ValueError, match="both"):
        clf.predict([0], graph=graph, encoder=enc)

    class FakeCache(InMemoryStates):
        fingerprint = "0" * 64

    fake = FakeCache({l: cache.gather(l, np.arange(n)) for l in cache.layers})
    with pytest.raises(ValueError, match="fingerprint"):
        clf.predict_new(enc, ["a b"], [[0]], fake, graph=graph)
    other = tmp_path / "other"
    make_tiny(str(other), layers=4, seed=9)
    fake.fingerprint = Encoder.from_pretrained(str(other)).fingerprint()
    with pytest.raises(ValueError, match="fingerprint"):
        clf.predict_new(enc, ["a b"], [[0]], fake, graph=graph)
    fake.fingerprint = enc.fingerprint()
    assert clf.predict_new(enc, ["a b"], [[0, 1]], fake, graph=graph).shape == (1,)
    # a new node without links is a one-node subgraph
    assert clf.predict_new(enc, ["a b"], [[]], cache, graph=graph).shape == (1,)


def test_exit_histogram():
    import matplotlib
    matplotlib.use("Agg")
    from engine_py.plot import exit_histogram
    ax = exit_histogram([np.array([1, 1, 2, 6]), np.array([2, 6, 6])], [0, 1, 2, 6], label=["a", "b"])
    heights = [p.get_height() for p in ax.patches]
    assert heights == [0, 2, 1, 1, 0, 0, 1, 2]
    with pytest.raises(ValueError, match="not one of"):
        exit_histogram(np.array([3]), [0, 1, 2])


def test_real_layer_cache_fingerprint(setup, tmp_path):
    """predict_new against a LayerCache file: the encoder that built it is
    accepted (and agrees with the in-memory states), another one is refused."""
    from engine_py import LayerCache
    clf, enc, texts, graph = (setup[k] for k in ("clf", "enc", "texts", "graph"))
    lc = LayerCache.build(str(tmp_path / "c.cache"), enc, texts, layers=[0, 2, 3, 4], dtype="float32",
                          show_progress_bar=False)
    nb = [np.array([1, 2, 3]), np.array([5])]
    new = ["graph node text", "debian package"]
    a = clf.predict_new(enc, new, nb, lc, graph=graph, exit="none")
    b = clf.predict_new(enc, new, nb, setup["cache"], graph=graph, exit="none")
    np.testing.assert_array_equal(a, b)
    other = tmp_path / "other"
    make_tiny(str(other), layers=4, seed=11)
    with pytest.raises(ValueError, match="fingerprint"):
        clf.predict_new(Encoder.from_pretrained(str(other)), ["x"], [[0]], lc, graph=graph)
    lc.close()
