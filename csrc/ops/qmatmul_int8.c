/*
 * qmatmul_int8.c — Y = X @ W^T with integer dot products: the "int8"
 * precision of eg_qmatmul_prec (eg_quant.h, eg_bf16.h).
 *
 * Why: the weights of a GGUF model already are small integers with float
 * scales. Multiplying them by 8-bit integer activations (as llama.cpp does
 * with q8_0 / q8_K) lets one VPDPBUSD do 64 multiply-adds (AVX512-VNNI),
 * against 32 for VDPBF16PS and 16 for an fp32 FMA.
 *
 * Activations: every token's row is cut into blocks of 32 along K; a block
 * with amax = max|x| gets the scale dx = amax / 127 (float32) and the codes
 * q = rint(x * (1 / dx)) clamped to [-127, 127] (round to nearest even, the
 * FPU's mode). Stored as u = q + 128 (VPDPBUSD multiplies unsigned by signed
 * bytes). A block with amax < 2^-120 (or 0) becomes zero codes with dx = 0;
 * a block holding an inf or NaN gets dx = NaN, so that token's outputs are
 * NaN (a float32 product would give inf or NaN there too).
 *
 * Weights: each type's blocks are unpacked into one layout (eg_int8_block, eg_quant.h):
 * per 32 columns of a row, 32 signed codes w with value d * w + m — d the
 * block's float scale (Q6_K: one per 16 columns), m its min term (Q4_1,
 * Q5_1: m; Q4_K, Q5_K: -dmin * min, exact float products). The layout
 * interleaves 16 rows by groups of 4 columns ("quads"), the order in which
 * VPDPBUSD consumes them, and carries c = -128 * sum(w) per row, which turns
 * sum(u * w) into sum(q * w). Rows are repacked per call into panels of 16
 * (the model stays quantized in its mapping).
 *
 * Per (row, token, block) the integer I = sum_k q_k w_k is exact (|I| <
 * 2^20, so (float)I is exact too) and is applied in float32 in one fixed
 * order: acc = fma((float)I, d * dx, acc) (Q6_K: twice, one per 16-column
 * half), then acc = fma(m, dx * sum(q), acc) for types with mins. Every
 * implementation computes the same integers and these same float32
 * operations (C's fmaf is the FMA instruction's rounding), so the generic
 * C copy, the AVX2 copy (VPMADDUBSW + VPMADDWD), the AVX-VNNI copy (256-bit
 * VPDPBUSD) and the AVX512-VNNI copy give the same bits.
 *
 * Types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K. Others (F32, F16,
 * BF16, Q2_K, Q3_K) are not handled here; eg_qmatmul_prec sends them to the
 * bfloat16 path.
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
#include "eg_isa.h"
#ifdef EG_X86_CLONES
#include <immintrin.h>
#endif

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#define PR 16   /* rows per panel: the 16 int32 lanes of a zmm */
#define QB 32   /* columns per block */

typedef eg_int8_block blk8;   /* eg_quant.h */

_Static_assert(sizeof(blk8) == 832, "eg_int8_block layout");
_Static_assert(PR == EG_INT8_PANEL_ROWS, "panel rows");

enum { K_PLAIN = 0, K_MIN = 1, K_SPLIT = 2 };

int eg_int8_supported_type(int type)
{
    switch (type) {
    case EG_GGML_Q4_0: case EG_GGML_Q4_1: case EG_GGML_Q5_0: case EG_GGML_Q5_1:
    case EG_GGML_Q8_0: case EG_GGML_Q4_K: case EG_GGML_Q5_K: case EG_GGML_Q6_K:
        return 1;
    default:
        return 0;
    }
}

static int kind_of(int type)
{
    switch (type) {
    case EG_GGML_Q4_1: case EG_GGML_Q5_1: case EG_GGML_Q4_K: case EG_GGML_Q5_K:
        return K_MIN;
    case EG_GGML_Q6_K:
        return K_SPLIT;
    default:
        return K_PLAIN;
    }
}

/* ------------------------------------------------ activation quantization */

/* Tokens per activation tile: the kernels read XT tokens' codes for one
 * block as 8 quads x XT tokens x 4 bytes (256 bytes), so one pointer and
 * constant offsets reach every token (no per-token pointers in registers). */
#define XT 8

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef uint8_t u8x16 __attribute__((vector_size(16)));
#define EG_ISA_BODY "../ops/qmatmul_int8_pack.h"
#include "eg_isa.h"
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

typedef void (*pack_fn)(void *, const eg_qmat *, int, int, int8_t *, float *);
#define PACK_SET(sfx) pack_panel##sfx
static const pack_fn pack_copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(PACK_SET);

typedef struct {
    void (*row)(uint8_t *, float *, float *, const float *, int);
    void (*tile)(uint8_t *, float *, float *, const float *, size_t, size_t, int, size_t);
} quant_fns;
#define QUANT_SET(sfx) {q8_row##sfx, q8_tile##sfx}
static const quant_fns quant_copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(QUANT_SET);

void eg_q8_quantize_rows(uint8_t *xu, float *xd, float *xds, const float *X, size_t ldx,
                         size_t N, int cols)
{
    const quant_fns *qf = &quant_copies[eg_isa_level()];
    #pragma omp parallel for schedule(static) if (N * (size_t)cols >= ((size_t)1 << 16))
    for (size_t t = 0; t < N; t++) {
        qf->row(xu + t * (size_t)cols, xd + t * (size_t)(cols / QB), xds + t * (size_t)(cols / QB),
                X + t * ldx, cols);
    }
}

/* The same codes and scales in tiles of XT tokens: tile T, block b holds
 * the codes at xt + (T * nb + b) * 256 + quad * 32 + token * 4 and the
 * scales at xd[(T * nb + b) * XT + token]. Tokens past N in the last tile
 * are zero codes (u = 128) with zero scales. */
static void q8_quantize_tiles(uint8_t *xt, float *xd, float *xds, const float *X, size_t ldx,
                              size_t N, int cols)
{
    const quant_fns *qf = &quant_copies[eg_isa_level()];
    const size_t ntiles = (N + XT - 1) / XT;
    #pragma omp parallel for schedule(static) if (N * (size_t)cols >= ((size_t)1 << 16))
    for (size_t T = 0; T < ntiles; T++) {
        qf->tile(xt, xd, xds, X, ldx, N, cols, T);
    }
}


size_t eg_int8_panel_bytes(int cols)
{
    return (size_t)(cols / QB) * sizeof(blk8);
}

void eg_int8_pack_panel(void *dst, const eg_qmat *W, int r0, int nr, int8_t *wscratch,
                        float *fscratch)
{
    pack_copies[eg_isa_level()](dst, W, r0, nr, wscratch, fscratch);
}

/* --------------------------------------------------------------- kernels */

/* Every kernel computes Y[j][0..nrows) for the tokens j < nt of a run of
 * activation tiles (xt, xd, xds at the first tile; q8_quantize_tiles) over
 * every block of the panel P. The generic copy is the reference arithmetic
 * (see the file comment); the others must match it bit for bit. */
static void tile_generic(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                         const float *xds, const blk8 *P, int nb, int nt, int nrows, int kind)
{
    for (int j = 0; j < nt; j++) {
        const size_t T = (size_t)(j / XT), jj = (size_t)(j % XT);
        for (int r = 0; r < nrows; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                const blk8 *B = P + b;
                const size_t tb = T * (size_t)nb + (size_t)b;
                const uint8_t *ub = xt + tb * (QB * XT) + 4 * jj;
                const float dx = xd[tb * XT + jj];
                int32_t i0 = B->c0[r], i1 = B->c1[r];
                for (int q = 0; q < 8; q++) {
                    int32_t sq = 0;
                    for (int i = 0; i < 4; i++) {
                        sq += (int32_t)ub[(size_t)q * 4 * XT + i] * B->q[q][r][i];
                    }
                    if (kind == K_SPLIT && q >= 4) {
                        i1 += sq;
                    } else {
                        i0 += sq;
                    }
                }
                acc = fmaf((float)i0, B->d0[r] * dx, acc);
                if (kind == K_SPLIT) {
                    acc = fmaf((float)i1, B->d1[r] * dx, acc);
                }
                if (kind == K_MIN) {
                    acc = fmaf(B->m[r], xds[tb * XT + jj], acc);
                }
            }
            Y[(size_t)j * ldy + r] = acc;
        }
    }
}

#ifdef EG_X86_CLONES
/* AVX2: 16 rows as two ymm of 8 int32 lanes, 4 tokens (half a tile) at a
 * time; the 4-byte dot of VPDPBUSD emulated by VPMADDUBSW (u8 x s8 pairs
 * to int16) + VPMADDWD (pairs of int16 to int32). The int16 pairs cannot
 * saturate for |w| <= 32 (2 x 255 x 32 < 32767): every type but Q8_0. For
 * Q8_0 the signs move to the other operand: |w| (<= 128, unsigned) times
 * q signed by w (|q| <= 127), the classic trick, which gives sum q * w
 * directly (no correction). */
#define T2 4
__attribute__((target("avx2,fma"), always_inline))
static inline __m256i dot4_avx2(__m256i u, __m256i w, int q8)
{
    const __m256i ones = _mm256_set1_epi16(1);
    if (q8) {
        const __m256i qs = _mm256_xor_si256(u, _mm256_set1_epi8((char)0x80));   /* u - 128 */
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w),
                                                      _mm256_sign_epi8(qs, w)), ones);
    }
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, w), ones);
}

#define I8_BODY tile_avx2_body
#define I8_TARGET "avx2,fma"
#define I8_VNNI 0
#include "qmatmul_int8_avx2.h"

/* Dispatch on the kind with constant arguments, so each instance of the
 * inlined body is specialised. */
#define EG_I8_RUN(BODY)                                                                      \
    for (int j0 = 0; j0 < nt; j0 += T2) {                                                    \
        const int n = nt - j0 < T2 ? nt - j0 : T2;                                           \
        const size_t T = (size_t)(j0 / XT), jj = (size_t)(j0 % XT);                          \
        const uint8_t *xq = xt + T * (size_t)nb * (QB * XT) + 4 * jj;                        \
        const float *d = xd + T * (size_t)nb * XT + jj, *ds = xds + T * (size_t)nb * XT + jj; \
        float *y = Y + (size_t)j0 * ldy;                                                     \
        if (q8) {                                                                            \
            BODY(y, ldy, xq, d, ds, P, nb, n, nrows, K_PLAIN, 1);                            \
        } else if (kind == K_MIN) {                                                          \
            BODY(y, ldy, xq, d, ds, P, nb, n, nrows, K_MIN, 0);                              \
        } else if (kind == K_SPLIT) {                                                        \
            BODY(y, ldy, xq, d, ds, P, nb, n, nrows, K_SPLIT, 0);                            \
        } else {                                                                             \
            BODY(y, ldy, xq, d, ds, P, nb, n, nrows, K_PLAIN, 0);                            \
        }                                                                                    \
    }

__attribute__((target("avx2,fma")))
static void tile_avx2(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                      const float *xds, const blk8 *P, int nb, int nt, int nrows, int kind,
                      int q8)
{
    EG_I8_RUN(tile_avx2_body)
}

#if defined(__GNUC__) && __GNUC__ >= 11
#define I8_BODY tile_avxvnni_body
#define I8_TARGET "avx2,fma,avxvnni"
#define I8_VNNI 1
#include "qmatmul_int8_avx2.h"

/* AVX-VNNI (VEX-encoded 256-bit VPDPBUSD: Intel Alder Lake and later, AMD
 * Zen 5): the AVX2 tile with the emulation replaced by the instruction
 * (not for Q8_0, whose codes reach -128: the AVX2 trick handles it). */
__attribute__((target("avx2,fma,avxvnni")))
static void tile_avxvnni(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                         const float *xds, const blk8 *P, int nb, int nt, int nrows, int kind,
                         int q8)
{
    EG_I8_RUN(tile_avxvnni_body)
}
#define EG_HAVE_AVXVNNI 1
#endif
#undef EG_I8_RUN

/* AVX512-VNNI: 16 rows in the 16 lanes of a zmm, one tile of XT = 8
 * tokens (padding tokens are computed on zero codes and not stored); per
 * block and token, the integer sums start at the correction c and take
 * VPDPBUSD of 4 bytes of the token (broadcast) against 4 columns of the 16
 * rows. Q6_K's two halves run one after the other (the same float order:
 * half 0's fma, then half 1's), so 8 integer accumulators suffice. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void tile_vnni_body(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                                  const float *xds, const blk8 *P, int nb, int nt, int nrows,
                                  int kind)
{
    __m512 acc[XT];
    for (int j = 0; j < XT; j++) {
        acc[j] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const blk8 *B = P + b;
        const uint8_t *ub = xt + (size_t)b * (QB * XT);
        const float *db = xd + (size_t)b * XT;
        const int halves = kind == K_SPLIT ? 2 : 1;
        for (int h = 0; h < halves; h++) {
            __m512i ia[XT];
            const __m512i c = _mm512_load_si512(h ? B->c1 : B->c0);
            for (int j = 0; j < XT; j++) {
                ia[j] = c;
            }
            const int q0 = kind == K_SPLIT ? 4 * h : 0, q1 = kind == K_SPLIT ? q0 + 4 : 8;
#pragma GCC unroll 8
            for (int q = q0; q < q1; q++) {
                const __m512i w = _mm512_load_si512(B->q[q]);
#pragma GCC unroll 8
                for (int j = 0; j < XT; j++) {
                    int32_t quad;
                    memcpy(&quad, ub + (size_t)q * 4 * XT + 4 * (size_t)j, 4);
                    ia[j] = _mm512_dpbusd_epi32(ia[j], _mm512_set1_epi32(quad), w);
                }
            }
            const __m512 dw = _mm512_load_ps(h ? B->d1 : B->d0);
#pragma GCC unroll 8
            for (int j = 0; j < XT; j++) {
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ia[j]),
                                         _mm512_mul_ps(dw, _mm512_set1_ps(db[j])), acc[j]);
            }
        }
        if (kind == K_MIN) {
            const __m512 mm = _mm512_load_ps(B->m);
            const float *dsb = xds + (size_t)b * XT;
#pragma GCC unroll 8
            for (int j = 0; j < XT; j++) {
                acc[j] = _mm512_fmadd_ps(mm, _mm512_set1_ps(dsb[j]), acc[j]);
            }
        }
    }
    const __mmask16 mk = nrows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nrows) - 1);
    for (int j = 0; j < nt; j++) {
        _mm512_mask_storeu_ps(Y + (size_t)j * ldy, mk, acc[j]);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void tile_vnni(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                      const float *xds, const blk8 *P, int nb, int nt, int nrows, int kind)
{
    for (int j0 = 0; j0 < nt; j0 += XT) {
        const int n = nt - j0 < XT ? nt - j0 : XT;
        const size_t T = (size_t)(j0 / XT);
        const uint8_t *xq = xt + T * (size_t)nb * (QB * XT);
        const float *d = xd + T * (size_t)nb * XT, *ds = xds + T * (size_t)nb * XT;
        float *y = Y + (size_t)j0 * ldy;
        if (kind == K_MIN) {
            tile_vnni_body(y, ldy, xq, d, ds, P, nb, n, nrows, K_MIN);
        } else if (kind == K_SPLIT) {
            tile_vnni_body(y, ldy, xq, d, ds, P, nb, n, nrows, K_SPLIT);
        } else {
            tile_vnni_body(y, ldy, xq, d, ds, P, nb, n, nrows, K_PLAIN);
        }
    }
}
#endif

/* 3 AVX512-VNNI, 2 AVX-VNNI (256-bit), 1 AVX2, 0 generic: the best the CPU
 * has within ENGINE_PY_ISA's cap (avx512 allows 3 and 2, avx2 allows 1). */
int eg_int8_kernel_level(void)
{
#ifdef EG_X86_CLONES
    static int level = -1;
    if (level < 0) {
        __builtin_cpu_init();
        const int isa = eg_isa_level();
        int l = isa >= 1 ? 1 : 0;
#ifdef EG_HAVE_AVXVNNI
        if (isa >= 2 && __builtin_cpu_supports("avxvnni")) {
            l = 2;
        }
#endif
        if (isa >= 2 && __builtin_cpu_supports("avx512vnni")) {
            l = 3;
        }
        level = l;
    }
    return level;
#else
    return 0;
#endif
}

const char *eg_int8_kernel_name(int level)
{
    static const char *const names[] = {"generic", "avx2", "avxvnni", "avx512vnni"};
    return level >= 0 && level <= 3 ? names[level] : "?";
}

/* Override of the kernel level for tests (-1: none). Not thread-safe
 * against running products, like eg_qmatmul_direct_max. */
static int g_force_level = -1;

int eg_int8_force_level(int level)
{
    int old = g_force_level;
    g_force_level = level >= 0 && level <= eg_int8_kernel_level() ? level : -1;
    return old;
}

/* Y (nt tokens, nrows) of one packed panel against the activation tiles
 * starting at token 0 of xt (a multiple of XT), with the selected kernel. */
static void gemm_panel(float *Y, size_t ldy, const uint8_t *xt, const float *xd,
                       const float *xds, int nt, const blk8 *P, int type, int nrows, int nb)
{
    const int kind = kind_of(type);
    const int level = g_force_level >= 0 ? g_force_level : eg_int8_kernel_level();
    (void)level;
#ifdef EG_X86_CLONES
    if (level == 3) {
        tile_vnni(Y, ldy, xt, xd, xds, P, nb, nt, nrows, kind);
        return;
    }
#ifdef EG_HAVE_AVXVNNI
    if (level == 2) {
        tile_avxvnni(Y, ldy, xt, xd, xds, P, nb, nt, nrows, kind, type == EG_GGML_Q8_0);
        return;
    }
#endif
    if (level >= 1) {
        tile_avx2(Y, ldy, xt, xd, xds, P, nb, nt, nrows, kind, type == EG_GGML_Q8_0);
        return;
    }
#endif
    tile_generic(Y, ldy, xt, xd, xds, P, nb, nt, nrows, kind);
}

/* Tokens per task (a multiple of XT): a panel (cols / 32 x 832 bytes: 23 KB
 * at K = 896, 126 KB at K = 4864) stays in L1/L2 while TOK tokens stream
 * past it. */
#define TOK 128

eg_status eg_qmatmul_int8(float *Y, size_t ldy, const float *X, size_t ldx, size_t N,
                          const eg_qmat *W, eg_err *err)
{
    const int cols = (int)W->cols, rows = (int)W->rows;
    const int nb = cols / QB;
    if (!eg_int8_supported_type(W->type) || cols % QB != 0) {
        return eg_seterr(err, EG_EINVAL, "int8 products: type %s is not supported",
                         eg_ggml_type_name(W->type));
    }
    if (N == 0) {
        return EG_OK;
    }
    const int panels = (int)(((int64_t)rows + PR - 1) / PR);   /* rows may be INT32_MAX */
    const size_t pbytes = eg_int8_panel_bytes(cols);
    const size_t ntiles = (N + XT - 1) / XT;
    size_t wbytes, xbytes, dbytes;
    if ((N + TOK - 1) / TOK > (size_t)INT32_MAX / (size_t)panels) {   /* the task count is an int */
        return eg_seterr(err, EG_EOVERFLOW, "int8 products: %zu tokens x %d rows is too many "
                         "tasks", N, rows);
    }
    if (eg_mul_ovf(pbytes, (size_t)panels, &wbytes)
        || eg_mul_ovf(ntiles * XT, (size_t)cols, &xbytes)
        || eg_mul_ovf(ntiles * XT, (size_t)nb * sizeof(float), &dbytes)) {
        return eg_seterr(err, EG_EOVERFLOW, "int8 products: sizes overflow");
    }
    int nthr = eg_get_num_threads();
    if (nthr < 1) {
        nthr = 1;
    }
    void *wp = eg_aligned_alloc(wbytes);
    uint8_t *xt = eg_aligned_alloc(xbytes);
    float *xd = eg_aligned_alloc(dbytes), *xds = eg_aligned_alloc(dbytes);
    int8_t *ws = eg_aligned_alloc((size_t)nthr * PR * (size_t)cols);
    float *fs = eg_aligned_alloc((size_t)nthr * 3 * PR * (size_t)nb * sizeof(float));
    eg_status st = EG_OK;
    if (wp == NULL || xt == NULL || xd == NULL || xds == NULL || ws == NULL || fs == NULL) {
        st = eg_seterr(err, EG_ENOMEM, "out of memory for int8 copies of a %d x %d product "
                       "with %zu tokens", rows, cols, N);
        goto done;
    }
    q8_quantize_tiles(xt, xd, xds, X, ldx, N, cols);
    const int nchunks = (int)((N + TOK - 1) / TOK);
    const int ntasks = panels * nchunks;
    #pragma omp parallel num_threads(nthr) if (nthr > 1 && (size_t)rows * cols * N >= ((size_t)1 << 20))
    {
#ifdef _OPENMP
        const int me = omp_get_thread_num();
#else
        const int me = 0;
#endif
        #pragma omp for schedule(dynamic, 2)
        for (int p = 0; p < panels; p++) {
            const int r0 = PR * p, nr = rows - r0 < PR ? rows - r0 : PR;
            eg_int8_pack_panel((char *)wp + (size_t)p * pbytes, W, r0, nr,
                               ws + (size_t)me * PR * cols, fs + (size_t)me * 3 * PR * nb);
        }
        /* token chunks outermost: the threads share a chunk's codes in the
         * cache while each takes its own panels */
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntasks; t++) {
            const int c = t / panels, p = t % panels;
            const size_t j0 = (size_t)c * TOK;
            const int nt = (int)(N - j0 < TOK ? N - j0 : TOK);
            const int r0 = PR * p, nr = rows - r0 < PR ? rows - r0 : PR;
            const size_t T0 = j0 / XT;
            gemm_panel(Y + j0 * ldy + r0, ldy, xt + T0 * (size_t)nb * (QB * XT),
                       xd + T0 * (size_t)nb * XT, xds + T0 * (size_t)nb * XT, nt,
                       (const blk8 *)(const void *)((const char *)wp + (size_t)p * pbytes),
                       W->type, nr, nb);
        }
    }
done:
    eg_aligned_free(wp);
    eg_aligned_free(xt);
    eg_aligned_free(xd);
    eg_aligned_free(xds);
    eg_aligned_free(ws);
    eg_aligned_free(fs);
    return st;
}

/* ------------------------------------------------------------ int8 peak */

#ifdef EG_X86_CLONES
/* 12 independent VPDPBUSD chains (enough to cover the latency at two per
 * cycle) in named variables, so they stay in registers; the empty asm on
 * the input keeps the compiler from folding the loop. */
#define PEAK_BODY(DP, V, SET1, ADD)                                            \
    V a0 = SET1(0), a1 = SET1(1), a2 = SET1(2), a3 = SET1(3), a4 = SET1(4),    \
      a5 = SET1(5), a6 = SET1(6), a7 = SET1(7), a8 = SET1(8), a9 = SET1(9),    \
      a10 = SET1(10), a11 = SET1(11);                                          \
    V u = SET1(0x03030303), w = SET1((int)0xfefefefe);                         \
    for (long it = 0; it < iters; it++) {                                      \
        __asm__ volatile("" : "+v"(u));                                        \
        a0 = DP(a0, u, w); a1 = DP(a1, u, w); a2 = DP(a2, u, w);               \
        a3 = DP(a3, u, w); a4 = DP(a4, u, w); a5 = DP(a5, u, w);               \
        a6 = DP(a6, u, w); a7 = DP(a7, u, w); a8 = DP(a8, u, w);               \
        a9 = DP(a9, u, w); a10 = DP(a10, u, w); a11 = DP(a11, u, w);           \
    }                                                                          \
    a0 = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));    \
    a0 = ADD(a0, ADD(ADD(a8, a9), ADD(a10, a11)))

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), noinline))
static void peak_loop_512(long iters, int32_t *sink)
{
    PEAK_BODY(_mm512_dpbusd_epi32, __m512i, _mm512_set1_epi32, _mm512_add_epi32);
    *sink = _mm512_reduce_add_epi32(a0);
}

#ifdef EG_HAVE_AVXVNNI
__attribute__((target("avx2,avxvnni"), noinline))
static void peak_loop_256(long iters, int32_t *sink)
{
    PEAK_BODY(_mm256_dpbusd_avx_epi32, __m256i, _mm256_set1_epi32, _mm256_add_epi32);
    int32_t t[8];
    _mm256_storeu_si256((__m256i *)(void *)t, a0);
    *sink = t[0] + t[7];
}
#endif
#undef PEAK_BODY
#endif

double eg_int8_peak_ops(long iters)
{
#ifdef EG_X86_CLONES
    const int level = eg_int8_kernel_level();
    if (level < 2 || iters <= 0) {
        return 0.0;
    }
    const int nthr = eg_get_num_threads() > 0 ? eg_get_num_threads() : 1;
    static volatile int32_t sink;   /* keeps the loops' results alive */
    (void)sink;
    #pragma omp parallel num_threads(nthr)
    {
        int32_t s = 0;
        if (level == 3) {
            peak_loop_512(iters, &s);
        }
#ifdef EG_HAVE_AVXVNNI
        else {
            peak_loop_256(iters, &s);
        }
#endif
        sink = s;
    }
    /* per VPDPBUSD: lanes x 4 multiply-adds, 2 ops each */
    return (double)nthr * (double)iters * 12.0 * (level == 3 ? 16.0 : 8.0) * 4.0 * 2.0;
#else
    (void)iters;
    return 0.0;
#endif
}
