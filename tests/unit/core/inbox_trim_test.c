/* Inbox retention (core/inbox_trim.h) with an in-memory outbox (fakes are fine in unit
 * tests): the first round comes when asked, for records older than the retention; a
 * round goes on in steps while the store says more may be found, keeps one cutoff and
 * hands each step where the one before stopped; the next round waits for the
 * interval; retention 0 never trims; a stop waits for the step out and starts no
 * other. */
#include <uv.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/inbox_trim.h"
#include "core/status.h"
#include "test.h"
#include "test_loop.h"

typedef struct fake_outbox {
    tms_outbox_t port;
    int steps;          /* trim ops */
    int64_t before[8];  /* their before_ms */
    char resume[8][32]; /* their resume, as handed in */
    int limit;          /* the last one's limit */
    int old;            /* records older than any cutoff left */
    int step_max;       /* a step deletes this many at most (0: its limit) */
    int any_more;       /* more after any deletion (SQLite); else after a full step */
    int hold;           /* steps wait in held until released */
    int refuse_at;      /* the submit of this step (1: the first) is refused once (0: none) */
    int submits;        /* submits, refused ones too */
    tms_outbox_op_t *held;
} fake_outbox_t;

static int outbox_submit(tms_outbox_t *self, tms_outbox_op_t **pop)
{
    fake_outbox_t *o = (fake_outbox_t *)self;
    tms_outbox_op_t *op = *pop;
    int max;
    CHECK_EQ_INT(op->msg.op, TMS_INBOX_TRIM);
    if (++o->submits == o->refuse_at)
        return -TMS_EAGAIN; /* the queue is full: the op stays the caller's */
    *pop = NULL;
    if (o->steps < 8) {
        o->before[o->steps] = op->before_ms;
        snprintf(o->resume[o->steps], sizeof(o->resume[0]), "%s", op->resume);
    }
    o->steps++;
    o->limit = op->limit;
    max = o->step_max ? o->step_max : op->limit;
    op->count = o->old < max ? o->old : max;
    o->old -= (int)op->count;
    op->more = o->any_more ? op->count > 0 : op->count >= op->limit;
    snprintf(op->resume, sizeof(op->resume), "(%d,1)", o->steps);
    if (o->hold) {
        o->held = op;
        return 0;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

static int stopped;

static void on_stopped(void *arg)
{
    (void)arg;
    stopped++;
}

static void stop_and_free(uv_loop_t *loop, tms_inbox_trim_t **t)
{
    stopped = 0;
    tms_inbox_trim_stop(*t, on_stopped, NULL);
    CHECK_EQ_INT(stopped, 1); /* nothing out */
    tms_inbox_trim_free(t);
    CHECK(*t == NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(loop), 0);
}

static void test_rounds_and_steps(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    tms_inbox_trim_t *t;
    int64_t now;
    uv_loop_init(&loop);
    o.old = 2500; /* two full steps (1,000 each), and a short one ends the round */
    now = tms_now_ms();
    t = tms_inbox_trim_new(&loop, &o.port, 60000, 200, 1500, "test");
    CHECK(t != NULL);
    tms_test_spin(&loop, 50);
    CHECK_EQ_INT(o.steps, 0); /* not before first_ms */
    tms_test_spin_until(&loop, &o.steps, 3, 3000);
    CHECK_EQ_INT(o.steps, 3);
    CHECK_EQ_INT(o.old, 0);
    CHECK_EQ_INT(o.limit, 1000);
    CHECK(o.before[0] >= now - 60000 && o.before[0] < now - 60000 + 3000);
    for (int i = 1; i < 3; i++)
        CHECK(o.before[i] == o.before[0]); /* one cutoff per round */
    CHECK_EQ_STR(o.resume[0], "");
    CHECK_EQ_STR(o.resume[1], "(1,1)"); /* where the step before stopped */
    CHECK_EQ_STR(o.resume[2], "(2,1)");
    tms_test_spin(&loop, 300);
    CHECK_EQ_INT(o.steps, 3); /* the round ended; the next comes at the interval */
    tms_test_spin_until(&loop, &o.steps, 4, 5000);
    CHECK_EQ_INT(o.steps, 4);
    CHECK_EQ_STR(o.resume[3], "");    /* a new round starts from the start */
    CHECK(o.before[3] > o.before[0]); /* with its own cutoff */
    stop_and_free(&loop, &t);
}

/* Where the store says a short step may be followed by more (SQLite: a young record
 * among the oldest, the clock stepped back), the round goes on while steps delete. */
static void test_short_steps_go_on(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {
        .port = {.name = "fake", .submit = outbox_submit}, .old = 30, .step_max = 7, .any_more = 1};
    tms_inbox_trim_t *t;
    uv_loop_init(&loop);
    t = tms_inbox_trim_new(&loop, &o.port, 1000, 1, 60000, "test");
    tms_test_spin(&loop, 2000);
    CHECK_EQ_INT(o.old, 0);
    CHECK_EQ_INT(o.steps, 6); /* 7, 7, 7, 7, 2, then 0 */
    stop_and_free(&loop, &t);
}

/* A step the store's queue refused is tried again (here at the 300 ms interval, which
 * is shorter than the minute), in the same round: same cutoff, same cursor; and a stop
 * right after a refusal has nothing to wait for. */
static void test_refused_step_is_tried_again(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {
        .port = {.name = "fake", .submit = outbox_submit}, .old = 2500, .refuse_at = 2};
    tms_inbox_trim_t *t;
    uv_loop_init(&loop);
    t = tms_inbox_trim_new(&loop, &o.port, 1000, 1, 300, "test");
    tms_test_spin_until(&loop, &o.steps, 3, 3000);
    CHECK_EQ_INT(o.steps, 3);
    CHECK_EQ_INT(o.submits, 4);
    CHECK_EQ_INT(o.old, 0);
    CHECK(o.before[1] == o.before[0] && o.before[2] == o.before[0]);
    CHECK_EQ_STR(o.resume[1], "(1,1)"); /* where the step before the refusal stopped */
    stop_and_free(&loop, &t);

    uv_loop_init(&loop);
    o = (fake_outbox_t){
        .port = {.name = "fake", .submit = outbox_submit}, .old = 5, .refuse_at = 1};
    t = tms_inbox_trim_new(&loop, &o.port, 1000, 1, 60000, "test");
    tms_test_spin(&loop, 100);
    CHECK_EQ_INT(o.submits, 1);
    CHECK_EQ_INT(o.steps, 0);
    stop_and_free(&loop, &t); /* nothing out: stopped at once */
}

static void test_zero_retention_keeps_all(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}, .old = 5};
    uv_loop_init(&loop);
    CHECK(tms_inbox_trim_new(&loop, &o.port, 0, 1, 10, "test") == NULL);
    tms_test_spin(&loop, 50);
    CHECK_EQ_INT(o.steps, 0);
    stopped = 0;
    tms_inbox_trim_stop(NULL, on_stopped, NULL); /* a server without one stops as well */
    CHECK_EQ_INT(stopped, 1);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_stop_waits_for_the_step_out(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {
        .port = {.name = "fake", .submit = outbox_submit}, .old = 3, .hold = 1, .any_more = 1};
    tms_inbox_trim_t *t;
    tms_outbox_op_t *op;
    uv_loop_init(&loop);
    t = tms_inbox_trim_new(&loop, &o.port, 1000, 1, 10, "test");
    tms_test_spin(&loop, 100);
    CHECK_EQ_INT(o.steps, 1); /* one out at a time, even past the 10 ms interval */
    CHECK(o.held != NULL);
    stopped = 0;
    tms_inbox_trim_stop(t, on_stopped, NULL);
    CHECK_EQ_INT(stopped, 0);
    op = o.held;
    o.held = NULL;
    tms_mailbox_reply(&op->msg); /* deleted 3, more may come: no next step once stopping */
    tms_test_spin(&loop, 300);
    CHECK_EQ_INT(stopped, 1);
    CHECK_EQ_INT(o.steps, 1);
    tms_inbox_trim_free(&t);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN_TEST(test_rounds_and_steps);
    RUN_TEST(test_short_steps_go_on);
    RUN_TEST(test_refused_step_is_tried_again);
    RUN_TEST(test_zero_retention_keeps_all);
    RUN_TEST(test_stop_waits_for_the_step_out);
    TEST_EXIT();
}
