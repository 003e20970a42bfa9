/* A bounded set of recently seen keys, each remembered for a fixed time: the gateway's
 * memory of the Idempotency-Keys that created a task, so that a replay is let through
 * to its stored answer when the creation limit is used up. Keys are kept as 16-byte
 * keyed hashes (a collision, about 2^-64 per pair, lets one call through that would
 * have waited); capacity slots of 24 bytes, allocated once; when the few slots a key may
 * use are all live, the one closest to expiry is forgotten. Thread-safe (one mutex, O(1)
 * per call). */
#ifndef TMS_CORE_SEEN_H
#define TMS_CORE_SEEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct tms_seen tms_seen_t;

/** A set of at most capacity keys (rounded up to a power of two, at least 64), each
 * kept ttl_ms after its last add. Never NULL. */
tms_seen_t *tms_seen_new(size_t capacity, uint64_t ttl_ms);

/** Free *s and set it NULL; NULL is fine. */
void tms_seen_free(tms_seen_t **s);

/** Remember key from now_ms (a monotonic clock in ms). */
void tms_seen_add(tms_seen_t *s, const char *key, uint64_t now_ms);

/** Whether key was added less than ttl_ms before now_ms (and not forgotten for room). */
bool tms_seen_has(tms_seen_t *s, const char *key, uint64_t now_ms);

#endif
