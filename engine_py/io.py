"""Weights on disk: safetensors (read and written by the C core), GGUF (read
by the C core, see :class:`GGUFFile`), ``.npz``, and Hugging Face model
folders.

Reading maps the file and validates its header rule by rule like the
reference implementation (``huggingface/safetensors``); aligned tensors are
returned as read-only NumPy views into the mapping (the mapping stays alive
while any view does), misaligned ones are copied. Writing goes through a
temporary file in the same folder, ``fsync`` and ``rename``, so a crash never
leaves a half-written file under the final name.

Pickle-based checkpoints (``.bin``, ``.pt``) are never loaded: unpickling can
run arbitrary code. The error says how to export one to safetensors.

torch is optional: ``save_safetensors`` accepts torch tensors and imports
torch only when it meets one.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from ._core import GGUFError, SafetensorsError
from ._validate import read_json

__all__ = [
    "GGUFError",
    "GGUFFile",
    "GGUFTensorInfo",
    "SafetensorsError",
    "load_safetensors",
    "save_safetensors",
    "read_safetensors_header",
    "load_state",
]

# numpy (kind, itemsize) -> safetensors dtype
_NP_TO_ST = {
    ("b", 1): "BOOL",
    ("u", 1): "U8",
    ("i", 1): "I8",
    ("i", 2): "I16",
    ("u", 2): "U16",
    ("f", 2): "F16",
    ("i", 4): "I32",
    ("u", 4): "U32",
    ("f", 4): "F32",
    ("f", 8): "F64",
    ("i", 8): "I64",
    ("u", 8): "U64",
}
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def _check_bf16(bf16: str) -> bool:
    if bf16 not in ("float32", "raw"):
        raise ValueError("bf16 must be 'float32' (widen to float32) or 'raw' (uint16 bits), got %r" % (bf16,))
    return bf16 == "float32"


def load_safetensors(path, bf16: str = "float32", return_metadata: bool = False):
    """Load every tensor of a safetensors file as a dict name -> ndarray.

    The file is validated like the reference implementation does; a file
    breaking a rule raises :class:`SafetensorsError` naming the file and the
    rule. Aligned tensors are read-only views into a shared read-only memory
    mapping (copy one with ``np.array(x)`` to write to it); misaligned ones
    are copied. Dict order is the header's order.

    bf16: ``"float32"`` (default; NumPy has no bfloat16) widens BF16 tensors
    to float32 exactly; ``"raw"`` returns their bits as uint16. F16 is
    returned as ``np.float16``.

    With ``return_metadata=True`` returns ``(tensors, metadata)`` where
    metadata is the ``__metadata__`` dict, or None when the file has none.
    """
    to_f32 = _check_bf16(bf16)
    path = os.fspath(path)
    try:
        tensors, metadata = _core.safetensors_load(path, to_f32)
    except SafetensorsError:
        _raise_if_other_format(path)
        raise
    return (tensors, metadata) if return_metadata else tensors


def read_safetensors_header(path) -> Tuple[Dict[str, Tuple[str, Tuple[int, ...], Tuple[int, int]]],
                                           Optional[Dict[str, str]]]:
    """Validate a safetensors file and return its header without touching
    the data: ``({name: (dtype, shape, (begin, end))}, metadata or None)``.
    Offsets are relative to the data section, as in the file."""
    path = os.fspath(path)
    try:
        return _core.safetensors_header(path)
    except SafetensorsError:
        _raise_if_other_format(path)
        raise


def _raise_if_other_format(path: str) -> None:
    """After the core refused ``path`` as safetensors: if the file is a known
    other format (a PyTorch pickle, zip/.npz, .npy, GGUF, a Git LFS pointer,
    text), raise SafetensorsError saying which and what to do; otherwise
    return (the caller re-raises the core's error, which names the rule the
    file breaks). Reads the first bytes only, and a zip's list of names;
    nothing is unpickled."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError:
        return
    if head[:4] == b"PK\x03\x04":
        import zipfile
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            names = []
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise SafetensorsError(_pickle_message(path, "a PyTorch pickle checkpoint (torch.save zip "
                                                   "format with data.pkl), not a safetensors file")) from None
        if names and all(n.endswith(".npy") for n in names):
            raise SafetensorsError("%s is a NumPy .npz archive, not a safetensors file; load it with "
                                   "engine_py.io.load_state(path) (a name ending in .npz) or "
                                   "numpy.load(path)" % path) from None
        raise SafetensorsError("%s is a zip archive (%s), not a safetensors file"
                               % (path, ", ".join(names[:3]) or "unreadable")) from None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        raise SafetensorsError(_pickle_message(path, "a Python pickle (protocol %d; PyTorch's legacy "
                                               "torch.save format), not a safetensors file" % head[1])) from None
    if head[:6] == b"\x93NUMPY":
        raise SafetensorsError("%s is a NumPy .npy file, not a safetensors file; load it with "
                               "numpy.load(path)" % path) from None
    if head[:4] == b"GGUF":
        raise SafetensorsError("%s is a GGUF file, not a safetensors file" % path) from None
    if head.startswith(b"version https://git-lfs"):
        raise SafetensorsError("%s is a Git LFS pointer, not the weights: fetch them with `git lfs pull` "
                               "in that repository (or download the file itself)" % path) from None
    text = head.lstrip(b"\xef\xbb\xbf")
    try:
        shown = text.decode("utf-8")
    except UnicodeDecodeError as exc:   # a multi-byte character cut at 256 bytes is still text
        shown = text[:exc.start].decode("utf-8") if exc.start >= len(text) - 3 else None
    if shown and all(c.isprintable() or c in "\t\r\n" for c in shown):
        low = shown.lstrip().lower()
        hint = (" (an HTML page: a failed download?)" if low.startswith(("<!doctype html", "<html"))
                else "")
        raise SafetensorsError("%s is a text file, not a safetensors file%s: it starts with %r (a "
                               "safetensors file starts with an 8-byte little-endian header length, "
                               "then a JSON header)" % (path, hint, shown[:60])) from None


def _torch_to_numpy(name: str, t) -> Tuple[str, np.ndarray]:
    import torch  # only reached when the caller passed a torch tensor

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return "BF16", t.view(torch.int16).numpy().view(np.uint16)
    try:
        arr = t.numpy()
    except TypeError as exc:
        raise SafetensorsError("tensor %r: torch dtype %s cannot be saved: %s" % (name, t.dtype, exc)) from None
    return "", arr


def _as_entry(name: Any, value: Any) -> Tuple[str, str, np.ndarray]:
    if not isinstance(name, str):
        raise TypeError("tensor names must be str, got %r" % (name,))
    st = ""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        # explicit dtype, e.g. ("BF16", uint16 bits)
        st, value = value
        if st not in _ST_ITEMSIZE:
            raise SafetensorsError("tensor %r: unknown safetensors dtype %r (known: %s)"
                                   % (name, st, " ".join(sorted(_ST_ITEMSIZE))))
    if type(value).__module__.startswith("torch"):
        st2, arr = _torch_to_numpy(name, value)
        st = st or st2
    else:
        arr = np.asarray(value)
    dt = arr.dtype
    if not st:
        if dt.name == "bfloat16" and dt.itemsize == 2:  # ml_dtypes / jax bfloat16
            st, arr = "BF16", arr.view(np.uint16)
        else:
            st = _NP_TO_ST.get((dt.kind, dt.itemsize), "")
            if not st:
                raise SafetensorsError(
                    "tensor %r: dtype %s cannot be stored in safetensors (supported: bool, int8-64, "
                    "uint8-64, float16, float32, float64, bfloat16)" % (name, dt))
    elif dt.hasobject or dt.itemsize != _ST_ITEMSIZE[st] or dt.kind not in "biuf":
        raise SafetensorsError("tensor %r: a %s array cannot be stored as %s" % (name, dt, st))
    # little-endian, C order; asarray keeps 0-d arrays 0-d
    if dt.itemsize > 1 and dt.byteorder not in ("<", "|") and not (dt.byteorder == "=" and np.little_endian):
        dt = dt.newbyteorder("<")
    arr = np.asarray(arr, dtype=dt, order="C")
    return name, st, arr


def save_safetensors(path, tensors: Mapping[str, Any], metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write ``tensors`` (name -> NumPy array, torch tensor, or
    ``(safetensors_dtype, array)`` such as ``("BF16", uint16_bits)``) to a
    safetensors file readable by the reference implementation, with an
    optional str -> str ``metadata``.

    Layout matches the reference writer (tensors by dtype then name, compact
    JSON header padded with spaces to 8 bytes). The file is written to a
    temporary name in the same folder, fsynced and renamed into place.
    torch bfloat16 is stored as BF16; NumPy arrays keep their dtype.
    """
    if not isinstance(tensors, Mapping):
        raise TypeError("tensors must be a mapping name -> array, got %s" % type(tensors).__name__)
    entries = [_as_entry(k, v) for k, v in tensors.items()]
    meta = None
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError("metadata must be a mapping str -> str, got %s" % type(metadata).__name__)
        meta = []
        for k, v in metadata.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise TypeError("metadata must map str to str; got %r: %r" % (k, v))
            meta.append((k, v))
    _core.safetensors_save(os.fspath(path), entries, meta)


def _pickle_message(path: str, what: str = "a PyTorch pickle checkpoint") -> str:
    folder, base = os.path.split(path)
    stem = os.path.splitext(base)[0]
    out = os.path.join(folder, "model.safetensors" if stem == "pytorch_model" else stem + ".safetensors")
    src = repr(path)
    if out == path:   # a pickle named *.safetensors: write the export beside it
        out = os.path.join(folder, stem + ".converted.safetensors")
        # and open it ourselves: torch.load(name) hands *.safetensors names to safetensors
        src = "open(%r, 'rb')" % path
    return (
        "%s is %s; engine_py never unpickles (it can run arbitrary code). "
        "Export it to safetensors once, with torch installed:\n"
        "  python -c \"import torch, engine_py.io as eio; eio.save_safetensors(%r, "
        "torch.load(%s, map_location='cpu', weights_only=True))\""
        % (path, what, out, src))


def _pickle_error(path: str) -> ValueError:
    return ValueError(_pickle_message(path))


def _load_npz(path: str) -> Dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        if not hasattr(z, "files"):
            raise ValueError("%s: expected an .npz archive of named arrays" % path)
        return {k: z[k] for k in z.files}


def _load_sharded(index_path: str, bf16: str) -> Dict[str, np.ndarray]:
    folder = os.path.dirname(index_path)
    index = read_json(index_path, "safetensors index", error=SafetensorsError)
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()):
        raise SafetensorsError("%s: \"weight_map\" must map tensor names to shard file names" % index_path)
    shards = sorted(set(wmap.values()))
    for s in shards:
        if os.path.basename(s) != s or s in (".", ".."):
            raise SafetensorsError("%s: shard %r must be a file name in the same folder" % (index_path, s))
    out: Dict[str, np.ndarray] = {}
    for s in shards:
        for name, arr in load_safetensors(os.path.join(folder, s), bf16=bf16).items():
            if name in out:
                raise SafetensorsError("%s: tensor %r appears in more than one shard" % (index_path, name))
            if wmap.get(name) != s:
                raise SafetensorsError("%s: tensor %r is in shard %s but the index maps it to %r"
                                       % (index_path, name, s, wmap.get(name)))
            out[name] = arr
    missing = [k for k in wmap if k not in out]
    if missing:
        raise SafetensorsError("%s: %d tensor(s) listed in the index are missing from their shards, e.g. %r"
                               % (index_path, len(missing), missing[0]))
    return {k: out[k] for k in wmap}


def load_state(path_or_dir, bf16: str = "float32") -> Dict[str, np.ndarray]:
    """Load a state dict (name -> ndarray) from

    - a Hugging Face model folder: ``model.safetensors``, or shards listed
      in ``model.safetensors.index.json`` (as ``save_pretrained`` writes);
    - a ``.safetensors`` file, or a ``*.safetensors.index.json`` index;
    - a ``.npz`` archive (loaded with ``allow_pickle=False``).

    PyTorch pickles (``.bin``, ``.pt``, a folder holding only
    ``pytorch_model.bin``) raise ValueError with a one-line export command.
    """
    _check_bf16(bf16)
    p = os.fspath(path_or_dir)
    if os.path.isdir(p):
        names = sorted(os.listdir(p))
        # transformers' order: the single file first, then the index
        for cand in ("model.safetensors", "model.safetensors.index.json"):
            if cand in names:
                return load_state(os.path.join(p, cand), bf16=bf16)
        indexes = [n for n in names if n.endswith(".safetensors.index.json")]
        files = [n for n in names if n.endswith(".safetensors")]
        if len(indexes) == 1:
            return _load_sharded(os.path.join(p, indexes[0]), bf16)
        if len(files) == 1 and not indexes:
            return load_safetensors(os.path.join(p, files[0]), bf16=bf16)
        if indexes or files:
            raise ValueError("%s: several safetensors files or indexes (%s); pass the one to load"
                             % (p, ", ".join(indexes + files)))
        npz = [n for n in names if n.endswith(".npz")]
        if len(npz) == 1:
            return _load_npz(os.path.join(p, npz[0]))
        pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES)]
        if pickles:
            first = "pytorch_model.bin" if "pytorch_model.bin" in pickles else pickles[0]
            raise _pickle_error(os.path.join(p, first))
        raise FileNotFoundError("%s: no model.safetensors, model.safetensors.index.json or .npz in this folder" % p)
    low = p.lower()
    if low.endswith(".safetensors.index.json"):
        return _load_sharded(p, bf16)
    if low.endswith(".safetensors"):
        return load_safetensors(p, bf16=bf16)
    if low.endswith(".npz"):
        return _load_npz(p)
    if low.endswith(_PICKLE_SUFFIXES):
        raise _pickle_error(p)
    if not os.path.exists(p):
        raise FileNotFoundError("%s: no such file or folder" % p)
    raise ValueError("%s: unknown weights format (expected .safetensors, a safetensors index, .npz, "
                     "or a model folder)" % p)


class GGUFTensorInfo(NamedTuple):
    """One tensor of a GGUF file. ``shape`` is in PyTorch / NumPy order, as
    transformers reports it (GGUF stores dims fastest-first, so reversed);
    ``type`` is the ggml type name (``"Q4_K"``); ``nbytes`` the size of its
    blocks; ``offset`` their absolute offset in the file."""
    name: str
    shape: Tuple[int, ...]
    type: str
    type_id: int
    nbytes: int
    offset: int
    n_elements: int


class GGUFFile:
    """A GGUF file (v2 or v3, little-endian), mapped read-only and validated
    by the C core (docs/GGUF.md lists the rules); a broken file raises
    :class:`GGUFError` (a ValueError) naming the file, the field and its
    offset.

    - ``metadata``: dict key -> value: int, float, bool, str (invalid UTF-8
      kept as lone surrogates), or for arrays a list of str (string arrays)
      or a 1-D NumPy array (numeric and bool arrays, e.g. token scores).
    - ``version``, ``alignment``, ``tensors`` (name -> :class:`GGUFTensorInfo`,
      file order).
    - ``tensor(name)``: the tensor dequantized to a new float32 array,
      bit-identical to ``gguf.quants.dequantize``.
    - ``raw(name)``: a zero-copy read-only uint8 view of its blocks; the view
      keeps the mapping alive after :meth:`close`.

    Use as a context manager, or call :meth:`close` (views already handed
    out stay valid)."""

    def __init__(self, path):
        self._path = os.fspath(path)
        self._m = _core.gguf_open(self._path)
        self.version: int = self._m.version
        self.alignment: int = self._m.alignment
        self.data_offset: int = self._m.data_offset
        self.metadata: Dict[str, Any] = self._m.metadata()
        infos = [GGUFTensorInfo(*t) for t in self._m.tensor_infos()]
        self.tensors: Dict[str, GGUFTensorInfo] = {t.name: t for t in infos}
        self._index = {t.name: i for i, t in enumerate(infos)}

    @property
    def path(self) -> str:
        return self._path

    @property
    def closed(self) -> bool:
        return self._m is None

    def _lookup(self, name: str) -> int:
        if self._m is None:
            raise ValueError("%s: GGUFFile is closed" % self._path)
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise KeyError("%s: no tensor named %r" % (self._path, name)) from None

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to a new float32 array of shape
        ``tensors[name].shape``."""
        i = self._lookup(name)
        return self._m.dequantize(i)

    def raw(self, name: str) -> np.ndarray:
        """Tensor ``name``'s bytes (its quantized blocks, as stored) as a
        read-only 1-D uint8 view into the mapping."""
        i = self._lookup(name)
        return self._m.raw(i)

    def close(self) -> None:
        """Drop this object's reference to the mapping; it is unmapped once
        no raw() view refers to it. Idempotent."""
        self._m = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return "GGUFFile(%r, version=%d, %d tensors, %d metadata keys%s)" % (
            self._path, self.version, len(self.tensors), len(self.metadata), ", closed" if self.closed else "")
