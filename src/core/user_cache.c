#include "core/user_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define NBUCKETS 4096

typedef struct entry {
    struct entry *next;
    tms_user_t user; /* password_hash always empty */
    uint64_t expires_ms;
} entry_t;

struct tms_user_cache {
    pthread_mutex_t lock;
    entry_t *buckets[NBUCKETS];
    size_t count, max;
    uint64_t ttl_ms;
};

/* FNV-1a: ids are random hex, any spread-out hash will do. */
static size_t bucket_of(const char *id)
{
    uint32_t h = 2166136261u;
    for (; *id; id++)
        h = (h ^ (unsigned char)*id) * 16777619u;
    return h % NBUCKETS;
}

tms_user_cache_t *tms_user_cache_new(uint64_t ttl_ms, size_t max_entries)
{
    tms_user_cache_t *c = tms_new(tms_user_cache_t);
    c->ttl_ms = ttl_ms;
    c->max = max_entries ? max_entries : 1;
    pthread_mutex_init(&c->lock, NULL);
    return c;
}

static void clear(tms_user_cache_t *c)
{
    for (size_t i = 0; i < NBUCKETS; i++) {
        entry_t *e = c->buckets[i], *next;
        for (; e; e = next) {
            next = e->next;
            free(e);
        }
        c->buckets[i] = NULL;
    }
    c->count = 0;
}

void tms_user_cache_free(tms_user_cache_t **pc)
{
    if (!*pc)
        return;
    clear(*pc);
    pthread_mutex_destroy(&(*pc)->lock);
    free(*pc);
    *pc = NULL;
}

static entry_t **find(tms_user_cache_t *c, const char *id)
{
    entry_t **p = &c->buckets[bucket_of(id)];
    while (*p && strcmp((*p)->user.id, id) != 0)
        p = &(*p)->next;
    return p;
}

int tms_user_cache_get(tms_user_cache_t *c, const char *id, uint64_t now_ms, tms_user_t *out)
{
    entry_t *e;
    int hit = 0;
    if (c->ttl_ms == 0)
        return 0;
    pthread_mutex_lock(&c->lock);
    e = *find(c, id);
    if (e && now_ms < e->expires_ms) {
        *out = e->user;
        hit = 1;
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

void tms_user_cache_put(tms_user_cache_t *c, const tms_user_t *u, uint64_t now_ms)
{
    entry_t **p, *e;
    if (c->ttl_ms == 0)
        return;
    pthread_mutex_lock(&c->lock);
    p = find(c, u->id);
    if (*p && now_ms < (*p)->expires_ms && (*p)->user.token_version > u->token_version) {
        pthread_mutex_unlock(&c->lock);
        return; /* a stale read: the cached, newer version stands */
    }
    if (!*p) {
        if (c->count >= c->max) {
            clear(c);
            p = find(c, u->id);
        }
        *p = tms_new(entry_t);
        c->count++;
    }
    e = *p;
    e->user = *u;
    memset(e->user.password_hash, 0, sizeof(e->user.password_hash));
    e->expires_ms = now_ms + c->ttl_ms;
    pthread_mutex_unlock(&c->lock);
}

void tms_user_cache_remove(tms_user_cache_t *c, const char *id)
{
    entry_t **p, *e;
    pthread_mutex_lock(&c->lock);
    p = find(c, id);
    e = *p;
    if (e) {
        *p = e->next;
        free(e);
        c->count--;
    }
    pthread_mutex_unlock(&c->lock);
}
