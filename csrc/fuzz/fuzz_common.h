/*
 * fuzz_common.h — helpers shared by the libFuzzer harnesses in csrc/fuzz.
 *
 * Each harness defines LLVMFuzzerTestOneInput over one parser of the core and,
 * besides letting ASan/UBSan catch memory and undefined-behaviour errors,
 * checks invariants of what the parser accepted: FUZZ_CHECK traps (a crash the
 * fuzzer reports and minimises) when an invariant is broken. These files are
 * test code: they are never compiled into the extension (setup.py skips
 * csrc/fuzz).
 */
#ifndef EG_FUZZ_COMMON_H
#define EG_FUZZ_COMMON_H

#include "eg.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: ", __FILE__,     \
                    __LINE__, #cond);                                          \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

/* A cursor over the fuzz input for harnesses that derive several values. */
typedef struct {
    const uint8_t *p;
    size_t n;
} fuzz_in;

static inline uint64_t fuzz_u(fuzz_in *in, int bytes)
{
    uint64_t v = 0;
    for (int k = 0; k < bytes; k++) {
        if (in->n > 0) {
            v |= (uint64_t)in->p[0] << (8 * k);
            in->p++;
            in->n--;
        }
    }
    return v;
}

/* The status is one of the documented codes and failures carry a message. */
static inline void fuzz_check_status(eg_status st, const eg_err *err)
{
    FUZZ_CHECK(st == EG_OK || st == EG_EINVAL || st == EG_ECORRUPT || st == EG_EOVERFLOW ||
                   st == EG_ENOMEM || st == EG_EIO || st == EG_ESTATE,
               "unexpected status %d", (int)st);
    if (st != EG_OK) {
        FUZZ_CHECK(err->msg[0] != '\0', "status %d without a message", (int)st);
    }
}

#endif
