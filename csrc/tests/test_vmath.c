/*
 * test_vmath.c — the shared vector math (csrc/include/eg_vmath.h) that the
 * BERT kernels, the MoE-LoRA FFN and the decoder blocks use: every copy the
 * build has (eg_isa.h: baseline, AVX2, AVX-512) that this CPU can run gives
 * the same bits as the baseline copy, over ordinary values, the clamped
 * ranges, infinities and NaN; and the attention softmax row against a
 * double-precision softmax (the exp/erf/GELU accuracy tests are in
 * test_bert.c and test_ops.c).
 */
#include "eg.h"
#include "eg_isa.h"
#include "eg_test.h"

#include <string.h>

#define EG_ISA_BODY "../tests/vmath_isa_body.h"
#include "eg_isa.h"

enum { VM_FUNCS = 7 };

typedef struct {
    void (*rows)(float *, const float *, size_t);
    float (*softmax)(float *, size_t, size_t);
} vm_copy;

#define VM_SET(sfx) {EG_CAT2(vm_rows, sfx), EG_CAT2(vm_softmax, sfx)}
static const vm_copy copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(VM_SET);

static uint64_t rng = 12345;

static void test_elementwise_copies(void)
{
    enum { N = 4099 };
    static float x[N], base[VM_FUNCS * N], other[VM_FUNCS * N];
    const float special[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, 1e-40f, -1e-40f, 88.0f,
                             88.5f, -87.0f, -87.5f, -0.3f, -0.29999f, 1.0f, -1.0f, 10.0f,
                             -10.0f, 3e38f, -3e38f};
    const int ns = (int)(sizeof special / sizeof special[0]);
    for (int i = 0; i < N; i++) {
        x[i] = i < ns ? special[i]
             : i < 1000 ? -100.0f + 200.0f * (float)i / 1000.0f
                        : 6.0f * (float)eg_rng_normal(&rng);
    }
    copies[0].rows(base, x, N);
    int ran = 0;
    for (int level = 1; level < EG_ISA_NCOPIES; level++) {
        if (eg_isa_level() < level) {
            continue; /* this CPU cannot run that copy */
        }
        ran++;
        copies[level].rows(other, x, N);
        int first = -1;
        for (int i = 0; i < VM_FUNCS * N && first < 0; i++) {
            if (memcmp(&base[i], &other[i], sizeof(float)) != 0) {
                first = i;
            }
        }
        CHECK(first < 0, "%s copy differs from baseline: function %d, x = %g: %a vs %a",
              eg_isa_name(level), first / N, (double)x[first % N], (double)base[first],
              (double)other[first]);
    }
    printf("vmath: %d vector copies compared with the baseline (this CPU: %s)\n", ran,
           eg_isa_name(eg_isa_level()));
}

/* softmax_lanes against a double softmax: lengths around the lane width,
 * padding of several lane blocks, a large spread of scores; and every copy
 * gives the baseline's bits. */
static void test_softmax_lanes(void)
{
    enum { NP = 160 };
    static float s[NP], s0[NP], sc[NP];
    const size_t lens[] = {1, 2, 15, 16, 17, 31, 33, 100, 144, 160};
    /* relative error where p >= 1e-4 (of a tiny p it grows with the float
     * rounding of s - max, up to ~3e-6 at a spread of 50); absolute below */
    double worst_rel = 0.0, worst_abs = 0.0;
    for (size_t t = 0; t < sizeof lens / sizeof lens[0]; t++) {
        const size_t n = lens[t];
        const size_t np = (n + EG_VM_LANES - 1) / EG_VM_LANES * EG_VM_LANES + (t % 2) * 32;
        if (np > NP) {
            continue;
        }
        for (size_t j = 0; j < np; j++) {
            s[j] = j < n ? (float)(8.0 * eg_rng_normal(&rng)) : 1e30f; /* padding ignored */
        }
        memcpy(s0, s, sizeof s);
        double mx = -INFINITY, sum = 0.0;
        for (size_t j = 0; j < n; j++) {
            mx = s[j] > mx ? s[j] : mx;
        }
        for (size_t j = 0; j < n; j++) {
            sum += exp((double)s[j] - mx);
        }
        float inv = copies[0].softmax(s, n, np);
        for (size_t j = 0; j < np; j++) {
            double p = (double)s[j] * inv;
            double ref = j < n ? exp((double)s0[j] - mx) / sum : 0.0;
            double err = fabs(p - ref);
            if (ref >= 1e-4) {
                worst_rel = err / ref > worst_rel ? err / ref : worst_rel;
            }
            worst_abs = err > worst_abs ? err : worst_abs;
            CHECK(j < n || s[j] == 0.0f, "padding %zu of a row of %zu is %g", j, n, (double)s[j]);
        }
        for (int level = 1; level < EG_ISA_NCOPIES; level++) {
            if (eg_isa_level() < level) {
                continue;
            }
            memcpy(sc, s0, sizeof sc);
            float invc = copies[level].softmax(sc, n, np);
            CHECK(memcmp(sc, s, np * sizeof(float)) == 0 && memcmp(&inv, &invc, sizeof inv) == 0,
                  "%s softmax row of %zu differs from baseline", eg_isa_name(level), n);
        }
    }
    printf("softmax_lanes vs double: max relative error (p >= 1e-4) %.3g, max |error| %.3g\n",
           worst_rel, worst_abs);
    CHECK(worst_rel <= 1e-6, "softmax_lanes relative error %g", worst_rel);
    CHECK(worst_abs <= 3e-7, "softmax_lanes absolute error %g", worst_abs);
}

int main(void)
{
    test_elementwise_copies();
    test_softmax_lanes();
    return eg_test_report("test_vmath");
}
