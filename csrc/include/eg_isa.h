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
 * The copies are gathered in one table per body, indexed by level:
 *     static const my_kernels copies[EG_ISA_NCOPIES] = EG_ISA_COPIES(MY_SET);
 * where MY_SET(sfx) builds one entry from the functions named ..._sfx, and
 * picked with copies[eg_isa_level()]. eg_isa_level() is the one place that
 * decides which copy runs (every dispatch goes through it); it gives 2
 * (AVX-512 F/VL/BW/DQ), 1 (AVX2 + FMA) or 0, never more than the build has
 * copies for, capped by ENGINE_PY_ISA; it is computed once and cached, so
 * calling it on every kernel entry is cheap and needs no lock.
 */
#ifndef EG_ISA_H
#define EG_ISA_H

#define EG_CAT2_(a, b) a##b
#define EG_CAT2(a, b) EG_CAT2_(a, b)

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && !defined(EG_NO_SIMD_CLONES)
#define EG_X86_CLONES 1
#endif

/* The SIMD level the core's dispatched kernels use: the CPU's best level
 * (2 AVX-512 F/VL/BW/DQ, 1 AVX2 + FMA, 0 baseline), capped by the
 * environment variable ENGINE_PY_ISA (generic|avx2|avx512|auto), read once
 * at the first call. The cap exists so that one machine can run the AVX2
 * and generic copies of every kernel (CI does: they must give the same bits).
 * An unknown value or a level above the CPU's is ignored here (the core
 * never fails on an environment variable); engine_py's import checks the
 * value first and raises with a clear message. Defined in core/isa.c. */
int eg_isa_level(void);

/* The CPU's own best level, ignoring ENGINE_PY_ISA. */
int eg_isa_cpu_level(void);

/* "generic", "avx2" or "avx512" for a level 0..2. */
const char *eg_isa_name(int level);

/* The initialiser of a table of kernel copies, one per level (see above),
 * and its length. */
#ifdef EG_X86_CLONES
#define EG_ISA_NCOPIES 3
#define EG_ISA_COPIES(SET) {SET(_base), SET(_avx2), SET(_avx512)}
#else
#define EG_ISA_NCOPIES 1
#define EG_ISA_COPIES(SET) {SET(_base)}
#endif
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
