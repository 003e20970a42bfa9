/* The push hub's shared part and its doorbells (fake bus: fakes are fine in unit
 * tests): no doorbell goes out while no other process is known to have streams; another
 * process's announcement turns doorbells on, and rings one skipped just before it (not
 * one its poll has covered); stopping waits for the doorbell in flight. The real bus
 * between two instances: tests/integration/test_push.py. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "core/alloc.h"
#include "core/push.h"
#include "fake_bus.h"
#include "test.h"
#include "test_loop.h"

typedef struct doorbell_bus {
    fake_bus_t fake; /* first member: subscribe, ack */
    int published;
    char last[128];
    tms_publish_done_fn done; /* the publish in flight */
    void *ctx;
    tms_mailbox_t *feed;
} doorbell_bus_t;

static int bus_publish(tms_event_bus_t *self, const char *topic, const char *key,
                       const char *payload, size_t len, tms_publish_done_fn done, void *ctx)
{
    doorbell_bus_t *b = (doorbell_bus_t *)self;
    (void)key;
    CHECK_EQ_STR(topic, TMS_PUSH_TOPIC);
    b->published++;
    snprintf(b->last, sizeof(b->last), "%.*s", (int)len, payload);
    b->done = done;
    b->ctx = ctx;
    return 0;
}

static int bus_subscribe_all(tms_event_bus_t *self, const char *topic, tms_mailbox_t *mailbox)
{
    doorbell_bus_t *b = (doorbell_bus_t *)self;
    CHECK_EQ_STR(topic, TMS_PUSH_TOPIC);
    b->feed = mailbox;
    return 0;
}

static void bus_init(doorbell_bus_t *b)
{
    memset(b, 0, sizeof(*b));
    fake_bus_init(&b->fake);
    b->fake.port.publish = bus_publish;
    b->fake.port.subscribe_all = bus_subscribe_all;
}

/* The publish in flight is done. */
static void bus_complete(doorbell_bus_t *b)
{
    tms_publish_done_fn done = b->done;
    b->done = NULL;
    if (done)
        done(b->ctx, 0);
}

/* Runs the loop for 20 ms: what was posted is handled, what was closed is freed. */
static void spin(uv_loop_t *loop)
{
    tms_test_spin(loop, 20);
}

/* What another process publishes on the topic reaches this one's feed. */
static void hear(doorbell_bus_t *b, const char *payload)
{
    tms_delivery_t *d = tms_new(tms_delivery_t);
    tms_msg_t *msg = &d->msg;
    msg->kind = TMS_MSG_REQUEST;
    msg->op = TMS_EVENT_DELIVERY;
    snprintf(d->topic, sizeof(d->topic), "%s", TMS_PUSH_TOPIC);
    d->payload = tms_strdup(payload);
    d->payload_len = strlen(payload);
    d->attempt = 1;
    CHECK_EQ_INT(tms_mailbox_post(b->feed, &msg), 0);
}

static void on_stopped(void *arg)
{
    (*(int *)arg)++;
}

static void finish(uv_loop_t *loop, tms_push_shared_t **ps)
{
    int stopped = 0;
    tms_push_shared_stop(*ps, on_stopped, &stopped);
    CHECK_EQ_INT(stopped, 1);
    tms_push_shared_free(ps);
    spin(loop);
}

static void test_doorbells_only_after_an_announcement(void)
{
    uv_loop_t loop;
    doorbell_bus_t b;
    tms_push_shared_t *s;
    int stopped = 0;
    uv_loop_init(&loop);
    bus_init(&b);
    s = tms_push_shared_new(&loop, &(tms_push_limits_t){.poll_ms = 1000}, &b.fake.port, true);
    CHECK(b.feed != NULL);

    /* nobody listens: a write rings nothing; a plain doorbell from elsewhere says
     * nothing about streams */
    tms_push_poke(s);
    spin(&loop);
    CHECK_EQ_INT(b.published, 0);
    hear(&b, "{}");
    spin(&loop);
    CHECK_EQ_INT(b.fake.acks, 1);
    tms_push_poke(s);
    spin(&loop);
    CHECK_EQ_INT(b.published, 0);

    /* another process has streams: the doorbell just skipped goes out now */
    hear(&b, "{\"listening\":\"0123456789abcdef\"}");
    spin(&loop);
    CHECK_EQ_INT(b.published, 1);
    CHECK_EQ_STR(b.last, "{}");
    CHECK_EQ_INT(b.fake.acks, 2);

    /* and the next write rings too, once the one in flight is done */
    tms_push_poke(s);
    spin(&loop);
    CHECK_EQ_INT(b.published, 1);
    bus_complete(&b);
    CHECK_EQ_INT(b.published, 2);

    /* stopping waits for the doorbell in flight */
    tms_push_shared_stop(s, on_stopped, &stopped);
    CHECK_EQ_INT(stopped, 0);
    bus_complete(&b);
    CHECK_EQ_INT(stopped, 1);
    tms_push_shared_free(&s);
    spin(&loop);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_a_doorbell_the_poll_covered_is_not_rung(void)
{
    uv_loop_t loop;
    doorbell_bus_t b;
    tms_push_shared_t *s;
    uv_loop_init(&loop);
    bus_init(&b);
    s = tms_push_shared_new(&loop, &(tms_push_limits_t){.poll_ms = 50}, &b.fake.port, true);

    tms_push_poke(s);
    spin(&loop);
    usleep(100 * 1000); /* two of the listener's polls since the write */
    hear(&b, "{\"listening\":\"0123456789abcdef\"}");
    spin(&loop);
    CHECK_EQ_INT(b.published, 0);
    tms_push_poke(s); /* a write now rings */
    spin(&loop);
    CHECK_EQ_INT(b.published, 1);
    bus_complete(&b);
    finish(&loop, &s);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

static void test_a_process_that_does_not_publish_never_rings(void)
{
    uv_loop_t loop;
    doorbell_bus_t b;
    tms_push_shared_t *s;
    uv_loop_init(&loop);
    bus_init(&b);
    s = tms_push_shared_new(&loop, &(tms_push_limits_t){0}, &b.fake.port, false);
    hear(&b, "{\"listening\":\"0123456789abcdef\"}");
    spin(&loop);
    tms_push_poke(s);
    spin(&loop);
    CHECK_EQ_INT(b.published, 0);
    finish(&loop, &s);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

int main(void)
{
    RUN_TEST(test_doorbells_only_after_an_announcement);
    RUN_TEST(test_a_doorbell_the_poll_covered_is_not_rung);
    RUN_TEST(test_a_process_that_does_not_publish_never_rings);
    TEST_EXIT();
}
