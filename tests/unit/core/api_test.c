/* The protocol-neutral call: every operation has a name of its own (logs and metrics
 * label calls by it), and which operations need a verified token. */
#include <string.h>

#include "core/api.h"
#include "test.h"

static void test_every_op_has_a_unique_name(void)
{
    for (int a = 1; a < TMS_API_OP_COUNT; a++) {
        const char *name = tms_api_op_name((tms_api_op_t)a);
        CHECK(strcmp(name, "unknown") != 0);
        for (int b = 1; b < a; b++)
            CHECK(strcmp(name, tms_api_op_name((tms_api_op_t)b)) != 0);
    }
    CHECK_EQ_STR(tms_api_op_name(TMS_API_TASK_CREATE), "task_create");
    CHECK_EQ_STR(tms_api_op_name((tms_api_op_t)0), "unknown");
    CHECK_EQ_STR(tms_api_op_name(TMS_API_OP_COUNT), "unknown");
}

static void test_needs_auth(void)
{
    CHECK(!tms_api_op_needs_auth(TMS_API_REGISTER));
    CHECK(!tms_api_op_needs_auth(TMS_API_LOGIN));
    CHECK(!tms_api_op_needs_auth(TMS_API_VERIFY_TOKEN));
    CHECK(tms_api_op_needs_auth(TMS_API_ME));
    CHECK(tms_api_op_needs_auth(TMS_API_TASK_GET));
}

int main(void)
{
    RUN_TEST(test_every_op_has_a_unique_name);
    RUN_TEST(test_needs_auth);
    TEST_EXIT();
}
