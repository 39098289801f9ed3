/*
 * eg_isa.h — compile a kernel body once per x86 instruction set and pick
 * one copy at run time, so the package needs no -march flag at build time
 * yet uses AVX2 / AVX-512 where the CPU has them. Not a public header.
 *
 * In a .c file:
 *     #define EG_ISA_BODY "../models/bert_simd.h"  // path from csrc/include
 *     #include "eg_isa.h"
 * includes the body with SFX(name) expanding to name_base and, on x86-64
 * with GCC or Clang (EG_X86_CLONES), name_avx2 and name_avx512, each under
 * its `#pragma GCC target`. Every copy is also compiled with
 * -fno-trapping-math (gcc): no FP exception is ever unmasked, and it lets
 * gcc if-convert selects. No copy changes a result: there is no
 * -ffast-math, no reassociation and no FMA contraction (-std=c11 keeps
 * fp-contract off), so every copy computes the same operations in the same
 * order as long as the body fixes its reduction order (fixed lanes, not
 * `omp simd reduction`, whose order follows the vector width).
 *
 * eg_isa_level() gives 2 (AVX-512 F/VL/BW/DQ), 1 (AVX2 + FMA) or 0.
 * __builtin_cpu_supports reads a table filled at program start, so calling
 * it on every kernel entry is cheap and needs no lock.
 */
#ifndef EG_ISA_H
#define EG_ISA_H

#define EG_CAT2_(a, b) a##b
#define EG_CAT2(a, b) EG_CAT2_(a, b)

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(EG_NO_SIMD_CLONES)
#define EG_X86_CLONES 1
#endif

static inline int eg_isa_level(void)
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
#endif /* EG_ISA_H */

#ifdef EG_ISA_BODY
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#endif
#define SFX(name) EG_CAT2(name, _base)
#include EG_ISA_BODY
#undef SFX
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#ifdef EG_X86_CLONES
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#if !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#define SFX(name) EG_CAT2(name, _avx2)
#include EG_ISA_BODY
#undef SFX
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,bmi2")
#if !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#define SFX(name) EG_CAT2(name, _avx512)
#include EG_ISA_BODY
#undef SFX
#pragma GCC pop_options
#endif
#undef EG_ISA_BODY
#endif
