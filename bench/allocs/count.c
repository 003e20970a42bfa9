/* A malloc counter to preload into a release build (bench/allocs/run builds it):
 * counts every allocation, reallocation and free of the process, on every thread, in
 * a small file named by ALLOC_COUNT_FILE that a reader samples before and after a
 * load (four little-endian uint64: allocations, reallocations, frees, bytes
 * requested). It forwards to glibc's own entry points, so dlsym's own allocations
 * cannot recurse into it. Not part of the server: a measuring tool. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void __libc_free(void *);
extern void *__libc_memalign(size_t, size_t);

typedef struct {
    _Atomic uint64_t allocs, reallocs, frees, bytes;
} counts_t;

static counts_t fallback;
static counts_t *counts = &fallback;

__attribute__((constructor)) static void open_counts(void)
{
    const char *path = getenv("ALLOC_COUNT_FILE");
    if (!path)
        return;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || ftruncate(fd, sizeof(counts_t)) != 0)
        return;
    void *p = mmap(NULL, sizeof(counts_t), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p != MAP_FAILED)
        counts = p;
}

static void count(_Atomic uint64_t *c, size_t n)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&counts->bytes, n, memory_order_relaxed);
}

void *malloc(size_t n)
{
    count(&counts->allocs, n);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    count(&counts->allocs, n * size);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    count(p ? &counts->reallocs : &counts->allocs, n);
    return __libc_realloc(p, n);
}

void free(void *p)
{
    if (p)
        atomic_fetch_add_explicit(&counts->frees, 1, memory_order_relaxed);
    __libc_free(p);
}

void *memalign(size_t align, size_t n)
{
    count(&counts->allocs, n);
    return __libc_memalign(align, n);
}

void *aligned_alloc(size_t align, size_t n)
{
    return memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    void *p = memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
