/*
 * bpe_merge.c — the merge loops of csrc/text/bpe.c.
 *
 * Byte-level: a piece's bytes become the tokens of their GPT-2 characters in
 * a linked list; a binary heap holds (rank, position, left id, right id) of
 * every adjacent pair the merge table knows; the lowest rank (leftmost among
 * equal ranks, as HF) is merged, stale entries (a neighbour merged since)
 * are skipped, and the new symbol's pairs with its neighbours are pushed.
 * SentencePiece: the same over UTF-8 characters with (score of the merged
 * token, left position), highest score first, as llama.cpp's
 * llm_tokenizer_spm; then <0xXX> byte fallback.
 */
#include "bpe_internal.h"

/* ---------------------------------------------------- byte-level merges */

static int bl_less(const bl_ent *a, const bl_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int bl_push(bpe_scratch *s, bl_ent e)
{
    if (s->n_heap == s->cap_heap &&
        bpe_grow(&s->heap, &s->cap_heap, s->n_heap + 1, sizeof(bl_ent)) != 0) {
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
    const merge_slot *m = bpe_merge_find(b, s->sid[pos], s->sid[nx]);
    if (m == NULL) {
        return 0;
    }
    bl_ent e = {m->rank, (uint32_t)pos, s->sid[pos], s->sid[nx]};
    return bl_push(s, e);
}

int eg_bpe_bytelevel_word(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n)
{
    if (b->cfg.ignore_merges) {
        if (bpe_grow((void **)&s->buf, &s->cap_buf, 2 * n, 1) != 0) {
            return -1;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            k += eg_utf8_encode1(b->byte_char[t[i]], (uint8_t *)s->buf + k);
        }
        int32_t id = eg_bpe_lookup(b, s->buf, k);
        if (id >= 0) {
            return bpe_push_id(s, id);
        }
    }
    if (n > INT32_MAX / 2 || bpe_grow_sym(s, n) != 0) {
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
        const merge_slot *ms = bpe_merge_find(b, e.l, e.r);
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
        if (bpe_push_id(s, s->sid[i]) != 0) {
            return -1;
        }
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
        bpe_grow(&s->heap, &s->cap_heap, s->n_heap + 1, sizeof(spm_ent)) != 0) {
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

int eg_bpe_spm_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n, int prefix)
{
    size_t need;
    if (eg_mul_ovf(n + 1, 3, &need) || need > UINT32_MAX ||
        bpe_grow((void **)&s->buf, &s->cap_buf, need, 1) != 0) {
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
    if (bpe_grow_sym(s, k) != 0) {
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
            if (bpe_push_id(s, id) != 0) {
                return -1;
            }
            continue;
        }
        for (uint32_t j = 0; j < s->slen[i]; j++) { /* byte fallback */
            int32_t bt = b->byte_tok[(uint8_t)p[j]];
            if (bt < 0) {
                bt = b->cfg.unk_id;
            }
            if (bt >= 0 && bpe_push_id(s, bt) != 0) {
                return -1;
            }
        }
    }
    return 0;
}

