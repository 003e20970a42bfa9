/* Wall-clock time, RFC 3339 formatting and ObjectId-style identifiers. */
#ifndef TMS_CORE_CLOCK_H
#define TMS_CORE_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/** Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t tms_now_ms(void);

/** Format ms since the epoch as RFC 3339 UTC with milliseconds
 * ("2026-11-28T14:00:00.000Z") into buf (at least 25 bytes). Returns buf. */
char *tms_format_time(int64_t ms, char *buf, size_t size);

/** A new MongoDB ObjectId as 24 lowercase hex characters plus NUL: 4-byte
 * seconds, 5 random bytes fixed per process, 3-byte counter. Thread-safe. */
void tms_objectid_new(char out[25]);

/** True when s is exactly 24 lowercase hex characters. */
int tms_objectid_valid(const char *s);

#endif
