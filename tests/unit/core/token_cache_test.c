/* Token cache: exact-text hits only, expiry checked on every hit, bounded size. */
#include "core/token_cache.h"
#include "test.h"

static void test_token_cache(void)
{
    tms_token_cache_t *c = tms_token_cache_new(3), *off = tms_token_cache_new(0);
    tms_jwt_claims_t cl = {.sub = "aaaaaaaaaaaaaaaaaaaaaaaa", .role = "user", .exp = 100}, out;
    char tok[32];
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.c", 10, &out), 0);
    tms_token_cache_put(c, "a.b.c", &cl);
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.c", 10, &out), 1);
    CHECK_EQ_STR(out.sub, cl.sub);
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.d", 10, &out), 0);  /* one byte differs */
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.c ", 10, &out), 0); /* longer */
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.", 10, &out), 0);   /* prefix */
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.c", 100, &out), 0); /* expired at exp */
    CHECK_EQ_INT(tms_token_cache_get(c, "a.b.c", 10, &out), 0);  /* and forgotten */
    for (int i = 0; i < 100; i++) {
        snprintf(tok, sizeof(tok), "t.%d.x", i);
        tms_token_cache_put(c, tok, &cl);
        CHECK_EQ_INT(tms_token_cache_get(c, tok, 10, &out), 1);
    }
    tms_token_cache_put(off, "a.b.c", &cl);
    CHECK_EQ_INT(tms_token_cache_get(off, "a.b.c", 10, &out), 0);
    tms_token_cache_free(&c);
    tms_token_cache_free(&off);
}

int main(void)
{
    RUN_TEST(test_token_cache);
    TEST_EXIT();
}
