"""Decoder LLMs of the Llama family (arch ``llama`` and ``qwen2``) for the
C core: read their hyper-parameters and hand their weights to
``_core.LlamaModel`` without copying the matrices.

Two sources:

- a GGUF file (llama.cpp's format): weights stay in their quantized blocks
  inside the read-only mapping; for arch ``llama`` the Q and K rows are
  stored permuted for llama.cpp's interleaved RoPE, so the model rotates
  pairs ``(2i, 2i+1)`` ("norm" mode); ``qwen2`` files keep Hugging Face's
  layout ("neox" mode).
- a Hugging Face folder (config.json + model.safetensors or shards) with
  ``model_type`` llama or qwen2, float32/float16/bfloat16: matrices are read
  in place from the mapped safetensors file in their own dtype; RoPE in
  Hugging Face's rotate-half ("neox") layout.

Everything else (rope scaling, sliding windows, other architectures, other
tensor types) raises :class:`UnsupportedModelError` saying what is supported.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

import numpy as np

from . import _core

__all__ = ["UnsupportedModelError", "SUPPORTED_ARCHS", "load_gguf_model", "load_hf_model",
           "is_llama_folder", "gguf_config", "hf_config", "hf_to_gguf_name"]

#: Architectures the Llama-family path runs.
SUPPORTED_ARCHS = ("llama", "qwen2")

# ggml type ids (eg_quant.h) of the float types a safetensors file may hold
_GGML_F32, _GGML_F16, _GGML_BF16 = 0, 1, 30


class UnsupportedModelError(ValueError):
    """The file is valid but holds a model engine_py does not run (another
    architecture, a rope scaling, a tensor type without a kernel)."""


# ----------------------------------------------------------------- GGUF

def _meta(md: Dict[str, Any], key: str, path: str, kind=int, default=None):
    v = md.get(key, default)
    if v is None:
        raise ValueError(f"{path}: GGUF metadata key {key!r} is missing (needed for this "
                         "architecture)")
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{path}: GGUF metadata {key!r} must be an integer, got {v!r}")
        return int(v)
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"{path}: GGUF metadata {key!r} must be a number, got {v!r}")
    return float(v)


def gguf_config(g, path: str) -> Dict[str, Any]:
    """The LlamaModel hyper-parameters of an open GGUFFile."""
    md = g.metadata
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(
            f"{path}: architecture {arch!r} is not supported; engine_py runs GGUF models of "
            f"architecture {', '.join(SUPPORTED_ARCHS)} (and BERT-family Hugging Face folders)")
    scaling = md.get(f"{arch}.rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedModelError(f"{path}: rope scaling {scaling!r} is not supported "
                                    "(only plain RoPE)")
    D = _meta(md, f"{arch}.embedding_length", path)
    H = _meta(md, f"{arch}.attention.head_count", path)
    Hkv = _meta(md, f"{arch}.attention.head_count_kv", path, default=H)
    if H <= 0 or D % H != 0 and f"{arch}.attention.key_length" not in md:
        raise ValueError(f"{path}: embedding_length {D} is not a multiple of head_count {H}")
    head_dim = _meta(md, f"{arch}.attention.key_length", path, default=D // max(H, 1))
    rope_dim = md.get(f"{arch}.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise UnsupportedModelError(f"{path}: partial rotary embedding (rope dimension "
                                    f"{rope_dim} of head_dim {head_dim}) is not supported")
    embd = g.tensors.get("token_embd.weight")
    if embd is None:
        raise ValueError(f"{path}: tensor 'token_embd.weight' is missing")
    vocab = md.get(f"{arch}.vocab_size", embd.shape[0])
    return dict(
        vocab_size=int(embd.shape[0]) if vocab is None else int(vocab),
        hidden_size=D, num_layers=_meta(md, f"{arch}.block_count", path),
        num_heads=H, num_kv_heads=Hkv, head_dim=head_dim,
        intermediate_size=_meta(md, f"{arch}.feed_forward_length", path),
        max_position=_meta(md, f"{arch}.context_length", path),
        rms_norm_eps=_meta(md, f"{arch}.attention.layer_norm_rms_epsilon", path, float),
        rope_theta=_meta(md, f"{arch}.rope.freq_base", path, float, default=10000.0),
        rope_mode="norm" if arch == "llama" else "neox",
        qkv_bias=arch == "qwen2",
    )


def load_gguf_model(path: str, precision: str = "float32"):
    """(LlamaModel, config dict, GGUFFile) for a .gguf file; the model reads
    the file's mapping in place. precision: "float32", "bfloat16" (the
    products' inputs rounded to bf16) or "int8" (int8 activations times the
    weights' integer codes); docs/LLM.md."""
    from .io import GGUFFile

    g = GGUFFile(path)
    cfg = gguf_config(g, path)
    model = _core.LlamaModel(**cfg, precision=precision)
    for name, shape in model.weight_specs():
        t = g.tensors.get(name)
        if t is None:
            raise ValueError(f"{path}: tensor {name!r} is missing (expected shape {tuple(shape)})")
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{path}: tensor {name!r} has shape {t.shape}, the config implies "
                             f"{tuple(shape)}")
        try:
            model.set_weight(name, g.raw(name), t.type_id, shape)
        except ValueError as exc:
            if "not supported" in str(exc):
                raise UnsupportedModelError(f"{path}: {exc}") from None
            raise ValueError(f"{path}: {exc}") from None
    model.check_complete()
    return model, cfg, g


# ---------------------------------------------------- Hugging Face folders

def is_llama_folder(path: str) -> bool:
    """True when path is a folder whose config.json names a llama or qwen2
    model."""
    cfg = os.path.join(path, "config.json")
    if not os.path.isfile(cfg):
        return False
    try:
        with open(cfg, encoding="utf-8") as f:
            c = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(c, dict) and c.get("model_type") in SUPPORTED_ARCHS


# Hugging Face names (without "model.") -> GGUF names
_HF_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


def hf_to_gguf_name(name: str) -> Optional[str]:
    """The GGUF name of a Hugging Face Llama/Qwen2 tensor, or None for
    tensors the encoder does not use (lm_head, rotary buffers)."""
    if name.startswith("model."):
        name = name[6:]
    if name == "embed_tokens.weight":
        return "token_embd.weight"
    if name == "norm.weight":
        return "output_norm.weight"
    if name.startswith("layers."):
        parts = name.split(".", 2)
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in _HF_LAYER:
            return f"blk.{int(parts[1])}.{_HF_LAYER[parts[2]]}"
    return None


def hf_config(c: Dict[str, Any], path: str) -> Dict[str, Any]:
    """LlamaModel hyper-parameters from a Hugging Face config.json dict."""
    arch = c.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise UnsupportedModelError(f"{path}: model_type {arch!r} is not supported "
                                    f"(supported: {', '.join(SUPPORTED_ARCHS)}, bert)")
    scaling = c.get("rope_scaling")
    if scaling not in (None, {}) and not (isinstance(scaling, dict)
                                         and scaling.get("rope_type", scaling.get("type"))
                                         == "default"):
        raise UnsupportedModelError(f"{path}: rope_scaling {scaling!r} is not supported "
                                    "(only plain RoPE)")
    if c.get("use_sliding_window"):
        raise UnsupportedModelError(f"{path}: sliding-window attention is not supported")

    def need(key):
        v = c.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{path}/config.json: {key} must be a positive integer, got {v!r}")
        return v

    D, H = need("hidden_size"), need("num_attention_heads")
    head_dim = c.get("head_dim") or D // H
    theta = c.get("rope_theta")
    if theta is None and isinstance(c.get("rope_parameters"), dict):
        theta = c["rope_parameters"].get("rope_theta")
    return dict(
        vocab_size=need("vocab_size"), hidden_size=D, num_layers=need("num_hidden_layers"),
        num_heads=H, num_kv_heads=c.get("num_key_value_heads") or H, head_dim=int(head_dim),
        intermediate_size=need("intermediate_size"),
        max_position=need("max_position_embeddings"),
        rms_norm_eps=float(c.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta if theta is not None else 10000.0),
        rope_mode="neox",
        qkv_bias=bool(c.get("attention_bias", arch == "qwen2")),
    )


def load_hf_model(path: str, config: Dict[str, Any], precision: str = "float32"):
    """(LlamaModel, hyper-parameters, source dtypes) for a Hugging Face
    folder whose config.json was read into `config`. The matrices are read
    in place from the mapped safetensors files (the arrays handed to the
    model keep the mapping alive)."""
    from .io import load_state

    cfg = hf_config(config, path)
    model = _core.LlamaModel(**cfg, precision=precision)
    want = dict(model.weight_specs())
    # bf16="raw": BF16 tensors come as their uint16 bits, still zero-copy
    state = load_state(path, bf16="raw")
    dtypes = {}
    for name, arr in state.items():
        g = hf_to_gguf_name(name)
        if g is None or g not in want:
            continue
        kind = {np.dtype(np.float32): _GGML_F32, np.dtype(np.float16): _GGML_F16,
                np.dtype(np.uint16): _GGML_BF16}.get(arr.dtype)
        if kind is None:
            raise UnsupportedModelError(f"{path}: tensor {name} has dtype {arr.dtype}; supported: "
                                        "float32, float16, bfloat16")
        if tuple(arr.shape) != tuple(want[g]):
            raise ValueError(f"{path}: tensor {name} has shape {tuple(arr.shape)}, config.json "
                             f"implies {tuple(want[g])}")
        model.set_weight(g, np.ascontiguousarray(arr), kind, tuple(arr.shape))
        dtypes[g] = "bfloat16" if kind == _GGML_BF16 else str(arr.dtype)
    if "token_embd.weight" not in dtypes:
        raise ValueError(f"{path}: weights are missing model.embed_tokens.weight")
    try:
        model.check_complete()
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return model, cfg, dtypes
