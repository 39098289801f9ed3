/*
 * router.c — softmax top-k routing and the router losses of Mixtral/MixLoRA
 * and Switch (ALGORITHMS.md §B.2): load-balancing loss N sum_e f_e P_e and
 * the z-loss mean logsumexp^2; plus the linear router's logits.
 *
 * Everything here is O(T N); parallel over tokens where it matters.
 */
#include "eg_gmoe.h"
#include "eg_vmath.h"

#include <math.h>
#include <string.h>

void eg_router_topk_forward(float *probs, float *lse, int32_t *idx, float *w,
                            const float *logits, int T, int N, int K, int renorm)
{
    // logits (T,N) -> probs (T,N), lse (T), idx/w (T,K)
    #pragma omp parallel for schedule(static) if (T > 256)
    for (int t = 0; t < T; t++) {
        const float *l = logits + (size_t)t * N;
        float *pr = probs + (size_t)t * N;
        lse[t] = (float)eg_softmax_row(pr, l, N);
        int32_t *it = idx + (size_t)t * K;
        float *wt = w + (size_t)t * K;
        /* selection: K passes of argmax over the unchosen, ties -> lower index */
        float wsum = 0.0f;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < N; e++) {
                int taken = 0;
                for (int q = 0; q < j; q++) {
                    taken |= it[q] == e;
                }
                if (!taken && (best < 0 || pr[e] > pr[best])) {
                    best = e;
                }
            }
            it[j] = best;
            wt[j] = pr[best];
            wsum += pr[best];
        }
        if (renorm) {
            for (int j = 0; j < K; j++) {
                wt[j] /= wsum;
            }
        }
    }
}

void eg_router_topk_backward(float *dlogits, const float *dw, const float *dprobs,
                             const float *probs, const int32_t *idx, const float *w,
                             int T, int N, int K, int renorm)
{
    #pragma omp parallel for schedule(static) if (T > 256)
    for (int t = 0; t < T; t++) {
        const float *pr = probs + (size_t)t * N;
        const int32_t *it = idx + (size_t)t * K;
        const float *wt = w + (size_t)t * K;
        const float *dwt = dw + (size_t)t * K;
        float *dl = dlogits + (size_t)t * N;
        /* dl temporarily holds dprobs */
        for (int e = 0; e < N; e++) {
            dl[e] = dprobs != NULL ? dprobs[(size_t)t * N + e] : 0.0f;
        }
        if (renorm) {
            /* w_j = p_j / S: dp_j = (dw_j - sum_l dw_l w_l) / S */
            float S = 0.0f, dot = 0.0f;
            for (int j = 0; j < K; j++) {
                S += pr[it[j]];
                dot += dwt[j] * wt[j];
            }
            for (int j = 0; j < K; j++) {
                dl[it[j]] += (dwt[j] - dot) / S;
            }
        } else {
            for (int j = 0; j < K; j++) {
                dl[it[j]] += dwt[j];
            }
        }
        float dot = 0.0f;
        for (int e = 0; e < N; e++) {
            dot += dl[e] * pr[e];
        }
        for (int e = 0; e < N; e++) {
            dl[e] = pr[e] * (dl[e] - dot);
        }
    }
}

double eg_balance_loss_forward(int64_t *counts, const float *probs, const int32_t *idx,
                               int T, int N, int K)
{
    memset(counts, 0, (size_t)N * sizeof(int64_t));
    for (size_t m = 0; m < (size_t)T * K; m++) {
        counts[idx[m]]++;
    }
    double loss = 0.0;
    for (int e = 0; e < N; e++) {
        double P = 0.0;
        for (int t = 0; t < T; t++) {
            P += probs[(size_t)t * N + e];
        }
        P /= T;
        double f = (double)counts[e] / ((double)T * K);
        loss += f * P;
    }
    return N * loss;
}

void eg_balance_loss_backward(float *dprobs, float coef, const int64_t *counts,
                              int T, int N, int K)
{
    for (int e = 0; e < N; e++) {
        float g = (float)((double)coef * N * ((double)counts[e] / ((double)T * K)) / T);
        for (int t = 0; t < T; t++) {
            dprobs[(size_t)t * N + e] += g;
        }
    }
}

double eg_zloss_forward(const float *lse, int T)
{
    double s = 0.0;
    for (int t = 0; t < T; t++) {
        s += (double)lse[t] * lse[t];
    }
    return s / T;
}

void eg_zloss_backward(float *dlogits, float coef, const float *lse, const float *probs,
                       int T, int N)
{
    for (int t = 0; t < T; t++) {
        float g = coef * 2.0f * lse[t] / (float)T;
        for (int e = 0; e < N; e++) {
            dlogits[(size_t)t * N + e] += g * probs[(size_t)t * N + e];
        }
    }
}

void eg_linear_router_forward(float *logits, const float *x, const float *Wg, int T,
                              int H, int N)
{
    eg_sgemm(0, 1, T, N, H, 1.0f, x, H, Wg, H, 0.0f, logits, N);
}

void eg_linear_router_backward(float *dx, float *dWg, const float *dlogits, const float *x,
                               const float *Wg, int T, int H, int N)
{
    eg_sgemm(1, 0, N, H, T, 1.0f, dlogits, N, x, H, 1.0f, dWg, H);
    eg_sgemm(0, 0, T, H, N, 1.0f, dlogits, N, Wg, H, 1.0f, dx, H);
}
