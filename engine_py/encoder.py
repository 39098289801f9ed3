"""BERT-family text encoder with a sentence-transformers style API.

    >>> enc = Encoder.from_pretrained(engine_py.models.minilm_path())
    >>> emb = enc.encode(["a text", "another"])              # (2, 384) float32
    >>> states = enc.encode_layers(texts, layers=[0, 3, 6])  # (3, N, 384)

The forward pass runs in C (csrc/models/bert.c) on packed sequences: the
tokens of a batch are stacked into one matrix, so no GEMM ever touches a pad
token, and attention runs per sequence at its own length (no padding, hence
no attention mask). Texts are still sorted by length inside encode (like
sentence-transformers) so that batches group similar lengths; results come
back in the caller's order and agree across batch sizes and orders within the
numerical contract (engine_py.testing; bit-identical for the same call).

Pooling is masked mean pooling over every token of a text, [CLS] and [SEP]
included (sentence-transformers' `pooling_mode_mean_tokens`). `encode`
L2-normalises when asked, or when the model folder's modules.json lists a
Normalize module (as sentence-transformers does for all-MiniLM-L6-v2).

Pickling (Dask, multiprocessing): an Encoder pickles as what it was loaded
from — the folder's path, max_length, normalize and its fingerprint — never
as weights. Unpickling re-opens the folder (weights memory-mapped by
load_state) and refuses with ValueError if the re-opened encoder's
fingerprint differs (the files changed). docs/SCALE_OUT.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Sequence

import numpy as np

from . import _core
from ._isa import warn_if_bf16_emulated
from ._guard import in_use_guard
from ._progress import progress
from ._threads import adapt as _adapt_threads
from ._validate import check_int, read_json

__all__ = ["Encoder"]

_log = logging.getLogger(__name__)

# Bumped when the meaning of the computed states changes, so caches keyed by
# fingerprint() are invalidated.
_FINGERPRINT_VERSION = "engine_py.encoder/1"

_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json")
_LAYER_RE = re.compile(r"^(?:bert\.)?encoder\.layer\.(\d+)\.")


def _read_json(path: str, what: str) -> Any:
    # ValueError naming the file and the line/column of a syntax error
    return read_json(path, what)


def _int_field(cfg: dict, key: str, path: str) -> int:
    if key not in cfg:
        raise ValueError(f"{path}: config.json has no {key!r}")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{path}: config.json {key!r} must be an integer, got {v!r}")
    return v


def _check_config(cfg: Any, path: str) -> dict:
    """The BERT hyper-parameters from config.json, or ValueError saying what is
    unsupported."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: config.json must hold a JSON object")
    model_type = cfg.get("model_type")
    archs = cfg.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    bert_arch = all(isinstance(a, str) and a.startswith("Bert") for a in archs) and archs
    if model_type != "bert" and not (model_type is None and bert_arch):
        raise ValueError(
            f"{path}: unsupported architecture {', '.join(map(str, archs)) or '(none)'} "
            f"(model_type {model_type!r}); engine_py.Encoder runs BERT-family encoders "
            "(model_type 'bert': BERT, MiniLM, BGE, E5 ...)")
    if archs and not bert_arch:
        raise ValueError(f"{path}: unsupported architecture {archs!r} for model_type 'bert'")
    act = cfg.get("hidden_act", "gelu")
    if act != "gelu":
        raise ValueError(
            f"{path}: hidden_act {act!r} is not supported; engine_py's BERT uses the exact "
            "erf GELU ('gelu')")
    pet = cfg.get("position_embedding_type", "absolute")
    if pet != "absolute":
        raise ValueError(f"{path}: position_embedding_type {pet!r} is not supported (only 'absolute')")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise ValueError(f"{path}: decoder / cross-attention BERT models are not supported")
    eps = cfg.get("layer_norm_eps", 1e-12)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        raise ValueError(f"{path}: config.json 'layer_norm_eps' must be a number, got {eps!r}")
    out = dict(
        vocab_size=_int_field(cfg, "vocab_size", path),
        hidden_size=_int_field(cfg, "hidden_size", path),
        num_layers=_int_field(cfg, "num_hidden_layers", path),
        num_heads=_int_field(cfg, "num_attention_heads", path),
        intermediate_size=_int_field(cfg, "intermediate_size", path),
        max_position=_int_field(cfg, "max_position_embeddings", path),
        type_vocab_size=cfg.get("type_vocab_size", 2),
        layer_norm_eps=float(eps),
    )
    if "embedding_size" in cfg and cfg["embedding_size"] != out["hidden_size"]:
        raise ValueError(f"{path}: embedding_size != hidden_size (factorised embeddings) is not supported")
    return out


def _to_float32(name: str, arr: np.ndarray) -> np.ndarray:
    dt = arr.dtype
    if dt == np.float32:
        return arr
    if dt in (np.float16, np.float64) or dt.name == "bfloat16":
        return arr.astype(np.float32)
    raise ValueError(f"tensor {name} has dtype {dt}, expected a floating-point type "
                     "(float32, float16, bfloat16)")


def _check_texts(texts: Any) -> list:
    """The texts as a list of str: any iterable of str is accepted (list,
    tuple, generator, NumPy str/object array, pandas Series); a single
    str/bytes, a mapping, a set (no order) or a non-str element (named by
    its position) raise TypeError."""
    if isinstance(texts, (str, bytes, np.str_, np.bytes_)):
        raise TypeError("texts must be a list of str, got a single "
                        f"{type(texts).__name__}; wrap one text in a list")
    if isinstance(texts, np.ndarray) and texts.ndim != 1:
        raise TypeError(f"texts must be a list of str or a 1-D array of str, got an array of shape "
                        f"{texts.shape}")
    if isinstance(texts, (Mapping, set, frozenset)) or not isinstance(texts, Iterable):
        raise TypeError(f"texts must be a list of str (or another ordered iterable of str), got "
                        f"{type(texts).__name__}")
    out = texts if type(texts) is list else list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be str, got {type(t).__name__}")
    return out


def _check_batch_size(batch_size: Any) -> int:
    return check_int(batch_size, "batch_size", min=1)


def _check_template(template: Any) -> Optional[str]:
    """None, or a str with exactly one ``{text}`` field and no other."""
    if template is None:
        return None
    if not isinstance(template, str):
        raise TypeError(f"template must be a str with one {{text}} field, got "
                        f"{type(template).__name__}")
    import string
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise ValueError(f"template {template!r} is not a valid format string: {exc} "
                         "(write literal braces as {{ and }})") from None
    if fields != ["text"]:
        raise ValueError(f"template must contain exactly one {{text}} field and no other, got "
                         f"fields {fields} in {template!r}")
    return template


def _is_gguf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _weight_files(path: str) -> list:
    """The files a decoder's weights come from (the .gguf file, or the
    folder's safetensors files), sorted."""
    if os.path.isfile(path):
        return [path]
    return sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".safetensors"))


def _decoder_max_length(max_length: Any, context: int, path: str) -> int:
    """A decoder's max_length: the argument, else the context length."""
    if max_length is None:
        return context
    ml = check_int(max_length, "max_length", min=1)
    if ml > context:
        raise ValueError(f"max_length={ml} exceeds the model's context length {context} ({path}); "
                         f"pass max_length <= {context}, or None for the model's default")
    return ml


class Encoder:
    """A frozen text encoder (C core): a BERT-family model, or a decoder LLM of
    the Llama family (llama, qwen2) used for its hidden states. Build with
    from_pretrained.

    Attributes: num_layers, hidden_size, max_length (tokens, special tokens
    included), config (the folder's config.json as a dict), tokenizer,
    normalize (whether encode L2-normalises by default), path.
    """

    def __init__(self, *, model: Any, tokenizer: Any, config: dict, path: str,
                 max_length: int, normalize: bool, source_dtypes: dict, kind: str = "bert",
                 pooling: str = "mean", keep: Any = None, precision: str = "float32") -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.config = config
        self.path = path
        self.max_length = max_length
        self.normalize = normalize
        #: "bert", or the decoder architecture ("llama", "qwen2")
        self.kind = kind
        #: "mean" (every token) or "last" (the last token; decoders only)
        self.pooling = pooling
        #: "float32" (exact weights), "bfloat16" (decoders: the products'
        #: inputs rounded to bf16, about twice as fast where the CPU has
        #: AVX512-BF16) or "int8" (decoders: int8 activations times the
        #: weights' integer codes; docs/LLM.md)
        self.precision = precision
        #: a prompt around every text, e.g. "Package description: {text}"
        #: (ENGINE's per-dataset prompt for decoders), or None
        self.template: Optional[str] = None
        self._keep = keep  # what the model's weights point into (a GGUF mapping)
        self._source_dtypes = source_dtypes
        self._fingerprint: Optional[str] = None
        #: the PEFT LoRA adapter folder merged into the weights (from_pretrained(adapter=)), or None
        self.adapter: Optional[str] = None
        self._adapter_files: list = []
        # digests of the tokenizer files as loaded (they are part of the fingerprint)
        self._tokenizer_files = []
        folder = path if os.path.isdir(path) else None
        for fname in _TOKENIZER_FILES if folder else ():
            p = os.path.join(folder, fname)
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    self._tokenizer_files.append([fname, hashlib.sha256(f.read()).hexdigest()])
        c = model.config
        self.num_layers = c["num_layers"]
        self.hidden_size = c["hidden_size"]

    # ------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(cls, path: str, max_length: Optional[int] = None,
                        pooling: Optional[str] = None,
                        template: Optional[str] = None,
                        precision: Optional[str] = None,
                        adapter: Optional[str] = None) -> "Encoder":
        """Load a model:

        - a Hugging Face BERT-family folder (config.json, model.safetensors
          or a sharded index, vocab.txt or tokenizer.json);
        - a decoder LLM of the Llama family (arch llama or qwen2): a ``.gguf``
          file (weights stay quantized in the mapped file), or a Hugging Face
          folder whose config.json has model_type llama or qwen2 (float32,
          float16 or bfloat16 safetensors, read in place, and a
          tokenizer.json). See docs/LLM.md.

        ``pooling``: "mean" (default: the mean over every token of a text)
        or, for decoders only, "last" (the last token's state, which in a
        causal model is the only one that has seen the whole text).

        ``template``: a prompt every text is put into before tokenizing,
        with one ``{text}`` field, e.g. ``"Package description: {text}"``
        (ENGINE prompts decoders per dataset). Part of the fingerprint, so
        a layer cache records it.

        ``precision``: "float32" (default) or, for decoders, "bfloat16": the
        inputs of every weight product (activations and dequantized weights)
        are rounded to bfloat16 and the products summed in float32. Where the
        CPU has AVX512-BF16 this runs the products about twice as fast
        (elsewhere it is emulated, no faster than float32, and a
        ``BFloat16EmulationWarning`` says so); the
        layer states stay within cosine 0.9999 of float32 but are not
        bit-reproducible across CPUs (docs/LLM.md). Or "int8": activations
        quantized to 8 bits per block of 32 values (llama.cpp's q8_0 scheme)
        and multiplied by the GGUF weights' integer codes with integer dot
        products (VNNI where the CPU has it); the same bits on every CPU;
        weights without integer codes (F32/F16/BF16 tensors, Q2_K, Q3_K, a
        Hugging Face folder) take the bfloat16 path. Part of the fingerprint.

        max_length caps the tokens per text, [CLS] and [SEP] included; by
        default the folder's sentence_bert_config.json max_seq_length, else the
        tokenizer's model_max_length, capped at the model's
        max_position_embeddings (config.json). An explicit ``max_length``
        above max_position_embeddings raises ValueError (the model has no
        position embedding beyond it; it is not clamped silently), as does
        one below 2; a float or bool raises TypeError.

        ``adapter``: for decoders, a PEFT LoRA adapter folder
        (adapter_config.json + adapter_model.safetensors, as
        ``engine_py.finetune.Trainer.save_adapter`` or PEFT write it) merged
        into the weights: every adapted matrix becomes W + (alpha/r) B A in
        float32. On a float base that is the merged model; on a quantized
        GGUF base the adapted matrices are dequantized to float32 first (4
        bytes per adapted weight in memory; not re-quantized, which would
        lose the adapter's small update), the others stay quantized. The
        adapter's files are part of the fingerprint, so a layer cache
        records which fine-tuned model made it. A GMoE / MixLoRA adapter
        (``Trainer(method="gmoe" | "mixlora").save_adapter``): its attention
        LoRA is merged the same way, and every layer's MLP routes each token
        to its top-k LoRA experts over the frozen gate/up/down, as the
        trainer's predict does (docs/FINETUNE.md).

        A config.json (or other JSON file of the folder) that is not valid
        JSON raises ValueError naming the file, line and column.
        """
        path = os.fspath(path)
        if pooling not in (None, "mean", "last"):
            raise ValueError(f"pooling must be 'mean' or 'last', got {pooling!r}")
        template = _check_template(template)
        if precision not in (None, "float32", "bfloat16", "int8"):
            raise ValueError(f"precision must be 'float32', 'bfloat16' or 'int8', got {precision!r}")
        warn_if_bf16_emulated(_core, precision, "Encoder")
        enc = cls._load(path, max_length, pooling, precision or "float32")
        enc.template = template
        if adapter is not None:
            enc._merge_adapter(os.fspath(adapter))
        return enc

    def _merge_adapter(self, adapter: str) -> None:
        from .finetune import adapter_deltas, attach_moe_adapter, merge_adapter_into, read_adapter

        if self.kind == "bert":
            raise ValueError("adapter= is for decoder models (llama/qwen2 GGUF files or folders)")
        files = []
        for fname in ("adapter_config.json", "adapter_model.safetensors"):
            p = os.path.join(adapter, fname)
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{adapter}: no {fname} (expected a PEFT LoRA adapter folder)")
            with open(p, "rb") as f:
                files.append([fname, hashlib.sha256(f.read()).hexdigest()])
        c = self._model.config
        hp = {"hidden_size": c["hidden_size"], "intermediate_size": c["intermediate_size"],
              "head_dim": c["head_dim"], "num_heads": c["num_heads"],
              "num_kv_heads": c["num_kv_heads"], "num_layers": c["num_layers"]}
        gguf = self._keep if os.path.isfile(self.path) else None
        permuted = gguf is not None and c.get("rope_mode") == "norm"
        loaded = read_adapter(adapter, moe_ok=True)
        deltas = adapter_deltas(adapter, hp, permuted, loaded)
        if gguf is not None:
            base = gguf.tensor
        else:
            from .io import load_state

            state = load_state(self.path)
            from .llm import hf_to_gguf_name

            by_g = {hf_to_gguf_name(k): k for k in state}
            base = lambda name: state[by_g[name]]  # noqa: E731
        merged = merge_adapter_into(self._model, deltas, base)
        if loaded[0]["peft_type"] != "LORA":
            # GMoE / MixLoRA: the experts cannot be merged; the model's
            # layer-by-layer forward routes every token through them
            attach_moe_adapter(self._model, hp, adapter, loaded)
        self._keep = (self._keep, merged)
        self.adapter = os.path.abspath(adapter)
        self._adapter_files = files
        self._fingerprint = None

    @classmethod
    def _load(cls, path: str, max_length: Optional[int], pooling: Optional[str],
              precision: str = "float32") -> "Encoder":
        from .io import load_state
        from .tokenizer import WordPieceTokenizer

        if os.path.isfile(path) and _is_gguf(path):
            return cls._from_gguf(path, max_length, pooling or "mean", precision)
        from .llm import is_llama_folder
        if os.path.isdir(path) and is_llama_folder(path):
            return cls._from_llama_folder(path, max_length, pooling or "mean", precision)
        if precision != "float32":
            raise ValueError(f"precision={precision!r} is for decoder models (GGUF files, "
                             "llama/qwen2 folders); BERT-family encoders run in float32")
        if pooling == "last":
            raise ValueError("pooling='last' is for decoder models (a causal model's last token "
                             "has seen the whole text); BERT-family encoders use mean pooling")
        if os.path.isfile(path):
            raise ValueError(f"{path}: not a GGUF file (expected a .gguf file or a model folder)")
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder {path!r} does not exist or is not a directory")
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model folder)")
        config = _read_json(cfg_path, "config")
        hp = _check_config(config, path)
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("vocab.txt", "tokenizer.json")):
            raise FileNotFoundError(f"{path}: no vocabulary (expected vocab.txt or tokenizer.json)")
        tokenizer = WordPieceTokenizer.from_pretrained(path)
        if tokenizer.vocab_size > hp["vocab_size"]:
            raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                             f"model's vocab_size is {hp['vocab_size']}")

        # max_length: argument > sentence-transformers config > tokenizer > positions
        if max_length is not None:
            ml = check_int(max_length, "max_length", min=2, none=True)
            if ml > hp["max_position"]:
                raise ValueError(
                    f"max_length={ml} exceeds the model's limit: {path}/config.json has "
                    f"max_position_embeddings={hp['max_position']} (position embeddings exist only "
                    f"for that many tokens); pass max_length <= {hp['max_position']}, or None for "
                    "the model's default")
        else:
            ml = None
            st_cfg = os.path.join(path, "sentence_bert_config.json")
            if os.path.isfile(st_cfg):
                st = _read_json(st_cfg, "sentence-transformers config")
                v = st.get("max_seq_length") if isinstance(st, dict) else None
                if isinstance(v, int) and not isinstance(v, bool) and v >= 2:
                    ml = v
            if ml is None:
                v = getattr(tokenizer, "max_length", None)
                if isinstance(v, int) and v >= 2:
                    ml = v
            if ml is None:
                ml = hp["max_position"]
        ml = min(ml, hp["max_position"])

        normalize = False
        mod_path = os.path.join(path, "modules.json")
        if os.path.isfile(mod_path):
            mods = _read_json(mod_path, "modules.json")
            if isinstance(mods, list):
                normalize = any(isinstance(m, dict) and str(m.get("type", "")).endswith(".Normalize")
                                for m in mods)
        pool_cfg = os.path.join(path, "1_Pooling", "config.json")
        if os.path.isfile(pool_cfg):
            pc = _read_json(pool_cfg, "pooling config")
            if isinstance(pc, dict) and not pc.get("pooling_mode_mean_tokens", True):
                modes = [k for k, v in pc.items() if k.startswith("pooling_mode_") and v is True]
                warnings.warn(f"{path}: the model's sentence-transformers pooling is {modes}; "
                              "engine_py.Encoder always uses mean pooling", stacklevel=2)

        model = _core.BertModel(**hp)
        state = load_state(path)
        source_dtypes = {}
        by_name = {}
        for key in state:
            by_name[key[5:] if key.startswith("bert.") else key] = key
            m = _LAYER_RE.match(key)
            if m and int(m.group(1)) >= hp["num_layers"]:
                raise ValueError(f"{path}: tensor {key} belongs to layer {m.group(1)} but "
                                 f"config.json says num_hidden_layers={hp['num_layers']}")
        for name, shape in model.param_specs():
            key = by_name.get(name)
            if key is None:
                raise ValueError(f"{path}: weights are missing tensor {name} (expected shape "
                                 f"{tuple(shape)})")
            arr = np.asarray(state[key])
            source_dtypes[name] = str(arr.dtype)
            model.set_param(name, _to_float32(key, arr))
        del state
        model.check_complete()
        return cls(model=model, tokenizer=tokenizer, config=config, path=path, max_length=ml,
                   normalize=normalize, source_dtypes=source_dtypes)

    @classmethod
    def _from_gguf(cls, path: str, max_length: Optional[int], pooling: str,
                   precision: str) -> "Encoder":
        from .llm import load_gguf_model
        from .tokenizer import BPETokenizer

        model, hp, gguf = load_gguf_model(path, precision)
        tokenizer = BPETokenizer.from_gguf(gguf)
        if tokenizer.vocab_size > hp["vocab_size"]:
            raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                             f"model's embedding has {hp['vocab_size']} rows")
        arch = gguf.metadata["general.architecture"]
        config = {"model_type": arch, "max_position_embeddings": hp["max_position"],
                  "source": "gguf", **{k: v for k, v in hp.items() if k != "max_position"}}
        dtypes = {name: t.type for name, t in gguf.tensors.items()}
        ml = _decoder_max_length(max_length, hp["max_position"], path)
        return cls(model=model, tokenizer=tokenizer, config=config, path=path, max_length=ml,
                   normalize=False, source_dtypes=dtypes, kind=arch, pooling=pooling, keep=gguf,
                   precision=precision)

    @classmethod
    def _from_llama_folder(cls, path: str, max_length: Optional[int],
                           pooling: str, precision: str) -> "Encoder":
        from .llm import load_hf_model

        config = _read_json(os.path.join(path, "config.json"), "config")
        model, hp, dtypes = load_hf_model(path, config, precision)
        from .tokenizer import BPETokenizer

        tj = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(tj):
            raise FileNotFoundError(f"{path}: no tokenizer.json (decoder folders need the "
                                    "Hugging Face fast tokenizer file)")
        tokenizer = BPETokenizer.from_tokenizer_json(tj)
        if tokenizer.vocab_size > hp["vocab_size"]:
            raise ValueError(f"{path}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                             f"model's vocab_size is {hp['vocab_size']}")
        ml = _decoder_max_length(max_length, hp["max_position"], path)
        return cls(model=model, tokenizer=tokenizer, config=config, path=path, max_length=ml,
                   normalize=False, source_dtypes=dtypes, kind=config["model_type"],
                   pooling=pooling, precision=precision)

    def __repr__(self) -> str:
        if self.kind != "bert":
            return (f"Encoder(path={self.path!r}, kind={self.kind!r}, num_layers={self.num_layers}, "
                    f"hidden_size={self.hidden_size}, max_length={self.max_length}, "
                    f"pooling={self.pooling!r}"
                    + (f", precision={self.precision!r})" if self.precision != "float32" else ")"))
        return (f"Encoder(path={self.path!r}, num_layers={self.num_layers}, "
                f"hidden_size={self.hidden_size}, max_length={self.max_length}, "
                f"normalize={self.normalize})")

    # ----------------------------------------------------------- pickling

    def _spec(self) -> "EncoderSpec":
        return EncoderSpec(os.path.abspath(self.path), int(self.max_length), bool(self.normalize),
                           self.fingerprint(), self.pooling, self.template, self.precision,
                           self.adapter)

    def __reduce__(self):
        # what it was loaded from, not the weights: the receiver re-opens the
        # folder and checks the fingerprint (computed here once, then cached)
        return (_reopen, (self._spec(),))

    def _for_workers(self) -> "EncoderSpec":
        """What LayerCache.build(client=...) sends to the workers instead of
        this object: each worker thread opens its own Encoder from it once
        (one object per thread, so thread workers never share one)."""
        return self._spec()

    # --------------------------------------------------------- tokenizing

    def tokenize(self, texts: Sequence[str], max_length: Optional[int] = None) -> list:
        """Token ids of each text, [CLS] and [SEP] included, truncated to
        max_length (default: the encoder's). list of int32 arrays. ``texts``:
        any ordered iterable of str (list, tuple, generator, NumPy str/object
        array, pandas Series), as in encode."""
        texts = _check_texts(texts)
        if self.template is not None:
            texts = [self.template.format(text=t) for t in texts]
        ml = self.max_length if max_length is None else check_int(
            max_length, "max_length", min=2 if self.kind == "bert" else 1)
        if ml > self.config["max_position_embeddings"]:
            raise ValueError(f"max_length {ml} exceeds the model's max_position_embeddings "
                             f"{self.config['max_position_embeddings']}")
        if not texts:
            return []
        return [np.asarray(t, dtype=np.int32) for t in
                self.tokenizer.encode_batch(texts, max_length=int(ml), add_special_tokens=True)]

    # ----------------------------------------------------------- encoding

    def _layers(self, layers: Optional[Iterable[int]]) -> list:
        if layers is None:
            return list(range(self.num_layers + 1))
        if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
            raise TypeError("layers must be a list of layer indices (e.g. [layer]) or None")
        out = []
        for v in layers:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"layer indices must be ints, got {type(v).__name__}")
            if not 0 <= v <= self.num_layers:
                raise IndexError(f"layer index {v} out of range: this model has hidden states "
                                 f"0..{self.num_layers} (0 = embeddings, {self.num_layers} = last)")
            out.append(int(v))
        return out

    def _run(self, texts: list, layers: list, batch_size: int, show_progress_bar: Optional[bool]) -> np.ndarray:
        with in_use_guard(self, "this Encoder"):
            return self._run_unguarded(texts, layers, batch_size, show_progress_bar)

    def _run_unguarded(self, texts: list, layers: list, batch_size: int,
                       show_progress_bar: Optional[bool]) -> np.ndarray:
        n = len(texts)
        out = np.empty((len(layers), n, self.hidden_size), dtype=np.float32)
        if n == 0 or not layers:
            return out
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(t) for t in ids), dtype=np.int64, count=n)
        order = np.argsort(-lengths, kind="stable")  # longest first, ties in input order
        n_batches = (n + batch_size - 1) // batch_size
        lay = np.asarray(layers, dtype=np.int32)
        with progress(n, "encoding texts", "text", show_progress_bar, logger=_log,
                      long=n_batches >= 8) as bar:
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                offsets = np.zeros(len(idx) + 1, dtype=np.int64)
                np.cumsum(lengths[idx], out=offsets[1:])
                packed = np.concatenate([ids[i] for i in idx])
                if self.kind == "bert":
                    out[:, idx, :] = self._model.encode_layers(packed, offsets, lay)
                else:
                    out[:, idx, :] = self._model.encode_layers(packed, offsets, lay,
                                                               pooling=self.pooling)
                bar.update(len(idx))
                _adapt_threads()
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 32,
               show_progress_bar: Optional[bool] = None,
               normalize_embeddings: bool = False) -> np.ndarray:
        """Sentence embeddings, float32 (len(texts), hidden_size): masked mean
        of the last hidden state, L2-normalised when normalize_embeddings or
        when the model folder asks for it (modules.json Normalize).

        ``texts``: any ordered iterable of str -- list, tuple, generator,
        NumPy str or object array, pandas Series; an element that is not a
        str raises TypeError naming its position, and so does a single str."""
        texts = _check_texts(texts)
        batch_size = _check_batch_size(batch_size)
        emb = self._run(texts, [self.num_layers], batch_size, show_progress_bar)[0]
        if normalize_embeddings or self.normalize:
            norm = np.linalg.norm(emb, axis=1, keepdims=True)
            emb /= np.maximum(norm, 1e-12)  # torch.nn.functional.normalize's eps
        return emb

    def encode_layers(self, texts: Sequence[str], layers: Optional[Iterable[int]] = None,
                      batch_size: int = 32, show_progress_bar: Optional[bool] = None) -> np.ndarray:
        """Masked mean pooling of hidden state l for each requested l
        (0 = embedding output, num_layers = last; None = all), float32
        (len(layers), len(texts), hidden_size). Never normalised."""
        texts = _check_texts(texts)
        layers = self._layers(layers)
        batch_size = _check_batch_size(batch_size)
        return self._run(texts, layers, batch_size, show_progress_bar)

    # -------------------------------------------------------- fingerprint

    def fingerprint(self) -> str:
        """Hex SHA-256 identifying what encode_layers computes: every weight's
        name, shape, source dtype and bytes (as used, float32), the config,
        the tokenizer files, max_length, pooling and normalisation. Any
        change to one of them changes the fingerprint. Computed once (hashing
        the weights takes ~0.1 s per 100 MB) and cached."""
        if self._fingerprint is not None:
            return self._fingerprint
        h = hashlib.sha256()

        def put(obj: Any) -> None:
            b = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)

        put(_FINGERPRINT_VERSION)
        put(self.config)
        put({"max_length": self.max_length, "pooling": self.pooling, "normalize": self.normalize,
             **({"template": self.template} if self.template is not None else {}),
             # float32 adds nothing, so caches built before the option keep their fingerprint
             **({"precision": self.precision} if self.precision != "float32" else {})})
        put(self._tokenizer_files)
        if self._adapter_files:
            put({"adapter": self._adapter_files})
        if self.kind != "bert":
            # a decoder computes from its weight files as they are: hash them
            put(self._source_dtypes)
            for f in _weight_files(self.path):
                put(os.path.basename(f))
                with open(f, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 24), b""):
                        h.update(block)
            self._fingerprint = h.hexdigest()
            return self._fingerprint
        for name, shape in self._model.param_specs():
            put([name, list(shape), self._source_dtypes.get(name, "float32")])
            h.update(self._model.get_param(name).tobytes())
        self._fingerprint = h.hexdigest()
        return self._fingerprint


# ------------------------------------------------------------- scale-out

#: Worker-side path mapping for pickled encoders: "SRC=DST" pairs separated
#: by os.pathsep; a pickled path under SRC is opened under DST instead (the
#: fingerprint check still applies). Read when an encoder is unpickled.
PATH_MAP_ENV = "ENGINE_PY_MODEL_PATH_MAP"


def _map_path(path: str) -> str:
    best = None
    for item in os.environ.get(PATH_MAP_ENV, "").split(os.pathsep):
        src, sep, dst = item.partition("=")
        src = src.rstrip("/\\")
        if not sep or not src or not dst:
            continue
        if path == src or path.startswith(src + os.sep):
            if best is None or len(src) > len(best[0]):
                best = (src, dst)
    return path if best is None else best[1] + path[len(best[0]):]


class EncoderSpec:
    """What an Encoder was loaded from: enough to open the same one elsewhere.

    path (absolute, as seen by the process that pickled it), max_length,
    normalize, and the fingerprint of the weights, config and tokenizer that
    process had loaded. ``open()`` re-opens the folder and raises ValueError
    if what it finds has another fingerprint."""

    __slots__ = ("path", "max_length", "normalize", "fingerprint", "pooling", "template",
                 "precision", "adapter")

    def __init__(self, path: str, max_length: int, normalize: bool, fingerprint: str,
                 pooling: str = "mean", template: Optional[str] = None,
                 precision: str = "float32", adapter: Optional[str] = None) -> None:
        self.path = path
        self.max_length = max_length
        self.normalize = normalize
        self.fingerprint = fingerprint
        self.pooling = pooling
        self.template = template
        self.precision = precision
        self.adapter = adapter

    def __reduce__(self):
        return (EncoderSpec, (self.path, self.max_length, self.normalize, self.fingerprint,
                              self.pooling, self.template, self.precision, self.adapter))

    def __repr__(self) -> str:
        return (f"EncoderSpec(path={self.path!r}, max_length={self.max_length}, "
                f"normalize={self.normalize}, fingerprint={self.fingerprint[:12]}...)")

    def open(self) -> Encoder:
        """A new Encoder from the folder, checked against the fingerprint."""
        path = _map_path(self.path)
        if not os.path.exists(path):
            where = f" (mapped from {self.path} by {PATH_MAP_ENV})" if path != self.path else ""
            raise FileNotFoundError(
                f"cannot re-open a pickled Encoder: model {path}{where} does not exist on "
                f"this machine; every worker needs the model at the same path (e.g. a shared "
                f"filesystem), or set {PATH_MAP_ENV}=SRC=DST on the workers")
        enc = Encoder.from_pretrained(path, max_length=self.max_length,
                                      pooling=None if self.pooling == "mean" else self.pooling,
                                      template=self.template, precision=self.precision,
                                      adapter=None if self.adapter is None
                                      else _map_path(self.adapter))
        enc.normalize = self.normalize
        fp = enc.fingerprint()
        if fp != self.fingerprint:
            raise ValueError(
                f"cannot re-open a pickled Encoder: the model folder {path} is not what was "
                f"pickled (fingerprint {fp[:16]}... here, {self.fingerprint[:16]}... when pickled); "
                "its weights, config or tokenizer files changed, or another model is at that path")
        return enc

    def _on_worker(self) -> Encoder:
        """This thread's Encoder for the spec (opened on first use, then kept:
        at most 2 per thread, least recently used dropped)."""
        return _thread_encoder(self)


_local = threading.local()
_THREAD_CACHE_SIZE = 2


def _thread_encoder(spec: EncoderSpec) -> Encoder:
    cache = getattr(_local, "encoders", None)
    if cache is None:
        cache = _local.encoders = OrderedDict()
    key = (spec.path, spec.max_length, spec.normalize, spec.fingerprint, spec.pooling,
           spec.template, spec.precision, spec.adapter, os.environ.get(PATH_MAP_ENV, ""))
    enc = cache.get(key)
    if enc is None:
        enc = spec.open()
        cache[key] = enc
        while len(cache) > _THREAD_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return enc


def _reopen(spec: EncoderSpec) -> Encoder:
    """Unpickle an Encoder: a new one from its folder (see EncoderSpec.open)."""
    return spec.open()
