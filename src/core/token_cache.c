#include "core/token_cache.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define NBUCKETS 4096

typedef struct entry {
    struct entry *next;
    tms_jwt_claims_t claims;
    size_t len;
    char token[]; /* NUL-terminated */
} entry_t;

struct tms_token_cache {
    entry_t *buckets[NBUCKETS];
    size_t count, max;
};

/* FNV-1a over the signature part would do, but the whole text is cheap enough. */
static size_t bucket_of(const char *s, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h % NBUCKETS;
}

tms_token_cache_t *tms_token_cache_new(size_t max_entries)
{
    tms_token_cache_t *c = tms_new(tms_token_cache_t);
    c->max = max_entries;
    return c;
}

static void clear(tms_token_cache_t *c)
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

void tms_token_cache_free(tms_token_cache_t **pc)
{
    if (!*pc)
        return;
    clear(*pc);
    free(*pc);
    *pc = NULL;
}

int tms_token_cache_get(tms_token_cache_t *c, const char *token, int64_t now_s,
                        tms_jwt_claims_t *out)
{
    size_t len = strlen(token);
    entry_t **p, *e;
    if (c->max == 0 || len > TMS_JWT_MAX_LEN)
        return 0;
    for (p = &c->buckets[bucket_of(token, len)]; (e = *p) != NULL; p = &e->next) {
        if (e->len != len || memcmp(e->token, token, len) != 0)
            continue;
        if (e->claims.exp <= now_s) { /* expired: forget it */
            *p = e->next;
            free(e);
            c->count--;
            return 0;
        }
        *out = e->claims;
        return 1;
    }
    return 0;
}

void tms_token_cache_put(tms_token_cache_t *c, const char *token, const tms_jwt_claims_t *claims)
{
    size_t len = strlen(token), b;
    entry_t *e;
    if (c->max == 0 || len > TMS_JWT_MAX_LEN)
        return;
    if (c->count >= c->max)
        clear(c);
    b = bucket_of(token, len);
    for (e = c->buckets[b]; e; e = e->next) {
        if (e->len == len && memcmp(e->token, token, len) == 0)
            return;
    }
    e = tms_malloc(sizeof(*e) + len + 1);
    e->claims = *claims;
    e->len = len;
    memcpy(e->token, token, len + 1);
    e->next = c->buckets[b];
    c->buckets[b] = e;
    c->count++;
}
