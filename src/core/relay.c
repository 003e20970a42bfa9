#include "core/relay.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"

#define BATCH 100
/* Events handed to the bus and not yet done, at most: a mail backing off on the
 * embedded bus stays in flight for seconds while the relay goes on with the others. */
#define MAX_INFLIGHT 1000
/* The pending-events gauge is refreshed (an index-only count) at most this often: a
 * pipelined relay fetches after every few commits. */
#define COUNT_EVERY_MS 250

/* Pipelined (issue 20): a fetch reads the pending events that are not in flight, in
 * outbox order, and publishes them; the next fetch does not wait for their delivery
 * (an event the bus holds, a mail backing off, or a Kafka delivery report, delays no
 * other event). Each event is marked sent once the bus accepted it, in batches (one
 * mark op out at a time). A refused event stays pending and is fetched again after
 * the poll interval (the back-off); until then later events go on, of its key too:
 * per key, order holds for events accepted on their first publish (consumers are
 * idempotent and each event carries its own state).
 * A fetch reads only the events after the highest seq handed so far (an index range),
 * so a relay with a thousand events in flight does not read them all again on every
 * commit. It reads from the first pending event again after a refused publish, and at
 * least every poll interval: on PostgreSQL a transaction may commit a seq below one
 * already handed (sequence values are taken before commit), and the periodic full
 * read bounds its wait by the poll interval. */
struct tms_relay {
    uv_loop_t *loop;
    tms_outbox_t *outbox;
    tms_event_bus_t *bus;
    uv_timer_t *timer;   /* freed in its close callback */
    uv_async_t *wake;    /* kicks from remote relays on other threads; freed on close */
    tms_relay_t *remote; /* set on a remote relay only: the relay it kicks */
    uint64_t poll_ms;
    tms_mailbox_t *replies; /* outbox replies come back here */
    int fetching;           /* a fetch op out */
    int marking;            /* a mark op out */
    int counting;           /* a pending-count op out */
    uint64_t counted_at;    /* uv_now of the last count sent */
    int again;              /* kicked while fetching: fetch again right after */
    int64_t handed_max;     /* highest seq handed to the bus: a fetch reads after it */
    int rescan;             /* a publish was refused: the next fetch reads from the first */
    uint64_t scanned_at;    /* uv_now of the last fetch from the first pending event */
    uint64_t backoff_until; /* uv_now: a publish failed; no fetch before (0: none) */
    int stopping;
    void (*on_stopped)(void *);
    void *stopped_arg;
    int64_t *inflight; /* seqs handed to the bus and not yet refused or marked sent */
    size_t ninflight;
    int64_t *accepted; /* seqs the bus accepted, to mark sent */
    size_t naccepted, cap_accepted;
    _Atomic int64_t pending; /* unsent events at the last count; read by any worker */
    tms_counter_t *published, *failed;
};

typedef struct publish_ctx {
    tms_relay_t *relay;
    int64_t seq;
} publish_ctx_t;

static void run_batch(tms_relay_t *r);

static int idle(const tms_relay_t *r)
{
    return !r->fetching && !r->marking && !r->counting && r->ninflight == 0;
}

static void check_stopped(tms_relay_t *r)
{
    if (r->stopping && idle(r) && r->on_stopped) {
        void (*cb)(void *) = r->on_stopped;
        r->on_stopped = NULL;
        cb(r->stopped_arg);
    }
}

static void on_timer(uv_timer_t *t)
{
    tms_relay_t *r = t->data;
    if (!r->stopping)
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

static void on_counted(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    r->counting = 0;
    if (op->err.code == TMS_OK)
        atomic_store_explicit(&r->pending, op->count, memory_order_relaxed);
    tms_outbox_op_free(&op);
    check_stopped(r);
}

/* Refresh the pending-events gauge (an index-only count). */
static void count_pending(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    if (r->counting || r->stopping || uv_now(r->loop) < r->counted_at + COUNT_EVERY_MS)
        return;
    r->counted_at = uv_now(r->loop);
    op = tms_outbox_op_new(TMS_OUTBOX_PENDING);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_counted;
    op->msg.ctx = r;
    r->counting = 1;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        r->counting = 0;
    }
}

static void mark_sent(tms_relay_t *r);
static void forget_in_flight(tms_relay_t *r, int64_t seq);

static void on_marked(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    int was_full = r->ninflight >= MAX_INFLIGHT;
    r->marking = 0;
    if (op->err.code != TMS_OK) /* pending still: fetched and published again */
        tms_log_warn("outbox_mark_failed", "events=%zu error=%s", op->nseqs,
                     tms_status_name(op->err.code));
    for (size_t i = 0; i < op->nseqs; i++)
        forget_in_flight(r, op->seqs[i]);
    tms_outbox_op_free(&op);
    if (r->again || was_full)
        schedule(r, 0); /* the fetch that waited for this mark */
    mark_sent(r);       /* those accepted meanwhile */
    check_stopped(r);
}

/* The accepted events so far, in one mark op. One outbox op of the relay's out at a
 * time, a fetch or a mark: a fetch that ran before a mark committed cannot answer
 * after it with events already marked (PostgreSQL runs ops on several connections). */
static void mark_sent(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    if (r->marking || r->fetching || r->naccepted == 0)
        return;
    op = tms_outbox_op_new(TMS_OUTBOX_MARK_SENT);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_marked;
    op->msg.ctx = r;
    op->seqs = r->accepted;
    op->nseqs = r->naccepted;
    r->accepted = NULL;
    r->naccepted = r->cap_accepted = 0;
    r->marking = 1;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        for (size_t i = 0; i < op->nseqs; i++) /* pending: published again */
            forget_in_flight(r, op->seqs[i]);
        tms_outbox_op_free(&op);
        r->marking = 0;
    }
}

static int in_flight(const tms_relay_t *r, int64_t seq)
{
    for (size_t i = 0; i < r->ninflight; i++) {
        if (r->inflight[i] == seq)
            return 1;
    }
    return 0;
}

static void forget_in_flight(tms_relay_t *r, int64_t seq)
{
    for (size_t i = 0; i < r->ninflight; i++) {
        if (r->inflight[i] == seq) {
            r->inflight[i] = r->inflight[--r->ninflight];
            return;
        }
    }
}

static void failed_one(tms_relay_t *r)
{
    tms_counter_add(r->failed, 1);
    r->rescan = 1;
    r->backoff_until = uv_now(r->loop) + r->poll_ms;
}

static void on_published(void *ctx, int status)
{
    publish_ctx_t *p = ctx;
    tms_relay_t *r = p->relay;
    int was_full = r->ninflight >= MAX_INFLIGHT;
    if (status != 0)
        forget_in_flight(r, p->seq); /* pending: fetched again after the back-off */
    if (status == 0) { /* in flight until marked sent, so no fetch publishes it again */
        if (r->naccepted == r->cap_accepted) {
            r->cap_accepted = r->cap_accepted ? 2 * r->cap_accepted : 64;
            r->accepted = tms_realloc(r->accepted, r->cap_accepted * sizeof(int64_t));
        }
        r->accepted[r->naccepted++] = p->seq;
        tms_counter_add(r->published, 1);
    } else {
        failed_one(r);
    }
    free(p);
    mark_sent(r);
    if (was_full && r->ninflight < MAX_INFLIGHT && !r->stopping)
        schedule(r, 0); /* room again: fetch what waited */
    check_stopped(r);
}

/* What comes after a fetch: at once when more may be waiting (a full fetch, or a kick
 * meanwhile), unless a publish failed (then after the back-off); else at the poll. */
static void plan_next(tms_relay_t *r, int full)
{
    uint64_t now = uv_now(r->loop);
    int now_more = full || r->again;
    r->again = 0;
    if (r->stopping)
        return;
    if (r->backoff_until > now)
        schedule(r, r->backoff_until - now);
    else
        schedule(r, now_more ? 0 : r->poll_ms);
    count_pending(r); /* after a fetch, at most every COUNT_EVERY_MS */
}

static void on_fetched(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    size_t handed = 0;
    r->fetching = 0;
    if (op->err.code != TMS_OK) {
        r->backoff_until = uv_now(r->loop) + r->poll_ms;
        tms_outbox_op_free(&op);
        plan_next(r, 0);
        check_stopped(r);
        return;
    }
    for (size_t i = 0; i < op->nevents && !r->stopping; i++) {
        tms_outbox_event_t *e = &op->events[i];
        publish_ctx_t *p;
        if (e->seq <= r->handed_max && in_flight(r, e->seq))
            continue; /* (a seq above handed_max was never handed) */
        if (handed == BATCH || r->ninflight >= MAX_INFLIGHT)
            break;
        p = tms_new(publish_ctx_t);
        p->relay = r;
        p->seq = e->seq;
        /* in flight before the publish: done may run inside it */
        r->inflight[r->ninflight++] = e->seq;
        if (e->seq > r->handed_max)
            r->handed_max = e->seq;
        handed++;
        if (r->bus->publish(r->bus, e->topic, e->key, e->payload, strlen(e->payload), on_published,
                            p) != 0) {
            forget_in_flight(r, e->seq);
            free(p);
            failed_one(r);
        }
    }
    tms_outbox_op_free(&op);
    plan_next(r, handed == BATCH);
    mark_sent(r); /* accepted while the fetch was out, or inside publish */
    check_stopped(r);
}

static void run_batch(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    uint64_t now = uv_now(r->loop);
    if (r->stopping)
        return;
    if (r->fetching || r->marking) {
        r->again = 1; /* after the op out (on_fetched, on_marked) */
        return;
    }
    if (r->ninflight >= MAX_INFLIGHT)
        return; /* a done makes room and fetches */
    if (r->backoff_until > now) {
        schedule(r, r->backoff_until - now);
        return;
    }
    r->backoff_until = 0;
    op = tms_outbox_op_new(TMS_OUTBOX_FETCH);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_fetched;
    op->msg.ctx = r;
    if (r->rescan || r->handed_max == 0 || now - r->scanned_at >= r->poll_ms) {
        /* from the first pending event: those in flight come back too (skipped) */
        op->limit = BATCH + (int)r->ninflight;
        op->after_seq = 0;
        r->rescan = 0;
        r->scanned_at = now;
    } else {
        op->limit = BATCH;
        op->after_seq = r->handed_max;
    }
    r->fetching = 1;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        r->fetching = 0;
        r->backoff_until = now + r->poll_ms;
        plan_next(r, 0);
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
    r->inflight = tms_calloc(MAX_INFLIGHT, sizeof(int64_t));
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
    if (r->fetching || r->marking)
        r->again = 1;
    else
        schedule(r, 0);
}

int tms_relay_busy(tms_relay_t *r)
{
    return !r->remote && !idle(r);
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
    mark_sent(r); /* accepted ones still unmarked */
    check_stopped(r);
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
    free(r->inflight);
    free(r->accepted);
    free(r);
}
