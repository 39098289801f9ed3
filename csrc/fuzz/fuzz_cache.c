/*
 * fuzz_cache.c — libFuzzer harness for the layer-cache opener and readers
 * (eg_cache_open, eg_cache_verify, eg_cache_check_layer, eg_cache_gather,
 * eg_cache_map_layer in csrc/io/cache*.c).
 *
 * Input: one control byte, then the file. The file is written to a memfd and
 * opened read-only through /proc/self/fd/N (the opener takes a path). Because
 * every region of a cache file is checksummed, random mutations would almost
 * never get past the CRCs; so, when the control byte asks, the harness repairs
 * them after mutating, as a forger would (docs/CACHE_FORMAT.md):
 *   bit 0: resize the file to the header's file_size (when <= 4 MiB);
 *   bit 1: recompute the chunk checksums of both state slots;
 *   bit 2: recompute both state slots' CRCs;
 *   bit 3: recompute the header CRC.
 * With a clear bit the corresponding damage must be detected instead. Whatever
 * the opener accepts is then read through every read path, and what it
 * reports is checked (rows_done = bits set, gather only of done rows).
 */
#define _GNU_SOURCE
#include "eg.h"
#include "eg_cache.h"
#include "fuzz_common.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_FILE (4u << 20)

static int g_fd = -1;
static char g_path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    eg_set_num_threads(1);
    g_fd = memfd_create("fuzz_cache", MFD_CLOEXEC);
    if (g_fd < 0) {
        perror("memfd_create");
        return 1;
    }
    snprintf(g_path, sizeof g_path, "/proc/self/fd/%d", g_fd);
    return 0;
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t rd64(const uint8_t *p)
{
    return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int k = 0; k < 4; k++) {
        p[k] = (uint8_t)(v >> (8 * k));
    }
}

/* Recompute the chunk checksums of the slot at s (sizes taken from the header,
 * all bounds checked against the buffer: this is the forger, not the reader). */
static void fix_chunks(uint8_t *f, size_t size, uint8_t *s, uint64_t slot_size)
{
    uint32_t K = rd32(f + 24), chunk = rd32(f + 28), es = rd32(f + 20);
    uint64_t D = rd64(f + 32), cap = rd64(f + 40), data = rd64(f + 64), stride = rd64(f + 72);
    uint64_t N = rd64(s + 16);
    if (K == 0 || K > 256 || chunk == 0 || es == 0 || es > 4 || D == 0 || D > (1u << 20) ||
        cap == 0 || cap > (1u << 20) || N > cap) {
        return;
    }
    uint64_t words = (cap + 63) / 64, nchunks = (cap + chunk - 1) / chunk, row = D * es;
    uint64_t tab = 128 + 8 * words;
    if (tab + 4 * (uint64_t)K * nchunks > slot_size) {
        return;
    }
    for (uint64_t k = 0; k < K; k++) {
        for (uint64_t c = 0; c < nchunks; c++) {
            uint64_t lo = c * chunk, hi = lo + chunk < N ? lo + chunk : N;
            if (lo >= hi) {
                continue;
            }
            uint64_t off = data + k * stride + lo * row, len = (hi - lo) * row;
            if (off > size || len > size - off) {
                return;
            }
            uint8_t seed[16];
            for (int b = 0; b < 8; b++) {
                seed[b] = (uint8_t)(k >> (8 * b));
                seed[8 + b] = (uint8_t)(c >> (8 * b));
            }
            wr32(s + tab + 4 * (k * nchunks + c), eg_crc32c(eg_crc32c(0, seed, 16), f + off, (size_t)len));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || g_fd < 0) {
        return 0;
    }
    unsigned ctl = data[0];
    size_t fsize = size - 1;
    if ((ctl & 1u) && fsize >= EG_CACHE_PAGE) {
        uint64_t want = rd64(data + 1 + 80);
        if (want >= EG_CACHE_PAGE && want <= MAX_FILE) {
            fsize = (size_t)want;
        }
    }
    uint8_t *f = calloc(fsize > 0 ? fsize : 1, 1);
    if (f == NULL) {
        return 0;
    }
    memcpy(f, data + 1, fsize < size - 1 ? fsize : size - 1);
    if (fsize >= EG_CACHE_PAGE) {
        uint64_t slot = rd64(f + 48);
        if (slot >= 4096 && slot <= MAX_FILE && 4096 + 2 * slot <= fsize) {
            for (int k = 0; k < 2; k++) {
                uint8_t *s = f + 4096 + k * slot;
                if (ctl & 2u) {
                    fix_chunks(f, fsize, s, slot);
                }
                if (ctl & 4u) {
                    wr32(s + 4, eg_crc32c(0, s + 8, (size_t)slot - 8));
                }
            }
        }
        if (ctl & 8u) {
            wr32(f + EG_CACHE_PAGE - 4, eg_crc32c(0, f, EG_CACHE_PAGE - 4));
        }
    }
    FUZZ_CHECK(ftruncate(g_fd, 0) == 0 && pwrite(g_fd, f, fsize, 0) == (ssize_t)fsize, "memfd write");
    eg_cache *c = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_cache_open(&c, g_path, 0, &err);
    fuzz_check_status(st, &err);
    if (st != EG_OK) {
        FUZZ_CHECK(c == NULL && (st == EG_ECORRUPT || st == EG_ENOMEM), "open: status %d: %s",
                   (int)st, err.msg);
        free(f);
        return 0;
    }
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    FUZZ_CHECK(info.file_size == fsize && info.num_layers >= 1 && info.num_layers <= EG_CACHE_MAX_LAYERS &&
                   info.num_nodes >= 1 && info.num_nodes <= info.capacity && info.rows_done <= info.num_nodes,
               "info out of range");
    const uint64_t *bm = eg_cache_bitmap(c);
    uint64_t set = 0;
    int64_t done[16];
    size_t nd = 0;
    for (uint64_t r = 0; r < info.num_nodes; r++) {
        if ((bm[r / 64] >> (r % 64)) & 1u) {
            set++;
            if (nd < 16) {
                done[nd++] = (int64_t)r;
            }
        }
    }
    FUZZ_CHECK(set == info.rows_done, "rows_done %llu but %llu bits set",
               (unsigned long long)info.rows_done, (unsigned long long)set);
    eg_err_clear(&err);
    st = eg_cache_verify(c, &err);
    fuzz_check_status(st, &err);
    uint32_t kmax = info.num_layers < 4 ? info.num_layers : 4;
    float *out = malloc(sizeof(float) * 16 * (size_t)info.dim);
    FUZZ_CHECK(out != NULL, "malloc");
    for (uint32_t k = 0; k < kmax; k++) {
        eg_err_clear(&err);
        st = eg_cache_gather(c, k, done, nd, out, &err);
        fuzz_check_status(st, &err);
        FUZZ_CHECK(st == EG_OK || st == EG_ECORRUPT, "gather of done rows: %d %s", (int)st, err.msg);
        eg_err_clear(&err);
        st = eg_cache_check_layer(c, k, &err);
        fuzz_check_status(st, &err);
        void *base = NULL;
        size_t len = 0;
        const void *p = NULL;
        eg_err_clear(&err);
        st = eg_cache_map_layer(c, k, &base, &len, &p, &err);
        fuzz_check_status(st, &err);
        if (st == EG_OK) {
            const uint8_t *b = p;
            unsigned sum = 0;
            for (uint64_t i = 0; i < info.num_nodes * info.dim * info.elem_size; i += 64) {
                sum += b[i];
            }
            (void)sum;
            eg_cache_unmap(base, len);
        }
        if (info.rows_done < info.num_nodes) {
            /* a row not done is refused */
            int64_t nd_row = -1;
            for (uint64_t r = 0; r < info.num_nodes && nd_row < 0; r++) {
                if (!((bm[r / 64] >> (r % 64)) & 1u)) {
                    nd_row = (int64_t)r;
                }
            }
            eg_err_clear(&err);
            FUZZ_CHECK(eg_cache_gather(c, k, &nd_row, 1, out, &err) == EG_EINVAL, "row not done accepted");
        }
        int64_t bad = (int64_t)info.num_nodes;
        eg_err_clear(&err);
        FUZZ_CHECK(eg_cache_gather(c, k, &bad, 1, out, &err) == EG_EINVAL, "row >= N accepted");
    }
    eg_err_clear(&err);
    FUZZ_CHECK(eg_cache_gather(c, info.num_layers, done, nd, out, &err) == EG_EINVAL, "layer >= K accepted");
    free(out);
    eg_cache_close(c);
    free(f);
    return 0;
}
