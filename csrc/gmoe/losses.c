/*
 * losses.c — GMoE coordination losses (ALGORITHMS.md §B.3).
 *
 * Poisson distinction pushes each token's sorted router distribution toward
 * a Poisson(lambda) profile over ranks 1..N (a few confident experts); Normal
 * balance pushes the sorted expert load toward a flat-topped Normal profile.
 * Both compare sorted vectors: the permutation is fixed in forward and the
 * gradient flows to the entries at their sorted positions. The reference's
 * absolute-value form q |log(q / (v + eps))| is the default; kl != 0 gives
 * the true KL term q log(q / (v + eps)). eps is the caller's (1e-8 by default
 * in engine_py.gmoe). Sums are in double.
 */
#include "eg_gmoe.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Descending stable order of v (n small): insertion sort of indices. Float
 * rows are sorted through a double copy (exact, so the same order). */
static void argsort_desc(int32_t *perm, const double *v, int n)
{
    for (int i = 0; i < n; i++) {
        int32_t cur = i;
        int j = i - 1;
        while (j >= 0 && v[perm[j]] < v[cur]) {
            perm[j + 1] = perm[j];
            j--;
        }
        perm[j + 1] = cur;
    }
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Normalise a profile given by its unnormalised logs lq (n): logq = lq -
 * logsumexp(lq) (max subtracted, so nothing overflows) and q = exp(logq).
 * Entries far below the maximum underflow to q = 0 but keep a finite logq:
 * term()/term_grad() use logq, so such an entry contributes 0 (the limit of
 * q log q) instead of 0 * inf = NaN. That happened for N >~ 180 experts
 * (Poisson: lambda^i / i! underflows) and for a small Normal sigma. */
static void normalise_log_profile(double *q, double *logq, const double *lq, int n)
{
    double mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        mx = lq[i] > mx ? lq[i] : mx;
    }
    double s = 0.0;
    for (int i = 0; i < n; i++) {
        s += exp(lq[i] - mx);
    }
    const double lse = mx + log(s);
    for (int i = 0; i < n; i++) {
        logq[i] = lq[i] - lse;
        q[i] = exp(logq[i]);
    }
}

/* q_i (i = 1..N stored at [i-1]) = lambda^i / i! normalised, and log q_i. */
static void poisson_profile(double *q, double *logq, double lam, int N)
{
    double lq[1024];
    for (int i = 1; i <= N; i++) {
        lq[i - 1] = i * log(lam) - lgamma((double)i + 1.0);
    }
    normalise_log_profile(q, logq, lq, N);
}

/* q |log q - log(v + eps)| (or without |.| for kl), from log q. */
static inline double term(double q, double logq, double v, int kl, float eps)
{
    double r = logq - log(v + (double)eps);
    return q * (kl ? r : fabs(r));
}

/* d term / d q and the sign factor for d term / d v (both finite: the
 * callers multiply dq by q, which is 0 where log q is very negative). */
static inline void term_grad(double logq, double v, int kl, float eps, double *dq, double *sgn)
{
    double r = logq - log(v + (double)eps);
    if (kl) {
        *dq = r + 1.0;
        *sgn = 1.0;
    } else {
        double sg = r > 0.0 ? 1.0 : (r < 0.0 ? -1.0 : 0.0);
        *dq = fabs(r) + sg;
        *sgn = sg;
    }
}

double eg_poisson_loss_forward(int32_t *perm, const float *probs, float lambda_raw, int T,
                               int N, int kl, float eps)
{
    double q[1024], logq[1024], pd[1024];
    if (N > 1024 || T <= 0) {
        return NAN; /* caller validates N <= 1024 */
    }
    poisson_profile(q, logq, clampd(lambda_raw, 1.0, 2.0), N);
    double total = 0.0;
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * N;
        int32_t *pm = perm + (size_t)t * N;
        for (int i = 0; i < N; i++) {
            pd[i] = p[i];
        }
        argsort_desc(pm, pd, N);
        double s = 0.0;
        for (int i = 0; i < N; i++) {
            s += term(q[i], logq[i], p[pm[i]], kl, eps);
        }
        total += s;
    }
    return total / T;
}

void eg_poisson_loss_backward(float *dprobs, float *dlambda, float coef, const float *probs,
                              const int32_t *perm, float lambda_raw, int T, int N, int kl,
                              float eps)
{
    double q[1024], logq[1024], dq[1024];
    if (N > 1024 || T <= 0) {
        return;
    }
    double lam = clampd(lambda_raw, 1.0, 2.0);
    poisson_profile(q, logq, lam, N);
    memset(dq, 0, sizeof(double) * (size_t)N);
    const double c = (double)coef / T;
    for (int t = 0; t < T; t++) {
        const float *p = probs + (size_t)t * N;
        const int32_t *pm = perm + (size_t)t * N;
        float *dp = dprobs + (size_t)t * N;
        for (int i = 0; i < N; i++) {
            double v = p[pm[i]], gq, sg;
            term_grad(logq[i], v, kl, eps, &gq, &sg);
            dq[i] += c * gq;
            dp[pm[i]] += (float)(-c * q[i] * sg / (v + (double)eps));
        }
    }
    if (lambda_raw >= 1.0f && lambda_raw <= 2.0f) {
        /* q_i = w_i / sum w, w_i = lam^i / i!: dq_i/dlam = q_i (i - mean_i) / lam */
        double mean = 0.0;
        for (int i = 0; i < N; i++) {
            mean += (i + 1) * q[i];
        }
        double g = 0.0;
        for (int i = 0; i < N; i++) {
            g += dq[i] * q[i] * ((i + 1) - mean) / lam;
        }
        *dlambda += (float)g;
    }
}

/* Unsorted Normal profile q_i, i = 0..N-1, normalised, its logs and its
 * sort order (by log q: the same order as q wherever q does not underflow,
 * and still the right one where it does). */
static void normal_profile(double *q, double *logq, int32_t *qperm, double sigma, int N)
{
    double mu = N / 2.0, lq[1024] = {0};
    for (int i = 0; i < N; i++) {
        double z = (i - mu) / sigma;
        lq[i] = -0.5 * z * z;
    }
    normalise_log_profile(q, logq, lq, N);
    argsort_desc(qperm, logq, N);
}

double eg_normal_loss_forward(double *c, int32_t *perm, const double *running,
                              const int32_t *idx, const float *w, float sigma_raw,
                              float sigma_min, int T, int N, int K, int kl, float eps)
{
    double q[1024], logq[1024];
    int32_t qp[1024];
    if (N > 1024) {
        return NAN;
    }
    for (int e = 0; e < N; e++) {
        c[e] = running != NULL ? running[e] : 0.0;
    }
    for (size_t m = 0; m < (size_t)T * K; m++) {
        c[idx[m]] += (double)K * w[m];
    }
    double S = 0.0;
    for (int e = 0; e < N; e++) {
        S += c[e];
    }
    argsort_desc(perm, c, N);
    normal_profile(q, logq, qp, sigma_raw > sigma_min ? sigma_raw : sigma_min, N);
    double L = 0.0;
    for (int i = 0; i < N; i++) {
        L += term(q[qp[i]], logq[qp[i]], c[perm[i]] / S, kl, eps);
    }
    return L;
}

void eg_normal_loss_backward(float *dw, float *dsigma, float coef, const double *c,
                             const int32_t *perm, const int32_t *idx, float sigma_raw,
                             float sigma_min, int T, int N, int K, int kl, float eps)
{
    double q[1024], logq[1024], dc[1024], dqs[1024];
    int32_t qp[1024];
    if (N > 1024) {
        return;
    }
    double sigma = sigma_raw > sigma_min ? sigma_raw : sigma_min;
    normal_profile(q, logq, qp, sigma, N);
    double S = 0.0;
    for (int e = 0; e < N; e++) {
        S += c[e];
        dc[e] = 0.0;
    }
    double dvv = 0.0;
    for (int i = 0; i < N; i++) {
        double v = c[perm[i]] / S, gq, sg;
        term_grad(logq[qp[i]], v, kl, eps, &gq, &sg);
        dqs[i] = coef * gq;
        double dv = -(double)coef * q[qp[i]] * sg / (v + (double)eps);
        dc[perm[i]] += dv / S;
        dvv += dv * v;
    }
    for (int e = 0; e < N; e++) {
        dc[e] -= dvv / S;
    }
    for (size_t m = 0; m < (size_t)T * K; m++) {
        dw[m] += (float)((double)K * dc[idx[m]]);
    }
    if (sigma_raw >= sigma_min) {
        double mu = N / 2.0, mean = 0.0;
        for (int i = 0; i < N; i++) {
            mean += q[i] * (i - mu) * (i - mu);
        }
        double g = 0.0, s3 = sigma * sigma * sigma;
        for (int i = 0; i < N; i++) {
            int j = qp[i];
            g += dqs[i] * q[j] * ((j - mu) * (j - mu) - mean) / s3;
        }
        *dsigma += (float)g;
    }
}
