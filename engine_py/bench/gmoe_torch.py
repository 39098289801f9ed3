"""Official-style PyTorch GMoE / MixLoRA fine-tuning of a Llama or Qwen2 decoder.

The reference for the parity tests of engine_py's GMoE trainer and the
baseline of its speed benchmark. It is written the way a competent PyTorch
user (and the GMoE / MixLoRA reference code) writes it, not with
engine_py's shortcuts:

* a transformers ``LlamaForCausalLM`` / ``Qwen2ForCausalLM`` (a Hugging Face
  folder, or a ``.gguf`` file that transformers dequantizes), frozen;
* plain-torch LoRA on q, k, v, o: ``y = base(x) + (alpha/r) B(A(x))``;
* every decoder layer's ``mlp`` replaced by a MixLoRA MoE FFN
  (:class:`MixLoRAMoE` from :func:`moe_classes`): the frozen gate/up/down
  (W1, W3, W2) are shared, expert e owns LoRA pairs on each; ``W1 x`` and
  ``W3 x`` are computed once per token; the experts run in a loop, each on
  the tokens routed to it (gather, compute, ``index_add_``), as MixLoRA and
  HF Mixtral do;
* routers: ``"graph"`` (GMoE: frozen expert features X, u = relu(W_s X),
  t = relu(W_t x), one (N+1)-node graph per token — expert-expert edges from
  the density rule on |cos(u_e, u_f)|, the token node linked to every expert
  — batched as a block-diagonal graph and run through torch_geometric
  ``GCNConv`` (self-loops, symmetric normalisation, no bias), ReLU after each
  layer, projection g -> 1 on the expert nodes), ``"linear"`` (x W_g^T) and
  ``"switch"`` (top-1, weight = the unnormalised top-1 probability);
  softmax, top-k by a stable descending sort (ties -> lower expert index),
  weights renormalised (not for switch);
* auxiliary losses: graph -> Poisson distinction (lambda learnable, clamped
  to [1, 2]) and Normal balance (sigma learnable, clamped >= 1e-3, a running
  detached float64 count: c = running + k * this batch's top-k
  probabilities per expert before the renormalisation, as the official code
  (``normal_count="weights"``: the renormalised weights), ``running <- c``
  after every training forward), ``loss_form``
  "abs" (reference) or "kl"; linear/switch -> load balance N sum_e f_e P_e,
  switch also the z-loss mean(logsumexp(logits)^2).

The semantics per layer are those of :class:`engine_py.gmoe.MoELoRAFFN`
(kind "swiglu") and of tests/reference/gmoe_ref.py. Loss = mean cross-entropy
over the answer tokens + sum over layers of coef * aux
(:data:`DEFAULT_COEFS`).

Batches: the examples are right-padded into one (B, T) batch with an
attention mask (causal attention: a real token never sees a pad); the MoE
layers route the real tokens only (examples in order, each token in order —
the order of a packed batch), so the auxiliary losses cover exactly the
tokens of the examples, as in a packed batch without padding.

Parameter names (the contract with ``engine_py.finetune.Trainer.lora_state``):
``base_model.model.model.layers.{l}.self_attn.{q,k,v,o}_proj.lora_A.weight``
(r, in) / ``.lora_B.weight`` (out, r), Hugging Face row order, and with the
prefix ``base_model.model.model.layers.{l}.mlp.`` the names of
``MoELoRAFFN.state_dict()``: ``experts.{e}.{w1,w3,w2}.lora_A/B.weight``,
``router.weight`` (linear/switch), ``router.W_s.weight``,
``router.W_t.weight``, ``router.gcn.{j}.weight``, ``router.proj.weight``,
``poisson_lambda``, ``normal_sigma`` (graph); buffers
``router.expert_features``, ``router.normalized_adjacency`` (only checked
against the graph built here) and ``normal_running``.

The expert graph is built once, from the router's W_s and X *at
initialisation* (``graph_state``, default ``state``), like the GMoE code and
MoELoRAFFN; its GCN normalisation must equal the state's
``router.normalized_adjacency`` buffer (ValueError otherwise).

    from engine_py.bench import gmoe_torch
    obj = gmoe_torch.build(path, state, method="gmoe", router="graph", experts=8,
                           top_k=2, r=2, alpha=4, dtype="float64")
    loss, grads, aux, routes = gmoe_torch.loss_and_grads(obj, seqs, starts)
    opt = gmoe_torch.make_optimizer(obj)
    gmoe_torch.train_step(obj, opt, seqs, starts)
    gmoe_torch.time_train_steps(path, routers=("graph", "linear"))   # float32 step times

GCNConv runs with PyG's defaults (normalisation recomputed on every call, no
caching), as the GMoE code uses it.

torch, transformers and torch_geometric are imported inside the functions:
engine_py imports without them.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Optional, Sequence

import numpy as np

__all__ = ["DEFAULT_COEFS", "ATTN_MODULES", "GMoETorch", "build", "loss_and_grads", "train_step",
           "make_optimizer", "init_state", "moe_classes", "moe_from_state", "expert_graph_mask",
           "gcn_normalized_adjacency", "time_train_steps"]

#: loss weights (engine_py.gmoe.DEFAULT_LOSS_COEFS)
DEFAULT_COEFS = {"poisson": 0.005, "normal": 8.0, "balance": 0.01, "z": 0.001}
ATTN_MODULES = ("q", "k", "v", "o")
EPS = 1e-8
SIGMA_MIN = 1e-3
_PREFIX = "base_model.model."
_METHODS = ("gmoe", "mixlora")
_ROUTERS = ("graph", "linear", "switch")


def _torch_dtype(torch, dtype):
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        return getattr(torch, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


# ---------------------------------------------------------------- expert graph

def expert_graph_mask(X, W_s, edge_density: float):
    """(N, N) bool expert-expert mask (diagonal set) from the density rule on
    |cos| of the rows of u = relu(X W_s^T), computed in float64: tau = 1.00,
    0.99, ... until the marked fraction of the N^2 entries reaches
    edge_density (GMoE's construction, ALGORITHMS.md B.2)."""
    import torch

    X = torch.as_tensor(np.asarray(X, dtype=np.float64))
    W_s = torch.as_tensor(np.asarray(W_s, dtype=np.float64))
    u = torch.relu(X @ W_s.T)
    n = u.shape[0]
    nrm = u.norm(dim=1)
    denom = nrm[:, None] * nrm[None, :]
    safe = torch.where(denom > 0, denom, torch.ones_like(denom))
    cos = torch.where(denom > 0, (u @ u.T) / safe, torch.zeros_like(denom))
    a = cos.abs()
    eye = torch.eye(n, dtype=torch.bool)
    for k in range(101):
        tau = (100 - k) / 100.0
        m = (a >= tau) | eye
        if m.sum().item() / float(n * n) >= edge_density:
            return m
    return torch.ones(n, n, dtype=torch.bool)


def gcn_normalized_adjacency(mask):
    """D^-1/2 (A + I) D^-1/2 (float64, (N+1, N+1)) of one token's graph:
    experts 0..N-1 with the mask's edges, the token node N linked to every
    expert, self-loops once (PyG's add_remaining_self_loops)."""
    import torch

    n = mask.shape[0]
    A = torch.ones(n + 1, n + 1, dtype=torch.float64)
    A[:n, :n] = torch.as_tensor(mask).to(torch.float64)
    A.fill_diagonal_(1.0)
    dinv = A.sum(dim=1).pow(-0.5)
    return dinv[:, None] * A * dinv[None, :]


# ---------------------------------------------------------------- modules

@functools.lru_cache(maxsize=None)
def moe_classes():
    """The torch modules (defined lazily so that this module imports without
    torch): ``(LoRALinear, LoRAPair, GraphRouter, MixLoRAMoE)``."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    from torch_geometric.nn import GCNConv

    class LoRAPair(nn.Module):
        """lora_A (r, in) then lora_B (out, r), no scale: B(A(x))."""

        def __init__(self, fin, fout, r, dtype):
            super().__init__()
            self.lora_A = nn.Linear(fin, r, bias=False, dtype=dtype)
            self.lora_B = nn.Linear(r, fout, bias=False, dtype=dtype)

        def forward(self, x):
            return self.lora_B(self.lora_A(x))

    class LoRALinear(nn.Module):
        """A frozen nn.Linear plus scale * B(A(x)) (PEFT's parameter names)."""

        def __init__(self, base, r, scale, dtype):
            super().__init__()
            self.base_layer = base
            self.scale = scale
            self.lora_A = nn.Linear(base.in_features, r, bias=False, dtype=dtype)
            self.lora_B = nn.Linear(r, base.out_features, bias=False, dtype=dtype)

        def forward(self, x):
            return self.base_layer(x) + self.scale * self.lora_B(self.lora_A(x))

    class Expert(nn.Module):
        """One MixLoRA expert: LoRA pairs on the shared gate (w1), up (w3), down (w2)."""

        def __init__(self, H, I, r, dtype):
            super().__init__()
            self.w1 = LoRAPair(H, I, r, dtype)
            self.w3 = LoRAPair(H, I, r, dtype)
            self.w2 = LoRAPair(I, H, r, dtype)

    class GraphRouter(nn.Module):
        """GMoE's router: a GCN over one (N+1)-node graph per token, all
        tokens of a batch as one block-diagonal graph (torch_geometric)."""

        def __init__(self, H, N, g, gcn_layers, mask, dtype):
            super().__init__()
            self.N = N
            self.register_buffer("expert_features", torch.zeros(N, H, dtype=dtype))
            self.W_s = nn.Linear(H, g, bias=False, dtype=dtype)
            self.W_t = nn.Linear(H, g, bias=False, dtype=dtype)
            self.gcn = nn.ModuleList([GCNConv(g, g, bias=False).to(dtype)
                                      for _ in range(gcn_layers)])
            self.proj = nn.Linear(g, 1, bias=False, dtype=dtype)
            # one token's graph: expert-expert edges (diagonal included, as
            # mask.nonzero gives them; GCNConv keeps one self-loop per node),
            # token node N <-> every expert
            ee = torch.as_tensor(mask).nonzero().T
            tok = torch.arange(N)
            te = torch.cat([torch.stack([tok, torch.full_like(tok, N)]),
                            torch.stack([torch.full_like(tok, N), tok])], dim=1)
            self.register_buffer("one_graph", torch.cat([ee, te], dim=1), persistent=False)
            # the normalisation GCNConv applies to each block (for state() only)
            self.register_buffer("normalized_adjacency",
                                 gcn_normalized_adjacency(mask).to(dtype), persistent=False)
            self._batch_graphs = {}

        def batch_graph(self, T):
            """edge_index of T disjoint copies (token t's nodes t*(N+1) + [0..N]);
            built once per batch size, as the GMoE code prebuilds its block graphs."""
            ei = self._batch_graphs.get(T)
            if ei is None:
                off = (torch.arange(T) * (self.N + 1)).repeat_interleave(self.one_graph.shape[1])
                ei = self.one_graph.repeat(1, T) + off[None, :]
                self._batch_graphs = {T: ei}
            return ei

        def forward(self, x):
            T, N = x.shape[0], self.N
            u = torch.relu(self.W_s(self.expert_features))           # (N, g)
            t = torch.relu(self.W_t(x))                                # (T, g)
            h = torch.cat([u.unsqueeze(0).expand(T, N, -1), t.unsqueeze(1)], dim=1)
            h = h.reshape(T * (N + 1), -1)
            ei = self.batch_graph(T)
            for conv in self.gcn:
                h = torch.relu(conv(h, ei))
            h = h.reshape(T, N + 1, -1)[:, :N, :]
            return self.proj(h).squeeze(-1)                            # (T, N)

    class MixLoRAMoE(nn.Module):
        """MixLoRA MoE FFN over a frozen SwiGLU MLP (gate_proj W1, up_proj W3,
        down_proj W2) with a graph / linear / switch router.

        ``forward(x)``: x (..., H). With ``token_mask`` set (a bool tensor of
        x's leading shape) only those tokens are routed and the others get a
        zero output. After a forward: ``aux`` (dict of scalar tensors: poisson
        and normal, or balance (+ z)), ``probs`` (n, N), ``topk_idx`` (n, K)
        and ``topk_weight`` (n, K); in training mode the Normal running count
        is advanced.
        """

        def __init__(self, W1, W3, W2, router, num_experts, top_k, r, alpha, dtype,
                     gcn_dim=128, gcn_layers=2, expert_mask=None, loss_form="abs",
                     normal_count="topk_probs"):
            super().__init__()
            if normal_count not in ("topk_probs", "weights"):
                raise ValueError(f"normal_count must be 'topk_probs' or 'weights', got "
                                 f"{normal_count!r}")
            self.normal_count = normal_count
            self.graph_balance = False   # build(graph_balance=True) sets it
            if router not in _ROUTERS:
                raise ValueError(f"router must be one of {_ROUTERS}, got {router!r}")
            if loss_form not in ("abs", "kl"):
                raise ValueError(f"loss_form must be 'abs' or 'kl', got {loss_form!r}")
            I, H = W1.shape
            self.router_kind, self.N = router, int(num_experts)
            self.K = 1 if router == "switch" else int(top_k)
            self.scale = float(alpha) / int(r)
            self.kl = loss_form == "kl"
            self.gate_proj = nn.Linear(H, I, bias=False, dtype=dtype)
            self.up_proj = nn.Linear(H, I, bias=False, dtype=dtype)
            self.down_proj = nn.Linear(I, H, bias=False, dtype=dtype)
            with torch.no_grad():
                for lin, w in ((self.gate_proj, W1), (self.up_proj, W3), (self.down_proj, W2)):
                    lin.weight.copy_(torch.as_tensor(np.asarray(w)))
                    lin.weight.requires_grad_(False)
            self.experts = nn.ModuleList([Expert(H, I, r, dtype) for _ in range(self.N)])
            if router == "graph":
                if expert_mask is None:
                    raise ValueError("the graph router needs expert_mask (N, N)")
                self.router = GraphRouter(H, self.N, gcn_dim, gcn_layers, expert_mask, dtype)
                self.poisson_lambda = nn.Parameter(torch.tensor(1.5, dtype=dtype))
                self.normal_sigma = nn.Parameter(torch.tensor(self.N / 2.0, dtype=dtype))
                self.register_buffer("normal_running", torch.zeros(self.N, dtype=torch.float64))
            else:
                self.router = nn.Linear(H, self.N, bias=False, dtype=dtype)
            self.token_mask = None
            self.aux = {}
            self.probs = self.topk_idx = self.topk_weight = None

        # ---------------------------------------------------- losses
        def _term(self, q, v):
            d = torch.log(q) - torch.log(v + EPS)
            return q * (d if self.kl else d.abs())

        def poisson_loss(self, probs):
            lam = torch.clamp(self.poisson_lambda, 1.0, 2.0)
            i = torch.arange(1, self.N + 1, dtype=probs.dtype)
            q = torch.softmax(torch.distributions.Poisson(lam).log_prob(i), dim=0)
            v, _ = torch.sort(probs, dim=-1, descending=True, stable=True)
            return self._term(q[None, :], v).sum(dim=-1).mean()

        def normal_loss(self, topi, w):
            N = self.N
            cur = torch.zeros(N, dtype=w.dtype).index_add(0, topi.reshape(-1), w.reshape(-1))
            c = self.normal_running.to(w.dtype) + self.K * cur
            v, _ = torch.sort(c, descending=True, stable=True)
            v = v / c.sum()
            sigma = torch.clamp(self.normal_sigma, min=SIGMA_MIN)
            dist = torch.distributions.Normal(torch.tensor(N / 2.0, dtype=w.dtype), sigma)
            q = torch.softmax(dist.log_prob(torch.arange(N, dtype=w.dtype)), dim=0)
            q, _ = torch.sort(q, descending=True, stable=True)
            return self._term(q, v).sum(), c

        # ---------------------------------------------------- forward
        def moe(self, x):
            """x (n, H) -> y (n, H); sets aux, probs, topk_idx, topk_weight."""
            n, N, K = x.shape[0], self.N, self.K
            logits = self.router(x)
            probs = torch.softmax(logits, dim=-1)
            sv, si = torch.sort(probs, dim=-1, descending=True, stable=True)
            topv, topi = sv[:, :K], si[:, :K]
            w = topv if self.router_kind == "switch" else topv / topv.sum(dim=-1, keepdim=True)
            # the frozen input products once per token, shared by every expert
            g0 = self.gate_proj(x)
            u0 = self.up_proj(x)
            s = self.scale
            y = torch.zeros_like(x)
            expert_mask = F.one_hot(topi, num_classes=N).permute(2, 1, 0)   # (N, K, n)
            for e in range(N):
                slot, tok = torch.where(expert_mask[e])
                if tok.numel() == 0:
                    continue
                ex = self.experts[e]
                xe = x[tok]
                g = g0[tok] + s * ex.w1(xe)
                u = u0[tok] + s * ex.w3(xe)
                a = F.silu(g) * u
                out = self.down_proj(a) + s * ex.w2(a)
                y.index_add_(0, tok, out * w[tok, slot, None])
            aux = {}
            if self.router_kind == "graph":
                aux["poisson"] = self.poisson_loss(probs)
                # the official code counts the top-k probabilities before the
                # renormalisation ("weights": the renormalised weights)
                aux["normal"], c = self.normal_loss(
                    topi, topv if self.normal_count == "topk_probs" else w)
                if self.training:
                    with torch.no_grad():
                        self.normal_running.copy_(c.detach().to(torch.float64))
            if self.router_kind != "graph" or self.graph_balance:
                # MixLoRA's load balance (on the graph router: engine_py's
                # graph_balance option; the GMoE reference has none)
                counts = torch.bincount(topi.reshape(-1), minlength=N).to(x.dtype)
                f = counts / (n * K)
                aux["balance"] = N * (f * probs.mean(dim=0)).sum()
            if self.router_kind == "switch":
                aux["z"] = (torch.logsumexp(logits, dim=-1) ** 2).mean()
            self.aux = aux
            self.probs, self.topk_idx, self.topk_weight = probs, topi, w
            return y

        def forward(self, hidden):
            if self.token_mask is None:
                lead = hidden.shape[:-1]
                return self.moe(hidden.reshape(-1, hidden.shape[-1])).reshape(*lead, -1)
            y = self.moe(hidden[self.token_mask])
            out = hidden.new_zeros(hidden.shape)
            out[self.token_mask] = y
            return out

        def load_contract_state(self, state: dict) -> None:
            """Load MoELoRAFFN.state_dict()-named tensors (exact trainable key
            set); buffers expert_features (graph, required) and normal_running
            (optional, default zeros); router.normalized_adjacency is ignored
            here (moe_from_state checks it against the graph)."""
            own = dict(self.named_contract_parameters())
            missing = sorted(set(own) - set(state))
            buffers = {"router.expert_features", "router.normalized_adjacency", "normal_running"}
            extra = sorted(set(state) - set(own) - buffers)
            if missing or extra:
                raise KeyError(f"MoE state keys differ: missing {missing[:4]}, "
                               f"unexpected {extra[:4]}")
            with torch.no_grad():
                for k, p in own.items():
                    v = torch.as_tensor(np.asarray(state[k], dtype=np.float64))
                    if tuple(v.shape) != tuple(p.shape):
                        raise ValueError(f"{k} has shape {tuple(v.shape)}, "
                                         f"expected {tuple(p.shape)}")
                    p.copy_(v.to(p.dtype))
                if self.router_kind == "graph":
                    if "router.expert_features" not in state:
                        raise KeyError("the graph router needs router.expert_features")
                    X = torch.as_tensor(np.asarray(state["router.expert_features"], np.float64))
                    self.router.expert_features.copy_(X.to(self.router.expert_features.dtype))
                    run = state.get("normal_running")
                    run = (torch.zeros(self.N, dtype=torch.float64) if run is None
                           else torch.as_tensor(np.asarray(run, np.float64)))
                    self.normal_running.copy_(run)

        def named_contract_parameters(self):
            """(MoELoRAFFN.state_dict name, parameter) for the trainable ones."""
            for k, p in self.named_parameters():
                if p.requires_grad:
                    # PyG's GCNConv keeps its weight in .lin
                    yield re.sub(r"^router\.gcn\.(\d+)\.lin\.weight$", r"router.gcn.\1.weight",
                                 k), p

    return LoRALinear, LoRAPair, GraphRouter, MixLoRAMoE


def moe_from_state(W1, W3, W2, state: dict, router: str, num_experts: int, top_k: int, r: int,
                   alpha: float, dtype="float64", edge_density: float = 0.25,
                   graph_state: Optional[dict] = None, loss_form: str = "abs",
                   normal_count: str = "topk_probs"):
    """One MixLoRAMoE from frozen SwiGLU weights and a MoELoRAFFN.state_dict()-named
    dict (no prefix). The expert graph comes from graph_state's (default
    state's) W_s and expert features; it must match state's
    router.normalized_adjacency when that is present."""
    import torch

    dt = _torch_dtype(torch, dtype)
    *_, MixLoRAMoE = moe_classes()
    mask, g, n_gcn = None, 128, 0
    if router == "graph":
        gs = state if graph_state is None else graph_state
        mask = expert_graph_mask(gs["router.expert_features"], gs["router.W_s.weight"],
                                 edge_density)
        g = int(np.asarray(state["router.W_s.weight"]).shape[0])
        n_gcn = len([k for k in state if re.fullmatch(r"router\.gcn\.\d+\.weight", k)])
        if "router.normalized_adjacency" in state:
            mine = gcn_normalized_adjacency(mask).numpy()
            theirs = np.asarray(state["router.normalized_adjacency"], dtype=np.float64)
            if theirs.shape != mine.shape or not np.allclose(mine, theirs, rtol=0, atol=1e-6):
                raise ValueError("the expert graph built from the density rule (edge_density "
                                 f"{edge_density}) differs from the state's "
                                 "router.normalized_adjacency")
    m = MixLoRAMoE(W1, W3, W2, router, num_experts, top_k, r, alpha, dt, gcn_dim=g,
                   gcn_layers=n_gcn, expert_mask=mask, loss_form=loss_form,
                   normal_count=normal_count)
    m.load_contract_state(state)
    return m


# ---------------------------------------------------------------- the whole model

class GMoETorch:
    """A patched transformers decoder and its trainable parameters.

    Attributes: ``model`` (the patched HF model), ``moes`` (the MixLoRAMoE
    of every layer), ``params`` (contract name -> torch Parameter, the
    trainable ones), ``coefs``, ``dtype``, ``router``, ``method``,
    ``top_k`` (1 for switch).
    """

    def __init__(self, model, moes, params, coefs, dtype, router, method, top_k, pad_id):
        self.model, self.moes, self.params = model, moes, params
        self.coefs, self.dtype, self.router, self.method = coefs, dtype, router, method
        self.top_k, self.pad_id = top_k, pad_id

    def parameters(self):
        return list(self.params.values())

    def state(self) -> dict:
        """Contract-named copies (in the model's dtype; the running counts
        float64) of the parameters and the MoE buffers."""
        out = {k: p.detach().numpy().copy() for k, p in self.params.items()}
        for i, m in enumerate(self.moes):
            if m.router_kind == "graph":
                pre = f"{_PREFIX}model.layers.{i}.mlp."
                out[pre + "normal_running"] = m.normal_running.detach().numpy().copy()
                out[pre + "router.expert_features"] = (
                    m.router.expert_features.detach().numpy().copy())
                out[pre + "router.normalized_adjacency"] = (
                    m.router.normalized_adjacency.detach().numpy().copy())
        return out

    def forward_loss(self, seqs, starts):
        """(total loss tensor, CE tensor, aux per layer {name: tensor})."""
        import torch
        import torch.nn.functional as F

        seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
        if len(seqs) == 0 or len(seqs) != len(starts):
            raise ValueError("seqs and starts must be non-empty and of the same length")
        B, T = len(seqs), max(len(s) for s in seqs)
        ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.bool)
        for b, (s, a) in enumerate(zip(seqs, starts)):
            if not 1 <= int(a) < len(s):
                raise ValueError(f"example {b}: answer start {a} outside 1..{len(s) - 1}")
            ids[b, :len(s)] = torch.from_numpy(s)
            labels[b, a:len(s)] = torch.from_numpy(s[a:])
            mask[b, :len(s)] = True
        for m in self.moes:
            m.token_mask = mask
        try:
            logits = self.model(input_ids=ids, attention_mask=mask.long(), use_cache=False).logits
        finally:
            for m in self.moes:
                m.token_mask = None
        tgt = labels[:, 1:]
        n_t = int((tgt != -100).sum())
        if n_t == 0:
            raise ValueError("no answer tokens")
        ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                             ignore_index=-100, reduction="sum") / n_t
        total = ce
        aux = []
        for m in self.moes:
            aux.append(dict(m.aux))
            for k, v in m.aux.items():
                c = self.coefs.get(k, 0.0)
                if c != 0.0:
                    total = total + c * v
        return total, ce, aux


def init_state(model, router: str = "graph", experts: int = 8, top_k: int = 2, r: int = 2,
               alpha: float = 4.0, gcn_dim: int = 128, gcn_layers: int = 2,
               edge_density: float = 0.25, seed: int = 0) -> dict:
    """An initial contract state for a transformers decoder ``model``: the MoE
    parts from engine_py.gmoe.MoELoRAFFN's initialisation (one per layer,
    seed + layer), attention LoRA A Kaiming-uniform(a=sqrt 5), B zero."""
    from ..gmoe import MoELoRAFFN, _kaiming_uniform_a_sqrt5

    rng = np.random.default_rng(seed)
    st = {}
    for i, layer in enumerate(model.model.layers):
        for m in ATTN_MODULES:
            lin = getattr(layer.self_attn, f"{m}_proj")
            pre = f"{_PREFIX}model.layers.{i}.self_attn.{m}_proj."
            st[pre + "lora_A.weight"] = _kaiming_uniform_a_sqrt5(rng, (r, lin.in_features))
            st[pre + "lora_B.weight"] = np.zeros((lin.out_features, r), dtype=np.float32)
        mlp = layer.mlp
        bw = {k: getattr(mlp, n).weight.detach().float().numpy()
              for k, n in (("W1", "gate_proj"), ("W3", "up_proj"), ("W2", "down_proj"))}
        ffn = MoELoRAFFN(bw, "swiglu", num_experts=experts, top_k=top_k, r=r, lora_alpha=alpha,
                         router=router, gcn_layers=gcn_layers, gcn_dim=gcn_dim,
                         edge_density=edge_density, seed=seed + i)
        for k, v in ffn.state_dict().items():
            st[f"{_PREFIX}model.layers.{i}.mlp.{k}"] = v
    return st


def _load_model(path, torch):
    from transformers import AutoModelForCausalLM

    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(path):
        d, f = os.path.split(path)
        kw = {"gguf_file": f}
    else:
        d, kw = path, {}
    return AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw)


def build(model_dir_or_gguf, state: Optional[dict] = None, method: str = "gmoe",
          router: str = "graph", experts: int = 8, top_k: int = 2, r: int = 2,
          alpha: float = 4.0, dtype="float64", *, edge_density: float = 0.25,
          graph_state: Optional[dict] = None, coefs: Optional[dict] = None,
          loss_form: str = "abs", model=None, seed: int = 0,
          normal_count: str = "topk_probs", graph_balance: bool = False) -> GMoETorch:
    """Load the decoder, freeze it, attach LoRA on q, k, v, o and a MixLoRA
    MoE in every layer's mlp, and load ``state`` (contract names, see the
    module docstring; None: :func:`init_state`).

    method: "gmoe" or "mixlora" (a label: the router decides the
    computation). switch routes top-1 whatever top_k says (as MoELoRAFFN).
    graph_state: the state at initialisation, whose W_s and expert features
    define the expert graph (default: state). coefs: loss weights (default
    DEFAULT_COEFS; missing keys weigh 0). normal_count: what the Normal
    balance loss counts per routed slot, "topk_probs" (the official GMoE
    code: the top-k probabilities before renormalisation) or "weights" (the
    renormalised weights), as engine_py.gmoe.MoELoRAFFN. graph_balance: the graph
    router also adds MixLoRA's load-balance loss (weight coefs["balance"]), as
    Trainer(graph_balance=True). model: an already loaded
    transformers model to patch instead of loading one (it is modified).
    """
    import torch

    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if router not in _ROUTERS:
        raise ValueError(f"router must be one of {_ROUTERS}, got {router!r}")
    dt = _torch_dtype(torch, dtype)
    if model is None:
        model = _load_model(model_dir_or_gguf, torch)
    model = model.to(dt).eval()
    model.requires_grad_(False)
    if state is None:
        state = init_state(model, router, experts, top_k, r, alpha, edge_density=edge_density,
                           seed=seed)
    LoRALinear, *_ = moe_classes()
    scale = float(alpha) / int(r)
    params, seen = {}, set()
    moes = []
    for i, layer in enumerate(model.model.layers):
        for m in ATTN_MODULES:
            pre = f"{_PREFIX}model.layers.{i}.self_attn.{m}_proj."
            base = getattr(layer.self_attn, f"{m}_proj")
            lin = LoRALinear(base, int(r), scale, dt)
            for suf, mod in (("lora_A.weight", lin.lora_A), ("lora_B.weight", lin.lora_B)):
                if pre + suf not in state:
                    raise KeyError(f"state is missing {pre + suf}")
                v = torch.as_tensor(np.asarray(state[pre + suf], dtype=np.float64))
                if tuple(v.shape) != tuple(mod.weight.shape):
                    raise ValueError(f"{pre + suf} has shape {tuple(v.shape)}, expected "
                                     f"{tuple(mod.weight.shape)}")
                with torch.no_grad():
                    mod.weight.copy_(v.to(dt))
                params[pre + suf] = mod.weight
                seen.add(pre + suf)
            setattr(layer.self_attn, f"{m}_proj", lin)
        pre = f"{_PREFIX}model.layers.{i}.mlp."
        sub = {k[len(pre):]: v for k, v in state.items() if k.startswith(pre)}
        gsub = None
        if graph_state is not None:
            gsub = {k[len(pre):]: v for k, v in graph_state.items() if k.startswith(pre)}
        mlp = layer.mlp
        W = [getattr(mlp, n).weight.detach() for n in ("gate_proj", "up_proj", "down_proj")]
        moe = moe_from_state(*W, sub, router, experts, top_k, r, alpha, dt,
                             edge_density=edge_density, graph_state=gsub, loss_form=loss_form,
                             normal_count=normal_count)
        moe.graph_balance = bool(graph_balance) and router == "graph"
        layer.mlp = moe
        moes.append(moe)
        for k, p in moe.named_contract_parameters():
            params[pre + k] = p
        seen.update(pre + k for k in sub)
    extra = sorted(set(state) - seen)
    if extra:
        raise KeyError(f"state has tensors this model does not: {extra[:4]}")
    cfg = model.config
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (cfg.eos_token_id or 0)
    if isinstance(pad, (list, tuple)):
        pad = pad[0]
    return GMoETorch(model, moes, params, dict(DEFAULT_COEFS if coefs is None else coefs), dt,
                     router, method, moes[0].K, int(pad))


def loss_and_grads(obj: GMoETorch, seqs: Sequence, starts: Sequence[int], training: bool = True):
    """Total loss (mean answer CE + sum_layers coef * aux) and its gradients.

    Returns (loss float, {contract name: grad ndarray (zeros where no gradient
    flows)}, aux per layer [{name: float}], router outputs per layer
    [(probs (n_tok, N) ndarray, top-k idx (n_tok, K) int64 ndarray)]; tokens
    in packed order (example by example). training=True (a training forward)
    advances the graph router's Normal running counts.
    """
    for p in obj.params.values():
        p.grad = None
    for m in obj.moes:
        m.train(training)
    total, _, aux = obj.forward_loss(seqs, starts)
    total.backward()
    grads = {k: (p.grad.detach().numpy().copy() if p.grad is not None
                 else np.zeros(tuple(p.shape), dtype=p.detach().numpy().dtype))
             for k, p in obj.params.items()}
    aux_f = [{k: float(v.detach()) for k, v in a.items()} for a in aux]
    routes = [(m.probs.detach().numpy().copy(), m.topk_idx.detach().numpy().copy())
              for m in obj.moes]
    return float(total.detach()), grads, aux_f, routes


def make_optimizer(obj: GMoETorch, lr: float = 2e-4, weight_decay: float = 0.01):
    """torch.optim.AdamW over every trainable parameter (one group)."""
    import torch

    return torch.optim.AdamW(obj.parameters(), lr=lr, weight_decay=weight_decay)


def train_step(obj: GMoETorch, optimizer, seqs: Sequence, starts: Sequence[int]) -> float:
    """One training step: forward, backward, optimizer.step(); then lambda is
    projected into [1, 2] and sigma to >= 1e-3 (as MoELoRAFFN.step). Returns
    the loss."""
    import torch

    optimizer.zero_grad(set_to_none=True)
    for m in obj.moes:
        m.train(True)
    total, _, _ = obj.forward_loss(seqs, starts)
    total.backward()
    optimizer.step()
    with torch.no_grad():
        for m in obj.moes:
            if m.router_kind == "graph":
                m.poisson_lambda.clamp_(1.0, 2.0)
                m.normal_sigma.clamp_(min=SIGMA_MIN)
    return float(total.detach())


def time_train_steps(model_path, routers=("graph", "linear"), experts: int = 8, top_k: int = 2,
                     r: int = 2, alpha: float = 4.0, batch: int = 16, tokens: int = 70,
                     steps: int = 3, threads: Optional[int] = None, seed: int = 0,
                     vocab_lo: int = 100) -> dict:
    """Seconds per float32 train step (AdamW, lr 2e-4, weight decay 0.01) of
    each router in ``routers`` (one model each, built with :func:`init_state`)
    on the same ``batch`` random sequences of tokens +- 5 ids (the answer =
    the last 5). One warm-up step each, then ``steps`` rounds in which every
    router makes one step (interleaved, so load changes on a shared machine
    hit all alike). Returns {router: {"seconds": [...], "median": s,
    "tokens_per_s": real tokens / median}} and "threads", "tokens"."""
    import statistics
    import time

    import torch

    if isinstance(routers, str):
        routers = (routers,)
    if threads is not None:
        torch.set_num_threads(int(threads))
    runs = {}
    for router in routers:
        method = "mixlora" if router == "linear" else "gmoe"
        obj = build(model_path, None, method, router, experts, top_k, r, alpha, "float32",
                    seed=seed)
        runs[router] = (obj, make_optimizer(obj), [])
    V = next(iter(runs.values()))[0].model.config.vocab_size
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(vocab_lo, V, size=tokens + int(rng.integers(-5, 6)))
            for _ in range(batch)]
    starts = [len(s) - 5 for s in seqs]
    for obj, opt, _ in runs.values():
        train_step(obj, opt, seqs, starts)
    for _ in range(steps):
        for obj, opt, sec in runs.values():
            t0 = time.perf_counter()
            train_step(obj, opt, seqs, starts)
            sec.append(time.perf_counter() - t0)
    n_tok = sum(len(s) for s in seqs)
    out = {"threads": torch.get_num_threads(), "tokens": n_tok}
    for router, (_, _, sec) in runs.items():
        med = statistics.median(sec)
        out[router] = {"seconds": sec, "median": med, "tokens_per_s": n_tok / med}
    return out
