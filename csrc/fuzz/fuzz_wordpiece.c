/*
 * fuzz_wordpiece.c — libFuzzer harness for the WordPiece tokenizer
 * (csrc/text/wordpiece.c): vocabulary loading (eg_wordpiece_create, what
 * vocab.txt / tokenizer.json become after the Python loader) and encoding.
 *
 * Input: byte 0 flags (clean_text, handle_chinese_chars, strip_accents,
 * lowercase, add_special, prefix choice x2), byte 1 max_length, byte 2
 * max_input_chars_per_word, bytes 3..5 unk/cls/sep ids (mod vocab size + 1, so
 * an out-of-range id is reachable); then three sections separated by 0xFF
 * (never a UTF-8 byte): vocabulary tokens one per '\n' line, added tokens one
 * per '\n' line, texts separated by 0xFE. Encoded ids must lie in the
 * vocabulary, respect max_length and the [CLS]/[SEP] frame, and the batch must
 * equal the texts encoded one by one. Lookup must return, for every token,
 * the last id holding it (HF semantics).
 */
#include "eg.h"
#include "eg_text.h"
#include "fuzz_common.h"

#include <stdlib.h>

#define MAX_PIECES 4096

typedef struct {
    const char *s[MAX_PIECES];
    size_t len[MAX_PIECES];
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

static pieces g_vocab, g_added, g_texts;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 6) {
        return 0;
    }
    /* private copy so the pieces point into an exact-size heap block */
    uint8_t *copy = malloc(size);
    if (copy == NULL) {
        return 0;
    }
    memcpy(copy, data, size);
    unsigned flags = copy[0];
    size_t max_length = copy[1] % 64;
    int add_special = (flags >> 4) & 1;
    static const char *prefixes[4] = {"##", "", "\xc3\xa9", "@@"};
    eg_wordpiece_config cfg = {
        .clean_text = flags & 1, .handle_chinese_chars = (flags >> 1) & 1,
        .strip_accents = (flags >> 2) & 1, .lowercase = (flags >> 3) & 1,
        .max_input_chars_per_word = copy[2] % 120, .continuing_prefix = prefixes[(flags >> 5) & 3]};
    const uint8_t *p = copy + 6;
    size_t n = size - 6, vlen, alen, tlen;
    const uint8_t *v = section(&p, &n, &vlen);
    const uint8_t *a = section(&p, &n, &alen);
    const uint8_t *t = section(&p, &n, &tlen);
    split(v, vlen, '\n', &g_vocab);
    split(a, alen, '\n', &g_added);
    if (alen == 0) {
        g_added.n = 0;
    }
    split(t, tlen, 0xFE, &g_texts);
    size_t nv = g_vocab.n;
    cfg.unk_id = (int32_t)(copy[3] % (nv + 1));
    cfg.cls_id = (int32_t)(copy[4] % (nv + 1));
    cfg.sep_id = (int32_t)(copy[5] % (nv + 1));
    int32_t added_ids[MAX_PIECES];
    for (size_t j = 0; j < g_added.n; j++) {
        added_ids[j] = (int32_t)((j * 7 + 3) % nv);
    }
    eg_wordpiece *wp = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_wordpiece_create(&wp, &cfg, g_vocab.s, g_vocab.len, nv, g_added.s,
                                       g_added.len, added_ids, g_added.n, &err);
    fuzz_check_status(st, &err);
    if (st != EG_OK) {
        FUZZ_CHECK(wp == NULL, "tokenizer left on failure");
        free(copy);
        return 0;
    }
    FUZZ_CHECK(eg_wordpiece_vocab_size(wp) == nv, "vocab size");
    for (size_t i = 0; i < nv; i++) {
        if (g_vocab.len[i] == 0) {
            continue;
        }
        int32_t want = (int32_t)i;
        for (size_t j = i + 1; j < nv; j++) {
            if (g_vocab.len[j] == g_vocab.len[i] && memcmp(g_vocab.s[j], g_vocab.s[i], g_vocab.len[i]) == 0) {
                want = (int32_t)j;
            }
        }
        int32_t got = eg_wordpiece_lookup(wp, g_vocab.s[i], g_vocab.len[i]);
        FUZZ_CHECK(got == want, "lookup of token %zu gives %d, want %d", i, (int)got, (int)want);
    }
    size_t nt = g_texts.n;
    int32_t **ids = calloc(nt, sizeof(int32_t *));
    size_t *lens = calloc(nt, sizeof(size_t));
    FUZZ_CHECK(ids != NULL && lens != NULL, "calloc");
    eg_err_clear(&err);
    st = eg_wordpiece_encode_batch(wp, g_texts.s, g_texts.len, nt, max_length, add_special, ids,
                                   lens, &err);
    fuzz_check_status(st, &err);
    int all_valid = 1;
    for (size_t i = 0; i < nt; i++) {
        all_valid &= eg_utf8_valid(g_texts.s[i], g_texts.len[i], NULL);
    }
    int args_ok = !(add_special && max_length > 0 && max_length < 2);
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
            if (add_special) {
                FUZZ_CHECK(lens[i] >= 2 && ids[i][0] == cfg.cls_id && ids[i][lens[i] - 1] == cfg.sep_id,
                           "[CLS] ... [SEP] frame");
            }
            /* one text alone gives the same ids as in the batch */
            int32_t *one = NULL;
            size_t one_len = 0;
            eg_err_clear(&err);
            st = eg_wordpiece_encode_batch(wp, &g_texts.s[i], &g_texts.len[i], 1, max_length,
                                           add_special, &one, &one_len, &err);
            FUZZ_CHECK(st == EG_OK && one_len == lens[i] &&
                           (one_len == 0 || memcmp(one, ids[i], one_len * sizeof(int32_t)) == 0),
                       "text %zu alone differs from the batch", i);
            eg_wordpiece_free_batch(&one, 1);
        }
        eg_wordpiece_free_batch(ids, nt);
    } else {
        for (size_t i = 0; i < nt; i++) {
            FUZZ_CHECK(ids[i] == NULL, "ids left allocated on failure");
        }
    }
    free(ids);
    free(lens);
    eg_wordpiece_free(wp);
    free(copy);
    return 0;
}
