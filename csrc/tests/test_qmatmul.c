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
 * int8 (EG_PREC_INT8): the activation quantizer on edge values (zero, tiny,
 * inf, NaN, largest, exact blocks), the repack of every int8 type against
 * eg_dequantize bit for bit, the product against a double reference on
 * every kernel this CPU runs (all the same bits).
 * Also eg_qmat_init's refusals. `make test` runs it once per SIMD level
 * under ENGINE_PY_ISA in CI.
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_quant.h"
#include "eg_test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
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

/* ---------------------------------------------------------------- int8 */

/* The activation quantizer on edge values: a zero block, a block too small
 * to scale, inf and NaN blocks, the largest floats, exact ties. */
static void test_q8_quantizer(void)
{
    enum { COLS = 256, NB = COLS / 32 };
    float x[2 * COLS];
    uint8_t u[2 * COLS];
    float d[2 * NB], ds[2 * NB];
    for (int k = 0; k < 2 * COLS; k++) {
        x[k] = frand();
    }
    for (int k = 0; k < 32; k++) {
        x[k] = 0.0f;                        /* block 0: zeros */
        x[32 + k] = 1e-38f * (float)(k - 16);  /* block 1: below 2^-120 */
        x[64 + k] = (float)(k - 16);        /* block 2: amax 16 */
        x[128 + k] = k % 2 ? 3.4e38f : -3.4e38f;  /* block 4: the largest floats */
    }
    x[96 + 5] = INFINITY;                   /* block 3: inf */
    x[COLS + 200] = NAN;                    /* row 1, block 6: NaN */
    eg_q8_quantize_rows(u, d, ds, x, COLS, 2, COLS);
    CHECK(d[0] == 0.0f && ds[0] == 0.0f, "zero block: d %g", (double)d[0]);
    CHECK(d[1] == 0.0f, "tiny block: d %g", (double)d[1]);
    for (int k = 0; k < 32; k++) {
        CHECK(u[k] == 128 && u[32 + k] == 128 && u[96 + k] == 128, "zero codes at %d", k);
    }
    CHECK(isnan(d[3]) && isnan(ds[3]), "inf block: d %g", (double)d[3]);
    CHECK(isnan(d[NB + 6]) && !isnan(d[NB + 5]), "NaN block");
    CHECK(d[4] == 3.4e38f / 127.0f, "largest floats: d %g", (double)d[4]);
    for (int k = 0; k < 32; k++) {
        CHECK(u[128 + k] == (k % 2 ? 255 : 1), "largest floats: code %d", u[128 + k]);
    }
    /* block 2: x = k - 16, d = 16 / 127: x / d = (k - 16) * 7.9375 */
    CHECK(d[2] == 16.0f / 127.0f, "d %g", (double)d[2]);
    int sum = 0;
    for (int k = 0; k < 32; k++) {
        const int q = (int)u[64 + k] - 128;
        const float want = nearbyintf(x[64 + k] * (1.0f / d[2]));
        sum += q;
        CHECK(q == (int)want, "k %d: q %d want %g", k, q, (double)want);
        CHECK(fabs((double)q * d[2] - x[64 + k]) <= 0.5 * d[2] + 1e-6, "k %d: error", k);
    }
    CHECK(u[64] == 1, "-16 -> -127, got %d", (int)u[64] - 128);
    CHECK(ds[2] == d[2] * (float)sum, "ds");
    /* every random block: codes within +-127, one of them at +-127 */
    for (int b = 5; b < 2 * NB; b++) {
        if (b == NB + 6) {
            continue;
        }
        int top = 0;
        for (int k = 0; k < 32; k++) {
            const int q = (int)u[32 * b + k] - 128;
            CHECK(q >= -127 && q <= 127, "range");
            top = abs(q) > top ? abs(q) : top;
        }
        CHECK(top == 127, "block %d: max |q| %d", b, top);
    }
}

/* The repack of every int8 type reproduces eg_dequantize's weights:
 * d * q + m in float32 is the dequantized value bit for bit, and the
 * corrections are -128 * the code sums. 20 rows: a full and a short panel. */
static void test_int8_repack(int type, int cols)
{
    const int rows = 20, nb = cols / 32;
    const char *name = eg_ggml_type_name(type);
    size_t nbytes;
    unsigned char *m = random_matrix(type, rows, cols, &nbytes);
    eg_qmat w;
    eg_err err;
    eg_err_clear(&err);
    CHECK(eg_qmat_init(&w, type, rows, cols, m, "w", &err) == EG_OK, "%s", err.msg);
    CHECK(eg_int8_panel_bytes(cols) == (size_t)nb * sizeof(eg_int8_block), "panel bytes");
    eg_int8_block *P = eg_aligned_alloc(2 * eg_int8_panel_bytes(cols));
    int8_t *ws = malloc((size_t)16 * cols);
    float *fs = malloc(48 * (size_t)nb * sizeof(float));
    float *row = malloc((size_t)cols * sizeof(float));
    const int split = type == EG_GGML_Q6_K;
    const int mins = type == EG_GGML_Q4_1 || type == EG_GGML_Q5_1 || type == EG_GGML_Q4_K
                     || type == EG_GGML_Q5_K;
    eg_int8_pack_panel(P, &w, 0, 16, ws, fs);
    eg_int8_pack_panel(P + nb, &w, 16, 4, ws, fs);
    int bad = 0;
    for (int r = 0; r < 32; r++) {
        const eg_int8_block *Pp = P + (r / 16) * nb;
        const int lr = r % 16;
        if (r >= rows) {
            for (int b = 0; b < nb; b++) {
                for (int j = 0; j < 8; j++) {
                    bad += Pp[b].q[j][lr][0] != 0 || Pp[b].q[j][lr][3] != 0;
                }
                bad += Pp[b].d0[lr] != 0.0f || Pp[b].c0[lr] != 0 || Pp[b].m[lr] != 0.0f;
            }
            continue;
        }
        eg_qmat_row(&w, r, row);
        for (int b = 0; b < nb; b++) {
            const eg_int8_block *B = Pp + b;
            int s0 = 0, s1 = 0;
            for (int k = 0; k < 32; k++) {
                const int q = B->q[k / 4][lr][k % 4];
                const float dd = k < 16 ? B->d0[lr] : B->d1[lr];
                const float p = dd * (float)q;
                const float v = mins ? p + B->m[lr] : p;
                bad += v != row[32 * b + k];
                if (k < 16) {
                    s0 += q;
                } else {
                    s1 += q;
                }
            }
            if (!split) {
                bad += B->d1[lr] != B->d0[lr] || B->c0[lr] != -128 * (s0 + s1) || B->c1[lr] != 0;
            } else {
                bad += B->c0[lr] != -128 * s0 || B->c1[lr] != -128 * s1;
            }
            bad += !mins && B->m[lr] != 0.0f;
        }
    }
    CHECK(bad == 0, "%s: %d repacked values or sums differ", name, bad);
    eg_aligned_free(P);
    free(ws);
    free(fs);
    free(row);
    free(m);
}

/* eg_qmatmul_prec(EG_PREC_INT8) against a double product of the quantized
 * activations and eg_dequantize's weights, on every kernel this CPU runs,
 * all giving the same bits; token counts over the tiles and the 128-token
 * chunk. */
static void test_int8_product(int type, int rows, int cols)
{
    const char *name = eg_ggml_type_name(type);
    const int n = 131, nb = cols / 32;
    size_t nbytes;
    unsigned char *m = random_matrix(type, rows, cols, &nbytes);
    eg_qmat w;
    eg_err err;
    eg_err_clear(&err);
    CHECK(eg_qmat_init(&w, type, rows, cols, m, "w", &err) == EG_OK, "%s", err.msg);
    float *x = malloc((size_t)n * cols * sizeof(float));
    float *wd = malloc((size_t)rows * cols * sizeof(float));
    float *y = malloc((size_t)n * rows * sizeof(float));
    float *y0 = malloc((size_t)n * rows * sizeof(float));
    uint8_t *u = malloc((size_t)n * cols);
    float *d = malloc((size_t)n * nb * sizeof(float)), *ds = malloc((size_t)n * nb * sizeof(float));
    for (size_t i = 0; i < (size_t)n * cols; i++) {
        x[i] = frand();
    }
    for (int r = 0; r < rows; r++) {
        eg_qmat_row(&w, r, wd + (size_t)r * cols);
    }
    eg_q8_quantize_rows(u, d, ds, x, (size_t)cols, (size_t)n, cols);
    const int old = eg_qmatmul_direct_max(0);
    for (int lv = 0; lv <= eg_int8_kernel_level(); lv++) {
        eg_int8_force_level(lv);
        CHECK(eg_qmatmul_prec(y, rows, x, cols, n, &w, NULL, EG_PREC_INT8, &err) == EG_OK, "%s",
              err.msg);
        double worst = 0.0;
        for (int t = 0; t < n; t++) {
            for (int r = 0; r < rows; r++) {
                double ref = 0.0, mag = 0.0;
                for (int k = 0; k < cols; k++) {
                    const double xq = ((int)u[(size_t)t * cols + k] - 128) * (double)d[(size_t)t * nb + k / 32];
                    const double wv = wd[(size_t)r * cols + k];
                    ref += xq * wv;
                    mag += fabs(xq) * (fabs(wv) + 0.1);
                }
                const double e = fabs(y[(size_t)t * rows + r] - ref) / ((nb + 4) * 0x1p-23 * mag);
                worst = e > worst ? e : worst;
            }
        }
        CHECK(worst <= 1.0, "%s level %s: error / bound %g", name, eg_int8_kernel_name(lv), worst);
        if (lv == 0) {
            memcpy(y0, y, (size_t)n * rows * sizeof(float));
        } else {
            CHECK(memcmp(y, y0, (size_t)n * rows * sizeof(float)) == 0, "%s: %s differs from generic",
                  name, eg_int8_kernel_name(lv));
        }
    }
    eg_int8_force_level(-1);
    eg_qmatmul_direct_max(old);
    /* not a type with integer codes: refused by the int8 entry point */
    eg_qmat f;
    CHECK(eg_qmat_init(&f, EG_GGML_F32, 2, 32, x, "f", &err) == EG_OK, "f32");
    CHECK(eg_qmatmul_int8(y, 2, x, 32, 1, &f, &err) == EG_EINVAL, "F32 refused by the int8 kernel");
    /* a task count past INT32_MAX is refused before anything is read */
    eg_qmat huge;
    CHECK(eg_qmat_init(&huge, EG_GGML_Q8_0, INT32_MAX, 32, m, "huge", &err) == EG_OK, "%s", err.msg);
    CHECK(eg_qmatmul_int8(y, 1, x, 32, 4096, &huge, &err) == EG_EOVERFLOW, "task count overflow");
    free(x);
    free(wd);
    free(y);
    free(y0);
    free(u);
    free(d);
    free(ds);
    free(m);
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
    test_q8_quantizer();
    const int i8types[] = {EG_GGML_Q4_0, EG_GGML_Q4_1, EG_GGML_Q5_0, EG_GGML_Q5_1, EG_GGML_Q8_0,
                           EG_GGML_Q4_K, EG_GGML_Q5_K, EG_GGML_Q6_K};
    for (size_t i = 0; i < sizeof i8types / sizeof i8types[0]; i++) {
        const int k = i8types[i] >= EG_GGML_Q2_K ? 512 : 96;
        test_int8_repack(i8types[i], k);
        test_int8_product(i8types[i], 37, k);
    }
    test_init_errors();
    return eg_test_report("test_qmatmul");
}
