"""The demo's pieces and the exit-policy default it rests on: patience=None
(threshold only), the defaults of predict / predict_new / ExitPolicy /
exit_decide, demo_layers, demo_subgraph, the verdict sentence, and the
demo-study's policy helper. Fast: no encoder, no training."""
import inspect

import numpy as np
import pytest

from engine_py import EngineClassifier
from engine_py.bench import demo_study
from engine_py.demo import _verdict, demo_layers, demo_subgraph
from engine_py.early_exit import ExitPolicy, exit_decide


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_patience_none_is_the_threshold_rule_alone():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(4, 300, 5)) * 3).astype(np.float32)
    p = _softmax(z.astype(np.float64)).max(-1)               # (K, n) top probabilities
    for t in (0.6, 0.9, 0.99):
        _, at = exit_decide(z, patience=None, threshold=t)
        conf = p >= t
        conf[-1] = True                                       # the last ladder always ends a node
        np.testing.assert_array_equal(at, conf.argmax(0))
    # neither rule: every node runs to the last ladder
    _, at = exit_decide(z, patience=None, threshold=None)
    assert (at == 3).all()
    # patience 1 with the threshold on is the OR of both rules
    _, at_or = exit_decide(z, patience=1, threshold=0.9)
    _, at_p = exit_decide(z, patience=1, threshold=None)
    _, at_t = exit_decide(z, patience=None, threshold=0.9)
    np.testing.assert_array_equal(at_or, np.minimum(at_p, at_t))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1"])
def test_patience_still_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="patience"):
        ExitPolicy(2, 3, patience=bad)


def test_exit_defaults_are_threshold_099_without_agreement_rule():
    for fn in (EngineClassifier.predict, EngineClassifier.predict_new, ExitPolicy.__init__, exit_decide):
        sig = inspect.signature(fn).parameters
        assert sig["patience"].default is None, fn
        assert sig["threshold"].default == "auto", fn
    assert ExitPolicy(3, 2).threshold == pytest.approx(0.99)
    # a patience alone is the paper's rule: "auto" then means no threshold
    assert ExitPolicy(3, 2, patience=1).threshold < 0
    assert ExitPolicy(3, 2, patience=1, threshold=0.9).threshold == pytest.approx(0.9)
    rng = np.random.default_rng(3)
    z = (rng.normal(size=(4, 200, 5)) * 4).astype(np.float32)
    np.testing.assert_array_equal(exit_decide(z)[1], exit_decide(z, patience=None, threshold=0.99)[1])
    np.testing.assert_array_equal(exit_decide(z, patience=1)[1],
                                  exit_decide(z, patience=1, threshold=None)[1])
    with pytest.raises(ValueError, match="auto"):
        exit_decide(z, threshold="high")


def test_demo_layers_every_second_including_0_and_last():
    assert demo_layers(6) == [0, 2, 4, 6]
    assert demo_layers(5) == [0, 2, 4, 5]
    assert demo_layers(32)[-1] == 32 and demo_layers(32)[0] == 0


def test_demo_subgraph_keeps_edges_and_splits():
    s = demo_subgraph(400, seed=1)
    assert s.num_nodes == 400
    s.validate()
    # breadth-first: far more edges per node than a uniform 10% sample keeps
    assert 2 * s.num_edges / s.num_nodes > 2.0
    assert len(s.train_idx) and len(s.val_idx) and len(s.test_idx)
    assert demo_subgraph(400, seed=1).texts == s.texts      # deterministic


def test_verdict_says_noise_win_or_loss():
    within = _verdict({"ENGINE": [0.89, 0.885, 0.892], "SAGE": [0.884, 0.886, 0.88],
                       "MLP": [0.81, 0.815, 0.812]}, 4000, 800, 0.002, 1.8)
    assert "within noise of ENGINE" in within and "1.8x faster" in within
    win = _verdict({"ENGINE": [0.95, 0.951, 0.949], "SAGE": [0.88, 0.881, 0.879],
                    "MLP": [0.8, 0.8, 0.8]}, 4000, 800, 0.002, 1.8)
    assert win.startswith("ENGINE beats SAGE")
    loss = _verdict({"ENGINE": [0.85, 0.851, 0.849], "SAGE": [0.90, 0.901, 0.899],
                     "MLP": [0.8, 0.8, 0.8]}, 4000, 800, 0.002, 1.8)
    assert loss.startswith("SAGE on the last layer beats ENGINE")


def test_demo_study_policy_helper_and_list(capsys):
    rng = np.random.default_rng(2)
    z = (rng.normal(size=(4, 50, 3)) * 2).astype(np.float32)
    pred, at = demo_study.apply_policy(z, 1, None, 2)          # ladders 0 and 1 may not exit
    assert (at >= 2).all()
    probs, at2 = exit_decide(z, patience=1, threshold=None, has_head=np.array([0, 0, 1, 1], np.uint8))
    np.testing.assert_array_equal(at, at2)
    np.testing.assert_array_equal(pred, probs.argmax(1))
    assert demo_study.main(["--list"]) == 0
    assert "E4 k64 ln" in capsys.readouterr().out


def test_demo_threads_argument_takes_a_count_or_auto():
    import argparse

    from engine_py.demo import _thread_count

    assert _thread_count("auto") == "auto" and _thread_count("2") == 2
    for bad in ("0", "-1", "two", "2.5", "Auto"):
        with pytest.raises(argparse.ArgumentTypeError, match='positive integer or "auto"'):
            _thread_count(bad)
