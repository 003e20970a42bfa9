#include "io/grpc/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "core/alloc.h"
#include "core/status.h"
#include "internal.pb-c.h"
#include "io/grpc/pb_arena.h"

/* "" for NULL: protobuf-c packs a string field from a non-NULL pointer. */
static char *str(const char *s)
{
    return (char *)(s ? s : "");
}

static uint32_t bit_if(const char *s, uint32_t bit)
{
    return s ? bit : 0;
}

/* Never the password hash: it stays in the auth process. */
static void user_to_pb(Tms__Internal__User *u, const tms_user_t *user)
{
    u->id = (char *)user->id;
    u->email = (char *)user->email;
    u->role = (char *)user->role;
    u->token_version = user->token_version;
    u->created_at_ms = user->created_at_ms;
}

static void user_from_pb(tms_user_t *user, const Tms__Internal__User *u)
{
    snprintf(user->id, sizeof(user->id), "%s", u->id ? u->id : "");
    snprintf(user->email, sizeof(user->email), "%s", u->email ? u->email : "");
    snprintf(user->role, sizeof(user->role), "%s", u->role ? u->role : "");
    user->token_version = u->token_version;
    user->created_at_ms = u->created_at_ms;
}

void tms_internal_encode_call(tms_api_call_t *call, uint8_t **out, size_t *len)
{
    Tms__Internal__ActorCall m = TMS__INTERNAL__ACTOR_CALL__INIT;
    Tms__Internal__Principal p = TMS__INTERNAL__PRINCIPAL__INIT;
    Tms__Internal__User u = TMS__INTERNAL__USER__INIT;
    const tms_op_t *row = tms_op_get(call->op);
    m.op = row ? row->internal_op : 0;
    m.stage = call->msg.op;
    m.request_id = str(call->request_id);
    m.client_addr = str(call->client_addr);
    p.authenticated = call->principal.authenticated;
    p.trusted = call->principal.trusted;
    p.user_id = str(call->principal.user_id);
    p.role = str(call->principal.role);
    p.email = str(call->principal.email);
    p.expires_at_s = call->principal.expires_at_s;
    m.principal = &p;
    m.present = bit_if(call->bearer, TMS__INTERNAL__PRESENT__PRESENT_BEARER) |
                bit_if(call->ticket, TMS__INTERNAL__PRESENT__PRESENT_TICKET) |
                bit_if(call->email, TMS__INTERNAL__PRESENT__PRESENT_EMAIL) |
                bit_if(call->password, TMS__INTERNAL__PRESENT__PRESENT_PASSWORD) |
                bit_if(call->title, TMS__INTERNAL__PRESENT__PRESENT_TITLE) |
                bit_if(call->description, TMS__INTERNAL__PRESENT__PRESENT_DESCRIPTION) |
                bit_if(call->status, TMS__INTERNAL__PRESENT__PRESENT_STATUS) |
                bit_if(call->assigned_to, TMS__INTERNAL__PRESENT__PRESENT_ASSIGNED_TO) |
                bit_if(call->idempotency_key, TMS__INTERNAL__PRESENT__PRESENT_IDEMPOTENCY_KEY) |
                bit_if(call->cursor, TMS__INTERNAL__PRESENT__PRESENT_CURSOR);
    m.bearer = str(call->bearer);
    m.email = str(call->email);
    m.password = str(call->password);
    m.target_id = str(call->target_id);
    m.task_id = call->task_id;
    m.title = str(call->title);
    m.description = str(call->description);
    m.status = str(call->status);
    m.assigned_to = str(call->assigned_to);
    m.has_if_match = call->has_if_match;
    m.if_match = call->if_match;
    m.idempotency_key = str(call->idempotency_key);
    m.cursor = str(call->cursor);
    m.limit = call->limit;
    m.ticket = str(call->ticket);
    m.has_since = call->has_since;
    m.since = call->since;
    m.upto = call->upto;
    user_to_pb(&u, &call->user);
    m.user = &u;
    *len = tms__internal__actor_call__get_packed_size(&m);
    *out = tms_arena_alloc(&call->arena, *len);
    tms__internal__actor_call__pack(&m, *out);
}

/* A string field of a message unpacked in the call's arena, taken in place when its
 * presence bit is set. */
static char *take_if(tms_api_call_t *call, uint32_t present, uint32_t bit, char *s)
{
    return (present & bit) ? tms_pb_arena_string(&call->arena, s) : NULL;
}

/* A secret the call did not take is wiped now: the call's own are wiped when it
 * is freed. */
static void wipe_unless(char *s, const char *taken)
{
    if (s && s != taken && s != protobuf_c_empty_string)
        sodium_memzero(s, strlen(s));
}

#define COPY(dst, src) snprintf((dst), sizeof(dst), "%s", (src) ? (src) : "")

tms_api_call_t *tms_internal_decode_call(const uint8_t *msg, size_t len)
{
    tms_api_call_t *call = tms_api_call_new(0);
    ProtobufCAllocator arena = tms_pb_arena(&call->arena);
    Tms__Internal__ActorCall *m = tms__internal__actor_call__unpack(&arena, len, msg);
    const tms_op_t *row = m ? tms_op_by_internal(m->op) : NULL;
    uint32_t pr;
    if (!row || (m->stage != TMS_STAGE_AUTHENTICATE && m->stage != TMS_STAGE_EXECUTE)) {
        if (m) {
            wipe_unless(m->password, NULL);
            wipe_unless(m->bearer, NULL);
            wipe_unless(m->ticket, NULL);
        }
        tms_api_call_free(&call);
        return NULL;
    }
    pr = m->present;
    call->op = row->op;
    call->msg.op = m->stage;
    COPY(call->request_id, m->request_id);
    COPY(call->client_addr, m->client_addr);
    if (m->principal) {
        call->principal.authenticated = m->principal->authenticated;
        call->principal.trusted = m->principal->trusted && !m->principal->authenticated;
        COPY(call->principal.user_id, m->principal->user_id);
        COPY(call->principal.role, m->principal->role);
        COPY(call->principal.email, m->principal->email);
        call->principal.expires_at_s = m->principal->expires_at_s;
    }
    /* A gateway forwards its clients' calls with the user it authenticated, or as a
     * trusted peer's; a call with neither is the peer's own (older peers send no such
     * flag: derived here). */
    call->principal.service = !call->principal.authenticated && !call->principal.trusted;
    call->bearer = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_BEARER, m->bearer);
    call->email = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_EMAIL, m->email);
    call->password = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_PASSWORD, m->password);
    COPY(call->target_id, m->target_id);
    call->task_id = m->task_id;
    call->title = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_TITLE, m->title);
    call->description =
        take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_DESCRIPTION, m->description);
    call->status = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_STATUS, m->status);
    call->assigned_to =
        take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_ASSIGNED_TO, m->assigned_to);
    call->has_if_match = m->has_if_match;
    call->if_match = m->if_match;
    call->idempotency_key =
        take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_IDEMPOTENCY_KEY, m->idempotency_key);
    call->cursor = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_CURSOR, m->cursor);
    call->limit = m->limit;
    call->ticket = take_if(call, pr, TMS__INTERNAL__PRESENT__PRESENT_TICKET, m->ticket);
    call->has_since = m->has_since;
    call->since = m->since;
    call->upto = m->upto;
    if (m->user)
        user_from_pb(&call->user, m->user);
    wipe_unless(m->password, call->password);
    wipe_unless(m->bearer, call->bearer);
    wipe_unless(m->ticket, call->ticket);
    return call; /* m is in the call's arena */
}

static void task_to_pb(Tms__Internal__Task *pb, const tms_task_t *t)
{
    tms__internal__task__init(pb);
    pb->id = t->id;
    pb->title = str(t->title);
    pb->description = str(t->description);
    pb->status = (char *)t->status;
    pb->assigned_to = (char *)t->assigned_to;
    pb->created_by = (char *)t->created_by;
    pb->created_at_ms = t->created_at_ms;
    pb->updated_at_ms = t->updated_at_ms;
    pb->version = t->version;
}

/* pb was unpacked in arena: its strings are taken in place. */
static void task_from_pb(tms_arena_t *arena, tms_task_t *t, const Tms__Internal__Task *pb)
{
    t->id = pb->id;
    t->title = tms_pb_arena_string(arena, pb->title);
    t->description = tms_pb_arena_string(arena, pb->description);
    COPY(t->status, pb->status);
    COPY(t->assigned_to, pb->assigned_to);
    COPY(t->created_by, pb->created_by);
    t->created_at_ms = pb->created_at_ms;
    t->updated_at_ms = pb->updated_at_ms;
    t->version = pb->version;
}

void tms_internal_encode_result(tms_api_call_t *call, uint8_t **out, size_t *len)
{
    Tms__Internal__ActorResult m = TMS__INTERNAL__ACTOR_RESULT__INIT;
    Tms__Internal__Principal p = TMS__INTERNAL__PRINCIPAL__INIT;
    Tms__Internal__User u = TMS__INTERNAL__USER__INIT;
    Tms__Internal__Task t = TMS__INTERNAL__TASK__INIT;
    Tms__Internal__RateLimit rl = TMS__INTERNAL__RATE_LIMIT__INIT;
    Tms__Internal__Task *items = NULL, **ptrs = NULL;
    m.err_code = (int32_t)call->err.code;
    m.err_message = (char *)call->err.message;
    p.authenticated = call->principal.authenticated;
    p.user_id = (char *)call->principal.user_id;
    p.role = (char *)call->principal.role;
    p.email = (char *)call->principal.email;
    p.expires_at_s = call->principal.expires_at_s;
    m.principal = &p;
    user_to_pb(&u, &call->user);
    m.user = &u;
    m.has_token = call->token != NULL;
    m.token = str(call->token);
    m.flag = call->flag;
    m.has_task = call->task.title != NULL;
    if (m.has_task) {
        task_to_pb(&t, &call->task);
        m.task = &t;
    }
    if (call->ntasks) {
        items = tms_arena_calloc(&call->arena, call->ntasks, sizeof(*items));
        ptrs = tms_arena_calloc(&call->arena, call->ntasks, sizeof(*ptrs));
        for (size_t i = 0; i < call->ntasks; i++) {
            task_to_pb(&items[i], &call->tasks[i]);
            ptrs[i] = &items[i];
        }
        m.n_tasks = call->ntasks;
        m.tasks = ptrs;
    }
    m.has_next_cursor = call->next_cursor != NULL;
    m.next_cursor = str(call->next_cursor);
    m.replayed = call->replayed;
    rl.applied = call->ratelimit.applied;
    rl.limit = call->ratelimit.limit;
    rl.remaining = call->ratelimit.remaining;
    rl.reset_s = call->ratelimit.reset_s;
    rl.retry_after_s = call->ratelimit.retry_after_s;
    m.ratelimit = &rl;
    m.ticket_expires_ms = call->ticket_expires_ms;
    m.first_seq = call->first_seq;
    m.last_seq = call->last_seq;
    if (call->nevents) {
        Tms__Internal__TaskEvent *evs = tms_arena_calloc(&call->arena, call->nevents, sizeof(*evs));
        Tms__Internal__TaskEvent **evp =
            tms_arena_calloc(&call->arena, call->nevents, sizeof(*evp));
        Tms__Internal__Task *ts = tms_arena_calloc(&call->arena, call->nevents, sizeof(*ts));
        for (size_t i = 0; i < call->nevents; i++) {
            const tms_task_event_t *e = &call->events[i];
            tms__internal__task_event__init(&evs[i]);
            evs[i].seq = e->seq;
            evs[i].type = (int32_t)e->type;
            evs[i].at_ms = e->at_ms;
            task_to_pb(&ts[i], &e->task);
            evs[i].task = &ts[i];
            evs[i].prev_assigned_to = (char *)e->prev_assigned_to;
            evs[i].prev_status = (char *)e->prev_status;
            evp[i] = &evs[i];
        }
        m.n_events = call->nevents;
        m.events = evp;
    }
    *len = tms__internal__actor_result__get_packed_size(&m);
    *out = tms_arena_alloc(&call->arena, *len);
    tms__internal__actor_result__pack(&m, *out);
}

int tms_internal_decode_result(tms_api_call_t *call, const uint8_t *msg, size_t len)
{
    ProtobufCAllocator arena = tms_pb_arena(&call->arena);
    Tms__Internal__ActorResult *m = tms__internal__actor_result__unpack(&arena, len, msg);
    if (!m)
        return -TMS_EINVAL;
    call->err.code = (tms_status_t)m->err_code;
    COPY(call->err.message, m->err_message);
    if (m->principal) {
        call->principal.authenticated = m->principal->authenticated;
        COPY(call->principal.user_id, m->principal->user_id);
        COPY(call->principal.role, m->principal->role);
        COPY(call->principal.email, m->principal->email);
        call->principal.expires_at_s = m->principal->expires_at_s;
    }
    if (m->user)
        user_from_pb(&call->user, m->user);
    if (call->token) /* replaced: what it held was in the arena, wiped now */
        sodium_memzero(call->token, strlen(call->token));
    call->token = m->has_token ? tms_pb_arena_string(&call->arena, m->token) : NULL;
    wipe_unless(m->token, call->token);
    call->flag = m->flag;
    memset(&call->task, 0, sizeof(call->task));
    if (m->has_task && m->task)
        task_from_pb(&call->arena, &call->task, m->task);
    call->tasks = NULL;
    call->ntasks = 0;
    if (m->n_tasks) {
        call->tasks = tms_arena_calloc(&call->arena, m->n_tasks, sizeof(*call->tasks));
        for (size_t i = 0; i < m->n_tasks; i++)
            task_from_pb(&call->arena, &call->tasks[i], m->tasks[i]);
        call->ntasks = m->n_tasks;
    }
    call->next_cursor =
        m->has_next_cursor ? tms_pb_arena_string(&call->arena, m->next_cursor) : NULL;
    call->replayed = m->replayed;
    call->ticket_expires_ms = m->ticket_expires_ms;
    call->first_seq = m->first_seq;
    call->last_seq = m->last_seq;
    call->events = NULL;
    call->nevents = 0;
    if (m->n_events) {
        call->events = tms_arena_calloc(&call->arena, m->n_events, sizeof(*call->events));
        for (size_t i = 0; i < m->n_events; i++) {
            tms_task_event_t *e = &call->events[i];
            const Tms__Internal__TaskEvent *pb = m->events[i];
            e->seq = pb->seq;
            e->type = (tms_task_event_type_t)pb->type;
            e->at_ms = pb->at_ms;
            if (pb->task)
                task_from_pb(&call->arena, &e->task, pb->task);
            COPY(e->prev_assigned_to, pb->prev_assigned_to);
            COPY(e->prev_status, pb->prev_status);
        }
        call->nevents = m->n_events;
    }
    /* The gateway's own limits stay as it counted them: a role elsewhere applies none, and
     * its zeros used to erase the RateLimit-* headers of a split deployment's answers. */
    if (m->ratelimit && m->ratelimit->applied) {
        call->ratelimit.applied = m->ratelimit->applied;
        call->ratelimit.limit = m->ratelimit->limit;
        call->ratelimit.remaining = m->ratelimit->remaining;
        call->ratelimit.reset_s = m->ratelimit->reset_s;
        call->ratelimit.retry_after_s = m->ratelimit->retry_after_s;
    }
    return 0; /* m is in the call's arena */
}

bool tms_internal_idempotent(const tms_api_call_t *call)
{
    const tms_op_t *row = tms_op_get(call->op);
    if (call->msg.op == TMS_STAGE_AUTHENTICATE)
        return true; /* verifies a token: reads only */
    return row && row->idempotent;
}
