/*
 * test_cache.c — CRC32C against known vectors (hardware and table paths),
 * and the layer cache file: create, write in pieces, reopen, gather in each
 * dtype, verify, and detection of flipped bytes in every region, truncation
 * and garbage.
 */
#include "eg_cache.h"
#include "eg_test.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_crc32c(void)
{
    const char *v = "123456789";
    CHECK(eg_crc32c(0, v, 9) == 0xE3069283u, "crc32c(123456789) = %08x", eg_crc32c(0, v, 9));
    CHECK(eg_crc32c_sw(0, v, 9) == 0xE3069283u, "table crc32c(123456789)");
    CHECK(eg_crc32c(0, "", 0) == 0, "empty");
    uint8_t zeros[32] = {0}, ones[32], inc[32];
    memset(ones, 0xff, sizeof ones);
    for (int i = 0; i < 32; i++) {
        inc[i] = (uint8_t)i;
    }
    /* RFC 3720 B.4 test vectors */
    CHECK(eg_crc32c(0, zeros, 32) == 0x8A9136AAu, "32 zeros: %08x", eg_crc32c(0, zeros, 32));
    CHECK(eg_crc32c(0, ones, 32) == 0x62A8AB43u, "32 0xff: %08x", eg_crc32c(0, ones, 32));
    CHECK(eg_crc32c(0, inc, 32) == 0x46DD794Eu, "0..31: %08x", eg_crc32c(0, inc, 32));
    /* both implementations agree on every length and alignment, and chain */
    uint8_t buf[1000];
    uint64_t st = 42;
    for (int i = 0; i < 1000; i++) {
        buf[i] = (uint8_t)eg_rng_next(&st);
    }
    int agree = 1, chains = 1;
    for (int off = 0; off < 9; off++) {
        for (int len = 0; len < 300; len += 7) {
            uint32_t a = eg_crc32c(0, buf + off, (size_t)len), b = eg_crc32c_sw(0, buf + off, (size_t)len);
            agree &= a == b;
            uint32_t c = eg_crc32c(eg_crc32c(0, buf + off, (size_t)len / 3), buf + off + len / 3, (size_t)(len - len / 3));
            chains &= c == a;
        }
    }
    CHECK(agree, "hardware and table CRC agree (%s)", eg_crc32c_impl());
    CHECK(chains, "CRC chains over splits");
}

#define K 3
#define D 20
#define N 100

static const char *PATH = "build/test_cache.egc";

static float value(int k, int r, int d) { return (float)(k * 1000 + r) + (float)d / 64.0f; }

static void fill(float *src, const int64_t *rows, size_t n)
{
    for (int k = 0; k < K; k++) {
        for (size_t i = 0; i < n; i++) {
            for (int d = 0; d < D; d++) {
                src[((size_t)k * n + i) * D + (size_t)d] = value(k, (int)rows[i], d);
            }
        }
    }
}

static eg_cache *make(eg_cache_dtype dt, int write_all)
{
    int32_t layers[K] = {0, 2, 6};
    eg_cache_params p;
    memset(&p, 0, sizeof p);
    p.dtype = dt;
    p.num_nodes = N;
    p.dim = D;
    p.num_layers = K;
    p.layers = layers;
    p.chunk_rows = 16;
    p.fp_str = "fake-encoder";
    memset(p.fp_sha256, 7, 32);
    eg_cache *c = NULL;
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_cache_create(&c, PATH, &p, &err);
    CHECK(st == EG_OK, "create: %s", err.msg);
    if (st != EG_OK || !write_all) {
        return c;
    }
    /* write in uneven batches, out of order */
    static float src[K * N * D];
    int64_t rows[N];
    int starts[] = {50, 0, 37, 81};
    int ends[] = {81, 37, 50, 100};
    for (int b = 0; b < 4; b++) {
        size_t n = 0;
        for (int r = starts[b]; r < ends[b]; r++) {
            rows[n++] = r;
        }
        fill(src, rows, n);
        st = eg_cache_write_rows(c, rows, n, src, &err);
        CHECK(st == EG_OK, "write batch %d: %s", b, err.msg);
    }
    return c;
}

static void test_roundtrip(eg_cache_dtype dt, float tol)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(dt, 1);
    if (c == NULL) {
        return;
    }
    CHECK(eg_cache_sync(c, &err) == EG_OK, "sync: %s", err.msg);
    eg_cache_close(c);
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_OK, "open: %s", err.msg);
    if (c == NULL) {
        return;
    }
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    CHECK(info.num_nodes == N && info.rows_done == N && info.dim == D && info.num_layers == K, "info");
    CHECK(info.layers[2] == 6 && strcmp(info.fp_str, "fake-encoder") == 0, "layers and fingerprint");
    CHECK(info.data_offset % EG_CACHE_PAGE == 0 && info.layer_stride % EG_CACHE_PAGE == 0, "aligned layers");
    int64_t ids[5] = {99, 0, 15, 16, 50};
    float out[5 * D];
    for (uint32_t k = 0; k < K; k++) {
        CHECK(eg_cache_gather(c, k, ids, 5, out, &err) == EG_OK, "gather: %s", err.msg);
        float maxerr = 0;
        for (int i = 0; i < 5; i++) {
            for (int d = 0; d < D; d++) {
                float e = fabsf(out[i * D + d] - value((int)k, (int)ids[i], d));
                float rel = e / fabsf(value((int)k, (int)ids[i], d) + 1e-3f);
                maxerr = rel > maxerr ? rel : maxerr;
            }
        }
        CHECK(maxerr <= tol, "dtype %d layer %u relative error %g", dt, k, maxerr);
    }
    CHECK(eg_cache_verify(c, &err) == EG_OK, "verify: %s", err.msg);
    int64_t bad = N;
    CHECK(eg_cache_gather(c, 0, &bad, 1, out, &err) == EG_EINVAL, "out-of-range id refused");
    CHECK(eg_cache_write_rows(c, ids, 1, out, &err) == EG_ESTATE, "read-only handle refuses writes");
    eg_cache_close(c);
}

static void test_partial_and_resume(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(EG_CACHE_F16, 0);
    if (c == NULL) {
        return;
    }
    int64_t rows[10];
    float src[K * 10 * D];
    for (int i = 0; i < 10; i++) {
        rows[i] = 20 + i;
    }
    fill(src, rows, 10);
    CHECK(eg_cache_write_rows(c, rows, 10, src, &err) == EG_OK, "write: %s", err.msg);
    eg_cache_close(c);
    CHECK(eg_cache_open(&c, PATH, 1, &err) == EG_OK, "reopen: %s", err.msg);
    if (c == NULL) {
        return;
    }
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    CHECK(info.rows_done == 10, "10 rows done, got %llu", (unsigned long long)info.rows_done);
    const uint64_t *bm = eg_cache_bitmap(c);
    CHECK(((bm[0] >> 20) & 0x3ff) == 0x3ff && (bm[0] & 0xfffff) == 0, "bitmap bits");
    float out[D];
    int64_t id = 5;
    CHECK(eg_cache_gather(c, 0, &id, 1, out, &err) == EG_EINVAL && strstr(err.msg, "not computed") != NULL,
          "row not done refused: %s", err.msg);
    id = 21;
    CHECK(eg_cache_gather(c, 1, &id, 1, out, &err) == EG_OK, "done row of an incomplete chunk: %s", err.msg);
    eg_cache *c2 = NULL;
    CHECK(eg_cache_open(&c2, PATH, 1, &err) == EG_ESTATE, "second writer refused: %s", err.msg);
    /* grow, then the old rows survive */
    uint8_t dig[32] = {1};
    CHECK(eg_cache_grow(c, 300, &err) == EG_OK, "grow: %s", err.msg);
    CHECK(eg_cache_set_num_nodes(c, 250, dig, &err) == EG_OK, "set_num_nodes: %s", err.msg);
    CHECK(eg_cache_gather(c, 1, &id, 1, out, &err) == EG_OK && fabsf(out[3] - value(1, 21, 3)) < 0.5f, "row kept by grow");
    eg_cache_close(c);
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_OK, "reopen grown: %s", err.msg);
    if (c != NULL) {
        eg_cache_get_info(c, &info);
        CHECK(info.capacity == 300 && info.num_nodes == 250 && info.rows_done == 10 && info.texts_digest[0] == 1,
              "grown info");
        eg_cache_close(c);
    }
}

static long file_size(void)
{
    FILE *f = fopen(PATH, "rb");
    if (f == NULL) {
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fclose(f);
    return n;
}

static void flip(long off)
{
    int fd = open(PATH, O_RDWR);
    uint8_t b = 0;
    if (pread(fd, &b, 1, off) != 1) {
        CHECK(0, "pread");
    }
    b ^= 0x10;
    if (pwrite(fd, &b, 1, off) != 1) {
        CHECK(0, "pwrite");
    }
    close(fd);
}

static void test_corruption(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(EG_CACHE_F32, 1);
    if (c == NULL) {
        return;
    }
    eg_cache_sync(c, &err);
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    eg_cache_close(c);
    long slot = (long)(info.data_offset - EG_CACHE_PAGE) / 2;
    /* offsets: header field, layer table, fingerprint, slot A bitmap, slot B
     * checksum table, data (layer 1 row 40) */
    long offs[] = {33, 512 + 4, 1536 + 2, 4096 + 128 + 1, 4096 + slot + 128 + 16 + 3,
                   (long)info.data_offset + (long)info.layer_stride + 40 * D * 4 + 5};
    const char *names[] = {"header", "layer table", "fingerprint", "bitmap", "checksums", "data"};
    for (int i = 0; i < 6; i++) {
        flip(offs[i]);
        eg_status st = eg_cache_open(&c, PATH, 0, &err);
        if (i < 3) {
            CHECK(st == EG_ECORRUPT, "open detects %s damage: %s", names[i], err.msg);
        } else {
            CHECK(st == EG_OK, "open survives one damaged slot or data (%s): %s", names[i], err.msg);
            if (c != NULL) {
                CHECK(eg_cache_verify(c, &err) == EG_ECORRUPT, "verify detects %s damage", names[i]);
                if (i == 5) {
                    CHECK(strstr(err.msg, "layer 2 (index 1), rows 32-47") != NULL, "names layer and rows: %s", err.msg);
                    float out[D];
                    int64_t id = 33;
                    CHECK(eg_cache_gather(c, 1, &id, 1, out, &err) == EG_ECORRUPT, "gather refuses a bad chunk");
                    id = 60;
                    CHECK(eg_cache_gather(c, 1, &id, 1, out, &err) == EG_OK, "other chunks still readable");
                }
                eg_cache_close(c);
                c = NULL;
            }
        }
        flip(offs[i]); /* undo */
    }
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_OK, "restored file opens");
    if (c != NULL) {
        CHECK(eg_cache_verify(c, &err) == EG_OK, "restored file verifies: %s", err.msg);
        eg_cache_close(c);
    }
    /* lazy check in gather without verify() */
    long doff = (long)info.data_offset + 70 * D * 4;
    flip(doff);
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_OK, "open");
    if (c != NULL) {
        float out[D];
        int64_t id = 64;
        CHECK(eg_cache_gather(c, 0, &id, 1, out, &err) == EG_ECORRUPT, "first read of a bad chunk refused: %s", err.msg);
        eg_cache_close(c);
    }
    /* truncation and garbage */
    long size = file_size();
    CHECK(truncate(PATH, size - 1) == 0, "truncate");
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_ECORRUPT, "truncated file: %s", err.msg);
    CHECK(truncate(PATH, 100) == 0, "truncate");
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_ECORRUPT, "tiny file: %s", err.msg);
    FILE *f = fopen(PATH, "wb");
    for (int i = 0; i < 10000; i++) {
        fputc(i * 7 & 0xff, f);
    }
    fclose(f);
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_ECORRUPT, "garbage: %s", err.msg);
    CHECK(eg_cache_open(&c, "build/does-not-exist.egc", 0, &err) == EG_EIO, "missing file");
    unlink(PATH);
}

static void test_rewrite_rows(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(EG_CACHE_F32, 1);
    if (c == NULL) {
        return;
    }
    /* rewriting a done row of a complete chunk updates its checksum */
    int64_t row = 40;
    float src[K * D];
    for (int k = 0; k < K; k++) {
        for (int d = 0; d < D; d++) {
            src[k * D + d] = -1.0f - (float)d;
        }
    }
    CHECK(eg_cache_write_rows(c, &row, 1, src, &err) == EG_OK, "rewrite: %s", err.msg);
    float out[D];
    CHECK(eg_cache_gather(c, 2, &row, 1, out, &err) == EG_OK && out[3] == -4.0f, "rewritten value read back");
    CHECK(eg_cache_sync(c, &err) == EG_OK && eg_cache_verify(c, &err) == EG_OK, "verifies after rewrite: %s", err.msg);
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    eg_cache_close(c);
    /* damage row 45 (same chunk 32-47), then a rewrite of row 40 is refused
     * rather than blessing the damage with a new checksum */
    flip((long)info.data_offset + 45 * D * 4 + 2);
    CHECK(eg_cache_open(&c, PATH, 1, &err) == EG_OK, "open: %s", err.msg);
    if (c != NULL) {
        CHECK(eg_cache_write_rows(c, &row, 1, src, &err) == EG_ECORRUPT && strstr(err.msg, "rows 32-47") != NULL,
              "rewrite into a damaged chunk refused: %s", err.msg);
        eg_cache_close(c);
    }
    unlink(PATH);
}

static void test_worker_split(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(EG_CACHE_BF16, 0), *w = NULL;
    if (c == NULL) {
        return;
    }
    CHECK(eg_cache_open(&w, PATH, 2, &err) == EG_OK, "data worker opens while the writer holds the lock: %s", err.msg);
    if (w == NULL) {
        eg_cache_close(c);
        return;
    }
    int64_t rows[16];
    float src[K * 16 * D];
    for (int i = 0; i < 16; i++) {
        rows[i] = 16 + i; /* exactly chunk 1 */
    }
    fill(src, rows, 16);
    CHECK(eg_cache_write_data(w, rows, 16, src, &err) == EG_OK, "worker writes: %s", err.msg);
    CHECK(eg_cache_mark_rows(w, rows, 16, &err) == EG_ESTATE, "worker may not claim rows");
    eg_cache_close(w);
    float out[D];
    CHECK(eg_cache_gather(c, 0, &rows[3], 1, out, &err) == EG_EINVAL, "unclaimed rows are not readable");
    CHECK(eg_cache_mark_rows(c, rows, 16, &err) == EG_OK, "writer claims: %s", err.msg);
    CHECK(eg_cache_gather(c, 2, &rows[3], 1, out, &err) == EG_OK && fabsf(out[1] - value(2, 19, 1)) < 8.0f,
          "claimed row read back: %s", err.msg);
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    CHECK(info.rows_done == 16, "16 rows done");
    eg_cache_close(c);
    CHECK(eg_cache_open(&c, PATH, 0, &err) == EG_OK, "reopen");
    if (c != NULL) {
        CHECK(eg_cache_sync(c, &err) == EG_ESTATE, "read-only handle refuses commits");
        CHECK(eg_cache_verify(c, &err) == EG_OK, "chunk checksum written by the claim verifies: %s", err.msg);
        eg_cache_close(c);
    }
    unlink(PATH);
}

/* Random mutations of the header page and of both state slots, with their
 * CRCs recomputed so the parser's own checks are what stands between the
 * bytes and memory: open must fail cleanly or give a handle that reads,
 * gathers and verifies without touching memory it should not (ASan run). */
static void test_mutation_fuzz(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_cache *c = make(EG_CACHE_F16, 1);
    if (c == NULL) {
        return;
    }
    eg_cache_sync(c, &err);
    eg_cache_info info;
    eg_cache_get_info(c, &info);
    eg_cache_close(c);
    FILE *f = fopen(PATH, "rb");
    size_t size = (size_t)file_size();
    uint8_t *orig = malloc(size), *buf = malloc(size);
    CHECK(f != NULL && orig != NULL && buf != NULL && fread(orig, 1, size, f) == size, "read file");
    if (f != NULL) {
        fclose(f);
    }
    uint64_t slot = (info.data_offset - EG_CACHE_PAGE) / 2;
    uint64_t rng = 99;
    int opened = 0, refused = 0, bad_status = 0;
    for (int it = 0; it < 1000; it++) {
        memcpy(buf, orig, size);
        int region = (int)eg_rng_below(&rng, 3); /* header, slot A, slot B (both slots for B) */
        int nmut = 1 + (int)eg_rng_below(&rng, 4);
        for (int m = 0; m < nmut; m++) {
            uint64_t off;
            if (region == 0) {
                off = eg_rng_below(&rng, EG_CACHE_PAGE - 4);
            } else {
                off = EG_CACHE_PAGE + 8 + eg_rng_below(&rng, slot - 8);
            }
            uint8_t v = (uint8_t)eg_rng_next(&rng);
            buf[off] = eg_rng_below(&rng, 2) ? v : (uint8_t)(buf[off] ^ (1u << (v & 7)));
            if (region == 2) {
                buf[off + slot] = buf[off];
            }
        }
        uint32_t crc = eg_crc32c(0, buf, EG_CACHE_PAGE - 4);
        memcpy(buf + EG_CACHE_PAGE - 4, &crc, 4);
        for (uint64_t s = 0; s < 2; s++) {
            uint8_t *sp = buf + EG_CACHE_PAGE + s * slot;
            crc = eg_crc32c(0, sp + 8, (size_t)slot - 8);
            memcpy(sp + 4, &crc, 4);
        }
        f = fopen(PATH, "wb");
        if (f == NULL || fwrite(buf, 1, size, f) != size) {
            CHECK(0, "write file");
        }
        if (f != NULL) {
            fclose(f);
        }
        eg_status st = eg_cache_open(&c, PATH, 0, &err);
        if (st != EG_OK) {
            refused++;
            bad_status += st != EG_ECORRUPT;
            continue;
        }
        opened++;
        eg_cache_get_info(c, &info);
        float out[D];
        for (uint32_t k = 0; k < info.num_layers && info.dim == D; k++) {
            int64_t id = (int64_t)eg_rng_below(&rng, info.num_nodes);
            (void)eg_cache_gather(c, k, &id, 1, out, &err);
            (void)eg_cache_check_layer(c, k, &err);
        }
        (void)eg_cache_verify(c, &err);
        eg_cache_close(c);
    }
    CHECK(bad_status == 0, "every refusal is EG_ECORRUPT (%d were not)", bad_status);
    CHECK(refused > 150 && opened > 150, "mutations both refused (%d) and harmless (%d)", refused, opened);
    free(orig);
    free(buf);
    unlink(PATH);
}

static void test_bad_params(void)
{
    eg_err err;
    eg_err_clear(&err);
    int32_t layers[2] = {1, 1};
    eg_cache_params p;
    memset(&p, 0, sizeof p);
    p.dtype = EG_CACHE_F16;
    p.num_nodes = 10;
    p.dim = 8;
    p.num_layers = 2;
    p.layers = layers;
    eg_cache *c = NULL;
    CHECK(eg_cache_create(&c, PATH, &p, &err) == EG_EINVAL, "duplicate layers refused");
    layers[1] = 2;
    p.dim = 0;
    CHECK(eg_cache_create(&c, PATH, &p, &err) == EG_EINVAL, "dim 0 refused");
    p.dim = 8;
    p.capacity = 5;
    CHECK(eg_cache_create(&c, PATH, &p, &err) == EG_EINVAL, "capacity < N refused");
    p.capacity = EG_CACHE_MAX_ROWS + 1;
    CHECK(eg_cache_create(&c, PATH, &p, &err) == EG_EINVAL, "huge capacity refused");
    CHECK(c == NULL, "no handle on failure");
}

int main(void)
{
    test_crc32c();
    test_roundtrip(EG_CACHE_F32, 0.0f);
    test_roundtrip(EG_CACHE_F16, 1.0f / 1024);
    test_roundtrip(EG_CACHE_BF16, 1.0f / 128);
    test_partial_and_resume();
    test_corruption();
    test_rewrite_rows();
    test_worker_split();
    test_mutation_fuzz();
    test_bad_params();
    return eg_test_report("test_cache");
}
