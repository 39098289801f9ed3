/*
 * eg_bf16.h — the bfloat16 product (ops/gemm_bf16.c): Y = X @ W^T with X and
 * W rounded to bf16 (round to nearest even) and the products summed in
 * float32. Used by eg_qmatmul_prec(..., EG_PREC_BF16); see gemm_bf16.c for
 * the kernel and its error.
 */
#ifndef EG_BF16_H
#define EG_BF16_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Precision of the frozen-weight products (eg_qmatmul_prec): float32,
 * bfloat16 inputs with float32 sums, or int8 activations times the
 * weights' integer codes (ops/qmatmul_int8.c; eg_quant.h). */
enum { EG_PREC_F32 = 0, EG_PREC_BF16 = 1, EG_PREC_INT8 = 2 };

/* 1 when the AVX512-BF16 kernel runs here (the CPU has it and
 * ENGINE_PY_ISA allows avx512), 0 when bf16 products are emulated with
 * float32 arithmetic on rounded values. */
int eg_bf16_kernel_available(void);

/* Round every value of x to the nearest bf16 (ties to even), kept as float. */
void eg_round_bf16_inplace(float *x, size_t n);

/* uint16 elements of a (rows, cols) matrix packed for the kernel: panels of
 * 32 rows, cols rounded up to even. */
size_t eg_bf16_packed_elems(int rows, int cols);

/* Pack nr <= 32 rows of W (row stride ldw) as one panel at dst, padding
 * rows nr..31 and an odd last column with zeros. dst must be 64-byte
 * aligned; panel p of a matrix starts at p * 32 * (cols rounded up to even). */
void eg_bf16_pack_panel(uint16_t *dst, const float *W, size_t ldw, int nr, int cols);

/* Pack the TRANSPOSE of W's columns c0 .. c0+nc (nc <= 32) as one panel:
 * panel row r is column c0 + r of the (rows, ldw-strided) float matrix W,
 * and K runs over W's rows (padded to even). With every panel packed this
 * way, eg_bf16_gemm_packed computes X @ W (the backward product dX = dY W). */
void eg_bf16_pack_panel_t(uint16_t *dst, const float *W, size_t ldw, int c0, int nc, int rows);

/* Every panel of the product X @ W for a (rows, ncols) W (row stride ldw):
 * panel p at dst + p * 32 * (rows rounded up to even) is
 * eg_bf16_pack_panel_t(W, ldw, 32 p, ...), written in one pass over W's
 * rows. Threaded for large matrices. */
void eg_bf16_pack_panels_t(uint16_t *dst, const float *W, size_t ldw, int ncols, int rows);

/* One pass over X (N, cols; row stride ldx) giving both bf16 layouts a
 * product and its weight gradient need: xb as eg_bf16_pack_rows (Y = X W^T)
 * and wp as eg_bf16_pack_panels_t(X, ldx, cols, N) (dW = dY^T X). Returns
 * nonzero when X holds a NaN or inf (then the packed values are not to be
 * used). */
int eg_bf16_pack_rows_panels_t(uint16_t *xb, uint16_t *wp, const float *X, size_t ldx, int N,
                               int cols);

/* X (N, cols, row stride ldx) as bf16 rows of cols rounded up to even
 * (a zero pad), contiguous. Threaded for large N * cols. */
void eg_bf16_pack_rows(uint16_t *dst, const float *X, size_t ldx, size_t N, int cols);

/* The rows of A^T as eg_bf16_pack_rows packs X: A is (K, M) with row stride
 * lda, dst gets M rows of K bf16 (rounded up to even, zero pad). For
 * products whose K runs over the rows of a row-major matrix (dW = dY^T X).
 * Threaded for large M * K. */
void eg_bf16_pack_rows_t(uint16_t *dst, const float *A, size_t lda, int M, int K);

/* Y (N, rows; row stride ldy) = Xb @ Wp^T with the kernel. Only call when
 * eg_bf16_kernel_available(); never inside an OpenMP region. */
void eg_bf16_gemm_packed(float *Y, size_t ldy, const uint16_t *Xb, size_t N, const uint16_t *Wp,
                         int rows, int cols);
/* The same, adding to Y when accumulate != 0. */
void eg_bf16_gemm_packed_acc(float *Y, size_t ldy, const uint16_t *Xb, size_t N,
                             const uint16_t *Wp, int rows, int cols, int accumulate);

#ifdef __cplusplus
}
#endif
#endif /* EG_BF16_H */
