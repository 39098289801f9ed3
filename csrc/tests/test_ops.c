/*
 * test_ops.c — every op against a naive reference, and every backward
 * against central differences of the scalar L = sum(out * R) (R random,
 * L accumulated in double), the ggml test-backend-ops way. Sizes are small so
 * this also runs quickly under ASan.
 */
#include "eg_bf16.h"
#include "eg_ops.h"
#include "eg_optim.h"
#include "eg_test.h"

#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 12345;

static float *rnd(size_t n, float scale)
{
    float *p = malloc((n > 0 ? n : 1) * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        p[i] = scale * (2.0f * eg_rng_uniform(&rng_state) - 1.0f);
    }
    return p;
}

static float *zeros(size_t n)
{
    return calloc(n > 0 ? n : 1, sizeof(float));
}

static double max_rel(const float *a, const float *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]) / (1e-3 + fabs((double)b[i]));
        m = d > m ? d : m;
    }
    return m;
}

#include "eg_gradcheck.h"

/* --------------------------------------------------------------- linear */

typedef struct { const float *x, *w, *b; int N, C, OC; } lin_ctx;
static void lin_fwd(void *c, float *out)
{
    lin_ctx *k = c;
    eg_linear_forward(out, k->x, k->w, k->b, k->N, k->C, k->OC, EG_PREC_F32);
}

static void test_linear(void)
{
    int N = 7, C = 5, OC = 4;
    float *x = rnd((size_t)N * C, 1), *w = rnd((size_t)OC * C, 1), *b = rnd(OC, 1);
    float *out = zeros((size_t)N * OC), *ref = zeros((size_t)N * OC);
    eg_linear_forward(out, x, w, b, N, C, OC, EG_PREC_F32);
    for (int i = 0; i < N; i++) {
        for (int o = 0; o < OC; o++) {
            double s = b[o];
            for (int c = 0; c < C; c++) {
                s += (double)x[i * C + c] * w[o * C + c];
            }
            ref[i * OC + o] = (float)s;
        }
    }
    CHECK(max_rel(out, ref, (size_t)N * OC) < 1e-5, "linear forward");
    float *R = rnd((size_t)N * OC, 1), *dx = zeros((size_t)N * C), *dw = zeros((size_t)OC * C),
          *db = zeros(OC);
    eg_linear_backward(dx, dw, db, R, x, w, N, C, OC, EG_PREC_F32);
    lin_ctx k = {x, w, b, N, C, OC};
    gc_var vars[] = {{"x", x, dx, (size_t)N * C}, {"w", w, dw, (size_t)OC * C}, {"b", b, db, OC}};
    gradcheck("linear", lin_fwd, &k, R, (size_t)N * OC, vars, 3, 1e-2f, 1e-3, 1e-4);
    /* accumulation: a second backward doubles dw */
    float w0 = dw[3];
    eg_linear_backward(NULL, dw, NULL, R, x, w, N, C, OC, EG_PREC_F32);
    CHECK_CLOSE(dw[3], 2 * w0, 1e-5);
    free(x); free(w); free(b); free(out); free(ref); free(R); free(dx); free(dw); free(db);
}

/* ------------------------------------------------------------ layernorm */

typedef struct { const float *x, *w, *b; float *mean, *rstd; int N, C; } ln_ctx;
static void ln_fwd(void *c, float *out)
{
    ln_ctx *k = c;
    eg_layernorm_forward(out, k->mean, k->rstd, k->x, k->w, k->b, k->N, k->C);
}

static void test_layernorm(void)
{
    int N = 5, C = 8;
    float *x = rnd((size_t)N * C, 2), *w = rnd(C, 1), *b = rnd(C, 1);
    float *out = zeros((size_t)N * C), *mean = zeros(N), *rstd = zeros(N);
    eg_layernorm_forward(out, mean, rstd, x, w, b, N, C);
    float ref[64];
    for (int i = 0; i < N; i++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) {
            m += x[i * C + c];
        }
        m /= C;
        for (int c = 0; c < C; c++) {
            v += (x[i * C + c] - m) * (x[i * C + c] - m);
        }
        v /= C;
        for (int c = 0; c < C; c++) {
            ref[i * C + c] = (float)((x[i * C + c] - m) / sqrt(v + 1e-5) * w[c] + b[c]);
        }
    }
    CHECK(max_rel(out, ref, (size_t)N * C) < 1e-4, "layernorm forward");
    float *R = rnd((size_t)N * C, 1), *dx = zeros((size_t)N * C), *dw = zeros(C), *db = zeros(C);
    eg_layernorm_backward(dx, dw, db, R, x, w, mean, rstd, N, C);
    ln_ctx k = {x, w, b, mean, rstd, N, C};
    gc_var vars[] = {{"x", x, dx, (size_t)N * C}, {"w", w, dw, C}, {"b", b, db, C}};
    gradcheck("layernorm", ln_fwd, &k, R, (size_t)N * C, vars, 3, 1e-2f, 1e-2, 1e-3);
    free(x); free(w); free(b); free(out); free(mean); free(rstd); free(R); free(dx); free(dw); free(db);
}

/* ------------------------------------------------------------ batchnorm */

typedef struct { const float *x, *w, *b, *rm, *rv; float *mean, *rstd; int N, C, train; } bn_ctx;
static void bn_fwd(void *c, float *out)
{
    bn_ctx *k = c;
    if (k->train) {
        eg_batchnorm_forward_train(out, k->mean, k->rstd, NULL, k->x, k->w, k->b, k->N, k->C);
    } else {
        eg_batchnorm_forward_eval(out, k->mean, k->rstd, k->x, k->w, k->b, k->rm, k->rv, k->N, k->C);
    }
}

static void test_batchnorm(void)
{
    int N = 7, C = 5;
    float *x = rnd((size_t)N * C, 2), *w = rnd(C, 1), *b = rnd(C, 1), *rm = rnd(C, 1), *rv = rnd(C, 1);
    for (int c = 0; c < C; c++) {
        rv[c] = 0.5f + fabsf(rv[c]);
    }
    float *out = zeros((size_t)N * C), *mean = zeros(C), *rstd = zeros(C), *vu = zeros(C);
    eg_batchnorm_forward_train(out, mean, rstd, vu, x, w, b, N, C);
    int ok = 1;
    for (int c = 0; c < C; c++) {
        double m = 0, v = 0;
        for (int i = 0; i < N; i++) {
            m += x[i * C + c];
        }
        m /= N;
        for (int i = 0; i < N; i++) {
            v += (x[i * C + c] - m) * (x[i * C + c] - m);
        }
        ok &= fabs(vu[c] - v / (N - 1)) < 1e-5 * (1 + v);
        for (int i = 0; i < N; i++) {
            double ref = (x[i * C + c] - m) / sqrt(v / N + 1e-5) * w[c] + b[c];
            ok &= fabs(out[i * C + c] - ref) < 1e-4;
        }
    }
    CHECK(ok, "batchnorm train forward and unbiased variance");
    float *R = rnd((size_t)N * C, 1), *dx = zeros((size_t)N * C), *dw = zeros(C), *db = zeros(C);
    for (int train = 1; train >= 0; train--) {
        bn_ctx k = {x, w, b, rm, rv, mean, rstd, N, C, train};
        bn_fwd(&k, out);
        memset(dw, 0, C * sizeof(float));
        memset(db, 0, C * sizeof(float));
        eg_batchnorm_backward(dx, dw, db, R, x, w, mean, rstd, N, C, train);
        gc_var vars[] = {{"x", x, dx, (size_t)N * C}, {"w", w, dw, C}, {"b", b, db, C}};
        gradcheck(train ? "batchnorm(train)" : "batchnorm(eval)", bn_fwd, &k, R, (size_t)N * C, vars, 3,
                  1e-2f, 1e-2, 1e-3);
    }
    eg_batchnorm_forward_eval(out, mean, rstd, x, w, b, rm, rv, N, C);
    CHECK_CLOSE(out[3], (x[3] - rm[3]) / sqrt(rv[3] + 1e-5) * w[3] + b[3], 1e-5);
    free(x); free(w); free(b); free(rm); free(rv); free(out); free(mean); free(rstd); free(vu);
    free(R); free(dx); free(dw); free(db);
}

/* ---------------------------------------------------------- activations */

typedef struct { const float *x; size_t n; int kind; } act_ctx;
static void act_fwd(void *c, float *out)
{
    act_ctx *k = c;
    (k->kind == 0 ? eg_relu_forward : eg_elu_forward)(out, k->x, k->n);
}

static void test_activations(void)
{
    size_t n = 50;
    float *x = rnd(n, 2);
    for (size_t i = 0; i < n; i++) { /* keep away from the kink for differences */
        if (fabsf(x[i]) < 0.05f) {
            x[i] = 0.1f;
        }
    }
    float *out = zeros(n), *R = rnd(n, 1), *dx = zeros(n);
    eg_relu_forward(out, x, n);
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        ok &= out[i] == (x[i] > 0 ? x[i] : 0.0f);
    }
    CHECK(ok, "relu forward");
    eg_relu_backward(dx, R, out, n);
    act_ctx k = {x, n, 0};
    gc_var v1[] = {{"x", x, dx, n}};
    gradcheck("relu", act_fwd, &k, R, n, v1, 1, 1e-2f, 1e-3, 1e-4);
    eg_elu_forward(out, x, n);
    ok = 1;
    for (size_t i = 0; i < n; i++) {
        ok &= fabs(out[i] - (x[i] > 0 ? x[i] : expm1(x[i]))) < 1e-6;
    }
    CHECK(ok, "elu forward");
    {
        /* the vectorised expm1 behind ELU: relative error over [-30, 0] against libm */
        enum { M = 200001 };
        float *xs = malloc(M * sizeof(float)), *ys = malloc(M * sizeof(float));
        for (int i = 0; i < M; i++) {
            xs[i] = -30.0f * (float)i / (float)(M - 1);
        }
        xs[1] = -1e-30f;   /* tiny and subnormal-adjacent inputs */
        xs[2] = -1e-7f;
        eg_elu_forward(ys, xs, M);
        double worst = 0.0;
        for (int i = 1; i < M; i++) {
            double ref = expm1((double)xs[i]);
            worst = fmax(worst, fabs(ys[i] - ref) / fabs(ref));
        }
        CHECK(worst < 4e-7, "ELU expm1 relative error %.3g", worst);
        float special[3] = {NAN, INFINITY, -INFINITY}, sout[3];
        eg_elu_forward(sout, special, 3);
        CHECK(isnan(sout[0]) && sout[1] == INFINITY && sout[2] == -1.0f, "ELU of NaN, inf, -inf");
        free(xs);
        free(ys);
    }
    eg_elu_backward(dx, R, out, n);
    k.kind = 1;
    gradcheck("elu", act_fwd, &k, R, n, v1, 1, 1e-2f, 1e-3, 1e-4);

    /* dropout: keep rate, scaling, thread independence, backward = mask */
    size_t m = 20000;
    float *y = rnd(m, 1), *o1 = zeros(m), *o2 = zeros(m), *m1 = zeros(m), *m2 = zeros(m), *dy = zeros(m);
    eg_set_num_threads(1);
    eg_dropout_forward(o1, m1, y, m, 0.3f, 99);
    eg_set_num_threads(2);
    eg_dropout_forward(o2, m2, y, m, 0.3f, 99);
    CHECK(memcmp(m1, m2, m * sizeof(float)) == 0, "dropout mask independent of threads");
    size_t zero = 0;
    ok = 1;
    for (size_t i = 0; i < m; i++) {
        zero += m1[i] == 0.0f;
        ok &= m1[i] == 0.0f || fabsf(m1[i] - 1.0f / 0.7f) < 1e-6f;
        ok &= o1[i] == y[i] * m1[i];
    }
    CHECK(ok, "dropout scales kept values by 1/(1-p)");
    CHECK(fabs((double)zero / m - 0.3) < 0.02, "dropout rate %g", (double)zero / m);
    eg_dropout_backward(dy, y, m1, m);
    ok = 1;
    for (size_t i = 0; i < m; i++) {
        ok &= dy[i] == y[i] * m1[i];
    }
    CHECK(ok, "dropout backward");
    eg_dropout_forward(o2, m2, y, m, 0.3f, 100);
    CHECK(memcmp(m1, m2, m * sizeof(float)) != 0, "another seed, another mask");
    eg_dropout_forward(o2, m2, y, m, 0.0f, 100);
    CHECK(memcmp(o2, y, m * sizeof(float)) == 0, "p = 0 is the identity");
    free(x); free(out); free(R); free(dx); free(y); free(o1); free(o2); free(m1); free(m2); free(dy);
}

/* ------------------------------------------------------------ CE loss */

typedef struct { const float *x; const int64_t *y; float *p; int N, C; } ce_ctx;
static void ce_fwd(void *c, float *out)
{
    ce_ctx *k = c;
    out[0] = eg_softmax_ce_forward(k->p, k->x, k->y, k->N, k->C);
}

static void test_ce(void)
{
    int N = 6, C = 4;
    float *x = rnd((size_t)N * C, 3), *p = zeros((size_t)N * C), *dx = zeros((size_t)N * C);
    int64_t y[6] = {0, 3, 2, 1, 1, 0};
    float loss = eg_softmax_ce_forward(p, x, y, N, C);
    double ref = 0;
    for (int i = 0; i < N; i++) {
        double s = 0;
        for (int c = 0; c < C; c++) {
            s += exp(x[i * C + c]);
        }
        ref += log(s) - x[i * C + y[i]];
    }
    CHECK_CLOSE(loss, ref / N, 1e-5);
    float R = 1.0f;
    eg_softmax_ce_backward(dx, p, y, N, C, 1.0f);
    ce_ctx k = {x, y, p, N, C};
    gc_var v[] = {{"logits", x, dx, (size_t)N * C}};
    gradcheck("cross_entropy", ce_fwd, &k, &R, 1, v, 1, 1e-2f, 1e-2, 1e-4);
    free(x); free(p); free(dx);
}

/* ------------------------------------------------------------- graphs */

/* a small directed graph with isolated node 5 and an asymmetric edge */
static const int64_t G_PTR[] = {0, 2, 4, 5, 7, 8, 8};
static const int64_t G_SRC[] = {1, 3, 0, 2, 1, 0, 4, 3};
static int64_t G_RPTR[7], G_RDST[8], G_REID[8];

static eg_gnn_graph small_graph(void)
{
    eg_csr_reverse(G_RPTR, G_RDST, G_REID, G_PTR, G_SRC, 6);
    eg_gnn_graph g = {6, 8, G_PTR, G_SRC, G_RPTR, G_RDST, G_REID};
    return g;
}

static void test_reverse(void)
{
    eg_gnn_graph g = small_graph();
    int ok = 1;
    for (int64_t u = 0; u < 6; u++) {
        for (int64_t j = g.rptr[u]; j < g.rptr[u + 1]; j++) {
            int64_t e = g.reid[j];
            ok &= g.src[e] == u && e >= g.ptr[g.rdst[j]] && e < g.ptr[g.rdst[j] + 1];
        }
    }
    CHECK(ok && g.rptr[6] == 8, "reverse CSR");
}

typedef struct { const float *x, *wl, *bl, *wr; float *agg; const eg_gnn_graph *g; int C, OC; } sage_ctx;
static void sage_fwd(void *c, float *out)
{
    sage_ctx *k = c;
    eg_sage_forward(out, k->agg, k->x, k->wl, k->bl, k->wr, k->g, k->C, k->OC, EG_PREC_F32);
}

static void test_sage(void)
{
    eg_gnn_graph g = small_graph();
    int N = 6, C = 5, OC = 3;
    float *x = rnd((size_t)N * C, 1), *wl = rnd((size_t)OC * C, 1), *bl = rnd(OC, 1),
          *wr = rnd((size_t)OC * C, 1), *agg = zeros((size_t)N * C), *out = zeros((size_t)N * OC);
    eg_sage_forward(out, agg, x, wl, bl, wr, &g, C, OC, EG_PREC_F32);
    float ref[18];
    for (int v = 0; v < N; v++) {
        double m[5] = {0};
        int deg = (int)(G_PTR[v + 1] - G_PTR[v]);
        for (int64_t j = G_PTR[v]; j < G_PTR[v + 1]; j++) {
            for (int c = 0; c < C; c++) {
                m[c] += x[G_SRC[j] * C + c] / deg;
            }
        }
        for (int o = 0; o < OC; o++) {
            double s = bl[o];
            for (int c = 0; c < C; c++) {
                s += wl[o * C + c] * m[c] + wr[o * C + c] * x[v * C + c];
            }
            ref[v * OC + o] = (float)s;
        }
    }
    CHECK(max_rel(out, ref, (size_t)N * OC) < 1e-5, "sage forward (isolated node: zeros aggregate)");
    float *R = rnd((size_t)N * OC, 1), *dx = zeros((size_t)N * C), *dwl = zeros((size_t)OC * C),
          *dbl = zeros(OC), *dwr = zeros((size_t)OC * C), *scr = zeros((size_t)N * C);
    eg_sage_backward(dx, dwl, dbl, dwr, R, x, agg, wl, wr, &g, scr, C, OC, EG_PREC_F32);
    sage_ctx k = {x, wl, bl, wr, agg, &g, C, OC};
    gc_var v[] = {{"x", x, dx, (size_t)N * C}, {"lin_l.weight", wl, dwl, (size_t)OC * C},
                  {"lin_l.bias", bl, dbl, OC}, {"lin_r.weight", wr, dwr, (size_t)OC * C}};
    gradcheck("sage", sage_fwd, &k, R, (size_t)N * OC, v, 4, 1e-2f, 1e-3, 1e-4);
    free(x); free(wl); free(bl); free(wr); free(agg); free(out); free(R); free(dx); free(dwl);
    free(dbl); free(dwr); free(scr);
}

typedef struct { const float *x, *w, *b; float *h, *dinv; const eg_gnn_graph *g; int C, OC; } gcn_ctx;
static void gcn_fwd(void *c, float *out)
{
    gcn_ctx *k = c;
    eg_gcn_forward(out, k->h, k->dinv, k->x, k->w, k->b, k->g, k->C, k->OC, EG_PREC_F32);
}

static void test_gcn(void)
{
    eg_gnn_graph g = small_graph();
    int N = 6, C = 4, OC = 3;
    float *x = rnd((size_t)N * C, 1), *w = rnd((size_t)OC * C, 1), *b = rnd(OC, 1);
    float *h = zeros((size_t)N * OC), *dinv = zeros(N), *out = zeros((size_t)N * OC);
    eg_gcn_forward(out, h, dinv, x, w, b, &g, C, OC, EG_PREC_F32);
    /* dense reference: A_hat = D^-1/2 (A + I) D^-1/2, degree = in-degree + 1 */
    double A[6][6] = {{0}};
    double deg[6];
    for (int v = 0; v < N; v++) {
        A[v][v] = 1;
        for (int64_t j = G_PTR[v]; j < G_PTR[v + 1]; j++) {
            A[v][G_SRC[j]] += 1;
        }
        deg[v] = (double)(G_PTR[v + 1] - G_PTR[v] + 1);
    }
    float ref[18];
    for (int v = 0; v < N; v++) {
        for (int o = 0; o < OC; o++) {
            double s = b[o];
            for (int u = 0; u < N; u++) {
                double hu = 0;
                for (int c = 0; c < C; c++) {
                    hu += w[o * C + c] * x[u * C + c];
                }
                s += A[v][u] / sqrt(deg[v] * deg[u]) * hu;
            }
            ref[v * OC + o] = (float)s;
        }
    }
    CHECK(max_rel(out, ref, (size_t)N * OC) < 1e-5, "gcn forward vs dense");
    float *R = rnd((size_t)N * OC, 1), *dx = zeros((size_t)N * C), *dw = zeros((size_t)OC * C),
          *db = zeros(OC), *scr = zeros((size_t)N * OC);
    eg_gcn_backward(dx, dw, db, R, x, dinv, w, &g, scr, C, OC, EG_PREC_F32);
    gcn_ctx k = {x, w, b, h, dinv, &g, C, OC};
    gc_var v[] = {{"x", x, dx, (size_t)N * C}, {"weight", w, dw, (size_t)OC * C}, {"bias", b, db, OC}};
    gradcheck("gcn", gcn_fwd, &k, R, (size_t)N * OC, v, 3, 1e-2f, 1e-3, 1e-4);
    /* bias-free variant for the GMoE router */
    eg_gcn_forward(out, h, dinv, x, w, NULL, &g, C, OC, EG_PREC_F32);
    CHECK_CLOSE(out[0] + b[0], ref[0], 1e-5);
    free(x); free(w); free(b); free(h); free(dinv); free(out); free(R); free(dx); free(dw); free(db); free(scr);
}

typedef struct {
    const float *x, *w, *as_, *ad_, *b;
    float *h, *as, *ad, *att;
    const eg_gnn_graph *g;
    int C, H, F;
} gat_ctx;
static void gat_fwd(void *c, float *out)
{
    gat_ctx *k = c;
    eg_gat_forward(out, k->h, k->as, k->ad, k->att, k->x, k->w, k->as_, k->ad_, k->b, k->g, k->C, k->H, k->F, EG_PREC_F32);
}

static void test_gat(void)
{
    eg_gnn_graph g = small_graph();
    int N = 6, C = 4, H = 2, F = 3, HF = 6;
    float *x = rnd((size_t)N * C, 1), *w = rnd((size_t)HF * C, 1), *asv = rnd(HF, 1),
          *adv = rnd(HF, 1), *b = rnd(HF, 1);
    float *h = zeros((size_t)N * HF), *as = zeros((size_t)N * H), *ad = zeros((size_t)N * H),
          *att = zeros((size_t)(8 + N) * H), *out = zeros((size_t)N * HF);
    eg_gat_forward(out, h, as, ad, att, x, w, asv, adv, b, &g, C, H, F, EG_PREC_F32);
    /* naive reference over dense neighbour lists with self-loop */
    float ref[36];
    for (int v = 0; v < N; v++) {
        for (int k = 0; k < H; k++) {
            double hh[6][3];
            for (int u = 0; u < N; u++) {
                for (int f = 0; f < F; f++) {
                    double s = 0;
                    for (int c = 0; c < C; c++) {
                        s += w[(k * F + f) * C + c] * x[u * C + c];
                    }
                    hh[u][f] = s;
                }
            }
            int nb[8], nn = 0;
            nb[nn++] = v;
            for (int64_t j = G_PTR[v]; j < G_PTR[v + 1]; j++) {
                nb[nn++] = (int)G_SRC[j];
            }
            double e[8], mx = -1e30, sum = 0;
            for (int q = 0; q < nn; q++) {
                double s = 0, d = 0;
                for (int f = 0; f < F; f++) {
                    s += hh[nb[q]][f] * asv[k * F + f];
                    d += hh[v][f] * adv[k * F + f];
                }
                double pre = s + d;
                e[q] = pre > 0 ? pre : 0.2 * pre;
                mx = fmax(mx, e[q]);
            }
            for (int q = 0; q < nn; q++) {
                e[q] = exp(e[q] - mx);
                sum += e[q];
            }
            for (int f = 0; f < F; f++) {
                double o = b[k * F + f];
                for (int q = 0; q < nn; q++) {
                    o += e[q] / sum * hh[nb[q]][f];
                }
                ref[v * HF + k * F + f] = (float)o;
            }
        }
    }
    CHECK(max_rel(out, ref, (size_t)N * HF) < 1e-4, "gat forward vs naive");
    float *R = rnd((size_t)N * HF, 1), *dx = zeros((size_t)N * C), *dw = zeros((size_t)HF * C),
          *das = zeros(HF), *dad = zeros(HF), *db = zeros(HF);
    float *scr = zeros(eg_gat_scratch_size(N, 8, H, F));
    eg_gat_backward(dx, dw, das, dad, db, R, x, h, as, ad, att, w, asv, adv, &g, scr, C, H, F, EG_PREC_F32);
    gat_ctx k = {x, w, asv, adv, b, h, as, ad, att, &g, C, H, F};
    gc_var v[] = {{"x", x, dx, (size_t)N * C}, {"lin.weight", w, dw, (size_t)HF * C},
                  {"att_src", asv, das, HF}, {"att_dst", adv, dad, HF}, {"bias", b, db, HF}};
    /* LeakyReLU kinks: small eps, loose-ish tolerance */
    gradcheck("gat", gat_fwd, &k, R, (size_t)N * HF, v, 5, 2e-3f, 2e-2, 5e-4);
    free(x); free(w); free(asv); free(adv); free(b); free(h); free(as); free(ad); free(att); free(out);
    free(R); free(dx); free(dw); free(das); free(dad); free(db); free(scr);
}

typedef struct { const float *z; const int64_t *gp; int64_t G; int C; int kind; } pool_ctx;
static void pool_fwd(void *c, float *out)
{
    pool_ctx *k = c;
    (k->kind == 0 ? eg_readout_forward : eg_meanpool_forward)(out, k->z, k->gp, k->G, k->C);
}

static void test_pool(void)
{
    int64_t gp[] = {0, 3, 4, 8};
    int C = 3;
    float *z = rnd(8 * 3, 1), *out = zeros(3 * 6), *dz = zeros(8 * 3), *R = rnd(3 * 6, 1);
    eg_readout_forward(out, z, gp, 3, C);
    int ok = 1;
    for (int g = 0; g < 3; g++) {
        for (int c = 0; c < C; c++) {
            double m = 0;
            for (int64_t v = gp[g]; v < gp[g + 1]; v++) {
                m += z[v * C + c];
            }
            m /= (double)(gp[g + 1] - gp[g]);
            ok &= out[g * 6 + c] == z[gp[g] * C + c] && fabs(out[g * 6 + 3 + c] - m) < 1e-6;
        }
    }
    CHECK(ok, "readout [root ; mean]");
    eg_readout_backward(dz, R, gp, 3, C);
    pool_ctx k = {z, gp, 3, C, 0};
    gc_var v[] = {{"z", z, dz, 24}};
    gradcheck("readout", pool_fwd, &k, R, 18, v, 1, 1e-2f, 1e-3, 1e-4);
    memset(dz, 0, 24 * sizeof(float));
    eg_meanpool_backward(dz, R, gp, 3, C);
    k.kind = 1;
    gradcheck("meanpool", pool_fwd, &k, R, 9, v, 1, 1e-2f, 1e-3, 1e-4);
    free(z); free(out); free(dz); free(R);
}

static void test_adamw(void)
{
    /* against a double-precision transcription of torch.optim.AdamW */
    size_t n = 10;
    float *p = rnd(n, 1), *m = zeros(n), *v = zeros(n);
    double pd[10], md[10] = {0}, vd[10] = {0};
    for (size_t i = 0; i < n; i++) {
        pd[i] = p[i];
    }
    unsigned char decay[10] = {1, 1, 1, 1, 1, 0, 0, 0, 0, 0};
    eg_adamw_config cfg = {1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f};
    for (long t = 1; t <= 10; t++) {
        float *g = rnd(n, 1);
        eg_adamw_step(p, g, m, v, decay, n, &cfg, t);
        for (size_t i = 0; i < n; i++) {
            if (decay[i]) {
                pd[i] *= 1 - 1e-2 * 0.1;
            }
            md[i] = 0.9 * md[i] + 0.1 * g[i];
            vd[i] = 0.999 * vd[i] + 0.001 * (double)g[i] * g[i];
            double mh = md[i] / (1 - pow(0.9, (double)t)), vh = vd[i] / (1 - pow(0.999, (double)t));
            pd[i] -= 1e-2 * mh / (sqrt(vh) + 1e-8);
        }
        free(g);
    }
    int ok = 1;
    for (size_t i = 0; i < n; i++) {
        ok &= fabs(p[i] - pd[i]) < 1e-5;
    }
    CHECK(ok, "adamw 10 steps vs double reference");
    free(p); free(m); free(v);
}

/* eg_gemm_prec: float32 is eg_sgemm's bits; bfloat16 is the float64 product
 * of the bf16-rounded operands up to float32 summation error, for every
 * transpose pair, odd shapes, more than one K block of the kernel (K > 640),
 * accumulate (beta 1) and general alpha/beta. Run by the Python suite also
 * with ENGINE_PY_ISA=avx2 (the emulation). */
static float bf16_value(float x)
{
    float r = x;
    eg_round_bf16_inplace(&r, 1);
    return r;
}

/* eg_bf16_pack_rows_t (AVX-512 or scalar, by ENGINE_PY_ISA): row i of the
 * output is column i of A rounded, an odd K padded with a zero, for shapes
 * around the 16 x 16 blocks. */
static void test_pack_rows_t(void)
{
    const int shapes[][2] = {{16, 32}, {17, 33}, {5, 3}, {40, 70}, {1, 1}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int M = shapes[si][0], K = shapes[si][1], lda = M + 5;
        const size_t kp2 = (size_t)((K + 1) / 2) * 2;
        float *A = malloc(sizeof(float) * K * lda);
        uint16_t *d = malloc(sizeof(uint16_t) * M * kp2);
        uint64_t seed = 77 + si;
        for (int i = 0; i < K * lda; i++) {
            A[i] = (2.0f * eg_rng_uniform(&seed) - 1.0f) * 1e3f;
        }
        memset(d, 0xee, sizeof(uint16_t) * M * kp2);
        eg_bf16_pack_rows_t(d, A, (size_t)lda, M, K);
        int bad = 0;
        for (int i = 0; i < M; i++) {
            for (size_t k = 0; k < kp2; k++) {
                float v = (int)k < K ? bf16_value(A[k * lda + i]) : 0.0f;
                uint32_t bits;
                memcpy(&bits, &v, 4);
                bad += d[(size_t)i * kp2 + k] != (uint16_t)(bits >> 16);
            }
        }
        CHECK(bad == 0, "pack_rows_t %dx%d: %d values wrong", M, K, bad);
        free(A);
        free(d);
    }
}

/* eg_bf16_pack_rows_panels_t: the same bits as eg_bf16_pack_rows and
 * eg_bf16_pack_panels_t done separately (odd N and cols, partial panels of
 * <= 16 and > 16 rows), and the NaN/inf flag. */
static void test_pack_rows_panels_t(void)
{
    const int shapes[][2] = {{7, 40}, {8, 384}, {33, 20}, {1, 3}, {64, 57}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int N = shapes[si][0], cols = shapes[si][1];
        const size_t kpc = (size_t)((cols + 1) / 2) * 2, np = eg_bf16_packed_elems(cols, N);
        float *X = malloc(sizeof(float) * N * cols);
        uint16_t *xa = eg_aligned_alloc(N * kpc * 2), *xb = eg_aligned_alloc(N * kpc * 2);
        uint16_t *pa = eg_aligned_alloc(np * 2), *pb = eg_aligned_alloc(np * 2);
        uint64_t seed = 300 + si;
        for (int i = 0; i < N * cols; i++) {
            X[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
        }
        memset(xa, 0x55, N * kpc * 2);
        memset(xb, 0x66, N * kpc * 2);
        memset(pa, 0x55, np * 2);
        memset(pb, 0x66, np * 2);
        int bad = eg_bf16_pack_rows_panels_t(xa, pa, X, (size_t)cols, N, cols);
        eg_bf16_pack_rows(xb, X, (size_t)cols, (size_t)N, cols);
        eg_bf16_pack_panels_t(pb, X, (size_t)cols, cols, N);
        CHECK(!bad && memcmp(xa, xb, N * kpc * 2) == 0 && memcmp(pa, pb, np * 2) == 0,
              "pack_rows_panels_t %dx%d differs from the separate packers", N, cols);
        X[(N - 1) * cols + cols / 2] = INFINITY;
        CHECK(eg_bf16_pack_rows_panels_t(xa, pa, X, (size_t)cols, N, cols) != 0, "inf flagged");
        X[(N - 1) * cols + cols / 2] = NAN;
        CHECK(eg_bf16_pack_rows_panels_t(xa, pa, X, (size_t)cols, N, cols) != 0, "NaN flagged");
        free(X);
        eg_aligned_free(xa);
        eg_aligned_free(xb);
        eg_aligned_free(pa);
        eg_aligned_free(pb);
    }
}

static void test_gemm_prec(void)
{
    const int shapes[][3] = {{37, 45, 67}, {1, 33, 5}, {50, 64, 1301}, {12, 31, 2}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const int M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
        for (int ta = 0; ta < 2; ta++) {
            for (int tb = 0; tb < 2; tb++) {
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                const int ar = ta ? K : M, br = tb ? N : K;
                float *A = malloc(sizeof(float) * ar * lda), *B = malloc(sizeof(float) * br * ldb);
                float *C = malloc(sizeof(float) * M * ldc), *C0 = malloc(sizeof(float) * M * ldc);
                float *Cf = malloc(sizeof(float) * M * ldc), *Cs = malloc(sizeof(float) * M * ldc);
                uint64_t seed = 1000 + si * 4 + ta * 2 + tb;
                for (int i = 0; i < ar * lda; i++) {
                    A[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
                }
                for (int i = 0; i < br * ldb; i++) {
                    B[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
                }
                for (int i = 0; i < M * ldc; i++) {
                    C0[i] = eg_rng_uniform(&seed);
                }
                const float alphas[] = {1.0f, 1.0f, 0.5f}, betas[] = {0.0f, 1.0f, 0.75f};
                for (int ab = 0; ab < 3; ab++) {
                    const float alpha = alphas[ab], beta = betas[ab];
                    memcpy(C, C0, sizeof(float) * M * ldc);
                    eg_gemm_prec(EG_PREC_BF16, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    double worst = 0.0;
                    for (int i = 0; i < M; i++) {
                        for (int j = 0; j < N; j++) {
                            double acc = 0.0, mag = 0.0;
                            for (int k = 0; k < K; k++) {
                                float a = bf16_value(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]);
                                float b = bf16_value(tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                                acc += (double)a * b;
                                mag += fabs((double)a * b);
                            }
                            double ref = alpha * acc + beta * (double)C0[(size_t)i * ldc + j];
                            double e = fabs(C[(size_t)i * ldc + j] - ref) /
                                       (mag + fabs(beta * (double)C0[(size_t)i * ldc + j]) + 1e-30);
                            worst = fmax(worst, e);
                        }
                    }
                    CHECK(worst < 4e-6, "gemm_prec bf16 %dx%dx%d ta=%d tb=%d alpha %g beta %g: error %.3g",
                          M, N, K, ta, tb, alpha, beta, worst);
                    /* the padding columns of C are never written */
                    CHECK(C[ldc - 1] == C0[ldc - 1], "gemm_prec bf16 wrote outside C's columns");
                }
                memcpy(Cf, C0, sizeof(float) * M * ldc);
                memcpy(Cs, C0, sizeof(float) * M * ldc);
                eg_gemm_prec(EG_PREC_F32, ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, Cf, ldc);
                eg_sgemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, Cs, ldc);
                CHECK(memcmp(Cf, Cs, sizeof(float) * M * ldc) == 0, "gemm_prec float32 is eg_sgemm");
                free(A);
                free(B);
                free(C);
                free(C0);
                free(Cf);
                free(Cs);
            }
        }
    }
}

int main(void)
{
    eg_set_num_threads(2);
    test_pack_rows_t();
    test_pack_rows_panels_t();
    test_gemm_prec();
    test_linear();
    test_layernorm();
    test_batchnorm();
    test_activations();
    test_ce();
    test_reverse();
    test_sage();
    test_gcn();
    test_gat();
    test_pool();
    test_adamw();
    return eg_test_report("test_ops");
}
