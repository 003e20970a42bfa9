/* Status codes shared by every layer: the gRPC code set of shared/API.md for domain
 * outcomes, and negative tms_err codes for function failures. */
#ifndef TMS_CORE_STATUS_H
#define TMS_CORE_STATUS_H

#include <stddef.h>

/* Domain outcome of an operation; values equal the gRPC status codes. */
typedef enum tms_status {
    TMS_OK = 0,
    TMS_CANCELLED = 1,
    TMS_UNKNOWN = 2,
    TMS_INVALID_ARGUMENT = 3,
    TMS_DEADLINE_EXCEEDED = 4,
    TMS_NOT_FOUND = 5,
    TMS_ALREADY_EXISTS = 6,
    TMS_PERMISSION_DENIED = 7,
    TMS_RESOURCE_EXHAUSTED = 8,
    TMS_FAILED_PRECONDITION = 9,
    TMS_ABORTED = 10,
    TMS_OUT_OF_RANGE = 11,
    TMS_UNIMPLEMENTED = 12,
    TMS_INTERNAL = 13,
    TMS_UNAVAILABLE = 14,
    TMS_DATA_LOSS = 15,
    TMS_UNAUTHENTICATED = 16,
} tms_status_t;

/* Function failures (returned negated: 0 or -TMS_E...). */
enum tms_err {
    TMS_EINVAL = 1,  /* bad argument */
    TMS_EFULL = 2,   /* bounded queue full */
    TMS_ECLOSED = 3, /* target stopped or closing */
    TMS_EIO = 4,     /* I/O or library failure */
    TMS_ENOENT = 5,  /* not found */
    TMS_ERANGE = 6,  /* value out of range */
    TMS_EAGAIN = 7,  /* not now: a consumer is paused while a dependency is down */
};

/* A domain error: status plus a message safe to show to clients. */
typedef struct tms_error {
    tms_status_t code;
    char message[256];
} tms_error_t;

/** Set *e to code with a printf-style message (truncated to fit). */
void tms_error_set(tms_error_t *e, tms_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** The gRPC name of a status ("NOT_FOUND"); "UNKNOWN" for values out of range. */
const char *tms_status_name(tms_status_t s);

/** The HTTP status that API.md maps a status to (NOT_FOUND -> 404, ...). */
int tms_status_http(tms_status_t s);

/** A short text for a negative tms_err code. */
const char *tms_strerror(int err);

#endif
