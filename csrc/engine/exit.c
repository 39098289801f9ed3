/*
 * exit.c — the dynamic early-exit policy of ENGINE (Early), ALGORITHMS.md §A.5.
 *
 * After each ladder with an exit head, every still-active target compares the
 * head's argmax with the previous head's: `patience` agreements in a row (or,
 * optionally, a softmax maximum >= threshold) and the target exits with that
 * head's probabilities, which are then frozen. The caller stops computing
 * ladders (and encoder layers) for exited targets; this file only decides.
 *
 * The reference implementation's mask `(cur == last) == not_visited` picks up
 * already-exited targets again whenever their later heads disagree and
 * overwrites their output. Here an exited target can never be updated again:
 * eg_exit_step refuses it (EG_ESTATE), and eg_exit_decide only ever passes
 * active targets.
 */
#include "eg_engine.h"
#include "eg_vmath.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

eg_status eg_exit_reset(eg_exit_state *s, eg_err *err)
{
    if (s == NULL || s->n < 0 || s->C < 1) {
        return eg_seterr(err, EG_EINVAL, "exit policy: need n >= 0 targets and C >= 1 classes");
    }
    if (s->patience < 1) {
        return eg_seterr(err, EG_EINVAL, "exit policy: patience must be >= 1, got %d", s->patience);
    }
    if (!(s->threshold <= 1.0f) || isnan(s->threshold)) {
        return eg_seterr(err, EG_EINVAL, "exit policy: threshold must be <= 1 (<= 0: off), got %g",
                         (double)s->threshold);
    }
    size_t nc;
    if (eg_mul_ovf((size_t)s->n, (size_t)s->C, &nc)) {
        return eg_seterr(err, EG_EINVAL, "exit policy: n * C overflows");
    }
    if (s->n > 0 && (s->last == NULL || s->streak == NULL || s->exit_at == NULL || s->probs == NULL)) {
        return eg_seterr(err, EG_EINVAL, "exit policy: state arrays missing");
    }
    for (int64_t t = 0; t < s->n; t++) {
        s->last[t] = -1;
        s->streak[t] = 0;
        s->exit_at[t] = -1;
    }
    if (nc > 0) {
        memset(s->probs, 0, nc * sizeof(float));
    }
    return EG_OK;
}

eg_status eg_exit_step(eg_exit_state *s, int ladder, int final, int64_t m, const int64_t *idx,
                       const float *logits, uint8_t *active_out, int64_t *num_exited, eg_err *err)
{
    const int C = s->C;
    if (m < 0 || m > s->n) {
        return eg_seterr(err, EG_EINVAL, "exit step: %lld targets for a policy over %lld",
                         (long long)m, (long long)s->n);
    }
    if (ladder < 0) {
        return eg_seterr(err, EG_EINVAL, "exit step: ladder index must be >= 0");
    }
    /* validate everything first, so a refused call changes nothing; a
     * target seen in this call is marked by a negative streak (-streak - 1) */
    eg_status st = EG_OK;
    int64_t marked = 0;
    for (int64_t r = 0; r < m && st == EG_OK; r++) {
        int64_t t = idx[r];
        if (t < 0 || t >= s->n) {
            st = eg_seterr(err, EG_EINVAL, "exit step: target %lld outside [0, %lld)", (long long)t,
                           (long long)s->n);
            break;
        }
        if (s->exit_at[t] >= 0) {
            st = eg_seterr(err, EG_ESTATE,
                           "exit step: target %lld already exited at ladder %d; its output is frozen",
                           (long long)t, (int)s->exit_at[t]);
            break;
        }
        if (s->streak[t] < 0) {
            st = eg_seterr(err, EG_EINVAL, "exit step: target %lld given twice", (long long)t);
            break;
        }
        s->streak[t] = -s->streak[t] - 1;
        marked = r + 1;
        const float *z = logits + (size_t)r * (size_t)C;
        for (int c = 0; c < C; c++) {
            if (!isfinite(z[c])) {
                st = eg_seterr(err, EG_EINVAL, "exit step: logits of target %lld are not finite",
                               (long long)t);
                break;
            }
        }
    }
    for (int64_t r = 0; r < marked; r++) {
        s->streak[idx[r]] = -s->streak[idx[r]] - 1;   /* undo the marks */
    }
    if (st != EG_OK) {
        return st;
    }
    int64_t exited = 0;
    for (int64_t r = 0; r < m; r++) {
        int64_t t = idx[r];
        const float *z = logits + (size_t)r * (size_t)C;
        float *p = s->probs + (size_t)t * (size_t)C;
        int best = 0;   /* first index of the maximum, as torch.argmax */
        for (int c = 1; c < C; c++) {
            best = z[c] > z[best] ? c : best;
        }
        double lse = eg_softmax_row(p, z, C);
        float pmax = (float)exp((double)z[best] - lse);   /* softmax of the argmax */
        if (s->last[t] == best) {
            s->streak[t] += 1;
        } else {
            s->streak[t] = 0;
        }
        s->last[t] = best;
        int go = final || s->streak[t] >= s->patience || (s->threshold > 0.0f && pmax >= s->threshold);
        if (go) {
            s->exit_at[t] = ladder;
            exited++;
        }
        if (active_out != NULL) {
            active_out[r] = (uint8_t)!go;
        }
    }
    if (num_exited != NULL) {
        *num_exited = exited;
    }
    return EG_OK;
}

eg_status eg_exit_decide(eg_exit_state *s, int K, const float *logits, const uint8_t *has_head,
                         eg_err *err)
{
    if (K < 1) {
        return eg_seterr(err, EG_EINVAL, "exit policy: need at least one ladder");
    }
    if (has_head != NULL && !has_head[K - 1]) {
        return eg_seterr(err, EG_EINVAL, "exit policy: the last ladder must have a head");
    }
    eg_status st = eg_exit_reset(s, err);
    if (st != EG_OK) {
        return st;
    }
    const int64_t n = s->n;
    if (n == 0) {
        return EG_OK;
    }
    int64_t *idx = malloc((size_t)n * sizeof *idx);
    float *z = malloc((size_t)n * (size_t)s->C * sizeof *z);
    uint8_t *act = malloc((size_t)n);
    if (idx == NULL || z == NULL || act == NULL) {
        free(idx);
        free(z);
        free(act);
        return eg_seterr(err, EG_ENOMEM, "exit policy: out of memory");
    }
    int64_t m = n;
    for (int64_t t = 0; t < n; t++) {
        idx[t] = t;
    }
    const size_t C = (size_t)s->C;
    for (int i = 0; i < K && m > 0 && st == EG_OK; i++) {
        if (has_head != NULL && !has_head[i]) {
            continue;
        }
        const float *Li = logits + (size_t)i * (size_t)n * C;
        for (int64_t r = 0; r < m; r++) {
            memcpy(z + (size_t)r * C, Li + (size_t)idx[r] * C, C * sizeof(float));
        }
        st = eg_exit_step(s, i, i == K - 1, m, idx, z, act, NULL, err);
        int64_t w = 0;
        for (int64_t r = 0; r < m; r++) {   /* only active targets go on: `& not_visited` */
            if (act[r]) {
                idx[w++] = idx[r];
            }
        }
        m = w;
    }
    free(idx);
    free(z);
    free(act);
    return st;
}
