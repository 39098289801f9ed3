"""The tiny LLM fixtures (tests/llm_fixtures.py) are what they claim: the
GGUF files written like llama.cpp's converter load in transformers with the
same hidden states as the safetensors folder, and the llama Q/K permutation
is llama.cpp's."""
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")      # transformers needs it to load GGUF files
pytest.importorskip("tokenizers")

import llm_fixtures as F  # noqa: E402


def test_permute_matches_llama_cpp_interleaving():
    # one head of dim 4, rows [a0 a1 b0 b1] (HF rotate-half pairs (a0,b0), (a1,b1))
    w = np.arange(4, dtype=np.float32)[:, None]
    assert F.permute_for_gguf(w, 1)[:, 0].tolist() == [0, 2, 1, 3]
    # K with fewer heads is permuted per KV head
    w = np.arange(8, dtype=np.float32)
    assert F.permute_for_gguf(w, 4, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_fixture_matches_hf_folder(tmp_path, arch):
    m = F.write_tiny_llm(tmp_path, arch, gguf_types=("F32", "F16", "Q8_0"))
    L = m.config["num_hidden_layers"]
    texts = ["hello world", "The quick brown fox jumps over the lazy dog.", [5, 6, 7, 200, 3]]
    layers = list(range(L + 1))
    ref = F.reference_pooled_states(m.hf_dir, texts, layers)
    assert ref.shape == (L + 1, 3, m.config["hidden_size"]) and ref.dtype == np.float32
    # every layer changes the states (the random weights are not negligible)
    assert all(np.abs(ref[i + 1] - ref[i]).max() > 0.1 for i in range(L))
    g = F.reference_pooled_states(m.gguf["F32"], texts, layers)
    np.testing.assert_allclose(g, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    g16 = F.reference_pooled_states(m.gguf["F16"], texts, layers)
    assert np.abs(g16 - ref).max() < 1e-2 * np.abs(ref).max()
    g8 = F.reference_pooled_states(m.gguf["Q8_0"], texts, layers)
    assert np.abs(g8 - ref).max() < 0.1 * np.abs(ref).max()
    # pooling="last" is the last token's state
    last = F.reference_pooled_states(m.hf_dir, texts, [L], pooling="last")
    assert last.shape == (1, 3, m.config["hidden_size"]) and not np.allclose(last, ref[[L]])
    # the two tokenizers agree
    _, th = F._load(m.hf_dir)
    _, tg = F._load(m.gguf["F32"])
    s = "The quick brown fox, caf\u00e9 \u4e2d\u6587 42!"
    assert th(s)["input_ids"] == tg(s)["input_ids"]


def test_kquant_fixture_loads(tmp_path):
    m = F.write_tiny_llm(tmp_path, "qwen2", gguf_types=("Q4_K", "Q6_K"), embd_type="Q8_0",
                         layers=1, **F.KQUANT_SIZES)
    for t, p in m.gguf.items():
        w = F.dequantize_gguf_tensor(p, "blk.0.ffn_down.weight")
        assert w.shape == (256, 512) and abs(w.std() - 1 / np.sqrt(512)) < 0.01
        s = F.reference_pooled_states(p, ["hello world"], [0, 1])
        assert np.isfinite(s).all()
    with pytest.raises(ValueError, match="multiple of 256"):
        F.write_tiny_llm(tmp_path / "bad", "llama", gguf_types=("Q4_K",))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_reads_the_fixture_like_transformers(tmp_path, arch):
    """llama.cpp itself (xllamacpp) loads the GGUF fixture, tokenizes like the
    HF tokenizer and gives the same mean-pooled last state as transformers: the
    file (llama's permuted Q/K rows included) is what llama.cpp expects."""
    xl = pytest.importorskip("xllamacpp")
    m = F.write_tiny_llm(tmp_path, arch, gguf_types=("F32",))
    p = xl.CommonParams()
    p.model.path = m.gguf["F32"]
    p.embedding = True
    p.pooling_type = xl.llama_pooling_type.LLAMA_POOLING_TYPE_MEAN
    p.embd_normalize = -1
    p.n_parallel, p.n_ctx, p.n_batch, p.n_ubatch = 1, 256, 256, 256
    p.cpuparams.n_threads = p.cpuparams_batch.n_threads = 1
    p.verbosity = 0
    server = xl.Server(p)
    try:
        texts = ["hello world", "The quick brown fox jumps over the lazy dog. caf\u00e9 42"]
        r = server.handle_embeddings({"input": texts})
    finally:
        del server
    got = np.array([d["embedding"] for d in sorted(r["data"], key=lambda d: d["index"])], dtype=np.float32)
    L = m.config["num_hidden_layers"]
    ref = F.reference_pooled_states(m.gguf["F32"], texts, [L])[0]
    _, tok = F._load(m.hf_dir)
    assert r["usage"]["prompt_tokens"] == sum(len(tok(t)["input_ids"]) for t in texts)
    # llama.cpp keeps K and V in float16: 1e-3 of the largest value
    assert np.abs(got - ref).max() < 1e-3 * np.abs(ref).max()
