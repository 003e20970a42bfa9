/* Token-bucket rate limiter keyed by string (client address, "email|address", user
 * id). Capacity `limit` tokens, refilled continuously at limit per window. Thread-safe:
 * one limiter serves the gateways of every worker loop, so a limit holds for the whole
 * process (each take holds one mutex for the O(1) update; uncontended below tens of
 * thousands of takes per second and core). Memory bounded by max_keys entries plus
 * their key strings. A key is forgotten only once its bucket is full again (forgetting
 * it then changes nothing): a table full of live keys refuses new keys instead of
 * evicting one, so a flood of new keys cannot reset someone's counter. */
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
    int table_full;         /* !allowed because a new key found max_keys live keys */
} tms_ratelimit_result_t;

/* Longest key tms_ratelimit_addr_key writes, NUL included ("<ipv6>/<prefix>"). */
#define TMS_ADDR_KEY_MAX 64

/** Create a limiter allowing limit requests per window_ms per key (limit 0 disables it:
 * every take is allowed) that keeps at most max_keys keys; a new key takes the place
 * of a least recently used one whose bucket is full again, and is refused
 * (table_full) when the least recently used ones are all still live; returns NULL when window_ms or
 * max_keys is 0 (with a non-zero limit) or limit * window_ms overflows; the caller frees with
 * tms_ratelimit_free. */
tms_ratelimit_t *tms_ratelimit_new(uint32_t limit, uint64_t window_ms, size_t max_keys);

/** Free *rl and every key it holds and set *rl to NULL; a NULL *rl is fine. */
void tms_ratelimit_free(tms_ratelimit_t **rl);

/** Take one token from key's bucket at now_ms (a monotonic clock in milliseconds; a
 * time earlier than the key's last take counts as no time passing); the key is copied. */
tms_ratelimit_result_t tms_ratelimit_take(tms_ratelimit_t *rl, const char *key, uint64_t now_ms);

/** Give one token back to key's bucket at now_ms (never above the limit): a take whose
 * call turned out not to count (a task creation that failed). Returns the whole tokens
 * left after it (RateLimit-Remaining); a key no longer held is full already. */
uint32_t tms_ratelimit_give_back(tms_ratelimit_t *rl, const char *key, uint64_t now_ms);

/** Number of keys currently held (for tests and metrics). */
size_t tms_ratelimit_size(const tms_ratelimit_t *rl);

/** The key that stands for client address ip (text, no port) in every per-address
 * limit: an IPv4 address as is (also when written IPv4-mapped, ::ffff:a.b.c.d), an
 * IPv6 address cut to its first v6_prefix bits (1..128) as "<network>/<prefix>", since
 * one IPv6 subscriber usually holds a whole /64. Writes at most out_len bytes
 * (TMS_ADDR_KEY_MAX is enough); returns 0, or -TMS_EINVAL when ip is not an address,
 * and then out is ip (cut to out_len). */
int tms_ratelimit_addr_key(const char *ip, unsigned v6_prefix, char *out, size_t out_len);

#endif
