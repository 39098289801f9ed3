"""Layer selection as ENGINE does it: engine_py.cache.select_layers / parse_layers,
LayerCache.build(layers="every:K" | "engine" | ...) and EngineClassifier(layers=<str>)."""
from __future__ import annotations

import numpy as np
import pytest

from engine_py import EngineClassifier, Graph, InMemoryStates, LayerCache, select_layers
from engine_py.cache import ENGINE_LADDERS, parse_layers
from engine_py.demo import demo_layers
from test_cache import FakeEncoder, texts_of


def test_select_layers_reproduces_the_paper_and_spaces_evenly():
    # the reference selection for 32-layer Llama-2-7B (docs/ALGORITHMS.md A.1)
    assert select_layers(32, 5) == [0, 5, 10, 15, 20, 25, 32]
    assert select_layers(32) == [0, 5, 10, 15, 20, 25, 32]          # the default is the paper's
    assert select_layers(30) == [0, 5, 10, 15, 20, 25, 30]          # SmolLM2-135M
    assert select_layers(24) == [0, 4, 8, 12, 16, 20, 24]           # Qwen2.5-0.5B
    assert select_layers(6) == [0, 1, 2, 3, 4, 5, 6]                # MiniLM-L6: every layer
    assert select_layers(6, 2) == [0, 2, 4, 6] == demo_layers(6)
    assert select_layers(5, 2) == [0, 2, 4, 5] == demo_layers(5)
    assert select_layers(31, 5) == [0, 5, 10, 15, 20, 25, 31]       # 30 is within every/2 of 31
    assert select_layers(33, 5) == [0, 5, 10, 15, 20, 25, 30, 33]   # 3 >= 2.5: both kept
    assert select_layers(1) == [0, 1] and select_layers(4, 10) == [0, 4]
    for L in range(1, 80):
        for k in (None, 1, 2, 3, 4, 5, 7, 8, 16):
            s = select_layers(L, k)
            kk = k if k is not None else max(1, round(L / (ENGINE_LADDERS - 1)))
            assert s[0] == 0 and s[-1] == L and s == sorted(set(s))
            gaps = np.diff(s)
            assert (gaps[:-1] == kk).all() and kk / 2 <= gaps[-1] < 1.5 * kk or len(s) == 2
        assert abs(len(select_layers(L)) - ENGINE_LADDERS) <= 2 or L < 6


def test_select_layers_bad_arguments():
    for bad in (0, -1, 2.5, True, "6"):
        with pytest.raises((ValueError, TypeError)):
            select_layers(bad)
    for bad in (0, -2, 1.5):
        with pytest.raises((ValueError, TypeError)):
            select_layers(6, bad)


def test_parse_layers():
    assert parse_layers(None, 4) == parse_layers("all", 4) == [0, 1, 2, 3, 4]
    assert parse_layers("engine", 30) == select_layers(30)
    assert parse_layers("every:4", 24) == [0, 4, 8, 12, 16, 20, 24]
    assert parse_layers(" Every:3 ", 6) == [0, 3, 6]
    assert parse_layers("last", 6) == [6]
    assert parse_layers(3, 6) == [3] and parse_layers([6, 0], 6) == [6, 0]
    for bad, msg in (("every:0", "positive integer"), ("every:x", "positive integer"),
                     ("every:", "positive integer"), ("first", "not a layer selection"),
                     ([], "empty"), ([0, 0], "duplicate"), ([7], "out of range")):
        with pytest.raises(ValueError, match=msg):
            parse_layers(bad, 6)


def test_layer_cache_build_with_a_selection(tmp_path):
    enc = FakeEncoder(num_layers=12, hidden_size=8)
    texts = texts_of(40)
    c = LayerCache.build(tmp_path / "a.egc", enc, texts, layers="every:4", dtype="float32")
    assert c.layers == [0, 4, 8, 12]
    np.testing.assert_array_equal(c.layer(8), enc.encode_layers(texts, layers=[8])[0])
    c.close()
    # the same selection given as a list resumes/reuses the same file
    c = LayerCache.build(tmp_path / "a.egc", enc, texts, layers=[0, 4, 8, 12], dtype="float32")
    assert c.complete and c.layers == [0, 4, 8, 12]
    c.close()
    c = LayerCache.build(tmp_path / "b.egc", enc, texts, layers="engine", dtype="float16")
    assert c.layers == select_layers(12) == [0, 2, 4, 6, 8, 10, 12]
    c.close()
    with pytest.raises(ValueError, match="every:K"):
        LayerCache.build(tmp_path / "c.egc", enc, texts, layers="every:-1")


def test_engine_classifier_layer_selection_string():
    rng = np.random.default_rng(0)
    n, d = 60, 8
    states = InMemoryStates({l: rng.standard_normal((n, d)).astype(np.float32) for l in (0, 2, 4, 6, 8)})
    y = np.arange(n) % 2
    g = Graph(np.stack([np.arange(n - 1), np.arange(1, n)]), n)
    clf = EngineClassifier(layers="every:4", epochs=1, reduced_dim=4, hidden=4, show_progress_bar=False)
    clf.fit(states, g, y, np.arange(40), np.arange(40, 50))
    assert clf.layers_ == [0, 4, 8]
    assert EngineClassifier(layers="last", epochs=1, reduced_dim=4, show_progress_bar=False).fit(
        states, g, y, np.arange(40)).layers_ == [8]
    with pytest.raises(ValueError, match=r"layers \[3, 6\] are not in the cache|not in the cache"):
        EngineClassifier(layers="every:3", epochs=1, show_progress_bar=False).fit(states, g, y, np.arange(40))
    with pytest.raises(ValueError, match="not a layer selection"):
        EngineClassifier(layers="sometimes", epochs=1).fit(states, g, y, np.arange(40))
