/*
 * bpe_gguf.c — eg_bpe_from_gguf: a BPE tokenizer from a GGUF file's
 * tokenizer.ggml.* metadata, with llama.cpp's defaults; every refusal names
 * the file and the key.
 */
#include "bpe_internal.h"

#include <math.h>

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
                             bpe_show_len(pre.len), pre.s);
        }
    } else if (model.len == 5 && memcmp(model.s, "llama", 5) == 0) {
        cfg.kind = EG_BPE_SPM;
        cfg.add_space_prefix = 1;
    } else {
        return eg_seterr(err, EG_EINVAL, "%s: tokenizer.ggml.model = '%.*s' is not supported "
                         "(gpt2: byte-level BPE, llama: SentencePiece BPE)", f->what,
                         bpe_show_len(model.len), model.s);
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
