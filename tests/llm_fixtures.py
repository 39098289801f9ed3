"""Tiny random decoder LLMs (Llama, Qwen2) for tests, and the PyTorch reference
of their pooled hidden states. A helper module, not a test file:

    from llm_fixtures import write_tiny_llm, reference_pooled_states

    paths = write_tiny_llm(tmp_path, "llama", gguf_types=("F32", "Q8_0"))
    paths.hf_dir          # config.json + model.safetensors + tokenizer.json (save_pretrained)
    paths.gguf["F32"]     # the same weights as GGUF, written the way llama.cpp's
                          # convert_hf_to_gguf.py writes them
    ref = reference_pooled_states(paths.gguf["F32"], ["some text", [5, 6, 7]], [0, 3])

What the GGUF files hold (llama.cpp's converter, convert_hf_to_gguf.py):

- tensors token_embd, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output,
  ffn_norm, ffn_gate, ffn_up, ffn_down}.weight, output_norm, output (qwen2:
  attn_q/k/v also have .bias); shapes as in PyTorch, (out, in) for matrices.
- arch llama: the rows of attn_q and attn_k are permuted for llama.cpp's
  interleaved ("normal") RoPE — LlamaModel.permute:
      w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape)
  with n_head = head_count for Q and head_count_kv for K. Inside every head,
  HF's rotate-half layout (pairs (i, i + d/2)) becomes adjacent pairs
  (2i, 2i + 1). transformers' GGUF loader undoes it
  (LlamaTensorProcessor._reverse_permute_weights). An engine reading a llama
  GGUF must either rotate adjacent pairs or un-permute the rows.
- arch qwen2: no permutation (NeoX RoPE, rotate-half like HF), q/k/v biases.
- metadata <arch>.context_length, embedding_length, block_count,
  feed_forward_length, attention.head_count, attention.head_count_kv,
  attention.layer_norm_rms_epsilon, rope.freq_base (llama also
  rope.dimension_count and vocab_size, as the converter writes them);
  tokenizer.ggml.model "gpt2", pre "gpt-2" (the tokenizer.json below uses
  ByteLevel with GPT-2's regex), tokens, token_type, merges, bos/eos/padding
  ids, add_bos_token False (like SmolLM2 and Qwen2.5 files).
- weight types: 1-D tensors (norms, biases) are always F32, as llama.cpp
  keeps them. Every matrix gets the type asked for: F32, F16, BF16, or a
  quantized type through gguf.quants.quantize (gguf 0.19 quantizes Q4_0,
  Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K and more; QUANTIZABLE lists what this
  install can do; it cannot quantize K-quants: Q2_K..Q6_K files get random
  valid blocks instead, see synth_kquant). Quantized blocks need the row length (the input features:
  hidden for most matrices, intermediate for ffn_down) to be a multiple of
  the block size: 32 for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0, 256 for the K-quants —
  use hidden=256, intermediate=512 (KQUANT_SIZES) for Q4_K/Q6_K files.
  ``embd_type`` sets token_embd and output separately (like real files,
  whose token_embd is often Q8_0 or Q6_K).

The HF folder is a LlamaForCausalLM / Qwen2ForCausalLM saved with
save_pretrained (safetensors) and a byte-level BPE tokenizer trained with the
`tokenizers` library on a small text (vocab ~300: 256 byte symbols, the
special tokens, merges). Weights are random but not tiny (std 1/sqrt(fan_in),
norm weights 1 ± 0.2, biases ~0.1), so every layer changes the states visibly.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

__all__ = ["TinyLLM", "write_tiny_llm", "write_tiny_tokenizer", "write_gguf", "tiny_config",
           "reference_pooled_states", "permute_for_gguf", "synth_kquant", "dequantize_gguf_tensor", "QUANTIZABLE", "KQUANT_SIZES",
           "TRAIN_TEXT"]

#: sizes for K-quant fixtures (rows a multiple of 256)
KQUANT_SIZES = dict(hidden=256, intermediate=512, heads=4, kv_heads=2)

TRAIN_TEXT = (
    "The quick brown fox jumps over the lazy dog. Graph neural networks pass messages along "
    "edges; a frozen language model encodes every node's text once, and a small side network "
    "learns from the cached layer states. Debian packages depend on libraries, tools and "
    "documentation: libc6, python3, perl, coreutils. Numbers 0 1 2 3 4 5 6 7 8 9 10 42 1024. "
    "Caf\u00e9, na\u00efve, \u00fcber, \u00e5ngstr\u00f6m, \u4e2d\u6587, \U0001F600 emoji. "
    "def encode(texts, batch_size=32):\n    return [t.lower() for t in texts]\n"
    "Tokens, merges and byte-level symbols: every byte has a symbol of its own.\n"
) * 4

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _quantizable() -> tuple:
    try:
        import gguf
        from gguf import quants
    except ImportError:
        return ()
    ok = []
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                 "IQ4_NL", "TQ1_0", "TQ2_0", "MXFP4"):
        qt = getattr(gguf.GGMLQuantizationType, name, None)
        if qt is None:
            continue
        block = gguf.GGML_QUANT_SIZES[qt][0]
        try:
            quants.quantize(np.zeros((1, block), dtype=np.float32), qt)
        except (NotImplementedError, quants.QuantError, ValueError, TypeError):
            continue
        ok.append(name)
    return tuple(ok)


#: quantized weight types gguf.quants.quantize supports in this install
QUANTIZABLE = _quantizable()


@dataclass
class TinyLLM:
    arch: str                      # "llama" | "qwen2"
    hf_dir: str                    # save_pretrained folder (config.json, model.safetensors, tokenizer)
    gguf: dict = field(default_factory=dict)   # weight type name -> path of the .gguf file
    config: dict = field(default_factory=dict)  # the transformers config as a dict


def tiny_config(arch: str = "llama", vocab_size: int = 300, hidden: int = 64, heads: int = 4,
                kv_heads: int = 2, layers: int = 3, intermediate: int = 96,
                rope_theta: float = 10000.0, rms_eps: float = 1e-5, max_positions: int = 1024,
                bos_token_id: int = 0, eos_token_id: int = 0):
    """A transformers LlamaConfig / Qwen2Config with tiny sizes."""
    from transformers import LlamaConfig, Qwen2Config

    kw = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=intermediate,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=max_positions, rms_norm_eps=rms_eps, rope_theta=rope_theta,
              tie_word_embeddings=False, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
              pad_token_id=eos_token_id, hidden_act="silu")
    if arch == "llama":
        return LlamaConfig(attention_bias=False, mlp_bias=False, **kw)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **kw)
    raise ValueError(f"arch must be 'llama' or 'qwen2', not {arch!r}")


def write_tiny_tokenizer(folder: str, vocab_size: int = 300, text: str = TRAIN_TEXT):
    """Train a byte-level BPE (GPT-2 pre-tokenizer regex, no BOS/EOS added on
    encode) on `text` and save it in `folder` with save_pretrained
    (tokenizer.json + tokenizer_config.json). Returns the tokenizers.Tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, min_frequency=1)
    tok.train_from_iterator([text], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIAL_TOKENS[0],
                                   eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[0],
                                   unk_token=None)
    os.makedirs(folder, exist_ok=True)
    fast.save_pretrained(folder)
    return tok


def _randomize(model, seed: int) -> None:
    """Weights that are not tiny: matrices std 1/sqrt(fan_in), embeddings std 1,
    norm weights 1 + 0.2 N(0,1), biases 0.1 N(0,1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embed_tokens" in name else 1.0 / np.sqrt(p.shape[1])
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def permute_for_gguf(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF's rotate-half
    row order of a Q (n_head) or K (n_head_kv) projection -> llama.cpp's
    interleaved RoPE order. Works on weights (rows, in) and biases (rows,)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


# HF parameter name (inside model.layers.N.) -> GGUF tensor name (inside blk.N.)
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}


def _gguf_name(hf: str) -> str:
    if hf in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf]
    parts = hf.split(".")
    if parts[:2] == ["model", "layers"]:
        return f"blk.{int(parts[2])}." + _LAYER_NAMES[".".join(parts[3:])]
    raise KeyError(f"no GGUF name for {hf!r}")


def _encode_tensor(arr: np.ndarray, type_name: str):
    """(data, raw_dtype) for GGUFWriter.add_tensor."""
    import gguf

    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if type_name == "F32":
        return arr, None
    if type_name == "F16":
        return arr.astype(np.float16), None
    qt = gguf.GGMLQuantizationType[type_name]
    if type_name not in QUANTIZABLE and type_name in _KQUANT_SCALES:
        return synth_kquant(arr, type_name), qt
    if type_name != "BF16" and type_name not in QUANTIZABLE:
        raise NotImplementedError(f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else ''}"
                                  f" cannot quantize to {type_name}; it can do {', '.join(QUANTIZABLE)}")
    block = gguf.GGML_QUANT_SIZES[qt][0]
    if arr.shape[-1] % block:
        raise ValueError(f"{type_name} needs rows whose length is a multiple of {block}; this tensor is "
                         f"{arr.shape} (use larger sizes, e.g. llm_fixtures.KQUANT_SIZES)")
    return gguf.quants.quantize(arr, qt), qt


# K-quant blocks gguf cannot quantize to: byte offsets of the float16 scale
# fields (d, and dmin where the type has one) in one 256-value block
# (ggml-common.h block_q2_K .. block_q6_K).
_KQUANT_SCALES = {"Q2_K": (80, 82), "Q3_K": (108, None), "Q4_K": (0, 2), "Q5_K": (0, 2),
                  "Q6_K": (208, None)}
# mean quantized value of the types with a dmin (q uniform over 2, 4, 5 bits)
_KQUANT_MEAN_Q = {"Q2_K": 1.5, "Q4_K": 7.5, "Q5_K": 15.5}


def synth_kquant(arr: np.ndarray, type_name: str, seed: int = 0) -> np.ndarray:
    """Random but valid K-quant blocks (uint8, byte shape) for a matrix shaped
    like `arr`, scaled so the dequantized values have arr's standard deviation.

    gguf-py 0.19 dequantizes Q2_K..Q6_K but quantizes none of them, so K-quant
    fixtures are not quantized from the HF weights: their random blocks ARE
    the weights. The HF folder then differs from such a GGUF file; compare an
    engine reading it with reference_pooled_states(<the .gguf>) — transformers
    dequantizes it exactly — or dequantize_gguf_tensor() for a single tensor.
    """
    import gguf
    from gguf import quants

    qt = gguf.GGMLQuantizationType[type_name]
    block, nbytes = gguf.GGML_QUANT_SIZES[qt]
    rows, cols = arr.shape
    if cols % block:
        raise ValueError(f"{type_name} needs rows whose length is a multiple of {block}; this tensor "
                         f"is {arr.shape} (use larger sizes, e.g. llm_fixtures.KQUANT_SIZES)")
    rng = np.random.default_rng([seed, rows, cols, int(qt)])
    nb = rows * cols // block
    raw = rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    d_off, m_off = _KQUANT_SCALES[type_name]

    def put(scale):
        d = (scale * rng.uniform(0.5, 1.5, nb)).astype(np.float16)
        raw[:, d_off:d_off + 2] = d.view(np.uint8).reshape(nb, 2)
        if m_off is not None:
            # dmin ~ d * E[q] so that the blocks are roughly zero-mean, like real weights
            m = (d.astype(np.float32) * _KQUANT_MEAN_Q[type_name] * rng.uniform(0.8, 1.2, nb)
                 ).astype(np.float16)
            raw[:, m_off:m_off + 2] = m.view(np.uint8).reshape(nb, 2)

    put(1e-3)
    q = raw.reshape(rows, cols // block * nbytes)
    std = float(quants.dequantize(q, qt).std())
    target = float(np.asarray(arr, dtype=np.float32).std()) or 1.0
    rng = np.random.default_rng([seed, rows, cols, int(qt)])   # same d pattern, rescaled
    rng.integers(0, 256, size=(nb, nbytes), dtype=np.uint8)
    put(1e-3 * target / max(std, 1e-30))
    return raw.reshape(rows, cols // block * nbytes)


def dequantize_gguf_tensor(path: str, name: str) -> np.ndarray:
    """One tensor of a GGUF file as float32 in PyTorch layout (out, in), as
    stored (llama Q/K rows stay permuted)."""
    import gguf
    from gguf import quants

    r = gguf.GGUFReader(path)
    for t in r.tensors:
        if t.name == name:
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            return np.asarray(quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    raise KeyError(f"{name} not in {path}")


def write_gguf(path: str, arch: str, config, state: dict, tokenizer_json: dict,
               weight_type: str = "F32", embd_type: str | None = None, name: str = "tiny") -> str:
    """Write the HF state dict `state` (name -> float32 ndarray) as a GGUF file
    the way llama.cpp's convert_hf_to_gguf.py does (see the module docstring).
    Returns path."""
    import gguf

    c = config
    n_head, n_kv = c.num_attention_heads, c.num_key_value_heads
    head_dim = c.hidden_size // n_head
    rope_theta = getattr(c, "rope_theta", None)
    if rope_theta is None:
        rope_theta = (getattr(c, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    w = gguf.GGUFWriter(path, arch)
    w.add_name(name)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(float(c.rms_norm_eps))
    w.add_rope_freq_base(float(rope_theta))
    if arch == "llama":
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(c.vocab_size)
    # file_type: the type most matrices have (llama.cpp's LLAMA_FTYPE numbering)
    ftypes = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10,
              "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18, "BF16": 32}
    if weight_type in ftypes:
        w.add_file_type(ftypes[weight_type])

    # tokenizer (llama.cpp's _set_vocab_gpt2): ids in order, byte-level strings
    vocab = tokenizer_json["model"]["vocab"]
    added = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])}
    n_vocab = c.vocab_size
    by_id = {i: t for t, i in vocab.items()}
    by_id.update({i: t for t, i in added.items()})
    tokens, types = [], []
    for i in range(n_vocab):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if by_id[i] in added else gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = tokenizer_json["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")   # llama.cpp's name for GPT-2's regex (it refuses "gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(c.bos_token_id)
    w.add_eos_token_id(c.eos_token_id)
    w.add_pad_token_id(c.eos_token_id)
    w.add_add_bos_token(False)

    for hf_name, arr in state.items():
        arr = np.asarray(arr, dtype=np.float32)
        gname = _gguf_name(hf_name)
        if arch == "llama" and ".attn_q." in gname:
            arr = permute_for_gguf(arr, n_head, n_head)
        elif arch == "llama" and ".attn_k." in gname:
            arr = permute_for_gguf(arr, n_head, n_kv)
        if arr.ndim == 1:
            t = "F32"
        elif gname in ("token_embd.weight", "output.weight") and embd_type is not None:
            t = embd_type
        else:
            t = weight_type
        data, raw = _encode_tensor(arr, t)
        if raw is None:
            w.add_tensor(gname, data)
        else:
            w.add_tensor(gname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_llm(folder, arch: str = "llama", gguf_types=("F32",), embd_type: str | None = None,
                   seed: int = 0, **sizes) -> TinyLLM:
    """A tiny random LlamaForCausalLM / Qwen2ForCausalLM in `folder`:
    `folder/hf` (save_pretrained, safetensors, tokenizer) and one GGUF file
    `folder/tiny-<arch>-<TYPE>.gguf` per weight type in gguf_types (same
    weights). sizes: keywords of tiny_config (vocab_size, hidden, heads,
    kv_heads, layers, intermediate, rope_theta, rms_eps, max_positions)."""
    import torch
    from transformers import LlamaForCausalLM, Qwen2ForCausalLM

    folder = os.fspath(folder)
    hf_dir = os.path.join(folder, "hf")
    vocab_size = sizes.pop("vocab_size", 300)
    tok = write_tiny_tokenizer(hf_dir, vocab_size=vocab_size)
    vocab_size = max(vocab_size, tok.get_vocab_size())
    cfg = tiny_config(arch, vocab_size=vocab_size, **sizes)
    torch.manual_seed(seed)
    cls = LlamaForCausalLM if arch == "llama" else Qwen2ForCausalLM
    model = cls(cfg).eval()
    _randomize(model, seed)
    model.save_pretrained(hf_dir, safe_serialization=True)
    with open(os.path.join(hf_dir, "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    out = TinyLLM(arch=arch, hf_dir=hf_dir, config=cfg.to_dict())
    for t in gguf_types:
        path = os.path.join(folder, f"tiny-{arch}-{t}.gguf")
        write_gguf(path, arch, cfg, state, tj, weight_type=t, embd_type=embd_type,
                   name=f"tiny-{arch}")
        out.gguf[t] = path
    return out


# --- the parity reference ---------------------------------------------------

_MODELS: dict = {}


def _load(path: str):
    """(model, tokenizer) from a HF folder or a .gguf file (transformers
    dequantizes GGUF to float32), cached per path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.abspath(os.fspath(path))
    key = (path, os.path.getmtime(path))
    if key not in _MODELS:
        if os.path.isfile(path):
            d, f = os.path.split(path)
            kw = dict(gguf_file=f)
        else:
            d, kw = path, {}
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, **kw).eval()
        tok = AutoTokenizer.from_pretrained(d, **kw)
        _MODELS[key] = (model, tok)
    return _MODELS[key]


def reference_pooled_states(model_dir_or_gguf, texts_or_ids, layers, pooling: str = "mean"):
    """The pooled hidden states PyTorch + transformers give: an array
    (len(layers), n, hidden) float32.

    model_dir_or_gguf: a HF folder (config.json + model.safetensors) or a .gguf
    file (loaded with gguf_file=, dequantized to float32). texts_or_ids: texts
    (tokenized by the model's own tokenizer, add_special_tokens=True: no BOS for
    these tokenizers, as llama.cpp with add_bos_token False) or lists of token
    ids, mixed freely. layers: indices into output_hidden_states (0 = the
    embeddings, num_layers = the last state, after the final norm). pooling:
    "mean" (all tokens of the text) or "last" (its last token).

    Each text runs alone (batch of one, no padding), float32, the base model
    (no lm_head), under torch.inference_mode; so the result is what the model
    computes, free of padding effects.
    """
    import torch

    if pooling not in ("mean", "last"):
        raise ValueError(f"pooling must be 'mean' or 'last', not {pooling!r}")
    model, tok = _load(model_dir_or_gguf)
    base = getattr(model, "model", model)
    n_states = model.config.num_hidden_layers + 1
    layers = [int(x) for x in layers]
    for x in layers:
        if not 0 <= x < n_states:
            raise ValueError(f"layer {x} out of range 0..{n_states - 1}")
    out = np.zeros((len(layers), len(texts_or_ids), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for j, item in enumerate(texts_or_ids):
            ids = tok(item, add_special_tokens=True)["input_ids"] if isinstance(item, str) else list(item)
            if not ids:
                raise ValueError(f"text {j} has no tokens")
            x = torch.tensor([ids], dtype=torch.long)
            hs = base(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True,
                      use_cache=False).hidden_states
            for i, layer in enumerate(layers):
                h = hs[layer][0].float()
                out[i, j] = (h.mean(0) if pooling == "mean" else h[-1]).numpy()
    return out
