/* In-process event bus. Each publish gets a record that counts the copies still
 * unacknowledged and keeps the first failure; when the count reaches zero the record
 * joins a ready queue that a zero timer drains, so done never runs inside publish or
 * ack (callers may publish again from done without re-entering the bus). Every copy
 * links back to its record through bus_ref. Closing waits until every record is
 * done, so no copy outlives the bus with a link. Costs: a publish is
 * O(subscriptions); an ack is O(1); a redelivery after a permanent failure waits in
 * a list scanned in O(n) (a few, normally).
 *
 * A subscription pauses on a transient failure (core/event_bus.h): its copies fail
 * without reaching the mailbox, so the relay keeps their events pending, until the
 * probe is due; the first copy published after that goes out as the probe. */
#include "io/bus/local.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/queue.h"
#include "core/status.h"

#define NAME_MAX_LEN 63    /* topic[64] and key[64] in tms_delivery_t */
#define RETRY_MAX_MS 30000 /* redelivery back-off cap */
#define PROBE_MAX_MS 5000  /* probe back-off cap while paused */

typedef struct copy copy_t;
typedef struct bus bus_t;

typedef struct sub {
    struct sub *next;
    bus_t *bus;
    char topic[NAME_MAX_LEN + 1];
    char group[NAME_MAX_LEN + 1];
    tms_mailbox_t *mailbox;
    tms_counter_t *delivered, *nacked, *dead, *held_back, *pauses;
    /* paused while a dependency is down */
    bool paused;
    char dependency[32];
    uint64_t paused_at; /* uv_now */
    uint64_t probe_due; /* uv_now from which the next copy goes out as the probe */
    int probes;         /* failed probes of this pause */
    copy_t *probe;      /* the probe out, if any */
    _Atomic int paused_gauge;
    _Atomic uint64_t paused_since_ns; /* uv_hrtime when paused; 0 when not */
    _Atomic uint64_t paused_total_ns; /* finished pauses */
} sub_t;

typedef struct topic_stat {
    struct topic_stat *next;
    char topic[NAME_MAX_LEN + 1];
    tms_counter_t *published;
} topic_stat_t;

/* One publish. In bus->records from publish until done has run. */
typedef struct record {
    struct record *prev, *next; /* bus->records */
    struct record *ready_next;  /* bus->ready queue once complete */
    bus_t *bus;
    tms_publish_done_fn done;
    void *ctx;
    int outstanding; /* copies not yet acknowledged */
    int status;      /* 0, or the first failure */
    copy_t *copies;  /* those outstanding */
} record_t;

/* One subscriber's copy; the public delivery comes first so the message casts. */
struct copy {
    tms_delivery_t d; /* first member; d.bus_ref is the record, NULL once orphaned */
    copy_t *prev, *next;
    sub_t *sub; /* NULL once the bus is gone */
    tms_counter_t *nacked;
    copy_t *retry_next; /* bus->retries: waiting for a redelivery */
    uint64_t due;
};

struct bus {
    tms_event_bus_t base; /* first member */
    uv_loop_t *loop;
    tms_local_bus_options_t opt;
    uv_timer_t timer;       /* drains the ready queue */
    uv_timer_t retry_timer; /* redeliveries after a permanent failure */
    int handles;            /* timers not yet closed: the bus is freed with the last */
    copy_t *retries;
    sub_t *subs;
    topic_stat_t *topics;
    record_t *records;
    size_t nrecords; /* publishes whose done has not run */
    record_t *ready_head, *ready_tail;
    bool closing, released;
    unsigned nall; /* subscribe_all's groups */
    tms_port_closed_fn closed_cb;
    void *closed_ctx;
};

static void maybe_release(bus_t *bus);

/* Topic and group names: Kafka's legal characters, which also keeps them safe inside
 * Prometheus label values. */
static bool name_ok(const char *s)
{
    size_t n = s ? strnlen(s, NAME_MAX_LEN + 1) : 0;
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

static tms_counter_t *published_counter(bus_t *bus, const char *topic)
{
    topic_stat_t *t;
    char labels[96];
    for (t = bus->topics; t; t = t->next) {
        if (strcmp(t->topic, topic) == 0)
            return t->published;
    }
    t = tms_new(topic_stat_t);
    snprintf(t->topic, sizeof(t->topic), "%s", topic);
    snprintf(labels, sizeof(labels), "topic=\"%s\"", topic);
    t->published = tms_metrics_counter("tms_bus_published_total", "Events published", labels);
    t->next = bus->topics;
    bus->topics = t;
    return t->published;
}

/* ---- completion ---------------------------------------------------------- */

static void on_ready(uv_timer_t *timer)
{
    bus_t *bus = timer->data;
    record_t *list = bus->ready_head, *r, *next;
    /* Take the queue and unlink it from the bus first: records completed by these
     * callbacks restart the timer, and a callback may even free the bus. */
    bus->ready_head = bus->ready_tail = NULL;
    for (r = list; r; r = r->ready_next) {
        if (r->prev)
            r->prev->next = r->next;
        else
            bus->records = r->next;
        if (r->next)
            r->next->prev = r->prev;
    }
    for (r = list; r; r = next) {
        next = r->ready_next;
        bus->nrecords--;
        if (r->done)
            r->done(r->ctx, r->status);
        free(r);
    }
    maybe_release(bus);
}

static void make_ready(record_t *r)
{
    bus_t *bus = r->bus;
    TMS_FIFO_APPEND(bus->ready_head, bus->ready_tail, r, ready_next);
    if (!uv_is_active((uv_handle_t *)&bus->timer))
        uv_timer_start(&bus->timer, on_ready, 0, 0);
}

/* A copy is settled: acked, nacked, or freed unhandled (counted as a nack). */
static void settle(copy_t *c, bool ok)
{
    record_t *r = c->d.bus_ref;
    if (!ok)
        tms_counter_add(c->nacked, 1);
    if (!r)
        return; /* the bus is gone */
    if (c->prev)
        c->prev->next = c->next;
    else
        r->copies = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->d.bus_ref = NULL;
    if (!ok && r->status == 0)
        r->status = -TMS_EIO;
    if (--r->outstanding == 0)
        make_ready(r);
}

static void copy_free(copy_t *c)
{
    free(c->d.payload);
    free(c);
}

/* free_fn of a delivery: its mailbox was freed with it still queued. */
static void on_copy_dropped(tms_msg_t *msg)
{
    copy_t *c = (copy_t *)msg;
    if (c->sub && c->sub->probe == c)
        c->sub->probe = NULL;
    settle(c, false);
    copy_free(c);
}

/* A copy that does not reach its subscriber: failed, so the publisher (the relay)
 * keeps the event and publishes it again later. */
static void refuse(copy_t *c, int status)
{
    record_t *r = c->d.bus_ref;
    if (r && r->status == 0)
        r->status = status;
    settle(c, false);
    copy_free(c);
}

static uint64_t backoff_ms(const bus_t *bus, int n, uint64_t cap)
{
    uint64_t ms = (uint64_t)bus->opt.retry_ms;
    for (int i = 0; i < n && ms < cap; i++)
        ms *= 2;
    return ms < cap ? ms : cap;
}

/* Into the subscriber's mailbox; a full one fails the copy (the relay retries). */
static void post_copy(sub_t *s, copy_t *c)
{
    tms_msg_t *msg = &c->d.msg;
    int rc;
    memset(msg, 0, sizeof(*msg));
    msg->kind = TMS_MSG_REQUEST;
    msg->op = TMS_EVENT_DELIVERY;
    msg->free_fn = on_copy_dropped;
    rc = tms_mailbox_post(s->mailbox, &msg);
    if (rc == 0) {
        tms_counter_add(s->delivered, 1);
        return;
    }
    if (s->probe == c)
        s->probe = NULL;
    tms_log_warn("bus_delivery_refused", "topic=%s group=%s error=\"%s\"", s->topic, s->group,
                 tms_strerror(rc));
    refuse(c, rc);
}

/* A copy for s: delivered, or, while s is paused, refused unless it can be the probe. */
static void offer(sub_t *s, copy_t *c)
{
    if (s->paused) {
        if (s->probe || uv_now(s->bus->loop) < s->probe_due) {
            tms_counter_add(s->held_back, 1);
            refuse(c, -TMS_EAGAIN);
            return;
        }
        s->probe = c;
    }
    post_copy(s, c);
}

/* ---- pause and resume ------------------------------------------------------ */

static double paused_gauge(void *arg)
{
    return (double)atomic_load(&((sub_t *)arg)->paused_gauge);
}

static double paused_seconds_gauge(void *arg)
{
    sub_t *s = arg;
    uint64_t total = atomic_load(&s->paused_total_ns), since = atomic_load(&s->paused_since_ns);
    if (since)
        total += uv_hrtime() - since;
    return (double)total / 1e9;
}

static void pause_sub(sub_t *s, const tms_ack_t *out)
{
    bus_t *bus = s->bus;
    char q[200];
    const char *why = out->reason ? out->reason : "";
    uint64_t wait = backoff_ms(bus, 0, PROBE_MAX_MS);
    s->paused = true;
    s->probes = 0;
    s->paused_at = uv_now(bus->loop);
    s->probe_due = s->paused_at + (out->retry_after_ms > wait ? out->retry_after_ms : wait);
    snprintf(s->dependency, sizeof(s->dependency), "%s",
             out->dependency ? out->dependency : "dependency");
    atomic_store(&s->paused_since_ns, uv_hrtime());
    atomic_store(&s->paused_gauge, 1);
    tms_counter_add(s->pauses, 1);
    tms_log_warn("consumer_paused", "bus=local topic=%s group=%s dependency=\"%s\" reason=%s",
                 s->topic, s->group, s->dependency, tms_log_quote(q, sizeof(q), why, strlen(why)));
}

static void probe_failed(sub_t *s, const tms_ack_t *out)
{
    uint64_t wait = backoff_ms(s->bus, ++s->probes, PROBE_MAX_MS);
    s->probe_due = uv_now(s->bus->loop) + (out->retry_after_ms > wait ? out->retry_after_ms : wait);
}

static void resume_sub(sub_t *s)
{
    uint64_t since = atomic_exchange(&s->paused_since_ns, 0);
    if (!s->paused)
        return;
    s->paused = false;
    s->probe = NULL;
    if (since)
        atomic_fetch_add(&s->paused_total_ns, uv_hrtime() - since);
    atomic_store(&s->paused_gauge, 0);
    tms_log_info("consumer_resumed",
                 "bus=local topic=%s group=%s dependency=\"%s\" paused_ms=%" PRIu64 " probes=%d",
                 s->topic, s->group, s->dependency, uv_now(s->bus->loop) - s->paused_at,
                 s->probes + 1);
}

/* ---- redeliveries after a permanent failure ------------------------------- */

static void on_retry_timer(uv_timer_t *t);

static void arm_retry_timer(bus_t *bus)
{
    uint64_t next = 0, now = uv_now(bus->loop);
    for (copy_t *c = bus->retries; c; c = c->retry_next) {
        if (!next || c->due < next)
            next = c->due;
    }
    if (next)
        uv_timer_start(&bus->retry_timer, on_retry_timer, next > now ? next - now : 0, 0);
    else
        uv_timer_stop(&bus->retry_timer);
}

static void on_retry_timer(uv_timer_t *t)
{
    bus_t *bus = t->data;
    uint64_t now = uv_now(bus->loop);
    copy_t *due = NULL;
    for (copy_t **pp = &bus->retries; *pp;) {
        copy_t *c = *pp;
        if (c->due <= now) {
            *pp = c->retry_next;
            c->retry_next = due;
            due = c;
        } else {
            pp = &c->retry_next;
        }
    }
    while (due) {
        copy_t *c = due;
        due = c->retry_next;
        c->retry_next = NULL;
        offer(c->sub, c);
    }
    arm_retry_timer(bus);
}

/* Closing: the copies waiting for a redelivery fail now (their events stay pending). */
static void drop_retries(bus_t *bus)
{
    copy_t *c;
    while ((c = bus->retries)) {
        bus->retries = c->retry_next;
        refuse(c, -TMS_ECLOSED);
    }
    uv_timer_stop(&bus->retry_timer);
}

/* ---- the port ------------------------------------------------------------- */

static int publish(tms_event_bus_t *self, const char *topic, const char *key, const char *payload,
                   size_t len, tms_publish_done_fn done, void *ctx)
{
    bus_t *bus = (bus_t *)self;
    record_t *r;
    if (bus->closing)
        return -TMS_ECLOSED;
    if (!name_ok(topic) || !key || strlen(key) > NAME_MAX_LEN || (!payload && len > 0))
        return -TMS_EINVAL;
    tms_counter_add(published_counter(bus, topic), 1);
    r = tms_new(record_t);
    r->bus = bus;
    r->done = done;
    r->ctx = ctx;
    r->next = bus->records;
    if (bus->records)
        bus->records->prev = r;
    bus->records = r;
    bus->nrecords++;
    r->outstanding = 1; /* held while copies are made: one refused at once cannot finish r */
    for (sub_t *s = bus->subs; s; s = s->next) {
        if (strcmp(s->topic, topic) != 0)
            continue;
        copy_t *c = tms_new(copy_t);
        snprintf(c->d.topic, sizeof(c->d.topic), "%s", topic);
        snprintf(c->d.key, sizeof(c->d.key), "%s", key);
        c->d.payload = tms_malloc(len + 1);
        if (len)
            memcpy(c->d.payload, payload, len);
        c->d.payload[len] = '\0';
        c->d.payload_len = len;
        c->d.attempt = 1; /* a transient failure's redelivery is a new publish by the relay */
        c->d.bus_ref = r;
        c->sub = s;
        c->nacked = s->nacked;
        /* Linked before posting; the consumer runs on this loop, so not before we
         * return, but the record must be complete when it does. */
        c->next = r->copies;
        if (r->copies)
            r->copies->prev = c;
        r->copies = c;
        r->outstanding++;
        offer(s, c);
    }
    if (--r->outstanding == 0)
        make_ready(r);
    return 0;
}

static int subscribe(tms_event_bus_t *self, const char *topic, const char *group,
                     tms_mailbox_t *mailbox)
{
    bus_t *bus = (bus_t *)self;
    sub_t *s, **tail;
    char labels[160];
    if (bus->closing)
        return -TMS_ECLOSED;
    if (!name_ok(topic) || !name_ok(group) || !mailbox)
        return -TMS_EINVAL;
    for (tail = &bus->subs; *tail; tail = &(*tail)->next) {
        if (strcmp((*tail)->topic, topic) == 0 && strcmp((*tail)->group, group) == 0)
            return -TMS_EINVAL; /* one subscriber per group */
    }
    s = tms_new(sub_t);
    s->bus = bus;
    snprintf(s->topic, sizeof(s->topic), "%s", topic);
    snprintf(s->group, sizeof(s->group), "%s", group);
    s->mailbox = mailbox;
    snprintf(labels, sizeof(labels), "topic=\"%s\",group=\"%s\"", topic, group);
    s->delivered = tms_metrics_counter("tms_bus_delivered_total", "Event copies delivered", labels);
    s->nacked = tms_metrics_counter("tms_bus_nacked_total", "Event copies not handled", labels);
    s->dead =
        tms_metrics_counter("tms_bus_dead_lettered_total",
                            "events given up after events.dlq_after permanent failures", labels);
    s->held_back = tms_metrics_counter(
        "tms_bus_held_back_total",
        "event copies refused while their subscription was paused (published again later)", labels);
    s->pauses = tms_metrics_counter("tms_bus_pauses_total",
                                    "subscriptions paused because a dependency was down", labels);
    tms_metrics_gauge_fn("tms_bus_paused", "1 while the subscription is paused", labels,
                         paused_gauge, s);
    tms_metrics_gauge_fn("tms_bus_paused_seconds", "time the subscription spent paused", labels,
                         paused_seconds_gauge, s);
    *tail = s;
    return 0;
}

/* One process is every instance of the in-process bus: a subscription of its own. */
static int subscribe_all(tms_event_bus_t *self, const char *topic, tms_mailbox_t *mailbox)
{
    bus_t *bus = (bus_t *)self;
    char group[NAME_MAX_LEN + 1];
    snprintf(group, sizeof(group), "all-%u", ++bus->nall);
    return subscribe(self, topic, group, mailbox);
}

static void dead_letter(sub_t *s, copy_t *c, const char *reason)
{
    char q[300];
    tms_counter_add(s->dead, 1);
    tms_log_error("event_dead_lettered", "bus=local topic=%s group=%s key=%s attempts=%d reason=%s",
                  s->topic, s->group, c->d.key, c->d.attempt,
                  tms_log_quote(q, sizeof(q), reason, strlen(reason)));
    settle(c, true);
    copy_free(c);
}

static void ack(tms_event_bus_t *self, tms_delivery_t **pd, tms_ack_t out)
{
    bus_t *bus = (bus_t *)self;
    copy_t *c = (copy_t *)*pd;
    sub_t *s;
    bool probe;
    if (!c)
        return;
    *pd = NULL;
    s = c->sub;
    probe = s && s->probe == c;
    if (probe)
        s->probe = NULL;
    if (!s || !c->d.bus_ref) { /* the bus or the publish is gone */
        settle(c, out.kind == TMS_ACK_OK);
        copy_free(c);
        return;
    }
    switch (out.kind) {
    case TMS_ACK_OK:
        if (probe)
            resume_sub(s);
        settle(c, true);
        copy_free(c);
        break;
    case TMS_ACK_TRANSIENT:
        /* The event is fine: no attempt; the relay publishes it again later. */
        if (!s->paused)
            pause_sub(s, &out);
        else if (probe)
            probe_failed(s, &out);
        refuse(c, -TMS_EAGAIN);
        break;
    default:
        if (probe)
            resume_sub(s); /* the dependency answered; the event is at fault */
        if (c->d.attempt >= bus->opt.dlq_after) {
            dead_letter(s, c, out.reason ? out.reason : "failed");
        } else if (bus->closing) {
            refuse(c, -TMS_ECLOSED);
        } else {
            tms_counter_add(s->nacked, 1);
            c->due = uv_now(bus->loop) + backoff_ms(bus, c->d.attempt - 1, RETRY_MAX_MS);
            c->d.attempt++;
            c->retry_next = bus->retries;
            bus->retries = c;
            arm_retry_timer(bus);
        }
        break;
    }
}

static size_t busy(tms_event_bus_t *self)
{
    return ((bus_t *)self)->nrecords;
}

static void on_timer_closed(uv_handle_t *handle)
{
    bus_t *bus = handle->data;
    tms_port_closed_fn cb = bus->closed_cb;
    void *ctx = bus->closed_ctx;
    if (--bus->handles > 0)
        return;
    free(bus);
    if (cb)
        cb(ctx);
}

/* Closing and every publish done: no copy links to the bus any more. */
static void maybe_release(bus_t *bus)
{
    if (!bus->closing || bus->released || bus->nrecords > 0)
        return;
    bus->released = true;
    for (sub_t *s = bus->subs, *sn; s; s = sn) {
        sn = s->next;
        tms_metrics_drop_gauges_of(s);
        free(s);
    }
    for (topic_stat_t *t = bus->topics, *tn; t; t = tn) {
        tn = t->next;
        free(t);
    }
    bus->subs = NULL;
    bus->topics = NULL;
    uv_close((uv_handle_t *)&bus->timer, on_timer_closed);
    uv_close((uv_handle_t *)&bus->retry_timer, on_timer_closed);
}

static void bus_close(tms_event_bus_t *self, tms_port_closed_fn cb, void *ctx)
{
    bus_t *bus = (bus_t *)self;
    bus->closing = true;
    bus->closed_cb = cb;
    bus->closed_ctx = ctx;
    drop_retries(bus);
    maybe_release(bus); /* the handle's close callback runs cb: never inside close */
}

tms_event_bus_t *tms_local_bus_new(uv_loop_t *loop)
{
    return tms_local_bus_new_with(loop, &(tms_local_bus_options_t){0});
}

tms_event_bus_t *tms_local_bus_new_with(uv_loop_t *loop, const tms_local_bus_options_t *opt)
{
    bus_t *bus = tms_new(bus_t);
    bus->opt.dlq_after = opt && opt->dlq_after > 0 ? opt->dlq_after : 5;
    bus->opt.retry_ms = opt && opt->retry_ms > 0 ? opt->retry_ms : 200;
    bus->base.name = "local";
    bus->base.publish = publish;
    bus->base.subscribe = subscribe;
    bus->base.subscribe_all = subscribe_all;
    bus->base.ack = ack;
    bus->base.busy = busy;
    bus->base.close = bus_close;
    bus->loop = loop;
    if (uv_timer_init(loop, &bus->timer) != 0 || uv_timer_init(loop, &bus->retry_timer) != 0)
        tms_oom(__FILE__, __LINE__);
    bus->timer.data = bus->retry_timer.data = bus;
    bus->handles = 2;
    return &bus->base;
}
