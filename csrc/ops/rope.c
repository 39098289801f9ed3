/*
 * rope.c — rotary position embedding (eg_ops.h).
 *
 * The angles come from a table built once per batch (eg_rope_table), the
 * same for every head and layer; the rotation itself is a few multiplies per
 * pair. The table follows Hugging Face's float32 arithmetic (inv_freq, then
 * the angle rounded to float32) so that positions far into a text rotate as
 * transformers rotates them; the cosine and sine of that float angle are
 * taken in double and rounded once.
 */
#include "eg.h"
#include "eg_ops.h"

#include <math.h>

void eg_rope_table(float *cos_t, float *sin_t, int n_pos, int head_dim, double base)
{
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* torch: 1.0 / (base ** (arange(0, dim, 2).float() / dim)) in float32 */
        const float expo = (float)(2 * i) / (float)head_dim;
        const float inv = 1.0f / powf((float)base, expo);
        for (int p = 0; p < n_pos; p++) {
            const float angle = (float)p * inv;
            cos_t[(size_t)p * half + i] = (float)cos((double)angle);
            sin_t[(size_t)p * half + i] = (float)sin((double)angle);
        }
    }
}

/* Rotate every pair by its angle times `sign` (+1 forward, -1 backward). */
static void rotate(float *x, size_t ld, size_t N, const int32_t *pos, int n_heads, int head_dim,
                   const float *cos_t, const float *sin_t, int mode, float sign)
{
    const int half = head_dim / 2;
    /* in NORM mode pair i is (2i, 2i+1); in NEOX mode (i, i + half) */
    const int stride = mode == EG_ROPE_NEOX ? 1 : 2;
    const int partner = mode == EG_ROPE_NEOX ? half : 1;
#pragma omp parallel for schedule(static) if (EG_OMP_WORTH(N, (size_t)n_heads * head_dim))
    for (long t = 0; t < (long)N; t++) {
        const float *c = cos_t + (size_t)pos[t] * half;
        const float *s = sin_t + (size_t)pos[t] * half;
        for (int h = 0; h < n_heads; h++) {
            float *xh = x + (size_t)t * ld + (size_t)h * head_dim;
            for (int i = 0; i < half; i++) {
                float *a = xh + i * stride, *b = a + partner;
                const float x0 = *a, x1 = *b, si = sign * s[i];
                /* q*cos + rotate_half(q)*sin, as transformers writes it */
                *a = x0 * c[i] + (-x1) * si;
                *b = x1 * c[i] + x0 * si;
            }
        }
    }
}

void eg_rope_forward(float *x, size_t ld, size_t N, const int32_t *pos, int n_heads,
                     int head_dim, const float *cos_t, const float *sin_t, int mode)
{
    rotate(x, ld, N, pos, n_heads, head_dim, cos_t, sin_t, mode, 1.0f);
}

void eg_rope_backward(float *dx, size_t ld, size_t N, const int32_t *pos, int n_heads,
                      int head_dim, const float *cos_t, const float *sin_t, int mode)
{
    rotate(dx, ld, N, pos, n_heads, head_dim, cos_t, sin_t, mode, -1.0f);
}
