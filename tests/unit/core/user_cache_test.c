/* User cache: hits within the TTL, misses after it, replace and remove, disabled at
 * 0, bounded size, and never a password hash kept. */
#include <pthread.h>

#include "core/user_cache.h"
#include "test.h"

static tms_user_t user(const char *id, int64_t version)
{
    tms_user_t u = {.token_version = version, .role = "user", .email = "a@b.c"};
    snprintf(u.id, sizeof(u.id), "%s", id);
    snprintf(u.password_hash, sizeof(u.password_hash), "$argon2id$secret");
    return u;
}

static void test_ttl_and_updates(void)
{
    tms_user_cache_t *c = tms_user_cache_new(1000, 10);
    tms_user_t u = user("aaaaaaaaaaaaaaaaaaaaaaaa", 3), out;
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 0, &out), 0);
    tms_user_cache_put(c, &u, 100);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 500, &out), 1);
    CHECK_EQ_INT(out.token_version, 3);
    CHECK_EQ_STR(out.password_hash, "");
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 1100, &out), 0); /* expired */
    u.token_version = 4;
    tms_user_cache_put(c, &u, 1200);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 1300, &out), 1);
    CHECK_EQ_INT(out.token_version, 4);
    tms_user_cache_remove(c, u.id);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 1300, &out), 0);
    tms_user_cache_remove(c, u.id); /* absent: no-op */
    tms_user_cache_free(&c);
    CHECK(c == NULL);
}

static void test_disabled_and_bounded(void)
{
    tms_user_cache_t *off = tms_user_cache_new(0, 10), *small = tms_user_cache_new(1000, 4);
    tms_user_t u = user("bbbbbbbbbbbbbbbbbbbbbbbb", 1), out;
    char id[25];
    tms_user_cache_put(off, &u, 0);
    CHECK_EQ_INT(tms_user_cache_get(off, u.id, 1, &out), 0);
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "%024d", i);
        u = user(id, i);
        tms_user_cache_put(small, &u, 0);
        CHECK_EQ_INT(tms_user_cache_get(small, id, 1, &out), 1);
        CHECK_EQ_INT(out.token_version, i);
    }
    tms_user_cache_free(&off);
    tms_user_cache_free(&small);
}

/* Versions only grow: a stale store read must not bring back a revoked version. */
static void test_version_never_goes_back(void)
{
    tms_user_cache_t *c = tms_user_cache_new(1000, 10);
    tms_user_t u = user("cccccccccccccccccccccccc", 5), out;
    tms_user_cache_put(c, &u, 0);
    u.token_version = 4; /* read before the logout that made 5, answered after it */
    tms_user_cache_put(c, &u, 10);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 20, &out), 1);
    CHECK_EQ_INT(out.token_version, 5);
    snprintf(u.role, sizeof(u.role), "admin"); /* same version: a role change is taken */
    u.token_version = 5;
    tms_user_cache_put(c, &u, 30);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 40, &out), 1);
    CHECK_EQ_STR(out.role, "admin");
    u.token_version = 3; /* once the entry expired, the store's word is taken again */
    tms_user_cache_put(c, &u, 2000);
    CHECK_EQ_INT(tms_user_cache_get(c, u.id, 2001, &out), 1);
    CHECK_EQ_INT(out.token_version, 3);
    tms_user_cache_free(&c);
}

/* One cache, four threads (the auth actors of four workers): no torn entry, and every
 * version a reader sees was put by someone (ASan/TSan builds check the locking). */
static tms_user_cache_t *shared;

static void *hammer(void *arg)
{
    long t = (long)arg;
    tms_user_t u = user("dddddddddddddddddddddddd", 0), out;
    int bad = 0;
    for (int i = 1; i <= 20000; i++) {
        u.token_version = i;
        snprintf(u.email, sizeof(u.email), "v%d@x", i);
        if ((i + t) % 3 == 0)
            tms_user_cache_put(shared, &u, (uint64_t)i);
        else if ((i + t) % 7 == 0)
            tms_user_cache_remove(shared, u.id);
        else if (tms_user_cache_get(shared, u.id, (uint64_t)i, &out)) {
            char want[64];
            snprintf(want, sizeof(want), "v%lld@x", (long long)out.token_version);
            bad += strcmp(out.email, want) != 0;
        }
    }
    return (void *)(long)bad;
}

static void test_shared_between_threads(void)
{
    pthread_t th[4];
    long bad = 0;
    shared = tms_user_cache_new(1000000, 100);
    for (long i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, (void *)i);
    for (int i = 0; i < 4; i++) {
        void *r;
        pthread_join(th[i], &r);
        bad += (long)r;
    }
    CHECK_EQ_INT(bad, 0);
    tms_user_cache_free(&shared);
}

int main(void)
{
    RUN_TEST(test_version_never_goes_back);
    RUN_TEST(test_shared_between_threads);
    RUN_TEST(test_ttl_and_updates);
    RUN_TEST(test_disabled_and_bounded);
    TEST_EXIT();
}
