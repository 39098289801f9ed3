/*
 * gguf.c — the GGUF reader declared in eg_gguf.h.
 *
 * Every field is read through a cursor that checks the bytes it needs
 * against what remains of the file before touching them, so a truncated or
 * lying file fails with a message naming the field and its offset and never
 * reads past the end. Counts are bounded by the bytes left before anything
 * is allocated for them (a tensor info takes at least 32 bytes, a metadata
 * entry 13, an array element its size or 8 for a string), so a small file
 * cannot make the reader allocate much more than its own size.
 *
 * Rules, in file order (docs/GGUF.md lists them for users):
 *   magic "GGUF"; version 2 or 3 (v1, with 32-bit counts, is refused, and a
 *   byte-swapped version is named as a big-endian file); counts that fit;
 *   keys: valid UTF-8 without NUL, unique; value types 0..12; arrays of
 *   scalars or strings only (nested arrays refused); bools 0 or 1;
 *   general.alignment an integer, a nonzero power of two; tensor names:
 *   valid UTF-8 without NUL, unique; 1..4 dims, each >= 1, element count and
 *   byte size without overflow (and <= INT64_MAX elements, as ggml needs);
 *   a supported ggml type whose block size divides the row length; offsets
 *   multiples of the alignment, inside the data section, no two tensors
 *   overlapping (checked on the tensors sorted by offset).
 */
#include "eg_gguf.h"
#include "eg_mapfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const vtype_names[EG_GGUF_NUM_VTYPES] = {
    "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
    "bool", "string", "array", "uint64", "int64", "float64",
};
static const size_t vtype_sizes[EG_GGUF_NUM_VTYPES] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};

const char *eg_gguf_vtype_name(int t)
{
    return t >= 0 && t < EG_GGUF_NUM_VTYPES ? vtype_names[t] : "?";
}

size_t eg_gguf_vtype_size(int t)
{
    return t >= 0 && t < EG_GGUF_NUM_VTYPES ? vtype_sizes[t] : 0;
}

/* ------------------------------------------------------------------ cursor */

typedef struct {
    const unsigned char *base;
    size_t size, pos;
    const char *what;
    char ctx[320];   /* what is being read, for messages: "metadata key \"x\"" */
    eg_err *err;
} cursor;

static eg_status need(cursor *c, size_t n, const char *field)
{
    if (n > c->size - c->pos) {
        return eg_seterr(c->err, EG_ECORRUPT,
                         "%s: %s: %s at offset %zu needs %zu bytes but only %zu remain (file of %zu bytes "
                         "truncated?)", c->what, c->ctx, field, c->pos, n, c->size - c->pos, c->size);
    }
    return EG_OK;
}

static eg_status rd_u32(cursor *c, const char *field, uint32_t *out)
{
    eg_status st = need(c, 4, field);
    if (st == EG_OK) {
        *out = eg_load_le32(c->base + c->pos);
        c->pos += 4;
    }
    return st;
}

static eg_status rd_u64(cursor *c, const char *field, uint64_t *out)
{
    eg_status st = need(c, 8, field);
    if (st == EG_OK) {
        *out = eg_load_le64(c->base + c->pos);
        c->pos += 8;
    }
    return st;
}

/* A string: u64 length, then that many bytes inside the file. */
static eg_status rd_str(cursor *c, const char *field, eg_gguf_str *out)
{
    size_t at = c->pos;
    uint64_t n;
    eg_status st = rd_u64(c, field, &n);
    if (st != EG_OK) {
        return st;
    }
    if (n > (uint64_t)(c->size - c->pos)) {
        return eg_seterr(c->err, EG_ECORRUPT,
                         "%s: %s: %s length %llu at offset %zu reaches past the end of the file "
                         "(%zu bytes remain)", c->what, c->ctx, field, (unsigned long long)n, at,
                         c->size - c->pos);
    }
    out->s = (const char *)c->base + c->pos;
    out->len = (size_t)n;
    c->pos += (size_t)n;
    return EG_OK;
}

/* A key or tensor name: valid UTF-8 without NUL, copied NUL-terminated. */
static eg_status name_copy(cursor *c, eg_arena *a, const eg_gguf_str *s, size_t at, const char *field,
                           const char **out)
{
    size_t bad = 0;
    if (!eg_utf8_valid(s->s, s->len, &bad) || memchr(s->s, 0, s->len) != NULL) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s at offset %zu is not valid UTF-8 without NUL bytes",
                         c->what, field, at);
    }
    char *p = eg_arena_alloc(a, s->len + 1);
    if (p == NULL) {
        return eg_seterr(c->err, EG_ENOMEM, "%s: out of memory", c->what);
    }
    memcpy(p, s->s, s->len);
    p[s->len] = '\0';
    *out = p;
    return EG_OK;
}

/* ------------------------------------------------------------------ reader */

static void file_init(eg_gguf_file *f)
{
    memset(f, 0, sizeof *f);
    eg_arena_init(&f->arena);
}

void eg_gguf_close(eg_gguf_file *f)
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

/* The value of one metadata entry, the cursor at its first byte. */
static eg_status parse_value(cursor *c, eg_gguf_file *f, eg_gguf_kv *kv)
{
    eg_status st;
    uint32_t type;
    size_t at = c->pos;
    if ((st = rd_u32(c, "value type", &type)) != EG_OK) {
        return st;
    }
    if (type >= EG_GGUF_NUM_VTYPES) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: unknown value type %u at offset %zu (known: 0..12)",
                         c->what, c->ctx, type, at);
    }
    kv->type = kv->elem_type = (eg_gguf_vtype)type;
    kv->n = 1;
    if (type == EG_GGUF_ARRAY) {
        uint32_t et;
        at = c->pos;
        if ((st = rd_u32(c, "array element type", &et)) != EG_OK) {
            return st;
        }
        if (et == EG_GGUF_ARRAY) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: nested arrays (element type at offset %zu) are "
                             "not supported", c->what, c->ctx, at);
        }
        if (et >= EG_GGUF_NUM_VTYPES) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: unknown array element type %u at offset %zu "
                             "(known: 0..12)", c->what, c->ctx, et, at);
        }
        uint64_t n;
        at = c->pos;
        if ((st = rd_u64(c, "array length", &n)) != EG_OK) {
            return st;
        }
        size_t min_elem = et == EG_GGUF_STRING ? 8 : vtype_sizes[et];
        if (n > (uint64_t)((c->size - c->pos) / min_elem)) {
            return eg_seterr(c->err, EG_ECORRUPT,
                             "%s: %s: array length %llu at offset %zu: %llu %s elements cannot fit in the "
                             "%zu bytes that remain", c->what, c->ctx, (unsigned long long)n, at,
                             (unsigned long long)n, vtype_names[et], c->size - c->pos);
        }
        kv->elem_type = (eg_gguf_vtype)et;
        kv->n = (size_t)n;
    }
    kv->offset = c->pos;
    kv->data = c->base + c->pos;
    if (kv->elem_type == EG_GGUF_STRING) {
        eg_gguf_str *strs = eg_arena_alloc_n(&f->arena, kv->n > 0 ? kv->n : 1, sizeof *strs);
        if (strs == NULL) {
            return eg_seterr(c->err, EG_ENOMEM, "%s: out of memory", c->what);
        }
        for (size_t k = 0; k < kv->n; k++) {
            if ((st = rd_str(c, kv->type == EG_GGUF_ARRAY ? "array string" : "string", &strs[k])) != EG_OK) {
                return st;
            }
        }
        kv->strs = strs;
        return EG_OK;
    }
    size_t nbytes = kv->n * vtype_sizes[kv->elem_type]; /* bounded above */
    if ((st = need(c, nbytes, "value")) != EG_OK) {
        return st;
    }
    if (kv->elem_type == EG_GGUF_BOOL) {
        for (size_t k = 0; k < kv->n; k++) {
            if (kv->data[k] > 1) {
                return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: bool at offset %zu holds %u, not 0 or 1",
                                 c->what, c->ctx, kv->offset + k, kv->data[k]);
            }
        }
    }
    c->pos += nbytes;
    return EG_OK;
}

/* Integer value of a scalar or array element; 0 on success, -1 if the
 * type is not an integer, 1 if an unsigned 64-bit value exceeds INT64_MAX
 * (*u holds it then). */
static int int_at(const eg_gguf_kv *kv, size_t i, int64_t *v, uint64_t *u)
{
    const unsigned char *p = kv->data + i * vtype_sizes[kv->elem_type];
    *u = 0;
    switch (kv->elem_type) {
    case EG_GGUF_UINT8: *v = p[0]; break;
    case EG_GGUF_INT8: *v = (int8_t)p[0]; break;
    case EG_GGUF_UINT16: *v = eg_load_le16(p); break;
    case EG_GGUF_INT16: *v = (int16_t)eg_load_le16(p); break;
    case EG_GGUF_UINT32: *v = eg_load_le32(p); break;
    case EG_GGUF_INT32: *v = (int32_t)eg_load_le32(p); break;
    case EG_GGUF_INT64: *v = (int64_t)eg_load_le64(p); break;
    case EG_GGUF_UINT64:
        *u = eg_load_le64(p);
        if (*u > (uint64_t)INT64_MAX) {
            return 1;
        }
        *v = (int64_t)*u;
        break;
    default:
        return -1;
    }
    return 0;
}

static int by_key(const void *a, const void *b)
{
    const eg_gguf_kv *x = *(const eg_gguf_kv *const *)a, *y = *(const eg_gguf_kv *const *)b;
    return strcmp(x->key, y->key);
}

static int by_name(const void *a, const void *b)
{
    const eg_gguf_tensor *x = *(const eg_gguf_tensor *const *)a, *y = *(const eg_gguf_tensor *const *)b;
    return strcmp(x->name, y->name);
}

static int by_offset(const void *a, const void *b)
{
    const eg_gguf_tensor *x = *(const eg_gguf_tensor *const *)a, *y = *(const eg_gguf_tensor *const *)b;
    if (x->rel_offset != y->rel_offset) {
        return x->rel_offset < y->rel_offset ? -1 : 1;
    }
    return x->info_offset < y->info_offset ? -1 : (x->info_offset > y->info_offset);
}

static eg_status parse_alignment(cursor *c, eg_gguf_file *f, const eg_gguf_kv *kv)
{
    int64_t v;
    uint64_t u;
    int r = kv->type == EG_GGUF_ARRAY ? -1 : int_at(kv, 0, &v, &u);
    if (r < 0) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: metadata key \"general.alignment\" at offset %zu must be an "
                         "integer, found %s", c->what, kv->offset, vtype_names[kv->type]);
    }
    if (r > 0 || v <= 0 || (v & (v - 1)) != 0 || (uint64_t)v > (uint64_t)SIZE_MAX / 2) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: metadata key \"general.alignment\" at offset %zu is %lld; "
                         "it must be a nonzero power of two", c->what, kv->offset,
                         r > 0 ? (long long)-1 : (long long)v);
    }
    f->alignment = (size_t)v;
    return EG_OK;
}

static eg_status parse_tensor_info(cursor *c, eg_gguf_file *f, size_t k, eg_gguf_tensor *t)
{
    eg_status st;
    eg_gguf_str name;
    t->info_offset = c->pos;
    snprintf(c->ctx, sizeof c->ctx, "tensor info %zu (offset %zu)", k, c->pos);
    if ((st = rd_str(c, "name", &name)) != EG_OK) {
        return st;
    }
    if ((st = name_copy(c, &f->arena, &name, t->info_offset, "tensor name", &t->name)) != EG_OK) {
        return st;
    }
    t->name_len = name.len;
    snprintf(c->ctx, sizeof c->ctx, "tensor \"%.200s\" (info at offset %zu)", t->name, t->info_offset);
    uint32_t nd;
    size_t at = c->pos;
    if ((st = rd_u32(c, "n_dims", &nd)) != EG_OK) {
        return st;
    }
    if (nd < 1 || nd > EG_GGUF_MAX_DIMS) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: n_dims %u at offset %zu must be 1..%d", c->what, c->ctx,
                         nd, at, EG_GGUF_MAX_DIMS);
    }
    t->n_dims = (int)nd;
    size_t numel = 1;
    for (int d = 0; d < EG_GGUF_MAX_DIMS; d++) {
        t->ne[d] = 1;
    }
    for (uint32_t d = 0; d < nd; d++) {
        uint64_t v;
        at = c->pos;
        if ((st = rd_u64(c, "dimension", &v)) != EG_OK) {
            return st;
        }
        if (v == 0) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: dimension %u at offset %zu is 0 (must be >= 1)",
                             c->what, c->ctx, d, at);
        }
        if (v > (uint64_t)INT64_MAX || v > (uint64_t)SIZE_MAX || eg_mul_ovf(numel, (size_t)v, &numel) ||
            (uint64_t)numel > (uint64_t)INT64_MAX) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: dimension %u (%llu) at offset %zu makes the element "
                             "count overflow", c->what, c->ctx, d, (unsigned long long)v, at);
        }
        t->ne[d] = (int64_t)v;
    }
    t->n_elements = numel;
    uint32_t type;
    at = c->pos;
    if ((st = rd_u32(c, "type", &type)) != EG_OK) {
        return st;
    }
    size_t bs, ts;
    if (eg_ggml_type_traits((int)(type < EG_GGML_TYPE_LIMIT ? type : EG_GGML_TYPE_LIMIT), &bs, &ts) < 0) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: ggml type %u (%s) at offset %zu is not supported "
                         "(supported: %s)", c->what, c->ctx, type,
                         eg_ggml_type_name(type < EG_GGML_TYPE_LIMIT ? (int)type : -1), at,
                         eg_ggml_supported_names());
    }
    t->type = (int)type;
    if ((uint64_t)t->ne[0] % bs != 0) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: row length %lld is not a multiple of %s's block size %zu",
                         c->what, c->ctx, (long long)t->ne[0], eg_ggml_type_name(t->type), bs);
    }
    if (eg_mul_ovf(numel / bs, ts, &t->nbytes)) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: byte size overflows", c->what, c->ctx);
    }
    uint64_t off;
    if ((st = rd_u64(c, "offset", &off)) != EG_OK) {
        return st;
    }
    if (off > (uint64_t)SIZE_MAX) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: %s: data offset %llu does not fit in size_t", c->what,
                         c->ctx, (unsigned long long)off);
    }
    t->rel_offset = (size_t)off;
    return EG_OK;
}

/* Offsets aligned, inside the data section, not overlapping; names unique. */
static eg_status check_tensors(cursor *c, eg_gguf_file *f)
{
    size_t n = f->n_tensors;
    if (n == 0) {
        return EG_OK;
    }
    if (f->data_start > f->size) {
        return eg_seterr(c->err, EG_ECORRUPT, "%s: the data section would start at offset %zu (tensor infos end "
                         "at %zu, aligned to %zu), past the end of the file (%zu bytes)", c->what, f->data_start,
                         c->pos, f->alignment, f->size);
    }
    size_t data_len = f->size - f->data_start;
    for (size_t k = 0; k < n; k++) {
        eg_gguf_tensor *t = &f->tensors[k];
        if (t->rel_offset % f->alignment != 0) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: tensor \"%.200s\" (info at offset %zu): data offset %zu is "
                             "not a multiple of the alignment %zu", c->what, t->name, t->info_offset,
                             t->rel_offset, f->alignment);
        }
        if (t->rel_offset > data_len || t->nbytes > data_len - t->rel_offset) {
            return eg_seterr(c->err, EG_ECORRUPT, "%s: tensor \"%.200s\" (info at offset %zu): %zu bytes at data "
                             "offset %zu (file offset %zu) reach past the end of the file (%zu bytes)", c->what,
                             t->name, t->info_offset, t->nbytes, t->rel_offset, f->data_start + t->rel_offset,
                             f->size);
        }
        t->offset = f->data_start + t->rel_offset;
    }
    eg_gguf_tensor **sorted = malloc(n * sizeof *sorted);
    if (sorted == NULL) {
        return eg_seterr(c->err, EG_ENOMEM, "%s: out of memory", c->what);
    }
    for (size_t k = 0; k < n; k++) {
        sorted[k] = &f->tensors[k];
    }
    eg_status st = EG_OK;
    qsort(sorted, n, sizeof *sorted, by_name);
    for (size_t k = 1; k < n && st == EG_OK; k++) {
        if (strcmp(sorted[k - 1]->name, sorted[k]->name) == 0) {
            size_t a = sorted[k - 1]->info_offset, b = sorted[k]->info_offset;
            st = eg_seterr(c->err, EG_ECORRUPT, "%s: duplicate tensor name \"%.200s\" (infos at offsets %zu and "
                           "%zu)", c->what, sorted[k]->name, a < b ? a : b, a < b ? b : a);
        }
    }
    if (st == EG_OK) {
        qsort(sorted, n, sizeof *sorted, by_offset);
        for (size_t k = 1; k < n && st == EG_OK; k++) {
            const eg_gguf_tensor *a = sorted[k - 1], *b = sorted[k];
            if (b->rel_offset - a->rel_offset < a->nbytes) {
                st = eg_seterr(c->err, EG_ECORRUPT, "%s: tensors \"%.200s\" (data offset %zu, %zu bytes) and "
                               "\"%.200s\" (data offset %zu) overlap", c->what, a->name, a->rel_offset,
                               a->nbytes, b->name, b->rel_offset);
            }
        }
    }
    free(sorted);
    return st;
}

static eg_status parse_into(const unsigned char *buf, size_t size, eg_gguf_file *f, eg_err *err)
{
    eg_status st;
    cursor cur = {.base = buf, .size = size, .pos = 0, .what = f->what, .err = err};
    cursor *c = &cur;
    snprintf(c->ctx, sizeof c->ctx, "header");
    f->base = buf;
    f->size = size;
    f->alignment = EG_GGUF_DEFAULT_ALIGNMENT;
    if (size < 4 || memcmp(buf, "GGUF", 4) != 0) {
        return eg_seterr(err, EG_ECORRUPT, "%s: not a GGUF file (the first 4 bytes are not \"GGUF\")", f->what);
    }
    c->pos = 4;
    uint32_t version;
    if ((st = rd_u32(c, "version", &version)) != EG_OK) {
        return st;
    }
    if (version == 1) {
        return eg_seterr(err, EG_ECORRUPT, "%s: GGUF version 1 is not supported (only versions 2 and 3; "
                         "re-convert the model with a current llama.cpp)", f->what);
    }
    if (version != 2 && version != 3) {
        uint32_t swapped = __builtin_bswap32(version);
        if (swapped == 2 || swapped == 3) {
            return eg_seterr(err, EG_ECORRUPT, "%s: big-endian GGUF (version %u, byte-swapped) is not supported; "
                             "only little-endian files are", f->what, swapped);
        }
        return eg_seterr(err, EG_ECORRUPT, "%s: unknown GGUF version %u at offset 4 (supported: 2 and 3)",
                         f->what, version);
    }
    f->version = version;
    uint64_t nt, nkv;
    if ((st = rd_u64(c, "tensor count", &nt)) != EG_OK || (st = rd_u64(c, "metadata count", &nkv)) != EG_OK) {
        return st;
    }
    size_t left = size - c->pos;
    /* each tensor info takes >= 32 bytes, each metadata entry >= 13 */
    if (nt > (uint64_t)(left / 32)) {
        return eg_seterr(err, EG_ECORRUPT, "%s: header: tensor count %llu at offset 8 cannot fit in the %zu bytes "
                         "after the header", f->what, (unsigned long long)nt, left);
    }
    if (nkv > (uint64_t)((left - 32 * (size_t)nt) / 13)) {
        return eg_seterr(err, EG_ECORRUPT, "%s: header: metadata count %llu at offset 16 cannot fit in the %zu "
                         "bytes after the header (with %llu tensor infos)", f->what, (unsigned long long)nkv,
                         left, (unsigned long long)nt);
    }
    f->n_kv = (size_t)nkv;
    f->n_tensors = (size_t)nt;
    if (f->n_kv > 0 && (f->kv = eg_arena_alloc_n(&f->arena, f->n_kv, sizeof *f->kv)) == NULL) {
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory", f->what);
    }
    if (f->n_tensors > 0 && (f->tensors = eg_arena_alloc_n(&f->arena, f->n_tensors, sizeof *f->tensors)) == NULL) {
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory", f->what);
    }
    const eg_gguf_kv *align_kv = NULL;
    for (size_t k = 0; k < f->n_kv; k++) {
        eg_gguf_kv *kv = &f->kv[k];
        memset(kv, 0, sizeof *kv);
        eg_gguf_str key;
        size_t at = c->pos;
        snprintf(c->ctx, sizeof c->ctx, "metadata entry %zu (offset %zu)", k, at);
        if ((st = rd_str(c, "key", &key)) != EG_OK) {
            return st;
        }
        if ((st = name_copy(c, &f->arena, &key, at, "metadata key", &kv->key)) != EG_OK) {
            return st;
        }
        kv->key_len = key.len;
        snprintf(c->ctx, sizeof c->ctx, "metadata key \"%.200s\" (offset %zu)", kv->key, at);
        if ((st = parse_value(c, f, kv)) != EG_OK) {
            return st;
        }
        if (strcmp(kv->key, "general.alignment") == 0) {
            align_kv = kv;
        }
    }
    if (f->n_kv > 1) {
        eg_gguf_kv **sorted = malloc(f->n_kv * sizeof *sorted);
        if (sorted == NULL) {
            return eg_seterr(err, EG_ENOMEM, "%s: out of memory", f->what);
        }
        for (size_t k = 0; k < f->n_kv; k++) {
            sorted[k] = &f->kv[k];
        }
        qsort(sorted, f->n_kv, sizeof *sorted, by_key);
        st = EG_OK;
        for (size_t k = 1; k < f->n_kv && st == EG_OK; k++) {
            if (strcmp(sorted[k - 1]->key, sorted[k]->key) == 0) {
                st = eg_seterr(err, EG_ECORRUPT, "%s: duplicate metadata key \"%.200s\"", f->what, sorted[k]->key);
            }
        }
        free(sorted);
        if (st != EG_OK) {
            return st;
        }
    }
    if (align_kv != NULL && (st = parse_alignment(c, f, align_kv)) != EG_OK) {
        return st;
    }
    for (size_t k = 0; k < f->n_tensors; k++) {
        memset(&f->tensors[k], 0, sizeof f->tensors[k]);
        if ((st = parse_tensor_info(c, f, k, &f->tensors[k])) != EG_OK) {
            return st;
        }
    }
    size_t pad = (f->alignment - c->pos % f->alignment) % f->alignment;
    if (eg_add_ovf(c->pos, pad, &f->data_start)) {
        return eg_seterr(err, EG_ECORRUPT, "%s: data section offset overflows", f->what);
    }
    return check_tensors(c, f);
}

static eg_status set_what(eg_gguf_file *f, const char *what, eg_err *err)
{
    if (what == NULL) {
        what = "GGUF buffer";
    }
    size_t n = strlen(what);
    char *p = eg_arena_alloc(&f->arena, n + 1);
    if (p == NULL) {
        f->what = "GGUF file";
        return eg_seterr(err, EG_ENOMEM, "%s: out of memory", what);
    }
    memcpy(p, what, n + 1);
    f->what = p;
    return EG_OK;
}

eg_status eg_gguf_parse(const unsigned char *buf, size_t size, const char *what,
                        eg_gguf_file *f, eg_err *err)
{
    file_init(f);
    eg_status st = set_what(f, what, err);
    return st != EG_OK ? st : parse_into(buf, size, f, err);
}

eg_status eg_gguf_open(const char *path, eg_gguf_file *f, eg_err *err)
{
    file_init(f);
    eg_status st = set_what(f, path, err);
    if (st != EG_OK) {
        return st;
    }
    const unsigned char *p;
    size_t size;
    st = eg_map_file(path, 24, "the 24-byte GGUF header", &p, &size, &f->sys_errno, err);
    if (st != EG_OK) {
        return st;
    }
    f->mapped = 1;
    return parse_into(p, size, f, err);
}

/* ------------------------------------------------------------- accessors */

const eg_gguf_kv *eg_gguf_find_kv(const eg_gguf_file *f, const char *key)
{
    for (size_t k = 0; k < f->n_kv; k++) {
        if (strcmp(f->kv[k].key, key) == 0) {
            return &f->kv[k];
        }
    }
    return NULL;
}

const eg_gguf_tensor *eg_gguf_find_tensor(const eg_gguf_file *f, const char *name)
{
    for (size_t k = 0; k < f->n_tensors; k++) {
        if (strcmp(f->tensors[k].name, name) == 0) {
            return &f->tensors[k];
        }
    }
    return NULL;
}

static eg_status lookup(const eg_gguf_file *f, const char *key, const eg_gguf_kv **kv, eg_err *err)
{
    *kv = eg_gguf_find_kv(f, key);
    if (*kv == NULL) {
        return eg_seterr(err, EG_EINVAL, "%s: metadata key \"%.200s\" is missing", f->what, key);
    }
    return EG_OK;
}

static eg_status wrong_type(const eg_gguf_file *f, const eg_gguf_kv *kv, const char *want, eg_err *err)
{
    if (kv->type == EG_GGUF_ARRAY) {
        return eg_seterr(err, EG_ECORRUPT, "%s: metadata key \"%.200s\" at offset %zu holds an array of %s, "
                         "expected %s", f->what, kv->key, kv->offset, vtype_names[kv->elem_type], want);
    }
    return eg_seterr(err, EG_ECORRUPT, "%s: metadata key \"%.200s\" at offset %zu holds a %s, expected %s",
                     f->what, kv->key, kv->offset, vtype_names[kv->type], want);
}

static eg_status check_index(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, eg_err *err)
{
    if (i >= kv->n) {
        return eg_seterr(err, EG_EINVAL, "%s: metadata key \"%.200s\": index %zu out of range (%zu elements)",
                         f->what, kv->key, i, kv->n);
    }
    return EG_OK;
}

eg_status eg_gguf_kv_int(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, int64_t *out, eg_err *err)
{
    eg_status st = check_index(f, kv, i, err);
    if (st != EG_OK) {
        return st;
    }
    uint64_t u;
    int r = int_at(kv, i, out, &u);
    if (r < 0) {
        return wrong_type(f, kv, "an integer", err);
    }
    if (r > 0) {
        return eg_seterr(err, EG_EOVERFLOW, "%s: metadata key \"%.200s\" at offset %zu: %llu does not fit in "
                         "int64", f->what, kv->key, kv->offset, (unsigned long long)u);
    }
    return EG_OK;
}

eg_status eg_gguf_kv_float(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, double *out, eg_err *err)
{
    eg_status st = check_index(f, kv, i, err);
    if (st != EG_OK) {
        return st;
    }
    if (kv->elem_type == EG_GGUF_FLOAT32) {
        uint32_t b = eg_load_le32(kv->data + 4 * i);
        float x;
        memcpy(&x, &b, 4);
        *out = x;
    } else if (kv->elem_type == EG_GGUF_FLOAT64) {
        uint64_t b = eg_load_le64(kv->data + 8 * i);
        memcpy(out, &b, 8);
    } else {
        return wrong_type(f, kv, "a float32 or float64", err);
    }
    return EG_OK;
}

eg_status eg_gguf_kv_bool(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, int *out, eg_err *err)
{
    eg_status st = check_index(f, kv, i, err);
    if (st != EG_OK) {
        return st;
    }
    if (kv->elem_type != EG_GGUF_BOOL) {
        return wrong_type(f, kv, "a bool", err);
    }
    *out = kv->data[i];
    return EG_OK;
}

eg_status eg_gguf_kv_str(const eg_gguf_file *f, const eg_gguf_kv *kv, size_t i, eg_gguf_str *out, eg_err *err)
{
    eg_status st = check_index(f, kv, i, err);
    if (st != EG_OK) {
        return st;
    }
    if (kv->elem_type != EG_GGUF_STRING) {
        return wrong_type(f, kv, "a string", err);
    }
    *out = kv->strs[i];
    return EG_OK;
}

/* A scalar getter: look the key up, refuse arrays, read element 0. */
#define SCALAR_GETTER(fn, elem_fn, T, want)                                            \
    eg_status fn(const eg_gguf_file *f, const char *key, T *out, eg_err *err)          \
    {                                                                                  \
        const eg_gguf_kv *kv;                                                          \
        eg_status st = lookup(f, key, &kv, err);                                       \
        if (st != EG_OK) {                                                             \
            return st;                                                                 \
        }                                                                              \
        if (kv->type == EG_GGUF_ARRAY) {                                               \
            return wrong_type(f, kv, want, err);                                       \
        }                                                                              \
        return elem_fn(f, kv, 0, out, err);                                            \
    }

SCALAR_GETTER(eg_gguf_get_int, eg_gguf_kv_int, int64_t, "an integer")
SCALAR_GETTER(eg_gguf_get_float, eg_gguf_kv_float, double, "a float32 or float64")
SCALAR_GETTER(eg_gguf_get_bool, eg_gguf_kv_bool, int, "a bool")
SCALAR_GETTER(eg_gguf_get_str, eg_gguf_kv_str, eg_gguf_str, "a string")

eg_status eg_gguf_get_uint(const eg_gguf_file *f, const char *key, uint64_t *out, eg_err *err)
{
    const eg_gguf_kv *kv;
    eg_status st = lookup(f, key, &kv, err);
    if (st != EG_OK) {
        return st;
    }
    if (kv->type == EG_GGUF_ARRAY) {
        return wrong_type(f, kv, "an integer", err);
    }
    int64_t v;
    int r = int_at(kv, 0, &v, out);
    if (r < 0) {
        return wrong_type(f, kv, "an integer", err);
    }
    if (r == 0) {
        if (v < 0) {
            return eg_seterr(err, EG_ECORRUPT, "%s: metadata key \"%.200s\" at offset %zu is %lld, expected a "
                             "non-negative integer", f->what, kv->key, kv->offset, (long long)v);
        }
        *out = (uint64_t)v;
    }
    return EG_OK;
}

eg_status eg_gguf_get_array(const eg_gguf_file *f, const char *key, eg_gguf_vtype *elem_type,
                            size_t *n, eg_err *err)
{
    const eg_gguf_kv *kv;
    eg_status st = lookup(f, key, &kv, err);
    if (st != EG_OK) {
        return st;
    }
    if (kv->type != EG_GGUF_ARRAY) {
        return wrong_type(f, kv, "an array", err);
    }
    *elem_type = kv->elem_type;
    *n = kv->n;
    return EG_OK;
}

eg_status eg_gguf_dequantize(const eg_gguf_file *f, const eg_gguf_tensor *t, float *dst, eg_err *err)
{
    if (!eg_ggml_can_dequantize(t->type)) {
        return eg_seterr(err, EG_EINVAL, "%s: tensor \"%.200s\": cannot dequantize type %s", f->what, t->name,
                         eg_ggml_type_name(t->type));
    }
    eg_dequantize(t->type, f->base + t->offset, dst, t->n_elements);
    return EG_OK;
}
