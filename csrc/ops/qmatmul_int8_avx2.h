/*
 * qmatmul_int8_avx2.h — the 256-bit int8 tile of qmatmul_int8.c, included
 * once for AVX2 (I8_VNNI 0: VPMADDUBSW + VPMADDWD) and once for AVX-VNNI
 * (I8_VNNI 1: VPDPBUSD; Q8_0 keeps the AVX2 sign trick). The includer
 * defines I8_BODY (the function's name), I8_TARGET and I8_VNNI; they are
 * undefined at the end. Not a public header.
 */
__attribute__((target(I8_TARGET), always_inline))
static inline void I8_BODY(float *Y, size_t ldy, const uint8_t *xu, size_t ldu,
                                  const float *xd, const float *xds, size_t ldd, const blk8 *P,
                                  int nb, int nt, int nrows, int kind, int q8)
{
    __m256 acc[T2][2];
    for (int j = 0; j < T2; j++) {
        acc[j][0] = acc[j][1] = _mm256_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const blk8 *B = P + b;
        __m256i i0[T2][2], i1[T2][2];
        for (int h = 0; h < 2; h++) {
            const __m256i c0 = _mm256_load_si256((const __m256i *)(const void *)(B->c0 + 8 * h));
            const __m256i c1 = _mm256_load_si256((const __m256i *)(const void *)(B->c1 + 8 * h));
            for (int j = 0; j < T2; j++) {
                /* Q8_0's trick yields sum q*w itself: no correction */
                i0[j][h] = q8 ? _mm256_setzero_si256() : c0;
                i1[j][h] = c1;
            }
        }
        for (int q = 0; q < 8; q++) {
            const __m256i w0 = _mm256_load_si256((const __m256i *)(const void *)B->q[q][0]);
            const __m256i w1 = _mm256_load_si256((const __m256i *)(const void *)B->q[q][8]);
            for (int j = 0; j < T2; j++) {
                if (j >= nt) {
                    break;
                }
                int32_t quad;
                memcpy(&quad, xu + (size_t)j * ldu + (size_t)b * QB + 4 * q, 4);
                const __m256i u = _mm256_set1_epi32(quad);
                __m256i p0, p1;
#if I8_VNNI
                if (!q8) {
                    __m256i *t0 = (kind == K_SPLIT && q >= 4) ? &i1[j][0] : &i0[j][0];
                    __m256i *t1 = (kind == K_SPLIT && q >= 4) ? &i1[j][1] : &i0[j][1];
                    *t0 = _mm256_dpbusd_avx_epi32(*t0, u, w0);
                    *t1 = _mm256_dpbusd_avx_epi32(*t1, u, w1);
                    continue;
                }
#endif
                p0 = dot4_avx2(u, w0, q8);
                p1 = dot4_avx2(u, w1, q8);
                if (kind == K_SPLIT && q >= 4) {
                    i1[j][0] = _mm256_add_epi32(i1[j][0], p0);
                    i1[j][1] = _mm256_add_epi32(i1[j][1], p1);
                } else {
                    i0[j][0] = _mm256_add_epi32(i0[j][0], p0);
                    i0[j][1] = _mm256_add_epi32(i0[j][1], p1);
                }
            }
        }
        for (int h = 0; h < 2; h++) {
            const __m256 d0 = _mm256_load_ps(B->d0 + 8 * h), d1 = _mm256_load_ps(B->d1 + 8 * h);
            const __m256 mm = _mm256_load_ps(B->m + 8 * h);
            for (int j = 0; j < T2; j++) {
                if (j >= nt) {
                    break;
                }
                const __m256 dx = _mm256_set1_ps(xd[(size_t)j * ldd + b]);
                acc[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0[j][h]), _mm256_mul_ps(d0, dx),
                                            acc[j][h]);
                if (kind == K_SPLIT) {
                    acc[j][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1[j][h]),
                                                _mm256_mul_ps(d1, dx), acc[j][h]);
                }
                if (kind == K_MIN) {
                    acc[j][h] = _mm256_fmadd_ps(mm, _mm256_set1_ps(xds[(size_t)j * ldd + b]),
                                                acc[j][h]);
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
