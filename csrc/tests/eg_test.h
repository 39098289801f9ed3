/*
 * eg_test.h — a minimal test harness for the C-only tests.
 *
 * CHECK(cond, fmt, ...) records a failure and continues; each test binary's
 * main returns eg_test_report(), non-zero if anything failed, so `make test`
 * stops on the first failing binary and prints every failed check in it.
 */
#ifndef EG_TEST_H
#define EG_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

static int eg_test_checks = 0;
static int eg_test_failures = 0;

#define CHECK(cond, ...)                                                       \
    do {                                                                       \
        eg_test_checks++;                                                      \
        if (!(cond)) {                                                         \
            eg_test_failures++;                                                \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);    \
            fprintf(stderr, __VA_ARGS__);                                      \
            fprintf(stderr, "\n");                                             \
        }                                                                      \
    } while (0)

#define CHECK_CLOSE(a, b, tol)                                                 \
    CHECK(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)",   \
          (double)(a), (double)(b), (double)(tol))

static inline int eg_test_report(const char *name)
{
    printf("%s: %d checks, %d failures\n", name, eg_test_checks, eg_test_failures);
    if (eg_test_checks == 0) {
        fprintf(stderr, "%s: no checks ran\n", name);
        return 1;
    }
    return eg_test_failures == 0 ? 0 : 1;
}

#endif
