/*
 * eg_gradcheck.h — central-difference gradient checks for the C tests:
 * the scalar L = sum(out * R) (R random, L accumulated in double) is
 * differentiated numerically for a sample of each input's elements and
 * compared with the analytic gradient (the ggml test-backend-ops way).
 * Include after eg_test.h.
 */
#ifndef EG_GRADCHECK_H
#define EG_GRADCHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>


typedef void (*fwd_fn)(void *ctx, float *out);

typedef struct {
    const char *name;
    float *x;           /* perturbed in place */
    const float *grad;  /* analytic dL/dx */
    size_t n;
} gc_var;

static double loss_of(fwd_fn f, void *ctx, float *out, const float *R, size_t nout)
{
    f(ctx, out);
    double s = 0.0;
    for (size_t i = 0; i < nout; i++) {
        s += (double)out[i] * R[i];
    }
    return s;
}

static void gradcheck(const char *op, fwd_fn f, void *ctx, const float *R, size_t nout,
                      gc_var *vars, int nvars, float eps, double rtol, double atol)
{
    float *out = calloc(nout > 0 ? nout : 1, sizeof(float));
    for (int v = 0; v < nvars; v++) {
        size_t step = vars[v].n > 40 ? vars[v].n / 40 : 1;
        int bad = 0;
        double worst = 0.0;
        for (size_t i = 0; i < vars[v].n; i += step) {
            float keep = vars[v].x[i];
            vars[v].x[i] = keep + eps;
            double lp = loss_of(f, ctx, out, R, nout);
            vars[v].x[i] = keep - eps;
            double lm = loss_of(f, ctx, out, R, nout);
            vars[v].x[i] = keep;
            double num = (lp - lm) / (2.0 * eps);
            double ana = vars[v].grad[i];
            double err = fabs(num - ana);
            double tol = atol + rtol * fmax(fabs(num), fabs(ana));
            worst = fmax(worst, err / tol);
            if (err > tol) {
                if (getenv("EG_GRADCHECK_VERBOSE") != NULL) {
                    fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g\n", vars[v].name, i,
                            num, ana);
                }
                bad++;
            }
        }
        CHECK(bad == 0, "%s: d/d%s: %d elements off (worst err/tol %.3g)", op, vars[v].name, bad, worst);
    }
    free(out);
}

#endif
