/* The notifier actor with fakes around it (fine in unit tests): a delivery goes
 * inbox -> assignee lookup -> mailer; and the shutdown order of server/shutdown.c,
 * where the mailer closes (and is freed) while a delivery may still be waiting for
 * its assignee's address: that delivery must not reach the mailer afterwards. A
 * clean-clone run hit this 3 times in 40 (a use after free under ASan). */
#include <uv.h>

#include "actors/notifier.h"
#include "core/alloc.h"
#include "core/api.h"
#include "core/events.h"
#include "fake_bus.h"
#include "test.h"

#define BOB "bbbbbbbbbbbbbbbbbbbbbbbb"
#define ALICE "aaaaaaaaaaaaaaaaaaaaaaaa"

/* ---- fakes ---------------------------------------------------------------- */

typedef struct fake_mailer {
    tms_mailer_t port;
    int submits;
    int submits_after_close;
    bool closed;
    char mailed[128][37]; /* the event ids of the first 128 mails */
} fake_mailer_t;

static int mailer_submit(tms_mailer_t *self, tms_mail_t **pmail)
{
    fake_mailer_t *m = (fake_mailer_t *)self;
    if (m->submits < 128)
        snprintf(m->mailed[m->submits], sizeof(m->mailed[0]), "%s", (*pmail)->event_id);
    m->submits++;
    if (m->closed) {
        m->submits_after_close++;
        return -TMS_ECLOSED;
    }
    (*pmail)->err.code = TMS_OK;
    tms_mailbox_reply(&(*pmail)->msg);
    *pmail = NULL;
    return 0;
}

/* An inbox that knows one event (seen_id) and can hold its ops until released. */
typedef struct fake_inbox {
    tms_outbox_t port;
    int records; /* events recorded */
    int seen_ops, record_ops;
    size_t seen_nids[16]; /* events asked in each SEEN op */
    char seen_id[37];
    bool hold, refuse;
    tms_outbox_op_t *held[16];
    int nheld;
} fake_inbox_t;

static int inbox_submit(tms_outbox_t *self, tms_outbox_op_t **pop)
{
    fake_inbox_t *o = (fake_inbox_t *)self;
    tms_outbox_op_t *op = *pop;
    size_t n = op->nids;
    if (o->refuse)
        return -TMS_ECLOSED; /* the op stays the caller's */
    *pop = NULL;
    if (op->msg.op == TMS_INBOX_RECORD) {
        o->records += (int)n;
        o->record_ops++;
    } else {
        if (o->seen_ops < 16)
            o->seen_nids[o->seen_ops] = n;
        o->seen_ops++;
    }
    for (size_t i = 0; op->ids_seen && i < op->nids; i++)
        op->ids_seen[i] = strcmp(op->ids[i], o->seen_id) == 0;
    if (o->hold && o->nheld < 16) {
        o->held[o->nheld++] = op;
        return 0;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

static void inbox_release(fake_inbox_t *o)
{
    for (int i = 0; i < o->nheld; i++)
        tms_mailbox_reply(&o->held[i]->msg);
    o->nheld = 0;
}

/* The auth actor keeps the lookup until the test answers it (or answers at once). */
static tms_msg_t *held_lookup;
static bool answer_at_once;

static void answer(tms_msg_t *msg)
{
    tms_api_call_t *q = (tms_api_call_t *)msg;
    snprintf(q->user.email, sizeof(q->user.email), "bob@example.com");
    tms_mailbox_reply(&q->msg);
}

static void on_auth(void *owner, tms_msg_t *msg)
{
    (void)owner;
    if (answer_at_once)
        answer(msg);
    else
        held_lookup = msg;
}

static void answer_lookup(void)
{
    tms_msg_t *msg = held_lookup;
    held_lookup = NULL;
    answer(msg);
}

typedef struct env {
    uv_loop_t loop;
    fake_mailer_t mailer;
    fake_inbox_t inbox;
    fake_bus_t bus;
    tms_mailbox_t *auth;
    tms_notifier_t *notifier;
} env_t;

static void env_init(env_t *e)
{
    memset(e, 0, sizeof(*e));
    e->mailer.port.name = "fake";
    e->mailer.port.submit = mailer_submit;
    e->inbox.port.name = "fake";
    e->inbox.port.submit = inbox_submit;
    fake_bus_init(&e->bus);
    uv_loop_init(&e->loop);
    e->auth = tms_mailbox_new(&e->loop, "auth", 128, on_auth, NULL);
    e->notifier = tms_notifier_start(&e->loop, &(tms_notifier_config_t){
                                                   .mailbox_capacity = 128,
                                                   .mailer = &e->mailer.port,
                                                   .inbox = &e->inbox.port,
                                                   .auth = e->auth,
                                                   .bus = &e->bus.port,
                                               });
}

static void env_fini(env_t *e)
{
    tms_notifier_free(&e->notifier);
    tms_mailbox_free(&e->auth);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e->loop), 0);
}

/* Posts one task_assigned event for BOB to the notifier. */
static void post_delivery(env_t *e, const char *event_id)
{
    tms_delivery_t *d = tms_new(tms_delivery_t);
    tms_msg_t *msg = &d->msg;
    msg->kind = TMS_MSG_REQUEST;
    msg->op = TMS_EVENT_DELIVERY;
    snprintf(d->topic, sizeof(d->topic), "notifications");
    snprintf(d->key, sizeof(d->key), "%s", BOB);
    d->payload = tms_event_notification_json("task_assigned", BOB, 7, event_id, "Title", 0, ALICE);
    d->payload_len = strlen(d->payload);
    d->attempt = 1;
    CHECK_EQ_INT(tms_mailbox_post(tms_notifier_mailbox(e->notifier), &msg), 0);
}

/* Delivers one task_assigned event for BOB and runs until the lookup is held. */
static void deliver(env_t *e, const char *event_id)
{
    held_lookup = NULL;
    post_delivery(e, event_id);
    for (int i = 0; i < 1000 && !held_lookup; i++)
        uv_run(&e->loop, UV_RUN_NOWAIT);
    CHECK(held_lookup != NULL);
}

static void run_until_acks(env_t *e, int acks)
{
    for (int i = 0; i < 1000 && e->bus.acks < acks; i++)
        uv_run(&e->loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(e->bus.acks, acks);
}

/* The path a mail takes: mailed once, recorded in the inbox, acknowledged ok. */
static void test_delivery_is_mailed(void)
{
    static env_t e;
    env_init(&e);
    deliver(&e, "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1a01");
    if (held_lookup)
        answer_lookup();
    run_until_acks(&e, 1);
    CHECK_EQ_INT(e.mailer.submits, 1);
    CHECK_EQ_INT(e.inbox.records, 1);
    CHECK_EQ_INT(e.bus.last.kind, TMS_ACK_OK);
    env_fini(&e);
}

/* The mailer closes while a delivery waits for its assignee's address: when the
 * address comes, the delivery is acknowledged transient (it stays pending for the
 * next start) and the closed mailer is never called. Before the fix, send_mail
 * submitted to the mailer regardless (freed by then in the server). */
static void test_no_mail_after_mailer_closed(void)
{
    static env_t e;
    env_init(&e);
    deliver(&e, "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1a02");
    e.mailer.closed = true;
    tms_notifier_mailer_closed(e.notifier);
    if (held_lookup)
        answer_lookup();
    run_until_acks(&e, 1);
    CHECK_EQ_INT(e.mailer.submits_after_close, 0);
    CHECK_EQ_INT(e.bus.last.kind, TMS_ACK_TRANSIENT);
    CHECK_EQ_INT(e.inbox.records, 0);
    CHECK_EQ_INT(tms_notifier_inflight(e.notifier), 0);
    env_fini(&e);
}

static bool was_mailed(const fake_mailer_t *m, const char *event_id)
{
    for (int i = 0; i < m->submits && i < 128; i++)
        if (strcmp(m->mailed[i], event_id) == 0)
            return true;
    return false;
}

/* Events that come while an inbox op is out share the next one (on PostgreSQL one
 * statement and, for records, one commit), INBOX_BATCH (64) at most, and each gets
 * its own answer: here the third was handled before, so it alone is not mailed
 * again. Before batching, every event had an inbox op of its own. */
static void test_inbox_ops_are_batched(void)
{
    enum { N = 70 };
    static env_t e;
    static char ids[N][37];
    env_init(&e);
    answer_at_once = true;
    for (int i = 0; i < N; i++)
        snprintf(ids[i], sizeof(ids[i]), "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1b%02d", i);
    snprintf(e.inbox.seen_id, sizeof(e.inbox.seen_id), "%s", ids[2]);
    e.inbox.hold = true;
    for (int i = 0; i < N; i++)
        post_delivery(&e, ids[i]);
    for (int i = 0; i < 100; i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(e.inbox.seen_ops, 1); /* the first went at once, alone */
    CHECK_EQ_INT(e.inbox.seen_nids[0], 1);
    e.inbox.hold = false;
    inbox_release(&e.inbox);
    run_until_acks(&e, N);
    CHECK_EQ_INT(e.inbox.seen_ops, 3); /* then 64, then the 5 left */
    CHECK_EQ_INT(e.inbox.seen_nids[1], 64);
    CHECK_EQ_INT(e.inbox.seen_nids[2], 5);
    CHECK_EQ_INT(e.mailer.submits, N - 1);
    for (int i = 0; i < N; i++)
        CHECK(was_mailed(&e.mailer, ids[i]) == (i != 2));
    CHECK_EQ_INT(e.inbox.records, N - 1);
    CHECK(e.inbox.record_ops < N - 1);
    CHECK_EQ_INT(e.bus.last.kind, TMS_ACK_OK);
    CHECK_EQ_INT(tms_notifier_inflight(e.notifier), 0);
    answer_at_once = false;
    env_fini(&e);
}

/* An inbox that refuses ops (its queue full or closed): every event of the batch is
 * acknowledged transient (it comes again), none is lost or mailed. */
static void test_refused_inbox_batch_acks_each(void)
{
    static env_t e;
    env_init(&e);
    held_lookup = NULL;
    e.inbox.hold = true;
    post_delivery(&e, "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1c01");
    for (int i = 0; i < 100; i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    e.inbox.refuse = true;
    post_delivery(&e, "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1c02");
    post_delivery(&e, "3f0c1d8e-6a52-4c8f-9a57-0d2b6f4e1c03");
    for (int i = 0; i < 100; i++)
        uv_run(&e.loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(e.bus.acks, 0); /* waiting for the op out */
    inbox_release(&e.inbox);     /* the first is answered (its lookup held); the others refused */
    run_until_acks(&e, 2);
    CHECK_EQ_INT(e.bus.last.kind, TMS_ACK_TRANSIENT);
    CHECK_EQ_INT(e.mailer.submits, 0);
    CHECK(held_lookup != NULL);
    e.inbox.refuse = e.inbox.hold = false; /* the first goes on: mailed, recorded, ok */
    answer_lookup();
    run_until_acks(&e, 3);
    CHECK_EQ_INT(e.mailer.submits, 1);
    CHECK_EQ_INT(e.bus.last.kind, TMS_ACK_OK);
    CHECK_EQ_INT(tms_notifier_inflight(e.notifier), 0);
    env_fini(&e);
}

int main(void)
{
    RUN_TEST(test_delivery_is_mailed);
    RUN_TEST(test_no_mail_after_mailer_closed);
    RUN_TEST(test_inbox_ops_are_batched);
    RUN_TEST(test_refused_inbox_batch_acks_each);
    TEST_EXIT();
}
