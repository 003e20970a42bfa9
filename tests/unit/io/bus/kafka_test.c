/* Kafka bus against librdkafka's mock cluster (no broker): publish completes on
 * the loop after the delivery report, a delivery carries topic/key/payload, a
 * nack is redelivered and after dlq_after attempts lands in <topic>.dlq while
 * the next event of the same partition is handled meanwhile, an unacknowledged
 * event is redelivered to the next consumer of the group (offsets stop before
 * it), and a publish fails while the broker is down and succeeds once it is
 * back. A transient failure pauses the consumer (no attempt counted, nothing
 * dead-lettered, only probes go out) past max.poll.interval.ms without leaving the
 * group, and a consumer paused when its partitions were revoked fetches again
 * once they come back, also when it dropped what it held unhandled. A probe dropped
 * unhandled is followed by another. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "core/event_bus.h"
#include "core/metrics.h"
#include "io/bus/kafka.h"
#include "test.h"
#include "test_loop.h"

#define MAX_HELD 64
#define API_HEARTBEAT 12 /* the Kafka protocol's ApiKey of HeartbeatRequest */

typedef struct consumer {
    tms_mailbox_t *mailbox;
    tms_delivery_t *held[MAX_HELD];
    int n;                   /* received in total */
    tms_event_bus_t *ack_on; /* set: deliveries are acked on arrival (the test is done) */
    int late;                /* deliveries acked on arrival */
} consumer_t;

typedef struct result {
    int calls;
    int status;
} result_t;

typedef struct mock {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    const char *brokers;
} mock_t;

static void on_delivery(void *owner, tms_msg_t *msg)
{
    consumer_t *c = owner;
    CHECK_EQ_INT(msg->op, TMS_EVENT_DELIVERY);
    if (c->ack_on) {
        tms_delivery_t *d = (tms_delivery_t *)msg;
        c->ack_on->ack(c->ack_on, &d, tms_ack_ok());
        c->n++;
        c->late++;
        return;
    }
    if (c->n < MAX_HELD)
        c->held[c->n] = (tms_delivery_t *)msg;
    else
        msg->free_fn(msg);
    c->n++;
}

static void on_done(void *ctx, int status)
{
    result_t *r = ctx;
    r->calls++;
    r->status = status;
}

static void mock_start(mock_t *m)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    m->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    CHECK(m->rk != NULL);
    m->mc = rd_kafka_mock_cluster_new(m->rk, 1);
    CHECK(m->mc != NULL);
    m->brokers = rd_kafka_mock_cluster_bootstraps(m->mc);
}

static void mock_stop(mock_t *m)
{
    rd_kafka_mock_cluster_destroy(m->mc);
    rd_kafka_destroy(m->rk);
}

static tms_kafka_bus_t *kafka; /* the adapter of the last bus made */

static tms_event_bus_t *bus_new(uv_loop_t *loop, const mock_t *m, int dlq_after)
{
    char err[256] = "";
    tms_kafka_bus_t *bus = kafka = tms_kafka_bus_new(loop,
                                                     &(tms_kafka_options_t){
                                                         .brokers = m->brokers,
                                                         .dlq_after = dlq_after,
                                                         .retry_ms = 20,
                                                         .publish_timeout_ms = 2000,
                                                     },
                                                     err, sizeof(err));
    if (!bus)
        fprintf(stderr, "kafka bus: %s\n", err);
    CHECK(bus != NULL);
    return bus ? tms_kafka_bus_port(bus) : NULL;
}

static void on_closed(void *arg)
{
    (*(int *)arg)++;
}

/* Close through the port (held deliveries must be acked first) and wait for its
 * callback: the consumers have left their groups and the bus is freed. */
static void bus_finish(uv_loop_t *loop, tms_event_bus_t **bus)
{
    int closed = 0;
    (*bus)->close(*bus, on_closed, &closed);
    *bus = NULL;
    kafka = NULL;
    CHECK_EQ_INT(closed, 0); /* never inside close */
    CHECK(tms_test_spin_until(loop, &closed, 1, 15000));
    for (int i = 0; i < 4; i++)
        uv_run(loop, UV_RUN_NOWAIT); /* close callbacks; mailboxes are still open */
}

static void publish_ok(uv_loop_t *loop, tms_event_bus_t *bus, const char *topic, const char *key,
                       const char *payload)
{
    result_t r = {0, 99};
    CHECK_EQ_INT(bus->publish(bus, topic, key, payload, strlen(payload), on_done, &r), 0);
    CHECK_EQ_INT(r.calls, 0); /* never inside publish */
    CHECK(tms_test_spin_until(loop, &r.calls, 1, 10000));
    CHECK_EQ_INT(r.status, 0);
}

static void test_publish_consume_ack(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0};
    tms_event_bus_t *bus;
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t1", 1, 1);
    bus = bus_new(&loop, &m, 3);
    c.mailbox = tms_mailbox_new(&loop, "c", 16, on_delivery, &c);
    CHECK_EQ_INT(bus->subscribe(bus, "t1", "g1", c.mailbox), 0);
    CHECK(bus->subscribe(bus, "t1", "g1", c.mailbox) < 0); /* one subscriber per group */
    CHECK(bus->publish(bus, "bad topic", "k", "x", 1, on_done, NULL) < 0);
    publish_ok(&loop, bus, "t1", "key-1", "{\"a\":1}");
    CHECK(tms_test_spin_until(&loop, &c.n, 1, 15000));
    if (c.n >= 1) {
        CHECK_EQ_STR(c.held[0]->topic, "t1");
        CHECK_EQ_STR(c.held[0]->key, "key-1");
        CHECK_EQ_STR(c.held[0]->payload, "{\"a\":1}");
        CHECK_EQ_INT(c.held[0]->payload_len, 7);
        CHECK_EQ_INT(c.held[0]->attempt, 1);
        CHECK(bus->busy(bus) >= 1);
        bus->ack(bus, &c.held[0], tms_ack_ok());
        CHECK(c.held[0] == NULL);
    }
    CHECK_EQ_INT(tms_kafka_bus_reachable(kafka), 1);
    bus_finish(&loop, &bus);
    tms_mailbox_free(&c.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

static void test_nack_retries_then_dead_letters_without_stalling(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0}, dlq = {0};
    tms_event_bus_t *bus;
    int poison_attempts = 0, good = 0;
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t2", 1, 1);
    rd_kafka_mock_topic_create(m.mc, "t2.dlq", 1, 1);
    bus = bus_new(&loop, &m, 3);
    c.mailbox = tms_mailbox_new(&loop, "c", 16, on_delivery, &c);
    dlq.mailbox = tms_mailbox_new(&loop, "dlq", 16, on_delivery, &dlq);
    CHECK_EQ_INT(bus->subscribe(bus, "t2", "g2", c.mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "t2.dlq", "g2-dlq", dlq.mailbox), 0);
    publish_ok(&loop, bus, "t2", "same-key", "poison");
    publish_ok(&loop, bus, "t2", "same-key", "good");
    /* Handle what arrives: fail the poison every time, ack the good one. */
    for (int i = 0; i < 400 && dlq.n == 0; i++) {
        int seen = c.n;
        tms_test_spin_until(&loop, &c.n, seen + 1, 50);
        for (int j = 0; j < c.n && j < MAX_HELD; j++) {
            tms_delivery_t *d = c.held[j];
            if (!d)
                continue;
            if (strcmp(d->payload, "poison") == 0) {
                poison_attempts++;
                CHECK_EQ_INT(d->attempt, poison_attempts);
                bus->ack(bus, &c.held[j], tms_ack_permanent("test"));
            } else {
                good++;
                /* the good event is not held up by the failing one before it */
                CHECK(poison_attempts < 3);
                bus->ack(bus, &c.held[j], tms_ack_ok());
            }
        }
        tms_test_spin_until(&loop, &dlq.n, 1, 10);
    }
    CHECK_EQ_INT(poison_attempts, 3);
    CHECK_EQ_INT(good, 1);
    CHECK(tms_test_spin_until(&loop, &dlq.n, 1, 10000));
    if (dlq.n >= 1) {
        CHECK_EQ_STR(dlq.held[0]->payload, "poison");
        CHECK_EQ_STR(dlq.held[0]->key, "same-key");
        bus->ack(bus, &dlq.held[0], tms_ack_ok());
    }
    CHECK_EQ_INT(tms_counter_value(tms_metrics_counter("tms_kafka_dead_lettered_total", "",
                                                       "topic=\"t2\",group=\"g2\"")),
                 1);
    bus_finish(&loop, &bus);
    tms_mailbox_free(&c.mailbox);
    tms_mailbox_free(&dlq.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

/* Offsets stop before the first unacknowledged event: the group's next consumer
 * starts there, even though a later event was acknowledged. */
static void test_unacked_event_goes_to_next_consumer(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0}, c2 = {0};
    tms_event_bus_t *bus;
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t3", 1, 1);
    bus = bus_new(&loop, &m, 5);
    c.mailbox = tms_mailbox_new(&loop, "c", 16, on_delivery, &c);
    CHECK_EQ_INT(bus->subscribe(bus, "t3", "g3", c.mailbox), 0);
    publish_ok(&loop, bus, "t3", "k", "e1");
    publish_ok(&loop, bus, "t3", "k", "e2");
    publish_ok(&loop, bus, "t3", "k", "e3");
    CHECK(tms_test_spin_until(&loop, &c.n, 3, 15000));
    if (c.n == 3) {
        bus->ack(bus, &c.held[0], tms_ack_ok());
        bus->ack(bus, &c.held[2], tms_ack_ok());
    }
    /* Let an auto-commit happen, then leave without handling e2 (a crash would do
     * the same): the consumer drops e2 unhandled, and the bus closes. */
    tms_test_spin(&loop, 1500);
    if (c.held[1])
        c.held[1]->msg.free_fn(&c.held[1]->msg);
    bus_finish(&loop, &bus);
    tms_mailbox_free(&c.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);

    bus = bus_new(&loop, &m, 5);
    c2.mailbox = tms_mailbox_new(&loop, "c2", 16, on_delivery, &c2);
    CHECK_EQ_INT(bus->subscribe(bus, "t3", "g3", c2.mailbox), 0);
    CHECK(tms_test_spin_until(&loop, &c2.n, 2, 15000));
    CHECK_EQ_INT(c2.n, 2); /* e2 and e3, not e1 */
    if (c2.n >= 1)
        CHECK_EQ_STR(c2.held[0]->payload, "e2");
    for (int j = 0; j < c2.n && j < MAX_HELD; j++)
        bus->ack(bus, &c2.held[j], tms_ack_ok());
    bus_finish(&loop, &bus);
    tms_mailbox_free(&c2.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

static uint64_t counter(const char *name, const char *labels)
{
    return tms_counter_value(tms_metrics_counter(name, "", labels));
}

/* A bus that takes no more at 4 held deliveries (flow control), with n events "e0".."e<n-1>"
 * published to topic (one partition) under one key. */
static tms_event_bus_t *flow_bus_with_events(uv_loop_t *loop, mock_t *m, const char *topic, int n)
{
    char err[256], payload[16];
    tms_event_bus_t *bus;
    rd_kafka_mock_topic_create(m->mc, topic, 1, 1);
    kafka = tms_kafka_bus_new(
        loop,
        &(tms_kafka_options_t){
            .brokers = m->brokers, .retry_ms = 20, .publish_timeout_ms = 2000, .max_inflight = 4},
        err, sizeof(err));
    if (!kafka)
        fprintf(stderr, "kafka bus: %s\n", err);
    CHECK(kafka != NULL);
    bus = tms_kafka_bus_port(kafka);
    for (int i = 0; i < n; i++) {
        snprintf(payload, sizeof(payload), "e%d", i);
        publish_ok(loop, bus, topic, "k", payload);
    }
    return bus;
}

/* A flow-control test's loop, mock cluster, flow bus with n events on topic, and one
 * consumer (mailbox of 64) subscribed in group. */
typedef struct flow_env {
    uv_loop_t loop;
    mock_t m;
    consumer_t c;
    tms_event_bus_t *bus;
} flow_env_t;

static void flow_env_setup(flow_env_t *e, const char *topic, const char *group, int n)
{
    memset(e, 0, sizeof(*e));
    uv_loop_init(&e->loop);
    mock_start(&e->m);
    e->bus = flow_bus_with_events(&e->loop, &e->m, topic, n);
    e->c.mailbox = tms_mailbox_new(&e->loop, "c", 64, on_delivery, &e->c);
    CHECK_EQ_INT(e->bus->subscribe(e->bus, topic, group, e->c.mailbox), 0);
}

/* Closes the bus (a delivery still held keeps it waiting), the mailbox, the loop and the
 * cluster. */
static void flow_env_teardown(flow_env_t *e)
{
    bus_finish(&e->loop, &e->bus);
    tms_mailbox_free(&e->c.mailbox);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&e->loop), 0);
    mock_stop(&e->m);
}

/* Flow control: with max_inflight 4 the consumer stops and starts taking many times;
 * every event still arrives exactly once, in order. */
static void test_pause_resume_loses_nothing(void)
{
    flow_env_t e;
    char payload[16];
    int next = 0, acked = 0;
    flow_env_setup(&e, "t5", "g5", 30);
    /* Hold what arrives for a while (so the consumer pauses), then ack it all. */
    for (int round = 0; round < 200 && acked < 30; round++) {
        int seen = e.c.n;
        tms_test_spin_until(&e.loop, &e.c.n, seen + 1, 100);
        CHECK(e.c.n - acked <= 5); /* max_inflight, plus one already in flight */
        for (; next < e.c.n && next < MAX_HELD; next++) {
            tms_delivery_t *d = e.c.held[next];
            snprintf(payload, sizeof(payload), "e%d", next);
            CHECK_EQ_STR(d->payload, payload);
            e.bus->ack(e.bus, &e.c.held[next], tms_ack_ok());
            acked++;
        }
    }
    CHECK_EQ_INT(acked, 30);
    CHECK_EQ_INT(e.c.n, 30);
    e.c.ack_on = e.bus; /* none expected: counted in c.late, checked after the close */
    flow_env_teardown(&e);
    /* every event once: no delivery after the last ack (the mailbox's free delivers
     * nothing more) */
    CHECK_EQ_INT(e.c.late, 0);
}

/* Acks every delivery held, checking they came in order ("e0", "e1", ...). */
static void ack_held_in_order(tms_event_bus_t *bus, consumer_t *c, int *acked)
{
    for (; *acked < c->n && *acked < MAX_HELD; (*acked)++) {
        char payload[16];
        snprintf(payload, sizeof(payload), "e%d", *acked);
        CHECK_EQ_STR(c->held[*acked]->payload, payload); /* in order, none twice */
        bus->ack(bus, &c->held[*acked], tms_ack_ok());
    }
}

/* Seconds until a delivery after the first `held` comes (5 s at most); *slowest keeps
 * the longest wait seen. */
static void time_next_delivery(uv_loop_t *loop, consumer_t *c, int held, double *slowest)
{
    uint64_t t0 = uv_hrtime();
    CHECK(tms_test_spin_until(loop, &c->n, held + 1, 5000));
    double took = (double)(uv_hrtime() - t0) / 1e9;
    if (took > *slowest)
        *slowest = took;
}

/* Before the close: acks every delivery still held (the first `acked` are done) and what
 * comes in the next 300 ms. More of the events come after these acks, and a delivery the
 * consumer still holds keeps the bus's close waiting (busy): the resume test hung when one
 * arrived after them (now and then, beside other tests). 300 ms is long enough for some
 * to come every time. */
static void flow_env_hand_back(flow_env_t *e, int acked)
{
    e->c.ack_on = e->bus;
    while (acked < e->c.n && acked < MAX_HELD)
        e->bus->ack(e->bus, &e->c.held[acked++], tms_ack_ok());
    tms_test_spin(&e->loop, 300);
}

/* A consumer behind (at max_inflight, handing deliveries back promptly) takes what
 * librdkafka already fetched, without asking the broker again. It used to pause its
 * partitions at max_inflight, which made librdkafka drop what it held, and each resume
 * fetched it again: behind a notifier the broker sent each event many times. Here the
 * broker answers only after 800 ms once all 40 events are fetched; three rounds of
 * "hand back what is held" must each bring the next delivery well before that. */
static void test_behind_takes_what_was_fetched(void)
{
    flow_env_t e;
    int acked = 0;
    double slowest = 0;
    flow_env_setup(&e, "t9", "g9", 40);
    CHECK(tms_test_spin_until(&e.loop, &e.c.n, 4, 15000));
    tms_test_spin(&e.loop, 300); /* the one fetch of all 40 is in */
    CHECK_EQ_INT(e.c.n, 4);      /* max_inflight */
    rd_kafka_mock_broker_set_rtt(e.m.mc, 1, 800);
    for (int round = 0; round < 3; round++) {
        int held = e.c.n;
        ack_held_in_order(e.bus, &e.c, &acked);
        time_next_delivery(&e.loop, &e.c, held, &slowest);
        tms_test_spin(&e.loop, 50);
        CHECK(e.c.n - acked <= 4); /* still no more than max_inflight held */
    }
    CHECK_EQ_INT(counter("tms_kafka_consumer_flow_pauses_total", "topic=\"t9\",group=\"g9\""), 0);
    if (slowest >= 0.2)
        fprintf(stderr, "slowest delivery behind flow control: %.3f s\n", slowest);
    CHECK(slowest < 0.2);
    rd_kafka_mock_broker_set_rtt(e.m.mc, 1, 0);
    flow_env_hand_back(&e, acked);
    flow_env_teardown(&e);
}

/* A consumer that resumes after a long flow-control pause (max_inflight held for over
 * a second: the partitions are paused and librdkafka drops what it fetched) fetches at
 * once. librdkafka (2.0) does not wake its broker thread on a resume, so the partition
 * used to wait for that thread's next idle wake-up (up to fetch.wait.max.ms, 500 ms,
 * and more): with a mailer taking its events promptly, the notifier then got
 * max_inflight events a second (64 mails/s behind a Kafka bus in the bench). Here: hold
 * max_inflight deliveries until the consumer has paused (counted), hand them back, and
 * time the next delivery, three times. */
static void test_resume_fetches_without_waiting(void)
{
    flow_env_t e;
    int acked = 0;
    double slowest = 0;
    flow_env_setup(&e, "t8", "g8", 40);
    CHECK(tms_test_spin_until(&e.loop, &e.c.n, 1, 15000));
    for (int round = 0; round < 3; round++) {
        int held;
        tms_test_spin(&e.loop, 2200); /* paused, its fetched messages dropped */
        CHECK_EQ_INT(counter("tms_kafka_consumer_flow_pauses_total", "topic=\"t8\",group=\"g8\""),
                     round + 1);
        held = e.c.n;
        CHECK(held < 40);
        ack_held_in_order(e.bus, &e.c, &acked); /* in order across the pause; resumes */
        time_next_delivery(&e.loop, &e.c, held, &slowest);
    }
    if (slowest >= 0.25)
        fprintf(stderr, "slowest delivery after a resume: %.3f s\n", slowest);
    CHECK(slowest < 0.25);
    /* The acks resume the consumer, and more of the 40 events come. */
    flow_env_hand_back(&e, acked);
    flow_env_teardown(&e);
}

static void test_publish_fails_while_broker_down(void)
{
    uv_loop_t loop;
    mock_t m;
    tms_event_bus_t *bus;
    result_t r = {0, 0};
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t4", 1, 1);
    bus = bus_new(&loop, &m, 5);
    publish_ok(&loop, bus, "t4", "k", "before");
    rd_kafka_mock_broker_set_down(m.mc, 1);
    CHECK_EQ_INT(bus->publish(bus, "t4", "k", "during", 6, on_done, &r), 0);
    CHECK(tms_test_spin_until(&loop, &r.calls, 1, 10000));
    CHECK(r.status < 0); /* publish_timeout_ms (2 s) passed: the outbox keeps it */
    rd_kafka_mock_broker_set_up(m.mc, 1);
    /* Back within one publish timeout: the producer's reconnect back-off is capped at
     * 1 s (librdkafka's default, 10 s, failed this under load). */
    publish_ok(&loop, bus, "t4", "k", "after");
    bus_finish(&loop, &bus);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

/* A dependency is down: the first failure pauses the consumer; the events after the
 * failing one are not handed out; the failing one comes back as a probe, never as a
 * new attempt, however many times and however long (past max.poll.interval.ms: the
 * consumer must stay in its group); when a probe is handled the others follow in
 * order. Nothing is dead-lettered. */
static void test_transient_pauses_without_attempts(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0};
    tms_event_bus_t *bus;
    char err[256];
    int probes = 0, others_before = 0;
    uint64_t start;
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t6", 1, 1);
    rd_kafka_mock_topic_create(m.mc, "t6.dlq", 1, 1);
    kafka = tms_kafka_bus_new(&loop,
                              &(tms_kafka_options_t){.brokers = m.brokers,
                                                     .dlq_after = 2,
                                                     .retry_ms = 20,
                                                     .publish_timeout_ms = 2000,
                                                     .max_poll_interval_ms = 10000},
                              err, sizeof(err));
    CHECK(kafka != NULL);
    bus = tms_kafka_bus_port(kafka);
    publish_ok(&loop, bus, "t6", "k", "e0");
    publish_ok(&loop, bus, "t6", "k", "e1");
    publish_ok(&loop, bus, "t6", "k", "e2");
    c.mailbox = tms_mailbox_new(&loop, "c", 64, on_delivery, &c);
    CHECK_EQ_INT(bus->subscribe(bus, "t6", "g6", c.mailbox), 0);
    CHECK(tms_test_spin_until(&loop, &c.n, 1, 15000));
    start = uv_now(&loop);
    /* Fail whatever arrives for 11 s (max.poll.interval.ms is 10 s). */
    for (int next = 0; uv_now(&loop) - start < 11000 && next < MAX_HELD - 4;) {
        tms_test_spin_until(&loop, &c.n, next + 1, 200);
        for (; next < c.n && next < MAX_HELD - 4; next++) {
            tms_delivery_t *d = c.held[next];
            CHECK_EQ_INT(d->attempt, 1);
            if (strcmp(d->payload, "e0") == 0)
                probes++;
            else
                others_before += probes <= 1 ? 1 : 100; /* only before the pause held */
            bus->ack(bus, &c.held[next], tms_ack_transient("smtp", "circuit open", 0));
        }
    }
    CHECK(probes >= 4);
    CHECK(others_before <= 2);
    CHECK_EQ_INT(counter("tms_kafka_consumer_pauses_total", "topic=\"t6\",group=\"g6\""), 1);
    CHECK_EQ_INT(counter("tms_kafka_dead_lettered_total", "topic=\"t6\",group=\"g6\""), 0);
    CHECK_EQ_INT(counter("tms_kafka_partitions_revoked_total", "topic=\"t6\",group=\"g6\""), 0);
    /* The dependency is back: the next probe is handled, the rest follow in order. */
    {
        int i = c.n, got = 0;
        for (int round = 0; round < 200 && got < 3; round++) {
            tms_test_spin_until(&loop, &c.n, i + 1, 50);
            for (; i < c.n && i < MAX_HELD && got < 3; i++, got++) {
                char name[16];
                snprintf(name, sizeof(name), "e%d", got);
                CHECK_EQ_STR(c.held[i]->payload, name);
                CHECK_EQ_INT(c.held[i]->attempt, 1);
                bus->ack(bus, &c.held[i], tms_ack_ok());
            }
        }
        CHECK_EQ_INT(got, 3);
    }
    c.ack_on = bus; /* none expected: counted in c.late, checked after the close */
    bus_finish(&loop, &bus);
    CHECK_EQ_INT(c.late, 0); /* every event once: no delivery after the last ack */
    tms_mailbox_free(&c.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

/* librdkafka keeps a partition paused across a revoke and a new assign. A consumer
 * that held max_inflight deliveries (paused) when the broker went away for longer
 * than the session, and handled them after its partitions were revoked, must fetch
 * again once they are assigned back (the old code resumed an empty assignment and
 * stayed paused for good). */
static void test_paused_consumer_fetches_after_reassign(void)
{
    flow_env_t e;
    bool seen[10] = {false};
    int distinct = 0;
    flow_env_setup(&e, "t7", "g7", 10);
    CHECK(tms_test_spin_until(&e.loop, &e.c.n, 4, 15000));
    tms_test_spin(&e.loop, 300);
    CHECK_EQ_INT(e.c.n, 4); /* takes no more at max_inflight (and pauses a second later) */
    rd_kafka_mock_broker_set_down(e.m.mc, 1);
    for (int i = 0; i < 300; i++) {
        if (counter("tms_kafka_partitions_revoked_total", "topic=\"t7\",group=\"g7\"") >= 1)
            break;
        tms_test_spin(&e.loop, 100);
    }
    CHECK(counter("tms_kafka_partitions_revoked_total", "topic=\"t7\",group=\"g7\"") >= 1);
    for (int i = 0; i < 4; i++) /* handled after the revoke */
        e.bus->ack(e.bus, &e.c.held[i], tms_ack_ok());
    rd_kafka_mock_broker_set_up(e.m.mc, 1);
    /* Assigned again: every event comes (again), from the committed offset. */
    for (int next = 4, round = 0; round < 300 && distinct < 10; round++) {
        tms_test_spin_until(&e.loop, &e.c.n, next + 1, 100);
        for (; next < e.c.n && next < MAX_HELD; next++) {
            int i = atoi(e.c.held[next]->payload + 1);
            if (i >= 0 && i < 10 && !seen[i]) {
                seen[i] = true;
                distinct++;
            }
            e.bus->ack(e.bus, &e.c.held[next], tms_ack_ok());
        }
    }
    CHECK_EQ_INT(distinct, 10);
    e.c.ack_on = e.bus; /* "every event comes (again)": a redelivery may still be on its way */
    flow_env_teardown(&e);
}

/* A consumer at max_inflight whose partitions are revoked (a rebalance) and which then
 * drops the deliveries it held unhandled (their free_fn, as a freed mailbox does) holds
 * nothing any more: busy() is 0, it fetches again once its partition is assigned back,
 * and its bus closes. The drop of a revoked delivery used to leave it counted as held:
 * at max_inflight the consumer took nothing after the reassign, and the close waited
 * for good. */
static void test_dropped_after_revoke_frees_the_hold(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0};
    tms_event_bus_t *bus;
    bool seen[10] = {false};
    int distinct = 0;
    size_t left;
    uv_loop_init(&loop);
    mock_start(&m);
    bus = flow_bus_with_events(&loop, &m, "t10", 10);
    c.mailbox = tms_mailbox_new(&loop, "c", 64, on_delivery, &c);
    CHECK_EQ_INT(bus->subscribe(bus, "t10", "g10", c.mailbox), 0);
    CHECK(tms_test_spin_until(&loop, &c.n, 4, 15000));
    tms_test_spin(&loop, 300);
    CHECK_EQ_INT(c.n, 4); /* max_inflight */
    /* The group rebalances (the next heartbeat hears so): the partition is revoked from
     * the consumer, which joins again and gets it back a rebalance delay later. */
    rd_kafka_mock_push_request_errors(m.mc, API_HEARTBEAT, 1,
                                      RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS);
    for (int i = 0; i < 100; i++) {
        if (counter("tms_kafka_partitions_revoked_total", "topic=\"t10\",group=\"g10\"") >= 1)
            break;
        tms_test_spin(&loop, 100);
    }
    CHECK(counter("tms_kafka_partitions_revoked_total", "topic=\"t10\",group=\"g10\"") >= 1);
    for (int i = 0; i < 4; i++) { /* dropped unhandled after the revoke */
        if (c.held[i])
            c.held[i]->msg.free_fn(&c.held[i]->msg);
        c.held[i] = NULL;
    }
    left = bus->busy(bus); /* nothing held, owned or publishing */
    CHECK_EQ_INT(left, 0);
    /* Assigned again: every event comes (again), from the committed offset. */
    for (int next = 4, round = 0; round < 200 && distinct < 10; round++) {
        tms_test_spin_until(&loop, &c.n, next + 1, 100);
        for (; next < c.n && next < MAX_HELD; next++) {
            int i = atoi(c.held[next]->payload + 1);
            if (i >= 0 && i < 10 && !seen[i]) {
                seen[i] = true;
                distinct++;
            }
            bus->ack(bus, &c.held[next], tms_ack_ok());
        }
    }
    CHECK_EQ_INT(distinct, 10);
    if (left != 0) {
        /* Deliveries counted as held that nobody can hand back: the close would wait
         * for good, so the failed test leaves the bus, its loop and the mock as they are. */
        fprintf(stderr, "test_dropped_after_revoke_frees_the_hold: bus left open\n");
        return;
    }
    c.ack_on = bus; /* a redelivery may still be on its way */
    bus_finish(&loop, &bus);
    tms_mailbox_free(&c.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

/* While a dependency is down, a probe that the subscriber drops unhandled told nothing:
 * the next waiting event goes out as a probe after the probe wait, and once that one is
 * handled the rest follow. The consumer used to wait for the dropped probe's answer,
 * paused for good. */
static void test_dropped_probe_is_followed_by_another(void)
{
    uv_loop_t loop;
    mock_t m;
    consumer_t c = {0};
    tms_event_bus_t *bus;
    int next = 0, e0_seen = 0, dropped = 0, got = 0;
    uv_loop_init(&loop);
    mock_start(&m);
    rd_kafka_mock_topic_create(m.mc, "t11", 1, 1);
    bus = bus_new(&loop, &m, 5);
    publish_ok(&loop, bus, "t11", "k", "e0");
    publish_ok(&loop, bus, "t11", "k", "e1");
    publish_ok(&loop, bus, "t11", "k", "e2");
    c.mailbox = tms_mailbox_new(&loop, "c", 64, on_delivery, &c);
    CHECK_EQ_INT(bus->subscribe(bus, "t11", "g11", c.mailbox), 0);
    CHECK(tms_test_spin_until(&loop, &c.n, 1, 15000));
    /* e0 fails for a dependency (the consumer pauses), and so does what came with it;
     * the probe (e0 again) is dropped; then e1 and e2 come, in order, and are handled. */
    for (int round = 0; round < 100 && got < 2; round++) {
        tms_test_spin_until(&loop, &c.n, next + 1, 50);
        for (; next < c.n && next < MAX_HELD; next++) {
            tms_delivery_t *d = c.held[next];
            if (strcmp(d->payload, "e0") == 0 && e0_seen++) {
                d->msg.free_fn(&d->msg);
                c.held[next] = NULL;
                dropped++;
            } else if (!dropped) {
                bus->ack(bus, &c.held[next], tms_ack_transient("smtp", "circuit open", 0));
            } else {
                char name[16];
                snprintf(name, sizeof(name), "e%d", ++got);
                CHECK_EQ_STR(d->payload, name);
                CHECK_EQ_INT(d->attempt, 1);
                bus->ack(bus, &c.held[next], tms_ack_ok());
            }
        }
    }
    CHECK_EQ_INT(dropped, 1);
    CHECK_EQ_INT(got, 2);
    c.ack_on = bus; /* none expected: counted in c.late, checked after the close */
    bus_finish(&loop, &bus);
    CHECK_EQ_INT(c.late, 0);
    tms_mailbox_free(&c.mailbox);
    uv_run(&loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&loop), 0);
    mock_stop(&m);
}

int main(void)
{
    RUN_TEST(test_publish_consume_ack);
    RUN_TEST(test_nack_retries_then_dead_letters_without_stalling);
    RUN_TEST(test_unacked_event_goes_to_next_consumer);
    RUN_TEST(test_pause_resume_loses_nothing);
    RUN_TEST(test_behind_takes_what_was_fetched);
    RUN_TEST(test_resume_fetches_without_waiting);
    RUN_TEST(test_publish_fails_while_broker_down);
    RUN_TEST(test_transient_pauses_without_attempts);
    RUN_TEST(test_paused_consumer_fetches_after_reassign);
    RUN_TEST(test_dropped_after_revoke_frees_the_hold);
    RUN_TEST(test_dropped_probe_is_followed_by_another);
    tms_metrics_reset();
    TEST_EXIT();
}
