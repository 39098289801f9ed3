"""GMoE / MixLoRA fine-tuning parity (issue 17, item 2): loss, router outputs
and every trainable gradient of engine_py's Trainer(method="gmoe" |
"mixlora") against the official-style PyTorch model of
engine_py.bench.gmoe_torch in float64 (transformers decoder, plain-torch LoRA
on q, k, v, o, a MixLoRA MoE in every layer's MLP with the torch_geometric
GCN router / linear / switch router and the auxiliary losses), on tiny
random Llama and Qwen2 models with packed variable-length examples whose
prompt tokens are labelled -100. Tolerance: max abs error / max abs value
<= 1e-4 per tensor; the loss within 1e-4 relative.

The engine side must provide (the contract of gmoe_torch's module docstring):
``Trainer(path, method, router, experts, top_k, r, alpha, seed)``;
``lora_state()`` with every trainable tensor under the PEFT-style names and
``moe_buffers_state()`` with the MoE buffers ``...mlp.router.expert_features``,
``...mlp.router.normalized_adjacency`` and ``...mlp.normal_running`` (the
reference rebuilds the expert graph from the initial W_s and expert
features and checks it against the buffer); ``set_lora_state(state)``
accepting both together; ``loss_and_grads`` returning
the TOTAL loss (mean answer CE + sum over layers of coef * aux with the
default coefficients) and filling ``lora_state(grads=True)`` (trainable
names only); ``router_stats()`` (see test body).
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("torch_geometric")

from llm_fixtures import write_tiny_llm, _load  # noqa: E402

from engine_py.bench import gmoe_torch  # noqa: E402
from engine_py.finetune import Trainer  # noqa: E402

PROMPTS = ["The cat sat on the", "Question: what is two plus two? Answer:", "Hello",
           "A much longer prompt about graphs, nodes and edges that keeps going for a while"]
ANSWERS = [" mat.", " four", " world and everyone in it", " yes"]
EXPERTS, TOP_K, R, ALPHA = 4, 2, 2, 4
BUFFERS = ("router.expert_features", "router.normalized_adjacency", "normal_running")
TOL = 1e-4
# a test point is used only if every routing decision of the float64
# reference is clear of ties by this margin (probability of the last chosen
# expert minus the next one), so that float32 rounding in the engine cannot
# flip a choice
MARGIN = 1e-4
# ... and every ReLU input of the graph router (token and expert projections,
# GCN layers) is this far from 0: at a kink, float32 rounding can put a
# pre-activation of ~1e-7 on the other side of 0 than float64 does, which
# moves that element's gradient by its full size (measured: one W_t element,
# 1% of the tensor's largest gradient, with a pre-activation of 3.7e-7)
RELU_MARGIN = 5e-6


def _is_buffer(name):
    return name.endswith(BUFFERS)


def _randomise(st, seed):
    """Every trainable tensor random (B != 0; A and router matrices std
    1/sqrt(fan_in), so the router softmax is not saturated; lambda inside its
    clamp [1, 2], sigma around N/2), the running counts random too; expert
    features and the normalised adjacency kept."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in st.items():
        v = np.asarray(v)
        if k.endswith(("router.expert_features", "router.normalized_adjacency")):
            out[k] = v.copy()
        elif k.endswith("normal_running"):
            out[k] = rng.uniform(5.0, 50.0, v.shape).astype(v.dtype)
        elif k.endswith("poisson_lambda"):
            out[k] = np.array(rng.uniform(1.2, 1.8), dtype=v.dtype)
        elif k.endswith("normal_sigma"):
            out[k] = np.array(rng.uniform(0.6, 1.4) * EXPERTS / 2, dtype=v.dtype)
        elif k.endswith("lora_B.weight"):
            out[k] = (rng.standard_normal(v.shape) * 0.3).astype(np.float32)
        else:
            # the graph router's expert-dependent terms (u = relu(W_s X) and
            # what the GCN makes of it) are small next to the token term that
            # every expert shares, so at std 1/sqrt(fan_in) everywhere its
            # probabilities are ~1/N +- 0.01 and near-ties everywhere; these
            # gains give probabilities in ~[0.03, 0.8]
            gain = (4.0 if k.endswith(("router.W_s.weight", "router.proj.weight")) else
                    2.0 if ".router.gcn." in k else 1.0)
            out[k] = (rng.standard_normal(v.shape) * gain / np.sqrt(v.shape[-1])).astype(np.float32)
    return out


def _well_conditioned(routes, top_k):
    """Every expert gets tokens in every layer and no top-k choice is near a tie."""
    for probs, idx in routes:
        if len(np.unique(idx)) < probs.shape[1]:
            return False
        s = -np.sort(-probs, axis=1)
        if top_k < probs.shape[1] and (s[:, top_k - 1] - s[:, top_k]).min() < MARGIN:
            return False
    return True


def _relu_inputs(ref):
    """Hooks recording min |ReLU input| of every graph router in ref: the
    outputs of W_s, W_t and each GCN layer (each is followed by a ReLU)."""
    seen = []
    for layer in ref.model.model.layers:
        rt = getattr(layer.mlp, "router", None)
        if not hasattr(rt, "gcn"):
            continue
        for mod in [rt.W_s, rt.W_t, *rt.gcn]:
            mod.register_forward_hook(
                lambda m, a, out: seen.append(float(out.detach().abs().min())))
    return seen


def _reference(path, st, st0, method, router, seqs, starts, graph_balance=False):
    """The float64 reference at the first randomisation seed whose routing is
    well conditioned: (state, loss, grads, routes)."""
    base = _load(path)[0]
    for seed in range(1, 40):
        s = _randomise(st, seed)
        ref = gmoe_torch.build(path, s, method, router, EXPERTS, TOP_K, R, ALPHA, "float64",
                               graph_state=st0, model=copy.deepcopy(base), graph_balance=graph_balance)
        relu_in = _relu_inputs(ref)
        loss, grads, _, routes = gmoe_torch.loss_and_grads(ref, seqs, starts)
        if _well_conditioned(routes, ref.top_k) and min(relu_in, default=1.0) >= RELU_MARGIN:
            return s, loss, grads, routes
    raise AssertionError("no well-conditioned randomisation found in 39 seeds")


def _compare(path, router, graph_balance=False):
    method = "mixlora" if router == "linear" else "gmoe"
    tr = Trainer(path, method=method, router=router, experts=EXPERTS, top_k=TOP_K, r=R,
                 alpha=ALPHA, seed=0, dropout=0.0,   # the reference has no LoRA dropout
                 graph_balance=graph_balance)
    st0 = {**tr.lora_state(), **tr.moe_buffers_state()}
    for i in range(2):
        for b in BUFFERS[:2] if router == "graph" else ():
            assert f"base_model.model.model.layers.{i}.mlp.{b}" in st0, b
    seqs, starts = tr._pairs(PROMPTS, ANSWERS)
    st, ref_loss, ref, ref_routes = _reference(path, st0, st0, method, router, seqs, starts,
                                               graph_balance)
    tr.set_lora_state(st)
    back = {**tr.lora_state(), **tr.moe_buffers_state()}
    for k, v in st.items():
        np.testing.assert_array_equal(back[k], v, err_msg=k)
    loss, _ = tr.loss_and_grads(PROMPTS, ANSWERS)
    grads = tr.lora_state(grads=True)
    # the total loss: answer CE + sum over layers of coef * aux
    assert abs(loss - ref_loss) <= TOL * abs(ref_loss), (loss, ref_loss)
    assert set(grads) == set(ref), (sorted(set(grads) ^ set(ref))[:6])
    assert not any(_is_buffer(k) for k in grads)
    worst = 0.0
    for k in ref:
        scale = np.abs(ref[k]).max()
        assert np.shape(grads[k]) == np.shape(ref[k]), k
        if scale == 0:
            # an expert of the last layer routed only tokens that predict no
            # answer token (prompt tokens' MLP output in the last layer reaches
            # only their own position): exactly zero on both sides
            assert not np.asarray(grads[k]).any(), k
            continue
        rel = float(np.abs(np.asarray(grads[k], np.float64) - ref[k]).max() / scale)
        worst = max(worst, rel)
        assert rel <= TOL, (k, rel)
    # Router outputs. DEPENDS ON A PROPOSED ENGINE API: Trainer.router_stats()
    # -> one dict per decoder layer with "probs" (n_tokens, N) and "idx"
    # (n_tokens, K) of the last forward, tokens in packed order (example by
    # example). If the engine exposes them under another name, adapt this
    # call; do not drop the check (issue 17 item 2 asks for router outputs).
    stats = tr.router_stats()
    assert len(stats) == len(ref_routes)
    for layer, (d, (rp, ri)) in enumerate(zip(stats, ref_routes)):
        np.testing.assert_array_equal(np.asarray(d["idx"]), ri, err_msg=f"layer {layer}")
        err = float(np.abs(np.asarray(d["probs"], np.float64) - rp).max())
        assert err <= TOL, (layer, err)
    return worst


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    return write_tiny_llm(tmp_path_factory.mktemp(request.param), request.param,
                          gguf_types=("F32",), layers=2)


@pytest.mark.parametrize("router", ["graph", "linear", "switch"])
def test_gmoe_grads_match_torch(tiny, router):
    worst = _compare(tiny.hf_dir, router)
    print(f"{tiny.arch} {router}: worst relative gradient error {worst:.3g}")


def test_gmoe_graph_balance_grads_match_torch(tiny):
    # Trainer(graph_balance=True): the graph router plus MixLoRA's load balance
    worst = _compare(tiny.hf_dir, "graph", graph_balance=True)
    print(f"{tiny.arch} graph + balance: worst relative gradient error {worst:.3g}")


def test_gmoe_gguf_grads_match_torch(tiny):
    # F32 GGUF: llama Q/K rows are stored permuted; the adapter names and B
    # rows stay in Hugging Face order (transformers un-permutes on load)
    worst = _compare(tiny.gguf["F32"], "graph")
    print(f"{tiny.arch} GGUF graph: worst relative gradient error {worst:.3g}")
