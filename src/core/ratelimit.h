/* Token-bucket rate limiter keyed by string (client address, "email|address", user
 * id). Capacity `limit` tokens, refilled continuously at limit per window. Thread-safe:
 * one limiter serves the gateways of every worker loop, so a limit holds for the whole
 * process (each take holds one mutex for the O(1) update; uncontended below tens of
 * thousands of takes per second and core). Memory bounded by max_keys entries plus
 * their key strings. */
#ifndef TMS_CORE_RATELIMIT_H
#define TMS_CORE_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

typedef struct tms_ratelimit tms_ratelimit_t;

typedef struct tms_ratelimit_result {
    int allowed;            /* 1: go ahead; 0: answer 429 */
    uint32_t limit;         /* RateLimit-Limit */
    uint32_t remaining;     /* RateLimit-Remaining: whole tokens left after this take */
    uint64_t reset_s;       /* RateLimit-Reset: seconds until the bucket is full again */
    uint64_t retry_after_s; /* Retry-After when !allowed: seconds until one token, >= 1 */
} tms_ratelimit_result_t;

/** Create a limiter allowing limit requests per window_ms per key (limit 0 disables it:
 * every take is allowed) that keeps at most max_keys keys, evicting expired then least
 * recently used ones when full; returns NULL when window_ms or max_keys is 0 (with a
 * non-zero limit) or limit * window_ms overflows; the caller frees with
 * tms_ratelimit_free. */
tms_ratelimit_t *tms_ratelimit_new(uint32_t limit, uint64_t window_ms, size_t max_keys);

/** Free *rl and every key it holds and set *rl to NULL; a NULL *rl is fine. */
void tms_ratelimit_free(tms_ratelimit_t **rl);

/** Take one token from key's bucket at now_ms (a monotonic clock in milliseconds; a
 * time earlier than the key's last take counts as no time passing); the key is copied. */
tms_ratelimit_result_t tms_ratelimit_take(tms_ratelimit_t *rl, const char *key, uint64_t now_ms);

/** Number of keys currently held (for tests and metrics). */
size_t tms_ratelimit_size(const tms_ratelimit_t *rl);

#endif
