/*
 * qmatmul_int8_avx2.h — the 256-bit int8 tile of qmatmul_int8.c, included
 * once for AVX2 (I8_VNNI 0: VPMADDUBSW + VPMADDWD) and once for AVX-VNNI
 * (I8_VNNI 1: VPDPBUSD; Q8_0 keeps the AVX2 sign trick). The includer
 * defines I8_BODY (the function's name), I8_TARGET and I8_VNNI; they are
 * undefined at the end. Not a public header.
 *
 * Y[j][0..nrows) for tokens j < nt <= T2 whose codes start at xq (a tile's
 * token j0: quad q of token j of block b at xq + b * 256 + q * 32 + 4 j)
 * and scales at d / ds (block b, token j at [b * XT + j]).
 */
__attribute__((target(I8_TARGET), always_inline))
static inline void I8_BODY(float *Y, size_t ldy, const uint8_t *xq, const float *d,
                           const float *ds, const blk8 *P, int nb, int nt, int nrows, int kind,
                           int q8)
{
    __m256 acc[T2][2];
    for (int j = 0; j < T2; j++) {
        acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const blk8 *B = P + b;
        const uint8_t *ub = xq + (size_t)b * (QB * XT);
        const int halves = kind == K_SPLIT ? 2 : 1;
        for (int h = 0; h < halves; h++) {
            __m256i ia[T2][2];
            for (int g = 0; g < 2; g++) {
                /* Q8_0's trick yields sum q*w itself: no correction */
                const __m256i c = q8 ? _mm256_setzero_si256()
                                     : _mm256_load_si256((const __m256i *)(const void *)
                                                         ((h ? B->c1 : B->c0) + 8 * g));
                for (int j = 0; j < T2; j++) {
                    ia[j][g] = c;
                }
            }
            const int q0 = kind == K_SPLIT ? 4 * h : 0, q1 = kind == K_SPLIT ? q0 + 4 : 8;
            for (int q = q0; q < q1; q++) {
                const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)B->q[q][0]);
                const __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)B->q[q][8]);
                for (int j = 0; j < T2; j++) {
                    int32_t quad;
                    memcpy(&quad, ub + (size_t)q * 4 * XT + 4 * (size_t)j, 4);
                    const __m256i u = _mm256_set1_epi32(quad);
#if I8_VNNI
                    if (!q8) {
                        ia[j][0] = _mm256_dpbusd_avx_epi32(ia[j][0], u, w0);
                        ia[j][1] = _mm256_dpbusd_avx_epi32(ia[j][1], u, w1);
                        continue;
                    }
#endif
                    ia[j][0] = _mm256_add_epi32(ia[j][0], dot4_avx2(u, w0, q8));
                    ia[j][1] = _mm256_add_epi32(ia[j][1], dot4_avx2(u, w1, q8));
                }
            }
            for (int g = 0; g < 2; g++) {
                const __m256 dw = _mm256_load_ps((h ? B->d1 : B->d0) + 8 * g);
                for (int j = 0; j < T2; j++) {
                    const __m256 dx = _mm256_set1_ps(d[(size_t)b * XT + j]);
                    acc[j][g] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[j][g]), _mm256_mul_ps(dw, dx),
                                                acc[j][g]);
                }
            }
        }
        if (kind == K_MIN) {
            for (int g = 0; g < 2; g++) {
                const __m256 mm = _mm256_load_ps(B->m + 8 * g);
                for (int j = 0; j < T2; j++) {
                    acc[j][g] = _mm256_fmadd_ps(mm, _mm256_set1_ps(ds[(size_t)b * XT + j]),
                                                acc[j][g]);
                }
            }
        }
    }
    for (int j = 0; j < nt; j++) {
        float out[PR];
        _mm256_storeu_ps(out, acc[j][0]);
        _mm256_storeu_ps(out + 8, acc[j][1]);
        memcpy(Y + (size_t)j * ldy, out, (size_t)nrows * sizeof(float));
    }
}
#undef I8_BODY
#undef I8_TARGET
#undef I8_VNNI
