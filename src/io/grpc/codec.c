/* Protobuf <-> tms_api_call_t for the gRPC methods of the operation table, and the
 * health service's messages. */
#include "io/grpc/codec.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "auth.pb-c.h"
#include "core/alloc.h"
#include "core/clock.h"
#include "core/text.h"
#include "health.pb-c.h"
#include "io/grpc/pb_arena.h"
#include "io/grpc/wire.h"
#include "task.pb-c.h"
#include "task_events.pb-c.h"

static const ProtobufCMessageDescriptor *request_type(tms_api_op_t op)
{
    switch (op) {
    case TMS_API_REGISTER:
        return &register_request__descriptor;
    case TMS_API_LOGIN:
        return &login_request__descriptor;
    case TMS_API_LOGOUT:
        return &logout_request__descriptor;
    case TMS_API_USER_EXISTS:
        return &user_exists_request__descriptor;
    case TMS_API_VERIFY_TOKEN:
        return &verify_token_request__descriptor;
    case TMS_API_USER_INFO:
    case TMS_API_DELETE_USER:
        return &user_infor_request__descriptor;
    case TMS_API_TASK_CREATE:
        return &create_task_request__descriptor;
    case TMS_API_TASK_LIST:
        return &list_tasks_request__descriptor;
    case TMS_API_TASK_GET:
        return &get_task_request__descriptor;
    case TMS_API_TASK_UPDATE:
        return &update_task_request__descriptor;
    case TMS_API_TASK_DELETE:
        return &delete_task_request__descriptor;
    case TMS_API_TASK_WATCH:
        return &tms__v1__watch_request__descriptor;
    default:
        return NULL;
    }
}

/* A string of the request, unpacked in the call's arena: used in place. */
static char *text(tms_api_call_t *call, char *s)
{
    return tms_pb_arena_string(&call->arena, s);
}

/* An empty proto3 string means "not given" in create and list requests. */
static char *given(char *s)
{
    return s && s[0] ? s : NULL;
}

/* A given id: its value, or -1 when it is none (the actor refuses it). */
static int64_t id_or_bad(const char *s)
{
    int64_t v = tms_parse_id(s, strlen(s));
    return v > 0 ? v : -1;
}

static void set_target(tms_api_call_t *call, const char *id)
{
    snprintf(call->target_id, sizeof(call->target_id), "%s", id ? id : "");
}

/* protoc-c 1.4 has no proto3 `optional`: read which of UpdateTaskRequest's fields
 * 2..5 were sent from the raw message. */
static int update_presence(const uint8_t *msg, size_t len, int present[6])
{
    tms_pb_reader_t r;
    tms_pb_field_t f;
    int rc;
    tms_pb_reader_init(&r, msg, len);
    while ((rc = tms_pb_next(&r, &f)) == 1) {
        if (f.number >= 2 && f.number <= 5 && f.wire_type == 2)
            present[f.number] = 1;
    }
    return rc;
}

tms_api_call_t *tms_grpc_decode_call(const tms_op_t *op, const uint8_t *msg, size_t len,
                                     tms_error_t *err)
{
    const ProtobufCMessageDescriptor *type = op->grpc_method ? request_type(op->op) : NULL;
    ProtobufCMessage *pm;
    ProtobufCAllocator arena;
    tms_api_call_t *call;
    if (!type) {
        tms_error_set(err, TMS_UNIMPLEMENTED, "method not implemented");
        return NULL;
    }
    call = tms_api_call_new(op->op);
    arena = tms_pb_arena(&call->arena);
    pm = protobuf_c_message_unpack(type, &arena, len, msg);
    if (!pm) {
        tms_error_set(err, TMS_INVALID_ARGUMENT, "malformed protobuf request");
        tms_api_call_free(&call);
        return NULL;
    }
    switch (op->op) {
    case TMS_API_REGISTER:
    case TMS_API_LOGIN: {
        /* Register and Login requests share the layout {email=1, password=2}. */
        RegisterRequest *r = (RegisterRequest *)pm;
        call->email = text(call, r->email);
        call->password = text(call, r->password);
        break;
    }
    case TMS_API_LOGOUT:
        set_target(call, ((LogoutRequest *)pm)->userid);
        break;
    case TMS_API_USER_EXISTS:
        set_target(call, ((UserExistsRequest *)pm)->userid);
        break;
    case TMS_API_USER_INFO:
    case TMS_API_DELETE_USER:
        set_target(call, ((UserInforRequest *)pm)->userid);
        break;
    case TMS_API_VERIFY_TOKEN:
        call->bearer = text(call, ((VerifyTokenRequest *)pm)->token);
        break;
    case TMS_API_TASK_CREATE: {
        CreateTaskRequest *r = (CreateTaskRequest *)pm;
        call->title = text(call, r->title); /* "" is a title the actor refuses */
        call->description = text(call, r->description);
        call->status = given(r->status);
        call->assigned_to = given(r->assignedto);
        break;
    }
    case TMS_API_TASK_LIST: {
        ListTasksRequest *r = (ListTasksRequest *)pm;
        if (r->limit != 0 && tms_op_check_list_size(op, r->limit, err) != 0)
            goto bad; /* 0: not given (proto3), the default */
        call->limit = r->limit;
        call->status = given(r->status);
        call->assigned_to = given(r->assignedto);
        call->cursor = given(r->cursor);
        break;
    }
    case TMS_API_TASK_GET:
    case TMS_API_TASK_DELETE: {
        /* GetTaskRequest and DeleteTaskRequest share the layout {id=1}. */
        const char *id = ((GetTaskRequest *)pm)->id;
        call->task_id = tms_parse_id(id, strlen(id)); /* 0: malformed, the actor says so */
        break;
    }
    case TMS_API_TASK_UPDATE: {
        UpdateTaskRequest *r = (UpdateTaskRequest *)pm;
        int present[6] = {0};
        update_presence(msg, len, present); /* the message parsed, so this does too */
        call->task_id = tms_parse_id(r->id, strlen(r->id));
        if (present[2])
            call->title = text(call, r->title);
        if (present[3])
            call->description = text(call, r->description);
        if (present[4])
            call->assigned_to = text(call, r->assignedto); /* "" unassigns */
        if (present[5])
            call->status = text(call, r->status);
        if (!present[2] && !present[3] && !present[4] && !present[5]) {
            tms_error_set(err, TMS_INVALID_ARGUMENT, "no fields to update");
            goto bad;
        }
        break;
    }
    case TMS_API_TASK_WATCH: {
        Tms__V1__WatchRequest *r = (Tms__V1__WatchRequest *)pm;
        call->assigned_to = given(r->assignedto);
        call->status = given(r->status);
        /* -1: given but not an id; the actor answers INVALID_ARGUMENT */
        if (r->id && r->id[0])
            call->task_id = id_or_bad(r->id);
        if (r->since && r->since[0]) {
            call->has_since = true;
            call->since = strcmp(r->since, "0") == 0 ? 0 : id_or_bad(r->since);
        }
        break;
    }
    default:
        break;
    }
    return call; /* pm is in the call's arena */
bad:
    tms_api_call_free(&call);
    return NULL;
}

/* Serializes m into a new buffer: in arena, or on the heap with arena NULL. */
static void pack(tms_arena_t *arena, const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    *out = arena ? tms_arena_alloc(arena, *len) : tms_malloc(*len ? *len : 1);
    protobuf_c_message_pack(m, *out);
}

/* Task strings point into the caller's buffers, valid while the message is packed. */
typedef struct task_text {
    char id[24], created[32], updated[32];
} task_text_t;

static void task_message(Task *pt, task_text_t *tx, const tms_task_t *t)
{
    task__init(pt);
    snprintf(tx->id, sizeof(tx->id), "%lld", (long long)t->id);
    pt->id = tx->id;
    pt->title = t->title ? t->title : "";
    pt->description = t->description ? t->description : "";
    pt->assignedto = (char *)t->assigned_to;
    pt->status = (char *)t->status;
    pt->createdat = tms_format_time(t->created_at_ms, tx->created, sizeof(tx->created));
    pt->updatedat = tms_format_time(t->updated_at_ms, tx->updated, sizeof(tx->updated));
    pt->createdby = (char *)t->created_by;
    pt->version = t->version;
}

tms_status_t tms_grpc_encode_reply(const tms_op_t *op, tms_api_call_t *call, uint8_t **out,
                                   size_t *len, tms_error_t *err)
{
    const tms_op_t *called = tms_op_get(call->op);
    *out = NULL;
    *len = 0;
    if (call->err.code != TMS_OK) {
        if (called && called->result == TMS_RESULT_PRINCIPAL &&
            call->err.code == TMS_UNAUTHENTICATED) {
            VerifyTokenResponse r = VERIFY_TOKEN_RESPONSE__INIT;
            r.valid = 0;
            pack(&call->arena, &r.base, out, len);
            return TMS_OK;
        }
        *err = call->err;
        return err->code;
    }
    switch (op->op) {
    case TMS_API_REGISTER:
    case TMS_API_LOGIN: {
        AuthResponse r = AUTH_RESPONSE__INIT;
        r.token = call->token ? call->token : "";
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_LOGOUT: {
        LogoutResponse r = LOGOUT_RESPONSE__INIT;
        r.success = 1;
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_USER_EXISTS: {
        UserExistsResponse r = USER_EXISTS_RESPONSE__INIT;
        r.exists = call->flag;
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_VERIFY_TOKEN: {
        VerifyTokenResponse r = VERIFY_TOKEN_RESPONSE__INIT;
        r.valid = call->principal.authenticated;
        r.userid = (char *)call->principal.user_id;
        r.role = (char *)call->principal.role;
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_USER_INFO: {
        UserInfoResponse r = USER_INFO_RESPONSE__INIT;
        r.email = (char *)call->user.email;
        r.role = (char *)call->user.role;
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_DELETE_USER: {
        Empty r = EMPTY__INIT;
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_TASK_CREATE:
    case TMS_API_TASK_GET:
    case TMS_API_TASK_UPDATE: {
        Task t;
        task_text_t tx;
        task_message(&t, &tx, &call->task);
        pack(&call->arena, &t.base, out, len);
        break;
    }
    case TMS_API_TASK_LIST: {
        ListTasksResponse r = LIST_TASKS_RESPONSE__INIT;
        Task *tasks = tms_arena_calloc(&call->arena, call->ntasks, sizeof(Task));
        Task **ptrs = tms_arena_calloc(&call->arena, call->ntasks, sizeof(Task *));
        task_text_t *tx = tms_arena_calloc(&call->arena, call->ntasks, sizeof(task_text_t));
        for (size_t i = 0; i < call->ntasks; i++) {
            task_message(&tasks[i], &tx[i], &call->tasks[i]);
            ptrs[i] = &tasks[i];
        }
        r.n_tasks = call->ntasks;
        r.tasks = ptrs;
        r.nextcursor = call->next_cursor ? call->next_cursor : "";
        pack(&call->arena, &r.base, out, len);
        break;
    }
    case TMS_API_TASK_DELETE: {
        DeleteTaskResponse r = DELETE_TASK_RESPONSE__INIT;
        r.message = "Task deleted";
        pack(&call->arena, &r.base, out, len);
        break;
    }
    default:
        tms_error_set(err, TMS_INTERNAL, "internal error");
        return TMS_INTERNAL;
    }
    return TMS_OK;
}

int tms_grpc_health_decode(const uint8_t *msg, size_t len, char *service, size_t size)
{
    Grpc__Health__V1__HealthCheckRequest *r =
        grpc__health__v1__health_check_request__unpack(NULL, len, msg);
    if (!r)
        return -TMS_EINVAL;
    snprintf(service, size, "%s", r->service);
    grpc__health__v1__health_check_request__free_unpacked(r, NULL);
    return 0;
}

void tms_grpc_health_encode(int status, uint8_t **out, size_t *len)
{
    Grpc__Health__V1__HealthCheckResponse r = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    r.status = (Grpc__Health__V1__HealthCheckResponse__ServingStatus)status;
    pack(NULL, &r.base, out, len);
}

static const Tms__V1__EventType event_types[] = {
    [TMS_TASK_EVENT_CREATED] = TMS__V1__EVENT_TYPE__EVENT_TYPE_CREATED,
    [TMS_TASK_EVENT_UPDATED] = TMS__V1__EVENT_TYPE__EVENT_TYPE_UPDATED,
    [TMS_TASK_EVENT_ASSIGNED] = TMS__V1__EVENT_TYPE__EVENT_TYPE_ASSIGNED,
    [TMS_TASK_EVENT_DELETED] = TMS__V1__EVENT_TYPE__EVENT_TYPE_DELETED,
    [TMS_TASK_EVENT_RESET] = TMS__V1__EVENT_TYPE__EVENT_TYPE_RESET,
};

void tms_grpc_encode_event(const tms_task_event_t *e, uint8_t **out, size_t *len)
{
    Tms__V1__TaskEvent m = TMS__V1__TASK_EVENT__INIT;
    Tms__V1__Task t = TMS__V1__TASK__INIT;
    char id[24], at[32], tid[24], created[32], updated[32];
    snprintf(id, sizeof(id), "%lld", (long long)e->seq);
    m.id = id;
    m.type = (size_t)e->type < sizeof(event_types) / sizeof(event_types[0])
                 ? event_types[e->type]
                 : TMS__V1__EVENT_TYPE__EVENT_TYPE_UNSPECIFIED;
    m.time = tms_format_time(e->at_ms, at, sizeof(at));
    if (e->type != TMS_TASK_EVENT_RESET) {
        snprintf(tid, sizeof(tid), "%lld", (long long)e->task.id);
        t.id = tid;
        t.title = e->task.title ? e->task.title : "";
        t.description = e->task.description ? e->task.description : "";
        t.assignedto = (char *)e->task.assigned_to;
        t.status = (char *)e->task.status;
        t.createdat = tms_format_time(e->task.created_at_ms, created, sizeof(created));
        t.updatedat = tms_format_time(e->task.updated_at_ms, updated, sizeof(updated));
        t.createdby = (char *)e->task.created_by;
        t.version = e->task.version;
        m.task = &t;
    }
    pack(NULL, &m.base, out, len);
}
