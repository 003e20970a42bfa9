/* Outbox relay with an in-memory outbox and bus (fakes are fine in unit tests):
 * events go out in seq order, only accepted ones are marked sent, refused ones are
 * retried on the next poll, and a kick runs a batch at once. */
#include <pthread.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/relay.h"
#include "core/status.h"
#include "test.h"

#define N 5

typedef struct fake_outbox {
    tms_outbox_t port;
    int sent[N + 1]; /* by seq */
    int fetches;
} fake_outbox_t;

static int outbox_submit(tms_outbox_t *self, tms_outbox_op_t **pop)
{
    fake_outbox_t *o = (fake_outbox_t *)self;
    tms_outbox_op_t *op = *pop;
    *pop = NULL;
    if (op->msg.op == TMS_OUTBOX_FETCH) {
        o->fetches++;
        op->events = tms_calloc(N, sizeof(tms_outbox_event_t));
        for (int seq = 1; seq <= N && (int)op->nevents < op->limit; seq++) {
            if (o->sent[seq])
                continue;
            tms_outbox_event_t *e = &op->events[op->nevents++];
            e->seq = seq;
            snprintf(e->topic, sizeof(e->topic), "t");
            snprintf(e->key, sizeof(e->key), "%d", seq);
            e->payload = tms_strdup("{}");
        }
    } else if (op->msg.op == TMS_OUTBOX_MARK_SENT) {
        for (size_t i = 0; i < op->nseqs; i++)
            o->sent[op->seqs[i]]++;
    }
    tms_mailbox_reply(&op->msg);
    return 0;
}

typedef struct fake_bus {
    tms_event_bus_t port;
    int refuse_key; /* publish of this key fails (async) */
    int order[64];
    int n;
} fake_bus_t;

static int bus_publish(tms_event_bus_t *self, const char *topic, const char *key,
                       const char *payload, size_t len, tms_publish_done_fn done, void *ctx)
{
    fake_bus_t *b = (fake_bus_t *)self;
    int k = atoi(key);
    if (b->n < 64)
        b->order[b->n++] = k;
    done(ctx, k == b->refuse_key ? -TMS_EIO : 0);
    return 0;
}

static void test_relay(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}, .refuse_key = 3};
    tms_relay_t *r;
    uint64_t until;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 50);
    /* The first batch runs at start: 1..5 published in order, 3 refused. */
    until = uv_now(&loop) + 30;
    while (uv_now(&loop) < until)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(b.n, 5);
    for (int i = 0; i < 5; i++)
        CHECK_EQ_INT(b.order[i], i + 1);
    CHECK_EQ_INT(o.sent[1] + o.sent[2] + o.sent[4] + o.sent[5], 4);
    CHECK_EQ_INT(o.sent[3], 0);
    /* The bus recovers: the poll retries event 3 alone. */
    b.refuse_key = 0;
    until = uv_now(&loop) + 200;
    while (uv_now(&loop) < until && !o.sent[3])
        uv_run(&loop, UV_RUN_ONCE);
    CHECK_EQ_INT(o.sent[3], 1);
    CHECK_EQ_INT(b.order[5], 3);
    CHECK_EQ_INT(o.sent[1], 1); /* never marked twice */
    /* A kick runs a batch without waiting for the poll. */
    {
        int before = o.fetches;
        tms_relay_kick(r);
        until = uv_now(&loop) + 40; /* well below the 50 ms poll */
        while (uv_now(&loop) < until && o.fetches == before)
            uv_run(&loop, UV_RUN_ONCE);
        CHECK(o.fetches > before);
    }
    tms_relay_stop(r, NULL, NULL);
    while (tms_relay_busy(r))
        uv_run(&loop, UV_RUN_ONCE);
    tms_relay_free(&r);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* Another worker's thread kicks through a remote stand-in: the relay runs a batch at
 * once on its own loop; stopping and freeing the stand-in leaves the relay alone. */
static tms_relay_t *remote_of;

static void *kick_from_thread(void *arg)
{
    (void)arg;
    tms_relay_kick(remote_of);
    return NULL;
}

static void test_remote_kick(void)
{
    uv_loop_t loop;
    fake_outbox_t o = {.port = {.name = "fake", .submit = outbox_submit}};
    fake_bus_t b = {.port = {.name = "fake", .publish = bus_publish}};
    tms_relay_t *r;
    pthread_t th;
    uint64_t until;
    int before;
    uv_loop_init(&loop);
    r = tms_relay_new(&loop, &o.port, &b.port, 10000); /* the poll never comes */
    remote_of = tms_relay_remote_new(r);
    CHECK_EQ_INT(tms_relay_busy(remote_of), 0);
    while (o.fetches == 0 || tms_relay_busy(r)) /* the start batch */
        uv_run(&loop, UV_RUN_ONCE);
    before = o.fetches;
    pthread_create(&th, NULL, kick_from_thread, NULL);
    pthread_join(th, NULL);
    until = uv_now(&loop) + 1000;
    while (uv_now(&loop) < until && o.fetches == before)
        uv_run(&loop, UV_RUN_ONCE);
    CHECK(o.fetches > before);
    tms_relay_stop(remote_of, NULL, NULL);
    tms_relay_kick(remote_of); /* stopped: a no-op */
    tms_relay_free(&remote_of);
    CHECK(remote_of == NULL);
    tms_relay_stop(r, NULL, NULL);
    while (tms_relay_busy(r))
        uv_run(&loop, UV_RUN_ONCE);
    tms_relay_free(&r);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN_TEST(test_relay);
    RUN_TEST(test_remote_kick);
    TEST_EXIT();
}
