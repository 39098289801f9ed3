/*
 * gemm_bf16.c — Y = X @ W^T with both operands rounded to bfloat16 and the
 * products summed in float32: the "bfloat16" precision of eg_qmatmul_prec.
 *
 * Why: on the frozen-weight products of an LLM forward, an fp32 GEMM runs at
 * the FMA rate (16 multiply-adds per instruction with AVX-512). AVX512-BF16's
 * VDPBF16PS does 32 (pairs of bf16 products added into 16 fp32 lanes), so
 * where the CPU has it (AMD Zen 4/5, Intel Cooper Lake, Sapphire Rapids and
 * later) the same product needs half the instructions. Measured on a 2-core
 * Zen 5 with this file's kernel: 400-670 GFLOP/s against OpenBLAS sgemm's
 * 170-280 on the shapes of SmolLM2 and Qwen2.5-0.5B (bench qmatmul).
 *
 * Rounding: bf16 keeps 8 significant bits, so each input carries a relative
 * error up to 2^-9 and a product of n terms an error ~ 2^-9 sqrt(n) of its
 * typical size; the sums themselves are float32. The layer states of a
 * decoder stay within cosine 0.9999 of the float32 path (tests/test_llm.py).
 *
 * Two implementations of the same arithmetic:
 * - the kernel (x86-64 with AVX512-BF16, at ENGINE_PY_ISA level avx512):
 *   W packed into panels of 32 rows, K in pairs ([panel][k/2][32 rows][2]),
 *   X converted to bf16 rows; a register tile of 32 rows x 12 tokens
 *   (24 zmm accumulators) walks K in blocks of KC so a panel's block stays
 *   in L1 while the tokens stream by;
 * - everywhere else, emulation: W and X rounded to bf16 values held in
 *   float32 and multiplied by eg_sgemm. Products of two bf16 values are exact
 *   in float32, so the two differ only in the order of float32 sums.
 * The backward product dX = dY W (eg_qmatmul_t_prec) reuses the kernel: the
 * columns of W are packed as the panel rows (eg_bf16_pack_panel_t), so the
 * kernel's Y = X Wp^T is dY W.
 * Neither is bit-reproducible across CPUs (the hardware adds each pair of
 * products before the accumulator; sgemm's order is OpenBLAS's), which is
 * why float32 stays the default precision everywhere.
 */
#include "eg.h"
#include "eg_bf16.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include "eg_isa.h"
#ifdef EG_X86_CLONES
#include <immintrin.h>
#endif

/* Register tile: 32 weight rows (two zmm of 16 fp32 lanes) x NR tokens. */
#define PANEL 32
#define NR 12
/* K (bf16 values) per block: a panel's block is PANEL * KC * 2 bytes = 32 KiB,
 * inside a 48 KiB L1 with the NR token rows (12 KiB) beside it. */
#define KC 512

static inline uint16_t round_bf16(float f)
{
    /* branch-free (a select), so the packing loops vectorise */
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const uint32_t nan = (x >> 16) | 0x40u; /* NaN stays a (quiet) NaN */
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

void eg_round_bf16_inplace(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)round_bf16(x[i]) << 16;
        memcpy(x + i, &u, 4);
    }
}

int eg_bf16_kernel_available(void)
{
#ifdef EG_X86_CLONES
    static int avail = -1;
    if (avail < 0) {
        __builtin_cpu_init();
        avail = eg_isa_level() >= 2 && __builtin_cpu_supports("avx512bf16");
    }
    return avail;
#else
    return 0;
#endif
}

size_t eg_bf16_packed_elems(int rows, int cols)
{
    size_t panels = ((size_t)rows + PANEL - 1) / PANEL;
    size_t kp = ((size_t)cols + 1) / 2;
    return panels * kp * (size_t)PANEL * 2;
}

void eg_bf16_pack_panel(uint16_t *dst, const float *W, size_t ldw, int nr, int cols)
{
    const int kpairs = (cols + 1) / 2;
    for (int kp = 0; kp < kpairs; kp++) {
        uint16_t *d = dst + (size_t)kp * PANEL * 2;
        const int k = 2 * kp;
        for (int r = 0; r < PANEL; r++) {
            if (r < nr) {
                const float *w = W + (size_t)r * ldw;
                d[2 * r] = round_bf16(w[k]);
                d[2 * r + 1] = k + 1 < cols ? round_bf16(w[k + 1]) : 0;
            } else {
                d[2 * r] = d[2 * r + 1] = 0;
            }
        }
    }
}

void eg_bf16_pack_panel_t(uint16_t *dst, const float *W, size_t ldw, int c0, int nc, int rows)
{
    /* panel rows are the columns c0 .. c0+nc of W; K runs over W's rows */
    const int kpairs = (rows + 1) / 2;
    for (int kp = 0; kp < kpairs; kp++) {
        uint16_t *d = dst + (size_t)kp * PANEL * 2;
        const int k = 2 * kp;
        const float *w0 = W + (size_t)k * ldw + c0;
        const float *w1 = k + 1 < rows ? w0 + ldw : NULL;
        if (nc == PANEL && w1 != NULL) {
            #pragma omp simd
            for (int r = 0; r < PANEL; r++) {
                d[2 * r] = round_bf16(w0[r]);
                d[2 * r + 1] = round_bf16(w1[r]);
            }
            continue;
        }
        for (int r = 0; r < PANEL; r++) {
            if (r < nc) {
                d[2 * r] = round_bf16(w0[r]);
                d[2 * r + 1] = w1 != NULL ? round_bf16(w1[r]) : 0;
            } else {
                d[2 * r] = d[2 * r + 1] = 0;
            }
        }
    }
}

void eg_bf16_pack_rows(uint16_t *dst, const float *X, size_t ldx, size_t N, int cols)
{
    const size_t kp2 = (size_t)((cols + 1) / 2) * 2;
    #pragma omp parallel for schedule(static) if (N * (size_t)cols >= ((size_t)1 << 17))
    for (size_t i = 0; i < N; i++) {
        const float *x = X + i * ldx;
        uint16_t *d = dst + i * kp2;
        #pragma omp simd
        for (int k = 0; k < cols; k++) {
            d[k] = round_bf16(x[k]);
        }
        if ((size_t)cols < kp2) {
            d[cols] = 0;
        }
    }
}

#ifdef EG_X86_CLONES
/* One register tile: Y[0..nt)[0..nrows) (+)= X rows . panel rows over the
 * K pairs [kp0, kp1). nt <= NR; rows past nrows (a short last panel) are
 * computed on the zero padding and not stored. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void tile_bf16(float *Y, size_t ldy, const uint16_t *Xb, size_t ldxb, const uint16_t *Wp,
                      int kp0, int kp1, int nt, int nrows, int accumulate)
{
    __m512 acc0[NR], acc1[NR];
    const __mmask16 m0 = nrows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nrows) - 1);
    const __mmask16 m1 = nrows >= 32 ? (__mmask16)0xffff
                       : nrows <= 16 ? (__mmask16)0 : (__mmask16)((1u << (nrows - 16)) - 1);
    for (int j = 0; j < NR; j++) {
        if (accumulate && j < nt) {
            acc0[j] = _mm512_maskz_loadu_ps(m0, Y + (size_t)j * ldy);
            acc1[j] = _mm512_maskz_loadu_ps(m1, Y + (size_t)j * ldy + 16);
        } else {
            acc0[j] = _mm512_setzero_ps();
            acc1[j] = _mm512_setzero_ps();
        }
    }
    if (nt == NR) {
        for (int kp = kp0; kp < kp1; kp++) {
            const __m512bh a0 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64);
            const __m512bh a1 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64 + 32);
            const uint16_t *xk = Xb + 2 * (size_t)kp;
#pragma GCC unroll 12
            for (int j = 0; j < NR; j++) {
                int32_t pair;
                memcpy(&pair, xk + (size_t)j * ldxb, 4);
                const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
                acc0[j] = _mm512_dpbf16_ps(acc0[j], a0, b);
                acc1[j] = _mm512_dpbf16_ps(acc1[j], a1, b);
            }
        }
    } else {
        for (int kp = kp0; kp < kp1; kp++) {
            const __m512bh a0 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64);
            const __m512bh a1 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64 + 32);
            const uint16_t *xk = Xb + 2 * (size_t)kp;
            for (int j = 0; j < nt; j++) {
                int32_t pair;
                memcpy(&pair, xk + (size_t)j * ldxb, 4);
                const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
                acc0[j] = _mm512_dpbf16_ps(acc0[j], a0, b);
                acc1[j] = _mm512_dpbf16_ps(acc1[j], a1, b);
            }
        }
    }
    for (int j = 0; j < nt; j++) {
        _mm512_mask_storeu_ps(Y + (size_t)j * ldy, m0, acc0[j]);
        _mm512_mask_storeu_ps(Y + (size_t)j * ldy + 16, m1, acc1[j]);
    }
}
#endif

void eg_bf16_gemm_packed(float *Y, size_t ldy, const uint16_t *Xb, size_t N, const uint16_t *Wp,
                         int rows, int cols)
{
    eg_bf16_gemm_packed_acc(Y, ldy, Xb, N, Wp, rows, cols, 0);
}

void eg_bf16_gemm_packed_acc(float *Y, size_t ldy, const uint16_t *Xb, size_t N,
                             const uint16_t *Wp, int rows, int cols, int accumulate)
{
#ifdef EG_X86_CLONES
    const int kpairs = (cols + 1) / 2;
    const size_t ldxb = (size_t)kpairs * 2;
    const int panels = (rows + PANEL - 1) / PANEL;
    const int nblocks = (int)((N + NR - 1) / NR);
    const int ntasks = panels * nblocks;
    const int nthr = eg_get_num_threads();
    /* one task: a panel against NR tokens over one K block; every K block
     * finishes (the barrier of `omp for`) before the next adds to Y */
    #pragma omp parallel num_threads(nthr) if (nthr > 1 && (size_t)rows * cols * N >= ((size_t)1 << 20))
    for (int kp0 = 0; kp0 < kpairs; kp0 += KC / 2) {
        const int kp1 = kp0 + KC / 2 < kpairs ? kp0 + KC / 2 : kpairs;
        #pragma omp for schedule(dynamic, 4)
        for (int t = 0; t < ntasks; t++) {
            const int p = t / nblocks;
            const size_t j0 = (size_t)(t % nblocks) * NR;
            const int nt = N - j0 < NR ? (int)(N - j0) : NR;
            const int nrows = rows - p * PANEL < PANEL ? rows - p * PANEL : PANEL;
            tile_bf16(Y + j0 * ldy + (size_t)p * PANEL, ldy, Xb + j0 * ldxb, ldxb,
                      Wp + (size_t)p * PANEL * ldxb, kp0, kp1, nt, nrows, accumulate || kp0 > 0);
        }
    }
#else
    (void)Y; (void)ldy; (void)Xb; (void)N; (void)Wp; (void)rows; (void)cols; (void)accumulate;
#endif
}
