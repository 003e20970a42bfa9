/* User cache: hits within the TTL, misses after it, replace and remove, disabled at
 * 0, bounded size, and never a password hash kept. */
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

int main(void)
{
    RUN_TEST(test_ttl_and_updates);
    RUN_TEST(test_disabled_and_bounded);
    TEST_EXIT();
}
