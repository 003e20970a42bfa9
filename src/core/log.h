/* Structured logging: one line per event, logfmt style
 *   ts=2026-11-28T14:00:00.123Z level=info event=request method=GET status=200 ...
 * Never pass a password, token or secret to these functions. Thread-safe. */
#ifndef TMS_CORE_LOG_H
#define TMS_CORE_LOG_H

#include <stddef.h>

typedef enum tms_log_level {
    TMS_LOG_DEBUG = 0,
    TMS_LOG_INFO = 1,
    TMS_LOG_WARN = 2,
    TMS_LOG_ERROR = 3,
} tms_log_level_t;

/** Set the minimum level written (default INFO). */
void tms_log_set_level(tms_log_level_t level);

/** Parse "debug" | "info" | "warn" | "error"; returns 0 or -TMS_EINVAL. */
int tms_log_parse_level(const char *s, tms_log_level_t *out);

/** Write one line: ts, level, event, then the caller's key=value text (fmt). */
void tms_log(tms_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Quote a value for logfmt into buf: printable ASCII kept, quotes/backslashes
 * escaped, control bytes as \xNN, truncated to fit. Returns buf. */
const char *tms_log_quote(char *buf, size_t size, const char *s, size_t len);

#define tms_log_info(event, ...) tms_log(TMS_LOG_INFO, event, __VA_ARGS__)
#define tms_log_warn(event, ...) tms_log(TMS_LOG_WARN, event, __VA_ARGS__)
#define tms_log_error(event, ...) tms_log(TMS_LOG_ERROR, event, __VA_ARGS__)
#define tms_log_debug(event, ...) tms_log(TMS_LOG_DEBUG, event, __VA_ARGS__)

#endif
