/*
 * test_adamw.c — AdamW against a double-precision transcription of
 * torch.optim.AdamW over several steps, with and without decay masks.
 */
#include "eg.h"
#include "eg_optim.h"
#include "eg_test.h"

#include <math.h>

int main(void)
{
    enum { N = 257, STEPS = 10 };
    float p[N], g[N], m[N] = {0}, v[N] = {0};
    double pr[N], mr[N] = {0}, vr[N] = {0};
    unsigned char decay[N];
    uint64_t s = 5;
    for (int i = 0; i < N; i++) {
        p[i] = eg_rng_normal(&s);
        pr[i] = p[i];
        decay[i] = (unsigned char)(i % 3 != 0);
    }
    eg_adamw_config cfg = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f, .weight_decay = 0.1f};
    for (long t = 1; t <= STEPS; t++) {
        for (int i = 0; i < N; i++) {
            g[i] = eg_rng_normal(&s) * 0.1f + 0.01f * p[i];
        }
        eg_adamw_step(p, g, m, v, decay, N, &cfg, t);
        for (int i = 0; i < N; i++) {
            double b1 = cfg.beta1, b2 = cfg.beta2, lr = cfg.lr;
            if (decay[i]) {
                pr[i] *= 1.0 - lr * cfg.weight_decay;
            }
            mr[i] = b1 * mr[i] + (1 - b1) * g[i];
            vr[i] = b2 * vr[i] + (1 - b2) * (double)g[i] * g[i];
            double mh = mr[i] / (1 - pow(b1, t)), vh = vr[i] / (1 - pow(b2, t));
            pr[i] -= lr * mh / (sqrt(vh) + cfg.eps);
        }
    }
    double maxdiff = 0;
    for (int i = 0; i < N; i++) {
        maxdiff = fmax(maxdiff, fabs(p[i] - pr[i]));
    }
    CHECK(maxdiff < 1e-5, "AdamW matches reference after %d steps: max diff %g", STEPS, maxdiff);
    /* first step moves every parameter by about lr (Adam's sign-like first step) */
    float q[2] = {1.0f, -1.0f}, gq[2] = {0.5f, -2.0f}, mq[2] = {0}, vq[2] = {0};
    eg_adamw_config c0 = cfg;
    c0.weight_decay = 0.0f;
    eg_adamw_step(q, gq, mq, vq, NULL, 2, &c0, 1);
    CHECK_CLOSE(q[0], 1.0f - 1e-2f, 1e-6);
    CHECK_CLOSE(q[1], -1.0f + 1e-2f, 1e-6);
    return eg_test_report("test_adamw");
}
