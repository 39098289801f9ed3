/*
 * loss.c — softmax cross-entropy (mean over rows, like
 * torch.nn.functional.cross_entropy with its default reduction).
 */
#include "eg_ops.h"
#include "eg_vmath.h"

#include <math.h>

float eg_softmax_ce_forward(float *probs, const float *logits, const int64_t *labels, int N, int C)
{
    // logits (N,C), labels (N) -> probs (N,C); returns the mean loss
    double total = 0.0;
    #pragma omp parallel for schedule(static) reduction(+ : total)
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * C;
        float *p = probs + (size_t)i * C;
        total += eg_softmax_row(p, x, C) - (double)x[labels[i]];
    }
    return N > 0 ? (float)(total / N) : 0.0f;
}

void eg_softmax_ce_backward(float *dlogits, const float *probs, const int64_t *labels, int N,
                            int C, float scale)
{
    if (N <= 0) {
        return;
    }
    const float s = scale / (float)N;
    #pragma omp parallel for schedule(static)
    for (int i = 0; i < N; i++) {
        float *d = dlogits + (size_t)i * C;
        const float *p = probs + (size_t)i * C;
        for (int j = 0; j < C; j++) {
            d[j] += s * (p[j] - (j == labels[i] ? 1.0f : 0.0f));
        }
    }
}
