/*
 * eg.h — public C API of the engine_py core.
 *
 * The core is plain C11 + OpenMP + BLAS. It never includes Python.h: the
 * Python glue lives in engine_py/_core*.c and is the only code that talks to
 * the interpreter. Everything here can be linked into a C-only test binary.
 *
 * Conventions (see docs/DESIGN.md):
 *   - Kernels (ops) return void and trust validated arguments.
 *   - Functions that touch files, allocate, or validate user data return an
 *     eg_status and write a human-readable message into an eg_err buffer.
 *   - Nothing reachable from input calls exit/abort/assert.
 */
#ifndef EG_H
#define EG_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define EG_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------ status */

typedef enum {
    EG_OK = 0,
    EG_ENOMEM,      /* allocation failed                         -> MemoryError  */
    EG_EINVAL,      /* bad argument / shape / value              -> ValueError   */
    EG_EIO,         /* the OS refused a file operation           -> OSError      */
    EG_ECORRUPT,    /* a file breaks its format's rules          -> format error */
    EG_ESTATE,      /* object used in the wrong state            -> RuntimeError */
    EG_EOVERFLOW,   /* a size computation would overflow         -> ValueError   */
    EG_EINTR        /* interrupted on request                    -> KeyboardInterrupt */
} eg_status;

#define EG_ERR_MSG_LEN 512

/* A per-call (or per-object) error buffer. The core writes one message into
 * it when it returns a status other than EG_OK. */
typedef struct {
    eg_status status;
    char msg[EG_ERR_MSG_LEN];
} eg_err;

/* Record `st` and a printf-style message in `err` (which may be NULL) and
 * return `st`, so a failing path reads `return eg_seterr(err, EG_EINVAL, ...)`. */
eg_status eg_seterr(eg_err *err, eg_status st, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void eg_err_clear(eg_err *err);
const char *eg_status_name(eg_status st);

/* ----------------------------------------------------- checked arithmetic */
/* Return 1 (and leave *out unspecified) if the operation overflows. Use these
 * for every size derived from a file or from a user. */
static inline int eg_mul_ovf(size_t a, size_t b, size_t *out) { return __builtin_mul_overflow(a, b, out); }
static inline int eg_add_ovf(size_t a, size_t b, size_t *out) { return __builtin_add_overflow(a, b, out); }

/* ------------------------------------------------------------------- memory */

#define EG_ALIGN 64

/* 64-byte aligned allocation; NULL on failure or on bytes == 0 overflow. */
void *eg_aligned_alloc(size_t bytes);
void eg_aligned_free(void *p);

/* Arena: bump allocator for per-call scratch. Allocations are 64-byte aligned
 * and live until eg_arena_reset. When a block is full a new one is chained, so
 * a call never fails half-way for lack of arena space (only on real ENOMEM);
 * reset coalesces the blocks into one of the high-water size, so a steady
 * workload allocates once. */
typedef struct eg_arena_block eg_arena_block;
typedef struct {
    eg_arena_block *head;   /* current block (newest first) */
    size_t high_water;      /* max bytes in use between two resets */
    size_t in_use;
} eg_arena;

void eg_arena_init(eg_arena *a);
void *eg_arena_alloc(eg_arena *a, size_t bytes);          /* NULL on ENOMEM */
void *eg_arena_alloc_n(eg_arena *a, size_t n, size_t size); /* checked n*size */
void eg_arena_reset(eg_arena *a);
void eg_arena_free(eg_arena *a);
/* Number of chained blocks (1 after a reset of a steady workload). */
size_t eg_arena_num_blocks(const eg_arena *a);

/* ------------------------------------------------------------------ threads */

/* Set the thread count for both OpenMP regions and BLAS. n >= 1. */
void eg_set_num_threads(int n);
int eg_get_num_threads(void);
int eg_blas_get_num_threads(void);
int eg_omp_max_threads(void);
/* A static description of the BLAS in use ("scipy-openblas32 ...", "system
 * openblas ..."), owned by the library. */
const char *eg_blas_name(void);
const char *eg_blas_config(void);
/* The compute kernel OpenBLAS picked for this CPU (openblas_get_corename:
 * "Haswell", "SkylakeX", "Zen" ...; OPENBLAS_CORETYPE overrides its choice),
 * owned by the library; "" if OpenBLAS does not say. */
const char *eg_blas_corename(void);
/* The sticky BLAS error: NULL while none happened, else a static message
 * (owned by the library) about the first one. Set when OpenBLAS's parallel
 * jobs could not be given threads; eg_sgemm then computed that product
 * serially in the calling thread, so results stay right (see blas.c). */
const char *eg_blas_last_error(void);
/* Test hook: on != 0 makes every multi-threaded BLAS call behave as if no
 * thread could be started. Returns 0 when this build has no BLAS thread
 * callback (system OpenBLAS): the hook then does nothing. */
int eg_blas_test_fail_threads(int on);
/* How many BLAS calls OpenBLAS has split into more than one job since the
 * library was loaded (so: ran multi-threaded); -1 when this build cannot
 * tell (no thread callback: system OpenBLAS). For tests of thread limits. */
long eg_blas_parallel_calls(void);

/* ---------------------------------------------------------------------- BLAS */
/* Row-major sgemm: C = alpha * op(A) op(B) + beta * C. transX is 0 or 1.
 * Dimensions must be validated by the caller (they must fit in int). Never
 * call from inside an OpenMP parallel region. */
void eg_sgemm(int transA, int transB, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc);
/* The same, by triple loop: the reference the tests compare against. */
void eg_sgemm_naive(int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc);

/* ---------------------------------------------------------------------- RNG */
/* Explicit-state generator (splitmix64 stream): the caller owns the state, so
 * results depend only on the seed, never on global state or thread count. */
/* Inline: the dropout and sampler loops call it once per element. */
static inline uint64_t eg_rng_next(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform float in [0, 1) with 24 random bits. */
float eg_rng_uniform(uint64_t *state);
/* Uniform integer in [0, n), n >= 1, without modulo bias. */
uint64_t eg_rng_below(uint64_t *state, uint64_t n);
/* Standard normal (Box-Muller). */
float eg_rng_normal(uint64_t *state);
/* Derive an independent stream seed from (seed, stream id). */
static inline uint64_t eg_rng_derive(uint64_t seed, uint64_t stream)
{
    uint64_t s = seed ^ (stream * 0xD1342543DE82EF95ull + 0x2545F4914F6CDD1Dull);
    return eg_rng_next(&s);
}

/* -------------------------------------------------------------- fp16 / bf16 */
/* IEEE half and bfloat16 conversions. float -> half/bf16 rounds to nearest
 * even, overflows to inf, keeps NaN a (quiet) NaN. Loops are branch-light so
 * the compiler can vectorise them. */
void eg_f16_to_f32(const uint16_t *src, float *dst, size_t n);
void eg_f32_to_f16(const float *src, uint16_t *dst, size_t n);
void eg_bf16_to_f32(const uint16_t *src, float *dst, size_t n);
void eg_f32_to_bf16(const float *src, uint16_t *dst, size_t n);

/* -------------------------------------------------------------------- UTF-8 */
/* Strict (RFC 3629) decoding shared by the JSON reader and the tokenizer. */

/* Decode one code point from s[0..n). Returns the number of bytes used (1..4)
 * and stores the code point in *cp; returns 0 if the bytes at s do not start
 * a well-formed UTF-8 sequence (truncated, stray continuation byte, overlong
 * form, surrogate U+D800..U+DFFF, above U+10FFFF, or n == 0). */
size_t eg_utf8_decode1(const uint8_t *s, size_t n, uint32_t *cp);

/* Encode cp into out (4 bytes of room). Returns 1..4, or 0 if cp is a
 * surrogate or above U+10FFFF. */
size_t eg_utf8_encode1(uint32_t cp, uint8_t out[4]);

/* Check that s[0..n) is entirely well-formed UTF-8. Returns 1 if it is;
 * otherwise 0 and the byte offset of the first bad sequence in *bad_at
 * (bad_at may be NULL). */
int eg_utf8_valid(const char *s, size_t n, size_t *bad_at);

/* --------------------------------------------------------------- build info */
/* Compiler flags the core was built with (set by the build). */
const char *eg_build_flags(void);
/* The instruction set of the core's run-time dispatched kernels: see
 * eg_isa.h (eg_isa_level, eg_isa_name). */

#ifdef __cplusplus
}
#endif
#endif /* EG_H */
