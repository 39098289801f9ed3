/*
 * test_qmatmul.c — eg_qmat_init / eg_qmatmul (csrc/ops/qmatmul.c).
 *
 * Random blocks (fp16 scales of size ~0.01, random quant bits) for every
 * type the product handles; for each, both paths (direct: N <= 64, GEMM):
 * - the result is within float32 rounding of the double-precision product
 *   with eg_dequantize's weights (eg_sgemm_naive);
 * - X = identity rows gives eg_dequantize's weights bit for bit (so the
 *   vectorised tile dequantization is exact);
 * - the GEMM path equals eg_sgemm on eg_dequantize's matrix bit for bit;
 * - the direct path gives a token the same bits alone or in a batch.
 * precision bf16 (eg_qmatmul_prec): within float32 summation error of the
 * double product of the bf16-rounded inputs and weights, on the AVX512-BF16
 * kernel or the emulation, with partial panels, token tiles and K blocks.
 * Also eg_qmat_init's refusals. `make test` runs it once per SIMD level
 * under ENGINE_PY_ISA in CI.
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_quant.h"
#include "eg_test.h"

#include <stdint.h>
#include <string.h>

static uint64_t rng = 88172645463325252ull;

static uint32_t next_u32(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}

static float frand(void)
{
    return (float)(next_u32() >> 8) / 16777216.0f - 0.5f;
}

/* Bytes of a (rows, cols) matrix of `type`: random, with sane fp16 scales
 * at the offsets `sc` (n_sc of them) of every block. */
static unsigned char *random_matrix(int type, int rows, int cols, size_t *nbytes)
{
    size_t bs, ts;
    eg_ggml_type_traits(type, &bs, &ts);
    const size_t nb = (size_t)rows * (size_t)cols / bs;
    unsigned char *m = malloc(nb * ts);
    for (size_t i = 0; i < nb * ts; i++) {
        m[i] = (unsigned char)next_u32();
    }
    int offs[2] = {-1, -1};
    switch (type) {
    case EG_GGML_Q4_1: case EG_GGML_Q5_1: case EG_GGML_Q4_K: case EG_GGML_Q5_K:
        offs[0] = 0; offs[1] = 2; break;
    case EG_GGML_Q4_0: case EG_GGML_Q5_0: case EG_GGML_Q8_0:
        offs[0] = 0; break;
    case EG_GGML_Q2_K: offs[0] = 80; offs[1] = 82; break;
    case EG_GGML_Q3_K: offs[0] = 108; break;
    case EG_GGML_Q6_K: offs[0] = 208; break;
    default: break;
    }
    for (size_t b = 0; b < nb; b++) {
        for (int j = 0; j < 2; j++) {
            if (offs[j] >= 0) {
                /* fp16 in [2^-9, 2^-6) with a random sign */
                uint16_t h = (uint16_t)(((6 + next_u32() % 3) << 10) | (next_u32() & 0x3ff)
                                        | (next_u32() & 1) << 15);
                memcpy(m + b * ts + (size_t)offs[j], &h, 2);
            }
        }
    }
    if (type == EG_GGML_F32) {
        for (size_t i = 0; i < nb; i++) {
            float f = frand();
            memcpy(m + 4 * i, &f, 4);
        }
    }
    if (type == EG_GGML_F16 || type == EG_GGML_BF16) {
        for (size_t i = 0; i < nb; i++) {
            float f = frand();
            uint32_t u;
            memcpy(&u, &f, 4);
            uint16_t h;
            if (type == EG_GGML_BF16) {
                h = (uint16_t)(u >> 16);
            } else {
                eg_f32_to_f16(&f, &h, 1);
            }
            memcpy(m + 2 * i, &h, 2);
        }
    }
    *nbytes = nb * ts;
    return m;
}

static void test_type(int type, int rows, int cols)
{
    const char *name = eg_ggml_type_name(type);
    size_t nbytes;
    unsigned char *raw = random_matrix(type, rows, cols, &nbytes);
    eg_err err;
    eg_err_clear(&err);
    eg_qmat w;
    CHECK(eg_qmat_init(&w, type, rows, cols, raw, "w", &err) == EG_OK, "%s: %s", name, err.msg);
    CHECK(w.row_bytes * (size_t)rows == nbytes, "%s: row_bytes", name);
    float *wd = malloc(sizeof(float) * (size_t)rows * cols);
    eg_dequantize(type, raw, wd, (size_t)rows * cols);
    const int nmax = 70;
    float *x = malloc(sizeof(float) * (size_t)nmax * cols);
    for (size_t i = 0; i < (size_t)nmax * cols; i++) {
        x[i] = frand();
    }
    float *y = malloc(sizeof(float) * (size_t)nmax * rows), *ref = malloc(sizeof(float) * (size_t)nmax * rows);
    float *y1 = malloc(sizeof(float) * (size_t)rows);
    const int old = eg_qmatmul_direct_max(-1);
    const int ns[4] = {1, 6, 64, 70};
    for (int path = 0; path < 2; path++) {
        eg_qmatmul_direct_max(path == 0 ? 64 : 0);
        for (int in = 0; in < 4; in++) {
            const int n = ns[in];
            if (path == 0 && n > 64) {
                continue;
            }
            CHECK(eg_qmatmul(y, rows, x, cols, n, &w, NULL, &err) == EG_OK, "%s", err.msg);
            eg_sgemm_naive(0, 1, n, rows, cols, 1.0f, x, cols, wd, cols, 0.0f, ref, rows);
            double worst = 0.0;
            for (int t = 0; t < n; t++) {
                for (int r = 0; r < rows; r++) {
                    double scale = 0.0;
                    for (int k = 0; k < cols; k++) {
                        scale += fabs((double)x[(size_t)t * cols + k] * wd[(size_t)r * cols + k]);
                    }
                    double e = fabs((double)y[(size_t)t * rows + r] - ref[(size_t)t * rows + r]);
                    double bound = 2.0 * (cols + 2) * ldexp(1.0, -24) * scale + 1e-30;
                    worst = e / bound > worst ? e / bound : worst;
                }
            }
            CHECK(worst <= 1.0, "%s path %d N=%d: error %.3g x the bound", name, path, n, worst);
            if (path == 1) {
                eg_sgemm(0, 1, n, rows, cols, 1.0f, x, cols, wd, cols, 0.0f, ref, rows);
                CHECK(memcmp(y, ref, sizeof(float) * (size_t)n * rows) == 0,
                      "%s N=%d: GEMM path != eg_sgemm(eg_dequantize)", name, n);
            } else {
                /* the last token alone: the same bits as in the batch */
                CHECK(eg_qmatmul(y1, rows, x + (size_t)(n - 1) * cols, cols, 1, &w, NULL, &err) == EG_OK,
                      "%s", err.msg);
                CHECK(memcmp(y1, y + (size_t)(n - 1) * rows, sizeof(float) * rows) == 0,
                      "%s N=%d: a token alone differs from the batch", name, n);
            }
        }
        /* X = rows of the identity: exactly the dequantized weights */
        const int ne = cols < 64 ? cols : 64;
        float *eye = calloc((size_t)ne * cols, sizeof(float));
        for (int i = 0; i < ne; i++) {
            eye[(size_t)i * cols + i] = 1.0f;
        }
        CHECK(eg_qmatmul(y, rows, eye, cols, ne, &w, NULL, &err) == EG_OK, "%s", err.msg);
        int bad = 0;
        for (int i = 0; i < ne; i++) {
            for (int r = 0; r < rows; r++) {
                float a = y[(size_t)i * rows + r], b = wd[(size_t)r * cols + i];
                bad += !(a == b || (a != a && b != b));
            }
        }
        CHECK(bad == 0, "%s path %d: %d weights differ from eg_dequantize", name, path, bad);
        free(eye);
    }
    eg_qmatmul_direct_max(old);
    free(raw);
    free(wd);
    free(x);
    free(y);
    free(ref);
    free(y1);
}

static void test_bf16(int type, int rows, int cols)
{
    const char *name = eg_ggml_type_name(type);
    size_t nbytes;
    unsigned char *raw = random_matrix(type, rows, cols, &nbytes);
    eg_err err;
    eg_err_clear(&err);
    eg_qmat w;
    CHECK(eg_qmat_init(&w, type, rows, cols, raw, "w", &err) == EG_OK, "%s: %s", name, err.msg);
    float *wd = malloc(sizeof(float) * (size_t)rows * cols);
    eg_dequantize(type, raw, wd, (size_t)rows * cols);
    eg_round_bf16_inplace(wd, (size_t)rows * cols);
    const int n = 77;   /* 6 register tiles of 12 tokens and a tail of 5 */
    float *x = malloc(sizeof(float) * (size_t)n * cols), *xr = malloc(sizeof(float) * (size_t)n * cols);
    for (size_t i = 0; i < (size_t)n * cols; i++) {
        x[i] = xr[i] = frand();
    }
    eg_round_bf16_inplace(xr, (size_t)n * cols);
    float *y = malloc(sizeof(float) * (size_t)n * rows);
    const int old = eg_qmatmul_direct_max(-1);
    eg_qmatmul_direct_max(0);
    CHECK(eg_qmatmul_prec(y, rows, x, cols, n, &w, NULL, EG_PREC_BF16, &err) == EG_OK, "%s", err.msg);
    eg_qmatmul_direct_max(old);
    double worst = 0.0;
    int changed = 0;
    for (int t = 0; t < n; t++) {
        for (int r = 0; r < rows; r++) {
            double ref = 0.0, ref32 = 0.0, scale = 0.0;
            for (int k = 0; k < cols; k++) {
                const double a = xr[(size_t)t * cols + k], b = wd[(size_t)r * cols + k];
                ref += a * b;
                ref32 += (double)x[(size_t)t * cols + k] * b;
                scale += fabs(a * b);
            }
            const double e = fabs((double)y[(size_t)t * rows + r] - ref);
            const double bound = 2.0 * (cols + 2) * ldexp(1.0, -24) * scale + 1e-30;
            worst = e / bound > worst ? e / bound : worst;
            changed += ref != ref32;
        }
    }
    CHECK(changed > 0, "%s: the inputs were not rounded (test inputs are bf16 already?)", name);
    CHECK(worst <= 1.0, "%s bf16 (kernel %d): error %.3g x the bound", name,
          eg_bf16_kernel_available(), worst);
    free(raw);
    free(wd);
    free(x);
    free(xr);
    free(y);
}

/* eg_qmatmul_t_prec bf16: dX (+)= bf16(dY) @ bf16(W), against the double
 * product of the rounded operands; row blocks of W (tile_rows) with an odd
 * last block (the K pair padding), a strided dY and dX, and accumulation. */
static void test_bf16_t(int type, int rows, int cols, int tile_rows)
{
    const char *name = eg_ggml_type_name(type);
    size_t nbytes;
    unsigned char *raw = random_matrix(type, rows, cols, &nbytes);
    eg_err err;
    eg_err_clear(&err);
    eg_qmat w;
    CHECK(eg_qmat_init(&w, type, rows, cols, raw, "w", &err) == EG_OK, "%s: %s", name, err.msg);
    float *wd = malloc(sizeof(float) * (size_t)rows * cols);
    eg_dequantize(type, raw, wd, (size_t)rows * cols);
    eg_round_bf16_inplace(wd, (size_t)rows * cols);
    const int n = 77, ldy = rows + 3, ldx = cols + 5;
    float *dy = malloc(sizeof(float) * (size_t)n * ldy), *dyr = malloc(sizeof(float) * (size_t)n * ldy);
    for (size_t i = 0; i < (size_t)n * ldy; i++) {
        dy[i] = dyr[i] = frand();
    }
    eg_round_bf16_inplace(dyr, (size_t)n * ldy);
    float *dx = malloc(sizeof(float) * (size_t)n * ldx);
    for (int acc = 0; acc < 2; acc++) {
        for (size_t i = 0; i < (size_t)n * ldx; i++) {
            dx[i] = acc ? 0.25f : NAN;  /* assign must overwrite, accumulate must add */
        }
        const int old = eg_qmatmul_direct_max(-1), old_tile = eg_qmatmul_tile_rows(tile_rows);
        eg_qmatmul_direct_max(0);
        CHECK(eg_qmatmul_t_prec(dx, ldx, dy, ldy, n, &w, acc, EG_PREC_BF16, &err) == EG_OK,
              "%s", err.msg);
        eg_qmatmul_direct_max(old);
        eg_qmatmul_tile_rows(old_tile);
        double worst = 0.0;
        int changed = 0;
        for (int t = 0; t < n; t++) {
            for (int c = 0; c < cols; c++) {
                double ref = acc ? 0.25 : 0.0, ref32 = ref, scale = fabs(ref);
                for (int r = 0; r < rows; r++) {
                    const double a = dyr[(size_t)t * ldy + r], b = wd[(size_t)r * cols + c];
                    ref += a * b;
                    ref32 += (double)dy[(size_t)t * ldy + r] * b;
                    scale += fabs(a * b);
                }
                const double e = fabs((double)dx[(size_t)t * ldx + c] - ref);
                const double bound = 2.0 * (rows + 3) * ldexp(1.0, -24) * scale + 1e-30;
                worst = e / bound > worst || isnan(e) ? (isnan(e) ? 1e30 : e / bound) : worst;
                changed += ref != ref32;
            }
        }
        CHECK(changed > 0, "%s: the gradients were not rounded", name);
        CHECK(worst <= 1.0, "%s bf16 backward (kernel %d, tile %d, acc %d): error %.3g x the bound",
              name, eg_bf16_kernel_available(), tile_rows, acc, worst);
    }
    free(raw);
    free(wd);
    free(dy);
    free(dyr);
    free(dx);
}

/* The packers give exactly the documented layout and eg_round_bf16_inplace's
 * bits (the AVX-512 copies where the kernel runs, the scalar ones elsewhere):
 * ties, NaN, infinities, denormals, partial panels, odd and short rows. */
static void test_bf16_packing(void)
{
    const int shapes[][2] = {{32, 64}, {29, 77}, {1, 1}, {32, 33}, {7, 1031}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int nr = shapes[si][0], cols = shapes[si][1];
        const int kp2 = (cols + 1) / 2 * 2;
        const size_t ldw = (size_t)cols + 3;
        float *w = malloc(sizeof(float) * (size_t)nr * ldw), *wr = malloc(sizeof(float) * (size_t)nr * ldw);
        for (size_t i = 0; i < (size_t)nr * ldw; i++) {
            uint32_t u = next_u32();
            switch (u % 8) {
            case 0: u = (u & 0x80000000u) | 0x3f808000u; break;   /* a tie: 1 + 2^-8 */
            case 1: u = (u & 0x80000000u) | 0x3f818000u; break;   /* a tie rounding up */
            case 2: u &= 0x807fffffu; break;                    /* denormal */
            case 3: u = (u & 0x80000000u) | 0x7f800000u; break; /* infinity */
            case 4: u |= 0x7f800001u; break;                    /* NaN */
            case 5: u = (u & 0x80000000u) | 0x7f7fffffu; break; /* rounds to infinity */
            default: break;
            }
            memcpy(w + i, &u, 4);
        }
        memcpy(wr, w, sizeof(float) * (size_t)nr * ldw);
        eg_round_bf16_inplace(wr, (size_t)nr * ldw);
        uint16_t *panel = eg_aligned_alloc(sizeof(uint16_t) * (size_t)kp2 * 32);
        uint16_t *rows = eg_aligned_alloc(sizeof(uint16_t) * (size_t)kp2 * nr);
        eg_bf16_pack_panel(panel, w, ldw, nr, cols);
        eg_bf16_pack_rows(rows, w, ldw, (size_t)nr, cols);
        int bad_panel = 0, bad_rows = 0;
        for (int r = 0; r < 32; r++) {
            for (int k = 0; k < kp2; k++) {
                uint32_t u = 0;
                if (r < nr && k < cols) {
                    memcpy(&u, wr + (size_t)r * ldw + k, 4);
                }
                const uint16_t want = (uint16_t)(u >> 16);
                bad_panel += panel[(size_t)(k / 2) * 64 + 2 * r + k % 2] != want;
                if (r < nr) {
                    bad_rows += rows[(size_t)r * kp2 + k] != want;
                }
            }
        }
        CHECK(bad_panel == 0, "pack_panel %d x %d (kernel %d): %d values differ", nr, cols,
              eg_bf16_kernel_available(), bad_panel);
        /* the transposed panel: its rows are columns 0 .. nc of w, K runs over w's rows */
        {
            const int nc = cols < 32 ? cols : 32, kq2 = (nr + 1) / 2 * 2;
            uint16_t *tp = eg_aligned_alloc(sizeof(uint16_t) * (size_t)kq2 * 32);
            eg_bf16_pack_panel_t(tp, w, ldw, 0, nc, nr);
            int bad_t = 0;
            for (int r = 0; r < 32; r++) {
                for (int k = 0; k < kq2; k++) {
                    uint32_t u = 0;
                    if (r < nc && k < nr) {
                        memcpy(&u, wr + (size_t)k * ldw + r, 4);
                    }
                    bad_t += tp[(size_t)(k / 2) * 64 + 2 * r + k % 2] != (uint16_t)(u >> 16);
                }
            }
            CHECK(bad_t == 0, "pack_panel_t %d x %d: %d values differ", nr, nc, bad_t);
            eg_aligned_free(tp);
        }
        CHECK(bad_rows == 0, "pack_rows %d x %d (kernel %d): %d values differ", nr, cols,
              eg_bf16_kernel_available(), bad_rows);
        free(w);
        free(wr);
        eg_aligned_free(panel);
        eg_aligned_free(rows);
    }
}

static void test_init_errors(void)
{
    eg_err err;
    eg_qmat w;
    eg_err_clear(&err);
    CHECK(eg_qmat_init(&w, EG_GGML_Q8_K, 4, 256, NULL, "w", &err) == EG_EINVAL, "Q8_K refused");
    CHECK(eg_qmat_init(&w, 16, 4, 256, NULL, "w", &err) == EG_EINVAL, "IQ2_XXS refused");
    CHECK(eg_qmat_init(&w, -1, 4, 256, NULL, "w", &err) == EG_EINVAL, "-1 refused");
    CHECK(eg_qmat_init(&w, 1000, 4, 256, NULL, "w", &err) == EG_EINVAL, "1000 refused");
    CHECK(eg_qmat_init(&w, EG_GGML_Q4_K, 4, 896, NULL, "w", &err) == EG_EINVAL, "896 not /256");
    CHECK(strstr(err.msg, "multiple") != NULL, "message: %s", err.msg);
    CHECK(eg_qmat_init(&w, EG_GGML_Q4_0, 0, 32, NULL, "w", &err) == EG_EINVAL, "0 rows");
    CHECK(eg_qmat_init(&w, EG_GGML_Q4_0, 4, (int64_t)1 << 40, NULL, "w", &err) == EG_EINVAL, "huge");
    CHECK(eg_qmat_init(&w, EG_GGML_Q4_0, INT32_MAX, INT32_MAX - 31, NULL, "w", &err) == EG_OK,
          "large but fine: %s", err.msg);
}

int main(void)
{
    const int types[] = {EG_GGML_F32, EG_GGML_F16, EG_GGML_BF16, EG_GGML_Q4_0, EG_GGML_Q4_1,
                         EG_GGML_Q5_0, EG_GGML_Q5_1, EG_GGML_Q8_0, EG_GGML_Q2_K, EG_GGML_Q3_K,
                         EG_GGML_Q4_K, EG_GGML_Q5_K, EG_GGML_Q6_K};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
        size_t bs, ts;
        eg_ggml_type_traits(types[i], &bs, &ts);
        test_type(types[i], 23, bs == 1 ? 100 : 512);
    }
    test_bf16_packing();
    test_bf16(EG_GGML_F32, 45, 1031);    /* odd K: the pair padding; two K blocks */
    test_bf16(EG_GGML_F16, 33, 517);
    test_bf16(EG_GGML_Q4_1, 45, 1024);
    test_bf16(EG_GGML_Q6_K, 64, 1536);
    test_bf16_t(EG_GGML_F32, 45, 70, 0);      /* odd K (rows), one block, cols not /32 */
    test_bf16_t(EG_GGML_F32, 45, 70, 16);     /* blocks of 16, 16, 13 */
    test_bf16_t(EG_GGML_Q4_1, 1100, 96, 0);   /* K over several kernel K blocks */
    test_bf16_t(EG_GGML_Q6_K, 64, 512, 17);   /* odd tile made even: 18, 18, 18, 10 */
    test_init_errors();
    return eg_test_report("test_qmatmul");
}
