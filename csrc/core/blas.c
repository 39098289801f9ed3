/*
 * blas.c — the BLAS shim and thread control.
 *
 * The default build links OpenBLAS from the PyPI package scipy-openblas32,
 * whose symbols carry a `scipy_` prefix (scipy_cblas_sgemm, ...) so that it
 * never clashes with another OpenBLAS in the same process. A build with
 * ENGINE_PY_BLAS=system links the system OpenBLAS (unprefixed). The rest of
 * the core calls only eg_sgemm / eg_set_num_threads, so the prefix is known
 * in exactly one place. EG_BLAS_PREFIX is set by the build (setup.py or the
 * Makefile) to `scipy_` or left empty.
 */
#include "eg.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef EG_BLAS_PREFIX
#define EG_BLAS_PREFIX
#endif
#define EG_CAT_(a, b) a##b
#define EG_CAT(a, b) EG_CAT_(a, b)
#define BLAS(name) EG_CAT(EG_BLAS_PREFIX, name)

#ifndef EG_BLAS_NAME
#define EG_BLAS_NAME "openblas"
#endif

/* Not every cblas.h declares these (netlib's does not); OpenBLAS exports
 * them under the same prefix as cblas_*. */
void BLAS(openblas_set_num_threads)(int num_threads);
int BLAS(openblas_get_num_threads)(void);
char *BLAS(openblas_get_config)(void);

static int g_num_threads = 0; /* 0: not set yet, use the runtime default */

void eg_sgemm(int transA, int transB, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc)
{
    if (M <= 0 || N <= 0) {
        return;
    }
    BLAS(cblas_sgemm)(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                      transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                      lda, B, ldb, beta, C, ldc);
}

void eg_sgemm_naive(int transA, int transB, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb,
                    float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                float b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += (double)a * (double)b;
            }
            float *c = &C[(size_t)i * ldc + j];
            *c = (float)(alpha * acc + (beta == 0.0f ? 0.0 : (double)beta * *c));
        }
    }
}

void eg_set_num_threads(int n)
{
    if (n < 1) {
        n = 1;
    }
    g_num_threads = n;
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
    BLAS(openblas_set_num_threads)(n);
}

int eg_get_num_threads(void)
{
    if (g_num_threads > 0) {
        return g_num_threads;
    }
    return eg_omp_max_threads();
}

int eg_blas_get_num_threads(void)
{
    return BLAS(openblas_get_num_threads)();
}

int eg_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

const char *eg_blas_name(void)
{
    return EG_BLAS_NAME;
}

const char *eg_blas_config(void)
{
    const char *c = BLAS(openblas_get_config)();
    return c != NULL ? c : "";
}

#ifndef EG_BUILD_FLAGS
#define EG_BUILD_FLAGS "unknown"
#endif

const char *eg_build_flags(void)
{
    return EG_BUILD_FLAGS;
}
