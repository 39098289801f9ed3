/*
 * cache.c — the layer cache file (format: docs/CACHE_FORMAT.md).
 *
 * One file holds K layers x N rows x D values (float32, float16 or bfloat16),
 * layer-major, each layer page-aligned, so one layer is one contiguous,
 * mappable array. Three regions precede the data:
 *
 *   header page   immutable after creation, CRC32C-protected
 *   state slot A  } the mutable state: rows in use, completed-rows bitmap,
 *   state slot B  } per-(layer, chunk) CRC32C of the data; two copies
 *
 * Crash safety rests on ordering and on the two slots. A batch of rows is
 * pwritten and fdatasync'ed before any state claims it; the new state is
 * then written, whole and checksummed, into the slot that does NOT hold the
 * newest state, and synced. A kill at any instant therefore leaves one slot
 * whose checksum holds and whose claims are all on disk: at worst the slot
 * being written is torn and the previous state (one batch older) is used.
 * Creation and capacity growth write a complete new file under path.tmp and
 * rename it into place.
 *
 * Data integrity: rows are checksummed per chunk of `chunk_rows` rows per
 * layer once all of a chunk's rows are done. This file holds the format,
 * the state slots and commits, and the life cycle (create, open, grow);
 * writing rows is in cache_write.c, the read side (gather, layer maps,
 * lazy chunk checks, verify) in cache_read.c.
 */
/* pread/pwrite, fdatasync, flock, O_CLOEXEC, strndup (setup.py does not set it) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "cache_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the layer cache code assumes a little-endian host (the file is little-endian)"
#endif

/* ------------------------------------------------------------- utilities */



static int round_up(uint64_t v, uint64_t a, uint64_t *o)
{
    uint64_t t;
    if (add64(v, a - 1, &t)) {
        return 1;
    }
    *o = t / a * a;
    return 0;
}

static uint32_t elem_size_of(uint32_t dtype)
{
    switch (dtype) {
    case EG_CACHE_F32: return 4;
    case EG_CACHE_F16: return 2;
    case EG_CACHE_BF16: return 2;
    default: return 0;
    }
}

eg_status eg_cachei_pwrite_all(int fd, const void *buf, uint64_t n, uint64_t off, eg_err *err)
{
    const uint8_t *p = (const uint8_t *)buf;
    while (n > 0) {
        size_t step = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t w = pwrite(fd, p, step, (off_t)off);
        if (w < 0) {
            if (errno == EINTR) {
                continue;
            }
            return eg_seterr(err, EG_EIO, "layer cache: write failed at offset %llu: %s",
                             (unsigned long long)off, strerror(errno));
        }
        p += w;
        n -= (uint64_t)w;
        off += (uint64_t)w;
    }
    return EG_OK;
}

/* Read exactly n bytes; a short file is corruption (sizes were validated). */
eg_status eg_cachei_pread_all(int fd, void *buf, uint64_t n, uint64_t off, eg_err *err)
{
    uint8_t *p = (uint8_t *)buf;
    while (n > 0) {
        size_t step = n > (1u << 30) ? (1u << 30) : (size_t)n;
        ssize_t r = pread(fd, p, step, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            return eg_seterr(err, EG_EIO, "layer cache: read failed at offset %llu: %s",
                             (unsigned long long)off, strerror(errno));
        }
        if (r == 0) {
            return eg_seterr(err, EG_ECORRUPT, "layer cache: file ends early (offset %llu)",
                             (unsigned long long)off);
        }
        p += r;
        n -= (uint64_t)r;
        off += (uint64_t)r;
    }
    return EG_OK;
}

eg_status eg_cachei_sync_fd(int fd, eg_err *err)
{
    if (fdatasync(fd) != 0) {
        return eg_seterr(err, EG_EIO, "layer cache: fdatasync failed: %s", strerror(errno));
    }
    return EG_OK;
}

/* fsync the directory holding `path`, so a rename into it is durable. */
static eg_status sync_dir_of(const char *path, eg_err *err)
{
    const char *slash = strrchr(path, '/');
    char *dir;
    if (slash == NULL) {
        dir = strdup(".");
    } else if (slash == path) {
        dir = strdup("/");
    } else {
        dir = strndup(path, (size_t)(slash - path));
    }
    if (dir == NULL) {
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
    }
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        eg_status st = eg_seterr(err, EG_EIO, "layer cache: cannot open directory %s: %s", dir, strerror(errno));
        free(dir);
        return st;
    }
    free(dir);
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    if (rc != 0 && e != EINVAL) { /* some filesystems refuse fsync on directories */
        return eg_seterr(err, EG_EIO, "layer cache: fsync of directory failed: %s", strerror(e));
    }
    return EG_OK;
}



static uint64_t popcount_range(const uint64_t *bm, uint64_t words)
{
    uint64_t n = 0;
    for (uint64_t i = 0; i < words; i++) {
        n += (uint64_t)__builtin_popcountll(bm[i]);
    }
    return n;
}






/* Checksum of chunk ch of layer k read with pread through buf (IO_BUF bytes). */
eg_status eg_cachei_chunk_crc_pread(const eg_cache *c, uint64_t k, uint64_t ch, uint8_t *buf,
                                 uint32_t *out, eg_err *err)
{
    uint64_t lo, hi;
    chunk_rows_range(c, ch, &lo, &hi);
    uint64_t off = layer_off(c, k) + lo * c->row_bytes;
    uint64_t left = (hi - lo) * c->row_bytes;
    uint32_t crc = chunk_seed(k, ch);
    while (left > 0) {
        uint64_t step = left < IO_BUF ? left : IO_BUF;
        eg_status st = eg_cachei_pread_all(c->fd, buf, step, off, err);
        if (st != EG_OK) {
            return st;
        }
        crc = eg_crc32c(crc, buf, (size_t)step);
        off += step;
        left -= step;
    }
    *out = crc;
    return EG_OK;
}


/* ---------------------------------------------------------------- layout */

/* Derive every offset and size from the primary fields, with checked
 * arithmetic; used both to create a file and to validate one. */
static eg_status set_layout(eg_cache *c, eg_err *err)
{
    eg_cache_info *h = &c->h;
    if (h->num_layers < 1 || h->num_layers > EG_CACHE_MAX_LAYERS) {
        return eg_seterr(err, EG_EINVAL, "layer cache: number of layers must be in [1, %u], got %u",
                         EG_CACHE_MAX_LAYERS, h->num_layers);
    }
    if (h->dim < 1 || h->dim > EG_CACHE_MAX_DIM) {
        return eg_seterr(err, EG_EINVAL, "layer cache: dim must be in [1, %u], got %llu",
                         EG_CACHE_MAX_DIM, (unsigned long long)h->dim);
    }
    if (h->capacity < 1 || h->capacity > EG_CACHE_MAX_ROWS) {
        return eg_seterr(err, EG_EINVAL, "layer cache: capacity must be in [1, 2^40], got %llu",
                         (unsigned long long)h->capacity);
    }
    if (h->num_nodes < 1 || h->num_nodes > h->capacity) {
        return eg_seterr(err, EG_EINVAL, "layer cache: number of nodes must be in [1, capacity=%llu], got %llu",
                         (unsigned long long)h->capacity, (unsigned long long)h->num_nodes);
    }
    if (h->chunk_rows < 1 || h->chunk_rows > EG_CACHE_MAX_CHUNK_ROWS) {
        return eg_seterr(err, EG_EINVAL, "layer cache: chunk_rows must be in [1, %u], got %u",
                         EG_CACHE_MAX_CHUNK_ROWS, h->chunk_rows);
    }
    h->elem_size = elem_size_of((uint32_t)h->dtype);
    if (h->elem_size == 0) {
        return eg_seterr(err, EG_EINVAL, "layer cache: unknown dtype code %u", (unsigned)h->dtype);
    }
    c->row_bytes = h->dim * h->elem_size; /* <= 2^22: no overflow */
    uint64_t chunk_bytes = (uint64_t)h->chunk_rows * c->row_bytes;
    if (chunk_bytes > MAX_CHUNK_BYTES) {
        return eg_seterr(err, EG_EINVAL, "layer cache: chunk_rows x row size = %llu bytes exceeds 256 MiB",
                         (unsigned long long)chunk_bytes);
    }
    c->nchunks = (h->capacity + h->chunk_rows - 1) / h->chunk_rows;
    c->bitmap_words = (h->capacity + 63) / 64;
    c->crc_off = S_BITMAP + c->bitmap_words * 8;
    uint64_t crc_bytes, used, layer_bytes, data_bytes, t;
    if (mul64(c->nchunks * h->num_layers, 4, &crc_bytes) || add64(c->crc_off, crc_bytes, &used) ||
        round_up(used, EG_CACHE_PAGE, &c->slot_size) ||
        mul64(h->capacity, c->row_bytes, &layer_bytes) ||
        round_up(layer_bytes, EG_CACHE_PAGE, &h->layer_stride) ||
        mul64(h->layer_stride, h->num_layers, &data_bytes) ||
        mul64(c->slot_size, 2, &t) || add64(EG_CACHE_PAGE, t, &h->data_offset) ||
        add64(h->data_offset, data_bytes, &h->file_size) || h->file_size > ((uint64_t)1 << 62)) {
        return eg_seterr(err, EG_EOVERFLOW, "layer cache: file size overflows");
    }
    if (h->file_size > (uint64_t)SIZE_MAX || c->slot_size > (uint64_t)SIZE_MAX / 2) {
        return eg_seterr(err, EG_EOVERFLOW, "layer cache: file too large for this address space");
    }
    c->state_off = EG_CACHE_PAGE;
    return EG_OK;
}

static void encode_header(const eg_cache *c, uint8_t *pg)
{
    const eg_cache_info *h = &c->h;
    memset(pg, 0, EG_CACHE_PAGE);
    memcpy(pg + H_MAGIC, EG_CACHE_MAGIC, 8);
    put32(pg + H_VERSION, EG_CACHE_VERSION);
    put32(pg + H_HEADER_SIZE, EG_CACHE_PAGE);
    put32(pg + H_DTYPE, (uint32_t)h->dtype);
    put32(pg + H_ELEM, h->elem_size);
    put32(pg + H_NLAYERS, h->num_layers);
    put32(pg + H_CHUNK, h->chunk_rows);
    put64(pg + H_DIM, h->dim);
    put64(pg + H_CAPACITY, h->capacity);
    put64(pg + H_SLOT_SIZE, c->slot_size);
    put64(pg + H_STATE_OFF, c->state_off);
    put64(pg + H_DATA_OFF, h->data_offset);
    put64(pg + H_STRIDE, h->layer_stride);
    put64(pg + H_FILE_SIZE, h->file_size);
    memcpy(pg + H_FP_SHA, h->fp_sha256, 32);
    uint32_t fl = (uint32_t)strlen(h->fp_str);
    put32(pg + H_FP_LEN, fl);
    put32(pg + H_FLAGS, 0);
    for (uint32_t i = 0; i < h->num_layers; i++) {
        put32(pg + H_LAYERS + 4 * i, (uint32_t)h->layers[i]);
    }
    memcpy(pg + H_FP_STR, h->fp_str, fl);
    put32(pg + H_CRC, eg_crc32c(0, pg, H_CRC));
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] != 0) {
            return 0;
        }
    }
    return 1;
}

/* Parse and validate a header page into c (layout included). num_nodes is
 * not in the header; a provisional 1 is set until a slot is read. */
eg_status eg_cachei_decode_header(eg_cache *c, const uint8_t *pg, eg_err *err)
{
    eg_cache_info *h = &c->h;
    if (memcmp(pg + H_MAGIC, EG_CACHE_MAGIC, 8) != 0) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: not a layer cache file (bad magic)", c->path);
    }
    uint32_t crc = eg_crc32c(0, pg, H_CRC);
    if (crc != get32(pg + H_CRC)) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: header checksum mismatch (stored 0x%08x, computed 0x%08x)",
                         c->path, get32(pg + H_CRC), crc);
    }
    if (get32(pg + H_VERSION) != EG_CACHE_VERSION) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: unsupported version %u (this build reads %u)",
                         c->path, get32(pg + H_VERSION), EG_CACHE_VERSION);
    }
    if (get32(pg + H_HEADER_SIZE) != EG_CACHE_PAGE || get32(pg + H_FLAGS) != 0) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: bad header size or flags", c->path);
    }
    h->dtype = (eg_cache_dtype)get32(pg + H_DTYPE);
    h->num_layers = get32(pg + H_NLAYERS);
    h->chunk_rows = get32(pg + H_CHUNK);
    h->dim = get64(pg + H_DIM);
    h->capacity = get64(pg + H_CAPACITY);
    h->num_nodes = 1;
    eg_err sub;
    eg_err_clear(&sub);
    if (set_layout(c, &sub) != EG_OK) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: invalid header: %s", c->path, sub.msg);
    }
    if (get32(pg + H_ELEM) != h->elem_size || get64(pg + H_SLOT_SIZE) != c->slot_size ||
        get64(pg + H_STATE_OFF) != c->state_off || get64(pg + H_DATA_OFF) != h->data_offset ||
        get64(pg + H_STRIDE) != h->layer_stride || get64(pg + H_FILE_SIZE) != h->file_size) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: header sizes do not match its dimensions", c->path);
    }
    memcpy(h->fp_sha256, pg + H_FP_SHA, 32);
    uint32_t fl = get32(pg + H_FP_LEN);
    if (fl > EG_CACHE_MAX_FP_STR || memchr(pg + H_FP_STR, 0, fl) != NULL ||
        !all_zero(pg + H_FP_STR + fl, EG_CACHE_MAX_FP_STR - fl)) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: bad fingerprint string", c->path);
    }
    memcpy(h->fp_str, pg + H_FP_STR, fl);
    h->fp_str[fl] = '\0';
    for (uint32_t i = 0; i < EG_CACHE_MAX_LAYERS; i++) {
        int32_t v = (int32_t)get32(pg + H_LAYERS + 4 * i);
        if (i < h->num_layers) {
            if (v < 0) {
                return eg_seterr(err, EG_ECORRUPT, "layer cache %s: negative layer id", c->path);
            }
            for (uint32_t j = 0; j < i; j++) {
                if (h->layers[j] == v) {
                    return eg_seterr(err, EG_ECORRUPT, "layer cache %s: duplicate layer id %d", c->path, v);
                }
            }
            h->layers[i] = v;
        } else if (v != 0) {
            return eg_seterr(err, EG_ECORRUPT, "layer cache %s: layer table has entries past K", c->path);
        }
    }
    if (!all_zero(pg + 128, H_LAYERS - 128) || !all_zero(pg + H_FP_STR + EG_CACHE_MAX_FP_STR, H_CRC - H_FP_STR - EG_CACHE_MAX_FP_STR)) {
        return eg_seterr(err, EG_ECORRUPT, "layer cache %s: reserved header bytes are not zero", c->path);
    }
    return EG_OK;
}

/* ------------------------------------------------------------ state slots */

/* 1 when a slot image is internally consistent; else 0 and *why says why. */
int eg_cachei_slot_valid(const eg_cache *c, const uint8_t *s, const char **why)
{
    if (memcmp(s + S_MAGIC, SLOT_MAGIC, 4) != 0) {
        *why = "bad magic";
        return 0;
    }
    if (eg_crc32c(0, s + 8, (size_t)c->slot_size - 8) != get32(s + S_CRC)) {
        *why = "checksum mismatch";
        return 0;
    }
    uint64_t n = get64(s + S_NODES), done = get64(s + S_DONE);
    if (n < 1 || n > c->h.capacity || done > n) {
        *why = "row counts out of range";
        return 0;
    }
    const uint64_t *bm = (const uint64_t *)(s + S_BITMAP);
    if (popcount_range(bm, c->bitmap_words) != done) {
        *why = "bitmap does not match the done count";
        return 0;
    }
    uint64_t end = (n + 63) / 64 * 64;
    for (uint64_t r = n; r < end; r++) {
        if (bit_get(bm, r)) {
            *why = "bitmap marks rows past the row count";
            return 0;
        }
    }
    for (uint64_t w = end / 64; w < c->bitmap_words; w++) {
        if (bm[w] != 0) {
            *why = "bitmap marks rows past the row count";
            return 0;
        }
    }
    return 1;
}

static void seal_slot(eg_cache *c, uint64_t seq)
{
    uint8_t *s = c->slot;
    memcpy(s + S_MAGIC, SLOT_MAGIC, 4);
    put64(s + S_SEQ, seq);
    put64(s + S_NODES, c->h.num_nodes);
    put64(s + S_DONE, c->h.rows_done);
    memcpy(s + S_DIGEST, c->h.texts_digest, 32);
    put32(s + S_CRC, eg_crc32c(0, s + 8, (size_t)c->slot_size - 8));
}

/* Record that image bytes [off, off + len) changed (for both slots). */
void eg_cachei_touch(eg_cache *c, uint64_t off, uint64_t len)
{
    int r = off < c->crc_off ? 0 : 1;
    for (int s = 0; s < 2; s++) {
        if (c->dirty_hi[s][r] <= c->dirty_lo[s][r]) {
            c->dirty_lo[s][r] = off;
            c->dirty_hi[s][r] = off + len;
        } else {
            c->dirty_lo[s][r] = off < c->dirty_lo[s][r] ? off : c->dirty_lo[s][r];
            c->dirty_hi[s][r] = off + len > c->dirty_hi[s][r] ? off + len : c->dirty_hi[s][r];
        }
    }
}

/* Slot s holds exactly the image (clean) or anything (all dirty). */
static void set_slot_clean(eg_cache *c, int s, int clean)
{
    c->dirty_lo[s][0] = S_BITMAP;
    c->dirty_hi[s][0] = clean ? S_BITMAP : c->crc_off;
    c->dirty_lo[s][1] = c->crc_off;
    c->dirty_hi[s][1] = clean ? c->crc_off : c->slot_size;
}

/* Commit the in-memory state into the older slot and make it the newest.
 * The older slot held a complete image two commits ago (or is marked all
 * dirty), so writing the fixed fields and the dirty ranges makes it a
 * complete image of the new state; its CRC covers the whole slot, so a torn
 * write leaves it invalid and the newest slot, untouched here, is used. */
eg_status eg_cachei_commit(eg_cache *c, eg_err *err)
{
    uint64_t seq = c->h.seq + 1;
    int t = c->active ^ 1;
    uint64_t base = c->state_off + (uint64_t)t * c->slot_size;
    seal_slot(c, seq);
    eg_status st = eg_cachei_pwrite_all(c->fd, c->slot, S_BITMAP, base, err);
    for (int r = 0; r < 2 && st == EG_OK; r++) {
        uint64_t lo = c->dirty_lo[t][r], hi = c->dirty_hi[t][r];
        if (hi > lo) {
            st = eg_cachei_pwrite_all(c->fd, c->slot + lo, hi - lo, base + lo, err);
        }
    }
    if (st == EG_OK) {
        st = eg_cachei_sync_fd(c->fd, err);
    }
    if (st != EG_OK) {
        c->broken = 1;
        return st;
    }
    set_slot_clean(c, t, 1);
    c->active = t;
    c->h.seq = seq;
    return EG_OK;
}

/* ------------------------------------------------------------- lifecycle */

static void free_internals(eg_cache *c)
{
    if (c->map != NULL) {
        munmap(c->map, c->map_len);
        c->map = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    eg_aligned_free(c->slot);
    c->slot = NULL;
    free(c->ck);
    c->ck = NULL;
    free(c->scratch);
    c->scratch = NULL;
    c->scratch_len = 0;
}

void eg_cache_close(eg_cache *c)
{
    if (c == NULL) {
        return;
    }
    free_internals(c);
    free(c->path);
    free(c);
}

eg_cache *eg_cachei_new_handle(const char *path, eg_err *err)
{
    eg_cache *c = calloc(1, sizeof *c);
    if (c == NULL || (c->path = strdup(path)) == NULL) {
        free(c);
        eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        return NULL;
    }
    c->fd = -1;
    return c;
}

/* Allocate the slot image and the chunk check states for the layout in c. */
static eg_status alloc_tables(eg_cache *c, eg_err *err)
{
    uint64_t nck;
    if (mul64(c->nchunks, c->h.num_layers, &nck) || nck > SIZE_MAX) {
        return eg_seterr(err, EG_EOVERFLOW, "layer cache: chunk table too large");
    }
    c->slot = eg_aligned_alloc((size_t)c->slot_size);
    c->ck = calloc((size_t)nck, 1);
    if (c->slot == NULL || c->ck == NULL) {
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory for a %llu-byte state slot",
                         (unsigned long long)c->slot_size);
    }
    memset(c->slot, 0, (size_t)c->slot_size);
    return EG_OK;
}

static eg_status lock_fd(int fd, const char *path, eg_err *err)
{
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK) {
            return eg_seterr(err, EG_ESTATE, "layer cache %s is open for writing elsewhere (another process or another LayerCache object)", path);
        }
        return eg_seterr(err, EG_EIO, "layer cache %s: cannot lock: %s", path, strerror(errno));
    }
    return EG_OK;
}

/* Write a complete new file for c's header and slot image (both slots, the
 * newer one with seq c->h.seq) under tmp; leaves it open in *fd_out.
 * *locked says whether tmp is ours (only then may the caller unlink it): it
 * is truncated only after its lock is taken, so two processes creating the
 * same path cannot spoil each other's file. */
static eg_status write_new_file(eg_cache *c, const char *tmp, int *fd_out, int *locked, eg_err *err)
{
    *locked = 0;
    int fd = open(tmp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        return eg_seterr(err, EG_EIO, "layer cache: cannot create %s: %s", tmp, strerror(errno));
    }
    eg_status st = lock_fd(fd, tmp, err);
    if (st != EG_OK) {
        close(fd);
        return st;
    }
    *locked = 1;
    if (ftruncate(fd, 0) != 0 || ftruncate(fd, (off_t)c->h.file_size) != 0) {
        st = eg_seterr(err, EG_EIO, "layer cache: cannot size %s to %llu bytes: %s", tmp,
                       (unsigned long long)c->h.file_size, strerror(errno));
        close(fd);
        return st;
    }
    uint8_t *pg = eg_aligned_alloc(EG_CACHE_PAGE);
    if (pg == NULL) {
        close(fd);
        return eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
    }
    encode_header(c, pg);
    st = eg_cachei_pwrite_all(fd, pg, EG_CACHE_PAGE, 0, err);
    eg_aligned_free(pg);
    /* slot 1 gets seq-1, slot 0 gets seq: both valid, slot 0 newest */
    uint64_t seq = c->h.seq;
    if (st == EG_OK) {
        seal_slot(c, seq - 1);
        st = eg_cachei_pwrite_all(fd, c->slot, c->slot_size, c->state_off + c->slot_size, err);
    }
    if (st == EG_OK) {
        seal_slot(c, seq);
        st = eg_cachei_pwrite_all(fd, c->slot, c->slot_size, c->state_off, err);
    }
    c->active = 0;
    set_slot_clean(c, 0, st == EG_OK);
    set_slot_clean(c, 1, st == EG_OK);
    *fd_out = fd;
    return st;
}

eg_status eg_cache_create(eg_cache **out, const char *path, const eg_cache_params *p, eg_err *err)
{
    *out = NULL;
    eg_cache *c = eg_cachei_new_handle(path, err);
    if (c == NULL) {
        return EG_ENOMEM;
    }
    eg_cache_info *h = &c->h;
    h->dtype = p->dtype;
    h->num_nodes = p->num_nodes;
    h->capacity = p->capacity != 0 ? p->capacity : p->num_nodes;
    h->dim = p->dim;
    h->num_layers = p->num_layers;
    h->chunk_rows = p->chunk_rows != 0 ? p->chunk_rows : 256;
    h->writable = 1;
    h->seq = 2;
    eg_status st = set_layout(c, err);
    char *tmp = NULL;
    if (st != EG_OK) {
        goto fail;
    }
    for (uint32_t i = 0; i < h->num_layers; i++) {
        if (p->layers[i] < 0) {
            st = eg_seterr(err, EG_EINVAL, "layer cache: layer ids must be >= 0, got %d", p->layers[i]);
            goto fail;
        }
        for (uint32_t j = 0; j < i; j++) {
            if (p->layers[j] == p->layers[i]) {
                st = eg_seterr(err, EG_EINVAL, "layer cache: duplicate layer id %d", p->layers[i]);
                goto fail;
            }
        }
        h->layers[i] = p->layers[i];
    }
    memcpy(h->fp_sha256, p->fp_sha256, 32);
    memcpy(h->texts_digest, p->texts_digest, 32);
    if (p->fp_str != NULL) {
        size_t fl = strnlen(p->fp_str, EG_CACHE_MAX_FP_STR);
        memcpy(h->fp_str, p->fp_str, fl);
        h->fp_str[fl] = '\0';
    }
    st = alloc_tables(c, err);
    if (st != EG_OK) {
        goto fail;
    }
    size_t pl = strlen(path);
    tmp = malloc(pl + 5);
    if (tmp == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        goto fail;
    }
    memcpy(tmp, path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int locked = 0;
    st = write_new_file(c, tmp, &c->fd, &locked, err);
    if (st == EG_OK) {
        st = eg_cachei_sync_fd(c->fd, err);
    }
    if (st == EG_OK && rename(tmp, path) != 0) {
        st = eg_seterr(err, EG_EIO, "layer cache: cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    if (st == EG_OK) {
        st = sync_dir_of(path, err);
    }
    if (st != EG_OK) {
        if (locked) {
            unlink(tmp);
        }
        goto fail;
    }
    c->writable = 1;
    free(tmp);
    *out = c;
    return EG_OK;
fail:
    free(tmp);
    eg_cache_close(c);
    return st;
}

eg_status eg_cache_open(eg_cache **out, const char *path, int writable, eg_err *err)
{
    *out = NULL;
    eg_cache *c = eg_cachei_new_handle(path, err);
    if (c == NULL) {
        return EG_ENOMEM;
    }
    eg_status st = EG_OK;
    uint8_t *pg = NULL, *other = NULL;
    c->fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (c->fd < 0) {
        st = eg_seterr(err, EG_EIO, "layer cache: cannot open %s: %s", path, strerror(errno));
        goto fail;
    }
    c->writable = writable;
    c->h.writable = writable;
    if (writable == 1 && (st = lock_fd(c->fd, path, err)) != EG_OK) {
        goto fail;
    }
    struct stat sb;
    if (fstat(c->fd, &sb) != 0) {
        st = eg_seterr(err, EG_EIO, "layer cache: cannot stat %s: %s", path, strerror(errno));
        goto fail;
    }
    if (sb.st_size < (off_t)EG_CACHE_PAGE) {
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: file is %lld bytes, shorter than its header",
                       path, (long long)sb.st_size);
        goto fail;
    }
    pg = eg_aligned_alloc(EG_CACHE_PAGE);
    if (pg == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        goto fail;
    }
    if ((st = eg_cachei_pread_all(c->fd, pg, EG_CACHE_PAGE, 0, err)) != EG_OK ||
        (st = eg_cachei_decode_header(c, pg, err)) != EG_OK) {
        goto fail;
    }
    if ((uint64_t)sb.st_size != c->h.file_size) {
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: file is %lld bytes, its header says %llu (truncated or extended)",
                       path, (long long)sb.st_size, (unsigned long long)c->h.file_size);
        goto fail;
    }
    if ((st = alloc_tables(c, err)) != EG_OK) {
        goto fail;
    }
    other = eg_aligned_alloc((size_t)c->slot_size);
    if (other == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        goto fail;
    }
    if ((st = eg_cachei_pread_all(c->fd, c->slot, c->slot_size, c->state_off, err)) != EG_OK ||
        (st = eg_cachei_pread_all(c->fd, other, c->slot_size, c->state_off + c->slot_size, err)) != EG_OK) {
        goto fail;
    }
    const char *why0 = "", *why1 = "";
    int v0 = eg_cachei_slot_valid(c, c->slot, &why0), v1 = eg_cachei_slot_valid(c, other, &why1);
    if (!v0 && !v1) {
        st = eg_seterr(err, EG_ECORRUPT, "layer cache %s: both state slots are damaged (A: %s, B: %s)",
                       path, why0, why1);
        goto fail;
    }
    c->active = 0;
    if (!v0 || (v1 && get64(other + S_SEQ) > get64(c->slot + S_SEQ))) {
        memcpy(c->slot, other, (size_t)c->slot_size);
        c->active = 1;
    }
    /* the other slot may be torn or older: its first commit rewrites it whole */
    set_slot_clean(c, c->active, 1);
    set_slot_clean(c, c->active ^ 1, 0);
    c->h.seq = get64(c->slot + S_SEQ);
    c->h.num_nodes = get64(c->slot + S_NODES);
    c->h.rows_done = get64(c->slot + S_DONE);
    memcpy(c->h.texts_digest, c->slot + S_DIGEST, 32);
    eg_aligned_free(pg);
    eg_aligned_free(other);
    *out = c;
    return EG_OK;
fail:
    eg_aligned_free(pg);
    eg_aligned_free(other);
    eg_cache_close(c);
    return st;
}

void eg_cache_get_info(const eg_cache *c, eg_cache_info *info)
{
    *info = c->h;
    info->writable = c->writable;
}

const uint64_t *eg_cache_bitmap(const eg_cache *c)
{
    return bitmap_of(c);
}

eg_status eg_cachei_check_writable(const eg_cache *c, eg_err *err)
{
    if (c->writable != 1) {
        return eg_seterr(err, EG_ESTATE, "layer cache %s is open %s", c->path,
                         c->writable == 0 ? "read-only" : "as a data worker (it may only write_data)");
    }
    if (c->broken) {
        return eg_seterr(err, EG_ESTATE, "layer cache %s: an earlier write failed; reopen the file", c->path);
    }
    return EG_OK;
}

/* ----------------------------------------------------------------- writes */

eg_status eg_cache_grow(eg_cache *c, uint64_t capacity, eg_err *err)
{
    eg_status st = eg_cachei_check_writable(c, err);
    if (st != EG_OK) {
        return st;
    }
    if (capacity <= c->h.capacity) {
        return eg_seterr(err, EG_EINVAL, "layer cache: new capacity %llu must exceed %llu",
                         (unsigned long long)capacity, (unsigned long long)c->h.capacity);
    }
    eg_cache *g = eg_cachei_new_handle(c->path, err);
    if (g == NULL) {
        return EG_ENOMEM;
    }
    char *tmp = NULL;
    uint8_t *buf = NULL;
    g->h = c->h;
    g->h.capacity = capacity;
    g->h.seq = c->h.seq + 2;
    if ((st = set_layout(g, err)) != EG_OK || (st = alloc_tables(g, err)) != EG_OK) {
        goto fail;
    }
    memcpy(g->slot + S_BITMAP, c->slot + S_BITMAP, (size_t)c->bitmap_words * 8);
    for (uint64_t k = 0; k < c->h.num_layers; k++) {
        memcpy(crcs_of(g) + k * g->nchunks, crcs_of(c) + k * c->nchunks, (size_t)c->nchunks * 4);
        memcpy(g->ck + k * g->nchunks, c->ck + k * c->nchunks, (size_t)c->nchunks);
    }
    size_t pl = strlen(c->path);
    tmp = malloc(pl + 5);
    buf = malloc(IO_BUF);
    if (tmp == NULL || buf == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "layer cache: out of memory");
        goto fail;
    }
    memcpy(tmp, c->path, pl);
    memcpy(tmp + pl, ".tmp", 5);
    int locked = 0;
    if ((st = write_new_file(g, tmp, &g->fd, &locked, err)) != EG_OK) {
        if (locked) {
            goto fail_unlink;
        }
        goto fail;
    }
    for (uint64_t k = 0; k < c->h.num_layers; k++) {
        uint64_t left = c->h.num_nodes * c->row_bytes, off = 0;
        while (left > 0) {
            uint64_t step = left < IO_BUF ? left : IO_BUF;
            if ((st = eg_cachei_pread_all(c->fd, buf, step, layer_off(c, k) + off, err)) != EG_OK ||
                (st = eg_cachei_pwrite_all(g->fd, buf, step, layer_off(g, k) + off, err)) != EG_OK) {
                goto fail_unlink;
            }
            off += step;
            left -= step;
        }
    }
    if ((st = eg_cachei_sync_fd(g->fd, err)) != EG_OK) {
        goto fail_unlink;
    }
    if (rename(tmp, c->path) != 0) {
        st = eg_seterr(err, EG_EIO, "layer cache: cannot rename %s to %s: %s", tmp, c->path, strerror(errno));
        goto fail_unlink;
    }
    st = sync_dir_of(c->path, err);
    /* the new file is in place (even if the directory sync failed): switch */
    free_internals(c);
    free(g->path);
    g->path = c->path;
    g->writable = 1;
    *c = *g;
    free(g);
    free(tmp);
    free(buf);
    return st;
fail_unlink:
    unlink(tmp);
fail:
    free(tmp);
    free(buf);
    eg_cache_close(g);
    return st;
}

/* ------------------------------------------------------------------ reads */







