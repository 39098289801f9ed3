"""Benchmark: ENGINE training on the Debian package graph.

    python -m engine_py bench engine [--dataset debian|demo] [--subsample N]
        [--epochs 20] [--patience 5] [--seeds 3] [--live-batches 5] [--no-hf]
        [--cache-dir DIR | --cache FILE] [--threads T] [--input-rank R]
        [--out PATH [--section NAME]]

Three measurements, all in the same run, on the same layer cache (every
MiniLM-L6 layer 0..6, mean-pooled, float16; built once into --cache-dir,
default $ENGINE_PY_CACHE or ~/.cache/engine_py, and reused afterwards):

(a) engine_py vs PyTorch, one training epoch. Both sides train the same
    G-Ladder (EngineClassifier defaults: 7 SAGE ladders, k 128, exit heads,
    dropout 0.5, AdamW lr 1e-3, wd 5e-4, batch 256, khop sampler) from the
    same initial weights (engine_py's initialisation copied into the plain
    torch reference tests/reference/engine_ref.py) on the *same batches*: each
    batch is sampled once by engine_py's C sampler and its rows are gathered
    once from the cache; the torch side receives them converted to tensors
    (torch.from_numpy, zero copy; the edge_index build is counted with the
    sampling). Sampling+gathering is timed separately and is not part of
    either side's step time. The torch side uses torch.optim.AdamW (same
    betas, eps, lr, weight decay, one parameter group) and
    torch.set_num_threads(engine_py's thread count). Each epoch both models
    are evaluated on the validation split; each side keeps its best-validation
    weights (early stopping with --patience per side) and reports test
    accuracy at that epoch. Medians over all epochs of all seeds. With
    --input-rank R a fourth side trains EngineClassifier(input_rank=R) on the
    same batches (its own initial (k, R) first linear, the other weights
    shared; the basis and reduced states are made once per seed and their
    time is reported apart).
(b) caching speed-up: a training step whose input states come from the cache
    vs the same step that re-encodes the texts of the batch's subgraph nodes
    (unique nodes of the batch, max_length 128) with engine_py's own MiniLM
    encoder (and, unless --no-hf, with Hugging Face transformers' BertModel on
    torch). Measured on --live-batches batches and scaled to an epoch.
(c) accuracy: ENGINE (from (a), engine_py side) vs an MLP on the last layer
    (one ladder, graph edges removed) vs SAGE on the last layer (one ladder
    with the graph), the latter two trained with EngineClassifier.fit with the
    same epochs, patience and seeds. Selection on validation; test reported.

--subsample N keeps a random induced subgraph of N nodes (and builds its own
cache); the table states the dataset, size, epochs and seeds that were run.
--cache FILE runs (a) and (c) on an existing cache of the same graph's texts
instead (e.g. a decoder LLM's from bench engine-llm; rows, completeness and
the texts' digest are checked); (b) needs the MiniLM encoder, so it is off
(--live-batches 0).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time

import numpy as np


def _default_cache_dir() -> str:
    return os.environ.get("ENGINE_PY_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "engine_py")


def _engine_ref():
    """EngineRef from tests/reference/engine_ref.py (next to the package)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ref_dir = os.path.join(here, "tests", "reference")
    if not os.path.exists(os.path.join(ref_dir, "engine_ref.py")):
        raise RuntimeError(f"the PyTorch reference {ref_dir}/engine_ref.py is missing: run the "
                           "benchmark from a source checkout of engine_py")
    if ref_dir not in sys.path:
        sys.path.insert(0, ref_dir)
    from engine_ref import EngineRef  # noqa: E402
    return EngineRef


def load_graph(dataset: str, subsample: int | None, seed: int = 0):
    from engine_py.datasets import debian_packages, demo_graph

    g = demo_graph() if dataset == "demo" else debian_packages()
    if subsample and subsample < g.num_nodes:
        ids = np.sort(np.random.default_rng(seed).choice(g.num_nodes, subsample, replace=False))
        g = g.subgraph(ids)
    return g


def open_cache(g, enc, cache_dir: str | None, layers):
    """Build (first time) or reuse the layer cache of g's texts; returns (cache, seconds, built)."""
    from engine_py import LayerCache

    cache_dir = cache_dir or _default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    h = hashlib.sha256("\n".join(g.texts).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"debian-{g.num_nodes}-{h}.minilm-L{layers[0]}-{layers[-1]}.cache")
    existed = os.path.exists(path)
    t0 = time.perf_counter()
    cache = LayerCache.build(path, enc, g.texts, layers=layers, dtype="float16", batch_size=64,
                             show_progress_bar=None)
    return cache, time.perf_counter() - t0, not existed



def graph_and_cache(dataset, subsample, cache_dir, log):
    """The benchmark graph, the MiniLM encoder, its layer cache (all layers;
    built once, then reused), the Graph and the seconds the cache took to
    build in this run (None: reused): what every ENGINE benchmark starts
    from."""
    from engine_py import Encoder, Graph
    from engine_py.models import minilm_path

    g = load_graph(dataset, subsample)
    log(g)
    enc = Encoder.from_pretrained(minilm_path(), max_length=128)
    cache, t_cache, built = open_cache(g, enc, cache_dir, list(range(enc.num_layers + 1)))
    log(f"cache {cache.path}: {'built' if built else 'reused'} in {t_cache:.1f} s")
    return g, enc, cache, Graph(g.edge_index, g.num_nodes), (t_cache if built else None)


def open_given_cache(path, g):
    """An existing layer cache of g's texts (--cache; e.g. a decoder LLM's
    from bench engine-llm), checked against the graph: the same number of
    rows, complete, and built from the same texts in the same order."""
    from engine_py import LayerCache
    from engine_py.cache import _digest_bytes, _texts_digest_int

    cache = LayerCache.open(path)
    if cache.num_nodes != g.num_nodes:
        raise SystemExit(f"--cache {path}: {cache.num_nodes:,} rows, but the graph has {g.num_nodes:,} nodes")
    if cache.rows_done < cache.num_nodes:
        raise SystemExit(f"--cache {path}: only {cache.rows_done:,} of {cache.num_nodes:,} rows are built")
    if cache.info()["texts_digest"] != _digest_bytes(_texts_digest_int(g.texts)):
        raise SystemExit(f"--cache {path}: built from other texts than this graph's")
    return cache


def _med(xs):
    return statistics.median(xs) if xs else float("nan")


class _Pair:
    """engine_py model and the torch reference, trained side by side."""

    def __init__(self, cache, graph, g, seed, hp, EngineRef):
        import torch

        from engine_py import EngineClassifier

        self.torch = torch
        self.clf = EngineClassifier(seed=seed, show_progress_bar=False, **hp)
        self.clf._setup(cache, graph, g.labels, g.train_idx, None)   # builds the model, no training
        sd = self.clf.state_dict()
        c = self.clf
        self.ref = EngineRef(len(c.layers_), c.in_dim_, c.reduced_dim_, c.hidden, c.num_classes_,
                             c.gnn, c.gnn_layers, c.activation, c.norm, float(c.dropout), float(c.T),
                             bool(c.early_exit), c.heads)
        self.ref.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                 strict=True)
        self.opt = torch.optim.AdamW(self.ref.parameters(), lr=float(c.lr), betas=(0.9, 0.999),
                                     eps=1e-8, weight_decay=float(c.weight_decay))
        # the fast path: the same model and initial weights with bf16 products
        self.fast = EngineClassifier(seed=seed, show_progress_bar=False, precision="bfloat16", **hp)
        self.fast._setup(cache, graph, g.labels, g.train_idx, None)
        self.fast.load_state_dict(sd)
        self.seed = seed


def _to_torch(torch, b, states):
    return ([torch.from_numpy(x) for x in states], torch.from_numpy(b.edge_index),
            torch.from_numpy(b.graph_ptr))


class _PygPipeline:
    """What a PyTorch Geometric user would run for ENGINE: ego graphs computed
    once per node (as the reference code precomputes its subgraphs), a batch
    assembled with ``Batch.from_data_list``, node states indexed from
    in-memory float32 tensors (the reference keeps every layer in RAM), and
    the ladder model built from PyG's own SAGEConv (tests/reference with
    ``pyg=True``; parity with engine_py is tested in tests/test_engine.py).
    Timed per batch: assembly + indexing + forward/backward/AdamW."""

    def __init__(self, cache, graph, clf, sd, EngineRef, node_ids):
        import torch
        from torch_geometric.data import Data

        self.torch = torch
        c = clf
        self.layers = [torch.from_numpy(np.ascontiguousarray(cache.layer(l), dtype=np.float32))
                       for l in c.layers_]
        # one big khop sample (deterministic without a neighbour cap) cut into ego graphs
        b = clf._sample(graph, node_ids, 0)
        ei = b.edge_index
        self.data = {}
        order = np.argsort(ei[1], kind="stable")
        ei = ei[:, order]
        edge_cut = np.searchsorted(ei[1], b.graph_ptr)
        for gi, v in enumerate(node_ids.tolist()):
            a, z = int(b.graph_ptr[gi]), int(b.graph_ptr[gi + 1])
            e = ei[:, edge_cut[gi]:edge_cut[gi + 1]] - a
            self.data[v] = Data(edge_index=torch.from_numpy(np.ascontiguousarray(e)),
                                n_id=torch.from_numpy(b.nodes[a:z].copy()), num_nodes=z - a)
        self.model = EngineRef(len(c.layers_), c.in_dim_, c.reduced_dim_, c.hidden, c.num_classes_,
                               c.gnn, c.gnn_layers, c.activation, c.norm, float(c.dropout), float(c.T),
                               bool(c.early_exit), c.heads, pyg=True)
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
                                   strict=True)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=float(c.lr), betas=(0.9, 0.999),
                                     eps=1e-8, weight_decay=float(c.weight_decay))

    def _inputs(self, targets):
        from torch_geometric.data import Batch as PygBatch

        batch = PygBatch.from_data_list([self.data[v] for v in targets.tolist()])
        states = [h[batch.n_id] for h in self.layers]
        return states, batch.edge_index, batch.ptr

    def train_step(self, targets, y, EngineRef):
        self.model.train()
        states, ei, ptr = self._inputs(targets)
        self.opt.zero_grad(set_to_none=True)
        EngineRef.loss(self.model(states, ei, ptr), y).backward()
        self.opt.step()

    def accuracy(self, ids, y, bs):
        self.model.eval()
        hits = 0
        with self.torch.no_grad():
            for s in range(0, len(ids), bs):
                t = ids[s:s + bs]
                hits += int((self.model(*self._inputs(t))[-1].argmax(1).numpy() == y[t]).sum())
        return hits / max(1, len(ids))


def _reduced_side(cache, graph, g, seed, hp, clf, input_rank, precision):
    """The input_rank side of part (a): what ``EngineClassifier(input_rank=R)``
    trains (its own fit-time reduction, engine_py/_state_reduction.py), its
    initial weights those of ``clf`` except the (k, R) first linear, and every
    node's reduced states. Returns (classifier, states, seconds the basis and
    the reduction took, the variance share each layer's basis keeps)."""
    from engine_py import EngineClassifier

    red = EngineClassifier(seed=seed, show_progress_bar=False, precision=precision,
                           input_rank=input_rank, **hp)
    red._setup(cache, graph, g.labels, g.train_idx, None)
    t0 = time.perf_counter()
    basis, states = red._reduce_inputs(cache, False)
    if basis is None:
        raise SystemExit(f"--input-rank {input_rank}: must be below the states' width {cache.dim}")
    secs = time.perf_counter() - t0
    load_all_but_first_linear(red, clf.state_dict())
    return red, states, secs, basis.explained


def load_all_but_first_linear(clf, init):
    """Load the full-width state dict ``init`` into ``clf``'s reduced-input
    model, keeping clf's own (k, R) first projector linears."""
    clf.load_state_dict({n: v for n, v in init.items() if ".projector.0." not in n}
                        | {n: v for n, v in clf.state_dict().items() if ".projector.0." in n})


def run_pair(cache, graph, g, seed, hp, epochs, patience, EngineRef, log=print, pyg_epochs=0,
             input_rank=None, input_rank_precision="float32"):
    """Part (a) for one seed: engine_py float32, engine_py bfloat16 (the fast
    path), with ``input_rank`` engine_py's reduced-input model too, and the
    torch reference, interleaved batch by batch on the same batches from the
    same initial weights. Returns per-epoch times and accuracies per side."""
    import torch

    from engine_py.engine import _seed64

    p = _Pair(cache, graph, g, seed, hp, EngineRef)
    clf, ref, opt, fast = p.clf, p.ref, p.opt, p.fast
    red = red_states = None
    if input_rank:
        red, red_states, red_secs, explained = _reduced_side(cache, graph, g, seed, hp, clf, input_rank,
                                                             input_rank_precision)
    y = g.labels.astype(np.int64)
    lr, wd, bs = float(clf.lr), float(clf.weight_decay), int(clf.batch_size)
    rng = np.random.default_rng(_seed64(seed, 2))
    train_idx, val_idx, test_idx = g.train_idx, g.val_idx, g.test_idx
    sides = ("eng", "fast", "ref") + (("red",) if red is not None else ())
    models = {"eng": clf, "fast": fast, "red": red}
    best = {k: (-1.0, -1, None) for k in sides}
    active = {k: True for k in sides}
    out = {"prep": [], "expand": [], "val": [], "pyg": [], "pyg_val": [], "pyg_setup": None}
    for k in sides:
        out[k], out[k + "_eval"] = [], []
    if red is not None:
        out["reduce_s"], out["explained"] = red_secs, explained
    pyg = None
    if pyg_epochs > 0:
        t0 = time.perf_counter()
        pyg = _PygPipeline(cache, graph, clf, clf.state_dict(), EngineRef,
                           np.concatenate([train_idx, val_idx]))
        out["pyg_setup"] = time.perf_counter() - t0

    def inputs(t, sample_seed):
        """The batch, engine_py's states (one row per distinct node) and the
        per-node states the torch reference takes (rows repeated)."""
        b = clf._sample(graph, t, sample_seed)
        keys, rows, st = clf._gather_unique(cache, b)
        st = {"full": st}
        if red is not None:
            st["red"] = [red_states.gather(l, keys) for l in red.layers_]
        t0 = time.perf_counter()
        tt = _to_torch(torch, b, [h[rows] for h in st["full"]])
        return b, rows, st, tt, time.perf_counter() - t0

    def evaluate(ids):
        preds = {k: [] for k in sides}
        secs = {k: 0.0 for k in sides}
        eval_seed = _seed64(seed, 0xE7A1)
        ref.eval()
        for s in range(0, len(ids), bs):
            b, rows, st, tt, _ = inputs(ids[s:s + bs], eval_seed)
            for k in sides:
                if k == "ref":
                    continue
                t0 = time.perf_counter()
                z = models[k].model_.predict_batch(b.graph_ptr, b.indptr, b.indices,
                                                   st["red" if k == "red" else "full"], rows=rows)[-1]
                secs[k] += time.perf_counter() - t0
                preds[k].append(z.argmax(1))
            t0 = time.perf_counter()
            with torch.no_grad():
                zr = ref(*tt)[-1]
            secs["ref"] += time.perf_counter() - t0
            preds["ref"].append(zr.argmax(1).numpy())
        return {k: float(np.mean(np.concatenate(preds[k]) == y[ids])) for k in sides}, secs

    for epoch in range(epochs):
        perm = train_idx[rng.permutation(train_idx.size)]
        t_prep = t_pyg = t_expand = 0.0
        t_side = {k: 0.0 for k in sides}
        run_pyg = pyg is not None and epoch < pyg_epochs
        ref.train()
        for bi, s in enumerate(range(0, perm.size, bs)):
            t = perm[s:s + bs]
            t0 = time.perf_counter()
            b, rows, st, tt, t_exp = inputs(t, _seed64(seed, 3, epoch))
            yt = torch.from_numpy(y[t])
            t_prep += time.perf_counter() - t0 - t_exp
            t_expand += t_exp
            step_seed = _seed64(seed, 4, epoch, bi)
            for k in sides:
                if k != "ref" and active[k]:
                    t0 = time.perf_counter()
                    loss = models[k].model_.train_batch(b.graph_ptr, b.indptr, b.indices,
                                                        st["red" if k == "red" else "full"], y[t],
                                                        step_seed, lr, wd, rows=rows)
                    t_side[k] += time.perf_counter() - t0
                    if not np.isfinite(loss):
                        raise FloatingPointError(f"engine_py ({k}) loss {loss}")
            if active["ref"]:
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                lt = EngineRef.loss(ref(*tt), yt)
                lt.backward()
                opt.step()
                t_side["ref"] += time.perf_counter() - t0
            if run_pyg:
                t0 = time.perf_counter()
                pyg.train_step(t, yt, EngineRef)
                t_pyg += time.perf_counter() - t0
        out["prep"].append(t_prep)
        out["expand"].append(t_expand)
        for k in sides:
            if active[k]:
                out[k].append(t_side[k])
        if run_pyg:
            out["pyg"].append(t_pyg)
            out["pyg_val"].append(pyg.accuracy(val_idx, y, bs))
        accs, secs = evaluate(val_idx)
        for k in sides:
            out[k + "_eval"].append(secs[k])
        out["val"].append(accs)
        for k in sides:
            if not active[k]:
                continue
            if accs[k] > best[k][0]:
                w = ({n: v.clone() for n, v in ref.state_dict().items()} if k == "ref" else
                     models[k]._params.copy())
                best[k] = (accs[k], epoch, w)
            if epoch - best[k][1] >= patience:
                active[k] = False
        log(f"  seed {seed} epoch {epoch:2d}: sample+gather {t_prep:6.2f} s | engine_py step "
            f"{t_side['eng']:6.2f} s val {100 * accs['eng']:5.2f}% | bf16 step {t_side['fast']:6.2f} s "
            f"val {100 * accs['fast']:5.2f}% | torch step {t_side['ref']:6.2f} s val {100 * accs['ref']:5.2f}%"
            + (f" | input rank step {t_side['red']:6.2f} s val {100 * accs['red']:5.2f}%" if red else "")
            + (f" | PyG pipeline {t_pyg:6.2f} s val {100 * out['pyg_val'][-1]:5.2f}%" if run_pyg else ""))
        if not any(active.values()):
            break
    clf._params[:] = best["eng"][2]
    fast._params[:] = best["fast"][2]
    if red is not None:
        red._params[:] = best["red"][2]
    ref.load_state_dict(best["ref"][2])
    accs, _ = evaluate(test_idx)
    out.update(epochs_run=len(out["prep"]))
    for k in sides:
        out.update({f"test_{k}": accs[k], f"best_val_{k}": best[k][0], f"best_epoch_{k}": best[k][1]})
    return out


def _hf_encoder(path, layers, max_length, threads):
    """A closure encoding texts with transformers' BertModel: masked mean per layer."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    torch.set_num_threads(threads)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def encode(texts, batch_size=64):
        out = np.empty((len(layers), len(texts), model.config.hidden_size), np.float32)
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                enc = tok(texts[s:s + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt")
                hs = model(**enc, output_hidden_states=True).hidden_states
                m = enc["attention_mask"].unsqueeze(-1).to(hs[0].dtype)
                for i, l in enumerate(layers):
                    out[i, s:s + len(texts[s:s + batch_size])] = (
                        (hs[l] * m).sum(1) / m.sum(1).clamp(min=1e-9)).numpy()
        return out

    return encode


def run_live(cache, graph, g, enc, hp, n_batches, hf=None, log=print):
    """Part (b): per-batch step time from the cache vs re-encoding the batch texts."""
    from engine_py import EngineClassifier
    from engine_py.engine import _seed64

    clf = EngineClassifier(seed=0, show_progress_bar=False, **hp)
    clf._setup(cache, graph, g.labels, g.train_idx, None)   # builds the model, no training
    y = g.labels.astype(np.int64)
    bs = int(clf.batch_size)
    perm = g.train_idx[np.random.default_rng(7).permutation(g.train_idx.size)]
    rows = {"cached": [], "live": [], "hf": []}
    sizes = []
    lr, wd = float(clf.lr), float(clf.weight_decay)
    for bi in range(min(n_batches, -(-perm.size // bs))):
        t = perm[bi * bs:(bi + 1) * bs]
        step_seed = _seed64(0, 4, 0, bi)
        # cached: sample + gather + step
        t0 = time.perf_counter()
        b = clf._sample(graph, t, _seed64(0, 3, 0))
        st = clf._gather(cache, b)
        clf.model_.train_batch(b.graph_ptr, b.indptr, b.indices, st, y[t], step_seed, lr, wd)
        rows["cached"].append(time.perf_counter() - t0)
        uniq, inv = np.unique(b.nodes, return_inverse=True)
        texts = [g.texts[i] for i in uniq.tolist()]
        sizes.append((b.num_nodes, uniq.size))
        encoders = [("live", lambda tx: enc.encode_layers(tx, layers=clf.layers_, batch_size=64))]
        if hf is not None:
            encoders.append(("hf", hf))
        for name, fn in encoders:
            t0 = time.perf_counter()
            b2 = clf._sample(graph, t, _seed64(0, 3, 0))
            states = fn(texts)
            st2 = [np.ascontiguousarray(states[i][inv]) for i in range(len(clf.layers_))]
            clf.model_.train_batch(b2.graph_ptr, b2.indptr, b2.indices, st2, y[t], step_seed, lr, wd)
            rows[name].append(time.perf_counter() - t0)
        log(f"  batch {bi}: {b.num_nodes} subgraph nodes ({uniq.size} unique texts): cached "
            f"{rows['cached'][-1]:.3f} s, engine_py encoder {rows['live'][-1]:.2f} s"
            + (f", transformers {rows['hf'][-1]:.2f} s" if rows["hf"] else ""))
    n_batches_epoch = -(-g.train_idx.size // bs)
    return dict(rows=rows, sizes=sizes, batches_per_epoch=n_batches_epoch)


def run_baselines(cache, graph, g, seeds, epochs, patience, last, log=print):
    """Part (c): MLP and SAGE on the last layer with EngineClassifier.fit."""
    from engine_py import EngineClassifier, Graph

    no_edges = Graph(np.zeros((2, 0), dtype=np.int64), g.num_nodes)
    res = {"MLP": [], "SAGE": []}
    for seed in seeds:
        for name, gr in (("MLP", no_edges), ("SAGE", graph)):
            clf = EngineClassifier(layers=[last], early_exit=False, epochs=epochs, patience=patience,
                                   seed=seed, show_progress_bar=False)
            t0 = time.perf_counter()
            clf.fit(cache, gr, g.labels, g.train_idx, g.val_idx)
            dt = time.perf_counter() - t0
            acc = clf.score(g.test_idx, g.labels[g.test_idx], cache=cache, graph=gr)
            res[name].append((acc, clf.best_val_acc_, dt, clf.n_epochs_))
            log(f"  {name} on layer {last}, seed {seed}: val {100 * clf.best_val_acc_:.2f}% test "
                f"{100 * acc:.2f}% ({clf.n_epochs_} epochs, {dt:.1f} s)")
    return res


def _pm(xs):
    xs = [100 * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.2f}"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


def main(argv=None) -> int:
    import engine_py
    from engine_py import Encoder, Graph
    from engine_py._progress import progress
    from engine_py.bench import add_output_args, finish, machine_line, progress_show, start_run
    from engine_py.models import minilm_path

    ap = argparse.ArgumentParser(prog="python -m engine_py bench engine", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", choices=("debian", "demo"), default="debian",
                    help="debian: this machine's full apt package graph (default); demo: the shipped 4,000-node graph")
    ap.add_argument("--subsample", type=int, default=None,
                    help="keep a random induced subgraph of N nodes (own cache)")
    ap.add_argument("--epochs", type=int, default=20, help="max training epochs per seed")
    ap.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    ap.add_argument("--live-batches", type=int, default=5,
                    help="batches timed with re-encoding for part (b); 0 skips it")
    ap.add_argument("--pyg-epochs", type=int, default=None,
                    help="epochs per seed also run through a PyTorch Geometric pipeline "
                         "(default 1 when torch_geometric is installed, else 0)")
    ap.add_argument("--no-hf", action="store_true", help="part (b) without transformers")
    ap.add_argument("--no-baselines", action="store_true", help="skip part (c)'s MLP/SAGE runs")
    ap.add_argument("--cache-dir", default=None,
                    help="layer cache folder (default $ENGINE_PY_CACHE or ~/.cache/engine_py)")
    ap.add_argument("--cache", default=None, metavar="FILE",
                    help="train on this existing layer cache of the graph's texts instead of the MiniLM one "
                         "(e.g. a decoder LLM's, from bench engine-llm; checked against the graph's texts). "
                         "Part (b) re-encodes with MiniLM, so it needs --live-batches 0 here")
    ap.add_argument("--threads", type=int, default=None, help="engine_py and torch threads")
    ap.add_argument("--section", default="engine",
                    help="section name in a markdown --out (default: engine), e.g. engine-2threads for a "
                         "second configuration next to the main table")
    ap.add_argument("--input-rank", type=int, default=None, metavar="R",
                    help="part (a) also trains EngineClassifier(input_rank=R) on the same batches: the "
                         "projector's first linear on each layer's top-R principal directions")
    ap.add_argument("--input-rank-precision", choices=("float32", "bfloat16"), default="float32",
                    help="precision of the --input-rank side (default float32)")
    ap.add_argument("--quiet", action="store_true")
    add_output_args(ap, "engine")
    args = ap.parse_args(argv)
    run = start_run()
    show = progress_show(args)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))

    import torch

    if args.threads:
        engine_py.set_num_threads(args.threads)
    threads = engine_py.get_num_threads()
    torch.set_num_threads(threads)
    EngineRef = _engine_ref()

    if args.cache:
        if args.live_batches > 0:
            raise SystemExit("--cache: part (b) re-encodes the batch texts with MiniLM, not with the "
                             "cache's encoder; pass --live-batches 0")
        g = load_graph(args.dataset, args.subsample)
        cache, graph, t_cache = open_given_cache(args.cache, g), Graph(g.edge_index, g.num_nodes), None
        log(f"cache {cache.path}: given ({cache.num_nodes:,} x {len(cache.layers)} x {cache.dim})")
    else:
        g, enc, cache, graph, t_cache = graph_and_cache(args.dataset, args.subsample, args.cache_dir, log)
    built = t_cache is not None
    layers = list(cache.layers)
    hp = {}   # EngineClassifier defaults
    seeds = list(range(args.seeds))

    log("(a) engine_py vs PyTorch reference, same batches")
    pyg_epochs = args.pyg_epochs
    if pyg_epochs is None:
        try:
            import torch_geometric  # noqa: F401
            pyg_epochs = 1
        except ImportError:
            pyg_epochs = 0
    runs = [run_pair(cache, graph, g, s, hp, args.epochs, args.patience, EngineRef, log, pyg_epochs,
                     args.input_rank, args.input_rank_precision)
            for s in progress(seeds, "bench engine (a)", "seed", show, logger="engine_py.bench")]
    pyg_t = [x for r in runs for x in r["pyg"]]
    pyg_v = [x for r in runs for x in r["pyg_val"]]
    # the same epochs of the other sides, for a like-for-like median
    first = [(r, i) for r in runs for i in range(len(r["pyg"]))]
    eng_first = [r["eng"][i] + r["prep"][i] for r, i in first]
    fast_first = [r["fast"][i] + r["prep"][i] for r, i in first if i < len(r["fast"])]
    ref_first = [r["ref"][i] + r["prep"][i] + r["expand"][i] for r, i in first]
    val_first = [r["val"][i]["eng"] for r, i in first]
    fval_first = [r["val"][i]["fast"] for r, i in first]
    eng_t = [x for r in runs for x in r["eng"]]
    fast_t = [x for r in runs for x in r["fast"]]
    ref_t = [x for r in runs for x in r["ref"]]
    prep_t = [x for r in runs for x in r["prep"]]
    eng_ev = [x for r in runs for x in r["eng_eval"]]
    fast_ev = [x for r in runs for x in r["fast_eval"]]
    ref_ev = [x for r in runs for x in r["ref_eval"]]
    acc_e = [r["test_eng"] for r in runs]
    acc_f = [r["test_fast"] for r in runs]
    acc_r = [r["test_ref"] for r in runs]
    val_e = [r["best_val_eng"] for r in runs]
    val_f = [r["best_val_fast"] for r in runs]
    val_r = [r["best_val_ref"] for r in runs]
    ratio = _med(ref_t) / _med(eng_t)
    ratio_fast = _med(ref_t) / _med(fast_t)
    red_t = red_ev = acc_x = val_x = None
    if args.input_rank:
        red_t = [x for r in runs for x in r["red"]]
        red_ev = [x for r in runs for x in r["red_eval"]]
        acc_x = [r["test_red"] for r in runs]
        val_x = [r["best_val_red"] for r in runs]

    live = None
    if args.live_batches > 0:
        log("(b) cached vs re-encoding the batch texts")
        hf = None if args.no_hf else _hf_encoder(minilm_path(), layers, 128, threads)
        live = run_live(cache, graph, g, enc, hp, args.live_batches, hf, log)

    base = None
    if not args.no_baselines:
        log("(c) baselines on the last layer")
        base = run_baselines(cache, graph, g, progress(seeds, "bench engine (c)", "seed", show,
                                                       logger="engine_py.bench"),
                             args.epochs, args.patience, layers[-1], log)

    nb = -(-g.train_idx.size // 256)
    what = (f"{'full Debian package graph of this machine' if args.dataset == 'debian' and not args.subsample else args.dataset + ' graph'}"
            f"{f' (random {args.subsample}-node induced subgraph)' if args.subsample else ''}: "
            f"{g.num_nodes:,} nodes, {g.num_edges:,} edges, {g.num_classes} classes; train/val/test "
            f"{g.train_idx.size:,}/{g.val_idx.size:,}/{g.test_idx.size:,}")
    md = [f"## ENGINE training (`python -m engine_py bench engine {' '.join(argv or [])}`)".replace(" `)", "`)"),
          "", f"{what}. Layer cache: " + (
              f"`{os.path.basename(cache.path)}` (given with --cache: layers {','.join(map(str, cache.layers))}, "
              f"{cache.dtype}, {cache.num_nodes:,} x {len(cache.layers)} x {cache.dim}; built earlier by "
              "engine_py, its encoder is named in the file name). " if args.cache else
              f"all-MiniLM-L6-v2 layers 0-6, mean-pooled, float16, built by engine_py "
              f"({'built in this run' if built else 'reused'}; {cache.num_nodes:,} x {len(cache.layers)} x "
              f"{cache.dim}). ") +
          f"EngineClassifier defaults (7 SAGE ladders, k 128, exit heads, dropout 0.5, AdamW lr 1e-3, "
          f"wd 5e-4, batch 256 targets, khop sampler); up to {args.epochs} epochs, patience {args.patience}, "
          f"seeds {seeds[0]}..{seeds[-1]}; {threads} thread{'s' if threads != 1 else ''} for engine_py and torch.",
          "",
          "**(a) One training epoch** "
          f"({nb} batches; step = forward + backward + AdamW). {'Four' if red_t is not None else 'Three'} sides get the same batches: "
          "sampled once by engine_py's C sampler, each distinct node's states gathered once from the "
          "cache; engine_py takes them with `rows=` (a node repeated across subgraphs is projected "
          "once), the torch side gets one row per subgraph node (`states[rows]`, not timed) via "
          "`torch.from_numpy`; sampling+gather is reported on its own. engine_py float32 and "
          "engine_py bfloat16 (`precision=\"bfloat16\"`: bf16 products, float32 everything else) "
          "start from the same initial weights as the PyTorch side: tests/reference/engine_ref.py "
          "(plain torch, PyG semantics), torch.optim.AdamW. Test accuracy at each side's best "
          "validation epoch.",
          "",
          "| | epoch (training steps), median | validation pass, median | best val acc % | test acc % |",
          "|---|---:|---:|---:|---:|",
          f"| engine_py float32 | {_med(eng_t):.2f} s | {_med(eng_ev):.2f} s | {_pm(val_e)} | {_pm(acc_e)} |",
          f"| engine_py bfloat16 | {_med(fast_t):.2f} s | {_med(fast_ev):.2f} s | {_pm(val_f)} | {_pm(acc_f)} |",
          f"| PyTorch {torch.__version__} reference (float32) | {_med(ref_t):.2f} s | {_med(ref_ev):.2f} s | {_pm(val_r)} | {_pm(acc_r)} |",
          f"| ratio torch / engine_py float32; test difference | **{ratio:.2f}x** | {_med(ref_ev) / _med(eng_ev):.2f}x | | "
          f"{100 * (statistics.mean(acc_e) - statistics.mean(acc_r)):+.2f} pt |",
          f"| ratio torch / engine_py bfloat16; test difference | **{ratio_fast:.2f}x** | {_med(ref_ev) / _med(fast_ev):.2f}x | | "
          f"{100 * (statistics.mean(acc_f) - statistics.mean(acc_r)):+.2f} pt |",
          ] + ([] if red_t is None else [
          f"| engine_py {args.input_rank_precision}, input rank {args.input_rank} | {_med(red_t):.2f} s | "
          f"{_med(red_ev):.2f} s | {_pm(val_x)} | {_pm(acc_x)} |",
          f"| ratio torch / engine_py input rank {args.input_rank}; test difference | **{_med(ref_t) / _med(red_t):.2f}x** | "
          f"{_med(ref_ev) / _med(red_ev):.2f}x | | {100 * (statistics.mean(acc_x) - statistics.mean(acc_r)):+.2f} pt |",
          ]) + [
          "",
          f"Sampling + gathering (shared, not in any step time): median {_med(prep_t):.2f} s per epoch. "
          f"Epochs run per seed: {', '.join(str(r['epochs_run']) for r in runs)}; "
          f"medians over {len(eng_t)} (float32) / {len(fast_t)} (bfloat16) / {len(ref_t)} (torch) epochs.",
          ]
    if red_t is not None:
        ex = [e for r in runs for e in r["explained"]]
        md += ["", f"Input rank {args.input_rank} (`EngineClassifier(input_rank={args.input_rank}"
               + (f", precision=\"{args.input_rank_precision}\"" if args.input_rank_precision != "float32" else "")
               + ")`): each ladder's first projector linear is trained on the top "
               f"{args.input_rank} principal directions of its layer's standardised states "
               f"({100 * min(ex):.1f}-{100 * max(ex):.1f}% of their variance), then folded back to the full "
               "width. It starts from the same weights as the other sides except that (k x R) linear. Its "
               "one-time cost per fit (basis + every node's reduced states, before the first epoch) was "
               f"{_med([r['reduce_s'] for r in runs]):.1f} s per seed (median); epochs run per seed: "
               f"{', '.join(str(len(r['red'])) for r in runs)}."]
    if pyg_t:
        import torch_geometric
        e2e = _med(eng_first)
        md += ["", f"**(a') End to end, against a PyTorch Geometric pipeline** ({len(pyg_t)} "
               f"epoch{'s' if len(pyg_t) != 1 else ''}: the first {pyg_epochs} of each seed, interleaved "
               "batch by batch with the runs above). "
               "What a PyG user would run: ego graphs computed once per node (not timed: "
               f"{_med([r['pyg_setup'] for r in runs]):.1f} s per seed), each batch assembled with "
               "`Batch.from_data_list`, states indexed from float32 tensors held in RAM (as the reference "
               "code keeps them), the ladders built from torch_geometric's SAGEConv, torch.optim.AdamW. "
               "engine_py: C sampler + gather from the on-disk fp16 cache + C step. Per-epoch "
               "time includes everything done per batch.",
               "", "| | epoch, end to end (median) | val acc % after the epoch |", "|---|---:|---:|",
               f"| engine_py float32 (sample + gather + step) | {e2e:.2f} s | {_pm(val_first)} |",
               f"| engine_py bfloat16 (sample + gather + step) | {_med(fast_first):.2f} s | {_pm(fval_first)} |",
               f"| plain-torch reference (engine_py's batches, rows repeated, + step) | {_med(ref_first):.2f} s | |",
               f"| PyTorch Geometric {torch_geometric.__version__} pipeline | {_med(pyg_t):.2f} s | {_pm(pyg_v)} |",
               f"| ratio PyG / engine_py float32 | **{_med(pyg_t) / e2e:.2f}x** | |",
               f"| ratio PyG / engine_py bfloat16 | **{_med(pyg_t) / _med(fast_first):.2f}x** | |",
               f"| ratio plain torch / engine_py bfloat16 | **{_med(ref_first) / _med(fast_first):.2f}x** | |"]
    if live is not None:
        rows = live["rows"]
        c, l = _med(rows["cached"]), _med(rows["live"])
        nodes = _med([s[0] for s in live["sizes"]])
        uniq = _med([s[1] for s in live["sizes"]])
        k = live["batches_per_epoch"]
        md += ["", f"**(b) Caching speed-up** (median per batch over {len(rows['cached'])} training batches, "
               f"scaled to an epoch of {k} batches; a batch has a median of {nodes:.0f} subgraph nodes, "
               f"{uniq:.0f} unique texts, which are the ones re-encoded; sample + states + step, max_length 128).",
               "", "| states from | per batch | per epoch (scaled) | speed-up of the cache |",
               "|---|---:|---:|---:|",
               f"| layer cache (engine_py) | {c:.3f} s | {c * k:.1f} s | 1x |",
               f"| re-encoded by engine_py's MiniLM encoder | {l:.2f} s | {l * k:.0f} s | **{l / c:.0f}x** |"]
        if rows["hf"]:
            h = _med(rows["hf"])
            md.append(f"| re-encoded by transformers BertModel (torch) | {h:.2f} s | {h * k:.0f} s | **{h / c:.0f}x** |")
        md.append("")
        md.append(f"Building the whole cache once took {t_cache:.0f} s" if built else
                  "The cache was reused (its one-time build cost is not in this table)")
        md[-1] += " (paper: 12x with Llama-2-7B; target here >= 25x)."
    if base is not None:
        md += ["", "**(c) Test accuracy** (mean ± std over seeds; selection on validation)", "",
               "| model | best val acc % | test acc % |", "|---|---:|---:|",
               f"| ENGINE (7 ladders on layers 0-6, engine_py) | {_pm(val_e)} | {_pm(acc_e)} |",
               f"| ENGINE (engine_py, bfloat16 products) | {_pm(val_f)} | {_pm(acc_f)} |",
               f"| ENGINE (PyTorch reference, same batches) | {_pm(val_r)} | {_pm(acc_r)} |",
               f"| MLP on last layer (no edges) | {_pm([x[1] for x in base['MLP']])} | {_pm([x[0] for x in base['MLP']])} |",
               f"| SAGE on last layer | {_pm([x[1] for x in base['SAGE']])} | {_pm([x[0] for x in base['SAGE']])} |"]
    machine = run.stop(threads=threads)
    md += ["", f"Machine: {machine_line(machine)} (other jobs may share the machine: absolute times "
           f"are noisy; the two sides of each comparison are interleaved batch by batch so their "
           f"ratio is not)."]
    text = "\n".join(md)
    print()
    results = {
        "dataset": args.dataset, "subsample": args.subsample, "nodes": g.num_nodes,
        "edges": g.num_edges, "classes": g.num_classes, "epochs": args.epochs,
        "patience": args.patience, "seeds": seeds, "threads": threads,
        "cache": {"path": cache.path, "built": built, "seconds": t_cache},
        "a": {"epoch_s_median": {"engine_py": _med(eng_t), "engine_py_bf16": _med(fast_t),
                                 "torch": _med(ref_t)},
              "eval_s_median": {"engine_py": _med(eng_ev), "engine_py_bf16": _med(fast_ev),
                                "torch": _med(ref_ev)},
              "ratio_torch_over_engine_py": ratio, "ratio_torch_over_engine_py_bf16": ratio_fast,
              "sample_gather_s_median": _med(prep_t),
              "test_acc": {"engine_py": acc_e, "engine_py_bf16": acc_f, "torch": acc_r},
              "best_val_acc": {"engine_py": val_e, "engine_py_bf16": val_f, "torch": val_r},
              "epochs_run": [r["epochs_run"] for r in runs]},
    }
    if red_t is not None:
        results["a"]["input_rank"] = {
            "rank": args.input_rank, "precision": args.input_rank_precision,
            "epoch_s_median": _med(red_t), "eval_s_median": _med(red_ev),
            "ratio_torch_over_input_rank": _med(ref_t) / _med(red_t), "test_acc": acc_x,
            "best_val_acc": val_x, "reduce_s": [r["reduce_s"] for r in runs],
            "explained": [r["explained"] for r in runs], "epochs_run": [len(r["red"]) for r in runs]}
    if pyg_t:
        results["a_pyg"] = {"epoch_s_median": {"engine_py": _med(eng_first), "engine_py_bf16": _med(fast_first),
                                               "torch": _med(ref_first),
                                               "pyg": _med(pyg_t)},
                            "val_acc": {"engine_py": val_first, "engine_py_bf16": fval_first, "pyg": pyg_v}}
    if live is not None:
        results["b"] = {"per_batch_s_median": {k: _med(v) for k, v in live["rows"].items() if v},
                        "batches_per_epoch": live["batches_per_epoch"],
                        "subgraph_sizes": live["sizes"]}
    if base is not None:
        results["c"] = {name: [{"test_acc": a, "best_val_acc": v, "seconds": t, "epochs": e}
                               for a, v, t, e in rows] for name, rows in base.items()}
    finish(args, "engine", text, machine, results, argv)
    return 0
