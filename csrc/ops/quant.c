/*
 * quant.c — ggml type traits and dequantization to float32 (eg_quant.h).
 *
 * Written from the block layouts (llama.cpp ggml-common.h) and checked bit
 * for bit against the `gguf` Python package's dequantize, which computes
 * every value in float32. The order of operations is therefore part of the
 * contract: each expression below is the package's, step by step, and the
 * package's float32 products and sums are never fused (gcc's ISO C mode
 * implies -ffp-contract=off; the pragma asks clang for the same).
 *
 * Blocks are read through packed structs, so src needs no alignment.
 */
#include "eg.h"
#include "eg_ops.h"
#include "eg_quant.h"

#include <math.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

typedef struct {
    const char *name;
    size_t block_size, type_size;
    int dequant;
} type_traits;

static const type_traits traits[EG_GGML_TYPE_LIMIT] = {
    [EG_GGML_F32] = {"F32", 1, 4, 1},
    [EG_GGML_F16] = {"F16", 1, 2, 1},
    [EG_GGML_Q4_0] = {"Q4_0", EG_QK, sizeof(eg_block_q4_0), 1},
    [EG_GGML_Q4_1] = {"Q4_1", EG_QK, sizeof(eg_block_q4_1), 1},
    [EG_GGML_Q5_0] = {"Q5_0", EG_QK, sizeof(eg_block_q5_0), 1},
    [EG_GGML_Q5_1] = {"Q5_1", EG_QK, sizeof(eg_block_q5_1), 1},
    [EG_GGML_Q8_0] = {"Q8_0", EG_QK, sizeof(eg_block_q8_0), 1},
    [EG_GGML_Q2_K] = {"Q2_K", EG_QK_K, sizeof(eg_block_q2_K), 1},
    [EG_GGML_Q3_K] = {"Q3_K", EG_QK_K, sizeof(eg_block_q3_K), 1},
    [EG_GGML_Q4_K] = {"Q4_K", EG_QK_K, sizeof(eg_block_q4_K), 1},
    [EG_GGML_Q5_K] = {"Q5_K", EG_QK_K, sizeof(eg_block_q5_K), 1},
    [EG_GGML_Q6_K] = {"Q6_K", EG_QK_K, sizeof(eg_block_q6_K), 1},
    [EG_GGML_Q8_K] = {"Q8_K", EG_QK_K, sizeof(eg_block_q8_K), 1},
    [EG_GGML_BF16] = {"BF16", 1, 2, 1},
};

/* Names of ids we refuse, so a message can say what the file holds. */
static const char *const other_names[EG_GGML_TYPE_LIMIT] = {
    [4] = "Q4_2 (retired)", [5] = "Q4_3 (retired)", [EG_GGML_Q8_1] = "Q8_1",
    [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL",
    [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS", [24] = "I8", [25] = "I16", [26] = "I32",
    [27] = "I64", [28] = "F64", [29] = "IQ1_M", [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4",
};

int eg_ggml_type_traits(int type, size_t *block_size, size_t *type_size)
{
    if (type < 0 || type >= EG_GGML_TYPE_LIMIT || traits[type].name == NULL) {
        return -1;
    }
    *block_size = traits[type].block_size;
    *type_size = traits[type].type_size;
    return 0;
}

const char *eg_ggml_type_name(int type)
{
    if (type < 0 || type >= EG_GGML_TYPE_LIMIT) {
        return "?";
    }
    if (traits[type].name != NULL) {
        return traits[type].name;
    }
    return other_names[type] != NULL ? other_names[type] : "?";
}

const char *eg_ggml_supported_names(void)
{
    return "F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K Q8_K";
}

int eg_ggml_can_dequantize(int type)
{
    return type >= 0 && type < EG_GGML_TYPE_LIMIT && traits[type].dequant;
}

/* ------------------------------------------------------------ the kernels */

static inline float h2f(uint16_t h)
{
    float f;
    eg_f16_to_f32(&h, &f, 1);
    return f;
}

static void deq_q4_0(const eg_block_q4_0 *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < EG_QK / 2; j++) {
            y[j] = d * (float)((x[i].qs[j] & 0x0F) - 8);
            y[j + EG_QK / 2] = d * (float)((x[i].qs[j] >> 4) - 8);
        }
    }
}

static void deq_q4_1(const eg_block_q4_1 *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        for (int j = 0; j < EG_QK / 2; j++) {
            float p0 = d * (float)(x[i].qs[j] & 0x0F);
            float p1 = d * (float)(x[i].qs[j] >> 4);
            y[j] = p0 + m;
            y[j + EG_QK / 2] = p1 + m;
        }
    }
}

static inline uint32_t le32(const uint8_t b[4])
{
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void deq_q5_0(const eg_block_q5_0 *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK) {
        const float d = h2f(x[i].d);
        const uint32_t qh = le32(x[i].qh);
        for (int j = 0; j < EG_QK / 2; j++) {
            int q0 = (int)((x[i].qs[j] & 0x0F) | ((qh >> j) & 1u) << 4);
            int q1 = (int)((x[i].qs[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)(q0 - 16);
            y[j + EG_QK / 2] = d * (float)(q1 - 16);
        }
    }
}

static void deq_q5_1(const eg_block_q5_1 *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        const uint32_t qh = le32(x[i].qh);
        for (int j = 0; j < EG_QK / 2; j++) {
            float p0 = d * (float)((x[i].qs[j] & 0x0F) | ((qh >> j) & 1u) << 4);
            float p1 = d * (float)((x[i].qs[j] >> 4) | ((qh >> (j + 16)) & 1u) << 4);
            y[j] = p0 + m;
            y[j + EG_QK / 2] = p1 + m;
        }
    }
}

static void deq_q8_0(const eg_block_q8_0 *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK) {
        const float d = h2f(x[i].d);
        for (int j = 0; j < EG_QK; j++) {
            y[j] = (float)x[i].qs[j] * d;
        }
    }
}

static void deq_q2_K(const eg_block_q2_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        /* element 128h + 32s + l: bits 2s of qs[32h + l], group e / 16 */
        for (int h = 0; h < 2; h++) {
            for (int s = 0; s < 4; s++) {
                for (int l = 0; l < 32; l++) {
                    int e = 128 * h + 32 * s + l;
                    uint8_t sc = x[i].scales[e / 16];
                    float dl = d * (float)(sc & 0x0F);
                    float ml = dmin * (float)(sc >> 4);
                    float q = (float)((x[i].qs[32 * h + l] >> (2 * s)) & 3);
                    float p = dl * q;
                    y[e] = p - ml;
                }
            }
        }
    }
}

static void deq_q3_K(const eg_block_q3_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        const float d = h2f(x[i].d);
        const uint8_t *s = x[i].scales;
        float dl[16];
        for (int j = 0; j < 16; j++) {
            int lo = (j < 8 ? s[j] : s[j - 8] >> 4) & 0x0F;
            int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            dl[j] = d * (float)((lo | hi << 4) - 32);
        }
        /* element 128h + 32s + l: low bits 2s of qs[32h + l], high bit
         * (4h + s) of hmask[l]; group e / 16 */
        for (int h = 0; h < 2; h++) {
            for (int sh = 0; sh < 4; sh++) {
                for (int l = 0; l < 32; l++) {
                    int e = 128 * h + 32 * sh + l;
                    int lo = (x[i].qs[32 * h + l] >> (2 * sh)) & 3;
                    int hb = (x[i].hmask[l] >> (4 * h + sh)) & 1;
                    y[e] = dl[e / 16] * (float)(lo - (hb ? 0 : 4));
                }
            }
        }
    }
}

/* The 6-bit scale and min of group j of a Q4_K / Q5_K block. */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* One Q4_K or Q5_K super-block (same header; qh is NULL for Q4_K): group
 * g = 2c + hi holds nibble hi of qs[32c + l], plus bit g of qh[l] as bit 4. */
static inline void deq_k4_block(uint16_t dh, uint16_t dminh, const uint8_t *scales, const uint8_t *qs,
                                const uint8_t *qh, float *y)
{
    const float d = h2f(dh), dmin = h2f(dminh);
    for (int g = 0; g < 8; g++) {
        int sc, m;
        scale_min_k4(g, scales, &sc, &m);
        const float d1 = d * (float)sc, m1 = dmin * (float)m;
        const uint8_t *q = qs + 32 * (g / 2);
        const int shift = 4 * (g % 2);
        for (int l = 0; l < 32; l++) {
            int v = ((q[l] >> shift) & 0x0F) | (qh != NULL ? ((qh[l] >> g) & 1) << 4 : 0);
            float p = d1 * (float)v;
            y[32 * g + l] = p - m1;
        }
    }
}

static void deq_q4_K(const eg_block_q4_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        deq_k4_block(x[i].d, x[i].dmin, x[i].scales, x[i].qs, NULL, y);
    }
}

static void deq_q5_K(const eg_block_q5_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        deq_k4_block(x[i].d, x[i].dmin, x[i].scales, x[i].qs, x[i].qh, y);
    }
}

static void deq_q6_K(const eg_block_q6_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        const float d = h2f(x[i].d);
        /* element 128h + 32s + l: nibble (s / 2) of ql[64h + 32(s % 2) + l],
         * bits 2s of qh[32h + l]; group e / 16 */
        for (int h = 0; h < 2; h++) {
            for (int s = 0; s < 4; s++) {
                for (int l = 0; l < 32; l++) {
                    int e = 128 * h + 32 * s + l;
                    int lo = (x[i].ql[64 * h + 32 * (s % 2) + l] >> (4 * (s / 2))) & 0x0F;
                    int hi = (x[i].qh[32 * h + l] >> (2 * s)) & 3;
                    float dl = d * (float)x[i].scales[e / 16];
                    y[e] = dl * (float)((lo | hi << 4) - 32);
                }
            }
        }
    }
}

static void deq_q8_K(const eg_block_q8_K *x, float *y, size_t nb)
{
    for (size_t i = 0; i < nb; i++, y += EG_QK_K) {
        const float d = x[i].d;
        for (int j = 0; j < EG_QK_K; j++) {
            y[j] = (float)x[i].qs[j] * d;
        }
    }
}

/* Dequantize blocks [b0, b1) of src. */
static void deq_range(int type, const unsigned char *src, float *dst, size_t b0, size_t b1)
{
    const size_t bs = traits[type].block_size, ts = traits[type].type_size;
    const unsigned char *s = src + b0 * ts;
    float *y = dst + b0 * bs;
    size_t nb = b1 - b0;
    switch (type) {
    case EG_GGML_F32:
        memcpy(y, s, nb * 4);
        break;
    case EG_GGML_F16:
        for (size_t k = 0; k < nb; k++) {
            uint16_t h;
            memcpy(&h, s + 2 * k, 2);
            y[k] = h2f(h);
        }
        break;
    case EG_GGML_BF16:
        for (size_t k = 0; k < nb; k++) {
            uint16_t h;
            memcpy(&h, s + 2 * k, 2);
            uint32_t u = (uint32_t)h << 16;
            memcpy(&y[k], &u, 4);
        }
        break;
    case EG_GGML_Q4_0: deq_q4_0((const eg_block_q4_0 *)(const void *)s, y, nb); break;
    case EG_GGML_Q4_1: deq_q4_1((const eg_block_q4_1 *)(const void *)s, y, nb); break;
    case EG_GGML_Q5_0: deq_q5_0((const eg_block_q5_0 *)(const void *)s, y, nb); break;
    case EG_GGML_Q5_1: deq_q5_1((const eg_block_q5_1 *)(const void *)s, y, nb); break;
    case EG_GGML_Q8_0: deq_q8_0((const eg_block_q8_0 *)(const void *)s, y, nb); break;
    case EG_GGML_Q2_K: deq_q2_K((const eg_block_q2_K *)(const void *)s, y, nb); break;
    case EG_GGML_Q3_K: deq_q3_K((const eg_block_q3_K *)(const void *)s, y, nb); break;
    case EG_GGML_Q4_K: deq_q4_K((const eg_block_q4_K *)(const void *)s, y, nb); break;
    case EG_GGML_Q5_K: deq_q5_K((const eg_block_q5_K *)(const void *)s, y, nb); break;
    case EG_GGML_Q6_K: deq_q6_K((const eg_block_q6_K *)(const void *)s, y, nb); break;
    case EG_GGML_Q8_K: deq_q8_K((const eg_block_q8_K *)(const void *)s, y, nb); break;
    default:
        for (size_t k = 0; k < nb * bs; k++) {
            y[k] = NAN;
        }
        break;
    }
}

void eg_dequantize(int type, const void *src, float *dst, size_t n)
{
    if (!eg_ggml_can_dequantize(type)) {
        for (size_t k = 0; k < n; k++) {
            dst[k] = NAN;
        }
        return;
    }
    const size_t bs = traits[type].block_size;
    const size_t nb = n / bs;
    /* Chunks of 1024 blocks: one thread's share is contiguous memory, and
     * each element's value does not depend on who computes it. */
    const size_t chunk = 1024;
    const size_t nchunks = (nb + chunk - 1) / chunk;
    if (nchunks > 1 && EG_OMP_WORTH(n, 1)) {
        #pragma omp parallel for schedule(static)
        for (size_t c = 0; c < nchunks; c++) {
            size_t b1 = (c + 1) * chunk < nb ? (c + 1) * chunk : nb;
            deq_range(type, src, dst, c * chunk, b1);
        }
    } else {
        deq_range(type, src, dst, 0, nb);
    }
}
