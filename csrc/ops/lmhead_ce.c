/*
 * lmhead_ce.c — cross-entropy of a language-model head over selected rows,
 * forward and backward in one pass, without materialising the whole
 * (rows x vocab) logits matrix: rows go through in chunks whose logits fit a
 * bounded scratch buffer (LMH_SCRATCH_FLOATS); each chunk's logits are turned
 * into the loss and, in place, into dlogits = scale * (softmax - onehot),
 * then multiplied by the head's weight (eg_qmatmul_t, so a quantized or tied
 * embedding matrix stays in its stored format).
 */
#include "eg_llama_train.h"

#include <math.h>
#include <stdlib.h>

/* 16 Mi floats (64 MiB) of logits per chunk */
#define LMH_SCRATCH_FLOATS ((size_t)1 << 24)

eg_status eg_lmhead_ce(double *nll_sum, float *nll, float *dx, const float *x,
                       const int32_t *target, size_t n, const eg_qmat *W, float scale,
                       eg_err *err)
{
    // x (n,D), W (V,D), target (n) -> nll (n), dx (n,D)
    const size_t V = (size_t)W->rows, D = (size_t)W->cols;
    *nll_sum = 0.0;
    if (n == 0) {
        return EG_OK;
    }
    size_t chunk = LMH_SCRATCH_FLOATS / V;
    if (chunk < 1) {
        chunk = 1;
    }
    if (chunk > n) {
        chunk = n;
    }
    float *logits = eg_aligned_alloc(chunk * V * sizeof(float));
    double *row_nll = malloc(chunk * sizeof(double));
    if (logits == NULL || row_nll == NULL) {
        eg_aligned_free(logits);
        free(row_nll);
        return eg_seterr(err, EG_ENOMEM, "out of memory for %zu x %zu logits", chunk, V);
    }
    double total = 0.0;
    eg_status st = EG_OK;
    for (size_t r0 = 0; r0 < n && st == EG_OK; r0 += chunk) {
        const size_t nr = n - r0 < chunk ? n - r0 : chunk;
        st = eg_qmatmul(logits, V, x + r0 * D, D, nr, W, NULL, err);
        if (st != EG_OK) {
            break;
        }
        #pragma omp parallel for schedule(static) if (nr * V >= ((size_t)1 << 16))
        for (long i = 0; i < (long)nr; i++) {
            float *l = logits + (size_t)i * V;
            float mx = l[0];
            for (size_t j = 1; j < V; j++) {
                mx = l[j] > mx ? l[j] : mx;
            }
            double s = 0.0;
            for (size_t j = 0; j < V; j++) {
                s += exp((double)l[j] - (double)mx);
            }
            const double lse = (double)mx + log(s);
            const int32_t tg = target[r0 + (size_t)i];
            row_nll[i] = lse - (double)l[tg];
            if (dx != NULL) {
                for (size_t j = 0; j < V; j++) {
                    l[j] = scale * (float)exp((double)l[j] - lse);
                }
                l[tg] -= scale;
            }
        }
        for (size_t i = 0; i < nr; i++) {
            total += row_nll[i];
            if (nll != NULL) {
                nll[r0 + i] = (float)row_nll[i];
            }
        }
        if (dx != NULL) {
            st = eg_qmatmul_t(dx + r0 * D, D, logits, V, nr, W, 0, err);
        }
    }
    eg_aligned_free(logits);
    free(row_nll);
    *nll_sum = total;
    return st;
}
