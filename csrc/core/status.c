/*
 * status.c — the one way the core reports errors: an eg_status code plus a
 * message in a caller-owned eg_err buffer. The Python glue maps the code to
 * an exception class and uses the message verbatim.
 */
#include "eg.h"

#include <stdio.h>
#include <string.h>

eg_status eg_seterr(eg_err *err, eg_status st, const char *fmt, ...)
{
    if (err != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = st;
    }
    return st;
}

void eg_err_clear(eg_err *err)
{
    if (err != NULL) {
        err->status = EG_OK;
        err->msg[0] = '\0';
    }
}

const char *eg_status_name(eg_status st)
{
    switch (st) {
    case EG_OK: return "EG_OK";
    case EG_ENOMEM: return "EG_ENOMEM";
    case EG_EINVAL: return "EG_EINVAL";
    case EG_EIO: return "EG_EIO";
    case EG_ECORRUPT: return "EG_ECORRUPT";
    case EG_ESTATE: return "EG_ESTATE";
    case EG_EOVERFLOW: return "EG_EOVERFLOW";
    case EG_EINTR: return "EG_EINTR";
    }
    return "EG_UNKNOWN";
}
