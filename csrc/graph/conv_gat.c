/*
 * conv_gat.c — PyG GATConv (multi-head, concat, LeakyReLU 0.2, one added
 * self-loop per node, no attention dropout). The forward keeps the attention
 * coefficients per edge and head; the backward runs a per-destination pass
 * (softmax and LeakyReLU gradients) and a per-source pass over the reverse
 * CSR (messages and source-side scores), so no two threads write one row.
 */
#include "eg_ops.h"

#include <math.h>
#include <string.h>

static inline float leaky(float x) { return x > 0.0f ? x : 0.2f * x; }

size_t eg_gat_scratch_size(int64_t N, int64_t E, int H, int F)
{
    return (size_t)N * (size_t)H * (size_t)F + (size_t)(E + N) * (size_t)H + 2 * (size_t)N * (size_t)H;
}

void eg_gat_forward(float *out, float *h, float *as, float *ad, float *att, const float *inp,
                    const float *w, const float *att_src, const float *att_dst, const float *b,
                    const eg_gnn_graph *g, int C, int H, int F, int prec)
{
    // inp (N,C), w (H*F,C) -> out (N,H*F); saves h, as, ad (N,H), att (E+N,H)
    int N = (int)g->n;
    const int HF = H * F;
    const int64_t E = g->num_edges;
    if (N == 0) {
        return;
    }
    eg_linear_forward(h, inp, w, NULL, N, C, HF, prec);
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], HF))
    for (int64_t n = 0; n < g->n; n++) {
        const float *hn = h + (size_t)n * HF;
        for (int k = 0; k < H; k++) {
            float s = 0.0f, d = 0.0f;
            for (int f = 0; f < F; f++) {
                s += hn[k * F + f] * att_src[k * F + f];
                d += hn[k * F + f] * att_dst[k * F + f];
            }
            as[(size_t)n * H + k] = s;
            ad[(size_t)n * H + k] = d;
        }
    }
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], HF))
    for (int64_t v = 0; v < g->n; v++) {
        int64_t b0 = g->ptr[v], b1 = g->ptr[v + 1];
        float *o = out + (size_t)v * HF;
        for (int k = 0; k < H; k++) {
            float adv = ad[(size_t)v * H + k];
            float mx = leaky(as[(size_t)v * H + k] + adv);
            for (int64_t j = b0; j < b1; j++) {
                float e = leaky(as[(size_t)g->src[j] * H + k] + adv);
                mx = e > mx ? e : mx;
            }
            float self = expf(leaky(as[(size_t)v * H + k] + adv) - mx);
            float sum = self;
            for (int64_t j = b0; j < b1; j++) {
                float e = expf(leaky(as[(size_t)g->src[j] * H + k] + adv) - mx);
                att[(size_t)j * H + k] = e;
                sum += e;
            }
            float inv = 1.0f / sum;
            float aself = self * inv;
            att[(size_t)(E + v) * H + k] = aself;
            float *ok = o + (size_t)k * F;
            const float *hv = h + (size_t)v * HF + (size_t)k * F;
            for (int f = 0; f < F; f++) {
                ok[f] = aself * hv[f];
            }
            for (int64_t j = b0; j < b1; j++) {
                float a = att[(size_t)j * H + k] * inv;
                att[(size_t)j * H + k] = a;
                const float *hu = h + (size_t)g->src[j] * HF + (size_t)k * F;
                for (int f = 0; f < F; f++) {
                    ok[f] += a * hu[f];
                }
            }
            if (b != NULL) {
                for (int f = 0; f < F; f++) {
                    ok[f] += b[k * F + f];
                }
            }
        }
    }
}

void eg_gat_backward(float *dinp, float *dw, float *datt_src, float *datt_dst, float *db,
                     const float *dout, const float *inp, const float *h, const float *as,
                     const float *ad, const float *att, const float *w, const float *att_src,
                     const float *att_dst, const eg_gnn_graph *g, float *scratch, int C, int H,
                     int F, int prec)
{
    int N = (int)g->n;
    const int HF = H * F;
    const int64_t E = g->num_edges;
    if (N == 0) {
        return;
    }
    float *dh = scratch;
    float *ds = dh + (size_t)N * HF;            /* (E+N, H) score gradients */
    float *das = ds + (size_t)(E + N) * H;      /* (N, H) */
    float *dad = das + (size_t)N * H;           /* (N, H) */
    /* per destination: d att, softmax and LeakyReLU backward */
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], HF))
    for (int64_t v = 0; v < g->n; v++) {
        int64_t b0 = g->ptr[v], b1 = g->ptr[v + 1];
        for (int k = 0; k < H; k++) {
            const float *dov = dout + (size_t)v * HF + (size_t)k * F;
            float adv = ad[(size_t)v * H + k];
            /* datt for the self-loop and each edge, and sum att * datt */
            float dself = 0.0f;
            const float *hv = h + (size_t)v * HF + (size_t)k * F;
            for (int f = 0; f < F; f++) {
                dself += dov[f] * hv[f];
            }
            float aself = att[(size_t)(E + v) * H + k];
            double dot = (double)aself * dself;
            for (int64_t j = b0; j < b1; j++) {
                const float *hu = h + (size_t)g->src[j] * HF + (size_t)k * F;
                float d = 0.0f;
                for (int f = 0; f < F; f++) {
                    d += dov[f] * hu[f];
                }
                ds[(size_t)j * H + k] = d;
                dot += (double)att[(size_t)j * H + k] * d;
            }
            float fdot = (float)dot;
            float pre = as[(size_t)v * H + k] + adv;
            float dsself = aself * (dself - fdot) * (pre > 0.0f ? 1.0f : 0.2f);
            ds[(size_t)(E + v) * H + k] = dsself;
            float acc = dsself;
            for (int64_t j = b0; j < b1; j++) {
                float p = as[(size_t)g->src[j] * H + k] + adv;
                float d = att[(size_t)j * H + k] * (ds[(size_t)j * H + k] - fdot) *
                          (p > 0.0f ? 1.0f : 0.2f);
                ds[(size_t)j * H + k] = d;
                acc += d;
            }
            dad[(size_t)v * H + k] = acc;
        }
    }
    /* per source: messages and source-side score gradients */
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n + g->ptr[g->n], HF))
    for (int64_t u = 0; u < g->n; u++) {
        float *dhu = dh + (size_t)u * HF;
        for (int k = 0; k < H; k++) {
            float *d = dhu + (size_t)k * F;
            float aself = att[(size_t)(E + u) * H + k];
            const float *dou = dout + (size_t)u * HF + (size_t)k * F;
            float s = ds[(size_t)(E + u) * H + k];
            for (int f = 0; f < F; f++) {
                d[f] = aself * dou[f];
            }
            for (int64_t j = g->rptr[u]; j < g->rptr[u + 1]; j++) {
                int64_t v = g->rdst[j], e = g->reid[j];
                float a = att[(size_t)e * H + k];
                const float *dov = dout + (size_t)v * HF + (size_t)k * F;
                for (int f = 0; f < F; f++) {
                    d[f] += a * dov[f];
                }
                s += ds[(size_t)e * H + k];
            }
            das[(size_t)u * H + k] = s;
            float sd = dad[(size_t)u * H + k];
            for (int f = 0; f < F; f++) {
                d[f] += s * att_src[k * F + f] + sd * att_dst[k * F + f];
            }
        }
    }
    /* attention vectors and bias: one thread per output element */
    #pragma omp parallel for schedule(static) if (EG_OMP_WORTH(g->n, HF))
    for (int i = 0; i < HF; i++) {
        int k = i / F;
        double s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int64_t n = 0; n < g->n; n++) {
            float hv = h[(size_t)n * HF + i];
            s1 += (double)das[(size_t)n * H + k] * hv;
            s2 += (double)dad[(size_t)n * H + k] * hv;
            s3 += dout[(size_t)n * HF + i];
        }
        datt_src[i] += (float)s1;
        datt_dst[i] += (float)s2;
        if (db != NULL) {
            db[i] += (float)s3;
        }
    }
    eg_linear_backward(dinp, dw, NULL, dh, inp, w, N, C, HF, prec);
}
