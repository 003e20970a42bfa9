/* The operation table: every fact of an API operation in one row, in the style of
 * Redis's command table: its name, the actor that owns it, whether it needs a caller
 * and which permission rule that actor applies, whether running it twice is harmless
 * (so a call to a peer process may be retried), its limits, where its arguments come
 * from and what it answers, and its name in each protocol: REST method + route, gRPC
 * full method, and its number on the internal service of a split deployment
 * (tms.internal.Actors/Call). The REST router, the gRPC and internal dispatch, the
 * gateway's routing and the metrics and log labels look facts up here; protocol code
 * never decides by operation.
 *
 * Adding an operation: its tms_api_op_t value and its row below (ops.c), its rule in
 * the owning actor, and only when its arguments or results have a shape no other
 * operation has, that shape in the mappings (http/rest.c, grpc/codec.c); a gRPC
 * method also needs its messages in src/proto and its request/response in codec.c. */
#ifndef TMS_CORE_OPS_H
#define TMS_CORE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/status.h"

typedef enum tms_api_op {
    TMS_API_REGISTER = 1,       /* email, password -> token, user */
    TMS_API_LOGIN,              /* email, password -> token, user */
    TMS_API_LOGOUT,             /* bearer; target_id (empty: self) -> ok */
    TMS_API_ME,                 /* bearer -> user */
    TMS_API_DELETE_USER,        /* bearer; target_id -> ok */
    TMS_API_USER_EXISTS,        /* bearer (self or admin) or service; target_id -> flag */
    TMS_API_USER_INFO,          /* bearer (self or admin) or service; target_id -> user */
    TMS_API_VERIFY_TOKEN,       /* token in bearer -> flag (valid), user id and role */
    TMS_API_TASK_CREATE,        /* bearer; title, description, status?, assigned_to?,
                                 * idempotency_key? -> task (replayed when idempotent) */
    TMS_API_TASK_GET,           /* bearer; task_id -> task */
    TMS_API_TASK_LIST,          /* bearer; assigned_to?, status?, limit (0 = default),
                                 * cursor? -> tasks, next_cursor */
    TMS_API_TASK_UPDATE,        /* bearer; task_id, any of title/description/status/
                                 * assigned_to ("" unassigns), if_match? -> task */
    TMS_API_TASK_DELETE,        /* bearer; task_id, if_match? -> ok */
    TMS_API_USER_CREATE,        /* bearer (admin); email, password -> user (auth.registration) */
    TMS_API_TASK_WATCH,         /* bearer or ticket; assigned_to?, status?, task_id (0 = any),
                                 * since? -> the principal for a stream of task events (the
                                 * adapter hands it to the push hub, core/push.h) */
    TMS_API_TASK_EVENTS_TICKET, /* bearer -> ticket (in token), ticket_expires_ms */
    TMS_API_TASK_EVENTS,        /* service only (the push hubs); since, upto, limit,
                                 * assigned_to?, status?, task_id -> events, first_seq,
                                 * last_seq */
    TMS_API_OP_COUNT,
} tms_api_op_t;

/* The actor that runs the operation (its EXECUTE stage). */
typedef enum tms_op_owner {
    TMS_OWNER_AUTH = 1,
    TMS_OWNER_TASK,
} tms_op_owner_t;

/* Who may run the operation, once the caller is known (the owning actor applies it
 * with tms_op_permits and words the refusal). */
typedef enum tms_op_rule {
    TMS_RULE_ANYONE = 1,                /* needs no caller */
    TMS_RULE_CALLER,                    /* any authenticated user */
    TMS_RULE_SELF_OR_ADMIN,             /* the target user is the caller, or an admin */
    TMS_RULE_SELF_ADMIN_OR_SERVICE,     /* the same, or a TMS service (principal.service) */
    TMS_RULE_CREATOR_ASSIGNEE_OR_ADMIN, /* of the task */
    TMS_RULE_CREATOR_OR_ADMIN,          /* of the task */
    TMS_RULE_SERVICE,                   /* a TMS service only (principal.service) */
    TMS_RULE_ADMIN,                     /* an admin */
} tms_op_rule_t;

/* What a call without a token from a trusted peer gets (grpc.trusted_peers: the
 * original Node.js system's own gateway and notifier during a migration, which
 * authenticate users themselves and call the services with no metadata). Calls with
 * a token, and calls from anyone else, never see this: they follow the rule above. */
typedef enum tms_op_legacy {
    TMS_LEGACY_NONE = 0,     /* nothing special: a token when needs_caller, as for anyone */
    TMS_LEGACY_NO_CALLER,    /* as the original task-service: no caller and no permission
                              * check (a created task has no creator; any task may be
                              * changed or deleted) */
    TMS_LEGACY_MESSAGE_USER, /* as the original auth-service: acts on the userId of the
                              * message, which is required, with the original's error texts
                              * ("User ID is required", "User not found") */
} tms_op_legacy_t;

/* A rate limit of the gateway beyond the per-address one that every call takes. */
typedef enum tms_op_rate {
    TMS_RATE_NONE = 0,
    TMS_RATE_LOGIN,       /* per email and client address, before anything runs */
    TMS_RATE_TASK_CREATE, /* per user, once authenticated */
} tms_op_rate_t;

/* How large a request may be. */
typedef enum tms_op_body {
    TMS_BODY_ANY = 0, /* the listener's bound (http.max_body_bytes, grpc.max_message_bytes) */
    TMS_BODY_SMALL,   /* small by nature (credentials, a token) and run before anyone
                       * checked a token: over gRPC held to
                       * grpc.max_unauthenticated_message_bytes */
} tms_op_body_t;

/* Where the arguments come from in REST (a bit set; the gRPC request message has a
 * field for each). */
enum tms_op_args {
    TMS_ARGS_CREDENTIALS = 1u << 0, /* body {email, password} */
    TMS_ARGS_USER_ID = 1u << 1,     /* the route's :id names a user (target_id) */
    TMS_ARGS_TASK_ID = 1u << 2,     /* the route's :id names a task (task_id) */
    TMS_ARGS_TASK = 1u << 3,        /* body {title, description, status, assignedTo} */
    TMS_ARGS_TASK_PATCH = 1u << 4,  /* body: a non-empty subset of those fields */
    TMS_ARGS_LIST = 1u << 5,        /* query assignedTo, status, limit, cursor */
    TMS_ARGS_IF_MATCH = 1u << 6,    /* header If-Match: the version expected */
    TMS_ARGS_IDEMPOTENCY = 1u << 7, /* header Idempotency-Key */
    TMS_ARGS_ONLY_KNOWN = 1u << 8,  /* a body field other than the ones named is refused
                                     * (task bodies always refuse them) */
    TMS_ARGS_WATCH = 1u << 9,       /* query assignedTo, status, id, since, ticket; header
                                     * Last-Event-ID */
};

/* What a successful call answers with. */
typedef enum tms_op_result {
    TMS_RESULT_SESSION = 1, /* token and user */
    TMS_RESULT_USER,        /* user */
    TMS_RESULT_DONE,        /* nothing but success */
    TMS_RESULT_FLAG,        /* flag */
    TMS_RESULT_PRINCIPAL,   /* whether a token is valid, its user id and role */
    TMS_RESULT_TASK,        /* task (REST: with its ETag) */
    TMS_RESULT_TASKS,       /* a page of tasks and the cursor of the next */
    TMS_RESULT_DELETED,     /* "Task deleted" */
    TMS_RESULT_STREAM,      /* a stream of task events: REST text/event-stream, gRPC a
                             * server stream (the adapters and core/push.h) */
    TMS_RESULT_TICKET,      /* a stream ticket and its end */
    TMS_RESULT_EVENTS,      /* task events and the log's bounds (internal only) */
} tms_op_result_t;

typedef struct tms_op {
    tms_api_op_t op;
    const char *name; /* "task_list": logs and metrics */
    tms_op_owner_t owner;
    bool needs_caller; /* a verified bearer token first (the auth actor's AUTHENTICATE) */
    tms_op_rule_t rule;
    tms_op_legacy_t legacy; /* for a trusted peer's call without a token */
    bool idempotent;        /* running it twice changes nothing: a peer call may be retried */
    tms_op_rate_t rate;
    tms_op_body_t body;
    struct {
        int32_t min, max, def; /* list size; all 0 when the op is no list */
    } list;
    unsigned args; /* enum tms_op_args */
    tms_op_result_t result;
    const char *rest_method; /* NULL: not on REST */
    const char *rest_route;  /* "/api/task/:id": a trailing ":id" is one path segment */
    int rest_status;         /* HTTP status of success */
    const char *grpc_method; /* "/TaskService/GetTask"; NULL: not on gRPC */
    int32_t internal_op;     /* ActorCall.op of tms.internal.Actors/Call; never reused */
} tms_op_t;

/** Every row, in table order; *n receives their number. */
const tms_op_t *tms_ops(size_t *n);

/** The row of op, or NULL when op is no operation. */
const tms_op_t *tms_op_get(tms_api_op_t op);

/** The row served as gRPC method path[0..len), or NULL. */
const tms_op_t *tms_op_by_grpc(const char *path, size_t len);

/** The row with internal number n, or NULL. */
const tms_op_t *tms_op_by_internal(int32_t n);

/** The op's name ("register", ...); "unknown" when op is no operation. */
const char *tms_op_name(tms_api_op_t op);

/* The caller's relation to what the operation acts on. */
typedef struct tms_op_subject {
    bool self;     /* the target user is the caller */
    bool creator;  /* the caller created the task */
    bool assignee; /* the task is assigned to the caller */
} tms_op_subject_t;

struct tms_principal;

/** True when a trusted peer's call without a token skips authentication and runs
 * under op's legacy rule (principal.trusted); false when it needs a token as usual. */
bool tms_op_trusted_runs(const tms_op_t *op);

/** True when op's rule lets principal act on subject (NULL: none); for a trusted
 * principal, op's legacy rule decides instead. */
bool tms_op_permits(const tms_op_t *op, const struct tms_principal *principal,
                    const tms_op_subject_t *subject);

/** The list size a call asked for (0: not given) or, when it gave none, op's default. */
int32_t tms_op_list_size(const tms_op_t *op, int32_t given);

/** Checks a list size against op's row. Returns 0, or -1 with err set to
 * INVALID_ARGUMENT and the one message every protocol answers. */
int tms_op_check_list_size(const tms_op_t *op, int64_t n, tms_error_t *err);

#endif
