/* Kafka event bus on librdkafka. Every librdkafka queue we read (the producer's
 * main queue: delivery reports, admin results, errors, stats; each consumer's
 * queue: messages, rebalances) signals through a non-blocking pipe watched by
 * uv_poll, and is then served with zero timeouts, so the loop never waits
 * inside librdkafka except in free (purging what is left at shutdown).
 *
 * A consumed message becomes an entry: the delivery handed to the subscriber's
 * mailbox, kept in its partition's list in offset order until it is handled.
 * The stored offset (committed by librdkafka's auto-commit) advances only over
 * handled entries at the head of that list. Costs: a take and an ack are O(1)
 * amortised; the retry list is O(n) in entries waiting for a redelivery (a few,
 * normally); a resume after a pause is O(entries waiting).
 *
 * Pausing (core/event_bus.h): a transient failure pauses every partition of the
 * consumer (rd_kafka_pause_partitions); the event and those that come back after it
 * wait in their partitions' lists (state WAIT: not an attempt, never committed over)
 * until a probe is due, then the oldest goes out alone; handled, the others follow
 * and the partitions resume. Paused partitions fetch nothing, so their high
 * watermarks (for the lag gauges) are asked for on libuv's thread pool meanwhile. */
#include "io/bus/kafka.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>
#include <uv.h>

#include <librdkafka/rdkafka.h>
#include <sodium.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"

#define HOUSEKEEPING_MS 500
#define FETCH_WAIT_MS "100" /* longest a consumer's idle fetch waits at the broker */
#define ADMIN_RETRY_MS 5000
#define RETRY_MAX_MS 30000
#define PROBE_MAX_MS 5000       /* probe back-off cap while paused */
#define WATERMARK_EVERY_MS 2000 /* high watermarks of paused partitions, asked this often */
/* Held at max_inflight this long: pause the partitions (librdkafka drops what it had
 * fetched for them) rather than keep the fetched events waiting in its queue. Checked
 * by the housekeeping tick, so the pause comes 1.0 to 1.5 s after max_inflight. */
#define FLOW_PAUSE_MS 1000
#define MAX_TOPICS 16

typedef struct tms_kafka_bus kbus_t;
typedef struct sub sub_t;
typedef struct part part_t;

typedef enum entry_state {
    HELD = 1,  /* in the subscriber's mailbox or handler */
    RETRY,     /* waiting in the retry list for a redelivery */
    DLQ,       /* being produced to the dead-letter topic */
    DLQ_RETRY, /* that failed; waiting in the retry list to try again */
    DONE,      /* handled (or dead-lettered); waits for earlier offsets */
    DROPPED,   /* its mailbox was freed unhandled: blocks the offset forever */
    WAIT,      /* failed transiently: waits, unheld, for the consumer to resume */
} entry_state_t;

typedef struct entry {
    tms_delivery_t d;          /* first member, so the message casts */
    struct entry *prev, *next; /* part->head list, offset order */
    struct entry *retry_next;
    part_t *part; /* NULL once orphaned (revoked, or the bus is gone) */
    sub_t *sub;   /* NULL once the bus is gone */
    int32_t partition;
    int64_t offset;
    entry_state_t state;
    int bump; /* the next redelivery is a new attempt (not a full-mailbox retry)
               */
    uint64_t due;
    char reason[160]; /* of the last permanent failure: the dead letter's tms.reason */
} entry_t;

struct part {
    part_t *next;
    int32_t partition;
    int64_t next_take; /* first offset not yet taken; -1 before the first */
    int64_t sought;    /* the offset of our last seek; -1 none */
    int64_t stored;    /* next offset to consume as stored for commit; -1 none */
    int64_t hi;        /* high watermark last asked for (paused: no fetch updates it) */
    int64_t committed; /* where the group stands (its committed offset, or the log start
                        * when it has none), last asked for; -1 unknown */
    entry_t *head, *tail;
    _Atomic int64_t lag; /* its gauge, tms_kafka_consumer_lag{...,partition} */
};

struct sub {
    sub_t *next;
    kbus_t *bus;
    char topic[64], group[64]; /* as in Kafka (with the namespace) */
    char role_topic[64];       /* as the subscriber named it: what deliveries carry */
    tms_mailbox_t *mailbox;
    rd_kafka_t *rk;
    rd_kafka_queue_t *queue;
    int fds[2];
    uv_poll_t poll;
    part_t *parts;
    entry_t *retries;
    size_t inflight; /* HELD entries */
    size_t owned;    /* RETRY, DLQ, DLQ_RETRY entries */
    size_t waiting;  /* WAIT entries */
    int started, closing, closed;
    int flow_paused;     /* holding max_inflight deliveries: takes nothing more */
    int flow_long;       /* ... for FLOW_PAUSE_MS: the partitions are paused too */
    uint64_t flow_since; /* uv_now when flow_paused was set */
    int kpaused;         /* what librdkafka was last told for the assigned partitions */
    /* paused while a dependency is down */
    int dep_paused;
    char dependency[32];
    uint64_t paused_at, probe_due; /* uv_now */
    int probes;                    /* failed probes of this pause */
    entry_t *probe;                /* the probe out, if any */
    /* watermark queries of paused partitions (thread pool) */
    int querying;
    uint64_t queried_at;
    _Atomic int nparts_paused;
    _Atomic uint64_t paused_since_ns, paused_total_ns;
    tms_counter_t *delivered, *retried, *dead, *revoked, *pauses, *flow_pauses;
};

typedef struct pub {
    tms_publish_done_fn done;
    void *ctx;
    entry_t *entry; /* a dead-letter publish: its entry */
} pub_t;

struct tms_kafka_bus {
    tms_event_bus_t base; /* first member */
    uv_loop_t *loop;
    tms_kafka_options_t opt;
    char *brokers, *client_id, *ns;
    char *security[4]; /* security.protocol, ssl.ca/certificate/key.location ("": unset) */
    char *topics[MAX_TOPICS];
    int ntopics;
    /* the producer's handles of topics[] and, at MAX_TOPICS + i, of the .dlq of those
     * consumed here (see warm_topics) */
    rd_kafka_topic_t *warm[MAX_TOPICS * 2];
    rd_kafka_t *producer;
    rd_kafka_queue_t *main_q;
    int fds[2];
    uv_poll_t poll;
    uv_timer_t housekeeping, retry_timer;
    uv_timer_t close_timer; /* closing and idle: free on the next turn */
    tms_port_closed_fn closed_cb;
    void *closed_ctx;
    uint64_t retry_due; /* when retry_timer fires; 0 idle */
    sub_t *subs;
    size_t outstanding; /* publishes awaiting their delivery report */
    int handles;        /* uv handles not yet closed */
    int topics_ready, admin_pending, stopping, closing, freeing;
    int topics_created; /* CreateTopics succeeded: topics[] and their .dlq exist */
    int queries;        /* watermark queries on the thread pool */
    _Atomic int reachable;
    uint64_t admin_retry_at;
    tms_counter_t *published, *publish_failed;
};

static void post_entry(sub_t *s, entry_t *e);
static void maybe_closed(kbus_t *bus);
static size_t busy(tms_event_bus_t *self);
static void bus_close(tms_event_bus_t *self, tms_port_closed_fn cb, void *ctx);
static void to_dlq(entry_t *e);
static void start_consumer(sub_t *s);
static void check_close(sub_t *s);
static void apply_pause(sub_t *s);
static void resume_dep(sub_t *s);
static void send_probe(sub_t *s);

/* ---- small helpers ---------------------------------------------------------
 */

static int set(rd_kafka_conf_t *conf, const char *key, const char *value, char *err, size_t len)
{
    if (rd_kafka_conf_set(conf, key, value, err, len) != RD_KAFKA_CONF_OK)
        return -TMS_EINVAL;
    return 0;
}

/* TLS to the brokers (events.security_protocol and events.tls_*): librdkafka checks
 * the brokers' certificates and host names itself (ssl.endpoint.identification). */
static int set_security(const kbus_t *bus, rd_kafka_conf_t *conf, char *err, size_t len)
{
    static const char *const keys[] = {"security.protocol", "ssl.ca.location",
                                       "ssl.certificate.location", "ssl.key.location"};
    for (int i = 0; i < 4; i++) {
        if (bus->security[i][0] && set(conf, keys[i], bus->security[i], err, len))
            return -TMS_EINVAL;
    }
    return 0;
}

/* librdkafka logs from its own threads; tms_log is thread-safe. Notices and
 * below are noise for an operator (reconnects are visible in the error events).
 */
static void on_rdkafka_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    char q[512];
    (void)rk;
    /* FAIL (connection failures) also arrives as an error event, logged there. */
    if (level > LOG_WARNING || strcmp(fac, "FAIL") == 0)
        return;
    tms_log(level <= LOG_ERR ? TMS_LOG_ERROR : TMS_LOG_WARN, "kafka_log", "facility=%s msg=%s", fac,
            tms_log_quote(q, sizeof(q), buf, strlen(buf)));
}

static int make_pipe(int fds[2])
{
    if (pipe(fds) != 0)
        return -TMS_EIO;
    for (int i = 0; i < 2; i++) {
        if (fcntl(fds[i], F_SETFL, O_NONBLOCK) != 0 || fcntl(fds[i], F_SETFD, FD_CLOEXEC) != 0) {
            close(fds[0]);
            close(fds[1]);
            return -TMS_EIO;
        }
    }
    return 0;
}

static void drain_pipe(int fd)
{
    char buf[256];
    while (read(fd, buf, sizeof(buf)) > 0) {
    }
}

static void handle_gone(kbus_t *bus)
{
    if (--bus->handles == 0) {
        tms_port_closed_fn cb = bus->closed_cb;
        void *ctx = bus->closed_ctx;
        for (int i = 0; i < bus->ntopics; i++)
            free(bus->topics[i]);
        free(bus->brokers);
        for (int i = 0; i < 4; i++)
            free(bus->security[i]);
        free(bus->client_id);
        free(bus->ns);
        free(bus);
        if (cb)
            cb(ctx);
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    handle_gone(h->data);
}

/* A consumer's poll handle points at its sub, which lives until the handle
 * closes. */
static void on_sub_closed(uv_handle_t *h)
{
    sub_t *s = h->data;
    kbus_t *bus = s->bus;
    free(s);
    handle_gone(bus);
}

static uint64_t backoff_ms(const kbus_t *bus, int attempt)
{
    uint64_t ms = (uint64_t)bus->opt.retry_ms;
    for (int i = 1; i < attempt && ms < RETRY_MAX_MS; i++)
        ms *= 2;
    return ms < RETRY_MAX_MS ? ms : RETRY_MAX_MS;
}

/* ---- entries and offsets ------------------------------------------------ */

static void entry_free(entry_t *e)
{
    free(e->d.payload);
    free(e);
}

static void unlink_entry(part_t *p, entry_t *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        p->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        p->tail = e->prev;
    e->prev = e->next = NULL;
}

/* Store the offset after the longest handled prefix of the partition;
 * librdkafka's auto-commit then commits it (and commits once more when the
 * partition is revoked). */
static void advance(sub_t *s, part_t *p)
{
    int64_t store = -1;
    while (p->head && p->head->state == DONE) {
        entry_t *e = p->head;
        store = e->offset + 1;
        unlink_entry(p, e);
        entry_free(e);
    }
    if (store < 0)
        return;
    p->stored = store;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, s->topic, p->partition)->offset = store;
    rd_kafka_resp_err_t err = rd_kafka_offsets_store(s->rk, l);
    if (err)
        tms_log_warn("kafka_offset_store_failed", "topic=%s partition=%d error=\"%s\"", s->topic,
                     (int)p->partition, rd_kafka_err2str(err));
    rd_kafka_topic_partition_list_destroy(l);
}

static void finish(entry_t *e)
{
    e->state = DONE;
    free(e->d.payload);
    e->d.payload = NULL;
    advance(e->sub, e->part);
}

static void retry_remove(sub_t *s, entry_t *e)
{
    for (entry_t **pp = &s->retries; *pp; pp = &(*pp)->retry_next) {
        if (*pp == e) {
            *pp = e->retry_next;
            e->retry_next = NULL;
            return;
        }
    }
}

static void on_retry_timer(uv_timer_t *t);

static void arm_retry_timer(kbus_t *bus, uint64_t due)
{
    if (bus->freeing)
        return;
    if (bus->retry_due && bus->retry_due <= due)
        return;
    bus->retry_due = due;
    uint64_t now = uv_now(bus->loop);
    uv_timer_start(&bus->retry_timer, on_retry_timer, due > now ? due - now : 0, 0);
}

static void schedule_retry(entry_t *e, entry_state_t state, uint64_t ms)
{
    sub_t *s = e->sub;
    if (s->bus->stopping) { /* no more redeliveries: left uncommitted (stop) */
        e->state = WAIT;
        s->waiting++;
        return;
    }
    e->state = state;
    e->due = uv_now(s->bus->loop) + ms;
    e->retry_next = s->retries;
    s->retries = e;
    s->owned++;
    arm_retry_timer(s->bus, e->due);
}

static void on_retry_timer(uv_timer_t *t)
{
    kbus_t *bus = t->data;
    uint64_t now = uv_now(bus->loop), next = 0;
    bus->retry_due = 0;
    for (sub_t *s = bus->subs; s; s = s->next) {
        entry_t *due = NULL;
        /* Take the due ones first: posting may put an entry straight back. */
        for (entry_t **pp = &s->retries; *pp;) {
            entry_t *e = *pp;
            if (e->due <= now) {
                *pp = e->retry_next;
                e->retry_next = due;
                due = e;
            } else {
                if (!next || e->due < next)
                    next = e->due;
                pp = &e->retry_next;
            }
        }
        while (due) {
            entry_t *e = due;
            due = e->retry_next;
            e->retry_next = NULL;
            s->owned--;
            if (e->state == DLQ_RETRY) {
                to_dlq(e);
            } else if (s->dep_paused) {
                /* A redelivery that comes due while paused waits with the others. */
                if (e->bump)
                    e->d.attempt++;
                e->state = WAIT;
                s->waiting++;
            } else {
                if (e->bump)
                    e->d.attempt++;
                tms_counter_add(s->retried, 1);
                post_entry(s, e);
            }
        }
        if (s->dep_paused && !s->probe && !bus->stopping) {
            if (s->probe_due <= now)
                send_probe(s);
            else if (!next || s->probe_due < next)
                next = s->probe_due;
        }
        check_close(s);
    }
    if (next)
        arm_retry_timer(bus, next);
    maybe_closed(bus);
}

/* ---- producing ------------------------------------------------------------
 */

static int produce(kbus_t *bus, const char *topic, const char *key, const char *payload, size_t len,
                   const entry_t *dead, pub_t *pub)
{
    rd_kafka_resp_err_t err;
    if (dead) {
        char part[16], off[24], att[16];
        const char *why = dead->reason[0] ? dead->reason : "failed";
        snprintf(part, sizeof(part), "%d", (int)dead->partition);
        snprintf(off, sizeof(off), "%" PRId64, dead->offset);
        snprintf(att, sizeof(att), "%d", dead->d.attempt);
        err = rd_kafka_producev(
            bus->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)payload, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADER("tms.topic", dead->sub->topic, -1),
            RD_KAFKA_V_HEADER("tms.partition", part, -1), RD_KAFKA_V_HEADER("tms.offset", off, -1),
            RD_KAFKA_V_HEADER("tms.attempts", att, -1), RD_KAFKA_V_HEADER("tms.reason", why, -1),
            RD_KAFKA_V_HEADER("tms.group", dead->sub->group, -1), RD_KAFKA_V_OPAQUE(pub),
            RD_KAFKA_V_END);
    } else {
        err = rd_kafka_producev(
            bus->producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
            RD_KAFKA_V_VALUE((void *)payload, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_OPAQUE(pub), RD_KAFKA_V_END);
    }
    if (err) {
        tms_log_warn("kafka_produce_refused", "topic=%s error=\"%s\"", topic,
                     rd_kafka_err2str(err));
        return err == RD_KAFKA_RESP_ERR__QUEUE_FULL ? -TMS_EFULL : -TMS_EIO;
    }
    bus->outstanding++;
    return 0;
}

static void on_dlq_done(void *ctx, int status)
{
    entry_t *e = ctx;
    sub_t *s = e->sub;
    s->owned--;
    if (!e->part) {
        entry_free(e);
    } else if (status == 0) {
        char q[200];
        tms_counter_add(s->dead, 1);
        tms_log_warn("event_dead_lettered",
                     "topic=%s group=%s partition=%d offset=%" PRId64 " attempts=%d reason=%s",
                     s->topic, s->group, (int)e->partition, e->offset, e->d.attempt,
                     tms_log_quote(q, sizeof(q), e->reason, strlen(e->reason)));
        finish(e);
    } else {
        schedule_retry(e, DLQ_RETRY, backoff_ms(s->bus, 3));
    }
    check_close(s);
}

static void to_dlq(entry_t *e)
{
    sub_t *s = e->sub;
    char topic[80];
    pub_t *pub = tms_new(pub_t);
    pub->done = on_dlq_done;
    pub->ctx = e;
    pub->entry = e;
    snprintf(topic, sizeof(topic), "%s.dlq", s->topic);
    e->state = DLQ;
    s->owned++;
    if (produce(s->bus, topic, e->d.key, e->d.payload, e->d.payload_len, e, pub) != 0) {
        free(pub);
        s->owned--;
        schedule_retry(e, DLQ_RETRY, backoff_ms(s->bus, 3));
    }
}

/* One report; failures are counted into *failed and logged once per batch by
 * the caller (with the broker down, every queued event times out at once). */
static void on_delivery(kbus_t *bus, const rd_kafka_message_t *m, int *failed)
{
    pub_t *pub = m->_private;
    bus->outstanding--;
    if (bus->freeing) {
        /* Publishers are gone; a dead-letter entry belongs to nobody else now. */
        if (pub->entry)
            entry_free(pub->entry);
        free(pub);
        return;
    }
    if (m->err) {
        tms_counter_add(bus->publish_failed, 1);
        if ((*failed)++ == 0)
            tms_log_warn("kafka_delivery_failed", "topic=%s error=\"%s\"",
                         rd_kafka_topic_name(m->rkt), rd_kafka_err2str(m->err));
    } else {
        tms_counter_add(bus->published, 1);
        atomic_store(&bus->reachable, 1);
    }
    pub->done(pub->ctx, m->err ? -TMS_EIO : 0);
    free(pub);
}

/* ---- topics (admin API) -------------------------------------------------- */

static void create_topics(kbus_t *bus)
{
    rd_kafka_NewTopic_t *nt[MAX_TOPICS * 2];
    size_t n = 0;
    char errstr[256], name[80];
    rd_kafka_AdminOptions_t *ao =
        rd_kafka_AdminOptions_new(bus->producer, RD_KAFKA_ADMIN_OP_CREATETOPICS);
    rd_kafka_AdminOptions_set_request_timeout(ao, 10000, errstr, sizeof(errstr));
    for (int i = 0; i < bus->ntopics; i++) {
        for (int dlq = 0; dlq < 2; dlq++) {
            snprintf(name, sizeof(name), "%s%s", bus->topics[i], dlq ? ".dlq" : "");
            nt[n] = rd_kafka_NewTopic_new(name, bus->opt.partitions, bus->opt.replication, errstr,
                                          sizeof(errstr));
            if (nt[n])
                n++;
            else
                tms_log_error("kafka_topic_invalid", "topic=%s error=\"%s\"", name, errstr);
        }
    }
    bus->admin_pending = 1;
    rd_kafka_CreateTopics(bus->producer, nt, n, ao, bus->main_q);
    rd_kafka_NewTopic_destroy_array(nt, n);
    rd_kafka_AdminOptions_destroy(ao);
}

/* librdkafka before 2.10.1 looks up the metadata of a topic first produced to only on
 * its once-a-second topic scan (librdkafka #5032), so each process's first event and
 * first push doorbell on a topic waited up to 1 s. A handle per topic, made once the
 * topics exist, asks for their metadata now; the handles live as long as the producer. */
static void warm_topics(kbus_t *bus)
{
    for (int i = 0; i < bus->ntopics; i++) {
        if (!bus->warm[i])
            bus->warm[i] = rd_kafka_topic_new(bus->producer, bus->topics[i], NULL);
    }
}

/* The same for the .dlq of a topic s consumes, where this process produces its dead
 * letters (the first one waited up to 1 s); only once CreateTopics made it, as above.
 * Called when s gets partitions: right after CreateTopics the broker may not know the
 * new topics yet (KRaft applies them a moment later), and a handle whose first lookup
 * found nothing is looked up again only at the scan. */
static void warm_dlq(kbus_t *bus, const sub_t *s)
{
    char name[80];
    if (!bus->topics_created)
        return;
    for (int i = 0; i < bus->ntopics; i++) {
        if (strcmp(bus->topics[i], s->topic) == 0 && !bus->warm[MAX_TOPICS + i]) {
            snprintf(name, sizeof(name), "%s.dlq", bus->topics[i]);
            bus->warm[MAX_TOPICS + i] = rd_kafka_topic_new(bus->producer, name, NULL);
        }
    }
}

static void unwarm_topics(kbus_t *bus)
{
    for (int i = 0; i < MAX_TOPICS * 2; i++) {
        if (bus->warm[i])
            rd_kafka_topic_destroy(bus->warm[i]);
        bus->warm[i] = NULL;
    }
}

static void on_topics_created(kbus_t *bus, rd_kafka_event_t *ev)
{
    const rd_kafka_CreateTopics_result_t *res = rd_kafka_event_CreateTopics_result(ev);
    size_t n = 0, created = 0;
    int failed = rd_kafka_event_error(ev) != 0;
    const char *why = failed ? rd_kafka_event_error_string(ev) : NULL, *which = "-";
    const rd_kafka_topic_result_t **tr = res ? rd_kafka_CreateTopics_result_topics(res, &n) : NULL;
    bus->admin_pending = 0;
    for (size_t i = 0; i < n; i++) {
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(tr[i]);
        if (err == RD_KAFKA_RESP_ERR_NO_ERROR) {
            created++;
        } else if (err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS && !failed++) {
            /* the first refused topic's own error: the event's says "Success" */
            which = rd_kafka_topic_result_name(tr[i]);
            why = rd_kafka_topic_result_error_string(tr[i]);
            if (!why || !why[0])
                why = rd_kafka_err2str(err);
        }
    }
    if (failed) {
        tms_log_warn("kafka_topics_not_created", "topic=%s error=\"%s\" retry_ms=%d", which,
                     why ? why : "", ADMIN_RETRY_MS);
        bus->admin_retry_at = uv_now(bus->loop) + ADMIN_RETRY_MS;
    } else {
        atomic_store(&bus->reachable, 1);
        tms_log_info("kafka_topics_ready", "created=%zu", created);
        /* Only topics that exist as configured: asking for the metadata of a missing
         * one would have the broker auto-create it with its own defaults. */
        bus->topics_created = 1;
        warm_topics(bus);
        for (sub_t *s = bus->subs; s; s = s->next) {
            if (s->parts) /* assigned before a retry of CreateTopics made the topics */
                warm_dlq(bus, s);
        }
    }
    /* Consumers start either way: a missing topic is found by their periodic
     * metadata refresh once something creates it (the broker may auto-create). */
    if (!bus->topics_ready) {
        bus->topics_ready = 1;
        for (sub_t *s = bus->subs; s; s = s->next)
            start_consumer(s);
    }
}

static void on_main_readable(uv_poll_t *h, int status, int events)
{
    kbus_t *bus = h->data;
    rd_kafka_event_t *ev;
    (void)status;
    (void)events;
    drain_pipe(bus->fds[0]);
    while ((ev = rd_kafka_queue_poll(bus->main_q, 0))) {
        switch (rd_kafka_event_type(ev)) {
        case RD_KAFKA_EVENT_DR: {
            const rd_kafka_message_t *m;
            int failed = 0;
            while ((m = rd_kafka_event_message_next(ev)))
                on_delivery(bus, m, &failed);
            if (failed > 1)
                tms_log_warn("kafka_deliveries_failed", "count=%d", failed);
            break;
        }
        case RD_KAFKA_EVENT_CREATETOPICS_RESULT:
            on_topics_created(bus, ev);
            break;
        case RD_KAFKA_EVENT_STATS:
            /* Any broker connection up (compact JSON: no spaces). */
            atomic_store(&bus->reachable,
                         strstr(rd_kafka_event_stats(ev), "\"state\":\"UP\"") != NULL);
            break;
        case RD_KAFKA_EVENT_ERROR:
            if (rd_kafka_event_error(ev) == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
                atomic_store(&bus->reachable, 0);
            tms_log(rd_kafka_event_error_is_fatal(ev) ? TMS_LOG_ERROR : TMS_LOG_WARN, "kafka_error",
                    "client=producer error=\"%s\"", rd_kafka_event_error_string(ev));
            break;
        default:
            break;
        }
        rd_kafka_event_destroy(ev);
    }
    maybe_closed(bus);
}

/* ---- consuming ------------------------------------------------------------
 */

static part_t *find_part(sub_t *s, int32_t partition)
{
    for (part_t *p = s->parts; p; p = p->next) {
        if (p->partition == partition)
            return p;
    }
    return NULL;
}

static rd_kafka_topic_partition_list_t *assigned_list(sub_t *s)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (part_t *p = s->parts; p; p = p->next)
        rd_kafka_topic_partition_list_add(l, s->topic, p->partition);
    return l;
}

/* Send the partition's fetcher back to the first offset we have not taken
 * (asynchronous; librdkafka drops messages fetched before the seek). */
static void seek_back(sub_t *s, part_t *p)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_error_t *err;
    rd_kafka_topic_partition_list_add(l, s->topic, p->partition)->offset = p->next_take;
    p->sought = p->next_take;
    err = rd_kafka_seek_partitions(s->rk, l, 0);
    if (err)
        rd_kafka_error_destroy(err);
    rd_kafka_topic_partition_list_destroy(l);
}

/* Whether the consumer fetches: not while a dependency is down, once the bus stops,
 * or after FLOW_PAUSE_MS at max_inflight deliveries. librdkafka resumes each partition
 * from the offset after the last message taken.
 *
 * A short spell at max_inflight (a subscriber behind, handling as fast as it can) only
 * stops taking: what librdkafka fetched meanwhile waits in its queue, bounded by
 * queued.max.messages.kbytes, and is taken as soon as there is room. Pausing there
 * made librdkafka drop those events, and each resume fetched them again: behind a
 * notifier at 1,000 mails/s and 4,000 creates/s, the broker sent each event many
 * times (docs/perf-write-path.md). While the consumer takes nothing, a rebalance waits
 * in its queue too: it is served at the next halving or the pause, 1.5 s at most. */
static int want_paused(const sub_t *s)
{
    return (s->flow_paused && s->flow_long) || s->dep_paused || s->bus->stopping;
}

/* The consumer takes what librdkafka holds on the loop's next turn: its queue writes
 * the wake-up byte only "whenever a new element is enqueued on a previously empty
 * queue" (rd_kafka_queue_io_event_enable), and events left in it keep it non-empty. */
static void wake_consumer(sub_t *s)
{
    if (write(s->fds[1], "1", 1) < 0) {
        /* full: readable anyway */
    }
}

/* A held delivery came back (handled or dropped): at half of max_inflight the consumer
 * takes again, and its partitions resume if the hold had paused them. */
static void flow_check(sub_t *s)
{
    if (s->flow_paused && s->inflight <= (size_t)s->bus->opt.max_inflight / 2) {
        s->flow_paused = s->flow_long = 0;
        apply_pause(s);
        wake_consumer(s);
    }
}

/* After a resume: seek every partition we have taken from to its next offset. A resume
 * alone does not wake librdkafka's (2.0) broker thread, so the partition waited for
 * that thread's next idle wake-up (500 ms to 1 s): behind flow control the notifier
 * then got max_inflight events a second. A seek wakes it ("seek done"), and the
 * offset is the one a resume fetches from anyway. */
static void wake_fetcher(sub_t *s)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    rd_kafka_error_t *err;
    for (part_t *p = s->parts; p; p = p->next) {
        if (p->next_take < 0)
            continue; /* nothing taken: librdkafka looks its offset up, and wakes */
        rd_kafka_topic_partition_list_add(l, s->topic, p->partition)->offset = p->next_take;
        p->sought = p->next_take;
    }
    if (l->cnt && (err = rd_kafka_seek_partitions(s->rk, l, 0)))
        rd_kafka_error_destroy(err);
    rd_kafka_topic_partition_list_destroy(l);
}

static void apply_pause(sub_t *s)
{
    rd_kafka_topic_partition_list_t *l;
    int want = want_paused(s);
    int n = 0;
    for (part_t *p = s->parts; p; p = p->next)
        n++;
    atomic_store(&s->nparts_paused, s->dep_paused ? n : 0);
    if (s->kpaused == want || !s->started || s->closing)
        return;
    s->kpaused = want;
    l = assigned_list(s);
    if (l->cnt && want) {
        rd_kafka_pause_partitions(s->rk, l);
    } else if (l->cnt) {
        rd_kafka_resume_partitions(s->rk, l);
        wake_fetcher(s);
        s->flow_since = uv_now(s->bus->loop); /* a hold counts from the resume */
    }
    rd_kafka_topic_partition_list_destroy(l);
}

/* ---- pausing while a dependency is down ---------------------------------- */

static uint64_t probe_wait(const sub_t *s, const tms_ack_t *out)
{
    uint64_t ms = backoff_ms(s->bus, s->probes + 1);
    if (ms > PROBE_MAX_MS)
        ms = PROBE_MAX_MS;
    return out->retry_after_ms > ms ? out->retry_after_ms : ms;
}

static void pause_dep(sub_t *s, const tms_ack_t *out)
{
    kbus_t *bus = s->bus;
    char q[200];
    const char *why = out->reason ? out->reason : "";
    s->dep_paused = 1;
    s->probes = 0;
    s->paused_at = uv_now(bus->loop);
    s->probe_due = s->paused_at + probe_wait(s, out);
    snprintf(s->dependency, sizeof(s->dependency), "%s",
             out->dependency ? out->dependency : "dependency");
    atomic_store(&s->paused_since_ns, uv_hrtime());
    tms_counter_add(s->pauses, 1);
    apply_pause(s);
    tms_log_warn("consumer_paused",
                 "bus=kafka topic=%s group=%s partitions=%d dependency=\"%s\" reason=%s", s->topic,
                 s->group, atomic_load(&s->nparts_paused), s->dependency,
                 tms_log_quote(q, sizeof(q), why, strlen(why)));
    arm_retry_timer(bus, s->probe_due);
}

/* The oldest waiting event goes out alone; none waiting (revoked meanwhile): resume,
 * and the next events test the dependency. */
static void send_probe(sub_t *s)
{
    entry_t *best = NULL;
    for (part_t *p = s->parts; p; p = p->next) {
        for (entry_t *e = p->head; e; e = e->next) {
            if (e->state == WAIT) {
                if (!best || e->offset < best->offset)
                    best = e;
                break;
            }
        }
    }
    if (!best) {
        resume_dep(s);
        return;
    }
    s->waiting--;
    s->probe = best;
    post_entry(s, best);
    if (best->state != HELD) /* mailbox full: retried shortly, not a probe yet */
        s->probe = NULL;
}

static void resume_dep(sub_t *s)
{
    uint64_t since = atomic_exchange(&s->paused_since_ns, 0);
    if (!s->dep_paused)
        return;
    s->dep_paused = 0;
    s->probe = NULL;
    if (since)
        atomic_fetch_add(&s->paused_total_ns, uv_hrtime() - since);
    tms_log_info("consumer_resumed",
                 "bus=kafka topic=%s group=%s dependency=\"%s\" paused_ms=%" PRIu64
                 " probes=%d waiting=%zu",
                 s->topic, s->group, s->dependency, uv_now(s->bus->loop) - s->paused_at,
                 s->probes + 1, s->waiting);
    /* What waited goes out in offset order per partition, then fetching resumes. */
    for (part_t *p = s->parts; p; p = p->next) {
        for (entry_t *e = p->head; e; e = e->next) {
            if (e->state == WAIT) {
                s->waiting--;
                post_entry(s, e);
            }
        }
    }
    apply_pause(s);
}

/* A delivery's free_fn: the subscriber let it go unhandled (its mailbox was freed with it
 * queued). It is held no more, revoked meanwhile or not, as after an ack. A probe that
 * goes this way told nothing about the dependency: another goes after the probe wait. */
static void on_entry_dropped(tms_msg_t *msg)
{
    entry_t *e = (entry_t *)msg;
    sub_t *s = e->sub;
    if (!s) {
        entry_free(e);
        return;
    }
    s->inflight--;
    if (s->probe == e) {
        s->probe = NULL;
        if (s->dep_paused && !s->bus->stopping) {
            s->probe_due = uv_now(s->bus->loop) + probe_wait(s, &(tms_ack_t){.retry_after_ms = 0});
            arm_retry_timer(s->bus, s->probe_due);
        }
    }
    if (!e->part) {
        entry_free(e); /* revoked meanwhile: the new owner has it */
    } else {
        /* Unhandled, it must never be committed over: it stays in its partition as a
         * barrier until the partition goes. */
        e->state = DROPPED;
        free(e->d.payload);
        e->d.payload = NULL;
    }
    flow_check(s);
    check_close(s);
}

static void post_entry(sub_t *s, entry_t *e)
{
    tms_msg_t *msg = &e->d.msg;
    memset(msg, 0, sizeof(*msg));
    msg->kind = TMS_MSG_REQUEST;
    msg->op = TMS_EVENT_DELIVERY;
    msg->free_fn = on_entry_dropped;
    e->state = HELD;
    e->bump = 0;
    if (tms_mailbox_post(s->mailbox, &msg) == 0) {
        s->inflight++;
        tms_counter_add(s->delivered, 1);
        if (!s->flow_paused && s->inflight >= (size_t)s->bus->opt.max_inflight) {
            s->flow_paused = 1; /* on_consumer_readable takes no more */
            s->flow_since = uv_now(s->bus->loop);
        }
        return;
    }
    /* Mailbox full: try again shortly, without counting an attempt. */
    schedule_retry(e, RETRY, (uint64_t)s->bus->opt.retry_ms);
}

static void take(sub_t *s, const rd_kafka_message_t *m)
{
    part_t *p = find_part(s, m->partition);
    entry_t *e;
    if (!p || (p->next_take >= 0 && m->offset < p->next_take))
        return; /* not ours (any more), or already taken */
    if (p->next_take >= 0 && m->offset > p->next_take && p->sought != p->next_take) {
        /* Offsets skipped: go back for them rather than commit over them. A gap that
         * is still there after the seek is real (e.g. transaction markers). */
        tms_log_warn("kafka_offset_gap", "topic=%s partition=%d expected=%" PRId64 " got=%" PRId64,
                     s->topic, (int)p->partition, p->next_take, m->offset);
        seek_back(s, p);
        return;
    }
    p->next_take = m->offset + 1;
    atomic_store(&s->bus->reachable, 1);
    e = tms_new(entry_t);
    e->sub = s;
    e->part = p;
    e->partition = m->partition;
    e->offset = m->offset;
    snprintf(e->d.topic, sizeof(e->d.topic), "%s", s->role_topic);
    snprintf(e->d.key, sizeof(e->d.key), "%.*s", m->key_len < 63 ? (int)m->key_len : 63,
             m->key ? (const char *)m->key : "");
    e->d.payload = tms_malloc(m->len + 1);
    if (m->len)
        memcpy(e->d.payload, m->payload, m->len);
    e->d.payload[m->len] = '\0';
    e->d.payload_len = m->len;
    e->d.attempt = 1;
    e->d.bus_ref = s;
    e->prev = p->tail;
    if (p->tail)
        p->tail->next = e;
    else
        p->head = e;
    p->tail = e;
    if (s->dep_paused) { /* fetched before the pause took effect: waits with the others */
        e->state = WAIT;
        s->waiting++;
        return;
    }
    post_entry(s, e);
}

/* A partition leaves this consumer: held entries are orphaned (their acks are
 * ignored), waiting ones are dropped; the next owner starts from the committed
 * offset, i.e. from the first of them. */
static void revoke_part(sub_t *s, part_t *p)
{
    for (entry_t *e = p->head, *next; e; e = next) {
        next = e->next;
        e->prev = e->next = NULL;
        switch (e->state) {
        case HELD:
        case DLQ:
            e->part = NULL;
            break;
        case RETRY:
        case DLQ_RETRY:
            retry_remove(s, e);
            s->owned--;
            entry_free(e);
            break;
        case WAIT:
            s->waiting--;
            entry_free(e);
            break;
        default:
            entry_free(e);
        }
    }
    tms_metrics_drop_gauges_of(p);
    free(p);
}

static void revoke_all(sub_t *s)
{
    int n = 0;
    for (part_t *p = s->parts, *next; p; p = next) {
        next = p->next;
        revoke_part(s, p);
        n++;
    }
    s->parts = NULL;
    if (n)
        tms_counter_add(s->revoked, (uint64_t)n);
}

static double part_lag_gauge(void *arg)
{
    return (double)atomic_load(&((part_t *)arg)->lag);
}

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    sub_t *s = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_assign(rk, parts);
        for (int i = 0; i < parts->cnt; i++) {
            char labels[200];
            if (find_part(s, parts->elems[i].partition))
                continue;
            part_t *p = tms_new(part_t);
            p->partition = parts->elems[i].partition;
            p->next_take = p->stored = p->sought = p->hi = p->committed = -1;
            p->next = s->parts;
            s->parts = p;
            snprintf(labels, sizeof(labels), "topic=\"%s\",group=\"%s\",partition=\"%d\"", s->topic,
                     s->group, (int)p->partition);
            tms_metrics_gauge_fn("tms_kafka_consumer_lag",
                                 "messages after the committed position, per assigned partition",
                                 labels, part_lag_gauge, p);
        }
        /* librdkafka keeps a partition's pause across a revoke and a new assign: say
         * what we want for these, whatever was said before. */
        if (want_paused(s))
            rd_kafka_pause_partitions(rk, parts);
        else
            rd_kafka_resume_partitions(rk, parts);
        apply_pause(s); /* the paused-partitions gauge */
        warm_dlq(s->bus, s);
        tms_log_info("kafka_assigned", "topic=%s group=%s partitions=%d", s->topic, s->group,
                     parts->cnt);
    } else {
        /* Revoked (or an error): stored offsets are committed by the unassign. */
        revoke_all(s);
        rd_kafka_assign(rk, NULL);
        tms_log_info("kafka_revoked", "topic=%s group=%s partitions=%d", s->topic, s->group,
                     parts ? parts->cnt : 0);
    }
}

static void serve_closing(sub_t *s, int timeout_ms)
{
    rd_kafka_event_t *ev;
    while ((ev = rd_kafka_queue_poll(s->queue, timeout_ms))) {
        /* The close revokes the assignment; with the event API the revoke comes
         * back as an event that we must answer, or the close never completes. */
        if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
            revoke_all(s);
            rd_kafka_assign(s->rk, NULL);
        }
        rd_kafka_event_destroy(ev);
    }
    if (!s->closed && rd_kafka_consumer_closed(s->rk)) {
        s->closed = 1;
        uv_poll_stop(&s->poll);
        tms_log_info("kafka_consumer_closed", "topic=%s group=%s", s->topic, s->group);
        maybe_closed(s->bus);
    }
}

static void on_consumer_readable(uv_poll_t *h, int status, int events)
{
    sub_t *s = h->data;
    rd_kafka_message_t *m;
    (void)status;
    (void)events;
    drain_pipe(s->fds[0]);
    if (s->closing) {
        serve_closing(s, 0);
        return;
    }
    /* At max_inflight with the partitions not paused, what librdkafka fetched stays in
     * its queue until there is room (want_paused). Paused, a poll returns no events of
     * theirs, but it must still come (max.poll.interval.ms, rebalances). */
    while (!(s->flow_paused && !s->kpaused) && (m = rd_kafka_consumer_poll(s->rk, 0))) {
        if (m->err) {
            tms_log_warn("kafka_consume_error", "topic=%s group=%s error=\"%s\"", s->topic,
                         s->group, rd_kafka_message_errstr(m));
        } else {
            take(s, m);
        }
        rd_kafka_message_destroy(m);
    }
}

static void check_close(sub_t *s)
{
    if (!s->bus->stopping || s->closing || s->inflight || s->owned) {
        maybe_closed(s->bus);
        return;
    }
    s->closing = 1;
    if (!s->started) {
        s->closed = 1;
        maybe_closed(s->bus);
        return;
    }
    rd_kafka_error_t *err = rd_kafka_consumer_close_queue(s->rk, s->queue);
    if (err) {
        tms_log_warn("kafka_close_failed", "group=%s error=\"%s\"", s->group,
                     rd_kafka_error_string(err));
        rd_kafka_error_destroy(err);
        s->closed = 1;
        maybe_closed(s->bus);
        return;
    }
    serve_closing(s, 0);
}

static void start_consumer(sub_t *s)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_resp_err_t err;
    rd_kafka_topic_partition_list_add(l, s->topic, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(s->rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (err) {
        tms_log_error("kafka_subscribe_failed", "topic=%s group=%s error=\"%s\"", s->topic,
                      s->group, rd_kafka_err2str(err));
        return;
    }
    s->started = 1;
    uv_poll_start(&s->poll, UV_READABLE, on_consumer_readable);
    /* Anything queued before the pipe was armed. */
    on_consumer_readable(&s->poll, 0, UV_READABLE);
}

/* ---- housekeeping: lag, admin retries, closing consumers --------------------
 */

/* Paused partitions fetch nothing, so their cached watermarks stand still while the
 * backlog grows: ask the brokers (blocking calls, so on libuv's thread pool, at most
 * one round per consumer at a time; the bus is not freed while one runs). */
typedef struct wm_query {
    uv_work_t work;
    sub_t *sub;
    rd_kafka_t *rk;
    char topic[64];
    int n;
    int32_t *partition;
    int64_t *lo, *hi, *committed;
} wm_query_t;

static void wm_query_run(uv_work_t *w)
{
    wm_query_t *q = w->data;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(q->n);
    for (int i = 0; i < q->n; i++) {
        q->committed[i] = -1;
        if (rd_kafka_query_watermark_offsets(q->rk, q->topic, q->partition[i], &q->lo[i], &q->hi[i],
                                             1000) != RD_KAFKA_RESP_ERR_NO_ERROR)
            q->lo[i] = q->hi[i] = -1;
        rd_kafka_topic_partition_list_add(l, q->topic, q->partition[i]);
    }
    if (rd_kafka_committed(q->rk, l, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < l->cnt && i < q->n; i++) {
            if (l->elems[i].err)
                continue;
            /* No commit yet: the group starts at the log start (auto.offset.reset). */
            q->committed[i] = l->elems[i].offset >= 0 ? l->elems[i].offset : q->lo[i];
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void wm_query_done(uv_work_t *w, int status)
{
    wm_query_t *q = w->data;
    sub_t *s = q->sub;
    kbus_t *bus = s->bus;
    (void)status;
    bus->queries--;
    s->querying = 0;
    for (int i = 0; i < q->n; i++) {
        part_t *p = find_part(s, q->partition[i]);
        if (!p)
            continue;
        if (q->hi[i] > p->hi)
            p->hi = q->hi[i];
        if (q->committed[i] >= 0)
            p->committed = q->committed[i];
    }
    free(q->partition);
    free(q->lo);
    free(q->hi);
    free(q->committed);
    free(q);
    maybe_closed(bus);
}

static void query_watermarks(sub_t *s)
{
    kbus_t *bus = s->bus;
    wm_query_t *q;
    int n = 0;
    for (part_t *p = s->parts; p; p = p->next)
        n++;
    if (!n)
        return;
    q = tms_new(wm_query_t);
    q->sub = s;
    q->rk = s->rk;
    snprintf(q->topic, sizeof(q->topic), "%s", s->topic);
    q->partition = tms_calloc((size_t)n, sizeof(int32_t));
    q->lo = tms_calloc((size_t)n, sizeof(int64_t));
    q->hi = tms_calloc((size_t)n, sizeof(int64_t));
    q->committed = tms_calloc((size_t)n, sizeof(int64_t));
    for (part_t *p = s->parts; p; p = p->next)
        q->partition[q->n++] = p->partition;
    q->work.data = q;
    if (uv_queue_work(bus->loop, &q->work, wm_query_run, wm_query_done) != 0) {
        free(q->partition);
        free(q->lo);
        free(q->hi);
        free(q->committed);
        free(q);
        return;
    }
    s->querying = 1;
    s->queried_at = uv_now(bus->loop);
    bus->queries++;
}

/* Lag of one partition: its high watermark minus the first offset not yet handled. */
static void update_lag(sub_t *s, part_t *p)
{
    int64_t lo, hi = -1, from;
    /* Cached watermarks from fetch responses: no request, no wait. */
    if (rd_kafka_get_watermark_offsets(s->rk, s->topic, p->partition, &lo, &hi) || hi < p->hi)
        hi = p->hi;
    if (hi < 0)
        return;
    from = p->stored >= 0      ? p->stored
           : p->head           ? p->head->offset
           : p->committed >= 0 ? p->committed
                               : hi;
    atomic_store(&p->lag, hi > from ? hi - from : 0);
}

static void on_housekeeping(uv_timer_t *t)
{
    kbus_t *bus = t->data;
    uint64_t now = uv_now(bus->loop);
    if (bus->admin_retry_at && now >= bus->admin_retry_at && !bus->admin_pending) {
        bus->admin_retry_at = 0;
        create_topics(bus);
    }
    for (sub_t *s = bus->subs; s; s = s->next) {
        if (s->closing) {
            if (!s->closed)
                serve_closing(s, 0);
            continue;
        }
        /* Poll even when nothing arrives (idle, or paused): librdkafka takes a consumer
         * that has not polled for max.poll.interval.ms (5 min) for stuck and makes it
         * leave its group. */
        /* Only a hold with fetched events waiting (not paused for a dependency, or
         * stopping) turns into a flow pause. */
        if (s->flow_paused && !s->flow_long && !s->kpaused &&
            now - s->flow_since >= FLOW_PAUSE_MS) {
            s->flow_long = 1;
            tms_counter_add(s->flow_pauses, 1);
            apply_pause(s);
        }
        if (s->started)
            on_consumer_readable(&s->poll, 0, UV_READABLE);
        /* Ask while paused, and until we know where the group stands on a partition we
         * have taken nothing from (else its lag would be unknown). */
        int unknown = 0;
        for (part_t *p = s->parts; p; p = p->next)
            unknown |= p->stored < 0 && !p->head && p->committed < 0;
        if ((s->kpaused || unknown) && !s->querying && !bus->stopping &&
            now - s->queried_at >= WATERMARK_EVERY_MS)
            query_watermarks(s);
        for (part_t *p = s->parts; p; p = p->next)
            update_lag(s, p);
    }
    maybe_closed(bus);
}

static double paused_parts_gauge(void *arg)
{
    return (double)atomic_load(&((sub_t *)arg)->nparts_paused);
}

static double paused_seconds_gauge(void *arg)
{
    sub_t *s = arg;
    uint64_t total = atomic_load(&s->paused_total_ns), since = atomic_load(&s->paused_since_ns);
    if (since)
        total += uv_hrtime() - since;
    return (double)total / 1e9;
}

static double outq_gauge(void *arg)
{
    kbus_t *bus = arg;
    return bus->freeing ? 0 : (double)rd_kafka_outq_len(bus->producer);
}

static double reachable_gauge(void *arg)
{
    return (double)atomic_load(&((kbus_t *)arg)->reachable);
}

/* ---- the port ---------------------------------------------------------------
 */

/* "<ns>.<name>" within a namespace, else name (too long: left for name_ok to refuse). */
static void ns_name(const kbus_t *bus, const char *name, char *out, size_t size)
{
    if (!name)
        name = "";
    if (bus->ns[0])
        snprintf(out, size, "%s.%s", bus->ns, name);
    else
        snprintf(out, size, "%s", name);
}

static bool name_ok(const char *s)
{
    size_t n = s ? strnlen(s, 60) : 0;
    if (n == 0 || n > 58) /* room for ".dlq" in topic[64] */
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static int publish(tms_event_bus_t *self, const char *role_topic, const char *key,
                   const char *payload, size_t len, tms_publish_done_fn done, void *ctx)
{
    kbus_t *bus = (kbus_t *)self;
    char topic[64];
    pub_t *pub;
    int rc;
    if (bus->closing)
        return -TMS_ECLOSED;
    ns_name(bus, role_topic, topic, sizeof(topic));
    if (!name_ok(topic) || !key || (!payload && len > 0) || !done)
        return -TMS_EINVAL;
    pub = tms_new(pub_t);
    pub->done = done;
    pub->ctx = ctx;
    rc = produce(bus, topic, key, payload ? payload : "", len, NULL, pub);
    if (rc != 0)
        free(pub);
    return rc;
}

/* A consumer of role_topic in role_group; with every, in a group of its own that
 * starts at the end and commits nothing (subscribe_all: each process gets every
 * event, and a restart leaves no group with offsets behind). */
static int add_sub(kbus_t *bus, const char *role_topic, const char *role_group,
                   tms_mailbox_t *mailbox, bool every)
{
    char err[512], labels[160], group[64], topic[64], poll_ms[16];
    rd_kafka_conf_t *conf;
    sub_t *s;
    /* A namespace keeps deployments that share one cluster apart: topics and groups
     * of their own, so none takes (or has to skip) another's events. */
    ns_name(bus, role_topic, topic, sizeof(topic));
    if (bus->ns[0])
        snprintf(group, sizeof(group), "%s.%s", role_group ? role_group : "", bus->ns);
    else
        snprintf(group, sizeof(group), "%s", role_group ? role_group : "");
    if (bus->stopping)
        return -TMS_ECLOSED;
    if (!name_ok(topic) || !name_ok(group) || !mailbox)
        return -TMS_EINVAL;
    for (s = bus->subs; s; s = s->next) {
        if (strcmp(s->group, group) == 0)
            return -TMS_EINVAL; /* one subscriber per group per process */
    }
    snprintf(poll_ms, sizeof(poll_ms), "%d",
             bus->opt.max_poll_interval_ms > 0 ? bus->opt.max_poll_interval_ms : 300000);
    conf = rd_kafka_conf_new();
    if (set(conf, "bootstrap.servers", bus->brokers, err, sizeof(err)) ||
        set(conf, "client.id", bus->client_id, err, sizeof(err)) ||
        set(conf, "group.id", group, err, sizeof(err)) ||
        set(conf, "enable.auto.commit", every ? "false" : "true", err, sizeof(err)) ||
        set(conf, "auto.commit.interval.ms", "1000", err, sizeof(err)) ||
        set(conf, "enable.auto.offset.store", "false", err, sizeof(err)) ||
        set(conf, "auto.offset.reset", every ? "latest" : "earliest", err, sizeof(err)) ||
        set(conf, "session.timeout.ms", "10000", err, sizeof(err)) ||
        set(conf, "heartbeat.interval.ms", "1000", err, sizeof(err)) ||
        set(conf, "max.poll.interval.ms", poll_ms, err, sizeof(err)) ||
        set(conf, "topic.metadata.refresh.interval.ms", "5000", err, sizeof(err)) ||
        set(conf, "socket.timeout.ms", "10000", err, sizeof(err)) ||
        set(conf, "reconnect.backoff.max.ms", "1000", err, sizeof(err)) ||
        /* A fetch long-polling for partitions without data holds the next one (one in
         * flight per broker), so a resume could wait the whole 500 ms default. */
        set(conf, "fetch.wait.max.ms", FETCH_WAIT_MS, err, sizeof(err)) ||
        /* A long flow-control pause drops what was fetched past max_inflight
         * (librdkafka purges a paused partition's queue): fetch 64 KiB (~250 events)
         * at a time, not 1 MiB. */
        set(conf, "max.partition.fetch.bytes", "65536", err, sizeof(err)) ||
        /* What librdkafka fetches ahead and holds while the subscriber is behind
         * (want_paused): about 4 MiB and 10,000 events, not its defaults of 64 MiB and
         * 100,000. These are levels at which it stops starting fetches (one response may
         * pass them; it is itself cut to queued.max.messages.kbytes), and librdkafka
         * 2.0 looks again only when its broker thread wakes, not when we take: 1 MiB and
         * 1,000 capped the notifier at ~1,360 mails/s in the bench, 4 MiB and 10,000 let
         * it write 1,729-2,048 a second (docs/perf-write-path.md, step 24). */
        set(conf, "queued.max.messages.kbytes", "4096", err, sizeof(err)) ||
        set(conf, "queued.min.messages", "10000", err, sizeof(err)) ||
        set_security(bus, conf, err, sizeof(err))) {
        tms_log_error("kafka_consumer_config", "group=%s error=\"%s\"", group, err);
        rd_kafka_conf_destroy(conf);
        return -TMS_EINVAL;
    }
    s = tms_new(sub_t);
    s->bus = bus;
    snprintf(s->topic, sizeof(s->topic), "%s", topic);
    snprintf(s->role_topic, sizeof(s->role_topic), "%s", role_topic);
    snprintf(s->group, sizeof(s->group), "%s", group);
    s->mailbox = mailbox;
    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_opaque(conf, s);
    s->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    if (!s->rk) {
        tms_log_error("kafka_consumer_failed", "group=%s error=\"%s\"", group, err);
        rd_kafka_conf_destroy(conf);
        free(s);
        return -TMS_EIO;
    }
    if (make_pipe(s->fds) != 0) {
        rd_kafka_destroy(s->rk);
        free(s);
        return -TMS_EIO;
    }
    rd_kafka_poll_set_consumer(s->rk);
    s->queue = rd_kafka_queue_get_consumer(s->rk);
    rd_kafka_queue_io_event_enable(s->queue, s->fds[1], "1", 1);
    uv_poll_init(bus->loop, &s->poll, s->fds[0]);
    s->poll.data = s;
    bus->handles++;
    snprintf(labels, sizeof(labels), "topic=\"%s\",group=\"%s\"", topic, group);
    s->delivered =
        tms_metrics_counter("tms_kafka_delivered_total", "Kafka deliveries to consumers", labels);
    s->retried = tms_metrics_counter("tms_kafka_redelivered_total",
                                     "Kafka deliveries retried after a failure", labels);
    s->dead = tms_metrics_counter("tms_kafka_dead_lettered_total",
                                  "events moved to <topic>.dlq after dlq_after attempts", labels);
    s->revoked = tms_metrics_counter("tms_kafka_partitions_revoked_total",
                                     "partitions taken away by a rebalance", labels);
    s->pauses = tms_metrics_counter("tms_kafka_consumer_pauses_total",
                                    "consumers paused because a dependency was down", labels);
    s->flow_pauses = tms_metrics_counter(
        "tms_kafka_consumer_flow_pauses_total",
        "consumers paused after holding max_inflight deliveries for a second", labels);
    tms_metrics_gauge_fn("tms_kafka_paused_partitions",
                         "assigned partitions paused because a dependency is down", labels,
                         paused_parts_gauge, s);
    tms_metrics_gauge_fn("tms_kafka_paused_seconds",
                         "time the consumer spent paused because a dependency was down", labels,
                         paused_seconds_gauge, s);
    s->next = bus->subs;
    bus->subs = s;
    if (bus->topics_ready)
        start_consumer(s);
    return 0;
}

static int subscribe(tms_event_bus_t *self, const char *role_topic, const char *role_group,
                     tms_mailbox_t *mailbox)
{
    return add_sub((kbus_t *)self, role_topic, role_group, mailbox, false);
}

static int subscribe_all(tms_event_bus_t *self, const char *role_topic, tms_mailbox_t *mailbox)
{
    kbus_t *bus = (kbus_t *)self;
    unsigned char rnd[6];
    char group[40], hex[13];
    randombytes_buf(rnd, sizeof(rnd));
    sodium_bin2hex(hex, sizeof(hex), rnd, sizeof(rnd));
    snprintf(group, sizeof(group), "tms-all-%s", hex);
    return add_sub(bus, role_topic, group, mailbox, true);
}

static void ack(tms_event_bus_t *self, tms_delivery_t **pd, tms_ack_t out)
{
    entry_t *e = (entry_t *)*pd;
    sub_t *s;
    int probe;
    (void)self;
    if (!e)
        return;
    *pd = NULL;
    s = e->sub;
    s->inflight--;
    probe = s->probe == e;
    if (probe)
        s->probe = NULL;
    if (out.kind == TMS_ACK_TRANSIENT && !s->bus->stopping) {
        if (!s->dep_paused) {
            pause_dep(s, &out);
        } else if (probe) {
            s->probes++;
            s->probe_due = uv_now(s->bus->loop) + probe_wait(s, &out);
            arm_retry_timer(s->bus, s->probe_due);
        }
    } else if (probe) {
        resume_dep(s); /* handled, or refused for good: the dependency answered */
    }
    if (!e->part) {
        entry_free(e); /* revoked meanwhile: the new owner has it */
    } else if (out.kind == TMS_ACK_OK) {
        finish(e);
    } else if (out.kind == TMS_ACK_TRANSIENT) {
        /* Not an attempt; waits (uncommitted) until the consumer resumes, or, when the
         * bus is stopping, until the consumer closes and the next owner takes it. */
        e->state = WAIT;
        s->waiting++;
    } else {
        snprintf(e->reason, sizeof(e->reason), "%s", out.reason ? out.reason : "failed");
        if (e->d.attempt >= s->bus->opt.dlq_after) {
            to_dlq(e);
        } else {
            e->bump = 1;
            schedule_retry(e, RETRY, backoff_ms(s->bus, e->d.attempt));
        }
    }
    flow_check(s);
    check_close(s);
}

tms_kafka_bus_t *tms_kafka_bus_new(uv_loop_t *loop, const tms_kafka_options_t *opt, char *err,
                                   size_t err_len)
{
    kbus_t *bus = tms_new(kbus_t);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char num[24];
    bus->base.name = "kafka";
    bus->base.publish = publish;
    bus->base.subscribe = subscribe;
    bus->base.subscribe_all = subscribe_all;
    bus->base.ack = ack;
    bus->base.busy = busy;
    bus->base.close = bus_close;
    bus->loop = loop;
    bus->opt = *opt;
    bus->opt.partitions = opt->partitions > 0 ? opt->partitions : 3;
    bus->opt.replication = opt->replication > 0 ? opt->replication : 1;
    bus->opt.dlq_after = opt->dlq_after > 0 ? opt->dlq_after : 5;
    bus->opt.retry_ms = opt->retry_ms > 0 ? opt->retry_ms : 200;
    bus->opt.publish_timeout_ms = opt->publish_timeout_ms > 0 ? opt->publish_timeout_ms : 10000;
    bus->opt.max_inflight = opt->max_inflight > 1 ? opt->max_inflight : 64;
    bus->brokers = tms_strdup(opt->brokers ? opt->brokers : "");
    bus->client_id = tms_strdup(opt->client_id ? opt->client_id : "tms");
    bus->ns = tms_strdup(opt->ns ? opt->ns : "");
    bus->security[0] = tms_strdup(opt->security_protocol ? opt->security_protocol : "");
    bus->security[1] = tms_strdup(opt->tls_ca ? opt->tls_ca : "");
    bus->security[2] = tms_strdup(opt->tls_cert ? opt->tls_cert : "");
    bus->security[3] = tms_strdup(opt->tls_key ? opt->tls_key : "");
    bus->fds[0] = bus->fds[1] = -1;
    for (const char *const *t = opt->topics; t && *t && bus->ntopics < MAX_TOPICS; t++) {
        char name[64];
        ns_name(bus, *t, name, sizeof(name));
        bus->topics[bus->ntopics++] = tms_strdup(name);
    }
    snprintf(num, sizeof(num), "%d", bus->opt.publish_timeout_ms);
    /* Idempotent, acks=all: a delivery report means every in-sync replica has the
     * event, written once and in order per partition. murmur2 picks the partition
     * from the key as Java (and kafkajs) clients do, so per-key order holds
     * across producers of both kinds. */
    if (set(conf, "bootstrap.servers", bus->brokers, err, err_len) ||
        set(conf, "client.id", bus->client_id, err, err_len) ||
        set(conf, "enable.idempotence", "true", err, err_len) ||
        set(conf, "acks", "all", err, err_len) || set(conf, "linger.ms", "2", err, err_len) ||
        /* librdkafka's default backs off up to 10 s: a broker back after an outage
         * would leave the outbox waiting that long; 1 s is plenty of back-off. */
        set(conf, "reconnect.backoff.max.ms", "1000", err, err_len) ||
        set(conf, "message.timeout.ms", num, err, err_len) ||
        set(conf, "partitioner", "murmur2_random", err, err_len) ||
        set(conf, "statistics.interval.ms", "1000", err, err_len) ||
        set(conf, "topic.metadata.refresh.interval.ms", "10000", err, err_len) ||
        /* A request on a connection that died without a reset (a broker host gone,
         * a dropped route) is given up after this, not librdkafka's 60 s. */
        set(conf, "socket.timeout.ms", "10000", err, err_len) ||
        set_security(bus, conf, err, err_len))
        goto fail;
    rd_kafka_conf_set_log_cb(conf, on_rdkafka_log);
    rd_kafka_conf_set_events(conf, RD_KAFKA_EVENT_DR | RD_KAFKA_EVENT_ERROR |
                                       RD_KAFKA_EVENT_CREATETOPICS_RESULT | RD_KAFKA_EVENT_STATS);
    bus->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, err_len);
    if (!bus->producer)
        goto fail;
    conf = NULL;
    if (make_pipe(bus->fds) != 0) {
        snprintf(err, err_len, "pipe: %s", strerror(errno));
        goto fail;
    }
    bus->main_q = rd_kafka_queue_get_main(bus->producer);
    rd_kafka_queue_io_event_enable(bus->main_q, bus->fds[1], "1", 1);
    uv_poll_init(loop, &bus->poll, bus->fds[0]);
    uv_timer_init(loop, &bus->housekeeping);
    uv_timer_init(loop, &bus->retry_timer);
    uv_timer_init(loop, &bus->close_timer);
    bus->poll.data = bus->housekeeping.data = bus->retry_timer.data = bus->close_timer.data = bus;
    bus->handles = 4;
    uv_poll_start(&bus->poll, UV_READABLE, on_main_readable);
    uv_timer_start(&bus->housekeeping, on_housekeeping, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    uv_unref((uv_handle_t *)&bus->housekeeping);
    bus->published = tms_metrics_counter("tms_kafka_published_total",
                                         "events the brokers acknowledged (acks=all)", "");
    bus->publish_failed = tms_metrics_counter(
        "tms_kafka_publish_failures_total", "publishes that failed (retried from the outbox)", "");
    tms_metrics_gauge_fn("tms_kafka_producer_queue", "messages waiting in the producer", "",
                         outq_gauge, bus);
    tms_metrics_gauge_fn("tms_kafka_up", "1 when a broker connection is up", "", reachable_gauge,
                         bus);
    if (bus->ntopics)
        create_topics(bus);
    else
        bus->topics_ready = 1;
    return bus;
fail:
    if (conf)
        rd_kafka_conf_destroy(conf);
    if (bus->producer)
        rd_kafka_destroy(bus->producer);
    if (bus->fds[0] >= 0) {
        close(bus->fds[0]);
        close(bus->fds[1]);
    }
    for (int i = 0; i < bus->ntopics; i++)
        free(bus->topics[i]);
    free(bus->brokers);
    for (int i = 0; i < 4; i++)
        free(bus->security[i]);
    free(bus->client_id);
    free(bus->ns);
    free(bus);
    return NULL;
}

/* Consumers take no new events, finish what they hold, then leave their groups
 * (committing what was handled). Publishing still works. */
static void stop(kbus_t *bus)
{
    if (bus->stopping)
        return;
    bus->stopping = 1;
    for (sub_t *s = bus->subs; s; s = s->next) {
        /* Redeliveries still waiting are not made any more (the subscribers' own
         * dependencies close around now): they stay uncommitted, for the next start,
         * as do the events a pause holds. */
        entry_t *e;
        while ((e = s->retries)) {
            s->retries = e->retry_next;
            e->retry_next = NULL;
            s->owned--;
            e->state = WAIT;
            s->waiting++;
        }
        apply_pause(s);
        check_close(s);
    }
}

static size_t busy(tms_event_bus_t *self)
{
    kbus_t *bus = (kbus_t *)self;
    size_t n = bus->outstanding;
    for (sub_t *s = bus->subs; s; s = s->next)
        n += s->inflight + s->owned + (bus->stopping && !s->closed ? 1 : 0);
    return n;
}

int tms_kafka_bus_reachable(tms_kafka_bus_t *bus)
{
    return bus ? atomic_load(&bus->reachable) : 0;
}

tms_event_bus_t *tms_kafka_bus_port(tms_kafka_bus_t *bus)
{
    return &bus->base;
}

static void close_fd_handle(uv_poll_t *poll, int fds[2], uv_close_cb on_closed)
{
    uv_close((uv_handle_t *)poll, on_closed);
    close(fds[0]);
    close(fds[1]);
}

/* Closing and idle (or the loop is being torn down): leave the groups, drop what is
 * left, close the handles; the bus goes, and its close's cb runs, with the last. */
static void destroy(kbus_t *bus)
{
    bus->freeing = 1;
    uv_timer_stop(&bus->retry_timer);
    for (sub_t *s = bus->subs, *sn; s; s = sn) {
        sn = s->next;
        /* A consumer not closed by stop leaves its group here (blocking, bounded by
         * librdkafka's close); its revoke runs on_rebalance, which frees its parts.
         */
        if (s->started && !s->closing) {
            rd_kafka_consumer_close(s->rk);
        } else if (s->started && !s->closed) {
            for (int i = 0; i < 300 && !s->closed; i++)
                serve_closing(s, 10);
        }
        rd_kafka_queue_destroy(s->queue);
        revoke_all(s);
        for (entry_t *e = s->retries, *en; e; e = en) {
            en = e->retry_next;
            entry_free(e);
        }
        rd_kafka_destroy(s->rk);
        tms_metrics_drop_gauges_of(s);
        close_fd_handle(&s->poll, s->fds, on_sub_closed);
    }
    bus->subs = NULL;
    /* No entry is held by a subscriber now (busy() was 0: each came back, acked or
     * dropped), so no free_fn looks at a freed sub later. Dead-letter publishes in
     * flight are purged; on_delivery frees their entries. */
    if (bus->outstanding) {
        rd_kafka_purge(bus->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        for (int i = 0; i < 100 && bus->outstanding; i++) {
            rd_kafka_event_t *ev = rd_kafka_queue_poll(bus->main_q, 10);
            if (!ev)
                continue;
            if (rd_kafka_event_type(ev) == RD_KAFKA_EVENT_DR) {
                const rd_kafka_message_t *m;
                int failed = 0;
                while ((m = rd_kafka_event_message_next(ev)))
                    on_delivery(bus, m, &failed);
            }
            rd_kafka_event_destroy(ev);
        }
    }
    unwarm_topics(bus);
    rd_kafka_queue_destroy(bus->main_q);
    rd_kafka_destroy(bus->producer);
    tms_metrics_drop_gauges_of(bus);
    uv_close((uv_handle_t *)&bus->housekeeping, on_handle_closed);
    uv_close((uv_handle_t *)&bus->retry_timer, on_handle_closed);
    uv_close((uv_handle_t *)&bus->close_timer, on_handle_closed);
    close_fd_handle(&bus->poll, bus->fds, on_handle_closed);
}

static void on_close_due(uv_timer_t *t)
{
    kbus_t *bus = t->data;
    if (!bus->freeing && busy(&bus->base) == 0 && bus->queries == 0)
        destroy(bus);
}

/* From the handlers where busy may have dropped: once closing and idle, destroy on
 * the next turn (never inside a handler that still uses the bus or a sub). */
static void maybe_closed(kbus_t *bus)
{
    if (bus->closing && !bus->freeing && busy(&bus->base) == 0 && bus->queries == 0 &&
        !uv_is_active((uv_handle_t *)&bus->close_timer))
        uv_timer_start(&bus->close_timer, on_close_due, 0, 0);
}

static void bus_close(tms_event_bus_t *self, tms_port_closed_fn cb, void *ctx)
{
    kbus_t *bus = (kbus_t *)self;
    bus->closing = 1;
    bus->closed_cb = cb;
    bus->closed_ctx = ctx;
    stop(bus);
    maybe_closed(bus);
}
