"""Trainer(method="gmoe" | "mixlora"): a mixture of LoRA experts in every
decoder MLP. Behaviour tests (the loss/gradient parity with PyTorch is in
test_finetune_gmoe_grad.py, the C whole-model gradient checks in
csrc/tests/test_llama_train.c): initialisation as engine_py.gmoe.MoELoRAFFN,
the per-layer graph, routing through the experts in predict, statistics,
training lowers the loss, determinism, gradient accumulation, the Normal
running counts, adapter files round trip, checkpoints resume bit-identical
with the router state, and bad input."""
import json
import os

import numpy as np
import pytest

from llm_fixtures import write_tiny_llm

from engine_py.finetune import Trainer
from engine_py.gmoe import MoELoRAFFN

PROMPTS = ["the cat is", "the dog is", "a bird can", "the sun is", "water is", "fire is"]
ANSWERS = [" black", " brown", " fly", " hot", " wet", " hot"]
KW = dict(experts=4, top_k=2, r=2, alpha=4, gcn_dim=16, lr=5e-3, batch_size=3, seed=3,
          show_progress_bar=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp("moe"), "llama", gguf_types=("Q8_0",), layers=2)


@pytest.fixture(scope="module")
def path(tiny):
    return tiny.gguf["Q8_0"]


def _randomize(tr, seed=1, std=0.3):
    rng = np.random.default_rng(seed)
    st = {}
    for k, v in tr.lora_state().items():
        if k.endswith("poisson_lambda"):
            st[k] = np.array(1.5, np.float32)
        elif k.endswith("normal_sigma"):
            st[k] = np.array(2.0, np.float32)
        else:
            st[k] = (rng.standard_normal(v.shape) * std).astype(np.float32)
    tr.set_lora_state(st)
    return st


@pytest.mark.parametrize("method,router", [("gmoe", "graph"), ("mixlora", "linear"),
                                           ("gmoe", "switch")])
def test_layout_and_init(path, method, router):
    tr = Trainer(path, method=method, router=router, **KW)
    assert tr.router == router and tr.top_k == (1 if router == "switch" else 2)
    assert tr.targets == ("q", "k", "v", "o")   # the experts replace LoRA on the MLP
    st = tr.lora_state()
    L, E = 2, 4
    D, F = tr._hp["hidden_size"], tr._hp["intermediate_size"]
    for layer in range(L):
        pre = f"base_model.model.model.layers.{layer}.mlp."
        for e in range(E):
            for p, (fin, fout) in {"w1": (D, F), "w3": (D, F), "w2": (F, D)}.items():
                A = st[f"{pre}experts.{e}.{p}.lora_A.weight"]
                B = st[f"{pre}experts.{e}.{p}.lora_B.weight"]
                assert A.shape == (2, fin) and B.shape == (fout, 2)
                assert not B.any() and 0 < np.abs(A).max() <= 1 / np.sqrt(fin)
        assert not any(f"layers.{layer}.mlp.{m}_proj" in k for k in st for m in ("gate", "up", "down"))
    # the per-layer parameters are MoELoRAFFN's names and shapes
    ffn = MoELoRAFFN({"W1": np.zeros((F, D)), "W3": np.zeros((F, D)), "W2": np.zeros((D, F))},
                     num_experts=E, top_k=2, router=router, gcn_dim=16)
    want = {k: v.shape for k, v in ffn.state_dict().items()
            if k not in ("router.expert_features", "router.normalized_adjacency", "normal_running")}
    got = {k.split(".mlp.", 1)[1]: v.shape for k, v in st.items()
           if k.startswith("base_model.model.model.layers.0.mlp.")}
    assert got == want
    if router == "graph":
        bufs = tr.moe_buffers_state()
        adj = bufs["base_model.model.model.layers.0.mlp.router.normalized_adjacency"]
        assert adj.shape == (E + 1, E + 1) and np.allclose(adj, adj.T)
        assert (adj[E, :] > 0).all()   # the token node links to every expert
        assert not bufs["base_model.model.model.layers.1.mlp.normal_running"].any()
        # the layers have different experts and graphs (fresh draws per layer)
        f0 = bufs["base_model.model.model.layers.0.mlp.router.expert_features"]
        f1 = bufs["base_model.model.model.layers.1.mlp.router.expert_features"]
        assert not np.array_equal(f0, f1)
    else:
        assert tr.moe_buffers_state() == {}


def test_defaults_follow_the_reference(path):
    tr = Trainer(path, method="gmoe", show_progress_bar=False)
    assert (tr.experts, tr.top_k, tr.r, tr.alpha, tr.router) == (8, 2, 2, 4.0, "graph")
    assert (tr.gcn_dim, tr.gcn_layers, tr.edge_density) == (128, 2, 0.25)
    assert (tr.lr, tr.weight_decay, tr.batch_size, tr.dropout) == (2e-4, 0.01, 16, 0.0005)
    assert tr.schedule == "constant" and tr.warmup_ratio == 0.0
    assert tr.loss_coefs["poisson"] == 0.005 and tr.loss_coefs["normal"] == 8.0
    assert Trainer(path, method="mixlora", show_progress_bar=False).router == "linear"
    lo = Trainer(path, show_progress_bar=False)
    assert (lo.weight_decay, lo.dropout, lo.schedule) == (0.0, 0.0, "cosine")


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_stats_and_routes(path, router):
    tr = Trainer(path, method="gmoe", router=router, **KW)
    _randomize(tr)
    loss, _ = tr.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    st = tr.moe_stats()
    routes = tr.router_stats()
    K = tr.top_k
    n_tok = routes[0]["probs"].shape[0]
    assert n_tok > 0 and len(routes) == 2
    for layer, r in enumerate(routes):
        assert r["idx"].shape == (n_tok, K) and r["probs"].shape == (n_tok, 4)
        assert np.allclose(r["probs"].sum(axis=1), 1, atol=1e-5)
        # the chosen experts are the most probable ones
        top = np.argsort(-r["probs"], axis=1, kind="stable")[:, :K]
        assert (np.sort(top, axis=1) == np.sort(r["idx"], axis=1)).all()
        assert (np.bincount(r["idx"].ravel(), minlength=4) == st["counts"][layer]).all()
    assert np.allclose(st["load"].sum(axis=1), 1)
    assert ((st["entropy"] > 0) & (st["entropy"] <= np.log(4) + 1e-9)).all()
    if router == "graph":
        assert st["aux"]["poisson"].min() > 0 and st["aux"]["normal"].min() > 0
        assert not st["aux"]["balance"].any()
        assert np.allclose(st["lambda"], 1.5) and np.allclose(st["sigma"], 2.0)
    else:
        assert st["aux"]["balance"].min() > 0 and not st["aux"]["poisson"].any()
    assert (st["aux"]["z"].min() > 0) == (router == "switch")


def test_loss_includes_the_weighted_router_losses(path):
    a = Trainer(path, method="gmoe", **KW)
    st = _randomize(a)
    b = Trainer(path, method="gmoe", loss_coefs={"poisson": 0.0, "normal": 0.0}, **KW)
    b.set_lora_state(st)
    la, ga = a.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    aux = a.moe_stats()["aux"]
    lb, gb = b.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    assert la == pytest.approx(lb + 0.005 * aux["poisson"].sum() + 8.0 * aux["normal"].sum(),
                               rel=1e-6)
    assert not np.array_equal(ga, gb)   # the losses reach the router's gradients
    # aux_reduction="mean" (the official code's): the layers' mean, not their sum
    c = Trainer(path, method="gmoe", aux_reduction="mean", **KW)
    c.set_lora_state(st)
    lc, gc = c.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    aux_c = c.moe_stats()["aux"]
    assert lc == pytest.approx(lb + (0.005 * aux_c["poisson"].sum()
                                     + 8.0 * aux_c["normal"].sum()) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="aux_reduction"):
        Trainer(path, method="gmoe", aux_reduction="max")


def test_predict_routes_through_the_experts(path):
    """A forward-only pass uses the experts: changing one expert's B changes
    the choice log-likelihoods; the running counts do not move."""
    tr = Trainer(path, method="gmoe", **KW)
    st = _randomize(tr)
    before = tr.choice_logprobs(PROMPTS[:2], [" hot", " cold"])
    run0 = tr.moe_buffers_state()["base_model.model.model.layers.0.mlp.normal_running"]
    used = np.unique(tr.router_stats()[0]["idx"])
    key = f"base_model.model.model.layers.0.mlp.experts.{used[0]}.w2.lora_B.weight"
    st2 = dict(st, **{key: st[key] * 3})
    tr.set_lora_state(st2)
    after = tr.choice_logprobs(PROMPTS[:2], [" hot", " cold"])
    assert not np.allclose(before, after)
    run1 = tr.moe_buffers_state()["base_model.model.model.layers.0.mlp.normal_running"]
    assert np.array_equal(run0, run1)


@pytest.mark.parametrize("count", ["topk_probs", "weights"])
def test_running_counts_advance_in_training(path, count):
    """running <- decay * running + k * (per expert: the top-k probabilities
    (the official code) or the renormalised weights, which sum to 1 per
    token) of each training pass."""
    key = "base_model.model.model.layers.1.mlp.normal_running"
    sums = {}
    for decay in (1.0, 0.5):
        tr = Trainer(path, method="gmoe", normal_count=count, normal_running_decay=decay, **KW)
        _randomize(tr)
        tr.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
        r = tr.router_stats()[1]
        r1 = tr.moe_buffers_state()[key]
        if count == "topk_probs":
            per = np.bincount(r["idx"].ravel(), minlength=4,
                              weights=np.take_along_axis(r["probs"], r["idx"], 1).ravel())
            assert np.allclose(r1, 2 * per, rtol=1e-5)
        else:
            assert r1.sum() == pytest.approx(2 * r["idx"].shape[0])
        tr.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
        sums[decay] = (r1.sum(), tr.moe_buffers_state()[key].sum())
    assert sums[1.0][1] == pytest.approx(2 * sums[1.0][0], rel=1e-5)
    assert sums[0.5][1] == pytest.approx(1.5 * sums[0.5][0], rel=1e-5)


def test_fit_lowers_loss_is_deterministic_and_records_history(path):
    a = Trainer(path, method="gmoe", epochs=4, **KW).fit(PROMPTS, ANSWERS)
    b = Trainer(path, method="gmoe", epochs=4, **KW).fit(PROMPTS, ANSWERS)
    assert np.array_equal(a._core.params, b._core.params)
    losses = [h[1] for h in a.history_]
    assert losses[-1] < losses[0]
    assert len(a.moe_history_) == len(a.history_) == 8
    h = a.moe_history_[-1]
    assert h["load"].shape == (2, 4) and np.allclose(h["load"].sum(axis=1), 1)
    assert h["aux"].shape == (2, 4) and h["lambda"].shape == (2,)
    assert ((h["lambda"] >= 1) & (h["lambda"] <= 2)).all() and (h["sigma"] >= 1e-3).all()
    # the experts were trained (B moved off zero) and lambda/sigma are learnt
    st = a.lora_state()
    assert np.abs(st["base_model.model.model.layers.0.mlp.experts.0.w2.lora_B.weight"]).max() > 0
    assert st["base_model.model.model.layers.0.mlp.normal_sigma"] != np.float32(2.0)


def test_gradient_accumulation_scales_the_router_losses(path):
    """Micro-batches of the whole batch: the answer loss and its gradient are
    those of one pass; each micro-batch's router losses weigh 1 / (number of
    parts), so the total is the answer loss + the mean of the parts' losses."""
    kw = dict(KW, dropout=0.0)
    a = Trainer(path, method="mixlora", loss_coefs={"balance": 0.0}, **kw)
    st = _randomize(a)
    b = Trainer(path, method="mixlora", loss_coefs={"balance": 0.0}, micro_batch_size=1, **kw)
    b.set_lora_state(st)
    la, ga = a.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    lb, gb = b.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    assert la == pytest.approx(lb, rel=1e-5)
    assert np.allclose(ga, gb, rtol=1e-4, atol=1e-5 * np.abs(ga).max())
    c = Trainer(path, method="mixlora", micro_batch_size=1, **kw)   # balance 0.01
    c.set_lora_state(st)
    lc, _ = c.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    parts = []
    for i in range(3):
        one = Trainer(path, method="mixlora", **kw)
        one.set_lora_state(st)
        one.loss_and_grads(PROMPTS[i:i + 1], ANSWERS[i:i + 1])
        parts.append(0.01 * one.moe_stats()["aux"]["balance"].sum())
    assert lc == pytest.approx(lb + np.mean(parts), rel=1e-6)


@pytest.mark.parametrize("method,router", [("gmoe", "graph"), ("mixlora", "linear")])
def test_adapter_round_trip(path, tmp_path, method, router):
    tr = Trainer(path, method=method, router=router, epochs=1, **KW).fit(PROMPTS, ANSWERS)
    tr.save_adapter(tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == {"gmoe": "GMOE", "mixlora": "MIXLORA"}[method]
    assert cfg["engine_py_moe"]["experts"] == 4 and cfg["engine_py_moe"]["router"] == router
    t2 = Trainer.load(path, tmp_path / "ad", show_progress_bar=False)
    assert (t2.method, t2.router, t2.experts, t2.gcn_dim) == (method, router, 4, 16)
    assert np.array_equal(t2._core.params, tr._core.params)
    for k, v in tr.moe_buffers_state().items():
        assert np.array_equal(t2.moe_buffers_state()[k], v), k
    p = ["the sun is", "snow is"]
    assert np.array_equal(t2.choice_logprobs(p, [" hot", " white"]),
                          tr.choice_logprobs(p, [" hot", " white"]))
    # a MoE adapter is not a PEFT LoRA: merging it is refused clearly (the Encoder
    # routes through its experts: tests/test_encoder_moe_adapter.py)
    from engine_py.finetune import merge_adapter, read_adapter

    with pytest.raises(ValueError, match="cannot be merged"):
        read_adapter(tmp_path / "ad")
    with pytest.raises(ValueError, match="cannot be merged|GGUF"):
        merge_adapter(path, tmp_path / "ad", tmp_path / "merged")


def test_graph_balance_adds_the_load_balance_and_round_trips(path, tmp_path):
    """graph_balance=True: the graph router's total loss grows by exactly
    coef * the summed per-layer balance losses it now reports (the reference
    reports none); the setting is saved with the adapter and loaded back; an
    adapter written without it loads as off."""
    kw = dict(KW, dropout=0.0)
    a = Trainer(path, method="gmoe", **kw)
    _randomize(a)
    b = Trainer(path, method="gmoe", graph_balance=True, **kw)
    b.set_lora_state({**a.lora_state(), **a.moe_buffers_state()})   # expert graph, counts too
    la, ga = a.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    assert not a.moe_stats()["aux"]["balance"].any()
    lb, gb = b.loss_and_grads(PROMPTS[:3], ANSWERS[:3])
    bal = b.moe_stats()["aux"]["balance"]
    assert (bal > 0).all() and bal.shape == (2,)
    assert lb == pytest.approx(la + b.loss_coefs["balance"] * bal.sum(), rel=1e-6)
    assert not np.array_equal(ga, gb)
    b.save_adapter(tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["engine_py_moe"]["graph_balance"] is True
    assert Trainer.load(path, tmp_path / "ad", show_progress_bar=False).graph_balance
    a.save_adapter(tmp_path / "ref")
    cfg = json.loads((tmp_path / "ref" / "adapter_config.json").read_text())
    assert "graph_balance" not in cfg["engine_py_moe"]
    assert not Trainer.load(path, tmp_path / "ref", show_progress_bar=False).graph_balance


def test_adapter_mismatch_is_refused(path, tmp_path):
    tr = Trainer(path, method="gmoe", **KW)
    tr.save_adapter(tmp_path / "ad")
    other = Trainer(path, method="gmoe", **dict(KW, experts=3))
    from engine_py.io import load_state

    state = load_state(str(tmp_path / "ad" / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="missing|shape"):
        other.set_lora_state(state)
    bad = dict(state)
    bad.pop("base_model.model.model.layers.0.mlp.normal_running")
    with pytest.raises(ValueError, match="router buffers"):
        tr.set_lora_state(bad)


def test_checkpoint_resume_is_bit_identical(path, tmp_path):
    kw = dict(KW, epochs=2)
    full = Trainer(path, method="gmoe", **kw).fit(PROMPTS, ANSWERS)
    a = Trainer(path, method="gmoe", **kw)
    orig, count = a._accumulate, [0]

    def acc(*args, **k):
        if count[0] == 2:
            raise KeyboardInterrupt()
        count[0] += 1
        return orig(*args, **k)

    a._accumulate = acc
    with pytest.raises(KeyboardInterrupt):
        a.fit(PROMPTS, ANSWERS, checkpoint_dir=tmp_path / "ck")
    b = Trainer(path, method="gmoe", **kw).fit(PROMPTS, ANSWERS, checkpoint_dir=tmp_path / "ck")
    assert np.array_equal(b._core.params, full._core.params)
    for k, v in full.moe_buffers_state().items():
        assert np.array_equal(b.moe_buffers_state()[k], v), k
    assert len(b.moe_history_) == len(full.moe_history_)
    assert np.array_equal(b.moe_history_[-1]["load"], full.moe_history_[-1]["load"])


def test_bad_arguments(path):
    with pytest.raises(ValueError, match="router"):
        Trainer(path, method="gmoe", router="mlp")
    with pytest.raises(ValueError, match="experts"):
        Trainer(path, method="gmoe", experts=0)
    with pytest.raises(ValueError, match="top_k"):
        Trainer(path, method="gmoe", experts=2, top_k=3)
    with pytest.raises(ValueError, match="rank"):
        Trainer(path, method="mixlora", r=65)
    with pytest.raises(ValueError, match="loss_coefs"):
        Trainer(path, method="gmoe", loss_coefs={"poison": 1.0})
    with pytest.raises(ValueError, match="loss_coefs"):
        Trainer(path, method="gmoe", loss_coefs={"normal": float("nan")})
    with pytest.raises(ValueError, match="edge_density"):
        Trainer(path, method="gmoe", edge_density=0)
    with pytest.raises(ValueError, match="running_decay"):
        Trainer(path, method="gmoe", normal_running_decay=1.5)
    with pytest.raises(ValueError, match="normal_count"):
        Trainer(path, method="gmoe", normal_count="probs")
    with pytest.raises(ValueError, match="loss_form"):
        Trainer(path, method="gmoe", loss_form="l2")
    lo = Trainer(path, show_progress_bar=False)
    with pytest.raises(RuntimeError, match="no experts"):
        lo.moe_stats()


def test_plots_of_a_training_run(path):
    """engine_py.plot's MoE training plots draw what the history holds and
    refuse what they cannot draw."""
    import matplotlib

    matplotlib.use("Agg")
    from engine_py import plot

    tr = Trainer(path, method="gmoe", epochs=2, **KW).fit(PROMPTS, ANSWERS)
    axes = plot.expert_load_over_training(tr)
    lines = axes[0].get_lines()
    steps = len(tr.moe_history_)
    # one line per expert over the steps, plus the 1/N and 1/(4N) levels
    assert len(lines) == 4 + 2 and len(lines[0].get_xdata()) == steps
    assert np.allclose(lines[1].get_ydata(), [h["load"][0, 1] for h in tr.moe_history_])
    assert np.isclose(lines[-1].get_ydata()[0], 1 / 16)
    ax = plot.router_probabilities(tr.router_stats()[0]["probs"])
    top1 = sum(p.get_height() for p in ax.patches[:40])
    assert top1 == tr.router_stats()[0]["probs"].shape[0]
    a2 = plot.lambda_sigma(tr)
    assert np.allclose(a2[1].get_lines()[0].get_ydata(), [h["sigma"][0] for h in tr.moe_history_])
    with pytest.raises(ValueError, match="moe_history_"):
        plot.expert_load_over_training([])
    with pytest.raises(ValueError, match="probs"):
        plot.router_probabilities(np.ones(3))
    lin = Trainer(path, method="mixlora", **KW).fit(PROMPTS, ANSWERS)
    with pytest.raises(ValueError, match="graph router"):
        plot.lambda_sigma(lin)
    import matplotlib.pyplot as plt

    plt.close("all")
