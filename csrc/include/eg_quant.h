/*
 * eg_quant.h — ggml tensor types: ids, block layouts, and dequantization to
 * float32.
 *
 * The ids and byte layouts are ggml's (llama.cpp ggml-common.h), because
 * GGUF files store tensors in them. Each quantized type packs `block_size`
 * consecutive elements of a row (32, or 256 for the K-quants) into a block of
 * `type_size` bytes; fp16 scales are IEEE binary16 bits. The structs below
 * are packed (alignment 1) so they can be read wherever a file puts them;
 * the _Static_asserts pin their sizes. The dequantization kernels and the
 * future quantized matmul share these definitions.
 *
 * Dequantization is bit-identical to the `gguf` Python package
 * (gguf.quants.dequantize): every value is computed in float32 with the same
 * operations in the same order (e.g. Q4_1: d * q + m as a product then a
 * sum, never fused; Q4_K: (d * sc) * q - dmin * m).
 */
#ifndef EG_QUANT_H
#define EG_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "eg.h"

#include <string.h>

/* fp16 bits to float: the core's conversion (eg_f16_to_f32), inline and
 * branch-free: the exponent and mantissa moved into float position and
 * scaled by 2^112 (exact, subnormals included), inf/NaN given the float
 * exponent. Used by the vectorised dequantizers and the int8 repack, which
 * the repack and dequantization tests check against eg_f16_to_f32. */
/* The header of a Q5_0 (has_m 0) / Q5_1 (has_m 1) block at s: the fp16
 * scale, the fp16 min (Q5_1; 0 otherwise), the 32 fifth bits (bit j for
 * value j) and where the packed low nibbles start. Shared by the
 * dequantizers and the int8 repack. */
static inline const uint8_t *eg_q5_header(const uint8_t *s, int has_m, uint16_t *dh, uint16_t *mh,
                                          uint32_t *qh)
{
    uint8_t qhb[4];
    memcpy(dh, s, 2);
    *mh = 0;
    if (has_m) {
        memcpy(mh, s + 2, 2);
    }
    memcpy(qhb, s + (has_m ? 4 : 2), 4);
    *qh = (uint32_t)qhb[0] | (uint32_t)qhb[1] << 8 | (uint32_t)qhb[2] << 16 | (uint32_t)qhb[3] << 24;
    return s + (has_m ? 8 : 6);
}

static inline float eg_h2f_inline(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    const uint32_t em = h & 0x7fffu;
    const uint32_t b0 = em << 13;
    float f;
    memcpy(&f, &b0, 4);
    f *= 0x1.0p112f;
    uint32_t bits;
    memcpy(&bits, &f, 4);
    bits |= (em >= 0x7c00u) ? 0x7f800000u : 0u;
    bits |= sign;
    memcpy(&f, &bits, 4);
    return f;
}

#ifdef __cplusplus
extern "C" {
#endif

/* ggml type ids as stored in GGUF tensor infos (gaps are retired ids). */
typedef enum {
    EG_GGML_F32 = 0,
    EG_GGML_F16 = 1,
    EG_GGML_Q4_0 = 2,
    EG_GGML_Q4_1 = 3,
    EG_GGML_Q5_0 = 6,
    EG_GGML_Q5_1 = 7,
    EG_GGML_Q8_0 = 8,
    EG_GGML_Q8_1 = 9,
    EG_GGML_Q2_K = 10,
    EG_GGML_Q3_K = 11,
    EG_GGML_Q4_K = 12,
    EG_GGML_Q5_K = 13,
    EG_GGML_Q6_K = 14,
    EG_GGML_Q8_K = 15,
    EG_GGML_BF16 = 30,
    EG_GGML_TYPE_LIMIT = 64   /* ids below this can be named in messages */
} eg_ggml_type;

#define EG_QK 32     /* elements per block of the simple quants */
#define EG_QK_K 256  /* elements per super-block of the K-quants */

#define EG_PACKED __attribute__((packed))

/* x = d * (q - 8), q the 4-bit value; element j < 16 is the low nibble of
 * qs[j], element j + 16 its high nibble. */
typedef struct EG_PACKED { uint16_t d; uint8_t qs[EG_QK / 2]; } eg_block_q4_0;
/* x = d * q + m */
typedef struct EG_PACKED { uint16_t d, m; uint8_t qs[EG_QK / 2]; } eg_block_q4_1;
/* 5-bit q: the nibble as in Q4_0 plus bit j of qh (little-endian u32) as
 * bit 4; x = d * (q - 16) */
typedef struct EG_PACKED { uint16_t d; uint8_t qh[4]; uint8_t qs[EG_QK / 2]; } eg_block_q5_0;
/* x = d * q + m */
typedef struct EG_PACKED { uint16_t d, m; uint8_t qh[4]; uint8_t qs[EG_QK / 2]; } eg_block_q5_1;
/* x = d * qs[j] */
typedef struct EG_PACKED { uint16_t d; int8_t qs[EG_QK]; } eg_block_q8_0;
/* 16 groups of 16; x = (d * (sc & 15)) * q - dmin * (sc >> 4), q 2 bits */
typedef struct EG_PACKED {
    uint8_t scales[EG_QK_K / 16];
    uint8_t qs[EG_QK_K / 4];
    uint16_t d, dmin;
} eg_block_q2_K;
/* 16 groups of 16; 6-bit signed scales packed in 12 bytes; q = 2 low bits
 * minus 4 when the hmask bit is clear; x = (d * (sc - 32)) * q */
typedef struct EG_PACKED {
    uint8_t hmask[EG_QK_K / 8];
    uint8_t qs[EG_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} eg_block_q3_K;
/* 8 groups of 32 with 6-bit scale and min packed in 12 bytes;
 * x = (d * sc) * q - dmin * m, q 4 bits */
typedef struct EG_PACKED {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qs[EG_QK_K / 2];
} eg_block_q4_K;
/* as Q4_K with a fifth bit per element in qh */
typedef struct EG_PACKED {
    uint16_t d, dmin;
    uint8_t scales[12];
    uint8_t qh[EG_QK_K / 8];
    uint8_t qs[EG_QK_K / 2];
} eg_block_q5_K;
/* 16 groups of 16 with int8 scales; q 6 bits (4 in ql, 2 in qh) minus 32;
 * x = (d * sc) * q */
typedef struct EG_PACKED {
    uint8_t ql[EG_QK_K / 2];
    uint8_t qh[EG_QK_K / 4];
    int8_t scales[EG_QK_K / 16];
    uint16_t d;
} eg_block_q6_K;
/* llama.cpp's activation format for K-quant dot products: x = d * qs[j]
 * (float32 d); bsums[g] = sum of qs over group g of 16 */
typedef struct EG_PACKED {
    float d;
    int8_t qs[EG_QK_K];
    int16_t bsums[EG_QK_K / 16];
} eg_block_q8_K;

_Static_assert(sizeof(eg_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(eg_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(eg_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(eg_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(eg_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(eg_block_q2_K) == 84, "q2_K layout");
_Static_assert(sizeof(eg_block_q3_K) == 110, "q3_K layout");
_Static_assert(sizeof(eg_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(eg_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(eg_block_q6_K) == 210, "q6_K layout");
_Static_assert(sizeof(eg_block_q8_K) == 292, "q8_K layout");

/* Traits of a type this build knows: 0 and *block_size / *type_size set, or
 * -1 for an id it does not support (retired, IQ*, TQ*, MXFP4, integer types). */
int eg_ggml_type_traits(int type, size_t *block_size, size_t *type_size);
/* "Q4_K" etc., "?" for an unknown id. */
const char *eg_ggml_type_name(int type);
/* The names of the supported types, space-separated, for error messages. */
const char *eg_ggml_supported_names(void);
/* 1 if eg_dequantize handles the type. */
int eg_ggml_can_dequantize(int type);

/* Dequantize n elements (a multiple of the type's block size, which the
 * caller has validated) of `type` at src into dst (float32). src needs no
 * alignment. Threads over blocks when the work is large (the result does not
 * depend on the thread count). Kernels cannot fail: an unsupported type
 * fills dst with NaN (callers check eg_ggml_can_dequantize first). */
void eg_dequantize(int type, const void *src, float *dst, size_t n);

/* ------------------------------------------------------- quantized matmul
 * A weight matrix kept in its file's format: `rows` output features, each a
 * row of `cols` input features stored as cols / block_size blocks (PyTorch's
 * (out, in) layout; GGUF's ne[0] = cols, ne[1] = rows). `data` usually
 * points into an mmap'd file and is only read. */
typedef struct {
    int type;          /* eg_ggml_type */
    int64_t rows;      /* output features */
    int64_t cols;      /* input features, a multiple of the block size */
    size_t row_bytes;  /* bytes of one row: cols / block_size * type_size */
    const void *data;  /* rows * row_bytes bytes */
} eg_qmat;

/* Fill *w for a (rows, cols) matrix of `type` at data; EINVAL when the type
 * is not one eg_qmatmul handles or cols is not a multiple of its block size
 * (the message names `what`), EOVERFLOW when the byte size overflows. */
eg_status eg_qmat_init(eg_qmat *w, int type, int64_t rows, int64_t cols, const void *data,
                 const char *what, eg_err *err);

/* Row r of w as float32 (cols values): an embedding lookup. */
void eg_qmat_row(const eg_qmat *w, int64_t r, float *out);

/* Y = X @ W^T (+ bias): X is (N, cols) float32 with row stride ldx, Y is
 * (N, rows) with row stride ldy (>= rows), bias (rows) or NULL. Two paths,
 * both using eg_dequantize's exact weight values:
 * - N <= eg_qmatmul_direct_max() (EG_QMM_DIRECT_MAX, 64): the direct path.
 *   Rows are dequantized a few at a time into a per-thread buffer and
 *   multiplied by every token with the core's own dot product: 16 lanes,
 *   lane l accumulating the terms k = l (mod 16) in order of k by fused
 *   multiply-adds, the lanes then summed by a fixed tree (qmatmul_simd.h).
 *   Y[t][r] depends only on X[t] and row r: not on N, the other tokens,
 *   the thread count or the ISA level (bit-identical on generic, AVX2 and
 *   AVX-512). It differs from a GEMM's result by float32 rounding only.
 * - larger N: the GEMM path. The weights are dequantized (in parallel) into
 *   a float tile, the whole matrix up to 32 MiB, and multiplied by the
 *   core's float GEMM (eg_sgemm, threaded): the result is bit for bit
 *   eg_sgemm(X, eg_dequantize(W)^T) when W fits one tile (every model
 *   layer in view), on every ISA level; as for any sgemm, a row may differ
 *   in float32 rounding with N, the thread count or the BLAS kernel (§8).
 * Threads with the core's thread count. Returns EG_OK or EG_ENOMEM
 * (scratch). Never call inside an OpenMP region. */
eg_status eg_qmatmul(float *Y, size_t ldy, const float *X, size_t ldx, size_t N, const eg_qmat *W,
               const float *bias, eg_err *err);

/* eg_qmatmul with a precision (eg_bf16.h): EG_PREC_F32 is eg_qmatmul;
 * EG_PREC_BF16 rounds X and the dequantized weights to bfloat16 and sums the
 * products in float32 (ops/gemm_bf16.c) when N > eg_qmatmul_direct_max();
 * EG_PREC_INT8 multiplies int8-quantized X by the weights' integer codes
 * (eg_qmatmul_int8) for the types that have them, and takes the bfloat16
 * path for the others (F32, F16, BF16, Q2_K, Q3_K). Smaller batches, which
 * are bound by reading the weights rather than by arithmetic, take the
 * float32 direct path whatever the precision. */
eg_status eg_qmatmul_prec(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                          const eg_qmat *W, const float *bias, int precision, eg_err *err);

/* dX (N, cols) = dY (N, rows) @ W (accumulate 0), or dX += dY @ W
 * (accumulate 1): the product with the transposed weight of a backward pass.
 * dY rows have stride ldy, dX rows ldx. W is read in its stored format:
 * row blocks of at most 32 MiB are dequantized into a scratch tile and
 * multiplied by the float GEMM, accumulating into dX (no float copy of the
 * whole matrix beyond one tile). EG_OK or EG_ENOMEM. Never call inside an
 * OpenMP region. */
eg_status eg_qmatmul_t(float *dX, size_t ldx, const float *dY, size_t ldy, size_t N,
                       const eg_qmat *W, int accumulate, eg_err *err);

/* eg_qmatmul_t with a precision (eg_bf16.h): EG_PREC_F32 is eg_qmatmul_t;
 * EG_PREC_INT8 is EG_PREC_BF16 here (no int8 backward product); EG_PREC_BF16
 * rounds dY and the dequantized W to bfloat16 and sums the
 * products in float32 — with the AVX512-BF16 kernel on panels of W^T packed
 * from one dequantized tile of W (at most 32 MiB; a larger W is done in row
 * blocks), else emulated (rounded float copies and eg_sgemm). Batches of at
 * most eg_qmatmul_direct_max() rows take the float32 path. EG_OK or
 * EG_ENOMEM. Never call inside an OpenMP region. */
eg_status eg_qmatmul_t_prec(float *dX, size_t ldx, const float *dY, size_t ldy, size_t N,
                            const eg_qmat *W, int accumulate, int precision, eg_err *err);

/* ---- int8 products (ops/qmatmul_int8.c; EG_PREC_INT8) ----
 * Activations are quantized per token and per block of 32 columns (scale
 * amax / 127, codes rounded to nearest even, clamped to +-127), the weights
 * used as their integer codes with their scales and mins; integer sums are
 * exact and the float scales applied in one fixed order, so every kernel
 * (generic C, AVX2, AVX-VNNI, AVX512-VNNI) gives the same bits. */

/* 1 for the types the int8 kernels read (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K
 * Q6_K); eg_qmatmul_prec sends the others to the bfloat16 path. */
int eg_int8_supported_type(int type);

/* Y (N, rows) = int8 product of X (N, cols) and W, cols % 32 == 0 and a
 * supported type (else EINVAL); no bias. EG_OK, EG_ENOMEM, EG_EOVERFLOW.
 * Never call inside an OpenMP region. */
eg_status eg_qmatmul_int8(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                          const eg_qmat *W, eg_err *err);

/* The activation quantizer: for N rows of X (cols % 32 == 0), xu (N, cols)
 * gets the codes q + 128, xd (N, cols / 32) the scales dx, xds the products
 * dx * sum(q) of each block. A block with max|x| < 2^-120 gets q = 0,
 * dx = 0; a block holding an inf or NaN gets q = 0, dx = NaN. */
void eg_q8_quantize_rows(uint8_t *xu, float *xd, float *xds, const float *X, size_t ldx,
                         size_t N, int cols);

/* The repacked layout: a panel of 16 rows is cols / 32 of these blocks, one
 * per 32 columns; row r's value at column 4j + i of the block is
 * d * q[j][r][i] + m with d = d0[r] for columns 0..15 and d1[r] for 16..31
 * (equal unless the type has 16-column scales: Q6_K), m = m[r] (0 for
 * types without mins). c0 / c1 = -128 * the sum of q over columns 0..15 /
 * 16..31 for Q6_K; for the other types c0 is -128 * the sum over all 32
 * and c1 = 0 (VPDPBUSD multiplies unsigned activation codes q + 128, and
 * c removes the 128). Rows past a short panel's end are zero. */
#define EG_INT8_PANEL_ROWS 16
typedef struct {
    int8_t q[8][EG_INT8_PANEL_ROWS][4];
    float d0[EG_INT8_PANEL_ROWS];
    float d1[EG_INT8_PANEL_ROWS];
    float m[EG_INT8_PANEL_ROWS];
    int32_t c0[EG_INT8_PANEL_ROWS];
    int32_t c1[EG_INT8_PANEL_ROWS];
} eg_int8_block;

/* Bytes of one repacked 16-row panel of a matrix with cols columns, and the
 * repack itself (rows r0 .. r0 + nr of W, nr <= 16, into a 64-byte aligned
 * dst; scratch: 16 * cols int8 and 48 * cols / 32 floats). Exposed for
 * tests. */
size_t eg_int8_panel_bytes(int cols);
void eg_int8_pack_panel(void *dst, const eg_qmat *W, int r0, int nr, int8_t *wscratch,
                        float *fscratch);

/* The kernel used here: 3 AVX512-VNNI, 2 AVX-VNNI (256-bit), 1 AVX2, 0
 * generic C (within ENGINE_PY_ISA's cap), and its name. */
int eg_int8_kernel_level(void);
const char *eg_int8_kernel_name(int level);
/* Tests: run kernel `level` (<= eg_int8_kernel_level(); -1 clears) instead;
 * returns the previous override. Not thread-safe against running products. */
int eg_int8_force_level(int level);

/* The int8 peak probe: `iters` rounds of 12 independent VPDPBUSD on every
 * core thread; returns the ops done (2 per multiply-add; the caller times
 * the call), 0 when the CPU has no VNNI. */
double eg_int8_peak_ops(long iters);

/* Batches of at most this many tokens take eg_qmatmul's direct path. */
#define EG_QMM_DIRECT_MAX 64

/* Test and benchmark hooks, not thread-safe against a running eg_qmatmul:
 * set the largest batch of the direct path (n >= 0; 0 sends every batch
 * through the GEMM path) or the rows per tile of the GEMM path (n > 0; 0
 * the default); n < 0 only asks. Each returns the previous value. */
int eg_qmatmul_direct_max(int n);
int eg_qmatmul_tile_rows(int n);

#ifdef __cplusplus
}
#endif
#endif /* EG_QUANT_H */
