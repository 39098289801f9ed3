/*
 * test_bpe.c — C tests for csrc/text/bpe.c: llama.cpp's vocabulary tests
 * (tests/data/vocab/ggml-vocab-{gpt-2,starcoder,llama-spm}.gguf with their
 * .inp/.out files; llama-bpe and qwen2 too when $ENGINE_PY_VOCAB_DIR or
 * /tmp/vocab has them) through eg_gguf_open + eg_bpe_from_gguf, a tiny
 * in-memory byte-level vocabulary (merge order, pre-tokenizer splits,
 * special tokens, truncation, BOS/EOS), SentencePiece byte fallback, and every
 * refusal of eg_bpe_create. Runs from csrc/.
 */
#include "eg_bpe.h"
#include "eg_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)sz + 1);
    if (buf == NULL || fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        free(buf);
        fclose(f);
        return NULL;
    }
    buf[sz] = 0;
    fclose(f);
    *n = (size_t)sz;
    return buf;
}

#define MAX_CASES 256

/* Encode every .inp text and compare with the .out ids. Returns 1 if the
 * file was there. */
static int vocab_case(const char *dir, const char *name)
{
    char path[512], p2[560];
    snprintf(path, sizeof path, "%s/ggml-vocab-%s.gguf", dir, name);
    size_t ni, no;
    snprintf(p2, sizeof p2, "%s.inp", path);
    char *inp = read_file(p2, &ni);
    snprintf(p2, sizeof p2, "%s.out", path);
    char *out = read_file(p2, &no);
    if (inp == NULL || out == NULL) {
        free(inp);
        free(out);
        return 0;
    }
    eg_gguf_file f;
    memset(&f, 0, sizeof f);
    eg_err err;
    eg_err_clear(&err);
    eg_bpe *b = NULL;
    eg_status st = eg_gguf_open(path, &f, &err);
    if (st == EG_OK) {
        st = eg_bpe_from_gguf(&b, &f, &err);
    }
    eg_gguf_close(&f);
    CHECK(st == EG_OK, "%s: %s", name, err.msg);
    if (st != EG_OK) {
        free(inp);
        free(out);
        return 1;
    }
    const char *texts[MAX_CASES];
    size_t lens[MAX_CASES];
    size_t n = 0;
    const char *sep = "\n__ggml_vocab_test__\n";
    char *p = inp;
    while (n < MAX_CASES) {
        char *q = strstr(p, sep);
        texts[n] = p;
        lens[n] = q != NULL ? (size_t)(q - p) : strlen(p);
        n++;
        if (q == NULL) {
            break;
        }
        p = q + strlen(sep);
    }
    int32_t *ids[MAX_CASES];
    size_t olen[MAX_CASES];
    eg_err_clear(&err);
    st = eg_bpe_encode_batch(b, texts, lens, n, 0, 0, ids, olen, &err);
    CHECK(st == EG_OK, "%s: encode: %s", name, err.msg);
    int bad = 0;
    char *line = out;
    for (size_t i = 0; i < n && st == EG_OK; i++) {
        char *end = strchr(line, '\n');
        if (end != NULL) {
            *end = 0;
        }
        size_t k = 0;
        int ok = 1;
        char *s = line;
        for (;;) {
            while (*s == ' ') {
                s++;
            }
            if (*s == 0) {
                break;
            }
            long v = strtol(s, &s, 10);
            ok &= k < olen[i] && ids[i][k] == v;
            k++;
        }
        ok &= k == olen[i];
        if (!ok && bad++ < 3) {
            fprintf(stderr, "%s: text %zu (%.40s) differs\n", name, i, texts[i]);
        }
        line = end != NULL ? end + 1 : line + strlen(line);
    }
    CHECK(bad == 0, "%s: %d of %zu texts differ from llama.cpp's .out", name, bad, n);
    CHECK(n > 40, "%s: only %zu texts", name, n);
    if (st == EG_OK) {
        eg_bpe_free_batch(ids, n);
    }
    eg_bpe_free(b);
    free(inp);
    free(out);
    return 1;
}

static void test_vocab_files(void)
{
    static const char *in_repo[] = {"gpt-2", "starcoder", "llama-spm"};
    for (int i = 0; i < 3; i++) {
        CHECK(vocab_case("../tests/data/vocab", in_repo[i]), "%s missing from tests/data/vocab",
              in_repo[i]);
    }
    const char *extra = getenv("ENGINE_PY_VOCAB_DIR");
    if (extra == NULL) {
        extra = "/tmp/vocab";
    }
    static const char *big[] = {"llama-bpe", "qwen2"};
    for (int i = 0; i < 2; i++) {
        if (!vocab_case(extra, big[i])) {
            printf("test_bpe: %s/ggml-vocab-%s.gguf absent, skipped\n", extra, big[i]);
        }
    }
}

/* ------------------------------------------------------------ tiny vocab */

/* The 256 GPT-2 byte characters, then extra tokens. */
static char g_bytes[256][4];
static const char *g_tok[300];
static size_t g_len[300];

static size_t tiny_vocab(const char *const *extra, size_t n_extra)
{
    int next = 256;
    for (int c = 0; c < 256; c++) {
        int keep = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        uint32_t cp = keep ? (uint32_t)c : (uint32_t)next++;
        size_t k = eg_utf8_encode1(cp, (uint8_t *)g_bytes[c]);
        g_bytes[c][k] = 0;
        g_tok[c] = g_bytes[c];
        g_len[c] = k;
    }
    for (size_t i = 0; i < n_extra; i++) {
        g_tok[256 + i] = extra[i];
        g_len[256 + i] = strlen(extra[i]);
    }
    return 256 + n_extra;
}

static eg_status make(eg_bpe **b, int pre, const char *const *merges, size_t nm,
                      const int32_t *types, const eg_bpe_config *over, size_t nt, eg_err *err)
{
    eg_bpe_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.kind = EG_BPE_BYTELEVEL;
    cfg.pre = pre;
    cfg.bos_id = cfg.eos_id = cfg.unk_id = cfg.pad_id = -1;
    cfg.what = "tiny";
    if (over != NULL) {
        cfg = *over;
    }
    size_t ml[16];
    for (size_t i = 0; i < nm; i++) {
        ml[i] = strlen(merges[i]);
    }
    eg_err_clear(err);
    return eg_bpe_create(b, &cfg, g_tok, g_len, nt, types, NULL, merges, ml, nm, err);
}

/* ids of one text; returns the count (at most cap) or -1. */
static long enc(const eg_bpe *b, const char *text, size_t max_length, int add_special,
                int32_t *out, size_t cap)
{
    int32_t *ids = NULL;
    size_t n = 0, len = strlen(text);
    eg_err err;
    eg_err_clear(&err);
    if (eg_bpe_encode_batch(b, &text, &len, 1, max_length, add_special, &ids, &n, &err) != EG_OK) {
        return -1;
    }
    for (size_t i = 0; i < n && i < cap; i++) {
        out[i] = ids[i];
    }
    eg_bpe_free_batch(&ids, 1);
    return (long)n;
}

static void test_tiny(void)
{
    /* 256 "Ġt" 257 "he" 258 "Ġthe" 259 "<|eot|>" 260 "12" 261 "123" */
    static const char *extra[] = {"\xc4\xa0t", "he", "\xc4\xa0the", "<|eot|>", "12", "123"};
    size_t nt = tiny_vocab(extra, 6);
    static const char *merges[] = {"\xc4\xa0 t", "h e", "\xc4\xa0t he", "1 2", "12 3"};
    int32_t types[262];
    for (int i = 0; i < 262; i++) {
        types[i] = EG_TOKTYPE_NORMAL;
    }
    types[259] = EG_TOKTYPE_CONTROL;
    eg_err err;
    eg_bpe *b = NULL;
    eg_status st = make(&b, EG_BPE_PRE_GPT2, merges, 5, types, NULL, nt, &err);
    CHECK(st == EG_OK, "%s", err.msg);
    if (st != EG_OK) {
        return;
    }
    int32_t o[64];
    long n = enc(b, " the", 0, 1, o, 64);
    CHECK(n == 1 && o[0] == 258, "' the' -> Ġthe (n %ld)", n);
    n = enc(b, "the<|eot|> the", 0, 1, o, 64);
    CHECK(n == 4 && o[0] == 't' - 0 && o[1] == 257 && o[2] == 259 && o[3] == 258,
          "special token in the middle (n %ld: %d %d %d %d)", n, o[0], o[1], o[2], o[3]);
    n = enc(b, "123", 0, 1, o, 64);
    CHECK(n == 1 && o[0] == 261, "gpt-2 keeps digits together");
    n = enc(b, "the the the", 2, 1, o, 64);
    CHECK(n == 2, "max_length 2 keeps 2 ids (got %ld)", n);
    eg_bpe_free(b);

    /* smollm: digits one by one */
    b = NULL;
    st = make(&b, EG_BPE_PRE_SMOLLM, merges, 5, types, NULL, nt, &err);
    CHECK(st == EG_OK, "%s", err.msg);
    n = enc(b, "123", 0, 1, o, 64);
    CHECK(n == 3 && o[0] == '1' && o[1] == '2' && o[2] == '3', "smollm isolates digits");
    eg_bpe_free(b);

    /* llama3: up to 3 digits, case-insensitive contractions, BOS/EOS */
    eg_bpe_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.kind = EG_BPE_BYTELEVEL;
    cfg.pre = EG_BPE_PRE_LLAMA3;
    cfg.bos_id = 259;
    cfg.eos_id = 258;
    cfg.unk_id = -1;
    cfg.pad_id = -1;
    cfg.add_bos = cfg.add_eos = 1;
    b = NULL;
    st = make(&b, 0, merges, 5, types, &cfg, nt, &err);
    CHECK(st == EG_OK, "%s", err.msg);
    n = enc(b, "1234", 0, 1, o, 64);
    CHECK(n == 4 && o[0] == 259 && o[1] == 261 && o[2] == '4' && o[3] == 258,
          "llama3 digits in threes, BOS/EOS (n %ld)", n);
    n = enc(b, "1234", 3, 1, o, 64);
    CHECK(n == 3 && o[0] == 259 && o[1] == 261 && o[2] == 258, "truncation keeps BOS/EOS");
    n = enc(b, "1234", 1, 1, o, 64);
    CHECK(n == -1, "max_length below the specials is refused");
    n = enc(b, "", 0, 1, o, 64);
    CHECK(n == 2 && o[0] == 259 && o[1] == 258, "empty text: BOS EOS");
    n = enc(b, "\xff", 0, 0, o, 64);
    CHECK(n == -1, "invalid UTF-8 refused");
    eg_bpe_free(b);

    /* every refusal, each with a message naming the source */
    static const struct {
        const char *merge;
        const char *needle;
    } bad_merges[] = {
        {"x9 y", "names 'x9'"},
        {"x y", "merged token 'xy'"},
        {"xy", "not two tokens"},
        {"", "not two tokens"},
    };
    for (int i = 0; i < 4; i++) {
        const char *m[1] = {bad_merges[i].merge};
        b = NULL;
        st = make(&b, EG_BPE_PRE_GPT2, m, 1, NULL, NULL, nt, &err);
        CHECK(st == EG_EINVAL && b == NULL && strstr(err.msg, bad_merges[i].needle) != NULL &&
                  strstr(err.msg, "tiny") != NULL,
              "bad merge %d: %s", i, err.msg);
    }
    static const char *dup[] = {"he", "he"};
    size_t nd = tiny_vocab(dup, 2);
    b = NULL;
    st = make(&b, EG_BPE_PRE_GPT2, NULL, 0, NULL, NULL, nd, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "repeats") != NULL, "duplicate: %s", err.msg);
    nt = tiny_vocab(extra, 6);
    int32_t bad_types[262];
    memcpy(bad_types, types, sizeof bad_types);
    bad_types[5] = 0;
    st = make(&b, EG_BPE_PRE_GPT2, NULL, 0, bad_types, NULL, nt, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "token type 0") != NULL, "type: %s", err.msg);
    cfg.bos_id = 262;
    st = make(&b, 0, NULL, 0, NULL, &cfg, nt, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "bos_token_id 262") != NULL, "bos: %s", err.msg);
    cfg.bos_id = -1;
    st = make(&b, 0, NULL, 0, NULL, &cfg, nt, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "add_bos_token") != NULL, "add_bos: %s", err.msg);
    cfg.pre = 99;
    st = make(&b, 0, NULL, 0, NULL, &cfg, nt, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "pre-tokenizer") != NULL, "pre: %s", err.msg);
    cfg.kind = EG_BPE_SPM;
    cfg.bos_id = 1;
    st = make(&b, 0, NULL, 0, NULL, &cfg, nt, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "scores") != NULL, "spm scores: %s", err.msg);
    st = make(&b, EG_BPE_PRE_GPT2, NULL, 0, NULL, NULL, 0, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "vocabulary size 0") != NULL, "empty: %s", err.msg);
    CHECK(b == NULL, "nothing left on failure");
}

/* SentencePiece: merges by score, U+2581, byte fallback. */
static void test_spm(void)
{
    static const char *tok[] = {"<unk>", "<s>", "\xe2\x96\x81", "a", "b", "\xe2\x96\x81" "a",
                                "ab", "ba", "<0xC3>", "<0xA9>"};
    size_t len[10];
    for (int i = 0; i < 10; i++) {
        len[i] = strlen(tok[i]);
    }
    float scores[10] = {0, 0, -1, -2, -3, -4, -0.5f, -5, 0, 0};
    int32_t types[10] = {2, 3, 1, 1, 1, 1, 1, 1, 6, 6};
    eg_bpe_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.kind = EG_BPE_SPM;
    cfg.bos_id = 1;
    cfg.eos_id = -1;
    cfg.unk_id = 0;
    cfg.pad_id = -1;
    cfg.add_bos = 1;
    cfg.add_space_prefix = 1;
    eg_bpe *b = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_bpe_create(&b, &cfg, tok, len, 10, types, scores, NULL, NULL, 0, &err);
    CHECK(st == EG_OK, "%s", err.msg);
    if (st != EG_OK) {
        return;
    }
    int32_t o[16];
    /* "ab" (score -0.5) merges before "▁a" (-4): ▁ ab, not ▁a b */
    long n = enc(b, "ab", 0, 1, o, 16);
    CHECK(n == 3 && o[0] == 1 && o[1] == 2 && o[2] == 6, "score order (n %ld: %d %d %d)", n, o[0],
          o[1], o[2]);
    /* é is not a token: its bytes C3 A9 */
    n = enc(b, "\xc3\xa9", 0, 0, o, 16);
    CHECK(n == 3 && o[0] == 2 && o[1] == 8 && o[2] == 9, "byte fallback (n %ld)", n);
    /* a character without byte tokens: unk per byte */
    n = enc(b, "\xe2\x82\xac", 0, 0, o, 16);
    CHECK(n == 4 && o[1] == 0 && o[2] == 0 && o[3] == 0, "unk per byte (n %ld)", n);
    n = enc(b, "", 0, 1, o, 16);
    CHECK(n == 1 && o[0] == 1, "empty: BOS only");
    eg_bpe_free(b);
    scores[3] = 1.0f / 0.0f;
    b = NULL;
    st = eg_bpe_create(&b, &cfg, tok, len, 10, types, scores, NULL, NULL, 0, &err);
    CHECK(st == EG_EINVAL && strstr(err.msg, "not finite") != NULL, "inf score: %s", err.msg);
}

int main(void)
{
    eg_set_num_threads(2);
    test_vocab_files();
    test_tiny();
    test_spm();
    return eg_test_report("test_bpe");
}
