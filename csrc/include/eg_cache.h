/*
 * eg_cache.h — the layer cache file: per-layer pooled encoder states of N
 * nodes, written once (resumably, crash-safely) and read many times through
 * a memory map. The format is specified in docs/CACHE_FORMAT.md.
 *
 * Life cycle: eg_cache_create (or eg_cache_open with writable=1), then
 * eg_cache_write_rows for batches of rows in any order — each call makes its
 * rows durable and then commits them (bitmap + chunk checksums) in one of two
 * alternating, checksummed state slots, so a kill at any instant loses at most
 * the batch in flight. Readers use eg_cache_gather (converted to float32),
 * eg_cache_map_layer (zero-copy) and eg_cache_verify.
 *
 * An eg_cache is not thread-safe: the Python glue serialises calls with a
 * busy flag. Functions returning eg_status write a message into `err`.
 */
#ifndef EG_CACHE_H
#define EG_CACHE_H

#include "eg.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ CRC32C */
/* CRC-32C of buf[0..n) continuing from `crc` (0 to start):
 * eg_crc32c(eg_crc32c(0, a), b) == crc of a||b; crc("123456789") = 0xE3069283.
 * Uses SSE4.2 when the CPU has it, else a slice-by-8 table. */
uint32_t eg_crc32c(uint32_t crc, const void *buf, size_t n);
/* The portable implementation, always available (tests compare the two). */
uint32_t eg_crc32c_sw(uint32_t crc, const void *buf, size_t n);
/* "sse4.2" or "slice-by-8": what eg_crc32c uses on this CPU. */
const char *eg_crc32c_impl(void);

/* ----------------------------------------------------------------- format */
#define EG_CACHE_MAGIC "EGLCACHE"
#define EG_CACHE_VERSION 1u
#define EG_CACHE_PAGE 4096u
#define EG_CACHE_MAX_LAYERS 256u
#define EG_CACHE_MAX_FP_STR 1024u
#define EG_CACHE_MAX_DIM (1u << 20)
#define EG_CACHE_MAX_CHUNK_ROWS (1u << 20)
/* Capacity bound: keeps every derived size far from 64-bit overflow and the
 * in-memory bitmap/checksum tables reasonable (2^40 rows). */
#define EG_CACHE_MAX_ROWS (1ull << 40)

typedef enum {
    EG_CACHE_F32 = 0,
    EG_CACHE_F16 = 1,
    EG_CACHE_BF16 = 2
} eg_cache_dtype;

/* Parameters of a new cache file. */
typedef struct {
    eg_cache_dtype dtype;
    uint64_t num_nodes;     /* N, rows per layer in use (>= 1) */
    uint64_t capacity;      /* rows allocated per layer, >= num_nodes (0: = num_nodes) */
    uint64_t dim;           /* D */
    uint32_t num_layers;    /* K, 1..EG_CACHE_MAX_LAYERS */
    const int32_t *layers;  /* K distinct layer ids (>= 0) */
    uint32_t chunk_rows;    /* rows per checksum chunk (0: 256) */
    uint8_t fp_sha256[32];  /* model fingerprint hash */
    const char *fp_str;     /* the fingerprint text (truncated to EG_CACHE_MAX_FP_STR) */
    uint8_t texts_digest[32]; /* caller-defined digest of the N texts */
} eg_cache_params;

/* A snapshot of a cache's header and committed state. */
typedef struct {
    eg_cache_dtype dtype;
    uint32_t elem_size;
    uint32_t num_layers;
    uint32_t chunk_rows;
    uint64_t dim;
    uint64_t capacity;
    uint64_t num_nodes;
    uint64_t rows_done;
    uint64_t seq;            /* commit sequence number of the state in use */
    uint64_t data_offset;
    uint64_t layer_stride;
    uint64_t file_size;
    int writable;
    int32_t layers[EG_CACHE_MAX_LAYERS];
    uint8_t fp_sha256[32];
    char fp_str[EG_CACHE_MAX_FP_STR + 1];
    uint8_t texts_digest[32];
} eg_cache_info;

typedef struct eg_cache eg_cache;

/* Create a new cache at `path` with no rows done. The file is built under
 * `path`.tmp and renamed into place, so `path` never holds a half-made file;
 * an existing file at `path` is replaced. On success *out is an open,
 * writable handle (close with eg_cache_close). */
eg_status eg_cache_create(eg_cache **out, const char *path, const eg_cache_params *p, eg_err *err);

/* Open and validate an existing cache: header checksum and every field,
 * derived sizes, exact file size, and the newest state slot whose checksum
 * holds (EG_ECORRUPT if none). writable: 0 read-only; 1 the writer: opens
 * read-write and takes an exclusive advisory lock (EG_ESTATE if another
 * handle holds it); 2 a data worker: read-write without the lock, allowed
 * only eg_cache_write_data (the writer then claims the rows with
 * eg_cache_mark_rows). Data chunks are checked lazily (gather, map_layer)
 * or by eg_cache_verify. */
eg_status eg_cache_open(eg_cache **out, const char *path, int writable, eg_err *err);

/* Close the file and free the handle (NULL is allowed). Mapped layers
 * (eg_cache_map_layer) stay valid until eg_cache_unmap. */
void eg_cache_close(eg_cache *c);

void eg_cache_get_info(const eg_cache *c, eg_cache_info *info);

/* Completed-rows bitmap: bit r of word r/64 is set when row r is committed.
 * Valid until the next call that changes the cache. */
const uint64_t *eg_cache_bitmap(const eg_cache *c);

/* Write rows rows[0..n) (strictly increasing, < num_nodes) of every layer from
 * src, float32 (K, n, D) layer-major, converting to the file dtype. Order of
 * effects: data pwrite + fdatasync, then bitmap bits and the checksums of
 * chunks this completes are committed to the older state slot + fdatasync.
 * Rewriting a completed row is allowed (its chunk checksum is recomputed). */
eg_status eg_cache_write_rows(eg_cache *c, const int64_t *rows, size_t n, const float *src, eg_err *err);

/* Scale-out split of eg_cache_write_rows. eg_cache_write_data (writer or
 * data-worker handle) converts, pwrites and fdatasyncs rows without claiming
 * them; eg_cache_mark_rows (writer only) then sets their bits, checksums the
 * chunks they complete and commits. Rows written but not marked are simply
 * unclaimed, so a crash in between is safe. Callers give each worker
 * disjoint rows. */
eg_status eg_cache_write_data(eg_cache *c, const int64_t *rows, size_t n, const float *src, eg_err *err);
eg_status eg_cache_mark_rows(eg_cache *c, const int64_t *rows, size_t n, eg_err *err);

/* Grow the number of rows in use to num_nodes (<= capacity) with new,
 * not-yet-done rows, and record a new texts digest; committed at once. */
eg_status eg_cache_set_num_nodes(eg_cache *c, uint64_t num_nodes, const uint8_t digest[32], eg_err *err);

/* Rewrite the cache with a larger capacity (rows per layer): a new file is
 * written under path.tmp, synced and renamed over path; the handle then
 * refers to the new file. A crash leaves either the old or the new file. */
eg_status eg_cache_grow(eg_cache *c, uint64_t capacity, eg_err *err);

/* Write the current state into the other slot too, so both slots hold it
 * (done when a build or append finishes; eg_cache_verify then expects both
 * slots to be valid). */
eg_status eg_cache_sync(eg_cache *c, eg_err *err);

/* out (n, D) float32 = rows ids[0..n) of layer index k (0 <= k < K), converted
 * from the file dtype, OpenMP over rows. ids must be in [0, num_nodes) (the
 * glue checks; checked again here). Refuses (EG_EINVAL) rows not yet done,
 * and (EG_ECORRUPT) rows of a chunk whose checksum fails; complete chunks are
 * verified the first time they are read. */
eg_status eg_cache_gather(eg_cache *c, uint32_t k, const int64_t *ids, size_t n, float *out, eg_err *err);

/* Check every complete chunk of layer index k not yet checked (EG_ECORRUPT
 * naming the layer and rows on a mismatch). */
eg_status eg_cache_check_layer(eg_cache *c, uint32_t k, eg_err *err);

/* Check everything: the header again, both state slots, every complete chunk
 * of every layer (read with pread, so it does not grow the process's RSS).
 * EG_ECORRUPT names the region (header, state slot, layer and rows). */
eg_status eg_cache_verify(eg_cache *c, eg_err *err);

/* Map rows [0, num_nodes) of layer index k read-only. *data points at row 0;
 * release with eg_cache_unmap(*base, *len), independently of the handle's
 * lifetime. */
eg_status eg_cache_map_layer(eg_cache *c, uint32_t k, void **base, size_t *len, const void **data, eg_err *err);
void eg_cache_unmap(void *base, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* EG_CACHE_H */
