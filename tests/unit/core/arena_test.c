/* The per-request arena: alignment, the first chunk, growth into heap chunks, large
 * blocks, reset and fini, and (under AddressSanitizer) overruns reported. */
#include <stdalign.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/arena.h"
#include "test.h"

static int aligned(const void *p)
{
    return ((uintptr_t)p % TMS_ARENA_ALIGN) == 0;
}

/* The first chunk serves small requests with no heap block at all. */
static void test_first_chunk(void)
{
    alignas(max_align_t) char first[1024];
    tms_arena_t a;
    char *p, *q;
    tms_arena_init(&a, first, sizeof(first));
    p = tms_arena_alloc(&a, 10);
    q = tms_arena_alloc(&a, 10);
    CHECK(p >= first && p < first + sizeof(first));
    CHECK(q >= first && q < first + sizeof(first));
    CHECK(q >= p + 10);
    CHECK_EQ_INT(tms_arena_blocks(&a), 0);
    tms_arena_fini(&a);
}

/* Every allocation, whatever its size, is aligned for any type. */
static void test_alignment(void)
{
    alignas(max_align_t) char first[256];
    tms_arena_t a;
    tms_arena_init(&a, first, sizeof(first));
    for (size_t n = 0; n < 200; n++) {
        void *p = tms_arena_alloc(&a, n % 37);
        CHECK(p != NULL);
        CHECK(aligned(p));
    }
    CHECK(aligned(tms_arena_alloc(&a, 5000))); /* a large block */
    CHECK(aligned(tms_arena_strdup(&a, "x")));
    tms_arena_fini(&a);
}

/* Many small allocations chain heap chunks; none overlaps another. */
static void test_many_small(void)
{
    enum { N = 20000 };
    alignas(max_align_t) char first[512];
    static unsigned char *ptrs[N];
    tms_arena_t a;
    int ok = 1;
    tms_arena_init(&a, first, sizeof(first));
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i % 24);
        ptrs[i] = tms_arena_alloc(&a, n);
        memset(ptrs[i], i & 0xff, n);
    }
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i % 24);
        for (size_t k = 0; k < n; k++)
            ok &= ptrs[i][k] == (unsigned char)(i & 0xff);
    }
    CHECK(ok); /* nothing was overwritten by a later allocation */
    CHECK(tms_arena_blocks(&a) > 1);
    CHECK(tms_arena_blocks(&a) < N / 50); /* chunks, not one block per allocation */
    tms_arena_fini(&a);
}

/* A request larger than a chunk gets a block of its own, and the current chunk keeps
 * serving small requests after it. */
static void test_large(void)
{
    alignas(max_align_t) char first[256];
    tms_arena_t a;
    unsigned char *big, *small1, *small2;
    tms_arena_init(&a, first, sizeof(first));
    small1 = tms_arena_alloc(&a, 16);
    big = tms_arena_alloc(&a, 1 << 20);
    memset(big, 0xab, 1 << 20);
    CHECK(big[0] == 0xab && big[(1 << 20) - 1] == 0xab);
    CHECK_EQ_INT(tms_arena_blocks(&a), 1);
    small2 = tms_arena_alloc(&a, 16);
    CHECK((char *)small1 >= first && (char *)small2 < first + sizeof(first)); /* still first */
    CHECK_EQ_INT(tms_arena_blocks(&a), 1);
    tms_arena_fini(&a);
}

/* Growth past the first chunk, then reset: the heap blocks go, the first chunk is
 * used again from its start. */
static void test_growth_and_reset(void)
{
    alignas(max_align_t) char first[128];
    tms_arena_t a;
    char *p;
    tms_arena_init(&a, first, sizeof(first));
    p = tms_arena_alloc(&a, 8);
    CHECK(p == first);
    for (int i = 0; i < 100; i++)
        tms_arena_alloc(&a, 100);
    CHECK(tms_arena_blocks(&a) >= 2);
    tms_arena_reset(&a);
    CHECK_EQ_INT(tms_arena_blocks(&a), 0);
    CHECK(tms_arena_alloc(&a, 8) == first);
    tms_arena_fini(&a);
    tms_arena_init(&a, first, sizeof(first)); /* fini hands the chunk back: reusable */
    CHECK(tms_arena_alloc(&a, 8) == first);
    tms_arena_fini(&a);
}

/* Without a first chunk, the first allocation takes a heap chunk. */
static void test_no_first_chunk(void)
{
    tms_arena_t a;
    void *p, *q;
    tms_arena_init(&a, NULL, 0);
    CHECK_EQ_INT(tms_arena_blocks(&a), 0);
    p = tms_arena_alloc(&a, 0);
    q = tms_arena_alloc(&a, 0);
    CHECK(p != NULL && q != NULL && p != q);
    CHECK_EQ_INT(tms_arena_blocks(&a), 1);
    tms_arena_fini(&a);
}

static void test_helpers(void)
{
    tms_arena_t a;
    char *s, *t;
    int *z;
    tms_arena_init(&a, NULL, 0);
    s = tms_arena_strdup(&a, "hello");
    CHECK_EQ_STR(s, "hello");
    t = tms_arena_strndup(&a, "hello world", 5);
    CHECK_EQ_STR(t, "hello");
    CHECK(s != t);
    CHECK(memcmp(tms_arena_memdup(&a, "a\0b", 3), "a\0b", 3) == 0);
    z = tms_arena_calloc(&a, 100, sizeof(int));
    int zero = 1;
    for (int i = 0; i < 100; i++)
        zero &= z[i] == 0;
    CHECK(zero);
    tms_arena_fini(&a);
}

#if defined(__SANITIZE_ADDRESS__)
#define ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ASAN 1
#endif
#endif

/* Under ASan, writing one byte past an allocation in the arena is reported (the
 * process aborts) just as it is on the heap. */
static void test_overrun_reported(void)
{
#ifdef ASAN
    pid_t pid = fork();
    int status = 0;
    if (pid == 0) {
        alignas(max_align_t) char first[256];
        tms_arena_t a;
        char *p;
        freopen("/dev/null", "w", stderr);
        tms_arena_init(&a, first, sizeof(first));
        p = tms_arena_alloc(&a, 16);
        p[16] = 'x';
        _exit(0);
    }
    CHECK(pid > 0);
    waitpid(pid, &status, 0);
    CHECK(!(WIFEXITED(status) && WEXITSTATUS(status) == 0));
#endif
}

int main(void)
{
    RUN_TEST(test_first_chunk);
    RUN_TEST(test_alignment);
    RUN_TEST(test_many_small);
    RUN_TEST(test_large);
    RUN_TEST(test_growth_and_reset);
    RUN_TEST(test_no_first_chunk);
    RUN_TEST(test_helpers);
    RUN_TEST(test_overrun_reported);
    TEST_EXIT();
}
