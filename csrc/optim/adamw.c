/*
 * adamw.c — AdamW, written to match torch.optim.AdamW step for step (same
 * order of operations and the same bias-correction form), so parity tests can
 * compare parameters after many steps at float32 tolerance.
 */
#include "eg_optim.h"

#include <math.h>

void eg_adamw_step(float *param, const float *grad, float *m, float *v,
                   const unsigned char *decay, size_t n,
                   const eg_adamw_config *cfg, long t)
{
    const float b1 = cfg->beta1, b2 = cfg->beta2;
    const double bc1 = 1.0 - pow((double)b1, (double)t);
    const double bc2 = 1.0 - pow((double)b2, (double)t);
    const float step_size = (float)((double)cfg->lr / bc1);
    const float bc2_sqrt = (float)sqrt(bc2);
    const float wd_factor = 1.0f - cfg->lr * cfg->weight_decay;

    #pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        float p = param[i];
        if (decay == NULL || decay[i]) {
            p *= wd_factor;
        }
        float g = grad[i];
        float mi = m[i] * b1 + (1.0f - b1) * g;   /* torch: m.lerp_(g, 1-b1) */
        float vi = v[i] * b2 + (1.0f - b2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float denom = sqrtf(vi) / bc2_sqrt + cfg->eps;
        param[i] = p - step_size * (mi / denom);
    }
}
