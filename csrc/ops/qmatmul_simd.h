/*
 * qmatmul_simd.h — the hot loops of qmatmul.c, included once per
 * instruction set through eg_isa.h (SFX(name) gives each copy its suffix).
 * Not a public header: only qmatmul.c includes it, after defining the
 * vector types v16f / v16i / v16u8 / v16u16 (GCC vector extensions: 16
 * lanes whatever the hardware width, so every copy does the same lane-wise
 * operations in the same order).
 *
 * deq_row: one row of a quantized matrix to float32, bit-identical to
 * quant.c (each value is the same float32 product / sum; conversions of
 * small integers to float are exact, so vectorising them changes nothing).
 * dot_rows: y[t][r] = sum_k w[r][k] * x[t][k] for a few rows of
 * dequantized weights and a few tokens, in 16 fixed lanes (lane l sums the
 * k = l mod 16 terms in order of k, a product then a sum, never fused),
 * then the lanes combined by a fixed tree; the same bits on every level.
 */

static inline __attribute__((always_inline)) v16f SFX(q_ld)(const float *p)
{
    v16f v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __attribute__((always_inline)) void SFX(q_st)(float *p, v16f v)
{
    memcpy(p, &v, sizeof v);
}

/* 16 bytes to 16 int32 lanes, zero- or sign-extended. gcc lowers
 * __builtin_convertvector of bytes to lane inserts, so the x86 copies use
 * the extension instructions (the same values). __AVX2__ / __AVX512F__
 * follow the copy's `#pragma GCC target`. */
static inline __attribute__((always_inline)) v16i SFX(q_bytes)(const uint8_t *p)
{
    v16i r;
#if defined(__AVX512F__)
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    memcpy(&r, &v, sizeof r);
#elif defined(__AVX2__)
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m256i v0 = _mm256_cvtepu8_epi32(b), v1 = _mm256_cvtepu8_epi32(_mm_srli_si128(b, 8));
    memcpy(&r, &v0, 32);
    memcpy((char *)&r + 32, &v1, 32);
#else
    for (int l = 0; l < 16; l++) {
        r[l] = p[l];
    }
#endif
    return r;
}

static inline __attribute__((always_inline)) v16i SFX(q_sbytes)(const int8_t *p)
{
    v16i r;
#if defined(__AVX512F__)
    __m512i v = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(const void *)p));
    memcpy(&r, &v, sizeof r);
#elif defined(__AVX2__)
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m256i v0 = _mm256_cvtepi8_epi32(b), v1 = _mm256_cvtepi8_epi32(_mm_srli_si128(b, 8));
    memcpy(&r, &v0, 32);
    memcpy((char *)&r + 32, &v1, 32);
#else
    for (int l = 0; l < 16; l++) {
        r[l] = p[l];
    }
#endif
    return r;
}

/* deq_row's element-wise blocks run on the copy's native width (Q_NW
 * lanes: one zmm, ymm or xmm register): on AVX2, GCC lowers the 16-lane
 * types through memory, lane by lane. Element-wise, so the width changes no
 * bit. */
#undef Q_NW
#if defined(__AVX512F__)
#define Q_NW 16
#elif defined(__AVX2__)
#define Q_NW 8
#else
#define Q_NW 4
#endif
typedef float SFX(qnv) __attribute__((vector_size(Q_NW * sizeof(float))));
typedef int32_t SFX(qni) __attribute__((vector_size(Q_NW * sizeof(int32_t))));

/* Q_NW bytes to int32 lanes, zero- (sgn = 0) or sign-extended (sgn = 1). */
static inline __attribute__((always_inline)) SFX(qni) SFX(q_bytes_n)(const uint8_t *p, int sgn)
{
    SFX(qni) r;
#if defined(__AVX512F__)
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)p);
    __m512i v = sgn ? _mm512_cvtepi8_epi32(b) : _mm512_cvtepu8_epi32(b);
    memcpy(&r, &v, sizeof r);
#elif defined(__AVX2__)
    __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)p);
    __m256i v = sgn ? _mm256_cvtepi8_epi32(b) : _mm256_cvtepu8_epi32(b);
    memcpy(&r, &v, sizeof r);
#else
    for (int l = 0; l < Q_NW; l++) {
        r[l] = sgn ? (int32_t)(int8_t)p[l] : (int32_t)p[l];
    }
#endif
    return r;
}

static inline __attribute__((always_inline)) void SFX(q_st_n)(float *p, SFX(qnv) v)
{
    memcpy(p, &v, sizeof v);
}

static inline __attribute__((always_inline)) v16f SFX(q_f)(v16i v)
{
    return __builtin_convertvector(v, v16f);
}

/* fp16 scale -> float: quant.c's conversion, looked up in a table of all
 * 65536 values made by that very conversion (qmatmul.c); llama.cpp does the
 * same. */
static inline __attribute__((always_inline)) float SFX(q_h2f)(uint16_t h)
{
    return g_h2f[h];
}

/* n F16 values (quant.c / half.c's conversion, vectorised). */
static void SFX(q_f16_row)(const uint8_t *s, float *y, int n)
{
    for (int k = 0; k < n; k++) {
        uint16_t h;
        memcpy(&h, s + 2 * k, 2);
        y[k] = eg_h2f_inline(h);
    }
}

static void SFX(q_bf16_row)(const uint8_t *s, float *y, int n)
{
    for (int k = 0; k < n; k++) {
        uint16_t h;
        memcpy(&h, s + 2 * k, 2);
        uint32_t u = (uint32_t)h << 16;
        memcpy(&y[k], &u, 4);
    }
}

/* One row of `type` (cols elements, nb blocks) at s into y. Types without a
 * vectorised copy here go through eg_dequantize (same values). */
static void SFX(deq_row)(int type, const uint8_t *s, float *y, int cols)
{
    const v16i lo4 = (v16i){0} + 0x0F;
    switch (type) {
    case EG_GGML_F16:
        SFX(q_f16_row)(s, y, cols);
        return;
    case EG_GGML_BF16:
        SFX(q_bf16_row)(s, y, cols);
        return;
    case EG_GGML_Q4_0: {
        const eg_block_q4_0 *x = (const eg_block_q4_0 *)(const void *)s;
        for (int i = 0; i < cols / EG_QK; i++, y += EG_QK) {
            const float d = SFX(q_h2f)(x[i].d);
            for (int c = 0; c < 16; c += Q_NW) {
                SFX(qni) q = SFX(q_bytes_n)(x[i].qs + c, 0);
                SFX(q_st_n)(y + c, d * __builtin_convertvector((q & 0x0F) - 8, SFX(qnv)));
                SFX(q_st_n)(y + 16 + c, d * __builtin_convertvector((q >> 4) - 8, SFX(qnv)));
            }
        }
        return;
    }
    case EG_GGML_Q4_1: {
        const eg_block_q4_1 *x = (const eg_block_q4_1 *)(const void *)s;
        for (int i = 0; i < cols / EG_QK; i++, y += EG_QK) {
            const float d = SFX(q_h2f)(x[i].d), m = SFX(q_h2f)(x[i].m);
            for (int c = 0; c < 16; c += Q_NW) {
                SFX(qni) q = SFX(q_bytes_n)(x[i].qs + c, 0);
                SFX(qnv) p0 = d * __builtin_convertvector(q & 0x0F, SFX(qnv));
                SFX(qnv) p1 = d * __builtin_convertvector(q >> 4, SFX(qnv));
                SFX(q_st_n)(y + c, p0 + m);
                SFX(q_st_n)(y + 16 + c, p1 + m);
            }
        }
        return;
    }
    case EG_GGML_Q5_0:
    case EG_GGML_Q5_1: {
        const v16i bit = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
        const int has_m = type == EG_GGML_Q5_1;
        const size_t ts = has_m ? sizeof(eg_block_q5_1) : sizeof(eg_block_q5_0);
        for (int i = 0; i < cols / EG_QK; i++, y += EG_QK, s += ts) {
            uint16_t dh, mh;
            uint32_t qh;
            const uint8_t *qs = eg_q5_header(s, has_m, &dh, &mh, &qh);
            const float d = SFX(q_h2f)(dh);
            v16i q = SFX(q_bytes)(qs);
            v16i h0 = (((v16i){0} + (int32_t)(qh & 0xFFFF)) >> bit) & 1;
            v16i h1 = (((v16i){0} + (int32_t)(qh >> 16)) >> bit) & 1;
            v16i q0 = (q & lo4) | (h0 << 4), q1 = (q >> 4) | (h1 << 4);
            if (has_m) {
                const float m = SFX(q_h2f)(mh);
                v16f p0 = d * SFX(q_f)(q0);
                v16f p1 = d * SFX(q_f)(q1);
                SFX(q_st)(y, p0 + m);
                SFX(q_st)(y + 16, p1 + m);
            } else {
                SFX(q_st)(y, d * SFX(q_f)(q0 - 16));
                SFX(q_st)(y + 16, d * SFX(q_f)(q1 - 16));
            }
        }
        return;
    }
    case EG_GGML_Q8_0: {
        const eg_block_q8_0 *x = (const eg_block_q8_0 *)(const void *)s;
        for (int i = 0; i < cols / EG_QK; i++, y += EG_QK) {
            const float d = SFX(q_h2f)(x[i].d);
            for (int c = 0; c < EG_QK; c += Q_NW) {
                const SFX(qni) q = SFX(q_bytes_n)((const uint8_t *)x[i].qs + c, 1);
                SFX(q_st_n)(y + c, __builtin_convertvector(q, SFX(qnv)) * d);
            }
        }
        return;
    }
    case EG_GGML_Q4_K:
    case EG_GGML_Q5_K: {
        const int five = type == EG_GGML_Q5_K;
        const size_t ts = five ? sizeof(eg_block_q5_K) : sizeof(eg_block_q4_K);
        for (int i = 0; i < cols / EG_QK_K; i++, y += EG_QK_K, s += ts) {
            uint16_t dh, dmh;
            memcpy(&dh, s, 2);
            memcpy(&dmh, s + 2, 2);
            const uint8_t *sc12 = s + 4;
            const uint8_t *qh = five ? s + 16 : NULL;
            const uint8_t *qs = s + (five ? 48 : 16);
            const float d = SFX(q_h2f)(dh), dmin = SFX(q_h2f)(dmh);
            for (int g = 0; g < 8; g++) {
                int sc, m;
                if (g < 4) {
                    sc = sc12[g] & 63;
                    m = sc12[g + 4] & 63;
                } else {
                    sc = (sc12[g + 4] & 0x0F) | ((sc12[g - 4] >> 6) << 4);
                    m = (sc12[g + 4] >> 4) | ((sc12[g] >> 6) << 4);
                }
                const float d1 = d * (float)sc, m1 = dmin * (float)m;
                const int shift = 4 * (g % 2);
                for (int hlf = 0; hlf < 2; hlf++) {
                    v16i v = (SFX(q_bytes)(qs + 32 * (g / 2) + 16 * hlf) >> shift) & lo4;
                    if (five) {
                        v |= ((SFX(q_bytes)(qh + 16 * hlf) >> g) & 1) << 4;
                    }
                    v16f p = d1 * SFX(q_f)(v);
                    SFX(q_st)(y + 32 * g + 16 * hlf, p - m1);
                }
            }
        }
        return;
    }
    case EG_GGML_Q6_K: {
        const eg_block_q6_K *x = (const eg_block_q6_K *)(const void *)s;
        for (int i = 0; i < cols / EG_QK_K; i++, y += EG_QK_K) {
            const float d = SFX(q_h2f)(x[i].d);
            for (int h = 0; h < 2; h++) {
                for (int sh = 0; sh < 4; sh++) {
                    for (int hlf = 0; hlf < 2; hlf++) {
                        const int e = 128 * h + 32 * sh + 16 * hlf;
                        v16i lo = (SFX(q_bytes)(x[i].ql + 64 * h + 32 * (sh % 2) + 16 * hlf)
                                   >> (4 * (sh / 2))) & lo4;
                        v16i hi = (SFX(q_bytes)(x[i].qh + 32 * h + 16 * hlf) >> (2 * sh)) & 3;
                        const float dl = d * (float)x[i].scales[e / 16];
                        SFX(q_st)(y + e, dl * SFX(q_f)((lo | (hi << 4)) - 32));
                    }
                }
            }
        }
        return;
    }
    default:
        eg_dequantize(type, s, y, (size_t)cols);
        return;
    }
}

/* Rows [r0, r1) of W into dst (row stride cols). */
static void SFX(deq_rows)(const eg_qmat *W, int r0, int r1, float *dst)
{
    const int cols = (int)W->cols;
    for (int r = r0; r < r1; r++) {
        SFX(deq_row)(W->type, (const uint8_t *)W->data + (size_t)r * W->row_bytes,
                     dst + (size_t)(r - r0) * cols, cols);
    }
}

/* acc + w * x rounded once (a fused multiply-add) in every lane: the FMA
 * instruction on AVX2 / AVX-512, C's fmaf (also rounded once, so the same
 * bits) in the generic copy. */
static inline __attribute__((always_inline)) v16f SFX(q_fma)(v16f w, v16f x, v16f acc)
{
#if defined(__AVX512F__)
    return (v16f)_mm512_fmadd_ps((__m512)w, (__m512)x, (__m512)acc);
#elif defined(__AVX2__) && defined(__FMA__)
    __m256 w0, w1, x0, x1, a0, a1;
    memcpy(&w0, &w, 32);
    memcpy(&w1, (const char *)&w + 32, 32);
    memcpy(&x0, &x, 32);
    memcpy(&x1, (const char *)&x + 32, 32);
    memcpy(&a0, &acc, 32);
    memcpy(&a1, (const char *)&acc + 32, 32);
    a0 = _mm256_fmadd_ps(w0, x0, a0);
    a1 = _mm256_fmadd_ps(w1, x1, a1);
    v16f r;
    memcpy(&r, &a0, 32);
    memcpy((char *)&r + 32, &a1, 32);
    return r;
#else
    for (int l = 0; l < 16; l++) {
        acc[l] = fmaf(w[l], x[l], acc[l]);
    }
    return acc;
#endif
}

/* The 16 accumulators a[0..15] each summed over its lanes into out[j] by
 * one fixed tree (lanes l and l + 8, then l and l + 4, then 0 + 2 and
 * 1 + 3, then those two). Not inlined: its permute masks would stay in
 * registers across the dot loop and push the accumulators onto the stack.
 * AVX-512 runs the tree on four accumulators per
 * instruction (two-source permutes); the other copies lane by lane: the
 * same additions, so the same bits. */
static __attribute__((noinline)) void SFX(q_hsum16)(const v16f *a, float *out)
{
#if defined(__AVX512F__)
    const __m512i m1a = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    const __m512i m1b = _mm512_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    const __m512i m2a = _mm512_setr_epi32(0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27);
    const __m512i m2b = _mm512_setr_epi32(4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    const __m512i m3a = _mm512_setr_epi32(0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29);
    const __m512i m3b = _mm512_setr_epi32(2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    const __m512i m4a = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i m4b = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 s[8], t[4], u[2];
    for (int j = 0; j < 8; j++) {
        __m512 x = (__m512)a[2 * j], y = (__m512)a[2 * j + 1];
        s[j] = _mm512_add_ps(_mm512_permutex2var_ps(x, m1a, y), _mm512_permutex2var_ps(x, m1b, y));
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm512_add_ps(_mm512_permutex2var_ps(s[2 * j], m2a, s[2 * j + 1]),
                             _mm512_permutex2var_ps(s[2 * j], m2b, s[2 * j + 1]));
    }
    for (int j = 0; j < 2; j++) {
        u[j] = _mm512_add_ps(_mm512_permutex2var_ps(t[2 * j], m3a, t[2 * j + 1]),
                             _mm512_permutex2var_ps(t[2 * j], m3b, t[2 * j + 1]));
    }
    _mm512_storeu_ps(out, _mm512_add_ps(_mm512_permutex2var_ps(u[0], m4a, u[1]),
                                        _mm512_permutex2var_ps(u[0], m4b, u[1])));
#else
    for (int j = 0; j < 16; j++) {
        float v[16], b[8], c[4];
        SFX(q_st)(v, a[j]);
        for (int l = 0; l < 8; l++) {
            b[l] = v[l] + v[l + 8];
        }
        for (int l = 0; l < 4; l++) {
            c[l] = b[l] + b[l + 4];
        }
        float e0 = c[0] + c[2], e1 = c[1] + c[3];
        out[j] = e0 + e1;
    }
#endif
}

/* y[t * ldy + r] for NR rows of w (row stride cols) and NT tokens of x
 * (NR, NT <= 4). */
static inline __attribute__((always_inline)) void SFX(dot_block)(
    float *y, size_t ldy, const float *x, size_t ldx, const float *w, int cols, int NR, int NT)
{
    v16f acc[16];
    for (int j = 0; j < 16; j++) {
        acc[j] = (v16f){0};
    }
    const int c16 = cols & ~15;
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
    /* AVX2: 16 accumulators of 16 lanes are 32 ymm registers (of 16), so
     * GCC spilled them every step. Here each 8-lane half of the lanes runs
     * on its own, two weight rows at a time (at most 8 accumulators): lane l
     * still sums the k = l mod 16 terms in order of k, each a fused
     * multiply-add as before, so the bits do not change. */
    for (int hf = 0; hf < 16; hf += 8) {
        for (int r0 = 0; r0 < NR; r0 += 2) {
            const int two = NR - r0 > 1;
            __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
            __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
            const float *w0 = w + (size_t)r0 * cols + hf, *w1 = w0 + (two ? cols : 0);
            const float *x0 = x + hf;
            for (int k = 0; k < c16; k += 16) {
                const __m256 wa = _mm256_loadu_ps(w0 + k), wb = _mm256_loadu_ps(w1 + k);
                __m256 xv = _mm256_loadu_ps(x0 + k);
                a00 = _mm256_fmadd_ps(wa, xv, a00);
                a10 = _mm256_fmadd_ps(wb, xv, a10);
                if (NT > 1) {
                    xv = _mm256_loadu_ps(x0 + ldx + k);
                    a01 = _mm256_fmadd_ps(wa, xv, a01);
                    a11 = _mm256_fmadd_ps(wb, xv, a11);
                }
                if (NT > 2) {
                    xv = _mm256_loadu_ps(x0 + 2 * ldx + k);
                    a02 = _mm256_fmadd_ps(wa, xv, a02);
                    a12 = _mm256_fmadd_ps(wb, xv, a12);
                }
                if (NT > 3) {
                    xv = _mm256_loadu_ps(x0 + 3 * ldx + k);
                    a03 = _mm256_fmadd_ps(wa, xv, a03);
                    a13 = _mm256_fmadd_ps(wb, xv, a13);
                }
            }
            /* row r0 + 1's sums are used only when that row exists */
            const __m256 rows[2][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}};
            for (int i = 0; i < 1 + two; i++) {
                for (int t = 0; t < NT; t++) {
                    memcpy((char *)&acc[4 * (r0 + i) + t] + hf * sizeof(float), &rows[i][t],
                           sizeof(__m256));
                }
            }
        }
    }
#else
    for (int k = 0; k < c16; k += 16) {
        v16f wv[4];
        for (int r = 0; r < NR; r++) {
            wv[r] = SFX(q_ld)(w + (size_t)r * cols + k);
        }
        for (int t = 0; t < NT; t++) {
            v16f xv = SFX(q_ld)(x + (size_t)t * ldx + k);
            for (int r = 0; r < NR; r++) {
                acc[4 * r + t] = SFX(q_fma)(wv[r], xv, acc[4 * r + t]);
            }
        }
    }
#endif
    if (c16 < cols) {   /* F16 / BF16 rows whose length is not a multiple of 16 */
        for (int r = 0; r < NR; r++) {
            for (int t = 0; t < NT; t++) {
                for (int k = c16; k < cols; k++) {
                    acc[4 * r + t][k - c16] = fmaf(w[(size_t)r * cols + k], x[(size_t)t * ldx + k],
                                                   acc[4 * r + t][k - c16]);
                }
            }
        }
    }
    float out[16];
    SFX(q_hsum16)(acc, out);
    for (int r = 0; r < NR; r++) {
        for (int t = 0; t < NT; t++) {
            y[(size_t)t * ldy + r] = out[4 * r + t];
        }
    }
}

/* Y[:, r0:r0+nr] = X @ w^T for nr dequantized rows w (row stride cols):
 * blocks of 4 rows x 4 tokens (16 accumulators) where they fit. */
static void SFX(dot_rows)(float *Y, size_t ldy, const float *X, size_t ldx, int N,
                          const float *w, int nr, int cols)
{
#define EG_QDOT(NR, NT)                                                                   \
    SFX(dot_block)(Y + (size_t)t * ldy + r, ldy, X + (size_t)t * ldx, ldx,               \
                   w + (size_t)r * cols, cols, NR, NT)
    int r = 0;
    for (; r + 4 <= nr; r += 4) {
        int t = 0;
        for (; t + 4 <= N; t += 4) {
            EG_QDOT(4, 4);
        }
        if (N - t == 3) {
            EG_QDOT(4, 3);
        } else if (N - t == 2) {
            EG_QDOT(4, 2);
        } else if (N - t == 1) {
            EG_QDOT(4, 1);
        }
    }
    for (; r < nr; r++) {
        int t = 0;
        for (; t + 4 <= N; t += 4) {
            EG_QDOT(1, 4);
        }
        for (; t < N; t++) {
            EG_QDOT(1, 1);
        }
    }
#undef EG_QDOT
}
