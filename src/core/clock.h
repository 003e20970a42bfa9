/* Wall-clock and monotonic time, RFC 3339 formatting (identifiers: core/objectid.h). */
#ifndef TMS_CORE_CLOCK_H
#define TMS_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/** Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t tms_now_ms(void);

/** Milliseconds of CLOCK_MONOTONIC: for intervals, comparable across threads (a loop's
 * uv_now is not). */
uint64_t tms_mono_ms(void);

/** Format ms since the epoch as RFC 3339 UTC with milliseconds
 * ("2026-11-28T14:00:00.000Z") into buf (at least 25 bytes). Returns buf. */
char *tms_format_time(int64_t ms, char *buf, size_t size);

#endif
