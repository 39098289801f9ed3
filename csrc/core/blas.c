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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
char *BLAS(openblas_get_corename)(void);

static int g_num_threads = 0; /* 0: not set yet, use the runtime default */

/* Sticky error of the BLAS thread callback (below): 0 none, 1 being
 * written, 2 set (g_blas_msg complete). The first failure wins; it is never
 * cleared, so a caller can ask after any amount of work whether one
 * happened (engine_py.info()["blas_error"]). The library never prints. */
static atomic_int g_blas_err_state = 0;
static char g_blas_msg[200];
/* Test hook: make the callback behave as if no thread could be started. */
static atomic_int g_blas_fail_threads_for_test = 0;

static void blas_record_error(const char *msg)
{
    int expected = 0;
    if (atomic_compare_exchange_strong(&g_blas_err_state, &expected, 1)) {
        snprintf(g_blas_msg, sizeof g_blas_msg, "%s", msg);
        atomic_store(&g_blas_err_state, 2);
    }
}

const char *eg_blas_last_error(void)
{
    return atomic_load(&g_blas_err_state) == 2 ? g_blas_msg : NULL;
}

/* One thread pool for everything. OpenBLAS (pthreads build) keeps its own
 * worker threads, which spin for a long while after each call: the core's
 * OpenMP regions that follow a GEMM then share the cores with spinning BLAS
 * threads (and OpenMP's spinning threads slow the next GEMM), which on a
 * 2-core machine made everything that is not GEMM several times slower.
 * OpenBLAS >= 0.3.27 lets the caller run its parallel jobs instead; we run
 * them on OpenMP's threads, so BLAS and the core's kernels share one pool.
 * All jobs of one call must run at the same time (OpenBLAS's GEMM threads
 * wait for each other's packed panels, so running them one after another
 * would deadlock), so each job gets its own thread; if OpenMP cannot give
 * that many (a call from inside a parallel region, which the core never
 * does, or a thread limit), the jobs run on plain pthreads, started behind
 * a gate so that either all of them run or none does. If not even that
 * works, no job runs: the callback records a sticky error and flags the
 * calling thread, and eg_sgemm computes the product itself, serially in
 * that thread, so the result is still right (only slower).
 * Enabled for the scipy-openblas32 build (prefix scipy_; new enough and
 * private to this module), not for a system OpenBLAS. */
#define EG_SCIPY_TEST_scipy_ 1 /* EG_SCIPY_TEST_ alone stays undefined: 0 in #if */
#if EG_CAT(EG_SCIPY_TEST_, EG_BLAS_PREFIX) && defined(_OPENMP) && !defined(EG_BLAS_NO_CALLBACK)
#define EG_BLAS_CALLBACK 1
#include <pthread.h>

/* BLAS calls that OpenBLAS split into more than one job (so: into this
 * callback), for eg_blas_parallel_calls. */
static atomic_long g_blas_parallel_calls = 0;

typedef void (*eg_dojob_fn)(int thread_num, void *jobdata, int dojob_data);
void BLAS(openblas_set_threads_callback_function)(
    void (*cb)(int, eg_dojob_fn, int, size_t, void *, int));

/* Set by the callback when it ran none of the jobs of the current call. */
static _Thread_local int tls_jobs_skipped = 0;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go; /* 0 wait, 1 run the job, -1 return without running it */
} start_gate;

typedef struct {
    eg_dojob_fn dojob;
    int index;
    void *jobdata;
    int dojob_data;
    start_gate *gate;
} pthread_job;

static void *run_pthread_job(void *arg)
{
    pthread_job *j = arg;
    pthread_mutex_lock(&j->gate->mu);
    while (j->gate->go == 0) {
        pthread_cond_wait(&j->gate->cv, &j->gate->mu);
    }
    int go = j->gate->go;
    pthread_mutex_unlock(&j->gate->mu);
    if (go > 0) {
        j->dojob(j->index, j->jobdata, j->dojob_data);
    }
    return NULL;
}

static void open_gate(start_gate *g, int go)
{
    pthread_mutex_lock(&g->mu);
    g->go = go;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Run numjobs jobs on numjobs concurrent threads (job 0 on the caller).
 * Returns 0, or -1 without having run any job. */
static int run_on_pthreads(eg_dojob_fn dojob, int numjobs, size_t elsize, void *jobdata,
                           int dojob_data)
{
    pthread_t tids[64];
    pthread_job jobs[64];
    start_gate gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
    if (numjobs > 64 || atomic_load(&g_blas_fail_threads_for_test)) {
        return -1;
    }
    int started = 0;
    for (int i = 1; i < numjobs; i++) {
        jobs[i] = (pthread_job){dojob, i, (char *)jobdata + (size_t)i * elsize, dojob_data,
                                &gate};
        if (pthread_create(&tids[i], NULL, run_pthread_job, &jobs[i]) != 0) {
            break;
        }
        started = i;
    }
    const int ok = started == numjobs - 1;
    open_gate(&gate, ok ? 1 : -1);
    if (ok) {
        dojob(0, jobdata, dojob_data);
    }
    for (int i = 1; i <= started; i++) {
        pthread_join(tids[i], NULL);
    }
    pthread_cond_destroy(&gate.cv);
    pthread_mutex_destroy(&gate.mu);
    return ok ? 0 : -1;
}

static void omp_blas_callback(int sync, eg_dojob_fn dojob, int numjobs, size_t elsize,
                              void *jobdata, int dojob_data)
{
    (void)sync;
    if (numjobs <= 1) {
        if (numjobs == 1) {
            dojob(0, jobdata, dojob_data);
        }
        return;
    }
    atomic_fetch_add(&g_blas_parallel_calls, 1);
    int team_ok = 1;
    if (!omp_in_parallel() && !atomic_load(&g_blas_fail_threads_for_test)) {
#pragma omp parallel num_threads(numjobs)
        {
            /* every thread sees the same team size, so all agree: either
             * every job runs here or none does */
            if (omp_get_num_threads() == numjobs) {
                int i = omp_get_thread_num();
                dojob(i, (char *)jobdata + (size_t)i * elsize, dojob_data);
            } else {
#pragma omp single
                team_ok = 0;
            }
        }
    } else {
        team_ok = 0;
    }
    if (!team_ok && run_on_pthreads(dojob, numjobs, elsize, jobdata, dojob_data) != 0) {
        blas_record_error("cannot start threads for a BLAS call; GEMMs fall back to a "
                          "serial loop in the calling thread (correct but slow)");
        tls_jobs_skipped = 1;
    }
}

__attribute__((constructor)) static void eg_blas_install_callback(void)
{
    BLAS(openblas_set_threads_callback_function)(omp_blas_callback);
}
#endif

int eg_blas_test_fail_threads(int on)
{
#ifdef EG_BLAS_CALLBACK
    atomic_store(&g_blas_fail_threads_for_test, on != 0);
    return 1;
#else
    (void)on;
    return 0;
#endif
}

long eg_blas_parallel_calls(void)
{
#ifdef EG_BLAS_CALLBACK
    return atomic_load(&g_blas_parallel_calls);
#else
    return -1;
#endif
}

void eg_sgemm(int transA, int transB, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta,
              float *C, int ldc)
{
    if (M <= 0 || N <= 0) {
        return;
    }
#ifdef EG_BLAS_CALLBACK
    /* If the callback has to skip the jobs, C must still be as the caller
     * gave it for the serial redo. OpenBLAS's threaded GEMM applies beta
     * inside the jobs, so a skipped call leaves C untouched; but a product
     * with one row or one column may be forwarded to GEMV, which scales C
     * by beta before threading: keep a copy of that vector (cheap). Only a
     * multi-threaded call can reach the callback. Without memory for the
     * copy the call goes ahead; a failure then leaves the sticky error and
     * C unreliable. test_core.c:test_blas_thread_failure checks all three
     * shapes against this OpenBLAS. */
    float *saved = NULL;
    if (beta != 0.0f && (M == 1 || N == 1) && BLAS(openblas_get_num_threads)() > 1) {
        saved = malloc((size_t)M * (size_t)N * sizeof(float));
        if (saved != NULL) {
            for (int i = 0; i < M; i++) {
                memcpy(saved + (size_t)i * N, C + (size_t)i * ldc, (size_t)N * sizeof(float));
            }
        }
    }
    tls_jobs_skipped = 0;
#endif
    BLAS(cblas_sgemm)(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                      transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,
                      lda, B, ldb, beta, C, ldc);
#ifdef EG_BLAS_CALLBACK
    if (tls_jobs_skipped) {
        tls_jobs_skipped = 0;
        if (saved != NULL) {
            for (int i = 0; i < M; i++) {
                memcpy(C + (size_t)i * ldc, saved + (size_t)i * N, (size_t)N * sizeof(float));
            }
        }
        if (saved != NULL || beta == 0.0f || (M > 1 && N > 1)) {
            eg_sgemm_naive(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        }
    }
    free(saved);
#endif
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

const char *eg_blas_corename(void)
{
    const char *c = BLAS(openblas_get_corename)();
    return c != NULL ? c : "";
}

