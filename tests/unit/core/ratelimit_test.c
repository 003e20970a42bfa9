#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/ratelimit.h"
#include "core/status.h"
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

/* Issue 17 item 11: a flood of new keys must not evict a live counter. With max_keys
 * held, a new key may only take the place of one whose bucket is full again; otherwise
 * it is refused (table_full) and the victim's counter stays until its window ends. */
static void test_flood_does_not_evict_live_keys(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(2, 60000, 4);
    tms_ratelimit_result_t r;
    char key[32];
    int i, refused = 0;

    /* Exhaust "victim", then fill the table with 3 more live keys. */
    tms_ratelimit_take(rl, "victim", 0);
    tms_ratelimit_take(rl, "victim", 0);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 0).allowed, 0);
    for (i = 0; i < 3; i++) {
        snprintf(key, sizeof key, "k%d", i);
        CHECK_EQ_INT(tms_ratelimit_take(rl, key, 1).allowed, 1);
    }
    CHECK_EQ_INT(tms_ratelimit_size(rl), 4);
    /* A flood of new keys within the window: each refused, nothing evicted. */
    for (i = 10; i < 1010; i++) {
        snprintf(key, sizeof key, "k%d", i);
        r = tms_ratelimit_take(rl, key, 2 + (uint64_t)i);
        refused += !r.allowed && r.table_full;
    }
    CHECK_EQ_INT(refused, 1000);
    CHECK(r.retry_after_s >= 1 && r.retry_after_s <= 60);
    CHECK_EQ_INT(tms_ratelimit_size(rl), 4);
    r = tms_ratelimit_take(rl, "victim", 2000);
    CHECK_EQ_INT(r.allowed, 0);
    CHECK_EQ_INT(r.table_full, 0);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "victim", 20000).allowed, 0);
    /* Once buckets are full again (the window is over) new keys take their place. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "late", 61002).allowed, 1);
    CHECK(tms_ratelimit_size(rl) <= 4);
    tms_ratelimit_free(&rl);
}

/* A full bucket is replaced even before its last take is a window old: it has been
 * refilled, so forgetting it changes nothing. */
static void test_full_bucket_replaced(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(100, 60000, 2);
    /* 100 per minute: one token back every 600 ms. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "a", 0).allowed, 1);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "b", 0).allowed, 1);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "c", 100).allowed, 0); /* a and b not full yet */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "c", 600).allowed, 1); /* a is full again */
    CHECK_EQ_INT(tms_ratelimit_size(rl), 2);
    tms_ratelimit_free(&rl);
}

static void test_addr_key(void)
{
    char k[TMS_ADDR_KEY_MAX];
    CHECK_EQ_INT(tms_ratelimit_addr_key("192.0.2.7", 64, k, sizeof k), 0);
    CHECK_EQ_STR(k, "192.0.2.7");
    CHECK_EQ_INT(tms_ratelimit_addr_key("::ffff:192.0.2.7", 64, k, sizeof k), 0);
    CHECK_EQ_STR(k, "192.0.2.7");
    /* Two addresses of one /64 are one key; the next /64 is another. */
    CHECK_EQ_INT(tms_ratelimit_addr_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd", 64, k, sizeof k), 0);
    CHECK_EQ_STR(k, "2001:db8:1:2::/64");
    tms_ratelimit_addr_key("2001:db8:1:2::1", 64, k, sizeof k);
    CHECK_EQ_STR(k, "2001:db8:1:2::/64");
    tms_ratelimit_addr_key("2001:db8:1:3::1", 64, k, sizeof k);
    CHECK_EQ_STR(k, "2001:db8:1:3::/64");
    tms_ratelimit_addr_key("2001:db8:1:2:ffff::1", 56, k, sizeof k);
    CHECK_EQ_STR(k, "2001:db8:1::/56");
    tms_ratelimit_addr_key("2001:db8:1:2ff::1", 60, k, sizeof k);
    CHECK_EQ_STR(k, "2001:db8:1:2f0::/60");
    tms_ratelimit_addr_key("2001:db8::1", 128, k, sizeof k);
    CHECK_EQ_STR(k, "2001:db8::1/128");
    tms_ratelimit_addr_key("::1", 64, k, sizeof k);
    CHECK_EQ_STR(k, "::/64");
    tms_ratelimit_addr_key("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 127, k, sizeof k);
    CHECK_EQ_STR(k, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127");
    CHECK(strlen(k) < TMS_ADDR_KEY_MAX);
    /* Not an address: kept as is. */
    CHECK_EQ_INT(tms_ratelimit_addr_key("unix", 64, k, sizeof k), -TMS_EINVAL);
    CHECK_EQ_STR(k, "unix");
    CHECK_EQ_INT(tms_ratelimit_addr_key("", 64, k, sizeof k), -TMS_EINVAL);
    CHECK_EQ_STR(k, "");
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
    /* Full of live keys: a new one waits for the window. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "fresh", 2000).table_full, 1);
    /* Keys held then still count correctly. */
    for (i = 0; i < 3; i++)
        CHECK_EQ_INT(tms_ratelimit_take(rl, "fresh", 62000).allowed, 1);
    CHECK_EQ_INT(tms_ratelimit_take(rl, "fresh", 62000).allowed, 0);
    /* Distinct keys, exact match only: a prefix is another key. */
    CHECK_EQ_INT(tms_ratelimit_take(rl, "fres", 62000).allowed, 1);
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

/* A take given back (a creation that made no task) is a token again, never above the
 * limit; an unknown key is full. */
static void test_give_back(void)
{
    tms_ratelimit_t *rl = tms_ratelimit_new(3, 3600 * 1000, 100);
    tms_ratelimit_result_t r;
    for (int i = 0; i < 3; i++)
        CHECK(tms_ratelimit_take(rl, "u", 1000).allowed);
    CHECK(!tms_ratelimit_take(rl, "u", 1000).allowed);
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "u", 1000), 1);
    r = tms_ratelimit_take(rl, "u", 1000);
    CHECK(r.allowed);
    CHECK_EQ_INT(r.remaining, 0);
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "u", 1000), 1);
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "u", 1000), 2);
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "u", 1000), 3);
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "u", 1000), 3); /* capped */
    CHECK_EQ_INT(tms_ratelimit_give_back(rl, "nobody", 1000), 3);
    tms_ratelimit_free(&rl);
    CHECK_EQ_INT(tms_ratelimit_give_back(NULL, "u", 0), 0);
}

int main(void)
{
    RUN_TEST(test_shared_between_threads);
    RUN_TEST(test_allow_then_deny);
    RUN_TEST(test_refill);
    RUN_TEST(test_retry_after_hourly);
    RUN_TEST(test_disabled);
    RUN_TEST(test_bad_args);
    RUN_TEST(test_flood_does_not_evict_live_keys);
    RUN_TEST(test_full_bucket_replaced);
    RUN_TEST(test_addr_key);
    RUN_TEST(test_expired_swept);
    RUN_TEST(test_many_keys);
    RUN_TEST(test_give_back);
    TEST_EXIT();
}
