/*
 * cache_write.c — writing rows into the layer cache (format:
 * docs/CACHE_FORMAT.md): conversion to the storage dtype, pwrite + fdatasync
 * of the data, then the claim — bitmap bits and the checksums of the chunks
 * the rows complete — committed into the older state slot
 * (eg_cachei_commit in cache.c). Also the split of that sequence for data
 * workers (write_data / mark_rows), growth of the row count, and sync.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cache_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static eg_status ensure_scratch(eg_cache *c, size_t bytes, eg_err *err)
{
    if (c->scratch_len >= bytes) {
        return EG_OK;
    }
    void *p = realloc(c->scratch, bytes);
    if (p == NULL) {
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory for a %zu-byte batch", bytes);
    }
    c->scratch = p;
    c->scratch_len = bytes;
    return EG_OK;
}

void eg_cachei_describe_chunk(const eg_cache *c, uint64_t k, uint64_t ch, char *buf, size_t len)
{
    uint64_t lo, hi;
    chunk_rows_range(c, ch, &lo, &hi);
    snprintf(buf, len, "layer %d (index %llu), rows %llu-%llu (chunk %llu)", c->h.layers[k],
             (unsigned long long)k, (unsigned long long)lo, (unsigned long long)(hi - 1),
             (unsigned long long)ch);
}

static eg_status check_rows(const eg_cache *c, const int64_t *rows, size_t n, eg_err *err)
{
    for (size_t i = 0; i < n; i++) {
        if (rows[i] < 0 || (uint64_t)rows[i] >= c->h.num_nodes || (i > 0 && rows[i] <= rows[i - 1])) {
            return eg_seterr(err, EG_EINVAL, "layer cache: rows must be strictly increasing in [0, %llu)",
                             (unsigned long long)c->h.num_nodes);
        }
    }
    return EG_OK;
}

/* A rewrite of rows in a complete chunk: check the chunk first, so the new
 * checksum does not bless damage in the rows not rewritten. */
static eg_status guard_complete_chunks(eg_cache *c, const int64_t *rows, size_t n, eg_err *err)
{
    eg_status st = ensure_scratch(c, IO_BUF, err);
    for (size_t i = 0; st == EG_OK && i < n; i++) {
        uint64_t ch = (uint64_t)rows[i] / c->h.chunk_rows;
        if ((i > 0 && (uint64_t)rows[i - 1] / c->h.chunk_rows == ch) || !chunk_complete(c, ch)) {
            continue;
        }
        for (uint64_t k = 0; k < c->h.num_layers; k++) {
            uint32_t crc;
            if ((st = eg_cachei_chunk_crc_pread(c, k, ch, c->scratch, &crc, err)) != EG_OK) {
                return st;
            }
            if (crc != crcs_of(c)[k * c->nchunks + ch]) {
                char d[160];
                eg_cachei_describe_chunk(c, k, ch, d, sizeof d);
                c->ck[k * c->nchunks + ch] = CK_BAD;
                return eg_seterr(err, EG_ECORRUPT, "layer cache %s: %s: checksum mismatch; refusing to rewrite part of a damaged chunk",
                                 c->path, d);
            }
        }
    }
    return st;
}

/* Convert and pwrite the rows of every layer, then fdatasync. */
static eg_status write_data(eg_cache *c, const int64_t *rows, size_t n, const float *src, eg_err *err)
{
    const uint64_t D = c->h.dim;
    uint64_t bytes;
    eg_status st;
    if (mul64(n, c->row_bytes, &bytes) || bytes > SIZE_MAX) {
        return eg_seterr(err, EG_EOVERFLOW, "layer cache: batch too large");
    }
    if (c->h.dtype != EG_CACHE_F32 && (st = ensure_scratch(c, (size_t)bytes, err)) != EG_OK) {
        return st;
    }
    for (uint64_t k = 0; k < c->h.num_layers; k++) {
        const float *sk = src + k * n * D;
        const uint8_t *buf;
        if (c->h.dtype == EG_CACHE_F16) {
            eg_f32_to_f16(sk, (uint16_t *)c->scratch, n * D);
            buf = c->scratch;
        } else if (c->h.dtype == EG_CACHE_BF16) {
            eg_f32_to_bf16(sk, (uint16_t *)c->scratch, n * D);
            buf = c->scratch;
        } else {
            buf = (const uint8_t *)sk;
        }
        size_t i = 0;
        while (i < n) {
            size_t j = i + 1;
            while (j < n && rows[j] == rows[j - 1] + 1) {
                j++;
            }
            st = eg_cachei_pwrite_all(c->fd, buf + i * c->row_bytes, (j - i) * c->row_bytes,
                            layer_off(c, k) + (uint64_t)rows[i] * c->row_bytes, err);
            if (st != EG_OK) {
                return st;
            }
            i = j;
        }
    }
    return eg_cachei_sync_fd(c->fd, err);
}

/* Set the rows' bits, checksum the chunks they complete, commit. */
static eg_status mark_rows(eg_cache *c, const int64_t *rows, size_t n, eg_err *err)
{
    uint64_t *bm = bitmap_of(c);
    eg_status st = ensure_scratch(c, IO_BUF, err);
    if (st != EG_OK) {
        return st;
    }
    for (size_t i = 0; i < n; i++) {
        if (!bit_get(bm, (uint64_t)rows[i])) {
            bit_set(bm, (uint64_t)rows[i]);
            eg_cachei_touch(c, S_BITMAP + ((uint64_t)rows[i] >> 6) * 8, 8);
            c->h.rows_done++;
        }
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t ch = (uint64_t)rows[i] / c->h.chunk_rows;
        if (i > 0 && (uint64_t)rows[i - 1] / c->h.chunk_rows == ch) {
            continue;
        }
        for (uint64_t k = 0; k < c->h.num_layers; k++) {
            c->ck[k * c->nchunks + ch] = CK_UNCHECKED;
        }
        if (!chunk_complete(c, ch)) {
            continue;
        }
        for (uint64_t k = 0; k < c->h.num_layers; k++) {
            uint32_t crc;
            if ((st = eg_cachei_chunk_crc_pread(c, k, ch, c->scratch, &crc, err)) != EG_OK) {
                c->broken = 1; /* the in-memory state is ahead of the file */
                return st;
            }
            crcs_of(c)[k * c->nchunks + ch] = crc;
            eg_cachei_touch(c, c->crc_off + (k * c->nchunks + ch) * 4, 4);
            c->ck[k * c->nchunks + ch] = CK_GOOD;
        }
    }
    return eg_cachei_commit(c, err);
}

eg_status eg_cache_write_rows(eg_cache *c, const int64_t *rows, size_t n, const float *src, eg_err *err)
{
    eg_status st = eg_cachei_check_writable(c, err);
    if (st != EG_OK || n == 0) {
        return st;
    }
    if ((st = check_rows(c, rows, n, err)) != EG_OK || (st = guard_complete_chunks(c, rows, n, err)) != EG_OK) {
        return st;
    }
    /* the rows are durable before any state claims them */
    if ((st = write_data(c, rows, n, src, err)) != EG_OK) {
        c->broken = 1;
        return st;
    }
    return mark_rows(c, rows, n, err);
}

eg_status eg_cache_write_data(eg_cache *c, const int64_t *rows, size_t n, const float *src, eg_err *err)
{
    if (c->writable == 0) {
        return eg_seterr(err, EG_ESTATE, "layer cache %s is open read-only", c->path);
    }
    eg_status st = EG_OK;
    if (n == 0 || (st = check_rows(c, rows, n, err)) != EG_OK ||
        (st = guard_complete_chunks(c, rows, n, err)) != EG_OK) {
        return st;
    }
    return write_data(c, rows, n, src, err);
}

eg_status eg_cache_mark_rows(eg_cache *c, const int64_t *rows, size_t n, eg_err *err)
{
    eg_status st = eg_cachei_check_writable(c, err);
    if (st != EG_OK || n == 0) {
        return st;
    }
    if ((st = check_rows(c, rows, n, err)) != EG_OK) {
        return st;
    }
    return mark_rows(c, rows, n, err);
}

eg_status eg_cache_set_num_nodes(eg_cache *c, uint64_t num_nodes, const uint8_t digest[32], eg_err *err)
{
    eg_status st = eg_cachei_check_writable(c, err);
    if (st != EG_OK) {
        return st;
    }
    if (num_nodes < c->h.num_nodes || num_nodes > c->h.capacity) {
        return eg_seterr(err, EG_EINVAL, "layer cache: number of nodes can only grow within the capacity (%llu..%llu), got %llu",
                         (unsigned long long)c->h.num_nodes, (unsigned long long)c->h.capacity,
                         (unsigned long long)num_nodes);
    }
    /* the old last chunk gains not-done rows: it becomes incomplete */
    uint64_t ch = (c->h.num_nodes - 1) / c->h.chunk_rows;
    for (uint64_t k = 0; k < c->h.num_layers; k++) {
        c->ck[k * c->nchunks + ch] = CK_UNCHECKED;
    }
    c->h.num_nodes = num_nodes;
    memcpy(c->h.texts_digest, digest, 32);
    return eg_cachei_commit(c, err);
}

eg_status eg_cache_sync(eg_cache *c, eg_err *err)
{
    eg_status st = eg_cachei_check_writable(c, err);
    if (st != EG_OK) {
        return st;
    }
    return eg_cachei_commit(c, err);
}

