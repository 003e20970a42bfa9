/* A bump allocator for memory that lives exactly as long as one request (h2o's
 * h2o_mem_pool_t): the call's strings, the store operations it sends and their
 * results are carved out of one arena and released together, in one call, when the
 * call completes; nothing in it is freed on its own.
 *
 * The first chunk is the owner's (tms_api_call_t embeds one, so a typical call costs a
 * single malloc); when it is full, larger chunks are chained from the heap, and a
 * request too large for a chunk gets a block of its own. Every allocation is aligned
 * for any type (max_align_t). Out of memory aborts, as core/alloc.h does.
 *
 * An arena is not locked: one thread allocates from it at a time. Lending it with a
 * message (a store op that allocates its results into the call's arena) lends it
 * entirely: its owner must not allocate from it until the message comes back, and
 * the mailbox hand-off orders the two threads' writes.
 *
 * Under AddressSanitizer the free part of every chunk is poisoned and each allocation
 * is followed by a poisoned gap, so overruns inside an arena are reported as on the
 * heap. */
#ifndef TMS_CORE_ARENA_H
#define TMS_CORE_ARENA_H

#include <stddef.h>

#define TMS_ARENA_ALIGN _Alignof(max_align_t)
#define TMS_ARENA_CHUNK 4096 /* heap chunks: this size, header included */
#define TMS_ARENA_LARGE 1024 /* a request above this that does not fit gets its own block */

typedef struct tms_arena_block tms_arena_block_t;

typedef struct tms_arena {
    char *cur, *end;           /* the free part of the current chunk */
    tms_arena_block_t *blocks; /* heap chunks and large blocks, newest first */
    void *first;               /* the owner's first chunk; NULL: none */
    size_t first_size;
} tms_arena_t;

/** Make a an empty arena whose first chunk is first[0..size) (owned by the caller, who
 * keeps it alive as long as the arena; NULL/0 for none: the first allocation then
 * takes a heap chunk). first must be aligned for max_align_t. */
void tms_arena_init(tms_arena_t *a, void *first, size_t size);

/** n bytes (n may be 0) aligned to TMS_ARENA_ALIGN, uninitialized; never NULL. Valid
 * until tms_arena_reset or tms_arena_fini. */
void *tms_arena_alloc(tms_arena_t *a, size_t n);

/** n * size zeroed bytes; aborts when the product overflows. */
void *tms_arena_calloc(tms_arena_t *a, size_t n, size_t size);

/** A copy of p[0..n) in the arena. */
void *tms_arena_memdup(tms_arena_t *a, const void *p, size_t n);

/** A NUL-terminated copy of s in the arena. */
char *tms_arena_strdup(tms_arena_t *a, const char *s);

/** A NUL-terminated copy of s[0..n) in the arena (s need not be terminated). */
char *tms_arena_strndup(tms_arena_t *a, const char *s, size_t n);

/** Release everything allocated, at once: the heap blocks are freed and the first
 * chunk is reused. The arena stays usable. */
void tms_arena_reset(tms_arena_t *a);

/** tms_arena_reset, then hand the first chunk back to its owner (who may then free
 * or reuse it); a must be initialized again before its next use. */
void tms_arena_fini(tms_arena_t *a);

/** Heap blocks the arena holds now (0 while everything fits in the first chunk). */
size_t tms_arena_blocks(const tms_arena_t *a);

#endif
