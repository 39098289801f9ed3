/*
 * test_core.c — status buffer, arena, RNG, fp16/bf16 conversion, sgemm shim,
 * thread control.
 */
#include "eg.h"
#include "eg_isa.h"
#include "eg_test.h"

#include <stdio.h>
#include <string.h>

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static float float_of(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_status(void)
{
    eg_err err;
    eg_err_clear(&err);
    eg_status st = eg_seterr(&err, EG_EINVAL, "bad %s %d", "thing", 7);
    CHECK(st == EG_EINVAL, "seterr returns its status");
    CHECK(err.status == EG_EINVAL, "status stored");
    CHECK(strcmp(err.msg, "bad thing 7") == 0, "message formatted: %s", err.msg);
    CHECK(eg_seterr(NULL, EG_EIO, "x") == EG_EIO, "NULL buffer is allowed");
    /* a message longer than the buffer is truncated, never overflows */
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    eg_seterr(&err, EG_EIO, "%s", big);
    CHECK(strlen(err.msg) == EG_ERR_MSG_LEN - 1, "truncated to buffer");
    CHECK(strcmp(eg_status_name(EG_ECORRUPT), "EG_ECORRUPT") == 0, "status name");
}

static void test_arena(void)
{
    eg_arena a;
    eg_arena_init(&a);
    unsigned char *p[100];
    for (int i = 0; i < 100; i++) {
        p[i] = eg_arena_alloc(&a, (size_t)(i * 1000 + 1));
        CHECK(p[i] != NULL, "alloc %d", i);
        CHECK(((uintptr_t)p[i] % EG_ALIGN) == 0, "aligned %d", i);
        memset(p[i], i, (size_t)(i * 1000 + 1));
    }
    for (int i = 0; i < 100; i++) {
        CHECK(p[i][0] == (unsigned char)i && p[i][i * 1000] == (unsigned char)i,
              "allocation %d not overwritten by later ones", i);
    }
    size_t hw = a.high_water;
    CHECK(hw >= 100 * 1000 / 2 * 99 / 1, "high water tracks use: %zu", hw);
    eg_arena_reset(&a);
    CHECK(eg_arena_num_blocks(&a) == 1, "reset coalesces into one block");
    void *q = eg_arena_alloc(&a, hw - EG_ALIGN);
    CHECK(q != NULL && eg_arena_num_blocks(&a) == 1, "steady workload fits the coalesced block");
    CHECK(eg_arena_alloc_n(&a, SIZE_MAX / 2, 4) == NULL, "overflowing n*size refused");
    CHECK(eg_arena_alloc(&a, SIZE_MAX - 10) == NULL, "huge alloc refused, no wrap");
    eg_arena_free(&a);
    CHECK(a.head == NULL, "freed");
}

static void test_rng(void)
{
    uint64_t s1 = 42, s2 = 42, s3 = 43;
    int same = 1, differ = 0;
    for (int i = 0; i < 1000; i++) {
        uint64_t a = eg_rng_next(&s1), b = eg_rng_next(&s2), c = eg_rng_next(&s3);
        same &= (a == b);
        differ += (a != c);
    }
    CHECK(same, "same seed, same stream");
    CHECK(differ > 990, "different seed, different stream");
    uint64_t s = 7;
    double sum = 0, sumsq = 0;
    int counts[10] = {0};
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        float u = eg_rng_uniform(&s);
        CHECK(u >= 0.0f && u < 1.0f, "uniform in [0,1): %g", u);
        uint64_t k = eg_rng_below(&s, 10);
        CHECK(k < 10, "below in range");
        counts[k]++;
        float z = eg_rng_normal(&s);
        sum += z;
        sumsq += (double)z * z;
    }
    for (int k = 0; k < 10; k++) {
        CHECK(counts[k] > n / 10 - 1000 && counts[k] < n / 10 + 1000, "below uniform: %d", counts[k]);
    }
    CHECK(fabs(sum / n) < 0.01, "normal mean %g", sum / n);
    CHECK(fabs(sumsq / n - 1.0) < 0.02, "normal var %g", sumsq / n);
    CHECK(eg_rng_derive(1, 2) != eg_rng_derive(1, 3), "derived streams differ");
    CHECK(eg_rng_derive(1, 2) == eg_rng_derive(1, 2), "derived streams reproducible");
    CHECK(eg_rng_below(&s, 1) == 0 && eg_rng_below(&s, 0) == 0, "degenerate ranges");
}

static void test_half(void)
{
    /* Every half value: to float and back is the identity (NaNs stay NaN). */
    static uint16_t all[65536], back[65536];
    static float f[65536];
    for (int i = 0; i < 65536; i++) {
        all[i] = (uint16_t)i;
    }
    eg_f16_to_f32(all, f, 65536);
    eg_f32_to_f16(f, back, 65536);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        int is_nan = ((i & 0x7c00) == 0x7c00) && (i & 0x3ff);
        if (is_nan) {
            bad += !(isnan(f[i]) && (back[i] & 0x7c00) == 0x7c00 && (back[i] & 0x3ff));
            bad += (back[i] & 0x8000) != (i & 0x8000);
        } else {
            bad += back[i] != all[i];
        }
    }
    CHECK(bad == 0, "f16 round trip of all 65536 values: %d bad", bad);
    CHECK(f[0x3c00] == 1.0f && f[0xc000] == -2.0f && f[0x7bff] == 65504.0f, "known halves");
    CHECK(f[0x0001] == 0x1.0p-24f, "smallest subnormal %g", f[1]);
    CHECK(isinf(f[0x7c00]) && f[0xfc00] < 0, "infinities");

    /* Rounding: compare with a double-precision reference on random floats
     * in the half range (round to nearest, ties to even, by exhaustive check
     * of the two neighbours). */
    uint64_t s = 3;
    int mism = 0;
    for (int i = 0; i < 200000; i++) {
        float x = float_of((uint32_t)eg_rng_next(&s));
        if (!isfinite(x) || fabsf(x) > 70000.0f) {
            x = ldexpf(eg_rng_uniform(&s) - 0.5f, (int)eg_rng_below(&s, 34) - 20);
        }
        uint16_t h;
        eg_f32_to_f16(&x, &h, 1);
        float hf;
        eg_f16_to_f32(&h, &hf, 1);
        /* neighbours of h in magnitude */
        uint16_t mag = h & 0x7fff;
        if (mag >= 0x7c00) {
            mism += !(fabsf(x) >= 65520.0f);
            continue;
        }
        uint16_t up = (uint16_t)((h & 0x8000) | (mag + 1));
        uint16_t dn = (uint16_t)((h & 0x8000) | (mag ? mag - 1 : 0));
        float fu, fd;
        eg_f16_to_f32(&up, &fu, 1);
        eg_f16_to_f32(&dn, &fd, 1);
        double e = fabs((double)hf - x);
        double eu = fabs((double)fu - x), ed = fabs((double)fd - x);
        if (isfinite(fu) && eu < e) mism++;
        if (ed < e) mism++;
        if (eu == e && isfinite(fu) && (mag & 1)) mism++; /* tie must go to even */
        if (ed == e && mag && (mag & 1)) mism++;
    }
    CHECK(mism == 0, "f32->f16 rounds to nearest even: %d mismatches", mism);
    float nan = NAN, big = 1e6f, neg = -70000.0f, tie = 1.0f + 0x1.0p-11f;
    uint16_t h;
    eg_f32_to_f16(&nan, &h, 1);
    CHECK((h & 0x7c00) == 0x7c00 && (h & 0x3ff), "NaN stays NaN: %04x", h);
    eg_f32_to_f16(&big, &h, 1);
    CHECK(h == 0x7c00, "overflow to +inf");
    eg_f32_to_f16(&neg, &h, 1);
    CHECK(h == 0xfc00, "overflow to -inf");
    eg_f32_to_f16(&tie, &h, 1);
    CHECK(h == 0x3c00, "tie 1+2^-11 rounds to even 1.0: %04x", h);

    /* bf16 */
    float xs[6] = {1.0f, -2.5f, 3.14159265f, 1e-40f, INFINITY, NAN};
    uint16_t b[6];
    float r[6];
    eg_f32_to_bf16(xs, b, 6);
    eg_bf16_to_f32(b, r, 6);
    CHECK(r[0] == 1.0f && r[1] == -2.5f, "exact bf16 values");
    CHECK(fabsf(r[2] - 3.140625f) == 0.0f, "pi rounds to 3.140625: %g", r[2]);
    CHECK(isinf(r[4]) && isnan(r[5]), "inf and NaN kept");
    float t = float_of(0x3f808000u); /* exactly half-way, even below */
    eg_f32_to_bf16(&t, b, 1);
    CHECK(b[0] == 0x3f80, "bf16 tie to even: %04x", b[0]);
    t = float_of(0x3f818000u); /* half-way, odd below: rounds up */
    eg_f32_to_bf16(&t, b, 1);
    CHECK(b[0] == 0x3f82, "bf16 tie to even (up): %04x", b[0]);
    (void)bits_of;
}

static void test_sgemm(void)
{
    const int M = 37, N = 53, K = 71;
    float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
    float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
    uint64_t s = 11;
    for (int i = 0; i < M * K; i++) A[i] = eg_rng_normal(&s);
    for (int i = 0; i < N * K; i++) B[i] = eg_rng_normal(&s);
    for (int tb = 0; tb < 2; tb++) {
        for (int i = 0; i < M * N; i++) C1[i] = C2[i] = 0.5f;
        /* B is (N,K) when transposed, (K,N) otherwise */
        eg_sgemm(0, tb, M, N, K, 1.5f, A, K, B, tb ? K : N, 0.25f, C1, N);
        eg_sgemm_naive(0, tb, M, N, K, 1.5f, A, K, B, tb ? K : N, 0.25f, C2, N);
        double md = 0;
        for (int i = 0; i < M * N; i++) md = fmax(md, fabs(C1[i] - C2[i]));
        CHECK(md < 1e-4, "sgemm transB=%d matches naive: %g", tb, md);
    }
    free(A); free(B); free(C1); free(C2);
}

static void test_threads(void)
{
    eg_set_num_threads(1);
    CHECK(eg_get_num_threads() == 1, "one thread");
    CHECK(eg_blas_get_num_threads() == 1, "BLAS follows: %d", eg_blas_get_num_threads());
    CHECK(eg_omp_max_threads() == 1, "OpenMP follows");
    eg_set_num_threads(2);
    CHECK(eg_get_num_threads() == 2 && eg_blas_get_num_threads() == 2, "two threads");
    CHECK(strlen(eg_blas_name()) > 0 && strlen(eg_blas_config()) > 0, "BLAS described");
}

/* The BLAS thread callback's failure path (csrc/core/blas.c), forced by the
 * test hook: no job may run, the sticky error is set, and eg_sgemm must
 * still return the right product (it redoes it serially). Shapes big enough
 * for OpenBLAS to use both threads, and an M = 1 case (OpenBLAS may take
 * its GEMV path, which scales C by beta before threading). */
static void test_blas_thread_failure(void)
{
    CHECK(eg_blas_last_error() == NULL, "no BLAS error before the hook: %s",
          eg_blas_last_error() ? eg_blas_last_error() : "");
    eg_set_num_threads(2);
    if (!eg_blas_test_fail_threads(1)) {
        printf("test_blas_thread_failure: no BLAS thread callback in this build, skipped\n");
        return;
    }
    const int shapes[3][3] = {{256, 192, 320}, {1, 2048, 2048}, {300, 1, 4096}};
    for (int sh = 0; sh < 3; sh++) {
        const int M = shapes[sh][0], N = shapes[sh][1], K = shapes[sh][2];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * N * K);
        float *C1 = malloc(sizeof(float) * M * N), *C2 = malloc(sizeof(float) * M * N);
        uint64_t s = 5 + (uint64_t)sh;
        for (int i = 0; i < M * K; i++) A[i] = eg_rng_normal(&s);
        for (int i = 0; i < N * K; i++) B[i] = eg_rng_normal(&s);
        for (int b = 0; b < 2; b++) {
            const float beta = b ? 0.75f : 0.0f;
            for (int i = 0; i < M * N; i++) C1[i] = C2[i] = b ? eg_rng_normal(&s) : NAN;
            eg_sgemm(0, 1, M, N, K, 0.5f, A, K, B, K, beta, C1, N);
            eg_sgemm_naive(0, 1, M, N, K, 0.5f, A, K, B, K, beta, C2, N);
            double md = 0;
            int bad = 0; /* NaN-aware: fmax would skip NaN differences */
            for (int i = 0; i < M * N; i++) {
                double d = fabs((double)C1[i] - C2[i]);
                bad += !(d < 1e-3);
                md = d > md ? d : md;
            }
            CHECK(bad == 0, "failed BLAS threads: (%d,%d,%d) beta=%g still right: %d bad, max %g",
                  M, N, K, beta, bad, md);
            if (sh == 0 && b == 0) {
                const char *e = eg_blas_last_error();
                CHECK(e != NULL && strstr(e, "threads") != NULL, "sticky error set: %s",
                      e ? e : "(none)");
            }
        }
        free(A); free(B); free(C1); free(C2);
    }
    eg_blas_test_fail_threads(0);
    CHECK(eg_blas_last_error() != NULL, "the error is sticky");
}

/* What benchmarks report about the machine: the core's SIMD level, as
 * eg_isa_level decides it, and OpenBLAS's kernel. */
static void test_machine_facts(void)
{
    static const char *names[] = {"generic", "avx2", "avx512"};
    int level = eg_isa_level();
    CHECK(level >= 0 && level <= 2 && strcmp(eg_isa_name(level), names[level]) == 0,
          "isa %s, level %d", eg_isa_name(level), level);
    CHECK(strlen(eg_blas_corename()) > 0, "OpenBLAS names its kernel");
}

int main(void)
{
    test_status();
    test_arena();
    test_rng();
    test_half();
    test_sgemm();
    test_threads();
    test_blas_thread_failure();
    test_machine_facts();
    return eg_test_report("test_core");
}
