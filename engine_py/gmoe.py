"""GMoE: a MoE-LoRA FFN layer with linear, switch or graph (GCN) routing.

Implements ALGORITHMS.md §B (Bai et al., "GMoE: Empowering LLMs Fine-Tuning
via MoE Graph Collaboration", arXiv 2412.16216) on the C core:

* experts share the frozen FFN and own rank-r LoRA pairs on its projections
  (MixLoRA style); the output is the top-k mixture with renormalised weights;
* routers: ``"linear"`` (softmax top-k + load-balancing loss), ``"switch"``
  (top-1, Switch Transformer: the output is scaled by the raw top-1
  probability — renormalising a single weight would always give 1 and no
  router gradient — plus balance loss and z-loss) and ``"graph"`` (GMoE: a GCN
  over N expert nodes and one token node, + Poisson distinction and Normal
  balance losses);
* forward/backward in C, AdamW (PyTorch semantics) in ``step``.

Choices where ALGORITHMS.md leaves room (all documented here):

* graph router: expert features X (N, H) with d = the hidden size H, so the
  same kind of map projects experts (W_s: H -> g) and tokens (W_t: H -> g);
  act = ReLU (after W_s / W_t and after every GCN layer); no biases (the final
  g -> 1 projection's bias would cancel in the softmax). Init: X, W_s and the
  GCN weights Glorot-uniform, W_t Glorot-uniform with gain 100 (reference),
  the projection like nn.Linear. The expert-expert graph is built once at
  init from |cos(u_e, u_f)| of u = relu(X W_s^T) with the density rule
  (tau from 1.0 down in 0.01 steps until the marked fraction of the N^2
  entries, diagonal included, reaches edge_density); the token node links to
  every expert; GCN normalisation D^-1/2 (A + I) D^-1/2 (self-loops counted
  once, as PyG's add_remaining_self_loops). Exposed as ``adjacency`` (0/1)
  and ``normalized_adjacency``.
* Poisson: lambda = clamp(lambda_raw, 1, 2) in forward (torch.clamp
  gradient: zero outside [1, 2]) and lambda_raw is projected back into
  [1, 2] after every ``step``. eps = 1e-8.
* Normal: sigma = max(sigma_raw, 1e-3) in forward, projected after ``step``;
  mu = N/2; the running count is float64, detached, updated in training
  forward passes only: c = decay * running + k * (this batch's top-k
  softmax probabilities per expert, before the top-k renormalisation, as
  the official GMoE code accumulates them; ``normal_count="weights"``: the
  renormalised top-k weights instead); running <- c. decay =
  ``normal_running_decay``, 1 (the reference: the count never forgets) by
  default. The gradient flows through this batch's term only: with
  ``"topk_probs"`` into the softmax, so every logit gets it; with
  ``"weights"`` only into the split of each token's weight between its
  chosen experts (see docs/ALGORITHMS.md, "GMoE router collapse").
* ``graph_readout="shared"`` (the paper: one g -> 1 projection for every
  expert node) or ``"per_expert"`` (expert e has its own row of an (N, g)
  projection; engine_py's option against router collapse).
* ``loss_form="abs"`` (reference, default) or ``"kl"`` (true KL terms).
* Weight decay in ``step`` applies to every trainable parameter (one AdamW
  parameter group, as ``torch.optim.AdamW(module.parameters())``).

Parameter names (``state_dict``/``grads``), PEFT-like:
``experts.{e}.{proj}.lora_A.weight`` (r, in) and ``.lora_B.weight`` (out, r)
with proj in ``w1, w3, w2`` (SwiGLU gate, up, down) or ``wi, wo`` (BERT
intermediate, output); ``router.weight`` (N, H) for linear/switch; for graph
``router.W_s.weight`` (g, H), ``router.W_t.weight`` (g, H),
``router.gcn.{l}.weight`` (g, g), ``router.proj.weight`` (1, g) (per-expert
readout: (N, g)), ``poisson_lambda`` and ``normal_sigma`` (scalars); buffers (in
``state_dict`` only): ``router.expert_features`` (N, H),
``router.normalized_adjacency`` (N+1, N+1), ``normal_running`` (N,).
"""
from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from . import _core
from ._isa import warn_if_bf16_emulated
from ._validate import InvalidParameterError, check_bool, check_float, check_int

__all__ = ["MoELoRAFFN", "DEFAULT_LOSS_COEFS"]

#: Loss weights used by ``backward(dy, loss_coefs=None)``. ``z`` is the Switch
#: router z-loss weight (Switch Transformer's 1e-3).
DEFAULT_LOSS_COEFS = {"poisson": 0.005, "normal": 8.0, "balance": 0.01, "z": 0.001}

_KINDS = {"swiglu": 0, "gelu": 1}
_ROUTERS = ("graph", "linear", "switch")
_SIGMA_MIN = 1e-3
_EPS = 1e-8


def _kaiming_uniform_a_sqrt5(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """torch.nn.init.kaiming_uniform_(w, a=sqrt(5)) bound for a (out, in) weight."""
    fan_in = shape[-1]
    gain = math.sqrt(2.0 / (1.0 + 5.0))
    std = gain / math.sqrt(fan_in)
    bound = math.sqrt(3.0) * std
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def _glorot(rng: np.random.Generator, shape: tuple[int, int], gain: float = 1.0) -> np.ndarray:
    bound = gain * math.sqrt(6.0 / (shape[0] + shape[1]))
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


def build_expert_graph(u: np.ndarray, edge_density: float) -> tuple[np.ndarray, float]:
    """Expert-expert 0/1 adjacency (N, N) from |cos| of the rows of u.

    tau goes 1.00, 0.99, ... until the fraction of marked entries of the N^2
    (diagonal always marked) reaches edge_density. Returns (mask, tau).
    """
    u = np.asarray(u, dtype=np.float64)
    n = u.shape[0]
    norm = np.linalg.norm(u, axis=1)
    denom = np.outer(norm, norm)
    cos = np.divide(u @ u.T, denom, out=np.zeros((n, n)), where=denom > 0)
    a = np.abs(cos)
    eye = np.eye(n, dtype=bool)
    for k in range(101):
        tau = (100 - k) / 100.0
        mask = (a >= tau) | eye
        if mask.sum() / float(n * n) >= edge_density:
            return mask.astype(np.int8), tau
    return np.ones((n, n), dtype=np.int8), 0.0


def normalized_adjacency(expert_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N+1)x(N+1) 0/1 graph (experts + token node linked to all, self-loops)
    and its GCN normalisation D^-1/2 (A+I) D^-1/2 (float64)."""
    n = expert_mask.shape[0]
    a = np.ones((n + 1, n + 1), dtype=np.float64)
    a[:n, :n] = expert_mask
    np.fill_diagonal(a, 1.0)
    dinv = 1.0 / np.sqrt(a.sum(axis=1))
    return a.astype(np.int8), a * dinv[:, None] * dinv[None, :]


def init_moe_params(rng: np.random.Generator, hidden: int, inner: int, num_experts: int, r: int,
                    router: str, projs: tuple = ("w1", "w3", "w2"), gcn_layers: int = 2,
                    gcn_dim: int = 128, graph_readout: str = "shared") -> tuple[dict, dict]:
    """Fresh trainable parameters and buffers of one MoE-LoRA FFN, as
    MoELoRAFFN (and the decoder fine-tuning Trainer, per layer) start them:
    packed ``{"w1.A": (E, r, in), "w1.B": (E, out, r), ..., router ...}`` and
    buffers ``router.expert_features`` / ``normal_running`` (graph). Draws
    from rng in a fixed order. The expert graph is not built here."""
    E, H, I = num_experts, hidden, inner
    dims = {"w1": (H, I), "w3": (H, I), "w2": (I, H), "wi": (H, I), "wo": (I, H)}
    params: dict[str, np.ndarray] = {}
    for p in projs:
        fin, fout = dims[p]
        params[f"{p}.A"] = np.stack([_kaiming_uniform_a_sqrt5(rng, (r, fin)) for _ in range(E)])
        params[f"{p}.B"] = np.zeros((E, fout, r), dtype=np.float32)
    buffers: dict[str, np.ndarray] = {}
    if router in ("linear", "switch"):
        params["router.weight"] = _kaiming_uniform_a_sqrt5(rng, (E, H))
    else:
        g = gcn_dim
        buffers["router.expert_features"] = _glorot(rng, (E, H))
        params["router.W_s.weight"] = _glorot(rng, (g, H))
        params["router.W_t.weight"] = _glorot(rng, (g, H), gain=100.0)
        params["router.gcn"] = np.stack([_glorot(rng, (g, g)) for _ in range(gcn_layers)])
        # per-expert readout: N rows drawn like nn.Linear(g, 1)'s weight (the
        # first is the shared readout's draw; nothing is drawn after it)
        rows = E if graph_readout == "per_expert" else 1
        proj = _kaiming_uniform_a_sqrt5(rng, (rows, g))
        params["router.proj.weight"] = proj if rows > 1 else proj.reshape(g)
        params["poisson_lambda"] = np.array(1.5, dtype=np.float32)
        params["normal_sigma"] = np.array(E / 2.0, dtype=np.float32)
        buffers["normal_running"] = np.zeros(E, dtype=np.float64)
    return params, buffers


def graph_buffers(expert_features: np.ndarray, W_s: np.ndarray,
                  edge_density: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(0/1 adjacency (N+1, N+1), normalised adjacency float32, tau) of the
    graph router whose expert nodes are relu(X W_s^T) (the density rule)."""
    u = np.maximum(expert_features.astype(np.float64) @ W_s.astype(np.float64).T, 0.0)
    mask, tau = build_expert_graph(u, edge_density)
    adj, ahat = normalized_adjacency(mask)
    return adj, ahat.astype(np.float32), tau


def named_moe_params(src: dict[str, np.ndarray], num_experts: int, projs, router: str,
                     gcn_layers: int, gcn_dim: int) -> dict[str, np.ndarray]:
    """Packed parameter arrays (init_moe_params' keys) split into the
    PEFT-like names of the module docstring (views into src)."""
    out: dict[str, np.ndarray] = {}
    for e in range(num_experts):
        for p in projs:
            out[f"experts.{e}.{p}.lora_A.weight"] = src[f"{p}.A"][e]
            out[f"experts.{e}.{p}.lora_B.weight"] = src[f"{p}.B"][e]
    if router == "graph":
        out["router.W_s.weight"] = src["router.W_s.weight"]
        out["router.W_t.weight"] = src["router.W_t.weight"]
        for layer in range(gcn_layers):
            out[f"router.gcn.{layer}.weight"] = src["router.gcn"][layer]
        out["router.proj.weight"] = src["router.proj.weight"].reshape(-1, gcn_dim)
        out["poisson_lambda"] = src["poisson_lambda"]
        out["normal_sigma"] = src["normal_sigma"]
    else:
        out["router.weight"] = src["router.weight"]
    return out


class MoELoRAFFN:
    """MoE-LoRA FFN over a frozen FFN, with a linear, switch or graph router.

    Parameters
    ----------
    base_weights : dict of float arrays, PyTorch layout. ``kind="swiglu"``:
        ``{"W1": gate (I, H), "W3": up (I, H), "W2": down (H, I)}``;
        ``kind="gelu"`` (BERT): ``{"Wi": (I, H), "bi": (I,), "Wo": (H, I), "bo": (H,)}``.
        Copied (float32) and frozen.
    num_experts, top_k : N experts, k routed per token (switch uses k = 1).
    r, lora_alpha, lora_dropout : LoRA rank, alpha (scale alpha / r) and
        dropout on the LoRA inputs (training only).
    router : ``"graph"`` (GMoE), ``"linear"`` or ``"switch"``.
    gcn_layers, gcn_dim, edge_density : graph router settings (g = gcn_dim).
    seed : initialisation and dropout seed.
    loss_form : ``"abs"`` (reference |log| form) or ``"kl"``.
    normal_count : what the Normal-balance count c accumulates per routed
        slot: ``"topk_probs"`` (default, the official GMoE code: the top-k
        softmax probabilities before renormalisation) or ``"weights"`` (the
        renormalised top-k weights; engine_py before this option existed).
    normal_running_decay : d in [0, 1]; c = d * running + k * (this batch's
        counts). 1 (default, reference): the count accumulates forever, so
        the batch's share of c (and of the loss gradient) shrinks like 1/step;
        d < 1 keeps an exponential window of about 1 / (1 - d) batches; 0:
        this batch only.
    graph_readout : ``"shared"`` (default, the paper) or ``"per_expert"``:
        the graph router's final g -> 1 projection, one for all expert nodes
        or one per expert. With the shared readout and the token node
        dominating (the reference W_t init) the logits are ~ m_e + b_e s(x):
        one token signal s(x) and slopes b_e fixed by the expert graph, so
        the top-k set is decided by one number per token; docs/ALGORITHMS.md
        §B.5 ("GMoE router collapse") measures the collapse this gives and
        shows per_expert with normal_running_decay=0.5 preventing it.
    precision : ``"float32"`` (default) or ``"bfloat16"``: the frozen FFN
        products (x W1^T, x W3^T, W2 a and their input gradients) with both
        operands rounded to bfloat16 and float32 sums (the AVX512-BF16 kernel
        where the CPU has it; elsewhere an exact emulation, no faster than
        float32, with a ``BFloat16EmulationWarning``); the experts' LoRA
        terms, the router and the
        losses stay float32. Measured: docs/PERFORMANCE.md.

    ``forward(x, training=True) -> (y, aux)``: x (..., H); aux holds the
    scalar router losses (``poisson``/``normal`` for graph, ``balance`` for
    linear, ``balance``/``z`` for switch), ``counts`` (slots per expert),
    ``load`` (fraction), ``load_cv`` (coefficient of variation of the load)
    and ``entropy`` (mean router entropy, nats). ``backward(dy,
    loss_coefs=None) -> dx`` accumulates parameter gradients of
    sum(dy * y) + sum_k coef_k * aux[k] (``None``: DEFAULT_LOSS_COEFS; in a
    dict, missing keys weigh 0). ``step(lr, weight_decay)`` is AdamW.
    """

    def __init__(self, base_weights: dict[str, Any], kind: str = "swiglu", num_experts: int = 8,
                 top_k: int = 2, r: int = 2, lora_alpha: float = 4, lora_dropout: float = 0.0,
                 router: str = "graph", gcn_layers: int = 2, gcn_dim: int = 128,
                 edge_density: float = 0.25, seed: int = 0, loss_form: str = "abs",
                 normal_count: str = "topk_probs", normal_running_decay: float = 1.0,
                 graph_readout: str = "shared", precision: str = "float32"):
        if kind not in _KINDS:
            raise ValueError(f"kind must be 'swiglu' or 'gelu', got {kind!r}")
        if router not in _ROUTERS:
            raise ValueError(f"router must be one of {_ROUTERS}, got {router!r}")
        if loss_form not in ("abs", "kl"):
            raise ValueError(f"loss_form must be 'abs' or 'kl', got {loss_form!r}")
        if normal_count not in ("topk_probs", "weights"):
            raise ValueError("normal_count must be 'topk_probs' or 'weights', "
                             f"got {normal_count!r}")
        if graph_readout not in ("shared", "per_expert"):
            raise ValueError("graph_readout must be 'shared' or 'per_expert', "
                             f"got {graph_readout!r}")
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        self.precision = precision
        warn_if_bf16_emulated(_core, precision, "MoELoRAFFN")
        self._prec = 1 if precision == "bfloat16" else 0
        normal_running_decay = check_float(normal_running_decay, "normal_running_decay",
                                           min=0.0, max=1.0)
        num_experts = check_int(num_experts, "num_experts", min=1, max=1024)
        top_k = check_int(top_k, "top_k", min=1, max=num_experts)
        r = check_int(r, "r", min=1, max=64)
        gcn_layers = check_int(gcn_layers, "gcn_layers", min=1)
        gcn_dim = check_int(gcn_dim, "gcn_dim", min=1)
        lora_alpha = check_float(lora_alpha, "lora_alpha", min=0.0, min_open=True)
        lora_dropout = check_float(lora_dropout, "lora_dropout", min=0.0, max=1.0, max_open=True)
        edge_density = check_float(edge_density, "edge_density", min=0.0, max=1.0, min_open=True)
        seed = check_int(seed, "seed", min=0)
        self.kind, self.router = kind, router
        self.num_experts, self.r = num_experts, r
        self.top_k = 1 if router == "switch" else top_k
        self.lora_alpha, self.lora_dropout = float(lora_alpha), float(lora_dropout)
        self.scale = float(lora_alpha) / r
        self.gcn_layers, self.gcn_dim, self.edge_density = gcn_layers, gcn_dim, float(edge_density)
        self.seed, self.loss_form = int(seed), loss_form
        self.normal_count, self.graph_readout = normal_count, graph_readout
        self.normal_running_decay = float(normal_running_decay)
        self._kl = loss_form == "kl"
        self._frozen = self._check_base(base_weights)
        I, H = self._frozen["W_in"].shape
        self.hidden_size, self.intermediate_size = H, I
        rng = np.random.default_rng(self.seed)
        self._dropout_calls = 0
        self._lock = threading.Lock()
        self._ctx: dict[str, Any] | None = None
        self._t = 0

        # trainable parameters: name -> packed array; the state_dict splits them
        self._projs = ["w1", "w3", "w2"] if kind == "swiglu" else ["wi", "wo"]
        self._params, self._buffers = init_moe_params(rng, H, I, num_experts, r, router,
                                                      tuple(self._projs), gcn_layers, gcn_dim,
                                                      graph_readout)
        if router == "graph":
            self._build_graph()
        self._grads = {k: np.zeros_like(v) for k, v in self._params.items()}
        self._m = {k: np.zeros_like(v) for k, v in self._params.items()}
        self._v = {k: np.zeros_like(v) for k, v in self._params.items()}

    # ------------------------------------------------------------ helpers
    def _check_base(self, bw: dict[str, Any]) -> dict[str, np.ndarray | None]:
        if not isinstance(bw, dict):
            raise TypeError("base_weights must be a dict of arrays")
        need = ("W1", "W3", "W2") if self.kind == "swiglu" else ("Wi", "bi", "Wo", "bo")
        missing = [k for k in need if k not in bw]
        extra = [k for k in bw if k not in need]
        if missing or extra:
            raise ValueError(f"base_weights for kind={self.kind!r} needs keys {need}; "
                             f"missing {missing}, unexpected {extra}")
        w = {k: np.ascontiguousarray(np.asarray(_to_numpy(bw[k]), dtype=np.float32)) for k in need}
        first = w["W1"] if self.kind == "swiglu" else w["Wi"]
        if first.ndim != 2 or first.shape[0] < 1 or first.shape[1] < 1:
            raise ValueError(f"{need[0]} must be a 2-D (I, H) array, got shape {first.shape}")
        I, H = first.shape
        expect = ({"W1": (I, H), "W3": (I, H), "W2": (H, I)} if self.kind == "swiglu"
                  else {"Wi": (I, H), "bi": (I,), "Wo": (H, I), "bo": (H,)})
        for k, shp in expect.items():
            if w[k].shape != shp:
                raise ValueError(f"base_weights[{k!r}] has shape {w[k].shape}, expected {shp} "
                                 f"(PyTorch layout, I={I}, H={H})")
            if not np.isfinite(w[k]).all():
                raise ValueError(f"base_weights[{k!r}] contains NaN or inf")
        if self.kind == "swiglu":
            return {"W_in": w["W1"], "b_in": None, "W_up": w["W3"], "W_out": w["W2"], "b_out": None}
        return {"W_in": w["Wi"], "b_in": w["bi"], "W_up": None, "W_out": w["Wo"], "b_out": w["bo"]}

    def _build_graph(self) -> None:
        adj, ahat, tau = graph_buffers(self._buffers["router.expert_features"],
                                       self._params["router.W_s.weight"], self.edge_density)
        self.edge_threshold_ = tau
        self._adjacency = adj
        self._buffers["router.normalized_adjacency"] = ahat

    @property
    def adjacency(self) -> np.ndarray | None:
        """(N+1)x(N+1) 0/1 router graph (experts 0..N-1, token node N, self-loops); None
        unless router == "graph"."""
        return None if self.router != "graph" else self._adjacency.copy()

    @property
    def normalized_adjacency(self) -> np.ndarray | None:
        """D^-1/2 (A+I) D^-1/2 used by the GCN layers; None unless router == "graph"."""
        if self.router != "graph":
            return None
        return self._buffers["router.normalized_adjacency"].copy()

    def _enter(self) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("MoELoRAFFN is already in use by another thread; "
                               "use one object per thread")

    def _lora_args(self, grads: bool = False) -> list[Any]:
        src = self._grads if grads else self._params
        if self.kind == "swiglu":
            return [src["w1.A"], src["w3.A"], src["w2.A"], src["w1.B"], src["w3.B"], src["w2.B"]]
        return [src["wi.A"], None, src["wo.A"], src["wi.B"], None, src["wo.B"]]

    def _frozen_args(self) -> list[Any]:
        f = self._frozen
        return [f["W_in"], f["b_in"], f["W_up"], f["W_out"], f["b_out"]]

    # ------------------------------------------------------------ forward / backward
    def forward(self, x: Any, training: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """y (same shape as x) and aux (losses and routing statistics)."""
        self._enter()
        try:
            return self._forward(x, check_bool(training, "training"))
        finally:
            self._lock.release()

    __call__ = forward

    def _forward(self, x: Any, training: bool) -> tuple[np.ndarray, dict[str, Any]]:
        xa = np.asarray(_to_numpy(x))
        if xa.ndim < 1 or xa.shape[-1] != self.hidden_size:
            raise ValueError(f"x must have shape (..., {self.hidden_size}), got {xa.shape}")
        if not np.issubdtype(xa.dtype, np.floating):
            raise TypeError(f"x must be a floating-point array, got dtype {xa.dtype}")
        lead = xa.shape[:-1]
        x2 = np.ascontiguousarray(xa.reshape(-1, self.hidden_size), dtype=np.float32)
        T = x2.shape[0]
        if T == 0:
            raise ValueError("x has no tokens")
        if not np.isfinite(x2).all():
            raise ValueError("x contains NaN or inf")
        P, N, K = self._params, self.num_experts, self.top_k
        ctx: dict[str, Any] = {"x": x2, "lead": lead}
        if self.router == "graph":
            logits, ctx["Zt"], ctx["Z"] = _core._gmoe_graph_forward(
                x2, self._buffers["router.expert_features"], P["router.W_s.weight"],
                P["router.W_t.weight"], P["router.gcn"], P["router.proj.weight"],
                self._buffers["router.normalized_adjacency"])
        else:
            logits = _core._gmoe_linear_router_forward(x2, P["router.weight"])
        if not np.isfinite(logits).all():
            stage = ("graph router (token projection W_t x, GCN layers, expert projection)"
                     if self.router == "graph" else f"{self.router} router (x @ router.weight.T)")
            self._overflow(x2, f"the router logits ({stage})")
        renorm = self.router != "switch"
        probs, lse, idx, w = _core._gmoe_topk_forward(logits, K, renorm)
        ctx.update(probs=probs, lse=lse, idx=idx, w=w, renorm=renorm)
        aux: dict[str, Any] = {}
        if self.router == "graph":
            lam = float(P["poisson_lambda"])
            sig = float(P["normal_sigma"])
            aux["poisson"], ctx["perm_p"] = _core._gmoe_poisson_forward(probs, lam, self._kl, _EPS)
            run = self._buffers["normal_running"]
            if self.normal_running_decay != 1.0:
                run = run * self.normal_running_decay
            # the counted quantity per routed slot (T, K): see normal_count
            wn = (np.ascontiguousarray(np.take_along_axis(probs, idx, axis=1))
                  if self.normal_count == "topk_probs" else w)
            aux["normal"], c, ctx["perm_n"] = _core._gmoe_normal_forward(
                run, idx, wn, sig, _SIGMA_MIN, self._kl, _EPS)
            ctx["c"] = c
            if training:
                self._buffers["normal_running"][:] = c
        else:
            aux["balance"], ctx["counts"] = _core._gmoe_balance_forward(probs, idx)
            if self.router == "switch":
                aux["z"] = _core._gmoe_zloss_forward(lse)
        p = self.lora_dropout if training else 0.0
        seed = 0
        if p > 0.0:
            self._dropout_calls += 1
            seed = (self.seed * 0x9E3779B97F4A7C15 + self._dropout_calls * 0xBF58476D1CE4E5B9) \
                % (1 << 64)
        ctx["p"], ctx["seed"] = p, seed
        y, ctx["G"], ctx["U"], ctx["Hl"] = _core._gmoe_ffn_forward(
            _KINDS[self.kind], x2, idx, w, *self._frozen_args(), *self._lora_args(),
            self.scale, p, seed, self._prec)
        if not np.isfinite(y).all():
            if self.kind == "swiglu":
                proj = ("gate projection x @ W1.T (+ LoRA)" if not np.isfinite(ctx["G"]).all() else
                        "up projection x @ W3.T (+ LoRA)" if not np.isfinite(ctx["U"]).all() else
                        "expert output W2 @ (silu(gate) * up) (+ LoRA)")
            else:
                proj = ("intermediate projection x @ Wi.T + bi (+ LoRA)" if not np.isfinite(ctx["G"]).all()
                        else "expert output Wo @ gelu(h) + bo (+ LoRA)")
            self._overflow(x2, f"the expert FFN's {proj}")
        for k in ("poisson", "normal", "balance", "z"):
            if k in aux and not math.isfinite(aux[k]):
                self._overflow(x2, f"the {k} loss")
        counts = np.bincount(idx.ravel(), minlength=N).astype(np.int64)
        load = counts / float(counts.sum())
        aux["counts"] = counts
        aux["load"] = load
        aux["load_cv"] = float(load.std() / load.mean()) if load.mean() > 0 else 0.0
        pl = probs.astype(np.float64)
        aux["entropy"] = float(-(pl * np.log(np.where(pl > 0, pl, 1.0))).sum(axis=1).mean())
        self._ctx = ctx
        return y.reshape(*lead, self.hidden_size), aux

    def _overflow(self, x2: np.ndarray, stage: str) -> None:
        """Raise FloatingPointError: a finite input overflowed float32 at stage."""
        raise FloatingPointError(
            f"{self!r}.forward: float32 overflow in {stage}: a finite input (largest |x| "
            f"{float(np.abs(x2).max()):.3g}) gives values beyond float32's range (~3.4e38) "
            "there; scale the input (or the weights) down")

    def backward(self, dy: Any, loss_coefs: dict[str, float] | None = None) -> np.ndarray:
        """Gradient wrt x of sum(dy * y) + sum_k loss_coefs[k] * aux[k] for the
        last forward; accumulates parameter gradients (see ``grads``)."""
        self._enter()
        try:
            return self._backward(dy, loss_coefs)
        finally:
            self._lock.release()

    def _backward(self, dy: Any, loss_coefs: dict[str, float] | None) -> np.ndarray:
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("backward() needs a forward() first (once per forward)")
        if loss_coefs is None:
            coefs = dict(DEFAULT_LOSS_COEFS)
        else:
            unknown = [k for k in loss_coefs if k not in DEFAULT_LOSS_COEFS]
            if unknown:
                raise ValueError(f"unknown loss_coefs keys {unknown}; known: "
                                 f"{sorted(DEFAULT_LOSS_COEFS)}")
            coefs = {k: check_float(loss_coefs.get(k, 0.0), f"loss_coefs[{k!r}]")
                     for k in DEFAULT_LOSS_COEFS}
        x2 = ctx["x"]
        dya = np.asarray(_to_numpy(dy))
        if dya.shape != (*ctx["lead"], self.hidden_size):
            raise ValueError(f"dy must have shape {(*ctx['lead'], self.hidden_size)}, got {dya.shape}")
        dy2 = np.ascontiguousarray(dya.reshape(-1, self.hidden_size), dtype=np.float32)
        if not np.isfinite(dy2).all():
            raise ValueError("dy contains NaN or inf")
        self._ctx = None
        P, G = self._params, self._grads
        idx, w, probs = ctx["idx"], ctx["w"], ctx["probs"]
        dx, dw = _core._gmoe_ffn_backward(
            _KINDS[self.kind], dy2, x2, idx, w, ctx["G"], ctx["U"], ctx["Hl"],
            *self._frozen_args(), *self._lora_args(), *self._lora_args(grads=True),
            self.scale, ctx["p"], ctx["seed"], self._prec)
        dprobs = np.zeros_like(probs)
        if self.router == "graph":
            if coefs["poisson"] != 0.0:
                G["poisson_lambda"] += np.float32(_core._gmoe_poisson_backward(
                    dprobs, coefs["poisson"], probs, ctx["perm_p"], float(P["poisson_lambda"]),
                    self._kl, _EPS))
            if coefs["normal"] != 0.0:
                topk_probs = self.normal_count == "topk_probs"
                dn = np.zeros_like(w) if topk_probs else dw
                G["normal_sigma"] += np.float32(_core._gmoe_normal_backward(
                    dn, coefs["normal"], ctx["c"], ctx["perm_n"], idx, float(P["normal_sigma"]),
                    _SIGMA_MIN, self._kl, _EPS))
                if topk_probs:  # d/d(top-k probs) lands on the probabilities (idx unique per row)
                    dprobs[np.arange(idx.shape[0])[:, None], idx] += dn
        elif coefs["balance"] != 0.0:
            _core._gmoe_balance_backward(dprobs, coefs["balance"], ctx["counts"], self.top_k)
        dlogits = _core._gmoe_topk_backward(dw, dprobs, probs, idx, w, ctx["renorm"])
        if self.router == "switch" and coefs["z"] != 0.0:
            _core._gmoe_zloss_backward(dlogits, coefs["z"], ctx["lse"], probs)
        if self.router == "graph":
            _core._gmoe_graph_backward(
                dx, G["router.W_s.weight"], G["router.W_t.weight"], G["router.gcn"],
                G["router.proj.weight"], dlogits, x2, self._buffers["router.expert_features"],
                P["router.W_s.weight"], P["router.W_t.weight"], P["router.gcn"],
                P["router.proj.weight"], self._buffers["router.normalized_adjacency"],
                ctx["Zt"], ctx["Z"])
        else:
            _core._gmoe_linear_router_backward(dx, G["router.weight"], dlogits, x2,
                                               P["router.weight"])
        if not np.isfinite(dx).all():
            raise FloatingPointError(f"{self!r}.backward: the input gradient overflows float32 "
                                     f"(largest |dy| is {float(np.abs(dy2).max()):.3g}); scale dy down")
        for k, g in G.items():
            if not np.isfinite(g).all():
                raise FloatingPointError(f"{self!r}.backward: the accumulated gradient of {k} "
                                         "overflows float32; scale dy (or the loss) down, or "
                                         "zero_grad() more often")
        return dx.reshape(*ctx["lead"], self.hidden_size)

    # ------------------------------------------------------------ parameters
    def _named(self, src: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Split packed arrays into PEFT-like names (views into src)."""
        return named_moe_params(src, self.num_experts, self._projs, self.router, self.gcn_layers,
                                self.gcn_dim)

    def parameter_names(self) -> list[str]:
        """Names of the trainable parameters, in ``state_dict`` order."""
        return list(self._named(self._params))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every trainable parameter and buffer (names in the class doc)."""
        d = {k: v.copy() for k, v in self._named(self._params).items()}
        for k, v in self._buffers.items():
            d[k] = v.copy()
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Load a ``state_dict`` (exact key set and shapes); rebuilds nothing:
        the adjacency comes from the dict."""
        named = self._named(self._params)
        want = set(named) | set(self._buffers)
        have = set(d)
        if want != have:
            raise KeyError(f"state_dict keys differ: missing {sorted(want - have)}, "
                           f"unexpected {sorted(have - want)}")
        staged = {}
        for k in want:
            dst = named[k] if k in named else self._buffers[k]
            a = np.asarray(_to_numpy(d[k]))
            if a.shape != dst.shape:
                raise ValueError(f"state_dict[{k!r}] has shape {a.shape}, expected {dst.shape}")
            if not np.isfinite(a).all():
                raise ValueError(f"state_dict[{k!r}] contains NaN or inf")
            staged[k] = a
        for k, a in staged.items():
            dst = named[k] if k in named else self._buffers[k]
            dst[...] = a
        if self.router == "graph":
            ahat = self._buffers["router.normalized_adjacency"]
            self._adjacency = (ahat != 0).astype(np.int8)

    def grads(self) -> dict[str, np.ndarray]:
        """Copies of the accumulated gradients, keyed like the parameters."""
        return {k: v.copy() for k, v in self._named(self._grads).items()}

    def zero_grad(self) -> None:
        for g in self._grads.values():
            g[...] = 0

    def step(self, lr: float = 2e-4, weight_decay: float = 0.01,
             betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        """One AdamW step (torch.optim.AdamW semantics) on every trainable
        parameter with the accumulated gradients; then lambda is projected
        into [1, 2] and sigma to >= 1e-3."""
        lr = check_float(lr, "lr", min=0.0)
        weight_decay = check_float(weight_decay, "weight_decay", min=0.0)
        eps = check_float(eps, "eps", min=0.0)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise InvalidParameterError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        b1 = check_float(betas[0], "betas[0]", min=0.0, max=1.0, max_open=True)
        b2 = check_float(betas[1], "betas[1]", min=0.0, max=1.0, max_open=True)
        self._enter()
        try:
            self._t += 1
            for k, p in self._params.items():
                _core._gmoe_adamw_step(p, self._grads[k], self._m[k], self._v[k], float(lr),
                                       float(b1), float(b2), float(eps), float(weight_decay),
                                       self._t)
            if self.router == "graph":
                lam = self._params["poisson_lambda"]
                lam[...] = np.clip(lam, 1.0, 2.0)
                sig = self._params["normal_sigma"]
                sig[...] = max(float(sig), _SIGMA_MIN)
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        return (f"MoELoRAFFN(kind={self.kind!r}, hidden={self.hidden_size}, "
                f"intermediate={self.intermediate_size}, num_experts={self.num_experts}, "
                f"top_k={self.top_k}, r={self.r}, router={self.router!r})")


def _to_numpy(a: Any) -> Any:
    """Accept numpy arrays, lists and (without importing torch) torch tensors."""
    if hasattr(a, "detach") and hasattr(a, "cpu") and hasattr(a, "numpy"):
        return a.detach().cpu().numpy()
    return a
