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
 */
#include "eg_bpe.h"
#include "eg_text.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key;    /* (left << 32) | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t merged;
} merge_slot;

struct eg_bpe {
    eg_bpe_config cfg;
    size_t n_tokens;
    char *pool;          /* token bytes, concatenated               */
    size_t *tok_off;     /* [n_tokens]                              */
    uint32_t *tok_len;   /* [n_tokens]                              */
    uint8_t *types;      /* [n_tokens] EG_TOKTYPE_*                 */
    float *scores;       /* [n_tokens] (SPM) or NULL                */
    size_t cap;          /* token hash slots, power of two          */
    int32_t *slots;
    uint32_t *slot_hash;
    size_t mcap;         /* merge hash slots, power of two          */
    merge_slot *merges;
    int32_t byte_id[256];    /* byte-level: token of each byte's character */
    uint16_t byte_char[256]; /* byte-level: GPT-2 byte-to-unicode       */
    int32_t byte_tok[256];   /* SPM: <0xXX> tokens, or -1             */
    size_t n_added;          /* CONTROL and USER_DEFINED tokens        */
    int32_t *added;          /* their ids                              */
    uint8_t added_first[256];
};

/* ------------------------------------------------------------- hashing */

static uint32_t fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    }
    return h;
}

int32_t eg_bpe_lookup(const eg_bpe *b, const char *s, size_t n)
{
    uint32_t h = fnv1a(s, n);
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

static size_t merge_home(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static const merge_slot *merge_find(const eg_bpe *b, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t mask = b->mcap - 1;
    for (size_t i = merge_home(key, mask);; i = (i + 1) & mask) {
        if (b->merges[i].key == key) {
            return &b->merges[i];
        }
        if (b->merges[i].key == UINT64_MAX) {
            return NULL;
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

/* Tokens matched as whole strings in the raw text: CONTROL, USER_DEFINED and
 * UNKNOWN (llama.cpp's special-token cache; HF's added tokens, "<unk>"
 * included). */
static int is_added_type(int t)
{
    return t == EG_TOKTYPE_CONTROL || t == EG_TOKTYPE_USER_DEFINED || t == EG_TOKTYPE_UNKNOWN;
}

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

/* Show at most 40 bytes of a token in a message (valid UTF-8 assumed). */
static int show_len(size_t n)
{
    return n > 40 ? 40 : (int)n;
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
                           "a space", what, field, j, show_len(n), n > 0 ? m : "");
            break;
        }
        size_t nl = (size_t)(sp - m), nr = n - nl - 1;
        int32_t l = eg_bpe_lookup(b, m, nl), r = eg_bpe_lookup(b, sp + 1, nr);
        if (l < 0 || r < 0) {
            st = eg_seterr(err, EG_EINVAL, "%s: %s[%zu] = '%.*s' names '%.*s', which is not in the "
                           "vocabulary", what, field, j, show_len(n), m,
                           l < 0 ? show_len(nl) : show_len(nr), l < 0 ? m : sp + 1);
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
                           "the vocabulary", what, field, j, show_len(n), m, show_len(nl + nr), buf);
            break;
        }
        uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
        for (size_t s = merge_home(key, mcap - 1);; s = (s + 1) & (mcap - 1)) {
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
        n_added += is_added_type(b->types[i]);
        uint32_t h = fnv1a(tokens[i], tok_lens[i]);
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
                               show_len(tok_lens[i]), tokens[i], tf, (int)id);
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
            if (is_added_type(b->types[i])) {
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

/* ------------------------------------------------------------ per-thread */

typedef struct {
    uint32_t rank;
    uint32_t pos;
    int32_t l, r;
} bl_ent; /* byte-level heap entry: pair (l, r) starting at symbol pos */

typedef struct {
    float score;
    uint32_t left, right, size;
} spm_ent;

typedef struct {
    uint32_t *cps;
    size_t *boff;
    size_t cap_cps, cap_boff;
    int32_t *sid;        /* symbols: id (byte-level)              */
    uint32_t *soff;      /* symbols: byte offset, length (SPM)     */
    uint32_t *slen;
    int32_t *prev, *next;
    size_t cap_sym;
    void *heap;
    size_t n_heap, cap_heap;
    char *buf;           /* mapped / escaped text                  */
    size_t cap_buf;
    int32_t *ids;
    size_t n_ids, cap_ids;
} bpe_scratch;

static void scratch_free(bpe_scratch *s)
{
    free(s->cps);
    free(s->boff);
    free(s->sid);
    free(s->soff);
    free(s->slen);
    free(s->prev);
    free(s->next);
    free(s->heap);
    free(s->buf);
    free(s->ids);
}

/* Grow *buf to hold at least `need` elements of `size` bytes. 0 on success. */
static int grow(void **buf, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap) {
        return 0;
    }
    size_t nc = *cap < 64 ? 64 : *cap;
    while (nc < need) {
        if (eg_mul_ovf(nc, 2, &nc)) {
            return -1;
        }
    }
    size_t bytes;
    if (eg_mul_ovf(nc, size, &bytes)) {
        return -1;
    }
    void *p = realloc(*buf, bytes);
    if (p == NULL) {
        return -1;
    }
    *buf = p;
    *cap = nc;
    return 0;
}

/* Room for n symbols (every array grown together). */
static int grow_sym(bpe_scratch *s, size_t n)
{
    if (n <= s->cap_sym) {
        return 0;
    }
    size_t c1 = s->cap_sym, c2 = s->cap_sym, c3 = s->cap_sym, c4 = s->cap_sym, c5 = s->cap_sym;
    if (grow((void **)&s->prev, &c1, n, sizeof(int32_t)) != 0 ||
        grow((void **)&s->next, &c2, n, sizeof(int32_t)) != 0 ||
        grow((void **)&s->sid, &c3, n, sizeof(int32_t)) != 0 ||
        grow((void **)&s->soff, &c4, n, sizeof(uint32_t)) != 0 ||
        grow((void **)&s->slen, &c5, n, sizeof(uint32_t)) != 0) {
        return -1; /* the arrays grown so far keep their larger size: harmless */
    }
    s->cap_sym = c1;
    return 0;
}

static int push_id(bpe_scratch *s, int32_t id)
{
    if (s->n_ids == s->cap_ids &&
        grow((void **)&s->ids, &s->cap_ids, s->n_ids + 1, sizeof(int32_t)) != 0) {
        return -1;
    }
    s->ids[s->n_ids++] = id;
    return 0;
}

/* ---------------------------------------------------- byte-level merges */

static int bl_less(const bl_ent *a, const bl_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int bl_push(bpe_scratch *s, bl_ent e)
{
    if (s->n_heap == s->cap_heap &&
        grow(&s->heap, &s->cap_heap, s->n_heap + 1, sizeof(bl_ent)) != 0) {
        return -1;
    }
    bl_ent *h = s->heap;
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bl_less(&e, &h[p])) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
    return 0;
}

static bl_ent bl_pop(bpe_scratch *s)
{
    bl_ent *h = s->heap;
    bl_ent top = h[0];
    bl_ent last = h[--s->n_heap];
    size_t n = s->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && bl_less(&h[c + 1], &h[c])) {
            c++;
        }
        if (!bl_less(&h[c], &last)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    if (n > 0) {
        h[i] = last;
    }
    return top;
}

static int bl_try(const eg_bpe *b, bpe_scratch *s, int32_t pos)
{
    if (pos < 0 || s->next[pos] < 0) {
        return 0;
    }
    int32_t nx = s->next[pos];
    const merge_slot *m = merge_find(b, s->sid[pos], s->sid[nx]);
    if (m == NULL) {
        return 0;
    }
    bl_ent e = {m->rank, (uint32_t)pos, s->sid[pos], s->sid[nx]};
    return bl_push(s, e);
}

/* Byte-level BPE of the bytes t[0..n), ids appended to s->ids. */
static int bytelevel_word(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n)
{
    if (b->cfg.ignore_merges) {
        if (grow((void **)&s->buf, &s->cap_buf, 2 * n, 1) != 0) {
            return -1;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            k += eg_utf8_encode1(b->byte_char[t[i]], (uint8_t *)s->buf + k);
        }
        int32_t id = eg_bpe_lookup(b, s->buf, k);
        if (id >= 0) {
            return push_id(s, id);
        }
    }
    if (n > INT32_MAX / 2 || grow_sym(s, n) != 0) {
        return -1;
    }
    /* symbols: the tokens of the bytes; a byte without one is unk
     * (byte_unk) or dropped (HF's BPE without unk_token, llama.cpp), and its
     * neighbours become adjacent, as in HF */
    int32_t m = 0;
    for (size_t i = 0; i < n; i++) {
        int32_t id = b->byte_id[t[i]];
        if (id < 0 && b->cfg.byte_unk) {
            id = b->cfg.unk_id;
        }
        if (id < 0) {
            continue;
        }
        s->sid[m] = id;
        s->prev[m] = m - 1;
        s->next[m] = m + 1;
        m++;
    }
    if (m == 0) {
        return 0;
    }
    s->next[m - 1] = -1;
    s->n_heap = 0;
    for (int32_t i = 0; i + 1 < m; i++) {
        if (bl_try(b, s, i) != 0) {
            return -1;
        }
    }
    while (s->n_heap > 0) {
        bl_ent e = bl_pop(s);
        int32_t nx = s->next[e.pos];
        if (s->sid[e.pos] != e.l || nx < 0 || s->sid[nx] != e.r || s->prev[nx] != (int32_t)e.pos) {
            continue; /* stale: a neighbour was merged since */
        }
        const merge_slot *ms = merge_find(b, e.l, e.r);
        s->sid[e.pos] = ms->merged;
        s->sid[nx] = -1;
        s->next[e.pos] = s->next[nx];
        if (s->next[nx] >= 0) {
            s->prev[s->next[nx]] = (int32_t)e.pos;
        }
        if (bl_try(b, s, s->prev[e.pos]) != 0 || bl_try(b, s, (int32_t)e.pos) != 0) {
            return -1;
        }
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        if (push_id(s, s->sid[i]) != 0) {
            return -1;
        }
    }
    return 0;
}

/* ------------------------------------------------------- pre-tokenizers */

static int is_l(uint32_t c)
{
    return (eg_uni_flags(c) & EG_UNI_LETTER) != 0;
}

static int is_n(uint32_t c)
{
    return (eg_uni_flags(c) & EG_UNI_NUMBER) != 0;
}

static int is_s(uint32_t c)
{
    return (eg_uni_flags(c) & EG_UNI_PWS) != 0;
}

/* [^\s\p{L}\p{N}] */
static int is_o(uint32_t c)
{
    return (eg_uni_flags(c) & (EG_UNI_LETTER | EG_UNI_NUMBER | EG_UNI_PWS)) == 0;
}

static int is_nl(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* 's|'t|'re|'ve|'m|'ll|'d at c[i] (c[i] == '\''): its length or 0.
 * Case-insensitive as Oniguruma's (?i) (which also folds U+017F to s). */
static size_t contraction(const uint32_t *c, size_t n, size_t i, int icase)
{
    if (i + 1 >= n) {
        return 0;
    }
    uint32_t d = c[i + 1];
    if (icase) {
        if (d == 0x17F) {
            d = 's';
        } else if (d >= 'A' && d <= 'Z') {
            d += 32;
        }
    }
    if (d == 's' || d == 't' || d == 'm' || d == 'd') {
        return 2;
    }
    if (i + 2 >= n) {
        return 0;
    }
    uint32_t e = c[i + 2];
    if (icase && e >= 'A' && e <= 'Z') {
        e += 32;
    }
    if ((d == 'r' && e == 'e') || (d == 'v' && e == 'e') || (d == 'l' && e == 'l')) {
        return 3;
    }
    return 0;
}

/* \s+(?!\S)|\s+ at a whitespace c[i]: the end of the match. */
static size_t ws_run(const uint32_t *c, size_t n, size_t i)
{
    size_t k = i;
    while (k < n && is_s(c[k])) {
        k++;
    }
    if (k == n) {
        return n;
    }
    return k - i >= 2 ? k - 1 : i + 1;
}

/* End of the gpt-2 regex's match at c[i] (i < n). */
static size_t gpt2_next(const uint32_t *c, size_t n, size_t i)
{
    if (c[i] == '\'') {
        size_t k = contraction(c, n, i, 0);
        if (k > 0) {
            return i + k;
        }
    }
    size_t j = i + (c[i] == ' ');
    if (j < n) {
        int (*cls)(uint32_t) = is_l(c[j]) ? is_l : is_n(c[j]) ? is_n : is_o(c[j]) ? is_o : NULL;
        if (cls != NULL) {
            size_t k = j + 1;
            while (k < n && cls(c[k])) {
                k++;
            }
            return k;
        }
    }
    if (is_s(c[i])) {
        return ws_run(c, n, i);
    }
    return i + 1;
}

/* End of the llama3 (max_digits 3) / qwen2 (1) regex's match at c[i]. */
static size_t llama3_next(const uint32_t *c, size_t n, size_t i, size_t max_digits)
{
    if (c[i] == '\'') {
        size_t k = contraction(c, n, i, 1);
        if (k > 0) {
            return i + k;
        }
    }
    size_t j = i;
    if (!is_l(c[i]) && !is_n(c[i]) && !is_nl(c[i]) && i + 1 < n && is_l(c[i + 1])) {
        j = i + 1; /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    }
    if (is_l(c[j])) {
        size_t k = j + 1;
        while (k < n && is_l(c[k])) {
            k++;
        }
        return k;
    }
    if (is_n(c[i])) {
        size_t k = i + 1;
        while (k < n && k - i < max_digits && is_n(c[k])) {
            k++;
        }
        return k;
    }
    j = i + (c[i] == ' ');
    if (j < n && is_o(c[j])) { /* ?[^\s\p{L}\p{N}]+[\r\n]* */
        size_t k = j + 1;
        while (k < n && is_o(c[k])) {
            k++;
        }
        while (k < n && is_nl(c[k])) {
            k++;
        }
        return k;
    }
    if (is_s(c[i])) {
        /* \s*[\r\n]+ ends after the run's last \r or \n */
        size_t k = i, last = SIZE_MAX;
        while (k < n && is_s(c[k])) {
            if (is_nl(c[k])) {
                last = k;
            }
            k++;
        }
        if (last != SIZE_MAX) {
            return last + 1;
        }
        return ws_run(c, n, i);
    }
    return i + 1;
}

/* Tokenize the pieces of the code points c[a..e) (bytes t) with the
 * pre-tokenizer's scanner. */
static int pretok_range(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t a, size_t e,
                        size_t limit)
{
    const uint32_t *c = s->cps + a;
    size_t n = e - a, i = 0;
    while (i < n && s->n_ids < limit) {
        size_t k;
        switch (b->cfg.pre) {
        case EG_BPE_PRE_LLAMA3:
            k = llama3_next(c, n, i, 3);
            break;
        case EG_BPE_PRE_QWEN2:
            k = llama3_next(c, n, i, 1);
            break;
        default:
            k = gpt2_next(c, n, i);
            break;
        }
        size_t b0 = s->boff[a + i], b1 = s->boff[a + k];
        if (bytelevel_word(b, s, t + b0, b1 - b0) != 0) {
            return -1;
        }
        i = k;
    }
    return 0;
}

/* Byte-level: pre-tokenize and BPE the valid UTF-8 t[0..n) (no special
 * tokens inside), stopping once s->n_ids >= limit. */
static int bytelevel_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n,
                             size_t limit)
{
    if (grow((void **)&s->cps, &s->cap_cps, n + 1, sizeof(uint32_t)) != 0 ||
        grow((void **)&s->boff, &s->cap_boff, n + 1, sizeof(size_t)) != 0) {
        return -1;
    }
    size_t m = 0, i = 0;
    while (i < n) {
        uint32_t cp;
        size_t k = eg_utf8_decode1(t + i, n - i, &cp);
        if (k == 0) {
            return -2; /* cannot happen: validated by the caller */
        }
        s->cps[m] = cp;
        s->boff[m] = i;
        m++;
        i += k;
    }
    s->boff[m] = n;
    if (b->cfg.pre != EG_BPE_PRE_SMOLLM) {
        return pretok_range(b, s, t, 0, m, limit);
    }
    /* Digits(individual_digits=true), then the gpt-2 regex on the rest */
    size_t a = 0;
    while (a < m && s->n_ids < limit) {
        if (is_n(s->cps[a])) {
            if (bytelevel_word(b, s, t + s->boff[a], s->boff[a + 1] - s->boff[a]) != 0) {
                return -1;
            }
            a++;
            continue;
        }
        size_t e = a + 1;
        while (e < m && !is_n(s->cps[e])) {
            e++;
        }
        if (pretok_range(b, s, t, a, e, limit) != 0) {
            return -1;
        }
        a = e;
    }
    return 0;
}

/* ------------------------------------------------------ SentencePiece BPE */

static int spm_less(const spm_ent *a, const spm_ent *b)
{
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int spm_push(bpe_scratch *s, spm_ent e)
{
    if (s->n_heap == s->cap_heap &&
        grow(&s->heap, &s->cap_heap, s->n_heap + 1, sizeof(spm_ent)) != 0) {
        return -1;
    }
    spm_ent *h = s->heap;
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!spm_less(&e, &h[p])) {
            break;
        }
        h[i] = h[p];
        i = p;
    }
    h[i] = e;
    return 0;
}

static spm_ent spm_pop(bpe_scratch *s)
{
    spm_ent *h = s->heap;
    spm_ent top = h[0];
    spm_ent last = h[--s->n_heap];
    size_t n = s->n_heap, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n) {
            break;
        }
        if (c + 1 < n && spm_less(&h[c + 1], &h[c])) {
            c++;
        }
        if (!spm_less(&h[c], &last)) {
            break;
        }
        h[i] = h[c];
        i = c;
    }
    if (n > 0) {
        h[i] = last;
    }
    return top;
}

static int spm_try(const eg_bpe *b, bpe_scratch *s, int32_t l, int32_t r)
{
    if (l < 0 || r < 0) {
        return 0;
    }
    size_t len = (size_t)s->slen[l] + s->slen[r];
    int32_t id = eg_bpe_lookup(b, s->buf + s->soff[l], len);
    if (id < 0) {
        return 0;
    }
    spm_ent e = {b->scores[id], (uint32_t)l, (uint32_t)r, (uint32_t)len};
    return spm_push(s, e);
}

/* SentencePiece BPE of the valid UTF-8 t[0..n), ids appended to s->ids. */
static int spm_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n, int prefix)
{
    size_t need;
    if (eg_mul_ovf(n + 1, 3, &need) || need > UINT32_MAX ||
        grow((void **)&s->buf, &s->cap_buf, need, 1) != 0) {
        return -1;
    }
    static const char U2581[3] = {(char)0xE2, (char)0x96, (char)0x81};
    size_t k = 0;
    if (prefix) {
        memcpy(s->buf, U2581, 3);
        k = 3;
    }
    for (size_t i = 0; i < n; i++) {
        if (t[i] == ' ') {
            memcpy(s->buf + k, U2581, 3);
            k += 3;
        } else {
            s->buf[k++] = (char)t[i];
        }
    }
    if (grow_sym(s, k) != 0) {
        return -1;
    }
    int32_t m = 0;
    for (size_t i = 0; i < k;) {
        uint32_t cp;
        size_t len = eg_utf8_decode1((const uint8_t *)s->buf + i, k - i, &cp);
        if (len == 0) {
            return -2; /* cannot happen: validated by the caller */
        }
        s->soff[m] = (uint32_t)i;
        s->slen[m] = (uint32_t)len;
        s->prev[m] = m - 1;
        s->next[m] = m + 1;
        m++;
        i += len;
    }
    if (m == 0) {
        return 0;
    }
    s->next[m - 1] = -1;
    s->n_heap = 0;
    for (int32_t i = 0; i + 1 < m; i++) {
        if (spm_try(b, s, i, i + 1) != 0) {
            return -1;
        }
    }
    while (s->n_heap > 0) {
        spm_ent e = spm_pop(s);
        if (s->slen[e.left] == 0 || s->slen[e.right] == 0 ||
            s->slen[e.left] + s->slen[e.right] != e.size) {
            continue; /* stale: one side was merged since */
        }
        int32_t l = (int32_t)e.left, r = (int32_t)e.right;
        s->slen[l] += s->slen[r];
        s->slen[r] = 0;
        s->next[l] = s->next[r];
        if (s->next[r] >= 0) {
            s->prev[s->next[r]] = l;
        }
        if (spm_try(b, s, s->prev[l], l) != 0 || spm_try(b, s, l, s->next[l]) != 0) {
            return -1;
        }
    }
    for (int32_t i = 0; i >= 0; i = s->next[i]) {
        const char *p = s->buf + s->soff[i];
        int32_t id = eg_bpe_lookup(b, p, s->slen[i]);
        if (id >= 0) {
            if (push_id(s, id) != 0) {
                return -1;
            }
            continue;
        }
        for (uint32_t j = 0; j < s->slen[i]; j++) { /* byte fallback */
            int32_t bt = b->byte_tok[(uint8_t)p[j]];
            if (bt < 0) {
                bt = b->cfg.unk_id;
            }
            if (bt >= 0 && push_id(s, bt) != 0) {
                return -1;
            }
        }
    }
    return 0;
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
        rc = spm_segment(b, s, t, n, b->cfg.add_space_prefix && *prev_special);
    } else {
        rc = bytelevel_segment(b, s, t, n, limit);
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
                if (s->n_ids < limit && push_id(s, best_id) != 0) {
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
        scratch_free(&s);
    }
    if (failed) {
        eg_bpe_free_batch(ids, n_texts);
        return eg_seterr(err, EG_ENOMEM, "bpe: out of memory while tokenizing");
    }
    return EG_OK;
}

/* ---------------------------------------------------------------- GGUF */

/* An optional token id key: *id stays -1 when absent. */
static eg_status gguf_opt_id(const eg_gguf_file *f, const char *key, size_t n_tokens,
                             int32_t *id, eg_err *err)
{
    *id = -1;
    if (eg_gguf_find_kv(f, key) == NULL) {
        return EG_OK;
    }
    int64_t v;
    eg_status st = eg_gguf_get_int(f, key, &v, err);
    if (st != EG_OK) {
        return st;
    }
    if (v < 0 || (uint64_t)v >= n_tokens) {
        return eg_seterr(err, EG_EINVAL, "%s: %s = %lld is outside the vocabulary of %zu tokens",
                         f->what, key, (long long)v, n_tokens);
    }
    *id = (int32_t)v;
    return EG_OK;
}

static eg_status gguf_opt_bool(const eg_gguf_file *f, const char *key, int *out, eg_err *err)
{
    if (eg_gguf_find_kv(f, key) == NULL) {
        return EG_OK;
    }
    return eg_gguf_get_bool(f, key, out, err);
}

/* A metadata array of n elements of the right kind, or an error naming it. */
static eg_status gguf_array(const eg_gguf_file *f, const char *key, int want_str,
                            const eg_gguf_kv **out, eg_err *err)
{
    const eg_gguf_kv *kv = eg_gguf_find_kv(f, key);
    *out = kv;
    if (kv == NULL) {
        return eg_seterr(err, EG_EINVAL, "%s: metadata key %s is missing", f->what, key);
    }
    int ok = kv->type == EG_GGUF_ARRAY &&
             (want_str ? kv->elem_type == EG_GGUF_STRING
                       : kv->elem_type != EG_GGUF_STRING && kv->elem_type != EG_GGUF_BOOL);
    if (!ok) {
        return eg_seterr(err, EG_EINVAL, "%s: metadata key %s must be an array of %s, not %s%s%s",
                         f->what, key, want_str ? "strings" : "numbers",
                         kv->type == EG_GGUF_ARRAY ? "an array of " : "",
                         eg_gguf_vtype_name(kv->elem_type), kv->type == EG_GGUF_ARRAY ? "" : "");
    }
    return EG_OK;
}

eg_status eg_bpe_from_gguf(eg_bpe **out, const eg_gguf_file *f, eg_err *err)
{
    *out = NULL;
    eg_bpe_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.what = f->what;
    cfg.bos_id = cfg.eos_id = cfg.unk_id = cfg.pad_id = -1;
    eg_gguf_str model;
    eg_status st = eg_gguf_get_str(f, "tokenizer.ggml.model", &model, err);
    if (st != EG_OK) {
        return st;
    }
    if (model.len == 4 && memcmp(model.s, "gpt2", 4) == 0) {
        cfg.kind = EG_BPE_BYTELEVEL;
        eg_gguf_str pre;
        st = eg_gguf_get_str(f, "tokenizer.ggml.pre", &pre, err);
        if (st != EG_OK) {
            return st;
        }
        cfg.pre = eg_bpe_pre_from_name(pre.s, pre.len, &cfg.ignore_merges);
        if (cfg.pre == 0) {
            return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.pre = '%.*s' is not supported "
                             "(supported: gpt-2, llama-bpe, qwen2, smollm and the names llama.cpp "
                             "gives the same regexes, see docs/TOKENIZERS.md)", f->what,
                             show_len(pre.len), pre.s);
        }
    } else if (model.len == 5 && memcmp(model.s, "llama", 5) == 0) {
        cfg.kind = EG_BPE_SPM;
        cfg.add_space_prefix = 1;
    } else {
        return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.model = '%.*s' is not supported "
                         "(gpt2: byte-level BPE, llama: SentencePiece BPE)", f->what,
                         show_len(model.len), model.s);
    }
    const eg_gguf_kv *tk, *ty = NULL, *sc = NULL, *mg = NULL;
    st = gguf_array(f, "tokenizer.ggml.tokens", 1, &tk, err);
    if (st != EG_OK) {
        return st;
    }
    size_t n = tk->n;
    if (n == 0 || n > (size_t)INT32_MAX / 4) {
        return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.tokens: vocabulary size %zu out of "
                         "range", f->what, n);
    }
    if (eg_gguf_find_kv(f, "tokenizer.ggml.token_type") != NULL) {
        st = gguf_array(f, "tokenizer.ggml.token_type", 0, &ty, err);
        if (st == EG_OK && ty->n != n) {
            st = eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.token_type has %zu entries for %zu "
                           "tokens", f->what, ty->n, n);
        }
        if (st != EG_OK) {
            return st;
        }
    }
    if (cfg.kind == EG_BPE_SPM || eg_gguf_find_kv(f, "tokenizer.ggml.scores") != NULL) {
        st = gguf_array(f, "tokenizer.ggml.scores", 0, &sc, err);
        if (st == EG_OK && sc->n != n) {
            st = eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.scores has %zu entries for %zu "
                           "tokens", f->what, sc->n, n);
        }
        if (st != EG_OK) {
            return st;
        }
    }
    if (cfg.kind == EG_BPE_BYTELEVEL) {
        st = gguf_array(f, "tokenizer.ggml.merges", 1, &mg, err);
        if (st != EG_OK) {
            return st;
        }
    }
    if ((st = gguf_opt_id(f, "tokenizer.ggml.bos_token_id", n, &cfg.bos_id, err)) != EG_OK ||
        (st = gguf_opt_id(f, "tokenizer.ggml.eos_token_id", n, &cfg.eos_id, err)) != EG_OK ||
        (st = gguf_opt_id(f, "tokenizer.ggml.unknown_token_id", n, &cfg.unk_id, err)) != EG_OK ||
        (st = gguf_opt_id(f, "tokenizer.ggml.padding_token_id", n, &cfg.pad_id, err)) != EG_OK) {
        return st;
    }
    /* llama.cpp's defaults: BOS for SentencePiece and Llama-3, then the keys */
    cfg.add_bos = (cfg.kind == EG_BPE_SPM || cfg.pre == EG_BPE_PRE_LLAMA3) && cfg.bos_id >= 0;
    if ((st = gguf_opt_bool(f, "tokenizer.ggml.add_bos_token", &cfg.add_bos, err)) != EG_OK ||
        (st = gguf_opt_bool(f, "tokenizer.ggml.add_eos_token", &cfg.add_eos, err)) != EG_OK ||
        (st = gguf_opt_bool(f, "tokenizer.ggml.add_space_prefix", &cfg.add_space_prefix, err)) !=
            EG_OK) {
        return st;
    }
    if (cfg.kind != EG_BPE_SPM) {
        cfg.add_space_prefix = 0;
    }
    if (cfg.add_bos && cfg.bos_id < 0) {
        return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.add_bos_token is true but "
                         "tokenizer.ggml.bos_token_id is missing", f->what);
    }
    if (cfg.add_eos && cfg.eos_id < 0) {
        return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.add_eos_token is true but "
                         "tokenizer.ggml.eos_token_id is missing", f->what);
    }
    const char **tp = malloc(n * sizeof(char *));
    size_t *tl = malloc(n * sizeof(size_t));
    int32_t *types = ty != NULL ? malloc(n * sizeof(int32_t)) : NULL;
    float *scores = sc != NULL ? malloc(n * sizeof(float)) : NULL;
    size_t nm = mg != NULL ? mg->n : 0;
    const char **mp = nm > 0 ? malloc(nm * sizeof(char *)) : NULL;
    size_t *ml = nm > 0 ? malloc(nm * sizeof(size_t)) : NULL;
    if (tp == NULL || tl == NULL || (ty != NULL && types == NULL) ||
        (sc != NULL && scores == NULL) || (nm > 0 && (mp == NULL || ml == NULL))) {
        st = eg_seterr(err, EG_ENOMEM, "%s: out of memory for the vocabulary", f->what);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        tp[i] = tk->strs[i].s;
        tl[i] = tk->strs[i].len;
        if (ty != NULL) {
            int64_t v;
            st = eg_gguf_kv_int(f, ty, i, &v, err);
            if (st != EG_OK) {
                goto done;
            }
            if (v < EG_TOKTYPE_NORMAL || v > EG_TOKTYPE_BYTE) {
                st = eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.token_type[%zu] = %lld is not "
                               "a token type (1..6)", f->what, i, (long long)v);
                goto done;
            }
            types[i] = (int32_t)v;
        }
        if (sc != NULL) {
            double v;
            st = eg_gguf_kv_float(f, sc, i, &v, err);
            if (st != EG_OK) {
                goto done;
            }
            if (!isfinite(v) || fabs(v) > 3.0e38) {
                st = eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.scores[%zu] is not a finite "
                               "float32", f->what, i);
                goto done;
            }
            scores[i] = (float)v;
        }
    }
    for (size_t j = 0; j < nm; j++) {
        mp[j] = mg->strs[j].s;
        ml[j] = mg->strs[j].len;
    }
    st = eg_bpe_create(out, &cfg, tp, tl, n, types, scores, mp, ml, nm, err);
done:
    free(tp);
    free(tl);
    free(types);
    free(scores);
    free(mp);
    free(ml);
    return st;
}
