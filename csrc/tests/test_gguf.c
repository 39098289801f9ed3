/*
 * test_gguf.c — the GGUF reader (csrc/io/gguf.c) and the dequantization
 * kernels (csrc/ops/quant.c) on files built byte by byte in memory: a valid
 * file with every kind of metadata and typed access to it, eg_gguf_open on a
 * temporary file, refusals with the field named, and a few blocks with
 * hand-computed values. Bit parity with the gguf package is in
 * tests/test_gguf.py.
 */
#include "eg.h"
#include "eg_gguf.h"
#include "eg_quant.h"
#include "eg_test.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    unsigned char b[4096];
    size_t n;
} buf;

static void put(buf *o, const void *p, size_t n)
{
    memcpy(o->b + o->n, p, n);
    o->n += n;
}
static void u32(buf *o, uint32_t v) { unsigned char t[4]; for (int k = 0; k < 4; k++) t[k] = (unsigned char)(v >> 8 * k); put(o, t, 4); }
static void u64(buf *o, uint64_t v) { u32(o, (uint32_t)v); u32(o, (uint32_t)(v >> 32)); }
static void str(buf *o, const char *s) { u64(o, strlen(s)); put(o, s, strlen(s)); }
static void pad(buf *o, size_t a) { while (o->n % a) o->b[o->n++] = 0; }

static void header(buf *o, uint32_t version, uint64_t nt, uint64_t nkv)
{
    o->n = 0;
    put(o, "GGUF", 4);
    u32(o, version);
    u64(o, nt);
    u64(o, nkv);
}

/* A valid file: 5 metadata entries, an F32 tensor (2 x 3) and a Q8_0 one. */
static void good(buf *o)
{
    header(o, 3, 2, 5);
    str(o, "general.architecture"); u32(o, EG_GGUF_STRING); str(o, "llama");
    str(o, "n"); u32(o, EG_GGUF_INT32); u32(o, (uint32_t)-7);
    str(o, "eps"); u32(o, EG_GGUF_FLOAT32); { float e = 0.5f; put(o, &e, 4); }
    str(o, "flag"); u32(o, EG_GGUF_BOOL); o->b[o->n++] = 1;
    str(o, "toks"); u32(o, EG_GGUF_ARRAY); u32(o, EG_GGUF_STRING); u64(o, 2); str(o, "ab"); str(o, "c");
    str(o, "w"); u32(o, 2); u64(o, 3); u64(o, 2); u32(o, EG_GGML_F32); u64(o, 0);
    str(o, "q"); u32(o, 1); u64(o, 32); u32(o, EG_GGML_Q8_0); u64(o, 32);
    pad(o, 32);
    for (int k = 0; k < 6; k++) { float x = (float)k; put(o, &x, 4); }
    pad(o, 32);
    /* Q8_0 block: d = 0.5 (fp16 0x3800), qs = -16..15 */
    o->b[o->n++] = 0x00; o->b[o->n++] = 0x38;
    for (int k = 0; k < 32; k++) o->b[o->n++] = (unsigned char)(int8_t)(k - 16);
}

static eg_status parse(const buf *o, eg_gguf_file *f, eg_err *err)
{
    eg_err_clear(err);
    return eg_gguf_parse(o->b, o->n, "mem.gguf", f, err);
}

static void test_valid(void)
{
    buf o;
    good(&o);
    eg_gguf_file f;
    eg_err err;
    eg_status st = parse(&o, &f, &err);
    CHECK(st == EG_OK, "%s", err.msg);
    CHECK(f.version == 3 && f.alignment == 32 && f.n_kv == 5 && f.n_tensors == 2, "counts");
    eg_gguf_str s;
    CHECK(eg_gguf_get_str(&f, "general.architecture", &s, &err) == EG_OK && s.len == 5 &&
          memcmp(s.s, "llama", 5) == 0, "arch");
    int64_t i;
    CHECK(eg_gguf_get_int(&f, "n", &i, &err) == EG_OK && i == -7, "int");
    uint64_t u;
    CHECK(eg_gguf_get_uint(&f, "n", &u, &err) == EG_ECORRUPT && strstr(err.msg, "non-negative"), "%s", err.msg);
    double d;
    CHECK(eg_gguf_get_float(&f, "eps", &d, &err) == EG_OK && d == 0.5, "float");
    int b;
    CHECK(eg_gguf_get_bool(&f, "flag", &b, &err) == EG_OK && b == 1, "bool");
    eg_gguf_vtype et;
    size_t n;
    CHECK(eg_gguf_get_array(&f, "toks", &et, &n, &err) == EG_OK && et == EG_GGUF_STRING && n == 2, "array");
    const eg_gguf_kv *kv = eg_gguf_find_kv(&f, "toks");
    CHECK(kv != NULL && eg_gguf_kv_str(&f, kv, 1, &s, &err) == EG_OK && s.len == 1 && s.s[0] == 'c', "elem");
    CHECK(eg_gguf_kv_str(&f, kv, 2, &s, &err) == EG_EINVAL && strstr(err.msg, "index 2 out of range"), "%s", err.msg);
    CHECK(eg_gguf_get_int(&f, "eps", &i, &err) == EG_ECORRUPT && strstr(err.msg, "\"eps\"") &&
          strstr(err.msg, "float32"), "%s", err.msg);
    CHECK(eg_gguf_get_str(&f, "toks", &s, &err) == EG_ECORRUPT && strstr(err.msg, "array of string"), "%s", err.msg);
    CHECK(eg_gguf_get_int(&f, "missing", &i, &err) == EG_EINVAL && strstr(err.msg, "\"missing\" is missing"),
          "%s", err.msg);

    const eg_gguf_tensor *w = eg_gguf_find_tensor(&f, "w"), *q = eg_gguf_find_tensor(&f, "q");
    CHECK(w != NULL && w->n_dims == 2 && w->ne[0] == 3 && w->ne[1] == 2 && w->nbytes == 24, "w info");
    CHECK(q != NULL && q->nbytes == 34 && q->offset == f.data_start + 32, "q info");
    float out[32];
    CHECK(eg_gguf_dequantize(&f, w, out, &err) == EG_OK && out[0] == 0.0f && out[5] == 5.0f, "w data");
    CHECK(eg_gguf_dequantize(&f, q, out, &err) == EG_OK, "%s", err.msg);
    for (int k = 0; k < 32; k++) {
        CHECK(out[k] == 0.5f * (float)(k - 16), "q8_0 %d: %g", k, out[k]);
    }
    eg_gguf_close(&f);
    eg_gguf_close(&f);

    /* the same bytes through a file */
    char path[] = "/tmp/eg_test_gguf_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, o.b, o.n) == (ssize_t)o.n, "tmp file");
    close(fd);
    eg_err_clear(&err);
    CHECK(eg_gguf_open(path, &f, &err) == EG_OK && f.mapped && f.n_tensors == 2, "%s", err.msg);
    eg_gguf_close(&f);
    unlink(path);
    CHECK(eg_gguf_open(path, &f, &err) == EG_EIO && f.sys_errno != 0, "missing file");
    eg_gguf_close(&f);
}

/* Each truncation of the valid file is refused, never read past its end. */
static void test_truncated(void)
{
    buf o;
    good(&o);
    size_t end = o.n;
    for (size_t n = 0; n < end; n++) {
        eg_gguf_file f;
        eg_err err;
        buf t = o;
        t.n = n;
        eg_status st = parse(&t, &f, &err);
        CHECK(st == EG_ECORRUPT && err.msg[0] != '\0', "prefix %zu: status %d", n, (int)st);
        eg_gguf_close(&f);
    }
}

static void expect(const buf *o, const char *needle)
{
    eg_gguf_file f;
    eg_err err;
    eg_status st = parse(o, &f, &err);
    CHECK(st == EG_ECORRUPT && strstr(err.msg, needle) != NULL && strstr(err.msg, "mem.gguf") != NULL,
          "want \"%s\", got %d: %s", needle, (int)st, err.msg);
    eg_gguf_close(&f);
}

static void test_refusals(void)
{
    buf o;
    header(&o, 1, 0, 0);
    expect(&o, "version 1 is not supported");
    header(&o, 3, 1ull << 60, 0);
    expect(&o, "tensor count");
    header(&o, 3, 0, 1);
    str(&o, "k"); u32(&o, EG_GGUF_ARRAY); u32(&o, EG_GGUF_ARRAY); u64(&o, 1); u64(&o, 0);
    expect(&o, "nested arrays");
    header(&o, 3, 0, 1);
    str(&o, "general.alignment"); u32(&o, EG_GGUF_UINT32); u32(&o, 24); u64(&o, 0);
    expect(&o, "power of two");
    header(&o, 3, 1, 0);
    str(&o, "t"); u32(&o, 1); u64(&o, 32); u32(&o, 20); u64(&o, 0);
    pad(&o, 32); o.n += 64;
    expect(&o, "ggml type 20 (IQ4_NL)");
    header(&o, 3, 2, 0);
    str(&o, "a"); u32(&o, 1); u64(&o, 16); u32(&o, EG_GGML_F32); u64(&o, 0);
    str(&o, "b"); u32(&o, 1); u64(&o, 8); u32(&o, EG_GGML_F32); u64(&o, 32);
    pad(&o, 32); memset(o.b + o.n, 0, 128); o.n += 128;
    expect(&o, "overlap");
    header(&o, 3, 1, 0);
    str(&o, "a"); u32(&o, 3); u64(&o, 1ull << 20); u64(&o, 1ull << 20); u64(&o, 1ull << 10);
    u32(&o, EG_GGML_F32); u64(&o, 0);
    pad(&o, 32);
    expect(&o, "reach past the end");
}

static void test_kernels(void)
{
    /* Q4_1: d = 2, m = -1 (fp16 0x4000, 0xbc00), nibbles j and 15 - j */
    eg_block_q4_1 b1;
    b1.d = 0x4000;
    b1.m = 0xbc00;
    for (int j = 0; j < 16; j++) {
        b1.qs[j] = (uint8_t)(j | (15 - j) << 4);
    }
    float y[256];
    eg_dequantize(EG_GGML_Q4_1, &b1, y, 32);
    for (int j = 0; j < 16; j++) {
        CHECK(y[j] == 2.0f * j - 1.0f && y[j + 16] == 2.0f * (15 - j) - 1.0f, "q4_1 %d", j);
    }
    /* Q6_K: every q = 33 (ql nibbles 1, qh bits 2), scales 1..16, d = 1 */
    eg_block_q6_K b6;
    memset(b6.ql, 0x11, sizeof b6.ql);
    memset(b6.qh, 0xaa, sizeof b6.qh);
    for (int g = 0; g < 16; g++) {
        b6.scales[g] = (int8_t)(g + 1);
    }
    b6.d = 0x3c00;
    eg_dequantize(EG_GGML_Q6_K, &b6, y, 256);
    for (int e = 0; e < 256; e++) {
        CHECK(y[e] == (float)(e / 16 + 1), "q6_K %d: %g", e, y[e]);
    }
    size_t bs, ts;
    CHECK(eg_ggml_type_traits(EG_GGML_Q5_K, &bs, &ts) == 0 && bs == 256 && ts == 176, "traits");
    CHECK(eg_ggml_type_traits(16, &bs, &ts) < 0 && strcmp(eg_ggml_type_name(16), "IQ2_XXS") == 0, "IQ2");
    CHECK(!eg_ggml_can_dequantize(EG_GGML_Q8_1), "q8_1");
}

int main(void)
{
    test_valid();
    test_truncated();
    test_refusals();
    test_kernels();
    return eg_test_report("test_gguf");
}
