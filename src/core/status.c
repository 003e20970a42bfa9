#include "core/status.h"

#include <stdarg.h>
#include <stdio.h>

void tms_error_set(tms_error_t *e, tms_status_t code, const char *fmt, ...)
{
    va_list ap;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof(e->message), fmt, ap);
    va_end(ap);
}

static const char *const names[] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

const char *tms_status_name(tms_status_t s)
{
    if ((unsigned)s >= sizeof(names) / sizeof(names[0]))
        return "UNKNOWN";
    return names[s];
}

int tms_status_http(tms_status_t s)
{
    switch (s) {
    case TMS_OK:
        return 200;
    case TMS_INVALID_ARGUMENT:
    case TMS_OUT_OF_RANGE:
        return 400;
    case TMS_UNAUTHENTICATED:
        return 401;
    case TMS_PERMISSION_DENIED:
        return 403;
    case TMS_NOT_FOUND:
        return 404;
    case TMS_ALREADY_EXISTS:
    case TMS_ABORTED:
        return 409;
    case TMS_FAILED_PRECONDITION:
        return 412;
    case TMS_RESOURCE_EXHAUSTED:
        return 429;
    case TMS_CANCELLED:
        return 499;
    case TMS_UNIMPLEMENTED:
        return 501;
    case TMS_UNAVAILABLE:
        return 503;
    case TMS_DEADLINE_EXCEEDED:
        return 504;
    default:
        return 500;
    }
}

const char *tms_strerror(int err)
{
    switch (-err) {
    case 0:
        return "ok";
    case TMS_EINVAL:
        return "invalid argument";
    case TMS_EFULL:
        return "queue full";
    case TMS_ECLOSED:
        return "closed";
    case TMS_EIO:
        return "i/o error";
    case TMS_ENOENT:
        return "not found";
    case TMS_ERANGE:
        return "out of range";
    case TMS_EAGAIN:
        return "paused, try again later";
    default:
        return "unknown error";
    }
}
