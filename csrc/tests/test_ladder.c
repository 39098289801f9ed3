/*
 * test_ladder.c — the whole G-Ladder: central-difference check of the
 * gradient of the summed exit-head loss w.r.t. every parameter tensor (a few
 * entries each), for SAGE / GCN / GAT, 1 and 2 GNN layers, norm id / ln,
 * early exit on / off; plus determinism, call-order and input validation.
 */
#include "eg_bf16.h"
#include "eg_engine.h"
#include "eg_test.h"

#include <stdlib.h>
#include <string.h>

/* batch: 3 subgraphs over 9 nodes (sizes 4, 2, 3), undirected edges */
static const int64_t GP[] = {0, 4, 6, 9};
/* in-neighbour CSR: 0-1, 0-2, 0-3, 1-2 ; 4-5 ; 6-7, 7-8 */
static const int64_t PTR[] = {0, 3, 5, 7, 8, 9, 10, 11, 13, 14};
static const int64_t SRC[] = {1, 2, 3, 0, 2, 0, 1, 0, 5, 4, 7, 6, 8, 7};
static const int64_t LABELS[] = {2, 0, 1};

enum { K = 3, D = 6, N = 9 };

static float *states(uint64_t seed)
{
    float *H = malloc(sizeof(float) * K * N * D);
    for (int i = 0; i < K * N * D; i++) {
        H[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
    }
    return H;
}

static int g_training = 0;
static float g_eps = 5e-4f;

static double run_loss(eg_ladder *m, const float *H)
{
    eg_err err;
    eg_ladder_begin(m, 3, GP, N, PTR, SRC, g_training, 0, &err);
    for (int i = 0; i < K; i++) {
        eg_ladder_forward_step(m, i, H + (size_t)i * N * D, NULL, &err);
    }
    float loss;
    eg_ladder_loss(m, LABELS, &loss, NULL, &err);
    return loss;
}

static void gradcheck_model(int gnn, int layers, int norm, int early)
{
    eg_ladder_config cfg = {K, D, 4, 6, 3, gnn, layers, EG_ACT_ELU, norm, 2, early, 0.0f, 0.5f};
    eg_ladder *m;
    eg_err err;
    CHECK(eg_ladder_create(&m, &cfg, 5, &err) == EG_OK, "create: %s", err.msg);
    float *P = eg_ladder_params(m);
    /* move the gates off 0 so their gradient path is exercised asymmetrically */
    for (int pi = 0; pi < eg_ladder_num_params(m); pi++) {
        const eg_param_desc *d = eg_ladder_param(m, pi);
        if (strncmp(d->name, "gates.", 6) == 0) {
            P[d->offset] = 0.1f * (float)pi / 10.0f;
        }
    }
    float *H = states(77);
    run_loss(m, H);
    eg_ladder_zero_grad(m);
    CHECK(eg_ladder_backward(m, &err) == EG_OK, "backward: %s", err.msg);
    const float *Gr = eg_ladder_grads(m);
    int bad = 0, checked = 0;
    for (int pi = 0; pi < eg_ladder_num_params(m); pi++) {
        const eg_param_desc *d = eg_ladder_param(m, pi);
        if (!d->trainable) {
            continue; /* BatchNorm running statistics: buffers, no gradient */
        }
        size_t step = d->size > 3 ? d->size / 3 : 1;
        for (size_t q = 0; q < d->size; q += step) {
            float *x = P + d->offset + q;
            float keep = *x, eps = g_eps;
            *x = keep + eps;
            double lp = run_loss(m, H);
            *x = keep - eps;
            double lm = run_loss(m, H);
            *x = keep;
            double num = (lp - lm) / (2.0 * eps), ana = Gr[d->offset + q];
            checked++;
            if (fabs(num - ana) > 2e-3 + 3e-2 * fmax(fabs(num), fabs(ana))) {
                bad++;
                fprintf(stderr, "  %s[%zu]: numeric %.6g analytic %.6g\n", d->name, q, num, ana);
            }
        }
    }
    CHECK(bad == 0, "ladder grad check gnn=%d layers=%d norm=%d early=%d: %d of %d off", gnn, layers,
          norm, early, bad, checked);
    free(H);
    eg_ladder_free(m);
}

static void test_api(void)
{
    eg_ladder_config cfg = {K, D, 4, 6, 3, EG_GNN_SAGE, 2, EG_ACT_RELU, EG_NORM_LN, 1, 1, 0.5f, 0.1f};
    eg_ladder *m, *m2;
    eg_err err;
    CHECK(eg_ladder_create(&m, &cfg, 1, &err) == EG_OK, "create");
    CHECK(eg_ladder_create(&m2, &cfg, 1, &err) == EG_OK, "create 2");
    CHECK(memcmp(eg_ladder_params(m), eg_ladder_params(m2), eg_ladder_total_floats(m) * 4) == 0,
          "same seed, same init");
    CHECK(strcmp(eg_ladder_param(m, 0)->name, "ladders.0.projector.0.weight") == 0, "first name");
    int found = 0;
    for (int pi = 0; pi < eg_ladder_num_params(m); pi++) {
        found += strcmp(eg_ladder_param(m, pi)->name, "ladders.1.gnn.1.lin_r.weight") == 0;
        found += strcmp(eg_ladder_param(m, pi)->name, "gates.2.alpha") == 0;
        found += strcmp(eg_ladder_param(m, pi)->name, "exit_heads.1.weight") == 0;
        CHECK(eg_ladder_param(m, pi)->offset % 16 == 0, "aligned offsets");
    }
    CHECK(found == 3, "expected parameter names");
    {
        eg_ladder_config bcfg = cfg;
        bcfg.norm = EG_NORM_BN;
        eg_ladder *mb;
        CHECK(eg_ladder_create(&mb, &bcfg, 1, &err) == EG_OK, "create bn");
        int nbuf = 0;
        for (int pi = 0; pi < eg_ladder_num_params(mb); pi++) {
            const eg_param_desc *d = eg_ladder_param(mb, pi);
            if (strstr(d->name, "running_var") != NULL) {
                CHECK(eg_ladder_params(mb)[d->offset] == 1.0f && !d->trainable, "running_var buffer starts at 1");
            }
            nbuf += !d->trainable;
        }
        /* K ladders x 2 layers, minus the last ladder's last layer, x 3 buffers */
        CHECK(nbuf == (K * 2 - 1) * 3, "bn buffers: %d", nbuf);
        eg_ladder_free(mb);
    }
    float *H = states(3);
    float lg[9], lg2[9];
    /* training twice with the same seed gives identical results */
    for (int rep = 0; rep < 2; rep++) {
        eg_ladder *mm = rep == 0 ? m : m2;
        CHECK(eg_ladder_begin(mm, 3, GP, N, PTR, SRC, 1, 42, &err) == EG_OK, "begin");
        for (int i = 0; i < K; i++) {
            CHECK(eg_ladder_forward_step(mm, i, H + (size_t)i * N * D, rep == 0 ? lg : lg2, &err) == EG_OK, "step");
        }
        float loss;
        CHECK(eg_ladder_loss(mm, LABELS, &loss, NULL, &err) == EG_OK, "loss");
        eg_ladder_zero_grad(mm);
        CHECK(eg_ladder_backward(mm, &err) == EG_OK, "backward");
        eg_ladder_adamw_step(mm, 1e-2f, 1e-2f, 0.9f, 0.999f, 1e-8f);
    }
    CHECK(memcmp(lg, lg2, sizeof lg) == 0, "deterministic logits");
    CHECK(memcmp(eg_ladder_params(m), eg_ladder_params(m2), eg_ladder_total_floats(m) * 4) == 0,
          "deterministic step");
    /* the one-call training step is the same step as the public sequence */
    {
        float loss_seq, loss_one;
        CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 1, 43, &err) == EG_OK, "begin");
        for (int i = 0; i < K; i++) {
            CHECK(eg_ladder_forward_step(m, i, H + (size_t)i * N * D, NULL, &err) == EG_OK, "step");
        }
        CHECK(eg_ladder_loss(m, LABELS, &loss_seq, NULL, &err) == EG_OK, "loss");
        eg_ladder_zero_grad(m);
        CHECK(eg_ladder_backward(m, &err) == EG_OK, "backward");
        eg_ladder_adamw_step(m, 1e-2f, 1e-2f, 0.9f, 0.999f, 1e-8f);
        const float *Hs[K] = {H, H + (size_t)N * D, H + (size_t)2 * N * D};
        CHECK(eg_ladder_train_step(m2, 3, GP, N, PTR, SRC, N, NULL, Hs, LABELS, 43, 1e-2f, 1e-2f, &loss_one,
                                   &err) == EG_OK, "train_step: %s", err.msg);
        CHECK(loss_seq == loss_one, "train_step loss %g vs %g", loss_one, loss_seq);
        CHECK(memcmp(eg_ladder_params(m), eg_ladder_params(m2), eg_ladder_total_floats(m) * 4) == 0,
              "train_step updates the parameters like the public sequence");
        CHECK(memcmp(eg_ladder_grads(m), eg_ladder_grads(m2), eg_ladder_total_floats(m) * 4) == 0,
              "train_step gradients");
        CHECK(eg_ladder_backward(m2, &err) == EG_ESTATE, "no backward after train_step (borrowed states)");
        /* prediction forward: same logits as the kept-states forward, backward refused */
        CHECK(eg_ladder_begin(m2, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "begin");
        for (int i = 0; i < K; i++) {
            CHECK(eg_ladder_forward_eval(m2, i, Hs[i], lg2, &err) == EG_OK, "eval step");
        }
        CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "begin");
        for (int i = 0; i < K; i++) {
            CHECK(eg_ladder_forward_step(m, i, Hs[i], lg, &err) == EG_OK, "step");
        }
        CHECK(memcmp(lg, lg2, sizeof lg) == 0, "forward_eval logits == forward_step logits");
        CHECK(eg_ladder_loss(m2, LABELS, &loss_one, NULL, &err) == EG_OK, "loss after eval forward");
        CHECK(eg_ladder_backward(m2, &err) == EG_ESTATE, "backward after forward_eval refused");
    }
    /* order and validation */
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "begin");
    CHECK(eg_ladder_forward_step(m, 1, H, NULL, &err) == EG_ESTATE, "out of order");
    CHECK(eg_ladder_loss(m, LABELS, lg, NULL, &err) == EG_ESTATE, "loss before forward");
    H[5] = NAN;
    CHECK(eg_ladder_forward_step(m, 0, H, NULL, &err) == EG_EINVAL, "NaN states rejected");
    H[5] = 0.0f;
    for (int i = 0; i < K; i++) {
        eg_ladder_forward_step(m, i, H + (size_t)i * N * D, NULL, &err);
    }
    int64_t badl[] = {0, 3, 1};
    float loss;
    CHECK(eg_ladder_loss(m, badl, &loss, NULL, &err) == EG_EINVAL, "label out of range");
    int64_t badsrc[14];
    memcpy(badsrc, SRC, sizeof badsrc);
    badsrc[0] = 0;
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, badsrc, 0, 0, &err) == EG_EINVAL, "self-loop rejected");
    badsrc[0] = 9;
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, badsrc, 0, 0, &err) == EG_EINVAL, "source out of range");
    int64_t badgp[] = {0, 4, 4, 9};
    CHECK(eg_ladder_begin(m, 3, badgp, N, PTR, SRC, 0, 0, &err) == EG_EINVAL, "empty subgraph");
    eg_ladder_config bad = cfg;
    bad.gnn = EG_GNN_GAT;
    bad.heads = 5;
    eg_ladder *m3 = NULL;
    CHECK(eg_ladder_create(&m3, &bad, 1, &err) == EG_EINVAL && m3 == NULL, "heads must divide width");
    bad = cfg;
    bad.T = 0.0f;
    CHECK(eg_ladder_create(&m3, &bad, 1, &err) == EG_EINVAL, "T must be positive");
    free(H);
    eg_ladder_free(m);
    eg_ladder_free(m2);
}

/* Shared state rows (eg_ladder_set_rows): node n of the batch uses row
 * ROWS[n] of U distinct rows. The result must be the per-node model's on the
 * expanded states (same logits, loss and gradients up to float32 summation
 * order), for every GNN kind; with bf16 products up to bf16 rounding (the
 * projector's gradient rows are summed before they are rounded, not after);
 * bad rows are refused. */
static const int64_t ROWS[N] = {0, 1, 2, 3, 1, 4, 2, 0, 3};
enum { U = 5 };

static double shared_rows_run(eg_ladder *m, const float *H, int shared, float *logits, int training)
{
    eg_err err;
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, training, 9, &err) == EG_OK, "begin");
    if (shared) {
        CHECK(eg_ladder_set_rows(m, U, ROWS, &err) == EG_OK, "set_rows: %s", err.msg);
    }
    for (int i = 0; i < K; i++) {
        CHECK(eg_ladder_forward_step(m, i, H + (size_t)i * (shared ? U : N) * D, logits + 9 * i, &err) == EG_OK,
              "step: %s", err.msg);
    }
    float loss;
    CHECK(eg_ladder_loss(m, LABELS, &loss, NULL, &err) == EG_OK, "loss");
    eg_ladder_zero_grad(m);
    CHECK(eg_ladder_backward(m, &err) == EG_OK, "backward: %s", err.msg);
    return loss;
}

static void test_shared_rows(int gnn, int precision)
{
    eg_ladder_config cfg = {K, D, 4, 6, 3, gnn, 2, EG_ACT_ELU, EG_NORM_LN, 2, 1, 0.3f, 0.5f};
    cfg.precision = precision;
    eg_ladder *a, *b;
    eg_err err;
    CHECK(eg_ladder_create(&a, &cfg, 4, &err) == EG_OK, "create: %s", err.msg);
    CHECK(eg_ladder_create(&b, &cfg, 4, &err) == EG_OK, "create");
    float *Hu = malloc(sizeof(float) * K * U * D), *Hn = malloc(sizeof(float) * K * N * D);
    uint64_t seed = 11;
    for (int i = 0; i < K * U * D; i++) {
        Hu[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
    }
    for (int i = 0; i < K; i++) {
        for (int n = 0; n < N; n++) {
            memcpy(Hn + ((size_t)i * N + n) * D, Hu + ((size_t)i * U + ROWS[n]) * D, D * sizeof(float));
        }
    }
    const double tol = precision == EG_PREC_BF16 ? 2e-2 : 1e-5;
    float la[9 * K], lb[9 * K];
    double lsa = shared_rows_run(a, Hu, 1, la, 1), lsb = shared_rows_run(b, Hn, 0, lb, 1);
    double worst = 0.0;
    for (int q = 0; q < 9 * K; q++) {
        worst = fmax(worst, fabs((double)la[q] - lb[q]) / (1.0 + fabs((double)lb[q])));
    }
    CHECK(worst < tol && fabs(lsa - lsb) < tol * (1.0 + fabs(lsb)),
          "shared rows gnn=%d prec=%d: logits off by %.3g, loss %.8g vs %.8g", gnn, precision, worst, lsa, lsb);
    const float *ga = eg_ladder_grads(a), *gb = eg_ladder_grads(b);
    if (precision == EG_PREC_F32) {
        for (int pi = 0; pi < eg_ladder_num_params(a); pi++) {
            const eg_param_desc *d = eg_ladder_param(a, pi);
            double num = 0.0, den = 0.0;
            for (size_t q = 0; q < d->size; q++) {
                num = fmax(num, fabs((double)ga[d->offset + q] - gb[d->offset + q]));
                den = fmax(den, fabs((double)gb[d->offset + q]));
            }
            CHECK(num <= tol * (den + 1e-6), "shared rows gnn=%d: gradient of %s off by %.3g (max %.3g)",
                  gnn, d->name, num, den);
        }
    } else {
        /* bf16: the gradient rows of a shared node are summed before they
         * are rounded, so the two bf16 runs differ by rounding. Sharing must
         * not make the bf16 gradient worse: its distance to the float32
         * gradient stays within twice that of the per-node bf16 run. */
        eg_ladder_config fcfg = cfg;
        fcfg.precision = EG_PREC_F32;
        eg_ladder *f;
        CHECK(eg_ladder_create(&f, &fcfg, 4, &err) == EG_OK, "create f32");
        float lf[9 * K];
        shared_rows_run(f, Hn, 0, lf, 1);
        const float *gf = eg_ladder_grads(f);
        double es = 0.0, ep = 0.0, nf = 0.0;
        for (size_t q = 0; q < eg_ladder_total_floats(f); q++) {
            es += ((double)ga[q] - gf[q]) * ((double)ga[q] - gf[q]);
            ep += ((double)gb[q] - gf[q]) * ((double)gb[q] - gf[q]);
            nf += (double)gf[q] * gf[q];
        }
        CHECK(es > 0.0 && sqrt(es) <= 2.0 * sqrt(ep) && sqrt(es) < 1e-2 * sqrt(nf),
              "shared rows bf16: error %.3g vs per-node bf16 %.3g (gradient norm %.3g)", sqrt(es),
              sqrt(ep), sqrt(nf));
        eg_ladder_free(f);
    }
    /* validation: rows out of range, U > N, after a forward step, keep */
    int64_t bad[N];
    memcpy(bad, ROWS, sizeof bad);
    bad[4] = U;
    CHECK(eg_ladder_begin(a, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "begin");
    CHECK(eg_ladder_set_rows(a, U, bad, &err) == EG_EINVAL, "row outside [0, U) refused");
    bad[4] = -1;
    CHECK(eg_ladder_set_rows(a, U, bad, &err) == EG_EINVAL, "negative row refused");
    CHECK(eg_ladder_set_rows(a, N + 1, ROWS, &err) == EG_EINVAL, "more rows than nodes refused");
    CHECK(eg_ladder_set_rows(a, U, ROWS, &err) == EG_OK, "set_rows");
    CHECK(eg_ladder_forward_step(a, 0, Hu, la, &err) == EG_OK, "step");
    CHECK(eg_ladder_set_rows(a, U, ROWS, &err) == EG_ESTATE, "set_rows after a step refused");
    uint8_t keep[3] = {1, 0, 1};
    CHECK(eg_ladder_keep(a, keep, &err) == EG_ESTATE, "keep with shared rows refused");
    free(Hu);
    free(Hn);
    eg_ladder_free(a);
    eg_ladder_free(b);
}

/* The bf16 ladder against the float32 one with the same weights: the loss
 * and every gradient tensor close (bf16 keeps 8 bits: a few 1e-3 relative on
 * these tiny shapes), and the float32 path unchanged by the option. */
static void test_bf16_close(void)
{
    eg_ladder_config cfg = {K, D, 4, 6, 3, EG_GNN_SAGE, 2, EG_ACT_ELU, EG_NORM_LN, 2, 1, 0.0f, 0.5f};
    eg_ladder *f, *h;
    eg_err err;
    CHECK(eg_ladder_create(&f, &cfg, 8, &err) == EG_OK, "create");
    cfg.precision = EG_PREC_BF16;
    CHECK(eg_ladder_create(&h, &cfg, 8, &err) == EG_OK, "create bf16");
    float *H = states(21);
    float lf[9 * K], lh[9 * K];
    (void)lf;
    double a = shared_rows_run(f, H, 0, lf, 0), b = shared_rows_run(h, H, 0, lh, 0);
    CHECK(fabs(a - b) < 2e-2 * fabs(a) && a != b, "bf16 loss %.8g vs float32 %.8g", b, a);
    const float *gf = eg_ladder_grads(f), *gh = eg_ladder_grads(h);
    for (int pi = 0; pi < eg_ladder_num_params(f); pi++) {
        const eg_param_desc *d = eg_ladder_param(f, pi);
        double dot = 0.0, nf = 0.0, nh = 0.0;
        for (size_t q = 0; q < d->size; q++) {
            dot += (double)gf[d->offset + q] * gh[d->offset + q];
            nf += (double)gf[d->offset + q] * gf[d->offset + q];
            nh += (double)gh[d->offset + q] * gh[d->offset + q];
        }
        if (nf > 0.0) {
            CHECK(dot / sqrt(nf * nh) > 0.995, "bf16 gradient of %s: cosine %.5f", d->name, dot / sqrt(nf * nh));
        }
    }
    eg_ladder_config bad = cfg;
    bad.precision = 7;
    eg_ladder *m3 = NULL;
    CHECK(eg_ladder_create(&m3, &bad, 1, &err) == EG_EINVAL && m3 == NULL, "unknown precision refused");
    free(H);
    eg_ladder_free(f);
    eg_ladder_free(h);
}

int main(void)
{
    eg_set_num_threads(2);
    test_api();
    for (int gnn = 0; gnn < 3; gnn++) {
        test_shared_rows(gnn, EG_PREC_F32);
    }
    test_shared_rows(EG_GNN_SAGE, EG_PREC_BF16);
    test_bf16_close();
    for (int gnn = 0; gnn < 3; gnn++) {
        for (int layers = 1; layers <= 2; layers++) {
            gradcheck_model(gnn, layers, EG_NORM_ID, 1);
            gradcheck_model(gnn, layers, EG_NORM_LN, layers == 2 ? 0 : 1);
        }
    }
    /* BatchNorm: train mode (batch statistics, dropout 0) and eval mode */
    g_eps = 2e-4f; /* BN + ReLU kinks: 5e-4 crosses one, 2e-4 and 1e-4 agree */
    for (g_training = 1; g_training >= 0; g_training--) {
        gradcheck_model(EG_GNN_SAGE, 2, EG_NORM_BN, 1);
        gradcheck_model(EG_GNN_GCN, 1, EG_NORM_BN, 0);
    }
    g_training = 0;
    return eg_test_report("test_ladder");
}
