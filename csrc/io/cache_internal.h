/*
 * cache_internal.h — private to csrc/io/cache.c (format, life cycle,
 * growth), cache_write.c (rows in, commits) and cache_read.c (gather, layer
 * maps, verify): the handle structure, the file's field offsets and helpers.
 */
#ifndef EG_CACHE_INTERNAL_H
#define EG_CACHE_INTERNAL_H

#include "eg_cache.h"

#include <string.h>

/* Header page field offsets. */
#define H_MAGIC 0
#define H_VERSION 8
#define H_HEADER_SIZE 12
#define H_DTYPE 16
#define H_ELEM 20
#define H_NLAYERS 24
#define H_CHUNK 28
#define H_DIM 32
#define H_CAPACITY 40
#define H_SLOT_SIZE 48
#define H_STATE_OFF 56
#define H_DATA_OFF 64
#define H_STRIDE 72
#define H_FILE_SIZE 80
#define H_FP_SHA 88
#define H_FP_LEN 120
#define H_FLAGS 124
#define H_LAYERS 512
#define H_FP_STR 1536
#define H_CRC (EG_CACHE_PAGE - 4)

/* State slot field offsets. */
#define S_MAGIC 0
#define S_CRC 4
#define S_SEQ 8
#define S_NODES 16
#define S_DONE 24
#define S_DIGEST 32
#define S_BITMAP 128

#define SLOT_MAGIC "EGST"
#define IO_BUF (1u << 20)
#define MAX_CHUNK_BYTES (256ull << 20)

/* Chunk check states (in memory only). */
#define CK_UNCHECKED 0
#define CK_GOOD 1
#define CK_BAD 2
#define CK_PENDING 3

struct eg_cache {
    int fd;
    int writable;
    int broken;            /* a write failed half-way; the handle refuses writes */
    char *path;
    eg_cache_info h;
    uint64_t row_bytes;
    uint64_t nchunks;      /* chunks per layer, ceil(capacity / chunk_rows) */
    uint64_t bitmap_words;
    uint64_t crc_off;      /* checksum table offset within a slot */
    uint64_t slot_size;
    uint64_t state_off;
    uint8_t *slot;         /* image of the newest committed state slot */
    int active;            /* 0 or 1: the slot holding that state */
    /* Per slot, the byte ranges of the image (0: bitmap, 1: checksum table
     * and padding) that differ from what that slot holds on disk; a commit
     * writes the fixed fields plus these ranges, not the whole slot. */
    uint64_t dirty_lo[2][2], dirty_hi[2][2];
    uint8_t *ck;           /* K * nchunks chunk check states */
    uint8_t *map;          /* whole-file read-only map, made on first read */
    size_t map_len;
    uint8_t *scratch;      /* conversion buffer for write_rows */
    size_t scratch_len;
};

/* ------------------------------------------------------------- helpers */

static inline void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }

static inline void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }

static inline uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static inline uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static inline int mul64(uint64_t a, uint64_t b, uint64_t *o) { return __builtin_mul_overflow(a, b, o); }

static inline int add64(uint64_t a, uint64_t b, uint64_t *o) { return __builtin_add_overflow(a, b, o); }

static inline int bit_get(const uint64_t *bm, uint64_t r) { return (int)((bm[r >> 6] >> (r & 63)) & 1u); }

static inline void bit_set(uint64_t *bm, uint64_t r) { bm[r >> 6] |= (uint64_t)1 << (r & 63); }

/* 1 when every bit in [lo, hi) is set. */
static inline int bits_all_set(const uint64_t *bm, uint64_t lo, uint64_t hi)
{
    while (lo < hi && (lo & 63) != 0) {
        if (!bit_get(bm, lo)) {
            return 0;
        }
        lo++;
    }
    while (hi - lo >= 64) {
        if (bm[lo >> 6] != ~(uint64_t)0) {
            return 0;
        }
        lo += 64;
    }
    while (lo < hi) {
        if (!bit_get(bm, lo)) {
            return 0;
        }
        lo++;
    }
    return 1;
}

static inline uint64_t *bitmap_of(const eg_cache *c) { return (uint64_t *)(c->slot + S_BITMAP); }

static inline uint32_t *crcs_of(const eg_cache *c) { return (uint32_t *)(c->slot + c->crc_off); }

/* Rows [lo, hi) of chunk ch (hi clipped to the rows in use). */
static inline void chunk_rows_range(const eg_cache *c, uint64_t ch, uint64_t *lo, uint64_t *hi)
{
    *lo = ch * c->h.chunk_rows;
    uint64_t e = *lo + c->h.chunk_rows;
    *hi = e < c->h.num_nodes ? e : c->h.num_nodes;
}

static inline int chunk_complete(const eg_cache *c, uint64_t ch)
{
    uint64_t lo, hi;
    chunk_rows_range(c, ch, &lo, &hi);
    return lo < hi && bits_all_set(bitmap_of(c), lo, hi);
}

/* CRC of (layer index k, chunk ch) seeds the chunk's checksum, so rows that
 * land in the wrong layer or chunk do not verify. */
static inline uint32_t chunk_seed(uint64_t k, uint64_t ch)
{
    uint8_t b[16];
    put64(b, k);
    put64(b + 8, ch);
    return eg_crc32c(0, b, sizeof b);
}

static inline uint64_t layer_off(const eg_cache *c, uint64_t k)
{
    return c->h.data_offset + k * c->h.layer_stride;
}

static inline uint32_t chunk_crc_map(const eg_cache *c, uint64_t k, uint64_t ch)
{
    uint64_t lo, hi;
    chunk_rows_range(c, ch, &lo, &hi);
    const uint8_t *p = c->map + layer_off(c, k) + lo * c->row_bytes;
    return eg_crc32c(chunk_seed(k, ch), p, (size_t)((hi - lo) * c->row_bytes));
}

/* Shared by cache.c, cache_write.c and cache_read.c (defined in cache.c,
 * except describe_chunk in cache_write.c). */
eg_status eg_cachei_pread_all(int fd, void *buf, uint64_t n, uint64_t off, eg_err *err);
eg_status eg_cachei_chunk_crc_pread(const eg_cache *c, uint64_t k, uint64_t ch, uint8_t *buf,
                                    uint32_t *out, eg_err *err);
void eg_cachei_describe_chunk(const eg_cache *c, uint64_t k, uint64_t ch, char *buf, size_t len);
eg_status eg_cachei_decode_header(eg_cache *c, const uint8_t *pg, eg_err *err);
int eg_cachei_slot_valid(const eg_cache *c, const uint8_t *s, const char **why);
eg_cache *eg_cachei_new_handle(const char *path, eg_err *err);
eg_status eg_cachei_pwrite_all(int fd, const void *buf, uint64_t n, uint64_t off, eg_err *err);
eg_status eg_cachei_sync_fd(int fd, eg_err *err);
/* Record that state-image bytes [off, off + len) changed. */
void eg_cachei_touch(eg_cache *c, uint64_t off, uint64_t len);
/* Commit the in-memory state into the older slot (writes, fdatasync). */
eg_status eg_cachei_commit(eg_cache *c, eg_err *err);
/* EG_ESTATE unless c is the locked writer and no write has failed. */
eg_status eg_cachei_check_writable(const eg_cache *c, eg_err *err);

#endif
