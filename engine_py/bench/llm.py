"""`python -m engine_py bench llm`: pooled hidden states of decoder LLMs (GGUF)
— engine_py against llama.cpp (xllamacpp) and PyTorch + transformers.

Per model (SmolLM2-135M-Instruct Q4_1 and Qwen2.5-Coder-0.5B-Instruct Q4_K_M
by default: engine_py.models.smollm2_path / qwen05_path), on the same GGUF
file and the same thread count, two workloads:

- short: 256 texts of 10-40 tokens (real-looking sentences made from a
  fixed seed, fitted to the model's tokenizer);
- long: 16 texts of 512 tokens each.

Three float32 sides, each measuring what a user would run to get the mean-pooled last
hidden state (after the final norm) of every text:

- engine_py: Encoder.from_pretrained(gguf).encode_layers(texts, [num_layers],
  batch_size) (tokenization included). Reported as "not available (<reason>)"
  when this engine_py cannot load the file.
- llama.cpp through xllamacpp: Server(CommonParams) in embedding mode with
  mean pooling and no normalization, all texts in one handle_embeddings
  request (the server spreads them over n_parallel slots and batches them);
  several (n_parallel, n_batch = n_ubatch, threads <= --threads) settings are
  tried and the best reported (under load, fewer OpenMP threads than cores
  can win: every op of llama.cpp ends in a barrier).
- PyTorch + transformers, float32: AutoModelForCausalLM.from_pretrained(folder,
  gguf_file=...) (dequantized to float32), the base model only (no lm_head),
  texts sorted by length, batches padded on the right, attention-mask mean
  pooling of hidden_states[num_layers].

Two more sides run the products in bfloat16 (float32 sums), for the machines
that have bf16 arithmetic (AVX512-BF16, AMX): engine_py with
Encoder.from_pretrained(gguf, precision="bfloat16"), and PyTorch +
transformers with the model in torch.bfloat16. Their "% of peak" is of
PyTorch's bfloat16 matmul at square sizes, measured in the same run.
One more, engine_py with precision="int8" (int8 activations times the
weights' integer codes, VPDPBUSD where the CPU has VNNI): its "% of peak"
is of the int8 peak, engine_py's own loop of independent VPDPBUSD on every
thread (2 ops per multiply-add; `_core._int8_peak`), measured in the same
run; no int8 peak where the CPU has no VNNI.

Every (side, model, workload, setting) runs in a child process of its own
(python -m engine_py.bench.llm --worker ...), so that its peak RSS
(VmHWM: the weights it maps or copies, its buffers, the Python interpreter
and libraries) is its own; the children run one after another.
The RSS target: engine_py encoding the 512-token texts with SmolLM2 within
file size + 200 MB.

Tokens/s counts the texts' tokens as the model's own tokenizer (transformers'
from the GGUF metadata, no BOS: these files say add_bos_token false) counts
them, the same count for every side. GFLOP/s counts the useful work: 2 x the
parameters of the matrix products (attention q, k, v, o and the FFN gate, up,
down; not the embedding lookup, not the lm_head, which nobody computes for
pooled states) per token, plus causal attention, 4 x hidden FLOPs per
(query, key) pair with key <= query, per layer. The peak it is compared with
is a float32 matmul through NumPy's BLAS, the same thread count, measured in
the same run (a child of its own).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
import time

__all__ = ["make_texts", "fit_texts", "read_gguf_meta", "llm_config", "flops_per_text",
           "render_markdown", "main"]

# --- deterministic, real-looking texts ---------------------------------------

_SUBJECTS = ["The package", "This library", "A small tool", "The daemon", "Our team", "The kernel module",
             "The new release", "The parser", "This script", "The documentation", "The service",
             "A contributor", "The maintainer", "The build system", "The test suite", "The scheduler",
             "The graph", "The encoder", "The cache", "The installer", "Every node", "The mirror"]
_VERBS = ["provides", "depends on", "replaces", "documents", "speeds up", "breaks", "fixes",
          "recommends", "conflicts with", "wraps", "parses", "downloads", "verifies", "compresses",
          "renders", "indexes", "configures", "monitors", "translates", "benchmarks"]
_OBJECTS = ["shared libraries for image processing", "the Python bindings", "a command line interface",
            "TLS certificates", "the configuration files in /etc", "Unicode text in many scripts",
            "the manual pages", "a plugin for the editor", "large CSV files", "kernel headers",
            "the HTTP client", "fonts for mathematical typesetting", "SQLite databases",
            "audio codecs such as FLAC and Opus", "the GNOME desktop", "a Perl module",
            "the debugging symbols", "compressed archives", "network interfaces", "cron jobs",
            "the locale data", "a JSON schema", "PostgreSQL extensions", "the test fixtures"]
_TAILS = ["on every architecture.", "since version 2.4.1.", "without root privileges.",
          "when the cache is cold.", "in about 30 seconds.", "for backwards compatibility.",
          "as described in the README.", "unless the option --quiet is given.", "(see bug #48213).",
          "on ARM64 and x86-64 alike.", "with 8 GB of RAM or more.", "before the next freeze.",
          "— a long-standing request from users.", "by default.", "if systemd is running.",
          "and logs a warning otherwise.", "in the upstream tarball.", "for the 2024 release."]
_EXTRA = ["However, some users report that it is slow on older hardware.",
          "It is written in C with a thin Python layer on top.",
          "The upstream project moved to a new Git hosting service last year.",
          "Install it with apt-get install, or build it from source with make.",
          "Its API changed in a backwards-incompatible way in version 3.",
          "Tests cover about 87% of the code, according to the coverage report.",
          "The default settings are fine for most desktops; servers may want more threads.",
          "Translations exist for German, French, Japanese and Brazilian Portuguese.",
          "Questions go to the mailing list rather than the bug tracker.",
          "Security fixes are backported to the stable branch within a week.",
          "def main(argv):\n    return run(parse(argv))",
          "Die Übersetzung ist unvollständig, aber brauchbar.", "Le paquet est maintenu par l'équipe Debian.",
          "数据以 UTF-8 编码存储。", "Benchmark: 1,234 requests/s at p99 latency 12 ms."]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}"
    if rng.random() < 0.35:
        s += " " + rng.choice(_EXTRA)
    return s


def make_texts(n: int, words_lo: int, words_hi: int, seed: int = 0) -> list:
    """n deterministic texts of words_lo..words_hi whitespace-separated words
    (sentences from fixed word lists, cut to length), the same for a seed on
    every machine and Python version (random.Random with an int seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        want = rng.randint(words_lo, words_hi)
        words: list = []
        while len(words) < want:
            words += _sentence(rng).split(" ")
        out.append(" ".join(words[:want]))
    return out


def fit_texts(texts: list, count_tokens, lo: int, hi: int) -> list:
    """Each text cut (by whole words; texts too short get words from the next
    texts appended) so that lo <= count_tokens(text) <= hi; with lo == hi the
    largest word prefix whose count is <= hi, then characters of the words
    after it until exactly hi when possible. Returns the fitted texts."""
    pool = " ".join(texts).split(" ")
    out = []
    pos = 0
    for t in texts:
        words = t.split(" ")
        k = len(words)
        # grow with words from the pool while too short
        j = pos
        while count_tokens(" ".join(words)) < lo:
            words.append(pool[j % len(pool)])
            j += 1
        # shrink (binary search on the word count) while too long
        if count_tokens(" ".join(words)) > hi:
            a, b = 1, len(words)            # count(words[:a]) may be <= hi; count(words[:b]) > hi
            while b - a > 1:
                m = (a + b) // 2
                if count_tokens(" ".join(words[:m])) <= hi:
                    a = m
                else:
                    b = m
            text = " ".join(words[:a])
            rest = " ".join(words[a:]).rstrip()
            if lo == hi and count_tokens(text) < hi:
                head = text
                for c in range(1, len(rest)):
                    if rest[c - 1] == " ":
                        continue            # no text ends in a space
                    cand = head + " " + rest[:c]
                    n = count_tokens(cand)
                    if n > hi:
                        break
                    text = cand
                    if n == hi:
                        break
        else:
            text = " ".join(words)
        out.append(text)
        pos += k
    return out


# --- model facts and FLOPs -----------------------------------------------------

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}


def read_gguf_meta(path: str) -> dict:
    """The scalar and string metadata of a GGUF file (arrays skipped, not
    stored): {key: value}. A small reader that stops at the tensor infos."""
    out = {}
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is not supported")

        def string():
            (n,) = struct.unpack("<Q", f.read(8))
            return f.read(n).decode("utf-8", "replace")

        def value(t):
            if t == 8:
                return string()
            if t == 9:
                et, n = struct.unpack("<IQ", f.read(12))
                if et in _SCALAR:                  # skip a scalar array in one seek
                    f.seek(n * struct.calcsize(_SCALAR[et]), 1)
                else:
                    for _ in range(n):
                        value(et)
                return None
            fmt = _SCALAR[t]
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        for _ in range(n_kv):
            k = string()
            (t,) = struct.unpack("<I", f.read(4))
            v = value(t)
            if v is not None:
                out[k] = v
    return out


def llm_config(meta: dict) -> dict:
    """{arch, hidden, layers, heads, kv_heads, ffn, head_dim, context} from
    GGUF metadata (read_gguf_meta)."""
    arch = meta["general.architecture"]
    g = lambda k, d=None: meta.get(f"{arch}.{k}", d)  # noqa: E731
    hidden, heads = int(g("embedding_length")), int(g("attention.head_count"))
    return {"arch": arch, "name": meta.get("general.name", ""), "hidden": hidden,
            "layers": int(g("block_count")), "heads": heads,
            "kv_heads": int(g("attention.head_count_kv", heads)), "ffn": int(g("feed_forward_length")),
            "head_dim": hidden // heads, "context": int(g("context_length", 0)),
            "file_type": meta.get("general.file_type")}


def matmul_params(cfg: dict) -> int:
    """Weights of the matrix products per token (all layers; no embedding
    lookup, no lm_head): q, o (hidden x hidden), k, v (hidden x kv_heads *
    head_dim), FFN gate, up, down (hidden x ffn each)."""
    d, kv = cfg["hidden"], cfg["kv_heads"] * cfg["head_dim"]
    return cfg["layers"] * (2 * d * d + 2 * d * kv + 3 * d * cfg["ffn"])


def flops_per_text(cfg: dict, n_tokens: int) -> float:
    """FLOPs to encode one text of n_tokens: 2 x matmul_params per token plus
    causal attention (scores and weighted sum: 4 x hidden FLOPs per pair
    key <= query, n (n + 1) / 2 pairs) in every layer."""
    n = int(n_tokens)
    return 2.0 * matmul_params(cfg) * n + 4.0 * cfg["hidden"] * cfg["layers"] * n * (n + 1) / 2.0


# --- markdown -----------------------------------------------------------------

SIDES = ("engine_py", "engine_py_bf16", "engine_py_int8", "xllamacpp", "torch", "torch_bf16")
SIDE_NAMES = {"engine_py": "engine_py", "engine_py_bf16": "engine_py, precision='bfloat16'",
              "engine_py_int8": "engine_py, precision='int8'",
              "xllamacpp": "llama.cpp (xllamacpp)", "torch": "PyTorch + transformers, float32",
              "torch_bf16": "PyTorch + transformers, bfloat16"}
# the sides whose products run in bfloat16: their % of peak is of the bf16 peak
BF16_SIDES = ("engine_py_bf16", "torch_bf16")
# the sides whose products run in int8: their % of peak is of the int8 peak
INT8_SIDES = ("engine_py_int8",)


def side_precision(side: str) -> str:
    """The precision an engine_py or PyTorch side runs in."""
    return "bfloat16" if side in BF16_SIDES else "int8" if side in INT8_SIDES else "float32"


def _fmt(x, spec, missing="—"):
    return missing if x is None else format(x, spec)


def render_markdown(res: dict, machine_line: str = "") -> str:
    """The BENCHMARKS.md section from the results dict main() builds:
    {threads, reps, sgemm_gflops, sgemm_note, command, models: [{name, path,
    file_mb, cfg, cases: {case: {texts, tokens, min, max, gflop,
    sides: {side: {ok, reason, tokens_per_s, seconds, rss_mb, setting,
    tried}}}}}]}."""
    peak = res.get("sgemm_gflops")
    lines = [f"## Decoder LLMs: pooled hidden states (`{res.get('command', 'python -m engine_py bench llm')}`)",
             "",
             f"Mean-pooled last hidden state (after the final norm) of every text, each side on the same "
             f"GGUF file with {res['threads']} threads, best of {res['reps']} timed repetitions after a "
             f"warm-up on a few texts, tokenization included; GOMP_SPINCOUNT={res.get('gomp_spincount')} "
             f"for every side (their OpenMP runtimes read it). Each side runs in a child process of its own (peak RSS = "
             f"that child's VmHWM). GFLOP/s: 2 x matmul parameters per token + causal attention "
             f"(no lm_head); % of peak: of a float32 matmul through NumPy's BLAS, {res['threads']} "
             f"threads, same run: {_fmt(peak, '.1f')} GFLOP/s{res.get('sgemm_note', '')}"
             + (f"; for the bfloat16 sides, of PyTorch's bfloat16 matmul (same threads, same run): "
                f"{res['bf16_gflops']:.1f} GFLOP/s" if res.get("bf16_gflops") else "")
             + (f"; for the int8 side, of the int8 peak (engine_py's VPDPBUSD loop, "
                f"{res.get('int8_kernel', '?')}, same threads, same run; 2 ops per multiply-add): "
                f"{res['int8_gops']:.1f} GOP/s" if res.get("int8_gops") else "") + ".",
             ""]
    for m in res["models"]:
        c = m["cfg"]
        lines += [f"### {m['name']} ({c['arch']}, {c['layers']} layers, hidden {c['hidden']}, "
                  f"{c['heads']}/{c['kv_heads']} heads, FFN {c['ffn']}; {os.path.basename(m['path'])}, "
                  f"{m['file_mb']:.0f} MB)", "",
                  "| workload | side | tokens/s | GFLOP/s | % of sgemm peak | peak RSS (MB) | setting |",
                  "|---|---|---:|---:|---:|---:|---|"]
        for case, cr in m["cases"].items():
            desc = (f"{case}: {cr['texts']} texts, {cr['tokens']:,} tokens ({cr['min']}–{cr['max']} "
                    f"per text)")
            for side in SIDES:
                s = cr["sides"].get(side)
                if s is None:
                    continue
                if not s.get("ok"):
                    lines.append(f"| {desc} | {SIDE_NAMES[side]} | not available ({s.get('reason', '?')}) "
                                 f"| | | {_fmt(s.get('rss_mb'), '.0f', '')} | |")
                    continue
                gf = cr["gflop"] / s["seconds"]
                ref = (res.get("bf16_gflops") if side in BF16_SIDES
                       else res.get("int8_gops") if side in INT8_SIDES else peak)
                pct = f"{100.0 * gf / ref:.0f}%" if ref else "—"
                setting = s.get("setting", "")
                own = s.get("own_tokens")
                if own is not None and own != cr["tokens"]:
                    setting += f"; its tokenizer counts {own:,} tokens"
                lines.append(f"| {desc} | {SIDE_NAMES[side]} | {s['tokens_per_s']:,.0f} | {gf:.1f} | {pct} | "
                             f"{_fmt(s.get('rss_mb'), '.0f')} | {setting} |")
            e, eb, e8, x, t, tb = (cr["sides"].get(k) or {} for k in SIDES)
            for mine, label, others in (
                    (e, "engine_py", ((x, "llama.cpp"), (t, "PyTorch"))),
                    (eb, "engine_py bf16", ((x, "llama.cpp"), (t, "PyTorch"), (tb, "PyTorch bf16"))),
                    (e8, "engine_py int8", ((x, "llama.cpp"), (t, "PyTorch"), (tb, "PyTorch bf16"),
                                            (e, "engine_py f32"), (eb, "engine_py bf16")))):
                if not mine.get("ok"):
                    continue
                rs = [f"{mine['tokens_per_s'] / o['tokens_per_s']:.2f}x {name}" for o, name in others
                      if o.get("ok")]
                if rs:
                    lines.append(f"| {case} | **{label} / other** | **{', '.join(rs)}** | | | | |")
        lines.append("")
        tried = []
        for case, cr in m["cases"].items():
            s = cr["sides"].get("xllamacpp") or {}
            if s.get("tried"):
                tried.append(f"{case}: " + "; ".join(f"{k} {v:,.0f} tok/s" if isinstance(v, (int, float))
                                                      else f"{k} {v}" for k, v in s["tried"].items()))
        if tried:
            lines += ["llama.cpp settings tried (n_parallel / n_batch = n_ubatch / threads, at most the "
                      "others' thread count): " + " | ".join(tried), ""]
    tgt = res.get("rss_target")
    if tgt:
        lines += [f"RSS target, engine_py, SmolLM2, 512-token texts: peak RSS <= file size + 200 MB = "
                  f"{tgt['limit_mb']:.0f} MB: {tgt['verdict']}.", ""]
    if machine_line:
        lines.append(f"Machine: {machine_line}")
    return "\n".join(lines)


# --- the children ---------------------------------------------------------------

def _rss_mb() -> float:
    """This process's peak RSS in MiB: VmHWM from /proc/self/status (the
    high-water mark of this address space; getrusage's ru_maxrss would also
    count the parent's RSS copied at fork, which Linux carries over exec),
    else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0   # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0   # KiB on Linux


def _time_reps(fn, reps: int, warm=None):
    (warm or fn)()   # warm-up (also the first touch of the weights)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _matmul_peak(square, sizes, flops_per_timing: float) -> float:
    """The best GFLOP/s of `a @ b` over square sizes n (a, b = square(n, 0),
    square(n, 1)), each timed 3 times over about flops_per_timing FLOPs."""
    best = 0.0
    for n in sizes:
        a, b = square(n, 0), square(n, 1)
        a @ b
        reps = max(2, int(flops_per_timing / (2 * n ** 3)))
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(reps):
                a @ b
            best = max(best, 2.0 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def _worker_sgemm(job: dict) -> dict:
    import numpy as np

    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        threadpool_limits, threadpool_info = None, None
    if threadpool_limits is not None:
        threadpool_limits(limits=job["threads"], user_api="blas")
    best = _matmul_peak(lambda n, seed: np.random.default_rng(seed).standard_normal((n, n), dtype=np.float32),
                        (512, 1024, 2048), 2e9)
    info = ""
    if threadpool_info:
        for p in threadpool_info():
            if p.get("user_api") == "blas":
                info = f"{p.get('internal_api')} {p.get('version')}, kernel {p.get('architecture')}"
                break
    return {"gflops": best, "blas": info}


def _worker_engine(job: dict) -> dict:
    try:
        import engine_py

        engine_py.set_num_threads(job["threads"])
        precision = job.get("precision", "float32")
        enc = engine_py.Encoder.from_pretrained(job["path"], precision=precision)
        L = int(enc.num_layers)
        texts = job["texts"]
        bs = job["batch_size"]
        out = enc.encode_layers(texts[:2], [L], batch_size=bs)
        if tuple(out.shape)[:2] != (1, len(texts[:2])):
            raise RuntimeError(f"encode_layers returned shape {tuple(out.shape)}")
    except Exception as exc:   # the engine side is optional: report why
        return {"ok": False, "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]}
    times = _time_reps(lambda: enc.encode_layers(texts, [L], batch_size=bs), job["reps"],
                       lambda: enc.encode_layers(texts[:4], [L], batch_size=bs))
    own = None
    try:
        own = int(sum(len(x) for x in enc.tokenize(texts)))
    except Exception:
        pass
    setting = f"batch_size {bs}"
    if precision == "bfloat16":
        kernel = engine_py._core.build_info().get("bf16_kernel")
        setting += ", AVX512-BF16 kernel" if kernel else ", no AVX512-BF16: emulated"
    if precision == "int8":
        setting += f", int8 kernel {engine_py._core.build_info().get('int8_kernel')}"
    return {"ok": True, "times": times, "own_tokens": own, "setting": setting}


def _worker_xllamacpp(job: dict) -> dict:
    try:
        import xllamacpp as xl
    except ImportError as exc:
        return {"ok": False, "reason": f"xllamacpp not installed ({exc}); pip install xllamacpp"}
    n_par, n_batch = job["n_parallel"], job["n_batch"]
    p = xl.CommonParams()
    p.model.path = job["path"]
    p.embedding = True
    p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    p.embd_normalize = -1                       # raw pooled states, like the other sides
    p.n_parallel = n_par
    p.n_ctx = n_par * job["ctx_per_slot"]
    p.n_batch = n_batch
    p.n_ubatch = n_batch
    p.cpuparams.n_threads = job["threads"]
    p.cpuparams_batch.n_threads = job["threads"]
    p.n_threads_http = 1
    p.warmup = True
    try:
        p.verbosity = 0
    except Exception:
        pass
    server = xl.Server(p)
    texts = job["texts"]
    box = {}

    def run(part=texts):
        r = server.handle_embeddings({"input": part})
        if not isinstance(r, dict) or "data" not in r:
            raise RuntimeError(f"handle_embeddings returned {str(r)[:300]}")
        box["r"] = r

    times = _time_reps(run, job["reps"], lambda: run(texts[:max(4, n_par)]))
    r = box["r"]
    dim = len(r["data"][0]["embedding"])
    return {"ok": True, "times": times, "own_tokens": (r.get("usage") or {}).get("prompt_tokens"),
            "dim": dim, "n": len(r["data"]),
            "setting": f"n_parallel {n_par}, n_batch = n_ubatch {n_batch}, {job['threads']} threads"}


def _worker_torch(job: dict) -> dict:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        return {"ok": False, "reason": f"{exc}"}
    torch.set_num_threads(job["threads"])
    d, f = os.path.split(job["path"])
    dtype = torch.bfloat16 if job.get("precision") == "bfloat16" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).eval()
    base = getattr(model, "model", model)
    if hasattr(model, "lm_head"):
        model.lm_head = None   # never used here: free its weights (tied ones stay with the embedding)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    L = base.config.num_hidden_layers
    texts = job["texts"]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    stexts = [texts[i] for i in order]
    bs = job["batch_size"]

    def run(part=stexts):
        outs = []
        with torch.inference_mode():
            for s in range(0, len(part), bs):
                b = tok(part[s:s + bs], padding=True, return_tensors="pt")
                hs = base(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                          output_hidden_states=True, use_cache=False).hidden_states[L]
                m = b["attention_mask"].unsqueeze(-1).to(hs.dtype)
                outs.append((hs * m).sum(1) / m.sum(1).clamp(min=1))
        return outs

    times = _time_reps(run, job["reps"], lambda: run(stexts[:min(bs, 4)]))
    return {"ok": True, "times": times, "setting": f"batch {bs}, length-sorted, right padding",
            "torch": torch.__version__}


def _worker_bf16_peak(job: dict) -> dict:
    """The machine's bfloat16 matmul rate: PyTorch's (oneDNN) bf16 matmul at
    square sizes, float32 accumulation, the same thread count."""
    try:
        import torch
    except ImportError as exc:
        return {"ok": False, "reason": f"{exc}"}
    torch.set_num_threads(job["threads"])
    best = _matmul_peak(lambda n, seed: torch.randn(n, n).to(torch.bfloat16), (1024, 2048), 4e9)
    return {"ok": True, "gflops": best, "torch": torch.__version__}


def _worker_int8_peak(job: dict) -> dict:
    """The machine's int8 rate: engine_py's loop of independent VPDPBUSD on
    every thread (2 ops per multiply-add), best of a few ~0.3 s timings."""
    import engine_py

    engine_py.set_num_threads(job["threads"])
    kernel = engine_py._core.build_info().get("int8_kernel")
    if engine_py._core._int8_peak(1000) == 0.0:
        return {"ok": False, "reason": f"no VNNI (int8 kernel {kernel})", "kernel": kernel}
    iters, best = 1_000_000, 0.0
    while True:   # about 0.3 s per timing
        t0 = time.perf_counter()
        ops = engine_py._core._int8_peak(iters)
        dt = time.perf_counter() - t0
        if dt >= 0.3 or iters >= 1 << 34:
            break
        iters *= 2
    best = ops / dt / 1e9
    for _ in range(4):
        t0 = time.perf_counter()
        ops = engine_py._core._int8_peak(iters)
        best = max(best, ops / (time.perf_counter() - t0) / 1e9)
    return {"ok": True, "gops": best, "kernel": kernel}


_WORKERS = {"sgemm": _worker_sgemm, "bf16_peak": _worker_bf16_peak, "int8_peak": _worker_int8_peak,
            "engine_py": _worker_engine, "engine_py_bf16": _worker_engine, "engine_py_int8": _worker_engine,
            "xllamacpp": _worker_xllamacpp, "torch": _worker_torch,
            "torch_bf16": _worker_torch}


def _run_child(job: dict, timeout: float, log) -> dict:
    """Run one job in a child process; its result dict plus rss_mb."""
    # The child runs this file as a script, so that only the engine_py side
    # imports engine_py (and the sgemm side does not load its OpenBLAS); it
    # finds this very engine_py (a checkout or an install) through PYTHONPATH.
    # Every child gets the parent's environment, GOMP_SPINCOUNT included:
    # engine_py sets it when imported (unless the user did) and llama.cpp's and
    # PyTorch's OpenMP read it as well, so all sides run with the same value.
    from engine_py.bench import run_worker_script

    return run_worker_script(os.path.abspath(__file__), job, timeout, log)


def _worker_main() -> int:
    # the child side of run_worker_script, kept in this file: a child must not import
    # the engine_py package unless its side uses it (its libraries would count in its RSS)
    job = json.loads(sys.stdin.read())
    try:
        res = _WORKERS[job["side"]](job)
    except Exception as exc:
        res = {"ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:200]}"}
    res["rss_mb"] = _rss_mb()
    sys.stdout.write("RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


# --- main -------------------------------------------------------------------------

# llama.cpp settings tried by default: (n_parallel, n_batch = n_ubatch, threads)
_DEFAULT_SETTINGS = {
    "short": lambda t: [(8, 512, t), (32, 2048, t)] + ([(8, 512, 1)] if t > 1 else []),
    "long": lambda t: [(4, 2048, t)] + ([(4, 2048, 1)] if t > 1 else []),
}


def _setting(text: str, threads: int) -> tuple:
    v = [int(x) for x in text.split("/")]
    if len(v) not in (2, 3):
        raise SystemExit(f"--xllamacpp-settings: {text!r} is not n_parallel/n_batch[/threads]")
    return (v[0], v[1], v[2] if len(v) == 3 else threads)


def _models(names: list) -> list:
    from engine_py import models

    out = []
    for n in names:
        if os.path.isfile(n):
            out.append((os.path.basename(n), n))
            continue
        fn = {"smollm2": (models.smollm2_path, "SmolLM2-135M-Instruct Q4_1"),
              "qwen05": (models.qwen05_path, "Qwen2.5-Coder-0.5B-Instruct Q4_K_M")}.get(n)
        if fn is None:
            raise SystemExit(f"unknown model {n!r}: smollm2, qwen05 or a .gguf path")
        out.append((fn[1], fn[0]()))
    return out


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine_py bench llm", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,qwen05",
                    help="comma-separated: smollm2, qwen05 or .gguf paths (default: both)")
    ap.add_argument("--sides", default=",".join(SIDES), help="comma-separated subset of " + ",".join(SIDES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per side (best reported)")
    ap.add_argument("--short", type=int, default=256, help="number of short texts (10-40 tokens)")
    ap.add_argument("--long", type=int, default=16, help="number of long texts")
    ap.add_argument("--long-tokens", type=int, default=512)
    ap.add_argument("--cases", default="short,long", help="workloads to run: short, long or both")
    ap.add_argument("--engine-batch", type=int, default=32, help="engine_py encode_layers batch_size")
    ap.add_argument("--torch-batch", default="32,4", help="PyTorch batch size for short,long")
    ap.add_argument("--xllamacpp-settings", default=None,
                    help="llama.cpp settings to try, n_parallel/n_batch[/threads] (threads default --threads), "
                         "e.g. '1/512,8/2048/1' (default: a few per workload, threads <= --threads)")
    ap.add_argument("--xllamacpp-search", choices=("each", "first"), default="each",
                    help="try the settings on every model (each) or on the first model only and use its "
                         "best on the others (first: saves time on slow machines)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 24 short and 2 long texts of 128 tokens, 1 repetition, one llama.cpp "
                         "setting")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per child process")
    ap.add_argument("--quiet", action="store_true")
    from engine_py.bench import add_output_args

    add_output_args(ap, "llm")
    args = ap.parse_args(argv)
    if args.quick:
        args.short, args.long, args.long_tokens, args.reps = min(args.short, 24), min(args.long, 2), \
            min(args.long_tokens, 128), 1
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    sides = [s for s in args.sides.split(",") if s]
    bad = set(sides) - set(SIDES)
    if bad:
        ap.error(f"unknown side(s) {sorted(bad)}")
    tb_short, tb_long = (int(x) for x in args.torch_batch.split(","))
    cases = [c for c in args.cases.split(",") if c]
    if set(cases) - {"short", "long"}:
        ap.error("--cases: short, long")

    from engine_py.bench import finish, machine_line, start_run

    run = start_run()
    log("sgemm peak (NumPy float32 matmul) ...")
    sg = _run_child({"side": "sgemm", "threads": args.threads}, args.timeout, log)
    peak = sg.get("gflops")
    bf16_peak = None
    if any(sd in BF16_SIDES for sd in sides):
        log("bf16 peak (PyTorch bfloat16 matmul) ...")
        bf16_peak = _run_child({"side": "bf16_peak", "threads": args.threads}, args.timeout, log).get("gflops")
    int8_peak = int8_kernel = None
    if any(sd in INT8_SIDES for sd in sides):
        log("int8 peak (engine_py VPDPBUSD loop) ...")
        i8 = _run_child({"side": "int8_peak", "threads": args.threads}, args.timeout, log)
        int8_peak, int8_kernel = i8.get("gops"), i8.get("kernel")
    res = {"threads": args.threads, "reps": args.reps, "sgemm_gflops": peak, "bf16_gflops": bf16_peak,
           "int8_gops": int8_peak, "int8_kernel": int8_kernel,
           "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "unset"),
           "sgemm_note": f" ({sg['blas']})" if sg.get("blas") else "",
           "command": "python -m engine_py bench llm" + (" " + " ".join(argv) if argv else ""),
           "models": []}
    from transformers import AutoTokenizer

    searched: dict = {}
    for name, path in _models([m for m in args.models.split(",") if m]):
        cfg = llm_config(read_gguf_meta(path))
        d, f = os.path.split(path)
        log(f"{name}: tokenizer ...")
        tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
        count = lambda t: len(tok(t, add_special_tokens=True)["input_ids"])  # noqa: E731
        short = fit_texts(make_texts(args.short, 6, 32, seed=1), count, 10, 40) if "short" in cases else []
        long_ = [] if "long" not in cases else fit_texts(make_texts(args.long, int(args.long_tokens * 0.9), int(args.long_tokens * 0.9),
                                     seed=2), count, args.long_tokens, args.long_tokens)
        mres = {"name": name, "path": path, "file_mb": os.path.getsize(path) / 2 ** 20, "cfg": cfg, "cases": {}}
        for case, texts, tb in (("short", short, tb_short), ("long", long_, tb_long)):
            if case not in cases:
                continue
            lens = [count(t) for t in texts]
            cr = {"texts": len(texts), "tokens": sum(lens), "min": min(lens), "max": max(lens),
                  "gflop": sum(flops_per_text(cfg, n) for n in lens) / 1e9, "sides": {}}
            ctx_per_slot = max(lens) + 16
            base = {"path": path, "threads": args.threads, "reps": args.reps, "texts": texts}
            for side in sides:
                if side == "xllamacpp":
                    if case in searched:          # --xllamacpp-search first: reuse the first model's best
                        settings = [searched[case]]
                    elif args.xllamacpp_settings:
                        settings = [_setting(x, args.threads) for x in args.xllamacpp_settings.split(",")]
                    elif args.quick:
                        settings = [(4, 1024, args.threads)]
                    else:
                        settings = _DEFAULT_SETTINGS[case](args.threads)
                    best, tried = None, {}
                    for n_par, n_batch, n_thr in settings:
                        n_batch = max(n_batch, ctx_per_slot)   # a pooled sequence must fit one ubatch
                        log(f"{name} {case} xllamacpp n_parallel {n_par} n_batch {n_batch} threads {n_thr} ...")
                        r = _run_child(dict(base, side=side, n_parallel=n_par, n_batch=n_batch,
                                            ctx_per_slot=ctx_per_slot, threads=n_thr), args.timeout, log)
                        key = f"{n_par}/{n_batch}/{n_thr}"
                        if r.get("ok"):
                            r["seconds"] = min(r["times"])
                            r["tokens_per_s"] = cr["tokens"] / r["seconds"]
                            r["key"] = (n_par, n_batch, n_thr)
                            tried[key] = r["tokens_per_s"]
                            if best is None or r["tokens_per_s"] > best["tokens_per_s"]:
                                best = r
                        else:
                            tried[key] = f"failed ({r.get('reason')})"
                    if best is not None and args.xllamacpp_search == "first" and case not in searched:
                        searched[case] = best["key"]
                    r = best or {"ok": False, "reason": "; ".join(f"{k}: {v}" for k, v in tried.items())}
                    r["tried"] = tried
                else:
                    log(f"{name} {case} {side} ...")
                    r = _run_child(dict(base, side=side,
                                        precision=side_precision(side),
                                        batch_size=args.engine_batch if side.startswith("engine_py") else tb),
                                   args.timeout, log)
                    if r.get("ok"):
                        r["seconds"] = min(r["times"])
                        r["tokens_per_s"] = cr["tokens"] / r["seconds"]
                if r.get("ok"):
                    log(f"    {r['tokens_per_s']:,.0f} tokens/s, peak RSS {r['rss_mb']:.0f} MB ({r.get('setting')})")
                else:
                    log(f"    not available: {r.get('reason')}")
                cr["sides"][side] = r
            mres["cases"][case] = cr
        res["models"].append(mres)
    for m in res["models"]:
        if m["name"].startswith("SmolLM2") and "long" in m["cases"]:
            e = m["cases"]["long"]["sides"].get("engine_py") or {}
            limit = os.path.getsize(m["path"]) / 2 ** 20 + 200
            if e.get("ok") and e.get("rss_mb"):
                verdict = (f"{'met' if e['rss_mb'] <= limit else 'NOT met'} ({e['rss_mb']:.0f} MB)")
            else:
                verdict = "not measured (engine_py side not available)"
            res["rss_target"] = {"limit_mb": limit, "verdict": verdict}
    # the machine may be shared: the peak is the better of a measurement at the
    # start and one at the end of the run
    log("sgemm peak again ...")
    sg2 = _run_child({"side": "sgemm", "threads": args.threads}, args.timeout, log)
    if sg2.get("gflops"):
        res["sgemm_gflops_start_end"] = [peak, sg2["gflops"]]
        res["sgemm_gflops"] = max(peak or 0.0, sg2["gflops"])
        res["sgemm_note"] += (f"; the better of {_fmt(peak, '.1f')} at the start and {sg2['gflops']:.1f} "
                              f"at the end of the run")
    if int8_peak is not None:
        log("int8 peak again ...")
        i82 = _run_child({"side": "int8_peak", "threads": args.threads}, args.timeout, log)
        if i82.get("gops"):
            res["int8_gops_start_end"] = [int8_peak, i82["gops"]]
            res["int8_gops"] = max(int8_peak, i82["gops"])
    machine = run.stop(threads=args.threads)
    md = render_markdown(res, machine_line(machine))
    finish(args, "llm", md, machine, res, argv)
    return 0


if __name__ == "__main__":  # pragma: no cover
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        # run as a script: this folder's modules (cache.py, threads.py ...) must not
        # shadow anything the worker imports
        _here = os.path.dirname(os.path.abspath(__file__))
        sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
        sys.exit(_worker_main())
    sys.exit(main())
