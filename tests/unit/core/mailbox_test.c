/* Mailbox: FIFO order, the bound, request/reply continuations, cross-thread posts
 * with one wake-up per batch, stop messages through a full box, threaded consumers,
 * same-thread delivery in a drain or a batch. */
#include <pthread.h>
#include <sched.h>
#include <uv.h>

#include "core/mailbox.h"
#include "core/status.h"
#include "test.h"

typedef struct item {
    tms_msg_t msg;
    int value;
} item_t;

typedef struct sink {
    int seen[4096];
    int n;
    int stops;
    uv_loop_t *loop;
    tms_mailbox_t *self;
} sink_t;

static void on_item(void *owner, tms_msg_t *msg)
{
    sink_t *s = owner;
    item_t *it = (item_t *)msg;
    if (msg->kind == TMS_MSG_STOP)
        s->stops++;
    else if (s->n < 4096)
        s->seen[s->n++] = it->value;
    if (msg->reply_to) {
        it->value *= 10;
        tms_mailbox_reply(msg);
    }
}

static void test_fifo_and_bound(void)
{
    uv_loop_t loop;
    sink_t s = {0};
    item_t items[5];
    tms_mailbox_t *mb;
    uv_loop_init(&loop);
    mb = tms_mailbox_new(&loop, "fifo", 3, on_item, &s);
    for (int i = 0; i < 5; i++) {
        tms_msg_t *m = &items[i].msg;
        items[i] = (item_t){.value = i};
        int rc = tms_mailbox_post(mb, &m);
        if (i < 3) {
            CHECK_EQ_INT(rc, 0);
            CHECK(m == NULL); /* ownership taken */
        } else {
            CHECK_EQ_INT(rc, -TMS_EFULL);
            CHECK(m == &items[i].msg); /* caller keeps it */
        }
    }
    CHECK_EQ_INT(tms_mailbox_depth(mb), 3);
    CHECK_EQ_INT(tms_mailbox_rejected(mb), 2);
    /* A stop message gets through a full mailbox. */
    {
        item_t stop = {.msg.kind = TMS_MSG_STOP};
        tms_msg_t *m = &stop.msg;
        CHECK_EQ_INT(tms_mailbox_post(mb, &m), 0);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    CHECK_EQ_INT(s.n, 3);
    CHECK_EQ_INT(s.seen[0], 0);
    CHECK_EQ_INT(s.seen[1], 1);
    CHECK_EQ_INT(s.seen[2], 2);
    CHECK_EQ_INT(s.stops, 1);
    CHECK_EQ_INT(tms_mailbox_depth(mb), 0);
    /* Room again after draining. */
    {
        tms_msg_t *m = &items[3].msg;
        CHECK_EQ_INT(tms_mailbox_post(mb, &m), 0);
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK_EQ_INT(s.n, 4);
    }
    tms_mailbox_close(mb);
    {
        tms_msg_t *m = &items[4].msg;
        CHECK_EQ_INT(tms_mailbox_post(mb, &m), -TMS_ECLOSED);
    }
    tms_mailbox_free(&mb);
    CHECK(mb == NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static int replies_seen;
static void on_reply(tms_msg_t *msg)
{
    item_t *it = (item_t *)msg;
    CHECK_EQ_INT(msg->kind, TMS_MSG_REPLY);
    CHECK(msg->ctx == &replies_seen);
    replies_seen += it->value;
}

static void test_request_reply(void)
{
    uv_loop_t loop;
    sink_t s = {0};
    item_t items[3];
    tms_mailbox_t *server, *client;
    uv_loop_init(&loop);
    server = tms_mailbox_new(&loop, "server", 2, on_item, &s);
    client = tms_mailbox_new(&loop, "client", 1, on_item, &s);
    replies_seen = 0;
    for (int i = 0; i < 2; i++) {
        tms_msg_t *m = &items[i].msg;
        items[i] = (item_t){.value = i + 1};
        m->reply_to = client;
        m->cont = on_reply;
        m->ctx = &replies_seen;
        CHECK_EQ_INT(tms_mailbox_post(server, &m), 0);
    }
    while (replies_seen < 30 && uv_run(&loop, UV_RUN_ONCE))
        ;
    CHECK_EQ_INT(replies_seen, 30); /* 10 + 20 */
    tms_mailbox_free(&server);
    tms_mailbox_free(&client);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

#define THREADS 4
#define PER_THREAD 500
typedef struct poster {
    tms_mailbox_t *mb;
    item_t items[PER_THREAD];
    int base;
    int refused;
} poster_t;

static void *post_many(void *arg)
{
    poster_t *p = arg;
    for (int i = 0; i < PER_THREAD; i++) {
        tms_msg_t *m = &p->items[i].msg;
        p->items[i].value = p->base + i;
        while (tms_mailbox_post(p->mb, &m) == -TMS_EFULL) {
            p->refused++;
            sched_yield();
        }
    }
    return NULL;
}

static void test_cross_thread(void)
{
    uv_loop_t loop;
    static sink_t s;
    static poster_t posters[THREADS];
    pthread_t th[THREADS];
    tms_mailbox_t *mb;
    int last[THREADS];
    memset(&s, 0, sizeof(s));
    uv_loop_init(&loop);
    mb = tms_mailbox_new(&loop, "xthread", 64, on_item, &s);
    for (int t = 0; t < THREADS; t++) {
        posters[t] = (poster_t){.mb = mb, .base = t * 100000};
        pthread_create(&th[t], NULL, post_many, &posters[t]);
    }
    while (s.n < THREADS * PER_THREAD)
        uv_run(&loop, UV_RUN_ONCE);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    CHECK_EQ_INT(s.n, THREADS * PER_THREAD);
    CHECK(tms_mailbox_peak(mb) <= 64);
    /* Per producer, order is kept. */
    for (int t = 0; t < THREADS; t++)
        last[t] = -1;
    for (int i = 0; i < s.n; i++) {
        int t = s.seen[i] / 100000, v = s.seen[i] % 100000;
        CHECK(v > last[t]);
        last[t] = v;
    }
    tms_mailbox_free(&mb);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_threaded_consumer(void)
{
    tms_mailbox_t *mb = tms_mailbox_new_threaded("threaded", 2);
    item_t a = {.value = 7}, b = {.value = 8};
    tms_msg_t *m;
    CHECK(tms_mailbox_take(mb, 10) == NULL); /* times out */
    m = &a.msg;
    CHECK_EQ_INT(tms_mailbox_post(mb, &m), 0);
    m = &b.msg;
    CHECK_EQ_INT(tms_mailbox_post(mb, &m), 0);
    tms_mailbox_close(mb);
    m = tms_mailbox_take(mb, -1);
    CHECK(m == &a.msg);
    m = tms_mailbox_take(mb, -1);
    CHECK(m == &b.msg);
    CHECK(tms_mailbox_take(mb, -1) == NULL); /* closed and drained */
    tms_mailbox_free(&mb);
}

/* A post made by a handler to another mailbox of the same loop is delivered in the
 * same loop turn (the ready-list fast path), in order, without a second wake-up. */
typedef struct relay_owner {
    tms_mailbox_t *next;
    int seen;
} relay_owner_t;

static void forward(void *owner, tms_msg_t *msg)
{
    relay_owner_t *o = owner;
    o->seen++;
    if (o->next) {
        msg->kind = TMS_MSG_REQUEST;
        CHECK_EQ_INT(tms_mailbox_post(o->next, &msg), 0);
    }
}

static void test_same_thread_fast_path(void)
{
    uv_loop_t loop;
    relay_owner_t a = {0}, b = {0}, c = {0};
    tms_mailbox_t *ma, *mb, *mc;
    item_t items[3];
    uv_loop_init(&loop);
    mc = tms_mailbox_new(&loop, "c", 8, forward, &c);
    mb = tms_mailbox_new(&loop, "b", 8, forward, &b);
    ma = tms_mailbox_new(&loop, "a", 8, forward, &a);
    a.next = mb;
    b.next = mc;
    for (int i = 0; i < 3; i++) {
        tms_msg_t *m = &items[i].msg;
        items[i] = (item_t){.value = i};
        CHECK_EQ_INT(tms_mailbox_post(ma, &m), 0);
    }
    uv_run(&loop, UV_RUN_NOWAIT); /* one turn: a -> b -> c */
    CHECK_EQ_INT(a.seen, 3);
    CHECK_EQ_INT(b.seen, 3);
    CHECK_EQ_INT(c.seen, 3);
    tms_mailbox_free(&ma);
    tms_mailbox_free(&mb);
    tms_mailbox_free(&mc);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Posts made inside a batch (a libuv callback that is not a drain, such as a store's
 * socket callback) are delivered by tms_mailbox_batch_end, before the callback
 * returns, without running the loop; a nested begin says false and changes nothing. */
static void test_batch_delivers_before_returning(void)
{
    uv_loop_t loop;
    relay_owner_t a = {0}, b = {0};
    tms_mailbox_t *ma, *mb;
    item_t items[3];
    bool began, nested;
    uv_loop_init(&loop);
    mb = tms_mailbox_new(&loop, "b", 8, forward, &b);
    ma = tms_mailbox_new(&loop, "a", 8, forward, &a);
    a.next = mb;
    began = tms_mailbox_batch_begin();
    nested = tms_mailbox_batch_begin();
    CHECK(began);
    CHECK(!nested);
    for (int i = 0; i < 3; i++) {
        tms_msg_t *m = &items[i].msg;
        items[i] = (item_t){.value = i};
        CHECK_EQ_INT(tms_mailbox_post(ma, &m), 0);
    }
    tms_mailbox_batch_end(nested);
    CHECK_EQ_INT(a.seen, 0); /* not yet: the outer batch delivers */
    tms_mailbox_batch_end(began);
    CHECK_EQ_INT(a.seen, 3); /* the loop never ran: a -> b in the batch */
    CHECK_EQ_INT(b.seen, 3);
    /* outside a batch, a post waits for the loop */
    {
        tms_msg_t *m = &items[0].msg;
        CHECK_EQ_INT(tms_mailbox_post(ma, &m), 0);
        CHECK_EQ_INT(a.seen, 3);
        uv_run(&loop, UV_RUN_NOWAIT);
        CHECK_EQ_INT(a.seen, 4);
    }
    tms_mailbox_free(&ma);
    tms_mailbox_free(&mb);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN_TEST(test_same_thread_fast_path);
    RUN_TEST(test_batch_delivers_before_returning);
    RUN_TEST(test_fifo_and_bound);
    RUN_TEST(test_request_reply);
    RUN_TEST(test_cross_thread);
    RUN_TEST(test_threaded_consumer);
    TEST_EXIT();
}
