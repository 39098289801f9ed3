/*
 * half.c — IEEE binary16 and bfloat16 <-> binary32.
 *
 * Bit manipulation only, written branch-free (selects instead of jumps) so
 * that GCC vectorises each loop at -O3. The half -> float direction scales
 * the shifted bits by 2^112, which turns the half exponent bias into the
 * float one and handles subnormals exactly; float -> half rounds to nearest
 * even by integer addition, and uses float addition of 0.5 to round values in
 * the half-subnormal range. Neither needs F16C, so the package runs on any
 * x86-64 or ARM CPU.
 */
#include "eg.h"

#include <string.h>

static inline uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float half_to_float(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t em = h & 0x7fffu;
    float scaled = f32_from_bits(em << 13) * 0x1.0p112f;
    uint32_t bits = f32_bits(scaled);
    bits |= (em >= 0x7c00u) ? 0x7f800000u : 0u; /* inf / NaN keep their mantissa */
    return f32_from_bits(bits | sign);
}

static inline uint16_t float_to_half(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;

    /* normal range: rebias the exponent (-112 << 23) and round to nearest even */
    uint32_t normal = (ax + 0xc8000fffu + ((ax >> 13) & 1u)) >> 13;
    /* subnormal range (|f| < 2^-14): 0.5 + |f| has ulp 2^-24 = half's subnormal ulp */
    uint32_t sub = f32_bits(f32_from_bits(ax) + 0.5f) - 0x3f000000u;
    uint32_t nan = 0x7e00u | ((ax >> 13) & 0x3ffu);

    uint32_t r = ax < 0x38800000u ? sub : normal;
    r = ax >= 0x477ff000u ? 0x7c00u : r; /* >= 65520 rounds to inf */
    r = ax > 0x7f800000u ? nan : r;
    return (uint16_t)(sign | r);
}

static inline uint16_t float_to_bf16(float f)
{
    uint32_t x = f32_bits(f);
    uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    uint32_t nan = (x >> 16) | 0x40u;
    return (uint16_t)((x & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

void eg_f16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = half_to_float(src[i]);
    }
}

void eg_f32_to_f16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = float_to_half(src[i]);
    }
}

void eg_bf16_to_f32(const uint16_t *src, float *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = f32_from_bits((uint32_t)src[i] << 16);
    }
}

void eg_f32_to_bf16(const float *src, uint16_t *dst, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        dst[i] = float_to_bf16(src[i]);
    }
}
