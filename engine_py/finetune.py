"""LoRA fine-tuning of decoder LLMs (arch llama / qwen2) in the C core.

    from engine_py.finetune import Trainer

    tr = Trainer(model_path, method="lora", r=2, alpha=4, lr=2e-4, epochs=1, batch_size=16)
    tr.fit(prompts, answers)              # loss over the answer tokens only
    tr.predict(prompts, choices)          # index of the most likely choice per prompt
    tr.score(prompts, choices, y)         # accuracy
    tr.save_adapter("adapter/")           # PEFT format
    tr2 = Trainer.load(model_path, "adapter/")

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
from ._validate import read_json

__all__ = ["Trainer", "MODULES", "LoraBatch", "merge_adapter", "read_adapter"]

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
    frozen products in bf16 with float32 sums, see docs/FINETUNE.md),
    recompute (activation recomputation per layer: a step saves each layer's
    input only and runs the layer again in backward — ~1/10 of the
    activation memory for one more forward pass of compute, same results),
    show_progress_bar.
    """

    def __init__(self, model_path, method: str = "lora", r: int = 2, alpha: float = 4,
                 targets: Sequence[str] = MODULES, lr: float = 2e-4, epochs: int = 1,
                 batch_size: int = 16, seed: int = 0, *, dropout: float = 0.0,
                 weight_decay: float = 0.0, warmup_ratio: float = 0.1,
                 schedule: str = "cosine", max_grad_norm: Optional[float] = 1.0,
                 max_length: Optional[int] = None, micro_batch_size: Optional[int] = None,
                 precision: str = "float32", recompute: bool = False,
                 show_progress_bar: Optional[bool] = None):
        if method != "lora":
            raise ValueError(f"method must be 'lora' (mixlora/gmoe are not implemented yet), "
                             f"got {method!r}")
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
        self.show_progress_bar = show_progress_bar
        (self._model, self._hp, self.tokenizer, head, self._keep,
         self.arch) = _load_base(self.model_path, precision)
        ctx = self._hp["max_position"]
        self.max_length = ctx if max_length is None else int(max_length)
        if not 2 <= self.max_length <= ctx:
            raise ValueError(f"max_length must be in [2, {ctx}], got {max_length!r}")
        ranks = [self.r if m in targets else 0 for m in MODULES]
        alphas = [self.alpha if m in targets else 0.0 for m in MODULES]
        self._core = _core.LoraTrainer(self._model, ranks, alphas, dropout=self.dropout,
                                       seed=self.seed)
        if head is not None:
            data, kind, shape = head
            self._core.set_head(data, kind, shape[0], shape[1])
        self.recompute = bool(recompute)
        self._core.set_recompute(self.recompute)
        # llama GGUF files store Q/K rows permuted (llm.py): B's rows follow
        self._permuted = os.path.isfile(self.model_path) and self._hp["rope_mode"] == "norm"
        self.step_ = 0
        self.history_: list = []

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
        """Mean cross-entropy over the answer tokens and the LoRA gradients
        (float32 copy of the flat gradient buffer), without updating."""
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
        nll = 0.0
        for j, b in enumerate(parts):
            s, _ = self._core.step(b.ids, b.offsets, b.targets, scale=1.0 / n_t, backward=True,
                                   seed=(seed + j * 0x9E3779B97F4A7C15) & (2**64 - 1))
            nll += s
        return nll / n_t, sum(len(b.ids) for b in parts)

    def fit(self, prompts, answers, checkpoint_dir=None, checkpoint_every: int = 1):
        """Train on (prompt, answer) pairs; the loss covers the answer tokens
        only. Returns self; history_ holds (step, loss, lr) per step.

        checkpoint_dir: save a checkpoint there every `checkpoint_every`
        steps and at the end (save_checkpoint); if it already holds one made
        by this same job (same data, hyper-parameters and model), training
        resumes after the checkpoint's step, and the result is bit for bit
        the one of an uninterrupted run (same machine and thread count).
        Ctrl-C or a non-finite loss leaves the last checkpoint intact."""
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
                    norm = float(np.sqrt(np.dot(grads.astype(np.float64),
                                                grads.astype(np.float64))))
                    if norm > self.max_grad_norm:
                        grads *= np.float32(self.max_grad_norm / (norm + 1e-6))
                lr = self._lr_at(k, total)
                self._core.adamw_step(self._m, self._v, lr, 0.9, 0.999, 1e-8,
                                      self.weight_decay, self.step_ + 1)
                self.step_ += 1
                self.history_.append((self.step_, loss, lr))
                if checkpoint_dir is not None and ((k + 1) % checkpoint_every == 0
                                                   or k + 1 == total):
                    self.save_checkpoint(checkpoint_dir, _fit=(k + 1, job))
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}",
                                tok_s=f"{ntok / max(time.perf_counter() - t0, 1e-9):.0f}")
        return self

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
        save_safetensors(fpath, {"lora": np.array(self._core.params), "adam_m": m, "adam_v": v},
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
        self._core.params[:] = t["lora"]
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
        the gradient buffer's contents under the same names."""
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
        return out

    def set_lora_state(self, state: dict) -> None:
        p = self._core.params
        H, Hkv = self._hp["num_heads"], self._hp["num_kv_heads"]
        want = set()
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
        """adapter_model.safetensors + adapter_config.json, as PEFT writes them."""
        from .io import save_safetensors

        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        save_safetensors(os.path.join(directory, "adapter_model.safetensors"), self.lora_state())
        cfg = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": self.r, "lora_alpha": self.alpha,
            "lora_dropout": self.dropout, "bias": "none", "fan_in_fan_out": False,
            "target_modules": [_PEFT_PATH[t].split(".")[1] for t in self.targets],
            "base_model_name_or_path": os.path.abspath(self.model_path),
            "inference_mode": True, "init_lora_weights": True, "use_rslora": False,
            "use_dora": False, "modules_to_save": None, "layers_to_transform": None,
            "rank_pattern": {}, "alpha_pattern": {},
        }
        with open(os.path.join(directory, "adapter_config.json"), "w", encoding="utf-8") as f:
            json.dump(cfg, f, indent=2)

    @classmethod
    def load(cls, model_path, adapter_dir, **kw) -> "Trainer":
        """A Trainer on model_path with the adapter saved in adapter_dir."""
        cfg, targets, state = read_adapter(adapter_dir)
        tr = cls(model_path, r=int(cfg["r"]), alpha=float(cfg["lora_alpha"]), targets=targets, **kw)
        tr.set_lora_state(state)
        return tr


def read_adapter(adapter_dir):
    """(adapter_config dict, targets in MODULES' names, PEFT-named float32
    tensors) of a PEFT LoRA adapter folder; ValueError for what engine_py
    does not support (rank/alpha patterns, DoRA, rsLoRA, other modules)."""
    from .io import load_state

    adapter_dir = os.fspath(adapter_dir)
    cpath = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(cpath):
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json")
    cfg = read_json(cpath, "adapter config")
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
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


#: the GGUF tensor (engine_py LlamaModel weight) each LoRA target adapts
_GGUF_NAME = {"q": "attn_q", "k": "attn_k", "v": "attn_v", "o": "attn_output",
              "gate": "ffn_gate", "up": "ffn_up", "down": "ffn_down"}


def adapter_deltas(adapter_dir, hp: dict, permuted: bool) -> dict:
    """{LlamaModel weight name: float32 (alpha / r) * B @ A} for every matrix a
    PEFT LoRA adapter changes, in the model's row order (llama GGUF files:
    q/k rows permuted, as Trainer does). Shapes are checked against hp
    (the model's hyper-parameters)."""
    cfg, targets, state = read_adapter(adapter_dir)
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
                    raise ValueError(f"adapter is missing {key}")
                if tuple(state[key].shape) != shape:
                    raise ValueError(f"adapter tensor {key} has shape {tuple(state[key].shape)}, "
                                     f"this model and rank need {shape}")
                used.add(key)
            A = np.asarray(state[ka], dtype=np.float64)
            B = np.asarray(state[kb], dtype=np.float64)
            if permuted and name in ("q", "k"):
                B = _permute_rows(B, hp["num_heads"] if name == "q" else hp["num_kv_heads"])
            out[f"blk.{layer}.{_GGUF_NAME[name]}.weight"] = ((alpha / r) * (B @ A)).astype(np.float32)
    extra = sorted(set(state) - used)
    if extra:
        raise ValueError(f"adapter has tensors this model does not: {extra[:3]}")
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
