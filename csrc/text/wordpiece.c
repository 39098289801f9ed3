/*
 * wordpiece.c — a BERT WordPiece tokenizer that reproduces Hugging Face
 * `tokenizers` id for id:
 *
 *   1. added/special tokens ([CLS], [MASK], ...) are matched in the raw text,
 *      leftmost-longest, and emitted as-is (HF's AddedVocabulary with
 *      normalized=false tokens);
 *   2. the rest is normalised like HF's BertNormalizer: clean_text (drop NUL,
 *      U+FFFD and control/format chars, map whitespace to ' '),
 *      handle_chinese_chars (pad CJK ideographs with spaces), strip_accents
 *      (NFD, drop non-spacing marks), lowercase (full per-char mapping);
 *   3. pre-tokenised like BertPreTokenizer: split on whitespace (removed) and
 *      punctuation (isolated);
 *   4. each word goes through greedy longest-match WordPiece with the "##"
 *      continuation prefix; a word longer than max_input_chars_per_word, or
 *      one that cannot be covered by vocabulary pieces, becomes [UNK];
 *   5. truncation keeps the first max_length - 2 pieces, then [CLS] ... [SEP].
 *
 * The per-code-point Unicode behaviour comes from unicode_tables.c. One
 * approximation: NFD's canonical reordering of combining marks is not done;
 * it can only matter when strip_accents keeps two adjacent combining marks
 * that are not Mn and have different non-zero combining classes (a few
 * musical symbols), see csrc/text/README.md.
 *
 * Texts are independent, so the batch call runs an OpenMP loop over texts;
 * each text's ids depend only on that text.
 */
#include "eg_text.h"

#include <stdlib.h>
#include <string.h>

#define WP_PREFIX_MAX 64

struct eg_wordpiece {
    eg_wordpiece_config cfg;
    char prefix[WP_PREFIX_MAX];
    size_t prefix_len;
    size_t n_tokens;
    char *pool;          /* token bytes, concatenated                  */
    size_t *tok_off;     /* [n_tokens] offset into pool                */
    uint32_t *tok_len;   /* [n_tokens] byte length                     */
    size_t cap;          /* hash slots, power of two                   */
    int32_t *slots;      /* token id or -1                             */
    uint32_t *slot_hash;
    size_t max_tok_chars;
    size_t n_added;
    char **added;
    size_t *added_len;
    int32_t *added_ids;
    uint8_t added_first[256];
};

/* FNV-1a over a || b. */
static uint32_t wp_hash2(const char *a, size_t na, const char *b, size_t nb)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < na; i++) {
        h = (h ^ (uint8_t)a[i]) * 16777619u;
    }
    for (size_t i = 0; i < nb; i++) {
        h = (h ^ (uint8_t)b[i]) * 16777619u;
    }
    return h;
}

/* Id of the token pre || s, or -1. */
static int32_t wp_lookup2(const eg_wordpiece *wp, const char *pre, size_t np, const char *s,
                          size_t n)
{
    uint32_t h = wp_hash2(pre, np, s, n);
    size_t mask = wp->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        int32_t id = wp->slots[i];
        if (id < 0) {
            return -1;
        }
        if (wp->slot_hash[i] == h && wp->tok_len[id] == np + n) {
            const char *t = wp->pool + wp->tok_off[id];
            if (memcmp(t, pre, np) == 0 && memcmp(t + np, s, n) == 0) {
                return id;
            }
        }
    }
}

int32_t eg_wordpiece_lookup(const eg_wordpiece *wp, const char *s, size_t n)
{
    return wp_lookup2(wp, "", 0, s, n);
}

size_t eg_wordpiece_vocab_size(const eg_wordpiece *wp)
{
    return wp->n_tokens;
}

void eg_wordpiece_free(eg_wordpiece *wp)
{
    if (wp == NULL) {
        return;
    }
    free(wp->pool);
    free(wp->tok_off);
    free(wp->tok_len);
    free(wp->slots);
    free(wp->slot_hash);
    if (wp->added != NULL) {
        for (size_t i = 0; i < wp->n_added; i++) {
            free(wp->added[i]);
        }
    }
    free(wp->added);
    free(wp->added_len);
    free(wp->added_ids);
    free(wp);
}

eg_status eg_wordpiece_create(eg_wordpiece **out, const eg_wordpiece_config *cfg,
                              const char *const *tokens, const size_t *tok_lens,
                              size_t n_tokens, const char *const *added,
                              const size_t *added_lens, const int32_t *added_ids,
                              size_t n_added, eg_err *err)
{
    *out = NULL;
    if (n_tokens == 0 || n_tokens > (size_t)INT32_MAX / 4) {
        return eg_seterr(err, EG_EINVAL, "wordpiece: vocabulary size %zu out of range", n_tokens);
    }
    if (cfg->continuing_prefix == NULL || strlen(cfg->continuing_prefix) >= WP_PREFIX_MAX) {
        return eg_seterr(err, EG_EINVAL, "wordpiece: continuing_subword_prefix missing or too long");
    }
    if (cfg->max_input_chars_per_word < 1) {
        return eg_seterr(err, EG_EINVAL, "wordpiece: max_input_chars_per_word must be >= 1");
    }
    int32_t ids3[3] = {cfg->unk_id, cfg->cls_id, cfg->sep_id};
    for (int i = 0; i < 3; i++) {
        if (ids3[i] < 0 || (size_t)ids3[i] >= n_tokens) {
            return eg_seterr(err, EG_EINVAL, "wordpiece: special token id %d outside the vocabulary "
                             "of %zu tokens", (int)ids3[i], n_tokens);
        }
    }
    eg_wordpiece *wp = calloc(1, sizeof(*wp));
    if (wp == NULL) {
        return eg_seterr(err, EG_ENOMEM, "wordpiece: out of memory");
    }
    wp->cfg = *cfg;
    wp->prefix_len = strlen(cfg->continuing_prefix);
    memcpy(wp->prefix, cfg->continuing_prefix, wp->prefix_len + 1);
    wp->cfg.continuing_prefix = wp->prefix;
    wp->n_tokens = n_tokens;

    size_t total = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        if ((tokens[i] == NULL && tok_lens[i] != 0) || tok_lens[i] > UINT32_MAX / 2) {
            eg_wordpiece_free(wp);
            return eg_seterr(err, EG_EINVAL, "wordpiece: token %zu is NULL or too long", i);
        }
        if (tok_lens[i] == 0) {
            continue; /* an empty line of vocab.txt: keeps its id, never matches */
        }
        size_t bad;
        if (!eg_utf8_valid(tokens[i], tok_lens[i], &bad)) {
            eg_wordpiece_free(wp);
            return eg_seterr(err, EG_EINVAL, "wordpiece: token %zu is not valid UTF-8 (byte %zu)",
                             i, bad);
        }
        if (eg_add_ovf(total, tok_lens[i], &total)) {
            eg_wordpiece_free(wp);
            return eg_seterr(err, EG_EOVERFLOW, "wordpiece: vocabulary too large");
        }
    }
    size_t cap = 16;
    while (cap < 2 * n_tokens) {
        cap *= 2;
    }
    wp->cap = cap;
    wp->pool = malloc(total > 0 ? total : 1);
    wp->tok_off = malloc(n_tokens * sizeof(size_t));
    wp->tok_len = malloc(n_tokens * sizeof(uint32_t));
    wp->slots = malloc(cap * sizeof(int32_t));
    wp->slot_hash = malloc(cap * sizeof(uint32_t));
    if (wp->pool == NULL || wp->tok_off == NULL || wp->tok_len == NULL || wp->slots == NULL ||
        wp->slot_hash == NULL) {
        eg_wordpiece_free(wp);
        return eg_seterr(err, EG_ENOMEM, "wordpiece: out of memory");
    }
    for (size_t i = 0; i < cap; i++) {
        wp->slots[i] = -1;
    }
    size_t off = 0;
    for (size_t i = 0; i < n_tokens; i++) {
        wp->tok_off[i] = off;
        wp->tok_len[i] = (uint32_t)tok_lens[i];
        if (tok_lens[i] == 0) {
            continue;
        }
        memcpy(wp->pool + off, tokens[i], tok_lens[i]);
        off += tok_lens[i];
        size_t chars = 0;
        for (size_t k = 0; k < tok_lens[i]; k++) {
            chars += ((uint8_t)tokens[i][k] & 0xC0u) != 0x80u;
        }
        if (chars > wp->max_tok_chars) {
            wp->max_tok_chars = chars;
        }
        /* Insert; an existing equal token is replaced (later id wins). */
        uint32_t h = wp_hash2("", 0, tokens[i], tok_lens[i]);
        for (size_t s = h & (cap - 1);; s = (s + 1) & (cap - 1)) {
            int32_t id = wp->slots[s];
            if (id < 0) {
                wp->slots[s] = (int32_t)i;
                wp->slot_hash[s] = h;
                break;
            }
            if (wp->slot_hash[s] == h && wp->tok_len[id] == tok_lens[i] &&
                memcmp(wp->pool + wp->tok_off[id], tokens[i], tok_lens[i]) == 0) {
                wp->slots[s] = (int32_t)i;
                break;
            }
        }
    }

    if (n_added > 0) {
        wp->added = calloc(n_added, sizeof(char *));
        wp->added_len = calloc(n_added, sizeof(size_t));
        wp->added_ids = calloc(n_added, sizeof(int32_t));
        if (wp->added == NULL || wp->added_len == NULL || wp->added_ids == NULL) {
            eg_wordpiece_free(wp);
            return eg_seterr(err, EG_ENOMEM, "wordpiece: out of memory");
        }
        wp->n_added = n_added;
        for (size_t i = 0; i < n_added; i++) {
            size_t bad;
            if (added[i] == NULL || added_lens[i] == 0 ||
                !eg_utf8_valid(added[i], added_lens[i], &bad)) {
                eg_wordpiece_free(wp);
                return eg_seterr(err, EG_EINVAL, "wordpiece: added token %zu is empty or not "
                                 "valid UTF-8", i);
            }
            if (added_ids[i] < 0) {
                eg_wordpiece_free(wp);
                return eg_seterr(err, EG_EINVAL, "wordpiece: added token %zu has negative id", i);
            }
            wp->added[i] = malloc(added_lens[i]);
            if (wp->added[i] == NULL) {
                eg_wordpiece_free(wp);
                return eg_seterr(err, EG_ENOMEM, "wordpiece: out of memory");
            }
            memcpy(wp->added[i], added[i], added_lens[i]);
            wp->added_len[i] = added_lens[i];
            wp->added_ids[i] = added_ids[i];
            wp->added_first[(uint8_t)added[i][0]] = 1;
        }
    }
    *out = wp;
    return EG_OK;
}

/* ------------------------------------------------------------ per-thread */

typedef struct {
    uint32_t *norm;
    size_t n_norm, cap_norm;
    char *wbytes;
    size_t cap_wbytes;
    size_t *coff;
    size_t cap_coff;
    int32_t *ids;
    size_t n_ids, cap_ids;
} wp_scratch;

static void scratch_free(wp_scratch *s)
{
    free(s->norm);
    free(s->wbytes);
    free(s->coff);
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

static int push_norm(wp_scratch *s, uint32_t cp)
{
    if (s->n_norm == s->cap_norm &&
        grow((void **)&s->norm, &s->cap_norm, s->n_norm + 1, sizeof(uint32_t)) != 0) {
        return -1;
    }
    s->norm[s->n_norm++] = cp;
    return 0;
}

static int push_id(wp_scratch *s, int32_t id)
{
    if (s->n_ids == s->cap_ids &&
        grow((void **)&s->ids, &s->cap_ids, s->n_ids + 1, sizeof(int32_t)) != 0) {
        return -1;
    }
    s->ids[s->n_ids++] = id;
    return 0;
}

static int is_cjk(uint32_t c)
{
    return (c >= 0x4E00u && c <= 0x9FFFu) || (c >= 0x3400u && c <= 0x4DBFu) ||
           (c >= 0x20000u && c <= 0x2A6DFu) || (c >= 0x2A700u && c <= 0x2B73Fu) ||
           (c >= 0x2B740u && c <= 0x2B81Fu) || (c >= 0x2B920u && c <= 0x2CEAFu) ||
           (c >= 0xF900u && c <= 0xFAFFu) || (c >= 0x2F800u && c <= 0x2FA1Fu);
}

/* strip_accents then lowercase of one code point, appended to s->norm. */
static int push_mapped(const eg_wordpiece *wp, wp_scratch *s, uint32_t cp, unsigned f)
{
    uint32_t a[EG_UNI_MAP_MAX];
    int na = -1;
    if (wp->cfg.strip_accents && (f & EG_UNI_STRIP)) {
        na = eg_uni_strip(cp, a);
    }
    if (na < 0) {
        a[0] = cp;
        na = 1;
    }
    for (int i = 0; i < na; i++) {
        uint32_t c = a[i];
        if (wp->cfg.lowercase && (eg_uni_flags(c) & EG_UNI_LOWER)) {
            uint32_t b[EG_UNI_MAP_MAX];
            int nb = eg_uni_lower(c, b);
            if (nb >= 0) {
                for (int k = 0; k < nb; k++) {
                    if (push_norm(s, b[k]) != 0) {
                        return -1;
                    }
                }
                continue;
            }
        }
        if (push_norm(s, c) != 0) {
            return -1;
        }
    }
    return 0;
}

/* BertNormalizer of one code point, appended to s->norm. */
static int normalize_cp(const eg_wordpiece *wp, wp_scratch *s, uint32_t cp)
{
    unsigned f = eg_uni_flags(cp);
    if (wp->cfg.clean_text) {
        if (f & EG_UNI_DROP) {
            return 0;
        }
        if (f & EG_UNI_WS) {
            cp = ' ';
            f = eg_uni_flags(cp);
        }
    }
    if (wp->cfg.handle_chinese_chars && is_cjk(cp)) {
        if (push_norm(s, ' ') != 0 || push_mapped(wp, s, cp, f) != 0 || push_norm(s, ' ') != 0) {
            return -1;
        }
        return 0;
    }
    return push_mapped(wp, s, cp, f);
}

/* WordPiece of the word s->norm[a..b) appended to s->ids. */
static int wordpiece_word(const eg_wordpiece *wp, wp_scratch *s, size_t a, size_t b)
{
    size_t L = b - a;
    if (L > (size_t)wp->cfg.max_input_chars_per_word) {
        return push_id(s, wp->cfg.unk_id);
    }
    if (grow((void **)&s->coff, &s->cap_coff, L + 1, sizeof(size_t)) != 0 ||
        grow((void **)&s->wbytes, &s->cap_wbytes, 4 * L, 1) != 0) {
        return -1;
    }
    size_t nb = 0;
    for (size_t i = 0; i < L; i++) {
        s->coff[i] = nb;
        nb += eg_utf8_encode1(s->norm[a + i], (uint8_t *)s->wbytes + nb);
    }
    s->coff[L] = nb;
    size_t first = s->n_ids;
    size_t start = 0;
    while (start < L) {
        size_t end = L;
        if (end - start > wp->max_tok_chars) {
            end = start + wp->max_tok_chars;
        }
        int32_t found = -1;
        while (end > start) {
            const char *sub = s->wbytes + s->coff[start];
            size_t len = s->coff[end] - s->coff[start];
            found = start > 0 ? wp_lookup2(wp, wp->prefix, wp->prefix_len, sub, len)
                              : wp_lookup2(wp, "", 0, sub, len);
            if (found >= 0) {
                break;
            }
            end--;
        }
        if (found < 0) {
            s->n_ids = first;
            return push_id(s, wp->cfg.unk_id);
        }
        if (push_id(s, found) != 0) {
            return -1;
        }
        start = end;
    }
    return 0;
}

/* BertPreTokenizer + WordPiece over s->norm[0..n_norm), stopping once
 * s->n_ids >= limit (whole words only); empties s->norm. */
static int flush_words(const eg_wordpiece *wp, wp_scratch *s, size_t limit)
{
    size_t i = 0, m = s->n_norm;
    while (i < m && s->n_ids < limit) {
        unsigned f = eg_uni_flags(s->norm[i]);
        if (f & EG_UNI_PWS) {
            i++;
            continue;
        }
        size_t j = i + 1;
        if (!(f & EG_UNI_PUNCT)) {
            while (j < m && !(eg_uni_flags(s->norm[j]) & (EG_UNI_PWS | EG_UNI_PUNCT))) {
                j++;
            }
        }
        if (wordpiece_word(wp, s, i, j) != 0) {
            return -1;
        }
        i = j;
    }
    s->n_norm = 0;
    return 0;
}

/* Normalised code points buffered before the words in them are tokenized.
 * The buffer is flushed only right after a whitespace code point, where no
 * word can continue, so chunking never changes the result; it bounds memory
 * and lets truncation stop early on long texts. */
#define WP_CHUNK 1024

/* Normalise, pre-tokenise and WordPiece the valid UTF-8 t[0..n) (no added
 * tokens inside), stopping once s->n_ids >= limit (whole words only). */
static int encode_segment(const eg_wordpiece *wp, wp_scratch *s, const uint8_t *t, size_t n,
                          size_t limit)
{
    s->n_norm = 0;
    size_t i = 0;
    while (i < n && s->n_ids < limit) {
        uint32_t cp;
        size_t k = eg_utf8_decode1(t + i, n - i, &cp);
        if (k == 0) {
            return -2; /* cannot happen: validated by the caller */
        }
        i += k;
        if (normalize_cp(wp, s, cp) != 0) {
            return -1;
        }
        if (s->n_norm >= WP_CHUNK && (eg_uni_flags(s->norm[s->n_norm - 1]) & EG_UNI_PWS) &&
            flush_words(wp, s, limit) != 0) {
            return -1;
        }
    }
    return flush_words(wp, s, limit);
}

/* All pieces of one text (without specials), at most `limit` of them kept. */
static int encode_text(const eg_wordpiece *wp, wp_scratch *s, const uint8_t *t, size_t n,
                       size_t limit)
{
    s->n_ids = 0;
    size_t seg = 0, i = 0;
    while (i < n && s->n_ids < limit) {
        if (wp->n_added > 0 && wp->added_first[t[i]]) {
            size_t best = 0;
            int32_t best_id = -1;
            for (size_t k = 0; k < wp->n_added; k++) {
                size_t len = wp->added_len[k];
                if (len > best && len <= n - i && memcmp(t + i, wp->added[k], len) == 0) {
                    best = len;
                    best_id = wp->added_ids[k];
                }
            }
            if (best > 0) {
                int rc = encode_segment(wp, s, t + seg, i - seg, limit);
                if (rc != 0) {
                    return rc;
                }
                if (s->n_ids < limit && push_id(s, best_id) != 0) {
                    return -1;
                }
                i += best;
                seg = i;
                continue;
            }
        }
        i++;
    }
    if (seg < n && s->n_ids < limit) {
        int rc = encode_segment(wp, s, t + seg, n - seg, limit);
        if (rc != 0) {
            return rc;
        }
    }
    if (s->n_ids > limit) {
        s->n_ids = limit;
    }
    return 0;
}

void eg_wordpiece_free_batch(int32_t **ids, size_t n_texts)
{
    if (ids == NULL) {
        return;
    }
    for (size_t i = 0; i < n_texts; i++) {
        free(ids[i]);
        ids[i] = NULL;
    }
}

eg_status eg_wordpiece_encode_batch(const eg_wordpiece *wp, const char *const *texts,
                                    const size_t *lens, size_t n_texts, size_t max_length,
                                    int add_special, int32_t **ids, size_t *out_lens,
                                    eg_err *err)
{
    size_t n_spec = add_special ? 2 : 0;
    size_t limit = SIZE_MAX;
    if (max_length > 0) {
        if (max_length < n_spec) {
            return eg_seterr(err, EG_EINVAL, "max_length %zu is too small: it must be >= %zu to "
                             "hold the special tokens", max_length, n_spec);
        }
        limit = max_length - n_spec;
    }
    for (size_t i = 0; i < n_texts; i++) {
        ids[i] = NULL;
        out_lens[i] = 0;
        size_t bad;
        if (texts[i] == NULL && lens[i] != 0) {
            return eg_seterr(err, EG_EINVAL, "text %zu: NULL with non-zero length", i);
        }
        if (lens[i] > 0 && !eg_utf8_valid(texts[i], lens[i], &bad)) {
            return eg_seterr(err, EG_EINVAL, "text %zu: invalid UTF-8 at byte %zu", i, bad);
        }
    }
    int failed = 0; /* set (to 1) by any thread on ENOMEM; a flag, not a count */
#pragma omp parallel
    {
        wp_scratch s;
        memset(&s, 0, sizeof(s));
#pragma omp for schedule(dynamic, 8)
        for (size_t i = 0; i < n_texts; i++) {
            int bad = 0;
#pragma omp atomic read
            bad = failed;
            if (bad) {
                continue;
            }
            const uint8_t *t = (const uint8_t *)(lens[i] > 0 ? texts[i] : "");
            int rc = encode_text(wp, &s, t, lens[i], limit);
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
            if (add_special) {
                o[k++] = wp->cfg.cls_id;
            }
            if (s.n_ids > 0) {
                memcpy(o + k, s.ids, s.n_ids * sizeof(int32_t));
                k += s.n_ids;
            }
            if (add_special) {
                o[k++] = wp->cfg.sep_id;
            }
            ids[i] = o;
            out_lens[i] = total;
        }
        scratch_free(&s);
    }
    if (failed) {
        eg_wordpiece_free_batch(ids, n_texts);
        return eg_seterr(err, EG_ENOMEM, "wordpiece: out of memory while tokenizing");
    }
    return EG_OK;
}
