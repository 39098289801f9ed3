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

__all__ = ["WordPieceTokenizer", "TokenizerFormatError"]


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
