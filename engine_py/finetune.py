"""LoRA fine-tuning of decoder LLMs (arch llama / qwen2) in the C core.

    from engine_py.finetune import Trainer

    tr = Trainer(model_path, method="lora", r=2, alpha=4, lr=2e-4, epochs=1, batch_size=16)
    tr.fit(prompts, answers)              # loss over the answer tokens only
    tr.predict(prompts, choices)          # index of the most likely choice per prompt
    tr.score(prompts, choices, y)         # accuracy
    tr.save_adapter("adapter/")           # PEFT format
    tr2 = Trainer.load(model_path, "adapter/")

    # GMoE: graph-routed LoRA experts in every decoder block's MLP (MixLoRA:
    # method="mixlora", a linear router)
    tr = Trainer(model_path, method="gmoe", experts=8, top_k=2)

The base model stays frozen and in its stored format (GGUF quantized blocks
or the safetensors dtype); only the LoRA matrices are trained
(``_core.LoraTrainer``: forward, chunked LM-head cross-entropy and backward
in C; AdamW in C). See docs/FINETUNE.md for what exists and what does not.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from ._isa import warn_if_bf16_emulated
from ._threads import adapt as _adapt_threads
from ._validate import read_json

__all__ = ["Trainer", "MODULES", "METHODS", "ROUTERS", "LoraBatch", "merge_adapter",
           "read_adapter"]

#: fine-tuning methods: plain LoRA, and LoRA on attention + a mixture of LoRA
#: experts in every MLP (MixLoRA: linear router; GMoE: graph router)
METHODS = ("lora", "mixlora", "gmoe")
ROUTERS = ("graph", "linear", "switch")
#: the core's MoE parameter parts (eg_llama_train.h EG_MOE_*), as gmoe.init_moe_params keys
_MOE_PARTS = ("w1.A", "w3.A", "w2.A", "w1.B", "w3.B", "w2.B", "router.weight",
              "router.W_s.weight", "router.W_t.weight", "router.gcn", "router.proj.weight",
              "poisson_lambda", "normal_sigma")
_AUX = ("poisson", "normal", "balance", "z")
_MOE_ADAPTER_TYPES = {"gmoe": "GMOE", "mixlora": "MIXLORA"}

#: LoRA target names, in the core's order, and their PEFT module paths
MODULES = ("q", "k", "v", "o", "gate", "up", "down")
_PEFT_PATH = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
              "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj",
              "down": "mlp.down_proj"}
_GGML_F32, _GGML_F16, _GGML_BF16 = 0, 1, 30
_CKPT_JSON = "trainer_state.json"


def _permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (HF rotate-half -> interleaved pairs)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    return (w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _load_base(model_path: str, precision: str = "float32"):
    """(LlamaModel, hyper-parameters, tokenizer, (head bytes, type, shape) or
    None for a tied head, objects to keep alive, arch)."""
    from .llm import is_llama_folder, load_gguf_model, load_hf_model
    from .tokenizer import BPETokenizer

    if not isinstance(model_path, (str, os.PathLike)):
        raise TypeError(f"model_path must be a path, got {type(model_path).__name__}")
    model_path = os.fspath(model_path)
    if os.path.isfile(model_path):
        model, hp, g = load_gguf_model(model_path, precision=precision)
        tok = BPETokenizer.from_gguf(g)
        head = None
        t = g.tensors.get("output.weight")
        if t is not None:
            head = (g.raw("output.weight"), t.type_id, tuple(t.shape))
        return model, hp, tok, head, g, g.metadata["general.architecture"]
    if not is_llama_folder(model_path):
        raise ValueError(f"{model_path}: not a GGUF file nor a llama/qwen2 Hugging Face folder")
    from .io import load_state

    config = read_json(os.path.join(model_path, "config.json"), "model config")
    model, hp, _ = load_hf_model(model_path, config, precision=precision)
    tok = BPETokenizer.from_tokenizer_json(os.path.join(model_path, "tokenizer.json"))
    head = None
    if not config.get("tie_word_embeddings", False):
        state = load_state(model_path, bf16="raw")
        w = state.get("lm_head.weight")
        if w is None:
            raise ValueError(f"{model_path}: tie_word_embeddings is false but lm_head.weight "
                             "is missing")
        kind = {np.dtype(np.float32): _GGML_F32, np.dtype(np.float16): _GGML_F16,
                np.dtype(np.uint16): _GGML_BF16}.get(w.dtype)
        if kind is None:
            raise ValueError(f"{model_path}: lm_head.weight has unsupported dtype {w.dtype}")
        head = (np.ascontiguousarray(w), kind, tuple(w.shape))
    return model, hp, tok, head, None, config["model_type"]


def _check_texts(x: Any, what: str) -> list:
    if isinstance(x, str) or not isinstance(x, (list, tuple, np.ndarray)):
        raise TypeError(f"{what} must be a list of str")
    out = list(x)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise TypeError(f"{what}[{i}] must be str, got {type(s).__name__}")
    return out


class LoraBatch:
    """A packed batch: ids, offsets and per-position targets (-100 = none)."""

    def __init__(self, seqs, answer_starts):
        lens = [len(s) for s in seqs]
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum(lens)
        self.ids = (np.concatenate(seqs).astype(np.int32) if seqs
                    else np.zeros(0, dtype=np.int32))
        self.targets = np.full(len(self.ids), -100, dtype=np.int32)
        for i, (s, a) in enumerate(zip(seqs, answer_starts)):
            o = self.offsets[i]
            # position t predicts token t+1: answer tokens a..len-1
            for t in range(max(a - 1, 0), len(s) - 1):
                self.targets[o + t] = s[t + 1]
        self.n_targets = int((self.targets >= 0).sum())



def _norm_f64(x, chunk: int = 1 << 16) -> float:
    """The L2 norm of a float32 vector, summed in float64 chunk by chunk: two
    whole-vector float64 copies would be fresh memory every step (tens of MB
    for a GMoE adapter, a page fault per 4 KB)."""
    total = 0.0
    for i in range(0, x.size, chunk):
        c = x[i:i + chunk].astype(np.float64)
        total += float(np.dot(c, c))
    return math.sqrt(total)

class Trainer:
    """LoRA fine-tuning with the C core (see the module docstring).

    Hyper-parameters: r, alpha (every target module), targets (subset of
    q, k, v, o, gate, up, down), lr, epochs, batch_size, seed, dropout
    (LoRA input, default 0.0), weight_decay (0.0), warmup_ratio (0.1, linear
    warm-up then cosine decay; schedule="constant" keeps lr), max_grad_norm
    (1.0; None: no clipping), max_length (prompt + answer tokens, default the
    model's context), micro_batch_size (gradient accumulation: each batch
    runs through the core this many examples at a time; default the whole
    batch), precision ("float32", exact, the default; "bfloat16": the
    frozen products in bf16 with float32 sums, see docs/FINETUNE.md; on a
    CPU without AVX512-BF16 it is emulated, no faster than float32, and a
    BFloat16EmulationWarning says so),
    recompute (activation recomputation per layer: a step saves each layer's
    input only and runs the layer again in backward — ~1/10 of the
    activation memory for one more forward pass of compute, same results),
    show_progress_bar.

    method="gmoe" / "mixlora" (ALGORITHMS.md §B): LoRA (r, alpha) on the
    attention modules among `targets`, and in every layer's MLP a mixture of
    `experts` LoRA experts (rank r, alpha) over the shared frozen gate/up/down,
    `top_k` routed per token by `router` ("graph": GMoE's GCN router with the
    Poisson distinction and Normal balance losses, the gmoe default;
    "linear": MixLoRA's, with the load-balance loss, the mixlora default;
    "switch": top-1). Router settings: gcn_dim, gcn_layers, edge_density,
    loss_coefs (dict over poisson, normal, balance, z; default
    engine_py.gmoe.DEFAULT_LOSS_COEFS), loss_form ("abs" reference, "kl"),
    normal_count ("topk_probs": the Normal loss counts the top-k softmax
    probabilities, as the official code; "weights": the renormalised
    weights), normal_running_decay (c = decay * running + batch; 1.0 is the
    reference), graph_readout ("shared": the paper's g -> 1 projection;
    "per_expert": one per expert, engine_py's option against router collapse,
    docs/ALGORITHMS.md §B.5), aux_reduction ("sum": the total loss adds
    coef * aux of every layer, as ALGORITHMS.md §B.3 and the issue state it;
    "mean": coef * the mean over layers, as the official code computes it —
    with L layers, "sum" weighs the router losses L times more),
    graph_balance (False: the reference; True: the graph router also gets
    MixLoRA's load-balance loss, weight loss_coefs["balance"] — engine_py's
    option against router collapse, docs/ALGORITHMS.md §B.5). Per-layer
    semantics = engine_py.gmoe.MoELoRAFFN. The defaults follow the GMoE reference configuration:
    weight_decay 0.01, dropout 0.0005, constant lr without warm-up (lora:
    0.0, 0.0, cosine with 10% warm-up).
    """

    def __init__(self, model_path, method: str = "lora", r: int = 2, alpha: float = 4,
                 targets: Sequence[str] = MODULES, lr: float = 2e-4, epochs: int = 1,
                 batch_size: int = 16, seed: int = 0, *, dropout: Optional[float] = None,
                 weight_decay: Optional[float] = None, warmup_ratio: Optional[float] = None,
                 schedule: Optional[str] = None, max_grad_norm: Optional[float] = 1.0,
                 max_length: Optional[int] = None, micro_batch_size: Optional[int] = None,
                 precision: str = "float32", recompute: bool = False,
                 experts: int = 8, top_k: int = 2, router: Optional[str] = None,
                 gcn_dim: int = 128, gcn_layers: int = 2, edge_density: float = 0.25,
                 loss_coefs: Optional[dict] = None, loss_form: str = "abs",
                 normal_count: str = "topk_probs", normal_running_decay: float = 1.0,
                 graph_readout: str = "shared", aux_reduction: str = "sum",
                 graph_balance: bool = False, show_progress_bar: Optional[bool] = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        moe = method != "lora"
        dropout = (0.0005 if moe else 0.0) if dropout is None else dropout
        weight_decay = (0.01 if moe else 0.0) if weight_decay is None else weight_decay
        schedule = ("constant" if moe else "cosine") if schedule is None else schedule
        warmup_ratio = (0.0 if moe else 0.1) if warmup_ratio is None else warmup_ratio
        if moe:
            self._check_moe_args(method, r, experts, top_k, router, gcn_dim, gcn_layers,
                                 edge_density, loss_coefs, loss_form, normal_count,
                                 normal_running_decay, graph_readout, aux_reduction, graph_balance)
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 1 <= r <= 4096:
            raise ValueError(f"r must be an integer in [1, 4096], got {r!r}")
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
            raise ValueError(f"alpha must be a finite number, got {alpha!r}")
        if isinstance(targets, str):
            targets = (targets,)
        targets = tuple(targets)
        bad = [t for t in targets if t not in MODULES]
        if bad or not targets:
            raise ValueError(f"targets must be a non-empty subset of {MODULES}, got {targets!r}")
        for name, v, lo in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
        if not (0 <= warmup_ratio < 1):
            raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio!r}")
        self.model_path = os.fspath(model_path)
        self.method, self.r, self.alpha, self.targets = method, int(r), float(alpha), targets
        self.lr, self.epochs, self.batch_size, self.seed = float(lr), int(epochs), int(batch_size), int(seed)
        self.dropout, self.weight_decay = float(dropout), float(weight_decay)
        self.warmup_ratio, self.schedule, self.max_grad_norm = float(warmup_ratio), schedule, max_grad_norm
        if micro_batch_size is not None and (isinstance(micro_batch_size, bool) or not isinstance(
                micro_batch_size, (int, np.integer)) or micro_batch_size < 1):
            raise ValueError(f"micro_batch_size must be an integer >= 1, got {micro_batch_size!r}")
        self.micro_batch_size = None if micro_batch_size is None else int(micro_batch_size)
        if precision not in ("float32", "bfloat16"):
            raise ValueError(f"precision must be 'float32' or 'bfloat16', got {precision!r}")
        self.precision = precision
        warn_if_bf16_emulated(_core, precision, "Trainer")
        self.show_progress_bar = show_progress_bar
        (self._model, self._hp, self.tokenizer, head, self._keep,
         self.arch) = _load_base(self.model_path, precision)
        ctx = self._hp["max_position"]
        self.max_length = ctx if max_length is None else int(max_length)
        if not 2 <= self.max_length <= ctx:
            raise ValueError(f"max_length must be in [2, {ctx}], got {max_length!r}")
        if moe:   # the experts replace LoRA on the MLP's gate/up/down
            targets = self.targets = tuple(t for t in targets if t in ("q", "k", "v", "o"))
        ranks = [self.r if m in targets else 0 for m in MODULES]
        alphas = [self.alpha if m in targets else 0.0 for m in MODULES]
        self._core = _core.LoraTrainer(self._model, ranks, alphas, dropout=self.dropout,
                                       seed=self.seed, moe=self._moe_core_config() if moe else None)
        if moe:
            self._init_moe()
        if head is not None:
            data, kind, shape = head
            self._core.set_head(data, kind, shape[0], shape[1])
        self.recompute = bool(recompute)
        self._core.set_recompute(self.recompute)
        # llama GGUF files store Q/K rows permuted (llm.py): B's rows follow
        self._permuted = os.path.isfile(self.model_path) and self._hp["rope_mode"] == "norm"
        self.step_ = 0
        self.history_: list = []

    # ------------------------------------------------------------ MoE (gmoe / mixlora)

    def _check_moe_args(self, method, r, experts, top_k, router, gcn_dim, gcn_layers,
                        edge_density, loss_coefs, loss_form, normal_count,
                        running_decay, graph_readout, aux_reduction, graph_balance=False) -> None:
        from .gmoe import DEFAULT_LOSS_COEFS

        def intarg(name, v, lo, hi):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
            return int(v)

        intarg("r (the experts' rank)", r, 1, 64)
        self.experts = intarg("experts", experts, 1, 1024)
        router = ("graph" if method == "gmoe" else "linear") if router is None else router
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        self.router = router
        self.top_k = 1 if router == "switch" else intarg("top_k", top_k, 1, self.experts)
        self.gcn_dim = intarg("gcn_dim", gcn_dim, 1, 4096)
        self.gcn_layers = intarg("gcn_layers", gcn_layers, 1, 16)
        if not (isinstance(edge_density, (int, float)) and 0 < edge_density <= 1):
            raise ValueError(f"edge_density must be in (0, 1], got {edge_density!r}")
        self.edge_density = float(edge_density)
        if loss_form not in ("abs", "kl"):
            raise ValueError(f"loss_form must be 'abs' or 'kl', got {loss_form!r}")
        self.loss_form = loss_form
        coefs = dict(DEFAULT_LOSS_COEFS)
        if loss_coefs is not None:
            bad = [k for k in loss_coefs if k not in coefs]
            if bad:
                raise ValueError(f"unknown loss_coefs keys {bad}; known: {sorted(coefs)}")
            for k, v in loss_coefs.items():
                if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                    raise ValueError(f"loss_coefs[{k!r}] must be a finite number >= 0, got {v!r}")
                coefs[k] = float(v)
        self.loss_coefs = coefs
        if not (isinstance(running_decay, (int, float)) and 0 <= running_decay <= 1):
            raise ValueError(f"normal_running_decay must be in [0, 1], got {running_decay!r}")
        self.normal_running_decay = float(running_decay)
        if normal_count not in ("topk_probs", "weights"):
            raise ValueError(f"normal_count must be 'topk_probs' or 'weights', got {normal_count!r}")
        self.normal_count = normal_count
        if graph_readout not in ("shared", "per_expert"):
            raise ValueError(f"graph_readout must be 'shared' or 'per_expert', got "
                             f"{graph_readout!r}")
        self.graph_readout = graph_readout
        if aux_reduction not in ("sum", "mean"):
            raise ValueError(f"aux_reduction must be 'sum' or 'mean', got {aux_reduction!r}")
        self.aux_reduction = aux_reduction
        if not isinstance(graph_balance, (bool, np.bool_)):
            raise ValueError(f"graph_balance must be True or False, got {graph_balance!r}")
        if graph_balance and router != "graph":
            raise ValueError(f"graph_balance adds MixLoRA's load balance to the graph router; "
                             f"router {router!r} has it already (loss_coefs['balance'])")
        self.graph_balance = bool(graph_balance)

    def _aux_coefs(self) -> np.ndarray:
        """The router losses' weights in _AUX order as the core applies them:
        the graph router's load balance is 0 unless graph_balance (the GMoE
        reference has none), and with aux_reduction="mean" every weight / layers."""
        c = dict(self.loss_coefs)
        if self.router == "graph" and not self.graph_balance:
            c["balance"] = 0.0
        return np.array([c[k] for k in _AUX]) * self._aux_weight()

    def _moe_core_config(self) -> dict:
        return {"experts": self.experts, "top_k": self.top_k, "rank": self.r, "alpha": self.alpha,
                "router": ROUTERS.index(self.router), "gcn_dim": self.gcn_dim,
                "gcn_layers": self.gcn_layers, "loss_kl": int(self.loss_form == "kl"),
                "coef": [float(v) for v in self._aux_coefs()],
                "running_decay": self.normal_running_decay,
                "normal_weights": int(self.normal_count == "weights"),
                "per_expert_readout": int(self.graph_readout == "per_expert")}

    def _aux_weight(self) -> float:
        """1 (aux losses summed over layers) or 1 / layers (their mean)."""
        return 1.0 if self.aux_reduction == "sum" else 1.0 / self._hp["num_layers"]

    @property
    def _moe(self) -> bool:
        return self.method != "lora"

    def _moe_views(self, src) -> list:
        """Per layer, {init_moe_params key: view into src (params or grads)}."""
        E, r, g, GL = self.experts, self.r, self.gcn_dim, self.gcn_layers
        D, F = self._hp["hidden_size"], self._hp["intermediate_size"]
        shapes = {"w1.A": (E, r, D), "w3.A": (E, r, D), "w2.A": (E, r, F), "w1.B": (E, F, r),
                  "w3.B": (E, F, r), "w2.B": (E, D, r), "router.weight": (E, D),
                  "router.W_s.weight": (g, D), "router.W_t.weight": (g, D),
                  "router.gcn": (GL, g, g),
                  "router.proj.weight": (E, g) if self.graph_readout == "per_expert" else (g,),
                  "poisson_lambda": (),
                  "normal_sigma": ()}
        out = [dict() for _ in range(self._hp["num_layers"])]
        for layer, part, off, size in self._core.moe_slots():
            key = _MOE_PARTS[part]
            out[layer][key] = src[off:off + size].reshape(shapes[key])
        return out

    def _init_moe(self) -> None:
        """Fresh experts and routers (gmoe.init_moe_params per layer, from a
        generator seeded by seed) and, for the graph router, each layer's
        expert graph (gmoe.graph_buffers)."""
        from .gmoe import graph_buffers, init_moe_params

        rng = np.random.default_rng([self.seed, 0x6D6F65])
        feats, adj, _ = self._core.moe_buffers()
        views = self._moe_views(self._core.params)
        D, F = self._hp["hidden_size"], self._hp["intermediate_size"]
        for layer, v in enumerate(views):
            prm, buf = init_moe_params(rng, D, F, self.experts, self.r, self.router,
                                       ("w1", "w3", "w2"), self.gcn_layers, self.gcn_dim,
                                       self.graph_readout)
            for k, a in prm.items():
                v[k][...] = a
            if self.router == "graph":
                feats[layer] = buf["router.expert_features"]
                adj[layer] = graph_buffers(buf["router.expert_features"],
                                           prm["router.W_s.weight"], self.edge_density)[1]
        self.moe_history_: list = []

    def _moe_named(self, src) -> dict:
        from .gmoe import named_moe_params

        out = {}
        for layer, v in enumerate(self._moe_views(src)):
            pre = f"base_model.model.model.layers.{layer}.mlp."
            for k, a in named_moe_params(v, self.experts, ("w1", "w3", "w2"), self.router,
                                         self.gcn_layers, self.gcn_dim).items():
                out[pre + k] = a
        return out

    def moe_buffers_state(self) -> dict:
        """The routers' non-trainable state, named like lora_state's tensors:
        graph router only: router.expert_features (N, D), router.
        normalized_adjacency (N+1, N+1) and normal_running (N,) float64 per
        layer (copies)."""
        if not self._moe or self.router != "graph":
            return {}
        feats, adj, run = self._core.moe_buffers()
        out = {}
        for layer in range(self._hp["num_layers"]):
            pre = f"base_model.model.model.layers.{layer}.mlp."
            out[pre + "router.expert_features"] = feats[layer].copy()
            out[pre + "router.normalized_adjacency"] = adj[layer].copy()
            out[pre + "normal_running"] = run[layer].copy()
        return out

    def _project_moe(self) -> None:
        """After an optimiser step: lambda into [1, 2], sigma >= 1e-3 (as
        MoELoRAFFN.step)."""
        if not self._moe or self.router != "graph":
            return
        for v in self._moe_views(self._core.params):
            v["poisson_lambda"][...] = np.clip(v["poisson_lambda"], 1.0, 2.0)
            v["normal_sigma"][...] = max(float(v["normal_sigma"]), 1e-3)

    def moe_stats(self) -> dict:
        """Routing of the last core step (for a multi-part batch: its last
        micro-batch): counts (L, N) routed slots per expert, load (L, N)
        their fractions, aux {loss name: (L,) unweighted value}, entropy (L,)
        mean router entropy (nats), and for the graph router lambda and
        sigma (L,) (clamped as the losses use them)."""
        if not self._moe:
            raise RuntimeError("moe_stats: this trainer has no experts (method='lora')")
        counts, aux, ent = self._core.moe_stats()
        tot = counts.sum(axis=1, keepdims=True)
        out = {"counts": counts, "load": counts / np.maximum(tot, 1), "entropy": ent,
               "aux": {k: aux[:, i].copy() for i, k in enumerate(_AUX)}}
        if self.router == "graph":
            views = self._moe_views(self._core.params)
            out["lambda"] = np.array([float(np.clip(v["poisson_lambda"], 1, 2)) for v in views])
            out["sigma"] = np.array([max(float(v["normal_sigma"]), 1e-3) for v in views])
        return out

    def router_stats(self) -> list:
        """Per layer {"probs": (n_tok, N) router probabilities, "idx": (n_tok,
        K) chosen experts} of the last core step (its tokens in packed order)."""
        if not self._moe:
            raise RuntimeError("router_stats: this trainer has no experts (method='lora')")
        out = []
        for layer in range(self._hp["num_layers"]):
            p, i = self._core.moe_routes(layer)
            out.append({"probs": p, "idx": i})
        return out

    # ------------------------------------------------------------ batches

    def _encode(self, texts, special: bool) -> list:
        return [np.asarray(t, dtype=np.int64) for t in
                self.tokenizer.encode_batch(texts, max_length=self.max_length,
                                            add_special_tokens=special)]

    def _pairs(self, prompts, answers, what="answers"):
        prompts = _check_texts(prompts, "prompts")
        answers = _check_texts(answers, what)
        if len(prompts) != len(answers):
            raise ValueError(f"prompts and {what} must have the same length "
                             f"({len(prompts)} vs {len(answers)})")
        if not prompts:
            raise ValueError("prompts is empty")
        p_ids = self._encode(prompts, True)
        a_ids = self._encode(answers, False)
        seqs, starts = [], []
        for i, (p, a) in enumerate(zip(p_ids, a_ids)):
            if len(p) == 0:
                raise ValueError(f"prompt {i} tokenizes to nothing")
            if len(a) == 0:
                raise ValueError(f"{what[:-1]} {i} ({answers[i]!r}) tokenizes to nothing")
            if len(p) + len(a) > self.max_length:
                raise ValueError(f"example {i} has {len(p) + len(a)} tokens (prompt + "
                                 f"{what[:-1]}), more than max_length {self.max_length}")
            seqs.append(np.concatenate([p, a]))
            starts.append(len(p))
        return seqs, starts

    # ------------------------------------------------------------ training

    def _lr_at(self, step: int, total: int) -> float:
        warm = int(self.warmup_ratio * total)
        if step < warm:
            return self.lr * (step + 1) / warm
        if self.schedule == "constant":
            return self.lr
        prog = (step - warm) / max(1, total - warm)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * prog))

    def loss_and_grads(self, prompts, answers):
        """Mean cross-entropy over the answer tokens (gmoe/mixlora: plus the
        weighted router losses summed over layers) and the gradients (float32
        copy of the flat gradient buffer), without updating. A training pass:
        the Normal loss's running counts advance, as in fit."""
        seqs, starts = self._pairs(prompts, answers)
        loss, _ = self._accumulate(seqs, starts, self.seed)
        return loss, self._core.grads.copy()

    def _accumulate(self, seqs, starts, seed):
        """Zero the gradients, then accumulate those of the mean answer loss
        of these examples, micro_batch_size at a time (gradient accumulation:
        every micro-batch is scaled by 1 / the whole batch's target count, so
        the result equals one pass over the whole batch). (loss, tokens)."""
        mb = self.micro_batch_size or len(seqs)
        parts = [LoraBatch(seqs[i:i + mb], starts[i:i + mb]) for i in range(0, len(seqs), mb)]
        n_t = sum(b.n_targets for b in parts)
        self._core.grads[:] = 0
        # a step interrupted (Ctrl-C between two layers of a core step, or
        # between micro-batches) leaves the trainer as before it: the core
        # restores the running counts of the micro-batch it stops in; those
        # of the micro-batches already done are restored here
        run = self._core.moe_buffers()[2] if self._moe and self.router == "graph" else None
        run0 = None if run is None else run.copy()
        try:
            return self._accumulate_parts(parts, n_t, seed)
        except BaseException:
            if run is not None:
                run[...] = run0
            raise

    def _accumulate_parts(self, parts, n_t, seed):
        nll, aux = 0.0, 0.0
        if self._moe:   # router losses: the mean over the micro-batches
            self._core.set_aux_scale(1.0 / len(parts))
            coef = self._aux_coefs()
            counts = 0
        for j, b in enumerate(parts):
            s, _ = self._core.step(b.ids, b.offsets, b.targets, scale=1.0 / n_t, backward=True,
                                   seed=(seed + j * 0x9E3779B97F4A7C15) & (2**64 - 1))
            nll += s
            if self._moe:
                c, a, _ = self._core.moe_stats()
                aux += float((a @ coef).sum()) / len(parts)
                counts = counts + c
        if self._moe:
            self._batch_counts = counts
        return nll / n_t + aux, sum(len(b.ids) for b in parts)

    def fit(self, prompts, answers, checkpoint_dir=None, checkpoint_every: int = 1):
        """Train on (prompt, answer) pairs; the loss covers the answer tokens
        only. Returns self; history_ holds (step, loss, lr) per step.

        checkpoint_dir: save a checkpoint there every `checkpoint_every`
        steps and at the end (save_checkpoint); if it already holds one made
        by this same job (same data, hyper-parameters and model), training
        resumes after the checkpoint's step, and the result is bit for bit
        the one of an uninterrupted run (same machine and thread count).
        Ctrl-C or a non-finite loss leaves the last checkpoint intact; Ctrl-C
        is honoured between two layers of a core step (in the main thread)
        and abandons the step whole: parameters, AdamW moments, running
        counts, step_ and history_ stay as before it."""
        from ._progress import progress

        seqs, starts = self._pairs(prompts, answers)
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) \
                or checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
        n = len(seqs)
        per_epoch = (n + self.batch_size - 1) // self.batch_size
        total = per_epoch * self.epochs
        nparam = len(self._core.params)
        if not hasattr(self, "_m"):
            self._m = np.zeros(nparam, dtype=np.float32)
            self._v = np.zeros(nparam, dtype=np.float32)
        job = self._job_digest(prompts, answers)
        done = 0   # steps of this fit already done (a resumed checkpoint's)
        if checkpoint_dir is not None and os.path.isfile(
                os.path.join(os.fspath(checkpoint_dir), _CKPT_JSON)):
            st = self.load_checkpoint(checkpoint_dir)
            if st.get("job") != job:
                raise ValueError(f"{os.fspath(checkpoint_dir)}: the checkpoint was made by another "
                                 "training job (other data, hyper-parameters or model); use "
                                 "another checkpoint_dir")
            done = int(st["fit_step"])
        grads = self._core.grads
        rng = np.random.default_rng(self.seed)
        orders = [rng.permutation(n) for _ in range(self.epochs)]
        with progress(total, "fine-tuning", "step", self.show_progress_bar,
                      logger="engine_py.finetune", long=total >= 2, initial=done) as bar:
            for k in range(done, total):
                epoch, bi = divmod(k, per_epoch)
                idx = orders[epoch][bi * self.batch_size:(bi + 1) * self.batch_size]
                t0 = time.perf_counter()
                loss, ntok = self._accumulate([seqs[i] for i in idx], [starts[i] for i in idx],
                                              (self.seed * 1000003 + self.step_) & (2**64 - 1))
                if not math.isfinite(loss) or not np.isfinite(grads).all():
                    where = (f"; the last checkpoint (step {self._ckpt_step}) is intact in "
                             f"{os.fspath(checkpoint_dir)}" if checkpoint_dir is not None
                             and self._ckpt_step is not None else "")
                    raise FloatingPointError(f"non-finite loss or gradient at step "
                                             f"{self.step_} (loss {loss}); the adapter "
                                             f"was not updated by this step{where}")
                if self.max_grad_norm is not None:
                    norm = _norm_f64(grads)
                    if norm > self.max_grad_norm:
                        grads *= np.float32(self.max_grad_norm / (norm + 1e-6))
                lr = self._lr_at(k, total)
                self._core.adamw_step(self._m, self._v, lr, 0.9, 0.999, 1e-8,
                                      self.weight_decay, self.step_ + 1)
                self._project_moe()
                _adapt_threads()
                self.step_ += 1
                self.history_.append((self.step_, loss, lr))
                if self._moe:
                    self._record_moe()
                if checkpoint_dir is not None and ((k + 1) % checkpoint_every == 0
                                                   or k + 1 == total):
                    self.save_checkpoint(checkpoint_dir, _fit=(k + 1, job))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}",
                                tok_s=f"{ntok / max(time.perf_counter() - t0, 1e-9):.0f}")
        return self

    def _record_moe(self) -> None:
        """One moe_history_ entry: this step's expert load per layer (whole
        batch), its router losses, entropy, lambda and sigma."""
        st = self.moe_stats()
        c = self._batch_counts
        ent = {"step": self.step_, "load": (c / np.maximum(c.sum(axis=1, keepdims=True), 1))
               .astype(np.float32), "entropy": st["entropy"],
               "aux": np.stack([st["aux"][k] for k in _AUX], axis=1)}
        if self.router == "graph":
            ent["lambda"], ent["sigma"] = st["lambda"], st["sigma"]
        self.moe_history_.append(ent)

    # --------------------------------------------------------- checkpoints

    _ckpt_step = None

    def _job_digest(self, prompts, answers) -> str:
        """sha256 of what decides a training run: the data, the
        hyper-parameters and the base model file(s)."""
        import hashlib

        h = hashlib.sha256()
        hp = {k: getattr(self, k) for k in ("method", "r", "alpha", "targets", "lr", "epochs",
                                            "batch_size", "seed", "dropout", "weight_decay",
                                            "warmup_ratio", "schedule", "max_grad_norm",
                                            "max_length", "micro_batch_size", "precision")}
        if self._moe:
            hp["moe"] = self._moe_hparams()
        h.update(json.dumps(hp, sort_keys=True, default=list).encode())
        h.update(self._model_fingerprint().encode())
        for t in list(prompts) + ["\x00answers\x00"] + list(answers):
            b = t.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
        return h.hexdigest()

    def _model_fingerprint(self) -> str:
        """The base model's identity as checkpoints record it: the file or
        folder name, the weight/config files' names and sizes, and the adapter
        layout (cheap enough to compute at every save; a same-size rewrite of
        the weights is not detected)."""
        p = self.model_path
        files = [p] if os.path.isfile(p) else sorted(
            os.path.join(p, f) for f in os.listdir(p) if f.endswith((".safetensors", ".json")))
        parts = [os.path.basename(os.path.abspath(p))]
        for f in files:
            st = os.stat(f)
            parts.append(f"{os.path.basename(f)}:{st.st_size}")
        parts.append(f"params:{len(self._core.params)}")
        return "|".join(parts)

    def _moe_hparams(self) -> dict:
        return {"experts": self.experts, "top_k": self.top_k, "router": self.router,
                "gcn_dim": self.gcn_dim, "gcn_layers": self.gcn_layers,
                "edge_density": self.edge_density, "loss_coefs": self.loss_coefs,
                "loss_form": self.loss_form, "normal_count": self.normal_count,
                "normal_running_decay": self.normal_running_decay,
                "graph_readout": self.graph_readout, "aux_reduction": self.aux_reduction,
                # only when on: adapters and run fingerprints from before the option stay valid
                **({"graph_balance": True} if self.graph_balance else {})}

    def save_checkpoint(self, directory, _fit=None) -> str:
        """Write the training state to `directory`: the LoRA parameters and
        AdamW moments (state-<step>.safetensors) and trainer_state.json (step,
        history, hyper-parameters, the tensors file's sha256). Each file is
        written under a temporary name, fsynced and renamed, the JSON last, so
        an interruption at any instant (Ctrl-C included) leaves the previous
        checkpoint or the new one, never a mix. Never pickle. Returns the
        JSON path."""
        import hashlib

        from .io import save_safetensors

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        nparam = len(self._core.params)
        m = getattr(self, "_m", None)
        v = getattr(self, "_v", None)
        if m is None:
            m = np.zeros(nparam, dtype=np.float32)
            v = np.zeros(nparam, dtype=np.float32)
        fname = f"state-{self.step_:08d}.safetensors"
        fpath = os.path.join(directory, fname)
        tensors = {"lora": np.array(self._core.params), "adam_m": m, "adam_v": v}
        if self._moe:   # the routers' state that training changes, and the history
            tensors["moe_running"] = np.array(self._core.moe_buffers()[2])
            for k in ("load", "entropy", "aux", "lambda", "sigma"):
                if self.moe_history_ and k in self.moe_history_[0]:
                    tensors[f"moe_history.{k}"] = np.stack([h[k] for h in self.moe_history_])
        save_safetensors(fpath, tensors,
                         metadata={"format": "engine_py.finetune.checkpoint", "step": str(self.step_)})
        with open(fpath, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        fit_step, job = _fit if _fit is not None else (0, None)
        state = {
            "format": "engine_py.finetune.checkpoint", "version": 1, "step": self.step_,
            "fit_step": fit_step, "job": job, "tensors": fname, "sha256": digest,
            "model": self._model_fingerprint(), "ranks": [self.r if t in self.targets else 0
                                                          for t in MODULES],
            "alpha": self.alpha, "targets": list(self.targets), "precision": self.precision,
            "history": [[int(a), float(b), float(c)] for a, b, c in self.history_],
        }
        jpath = os.path.join(directory, _CKPT_JSON)
        tmp = jpath + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, jpath)
        try:   # make the rename durable, then drop older tensor files
            fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            pass
        for f in os.listdir(directory):
            if f.startswith("state-") and f.endswith(".safetensors") and f != fname:
                try:
                    os.remove(os.path.join(directory, f))
                except OSError:
                    pass
        self._ckpt_step = self.step_
        return jpath

    def load_checkpoint(self, directory) -> dict:
        """Restore the state save_checkpoint wrote (parameters, AdamW moments,
        step, history). The checkpoint must come from the same base model and
        adapter layout; its tensors must match the recorded sha256. Returns
        the checkpoint's JSON dict."""
        import hashlib

        from .io import load_safetensors

        directory = os.fspath(directory)
        jpath = os.path.join(directory, _CKPT_JSON)
        if not os.path.isfile(jpath):
            raise FileNotFoundError(f"{directory}: no {_CKPT_JSON}")
        st = read_json(jpath, "checkpoint state")
        if not isinstance(st, dict) or st.get("format") != "engine_py.finetune.checkpoint":
            raise ValueError(f"{jpath}: not an engine_py fine-tuning checkpoint")
        if st.get("model") != self._model_fingerprint():
            raise ValueError(f"{jpath}: made for another base model or adapter layout "
                             f"({st.get('model')!r}, this trainer: {self._model_fingerprint()!r})")
        ranks = [self.r if t in self.targets else 0 for t in MODULES]
        if st.get("ranks") != ranks or float(st.get("alpha", -1)) != self.alpha:
            raise ValueError(f"{jpath}: rank/alpha/targets differ from this trainer's")
        fpath = os.path.join(directory, os.path.basename(str(st.get("tensors"))))
        with open(fpath, "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != st.get("sha256"):
                raise ValueError(f"{fpath}: contents do not match the checkpoint's sha256")
        t = load_safetensors(fpath)
        n = len(self._core.params)
        for k in ("lora", "adam_m", "adam_v"):
            if k not in t or t[k].shape != (n,) or t[k].dtype != np.float32:
                raise ValueError(f"{fpath}: tensor {k!r} missing or not float32 ({n},)")
        if self._moe:
            run = self._core.moe_buffers()[2]
            if "moe_running" not in t or t["moe_running"].shape != run.shape:
                raise ValueError(f"{fpath}: tensor 'moe_running' missing or not {run.shape}")
        self._core.params[:] = t["lora"]
        if self._moe:
            run[...] = t["moe_running"]
            hist = {k[len("moe_history."):]: t[k] for k in t if k.startswith("moe_history.")}
            steps = [int(h[0]) for h in st.get("history", [])]
            self.moe_history_ = [
                dict({"step": s}, **{k: v[i] for k, v in hist.items()})
                for i, s in enumerate(steps[:len(next(iter(hist.values()), []))])]
        self._m = np.array(t["adam_m"], dtype=np.float32)
        self._v = np.array(t["adam_v"], dtype=np.float32)
        self.step_ = int(st["step"])
        self.history_ = [(int(a), float(b), float(c)) for a, b, c in st.get("history", [])]
        self._ckpt_step = self.step_
        return st

    # ----------------------------------------------------------- inference

    def choice_logprobs(self, prompts, choices) -> np.ndarray:
        """(n_prompts, n_choices) summed log-likelihood of each choice's
        tokens after its prompt. choices: one list of str per prompt, or one
        list shared by every prompt."""
        prompts = _check_texts(prompts, "prompts")
        if not prompts:
            raise ValueError("prompts is empty")
        if choices and all(isinstance(c, str) for c in choices):
            choices = [list(choices)] * len(prompts)
        if len(choices) != len(prompts):
            raise ValueError(f"choices must be one list shared by all prompts or one list per "
                             f"prompt ({len(prompts)}), got {len(choices)}")
        k = len(choices[0])
        if k == 0 or any(len(c) != k for c in choices):
            raise ValueError("every prompt needs the same non-zero number of choices")
        flat_p = [p for p in prompts for _ in range(k)]
        flat_c = [c for cs in choices for c in _check_texts(cs, "choices")]
        seqs, starts = self._pairs(flat_p, flat_c, what="choices")
        out = np.zeros(len(seqs))
        for b0 in range(0, len(seqs), self.batch_size):
            b = LoraBatch(seqs[b0:b0 + self.batch_size], starts[b0:b0 + self.batch_size])
            _, tok = self._core.step(b.ids, b.offsets, b.targets, backward=False)
            for i in range(len(b.offsets) - 1):
                out[b0 + i] = -float(tok[b.offsets[i]:b.offsets[i + 1]].astype(np.float64).sum())
        return out.reshape(len(prompts), k)

    def predict(self, prompts, choices) -> np.ndarray:
        """Index of the most likely choice for each prompt."""
        return np.argmax(self.choice_logprobs(prompts, choices), axis=1)

    def score(self, prompts, choices, y) -> float:
        """Accuracy of predict against y."""
        y = np.asarray(y)
        pred = self.predict(prompts, choices)
        if y.shape != pred.shape:
            raise ValueError(f"y must have one label per prompt ({len(pred)}), got shape {y.shape}")
        return float((pred == y).mean())

    # ------------------------------------------------------------ adapters

    def lora_state(self, grads: bool = False) -> dict:
        """PEFT-named tensors (float32, Hugging Face row order); grads=True:
        the gradient buffer's contents under the same names. gmoe/mixlora:
        also every trainable expert/router tensor, named
        ``base_model.model.model.layers.{l}.mlp.`` + the MoELoRAFFN
        state_dict name (the routers' buffers: moe_buffers_state)."""
        p = self._core.grads if grads else self._core.params
        out = {}
        H, Hkv = self._hp["num_heads"], self._hp["num_kv_heads"]
        for layer, mod, oa, ob, fin, fout, r in self._core.slots():
            name = MODULES[mod]
            A = p[oa:oa + r * fin].reshape(r, fin).copy()
            B = p[ob:ob + fout * r].reshape(fout, r).copy()
            if self._permuted and name in ("q", "k"):
                B = _unpermute_rows(B, H if name == "q" else Hkv)
            pre = f"base_model.model.model.layers.{layer}.{_PEFT_PATH[name]}"
            out[f"{pre}.lora_A.weight"] = A
            out[f"{pre}.lora_B.weight"] = B
        if self._moe:
            out.update({k: np.array(v, dtype=np.float32) for k, v in self._moe_named(p).items()})
        return out

    def set_lora_state(self, state: dict) -> None:
        """Load tensors named as lora_state gives them (every one required);
        gmoe/mixlora: moe_buffers_state's names may come too (all or none)."""
        p = self._core.params
        H, Hkv = self._hp["num_heads"], self._hp["num_kv_heads"]
        want = set()
        if self._moe:
            staged = []
            for key, dst in self._moe_named(p).items():
                want.add(key)
                if key not in state:
                    raise ValueError(f"adapter is missing {key}")
                arr = np.asarray(state[key], dtype=np.float32)
                if arr.shape != dst.shape:
                    raise ValueError(f"adapter tensor {key} has shape {arr.shape}, this "
                                     f"configuration needs {dst.shape}")
                staged.append((dst, arr))
            bufs = self.moe_buffers_state()
            have = [k for k in bufs if k in state]
            if have and len(have) != len(bufs):
                raise ValueError(f"adapter has some router buffers but not all (missing "
                                 f"{sorted(set(bufs) - set(have))[:3]})")
            if have:
                feats, adj, run = self._core.moe_buffers()
                dsts = {"router.expert_features": feats, "router.normalized_adjacency": adj,
                        "normal_running": run}
                for key in have:
                    want.add(key)
                    arr = np.asarray(state[key])
                    if arr.shape != bufs[key].shape or not np.isfinite(arr).all():
                        raise ValueError(f"adapter tensor {key} has shape {arr.shape} (needs "
                                         f"{bufs[key].shape}) or non-finite values")
                    layer = int(key.split(".")[4])
                    name = key.split(".mlp.", 1)[1]
                    staged.append((dsts[name][layer], arr))
            for dst, arr in staged:
                dst[...] = arr
        for layer, mod, oa, ob, fin, fout, r in self._core.slots():
            name = MODULES[mod]
            pre = f"base_model.model.model.layers.{layer}.{_PEFT_PATH[name]}"
            for suffix, shape, off in (("lora_A.weight", (r, fin), oa), ("lora_B.weight", (fout, r), ob)):
                key = f"{pre}.{suffix}"
                want.add(key)
                if key not in state:
                    raise ValueError(f"adapter is missing {key}")
                arr = np.asarray(state[key], dtype=np.float32)
                if arr.shape != shape:
                    raise ValueError(f"adapter tensor {key} has shape {arr.shape}, this model and "
                                     f"rank need {shape}")
                if suffix == "lora_B.weight" and self._permuted and name in ("q", "k"):
                    arr = _permute_rows(arr, H if name == "q" else Hkv)
                p[off:off + arr.size] = arr.reshape(-1)
        extra = sorted(set(state) - want)
        if extra:
            raise ValueError(f"adapter has tensors this configuration does not: {extra[:3]}")

    def save_adapter(self, directory) -> None:
        """adapter_model.safetensors + adapter_config.json, as PEFT writes them.
        gmoe/mixlora: the same two files in engine_py's own format (peft_type
        "GMOE" / "MIXLORA", which PEFT does not load): the attention LoRA under
        PEFT's names, the experts and routers as lora_state names them, the
        routers' buffers (moe_buffers_state), and the MoE settings in the
        config."""
        from .io import save_safetensors

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        tensors = self.lora_state()
        if self._moe:
            tensors.update(self.moe_buffers_state())
        save_safetensors(os.path.join(directory, "adapter_model.safetensors"), tensors)
        cfg = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r, "lora_alpha": self.alpha,
            "lora_dropout": self.dropout, "bias": "none", "fan_in_fan_out": False,
            "target_modules": [_PEFT_PATH[t].split(".")[1] for t in self.targets],
            "base_model_name_or_path": os.path.abspath(self.model_path),
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
            "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
            "rank_pattern": {}, "alpha_pattern": {},
        }
        if self._moe:
            cfg["peft_type"] = _MOE_ADAPTER_TYPES[self.method]
            cfg["engine_py_moe"] = self._moe_hparams()
        with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def load(cls, model_path, adapter_dir, **kw) -> "Trainer":
        """A Trainer on model_path with the adapter saved in adapter_dir."""
        cfg, targets, state = read_adapter(adapter_dir, moe_ok=True)
        if cfg["peft_type"] != "LORA":
            method = {v: k for k, v in _MOE_ADAPTER_TYPES.items()}[cfg["peft_type"]]
            kw = dict(cfg["engine_py_moe"], **kw)
            kw.setdefault("dropout", float(cfg.get("lora_dropout", 0.0)))
            tr = cls(model_path, method=method, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]),
                     targets=targets, **kw)
        else:
            tr = cls(model_path, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), targets=targets,
                     **kw)
        tr.set_lora_state(state)
        return tr


def read_adapter(adapter_dir, moe_ok: bool = False):
    """(adapter_config dict, targets in MODULES' names, PEFT-named float32
    tensors) of a PEFT LoRA adapter folder; ValueError for what engine_py
    does not support (rank/alpha patterns, DoRA, rsLoRA, other modules).
    moe_ok: also accept engine_py's GMoE / MixLoRA adapters (else they are
    refused: their experts cannot be merged into the weights)."""
    from .io import load_state

    adapter_dir = os.fspath(adapter_dir)
    cpath = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json")
    cfg = read_json(cpath, "adapter config")
    if isinstance(cfg, dict) and cfg.get("peft_type") in _MOE_ADAPTER_TYPES.values():
        if not moe_ok:
            raise ValueError(f"{cpath}: a {cfg['peft_type']} adapter (mixture of LoRA experts) "
                             "cannot be merged into the model's weights; load it with "
                             "engine_py.finetune.Trainer.load(model_path, adapter_dir) or "
                             "Encoder.from_pretrained(model_path, adapter=adapter_dir)")
        if not isinstance(cfg.get("engine_py_moe"), dict):
            raise ValueError(f"{cpath}: a {cfg['peft_type']} adapter config needs engine_py_moe")
    elif not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ValueError(f"{cpath}: not a PEFT LoRA adapter config")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern") or cfg.get("use_dora") \
            or cfg.get("use_rslora"):
        raise ValueError(f"{cpath}: rank/alpha patterns, DoRA and rsLoRA are not supported")
    back = {v.split(".")[1]: k for k, v in _PEFT_PATH.items()}
    tm = cfg.get("target_modules")
    if isinstance(tm, str) or not isinstance(tm, list) or any(t not in back for t in tm):
        raise ValueError(f"{cpath}: target_modules must be a list of "
                         f"{sorted(back)}, got {tm!r}")
    targets = tuple(m for m in MODULES if _PEFT_PATH[m].split(".")[1] in tm)
    state = load_state(os.path.join(adapter_dir, "adapter_model.safetensors"))
    return cfg, targets, state


def _is_moe_key(key: str) -> bool:
    """A GMoE / MixLoRA adapter's MLP tensor (experts, router, buffers)."""
    return key.startswith("base_model.model.model.layers.") and ".mlp." in key


class _MoEAdapterState(Trainer):
    """The Trainer's MoE adapter code (tensor names and shapes, set_lora_state's
    checks, the router buffers) over a bare core built on an existing
    LlamaModel, without loading a base model or tokenizer: what
    Encoder.from_pretrained(adapter=gmoe_dir) uses to fill the experts it
    attaches (attach_moe_adapter). Not a usable Trainer."""

    def __init__(self, model, hp: dict, method: str, r: int, alpha: float, moe: dict):
        self._hp, self.method = hp, method
        self.r, self.alpha = r, alpha
        self._check_moe_args(method, r, moe["experts"], moe["top_k"], moe["router"],
                             moe["gcn_dim"], moe["gcn_layers"], moe["edge_density"],
                             moe["loss_coefs"], moe["loss_form"], moe["normal_count"],
                             moe["normal_running_decay"], moe["graph_readout"],
                             moe["aux_reduction"], moe.get("graph_balance", False))
        # no attention adapters: the caller merges those into the weights
        self._core = _core.LoraTrainer(model, [0] * len(MODULES), [0.0] * len(MODULES),
                                       moe=self._moe_core_config())
        self._permuted = False


_MOE_SETTINGS = ("experts", "top_k", "router", "gcn_dim", "gcn_layers", "edge_density",
                 "loss_coefs", "loss_form", "normal_count", "normal_running_decay",
                 "graph_readout", "aux_reduction")
#: settings an adapter may lack (written only when on; absent = off)
_MOE_OPTIONAL = ("graph_balance",)


def attach_moe_adapter(model, hp: dict, adapter_dir, loaded) -> None:
    """Route a LlamaModel's layer-by-layer forward (encode_layers: Encoder,
    LayerCache, live early exit) through the experts and routers of a GMoE /
    MixLoRA adapter folder (loaded: read_adapter(adapter_dir, moe_ok=True)).
    The attention adapters are not touched (merge them first:
    adapter_deltas). Every MLP tensor the configuration needs must be there
    with its shape, finite, including the graph router's buffers (expert
    features, adjacency, running counts); anything else, another layer
    count or hidden size, rank or expert count is refused with a ValueError
    naming the file and the tensor."""
    cfg, _, state = loaded
    adapter_dir = os.fspath(adapter_dir)
    cpath = os.path.join(adapter_dir, "adapter_config.json")
    tpath = os.path.join(adapter_dir, "adapter_model.safetensors")
    moe = cfg["engine_py_moe"]
    missing = [k for k in _MOE_SETTINGS if k not in moe]
    unknown = sorted(set(moe) - set(_MOE_SETTINGS) - set(_MOE_OPTIONAL))
    if missing or unknown:
        raise ValueError(f"{cpath}: engine_py_moe " + (f"lacks {missing}" if missing else
                                                       f"has unknown settings {unknown}"))
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    method = {v: k for k, v in _MOE_ADAPTER_TYPES.items()}[cfg["peft_type"]]
    try:
        if isinstance(r, bool) or not isinstance(r, int):
            raise ValueError(f"r must be an integer, got {r!r}")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise ValueError(f"lora_alpha must be a number, got {alpha!r}")
        view = _MoEAdapterState(model, hp, method, r, float(alpha), moe)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{cpath}: {e}") from None
    L, D = hp["num_layers"], hp["hidden_size"]
    mstate = {k: v for k, v in state.items() if _is_moe_key(k)}
    layers = {int(k.split(".")[4]) for k in mstate if k.split(".")[4].isdigit()}
    if layers and max(layers) + 1 != L:
        raise ValueError(f"{tpath}: the adapter holds MLP tensors for {max(layers) + 1} layers; "
                         f"this model has {L}")
    pre0 = "base_model.model.model.layers.0.mlp."
    a0 = mstate.get(pre0 + "experts.0.w1.lora_A.weight")
    if a0 is not None and np.ndim(a0) == 2:
        if a0.shape[1] != D:
            raise ValueError(f"{tpath}: {pre0}experts.0.w1.lora_A.weight has shape {a0.shape}: "
                             f"the adapter was made for hidden size {a0.shape[1]}, this model "
                             f"has {D}")
        if a0.shape[0] != r:
            raise ValueError(f"{tpath}: {pre0}experts.0.w1.lora_A.weight has shape {a0.shape}: "
                             f"rank {a0.shape[0]}, the config says r = {r}")
    n_exp = {int(k.split(".experts.")[1].split(".")[0]) for k in mstate if ".mlp.experts." in k
             and k.split(".experts.")[1].split(".")[0].isdigit()}
    if n_exp and max(n_exp) + 1 != view.experts:
        raise ValueError(f"{tpath}: the adapter holds {max(n_exp) + 1} experts per layer, its "
                         f"config says experts = {view.experts}")
    for key in view.moe_buffers_state():
        if key not in mstate:
            raise ValueError(f"{tpath}: the graph router needs {key}, which is missing")
    for key, v in mstate.items():
        v = np.asarray(v)
        if v.dtype.kind not in "fiu" or not np.isfinite(v).all():
            raise ValueError(f"{tpath}: tensor {key} holds non-finite values")
    try:
        view.set_lora_state(mstate)
    except ValueError as e:
        raise ValueError(f"{tpath}: {e}") from None
    view._core.attach_to_model()


#: the GGUF tensor (engine_py LlamaModel weight) each LoRA target adapts
_GGUF_NAME = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
              "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def adapter_deltas(adapter_dir, hp: dict, permuted: bool, loaded=None) -> dict:
    """{LlamaModel weight name: float32 (alpha / r) * B @ A} for every matrix a
    PEFT LoRA adapter changes, in the model's row order (llama GGUF files:
    q/k rows permuted, as Trainer does). Shapes are checked against hp
    (the model's hyper-parameters). loaded: read_adapter's result, when the
    caller has it; a GMoE / MixLoRA one gives the attention adapters' deltas
    (its MLP tensors are attach_moe_adapter's)."""
    cfg, targets, state = read_adapter(adapter_dir) if loaded is None else loaded
    tpath = os.path.join(os.fspath(adapter_dir), "adapter_model.safetensors")
    if cfg["peft_type"] != "LORA":
        state = {k: v for k, v in state.items() if not _is_moe_key(k)}
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    if r < 1:
        raise ValueError(f"{adapter_dir}: rank r must be >= 1, got {r}")
    D, F, hd = hp["hidden_size"], hp["intermediate_size"], hp["head_dim"]
    QW, KW = hp["num_heads"] * hd, hp["num_kv_heads"] * hd
    dims = {"q": (D, QW), "k": (D, KW), "v": (D, KW), "o": (QW, D), "gate": (D, F), "up": (D, F),
            "down": (F, D)}
    out, used = {}, set()
    for layer in range(hp["num_layers"]):
        for name in targets:
            pre = f"base_model.model.model.layers.{layer}.{_PEFT_PATH[name]}"
            fin, fout = dims[name]
            ka, kb = f"{pre}.lora_A.weight", f"{pre}.lora_B.weight"
            for key, shape in ((ka, (r, fin)), (kb, (fout, r))):
                if key not in state:
                    raise ValueError(f"{tpath}: adapter is missing {key}")
                if tuple(state[key].shape) != shape:
                    raise ValueError(f"{tpath}: adapter tensor {key} has shape "
                                     f"{tuple(state[key].shape)}, this model and rank need "
                                     f"{shape}")
                used.add(key)
            A = np.asarray(state[ka], dtype=np.float64)
            B = np.asarray(state[kb], dtype=np.float64)
            if permuted and name in ("q", "k"):
                B = _permute_rows(B, hp["num_heads"] if name == "q" else hp["num_kv_heads"])
            out[f"blk.{layer}.{_GGUF_NAME[name]}.weight"] = ((alpha / r) * (B @ A)).astype(np.float32)
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"{tpath}: adapter has tensors this model does not: {extra[:3]}")
    return out


def merge_adapter_into(model, deltas: dict, base_weight) -> list:
    """Set W + delta (float32) on a LlamaModel for every delta; base_weight(name)
    gives the base matrix as float32 (dequantized). Returns the new arrays
    (the caller keeps them alive: the model reads them in place)."""
    keep = []
    for name, d in deltas.items():
        w = np.ascontiguousarray(base_weight(name), dtype=np.float32) + d
        model.set_weight(name, w, _GGML_F32, tuple(w.shape))
        keep.append(w)
    model.check_complete()
    return keep


def merge_adapter(model_path, adapter_dir, out_dir, unmerge: bool = False) -> str:
    """Write a Hugging Face folder whose weights are model_path's with the
    PEFT LoRA adapter merged in: W + (alpha/r) B A for every adapted matrix
    (unmerge=True: W - (alpha/r) B A, which takes a merged folder back to the
    base, up to float32 rounding). model_path must be a float Hugging Face
    llama/qwen2 folder (f32/f16/bf16 safetensors); every tensor is written as
    float32 to out_dir/model.safetensors, with config.json and the tokenizer
    files copied. Returns out_dir.

    A quantized GGUF base is refused: re-quantizing W + B A would round away
    most of the update (LoRA's entries are far below a quantization step) and
    a float copy of the whole model is what GGUF avoids. For inference on a
    quantized base use Trainer.load(model_path, adapter_dir) (LoRA kept
    beside the quantized weights) or Encoder.from_pretrained(model_path,
    adapter=adapter_dir) (only the adapted matrices dequantized and merged,
    in memory)."""
    import shutil

    from .io import load_state, save_safetensors
    from .llm import hf_config, hf_to_gguf_name, is_llama_folder

    model_path, out_dir = os.fspath(model_path), os.fspath(out_dir)
    if os.path.isfile(model_path):
        raise ValueError(f"{model_path}: merging into a quantized GGUF base is not done (a "
                         "re-quantized W + BA loses the update; see merge_adapter's docstring): "
                         "use Trainer.load(path, adapter) or Encoder.from_pretrained(path, "
                         "adapter=...)")
    if not is_llama_folder(model_path):
        raise ValueError(f"{model_path}: not a llama/qwen2 Hugging Face folder")
    if os.path.abspath(out_dir) == os.path.abspath(model_path):
        raise ValueError("out_dir must differ from model_path")
    config = read_json(os.path.join(model_path, "config.json"), "model config")
    hp = hf_config(config, model_path)
    deltas = adapter_deltas(adapter_dir, hp, permuted=False)
    state = load_state(model_path)
    sign = -1.0 if unmerge else 1.0
    out = {}
    for name, w in state.items():
        w = np.asarray(w, dtype=np.float32)
        g = hf_to_gguf_name(name)
        if g in deltas:
            w = w + np.float32(sign) * deltas.pop(g)
        out[name] = np.ascontiguousarray(w)
    if deltas:
        raise ValueError(f"{model_path}: no tensor for the adapted {sorted(deltas)[:3]}")
    os.makedirs(out_dir, exist_ok=True)
    for fname in os.listdir(model_path):
        if fname.endswith(".json") and not fname.startswith("model.safetensors") \
                or fname.startswith("tokenizer") or fname.endswith((".txt", ".model")):
            shutil.copy(os.path.join(model_path, fname), os.path.join(out_dir, fname))
    save_safetensors(os.path.join(out_dir, "model.safetensors"), out, metadata={"format": "pt"})
    return out_dir
