/*
 * swiglu.c — the gated activation of Llama-family feed-forward blocks
 * (eg_ops.h): out = silu(gate) * up, silu(x) = x * sigmoid(x).
 *
 * sigmoid uses the core's branch-free exp (eg_vmath.h, about 1 ulp), so the
 * loop vectorises; it is compiled per instruction set (eg_isa.h) and gives
 * the same bits on every level.
 */
#include "eg.h"
#include "eg_isa.h"
#include "eg_ops.h"

#include <math.h>
#include <string.h>

typedef void (*row_fn)(float *, const float *, const float *, size_t);

#define EG_ISA_BODY "../ops/swiglu_simd.h"
#include "eg_isa.h"

#define ROW_SET(sfx) EG_CAT2(swiglu_row, sfx)
static const row_fn copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(ROW_SET);

/* Below this many elements one thread is faster than a parallel region on a
 * shared machine (see bert_kernels.c's EG_PAR_MIN). */
#define PAR_MIN (1 << 18)

void eg_swiglu_forward(float *out, size_t ldo, const float *gate, const float *up, size_t ld,
                       size_t N, int F)
{
    const row_fn row = copies[eg_isa_level()];
#pragma omp parallel for schedule(static) if ((double)N * F >= PAR_MIN)
    for (long i = 0; i < (long)N; i++) {
        row(out + (size_t)i * ldo, gate + (size_t)i * ld, up + (size_t)i * ld, (size_t)F);
    }
}

void eg_swiglu_backward(float *dgate, float *dup, size_t ldd, const float *dout, size_t ldo,
                        const float *gate, const float *up, size_t ld, size_t N, int F)
{
    /* out = g sig(g) u: du = dout g sig(g); dg = dout u sig(g) (1 + g (1 - sig(g))).
     * Scalar libm exp: training is not limited by this loop. */
#pragma omp parallel for schedule(static) if ((double)N * F >= PAR_MIN)
    for (long i = 0; i < (long)N; i++) {
        const float *g = gate + (size_t)i * ld, *u = up + (size_t)i * ld;
        const float *dy = dout + (size_t)i * ldo;
        float *dg = dgate + (size_t)i * ldd, *du = dup + (size_t)i * ldd;
        for (int j = 0; j < F; j++) {
            const float sg = 1.0f / (1.0f + expf(-g[j]));
            const float gj = g[j], uj = u[j], d = dy[j];
            du[j] = d * (gj * sg);
            dg[j] = d * uj * (sg * (1.0f + gj * (1.0f - sg)));
        }
    }
}
