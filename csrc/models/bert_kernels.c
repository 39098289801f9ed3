/*
 * bert_kernels.c — the element-wise and attention kernels of the BERT
 * encoder: LayerNorm (plain and fused with bias + residual), exact GELU with
 * a vectorisable erf, mean pooling, and BERT's call of the attention op
 * (csrc/ops/attention.c) on its fused QKV rows.
 *
 * Speed without -ffast-math: glibc's erff and expf are scalar and branchy
 * (erff costs ~15 ns here, which would make GELU as slow as the FFN GEMMs),
 * so erf and exp are written branch-free (csrc/include/eg_vmath.h) and the
 * hot loops (bert_simd.h) are compiled three times — baseline x86-64, AVX2
 * and AVX-512 — under `#pragma GCC target` by csrc/include/eg_isa.h (shared
 * with csrc/gmoe); the first call picks the best set the CPU supports (no
 * -march flag needed at build time). Each copy is also compiled with
 * -fno-trapping-math (no FP exceptions are enabled, so both arms of a select
 * may be evaluated). None of this changes a result: there is no
 * -ffast-math, no reassociation and no FMA contraction (-std=c11 keeps
 * fp-contract off), so every copy computes
 * the same sums in the same order. Reductions that would stay scalar use
 * fixed lanes of partial sums (deterministic as well).
 *
 * Threads: OpenMP over rows, or over (sequence, head) pairs for attention;
 * every output element is written by exactly one thread, so results do not
 * depend on the thread count or schedule. No BLAS is called here.
 */
#include "eg_bert.h"
#include "eg_isa.h"
#include "eg_ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16
/* Below this many elements a memory-bound pass (LayerNorm, pooling) runs on
 * one thread: it takes < 0.5 ms, and every parallel region is a barrier
 * that costs far more than that when the cores are shared with other
 * processes (measured: 2 threads ran at half the speed of 1 under load). */
#define EG_PAR_MIN (1 << 20)
/* GCC/Clang generic vector of 16 floats; the compiler maps it onto whatever
 * registers the instruction set of each kernel copy has. */
typedef float v16f __attribute__((vector_size(64)));
#if defined(__GNUC__) && !defined(__clang__)
/* v16f values only cross static, always-inlined helpers: no ABI to keep */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef struct {
    void (*erf_loop)(float *, const float *, size_t);
    void (*bias_gelu_row)(float *, const float *, const float *, int);
    void (*layernorm_row)(float *, const float *, const float *, const float *, int, float);
    void (*add3_row)(float *, const float *, const float *, const float *, int);
    void (*add_row)(float *, const float *, int);
} kernel_set;

/* the kernel copies: bert_simd.h once per instruction set (eg_isa.h) */
#define EG_ISA_BODY "../models/bert_simd.h"
#include "eg_isa.h"


#define KSET(sfx)                                                                        \
    {                                                                                    \
        EG_CAT2(erf_loop, sfx), EG_CAT2(bias_gelu_row, sfx), EG_CAT2(layernorm_row, sfx), \
        EG_CAT2(add3_row, sfx), EG_CAT2(add_row, sfx)       \
    }

static const kernel_set copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(KSET);

/* The kernel set for this CPU (cheap enough to ask on every kernel entry). */
static const kernel_set *K(void)
{
    return &copies[eg_isa_level()];
}

/* Name of the kernel set in use (for build info and benchmarks). */
const char *eg_bert_kernel_isa(void)
{
    return eg_isa_name(eg_isa_level());
}

/* ------------------------------------------------------------ exp and erf */

void eg_bert_erf(float *out, const float *inp, size_t n)
{
    K()->erf_loop(out, inp, n);
}

void eg_bert_gelu_forward(float *out, const float *inp, size_t n)
{
    const kernel_set *k = K();
    // out (n), inp (n): done in chunks so the threads share the work
    const size_t chunk = 4096;
    long nchunks = (long)((n + chunk - 1) / chunk);
#pragma omp parallel for schedule(static)
    for (long c = 0; c < nchunks; c++) {
        size_t lo = (size_t)c * chunk;
        size_t len = n - lo < chunk ? n - lo : chunk;
        k->bias_gelu_row(out + lo, inp + lo, NULL, (int)len);
    }
}

/* out (N,C) = gelu(inp + bias), row-wise; out may equal inp. */
void eg_bert_bias_gelu_forward(float *out, const float *inp, const float *bias, size_t N, int C)
{
    const kernel_set *k = K();
    /* dynamic chunks: if one thread is descheduled (shared cores) the
     * others take its rows; every element is computed the same way */
#pragma omp parallel for schedule(dynamic, 16)
    for (long r = 0; r < (long)N; r++) {
        k->bias_gelu_row(out + (size_t)r * C, inp + (size_t)r * C, bias, C);
    }
}

/* ---------------------------------------------------------------- LayerNorm */

void eg_bert_layernorm_forward(float *out, const float *inp, const float *weight,
                               const float *bias, size_t N, int C, float eps)
{
    const kernel_set *k = K();
    // out (N,C), inp (N,C), weight (C), bias (C)
#pragma omp parallel for schedule(static) if ((double)N * C >= EG_PAR_MIN)
    for (long r = 0; r < (long)N; r++) {
        k->layernorm_row(out + (size_t)r * C, inp + (size_t)r * C, weight, bias, C, eps);
    }
}

/* out (N,C) = LayerNorm((x + xbias) + res): the end of a BERT sub-layer
 * (dense output, its bias, the residual). out may equal res or x. */
void eg_bert_residual_layernorm_forward(float *out, const float *x, const float *xbias,
                                        const float *res, const float *weight,
                                        const float *bias, size_t N, int C, float eps)
{
    const kernel_set *k = K();
    // out (N,C), x (N,C), xbias (C), res (N,C), weight (C), bias (C).
    // The sum is written into out first (element by element, so aliasing
    // out with x or res is safe) and normalised in place.
#pragma omp parallel for schedule(static) if ((double)N * C >= EG_PAR_MIN)
    for (long r = 0; r < (long)N; r++) {
        size_t o = (size_t)r * C;
        k->add3_row(out + o, x + o, xbias, res + o, C);
        k->layernorm_row(out + o, out + o, weight, bias, C, eps);
    }
}

/* ----------------------------------------------------------------- attention */

size_t eg_bert_attention_scratch(int max_len, int dh)
{
    return eg_attention_scratch(max_len, dh);
}

void eg_bert_attention_forward_bias(float *out, const float *qkv, const float *bqkv,
                                    const int64_t *offsets, int n_seq, int D, int n_heads,
                                    float *scratch)
{
    /* the fused QKV rows hold q, k and v side by side (eg_bert.h) */
    const eg_attention_shape sh = {n_heads, n_heads, D / n_heads, 0, (size_t)3 * D,
                                   (size_t)3 * D, (size_t)D};
    eg_attention_forward(out, qkv, qkv + D, qkv + 2 * (size_t)D, bqkv,
                         bqkv != NULL ? bqkv + D : NULL, bqkv != NULL ? bqkv + 2 * (size_t)D : NULL,
                         offsets, n_seq, &sh, scratch);
}

void eg_bert_attention_forward(float *out, const float *qkv, const int64_t *offsets,
                               int n_seq, int D, int n_heads, float *scratch)
{
    eg_bert_attention_forward_bias(out, qkv, NULL, offsets, n_seq, D, n_heads, scratch);
}

/* ---------------------------------------------------------------- pooling */

void eg_bert_pool(const eg_bert_state *s, float *out)
{
    const kernel_set *k = K();
    // out (n_seq, D): float sums divided by the count, as torch's
    // sum(h * mask) / sum(mask) does in sentence-transformers.
    const int D = s->hidden;
#pragma omp parallel for schedule(static) if ((double)s->n_tok * D >= EG_PAR_MIN)
    for (long i = 0; i < (long)s->n_seq; i++) {
        float *o = out + (size_t)i * D;
        for (int c = 0; c < D; c++) {
            o[c] = 0.0f;
        }
        const int64_t lo = s->offsets[i], hi = s->offsets[i + 1];
        for (int64_t t = lo; t < hi; t++) {
            k->add_row(o, s->h + (size_t)t * D, D);
        }
        const float cnt = (float)(hi - lo);
        for (int c = 0; c < D; c++) {
            o[c] = hi > lo ? o[c] / cnt : 0.0f;
        }
    }
}
