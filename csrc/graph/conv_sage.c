/*
 * conv_sage.c — GraphSAGE convolution with mean aggregation, PyG SAGEConv
 * semantics (lin_l with bias on the aggregate, lin_r without bias on the
 * node itself, no normalisation of the output). The backward scatters the
 * aggregate's gradient to sources through the reverse CSR, so every output
 * row is written by one thread and no atomics are needed.
 */
#include "eg_ops.h"

#include <string.h>

static void mean_aggregate(float *agg, const float *inp, const eg_gnn_graph *g, int C)
{
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], C))
    for (int64_t v = 0; v < g->n; v++) {
        float *a = agg + (size_t)v * C;
        memset(a, 0, (size_t)C * sizeof(float));
        int64_t b = g->ptr[v], e = g->ptr[v + 1];
        for (int64_t j = b; j < e; j++) {
            const float *x = inp + (size_t)g->src[j] * C;
            for (int c = 0; c < C; c++) {
                a[c] += x[c];
            }
        }
        if (e > b) {
            float inv = 1.0f / (float)(e - b);
            for (int c = 0; c < C; c++) {
                a[c] *= inv;
            }
        }
    }
}

void eg_sage_forward(float *out, float *agg, const float *inp, const float *wl, const float *bl,
                     const float *wr, const eg_gnn_graph *g, int C, int OC, int prec)
{
    // inp (N,C), wl/wr (OC,C), bl (OC) -> out (N,OC), agg (N,C)
    int N = (int)g->n;
    if (N == 0) {
        return;
    }
    mean_aggregate(agg, inp, g, C);
    eg_linear_forward(out, agg, wl, bl, N, C, OC, prec);
    eg_gemm_prec(prec, 0, 1, N, OC, C, 1.0f, inp, C, wr, C, 1.0f, out, OC);
}

void eg_sage_backward(float *dinp, float *dwl, float *dbl, float *dwr, const float *dout,
                      const float *inp, const float *agg, const float *wl, const float *wr,
                      const eg_gnn_graph *g, float *scratch, int C, int OC, int prec)
{
    int N = (int)g->n;
    if (N == 0) {
        return;
    }
    float *dagg = scratch;
    eg_linear_backward(dagg, dwl, dbl, dout, agg, wl, N, C, OC, prec);
    eg_linear_backward(dinp, dwr, NULL, dout, inp, wr, N, C, OC, prec);
    if (dinp == NULL) {
        return;
    }
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], C))
    for (int64_t u = 0; u < g->n; u++) {
        float *d = dinp + (size_t)u * C;
        for (int64_t j = g->rptr[u]; j < g->rptr[u + 1]; j++) {
            int64_t v = g->rdst[j];
            float inv = 1.0f / (float)(g->ptr[v + 1] - g->ptr[v]);
            const float *dv = dagg + (size_t)v * C;
            for (int c = 0; c < C; c++) {
                d[c] += dv[c] * inv;
            }
        }
    }
}
