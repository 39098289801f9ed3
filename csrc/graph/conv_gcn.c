/*
 * conv_gcn.c — PyG GCNConv: linear (no bias) then symmetric-normalised
 * propagation over A + I, degree = in-degree + 1, then the bias (optional, so
 * the GMoE graph router can use it bias-free). Used by the G-Ladder and by the
 * GMoE graph router.
 */
#include "eg_ops.h"

#include <math.h>
#include <string.h>

void eg_gcn_forward(float *out, float *h, float *dinv, const float *inp, const float *w,
                    const float *b, const eg_gnn_graph *g, int C, int OC, int prec)
{
    // inp (N,C), w (OC,C), b (OC) -> out (N,OC), h (N,OC), dinv (N)
    int N = (int)g->n;
    if (N == 0) {
        return;
    }
    eg_linear_forward(h, inp, w, NULL, N, C, OC, prec);
    for (int64_t v = 0; v < g->n; v++) {
        dinv[v] = (float)(1.0 / sqrt((double)(g->ptr[v + 1] - g->ptr[v] + 1)));
    }
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], OC))
    for (int64_t v = 0; v < g->n; v++) {
        float *o = out + (size_t)v * OC;
        const float *hv = h + (size_t)v * OC;
        float sv = dinv[v] * dinv[v];
        for (int c = 0; c < OC; c++) {
            o[c] = sv * hv[c];
        }
        for (int64_t j = g->ptr[v]; j < g->ptr[v + 1]; j++) {
            int64_t u = g->src[j];
            float s = dinv[u] * dinv[v];
            const float *hu = h + (size_t)u * OC;
            for (int c = 0; c < OC; c++) {
                o[c] += s * hu[c];
            }
        }
        if (b != NULL) {
            for (int c = 0; c < OC; c++) {
                o[c] += b[c];
            }
        }
    }
}

void eg_gcn_backward(float *dinp, float *dw, float *db, const float *dout, const float *inp,
                     const float *dinv, const float *w, const eg_gnn_graph *g, float *scratch,
                     int C, int OC, int prec)
{
    int N = (int)g->n;
    if (N == 0) {
        return;
    }
    float *dh = scratch;
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], OC))
    for (int64_t u = 0; u < g->n; u++) {
        float *d = dh + (size_t)u * OC;
        const float *du = dout + (size_t)u * OC;
        float su = dinv[u] * dinv[u];
        for (int c = 0; c < OC; c++) {
            d[c] = su * du[c];
        }
        for (int64_t j = g->rptr[u]; j < g->rptr[u + 1]; j++) {
            int64_t v = g->rdst[j];
            float s = dinv[u] * dinv[v];
            const float *dv = dout + (size_t)v * OC;
            for (int c = 0; c < OC; c++) {
                d[c] += s * dv[c];
            }
        }
    }
    if (db != NULL) {
        #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n, OC))
        for (int c = 0; c < OC; c++) {
            double s = 0.0;
            for (int64_t v = 0; v < g->n; v++) {
                s += dout[(size_t)v * OC + c];
            }
            db[c] += (float)s;
        }
    }
    eg_linear_backward(dinp, dw, NULL, dh, inp, w, N, C, OC, prec);
}
