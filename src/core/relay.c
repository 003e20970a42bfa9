#include "core/relay.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"

#define BATCH 100

struct tms_relay {
    uv_loop_t *loop;
    tms_outbox_t *outbox;
    tms_event_bus_t *bus;
    uv_timer_t *timer;   /* freed in its close callback */
    uv_async_t *wake;    /* kicks from remote relays on other threads; freed on close */
    tms_relay_t *remote; /* set on a remote relay only: the relay it kicks */
    uint64_t poll_ms;
    tms_mailbox_t *replies; /* outbox replies come back here */
    int busy;
    int again; /* kicked while busy: run another batch right after */
    int stopping;
    void (*on_stopped)(void *);
    void *stopped_arg;
    /* the batch in flight */
    tms_outbox_op_t *batch;
    size_t outstanding;
    int64_t *accepted;
    size_t naccepted;
    size_t nfailed;
    _Atomic int64_t pending; /* unsent events at the last count; read by any worker */
    tms_counter_t *published, *failed;
};

typedef struct publish_ctx {
    tms_relay_t *relay;
    int64_t seq;
} publish_ctx_t;

static void run_batch(tms_relay_t *r);

static void on_timer(uv_timer_t *t)
{
    tms_relay_t *r = t->data;
    if (!r->busy && !r->stopping)
        run_batch(r);
}

static void schedule(tms_relay_t *r, uint64_t ms)
{
    if (!r->stopping)
        uv_timer_start(r->timer, on_timer, ms, 0);
}

static double pending_gauge(void *arg)
{
    return (double)atomic_load_explicit(&((tms_relay_t *)arg)->pending, memory_order_relaxed);
}

/* The batch is over: go idle and plan the next one. */
static void batch_done(tms_relay_t *r, int go_on_now)
{
    r->busy = 0;
    if (r->stopping) {
        if (r->on_stopped)
            r->on_stopped(r->stopped_arg);
        return;
    }
    /* More may be waiting: go on at once unless something failed, in which case
     * the poll interval is the retry back-off. */
    schedule(r, go_on_now || r->again ? 0 : r->poll_ms);
    r->again = 0;
}

static void on_counted(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    int go_on_now = op->limit; /* the decision finish_batch carried along */
    if (op->err.code == TMS_OK)
        atomic_store_explicit(&r->pending, op->count, memory_order_relaxed);
    tms_outbox_op_free(&op);
    batch_done(r, go_on_now);
}

static void finish_batch(tms_relay_t *r)
{
    int full = r->batch && r->batch->nevents == BATCH;
    int go_on_now = (r->again || full) && r->nfailed == 0;
    if (r->nfailed)
        r->again = 0; /* retry after the poll interval, not in a tight loop */
    tms_outbox_op_t *op;
    tms_outbox_op_free(&r->batch);
    free(r->accepted);
    r->accepted = NULL;
    r->naccepted = r->nfailed = 0;
    if (r->stopping) {
        batch_done(r, 0);
        return;
    }
    /* Refresh the pending-events gauge (an index-only count) as the batch's last
     * step, so that nothing of the relay is in flight once it is idle. */
    op = tms_outbox_op_new(TMS_OUTBOX_PENDING);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_counted;
    op->msg.ctx = r;
    op->limit = go_on_now;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        batch_done(r, go_on_now);
    }
}

static void on_marked(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    if (op->err.code != TMS_OK)
        tms_log_warn("outbox_mark_failed", "events=%zu error=%s", op->nseqs,
                     tms_status_name(op->err.code));
    tms_outbox_op_free(&op);
    finish_batch(r);
}

static void mark_sent(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    if (r->naccepted == 0) {
        finish_batch(r);
        return;
    }
    op = tms_outbox_op_new(TMS_OUTBOX_MARK_SENT);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_marked;
    op->msg.ctx = r;
    op->seqs = r->accepted;
    op->nseqs = r->naccepted;
    r->accepted = NULL;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op); /* sent again next batch; consumers dedup */
        finish_batch(r);
    }
}

static void on_published(void *ctx, int status)
{
    publish_ctx_t *p = ctx;
    tms_relay_t *r = p->relay;
    if (status == 0) {
        r->accepted[r->naccepted++] = p->seq;
        tms_counter_add(r->published, 1);
    } else {
        r->nfailed++;
        tms_counter_add(r->failed, 1);
    }
    free(p);
    if (--r->outstanding == 0)
        mark_sent(r);
}

static void on_fetched(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    r->batch = op;
    if (op->err.code != TMS_OK || op->nevents == 0) {
        if (op->err.code != TMS_OK)
            r->nfailed = 1;
        finish_batch(r);
        return;
    }
    r->accepted = tms_calloc(op->nevents, sizeof(int64_t));
    /* Count every publish before starting any, so a completion that runs early
     * cannot see outstanding reach zero mid-loop. */
    r->outstanding = op->nevents + 1;
    for (size_t i = 0; i < op->nevents; i++) {
        tms_outbox_event_t *e = &op->events[i];
        publish_ctx_t *p = tms_new(publish_ctx_t);
        p->relay = r;
        p->seq = e->seq;
        if (r->bus->publish(r->bus, e->topic, e->key, e->payload, strlen(e->payload), on_published,
                            p) != 0) {
            free(p);
            r->nfailed++;
            tms_counter_add(r->failed, 1);
            r->outstanding--;
        }
    }
    if (--r->outstanding == 0)
        mark_sent(r);
}

static void run_batch(tms_relay_t *r)
{
    tms_outbox_op_t *op = tms_outbox_op_new(TMS_OUTBOX_FETCH);
    r->busy = 1;
    op->msg.reply_to = r->replies;
    op->msg.cont = on_fetched;
    op->msg.ctx = r;
    op->limit = BATCH;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        r->nfailed = 1;
        finish_batch(r);
    }
}

static void on_wake(uv_async_t *a)
{
    tms_relay_kick(a->data);
}

tms_relay_t *tms_relay_new(uv_loop_t *loop, tms_outbox_t *outbox, tms_event_bus_t *bus,
                           uint64_t poll_ms)
{
    tms_relay_t *r = tms_new(tms_relay_t);
    r->loop = loop;
    r->outbox = outbox;
    r->bus = bus;
    r->poll_ms = poll_ms ? poll_ms : 1000;
    r->timer = tms_new(uv_timer_t);
    uv_timer_init(loop, r->timer);
    r->timer->data = r;
    r->wake = tms_new(uv_async_t);
    uv_async_init(loop, r->wake, on_wake);
    r->wake->data = r;
    uv_unref((uv_handle_t *)r->wake); /* the timer decides whether the loop lives */
    r->replies = tms_mailbox_new(loop, "relay", 1, NULL, r);
    r->published =
        tms_metrics_counter("tms_outbox_published_total", "outbox events accepted by the bus", "");
    r->failed = tms_metrics_counter("tms_outbox_publish_failures_total",
                                    "outbox events the bus refused (retried later)", "");
    tms_metrics_gauge_fn("tms_outbox_pending_events", "outbox events not yet accepted by the bus",
                         "", pending_gauge, r);
    schedule(r, 0); /* events left from before a restart go out at start */
    return r;
}

tms_relay_t *tms_relay_remote_new(tms_relay_t *relay)
{
    tms_relay_t *r = tms_new(tms_relay_t);
    r->remote = relay;
    return r;
}

void tms_relay_kick(tms_relay_t *r)
{
    if (r->remote) {
        if (!r->stopping)
            uv_async_send(r->remote->wake);
        return;
    }
    if (r->stopping)
        return;
    if (r->busy)
        r->again = 1;
    else
        schedule(r, 0);
}

int tms_relay_busy(tms_relay_t *r)
{
    return r->busy;
}

void tms_relay_stop(tms_relay_t *r, void (*on_stopped)(void *arg), void *arg)
{
    r->stopping = 1;
    if (r->remote) {
        if (on_stopped)
            on_stopped(arg);
        return;
    }
    uv_timer_stop(r->timer);
    r->on_stopped = on_stopped;
    r->stopped_arg = arg;
    if (!r->busy && on_stopped)
        on_stopped(arg);
}

static void on_timer_closed(uv_handle_t *h) /* the timer and the wake-up */
{
    free(h);
}

void tms_relay_free(tms_relay_t **pr)
{
    tms_relay_t *r = *pr;
    if (!r)
        return;
    *pr = NULL;
    if (r->remote) {
        free(r);
        return;
    }
    uv_close((uv_handle_t *)r->timer, on_timer_closed);
    uv_close((uv_handle_t *)r->wake, on_timer_closed);
    tms_mailbox_free(&r->replies);
    tms_outbox_op_free(&r->batch);
    free(r->accepted);
    free(r);
}
