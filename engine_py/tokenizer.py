"""BERT WordPiece tokenizer backed by the C core (csrc/text/wordpiece.c).

    tok = WordPieceTokenizer.from_pretrained("path/to/model")
    ids = tok.encode_batch(["Hello world!", "Grüße"])   # list of int32 arrays

The ids are identical to Hugging Face ``tokenizers`` for the same folder
(BertNormalizer + BertPreTokenizer + WordPiece + [CLS] $A [SEP], truncation
keeping the first max_length - 2 pieces); tests/test_tokenizer.py checks this
on thousands of real multilingual texts.

Settings are read from the model folder: ``tokenizer.json`` when present (the
most precise source), otherwise ``vocab.txt`` with ``tokenizer_config.json``
(do_lower_case, strip_accents, tokenize_chinese_chars) and
``special_tokens_map.json``. Nothing is downloaded. The ``truncation`` and
``padding`` sections of tokenizer.json are ignored: the default max_length is
the model's (tokenizer_config.json model_max_length capped by config.json
max_position_embeddings), and results are unpadded arrays.

Divergence from HF, on purpose: HF silently skips truncation when max_length
is smaller than the number of special tokens; here that is a ValueError.
"""
import json
import os

from . import _core
from ._validate import check_int, read_json

__all__ = ["WordPieceTokenizer", "BPETokenizer", "TokenizerFormatError"]


class TokenizerFormatError(ValueError):
    """A model folder's tokenizer files are missing, malformed or unsupported."""


def _read_json(path):
    # TokenizerFormatError naming the file and the line/column of a syntax error
    return read_json(path, "tokenizer file", error=TokenizerFormatError)


def _token_str(value):
    # special_tokens_map.json / tokenizer_config.json hold either "[CLS]" or
    # an AddedToken dict {"content": "[CLS]", ...}.
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class WordPieceTokenizer:
    """A BERT-family WordPiece tokenizer; build it with ``from_pretrained``."""

    def __init__(self, tokens, added, *, unk_token="[UNK]", cls_token="[CLS]",
                 sep_token="[SEP]", pad_token="[PAD]", lowercase=True, strip_accents=None,
                 clean_text=True, handle_chinese_chars=True, max_input_chars_per_word=100,
                 continuing_subword_prefix="##", max_length=None):
        """tokens: list of str (token i has id i). added: list of (str, id)
        tokens matched in the raw text before normalisation (the special
        tokens). strip_accents None follows lowercase, as in HF."""
        self._id_to_token = list(tokens)
        self._vocab = {}
        for i, t in enumerate(self._id_to_token):
            self._vocab[t] = i  # a repeated token: the later id wins, as in HF
        added = [(str(t), int(i)) for t, i in added]
        added_map = dict(added)

        def special_id(name, tok, required=True):
            if tok in added_map:
                return added_map[tok]
            if tok in self._vocab:
                return self._vocab[tok]
            if required:
                raise TokenizerFormatError("the %s token %r is not in the vocabulary" % (name, tok))
            return None

        self.unk_id = special_id("unk", unk_token)
        self.cls_id = special_id("cls", cls_token)
        self.sep_id = special_id("sep", sep_token)
        self.pad_id = special_id("pad", pad_token, required=False)
        self.unk_token, self.cls_token, self.sep_token, self.pad_token = (
            unk_token, cls_token, sep_token, pad_token)
        self.do_lower_case = bool(lowercase)
        self.strip_accents = bool(lowercase if strip_accents is None else strip_accents)
        self.clean_text = bool(clean_text)
        self.handle_chinese_chars = bool(handle_chinese_chars)
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.continuing_subword_prefix = continuing_subword_prefix
        self.max_length = max_length
        for t, i in added:
            if i >= len(self._id_to_token):
                raise TokenizerFormatError("added token %r has id %d outside the vocabulary of %d"
                                           % (t, i, len(self._id_to_token)))
        self._wp = _core.WordPiece(
            self._id_to_token, added, self.unk_id, self.cls_id, self.sep_id,
            self.clean_text, self.handle_chinese_chars, self.strip_accents, self.do_lower_case,
            self.max_input_chars_per_word, continuing_subword_prefix)

    # ------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, model_dir):
        """Load from a local model folder (tokenizer.json, or vocab.txt +
        tokenizer_config.json + special_tokens_map.json)."""
        model_dir = os.fspath(model_dir)
        if not os.path.isdir(model_dir):
            raise FileNotFoundError("model folder %r does not exist or is not a directory" % model_dir)
        try:
            tj = os.path.join(model_dir, "tokenizer.json")
            tc_path = os.path.join(model_dir, "tokenizer_config.json")
            tc = _read_json(tc_path) if os.path.isfile(tc_path) else {}
            if not isinstance(tc, dict):
                raise TokenizerFormatError("%s must hold a JSON object" % tc_path)
            max_length = cls._model_max_length(model_dir, tc)
            if os.path.isfile(tj):
                return cls._from_tokenizer_json(tj, max_length)
            return cls._from_vocab_txt(model_dir, tc, max_length)
        except TokenizerFormatError:
            raise
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            # a field of the wrong JSON type or shape somewhere in the files
            # (found by the property tests in tests/test_robustness.py), or
            # settings the core refuses (special ids outside the vocabulary)
            raise TokenizerFormatError("%s: malformed or unsupported tokenizer files (%s: %s)"
                                       % (model_dir, type(exc).__name__, exc)) from exc

    @staticmethod
    def _model_max_length(model_dir, tc):
        ml = tc.get("model_max_length")
        if not isinstance(ml, int) or isinstance(ml, bool) or ml <= 0 or ml > 1_000_000:
            ml = None  # transformers writes a huge sentinel when unknown
        cfg_path = os.path.join(model_dir, "config.json")
        if os.path.isfile(cfg_path):
            cfg = _read_json(cfg_path)
            mpe = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
            if isinstance(mpe, int) and not isinstance(mpe, bool) and mpe > 0:
                ml = mpe if ml is None else min(ml, mpe)
        return ml

    @classmethod
    def _from_tokenizer_json(cls, path, max_length):
        d = _read_json(path)
        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise TokenizerFormatError("%s has no 'model' object" % path)
        model = d["model"]
        mtype = model.get("type")
        if mtype != "WordPiece":
            raise TokenizerFormatError(
                "%s: unsupported tokenizer model type %r (only WordPiece, the BERT family, is "
                "supported)" % (path, mtype))
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise TokenizerFormatError("%s: model.vocab must be a non-empty object" % path)
        n = len(vocab)
        tokens = [None] * n
        for t, i in vocab.items():
            if not isinstance(i, int) or not 0 <= i < n or tokens[i] is not None:
                raise TokenizerFormatError("%s: vocabulary ids must be 0..%d, each once (token %r "
                                           "has id %r)" % (path, n - 1, t, i))
            tokens[i] = t
        norm = d.get("normalizer")
        if not isinstance(norm, dict) or norm.get("type") != "BertNormalizer":
            raise TokenizerFormatError("%s: unsupported normalizer %r (BertNormalizer expected)"
                                       % (path, norm if not isinstance(norm, dict) else norm.get("type")))
        pre = d.get("pre_tokenizer")
        if not isinstance(pre, dict) or pre.get("type") != "BertPreTokenizer":
            raise TokenizerFormatError("%s: unsupported pre_tokenizer %r (BertPreTokenizer expected)"
                                       % (path, pre if not isinstance(pre, dict) else pre.get("type")))
        cls_tok, sep_tok = cls._read_post_processor(path, d.get("post_processor"))
        added = []
        for a in d.get("added_tokens") or []:
            if not isinstance(a, dict) or not isinstance(a.get("content"), str) or not isinstance(a.get("id"), int):
                raise TokenizerFormatError("%s: malformed added_tokens entry %r" % (path, a))
            if a.get("normalized", False) or a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
                raise TokenizerFormatError(
                    "%s: added token %r uses normalized/lstrip/rstrip/single_word, which this "
                    "tokenizer does not support" % (path, a["content"]))
            added.append((a["content"], a["id"]))
        unk = model.get("unk_token", "[UNK]")
        pad = "[PAD]"
        padding = d.get("padding")
        if isinstance(padding, dict) and isinstance(padding.get("pad_token"), str):
            pad = padding["pad_token"]
        return cls(
            tokens, added, unk_token=unk, cls_token=cls_tok, sep_token=sep_tok, pad_token=pad,
            lowercase=bool(norm.get("lowercase", True)), strip_accents=norm.get("strip_accents"),
            clean_text=bool(norm.get("clean_text", True)),
            handle_chinese_chars=bool(norm.get("handle_chinese_chars", True)),
            max_input_chars_per_word=int(model.get("max_input_chars_per_word", 100)),
            continuing_subword_prefix=model.get("continuing_subword_prefix", "##"),
            max_length=max_length)

    @staticmethod
    def _read_post_processor(path, pp):
        if pp is None:
            raise TokenizerFormatError("%s: no post_processor ([CLS] $A [SEP] expected)" % path)
        ptype = pp.get("type") if isinstance(pp, dict) else None
        if ptype == "BertProcessing":
            return pp["cls"][0], pp["sep"][0]
        if ptype == "TemplateProcessing":
            single = pp.get("single")
            ok = (isinstance(single, list) and len(single) == 3
                  and "SpecialToken" in single[0] and "Sequence" in single[1]
                  and "SpecialToken" in single[2])
            if ok:
                return single[0]["SpecialToken"]["id"], single[2]["SpecialToken"]["id"]
        raise TokenizerFormatError("%s: unsupported post_processor %r ([CLS] $A [SEP] expected)"
                                   % (path, ptype))

    @classmethod
    def _from_vocab_txt(cls, model_dir, tc, max_length):
        vpath = os.path.join(model_dir, "vocab.txt")
        if not os.path.isfile(vpath):
            raise TokenizerFormatError(
                "model folder %r has neither tokenizer.json nor vocab.txt" % model_dir)
        with open(vpath, "r", encoding="utf-8") as f:
            tokens = [line.rstrip("\r\n").rstrip() for line in f]
        if not tokens:
            raise TokenizerFormatError("%s is empty" % vpath)
        stm_path = os.path.join(model_dir, "special_tokens_map.json")
        stm = _read_json(stm_path) if os.path.isfile(stm_path) else {}
        names = {}
        for key, default in (("unk_token", "[UNK]"), ("cls_token", "[CLS]"), ("sep_token", "[SEP]"),
                             ("pad_token", "[PAD]"), ("mask_token", "[MASK]")):
            names[key] = _token_str(stm.get(key)) or _token_str(tc.get(key)) or default
        vocab = {t: i for i, t in enumerate(tokens)}
        added = [(t, vocab[t]) for t in dict.fromkeys(names.values()) if t in vocab]
        lower = tc.get("do_lower_case", True)
        return cls(tokens, added, unk_token=names["unk_token"], cls_token=names["cls_token"],
                   sep_token=names["sep_token"], pad_token=names["pad_token"],
                   lowercase=bool(lower), strip_accents=tc.get("strip_accents"),
                   handle_chinese_chars=bool(tc.get("tokenize_chinese_chars", True)),
                   max_length=max_length)

    # ------------------------------------------------------------ encoding
    @property
    def vocab_size(self):
        return len(self._id_to_token)

    def encode_batch(self, texts, max_length=None, add_special_tokens=True, truncation=True):
        """Token ids of each text, a list of int32 arrays.

        max_length None uses the model's (``self.max_length``); truncation
        keeps the first max_length - 2 pieces and then adds [CLS]/[SEP]
        (max_length must be >= 2 with special tokens, >= 1 without).
        truncation=False never truncates."""
        if not isinstance(texts, (list, tuple)):
            raise TypeError("texts must be a list of str, got %s" % type(texts).__name__)
        if not texts:
            return []
        limit = 0
        if truncation:
            ml = self.max_length if max_length is None else max_length
            if ml is not None:
                ml = check_int(ml, "max_length")
                need = 2 if add_special_tokens else 1
                if ml < need:
                    raise ValueError("max_length must be >= %d%s, got %d" % (
                        need, " (room for [CLS] and [SEP])" if add_special_tokens else "", ml))
                limit = ml
        return self._wp.encode_batch(texts, limit, bool(add_special_tokens))

    def encode(self, text, max_length=None, add_special_tokens=True, truncation=True):
        """Token ids of one text (an int32 array)."""
        if not isinstance(text, str):
            raise TypeError("text must be str, got %s" % type(text).__name__)
        return self.encode_batch([text], max_length, add_special_tokens, truncation)[0]

    __call__ = encode_batch

    def decode_tokens(self, ids):
        """The token string of each id."""
        out = []
        n = len(self._id_to_token)
        for k, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < n:
                raise ValueError("ids[%d] = %d is outside the vocabulary of %d tokens" % (k, i, n))
            out.append(self._id_to_token[i])
        return out

    def token_to_id(self, token):
        """Id of a vocabulary token, or None."""
        i = self._wp.lookup(token)
        return None if i < 0 else i

    def __repr__(self):
        return ("WordPieceTokenizer(vocab_size=%d, do_lower_case=%s, strip_accents=%s, "
                "max_length=%s)" % (self.vocab_size, self.do_lower_case, self.strip_accents,
                                    self.max_length))


# --------------------------------------------------------------------- BPE

# The split regexes HF tokenizer.json files use for the Llama-3 and Qwen2
# pre-tokenizers (Split(Regex, behavior=Isolated) + ByteLevel(use_regex=False)).
_LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# GGUF tokenizer.ggml.token_type values
_TOK_NORMAL, _TOK_CONTROL, _TOK_USER_DEFINED, _TOK_BYTE = 1, 3, 4, 6


def _gpt2_byte_chars():
    keep = [c for c in range(256) if 33 <= c <= 126 or 161 <= c <= 172 or 174 <= c <= 255]
    out, n = {}, 0
    for c in range(256):
        if c in keep:
            out[c] = chr(c)
        else:
            out[c] = chr(256 + n)
            n += 1
    return out


class BPETokenizer:
    """Byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM2) or SentencePiece-style
    BPE (Llama-2) backed by the C core (csrc/text/bpe.c); ids identical to
    Hugging Face ``tokenizers`` and llama.cpp (docs/TOKENIZERS.md).

        tok = BPETokenizer.from_gguf("model.gguf")
        ids = tok.encode_batch(["Hello world!"])   # list of int32 arrays

    Build it with :meth:`from_gguf` (tokenizer.ggml.* metadata, read by the
    C core) or :meth:`from_tokenizer_json`, or directly from a vocabulary:

    tokens: list of str (token i has id i, all distinct); merges: list of
    "LEFT RIGHT" str (byte-level, rank = position); types: GGUF token types
    (1 normal, 2 unknown, 3 control, 4 user-defined, 6 byte, ...) or None;
    UNKNOWN, CONTROL and USER_DEFINED tokens are matched as whole strings in
    the text first (llama.cpp's special tokens, HF's added tokens);
    scores: per-token float (SentencePiece, required); kind "bytelevel" or
    "spm"; pre: "gpt-2", "llama-bpe", "qwen2" or "smollm" (byte-level).
    Byte-level: a byte whose character is not a token becomes unk_token_id
    when one is given (HF with model.unk_token), else it is dropped (HF
    without unk_token; llama.cpp, so GGUF files never use unk for bytes).
    ``fields`` names the vocabulary and merges in error messages.

    Texts are Python str; a str holding a lone surrogate (no UTF-8 form)
    raises ValueError naming its index — HF's tokenizers refuse such a str
    too. ``normalizer="NFC"`` (Qwen2's tokenizer.json) is applied in Python
    with ``unicodedata`` before the core sees the text."""

    def __init__(self, tokens, merges=(), *, types=None, scores=None, kind="bytelevel",
                 pre="gpt-2", bos_token_id=None, eos_token_id=None, unk_token_id=None,
                 pad_token_id=None, add_bos=False, add_eos=False, add_space_prefix=None, ignore_merges=False,
                 normalizer=None, max_length=None, source="tokenizer",
                 fields=("tokenizer.ggml.tokens", "tokenizer.ggml.merges")):
        if kind not in ("bytelevel", "spm"):
            raise ValueError("kind must be 'bytelevel' or 'spm', got %r" % (kind,))
        if normalizer not in (None, "NFC"):
            raise ValueError("normalizer must be None or 'NFC', got %r" % (normalizer,))
        if add_space_prefix is None:
            add_space_prefix = kind == "spm"
        self._bpe = _core.BPE(
            kind, pre if kind == "bytelevel" else "none", list(tokens),
            None if types is None else list(types), None if scores is None else list(scores),
            list(merges), -1 if bos_token_id is None else bos_token_id,
            -1 if eos_token_id is None else eos_token_id,
            -1 if unk_token_id is None else unk_token_id, bool(add_bos), bool(add_eos),
            bool(add_space_prefix), bool(ignore_merges), str(source), fields[0], fields[1],
            kind == "bytelevel" and unk_token_id is not None,
            -1 if pad_token_id is None else pad_token_id)
        self._init_common(normalizer, max_length, source)
        self._origin = None  # built from arrays: not picklable

    def _init_common(self, normalizer, max_length, source):
        self._config = self._bpe.config
        self._tokens = None  # filled on first decode_tokens
        self._types = None
        self.normalizer = normalizer
        self.max_length = max_length
        self.source = source

    @classmethod
    def _wrap(cls, core, normalizer, max_length, source):
        self = cls.__new__(cls)
        self._bpe = core
        self._init_common(normalizer, max_length, source)
        return self

    def __reduce__(self):
        # pickles as what it was loaded from (a file), never as the C object
        if self._origin is None:
            raise TypeError("a BPETokenizer built from arrays cannot be pickled; build it with "
                            "from_gguf or from_tokenizer_json")
        return self._origin

    # ------------------------------------------------------------- loading
    @classmethod
    def from_gguf(cls, path_or_gguf, max_length=None):
        """The tokenizer of a GGUF file (a path or an engine_py.io.GGUFFile),
        built by the C core from its tokenizer.ggml.* metadata: model "gpt2"
        (byte-level; pre gpt-2, llama-bpe, qwen2, smollm and their llama.cpp
        aliases) or "llama" (SentencePiece BPE). Texts are normalised to
        NFC for pre "qwen2", as Qwen2's tokenizer.json does (llama.cpp does
        not; the C core alone does not either). A bad or unsupported field
        raises TokenizerFormatError naming the file and the key; OSError when
        the file cannot be read."""
        path = getattr(path_or_gguf, "path", path_or_gguf)
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError("GGUF file %r does not exist" % path)
        try:
            core = _core.bpe_from_gguf(path)
        except OSError:
            raise
        except ValueError as exc:
            raise TokenizerFormatError(str(exc)) from None
        # Qwen2's tokenizer.json normalises to NFC; the GGUF does not say so
        # (llama.cpp skips it), but the model was trained on NFC text
        normalizer = "NFC" if core.config["pre"] == "qwen2" else None
        tok = cls._wrap(core, normalizer, max_length, path)
        tok._origin = (BPETokenizer.from_gguf, (os.path.abspath(path), max_length))
        return tok

    @classmethod
    def from_tokenizer_json(cls, path, max_length=None):
        """The tokenizer of a Hugging Face tokenizer.json (a file, or a
        folder holding one) whose model is BPE with a byte-level
        pre-tokenizer: ByteLevel (GPT-2), Sequence[Digits(individual_digits),
        ByteLevel] (SmolLM2), Sequence[Split(Llama-3 or Qwen2 regex),
        ByteLevel]. Anything else raises TokenizerFormatError naming the file
        and the field."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise FileNotFoundError("tokenizer file %r does not exist" % path)
        d = _read_json(path)
        try:
            kw = cls._parse_tokenizer_json(path, d)
        except TokenizerFormatError:
            raise
        except (TypeError, KeyError, IndexError, AttributeError, ValueError) as exc:
            raise TokenizerFormatError("%s: malformed or unsupported tokenizer.json (%s: %s)"
                                       % (path, type(exc).__name__, exc)) from exc
        try:
            tok = cls(max_length=max_length, source=path, **kw)
        except ValueError as exc:
            raise TokenizerFormatError(str(exc)) from None
        tok._origin = (BPETokenizer.from_tokenizer_json, (os.path.abspath(path), max_length))
        return tok

    @staticmethod
    def _parse_tokenizer_json(path, d):
        def bad(field, msg):
            return TokenizerFormatError("%s: %s: %s" % (path, field, msg))

        if not isinstance(d, dict) or not isinstance(d.get("model"), dict):
            raise bad("model", "missing (a tokenizer.json object with a 'model' expected)")
        model = d["model"]
        if model.get("type") != "BPE":
            raise bad("model.type", "%r is not supported here (BPE expected)" % (model.get("type"),))
        for key in ("dropout", "continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key) not in (None, ""):
                raise bad("model." + key, "%r is not supported" % (model.get(key),))
        if model.get("byte_fallback"):
            raise bad("model.byte_fallback", "true is not supported with a byte-level "
                      "pre-tokenizer")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not vocab:
            raise bad("model.vocab", "must be a non-empty object")
        added = d.get("added_tokens") or []
        if not isinstance(added, list):
            raise bad("added_tokens", "must be a list")
        n = len(vocab)
        for a in added:
            if not isinstance(a, dict) or not isinstance(a.get("id"), int) or isinstance(a.get("id"), bool):
                raise bad("added_tokens", "malformed entry %r" % (a,))
            n = max(n, a["id"] + 1)
        tokens = [None] * n
        types = [_TOK_NORMAL] * n
        for t, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n or tokens[i] is not None:
                raise bad("model.vocab", "ids must be 0..%d, each once (token %r has id %r)"
                          % (n - 1, t, i))
            tokens[i] = t
        for a in added:
            c, i = a.get("content"), a["id"]
            if not isinstance(c, str) or not c:
                raise bad("added_tokens", "entry %r has no content" % (a,))
            if a.get("lstrip") or a.get("rstrip") or a.get("single_word"):
                raise bad("added_tokens", "%r uses lstrip/rstrip/single_word, which is not "
                          "supported" % c)
            if not 0 <= i < n:
                raise bad("added_tokens", "%r has id %d" % (c, i))
            if tokens[i] is not None and tokens[i] != c:
                raise bad("added_tokens", "%r has id %d, which the vocabulary gives to %r"
                          % (c, i, tokens[i]))
            tokens[i] = c
            types[i] = _TOK_CONTROL if a.get("special") else _TOK_USER_DEFINED
        missing = [i for i, t in enumerate(tokens) if t is None]
        if missing:
            raise bad("model.vocab", "no token has id %d" % missing[0])
        merges = []
        for k, m in enumerate(model.get("merges") or []):
            if isinstance(m, str):
                merges.append(m)
            elif isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m):
                merges.append(m[0] + " " + m[1])
            else:
                raise bad("model.merges[%d]" % k, "%r is not 'a b' or ['a', 'b']" % (m,))
        pre = BPETokenizer._pre_of(path, d.get("pre_tokenizer"))
        norm = d.get("normalizer")
        normalizer = None
        if norm is not None:
            if isinstance(norm, dict) and norm.get("type") == "NFC":
                normalizer = "NFC"
            elif not (isinstance(norm, dict) and norm.get("type") == "Sequence"
                      and not norm.get("normalizers")):
                raise bad("normalizer", "%r is not supported (none or NFC)" % (
                    norm.get("type") if isinstance(norm, dict) else norm,))
        bos, eos = BPETokenizer._specials_of(path, d.get("post_processor"), tokens)
        pad_id = None
        padding = d.get("padding")
        if isinstance(padding, dict) and isinstance(padding.get("pad_id"), int):
            pad_id = padding["pad_id"]
        unk = model.get("unk_token")
        unk_id = None
        if unk is not None:
            unk_id = vocab.get(unk)
            if unk_id is None:
                raise bad("model.unk_token", "%r is not in the vocabulary" % (unk,))
        return dict(fields=("model.vocab", "model.merges"),
                    tokens=tokens, merges=merges, types=types, kind="bytelevel", pre=pre,
                    bos_token_id=bos, eos_token_id=eos, unk_token_id=unk_id, pad_token_id=pad_id,
                    add_bos=bos is not None, add_eos=eos is not None,
                    ignore_merges=bool(model.get("ignore_merges", False)), normalizer=normalizer)

    @staticmethod
    def _pre_of(path, pre):
        def typ(x):
            return x.get("type") if isinstance(x, dict) else None

        def bytelevel(x, use_regex):
            return (typ(x) == "ByteLevel" and bool(x.get("use_regex", True)) == use_regex
                    and not x.get("add_prefix_space", False))

        if bytelevel(pre, True):
            return "gpt-2"
        if typ(pre) == "Sequence":
            seq = pre.get("pretokenizers") or []
            if (len(seq) == 2 and typ(seq[0]) == "Digits" and seq[0].get("individual_digits")
                    and bytelevel(seq[1], True)):
                return "smollm"
            if (len(seq) == 2 and typ(seq[0]) == "Split" and bytelevel(seq[1], False)
                    and seq[0].get("behavior") == "Isolated" and not seq[0].get("invert")):
                pat = (seq[0].get("pattern") or {}).get("Regex")
                if pat == _LLAMA3_REGEX:
                    return "llama-bpe"
                if pat == _QWEN2_REGEX:
                    return "qwen2"
        raise TokenizerFormatError(
            "%s: pre_tokenizer: %s is not supported (ByteLevel, Digits(individual_digits) + "
            "ByteLevel, or the Llama-3 / Qwen2 Split regex + ByteLevel)"
            % (path, json.dumps(pre)[:300]))

    @staticmethod
    def _specials_of(path, pp, tokens):
        """(bos id, eos id) the post-processor adds around one sequence."""
        if pp is None or (isinstance(pp, dict) and pp.get("type") == "ByteLevel"):
            return None, None
        procs = [pp]
        if isinstance(pp, dict) and pp.get("type") == "Sequence":
            procs = pp.get("processors") or []
        bos = eos = None
        for p in procs:
            t = p.get("type") if isinstance(p, dict) else None
            if t == "ByteLevel":
                continue
            if t != "TemplateProcessing":
                raise TokenizerFormatError("%s: post_processor: %r is not supported" % (path, t))
            single = p.get("single") or []
            kinds = ["A" if "Sequence" in x else "S" for x in single]
            specials = p.get("special_tokens") or {}

            def sid(x):
                name = x["SpecialToken"]["id"]
                ids = specials.get(name, {}).get("ids") or []
                if len(ids) != 1:
                    raise TokenizerFormatError("%s: post_processor: special token %r must map "
                                               "to one id" % (path, name))
                return ids[0]

            if kinds == ["A"]:
                continue
            if kinds == ["S", "A"]:
                bos = sid(single[0])
            elif kinds == ["A", "S"]:
                eos = sid(single[1])
            elif kinds == ["S", "A", "S"]:
                bos, eos = sid(single[0]), sid(single[2])
            else:
                raise TokenizerFormatError("%s: post_processor: template %r is not supported "
                                           "(BOS? $A EOS?)" % (path, kinds))
        return bos, eos

    # ------------------------------------------------------------ encoding
    @property
    def vocab_size(self):
        return self._config["vocab_size"]

    @property
    def bos_token_id(self):
        i = self._config["bos_id"]
        return None if i < 0 else i

    @property
    def eos_token_id(self):
        i = self._config["eos_id"]
        return None if i < 0 else i

    @property
    def unk_token_id(self):
        i = self._config["unk_id"]
        return None if i < 0 else i

    @property
    def pad_token_id(self):
        """tokenizer.ggml.padding_token_id / tokenizer.json padding.pad_id, or
        None (never emitted by encode: results are unpadded)."""
        i = self._config["pad_id"]
        return None if i < 0 else i

    @property
    def add_bos(self):
        return self._config["add_bos"]

    @property
    def add_eos(self):
        return self._config["add_eos"]

    @property
    def kind(self):
        return self._config["kind"]

    @property
    def pre_tokenizer(self):
        return self._config["pre"]

    def encode_batch(self, texts, max_length=None, add_special_tokens=True, truncation=True):
        """Token ids of each text, a list of int32 arrays.

        add_special_tokens adds BOS / EOS as the model says (``add_bos``,
        ``add_eos``). max_length None uses ``self.max_length`` (None: no
        limit); truncation keeps the first pieces and then BOS/EOS, so the
        result has at most max_length ids (it must leave room for BOS/EOS).
        truncation=False never truncates."""
        if not isinstance(texts, (list, tuple)):
            raise TypeError("texts must be a list of str, got %s" % type(texts).__name__)
        if not texts:
            return []
        limit = 0
        if truncation:
            ml = self.max_length if max_length is None else max_length
            if ml is not None:
                ml = check_int(ml, "max_length")
                n_spec = (self.add_bos + self.add_eos) if add_special_tokens else 0
                need = max(1, n_spec)
                if ml < need:
                    raise ValueError("max_length must be >= %d%s, got %d" % (
                        need, " (room for BOS/EOS)" if n_spec else "", ml))
                limit = ml
        if self.normalizer == "NFC":
            import unicodedata
            texts = [unicodedata.normalize("NFC", t) if isinstance(t, str) else t for t in texts]
        return self._bpe.encode_batch(texts, limit, bool(add_special_tokens))

    def encode(self, text, max_length=None, add_special_tokens=True, truncation=True):
        """Token ids of one text (an int32 array)."""
        if not isinstance(text, str):
            raise TypeError("text must be str, got %s" % type(text).__name__)
        return self.encode_batch([text], max_length, add_special_tokens, truncation)[0]

    __call__ = encode_batch

    def _vocab(self):
        if self._tokens is None:
            self._tokens, self._types = self._bpe.vocab()
        return self._tokens, self._types

    def decode_tokens(self, ids):
        """The token string of each id (as stored: byte-level tokens in
        GPT-2's byte-to-unicode alphabet, SentencePiece ones with U+2581)."""
        tokens, _ = self._vocab()
        out = []
        n = len(tokens)
        for k, i in enumerate(ids):
            i = int(i)
            if not 0 <= i < n:
                raise ValueError("ids[%d] = %d is outside the vocabulary of %d tokens" % (k, i, n))
            out.append(tokens[i])
        return out

    def decode(self, ids, skip_special_tokens=False):
        """The text of ids (invalid UTF-8 from partial byte sequences
        becomes U+FFFD, as HF's decoders do)."""
        tokens, types = self._vocab()
        pieces = self.decode_tokens(ids)
        buf = bytearray()
        if self.kind == "bytelevel":
            inv = {v: k for k, v in _gpt2_byte_chars().items()}
            for i, t in zip(ids, pieces):
                if types[int(i)] in (_TOK_CONTROL, _TOK_USER_DEFINED):
                    if not (skip_special_tokens and types[int(i)] == _TOK_CONTROL):
                        buf += t.encode("utf-8")
                    continue
                for ch in t:
                    b = inv.get(ch)
                    buf += bytes([b]) if b is not None else ch.encode("utf-8")
            return buf.decode("utf-8", errors="replace")
        for i, t in zip(ids, pieces):
            ty = types[int(i)]
            if ty == _TOK_BYTE and len(t) == 6 and t.startswith("<0x"):
                buf.append(int(t[3:5], 16))
            elif ty == _TOK_CONTROL:
                if not skip_special_tokens:
                    buf += t.encode("utf-8")
            else:
                buf += t.replace("\u2581", " ").encode("utf-8")
        text = buf.decode("utf-8", errors="replace")
        if self._config["add_space_prefix"] and text.startswith(" "):
            text = text[1:]
        return text

    def token_to_id(self, token):
        """Id of a vocabulary token, or None."""
        i = self._bpe.lookup(token)
        return None if i < 0 else i

    def __repr__(self):
        return ("BPETokenizer(kind=%r, pre_tokenizer=%r, vocab_size=%d, bos_token_id=%s, "
                "eos_token_id=%s, add_bos=%s, add_eos=%s, max_length=%s)" % (
                    self.kind, self.pre_tokenizer, self.vocab_size, self.bos_token_id,
                    self.eos_token_id, self.add_bos, self.add_eos, self.max_length))
