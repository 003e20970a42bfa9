/* ObjectIds: 24 lowercase hex characters, different on every call, the first four
 * bytes the current second; the check takes exactly that shape and nothing else. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/objectid.h"
#include "test.h"

static void test_new_is_valid_and_unique(void)
{
    char a[25], b[25], secs[9];
    long long before = (long long)(tms_now_ms() / 1000), at;
    tms_objectid_new(a);
    tms_objectid_new(b);
    CHECK_EQ_INT(strlen(a), 24);
    CHECK(tms_objectid_valid(a));
    CHECK(tms_objectid_valid(b));
    CHECK(strcmp(a, b) != 0);
    memcpy(secs, a, 8);
    secs[8] = '\0';
    at = strtoll(secs, NULL, 16);
    CHECK(at >= before && at <= before + 2);
}

static void test_valid_takes_only_24_lowercase_hex(void)
{
    CHECK(tms_objectid_valid("0123456789abcdef01234567"));
    CHECK(!tms_objectid_valid("0123456789ABCDEF01234567"));
    CHECK(!tms_objectid_valid("0123456789abcdef0123456"));
    CHECK(!tms_objectid_valid("0123456789abcdef012345678"));
    CHECK(!tms_objectid_valid("0123456789abcdef0123456g"));
    CHECK(!tms_objectid_valid(""));
}

int main(void)
{
    RUN_TEST(test_new_is_valid_and_unique);
    RUN_TEST(test_valid_takes_only_24_lowercase_hex);
    TEST_EXIT();
}
