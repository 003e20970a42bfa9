/* The task actor's rules with an in-memory task store and a fake auth actor (fakes
 * are fine in unit tests): who may change what, If-Match, and which writes carry an
 * event (task_created with an assignee, task_assigned on a change of assignee); and
 * its stop message (core/mailbox.h): what it holds finishes first; and the saga's
 * user_deleted step with the task store down: a transient failure (the consumer
 * pauses), never a compensation that would bring the deleted user back. */
#include <uv.h>

#include "actors/task.h"
#include "core/alloc.h"
#include "core/api.h"
#include "core/events.h"
#include "fake_bus.h"
#include "test.h"

#define ALICE "aaaaaaaaaaaaaaaaaaaaaaaa"
#define BOB "bbbbbbbbbbbbbbbbbbbbbbbb"
#define CAROL "cccccccccccccccccccccccc"
#define NOBODY "dddddddddddddddddddddddd"

/* ---- counting allocations --------------------------------------------- */

/* This test's link wraps malloc, calloc and realloc (CMakeLists.txt): every
 * allocation TMS's own code makes goes through these and is counted. */
void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);
static long allocs;

void *__wrap_malloc(size_t n);
void *__wrap_malloc(size_t n)
{
    allocs++;
    return __real_malloc(n);
}

void *__wrap_calloc(size_t n, size_t size);
void *__wrap_calloc(size_t n, size_t size)
{
    allocs++;
    return __real_calloc(n, size);
}

void *__wrap_realloc(void *p, size_t n);
void *__wrap_realloc(void *p, size_t n)
{
    allocs++;
    return __real_realloc(p, n);
}

/* ---- an in-memory task store ------------------------------------------ */

typedef struct fake_store {
    tms_task_store_t port;
    tms_task_t tasks[16];
    tms_arena_t arena; /* the stored tasks' strings */
    int n;
    tms_task_notify_t last_notify;
    int writes;
    bool down;     /* UNASSIGN_USER answers UNAVAILABLE */
    int unassigns; /* done */
} fake_store_t;

static int store_submit(tms_task_store_t *self, tms_task_op_t **pop)
{
    fake_store_t *s = (fake_store_t *)self;
    tms_task_op_t *op = *pop;
    tms_task_t *t = NULL;
    *pop = NULL;
    if (op->id > 0 && op->id <= s->n && s->tasks[op->id - 1].id)
        t = &s->tasks[op->id - 1];
    switch (op->msg.op) {
    case TMS_TASK_CREATE:
        t = &s->tasks[s->n++];
        tms_task_copy(&s->arena, t, &op->task);
        t->id = s->n;
        t->version = 1;
        tms_task_copy(op->arena, &op->task, t);
        s->last_notify = op->notify;
        s->writes++;
        break;
    case TMS_TASK_GET:
        if (t)
            tms_task_copy(op->arena, &op->task, t);
        else
            op->err.code = TMS_NOT_FOUND;
        break;
    case TMS_TASK_UPDATE:
        if (!t) {
            op->err.code = TMS_NOT_FOUND;
        } else if (op->expected_version && op->expected_version != t->version) {
            op->err.code = TMS_FAILED_PRECONDITION;
        } else {
            if (op->set_assigned_to)
                snprintf(t->assigned_to, sizeof(t->assigned_to), "%s", op->task.assigned_to);
            if (op->set_status)
                snprintf(t->status, sizeof(t->status), "%s", op->task.status);
            t->version++;
            tms_task_copy(op->arena, &op->task, t);
            s->last_notify = op->notify;
            s->writes++;
        }
        break;
    case TMS_TASK_DELETE:
        if (!t) {
            op->err.code = TMS_NOT_FOUND;
        } else {
            memset(t, 0, sizeof(*t));
            s->writes++;
        }
        break;
    case TMS_TASK_UNASSIGN_USER:
        if (s->down) {
            tms_error_set(&op->err, TMS_UNAVAILABLE, "store unavailable");
        } else {
            s->unassigns++;
            op->count = 1;
        }
        break;
    default:
        op->err.code = TMS_UNIMPLEMENTED;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

/* ---- an outbox/inbox that remembers, and a bus that records acks ---------- */

typedef struct fake_outbox {
    tms_outbox_t port;
    int records, compensations;
    char recorded[8][37]; /* the task actor's handled events */
} fake_outbox_t;

static bool was_recorded(const fake_outbox_t *o, const char *id)
{
    for (int i = 0; i < o->records && i < 8; i++) {
        if (strcmp(o->recorded[i], id) == 0)
            return true;
    }
    return false;
}

static int outbox_submit(tms_outbox_t *self, tms_outbox_op_t **pop)
{
    fake_outbox_t *o = (fake_outbox_t *)self;
    tms_outbox_op_t *op = *pop;
    *pop = NULL;
    if (op->msg.op == TMS_INBOX_SEEN || op->msg.op == TMS_INBOX_RECORD) {
        /* the actor asks about its one event, as its own consumer */
        CHECK_EQ_INT((int)op->nids, 1);
        CHECK_EQ_STR(op->consumer, "task-group");
    }
    if (op->msg.op == TMS_INBOX_SEEN) {
        op->ids_seen[0] = was_recorded(o, op->ids[0]);
    } else if (op->msg.op == TMS_INBOX_RECORD) {
        if (!was_recorded(o, op->ids[0]) && o->records < 8)
            snprintf(o->recorded[o->records++], sizeof(o->recorded[0]), "%s", op->ids[0]);
    } else if (op->msg.op == TMS_OUTBOX_ADD) {
        o->compensations++;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

/* ---- a fake auth actor: ALICE, BOB and CAROL exist ---------------------- */

static void on_auth(void *owner, tms_msg_t *msg)
{
    tms_api_call_t *call = (tms_api_call_t *)msg;
    call->flag = strcmp(call->target_id, NOBODY) != 0;
    tms_mailbox_reply(msg);
}

/* ---- driving calls ------------------------------------------------------ */

typedef struct env {
    uv_loop_t loop;
    fake_store_t store;
    tms_mailbox_t *auth, *replies;
    tms_task_actor_t *actor;
} env_t;

static tms_api_call_t *done_call;
static void on_reply(tms_msg_t *msg)
{
    done_call = (tms_api_call_t *)msg;
}

static tms_api_call_t *run(env_t *e, tms_api_call_t *call, const char *as, const char *role)
{
    tms_msg_t *msg = &call->msg;
    /* as NULL: a trusted peer's call without a token (the gateway's principal.trusted) */
    snprintf(call->principal.user_id, sizeof(call->principal.user_id), "%s", as ? as : "");
    snprintf(call->principal.role, sizeof(call->principal.role), "%s", role);
    call->principal.authenticated = as != NULL;
    call->principal.trusted = as == NULL;
    msg->op = TMS_STAGE_EXECUTE;
    msg->reply_to = e->replies;
    msg->cont = on_reply;
    done_call = NULL;
    CHECK_EQ_INT(tms_mailbox_post(tms_task_mailbox(e->actor), &msg), 0);
    while (!done_call)
        uv_run(&e->loop, UV_RUN_ONCE);
    return done_call;
}

static tms_status_t create(env_t *e, const char *as, const char *assignee)
{
    tms_api_call_t *c = tms_api_call_new(TMS_API_TASK_CREATE);
    tms_status_t code;
    c->title = tms_api_call_strdup(c, "  Title  ");
    c->description = tms_api_call_strdup(c, "Description");
    if (assignee)
        c->assigned_to = tms_api_call_strdup(c, assignee);
    c = run(e, c, as, "user");
    code = c->err.code;
    if (code == TMS_OK) {
        CHECK_EQ_STR(c->task.title, "Title"); /* trimmed */
        CHECK_EQ_STR(c->task.created_by, as ? as : "");
    }
    tms_api_call_free(&c);
    return code;
}

static tms_status_t update(env_t *e, int64_t id, const char *as, const char *role,
                           const char *assignee, int64_t if_match)
{
    tms_api_call_t *c = tms_api_call_new(TMS_API_TASK_UPDATE);
    tms_status_t code;
    c->task_id = id;
    if (assignee)
        c->assigned_to = tms_api_call_strdup(c, assignee);
    else
        c->status = tms_api_call_strdup(c, "closed");
    c->has_if_match = if_match > 0;
    c->if_match = if_match;
    c = run(e, c, as, role);
    code = c->err.code;
    tms_api_call_free(&c);
    return code;
}

static tms_status_t delete (env_t *e, int64_t id, const char *as, const char *role)
{
    tms_api_call_t *c = tms_api_call_new(TMS_API_TASK_DELETE);
    tms_status_t code;
    c->task_id = id;
    c = run(e, c, as, role);
    code = c->err.code;
    tms_api_call_free(&c);
    return code;
}

static void test_rules(void)
{
    static env_t e;
    memset(&e, 0, sizeof(e));
    e.store.port.name = "fake";
    e.store.port.submit = store_submit;
    tms_arena_init(&e.store.arena, NULL, 0);
    uv_loop_init(&e.loop);
    e.auth = tms_mailbox_new(&e.loop, "auth", 16, on_auth, NULL);
    e.replies = tms_mailbox_new(&e.loop, "replies", 1, NULL, NULL);
    e.actor = tms_task_start(&e.loop, &(tms_task_config_t){
                                          .mailbox_capacity = 16,
                                          .tasks = &e.store.port,
                                          .auth = e.auth,
                                      });

    /* create: an event only with an assignee, who must exist */
    CHECK_EQ_INT(create(&e, ALICE, NULL), TMS_OK);
    CHECK(!e.store.last_notify.enabled);
    CHECK_EQ_INT(create(&e, ALICE, BOB), TMS_OK); /* task 2, assigned to BOB */
    CHECK(e.store.last_notify.enabled);
    CHECK_EQ_STR(e.store.last_notify.type, "task_created");
    CHECK_EQ_INT(strlen(e.store.last_notify.event_id), 36);
    CHECK_EQ_INT(create(&e, ALICE, NOBODY), TMS_INVALID_ARGUMENT);
    CHECK_EQ_INT(create(&e, ALICE, "not-an-id"), TMS_INVALID_ARGUMENT);
    CHECK_EQ_INT(e.store.n, 2);

    /* update: creator, assignee or admin */
    CHECK_EQ_INT(update(&e, 2, CAROL, "user", NULL, 0), TMS_PERMISSION_DENIED);
    CHECK_EQ_INT(update(&e, 2, BOB, "user", NULL, 0), TMS_OK);    /* assignee */
    CHECK_EQ_INT(update(&e, 2, CAROL, "admin", NULL, 0), TMS_OK); /* admin */
    CHECK_EQ_INT(update(&e, 99, ALICE, "user", NULL, 0), TMS_NOT_FOUND);
    /* If-Match */
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", NULL, 1), TMS_FAILED_PRECONDITION);
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", NULL, 3), TMS_OK);
    /* reassignment: an event to the new assignee only when it changes */
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", CAROL, 0), TMS_OK);
    CHECK(e.store.last_notify.enabled);
    CHECK_EQ_STR(e.store.last_notify.type, "task_assigned");
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", CAROL, 0), TMS_OK);
    CHECK(!e.store.last_notify.enabled);
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", "", 0), TMS_OK); /* unassign: no event */
    CHECK(!e.store.last_notify.enabled);
    CHECK_EQ_INT(update(&e, 2, ALICE, "user", NOBODY, 0), TMS_INVALID_ARGUMENT);

    /* delete: creator or admin, not the assignee */
    CHECK_EQ_INT(update(&e, 1, ALICE, "user", BOB, 0), TMS_OK);
    CHECK_EQ_INT(delete (&e, 1, BOB, "user"), TMS_PERMISSION_DENIED);
    CHECK_EQ_INT(delete (&e, 1, CAROL, "admin"), TMS_OK);
    CHECK_EQ_INT(delete (&e, 1, ALICE, "user"), TMS_NOT_FOUND);
    CHECK_EQ_INT(delete (&e, 2, ALICE, "user"), TMS_OK);

    /* a trusted peer's call without a token (issue 21): no caller, so no creator, and
     * anyone's task may be changed or deleted, as the original task-service did */
    CHECK_EQ_INT(create(&e, NULL, BOB), TMS_OK); /* task 3 */
    CHECK_EQ_STR(e.store.tasks[2].created_by, "");
    CHECK_EQ_STR(e.store.last_notify.type, "task_created");
    CHECK_EQ_STR(e.store.last_notify.by, "");
    CHECK_EQ_INT(create(&e, ALICE, NULL), TMS_OK); /* task 4, ALICE's */
    CHECK_EQ_INT(update(&e, 4, NULL, "", CAROL, 0), TMS_OK);
    CHECK_EQ_INT(delete (&e, 4, NULL, ""), TMS_OK);
    /* a task without a creator: no user is its creator, so only an admin deletes it */
    CHECK_EQ_INT(delete (&e, 3, CAROL, "user"), TMS_PERMISSION_DENIED);
    CHECK_EQ_INT(update(&e, 3, BOB, "user", NULL, 0), TMS_OK); /* its assignee */
    CHECK_EQ_INT(delete (&e, 3, NULL, ""), TMS_OK);

    tms_task_free(&e.actor);
    tms_mailbox_free(&e.auth);
    tms_mailbox_free(&e.replies);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e.loop), 0);
    tms_arena_fini(&e.store.arena);
}

/* A fake auth actor that keeps the question until the test answers it. */
static tms_msg_t *held_auth;

static void on_auth_held(void *owner, tms_msg_t *msg)
{
    (void)owner;
    held_auth = msg;
}

static int stopped;

static void on_stopped(tms_msg_t *msg)
{
    stopped++;
    msg->free_fn(msg);
}

/* A call in flight when the stop message comes is finished first; a call after it is
 * refused UNAVAILABLE; the reply to the stop comes once nothing is in flight, and the
 * mailbox takes nothing after it. */
static void test_stop_finishes_what_it_holds(void)
{
    static env_t e;
    tms_api_call_t *c, *late;
    tms_msg_t *msg;
    memset(&e, 0, sizeof(e));
    e.store.port.name = "fake";
    e.store.port.submit = store_submit;
    tms_arena_init(&e.store.arena, NULL, 0);
    uv_loop_init(&e.loop);
    e.auth = tms_mailbox_new(&e.loop, "auth", 16, on_auth_held, NULL);
    e.replies = tms_mailbox_new(&e.loop, "replies", 4, NULL, NULL);
    e.actor = tms_task_start(&e.loop, &(tms_task_config_t){
                                          .mailbox_capacity = 16,
                                          .tasks = &e.store.port,
                                          .auth = e.auth,
                                      });
    /* a create with an assignee waits for auth */
    c = tms_api_call_new(TMS_API_TASK_CREATE);
    c->title = tms_api_call_strdup(c, "held");
    c->description = tms_api_call_strdup(c, "Description");
    c->assigned_to = tms_api_call_strdup(c, BOB);
    snprintf(c->principal.user_id, sizeof(c->principal.user_id), "%s", ALICE);
    snprintf(c->principal.role, sizeof(c->principal.role), "user");
    c->principal.authenticated = true;
    msg = &c->msg;
    msg->op = TMS_STAGE_EXECUTE;
    msg->reply_to = e.replies;
    msg->cont = on_reply;
    done_call = NULL;
    held_auth = NULL;
    CHECK_EQ_INT(tms_mailbox_post(tms_task_mailbox(e.actor), &msg), 0);
    for (int i = 0; i < 100 && !held_auth && !done_call; i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK(held_auth != NULL);
    if (!held_auth)
        return;
    CHECK_EQ_INT(tms_task_inflight(e.actor), 1);

    stopped = 0;
    CHECK_EQ_INT(tms_stop_send(tms_task_mailbox(e.actor), e.replies, on_stopped, NULL), 0);
    for (int i = 0; i < 5; i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(stopped, 0); /* the create is still in flight */
    CHECK(done_call == NULL);

    /* after the stop message: refused at once */
    late = tms_api_call_new(TMS_API_TASK_GET);
    late->task_id = 1;
    late = run(&e, late, ALICE, "user");
    CHECK_EQ_INT(late->err.code, TMS_UNAVAILABLE);
    tms_api_call_free(&late);
    CHECK_EQ_INT(stopped, 0);

    /* auth answers: the create finishes, then the stop is answered */
    done_call = NULL;
    ((tms_api_call_t *)held_auth)->flag = true;
    tms_mailbox_reply(held_auth);
    for (int i = 0; i < 1000 && (!done_call || !stopped); i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK(done_call != NULL);
    if (!done_call)
        return;
    CHECK_EQ_INT(done_call->err.code, TMS_OK);
    CHECK_EQ_INT(e.store.n, 1);
    tms_api_call_free(&done_call);
    CHECK_EQ_INT(stopped, 1);
    CHECK_EQ_INT(tms_task_inflight(e.actor), 0);
    /* stopped: its mailbox takes nothing more */
    late = tms_api_call_new(TMS_API_TASK_GET);
    msg = &late->msg;
    CHECK_EQ_INT(tms_mailbox_post(tms_task_mailbox(e.actor), &msg), -TMS_ECLOSED);
    tms_api_call_free(&late);

    tms_task_free(&e.actor);
    tms_mailbox_free(&e.auth);
    tms_mailbox_free(&e.replies);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e.loop), 0);
    tms_arena_fini(&e.store.arena);
}

/* A call costs one allocation, the call itself (its arena's first chunk inside): the
 * task actor's job, the store operation it sends and the strings of the answer all
 * go in that arena, which a create or a GET with ordinary text does not outgrow.
 * (Issue 19's budget: nothing else per request on the hot path.) */
static void test_one_allocation_per_call(void)
{
    static env_t e;
    static _Alignas(max_align_t) char stored[1 << 16];
    char title[121], description[1001];
    tms_api_call_t *c;
    long before;
    memset(&e, 0, sizeof(e));
    memset(title, 't', sizeof(title) - 1);
    title[sizeof(title) - 1] = '\0';
    memset(description, 'd', sizeof(description) - 1);
    description[sizeof(description) - 1] = '\0';
    e.store.port.name = "fake";
    e.store.port.submit = store_submit;
    tms_arena_init(&e.store.arena, stored, sizeof(stored)); /* the fake allocates nothing */
    uv_loop_init(&e.loop);
    e.auth = tms_mailbox_new(&e.loop, "auth", 16, on_auth, NULL);
    e.replies = tms_mailbox_new(&e.loop, "replies", 1, NULL, NULL);
    e.actor = tms_task_start(&e.loop, &(tms_task_config_t){
                                          .mailbox_capacity = 16,
                                          .tasks = &e.store.port,
                                          .auth = e.auth,
                                      });
    CHECK_EQ_INT(create(&e, ALICE, NULL), TMS_OK); /* warm: first log line, loop state */

    c = tms_api_call_new(TMS_API_TASK_CREATE);
    c->title = tms_api_call_strdup(c, title);
    c->description = tms_api_call_strdup(c, description);
    before = allocs;
    c = run(&e, c, ALICE, "user");
    CHECK_EQ_INT(allocs - before, 0);
    CHECK_EQ_INT(c->err.code, TMS_OK);
    CHECK_EQ_STR(c->task.description, description);
    CHECK_EQ_INT(tms_arena_blocks(&c->arena), 0);
    tms_api_call_free(&c);

    c = tms_api_call_new(TMS_API_TASK_GET);
    c->task_id = 2;
    before = allocs;
    c = run(&e, c, ALICE, "user");
    CHECK_EQ_INT(allocs - before, 0);
    CHECK_EQ_INT(c->err.code, TMS_OK);
    CHECK_EQ_STR(c->task.title, title);
    CHECK_EQ_STR(c->task.description, description);
    CHECK_EQ_INT(tms_arena_blocks(&c->arena), 0);
    tms_api_call_free(&c);

    /* Beyond the first chunk the arena chains heap blocks, and the answer is whole. */
    c = tms_api_call_new(TMS_API_TASK_CREATE);
    c->title = tms_api_call_strdup(c, "long");
    c->description = tms_arena_alloc(&c->arena, 9001);
    memset(c->description, 'x', 9000);
    c->description[9000] = '\0';
    c = run(&e, c, ALICE, "user");
    CHECK_EQ_INT(c->err.code, TMS_OK);
    CHECK_EQ_INT(strlen(c->task.description), 9000);
    CHECK(tms_arena_blocks(&c->arena) > 0);
    tms_api_call_free(&c);

    tms_task_free(&e.actor);
    tms_mailbox_free(&e.auth);
    tms_mailbox_free(&e.replies);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e.loop), 0);
    tms_arena_fini(&e.store.arena);
}

/* user_deleted with the task store down: acknowledged as transient (the bus pauses
 * and redelivers it, never dead-letters it) and no compensation is written (the old
 * code asked for the user back, undoing a delete over an outage); once the store
 * answers, the same event unassigns and is recorded. */
static void test_saga_waits_for_the_store(void)
{
    static env_t e;
    static fake_outbox_t outbox;
    static fake_bus_t bus;
    tms_user_t victim = {0};
    memset(&e, 0, sizeof(e));
    e.store.port.name = "fake";
    e.store.port.submit = store_submit;
    outbox.port.name = "fake";
    outbox.port.submit = outbox_submit;
    fake_bus_init(&bus);
    uv_loop_init(&e.loop);
    e.auth = tms_mailbox_new(&e.loop, "auth", 16, on_auth, NULL);
    e.actor = tms_task_start(&e.loop, &(tms_task_config_t){
                                          .mailbox_capacity = 16,
                                          .tasks = &e.store.port,
                                          .outbox = &outbox.port,
                                          .auth = e.auth,
                                          .bus = &bus.port,
                                      });
    snprintf(victim.id, sizeof(victim.id), "%s", BOB);
    snprintf(victim.email, sizeof(victim.email), "bob@example.com");
    snprintf(victim.role, sizeof(victim.role), "user");
    /* down, then up; then the same event again (a redelivery: acked, not redone); then
     * another deletion event, which is its own */
    for (int round = 0; round < 4; round++) {
        tms_delivery_t *d = tms_new(tms_delivery_t);
        tms_msg_t *msg = &d->msg;
        e.store.down = round == 0;
        msg->kind = TMS_MSG_REQUEST;
        msg->op = TMS_EVENT_DELIVERY;
        snprintf(d->topic, sizeof(d->topic), "user_deleted");
        snprintf(d->key, sizeof(d->key), "%s", BOB);
        d->payload =
            tms_event_user_json(&victim, round < 3 ? "0b7c6a0e-5d5e-4f57-9d43-1b1a3c0f0a01"
                                                   : "5e1d0c3a-7b2f-4e7d-8a41-2f9e6c0b1d22");
        d->payload_len = strlen(d->payload);
        d->attempt = 1;
        CHECK_EQ_INT(tms_mailbox_post(tms_task_mailbox(e.actor), &msg), 0);
        while (bus.acks == round)
            uv_run(&e.loop, UV_RUN_ONCE);
        if (round == 0) {
            CHECK_EQ_INT(bus.last.kind, TMS_ACK_TRANSIENT);
            CHECK_EQ_STR(bus.dependency, "task store");
            CHECK_EQ_INT(outbox.records, 0);
        } else {
            CHECK_EQ_INT(bus.last.kind, TMS_ACK_OK);
            CHECK_EQ_INT(e.store.unassigns, round < 3 ? 1 : 2);
            CHECK_EQ_INT(outbox.records, round < 3 ? 1 : 2);
        }
        CHECK_EQ_INT(outbox.compensations, 0);
    }
    tms_task_free(&e.actor);
    tms_mailbox_free(&e.auth);
    uv_run(&e.loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e.loop), 0);
}

int main(void)
{
    RUN_TEST(test_rules);
    RUN_TEST(test_stop_finishes_what_it_holds);
    RUN_TEST(test_one_allocation_per_call);
    RUN_TEST(test_saga_waits_for_the_store);
    TEST_EXIT();
}
