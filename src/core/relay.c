#include "core/relay.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"
#include "core/uv_close.h"

#define BATCH 100
/* Events handed to the bus and not yet done, at most: a mail backing off on the
 * embedded bus stays in flight for seconds while the relay goes on with the others. */
#define MAX_INFLIGHT 1000
/* A read after the highest seq handed found a hole below what it returned: on
 * PostgreSQL a transaction that took a lower seq commits after one that took a higher
 * (or rolled back). The read from the first pending event that finds it comes this
 * soon after, not at the next poll (1 s: the p99 of create -> consumed at 100/s was
 * 1.5 s in a full bench run from this alone). A full read costs a row per event in
 * flight or held, so the wait grows with them: 5 ms plus 5 ms per BATCH of them. */
#define GAP_MS 5
/* The pending-events gauge is refreshed (an index-only count) at most this often: a
 * pipelined relay fetches after every few commits. */
#define COUNT_EVERY_MS 250
/* Keys held behind a refused event, at most; one more refused key falls back to holding
 * every key for the poll interval (the bus is most likely down for all of them). */
#define MAX_HELD_KEYS 1000
/* Events skipped because their key is held, at most, before fetches stop reading new
 * events (a full read rereads them all: its limit grows with them). */
#define MAX_HELD 10000

/* Pipelined (issue 20): a fetch reads the pending events that are not in flight, in
 * outbox order, and publishes them; the next fetch does not wait for their delivery
 * (an event the bus holds, a mail backing off, or a Kafka delivery report, delays no
 * other event). Each event is marked sent once the bus accepted it, in batches (one
 * mark op out at a time; the store deletes a sent event's row). A read after the
 * highest seq handed runs while a mark is out (the two touch different events), so an
 * event committed meanwhile is not held behind the mark's commit; a full read and a
 * mark never overlap (below, mark_sent).
 *
 * Per-key order, the rule for a refused event (the bus refused the publish, or its
 * delivery failed): its key is held. No later event of that key is handed to the bus
 * while it is held; the refused event is published again after the poll interval (a
 * back-off of that key only), from the first pending event of the key; once the bus
 * accepts it, the key's held events follow in seq order (from the next full read),
 * then its new ones. Other keys are not delayed. Events of the key already handed
 * to the bus when the refusal is reported are not recalled: the bus orders those
 * (Kafka: the idempotent producer keeps a partition's order across its own retries;
 * if it gives up on one, a later one it had may still be accepted before the retry).
 * Bounds: MAX_HELD_KEYS keys (one more holds every key for the poll interval, the
 * old back-off: the bus is most likely down) and MAX_HELD held events (then no new
 * events are read until the held ones move).
 *
 * A fetch reads only the events after the highest seq handed or held so far (an index
 * range), so a relay with a thousand events in flight does not read them all again on
 * every commit. A full read (from the first pending event) comes when a held key's
 * retry is due, after a held key was cleared, and at least every poll interval: on
 * PostgreSQL a transaction may commit a seq below one already handed (sequence values
 * are taken before commit), and the periodic full read bounds its wait by the poll
 * interval. */
enum { KEY_HELD = 1, KEY_RETRYING, KEY_CLEARED };

typedef struct held_key {
    char key[64];
    int state;         /* KEY_HELD: retry due at retry_at; KEY_RETRYING: head out again;
                        * KEY_CLEARED: head accepted, held events go at the next full read */
    int64_t head;      /* KEY_RETRYING: the event published again */
    uint64_t retry_at; /* uv_now */
    uint64_t gen;      /* KEY_CLEARED: full reads submitted before the clear */
    uint64_t seen;     /* the last full read (its gen) that had an event of the key */
} held_key_t;

struct tms_relay {
    uv_loop_t *loop;
    const char *name; /* "tasks", "users": labels, logs */
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
    int64_t handed_max;     /* highest seq handed to the bus or held: a fetch reads after it */
    int rescan;             /* the next fetch reads from the first pending event */
    uint64_t scanned_at;    /* uv_now of the last fetch from the first pending event */
    int gap;                /* a read after handed_max skipped a seq: full read in GAP_MS */
    uint64_t scan_gen;      /* full reads submitted */
    int fetch_full;         /* the fetch out is a full read */
    held_key_t *held;       /* keys held behind a refused event */
    size_t nheld_keys;
    size_t nheld; /* events skipped as held (exact after a full read, an upper bound between) */
    uint64_t backoff_until; /* uv_now: a publish failed; no fetch before (0: none) */
    int stopping;
    void (*on_stopped)(void *);
    void *stopped_arg;
    int64_t *inflight; /* seqs handed to the bus and not yet refused or marked sent */
    size_t ninflight;
    int64_t *accepted; /* seqs the bus accepted, to mark sent */
    size_t naccepted, cap_accepted;
    _Atomic int64_t pending; /* unsent events at the last count; read by any worker */
    _Atomic int lead;        /* the last tms_outbox_lead_t reported; read by any worker's gauge */
    tms_counter_t *published, *failed;
    tms_histogram_t *delay; /* write -> accepted by the bus */
};

typedef struct publish_ctx {
    tms_relay_t *relay;
    int64_t seq;
    int64_t created_at_ms; /* the event's write (wall clock) */
    char key[64];
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

/* A fetch right after the one out (its on_fetched plans it: a timer started now would be
 * restarted there), or on the next turn; a read after handed_max does not wait for a
 * mark out, a full read does (run_batch). */
static void fetch_soon(tms_relay_t *r)
{
    if (r->fetching)
        r->again = 1;
    else
        schedule(r, 0);
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
    if (r->again || was_full) {
        /* The kick it served is cleared, unless a fetch is out: then the kick may have
         * come during that fetch (after its snapshot), and its plan_next must see it. */
        if (!r->fetching)
            r->again = 0;
        schedule(r, 0); /* the fetch that waited for this mark */
    }
    mark_sent(r); /* those accepted meanwhile */
    check_stopped(r);
}

/* The accepted events so far, in one mark op. A full read and a mark are never out
 * together: a full read that ran before a mark committed could answer after it with
 * events already marked and forgotten (PostgreSQL runs ops on several connections),
 * and they would go out twice. A read after handed_max may overlap a mark: it returns
 * only seqs above every seq handed, and a mark only has seqs handed. */
static void mark_sent(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    if (r->marking || (r->fetching && r->fetch_full) || r->naccepted == 0)
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

static held_key_t *find_held(tms_relay_t *r, const char *key)
{
    for (size_t i = 0; i < r->nheld_keys; i++) {
        if (strcmp(r->held[i].key, key) == 0)
            return &r->held[i];
    }
    return NULL;
}

/* seq of key was refused: hold the key (see the rule above). */
static void failed_one(tms_relay_t *r, int64_t seq, const char *key)
{
    held_key_t *h = find_held(r, key);
    uint64_t now = uv_now(r->loop);
    tms_counter_add(r->failed, 1);
    r->nheld++; /* pending again, and held */
    if (!h) {
        if (r->nheld_keys == MAX_HELD_KEYS) { /* every key waits the poll interval */
            r->rescan = 1;
            r->backoff_until = now + r->poll_ms;
            return;
        }
        h = &r->held[r->nheld_keys++];
        snprintf(h->key, sizeof(h->key), "%s", key);
        h->state = KEY_HELD;
        h->retry_at = now + r->poll_ms;
    } else if (h->state == KEY_CLEARED || (h->state == KEY_RETRYING && h->head == seq)) {
        h->state = KEY_HELD;
        h->retry_at = now + r->poll_ms;
    } /* else: held already (an event handed before the hold, or its retry is out) */
}

/* seq of key was accepted: a key's retried event clears it. */
static void accepted_one(tms_relay_t *r, int64_t seq, const char *key)
{
    held_key_t *h = r->nheld_keys ? find_held(r, key) : NULL;
    if (h && h->state == KEY_RETRYING && h->head == seq) {
        h->state = KEY_CLEARED;
        h->gen = r->scan_gen;
        r->rescan = 1;
        if (!r->stopping)
            fetch_soon(r); /* a full read: after a mark out (run_batch) */
    }
}

/* After a complete full read (gen, at now): drop the keys it released (cleared before
 * it was submitted), and the held keys due with no event pending any more (nothing to
 * retry: a full read would come for them on every run). */
static void drop_released(tms_relay_t *r, uint64_t gen, uint64_t now)
{
    for (size_t i = 0; i < r->nheld_keys;) {
        const held_key_t *h = &r->held[i];
        if ((h->state == KEY_CLEARED && h->gen < gen) ||
            (h->state == KEY_HELD && h->retry_at <= now && h->seen != gen))
            r->held[i] = r->held[--r->nheld_keys];
        else
            i++;
    }
}

/* ms until the first held key's retry is due (UINT64_MAX: none). */
static uint64_t next_retry_in(const tms_relay_t *r, uint64_t now)
{
    uint64_t in = UINT64_MAX;
    for (size_t i = 0; i < r->nheld_keys; i++) {
        const held_key_t *h = &r->held[i];
        if (h->state == KEY_HELD)
            in = h->retry_at <= now ? 0 : (h->retry_at - now < in ? h->retry_at - now : in);
    }
    return in;
}

static void on_published(void *ctx, int status)
{
    publish_ctx_t *p = ctx;
    tms_relay_t *r = p->relay;
    int was_full = r->ninflight >= MAX_INFLIGHT;
    if (status != 0)
        forget_in_flight(r, p->seq); /* pending: its key is held, retried after the back-off */
    if (status == 0) { /* in flight until marked sent, so no fetch publishes it again */
        if (r->naccepted == r->cap_accepted) {
            r->cap_accepted = r->cap_accepted ? 2 * r->cap_accepted : 64;
            r->accepted = tms_realloc(r->accepted, r->cap_accepted * sizeof(int64_t));
        }
        r->accepted[r->naccepted++] = p->seq;
        tms_counter_add(r->published, 1);
        if (p->created_at_ms > 0) {
            int64_t ms = tms_now_ms() - p->created_at_ms;
            tms_histogram_observe(r->delay, ms > 0 ? (double)ms / 1000.0 : 0.0);
        }
        accepted_one(r, p->seq, p->key);
    } else {
        failed_one(r, p->seq, p->key);
    }
    free(p);
    mark_sent(r);
    if (was_full && r->ninflight < MAX_INFLIGHT && !r->stopping)
        schedule(r, 0); /* room again: fetch what waited */
    check_stopped(r);
}

static uint64_t gap_wait(const tms_relay_t *r)
{
    return GAP_MS * (1 + (r->ninflight + r->nheld) / BATCH);
}

/* What comes after a fetch: at once when more may be waiting (a full fetch, a kick
 * meanwhile), unless every key backs off; else at the first held key's retry or the
 * poll, whichever is first. */
static void plan_next(tms_relay_t *r, int full)
{
    uint64_t now = uv_now(r->loop), in;
    int now_more = full || r->again;
    r->again = 0;
    if (r->stopping)
        return;
    if (r->backoff_until > now) {
        schedule(r, r->backoff_until - now);
    } else {
        in = now_more ? 0 : next_retry_in(r, now);
        if (r->gap) {
            uint64_t at = r->scanned_at + gap_wait(r);
            uint64_t g = at > now ? at - now : 0;
            in = g < in ? g : in;
        }
        schedule(r, in < r->poll_ms ? in : r->poll_ms);
    }
    count_pending(r); /* after a fetch, at most every COUNT_EVERY_MS */
}

static void on_fetched(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_relay_t *r = msg->ctx;
    size_t handed = 0, skipped = 0, i, nheld0 = r->nheld;
    int full_read = r->fetch_full;
    uint64_t now = uv_now(r->loop), gen = r->scan_gen;
    r->fetching = 0;
    r->fetch_full = 0;
    if (op->err.code == TMS_OK && !full_read) {
        int64_t expect = op->after_seq + 1; /* seqs come in order (ORDER BY seq) */
        for (i = 0; i < op->nevents && !r->gap; i++) {
            r->gap = op->events[i].seq != expect;
            expect = op->events[i].seq + 1;
        }
    }
    if (op->err.code != TMS_OK) {
        r->rescan |= full_read;
        r->backoff_until = uv_now(r->loop) + r->poll_ms;
        tms_outbox_op_free(&op);
        plan_next(r, 0);
        mark_sent(r); /* accepted while a full read was out: a stop waits for their mark */
        check_stopped(r);
        return;
    }
    for (i = 0; i < op->nevents && !r->stopping; i++) {
        tms_outbox_event_t *e = &op->events[i];
        held_key_t *h;
        publish_ctx_t *p;
        if (e->seq <= r->handed_max && in_flight(r, e->seq))
            continue; /* (a seq above handed_max was never handed) */
        if (handed == BATCH || r->ninflight >= MAX_INFLIGHT)
            break;
        h = r->nheld_keys ? find_held(r, e->key) : NULL;
        if (h && full_read)
            h->seen = gen;
        if (h && full_read && h->state == KEY_HELD && now >= h->retry_at) {
            h->state = KEY_RETRYING; /* the key's first pending event, published again */
            h->head = e->seq;
        } else if (h && !(full_read && h->state == KEY_CLEARED && h->gen < gen)) {
            skipped++; /* held: behind its key's refused event */
            if (e->seq > r->handed_max)
                r->handed_max = e->seq;
            continue;
        }
        p = tms_new(publish_ctx_t);
        p->relay = r;
        p->seq = e->seq;
        p->created_at_ms = e->created_at_ms;
        snprintf(p->key, sizeof(p->key), "%s", e->key);
        /* in flight before the publish: done may run inside it */
        r->inflight[r->ninflight++] = e->seq;
        if (e->seq > r->handed_max)
            r->handed_max = e->seq;
        handed++;
        if (r->bus->publish(r->bus, e->topic, e->key, e->payload, strlen(e->payload), on_published,
                            p) != 0) {
            forget_in_flight(r, e->seq);
            free(p);
            failed_one(r, e->seq, e->key); /* the key's later events in this read wait */
        }
    }
    if (!full_read) {
        r->nheld += skipped;
    } else if (i == op->nevents) {                /* complete: every held event was seen */
        r->nheld = skipped + (r->nheld - nheld0); /* + those refused meanwhile */
        drop_released(r, gen, now);
    } else if (r->nheld_keys) {
        r->rescan = 1; /* cleared keys are released by a complete one */
    }
    plan_next(r, op->nevents >= (size_t)op->limit || i < op->nevents);
    tms_outbox_op_free(&op);
    mark_sent(r); /* accepted while the fetch was out, or inside publish */
    check_stopped(r);
}

/* Another process relays this outbox (tms_outbox_t.lead): stand aside. */
static int aside(tms_relay_t *r)
{
    return atomic_load_explicit(&r->lead, memory_order_relaxed) == TMS_LEAD_OTHER;
}

static void run_batch(tms_relay_t *r)
{
    tms_outbox_op_t *op;
    uint64_t now = uv_now(r->loop);
    int full;
    if (r->stopping)
        return;
    if (r->fetching) {
        r->again = 1; /* after the fetch out (on_fetched) */
        return;
    }
    if (r->ninflight >= MAX_INFLIGHT)
        return; /* a done makes room and fetches */
    if (r->backoff_until > now) {
        schedule(r, r->backoff_until - now);
        return;
    }
    r->backoff_until = 0;
    if (aside(r)) {
        count_pending(r); /* the gauge stays true; the leader publishes */
        schedule(r, r->poll_ms);
        return;
    }
    full = r->rescan || r->handed_max == 0 || now - r->scanned_at >= r->poll_ms ||
           (r->gap && now - r->scanned_at >= gap_wait(r)) ||
           (r->nheld_keys && next_retry_in(r, now) == 0);
    if (full && r->marking) {
        r->again = 1; /* after the mark (on_marked): see mark_sent */
        return;
    }
    if (!full && r->nheld >= MAX_HELD) { /* wait for held events to move */
        uint64_t in = next_retry_in(r, now);
        schedule(r, in < r->poll_ms ? in : r->poll_ms);
        return;
    }
    op = tms_outbox_op_new(TMS_OUTBOX_FETCH);
    op->msg.reply_to = r->replies;
    op->msg.cont = on_fetched;
    op->msg.ctx = r;
    if (full) {
        /* from the first pending event: those in flight and held come back too */
        op->limit = BATCH + (int)r->ninflight + (int)r->nheld;
        op->after_seq = 0;
        r->rescan = 0;
        r->gap = 0;
        r->scanned_at = now;
        r->scan_gen++;
        r->fetch_full = 1;
    } else {
        op->limit = BATCH;
        op->after_seq = r->handed_max;
    }
    r->fetching = 1;
    if (tms_outbox_submit(r->outbox, &op) != 0) {
        tms_outbox_op_free(&op);
        r->fetching = 0;
        r->fetch_full = 0;
        r->rescan |= full;
        r->backoff_until = now + r->poll_ms;
        plan_next(r, 0);
    }
}

static void on_wake(uv_async_t *a)
{
    tms_relay_kick(a->data);
}

static double relaying_gauge(void *arg)
{
    return !aside(arg);
}

/* The outbox's lead among processes sharing it (core/outbox.h): stand aside while
 * another process holds it; relay when this one does or when it is not known (a lone
 * process, or the lead connection down: an event may then go out twice, never late). */
static void on_lead(void *arg, tms_outbox_lead_t what)
{
    static const char *const names[] = {"unknown", "held", "other"};
    tms_relay_t *r = arg;
    int was_aside = aside(r);
    if (what == TMS_LEAD_WOKEN) {
        if (!was_aside)
            tms_relay_kick(r);
        return;
    }
    if ((int)what != atomic_load_explicit(&r->lead, memory_order_relaxed))
        tms_log(what == TMS_LEAD_UNKNOWN ? TMS_LOG_WARN : TMS_LOG_INFO, "outbox_lead",
                "outbox=%s store=%s lead=%s relaying=%d", r->name, r->outbox->name, names[what],
                what != TMS_LEAD_OTHER);
    atomic_store_explicit(&r->lead, (int)what, memory_order_relaxed);
    if (what != TMS_LEAD_OTHER && was_aside) {
        r->rescan = 1; /* from the first pending event: the other's leftovers too */
        tms_relay_kick(r);
    }
}

tms_relay_t *tms_relay_new(uv_loop_t *loop, tms_outbox_t *outbox, tms_event_bus_t *bus,
                           uint64_t poll_ms, const char *name)
{
    tms_relay_t *r = tms_new(tms_relay_t);
    char labels[96];
    r->loop = loop;
    r->name = name;
    r->outbox = outbox;
    r->bus = bus;
    r->poll_ms = poll_ms ? poll_ms : 1000;
    r->inflight = tms_calloc(MAX_INFLIGHT, sizeof(int64_t));
    r->held = tms_calloc(MAX_HELD_KEYS, sizeof(held_key_t));
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
    /* where an event waits between its write and its consumers (ms resolution: the
     * outbox stores milliseconds) */
    r->delay = tms_metrics_histogram("tms_outbox_publish_delay_seconds",
                                     "from an outbox event's write to the bus accepting it "
                                     "(Kafka: the broker's acknowledgement)",
                                     "");
    /* one series per relay: with tasks and users in two stores there are two relays,
     * and the second registered would replace the first's series */
    snprintf(labels, sizeof(labels), "outbox=\"%s\",store=\"%s\"", name, outbox->name);
    tms_metrics_gauge_fn("tms_outbox_pending_events", "outbox events not yet accepted by the bus",
                         labels, pending_gauge, r);
    tms_metrics_gauge_fn("tms_outbox_relaying",
                         "1: this process publishes this outbox; 0: another process sharing the "
                         "database does",
                         labels, relaying_gauge, r);
    if (outbox->lead)
        outbox->lead(outbox, on_lead, r);
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
    if (aside(r)) {
        r->outbox->wake_leader(r->outbox); /* the leader publishes what was written here */
        return;
    }
    fetch_soon(r);
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
    if (r->outbox->lead)
        r->outbox->lead(r->outbox, NULL, NULL);
    r->on_stopped = on_stopped;
    r->stopped_arg = arg;
    mark_sent(r); /* accepted ones still unmarked */
    check_stopped(r);
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
    uv_close((uv_handle_t *)r->timer, tms_uv_free_on_close);
    uv_close((uv_handle_t *)r->wake, tms_uv_free_on_close);
    tms_mailbox_free(&r->replies);
    free(r->inflight);
    free(r->held);
    free(r->accepted);
    free(r);
}
