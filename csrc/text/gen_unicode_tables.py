#!/usr/bin/env python3
"""Generate csrc/text/unicode_tables.c: the per-code-point data BERT
normalisation and pre-tokenisation need.

    python csrc/text/gen_unicode_tables.py [--source hf|unicodedata] [--out PATH]

For every code point except the surrogates it computes

  DROP   clean_text removes it (NUL, U+FFFD, "other" categories Cc/Cf/Cn/Co
         except \\t \\n \\r),
  WS     clean_text maps it to ' ' (\\t \\n \\r and White_Space),
  PWS    the BERT pre-tokenizer splits on it (White_Space),
  PUNCT  the BERT pre-tokenizer isolates it (ASCII punctuation or P*),
  STRIP  strip_accents: NFD, then drop non-spacing marks (Mn) -> a string,
  LOWER  lowercase: the full per-character lowercase mapping -> a string,
  LETTER \\p{L} of the byte-level BPE pre-tokenizer regexes (csrc/text/bpe.c),
  NUMBER \\p{N} of the same regexes.
(\\s of those regexes is PWS: the generator checks that Oniguruma's \\s, which
HF's Split/ByteLevel use, is the same set.)

Two sources:
  unicodedata  Python's own Unicode database (unicodedata.unidata_version)
               and str.lower(), i.e. the definitions written out above;
  hf           (default) the behaviour of the installed Hugging Face
               `tokenizers` itself, probed one code point at a time through
               normalizers.BertNormalizer and pre_tokenizers.BertPreTokenizer.
               HF's Rust code mixes several Unicode versions (the
               unicode_categories crate, unicode-normalization-alignments and
               Rust std's to_lowercase / White_Space), so probing it is the
               only way to be identical for every code point. LETTER and
               NUMBER are probed in one call each through HF's Oniguruma
               regex (pre_tokenizers.Split(Regex(r"\\p{L}"))), whose Unicode
               version is newer than Python 3.11's.
With --source hf the script also computes the unicodedata answer and prints
how many code points differ per property (recorded in the generated file's
header), so the difference is measured, not guessed.

Tables are compact: the four flag bits live in a two-level table (256-entry
blocks, deduplicated); the STRIP and LOWER string mappings are sorted
(code point, offset, length) arrays over a shared code-point pool, looked up
by binary search only for code points whose flag byte says they map.
"""
import argparse
import sys
import unicodedata

F_DROP, F_WS, F_PWS, F_PUNCT, F_STRIP, F_LOWER, F_LETTER, F_NUMBER = 1, 2, 4, 8, 16, 32, 64, 128
MAXCP = 0x110000


def is_surrogate(cp):
    return 0xD800 <= cp <= 0xDFFF


def hangul_nfd(cp):
    s = cp - 0xAC00
    lead, vowel, trail = 0x1100 + s // 588, 0x1161 + (s % 588) // 28, s % 28
    return chr(lead) + chr(vowel) + (chr(0x11A7 + trail) if trail else "")


def props_unicodedata(cp):
    c = chr(cp)
    cat = unicodedata.category(c)
    # White_Space = str.isspace() minus U+001C..U+001F (bidi separators).
    ws = c.isspace() and not 0x1C <= cp <= 0x1F
    drop = (cp == 0 or cp == 0xFFFD or (cat in ("Cc", "Cf", "Cn", "Co") and c not in "\t\n\r"))
    flags = 0
    if drop:
        flags |= F_DROP
    elif ws:
        flags |= F_WS
    if ws:
        flags |= F_PWS
    if (cp < 128 and c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") or cat.startswith("P"):
        flags |= F_PUNCT
    if cat.startswith("L"):
        flags |= F_LETTER
    if cat.startswith("N"):
        flags |= F_NUMBER
    strip = "".join(x for x in unicodedata.normalize("NFD", c) if unicodedata.category(x) != "Mn")
    lower = c.lower()
    return flags, strip, lower


def make_hf_prober():
    from tokenizers import Regex, normalizers, pre_tokenizers

    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=True, lowercase=False)
    lower = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False,
                                       strip_accents=False, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    regex_sets = {}
    cps = [cp for cp in range(MAXCP) if not is_surrogate(cp)]
    everything = "".join(chr(cp) for cp in cps)
    for bit, pat in ((F_LETTER, r"\p{L}"), (F_NUMBER, r"\p{N}"), (F_PWS, r"\s")):
        # "removed" keeps the non-matching runs: the matches are the rest
        split = pre_tokenizers.Split(Regex(pat), "removed")
        kept = set()
        for _, (a, b) in split.pre_tokenize_str(everything):
            kept.update(range(a, b))
        regex_sets[bit] = {cps[i] for i in range(len(cps)) if i not in kept}

    def probe(cp):
        c = chr(cp)
        flags = 0
        cl = clean.normalize_str(c)
        if cl == "":
            flags |= F_DROP
        elif cl == " " and c != " ":
            flags |= F_WS
        elif c == " ":
            flags |= F_WS
        elif cl != c:
            raise RuntimeError("clean_text maps U+%04X to %r" % (cp, cl))
        pieces = [p for p, _ in pre.pre_tokenize_str("a" + c + "b")]
        if pieces == ["a", "b"]:
            flags |= F_PWS
        elif pieces == ["a", c, "b"]:
            flags |= F_PUNCT
        elif pieces != ["a" + c + "b"]:
            raise RuntimeError("pre-tokenizer splits U+%04X as %r" % (cp, pieces))
        if bool(flags & F_PWS) != (cp in regex_sets[F_PWS]):
            raise RuntimeError("U+%04X: Oniguruma \\s and the BERT whitespace differ" % cp)
        if cp in regex_sets[F_LETTER]:
            flags |= F_LETTER
        if cp in regex_sets[F_NUMBER]:
            flags |= F_NUMBER
        return flags, strip.normalize_str(c), lower.normalize_str(c)

    return probe


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=("hf", "unicodedata"), default="hf")
    ap.add_argument("--out", default="csrc/text/unicode_tables.c")
    args = ap.parse_args()

    if args.source == "hf":
        import tokenizers
        probe = make_hf_prober()
        source_desc = "Hugging Face tokenizers %s (probed)" % tokenizers.__version__
    else:
        probe = props_unicodedata
        source_desc = "Python unicodedata %s" % unicodedata.unidata_version

    flags = bytearray(MAXCP)
    strip_map = {}
    lower_map = {}
    diffs = {"DROP": 0, "WS": 0, "PWS": 0, "PUNCT": 0, "STRIP": 0, "LOWER": 0, "LETTER": 0,
             "NUMBER": 0}
    diff_examples = {k: [] for k in diffs}
    for cp in range(MAXCP):
        if is_surrogate(cp):
            continue
        f, s, lo = probe(cp)
        c = chr(cp)
        if s != c:
            f |= F_STRIP
            strip_map[cp] = s
        if lo != c:
            f |= F_LOWER
            lower_map[cp] = lo
        flags[cp] = f
        if args.source == "hf":
            uf, us, ul = props_unicodedata(cp)
            for name, bit in (("DROP", F_DROP), ("WS", F_WS), ("PWS", F_PWS), ("PUNCT", F_PUNCT),
                              ("LETTER", F_LETTER), ("NUMBER", F_NUMBER)):
                if (uf & bit) != (f & bit):
                    diffs[name] += 1
                    if len(diff_examples[name]) < 8:
                        diff_examples[name].append(cp)
            for name, a, b in (("STRIP", us, s), ("LOWER", ul, lo)):
                if a != b:
                    diffs[name] += 1
                    if len(diff_examples[name]) < 8:
                        diff_examples[name].append(cp)

    # Two-level flag table.
    blocks = []
    block_index = {}
    index = []
    for b in range(MAXCP // 256):
        blk = bytes(flags[b * 256:(b + 1) * 256])
        if blk not in block_index:
            block_index[blk] = len(blocks)
            blocks.append(blk)
        index.append(block_index[blk])

    pool = []

    def emit_map(m):
        rows = []
        for cp in sorted(m):
            s = m[cp]
            rows.append((cp, len(pool), len(s)))
            pool.extend(ord(x) for x in s)
        return rows

    # Hangul syllables decompose algorithmically (done in C): drop them from
    # the table after checking the source agrees with the algorithm.
    for cp in range(0xAC00, 0xD7A4):
        if strip_map.get(cp) != hangul_nfd(cp):
            raise RuntimeError("U+%04X: strip mapping is not the Hangul algorithm" % cp)
        del strip_map[cp]
    strip_rows = emit_map(strip_map)
    lower_rows = emit_map(lower_map)
    maxlen = max([r[2] for r in strip_rows + lower_rows] + [1])

    out = []
    w = out.append
    w("/*\n * unicode_tables.c — GENERATED by csrc/text/gen_unicode_tables.py; do not edit.\n *")
    w(" * Source: %s." % source_desc)
    w(" * Generator Python: %s, unicodedata %s." % (sys.version.split()[0], unicodedata.unidata_version))
    if args.source == "hf":
        w(" * Code points where the probed behaviour differs from Python's unicodedata")
        w(" * definition (see the generator's docstring):")
        for k, v in diffs.items():
            ex = " ".join("U+%04X" % x for x in diff_examples[k])
            w(" *   %-6s %6d%s" % (k, v, (" e.g. " + ex) if v else ""))
    w(" * Flag blocks: %d unique of %d; STRIP entries %d, LOWER entries %d, pool %d." % (
        len(blocks), len(index), len(strip_rows), len(lower_rows), len(pool)))
    w(" */")
    w('#include "eg_text.h"\n')
    w("const int eg_uni_map_max_len = %d;\n" % maxlen)
    w("static const uint16_t uni_index[%d] = {" % len(index))
    for i in range(0, len(index), 16):
        w("    " + ", ".join(str(x) for x in index[i:i + 16]) + ",")
    w("};\n")
    w("static const uint8_t uni_blocks[%d][256] = {" % len(blocks))
    for blk in blocks:
        w("    {")
        for i in range(0, 256, 32):
            w("        " + ", ".join(str(x) for x in blk[i:i + 32]) + ",")
        w("    },")
    w("};\n")
    w("static const uint32_t uni_pool[%d] = {" % max(len(pool), 1))
    for i in range(0, len(pool), 12):
        w("    " + ", ".join("0x%X" % x for x in pool[i:i + 12]) + ",")
    if not pool:
        w("    0,")
    w("};\n")
    for name, rows in (("strip", strip_rows), ("lower", lower_rows)):
        w("static const eg_uni_map_row uni_%s_rows[%d] = {" % (name, max(len(rows), 1)))
        for cp, off, n in rows:
            w("    {0x%X, %d, %d}," % (cp, off, n))
        if not rows:
            w("    {0, 0, 0},")
        w("};\n")
    w("""unsigned eg_uni_flags(uint32_t cp)
{
    if (cp >= 0x110000u) {
        return 0;
    }
    return uni_blocks[uni_index[cp >> 8]][cp & 0xFFu];
}

static int uni_lookup(const eg_uni_map_row *rows, size_t n, uint32_t cp, uint32_t *out)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (rows[mid].cp < cp) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < n && rows[lo].cp == cp) {
        for (uint32_t i = 0; i < rows[lo].len; i++) {
            out[i] = uni_pool[rows[lo].off + i];
        }
        return (int)rows[lo].len;
    }
    return -1;
}
""")
    w("int eg_uni_strip(uint32_t cp, uint32_t *out)\n{\n"
      "    if (cp >= 0xAC00u && cp <= 0xD7A3u) {\n"
      "        uint32_t s = cp - 0xAC00u, t = s %% 28u;\n"
      "        out[0] = 0x1100u + s / 588u;\n"
      "        out[1] = 0x1161u + (s %% 588u) / 28u;\n"
      "        if (t == 0) {\n"
      "            return 2;\n"
      "        }\n"
      "        out[2] = 0x11A7u + t;\n"
      "        return 3;\n"
      "    }\n"
      "    return uni_lookup(uni_strip_rows, %d, cp, out);\n}\n" % len(strip_rows))
    w("int eg_uni_lower(uint32_t cp, uint32_t *out)\n{\n"
      "    return uni_lookup(uni_lower_rows, %d, cp, out);\n}" % len(lower_rows))
    with open(args.out, "w") as f:
        f.write("\n".join(out) + "\n")
    print("wrote %s: %d blocks, strip %d, lower %d, pool %d, maxlen %d" % (
        args.out, len(blocks), len(strip_rows), len(lower_rows), len(pool), maxlen))
    if args.source == "hf":
        for k, v in diffs.items():
            print("  differs from unicodedata: %-5s %6d %s" % (
                k, v, " ".join("U+%04X" % x for x in diff_examples[k])))


if __name__ == "__main__":
    main()
