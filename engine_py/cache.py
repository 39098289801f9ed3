"""The layer cache: an encoder's pooled per-layer states for every node, on disk.

ENGINE runs the frozen encoder once over all node texts and trains its side
structure from the cached states (the paper reports 12x cheaper training).
`LayerCache` is that cache as one file (format: docs/CACHE_FORMAT.md):

- built a batch at a time (memory does not grow with the number of nodes),
  resumable after a crash or Ctrl-C, recomputing at most the batch in flight;
- protected by CRC32C checksums (header, state, every chunk of rows), so a
  damaged file raises `CacheCorruptError` instead of returning garbage;
- read through a memory map: `layer()` is a zero-copy NumPy view, `gather()`
  converts the requested rows to float32 in C with several threads.

The encoder is duck-typed: it needs `encode_layers(texts, layers=..., batch_size=...,
show_progress_bar=False) -> float32 (len(layers), n, D)`, `num_layers`,
`hidden_size` and `fingerprint() -> str`.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np

from . import _core
from ._core import CacheCorruptError
from ._guard import exclusive
from ._progress import progress
from ._threads import adapt as _adapt_threads
from ._validate import check_bool, check_int, check_node_ids

__all__ = ["LayerCache", "CacheCorruptError", "DTYPES", "build_with_dask", "select_layers",
           "parse_layers", "ENGINE_LADDERS"]

#: Storage dtypes and their codes in the file.
DTYPES = {"float32": 0, "float16": 1, "bfloat16": 2}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_MOD = 1 << 256
_log = logging.getLogger(__name__)
# Report progress by default (a bar, or log lines) when at least this many rows remain.
_LONG_JOB_ROWS = 2000


def _dtype_code(dtype: Any) -> int:
    name = dtype if isinstance(dtype, str) else getattr(np.dtype(dtype), "name", str(dtype))
    if name == "bf16":
        name = "bfloat16"
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[name]


def _as_texts(texts: Iterable[str]) -> Sequence[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    texts = texts if isinstance(texts, (list, tuple)) else list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, expected str")
    return texts


def _texts_digest_int(texts: Sequence[str], start: int = 0) -> int:
    """Position-aware digest of the texts, additive over ranges of positions.

    Each (position, text) pair hashes with BLAKE2b-256; the digest is the sum
    mod 2^256. Adding the digest of texts appended at positions N.. to that of
    the first N gives the digest of all of them, so an appended cache has the
    same digest as one built from the full list at once.
    """
    acc = 0
    for i, t in enumerate(texts, start):
        h = hashlib.blake2b(i.to_bytes(8, "little"), digest_size=32)
        h.update(t.encode("utf-8", "surrogatepass"))
        acc += int.from_bytes(h.digest(), "little")
    return acc % _MOD


def _digest_bytes(v: int) -> bytes:
    return v.to_bytes(32, "little")


def _fingerprint(encoder) -> tuple[str, bytes]:
    fp = encoder.fingerprint()
    if not isinstance(fp, str) or not fp:
        raise TypeError("encoder.fingerprint() must return a non-empty str")
    sha = hashlib.sha256(fp.encode("utf-8")).digest()
    # the file keeps the readable text up to 1024 bytes; the hash is the identity
    short = fp.encode("utf-8")[:1024].decode("utf-8", "ignore").replace("\x00", "")
    return short, sha


#: ENGINE's reference selection for a 32-layer Llama is [0, 5, 10, 15, 20, 25, 32]
#: (docs/ALGORITHMS.md A.1): seven hidden states, evenly spaced, from the
#: embedding output to the last layer. select_layers() without ``every``
#: aims at this many states.
ENGINE_LADDERS = 7


def select_layers(num_layers: int, every: int | None = None) -> list[int]:
    """The hidden states ENGINE puts ladders on: every ``every``-th state from
    0 (the embedding output), plus the last one ``num_layers``.

    Rule: ``range(0, num_layers, every)`` followed by ``num_layers``; when the
    last two are closer than ``every / 2``, the one before the last is dropped
    (the reference keeps 32 rather than 30 and 32). This reproduces the
    paper's selection for Llama-2-7B exactly: ``select_layers(32, 5) ==
    [0, 5, 10, 15, 20, 25, 32]``.

    Default ``every``: ``max(1, round(num_layers / (ENGINE_LADDERS - 1)))``,
    i.e. about seven states like the reference: 32 layers -> every 5th
    (the reference itself), SmolLM2's 30 -> every 5th (0, 5, ..., 30),
    Qwen2.5-0.5B's 24 -> every 4th (0, 4, ..., 24), MiniLM's 6 -> every
    layer (0..6).
    """
    num_layers = check_int(num_layers, "num_layers", min=1)
    if every is None:
        every = max(1, int(round(num_layers / (ENGINE_LADDERS - 1))))
    every = check_int(every, "every", min=1)
    out = list(range(0, num_layers, every)) + [num_layers]
    if len(out) >= 3 and out[-1] - out[-2] < every / 2:
        del out[-2]
    return out


def parse_layers(layers, num_layers: int) -> list[int]:
    """Layer ids from a selection: None or "all" (0..num_layers), "engine"
    (select_layers' default), "every:K" (select_layers(num_layers, K)),
    "last" ([num_layers]), an int, or a list of ints (checked: in
    0..num_layers, no duplicates)."""
    num_layers = check_int(num_layers, "num_layers", min=0)
    if layers is None:
        return list(range(num_layers + 1))
    if isinstance(layers, str):
        spec = layers.strip().lower()
        if spec == "all":
            return list(range(num_layers + 1))
        if spec == "last":
            return [num_layers]
        if spec == "engine":
            return select_layers(num_layers)
        if spec.startswith("every:"):
            k = spec[len("every:"):].strip()
            if not k.isdigit() or int(k) < 1:
                raise ValueError(f"layers={layers!r}: 'every:K' needs a positive integer K")
            return select_layers(num_layers, int(k))
        raise ValueError(f"layers={layers!r} is not a layer selection: use a list of ids, 'all', "
                         "'engine', 'every:K' or 'last'")
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        layers = [layers]
    out = [check_int(x, "layers[%d]" % i) for i, x in enumerate(layers)]
    if not out:
        raise ValueError("layers must not be empty")
    for x in out:
        if not 0 <= x <= num_layers:
            raise ValueError(f"layer {x} out of range: the encoder has states 0..{num_layers}")
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate layer ids in {out}")
    return out


def _resolve_layers(encoder, layers) -> list[int]:
    return parse_layers(layers, int(encoder.num_layers))


def _progress(show, total: int, initial: int, desc: str):
    return progress(total, desc, "node", show, logger=_log, initial=initial,
                    long=total - initial >= _LONG_JOB_ROWS)


class LayerCache:
    """Per-layer pooled encoder states of N nodes, stored in one file.

    Make one with `LayerCache.build(...)`, open an existing one with
    `LayerCache.open(path)`. Layers are addressed by their layer id (the
    encoder's hidden-state index, 0 = embeddings), as listed in `.layers`.
    """

    def __init__(self, file, path: str):
        # use build() or open()
        self._f = file
        self._path = path
        self._info = file.info()

    # ------------------------------------------------------------ creation
    @classmethod
    def build(cls, path, encoder, texts, layers=None, dtype="float16", batch_size: int = 64,
              show_progress_bar=None, *, overwrite: bool = False, capacity: int | None = None,
              chunk_rows: int = 256, client=None, max_in_flight: int | None = None,
              worker_writes: bool = False) -> "LayerCache":
        """Encode `texts` and store the states of `layers` at `path`.

        `layers`: a list of hidden-state ids (0 = embeddings), or a selection
        string (parse_layers): "all" (the default, None), "engine" (about
        seven evenly spaced states as the paper, select_layers), "every:K",
        "last".

        If `path` holds a partial cache of the same encoder fingerprint,
        layers, dtype and texts (count and digest), the build resumes where it
        stopped; a complete one is returned at once. A different cache (or a
        damaged file) raises FileExistsError (CacheCorruptError) unless
        `overwrite=True`. `capacity` reserves rows for later `append`s
        (default: exactly len(texts)); `chunk_rows` is the checksum granule.

        Scale-out: with `client` (a dask.distributed.Client, or any executor
        with `submit(fn, *args)` returning futures with `.result()`, such as
        concurrent.futures.ThreadPoolExecutor), batches are encoded by the
        workers, up to `max_in_flight` at once (default 4). An
        engine_py.Encoder is sent as what it was loaded from (path, options,
        fingerprint): every worker thread opens its own copy from the folder
        once (the folder must exist on the workers, docs/SCALE_OUT.md) and
        refuses one whose fingerprint differs. By default the
        states come back here and this process writes them. With
        `worker_writes=True` (workers must see `path`: same machine or a
        shared filesystem) each worker writes and syncs its own, disjoint
        rows into the file and returns only their ids; this process then
        claims them (bitmap, checksums, commit). Either way one process owns
        the state, so the crash-safety protocol and resume are unchanged.
        """
        texts = _as_texts(texts)
        n = len(texts)
        if n == 0:
            raise ValueError("texts is empty: nothing to cache")
        batch_size = check_int(batch_size, "batch_size", min=1)
        capacity = check_int(capacity, "capacity", min=0, none=True)
        chunk_rows = check_int(chunk_rows, "chunk_rows", min=1)
        max_in_flight = check_int(max_in_flight, "max_in_flight", min=1, none=True)
        overwrite = check_bool(overwrite, "overwrite")
        worker_writes = check_bool(worker_writes, "worker_writes")
        code = _dtype_code(dtype)
        layers = _resolve_layers(encoder, layers)
        dim = int(encoder.hidden_size)
        fp_str, fp_sha = _fingerprint(encoder)
        digest = _digest_bytes(_texts_digest_int(texts))
        if capacity is not None and int(capacity) < n:
            raise ValueError(f"capacity ({capacity}) must be >= len(texts) ({n})")
        path = os.fspath(path)
        f = None
        if os.path.exists(path):
            try:
                f = _core.cache_open(path, writable=True)
            except CacheCorruptError as exc:
                if not overwrite:
                    raise CacheCorruptError(
                        f"{path} exists but is not a valid layer cache ({exc}); "
                        "pass overwrite=True to replace it") from exc
            if f is not None:
                diffs = _differences(f.info(), fp_sha, layers, code, dim, n, digest)
                if diffs:
                    f.close()
                    f = None
                    if not overwrite:
                        raise FileExistsError(
                            f"{path} holds a different layer cache ({'; '.join(diffs)}); "
                            "pass overwrite=True to replace it")
        if f is None:
            f = _core.cache_create(path, code, n, int(capacity or 0), dim, layers, int(chunk_rows),
                                   fp_sha, fp_str, digest)
        cache = cls(f, path)
        try:
            cache._fill(encoder, texts, 0, int(batch_size), show_progress_bar, client, max_in_flight,
                        worker_writes)
        except BaseException:
            cache.close()
            raise
        cache._reopen(writable=False)
        return cache

    @classmethod
    def open(cls, path) -> "LayerCache":
        """Open an existing cache read-only, validating its header, sizes and
        state (CacheCorruptError if damaged; FileNotFoundError if absent)."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"no layer cache at {path}")
        return cls(_core.cache_open(path, writable=False), path)

    def _fill(self, encoder, texts: Sequence[str], offset: int, batch_size: int, show,
              client=None, max_in_flight: int | None = None, worker_writes: bool = False) -> None:
        """Encode and write every row not done yet; texts[i - offset] is row i."""
        info = self._f.info()
        K, D, N = len(info["layers"]), info["dim"], info["num_nodes"]
        layers = list(info["layers"])
        missing = np.flatnonzero(~self._f.done_mask()).astype(np.int64)
        if missing.size == 0:
            self._info = info
            return
        if missing[0] < offset:
            raise RuntimeError("internal: rows before the appended range are missing")
        batches = [missing[s:s + batch_size] for s in range(0, missing.size, batch_size)]
        bar = _progress(show, N, N - missing.size, "encoding nodes")

        def write(ids, states):
            if states is None:  # a worker wrote the rows: claim them
                self._f.mark_rows(ids)
                bar.update(ids.size)
                return
            states = np.ascontiguousarray(states, dtype=np.float32)
            if states.shape != (K, ids.size, D):
                raise ValueError(
                    f"encoder.encode_layers returned shape {states.shape}, expected "
                    f"(len(layers)={K}, batch={ids.size}, hidden_size={D})")
            self._f.write_rows(ids, states)
            bar.update(ids.size)
            _adapt_threads()

        with bar:
            if client is None:
                for ids in batches:
                    batch = [texts[int(i) - offset] for i in ids]
                    write(ids, _encode_batch(encoder, batch, layers, batch_size))
            else:
                target = (self._path, info["fp_sha256"]) if worker_writes else None
                self._fill_distributed(client, encoder, texts, offset, batches, layers, batch_size,
                                       max_in_flight or 4, write, target)
        # both state slots hold the finished state, so verify() can demand both
        self._f.sync()
        self._info = self._f.info()

    @staticmethod
    def _fill_distributed(client, encoder, texts, offset, batches, layers, batch_size, max_in_flight,
                          write, target) -> None:
        if not hasattr(client, "submit"):
            raise TypeError("client must have submit(fn, *args) (dask.distributed.Client, "
                            "concurrent.futures executors)")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        enc = encoder
        for_workers = getattr(encoder, "_for_workers", None)
        if for_workers is not None:
            # engine_py.Encoder: send what it was loaded from (a few hundred
            # bytes); each worker thread opens its own copy once and checks
            # the fingerprint (encoder.EncoderSpec), so process workers
            # never get pickled weights and thread workers never share one
            # object ("already in use")
            enc = for_workers()
        elif hasattr(client, "scatter"):  # dask: ship the encoder to the workers once
            try:  # hash=False: a fresh key, never one a previous build is releasing
                enc = client.scatter(encoder, broadcast=True, hash=False)
            except TypeError:
                enc = client.scatter(encoder, broadcast=True)
        # dask.distributed: every task a fresh key (pure=False). The same
        # batch of a later build (a resume after Ctrl-C) must not reuse the
        # key of a task this one cancelled and the scheduler may still be
        # forgetting. Other executors' submit passes keywords on to fn.
        kw = {"pure": False} if type(client).__module__.split(".")[0] == "distributed" else {}
        pending: list = []
        it = iter(batches)
        try:
            while True:
                while len(pending) < max_in_flight:
                    ids = next(it, None)
                    if ids is None:
                        break
                    batch = [texts[int(i) - offset] for i in ids]
                    if target is None:
                        fut = client.submit(_encode_batch, enc, batch, layers, batch_size, **kw)
                    else:
                        fut = client.submit(_encode_and_write, enc, batch, layers, batch_size, target[0],
                                            ids, target[1], **kw)
                    pending.append((ids, fut))
                if not pending:
                    break
                ids, fut = pending.pop(0)  # in order: what is committed is a prefix of the work
                res = fut.result()
                if target is None:
                    write(ids, res)
                else:
                    if not np.array_equal(res, ids):
                        raise RuntimeError("a worker returned rows it was not given")
                    write(ids, None)
        finally:
            for _, fut in pending:
                cancel = getattr(fut, "cancel", None)
                if cancel is not None:
                    cancel()

    # -------------------------------------------------------------- growth
    @exclusive("this LayerCache")
    def append(self, encoder, texts, batch_size: int = 64, show_progress_bar=None) -> np.ndarray:
        """Encode new nodes and add them after the existing ones; returns their
        ids (int64). Grows the file when the capacity is exceeded (a new file
        is written and renamed into place). If interrupted, the cache is left
        partial with the new row count: finish it with
        `LayerCache.build(path, encoder, old_texts + new_texts)`."""
        texts = _as_texts(texts)
        batch_size = check_int(batch_size, "batch_size", min=1)
        if not texts:
            return np.empty(0, dtype=np.int64)
        fp_str, fp_sha = _fingerprint(encoder)
        info = self._f.info()
        if fp_sha != info["fp_sha256"]:
            raise ValueError("append: the encoder's fingerprint differs from the one this cache was built with")
        if int(encoder.hidden_size) != info["dim"]:
            raise ValueError("append: encoder hidden_size differs from the cache dim")
        if info["rows_done"] != info["num_nodes"]:
            raise RuntimeError("append: the cache is incomplete; finish it with LayerCache.build first")
        if not info["writable"]:
            self._reopen(writable=True)
            info = self._f.info()
        n0 = info["num_nodes"]
        n1 = n0 + len(texts)
        digest = (int.from_bytes(info["texts_digest"], "little") + _texts_digest_int(texts, n0)) % _MOD
        if n1 > info["capacity"]:
            self._f.grow(max(n1, 2 * info["capacity"]))
        self._f.set_num_nodes(n1, _digest_bytes(digest))
        self._fill(encoder, texts, n0, int(batch_size), show_progress_bar)
        self._reopen(writable=False)
        return np.arange(n0, n1, dtype=np.int64)

    def _reopen(self, writable: bool) -> None:
        # The write lock is held only while writing: a finished cache is open
        # read-only, so other handles (and processes) can build or append.
        self._f.close()
        self._f = _core.cache_open(self._path, writable=writable)
        self._info = self._f.info()

    # --------------------------------------------------------------- reads
    def _index(self, layer: int) -> int:
        layer = check_int(layer, "layer")
        try:
            return self._info["layers"].index(layer)
        except ValueError:
            raise KeyError(f"layer {layer} is not cached; cached layers: {list(self._info['layers'])}") from None

    def layer(self, layer: int, dtype=None) -> np.ndarray:
        """Rows of one cached layer, shape (N, D).

        With dtype=None: a read-only, zero-copy view of the mapped file
        (float16 or float32). A bfloat16 cache has no NumPy dtype: ask for
        dtype="float32" (converted copy) or dtype="bits" (zero-copy uint16
        view of the raw bfloat16 bits). A dtype different from the stored one
        gives a converted copy. Every chunk of the layer is checked against
        its checksum the first time (CacheCorruptError if damaged)."""
        k = self._index(layer)
        if not self.complete:
            raise RuntimeError(f"the cache is incomplete ({self.rows_done}/{self.num_nodes} rows); "
                               "finish it with LayerCache.build or use gather() on done rows")
        self._f.check_layer(k)
        view = self._f.map_layer(k)
        stored = self.dtype
        if dtype is None:
            if stored == "bfloat16":
                raise TypeError("NumPy has no bfloat16 dtype: use layer(l, dtype='float32') for a "
                                "converted copy or dtype='bits' for the raw uint16 bits")
            return view
        if isinstance(dtype, str) and dtype == "bits":
            return view if view.dtype == np.uint16 else view.view(np.uint16)
        want = np.dtype(dtype)
        if stored == "bfloat16":
            f32 = _core.bf16_to_f32(view)
            return f32 if want == np.float32 else f32.astype(want)
        if want == view.dtype:
            return view
        if stored == "float16" and want == np.float32:
            return _core.f16_to_f32(view.view(np.uint16))
        return view.astype(want)

    def gather(self, layer: int, node_ids, out: np.ndarray | None = None) -> np.ndarray:
        """float32 (n, D): the rows `node_ids` (int array, 0 <= id < N) of one
        layer, converted in C with several threads (an empty list gives a
        (0, D) float32 array). Refuses rows not computed
        yet (ValueError) and rows of a chunk that fails its checksum
        (CacheCorruptError); chunks are checked the first time they are read."""
        k = self._index(layer)
        ids = check_node_ids(node_ids)
        if ids.dtype == np.uint64:
            if ids.size and ids.max() > np.iinfo(np.int64).max:
                raise IndexError("node id out of range")
            ids = ids.astype(np.int64)
        if ids.ndim != 1:
            raise ValueError(f"node_ids must be 1-D, got shape {ids.shape}")
        return self._f.gather(k, ids, out)

    def gather_layers(self, node_ids, layers=None, out: np.ndarray | None = None) -> np.ndarray:
        """float32 (len(layers), n, D): `gather` for several layers (default:
        all cached layers, in file order) — what a G-Ladder batch needs."""
        layers = self.layers if layers is None else [int(l) for l in layers]
        ids = check_node_ids(node_ids)
        shape = (len(layers), ids.shape[0] if ids.ndim == 1 else -1, self.dim)
        if out is None:
            if ids.ndim != 1:
                raise ValueError(f"node_ids must be 1-D, got shape {ids.shape}")
            out = np.empty(shape, dtype=np.float32)
        elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a C-contiguous float32 array of shape {shape}")
        for i, l in enumerate(layers):
            self.gather(l, ids, out=out[i])
        return out

    def verify(self) -> bool:
        """Check the header, both state slots and every complete chunk of
        every layer (read with pread, without growing memory). Returns True,
        or raises CacheCorruptError naming the damaged region (layer and
        rows for data)."""
        self._f.verify()
        return True

    # ---------------------------------------------------------- attributes
    @property
    def path(self) -> str:
        return self._path

    @property
    def layers(self) -> list[int]:
        """Cached layer ids, in file order."""
        return list(self._info["layers"])

    @property
    def num_nodes(self) -> int:
        return int(self._info["num_nodes"])

    @property
    def dim(self) -> int:
        return int(self._info["dim"])

    @property
    def dtype(self) -> str:
        """Storage dtype: 'float16', 'bfloat16' or 'float32'."""
        return _DTYPE_NAMES[self._info["dtype"]]

    @property
    def rows_done(self) -> int:
        return int(self._info["rows_done"])

    @property
    def complete(self) -> bool:
        return self._info["rows_done"] == self._info["num_nodes"]

    @property
    def capacity(self) -> int:
        return int(self._info["capacity"])

    @property
    def chunk_rows(self) -> int:
        return int(self._info["chunk_rows"])

    @property
    def fingerprint(self) -> str:
        """The encoder fingerprint the cache was built with (first 1024 bytes)."""
        return self._info["fp_str"]

    def done_mask(self) -> np.ndarray:
        """bool (N,): rows computed and committed."""
        return self._f.done_mask()

    def info(self) -> dict:
        """Header fields and committed state (sizes, offsets, sequence number)."""
        return dict(self._f.info())

    def close(self) -> None:
        """Close the file. Arrays from layer() stay valid (own mappings)."""
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed

    def __enter__(self) -> "LayerCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"{self.rows_done}/{self.num_nodes} rows done"
        return (f"LayerCache({self._path!r}, layers={self.layers}, num_nodes={self.num_nodes}, "
                f"dim={self.dim}, dtype={self.dtype!r}, {state})")


def _encode_batch(encoder, texts, layers, batch_size):
    """Run on a worker (or here): one batch of texts to float32 (K, n, D)."""
    on_worker = getattr(encoder, "_on_worker", None)
    if on_worker is not None:   # an EncoderSpec: this worker thread's own Encoder
        encoder = on_worker()
    return np.asarray(encoder.encode_layers(texts, layers=layers, batch_size=batch_size,
                                            show_progress_bar=False), dtype=np.float32)


def _encode_and_write(encoder, texts, layers, batch_size, path, ids, fp_sha256):
    """Run on a worker: encode one batch and write its rows (disjoint from
    every other worker's) into the cache file, synced but not yet claimed."""
    states = _encode_batch(encoder, texts, layers, batch_size)
    f = _core.cache_open(path, writable=2)
    try:
        if f.info()["fp_sha256"] != fp_sha256:
            raise ValueError(f"{path} is not the cache this build is writing")
        f.write_data(ids, states)
    finally:
        f.close()
    return ids


def build_with_dask(path, encoder, texts, client, **kwargs) -> LayerCache:
    """`LayerCache.build(path, encoder, texts, client=client, **kwargs)`: batches
    encoded by the Dask workers, written here as they complete. `client` is a
    dask.distributed.Client (or any executor with submit/result)."""
    return LayerCache.build(path, encoder, texts, client=client, **kwargs)


def _differences(info: dict, fp_sha: bytes, layers, code: int, dim: int, n: int, digest: bytes) -> list[str]:
    d = []
    if info["fp_sha256"] != fp_sha:
        d.append("encoder fingerprint differs")
    if list(info["layers"]) != list(layers):
        d.append(f"layers {list(info['layers'])} vs {list(layers)}")
    if info["dtype"] != code:
        d.append(f"dtype {_DTYPE_NAMES[info['dtype']]} vs {_DTYPE_NAMES[code]}")
    if info["dim"] != dim:
        d.append(f"dim {info['dim']} vs {dim}")
    if info["num_nodes"] != n:
        d.append(f"{info['num_nodes']} nodes vs {n} texts")
    elif info["texts_digest"] != digest:
        d.append("the texts differ")
    return d
