/* The operation table (ops.h). */
#include "core/ops.h"

#include <string.h>

#include "core/api.h"

#define LIST_MIN 1
#define LIST_MAX 200
#define LIST_DEFAULT 50

/* clang-format off */
static const tms_op_t ops[] = {
    {.op = TMS_API_REGISTER, .name = "register", .owner = TMS_OWNER_AUTH,
     .needs_caller = false, .rule = TMS_RULE_ANYONE, .idempotent = false,
     .body = TMS_BODY_SMALL, .args = TMS_ARGS_CREDENTIALS | TMS_ARGS_ONLY_KNOWN,
     .result = TMS_RESULT_SESSION,
     .rest_method = "POST", .rest_route = "/api/auth/register", .rest_status = 201,
     .grpc_method = "/AuthService/Register", .internal_op = 1},
    {.op = TMS_API_LOGIN, .name = "login", .owner = TMS_OWNER_AUTH,
     .needs_caller = false, .rule = TMS_RULE_ANYONE, .idempotent = false, /* bumps the token version */
     .rate = TMS_RATE_LOGIN,
     .body = TMS_BODY_SMALL, .args = TMS_ARGS_CREDENTIALS, .result = TMS_RESULT_SESSION,
     .rest_method = "POST", .rest_route = "/api/auth/login", .rest_status = 200,
     .grpc_method = "/AuthService/Login", .internal_op = 2},
    {.op = TMS_API_LOGOUT, .name = "logout", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_SELF_OR_ADMIN, .legacy = TMS_LEGACY_MESSAGE_USER,
     .idempotent = false,
     .result = TMS_RESULT_DONE,
     .rest_method = "POST", .rest_route = "/api/auth/logout", .rest_status = 200,
     .grpc_method = "/AuthService/Logout", .internal_op = 3},
    {.op = TMS_API_ME, .name = "me", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .idempotent = true,
     .result = TMS_RESULT_USER,
     .rest_method = "GET", .rest_route = "/api/auth/me", .rest_status = 200,
     .internal_op = 4},
    {.op = TMS_API_DELETE_USER, .name = "delete_user", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_SELF_OR_ADMIN, .legacy = TMS_LEGACY_MESSAGE_USER,
     .idempotent = false,
     .args = TMS_ARGS_USER_ID, .result = TMS_RESULT_DONE,
     .rest_method = "DELETE", .rest_route = "/api/auth/delete/:id", .rest_status = 200,
     .grpc_method = "/AuthService/DeleteUser", .internal_op = 5},
    {.op = TMS_API_USER_EXISTS, .name = "user_exists", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_SELF_ADMIN_OR_SERVICE, .legacy = TMS_LEGACY_MESSAGE_USER,
     .idempotent = true,
     .result = TMS_RESULT_FLAG,
     .grpc_method = "/AuthService/UserExists", .internal_op = 6},
    {.op = TMS_API_USER_INFO, .name = "user_info", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_SELF_ADMIN_OR_SERVICE, .legacy = TMS_LEGACY_MESSAGE_USER,
     .idempotent = true,
     .args = TMS_ARGS_USER_ID, .result = TMS_RESULT_USER,
     .rest_method = "GET", .rest_route = "/api/auth/users/:id", .rest_status = 200,
     .grpc_method = "/AuthService/GetUserInfo", .internal_op = 7},
    {.op = TMS_API_VERIFY_TOKEN, .name = "verify_token", .owner = TMS_OWNER_AUTH,
     .needs_caller = false, .rule = TMS_RULE_ANYONE, .idempotent = true,
     .body = TMS_BODY_SMALL, .result = TMS_RESULT_PRINCIPAL,
     .grpc_method = "/AuthService/VerifyToken", .internal_op = 8},
    {.op = TMS_API_TASK_CREATE, .name = "task_create", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .legacy = TMS_LEGACY_NO_CALLER,
     .idempotent = false,
     .rate = TMS_RATE_TASK_CREATE,
     .args = TMS_ARGS_TASK | TMS_ARGS_IDEMPOTENCY, .result = TMS_RESULT_TASK,
     .rest_method = "POST", .rest_route = "/api/task", .rest_status = 201,
     .grpc_method = "/TaskService/CreateTask", .internal_op = 9},
    {.op = TMS_API_TASK_GET, .name = "task_get", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .legacy = TMS_LEGACY_NO_CALLER,
     .idempotent = true,
     .args = TMS_ARGS_TASK_ID, .result = TMS_RESULT_TASK,
     .rest_method = "GET", .rest_route = "/api/task/:id", .rest_status = 200,
     .grpc_method = "/TaskService/GetTask", .internal_op = 10},
    {.op = TMS_API_TASK_LIST, .name = "task_list", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .legacy = TMS_LEGACY_NO_CALLER,
     .idempotent = true,
     .list = {LIST_MIN, LIST_MAX, LIST_DEFAULT},
     .args = TMS_ARGS_LIST, .result = TMS_RESULT_TASKS,
     .rest_method = "GET", .rest_route = "/api/task", .rest_status = 200,
     .grpc_method = "/TaskService/ListTasks", .internal_op = 11},
    {.op = TMS_API_TASK_UPDATE, .name = "task_update", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_CREATOR_ASSIGNEE_OR_ADMIN, .legacy = TMS_LEGACY_NO_CALLER,
     .idempotent = false,
     .args = TMS_ARGS_TASK_ID | TMS_ARGS_TASK_PATCH | TMS_ARGS_IF_MATCH,
     .result = TMS_RESULT_TASK,
     .rest_method = "PATCH", .rest_route = "/api/task/:id", .rest_status = 200,
     .grpc_method = "/TaskService/UpdateTask", .internal_op = 12},
    {.op = TMS_API_TASK_DELETE, .name = "task_delete", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_CREATOR_OR_ADMIN, .legacy = TMS_LEGACY_NO_CALLER,
     .idempotent = false,
     .args = TMS_ARGS_TASK_ID | TMS_ARGS_IF_MATCH, .result = TMS_RESULT_DELETED,
     .rest_method = "DELETE", .rest_route = "/api/task/:id", .rest_status = 200,
     .grpc_method = "/TaskService/DeleteTask", .internal_op = 13},
    {.op = TMS_API_USER_CREATE, .name = "user_create", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_ADMIN, .idempotent = false,
     .args = TMS_ARGS_CREDENTIALS | TMS_ARGS_ONLY_KNOWN, .result = TMS_RESULT_USER,
     .rest_method = "POST", .rest_route = "/api/auth/users", .rest_status = 201,
     .internal_op = 14},
    {.op = TMS_API_TASK_WATCH, .name = "task_watch", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .idempotent = true,
     .args = TMS_ARGS_WATCH, .result = TMS_RESULT_STREAM,
     .rest_method = "GET", .rest_route = "/api/task/events", .rest_status = 200,
     .grpc_method = "/tms.v1.TaskEvents/Watch", .internal_op = 15},
    {.op = TMS_API_TASK_EVENTS_TICKET, .name = "task_events_ticket", .owner = TMS_OWNER_AUTH,
     .needs_caller = true, .rule = TMS_RULE_CALLER, .idempotent = false,
     .result = TMS_RESULT_TICKET,
     .rest_method = "POST", .rest_route = "/api/task/events/ticket", .rest_status = 200,
     .internal_op = 16},
    {.op = TMS_API_TASK_EVENTS, .name = "task_events", .owner = TMS_OWNER_TASK,
     .needs_caller = true, .rule = TMS_RULE_SERVICE, .idempotent = true,
     .result = TMS_RESULT_EVENTS, .internal_op = 17},
};
/* clang-format on */
#define NOPS (sizeof(ops) / sizeof(ops[0]))

const tms_op_t *tms_ops(size_t *n)
{
    *n = NOPS;
    return ops;
}

const tms_op_t *tms_op_get(tms_api_op_t op)
{
    for (size_t i = 0; i < NOPS; i++) {
        if (ops[i].op == op)
            return &ops[i];
    }
    return NULL;
}

const tms_op_t *tms_op_by_grpc(const char *path, size_t len)
{
    for (size_t i = 0; i < NOPS; i++) {
        const char *m = ops[i].grpc_method;
        if (m && strlen(m) == len && memcmp(m, path, len) == 0)
            return &ops[i];
    }
    return NULL;
}

const tms_op_t *tms_op_by_internal(int32_t n)
{
    for (size_t i = 0; i < NOPS; i++) {
        if (ops[i].internal_op == n)
            return &ops[i];
    }
    return NULL;
}

const char *tms_op_name(tms_api_op_t op)
{
    const tms_op_t *row = tms_op_get(op);
    return row ? row->name : "unknown";
}

bool tms_op_trusted_runs(const tms_op_t *op)
{
    return op->needs_caller && op->legacy != TMS_LEGACY_NONE;
}

bool tms_op_permits(const tms_op_t *op, const tms_principal_t *p, const tms_op_subject_t *subject)
{
    static const tms_op_subject_t nobody;
    const tms_op_subject_t *s = subject ? subject : &nobody;
    bool user = p->authenticated, admin = user && strcmp(p->role, "admin") == 0;
    if (p->trusted) /* a trusted peer without a token: the original had no checks */
        return !user && (op->rule == TMS_RULE_ANYONE || op->legacy != TMS_LEGACY_NONE);
    switch (op->rule) {
    case TMS_RULE_ANYONE:
        return true;
    case TMS_RULE_CALLER:
        return user;
    case TMS_RULE_SELF_OR_ADMIN:
        return admin || (user && s->self);
    case TMS_RULE_SELF_ADMIN_OR_SERVICE:
        return p->service || admin || (user && s->self);
    case TMS_RULE_CREATOR_ASSIGNEE_OR_ADMIN:
        return admin || (user && (s->creator || s->assignee));
    case TMS_RULE_CREATOR_OR_ADMIN:
        return admin || (user && s->creator);
    case TMS_RULE_SERVICE:
        return p->service;
    case TMS_RULE_ADMIN:
        return admin;
    }
    return false;
}

int32_t tms_op_list_size(const tms_op_t *op, int32_t given)
{
    return given ? given : op->list.def;
}

int tms_op_check_list_size(const tms_op_t *op, int64_t n, tms_error_t *err)
{
    if (n >= op->list.min && n <= op->list.max)
        return 0;
    tms_error_set(err, TMS_INVALID_ARGUMENT, "limit must be an integer from %d to %d",
                  (int)op->list.min, (int)op->list.max);
    return -1;
}
