/*
 * eg_optim.h — optimisers shared by ENGINE (G-Ladder) and GMoE.
 */
#ifndef EG_OPTIM_H
#define EG_OPTIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay; /* decoupled: p -= lr * wd * p, only where decay[] says so */
} eg_adamw_config;

/* One AdamW step over n parameters, PyTorch semantics (torch.optim.AdamW,
 * amsgrad=False, maximize=False): decoupled weight decay applied first, then
 *   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
 *   p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * `t` is the 1-based step count after this step. `decay` may be NULL (decay
 * everything) or 0/1 per parameter; set it to 0 for biases and norms when
 * the model wants PyTorch parameter groups without decay. param, m, v are
 * updated in place; grad is read only. OpenMP over elements. */
void eg_adamw_step(float *param, const float *grad, float *m, float *v,
                   const unsigned char *decay, size_t n,
                   const eg_adamw_config *cfg, long t);

#ifdef __cplusplus
}
#endif
#endif
