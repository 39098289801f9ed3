/*
 * test_gmoe.c — central-difference gradient checks for every GMoE backward
 * (LoRA linear, MoE-LoRA FFN both kinds with and without dropout, top-k
 * routing with and without renormalisation, balance and z losses, Poisson and
 * Normal losses including lambda / sigma, the graph router), plus forward
 * checks of the FFN against a naive per-expert loop.
 *
 * Each check perturbs a sample of entries by +-h, evaluates a scalar loss
 * L = sum(c * out) in double, and compares (L+ - L-) / 2h with the analytic
 * gradient: |num - ana| <= rtol * max|ana| + atol.
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_gmoe.h"
#include "eg_test.h"
#include "eg_isa.h"
#include "../gmoe/moe_act.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 12345;

static float *randv(size_t n, float scale)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        v[i] = (eg_rng_uniform(&rng) * 2.0f - 1.0f) * scale;
    }
    return v;
}

static float *zerov(size_t n)
{
    return calloc(n, sizeof(float));
}

static double dotv(const float *a, const float *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        s += (double)a[i] * b[i];
    }
    return s;
}

typedef double (*loss_fn)(void);

/* Compare analytic grad `ana` (n) of loss() wrt param (n) on up to 24 entries. */
static void gradcheck(const char *what, loss_fn loss, float *param, const float *ana, size_t n,
                      float h, double rtol)
{
    double mx = 1e-6;
    for (size_t i = 0; i < n; i++) {
        mx = fabs(ana[i]) > mx ? fabs(ana[i]) : mx;
    }
    size_t step = n > 24 ? n / 24 : 1;
    int bad = 0;
    for (size_t i = 0; i < n; i += step) {
        float old = param[i];
        param[i] = old + h;
        double lp = loss();
        param[i] = old - h;
        double lm = loss();
        param[i] = old;
        double num = (lp - lm) / (2.0 * h);
        if (fabs(num - ana[i]) > rtol * mx + 1e-5) {
            if (bad < 3) {
                fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g (max %.3g)\n", what, i, num,
                        (double)ana[i], mx);
            }
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %d entries off", what, bad);
}

/* ------------------------------------------------------------ LoRA linear */
enum { LT = 5, LIN = 7, LO = 6, LR = 3 };
static float *l_x, *l_W, *l_b, *l_A, *l_B, *l_c, *l_out, *l_h;
static float l_p;

static double lora_loss(void)
{
    eg_err err;
    eg_lora_linear_forward(l_out, l_h, l_x, l_W, l_b, l_A, l_B, LT, LIN, LO, LR, 1.7f, l_p, 99,
                           &err);
    return dotv(l_out, l_c, LT * LO);
}

static void test_lora(float p)
{
    l_p = p;
    l_x = randv(LT * LIN, 1);
    l_W = randv(LO * LIN, 1);
    l_b = randv(LO, 1);
    l_A = randv(LR * LIN, 1);
    l_B = randv(LO * LR, 1);
    l_c = randv(LT * LO, 1);
    l_out = zerov(LT * LO);
    l_h = zerov(LT * LR);
    float *dx = zerov(LT * LIN), *dA = zerov(LR * LIN), *dB = zerov(LO * LR);
    eg_err err;
    lora_loss();
    CHECK(eg_lora_linear_backward(dx, dA, dB, l_c, l_x, l_W, l_A, l_B, l_h, LT, LIN, LO, LR,
                                  1.7f, p, 99, &err) == EG_OK, "lora backward");
    gradcheck("lora dx", lora_loss, l_x, dx, LT * LIN, 1e-2f, 2e-3);
    gradcheck("lora dA", lora_loss, l_A, dA, LR * LIN, 1e-2f, 2e-3);
    gradcheck("lora dB", lora_loss, l_B, dB, LO * LR, 1e-2f, 2e-3);
    free(l_x); free(l_W); free(l_b); free(l_A); free(l_B); free(l_c); free(l_out); free(l_h);
    free(dx); free(dA); free(dB);
}

/* ------------------------------------------------------------ MoE FFN */
enum { FT = 6, FH = 8, FI = 12, FE = 4, FK = 2, FR = 2 };
static eg_moe_ffn_params f_prm;
static eg_moe_ffn_dims f_d;
static float *f_x, *f_w, *f_c, *f_y, *f_G, *f_U, *f_Hl;
static int32_t f_idx[FT * FK];

static double ffn_loss(void)
{
    eg_err err;
    eg_moe_ffn_forward(f_y, f_G, f_U, f_Hl, f_x, f_idx, f_w, &f_prm, &f_d, &err);
    return dotv(f_y, f_c, FT * FH);
}

/* y by a naive per-expert loop: y = sum_j w_j (W_out a_j + b_out + s B2 A2 a_j). p = 0. */
static void ffn_naive(float *y)
{
    int swi = f_d.kind == EG_MOE_SWIGLU;
    float s = f_d.scale;
    memset(y, 0, sizeof(float) * FT * FH);
    for (int t = 0; t < FT; t++) {
        for (int j = 0; j < FK; j++) {
            int e = f_idx[t * FK + j];
            float wj = f_w[t * FK + j];
            float a[FI];
            for (int i = 0; i < FI; i++) {
                double g = f_prm.b_in ? f_prm.b_in[i] : 0.0, u = 0.0;
                for (int h = 0; h < FH; h++) {
                    g += f_prm.W_in[i * FH + h] * f_x[t * FH + h];
                    if (swi) {
                        u += f_prm.W_up[i * FH + h] * f_x[t * FH + h];
                    }
                }
                for (int k = 0; k < FR; k++) {
                    double hk = 0.0, hu = 0.0;
                    for (int h = 0; h < FH; h++) {
                        hk += f_prm.A[0][(e * FR + k) * FH + h] * f_x[t * FH + h];
                        if (swi) {
                            hu += f_prm.A[1][(e * FR + k) * FH + h] * f_x[t * FH + h];
                        }
                    }
                    g += s * f_prm.B[0][(e * FI + i) * FR + k] * hk;
                    if (swi) {
                        u += s * f_prm.B[1][(e * FI + i) * FR + k] * hu;
                    }
                }
                a[i] = swi ? (float)(g / (1.0 + exp(-g)) * u)
                           : (float)(0.5 * g * (1.0 + erf(g / sqrt(2.0))));
            }
            for (int h = 0; h < FH; h++) {
                double o = f_prm.b_out ? f_prm.b_out[h] : 0.0;
                for (int i = 0; i < FI; i++) {
                    o += f_prm.W_out[h * FI + i] * a[i];
                }
                for (int k = 0; k < FR; k++) {
                    double hk = 0.0;
                    for (int i = 0; i < FI; i++) {
                        hk += f_prm.A[2][(e * FR + k) * FI + i] * a[i];
                    }
                    o += s * f_prm.B[2][(e * FH + h) * FR + k] * hk;
                }
                y[t * FH + h] += (float)(wj * o);
            }
        }
    }
}

static void test_ffn(int kind, float p)
{
    int swi = kind == EG_MOE_SWIGLU;
    f_d = (eg_moe_ffn_dims){kind, FT, FH, FI, FE, FK, FR, 2.0f, p, 4242};
    float *W_in = randv(FI * FH, 0.5f), *W_up = randv(FI * FH, 0.5f), *W_out = randv(FH * FI, 0.5f);
    float *b_in = randv(FI, 0.5f), *b_out = randv(FH, 0.5f);
    float *A[3], *B[3], *dA[3], *dB[3];
    int in[3] = {FH, FH, FI}, out[3] = {FI, FI, FH};
    for (int q = 0; q < 3; q++) {
        A[q] = randv((size_t)FE * FR * in[q], 0.5f);
        B[q] = randv((size_t)FE * out[q] * FR, 0.5f);
        dA[q] = zerov((size_t)FE * FR * in[q]);
        dB[q] = zerov((size_t)FE * out[q] * FR);
    }
    f_prm = (eg_moe_ffn_params){W_in, swi ? NULL : b_in, swi ? W_up : NULL, W_out,
                                swi ? NULL : b_out, {A[0], A[1], A[2]}, {B[0], B[1], B[2]}};
    f_x = randv(FT * FH, 1.0f);
    f_w = randv(FT * FK, 1.0f);
    f_c = randv(FT * FH, 1.0f);
    for (int t = 0; t < FT; t++) {
        f_idx[t * FK] = t % FE;
        f_idx[t * FK + 1] = (t * 3 + 1) % FE == t % FE ? (t + 1) % FE : (t * 3 + 1) % FE;
    }
    f_y = zerov(FT * FH);
    f_G = zerov(FT * FK * FI);
    f_U = zerov(FT * FK * FI);
    f_Hl = zerov(3 * FT * FK * FR);
    float *dx = zerov(FT * FH), *dw = zerov(FT * FK);
    eg_moe_ffn_grads grd = {{dA[0], dA[1], dA[2]}, {dB[0], dB[1], dB[2]}};
    eg_err err;
    ffn_loss();
    if (p == 0.0f) {
        float ref[FT * FH];
        ffn_naive(ref);
        double md = 0.0;
        for (int i = 0; i < FT * FH; i++) {
            md = fmax(md, fabs(ref[i] - f_y[i]));
        }
        CHECK(md < 1e-4, "ffn kind %d forward vs naive: max diff %g", kind, md);
    }
    CHECK(eg_moe_ffn_backward(dx, dw, &grd, f_c, f_x, f_idx, f_w, f_G, f_U, f_Hl, &f_prm, &f_d,
                              &err) == EG_OK, "ffn backward");
    gradcheck("ffn dx", ffn_loss, f_x, dx, FT * FH, 1e-2f, 3e-3);
    gradcheck("ffn dw", ffn_loss, f_w, dw, FT * FK, 1e-2f, 3e-3);
    for (int q = 0; q < 3; q++) {
        if (q == 1 && !swi) {
            continue;
        }
        char name[32];
        snprintf(name, sizeof name, "ffn dA%d", q);
        gradcheck(name, ffn_loss, A[q], dA[q], (size_t)FE * FR * in[q], 1e-2f, 3e-3);
        snprintf(name, sizeof name, "ffn dB%d", q);
        gradcheck(name, ffn_loss, B[q], dB[q], (size_t)FE * out[q] * FR, 1e-2f, 3e-3);
    }
    for (int q = 0; q < 3; q++) {
        free(A[q]); free(B[q]); free(dA[q]); free(dB[q]);
    }
    free(W_in); free(W_up); free(W_out); free(b_in); free(b_out);
    free(f_x); free(f_w); free(f_c); free(f_y); free(f_G); free(f_U); free(f_Hl);
    free(dx); free(dw);
}

/* ------------------------------------------------------------ routing + losses */
enum { RT = 7, RN = 6, RK = 2 };
static float r_logits[RT * RN], r_probs[RT * RN], r_lse[RT], r_w[RT * RK];
static float r_cw[RT * RK], r_cp[RT * RN];
static int32_t r_idx[RT * RK];
static int r_renorm;
static float r_lambda, r_sigma;
static double r_running[RN];
static int r_kl;
static int r_which; /* 0: topk only, 1: + balance, 2: + z, 3: + poisson, 4: + normal */

static double route_loss(void)
{
    eg_router_topk_forward(r_probs, r_lse, r_idx, r_w, r_logits, RT, RN, RK, r_renorm);
    double L = dotv(r_w, r_cw, RT * RK) + dotv(r_probs, r_cp, RT * RN);
    int64_t counts[RN];
    int32_t perm[RT * RN];
    double c[RN];
    if (r_which == 1) {
        L += 0.7 * eg_balance_loss_forward(counts, r_probs, r_idx, RT, RN, RK);
    } else if (r_which == 2) {
        L += 0.3 * eg_zloss_forward(r_lse, RT);
    } else if (r_which == 3) {
        L += 0.9 * eg_poisson_loss_forward(perm, r_probs, r_lambda, RT, RN, r_kl, 1e-8f);
    } else if (r_which == 4) {
        L += 1.3 * eg_normal_loss_forward(c, perm, r_running, r_idx, r_w, r_sigma, 1e-3f, RT, RN,
                                          RK, r_kl, 1e-8f);
    }
    return L;
}

static void test_route(int renorm, int which, int kl)
{
    r_renorm = renorm;
    r_which = which;
    r_kl = kl;
    r_lambda = 1.5f;
    r_sigma = RN / 2.0f;
    for (int i = 0; i < RT * RN; i++) {
        r_logits[i] = (eg_rng_uniform(&rng) * 2.0f - 1.0f) * 2.0f;
        r_cp[i] = eg_rng_uniform(&rng) * 2.0f - 1.0f;
    }
    for (int i = 0; i < RT * RK; i++) {
        r_cw[i] = eg_rng_uniform(&rng) * 2.0f - 1.0f;
    }
    for (int e = 0; e < RN; e++) {
        r_running[e] = 3.0 + e * 0.7;
    }
    route_loss();
    float dprobs[RT * RN], dw[RT * RK], dl[RT * RN], dlam = 0.0f, dsig = 0.0f;
    memcpy(dprobs, r_cp, sizeof dprobs);
    memcpy(dw, r_cw, sizeof dw);
    int64_t counts[RN];
    int32_t perm[RT * RN];
    double c[RN];
    if (which == 1) {
        eg_balance_loss_forward(counts, r_probs, r_idx, RT, RN, RK);
        eg_balance_loss_backward(dprobs, 0.7f, counts, RT, RN, RK);
    } else if (which == 3) {
        eg_poisson_loss_forward(perm, r_probs, r_lambda, RT, RN, kl, 1e-8f);
        eg_poisson_loss_backward(dprobs, &dlam, 0.9f, r_probs, perm, r_lambda, RT, RN, kl, 1e-8f);
    } else if (which == 4) {
        eg_normal_loss_forward(c, perm, r_running, r_idx, r_w, r_sigma, 1e-3f, RT, RN, RK, kl,
                               1e-8f);
        eg_normal_loss_backward(dw, &dsig, 1.3f, c, perm, r_idx, r_sigma, 1e-3f, RT, RN, RK, kl,
                                1e-8f);
    }
    eg_router_topk_backward(dl, dw, dprobs, r_probs, r_idx, r_w, RT, RN, RK, renorm);
    if (which == 2) {
        eg_zloss_backward(dl, 0.3f, r_lse, r_probs, RT, RN);
    }
    /* the |log(q/v)| form has kinks where q_i = v_i: a smaller step keeps both
     * evaluations on one side of them */
    char name[64];
    snprintf(name, sizeof name, "route renorm=%d loss=%d kl=%d dlogits", renorm, which, kl);
    gradcheck(name, route_loss, r_logits, dl, RT * RN, which == 3 && !kl ? 2e-4f : 2e-3f, 3e-3);
    if (which == 3) {
        float lam_ana[1] = {dlam};
        gradcheck("poisson dlambda", route_loss, &r_lambda, lam_ana, 1, kl ? 1e-3f : 1e-4f, 3e-3);
        r_lambda = 2.5f; /* clamped: no gradient */
        float z = 0.0f;
        route_loss();
        eg_poisson_loss_forward(perm, r_probs, r_lambda, RT, RN, kl, 1e-8f);
        eg_poisson_loss_backward(dprobs, &z, 0.9f, r_probs, perm, r_lambda, RT, RN, kl, 1e-8f);
        CHECK(z == 0.0f, "poisson dlambda outside [1,2] must be 0, got %g", (double)z);
        float l25 = (float)route_loss();
        r_lambda = 2.0f;
        CHECK_CLOSE(l25, route_loss(), 1e-6);
    }
    if (which == 4) {
        float sig_ana[1] = {dsig};
        gradcheck("normal dsigma", route_loss, &r_sigma, sig_ana, 1, 1e-3f, 3e-3);
    }
}

/* ------------------------------------------------------------ graph router */
enum { GT = 5, GH = 6, GN = 4, GG = 5 };
static int GL = 2; /* GCN layers: 1, 2 (the default) or 3 */
static float *g_x, *g_X, *g_Ws, *g_Wt, *g_Wl, *g_p, *g_A, *g_c, *g_lg, *g_Zt, *g_Z;
static int g_pe; /* per-expert readout: g_p is (GN, GG) */

static double graph_loss(void)
{
    eg_err err;
    eg_graph_router_dims d = {GT, GH, GN, GG, GL, g_pe};
    eg_graph_router_forward(g_lg, g_Zt, g_Z, g_x, g_X, g_Ws, g_Wt, g_Wl, g_p, g_A, &d, &err);
    return dotv(g_lg, g_c, GT * GN);
}

/* Dense per-token reference: H = [u; t], Z = Ahat H W^T, layer by layer. */
static void graph_naive(float *lg)
{
    int Nn = GN + 1;
    for (int t = 0; t < GT; t++) {
        double Hc[GN + 1][GG], Hn[GN + 1][GG];
        for (int n = 0; n < Nn; n++) {
            for (int c = 0; c < GG; c++) {
                double acc = 0.0;
                for (int h = 0; h < GH; h++) {
                    acc += n < GN ? g_Ws[c * GH + h] * g_X[n * GH + h]
                                  : g_Wt[c * GH + h] * g_x[t * GH + h];
                }
                Hc[n][c] = acc > 0 ? acc : 0;
            }
        }
        for (int l = 0; l < GL; l++) {
            double HW[GN + 1][GG];
            for (int n = 0; n < Nn; n++) {
                for (int c = 0; c < GG; c++) {
                    double acc = 0.0;
                    for (int f = 0; f < GG; f++) {
                        acc += Hc[n][f] * g_Wl[(l * GG + c) * GG + f];
                    }
                    HW[n][c] = acc;
                }
            }
            for (int n = 0; n < Nn; n++) {
                for (int c = 0; c < GG; c++) {
                    double acc = 0.0;
                    for (int f = 0; f < Nn; f++) {
                        acc += g_A[n * Nn + f] * HW[f][c];
                    }
                    Hn[n][c] = acc > 0 ? acc : 0;
                }
            }
            memcpy(Hc, Hn, sizeof Hc);
        }
        for (int e = 0; e < GN; e++) {
            double acc = 0.0;
            for (int c = 0; c < GG; c++) {
                acc += Hc[e][c] * g_p[(g_pe ? e * GG : 0) + c];
            }
            lg[t * GN + e] = (float)acc;
        }
    }
}

static void test_graph(int per_expert, int layers)
{
    int Nn = GN + 1, np_ = per_expert ? GN * GG : GG;
    g_pe = per_expert;
    GL = layers;
    g_x = randv(GT * GH, 1);
    g_X = randv(GN * GH, 1);
    g_Ws = randv(GG * GH, 1);
    g_Wt = randv(GG * GH, 1);
    g_Wl = randv(GL * GG * GG, 1);
    g_p = randv(np_, 1);
    g_c = randv(GT * GN, 1);
    g_lg = zerov(GT * GN);
    g_Zt = zerov(GT * GG);
    g_Z = zerov(GL * GT * Nn * GG);
    /* a symmetric 0/1 adjacency with self loops, token linked to all, normalised */
    int adj[GN + 1][GN + 1] = {{0}};
    for (int n = 0; n < Nn; n++) {
        adj[n][n] = 1;
        adj[n][GN] = adj[GN][n] = 1;
    }
    adj[0][1] = adj[1][0] = 1;
    adj[2][3] = adj[3][2] = 1;
    g_A = zerov(Nn * Nn);
    for (int n = 0; n < Nn; n++) {
        for (int f = 0; f < Nn; f++) {
            int dn = 0, df = 0;
            for (int q = 0; q < Nn; q++) {
                dn += adj[n][q];
                df += adj[f][q];
            }
            g_A[n * Nn + f] = adj[n][f] ? (float)(1.0 / sqrt((double)dn * df)) : 0.0f;
        }
    }
    graph_loss();
    float ref[GT * GN];
    graph_naive(ref);
    double md = 0.0;
    for (int i = 0; i < GT * GN; i++) {
        md = fmax(md, fabs(ref[i] - g_lg[i]));
    }
    CHECK(md < 1e-4, "graph router algebra vs dense per-token graph (per-expert readout %d, "
          "%d layers): %g", per_expert, layers, md);
    float *dx = zerov(GT * GH), *dWs = zerov(GG * GH), *dWt = zerov(GG * GH);
    float *dWl = zerov(GL * GG * GG), *dp = zerov(np_);
    eg_err err;
    eg_graph_router_dims d = {GT, GH, GN, GG, GL, per_expert};
    CHECK(eg_graph_router_backward(dx, dWs, dWt, dWl, dp, g_c, g_x, g_X, g_Ws, g_Wt, g_Wl, g_p,
                                   g_A, g_Zt, g_Z, &d, &err) == EG_OK, "graph backward");
    const float h = 1e-3f;
    gradcheck("graph dx", graph_loss, g_x, dx, GT * GH, h, 5e-3);
    gradcheck("graph dWs", graph_loss, g_Ws, dWs, GG * GH, h, 5e-3);
    gradcheck("graph dWt", graph_loss, g_Wt, dWt, GG * GH, h, 5e-3);
    gradcheck("graph dWl", graph_loss, g_Wl, dWl, GL * GG * GG, h, 5e-3);
    gradcheck(per_expert ? "graph dp (per expert)" : "graph dp", graph_loss, g_p, dp, np_, h,
              5e-3);
    free(g_x); free(g_X); free(g_Ws); free(g_Wt); free(g_Wl); free(g_p); free(g_c);
    free(g_lg); free(g_Zt); free(g_Z); free(g_A);
    free(dx); free(dWs); free(dWt); free(dWl); free(dp);
}

/* prec = EG_PREC_BF16 (the products over the tokens with bf16 operands,
 * float32 sums) against float32 on the same inputs, at a size where the
 * products have real sums (T 300, H 96, N 8, g 32, 2 layers): logits and
 * every gradient close to float32 in norm (|bf16 - f32| / |f32|), the logits
 * equal to float32's (the forward stays float32) and dx not (the backward's
 * products are bf16). */
static void test_graph_bf16(void)
{
    enum { T = 300, H = 96, N = 8, G = 32, L = 2, Nn = N + 1 };
    float *x = randv((size_t)T * H, 1), *X = randv((size_t)N * H, 1);
    float *Ws = randv((size_t)G * H, 0.3f), *Wt = randv((size_t)G * H, 0.3f);
    float *Wl = randv((size_t)L * G * G, 0.3f), *p = randv(G, 1), *c = randv((size_t)T * N, 1);
    float *A = zerov((size_t)Nn * Nn);
    for (int n = 0; n < Nn; n++) {
        for (int f = 0; f < Nn; f++) {
            /* token linked to every expert, experts n, f linked when n + f is even */
            int on = n == f || n == N || f == N || (n + f) % 2 == 0;
            A[n * Nn + f] = on ? 1.0f / (float)Nn : 0.0f;
        }
    }
    float *lg[2], *Zt[2], *Z[2], *dx[2], *dWs[2], *dWt[2], *dWl[2], *dp[2];
    for (int k = 0; k < 2; k++) {
        eg_err err;
        eg_graph_router_dims d = {T, H, N, G, L, 0, k ? EG_PREC_BF16 : EG_PREC_F32};
        lg[k] = zerov((size_t)T * N);
        Zt[k] = zerov((size_t)T * G);
        Z[k] = zerov((size_t)L * T * Nn * G);
        dx[k] = zerov((size_t)T * H);
        dWs[k] = zerov((size_t)G * H);
        dWt[k] = zerov((size_t)G * H);
        dWl[k] = zerov((size_t)L * G * G);
        dp[k] = zerov(G);
        CHECK(eg_graph_router_forward(lg[k], Zt[k], Z[k], x, X, Ws, Wt, Wl, p, A, &d, &err) == EG_OK,
              "graph forward prec %d", k);
        CHECK(eg_graph_router_backward(dx[k], dWs[k], dWt[k], dWl[k], dp[k], c, x, X, Ws, Wt, Wl, p,
                                       A, Zt[k], Z[k], &d, &err) == EG_OK, "graph backward prec %d", k);
    }
    struct { const char *name; float **v; size_t n; } cmp[] = {
        {"logits", lg, (size_t)T * N}, {"dx", dx, (size_t)T * H}, {"dWs", dWs, (size_t)G * H},
        {"dWt", dWt, (size_t)G * H}, {"dWl", dWl, (size_t)L * G * G}, {"dpvec", dp, G}};
    for (size_t i = 0; i < sizeof cmp / sizeof cmp[0]; i++) {
        double mx = 0.0, md = 0.0, n2 = 0.0, d2 = 0.0;
        for (size_t j = 0; j < cmp[i].n; j++) {
            const double a = cmp[i].v[0][j], b = cmp[i].v[1][j];
            mx = fmax(mx, fabs(a));
            md = fmax(md, fabs(a - b));
            n2 += a * a;
            d2 += (a - b) * (a - b);
        }
        printf("graph router bf16 vs float32 %s: |diff| / |f32| %.3g (max |diff| %.3g, max %.3g)\n",
               cmp[i].name, sqrt(d2 / n2), md, mx);
        /* the backward's products round their operands (~2^-9 each); measured
         * 0.2-0.4% here (with a bf16 forward it was 4-7%: flipped ReLU masks) */
        const double tol = 2e-2;
        CHECK(n2 > 0 && sqrt(d2 / n2) <= tol, "graph router bf16 vs float32 %s: |diff| / |f32| %g",
              cmp[i].name, sqrt(d2 / n2));
        if (i == 0) {
            CHECK(md == 0, "graph router bf16: the forward is float32 (logits differ by %g)", md);
        } else if (i == 1) {
            CHECK(md > 0, "graph router bf16: the backward's products are bf16 (dx equal)");
        }
    }
    free(x); free(X); free(Ws); free(Wt); free(Wl); free(p); free(c); free(A);
    for (int k = 0; k < 2; k++) {
        free(lg[k]); free(Zt[k]); free(Z[k]); free(dx[k]); free(dWs[k]); free(dWt[k]); free(dWl[k]);
        free(dp[k]);
    }
}

/* The activation rows exist once per instruction set (moe_act.c); every
 * copy this CPU can run must give the same bits as the baseline one (fixed
 * reduction lanes, no FMA contraction), over ordinary values, the clamped
 * ranges of exp/erfc and a length that is not a multiple of the lanes. */
static void test_act_copies(void)
{
    enum { N = 613 };
    float g[N], u[N], dat[N], back[N], mk[N];
    for (int i = 0; i < N; i++) {
        g[i] = i < 40 ? (float)(i - 20) * 6.0f : 4.0f * (float)eg_rng_normal(&rng);
        u[i] = (float)eg_rng_normal(&rng);
        dat[i] = (float)eg_rng_normal(&rng);
        back[i] = (float)eg_rng_normal(&rng);
        mk[i] = i % 3 == 0 ? 0.0f : 1.25f;
    }
    const eg_moe_act_kernels *b = eg_moe_act_copy(0);
    CHECK(b != NULL && eg_moe_act() != NULL, "baseline activation copy present");
    for (int level = 1; level <= 2; level++) {
        const eg_moe_act_kernels *k = eg_moe_act_copy(level);
        if (k == NULL || eg_isa_level() < level) {
            continue; /* not built, or this CPU cannot run it */
        }
        for (int swi = 0; swi < 2; swi++) {
            const float *up = swi ? u : NULL;
            static float o1[7][N], o2[7][N];
            b->forward_row(o1[0], g, up, N);
            k->forward_row(o2[0], g, up, N);
            float d1 = b->backward_row(o1[1], swi ? o1[2] : NULL, o1[3], g, up, dat, back, mk,
                                       0.7f, N);
            float d2 = k->backward_row(o2[1], swi ? o2[2] : NULL, o2[3], g, up, dat, back, mk,
                                       0.7f, N);
            int same = memcmp(&d1, &d2, sizeof d1) == 0;
            for (int q = 0; q < 4; q++) {
                if (q == 2 && !swi) {
                    continue;
                }
                same = same && memcmp(o1[q], o2[q], sizeof o1[q]) == 0;
            }
            CHECK(same, "activation copy %d (swiglu=%d) bit-identical to baseline", level, swi);
        }
    }
}

/* Far tails of the activations: silu(g) = 0 below -87 and GELU(g) = 0 below
 * -13 exactly (the clamped exp left ~1e-38, which a huge up projection turned
 * into -60 for g = -1e20, u = 1e20), GELU(g) = g above 13; the backward gives
 * the matching exact derivatives (0, or 1 for GELU's right tail). */
static void test_act_tails(void)
{
    enum { N = 8 };
    const float g[N] = {-1e20f, -1e30f, -90.0f, -13.5f, 13.5f, 1e30f, -3e38f, 3e38f};
    const float u[N] = {1e20f, 1e30f, 1e30f, 1e30f, 1.0f, 1.0f, 1.0f, 1.0f};
    float ones[N], zeros[N], ad[N], dg[N], du[N], adb[N];
    for (int i = 0; i < N; i++) {
        ones[i] = 1.0f;
        zeros[i] = 0.0f;
    }
    const eg_moe_act_kernels *k = eg_moe_act();
    k->forward_row(ad, g, u, 3);   /* g[3] = -13.5 is no silu tail: silu(-13.5) = -1.9e-5 */
    for (int i = 0; i < 3; i++) {
        CHECK(ad[i] == 0.0f, "silu(%g) * %g = %g, expected 0", (double)g[i], (double)u[i], (double)ad[i]);
    }
    k->backward_row(dg, du, adb, g, u, ones, zeros, ones, 1.0f, 3);
    for (int i = 0; i < 3; i++) {
        CHECK(dg[i] == 0.0f && du[i] == 0.0f, "swiglu backward tail %g: dg %g du %g", (double)g[i],
              (double)dg[i], (double)du[i]);
    }
    k->forward_row(ad, g, NULL, N);
    k->backward_row(dg, NULL, adb, g, NULL, ones, zeros, ones, 1.0f, N);
    for (int i = 0; i < N; i++) {
        float want = g[i] > 0.0f ? g[i] : 0.0f;
        CHECK(ad[i] == want, "gelu(%g) = %g, expected %g", (double)g[i], (double)ad[i], (double)want);
        CHECK(dg[i] == (g[i] > 0.0f ? 1.0f : 0.0f), "gelu'(%g) = %g", (double)g[i], (double)dg[i]);
    }
}

/* The Poisson profile of many experts (lambda^i / i! underflows past i ~ 180)
 * and the Normal profile of a small sigma (most q_i underflow; for odd N every
 * one did, 0/0) gave NaN losses and gradients; in log space they are finite. */
static void test_losses_underflow(void)
{
    enum { T = 3, N = 256, K = 2 };
    static float probs[T * N], w[T * K], dprobs[T * N], dw[T * K];
    static int32_t perm[T * N], idx[T * K];
    static double c[N];
    for (int t = 0; t < T; t++) {
        double s = 0.0;
        for (int e = 0; e < N; e++) {
            probs[t * N + e] = (float)(1.0 + eg_rng_uniform(&rng));
            s += probs[t * N + e];
        }
        for (int e = 0; e < N; e++) {
            probs[t * N + e] = (float)(probs[t * N + e] / s);
        }
        for (int j = 0; j < K; j++) {
            idx[t * K + j] = (t * 7 + j * 3) % N;
            w[t * K + j] = 0.5f;
        }
    }
    for (int kl = 0; kl < 2; kl++) {
        float dlam = 0.0f;
        double L = eg_poisson_loss_forward(perm, probs, 1.5f, T, N, kl, 1e-8f);
        eg_poisson_loss_backward(dprobs, &dlam, 1.0f, probs, perm, 1.5f, T, N, kl, 1e-8f);
        CHECK(isfinite(L) && isfinite(dlam), "poisson N=%d kl=%d: loss %g dlambda %g", N, kl, L,
              (double)dlam);
        for (int n = 7; n <= 8; n++) {
            float dsig = 0.0f;
            double Ln = eg_normal_loss_forward(c, perm, NULL, idx, w, 1e-3f, 1e-3f, T, n, K, kl, 1e-8f);
            memset(dw, 0, sizeof dw);
            eg_normal_loss_backward(dw, &dsig, 1.0f, c, perm, idx, 1e-3f, 1e-3f, T, n, K, kl, 1e-8f);
            int ok = isfinite(Ln) && isfinite(dsig);
            for (int m = 0; m < T * K; m++) {
                ok = ok && isfinite(dw[m]);
            }
            CHECK(ok, "normal N=%d sigma=1e-3 kl=%d: loss %g dsigma %g", n, kl, Ln, (double)dsig);
        }
    }
}

int main(void)
{
    eg_set_num_threads(2);
    test_lora(0.0f);
    test_lora(0.3f);
    test_ffn(EG_MOE_SWIGLU, 0.0f);
    test_ffn(EG_MOE_GELU, 0.0f);
    test_ffn(EG_MOE_SWIGLU, 0.25f);
    test_ffn(EG_MOE_GELU, 0.25f);
    for (int renorm = 0; renorm < 2; renorm++) {
        for (int which = 0; which < 5; which++) {
            test_route(renorm, which, 0);
        }
    }
    test_route(1, 3, 1);
    test_route(1, 4, 1);
    for (int layers = 1; layers <= 3; layers++) {
        test_graph(0, layers);
        test_graph(1, layers);
    }
    test_graph_bf16();
    test_act_copies();
    test_act_tails();
    test_losses_underflow();
    return eg_test_report("test_gmoe");
}
