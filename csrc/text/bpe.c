/*
 * bpe.c — byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM2) and
 * SentencePiece-style BPE (Llama-2) tokenizers that reproduce Hugging Face
 * `tokenizers` id for id (and llama.cpp, whose vocabulary tests they pass).
 *
 * Byte-level BPE, per text:
 *   1. CONTROL / USER_DEFINED / UNKNOWN tokens are matched in the raw text as whole
 *      strings, leftmost-longest (HF's AddedVocabulary); the text between
 *      them is tokenized on its own;
 *   2. a pre-tokenizer cuts that text into pieces. The regexes, as HF's
 *      Oniguruma runs them (\s White_Space, \p{L}, \p{N} from
 *      unicode_tables.c), are implemented as hand-written scanners:
 *        gpt-2   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *        llama3  (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}
 *                | ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 *        qwen2   as llama3 with \p{N} instead of \p{N}{1,3}
 *        smollm  every \p{N} on its own (HF Digits(individual_digits)), then gpt-2
 *      Unmatched text (never more than one code point here) is a piece too, as
 *      in HF's Split(behavior=Isolated);
 *   3. each piece's UTF-8 bytes become the tokens of their GPT-2
 *      byte-to-unicode characters, and pairs are merged lowest rank first
 *      (leftmost among equal ranks) with a binary heap over a linked list of
 *      symbols and a hash map (left id, right id) -> (rank, merged id): no
 *      string work in the loop. With ignore_merges (Llama-3) a piece that is
 *      itself a token is emitted whole, as HF and llama.cpp do.
 *
 * SentencePiece-style BPE (llama.cpp's llm_tokenizer_spm, which matches HF's
 * Llama tokenizer): the text between special tokens gets U+2581 for every
 * space and one in front when it starts the input or follows a special token
 * (add_space_prefix); its UTF-8 characters are merged highest score first
 * (score of the merged token; leftmost among equal scores) as long as the
 * merged text is a token; a character that is not a token becomes its
 * <0xXX> byte tokens (byte fallback), or unk when those are missing.
 *
 * Texts are independent: the batch call runs an OpenMP loop over texts.
 *
 * Files: bpe.c (this: building, the per-text driver, the batch),
 * bpe_merge.c (merge loops), bpe_pretok.c (scanners), bpe_gguf.c (GGUF).
 */
#include "bpe_internal.h"

#include <math.h>
#include <stdio.h>

/* ------------------------------------------------------------- lookup */

int32_t eg_bpe_lookup(const eg_bpe *b, const char *s, size_t n)
{
    uint32_t h = bpe_fnv1a(s, n);
    size_t mask = b->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        int32_t id = b->slots[i];
        if (id < 0) {
            return -1;
        }
        if (b->slot_hash[i] == h && b->tok_len[id] == n &&
            memcmp(b->pool + b->tok_off[id], s, n) == 0) {
            return id;
        }
    }
}

/* ----------------------------------------------------------- accessors */

const eg_bpe_config *eg_bpe_get_config(const eg_bpe *b)
{
    return &b->cfg;
}

size_t eg_bpe_vocab_size(const eg_bpe *b)
{
    return b->n_tokens;
}

const char *eg_bpe_token(const eg_bpe *b, size_t i, size_t *len, int *type)
{
    if (i >= b->n_tokens) {
        return NULL;
    }
    *len = b->tok_len[i];
    if (type != NULL) {
        *type = b->types[i];
    }
    return b->pool + b->tok_off[i];
}

static const struct {
    const char *name;
    int pre;
    int ignore_merges;
} pre_names[] = {
    /* the names llama.cpp maps to the same regex (src/llama-vocab.cpp) */
    {"gpt-2", EG_BPE_PRE_GPT2, 0},       {"mpt", EG_BPE_PRE_GPT2, 0},
    {"olmo", EG_BPE_PRE_GPT2, 0},        {"jais", EG_BPE_PRE_GPT2, 0},
    {"llama-bpe", EG_BPE_PRE_LLAMA3, 1}, {"llama3", EG_BPE_PRE_LLAMA3, 1},
    {"llama-v3", EG_BPE_PRE_LLAMA3, 1},  {"falcon3", EG_BPE_PRE_LLAMA3, 1},
    {"qwen2", EG_BPE_PRE_QWEN2, 0},      {"deepseek-r1-qwen", EG_BPE_PRE_QWEN2, 0},
    {"stablelm2", EG_BPE_PRE_QWEN2, 0},  {"smollm", EG_BPE_PRE_SMOLLM, 0},
    {"starcoder", EG_BPE_PRE_SMOLLM, 0}, {"refact", EG_BPE_PRE_SMOLLM, 0},
    {"codeshell", EG_BPE_PRE_SMOLLM, 0}, {"exaone", EG_BPE_PRE_SMOLLM, 0},
    {"minerva-7b", EG_BPE_PRE_SMOLLM, 0},
};

const char *eg_bpe_pre_name(int pre)
{
    switch (pre) {
    case EG_BPE_PRE_GPT2:
        return "gpt-2";
    case EG_BPE_PRE_LLAMA3:
        return "llama-bpe";
    case EG_BPE_PRE_QWEN2:
        return "qwen2";
    case EG_BPE_PRE_SMOLLM:
        return "smollm";
    default:
        return "none";
    }
}

int eg_bpe_pre_from_name(const char *name, size_t len, int *ignore_merges)
{
    for (size_t i = 0; i < sizeof(pre_names) / sizeof(pre_names[0]); i++) {
        if (strlen(pre_names[i].name) == len && memcmp(pre_names[i].name, name, len) == 0) {
            if (ignore_merges != NULL) {
                *ignore_merges = pre_names[i].ignore_merges;
            }
            return pre_names[i].pre;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- create */

void eg_bpe_free(eg_bpe *b)
{
    if (b == NULL) {
        return;
    }
    free(b->pool);
    free(b->tok_off);
    free(b->tok_len);
    free(b->types);
    free(b->scores);
    free(b->slots);
    free(b->slot_hash);
    free(b->merges);
    free(b->added);
    free(b);
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the
 * other 68 to U+0100.. in byte order. */
static void gpt2_byte_chars(uint16_t *out)
{
    uint16_t next = 256;
    for (int c = 0; c < 256; c++) {
        int keep = (c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255);
        out[c] = keep ? (uint16_t)c : next++;
    }
}

static eg_status bpe_add_merges(eg_bpe *b, const char *what, const char *field,
                                const char *const *merges, const size_t *merge_lens,
                                size_t n_merges, eg_err *err)
{
    if (n_merges > (size_t)UINT32_MAX / 4) {
        return eg_seterr(err, EG_EINVAL, "%s: %s: %zu merges is too many", what, field, n_merges);
    }
    size_t mcap = 16;
    while (mcap < 2 * n_merges + 2) {
        mcap *= 2;
    }
    b->mcap = mcap;
    b->merges = malloc(mcap * sizeof(merge_slot));
    if (b->merges == NULL) {
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory for %zu merges", what, n_merges);
    }
    for (size_t i = 0; i < mcap; i++) {
        b->merges[i].key = UINT64_MAX;
    }
    char *buf = NULL;
    size_t cap_buf = 0;
    eg_status st = EG_OK;
    for (size_t j = 0; j < n_merges; j++) {
        const char *m = merges[j];
        size_t n = merge_lens[j];
        if (m == NULL && n != 0) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] is NULL", what, field, j);
            break;
        }
        const char *sp = n > 1 ? memchr(m + 1, ' ', n - 1) : NULL;
        if (sp == NULL) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] = '%.*s' is not two tokens separated by "
                           "a space", what, field, j, bpe_show_len(n), n > 0 ? m : "");
            break;
        }
        size_t nl = (size_t)(sp - m), nr = n - nl - 1;
        int32_t l = eg_bpe_lookup(b, m, nl), r = eg_bpe_lookup(b, sp + 1, nr);
        if (l < 0 || r < 0) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] = '%.*s' names '%.*s', which is not in the "
                           "vocabulary", what, field, j, bpe_show_len(n), m,
                           l < 0 ? bpe_show_len(nl) : bpe_show_len(nr), l < 0 ? m : sp + 1);
            break;
        }
        if (nl + nr > cap_buf) {
            char *p = realloc(buf, nl + nr);
            if (p == NULL) {
                st = eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
                break;
            }
            buf = p;
            cap_buf = nl + nr;
        }
        memcpy(buf, m, nl);
        memcpy(buf + nl, sp + 1, nr);
        int32_t merged = eg_bpe_lookup(b, buf, nl + nr);
        if (merged < 0) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] = '%.*s': the merged token '%.*s' is not in "
                           "the vocabulary", what, field, j, bpe_show_len(n), m, bpe_show_len(nl + nr), buf);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
        for (size_t s = bpe_merge_home(key, mcap - 1);; s = (s + 1) & (mcap - 1)) {
            if (b->merges[s].key == UINT64_MAX || b->merges[s].key == key) {
                /* a repeated merge takes its later rank (HF builds a map) */
                b->merges[s].key = key;
                b->merges[s].rank = (uint32_t)j;
                b->merges[s].merged = merged;
                break;
            }
        }
    }
    free(buf);
    return st;
}

eg_status eg_bpe_create(eg_bpe **out, const eg_bpe_config *cfg, const char *const *tokens,
                        const size_t *tok_lens, size_t n_tokens, const int32_t *types,
                        const float *scores, const char *const *merges, const size_t *merge_lens,
                        size_t n_merges, eg_err *err)
{
    *out = NULL;
    const char *what = cfg->what != NULL ? cfg->what : "tokenizer";
    const char *tf = cfg->tokens_field != NULL ? cfg->tokens_field : "tokenizer.ggml.tokens";
    const char *mf = cfg->merges_field != NULL ? cfg->merges_field : "tokenizer.ggml.merges";
    if (cfg->kind != EG_BPE_BYTELEVEL && cfg->kind != EG_BPE_SPM) {
        return eg_seterr(err, EG_EINVAL, "%s: unknown BPE kind %d", what, cfg->kind);
    }
    if (cfg->kind == EG_BPE_BYTELEVEL &&
        (cfg->pre < EG_BPE_PRE_GPT2 || cfg->pre > EG_BPE_PRE_SMOLLM)) {
        return eg_seterr(err, EG_EINVAL, "%s: unknown pre-tokenizer %d", what, cfg->pre);
    }
    if (n_tokens == 0 || n_tokens > (size_t)INT32_MAX / 4) {
        return eg_seterr(err, EG_EINVAL, "%s: %s: vocabulary size %zu out of range", what, tf,
                         n_tokens);
    }
    if (cfg->kind == EG_BPE_SPM && scores == NULL) {
        return eg_seterr(err, EG_EINVAL, "%s: SentencePiece BPE needs token scores", what);
    }
    if (cfg->kind == EG_BPE_BYTELEVEL && n_merges > 0 && (merges == NULL || merge_lens == NULL)) {
        return eg_seterr(err, EG_EINVAL, "%s: %s missing", what, mf);
    }
    int32_t sp_ids[4] = {cfg->bos_id, cfg->eos_id, cfg->unk_id, cfg->pad_id};
    static const char *sp_names[4] = {"bos_token_id", "eos_token_id", "unknown_token_id",
                                      "padding_token_id"};
    for (int i = 0; i < 4; i++) {
        if (sp_ids[i] < -1 || (sp_ids[i] >= 0 && (size_t)sp_ids[i] >= n_tokens)) {
            return eg_seterr(err, EG_EINVAL, "%s: %s %d is outside the vocabulary of %zu tokens",
                             what, sp_names[i], (int)sp_ids[i], n_tokens);
        }
    }
    if (cfg->add_bos && cfg->bos_id < 0) {
        return eg_seterr(err, EG_EINVAL, "%s: add_bos_token is set but there is no bos_token_id",
                         what);
    }
    if (cfg->add_eos && cfg->eos_id < 0) {
        return eg_seterr(err, EG_EINVAL, "%s: add_eos_token is set but there is no eos_token_id",
                         what);
    }
    eg_bpe *b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
    }
    b->cfg = *cfg;
    b->cfg.what = NULL;
    b->cfg.tokens_field = NULL;
    b->cfg.merges_field = NULL;
    b->n_tokens = n_tokens;
    size_t total = 0;
    eg_status st = EG_OK;
    for (size_t i = 0; i < n_tokens; i++) {
        if (tokens[i] == NULL || tok_lens[i] == 0 || tok_lens[i] > UINT32_MAX / 2) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] is empty or too long", what, tf, i);
            goto fail;
        }
        size_t bad;
        if (!eg_utf8_valid(tokens[i], tok_lens[i], &bad)) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] is not valid UTF-8 (byte %zu)", what, tf,
                           i, bad);
            goto fail;
        }
        if (types != NULL && (types[i] < EG_TOKTYPE_NORMAL || types[i] > EG_TOKTYPE_BYTE)) {
            st = eg_seterr(err, EG_EINVAL, "%s: token type %d of %s[%zu] is not 1..6", what,
                           (int)types[i], tf, i);
            goto fail;
        }
        if (scores != NULL && !isfinite(scores[i])) {
            st = eg_seterr(err, EG_EINVAL, "%s: the score of %s[%zu] is not finite", what, tf, i);
            goto fail;
        }
        if (eg_add_ovf(total, tok_lens[i], &total)) {
            st = eg_seterr(err, EG_EOVERFLOW, "%s: vocabulary too large", what);
            goto fail;
        }
    }
    size_t cap = 16;
    while (cap < 2 * n_tokens) {
        cap *= 2;
    }
    b->cap = cap;
    b->pool = malloc(total);
    b->tok_off = malloc(n_tokens * sizeof(size_t));
    b->tok_len = malloc(n_tokens * sizeof(uint32_t));
    b->types = malloc(n_tokens);
    b->slots = malloc(cap * sizeof(int32_t));
    b->slot_hash = malloc(cap * sizeof(uint32_t));
    if (scores != NULL) {
        b->scores = malloc(n_tokens * sizeof(float));
    }
    if (b->pool == NULL || b->tok_off == NULL || b->tok_len == NULL || b->types == NULL ||
        b->slots == NULL || b->slot_hash == NULL || (scores != NULL && b->scores == NULL)) {
        st = eg_seterr(err, EG_ENOMEM, "%s: out of memory for %zu tokens", what, n_tokens);
        goto fail;
    }
    for (size_t i = 0; i < cap; i++) {
        b->slots[i] = -1;
    }
    size_t off = 0, n_added = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        b->tok_off[i] = off;
        b->tok_len[i] = (uint32_t)tok_lens[i];
        b->types[i] = (uint8_t)(types != NULL ? types[i] : EG_TOKTYPE_NORMAL);
        if (scores != NULL) {
            b->scores[i] = scores[i];
        }
        memcpy(b->pool + off, tokens[i], tok_lens[i]);
        off += tok_lens[i];
        n_added += bpe_is_added_type(b->types[i]);
        uint32_t h = bpe_fnv1a(tokens[i], tok_lens[i]);
        for (size_t s = h & (cap - 1);; s = (s + 1) & (cap - 1)) {
            int32_t id = b->slots[s];
            if (id < 0) {
                b->slots[s] = (int32_t)i;
                b->slot_hash[s] = h;
                break;
            }
            if (b->slot_hash[s] == h && b->tok_len[id] == tok_lens[i] &&
                memcmp(b->pool + b->tok_off[id], tokens[i], tok_lens[i]) == 0) {
                st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] = '%.*s' repeats %s[%d]", what, tf, i,
                               bpe_show_len(tok_lens[i]), tokens[i], tf, (int)id);
                goto fail;
            }
        }
    }
    if (n_added > 0) {
        b->added = malloc(n_added * sizeof(int32_t));
        if (b->added == NULL) {
            st = eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
            goto fail;
        }
        for (size_t i = 0; i < n_tokens; i++) {
            if (bpe_is_added_type(b->types[i])) {
                b->added[b->n_added++] = (int32_t)i;
                b->added_first[(uint8_t)b->pool[b->tok_off[i]]] = 1;
            }
        }
    }
    if (cfg->kind == EG_BPE_BYTELEVEL) {
        gpt2_byte_chars(b->byte_char);
        for (int c = 0; c < 256; c++) {
            uint8_t u[4];
            size_t k = eg_utf8_encode1(b->byte_char[c], u);
            b->byte_id[c] = eg_bpe_lookup(b, (const char *)u, k);
        }
        st = bpe_add_merges(b, what, mf, merges, merge_lens, n_merges, err);
        if (st != EG_OK) {
            goto fail;
        }
    } else {
        for (int c = 0; c < 256; c++) {
            char name[8];
            snprintf(name, sizeof name, "<0x%02X>", c);
            b->byte_tok[c] = eg_bpe_lookup(b, name, 6);
        }
    }
    *out = b;
    return EG_OK;
fail:
    eg_bpe_free(b);
    return st;
}

/* ---------------------------------------------------------------- encode */

static int encode_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n,
                          size_t limit, int *prev_special)
{
    if (n == 0 || s->n_ids >= limit) {
        return 0;
    }
    int rc;
    if (b->cfg.kind == EG_BPE_SPM) {
        rc = eg_bpe_spm_segment(b, s, t, n, b->cfg.add_space_prefix && *prev_special);
    } else {
        rc = eg_bpe_bytelevel_segment(b, s, t, n, limit);
    }
    *prev_special = 0;
    return rc;
}

/* All ids of one text (without BOS/EOS), at most `limit` of them kept. */
static int encode_text(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n, size_t limit)
{
    s->n_ids = 0;
    size_t seg = 0, i = 0;
    int prev_special = 1;
    while (i < n && s->n_ids < limit) {
        if (b->n_added > 0 && b->added_first[t[i]]) {
            size_t best = 0;
            int32_t best_id = -1;
            for (size_t k = 0; k < b->n_added; k++) {
                int32_t id = b->added[k];
                size_t len = b->tok_len[id];
                if (len > best && len <= n - i && memcmp(t + i, b->pool + b->tok_off[id], len) == 0) {
                    best = len;
                    best_id = id;
                }
            }
            if (best > 0) {
                int rc = encode_segment(b, s, t + seg, i - seg, limit, &prev_special);
                if (rc != 0) {
                    return rc;
                }
                if (s->n_ids < limit && bpe_push_id(s, best_id) != 0) {
                    return -1;
                }
                prev_special = 1;
                i += best;
                seg = i;
                continue;
            }
        }
        i++;
    }
    if (seg < n) {
        int rc = encode_segment(b, s, t + seg, n - seg, limit, &prev_special);
        if (rc != 0) {
            return rc;
        }
    }
    if (s->n_ids > limit) {
        s->n_ids = limit;
    }
    return 0;
}

void eg_bpe_free_batch(int32_t **ids, size_t n_texts)
{
    if (ids == NULL) {
        return;
    }
    for (size_t i = 0; i < n_texts; i++) {
        free(ids[i]);
        ids[i] = NULL;
    }
}

eg_status eg_bpe_encode_batch(const eg_bpe *b, const char *const *texts, const size_t *lens,
                              size_t n_texts, size_t max_length, int add_special, int32_t **ids,
                              size_t *out_lens, eg_err *err)
{
    int bos = add_special && b->cfg.add_bos, eos = add_special && b->cfg.add_eos;
    size_t n_spec = (size_t)bos + (size_t)eos;
    size_t limit = SIZE_MAX;
    for (size_t i = 0; i < n_texts; i++) {
        ids[i] = NULL;
        out_lens[i] = 0;
    }
    if (max_length > 0) {
        if (max_length < n_spec) {
            return eg_seterr(err, EG_EINVAL, "max_length %zu is too small: it must be >= %zu to "
                             "hold the special tokens", max_length, n_spec);
        }
        limit = max_length - n_spec;
    }
    for (size_t i = 0; i < n_texts; i++) {
        size_t bad;
        if (texts[i] == NULL && lens[i] != 0) {
            return eg_seterr(err, EG_EINVAL, "text %zu: NULL with non-zero length", i);
        }
        if (lens[i] > 0 && !eg_utf8_valid(texts[i], lens[i], &bad)) {
            return eg_seterr(err, EG_EINVAL, "text %zu: invalid UTF-8 at byte %zu", i, bad);
        }
        if (lens[i] > (size_t)INT32_MAX / 4) {
            return eg_seterr(err, EG_EINVAL, "text %zu: %zu bytes is too long (at most %d)", i,
                             lens[i], INT32_MAX / 4);
        }
    }
    int failed = 0; /* set (to 1) by any thread on ENOMEM; a flag, not a count */
#pragma omp parallel
    {
        bpe_scratch s;
        memset(&s, 0, sizeof(s));
#pragma omp for schedule(dynamic, 4)
        for (size_t i = 0; i < n_texts; i++) {
            int bad = 0;
#pragma omp atomic read
            bad = failed;
            if (bad) {
                continue;
            }
            const uint8_t *t = (const uint8_t *)(lens[i] > 0 ? texts[i] : "");
            int rc = encode_text(b, &s, t, lens[i], limit);
            size_t total = s.n_ids + n_spec;
            int32_t *o = NULL;
            if (rc == 0 && total > 0) {
                o = malloc(total * sizeof(int32_t));
                if (o == NULL) {
                    rc = -1;
                }
            }
            if (rc != 0) {
#pragma omp atomic write
                failed = 1;
                continue;
            }
            size_t k = 0;
            if (bos) {
                o[k++] = b->cfg.bos_id;
            }
            if (s.n_ids > 0) {
                memcpy(o + k, s.ids, s.n_ids * sizeof(int32_t));
                k += s.n_ids;
            }
            if (eos) {
                o[k++] = b->cfg.eos_id;
            }
            ids[i] = o;
            out_lens[i] = total;
        }
        bpe_scratch_free(&s);
    }
    if (failed) {
        eg_bpe_free_batch(ids, n_texts);
        return eg_seterr(err, EG_ENOMEM, "bpe: out of memory while tokenizing");
    }
    return EG_OK;
}

