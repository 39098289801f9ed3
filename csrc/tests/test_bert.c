/*
 * test_bert.c — the BERT encoder's kernels against naive double-precision
 * references (erf, GELU, LayerNorm, attention on packed sequences), a whole
 * tiny random model against a straightforward padded reference forward,
 * batch and compaction invariance, and every error path of the C API.
 */
#include "eg.h"
#include "eg_bert.h"
#include "eg_test.h"

#include <string.h>

static double max_abs_diff_fd(const float *a, const double *b, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) {
            m = d; /* NaN propagates as a failure */
        }
    }
    return m;
}

static void fill_normal(float *x, size_t n, uint64_t *rng, float scale)
{
    for (size_t i = 0; i < n; i++) {
        x[i] = scale * eg_rng_normal(rng);
    }
}

static void test_erf_gelu(void)
{
    const size_t n = 400001;
    float *x = malloc(n * sizeof *x), *y = malloc(n * sizeof *y);
    double *ref = malloc(n * sizeof *ref);
    for (size_t i = 0; i < n; i++) {
        x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
    }
    eg_bert_erf(y, x, n);
    double worst = 0.0, worst_f = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)y[i] - erf((double)x[i]));
        double df = fabs((double)y[i] - (double)erff(x[i]));
        worst = d > worst ? d : worst;
        worst_f = df > worst_f ? df : worst_f;
        CHECK(fabsf(y[i]) <= 1.0f, "erf(%g) = %g out of [-1, 1]", (double)x[i], (double)y[i]);
    }
    printf("erf: max |err| vs double erf %.3g, vs erff %.3g\n", worst, worst_f);
    CHECK(worst <= 2e-7, "erf error %g", worst);
    CHECK(worst_f <= 2e-7, "erf vs erff %g", worst_f);
    /* small arguments: relative accuracy matters for GELU near 0 */
    float tiny[4] = {1e-30f, -1e-8f, 3e-4f, 0.0f};
    float ty[4];
    eg_bert_erf(ty, tiny, 4);
    for (int i = 0; i < 4; i++) {
        double r = erf((double)tiny[i]);
        CHECK(fabs(ty[i] - r) <= 1e-6 * fabs(r) + 1e-45, "erf(%g) = %g vs %g", (double)tiny[i],
              (double)ty[i], r);
    }
    float special[3] = {INFINITY, -INFINITY, NAN};
    eg_bert_erf(ty, special, 3);
    CHECK(ty[0] == 1.0f && ty[1] == -1.0f, "erf(+-inf) = +-1: %g %g", (double)ty[0], (double)ty[1]);
    CHECK(isnan(ty[2]), "erf(nan) is nan: %g", (double)ty[2]);

    eg_bert_gelu_forward(y, x, n);
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        ref[i] = 0.5 * v * (1.0 + erf(v / sqrt(2.0)));
    }
    double g = max_abs_diff_fd(y, ref, n);
    printf("gelu: max |err| %.3g\n", g);
    CHECK(g <= 1e-6, "gelu error %g", g);
    /* in place, and the fused bias variant */
    float row[6] = {-3, -1, 0, 0.5f, 2, 7}, bias[6] = {0.5f, 0.25f, -1, 0, 1, -2}, out[6];
    eg_bert_bias_gelu_forward(out, row, bias, 1, 6);
    for (int i = 0; i < 6; i++) {
        double v = (double)row[i] + bias[i];
        CHECK_CLOSE(out[i], 0.5 * v * (1.0 + erf(v / sqrt(2.0))), 1e-6);
    }
    eg_bert_bias_gelu_forward(row, row, NULL, 1, 6);
    CHECK_CLOSE(row[5], 7.0, 1e-6);
    CHECK_CLOSE(row[2], 0.0, 0.0);
    free(x);
    free(y);
    free(ref);
}

static void ref_layernorm(double *out, const double *x, const float *w, const float *b, int C,
                          double eps)
{
    double mean = 0.0, var = 0.0;
    for (int i = 0; i < C; i++) {
        mean += x[i];
    }
    mean /= C;
    for (int i = 0; i < C; i++) {
        var += (x[i] - mean) * (x[i] - mean);
    }
    var /= C;
    for (int i = 0; i < C; i++) {
        out[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
    }
}

static void test_layernorm(void)
{
    uint64_t rng = 7;
    const int Cs[3] = {5, 16, 37};
    for (int ci = 0; ci < 3; ci++) {
        const int C = Cs[ci], N = 9;
        float *x = malloc((size_t)N * C * sizeof *x), *res = malloc((size_t)N * C * sizeof *x);
        float *out = malloc((size_t)N * C * sizeof *x), w[64], b[64], xb[64];
        double *in = malloc((size_t)C * sizeof *in), *ref = malloc((size_t)C * sizeof *ref);
        fill_normal(x, (size_t)N * C, &rng, 3.0f);
        fill_normal(res, (size_t)N * C, &rng, 1.0f);
        for (int r = 0; r < N; r++) {
            x[(size_t)r * C] += 10.0f * (float)r; /* offset rows: mean far from 0 */
        }
        fill_normal(w, (size_t)C, &rng, 1.0f);
        fill_normal(b, (size_t)C, &rng, 1.0f);
        fill_normal(xb, (size_t)C, &rng, 1.0f);
        eg_bert_layernorm_forward(out, x, w, b, (size_t)N, C, 1e-12f);
        double worst = 0.0;
        for (int r = 0; r < N; r++) {
            for (int i = 0; i < C; i++) {
                in[i] = x[(size_t)r * C + i];
            }
            ref_layernorm(ref, in, w, b, C, 1e-12);
            double d = max_abs_diff_fd(out + (size_t)r * C, ref, (size_t)C);
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 2e-5, "layernorm C=%d error %g", C, worst);
        /* fused residual form, in place over res (the reference uses a copy) */
        float *x2 = NULL, *res2 = malloc((size_t)N * C * sizeof *res2);
        memcpy(res2, res, (size_t)N * C * sizeof *res2);
        eg_bert_residual_layernorm_forward(res, x, xb, res, w, b, (size_t)N, C, 1e-5f);
        worst = 0.0;
        for (int r = 0; r < N; r++) {
            for (int i = 0; i < C; i++) {
                in[i] = (double)x[(size_t)r * C + i] + xb[i] + res2[(size_t)r * C + i];
            }
            ref_layernorm(ref, in, w, b, C, 1e-5);
            double d = max_abs_diff_fd(res + (size_t)r * C, ref, (size_t)C);
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 2e-5, "residual layernorm C=%d error %g", C, worst);
        free(x);
        free(res);
        free(out);
        free(in);
        free(ref);
        free(x2);
        free(res2);
    }
}

/* Naive attention of one packed batch, in double. */
static void ref_attention(double *out, const float *qkv, const float *bqkv, const int64_t *off,
                          int n_seq, int D, int H)
{
    const int dh = D / H;
    for (int s = 0; s < n_seq; s++) {
        int64_t lo = off[s];
        int L = (int)(off[s + 1] - lo);
        double *p = malloc((size_t)L * sizeof *p);
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < L; i++) {
                double mx = -INFINITY;
                for (int j = 0; j < L; j++) {
                    double acc = 0.0;
                    for (int d = 0; d < dh; d++) {
                        int c = h * dh + d;
                        double q = (double)qkv[(lo + i) * 3 * D + c] + bqkv[c];
                        double k = (double)qkv[(lo + j) * 3 * D + D + c] + bqkv[D + c];
                        acc += q * k;
                    }
                    p[j] = acc / sqrt((double)dh);
                    mx = p[j] > mx ? p[j] : mx;
                }
                double sum = 0.0;
                for (int j = 0; j < L; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int d = 0; d < dh; d++) {
                    int c = h * dh + d;
                    double acc = 0.0;
                    for (int j = 0; j < L; j++) {
                        acc += p[j] / sum * ((double)qkv[(lo + j) * 3 * D + 2 * D + c] + bqkv[2 * D + c]);
                    }
                    out[(lo + i) * D + c] = acc;
                }
            }
        }
        free(p);
    }
}

static void test_attention(void)
{
    uint64_t rng = 11;
    const int configs[3][2] = {{8, 2}, {24, 3}, {64, 1}};
    const int lens[5] = {1, 17, 3, 40, 16};
    int64_t off[6] = {0};
    for (int i = 0; i < 5; i++) {
        off[i + 1] = off[i] + lens[i];
    }
    const size_t n = (size_t)off[5];
    for (int ci = 0; ci < 3; ci++) {
        const int D = configs[ci][0], H = configs[ci][1];
        float *qkv = malloc(n * 3 * D * sizeof *qkv), *b = malloc(3 * (size_t)D * sizeof *b);
        float *out = malloc(n * D * sizeof *out);
        double *ref = malloc(n * D * sizeof *ref);
        fill_normal(qkv, n * 3 * D, &rng, 1.5f);
        fill_normal(b, 3 * (size_t)D, &rng, 0.5f);
        int nth = eg_omp_max_threads();
        float *scratch = malloc((size_t)nth * eg_bert_attention_scratch(40, D / H) * sizeof(float));
        eg_bert_attention_forward_bias(out, qkv, b, off, 5, D, H, scratch);
        ref_attention(ref, qkv, b, off, 5, D, H);
        double d = max_abs_diff_fd(out, ref, n * D);
        CHECK(d <= 2e-5, "attention D=%d H=%d error %g", D, H, d);
        /* without bias equals with a zero bias */
        memset(b, 0, 3 * (size_t)D * sizeof *b);
        ref_attention(ref, qkv, b, off, 5, D, H);
        eg_bert_attention_forward(out, qkv, off, 5, D, H, scratch);
        d = max_abs_diff_fd(out, ref, n * D);
        CHECK(d <= 2e-5, "attention (no bias) D=%d H=%d error %g", D, H, d);
        free(qkv);
        free(b);
        free(out);
        free(ref);
        free(scratch);
    }
}

/* ------------------------------------------------------------ tiny model */

static const eg_bert_config TINY = {
    .vocab_size = 23, .hidden_size = 12, .num_layers = 3, .num_heads = 3,
    .intermediate_size = 20, .max_position = 16, .type_vocab_size = 2, .layer_norm_eps = 1e-12f,
};

static eg_bert *tiny_model(uint64_t seed)
{
    eg_bert *m = NULL;
    eg_err err;
    if (eg_bert_create(&m, &TINY, &err) != EG_OK) {
        fprintf(stderr, "create: %s\n", err.msg);
        return NULL;
    }
    uint64_t rng = seed;
    for (size_t i = 0; i < eg_bert_num_params(m); i++) {
        const char *name;
        int nd;
        int64_t shape[2];
        eg_bert_param_info(m, i, &name, &nd, shape);
        size_t count = (size_t)shape[0] * (size_t)(nd == 2 ? shape[1] : 1);
        float *buf = malloc(count * sizeof *buf);
        int is_ln_w = strstr(name, "LayerNorm.weight") != NULL;
        for (size_t k = 0; k < count; k++) {
            buf[k] = (is_ln_w ? 1.0f : 0.0f) + 0.3f * eg_rng_normal(&rng);
        }
        CHECK(eg_bert_set_param(m, name, buf, nd, shape, &err) == EG_OK, "set %s: %s", name,
              err.msg);
        free(buf);
    }
    return m;
}

static const float *P(const eg_bert *m, const char *fmt, int l)
{
    char name[128];
    snprintf(name, sizeof name, fmt, l);
    size_t count;
    return eg_bert_get_param(m, name, &count);
}

/* Straightforward forward of one sequence in double; hs (L+1, len, D). */
static void ref_forward(const eg_bert *m, const int32_t *ids, int len, double *hs)
{
    const eg_bert_config *c = eg_bert_get_config(m);
    const int D = c->hidden_size, I = c->intermediate_size, H = c->num_heads, dh = D / H;
    double *x = malloc((size_t)len * D * sizeof *x), *t = malloc((size_t)len * D * sizeof *t);
    double *qkv = malloc((size_t)len * 3 * D * sizeof *qkv), *f = malloc((size_t)I * sizeof *f);
    double *ctx = malloc((size_t)len * D * sizeof *ctx), *p = malloc((size_t)len * sizeof *p);
    const float *we = P(m, "embeddings.word_embeddings.weight", 0);
    const float *pe = P(m, "embeddings.position_embeddings.weight", 0);
    const float *te = P(m, "embeddings.token_type_embeddings.weight", 0);
    for (int i = 0; i < len; i++) {
        for (int k = 0; k < D; k++) {
            t[i * D + k] = (double)we[ids[i] * D + k] + pe[i * D + k] + te[k];
        }
        ref_layernorm(x + i * D, t + i * D, P(m, "embeddings.LayerNorm.weight", 0),
                      P(m, "embeddings.LayerNorm.bias", 0), D, c->layer_norm_eps);
    }
    memcpy(hs, x, (size_t)len * D * sizeof *x);
    for (int l = 0; l < c->num_layers; l++) {
        const char *names[3] = {"encoder.layer.%d.attention.self.query.weight",
                                "encoder.layer.%d.attention.self.key.weight",
                                "encoder.layer.%d.attention.self.value.weight"};
        const char *bnames[3] = {"encoder.layer.%d.attention.self.query.bias",
                                 "encoder.layer.%d.attention.self.key.bias",
                                 "encoder.layer.%d.attention.self.value.bias"};
        for (int k = 0; k < 3; k++) {
            const float *w = P(m, names[k], l), *b = P(m, bnames[k], l);
            for (int i = 0; i < len; i++) {
                for (int o = 0; o < D; o++) {
                    double acc = b[o];
                    for (int j = 0; j < D; j++) {
                        acc += (double)w[o * D + j] * x[i * D + j];
                    }
                    qkv[(i * 3 + k) * D + o] = acc;
                }
            }
        }
        for (int h = 0; h < H; h++) {
            for (int i = 0; i < len; i++) {
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j < len; j++) {
                    double a = 0.0;
                    for (int d = 0; d < dh; d++) {
                        a += qkv[(i * 3) * D + h * dh + d] * qkv[(j * 3 + 1) * D + h * dh + d];
                    }
                    p[j] = a / sqrt((double)dh);
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < len; j++) {
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int d = 0; d < dh; d++) {
                    double a = 0.0;
                    for (int j = 0; j < len; j++) {
                        a += p[j] / sum * qkv[(j * 3 + 2) * D + h * dh + d];
                    }
                    ctx[i * D + h * dh + d] = a;
                }
            }
        }
        const float *wo = P(m, "encoder.layer.%d.attention.output.dense.weight", l);
        const float *bo = P(m, "encoder.layer.%d.attention.output.dense.bias", l);
        for (int i = 0; i < len; i++) {
            for (int o = 0; o < D; o++) {
                double acc = bo[o];
                for (int j = 0; j < D; j++) {
                    acc += (double)wo[o * D + j] * ctx[i * D + j];
                }
                t[i * D + o] = acc + x[i * D + o];
            }
            ref_layernorm(x + i * D, t + i * D, P(m, "encoder.layer.%d.attention.output.LayerNorm.weight", l),
                          P(m, "encoder.layer.%d.attention.output.LayerNorm.bias", l), D,
                          c->layer_norm_eps);
        }
        const float *wi = P(m, "encoder.layer.%d.intermediate.dense.weight", l);
        const float *bi = P(m, "encoder.layer.%d.intermediate.dense.bias", l);
        const float *w2 = P(m, "encoder.layer.%d.output.dense.weight", l);
        const float *b2 = P(m, "encoder.layer.%d.output.dense.bias", l);
        for (int i = 0; i < len; i++) {
            for (int o = 0; o < I; o++) {
                double acc = bi[o];
                for (int j = 0; j < D; j++) {
                    acc += (double)wi[o * D + j] * x[i * D + j];
                }
                f[o] = 0.5 * acc * (1.0 + erf(acc / sqrt(2.0)));
            }
            for (int o = 0; o < D; o++) {
                double acc = b2[o];
                for (int j = 0; j < I; j++) {
                    acc += (double)w2[o * I + j] * f[j];
                }
                t[i * D + o] = acc + x[i * D + o];
            }
            ref_layernorm(x + i * D, t + i * D, P(m, "encoder.layer.%d.output.LayerNorm.weight", l),
                          P(m, "encoder.layer.%d.output.LayerNorm.bias", l), D, c->layer_norm_eps);
        }
        memcpy(hs + (size_t)(l + 1) * len * D, x, (size_t)len * D * sizeof *x);
    }
    free(x);
    free(t);
    free(qkv);
    free(f);
    free(ctx);
    free(p);
}

static void test_model_forward(void)
{
    eg_bert *m = tiny_model(99);
    CHECK(m != NULL, "tiny model");
    if (m == NULL) {
        return;
    }
    eg_err err;
    CHECK(eg_bert_check_complete(m, &err) == EG_OK, "complete: %s", err.msg);
    const int D = TINY.hidden_size, Lyr = TINY.num_layers;
    const int lens[4] = {5, 1, 16, 9};
    int64_t off[5] = {0};
    for (int i = 0; i < 4; i++) {
        off[i + 1] = off[i] + lens[i];
    }
    int32_t ids[64];
    uint64_t rng = 5;
    for (int t = 0; t < off[4]; t++) {
        ids[t] = (int32_t)eg_rng_below(&rng, (uint64_t)TINY.vocab_size);
    }
    /* reference pooled states per layer */
    double ref_pool[4][4][12];
    for (int s = 0; s < 4; s++) {
        double *hs = malloc((size_t)(Lyr + 1) * lens[s] * D * sizeof *hs);
        ref_forward(m, ids + off[s], lens[s], hs);
        for (int l = 0; l <= Lyr; l++) {
            for (int k = 0; k < D; k++) {
                double acc = 0.0;
                for (int i = 0; i < lens[s]; i++) {
                    acc += hs[((size_t)l * lens[s] + i) * D + k];
                }
                ref_pool[l][s][k] = acc / lens[s];
            }
        }
        free(hs);
    }
    eg_bert_state st;
    eg_bert_state_init(&st);
    float pooled[4][12], alone[12];
    CHECK(eg_bert_embed(m, &st, ids, off, 4, &err) == EG_OK, "embed: %s", err.msg);
    for (int l = 0; l <= Lyr; l++) {
        CHECK(eg_bert_run_layers(m, &st, l, &err) == EG_OK, "run to %d: %s", l, err.msg);
        CHECK(st.layer == l, "state at layer %d", st.layer);
        eg_bert_pool(&st, &pooled[0][0]);
        double worst = 0.0;
        for (int s = 0; s < 4; s++) {
            double d = max_abs_diff_fd(pooled[s], ref_pool[l][s], (size_t)D);
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 1e-5, "layer %d pooled error %g", l, worst);
    }
    /* each sequence alone gives the same result as inside the batch */
    for (int s = 0; s < 4; s++) {
        int64_t o1[2] = {0, lens[s]};
        CHECK(eg_bert_embed(m, &st, ids + off[s], o1, 1, &err) == EG_OK, "embed alone");
        CHECK(eg_bert_run_layers(m, &st, Lyr, &err) == EG_OK, "run alone");
        eg_bert_pool(&st, alone);
        CHECK(max_abs_diff_fd(alone, ref_pool[Lyr][s], (size_t)D) <= 1e-5, "alone seq %d", s);
    }
    /* early exit: compact after layer 1, continue with sequences 1 and 3 */
    CHECK(eg_bert_embed(m, &st, ids, off, 4, &err) == EG_OK, "embed");
    CHECK(eg_bert_run_layers(m, &st, 1, &err) == EG_OK, "run to 1");
    int keep[2] = {1, 3};
    CHECK(eg_bert_compact(&st, keep, 2, &err) == EG_OK, "compact: %s", err.msg);
    CHECK(st.n_seq == 2 && st.n_tok == (size_t)(lens[1] + lens[3]) && st.layer == 1,
          "compacted state: %d seqs %zu tokens", st.n_seq, st.n_tok);
    CHECK(eg_bert_run_layers(m, &st, Lyr, &err) == EG_OK, "run after compact");
    eg_bert_pool(&st, &pooled[0][0]);
    CHECK(max_abs_diff_fd(pooled[0], ref_pool[Lyr][1], (size_t)D) <= 1e-5, "compact seq 1");
    CHECK(max_abs_diff_fd(pooled[1], ref_pool[Lyr][3], (size_t)D) <= 1e-5, "compact seq 3");
    CHECK(eg_bert_compact(&st, keep, 0, &err) == EG_OK && st.n_seq == 0 && st.n_tok == 0,
          "compact to nothing");
    CHECK(eg_bert_run_layers(m, &st, Lyr, &err) == EG_OK, "running an empty state is fine");

    /* error paths */
    int bad_keep[2] = {1, 1};
    CHECK(eg_bert_embed(m, &st, ids, off, 4, &err) == EG_OK, "embed");
    CHECK(eg_bert_compact(&st, bad_keep, 2, &err) == EG_EINVAL, "repeated keep index refused");
    bad_keep[1] = 4;
    CHECK(eg_bert_compact(&st, bad_keep, 2, &err) == EG_EINVAL, "keep index out of range");
    CHECK(eg_bert_run_layers(m, &st, Lyr + 1, &err) == EG_EINVAL, "layer beyond the model");
    CHECK(strstr(err.msg, "3 layers") != NULL, "message names the layer count: %s", err.msg);
    CHECK(eg_bert_run_layers(m, &st, 2, &err) == EG_OK, "run to 2");
    CHECK(eg_bert_run_layers(m, &st, 1, &err) == EG_EINVAL, "cannot go backwards");
    int32_t bad_ids[2] = {1, 23};
    int64_t o2[2] = {0, 2};
    CHECK(eg_bert_embed(m, &st, bad_ids, o2, 1, &err) == EG_EINVAL && strstr(err.msg, "vocabulary"),
          "id outside the vocabulary: %s", err.msg);
    bad_ids[1] = -1;
    CHECK(eg_bert_embed(m, &st, bad_ids, o2, 1, &err) == EG_EINVAL, "negative id");
    int64_t o_empty[3] = {0, 2, 2};
    int32_t ok_ids[20] = {0};
    CHECK(eg_bert_embed(m, &st, ok_ids, o_empty, 2, &err) == EG_EINVAL && strstr(err.msg, "empty"),
          "empty sequence: %s", err.msg);
    int64_t o_long[2] = {0, 17};
    CHECK(eg_bert_embed(m, &st, ok_ids, o_long, 1, &err) == EG_EINVAL &&
              strstr(err.msg, "max_position_embeddings"),
          "too long: %s", err.msg);
    int64_t o_start[2] = {1, 3};
    CHECK(eg_bert_embed(m, &st, ok_ids, o_start, 1, &err) == EG_EINVAL, "offsets not from 0");
    CHECK(eg_bert_embed(m, &st, NULL, NULL, 0, &err) == EG_OK && st.n_seq == 0, "empty batch");
    eg_bert_pool(&st, NULL);
    eg_bert_state_free(&st);
    eg_bert_state empty;
    eg_bert_state_init(&empty);
    CHECK(eg_bert_run_layers(m, &empty, 1, &err) == EG_ESTATE, "run on an empty state");
    CHECK(eg_bert_compact(&empty, keep, 0, &err) == EG_ESTATE, "compact an empty state");
    eg_bert_state_free(&empty);

    float w[12 * 12] = {0};
    int64_t shp[2] = {12, 11};
    CHECK(eg_bert_set_param(m, "encoder.layer.0.attention.self.key.weight", w, 2, shp, &err) == EG_EINVAL,
          "wrong shape refused");
    CHECK(strstr(err.msg, "encoder.layer.0.attention.self.key.weight") && strstr(err.msg, "(12, 11)") &&
              strstr(err.msg, "(12, 12)"),
          "message names tensor, got and expected: %s", err.msg);
    shp[1] = 12;
    CHECK(eg_bert_set_param(m, "bert.encoder.layer.0.attention.self.key.weight", w, 2, shp, &err) == EG_OK,
          "bert. prefix accepted");
    CHECK(eg_bert_set_param(m, "encoder.layer.3.output.dense.bias", w, 1, shp, &err) == EG_EINVAL &&
              strstr(err.msg, "unknown"),
          "unknown tensor: %s", err.msg);
    /* the fused QKV layout: key follows query directly */
    size_t cnt;
    const float *q = eg_bert_get_param(m, "encoder.layer.1.attention.self.query.weight", &cnt);
    const float *k = eg_bert_get_param(m, "encoder.layer.1.attention.self.key.weight", &cnt);
    const float *v = eg_bert_get_param(m, "encoder.layer.1.attention.self.value.bias", &cnt);
    const float *kb = eg_bert_get_param(m, "encoder.layer.1.attention.self.key.bias", &cnt);
    CHECK(k == q + 144 && v == kb + 12, "q, k, v packed back to back");
    eg_bert_free(m);

    /* a model with a missing tensor refuses to run, naming it */
    eg_bert *m2 = NULL;
    CHECK(eg_bert_create(&m2, &TINY, &err) == EG_OK, "create");
    eg_bert_state s2;
    eg_bert_state_init(&s2);
    CHECK(eg_bert_embed(m2, &s2, ids, off, 4, &err) == EG_EINVAL &&
              strstr(err.msg, "embeddings.word_embeddings.weight"),
          "missing tensor named: %s", err.msg);
    eg_bert_state_free(&s2);
    eg_bert_free(m2);

    /* bad configs */
    eg_bert_config c = TINY;
    c.num_heads = 5;
    CHECK(eg_bert_create(&m2, &c, &err) == EG_EINVAL && strstr(err.msg, "divisible"), "heads: %s", err.msg);
    c = TINY;
    c.num_layers = 0;
    CHECK(eg_bert_create(&m2, &c, &err) == EG_EINVAL && m2 == NULL, "zero layers");
    c = TINY;
    c.layer_norm_eps = NAN;
    CHECK(eg_bert_create(&m2, &c, &err) == EG_EINVAL, "nan eps");
    double fl = eg_bert_flops(&TINY, (const int64_t[]){2, 3}, 2);
    double want = 3.0 * (5.0 * (8.0 * 144 + 4.0 * 12 * 20) + 4.0 * 13 * 12);
    CHECK_CLOSE(fl, want, 1e-6);
}


/* GEMMs big enough for OpenBLAS to split into threads, run through the
 * OpenMP job callback (core/blas.c), and once from inside a parallel region
 * (the pthread fallback, which must not deadlock), against the naive loop. */
static void test_threaded_gemm(void)
{
    const int M = 300, N = 260, Kd = 384;
    uint64_t rng = 3;
    float *a = malloc((size_t)M * Kd * sizeof *a), *b = malloc((size_t)N * Kd * sizeof *b);
    float *c = malloc((size_t)M * N * sizeof *c), *c2 = malloc((size_t)M * N * sizeof *c);
    float *r = malloc((size_t)M * N * sizeof *r);
    fill_normal(a, (size_t)M * Kd, &rng, 1.0f);
    fill_normal(b, (size_t)N * Kd, &rng, 1.0f);
    eg_sgemm_naive(0, 1, M, N, Kd, 1.0f, a, Kd, b, Kd, 0.0f, r, N);
    for (int rep = 0; rep < 3; rep++) {
        eg_sgemm(0, 1, M, N, Kd, 1.0f, a, Kd, b, Kd, 0.0f, c, N);
        double worst = 0.0;
        for (size_t i = 0; i < (size_t)M * N; i++) {
            double d = fabs((double)c[i] - r[i]);
            worst = d > worst ? d : worst;
        }
        CHECK(worst <= 1e-3, "threaded sgemm error %g", worst);
    }
    int done = 0;
#pragma omp parallel num_threads(2)
    {
#pragma omp single
        {
            eg_sgemm(0, 1, M, N, Kd, 1.0f, a, Kd, b, Kd, 0.0f, c2, N);
            done = 1;
        }
    }
    CHECK(done && memcmp(c, c2, (size_t)M * N * sizeof *c) == 0,
          "sgemm from inside a parallel region gives the same bits");
    free(a);
    free(b);
    free(c);
    free(c2);
    free(r);
}

int main(void)
{
    eg_set_num_threads(2);
    test_erf_gelu();
    test_layernorm();
    test_attention();
    test_model_forward();
    test_threaded_gemm();
    eg_set_num_threads(1);
    test_attention();
    return eg_test_report("test_bert");
}
