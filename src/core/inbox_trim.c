#include "core/inbox_trim.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/alloc.h"
#include "core/clock.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/status.h"
#include "core/uv_close.h"

/* Records a step deletes at most: its work (and, on SQLite, its share of the writer's
 * group commit) is bounded whatever the inbox holds. On SQLite (a 1M-record inbox,
 * random event ids) a step of 10,000 took 159 ms and 30.7 MB of WAL, all of it in
 * one group commit that other writes wait for; one of 1,000 took 14 ms and 4.1 MB. */
#define STEP_RECORDS 1000
/* The pause between steps of a round: the writer (SQLite) or the pool's connection
 * (PostgreSQL) serves requests in between, so a long round does not crowd them out. */
#define STEP_PAUSE_MS 100
/* A step the store refused (its queue full) is tried again this much later, or at the
 * interval if that is shorter. */
#define RETRY_MS 60000

struct tms_inbox_trim {
    tms_outbox_t *outbox;
    const char *name;
    uv_timer_t *timer; /* freed in its close callback */
    tms_mailbox_t *replies;
    uint64_t retention_ms, every_ms;
    bool out; /* a step out */
    bool stopping;
    int64_t before_ms; /* this round deletes records handled before (set at its start) */
    char resume[32];   /* where the round's next step starts (the store's; "" first) */
    int64_t round;     /* records deleted in this round so far */
    int steps;         /* steps in this round so far */
    void (*on_stopped)(void *);
    void *stopped_arg;
    tms_counter_t *trimmed;
};

static void on_timer(uv_timer_t *t);

static void check_stopped(tms_inbox_trim_t *t)
{
    if (t->stopping && !t->out && t->on_stopped) {
        void (*cb)(void *) = t->on_stopped;
        t->on_stopped = NULL;
        cb(t->stopped_arg);
    }
}

/* One summary line per round that deleted anything, not one per step: a first round
 * after an upgrade may take a thousand steps. */
static void end_round(tms_inbox_trim_t *t)
{
    if (t->round > 0)
        tms_log_info("inbox_trimmed", "inbox=%s store=%s records=%lld steps=%d", t->name,
                     t->outbox->name, (long long)t->round, t->steps);
    t->round = 0;
    t->steps = 0;
}

static void on_step(tms_msg_t *msg)
{
    tms_outbox_op_t *op = (tms_outbox_op_t *)msg;
    tms_inbox_trim_t *t = msg->ctx;
    int more = 0;
    t->out = false;
    t->steps++;
    if (op->err.code != TMS_OK) {
        tms_log_warn("inbox_trim_failed", "inbox=%s store=%s error=\"%s\"", t->name,
                     t->outbox->name, op->err.message);
    } else {
        tms_counter_add(t->trimmed, (uint64_t)op->count);
        t->round += op->count;
        /* The store says whether a next step may find more (a full step, or on SQLite
         * any deletion: a step there looks at the oldest records only). A round's
         * cutoff is fixed, so it ends. */
        more = op->more;
        snprintf(t->resume, sizeof(t->resume), "%s", op->resume);
    }
    tms_outbox_op_free(&op);
    if (more && !t->stopping)
        uv_timer_start(t->timer, on_timer, STEP_PAUSE_MS, t->every_ms);
    else
        end_round(t);
    check_stopped(t);
}

static void on_timer(uv_timer_t *timer)
{
    tms_inbox_trim_t *t = timer->data;
    tms_outbox_op_t *op;
    if (t->out || t->stopping)
        return;
    /* One cutoff per round: with a later one per step, records that age meanwhile
     * would keep a busy store's round going for good. */
    if (t->steps == 0) {
        t->before_ms = tms_now_ms() - (int64_t)t->retention_ms;
        t->resume[0] = '\0';
    }
    op = tms_outbox_op_new(TMS_INBOX_TRIM);
    op->before_ms = t->before_ms;
    snprintf(op->resume, sizeof(op->resume), "%s", t->resume);
    op->limit = STEP_RECORDS;
    op->msg.reply_to = t->replies;
    op->msg.cont = on_step;
    op->msg.ctx = t;
    t->out = true;
    if (tms_outbox_submit(t->outbox, &op) != 0) { /* its queue full (or closing) */
        tms_outbox_op_free(&op);
        t->out = false;
        uint64_t retry_ms = t->every_ms < RETRY_MS ? t->every_ms : RETRY_MS;
        tms_log_warn("inbox_trim_deferred", "inbox=%s store=%s retry_ms=%llu", t->name,
                     t->outbox->name, (unsigned long long)retry_ms);
        uv_timer_start(t->timer, on_timer, retry_ms, t->every_ms); /* the round goes on */
    }
}

tms_inbox_trim_t *tms_inbox_trim_new(uv_loop_t *loop, tms_outbox_t *outbox, uint64_t retention_ms,
                                     uint64_t first_ms, uint64_t every_ms, const char *name)
{
    tms_inbox_trim_t *t;
    char labels[96];
    if (retention_ms == 0)
        return NULL;
    t = tms_new(tms_inbox_trim_t);
    t->outbox = outbox;
    t->name = name;
    t->retention_ms = retention_ms;
    t->every_ms = every_ms ? every_ms : 1;
    t->replies = tms_mailbox_new(loop, "inbox_trim", 1, NULL, t);
    snprintf(labels, sizeof(labels), "inbox=\"%s\",store=\"%s\"", name, outbox->name);
    t->trimmed =
        tms_metrics_counter("tms_inbox_trimmed_total",
                            "handled-event records deleted after events.inbox_retention", labels);
    t->timer = tms_new(uv_timer_t);
    uv_timer_init(loop, t->timer);
    t->timer->data = t;
    uv_timer_start(t->timer, on_timer, first_ms, t->every_ms);
    uv_unref((uv_handle_t *)t->timer); /* housekeeping does not keep the loop alive */
    return t;
}

void tms_inbox_trim_stop(tms_inbox_trim_t *t, void (*on_stopped)(void *arg), void *arg)
{
    if (!t) {
        if (on_stopped)
            on_stopped(arg);
        return;
    }
    t->stopping = true;
    uv_timer_stop(t->timer);
    if (!t->out)
        end_round(t); /* stopped between two steps: what the round did is logged */
    t->on_stopped = on_stopped;
    t->stopped_arg = arg;
    check_stopped(t);
}

void tms_inbox_trim_free(tms_inbox_trim_t **pt)
{
    tms_inbox_trim_t *t = *pt;
    if (!t)
        return;
    *pt = NULL;
    uv_close((uv_handle_t *)t->timer, tms_uv_free_on_close);
    tms_mailbox_free(&t->replies);
    free(t);
}
