"""GMoE router collapse (docs/ALGORITHMS.md, "GMoE router collapse: cause and
fix") on a small deterministic problem: notebook 04's training loop
(engine_py.bench.gmoe_collapse.train) on seeded synthetic texts and a random
FFN (H 64, I 256; 600 training texts, 15 epochs of 19 batches). The reference
graph router puts every text on a few experts; graph_readout="per_expert"
with normal_running_decay=0.5 keeps every expert's share of the routed slots
>= 1/(4N). The options' gradients are checked against autograd in
test_gmoe.py (test_parity_collapse_options)."""
import numpy as np
import pytest

import engine_py

from engine_py.bench import gmoe_collapse as gc
from engine_py.gmoe import MoELoRAFFN

CRIT = 1.0 / (4 * gc.N_EXPERTS)
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def data():
    return gc.synthetic_data(H=64, I=256)


@pytest.fixture(autouse=True)
def one_thread():
    # 19 batches of 32 texts per epoch: too small to split; more threads only wait
    old = engine_py.get_num_threads()
    engine_py.set_num_threads(1)
    yield
    engine_py.set_num_threads(old)


def test_reference_router_is_rank_one_and_collapses(data):
    for seed in SEEDS:
        r = gc.train(data, seed=seed)
        # logits depend on the token through one number (token node ~500x the experts')
        assert r["rank1_init"] > 0.999 and r["token_expert_ratio"] > 100, r["rank1_init"]
        assert r["min_share"] < CRIT and r["used"] < gc.N_EXPERTS, (seed, r["load_final"])


def test_per_expert_readout_with_decay_keeps_every_expert(data):
    opts = {"graph_readout": "per_expert", "normal_running_decay": 0.5}
    for seed in SEEDS:
        r = gc.train(data, seed=seed, options=opts)
        assert r["rank1_init"] < 0.6, r["rank1_init"]
        assert r["min_share"] >= CRIT, (seed, r["load_final"])
        assert r["accuracy"] > 0.9


def test_structurally_equivalent_experts_share_a_logit_line():
    # With the shared readout and a dominant token node, logit_e ~ m_e + b_e s(x)
    # with b_e fixed by the graph: experts with the same closed neighbourhood have
    # parallel lines, so their order is the same for every token. The per-expert
    # readout gives each expert its own direction.
    rng = np.random.default_rng(0)
    H = 32
    base = {"Wi": rng.normal(0, 0.1, (64, H)), "bi": np.zeros(64),
            "Wo": rng.normal(0, 0.1, (H, 64)), "bo": np.zeros(H)}
    x = (rng.normal(0, 1, H) + rng.normal(0, 0.5, (200, H))).astype(np.float32)
    for readout in ("shared", "per_expert"):
        layer = MoELoRAFFN(base, kind="gelu", router="graph", num_experts=8, top_k=2,
                           gcn_dim=32, seed=0, graph_readout=readout)
        rows = [tuple(r) for r in layer.adjacency[:-1, :-1]]
        twins = [(a, b) for a in range(8) for b in range(a + 1, 8) if rows[a] == rows[b]]
        assert twins
        L = gc.router_logits(layer, x).astype(np.float64)
        order_fixed = [bool(np.all(L[:, a] >= L[:, b]) or np.all(L[:, a] <= L[:, b]))
                       for a, b in twins]
        if readout == "shared":
            assert all(order_fixed) and gc.rank1_share(L) > 0.999
        else:
            assert not all(order_fixed) and gc.rank1_share(L) < 0.9


def test_bench_prints_the_table(capsys):
    assert gc.main(["--data", "synthetic", "--seeds", "0", "--epochs", "1", "--no-progress",
                    "--variants", "reference;per-expert readout, decay 0.5"]) == 0
    out = capsys.readouterr().out
    assert "| reference |" in out and "| per-expert readout, decay 0.5 |" in out
    assert "largest group of experts with the same neighbourhood" in out
    with pytest.raises(SystemExit):
        gc.main(["--data", "synthetic", "--variants", "no such variant"])
