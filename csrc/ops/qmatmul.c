/*
 * qmatmul.c — products with weights kept in their GGUF format (eg_quant.h).
 *
 * Y = X @ W^T where W stays quantized in the mapped file. Two paths, chosen
 * by the batch size N (measurements on a 2-core AVX-512 Xeon, 1 thread):
 *
 * - small N (<= EG_QMM_DIRECT_MAX = 64 tokens): a few rows at a time are
 *   dequantized into a per-thread buffer that stays in L1/L2, and each is
 *   multiplied by all N tokens at once by a register-blocked dot kernel
 *   (4 rows x 4 tokens, 16 accumulators of 16 lanes, FMA). No GEMM call,
 *   no packing: at N = 10 this runs 2-3x faster than dequantize + sgemm
 *   (Q4_1 1536 x 576: 76 vs 25 GFLOP/s), and the weights are read once.
 *   Its lane order is fixed, so every ISA copy gives the same bits
 *   (the generic copy uses C's fmaf, exactly the FMA instruction's
 *   rounding).
 * - larger N: the whole matrix (up to TILE_FLOATS) is dequantized in
 *   parallel and handed to eg_sgemm in one call; dequantization is then a
 *   small part of the work and the product runs at the float GEMM's speed.
 *
 * Dequantization (qmatmul_simd.h) is vectorised per ISA level and gives
 * exactly eg_dequantize's values: the same float32 products and sums,
 * never fused; fp16 scales come from a table made by eg_f16_to_f32.
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#endif

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef uint8_t v16u8 __attribute__((vector_size(16)));

/* Largest dequantized tile of the GEMM path: 8 Mi floats (32 MiB), so the
 * whole matrix of every layer of the models in view (at most 4864 x 896)
 * is one tile. OpenBLAS blocks for the caches itself; smaller tiles only
 * add calls that each repack the whole batch (measured, 1 thread, Q4_1
 * 1536 x 576, N = 1600: 113 GFLOP/s with 64-row tiles, 136 with 256, 146
 * with the whole matrix; Q6_K 896 x 4864: 52 with 26-row tiles, 129). */
#define TILE_FLOATS ((size_t)8 << 20)

/* Every fp16 value as float32 (eg_f16_to_f32), filled once at load. */
static float g_h2f[65536];

__attribute__((constructor)) static void qmm_init_h2f(void)
{
    uint16_t h[256];
    for (uint32_t hi = 0; hi < 256; hi++) {
        for (uint32_t lo = 0; lo < 256; lo++) {
            h[lo] = (uint16_t)(hi << 8 | lo);
        }
        eg_f16_to_f32(h, g_h2f + hi * 256, 256);
    }
}

/* The vector helpers pass v16f by value; they are always inlined, so the
 * ABI note gcc gives for the copies without AVX-512 does not apply. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
#define EG_ISA_BODY "../ops/qmatmul_simd.h"
#include "eg_isa.h"

typedef struct {
    void (*deq_rows)(const eg_qmat *W, int r0, int r1, float *dst);
    void (*dot_rows)(float *Y, size_t ldy, const float *X, size_t ldx, int N, const float *w,
                     int nr, int cols);
} qmm_kernels;

#define QMM_SET(sfx) {deq_rows##sfx, dot_rows##sfx}
static const qmm_kernels copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(QMM_SET);

/* Batches of at most this many tokens take the direct path (see the file
 * comment); changed only by eg_qmatmul_direct_max (tests, benchmarks). */
static int g_direct_max = EG_QMM_DIRECT_MAX;
/* Rows per dequantized tile of the GEMM path (0: by TILE_FLOATS). */
static int g_tile_rows = 0;

int eg_qmatmul_direct_max(int n)
{
    int old = g_direct_max;
    if (n >= 0) {
        g_direct_max = n;
    }
    return old;
}

int eg_qmatmul_tile_rows(int n)
{
    int old = g_tile_rows;
    if (n >= 0) {
        g_tile_rows = n;
    }
    return old;
}

eg_status eg_qmat_init(eg_qmat *w, int type, int64_t rows, int64_t cols, const void *data,
                       const char *what, eg_err *err)
{
    size_t bs, ts, nb, rb, total;
    if (what == NULL) {
        what = "weight";
    }
    memset(w, 0, sizeof *w);
    if (eg_ggml_type_traits(type, &bs, &ts) != 0 || !eg_ggml_can_dequantize(type)
        || type == EG_GGML_Q8_K) {
        return eg_seterr(err, EG_EINVAL, "%s: tensor type %s is not supported for products "
                         "(supported: %s except Q8_K)", what, eg_ggml_type_name(type),
                         eg_ggml_supported_names());
    }
    if (rows <= 0 || cols <= 0 || rows > INT32_MAX || cols > INT32_MAX) {
        return eg_seterr(err, EG_EINVAL, "%s: bad matrix shape (%lld, %lld)", what,
                         (long long)rows, (long long)cols);
    }
    if ((size_t)cols % bs != 0) {
        return eg_seterr(err, EG_EINVAL, "%s: row length %lld is not a multiple of %s's block "
                         "size %zu", what, (long long)cols, eg_ggml_type_name(type), bs);
    }
    nb = (size_t)cols / bs;
    if (eg_mul_ovf(nb, ts, &rb) || eg_mul_ovf(rb, (size_t)rows, &total)) {
        return eg_seterr(err, EG_EOVERFLOW, "%s: byte size of a (%lld, %lld) %s matrix overflows",
                         what, (long long)rows, (long long)cols, eg_ggml_type_name(type));
    }
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = rb;
    w->data = data;
    return EG_OK;
}

void eg_qmat_row(const eg_qmat *w, int64_t r, float *out)
{
    eg_dequantize(w->type, (const unsigned char *)w->data + (size_t)r * w->row_bytes, out,
                  (size_t)w->cols);
}

/* Rows per group of the direct path: dequantized into a per-thread buffer
 * (4 rows of the widest row here, 4864 floats, are 78 KB: L2) and
 * multiplied by every token before the next group. */
#define DIRECT_ROWS 4

static eg_status qmm_direct(const qmm_kernels *kern, float *Y, size_t ldy, const float *X,
                            size_t ldx, size_t N, const eg_qmat *W, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    const int ngroups = (rows + DIRECT_ROWS - 1) / DIRECT_ROWS;
    int nthr = eg_get_num_threads();
    if (nthr > ngroups) {
        nthr = ngroups;
    }
    if (nthr < 1) {
        nthr = 1;
    }
    const size_t per = (size_t)DIRECT_ROWS * (size_t)cols;
    float *buf = eg_aligned_alloc((size_t)nthr * per * sizeof(float));
    if (buf == NULL) {
        return eg_seterr(err, EG_ENOMEM, "out of memory for %d x %d dequantized rows", nthr * DIRECT_ROWS,
                         cols);
    }
    #pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
#ifdef _OPENMP
        float *mine = buf + (size_t)omp_get_thread_num() * per;
#else
        float *mine = buf;
#endif
        /* dynamic: on a shared machine a thread that loses its core leaves
         * its rows to the others (a row's result does not depend on who
         * computes it) */
        #pragma omp for schedule(dynamic, 4)
        for (int g = 0; g < ngroups; g++) {
            const int r0 = g * DIRECT_ROWS;
            const int r1 = r0 + DIRECT_ROWS < rows ? r0 + DIRECT_ROWS : rows;
            kern->deq_rows(W, r0, r1, mine);
            kern->dot_rows(Y + r0, ldy, X, ldx, (int)N, mine, r1 - r0, cols);
        }
    }
    eg_aligned_free(buf);
    return EG_OK;
}

/* The rows per dequantized tile of the GEMM paths and the tile itself
 * (NULL with err set when out of memory). */
static float *alloc_tile(const eg_qmat *W, int *tile_rows, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    int tile = g_tile_rows > 0 ? g_tile_rows : (int)(TILE_FLOATS / (size_t)cols);
    if (tile < 16) {
        tile = 16;
    }
    if (tile > rows) {
        tile = rows;
    }
    float *buf = eg_aligned_alloc((size_t)tile * (size_t)cols * sizeof(float));
    if (buf == NULL) {
        eg_seterr(err, EG_ENOMEM, "out of memory for a %d x %d dequantized tile", tile, cols);
    }
    *tile_rows = tile;
    return buf;
}

/* Rows r0 .. r0+nr of W dequantized into buf in parallel (8 rows a chunk),
 * rounded to bf16 values with round_bf16; the caller's GEMM then runs
 * outside any OpenMP region. */
static void dequantize_tile(const qmm_kernels *kern, const eg_qmat *W, int r0, int nr, float *buf,
                            int round_bf16)
{
    const size_t cols = (size_t)W->cols;
    const int nchunks = (nr + 7) / 8;
    #pragma omp parallel for schedule(dynamic, 4) if (nr * cols >= 65536)
    for (int c = 0; c < nchunks; c++) {
        const int a = r0 + 8 * c, b = a + 8 < r0 + nr ? a + 8 : r0 + nr;
        kern->deq_rows(W, a, b, buf + (size_t)(a - r0) * cols);
        if (round_bf16) {
            eg_round_bf16_inplace(buf + (size_t)(a - r0) * cols, (size_t)(b - a) * cols);
        }
    }
}

/* The GEMM paths, through dequantized row tiles of W and eg_sgemm:
 * forward (transposed 0): Y (N, rows) = A @ W^T, each tile writing its own
 * columns of Y; backward (transposed 1): Y (N, cols) (+)= A @ W, A's
 * columns r0.. meeting tile r0, the tiles adding up in Y. With round_bf16
 * every dequantized weight is rounded to bf16 (the emulated bf16 precision;
 * A already rounded). */
static eg_status qmm_gemm(const qmm_kernels *kern, float *Y, size_t ldy, const float *A,
                          size_t lda, size_t N, const eg_qmat *W, int transposed, int accumulate,
                          int round_bf16, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    int tile;
    float *buf = alloc_tile(W, &tile, err);
    if (buf == NULL) {
        return EG_ENOMEM;
    }
    for (int r0 = 0; r0 < rows; r0 += tile) {
        const int nr = rows - r0 < tile ? rows - r0 : tile;
        dequantize_tile(kern, W, r0, nr, buf, round_bf16);
        if (transposed) {
            eg_sgemm(0, 0, (int)N, cols, nr, 1.0f, A + r0, (int)lda, buf, cols,
                     (accumulate || r0 > 0) ? 1.0f : 0.0f, Y, (int)ldy);
        } else {
            eg_sgemm(0, 1, (int)N, nr, cols, 1.0f, A, (int)lda, buf, cols, 0.0f, Y + r0, (int)ldy);
        }
    }
    eg_aligned_free(buf);
    return EG_OK;
}

/* A contiguous copy of A (N rows of n floats, row stride lda) rounded to
 * bf16 values, for the emulated bf16 products; NULL (err set) when out of
 * memory. */
static float *rounded_copy(const float *A, size_t lda, size_t N, int n, const char *what,
                           eg_err *err)
{
    size_t bytes;
    float *r;
    if (eg_mul_ovf(N, (size_t)n * sizeof(float), &bytes) || (r = eg_aligned_alloc(bytes)) == NULL) {
        eg_seterr(err, EG_ENOMEM, "out of memory for %zu x %d rounded %s", N, n, what);
        return NULL;
    }
    for (size_t i = 0; i < N; i++) {
        memcpy(r + i * (size_t)n, A + i * lda, (size_t)n * sizeof(float));
    }
    eg_round_bf16_inplace(r, N * (size_t)n);
    return r;
}

/* bf16 products (eg_bf16.h): the kernel on packed panels where the CPU has
 * AVX512-BF16, else rounded float copies through qmm_gemm. The weights are
 * dequantized 32 rows at a time into a per-thread buffer and packed, so no
 * float copy of the whole matrix is made on the kernel's path. */
static eg_status qmm_bf16(const qmm_kernels *kern, float *Y, size_t ldy, const float *X,
                          size_t ldx, size_t N, const eg_qmat *W, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    const size_t kp2 = (size_t)((cols + 1) / 2) * 2;
    size_t xbytes;
    if (!eg_bf16_kernel_available()) {
        float *xr = rounded_copy(X, ldx, N, cols, "inputs", err);
        if (xr == NULL) {
            return EG_ENOMEM;
        }
        eg_status st = qmm_gemm(kern, Y, ldy, xr, (size_t)cols, N, W, 0, 0, 1, err);
        eg_aligned_free(xr);
        return st;
    }
    const int panels = (rows + 31) / 32;
    int nthr = eg_get_num_threads();
    if (nthr > panels) {
        nthr = panels;
    }
    if (nthr < 1) {
        nthr = 1;
    }
    const size_t per = (size_t)32 * (size_t)cols;
    uint16_t *wp = eg_aligned_alloc(eg_bf16_packed_elems(rows, cols) * sizeof(uint16_t));
    uint16_t *xb = eg_mul_ovf(N, kp2 * sizeof(uint16_t), &xbytes) ? NULL : eg_aligned_alloc(xbytes);
    float *buf = eg_aligned_alloc((size_t)nthr * per * sizeof(float));
    if (wp == NULL || xb == NULL || buf == NULL) {
        eg_aligned_free(wp);
        eg_aligned_free(xb);
        eg_aligned_free(buf);
        return eg_seterr(err, EG_ENOMEM, "out of memory for bf16 copies of a %d x %d product "
                         "with %zu tokens", rows, cols, N);
    }
    #pragma omp parallel num_threads(nthr) if (nthr > 1 && (size_t)rows * cols >= 65536)
    {
#ifdef _OPENMP
        float *mine = buf + (size_t)omp_get_thread_num() * per;
#else
        float *mine = buf;
#endif
        #pragma omp for schedule(dynamic, 2)
        for (int p = 0; p < panels; p++) {
            const int r0 = 32 * p, r1 = r0 + 32 < rows ? r0 + 32 : rows;
            kern->deq_rows(W, r0, r1, mine);
            eg_bf16_pack_panel(wp + (size_t)p * 32 * kp2, mine, (size_t)cols, r1 - r0, cols);
        }
    }
    eg_bf16_pack_rows(xb, X, ldx, N, cols);
    eg_bf16_gemm_packed(Y, ldy, xb, N, wp, rows, cols);
    eg_aligned_free(wp);
    eg_aligned_free(xb);
    eg_aligned_free(buf);
    return EG_OK;
}

eg_status eg_qmatmul(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                     const eg_qmat *W, const float *bias, eg_err *err)
{
    return eg_qmatmul_prec(Y, ldy, X, ldx, N, W, bias, EG_PREC_F32, err);
}

eg_status eg_qmatmul_prec(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                          const eg_qmat *W, const float *bias, int precision, eg_err *err)
{
    const int rows = (int)W->rows;
    const int cols = (int)W->cols;
    if (N == 0) {
        return EG_OK;
    }
    const qmm_kernels *kern = &copies[eg_isa_level()];
    if (precision == EG_PREC_INT8 && N > (size_t)g_direct_max && eg_int8_supported_type(W->type)) {
        eg_status st = eg_qmatmul_int8(Y, ldy, X, ldx, N, W, err);
        if (st != EG_OK) {
            return st;
        }
    } else if (precision != EG_PREC_F32 && N > (size_t)g_direct_max) {
        /* bf16, and int8 for the types without integer codes */
        eg_status st = qmm_bf16(kern, Y, ldy, X, ldx, N, W, err);
        if (st != EG_OK) {
            return st;
        }
    } else if (W->type == EG_GGML_F32 && N > (size_t)g_direct_max) {
        eg_sgemm(0, 1, (int)N, rows, cols, 1.0f, X, (int)ldx, (const float *)W->data, cols, 0.0f,
                 Y, (int)ldy);
    } else {
        eg_status st = N <= (size_t)g_direct_max ? qmm_direct(kern, Y, ldy, X, ldx, N, W, err)
                                                  : qmm_gemm(kern, Y, ldy, X, ldx, N, W, 0, 0, 0, err);
        if (st != EG_OK) {
            return st;
        }
    }
    if (bias != NULL) {
        #pragma omp parallel for schedule(static) if (N * (size_t)rows > 65536)
        for (size_t i = 0; i < N; i++) {
            float *y = Y + i * ldy;
            for (int j = 0; j < rows; j++) {
                y[j] += bias[j];
            }
        }
    }
    return EG_OK;
}

/* dX (N, cols) = dY (N, rows) @ W, or += with accumulate: the product with
 * the transposed weight that backward passes need (dX = dY W for Y = X W^T).
 * W stays in its stored format: row blocks of at most TILE_FLOATS are
 * dequantized into one scratch tile and multiplied by eg_sgemm (NoTrans,
 * NoTrans), each tile accumulating into dX, so no float copy of the whole
 * matrix exists unless it fits one tile. F32 matrices are used in place. */
eg_status eg_qmatmul_t(float *dX, size_t ldx, const float *dY, size_t ldy, size_t N,
                       const eg_qmat *W, int accumulate, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    if (N == 0) {
        return EG_OK;
    }
    if (W->type == EG_GGML_F32) {
        eg_sgemm(0, 0, (int)N, cols, rows, 1.0f, dY, (int)ldy, (const float *)W->data, cols,
                 accumulate ? 1.0f : 0.0f, dX, (int)ldx);
        return EG_OK;
    }
    return qmm_gemm(&copies[eg_isa_level()], dX, ldx, dY, ldy, N, W, 1, accumulate, 0, err);
}

/* The bf16 backward product: dX (N, cols) (+)= bf16(dY) (N, rows) @ bf16(W).
 * W is dequantized a row block at a time (every layer in view is one block),
 * its columns packed as panels of W^T; each block adds its share of the K
 * sum (K = W's rows) into dX. */
static eg_status qmm_t_bf16(const qmm_kernels *kern, float *dX, size_t ldx, const float *dY,
                            size_t ldy, size_t N, const eg_qmat *W, int accumulate, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    int tile = (int)(TILE_FLOATS / (size_t)cols);
    if (g_tile_rows > 0) {
        tile = g_tile_rows;
    }
    if (tile < 16) {
        tile = 16;
    }
    if (tile > rows) {
        tile = rows;
    }
    tile += tile & 1;  /* K pairs never straddle two blocks */
    const int panels = (cols + 31) / 32;
    const size_t kp2 = (size_t)((tile + 1) / 2) * 2;
    size_t ybytes;
    float *buf = eg_aligned_alloc((size_t)tile * (size_t)cols * sizeof(float));
    uint16_t *wp = eg_aligned_alloc((size_t)panels * 32 * kp2 * sizeof(uint16_t));
    uint16_t *yb = eg_mul_ovf(N, kp2 * sizeof(uint16_t), &ybytes) ? NULL : eg_aligned_alloc(ybytes);
    if (buf == NULL || wp == NULL || yb == NULL) {
        eg_aligned_free(buf);
        eg_aligned_free(wp);
        eg_aligned_free(yb);
        return eg_seterr(err, EG_ENOMEM, "out of memory for bf16 copies of a %d x %d backward "
                         "product with %zu rows", rows, cols, N);
    }
    for (int r0 = 0; r0 < rows; r0 += tile) {
        const int nr = rows - r0 < tile ? rows - r0 : tile;
        const int nchunks = (nr + 7) / 8;
        #pragma omp parallel if (nr * (size_t)cols >= 65536)
        {
            #pragma omp for schedule(dynamic, 4)
            for (int c = 0; c < nchunks; c++) {
                const int a = r0 + 8 * c, b = a + 8 < r0 + nr ? a + 8 : r0 + nr;
                kern->deq_rows(W, a, b, buf + (size_t)(a - r0) * cols);
            }
            #pragma omp for schedule(dynamic, 1)
            for (int pnl = 0; pnl < panels; pnl++) {
                const int c0 = 32 * pnl, nc = cols - c0 < 32 ? cols - c0 : 32;
                eg_bf16_pack_panel_t(wp + (size_t)pnl * 32 * ((size_t)((nr + 1) / 2) * 2), buf,
                                     (size_t)cols, c0, nc, nr);
            }
        }
        eg_bf16_pack_rows(yb, dY + r0, ldy, N, nr);
        eg_bf16_gemm_packed_acc(dX, ldx, yb, N, wp, cols, nr, accumulate || r0 > 0);
    }
    eg_aligned_free(buf);
    eg_aligned_free(wp);
    eg_aligned_free(yb);
    return EG_OK;
}

eg_status eg_qmatmul_t_prec(float *dX, size_t ldx, const float *dY, size_t ldy, size_t N,
                            const eg_qmat *W, int accumulate, int precision, eg_err *err)
{
    /* int8 has no backward product of its own: it takes the bf16 one */
    if (precision == EG_PREC_F32 || N <= (size_t)g_direct_max || N == 0) {
        return eg_qmatmul_t(dX, ldx, dY, ldy, N, W, accumulate, err);
    }
    const qmm_kernels *kern = &copies[eg_isa_level()];
    const int rows = (int)W->rows;
    if (eg_bf16_kernel_available()) {
        return qmm_t_bf16(kern, dX, ldx, dY, ldy, N, W, accumulate, err);
    }
    /* emulation: a rounded copy of dY, W rounded one tile at a time */
    float *yr = rounded_copy(dY, ldy, N, rows, "gradients", err);
    if (yr == NULL) {
        return EG_ENOMEM;
    }
    eg_status st = qmm_gemm(kern, dX, ldx, yr, (size_t)rows, N, W, 1, accumulate, 1, err);
    eg_aligned_free(yr);
    return st;
}
