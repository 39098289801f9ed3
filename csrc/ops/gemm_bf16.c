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

#include <math.h>
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
/* K (bf16 values) per block, at most: a panel's block is PANEL * KC * 2 bytes
 * = 40 KiB, inside a 48 KiB L1 (Zen 4/5, Sapphire Rapids; 32 KiB L1s keep it
 * in L2) with a token tile's rows beside it. K is cut into equal blocks
 * (K = 576: one block, not 512 + 64, whose second pass would reload and
 * store every accumulator for 64 values of K). */
#define KC 640

static inline uint16_t round_bf16(float f)
{
    /* branch-free (a select), so the scalar packing loops vectorise */
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

static void pack_panel_scalar(uint16_t *dst, const float *W, size_t ldw, int nr, int cols)
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

static void pack_row_scalar(uint16_t *d, const float *x, int cols)
{
    for (int k = 0; k < cols; k++) {
        d[k] = round_bf16(x[k]);
    }
    if (cols % 2) {
        d[cols] = 0;
    }
}

#ifdef EG_X86_CLONES
/* The packers in AVX-512 integer arithmetic: the same rounding as
 * round_bf16, bit for bit, on 16 values at a time (VCVTNE2PS2BF16 would
 * flush denormal inputs to zero, so it is not used). On the SmolLM2 shapes
 * the scalar packing cost as much as a third of the product's time. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static inline __m256i round16_bf16(__m512 v)
{
    const __m512i x = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(1));
    const __m512i rne = _mm512_srli_epi32(
        _mm512_add_epi32(x, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(x, 16), _mm512_set1_epi32(0x40));
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    return _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rne, quiet));
}

/* r[0..16) as a 16 x 16 matrix of 32-bit values, transposed in place
 * (unpack 32, unpack 64, two 128-bit lane shuffles). */
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline))
static inline void transpose16x16_epi32(__m512i *r)
{
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int h = 0; h < 16; h += 8) {
        for (int i = 0; i < 4; i++) {
            t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + 4 + i], 0x88);
            t[h + 4 + i] = _mm512_shuffle_i32x4(r[h + i], r[h + 4 + i], 0xdd);
        }
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0x88);
        r[8 + i] = _mm512_shuffle_i32x4(t[i], t[8 + i], 0xdd);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_panel_avx512(uint16_t *dst, const float *W, size_t ldw, int nr, int cols)
{
    const int kpairs = (cols + 1) / 2;
    for (int kp0 = 0; kp0 < kpairs; kp0 += 16) {
        const int k0 = 2 * kp0;
        const int left = cols - k0;   /* floats of this block in a row, >= 1 */
        const __mmask16 ma = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        const __mmask16 mb = left >= 32 ? (__mmask16)0xffff
                           : left <= 16 ? (__mmask16)0 : (__mmask16)((1u << (left - 16)) - 1);
        const int npairs = kpairs - kp0 < 16 ? kpairs - kp0 : 16;
        uint32_t *base = (uint32_t *)(void *)dst + (size_t)kp0 * PANEL;
        /* 16 rows at a time: row r's pairs kp0..kp0+15 as one vector, then
         * a transpose gives pair kp's 16 rows as one vector */
        for (int rb = 0; rb < PANEL; rb += 16) {
            __m512i v[16];
            for (int i = 0; i < 16; i++) {
                v[i] = _mm512_setzero_si512();
                if (rb + i < nr) {
                    const float *w = W + (size_t)(rb + i) * ldw + k0;
                    const __m256i lo = round16_bf16(_mm512_maskz_loadu_ps(ma, w));
                    const __m256i hi = round16_bf16(_mm512_maskz_loadu_ps(mb, w + 16));
                    v[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
                }
            }
            transpose16x16_epi32(v);
            for (int c = 0; c < npairs; c++) {
                _mm512_storeu_si512(base + (size_t)c * PANEL + rb, v[c]);
            }
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_row_avx512(uint16_t *d, const float *x, int cols)
{
    int k = 0;
    for (; k + 16 <= cols; k += 16) {
        _mm256_storeu_si256((__m256i *)(void *)(d + k), round16_bf16(_mm512_loadu_ps(x + k)));
    }
    if (k < cols) {
        const __mmask16 m = (__mmask16)((1u << (cols - k)) - 1);
        _mm256_mask_storeu_epi16(d + k, m, round16_bf16(_mm512_maskz_loadu_ps(m, x + k)));
    }
    if (cols % 2) {
        d[cols] = 0;
    }
}

/* 16 bf16 pairs (a[j], b[j]) as 16 32-bit lanes, a in the low half: the
 * kernel's K-pair layout for two consecutive K rows of a node-major matrix.
 * Lanes past the masks' ends are zero. */
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline))
static inline __m512i pairs16(const float *a, const float *b, __mmask16 m)
{
    const __m512i lo = _mm512_cvtepu16_epi32(round16_bf16(_mm512_maskz_loadu_ps(m, a)));
    if (b == NULL) {
        return lo;
    }
    const __m512i hi = _mm512_cvtepu16_epi32(round16_bf16(_mm512_maskz_loadu_ps(m, b)));
    return _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16));
}

static inline __mmask16 mask16(int n)
{
    return n >= 16 ? (__mmask16)0xffff : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* eg_bf16_pack_panel_t: K rows k, k+1 of W give one pair row of the panel
 * directly (no transpose: the panel's rows are W's columns). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_panel_t_avx512(uint16_t *dst, const float *W, size_t ldw, int c0, int nc, int rows)
{
    const int kpairs = (rows + 1) / 2;
    const __mmask16 m0 = mask16(nc), m1 = mask16(nc - 16);
    for (int kp = 0; kp < kpairs; kp++) {
        const float *w0 = W + (size_t)(2 * kp) * ldw + c0;
        const float *w1 = 2 * kp + 1 < rows ? w0 + ldw : NULL;
        uint32_t *d = (uint32_t *)(void *)(dst + (size_t)kp * PANEL * 2);
        _mm512_store_si512(d, pairs16(w0, w1, m0));
        _mm512_store_si512(d + 16, pairs16(w0 + 16, w1 != NULL ? w1 + 16 : NULL, m1));
    }
}

/* eg_bf16_pack_panels_t for the K pairs [kp0, kp1): each pair of W's rows
 * is read once, left to right, and split over every panel (the per-panel
 * order above reads 32-float slices of every row, panel after panel, which
 * streamed at a third of the speed on a 2254 x 384 matrix). */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_panels_t_avx512(uint16_t *dst, const float *W, size_t ldw, int ncols, int rows,
                                 int kp0, int kp1)
{
    const size_t kp2 = (size_t)((rows + 1) / 2) * 2;
    const int panels = (ncols + PANEL - 1) / PANEL;
    for (int kp = kp0; kp < kp1; kp++) {
        const float *w0 = W + (size_t)(2 * kp) * ldw;
        const float *w1 = 2 * kp + 1 < rows ? w0 + ldw : NULL;
        for (int p = 0; p < panels; p++) {
            const int c0 = PANEL * p;
            uint32_t *d = (uint32_t *)(void *)(dst + (size_t)p * PANEL * kp2 + (size_t)kp * PANEL * 2);
            _mm512_store_si512(d, pairs16(w0 + c0, w1 != NULL ? w1 + c0 : NULL, mask16(ncols - c0)));
            _mm512_store_si512(d + 16, pairs16(w0 + c0 + 16, w1 != NULL ? w1 + c0 + 16 : NULL,
                                               mask16(ncols - c0 - 16)));
        }
    }
}

/* eg_bf16_pack_rows_panels_t for the row pairs [kp0, kp1): each pair of X's
 * rows is read once and written both as two bf16 rows and as one pair row
 * of every column panel; returns nonzero if a value was NaN or inf. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static int pack_rows_panels_t_avx512(uint16_t *xb, uint16_t *wp, const float *X, size_t ldx, int N,
                                     int cols, int kp0, int kp1)
{
    const size_t kpc = (size_t)((cols + 1) / 2) * 2;   /* row stride of xb */
    const size_t kpn = (size_t)((N + 1) / 2) * 2;      /* K (rows) of the panels, even */
    const __m512i expo = _mm512_set1_epi32(0x7f800000);
    __mmask16 bad = 0;
    for (int kp = kp0; kp < kp1; kp++) {
        const int r0 = 2 * kp;
        const float *x0 = X + (size_t)r0 * ldx;
        const float *x1 = r0 + 1 < N ? x0 + ldx : NULL;
        for (int c0 = 0; c0 < cols; c0 += 16) {
            const __mmask16 m = mask16(cols - c0);
            const __m512 a = _mm512_maskz_loadu_ps(m, x0 + c0);
            const __m512 b = x1 != NULL ? _mm512_maskz_loadu_ps(m, x1 + c0) : _mm512_setzero_ps();
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(a), expo), expo);
            bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(b), expo), expo);
            const __m256i ra = round16_bf16(a), rb = round16_bf16(b);
            _mm256_mask_storeu_epi16(xb + (size_t)r0 * kpc + c0, m, ra);
            if (x1 != NULL) {
                _mm256_mask_storeu_epi16(xb + (size_t)(r0 + 1) * kpc + c0, m, rb);
            }
            /* panel c0 / 32, its rows c0 % 32 .. +15, pair row kp */
            uint32_t *d = (uint32_t *)(void *)(wp + (size_t)(c0 / PANEL) * PANEL * kpn) +
                          (size_t)kp * PANEL + (c0 % PANEL);
            const __m512i pr = _mm512_or_si512(_mm512_cvtepu16_epi32(ra),
                                               _mm512_slli_epi32(_mm512_cvtepu16_epi32(rb), 16));
            _mm512_storeu_si512(d, pr);
        }
        /* a partial last panel: its rows past cols are zero pairs */
        const int tail = cols % PANEL;
        if (tail != 0 && tail <= 16) {
            uint32_t *d = (uint32_t *)(void *)(wp + (size_t)(cols / PANEL) * PANEL * kpn) +
                          (size_t)kp * PANEL + 16;
            _mm512_storeu_si512(d, _mm512_setzero_si512());
        }
        if (cols % 2) {
            xb[(size_t)r0 * kpc + cols] = 0;
            if (x1 != NULL) {
                xb[(size_t)(r0 + 1) * kpc + cols] = 0;
            }
        }
    }
    return bad != 0;
}

/* eg_bf16_pack_rows_t: 16 K pairs x 16 rows of the output at a time, built
 * as pair rows (pairs16) and transposed so each output row gets 16
 * consecutive pairs in one store. */
__attribute__((target("avx512f,avx512bw,avx512vl")))
static void pack_rows_t_avx512(uint16_t *dst, size_t kp2, const float *A, size_t lda, int i0, int i1,
                               int K)
{
    const int kpairs = (K + 1) / 2;
    const __mmask16 mi = mask16(i1 - i0);
    for (int kp0 = 0; kp0 < kpairs; kp0 += 16) {
        const int np = kpairs - kp0 < 16 ? kpairs - kp0 : 16;
        __m512i v[16];
        for (int c = 0; c < 16; c++) {
            const int k = 2 * (kp0 + c);
            v[c] = c < np ? pairs16(A + (size_t)k * lda + i0, k + 1 < K ? A + (size_t)(k + 1) * lda + i0 : NULL, mi)
                          : _mm512_setzero_si512();
        }
        transpose16x16_epi32(v);
        for (int i = 0; i < i1 - i0; i++) {
            _mm512_mask_storeu_epi32(dst + (size_t)(i0 + i) * kp2 + 2 * (size_t)kp0, mask16(np), v[i]);
        }
    }
}
#endif

void eg_bf16_pack_panel(uint16_t *dst, const float *W, size_t ldw, int nr, int cols)
{
#ifdef EG_X86_CLONES
    if (eg_bf16_kernel_available()) {
        pack_panel_avx512(dst, W, ldw, nr, cols);
        return;
    }
#endif
    pack_panel_scalar(dst, W, ldw, nr, cols);
}

void eg_bf16_pack_panel_t(uint16_t *dst, const float *W, size_t ldw, int c0, int nc, int rows)
{
#ifdef EG_X86_CLONES
    if (eg_bf16_kernel_available()) {
        pack_panel_t_avx512(dst, W, ldw, c0, nc, rows);
        return;
    }
#endif
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

void eg_bf16_pack_panels_t(uint16_t *dst, const float *W, size_t ldw, int ncols, int rows)
{
    const int kpairs = (rows + 1) / 2;
#ifdef EG_X86_CLONES
    if (eg_bf16_kernel_available()) {
        const int chunk = 64;
        const int nchunks = (kpairs + chunk - 1) / chunk;
        #pragma omp parallel for schedule(static) if ((size_t)ncols * (size_t)rows >= ((size_t)1 << 17))
        for (int c = 0; c < nchunks; c++) {
            const int a = c * chunk, b = a + chunk < kpairs ? a + chunk : kpairs;
            pack_panels_t_avx512(dst, W, ldw, ncols, rows, a, b);
        }
        return;
    }
#endif
    (void)kpairs;
    const size_t kp2 = (size_t)((rows + 1) / 2) * 2;
    const int panels = (ncols + PANEL - 1) / PANEL;
    for (int p = 0; p < panels; p++) {
        const int c0 = PANEL * p, nc = ncols - c0 < PANEL ? ncols - c0 : PANEL;
        eg_bf16_pack_panel_t(dst + (size_t)p * PANEL * kp2, W, ldw, c0, nc, rows);
    }
}

int eg_bf16_pack_rows_panels_t(uint16_t *xb, uint16_t *wp, const float *X, size_t ldx, int N,
                               int cols)
{
#ifdef EG_X86_CLONES
    if (eg_bf16_kernel_available()) {
        const int kpairs = (N + 1) / 2, chunk = 32;
        const int nchunks = (kpairs + chunk - 1) / chunk;
        int bad = 0;
        #pragma omp parallel for schedule(static) reduction(| : bad) if ((size_t)N * (size_t)cols >= ((size_t)1 << 17))
        for (int c = 0; c < nchunks; c++) {
            const int a = c * chunk, b = a + chunk < kpairs ? a + chunk : kpairs;
            bad |= pack_rows_panels_t_avx512(xb, wp, X, ldx, N, cols, a, b);
        }
        return bad;
    }
#endif
    eg_bf16_pack_rows(xb, X, ldx, (size_t)N, cols);
    eg_bf16_pack_panels_t(wp, X, ldx, cols, N);
    int bad = 0;
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < cols; j++) {
            bad |= !(fabsf(X[(size_t)i * ldx + j]) <= 3.4028235e38f);
        }
    }
    return bad;
}

void eg_bf16_pack_rows(uint16_t *dst, const float *X, size_t ldx, size_t N, int cols)
{
    const size_t kp2 = (size_t)((cols + 1) / 2) * 2;
#ifdef EG_X86_CLONES
    const int vec = eg_bf16_kernel_available();
#else
    const int vec = 0;
#endif
    #pragma omp parallel for schedule(static) if (N * (size_t)cols >= ((size_t)1 << 17))
    for (size_t i = 0; i < N; i++) {
#ifdef EG_X86_CLONES
        if (vec) {
            pack_row_avx512(dst + i * kp2, X + i * ldx, cols);
            continue;
        }
#endif
        (void)vec;
        pack_row_scalar(dst + i * kp2, X + i * ldx, cols);
    }
}

void eg_bf16_pack_rows_t(uint16_t *dst, const float *A, size_t lda, int M, int K)
{
    const size_t kp2 = (size_t)((K + 1) / 2) * 2;
    const int blocks = (M + 15) / 16;
#ifdef EG_X86_CLONES
    const int vec = eg_bf16_kernel_available();
#else
    const int vec = 0;
#endif
    #pragma omp parallel for schedule(static) if ((size_t)M * (size_t)K >= ((size_t)1 << 17))
    for (int b = 0; b < blocks; b++) {
        const int i0 = 16 * b, i1 = i0 + 16 < M ? i0 + 16 : M;
#ifdef EG_X86_CLONES
        if (vec) {
            pack_rows_t_avx512(dst, kp2, A, lda, i0, i1, K);
            continue;
        }
#endif
        (void)vec;
        for (int k = 0; k < K; k++) {
            const float *a = A + (size_t)k * lda;
            for (int i = i0; i < i1; i++) {
                dst[(size_t)i * kp2 + k] = round_bf16(a[i]);
            }
        }
        if ((size_t)K < kp2) {
            for (int i = i0; i < i1; i++) {
                dst[(size_t)i * kp2 + K] = 0;
            }
        }
    }
}

#ifdef EG_X86_CLONES
/* One register tile: Y[0..nt)[0..nrows) (+)= X rows . panel rows over the
 * K pairs [kp0, kp1). nt <= NR; rows past nrows (a short last panel) are
 * computed on the zero padding and not stored. */
/* acc{0,1}[j] += the K pairs [kp0, kp1) of token j . the panel's rows 0-15
 * and 16-31, for tokens j < nt. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"), always_inline))
static inline void tile_steps(__m512 *acc0, __m512 *acc1, const uint16_t *Xb, size_t ldxb,
                              const uint16_t *Wp, int kp0, int kp1, int nt)
{
    for (int kp = kp0; kp < kp1; kp++) {
        const __m512bh a0 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64);
        const __m512bh a1 = (__m512bh)_mm512_load_si512(Wp + (size_t)kp * 64 + 32);
        const uint16_t *xk = Xb + 2 * (size_t)kp;
#pragma GCC unroll 12
        for (int j = 0; j < nt; j++) {
            int32_t pair;
            memcpy(&pair, xk + (size_t)j * ldxb, 4);
            const __m512bh b = (__m512bh)_mm512_set1_epi32(pair);
            acc0[j] = _mm512_dpbf16_ps(acc0[j], a0, b);
            acc1[j] = _mm512_dpbf16_ps(acc1[j], a1, b);
        }
    }
}

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
    /* a constant trip count for whole tiles, so the compiler unrolls the
     * token loop and keeps the 24 accumulators in registers */
    if (nt == NR) {
        tile_steps(acc0, acc1, Xb, ldxb, Wp, kp0, kp1, NR);
    } else {
        tile_steps(acc0, acc1, Xb, ldxb, Wp, kp0, kp1, nt);
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
    const int nkb = (kpairs + KC / 2 - 1) / (KC / 2);
    const int kblock = (kpairs + nkb - 1) / nkb;
    #pragma omp parallel num_threads(nthr) if (nthr > 1 && (size_t)rows * cols * N >= ((size_t)1 << 20))
    for (int kp0 = 0; kp0 < kpairs; kp0 += kblock) {
        const int kp1 = kp0 + kblock < kpairs ? kp0 + kblock : kpairs;
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
