/* The operation table: one row per operation, each fact consistent with the others,
 * and the permission rules and list sizes that the actors and adapters read from it. */
#include <string.h>

#include "core/api.h"
#include "core/ops.h"
#include "test.h"

static void test_one_row_per_op(void)
{
    size_t n;
    const tms_op_t *ops = tms_ops(&n);
    CHECK_EQ_INT(n, TMS_API_OP_COUNT - 1);
    for (int a = 1; a < TMS_API_OP_COUNT; a++) {
        const tms_op_t *row = tms_op_get((tms_api_op_t)a);
        CHECK(row != NULL);
        if (!row)
            continue;
        CHECK_EQ_INT(row->op, a);
        CHECK(row->name && strcmp(row->name, "unknown") != 0);
        CHECK(row->owner == TMS_OWNER_AUTH || row->owner == TMS_OWNER_TASK);
        CHECK(row->result != 0);
        /* A caller is needed exactly when the rule asks for one. */
        CHECK_EQ_INT(row->needs_caller, row->rule != TMS_RULE_ANYONE);
        /* Only the services' own operations are on no public protocol. */
        CHECK(row->rest_method || row->grpc_method || row->rule == TMS_RULE_SERVICE);
        CHECK(!row->rest_method == !row->rest_route);
        CHECK(!row->rest_method || row->rest_status == 200 || row->rest_status == 201);
        CHECK(!row->grpc_method || row->grpc_method[0] == '/');
        CHECK(row->internal_op > 0);
        if (row->list.max) {
            CHECK(row->list.min >= 1 && row->list.min <= row->list.def);
            CHECK(row->list.def <= row->list.max);
        }
        for (int b = 1; b < a; b++) {
            const tms_op_t *other = tms_op_get((tms_api_op_t)b);
            if (!other)
                continue;
            CHECK(strcmp(row->name, other->name) != 0);
            CHECK(row->internal_op != other->internal_op);
            CHECK(!row->grpc_method || !other->grpc_method ||
                  strcmp(row->grpc_method, other->grpc_method) != 0);
            CHECK(!row->rest_method || !other->rest_method ||
                  strcmp(row->rest_method, other->rest_method) != 0 ||
                  strcmp(row->rest_route, other->rest_route) != 0);
        }
    }
    for (size_t i = 0; i < n; i++)
        CHECK(tms_op_get(ops[i].op) == &ops[i]);
    CHECK(tms_op_get((tms_api_op_t)0) == NULL);
    CHECK(tms_op_get(TMS_API_OP_COUNT) == NULL);
}

static void test_names_and_lookups(void)
{
    CHECK_EQ_STR(tms_op_name(TMS_API_TASK_CREATE), "task_create");
    CHECK_EQ_STR(tms_api_op_name(TMS_API_TASK_CREATE), "task_create");
    CHECK_EQ_STR(tms_op_name((tms_api_op_t)0), "unknown");
    CHECK_EQ_STR(tms_op_name(TMS_API_OP_COUNT), "unknown");
    CHECK(tms_op_by_grpc("/TaskService/GetTask", 20) == tms_op_get(TMS_API_TASK_GET));
    CHECK(tms_op_by_grpc("/TaskService/GetTas", 19) == NULL);
    CHECK(tms_op_by_grpc("/AuthService/Nope", 17) == NULL);
    CHECK(tms_op_by_internal(0) == NULL);
    CHECK(tms_op_by_internal(99) == NULL);
}

/* The numbers on the wire between the processes of a split deployment: a process of
 * one version must understand a peer of the previous one, so they never change. */
static void test_internal_numbers_are_stable(void)
{
    static const struct {
        tms_api_op_t op;
        int32_t n;
    } wire[] = {
        {TMS_API_REGISTER, 1},     {TMS_API_LOGIN, 2},
        {TMS_API_LOGOUT, 3},       {TMS_API_ME, 4},
        {TMS_API_DELETE_USER, 5},  {TMS_API_USER_EXISTS, 6},
        {TMS_API_USER_INFO, 7},    {TMS_API_VERIFY_TOKEN, 8},
        {TMS_API_TASK_CREATE, 9},  {TMS_API_TASK_GET, 10},
        {TMS_API_TASK_LIST, 11},   {TMS_API_TASK_UPDATE, 12},
        {TMS_API_TASK_DELETE, 13}, {TMS_API_USER_CREATE, 14},
        {TMS_API_TASK_WATCH, 15},  {TMS_API_TASK_EVENTS_TICKET, 16},
        {TMS_API_TASK_EVENTS, 17},
    };
    for (size_t i = 0; i < sizeof(wire) / sizeof(wire[0]); i++) {
        CHECK_EQ_INT(tms_op_get(wire[i].op)->internal_op, wire[i].n);
        CHECK(tms_op_by_internal(wire[i].n) == tms_op_get(wire[i].op));
    }
}

static void test_needs_caller(void)
{
    CHECK(!tms_op_get(TMS_API_REGISTER)->needs_caller);
    CHECK(!tms_op_get(TMS_API_LOGIN)->needs_caller);
    CHECK(!tms_op_get(TMS_API_VERIFY_TOKEN)->needs_caller);
    CHECK(tms_op_get(TMS_API_ME)->needs_caller);
    CHECK(tms_op_get(TMS_API_TASK_GET)->needs_caller);
}

static void test_idempotent_reads_only(void)
{
    CHECK(tms_op_get(TMS_API_TASK_GET)->idempotent);
    CHECK(tms_op_get(TMS_API_TASK_LIST)->idempotent);
    CHECK(tms_op_get(TMS_API_USER_INFO)->idempotent);
    CHECK(!tms_op_get(TMS_API_LOGIN)->idempotent); /* bumps the token version */
    CHECK(!tms_op_get(TMS_API_TASK_CREATE)->idempotent);
    CHECK(!tms_op_get(TMS_API_TASK_UPDATE)->idempotent);
    CHECK(!tms_op_get(TMS_API_DELETE_USER)->idempotent);
}

static tms_principal_t user(const char *role)
{
    tms_principal_t p = {.authenticated = true};
    strcpy(p.user_id, "0123456789abcdef01234567");
    strcpy(p.role, role);
    return p;
}

static void test_permits(void)
{
    tms_principal_t u = user("user"), admin = user("admin"), nobody = {0},
                    service = {.service = true};
    const tms_op_t *del_user = tms_op_get(TMS_API_DELETE_USER),
                   *info = tms_op_get(TMS_API_USER_INFO), *update = tms_op_get(TMS_API_TASK_UPDATE),
                   *del_task = tms_op_get(TMS_API_TASK_DELETE),
                   *list = tms_op_get(TMS_API_TASK_LIST), *login = tms_op_get(TMS_API_LOGIN);
    tms_op_subject_t self = {.self = true}, creator = {.creator = true},
                     assignee = {.assignee = true}, other = {0};
    CHECK(tms_op_permits(login, &nobody, NULL));
    CHECK(tms_op_permits(list, &u, NULL));
    CHECK(!tms_op_permits(list, &nobody, NULL));

    CHECK(tms_op_permits(del_user, &u, &self));
    CHECK(!tms_op_permits(del_user, &u, &other));
    CHECK(tms_op_permits(del_user, &admin, &other));
    CHECK(!tms_op_permits(del_user, &service, &other));

    CHECK(tms_op_permits(info, &u, &self));
    CHECK(!tms_op_permits(info, &u, &other));
    CHECK(tms_op_permits(info, &admin, &other));
    CHECK(tms_op_permits(info, &service, &other));
    CHECK(!tms_op_permits(info, &nobody, &self)); /* "self" of nobody is no one */

    CHECK(tms_op_permits(update, &u, &creator));
    CHECK(tms_op_permits(update, &u, &assignee));
    CHECK(!tms_op_permits(update, &u, &other));
    CHECK(tms_op_permits(update, &admin, &other));
    CHECK(tms_op_permits(del_task, &u, &creator));
    CHECK(!tms_op_permits(del_task, &u, &assignee));
    CHECK(tms_op_permits(del_task, &admin, &other));
    CHECK(!tms_op_permits(del_task, &service, &assignee));

    /* The push log is the push hubs' (a service) alone; every user may watch. */
    CHECK(tms_op_permits(tms_op_get(TMS_API_TASK_EVENTS), &service, NULL));
    CHECK(!tms_op_permits(tms_op_get(TMS_API_TASK_EVENTS), &admin, NULL));
    CHECK(!tms_op_permits(tms_op_get(TMS_API_TASK_EVENTS), &u, NULL));
    CHECK(tms_op_permits(tms_op_get(TMS_API_TASK_WATCH), &u, NULL));
    CHECK(!tms_op_permits(tms_op_get(TMS_API_TASK_WATCH), &nobody, NULL));
}

/* A trusted peer's call without a token (grpc.trusted_peers, issue 21): the task calls
 * and the auth calls that name a user run with no caller under the op's legacy rule;
 * nothing else skips its token (Me is REST only and has none), and a principal that is
 * both a user and trusted is refused (the gateway never makes one). */
static void test_trusted_legacy_rule(void)
{
    tms_principal_t trusted = {.trusted = true}, both = user("admin");
    tms_op_subject_t other = {0};
    size_t n;
    const tms_op_t *ops = tms_ops(&n);
    both.trusted = true;
    for (size_t i = 0; i < n; i++) {
        const tms_op_t *op = &ops[i];
        /* the push log read is the hubs' own (a service's), no original call */
        bool task = op->owner == TMS_OWNER_TASK && op->op != TMS_API_TASK_EVENTS;
        /* tms.v1 services (TaskEvents/Watch) are TMS's own: a stream needs a user */
        bool original = op->grpc_method && strncmp(op->grpc_method, "/tms.", 5) != 0;
        bool names_user = op->op == TMS_API_LOGOUT || op->op == TMS_API_DELETE_USER ||
                          op->op == TMS_API_USER_INFO || op->op == TMS_API_USER_EXISTS;
        CHECK_EQ_INT(op->legacy, task         ? TMS_LEGACY_NO_CALLER
                                 : names_user ? TMS_LEGACY_MESSAGE_USER
                                              : TMS_LEGACY_NONE);
        /* every op the original served over gRPC is served to a trusted peer */
        CHECK_EQ_INT(tms_op_trusted_runs(op), original && op->needs_caller);
        CHECK_EQ_INT(tms_op_permits(op, &trusted, &other),
                     op->legacy != TMS_LEGACY_NONE || op->rule == TMS_RULE_ANYONE);
        CHECK(!tms_op_permits(op, &both, &other));
    }
    CHECK(!tms_op_trusted_runs(tms_op_get(TMS_API_ME)));
    CHECK(!tms_op_permits(tms_op_get(TMS_API_ME), &trusted, NULL));
}

static void test_list_size(void)
{
    const tms_op_t *list = tms_op_get(TMS_API_TASK_LIST);
    tms_error_t err;
    CHECK_EQ_INT(tms_op_list_size(list, 0), 50);
    CHECK_EQ_INT(tms_op_list_size(list, 7), 7);
    CHECK_EQ_INT(tms_op_check_list_size(list, 1, &err), 0);
    CHECK_EQ_INT(tms_op_check_list_size(list, 200, &err), 0);
    CHECK_EQ_INT(tms_op_check_list_size(list, 0, &err), -1);
    CHECK_EQ_INT(err.code, TMS_INVALID_ARGUMENT);
    CHECK_EQ_STR(err.message, "limit must be an integer from 1 to 200");
    CHECK_EQ_INT(tms_op_check_list_size(list, 201, &err), -1);
    CHECK_EQ_INT(tms_op_check_list_size(list, -5, &err), -1);
}

int main(void)
{
    RUN_TEST(test_one_row_per_op);
    RUN_TEST(test_names_and_lookups);
    RUN_TEST(test_internal_numbers_are_stable);
    RUN_TEST(test_needs_caller);
    RUN_TEST(test_idempotent_reads_only);
    RUN_TEST(test_permits);
    RUN_TEST(test_trusted_legacy_rule);
    RUN_TEST(test_list_size);
    TEST_EXIT();
}
