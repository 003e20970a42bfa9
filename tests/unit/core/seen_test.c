/* The set of recently seen keys (the gateway's Idempotency-Key memory): a key is there
 * for its time and then gone, other keys are not, and a full neighbourhood forgets the
 * key closest to expiry. */
#include <stdio.h>

#include "core/seen.h"
#include "test.h"

static void test_add_has_expire(void)
{
    tms_seen_t *s = tms_seen_new(10, 1000);
    CHECK(!tms_seen_has(s, "u1 key", 0));
    tms_seen_add(s, "u1 key", 100);
    CHECK(tms_seen_has(s, "u1 key", 100));
    CHECK(tms_seen_has(s, "u1 key", 1099));
    CHECK(!tms_seen_has(s, "u1 key", 1100));
    CHECK(!tms_seen_has(s, "u2 key", 500));
    tms_seen_add(s, "u1 key", 1000); /* again: its time starts over */
    CHECK(tms_seen_has(s, "u1 key", 1999));
    tms_seen_free(&s);
    CHECK(s == NULL);
    tms_seen_free(&s);
}

/* Far more keys than slots: the set stays bounded, the newest keys are found. */
static void test_bounded(void)
{
    tms_seen_t *s = tms_seen_new(64, 1000000);
    char key[32];
    int found = 0;
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        tms_seen_add(s, key, (uint64_t)i);
    }
    for (int i = 9990; i < 10000; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        found += tms_seen_has(s, key, 10000);
    }
    CHECK(found >= 8); /* only a pile-up of 8 later keys around one could push it out */
    CHECK(tms_seen_has(s, "k9999", 10000));
    tms_seen_free(&s);
}

int main(void)
{
    RUN_TEST(test_add_has_expire);
    RUN_TEST(test_bounded);
    TEST_EXIT();
}
