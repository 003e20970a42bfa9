#include "core/arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

#define POISON TMS_POISON
#define UNPOISON TMS_UNPOISON
#ifdef TMS_ASAN
#define REDZONE TMS_ARENA_ALIGN /* a poisoned gap after every allocation */
#else
#define REDZONE 0
#endif

struct tms_arena_block {
    tms_arena_block_t *next;
    size_t size; /* of the whole block, header included */
    max_align_t data[];
};

#define HEADER offsetof(tms_arena_block_t, data)

static size_t round_up(size_t n)
{
    return (n + TMS_ARENA_ALIGN - 1) & ~(size_t)(TMS_ARENA_ALIGN - 1);
}

void tms_arena_init(tms_arena_t *a, void *first, size_t size)
{
    a->blocks = NULL;
    a->first = first;
    a->first_size = first ? size & ~(size_t)(TMS_ARENA_ALIGN - 1) : 0;
    a->cur = first;
    a->end = first ? (char *)first + a->first_size : NULL;
    POISON(a->first, a->first_size);
}

static tms_arena_block_t *new_block(tms_arena_t *a, size_t size)
{
    tms_arena_block_t *b = tms_malloc(size);
    b->size = size;
    b->next = a->blocks;
    a->blocks = b;
    return b;
}

/* The slow path: the current chunk has no room for need bytes. */
static void *alloc_slow(tms_arena_t *a, size_t n, size_t need)
{
    tms_arena_block_t *b;
    char *p;
    if (need > TMS_ARENA_LARGE) {
        /* Its own block: the current chunk keeps serving the small requests. */
        if (need > SIZE_MAX - HEADER)
            tms_oom(__FILE__, __LINE__);
        b = new_block(a, HEADER + need);
        UNPOISON(b->data, n);
        POISON((char *)b->data + n, need - n);
        return b->data;
    }
    b = new_block(a, TMS_ARENA_CHUNK);
    p = (char *)b->data;
    a->cur = p + need;
    a->end = (char *)b + TMS_ARENA_CHUNK;
    POISON(p, (size_t)(a->end - p));
    UNPOISON(p, n);
    return p;
}

void *tms_arena_alloc(tms_arena_t *a, size_t n)
{
    size_t need;
    char *p;
    if (n > SIZE_MAX / 2)
        tms_oom(__FILE__, __LINE__);
    need = round_up((n ? n : 1) + REDZONE); /* distinct pointers, never NULL */
    if ((size_t)(a->end - a->cur) < need)
        return alloc_slow(a, n, need);
    p = a->cur;
    a->cur += need;
    UNPOISON(p, n);
    return p;
}

void *tms_arena_calloc(tms_arena_t *a, size_t n, size_t size)
{
    void *p;
    if (size && n > SIZE_MAX / size)
        tms_oom(__FILE__, __LINE__);
    p = tms_arena_alloc(a, n * size);
    memset(p, 0, n * size);
    return p;
}

void *tms_arena_memdup(tms_arena_t *a, const void *src, size_t n)
{
    void *p = tms_arena_alloc(a, n);
    if (n)
        memcpy(p, src, n);
    return p;
}

char *tms_arena_strndup(tms_arena_t *a, const char *s, size_t n)
{
    char *p = tms_arena_alloc(a, n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *tms_arena_strdup(tms_arena_t *a, const char *s)
{
    return tms_arena_strndup(a, s, strlen(s));
}

void tms_arena_reset(tms_arena_t *a)
{
    tms_arena_block_t *b = a->blocks;
    while (b) {
        tms_arena_block_t *next = b->next;
        UNPOISON(b, b->size); /* free() must see its whole block as the caller's */
        free(b);
        b = next;
    }
    tms_arena_init(a, a->first, a->first_size);
}

void tms_arena_fini(tms_arena_t *a)
{
    tms_arena_reset(a);
    UNPOISON(a->first, a->first_size);
    a->cur = a->end = NULL;
}

size_t tms_arena_blocks(const tms_arena_t *a)
{
    size_t n = 0;
    for (const tms_arena_block_t *b = a->blocks; b; b = b->next)
        n++;
    return n;
}
