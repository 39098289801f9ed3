/*
 * test_decoder_ops.c — the ops of Llama-family blocks (RMSNorm, RoPE in both
 * layouts, SwiGLU, causal grouped-query attention on packed sequences) and
 * eg_llama's model-level checks, against naive double-precision references;
 * every backward against central differences (eg_gradcheck.h).
 */
#include "eg.h"
#include "eg_llama.h"
#include "eg_ops.h"
#include "eg_test.h"
#include "eg_gradcheck.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void fill_normal(float *x, size_t n, uint64_t *rng, float scale)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = eg_rng_normal(rng) * scale;
    }
}

static void test_rmsnorm(void)
{
    uint64_t rng = 3;
    const int Cs[3] = {1, 37, 576};
    for (int ci = 0; ci < 3; ci++) {
        const int C = Cs[ci], N = 5;
        float *x = malloc((size_t)N * C * sizeof *x), *w = malloc((size_t)C * sizeof *w);
        float *y = malloc((size_t)N * C * sizeof *y);
        fill_normal(x, (size_t)N * C, &rng, 3.0f);
        fill_normal(w, (size_t)C, &rng, 1.0f);
        eg_rmsnorm_forward(y, x, w, (size_t)N, C, 1e-5f);
        double worst = 0.0;
        for (int r = 0; r < N; r++) {
            double ss = 0.0;
            for (int c = 0; c < C; c++) {
                ss += (double)x[r * C + c] * x[r * C + c];
            }
            double rstd = 1.0 / sqrt(ss / C + 1e-5);
            for (int c = 0; c < C; c++) {
                double ref = (double)w[c] * x[r * C + c] * rstd;
                double e = fabs(ref - y[r * C + c]) / (fabs(ref) + 1e-6);
                worst = e > worst ? e : worst;
            }
        }
        CHECK(worst < 1e-6, "rmsnorm C=%d relative error %g", C, worst);
        /* in place gives the same bits */
        float *z = malloc((size_t)N * C * sizeof *z);
        memcpy(z, x, (size_t)N * C * sizeof *z);
        eg_rmsnorm_forward(z, z, w, (size_t)N, C, 1e-5f);
        CHECK(memcmp(z, y, (size_t)N * C * sizeof *z) == 0, "rmsnorm in place differs (C=%d)", C);
        free(x);
        free(w);
        free(y);
        free(z);
    }
}

/* RoPE: rotating pairs (2i, 2i+1) of a vector equals rotating pairs
 * (i, i + half) of the same vector with its dims permuted (the GGUF
 * permutation), and both match the rotation angle p / base^(2i/d). */
static void test_rope(void)
{
    uint64_t rng = 5;
    const int H = 3, dh = 8, half = dh / 2, N = 4, npos = 40;
    const int32_t pos[4] = {0, 1, 17, 39};
    float *cs = malloc((size_t)npos * half * sizeof *cs), *sn = malloc((size_t)npos * half * sizeof *sn);
    eg_rope_table(cs, sn, npos, dh, 10000.0);
    float x[4 * 3 * 8], a[4 * 3 * 8], b[4 * 3 * 8];
    fill_normal(x, sizeof x / sizeof *x, &rng, 1.0f);
    /* neox on x */
    memcpy(a, x, sizeof x);
    eg_rope_forward(a, (size_t)H * dh, (size_t)N, pos, H, dh, cs, sn, EG_ROPE_NEOX);
    /* norm on the interleaved copy: b[2i] = x[i], b[2i+1] = x[i+half] */
    for (int t = 0; t < N; t++) {
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < half; i++) {
                b[(t * H + h) * dh + 2 * i] = x[(t * H + h) * dh + i];
                b[(t * H + h) * dh + 2 * i + 1] = x[(t * H + h) * dh + i + half];
            }
        }
    }
    eg_rope_forward(b, (size_t)H * dh, (size_t)N, pos, H, dh, cs, sn, EG_ROPE_NORM);
    double worst = 0.0, worst_ref = 0.0;
    for (int t = 0; t < N; t++) {
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < half; i++) {
                const float *xv = x + (t * H + h) * dh;
                double ang = pos[t] / pow(10000.0, 2.0 * i / dh);
                double r0 = xv[i] * cos(ang) - xv[i + half] * sin(ang);
                double r1 = xv[i + half] * cos(ang) + xv[i] * sin(ang);
                const float *av = a + (t * H + h) * dh, *bv = b + (t * H + h) * dh;
                worst = fmax(worst, fabs(av[i] - bv[2 * i]));
                worst = fmax(worst, fabs(av[i + half] - bv[2 * i + 1]));
                worst_ref = fmax(worst_ref, fmax(fabs(av[i] - r0), fabs(av[i + half] - r1)));
            }
        }
    }
    CHECK(worst == 0.0, "rope norm vs neox on permuted dims differ by %g", worst);
    CHECK(worst_ref < 2e-5, "rope vs the exact rotation: error %g", worst_ref);
    /* position 0 is the identity */
    CHECK(a[0] == x[0] && a[half] == x[half], "rope at position 0 changed the vector");
    free(cs);
    free(sn);
}

static void test_swiglu(void)
{
    uint64_t rng = 9;
    const int N = 3, F = 50;
    float g[3 * 50], u[3 * 50], y[3 * 50];
    fill_normal(g, (size_t)N * F, &rng, 4.0f);
    fill_normal(u, (size_t)N * F, &rng, 1.0f);
    g[0] = -100.0f;
    g[1] = 100.0f;
    eg_swiglu_forward(y, (size_t)F, g, u, (size_t)F, (size_t)N, F);
    double worst = 0.0;
    for (int i = 0; i < N * F; i++) {
        double ref = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        worst = fmax(worst, fabs(ref - y[i]) / (fabs(ref) + 1e-3));
    }
    CHECK(worst < 1e-6, "swiglu relative error %g", worst);
    CHECK(isfinite(y[0]) && isfinite(y[1]), "swiglu not finite at +-100");
}

/* naive causal GQA attention in double; q (n, H*dh), k/v (n, Hkv*dh) */
static void ref_attention(double *out, const float *q, const float *k, const float *v,
                          const int64_t *off, int n_seq, int H, int Hkv, int dh, int causal)
{
    for (int s = 0; s < n_seq; s++) {
        const int64_t lo = off[s];
        const int L = (int)(off[s + 1] - lo);
        double *p = malloc((size_t)L * sizeof *p);
        for (int h = 0; h < H; h++) {
            const int kh = h / (H / Hkv);
            for (int i = 0; i < L; i++) {
                const int seen = causal ? i + 1 : L;
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < seen; j++) {
                    double acc = 0.0;
                    for (int d = 0; d < dh; d++) {
                        acc += (double)q[(lo + i) * H * dh + h * dh + d]
                               * k[(lo + j) * Hkv * dh + kh * dh + d];
                    }
                    p[j] = acc / sqrt((double)dh);
                    mx = fmax(mx, p[j]);
                }
                for (int j = 0; j < seen; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int d = 0; d < dh; d++) {
                    double acc = 0.0;
                    for (int j = 0; j < seen; j++) {
                        acc += p[j] / sum * v[(lo + j) * Hkv * dh + kh * dh + d];
                    }
                    out[(lo + i) * H * dh + h * dh + d] = acc;
                }
            }
        }
        free(p);
    }
}

static void test_attention_causal_gqa(void)
{
    uint64_t rng = 13;
    const int lens[4] = {1, 5, 33, 18};
    int64_t off[5] = {0};
    for (int i = 0; i < 4; i++) {
        off[i + 1] = off[i] + lens[i];
    }
    const size_t n = (size_t)off[4];
    const int shapes[3][3] = {{4, 2, 8}, {9, 3, 64}, {2, 2, 20}}; /* H, Hkv, dh */
    for (int si = 0; si < 3; si++) {
        const int H = shapes[si][0], Hkv = shapes[si][1], dh = shapes[si][2];
        for (int causal = 0; causal <= 1; causal++) {
            float *q = malloc(n * H * dh * sizeof *q), *k = malloc(n * Hkv * dh * sizeof *k);
            float *v = malloc(n * Hkv * dh * sizeof *v), *o = malloc(n * H * dh * sizeof *o);
            double *ref = malloc(n * H * dh * sizeof *ref);
            fill_normal(q, n * H * dh, &rng, 1.0f);
            fill_normal(k, n * Hkv * dh, &rng, 1.0f);
            fill_normal(v, n * Hkv * dh, &rng, 1.0f);
            const eg_attention_shape sh = {H, Hkv, dh, causal, (size_t)H * dh, (size_t)Hkv * dh,
                                           (size_t)H * dh};
            int nth = eg_omp_max_threads();
            float *scratch = malloc((size_t)nth * eg_attention_scratch(33, dh) * sizeof(float));
            eg_attention_forward(o, q, k, v, NULL, NULL, NULL, off, 4, &sh, scratch);
            ref_attention(ref, q, k, v, off, 4, H, Hkv, dh, causal);
            double worst = 0.0;
            for (size_t i = 0; i < n * H * dh; i++) {
                worst = fmax(worst, fabs(o[i] - ref[i]));
            }
            CHECK(worst < 2e-5, "attention H=%d Hkv=%d dh=%d causal=%d error %g", H, Hkv, dh,
                  causal, worst);
            /* a one-token text attends to itself only: its output is its value */
            if (causal) {
                double e = 0.0;
                for (int h = 0; h < H; h++) {
                    for (int d = 0; d < dh; d++) {
                        e = fmax(e, fabs(o[h * dh + d] - v[(h / (H / Hkv)) * dh + d]));
                    }
                }
                CHECK(e < 1e-6, "one-token causal attention is not its value (%g)", e);
            }
            free(q);
            free(k);
            free(v);
            free(o);
            free(ref);
            free(scratch);
        }
    }
}

static void test_llama_config_and_weights(void)
{
    eg_err err;
    eg_llama *m = NULL;
    eg_llama_config c = {.vocab_size = 50, .hidden_size = 16, .num_layers = 2, .num_heads = 4,
                         .num_kv_heads = 3, .head_dim = 4, .intermediate_size = 32,
                         .max_position = 64, .rms_norm_eps = 1e-5f, .rope_theta = 1e4,
                         .rope_mode = EG_ROPE_NEOX, .qkv_bias = 1};
    CHECK(eg_llama_create(&m, &c, &err) == EG_EINVAL && strstr(err.msg, "divide"),
          "kv heads not dividing heads accepted: %s", err.msg);
    c.num_kv_heads = 2;
    c.head_dim = 3;
    CHECK(eg_llama_create(&m, &c, &err) == EG_EINVAL && strstr(err.msg, "even"),
          "odd head_dim accepted: %s", err.msg);
    c.head_dim = 4;
    c.rms_norm_eps = 0.0f;
    CHECK(eg_llama_create(&m, &c, &err) == EG_EINVAL, "zero eps accepted");
    c.rms_norm_eps = 1e-5f;
    CHECK(eg_llama_create(&m, &c, &err) == EG_OK, "valid config refused: %s", err.msg);
    /* 2 globals + per layer 12 (with biases) */
    CHECK(eg_llama_num_weights(m) == 2 + 2 * 12, "weight count %zu", eg_llama_num_weights(m));
    float w[16 * 50];
    for (int i = 0; i < 16 * 50; i++) {
        w[i] = 0.01f * (float)(i % 7);
    }
    int64_t bad[2] = {16, 50};
    CHECK(eg_llama_set_weight(m, "token_embd.weight", EG_GGML_F32, 2, bad, w, &err) == EG_EINVAL
              && strstr(err.msg, "expected shape"), "transposed embedding accepted: %s", err.msg);
    CHECK(eg_llama_set_weight(m, "nope", EG_GGML_F32, 1, bad, w, &err) == EG_EINVAL,
          "unknown name accepted");
    int64_t vec[1] = {16};
    CHECK(eg_llama_set_weight(m, "blk.0.attn_norm.weight", EG_GGML_Q8_0, 1, vec, w, &err)
              == EG_EINVAL, "quantized vector accepted");
    int32_t ids[3] = {1, 2, 3};
    int64_t off[2] = {0, 3};
    eg_bert_state s;
    eg_bert_state_init(&s);
    CHECK(eg_llama_embed(m, &s, ids, off, 1, &err) == EG_EINVAL && strstr(err.msg, "never set"),
          "embed on an incomplete model: %s", err.msg);
    eg_bert_state_free(&s);
    eg_llama_free(m);
}

/* ------------------------------------------------------------ backward */

static float *rnd(size_t n, uint64_t *rng, float scale)
{
    float *p = malloc((n > 0 ? n : 1) * sizeof *p);
    fill_normal(p, n, rng, scale);
    return p;
}

typedef struct { const float *x, *w; size_t N; int C; } rms_ctx;
static void rms_fwd(void *c, float *out)
{
    rms_ctx *k = c;
    eg_rmsnorm_forward(out, k->x, k->w, k->N, k->C, 1e-5f);
}

static void test_rmsnorm_backward(void)
{
    uint64_t rng = 21;
    const size_t N = 4;
    const int C = 40;  /* > LANES: exercises the lane sums */
    float *x = rnd(N * C, &rng, 1.0f), *w = rnd((size_t)C, &rng, 1.0f);
    float *R = rnd(N * C, &rng, 1.0f), *dx = calloc(N * C, sizeof *dx), *dw = calloc((size_t)C, sizeof *dw);
    eg_rmsnorm_backward(dx, dw, R, x, w, N, C, 1e-5f);
    rms_ctx k = {x, w, N, C};
    gc_var vars[] = {{"x", x, dx, N * C}, {"w", w, dw, (size_t)C}};
    gradcheck("rmsnorm", rms_fwd, &k, R, N * C, vars, 2, 1e-2f, 1e-2, 1e-3);
    /* dw accumulates; dinp may be NULL */
    float w0 = dw[5];
    eg_rmsnorm_backward(NULL, dw, R, x, w, N, C, 1e-5f);
    CHECK_CLOSE(dw[5], 2 * w0, 1e-5);
    free(x); free(w); free(R); free(dx); free(dw);
}

typedef struct { const float *x; const int32_t *pos; const float *c, *s; int mode; } rope_ctx;
static void rope_fwd(void *ctx, float *out)
{
    rope_ctx *k = ctx;
    memcpy(out, k->x, 3 * 2 * 8 * sizeof(float));
    eg_rope_forward(out, 16, 3, k->pos, 2, 8, k->c, k->s, k->mode);
}

static void test_rope_backward(void)
{
    uint64_t rng = 23;
    const int32_t pos[3] = {0, 5, 11};
    float cs[12 * 4], sn[12 * 4];
    eg_rope_table(cs, sn, 12, 8, 100.0);
    for (int mode = 0; mode <= 2; mode += 2) {
        float *x = rnd(48, &rng, 1.0f), *R = rnd(48, &rng, 1.0f), dx[48];
        memcpy(dx, R, sizeof dx);
        eg_rope_backward(dx, 16, 3, pos, 2, 8, cs, sn, mode);
        rope_ctx k = {x, pos, cs, sn, mode};
        gc_var vars[] = {{"x", x, dx, 48}};
        gradcheck(mode ? "rope(neox)" : "rope(norm)", rope_fwd, &k, R, 48, vars, 1, 1e-2f, 1e-3, 1e-4);
        free(x); free(R);
    }
}

typedef struct { const float *g, *u; } sw_ctx;
static void sw_fwd(void *c, float *out)
{
    sw_ctx *k = c;
    eg_swiglu_forward(out, 7, k->g, k->u, 7, 3, 7);
}

static void test_swiglu_backward(void)
{
    uint64_t rng = 29;
    float *g = rnd(21, &rng, 2.0f), *u = rnd(21, &rng, 1.0f), *R = rnd(21, &rng, 1.0f);
    float dg[21], du[21];
    eg_swiglu_backward(dg, du, 7, R, 7, g, u, 7, 3, 7);
    sw_ctx k = {g, u};
    gc_var vars[] = {{"gate", g, dg, 21}, {"up", u, du, 21}};
    gradcheck("swiglu", sw_fwd, &k, R, 21, vars, 2, 1e-2f, 1e-2, 1e-4);
    free(g); free(u); free(R);
}

typedef struct { const float *q, *k, *v; const int64_t *off; eg_attention_shape sh; float *scratch; } at_ctx;
static void at_fwd(void *c, float *out)
{
    at_ctx *a = c;
    eg_attention_forward(out, a->q, a->k, a->v, NULL, NULL, NULL, a->off, 3, &a->sh, a->scratch);
}

static void test_attention_backward(void)
{
    uint64_t rng = 31;
    const int64_t off[4] = {0, 1, 6, 13};
    const size_t n = 13;
    for (int causal = 0; causal <= 1; causal++) {
        const int H = 4, Hkv = 2, dh = 3;
        float *q = rnd(n * H * dh, &rng, 1.0f), *k = rnd(n * Hkv * dh, &rng, 1.0f);
        float *v = rnd(n * Hkv * dh, &rng, 1.0f), *R = rnd(n * H * dh, &rng, 1.0f);
        float *dq = calloc(n * H * dh, sizeof *dq), *dk = calloc(n * Hkv * dh, sizeof *dk);
        float *dv = calloc(n * Hkv * dh, sizeof *dv);
        const eg_attention_shape sh = {H, Hkv, dh, causal, (size_t)H * dh, (size_t)Hkv * dh,
                                       (size_t)H * dh};
        int nth = eg_omp_max_threads();
        float *fs = malloc((size_t)nth * eg_attention_scratch(7, dh) * sizeof(float));
        float *bs = malloc((size_t)nth * eg_attention_backward_scratch(7) * sizeof(float));
        /* dk, dv are assigned: garbage in them must not leak through */
        for (size_t i = 0; i < n * Hkv * dh; i++) {
            dk[i] = dv[i] = 1e6f;
        }
        eg_attention_backward(dq, dk, dv, R, q, k, v, off, 3, &sh, bs);
        at_ctx c = {q, k, v, off, sh, fs};
        gc_var vars[] = {{"q", q, dq, n * H * dh}, {"k", k, dk, n * Hkv * dh},
                         {"v", v, dv, n * Hkv * dh}};
        gradcheck(causal ? "attention(causal, gqa)" : "attention(gqa)", at_fwd, &c, R,
                  n * H * dh, vars, 3, 1e-2f, 1e-2, 1e-3);
        free(q); free(k); free(v); free(R); free(dq); free(dk); free(dv); free(fs); free(bs);
    }
}

int main(void)
{
    test_rmsnorm();
    test_rope();
    test_swiglu();
    test_attention_causal_gqa();
    test_llama_config_and_weights();
    test_rmsnorm_backward();
    test_rope_backward();
    test_swiglu_backward();
    test_attention_backward();
    return eg_test_report("test_decoder_ops");
}
