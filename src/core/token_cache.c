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

/* Only verified tokens are ever stored (an HMAC the client cannot choose), so the
 * last bytes, the signature's, spread keys as well as the whole text would; a byte-wise
 * FNV over ~200 bytes was the largest TMS function in the GET profile (4 %): one
 * multiply per byte, each waiting on the one before. Here: the last 32 bytes as four
 * 64-bit words, mixed as in splitmix64. Shorter tokens: whatever there is, byte-wise. */
static size_t bucket_of(const char *s, size_t len)
{
    uint64_t h = len * 0x9e3779b97f4a7c15ull;
    if (len >= 32) {
        const char *t = s + len - 32;
        for (int i = 0; i < 4; i++) {
            uint64_t w;
            memcpy(&w, t + 8 * i, 8);
            h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
            h ^= h >> 31;
        }
    } else {
        for (size_t i = 0; i < len; i++)
            h = (h ^ (unsigned char)s[i]) * 0x94d049bb133111ebull;
    }
    h ^= h >> 29;
    return (size_t)(h % NBUCKETS);
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
