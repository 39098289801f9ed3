/*
 * fuzz_safetensors.c — libFuzzer harness for the safetensors reader
 * (eg_st_parse in csrc/io/safetensors.c; eg_st_open maps the file and calls
 * the same validation).
 *
 * The input is the file. For an accepted file the harness checks what the
 * reader promises (every tensor's bytes inside the file, nbytes = numel x
 * dtype size, tensors tiling the data section, UTF-8 names and metadata) and
 * touches every tensor byte (so ASan sees any bad offset), then round-trips
 * it: the writer's header (eg_st_build_header) over the parsed tensors, plus
 * their data, must parse back to the same tensors, data and metadata.
 */
#include "eg.h"
#include "eg_safetensors.h"
#include "fuzz_common.h"

#include <stdlib.h>

static const eg_st_tensor *find(const eg_st_file *f, const char *name, size_t len)
{
    for (size_t k = 0; k < f->n_tensors; k++) {
        if (f->tensors[k].name_len == len && memcmp(f->tensors[k].name, name, len) == 0) {
            return &f->tensors[k];
        }
    }
    return NULL;
}

static void check_file(const eg_st_file *f, const unsigned char *buf, size_t size)
{
    FUZZ_CHECK(f->data_start == 8 + f->header_len && f->data_start <= size, "data_start");
    size_t total = 0;
    unsigned sum = 0;
    for (size_t k = 0; k < f->n_tensors; k++) {
        const eg_st_tensor *t = &f->tensors[k];
        FUZZ_CHECK((unsigned)t->dtype < EG_ST_NUM_DTYPES, "dtype");
        FUZZ_CHECK(t->name != NULL && t->name[t->name_len] == '\0' &&
                       eg_utf8_valid(t->name, t->name_len, NULL), "name");
        FUZZ_CHECK(t->begin <= t->end && t->nbytes == t->end - t->begin, "offsets");
        FUZZ_CHECK(t->offset == f->data_start + t->begin && t->offset + t->nbytes <= size,
                   "tensor %zu outside the file", k);
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "negative dim");
            FUZZ_CHECK(!eg_mul_ovf(numel, (size_t)t->shape[d], &numel), "numel overflow accepted");
        }
        size_t nb = 0;
        FUZZ_CHECK(!eg_mul_ovf(numel, eg_st_dtype_size(t->dtype), &nb) && nb == t->nbytes,
                   "nbytes %zu != numel x size", t->nbytes);
        for (size_t b = 0; b < t->nbytes; b++) {
            sum += buf[t->offset + b];
        }
        total += t->nbytes;
        FUZZ_CHECK(find(f, t->name, t->name_len) == t, "duplicate tensor name accepted");
    }
    FUZZ_CHECK(total == size - f->data_start, "tensors do not tile the data section");
    for (size_t k = 0; k < f->n_meta; k++) {
        FUZZ_CHECK(eg_utf8_valid(f->meta[k].key, f->meta[k].key_len, NULL) &&
                       eg_utf8_valid(f->meta[k].value, f->meta[k].value_len, NULL), "metadata UTF-8");
    }
    (void)sum;
}

static void round_trip(const eg_st_file *f, const unsigned char *buf)
{
    size_t n = f->n_tensors;
    eg_st_write_entry *ents = calloc(n > 0 ? n : 1, sizeof *ents);
    FUZZ_CHECK(ents != NULL, "calloc");
    for (size_t k = 0; k < n; k++) {
        const eg_st_tensor *t = &f->tensors[k];
        ents[k] = (eg_st_write_entry){t->name, t->name_len, t->dtype, t->ndim, t->shape,
                                      t->nbytes > 0 ? buf + t->offset : NULL, t->nbytes};
    }
    char *hdr = NULL;
    size_t hlen = 0, *order = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_st_build_header(ents, n, f->has_metadata ? f->meta : NULL, f->n_meta, &hdr,
                                      &hlen, &order, &err);
    if (st == EG_ENOMEM) {
        free(ents);
        return;
    }
    FUZZ_CHECK(st == EG_OK, "writer refuses what the reader accepted: %s", err.msg);
    size_t size2 = 8 + hlen;
    for (size_t k = 0; k < n; k++) {
        size2 += ents[k].nbytes;
    }
    unsigned char *buf2 = malloc(size2);
    FUZZ_CHECK(buf2 != NULL, "malloc");
    for (int b = 0; b < 8; b++) {
        buf2[b] = (unsigned char)((uint64_t)hlen >> (8 * b));
    }
    memcpy(buf2 + 8, hdr, hlen);
    size_t pos = 8 + hlen;
    for (size_t k = 0; k < n; k++) {
        const eg_st_write_entry *e = &ents[order[k]];
        if (e->nbytes > 0) {
            memcpy(buf2 + pos, e->data, e->nbytes);
        }
        pos += e->nbytes;
    }
    eg_st_file g;
    eg_err_clear(&err);
    st = eg_st_parse(buf2, size2, "round trip", &g, &err);
    FUZZ_CHECK(st == EG_OK, "the writer's output does not parse: %s", err.msg);
    FUZZ_CHECK(g.n_tensors == n && g.has_metadata == f->has_metadata && g.n_meta == f->n_meta,
               "counts differ");
    for (size_t k = 0; k < n; k++) {
        const eg_st_tensor *a = &f->tensors[k];
        const eg_st_tensor *b = find(&g, a->name, a->name_len);
        FUZZ_CHECK(b != NULL && b->dtype == a->dtype && b->ndim == a->ndim && b->nbytes == a->nbytes,
                   "tensor %zu differs", k);
        for (int d = 0; d < a->ndim; d++) {
            FUZZ_CHECK(a->shape[d] == b->shape[d], "shape differs");
        }
        FUZZ_CHECK(a->nbytes == 0 || memcmp(buf + a->offset, buf2 + b->offset, a->nbytes) == 0,
                   "data differs");
    }
    for (size_t k = 0; k < f->n_meta; k++) {
        int found = 0;
        for (size_t j = 0; j < g.n_meta && !found; j++) {
            found = g.meta[j].key_len == f->meta[k].key_len &&
                    memcmp(g.meta[j].key, f->meta[k].key, f->meta[k].key_len) == 0 &&
                    g.meta[j].value_len == f->meta[k].value_len &&
                    memcmp(g.meta[j].value, f->meta[k].value, f->meta[k].value_len) == 0;
        }
        FUZZ_CHECK(found, "metadata entry %zu lost", k);
    }
    eg_st_close(&g);
    free(buf2);
    free(hdr);
    free(order);
    free(ents);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* exact-size heap copy: ASan reports any read past the end of the file */
    unsigned char *buf = malloc(size > 0 ? size : 1);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data, size);
    eg_st_file f;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_st_parse(buf, size, "fuzz.safetensors", &f, &err);
    fuzz_check_status(st, &err);
    if (st == EG_OK) {
        check_file(&f, buf, size);
        round_trip(&f, buf);
    }
    eg_st_close(&f);
    eg_st_close(&f); /* idempotent */
    free(buf);
    return 0;
}
