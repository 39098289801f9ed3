/*
 * gemm_prec.c — the float GEMM at a chosen precision: C = alpha op(A) op(B)
 * + beta C, exactly eg_sgemm's contract, with EG_PREC_F32 (eg_sgemm itself)
 * or EG_PREC_BF16 (both operands rounded to bfloat16, products summed in
 * float32; eg_bf16.h).
 *
 * Why: the trainable side structures (ENGINE's ladders) spend most of a
 * step in small-K GEMMs over float activations. eg_qmatmul_prec covers
 * products with frozen quantized weights; this covers the general case
 * (either operand transposed, both of them activations or parameters), so
 * a training step's forward, dX and dW products can all use the bf16
 * kernel of gemm_bf16.c.
 *
 * How: the kernel computes Y = Xb Wp^T with Xb the bf16 rows of op(A)
 * (M x K) and Wp the 32-row panels of op(B)^T (N x K). Each operand is
 * rounded and packed once per call, O(MK + NK) work beside the product's
 * O(MNK); a transposed A goes through 16 x 16 in-register transposes
 * (eg_bf16_pack_rows_t), a B that is not transposed needs none (its K rows
 * pair up directly into the panels, eg_bf16_pack_panel_t). Without AVX512-BF16 the same arithmetic is emulated
 * (rounded float copies through eg_sgemm: products of two bf16 values are
 * exact in float32, so only the order of the float32 sums differs). If the
 * packed copies cannot be allocated the product falls back to float32,
 * which is the more exact answer, never a wrong one.
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_ops.h"

#include <string.h>

#define PANEL 32

/* The kernel's product. Returns 0 when the copies could not be allocated. */
static int gemm_bf16_kernel(int transA, int transB, int M, int N, int K, const float *A, int lda,
                            const float *B, int ldb, float *C, int ldc, int accumulate)
{
    const size_t kp2 = (size_t)((K + 1) / 2) * 2;
    size_t xbytes;
    if (eg_mul_ovf((size_t)M, kp2 * sizeof(uint16_t), &xbytes)) {
        return 0;
    }
    uint16_t *xb = eg_aligned_alloc(xbytes);
    uint16_t *wp = eg_aligned_alloc(eg_bf16_packed_elems(N, K) * sizeof(uint16_t));
    if (xb == NULL || wp == NULL) {
        eg_aligned_free(xb);
        eg_aligned_free(wp);
        return 0;
    }
    if (transA) {
        eg_bf16_pack_rows_t(xb, A, (size_t)lda, M, K);
    } else {
        eg_bf16_pack_rows(xb, A, (size_t)lda, (size_t)M, K);
    }
    if (transB) {
        /* B is (N x K): panel rows are B's rows */
        const int panels = (N + PANEL - 1) / PANEL;
        #pragma omp parallel for schedule(static) if ((size_t)N * (size_t)K >= ((size_t)1 << 17))
        for (int p = 0; p < panels; p++) {
            const int c0 = PANEL * p, nc = N - c0 < PANEL ? N - c0 : PANEL;
            eg_bf16_pack_panel(wp + (size_t)p * PANEL * kp2, B + (size_t)c0 * ldb, (size_t)ldb, nc, K);
        }
    } else {
        /* B is (K x N): panel rows are B's columns */
        eg_bf16_pack_panels_t(wp, B, (size_t)ldb, N, K);
    }
    eg_bf16_gemm_packed_acc(C, (size_t)ldc, xb, (size_t)M, wp, N, K, accumulate);
    eg_aligned_free(xb);
    eg_aligned_free(wp);
    return 1;
}

/* Rounded float copy of a (rows x cols, stride ld) matrix, contiguous. */
static float *rounded(const float *X, int ld, int rows, int cols)
{
    size_t n;
    if (eg_mul_ovf((size_t)rows, (size_t)cols * sizeof(float), &n)) {
        return NULL;
    }
    float *r = eg_aligned_alloc(n ? n : sizeof(float));
    if (r == NULL) {
        return NULL;
    }
    for (int i = 0; i < rows; i++) {
        memcpy(r + (size_t)i * cols, X + (size_t)i * ld, (size_t)cols * sizeof(float));
    }
    eg_round_bf16_inplace(r, (size_t)rows * (size_t)cols);
    return r;
}

void eg_gemm_prec(int prec, int transA, int transB, int M, int N, int K, float alpha,
                  const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (prec != EG_PREC_BF16 || M <= 0 || N <= 0 || K <= 0) {
        eg_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (eg_bf16_kernel_available()) {
        /* the kernel overwrites or adds: other alpha/beta go through a
         * temporary product (none of the callers uses them today) */
        if (alpha == 1.0f && (beta == 0.0f || beta == 1.0f)) {
            if (gemm_bf16_kernel(transA, transB, M, N, K, A, lda, B, ldb, C, ldc, beta == 1.0f)) {
                return;
            }
        } else {
            size_t n;
            float *T = eg_mul_ovf((size_t)M, (size_t)N * sizeof(float), &n) ? NULL : eg_aligned_alloc(n);
            if (T != NULL && gemm_bf16_kernel(transA, transB, M, N, K, A, lda, B, ldb, T, N, 0)) {
                for (int i = 0; i < M; i++) {
                    float *c = C + (size_t)i * ldc;
                    const float *t = T + (size_t)i * N;
                    for (int j = 0; j < N; j++) {
                        c[j] = alpha * t[j] + (beta == 0.0f ? 0.0f : beta * c[j]);
                    }
                }
                eg_aligned_free(T);
                return;
            }
            eg_aligned_free(T);
        }
    } else {
        const int ar = transA ? K : M, ac = transA ? M : K;
        const int br = transB ? N : K, bc = transB ? K : N;
        float *ra = rounded(A, lda, ar, ac), *rb = rounded(B, ldb, br, bc);
        if (ra != NULL && rb != NULL) {
            eg_sgemm(transA, transB, M, N, K, alpha, ra, ac, rb, bc, beta, C, ldc);
            eg_aligned_free(ra);
            eg_aligned_free(rb);
            return;
        }
        eg_aligned_free(ra);
        eg_aligned_free(rb);
    }
    eg_sgemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
