/* In-process bus: a copy per consumer group, done only after every ack, nack and
 * refusal fail the publish, no-subscriber publishes complete asynchronously, order
 * per subscriber, and freeing with deliveries outstanding leaks nothing. Failures
 * (core/event_bus.h): a transient one pauses the subscription (its copies are
 * refused, uncounted as attempts, until a probe is handled); a permanent one is
 * redelivered with its attempt number and dead-lettered at dlq_after. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "core/event_bus.h"
#include "core/metrics.h"
#include "core/status.h"
#include "io/bus/local.h"
#include "test.h"
#include "test_loop.h"

#define MAX_HELD 64

typedef struct consumer {
    tms_mailbox_t *mailbox;
    tms_delivery_t *held[MAX_HELD]; /* received, not yet acked */
    int n;
} consumer_t;

typedef struct result {
    int calls;
    int status;
} result_t;

static void on_delivery(void *owner, tms_msg_t *msg)
{
    consumer_t *c = owner;
    CHECK_EQ_INT(msg->op, TMS_EVENT_DELIVERY);
    CHECK_EQ_INT(msg->kind, TMS_MSG_REQUEST);
    if (c->n < MAX_HELD)
        c->held[c->n++] = (tms_delivery_t *)msg;
}

static void on_done(void *ctx, int status)
{
    result_t *r = ctx;
    r->calls++;
    r->status = status;
}

static void consumer_init(consumer_t *c, uv_loop_t *loop, const char *name, size_t cap)
{
    memset(c, 0, sizeof(*c));
    c->mailbox = tms_mailbox_new(loop, name, cap, on_delivery, c);
}

#define OK 1
#define TRANSIENT 0
#define PERMANENT 2

/* Acknowledge the i-th held delivery: OK, TRANSIENT or PERMANENT. */
static void ack_at(tms_event_bus_t *bus, consumer_t *c, int i, int how)
{
    tms_delivery_t *d = c->held[i];
    bus->ack(bus, &d,
             how == OK          ? tms_ack_ok()
             : how == TRANSIENT ? tms_ack_transient("smtp", "circuit open", 0)
                                : tms_ack_permanent("bad"));
    CHECK(d == NULL);
    c->held[i] = NULL;
}

/* A few loop turns: deliveries, then completions (a zero timer). */
static void spin(uv_loop_t *loop)
{
    for (int i = 0; i < 4; i++)
        uv_run(loop, UV_RUN_NOWAIT);
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* Close the bus through its port and wait for its callback. */
static void close_bus(uv_loop_t *loop, tms_event_bus_t **bus)
{
    int closed = 0;
    (*bus)->close(*bus, on_closed, &closed);
    *bus = NULL;
    CHECK_EQ_INT(closed, 0); /* never inside close */
    while (!closed && uv_run(loop, UV_RUN_ONCE))
        ;
    CHECK_EQ_INT(closed, 1);
}

static void finish(uv_loop_t *loop, tms_event_bus_t **bus, consumer_t *cs, int ncs)
{
    close_bus(loop, bus);
    for (int i = 0; i < ncs; i++)
        tms_mailbox_free(&cs[i].mailbox);
    uv_run(loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(loop), 0);
}

static uint64_t counter(const char *name, const char *labels)
{
    return tms_counter_value(tms_metrics_counter(name, "", labels));
}

static void test_two_groups_done_after_both_acks(void)
{
    uv_loop_t loop;
    consumer_t cs[3];
    result_t r = {0};
    const char payload[] = "{\"type\":\"task_assigned\",\"task_id\":\"42\"}";
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    CHECK_EQ_STR(bus->name, "local");
    consumer_init(&cs[0], &loop, "notifier", 8);
    consumer_init(&cs[1], &loop, "audit", 8);
    consumer_init(&cs[2], &loop, "other", 8);
    CHECK_EQ_INT(bus->subscribe(bus, "notifications", "notifier", cs[0].mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "notifications", "audit", cs[1].mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "user_deleted", "notifier", cs[2].mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "notifications", "audit", cs[2].mailbox), -TMS_EINVAL);
    uint64_t pub0 = counter("tms_bus_published_total", "topic=\"notifications\"");
    uint64_t del0 =
        counter("tms_bus_delivered_total", "topic=\"notifications\",group=\"notifier\"");

    CHECK_EQ_INT(bus->publish(bus, "notifications", "42", payload, strlen(payload), on_done, &r),
                 0);
    spin(&loop);
    CHECK_EQ_INT(cs[0].n, 1);
    CHECK_EQ_INT(cs[1].n, 1);
    CHECK_EQ_INT(cs[2].n, 0);
    for (int i = 0; i < 2 && cs[i].n; i++) {
        tms_delivery_t *d = cs[i].held[0];
        CHECK_EQ_STR(d->topic, "notifications");
        CHECK_EQ_STR(d->key, "42");
        CHECK_EQ_INT(d->payload_len, strlen(payload));
        CHECK_EQ_STR(d->payload, payload);
        CHECK_EQ_INT(d->attempt, 1);
    }
    if (cs[0].n && cs[1].n)
        CHECK(cs[0].held[0] != cs[1].held[0]); /* each its own copy */
    CHECK_EQ_INT(r.calls, 0);
    ack_at(bus, &cs[0], 0, 1);
    spin(&loop);
    CHECK_EQ_INT(r.calls, 0); /* audit has not acked */
    ack_at(bus, &cs[1], 0, 1);
    CHECK_EQ_INT(r.calls, 0); /* never inside ack */
    spin(&loop);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.status, 0);
    CHECK_EQ_INT(counter("tms_bus_published_total", "topic=\"notifications\"") - pub0, 1);
    CHECK_EQ_INT(
        counter("tms_bus_delivered_total", "topic=\"notifications\",group=\"notifier\"") - del0, 1);

    /* Refused at once: done never follows. */
    result_t bad = {0};
    CHECK_EQ_INT(bus->publish(bus, "bad topic", "k", "x", 1, on_done, &bad), -TMS_EINVAL);
    CHECK_EQ_INT(bus->publish(bus, "notifications",
                              "a-key-much-longer-than-the-sixty-three-bytes-a-delivery-can-hold-x",
                              "x", 1, on_done, &bad),
                 -TMS_EINVAL);
    spin(&loop);
    CHECK_EQ_INT(bad.calls, 0);
    finish(&loop, &bus, cs, 3);
}

static void test_nack(void)
{
    uv_loop_t loop;
    consumer_t cs[2];
    result_t r = {0};
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    consumer_init(&cs[0], &loop, "a", 8);
    consumer_init(&cs[1], &loop, "b", 8);
    bus->subscribe(bus, "notifications", "a", cs[0].mailbox);
    bus->subscribe(bus, "notifications", "b", cs[1].mailbox);
    uint64_t nack0 = counter("tms_bus_nacked_total", "topic=\"notifications\",group=\"a\"");
    CHECK_EQ_INT(bus->publish(bus, "notifications", "7", "{}", 2, on_done, &r), 0);
    spin(&loop);
    CHECK_EQ_INT(cs[0].n + cs[1].n, 2);
    ack_at(bus, &cs[0], 0, TRANSIENT);
    spin(&loop);
    CHECK_EQ_INT(r.calls, 0); /* b still holds its copy */
    ack_at(bus, &cs[1], 0, 1);
    spin(&loop);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.status, -TMS_EAGAIN); /* the relay keeps the event and tries again */
    CHECK_EQ_INT(counter("tms_bus_nacked_total", "topic=\"notifications\",group=\"a\"") - nack0, 1);
    finish(&loop, &bus, cs, 2);
}

static void test_no_subscribers_async(void)
{
    uv_loop_t loop;
    result_t r = {0};
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u1", "{}", 2, on_done, &r), 0);
    CHECK_EQ_INT(r.calls, 0); /* not inside publish */
    uv_run(&loop, UV_RUN_NOWAIT);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.status, 0);
    /* An empty payload is fine too. */
    CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u1", NULL, 0, on_done, &r), 0);
    uv_run(&loop, UV_RUN_DEFAULT); /* completes, then nothing keeps the loop alive */
    CHECK_EQ_INT(r.calls, 2);
    finish(&loop, &bus, NULL, 0);
}

static void test_full_mailbox(void)
{
    uv_loop_t loop;
    consumer_t cs[2];
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    consumer_init(&cs[0], &loop, "roomy", 16);
    consumer_init(&cs[1], &loop, "tight", 1);
    bus->subscribe(bus, "notifications", "roomy", cs[0].mailbox);
    bus->subscribe(bus, "notifications", "tight", cs[1].mailbox);
    /* Without a loop turn, tight's single slot is taken by the first event. */
    CHECK_EQ_INT(bus->publish(bus, "notifications", "1", "{}", 2, on_done, &r1), 0);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "2", "{}", 2, on_done, &r2), 0);
    spin(&loop);
    CHECK_EQ_INT(cs[0].n, 2);
    CHECK_EQ_INT(cs[1].n, 1);
    CHECK_EQ_INT(r2.calls, 0); /* roomy still holds the second event */
    ack_at(bus, &cs[0], 1, 1);
    spin(&loop);
    CHECK_EQ_INT(r2.calls, 1);
    CHECK_EQ_INT(r2.status, -TMS_EFULL);
    ack_at(bus, &cs[0], 0, 1);
    ack_at(bus, &cs[1], 0, 1);
    spin(&loop);
    CHECK_EQ_INT(r1.calls, 1);
    CHECK_EQ_INT(r1.status, 0);

    /* Refused by the only subscriber: the failure still arrives asynchronously. */
    tms_mailbox_close(cs[1].mailbox);
    close_bus(&loop, &bus);
    bus = tms_local_bus_new(&loop);
    bus->subscribe(bus, "notifications", "tight", cs[1].mailbox);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "3", "{}", 2, on_done, &r3), 0);
    CHECK_EQ_INT(r3.calls, 0);
    spin(&loop);
    CHECK_EQ_INT(r3.calls, 1);
    CHECK_EQ_INT(r3.status, -TMS_ECLOSED);
    finish(&loop, &bus, cs, 2);
}

static void test_order_per_subscriber(void)
{
    uv_loop_t loop;
    consumer_t cs[2];
    result_t r[10] = {{0}};
    char key[16], payload[32];
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    consumer_init(&cs[0], &loop, "a", 64);
    consumer_init(&cs[1], &loop, "b", 64);
    bus->subscribe(bus, "notifications", "a", cs[0].mailbox);
    bus->subscribe(bus, "notifications", "b", cs[1].mailbox);
    for (int i = 0; i < 10; i++) {
        snprintf(key, sizeof(key), "%d", i);
        snprintf(payload, sizeof(payload), "{\"n\":%d}", i);
        CHECK_EQ_INT(
            bus->publish(bus, "notifications", key, payload, strlen(payload), on_done, &r[i]), 0);
        if (i == 4)
            spin(&loop); /* across batches too */
    }
    spin(&loop);
    for (int c = 0; c < 2; c++) {
        CHECK_EQ_INT(cs[c].n, 10);
        for (int i = 0; i < cs[c].n; i++) {
            snprintf(key, sizeof(key), "%d", i);
            CHECK_EQ_STR(cs[c].held[i]->key, key);
        }
    }
    /* Acks in reverse order: each publish completes on its own. */
    for (int i = 9; i >= 0; i--) {
        ack_at(bus, &cs[0], i, 1);
        ack_at(bus, &cs[1], i, 1);
    }
    spin(&loop);
    for (int i = 0; i < 10; i++) {
        CHECK_EQ_INT(r[i].calls, 1);
        CHECK_EQ_INT(r[i].status, 0);
    }
    finish(&loop, &bus, cs, 2);
}

static int republished;

static void on_done_republish(void *ctx, int status)
{
    tms_event_bus_t *bus = ctx;
    (void)status;
    /* Publishing again from done must not re-enter: the new done comes later. */
    if (republished++ == 0)
        CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u", "{}", 2, on_done_republish, bus), 0);
}

static void test_publish_from_done(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    republished = 0;
    CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u", "{}", 2, on_done_republish, bus), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(republished, 2);
    finish(&loop, &bus, NULL, 0);
}

static void test_dropped_and_outstanding(void)
{
    uv_loop_t loop;
    consumer_t cs[2];
    result_t r1 = {0}, r2 = {0}, r3 = {0};
    uv_loop_init(&loop);
    tms_event_bus_t *bus = tms_local_bus_new(&loop);
    consumer_init(&cs[0], &loop, "held", 8);
    consumer_init(&cs[1], &loop, "gone", 8);
    bus->subscribe(bus, "notifications", "held", cs[0].mailbox);
    bus->subscribe(bus, "user_deleted", "gone", cs[1].mailbox);
    /* A copy freed unhandled by its mailbox counts as a nack. */
    CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u", "{}", 2, on_done, &r1), 0);
    tms_mailbox_free(&cs[1].mailbox);
    spin(&loop);
    CHECK_EQ_INT(r1.calls, 1);
    CHECK_EQ_INT(r1.status, -TMS_EIO);

    /* Close the bus with one copy in a consumer's hands and one still queued: it
     * refuses new work at once and waits for both publishes to be done. */
    CHECK_EQ_INT(bus->publish(bus, "notifications", "1", "{}", 2, on_done, &r2), 0);
    spin(&loop);
    CHECK_EQ_INT(cs[0].n, 1);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "2", "{}", 2, on_done, &r3), 0);
    CHECK_EQ_INT(bus->busy(bus), 2);
    int closed = 0;
    bus->close(bus, on_closed, &closed);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "3", "{}", 2, on_done, &r1), -TMS_ECLOSED);
    CHECK_EQ_INT(bus->subscribe(bus, "notifications", "late", cs[0].mailbox), -TMS_ECLOSED);
    spin(&loop); /* the queued copy reaches the consumer too */
    CHECK_EQ_INT(closed, 0);
    CHECK_EQ_INT(cs[0].n, 2);
    /* Held copies are still acknowledged while the bus closes. */
    ack_at(bus, &cs[0], 0, 1);
    spin(&loop);
    CHECK_EQ_INT(r2.calls, 1);
    CHECK_EQ_INT(r2.status, 0);
    CHECK_EQ_INT(closed, 0);
    ack_at(bus, &cs[0], 1, PERMANENT); /* no redelivery once closing */
    for (int i = 0; i < 20 && !closed; i++)
        spin(&loop);
    CHECK_EQ_INT(r3.calls, 1);
    CHECK_EQ_INT(r3.status, -TMS_ECLOSED);
    CHECK_EQ_INT(closed, 1);
    tms_mailbox_free(&cs[0].mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
}

/* A transient failure pauses the subscription: what is published meanwhile never
 * reaches the consumer (refused: the relay keeps it), until the probe is due; a
 * failed probe waits longer (at least retry_after_ms), a handled one resumes. No
 * delivery counts as an attempt. */
static void test_transient_pauses_until_a_probe_is_handled(void)
{
    uv_loop_t loop;
    consumer_t c;
    result_t r[8] = {{0}};
    uv_loop_init(&loop);
    tms_event_bus_t *bus =
        tms_local_bus_new_with(&loop, &(tms_local_bus_options_t){.dlq_after = 2, .retry_ms = 20});
    consumer_init(&c, &loop, "n", 8);
    bus->subscribe(bus, "notifications", "n", c.mailbox);
    uint64_t held0 = counter("tms_bus_held_back_total", "topic=\"notifications\",group=\"n\"");
    uint64_t dead0 = counter("tms_bus_dead_lettered_total", "topic=\"notifications\",group=\"n\"");

    CHECK_EQ_INT(bus->publish(bus, "notifications", "1", "{}", 2, on_done, &r[0]), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 1);
    ack_at(bus, &c, 0, TRANSIENT); /* paused; first probe after retry_ms */
    spin(&loop);
    CHECK_EQ_INT(r[0].status, -TMS_EAGAIN);
    for (int i = 1; i <= 3; i++) /* dlq_after is 2: none of these may count */
        CHECK_EQ_INT(bus->publish(bus, "notifications", "2", "{}", 2, on_done, &r[i]), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 1); /* not delivered */
    CHECK_EQ_INT(r[3].calls, 1);
    CHECK_EQ_INT(r[3].status, -TMS_EAGAIN);
    CHECK_EQ_INT(counter("tms_bus_held_back_total", "topic=\"notifications\",group=\"n\"") - held0,
                 3);

    tms_test_spin(&loop, 40); /* the probe is due: the next copy goes out */
    CHECK_EQ_INT(bus->publish(bus, "notifications", "3", "{}", 2, on_done, &r[4]), 0);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "4", "{}", 2, on_done, &r[5]), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 2); /* the probe only */
    CHECK_EQ_INT(c.held[1]->attempt, 1);
    CHECK_EQ_INT(r[5].status, -TMS_EAGAIN);
    /* The probe fails too, with a cool-down of 300 ms to wait. */
    tms_delivery_t *d = c.held[1];
    c.held[1] = NULL;
    bus->ack(bus, &d, tms_ack_transient("smtp", "circuit open", 300));
    tms_test_spin(&loop, 100);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "5", "{}", 2, on_done, &r[6]), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 2); /* still within the cool-down */
    tms_test_spin(&loop, 250);
    CHECK_EQ_INT(bus->publish(bus, "notifications", "6", "{}", 2, on_done, &r[7]), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 3);   /* probe */
    ack_at(bus, &c, 2, OK); /* handled: resumed */
    spin(&loop);
    CHECK_EQ_INT(r[7].status, 0);
    result_t after = {0};
    CHECK_EQ_INT(bus->publish(bus, "notifications", "7", "{}", 2, on_done, &after), 0);
    spin(&loop);
    CHECK_EQ_INT(c.n, 4);
    CHECK_EQ_INT(c.held[3]->attempt, 1);
    ack_at(bus, &c, 3, OK);
    spin(&loop);
    CHECK_EQ_INT(after.status, 0);
    CHECK_EQ_INT(
        counter("tms_bus_dead_lettered_total", "topic=\"notifications\",group=\"n\"") - dead0, 0);
    finish(&loop, &bus, &c, 1);
}

/* A permanent failure is redelivered by the bus with the next attempt number (the
 * publish stays open), and after dlq_after attempts dead-lettered: counted, and done
 * as handled so the relay does not publish it again. */
static void test_permanent_redelivered_then_dead_lettered(void)
{
    uv_loop_t loop;
    consumer_t c;
    result_t r = {0};
    uv_loop_init(&loop);
    tms_event_bus_t *bus =
        tms_local_bus_new_with(&loop, &(tms_local_bus_options_t){.dlq_after = 3, .retry_ms = 10});
    consumer_init(&c, &loop, "p", 8);
    bus->subscribe(bus, "user_deleted", "p", c.mailbox);
    uint64_t dead0 = counter("tms_bus_dead_lettered_total", "topic=\"user_deleted\",group=\"p\"");
    CHECK_EQ_INT(bus->publish(bus, "user_deleted", "u", "not json", 8, on_done, &r), 0);
    for (int attempt = 1; attempt <= 3; attempt++) {
        for (int i = 0; i < 100 && c.n < attempt; i++)
            tms_test_spin(&loop, 5);
        CHECK_EQ_INT(c.n, attempt);
        if (c.n != attempt)
            break;
        CHECK_EQ_INT(c.held[attempt - 1]->attempt, attempt);
        CHECK_EQ_STR(c.held[attempt - 1]->payload, "not json");
        CHECK_EQ_INT(r.calls, 0); /* open while it is retried */
        ack_at(bus, &c, attempt - 1, PERMANENT);
    }
    spin(&loop);
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.status, 0);
    CHECK_EQ_INT(
        counter("tms_bus_dead_lettered_total", "topic=\"user_deleted\",group=\"p\"") - dead0, 1);
    tms_test_spin(&loop, 50);
    CHECK_EQ_INT(c.n, 3); /* never again */
    finish(&loop, &bus, &c, 1);
}

int main(void)
{
    RUN_TEST(test_two_groups_done_after_both_acks);
    RUN_TEST(test_nack);
    RUN_TEST(test_no_subscribers_async);
    RUN_TEST(test_full_mailbox);
    RUN_TEST(test_order_per_subscriber);
    RUN_TEST(test_publish_from_done);
    RUN_TEST(test_dropped_and_outstanding);
    RUN_TEST(test_transient_pauses_until_a_probe_is_handled);
    RUN_TEST(test_permanent_redelivered_then_dead_lettered);
    TEST_EXIT();
}
