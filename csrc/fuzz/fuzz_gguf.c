/*
 * fuzz_gguf.c — libFuzzer harness for the GGUF reader (eg_gguf_parse in
 * csrc/io/gguf.c; eg_gguf_open maps the file and calls the same validation)
 * and the dequantization kernels (csrc/ops/quant.c).
 *
 * The input is the file. For an accepted file the harness checks what the
 * reader promises: version 2 or 3, a power-of-two alignment, every metadata
 * value and string inside the file, bools 0/1, keys and names NUL-terminated
 * UTF-8 and unique, tensor dims >= 1 with nbytes = elements / block size x
 * type size, offsets aligned, inside the file and not overlapping. It reads
 * every metadata element through the typed getters and dequantizes every
 * tensor (so ASan sees any bad offset; the tensors of a fuzz input are
 * small, as they must fit in it).
 */
#include "eg.h"
#include "eg_gguf.h"
#include "eg_quant.h"
#include "fuzz_common.h"

#include <stdlib.h>

static int inside(const eg_gguf_file *f, const void *p, size_t n)
{
    const unsigned char *q = p;
    return q >= f->base && (size_t)(q - f->base) <= f->size && n <= f->size - (size_t)(q - f->base);
}

static void check_metadata(const eg_gguf_file *f)
{
    eg_err err;
    for (size_t k = 0; k < f->n_kv; k++) {
        const eg_gguf_kv *kv = &f->kv[k];
        FUZZ_CHECK(kv->key[kv->key_len] == '\0' && strlen(kv->key) == kv->key_len &&
                       eg_utf8_valid(kv->key, kv->key_len, NULL), "key");
        FUZZ_CHECK(eg_gguf_find_kv(f, kv->key) == kv, "duplicate key accepted");
        FUZZ_CHECK(kv->elem_type != EG_GGUF_ARRAY && kv->elem_type < EG_GGUF_NUM_VTYPES, "elem type");
        FUZZ_CHECK(kv->type == EG_GGUF_ARRAY || kv->n == 1, "scalar count");
        for (size_t i = 0; i < kv->n; i++) {
            int64_t v;
            double d;
            int b;
            eg_gguf_str s;
            eg_err_clear(&err);
            switch (kv->elem_type) {
            case EG_GGUF_STRING:
                FUZZ_CHECK(eg_gguf_kv_str(f, kv, i, &s, &err) == EG_OK && inside(f, s.s, s.len), "string");
                break;
            case EG_GGUF_BOOL:
                FUZZ_CHECK(eg_gguf_kv_bool(f, kv, i, &b, &err) == EG_OK && (b == 0 || b == 1), "bool");
                break;
            case EG_GGUF_FLOAT32:
            case EG_GGUF_FLOAT64:
                FUZZ_CHECK(inside(f, kv->data, kv->n * eg_gguf_vtype_size(kv->elem_type)), "floats");
                FUZZ_CHECK(eg_gguf_kv_float(f, kv, i, &d, &err) == EG_OK, "float");
                break;
            default: {
                FUZZ_CHECK(inside(f, kv->data, kv->n * eg_gguf_vtype_size(kv->elem_type)), "ints");
                eg_status st = eg_gguf_kv_int(f, kv, i, &v, &err);
                FUZZ_CHECK(st == EG_OK || (st == EG_EOVERFLOW && kv->elem_type == EG_GGUF_UINT64), "int");
                break;
            }
            }
            if (i == 2 && kv->n > 64) {
                i = kv->n - 2; /* the ends of long arrays are enough */
            }
        }
        /* the wrong getter is refused with a message */
        eg_err_clear(&err);
        double d;
        if (kv->type != EG_GGUF_FLOAT32 && kv->type != EG_GGUF_FLOAT64) {
            FUZZ_CHECK(eg_gguf_get_float(f, kv->key, &d, &err) == EG_ECORRUPT && err.msg[0], "get_float");
        }
    }
}

static void check_tensors(const eg_gguf_file *f)
{
    FUZZ_CHECK(f->n_tensors == 0 || (f->data_start <= f->size && f->data_start % f->alignment == 0), "data_start");
    for (size_t k = 0; k < f->n_tensors; k++) {
        const eg_gguf_tensor *t = &f->tensors[k];
        FUZZ_CHECK(t->name[t->name_len] == '\0' && eg_utf8_valid(t->name, t->name_len, NULL), "name");
        FUZZ_CHECK(eg_gguf_find_tensor(f, t->name) == t, "duplicate tensor name accepted");
        FUZZ_CHECK(t->n_dims >= 1 && t->n_dims <= EG_GGUF_MAX_DIMS, "n_dims");
        size_t numel = 1, bs, ts;
        for (int d = 0; d < EG_GGUF_MAX_DIMS; d++) {
            FUZZ_CHECK(t->ne[d] >= 1 && (d < t->n_dims || t->ne[d] == 1), "dim");
            FUZZ_CHECK(!eg_mul_ovf(numel, (size_t)t->ne[d], &numel), "numel overflow accepted");
        }
        FUZZ_CHECK(numel == t->n_elements, "n_elements");
        FUZZ_CHECK(eg_ggml_type_traits(t->type, &bs, &ts) == 0 && t->ne[0] % (int64_t)bs == 0, "type");
        FUZZ_CHECK(t->nbytes == numel / bs * ts, "nbytes");
        FUZZ_CHECK(t->rel_offset % f->alignment == 0 && t->offset == f->data_start + t->rel_offset &&
                       inside(f, f->base + t->offset, t->nbytes), "tensor %zu outside the file", k);
        for (size_t j = 0; j < f->n_tensors; j++) {
            const eg_gguf_tensor *u = &f->tensors[j];
            FUZZ_CHECK(j == k || u->offset >= t->offset + t->nbytes || t->offset >= u->offset + u->nbytes,
                       "overlap accepted");
            if (j > 64) {
                break;
            }
        }
        if (eg_ggml_can_dequantize(t->type)) {
            float *out = malloc(t->n_elements * sizeof *out);
            if (out != NULL) {
                eg_err err;
                eg_err_clear(&err);
                FUZZ_CHECK(eg_gguf_dequantize(f, t, out, &err) == EG_OK, "dequantize");
                free(out);
            }
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exact-size heap copy: ASan reports any read past the end of the file */
    unsigned char *buf = malloc(size > 0 ? size : 1);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data, size);
    eg_gguf_file f;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_gguf_parse(buf, size, "fuzz.gguf", &f, &err);
    fuzz_check_status(st, &err);
    if (st == EG_OK) {
        FUZZ_CHECK(f.version == 2 || f.version == 3, "version");
        FUZZ_CHECK(f.alignment > 0 && (f.alignment & (f.alignment - 1)) == 0, "alignment");
        check_metadata(&f);
        check_tensors(&f);
    }
    eg_gguf_close(&f);
    eg_gguf_close(&f); /* idempotent */
    free(buf);
    return 0;
}
