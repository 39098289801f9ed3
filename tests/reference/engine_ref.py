"""Plain-PyTorch reference of the ENGINE G-Ladder, written from
docs/ALGORITHMS.md §A.2. SAGEConv, GCNConv and GATConv are transcribed here
with PyG's semantics and parameter names, so the parity tests need only torch;
``EngineRef(..., pyg=True)`` uses torch_geometric's own layers instead (the
benchmark's PyG pipeline, and a test that the transcription matches PyG).

Used only by the parity tests: same parameter names as
EngineClassifier.state_dict(), so ``load_state_dict(strict=True)`` checks the
naming as well as the maths.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _scatter_sum(src, index, n):
    out = torch.zeros((n,) + src.shape[1:], dtype=src.dtype)
    return out.index_add(0, index, src)


class SAGEConv(nn.Module):
    """PyG SAGEConv(aggr='mean', root_weight=True): lin_l(mean_j x_j) + lin_r(x_i)."""

    def __init__(self, cin, cout):
        super().__init__()
        self.lin_l = nn.Linear(cin, cout, bias=True)
        self.lin_r = nn.Linear(cin, cout, bias=False)

    def forward(self, x, edge_index):
        src, dst = edge_index
        n = x.shape[0]
        s = _scatter_sum(x[src], dst, n)
        deg = _scatter_sum(torch.ones_like(dst, dtype=x.dtype), dst, n).clamp(min=1)
        return self.lin_l(s / deg[:, None]) + self.lin_r(x)


class GCNConv(nn.Module):
    """PyG GCNConv: self-loops, D^-1/2 (A+I) D^-1/2 with in-degrees, bias after."""

    def __init__(self, cin, cout):
        super().__init__()
        self.lin = nn.Linear(cin, cout, bias=False)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, edge_index):
        n = x.shape[0]
        loops = torch.arange(n)
        src = torch.cat([edge_index[0], loops])
        dst = torch.cat([edge_index[1], loops])
        deg = _scatter_sum(torch.ones_like(dst, dtype=x.dtype), dst, n)
        dinv = deg.pow(-0.5)
        h = self.lin(x)
        w = dinv[src] * dinv[dst]
        return _scatter_sum(h[src] * w[:, None], dst, n) + self.bias


class GATConv(nn.Module):
    """PyG GATConv(heads=H, concat=True, negative_slope=0.2, add_self_loops=True)."""

    def __init__(self, cin, cout, heads):
        super().__init__()
        self.H, self.F = heads, cout // heads
        self.lin = nn.Linear(cin, cout, bias=False)
        self.att_src = nn.Parameter(torch.zeros(1, self.H, self.F))
        self.att_dst = nn.Parameter(torch.zeros(1, self.H, self.F))
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, edge_index):
        n = x.shape[0]
        loops = torch.arange(n)
        src = torch.cat([edge_index[0], loops])
        dst = torch.cat([edge_index[1], loops])
        h = self.lin(x).view(n, self.H, self.F)
        a_s = (h * self.att_src).sum(-1)
        a_d = (h * self.att_dst).sum(-1)
        e = F.leaky_relu(a_s[src] + a_d[dst], 0.2)               # (E, H)
        emax = torch.full((n, self.H), -torch.inf).scatter_reduce(
            0, dst[:, None].expand(-1, self.H), e, reduce="amax", include_self=True)
        p = torch.exp(e - emax[dst])
        den = _scatter_sum(p, dst, n)
        att = p / den[dst]
        out = _scatter_sum(h[src] * att[..., None], dst, n)
        return out.reshape(n, self.H * self.F) + self.bias


class Ladder(nn.Module):
    def __init__(self, D, k, hidden, gnn, gnn_layers, norm, last, heads, pyg=False):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(D, k), nn.LayerNorm(k), nn.ReLU(), nn.Linear(k, k))
        dims = [(k, k)] if gnn_layers == 1 else [(k, hidden), (hidden, k)]
        if pyg:
            # the real PyG layers (same parameter names): for the benchmark's PyG pipeline
            import torch_geometric.nn as pyg_nn
            mk = {"sage": lambda a, b: pyg_nn.SAGEConv(a, b, aggr="mean"),
                  "gcn": lambda a, b: pyg_nn.GCNConv(a, b),
                  "gat": lambda a, b: pyg_nn.GATConv(a, b // heads, heads=heads)}[gnn]
        else:
            mk = {"sage": lambda a, b: SAGEConv(a, b), "gcn": lambda a, b: GCNConv(a, b),
                  "gat": lambda a, b: GATConv(a, b, heads)}[gnn]
        self.gnn = nn.ModuleList([mk(a, b) for a, b in dims])
        self.post = [not (last and j == gnn_layers - 1) for j in range(gnn_layers)]
        if norm in ("ln", "bn"):
            mk_norm = nn.LayerNorm if norm == "ln" else nn.BatchNorm1d
            self.norms = nn.ModuleList([mk_norm(b) for (a, b), p in zip(dims, self.post) if p])


class EngineRef(nn.Module):
    """K ladders, gates, readout [root ; mean], classifier, optional exit heads."""

    def __init__(self, K, D, k, hidden, C, gnn="sage", gnn_layers=1, activation="elu", norm="id",
                 dropout=0.0, T=0.1, early_exit=True, heads=4, pyg=False):
        super().__init__()
        self.K, self.T, self.norm, self.dropout = K, T, norm, dropout
        self.act = F.elu if activation == "elu" else F.relu
        self.ladders = nn.ModuleList([Ladder(D, k, hidden, gnn, gnn_layers, norm, i == K - 1, heads, pyg)
                                      for i in range(K)])
        self.gates = nn.ModuleDict({str(i): nn.ParameterDict({"alpha": nn.Parameter(torch.zeros(()))})
                                    for i in range(1, K)})
        self.early_exit = early_exit
        if early_exit:
            self.exit_heads = nn.ModuleList([nn.Linear(2 * k, C) for _ in range(K - 1)])
        self.classifier = nn.Linear(2 * k, C)

    def forward(self, states, edge_index, graph_ptr):
        """states: list of K (N, D) tensors; returns list of K logits (None without a head)."""
        n = states[0].shape[0]
        sizes = graph_ptr[1:] - graph_ptr[:-1]
        gid = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        roots = graph_ptr[:-1]
        z, out = None, []
        for i, lad in enumerate(self.ladders):
            p = lad.projector(states[i])
            if i == 0:
                x = p
            else:
                a = torch.sigmoid(self.gates[str(i)]["alpha"] / self.T)
                x = a * p + (1 - a) * z
            ni = 0
            for j, conv in enumerate(lad.gnn):
                x = conv(x, edge_index)
                if lad.post[j]:
                    if self.norm in ("ln", "bn"):
                        x = lad.norms[ni](x)
                        ni += 1
                    x = self.act(x)
                    x = F.dropout(x, self.dropout, self.training)
            z = x
            head = self.classifier if i == self.K - 1 else (self.exit_heads[i] if self.early_exit else None)
            if head is None:
                out.append(None)
                continue
            mean = _scatter_sum(z, gid, len(sizes)) / sizes[:, None].to(z.dtype)
            out.append(head(torch.cat([z[roots], mean], dim=1)))
        return out

    @staticmethod
    def loss(logits, y):
        return sum(F.cross_entropy(l, y) for l in logits if l is not None)
