/* The set of recently seen keys (seen.h). */
#include "core/seen.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"

#define PROBE 8 /* slots a key may occupy, from its hash on */

typedef struct slot {
    unsigned char digest[16];
    uint64_t expires_ms; /* 0: empty */
} slot_t;

struct tms_seen {
    pthread_mutex_t lock;
    uint64_t ttl_ms;
    size_t mask; /* slots - 1 */
    slot_t *slots;
    /* Keyed: keys come from clients, so where they land must not be predictable. */
    unsigned char seed[crypto_generichash_KEYBYTES];
};

tms_seen_t *tms_seen_new(size_t capacity, uint64_t ttl_ms)
{
    tms_seen_t *s = tms_new(tms_seen_t);
    size_t n = 64;
    while (n < capacity)
        n *= 2;
    if (sodium_init() < 0)
        abort();
    s->ttl_ms = ttl_ms;
    s->mask = n - 1;
    s->slots = tms_calloc(n, sizeof(*s->slots));
    randombytes_buf(s->seed, sizeof(s->seed));
    pthread_mutex_init(&s->lock, NULL);
    return s;
}

void tms_seen_free(tms_seen_t **ps)
{
    tms_seen_t *s = *ps;
    if (!s)
        return;
    *ps = NULL;
    pthread_mutex_destroy(&s->lock);
    free(s->slots);
    free(s);
}

static size_t digest(const tms_seen_t *s, const char *key, unsigned char out[16])
{
    size_t at;
    crypto_generichash(out, 16, (const unsigned char *)key, strlen(key), s->seed, sizeof(s->seed));
    memcpy(&at, out, sizeof(at));
    return at;
}

void tms_seen_add(tms_seen_t *s, const char *key, uint64_t now_ms)
{
    unsigned char d[16];
    size_t at = digest(s, key, d);
    slot_t *use = NULL;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < PROBE; i++) {
        slot_t *sl = &s->slots[(at + i) & s->mask];
        if (sl->expires_ms > now_ms && memcmp(sl->digest, d, 16) == 0) {
            use = sl; /* already there: its time starts again */
            break;
        }
        if (!use || sl->expires_ms < use->expires_ms)
            use = sl; /* an empty or expired slot, else the one closest to expiry */
    }
    memcpy(use->digest, d, 16);
    use->expires_ms = now_ms + s->ttl_ms;
    pthread_mutex_unlock(&s->lock);
}

bool tms_seen_has(tms_seen_t *s, const char *key, uint64_t now_ms)
{
    unsigned char d[16];
    size_t at = digest(s, key, d);
    bool found = false;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < PROBE && !found; i++) {
        const slot_t *sl = &s->slots[(at + i) & s->mask];
        found = sl->expires_ms > now_ms && memcmp(sl->digest, d, 16) == 0;
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}
