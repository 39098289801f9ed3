/*
 * bpe_internal.h — private to csrc/text/bpe.c (building a tokenizer, the
 * per-text driver and the batch), bpe_merge.c (the byte-level and
 * SentencePiece merge loops), bpe_pretok.c (the pre-tokenizer scanners) and
 * bpe_gguf.c (eg_bpe_from_gguf): the tokenizer structure, the per-thread
 * scratch and small helpers.
 */
#ifndef EG_BPE_INTERNAL_H
#define EG_BPE_INTERNAL_H

#include "eg_bpe.h"
#include "eg_text.h"

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

static inline uint32_t bpe_fnv1a(const char *s, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) {
        h = (h ^ (uint8_t)s[i]) * 16777619u;
    }
    return h;
}

static inline size_t bpe_merge_home(uint64_t key, size_t mask)
{
    return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & mask;
}

static inline const merge_slot *bpe_merge_find(const eg_bpe *b, int32_t l, int32_t r)
{
    uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
    size_t mask = b->mcap - 1;
    for (size_t i = bpe_merge_home(key, mask);; i = (i + 1) & mask) {
        if (b->merges[i].key == key) {
            return &b->merges[i];
        }
        if (b->merges[i].key == UINT64_MAX) {
            return NULL;
        }
    }
}

/* Tokens matched as whole strings in the raw text: CONTROL, USER_DEFINED and
 * UNKNOWN (llama.cpp's special-token cache; HF's added tokens, "<unk>"
 * included). */
static inline int bpe_is_added_type(int t)
{
    return t == EG_TOKTYPE_CONTROL || t == EG_TOKTYPE_USER_DEFINED || t == EG_TOKTYPE_UNKNOWN;
}

/* Show at most 40 bytes of a token in a message (valid UTF-8 assumed). */
static inline int bpe_show_len(size_t n)
{
    return n > 40 ? 40 : (int)n;
}

/* Per-thread scratch of the encoder, grown on demand. */
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

static inline void bpe_scratch_free(bpe_scratch *s)
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
static inline int bpe_grow(void **buf, size_t *cap, size_t need, size_t size)
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
static inline int bpe_grow_sym(bpe_scratch *s, size_t n)
{
    if (n <= s->cap_sym) {
        return 0;
    }
    size_t c1 = s->cap_sym, c2 = s->cap_sym, c3 = s->cap_sym, c4 = s->cap_sym, c5 = s->cap_sym;
    if (bpe_grow((void **)&s->prev, &c1, n, sizeof(int32_t)) != 0 ||
        bpe_grow((void **)&s->next, &c2, n, sizeof(int32_t)) != 0 ||
        bpe_grow((void **)&s->sid, &c3, n, sizeof(int32_t)) != 0 ||
        bpe_grow((void **)&s->soff, &c4, n, sizeof(uint32_t)) != 0 ||
        bpe_grow((void **)&s->slen, &c5, n, sizeof(uint32_t)) != 0) {
        return -1; /* the arrays grown so far keep their larger size: harmless */
    }
    s->cap_sym = c1;
    return 0;
}

static inline int bpe_push_id(bpe_scratch *s, int32_t id)
{
    if (s->n_ids == s->cap_ids &&
        bpe_grow((void **)&s->ids, &s->cap_ids, s->n_ids + 1, sizeof(int32_t)) != 0) {
        return -1;
    }
    s->ids[s->n_ids++] = id;
    return 0;
}

/* Byte-level BPE of the bytes t[0..n) (one pre-token), ids appended to s->ids
 * (bpe_merge.c). 0, or -1 when out of memory. */
int eg_bpe_bytelevel_word(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n);

/* SentencePiece BPE of the valid UTF-8 t[0..n), U+2581 for spaces and in
 * front when `prefix` (bpe_merge.c). 0, or -1 when out of memory. */
int eg_bpe_spm_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n, int prefix);

/* Byte-level: pre-tokenize and BPE the valid UTF-8 t[0..n), stopping once
 * s->n_ids >= limit (bpe_pretok.c). 0, or -1 when out of memory. */
int eg_bpe_bytelevel_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n,
                             size_t limit);

#endif /* EG_BPE_INTERNAL_H */
