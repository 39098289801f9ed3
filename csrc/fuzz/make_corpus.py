"""Regenerate the seed corpora under csrc/fuzz/corpus/<target>/.

Run from the repository root with the extension built in place:
    python csrc/fuzz/make_corpus.py [target ...]     (default: every target)
Seeds are small valid (and a few nearly valid) inputs in each harness's input
format (see the header comment of csrc/fuzz/fuzz_<target>.c); the whole corpus
stays well under 1 MB. The fuzzers add what they find to their own working
corpus (build/fuzz/corpus), not to these folders.
"""
import os
import shutil
import struct
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.abspath(os.path.join(HERE, "..", "..")))


def out_dir(name):
    d = os.path.join(HERE, "corpus", name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def put(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def safetensors_seeds():
    from safetensors.numpy import save
    d = out_dir("safetensors")
    put(d, "f32_i64_meta", save({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                 "ids": np.array([1, -2, 3], dtype=np.int64)},
                                metadata={"format": "np", "k": "v"}))
    put(d, "f16_scalar_empty", save({"s": np.array(1.5, dtype=np.float16),
                                     "e": np.zeros((0, 4), dtype=np.float32)}))
    put(d, "many_dtypes", save({"b": np.array([True, False]), "u8": np.arange(3, dtype=np.uint8),
                                "i8": np.arange(2, dtype=np.int8), "i16": np.arange(2, dtype=np.int16),
                                "u16": np.arange(2, dtype=np.uint16), "i32": np.arange(2, dtype=np.int32),
                                "u32": np.arange(2, dtype=np.uint32), "f64": np.arange(2, dtype=np.float64),
                                "u64": np.arange(2, dtype=np.uint64)}))
    import torch
    from safetensors.torch import save as tsave
    put(d, "bf16_unicode_name", tsave({"poids.\u00e9\u4e2d": torch.ones(2, 2, dtype=torch.bfloat16)}))
    put(d, "empty", save({}))
    hdr = b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'
    put(d, "hand_made", struct.pack("<Q", len(hdr)) + hdr + b"\0\0\x80\x3f")


def gguf_seeds():
    import gguf
    from gguf import GGMLQuantizationType as QT, GGUFValueType as VT
    d = out_dir("gguf")
    tmp = tempfile.mkdtemp()
    rng = np.random.default_rng(0)

    def blocks(qtype, rows, cols, scale_offsets):
        bs, ts = gguf.GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, size=(rows * cols // bs, ts), dtype=np.uint8)
        for off in scale_offsets:
            raw[:, off:off + 2] = rng.uniform(-1, 1, len(raw)).astype(np.float16).view(np.uint8).reshape(-1, 2)
        return raw.reshape(rows, -1)

    def write(name, tensors, kv=(), alignment=None, version=3):
        p = os.path.join(tmp, name)
        w = gguf.GGUFWriter(p, arch="llama")
        if alignment:
            w.add_custom_alignment(alignment)
        for key, val, vt, sub in kv:
            w.add_key_value(key, val, vt, sub_type=sub)
        for tname, arr, qt in tensors:
            w.add_tensor(tname, arr, raw_dtype=qt)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with open(p, "rb") as f:
            data = bytearray(f.read())
        if version != 3:
            data[4:8] = struct.pack("<I", version)
        put(d, name, bytes(data))

    x = rng.standard_normal((2, 32)).astype(np.float32)
    write("metadata_all_types", [("t", x[0, :4].copy(), None)], [
        ("u8", 7, VT.UINT8, None), ("i8", -7, VT.INT8, None), ("u16", 700, VT.UINT16, None),
        ("i16", -700, VT.INT16, None), ("u32", 70000, VT.UINT32, None), ("i32", -70000, VT.INT32, None),
        ("u64", 2**63, VT.UINT64, None), ("i64", -2**40, VT.INT64, None), ("f32", 0.25, VT.FLOAT32, None),
        ("f64", 1e-300, VT.FLOAT64, None), ("b", True, VT.BOOL, None), ("s", "caf\u00e9", VT.STRING, None),
        ("toks", ["<s>", "a", "\u4e2d"], VT.ARRAY, VT.STRING), ("scores", [0.0, -1.5, 2.0], VT.ARRAY, VT.FLOAT32),
        ("types", [1, 2, 3], VT.ARRAY, VT.INT32), ("flags", [True, False], VT.ARRAY, VT.BOOL)])
    write("v2_f32_f16_bf16", [("a", x, None), ("h", x.astype(np.float16), None),
                              ("bf", gguf.quants.quantize(x, QT.BF16), QT.BF16)], version=2)
    write("simple_quants_align64", [("q4_0", gguf.quants.quantize(x, QT.Q4_0), QT.Q4_0),
                                    ("q4_1", gguf.quants.quantize(x, QT.Q4_1), QT.Q4_1),
                                    ("q5_0", gguf.quants.quantize(x, QT.Q5_0), QT.Q5_0),
                                    ("q5_1", gguf.quants.quantize(x, QT.Q5_1), QT.Q5_1),
                                    ("q8_0", gguf.quants.quantize(x, QT.Q8_0), QT.Q8_0)], alignment=64)
    write("k_quants", [("q2_k", blocks(QT.Q2_K, 1, 256, [80, 82]), QT.Q2_K),
                       ("q3_k", blocks(QT.Q3_K, 1, 256, [108]), QT.Q3_K),
                       ("q4_k", blocks(QT.Q4_K, 1, 256, [0, 2]), QT.Q4_K),
                       ("q5_k", blocks(QT.Q5_K, 1, 256, [0, 2]), QT.Q5_K),
                       ("q6_k", blocks(QT.Q6_K, 1, 256, [208]), QT.Q6_K)])
    write("no_tensors", [], [("general.alignment", 8, VT.UINT32, None)])
    shutil.rmtree(tmp)


class FakeEncoder:
    def __init__(self, num_layers=3, hidden_size=8, fail_after=None):
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.fail_after = fail_after
        self.calls = 0

    def fingerprint(self):
        return "fuzz-seed-encoder"

    def encode_layers(self, texts, layers=None, batch_size=64, show_progress_bar=False):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        out = np.empty((len(layers), len(texts), self.hidden_size), np.float32)
        for i, t in enumerate(texts):
            for j, l in enumerate(layers):
                out[j, i] = np.sin(len(t) * (l + 1) + 0.37 * np.arange(self.hidden_size))
        return out


def cache_seeds():
    from engine_py.cache import LayerCache
    d = out_dir("cache")
    tmp = tempfile.mkdtemp()
    texts = ["node %d" % i for i in range(10)]
    specs = [("f16_2layers", dict(layers=[0, 2], dtype="float16")),
             ("f32_chunk4", dict(layers=[1], dtype="float32", chunk_rows=4)),
             ("bf16_capacity", dict(layers=[3, 0], dtype="bfloat16", capacity=20, chunk_rows=3))]
    for name, kw in specs:
        p = os.path.join(tmp, name + ".egc")
        LayerCache.build(p, FakeEncoder(), texts, batch_size=4, show_progress_bar=False, **kw).close()
        with open(p, "rb") as f:
            put(d, name, b"\x0f" + f.read())
    # a partial cache: the build stops after its first batch
    p = os.path.join(tmp, "partial.egc")
    try:
        LayerCache.build(p, FakeEncoder(fail_after=1), texts, layers=[0, 1], batch_size=3,
                         chunk_rows=2, show_progress_bar=False)
    except KeyboardInterrupt:
        pass
    with open(p, "rb") as f:
        put(d, "partial", b"\x0f" + f.read())
    shutil.rmtree(tmp)


def json_seeds():
    d = out_dir("json")
    docs = {
        "object": b'{"a": 1, "b": [true, false, null], "c": {"d": "e\\u00e9\\ud83d\\ude00"}}',
        "numbers": b'[0, -0, 1.5e10, -2.25E-3, 9223372036854775807, -9223372036854775808, 1e400]',
        "st_header": b'{"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}',
        "tokenizer_config": b'{"do_lower_case": true, "model_max_length": 512, "cls_token": "[CLS]",'
                            b' "added_tokens_decoder": {"0": {"content": "[PAD]", "special": true}}}',
        "escapes": b'"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000"',
        "nested": b'[[[[[[[[{"x":[[[]]]}]]]]]]]]',
        "dup_keys": b'{"k": 1, "k": 2}',
    }
    for name, doc in docs.items():
        put(d, name, b"\x00" + doc)
        put(d, name + "_strict", b"\x01" + doc)
    put(d, "depth4", b"\x08" + docs["nested"])


def wordpiece_seeds():
    d = out_dir("wordpiece")
    vocab = "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able",
                       "hello", ",", "!", "cafe", "a", "##a", "\u4e2d", "x", "##x", "hello"]).encode()
    added = "[MASK]\n[CLS]\n[SEP]".encode()
    texts = ["Hello, unaffable caf\u00e9!", "\u4e2d\u6587 a aa xx", "[CLS] [MASK] x", "",
             "tab\there\u00a0nbsp \u0301accent", "UNAFFABLE" * 5]
    body = vocab + b"\xff" + added + b"\xff" + b"\xfe".join(t.encode() for t in texts)
    #           flags: clean, chinese, strip, lower, special, prefix "##"
    put(d, "bert_uncased", bytes([0x1F, 16, 100, 1, 2, 3]) + body)
    put(d, "bert_cased_nospecial", bytes([0x03, 0, 100, 1, 2, 3]) + body)
    put(d, "truncate2", bytes([0x1F, 2, 5, 1, 2, 3]) + body)
    put(d, "no_added", bytes([0x0F, 0, 100, 1, 2, 3]) + vocab + b"\xff\xff" + "a\u00e9b".encode())


def graph_seeds():
    d = out_dir("graph")

    def enc(n, flags, steps, restart, seed, edges):
        b = struct.pack("<HBBBQ", n + 2, flags, steps, restart, seed)
        return b + b"".join(struct.pack("<hh", s, t) for s, t in edges)

    ring = [(i, (i + 1) % 10) for i in range(10)]
    put(d, "ring_undirected", enc(10, 1 | (10 << 1), 20, 64, 12345, ring))
    put(d, "ring_directed", enc(10, 0 | (12 << 1), 5, 0, 7, ring))
    star = [(0, i) for i in range(1, 30)] + [(3, 3), (0, 1), (1, 0)]
    put(d, "star_dups_loops", enc(30, 1 | (11 << 1), 40, 128, 99, star))
    put(d, "bad_ids", enc(5, 1, 3, 10, 1, [(0, 5), (-1, 2)]))
    put(d, "empty", enc(0, 1, 0, 0, 0, []))


def _byte_chars():
    keep = [c for c in range(256) if 33 <= c <= 126 or 161 <= c <= 172 or 174 <= c <= 255]
    out, n = [], 0
    for c in range(256):
        if c in keep:
            out.append(chr(c))
        else:
            out.append(chr(256 + n))
            n += 1
    return out


def _gguf_bytes(kv):
    import gguf
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "t.gguf")
    w = gguf.GGUFWriter(path, "llama")
    for k, (kind, v) in kv.items():
        getattr(w, "add_" + kind)(k, v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with open(path, "rb") as f:
        data = f.read()
    shutil.rmtree(tmp)
    return data


def bpe_seeds():
    d = out_dir("bpe")
    texts = ["Hello world, it's 123 the", " the<|eot|>the", "", "\u4e2d\u6587 \U0001f600\u200d ok",
             "a\r\n\t  b 'LL x", "x" * 40]
    tb = b"\xfe".join(t.encode() for t in texts)
    # in-memory byte-level: flags bit 2 prepends the 256 byte characters
    vocab = "\n".join(["\u0120t", "he", "\u0120the", "<|eot|>", "12", "123"]).encode()
    merges = "\n".join(["\u0120 t", "h e", "\u0120t he", "1 2", "12 3"]).encode()
    body = vocab + b"\xff" + merges + b"\xff" + tb
    for pre in range(4):
        #                   flags: bytes, add_special, add_bos
        put(d, "mem_pre%d" % pre, bytes([0x04 | 0x08 | 0x10, pre, 0, 2, 255, 255]) + body)
    put(d, "mem_trunc_eos", bytes([0x04 | 0x08 | 0x20 | 0x40, 1, 5, 255, 2, 255]) + body)
    put(d, "mem_bad_merge", bytes([0x04, 0, 0, 255, 255, 255]) + vocab + b"\xff" + b"x y" + b"\xff" + tb)
    spm_vocab = "\n".join(["<unk>", "<s>", "\u2581", "a", "b", "\u2581a", "ab", "<0xC3>", "<0xA9>"]).encode()
    put(d, "mem_spm", bytes([0x02 | 0x08 | 0x10 | 0x80, 0, 0, 7, 255, 8]) + spm_vocab + b"\xff\xff"
        + "ab \u00e9 ba".encode() + b"\xfe" + tb)
    # GGUF mode: texts, 0xFF, a GGUF file
    S, A = "string", "array"
    toks = _byte_chars() + ["\u0120t", "he", "\u0120the", "<|eot|>"]
    g = _gguf_bytes({"tokenizer.ggml.model": (S, "gpt2"), "tokenizer.ggml.pre": (S, "smollm"),
                     "tokenizer.ggml.tokens": (A, toks),
                     "tokenizer.ggml.merges": (A, ["\u0120 t", "h e", "\u0120t he"]),
                     "tokenizer.ggml.token_type": (A, [1] * 259 + [3]),
                     "tokenizer.ggml.bos_token_id": ("uint32", 259),
                     "tokenizer.ggml.add_bos_token": ("bool", True)})
    put(d, "gguf_smollm", bytes([0x01 | 0x08, 0, 0, 0, 0, 0]) + tb + b"\xff" + g)
    stoks = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "\u2581a", "ab"] + ["<0x%02X>" % i for i in range(256)]
    g = _gguf_bytes({"tokenizer.ggml.model": (S, "llama"), "tokenizer.ggml.tokens": (A, stoks),
                     "tokenizer.ggml.scores": (A, [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -0.5] + [0.0] * 256),
                     "tokenizer.ggml.token_type": (A, [2, 3, 3, 1, 1, 1, 1, 1] + [6] * 256),
                     "tokenizer.ggml.bos_token_id": ("uint32", 1),
                     "tokenizer.ggml.eos_token_id": ("uint32", 2),
                     "tokenizer.ggml.unknown_token_id": ("uint32", 0)})
    put(d, "gguf_spm", bytes([0x01 | 0x08, 0, 7, 0, 0, 0]) + tb + b"\xff" + g)


if __name__ == "__main__":
    targets = sys.argv[1:] or ["safetensors", "gguf", "cache", "json", "wordpiece", "graph", "bpe"]
    for t in targets:
        globals()[t + "_seeds"]()
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(os.path.join(HERE, "corpus")) for f in fs)
    print("corpus: %d bytes" % total)
