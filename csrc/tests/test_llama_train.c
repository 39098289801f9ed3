/*
 * test_llama_train.c — the fine-tuning pieces: eg_qmatmul_t against a naive
 * product with the dequantized matrix, and central-difference gradient
 * checks (eg_gradcheck.h: float32 perturbations, loss accumulated in double)
 * of the LoRA delta op (with and without dropout), the chunked LM-head
 * cross-entropy (float and Q8_0 head), and the whole tiny model's loss with
 * respect to every LoRA parameter (tied and untied head, GQA, qkv biases);
 * the encoder's forward through attached MoE experts (eg_llama_attach_moe);
 * interrupting a step (eg_llama_lora_set_poll).
 */
#include "eg.h"
#include "eg_bf16.h"
#include "eg_llama_train.h"
#include "eg_ops.h"
#include "eg_gmoe.h"
#include "eg_test.h"
#include "eg_gradcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float *rnd(size_t n, uint64_t *rng, float scale)
{
    float *p = malloc((n > 0 ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        p[i] = eg_rng_normal(rng) * scale;
    }
    return p;
}

/* Q8_0 blocks of a float matrix (rows, cols), cols % 32 == 0 */
static void *quant_q8_0(const float *w, int rows, int cols)
{
    eg_block_q8_0 *b = malloc((size_t)rows * cols / 32 * sizeof *b);
    for (int i = 0; i < rows * cols / 32; i++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) {
            amax = fmaxf(amax, fabsf(w[i * 32 + j]));
        }
        float d = amax / 127.0f;
        float dd = d;
        uint16_t h;
        eg_f32_to_f16(&dd, &h, 1);
        memcpy(&b[i].d, &h, sizeof h);
        for (int j = 0; j < 32; j++) {
            b[i].qs[j] = (int8_t)(d > 0 ? lrintf(w[i * 32 + j] / d) : 0);
        }
    }
    return b;
}

static void test_qmatmul_t(void)
{
    uint64_t rng = 41;
    const int rows = 70, cols = 64, N = 5;
    float *w = rnd((size_t)rows * cols, &rng, 0.5f), *dy = rnd((size_t)N * rows, &rng, 1.0f);
    void *q = quant_q8_0(w, rows, cols);
    float *wd = malloc((size_t)rows * cols * sizeof *wd);
    eg_dequantize(EG_GGML_Q8_0, q, wd, (size_t)rows * cols);
    eg_err err;
    for (int type = 0; type < 2; type++) {
        eg_qmat m;
        CHECK(eg_qmat_init(&m, type ? EG_GGML_Q8_0 : EG_GGML_F32, rows, cols, type ? q : (void *)w,
                           "w", &err) == EG_OK, "qmat init");
        const float *ref_w = type ? wd : w;
        float dx[5 * 64], dx2[5 * 64];
        int old = eg_qmatmul_tile_rows(16);  /* several tiles */
        CHECK(eg_qmatmul_t(dx, cols, dy, rows, N, &m, 0, &err) == EG_OK, "qmatmul_t");
        for (int i = 0; i < N * cols; i++) {
            dx2[i] = 1.0f;
        }
        CHECK(eg_qmatmul_t(dx2, cols, dy, rows, N, &m, 1, &err) == EG_OK, "qmatmul_t acc");
        eg_qmatmul_tile_rows(old);
        double worst = 0.0, worst2 = 0.0;
        for (int t = 0; t < N; t++) {
            for (int c = 0; c < cols; c++) {
                double s = 0.0;
                for (int r = 0; r < rows; r++) {
                    s += (double)dy[t * rows + r] * ref_w[r * cols + c];
                }
                worst = fmax(worst, fabs(s - dx[t * cols + c]));
                worst2 = fmax(worst2, fabs(s + 1.0 - dx2[t * cols + c]));
            }
        }
        CHECK(worst < 1e-4 && worst2 < 1e-4, "qmatmul_t type %d err %g / %g", type, worst, worst2);
    }
    free(w); free(dy); free(q); free(wd);
}

typedef struct {
    const float *x, *A, *B, *base;
    size_t N;
    int In, O, r;
    float scale, p;
    float *hA, *scratch;
} ld_ctx;

static void ld_fwd(void *c, float *out)
{
    ld_ctx *k = c;
    memcpy(out, k->base, k->N * (size_t)k->O * sizeof(float));
    eg_lora_delta_forward(out, (size_t)k->O, k->hA, k->x, (size_t)k->In, k->A, k->B, k->N, k->In,
                          k->O, k->r, k->scale, k->p, 77, k->scratch);
}

static void test_lora_delta(int r)
{
    uint64_t rng = 43;
    const size_t N = 6;
    const int In = 9, O = 7;
    for (int withp = 0; withp < 2; withp++) {
        float *x = rnd(N * In, &rng, 1.0f), *A = rnd((size_t)r * In, &rng, 0.5f);
        float *B = rnd((size_t)O * r, &rng, 0.5f), *base = rnd(N * O, &rng, 1.0f);
        float *R = rnd(N * O, &rng, 1.0f);
        float *hA = malloc(N * r * sizeof *hA), *scratch = malloc(N * In * sizeof *scratch);
        float *dh = malloc(N * r * sizeof *dh);
        float *dx = calloc(N * In, sizeof *dx), *dA = calloc((size_t)r * In, sizeof *dA);
        float *dB = calloc((size_t)O * r, sizeof *dB), *out = malloc(N * O * sizeof *out);
        ld_ctx k = {x, A, B, base, N, In, O, r, 2.0f / r, withp ? 0.3f : 0.0f, hA, scratch};
        ld_fwd(&k, out);
        eg_lora_delta_backward(dx, In, dA, dB, R, O, x, In, hA, A, B, N, In, O, r, k.scale, k.p,
                               77, scratch, dh);
        gc_var vars[] = {{"x", x, dx, N * In}, {"A", A, dA, (size_t)r * In}, {"B", B, dB, (size_t)O * r}};
        gradcheck(withp ? "lora_delta(dropout)" : "lora_delta", ld_fwd, &k, R, N * O, vars, 3,
                  1e-2f, 1e-2, 1e-3);
        if (withp) {
            /* some inputs dropped: their gradient is exactly 0 */
            int zeros = 0;
            for (size_t i = 0; i < N * In; i++) {
                zeros += dx[i] == 0.0f;
            }
            CHECK(zeros > 0 && zeros < (int)(N * In), "dropout mask dropped %d of %zu", zeros, N * In);
        }
        free(x); free(A); free(B); free(base); free(R); free(hA); free(scratch); free(dh);
        free(dx); free(dA); free(dB); free(out);
    }
}

/* A shape large enough for the threaded loops, against a double reference:
 * the direct small-rank loops (r <= 16) and the BLAS path (r > 16). */
static void test_lora_delta_big(int r, float p)
{
    uint64_t rng = 53;
    const size_t N = 301;   /* threaded (N * (In + O) >= EG_OMP_MIN_WORK), 5 row blocks */
    const int In = 300, O = 190, ldx = In + 3, ldo = O + 2;
    float *x = rnd(N * ldx, &rng, 1.0f), *A = rnd((size_t)r * In, &rng, 0.2f);
    float *B = rnd((size_t)O * r, &rng, 0.2f), *dout = rnd(N * ldo, &rng, 1.0f);
    float *out = calloc(N * ldo, sizeof *out), *hA = malloc(N * r * sizeof *hA);
    float *scratch = malloc(N * In * sizeof *scratch), *dh = malloc(N * r * sizeof *dh);
    float *dx = calloc(N * ldx, sizeof *dx), *dA = calloc((size_t)r * In, sizeof *dA);
    float *dB = calloc((size_t)O * r, sizeof *dB);
    const float s = 2.0f / r;
    eg_lora_delta_forward(out, ldo, hA, x, ldx, A, B, N, In, O, r, s, p, 99, scratch);
    eg_lora_delta_backward(dx, ldx, dA, dB, dout, ldo, x, ldx, hA, A, B, N, In, O, r, s, p, 99,
                           scratch, dh);
    double *xd = malloc(N * In * sizeof *xd), *h = malloc(N * r * sizeof *h);
    double *g = malloc(N * r * sizeof *g);
    for (size_t t = 0; t < N; t++) {
        for (int c = 0; c < In; c++) {
            xd[t * In + c] = (double)x[t * ldx + c] * eg_gmoe_dropout(99, t * In + c, p);
        }
    }
    double e_out = 0, e_dx = 0, e_dA = 0, e_dB = 0;
    for (size_t t = 0; t < N; t++) {
        for (int j = 0; j < r; j++) {
            double a = 0, b = 0;
            for (int c = 0; c < In; c++) {
                a += xd[t * In + c] * A[(size_t)j * In + c];
            }
            for (int k = 0; k < O; k++) {
                b += (double)dout[t * ldo + k] * B[(size_t)k * r + j];
            }
            h[t * r + j] = a;
            g[t * r + j] = s * b;
        }
        for (int k = 0; k < O; k++) {
            double a = 0;
            for (int j = 0; j < r; j++) {
                a += h[t * r + j] * B[(size_t)k * r + j];
            }
            e_out = fmax(e_out, fabs(s * a - out[t * ldo + k]));
        }
        for (int c = 0; c < In; c++) {
            double a = 0;
            for (int j = 0; j < r; j++) {
                a += g[t * r + j] * A[(size_t)j * In + c];
            }
            a *= eg_gmoe_dropout(99, t * In + c, p);
            e_dx = fmax(e_dx, fabs(a - dx[t * ldx + c]));
        }
    }
    for (int j = 0; j < r; j++) {
        for (int c = 0; c < In; c++) {
            double a = 0;
            for (size_t t = 0; t < N; t++) {
                a += g[t * r + j] * xd[t * In + c];
            }
            e_dA = fmax(e_dA, fabs(a - dA[(size_t)j * In + c]));
        }
    }
    for (int k = 0; k < O; k++) {
        for (int j = 0; j < r; j++) {
            double a = 0;
            for (size_t t = 0; t < N; t++) {
                a += s * (double)dout[t * ldo + k] * h[t * r + j];
            }
            e_dB = fmax(e_dB, fabs(a - dB[(size_t)k * r + j]));
        }
    }
    CHECK(e_out < 1e-4 && e_dx < 1e-4 && e_dA < 2e-3 && e_dB < 2e-3,
          "lora_delta r=%d p=%g vs double: out %g dx %g dA %g dB %g", r, (double)p, e_out, e_dx,
          e_dA, e_dB);
    if (r <= 16) {
        /* the direct loops: the same bits with one thread */
        float *dx1 = calloc(N * ldx, sizeof *dx1), *dA1 = calloc((size_t)r * In, sizeof *dA1);
        float *dB1 = calloc((size_t)O * r, sizeof *dB1), *out1 = calloc(N * ldo, sizeof *out1);
        const int old = eg_get_num_threads();
        eg_set_num_threads(1);
        eg_lora_delta_forward(out1, ldo, hA, x, ldx, A, B, N, In, O, r, s, p, 99, scratch);
        eg_lora_delta_backward(dx1, ldx, dA1, dB1, dout, ldo, x, ldx, hA, A, B, N, In, O, r, s,
                               p, 99, scratch, dh);
        eg_set_num_threads(old);
        CHECK(memcmp(out, out1, N * ldo * sizeof(float)) == 0
              && memcmp(dx, dx1, N * ldx * sizeof(float)) == 0
              && memcmp(dA, dA1, (size_t)r * In * sizeof(float)) == 0
              && memcmp(dB, dB1, (size_t)O * r * sizeof(float)) == 0,
              "lora_delta r=%d: results depend on the thread count (%d vs 1)", r, old);
        free(dx1); free(dA1); free(dB1); free(out1);
    }
    free(x); free(A); free(B); free(dout); free(out); free(hA); free(scratch); free(dh);
    free(dx); free(dA); free(dB); free(xd); free(h); free(g);
}

typedef struct { const float *x; const int32_t *tg; size_t n; const eg_qmat *W; } ce_ctx;
static void ce_fwd(void *c, float *out)
{
    ce_ctx *k = c;
    double s;
    eg_err err;
    eg_lmhead_ce(&s, out, NULL, k->x, k->tg, k->n, k->W, 1.0f, &err);
}

static void test_lmhead_ce(void)
{
    uint64_t rng = 47;
    const size_t n = 5;
    const int V = 37, D = 32;
    float *x = rnd(n * D, &rng, 1.0f), *w = rnd((size_t)V * D, &rng, 0.5f);
    void *q = quant_q8_0(w, V, D);
    int32_t tg[5] = {0, 36, 5, 5, 17};
    eg_err err;
    for (int type = 0; type < 2; type++) {
        eg_qmat W;
        eg_qmat_init(&W, type ? EG_GGML_Q8_0 : EG_GGML_F32, V, D, type ? q : (void *)w, "w", &err);
        const float scale = 0.7f;
        float R[5], nll[5], *dx = malloc(n * D * sizeof *dx);
        for (size_t i = 0; i < n; i++) {
            R[i] = scale;
        }
        double s;
        CHECK(eg_lmhead_ce(&s, nll, dx, x, tg, n, &W, scale, &err) == EG_OK, "lmhead_ce");
        /* loss against a direct double computation */
        float *wd = malloc((size_t)V * D * sizeof *wd);
        eg_dequantize(W.type, W.data, wd, (size_t)V * D);
        double ref = 0.0;
        for (size_t i = 0; i < n; i++) {
            double lg[37], mx = -1e300, z = 0.0;
            for (int v = 0; v < V; v++) {
                lg[v] = 0.0;
                for (int d = 0; d < D; d++) {
                    lg[v] += (double)x[i * D + d] * wd[v * D + d];
                }
                mx = fmax(mx, lg[v]);
            }
            for (int v = 0; v < V; v++) {
                z += exp(lg[v] - mx);
            }
            ref += mx + log(z) - lg[tg[i]];
        }
        CHECK(fabs(ref - s) < 1e-4 * fabs(ref), "lmhead_ce loss %g vs %g", s, ref);
        ce_ctx k = {x, tg, n, &W};
        gc_var vars[] = {{"x", x, dx, n * D}};
        gradcheck(type ? "lmhead_ce(q8_0)" : "lmhead_ce", ce_fwd, &k, R, n, vars, 1, 1e-2f, 1e-2, 1e-4);
        free(dx); free(wd);
    }
    free(x); free(w); free(q);
}

/* ------------------------------------------------------------ whole model */

typedef struct {
    eg_llama_lora *t;
    const int32_t *ids, *tg;
    const int64_t *off;
    int n_seq;
} mdl_ctx;

static void mdl_fwd(void *c, float *out)
{
    mdl_ctx *k = c;
    double s;
    eg_err err;
    eg_llama_lora_step(k->t, k->ids, k->off, k->n_seq, k->tg, 1.0f, 0, 0, &s, NULL, &err);
    out[0] = (float)s;
}

/* A model with random weights (norms around 1; matrices f32 or Q8_0);
 * *keep holds the nw weight buffers the model reads in place. */
static eg_llama *random_model(const eg_llama_config *c, int quant, uint64_t *rng, void ***keep,
                              size_t *nw)
{
    eg_err err;
    eg_llama *m = NULL;
    CHECK(eg_llama_create(&m, c, &err) == EG_OK, "create: %s", err.msg);
    *nw = eg_llama_num_weights(m);
    *keep = calloc(*nw + 1, sizeof **keep);
    for (size_t i = 0; i < *nw; i++) {
        const char *name;
        int nd;
        int64_t sh[2];
        eg_llama_weight_info(m, i, &name, &nd, sh);
        size_t cnt = (size_t)sh[0] * (nd == 2 ? (size_t)sh[1] : 1);
        float *w = rnd(cnt, rng, nd == 2 ? 0.3f : 0.1f);
        if (nd == 1 && strstr(name, "norm")) {
            for (size_t j = 0; j < cnt; j++) {
                w[j] += 1.0f;
            }
        }
        (*keep)[i] = w;
        if (nd == 2 && quant) {
            (*keep)[i] = quant_q8_0(w, (int)sh[0], (int)sh[1]);
            free(w);
        }
        CHECK(eg_llama_set_weight(m, name, nd == 2 && quant ? EG_GGML_Q8_0 : EG_GGML_F32, nd, sh,
                                  (*keep)[i], &err) == EG_OK, "set %s: %s", name, err.msg);
    }
    return m;
}

static void free_model(eg_llama *m, void **keep, size_t nw)
{
    eg_llama_free(m);
    for (size_t i = 0; i < nw; i++) {
        free(keep[i]);
    }
    free(keep);
}

static void test_model(int untied, int quant, int bias)
{
    uint64_t rng = 53 + untied + 2 * quant;
    eg_err err;
    eg_llama_config c = {.vocab_size = 41, .hidden_size = 32, .num_layers = 2, .num_heads = 4,
                         .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                         .max_position = 32, .rms_norm_eps = 1e-5f, .rope_theta = 1e4,
                         .rope_mode = bias ? EG_ROPE_NEOX : EG_ROPE_NORM, .qkv_bias = bias};
    size_t nw;
    void **keep;
    eg_llama *m = random_model(&c, quant, &rng, &keep, &nw);
    float *head = rnd((size_t)41 * 32, &rng, 0.3f);
    eg_lora_config lc = {.rank = {2, 1, 3, 2, 2, 1, 2}, .alpha = {4, 2, 3, 1, 4, 5, 2},
                         .dropout = 0.0f};
    eg_llama_lora *t = NULL;
    CHECK(eg_llama_lora_create(&t, m, &lc, 9, &err) == EG_OK, "lora create: %s", err.msg);
    if (untied) {
        CHECK(eg_llama_lora_set_head(t, EG_GGML_F32, 41, 32, head, &err) == EG_OK, "head");
    }
    int64_t bad_shape = 40;
    CHECK(eg_llama_lora_set_head(t, EG_GGML_F32, bad_shape, 32, head, &err) == EG_EINVAL,
          "bad head shape accepted");
    /* B is zero at init: give it values so every path carries gradient */
    size_t np = eg_llama_lora_num_params(t);
    float *P = eg_llama_lora_params(t), *G = eg_llama_lora_grads(t);
    for (int l = 0; l < 2; l++) {
        for (int mod = 0; mod < EG_LORA_NMOD; mod++) {
            size_t oa, ob;
            int in, out, r;
            eg_llama_lora_slot(t, l, mod, &oa, &ob, &in, &out, &r);
            CHECK(P[ob] == 0.0f && fabsf(P[oa]) <= 1.0f / sqrtf((float)in), "lora init");
            for (size_t j = 0; j < (size_t)out * r; j++) {
                P[ob + j] = eg_rng_normal(&rng) * 0.2f;
            }
        }
    }
    const int32_t ids[12] = {1, 5, 7, 40, 3, 3, 9, 0, 2, 11, 12, 13};
    const int64_t off[4] = {0, 5, 6, 12};
    const int32_t tg[12] = {-100, 7, 40, 3, -100, -100, -100, 2, 11, -100, 13, 8};
    memset(G, 0, np * sizeof *G);
    double s;
    CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s, NULL, &err) == EG_OK, "step: %s",
          err.msg);
    CHECK(isfinite(s) && s > 0, "loss %g", s);
    mdl_ctx k = {t, ids, tg, off, 3};
    float R[1] = {1.0f};
    gc_var vars[] = {{"lora", P, G, np}};
    char name[64];
    snprintf(name, sizeof name, "llama lora (untied %d, q8_0 %d, bias %d)", untied, quant, bias);
    gradcheck(name, mdl_fwd, &k, R, 1, vars, 1, 1e-2f, 2e-2, 2e-4);
    /* activation recomputation: the same loss and gradients, bit for bit */
    {
        float *G0 = malloc(np * sizeof *G0);
        memset(G, 0, np * sizeof *G);
        double s0, s1;
        eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s0, NULL, &err);
        memcpy(G0, G, np * sizeof *G);
        eg_llama_lora_set_recompute(t, 1);
        memset(G, 0, np * sizeof *G);
        CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s1, NULL, &err) == EG_OK,
              "recompute step: %s", err.msg);
        eg_llama_lora_set_recompute(t, 0);
        CHECK(s0 == s1 && memcmp(G0, G, np * sizeof *G) == 0, "%s: recompute changed the result",
              name);
        double prof[EG_LORA_PROF_N];
        eg_llama_lora_profile(t, prof, 1);
        CHECK(prof[EG_LORA_PROF_FWD_BASE] > 0 && prof[EG_LORA_PROF_BWD_BASE] > 0, "profile");
        eg_llama_lora_profile(t, prof, 0);
        CHECK(prof[EG_LORA_PROF_FWD_BASE] == 0.0, "profile reset");
        free(G0);
    }
    /* bad inputs */
    int32_t bad_tg[12];
    memcpy(bad_tg, tg, sizeof bad_tg);
    bad_tg[3] = 41;
    CHECK(eg_llama_lora_step(t, ids, off, 3, bad_tg, 1.0f, 1, 0, &s, NULL, &err) == EG_EINVAL,
          "target outside vocab accepted");
    int32_t bad_ids[12];
    memcpy(bad_ids, ids, sizeof bad_ids);
    bad_ids[0] = 99;
    CHECK(eg_llama_lora_step(t, bad_ids, off, 3, tg, 1.0f, 1, 0, &s, NULL, &err) == EG_EINVAL,
          "id outside vocab accepted");
    eg_llama_lora_free(t);
    free_model(m, keep, nw);
    free(head);
}

/* ---- MoE-LoRA FFN (GMoE / MixLoRA) inside the decoder */

typedef struct {
    eg_llama_lora *t;
    const int32_t *ids, *tg;
    const int64_t *off;
    int n_seq;
    float coef[EG_AUX_N];
    double base;  /* subtracted, so that the float result keeps the difference's digits */
} moe_ctx;

/* the step's whole loss: nll + sum over layers of coef * aux */
static void moe_fwd(void *c, float *out)
{
    moe_ctx *k = c;
    double s, aux[2 * EG_AUX_N];
    eg_err err;
    eg_llama_lora_step(k->t, k->ids, k->off, k->n_seq, k->tg, 1.0f, 0, 0, &s, NULL, &err);
    eg_llama_moe_stats(k->t, NULL, aux, NULL);
    for (int i = 0; i < 2 * EG_AUX_N; i++) {
        s += k->coef[i % EG_AUX_N] * aux[i];
    }
    out[0] = (float)(s - k->base);
}

/* balance: the load-balance weight (the graph router adds that loss only when
 * it is nonzero, engine_py's option) */
static void test_model_moe(int router, int quant, int normal_weights, double decay, int per_expert,
                           float balance)
{
    uint64_t rng = 77 + (uint64_t)router;
    eg_err err;
    eg_llama_config c = {.vocab_size = 41, .hidden_size = 32, .num_layers = 2, .num_heads = 4,
                         .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                         .max_position = 32, .rms_norm_eps = 1e-5f, .rope_theta = 1e4,
                         .rope_mode = EG_ROPE_NORM};
    size_t nw;
    void **keep;
    eg_llama *m = random_model(&c, quant, &rng, &keep, &nw);
    eg_lora_config lc = {.rank = {2, 1, 0, 2, 0, 0, 0}, .alpha = {4, 2, 0, 1, 0, 0, 0}};
    eg_llama_lora *t = NULL;
    CHECK(eg_llama_lora_create(&t, m, &lc, 9, &err) == EG_OK, "lora create: %s", err.msg);
    const int N = 4, K = router == EG_ROUTER_SWITCH ? 1 : 2;
    eg_llama_moe_config mc = {.experts = N, .top_k = K, .rank = 2, .alpha = 4.0f,
                              .router = router, .gcn_dim = 8, .gcn_layers = 2,
                              .coef = {0.05f, 0.8f, balance, 0.01f}, .running_decay = decay,
                              .normal_weights = normal_weights,
                              .per_expert_readout = per_expert};
    /* configuration errors first */
    eg_llama_moe_config bad = mc;
    bad.top_k = N + 1;
    CHECK(eg_llama_lora_set_moe(t, &bad, &err) == EG_EINVAL, "top_k > experts accepted");
    bad = mc;
    bad.rank = 65;
    CHECK(eg_llama_lora_set_moe(t, &bad, &err) == EG_EINVAL, "rank 65 accepted");
    bad = mc;
    bad.coef[1] = NAN;
    CHECK(eg_llama_lora_set_moe(t, &bad, &err) == EG_EINVAL, "NaN coefficient accepted");
    CHECK(eg_llama_lora_set_moe(t, &mc, &err) == EG_OK, "set_moe: %s", err.msg);
    CHECK(eg_llama_lora_set_moe(t, &mc, &err) == EG_ESTATE, "set_moe twice accepted");
    {
        eg_lora_config lf = lc;
        lf.rank[EG_LORA_UP] = 1;
        eg_llama_lora *t2 = NULL;
        CHECK(eg_llama_lora_create(&t2, m, &lf, 9, &err) == EG_OK, "create");
        CHECK(eg_llama_lora_set_moe(t2, &mc, &err) == EG_EINVAL, "moe over FFN LoRA accepted");
        eg_llama_lora_free(t2);
    }
    /* every parameter random (B too, so every path carries gradient) */
    size_t np = eg_llama_lora_num_params(t);
    float *P = eg_llama_lora_params(t), *G = eg_llama_lora_grads(t);
    for (size_t j = 0; j < np; j++) {
        P[j] = eg_rng_normal(&rng) * 0.3f;
    }
    for (int l = 0; l < 2; l++) {
        size_t off, size;
        eg_llama_moe_slot(t, l, EG_MOE_LAMBDA, &off, &size);
        if (size) {
            P[off] = 1.4f;   /* inside the clamp [1, 2] */
        }
        eg_llama_moe_slot(t, l, EG_MOE_SIGMA, &off, &size);
        if (size) {
            P[off] = 1.7f;
        }
    }
    float *feat, *adj;
    double *run;
    eg_llama_moe_buffers(t, &feat, &adj, &run);
    for (int i = 0; i < 2 * N * 32; i++) {
        feat[i] = eg_rng_normal(&rng) * 0.5f;
    }
    /* a fixed expert graph (0-1, 1-2, 2-3, 3-0 ring + token to all), normalised */
    for (int l = 0; l < 2; l++) {
        float a[5][5] = {{0}};
        double deg[5] = {0};
        for (int i = 0; i < 5; i++) {
            for (int j = 0; j < 5; j++) {
                a[i][j] = (i == j || i == 4 || j == 4 || (i - j + 4) % 4 == 1 ||
                           (j - i + 4) % 4 == 1) ? 1.0f : 0.0f;
                deg[i] += a[i][j];
            }
        }
        for (int i = 0; i < 5; i++) {
            for (int j = 0; j < 5; j++) {
                adj[l * 25 + i * 5 + j] = (float)(a[i][j] / sqrt(deg[i] * deg[j]));
            }
        }
    }
    const int32_t ids[12] = {1, 5, 7, 40, 3, 3, 9, 0, 2, 11, 12, 13};
    const int64_t off[4] = {0, 5, 6, 12};
    const int32_t tg[12] = {-100, 7, 40, 3, -100, -100, -100, 2, 11, -100, 13, 8};
    memset(G, 0, np * sizeof *G);
    double s;
    CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s, NULL, &err) == EG_OK, "step: %s",
          err.msg);
    CHECK(isfinite(s) && s > 0, "loss %g", s);
    int64_t counts[8];
    double aux[8], ent[2];
    eg_llama_moe_stats(t, counts, aux, ent);
    for (int l = 0; l < 2; l++) {
        int64_t tot = 0;
        for (int e = 0; e < N; e++) {
            tot += counts[l * N + e];
        }
        CHECK(tot == 12 * K, "layer %d routed %lld slots, not %d", l, (long long)tot, 12 * K);
        CHECK(ent[l] > 0.0 && ent[l] <= log((double)N) + 1e-9, "entropy %g", ent[l]);
    }
    CHECK(router == EG_ROUTER_GRAPH ? aux[EG_AUX_POISSON] > 0 && aux[EG_AUX_NORMAL] > 0
                                    : aux[EG_AUX_BALANCE] > 0, "aux losses %g %g %g",
          aux[0], aux[1], aux[2]);
    CHECK(balance != 0.0f ? aux[EG_AUX_BALANCE] > 0 && aux[EG_AUX_N + EG_AUX_BALANCE] > 0
                          : aux[EG_AUX_BALANCE] == 0 && aux[EG_AUX_N + EG_AUX_BALANCE] == 0,
          "balance loss %g with weight %g", aux[EG_AUX_BALANCE], (double)balance);
    if (router == EG_ROUTER_GRAPH) {
        /* the training step advanced the running counts by k * the batch's
         * renormalised weights (they sum to k * tokens) or top-k probabilities;
         * a second step adds to decay * the first's. The gradient check runs
         * forward passes, which must see the counts the analytic pass saw. */
        const float *pr;
        const int32_t *ix;
        size_t nt;
        eg_llama_moe_routes(t, 0, &pr, &ix, &nt);
        double want = 0.0;
        for (size_t i = 0; i < nt * (size_t)K; i++) {
            want += pr[(i / (size_t)K) * (size_t)N + (size_t)ix[i]];
        }
        want = K * (normal_weights ? (double)nt : want);   /* the weights sum to 1 per token */
        double sum = 0.0;
        for (int e = 0; e < N; e++) {
            sum += run[e];
        }
        CHECK(nt == 12 && fabs(sum - want) < 1e-3, "running counts sum %g, want %g", sum, want);
        memset(G, 0, np * sizeof *G);
        CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s, NULL, &err) == EG_OK, "step");
        sum = 0.0;
        for (int e = 0; e < N; e++) {
            sum += run[e];
        }
        CHECK(fabs(sum - (1.0 + decay) * want) < 1e-3, "running after 2 steps %g, want %g", sum,
              (1.0 + decay) * want);
        memset(run, 0, 2 * (size_t)N * sizeof *run);
        memset(G, 0, np * sizeof *G);
        CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s, NULL, &err) == EG_OK, "step");
        memset(run, 0, 2 * (size_t)N * sizeof *run);
    }
    moe_ctx k = {t, ids, tg, off, 3, {0}, 0.0};
    memcpy(k.coef, mc.coef, sizeof k.coef);
    float R[1] = {1.0f};
    moe_fwd(&k, R);
    k.base = R[0];
    R[0] = 1.0f;
    gc_var vars[] = {{"params", P, G, np}};
    char name[96];
    snprintf(name, sizeof name, "llama moe (router %d, q8_0 %d, weights %d, per-expert %d, "
             "balance %g)", router, quant, normal_weights, per_expert, (double)balance);
    gradcheck(name, moe_fwd, &k, R, 1, vars, 1, 1e-2f, 2e-2, 2e-4);
    /* recomputation: the same loss and gradients, bit for bit */
    {
        float *G0 = malloc(np * sizeof *G0);
        double s0, s1;
        memset(G, 0, np * sizeof *G);
        memset(run, 0, 2 * (size_t)N * sizeof *run);
        eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s0, NULL, &err);
        memcpy(G0, G, np * sizeof *G);
        eg_llama_lora_set_recompute(t, 1);
        memset(G, 0, np * sizeof *G);
        memset(run, 0, 2 * (size_t)N * sizeof *run);
        CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 1, 0, &s1, NULL, &err) == EG_OK,
              "recompute step: %s", err.msg);
        eg_llama_lora_set_recompute(t, 0);
        CHECK(s0 == s1 && memcmp(G0, G, np * sizeof *G) == 0, "%s: recompute changed the result",
              name);
        free(G0);
    }
    eg_llama_lora_free(t);
    free_model(m, keep, nw);
}


/* eg_llama_attach_moe: the encoder's layer-by-layer forward (eg_llama_run_layers)
 * through the experts equals the trainer's forward-only pass: the LM-head
 * cross-entropy of its last state is the nll of a forward-only step, to the
 * bit (the same products in the same order; no attention adapters), and
 * running one layer at a time (live early exit) gives the same bits. Bad
 * attachments are refused. */
static void test_moe_encoder_hook(int router, int quant, int prec)
{
    uint64_t rng = 991 + (uint64_t)router;
    eg_err err;
    eg_llama_config c = {.vocab_size = 41, .hidden_size = 32, .num_layers = 2, .num_heads = 4,
                         .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                         .max_position = 32, .rms_norm_eps = 1e-5f, .rope_theta = 1e4,
                         .rope_mode = EG_ROPE_NORM, .precision = prec};
    size_t nw, nw2;
    void **keep, **keep2;
    eg_llama *m = random_model(&c, quant, &rng, &keep, &nw);
    eg_llama *m2 = random_model(&c, quant, &rng, &keep2, &nw2);
    eg_lora_config lc;
    memset(&lc, 0, sizeof lc);
    eg_llama_lora *t = NULL, *plain = NULL;
    CHECK(eg_llama_lora_create(&t, m, &lc, 5, &err) == EG_OK, "lora create: %s", err.msg);
    CHECK(eg_llama_lora_create(&plain, m, &lc, 5, &err) == EG_OK, "lora create: %s", err.msg);
    CHECK(eg_llama_attach_moe(m, plain, &err) == EG_EINVAL, "a trainer without experts attached");
    const int N = 4, K = router == EG_ROUTER_SWITCH ? 1 : 2;
    eg_llama_moe_config mc = {.experts = N, .top_k = K, .rank = 2, .alpha = 4.0f,
                              .router = router, .gcn_dim = 8, .gcn_layers = 2,
                              .running_decay = 1.0};
    CHECK(eg_llama_lora_set_moe(t, &mc, &err) == EG_OK, "set_moe: %s", err.msg);
    size_t np = eg_llama_lora_num_params(t);
    float *P = eg_llama_lora_params(t);
    for (size_t j = 0; j < np; j++) {
        P[j] = eg_rng_normal(&rng) * 0.3f;
    }
    float *feat, *adj;
    double *run;
    eg_llama_moe_buffers(t, &feat, &adj, &run);
    for (int i = 0; i < 2 * N * 32; i++) {
        feat[i] = eg_rng_normal(&rng) * 0.5f;
    }
    for (int i = 0; i < 2 * (N + 1) * (N + 1); i++) {
        adj[i] = 0.2f;
    }
    const int32_t ids[12] = {1, 5, 7, 40, 3, 3, 9, 0, 2, 11, 12, 13};
    const int64_t off[4] = {0, 5, 6, 12};
    const int32_t tg[12] = {4, 7, 40, 3, 1, 0, 9, 2, 11, 6, 13, 8};
    double want;
    float want_tok[12];
    CHECK(eg_llama_lora_step(t, ids, off, 3, tg, 1.0f, 0, 0, &want, want_tok, &err) == EG_OK,
          "step: %s", err.msg);
    CHECK(eg_llama_attach_moe(m2, t, &err) == EG_EINVAL, "a trainer of another model attached");
    float keep_p = P[np - 1];
    P[np - 1] = NAN;
    CHECK(eg_llama_attach_moe(m, t, &err) == EG_EINVAL, "a NaN parameter attached");
    P[np - 1] = keep_p;
    eg_bert_state s0;
    eg_bert_state_init(&s0);
    CHECK(eg_llama_embed(m, &s0, ids, off, 3, &err) == EG_OK, "embed");
    CHECK(eg_llama_run_layers(m, &s0, 2, &err) == EG_OK, "run: %s", err.msg);
    CHECK(eg_llama_attach_moe(m, t, &err) == EG_OK, "attach: %s", err.msg);
    CHECK(eg_llama_has_ffn_hook(m), "no hook");
    CHECK(eg_llama_attach_moe(m, t, &err) == EG_ESTATE, "attached twice");
    /* the copy is the model's: the trainer's values change nothing now */
    P[0] += 1.0f;
    eg_bert_state s, s1;
    eg_bert_state_init(&s);
    eg_bert_state_init(&s1);
    CHECK(eg_llama_embed(m, &s, ids, off, 3, &err) == EG_OK, "embed");
    CHECK(eg_llama_run_layers(m, &s, 2, &err) == EG_OK, "run: %s", err.msg);
    CHECK(eg_llama_embed(m, &s1, ids, off, 3, &err) == EG_OK, "embed");
    CHECK(eg_llama_run_layers(m, &s1, 1, &err) == EG_OK, "run 1: %s", err.msg);
    CHECK(eg_llama_run_layers(m, &s1, 2, &err) == EG_OK, "run 2: %s", err.msg);
    CHECK(memcmp(s.h, s1.h, 12 * 32 * sizeof(float)) == 0, "layer at a time differs");
    double diff = 0.0;
    for (int i = 0; i < 12 * 32; i++) {
        diff = fmax(diff, fabs((double)s.h[i] - s0.h[i]));
    }
    CHECK(diff > 1e-2, "the experts change the last state by only %g", diff);
    double got;
    float got_tok[12];
    CHECK(eg_lmhead_ce(&got, got_tok, NULL, s.h, tg, 12, eg_llama_embedding(m), 1.0f, &err)
          == EG_OK, "ce");
    CHECK(got == want, "encoder forward nll %.17g, trainer %.17g", got, want);
    CHECK(memcmp(got_tok, want_tok, sizeof got_tok) == 0, "per-token nll differs");
    eg_bert_state_free(&s);
    eg_bert_state_free(&s1);
    eg_bert_state_free(&s0);
    eg_llama_lora_free(t);
    eg_llama_lora_free(plain);
    free_model(m, keep, nw);   /* frees the hook's copy */
    free_model(m2, keep2, nw2);
}


/* eg_llama_lora_set_poll: the poll runs before every layer of the forward
 * and backward passes and before the loss; a nonzero answer stops the step
 * with EG_EINTR there, leaving the parameters and the MoE running counts as
 * they were before the step; a step that is never stopped is unchanged by
 * polling (same nll and gradients, bit for bit). */
typedef struct {
    int calls, stop_at;
} poll_count;

static int count_poll(void *ctx)
{
    poll_count *p = ctx;
    return ++p->calls == p->stop_at;
}

static void test_step_poll(void)
{
    uint64_t rng = 4242;
    eg_err err;
    eg_llama_config c = {.vocab_size = 41, .hidden_size = 32, .num_layers = 3, .num_heads = 4,
                         .num_kv_heads = 2, .head_dim = 8, .intermediate_size = 64,
                         .max_position = 32, .rms_norm_eps = 1e-5f, .rope_theta = 1e4,
                         .rope_mode = EG_ROPE_NORM};
    size_t nw;
    void **keep;
    eg_llama *m = random_model(&c, 0, &rng, &keep, &nw);
    eg_lora_config lc = {.rank = {2, 0, 2, 0, 0, 0, 0}, .alpha = {4, 0, 4, 0, 0, 0, 0}};
    eg_llama_lora *t = NULL;
    CHECK(eg_llama_lora_create(&t, m, &lc, 3, &err) == EG_OK, "create: %s", err.msg);
    eg_llama_moe_config mc = {.experts = 4, .top_k = 2, .rank = 2, .alpha = 4.0f,
                              .router = EG_ROUTER_GRAPH, .gcn_dim = 8, .gcn_layers = 2,
                              .coef = {0.05f, 0.8f, 0, 0}, .running_decay = 1.0};
    CHECK(eg_llama_lora_set_moe(t, &mc, &err) == EG_OK, "set_moe: %s", err.msg);
    const size_t np = eg_llama_lora_num_params(t);
    float *P = eg_llama_lora_params(t), *G = eg_llama_lora_grads(t);
    for (size_t j = 0; j < np; j++) {
        P[j] = eg_rng_normal(&rng) * 0.3f;
    }
    float *feat, *adj;
    double *run;
    eg_llama_moe_buffers(t, &feat, &adj, &run);
    for (int i = 0; i < 3 * 4 * 32; i++) {
        feat[i] = eg_rng_normal(&rng) * 0.5f;
    }
    for (int i = 0; i < 3 * 25; i++) {
        adj[i] = 0.2f;
    }
    for (int i = 0; i < 3 * 4; i++) {
        run[i] = 0.5 * i;
    }
    const int32_t ids[8] = {1, 5, 7, 40, 3, 3, 9, 0};
    const int64_t off[3] = {0, 5, 8};
    const int32_t tg[8] = {-100, 7, 40, 3, -100, 9, 0, 2};
    float *P0 = malloc(np * sizeof *P0), *G1 = malloc(np * sizeof *G1);
    double run0[12], run1[12];
    memcpy(P0, P, np * sizeof *P0);
    memcpy(run0, run, sizeof run0);
    /* never stopped: 3 forward layers + loss + 3 backward layers = 7 polls */
    poll_count pc = {0, 0};
    eg_llama_lora_set_poll(t, count_poll, &pc);
    double s1, s2;
    memset(G, 0, np * sizeof *G);
    CHECK(eg_llama_lora_step(t, ids, off, 2, tg, 1.0f, 1, 7, &s1, NULL, &err) == EG_OK,
          "step: %s", err.msg);
    CHECK(pc.calls == 7, "%d polls in a step of 3 layers", pc.calls);
    memcpy(G1, G, np * sizeof *G1);
    memcpy(run1, run, sizeof run1);
    CHECK(memcmp(run1, run0, sizeof run0) != 0, "the step did not move the running counts");
    /* stopped at each poll in turn */
    for (int k = 1; k <= 7; k++) {
        memcpy(run, run0, sizeof run0);
        pc = (poll_count){0, k};
        double s;
        CHECK(eg_llama_lora_step(t, ids, off, 2, tg, 1.0f, 1, 7, &s, NULL, &err) == EG_EINTR,
              "poll %d: not interrupted", k);
        CHECK(pc.calls == k, "poll %d: %d calls", k, pc.calls);
        CHECK(memcmp(run, run0, sizeof run0) == 0, "poll %d: running counts moved", k);
        CHECK(memcmp(P, P0, np * sizeof *P) == 0, "poll %d: parameters changed", k);
    }
    /* off again: the same step, the same bits */
    eg_llama_lora_set_poll(t, NULL, NULL);
    memcpy(run, run0, sizeof run0);
    memset(G, 0, np * sizeof *G);
    CHECK(eg_llama_lora_step(t, ids, off, 2, tg, 1.0f, 1, 7, &s2, NULL, &err) == EG_OK, "step");
    CHECK(s1 == s2 && memcmp(G, G1, np * sizeof *G) == 0 && memcmp(run, run1, sizeof run1) == 0,
          "polling changed the step");
    free(P0);
    free(G1);
    eg_llama_lora_free(t);
    free_model(m, keep, nw);
}

int main(void)
{
    test_qmatmul_t();
    test_lora_delta(3);    /* the direct small-rank loops */
    test_lora_delta(20);   /* the BLAS path */
    test_lora_delta_big(2, 0.0f);
    test_lora_delta_big(4, 0.1f);
    test_lora_delta_big(17, 0.1f);
    test_lmhead_ce();
    test_model(0, 0, 0);
    test_model(1, 0, 1);
    test_model(0, 1, 1);
    test_model_moe(EG_ROUTER_LINEAR, 0, 0, 1.0, 0, 0.1f);
    test_model_moe(EG_ROUTER_SWITCH, 1, 0, 1.0, 0, 0.1f);
    test_model_moe(EG_ROUTER_GRAPH, 0, 0, 1.0, 0, 0.0f);
    test_model_moe(EG_ROUTER_GRAPH, 1, 1, 0.5, 0, 0.0f);
    test_model_moe(EG_ROUTER_GRAPH, 0, 0, 0.5, 1, 0.0f);
    test_model_moe(EG_ROUTER_GRAPH, 0, 0, 1.0, 0, 0.1f);   /* + the load balance */
    test_model_moe(EG_ROUTER_GRAPH, 1, 0, 0.5, 1, 0.1f);
    test_moe_encoder_hook(EG_ROUTER_GRAPH, 0, EG_PREC_F32);
    test_moe_encoder_hook(EG_ROUTER_LINEAR, 1, EG_PREC_F32);
    test_moe_encoder_hook(EG_ROUTER_SWITCH, 0, EG_PREC_BF16);
    test_moe_encoder_hook(EG_ROUTER_GRAPH, 1, EG_PREC_BF16);
    test_step_poll();
    return eg_test_report("test_llama_train");
}
