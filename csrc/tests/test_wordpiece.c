/*
 * test_wordpiece.c — C tests for csrc/text: the strict UTF-8 decoder
 * (well-formed boundaries, malformed, overlong, surrogate and truncated
 * sequences, encode/decode round trip over every code point), the Unicode
 * tables on known code points, and the WordPiece tokenizer on a tiny
 * in-memory vocabulary (normalisation, punctuation, CJK, [UNK] rules,
 * added tokens, truncation, bad input).
 */
#include "eg_text.h"
#include "eg_test.h"

#include <string.h>

static size_t dec(const char *s, size_t n, uint32_t *cp)
{
    return eg_utf8_decode1((const uint8_t *)s, n, cp);
}

static void test_utf8(void)
{
    uint32_t cp = 0;
    /* Well-formed boundaries. */
    CHECK(dec("\x00", 1, &cp) == 1 && cp == 0, "NUL");
    CHECK(dec("\x7f", 1, &cp) == 1 && cp == 0x7F, "DEL");
    CHECK(dec("\xc2\x80", 2, &cp) == 2 && cp == 0x80, "U+0080");
    CHECK(dec("\xdf\xbf", 2, &cp) == 2 && cp == 0x7FF, "U+07FF");
    CHECK(dec("\xe0\xa0\x80", 3, &cp) == 3 && cp == 0x800, "U+0800");
    CHECK(dec("\xed\x9f\xbf", 3, &cp) == 3 && cp == 0xD7FF, "U+D7FF");
    CHECK(dec("\xee\x80\x80", 3, &cp) == 3 && cp == 0xE000, "U+E000");
    CHECK(dec("\xef\xbf\xbf", 3, &cp) == 3 && cp == 0xFFFF, "U+FFFF");
    CHECK(dec("\xf0\x90\x80\x80", 4, &cp) == 4 && cp == 0x10000, "U+10000");
    CHECK(dec("\xf4\x8f\xbf\xbf", 4, &cp) == 4 && cp == 0x10FFFF, "U+10FFFF");
    /* Malformed. */
    CHECK(dec("", 0, &cp) == 0, "empty");
    CHECK(dec("\x80", 1, &cp) == 0, "lone continuation");
    CHECK(dec("\xbf", 1, &cp) == 0, "lone continuation bf");
    CHECK(dec("\xc0\x80", 2, &cp) == 0, "overlong NUL (C0 80)");
    CHECK(dec("\xc1\xbf", 2, &cp) == 0, "overlong C1");
    CHECK(dec("\xe0\x80\x80", 3, &cp) == 0, "overlong 3-byte NUL");
    CHECK(dec("\xe0\x9f\xbf", 3, &cp) == 0, "overlong U+07FF in 3 bytes");
    CHECK(dec("\xf0\x80\x80\x80", 4, &cp) == 0, "overlong 4-byte NUL");
    CHECK(dec("\xf0\x8f\xbf\xbf", 4, &cp) == 0, "overlong U+FFFF in 4 bytes");
    CHECK(dec("\xed\xa0\x80", 3, &cp) == 0, "surrogate U+D800");
    CHECK(dec("\xed\xbf\xbf", 3, &cp) == 0, "surrogate U+DFFF");
    CHECK(dec("\xed\xa0\xbd\xed\xb8\x80", 6, &cp) == 0, "CESU-8 pair");
    CHECK(dec("\xf4\x90\x80\x80", 4, &cp) == 0, "U+110000");
    CHECK(dec("\xf5\x80\x80\x80", 4, &cp) == 0, "F5 lead");
    CHECK(dec("\xff", 1, &cp) == 0, "FF");
    CHECK(dec("\xfe", 1, &cp) == 0, "FE");
    CHECK(dec("\xc3", 1, &cp) == 0, "truncated 2-byte");
    CHECK(dec("\xe2\x82", 2, &cp) == 0, "truncated 3-byte");
    CHECK(dec("\xf0\x9f\x98", 3, &cp) == 0, "truncated 4-byte");
    CHECK(dec("\xc3\x28", 2, &cp) == 0, "bad continuation");
    CHECK(dec("\xe2\x28\xa1", 3, &cp) == 0, "bad 2nd of 3");
    CHECK(dec("\xf0\x9f\x98\x28", 4, &cp) == 0, "bad 4th of 4");
    /* A valid sequence followed by more bytes consumes only its own. */
    CHECK(dec("\xc3\xa9z", 3, &cp) == 2 && cp == 0xE9, "e-acute then z");

    size_t bad = 99;
    CHECK(eg_utf8_valid("abc\xc3\xa9", 5, &bad), "valid string");
    CHECK(!eg_utf8_valid("ab\xc3", 3, &bad) && bad == 2, "truncated at end: %zu", bad);
    CHECK(!eg_utf8_valid("a\xed\xa0\x80z", 5, &bad) && bad == 1, "surrogate inside: %zu", bad);
    CHECK(eg_utf8_valid("", 0, NULL), "empty is valid");

    /* Round trip over every code point; surrogates and > U+10FFFF refused. */
    int ok = 1;
    for (uint32_t c = 0; c < 0x110000u; c++) {
        uint8_t b[4];
        size_t k = eg_utf8_encode1(c, b);
        if (c >= 0xD800u && c <= 0xDFFFu) {
            ok &= k == 0;
            continue;
        }
        uint32_t back = 0;
        ok &= k >= 1 && k <= 4 && eg_utf8_decode1(b, k, &back) == k && back == c;
        ok &= k == 1 || eg_utf8_decode1(b, k - 1, &back) == 0; /* truncation detected */
    }
    CHECK(ok, "encode/decode round trip over all code points");
    uint8_t b[4];
    CHECK(eg_utf8_encode1(0x110000u, b) == 0, "encode above U+10FFFF");
}

static void test_tables(void)
{
    uint32_t out[EG_UNI_MAP_MAX];
    CHECK(eg_uni_flags(' ') & EG_UNI_PWS, "space splits");
    CHECK(eg_uni_flags(0xA0) & EG_UNI_WS, "NBSP is whitespace for clean_text");
    CHECK(eg_uni_flags(0x3000) & EG_UNI_PWS, "ideographic space");
    CHECK(eg_uni_flags(0x200B) & EG_UNI_DROP, "ZWSP dropped (Cf)");
    CHECK(eg_uni_flags(0) & EG_UNI_DROP, "NUL dropped");
    CHECK(eg_uni_flags(0xFFFD) & EG_UNI_DROP, "U+FFFD dropped");
    CHECK(!(eg_uni_flags('\t') & EG_UNI_DROP) && (eg_uni_flags('\t') & EG_UNI_WS), "tab is space");
    CHECK(eg_uni_flags('$') & EG_UNI_PUNCT, "ASCII symbol is BERT punctuation");
    CHECK(eg_uni_flags(0x3002) & EG_UNI_PUNCT, "ideographic full stop");
    CHECK(!(eg_uni_flags('a') & (EG_UNI_PUNCT | EG_UNI_PWS | EG_UNI_DROP)), "a is plain");
    CHECK(eg_uni_flags(0x110000u) == 0, "out of range");
    CHECK(eg_uni_lower('A', out) == 1 && out[0] == 'a', "lower A");
    CHECK(eg_uni_lower('a', out) == -1, "a unchanged");
    CHECK(eg_uni_lower(0x130, out) == 2 && out[0] == 'i' && out[1] == 0x307, "dotted I expands");
    CHECK(eg_uni_strip(0xE9, out) == 1 && out[0] == 'e', "strip e-acute");
    CHECK(eg_uni_strip(0x301, out) == 0, "combining acute removed");
    CHECK(eg_uni_strip(0xD55C, out) == 3 && out[0] == 0x1112 && out[1] == 0x1161 &&
          out[2] == 0x11AB, "Hangul syllable decomposes");
    CHECK(eg_uni_strip(0xAC00, out) == 2 && out[0] == 0x1100 && out[1] == 0x1161, "GA");
    CHECK(eg_uni_map_max_len >= 1 && eg_uni_map_max_len <= EG_UNI_MAP_MAX, "max len");
}

static const char *VOCAB[] = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff",
                              "##able", "hello", ",", "!", "cafe", "a", "##a", "\xe4\xb8\xad",
                              "x", "##x", "hello"};
#define NV (sizeof(VOCAB) / sizeof(VOCAB[0]))

static eg_wordpiece *make_tiny(int lower, eg_err *err)
{
    size_t lens[NV];
    for (size_t i = 0; i < NV; i++) {
        lens[i] = strlen(VOCAB[i]);
    }
    const char *added[] = {"[MASK]", "[CLS]", "[SEP]"};
    size_t alens[] = {6, 5, 5};
    int32_t aids[] = {4, 2, 3};
    eg_wordpiece_config cfg = {.clean_text = 1, .handle_chinese_chars = 1, .strip_accents = lower,
                               .lowercase = lower, .max_input_chars_per_word = 100,
                               .continuing_prefix = "##", .unk_id = 1, .cls_id = 2, .sep_id = 3};
    eg_wordpiece *wp = NULL;
    eg_status st = eg_wordpiece_create(&wp, &cfg, VOCAB, lens, NV, added, alens, aids, 3, err);
    CHECK(st == EG_OK, "create: %s", err->msg);
    return wp;
}

/* Tokenize one text and compare with the expected ids (-1 terminated). */
static void expect(const eg_wordpiece *wp, const char *text, size_t max_length, int special,
                   const int32_t *want, const char *what)
{
    eg_err err;
    eg_err_clear(&err);
    int32_t *ids[1];
    size_t n[1];
    size_t len = strlen(text);
    eg_status st = eg_wordpiece_encode_batch(wp, &text, &len, 1, max_length, special, ids, n, &err);
    CHECK(st == EG_OK, "%s: %s", what, err.msg);
    if (st != EG_OK) {
        return;
    }
    size_t nw = 0;
    while (want[nw] >= 0) {
        nw++;
    }
    int same = n[0] == nw;
    for (size_t i = 0; same && i < nw; i++) {
        same = ids[0][i] == want[i];
    }
    CHECK(same, "%s: got %zu ids, want %zu", what, n[0], nw);
    eg_wordpiece_free_batch(ids, 1);
}

static void test_tokenizer(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_wordpiece *wp = make_tiny(1, &err);
    if (wp == NULL) {
        return;
    }
    CHECK(eg_wordpiece_vocab_size(wp) == NV, "vocab size");
    CHECK(eg_wordpiece_lookup(wp, "hello", 5) == 17, "duplicate token: later id wins");
    CHECK(eg_wordpiece_lookup(wp, "##able", 6) == 7, "lookup ##able");
    CHECK(eg_wordpiece_lookup(wp, "nope", 4) == -1, "absent");

    expect(wp, "Unaffable, HELLO!", 0, 1, (const int32_t[]){2, 5, 6, 7, 9, 17, 10, 3, -1},
           "basic");
    expect(wp, "Caf\xc3\xa9", 0, 1, (const int32_t[]){2, 11, 3, -1}, "accent stripped");
    expect(wp, "Cafe\xcc\x81", 0, 1, (const int32_t[]){2, 11, 3, -1}, "combining accent");
    expect(wp, "\xe4\xb8\xad\xe4\xb8\xad", 0, 1, (const int32_t[]){2, 14, 14, 3, -1}, "CJK split");
    expect(wp, "unz hello", 0, 1, (const int32_t[]){2, 1, 17, 3, -1}, "unmatchable -> UNK");
    expect(wp, "", 0, 1, (const int32_t[]){2, 3, -1}, "empty");
    expect(wp, " \t\r\n", 0, 1, (const int32_t[]){2, 3, -1}, "whitespace only");
    expect(wp, "a\x01\xe2\x80\x8b" "a", 0, 1, (const int32_t[]){2, 12, 13, 3, -1},
           "control + ZWSP dropped inside a word");
    expect(wp, "x[MASK]x", 0, 1, (const int32_t[]){2, 15, 4, 15, 3, -1}, "added token");
    expect(wp, "[mask]", 0, 0, (const int32_t[]){1, 1, 1, -1}, "added tokens are case-sensitive");
    expect(wp, "hello hello hello", 4, 1, (const int32_t[]){2, 17, 17, 3, -1}, "truncation");
    expect(wp, "hello hello", 2, 1, (const int32_t[]){2, 3, -1}, "truncation to specials");
    expect(wp, "hello hello", 1, 0, (const int32_t[]){17, -1}, "no specials, max 1");

    char longw[202];
    memset(longw, 'a', 101);
    longw[101] = '\0';
    expect(wp, longw, 0, 1, (const int32_t[]){2, 1, 3, -1}, "101 chars -> UNK");
    longw[100] = '\0';
    int32_t want100[104];
    want100[0] = 2;
    want100[1] = 12;
    for (int i = 0; i < 99; i++) {
        want100[2 + i] = 13;
    }
    want100[101] = 3;
    want100[102] = -1;
    expect(wp, longw, 0, 1, want100, "100 chars -> a ##a*99");

    /* Long text: buffered normalisation is flushed at whitespace only, so a
     * word straddling the flush size stays whole. */
    {
        static char big[20000];
        size_t p = 0;
        for (int i = 0; i < 1500; i++) {
            memcpy(big + p, "hello ", 6);
            p += 6;
        }
        memcpy(big + p, "unaffable", 9);
        p += 9;
        big[p] = '\0';
        int32_t want_big[1506];
        want_big[0] = 2;
        for (int i = 0; i < 1500; i++) {
            want_big[1 + i] = 17;
        }
        want_big[1501] = 5;
        want_big[1502] = 6;
        want_big[1503] = 7;
        want_big[1504] = 3;
        want_big[1505] = -1;
        expect(wp, big, 0, 1, want_big, "long text");
        memset(big, 'a', 1500);
        big[1500] = '\0';
        expect(wp, big, 0, 1, (const int32_t[]){2, 1, 3, -1}, "one 1500-char word");
    }

    /* Invalid UTF-8 is refused with the text index and offset. */
    const char *texts[2] = {"ok", "bad\xc3"};
    size_t lens[2] = {2, 4};
    int32_t *ids[2];
    size_t n[2];
    eg_status st = eg_wordpiece_encode_batch(wp, texts, lens, 2, 0, 1, ids, n, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "text 1") && strstr(err.msg, "byte 3"),
          "invalid UTF-8: %s", err.msg);
    st = eg_wordpiece_encode_batch(wp, texts, lens, 1, 1, 1, ids, n, &err);
    CHECK(st == EG_EINVAL, "max_length 1 with specials refused");

    /* Batch results equal one-by-one results. */
    const char *many[64];
    size_t mlen[64];
    for (int i = 0; i < 64; i++) {
        many[i] = (i % 3 == 0) ? "Unaffable, hello!" : (i % 3 == 1) ? "x x x" : "";
        mlen[i] = strlen(many[i]);
    }
    int32_t *mids[64];
    size_t mn[64];
    st = eg_wordpiece_encode_batch(wp, many, mlen, 64, 0, 1, mids, mn, &err);
    CHECK(st == EG_OK, "batch");
    if (st == EG_OK) {
        CHECK(mn[0] == 8 && mn[1] == 5 && mn[2] == 2 && mn[63] == 8, "batch lengths");
        eg_wordpiece_free_batch(mids, 64);
    }
    eg_wordpiece_free(wp);

    /* Cased: no lowercase, no accent stripping. */
    wp = make_tiny(0, &err);
    if (wp != NULL) {
        expect(wp, "Hello hello", 0, 1, (const int32_t[]){2, 1, 17, 3, -1}, "cased");
        expect(wp, "caf\xc3\xa9", 0, 1, (const int32_t[]){2, 1, 3, -1}, "cased keeps accent");
        eg_wordpiece_free(wp);
    }

    /* Bad construction arguments. */
    eg_wordpiece_config cfg = {.clean_text = 1, .max_input_chars_per_word = 100,
                               .continuing_prefix = "##", .unk_id = 50};
    size_t l1 = 1;
    const char *t1[1] = {"a"};
    CHECK(eg_wordpiece_create(&wp, &cfg, t1, &l1, 1, NULL, NULL, NULL, 0, &err) == EG_EINVAL &&
          wp == NULL, "unk id outside vocab");
    cfg.unk_id = 0;
    const char *t2[1] = {"\xff"};
    CHECK(eg_wordpiece_create(&wp, &cfg, t2, &l1, 1, NULL, NULL, NULL, 0, &err) == EG_EINVAL,
          "token not UTF-8");
    CHECK(eg_wordpiece_create(&wp, &cfg, t1, &l1, 0, NULL, NULL, NULL, 0, &err) == EG_EINVAL,
          "empty vocab");
}

int main(void)
{
    test_utf8();
    test_tables();
    test_tokenizer();
    return eg_test_report("test_wordpiece");
}
