/*
 * bpe_pretok.c — the byte-level pre-tokenizers of csrc/text/bpe.c: the
 * gpt-2, llama3 and qwen2 regexes as hand-written scanners that return the
 * end of the regex's match at a position, with Oniguruma's semantics
 * (alternatives in order, greedy with backtracking: \s+(?!\S) gives the last
 * space to the next word, \s*[\r\n]+ ends after the run's last newline,
 * (?i) folds U+017F to s); smollm isolates every \p{N} first. Character
 * classes come from unicode_tables.c (LETTER, NUMBER, PWS = \s).
 */
#include "bpe_internal.h"

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
        if (eg_bpe_bytelevel_word(b, s, t + b0, b1 - b0) != 0) {
            return -1;
        }
        i = k;
    }
    return 0;
}

/* Byte-level: pre-tokenize and BPE the valid UTF-8 t[0..n) (no special
 * tokens inside), stopping once s->n_ids >= limit. */
int eg_bpe_bytelevel_segment(const eg_bpe *b, bpe_scratch *s, const uint8_t *t, size_t n,
                             size_t limit)
{
    if (bpe_grow((void **)&s->cps, &s->cap_cps, n + 1, sizeof(uint32_t)) != 0 ||
        bpe_grow((void **)&s->boff, &s->cap_boff, n + 1, sizeof(size_t)) != 0) {
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
            if (eg_bpe_bytelevel_word(b, s, t + s->boff[a], s->boff[a + 1] - s->boff[a]) != 0) {
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

