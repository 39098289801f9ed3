/*
 * test_exit.c — the dynamic early-exit policy (exit.c) and running ladders on
 * a shrinking subset of subgraphs (eg_ladder_keep).
 *
 * Exit rule: hand-built argmax sequences with known exit ladders for patience
 * 1 and 2 and a threshold; the reference's defective mask
 * `(cur == last) == not_visited`, transcribed below, gives a different
 * (wrong) output on a constructed case where ours keeps the frozen one;
 * exited targets cannot be updated; bad input is refused without changing
 * the state. Keep: logits of the kept subgraphs equal the full batch's.
 */
#include "eg_engine.h"
#include "eg_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { NT = 4, NC = 3, NK = 4 };

typedef struct {
    int64_t last[NT];
    int32_t streak[NT], exit_at[NT];
    float probs[NT * NC];
    eg_exit_state s;
} policy;

static void policy_init(policy *p, int patience, float threshold)
{
    memset(p, 0, sizeof *p);
    p->s = (eg_exit_state){NT, NC, patience, threshold, p->last, p->streak, p->exit_at, p->probs};
}

/* logits whose argmax is `cls` with margin `m` */
static void put(float *L, int k, int t, int cls, float m)
{
    for (int c = 0; c < NC; c++) {
        L[((size_t)k * NT + t) * NC + c] = (c == cls) ? m : 0.0f;
    }
}

/* argmax sequences over 4 ladders:
 *   t0: 0 0 1 1   patience 1 -> exits at 1 (frozen class 0; the defective rule ends at class 1)
 *   t1: 0 1 1 1   patience 1 -> 2, patience 2 -> 3
 *   t2: 2 0 1 2   never agrees -> last ladder (3)
 *   t3: 1 1 1 0   patience 1 -> 1, patience 2 -> 2 */
static const int SEQ[NT][NK] = {{0, 0, 1, 1}, {0, 1, 1, 1}, {2, 0, 1, 2}, {1, 1, 1, 0}};

static void build(float *L)
{
    for (int k = 0; k < NK; k++) {
        for (int t = 0; t < NT; t++) {
            put(L, k, t, SEQ[t][k], 1.0f + 0.5f * (float)k);
        }
    }
}

/* The reference rule, transcribed with its defect: mask = (cur == last) == not_visited. */
static void defective(const float *L, float *out, int *exit_at)
{
    int last[NT], nv[NT];
    for (int t = 0; t < NT; t++) {
        nv[t] = 1;
        exit_at[t] = NK - 1;
    }
    for (int k = 0; k < NK; k++) {
        for (int t = 0; t < NT; t++) {
            const float *z = L + ((size_t)k * NT + t) * NC;
            int cur = 0;
            for (int c = 1; c < NC; c++) {
                if (z[c] > z[cur]) {
                    cur = c;
                }
            }
            if (k > 0 && ((cur == last[t]) == nv[t])) {
                for (int c = 0; c < NC; c++) {
                    out[t * NC + c] = z[c];   /* logits stand in for probabilities: same argmax */
                }
                nv[t] = 0;
                exit_at[t] = k;
            }
            last[t] = cur;
        }
    }
    for (int t = 0; t < NT; t++) {
        if (nv[t]) {
            for (int c = 0; c < NC; c++) {
                out[t * NC + c] = L[((size_t)(NK - 1) * NT + t) * NC + c];
            }
        }
    }
}

static int argmax(const float *p)
{
    int b = 0;
    for (int c = 1; c < NC; c++) {
        if (p[c] > p[b]) {
            b = c;
        }
    }
    return b;
}

static void test_rule(void)
{
    float L[NK * NT * NC];
    build(L);
    eg_err err;
    policy p;

    policy_init(&p, 1, 0.0f);
    CHECK(eg_exit_decide(&p.s, NK, L, NULL, &err) == EG_OK, "%s", err.msg);
    const int want1[NT] = {1, 2, 3, 1};
    for (int t = 0; t < NT; t++) {
        CHECK(p.exit_at[t] == want1[t], "patience 1: target %d exits at %d, want %d", t, p.exit_at[t],
              want1[t]);
        /* output = softmax of the head it exited at */
        const float *z = L + ((size_t)want1[t] * NT + t) * NC;
        double s = 0.0;
        for (int c = 0; c < NC; c++) {
            s += exp(z[c]);
        }
        for (int c = 0; c < NC; c++) {
            CHECK_CLOSE(p.probs[t * NC + c], exp(z[c]) / s, 1e-6);
        }
    }
    CHECK(argmax(p.probs) == 0, "target 0 keeps its exit prediction (class 0)");

    /* the defective reference rule re-selects target 0 at ladder 2 (its heads
     * disagree there) and overwrites its output with class 1 */
    float dout[NT * NC];
    int dexit[NT];
    defective(L, dout, dexit);
    CHECK(argmax(dout) == 1, "the transcribed defect overwrites target 0 (got class %d)", argmax(dout));
    CHECK(dexit[0] == 2, "the defect moves target 0's exit to ladder 2 (got %d)", dexit[0]);
    CHECK(argmax(p.probs) != argmax(dout), "ours and the defective rule differ on target 0");
    /* the defect also moves t3 (its last head disagrees); t1 it leaves alone */
    CHECK(dexit[1] == 2 && dexit[3] == 3, "defect on t1/t3: %d %d", dexit[1], dexit[3]);

    policy_init(&p, 2, 0.0f);
    CHECK(eg_exit_decide(&p.s, NK, L, NULL, &err) == EG_OK, "%s", err.msg);
    const int want2[NT] = {3, 3, 3, 2};
    for (int t = 0; t < NT; t++) {
        CHECK(p.exit_at[t] == want2[t], "patience 2: target %d exits at %d, want %d", t, p.exit_at[t],
              want2[t]);
    }

    /* threshold: a confident first head exits at ladder 0 */
    float L2[NK * NT * NC];
    memcpy(L2, L, sizeof L2);
    put(L2, 0, 2, 2, 10.0f);
    policy_init(&p, 5, 0.9f);
    CHECK(eg_exit_decide(&p.s, NK, L2, NULL, &err) == EG_OK, "%s", err.msg);
    CHECK(p.exit_at[2] == 0, "threshold: target 2 exits at 0 (got %d)", p.exit_at[2]);
    CHECK(p.exit_at[0] == 3, "threshold: unconfident target 0 runs to the end (got %d)", p.exit_at[0]);

    /* heads missing on some ladders: they are skipped */
    uint8_t hh[NK] = {1, 0, 1, 1};
    policy_init(&p, 1, 0.0f);
    CHECK(eg_exit_decide(&p.s, NK, L, hh, &err) == EG_OK, "%s", err.msg);
    CHECK(p.exit_at[1] == 3 && p.exit_at[3] == 2, "skip headless ladder: %d %d", p.exit_at[1], p.exit_at[3]);
}

static void test_step_contract(void)
{
    float L[NK * NT * NC];
    build(L);
    eg_err err;
    policy p;
    policy_init(&p, 1, 0.0f);
    CHECK(eg_exit_reset(&p.s, &err) == EG_OK, "%s", err.msg);
    int64_t all[NT] = {0, 1, 2, 3};
    uint8_t act[NT];
    int64_t nex = -1;
    CHECK(eg_exit_step(&p.s, 0, 0, NT, all, L, act, &nex, &err) == EG_OK, "%s", err.msg);
    CHECK(nex == 0, "nobody exits at the first head with patience 1");
    CHECK(eg_exit_step(&p.s, 1, 0, NT, all, L + NT * NC, act, &nex, &err) == EG_OK, "%s", err.msg);
    CHECK(nex == 2 && !act[0] && act[1] && act[2] && !act[3], "exited %lld", (long long)nex);
    float frozen[NC];
    memcpy(frozen, p.probs, sizeof frozen);
    /* updating an exited target is refused and changes nothing */
    CHECK(eg_exit_step(&p.s, 2, 0, NT, all, L + 2 * NT * NC, act, &nex, &err) == EG_ESTATE,
          "an exited target must be refused");
    CHECK(memcmp(frozen, p.probs, sizeof frozen) == 0, "frozen output unchanged");
    CHECK(p.streak[1] == 0 && p.last[1] == 1, "refused call left target 1 alone");
    /* duplicates, out of range, non-finite */
    int64_t dup[2] = {1, 1};
    float z2[2 * NC] = {0};
    CHECK(eg_exit_step(&p.s, 2, 0, 2, dup, z2, act, NULL, &err) == EG_EINVAL, "duplicate refused");
    CHECK(p.streak[1] == 0, "duplicate check restores streak (%d)", p.streak[1]);
    int64_t oob[1] = {7};
    CHECK(eg_exit_step(&p.s, 2, 0, 1, oob, z2, act, NULL, &err) == EG_EINVAL, "out of range refused");
    int64_t one[2] = {1, 2};
    z2[NC + 1] = NAN;
    CHECK(eg_exit_step(&p.s, 2, 0, 2, one, z2, act, NULL, &err) == EG_EINVAL, "NaN refused");
    CHECK(p.streak[1] == 0 && p.streak[2] == 0 && p.exit_at[1] < 0, "NaN refusal changed nothing");
    /* the rest runs on: final ladder exits everyone still active */
    int64_t rest[2] = {1, 2};
    float z3[2 * NC];
    memcpy(z3, L + (2 * NT + 1) * NC, NC * sizeof(float));
    memcpy(z3 + NC, L + (2 * NT + 2) * NC, NC * sizeof(float));
    CHECK(eg_exit_step(&p.s, 2, 0, 2, rest, z3, act, &nex, &err) == EG_OK, "%s", err.msg);
    CHECK(nex == 1 && !act[0] && act[1], "t1 exits at 2");
    int64_t last[1] = {2};
    CHECK(eg_exit_step(&p.s, 3, 1, 1, last, L + (3 * NT + 2) * NC, act, &nex, &err) == EG_OK, "%s", err.msg);
    CHECK(nex == 1 && p.exit_at[2] == 3, "final ladder exits everyone");
    /* bad scalars */
    policy_init(&p, 0, 0.0f);
    CHECK(eg_exit_reset(&p.s, &err) == EG_EINVAL, "patience 0 refused");
    policy_init(&p, 1, 1.5f);
    CHECK(eg_exit_reset(&p.s, &err) == EG_EINVAL, "threshold > 1 refused");
    policy_init(&p, 1, NAN);
    CHECK(eg_exit_reset(&p.s, &err) == EG_EINVAL, "NaN threshold refused");
}

/* batch: 3 subgraphs over 9 nodes (sizes 4, 2, 3), undirected edges */
static const int64_t GP[] = {0, 4, 6, 9};
static const int64_t PTR[] = {0, 3, 5, 7, 8, 9, 10, 11, 13, 14};
static const int64_t SRC[] = {1, 2, 3, 0, 2, 0, 1, 0, 5, 4, 7, 6, 8, 7};

static void test_keep(int gnn, int norm)
{
    enum { K = 3, D = 6, N = 9, C = 3 };
    eg_ladder_config cfg = {K, D, 4, 6, C, gnn, 2, EG_ACT_ELU, norm, 2, 1, 0.3f, 0.5f};
    eg_ladder *m = NULL;
    eg_err err;
    CHECK(eg_ladder_create(&m, &cfg, 7, &err) == EG_OK, "%s", err.msg);
    if (m == NULL) {
        return;
    }
    float H[K * N * D];
    uint64_t seed = 3;
    for (int i = 0; i < K * N * D; i++) {
        H[i] = 2.0f * eg_rng_uniform(&seed) - 1.0f;
    }
    float full[K][3 * C];
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "%s", err.msg);
    for (int i = 0; i < K; i++) {
        CHECK(eg_ladder_forward_step(m, i, H + i * N * D, full[i], &err) == EG_OK, "%s", err.msg);
    }
    /* drop subgraph 1 (nodes 4, 5) after ladder 0, then subgraph 0 after ladder 1 */
    float part[3 * C];
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "%s", err.msg);
    CHECK(eg_ladder_forward_step(m, 0, H, part, &err) == EG_OK, "%s", err.msg);
    uint8_t k1[3] = {1, 0, 1};
    CHECK(eg_ladder_keep(m, k1, &err) == EG_OK, "%s", err.msg);
    int64_t n2, g2;
    eg_ladder_batch_dims(m, &n2, &g2);
    CHECK(n2 == 7 && g2 == 2, "kept dims %lld %lld", (long long)n2, (long long)g2);
    float H1[7 * D];
    memcpy(H1, H + N * D, 4 * D * sizeof(float));
    memcpy(H1 + 4 * D, H + N * D + 6 * D, 3 * D * sizeof(float));
    CHECK(eg_ladder_forward_step(m, 1, H1, part, &err) == EG_OK, "%s", err.msg);
    for (int c = 0; c < C; c++) {
        CHECK_CLOSE(part[c], full[1][c], 1e-5);
        CHECK_CLOSE(part[C + c], full[1][2 * C + c], 1e-5);
    }
    uint8_t k2[2] = {0, 1};
    CHECK(eg_ladder_keep(m, k2, &err) == EG_OK, "%s", err.msg);
    float H2[3 * D];
    memcpy(H2, H + 2 * N * D + 6 * D, 3 * D * sizeof(float));
    CHECK(eg_ladder_forward_step(m, 2, H2, part, &err) == EG_OK, "%s", err.msg);
    for (int c = 0; c < C; c++) {
        CHECK_CLOSE(part[c], full[2][2 * C + c], 1e-5);
    }
    int64_t labels[1] = {0};
    float loss;
    CHECK(eg_ladder_loss(m, labels, &loss, NULL, &err) == EG_ESTATE, "no loss after keep");
    uint8_t none[3] = {0, 0, 0};
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 0, 0, &err) == EG_OK, "%s", err.msg);
    CHECK(eg_ladder_keep(m, k1, &err) == EG_ESTATE, "keep before the first step refused");
    CHECK(eg_ladder_forward_step(m, 0, H, part, &err) == EG_OK, "%s", err.msg);
    CHECK(eg_ladder_keep(m, none, &err) == EG_EINVAL, "keeping nothing refused");
    CHECK(eg_ladder_begin(m, 3, GP, N, PTR, SRC, 1, 5, &err) == EG_OK, "%s", err.msg);
    CHECK(eg_ladder_forward_step(m, 0, H, part, &err) == EG_OK, "%s", err.msg);
    CHECK(eg_ladder_keep(m, k1, &err) == EG_ESTATE, "keep on a training batch refused");
    eg_ladder_free(m);
}

int main(void)
{
    test_rule();
    test_step_contract();
    test_keep(EG_GNN_SAGE, EG_NORM_ID);
    test_keep(EG_GNN_GAT, EG_NORM_LN);
    test_keep(EG_GNN_GCN, EG_NORM_BN);
    return eg_test_report("test_exit");
}
