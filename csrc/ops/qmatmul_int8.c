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

/* fp16 bits to float, through the core's conversion (exact). */
static inline float h2f(uint16_t h)
{
    float f;
    eg_f16_to_f32(&h, &f, 1);
    return f;
}

/* ------------------------------------------------ activation quantization */

void eg_q8_quantize_rows(uint8_t *xu, float *xd, float *xds, const float *X, size_t ldx,
                         size_t N, int cols)
{
    const int nblk = cols / QB;
    #pragma omp parallel for schedule(static) if (N * (size_t)cols >= ((size_t)1 << 16))
    for (size_t t = 0; t < N; t++) {
        const float *x = X + t * ldx;
        for (int b = 0; b < nblk; b++) {
            const float *xb = x + b * QB;
            uint8_t *u = xu + t * (size_t)cols + (size_t)b * QB;
            float amax = 0.0f;
            int finite = 1;
            for (int k = 0; k < QB; k++) {
                const float a = fabsf(xb[k]);
                finite &= a <= 3.4028234663852886e38f;   /* false for inf and NaN */
                amax = a > amax ? a : amax;
            }
            float d = 0.0f;
            int sum = 0;
            if (!finite) {
                d = NAN;
                memset(u, 128, QB);
            } else if (amax < 0x1p-120f) {
                /* zero, or so small that 127 / amax would overflow: the
                 * block's contribution (< 32 * 2^-120 * |w|) is dropped */
                memset(u, 128, QB);
            } else {
                d = amax / 127.0f;
                const float id = 1.0f / d;
                for (int k = 0; k < QB; k++) {
                    float v = nearbyintf(xb[k] * id);
                    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
                    const int q = (int)v;
                    sum += q;
                    u[k] = (uint8_t)(q + 128);
                }
            }
            xd[t * (size_t)nblk + b] = d;
            xds[t * (size_t)nblk + b] = d * (float)sum;
        }
    }
}

/* ------------------------------------------------------ weight unpacking */

/* Row `src` of `type` (cols columns) unpacked: w[cols] codes, and per block
 * of 32: d0, d1 (scales of the two halves), m (min term). */
static void unpack_row(int type, const uint8_t *s, int cols, int8_t *w, float *d0, float *d1,
                       float *m)
{
    const int nb32 = cols / QB;
    switch (type) {
    case EG_GGML_Q4_0:
    case EG_GGML_Q4_1: {
        const int has_m = type == EG_GGML_Q4_1;
        const size_t ts = has_m ? sizeof(eg_block_q4_1) : sizeof(eg_block_q4_0);
        for (int b = 0; b < nb32; b++, s += ts, w += QB) {
            uint16_t dh, mh = 0;
            memcpy(&dh, s, 2);
            if (has_m) {
                memcpy(&mh, s + 2, 2);
            }
            const uint8_t *qs = s + (has_m ? 4 : 2);
            const int off = has_m ? 0 : 8;
            for (int j = 0; j < 16; j++) {
                w[j] = (int8_t)((qs[j] & 0x0F) - off);
                w[j + 16] = (int8_t)((qs[j] >> 4) - off);
            }
            d0[b] = d1[b] = h2f(dh);
            m[b] = has_m ? h2f(mh) : 0.0f;
        }
        return;
    }
    case EG_GGML_Q5_0:
    case EG_GGML_Q5_1: {
        const int has_m = type == EG_GGML_Q5_1;
        const size_t ts = has_m ? sizeof(eg_block_q5_1) : sizeof(eg_block_q5_0);
        for (int b = 0; b < nb32; b++, s += ts, w += QB) {
            uint16_t dh, mh = 0;
            uint8_t qhb[4];
            memcpy(&dh, s, 2);
            if (has_m) {
                memcpy(&mh, s + 2, 2);
            }
            memcpy(qhb, s + (has_m ? 4 : 2), 4);
            const uint32_t qh = (uint32_t)qhb[0] | (uint32_t)qhb[1] << 8 | (uint32_t)qhb[2] << 16
                                | (uint32_t)qhb[3] << 24;
            const uint8_t *qs = s + (has_m ? 8 : 6);
            const int off = has_m ? 0 : 16;
            for (int j = 0; j < 16; j++) {
                w[j] = (int8_t)(((qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - off);
                w[j + 16] = (int8_t)(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off);
            }
            d0[b] = d1[b] = h2f(dh);
            m[b] = has_m ? h2f(mh) : 0.0f;
        }
        return;
    }
    case EG_GGML_Q8_0: {
        const eg_block_q8_0 *x = (const eg_block_q8_0 *)(const void *)s;
        for (int b = 0; b < nb32; b++, w += QB) {
            memcpy(w, x[b].qs, QB);
            d0[b] = d1[b] = h2f(x[b].d);
            m[b] = 0.0f;
        }
        return;
    }
    case EG_GGML_Q4_K:
    case EG_GGML_Q5_K: {
        const int five = type == EG_GGML_Q5_K;
        const size_t ts = five ? sizeof(eg_block_q5_K) : sizeof(eg_block_q4_K);
        for (int i = 0; i < cols / EG_QK_K; i++, s += ts) {
            uint16_t dh, dmh;
            memcpy(&dh, s, 2);
            memcpy(&dmh, s + 2, 2);
            const uint8_t *sc12 = s + 4;
            const uint8_t *qh = five ? s + 16 : NULL;
            const uint8_t *qs = s + (five ? 48 : 16);
            const float d = h2f(dh), dmin = h2f(dmh);
            for (int g = 0; g < 8; g++, w += QB) {
                int sc, mn;
                if (g < 4) {
                    sc = sc12[g] & 63;
                    mn = sc12[g + 4] & 63;
                } else {
                    sc = (sc12[g + 4] & 0x0F) | ((sc12[g - 4] >> 6) << 4);
                    mn = (sc12[g + 4] >> 4) | ((sc12[g] >> 6) << 4);
                }
                const int shift = 4 * (g % 2);
                for (int l = 0; l < QB; l++) {
                    int v = (qs[32 * (g / 2) + l] >> shift) & 0x0F;
                    if (five) {
                        v |= ((qh[l] >> g) & 1) << 4;
                    }
                    w[l] = (int8_t)v;
                }
                /* d * sc and dmin * mn are exact (11 x 6 significant bits):
                 * the dequantized value is (d * sc) * w - dmin * mn */
                const int b = 8 * i + g;
                d0[b] = d1[b] = d * (float)sc;
                m[b] = -(dmin * (float)mn);
            }
        }
        return;
    }
    case EG_GGML_Q6_K: {
        const eg_block_q6_K *x = (const eg_block_q6_K *)(const void *)s;
        for (int i = 0; i < cols / EG_QK_K; i++) {
            const float d = h2f(x[i].d);
            for (int e = 0; e < EG_QK_K; e++) {
                const int h = e / 128, sh = (e % 128) / 32, l = e % 32;
                const int lo = (x[i].ql[64 * h + 32 * (sh % 2) + l] >> (4 * (sh / 2))) & 0x0F;
                const int hi = (x[i].qh[32 * h + l] >> (2 * sh)) & 3;
                w[EG_QK_K * i + e] = (int8_t)((lo | (hi << 4)) - 32);
            }
            for (int g = 0; g < 8; g++) {
                const int b = 8 * i + g;
                d0[b] = d * (float)x[i].scales[2 * g];
                d1[b] = d * (float)x[i].scales[2 * g + 1];
                m[b] = 0.0f;
            }
        }
        return;
    }
    default:
        return;
    }
}

size_t eg_int8_panel_bytes(int cols)
{
    return (size_t)(cols / QB) * sizeof(blk8);
}

void eg_int8_pack_panel(void *dst, const eg_qmat *W, int r0, int nr, int8_t *wscratch,
                        float *fscratch)
{
    const int cols = (int)W->cols, nb = cols / QB;
    const int split = kind_of(W->type) == K_SPLIT;
    blk8 *P = dst;
    float *d0 = fscratch, *d1 = fscratch + nb, *m = fscratch + 2 * (size_t)nb;
    memset(P, 0, (size_t)nb * sizeof(blk8));
    for (int r = 0; r < nr; r++) {
        unpack_row(W->type, (const uint8_t *)W->data + (size_t)(r0 + r) * W->row_bytes, cols,
                   wscratch, d0, d1, m);
        for (int b = 0; b < nb; b++) {
            const int8_t *w = wscratch + (size_t)b * QB;
            blk8 *B = P + b;
            int s0 = 0, s1 = 0;
            for (int k = 0; k < 16; k++) {
                s0 += w[k];
                s1 += w[k + 16];
            }
            for (int j = 0; j < 8; j++) {
                memcpy(B->q[j][r], w + 4 * j, 4);
            }
            B->d0[r] = d0[b];
            B->d1[r] = d1[b];
            B->m[r] = m[b];
            if (split) {
                B->c0[r] = -128 * s0;
                B->c1[r] = -128 * s1;
            } else {
                B->c0[r] = -128 * (s0 + s1);
            }
        }
    }
}

/* --------------------------------------------------------------- kernels */

/* One tile: Y[j][0..nrows) for tokens j < nt of xu (row stride ldu) over
 * every block of the panel P. The generic copy: the reference arithmetic
 * (see the file comment); the others must match it bit for bit. */
static void tile_generic(float *Y, size_t ldy, const uint8_t *xu, size_t ldu, const float *xd,
                         const float *xds, size_t ldd, const blk8 *P, int nb, int nt, int nrows,
                         int kind)
{
    for (int j = 0; j < nt; j++) {
        const uint8_t *u = xu + (size_t)j * ldu;
        for (int r = 0; r < nrows; r++) {
            float acc = 0.0f;
            for (int b = 0; b < nb; b++) {
                const blk8 *B = P + b;
                const uint8_t *ub = u + (size_t)b * QB;
                const float dx = xd[(size_t)j * ldd + b];
                int32_t i0 = B->c0[r], i1 = B->c1[r];
                for (int q = 0; q < 8; q++) {
                    int32_t s = 0;
                    for (int i = 0; i < 4; i++) {
                        s += (int32_t)ub[4 * q + i] * B->q[q][r][i];
                    }
                    if (kind == K_SPLIT && q >= 4) {
                        i1 += s;
                    } else {
                        i0 += s;
                    }
                }
                acc = fmaf((float)i0, B->d0[r] * dx, acc);
                if (kind == K_SPLIT) {
                    acc = fmaf((float)i1, B->d1[r] * dx, acc);
                }
                if (kind == K_MIN) {
                    acc = fmaf(B->m[r], xds[(size_t)j * ldd + b], acc);
                }
            }
            Y[(size_t)j * ldy + r] = acc;
        }
    }
}

#ifdef EG_X86_CLONES
/* AVX2: 16 rows as two ymm of 8 int32 lanes; the 4-byte dot of VPDPBUSD
 * emulated by VPMADDUBSW (u8 x s8 pairs to int16) + VPMADDWD (pairs of
 * int16 to int32). The int16 pairs cannot saturate for |w| <= 32 (2 x 255 x
 * 32 < 32767): every type but Q8_0. For Q8_0 the signs move to the other
 * operand: |w| (<= 128, unsigned) times q signed by w (|q| <= 127), the
 * classic trick, which gives sum q * w directly (no correction). */
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

__attribute__((target("avx2,fma")))
static void tile_avx2(float *Y, size_t ldy, const uint8_t *xu, size_t ldu, const float *xd,
                      const float *xds, size_t ldd, const blk8 *P, int nb, int nt, int nrows,
                      int kind, int q8)
{
    for (int j0 = 0; j0 < nt; j0 += T2) {
        const int n = nt - j0 < T2 ? nt - j0 : T2;
#define EG_T2(K, Q) tile_avx2_body(Y + (size_t)j0 * ldy, ldy, xu + (size_t)j0 * ldu, ldu,     \
                                   xd + (size_t)j0 * ldd, xds + (size_t)j0 * ldd, ldd, P, nb, \
                                   n, nrows, K, Q)
        if (q8) {
            EG_T2(K_PLAIN, 1);
        } else if (kind == K_MIN) {
            EG_T2(K_MIN, 0);
        } else if (kind == K_SPLIT) {
            EG_T2(K_SPLIT, 0);
        } else {
            EG_T2(K_PLAIN, 0);
        }
#undef EG_T2
    }
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
static void tile_avxvnni(float *Y, size_t ldy, const uint8_t *xu, size_t ldu, const float *xd,
                         const float *xds, size_t ldd, const blk8 *P, int nb, int nt, int nrows,
                         int kind, int q8)
{
    for (int j0 = 0; j0 < nt; j0 += T2) {
        const int n = nt - j0 < T2 ? nt - j0 : T2;
#define EG_T2(K, Q, V) tile_avxvnni_body(Y + (size_t)j0 * ldy, ldy, xu + (size_t)j0 * ldu,     \
                                         ldu, xd + (size_t)j0 * ldd, xds + (size_t)j0 * ldd, ldd, \
                                         P, nb, n, nrows, K, Q)
        if (q8) {
            EG_T2(K_PLAIN, 1, 0);
        } else if (kind == K_MIN) {
            EG_T2(K_MIN, 0, 1);
        } else if (kind == K_SPLIT) {
            EG_T2(K_SPLIT, 0, 1);
        } else {
            EG_T2(K_PLAIN, 0, 1);
        }
#undef EG_T2
    }
}
#define EG_HAVE_AVXVNNI 1
#endif

/* AVX512-VNNI: 16 rows in the 16 lanes of a zmm, T5 tokens per tile; per
 * block and token, the integer sums start at the correction c and take 8
 * VPDPBUSD (4 bytes of the token broadcast against 4 columns of 16 rows). */
#define T5 8
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void tile_vnni_body(float *Y, size_t ldy, const uint8_t *xu, size_t ldu,
                                  const float *xd, const float *xds, size_t ldd, const blk8 *P,
                                  int nb, int nt, int nrows, int kind)
{
    __m512 acc[T5];
    for (int j = 0; j < T5; j++) {
        acc[j] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const blk8 *B = P + b;
        __m512i i0[T5], i1[T5];
        const __m512i c0 = _mm512_load_si512(B->c0);
        const __m512i c1 = _mm512_load_si512(B->c1);
        for (int j = 0; j < T5; j++) {
            i0[j] = c0;
            i1[j] = c1;
        }
        const uint8_t *ub = xu + (size_t)b * QB;
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++) {
            const __m512i w = _mm512_load_si512(B->q[q]);
#pragma GCC unroll 8
            for (int j = 0; j < T5; j++) {
                if (j < nt) {
                    int32_t quad;
                    memcpy(&quad, ub + (size_t)j * ldu + 4 * q, 4);
                    if (kind == K_SPLIT && q >= 4) {
                        i1[j] = _mm512_dpbusd_epi32(i1[j], _mm512_set1_epi32(quad), w);
                    } else {
                        i0[j] = _mm512_dpbusd_epi32(i0[j], _mm512_set1_epi32(quad), w);
                    }
                }
            }
        }
        const __m512 d0 = _mm512_load_ps(B->d0);
#pragma GCC unroll 8
        for (int j = 0; j < T5; j++) {
            if (j < nt) {
                const __m512 dx = _mm512_set1_ps(xd[(size_t)j * ldd + b]);
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0[j]), _mm512_mul_ps(d0, dx), acc[j]);
                if (kind == K_SPLIT) {
                    acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1[j]),
                                             _mm512_mul_ps(_mm512_load_ps(B->d1), dx), acc[j]);
                }
                if (kind == K_MIN) {
                    acc[j] = _mm512_fmadd_ps(_mm512_load_ps(B->m),
                                             _mm512_set1_ps(xds[(size_t)j * ldd + b]), acc[j]);
                }
            }
        }
    }
    const __mmask16 mk = nrows >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nrows) - 1);
    for (int j = 0; j < nt; j++) {
        _mm512_mask_storeu_ps(Y + (size_t)j * ldy, mk, acc[j]);
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void tile_vnni(float *Y, size_t ldy, const uint8_t *xu, size_t ldu, const float *xd,
                      const float *xds, size_t ldd, const blk8 *P, int nb, int nt, int nrows,
                      int kind)
{
    for (int j0 = 0; j0 < nt; j0 += T5) {
        const int n = nt - j0 < T5 ? nt - j0 : T5;
        /* constant token counts for whole tiles, so the loops unroll and
         * the accumulators stay in registers */
#define EG_T5(K, NT) tile_vnni_body(Y + (size_t)j0 * ldy, ldy, xu + (size_t)j0 * ldu, ldu,     \
                                    xd + (size_t)j0 * ldd, xds + (size_t)j0 * ldd, ldd, P, nb, \
                                    NT, nrows, K)
        if (n == T5) {
            if (kind == K_MIN) {
                EG_T5(K_MIN, T5);
            } else if (kind == K_SPLIT) {
                EG_T5(K_SPLIT, T5);
            } else {
                EG_T5(K_PLAIN, T5);
            }
        } else {
            if (kind == K_MIN) {
                EG_T5(K_MIN, n);
            } else if (kind == K_SPLIT) {
                EG_T5(K_SPLIT, n);
            } else {
                EG_T5(K_PLAIN, n);
            }
        }
#undef EG_T5
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

void eg_int8_gemm_panel(float *Y, size_t ldy, const uint8_t *xu, const float *xd,
                        const float *xds, size_t N, const void *panel, int type, int nrows,
                        int cols)
{
    const int nb = cols / QB, kind = kind_of(type);
    const int level = g_force_level >= 0 ? g_force_level : eg_int8_kernel_level();
    const blk8 *P = panel;
    (void)level;
#ifdef EG_X86_CLONES
    if (level == 3) {
        tile_vnni(Y, ldy, xu, (size_t)cols, xd, xds, (size_t)nb, P, nb, (int)N, nrows, kind);
        return;
    }
#ifdef EG_HAVE_AVXVNNI
    if (level == 2) {
        tile_avxvnni(Y, ldy, xu, (size_t)cols, xd, xds, (size_t)nb, P, nb, (int)N, nrows, kind,
                     type == EG_GGML_Q8_0);
        return;
    }
#endif
    if (level >= 1) {
        tile_avx2(Y, ldy, xu, (size_t)cols, xd, xds, (size_t)nb, P, nb, (int)N, nrows, kind,
                  type == EG_GGML_Q8_0);
        return;
    }
#endif
    tile_generic(Y, ldy, xu, (size_t)cols, xd, xds, (size_t)nb, P, nb, (int)N, nrows, kind);
}

/* Tokens per task: a panel (cols / 32 x 832 bytes: 23 KB at K = 896, 126 KB
 * at K = 4864) stays in L1/L2 while TOK tokens stream past it. */
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
    const int panels = (rows + PR - 1) / PR;
    const size_t pbytes = eg_int8_panel_bytes(cols);
    size_t wbytes, xbytes, dbytes;
    if (eg_mul_ovf(pbytes, (size_t)panels, &wbytes) || eg_mul_ovf(N, (size_t)cols, &xbytes)
        || eg_mul_ovf(N, (size_t)nb * sizeof(float), &dbytes)) {
        return eg_seterr(err, EG_EOVERFLOW, "int8 products: sizes overflow");
    }
    int nthr = eg_get_num_threads();
    if (nthr < 1) {
        nthr = 1;
    }
    void *wp = eg_aligned_alloc(wbytes);
    uint8_t *xu = eg_aligned_alloc(xbytes);
    float *xd = eg_aligned_alloc(dbytes), *xds = eg_aligned_alloc(dbytes);
    int8_t *ws = eg_aligned_alloc((size_t)nthr * (size_t)cols);
    float *fs = eg_aligned_alloc((size_t)nthr * 3 * (size_t)nb * sizeof(float));
    if (wp == NULL || xu == NULL || xd == NULL || xds == NULL || ws == NULL || fs == NULL) {
        eg_aligned_free(wp);
        eg_aligned_free(xu);
        eg_aligned_free(xd);
        eg_aligned_free(xds);
        eg_aligned_free(ws);
        eg_aligned_free(fs);
        return eg_seterr(err, EG_ENOMEM, "out of memory for int8 copies of a %d x %d product "
                         "with %zu tokens", rows, cols, N);
    }
    eg_q8_quantize_rows(xu, xd, xds, X, ldx, N, cols);
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
                               ws + (size_t)me * cols, fs + (size_t)me * 3 * nb);
        }
        /* token chunks outermost: the threads share a chunk's codes in the
         * cache while each takes its own panels */
        #pragma omp for schedule(dynamic, 1)
        for (int t = 0; t < ntasks; t++) {
            const int c = t / panels, p = t % panels;
            const size_t j0 = (size_t)c * TOK;
            const size_t nt = N - j0 < TOK ? N - j0 : TOK;
            const int r0 = PR * p, nr = rows - r0 < PR ? rows - r0 : PR;
            eg_int8_gemm_panel(Y + j0 * ldy + r0, ldy, xu + j0 * (size_t)cols,
                               xd + j0 * (size_t)nb, xds + j0 * (size_t)nb, nt,
                               (const char *)wp + (size_t)p * pbytes, W->type, nr, cols);
        }
    }
    eg_aligned_free(wp);
    eg_aligned_free(xu);
    eg_aligned_free(xd);
    eg_aligned_free(xds);
    eg_aligned_free(ws);
    eg_aligned_free(fs);
    return EG_OK;
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
