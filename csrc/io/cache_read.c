/*
 * cache_read.c — the read side of the layer cache (format:
 * docs/CACHE_FORMAT.md): a whole-file read-only map for gather and the lazy
 * per-chunk checks, per-layer maps for zero-copy views, and verify(), which
 * re-checks everything with pread so it does not grow the process's RSS.
 *
 * A complete chunk is checked against its CRC32C the first time any read
 * touches it; a chunk that fails is remembered and its rows are refused, so
 * reads never return rows from a chunk known to be damaged.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cache_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

static eg_status ensure_map(eg_cache *c, eg_err *err)
{
    if (c->map != NULL) {
        return EG_OK;
    }
    void *p = mmap(NULL, (size_t)c->h.file_size, PROT_READ, MAP_SHARED, c->fd, 0);
    if (p == MAP_FAILED) {
        return eg_seterr(err, EG_EIO, "layer cache %s: mmap failed: %s", c->path, strerror(errno));
    }
    c->map = p;
    c->map_len = (size_t)c->h.file_size;
    return EG_OK;
}

/* Check the chunks listed (all of layer k), in parallel; report the bad ones. */
static eg_status check_chunks(eg_cache *c, uint64_t k, const uint64_t *list, size_t m, eg_err *err)
{
    uint8_t *ck = c->ck + k * c->nchunks;
    const uint32_t *crcs = crcs_of(c) + k * c->nchunks;
#pragma omp parallel for schedule(dynamic, 1) if (m > 1)
    for (size_t i = 0; i < m; i++) {
        uint64_t ch = list[i];
        ck[ch] = chunk_crc_map(c, k, ch) == crcs[ch] ? CK_GOOD : CK_BAD;
    }
    size_t bad = 0;
    char first[160] = "";
    for (size_t i = 0; i < m; i++) {
        if (ck[list[i]] == CK_BAD) {
            if (bad == 0) {
                eg_cachei_describe_chunk(c, k, list[i], first, sizeof first);
            }
            bad++;
        }
    }
    if (bad > 0) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: %s: checksum mismatch%s (%zu damaged chunk%s read); "
                         "run verify() for the full list, rebuild the cache",
                         c->path, first, bad > 1 ? " and more" : "", bad, bad > 1 ? "s" : "");
    }
    return EG_OK;
}

eg_status eg_cache_check_layer(eg_cache *c, uint32_t k, eg_err *err)
{
    if (k >= c->h.num_layers) {
        return eg_seterr(err, EG_EINVAL, "layer cache: layer index %u out of range", k);
    }
    eg_status st = ensure_map(c, err);
    if (st != EG_OK) {
        return st;
    }
    uint64_t used = (c->h.num_nodes + c->h.chunk_rows - 1) / c->h.chunk_rows;
    uint64_t *list = malloc((size_t)used * sizeof *list);
    if (list == NULL) {
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
    }
    size_t m = 0;
    uint8_t *ck = c->ck + (uint64_t)k * c->nchunks;
    size_t bad_known = 0;
    uint64_t first_bad = 0;
    for (uint64_t ch = 0; ch < used; ch++) {
        if (ck[ch] == CK_BAD) {
            if (bad_known++ == 0) {
                first_bad = ch;
            }
        } else if (ck[ch] == CK_UNCHECKED && chunk_complete(c, ch)) {
            list[m++] = ch;
        }
    }
    st = check_chunks(c, k, list, m, err);
    free(list);
    if (st == EG_OK && bad_known > 0) {
        char d[160];
        eg_cachei_describe_chunk(c, k, first_bad, d, sizeof d);
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: %s: checksum mismatch (known bad)", c->path, d);
    }
    return st;
}

eg_status eg_cache_gather(eg_cache *c, uint32_t k, const int64_t *ids, size_t n, float *out, eg_err *err)
{
    if (k >= c->h.num_layers) {
        return eg_seterr(err, EG_EINVAL, "layer cache: layer index %u out of range", k);
    }
    eg_status st = ensure_map(c, err);
    if (st != EG_OK) {
        return st;
    }
    const uint64_t N = c->h.num_nodes, R = c->h.chunk_rows;
    const uint64_t *bm = bitmap_of(c);
    size_t missing = 0;
    int64_t first_missing = -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint64_t)ids[i] >= N) {
            return eg_seterr(err, EG_EINVAL, "layer cache: node id %lld out of range [0, %llu)",
                             (long long)ids[i], (unsigned long long)N);
        }
        if (!bit_get(bm, (uint64_t)ids[i])) {
            if (missing++ == 0) {
                first_missing = ids[i];
            }
        }
    }
    if (missing > 0) {
        return eg_seterr(err, EG_EINVAL, "layer cache %s: %zu requested row%s not computed yet (first: %lld; "
                         "the cache is incomplete: resume it with LayerCache.build)",
                         c->path, missing, missing > 1 ? "s are" : " is", (long long)first_missing);
    }
    uint8_t *ck = c->ck + (uint64_t)k * c->nchunks;
    size_t cap = n < c->nchunks ? n : (size_t)c->nchunks;
    uint64_t *list = malloc((cap > 0 ? cap : 1) * sizeof *list);
    if (list == NULL) {
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t ch = (uint64_t)ids[i] / R;
        if (ck[ch] == CK_UNCHECKED && chunk_complete(c, ch)) {
            ck[ch] = CK_PENDING;
            list[m++] = ch;
        }
    }
    st = check_chunks(c, k, list, m, err);
    free(list);
    if (st != EG_OK) {
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t ch = (uint64_t)ids[i] / R;
        if (ck[ch] == CK_BAD) {
            char d[160];
            eg_cachei_describe_chunk(c, k, ch, d, sizeof d);
            return eg_seterr(err, EG_ECORRUPT, "layer cache %s: %s: checksum mismatch (known bad); node %lld refused",
                             c->path, d, (long long)ids[i]);
        }
    }
    const uint64_t D = c->h.dim;
    const uint8_t *base = c->map + layer_off(c, k);
    const size_t rb = (size_t)c->row_bytes;
    const eg_cache_dtype dt = c->h.dtype;
    long long nn = (long long)n;
#pragma omp parallel for schedule(static) if (n * D > 65536)
    for (long long i = 0; i < nn; i++) {
        const uint8_t *row = base + (size_t)ids[i] * rb;
        float *o = out + (size_t)i * D;
        if (dt == EG_CACHE_F16) {
            eg_f16_to_f32((const uint16_t *)row, o, (size_t)D);
        } else if (dt == EG_CACHE_BF16) {
            eg_bf16_to_f32((const uint16_t *)row, o, (size_t)D);
        } else {
            memcpy(o, row, rb);
        }
    }
    return EG_OK;
}

eg_status eg_cache_map_layer(eg_cache *c, uint32_t k, void **base, size_t *len, const void **data, eg_err *err)
{
    if (k >= c->h.num_layers) {
        return eg_seterr(err, EG_EINVAL, "layer cache: layer index %u out of range", k);
    }
    size_t l = (size_t)(c->h.num_nodes * c->row_bytes);
    void *p = mmap(NULL, l, PROT_READ, MAP_SHARED, c->fd, (off_t)layer_off(c, k));
    if (p == MAP_FAILED) {
        return eg_seterr(err, EG_EIO, "layer cache %s: mmap of layer %d failed: %s", c->path,
                         c->h.layers[k], strerror(errno));
    }
    *base = p;
    *len = l;
    *data = p;
    return EG_OK;
}

void eg_cache_unmap(void *base, size_t len)
{
    if (base != NULL) {
        munmap(base, len);
    }
}

eg_status eg_cache_verify(eg_cache *c, eg_err *err)
{
    eg_status st = EG_OK;
    uint8_t *pg = eg_aligned_alloc(EG_CACHE_PAGE);
    uint8_t *s = eg_aligned_alloc((size_t)c->slot_size);
    eg_cache *tmp = eg_cachei_new_handle(c->path, err);
    if (pg == NULL || s == NULL || tmp == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        goto done;
    }
    /* the header on disk must still decode to the same geometry */
    if ((st = eg_cachei_pread_all(c->fd, pg, EG_CACHE_PAGE, 0, err)) != EG_OK ||
        (st = eg_cachei_decode_header(tmp, pg, err)) != EG_OK) {
        goto done;
    }
    if (tmp->h.file_size != c->h.file_size || memcmp(tmp->h.fp_sha256, c->h.fp_sha256, 32) != 0) {
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: header changed on disk since open", c->path);
        goto done;
    }
    for (int i = 0; i < 2; i++) {
        const char *why = "";
        if ((st = eg_cachei_pread_all(c->fd, s, c->slot_size, c->state_off + (uint64_t)i * c->slot_size, err)) != EG_OK) {
            goto done;
        }
        if (!eg_cachei_slot_valid(c, s, &why)) {
            st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: state slot %c (bitmap and checksum table) is damaged: %s",
                           c->path, 'A' + i, why);
            goto done;
        }
        if (i == c->active && memcmp(s + 8, c->slot + 8, (size_t)c->slot_size - 8) != 0) {
            st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: state slot %c changed on disk since it was written",
                           c->path, 'A' + i);
            goto done;
        }
    }
    /* every complete chunk of every layer, read with pread */
    const uint64_t K = c->h.num_layers;
    const uint64_t used = (c->h.num_nodes + c->h.chunk_rows - 1) / c->h.chunk_rows;
    long long total = (long long)(K * used);
    int io_failed = 0;
    char io_msg[EG_ERR_MSG_LEN] = "";
#pragma omp parallel if (total > 8)
    {
        uint8_t *buf = malloc(IO_BUF);
#pragma omp for schedule(dynamic, 4)
        for (long long t = 0; t < total; t++) {
            uint64_t k = (uint64_t)t / used, ch = (uint64_t)t % used;
            if (!chunk_complete(c, ch)) {
                continue;
            }
            eg_err e;
            eg_err_clear(&e);
            uint32_t crc = 0;
            if (buf == NULL || eg_cachei_chunk_crc_pread(c, k, ch, buf, &crc, &e) != EG_OK) {
#pragma omp critical(eg_cache_verify_io)
                {
                    if (!io_failed) {
                        io_failed = 1;
                        snprintf(io_msg, sizeof io_msg, "%s", buf == NULL ? "out of memory" : e.msg);
                    }
                }
                continue;
            }
            c->ck[k * c->nchunks + ch] = crc == crcs_of(c)[k * c->nchunks + ch] ? CK_GOOD : CK_BAD;
        }
        free(buf);
    }
    if (io_failed) {
        st = eg_seterr(err, EG_EIO, "layer cache %s: verify: %s", c->path, io_msg);
        goto done;
    }
    size_t bad = 0, pos = 0;
    char list[EG_ERR_MSG_LEN - 96] = "";
    for (uint64_t k = 0; k < K; k++) {
        for (uint64_t ch = 0; ch < used; ch++) {
            if (c->ck[k * c->nchunks + ch] != CK_BAD) {
                continue;
            }
            if (bad < 4 && pos < sizeof list) {
                char d[160];
                eg_cachei_describe_chunk(c, k, ch, d, sizeof d);
                int w = snprintf(list + pos, sizeof list - pos, "%s%s", bad > 0 ? "; " : "", d);
                if (w > 0) {
                    pos += (size_t)w;
                }
            }
            bad++;
        }
    }
    if (bad > 0) {
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: %zu chunk%s fail their checksum: %s%s", c->path,
                       bad, bad > 1 ? "s" : "", list, bad > 4 ? "; ..." : "");
    }
done:
    eg_aligned_free(pg);
    eg_aligned_free(s);
    eg_cache_close(tmp);
    return st;
}
