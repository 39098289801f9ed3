"""PyTorch reference for engine_py.gmoe.MoELoRAFFN, written from the formulas
(ALGORITHMS.md §B) without the engine's shortcuts:

* every expert's full FFN output is computed for every token (dense), then
  the top-k are gathered and mixed with renormalised weights;
* the graph router builds the paper's graph: for each token its own
  (N+1)-node graph (expert-expert edges from |cos| with the density rule,
  token linked to every expert), all tokens as one block-diagonal batch
  graph, then PyG-style GCNConv (add remaining self-loops, symmetric
  normalisation, no bias) on the dense (T(N+1))^2 adjacency (PyG is not
  installed here; with it, GCNConv would do the same) — NOT the shared-expert
  algebra the engine uses, so the parity test checks that algebra;
* Poisson / Normal losses with torch.sort, torch.clamp and
  torch.distributions, autograd for every gradient. The Normal count
  accumulates what the official GMoE code (GraphSparseMoe.forward) does: the
  top-k softmax probabilities, taken before the in-place renormalisation of
  the routing weights (``normal_count="topk_probs"``), or the renormalised
  weights (``"weights"``); the previous count is multiplied by
  ``normal_running_decay`` (1 in the official code).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-8
SIGMA_MIN = 1e-3


def expert_graph_edges(X: torch.Tensor, Ws: torch.Tensor, density: float) -> torch.Tensor:
    """edge_index (2, E) of the N expert nodes (diagonal included as edges)."""
    u = torch.relu(X @ Ws.T)
    n = u.shape[0]
    nrm = u.norm(dim=1)
    denom = nrm[:, None] * nrm[None, :]
    cos = torch.where(denom > 0, (u @ u.T) / torch.where(denom > 0, denom, torch.ones_like(denom)),
                      torch.zeros_like(denom))
    a = cos.abs()
    eye = torch.eye(n, dtype=torch.bool)
    mask = torch.ones(n, n, dtype=torch.bool)
    for k in range(101):
        tau = (100 - k) / 100.0
        m = (a >= tau) | eye
        if m.sum().item() / float(n * n) >= density:
            mask = m
            break
    return mask.nonzero().T


def batch_graph(expert_edges: torch.Tensor, n: int, T: int) -> torch.Tensor:
    """Block-diagonal batch graph: token t's nodes are t*(n+1) + [0..n]."""
    tok = torch.arange(n)
    te = torch.cat([torch.stack([tok, torch.full_like(tok, n)]),
                    torch.stack([torch.full_like(tok, n), tok])], dim=1)
    one = torch.cat([expert_edges, te], dim=1)
    return torch.cat([one + t * (n + 1) for t in range(T)], dim=1)


def gcn_norm_dense(edge_index: torch.Tensor, num_nodes: int, dtype) -> torch.Tensor:
    """Dense D^-1/2 (A + remaining self-loops) D^-1/2 as PyG's gcn_norm."""
    A = torch.zeros(num_nodes, num_nodes, dtype=dtype)
    A[edge_index[1], edge_index[0]] = 1.0  # message source -> target
    A.fill_diagonal_(1.0)
    deg = A.sum(dim=1)
    dinv = deg.pow(-0.5)
    return dinv[:, None] * A * dinv[None, :]


class GMoERef:
    """Reference forward with autograd. Parameters are leaf tensors in
    ``self.params`` keyed like ``MoELoRAFFN.state_dict``."""

    def __init__(self, layer, dtype=torch.float64):
        self.dtype = dtype
        self.kind, self.router = layer.kind, layer.router
        self.N, self.K, self.r = layer.num_experts, layer.top_k, layer.r
        self.scale = layer.lora_alpha / layer.r
        self.kl = layer.loss_form == "kl"
        self.normal_count = layer.normal_count
        self.decay = layer.normal_running_decay
        self.per_expert = layer.router == "graph" and layer.graph_readout == "per_expert"
        self.projs = ["w1", "w3", "w2"] if self.kind == "swiglu" else ["wi", "wo"]
        f = layer._frozen
        t = lambda a: None if a is None else torch.tensor(a, dtype=dtype)  # noqa: E731
        self.W_in, self.b_in, self.W_up = t(f["W_in"]), t(f["b_in"]), t(f["W_up"])
        self.W_out, self.b_out = t(f["W_out"]), t(f["b_out"])
        sd = layer.state_dict()
        self.params: dict[str, torch.Tensor] = {}
        self.load(sd)
        if self.router == "graph":
            self.gcn_layers = layer.gcn_layers
            self.expert_edges = expert_graph_edges(self.buffers["router.expert_features"],
                                                   self.params["router.W_s.weight"].detach(),
                                                   layer.edge_density)

    def load(self, sd) -> None:
        self.buffers = {}
        for k, v in sd.items():
            ten = torch.tensor(v, dtype=torch.float64 if k == "normal_running" else self.dtype)
            if k in ("router.expert_features", "router.normalized_adjacency", "normal_running"):
                self.buffers[k] = ten
            else:
                self.params[k] = ten.requires_grad_(True)

    def adjacency(self) -> torch.Tensor:
        """(N+1)x(N+1) 0/1 graph of one token (for comparison with the layer)."""
        n = self.N
        A = torch.zeros(n + 1, n + 1, dtype=torch.int8)
        ei = batch_graph(self.expert_edges, n, 1)
        A[ei[0], ei[1]] = 1
        A.fill_diagonal_(1)
        return A

    # ------------------------------------------------------------------ parts
    def _lora(self, e: int, proj: str, v: torch.Tensor) -> torch.Tensor:
        A = self.params[f"experts.{e}.{proj}.lora_A.weight"]
        B = self.params[f"experts.{e}.{proj}.lora_B.weight"]
        return self.scale * (v @ A.T) @ B.T

    def expert_out(self, e: int, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            g = x @ self.W_in.T + self._lora(e, "w1", x)
            u = x @ self.W_up.T + self._lora(e, "w3", x)
            a = F.silu(g) * u
            return a @ self.W_out.T + self._lora(e, "w2", a)
        g = x @ self.W_in.T + self.b_in + self._lora(e, "wi", x)
        a = F.gelu(g)  # exact erf GELU
        return a @ self.W_out.T + self.b_out + self._lora(e, "wo", a)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.router != "graph":
            return x @ self.params["router.weight"].T
        T, N = x.shape[0], self.N
        X = self.buffers["router.expert_features"]
        u = torch.relu(X @ self.params["router.W_s.weight"].T)
        tok = torch.relu(x @ self.params["router.W_t.weight"].T)
        # node features of the batch graph: [u; t_0], [u; t_1], ...
        h = torch.cat([torch.cat([u, tok[t:t + 1]], dim=0) for t in range(T)], dim=0)
        ei = batch_graph(self.expert_edges, N, T)
        Ahat = gcn_norm_dense(ei, T * (N + 1), self.dtype)
        for layer in range(self.gcn_layers):
            W = self.params[f"router.gcn.{layer}.weight"]
            h = torch.relu(Ahat @ (h @ W.T))
        p = self.params["router.proj.weight"]
        h = h.reshape(T, N + 1, -1)[:, :N, :]
        if self.per_expert:  # (N, g): expert e's own readout row
            return (h * p[None, :, :]).sum(-1)
        return (h @ p.T).squeeze(-1)

    def forward(self, x, running=None):
        """x: numpy array or torch tensor (kept as is, so it may be a leaf)."""
        if not torch.is_tensor(x):
            x = torch.tensor(x, dtype=self.dtype)
        T, N, K = x.shape[0], self.N, self.K
        logits = self.logits(x)
        probs = torch.softmax(logits, dim=-1)
        # Experts with the same closed neighbourhood in the graph get identical
        # logits (exact ties are structural, not rare): ties go to the lower
        # index, as in the engine, via a stable sort.
        sv, si = torch.sort(probs, dim=-1, descending=True, stable=True)
        topv, topi = sv[:, :K], si[:, :K]
        w = topv / topv.sum(dim=-1, keepdim=True) if self.router != "switch" else topv
        outs = torch.stack([self.expert_out(e, x) for e in range(N)])  # (N, T, H)
        y = torch.zeros_like(x)
        for j in range(K):
            y = y + w[:, j:j + 1] * outs[topi[:, j], torch.arange(T)]
        aux = {}
        if self.router == "graph":
            aux["poisson"] = self.poisson(probs)
            run = self.buffers["normal_running"] if running is None else torch.tensor(running)
            counted = topv if self.normal_count == "topk_probs" else w
            aux["normal"] = self.normal(topi, counted, self.decay * run.to(self.dtype))
        else:
            counts = torch.bincount(topi.flatten(), minlength=N).to(self.dtype)
            f = counts / (T * K)
            aux["balance"] = N * (f * probs.mean(dim=0)).sum()
            if self.router == "switch":
                aux["z"] = (torch.logsumexp(logits, dim=-1) ** 2).mean()
        return y, aux, topi

    def _term(self, q, v):
        r = torch.log(q) - torch.log(v + EPS)
        return q * (r if self.kl else r.abs())

    def poisson(self, probs):
        lam = torch.clamp(self.params["poisson_lambda"], 1.0, 2.0)
        N = probs.shape[1]
        i = torch.arange(1, N + 1, dtype=self.dtype)
        logq = i * torch.log(lam) - lam - torch.lgamma(i + 1)
        q = torch.softmax(logq, dim=0)  # normalised Poisson pmf over 1..N
        v, _ = torch.sort(probs, dim=-1, descending=True, stable=True)
        return self._term(q[None, :], v).sum(dim=-1).mean()

    def normal(self, topi, w, running):
        N, K = self.N, self.K
        cur = torch.zeros(N, dtype=self.dtype).index_add(0, topi.flatten(), w.flatten())
        c = running + K * cur
        v, _ = torch.sort(c, descending=True, stable=True)
        v = v / c.sum()
        sigma = torch.clamp(self.params["normal_sigma"], min=SIGMA_MIN)
        dist = torch.distributions.Normal(torch.tensor(N / 2.0, dtype=self.dtype), sigma)
        q = torch.softmax(dist.log_prob(torch.arange(N, dtype=self.dtype)), dim=0)
        q, _ = torch.sort(q, descending=True, stable=True)
        return self._term(q, v).sum()


def total_loss(y, aux, dy_np, coefs):
    dy = torch.tensor(dy_np, dtype=y.dtype)
    L = (y * dy).sum()
    for k, v in aux.items():
        L = L + coefs.get(k, 0.0) * v
    return L

