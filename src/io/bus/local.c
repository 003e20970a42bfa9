/* In-process event bus. Each publish gets a record that counts the copies still
 * unacknowledged and keeps the first failure; when the count reaches zero the record
 * joins a ready queue that a zero timer drains, so done never runs inside publish or
 * ack (callers may publish again from done without re-entering the bus). Every copy
 * links back to its record through bus_ref. Closing waits until every record is
 * done, so no copy outlives the bus with a link. Costs: a publish is
 * O(subscriptions); an ack is O(1). */
#include "io/bus/local.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"

#define NAME_MAX_LEN 63 /* topic[64] and key[64] in tms_delivery_t */

typedef struct sub {
    struct sub *next;
    char topic[NAME_MAX_LEN + 1];
    char group[NAME_MAX_LEN + 1];
    tms_mailbox_t *mailbox;
    tms_counter_t *delivered, *nacked;
} sub_t;

typedef struct topic_stat {
    struct topic_stat *next;
    char topic[NAME_MAX_LEN + 1];
    tms_counter_t *published;
} topic_stat_t;

typedef struct copy copy_t;
typedef struct bus bus_t;

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
    tms_counter_t *nacked;
};

struct bus {
    tms_event_bus_t base; /* first member */
    uv_loop_t *loop;
    uv_timer_t timer; /* drains the ready queue; the bus is freed in its close callback */
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
    r->ready_next = NULL;
    if (bus->ready_tail)
        bus->ready_tail->ready_next = r;
    else
        bus->ready_head = r;
    bus->ready_tail = r;
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
    settle(c, false);
    copy_free(c);
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
    for (sub_t *s = bus->subs; s; s = s->next) {
        if (strcmp(s->topic, topic) != 0)
            continue;
        copy_t *c = tms_new(copy_t);
        tms_msg_t *msg = &c->d.msg;
        int rc;
        msg->kind = TMS_MSG_REQUEST;
        msg->op = TMS_EVENT_DELIVERY;
        msg->free_fn = on_copy_dropped;
        snprintf(c->d.topic, sizeof(c->d.topic), "%s", topic);
        snprintf(c->d.key, sizeof(c->d.key), "%s", key);
        c->d.payload = tms_malloc(len + 1);
        if (len)
            memcpy(c->d.payload, payload, len);
        c->d.payload[len] = '\0';
        c->d.payload_len = len;
        c->d.attempt = 1; /* redelivery is a new publish by the relay */
        c->d.bus_ref = r;
        c->nacked = s->nacked;
        /* Linked before posting; the consumer runs on this loop, so not before we
         * return, but the record must be complete when it does. */
        c->next = r->copies;
        if (r->copies)
            r->copies->prev = c;
        r->copies = c;
        r->outstanding++;
        rc = tms_mailbox_post(s->mailbox, &msg);
        if (rc == 0) {
            tms_counter_add(s->delivered, 1);
            continue;
        }
        tms_log_warn("bus_delivery_refused", "topic=%s group=%s error=\"%s\"", topic, s->group,
                     tms_strerror(rc));
        r->copies = c->next;
        if (c->next)
            c->next->prev = NULL;
        r->outstanding--;
        copy_free(c);
        if (r->status == 0)
            r->status = rc;
    }
    if (r->outstanding == 0)
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
    snprintf(s->topic, sizeof(s->topic), "%s", topic);
    snprintf(s->group, sizeof(s->group), "%s", group);
    s->mailbox = mailbox;
    snprintf(labels, sizeof(labels), "topic=\"%s\",group=\"%s\"", topic, group);
    s->delivered = tms_metrics_counter("tms_bus_delivered_total", "Event copies delivered", labels);
    s->nacked = tms_metrics_counter("tms_bus_nacked_total", "Event copies not handled", labels);
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

static void ack(tms_event_bus_t *self, tms_delivery_t **pd, int ok)
{
    copy_t *c = (copy_t *)*pd;
    (void)self;
    if (!c)
        return;
    *pd = NULL;
    settle(c, ok != 0);
    copy_free(c);
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
        free(s);
    }
    for (topic_stat_t *t = bus->topics, *tn; t; t = tn) {
        tn = t->next;
        free(t);
    }
    bus->subs = NULL;
    bus->topics = NULL;
    uv_close((uv_handle_t *)&bus->timer, on_timer_closed);
}

static void bus_close(tms_event_bus_t *self, tms_port_closed_fn cb, void *ctx)
{
    bus_t *bus = (bus_t *)self;
    bus->closing = true;
    bus->closed_cb = cb;
    bus->closed_ctx = ctx;
    maybe_release(bus); /* the handle's close callback runs cb: never inside close */
}

tms_event_bus_t *tms_local_bus_new(uv_loop_t *loop)
{
    bus_t *bus = tms_new(bus_t);
    bus->base.name = "local";
    bus->base.publish = publish;
    bus->base.subscribe = subscribe;
    bus->base.subscribe_all = subscribe_all;
    bus->base.ack = ack;
    bus->base.busy = busy;
    bus->base.close = bus_close;
    bus->loop = loop;
    if (uv_timer_init(loop, &bus->timer) != 0)
        tms_oom(__FILE__, __LINE__);
    bus->timer.data = bus;
    return &bus->base;
}
