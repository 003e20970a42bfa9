#include "core/ratelimit.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/status.h"
#include "core/text.h"

/* Levels are kept in units of 1/window_ms token, so that a millisecond refills exactly
 * `limit` units and a take costs exactly `window_ms` units: integer arithmetic only. */

#define MIN_BUCKETS 64
/* Expired entries dropped from the LRU tail per take: keeps take O(1). */
#define SWEEP_PER_TAKE 2
/* Entries from the LRU tail a new key may replace when the table is full. */
#define EVICT_SCAN 8

typedef struct entry {
    struct entry *hnext;               /* hash chain */
    struct entry *lru_prev, *lru_next; /* lru_prev towards most recently used */
    uint64_t hash;
    uint64_t level; /* units, 0..cap */
    uint64_t last_ms;
    size_t key_len;
    char key[]; /* NUL-terminated */
} entry_t;

struct tms_ratelimit {
    pthread_mutex_t lock; /* everything below */
    uint32_t limit;
    uint64_t window_ms;
    uint64_t cap; /* limit * window_ms */
    size_t max_keys;
    size_t count;
    size_t nbuckets; /* power of two */
    entry_t **buckets;
    entry_t *mru, *lru; /* both ends of the recency list */
    /* Keyed hash: keys come from clients, so chains must not be predictable. */
    unsigned char seed[crypto_shorthash_KEYBYTES];
};

tms_ratelimit_t *tms_ratelimit_new(uint32_t limit, uint64_t window_ms, size_t max_keys)
{
    tms_ratelimit_t *rl;

    if (limit > 0 && (window_ms == 0 || max_keys == 0 || window_ms > UINT64_MAX / limit))
        return NULL;
    if (sodium_init() < 0)
        return NULL;
    rl = tms_new(tms_ratelimit_t);
    rl->limit = limit;
    rl->window_ms = window_ms;
    rl->cap = (uint64_t)limit * window_ms;
    rl->max_keys = max_keys;
    rl->nbuckets = MIN_BUCKETS;
    rl->buckets = tms_calloc(rl->nbuckets, sizeof *rl->buckets);
    randombytes_buf(rl->seed, sizeof rl->seed);
    pthread_mutex_init(&rl->lock, NULL);
    return rl;
}

void tms_ratelimit_free(tms_ratelimit_t **prl)
{
    tms_ratelimit_t *rl;
    entry_t *e, *next;

    if (!prl || !*prl)
        return;
    rl = *prl;
    for (e = rl->mru; e; e = next) {
        next = e->lru_next;
        free(e);
    }
    free(rl->buckets);
    pthread_mutex_destroy(&rl->lock);
    free(rl);
    *prl = NULL;
}

size_t tms_ratelimit_size(const tms_ratelimit_t *rl)
{
    size_t n;
    if (!rl)
        return 0;
    pthread_mutex_lock(&((tms_ratelimit_t *)rl)->lock);
    n = rl->count;
    pthread_mutex_unlock(&((tms_ratelimit_t *)rl)->lock);
    return n;
}

static uint64_t hash_key(const tms_ratelimit_t *rl, const char *key, size_t len)
{
    unsigned char h[crypto_shorthash_BYTES];
    uint64_t v;

    crypto_shorthash(h, (const unsigned char *)key, len, rl->seed);
    memcpy(&v, h, sizeof v);
    return v;
}

static void lru_unlink(tms_ratelimit_t *rl, entry_t *e)
{
    if (e->lru_prev)
        e->lru_prev->lru_next = e->lru_next;
    else
        rl->mru = e->lru_next;
    if (e->lru_next)
        e->lru_next->lru_prev = e->lru_prev;
    else
        rl->lru = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}

static void lru_push_front(tms_ratelimit_t *rl, entry_t *e)
{
    e->lru_prev = NULL;
    e->lru_next = rl->mru;
    if (rl->mru)
        rl->mru->lru_prev = e;
    rl->mru = e;
    if (!rl->lru)
        rl->lru = e;
}

static void remove_entry(tms_ratelimit_t *rl, entry_t *e)
{
    entry_t **pp = &rl->buckets[e->hash & (rl->nbuckets - 1)];

    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(rl, e);
    rl->count--;
    free(e);
}

/* Double the bucket array once the load factor passes 1; O(n), amortised O(1). */
static void maybe_grow(tms_ratelimit_t *rl)
{
    size_t n = rl->nbuckets * 2, i;
    entry_t **b, *e, *next;

    if (rl->count <= rl->nbuckets || n / 2 > rl->max_keys)
        return;
    b = tms_calloc(n, sizeof *b);
    for (i = 0; i < rl->nbuckets; i++) {
        for (e = rl->buckets[i]; e; e = next) {
            next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(rl->buckets);
    rl->buckets = b;
    rl->nbuckets = n;
}

/* An entry untouched for a whole window is full again: dropping it changes nothing. */
static int expired(const tms_ratelimit_t *rl, const entry_t *e, uint64_t now_ms)
{
    return now_ms >= e->last_ms && now_ms - e->last_ms >= rl->window_ms;
}

static entry_t *lookup(tms_ratelimit_t *rl, const char *key, size_t len, uint64_t h)
{
    entry_t *e;

    for (e = rl->buckets[h & (rl->nbuckets - 1)]; e; e = e->hnext) {
        if (e->hash == h && e->key_len == len && memcmp(e->key, key, len) == 0)
            return e;
    }
    return NULL;
}

/* e's level at now_ms, refilled since its last take. */
static uint64_t level_at(const tms_ratelimit_t *rl, const entry_t *e, uint64_t now_ms)
{
    uint64_t elapsed = now_ms > e->last_ms ? now_ms - e->last_ms : 0;
    if (elapsed >= rl->window_ms || rl->cap - e->level <= elapsed * rl->limit)
        return rl->cap;
    return e->level + elapsed * rl->limit;
}

/* Makes room for one key: drops an entry of the LRU tail whose bucket is full again
 * (dropping it changes nothing). Returns false when the EVICT_SCAN least recently
 * used ones are all live: forgetting one would hand a client fresh tokens early. */
static int make_room(tms_ratelimit_t *rl, uint64_t now_ms)
{
    entry_t *e = rl->lru;
    for (int i = 0; i < EVICT_SCAN && e; i++, e = e->lru_prev) {
        if (level_at(rl, e, now_ms) == rl->cap) {
            remove_entry(rl, e);
            return 1;
        }
    }
    return 0;
}

static entry_t *insert(tms_ratelimit_t *rl, const char *key, size_t len, uint64_t h,
                       uint64_t now_ms)
{
    entry_t *e;
    size_t slot;

    if (rl->count >= rl->max_keys && !make_room(rl, now_ms))
        return NULL;
    e = tms_malloc(sizeof *e + len + 1);
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, len);
    e->key[len] = '\0';
    e->key_len = len;
    e->hash = h;
    e->level = rl->cap;
    e->last_ms = now_ms;
    slot = h & (rl->nbuckets - 1);
    e->hnext = rl->buckets[slot];
    rl->buckets[slot] = e;
    lru_push_front(rl, e);
    rl->count++;
    maybe_grow(rl);
    return e;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

tms_ratelimit_result_t tms_ratelimit_take(tms_ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    tms_ratelimit_result_t r = {.allowed = 1};
    entry_t *e;
    size_t len;
    uint64_t h;
    int i;

    if (!rl || rl->limit == 0)
        return r;
    if (!key)
        key = "";
    r.limit = rl->limit;
    len = strlen(key);
    h = hash_key(rl, key, len);

    pthread_mutex_lock(&rl->lock);
    e = lookup(rl, key, len, h);
    for (i = 0; i < SWEEP_PER_TAKE && rl->lru && rl->lru != e && expired(rl, rl->lru, now_ms); i++)
        remove_entry(rl, rl->lru);

    if (e) {
        if (now_ms > e->last_ms) {
            e->level = level_at(rl, e, now_ms);
            e->last_ms = now_ms;
        }
        lru_unlink(rl, e);
        lru_push_front(rl, e);
    } else if (!(e = insert(rl, key, len, h, now_ms))) {
        /* Full of live keys: refused until the least recently used one is full again. */
        uint64_t wait_ms = ceil_div(rl->cap - level_at(rl, rl->lru, now_ms), rl->limit);
        r.allowed = 0;
        r.table_full = 1;
        r.retry_after_s = wait_ms > 1000 ? ceil_div(wait_ms, 1000) : 1;
        r.reset_s = r.retry_after_s;
        pthread_mutex_unlock(&rl->lock);
        return r;
    }

    if (e->level >= rl->window_ms) {
        e->level -= rl->window_ms;
    } else {
        uint64_t wait_ms = ceil_div(rl->window_ms - e->level, rl->limit);
        r.allowed = 0;
        r.retry_after_s = ceil_div(wait_ms, 1000);
        if (r.retry_after_s == 0)
            r.retry_after_s = 1;
    }
    r.remaining = (uint32_t)(e->level / rl->window_ms);
    r.reset_s = ceil_div(ceil_div(rl->cap - e->level, rl->limit), 1000);
    pthread_mutex_unlock(&rl->lock);
    return r;
}

uint32_t tms_ratelimit_give_back(tms_ratelimit_t *rl, const char *key, uint64_t now_ms)
{
    entry_t *e;
    size_t len;
    uint32_t left;
    if (!rl || rl->limit == 0)
        return 0;
    if (!key)
        key = "";
    len = strlen(key);
    pthread_mutex_lock(&rl->lock);
    e = lookup(rl, key, len, hash_key(rl, key, len));
    if (!e) {
        pthread_mutex_unlock(&rl->lock);
        return rl->limit;
    }
    if (now_ms > e->last_ms) {
        e->level = level_at(rl, e, now_ms);
        e->last_ms = now_ms;
    }
    e->level = rl->cap - e->level <= rl->window_ms ? rl->cap : e->level + rl->window_ms;
    left = (uint32_t)(e->level / rl->window_ms);
    pthread_mutex_unlock(&rl->lock);
    return left;
}

int tms_ratelimit_addr_key(const char *ip, unsigned v6_prefix, char *out, size_t out_len)
{
    unsigned char a[16];
    char net[INET6_ADDRSTRLEN];
    if (!out_len)
        return -TMS_EINVAL;
    if (inet_pton(AF_INET, ip, a) == 1) { /* every request: no printf here (issue 19) */
        tms_text_copy(out, out_len, ip);
        return 0;
    }
    if (inet_pton(AF_INET6, ip, a) != 1) {
        tms_text_copy(out, out_len, ip);
        return -TMS_EINVAL;
    }
    /* ::ffff:a.b.c.d is an IPv4 client on a dual-stack socket. */
    if (memcmp(a, "\0\0\0\0\0\0\0\0\0\0\xff\xff", 12) == 0) {
        inet_ntop(AF_INET, a + 12, net, sizeof net);
        tms_text_copy(out, out_len, net);
        return 0;
    }
    if (v6_prefix < 1 || v6_prefix > 128)
        v6_prefix = 128;
    for (unsigned bit = v6_prefix; bit < 128; bit++)
        a[bit / 8] &= (unsigned char)~(0x80u >> (bit % 8));
    inet_ntop(AF_INET6, a, net, sizeof net);
    snprintf(out, out_len, "%s/%u", net, v6_prefix);
    return 0;
}
