#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/ratelimit.h"
#include "test.h"

static void test_allow_then_deny(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(5, 15 * 60 * 1000, 100);
    tms_ratelimit_result_t r;
    uint64_t t = 1000000;
    int i;

    CHECK(rl != NULL);
    for (i = 0; i < 5; i++) {
        r = tms_ratelimit_take(rl, "a@b.c|10.0.0.1", t);
        CHECK_EQ_INT(r.allowed, 1);
        CHECK_EQ_INT(r.limit, 5);
        CHECK_EQ_INT(r.remaining, 4 - i);
        CHECK_EQ_INT(r.retry_after_s, 0);
    }
    /* 5 taken, refill 1 per 180 s: full again in 900 s. */
    CHECK_EQ_INT(r.reset_s, 900);
    r = tms_ratelimit_take(rl, "a@b.c|10.0.0.1", t);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(r.retry_after_s, 180);
    CHECK_EQ_INT(r.reset_s, 900);
    /* A denied take costs nothing: 10 s later one token is 170 s away. */
    r = tms_ratelimit_take(rl, "a@b.c|10.0.0.1", t + 10000);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.retry_after_s, 170);
    /* Other keys are independent. */
    r = tms_ratelimit_take(rl, "a@b.c|10.0.0.2", t);
    CHECK_EQ_INT(r.allowed, 1);
    CHECK_EQ_INT(r.remaining, 4);
    CHECK_EQ_INT(tms_ratelimit_size(rl), 2);
    tms_ratelimit_free(&rl);
    CHECK(rl == NULL);
    tms_ratelimit_free(&rl);
}

static void test_refill(void)
{
    /* 100 per minute: one token per 600 ms. */
    tms_ratelimit_t *rl = tms_ratelimit_new(100, 60000, 10);
    tms_ratelimit_result_t r;
    uint64_t t = 5;
    int i;

    for (i = 0; i < 100; i++)
        CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t).allowed, 1);
    r = tms_ratelimit_take(rl, "ip", t);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.retry_after_s, 1); /* 600 ms rounds up to 1 s */
    CHECK_EQ_INT(r.reset_s, 60);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t + 599).allowed, 0);
    r = tms_ratelimit_take(rl, "ip", t + 600);
    CHECK_EQ_INT(r.allowed, 1);
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t + 600).allowed, 0);
    /* 6 s later: 10 tokens. */
    t += 600 + 6000;
    for (i = 0; i < 10; i++) {
        r = tms_ratelimit_take(rl, "ip", t);
        CHECK_EQ_INT(r.allowed, 1);
        CHECK_EQ_INT(r.remaining, 9 - i);
    }
    CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t).allowed, 0);
    /* Partial time accumulates: 300 ms + 300 ms make one token. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t + 300).allowed, 0);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "ip", t + 600).allowed, 1);
    /* A long pause refills to capacity, never beyond. */
    t += 10 * 60000;
    r = tms_ratelimit_take(rl, "ip", t);
    CHECK_EQ_INT(r.allowed, 1);
    CHECK_EQ_INT(r.remaining, 99);
    CHECK_EQ_INT(r.reset_s, 1); /* 600 ms until full */
    /* Time going backwards counts as no time. */
    r = tms_ratelimit_take(rl, "ip", t - 30000);
    CHECK_EQ_INT(r.allowed, 1);
    CHECK_EQ_INT(r.remaining, 98);
    tms_ratelimit_free(&rl);
}

static void test_retry_after_hourly(void)
{
    /* 10 task creations per hour: one token per 360 s. */
    tms_ratelimit_t *rl = tms_ratelimit_new(10, 3600000, 10);
    tms_ratelimit_result_t r;
    int i;

    for (i = 0; i < 10; i++)
        tms_ratelimit_take(rl, "5f1d7c2e9a3b4c5d6e7f8091", 0);
    r = tms_ratelimit_take(rl, "5f1d7c2e9a3b4c5d6e7f8091", 0);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.retry_after_s, 360);
    CHECK_EQ_INT(r.reset_s, 3600);
    r = tms_ratelimit_take(rl, "5f1d7c2e9a3b4c5d6e7f8091", 359001);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.retry_after_s, 1);
    r = tms_ratelimit_take(rl, "5f1d7c2e9a3b4c5d6e7f8091", 360000);
    CHECK_EQ_INT(r.allowed, 1);
    tms_ratelimit_free(&rl);
}

static void test_disabled(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(0, 0, 0);
    int i;

    CHECK(rl != NULL);
    for (i = 0; i < 10000; i++) {
        tms_ratelimit_result_t r = tms_ratelimit_take(rl, "k", 0);
        CHECK(r.allowed == 1);
        CHECK(r.retry_after_s == 0);
    }
    CHECK_EQ_INT(tms_ratelimit_size(rl), 0);
    tms_ratelimit_free(&rl);
}

static void test_bad_args(void)
{
    CHECK(tms_ratelimit_new(5, 0, 10) == NULL);
    CHECK(tms_ratelimit_new(5, 1000, 0) == NULL);
    CHECK(tms_ratelimit_new(UINT32_MAX, UINT64_MAX / 2, 10) == NULL);
    /* The largest allowed product works without overflow. */
    {
        tms_ratelimit_t *rl = tms_ratelimit_new(UINT32_MAX, UINT64_MAX / UINT32_MAX, 2);
        tms_ratelimit_result_t r;
        CHECK(rl != NULL);
        r = tms_ratelimit_take(rl, NULL, UINT64_MAX - 1);
        CHECK_EQ_INT(r.allowed, 1);
        CHECK_EQ_INT(r.remaining, UINT32_MAX - 1);
        r = tms_ratelimit_take(rl, NULL, UINT64_MAX);
        CHECK_EQ_INT(r.allowed, 1);
        tms_ratelimit_free(&rl);
    }
    /* Taking from a NULL limiter allows. */
    CHECK_EQ_INT(tms_ratelimit_take(NULL, "k", 0).allowed, 1);
}

static void test_eviction(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(2, 60000, 4);
    char key[32];
    int i;

    /* Exhaust "victim", then push it out with 4 fresh keys in the same window. */
    tms_ratelimit_take(rl, "victim", 0);
    tms_ratelimit_take(rl, "victim", 0);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 0).allowed, 0);
    for (i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "k%d", i);
        tms_ratelimit_take(rl, key, 1);
    }
    CHECK_EQ_INT(tms_ratelimit_size(rl), 4);
    /* "victim" is still held: touching it keeps it most recent. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 2).allowed, 0);
    tms_ratelimit_take(rl, "k3", 3); /* evicts k0, the least recently used */
    CHECK_EQ_INT(tms_ratelimit_size(rl), 4);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 4).allowed, 0);
    for (i = 10; i < 14; i++) {
        snprintf(key, sizeof key, "k%d", i);
        tms_ratelimit_take(rl, key, 5);
    }
    CHECK_EQ_INT(tms_ratelimit_size(rl), 4);
    /* Evicted: it comes back with a full bucket (documented fail-open under floods). */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 6).allowed, 1);
    tms_ratelimit_free(&rl);
}

static void test_expired_swept(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(10, 1000, 1000);
    char key[32];
    int i;

    for (i = 0; i < 100; i++) {
        snprintf(key, sizeof key, "old%d", i);
        tms_ratelimit_take(rl, key, 0);
    }
    CHECK_EQ_INT(tms_ratelimit_size(rl), 100);
    /* After a full window old entries are dropped as new takes arrive. */
    for (i = 0; i < 100; i++)
        tms_ratelimit_take(rl, "live", 5000 + (uint64_t)i);
    CHECK_EQ_INT(tms_ratelimit_size(rl), 1);
    tms_ratelimit_free(&rl);
}

static void test_many_keys(void)
{
    const size_t max = 5000;
    tms_ratelimit_t *rl = tms_ratelimit_new(3, 60000, max);
    char key[48];
    size_t i;
    int ok = 1;

    for (i = 0; i < 100000; i++) {
        snprintf(key, sizeof key, "user-%zu|198.51.100.%zu", i % 20000, i % 251);
        tms_ratelimit_take(rl, key, i / 100);
        if (tms_ratelimit_size(rl) > max)
            ok = 0;
    }
    CHECK(ok);
    CHECK_EQ_INT(tms_ratelimit_size(rl), max);
    /* Keys held now still count correctly. */
    for (i = 0; i < 3; i++)
        CHECK_EQ_INT(tms_ratelimit_take(rl, "fresh", 2000).allowed, 1);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "fresh", 2000).allowed, 0);
    /* Distinct keys, exact match only: a prefix is another key. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "fres", 2000).allowed, 1);
    tms_ratelimit_free(&rl);
}

/* One limiter, four threads (the gateways of four workers): the limit holds for all
 * of them together, not per thread. */
static tms_ratelimit_t *shared;

static void *take_many(void *arg)
{
    long allowed = 0;
    (void)arg;
    for (int i = 0; i < 5000; i++)
        allowed += tms_ratelimit_take(shared, "10.0.0.1", 1000).allowed;
    return (void *)allowed;
}

static void test_shared_between_threads(void)
{
    pthread_t th[4];
    long allowed = 0;
    shared = tms_ratelimit_new(100, 60000, 1000);
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, take_many, NULL);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        allowed += (long)r;
    }
    CHECK_EQ_INT(allowed, 100);
    CHECK_EQ_INT(tms_ratelimit_size(shared), 1);
    tms_ratelimit_free(&shared);
}

int main(void)
{
    RUN_TEST(test_shared_between_threads);
    RUN_TEST(test_allow_then_deny);
    RUN_TEST(test_refill);
    RUN_TEST(test_retry_after_hourly);
    RUN_TEST(test_disabled);
    RUN_TEST(test_bad_args);
    RUN_TEST(test_eviction);
    RUN_TEST(test_expired_swept);
    RUN_TEST(test_many_keys);
    TEST_EXIT();
}
