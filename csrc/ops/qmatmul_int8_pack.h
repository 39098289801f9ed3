/*
 * qmatmul_int8_pack.h — the weight repack of qmatmul_int8.c (unpacking each
 * type's blocks into the eg_int8_block layout), included once per
 * instruction set through eg_isa.h (SFX(name) gives each copy its suffix)
 * so the compiler vectorises it for the CPU; integer and exact float work
 * only, so every copy writes the same bytes. Also the activation quantizer
 * (float32 operations without fusion or reassociation: the same values on
 * every copy). Not a public header.
 */

/* One block of 32 values: the codes q + 128, quad g (4 codes) at
 * u + g * qstride; *d = dx, *ds = dx * sum(q). */
static inline void SFX(q8_block)(const float *xb, uint8_t *u, size_t qstride, float *d_out,
                            float *ds_out)
{
    /* max |x| on the bit patterns: with the sign cleared, the order of
     * non-negative floats is that of their bits as unsigned integers, and
     * every inf or NaN is above the largest finite float; an integer
     * maximum vectorises (a float one does not without -ffast-math) */
    uint32_t bits[QB];
    memcpy(bits, xb, sizeof bits);
    uint32_t umax = 0;
    for (int k = 0; k < QB; k++) {
        const uint32_t a = bits[k] & 0x7fffffffu;
        umax = a > umax ? a : umax;
    }
    const int finite = umax <= 0x7f7fffffu;
    float amax;
    memcpy(&amax, &umax, 4);
    uint8_t codes[QB];
    float d = 0.0f;
    int sum = 0;
    if (!finite) {
        d = NAN;
        memset(codes, 128, QB);
    } else if (amax < 0x1p-120f) {
        /* zero, or so small that 127 / amax would overflow: the block's
         * contribution (< 32 * 2^-120 * |w|) is dropped */
        memset(codes, 128, QB);
    } else {
        d = amax / 127.0f;
        const float id = 1.0f / d;
#if defined(__AVX512F__) && defined(__AVX512BW__)
        /* the same operations as the loop below, 16 lanes at a time (min /
         * max equal the comparisons for finite values; the conversion is
         * exact on integer values) */
        const __m512 vid = _mm512_set1_ps(id), magic = _mm512_set1_ps(0x1.8p23f);
        const __m512 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
        __m512i qv[2];
        for (int h = 0; h < 2; h++) {
            __m512 v = _mm512_mul_ps(_mm512_loadu_ps(xb + 16 * h), vid);
            v = _mm512_sub_ps(_mm512_add_ps(v, magic), magic);
            v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
            qv[h] = _mm512_cvttps_epi32(v);
        }
        sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qv[0], qv[1]));
        const __m512i off = _mm512_set1_epi32(128);
        _mm_storeu_si128((__m128i *)(void *)codes, _mm512_cvtepi32_epi8(_mm512_add_epi32(qv[0], off)));
        _mm_storeu_si128((__m128i *)(void *)(codes + 16),
                         _mm512_cvtepi32_epi8(_mm512_add_epi32(qv[1], off)));
#else
        for (int k = 0; k < QB; k++) {
            /* rint: adding and removing 1.5 * 2^23 rounds to an integer in
             * the FPU's mode (nearest even), exactly for |v| < 2^22 (here
             * |v| <= 127 and a rounding bit); unlike nearbyintf it needs no
             * SSE4.1 and no library call, so the loop vectorises */
            float v = xb[k] * id;
            v = (v + 0x1.8p23f) - 0x1.8p23f;
            v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
            const int q = (int)v;
            sum += q;
            codes[k] = (uint8_t)(q + 128);
        }
#endif
    }
    for (int g = 0; g < QB / 4; g++) {
        memcpy(u + (size_t)g * qstride, codes + 4 * g, 4);
    }
    *d_out = d;
    *ds_out = d * (float)sum;
}

/* One token's row (cols values) into xu (row layout: quad g at xu + 4 g). */
static void SFX(q8_row)(uint8_t *xu, float *xd, float *xds, const float *x, int cols)
{
    for (int b = 0; b < cols / QB; b++) {
        SFX(q8_block)(x + (size_t)b * QB, xu + (size_t)b * QB, 4, xd + b, xds + b);
    }
}

/* Tile T (tokens XT T .. XT T + XT - 1) of the tiled layout (qmatmul_int8.c:
 * q8_quantize_tiles). */
static void SFX(q8_tile)(uint8_t *xt, float *xd, float *xds, const float *X, size_t ldx,
                         size_t N, int cols, size_t T)
{
    const int nb = cols / QB;
    for (int j = 0; j < XT; j++) {
        const size_t t = T * XT + (size_t)j;
        for (int b = 0; b < nb; b++) {
            const size_t tb = T * (size_t)nb + (size_t)b;
            uint8_t *u = xt + tb * (QB * XT) + 4 * (size_t)j;
            if (t < N) {
                SFX(q8_block)(X + t * ldx + (size_t)b * QB, u, 4 * XT, xd + tb * XT + j,
                              xds + tb * XT + j);
            } else {
                for (int g = 0; g < QB / 4; g++) {
                    memset(u + (size_t)g * 4 * XT, 128, 4);
                }
                xd[tb * XT + j] = 0.0f;
                xds[tb * XT + j] = 0.0f;
            }
        }
    }
}



/* ------------------------------------------------------ weight unpacking */

/* Row `src` of `type` (cols columns) unpacked: w[cols] codes, and per block
 * of 32: d0, d1 (scales of the two halves), m (min term). */
static void SFX(unpack_row)(int type, const uint8_t *restrict s, int cols, int8_t *restrict w,
                            float *restrict d0, float *restrict d1, float *restrict m)
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
            /* 16 bytes at once (gcc left the scalar loop unvectorised) */
            const uint8_t off = has_m ? 0 : 8;
            u8x16 v;
            memcpy(&v, qs, 16);
            const u8x16 lo = (v & 0x0F) - off, hi = (v >> 4) - off;
            memcpy(w, &lo, 16);
            memcpy(w + 16, &hi, 16);
            d0[b] = d1[b] = eg_h2f_inline(dh);
            m[b] = has_m ? eg_h2f_inline(mh) : 0.0f;
        }
        return;
    }
    case EG_GGML_Q5_0:
    case EG_GGML_Q5_1: {
        const int has_m = type == EG_GGML_Q5_1;
        const size_t ts = has_m ? sizeof(eg_block_q5_1) : sizeof(eg_block_q5_0);
        for (int b = 0; b < nb32; b++, s += ts, w += QB) {
            uint16_t dh, mh;
            uint32_t qh;
            const uint8_t *qs = eg_q5_header(s, has_m, &dh, &mh, &qh);
            const int off = has_m ? 0 : 16;
            for (int j = 0; j < 16; j++) {
                w[j] = (int8_t)(((qs[j] & 0x0F) | (((qh >> j) & 1) << 4)) - off);
                w[j + 16] = (int8_t)(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off);
            }
            d0[b] = d1[b] = eg_h2f_inline(dh);
            m[b] = has_m ? eg_h2f_inline(mh) : 0.0f;
        }
        return;
    }
    case EG_GGML_Q8_0: {
        const eg_block_q8_0 *x = (const eg_block_q8_0 *)(const void *)s;
        for (int b = 0; b < nb32; b++, w += QB) {
            memcpy(w, x[b].qs, QB);
            d0[b] = d1[b] = eg_h2f_inline(x[b].d);
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
            const float d = eg_h2f_inline(dh), dmin = eg_h2f_inline(dmh);
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
            const float d = eg_h2f_inline(x[i].d);
            for (int h = 0; h < 2; h++) {
                for (int sh = 0; sh < 4; sh++) {
                    const uint8_t *ql = x[i].ql + 64 * h + 32 * (sh % 2);
                    const uint8_t *qh = x[i].qh + 32 * h;
                    int8_t *we = w + EG_QK_K * i + 128 * h + 32 * sh;
                    for (int l = 0; l < 32; l++) {
                        const int lo = (ql[l] >> (4 * (sh / 2))) & 0x0F;
                        const int hi = (qh[l] >> (2 * sh)) & 3;
                        we[l] = (int8_t)((lo | (hi << 4)) - 32);
                    }
                }
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

/* Rows r0 .. r0 + nr (nr <= 16) of W as one panel at dst (eg_quant.h's
 * eg_int8_block layout). wscratch: 16 * cols int8; fscratch: 48 * cols / 32
 * floats. Rows are unpacked first, then each block is written in order. */
static void SFX(pack_panel)(void *dst, const eg_qmat *W, int r0, int nr, int8_t *wscratch,
                            float *fscratch)
{
    const int cols = (int)W->cols, nb = cols / QB;
    const int split = kind_of(W->type) == K_SPLIT;
    blk8 *P = dst;
    float *d0 = fscratch, *d1 = fscratch + (size_t)PR * nb, *m = fscratch + (size_t)2 * PR * nb;
    memset(wscratch, 0, (size_t)PR * cols);
    memset(fscratch, 0, (size_t)3 * PR * nb * sizeof(float));
    for (int r = 0; r < nr; r++) {
        SFX(unpack_row)(W->type, (const uint8_t *)W->data + (size_t)(r0 + r) * W->row_bytes, cols,
                        wscratch + (size_t)r * cols, d0 + (size_t)r * nb, d1 + (size_t)r * nb,
                        m + (size_t)r * nb);
    }
    for (int b = 0; b < nb; b++) {
        blk8 *B = P + b;
        for (int q = 0; q < 8; q++) {
            for (int r = 0; r < PR; r++) {
                memcpy(B->q[q][r], wscratch + (size_t)r * cols + (size_t)b * QB + 4 * q, 4);
            }
        }
        /* the code sums of the two halves, from the packed block: the
         * quads summed lane by lane (64 lanes: 16 rows x 4), then each
         * row's 4 lanes */
        const int8_t *flat = &B->q[0][0][0];
        int16_t t0[64], t1[64];
        for (int l = 0; l < 64; l++) {
            t0[l] = (int16_t)(flat[l] + flat[64 + l] + flat[128 + l] + flat[192 + l]);
            t1[l] = (int16_t)(flat[256 + l] + flat[320 + l] + flat[384 + l] + flat[448 + l]);
        }
        for (int r = 0; r < PR; r++) {
            const int s0 = t0[4 * r] + t0[4 * r + 1] + t0[4 * r + 2] + t0[4 * r + 3];
            const int s1 = t1[4 * r] + t1[4 * r + 1] + t1[4 * r + 2] + t1[4 * r + 3];
            B->d0[r] = d0[(size_t)r * nb + b];
            B->d1[r] = d1[(size_t)r * nb + b];
            B->m[r] = m[(size_t)r * nb + b];
            B->c0[r] = -128 * (split ? s0 : s0 + s1);
            B->c1[r] = split ? -128 * s1 : 0;
        }
    }
}
