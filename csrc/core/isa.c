/*
 * isa.c — which SIMD copy of the dispatched kernels runs (eg_isa.h).
 *
 * The level is the CPU's best (AVX-512, AVX2 + FMA, or baseline x86-64),
 * optionally capped by ENGINE_PY_ISA=generic|avx2|avx512|auto. Every copy of
 * a kernel computes the same operations in the same order, so the cap never
 * changes a result; it exists so that one machine can prove that, by
 * running the test suite on each copy (.ci/run does).
 *
 * The environment is read once, at the first call, and the answer cached in
 * an atomic: kernels call eg_isa_level() on every entry, and getenv is not
 * free (nor safe against a concurrent setenv).
 */
#include "eg_isa.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <strings.h>

static atomic_int g_level = -1;

int eg_isa_cpu_level(void)
{
#ifdef EG_X86_CLONES
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")) {
        return 2;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        return 1;
    }
#endif
    return 0;
}

/* The level ENGINE_PY_ISA asks for, or -1 when unset, "auto" or unknown. */
static int requested_level(void)
{
    const char *v = getenv("ENGINE_PY_ISA");
    if (v == NULL) {
        return -1;
    }
    if (strcasecmp(v, "generic") == 0) {
        return 0;
    }
    if (strcasecmp(v, "avx2") == 0) {
        return 1;
    }
    if (strcasecmp(v, "avx512") == 0) {
        return 2;
    }
    return -1;
}

int eg_isa_level(void)
{
    int level = atomic_load_explicit(&g_level, memory_order_relaxed);
    if (level < 0) {
        level = eg_isa_cpu_level();
        int want = requested_level();
        if (want >= 0 && want < level) {
            level = want;
        }
        atomic_store_explicit(&g_level, level, memory_order_relaxed);
    }
    return level;
}

const char *eg_isa_name(int level)
{
    switch (level) {
    case 2:
        return "avx512";
    case 1:
        return "avx2";
    default:
        return "generic";
    }
}
