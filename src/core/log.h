/* Structured logging: one line per event, logfmt style
 *   ts=2026-11-28T14:00:00.123Z level=info event=request method=GET status=200 ...
 * Never pass a password, token or secret to these functions. Thread-safe.
 *
 * Lines go straight to stderr (one write each) until tms_log_start_writer; from then
 * until tms_log_stop_writer they are appended to a bounded buffer in memory that a
 * log thread writes out in batches, so that a request costs no system call for its
 * line and a slow sink (a full pipe, a stalled disk) never blocks the thread that
 * logs: when the buffer is full, lines are dropped and counted (tms_log_dropped,
 * tms_log_dropped_total in /metrics). The timestamp's date and time of day are
 * formatted once per second per thread. */
#ifndef TMS_CORE_LOG_H
#define TMS_CORE_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum tms_log_level {
    TMS_LOG_DEBUG = 0,
    TMS_LOG_INFO = 1,
    TMS_LOG_WARN = 2,
    TMS_LOG_ERROR = 3,
} tms_log_level_t;

/* Bytes of lines the buffered writer holds at most (twice: one buffer being filled,
 * one being written); beyond it lines are dropped and counted. A batch is 10 ms of
 * lines (log.c): 4 MiB holds 400 MB/s of them, some 2.6 million access-log lines a
 * second (one loop writes ~20 MB/s at 130,000 GETs/s). The pages are touched only as
 * far as a batch fills them. */
#define TMS_LOG_BUFFER_BYTES (4 * 1024 * 1024)

/* A line is cut at this many bytes. */
#define TMS_LOG_LINE_MAX 2048

/** Set the minimum level written (default INFO). */
void tms_log_set_level(tms_log_level_t level);

/** True when a line of this level would be written. */
bool tms_log_enabled(tms_log_level_t level);

/** Parse "debug" | "info" | "warn" | "error"; returns 0 or -TMS_EINVAL. */
int tms_log_parse_level(const char *s, tms_log_level_t *out);

/** Write one line: ts, level, event, then the caller's key=value text (fmt). */
void tms_log(tms_log_level_t level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/** Quote a value for logfmt into buf: printable ASCII kept, quotes/backslashes
 * escaped, control bytes as \xNN, truncated to fit. Returns buf. */
const char *tms_log_quote(char *buf, size_t size, const char *s, size_t len);

/** From now on, buffer lines and write them from a log thread (idempotent). Returns 0,
 * or -TMS_EIO when the thread cannot start (lines then stay unbuffered). */
int tms_log_start_writer(void);

/** Write out every buffered line, stop the log thread and go back to writing each
 * line at once (a clean shutdown loses nothing). No-op when no writer runs. */
void tms_log_stop_writer(void);

/** Before _exit: write out the lines buffered now from the calling thread (those the
 * log thread is writing at that moment may be cut short). */
void tms_log_flush_now(void);

/** On a loop thread: gather this thread's lines in a buffer of its own (16 KiB) until
 * tms_log_stage_flush, which the loop calls once per iteration (before it waits for
 * I/O) and when the buffer is full. tms_log_stage_stop flushes and ends it; call it
 * before the thread exits, or its last lines are lost. */
void tms_log_stage_start(void);
void tms_log_stage_flush(void);
void tms_log_stage_stop(void);

/** Lines dropped because the buffer was full, since start. */
uint64_t tms_log_dropped(void);

/* A line built piece by piece without printf (the access log of every request):
 *   tms_log_line_t l;
 *   if (tms_log_begin(&l, TMS_LOG_INFO, "request")) {
 *       tms_log_add(&l, " method=", 8); tms_log_add_str(&l, method); ...
 *       tms_log_end(&l);
 *   }
 * Pieces past TMS_LOG_LINE_MAX are cut. */
typedef struct tms_log_line {
    size_t len;
    char buf[TMS_LOG_LINE_MAX];
} tms_log_line_t;

/** Start a line (ts, level, event); false when the level is not written (then
 * nothing else need be called). */
bool tms_log_begin(tms_log_line_t *l, tms_log_level_t level, const char *event);

/** Append s[0..n) as it is. */
void tms_log_add(tms_log_line_t *l, const char *s, size_t n);

/** Append the NUL-terminated s as it is. */
void tms_log_add_str(tms_log_line_t *l, const char *s);

/** Append s[0..n) quoted as tms_log_quote does (at most max_out bytes of output). */
void tms_log_add_quoted(tms_log_line_t *l, const char *s, size_t n, size_t max_out);

/** Append a decimal integer. */
void tms_log_add_int(tms_log_line_t *l, int64_t v);

/** Append ns as milliseconds with three decimals ("12.345"). */
void tms_log_add_ms(tms_log_line_t *l, uint64_t ns);

/** Finish the line (newline) and write or buffer it. */
void tms_log_end(tms_log_line_t *l);

#define tms_log_info(event, ...) tms_log(TMS_LOG_INFO, event, __VA_ARGS__)
#define tms_log_warn(event, ...) tms_log(TMS_LOG_WARN, event, __VA_ARGS__)
#define tms_log_error(event, ...) tms_log(TMS_LOG_ERROR, event, __VA_ARGS__)
#define tms_log_debug(event, ...) tms_log(TMS_LOG_DEBUG, event, __VA_ARGS__)

#endif
