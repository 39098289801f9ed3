/*
 * attention.c — scaled dot-product self-attention over packed sequences
 * (eg_ops.h): bidirectional (BERT) or causal (decoders), with grouped-query
 * attention (several query heads share one key/value head).
 *
 * Sequences are packed back to back with no padding, so no mask is needed:
 * each (sequence, head) pair runs at that sequence's own length and a token
 * only sees tokens of its own sequence. The inner loops (attention_simd.h)
 * are compiled per instruction set (eg_isa.h) and give the same bits on
 * every level. Threads: OpenMP over (sequence, head) pairs; each output
 * element is written by one thread, so results do not depend on the thread
 * count. No BLAS is called here.
 */
#include "eg.h"
#include "eg_isa.h"
#include "eg_ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define LANES 16
#define EG_QB 8 /* query rows per block */
typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef double v8d __attribute__((vector_size(64)));
typedef float v4f __attribute__((vector_size(16)));
typedef double v4d __attribute__((vector_size(32)));
#if defined(__GNUC__) && !defined(__clang__)
/* v16f values only cross static, always-inlined helpers: no ABI to keep */
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

typedef void (*head_fn)(float *, size_t, const float *, size_t, const float *, const float *,
                        size_t, const float *, const float *, const float *, int, int, int,
                        float *);

typedef void (*bwd_fn)(float *, float *, float *, const float *, const float *, const float *,
                       const float *, const int64_t *, const eg_attention_shape *, float *, long,
                       double);

#define EG_ISA_BODY "../ops/attention_simd.h"
#include "eg_isa.h"

/* the padded score rows are whole lane blocks of the softmax row */
_Static_assert(LANES % EG_VM_LANES == 0, "LANES must be a multiple of EG_VM_LANES");

#define HEAD_SET(sfx) EG_CAT2(attention_head, sfx)
static const head_fn copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(HEAD_SET);
#define BWD_SET(sfx) EG_CAT2(attention_bwd_pair, sfx)
static const bwd_fn bwd_copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(BWD_SET);

size_t eg_attention_scratch(int max_len, int head_dim)
{
    /* Kt (dh, Lp) + V (Lp, dp) + Q (QB, dp) + S (QB, Lp); see attention_simd.h */
    size_t L = (size_t)(max_len > 0 ? max_len : 1);
    size_t Lp = (L + LANES - 1) / LANES * LANES;
    size_t dp = ((size_t)head_dim + LANES - 1) / LANES * LANES;
    return (size_t)head_dim * Lp + Lp * dp + EG_QB * dp + EG_QB * Lp + 4 * LANES;
}

void eg_attention_forward(float *out, const float *q, const float *k, const float *v,
                          const float *bq, const float *bk, const float *bv,
                          const int64_t *offsets, int n_seq, const eg_attention_shape *sh,
                          float *scratch)
{
    const head_fn head = copies[eg_isa_level()];
    const int H = sh->n_heads, dh = sh->head_dim;
    const int group = H / sh->n_kv_heads; /* query heads per key/value head */
    int64_t max_len = 0;
    for (int i = 0; i < n_seq; i++) {
        int64_t len = offsets[i + 1] - offsets[i];
        max_len = len > max_len ? len : max_len;
    }
    const size_t per_thread = eg_attention_scratch((int)max_len, dh);
    const long pairs = (long)n_seq * H;
    /* Longest sequences first would balance better, but the pairs are many
     * and small; dynamic scheduling in chunks of one is enough. */
#pragma omp parallel for schedule(dynamic, 1)
    for (long p = 0; p < pairs; p++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        const int s = (int)(p / H);
        const int h = (int)(p % H);
        const int kvh = h / group;
        const size_t lo = (size_t)offsets[s];
        const int L = (int)(offsets[s + 1] - offsets[s]);
        const size_t qo = (size_t)h * dh, ko = (size_t)kvh * dh;
        head(out + lo * sh->out_stride + qo, sh->out_stride, q + lo * sh->q_stride + qo,
             sh->q_stride, k + lo * sh->kv_stride + ko, v + lo * sh->kv_stride + ko,
             sh->kv_stride, bq != NULL ? bq + qo : NULL, bk != NULL ? bk + ko : NULL,
             bv != NULL ? bv + ko : NULL, L, dh, sh->causal, scratch + (size_t)tid * per_thread);
    }
}

/* ------------------------------------------------------------- backward */
/* One (sequence, key/value head) pair per task: attention_bwd_pair in
 * attention_simd.h, compiled per instruction set (same bits on every level:
 * its dot products sum in double over fixed lanes). */

size_t eg_attention_backward_scratch(int max_len)
{
    size_t L = (size_t)(max_len > 0 ? max_len : 1);
    return L * L + L;   /* P (L, L), one row of dP */
}

void eg_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                           const float *k, const float *v, const int64_t *offsets, int n_seq,
                           const eg_attention_shape *sh, float *scratch)
{
    const int Hkv = sh->n_kv_heads, dh = sh->head_dim;
    const double scale = 1.0 / sqrt((double)dh);
    int64_t max_len = 0;
    for (int i = 0; i < n_seq; i++) {
        int64_t len = offsets[i + 1] - offsets[i];
        max_len = len > max_len ? len : max_len;
    }
    const size_t per_thread = eg_attention_backward_scratch((int)max_len);
    const long pairs = (long)n_seq * Hkv;
    const bwd_fn bwd = bwd_copies[eg_isa_level()];
#pragma omp parallel for schedule(dynamic, 1)
    for (long p = 0; p < pairs; p++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        bwd(dq, dk, dv, dout, q, k, v, offsets, sh, scratch + (size_t)tid * per_thread, p, scale);
    }
}
