"""engine_py.bench.gmoe_torch (the official-style PyTorch GMoE / MixLoRA model
used as the parity reference and speed baseline of the GMoE trainer) checked
on its own, without the engine's GMoE model code:

* one layer of its MixLoRA MoE (torch_geometric GCNConv router on the
  per-token block-diagonal batch graph, expert loop with index_add_) against
  tests/reference/gmoe_ref.py's GMoERef (dense experts, dense GCN
  normalisation) built from an engine_py.gmoe.MoELoRAFFN: outputs, router
  choices, auxiliary losses, the input gradient and every parameter gradient
  within 1e-10 in float64, for the graph, linear and switch routers;
* the whole patched tiny Llama / Qwen2: with every LoRA B zero and zero
  auxiliary coefficients its loss equals the unpatched model's answer
  cross-entropy, and the total loss is CE + sum of coef * aux.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("torch_geometric")

from llm_fixtures import write_tiny_llm, _load  # noqa: E402
from reference.gmoe_ref import GMoERef, total_loss  # noqa: E402
from test_gmoe import randomise  # noqa: E402  (the layer tests' random state)

from engine_py.bench import gmoe_torch  # noqa: E402
from engine_py.gmoe import MoELoRAFFN  # noqa: E402

H, I, E, G = 16, 24, 6, 16
COEFS = {"poisson": 0.5, "normal": 0.7, "balance": 0.3, "z": 0.2}
TOL = 1e-10


def _layer(router, **kw):
    rng = np.random.default_rng(0)
    bw = {"W1": rng.normal(0, 0.3, (I, H)), "W3": rng.normal(0, 0.3, (I, H)),
          "W2": rng.normal(0, 0.3, (H, I))}
    kw = {"num_experts": E, "top_k": 2, "gcn_dim": G, "edge_density": 0.4, "seed": 3, **kw}
    return MoELoRAFFN(bw, kind="swiglu", router=router, **kw)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.abs(b).max()
    return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max())


def _one_layer(router, coefs=COEFS, T=40, seed=5, **kw):
    """(errors dict, mine, ref) for one layer on random x, dy."""
    layer = _layer(router, **kw)
    init = layer.state_dict()
    ref = GMoERef(layer)                      # graph from the initial W_s, like the layer
    sd = randomise(layer)
    ref.load(sd)
    f = layer._frozen
    mine = gmoe_torch.moe_from_state(f["W_in"], f["W_up"], f["W_out"], sd, router,
                                     layer.num_experts, 2 if "top_k" not in kw else kw["top_k"],
                                     layer.r, layer.lora_alpha, "float64",
                                     edge_density=layer.edge_density, graph_state=init)
    mine.train(True)
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (T, H))
    dy = rng.normal(0, 1, (T, H))
    xr = torch.tensor(x, requires_grad=True)
    ry, raux, rtopi = ref.forward(xr, running=sd.get("normal_running"))
    total_loss(ry, raux, dy, coefs).backward()
    xm = torch.tensor(x, requires_grad=True)
    my = mine(xm)
    total_loss(my, mine.aux, dy, coefs).backward()
    errs = {"y": _rel(my.detach(), ry.detach()), "dx": _rel(xm.grad, xr.grad)}
    assert set(mine.aux) == set(raux)
    for k in raux:
        errs[f"aux.{k}"] = _rel(mine.aux[k].detach(), raux[k].detach())
    np.testing.assert_array_equal(mine.topk_idx.numpy(), rtopi.numpy())
    grads = dict(mine.named_contract_parameters())
    assert set(grads) == set(ref.params)
    for k, t in ref.params.items():
        g = t.grad.numpy() if t.grad is not None else np.zeros(tuple(t.shape))
        mg = grads[k].grad
        mg = mg.numpy() if mg is not None else np.zeros(tuple(t.shape))
        errs[f"grad.{k}"] = _rel(mg, g)
        # every gradient the reference has must be nonzero here, or the
        # comparison says little (lambda: inside its clamp; sigma > 1e-3)
        own = {"poisson_lambda": "poisson", "normal_sigma": "normal"}.get(k)
        if own is None or coefs.get(own, 0.0) != 0.0:
            assert np.abs(g).max() > 0, k
    return errs, mine, ref, layer, sd, x


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_layer_matches_gmoe_ref(router):
    errs, *_ = _one_layer(router)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, bad


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_layer_matches_gmoe_ref_default_coefs(router):
    errs, *_ = _one_layer(router, coefs=gmoe_torch.DEFAULT_COEFS, top_k=3, seed=7)
    bad = {k: v for k, v in errs.items() if not v <= TOL}
    assert not bad, bad


def test_graph_is_nontrivial_and_matches_the_layer():
    """The parity graphs have expert-expert edges besides the diagonal, and
    the graph built here from the density rule is the layer's."""
    layer = _layer("graph")
    init = layer.state_dict()
    mask = gmoe_torch.expert_graph_mask(init["router.expert_features"],
                                        init["router.W_s.weight"], layer.edge_density)
    np.testing.assert_array_equal(mask.numpy().astype(np.int8), layer.adjacency[:-1, :-1])
    assert mask.sum() > E
    np.testing.assert_allclose(gmoe_torch.gcn_normalized_adjacency(mask).numpy(),
                               layer.normalized_adjacency, rtol=0, atol=1e-7)


def test_wrong_graph_is_rejected():
    """The adjacency check can fail: a graph built from a different W_s
    (here: the randomised one instead of the initial one) is refused."""
    layer = _layer("graph")
    sd = randomise(layer)
    f = layer._frozen
    with pytest.raises(ValueError, match="normalized_adjacency"):
        gmoe_torch.moe_from_state(f["W_in"], f["W_up"], f["W_out"], sd, "graph", E, 2, layer.r,
                                  layer.lora_alpha, "float64", edge_density=layer.edge_density)


def test_running_counts_advance_like_the_engine():
    """After a training forward the Normal running count is c = running + k *
    this batch's top-k weights per expert, as in MoELoRAFFN (float32 there)."""
    _, mine, _, layer, sd, x = _one_layer("graph")
    layer.forward(x.astype(np.float32), training=True)
    np.testing.assert_allclose(mine.normal_running.numpy(), layer.state_dict()["normal_running"],
                               rtol=1e-5)
    assert not np.allclose(mine.normal_running.numpy(), sd["normal_running"])
    before = mine.normal_running.clone()
    mine.eval()
    with torch.no_grad():
        mine(torch.tensor(x))
    assert torch.equal(mine.normal_running, before)     # eval forward: unchanged


def test_comparison_detects_a_wrong_lora_scale():
    """The 1e-10 bound is tight: a reference whose LoRA scale is 1e-6 off fails it."""
    layer = _layer("linear")
    sd = randomise(layer)
    f = layer._frozen
    mine = gmoe_torch.moe_from_state(f["W_in"], f["W_up"], f["W_out"], sd, "linear", E, 2,
                                     layer.r, layer.lora_alpha * (1 + 1e-6), "float64")
    ref = GMoERef(layer)
    x = torch.tensor(np.random.default_rng(0).normal(0, 1, (9, H)))
    ry, _, _ = ref.forward(x)
    assert _rel(mine(x).detach(), ry.detach()) > TOL


# ---------------------------------------------------------------- whole model

PROMPTS = ["The cat sat on the", "Question: what is two plus two? Answer:", "Hello",
           "A much longer prompt about graphs, nodes and edges that keeps going for a while"]
ANSWERS = [" mat.", " four", " world and everyone in it", " yes"]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param,
                          gguf_types=("F32",), layers=2)


def _seqs(tiny):
    _, tok = _load(tiny.hf_dir)
    seqs, starts = [], []
    for p, a in zip(PROMPTS, ANSWERS):
        pi = tok(p, add_special_tokens=True)["input_ids"]
        ai = tok(a, add_special_tokens=False)["input_ids"]
        seqs.append(np.array(pi + ai, dtype=np.int64))
        starts.append(len(pi))
    return seqs, starts


def _plain_ce(model, seqs, starts):
    total, n_t = 0.0, 0
    with torch.no_grad():
        for s, a in zip(seqs, starts):
            ids = torch.tensor(s)[None]
            labels = ids.clone()
            labels[0, :a] = -100
            logits = model(input_ids=ids).logits[0]
            total += torch.nn.functional.cross_entropy(logits[:-1], labels[0, 1:],
                                                       ignore_index=-100, reduction="sum").item()
            n_t += int((labels[0, 1:] != -100).sum())
    return total / n_t


@pytest.mark.parametrize("router", ["graph", "linear"])
def test_zero_b_model_equals_plain_model(tiny, router):
    """All B zero and zero aux weights: every expert computes the plain MLP and
    the renormalised top-k weights sum to 1, LoRA adds nothing, so the
    patched model's loss is the plain model's answer CE (packed or padded)."""
    seqs, starts = _seqs(tiny)
    plain = copy.deepcopy(_load(tiny.hf_dir)[0]).double()
    want = _plain_ce(plain, seqs, starts)
    method = "mixlora" if router == "linear" else "gmoe"
    obj = gmoe_torch.build(tiny.hf_dir, None, method, router, experts=4, top_k=2, r=2, alpha=4,
                           dtype="float64", coefs={}, seed=1)
    assert all(not np.any(v) for k, v in obj.state().items() if k.endswith("lora_B.weight"))
    loss, grads, aux, routes = gmoe_torch.loss_and_grads(obj, seqs, starts)
    assert abs(loss - want) <= 1e-12 * abs(want), (loss, want)
    n_tok = sum(len(s) for s in seqs)
    assert len(routes) == len(aux) == 2
    for probs, idx in routes:
        assert probs.shape == (n_tok, 4) and idx.shape == (n_tok, 2)
        np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    # every B has a gradient (the A's have none while B = 0)
    assert all(np.abs(g).max() > 0 for k, g in grads.items() if k.endswith("lora_B.weight"))
    # and the random prompts make every expert of every layer win some tokens
    # in at least one layer (not a degenerate router)
    assert any(len(np.unique(idx)) == 4 for _, idx in routes)


def test_total_loss_is_ce_plus_weighted_aux(tiny):
    """With nonzero B and the default weights: loss = CE + sum coef * aux, and
    the switch router (top-1, unnormalised weight) changes the output."""
    seqs, starts = _seqs(tiny)
    obj = gmoe_torch.build(tiny.hf_dir, None, "gmoe", "graph", experts=4, top_k=2, r=2, alpha=4,
                           dtype="float64", seed=2)
    total, ce, aux = obj.forward_loss(seqs, starts)
    want = ce.item() + sum(gmoe_torch.DEFAULT_COEFS[k] * v.item()
                           for a in aux for k, v in a.items())
    assert abs(total.item() - want) <= 1e-12 * abs(want)
    assert set(aux[0]) == {"poisson", "normal"}
    sw = gmoe_torch.build(tiny.hf_dir, None, "gmoe", "switch", experts=4, top_k=2, r=2, alpha=4,
                          dtype="float64", coefs={}, seed=2)
    loss, _, aux_sw, routes = gmoe_torch.loss_and_grads(sw, seqs, starts)
    assert set(aux_sw[0]) == {"balance", "z"} and routes[0][1].shape[1] == 1
    plain = copy.deepcopy(_load(tiny.hf_dir)[0]).double()
    assert abs(loss - _plain_ce(plain, seqs, starts)) > 1e-6


def _randomise_state(st, seed, n_experts):
    """Random trainable tensors (B != 0, router sized so the softmax is not
    saturated, lambda inside its clamp) and random running counts."""
    rng = np.random.default_rng(seed)
    out = dict(st)
    for k, v in st.items():
        if k.endswith(("router.expert_features", "router.normalized_adjacency")):
            continue
        if k.endswith("poisson_lambda"):
            out[k] = np.array(rng.uniform(1.2, 1.8), np.float32)
        elif k.endswith("normal_sigma"):
            out[k] = np.array(rng.uniform(0.6, 1.4) * n_experts / 2, np.float32)
        elif k.endswith("normal_running"):
            out[k] = rng.uniform(5.0, 50.0, v.shape)
        elif k.endswith("lora_B.weight"):
            out[k] = (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
        else:   # A's and router matrices: std 1/sqrt(fan_in)
            out[k] = (rng.standard_normal(v.shape) / np.sqrt(v.shape[-1])).astype(np.float32)
    return out


def _composed_reference(model, st, st0, router, seqs, starts, coefs, experts=4, top_k=2, r=2,
                        alpha=4.0, seed=3):
    """An independent composition of the same loss: each example alone through
    the unpatched HF model with LoRA forwards patched in (as
    test_finetune_grad.torch_loss_and_grads) and every mlp replaced by a
    per-layer GMoERef (dense experts, dense GCN); the aux losses of each layer
    from GMoERef on all examples' tokens of that layer, concatenated."""
    dt = torch.float64
    scale = alpha / r
    params = {}
    refs, seen = [], []
    patched = []
    pre0 = "base_model.model.model.layers"
    for i, layer in enumerate(model.model.layers):
        for m in gmoe_torch.ATTN_MODULES:
            pre = f"{pre0}.{i}.self_attn.{m}_proj."
            A = params[pre + "lora_A.weight"] = torch.tensor(st[pre + "lora_A.weight"], dtype=dt,
                                                             requires_grad=True)
            B = params[pre + "lora_B.weight"] = torch.tensor(st[pre + "lora_B.weight"], dtype=dt,
                                                             requires_grad=True)
            mod = getattr(layer.self_attn, f"{m}_proj")
            mod.forward = (lambda x, _f=mod.forward, A=A, B=B: _f(x) + scale * (x @ A.T) @ B.T)
            patched.append(mod)
        mlp = layer.mlp
        bw = {k: getattr(mlp, n).weight.detach().numpy() for k, n in
              (("W1", "gate_proj"), ("W3", "up_proj"), ("W2", "down_proj"))}
        pre = f"{pre0}.{i}.mlp."
        ffn = MoELoRAFFN(bw, "swiglu", num_experts=experts, top_k=top_k, r=r, lora_alpha=alpha,
                         router=router, seed=seed + i)
        init = ffn.state_dict()
        for k, v in init.items():     # the same initial layer as init_state(seed) built
            np.testing.assert_array_equal(v, st0[pre + k])
        ref = GMoERef(ffn)             # the expert graph from the initial W_s
        ref.load({k: st[pre + k] for k in init})
        for k, p in ref.params.items():
            params[pre + k] = p
        xs = []

        def mlp_forward(x, ref=ref, xs=xs, run=st.get(pre + "normal_running")):
            y, _, _ = ref.forward(x[0], running=run)
            xs.append(x[0])
            return y[None]

        mlp.forward = mlp_forward
        patched.append(mlp)
        refs.append(ref)
        seen.append(xs)
    try:
        total, n_t = 0.0, 0
        for s, a in zip(seqs, starts):
            ids = torch.tensor(s)[None]
            labels = ids.clone()
            labels[0, :a] = -100
            logits = model(input_ids=ids).logits[0]
            total = total + torch.nn.functional.cross_entropy(
                logits[:-1], labels[0, 1:], ignore_index=-100, reduction="sum")
            n_t += int((labels[0, 1:] != -100).sum())
        loss = total / n_t
        routes = []
        for i, (ref, xs) in enumerate(zip(refs, seen)):
            X = torch.cat(xs, dim=0)
            _, aux, topi = ref.forward(X, running=st.get(f"{pre0}.{i}.mlp.normal_running"))
            probs = torch.softmax(ref.logits(X), dim=-1)
            routes.append((probs.detach().numpy(), topi.numpy()))
            for k, v in aux.items():
                loss = loss + coefs.get(k, 0.0) * v
        loss.backward()
        grads = {k: (p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape)))
                 for k, p in params.items()}
        return loss.item(), grads, routes
    finally:
        for mod in patched:
            del mod.forward


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_whole_model_matches_per_layer_reference(tiny, router):
    """The patched model (padded batch, masked routing, GCNConv, expert loop)
    against the independent composition above: loss, router outputs and
    every gradient within 1e-10 in float64."""
    seqs, starts = _seqs(tiny)
    model = copy.deepcopy(_load(tiny.hf_dir)[0]).double()
    st0 = gmoe_torch.init_state(model, router, experts=4, top_k=2, r=2, alpha=4, seed=3)
    st = _randomise_state(st0, 11, 4)
    coefs = {"poisson": 0.05, "normal": 0.5, "balance": 0.1, "z": 0.01}
    method = "mixlora" if router == "linear" else "gmoe"
    obj = gmoe_torch.build(tiny.hf_dir, st, method, router, experts=4, top_k=2, r=2, alpha=4,
                           dtype="float64", graph_state=st0, coefs=coefs)
    loss, grads, aux, routes = gmoe_torch.loss_and_grads(obj, seqs, starts)
    ref_loss, ref_grads, ref_routes = _composed_reference(model, st, st0, router, seqs, starts,
                                                          coefs)
    assert abs(loss - ref_loss) <= TOL * abs(ref_loss), (loss, ref_loss)
    assert set(grads) == set(ref_grads)
    bad = {}
    for k, g in ref_grads.items():
        assert np.abs(g).max() > 0, k
        e = _rel(grads[k], g)
        if not e <= TOL:
            bad[k] = e
    assert not bad, bad
    for (p, i), (rp, ri) in zip(routes, ref_routes):
        np.testing.assert_array_equal(i, ri)
        assert _rel(p, rp) <= TOL
    # the graph router's running counts advanced by this training forward
    if router == "graph":
        pre = "base_model.model.model.layers.0.mlp."
        new = obj.state()[pre + "normal_running"]
        assert new.sum() > st[pre + "normal_running"].sum()


class _Float32Trainer:
    """The engine Trainer's GMoE contract implemented with gmoe_torch in
    float32 (a stand-in to check that test_finetune_gmoe_grad can pass and
    can fail); ``alpha_error`` makes its LoRA scale that much off."""

    alpha_error = 0.0

    def __init__(self, path, method, router, experts, top_k, r, alpha, seed, dropout=0.0,
                 graph_balance=False):
        from engine_py.finetune import Trainer

        assert dropout == 0.0   # the reference has no LoRA dropout
        self.path, self.kw = path, dict(method=method, router=router, experts=experts,
                                        top_k=top_k, r=r, alpha=alpha, graph_balance=graph_balance)
        self.obj = gmoe_torch.build(path, None, dtype="float32", seed=seed, **self.kw)
        self.init = self.obj.state()
        self._tok = Trainer(path, r=r, alpha=alpha)      # its tokenization (_pairs) only

    def _pairs(self, prompts, answers):
        return self._tok._pairs(prompts, answers)

    def lora_state(self, grads=False):
        return dict(self._grads) if grads else self.obj.state()

    def moe_buffers_state(self):
        return {}   # lora_state already holds the buffers (the Trainer keeps them apart)

    def set_lora_state(self, st):
        kw = dict(self.kw, alpha=self.kw["alpha"] * (1 + self.alpha_error))
        self.obj = gmoe_torch.build(self.path, st, dtype="float32", graph_state=self.init, **kw)

    def loss_and_grads(self, prompts, answers):
        seqs, starts = self._pairs(prompts, answers)
        loss, self._grads, _, self._routes = gmoe_torch.loss_and_grads(self.obj, seqs, starts)
        return loss, None

    def router_stats(self):
        return [{"probs": p, "idx": i} for p, i in self._routes]


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_parity_test_passes_float32_and_rejects_a_wrong_scale(tiny, router, monkeypatch):
    """tests/test_finetune_gmoe_grad.py (which needs the engine's GMoE
    Trainer) run against a float32 PyTorch implementation of the same
    contract: it passes (float32 rounding is far inside 1e-4) and it fails
    when the LoRA scale is 0.1% off."""
    import test_finetune_gmoe_grad as parity

    monkeypatch.setattr(parity, "Trainer", _Float32Trainer)
    worst = parity._compare(tiny.hf_dir, router)
    assert worst < 5e-5, worst   # far inside the test's 1e-4
    monkeypatch.setattr(_Float32Trainer, "alpha_error", 1e-3)
    with pytest.raises(AssertionError):
        parity._compare(tiny.hf_dir, router)


def test_train_steps_reduce_the_loss(tiny):
    """train_step (AdamW on every trainable tensor, then lambda / sigma
    projected) lowers the loss on a fixed batch, and time_train_steps runs
    the routers interleaved on the same batch."""
    seqs, starts = _seqs(tiny)
    obj = gmoe_torch.build(tiny.hf_dir, None, "gmoe", "graph", experts=4, top_k=2, r=2, alpha=4,
                           dtype="float32", seed=4)
    opt = gmoe_torch.make_optimizer(obj, lr=3e-4, weight_decay=0.0)
    losses = [gmoe_torch.train_step(obj, opt, seqs, starts) for _ in range(6)]
    # (at init the Normal balance term, weight 8 per layer, is most of the loss)
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < losses[0] - 1.0, losses
    for m in obj.moes:
        assert 1.0 <= m.poisson_lambda.item() <= 2.0
        assert m.normal_sigma.item() >= gmoe_torch.SIGMA_MIN
        assert float(m.normal_running.sum()) > 0
    out = gmoe_torch.time_train_steps(tiny.hf_dir, routers=("graph", "linear"), experts=4,
                                      batch=3, tokens=12, steps=1, vocab_lo=10)
    assert out["tokens"] > 0
    for router in ("graph", "linear"):
        assert len(out[router]["seconds"]) == 1 and out[router]["median"] > 0
