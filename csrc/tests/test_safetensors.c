/*
 * test_safetensors.c — the safetensors reader and writer.
 *
 * Every validation rule gets a hand-made malformed buffer; buffers are heap
 * blocks of the exact file size so ASan reports any read outside the file.
 * A valid file is also cut at every length (each cut must be rejected), and
 * the writer is checked for byte layout, atomic replacement and round trips
 * through eg_st_open (mmap).
 */
#include "eg.h"
#include "eg_safetensors.h"
#include "eg_test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* 8-byte length (hlen_override if != -1) + header + `data_len` bytes 0..255. */
static unsigned char *make_file(const char *header, size_t data_len, long long hlen_override, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    unsigned char *b = malloc(*size);
    uint64_t n = hlen_override >= 0 ? (uint64_t)hlen_override : (uint64_t)h;
    if (hlen_override == -2) {
        n = UINT64_MAX;
    }
    for (int k = 0; k < 8; k++) {
        b[k] = (unsigned char)(n >> (8 * k));
    }
    memcpy(b + 8, header, h);
    for (size_t k = 0; k < data_len; k++) {
        b[8 + h + k] = (unsigned char)k;
    }
    return b;
}

/* Parse a hand-made file; return the status and leave the message in err. */
static eg_status try_file(const char *header, size_t data_len, long long hlen, eg_err *err)
{
    size_t size;
    unsigned char *b = make_file(header, data_len, hlen, &size);
    eg_st_file f;
    eg_err_clear(err);
    eg_status st = eg_st_parse(b, size, "t.safetensors", &f, err);
    eg_st_close(&f);
    free(b);
    return st;
}

#define REJECT(header, data_len, hlen, needle)                                                  \
    do {                                                                                        \
        eg_err e_;                                                                              \
        eg_status st_ = try_file(header, data_len, hlen, &e_);                                  \
        CHECK(st_ != EG_OK && strstr(e_.msg, "t.safetensors") != NULL &&                        \
                  strstr(e_.msg, needle) != NULL,                                               \
              "expected rejection with \"%s\": st=%d msg=%s", needle, (int)st_, e_.msg);       \
    } while (0)

#define ACCEPT(header, data_len)                                                                \
    do {                                                                                        \
        eg_err e_;                                                                              \
        eg_status st_ = try_file(header, data_len, -1, &e_);                                    \
        CHECK(st_ == EG_OK, "expected acceptance: %s", e_.msg);                                 \
    } while (0)

static void test_valid(void)
{
    const char *hdr = "{\"__metadata__\":{\"format\":\"np\",\"k\":\"v\"},"
                      "\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[24,26]},"
                      "\"z\":{\"dtype\":\"I64\",\"shape\":[0,5],\"data_offsets\":[26,26]}}  ";
    size_t size;
    unsigned char *buf = make_file(hdr, 26, -1, &size);
    eg_st_file f;
    eg_err err;
    eg_err_clear(&err);
    CHECK(eg_st_parse(buf, size, NULL, &f, &err) == EG_OK, "valid: %s", err.msg);
    CHECK(f.n_tensors == 3, "3 tensors");
    CHECK(f.has_metadata && f.n_meta == 2 && strcmp(f.meta[1].key, "k") == 0 && strcmp(f.meta[1].value, "v") == 0,
          "metadata");
    CHECK(strcmp(f.tensors[0].name, "w") == 0 && f.tensors[0].dtype == EG_ST_F32 && f.tensors[0].ndim == 2 &&
          f.tensors[0].shape[0] == 2 && f.tensors[0].shape[1] == 3 && f.tensors[0].nbytes == 24,
          "tensor w");
    CHECK(f.tensors[0].offset == 8 + strlen(hdr), "absolute offset");
    CHECK(f.tensors[1].ndim == 0 && f.tensors[1].nbytes == 2 && f.tensors[1].offset == 8 + strlen(hdr) + 24,
          "scalar");
    CHECK(f.tensors[2].nbytes == 0, "zero-size");
    eg_st_close(&f);
    eg_st_close(&f); /* idempotent */
    free(buf);

    ACCEPT("{}", 0);
    ACCEPT("{}      ", 0);
    ACCEPT("{\"__metadata__\":{}}", 0);
    ACCEPT("{\"__metadata__\":null}", 0); /* the reference reads null as no metadata */
    ACCEPT("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"extra\":[1]}}", 1);
    /* offsets need not be in header order */
    ACCEPT("{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
           "\"a\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[2,4]},"
           "\"c\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]}}", 4);
    for (int d = 0; d < EG_ST_NUM_DTYPES; d++) {
        char h[160];
        size_t isz = eg_st_dtype_size((eg_st_dtype)d);
        snprintf(h, sizeof h, "{\"x\":{\"dtype\":\"%s\",\"shape\":[3],\"data_offsets\":[0,%zu]}}",
                 eg_st_dtype_name((eg_st_dtype)d), 3 * isz);
        ACCEPT(h, 3 * isz);
        eg_st_dtype back;
        CHECK(eg_st_dtype_from_name(eg_st_dtype_name((eg_st_dtype)d), strlen(eg_st_dtype_name((eg_st_dtype)d)),
                                    &back) == 0 && (int)back == d, "dtype name round trip %d", d);
    }
}

static void test_rules(void)
{
    const char *one = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    /* size < 8 */
    for (size_t n = 0; n < 8; n++) {
        unsigned char *b = malloc(n > 0 ? n : 1);
        memset(b, 0, n);
        eg_st_file f;
        eg_err err;
        eg_status st = eg_st_parse(b, n, "t.safetensors", &f, &err);
        CHECK(st == EG_ECORRUPT && strstr(err.msg, "too small") != NULL, "size %zu: %s", n, err.msg);
        eg_st_close(&f);
        free(b);
    }
    /* header length */
    REJECT(one, 8, 100000001, "exceeds the limit");
    REJECT(one, 8, -2, "exceeds the limit");
    REJECT(one, 8, 100000000, "beyond the end");
    REJECT(one, 8, 1000, "beyond the end");
    REJECT("{}", 0, 3, "beyond the end");
    REJECT("", 0, -1, "invalid JSON");                  /* empty header */
    /* UTF-8 and JSON */
    REJECT("{\"\xc3\x28\":{}}", 0, -1, "not valid UTF-8");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, -1, "invalid JSON");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],}}", 8, -1, "invalid JSON");
    REJECT("[]", 0, -1, "must be a JSON object");
    REJECT("\"x\"", 0, -1, "must be a JSON object");
    REJECT("{}\x01", 0, -1, "invalid JSON");
    /* entries */
    REJECT("{\"a\":5}", 0, -1, "must be an object");
    REJECT("{\"a\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "lacks \"dtype\"");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,8]}}", 8, -1, "lacks \"shape\"");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 8, -1, "lacks \"data_offsets\"");
    REJECT("{\"a\":{\"dtype\":3,\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "dtype must be a string");
    REJECT("{\"a\":{\"dtype\":\"X99\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "unknown");
    REJECT("{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "unknown");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, -1, "shape must be an array");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, -1, "negative");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2.0],\"data_offsets\":[0,8]}}", 8, -1, "integers in range");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[\"2\"],\"data_offsets\":[0,8]}}", 8, -1, "must hold integers");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,8]}}", 8, -1,
           "integers in range");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, -1, "array of two");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8,8]}}", 8, -1, "array of two");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":{}}}", 8, -1, "array of two");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[-8,0]}}", 8, -1, "negative");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8.0]}}", 8, -1, "integers in range");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8e0]}}", 8, -1, "integers in range");
    /* size = numel x dtype size */
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1, "needs 12");
    REJECT("{\"a\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[0,4]}}", 4, -1, "needs 8");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4, -1, "needs 0");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8, -1,
           "overflows");
    REJECT("{\"a\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8, -1,
           "overflows");
    REJECT("{\"a\":{\"dtype\":\"U8\",\"shape\":[9223372036854775807,9223372036854775807,0],"
           "\"data_offsets\":[0,0]}}", 0, -1, "overflows");
    /* ordering: start at 0, no holes, no overlaps, end >= begin */
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "hole");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[12,16]}}", 16, -1, "hole");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1, "overlaps");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, -1, "overlaps");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, -1, "end before begin");
    /* end of data == end of file */
    REJECT(one, 9, -1, "trailing bytes");
    REJECT(one, 7, -1, "truncated");
    REJECT("{}", 1, -1, "trailing bytes");
    /* metadata */
    REJECT("{\"__metadata__\":\"x\"}", 0, -1, "__metadata__ must be an object");
    REJECT("{\"__metadata__\":[]}", 0, -1, "__metadata__ must be an object");
    REJECT("{\"__metadata__\":{\"k\":1}}", 0, -1, "values must be strings");
    REJECT("{\"__metadata__\":{\"k\":null}}", 0, -1, "values must be strings");
    REJECT("{\"__metadata__\":{\"k\":{\"a\":\"b\"}}}", 0, -1, "values must be strings");
    /* duplicates */
    REJECT("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1, "duplicate key");
    REJECT("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", 0, -1, "duplicate key");
    REJECT("{\"__metadata__\":{},\"__metadata__\":{}}", 0, -1, "duplicate key");
    REJECT("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1,
           "duplicate key");
}

static void test_truncation(void)
{
    const char *hdr = "{\"__metadata__\":{\"m\":\"x\"},\"a\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]},"
                      "\"b\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[6,22]}}";
    size_t size;
    unsigned char *full = make_file(hdr, 22, -1, &size);
    int all = 1;
    for (size_t cut = 0; cut < size; cut++) {
        unsigned char *b = malloc(cut > 0 ? cut : 1);
        memcpy(b, full, cut);
        eg_st_file f;
        eg_err err;
        eg_err_clear(&err);
        if (eg_st_parse(b, cut, "t", &f, &err) == EG_OK || err.msg[0] == '\0') {
            all = 0;
            fprintf(stderr, "cut at %zu accepted\n", cut);
        }
        eg_st_close(&f);
        free(b);
    }
    CHECK(all, "every truncation rejected with a message");
    eg_st_file f;
    eg_err err;
    CHECK(eg_st_parse(full, size, "t", &f, &err) == EG_OK, "full file accepted: %s", err.msg);
    eg_st_close(&f);
    /* flipping any header byte never crashes (it may or may not stay valid) */
    for (size_t k = 0; k < size; k++) {
        unsigned char *b = malloc(size);
        memcpy(b, full, size);
        b[k] ^= 0x5a;
        eg_st_parse(b, size, "t", &f, &err);
        eg_st_close(&f);
        free(b);
    }
    CHECK(1, "byte flips survived");
    free(full);
}

static char tmpdir[256];

static void test_write_read(void)
{
    float w[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[3] = {0x3c00, 0x4000, 0x4200};
    uint8_t flag = 1;
    int64_t sw[2] = {2, 3}, sh[1] = {3}, sz[2] = {0, 4};
    eg_st_write_entry e[4] = {
        {"weight", 6, EG_ST_F32, 2, sw, w, sizeof w},
        {"half", 4, EG_ST_F16, 1, sh, h, sizeof h},
        {"flag", 4, EG_ST_BOOL, 0, NULL, &flag, 1},
        {"empty", 5, EG_ST_F64, 2, sz, NULL, 0},
    };
    eg_st_meta meta[1] = {{"format", "pt", 6, 2}};
    char *hdr;
    size_t hlen, *order;
    eg_err err;
    eg_err_clear(&err);
    CHECK(eg_st_build_header(e, 4, meta, 1, &hdr, &hlen, &order, &err) == EG_OK, "header: %s", err.msg);
    const char *want = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"empty\":{\"dtype\":\"F64\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
                       "\"weight\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,24]},"
                       "\"half\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[24,30]},"
                       "\"flag\":{\"dtype\":\"BOOL\",\"shape\":[],\"data_offsets\":[30,31]}}";
    CHECK(hlen % 8 == 0 && hlen >= strlen(want) && hlen < strlen(want) + 8 &&
          memcmp(hdr, want, strlen(want)) == 0, "layout like the reference writer: %.*s", (int)hlen, hdr);
    int pad_ok = 1;
    for (size_t k = strlen(want); k < hlen; k++) {
        pad_ok &= hdr[k] == ' ';
    }
    CHECK(pad_ok, "padded with spaces");
    CHECK(order[0] == 3 && order[1] == 0 && order[2] == 1 && order[3] == 2, "write order");
    free(hdr);
    free(order);

    char path[512];
    snprintf(path, sizeof path, "%s/w.safetensors", tmpdir);
    CHECK(eg_st_write(path, e, 4, meta, 1, &err) == EG_OK, "write: %s", err.msg);
    eg_st_file f;
    CHECK(eg_st_open(path, &f, &err) == EG_OK, "open: %s", err.msg);
    CHECK(f.mapped && f.n_tensors == 4 && f.n_meta == 1, "read back");
    for (size_t k = 0; k < f.n_tensors; k++) {
        const eg_st_tensor *t = &f.tensors[k];
        if (strcmp(t->name, "weight") == 0) {
            CHECK(t->dtype == EG_ST_F32 && memcmp(f.base + t->offset, w, sizeof w) == 0, "weight data");
            CHECK(t->offset % 8 == 0, "aligned");
        } else if (strcmp(t->name, "half") == 0) {
            CHECK(memcmp(f.base + t->offset, h, sizeof h) == 0, "half data");
        } else if (strcmp(t->name, "flag") == 0) {
            CHECK(t->ndim == 0 && f.base[t->offset] == 1, "flag data");
        } else {
            CHECK(strcmp(t->name, "empty") == 0 && t->nbytes == 0, "empty");
        }
    }
    eg_st_close(&f);

    /* overwrite atomically with an empty file (no tensors, no metadata) */
    CHECK(eg_st_write(path, NULL, 0, NULL, 0, &err) == EG_OK, "write empty: %s", err.msg);
    CHECK(eg_st_open(path, &f, &err) == EG_OK && f.n_tensors == 0 && !f.has_metadata && f.size == 16,
          "empty file maps (8 + header only): %s", err.msg);
    eg_st_close(&f);
    /* no temporary files left behind */
    char cmd[600];
    snprintf(cmd, sizeof cmd, "test $(ls -a %s | wc -l) -eq 3", tmpdir);
    CHECK(system(cmd) == 0, "only w.safetensors in the folder");

    /* writer rejects */
    eg_st_write_entry dup[2] = {e[0], e[0]};
    CHECK(eg_st_write(path, dup, 2, NULL, 0, &err) == EG_EINVAL && strstr(err.msg, "duplicate") != NULL,
          "duplicate names: %s", err.msg);
    eg_st_write_entry bad = e[0];
    bad.nbytes = 20;
    CHECK(eg_st_write(path, &bad, 1, NULL, 0, &err) == EG_EINVAL, "size mismatch: %s", err.msg);
    bad = e[0];
    bad.name = "__metadata__";
    bad.name_len = 12;
    CHECK(eg_st_write(path, &bad, 1, NULL, 0, &err) == EG_EINVAL, "reserved name: %s", err.msg);
    bad = e[0];
    bad.name = "\xff";
    bad.name_len = 1;
    CHECK(eg_st_write(path, &bad, 1, NULL, 0, &err) == EG_EINVAL, "bad UTF-8 name: %s", err.msg);
    eg_st_meta dm[2] = {meta[0], meta[0]};
    CHECK(eg_st_write(path, e, 1, dm, 2, &err) == EG_EINVAL, "duplicate metadata: %s", err.msg);
    char nodir[600];
    snprintf(nodir, sizeof nodir, "%s/missing/x.safetensors", tmpdir);
    CHECK(eg_st_write(nodir, e, 1, NULL, 0, &err) == EG_EIO, "missing folder: %s", err.msg);
    /* a failed write leaves the previous file intact */
    CHECK(eg_st_open(path, &f, &err) == EG_OK && f.size == 16, "previous file intact");
    eg_st_close(&f);
    /* names needing JSON escapes round-trip */
    eg_st_write_entry q = e[2];
    q.name = "a\"b\\c\n\x01\xc3\xa9";
    q.name_len = strlen(q.name);
    CHECK(eg_st_write(path, &q, 1, NULL, 0, &err) == EG_OK, "escaped name: %s", err.msg);
    CHECK(eg_st_open(path, &f, &err) == EG_OK && f.n_tensors == 1 && f.tensors[0].name_len == q.name_len &&
          memcmp(f.tensors[0].name, q.name, q.name_len) == 0, "escaped name read back: %s", err.msg);
    eg_st_close(&f);
}

static void test_open_errors(void)
{
    eg_st_file f;
    eg_err err;
    char path[512];
    snprintf(path, sizeof path, "%s/nope.safetensors", tmpdir);
    CHECK(eg_st_open(path, &f, &err) == EG_EIO && f.sys_errno == ENOENT, "missing file: %s", err.msg);
    eg_st_close(&f);
    CHECK(eg_st_open(tmpdir, &f, &err) == EG_EIO, "folder: %s", err.msg);
    eg_st_close(&f);
    for (int n = 0; n < 8; n += 3) {
        snprintf(path, sizeof path, "%s/small%d", tmpdir, n);
        FILE *fp = fopen(path, "wb");
        fwrite("\x08\0\0\0\0\0\0\0", 1, (size_t)n, fp);
        fclose(fp);
        CHECK(eg_st_open(path, &f, &err) == EG_ECORRUPT && strstr(err.msg, "too small") != NULL,
              "%d-byte file: %s", n, err.msg);
        eg_st_close(&f);
        unlink(path);
    }
    /* the mmap path applies the same rules */
    snprintf(path, sizeof path, "%s/bad.safetensors", tmpdir);
    size_t size;
    unsigned char *b = make_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, -1, &size);
    FILE *fp = fopen(path, "wb");
    fwrite(b, 1, size, fp);
    fclose(fp);
    free(b);
    CHECK(eg_st_open(path, &f, &err) == EG_ECORRUPT && strstr(err.msg, path) != NULL &&
          strstr(err.msg, "truncated") != NULL, "truncated file via mmap: %s", err.msg);
    eg_st_close(&f);
    unlink(path);
}

int main(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/eg_st_test_XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    test_valid();
    test_rules();
    test_truncation();
    test_write_read();
    test_open_errors();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not remove %s\n", tmpdir);
    }
    return eg_test_report("test_safetensors");
}
