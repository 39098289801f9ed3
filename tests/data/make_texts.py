#!/usr/bin/env python3
"""Build tests/data/texts_multilingual.jsonl.gz, the real-text fixture for the
tokenizer parity test (see tests/data/README.md for provenance).

    python tests/data/make_texts.py            # writes the fixture next to this script

One JSON object per line: {"src": <where it came from>, "text": <str>}.
Sources, each sampled deterministically (by a hash of a stable key, never by
random state):
  debian-short                 Description fields from `apt-cache dumpavail`
                               (only the one-line synopsis: this machine has no
                               Translation-en list holding the long texts)
  changelog                    entries of /usr/share/doc/*/changelog.Debian.gz
                               (real English prose, names with accents)
  mo:<lang>                    translated messages from the gettext catalogs
                               under /usr/share/locale/<lang>/LC_MESSAGES/*.mo
  changelog-concat             a few concatenations of long changelog entries
                               (real text longer than 512 tokens)
  crafted                      hand-written edge cases (accents, combining
                               marks, CJK, emoji/ZWJ, controls, odd
                               whitespace, long words, empty strings, ...)
"""
import gettext
import glob
import gzip
import hashlib
import json
import os
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "texts_multilingual.jsonl.gz")

N_DEBIAN_PACKAGES = 2200
N_CHANGELOG = 1200
MO_LANGS = ["de", "fr", "es", "it", "pt_BR", "nl", "pl", "cs", "sv", "fi", "hu", "ro", "tr",
            "vi", "ru", "uk", "bg", "el", "he", "ar", "fa", "hi", "bn", "ta", "th", "ka",
            "zh_CN", "zh_TW", "ja", "ko", "eo", "ca", "da", "lt", "id"]
PER_LANG = 110
MAX_CHARS = 3000


def key(s):
    return hashlib.sha1(s.encode("utf-8")).hexdigest()


def debian_descriptions():
    out = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True).stdout
    recs = {}
    for block in out.decode("utf-8", "replace").split("\n\n"):
        name, desc, in_desc = None, [], False
        for line in block.split("\n"):
            if line.startswith("Package: "):
                name = line[len("Package: "):].strip()
                in_desc = False
            elif line.startswith("Description: "):
                desc = [line[len("Description: "):]]
                in_desc = True
            elif in_desc and line.startswith(" "):
                body = line[1:]
                desc.append("" if body == "." else body)
            else:
                in_desc = False
        if name and desc and name not in recs:
            recs[name] = desc
    names = sorted(recs, key=key)[:N_DEBIAN_PACKAGES]
    names.sort()
    items = []
    for n in names:
        d = recs[n]
        items.append({"src": "debian-short", "text": d[0]})
        if len(d) > 1:
            items.append({"src": "debian-long", "text": "\n".join(d[1:])[:MAX_CHARS]})
    return items


def changelog_entries():
    entries = []
    for path in sorted(glob.glob("/usr/share/doc/*/changelog.Debian.gz")):
        try:
            with gzip.open(path, "rt", encoding="utf-8") as f:
                text = f.read(200000)
        except (OSError, UnicodeDecodeError):
            continue
        cur = None
        for line in text.split("\n"):
            if line.startswith(" -- "):
                if cur:
                    body = "\n".join(cur).strip()
                    if len(body) >= 20:
                        entries.append(body[:MAX_CHARS])
                cur = None
            elif line and not line[0].isspace() and "urgency=" in line:
                cur = []
            elif cur is not None:
                cur.append(line.strip())
    entries = sorted(set(entries), key=key)
    items = [{"src": "changelog", "text": t} for t in entries[:N_CHANGELOG]]
    longs = [t for t in entries[N_CHANGELOG:] if len(t) > 1500][:40]
    for i in range(0, len(longs) - 3, 4):
        items.append({"src": "changelog-concat", "text": "\n\n".join(longs[i:i + 4])})
    return items


def mo_messages():
    items = []
    for lang in MO_LANGS:
        msgs = set()
        for path in sorted(glob.glob("/usr/share/locale/%s/LC_MESSAGES/*.mo" % lang)):
            try:
                with open(path, "rb") as f:
                    cat = gettext.GNUTranslations(f)._catalog
            except Exception:
                continue
            for k, v in cat.items():
                if k == "" or not isinstance(v, str):
                    continue  # the header entry
                v = v.strip()
                if len(v) >= 2:
                    msgs.add(v[:MAX_CHARS])
        for m in sorted(msgs, key=lambda s: key(lang + "\0" + s))[:PER_LANG]:
            items.append({"src": "mo:" + lang, "text": m})
    return items


def crafted():
    c = [
        "", " ", "\n", "\t\t", "   \n\r\n  ", ".", "!!!", "...?!", "()[]{}<>", "$%&*#@^~`|\\",
        "\u00a0", "a\u00a0b", "a\u2003b\u2009c\u202fd\u205fe\u3000f", "a\u2028b\u2029c", "a\x85b",
        "a\x0bb\x0cc", "a\x1cb\x1dc\x1ed\x1ff", "a\x00b", "a\ufffdb", "a\u200bb\u200cc\u200dd",
        "a\ufeffb", "a\u00adb", "\x07bell\x1b[0m", "tab\tsep\tvalues",
        "café", "cafe\u0301", "naïve résumé", "Ångström", "Crème Brûlée", "ÀÉÎÕÜ àéîõü",
        "Ça va? Où est-il?", "Ønskeøen æble", "Łódź Gdańsk", "Dvořák", "İstanbul İİİ", "ıi Iİ",
        "STRASSE straße ẞ", "ǅungla ǈ ǋ", "ΣΑΣ σας ΌΣΟΣ", "ﬁ ﬂ ﬀ ﬃ", "Ⅻ ⅻ", "ＡＢＣ ａｂｃ ０１２",
        "Ω Å K", "x\u0300\u0301\u0302\u0303y", "\u0301start", "e\u20dd", "a\u0345b",
        "ḍ̇ q̣̇", "ế ệ ử", "Tiếng Việt có dấu", "Ελληνικά: Καλημέρα κόσμε",
        "Русский: Съешь же ещё этих мягких французских булок", "Україна ґ є ї", "Ёлка ёж",
        "中文测试：你好，世界！", "繁體中文：電腦與網路", "日本語のテキスト、カタカナ、ひらがな。",
        "ｶﾀｶﾅ ﾊﾝｶｸ", "한국어 텍스트입니다. 안녕하세요!", "ㄱㄴㄷ ᄀᄁ", "𠀀𠀁𪜀 CJK ext B", "豈 更 車",
        "⺀⻳ radicals", "〇一二三", "中a文b混c合", "Mixed 中文 and English 和 日本語",
        "عربي: مرحبا بالعالم", "עברית: שלום עולם", "فارسی: سلام دنیا", "हिन्दी: नमस्ते दुनिया",
        "বাংলা লেখা", "தமிழ் உரை", "ภาษาไทยไม่มีช่องว่าง", "ქართული ენა", "Հայերեն", "አማርኛ",
        "ລາວ", "မြန်မာ", "ᠮᠣᠩᠭᠣᠯ", "ꦗꦮ", "Ꭰ Ꭱ Ꭲ Cherokee ꭰ",
        "😀", "😀😃😄", "I ❤️ NY", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🏳️‍🌈 flag", "🇫🇷🇩🇪 flags",
        "🥰🦄🧑‍💻", "🫠 🪿 newer emoji", "text😀text", "#️⃣ 1️⃣", "☃ ★ ♠ ♣ ♥ ♦", "© ® ™ ℠",
        "∑∫√∞≠≤≥ ±×÷", "→ ⇒ ↔", "“quotes” ‘single’ «guillemets» „low“", "— – ‒ ‐ - em dash",
        "…", "¿Qué? ¡Hola!", "½ ¼ ¾ ² ³", "€100 £50 ¥1000 ₹ ₿", "§ ¶ † ‡ • ‰", "〈〉《》「」『』【】",
        "、。・ー", "⸮ ⁇ ⁈", "\U000e0001 tag chars \U000e0041", "\ue000 private \uf8ff",
        "\U0010ffff max", "\U0001d565\U0001d166 music", "\U00016fe4 new", "\u0378 unassigned",
        "a" * 100, "a" * 101, "b" * 99 + "é", "é" * 101, "x" * 500, "supercalifragilistic" * 6,
        "aaaa " * 200, "word " * 700, "pneumonoultramicroscopicsilicovolcanoconiosis",
        "http://example.com/path?query=1&b=2#frag", "user@example.org", "C:\\Windows\\System32",
        "snake_case_identifier camelCaseWord PascalCase", "3.14159 1,000,000 1e-9 0x1F",
        "2026-11-24T18:00:00Z", "don't won't it's", "U.S.A. e.g. i.e.",
        "[CLS] [SEP] [MASK] [PAD] [UNK]", "[cls] [Sep] [MASK", "x[MASK]y[SEP]z", "[[MASK]]",
        "##ing ## #", "[UNK][UNK]", "unaffable", "UNAFFABLE", "Unaffable",
        "Ⓐ ⓑ", "𝐀𝐁𝐂 𝒶𝒷𝒸", "ℌ ℍ ℕ", "ǰ ΐ ΰ", "İ̇", "ß ẞ", "Ǆ ǅ ǆ", "ſ ﬅ",
        "\u0130\u0049\u0131\u0069", "\u1e9e\u00df", "\u2126\u212a\u212b",
    ]
    # Combinations of the above: mixed scripts and separators.
    out = list(c)
    for i in range(0, len(c) - 1, 2):
        out.append(c[i] + " " + c[i + 1])
        out.append(c[i] + c[i + 1])
    return [{"src": "crafted", "text": t} for t in out]


def main():
    items = debian_descriptions() + changelog_entries() + mo_messages() + crafted()
    with gzip.GzipFile(OUT, "wb", mtime=0) as f:
        for it in items:
            f.write((json.dumps(it, ensure_ascii=False) + "\n").encode("utf-8"))
    by = {}
    for it in items:
        s = it["src"].split(":")[0]
        by[s] = by.get(s, 0) + 1
    print("wrote %s: %d texts, %d bytes; %s" % (OUT, len(items), os.path.getsize(OUT), by))


if __name__ == "__main__":
    main()
