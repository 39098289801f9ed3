/*
 * safetensors.c — the safetensors reader and writer declared in
 * eg_safetensors.h.
 *
 * Reading follows the reference implementation (huggingface/safetensors,
 * tensor.rs read_metadata + Metadata::validate) rule by rule, in its order:
 * at least 8 bytes; header length <= 100,000,000 and within the file; header
 * is UTF-8 JSON holding an object; every tensor entry has a known dtype, a
 * shape of non-negative integers and two non-negative integer data_offsets;
 * "__metadata__" maps strings to strings; entries sorted by offsets tile the
 * data section from 0 with no hole and no overlap; each entry's byte size is
 * numel x dtype size (checked arithmetic); and the data section ends exactly
 * at the end of the file. We are stricter in one place: duplicate keys are
 * rejected (the reference silently keeps the last one).
 *
 * Writing mirrors the reference writer's byte layout (tensor order, compact
 * JSON, space padding) and adds crash safety: temp file in the same folder,
 * fsync, rename, fsync of the folder.
 */
#define _POSIX_C_SOURCE 200809L /* O_CLOEXEC, O_DIRECTORY, fsync under -std=c11 */
#include "eg_safetensors.h"
#include "eg_json.h"
#include "eg_mapfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const dtype_names[EG_ST_NUM_DTYPES] = {
    "BOOL", "U8", "I8", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64", "I64", "U64",
};
static const size_t dtype_sizes[EG_ST_NUM_DTYPES] = {1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 8, 8, 8};

const char *eg_st_dtype_name(eg_st_dtype d)
{
    return (unsigned)d < EG_ST_NUM_DTYPES ? dtype_names[d] : "?";
}

size_t eg_st_dtype_size(eg_st_dtype d)
{
    return (unsigned)d < EG_ST_NUM_DTYPES ? dtype_sizes[d] : 0;
}

int eg_st_dtype_from_name(const char *name, size_t len, eg_st_dtype *out)
{
    for (int k = 0; k < EG_ST_NUM_DTYPES; k++) {
        if (strlen(dtype_names[k]) == len && memcmp(dtype_names[k], name, len) == 0) {
            *out = (eg_st_dtype)k;
            return 0;
        }
    }
    return -1;
}

/* ------------------------------------------------------------------ reader */

static void file_init(eg_st_file *f)
{
    memset(f, 0, sizeof *f);
    eg_arena_init(&f->arena);
}

void eg_st_close(eg_st_file *f)
{
    if (f == NULL) {
        return;
    }
    if (f->mapped) {
        eg_unmap_file(f->base, f->size);
    }
    eg_arena_free(&f->arena);
    file_init(f);
}

/* A JSON number as a non-negative size; message names the field. */
static eg_status json_size(const eg_json *v, const char *what, const char *field,
                           const char *tname, size_t *out, eg_err *err)
{
    if (v->type != EG_JSON_NUMBER) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": %s must hold integers, found %s",
                         what, tname, field, eg_json_type_name(v->type));
    }
    if (!v->is_int) {
        return eg_seterr(err, EG_ECORRUPT,
                         "%s: tensor \"%.200s\": %s must hold integers in range, found %.*s",
                         what, tname, field, (int)(v->len < 60 ? v->len : 60), v->str);
    }
    if (v->i < 0) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": %s must not be negative, found %.*s",
                         what, tname, field, (int)(v->len < 60 ? v->len : 60), v->str);
    }
    if ((uint64_t)v->i > (uint64_t)SIZE_MAX) {
        return eg_seterr(err, EG_EOVERFLOW, "%s: tensor \"%.200s\": %s value %.*s does not fit in size_t",
                         what, tname, field, (int)(v->len < 60 ? v->len : 60), v->str);
    }
    *out = (size_t)v->i;
    return EG_OK;
}

static eg_status parse_tensor(const eg_json_member *m, const char *what, eg_st_file *f,
                              eg_st_tensor *t, unsigned char *overflow, eg_err *err)
{
    const char *tn = m->key;
    const eg_json *v = &m->value;
    t->name = m->key;
    t->name_len = m->key_len;
    if (v->type != EG_JSON_OBJECT) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": entry must be an object, found %s",
                         what, tn, eg_json_type_name(v->type));
    }
    const eg_json *dt = eg_json_get(v, "dtype");
    const eg_json *sh = eg_json_get(v, "shape");
    const eg_json *off = eg_json_get(v, "data_offsets");
    if (dt == NULL || sh == NULL || off == NULL) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": entry lacks \"%s\"", what, tn,
                         dt == NULL ? "dtype" : (sh == NULL ? "shape" : "data_offsets"));
    }
    if (dt->type != EG_JSON_STRING) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": dtype must be a string", what, tn);
    }
    if (eg_st_dtype_from_name(dt->str, dt->len, &t->dtype) < 0) {
        return eg_seterr(err, EG_ECORRUPT,
                         "%s: tensor \"%.200s\": unknown or unsupported dtype \"%.40s\" (known: BOOL U8 I8 "
                         "I16 U16 F16 BF16 I32 U32 F32 F64 I64 U64)", what, tn, dt->str);
    }
    if (sh->type != EG_JSON_ARRAY) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": shape must be an array", what, tn);
    }
    if (sh->n > (size_t)INT32_MAX) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": too many dimensions", what, tn);
    }
    t->ndim = (int)sh->n;
    int64_t *shape = NULL;
    if (sh->n > 0) {
        shape = eg_arena_alloc_n(&f->arena, sh->n, sizeof *shape);
        if (shape == NULL) {
            return eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
        }
    }
    size_t numel = 1;
    int ovf = 0;
    for (size_t k = 0; k < sh->n; k++) {
        size_t d;
        eg_status st = json_size(&sh->items[k], what, "shape", tn, &d, err);
        if (st != EG_OK) {
            return st;
        }
        if ((uint64_t)d > (uint64_t)INT64_MAX) {
            ovf = 1;
        }
        shape[k] = (int64_t)d;
        if (eg_mul_ovf(numel, d, &numel)) {
            ovf = 1;
        }
    }
    t->shape = shape;
    if (off->type != EG_JSON_ARRAY || off->n != 2) {
        return eg_seterr(err, EG_ECORRUPT, "%s: tensor \"%.200s\": data_offsets must be an array of two integers",
                         what, tn);
    }
    eg_status st = json_size(&off->items[0], what, "data_offsets", tn, &t->begin, err);
    if (st == EG_OK) {
        st = json_size(&off->items[1], what, "data_offsets", tn, &t->end, err);
    }
    if (st != EG_OK) {
        return st;
    }
    /* The size check itself runs after the ordering check, as in the
     * reference; the overflow is remembered here. */
    if (ovf || eg_mul_ovf(numel, eg_st_dtype_size(t->dtype), &t->nbytes)) {
        t->nbytes = SIZE_MAX;
        *overflow = 1;
    }
    return EG_OK;
}

static eg_status parse_metadata(const eg_json *v, const char *what, eg_st_file *f, eg_err *err)
{
    if (v->type == EG_JSON_NULL) {
        return EG_OK; /* the reference reads null as "no metadata" */
    }
    if (v->type != EG_JSON_OBJECT) {
        return eg_seterr(err, EG_ECORRUPT, "%s: __metadata__ must be an object mapping strings to strings, found %s",
                         what, eg_json_type_name(v->type));
    }
    f->has_metadata = 1;
    f->n_meta = v->n;
    if (v->n == 0) {
        return EG_OK;
    }
    f->meta = eg_arena_alloc_n(&f->arena, v->n, sizeof *f->meta);
    if (f->meta == NULL) {
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
    }
    for (size_t k = 0; k < v->n; k++) {
        const eg_json_member *m = &v->members[k];
        if (m->value.type != EG_JSON_STRING) {
            return eg_seterr(err, EG_ECORRUPT,
                             "%s: __metadata__ values must be strings, but \"%.200s\" holds a JSON %s",
                             what, m->key, eg_json_type_name(m->value.type));
        }
        f->meta[k].key = m->key;
        f->meta[k].key_len = m->key_len;
        f->meta[k].value = m->value.str;
        f->meta[k].value_len = m->value.len;
    }
    return EG_OK;
}

static int by_offsets(const void *a, const void *b)
{
    const eg_st_tensor *x = *(const eg_st_tensor *const *)a;
    const eg_st_tensor *y = *(const eg_st_tensor *const *)b;
    if (x->begin != y->begin) {
        return x->begin < y->begin ? -1 : 1;
    }
    if (x->end != y->end) {
        return x->end < y->end ? -1 : 1;
    }
    return 0;
}

/* Validate buf into f, which file_init (and perhaps eg_st_open) prepared. */
static eg_status parse_into(const unsigned char *buf, size_t size, const char *what,
                            eg_st_file *f, eg_err *err)
{
    eg_st_tensor **sorted = NULL;
    unsigned char *overflow = NULL;
    eg_status st;
    if (what == NULL) {
        what = "safetensors buffer";
    }
    f->base = buf;
    f->size = size;
    if (size < 8) {
        return eg_seterr(err, EG_ECORRUPT,
                         "%s: file is %zu bytes, too small for the 8-byte header length", what, size);
    }
    uint64_t n64 = eg_load_le64(buf);
    if (n64 > EG_ST_MAX_HEADER) {
        return eg_seterr(err, EG_ECORRUPT, "%s: header length %llu exceeds the limit of %zu bytes", what,
                         (unsigned long long)n64, EG_ST_MAX_HEADER);
    }
    size_t n = (size_t)n64;
    if (n > size - 8) {
        return eg_seterr(err, EG_ECORRUPT,
                         "%s: header length %zu reaches beyond the end of the file (%zu bytes)", what, n, size);
    }
    f->header_len = n;
    f->data_start = 8 + n;
    const unsigned char *h = buf + 8;
    if (!eg_utf8_valid((const char *)h, n, NULL)) {
        return eg_seterr(err, EG_ECORRUPT, "%s: header is not valid UTF-8", what);
    }
    eg_json *root;
    eg_err jerr;
    eg_err_clear(&jerr);
    st = eg_json_parse((const char *)h, n, &f->arena, 8, EG_JSON_REJECT_DUPLICATE_KEYS, &root, &jerr);
    if (st != EG_OK) {
        return eg_seterr(err, st, "%s: header: %s", what, jerr.msg);
    }
    if (root->type != EG_JSON_OBJECT) {
        return eg_seterr(err, EG_ECORRUPT, "%s: header must be a JSON object, found %s", what,
                         eg_json_type_name(root->type));
    }
    size_t nt = 0;
    for (size_t k = 0; k < root->n; k++) {
        if (strcmp(root->members[k].key, "__metadata__") != 0 || root->members[k].key_len != 12) {
            nt++;
        }
    }
    if (nt > 0) {
        f->tensors = eg_arena_alloc_n(&f->arena, nt, sizeof *f->tensors);
        sorted = malloc(nt * sizeof *sorted);
        overflow = calloc(nt, 1);
        if (f->tensors == NULL || sorted == NULL || overflow == NULL) {
            st = eg_seterr(err, EG_ENOMEM, "%s: out of memory for %zu tensor entries", what, nt);
            goto done;
        }
        memset(f->tensors, 0, nt * sizeof *f->tensors);
    }
    size_t it = 0;
    for (size_t k = 0; k < root->n; k++) {
        const eg_json_member *m = &root->members[k];
        if (m->key_len == 12 && memcmp(m->key, "__metadata__", 12) == 0) {
            st = parse_metadata(&m->value, what, f, err);
        } else {
            st = parse_tensor(m, what, f, &f->tensors[it], &overflow[it], err);
            sorted[it] = &f->tensors[it];
            it++;
        }
        if (st != EG_OK) {
            goto done;
        }
    }
    f->n_tensors = nt;
    if (nt > 0) {
        qsort(sorted, nt, sizeof *sorted, by_offsets);
    }
    size_t start = 0;
    for (size_t k = 0; k < nt; k++) {
        eg_st_tensor *t = sorted[k];
        if (t->begin != start || t->end < t->begin) {
            const char *why = t->end < t->begin ? "end before begin"
                              : (t->begin > start ? "a hole before it" : "it overlaps the previous tensor");
            st = eg_seterr(err, EG_ECORRUPT,
                           "%s: tensor \"%.200s\": invalid data_offsets [%zu, %zu] (expected to begin at %zu: %s)",
                           what, t->name, t->begin, t->end, start, why);
            goto done;
        }
        start = t->end;
        if (overflow[t - f->tensors]) {
            st = eg_seterr(err, EG_EOVERFLOW, "%s: tensor \"%.200s\": shape x dtype size overflows", what, t->name);
            goto done;
        }
        if (t->end - t->begin != t->nbytes) {
            st = eg_seterr(err, EG_ECORRUPT,
                           "%s: tensor \"%.200s\": data_offsets span %zu bytes but shape x %s needs %zu",
                           what, t->name, t->end - t->begin, eg_st_dtype_name(t->dtype), t->nbytes);
            goto done;
        }
    }
    if (start != size - f->data_start) {
        st = eg_seterr(err, EG_ECORRUPT,
                       "%s: data section is %zu bytes but the tensors cover %zu (file %s)", what,
                       size - f->data_start, start, start < size - f->data_start ? "has trailing bytes" : "is truncated");
        goto done;
    }
    for (size_t k = 0; k < nt; k++) {
        f->tensors[k].offset = f->data_start + f->tensors[k].begin;
    }
    st = EG_OK;
done:
    free(sorted);
    free(overflow);
    return st;
}

eg_status eg_st_parse(const unsigned char *buf, size_t size, const char *what,
                      eg_st_file *f, eg_err *err)
{
    file_init(f);
    return parse_into(buf, size, what, f, err);
}

eg_status eg_st_open(const char *path, eg_st_file *f, eg_err *err)
{
    file_init(f);
    const unsigned char *p;
    size_t size;
    eg_status st = eg_map_file(path, 8, "the 8-byte header length", &p, &size, &f->sys_errno, err);
    if (st != EG_OK) {
        return st;
    }
    f->base = p;
    f->size = size;
    f->mapped = 1;
    return parse_into(p, size, path, f, err);
}

/* ------------------------------------------------------------------ writer */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *s, size_t n)
{
    if (b->oom) {
        return;
    }
    if (b->cap - b->len < n + 1) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < n + 1) {
            if (cap > SIZE_MAX / 2) {
                b->oom = 1;
                return;
            }
            cap *= 2;
        }
        char *np = realloc(b->p, cap);
        if (np == NULL) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

/* JSON string with serde_json's escaping (the reference writer's). */
static void sb_json_string(sbuf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    sb_put(b, "\"", 1);
    size_t run = 0;
    for (size_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        const char *esc = NULL;
        char u[7];
        if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\b') {
            esc = "\\b";
        } else if (c == '\f') {
            esc = "\\f";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c < 0x20) {
            u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
            u[4] = hex[c >> 4]; u[5] = hex[c & 15]; u[6] = '\0';
            esc = u;
        }
        if (esc != NULL) {
            sb_put(b, s + k - run, run);
            run = 0;
            sb_str(b, esc);
        } else {
            run++;
        }
    }
    sb_put(b, s + n - run, run);
    sb_put(b, "\"", 1);
}

static void sb_size(sbuf *b, unsigned long long v)
{
    char tmp[32];
    int k = snprintf(tmp, sizeof tmp, "%llu", v);
    sb_put(b, tmp, (size_t)k);
}

static int bytes_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c != 0) {
        return c;
    }
    return an < bn ? -1 : (an > bn ? 1 : 0);
}

static int write_order(const void *a, const void *b)
{
    const eg_st_write_entry *x = *(const eg_st_write_entry *const *)a;
    const eg_st_write_entry *y = *(const eg_st_write_entry *const *)b;
    if (x->dtype != y->dtype) {
        return x->dtype > y->dtype ? -1 : 1;
    }
    return bytes_cmp(x->name, x->name_len, y->name, y->name_len);
}

static int name_order(const void *a, const void *b)
{
    const eg_st_write_entry *x = *(const eg_st_write_entry *const *)a;
    const eg_st_write_entry *y = *(const eg_st_write_entry *const *)b;
    return bytes_cmp(x->name, x->name_len, y->name, y->name_len);
}

static int meta_order(const void *a, const void *b)
{
    const eg_st_meta *x = *(const eg_st_meta *const *)a;
    const eg_st_meta *y = *(const eg_st_meta *const *)b;
    return bytes_cmp(x->key, x->key_len, y->key, y->key_len);
}

eg_status eg_st_build_header(const eg_st_write_entry *entries, size_t n,
                             const eg_st_meta *meta, size_t n_meta,
                             char **out, size_t *out_len, size_t **order_out, eg_err *err)
{
    sbuf b = {0};
    size_t *order = NULL;
    const eg_st_write_entry **byname = NULL, **bywrite = NULL;
    const eg_st_meta **mo = NULL;
    eg_status st = EG_OK;
    *out = NULL;
    *out_len = 0;
    if (order_out != NULL) {
        *order_out = NULL;
    }
    for (size_t k = 0; k < n; k++) {
        const eg_st_write_entry *e = &entries[k];
        if ((unsigned)e->dtype >= EG_ST_NUM_DTYPES) {
            return eg_seterr(err, EG_EINVAL, "tensor %zu: invalid dtype code %d", k, (int)e->dtype);
        }
        if (!eg_utf8_valid(e->name, e->name_len, NULL)) {
            return eg_seterr(err, EG_EINVAL, "tensor %zu: name is not valid UTF-8", k);
        }
        if (e->name_len == 12 && memcmp(e->name, "__metadata__", 12) == 0) {
            return eg_seterr(err, EG_EINVAL, "a tensor cannot be named \"__metadata__\"");
        }
        if (e->ndim < 0 || (e->ndim > 0 && e->shape == NULL)) {
            return eg_seterr(err, EG_EINVAL, "tensor \"%.200s\": invalid ndim %d", e->name, e->ndim);
        }
        size_t numel = 1;
        for (int d = 0; d < e->ndim; d++) {
            if (e->shape[d] < 0) {
                return eg_seterr(err, EG_EINVAL, "tensor \"%.200s\": negative dimension", e->name);
            }
            if ((uint64_t)e->shape[d] > (uint64_t)SIZE_MAX || eg_mul_ovf(numel, (size_t)e->shape[d], &numel)) {
                return eg_seterr(err, EG_EOVERFLOW, "tensor \"%.200s\": element count overflows", e->name);
            }
        }
        size_t nb;
        if (eg_mul_ovf(numel, eg_st_dtype_size(e->dtype), &nb) || nb != e->nbytes) {
            return eg_seterr(err, EG_EINVAL, "tensor \"%.200s\": %zu data bytes do not match shape x %s",
                             e->name, e->nbytes, eg_st_dtype_name(e->dtype));
        }
        if (nb > 0 && e->data == NULL) {
            return eg_seterr(err, EG_EINVAL, "tensor \"%.200s\": no data", e->name);
        }
    }
    for (size_t k = 0; k < n_meta; k++) {
        if (!eg_utf8_valid(meta[k].key, meta[k].key_len, NULL) ||
            !eg_utf8_valid(meta[k].value, meta[k].value_len, NULL)) {
            return eg_seterr(err, EG_EINVAL, "metadata entry %zu is not valid UTF-8", k);
        }
    }
    if (n > 0) {
        order = malloc(n * sizeof *order);
        byname = malloc(n * sizeof *byname);
        bywrite = malloc(n * sizeof *bywrite);
        if (order == NULL || byname == NULL || bywrite == NULL) {
            st = eg_seterr(err, EG_ENOMEM, "out of memory building the header");
            goto done;
        }
        for (size_t k = 0; k < n; k++) {
            byname[k] = bywrite[k] = &entries[k];
        }
        qsort(bywrite, n, sizeof *bywrite, write_order);
        qsort(byname, n, sizeof *byname, name_order);
        for (size_t k = 0; k < n; k++) {
            order[k] = (size_t)(bywrite[k] - entries);
        }
        for (size_t k = 1; k < n; k++) {
            const eg_st_write_entry *x = byname[k - 1], *y = byname[k];
            if (bytes_cmp(x->name, x->name_len, y->name, y->name_len) == 0) {
                st = eg_seterr(err, EG_EINVAL, "duplicate tensor name \"%.200s\"", x->name);
                goto done;
            }
        }
    }
    sb_put(&b, "{", 1);
    int first = 1;
    if (meta != NULL) {
        if (n_meta > 0) {
            mo = malloc(n_meta * sizeof *mo);
            if (mo == NULL) {
                st = eg_seterr(err, EG_ENOMEM, "out of memory building the header");
                goto done;
            }
            for (size_t k = 0; k < n_meta; k++) {
                mo[k] = &meta[k];
            }
            qsort(mo, n_meta, sizeof *mo, meta_order);
            for (size_t k = 1; k < n_meta; k++) {
                if (meta_order(&mo[k - 1], &mo[k]) == 0) {
                    st = eg_seterr(err, EG_EINVAL, "duplicate metadata key \"%.200s\"", mo[k]->key);
                    goto done;
                }
            }
        }
        sb_str(&b, "\"__metadata__\":{");
        for (size_t k = 0; k < n_meta; k++) {
            if (k > 0) {
                sb_put(&b, ",", 1);
            }
            sb_json_string(&b, mo[k]->key, mo[k]->key_len);
            sb_put(&b, ":", 1);
            sb_json_string(&b, mo[k]->value, mo[k]->value_len);
        }
        sb_put(&b, "}", 1);
        first = 0;
    }
    size_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const eg_st_write_entry *e = &entries[order[k]];
        if (!first) {
            sb_put(&b, ",", 1);
        }
        first = 0;
        sb_json_string(&b, e->name, e->name_len);
        sb_str(&b, ":{\"dtype\":\"");
        sb_str(&b, eg_st_dtype_name(e->dtype));
        sb_str(&b, "\",\"shape\":[");
        for (int d = 0; d < e->ndim; d++) {
            if (d > 0) {
                sb_put(&b, ",", 1);
            }
            sb_size(&b, (unsigned long long)e->shape[d]);
        }
        sb_str(&b, "],\"data_offsets\":[");
        sb_size(&b, off);
        sb_put(&b, ",", 1);
        if (eg_add_ovf(off, e->nbytes, &off)) {
            st = eg_seterr(err, EG_EOVERFLOW, "total data size overflows");
            goto done;
        }
        sb_size(&b, off);
        sb_str(&b, "]}");
    }
    sb_put(&b, "}", 1);
    while (!b.oom && b.len % 8 != 0) {
        sb_put(&b, " ", 1);
    }
    if (b.oom) {
        st = eg_seterr(err, EG_ENOMEM, "out of memory building the header");
        goto done;
    }
    if (b.len > EG_ST_MAX_HEADER) {
        st = eg_seterr(err, EG_EINVAL, "header would be %zu bytes, above the %zu-byte limit readers enforce",
                       b.len, EG_ST_MAX_HEADER);
        goto done;
    }
    *out = b.p;
    *out_len = b.len;
    b.p = NULL;
    if (order_out != NULL) {
        *order_out = order;
        order = NULL;
    }
done:
    free(b.p);
    free(order);
    free(byname);
    free(bywrite);
    free(mo);
    return st;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

eg_status eg_st_write(const char *path, const eg_st_write_entry *entries, size_t n,
                      const eg_st_meta *meta, size_t n_meta, eg_err *err)
{
    char *hdr = NULL, *tmp = NULL, *dir = NULL;
    size_t hlen = 0, *order = NULL;
    int fd = -1, created = 0;
    eg_status st = eg_st_build_header(entries, n, meta, n_meta, &hdr, &hlen, &order, err);
    if (st != EG_OK) {
        return st;
    }
    /* temp name ".<base>.tmp-<pid>-<k>" in the destination folder */
    size_t plen = strlen(path);
    const char *slash = strrchr(path, '/');
    size_t dlen = slash != NULL ? (size_t)(slash - path) : 0;
    const char *basename = slash != NULL ? slash + 1 : path;
    if (basename[0] == '\0') {
        st = eg_seterr(err, EG_EINVAL, "%s: path names a folder, not a file", path);
        goto done;
    }
    tmp = malloc(plen + 64);
    dir = malloc(dlen + 2);
    if (tmp == NULL || dir == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "out of memory");
        goto done;
    }
    if (slash != NULL) {
        memcpy(dir, path, dlen == 0 ? 1 : dlen);
        dir[dlen == 0 ? 1 : dlen] = '\0';
    } else {
        strcpy(dir, ".");
    }
    static unsigned counter = 0;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        unsigned k = __atomic_fetch_add(&counter, 1u, __ATOMIC_RELAXED);
        snprintf(tmp, plen + 64, "%.*s%s.%s.tmp-%ld-%u", (int)dlen, path, slash != NULL ? "/" : "",
                 basename, (long)getpid(), k);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && errno != EEXIST) {
            break;
        }
    }
    if (fd < 0) {
        st = eg_seterr(err, EG_EIO, "%s: cannot create a temporary file in its folder: %s", path, strerror(errno));
        goto done;
    }
    created = 1;
    unsigned char len8[8];
    for (int k = 0; k < 8; k++) {
        len8[k] = (unsigned char)((uint64_t)hlen >> (8 * k));
    }
    int bad = write_all(fd, len8, 8) < 0 || write_all(fd, hdr, hlen) < 0;
    for (size_t k = 0; k < n && !bad; k++) {
        const eg_st_write_entry *e = &entries[order[k]];
        bad = e->nbytes > 0 && write_all(fd, e->data, e->nbytes) < 0;
    }
    if (bad || fsync(fd) != 0) {
        st = eg_seterr(err, EG_EIO, "%s: writing %s failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    int c = close(fd);
    fd = -1;
    if (c != 0) {
        st = eg_seterr(err, EG_EIO, "%s: closing %s failed: %s", path, tmp, strerror(errno));
        goto done;
    }
    if (rename(tmp, path) != 0) {
        st = eg_seterr(err, EG_EIO, "%s: cannot rename the temporary file into place: %s", path, strerror(errno));
        goto done;
    }
    created = 0; /* renamed: nothing to clean up */
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        /* Some file systems refuse fsync on a folder (EINVAL); the data is
         * already durable, so only a real I/O error counts. */
        if (fsync(dfd) != 0 && errno == EIO) {
            st = eg_seterr(err, EG_EIO, "%s: fsync of folder %s failed: %s", path, dir, strerror(errno));
        }
        close(dfd);
    }
done:
    if (fd >= 0) {
        close(fd);
    }
    if (created) {
        unlink(tmp);
    }
    free(tmp);
    free(dir);
    free(hdr);
    free(order);
    return st;
}
