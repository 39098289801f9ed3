/*
 * fuzz_bpe.c — libFuzzer harness for the BPE tokenizers (csrc/text/bpe.c):
 * building one (eg_bpe_create from vocabulary lines, or eg_bpe_from_gguf
 * from a GGUF buffer) and encoding texts with it.
 *
 * Input: byte 0 flags (bit 0: GGUF mode; bit 1: SentencePiece; bit 2: prepend
 * the 256 GPT-2 byte characters to the vocabulary; bit 3: add_special; bit 4:
 * add_bos; bit 5: add_eos; bit 6: ignore_merges; bit 7: add_space_prefix),
 * byte 1 pre-tokenizer (bits 0-1, + 1) and byte_unk (bit 4), byte 2
 * max_length (mod 48), bytes 3..5 bos/eos/unk ids counted from the end of
 * the vocabulary (v -> n - 1 - v, so ids below -1 are reachable; 255 = none);
 * then sections separated by 0xFF (never a UTF-8 byte):
 *   in-memory mode: vocabulary tokens one per '\n' line (a line starting
 *     with '<' and ending with '>' is a CONTROL token), merges one per '\n'
 *     line, texts separated by 0xFE;
 *   GGUF mode: texts separated by 0xFE, then the rest is a GGUF file.
 * Invariants of an accepted tokenizer: encode succeeds iff the texts are
 * valid UTF-8 and max_length leaves room for BOS/EOS; ids lie in the
 * vocabulary; at most max_length of them; BOS first / EOS last when added;
 * every text alone gives the ids it got in the batch.
 */
#include "eg.h"
#include "eg_bpe.h"
#include "fuzz_common.h"

#include <stdlib.h>

#define MAX_PIECES 4096

typedef struct {
    const char *s[MAX_PIECES + 256];
    size_t len[MAX_PIECES + 256];
    size_t n;
} pieces;

static void split(const uint8_t *p, size_t n, uint8_t sep, pieces *out)
{
    out->n = 0;
    size_t start = 0;
    for (size_t k = 0; k <= n && out->n < MAX_PIECES; k++) {
        if (k == n || p[k] == sep) {
            out->s[out->n] = (const char *)p + start;
            out->len[out->n] = k - start;
            out->n++;
            start = k + 1;
        }
    }
}

static const uint8_t *section(const uint8_t **p, size_t *n, size_t *len)
{
    const uint8_t *start = *p;
    const uint8_t *end = memchr(start, 0xFF, *n);
    *len = end != NULL ? (size_t)(end - start) : *n;
    size_t used = end != NULL ? *len + 1 : *len;
    *p += used;
    *n -= used;
    return start;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    eg_set_num_threads(1);
    return 0;
}

static pieces g_vocab, g_merges, g_texts;
static char g_bytechars[256][4];
static int32_t g_types[MAX_PIECES + 256];
static float g_scores[MAX_PIECES + 256];

static void check_encode(const eg_bpe *b, size_t max_length, int add_special)
{
    const eg_bpe_config *cfg = eg_bpe_get_config(b);
    size_t nv = eg_bpe_vocab_size(b);
    size_t nt = g_texts.n;
    int32_t **ids = calloc(nt + 1, sizeof(int32_t *));
    size_t *lens = calloc(nt + 1, sizeof(size_t));
    FUZZ_CHECK(ids != NULL && lens != NULL, "calloc");
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_bpe_encode_batch(b, g_texts.s, g_texts.len, nt, max_length, add_special,
                                       ids, lens, &err);
    fuzz_check_status(st, &err);
    int all_valid = 1;
    for (size_t i = 0; i < nt; i++) {
        all_valid &= eg_utf8_valid(g_texts.s[i], g_texts.len[i], NULL);
    }
    int bos = add_special && cfg->add_bos, eos = add_special && cfg->add_eos;
    int args_ok = !(max_length > 0 && max_length < (size_t)(bos + eos));
    FUZZ_CHECK((st == EG_OK) == (all_valid && args_ok), "status %d (valid utf8 %d): %s", (int)st,
               all_valid, err.msg);
    if (st == EG_OK) {
        for (size_t i = 0; i < nt; i++) {
            FUZZ_CHECK(max_length == 0 || lens[i] <= max_length, "longer than max_length");
            FUZZ_CHECK((lens[i] == 0) == (ids[i] == NULL), "NULL iff empty");
            for (size_t k = 0; k < lens[i]; k++) {
                FUZZ_CHECK(ids[i][k] >= 0 && (size_t)ids[i][k] < nv, "id %d outside the vocabulary",
                           (int)ids[i][k]);
            }
            if (bos) {
                FUZZ_CHECK(lens[i] >= 1 && ids[i][0] == cfg->bos_id, "BOS first");
            }
            if (eos) {
                FUZZ_CHECK(lens[i] >= 1 && ids[i][lens[i] - 1] == cfg->eos_id, "EOS last");
            }
            int32_t *one = NULL;
            size_t one_len = 0;
            eg_err_clear(&err);
            st = eg_bpe_encode_batch(b, &g_texts.s[i], &g_texts.len[i], 1, max_length, add_special,
                                     &one, &one_len, &err);
            FUZZ_CHECK(st == EG_OK && one_len == lens[i] &&
                           (one_len == 0 || memcmp(one, ids[i], one_len * sizeof(int32_t)) == 0),
                       "text %zu alone differs from the batch", i);
            eg_bpe_free_batch(&one, 1);
        }
        eg_bpe_free_batch(ids, nt);
    } else {
        for (size_t i = 0; i < nt; i++) {
            FUZZ_CHECK(ids[i] == NULL, "ids left allocated on failure");
        }
    }
    free(ids);
    free(lens);
}

static int32_t pick_id(uint8_t v, size_t nv)
{
    return v == 255 ? -1 : (int32_t)nv - 1 - (int32_t)v;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6) {
        return 0;
    }
    uint8_t *copy = malloc(size);
    if (copy == NULL) {
        return 0;
    }
    memcpy(copy, data, size);
    unsigned flags = copy[0];
    size_t max_length = copy[2] % 48;
    int add_special = (flags >> 3) & 1;
    const uint8_t *p = copy + 6;
    size_t n = size - 6;
    eg_bpe *b = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st;
    if (flags & 1) {
        size_t tlen;
        const uint8_t *t = section(&p, &n, &tlen);
        split(t, tlen, 0xFE, &g_texts);
        eg_gguf_file f;
        memset(&f, 0, sizeof f);
        st = eg_gguf_parse(p, n, "fuzz.gguf", &f, &err);
        if (st == EG_OK) {
            eg_err_clear(&err);
            st = eg_bpe_from_gguf(&b, &f, &err);
            fuzz_check_status(st, &err);
            FUZZ_CHECK((st == EG_OK) == (b != NULL), "tokenizer iff EG_OK");
        }
        eg_gguf_close(&f);
    } else {
        size_t vlen, mlen, tlen;
        const uint8_t *v = section(&p, &n, &vlen);
        const uint8_t *m = section(&p, &n, &mlen);
        const uint8_t *t = section(&p, &n, &tlen);
        pieces raw;
        split(v, vlen, '\n', &raw);
        g_vocab.n = 0;
        if (flags & 4) {
            int next = 256;
            for (int c = 0; c < 256; c++) {
                int keep = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
                size_t k = eg_utf8_encode1(keep ? (uint32_t)c : (uint32_t)next++,
                                           (uint8_t *)g_bytechars[c]);
                g_vocab.s[g_vocab.n] = g_bytechars[c];
                g_vocab.len[g_vocab.n++] = k;
            }
        }
        for (size_t i = 0; i < raw.n; i++) {
            g_vocab.s[g_vocab.n] = raw.s[i];
            g_vocab.len[g_vocab.n++] = raw.len[i];
        }
        for (size_t i = 0; i < g_vocab.n; i++) {
            size_t L = g_vocab.len[i];
            g_types[i] = (L >= 2 && g_vocab.s[i][0] == '<' && g_vocab.s[i][L - 1] == '>')
                             ? EG_TOKTYPE_CONTROL : EG_TOKTYPE_NORMAL;
            g_scores[i] = -(float)((i * 7919u) % 101u);
        }
        split(m, mlen, '\n', &g_merges);
        if (mlen == 0) {
            g_merges.n = 0;
        }
        split(t, tlen, 0xFE, &g_texts);
        size_t nv = g_vocab.n;
        eg_bpe_config cfg;
        memset(&cfg, 0, sizeof cfg);
        cfg.kind = (flags & 2) ? EG_BPE_SPM : EG_BPE_BYTELEVEL;
        cfg.pre = 1 + copy[1] % 4;
        cfg.bos_id = pick_id(copy[3], nv);
        cfg.eos_id = pick_id(copy[4], nv);
        cfg.unk_id = pick_id(copy[5], nv);
        cfg.pad_id = -1;
        cfg.byte_unk = (copy[1] >> 4) & 1;
        cfg.add_bos = (flags >> 4) & 1;
        cfg.add_eos = (flags >> 5) & 1;
        cfg.ignore_merges = (flags >> 6) & 1;
        cfg.add_space_prefix = (flags >> 7) & 1;
        cfg.what = "fuzz";
        st = eg_bpe_create(&b, &cfg, g_vocab.s, g_vocab.len, nv, g_types, g_scores, g_merges.s,
                           g_merges.len, g_merges.n, &err);
        fuzz_check_status(st, &err);
        FUZZ_CHECK((st == EG_OK) == (b != NULL), "tokenizer iff EG_OK");
        if (st == EG_OK) {
            FUZZ_CHECK(eg_bpe_vocab_size(b) == nv, "vocab size");
            for (size_t i = 0; i < nv; i++) {
                FUZZ_CHECK(eg_bpe_lookup(b, g_vocab.s[i], g_vocab.len[i]) == (int32_t)i,
                           "lookup of token %zu", i);
            }
        }
    }
    if (b != NULL) {
        check_encode(b, max_length, add_special);
        eg_bpe_free(b);
    }
    free(copy);
    return 0;
}
