"""engine_py.gmoe.MoELoRAFFN against a PyTorch reference written from the
formulas (tests/reference/gmoe_ref.py: dense experts, per-token graph with
GCN normalisation, autograd), plus losses, state, optimiser and bad input."""
import numpy as np
import pytest

from engine_py import _core
from engine_py.gmoe import DEFAULT_LOSS_COEFS, MoELoRAFFN

torch = pytest.importorskip("torch")
from reference.gmoe_ref import GMoERef, total_loss  # noqa: E402

H, I, E, G = 16, 24, 6, 16


def base_weights(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "swiglu":
        return {"W1": rng.normal(0, 0.3, (I, H)), "W3": rng.normal(0, 0.3, (I, H)),
                "W2": rng.normal(0, 0.3, (H, I))}
    return {"Wi": rng.normal(0, 0.3, (I, H)), "bi": rng.normal(0, 0.3, I),
            "Wo": rng.normal(0, 0.3, (H, I)), "bo": rng.normal(0, 0.3, H)}


def make(kind="swiglu", router="graph", **kw):
    kw = {"num_experts": E, "top_k": 2, "gcn_dim": G, "edge_density": 0.4, "seed": 3, **kw}
    return MoELoRAFFN(base_weights(kind), kind=kind, router=router, **kw)


def randomise(layer, seed=1):
    """Random values for every trainable parameter (B != 0) and the running counts."""
    rng = np.random.default_rng(seed)
    sd = layer.state_dict()
    for k, v in sd.items():
        if k in ("router.expert_features", "router.normalized_adjacency"):
            continue
        if k == "poisson_lambda":
            sd[k] = np.array(1.3, np.float32)
        elif k == "normal_sigma":
            sd[k] = np.array(2.2, np.float32)
        elif k == "normal_running":
            sd[k] = rng.uniform(1.0, 10.0, v.shape)
        elif k == "router.W_t.weight":
            sd[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
        else:
            sd[k] = rng.normal(0, 0.4, v.shape).astype(np.float32)
    layer.load_state_dict(sd)
    return sd


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def check_parity(layer, coefs, T=12, seed=5, report=None):
    ref = GMoERef(layer)
    if layer.router == "graph":
        np.testing.assert_array_equal(layer.adjacency, ref.adjacency().numpy())
        # precondition: experts with the same closed neighbourhood get identical
        # logits (see test_structural_ties), which makes some gradients vanish
        # exactly and relative errors meaningless; the parity graphs avoid that.
        assert len({tuple(r) for r in layer.adjacency[:-1, :-1]}) == layer.num_experts
    sd = randomise(layer)
    ref.load(sd)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (T, H)).astype(np.float32)
    dy = rng.normal(0, 1, (T, H)).astype(np.float32)
    running = sd.get("normal_running")
    layer.zero_grad()
    y, aux = layer.forward(x)
    dx = layer.backward(dy, loss_coefs=coefs)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ry, raux, topi = ref.forward(xt, running=running)
    ref_x = xt
    full = dict(DEFAULT_LOSS_COEFS) if coefs is None else coefs
    total_loss(ry, raux, dy, full).backward()
    errs = {"y": rel(y, ry.detach().numpy()), "dx": rel(dx, ref_x.grad.numpy())}
    for k in raux:
        errs[f"aux.{k}"] = abs(aux[k] - raux[k].item()) / max(abs(raux[k].item()), 1e-12)
    grads = layer.grads()
    for k, t in ref.params.items():
        g = t.grad.numpy() if t.grad is not None else np.zeros(t.shape)
        errs[f"grad.{k}"] = rel(grads[k], g) if np.linalg.norm(g) > 0 else float(
            np.abs(grads[k]).max())
    assert errs["y"] < 1e-5, errs
    for k, v in errs.items():
        tol = 1e-5 if k.startswith("aux") or k == "y" else 1e-4
        assert v < tol, (k, v)
    if report is not None:
        report.update(errs)
    return errs


STRONG = {"poisson": 0.5, "normal": 0.7, "balance": 0.3, "z": 0.2}


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_parity_with_torch_reference(kind, router):
    check_parity(make(kind, router), STRONG)


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_parity_default_coefs(router):
    check_parity(make("swiglu", router), None)


@pytest.mark.parametrize("gcn_layers", [1, 2, 3])
@pytest.mark.parametrize("readout", ["shared", "per_expert"])
def test_parity_router_width_off_the_lanes(gcn_layers, readout):
    # gcn_dim 21: the router's per-token rows run a full 16-lane block and a
    # 5-wide tail (graph_router_simd.h); two layers take the path that never
    # stores Z1, one and three layers the general one
    check_parity(make("swiglu", "graph", gcn_dim=21, gcn_layers=gcn_layers,
                      graph_readout=readout), STRONG)


def test_parity_kl_form_and_top3():
    check_parity(make("gelu", "graph", loss_form="kl", top_k=3), STRONG)


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
@pytest.mark.parametrize("opts", [
    {"normal_count": "weights"},
    {"normal_running_decay": 0.5},
    {"normal_running_decay": 0.0, "normal_count": "weights"},
    {"graph_readout": "per_expert"},
    {"graph_readout": "per_expert", "normal_running_decay": 0.9, "loss_form": "kl"},
])
def test_parity_collapse_options(kind, opts):
    # the options against router collapse, every gradient against autograd
    check_parity(make(kind, "graph", **opts), STRONG)


def test_normal_loss_reaches_unselected_experts():
    # The official code counts the top-k probabilities before renormalisation, so
    # the Normal loss's gradient reaches every logit through the softmax; counting
    # the renormalised weights gives unselected experts exactly zero gradient
    # (the loss cannot move a token to another expert).
    x = np.random.default_rng(0).normal(size=(12, H)).astype(np.float32)
    for count in ("topk_probs", "weights"):
        layer = make("swiglu", "graph", normal_count=count)
        randomise(layer)
        layer.forward(x)
        ctx = layer._ctx
        layer.zero_grad()
        layer.backward(np.zeros((12, H), np.float32), {"normal": 1.0})
        probs, idx, w = ctx["probs"], ctx["idx"], ctx["w"]
        dw = np.zeros_like(w)
        dprobs = np.zeros_like(probs)
        # the same dlogits as backward: recompute with the kernels
        if count == "weights":
            _core._gmoe_normal_backward(dw, 1.0, ctx["c"], ctx["perm_n"], idx,
                                        float(layer._params["normal_sigma"]), 1e-3, False, 1e-8)
        else:
            d = np.zeros_like(w)
            _core._gmoe_normal_backward(d, 1.0, ctx["c"], ctx["perm_n"], idx,
                                        float(layer._params["normal_sigma"]), 1e-3, False, 1e-8)
            dprobs[np.arange(12)[:, None], idx] += d
        dl = _core._gmoe_topk_backward(dw, dprobs, probs, idx, w, True)
        unselected = np.ones_like(dl, dtype=bool)
        unselected[np.arange(12)[:, None], idx] = False
        scale = np.abs(dl[~unselected]).max()
        assert scale > 0
        if count == "weights":  # zero up to float32 rounding of the renormalisation
            assert np.abs(dl[unselected]).max() < 1e-6 * scale
        else:
            assert np.abs(dl[unselected]).max() > 1e-2 * scale
        assert np.abs(layer.grads()["router.W_t.weight"]).max() > 0


@pytest.mark.parametrize("only", ["poisson", "normal"])
def test_gradients_through_sort_each_loss_alone(only):
    # Only the sorted-vector loss drives the router: its gradient must match torch.sort's.
    layer = make("swiglu", "graph")
    errs = check_parity(layer, {only: 1.0})
    assert errs["grad.router.W_t.weight"] < 1e-4
    g = layer.grads()
    name = "poisson_lambda" if only == "poisson" else "normal_sigma"
    assert abs(float(g[name])) > 0


def test_structural_ties():
    # GCN with self-loops maps experts with the same closed neighbourhood to the
    # same logit; the engine (and the reference) break such ties by lower index.
    layer = make("swiglu", "graph", edge_density=0.3, seed=1)
    A = layer.adjacency[:E, :E]
    rows = [tuple(r) for r in A]
    twins = [(a, b) for a in range(E) for b in range(a + 1, E) if rows[a] == rows[b]]
    assert twins
    x = np.random.default_rng(0).normal(size=(10, H)).astype(np.float32)
    layer.forward(x, training=False)
    probs, idx = layer._ctx["probs"], layer._ctx["idx"]
    for a, b in twins:
        np.testing.assert_array_equal(probs[:, a], probs[:, b])
        for t in range(10):
            if b in idx[t]:
                assert a in idx[t]


def test_lora_linear_op_matches_torch():
    rng = np.random.default_rng(0)
    T_, In, O, r = 7, 9, 5, 3
    x, W, b = (rng.normal(size=s).astype(np.float32) for s in ((T_, In), (O, In), (O,)))
    A, B = rng.normal(size=(r, In)).astype(np.float32), rng.normal(size=(O, r)).astype(np.float32)
    out, h = _core._gmoe_lora_forward(x, W, b, A, B, 1.5, 0.0, 0)
    dout = rng.normal(size=(T_, O)).astype(np.float32)
    dA, dB = np.zeros_like(A), np.zeros_like(B)
    dx = _core._gmoe_lora_backward(dout, x, W, A, B, h, dA, dB, 1.5, 0.0, 0)
    tx, tA, tB = (torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in (x, A, B))
    tout = tx @ torch.tensor(W, dtype=torch.float64).T + torch.tensor(b, dtype=torch.float64) \
        + 1.5 * (tx @ tA.T) @ tB.T
    (tout * torch.tensor(dout, dtype=torch.float64)).sum().backward()
    assert rel(out, tout.detach().numpy()) < 1e-5
    assert rel(dx, tx.grad.numpy()) < 1e-5
    assert rel(dA, tA.grad.numpy()) < 1e-5 and rel(dB, tB.grad.numpy()) < 1e-5
    # dropout: about p of the LoRA input is dropped, the frozen path is untouched
    out_d, h_d = _core._gmoe_lora_forward(x, W, b, A, B, 1.5, 0.5, 11)
    assert not np.allclose(h_d, h)
    out_0, _ = _core._gmoe_lora_forward(x, W, b, A, np.zeros_like(B), 1.5, 0.5, 11)
    np.testing.assert_allclose(out_0, x @ W.T + b, rtol=1e-5, atol=1e-5)


def test_lora_init_and_scale():
    layer = make("swiglu", "linear", r=4, lora_alpha=8)
    sd = layer.state_dict()
    a = sd["experts.0.w1.lora_A.weight"]
    assert a.shape == (4, H)
    bound = np.sqrt(3.0) * np.sqrt(2.0 / 6.0) / np.sqrt(H)  # kaiming_uniform_(a=sqrt(5))
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.5 * bound
    assert not sd["experts.0.w1.lora_B.weight"].any()
    assert layer.scale == 2.0
    assert sd["experts.1.w2.lora_A.weight"].shape == (4, I)
    assert sd["experts.1.w2.lora_B.weight"].shape == (H, 4)


def test_graph_router_no_token_limit_and_batch_independent():
    layer = make("swiglu", "graph")
    randomise(layer)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2100, H)).astype(np.float32)  # the reference limit is 1750
    y, aux = layer.forward(x, training=False)
    y_small, _ = layer.forward(x[:5], training=False)
    np.testing.assert_allclose(y[:5], y_small, rtol=1e-5, atol=1e-6)
    assert aux["counts"].sum() == 2100 * 2


def test_adjacency_density_rule():
    for beta in (0.05, 0.25, 0.5, 1.0):
        layer = make("swiglu", "graph", edge_density=beta, num_experts=8)
        A = layer.adjacency
        assert A.shape == (9, 9) and (A == A.T).all() and (np.diag(A) == 1).all()
        assert (A[8] == 1).all()  # the token node links to every expert
        assert A[:8, :8].sum() / 64 >= beta
        # one step higher threshold would not have reached the density
        assert layer.edge_threshold_ == 1.0 or A[:8, :8].sum() / 64 >= beta
        Ahat = layer.normalized_adjacency
        d = A.sum(1)
        np.testing.assert_allclose(Ahat, A / np.sqrt(np.outer(d, d)), rtol=1e-6)


def test_lambda_clamp():
    layer = make("swiglu", "graph")
    randomise(layer)
    x = np.random.default_rng(0).normal(size=(10, H)).astype(np.float32)
    sd = layer.state_dict()
    sd["poisson_lambda"] = np.array(2.0, np.float32)
    layer.load_state_dict(sd)
    _, aux2 = layer.forward(x, training=False)
    sd["poisson_lambda"] = np.array(5.0, np.float32)
    layer.load_state_dict(sd)
    _, aux5 = layer.forward(x, training=False)
    assert aux5["poisson"] == pytest.approx(aux2["poisson"], rel=1e-12)
    layer.zero_grad()
    layer.backward(np.zeros((10, H), np.float32), {"poisson": 1.0})
    assert float(layer.grads()["poisson_lambda"]) == 0.0  # torch.clamp: no gradient outside
    layer.step(lr=0.1)
    assert 1.0 <= float(layer.state_dict()["poisson_lambda"]) <= 2.0
    sd = layer.state_dict()
    sd["poisson_lambda"] = np.array(1.5, np.float32)
    layer.load_state_dict(sd)
    for _ in range(30):  # large steps keep lambda inside [1, 2]
        layer.zero_grad()
        layer.forward(x)
        layer.backward(np.zeros((10, H), np.float32), {"poisson": 100.0})
        layer.step(lr=0.5, weight_decay=0.0)
        assert 1.0 <= float(layer.state_dict()["poisson_lambda"]) <= 2.0


@pytest.mark.parametrize("count", ["topk_probs", "weights"])
def test_running_counts(count):
    layer = make("gelu", "graph", normal_count=count)
    x = np.random.default_rng(0).normal(size=(9, H)).astype(np.float32)
    r0 = layer.state_dict()["normal_running"]
    _, aux_eval = layer.forward(x, training=False)
    np.testing.assert_array_equal(layer.state_dict()["normal_running"], r0)
    _, aux_eval2 = layer.forward(x, training=False)
    assert aux_eval2["normal"] == aux_eval["normal"]
    layer.forward(x, training=True)
    ctx = layer._ctx
    r1 = layer.state_dict()["normal_running"]
    if count == "weights":
        # renormalised top-k weights sum to 1 per token, times k
        assert r1.sum() == pytest.approx(r0.sum() + 9 * 2, rel=1e-6)
    else:
        # the official code's count: k * the top-k probabilities before renormalisation
        ptop = np.take_along_axis(ctx["probs"], ctx["idx"], axis=1).astype(np.float64)
        per_expert = np.bincount(ctx["idx"].ravel(), weights=ptop.ravel(), minlength=E)
        np.testing.assert_allclose(r1 - r0, 2 * per_expert, rtol=1e-6)
        assert (r1 - r0).sum() < 9 * 2 - 1e-3  # not the renormalised weights
    layer.forward(x, training=True)
    r2 = layer.state_dict()["normal_running"]
    np.testing.assert_allclose(r2 - r1, r1 - r0, rtol=1e-6)


def test_running_count_decay():
    x = np.random.default_rng(0).normal(size=(9, H)).astype(np.float32)
    full = make("gelu", "graph")
    half = make("gelu", "graph", normal_running_decay=0.5)
    batch = make("gelu", "graph", normal_running_decay=0.0)
    for layer in (full, half, batch):
        layer.forward(x, training=True)
    inc = full.state_dict()["normal_running"].copy()  # k * this batch's counts
    for layer in (full, half, batch):
        layer.forward(x, training=True)
    np.testing.assert_allclose(full.state_dict()["normal_running"], 2 * inc, rtol=1e-6)
    np.testing.assert_allclose(half.state_dict()["normal_running"], 1.5 * inc, rtol=1e-6)
    np.testing.assert_allclose(batch.state_dict()["normal_running"], inc, rtol=1e-6)
    # an evaluation forward reports the loss of the decayed count and keeps the buffer
    r = half.state_dict()["normal_running"].copy()
    _, aux = half.forward(x, training=False)
    np.testing.assert_array_equal(half.state_dict()["normal_running"], r)
    assert half._ctx["c"] == pytest.approx(0.5 * r + inc, rel=1e-6)
    with pytest.raises(ValueError, match="normal_running_decay"):
        make(normal_running_decay=1.5)
    with pytest.raises(ValueError, match="normal_count"):
        make(normal_count="counts")
    with pytest.raises(ValueError, match="graph_readout"):
        make(graph_readout="mean")


def test_statistics():
    layer = make("swiglu", "linear")
    randomise(layer)
    x = np.random.default_rng(0).normal(size=(40, H)).astype(np.float32)
    _, aux = layer.forward(x, training=False)
    c = aux["counts"]
    assert c.sum() == 80 and c.shape == (E,)
    np.testing.assert_allclose(aux["load"], c / 80)
    assert aux["load_cv"] == pytest.approx(np.std(c / 80) / np.mean(c / 80))
    assert 0.0 < aux["entropy"] < np.log(E)


def test_plot_expert_load(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from engine_py.plot import expert_load

    layer = make("swiglu", "graph")
    x = np.random.default_rng(0).normal(size=(20, H)).astype(np.float32)
    _, aux = layer.forward(x, training=False)
    ax = expert_load([aux, aux["counts"]], labels=["a", "b"])
    assert len(ax.patches) == 2 * E
    ax.figure.savefig(tmp_path / "load.png")
    with pytest.raises(ValueError):
        expert_load(np.zeros(4))


def test_state_dict_round_trip():
    a = make("swiglu", "graph", seed=1)
    randomise(a, seed=4)
    b = make("swiglu", "graph", seed=2)
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    np.testing.assert_array_equal(a.adjacency, b.adjacency)
    x = np.random.default_rng(0).normal(size=(6, H)).astype(np.float32)
    ya, auxa = a.forward(x, training=False)
    yb, auxb = b.forward(x, training=False)
    np.testing.assert_array_equal(ya, yb)
    names = a.parameter_names()
    assert "experts.5.w3.lora_B.weight" in names and "router.gcn.1.weight" in names
    sd = a.state_dict()
    del sd["router.proj.weight"]
    with pytest.raises(KeyError, match="router.proj.weight"):
        b.load_state_dict(sd)
    sd = a.state_dict()
    sd["experts.0.w1.lora_A.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(sd)


@pytest.mark.parametrize("router", ["graph", "linear"])
def test_step_matches_torch_adamw(router):
    layer = make("gelu", router)
    randomise(layer)
    x = np.random.default_rng(0).normal(size=(8, H)).astype(np.float32)
    layer.zero_grad()
    layer.forward(x)
    layer.backward(np.random.default_rng(1).normal(size=(8, H)).astype(np.float32), STRONG)
    grads = layer.grads()
    names = layer.parameter_names()
    sd0 = layer.state_dict()
    tp = [torch.tensor(sd0[n], requires_grad=True) for n in names]
    opt = torch.optim.AdamW(tp, lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        for p, n in zip(tp, names):
            p.grad = torch.tensor(grads[n])
        opt.step()
        layer.step(lr=1e-2, weight_decay=0.05)
    sd = layer.state_dict()
    for p, n in zip(tp, names):
        np.testing.assert_allclose(sd[n], p.detach().numpy(), rtol=1e-5, atol=1e-7, err_msg=n)


def test_dropout_training_only():
    layer = make("swiglu", "linear", lora_dropout=0.5)
    randomise(layer)
    x = np.random.default_rng(0).normal(size=(8, H)).astype(np.float32)
    y_eval, _ = layer.forward(x, training=False)
    y_eval2, _ = layer.forward(x, training=False)
    np.testing.assert_array_equal(y_eval, y_eval2)
    nodrop = make("swiglu", "linear", lora_dropout=0.0)
    nodrop.load_state_dict(layer.state_dict())
    np.testing.assert_allclose(nodrop.forward(x, training=False)[0], y_eval, rtol=1e-6)
    y_tr, _ = layer.forward(x, training=True)
    assert not np.allclose(y_tr, y_eval)
    dx = layer.backward(np.ones_like(y_tr))
    assert np.isfinite(dx).all()


def test_leading_dims_and_torch_input():
    layer = make("swiglu", "switch")
    x = np.random.default_rng(0).normal(size=(2, 3, H)).astype(np.float32)
    y, aux = layer.forward(torch.tensor(x))
    assert y.shape == (2, 3, H) and aux["counts"].sum() == 6  # switch: top-1
    dx = layer.backward(np.ones((2, 3, H), np.float32))
    assert dx.shape == (2, 3, H)


def test_bad_inputs():
    with pytest.raises(ValueError, match="top_k"):
        make(top_k=E + 1)
    with pytest.raises(ValueError, match="edge_density"):
        make(edge_density=0.0)
    with pytest.raises(ValueError, match="edge_density"):
        make(edge_density=1.5)
    with pytest.raises(ValueError, match="kind"):
        make(kind="relu")
    with pytest.raises(ValueError, match="router"):
        make(router="hash")
    bw = base_weights("swiglu")
    bw["W2"] = bw["W2"][:, :-1]
    with pytest.raises(ValueError, match="W2"):
        MoELoRAFFN(bw, kind="swiglu")
    with pytest.raises(ValueError, match="keys"):
        MoELoRAFFN(base_weights("gelu"), kind="swiglu")
    bw = base_weights("gelu")
    bw["bo"] = np.zeros(H + 1)
    with pytest.raises(ValueError, match="bo"):
        MoELoRAFFN(bw, kind="gelu")
    layer = make()
    x = np.zeros((4, H), np.float32)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        layer.forward(x)
    with pytest.raises(ValueError, match="shape"):
        layer.forward(np.zeros((4, H + 1), np.float32))
    with pytest.raises(RuntimeError, match="forward"):
        layer.backward(np.zeros((4, H), np.float32))
    layer.forward(np.zeros((4, H), np.float32))
    with pytest.raises(ValueError, match="dy"):
        layer.backward(np.zeros((5, H), np.float32))
    with pytest.raises(ValueError, match="unknown"):
        layer.backward(np.zeros((4, H), np.float32), {"poison": 1.0})
    # the private kernels check indices and shapes too
    with pytest.raises(ValueError, match="expert index"):
        _core._gmoe_balance_forward(np.zeros((2, 3), np.float32), np.array([[0, 7]] * 2, np.int32))
    with pytest.raises(ValueError):
        _core._gmoe_topk_forward(np.zeros((2, 3), np.float32), 4, True)


def test_busy_object_raises():
    layer = make("swiglu", "linear")
    x = np.zeros((3, H), np.float32)
    layer._lock.acquire()  # as if another thread were inside forward
    try:
        with pytest.raises(RuntimeError, match="another thread"):
            layer.forward(x)
        with pytest.raises(RuntimeError, match="another thread"):
            layer.step()
    finally:
        layer._lock.release()
    layer.forward(x)


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_activation_accuracy_wide_range(kind):
    # Frozen identity projections and B = 0: y is the bare activation of x.
    n = 16
    eye = np.eye(n)
    bw = ({"Wi": eye, "bi": np.zeros(n), "Wo": eye, "bo": np.zeros(n)} if kind == "gelu"
          else {"W1": eye, "W3": eye, "W2": eye})
    layer = MoELoRAFFN(bw, kind=kind, router="linear", num_experts=4, top_k=2)
    x = np.linspace(-30, 30, 64 * n).reshape(64, n).astype(np.float32)
    y, _ = layer.forward(x, training=False)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ref = torch.nn.functional.gelu(xt) if kind == "gelu" else torch.nn.functional.silu(xt) * xt
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=2e-6, atol=3e-7)
    dy = np.ones_like(y)
    dx = layer.backward(dy, loss_coefs={})
    ref.backward(torch.ones_like(ref))
    # dx also holds the router path (through the weights); with identical experts and
    # renormalised weights that path is exactly zero
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=5e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["swiglu", "gelu"])
def test_bfloat16_frozen_products_close_to_float32(kind):
    """precision="bfloat16" rounds the frozen FFN products' operands: y, dx
    and the LoRA gradients stay close to float32 (bf16 keeps 8 bits), the
    routing is the same (the router stays float32), and the option is
    validated."""
    f = make(kind, router="linear")
    h = make(kind, router="linear", precision="bfloat16")
    sd = randomise(f)
    h.load_state_dict(sd)
    x = np.random.default_rng(4).normal(0, 1, (64, H)).astype(np.float32)
    yf, af = f.forward(x)
    yh, ah = h.forward(x)
    assert not np.array_equal(yf, yh)
    assert rel(yh, yf) < 1e-2
    np.testing.assert_array_equal(af["counts"], ah["counts"])
    dy = np.random.default_rng(5).normal(0, 1, yf.shape).astype(np.float32)
    dxf, dxh = f.backward(dy), h.backward(dy)
    assert rel(dxh, dxf) < 1e-2
    for name in f._grads:
        if np.abs(f._grads[name]).max() > 0:
            assert rel(h._grads[name], f._grads[name]) < 2e-2, name
    with pytest.raises(ValueError, match="precision"):
        make(kind, precision="float16")


def test_bench_gmoe_smoke(tmp_path):
    """bench gmoe times engine_py float32, engine_py bfloat16 and PyTorch on
    the same layer and reports both ratios and both output errors."""
    pytest.importorskip("torch")
    import json

    from engine_py.bench import gmoe as bench
    out = tmp_path / "g.json"
    assert bench.main(["--tokens", "128", "--repeats", "1", "--kinds", "swiglu", "--sizes", "32/64",
                       "--routers", "graph", "--threads", "1", "--clock", "cpu", "--no-progress",
                       "--out", str(out)]) == 0
    row = json.loads(out.read_text())["results"]["rows"][0]
    assert row["engine_py_bf16_tokens_per_s"] > 0 and row["speedup_bf16"] > 0
    assert row["max_rel_diff_y"] < 1e-5 < row["max_rel_diff_y_bf16"] < 2e-2
    assert 0 <= row["near_tie_tokens"] <= 128


def test_bench_gmoe_compares_outputs_without_near_tie_tokens():
    """A token whose k-th and (k+1)-th router probabilities are equal to a few
    ulps has its experts chosen by rounding, on either side: bench gmoe counts
    such tokens and leaves them out of the output comparison (else one
    flipped expert reads as a 1e-1 error of the whole layer)."""
    from engine_py.bench import gmoe as bench

    probs = np.array([[0.5, 0.3, 0.2, 0.0],       # clear top-2
                      [0.4, 0.3, 0.3, 0.0],       # exact tie at k = 2
                      [0.4, 0.3, 0.3 - 5e-8, 0.0000001]], np.float32)   # tie within rounding
    assert bench._near_ties(probs, 2).tolist() == [False, True, True]
    assert bench._near_ties(probs[:, :2], 2).tolist() == [False] * 3   # k = N: nothing to tie with
    y_ref = np.array([[1.0, -2.0], [0.5, 0.5], [0.1, 0.0]])
    y = y_ref + np.array([[1e-3, 0.0], [5.0, 0.0], [0.0, 3.0]])
    assert bench._rel_diff(y, y_ref, bench._near_ties(probs, 2)) == pytest.approx(1e-3 / 2.0)
    assert bench._rel_diff(y, y_ref, np.zeros(3, bool)) == pytest.approx(5.0 / 2.0)
    assert np.isnan(bench._rel_diff(y, y_ref, np.ones(3, bool)))
