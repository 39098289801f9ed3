"""Dynamic early exit with a decoder LLM run live (tiny random Llama / Qwen2
GGUF fixtures from tests/llm_fixtures.py): predict_new runs the decoder layer
by layer, drops exited nodes from the encoder batch, and a node that exits at
layer L never has a layer above L computed. The layer steps are counted by
wrapping the C state the live path drives (engine_py._core.BertState), so the
count comes from the calls that really ran, not from the code's own tally."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")

import llm_fixtures as F  # noqa: E402

import engine_py  # noqa: E402
from engine_py import EngineClassifier, Encoder, Graph  # noqa: E402
from engine_py.early_exit import exit_decide, time_per_exit_layer  # noqa: E402
from engine_py.engine import InMemoryStates  # noqa: E402

WORDS = [["fox", "dog", "cat", "bird"], ["graph", "edges", "messages", "nodes"],
         ["python3", "perl", "libc6", "coreutils"]]


def _graph_data(n=90, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    texts = [" ".join(rng.choice(WORDS[c], size=int(rng.integers(3, 9)))) + f" {i}"
             for i, c in enumerate(y)]
    src, dst = [], []
    for v in range(n):
        for u in rng.choice(np.flatnonzero(y == y[v]), size=2):
            if u != v:
                src += [v, u]
                dst += [u, v]
    return texts, y, np.array([src, dst], np.int64)


class CountingState:
    """Wraps the C BertState and records which sequences each layer step ran on."""
    log = []   # one dict per state created: {"n": sequences, "steps": [(held ids, from, to)]}

    def __init__(self, model, pooling="mean"):
        self._s = CountingState.real(model, pooling)
        self._rec = {"n": 0, "steps": []}
        CountingState.log.append(self._rec)

    def embed(self, tokens, offsets):
        self._rec["n"] = len(offsets) - 1
        self._held = np.arange(len(offsets) - 1)
        return self._s.embed(tokens, offsets)

    def compact(self, pos):
        self._held = self._held[np.asarray(pos)]
        return self._s.compact(pos)

    def run_layers(self, to):
        frm = self._s.layer
        out = self._s.run_layers(to)
        assert self._s.n_seq == len(self._held)   # the C state holds exactly these sequences
        if to > frm:
            self._rec["steps"].append((self._held.copy(), frm, to))
        return out

    def __getattr__(self, name):
        return getattr(self._s, name)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def setup(request, tmp_path_factory):
    tiny = F.write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param,
                            gguf_types=("F32",), layers=6, hidden=64, intermediate=96)
    pooling = "mean" if request.param == "llama" else "last"
    enc = Encoder.from_pretrained(tiny.gguf["F32"], pooling=pooling)
    texts, y, ei = _graph_data()
    n = len(texts)
    layers = list(range(enc.num_layers + 1))
    cache = InMemoryStates(enc.encode_layers(texts, layers=layers), layers)
    graph = Graph(ei, num_nodes=n)
    clf = EngineClassifier(layers="every:2", epochs=15, reduced_dim=16, hidden=16, lr=3e-3,
                           seed=0, show_progress_bar=False)
    clf.fit(cache, graph, y, np.arange(0, 60), np.arange(60, 70))
    assert clf.layers_ == [0, 2, 4, 6]
    # held-out nodes 70..89 join as new nodes, linked only to known nodes 0..69
    ids = np.arange(70, n)
    keep = ~(np.isin(ei[0], ids) | np.isin(ei[1], ids))
    g2 = Graph(ei[:, keep], num_nodes=n)
    nbrs = [np.unique(ei[1][(ei[0] == v) & ~np.isin(ei[1], ids)]) for v in ids]
    # the graph in which the cached prediction of a held-out node sees what
    # predict_new sees: its links to known nodes, none to other held-out nodes
    both = np.isin(ei[0], ids) & np.isin(ei[1], ids)
    g_ref = Graph(ei[:, ~both], num_nodes=n)
    return dict(enc=enc, clf=clf, cache=cache, graph=graph, g2=g2, g_ref=g_ref, ids=ids, nbrs=nbrs,
                texts=texts)


def _run_counted(monkeypatch, clf, *args, **kw):
    monkeypatch.setattr(CountingState, "real", engine_py._core.BertState, raising=False)
    monkeypatch.setattr(engine_py._core, "BertState", CountingState)
    CountingState.log = []
    out = clf.predict_new(*args, **kw)
    monkeypatch.undo()
    return out, CountingState.log


def _max_layer_per_node(log, batch_size, m):
    """Highest decoder layer computed for each new node (batches of predict_new
    are consecutive new-node ranges; each subgraph holds one new node, its target)."""
    top = np.zeros(m, np.int64)
    steps = np.zeros(m, np.int64)
    for b, rec in enumerate(log):
        base = b * batch_size
        assert rec["n"] == min(batch_size, m - base)
        for held, frm, to in rec["steps"]:
            top[base + held] = np.maximum(top[base + held], to)
            steps[base + held] += to - frm
    return top, steps


@pytest.mark.parametrize("patience", [1, 2])
def test_live_decoder_exit_stops_each_node_at_its_exit_layer(setup, monkeypatch, patience):
    enc, clf, cache, g2, ids, nbrs, texts = (setup[k] for k in ("enc", "clf", "cache", "g2", "ids", "nbrs", "texts"))
    new = [texts[v] for v in ids]
    bs = 8
    (pred, layer), log = _run_counted(monkeypatch, clf, enc, new, nbrs, cache, graph=g2,
                                      exit="dynamic", patience=patience, batch_size=bs,
                                      return_exit_layer=True)
    assert len(log) == -(-len(ids) // bs)          # one live decoder batch per predict_new batch
    top, steps = _max_layer_per_node(log, bs, len(ids))
    # a node that exits at layer L had exactly layers 1..L computed, none above
    np.testing.assert_array_equal(top, layer)
    np.testing.assert_array_equal(steps, layer)
    assert clf.last_encoder_layers_ == int(layer.sum())
    # the test means something only if nodes exit at different layers, some early
    assert len(set(layer.tolist())) >= 2 and layer.min() < clf.layers_[-1]
    # exited nodes are gone from the batch: later steps run on fewer sequences
    assert any(len(h) < rec["n"] for rec in log for h, _, _ in rec["steps"])
    # and the decisions are those of the exit rule on the cached heads
    heads = clf.predict_logits(ids, cache=cache, graph=setup["g_ref"], all_heads=True)
    want_p, want_at = exit_decide(heads, patience=patience)
    np.testing.assert_array_equal(layer, np.asarray(clf.layers_)[want_at])
    np.testing.assert_array_equal(pred, want_p.argmax(1))


def test_live_decoder_full_depth_baseline(setup, monkeypatch):
    enc, clf, cache, g2, ids, nbrs, texts = (setup[k] for k in ("enc", "clf", "cache", "g2", "ids", "nbrs", "texts"))
    new = [texts[v] for v in ids]
    (pred, layer), log = _run_counted(monkeypatch, clf, enc, new, nbrs, cache, graph=g2, exit="none",
                                      batch_size=8, return_exit_layer=True)
    top, steps = _max_layer_per_node(log, 8, len(ids))
    assert (top == 6).all() and (steps == 6).all() and (layer == 6).all()
    # the live decoder's states equal the cached ones: same predictions as from the cache
    ref = clf.predict_logits(ids, cache=cache, graph=setup["g_ref"])
    np.testing.assert_array_equal(pred, ref.argmax(1))


def test_time_per_exit_layer(setup):
    enc, texts = setup["enc"], setup["texts"]
    r = time_per_exit_layer(enc, texts[:16], [0, 2, 4, 6], batch_size=8)
    assert r["layers"] == [0, 2, 4, 6] and r["num_nodes"] == 16
    assert r["sequence_layers"] == [0, 2, 4, 6]     # per node: exactly the layers up to the stop
    assert all(s > 0 for s in r["seconds_per_node"]) and np.isfinite(r["slope"])
    with pytest.raises(ValueError, match="increasing"):
        time_per_exit_layer(enc, texts[:4], [4, 2])
    with pytest.raises(ValueError, match="increasing"):
        time_per_exit_layer(enc, texts[:4], [0, 7])
    with pytest.raises(ValueError, match="empty"):
        time_per_exit_layer(enc, [], [0, 2])
