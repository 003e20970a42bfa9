/* The event bus port (core/event_bus.h, core/port.h) on every adapter: the local bus,
 * and Kafka, on the brokers of TMS_TEST_KAFKA_BROKERS or else on librdkafka's mock
 * cluster. A publish reaches every consumer group once, completes on the publisher's
 * loop (never inside publish), a nacked delivery is not lost, bad names are refused
 * at once, and the lifecycle: busy counts held deliveries, close refuses new work,
 * lets held deliveries be acknowledged and calls back once after them. A transient
 * failure is never an attempt and never dead-lettered however often it happens; a
 * permanent one is, after dlq_after attempts (core/event_bus.h). */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <unistd.h>

#include "core/event_bus.h"
#include "io/bus/kafka.h"
#include "io/bus/local.h"
#include "ports.h"

#define MAX_HELD 16
#define WAIT_MS 30000

typedef struct consumer {
    tms_mailbox_t *mailbox;
    tms_delivery_t *held[MAX_HELD];
    int n; /* received in total */
} consumer_t;

typedef struct result {
    int calls;
    int status;
} result_t;

static bool kafka; /* the adapter under test is Kafka */
static const char *brokers;
static rd_kafka_t *mock_rk;
static rd_kafka_mock_cluster_t *mock;
static int nbus;

static void on_delivery(void *owner, tms_msg_t *msg)
{
    consumer_t *c = owner;
    CHECK_EQ_INT(msg->op, TMS_EVENT_DELIVERY);
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

static void consumer_init(consumer_t *c, const char *name)
{
    memset(c, 0, sizeof(*c));
    c->mailbox = tms_mailbox_new(&loop, name, 64, on_delivery, c);
}

static int local_setup(void)
{
    return 0;
}

static int kafka_setup(void)
{
    char err[256];
    rd_kafka_conf_t *conf;
    kafka = true;
    brokers = getenv("TMS_TEST_KAFKA_BROKERS");
    if (brokers && brokers[0])
        return 0;
    printf("TMS_TEST_KAFKA_BROKERS not set: librdkafka's mock cluster\n");
    conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    mock_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    mock = mock_rk ? rd_kafka_mock_cluster_new(mock_rk, 1) : NULL;
    if (!mock)
        return EXIT_FAILURE;
    brokers = rd_kafka_mock_cluster_bootstraps(mock);
    return 0;
}

static void kafka_teardown(void)
{
    if (mock) {
        rd_kafka_mock_cluster_destroy(mock);
        rd_kafka_destroy(mock_rk);
    }
}

/* A fresh bus of the adapter under test. On Kafka each bus has a namespace of its own
 * (topics "<ns>.<topic>", groups "<group>.<ns>"), so no test sees another's events. */
static tms_event_bus_t *new_bus(void)
{
    static const char *const topics[] = {"conf_a", "conf_b", NULL};
    char ns[48], err[256] = "";
    tms_kafka_bus_t *kb;
    if (!kafka)
        return tms_local_bus_new_with(&loop,
                                      &(tms_local_bus_options_t){.dlq_after = 2, .retry_ms = 20});
    snprintf(ns, sizeof(ns), "conf%d_%d_%u", (int)getpid(), ++nbus,
             (unsigned)(uv_hrtime() % 100000));
    if (mock) { /* the mock cluster has no admin API: its topics are made here */
        char name[96];
        for (int i = 0; topics[i]; i++) {
            snprintf(name, sizeof(name), "%s.%s", ns, topics[i]);
            rd_kafka_mock_topic_create(mock, name, 1, 1);
        }
    }
    kb = tms_kafka_bus_new(&loop,
                           &(tms_kafka_options_t){
                               .brokers = brokers,
                               .topics = mock ? NULL : topics,
                               .partitions = 1,
                               .dlq_after = 2,
                               .retry_ms = 20,
                               .publish_timeout_ms = 10000,
                               .ns = ns,
                           },
                           err, sizeof(err));
    if (!kb) {
        fprintf(stderr, "kafka bus: %s\n", err);
        exit(EXIT_FAILURE);
    }
    return tms_kafka_bus_port(kb);
}

/* Close through the port and wait for its callback (never inside close). */
static void close_bus(tms_event_bus_t **bus)
{
    int closed = 0;
    (*bus)->close(*bus, on_closed, &closed);
    *bus = NULL;
    CHECK_EQ_INT(closed, 0);
    CHECK(spin_until(&closed, 1, WAIT_MS));
    spin(20);
    CHECK_EQ_INT(closed, 1);
}

static void publish(tms_event_bus_t *bus, const char *topic, const char *key, const char *payload,
                    result_t *r)
{
    CHECK_EQ_INT(bus->publish(bus, topic, key, payload, strlen(payload), on_done, r), 0);
    CHECK_EQ_INT(r->calls, 0); /* never inside publish */
}

static void test_publish_deliver_ack(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t c;
    result_t r = {0, 99};
    consumer_init(&c, "c");
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "g1", c.mailbox), 0);
    CHECK(bus->subscribe(bus, "conf_a", "g1", c.mailbox) < 0); /* one subscriber per group */
    publish(bus, "conf_a", "key-1", "{\"n\":1}", &r);
    CHECK(spin_until(&c.n, 1, WAIT_MS));
    if (c.n >= 1) {
        tms_delivery_t *d = c.held[0];
        CHECK_EQ_STR(d->topic, "conf_a");
        CHECK_EQ_STR(d->key, "key-1");
        CHECK_EQ_STR(d->payload, "{\"n\":1}");
        CHECK_EQ_INT(d->payload_len, 7);
        CHECK_EQ_INT(d->attempt, 1);
        CHECK(bus->busy(bus) >= 1); /* held */
        bus->ack(bus, &c.held[0], tms_ack_ok());
        CHECK(c.held[0] == NULL);
    }
    CHECK(spin_until(&r.calls, 1, WAIT_MS));
    CHECK_EQ_INT(r.calls, 1);
    CHECK_EQ_INT(r.status, 0);
    spin(50);
    CHECK_EQ_INT(r.calls, 1); /* exactly once */
    CHECK_EQ_INT(c.n, 1);     /* an acknowledged event does not come again */
    close_bus(&bus);
    tms_mailbox_free(&c.mailbox);
}

static void test_every_group_gets_a_copy(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t a, b, other;
    result_t r = {0, 99};
    consumer_init(&a, "a");
    consumer_init(&b, "b");
    consumer_init(&other, "other");
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "ga", a.mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "gb", b.mailbox), 0);
    CHECK_EQ_INT(bus->subscribe(bus, "conf_b", "gother", other.mailbox), 0);
    publish(bus, "conf_a", "k", "{}", &r);
    CHECK(spin_until(&a.n, 1, WAIT_MS));
    CHECK(spin_until(&b.n, 1, WAIT_MS));
    if (a.n && b.n)
        CHECK(a.held[0] != b.held[0]); /* each its own copy */
    for (int i = 0; i < a.n && i < MAX_HELD; i++)
        bus->ack(bus, &a.held[i], tms_ack_ok());
    for (int i = 0; i < b.n && i < MAX_HELD; i++)
        bus->ack(bus, &b.held[i], tms_ack_ok());
    CHECK(spin_until(&r.calls, 1, WAIT_MS));
    CHECK_EQ_INT(r.status, 0);
    spin(50);
    CHECK_EQ_INT(a.n, 1);
    CHECK_EQ_INT(b.n, 1);
    CHECK_EQ_INT(other.n, 0); /* another topic */
    close_bus(&bus);
    tms_mailbox_free(&a.mailbox);
    tms_mailbox_free(&b.mailbox);
    tms_mailbox_free(&other.mailbox);
}

/* At least once: a delivery acknowledged as not handled comes again, or its publish
 * reports the failure (and the outbox keeps the event). */
static void test_nack_is_not_lost(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t c;
    result_t r = {0, 99};
    int again = 0;
    consumer_init(&c, "c");
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "g1", c.mailbox), 0);
    publish(bus, "conf_a", "k", "{\"n\":2}", &r);
    CHECK(spin_until(&c.n, 1, WAIT_MS));
    if (c.n >= 1)
        bus->ack(bus, &c.held[0], tms_ack_permanent("test"));
    for (int i = 0; i < WAIT_MS / 50 && c.n < 2 && !(r.calls && r.status != 0); i++)
        spin(50);
    if (c.n >= 2) { /* redelivered */
        CHECK_EQ_STR(c.held[1]->payload, "{\"n\":2}");
        CHECK_EQ_INT(c.held[1]->attempt, 2);
        bus->ack(bus, &c.held[1], tms_ack_ok());
        again = 1;
    } else {
        CHECK_EQ_INT(r.calls, 1);
        CHECK(r.status < 0); /* the publisher learns, and tries again later */
    }
    CHECK(again || r.calls == 1);
    spin_until(&r.calls, 1, WAIT_MS);
    close_bus(&bus);
    tms_mailbox_free(&c.mailbox);
}

/* A dependency down: however many times the event fails transiently (more than
 * dlq_after), it comes again as its first attempt (the bus redelivers it as a probe,
 * or fails its publish so that the publisher, as the relay would, publishes it
 * again), and once handled it is done, never dead-lettered. */
static void test_transient_is_no_attempt(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t c;
    result_t r = {0, 99};
    int failures = 0;
    uint64_t dead0 = tms_counter_value(
        tms_metrics_counter(kafka ? "tms_kafka_dead_lettered_total" : "tms_bus_dead_lettered_total",
                            "", kafka ? "" : "topic=\"conf_a\",group=\"gt\""));
    consumer_init(&c, "c");
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "gt", c.mailbox), 0);
    publish(bus, "conf_a", "k", "{\"n\":4}", &r);
    for (int i = 0; i < WAIT_MS / 20 && failures < 4; i++) {
        spin(20);
        if (r.calls && r.status != 0) { /* refused: the publisher tries again later */
            r = (result_t){0, 99};
            publish(bus, "conf_a", "k", "{\"n\":4}", &r);
        }
        if (c.n > failures && c.held[failures]) {
            CHECK_EQ_STR(c.held[failures]->payload, "{\"n\":4}");
            CHECK_EQ_INT(c.held[failures]->attempt, 1);
            bus->ack(bus, &c.held[failures], tms_ack_transient("test", "down", 0));
            failures++;
        }
    }
    CHECK_EQ_INT(failures, 4);
    for (int i = 0; i < WAIT_MS / 20 && c.n <= failures; i++) { /* back: handled */
        spin(20);
        if (r.calls && r.status != 0) {
            r = (result_t){0, 99};
            publish(bus, "conf_a", "k", "{\"n\":4}", &r);
        }
    }
    if (c.n > failures && c.held[failures]) {
        CHECK_EQ_INT(c.held[failures]->attempt, 1);
        bus->ack(bus, &c.held[failures], tms_ack_ok());
    }
    CHECK(spin_until(&r.calls, 1, WAIT_MS));
    CHECK_EQ_INT(r.status, 0);
    spin(100);
    CHECK_EQ_INT(c.n, failures + 1);                 /* not again */
    if (!kafka || !getenv("TMS_TEST_KAFKA_BROKERS")) /* a shared broker's counter moves */
        CHECK_EQ_INT(tms_counter_value(tms_metrics_counter(
                         kafka ? "tms_kafka_dead_lettered_total" : "tms_bus_dead_lettered_total",
                         "", kafka ? "" : "topic=\"conf_a\",group=\"gt\"")) -
                         dead0,
                     0);
    close_bus(&bus);
    tms_mailbox_free(&c.mailbox);
}

static void test_refused_at_once(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t c;
    result_t bad = {0, 0};
    consumer_init(&c, "c");
    CHECK_EQ_INT(bus->publish(bus, "bad topic", "k", "x", 1, on_done, &bad), -TMS_EINVAL);
    CHECK_EQ_INT(bus->subscribe(bus, "bad topic", "g", c.mailbox), -TMS_EINVAL);
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "bad group", c.mailbox), -TMS_EINVAL);
    spin(50);
    CHECK_EQ_INT(bad.calls, 0); /* refused at once: done never follows */
    CHECK_EQ_INT(bus->busy(bus), 0);
    close_bus(&bus);
    tms_mailbox_free(&c.mailbox);
}

static void test_lifecycle(void)
{
    tms_event_bus_t *bus = new_bus();
    consumer_t c;
    result_t r = {0, 99}, late = {0, 0};
    int closed = 0;
    consumer_init(&c, "c");
    CHECK_EQ_INT(bus->subscribe(bus, "conf_a", "g1", c.mailbox), 0);
    publish(bus, "conf_a", "k", "{\"n\":3}", &r);
    CHECK(spin_until(&c.n, 1, WAIT_MS));
    CHECK(bus->busy(bus) >= 1);

    bus->close(bus, on_closed, &closed);
    CHECK_EQ_INT(closed, 0); /* never inside close */
    CHECK_EQ_INT(bus->publish(bus, "conf_a", "k", "x", 1, on_done, &late), -TMS_ECLOSED);
    CHECK_EQ_INT(bus->subscribe(bus, "conf_b", "g2", c.mailbox), -TMS_ECLOSED);
    spin(200);
    CHECK_EQ_INT(closed, 0); /* a delivery is still held */
    if (c.n >= 1)
        bus->ack(bus, &c.held[0], tms_ack_ok()); /* still acknowledged while closing */
    CHECK(spin_until(&closed, 1, WAIT_MS));
    CHECK_EQ_INT(r.calls, 1); /* the publish was done before the callback */
    CHECK_EQ_INT(r.status, 0);
    spin(20);
    CHECK_EQ_INT(closed, 1);
    CHECK_EQ_INT(late.calls, 0);
    tms_mailbox_free(&c.mailbox);
}

static void tests(const adapter_t *a)
{
    kafka = strcmp(a->name, "kafka") == 0;
    RUN_TEST(test_publish_deliver_ack);
    RUN_TEST(test_every_group_gets_a_copy);
    RUN_TEST(test_nack_is_not_lost);
    RUN_TEST(test_transient_is_no_attempt);
    RUN_TEST(test_refused_at_once);
    RUN_TEST(test_lifecycle);
}

static const adapter_t adapters[] = {
    {"local", local_setup, NULL},
    {"kafka", kafka_setup, kafka_teardown},
};

int main(int argc, char **argv)
{
    return run_suite("event_bus", adapters, sizeof(adapters) / sizeof(adapters[0]), argc, argv,
                     tests);
}
